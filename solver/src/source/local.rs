//! The client's directories: the build context and `--build-context NAME=DIR`, used in place. Their content
//! enters a cache key only through the ops that read them, for exactly the files each reads.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;

use futures::future::BoxFuture;
use kiln_fsutil::ignore::PatternMatcher;
use kiln_llb::Platform;

use super::{Loaded, Source, SourceError};

pub struct LocalSource {
    /// By LLB source name (`context`, `context:NAME`).
    dirs: HashMap<String, PathBuf>,
}

impl LocalSource {
    pub fn new(dirs: HashMap<String, PathBuf>) -> LocalSource {
        LocalSource { dirs }
    }
}

impl Source for LocalSource {
    fn load<'a>(
        &'a self,
        op: &'a kiln_llb::Source,
        _: &'a Platform,
    ) -> BoxFuture<'a, Result<Loaded, SourceError>> {
        Box::pin(async move {
            let kiln_llb::Source::Local { name, exclude, .. } = op else {
                return Err(SourceError::Unsupported(format!(
                    "{} is not a local source",
                    op.kind()
                )));
            };
            let path = self
                .dirs
                .get(name)
                .cloned()
                .ok_or_else(|| SourceError::NoLocalDir { name: name.clone() })?;
            let ignore = PatternMatcher::new(exclude).map_err(SourceError::Ignore)?;
            Ok(Loaded::Dir {
                path,
                ignore: Arc::new(ignore),
            })
        })
    }

    fn records(&self) -> bool {
        false
    }
}
