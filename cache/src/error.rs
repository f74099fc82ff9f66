use std::io;
use std::path::PathBuf;

use crate::Digest;

/// Everything the store can fail with. Each variant names the object (digest, path, record) it is about,
/// so the CLI can print it as is.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("invalid digest {input:?}: {reason}")]
    InvalidDigest { input: String, reason: String },

    #[error("digest mismatch: expected {expected}, got {actual}")]
    DigestMismatch { expected: Digest, actual: Digest },

    #[error("blob {0} is not in the store")]
    BlobNotFound(Digest),

    #[error("blob {digest} is corrupt: its content hashes to {actual}")]
    CorruptBlob { digest: Digest, actual: Digest },

    #[error("invalid {what} {value:?}: {reason}")]
    InvalidName {
        what: &'static str,
        value: String,
        reason: &'static str,
    },

    #[error("unsupported layer media type {0:?}")]
    UnsupportedMediaType(String),

    #[error("unpacking layer {blob}{}: {source}", fmt_entry(.entry))]
    Unpack {
        blob: Digest,
        entry: Option<String>,
        #[source]
        source: io::Error,
    },

    #[error("{context}: {source}")]
    Io {
        context: String,
        #[source]
        source: io::Error,
    },

    #[error("store database {path}: {source}")]
    Db {
        path: PathBuf,
        #[source]
        source: Box<redb::Error>,
    },

    /// A database record or a stored manifest/config that is not the JSON expected.
    #[error("{what}: {source}")]
    Json {
        what: String,
        #[source]
        source: serde_json::Error,
    },

    #[error("lease {0} does not exist")]
    LeaseNotFound(String),

    /// `what` says which role the snapshot had: "snapshot", "parent snapshot".
    #[error("{what} {id} does not exist")]
    SnapshotNotFound { what: &'static str, id: String },
}

fn fmt_entry(entry: &Option<String>) -> String {
    match entry {
        Some(e) => format!(", entry {e:?}"),
        None => String::new(),
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Attaches "what was being done to which path" to an I/O error.
pub(crate) trait IoContext<T> {
    fn ctx<S: Into<String>>(self, context: impl FnOnce() -> S) -> Result<T>;
}

impl<T, E: Into<io::Error>> IoContext<T> for std::result::Result<T, E> {
    fn ctx<S: Into<String>>(self, context: impl FnOnce() -> S) -> Result<T> {
        self.map_err(|e| Error::Io {
            context: context().into(),
            source: e.into(),
        })
    }
}
