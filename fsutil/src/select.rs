//! The one file-selection engine: exactly which entries a COPY or ADD reads from its source tree. The copy
//! (`kiln_solver::fileop`) writes what a [`Selection`] lists and nothing else, and the cache key of a COPY
//! from the build context hashes the same [`Selection`], so a key can never cover other files than the copy
//! reads — a key that missed a file the copy reads would be a stale cache hit.
//!
//! The rules are BuildKit's (its `docopy` on fsutil's `copy.Copy`):
//! - each source is cleaned as `filepath.Join("/", src)` and split before its first segment with a wildcard;
//!   the literal part is resolved inside the root (intermediate symlinks always followed, the last one only
//!   with `follow_symlinks`), then the tree below it is walked in lexical order without following symlinks,
//!   and every entry whose path relative to that base matches the rest with Go's `filepath.Match` is a
//!   match; a matching directory is not entered;
//! - each match (or the literal source) is resolved like a literal source and, when it is a directory,
//!   walked: `.dockerignore` (root-relative paths) and `--exclude` patterns (paths relative to the matched
//!   source) drop entries, a `--parents` pattern keeps only what it or a parent matches; a directory that a
//!   pattern drops but an exception may reach into is kept only if something below it is selected;
//! - in a build context, what `.dockerignore` excludes does not exist — not under its own name, not at the
//!   end of a symlink, not as a directory on the way.

use std::ffi::OsStr;
use std::io;
use std::os::fd::AsFd;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use rayon::prelude::*;
use rustix::io::Errno;

use crate::glob::{clean_rel, go_match, split_wildcards};
use crate::ignore::{IgnoreError, PatternMatcher};
use crate::root::{Rel, Root, dir_names, shown};
use crate::stat::{Kind, Meta, readlink_at, stat_at};

/// What a COPY or ADD asks of its source tree.
#[derive(Clone, Copy, Debug)]
pub struct CopySpec<'a> {
    /// Source paths or patterns, relative to the source root.
    pub sources: &'a [String],
    /// Follow a symlink named as a source (inside the root).
    pub follow_symlinks: bool,
    pub allow_wildcard: bool,
    /// A wildcard (or `--parents` filter) that matches nothing is no error.
    pub allow_empty_wildcard: bool,
    /// `--parents`: `pivot/./pattern` sources keep the directories below the pivot.
    pub parents: bool,
    /// `--exclude` patterns, matched against paths relative to each matched source.
    pub exclude: &'a [String],
}

#[derive(Debug, thiserror::Error)]
pub enum SelectError {
    #[error(
        "failed to compute cache key: {path:?}: not found{}",
        if *in_context { " (file not found in build context or excluded by .dockerignore)" } else { "" }
    )]
    SourceNotFound { path: String, in_context: bool },
    #[error("invalid pattern: {0}")]
    InvalidPattern(IgnoreError),
    #[error("{op} {path}: {source}")]
    Io {
        op: &'static str,
        path: String,
        #[source]
        source: io::Error,
    },
}

/// The entries one source selects.
#[derive(Debug)]
pub struct SourceSelection {
    /// The source as written.
    pub raw: String,
    /// Its matches (the one literal source), in the order they are copied.
    pub items: Vec<Item>,
    /// A `--parents` pattern chose the entries below the items.
    pub filtered: bool,
}

/// A source path, or one match of a wildcard, with what it selects.
#[derive(Debug)]
pub struct Item {
    /// The path it was named or matched by, relative to the root: what the copy names its destination after.
    pub name: Rel,
    /// Where that led, symlinks resolved.
    pub src: Rel,
    pub meta: Meta,
    /// The target, when the item is a symlink that is not followed.
    pub link: Option<Vec<u8>>,
    /// A directory `.dockerignore` excludes, present only as the parent of exceptions below it: it is
    /// created only if something below it is.
    pub hidden_dir: bool,
    /// What a directory item selects below it, in copy order (depth first, names sorted bytewise). Every
    /// directory an entry lies in comes before it.
    pub entries: Vec<Entry>,
}

/// One selected entry below an [`Item`].
#[derive(Debug, Clone)]
pub struct Entry {
    /// The path relative to the item's `src`.
    pub rel: Rel,
    pub meta: Meta,
    /// A symlink's target; symlinks below an item are copied as links, never followed.
    pub link: Option<Vec<u8>>,
    /// A directory that is not selected itself but lies on the way to entries that are: the copy creates it
    /// for them (fsutil's `createParentDirs`) and gives it no metadata of its own making.
    pub deferred: bool,
}

impl Entry {
    /// How many directories lie between the item and the entry, plus one: 1 for the item's children.
    pub fn depth(&self) -> usize {
        self.rel.iter().count()
    }
}

impl Item {
    /// Entries a copy of this item creates (what a `--parents` filter must let through for the source to
    /// count as found).
    fn selected(&self) -> usize {
        match self.meta.is_dir() {
            true => self.entries.iter().filter(|e| !e.deferred).count(),
            false => 1,
        }
    }
}

/// Selects from one root. `ignore` is set for a build context: its `.dockerignore`, an empty matcher when
/// there is none (which still says "this is a context", for error messages).
pub struct Selector<'a> {
    root: &'a Root,
    ignore: Option<&'a PatternMatcher>,
}

/// What a wildcard path expands to.
#[derive(Debug)]
pub enum Expanded {
    /// No wildcard: the cleaned path (relative to the root), which may or may not exist.
    Literal(Vec<u8>),
    /// The matches, relative to the root, in walk order.
    Matches(Vec<Rel>),
}

impl<'a> Selector<'a> {
    pub fn new(root: &'a Root, ignore: Option<&'a PatternMatcher>) -> Selector<'a> {
        Selector { root, ignore }
    }

    fn in_context(&self) -> bool {
        self.ignore.is_some()
    }

    fn not_found(&self, rel: &[u8]) -> SelectError {
        SelectError::SourceNotFound {
            path: format!("/{}", String::from_utf8_lossy(rel)),
            in_context: self.in_context(),
        }
    }

    /// Whether `.dockerignore` lets `rel` exist. A directory it excludes still exists while an exception may
    /// bring back something below it.
    fn visible(&self, rel: &Path, is_dir: bool) -> bool {
        let Some(ignore) = self.ignore else {
            return true;
        };
        let key = rel.to_string_lossy();
        !ignore.is_excluded(&key) || (is_dir && !ignore.can_skip_dir(&key))
    }

    fn hidden_dir(&self, rel: &Path) -> bool {
        self.ignore
            .is_some_and(|ignore| ignore.is_excluded(&rel.to_string_lossy()))
    }

    /// Everything a COPY with `spec` reads, each source looked up before anything is read: a missing source
    /// fails here, for the key and the copy alike.
    pub fn select(&self, spec: &CopySpec<'_>) -> Result<Vec<SourceSelection>, SelectError> {
        let exclude = match spec.exclude.is_empty() {
            true => None,
            false => Some(PatternMatcher::new(spec.exclude).map_err(SelectError::InvalidPattern)?),
        };
        let mut out = Vec::with_capacity(spec.sources.len());
        for raw in spec.sources {
            let (path, include) = match spec.parents {
                true => parents_split(raw)?,
                false => (raw.clone(), None),
            };
            let names: Vec<Rel> = match spec.allow_wildcard {
                true => match self.expand(&path, spec.follow_symlinks)? {
                    Expanded::Literal(p) => vec![rel_path(&p)],
                    Expanded::Matches(m) if m.is_empty() && !spec.allow_empty_wildcard => {
                        return Err(self.not_found(&clean_rel(path.as_bytes())));
                    }
                    Expanded::Matches(m) => m,
                },
                false => vec![rel_path(&clean_rel(path.as_bytes()))],
            };
            let filters = Filters {
                exclude: exclude.as_ref(),
                include: include.as_ref(),
            };
            let items = names
                .into_iter()
                .map(|name| self.item(name, spec.follow_symlinks, &filters))
                .collect::<Result<Vec<_>, _>>()?;
            // --parents filters what a source copies instead of naming it: a filter that lets nothing through
            // is a missing source, as a wildcard with no match is.
            if include.is_some()
                && !spec.allow_empty_wildcard
                && items.iter().map(Item::selected).sum::<usize>() == 0
            {
                return Err(self.not_found(&clean_rel(raw.as_bytes())));
            }
            out.push(SourceSelection {
                raw: raw.clone(),
                items,
                filtered: include.is_some(),
            });
        }
        Ok(out)
    }

    /// fsutil's `ResolveWildcards`: `path` with its literal leading segments resolved (following a final
    /// symlink when `follow`), then the matches of the rest below that directory.
    pub fn expand(&self, path: &str, follow: bool) -> Result<Expanded, SelectError> {
        let cleaned = clean_rel(path.as_bytes());
        let (literal, pattern) = split_wildcards(&cleaned);
        if pattern.is_empty() {
            return Ok(Expanded::Literal(cleaned));
        }
        let io = |source| SelectError::Io {
            op: "resolve",
            path: format!("/{}", String::from_utf8_lossy(&literal)),
            source,
        };
        // The base is looked up as it is on disk; what `.dockerignore` hides below it is never matched.
        let base = self.root.resolve(&literal, follow).map_err(io)?;
        match self.root.lstat(&base).map_err(io)? {
            None => return Err(self.not_found(&literal)),
            Some(meta) if !meta.is_dir() => return Ok(Expanded::Matches(Vec::new())),
            Some(_) => {}
        }
        // `*` never matches `/`, so nothing deeper than the pattern's own depth can match.
        let depth = pattern.iter().filter(|&&b| b == b'/').count() + 1;
        let mut matches = Vec::new();
        self.match_below(&base, Path::new(""), &pattern, depth, &mut matches)
            .map_err(|source| SelectError::Io {
                op: "walk",
                path: shown(&base),
                source,
            })?;
        Ok(Expanded::Matches(matches))
    }

    fn match_below(
        &self,
        base: &Path,
        below: &Path,
        pattern: &[u8],
        depth: usize,
        matches: &mut Vec<Rel>,
    ) -> io::Result<()> {
        let fd = self.root.open_dir(&base.join(below))?;
        for name in dir_names(fd.as_fd())? {
            let meta = stat_at(fd.as_fd(), name.as_bytes())?;
            let rel = below.join(&name);
            let in_root = base.join(&rel);
            if !self.visible(&in_root, meta.is_dir()) {
                continue;
            }
            if go_match(pattern, rel.as_os_str().as_bytes()) == Ok(true) {
                matches.push(in_root);
            } else if meta.is_dir() && depth > 1 {
                self.match_below(base, &rel, pattern, depth - 1, matches)?;
            }
        }
        Ok(())
    }

    /// Resolves inside the root through visible entries only; `None` when something on the way is missing.
    fn resolve(&self, path: &[u8], follow_last: bool) -> io::Result<Option<Rel>> {
        match self.ignore {
            None => self.root.resolve(path, follow_last).map(Some),
            Some(_) => self
                .root
                .resolve_visible(path, follow_last, &|rel, is_dir| self.visible(rel, is_dir)),
        }
    }

    /// Looks up one source or match and walks what it selects.
    fn item(&self, name: Rel, follow: bool, filters: &Filters<'_>) -> Result<Item, SelectError> {
        let name_bytes = name.as_os_str().as_bytes().to_vec();
        let shown_name = shown(&name);
        let io = |op| {
            let path = shown_name.clone();
            move |source| SelectError::Io { op, path, source }
        };
        let src = self
            .resolve(&name_bytes, follow)
            .map_err(io("resolve"))?
            .ok_or_else(|| self.not_found(&name_bytes))?;
        let meta = self
            .root
            .lstat(&src)
            .map_err(io("stat"))?
            .ok_or_else(|| self.not_found(&name_bytes))?;
        // Not under its own name, not under the name a symlink led to.
        let mut hidden_dir = false;
        for key in [name.as_path(), src.as_path()] {
            if !self.visible(key, meta.is_dir()) {
                return Err(self.not_found(&name_bytes));
            }
            hidden_dir |= self.hidden_dir(key);
        }
        let link = match meta.kind() {
            Kind::Symlink => Some(self.root.readlink(&src).map_err(io("readlink"))?),
            _ => None,
        };
        let entries = match meta.is_dir() {
            true => self
                .walk(&src, Path::new(""), filters)
                .map_err(|source| SelectError::Io {
                    op: "read",
                    path: shown(&src),
                    source,
                })?,
            false => Vec::new(),
        };
        Ok(Item {
            name,
            src,
            meta,
            link,
            hidden_dir,
            entries,
        })
    }

    /// The selected entries below the directory `src/below`, depth first. Subdirectories are walked in
    /// parallel; their entries are put back in order.
    fn walk(&self, src: &Path, below: &Path, filters: &Filters<'_>) -> io::Result<Vec<Entry>> {
        let dir = src.join(below);
        let fd = self.root.open_dir(&dir)?;
        let mut children = Vec::new();
        for name in dir_names(fd.as_fd())? {
            let meta = match stat_at(fd.as_fd(), name.as_bytes()) {
                Ok(meta) => meta,
                // Removed since the listing: it is not there to copy.
                Err(Errno::NOENT) => continue,
                Err(e) => return Err(e.into()),
            };
            let rel = below.join(&name);
            let verdict = self.verdict(&src.join(&rel), &rel, meta.is_dir(), filters);
            if verdict == Verdict::Skip {
                continue;
            }
            let link = match meta.kind() {
                Kind::Symlink => match readlink_at(fd.as_fd(), name.as_bytes()) {
                    Ok(target) => Some(target),
                    Err(Errno::NOENT) => continue,
                    Err(e) => return Err(e.into()),
                },
                _ => None,
            };
            children.push(Entry {
                rel,
                meta,
                link,
                deferred: verdict == Verdict::Traverse,
            });
        }
        let below: Vec<Vec<Entry>> = children
            .par_iter()
            .map(|child| match child.meta.is_dir() {
                true => self.walk(src, &child.rel, filters),
                false => Ok(Vec::new()),
            })
            .collect::<io::Result<_>>()?;
        let mut out = Vec::with_capacity(children.len() + below.iter().map(Vec::len).sum::<usize>());
        for (child, descendants) in children.into_iter().zip(below) {
            // A directory kept only for what lies below it goes if nothing does.
            if child.deferred && descendants.is_empty() {
                continue;
            }
            out.push(child);
            out.extend(descendants);
        }
        Ok(out)
    }

    fn verdict(&self, in_root: &Path, rel: &Path, is_dir: bool, filters: &Filters<'_>) -> Verdict {
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
        if let Some(exclude) = filters.exclude
            && exclude.is_excluded(&key)
        {
            if !is_dir || exclude.can_skip_dir(&key) {
                return Verdict::Skip;
            }
            traverse = true;
        }
        if let Some(include) = filters.include
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
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Verdict {
    Copy,
    /// A directory that is not selected itself, but may have something below it that is.
    Traverse,
    Skip,
}

struct Filters<'a> {
    exclude: Option<&'a PatternMatcher>,
    include: Option<&'a Include>,
}

fn rel_path(bytes: &[u8]) -> Rel {
    PathBuf::from(OsStr::from_bytes(bytes))
}

/// `COPY --parents a/./b/*.go`: the source becomes the pivot before `/./` (the root without one), and the
/// rest a pattern selecting what to copy below it, so the matched paths keep their directories.
fn parents_split(raw: &str) -> Result<(String, Option<Include>), SelectError> {
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
    fn new(pattern: String) -> Result<Option<Include>, SelectError> {
        // Copying the pivot itself needs no filter (and moby's matcher drops an empty pattern).
        if pattern.is_empty() {
            return Ok(None);
        }
        let matcher =
            PatternMatcher::new(std::slice::from_ref(&pattern)).map_err(SelectError::InvalidPattern)?;
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
