//! Unpacking layer blobs into snapshot directories, safely.
//!
//! Every entry is placed relative to a directory fd of the snapshot root. Parent directories are resolved
//! with `openat2(RESOLVE_IN_ROOT | RESOLVE_NO_MAGICLINKS)`, so symlinks the layer made earlier (even ones
//! pointing at `/` or `../..`) resolve inside the snapshot, never above it; the last component is always
//! created fresh (after unlinking whatever was there) with calls that do not follow symlinks. Names with a
//! `..` component are refused; absolute names are taken relative to the snapshot root, as tar does.

use std::ffi::{OsStr, OsString};
use std::fs::File;
use std::io::{self, BufRead, BufReader, Read};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Component, Path, PathBuf};

use rustix::fs::{
    AtFlags, FileType, Mode, OFlags, ResolveFlags, Timespec, Timestamps, XattrFlags, chmodat, chownat,
    fsetxattr, linkat, lsetxattr, makedev, mkdirat, mknodat, openat, openat2, statat, symlinkat, unlinkat,
    utimensat,
};
use rustix::io::Errno;
use serde::{Deserialize, Serialize};

use crate::digest::Hashing;
use crate::error::{Error, IoContext, Result};
use crate::fsutil::{fsync_dir, now_secs};
use crate::meta::{
    BlobMeta, LeaseResource, SnapshotId, SnapshotRecord, add_to_lease, put_blob_meta, put_snapshot,
};
use crate::{Digest, Store};

/// How a layer blob is compressed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Compression {
    None,
    Gzip,
    Zstd,
}

impl Compression {
    /// The compression a layer media type declares (OCI and Docker v2 layer types, distributable or not).
    pub fn from_media_type(media_type: &str) -> Result<Compression> {
        let is_layer = media_type.starts_with("application/vnd.oci.image.layer.")
            || media_type.starts_with("application/vnd.docker.image.rootfs.");
        let unsupported = || Error::UnsupportedMediaType(media_type.to_owned());
        if !is_layer {
            return Err(unsupported());
        }
        if media_type.ends_with("tar+gzip") || media_type.ends_with("tar.gzip") {
            Ok(Compression::Gzip)
        } else if media_type.ends_with("tar+zstd") {
            Ok(Compression::Zstd)
        } else if media_type.ends_with(".tar") {
            Ok(Compression::None)
        } else {
            Err(unsupported())
        }
    }

    /// The compression the first bytes of a blob show.
    pub fn detect(head: &[u8]) -> Compression {
        if head.starts_with(&[0x1f, 0x8b]) {
            Compression::Gzip
        } else if head.starts_with(&[0x28, 0xb5, 0x2f, 0xfd]) {
            Compression::Zstd
        } else {
            Compression::None
        }
    }

    /// A reader of what `compressed` holds uncompressed.
    pub fn decoder<'a, R: BufRead + Send + 'a>(self, compressed: R) -> io::Result<Box<dyn Read + Send + 'a>> {
        Ok(match self {
            Compression::Gzip => Box::new(flate2::bufread::MultiGzDecoder::new(compressed)),
            Compression::Zstd => Box::new(zstd::Decoder::with_buffer(compressed)?),
            Compression::None => Box::new(compressed),
        })
    }
}

const OPAQUE_XATTR: &str = "trusted.overlay.opaque";
const WHITEOUT_PREFIX: &[u8] = b".wh.";
const OPAQUE_MARKER: &[u8] = b".wh..wh..opq";
/// Other `.wh..wh.` names are aufs bookkeeping, which means nothing to overlayfs.
const AUFS_META_PREFIX: &[u8] = b".wh..wh.";

impl Store {
    /// Unpacks the layer blob into a snapshot and returns its id. The snapshot is named after the layer's
    /// diff_id (computed while unpacking), so a layer already unpacked — from this blob or from another
    /// compression of it — is not unpacked again. The compression is detected from the content; the media
    /// type must be a layer type.
    pub fn unpack_layer(&self, blob: &Digest, media_type: &str) -> Result<SnapshotId> {
        let declared = Compression::from_media_type(media_type)?;
        if let Some(id) = self.unpacked_already(blob)? {
            return Ok(id);
        }
        // Two processes unpacking the same blob: the second waits here and then finds the first's result.
        let _unpacking = self.lock(&format!("unpack {blob}"))?;
        if let Some(id) = self.unpacked_already(blob)? {
            return Ok(id);
        }

        let tmp = TempDir::create(self.temp_path("unpack"))?;
        let fs_dir = tmp.path.join("fs");
        std::fs::create_dir(&fs_dir).ctx(|| format!("create {}", fs_dir.display()))?;
        let file = self.open_blob(blob)?;
        let layer_err = |entry: Option<String>| {
            move |source: io::Error| Error::Unpack {
                blob: *blob,
                entry,
                source,
            }
        };
        let unpacked = unpack_tar(file, &fs_dir).map_err(|(entry, e)| layer_err(entry)(e))?;
        if unpacked.blob_digest != *blob {
            return Err(Error::CorruptBlob {
                digest: *blob,
                actual: unpacked.blob_digest,
            });
        }
        if unpacked.compression != declared {
            tracing::warn!(%blob, media_type, detected = ?unpacked.compression, "layer compression differs from its media type; using the content's");
        }

        let id = SnapshotId::for_diff_id(&unpacked.diff_id);
        let target = self.snapshots_dir().join(id.as_str());
        let held = self.db_lock()?;
        // A complete snapshot of this diff_id (from another blob of the same layer) is kept; a directory
        // without its fs/ (damaged by hand) is replaced.
        let complete = self.snapshot_path(&id).is_dir();
        if !complete {
            let stale = target
                .try_exists()
                .ctx(|| format!("look up {}", target.display()))?;
            let trash = if stale {
                Some(TempDir {
                    path: self.move_to_trash(&target)?,
                })
            } else {
                None
            };
            std::fs::rename(&tmp.path, &target)
                .ctx(|| format!("move {} to {}", tmp.path.display(), target.display()))?;
            fsync_dir(&self.snapshots_dir())?;
            drop(trash);
        }
        let record = SnapshotRecord {
            diff_id: Some(unpacked.diff_id),
            parent: None,
            size: unpacked.size,
            created: now_secs(),
            ..SnapshotRecord::default()
        };
        let meta = BlobMeta {
            media_type: Some(media_type.to_owned()),
            diff_id: Some(unpacked.diff_id),
            compression: Some(unpacked.compression),
            compression_level: None,
        };
        let lease = self.lease().cloned();
        self.write_locked(&held, |txn| {
            // Another blob of the same layer may have recorded this snapshot already; keep its record.
            if crate::meta::get_snapshot(txn, &id)?.is_none() {
                put_snapshot(txn, &id, &record)?;
            }
            put_blob_meta(txn, blob, &meta)?;
            if let Some(lease) = &lease {
                add_to_lease(txn, lease, LeaseResource::Snapshot(id.clone()))?;
            }
            Ok(())
        })?;
        Ok(id)
    }

    /// The layer tar a layer blob holds, decompressed as its content says (whatever its media type claims).
    pub fn open_layer_tar(&self, blob: &Digest) -> Result<Box<dyn Read + Send>> {
        let mut raw = BufReader::new(self.open_blob(blob)?);
        let head = raw.fill_buf().ctx(|| format!("read blob {blob}"))?;
        Compression::detect(head)
            .decoder(raw)
            .ctx(|| format!("decompress blob {blob}"))
    }

    /// The diff_id of a layer blob (the digest of its uncompressed tar) and the tar's size, read through
    /// once. For checking a layer against an image config without unpacking it.
    pub fn layer_diff_id(&self, blob: &Digest) -> Result<(Digest, u64)> {
        let mut tar = Hashing::new(self.open_layer_tar(blob)?);
        io::copy(&mut tar, &mut io::sink()).ctx(|| format!("decompress blob {blob}"))?;
        Ok((tar.digest(), tar.count))
    }

    /// The snapshot of `blob` if it has been unpacked (and leases it when this handle has a lease).
    fn unpacked_already(&self, blob: &Digest) -> Result<Option<SnapshotId>> {
        let Some(id) = self.recorded_snapshot_of_blob(blob)? else {
            return Ok(None);
        };
        // Lease before looking: once leased, a concurrent prune can no longer remove it.
        if let Some(lease) = self.lease() {
            self.lease_add(lease, LeaseResource::Snapshot(id.clone()))?;
        }
        Ok(self.snapshot_path(&id).is_dir().then_some(id))
    }
}

/// A directory in ROOT/tmp removed on drop unless it was renamed away.
struct TempDir {
    path: PathBuf,
}

impl TempDir {
    fn create(path: PathBuf) -> Result<TempDir> {
        std::fs::create_dir(&path).ctx(|| format!("create {}", path.display()))?;
        Ok(TempDir { path })
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        match std::fs::remove_dir_all(&self.path) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => tracing::warn!(path = %self.path.display(), error = %e, "could not remove temp dir"),
        }
    }
}

struct Unpacked {
    diff_id: Digest,
    blob_digest: Digest,
    compression: Compression,
    size: u64,
}

/// An error and the entry it happened at.
type EntryResult<T> = std::result::Result<T, (Option<String>, io::Error)>;

fn unpack_tar(file: File, dest: &Path) -> EntryResult<Unpacked> {
    let whole = |e: io::Error| (None, e);
    let mut raw = BufReader::new(Hashing::new(file));
    let compression = Compression::detect(raw.fill_buf().map_err(whole)?);
    let decompressed = compression.decoder(&mut raw).map_err(whole)?;
    let mut archive = tar::Archive::new(Hashing::new(decompressed));
    let root = open_dir_path(dest).map_err(whole)?;
    let mut unpacker = Unpacker {
        root,
        as_root: rustix::process::geteuid().is_root(),
        deferred_dirs: Vec::new(),
        size: 0,
    };
    for entry in archive.entries().map_err(whole)? {
        let mut entry = entry.map_err(whole)?;
        let name = String::from_utf8_lossy(&entry.path_bytes()).into_owned();
        unpacker.entry(&mut entry).map_err(|e| (Some(name), e))?;
    }
    unpacker.finish_dirs()?;
    // The diff_id covers the whole stream, including the end-of-archive blocks tar stops reading at.
    let mut tar_stream = archive.into_inner();
    io::copy(&mut tar_stream, &mut io::sink()).map_err(whole)?;
    let diff_id = tar_stream.digest();
    drop(tar_stream);
    io::copy(&mut raw, &mut io::sink()).map_err(whole)?;
    let blob_digest = raw.get_ref().digest();
    // One syncfs instead of an fsync per file: the snapshot must be complete on disk before it is renamed
    // into place.
    rustix::fs::syncfs(&unpacker.root).map_err(|e| whole(e.into()))?;
    Ok(Unpacked {
        diff_id,
        blob_digest,
        compression,
        size: unpacker.size,
    })
}

/// Metadata of one entry, from its header and PAX records.
struct Meta {
    mode: u32,
    uid: u32,
    gid: u32,
    mtime: Timespec,
    xattrs: Vec<(String, Vec<u8>)>,
}

impl Meta {
    fn from_entry<R: Read>(entry: &mut tar::Entry<'_, R>) -> io::Result<Meta> {
        let h = entry.header();
        let mut uid = h.uid()?;
        let mut gid = h.gid()?;
        let mut mtime = Timespec {
            tv_sec: i64::try_from(h.mtime()?).map_err(|_| invalid("mtime out of range"))?,
            tv_nsec: 0,
        };
        let mode = h.mode()? & 0o7777;
        let mut xattrs = Vec::new();
        if let Some(pax) = entry.pax_extensions()? {
            for ext in pax {
                let ext = ext?;
                let key = ext.key().map_err(|_| invalid("PAX key is not UTF-8"))?;
                let value = ext.value_bytes();
                match key {
                    "uid" => uid = parse_pax_id(value)?,
                    "gid" => gid = parse_pax_id(value)?,
                    "mtime" => match parse_pax_time(value) {
                        Some(t) => mtime = t,
                        None => {
                            tracing::warn!(value = %String::from_utf8_lossy(value), "ignoring malformed PAX mtime")
                        }
                    },
                    _ => {
                        if let Some(name) = key.strip_prefix("SCHILY.xattr.") {
                            xattrs.push((name.to_owned(), value.to_vec()));
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
        Ok(Meta {
            mode,
            uid: to_id(uid, "uid")?,
            gid: to_id(gid, "gid")?,
            mtime,
            xattrs,
        })
    }
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

/// The components of an entry name, relative to the snapshot root. `..` is refused outright: no layer a
/// real tool produces has it, and a clamped meaning would only hide a hostile archive.
fn components(path: &Path) -> io::Result<Vec<OsString>> {
    let mut out = Vec::new();
    for c in path.components() {
        match c {
            Component::RootDir | Component::CurDir => {}
            Component::Normal(n) => out.push(n.to_owned()),
            Component::ParentDir => {
                return Err(refuse(format!("refusing {:?}: it has a '..' component", path)));
            }
            Component::Prefix(_) => return Err(refuse(format!("refusing {:?}: path prefix", path))),
        }
    }
    Ok(out)
}

fn join(components: &[OsString]) -> PathBuf {
    components.iter().collect()
}

fn open_dir_path(path: &Path) -> io::Result<OwnedFd> {
    Ok(openat(
        rustix::fs::CWD,
        path,
        OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
        Mode::empty(),
    )?)
}

struct Unpacker {
    root: OwnedFd,
    /// Only root can give files away; unprivileged unpacks leave them owned by the caller.
    as_root: bool,
    /// Directories get their mode and times last, after their contents stop changing them.
    deferred_dirs: Vec<(Vec<OsString>, Meta)>,
    size: u64,
}

impl Unpacker {
    fn entry<R: Read>(&mut self, entry: &mut tar::Entry<'_, R>) -> io::Result<()> {
        let kind = entry.header().entry_type();
        if kind.is_pax_global_extensions() {
            return Ok(());
        }
        let path = entry.path()?.into_owned();
        let comps = components(&path)?;
        let Some((name, parent)) = comps.split_last() else {
            // The root itself ("./"): only its metadata can be set.
            if kind.is_dir() {
                let meta = Meta::from_entry(entry)?;
                self.deferred_dirs.push((Vec::new(), meta));
                return Ok(());
            }
            return Err(invalid("a non-directory entry names the root"));
        };
        let name = name.as_os_str();

        if name.as_bytes().starts_with(WHITEOUT_PREFIX) {
            return self.whiteout(parent, name);
        }

        let dir = self.parent_dir(parent, true)?;
        let meta = Meta::from_entry(entry)?;
        use tar::EntryType as T;
        match kind {
            T::Regular | T::Continuous | T::GNUSparse => {
                self.clear_slot(&dir, name, false)?;
                let fd = openat(
                    &dir,
                    name,
                    OFlags::WRONLY | OFlags::CREATE | OFlags::EXCL | OFlags::NOFOLLOW | OFlags::CLOEXEC,
                    Mode::from_raw_mode(0o600),
                )?;
                let mut file = File::from(fd);
                io::copy(entry, &mut file)?;
                self.size += entry.size();
                self.apply_meta(&dir, name, &meta, false)
            }
            T::Directory => {
                if !self.clear_slot(&dir, name, true)? {
                    mkdirat(&dir, name, Mode::from_raw_mode(0o700))?;
                }
                self.deferred_dirs.push((comps.clone(), meta));
                Ok(())
            }
            T::Symlink => {
                let target = entry
                    .link_name()?
                    .ok_or_else(|| invalid("symlink without a target"))?
                    .into_owned();
                self.clear_slot(&dir, name, false)?;
                // The target is stored verbatim and never followed while unpacking.
                symlinkat(target.as_os_str(), &dir, name)?;
                self.apply_meta(&dir, name, &meta, true)
            }
            T::Link => {
                let target = entry
                    .link_name()?
                    .ok_or_else(|| invalid("hardlink without a target"))?
                    .into_owned();
                let target_comps = components(&target)?;
                if target_comps == comps {
                    return Ok(());
                }
                let Some((target_name, target_parent)) = target_comps.split_last() else {
                    return Err(refuse("refusing a hardlink to the root".to_owned()));
                };
                let target_dir = self
                    .parent_dir(target_parent, false)
                    .map_err(|e| io::Error::new(e.kind(), format!("hardlink target {target:?}: {e}")))?;
                self.clear_slot(&dir, name, false)?;
                // Without AT_SYMLINK_FOLLOW a symlink target is linked itself, not what it points at.
                linkat(&target_dir, target_name.as_os_str(), &dir, name, AtFlags::empty()).map_err(|e| {
                    io::Error::new(io::Error::from(e).kind(), format!("hardlink to {target:?}: {e}"))
                })?;
                Ok(())
            }
            T::Char | T::Block | T::Fifo => {
                let (file_type, dev) = match kind {
                    T::Fifo => (FileType::Fifo, 0),
                    _ => {
                        let h = entry.header();
                        let major = h
                            .device_major()?
                            .ok_or_else(|| invalid("device without a major number"))?;
                        let minor = h
                            .device_minor()?
                            .ok_or_else(|| invalid("device without a minor number"))?;
                        let t = if kind == T::Char {
                            FileType::CharacterDevice
                        } else {
                            FileType::BlockDevice
                        };
                        (t, makedev(major, minor))
                    }
                };
                self.clear_slot(&dir, name, false)?;
                mknodat(&dir, name, file_type, Mode::from_raw_mode(0o600), dev)?;
                self.apply_meta(&dir, name, &meta, false)
            }
            other => {
                tracing::warn!(path = %path.display(), kind = ?other, "skipping unsupported tar entry type");
                Ok(())
            }
        }
    }

    /// `.wh.NAME` hides NAME of the lower layers: an overlay whiteout (char device 0/0) named NAME.
    /// `.wh..wh..opq` hides all of the directory's lower contents: the overlay opaque xattr on it.
    fn whiteout(&mut self, parent: &[OsString], name: &OsStr) -> io::Result<()> {
        let bytes = name.as_bytes();
        if bytes == OPAQUE_MARKER {
            let dir = self.parent_dir(parent, true)?;
            return Ok(fsetxattr(&dir, OPAQUE_XATTR, b"y", XattrFlags::empty())?);
        }
        if bytes.starts_with(AUFS_META_PREFIX) {
            return Ok(());
        }
        let hidden = OsStr::from_bytes(&bytes[WHITEOUT_PREFIX.len()..]);
        if hidden.is_empty() || hidden == "." || hidden == ".." {
            return Err(invalid("whiteout of an invalid name"));
        }
        let dir = self.parent_dir(parent, true)?;
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

    /// Opens the directory `comps` (inside the root, symlinks resolved as if the root were `/`), creating
    /// missing directories when `create` is set.
    fn parent_dir(&self, comps: &[OsString], create: bool) -> io::Result<OwnedFd> {
        match self.resolve_dir(comps) {
            Err(Errno::NOENT) if create => {}
            r => return r.map_err(|e| describe(e, comps)),
        }
        let mut dir = self.resolve_dir(&[]).map_err(|e| describe(e, &[]))?;
        for i in 0..comps.len() {
            dir = match self.resolve_dir(&comps[..=i]) {
                Ok(fd) => fd,
                Err(Errno::NOENT) => {
                    mkdirat(&dir, comps[i].as_os_str(), Mode::from_raw_mode(0o755)).map_err(|e| match e {
                        Errno::EXIST => refuse(format!(
                            "{:?} is not a directory inside the snapshot (symlinks resolve within the snapshot root)",
                            join(&comps[..=i])
                        )),
                        e => describe(e, &comps[..=i]),
                    })?;
                    self.resolve_dir(&comps[..=i])
                        .map_err(|e| describe(e, &comps[..=i]))?
                }
                Err(e) => return Err(describe(e, &comps[..=i])),
            };
        }
        Ok(dir)
    }

    fn resolve_dir(&self, comps: &[OsString]) -> Result<OwnedFd, Errno> {
        let path = if comps.is_empty() {
            PathBuf::from(".")
        } else {
            join(comps)
        };
        // EAGAIN means a concurrent rename raced the lookup; nothing else renames in a private temp dir, so a
        // few retries are plenty.
        let mut tries = 0;
        loop {
            match openat2(
                &self.root,
                &path,
                OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC,
                Mode::empty(),
                ResolveFlags::IN_ROOT | ResolveFlags::NO_MAGICLINKS,
            ) {
                Err(Errno::AGAIN) if tries < 8 => tries += 1,
                r => return r,
            }
        }
    }

    /// Makes room for a new entry called `name`: removes a non-directory, or a directory unless
    /// `keep_dir` (a directory entry over an existing directory merges into it). Returns whether a
    /// directory was kept.
    fn clear_slot(&self, dir: &OwnedFd, name: &OsStr, keep_dir: bool) -> io::Result<bool> {
        match statat(dir, name, AtFlags::SYMLINK_NOFOLLOW) {
            Err(Errno::NOENT) => Ok(false),
            Err(e) => Err(e.into()),
            Ok(st) if FileType::from_raw_mode(st.st_mode) == FileType::Directory => {
                if keep_dir {
                    return Ok(true);
                }
                remove_tree(dir.as_fd(), name)?;
                Ok(false)
            }
            Ok(_) => {
                unlinkat(dir, name, AtFlags::empty())?;
                Ok(false)
            }
        }
    }

    /// Owner, xattrs, mode, then times: chown clears set-id bits and file capabilities, so it goes first.
    fn apply_meta(&self, dir: &OwnedFd, name: &OsStr, meta: &Meta, symlink: bool) -> io::Result<()> {
        if self.as_root {
            chownat(
                dir,
                name,
                Some(rustix::fs::Uid::from_raw(meta.uid)),
                Some(rustix::fs::Gid::from_raw(meta.gid)),
                AtFlags::SYMLINK_NOFOLLOW,
            )?;
        }
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
        if !symlink {
            chmodat(dir, name, Mode::from_raw_mode(meta.mode), AtFlags::empty())?;
        }
        let times = Timestamps {
            last_access: meta.mtime,
            last_modification: meta.mtime,
        };
        utimensat(dir, name, &times, AtFlags::SYMLINK_NOFOLLOW)?;
        Ok(())
    }

    fn finish_dirs(&mut self) -> EntryResult<()> {
        for (comps, meta) in std::mem::take(&mut self.deferred_dirs).iter().rev() {
            let at = |e: io::Error| (Some(join(comps).display().to_string()), e);
            let (dir, name) = match comps.split_last() {
                None => (self.resolve_dir(&[]).map_err(|e| at(e.into()))?, OsStr::new(".")),
                Some((name, parent)) => match self.parent_dir(parent, false) {
                    Ok(dir) => (dir, name.as_os_str()),
                    // A later entry replaced the directory or a parent with something else.
                    Err(_) => continue,
                },
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

fn describe(e: Errno, comps: &[OsString]) -> io::Error {
    io::Error::new(
        io::Error::from(e).kind(),
        format!("directory {:?} in the snapshot: {e}", join(comps)),
    )
}

/// Removes `name` in `dir` and everything below it, never following a symlink.
fn remove_tree(dir: BorrowedFd<'_>, name: &OsStr) -> io::Result<()> {
    let fd = openat(
        dir,
        name,
        OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
        Mode::empty(),
    )?;
    for child in rustix::fs::Dir::read_from(&fd)? {
        let child = child?;
        let child_name = OsStr::from_bytes(child.file_name().to_bytes());
        if child_name == "." || child_name == ".." {
            continue;
        }
        let st = statat(&fd, child_name, AtFlags::SYMLINK_NOFOLLOW)?;
        if FileType::from_raw_mode(st.st_mode) == FileType::Directory {
            remove_tree(fd.as_fd(), child_name)?;
        } else {
            unlinkat(&fd, child_name, AtFlags::empty())?;
        }
    }
    unlinkat(dir, name, AtFlags::REMOVEDIR)?;
    Ok(())
}
