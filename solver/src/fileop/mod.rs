//! LLB file operations — COPY/ADD, mkdir, mkfile, rm, symlink — run in-process with BuildKit's semantics
//! (its `solver/llbsolver/file` backend on top of fsutil's `copy` package).
//!
//! Nothing outside an input root or the target is ever read or written: every path is resolved inside its
//! root as if the root were `/` (see [`root`]), symlinks found while copying a tree are copied as links and
//! never followed, and archives are extracted with the same confinement.
//!
//! The API is synchronous; the solver calls [`apply`] from `spawn_blocking`. File contents are copied on the
//! rayon pool (`copy_file_range` where the kernel can).

mod archive;
mod copy;
mod mode;
mod owner;

use std::ffi::OsStr;
use std::io;
use std::os::fd::AsFd;
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::path::{Path, PathBuf};

use kiln_fsutil::glob;
use kiln_fsutil::ignore::{IgnoreError, PatternMatcher};
use kiln_fsutil::root::{Root, seconds, set_meta_at};
use kiln_fsutil::select::{CopySpec, Expanded, SelectError, Selector};
use kiln_llb::{FileAction, Owner};
use rustix::fs::{AtFlags, Mode, OFlags, Timestamps, renameat, symlinkat, utimensat};
use rustix::io::Errno;

/// Where a file op reads and writes.
pub struct FileOpEnv<'a> {
    /// The tree the actions apply to: an overlayfs merged mount of the input (or an empty dir for
    /// `has_base = false`). Writes go here.
    pub target: &'a Path,
    /// Roots of the op's inputs by index (`Copy::src_input`): a context dir, a read-only mounted stage rootfs,
    /// or a dir holding a downloaded file. Sources resolve inside their root as if it were `/`.
    pub inputs: &'a [PathBuf],
    /// By input index: `Some` for every local-context input — its `.dockerignore` matcher, an empty one when
    /// there is no such file — and `None` for any other tree. Ignored files are never copied, even when a
    /// wildcard or a directory copy would reach them, and files of a context are owned by 0:0 as BuildKit's
    /// context transfer makes them, while other trees keep their owners.
    pub ignore: &'a [Option<&'a PatternMatcher>],
    /// SOURCE_DATE_EPOCH: mtimes of created files are clamped to it, when set.
    pub timestamp: Option<u64>,
}

#[derive(Debug, thiserror::Error)]
pub enum FileOpError {
    #[error("no source files were specified")]
    NoSources,
    #[error(
        "failed to compute cache key: {path:?}: not found{}",
        if *in_context { " (file not found in build context or excluded by .dockerignore)" } else { "" }
    )]
    SourceNotFound { path: String, in_context: bool },
    #[error("invalid user {name:?}: no such user in /etc/passwd")]
    UnknownUser { name: String },
    #[error("invalid group {name:?}: no such group in /etc/group")]
    UnknownGroup { name: String },
    #[error("invalid chmod {mode:?}: {reason}")]
    InvalidChmod { mode: String, reason: String },
    #[error("invalid pattern: {0}")]
    InvalidPattern(#[source] IgnoreError),
    #[error("copy source is input {index}, but the file op has {count} inputs")]
    NoSuchInput { index: u32, count: usize },
    #[error(
        "when copying more than one source ({count} here), the destination {dest:?} must be a directory and end with a /"
    )]
    DestNotDirectory { dest: String, count: usize },
    #[error("cannot copy to non-directory: {path}")]
    NotADirectory { path: String },
    #[error("cannot replace directory {path} with a file")]
    ReplaceDirectory { path: String },
    #[error("ADD {archive}: {entry:?}: {reason}")]
    Archive {
        archive: String,
        entry: String,
        reason: String,
    },
    #[error("{op} {path}: {source}")]
    Io {
        op: &'static str,
        path: String,
        #[source]
        source: io::Error,
    },
}

impl From<SelectError> for FileOpError {
    fn from(e: SelectError) -> FileOpError {
        match e {
            SelectError::SourceNotFound { path, in_context } => {
                FileOpError::SourceNotFound { path, in_context }
            }
            SelectError::InvalidPattern(e) => FileOpError::InvalidPattern(e),
            SelectError::Io { op, path, source } => FileOpError::Io { op, path, source },
        }
    }
}

/// What a COPY selects from its source, for the copy and for its cache key alike.
pub fn copy_spec(copy: &kiln_llb::Copy) -> CopySpec<'_> {
    CopySpec {
        sources: &copy.src,
        follow_symlinks: copy.follow_symlinks,
        allow_wildcard: copy.allow_wildcard,
        allow_empty_wildcard: copy.allow_empty_wildcard,
        parents: copy.parents,
        exclude: &copy.exclude,
    }
}

/// Applies `actions` in order to `env.target`.
pub fn apply(env: &FileOpEnv, actions: &[FileAction]) -> Result<(), FileOpError> {
    let target = Root::new(env.target).map_err(|source| FileOpError::Io {
        op: "open",
        path: env.target.display().to_string(),
        source,
    })?;
    let timestamp = env.timestamp.map(clamp_epoch);
    for action in actions {
        match action {
            FileAction::Copy(c) => copy::copy(&target, env, c)?,
            FileAction::Mkdir {
                path,
                mode,
                make_parents,
                owner,
            } => mkdir(&target, path, *mode, *make_parents, owner.as_ref(), timestamp)?,
            FileAction::Mkfile {
                path,
                mode,
                data,
                owner,
            } => mkfile(&target, path, *mode, data.as_bytes(), owner.as_ref(), timestamp)?,
            FileAction::Rm {
                path,
                allow_not_found,
                allow_wildcard,
            } => rm(&target, path, *allow_not_found, *allow_wildcard)?,
            FileAction::Symlink { target: link, path } => symlink(&target, link, path, timestamp)?,
        }
    }
    Ok(())
}

fn clamp_epoch(epoch: u64) -> i64 {
    i64::try_from(epoch).unwrap_or(i64::MAX)
}

fn io_error(op: &'static str, path: impl Into<String>) -> impl FnOnce(io::Error) -> FileOpError {
    let path = path.into();
    move |source| FileOpError::Io { op, path, source }
}

fn resolve_owner(target: &Root, owner: Option<&Owner>) -> Result<Option<(u32, u32)>, FileOpError> {
    owner.map(|o| owner::resolve(target, o)).transpose()
}

fn mkdir(
    target: &Root,
    path: &str,
    mode: u32,
    make_parents: bool,
    owner: Option<&Owner>,
    timestamp: Option<i64>,
) -> Result<(), FileOpError> {
    let owner = resolve_owner(target, owner)?;
    let fail = io_error("mkdir", path);
    let rel = target
        .resolve(path.as_bytes(), true)
        .map_err(io_error("mkdir", path))?;
    // As BuildKit: only the permission bits, and with parents every directory created gets them.
    let mode = mode & 0o777;
    if make_parents {
        return target.mkdir_all(&rel, mode, owner, timestamp).map_err(fail);
    }
    if rel.as_os_str().is_empty() {
        return Ok(());
    }
    let (parent, name) = target.parent(&rel).map_err(io_error("mkdir", path))?;
    match rustix::fs::mkdirat(&parent, &name, Mode::from_raw_mode(0o700)) {
        // An existing entry is left as it is, whatever it is, as BuildKit does.
        Err(Errno::EXIST) => Ok(()),
        Err(e) => Err(fail(e.into())),
        Ok(()) => set_meta_at(
            parent.as_fd(),
            &name,
            owner,
            Some(mode),
            timestamp.map(|t| (t, t)),
        )
        .map_err(fail),
    }
}

/// Writes a new file beside the destination and renames it over it, so that whatever was there — a device
/// node, a symlink — is replaced rather than written through.
fn mkfile(
    target: &Root,
    path: &str,
    mode: u32,
    data: &[u8],
    owner: Option<&Owner>,
    timestamp: Option<i64>,
) -> Result<(), FileOpError> {
    let owner = resolve_owner(target, owner)?;
    let rel = target
        .resolve(path.as_bytes(), true)
        .map_err(io_error("mkfile", path))?;
    let (parent, name) = target.parent(&rel).map_err(io_error("mkfile", path))?;
    let mut staged = name.clone();
    staged.push(format!(".kiln-mkfile-{}", std::process::id()));
    let flags = OFlags::WRONLY | OFlags::CREATE | OFlags::EXCL | OFlags::NOFOLLOW | OFlags::CLOEXEC;
    let write = || -> io::Result<()> {
        let fd = rustix::fs::openat(&parent, &staged, flags, Mode::from_raw_mode(0o600))?;
        let mut file = std::fs::File::from(fd);
        io::Write::write_all(&mut file, data)?;
        set_meta_at(
            parent.as_fd(),
            &staged,
            owner,
            Some(mode & 0o777),
            timestamp.map(|t| (t, t)),
        )?;
        Ok(renameat(&parent, &staged, &parent, &name)?)
    };
    write().map_err(|e| {
        let _ = rustix::fs::unlinkat(&parent, &staged, AtFlags::empty());
        io_error("mkfile", path)(e)
    })
}

fn rm(target: &Root, path: &str, allow_not_found: bool, allow_wildcard: bool) -> Result<(), FileOpError> {
    let paths = match allow_wildcard {
        true => match Selector::new(target, None).expand(path, false)? {
            Expanded::Literal(cleaned) => vec![cleaned],
            Expanded::Matches(found) => found.into_iter().map(|p| p.into_os_string().into_vec()).collect(),
        },
        false => vec![glob::clean_rel(path.as_bytes())],
    };
    for cleaned in paths {
        rm_path(target, &cleaned, allow_not_found)?;
    }
    Ok(())
}

/// Removes one path: its parent is resolved (following symlinks), the entry itself is not followed.
fn rm_path(target: &Root, cleaned: &[u8], allow_not_found: bool) -> Result<(), FileOpError> {
    let shown_path = format!("/{}", String::from_utf8_lossy(cleaned));
    let cleaned = Path::new(OsStr::from_bytes(cleaned));
    let Some(name) = cleaned.file_name() else {
        let refused = io::Error::new(io::ErrorKind::InvalidInput, "refusing to remove the root");
        return Err(io_error("rm", shown_path)(refused));
    };
    let parent = cleaned.parent().unwrap_or(Path::new(""));
    let rel = target
        .resolve(parent.as_os_str().as_bytes(), true)
        .map_err(io_error("rm", shown_path.clone()))?
        .join(name);
    if !allow_not_found
        && target
            .lstat(&rel)
            .map_err(io_error("rm", shown_path.clone()))?
            .is_none()
    {
        return Err(io_error("rm", shown_path)(Errno::NOENT.into()));
    }
    target.remove_all(&rel).map_err(io_error("rm", shown_path))
}

fn symlink(target: &Root, link: &str, path: &str, timestamp: Option<i64>) -> Result<(), FileOpError> {
    let fail = io_error("symlink", path);
    let rel = target
        .resolve(path.as_bytes(), true)
        .map_err(io_error("symlink", path))?;
    let (parent, name) = target.parent(&rel).map_err(io_error("symlink", path))?;
    symlinkat(link, &parent, &name).map_err(|e| io_error("symlink", path)(e.into()))?;
    if let Some(t) = timestamp {
        let times = Timestamps {
            last_access: seconds(t, 0),
            last_modification: seconds(t, 0),
        };
        utimensat(&parent, &name, &times, AtFlags::SYMLINK_NOFOLLOW).map_err(|e| fail(e.into()))?;
    }
    Ok(())
}
