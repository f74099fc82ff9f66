//! buildx's `-o/--output` exporters for a build's result: `type=oci` and `type=docker` write the built image
//! (already in the store) as an archive or OCI layout through [`crate::archive`]; `type=local` and
//! `type=tar` write the final filesystem, the build's layer chain merged as overlayfs would show it
//! ([`crate::tree`]), as a directory or as a deterministic tar (the layer tar's headers, [`crate::layer`]).
//!
//! Files are written atomically (see [`crate::atomic`]); a directory output is written into its
//! destination, as BuildKit's local exporter does. Every error names the output and its destination.

use std::ffi::OsStr;
use std::fmt;
use std::fs::File;
use std::io::{self, BufWriter, Write};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};

use kiln_cache::{Digest, ImageRecord, SnapshotId, Store};
use kiln_registry::Reference;
use rustix::fs::{
    AtFlags, FileType, Mode, OFlags, ResolveFlags, Timespec, Timestamps, XattrFlags, chmodat, chownat,
    fchmod, futimens, linkat, lsetxattr, makedev, mkdirat, mknodat, openat, openat2, statat, symlinkat,
    unlinkat, utimensat,
};
use rustix::io::Errno;

use crate::archive::{self, ArchiveFormat};
use crate::atomic;
use crate::error::{Error, Result};
use crate::layer;
use crate::tree::{self, Kind, Node, Tree};
use kiln_image::stored::{self, StoredImage};

/// Where a file output goes (`dest=-` is standard output).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Dest {
    Stdout,
    Path(PathBuf),
}

impl fmt::Display for Dest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Dest::Stdout => f.write_str("standard output"),
            Dest::Path(path) => write!(f, "{}", path.display()),
        }
    }
}

/// Writes the image or index `digest` (of `media_type`, in the store) as an OCI archive, an OCI layout
/// directory (`dir`, OCI only) or a docker archive, annotated with `names` as `kiln save` annotates them
/// (`org.opencontainers.image.ref.name` and `io.containerd.image.name`, the full name; `RepoTags` in a
/// docker archive). Names are normalized as docker does (`app:dev` is `docker.io/library/app:dev`). A
/// docker archive holds one platform: an index of several is refused, as buildx refuses it.
pub fn write_image_archive(
    store: &Store,
    digest: &Digest,
    media_type: &str,
    names: &[String],
    format: ArchiveFormat,
    dest: &Dest,
    dir: bool,
) -> Result<()> {
    let what = match (format, dir) {
        (ArchiveFormat::Oci, false) => "OCI archive",
        (ArchiveFormat::Oci, true) => "OCI layout",
        (ArchiveFormat::Docker, _) => "docker archive",
    };
    let write = || {
        match (format, dir, dest) {
            (ArchiveFormat::Docker, true, _) => {
                return Err(Error::invalid(
                    "a docker archive",
                    "it is a file; only OCI output can be a layout directory",
                ));
            }
            (_, true, Dest::Stdout) => {
                return Err(Error::invalid(
                    "an OCI layout",
                    "it is a directory and cannot go to standard output",
                ));
            }
            _ => {}
        }
        let images = named_images(store, digest, media_type, names)?;
        if format == ArchiveFormat::Docker
            && let Some((image, _)) = images.first()
            && image.manifests.len() > 1
        {
            let platforms: Vec<String> = image.platforms().iter().map(|p| p.to_string()).collect();
            return Err(Error::invalid(
                format!("image {digest}"),
                format!(
                    "a docker archive holds one platform and this image has {}: write an OCI archive instead",
                    platforms.join(", ")
                ),
            ));
        }
        match dest {
            Dest::Path(path) if dir => archive::write_oci_layout(store, &images, path),
            dest => write_stream(dest, |out| archive::write_archive(store, &images, out, format)),
        }
    };
    write().map_err(|e| Error::output(format!("{what} to {dest}"), e))
}

/// Writes the filesystem of the layer chain `layers` (snapshots, bottom first) into the directory `dest`
/// (created if missing), merged as overlayfs merges the chain. What is in `dest` already stays unless the
/// filesystem has the same name, which replaces it (a directory merges into a directory). Modes, symlinks,
/// devices, fifos, xattrs, hardlinks among the written files and mtimes (clamped to `source_date_epoch`)
/// are kept; owners too when running as root. Nothing is written outside `dest`: names are created relative
/// to the directory being filled, never through a symlink.
pub fn write_local(
    store: &Store,
    layers: &[SnapshotId],
    dest: &Path,
    source_date_epoch: Option<u64>,
) -> Result<()> {
    let write = || {
        let dirs = layer_dirs(store, layers)?;
        std::fs::create_dir_all(dest).map_err(Error::io(format!("create {}", dest.display())))?;
        // `dest` itself may be a symlink the user chose; below it nothing is followed.
        let root = openat(
            rustix::fs::CWD,
            dest,
            OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC,
            Mode::empty(),
        )
        .map_err(sys(|| format!("open {}", dest.display())))?;
        let mut local = LocalWriter {
            root,
            dest,
            open: Vec::new(),
            as_root: rustix::process::geteuid().is_root(),
            epoch: source_date_epoch,
        };
        Tree::merged(&dirs).walk(|node| local.node(node))?;
        local.close_dirs(0)
    };
    write().map_err(|e| Error::output(format!("local output to {}", dest.display()), e))
}

/// Writes the filesystem of the layer chain `layers` (snapshots, bottom first), merged as for
/// [`write_local`], as a tar: the same inputs give the same bytes (entries sorted, no uname or gname, no
/// atime or ctime, mtimes clamped to `source_date_epoch` when set).
pub fn write_tar(
    store: &Store,
    layers: &[SnapshotId],
    dest: &Dest,
    source_date_epoch: Option<u64>,
) -> Result<()> {
    let write = || {
        let dirs = layer_dirs(store, layers)?;
        write_stream(dest, |out| {
            layer::merged_tar(&dirs, out, source_date_epoch)?;
            Ok(())
        })
    };
    write().map_err(|e| Error::output(format!("filesystem tar to {dest}"), e))
}

/// Writes a file output (what `write` writes): atomically to a path (a temporary beside it, synced, renamed
/// over it; missing parent directories are created), or to standard output. (Refusing binary output to a
/// terminal is the CLI's business: it is the one that knows what standard output is.)
pub fn write_stream(dest: &Dest, write: impl FnOnce(&mut dyn Write) -> Result<()>) -> Result<()> {
    match dest {
        Dest::Path(path) => atomic::write_file(path, write),
        Dest::Stdout => {
            let stdout = io::stdout();
            let mut out = BufWriter::new(stdout.lock());
            write(&mut out)?;
            out.flush().map_err(Error::io("write to standard output"))
        }
    }
}

/// The stored image `digest` once per name it is written under (normalized, duplicates dropped), or once
/// unnamed.
fn named_images(
    store: &Store,
    digest: &Digest,
    media_type: &str,
    names: &[String],
) -> Result<Vec<(StoredImage, Option<String>)>> {
    let mut full_names: Vec<String> = Vec::new();
    for name in names {
        let full = stored::image_name(&Reference::parse(name)?);
        if !full_names.contains(&full) {
            full_names.push(full);
        }
    }
    let record = ImageRecord {
        digest: *digest,
        media_type: media_type.to_owned(),
        platforms: Vec::new(),
        created: stored::now_secs(),
    };
    let label = full_names.first().cloned().unwrap_or_else(|| digest.to_string());
    let image = StoredImage::read(store, &label, record)?;
    if full_names.is_empty() {
        return Ok(vec![(image, None)]);
    }
    Ok(full_names
        .into_iter()
        .map(|name| {
            let named = StoredImage {
                name: name.clone(),
                ..image.clone()
            };
            (named, Some(name))
        })
        .collect())
}

/// The diff directories of snapshots, checked to be in the store.
fn layer_dirs(store: &Store, layers: &[SnapshotId]) -> Result<Vec<PathBuf>> {
    layers
        .iter()
        .map(|id| match store.snapshot(id)? {
            Some(_) => Ok(store.snapshot_path(id)),
            None => Err(Error::invalid(format!("snapshot {id}"), "it is not in the store")),
        })
        .collect()
}

/// A directory being filled.
struct OpenDir {
    fd: OwnedFd,
    /// Relative to the destination, for messages.
    name: PathBuf,
    mode: Mode,
    times: Timestamps,
}

/// Fills a directory with the nodes of a tree, in walk order.
struct LocalWriter<'a> {
    root: OwnedFd,
    dest: &'a Path,
    /// The directories the walk is inside, outermost first (the root not included), with the mode and
    /// times each gets once its contents are written: making an entry changes a directory's mtime, and a
    /// read-only mode would stop the entries being made.
    open: Vec<OpenDir>,
    /// Only root can give files away or set non-`user.` xattrs.
    as_root: bool,
    epoch: Option<u64>,
}

impl LocalWriter<'_> {
    fn node(&mut self, node: &Node) -> Result<()> {
        // The root's attributes are the destination's own.
        if node.name.is_empty() {
            return Ok(());
        }
        let depth = node.name.split(|b| *b == b'/').count();
        // The directories deeper than this node's parent are complete.
        self.close_dirs(depth - 1)?;
        let shown = self.dest.join(OsStr::from_bytes(&node.name));
        let shown = shown.display();
        let parent = match self.open.last() {
            Some(dir) => dir.fd.as_fd(),
            None => self.root.as_fd(),
        };
        let name = OsStr::from_bytes(node.base());
        let ft = node.meta.file_type();
        let mode = Mode::from_raw_mode(node.meta.mode() & 0o7777);
        let times = self.times(node);
        match &node.kind {
            // A merged tree has none: whiteouts delete what they name.
            Kind::Whiteout => Ok(()),
            Kind::Link { first } => {
                clear_slot(parent, name, false).map_err(Error::io(format!("replace {shown}")))?;
                let (first_dir, first_name) = self.resolve_written(first)?;
                linkat(&first_dir, first_name, parent, name, AtFlags::empty())
                    .map_err(sys(|| format!("link {shown}")))
            }
            Kind::Dir { .. } => {
                let kept = clear_slot(parent, name, true).map_err(Error::io(format!("replace {shown}")))?;
                if !kept {
                    mkdirat(parent, name, Mode::from_raw_mode(0o700))
                        .map_err(sys(|| format!("create {shown}")))?;
                }
                let fd = openat(
                    parent,
                    name,
                    OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
                    Mode::empty(),
                )
                .map_err(sys(|| format!("open {shown}")))?;
                self.owner_and_xattrs(parent, name, node)?;
                self.open.push(OpenDir {
                    fd,
                    name: PathBuf::from(OsStr::from_bytes(&node.name)),
                    mode,
                    times,
                });
                Ok(())
            }
            Kind::Other => {
                clear_slot(parent, name, false).map_err(Error::io(format!("replace {shown}")))?;
                if ft.is_file() {
                    let fd = openat(
                        parent,
                        name,
                        OFlags::WRONLY | OFlags::CREATE | OFlags::EXCL | OFlags::NOFOLLOW | OFlags::CLOEXEC,
                        Mode::from_raw_mode(0o600),
                    )
                    .map_err(sys(|| format!("create {shown}")))?;
                    let mut file = File::from(fd);
                    io::copy(&mut tree::content(node)?, &mut file)
                        .map_err(Error::io(format!("write {shown} from {}", node.path.display())))?;
                } else if ft.is_symlink() {
                    let target = std::fs::read_link(&node.path)
                        .map_err(Error::io(format!("read link {}", node.path.display())))?;
                    symlinkat(&target, parent, name).map_err(sys(|| format!("create {shown}")))?;
                } else {
                    let kind = if ft.is_fifo() {
                        FileType::Fifo
                    } else if ft.is_char_device() {
                        FileType::CharacterDevice
                    } else if ft.is_block_device() {
                        FileType::BlockDevice
                    } else {
                        return Err(Error::invalid(
                            format!("file {}", node.path.display()),
                            format!("unsupported file type {ft:?}"),
                        ));
                    };
                    let rdev = node.meta.rdev();
                    let dev = makedev(rustix::fs::major(rdev), rustix::fs::minor(rdev));
                    mknodat(parent, name, kind, Mode::from_raw_mode(0o600), dev)
                        .map_err(sys(|| format!("create {shown}")))?;
                }
                self.owner_and_xattrs(parent, name, node)?;
                // A symlink's own mode means nothing on Linux and cannot be set.
                if !ft.is_symlink() {
                    chmodat(parent, name, mode, AtFlags::empty())
                        .map_err(sys(|| format!("chmod {shown}")))?;
                }
                utimensat(parent, name, &times, AtFlags::SYMLINK_NOFOLLOW)
                    .map_err(sys(|| format!("set the times of {shown}")))
            }
        }
    }

    /// Gives the directories deeper than `depth` their mode and times, innermost first.
    fn close_dirs(&mut self, depth: usize) -> Result<()> {
        while self.open.len() > depth {
            let Some(dir) = self.open.pop() else {
                break;
            };
            let shown = || self.dest.join(&dir.name).display().to_string();
            fchmod(&dir.fd, dir.mode).map_err(sys(|| format!("chmod {}", shown())))?;
            futimens(&dir.fd, &dir.times).map_err(sys(|| format!("set the times of {}", shown())))?;
        }
        Ok(())
    }

    /// Owner first (chown clears set-id bits and file capabilities), then xattrs.
    fn owner_and_xattrs(&self, parent: BorrowedFd<'_>, name: &OsStr, node: &Node) -> Result<()> {
        let shown = || {
            self.dest
                .join(OsStr::from_bytes(&node.name))
                .display()
                .to_string()
        };
        if self.as_root {
            chownat(
                parent,
                name,
                Some(rustix::fs::Uid::from_raw(node.meta.uid())),
                Some(rustix::fs::Gid::from_raw(node.meta.gid())),
                AtFlags::SYMLINK_NOFOLLOW,
            )
            .map_err(sys(|| format!("chown {}", shown())))?;
        }
        for (key, value) in tree::content_xattrs(&node.xattrs, &node.path)? {
            if !self.as_root && !key.starts_with("user.") {
                tracing::debug!(file = %shown(), xattr = %key, "not root: skipping a privileged xattr");
                continue;
            }
            // lsetxattr through the parent's fd link reaches `name` itself, whatever its type, without
            // following it (a symlink or device cannot be opened for fsetxattr).
            let path = Path::new("/proc/self/fd")
                .join(parent.as_raw_fd().to_string())
                .join(name);
            lsetxattr(&path, key.as_str(), value, XattrFlags::empty())
                .map_err(sys(|| format!("set xattr {key} on {}", shown())))?;
        }
        Ok(())
    }

    /// The parent directory and name of a file written earlier (named relative to the root), found
    /// without following any symlink: every directory on the way is one this writer made or kept.
    fn resolve_written<'n>(&self, name: &'n [u8]) -> Result<(OwnedFd, &'n OsStr)> {
        let base = name.rsplit(|b| *b == b'/').next().unwrap_or(name);
        let parent = match name.len().checked_sub(base.len() + 1) {
            Some(end) => Path::new(OsStr::from_bytes(&name[..end])),
            None => Path::new("."),
        };
        let dir = openat2(
            &self.root,
            parent,
            OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC,
            Mode::empty(),
            ResolveFlags::BENEATH | ResolveFlags::NO_SYMLINKS | ResolveFlags::NO_MAGICLINKS,
        )
        .map_err(sys(|| {
            format!("open {} (for a hardlink)", self.dest.join(parent).display())
        }))?;
        Ok((dir, OsStr::from_bytes(base)))
    }

    /// The node's mtime, clamped to the epoch, as both times (the atime of the source is when it was last
    /// read, which says nothing about the content).
    fn times(&self, node: &Node) -> Timestamps {
        let mut t = Timespec {
            tv_sec: node.meta.mtime(),
            tv_nsec: node.meta.mtime_nsec(),
        };
        if let Some(epoch) = self.epoch.and_then(|e| i64::try_from(e).ok())
            && (t.tv_sec, t.tv_nsec) > (epoch, 0)
        {
            t = Timespec {
                tv_sec: epoch,
                tv_nsec: 0,
            };
        }
        Timestamps {
            last_access: t,
            last_modification: t,
        }
    }
}

/// Makes room for a new entry called `name` in `dir`: removes a non-directory, or a directory unless
/// `keep_dir` (a directory over a directory merges into it). Returns whether a directory was kept.
fn clear_slot(dir: BorrowedFd<'_>, name: &OsStr, keep_dir: bool) -> io::Result<bool> {
    match statat(dir, name, AtFlags::SYMLINK_NOFOLLOW) {
        Err(Errno::NOENT) => Ok(false),
        Err(e) => Err(e.into()),
        Ok(st) if FileType::from_raw_mode(st.st_mode) == FileType::Directory => {
            if keep_dir {
                return Ok(true);
            }
            kiln_fsutil::root::remove_tree(dir.as_fd(), name)?;
            Ok(false)
        }
        Ok(_) => Ok(unlinkat(dir, name, AtFlags::empty()).map(|()| false)?),
    }
}

fn sys(context: impl FnOnce() -> String) -> impl FnOnce(Errno) -> Error {
    move |e| Error::io(context())(e.into())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn destinations_name_themselves() {
        assert_eq!(Dest::Stdout.to_string(), "standard output");
        assert_eq!(Dest::Path("out/x.tar".into()).to_string(), "out/x.tar");
    }
}
