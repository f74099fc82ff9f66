//! Which `.dockerignore` a build uses. Reading and matching patterns is `kiln_fsutil::ignore`'s job; only
//! the Dockerfile-specific file naming (`<Dockerfile>.dockerignore`) is the frontend's.

use std::path::{Path, PathBuf};

use kiln_fsutil::ignore::{IgnoreError, parse};

/// Reads the ignore patterns for a build: `<dockerfile>.dockerignore` beside the Dockerfile if it exists,
/// else `<context>/.dockerignore`, else none. `dockerfile` is used as given, not joined onto the context.
/// An empty Dockerfile-specific file still wins, as it does in BuildKit's built-in frontend.
pub fn load_for_build(context_dir: &Path, dockerfile: &Path) -> Result<Vec<String>, IgnoreError> {
    let mut specific = dockerfile.as_os_str().to_owned();
    specific.push(".dockerignore");
    for candidate in [PathBuf::from(specific), context_dir.join(".dockerignore")] {
        if !candidate.is_file() {
            continue;
        }
        let path = candidate.display().to_string();
        return match std::fs::read(&candidate) {
            Ok(bytes) => parse(&String::from_utf8_lossy(&bytes), &path),
            Err(source) => Err(IgnoreError::Io { path, source }),
        };
    }
    Ok(Vec::new())
}
