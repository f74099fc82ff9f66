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
//! [`ContextHasher::hash_copy`] hashes exactly what a COPY reads: the entries of the
//! [`kiln_fsutil::select`] selection that the copy itself writes (sources, wildcard matches, symlinks
//! followed or not, `.dockerignore`, `--exclude` and `--parents` filters), each match as the Merkle node
//! of what is selected below it. [`ContextHasher::hash_selection`] is the same for a plain list of
//! sources, where one that matches nothing hashes as "no match" instead of failing.
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

use std::collections::{HashMap, HashSet};
use std::ffi::OsStr;
use std::fs::File;
use std::io::{self, Read};
use std::os::fd::AsFd;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use kiln_fsutil::Root;
use kiln_fsutil::ignore::{IgnoreError, PatternMatcher};
use kiln_fsutil::select::{CopySpec, Entry, Item, SelectError, Selector, SourceSelection};
use kiln_fsutil::stat::{Kind, Meta, Ts, stat_fd};
use rayon::prelude::*;
use rustix::fs::OFlags;
use rustix::io::Errno;

use kiln_cache::context_index::{self as index, Entry as IndexEntry, StatKey};

/// How far before a scan's start a timestamp still counts as racy. File timestamps come from a coarse
/// clock (one tick, at most 10 ms on Linux local file systems) and FAT keeps mtimes to 2 s, so 2 s covers
/// every granule a context is likely to sit on.
pub const RACY_MARGIN: Duration = Duration::from_secs(2);

/// Files at least this big are hashed with blake3's multi-threaded mode, so one large file does not
/// leave the other cores idle.
const LARGE_FILE: u64 = 8 << 20;

#[derive(Debug, thiserror::Error)]
pub enum ContextError {
    #[error("{op} {}: {source}", path.display())]
    Io {
        op: &'static str,
        path: PathBuf,
        source: io::Error,
    },
    #[error("context directory {} is not a directory", path.display())]
    NotADirectory { path: PathBuf },
    #[error("{} changed while the context was being hashed", path.display())]
    Changed { path: PathBuf },
    #[error("{}: too many levels of symbolic links", path.display())]
    SymlinkLoop { path: PathBuf },
    #[error("invalid --exclude pattern: {0}")]
    BadExclude(IgnoreError),
    /// What the COPY names is not there (or cannot be read): the same error the copy would fail with.
    #[error(transparent)]
    Select(SelectError),
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
    loaded: HashMap<Vec<u8>, IndexEntry>,
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
    fresh: HashMap<Vec<u8>, IndexEntry>,
    /// Roots of complete walks: loaded entries below them that were not seen again are gone.
    walked: HashSet<Vec<u8>>,
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
        let root = Root::new(&root_path).map_err(|e| match e.raw_os_error() {
            Some(code) if code == Errno::NOTDIR.raw_os_error() => ContextError::NotADirectory {
                path: root_path.clone(),
            },
            _ => ContextError::Io {
                op: "opening context directory",
                path: root_path.clone(),
                source: e,
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
            root,
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

    fn select(&self, spec: &CopySpec<'_>) -> Result<Vec<SourceSelection>, ContextError> {
        Selector::new(&self.root, Some(&self.matcher))
            .select(spec)
            .map_err(|e| match e {
                SelectError::Io { path, source, .. }
                    if source.raw_os_error() == Some(Errno::LOOP.raw_os_error()) =>
                {
                    ContextError::SymlinkLoop {
                        path: self.abs(path.trim_start_matches('/').as_bytes()),
                    }
                }
                e => ContextError::Select(e),
            })
    }

    /// The hash of the whole (dockerignore-filtered) context, root directory node included: for uses
    /// that see all of it, such as `RUN --mount=type=bind` of the context.
    pub fn hash_all(&self) -> Result<blake3::Hash, ContextError> {
        let spec = CopySpec {
            sources: &[String::new()],
            follow_symlinks: true,
            allow_wildcard: false,
            allow_empty_wildcard: false,
            parents: false,
            exclude: &[],
        };
        let mut selection = self.select(&spec)?;
        let item = selection
            .pop()
            .and_then(|mut s| s.items.pop())
            .ok_or_else(|| ContextError::Changed {
                path: self.root_path.clone(),
            })?;
        self.item_node(&item, true)?.ok_or_else(|| ContextError::Changed {
            path: self.root_path.clone(),
        })
    }

    /// The hash of exactly what a COPY with `spec` from this context reads. Fails as the copy would when a
    /// source is missing.
    pub fn hash_copy(&self, spec: &CopySpec<'_>) -> Result<blake3::Hash, ContextError> {
        let selection = self.select(spec)?;
        let complete = spec.exclude.is_empty();
        let mut enc = encode::selection(spec.follow_symlinks, spec.exclude);
        enc.u64(selection.len() as u64);
        for source in &selection {
            self.encode_source(&mut enc, &source.raw, Some(source), complete && !source.filtered)?;
        }
        Ok(enc.finish())
    }

    /// Each entry a COPY with `spec` reads, with what its key covers of it, sorted by path: the inputs a
    /// miss is explained with. `None` when there are more than `limit`.
    pub fn list_copy(
        &self,
        spec: &CopySpec<'_>,
        limit: usize,
    ) -> Result<Option<Vec<crate::records::FileFact>>, ContextError> {
        let mut facts = Vec::new();
        for source in self.select(spec)? {
            for item in &source.items {
                let name = String::from_utf8_lossy(item.name.as_os_str().as_bytes()).into_owned();
                let own = match item.meta.kind() {
                    Kind::File => self
                        .file_content(item.src.as_os_str().as_bytes(), &item.meta)?
                        .map(|(_, hash)| hash.to_hex().to_string()),
                    _ => None,
                };
                // The context root itself (a `COPY . /dest`) is a directory node, not a file anyone changed.
                if !name.is_empty() {
                    facts.push(fact(name.clone(), &item.meta, item.link.as_deref(), own));
                }
                let contents = self.file_contents(&item.src, &item.entries)?;
                for (entry, content) in item.entries.iter().zip(contents) {
                    let rel = String::from_utf8_lossy(entry.rel.as_os_str().as_bytes());
                    let path = match name.is_empty() {
                        true => rel.into_owned(),
                        false => format!("{name}/{rel}"),
                    };
                    let content = content.map(|(_, hash)| hash.to_hex().to_string());
                    facts.push(fact(path, &entry.meta, entry.link.as_deref(), content));
                }
                if facts.len() > limit {
                    return Ok(None);
                }
            }
        }
        facts.sort_by(|a, b| a.path.cmp(&b.path));
        Ok(Some(facts))
    }

    /// The hash of what a COPY of `patterns` (context-relative sources, wildcards allowed) reads, with
    /// `--exclude` patterns `exclude`. A pattern that matches nothing hashes as "no match".
    pub fn hash_selection(
        &self,
        patterns: &[String],
        follow_symlinks: bool,
        exclude: &[String],
    ) -> Result<blake3::Hash, ContextError> {
        if !exclude.is_empty() {
            PatternMatcher::new(exclude).map_err(ContextError::BadExclude)?;
        }
        let mut enc = encode::selection(follow_symlinks, exclude);
        enc.u64(patterns.len() as u64);
        for pattern in patterns {
            let spec = CopySpec {
                sources: std::slice::from_ref(pattern),
                follow_symlinks,
                allow_wildcard: true,
                allow_empty_wildcard: true,
                parents: false,
                exclude,
            };
            let source = match self.select(&spec) {
                Ok(mut selection) => selection.pop(),
                Err(ContextError::Select(SelectError::SourceNotFound { .. })) => None,
                Err(e) => return Err(e),
            };
            self.encode_source(&mut enc, pattern, source.as_ref(), exclude.is_empty())?;
        }
        Ok(enc.finish())
    }

    /// One source of a selection: its text, then "no match" or its matches with their nodes.
    fn encode_source(
        &self,
        enc: &mut encode::Encoder,
        raw: &str,
        source: Option<&SourceSelection>,
        complete: bool,
    ) -> Result<(), ContextError> {
        enc.bytes(raw.as_bytes());
        let items = source.map_or(&[][..], |s| s.items.as_slice());
        let hashed: Vec<Option<(&Item, blake3::Hash)>> = items
            .par_iter()
            .map(|item| Ok(self.item_node(item, complete)?.map(|hash| (item, hash))))
            .collect::<Result<_, ContextError>>()?;
        let matches: Vec<(&Item, blake3::Hash)> = hashed.into_iter().flatten().collect();
        if matches.is_empty() {
            enc.u8(0);
            return Ok(());
        }
        enc.u8(1);
        enc.u64(matches.len() as u64);
        for (item, hash) in &matches {
            enc.bytes(item.name.as_os_str().as_bytes());
            enc.raw(hash);
        }
        Ok(())
    }

    /// The Merkle node of a selected item and what it selects below it; `None` when nothing of it exists
    /// any more (a file that vanished, a `.dockerignore`d directory kept only for exceptions that select
    /// nothing). `complete` says the walk saw everything below the item, for the stat index.
    fn item_node(&self, item: &Item, complete: bool) -> Result<Option<blake3::Hash>, ContextError> {
        let src = item.src.as_os_str().as_bytes();
        match item.meta.kind() {
            Kind::Dir => {
                let contents = self.file_contents(&item.src, &item.entries)?;
                let (children, _) = children(&item.entries, &contents, 0, 1);
                if complete {
                    self.session().walked.insert(src.to_vec());
                }
                if item.hidden_dir && children.is_empty() {
                    return Ok(None);
                }
                Ok(Some(encode::dir(&item.meta, &children)))
            }
            Kind::File => Ok(self
                .file_content(src, &item.meta)?
                .map(|(meta, content)| encode::leaf(&meta, b"", Some(&content)))),
            Kind::Symlink => Ok(Some(encode::leaf(
                &item.meta,
                item.link.as_deref().unwrap_or_default(),
                None,
            ))),
            _ => Ok(Some(encode::leaf(&item.meta, b"", None))),
        }
    }

    /// The content hashes of the regular files among `entries` (below `src`), read in parallel.
    fn file_contents(
        &self,
        src: &Path,
        entries: &[Entry],
    ) -> Result<Vec<Option<(Meta, blake3::Hash)>>, ContextError> {
        entries
            .par_iter()
            .map(|entry| match entry.meta.kind() {
                Kind::File => {
                    let rel = src.join(&entry.rel);
                    self.file_content(rel.as_os_str().as_bytes(), &entry.meta)
                }
                _ => Ok(None),
            })
            .collect()
    }

    /// Persists the stat index (no-op without an index directory). Keeps what this hasher saw plus the
    /// loaded entries outside the subtrees it walked completely.
    pub fn save_index(&self) -> Result<(), ContextError> {
        let Some(path) = &self.index_file else {
            return Ok(());
        };
        let session = self.session();
        let mut entries: Vec<(&Vec<u8>, &IndexEntry)> = session.fresh.iter().collect();
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

    fn io(&self, op: &'static str, rel: &[u8], e: io::Error) -> ContextError {
        ContextError::Io {
            op,
            path: self.abs(rel),
            source: e,
        }
    }

    /// Turns an open/stat failure on a path we just listed into an error; `Ok(())` means it vanished.
    fn vanished_or(&self, op: &'static str, rel: &[u8], e: io::Error) -> Result<(), ContextError> {
        let errno = e.raw_os_error().map(Errno::from_raw_os_error);
        match errno {
            Some(Errno::NOENT) => Ok(()),
            // A component turned into a symlink or a non-directory since we looked.
            Some(Errno::LOOP | Errno::NOTDIR | Errno::XDEV) => {
                Err(ContextError::Changed { path: self.abs(rel) })
            }
            _ => Err(self.io(op, rel, e)),
        }
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
        let flags = OFlags::RDONLY | OFlags::NONBLOCK | OFlags::NOCTTY | OFlags::NOFOLLOW;
        let fd = match self.root.open(Path::new(OsStr::from_bytes(rel)), flags, 0) {
            Ok(fd) => fd,
            Err(e) => return self.vanished_or("opening", rel, e).map(|()| None),
        };
        let before = stat_fd(fd.as_fd()).map_err(|e| self.io("stat", rel, e.into()))?;
        if before.kind() != Kind::File {
            return Err(ContextError::Changed { path: self.abs(rel) });
        }
        let mut file = File::from(fd);
        let (content, read) = hash_reader(&mut file, before.size).map_err(|source| ContextError::Io {
            op: "reading",
            path: self.abs(rel),
            source,
        })?;
        let after = stat_fd(file.as_fd()).map_err(|e| self.io("stat", rel, e.into()))?;
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
            self.session()
                .fresh
                .insert(rel.to_vec(), IndexEntry { key, content });
        }
    }
}

/// The `(name, node)` pairs of the entries at `depth` starting at `at`, up to the first shallower entry;
/// returns where that is. Entries are depth first, so a directory's descendants follow it.
fn children(
    entries: &[Entry],
    contents: &[Option<(Meta, blake3::Hash)>],
    mut at: usize,
    depth: usize,
) -> (Vec<(Vec<u8>, blake3::Hash)>, usize) {
    let mut out = Vec::new();
    while let Some(entry) = entries.get(at) {
        let entry_depth = entry.depth();
        if entry_depth < depth {
            break;
        }
        let name = entry
            .rel
            .file_name()
            .map(|n| n.as_bytes().to_vec())
            .unwrap_or_default();
        match entry.meta.kind() {
            Kind::Dir => {
                let (below, next) = children(entries, contents, at + 1, depth + 1);
                out.push((name, encode::dir(&entry.meta, &below)));
                at = next;
                continue;
            }
            Kind::File => {
                // A file that vanished since it was listed is not there.
                if let Some(Some((meta, content))) = contents.get(at) {
                    out.push((name, encode::leaf(meta, b"", Some(content))));
                }
            }
            Kind::Symlink => out.push((
                name,
                encode::leaf(&entry.meta, entry.link.as_deref().unwrap_or_default(), None),
            )),
            _ => out.push((name, encode::leaf(&entry.meta, b"", None))),
        }
        at += 1;
    }
    (out, at)
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

/// What a key covers of one entry, readable.
fn fact(path: String, meta: &Meta, link: Option<&[u8]>, content: Option<String>) -> crate::records::FileFact {
    let kind = match meta.kind() {
        Kind::File => "file",
        Kind::Dir => "dir",
        Kind::Symlink => "symlink",
        _ => "other",
    };
    crate::records::FileFact {
        path,
        mode: format!("{kind} {:o}", meta.permissions()),
        owner: format!("{}:{}", meta.uid, meta.gid),
        content: content
            .or_else(|| link.map(|l| String::from_utf8_lossy(l).into_owned()))
            .unwrap_or_default(),
    }
}
