//! Content hashing of the build context (or of any directory tree) for cache keys.
//!
//! The context is hashed as a Merkle tree: a file's node covers its type, mode (permission and type
//! bits), uid, gid, size, symlink target, device number and content; a directory's node covers its own
//! mode/uid/gid and its children's sorted `(name, node)` pairs. Timestamps are never hashed, so a fresh
//! checkout hashes like the old one, and a hardlink hashes like any file with the same content. The exact
//! byte encoding is in `encode.rs` and pinned by a golden test.
//!
//! # What is visible
//! The tree is the context as BuildKit's context transfer would deliver it: `.dockerignore`d paths do not
//! exist (they contribute nothing and cannot be selected; an ignored directory that an exception reaches
//! into exists only if something below it survives), and nothing outside the context root is ever
//! read. Symlinks inside the tree are hashed as links. A symlink named as a COPY source is followed as if
//! the context root were `/`.
//!
//! # Selections
//! [`ContextHasher::hash_selection`] hashes exactly what a COPY with those sources reads, mirroring
//! fsutil's copy: each source is cleaned as `filepath.Join("/", src)`, split before its first segment
//! with a wildcard; the literal part is resolved inside the root (intermediate symlinks always followed,
//! the last one only with `follow_symlinks`), the wildcard part matched one segment at a time with Go's
//! `filepath.Match` against real directories (a malformed wildcard matches nothing, as in fsutil). Each
//! match is then resolved like a literal source and hashed with its subtree. `exclude` (COPY
//! `--exclude`) patterns are matched, as fsutil's copier does, against paths *relative to each matched
//! source*, and never remove the matched source itself. A directory that `--exclude` matches but an
//! exception might reach into is kept, even if nothing below it survives: that may hash more than the
//! copy reads, never less.
//!
//! # The stat index
//! Regular files' content hashes are remembered by path with their `(dev, ino, size, mtime, ctime, mode,
//! uid, gid)`; a file whose stat is unchanged is not read again, in this process or, through
//! [`ContextHasher::save_index`], in the next one. What this can and cannot see:
//! - Detected: any write through the file system (it moves mtime and ctime, or the size), including one
//!   followed by a `touch -d`/`utime` that restores the old mtime (ctime still moves, and cannot be set
//!   from user space); a file replaced by rename (new inode); chmod/chown.
//! - Racy-clean rule (git's): timestamps are coarse (a clock tick, or 2 s on FAT), so a file changed
//!   twice within one granule keeps its stat. The index therefore records a reference time, the moment
//!   its scan began less [`RACY_MARGIN`]; a file whose mtime or ctime is at or after it is not trusted
//!   and is read again next time. A file written just before a build is thus read twice, once more
//!   than needed, and never missed.
//! - Not detected: a change that keeps every field of the stat key, which needs the system clock to be
//!   set back (ctime follows the clock), a file system that does not maintain ctime, or a network file
//!   system whose server clock lags the client's by more than the margin. `--no-cache` is the way out.
//! - Not hashed: xattrs, file flags, ACLs.

mod encode;
mod fsops;
pub(crate) mod glob;
mod index;

use std::collections::{HashMap, HashSet, VecDeque};
use std::ffi::OsStr;
use std::fs::File;
use std::io::{self, Read};
use std::os::fd::AsFd;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use kiln_frontend::dockerignore::{IgnoreError, PatternMatcher};
use rayon::prelude::*;
use rustix::fs::{FileType, OFlags};
use rustix::io::Errno;

use fsops::{Kind, Meta, Root, Ts};
use index::{Entry, StatKey};

/// How far before a scan's start a timestamp still counts as racy. File timestamps come from a coarse
/// clock (one tick, at most 10 ms on Linux local file systems) and FAT keeps mtimes to 2 s, so 2 s covers
/// every granule a context is likely to sit on.
pub const RACY_MARGIN: Duration = Duration::from_secs(2);

/// Linux gives up after 40; containerd's root-scoped resolver, which BuildKit uses, after 255.
const MAX_SYMLINKS: usize = 255;

/// Files at least this big are hashed with blake3's multi-threaded mode, so one large file does not
/// leave the other cores idle.
const LARGE_FILE: u64 = 8 << 20;

#[derive(Debug, thiserror::Error)]
pub enum ContextError {
    #[error("{op} {}: {source}", path.display())]
    Io {
        op: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("context directory {} is not a directory", path.display())]
    NotADirectory { path: PathBuf },
    #[error("{} changed while the context was being hashed", path.display())]
    Changed { path: PathBuf },
    #[error("{}: too many levels of symbolic links", path.display())]
    SymlinkLoop { path: PathBuf },
    #[error("invalid --exclude pattern: {0}")]
    BadExclude(#[source] IgnoreError),
}

/// What became of the persisted index at [`ContextHasher::open`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum IndexState {
    /// No index directory was given.
    Disabled,
    /// No index for this context yet.
    Missing,
    /// Loaded; `entries` are those trusted (racily clean ones are dropped on load).
    Loaded { entries: usize },
    /// Present but not trusted at all (corrupt, truncated, another version or context, unreadable).
    Ignored { reason: String },
}

/// Counters since [`ContextHasher::open`], for tests and progress output.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct HashStats {
    /// Regular files whose content was read.
    pub files_read: u64,
    pub bytes_read: u64,
    /// Regular files whose content hash came from the stat index.
    pub index_hits: u64,
}

/// Hashes one context directory under its `.dockerignore` rules.
///
/// The hashing calls run on rayon's global pool and block; call them from a blocking context.
pub struct ContextHasher {
    root_path: PathBuf,
    root: Root,
    matcher: PatternMatcher,
    index_file: Option<PathBuf>,
    index_state: IndexState,
    loaded: HashMap<Vec<u8>, Entry>,
    /// Racy-clean reference for everything recorded by this hasher: its opening time less the margin.
    reference: Ts,
    session: Mutex<Session>,
    files_read: AtomicU64,
    bytes_read: AtomicU64,
    index_hits: AtomicU64,
}

#[derive(Default)]
struct Session {
    /// Trusted content hashes seen by this hasher (read, or confirmed from the loaded index).
    fresh: HashMap<Vec<u8>, Entry>,
    /// Roots of complete walks: loaded entries below them that were not seen again are gone.
    walked: HashSet<Vec<u8>>,
}

/// A path resolved inside the root.
struct Resolved {
    rel: Vec<u8>,
    meta: Meta,
    link: Option<Vec<u8>>,
    /// Excluded by `.dockerignore` but possibly re-included below: visible only if non-empty.
    ignored_dir: bool,
}

struct Child {
    name: Vec<u8>,
    rel: Vec<u8>,
    /// The path relative to the matched COPY source, only when `--exclude` patterns apply.
    sub: Option<Vec<u8>>,
    meta: Meta,
    link: Option<Vec<u8>>,
    ignored_dir: bool,
}

#[derive(PartialEq, Eq)]
enum Visibility {
    Visible,
    /// An excluded directory that an exception pattern may reach into.
    Tentative,
    Hidden,
}

fn visibility(matcher: &PatternMatcher, rel: &[u8], is_dir: bool) -> Visibility {
    let path = String::from_utf8_lossy(rel);
    if !matcher.is_excluded(&path) {
        Visibility::Visible
    } else if is_dir && !matcher.can_skip_dir(&path) {
        Visibility::Tentative
    } else {
        Visibility::Hidden
    }
}

fn join(dir: &[u8], name: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(dir.len() + 1 + name.len());
    out.extend_from_slice(dir);
    if !dir.is_empty() {
        out.push(b'/');
    }
    out.extend_from_slice(name);
    out
}

impl ContextHasher {
    /// Opens the context at `context_dir` (a symlink to it is resolved once, here) and, when `index_dir`
    /// is given, loads `<index_dir>/<blake3 of the canonical context path>.idx`.
    pub fn open(
        context_dir: &Path,
        matcher: PatternMatcher,
        index_dir: Option<&Path>,
    ) -> Result<ContextHasher, ContextError> {
        let root_path = std::fs::canonicalize(context_dir).map_err(|source| ContextError::Io {
            op: "resolving context directory",
            path: context_dir.to_path_buf(),
            source,
        })?;
        let flags = OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC;
        let fd = rustix::fs::open(&root_path, flags, rustix::fs::Mode::empty()).map_err(|e| match e {
            Errno::NOTDIR => ContextError::NotADirectory {
                path: root_path.clone(),
            },
            e => ContextError::Io {
                op: "opening context directory",
                path: root_path.clone(),
                source: e.into(),
            },
        })?;
        let reference = Ts::now_minus(RACY_MARGIN);
        let root_bytes = root_path.as_os_str().as_bytes();
        let (index_file, index_state, loaded) = match index_dir {
            None => (None, IndexState::Disabled, HashMap::new()),
            Some(dir) => {
                let file = dir.join(format!("{}.idx", blake3::hash(root_bytes).to_hex()));
                let (state, loaded) = match std::fs::read(&file) {
                    Err(e) if e.kind() == io::ErrorKind::NotFound => (IndexState::Missing, HashMap::new()),
                    Err(e) => (
                        IndexState::Ignored {
                            reason: e.to_string(),
                        },
                        HashMap::new(),
                    ),
                    Ok(bytes) => match index::decode(&bytes, root_bytes) {
                        Ok(entries) => (
                            IndexState::Loaded {
                                entries: entries.len(),
                            },
                            entries,
                        ),
                        Err(reason) => (IndexState::Ignored { reason }, HashMap::new()),
                    },
                };
                (Some(file), state, loaded)
            }
        };
        Ok(ContextHasher {
            root_path,
            root: Root::new(fd),
            matcher,
            index_file,
            index_state,
            loaded,
            reference,
            session: Mutex::new(Session::default()),
            files_read: AtomicU64::new(0),
            bytes_read: AtomicU64::new(0),
            index_hits: AtomicU64::new(0),
        })
    }

    /// The canonical context directory.
    pub fn root(&self) -> &Path {
        &self.root_path
    }

    pub fn index_file(&self) -> Option<&Path> {
        self.index_file.as_deref()
    }

    pub fn index_state(&self) -> &IndexState {
        &self.index_state
    }

    pub fn stats(&self) -> HashStats {
        HashStats {
            files_read: self.files_read.load(Ordering::Relaxed),
            bytes_read: self.bytes_read.load(Ordering::Relaxed),
            index_hits: self.index_hits.load(Ordering::Relaxed),
        }
    }

    /// The hash of the whole (dockerignore-filtered) context, root directory node included: for uses
    /// that see all of it, such as `RUN --mount=type=bind` of the context.
    pub fn hash_all(&self) -> Result<blake3::Hash, ContextError> {
        let meta = fsops::stat_fd(self.root.fd()).map_err(|e| self.io("stat", b"", e))?;
        let root = Resolved {
            rel: Vec::new(),
            meta,
            link: None,
            ignored_dir: false,
        };
        self.subtree(&root, None)?.ok_or_else(|| ContextError::Changed {
            path: self.root_path.clone(),
        })
    }

    /// The hash of exactly what a COPY of `patterns` (context-relative sources, wildcards allowed) reads;
    /// see the module documentation for the rules. A pattern that matches nothing hashes as "no match".
    pub fn hash_selection(
        &self,
        patterns: &[String],
        follow_symlinks: bool,
        exclude: &[String],
    ) -> Result<blake3::Hash, ContextError> {
        let exclude_matcher = match exclude.is_empty() {
            true => None,
            false => Some(PatternMatcher::new(exclude).map_err(ContextError::BadExclude)?),
        };
        let mut enc = encode::selection(follow_symlinks, exclude);
        enc.u64(patterns.len() as u64);
        for pattern in patterns {
            enc.bytes(pattern.as_bytes());
            let matches = self.select(pattern, follow_symlinks, exclude_matcher.as_ref())?;
            if matches.is_empty() {
                enc.u8(0);
                continue;
            }
            enc.u8(1);
            enc.u64(matches.len() as u64);
            for (path, hash) in &matches {
                enc.bytes(path);
                enc.raw(hash);
            }
        }
        Ok(enc.finish())
    }

    /// Persists the stat index (no-op without an index directory). Keeps what this hasher saw plus the
    /// loaded entries outside the subtrees it walked completely.
    pub fn save_index(&self) -> Result<(), ContextError> {
        let Some(path) = &self.index_file else {
            return Ok(());
        };
        let session = self.session();
        let mut entries: Vec<(&Vec<u8>, &Entry)> = session.fresh.iter().collect();
        for (rel, entry) in &self.loaded {
            if !session.fresh.contains_key(rel) && !under_walked(rel, &session.walked) {
                entries.push((rel, entry));
            }
        }
        entries.sort_unstable_by(|a, b| a.0.cmp(b.0));
        let bytes = index::encode(self.root_path.as_os_str().as_bytes(), self.reference, &entries);
        index::write_atomically(path, &bytes).map_err(|source| ContextError::Io {
            op: "writing context index",
            path: path.clone(),
            source,
        })
    }

    fn session(&self) -> MutexGuard<'_, Session> {
        // The session only caches hashes; a panic elsewhere cannot leave it inconsistent.
        self.session.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn abs(&self, rel: &[u8]) -> PathBuf {
        self.root_path.join(OsStr::from_bytes(rel))
    }

    fn io(&self, op: &'static str, rel: &[u8], e: Errno) -> ContextError {
        ContextError::Io {
            op,
            path: self.abs(rel),
            source: e.into(),
        }
    }

    /// Turns an open/stat failure on a path we just listed into an error; `Ok(())` means it vanished.
    fn vanished_or(&self, op: &'static str, rel: &[u8], e: Errno) -> Result<(), ContextError> {
        match e {
            Errno::NOENT => Ok(()),
            // A component turned into a symlink or a non-directory since we looked.
            Errno::LOOP | Errno::NOTDIR | Errno::XDEV => Err(ContextError::Changed { path: self.abs(rel) }),
            e => Err(self.io(op, rel, e)),
        }
    }

    fn select(
        &self,
        pattern: &str,
        follow: bool,
        exclude: Option<&PatternMatcher>,
    ) -> Result<Vec<(Vec<u8>, blake3::Hash)>, ContextError> {
        let rel = glob::clean_rel(pattern.as_bytes());
        let (literal, wild) = glob::split_wildcards(&rel);
        let candidates = match wild.is_empty() {
            true => vec![literal],
            false => self.expand(&literal, &wild, follow)?,
        };
        let hashed: Vec<Option<(Vec<u8>, blake3::Hash)>> = candidates
            .into_par_iter()
            .map(|path| {
                let Some(resolved) = self.resolve(&path, follow)? else {
                    return Ok(None);
                };
                Ok(self.subtree(&resolved, exclude)?.map(|hash| (path, hash)))
            })
            .collect::<Result<_, ContextError>>()?;
        Ok(hashed.into_iter().flatten().collect())
    }

    /// fsutil's `ResolveWildcards`: the matches of `wild` below the resolved `literal`, sorted.
    fn expand(&self, literal: &[u8], wild: &[u8], follow: bool) -> Result<Vec<Vec<u8>>, ContextError> {
        let Some(base) = self.resolve(literal, follow)? else {
            return Ok(Vec::new());
        };
        if !base.meta.is_dir() {
            return Ok(Vec::new());
        }
        let segments: Vec<&[u8]> = wild.split(|b| *b == b'/').collect();
        let mut out = Vec::new();
        self.expand_level(&base.rel, &segments, &mut out)?;
        out.sort_unstable();
        Ok(out)
    }

    fn expand_level(
        &self,
        dir: &[u8],
        segments: &[&[u8]],
        out: &mut Vec<Vec<u8>>,
    ) -> Result<(), ContextError> {
        let Some((segment, rest)) = segments.split_first() else {
            return Ok(());
        };
        let Some(children) = self.list_dir(dir, None)? else {
            return Ok(());
        };
        for child in children {
            // fsutil ignores filepath.Match's error: a malformed pattern just matches nothing.
            if !glob::go_match(segment, &child.name).unwrap_or(false) {
                continue;
            }
            if rest.is_empty() {
                out.push(child.rel);
            } else if child.meta.is_dir() {
                // filepath.Walk does not descend through symlinks.
                self.expand_level(&child.rel, rest, out)?;
            }
        }
        Ok(())
    }

    /// containerd's `RootPath`: resolves `path` (clean, relative) inside the root as if the root were
    /// `/`, following every symlink on the way and the last one too when `follow_final`. `None` when it
    /// does not exist in the dockerignore-filtered tree.
    fn resolve(&self, path: &[u8], follow_final: bool) -> Result<Option<Resolved>, ContextError> {
        let components = |p: &[u8]| -> Vec<Vec<u8>> {
            p.split(|b| *b == b'/')
                .filter(|c| !c.is_empty())
                .map(<[u8]>::to_vec)
                .collect()
        };
        let mut todo: VecDeque<Vec<u8>> = components(path).into();
        let mut done: Vec<u8> = Vec::new();
        let mut found: Option<Resolved> = None;
        let mut links = 0;
        while let Some(component) = todo.pop_front() {
            match component.as_slice() {
                b"." => continue,
                b".." => {
                    done.truncate(done.iter().rposition(|b| *b == b'/').unwrap_or(0));
                    found = None;
                    continue;
                }
                _ => {}
            }
            let candidate = join(&done, &component);
            let (meta, link) = match self.root.lstat(&candidate) {
                Ok(stat) => stat,
                Err(Errno::NOENT | Errno::NOTDIR) => return Ok(None),
                Err(e) => return self.vanished_or("stat", &candidate, e).map(|()| None),
            };
            let ignored_dir = match visibility(&self.matcher, &candidate, meta.is_dir()) {
                Visibility::Hidden => return Ok(None),
                Visibility::Tentative => true,
                Visibility::Visible => false,
            };
            let last = todo.is_empty();
            if let Some(target) = link.as_ref().filter(|_| !last || follow_final) {
                links += 1;
                if links > MAX_SYMLINKS {
                    return Err(ContextError::SymlinkLoop { path: self.abs(path) });
                }
                // An absolute target restarts from the context root, never from the host's.
                if target.starts_with(b"/") {
                    done.clear();
                }
                for c in components(target).into_iter().rev() {
                    todo.push_front(c);
                }
                found = None;
                continue;
            }
            if !last && !meta.is_dir() {
                return Ok(None);
            }
            done = candidate;
            found = Some(Resolved {
                rel: done.clone(),
                meta,
                link,
                ignored_dir,
            });
        }
        match found {
            Some(resolved) => Ok(Some(resolved)),
            None => self.resolve_dir(done),
        }
    }

    /// The directory `rel`, reached through `..` after resolution: known to be a directory, re-checked.
    fn resolve_dir(&self, rel: Vec<u8>) -> Result<Option<Resolved>, ContextError> {
        let (meta, link) = match self.root.lstat(&rel) {
            Ok(stat) => stat,
            Err(Errno::NOENT | Errno::NOTDIR) => return Ok(None),
            Err(e) => return self.vanished_or("stat", &rel, e).map(|()| None),
        };
        let ignored_dir = match visibility(&self.matcher, &rel, meta.is_dir()) {
            Visibility::Hidden => return Ok(None),
            Visibility::Tentative => true,
            Visibility::Visible => false,
        };
        Ok(Some(Resolved {
            rel,
            meta,
            link,
            ignored_dir,
        }))
    }

    /// The node of a resolved path and everything below it; records complete walks for the index.
    fn subtree(
        &self,
        r: &Resolved,
        exclude: Option<&PatternMatcher>,
    ) -> Result<Option<blake3::Hash>, ContextError> {
        let sub = exclude.map(|_| Vec::new());
        let hash = self.node(
            &r.rel,
            sub.as_deref(),
            &r.meta,
            r.link.as_deref(),
            r.ignored_dir,
            exclude,
        )?;
        if exclude.is_none() && r.meta.is_dir() {
            self.session().walked.insert(r.rel.clone());
        }
        Ok(hash)
    }

    fn node(
        &self,
        rel: &[u8],
        sub: Option<&[u8]>,
        meta: &Meta,
        link: Option<&[u8]>,
        ignored_dir: bool,
        exclude: Option<&PatternMatcher>,
    ) -> Result<Option<blake3::Hash>, ContextError> {
        match meta.kind() {
            Kind::Dir => self.dir_node(rel, sub, meta, ignored_dir, exclude),
            Kind::File => {
                let content = self.file_content(rel, meta)?;
                Ok(content.map(|(meta, content)| encode::leaf(&meta, b"", Some(&content))))
            }
            Kind::Symlink => Ok(Some(encode::leaf(meta, link.unwrap_or_default(), None))),
            _ => Ok(Some(encode::leaf(meta, b"", None))),
        }
    }

    fn dir_node(
        &self,
        rel: &[u8],
        sub: Option<&[u8]>,
        meta: &Meta,
        ignored_dir: bool,
        exclude: Option<&PatternMatcher>,
    ) -> Result<Option<blake3::Hash>, ContextError> {
        let Some(children) = self.list_dir(rel, exclude.zip(sub))? else {
            return Ok(None);
        };
        let hashed: Vec<Option<(Vec<u8>, blake3::Hash)>> = children
            .into_par_iter()
            .map(|c| {
                let hash = self.node(
                    &c.rel,
                    c.sub.as_deref(),
                    &c.meta,
                    c.link.as_deref(),
                    c.ignored_dir,
                    exclude,
                )?;
                Ok(hash.map(|hash| (c.name, hash)))
            })
            .collect::<Result<_, ContextError>>()?;
        let entries: Vec<(Vec<u8>, blake3::Hash)> = hashed.into_iter().flatten().collect();
        if ignored_dir && entries.is_empty() {
            return Ok(None);
        }
        Ok(Some(encode::dir(meta, &entries)))
    }

    /// The visible entries of directory `rel`, sorted by name; `None` if it vanished. `exclude` carries
    /// the `--exclude` matcher and `rel`'s path relative to the matched source.
    fn list_dir(
        &self,
        rel: &[u8],
        exclude: Option<(&PatternMatcher, &[u8])>,
    ) -> Result<Option<Vec<Child>>, ContextError> {
        let fd = match self.root.open(rel, OFlags::RDONLY | OFlags::DIRECTORY) {
            Ok(fd) => fd,
            Err(e) => return self.vanished_or("opening directory", rel, e).map(|()| None),
        };
        let mut dir = rustix::fs::Dir::new(fd).map_err(|e| self.io("reading directory", rel, e))?;
        let mut children = Vec::new();
        while let Some(entry) = dir.next() {
            let entry = entry.map_err(|e| self.io("reading directory", rel, e))?;
            let name = entry.file_name().to_bytes();
            if name == b"." || name == b".." {
                continue;
            }
            let name = name.to_vec();
            // d_type lets us drop excluded non-directories without a stat; it may be unknown.
            let maybe_dir = matches!(entry.file_type(), FileType::Directory | FileType::Unknown);
            let child_rel = join(rel, &name);
            let ignored = visibility(&self.matcher, &child_rel, maybe_dir);
            if ignored == Visibility::Hidden {
                continue;
            }
            let sub = exclude.map(|(matcher, sub)| (matcher, join(sub, &name)));
            let excluded = match &sub {
                Some((matcher, sub)) => visibility(matcher, sub, maybe_dir),
                None => Visibility::Visible,
            };
            if excluded == Visibility::Hidden {
                continue;
            }
            let dir_fd = dir.fd().map_err(|e| self.io("reading directory", rel, e))?;
            let meta = match fsops::stat_at(dir_fd, &name) {
                Ok(meta) => meta,
                Err(Errno::NOENT) => continue,
                Err(e) => return Err(self.io("stat", &child_rel, e)),
            };
            // With the real type: only directories can be tentative.
            if !meta.is_dir() && (ignored != Visibility::Visible || excluded != Visibility::Visible) {
                continue;
            }
            let link = match meta.kind() {
                Kind::Symlink => match fsops::readlink_at(dir_fd, &name) {
                    Ok(target) => Some(target),
                    Err(Errno::NOENT) => continue,
                    Err(Errno::INVAL) => {
                        return Err(ContextError::Changed {
                            path: self.abs(&child_rel),
                        });
                    }
                    Err(e) => return Err(self.io("reading symlink", &child_rel, e)),
                },
                _ => None,
            };
            children.push(Child {
                name,
                rel: child_rel,
                sub: sub.map(|(_, sub)| sub),
                meta,
                link,
                ignored_dir: ignored == Visibility::Tentative,
            });
        }
        children.sort_unstable_by(|a, b| a.name.cmp(&b.name));
        Ok(Some(children))
    }

    /// A regular file's content hash, from the index when its stat is unchanged. Returns the stat the
    /// hash belongs to (it may be newer than `meta` if the file changed since it was listed), or `None`
    /// if the file vanished.
    fn file_content(&self, rel: &[u8], meta: &Meta) -> Result<Option<(Meta, blake3::Hash)>, ContextError> {
        let key = StatKey::of(meta);
        if let Some(content) = self.lookup(rel, &key) {
            self.index_hits.fetch_add(1, Ordering::Relaxed);
            self.remember(rel, key, content);
            return Ok(Some((*meta, content)));
        }
        // O_NONBLOCK: if a fifo was swapped in since the stat, the open must not hang.
        let flags = OFlags::RDONLY | OFlags::NONBLOCK | OFlags::NOCTTY;
        let fd = match self.root.open(rel, flags) {
            Ok(fd) => fd,
            Err(e) => return self.vanished_or("opening", rel, e).map(|()| None),
        };
        let before = fsops::stat_fd(fd.as_fd()).map_err(|e| self.io("stat", rel, e))?;
        if before.kind() != Kind::File {
            return Err(ContextError::Changed { path: self.abs(rel) });
        }
        let mut file = File::from(fd);
        let (content, read) = hash_reader(&mut file, before.size).map_err(|source| ContextError::Io {
            op: "reading",
            path: self.abs(rel),
            source,
        })?;
        let after = fsops::stat_fd(file.as_fd()).map_err(|e| self.io("stat", rel, e))?;
        self.files_read.fetch_add(1, Ordering::Relaxed);
        self.bytes_read.fetch_add(read, Ordering::Relaxed);
        // Written to while we read: the hash stands for this build but is not worth remembering.
        let before_key = StatKey::of(&before);
        if before_key == StatKey::of(&after) {
            self.remember(rel, before_key, content);
        }
        Ok(Some((before, content)))
    }

    fn lookup(&self, rel: &[u8], key: &StatKey) -> Option<blake3::Hash> {
        if let Some(entry) = self.session().fresh.get(rel)
            && entry.key == *key
        {
            return Some(entry.content);
        }
        self.loaded
            .get(rel)
            .filter(|entry| entry.key == *key)
            .map(|entry| entry.content)
    }

    fn remember(&self, rel: &[u8], key: StatKey, content: blake3::Hash) {
        if !key.is_racy(self.reference) {
            self.session().fresh.insert(rel.to_vec(), Entry { key, content });
        }
    }
}

/// True if one of `rel`'s ancestors (the root included) was walked completely.
fn under_walked(rel: &[u8], walked: &HashSet<Vec<u8>>) -> bool {
    if walked.contains(&b""[..]) {
        return true;
    }
    rel.iter()
        .enumerate()
        .any(|(i, b)| *b == b'/' && walked.contains(&rel[..i]))
}

fn hash_reader(file: &mut File, size: u64) -> io::Result<(blake3::Hash, u64)> {
    let large = size >= LARGE_FILE;
    // Sized to the file so small files cost one read plus the one that sees EOF.
    let capacity = if large {
        4 << 20
    } else {
        (size as usize).clamp(4096, 1 << 20)
    };
    let mut buf = vec![0u8; capacity];
    let mut hasher = blake3::Hasher::new();
    let mut total = 0u64;
    loop {
        let n = match file.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        if large {
            hasher.update_rayon(&buf[..n]);
        } else {
            hasher.update(&buf[..n]);
        }
        total += n as u64;
    }
    Ok((hasher.finalize(), total))
}

/// The hash of a whole directory tree with nothing ignored and no index: for trees that are not build
/// contexts, such as another stage's output.
pub fn hash_tree(dir: &Path) -> Result<blake3::Hash, ContextError> {
    let matcher = PatternMatcher::new(&[]).map_err(ContextError::BadExclude)?;
    ContextHasher::open(dir, matcher, None)?.hash_all()
}
