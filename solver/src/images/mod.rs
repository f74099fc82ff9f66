//! Base images: pulling from registries into the store ([`pull()`]), finding them there for a build
//! ([`local_image`], [`resolve_for_build`]) and unpacking their layers ([`materialize`]), and loading docker
//! and OCI archives ([`load_archive`]).
//!
//! Everything is written under a store lease and named (an image record) only once it is complete, so an
//! interrupted or failed pull or load leaves no image behind, only unreferenced blobs for the next prune.
//! What images are, their names and IDs, is [`kiln_exporter::stored`]'s business; this module fills the
//! store and reads it through that.

mod load;
mod local;
mod pull;

pub use load::{LoadedImage, load_archive, load_archive_from};
pub use local::{LocalImage, ResolvedImage, local_image, materialize, resolve_for_build};
pub use pull::{PullProgress, PulledImage, PulledManifest, pull};

use kiln_cache::{LeaseId, Store};

/// What pulling, loading and resolving images can fail with. Registry errors name the reference already;
/// the others carry it in `what`/`context`.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Registry(#[from] kiln_registry::Error),

    #[error(transparent)]
    Image(#[from] kiln_exporter::Error),

    #[error("{context}: {source}")]
    Store {
        context: String,
        #[source]
        source: kiln_cache::Error,
    },

    /// Content that is not what it should be: a config that does not match its manifest, an archive without
    /// a manifest, a layer whose content is not its diff_id.
    #[error("{what}: {reason}")]
    Invalid { what: String, reason: String },

    #[error("{context}: {source}")]
    Io {
        context: String,
        #[source]
        source: std::io::Error,
    },
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    fn invalid(what: impl Into<String>, reason: impl Into<String>) -> Error {
        Error::Invalid {
            what: what.into(),
            reason: reason.into(),
        }
    }

    /// Names what was being done in a store error.
    fn store(context: impl Into<String>) -> impl FnOnce(kiln_cache::Error) -> Error {
        let context = context.into();
        move |source| Error::Store { context, source }
    }

    fn io(context: impl Into<String>) -> impl FnOnce(std::io::Error) -> Error {
        let context = context.into();
        move |source| Error::Io { context, source }
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
