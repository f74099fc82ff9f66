use std::io;

/// What reading, pushing or saving stored images can fail with. Store and registry errors pass through as
/// they are: they already name the blob, reference or registry involved.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Image(#[from] kiln_image::Error),

    /// Options that do not make sense; the message says what to write instead.
    #[error("{0}")]
    Usage(String),

    /// Stored content that is not what its record says (a manifest that does not parse, a missing layer).
    #[error("{what}: {reason}")]
    Invalid { what: String, reason: String },

    #[error(transparent)]
    Store(#[from] kiln_cache::Error),

    #[error(transparent)]
    Registry(#[from] kiln_registry::Error),

    #[error("{context}: {error}")]
    Io { context: String, error: io::Error },

    /// A step of an export (naming, pushing) failed; `what` says which.
    #[error("{what}: {error}")]
    During { what: String, error: Box<Error> },

    /// Writing a build output failed: `output` names its kind and destination, `error` why. The inner error
    /// is shown, not chained, so that the reason is printed once however the error is rendered.
    #[error("write the {output}: {error}")]
    Output { output: String, error: Box<Error> },
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    pub(crate) fn invalid(what: impl Into<String>, reason: impl Into<String>) -> Error {
        Error::Invalid {
            what: what.into(),
            reason: reason.into(),
        }
    }

    pub(crate) fn output(output: impl Into<String>, error: Error) -> Error {
        Error::Output {
            output: output.into(),
            error: Box::new(error),
        }
    }

    pub(crate) fn during(what: impl Into<String>) -> impl FnOnce(Error) -> Error {
        let what = what.into();
        move |error| Error::During {
            what,
            error: Box::new(error),
        }
    }

    pub(crate) fn io(context: impl Into<String>) -> impl FnOnce(io::Error) -> Error {
        let context = context.into();
        move |error| Error::Io { context, error }
    }
}
