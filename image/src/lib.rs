//! Images as kiln holds them — the model that the solver, the exporters and the CLI share:
//! - [`stored`]: what a name points at in the store (an index or a manifest), the platform images of it that
//!   are complete, image IDs, name normalisation;
//! - [`config`]: the image config JSON with docker's field names, written and read in one place;
//! - [`media`]: media types and the annotations archives carry;
//! - [`pull()`], [`load_archive`]: filling the store from registries and from docker or OCI archives;
//!   [`local_image`], [`resolve_for_build`], [`materialize`]: finding a base image for a build and
//!   unpacking its layers;
//! - [`parallel`]: transfers run side by side with their progress on one callback.
//!
//! Everything is written under a store lease and named (an image record) only once it is complete, so an
//! interrupted or failed pull or load leaves no image behind, only unreferenced blobs for the next prune.

pub mod config;
mod load;
mod local;
pub mod media;
pub mod parallel;
mod pull;
pub mod stored;

pub use load::{LoadedImage, load_archive, load_archive_from};
pub use local::{LocalImage, ResolvedImage, local_image, materialize, resolve_for_build};
pub use pull::{PullProgress, PulledImage, PulledManifest, pull};

use kiln_cache::{LeaseId, Store};

/// What reading, pulling, loading and resolving images can fail with. Store and registry errors name the
/// blob, reference or registry already; the others carry what they are about in `what`/`context`. Each
/// message includes its cause, so the cause is not chained again.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("no such image: {0}")]
    NoSuchImage(String),

    #[error("image ID prefix {prefix:?} is ambiguous: it matches {matches}")]
    AmbiguousId { prefix: String, matches: String },

    #[error(transparent)]
    Registry(#[from] kiln_registry::Error),

    #[error(transparent)]
    Store(#[from] kiln_cache::Error),

    /// A store error and what was being done.
    #[error("{context}: {error}")]
    StoreContext {
        context: String,
        error: kiln_cache::Error,
    },

    /// Content that is not what it should be: a manifest that does not parse, a config that does not match
    /// its manifest, an archive without a manifest, a layer whose content is not its diff_id.
    #[error("{what}: {reason}")]
    Invalid { what: String, reason: String },

    #[error("{context}: {error}")]
    Io { context: String, error: std::io::Error },
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    pub fn invalid(what: impl Into<String>, reason: impl Into<String>) -> Error {
        Error::Invalid {
            what: what.into(),
            reason: reason.into(),
        }
    }

    /// Names what was being done in a store error.
    fn store(context: impl Into<String>) -> impl FnOnce(kiln_cache::Error) -> Error {
        let context = context.into();
        move |error| Error::StoreContext { context, error }
    }

    fn io(context: impl Into<String>) -> impl FnOnce(std::io::Error) -> Error {
        let context = context.into();
        move |error| Error::Io { context, error }
    }
}

/// A store lease for the duration of a pull or load, released when dropped (after the image is recorded,
/// or on failure, leaving what was written to the next prune).
struct LeaseGuard {
    store: Store,
    id: LeaseId,
}

impl LeaseGuard {
    fn new(store: &Store, context: &str) -> Result<LeaseGuard> {
        let id = store.create_lease().map_err(Error::store(context))?;
        Ok(LeaseGuard {
            store: store.clone(),
            id,
        })
    }

    /// A store handle that records what it writes in the lease.
    fn store(&self) -> Store {
        self.store.with_lease(&self.id)
    }
}

impl Drop for LeaseGuard {
    fn drop(&mut self) {
        if let Err(e) = self.store.release_lease(&self.id) {
            tracing::warn!(lease = %self.id, "could not release lease (the next prune drops it): {e}");
        }
    }
}
