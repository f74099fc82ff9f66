//! Filesystem access confined to one directory tree: an input root, the target of the file op, or the
//! directory an archive is extracted into.
//!
//! Paths are resolved the way BuildKit's `fs.RootPath` does — as if the root were `/`: absolute symlinks
//! restart at the root and `..` stops there — but every lookup goes through `openat2(RESOLVE_IN_ROOT |
//! RESOLVE_NO_SYMLINKS)`, so the kernel itself refuses anything that would leave the tree, even if the tree
//! changes under us. Resolved paths ([`Rel`]) contain no symlinks; everything later opened by such a path is
//! opened with `RESOLVE_NO_SYMLINKS` too, and names are created with calls that never follow a final symlink.

use std::ffi::{OsStr, OsString};
use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::path::{Path, PathBuf};

use rustix::fs::{
    AtFlags, FileType, Gid, Mode, OFlags, ResolveFlags, Stat, Timestamps, Uid, chmodat, chownat, mkdirat,
    openat, openat2, statat, unlinkat, utimensat,
};
use rustix::io::Errno;

use super::glob::clean_rel;

/// A path relative to a [`Root`], made of real directory entries (no `.`, `..` or symlinked directories).
pub(super) type Rel = PathBuf;

/// Symlinks followed while resolving one path: the kernel's own limit.
const MAX_SYMLINKS: usize = 40;

/// The ownership a created entry gets.
pub(super) type Owner = (u32, u32);

pub(super) struct Root {
    fd: OwnedFd,
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
        Ok(Root { fd })
    }

    /// Makes the directory `rel` of this root a root of its own.
    pub fn sub(&self, rel: &Path) -> io::Result<Root> {
        Ok(Root {
            fd: self.open_dir(rel)?,
        })
    }

    /// `fs.RootPath`: resolves `path` (absolute or not; `..` cannot climb above the root) following symlinks
    /// inside the root, the last component only if `follow_last`. Missing components are kept as they are, so
    /// the result is where the path would be created.
    pub fn resolve(&self, path: &[u8], follow_last: bool) -> io::Result<Rel> {
        // As `filepath.Join("/", path)` before the walk: `a/link/..` is `a`, whatever `link` points to.
        let cleaned = clean_rel(path);
        // Pending components, last one first, so that a symlink's target can be pushed in front of the rest.
        let mut pending: Vec<OsString> = split(&cleaned).rev().collect();
        let mut resolved: Vec<OsString> = Vec::new();
        let mut links = 0;
        while let Some(component) = pending.pop() {
            if component == ".." {
                resolved.pop();
                continue;
            }
            let last = pending.is_empty();
            resolved.push(component);
            if last && !follow_last {
                break;
            }
            let candidate: PathBuf = resolved.iter().collect();
            let fd = match self.open(&candidate, OFlags::PATH | OFlags::NOFOLLOW | OFlags::CLOEXEC, 0) {
                Ok(fd) => fd,
                // The rest does not exist (or cannot, under a non-directory): it is kept lexically.
                Err(e) if is_not_found(&e) => {
                    while let Some(rest) = pending.pop() {
                        if rest == ".." {
                            resolved.pop();
                        } else {
                            resolved.push(rest);
                        }
                    }
                    break;
                }
                Err(e) => return Err(e),
            };
            let st = rustix::fs::fstat(&fd)?;
            if FileType::from_raw_mode(st.st_mode) != FileType::Symlink {
                continue;
            }
            links += 1;
            if links > MAX_SYMLINKS {
                return Err(Errno::LOOP.into());
            }
            // readlinkat with an empty path reads the link an O_PATH descriptor refers to.
            let target = rustix::fs::readlinkat(&fd, c"", Vec::new())?.into_bytes();
            resolved.pop();
            if target.starts_with(b"/") {
                resolved.clear();
            }
            pending.extend(split(&target).rev());
        }
        Ok(resolved.iter().collect())
    }

    /// Opens `rel` (which must not go through a symlink; a final symlink is only opened with `O_PATH |
    /// O_NOFOLLOW`). `mode` is used with `O_CREAT`.
    pub fn open(&self, rel: &Path, flags: OFlags, mode: u32) -> io::Result<OwnedFd> {
        let path = if rel.as_os_str().is_empty() {
            Path::new(".")
        } else {
            rel
        };
        let resolve = ResolveFlags::IN_ROOT | ResolveFlags::NO_SYMLINKS | ResolveFlags::NO_MAGICLINKS;
        // EAGAIN means a rename elsewhere raced the lookup; the kernel asks for a retry.
        let mut tries = 0;
        loop {
            match openat2(&self.fd, path, flags, Mode::from_raw_mode(mode), resolve) {
                Err(Errno::AGAIN) if tries < 16 => tries += 1,
                result => return result.map_err(io::Error::from),
            }
        }
    }

    pub fn open_dir(&self, rel: &Path) -> io::Result<OwnedFd> {
        self.open(rel, OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC, 0)
    }

    /// `lstat`; `None` when the entry (or a directory above it) does not exist.
    pub fn lstat(&self, rel: &Path) -> io::Result<Option<Stat>> {
        match self.open(rel, OFlags::PATH | OFlags::NOFOLLOW | OFlags::CLOEXEC, 0) {
            Ok(fd) => Ok(Some(rustix::fs::fstat(&fd)?)),
            Err(e) if is_not_found(&e) => Ok(None),
            Err(e) => Err(e),
        }
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
            Err(e) if is_not_found(&e) => {
                return Ok(());
            }
            Err(e) => return Err(e),
        };
        remove_tree(parent.as_fd(), &name)
    }
}

/// Resolves `path` inside the host directory `root` as if `root` were `/` ([`Root::resolve`], following a
/// final symlink too) and returns the host path it names: the solver's one resolver for host-side paths,
/// e.g. the source of a `RUN --mount` inside its input.
pub(crate) fn resolve_in_root(root: &Path, path: &str) -> io::Result<PathBuf> {
    let rel = Root::new(root)?.resolve(path.as_bytes(), true)?;
    Ok(if rel.as_os_str().is_empty() {
        root.to_path_buf()
    } else {
        root.join(rel)
    })
}

/// Removes `name` in `dir` and everything below it, never following a symlink.
pub(super) fn remove_tree(dir: BorrowedFd<'_>, name: &OsStr) -> io::Result<()> {
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

/// The names in a directory, sorted bytewise as Go's `os.ReadDir` returns them, without `.` and `..`.
pub(super) fn dir_names(dir: BorrowedFd<'_>) -> io::Result<Vec<OsString>> {
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
pub(super) fn set_meta_at(
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

pub(super) fn seconds(sec: i64, nsec: i64) -> rustix::fs::Timespec {
    rustix::fs::Timespec {
        tv_sec: sec,
        tv_nsec: nsec as _,
    }
}

/// A resolved path as the build sees it: absolute inside its root.
pub(super) fn shown(rel: &Path) -> String {
    format!("/{}", rel.display())
}

fn split(path: &[u8]) -> impl DoubleEndedIterator<Item = OsString> + '_ {
    path.split(|&b| b == b'/')
        .filter(|c| !c.is_empty() && *c != b".")
        .map(|c| OsStr::from_bytes(c).to_owned())
}

/// ENOENT, or ENOTDIR for a path under a non-directory: either way, nothing is there.
pub(super) fn is_not_found(e: &io::Error) -> bool {
    let raw = e.raw_os_error();
    raw == Some(Errno::NOENT.raw_os_error()) || raw == Some(Errno::NOTDIR.raw_os_error())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resolution_never_leaves_the_root() -> io::Result<()> {
        let root = std::env::temp_dir().join(format!("kiln-resolve-{}", std::process::id()));
        std::fs::create_dir_all(root.join("a/b"))?;
        let link = |target: &str, name: &str| {
            let _ = std::fs::remove_file(root.join(name));
            std::os::unix::fs::symlink(target, root.join(name))
        };
        link("/etc", "abs")?;
        link("../../..", "a/up")?;
        link("b", "a/rel")?;
        assert_eq!(resolve_in_root(&root, "abs/passwd")?, root.join("etc/passwd"));
        assert_eq!(resolve_in_root(&root, "a/up/x")?, root.join("x"));
        assert_eq!(resolve_in_root(&root, "../../x")?, root.join("x"));
        assert_eq!(resolve_in_root(&root, "/a/rel/c")?, root.join("a/b/c"));
        assert_eq!(resolve_in_root(&root, "")?, root);
        link("loop", "loop")?;
        assert!(resolve_in_root(&root, "loop").is_err());
        std::fs::remove_dir_all(&root)
    }
}
