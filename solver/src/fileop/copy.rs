//! COPY and ADD of local files: BuildKit's `docopy` on top of fsutil's `copy.Copy`.
//!
//! For every source (after wildcard expansion) the destination is prepared as fsutil's `prepareTargetDir`
//! does — a directory source with `dir_contents_only` merges into the destination, a non-directory goes
//! inside an existing directory or becomes the destination name — then the tree is walked without following
//! symlinks. Directories, symlinks and special files are created during the walk; regular file contents are
//! copied afterwards on the rayon pool; directory metadata is applied last, deepest first, once nothing more
//! is written into them.

use std::collections::HashMap;
use std::ffi::OsStr;
use std::fs::File;
use std::io;
use std::os::fd::{AsFd, BorrowedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use kiln_frontend::dockerignore::PatternMatcher;
use kiln_llb::Copy;
use rayon::prelude::*;
use rustix::fs::{AtFlags, FileType, Gid, Mode, OFlags, Stat, Timestamps, Uid, XattrFlags, statat};
use rustix::io::Errno;

use super::archive;
use super::glob::clean_rel;
use super::mode::Chmod;
use super::root::{Owner, Rel, Root, dir_names, seconds, set_meta_at, shown};
use super::wildcard::{self, Sources};
use super::{FileOpEnv, FileOpError, clamp_epoch, io_error, resolve_owner};

pub(super) fn copy(target: &Root, env: &FileOpEnv, c: &Copy) -> Result<(), FileOpError> {
    if c.src.is_empty() {
        return Err(FileOpError::NoSources);
    }
    let index = c.src_input as usize;
    let input = env.inputs.get(index).ok_or(FileOpError::NoSuchInput {
        index: c.src_input,
        count: env.inputs.len(),
    })?;
    let ignore = env.ignore.get(index).copied().flatten();
    let source = Root::new(input).map_err(io_error("open", input.display().to_string()))?;
    let chmod = match &c.mode {
        Some(m) => Some(Chmod::parse(m).map_err(|reason| FileOpError::InvalidChmod {
            mode: m.clone(),
            reason,
        })?),
        None => None,
    };
    let exclude = match c.exclude.is_empty() {
        true => None,
        false => Some(PatternMatcher::new(&c.exclude).map_err(FileOpError::InvalidPattern)?),
    };
    let dest = Dest::new(&c.dest);
    if !c.create_dest_path {
        // BuildKit insists only that the destination's parent exists.
        let rel = target
            .resolve(&dest.path, true)
            .map_err(io_error("stat", &c.dest))?;
        let parent = rel.parent().unwrap_or(Path::new(""));
        if target.lstat(parent).map_err(io_error("stat", &c.dest))?.is_none() {
            return Err(io_error("stat", &c.dest)(Errno::NOENT.into()));
        }
    }

    let mut copier = Copier {
        source: &source,
        target,
        follow_symlinks: c.follow_symlinks,
        contents_only: c.dir_contents_only,
        auto_extract: c.auto_extract,
        ignore,
        in_context: ignore.is_some(),
        exclude: exclude.as_ref(),
        include: None,
        owner: resolve_owner(target, c.owner.as_ref())?,
        chmod: chmod.as_ref(),
        timestamp: c.timestamp.or(env.timestamp).map(clamp_epoch),
        inodes: HashMap::new(),
        ancestors: Vec::new(),
        files: Vec::new(),
        hardlinks: Vec::new(),
        dirs: Vec::new(),
        copied: 0,
    };

    // Every source is looked up before anything is written, so a missing one fails the step cleanly.
    let mut groups = Vec::new();
    for raw in &c.src {
        let (path, include) = match c.parents {
            true => parents_split(raw)?,
            false => (raw.clone(), None),
        };
        let found = match c.allow_wildcard {
            true => wildcard::expand(&source, &path, c.follow_symlinks, ignore)?,
            false => Sources::Literal(clean_rel(path.as_bytes())),
        };
        let items: Vec<Rel> = match found {
            Sources::Literal(p) => vec![PathBuf::from(OsStr::from_bytes(&p))],
            Sources::Matches(m) if m.is_empty() && !c.allow_empty_wildcard => {
                let path = format!("/{}", String::from_utf8_lossy(&clean_rel(path.as_bytes())));
                return Err(FileOpError::SourceNotFound {
                    path,
                    in_context: copier.in_context,
                });
            }
            Sources::Matches(m) => m,
        };
        let located = items
            .into_iter()
            .map(|item| copier.locate(item))
            .collect::<Result<Vec<_>, _>>()?;
        groups.push((raw, include, located));
    }
    let count: usize = groups.iter().map(|(_, _, items)| items.len()).sum();
    if count > 1 && !dest.dir_syntax {
        let rel = target
            .resolve(&dest.path, true)
            .map_err(io_error("stat", &c.dest))?;
        let st = target.lstat(&rel).map_err(io_error("stat", &c.dest))?;
        if !st.is_some_and(|st| is_dir(&st)) {
            return Err(FileOpError::DestNotDirectory {
                dest: c.dest.clone(),
                count,
            });
        }
    }

    for (raw, include, items) in &groups {
        copier.include = include.as_ref();
        copier.copied = 0;
        for located in items {
            copier.item(located, &dest)?;
        }
        // --parents filters what a source copies instead of naming it: a filter that lets nothing through is
        // a missing source, as a wildcard with no match is.
        if include.is_some() && copier.copied == 0 && !c.allow_empty_wildcard {
            let path = format!("/{}", String::from_utf8_lossy(&clean_rel(raw.as_bytes())));
            return Err(FileOpError::SourceNotFound {
                path,
                in_context: copier.in_context,
            });
        }
    }
    Ok(())
}

/// The destination of a copy: cleaned, plus whether it was written as a directory (`dir/`, `dir/.`).
struct Dest {
    path: Vec<u8>,
    dir_syntax: bool,
}

impl Dest {
    fn new(raw: &str) -> Dest {
        let dir_syntax = raw.is_empty() || raw == "." || raw.ends_with('/') || raw.ends_with("/.");
        Dest {
            path: clean_rel(raw.as_bytes()),
            dir_syntax,
        }
    }

    /// fsutil's `ensureDstPath`: the destination itself when it names a directory, else its parent.
    fn ensure(&self) -> &[u8] {
        match self.dir_syntax {
            true => &self.path,
            false => self
                .path
                .iter()
                .rposition(|&b| b == b'/')
                .map_or(&[][..], |at| &self.path[..at]),
        }
    }
}

/// `COPY --parents a/./b/*.go`: the source becomes the pivot before `/./` (the root without one), and the
/// rest a pattern selecting what to copy below it, so the matched paths keep their directories.
fn parents_split(raw: &str) -> Result<(String, Option<Include>), FileOpError> {
    let (pivot, pattern) = match raw.split_once("/./") {
        Some((pivot, pattern)) => (pivot.to_string(), pattern),
        None => ("/".to_string(), raw),
    };
    let pattern = String::from_utf8_lossy(&clean_rel(pattern.as_bytes())).into_owned();
    Ok((pivot, Include::new(pattern)?))
}

/// The `--parents` filter: a path is copied when it or a parent matches the pattern (moby's patternmatcher,
/// as BuildKit's include patterns).
struct Include {
    matcher: PatternMatcher,
    /// Matchers of the pattern's first 1, 2, ... segments, when the pattern has a fixed depth: a directory
    /// that no prefix matches cannot contain a match and is not walked.
    prefixes: Option<Vec<PatternMatcher>>,
}

impl Include {
    fn new(pattern: String) -> Result<Option<Include>, FileOpError> {
        // Copying the pivot itself needs no filter (and moby's matcher drops an empty pattern).
        if pattern.is_empty() {
            return Ok(None);
        }
        let matcher =
            PatternMatcher::new(std::slice::from_ref(&pattern)).map_err(FileOpError::InvalidPattern)?;
        // `*` and `?` never match `/` in moby's rewrite; classes, escapes and `**` can, so those patterns are
        // walked in full.
        let fixed_depth = !pattern.contains("**") && !pattern.contains('[') && !pattern.contains('\\');
        let prefixes = fixed_depth.then(|| {
            let segments: Vec<&str> = pattern.split('/').collect();
            (1..=segments.len())
                .filter_map(|n| PatternMatcher::new(&[segments[..n].join("/")]).ok())
                .collect::<Vec<_>>()
        });
        let prefixes = prefixes.filter(|p| p.len() == pattern.split('/').count());
        Ok(Some(Include { matcher, prefixes }))
    }

    fn includes(&self, rel: &str) -> bool {
        self.matcher.is_excluded(rel)
    }

    /// Whether something below the (not included) directory `rel` may be included.
    fn may_include_below(&self, rel: &str) -> bool {
        let Some(prefixes) = &self.prefixes else {
            return true;
        };
        let depth = rel.split('/').count();
        prefixes
            .get(depth - 1)
            .is_some_and(|m| depth < prefixes.len() && m.is_excluded(rel))
    }
}

enum Verdict {
    Copy,
    /// A directory that is not copied itself, but may have something below it that is: it is created only
    /// when that happens.
    Traverse,
    Skip,
}

/// Ownership, permission bits and (atime, mtime) of a copied entry.
#[derive(Clone, Copy)]
struct Meta {
    owner: Owner,
    mode: u32,
    atime: (i64, i64),
    mtime: (i64, i64),
}

impl Meta {
    fn timestamps(&self) -> Timestamps {
        Timestamps {
            last_access: seconds(self.atime.0, self.atime.1),
            last_modification: seconds(self.mtime.0, self.mtime.1),
        }
    }
}

struct FileJob {
    src: Rel,
    dst: Rel,
    meta: Meta,
}

struct DirJob {
    src: Rel,
    dst: Rel,
    meta: Meta,
}

/// A source found in its input: the path it was named or matched by, where that led, and what is there.
struct Located {
    item: Rel,
    src: Rel,
    st: Stat,
    /// A directory `.dockerignore` excludes, present only for the exceptions below it.
    hidden_dir: bool,
}

/// A directory being walked, and whether it is in the target yet (deferred ones are not, until needed).
struct Ancestor {
    src: Rel,
    dst: Rel,
    st: Stat,
    in_target: bool,
}

struct Copier<'a> {
    source: &'a Root,
    target: &'a Root,
    follow_symlinks: bool,
    contents_only: bool,
    auto_extract: bool,
    ignore: Option<&'a PatternMatcher>,
    in_context: bool,
    exclude: Option<&'a PatternMatcher>,
    include: Option<&'a Include>,
    owner: Option<Owner>,
    chmod: Option<&'a Chmod>,
    timestamp: Option<i64>,
    /// Regular files with several links already copied, by (device, inode): later names become hardlinks.
    inodes: HashMap<(u64, u64), Rel>,
    ancestors: Vec<Ancestor>,
    files: Vec<FileJob>,
    hardlinks: Vec<(Rel, Rel)>,
    dirs: Vec<DirJob>,
    /// Entries copied for the current source, to tell whether a `--parents` filter selected anything.
    copied: usize,
}

impl Copier<'_> {
    /// Finds one source (a path relative to the input root, as given or as a wildcard matched it).
    fn locate(&self, item: Rel) -> Result<Located, FileOpError> {
        let shown_src = shown(&item);
        let not_found = || FileOpError::SourceNotFound {
            path: shown_src.clone(),
            in_context: self.in_context,
        };
        let src = self
            .source
            .resolve(item.as_os_str().as_bytes(), self.follow_symlinks)
            .map_err(io_error("resolve", &shown_src))?;
        let Some(st) = self.source.lstat(&src).map_err(io_error("stat", &shown_src))? else {
            return Err(not_found());
        };
        // A source hidden by .dockerignore is not in the context at all, neither under its own name nor under
        // the name a symlink led to; a directory with exceptions below it is there only as their parent.
        let mut hidden_dir = false;
        if let Some(ignore) = self.ignore {
            for key in [item.as_path(), src.as_path()] {
                let key = key.to_string_lossy();
                if ignore.is_excluded(&key) {
                    if !is_dir(&st) || ignore.can_skip_dir(&key) {
                        return Err(not_found());
                    }
                    hidden_dir = true;
                }
            }
        }
        Ok(Located {
            item,
            src,
            st,
            hidden_dir,
        })
    }

    /// Copies one located source.
    fn item(&mut self, located: &Located, dest: &Dest) -> Result<(), FileOpError> {
        let Located {
            item,
            src,
            st,
            hidden_dir,
        } = located;
        let (st, hidden_dir) = (*st, *hidden_dir);
        let src_is_dir = is_dir(&st);
        let shown_src = shown(item);
        if self.auto_extract
            && FileType::from_raw_mode(st.st_mode) == FileType::RegularFile
            && archive::extract_if_archive(
                self.source,
                src,
                self.target,
                &dest.path,
                self.owner,
                self.timestamp,
                &shown_src,
            )?
        {
            return Ok(());
        }

        // fsutil's prepareTargetDir.
        let dest_shown = format!("/{}", String::from_utf8_lossy(&dest.path));
        let fail = |op| io_error(op, dest_shown.clone());
        let ensure = self
            .target
            .resolve(dest.ensure(), true)
            .map_err(fail("resolve"))?;
        self.target
            .mkdir_all(&ensure, 0o755, self.owner, self.timestamp)
            .map_err(fail("mkdir"))?;
        let mut dst = self.target.resolve(&dest.path, true).map_err(fail("resolve"))?;
        let dst_st = self.target.lstat(&dst).map_err(fail("stat"))?;
        let dst_is_dir = dst_st.as_ref().is_some_and(is_dir);
        let into = (!self.contents_only && src_is_dir && dst_st.is_some()) || (!src_is_dir && dst_is_dir);
        if into && let Some(name) = item.file_name() {
            dst.push(name);
        }
        let parent = match self.contents_only && src_is_dir && dst_st.is_none() {
            true => dst.clone(),
            false => dst.parent().map(Path::to_path_buf).unwrap_or_default(),
        };
        self.target
            .mkdir_all(&parent, 0o755, self.owner, self.timestamp)
            .map_err(io_error("mkdir", shown(&parent)))?;

        self.ancestors.clear();
        match src_is_dir {
            true => self.dir(src, &st, Path::new(""), &dst, true, hidden_dir)?,
            false => self.leaf(src, &st, &dst)?,
        }
        self.flush()
    }

    fn verdict(&self, in_root: &Path, rel: &Path, is_dir: bool) -> Verdict {
        let mut traverse = false;
        if let Some(ignore) = self.ignore {
            let key = in_root.to_string_lossy();
            if ignore.is_excluded(&key) {
                if !is_dir || ignore.can_skip_dir(&key) {
                    return Verdict::Skip;
                }
                traverse = true;
            }
        }
        let key = rel.to_string_lossy();
        if let Some(exclude) = self.exclude
            && exclude.is_excluded(&key)
        {
            if !is_dir || exclude.can_skip_dir(&key) {
                return Verdict::Skip;
            }
            traverse = true;
        }
        if let Some(include) = self.include
            && !include.includes(&key)
        {
            if !is_dir || !include.may_include_below(&key) {
                return Verdict::Skip;
            }
            traverse = true;
        }
        match traverse {
            true => Verdict::Traverse,
            false => Verdict::Copy,
        }
    }

    /// Walks the directory `src` into `dst`. `rel` is the path below the copied source (what exclude and
    /// include patterns see); `deferred` directories are created only once something below them is copied.
    fn dir(
        &mut self,
        src: &Path,
        st: &Stat,
        rel: &Path,
        dst: &Path,
        top: bool,
        deferred: bool,
    ) -> Result<(), FileOpError> {
        if !deferred {
            self.create_ancestors()?;
            let made = make_dir(self.target, dst)?;
            // fsutil: the source's metadata goes onto a directory it created, and onto existing ones below the
            // top — except under include patterns, where only created directories get it.
            if made || (!top && self.include.is_none()) {
                self.dirs.push(DirJob {
                    src: src.to_path_buf(),
                    dst: dst.to_path_buf(),
                    meta: self.meta(st, true),
                });
            }
            if !top {
                self.copied += 1;
            }
        }
        self.ancestors.push(Ancestor {
            src: src.to_path_buf(),
            dst: dst.to_path_buf(),
            st: *st,
            in_target: !deferred,
        });

        let walk_err = io_error("read", shown(src));
        let fd = self.source.open_dir(src).map_err(walk_err)?;
        for name in dir_names(fd.as_fd()).map_err(io_error("read", shown(src)))? {
            let child_src = src.join(&name);
            let child_st = statat(&fd, &name, AtFlags::SYMLINK_NOFOLLOW)
                .map_err(|e| io_error("stat", shown(&child_src))(e.into()))?;
            let (child_rel, child_dst) = (rel.join(&name), dst.join(&name));
            let child_is_dir = is_dir(&child_st);
            match self.verdict(&child_src, &child_rel, child_is_dir) {
                Verdict::Skip => {}
                Verdict::Traverse => self.dir(&child_src, &child_st, &child_rel, &child_dst, false, true)?,
                Verdict::Copy if child_is_dir => {
                    self.dir(&child_src, &child_st, &child_rel, &child_dst, false, false)?
                }
                Verdict::Copy => {
                    self.create_ancestors()?;
                    self.leaf(&child_src, &child_st, &child_dst)?;
                }
            }
        }
        self.ancestors.pop();
        Ok(())
    }

    /// Creates the deferred directories above an entry about to be copied (fsutil's createParentDirs).
    fn create_ancestors(&mut self) -> Result<(), FileOpError> {
        for i in 0..self.ancestors.len() {
            if self.ancestors[i].in_target {
                continue;
            }
            let (src, dst, st) = (
                self.ancestors[i].src.clone(),
                self.ancestors[i].dst.clone(),
                self.ancestors[i].st,
            );
            if make_dir(self.target, &dst)? {
                self.dirs.push(DirJob {
                    src,
                    dst,
                    meta: self.meta(&st, true),
                });
            }
            self.ancestors[i].in_target = true;
        }
        Ok(())
    }

    /// Anything but a directory.
    fn leaf(&mut self, src: &Path, st: &Stat, dst: &Path) -> Result<(), FileOpError> {
        self.copied += 1;
        let meta = self.meta(st, false);
        let file_type = FileType::from_raw_mode(st.st_mode);
        if file_type == FileType::RegularFile {
            if st.st_nlink > 1 {
                let key = (to_u64(st.st_dev), to_u64(st.st_ino));
                if let Some(first) = self.inodes.get(&key) {
                    self.hardlinks.push((first.clone(), dst.to_path_buf()));
                    return Ok(());
                }
                self.inodes.insert(key, dst.to_path_buf());
            }
            self.files.push(FileJob {
                src: src.to_path_buf(),
                dst: dst.to_path_buf(),
                meta,
            });
            return Ok(());
        }
        let fail = io_error("copy", shown(dst));
        let (parent, name) = self.target.parent(dst).map_err(io_error("copy", shown(dst)))?;
        match file_type {
            FileType::Symlink => {
                let link = self
                    .source
                    .open(src, OFlags::PATH | OFlags::NOFOLLOW | OFlags::CLOEXEC, 0)
                    .and_then(|fd| Ok(rustix::fs::readlinkat(&fd, c"", Vec::new())?))
                    .map_err(io_error("readlink", shown(src)))?;
                replace(self.target, dst, || {
                    Ok(rustix::fs::symlinkat(link.as_c_str(), &parent, &name)?)
                })?;
                set_meta_at(
                    parent.as_fd(),
                    &name,
                    Some(meta.owner),
                    None,
                    Some((meta.atime.0, meta.mtime.0)),
                )
                .map_err(fail)?;
            }
            FileType::CharacterDevice | FileType::BlockDevice | FileType::Fifo | FileType::Socket => {
                let rdev = to_u64(st.st_rdev);
                let mknod = || {
                    Ok(rustix::fs::mknodat(
                        &parent,
                        &name,
                        file_type,
                        Mode::from_raw_mode(0o600),
                        rdev,
                    )?)
                };
                replace(self.target, dst, mknod)?;
                let times = Some((meta.atime.0, meta.mtime.0));
                set_meta_at(parent.as_fd(), &name, Some(meta.owner), Some(meta.mode), times).map_err(fail)?;
            }
            other => {
                let unsupported = io::Error::new(
                    io::ErrorKind::Unsupported,
                    format!("unsupported file type {other:?}"),
                );
                return Err(io_error("copy", shown(src))(unsupported));
            }
        }
        Ok(())
    }

    fn meta(&self, st: &Stat, is_dir: bool) -> Meta {
        // A build context arrives owned by root (BuildKit's client resets ids when it sends it); other trees
        // keep their owners. --chown beats both.
        let owner = self.owner.unwrap_or(match self.in_context {
            true => (0, 0),
            false => (st.st_uid, st.st_gid),
        });
        let perm = st.st_mode & 0o7777;
        let mode = self.chmod.map_or(perm, |c| c.apply(perm, is_dir));
        let clamp = |sec: i64, nsec: i64| match self.timestamp {
            Some(t) if sec > t => (t, 0),
            _ => (sec, nsec),
        };
        Meta {
            owner,
            mode,
            atime: clamp(to_i64(st.st_atime), to_i64(st.st_atime_nsec)),
            mtime: clamp(to_i64(st.st_mtime), to_i64(st.st_mtime_nsec)),
        }
    }

    /// Copies the queued file contents in parallel, then makes the hardlinks to them, then sets directory
    /// metadata from the deepest directory up.
    fn flush(&mut self) -> Result<(), FileOpError> {
        let (source, target) = (self.source, self.target);
        std::mem::take(&mut self.files)
            .par_iter()
            .try_for_each(|job| copy_file(source, target, job))?;
        for (first, dst) in std::mem::take(&mut self.hardlinks) {
            let fail = io_error("link", shown(&dst));
            let (from_dir, from_name) = target.parent(&first).map_err(io_error("link", shown(&dst)))?;
            let (to_dir, to_name) = target.parent(&dst).map_err(fail)?;
            replace(target, &dst, || {
                Ok(rustix::fs::linkat(
                    &from_dir,
                    &from_name,
                    &to_dir,
                    &to_name,
                    AtFlags::empty(),
                )?)
            })?;
        }
        for job in std::mem::take(&mut self.dirs).iter().rev() {
            let fail = io_error("chmod", shown(&job.dst));
            let dir = target
                .open_dir(&job.dst)
                .map_err(io_error("chmod", shown(&job.dst)))?;
            let src = source
                .open_dir(&job.src)
                .map_err(io_error("read", shown(&job.src)))?;
            set_meta_fd(src.as_fd(), dir.as_fd(), &job.meta).map_err(fail)?;
        }
        Ok(())
    }
}

fn copy_file(source: &Root, target: &Root, job: &FileJob) -> Result<(), FileOpError> {
    let src = source
        .open(&job.src, OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::CLOEXEC, 0)
        .map_err(io_error("open", shown(&job.src)))?;
    let flags = OFlags::WRONLY | OFlags::CREATE | OFlags::EXCL | OFlags::NOFOLLOW | OFlags::CLOEXEC;
    let dst = replace(target, &job.dst, || target.open(&job.dst, flags, 0o600))?;
    let fail = io_error("copy", shown(&job.dst));
    let (mut from, mut to) = (File::from(src), File::from(dst));
    // std uses copy_file_range (reflinks where the filesystem can), falling back to sendfile/read-write.
    io::copy(&mut from, &mut to).map_err(io_error("copy", shown(&job.dst)))?;
    set_meta_fd(from.as_fd(), to.as_fd(), &job.meta).map_err(fail)
}

/// Owner, extended attributes, mode, times — in that order: chown clears set-id bits and capabilities.
fn set_meta_fd(src: BorrowedFd<'_>, dst: BorrowedFd<'_>, meta: &Meta) -> io::Result<()> {
    let (uid, gid) = meta.owner;
    rustix::fs::fchown(dst, Some(Uid::from_raw(uid)), Some(Gid::from_raw(gid)))?;
    copy_xattrs(src, dst);
    rustix::fs::fchmod(dst, Mode::from_raw_mode(meta.mode))?;
    rustix::fs::futimens(dst, &meta.timestamps())?;
    Ok(())
}

/// Extended attributes are copied on a best-effort basis, as BuildKit does (it logs and goes on): a context
/// on a filesystem with SELinux labels must still copy into an overlay that refuses them. Overlayfs's own
/// attributes would change how the layer stacks, so they are never copied.
fn copy_xattrs(src: BorrowedFd<'_>, dst: BorrowedFd<'_>) {
    let Ok(size) = rustix::fs::flistxattr_query(src) else {
        return;
    };
    if size == 0 {
        return;
    }
    let mut names = vec![0u8; size];
    let Ok(len) = rustix::fs::flistxattr(src, &mut names[..]) else {
        return;
    };
    for name in names[..len.min(size)]
        .split(|&b| b == 0)
        .filter(|n| !n.is_empty())
    {
        if name.starts_with(b"trusted.overlay.") {
            continue;
        }
        let name = OsStr::from_bytes(name);
        let value = rustix::fs::fgetxattr_query(src, name).and_then(|len| {
            let mut value = vec![0u8; len];
            let got = rustix::fs::fgetxattr(src, name, &mut value[..])?;
            value.truncate(got);
            Ok(value)
        });
        let result = value.and_then(|value| rustix::fs::fsetxattr(dst, name, &value, XattrFlags::empty()));
        if let Err(e) = result {
            tracing::debug!(xattr = %name.to_string_lossy(), error = %e, "xattr not copied");
        }
    }
}

/// fsutil's copyDirectoryOnly: creates `dst` (true) or accepts an existing directory (false); anything else
/// there — a file, a symlink even to a directory — is an error.
fn make_dir(target: &Root, dst: &Path) -> Result<bool, FileOpError> {
    if dst.as_os_str().is_empty() {
        return Ok(false);
    }
    let fail = io_error("mkdir", shown(dst));
    let (parent, name) = target.parent(dst).map_err(io_error("mkdir", shown(dst)))?;
    match rustix::fs::mkdirat(&parent, &name, Mode::from_raw_mode(0o700)) {
        Ok(()) => Ok(true),
        Err(Errno::EXIST) => match statat(&parent, &name, AtFlags::SYMLINK_NOFOLLOW) {
            Ok(st) if is_dir(&st) => Ok(false),
            Ok(_) => Err(FileOpError::NotADirectory { path: shown(dst) }),
            Err(e) => Err(fail(e.into())),
        },
        Err(e) => Err(fail(e.into())),
    }
}

/// Creates a non-directory at `dst` with `create`; whatever non-directory is already there is replaced
/// (never written through), a directory is an error (fsutil's ensureEmptyFileTarget).
fn replace<T>(
    target: &Root,
    dst: &Path,
    mut create: impl FnMut() -> io::Result<T>,
) -> Result<T, FileOpError> {
    let fail = |e: io::Error| io_error("copy", shown(dst))(e);
    match create() {
        Ok(created) => return Ok(created),
        Err(e) if e.raw_os_error() == Some(Errno::EXIST.raw_os_error()) => {}
        Err(e) => return Err(fail(e)),
    }
    match target.lstat(dst).map_err(fail)? {
        Some(st) if is_dir(&st) => return Err(FileOpError::ReplaceDirectory { path: shown(dst) }),
        Some(_) => target.remove_all(dst).map_err(fail)?,
        None => {}
    }
    create().map_err(fail)
}

fn is_dir(st: &Stat) -> bool {
    FileType::from_raw_mode(st.st_mode) == FileType::Directory
}

/// `Stat` field types differ between architectures; these widen whatever they are.
fn to_i64<T: TryInto<i64>>(v: T) -> i64 {
    v.try_into().unwrap_or(i64::MAX)
}

fn to_u64<T: TryInto<u64>>(v: T) -> u64 {
    v.try_into().unwrap_or(u64::MAX)
}
