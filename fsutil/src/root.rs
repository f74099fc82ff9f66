//! Filesystem access confined to one directory tree: a build context, a stage's rootfs, the target of a file
//! op, the directory an archive or a layer is extracted into.
//!
//! Paths are resolved the way containerd's `fs.RootPath` (which BuildKit uses) does — as if the root were
//! `/`: absolute symlinks restart at the root, `..` stops there, at most [`MAX_SYMLINKS`] links are followed.
//! Resolution walks one component at a time from descriptors it holds, opening each name with `O_NOFOLLOW`,
//! so nothing outside the tree is ever looked at, even if the tree changes meanwhile. A resolved path
//! ([`Rel`]) contains no symlinks, and everything later opened by one goes through `openat2(RESOLVE_IN_ROOT |
//! RESOLVE_NO_SYMLINKS)` (or a component walk with `O_NOFOLLOW` where the kernel refuses `openat2`), so a
//! symlink swapped in after resolution makes an open fail but can never lead it out of the tree. Names are
//! created with calls that never follow a final symlink.

use std::ffi::{OsStr, OsString};
use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};

use rustix::fs::{
    AtFlags, FileType, Gid, Mode, OFlags, ResolveFlags, Timestamps, Uid, chmodat, chownat, mkdirat, openat,
    openat2, statat, unlinkat, utimensat,
};
use rustix::io::Errno;

use crate::glob::clean_rel;
use crate::stat::{Kind, Meta, stat_fd};

/// A path relative to a [`Root`], made of real directory entries (no `.`, `..` or symlinked directories).
pub type Rel = PathBuf;

/// The ownership a created entry gets.
pub type Owner = (u32, u32);

/// Symlinks followed while resolving one path: containerd's limit, which BuildKit's copies inherit (the
/// kernel's own is 40).
pub const MAX_SYMLINKS: usize = 255;

/// Whether an entry (root-relative path, is a directory) counts as existing.
pub type Visible<'a> = &'a dyn Fn(&Path, bool) -> bool;

pub struct Root {
    fd: OwnedFd,
    /// Cleared the first time the kernel (or a seccomp filter) refuses `openat2`.
    openat2: AtomicBool,
}

impl Root {
    /// Opens a root given by the caller as a host path (trusted: symlinks in it are followed).
    pub fn new(path: &Path) -> io::Result<Root> {
        let fd = openat(
            rustix::fs::CWD,
            path,
            OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC,
            Mode::empty(),
        )?;
        Ok(Root::from_fd(fd))
    }

    /// A root on an open directory.
    pub fn from_fd(fd: OwnedFd) -> Root {
        Root {
            fd,
            openat2: AtomicBool::new(true),
        }
    }

    pub fn fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }

    /// Makes the directory `rel` of this root a root of its own.
    pub fn sub(&self, rel: &Path) -> io::Result<Root> {
        Ok(Root::from_fd(self.open_dir(rel)?))
    }

    /// `fs.RootPath`: resolves `path` (absolute or not; `..` cannot climb above the root) following symlinks
    /// inside the root, the last component only if `follow_last`. Missing components are kept as they are, so
    /// the result is where the path would be created.
    pub fn resolve(&self, path: &[u8], follow_last: bool) -> io::Result<Rel> {
        Ok(self.walk(path, follow_last, None)?.0)
    }

    /// Like [`Root::resolve`], but `None` unless every component exists (when `follow_last` is false, the
    /// last one itself is not looked at).
    pub fn lookup(&self, path: &[u8], follow_last: bool) -> io::Result<Option<Rel>> {
        let (rel, complete) = self.walk(path, follow_last, None)?;
        Ok(complete.then_some(rel))
    }

    /// Like [`Root::resolve`], for a tree where some entries do not count as existing (a build context's
    /// `.dockerignore`d paths): `visible(rel, is_dir)` is asked of every component reached, link targets
    /// included. `None` when a component is missing or not visible; when `follow_last` is false the last
    /// component itself is not looked at.
    pub fn resolve_visible(
        &self,
        path: &[u8],
        follow_last: bool,
        visible: Visible<'_>,
    ) -> io::Result<Option<Rel>> {
        let (rel, complete) = self.walk(path, follow_last, Some(visible))?;
        Ok(complete.then_some(rel))
    }

    fn walk(&self, path: &[u8], follow_last: bool, visible: Option<Visible<'_>>) -> io::Result<(Rel, bool)> {
        // As `filepath.Join("/", path)` before the walk: `a/link/..` is `a`, whatever `link` points to.
        let cleaned = clean_rel(path);
        // Pending components, last one first, so that a symlink's target can be pushed in front of the rest.
        let mut pending: Vec<OsString> = split(&cleaned).rev().collect();
        let mut resolved: Vec<OsString> = Vec::new();
        // The open directory of each resolved component; `None` where it is not a directory, under which
        // nothing exists.
        let mut dirs: Vec<Option<OwnedFd>> = Vec::new();
        let mut links = 0;
        let lexical = |mut resolved: Vec<OsString>, mut pending: Vec<OsString>| -> Rel {
            while let Some(rest) = pending.pop() {
                if rest == ".." {
                    resolved.pop();
                } else {
                    resolved.push(rest);
                }
            }
            resolved.iter().collect()
        };
        while let Some(component) = pending.pop() {
            if component == ".." {
                resolved.pop();
                dirs.pop();
                continue;
            }
            if pending.is_empty() && !follow_last {
                resolved.push(component);
                break;
            }
            let parent = match dirs.last() {
                None => Some(self.fd.as_fd()),
                Some(dir) => dir.as_ref().map(|d| d.as_fd()),
            };
            let opened = match parent {
                Some(dir) => openat(
                    dir,
                    &component,
                    OFlags::PATH | OFlags::NOFOLLOW | OFlags::CLOEXEC,
                    Mode::empty(),
                ),
                None => Err(Errno::NOTDIR),
            };
            let fd = match opened {
                Ok(fd) => fd,
                // The rest does not exist (or cannot, under a non-directory): it is kept lexically.
                Err(Errno::NOENT | Errno::NOTDIR) => {
                    pending.push(component);
                    return Ok((lexical(resolved, pending), false));
                }
                Err(e) => return Err(e.into()),
            };
            let meta = stat_fd(fd.as_fd())?;
            if let Some(visible) = visible {
                let mut candidate: PathBuf = resolved.iter().collect();
                candidate.push(&component);
                if !visible(&candidate, meta.is_dir()) {
                    pending.push(component);
                    return Ok((lexical(resolved, pending), false));
                }
            }
            match meta.kind() {
                Kind::Symlink => {
                    links += 1;
                    if links > MAX_SYMLINKS {
                        return Err(Errno::LOOP.into());
                    }
                    // readlinkat with an empty path reads the link an O_PATH descriptor refers to.
                    let target = rustix::fs::readlinkat(&fd, c"", Vec::new())?.into_bytes();
                    if target.starts_with(b"/") {
                        resolved.clear();
                        dirs.clear();
                    }
                    pending.extend(split(&target).rev());
                }
                Kind::Dir => {
                    resolved.push(component);
                    dirs.push(Some(fd));
                }
                _ => {
                    resolved.push(component);
                    dirs.push(None);
                }
            }
        }
        Ok((resolved.iter().collect(), true))
    }

    /// Opens `rel` (which must not go through a symlink; a final symlink is only opened with `O_PATH |
    /// O_NOFOLLOW`). `mode` is used with `O_CREAT`.
    pub fn open(&self, rel: &Path, flags: OFlags, mode: u32) -> io::Result<OwnedFd> {
        let flags = flags | OFlags::CLOEXEC;
        if rel.as_os_str().is_empty() {
            return Ok(openat(&self.fd, c".", flags, Mode::from_raw_mode(mode))?);
        }
        if self.openat2.load(Ordering::Relaxed) {
            let resolve = ResolveFlags::IN_ROOT | ResolveFlags::NO_SYMLINKS | ResolveFlags::NO_MAGICLINKS;
            // EAGAIN means a rename elsewhere raced the lookup; the kernel asks for a retry.
            for _ in 0..32 {
                match openat2(&self.fd, rel, flags, Mode::from_raw_mode(mode), resolve) {
                    Err(Errno::AGAIN) => continue,
                    Err(Errno::NOSYS) | Err(Errno::PERM) => {
                        self.openat2.store(false, Ordering::Relaxed);
                        break;
                    }
                    result => return result.map_err(io::Error::from),
                }
            }
        }
        self.open_by_components(rel, flags, mode)
    }

    /// What `openat2` does, one `O_NOFOLLOW` component at a time.
    fn open_by_components(&self, rel: &Path, flags: OFlags, mode: u32) -> io::Result<OwnedFd> {
        let components: Vec<&OsStr> = rel.iter().collect();
        let mut current: Option<OwnedFd> = None;
        for (i, component) in components.iter().enumerate() {
            if matches!(component.as_bytes(), b"" | b"." | b"..") {
                return Err(Errno::INVAL.into());
            }
            let last = i + 1 == components.len();
            let step_flags = if last {
                flags | OFlags::NOFOLLOW
            } else {
                OFlags::PATH | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC
            };
            let dir = current.as_ref().map_or(self.fd.as_fd(), |fd| fd.as_fd());
            current = Some(openat(dir, *component, step_flags, Mode::from_raw_mode(mode))?);
        }
        current.ok_or_else(|| Errno::INVAL.into())
    }

    pub fn open_dir(&self, rel: &Path) -> io::Result<OwnedFd> {
        self.open(rel, OFlags::RDONLY | OFlags::DIRECTORY, 0)
    }

    /// `lstat`; `None` when the entry (or a directory above it) does not exist.
    pub fn lstat(&self, rel: &Path) -> io::Result<Option<Meta>> {
        match self.open(rel, OFlags::PATH | OFlags::NOFOLLOW, 0) {
            Ok(fd) => Ok(Some(stat_fd(fd.as_fd())?)),
            Err(e) if is_not_found(&e) => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// The target of the symlink `rel`.
    pub fn readlink(&self, rel: &Path) -> io::Result<Vec<u8>> {
        let fd = self.open(rel, OFlags::PATH | OFlags::NOFOLLOW, 0)?;
        Ok(rustix::fs::readlinkat(&fd, c"", Vec::new())?.into_bytes())
    }

    /// The content of the file `path` names inside the root (symlinks resolved inside it), for small files
    /// such as /etc/passwd; `None` when there is no regular file there.
    pub fn read_file(&self, path: &[u8]) -> io::Result<Option<Vec<u8>>> {
        let rel = self.resolve(path, true)?;
        let fd = match self.open(&rel, OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::NONBLOCK, 0) {
            Ok(fd) => fd,
            Err(e) if is_not_found(&e) || e.raw_os_error() == Some(Errno::LOOP.raw_os_error()) => {
                return Ok(None);
            }
            Err(e) => return Err(e),
        };
        if stat_fd(fd.as_fd())?.kind() != Kind::File {
            return Ok(None);
        }
        let mut bytes = Vec::new();
        io::Read::read_to_end(&mut std::fs::File::from(fd), &mut bytes)?;
        Ok(Some(bytes))
    }

    /// The directory holding `rel`, and `rel`'s name in it. The root itself has no parent here.
    pub fn parent(&self, rel: &Path) -> io::Result<(OwnedFd, OsString)> {
        let name = rel.file_name().ok_or_else(|| io::Error::from(Errno::ISDIR))?;
        let parent = rel.parent().unwrap_or(Path::new(""));
        Ok((self.open_dir(parent)?, name.to_owned()))
    }

    /// Copy's `MkdirAll`: creates the missing directories of `rel` with `mode`, `owner` and `mtime`; existing
    /// ones are left alone; a non-directory on the way is an error.
    pub fn mkdir_all(
        &self,
        rel: &Path,
        mode: u32,
        owner: Option<Owner>,
        mtime: Option<i64>,
    ) -> io::Result<()> {
        let mut dir = self.open_dir(Path::new(""))?;
        for name in rel.iter() {
            let flags = OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC;
            dir = match openat(&dir, name, flags, Mode::empty()) {
                Ok(fd) => fd,
                Err(Errno::NOENT) => {
                    mkdirat(&dir, name, Mode::from_raw_mode(0o700))?;
                    set_meta_at(dir.as_fd(), name, owner, Some(mode), mtime.map(|t| (t, t)))?;
                    openat(&dir, name, flags, Mode::empty())?
                }
                // A symlink or a file where a directory must be.
                Err(Errno::LOOP) => return Err(Errno::NOTDIR.into()),
                Err(e) => return Err(e.into()),
            };
        }
        Ok(())
    }

    /// Removes `rel` and everything below it without following symlinks; a missing entry is fine.
    pub fn remove_all(&self, rel: &Path) -> io::Result<()> {
        let (parent, name) = match self.parent(rel) {
            Ok(found) => found,
            Err(e) if is_not_found(&e) => return Ok(()),
            Err(e) => return Err(e),
        };
        remove_tree(parent.as_fd(), &name)
    }
}

/// Resolves `path` inside the host directory `root` as if `root` were `/` ([`Root::resolve`], following a
/// final symlink too) and returns the host path it names: the one resolver for host-side paths, e.g. the
/// source of a `RUN --mount` inside its input.
pub fn resolve_in_root(root: &Path, path: &str) -> io::Result<PathBuf> {
    let rel = Root::new(root)?.resolve(path.as_bytes(), true)?;
    Ok(if rel.as_os_str().is_empty() {
        root.to_path_buf()
    } else {
        root.join(rel)
    })
}

/// Removes `name` in `dir` and everything below it, never following a symlink; a missing entry is fine.
pub fn remove_tree(dir: BorrowedFd<'_>, name: &OsStr) -> io::Result<()> {
    let st = match statat(dir, name, AtFlags::SYMLINK_NOFOLLOW) {
        Ok(st) => st,
        Err(Errno::NOENT) => return Ok(()),
        Err(e) => return Err(e.into()),
    };
    if FileType::from_raw_mode(st.st_mode) != FileType::Directory {
        return Ok(unlinkat(dir, name, AtFlags::empty())?);
    }
    let fd = openat(
        dir,
        name,
        OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
        Mode::empty(),
    )?;
    for child in dir_names(fd.as_fd())? {
        remove_tree(fd.as_fd(), &child)?;
    }
    Ok(unlinkat(dir, name, AtFlags::REMOVEDIR)?)
}

/// Removes the host path `path` — a file, or a directory tree without following symlinks in it; a missing
/// path is fine.
pub fn remove_path(path: &Path) -> io::Result<()> {
    let parent = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    let Some(name) = path.file_name() else {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "refusing to remove a root",
        ));
    };
    let dir = match openat(
        rustix::fs::CWD,
        parent,
        OFlags::PATH | OFlags::DIRECTORY | OFlags::CLOEXEC,
        Mode::empty(),
    ) {
        Ok(dir) => dir,
        Err(Errno::NOENT) => return Ok(()),
        Err(e) => return Err(e.into()),
    };
    remove_tree(dir.as_fd(), name)
}

/// The names in a directory, sorted bytewise as Go's `os.ReadDir` returns them, without `.` and `..`.
pub fn dir_names(dir: BorrowedFd<'_>) -> io::Result<Vec<OsString>> {
    let mut names = Vec::new();
    for entry in rustix::fs::Dir::read_from(dir)? {
        let entry = entry?;
        let name = entry.file_name().to_bytes();
        if name != b"." && name != b".." {
            names.push(OsString::from_vec(name.to_vec()));
        }
    }
    names.sort();
    Ok(names)
}

/// Owner, then mode, then times — chown clears set-id bits, so it must come before the mode. `times` are
/// (atime, mtime) in seconds; symlinks get no mode (`mode: None`).
pub fn set_meta_at(
    dir: BorrowedFd<'_>,
    name: &OsStr,
    owner: Option<Owner>,
    mode: Option<u32>,
    times: Option<(i64, i64)>,
) -> io::Result<()> {
    if let Some((uid, gid)) = owner {
        chownat(
            dir,
            name,
            Some(Uid::from_raw(uid)),
            Some(Gid::from_raw(gid)),
            AtFlags::SYMLINK_NOFOLLOW,
        )?;
    }
    if let Some(mode) = mode {
        chmodat(dir, name, Mode::from_raw_mode(mode), AtFlags::empty())?;
    }
    if let Some((atime, mtime)) = times {
        let times = Timestamps {
            last_access: seconds(atime, 0),
            last_modification: seconds(mtime, 0),
        };
        utimensat(dir, name, &times, AtFlags::SYMLINK_NOFOLLOW)?;
    }
    Ok(())
}

pub fn seconds(sec: i64, nsec: i64) -> rustix::fs::Timespec {
    rustix::fs::Timespec {
        tv_sec: sec,
        tv_nsec: nsec as _,
    }
}

/// A resolved path as the build sees it: absolute inside its root.
pub fn shown(rel: &Path) -> String {
    format!("/{}", rel.display())
}

fn split(path: &[u8]) -> impl DoubleEndedIterator<Item = OsString> + '_ {
    path.split(|&b| b == b'/')
        .filter(|c| !c.is_empty() && *c != b".")
        .map(|c| OsStr::from_bytes(c).to_owned())
}

/// ENOENT, or ENOTDIR for a path under a non-directory: either way, nothing is there.
pub fn is_not_found(e: &io::Error) -> bool {
    let raw = e.raw_os_error();
    raw == Some(Errno::NOENT.raw_os_error()) || raw == Some(Errno::NOTDIR.raw_os_error())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resolution_never_leaves_the_root() -> io::Result<()> {
        let dir = tempfile::tempdir()?;
        let root = dir.path();
        std::fs::create_dir_all(root.join("a/b"))?;
        let link = |target: &str, name: &str| std::os::unix::fs::symlink(target, root.join(name));
        link("/etc", "abs")?;
        link("../../..", "a/up")?;
        link("b", "a/rel")?;
        assert_eq!(resolve_in_root(root, "abs/passwd")?, root.join("etc/passwd"));
        assert_eq!(resolve_in_root(root, "a/up/x")?, root.join("x"));
        assert_eq!(resolve_in_root(root, "../../x")?, root.join("x"));
        assert_eq!(resolve_in_root(root, "/a/rel/c")?, root.join("a/b/c"));
        assert_eq!(resolve_in_root(root, "")?, root);
        link("loop", "loop")?;
        assert!(resolve_in_root(root, "loop").is_err());
        Ok(())
    }

    #[test]
    fn a_chain_of_symlinks_is_followed_up_to_the_limit() -> io::Result<()> {
        let dir = tempfile::tempdir()?;
        let root = dir.path();
        std::fs::write(root.join("end"), "x")?;
        // link0 -> link1 -> ... -> link{N-1} -> end: N links in all.
        let chain = |n: usize| -> io::Result<()> {
            for i in 0..n {
                let target = if i + 1 == n {
                    "end".to_string()
                } else {
                    format!("c{n}-{}", i + 1)
                };
                std::os::unix::fs::symlink(target, root.join(format!("c{n}-{i}")))?;
            }
            Ok(())
        };
        chain(MAX_SYMLINKS)?;
        assert_eq!(
            resolve_in_root(root, &format!("c{MAX_SYMLINKS}-0"))?,
            root.join("end")
        );
        chain(MAX_SYMLINKS + 1)?;
        let err = resolve_in_root(root, &format!("c{}-0", MAX_SYMLINKS + 1)).err();
        assert_eq!(
            err.and_then(|e| e.raw_os_error()),
            Some(Errno::LOOP.raw_os_error())
        );
        Ok(())
    }

    #[test]
    fn both_open_paths_refuse_every_symlink() -> io::Result<()> {
        let dir = tempfile::tempdir()?;
        std::fs::create_dir_all(dir.path().join("a/b"))?;
        std::fs::write(dir.path().join("a/b/file"), "x")?;
        std::os::unix::fs::symlink("a", dir.path().join("link"))?;
        std::os::unix::fs::symlink("/etc", dir.path().join("a/out"))?;
        let root = Root::new(dir.path())?;
        for openat2 in [true, false] {
            root.openat2.store(openat2, Ordering::Relaxed);
            let open = |rel: &str| root.open(Path::new(rel), OFlags::RDONLY, 0);
            assert!(open("a/b/file").is_ok(), "openat2={openat2}");
            assert!(open("").is_ok(), "openat2={openat2}");
            for rel in ["link/b/file", "link", "a/out", "a/out/passwd"] {
                let err = open(rel).err().and_then(|e| e.raw_os_error());
                assert!(
                    err == Some(Errno::LOOP.raw_os_error()) || err == Some(Errno::NOTDIR.raw_os_error()),
                    "openat2={openat2} {rel}: {err:?}"
                );
            }
            let out = root.lstat(Path::new("a/out"))?;
            assert_eq!(out.map(|m| m.kind()), Some(Kind::Symlink), "openat2={openat2}");
            assert_eq!(root.readlink(Path::new("a/out"))?, b"/etc");
        }
        Ok(())
    }
}
