//! COPY and ADD of local files: BuildKit's `docopy` on top of fsutil's `copy.Copy`.
//!
//! For every source (after wildcard expansion) the destination is prepared as fsutil's `prepareTargetDir`
//! does — a directory source with `dir_contents_only` merges into the destination, a non-directory goes
//! inside an existing directory or becomes the destination name — then the tree is walked without following
//! symlinks. Directories, symlinks and special files are created during the walk; regular file contents are
//! copied afterwards on the rayon pool; directory metadata is applied last, deepest first, once nothing more
//! is written into them.

use std::collections::HashMap;
use std::ffi::OsStr;
use std::fs::File;
use std::io;
use std::os::fd::{AsFd, BorrowedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

use kiln_fsutil::root::{Owner, Rel, Root, seconds, set_meta_at, shown};
use kiln_fsutil::select::{Entry, Item, Selector};
use kiln_fsutil::stat::{Kind, Meta as Stat};
use kiln_llb::Copy;
use rayon::prelude::*;
use rustix::fs::{AtFlags, FileType, Gid, Mode, OFlags, Timestamps, Uid, XattrFlags, statat};
use rustix::io::Errno;

use super::archive;
use super::mode::Chmod;
use super::{FileOpEnv, FileOpError, clamp_epoch, io_error, resolve_owner};
use kiln_fsutil::glob::clean_rel;

pub(super) fn copy(target: &Root, env: &FileOpEnv, c: &Copy) -> Result<(), FileOpError> {
    if c.src.is_empty() {
        return Err(FileOpError::NoSources);
    }
    let index = c.src_input as usize;
    let input = env.inputs.get(index).ok_or(FileOpError::NoSuchInput {
        index: c.src_input,
        count: env.inputs.len(),
    })?;
    let ignore = env.ignore.get(index).copied().flatten();
    let source = Root::new(input).map_err(io_error("open", input.display().to_string()))?;
    let chmod = match &c.mode {
        Some(m) => Some(Chmod::parse(m).map_err(|reason| FileOpError::InvalidChmod {
            mode: m.clone(),
            reason,
        })?),
        None => None,
    };
    let dest = Dest::new(&c.dest);
    if !c.create_dest_path {
        // BuildKit insists only that the destination's parent exists.
        let rel = target
            .resolve(&dest.path, true)
            .map_err(io_error("stat", &c.dest))?;
        let parent = rel.parent().unwrap_or(Path::new(""));
        if target.lstat(parent).map_err(io_error("stat", &c.dest))?.is_none() {
            return Err(io_error("stat", &c.dest)(Errno::NOENT.into()));
        }
    }

    // Every source is looked up before anything is written, so a missing one fails the step cleanly.
    let selection = Selector::new(&source, ignore).select(&super::copy_spec(c))?;
    let count: usize = selection.iter().map(|s| s.items.len()).sum();
    if count > 1 && !dest.dir_syntax {
        let rel = target
            .resolve(&dest.path, true)
            .map_err(io_error("stat", &c.dest))?;
        let st = target.lstat(&rel).map_err(io_error("stat", &c.dest))?;
        if !st.is_some_and(|st| st.is_dir()) {
            return Err(FileOpError::DestNotDirectory {
                dest: c.dest.clone(),
                count,
            });
        }
    }

    let mut copier = Copier {
        source: &source,
        target,
        contents_only: c.dir_contents_only,
        auto_extract: c.auto_extract,
        in_context: ignore.is_some(),
        filtered: false,
        owner: resolve_owner(target, c.owner.as_ref())?,
        chmod: chmod.as_ref(),
        timestamp: c.timestamp.or(env.timestamp).map(clamp_epoch),
        inodes: HashMap::new(),
        ancestors: Vec::new(),
        files: Vec::new(),
        hardlinks: Vec::new(),
        dirs: Vec::new(),
    };
    for source in &selection {
        copier.filtered = source.filtered;
        for item in &source.items {
            copier.item(item, &dest)?;
        }
    }
    Ok(())
}

/// The destination of a copy: cleaned, plus whether it was written as a directory (`dir/`, `dir/.`).
struct Dest {
    path: Vec<u8>,
    dir_syntax: bool,
}

impl Dest {
    fn new(raw: &str) -> Dest {
        let dir_syntax = raw.is_empty() || raw == "." || raw.ends_with('/') || raw.ends_with("/.");
        Dest {
            path: clean_rel(raw.as_bytes()),
            dir_syntax,
        }
    }

    /// fsutil's `ensureDstPath`: the destination itself when it names a directory, else its parent.
    fn ensure(&self) -> &[u8] {
        match self.dir_syntax {
            true => &self.path,
            false => self
                .path
                .iter()
                .rposition(|&b| b == b'/')
                .map_or(&[][..], |at| &self.path[..at]),
        }
    }
}

/// Ownership, permission bits and (atime, mtime) of a copied entry.
#[derive(Clone, Copy)]
struct Meta {
    owner: Owner,
    mode: u32,
    atime: (i64, i64),
    mtime: (i64, i64),
}

impl Meta {
    fn timestamps(&self) -> Timestamps {
        Timestamps {
            last_access: seconds(self.atime.0, self.atime.1),
            last_modification: seconds(self.mtime.0, self.mtime.1),
        }
    }
}

struct FileJob {
    src: Rel,
    dst: Rel,
    meta: Meta,
}

struct DirJob {
    src: Rel,
    dst: Rel,
    meta: Meta,
}

/// A directory being walked, and whether it is in the target yet (deferred ones are not, until needed).
struct Ancestor {
    src: Rel,
    dst: Rel,
    st: Stat,
    in_target: bool,
}

struct Copier<'a> {
    source: &'a Root,
    target: &'a Root,
    contents_only: bool,
    auto_extract: bool,
    in_context: bool,
    /// `--parents`: a filter selects the entries, so only directories the copy creates get metadata.
    filtered: bool,
    owner: Option<Owner>,
    chmod: Option<&'a Chmod>,
    timestamp: Option<i64>,
    /// Regular files with several links already copied, by (device, inode): later names become hardlinks.
    inodes: HashMap<(u64, u64), Rel>,
    ancestors: Vec<Ancestor>,
    files: Vec<FileJob>,
    hardlinks: Vec<(Rel, Rel)>,
    dirs: Vec<DirJob>,
}

impl Copier<'_> {
    /// Copies one selected source item.
    fn item(&mut self, item: &Item, dest: &Dest) -> Result<(), FileOpError> {
        let src_is_dir = item.meta.is_dir();
        let shown_src = shown(&item.name);
        if self.auto_extract
            && item.meta.kind() == Kind::File
            && archive::extract_if_archive(
                self.source,
                &item.src,
                self.target,
                &dest.path,
                self.owner,
                self.timestamp,
                &shown_src,
            )?
        {
            return Ok(());
        }

        // fsutil's prepareTargetDir.
        let dest_shown = format!("/{}", String::from_utf8_lossy(&dest.path));
        let fail = |op| io_error(op, dest_shown.clone());
        let ensure = self
            .target
            .resolve(dest.ensure(), true)
            .map_err(fail("resolve"))?;
        self.target
            .mkdir_all(&ensure, 0o755, self.owner, self.timestamp)
            .map_err(fail("mkdir"))?;
        let mut dst = self.target.resolve(&dest.path, true).map_err(fail("resolve"))?;
        let dst_st = self.target.lstat(&dst).map_err(fail("stat"))?;
        let dst_is_dir = dst_st.as_ref().is_some_and(Stat::is_dir);
        let into = (!self.contents_only && src_is_dir && dst_st.is_some()) || (!src_is_dir && dst_is_dir);
        if into && let Some(name) = item.name.file_name() {
            dst.push(name);
        }
        let parent = match self.contents_only && src_is_dir && dst_st.is_none() {
            true => dst.clone(),
            false => dst.parent().map(Path::to_path_buf).unwrap_or_default(),
        };
        self.target
            .mkdir_all(&parent, 0o755, self.owner, self.timestamp)
            .map_err(io_error("mkdir", shown(&parent)))?;

        self.ancestors.clear();
        match src_is_dir {
            true => self.tree(item, &dst)?,
            false => self.leaf(&item.src, &item.meta, item.link.as_deref(), &dst)?,
        }
        self.flush()
    }

    /// Copies a directory item and the entries the selection lists below it.
    fn tree(&mut self, item: &Item, dst: &Path) -> Result<(), FileOpError> {
        self.enter(&item.src, &item.meta, dst, true, item.hidden_dir)?;
        for entry in &item.entries {
            // The entry's parent is the ancestor at its depth - 1 (the item is at 0).
            self.ancestors.truncate(entry.depth());
            let src = item.src.join(&entry.rel);
            let dst = dst.join(&entry.rel);
            self.entry(entry, &src, &dst)?;
        }
        Ok(())
    }

    fn entry(&mut self, entry: &Entry, src: &Path, dst: &Path) -> Result<(), FileOpError> {
        if entry.meta.is_dir() {
            return self.enter(src, &entry.meta, dst, false, entry.deferred);
        }
        self.create_ancestors()?;
        self.leaf(src, &entry.meta, entry.link.as_deref(), dst)
    }

    /// A directory on the way down: created now, or (`deferred`) once something below it is copied.
    fn enter(
        &mut self,
        src: &Path,
        st: &Stat,
        dst: &Path,
        top: bool,
        deferred: bool,
    ) -> Result<(), FileOpError> {
        if !deferred {
            self.create_ancestors()?;
            let made = make_dir(self.target, dst)?;
            // fsutil: the source's metadata goes onto a directory it created, and onto existing ones below the
            // top — except under include patterns, where only created directories get it.
            if made || (!top && !self.filtered) {
                self.dirs.push(DirJob {
                    src: src.to_path_buf(),
                    dst: dst.to_path_buf(),
                    meta: self.meta(st, true),
                });
            }
        }
        self.ancestors.push(Ancestor {
            src: src.to_path_buf(),
            dst: dst.to_path_buf(),
            st: *st,
            in_target: !deferred,
        });
        Ok(())
    }

    /// Creates the deferred directories above an entry about to be copied (fsutil's createParentDirs).
    fn create_ancestors(&mut self) -> Result<(), FileOpError> {
        for i in 0..self.ancestors.len() {
            if self.ancestors[i].in_target {
                continue;
            }
            let (src, dst, st) = (
                self.ancestors[i].src.clone(),
                self.ancestors[i].dst.clone(),
                self.ancestors[i].st,
            );
            if make_dir(self.target, &dst)? {
                self.dirs.push(DirJob {
                    src,
                    dst,
                    meta: self.meta(&st, true),
                });
            }
            self.ancestors[i].in_target = true;
        }
        Ok(())
    }

    /// Anything but a directory. `link` is a symlink's target, as the selection read it.
    fn leaf(&mut self, src: &Path, st: &Stat, link: Option<&[u8]>, dst: &Path) -> Result<(), FileOpError> {
        let meta = self.meta(st, false);
        let kind = st.kind();
        if kind == Kind::File {
            if st.nlink > 1 {
                let key = (st.dev, st.ino);
                if let Some(first) = self.inodes.get(&key) {
                    self.hardlinks.push((first.clone(), dst.to_path_buf()));
                    return Ok(());
                }
                self.inodes.insert(key, dst.to_path_buf());
            }
            self.files.push(FileJob {
                src: src.to_path_buf(),
                dst: dst.to_path_buf(),
                meta,
            });
            return Ok(());
        }
        let fail = io_error("copy", shown(dst));
        let (parent, name) = self.target.parent(dst).map_err(io_error("copy", shown(dst)))?;
        match kind {
            Kind::Symlink => {
                let link = match link {
                    Some(link) => link.to_vec(),
                    None => self
                        .source
                        .readlink(src)
                        .map_err(io_error("readlink", shown(src)))?,
                };
                replace(self.target, dst, || {
                    Ok(rustix::fs::symlinkat(OsStr::from_bytes(&link), &parent, &name)?)
                })?;
                set_meta_at(
                    parent.as_fd(),
                    &name,
                    Some(meta.owner),
                    None,
                    Some((meta.atime.0, meta.mtime.0)),
                )
                .map_err(fail)?;
            }
            Kind::CharDevice | Kind::BlockDevice | Kind::Fifo | Kind::Socket => {
                let file_type = FileType::from_raw_mode(st.mode);
                let rdev = st.rdev;
                let mknod = || {
                    Ok(rustix::fs::mknodat(
                        &parent,
                        &name,
                        file_type,
                        Mode::from_raw_mode(0o600),
                        rdev,
                    )?)
                };
                replace(self.target, dst, mknod)?;
                let times = Some((meta.atime.0, meta.mtime.0));
                set_meta_at(parent.as_fd(), &name, Some(meta.owner), Some(meta.mode), times).map_err(fail)?;
            }
            Kind::File | Kind::Dir => unreachable_kind(src)?,
        }
        Ok(())
    }

    fn meta(&self, st: &Stat, is_dir: bool) -> Meta {
        // A build context arrives owned by root (BuildKit's client resets ids when it sends it); other trees
        // keep their owners. --chown beats both.
        let owner = self.owner.unwrap_or(match self.in_context {
            true => (0, 0),
            false => (st.uid, st.gid),
        });
        let perm = st.permissions();
        let mode = self.chmod.map_or(perm, |c| c.apply(perm, is_dir));
        let clamp = |t: kiln_fsutil::Ts| match self.timestamp {
            Some(limit) if t.sec > limit => (limit, 0),
            _ => (t.sec, i64::from(t.nsec)),
        };
        Meta {
            owner,
            mode,
            atime: clamp(st.atime),
            mtime: clamp(st.mtime),
        }
    }

    /// Copies the queued file contents in parallel, then makes the hardlinks to them, then sets directory
    /// metadata from the deepest directory up.
    fn flush(&mut self) -> Result<(), FileOpError> {
        let (source, target) = (self.source, self.target);
        std::mem::take(&mut self.files)
            .par_iter()
            .try_for_each(|job| copy_file(source, target, job))?;
        for (first, dst) in std::mem::take(&mut self.hardlinks) {
            let fail = io_error("link", shown(&dst));
            let (from_dir, from_name) = target.parent(&first).map_err(io_error("link", shown(&dst)))?;
            let (to_dir, to_name) = target.parent(&dst).map_err(fail)?;
            replace(target, &dst, || {
                Ok(rustix::fs::linkat(
                    &from_dir,
                    &from_name,
                    &to_dir,
                    &to_name,
                    AtFlags::empty(),
                )?)
            })?;
        }
        for job in std::mem::take(&mut self.dirs).iter().rev() {
            let fail = io_error("chmod", shown(&job.dst));
            let dir = target
                .open_dir(&job.dst)
                .map_err(io_error("chmod", shown(&job.dst)))?;
            let src = source
                .open_dir(&job.src)
                .map_err(io_error("read", shown(&job.src)))?;
            set_meta_fd(src.as_fd(), dir.as_fd(), &job.meta).map_err(fail)?;
        }
        Ok(())
    }
}

fn copy_file(source: &Root, target: &Root, job: &FileJob) -> Result<(), FileOpError> {
    let src = source
        .open(&job.src, OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::CLOEXEC, 0)
        .map_err(io_error("open", shown(&job.src)))?;
    let flags = OFlags::WRONLY | OFlags::CREATE | OFlags::EXCL | OFlags::NOFOLLOW | OFlags::CLOEXEC;
    let dst = replace(target, &job.dst, || target.open(&job.dst, flags, 0o600))?;
    let fail = io_error("copy", shown(&job.dst));
    let (mut from, mut to) = (File::from(src), File::from(dst));
    // std uses copy_file_range (reflinks where the filesystem can), falling back to sendfile/read-write.
    io::copy(&mut from, &mut to).map_err(io_error("copy", shown(&job.dst)))?;
    set_meta_fd(from.as_fd(), to.as_fd(), &job.meta).map_err(fail)
}

/// Owner, extended attributes, mode, times — in that order: chown clears set-id bits and capabilities.
fn set_meta_fd(src: BorrowedFd<'_>, dst: BorrowedFd<'_>, meta: &Meta) -> io::Result<()> {
    let (uid, gid) = meta.owner;
    rustix::fs::fchown(dst, Some(Uid::from_raw(uid)), Some(Gid::from_raw(gid)))?;
    copy_xattrs(src, dst);
    rustix::fs::fchmod(dst, Mode::from_raw_mode(meta.mode))?;
    rustix::fs::futimens(dst, &meta.timestamps())?;
    Ok(())
}

/// Extended attributes are copied on a best-effort basis, as BuildKit does (it logs and goes on): a context
/// on a filesystem with SELinux labels must still copy into an overlay that refuses them. Overlayfs's own
/// attributes would change how the layer stacks, so they are never copied.
fn copy_xattrs(src: BorrowedFd<'_>, dst: BorrowedFd<'_>) {
    let Ok(size) = rustix::fs::flistxattr_query(src) else {
        return;
    };
    if size == 0 {
        return;
    }
    let mut names = vec![0u8; size];
    let Ok(len) = rustix::fs::flistxattr(src, &mut names[..]) else {
        return;
    };
    for name in names[..len.min(size)]
        .split(|&b| b == 0)
        .filter(|n| !n.is_empty())
    {
        if name.starts_with(b"trusted.overlay.") {
            continue;
        }
        let name = OsStr::from_bytes(name);
        let value = rustix::fs::fgetxattr_query(src, name).and_then(|len| {
            let mut value = vec![0u8; len];
            let got = rustix::fs::fgetxattr(src, name, &mut value[..])?;
            value.truncate(got);
            Ok(value)
        });
        let result = value.and_then(|value| rustix::fs::fsetxattr(dst, name, &value, XattrFlags::empty()));
        if let Err(e) = result {
            tracing::debug!(xattr = %name.to_string_lossy(), error = %e, "xattr not copied");
        }
    }
}

/// fsutil's copyDirectoryOnly: creates `dst` (true) or accepts an existing directory (false); anything else
/// there — a file, a symlink even to a directory — is an error.
fn make_dir(target: &Root, dst: &Path) -> Result<bool, FileOpError> {
    if dst.as_os_str().is_empty() {
        return Ok(false);
    }
    let fail = io_error("mkdir", shown(dst));
    let (parent, name) = target.parent(dst).map_err(io_error("mkdir", shown(dst)))?;
    match rustix::fs::mkdirat(&parent, &name, Mode::from_raw_mode(0o700)) {
        Ok(()) => Ok(true),
        Err(Errno::EXIST) => match statat(&parent, &name, AtFlags::SYMLINK_NOFOLLOW) {
            Ok(st) if FileType::from_raw_mode(st.st_mode) == FileType::Directory => Ok(false),
            Ok(_) => Err(FileOpError::NotADirectory { path: shown(dst) }),
            Err(e) => Err(fail(e.into())),
        },
        Err(e) => Err(fail(e.into())),
    }
}

/// Creates a non-directory at `dst` with `create`; whatever non-directory is already there is replaced
/// (never written through), a directory is an error (fsutil's ensureEmptyFileTarget).
fn replace<T>(
    target: &Root,
    dst: &Path,
    mut create: impl FnMut() -> io::Result<T>,
) -> Result<T, FileOpError> {
    let fail = |e: io::Error| io_error("copy", shown(dst))(e);
    match create() {
        Ok(created) => return Ok(created),
        Err(e) if e.raw_os_error() == Some(Errno::EXIST.raw_os_error()) => {}
        Err(e) => return Err(fail(e)),
    }
    match target.lstat(dst).map_err(fail)? {
        Some(st) if st.is_dir() => return Err(FileOpError::ReplaceDirectory { path: shown(dst) }),
        Some(_) => target.remove_all(dst).map_err(fail)?,
        None => {}
    }
    create().map_err(fail)
}

/// Directories and regular files never reach the special-file path; if one does, the tree changed kind
/// under the copy.
fn unreachable_kind(src: &Path) -> Result<(), FileOpError> {
    let changed = io::Error::other("the entry changed its type while it was copied");
    Err(io_error("copy", shown(src))(changed))
}
