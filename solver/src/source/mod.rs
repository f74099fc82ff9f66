//! Sources: where a build's content comes from — images (by reference or from an OCI layout), the client's
//! directories (the build context, named contexts), files over HTTP, and later git and imported cache. Each
//! kind is one [`Source`] implementation, asked once for what decides its content (for the cache key) and,
//! only if the key misses, once for the content itself. The solver learns nothing about a kind beyond this.

mod git;
mod http;
mod image;
mod local;

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;

use futures::future::BoxFuture;
use kiln_fsutil::ignore::{IgnoreError, PatternMatcher};
use kiln_llb::Platform;
use serde::{Deserialize, Serialize};

pub use git::GitSource;
pub use http::HttpSource;
pub use image::{BaseImage, BaseImages, ImageSource};
pub use local::LocalSource;

use kiln_cache::{Digest, SnapshotId};

/// One layer of a result: a snapshot in the store and, for layers of a pulled image, the blob it came from,
/// so an export reuses the blob instead of compressing the layer again.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LayerRef {
    pub snapshot: SnapshotId,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub blob: Option<BaseBlob>,
}

/// A layer blob of a base image, so an export can reuse it as is.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BaseBlob {
    pub digest: Digest,
    pub media_type: String,
    pub diff_id: Digest,
    /// The manifest of the image the layer belongs to, whose config holds the layer's history.
    pub manifest: Digest,
}

/// What a source provides.
#[derive(Debug, Clone)]
pub enum Loaded {
    /// A filesystem: layers bottom to top.
    Layers(Vec<LayerRef>),
    /// A directory of the client's, used in place; `ignore` is what its `.dockerignore` keeps out, which
    /// does not exist for the ops that read it (an empty matcher when there is none).
    Dir {
        path: PathBuf,
        ignore: Arc<PatternMatcher>,
    },
}

#[derive(Debug, thiserror::Error)]
pub enum SourceError {
    #[error(transparent)]
    Image(#[from] kiln_image::Error),
    #[error(transparent)]
    Store(#[from] kiln_cache::Error),
    #[error("the build uses the local directory {name:?}, but none was given for it")]
    NoLocalDir { name: String },
    #[error(".dockerignore: {0}")]
    Ignore(IgnoreError),
    /// An image that has nothing for the platform, an OCI layout without the image asked for.
    #[error("{0}")]
    NotFound(String),
    #[error("{url}: {message}")]
    Http { url: String, message: String },
    /// One resolution's error, again for each vertex that asked for the same image.
    #[error(transparent)]
    Shared(Arc<SourceError>),
    /// A kind of source kiln does not fetch (yet); the message says what to do instead.
    #[error("{0}")]
    Unsupported(String),
}

/// One kind of source.
pub trait Source: Send + Sync {
    /// What, beyond the op itself, decides the content: a base image's manifest digest for `platform`.
    /// `None` when the op says it all (the content of a client directory is hashed by each op that reads it,
    /// for exactly the files it reads).
    fn key<'a>(
        &'a self,
        _op: &'a kiln_llb::Source,
        _platform: &'a Platform,
    ) -> BoxFuture<'a, Result<Option<String>, SourceError>> {
        Box::pin(async { Ok(None) })
    }

    /// The content, for `platform`.
    fn load<'a>(
        &'a self,
        op: &'a kiln_llb::Source,
        platform: &'a Platform,
    ) -> BoxFuture<'a, Result<Loaded, SourceError>>;

    /// Whether the result is worth a cache record: not for what is at hand anyway (a client directory, the
    /// empty filesystem).
    fn records(&self) -> bool {
        true
    }
}

/// The sources of a build, by the kind of LLB source they serve.
#[derive(Clone)]
pub struct Sources {
    by_kind: HashMap<&'static str, Arc<dyn Source>>,
}

impl Default for Sources {
    fn default() -> Self {
        Self::new()
    }
}

impl Sources {
    /// The sources that need nothing from the caller: the empty filesystem, and git's explanation.
    pub fn new() -> Sources {
        let mut sources = Sources {
            by_kind: HashMap::new(),
        };
        sources.register("scratch", Arc::new(Scratch));
        sources.register("git", Arc::new(GitSource));
        sources
    }

    /// Serves the LLB sources of `kind` (`kiln_llb::Source::kind`) with `source`, replacing any other.
    pub fn register(&mut self, kind: &'static str, source: Arc<dyn Source>) -> &mut Sources {
        self.by_kind.insert(kind, source);
        self
    }

    pub fn get(&self, op: &kiln_llb::Source) -> Result<&Arc<dyn Source>, SourceError> {
        self.by_kind.get(op.kind()).ok_or_else(|| {
            SourceError::Unsupported(format!("this build has no source for {} content", op.kind()))
        })
    }
}

/// The empty filesystem.
struct Scratch;

impl Source for Scratch {
    fn load<'a>(
        &'a self,
        _: &'a kiln_llb::Source,
        _: &'a Platform,
    ) -> BoxFuture<'a, Result<Loaded, SourceError>> {
        Box::pin(async { Ok(Loaded::Layers(Vec::new())) })
    }

    fn records(&self) -> bool {
        false
    }
}
