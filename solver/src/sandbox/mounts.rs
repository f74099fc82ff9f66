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

use super::protocol::{ChildError, describe_errno};
use super::sys;

/// A filesystem being configured; errors carry the messages the kernel logged on the context.
pub(crate) struct FsContext {
    fd: OwnedFd,
    what: String,
}

impl FsContext {
    /// `what` names the mount in errors: "mounting overlay", "mounting /proc".
    pub fn open(fstype: &str, what: impl Into<String>) -> Result<Self, ChildError> {
        let what = what.into();
        let fd = fsopen(fstype, FsOpenFlags::FSOPEN_CLOEXEC).map_err(|e| ChildError::errno(&what, e))?;
        Ok(Self { fd, what })
    }

    fn error(&self, errno: Errno, detail: &str) -> ChildError {
        let mut message = describe_errno(errno);
        if !detail.is_empty() {
            message = format!("{message} ({detail})");
        }
        let log = self.kernel_log();
        if !log.is_empty() {
            message = format!("{message}; kernel: {log}");
        }
        ChildError::setup(&self.what, message)
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

    pub fn set(&self, key: &str, value: &str) -> Result<(), ChildError> {
        fsconfig_set_string(&self.fd, key, value).map_err(|e| self.error(e, &format!("{key}={value}")))
    }

    pub fn set_path(&self, key: &str, value: &Path) -> Result<(), ChildError> {
        fsconfig_set_string(&self.fd, key, value)
            .map_err(|e| self.error(e, &format!("{key}={}", value.display())))
    }

    pub fn flag(&self, key: &str) -> Result<(), ChildError> {
        fsconfig_set_flag(&self.fd, key).map_err(|e| self.error(e, key))
    }

    /// Creates the superblock and returns a detached mount of it.
    pub fn mount(self, attrs: MountAttrFlags) -> Result<OwnedFd, ChildError> {
        fsconfig_create(&self.fd).map_err(|e| self.error(e, "creating the filesystem"))?;
        fsmount(&self.fd, FsMountFlags::FSMOUNT_CLOEXEC, attrs).map_err(|e| self.error(e, "fsmount"))
    }
}

/// A detached overlay of `lower` (top first) with `upper` and `work`. `empty` stands in when there is no
/// lower dir, since overlayfs needs one. redirect_dir, index and metacopy stay off so the upper dir remains a
/// plain diff that maps one-to-one onto an OCI layer (DESIGN.md §4).
pub(crate) fn overlay(
    lower: &[PathBuf],
    upper: &Path,
    work: &Path,
    empty: &Path,
    what: &str,
) -> Result<OwnedFd, ChildError> {
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
pub(crate) fn tmpfs(
    mode: &str,
    size: Option<u64>,
    attrs: MountAttrFlags,
    what: &str,
) -> Result<OwnedFd, ChildError> {
    let ctx = FsContext::open("tmpfs", what)?;
    ctx.set("source", "tmpfs")?;
    ctx.set("mode", mode)?;
    if let Some(size) = size {
        ctx.set("size", &size.to_string())?;
    }
    ctx.mount(attrs)
}

/// A detached copy of the mount tree at `source` (a host path), like `mount --rbind`.
pub(crate) fn bind(
    source: &Path,
    recursive: bool,
    readonly: bool,
    what: &str,
) -> Result<OwnedFd, ChildError> {
    bind_at(rustix::fs::CWD, source, recursive, readonly, what)
}

pub(crate) fn bind_at(
    dir: BorrowedFd<'_>,
    source: &Path,
    recursive: bool,
    readonly: bool,
    what: &str,
) -> Result<OwnedFd, ChildError> {
    let mut flags = OpenTreeFlags::OPEN_TREE_CLONE | OpenTreeFlags::OPEN_TREE_CLOEXEC;
    if recursive {
        flags |= OpenTreeFlags::AT_RECURSIVE;
    }
    let tree = open_tree(dir, source, flags)
        .map_err(|e| ChildError::setup(what, format!("{}: {}", source.display(), describe_errno(e))))?;
    if readonly {
        sys::mount_set_readonly(tree.as_fd(), recursive)
            .map_err(|e| ChildError::setup(what, format!("making it read-only: {}", describe_errno(e))))?;
    }
    Ok(tree)
}

/// Attaches a detached mount onto the mount point `target` (an `O_PATH` descriptor).
pub(crate) fn attach(mount: &OwnedFd, target: BorrowedFd<'_>, what: &str) -> Result<(), ChildError> {
    move_mount(
        mount,
        c"",
        target,
        c"",
        MoveMountFlags::MOVE_MOUNT_F_EMPTY_PATH | MoveMountFlags::MOVE_MOUNT_T_EMPTY_PATH,
    )
    .map_err(|e| ChildError::errno(what, e))
}

/// Attaches a detached mount at `name` relative to `dir`, not following a final symlink.
pub(crate) fn attach_at(mount: &OwnedFd, dir: BorrowedFd<'_>, name: &str) -> Result<(), Errno> {
    move_mount(mount, c"", dir, name, MoveMountFlags::MOVE_MOUNT_F_EMPTY_PATH)
}
