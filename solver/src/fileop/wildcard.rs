//! Source paths with wildcards, resolved as fsutil's `ResolveWildcards` does: the literal leading segments
//! are resolved inside the root, then the tree below them is walked in lexical order without following
//! symlinks, and every entry whose path (relative to that base) matches the rest of the pattern is a match;
//! a matching directory is not entered.

use std::os::fd::AsFd;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use kiln_frontend::dockerignore::PatternMatcher;
use rustix::fs::{AtFlags, FileType, statat};

use super::FileOpError;
use super::glob::{clean_rel, go_match, split_wildcards};
use super::root::{Root, dir_names, shown};

pub(super) enum Sources {
    /// No wildcard: the cleaned path (relative to the root), which may or may not exist.
    Literal(Vec<u8>),
    /// The matches, relative to the root, in walk order.
    Matches(Vec<PathBuf>),
}

/// Expands `path` inside `root`. `follow` follows a symlink that is the last literal segment; `ignore` hides
/// what `.dockerignore` keeps out of a build context.
pub(super) fn expand(
    root: &Root,
    path: &str,
    follow: bool,
    ignore: Option<&PatternMatcher>,
) -> Result<Sources, FileOpError> {
    let cleaned = clean_rel(path.as_bytes());
    let (literal, pattern) = split_wildcards(&cleaned);
    if pattern.is_empty() {
        return Ok(Sources::Literal(cleaned));
    }
    let io = |source| FileOpError::Io {
        op: "resolve",
        path: format!("/{}", String::from_utf8_lossy(&literal)),
        source,
    };
    let base = root.resolve(&literal, follow).map_err(io)?;
    match root.lstat(&base).map_err(io)? {
        None => {
            let path = format!("/{}", String::from_utf8_lossy(&literal));
            return Err(FileOpError::SourceNotFound {
                path,
                in_context: ignore.is_some(),
            });
        }
        Some(st) if FileType::from_raw_mode(st.st_mode) != FileType::Directory => {
            return Ok(Sources::Matches(vec![]));
        }
        Some(_) => {}
    }
    // `*` never matches `/`, so nothing deeper than the pattern's own depth can match.
    let depth = pattern.iter().filter(|&&b| b == b'/').count() + 1;
    let mut walk = Walk {
        root,
        base: &base,
        pattern: &pattern,
        ignore,
        matches: Vec::new(),
    };
    walk.dir(Path::new(""), depth).map_err(|source| FileOpError::Io {
        op: "walk",
        path: shown(&base),
        source,
    })?;
    Ok(Sources::Matches(walk.matches))
}

struct Walk<'a> {
    root: &'a Root,
    base: &'a Path,
    pattern: &'a [u8],
    ignore: Option<&'a PatternMatcher>,
    matches: Vec<PathBuf>,
}

impl Walk<'_> {
    fn dir(&mut self, below_base: &Path, depth: usize) -> std::io::Result<()> {
        let fd = self.root.open_dir(&self.base.join(below_base))?;
        for name in dir_names(fd.as_fd())? {
            let st = statat(&fd, &name, AtFlags::SYMLINK_NOFOLLOW)?;
            let is_dir = FileType::from_raw_mode(st.st_mode) == FileType::Directory;
            let rel = below_base.join(&name);
            let in_root = self.base.join(&rel);
            if let Some(ignore) = self.ignore {
                let key = in_root.to_string_lossy();
                // An ignored directory still exists in the context if an exception may bring back something
                // below it.
                if ignore.is_excluded(&key) && (!is_dir || ignore.can_skip_dir(&key)) {
                    continue;
                }
            }
            if go_match(self.pattern, rel.as_os_str().as_bytes()) == Ok(true) {
                self.matches.push(in_root);
            } else if is_dir && depth > 1 {
                self.dir(&rel, depth - 1)?;
            }
        }
        Ok(())
    }
}
