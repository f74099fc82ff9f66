//! Views of results inside kiln's own mount namespace: file operations write into an overlay of their input,
//! and mounts from other stages need a merged, read-only (or throwaway-writable) view. kiln unshares its mount
//! namespace at start-up, so whatever is mounted here disappears with the process, even on SIGKILL.

use kiln_cache::Store;
use kiln_fsutil::ignore::PatternMatcher;
use kiln_fsutil::mount::{self as mounts, MountError};
use rustix::mount::{MountAttrFlags, UnmountFlags, unmount};
use std::io;
use std::path::{Path, PathBuf};

/// A mounted tree; unmounted and its mount point removed on drop.
pub struct MountedTree {
    mount_point: PathBuf,
    /// Scratch upper/work dirs of a writable view, removed with it.
    scratch: Option<PathBuf>,
    /// What the view shows when it is not the mount point: a file copied into the scratch dir.
    file: Option<PathBuf>,
}

impl MountedTree {
    /// `lower` (top first) merged. Writable views put their writes in a scratch dir that is thrown away.
    pub fn mount(store: &Store, lower: &[PathBuf], writable: bool) -> io::Result<Self> {
        Self::mount_owning(store, lower, writable, None)
    }

    /// [`MountedTree::mount`], owning `scratch` (made already, holding a layer of `lower`) and removing it
    /// with the view; a writable view's upper and work dirs go there too.
    fn mount_owning(
        store: &Store,
        lower: &[PathBuf],
        writable: bool,
        scratch: Option<PathBuf>,
    ) -> io::Result<Self> {
        // The tree owns `scratch` before anything can fail, so its drop removes it.
        let mut tree = MountedTree {
            mount_point: PathBuf::new(),
            scratch,
            file: None,
        };
        tree.mount_point = fresh_dir(store, "mnt")?;
        if writable {
            let scratch = match &tree.scratch {
                Some(scratch) => scratch.clone(),
                None => tree.scratch.insert(fresh_dir(store, "scratch")?).clone(),
            };
            let (upper, work) = (scratch.join("upper"), scratch.join("work"));
            std::fs::create_dir(&upper)?;
            std::fs::create_dir(&work)?;
            tree.attach_overlay(lower, &upper, &work)?;
        } else {
            match lower {
                // An overlay without an upper dir needs two lower dirs; one is a plain read-only bind.
                [] => {}
                [only] => {
                    let bind = mounts::bind(only, false, true, "binding a layer").map_err(mount_error)?;
                    tree.attach(&bind)?;
                }
                _ => tree.attach_read_only(lower)?,
            }
        }
        Ok(tree)
    }

    fn attach_read_only(&self, lower: &[PathBuf]) -> io::Result<()> {
        let ctx = mounts::FsContext::open("overlay", "mounting a read-only view").map_err(mount_error)?;
        ctx.set("source", "kiln").map_err(mount_error)?;
        for dir in lower {
            ctx.set_path("lowerdir+", dir).map_err(mount_error)?;
        }
        let mount = ctx
            .mount(MountAttrFlags::MOUNT_ATTR_RDONLY)
            .map_err(mount_error)?;
        self.attach(&mount)
    }

    /// A client directory (the build context, a local named context) as a RUN mount of `source`, a directory
    /// inside `root`: what `.dockerignore` excludes is covered by whiteouts in a layer above it, and a
    /// writable mount's writes land in a throwaway upper dir, never in the client's files. `None` when a plain
    /// read-only bind of `source` shows the same.
    pub fn client_dir(
        store: &Store,
        root: &Path,
        source: &Path,
        ignore: &PatternMatcher,
        writable: bool,
    ) -> io::Result<Option<Self>> {
        // What the context does not hold for the build cannot be mounted either.
        if let Some(rel) = source.strip_prefix(root).ok().and_then(Path::to_str)
            && ignore.is_excluded(rel)
        {
            return Err(io::Error::new(
                io::ErrorKind::NotFound,
                format!("{rel} is excluded from the context by .dockerignore"),
            ));
        }
        if !source.is_dir() {
            if !writable {
                return Ok(None);
            }
            // overlayfs layers are directories: a writable file is a copy whose writes go with the step.
            let scratch = fresh_dir(store, "scratch")?;
            let tree = MountedTree {
                mount_point: fresh_dir(store, "mnt")?,
                file: Some(scratch.join("file")),
                scratch: Some(scratch),
            };
            std::fs::copy(source, tree.path())?;
            return Ok(Some(tree));
        }
        let hidden = ignored_entries(root, source, ignore)?;
        if hidden.is_empty() {
            return match writable {
                true => Self::mount_owning(store, &[source.to_path_buf()], true, None).map(Some),
                false => Ok(None),
            };
        }
        let scratch = fresh_dir(store, "scratch")?;
        let mask = scratch.join("mask");
        if let Err(e) = write_mask(source, &hidden, &mask) {
            let _ = kiln_fsutil::root::remove_path(&scratch);
            return Err(e);
        }
        Self::mount_owning(store, &[mask, source.to_path_buf()], writable, Some(scratch)).map(Some)
    }

    /// `lower` (top first) merged with `upper`, whose changes are the result (a file operation's layer).
    pub fn mount_upper(store: &Store, lower: &[PathBuf], upper: &Path, work: &Path) -> io::Result<Self> {
        let mut tree = MountedTree {
            mount_point: fresh_dir(store, "mnt")?,
            scratch: None,
            file: None,
        };
        tree.attach_overlay(lower, upper, work)?;
        Ok(tree)
    }

    pub fn path(&self) -> &Path {
        self.file.as_deref().unwrap_or(&self.mount_point)
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
            let _ = kiln_fsutil::root::remove_path(scratch);
        }
    }
}

/// The lower dirs of an overlay for layers given bottom to top: top first, each directory once. overlayfs
/// refuses a directory twice (ELOOP), and identical layers do occur (every step that changed nothing is the one
/// empty layer). Keeping only the topmost copy changes nothing: whatever a lower copy provides, or a layer
/// between them removes, the upper copy provides again.
pub fn lower_dirs(bottom_to_top: impl DoubleEndedIterator<Item = PathBuf>) -> Vec<PathBuf> {
    let mut seen = std::collections::HashSet::new();
    bottom_to_top
        .rev()
        .filter(|dir| seen.insert(dir.clone()))
        .collect()
}

/// The entries under `source` that `ignore` excludes, relative to `source`: a whole directory when nothing
/// below it can come back, else its excluded entries one by one. Paths are matched relative to `root`.
fn ignored_entries(root: &Path, source: &Path, ignore: &PatternMatcher) -> io::Result<Vec<PathBuf>> {
    let mut hidden = Vec::new();
    if ignore.patterns().is_empty() {
        return Ok(hidden);
    }
    let mut walk = walkdir::WalkDir::new(source)
        .min_depth(1)
        .follow_links(false)
        .into_iter();
    while let Some(entry) = walk.next() {
        let entry = entry.map_err(io::Error::other)?;
        let Some(rel) = entry.path().strip_prefix(root).ok().and_then(Path::to_str) else {
            continue;
        };
        if !ignore.is_excluded(rel) {
            continue;
        }
        if entry.file_type().is_dir() {
            if !ignore.can_skip_dir(rel) {
                continue;
            }
            walk.skip_current_dir();
        }
        if let Ok(below) = entry.path().strip_prefix(source) {
            hidden.push(below.to_path_buf());
        }
    }
    Ok(hidden)
}

/// A layer for above `source` with a whiteout for each of `hidden`. A merged directory shows the owner, mode
/// and times of its top layer, so every directory of the mask takes those of its counterpart in `source`.
fn write_mask(source: &Path, hidden: &[PathBuf], mask: &Path) -> io::Result<()> {
    use std::os::unix::fs::MetadataExt;
    std::fs::create_dir(mask)?;
    for rel in hidden {
        let whiteout = mask.join(rel);
        if let Some(parent) = whiteout.parent() {
            std::fs::create_dir_all(parent)?;
        }
        rustix::fs::mknodat(
            rustix::fs::CWD,
            &whiteout,
            rustix::fs::FileType::CharacterDevice,
            rustix::fs::Mode::empty(),
            0,
        )?;
    }
    for entry in walkdir::WalkDir::new(mask).follow_links(false) {
        let entry = entry.map_err(io::Error::other)?;
        let Ok(rel) = entry.path().strip_prefix(mask) else {
            continue;
        };
        if !entry.file_type().is_dir() {
            continue;
        }
        let meta = std::fs::symlink_metadata(source.join(rel))?;
        kiln_fsutil::root::set_meta_at(
            rustix::fs::CWD,
            entry.path().as_os_str(),
            Some((meta.uid(), meta.gid())),
            Some(meta.mode() & 0o7777),
            Some((meta.atime(), meta.mtime())),
        )?;
    }
    Ok(())
}

fn mount_error(e: MountError) -> io::Error {
    io::Error::other(e)
}

fn fresh_dir(store: &Store, kind: &str) -> io::Result<PathBuf> {
    let dir = store.root().join("tmp").join(kiln_cache::temp_name(kind));
    std::fs::create_dir_all(&dir)?;
    Ok(dir)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lower_dirs_are_top_first_and_keep_the_topmost_copy() {
        let dirs = ["a", "empty", "b", "empty", "a"].map(PathBuf::from);
        assert_eq!(
            lower_dirs(dirs.into_iter()),
            ["a", "empty", "b"].map(PathBuf::from)
        );
    }
}
