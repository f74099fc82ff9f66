//! What a `statx` tells about one directory entry, in the form every walker here uses.

use std::ffi::OsStr;
use std::os::fd::BorrowedFd;
use std::os::unix::ffi::OsStrExt;

use rustix::fs::{AtFlags, StatxFlags};
use rustix::io::Errno;

/// A point in time as the kernel stores file timestamps; ordered by seconds, then nanoseconds.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Ts {
    pub sec: i64,
    pub nsec: u32,
}

impl Ts {
    pub fn now_minus(margin: std::time::Duration) -> Ts {
        let since_epoch = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default()
            .saturating_sub(margin);
        Ts {
            sec: i64::try_from(since_epoch.as_secs()).unwrap_or(i64::MAX),
            nsec: since_epoch.subsec_nanos(),
        }
    }
}

/// The kinds of directory entries Linux has.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Kind {
    File,
    Dir,
    Symlink,
    CharDevice,
    BlockDevice,
    Fifo,
    Socket,
}

impl Kind {
    /// The byte that stands for this kind in hash encodings.
    pub fn tag(self) -> u8 {
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

/// The fields of one `lstat` that walkers, copies and content hashes use.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Meta {
    pub dev: u64,
    pub ino: u64,
    pub nlink: u32,
    pub size: u64,
    pub atime: Ts,
    pub mtime: Ts,
    pub ctime: Ts,
    /// Permission and file-type bits, as `st_mode`.
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
    pub rdev: u64,
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
            nlink: st.stx_nlink,
            size: st.stx_size,
            atime: ts(&st.stx_atime),
            mtime: ts(&st.stx_mtime),
            ctime: ts(&st.stx_ctime),
            mode: u32::from(st.stx_mode),
            uid: st.stx_uid,
            gid: st.stx_gid,
            rdev: rustix::fs::makedev(st.stx_rdev_major, st.stx_rdev_minor),
        }
    }

    pub fn kind(&self) -> Kind {
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

    pub fn is_dir(&self) -> bool {
        self.kind() == Kind::Dir
    }

    /// The permission bits with set-id and sticky bits.
    pub fn permissions(&self) -> u32 {
        self.mode & 0o7777
    }
}

/// `lstat` of `name` inside an open directory: resolves nothing but that one name.
pub fn stat_at(dir: BorrowedFd<'_>, name: &[u8]) -> Result<Meta, Errno> {
    let st = rustix::fs::statx(
        dir,
        OsStr::from_bytes(name),
        AtFlags::SYMLINK_NOFOLLOW,
        StatxFlags::BASIC_STATS,
    )?;
    Ok(Meta::from_statx(&st))
}

/// `fstat` of an open descriptor (an `O_PATH` one included).
pub fn stat_fd(fd: BorrowedFd<'_>) -> Result<Meta, Errno> {
    let st = rustix::fs::statx(fd, c"", AtFlags::EMPTY_PATH, StatxFlags::BASIC_STATS)?;
    Ok(Meta::from_statx(&st))
}

/// The target of the symlink `name` in an open directory.
pub fn readlink_at(dir: BorrowedFd<'_>, name: &[u8]) -> Result<Vec<u8>, Errno> {
    Ok(rustix::fs::readlinkat(dir, OsStr::from_bytes(name), Vec::new())?.into_bytes())
}
