//! The build cache shared across machines: `--cache-to` writes the records a build finished (their keys,
//! the layer blobs of their results, what their keys were made of) to a registry, an OCI layout directory
//! or the image config; `--cache-from` reads them back, and the solver falls back to them when its store
//! has no record for a key.
//!
//! Keys travel as they are: they cover content, never a machine's paths, mtimes or inodes (see the solver),
//! so the same inputs give the same keys on any machine. The format is in `docs/cache-format.md`.

pub mod description;
mod export;
mod import;
pub mod spec;

pub use export::{ExportRequest, ExportSummary, export, inline_description, select};
pub use import::{ImportedCache, open};
pub use spec::{CacheFrom, CacheTo, Destination, Mode, parse_cache_from, parse_cache_to};

#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A flag that does not make sense; the message says what to write instead.
    #[error("{0}")]
    Usage(String),
    #[error(transparent)]
    Export(#[from] kiln_exporter::Error),
    #[error(transparent)]
    Store(#[from] kiln_cache::Error),
    #[error(transparent)]
    Registry(#[from] kiln_registry::Error),
}
