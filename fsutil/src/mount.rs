//! Mounting with the new mount API: filesystems are configured through an fs context (so the kernel's own
//! error text can be read back), created detached, and attached onto a descriptor of the mount point resolved
//! inside the rootfs — never onto a path string that a symlink could redirect.

use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::path::{Path, PathBuf};

use rustix::io::Errno;
use rustix::mount::{
    FsMountFlags, FsOpenFlags, MountAttrFlags, MoveMountFlags, OpenTreeFlags, fsconfig_create,
    fsconfig_set_flag, fsconfig_set_string, fsmount, fsopen, move_mount, open_tree,
};

use std::os::fd::AsRawFd;

/// A mount that could not be made: `step` names it ("mounting overlay"), `message` says why, with what the
/// kernel logged on the filesystem context.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{step}: {message}")]
pub struct MountError {
    pub step: String,
    pub message: String,
}

impl MountError {
    pub fn errno(step: impl Into<String>, errno: Errno) -> Self {
        MountError {
            step: step.into(),
            message: describe_errno(errno),
        }
    }

    fn new(step: impl Into<String>, message: impl Into<String>) -> Self {
        MountError {
            step: step.into(),
            message: message.into(),
        }
    }
}

/// A filesystem being configured; errors carry the messages the kernel logged on the context.
pub struct FsContext {
    fd: OwnedFd,
    what: String,
}

impl FsContext {
    /// `what` names the mount in errors: "mounting overlay", "mounting /proc".
    pub fn open(fstype: &str, what: impl Into<String>) -> Result<Self, MountError> {
        let what = what.into();
        let fd = fsopen(fstype, FsOpenFlags::FSOPEN_CLOEXEC).map_err(|e| MountError::errno(&what, e))?;
        Ok(Self { fd, what })
    }

    fn error(&self, errno: Errno, detail: &str) -> MountError {
        let mut message = describe_errno(errno);
        if !detail.is_empty() {
            message = format!("{message} ({detail})");
        }
        let log = self.kernel_log();
        if !log.is_empty() {
            message = format!("{message}; kernel: {log}");
        }
        MountError::new(&self.what, message)
    }

    /// The "e overlay: ..." lines the kernel queued on the context.
    fn kernel_log(&self) -> String {
        let mut lines = Vec::new();
        let mut buf = [0u8; 1024];
        while let Ok(n) = rustix::io::read(&self.fd, &mut buf) {
            if n == 0 {
                break;
            }
            let line = String::from_utf8_lossy(&buf[..n]);
            lines.push(
                line.split_once(' ')
                    .map_or(line.to_string(), |(_, text)| text.to_string()),
            );
        }
        lines.join("; ")
    }

    pub fn set(&self, key: &str, value: &str) -> Result<(), MountError> {
        fsconfig_set_string(&self.fd, key, value).map_err(|e| self.error(e, &format!("{key}={value}")))
    }

    pub fn set_path(&self, key: &str, value: &Path) -> Result<(), MountError> {
        fsconfig_set_string(&self.fd, key, value)
            .map_err(|e| self.error(e, &format!("{key}={}", value.display())))
    }

    pub fn flag(&self, key: &str) -> Result<(), MountError> {
        fsconfig_set_flag(&self.fd, key).map_err(|e| self.error(e, key))
    }

    /// Creates the superblock and returns a detached mount of it.
    pub fn mount(self, attrs: MountAttrFlags) -> Result<OwnedFd, MountError> {
        fsconfig_create(&self.fd).map_err(|e| self.error(e, "creating the filesystem"))?;
        fsmount(&self.fd, FsMountFlags::FSMOUNT_CLOEXEC, attrs).map_err(|e| self.error(e, "fsmount"))
    }
}

/// A detached overlay of `lower` (top first) with `upper` and `work`. `empty` stands in when there is no
/// lower dir, since overlayfs needs one. redirect_dir, index and metacopy stay off so the upper dir remains a
/// plain diff that maps one-to-one onto an OCI layer (DESIGN.md §4).
pub fn overlay(
    lower: &[PathBuf],
    upper: &Path,
    work: &Path,
    empty: &Path,
    what: &str,
) -> Result<OwnedFd, MountError> {
    let ctx = FsContext::open("overlay", what)?;
    ctx.set("source", "kiln")?;
    let lower: Vec<&Path> = if lower.is_empty() {
        vec![empty]
    } else {
        lower.iter().map(PathBuf::as_path).collect()
    };
    // One fsconfig per layer (Linux >= 6.8): no page-size limit on the chain, no escaping of ':' or ','.
    for dir in &lower {
        ctx.set_path("lowerdir+", dir)?;
    }
    ctx.set_path("upperdir", upper)?;
    ctx.set_path("workdir", work)?;
    for key in ["redirect_dir", "index", "metacopy"] {
        ctx.set(key, "off")?;
    }
    // nodev: device nodes a RUN creates with mknod cannot be opened (docker's device cgroup has the same
    // effect); the sandbox's own /dev is made of separate bind mounts.
    ctx.mount(MountAttrFlags::MOUNT_ATTR_NODEV)
}

/// A detached tmpfs.
pub fn tmpfs(
    mode: &str,
    size: Option<u64>,
    attrs: MountAttrFlags,
    what: &str,
) -> Result<OwnedFd, MountError> {
    let ctx = FsContext::open("tmpfs", what)?;
    ctx.set("source", "tmpfs")?;
    ctx.set("mode", mode)?;
    if let Some(size) = size {
        ctx.set("size", &size.to_string())?;
    }
    ctx.mount(attrs)
}

/// A detached copy of the mount tree at `source` (a host path), like `mount --rbind`.
pub fn bind(source: &Path, recursive: bool, readonly: bool, what: &str) -> Result<OwnedFd, MountError> {
    bind_at(rustix::fs::CWD, source, recursive, readonly, what)
}

pub fn bind_at(
    dir: BorrowedFd<'_>,
    source: &Path,
    recursive: bool,
    readonly: bool,
    what: &str,
) -> Result<OwnedFd, MountError> {
    let mut flags = OpenTreeFlags::OPEN_TREE_CLONE | OpenTreeFlags::OPEN_TREE_CLOEXEC;
    if recursive {
        flags |= OpenTreeFlags::AT_RECURSIVE;
    }
    let tree = open_tree(dir, source, flags)
        .map_err(|e| MountError::new(what, format!("{}: {}", source.display(), describe_errno(e))))?;
    if readonly {
        mount_set_attr(tree.as_fd(), libc::MOUNT_ATTR_RDONLY, recursive)
            .map_err(|e| MountError::new(what, format!("making it read-only: {}", describe_errno(e))))?;
    }
    Ok(tree)
}

/// A bind mount (recursive) in which device nodes cannot be opened: what a step gets of a host directory
/// (a cache mount, the context, another result), where root in the step could otherwise `mknod` the host's
/// disk and read it.
pub fn bind_nodev(source: &Path, readonly: bool, what: &str) -> Result<OwnedFd, MountError> {
    let tree = bind(source, true, readonly, what)?;
    mount_set_attr(tree.as_fd(), libc::MOUNT_ATTR_NODEV, true)
        .map_err(|e| MountError::new(what, format!("making it nodev: {}", describe_errno(e))))?;
    Ok(tree)
}

/// Attaches a detached mount onto the mount point `target` (an `O_PATH` descriptor).
pub fn attach(mount: &OwnedFd, target: BorrowedFd<'_>, what: &str) -> Result<(), MountError> {
    move_mount(
        mount,
        c"",
        target,
        c"",
        MoveMountFlags::MOVE_MOUNT_F_EMPTY_PATH | MoveMountFlags::MOVE_MOUNT_T_EMPTY_PATH,
    )
    .map_err(|e| MountError::errno(what, e))
}

/// Attaches a detached mount at `name` relative to `dir`, not following a final symlink.
pub fn attach_at(mount: &OwnedFd, dir: BorrowedFd<'_>, name: &str) -> Result<(), Errno> {
    move_mount(mount, c"", dir, name, MoveMountFlags::MOVE_MOUNT_F_EMPTY_PATH)
}

/// Sets an attribute (`MOUNT_ATTR_*`) on a (possibly detached) mount with `mount_setattr` (which rustix
/// does not wrap), recursively if asked.
fn mount_set_attr(mount: BorrowedFd<'_>, attr_set: u64, recursive: bool) -> Result<(), Errno> {
    let attr = libc::mount_attr {
        attr_set,
        attr_clr: 0,
        propagation: 0,
        userns_fd: 0,
    };
    let mut flags = libc::AT_EMPTY_PATH;
    if recursive {
        flags |= libc::AT_RECURSIVE;
    }
    // SAFETY: `attr` lives across the call and its size is passed along; the path is an empty C string.
    let r = unsafe {
        libc::syscall(
            libc::SYS_mount_setattr,
            mount.as_raw_fd(),
            c"".as_ptr(),
            flags,
            &attr as *const libc::mount_attr,
            std::mem::size_of::<libc::mount_attr>(),
        )
    };
    if r == -1 {
        Err(Errno::from_raw_os_error(
            std::io::Error::last_os_error().raw_os_error().unwrap_or(0),
        ))
    } else {
        Ok(())
    }
}

/// "EINVAL: Invalid argument" — the symbolic name is what people search for, the text is what they read.
pub fn describe_errno(errno: Errno) -> String {
    let text = std::io::Error::from_raw_os_error(errno.raw_os_error()).to_string();
    // std appends " (os error N)", which adds nothing next to the name.
    let text = text.split(" (os error").next().unwrap_or(&text).to_string();
    match errno_name(errno) {
        Some(name) => format!("{name}: {text}"),
        None => text,
    }
}

fn errno_name(errno: Errno) -> Option<&'static str> {
    Some(match errno {
        Errno::PERM => "EPERM",
        Errno::NOENT => "ENOENT",
        Errno::INTR => "EINTR",
        Errno::IO => "EIO",
        Errno::TOOBIG => "E2BIG",
        Errno::NOEXEC => "ENOEXEC",
        Errno::BADF => "EBADF",
        Errno::NOMEM => "ENOMEM",
        Errno::ACCESS => "EACCES",
        Errno::FAULT => "EFAULT",
        Errno::BUSY => "EBUSY",
        Errno::EXIST => "EEXIST",
        Errno::XDEV => "EXDEV",
        Errno::NODEV => "ENODEV",
        Errno::NOTDIR => "ENOTDIR",
        Errno::ISDIR => "EISDIR",
        Errno::INVAL => "EINVAL",
        Errno::MFILE => "EMFILE",
        Errno::TXTBSY => "ETXTBSY",
        Errno::NOSPC => "ENOSPC",
        Errno::ROFS => "EROFS",
        Errno::NAMETOOLONG => "ENAMETOOLONG",
        Errno::NOSYS => "ENOSYS",
        Errno::NOTEMPTY => "ENOTEMPTY",
        Errno::LOOP => "ELOOP",
        Errno::OPNOTSUPP => "EOPNOTSUPP",
        Errno::STALE => "ESTALE",
        _ => return None,
    })
}
