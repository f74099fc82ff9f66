//! Views of results inside kiln's own mount namespace: file operations write into an overlay of their input,
//! and mounts from other stages need a merged, read-only (or throwaway-writable) view. kiln unshares its mount
//! namespace at start-up, so whatever is mounted here disappears with the process, even on SIGKILL.

use crate::sandbox::mounts;
use crate::sandbox::protocol::ChildError;
use kiln_cache::Store;
use rustix::mount::{MountAttrFlags, UnmountFlags, unmount};
use std::io;
use std::path::{Component, Path, PathBuf};

/// A mounted tree; unmounted and its mount point removed on drop.
pub struct MountedTree {
    mount_point: PathBuf,
    /// Scratch upper/work dirs of a writable view, removed with it.
    scratch: Option<PathBuf>,
}

impl MountedTree {
    /// `lower` (top first) merged. Writable views put their writes in a scratch dir that is thrown away.
    pub fn mount(store: &Store, lower: &[PathBuf], writable: bool) -> io::Result<Self> {
        let mount_point = fresh_dir(store, "mnt")?;
        let mut tree = MountedTree {
            mount_point,
            scratch: None,
        };
        if writable {
            let scratch = fresh_dir(store, "scratch")?;
            let (upper, work) = (scratch.join("upper"), scratch.join("work"));
            std::fs::create_dir(&upper)?;
            std::fs::create_dir(&work)?;
            tree.scratch = Some(scratch);
            tree.attach_overlay(lower, &upper, &work)?;
        } else {
            match lower {
                // An overlay without an upper dir needs two lower dirs; one is a plain read-only bind.
                [] => {}
                [only] => {
                    let bind = mounts::bind(only, false, true, "binding a layer").map_err(mount_error)?;
                    tree.attach(&bind)?;
                }
                _ => {
                    let ctx = mounts::FsContext::open("overlay", "mounting a read-only view")
                        .map_err(mount_error)?;
                    ctx.set("source", "kiln").map_err(mount_error)?;
                    for dir in lower {
                        ctx.set_path("lowerdir+", dir).map_err(mount_error)?;
                    }
                    let mount = ctx
                        .mount(MountAttrFlags::MOUNT_ATTR_RDONLY)
                        .map_err(mount_error)?;
                    tree.attach(&mount)?;
                }
            }
        }
        Ok(tree)
    }

    /// `lower` (top first) merged with `upper`, whose changes are the result (a file operation's layer).
    pub fn mount_upper(store: &Store, lower: &[PathBuf], upper: &Path, work: &Path) -> io::Result<Self> {
        let mut tree = MountedTree {
            mount_point: fresh_dir(store, "mnt")?,
            scratch: None,
        };
        tree.attach_overlay(lower, upper, work)?;
        Ok(tree)
    }

    pub fn path(&self) -> &Path {
        &self.mount_point
    }

    fn attach_overlay(&mut self, lower: &[PathBuf], upper: &Path, work: &Path) -> io::Result<()> {
        let empty = self.mount_point.with_extension("empty");
        std::fs::create_dir_all(&empty)?;
        let mount = mounts::overlay(lower, upper, work, &empty, "mounting an overlay").map_err(mount_error);
        let attached = mount.and_then(|m| self.attach(&m));
        let _ = std::fs::remove_dir(&empty);
        attached
    }

    fn attach(&self, mount: &std::os::fd::OwnedFd) -> io::Result<()> {
        let target = rustix::fs::open(
            &self.mount_point,
            rustix::fs::OFlags::PATH | rustix::fs::OFlags::DIRECTORY | rustix::fs::OFlags::CLOEXEC,
            rustix::fs::Mode::empty(),
        )?;
        mounts::attach(mount, std::os::fd::AsFd::as_fd(&target), "attaching a view").map_err(mount_error)
    }
}

impl Drop for MountedTree {
    fn drop(&mut self) {
        // Lazy detach: a straggling open file must not keep the build from finishing.
        let _ = unmount(&self.mount_point, UnmountFlags::DETACH);
        let _ = std::fs::remove_dir(&self.mount_point);
        if let Some(scratch) = &self.scratch {
            let _ = std::fs::remove_dir_all(scratch);
        }
    }
}

fn mount_error(e: ChildError) -> io::Error {
    io::Error::other(crate::sandbox::SandboxError::from(e))
}

fn fresh_dir(store: &Store, kind: &str) -> io::Result<PathBuf> {
    let dir = store.root().join("tmp").join(kiln_cache::temp_name(kind));
    std::fs::create_dir_all(&dir)?;
    Ok(dir)
}

/// Resolves `path` inside `root` as if `root` were `/`: `..` stops at the root and symlinks (absolute or
/// relative) are followed within it, so the result never leaves `root`.
pub fn resolve_in_root(root: &Path, path: &str) -> io::Result<PathBuf> {
    const MAX_LINKS: usize = 40;
    let mut resolved: Vec<std::ffi::OsString> = Vec::new();
    let mut pending: Vec<std::ffi::OsString> = Path::new(path)
        .components()
        .rev()
        .filter_map(component_name)
        .collect();
    let mut links = 0;
    while let Some(name) = pending.pop() {
        if name == ".." {
            resolved.pop();
            continue;
        }
        let candidate: PathBuf = std::iter::once(root.as_os_str())
            .chain(resolved.iter().map(|s| s.as_os_str()))
            .collect::<PathBuf>()
            .join(&name);
        match std::fs::symlink_metadata(&candidate) {
            Ok(meta) if meta.file_type().is_symlink() => {
                links += 1;
                if links > MAX_LINKS {
                    return Err(io::Error::other(format!(
                        "too many levels of symbolic links in {path:?}"
                    )));
                }
                let target = std::fs::read_link(&candidate)?;
                if target.is_absolute() {
                    resolved.clear();
                }
                pending.extend(target.components().rev().filter_map(component_name));
            }
            _ => resolved.push(name),
        }
    }
    Ok(resolved
        .iter()
        .fold(root.to_path_buf(), |acc, part| acc.join(part)))
}

fn component_name(component: Component<'_>) -> Option<std::ffi::OsString> {
    match component {
        Component::Normal(name) => Some(name.to_os_string()),
        Component::ParentDir => Some("..".into()),
        Component::RootDir | Component::CurDir | Component::Prefix(_) => None,
    }
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
