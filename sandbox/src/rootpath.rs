//! Paths inside the rootfs, before `pivot_root`: resolved as if the rootfs were `/` (an image's absolute
//! symlink must not lead to the host), and created when missing — mount points and the working directory —
//! with every mount-point stub recorded so kiln can take it out of the layer afterwards.

use std::os::fd::{AsFd, BorrowedFd, OwnedFd};

use rustix::fs::{AtFlags, FileType, Mode, OFlags, Statx, StatxFlags};
use rustix::io::Errno;

use std::os::unix::ffi::OsStrExt;

use kiln_fsutil::Root;
use kiln_fsutil::mount::describe_errno;

use super::protocol::{ChildError, Stub, StubKind};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Kind {
    Dir,
    File,
}

pub(crate) fn stat(dir: BorrowedFd<'_>, path: &[u8]) -> Result<Statx, Errno> {
    let mut flags = AtFlags::SYMLINK_NOFOLLOW;
    if path.is_empty() {
        flags |= AtFlags::EMPTY_PATH;
    }
    rustix::fs::statx(dir, path, flags, StatxFlags::BASIC_STATS | StatxFlags::MNT_ID)
}

fn file_type(st: &Statx) -> FileType {
    FileType::from_raw_mode(st.stx_mode.into())
}

fn join(components: &[Vec<u8>]) -> Vec<u8> {
    components.join(&b'/')
}

/// Resolves `path` inside `root` as if it were `/` (`kiln_fsutil::Root::resolve`), as components; what does
/// not exist yet is kept as it is, so the result is where the path *would* be. Nothing runs in the rootfs
/// while the sandbox sets it up, so the answer stays true until the mount.
fn resolve(root: BorrowedFd<'_>, path: &[u8]) -> Result<Vec<Vec<u8>>, Errno> {
    let as_errno = |e: std::io::Error| Errno::from_io_error(&e).unwrap_or(Errno::IO);
    let root = Root::from_fd(root.try_clone_to_owned().map_err(as_errno)?);
    let rel = root.resolve(path, true).map_err(as_errno)?;
    Ok(rel.iter().map(|c| c.as_bytes().to_vec()).collect())
}

/// Collects the mount-point stubs created in the rootfs overlay, and reports them as they are in the upper
/// dir.
pub(crate) struct StubRecorder {
    upper: OwnedFd,
    root_mount_id: u64,
    entries: Vec<(Vec<u8>, StubKind)>,
}

impl StubRecorder {
    pub fn new(upper: OwnedFd, root: BorrowedFd<'_>) -> Result<Self, Errno> {
        Ok(Self {
            upper,
            root_mount_id: stat(root, b"")?.stx_mnt_id,
            entries: Vec::new(),
        })
    }

    /// Called before creating `components[index]` inside `parent`. Stubs inside another mount (a tmpfs, a
    /// bind) are not in the upper dir and need no cleanup.
    fn before_create(&mut self, parent: BorrowedFd<'_>, components: &[Vec<u8>], index: usize) -> bool {
        if !matches!(stat(parent, b""), Ok(st) if st.stx_mnt_id == self.root_mount_id) {
            return false;
        }
        // Overlayfs copies every ancestor up into the upper dir; those not there yet are ours to take back.
        for end in 1..=index {
            let ancestor = join(&components[..end]);
            if matches!(stat(self.upper.as_fd(), &ancestor), Err(Errno::NOENT))
                && !self.entries.iter().any(|(p, _)| *p == ancestor)
            {
                self.entries.push((ancestor, StubKind::CopiedUp));
            }
        }
        true
    }

    /// The stubs as they are now; called once setup is done, right before the command starts.
    pub fn finish(&self) -> Vec<Stub> {
        self.entries
            .iter()
            .filter_map(|(path, kind)| {
                let st = stat(self.upper.as_fd(), path).ok()?;
                Some(Stub {
                    path: path.clone(),
                    kind: *kind,
                    ino: st.stx_ino,
                    ctime: (st.stx_ctime.tv_sec, st.stx_ctime.tv_nsec.into()),
                    mode: st.stx_mode.into(),
                    uid: st.stx_uid,
                    gid: st.stx_gid,
                })
            })
            .collect()
    }
}

/// What [`ensure`] does for a missing path.
pub(crate) enum Create<'r> {
    /// A mount point: created with default owner, recorded as a stub.
    Stub(&'r mut StubRecorder),
    /// The working directory: created for good, owned by the user (as BuildKit does).
    Owned { uid: u32, gid: u32 },
}

/// Returns an `O_PATH` descriptor of `path` inside `root`, creating what is missing: directories on the way,
/// and the last component as `kind`. `what` names the path in errors ("mount point /etc/hosts").
pub(crate) fn ensure(
    root: BorrowedFd<'_>,
    path: &str,
    kind: Kind,
    mut create: Create<'_>,
    what: &str,
) -> Result<OwnedFd, ChildError> {
    let fail = |e: Errno| ChildError::setup(format!("creating {what}"), describe_errno(e));
    let components = resolve(root, path.as_bytes()).map_err(fail)?;
    let path_flags = OFlags::PATH | OFlags::NOFOLLOW | OFlags::CLOEXEC;
    let mut current =
        rustix::fs::openat(root, c".", path_flags | OFlags::DIRECTORY, Mode::empty()).map_err(fail)?;
    for (index, name) in components.iter().enumerate() {
        let last = index + 1 == components.len();
        let want_dir = !last || kind == Kind::Dir;
        let dir_flag = if want_dir {
            OFlags::DIRECTORY
        } else {
            OFlags::empty()
        };
        let next = match rustix::fs::openat(&current, name.as_slice(), path_flags | dir_flag, Mode::empty()) {
            Ok(fd) => fd,
            Err(Errno::NOENT) => {
                let recorded = match &mut create {
                    Create::Stub(recorder) => recorder.before_create(current.as_fd(), &components, index),
                    Create::Owned { .. } => false,
                };
                if want_dir {
                    rustix::fs::mkdirat(&current, name.as_slice(), Mode::from_raw_mode(0o755))
                        .map_err(fail)?;
                } else {
                    let flags =
                        OFlags::CREATE | OFlags::EXCL | OFlags::WRONLY | OFlags::NOFOLLOW | OFlags::CLOEXEC;
                    rustix::fs::openat(&current, name.as_slice(), flags, Mode::from_raw_mode(0o644))
                        .map_err(fail)?;
                }
                match &mut create {
                    Create::Stub(recorder) if recorded => {
                        let stub_kind = if want_dir { StubKind::Dir } else { StubKind::File };
                        recorder.entries.push((join(&components[..=index]), stub_kind));
                    }
                    Create::Stub(_) => {}
                    Create::Owned { uid, gid } => {
                        let (uid, gid) = (rustix::fs::Uid::from_raw(*uid), rustix::fs::Gid::from_raw(*gid));
                        rustix::fs::chownat(
                            &current,
                            name.as_slice(),
                            Some(uid),
                            Some(gid),
                            AtFlags::SYMLINK_NOFOLLOW,
                        )
                        .map_err(fail)?;
                    }
                }
                rustix::fs::openat(&current, name.as_slice(), path_flags | dir_flag, Mode::empty())
                    .map_err(fail)?
            }
            Err(Errno::NOTDIR) if want_dir => {
                let shown = String::from_utf8_lossy(&join(&components[..=index])).into_owned();
                return Err(ChildError::setup(
                    format!("creating {what}"),
                    format!("/{shown} exists in the image and is not a directory"),
                ));
            }
            Err(e) => return Err(fail(e)),
        };
        if last && kind == Kind::File {
            let st = stat(next.as_fd(), b"").map_err(fail)?;
            if file_type(&st) == FileType::Directory {
                let shown = String::from_utf8_lossy(&join(&components)).into_owned();
                return Err(ChildError::setup(
                    format!("creating {what}"),
                    format!("/{shown} is a directory in the image, but a file is to be mounted there"),
                ));
            }
        }
        current = next;
    }
    Ok(current)
}

/// Reads a small file of the rootfs (/etc/passwd, /etc/group), resolved inside it; `None` if it does not
/// exist.
pub(crate) fn read_file(root: BorrowedFd<'_>, path: &str) -> Result<Option<String>, ChildError> {
    let fail = |e: std::io::Error| ChildError::setup(format!("reading {path} of the image"), e.to_string());
    let root = Root::from_fd(root.try_clone_to_owned().map_err(fail)?);
    let bytes = root.read_file(path.as_bytes()).map_err(fail)?;
    Ok(bytes.map(|b| String::from_utf8_lossy(&b).into_owned()))
}
