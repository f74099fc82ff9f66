//! The one extractor of untrusted tar archives: image layers unpacked into snapshots, and archives that
//! `ADD` unpacks into a destination.
//!
//! Every entry is placed relative to a directory descriptor inside the [`Root`]. Parents are resolved with
//! [`Root`]'s confined resolution, so symlinks the archive made earlier (even ones pointing at `/` or
//! `../..`) lead back inside the root, never above it; the entry itself is always created fresh (after
//! removing whatever was there) with calls that do not follow a final symlink, so nothing is written through
//! a symlink, and hardlinks can only point inside the root.
//!
//! The two [`Flavor`]s differ where the formats do: a layer carries whiteouts and xattrs, refuses names
//! with `..` outright (no tool writes them; a clamped meaning would only hide a hostile archive) and creates
//! missing parents only along real directories; an `ADD` archive is read as BuildKit's `unpack` reads it
//! (names cleaned, owners overridable, times clamped to SOURCE_DATE_EPOCH).

use std::ffi::{OsStr, OsString};
use std::fs::File;
use std::io::{self, Read};
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Component, Path, PathBuf};

use rustix::fs::{
    AtFlags, FileType, Mode, OFlags, Timespec, Timestamps, XattrFlags, chmodat, fsetxattr, linkat, lsetxattr,
    makedev, mkdirat, mknodat, openat, statat, symlinkat, unlinkat, utimensat,
};
use rustix::io::Errno;

use crate::root::{Owner, Rel, Root, remove_tree, set_meta_at};

const OPAQUE_XATTR: &str = "trusted.overlay.opaque";
const WHITEOUT_PREFIX: &[u8] = b".wh.";
const OPAQUE_MARKER: &[u8] = b".wh..wh..opq";
/// Other `.wh..wh.` names are aufs bookkeeping, which means nothing to overlayfs.
const AUFS_META_PREFIX: &[u8] = b".wh..wh.";

/// What kind of archive is extracted.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Flavor {
    /// An image layer into an empty snapshot directory: OCI whiteouts become overlayfs whiteouts (char
    /// device 0/0) and opaque directories (`trusted.overlay.opaque=y`), xattrs are applied, owners are the
    /// archive's (when running as root), entry types overlayfs cannot hold are skipped.
    Layer,
    /// `ADD` of a local archive: `owner` (`--chown`) replaces the archive's owners, mtimes are clamped to
    /// `timestamp`, a directory entry follows a symlink of the same name, unknown entry types are errors.
    Archive {
        owner: Option<Owner>,
        timestamp: Option<i64>,
    },
}

/// What an extraction wrote.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Extracted {
    /// Bytes of regular file content.
    pub size: u64,
}

/// A failure and the entry it happened at (`None`: the archive as a whole).
#[derive(Debug, thiserror::Error)]
#[error("{}{error}", entry.as_ref().map(|e| format!("entry {e:?}: ")).unwrap_or_default())]
pub struct ExtractError {
    pub entry: Option<String>,
    pub error: io::Error,
}

/// Extracts every entry of `archive` into `root`.
pub fn extract<R: Read>(
    archive: &mut tar::Archive<R>,
    root: &Root,
    flavor: Flavor,
) -> Result<Extracted, ExtractError> {
    let whole = |error| ExtractError { entry: None, error };
    let mut extractor = Extractor {
        root,
        flavor,
        as_root: rustix::process::geteuid().is_root(),
        dirs: Vec::new(),
        parent: None,
        size: 0,
        space: DiskBudget::of(root.fd()),
    };
    for entry in archive.entries().map_err(whole)? {
        let mut entry = entry.map_err(whole)?;
        let name = String::from_utf8_lossy(&entry.path_bytes()).into_owned();
        extractor.entry(&mut entry).map_err(|error| ExtractError {
            entry: Some(name),
            error,
        })?;
    }
    extractor.finish_dirs()?;
    Ok(Extracted { size: extractor.size })
}

/// How much an archive may still write: what the destination's filesystem has free, less a reserve that
/// keeps the machine (and the store's database) working. A decompression bomb is refused with a clear error
/// when its entries would pass that line, before the disk is full, not after; free space is looked at
/// again every [`DiskBudget::RECHECK`] bytes, as other writers use the disk too.
struct DiskBudget {
    /// Bytes that may still be written before the next look.
    left: Option<u64>,
    since_look: u64,
}

impl DiskBudget {
    const RECHECK: u64 = 256 << 20;
    /// Enough for the store's database and the system to go on; small enough that a nearly full disk still
    /// takes a small layer.
    const MAX_RESERVE: u64 = 256 << 20;

    fn of(dir: std::os::fd::BorrowedFd<'_>) -> DiskBudget {
        DiskBudget {
            left: Self::usable(dir),
            since_look: 0,
        }
    }

    /// Free bytes less the reserve: 2% of the filesystem, at most 256 MiB. `None` where the filesystem does
    /// not say.
    fn usable(dir: std::os::fd::BorrowedFd<'_>) -> Option<u64> {
        let stat = rustix::fs::fstatvfs(dir).ok()?;
        let total = stat.f_blocks.saturating_mul(stat.f_frsize);
        if total == 0 {
            return None;
        }
        let free = stat.f_bavail.saturating_mul(stat.f_frsize);
        let reserve = (total / 50).min(Self::MAX_RESERVE);
        Some(free.saturating_sub(reserve))
    }

    fn admit(&mut self, dir: std::os::fd::BorrowedFd<'_>, bytes: u64) -> io::Result<()> {
        if self.since_look >= Self::RECHECK {
            self.left = Self::usable(dir);
            self.since_look = 0;
        }
        let Some(left) = self.left else {
            return Ok(());
        };
        if bytes > left {
            return Err(io::Error::new(
                io::ErrorKind::StorageFull,
                format!(
                    "a {bytes}-byte file does not fit in the {left} bytes this filesystem has left (kiln keeps \
                     2%, at most 256 MiB, free); a decompression bomb, or a disk to clean up (`kiln prune`)"
                ),
            ));
        }
        self.left = Some(left - bytes);
        self.since_look += bytes;
        Ok(())
    }
}

/// Ownership, permission bits, times and xattrs of an entry, from its header and PAX records (as Go's
/// archive/tar applies them).
struct Meta {
    uid: u32,
    gid: u32,
    mode: u32,
    atime: Timespec,
    mtime: Timespec,
    xattrs: Vec<(String, Vec<u8>)>,
}

struct Extractor<'a> {
    root: &'a Root,
    flavor: Flavor,
    /// Only root can give files away.
    as_root: bool,
    /// Directories get their metadata last, after their contents stop changing them.
    dirs: Vec<(Rel, Meta)>,
    /// The last parent directory a regular file went into: archives list a directory's files together,
    /// and resolving the same parent again for each is most of an unpack's system calls. Forgotten whenever
    /// an entry could change what a path resolves to.
    parent: Option<(Vec<OsString>, OwnedFd)>,
    size: u64,
    space: DiskBudget,
}

impl Extractor<'_> {
    fn entry<R: Read>(&mut self, entry: &mut tar::Entry<'_, R>) -> io::Result<()> {
        use tar::EntryType as T;
        let kind = entry.header().entry_type();
        if kind.is_pax_global_extensions()
            || kind.is_pax_local_extensions()
            || kind.is_gnu_longname()
            || kind.is_gnu_longlink()
        {
            return Ok(());
        }
        if !matches!(kind, T::Regular | T::Continuous | T::GNUSparse) {
            self.parent = None;
        }
        let comps = self.name(&entry.path_bytes())?;
        let meta = self.meta(entry)?;
        let Some((name, parent)) = comps.split_last() else {
            // The root itself: a layer may give it metadata; an ADD leaves it as the destination made it.
            return match (self.flavor, kind.is_dir()) {
                (Flavor::Layer, true) => {
                    self.dirs.push((Rel::new(), meta));
                    Ok(())
                }
                (Flavor::Layer, false) => Err(invalid("a non-directory entry names the root")),
                (Flavor::Archive { .. }, _) => Ok(()),
            };
        };
        let name = name.as_os_str();
        if self.flavor == Flavor::Layer && name.as_bytes().starts_with(WHITEOUT_PREFIX) {
            return self.whiteout(parent, name);
        }
        match kind {
            T::Directory => {
                let (rel, dir, leaf) = match self.flavor {
                    Flavor::Layer => {
                        let (parent_rel, dir) = self.parent_dir(parent)?;
                        (parent_rel.join(name), dir, name.to_owned())
                    }
                    // As BuildKit's resolveRootPath: a directory entry follows a symlink of the same name.
                    Flavor::Archive { .. } => {
                        let rel = self.root.resolve(join(&comps).as_os_str().as_bytes(), true)?;
                        let Some(leaf) = rel.file_name().map(OsStr::to_owned) else {
                            return Ok(());
                        };
                        let parent = rel.parent().unwrap_or(Path::new(""));
                        self.root.mkdir_all(parent, 0o755, None, None)?;
                        (rel.clone(), self.root.open_dir(parent)?, leaf)
                    }
                };
                if !self.clear_slot(&dir, &leaf, true)? {
                    mkdirat(&dir, &leaf, Mode::from_raw_mode(0o700))?;
                }
                self.dirs.push((rel, meta));
                Ok(())
            }
            T::Regular | T::Continuous | T::GNUSparse => {
                let dir = self.file_parent(parent)?;
                self.clear_slot(&dir, name, false)?;
                let fd = openat(
                    &dir,
                    name,
                    OFlags::WRONLY | OFlags::CREATE | OFlags::EXCL | OFlags::NOFOLLOW | OFlags::CLOEXEC,
                    Mode::from_raw_mode(0o600),
                )?;
                self.space.admit(self.root.fd(), entry.size())?;
                let mut file = File::from(fd);
                io::copy(entry, &mut file)?;
                self.size += entry.size();
                drop(file);
                self.apply_meta(&dir, name, &meta, false)?;
                let dir = dir.try_clone()?;
                self.remember_parent(parent, dir);
                Ok(())
            }
            T::Symlink => {
                let target = entry
                    .link_name_bytes()
                    .ok_or_else(|| invalid("symlink without a target"))?;
                let (_, dir) = self.parent_dir(parent)?;
                self.clear_slot(&dir, name, false)?;
                // Stored verbatim: it is only ever followed by resolution inside a root.
                symlinkat(OsStr::from_bytes(&target), &dir, name)?;
                self.apply_meta(&dir, name, &meta, true)
            }
            T::Link => self.hardlink(entry, &comps, parent, name, &meta),
            T::Char | T::Block | T::Fifo => {
                let (file_type, dev) = match kind {
                    T::Fifo => (FileType::Fifo, 0),
                    _ => {
                        let header = entry.header();
                        let major = header
                            .device_major()?
                            .ok_or_else(|| invalid("device without a major number"))?;
                        let minor = header
                            .device_minor()?
                            .ok_or_else(|| invalid("device without a minor number"))?;
                        let file_type = if kind == T::Char {
                            FileType::CharacterDevice
                        } else {
                            FileType::BlockDevice
                        };
                        (file_type, makedev(major, minor))
                    }
                };
                let (_, dir) = self.parent_dir(parent)?;
                self.clear_slot(&dir, name, false)?;
                mknodat(&dir, name, file_type, Mode::from_raw_mode(0o600), dev)?;
                self.apply_meta(&dir, name, &meta, false)
            }
            other => match self.flavor {
                Flavor::Layer => {
                    tracing::warn!(path = %join(&comps).display(), kind = ?other, "skipping unsupported tar entry type");
                    Ok(())
                }
                Flavor::Archive { .. } => Err(invalid(&format!("unsupported tar entry type {other:?}"))),
            },
        }
    }

    fn hardlink<R: Read>(
        &mut self,
        entry: &tar::Entry<'_, R>,
        comps: &[OsString],
        parent: &[OsString],
        name: &OsStr,
        meta: &Meta,
    ) -> io::Result<()> {
        let target = entry
            .link_name_bytes()
            .ok_or_else(|| invalid("hardlink without a target"))?;
        let shown = String::from_utf8_lossy(&target).into_owned();
        let target_comps = self.name(&target)?;
        if target_comps == comps {
            return Ok(());
        }
        let Some((target_name, target_parent)) = target_comps.split_last() else {
            return Err(refuse("refusing a hardlink to the root".to_owned()));
        };
        let target_dir = self
            .root
            .lookup(join(target_parent).as_os_str().as_bytes(), true)
            .and_then(|found| found.ok_or_else(|| Errno::NOENT.into()))
            .and_then(|rel| self.root.open_dir(&rel))
            .map_err(|e| io::Error::new(e.kind(), format!("hardlink target {shown:?}: {e}")))?;
        let (_, dir) = self.parent_dir(parent)?;
        self.clear_slot(&dir, name, false)?;
        // Without AT_SYMLINK_FOLLOW a symlink target is linked itself, not what it points at.
        linkat(&target_dir, target_name.as_os_str(), &dir, name, AtFlags::empty())
            .map_err(|e| io::Error::new(io::Error::from(e).kind(), format!("hardlink to {shown:?}: {e}")))?;
        // An ADD applies the link's header to the inode it shares (as moby does), unless that is a symlink;
        // a layer's inode keeps the metadata of the entry that made it, as containerd keeps it.
        if let Flavor::Archive { .. } = self.flavor {
            let st = statat(&dir, name, AtFlags::SYMLINK_NOFOLLOW)?;
            if FileType::from_raw_mode(st.st_mode) != FileType::Symlink {
                self.apply_meta(&dir, name, meta, false)?;
            }
        }
        Ok(())
    }

    /// The components of an entry name, relative to the root (empty for the root itself).
    fn name(&self, raw: &[u8]) -> io::Result<Vec<OsString>> {
        match self.flavor {
            Flavor::Layer => {
                let path = Path::new(OsStr::from_bytes(raw));
                let mut out = Vec::new();
                for c in path.components() {
                    match c {
                        Component::RootDir | Component::CurDir => {}
                        Component::Normal(n) => out.push(n.to_owned()),
                        Component::ParentDir => {
                            return Err(refuse(format!("refusing {path:?}: it has a '..' component")));
                        }
                        Component::Prefix(_) => {
                            return Err(refuse(format!("refusing {path:?}: path prefix")));
                        }
                    }
                }
                Ok(out)
            }
            // Go's `filepath.Clean`, then BuildKit's rule: a relative name that still climbs above the root
            // is refused; a leading `/` is dropped.
            Flavor::Archive { .. } => {
                let absolute = raw.starts_with(b"/");
                let mut parts: Vec<OsString> = Vec::new();
                for part in raw.split(|&b| b == b'/') {
                    match part {
                        b"" | b"." => {}
                        b".." => {
                            if parts.pop().is_none() && !absolute {
                                let shown = String::from_utf8_lossy(raw);
                                return Err(refuse(format!(
                                    "archive path {shown:?} is outside the extraction root"
                                )));
                            }
                        }
                        _ => parts.push(OsStr::from_bytes(part).to_owned()),
                    }
                }
                Ok(parts)
            }
        }
    }

    fn meta<R: Read>(&self, entry: &mut tar::Entry<'_, R>) -> io::Result<Meta> {
        let header = entry.header();
        let (mut uid, mut gid) = (header.uid()?, header.gid()?);
        let mut mtime = Timespec {
            tv_sec: i64::try_from(header.mtime()?).map_err(|_| invalid("mtime out of range"))?,
            tv_nsec: 0,
        };
        let mode = header.mode()? & 0o7777;
        let mut atime = None;
        let mut xattrs = Vec::new();
        if let Some(records) = entry.pax_extensions()? {
            for record in records {
                let record = record?;
                let value = record.value_bytes();
                match record.key_bytes() {
                    b"uid" => uid = parse_pax_id(value)?,
                    b"gid" => gid = parse_pax_id(value)?,
                    b"mtime" => match parse_pax_time(value) {
                        Some(t) => mtime = t,
                        None => {
                            tracing::warn!(value = %String::from_utf8_lossy(value), "ignoring malformed PAX mtime")
                        }
                    },
                    b"atime" => atime = parse_pax_time(value),
                    key => {
                        if let Some(name) = key.strip_prefix(b"SCHILY.xattr.") {
                            xattrs.push((String::from_utf8_lossy(name).into_owned(), value.to_vec()));
                        }
                    }
                }
            }
        }
        // -1 means "leave unchanged" to chown; an id that large is not a real owner.
        let to_id = |v: u64, what: &str| {
            u32::try_from(v)
                .ok()
                .filter(|v| *v != u32::MAX)
                .ok_or_else(|| invalid(&format!("{what} {v} out of range")))
        };
        let clamp = |t: Timespec| match self.flavor {
            Flavor::Archive {
                timestamp: Some(limit),
                ..
            } if t.tv_sec > limit => Timespec {
                tv_sec: limit,
                tv_nsec: 0,
            },
            _ => t,
        };
        Ok(Meta {
            uid: to_id(uid, "uid")?,
            gid: to_id(gid, "gid")?,
            mode,
            atime: clamp(atime.unwrap_or(mtime)),
            mtime: clamp(mtime),
            xattrs,
        })
    }

    /// `.wh.NAME` hides NAME of the lower layers: an overlay whiteout (char device 0/0) named NAME.
    /// `.wh..wh..opq` hides all of the directory's lower contents: the overlay opaque xattr on it.
    fn whiteout(&mut self, parent: &[OsString], name: &OsStr) -> io::Result<()> {
        let bytes = name.as_bytes();
        let (_, dir) = self.parent_dir(parent)?;
        if bytes == OPAQUE_MARKER {
            return Ok(fsetxattr(&dir, OPAQUE_XATTR, b"y", XattrFlags::empty())?);
        }
        if bytes.starts_with(AUFS_META_PREFIX) {
            return Ok(());
        }
        let hidden = OsStr::from_bytes(&bytes[WHITEOUT_PREFIX.len()..]);
        if hidden.is_empty() || hidden == "." || hidden == ".." {
            return Err(invalid("whiteout of an invalid name"));
        }
        // A whiteout applies to lower layers only; if this layer has the name already, its entry wins.
        match statat(&dir, hidden, AtFlags::SYMLINK_NOFOLLOW) {
            Ok(_) => Ok(()),
            Err(Errno::NOENT) => Ok(mknodat(
                &dir,
                hidden,
                FileType::CharacterDevice,
                Mode::empty(),
                makedev(0, 0),
            )?),
            Err(e) => Err(e.into()),
        }
    }

    fn file_parent(&mut self, parent: &[OsString]) -> io::Result<OwnedFd> {
        if let Some((comps, fd)) = &self.parent
            && comps == parent
        {
            return fd.try_clone();
        }
        Ok(self.parent_dir(parent)?.1)
    }

    fn remember_parent(&mut self, parent: &[OsString], fd: OwnedFd) {
        if self.parent.as_ref().is_none_or(|(comps, _)| comps != parent) {
            self.parent = Some((parent.to_vec(), fd));
        }
    }

    /// The directory `comps` (inside the root, symlinks resolved as if the root were `/`), missing
    /// directories created as the flavor allows, and where it resolved to.
    fn parent_dir(&self, comps: &[OsString]) -> io::Result<(Rel, OwnedFd)> {
        let path = join(comps);
        let describe = |e: io::Error, at: &Path| {
            io::Error::new(e.kind(), format!("directory {at:?} in the extraction root: {e}"))
        };
        if let Some(rel) = self.root.lookup(path.as_os_str().as_bytes(), true)? {
            let fd = self.root.open_dir(&rel).map_err(|e| describe(e, &path))?;
            return Ok((rel, fd));
        }
        match self.flavor {
            // BuildKit's MkdirAll on the resolved path: directories missing at a symlink's target are
            // created there, inside the root.
            Flavor::Archive { .. } => {
                let rel = self.root.resolve(path.as_os_str().as_bytes(), true)?;
                self.root
                    .mkdir_all(&rel, 0o755, None, None)
                    .map_err(|e| describe(e, &path))?;
                let fd = self.root.open_dir(&rel).map_err(|e| describe(e, &path))?;
                Ok((rel, fd))
            }
            // Only missing names are created; a symlink that leads nowhere is not a directory.
            Flavor::Layer => {
                let mut rel = Rel::new();
                let mut dir = self.root.open_dir(&rel)?;
                for i in 0..comps.len() {
                    let prefix = join(&comps[..=i]);
                    rel = match self.root.lookup(prefix.as_os_str().as_bytes(), true)? {
                        Some(found) => found,
                        None => {
                            mkdirat(&dir, comps[i].as_os_str(), Mode::from_raw_mode(0o755)).map_err(|e| match e {
                                Errno::EXIST => refuse(format!(
                                    "{prefix:?} is not a directory inside the snapshot (symlinks resolve within the snapshot root)"
                                )),
                                e => describe(e.into(), &prefix),
                            })?;
                            rel.join(&comps[i])
                        }
                    };
                    dir = self.root.open_dir(&rel).map_err(|e| describe(e, &prefix))?;
                }
                Ok((rel, dir))
            }
        }
    }

    /// Makes room for a new entry called `name`: removes a non-directory, or a directory unless `keep_dir`
    /// (a directory entry over an existing directory merges into it). Returns whether a directory was kept.
    fn clear_slot(&mut self, dir: &OwnedFd, name: &OsStr, keep_dir: bool) -> io::Result<bool> {
        let is_dir = match statat(dir, name, AtFlags::SYMLINK_NOFOLLOW) {
            Err(Errno::NOENT) => return Ok(false),
            Err(e) => return Err(e.into()),
            Ok(st) => FileType::from_raw_mode(st.st_mode) == FileType::Directory,
        };
        if is_dir && keep_dir {
            return Ok(true);
        }
        // What a cached parent resolved through may be what goes now.
        self.parent = None;
        match is_dir {
            true => remove_tree(dir.as_fd(), name)?,
            false => unlinkat(dir, name, AtFlags::empty())?,
        }
        Ok(false)
    }

    /// Owner, xattrs, mode, then times: chown clears set-id bits and file capabilities, so it goes first.
    fn apply_meta(&self, dir: &OwnedFd, name: &OsStr, meta: &Meta, symlink: bool) -> io::Result<()> {
        let owner = match self.flavor {
            Flavor::Archive {
                owner: Some(owner), ..
            } => Some(owner),
            _ if self.as_root => Some((meta.uid, meta.gid)),
            _ => None,
        };
        set_meta_at(dir.as_fd(), name, owner, None, None)?;
        if self.flavor == Flavor::Layer {
            self.apply_xattrs(dir, name, meta)?;
        }
        if !symlink {
            chmodat(dir, name, Mode::from_raw_mode(meta.mode), AtFlags::empty())?;
        }
        let times = Timestamps {
            last_access: meta.atime,
            last_modification: meta.mtime,
        };
        utimensat(dir, name, &times, AtFlags::SYMLINK_NOFOLLOW)?;
        Ok(())
    }

    fn apply_xattrs(&self, dir: &OwnedFd, name: &OsStr, meta: &Meta) -> io::Result<()> {
        for (key, value) in &meta.xattrs {
            if key.starts_with("trusted.overlay.") {
                // Overlay's own attributes (redirects, metacopy, opacity) would change how the snapshot
                // stacks; a layer expresses them only through whiteout entries.
                tracing::warn!(xattr = %key, "ignoring an overlayfs xattr stored in a layer");
                continue;
            }
            if !self.as_root && !key.starts_with("user.") {
                tracing::warn!(xattr = %key, "not root: skipping a privileged xattr");
                continue;
            }
            // lsetxattr through the parent's /proc fd link reaches `name` itself without following it, for
            // every file type (a symlink or device cannot be opened to use fsetxattr).
            let path = Path::new("/proc/self/fd")
                .join(dir.as_raw_fd().to_string())
                .join(name);
            lsetxattr(&path, key.as_str(), value, XattrFlags::empty())
                .map_err(|e| io::Error::new(io::Error::from(e).kind(), format!("set xattr {key}: {e}")))?;
        }
        Ok(())
    }

    fn finish_dirs(&mut self) -> Result<(), ExtractError> {
        for (rel, meta) in std::mem::take(&mut self.dirs).iter().rev() {
            let at = |error: io::Error| ExtractError {
                entry: Some(rel.display().to_string()),
                error,
            };
            let (dir, name) = match (rel.parent(), rel.file_name()) {
                (Some(parent), Some(name)) => match self.root.open_dir(parent) {
                    Ok(dir) => (dir, name),
                    // A later entry replaced the directory or a parent with something else.
                    Err(_) => continue,
                },
                _ => (self.root.open_dir(Path::new("")).map_err(at)?, OsStr::new(".")),
            };
            match statat(&dir, name, AtFlags::SYMLINK_NOFOLLOW) {
                Ok(st) if FileType::from_raw_mode(st.st_mode) == FileType::Directory => {}
                _ => continue,
            }
            self.apply_meta(&dir, name, meta, false).map_err(at)?;
        }
        Ok(())
    }
}

fn join(components: &[OsString]) -> PathBuf {
    components.iter().collect()
}

fn parse_pax_id(value: &[u8]) -> io::Result<u64> {
    std::str::from_utf8(value)
        .ok()
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| invalid("malformed PAX uid/gid"))
}

/// PAX times are decimal seconds with an optional fraction ("1700000000.5").
fn parse_pax_time(value: &[u8]) -> Option<Timespec> {
    let s = std::str::from_utf8(value).ok()?;
    let (secs, frac) = s.split_once('.').unwrap_or((s, ""));
    let tv_sec: i64 = secs.parse().ok()?;
    if !frac.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let digits: String = frac.chars().chain(std::iter::repeat('0')).take(9).collect();
    let tv_nsec: i64 = digits.parse().ok()?;
    if secs.starts_with('-') && tv_nsec != 0 {
        // -1.5 is 2 seconds before 0.5 past.
        return Some(Timespec {
            tv_sec: tv_sec - 1,
            tv_nsec: 1_000_000_000 - tv_nsec,
        });
    }
    Some(Timespec { tv_sec, tv_nsec })
}

fn invalid(msg: &str) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, msg.to_owned())
}

fn refuse(msg: String) -> io::Error {
    io::Error::new(io::ErrorKind::PermissionDenied, msg)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pax_times() {
        let t = |s: &str| parse_pax_time(s.as_bytes()).map(|t| (t.tv_sec, t.tv_nsec));
        assert_eq!(t("1700000000"), Some((1_700_000_000, 0)));
        assert_eq!(t("1700000000.25"), Some((1_700_000_000, 250_000_000)));
        assert_eq!(t("-1.5"), Some((-2, 500_000_000)));
        assert_eq!(t("x"), None);
    }
}
