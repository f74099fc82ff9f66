//! File-system access confined to the context root.
//!
//! Every open goes through the root's file descriptor with symlink resolution forbidden (`openat2` with
//! `RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS`, or a component-by-component `O_NOFOLLOW` walk where `openat2`
//! is unavailable), so a symlink swapped in while we walk can make an open fail but can never lead it
//! outside the context. Symlinks are only ever followed by the explicit, root-scoped resolution in
//! `mod.rs`.

use std::ffi::OsStr;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::sync::atomic::{AtomicBool, Ordering};

use rustix::fs::{AtFlags, Mode, OFlags, ResolveFlags, StatxFlags};
use rustix::io::Errno;

/// A point in time as the kernel stores file timestamps; ordered by seconds, then nanoseconds.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub(super) struct Ts {
    pub sec: i64,
    pub nsec: u32,
}

impl Ts {
    pub(super) fn now_minus(margin: std::time::Duration) -> Ts {
        let since_epoch = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default()
            .saturating_sub(margin);
        Ts {
            sec: since_epoch.as_secs() as i64,
            nsec: since_epoch.subsec_nanos(),
        }
    }
}

/// What an `lstat` tells us about one entry.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) struct Meta {
    pub dev: u64,
    pub ino: u64,
    pub size: u64,
    pub mtime: Ts,
    pub ctime: Ts,
    /// Permission and file-type bits, as `st_mode`.
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
    pub rdev: u64,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Kind {
    File,
    Dir,
    Symlink,
    CharDevice,
    BlockDevice,
    Fifo,
    Socket,
}

impl Kind {
    /// The byte that stands for this kind in the hash encoding.
    pub(super) fn tag(self) -> u8 {
        match self {
            Kind::File => b'f',
            Kind::Dir => b'd',
            Kind::Symlink => b'l',
            Kind::CharDevice => b'c',
            Kind::BlockDevice => b'b',
            Kind::Fifo => b'p',
            Kind::Socket => b's',
        }
    }
}

impl Meta {
    fn from_statx(st: &rustix::fs::Statx) -> Meta {
        let ts = |t: &rustix::fs::StatxTimestamp| Ts {
            sec: t.tv_sec,
            nsec: t.tv_nsec,
        };
        Meta {
            dev: rustix::fs::makedev(st.stx_dev_major, st.stx_dev_minor),
            ino: st.stx_ino,
            size: st.stx_size,
            mtime: ts(&st.stx_mtime),
            ctime: ts(&st.stx_ctime),
            mode: u32::from(st.stx_mode),
            uid: st.stx_uid,
            gid: st.stx_gid,
            rdev: rustix::fs::makedev(st.stx_rdev_major, st.stx_rdev_minor),
        }
    }

    pub(super) fn kind(&self) -> Kind {
        match self.mode & 0o170000 {
            0o040000 => Kind::Dir,
            0o120000 => Kind::Symlink,
            0o020000 => Kind::CharDevice,
            0o060000 => Kind::BlockDevice,
            0o010000 => Kind::Fifo,
            0o140000 => Kind::Socket,
            // S_IFREG; no other value comes out of a Linux stat.
            _ => Kind::File,
        }
    }

    pub(super) fn is_dir(&self) -> bool {
        self.kind() == Kind::Dir
    }
}

/// `lstat` of `name` inside an open directory: resolves nothing but that one name.
pub(super) fn stat_at(dir: BorrowedFd<'_>, name: &[u8]) -> Result<Meta, Errno> {
    let st = rustix::fs::statx(
        dir,
        OsStr::from_bytes(name),
        AtFlags::SYMLINK_NOFOLLOW,
        StatxFlags::BASIC_STATS,
    )?;
    Ok(Meta::from_statx(&st))
}

pub(super) fn stat_fd(fd: BorrowedFd<'_>) -> Result<Meta, Errno> {
    let st = rustix::fs::statx(fd, c"", AtFlags::EMPTY_PATH, StatxFlags::BASIC_STATS)?;
    Ok(Meta::from_statx(&st))
}

pub(super) fn readlink_at(dir: BorrowedFd<'_>, name: &[u8]) -> Result<Vec<u8>, Errno> {
    Ok(rustix::fs::readlinkat(dir, OsStr::from_bytes(name), Vec::new())?.into_bytes())
}

/// The context root, held open so that later renames of its path change nothing.
pub(super) struct Root {
    fd: OwnedFd,
    /// Cleared the first time the kernel (or a seccomp filter) refuses `openat2`.
    openat2: AtomicBool,
}

impl Root {
    pub(super) fn new(fd: OwnedFd) -> Root {
        Root {
            fd,
            openat2: AtomicBool::new(true),
        }
    }

    pub(super) fn fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }

    /// Opens `rel` (a clean relative path, `/`-separated, empty for the root) without following any
    /// symlink, the last component included.
    pub(super) fn open(&self, rel: &[u8], flags: OFlags) -> Result<OwnedFd, Errno> {
        let flags = flags | OFlags::CLOEXEC | OFlags::NOFOLLOW;
        if rel.is_empty() {
            return rustix::fs::openat(&self.fd, c".", flags, Mode::empty());
        }
        if self.openat2.load(Ordering::Relaxed) {
            let resolve = ResolveFlags::BENEATH | ResolveFlags::NO_SYMLINKS | ResolveFlags::NO_MAGICLINKS;
            // EAGAIN means a concurrent rename raced the lookup; it is safe to retry.
            for _ in 0..32 {
                match rustix::fs::openat2(&self.fd, OsStr::from_bytes(rel), flags, Mode::empty(), resolve) {
                    Err(Errno::AGAIN) => continue,
                    Err(Errno::NOSYS) | Err(Errno::PERM) => {
                        self.openat2.store(false, Ordering::Relaxed);
                        break;
                    }
                    result => return result,
                }
            }
        }
        self.open_by_components(rel, flags)
    }

    fn open_by_components(&self, rel: &[u8], flags: OFlags) -> Result<OwnedFd, Errno> {
        let components: Vec<&[u8]> = rel.split(|b| *b == b'/').collect();
        let mut current: Option<OwnedFd> = None;
        for (i, component) in components.iter().enumerate() {
            if matches!(*component, b"" | b"." | b"..") {
                return Err(Errno::INVAL);
            }
            let step_flags = if i + 1 == components.len() {
                flags
            } else {
                OFlags::PATH | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC
            };
            let dir = current.as_ref().map_or(self.fd.as_fd(), |fd| fd.as_fd());
            current = Some(rustix::fs::openat(
                dir,
                OsStr::from_bytes(component),
                step_flags,
                Mode::empty(),
            )?);
        }
        current.ok_or(Errno::INVAL)
    }

    /// `lstat` of `rel`, plus the target when it is a symlink.
    pub(super) fn lstat(&self, rel: &[u8]) -> Result<(Meta, Option<Vec<u8>>), Errno> {
        if rel.is_empty() {
            return Ok((stat_fd(self.fd.as_fd())?, None));
        }
        let (parent, name) = match rel.iter().rposition(|b| *b == b'/') {
            Some(slash) => (&rel[..slash], &rel[slash + 1..]),
            None => (&b""[..], rel),
        };
        let parent_fd;
        let dir = if parent.is_empty() {
            self.fd.as_fd()
        } else {
            parent_fd = self.open(parent, OFlags::PATH | OFlags::DIRECTORY)?;
            parent_fd.as_fd()
        };
        let meta = stat_at(dir, name)?;
        let link = match meta.kind() {
            Kind::Symlink => Some(readlink_at(dir, name)?),
            _ => None,
        };
        Ok((meta, link))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn both_open_paths_refuse_every_symlink() {
        let dir = tempfile::tempdir().expect("temp dir");
        std::fs::create_dir_all(dir.path().join("a/b")).expect("mkdir");
        std::fs::write(dir.path().join("a/b/file"), "x").expect("write");
        std::os::unix::fs::symlink("a", dir.path().join("link")).expect("symlink");
        std::os::unix::fs::symlink("/etc", dir.path().join("a/out")).expect("symlink");
        let fd =
            rustix::fs::open(dir.path(), OFlags::RDONLY | OFlags::DIRECTORY, Mode::empty()).expect("open");
        let root = Root::new(fd);
        for openat2 in [true, false] {
            root.openat2.store(openat2, Ordering::Relaxed);
            let open = |rel: &str| root.open(rel.as_bytes(), OFlags::RDONLY);
            assert!(open("a/b/file").is_ok(), "openat2={openat2}");
            assert!(open("").is_ok(), "openat2={openat2}");
            for rel in ["link/b/file", "link", "a/out", "a/out/passwd"] {
                let err = open(rel).err();
                assert!(
                    matches!(err, Some(Errno::LOOP | Errno::NOTDIR)),
                    "openat2={openat2} {rel}: {err:?}"
                );
            }
            assert!(
                root.lstat(b"a/out")
                    .is_ok_and(|(m, l)| m.kind() == Kind::Symlink && l.as_deref() == Some(&b"/etc"[..]))
            );
            let err = root.lstat(b"link/b/file").err();
            assert!(
                matches!(err, Some(Errno::LOOP | Errno::NOTDIR)),
                "openat2={openat2}: {err:?}"
            );
        }
    }
}
