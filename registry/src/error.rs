use std::path::PathBuf;

use oci_client::errors::{DigestError, OciDistributionError, OciErrorCode};

/// Everything the registry client can fail with. Each variant names the reference or registry involved so
/// that the CLI can print it as is.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    #[error("invalid reference {input:?}: {reason}")]
    InvalidReference { input: String, reason: String },

    #[error("invalid digest {input:?} for {reference}: {reason}")]
    InvalidDigest {
        reference: String,
        input: String,
        reason: String,
    },

    #[error("manifest unknown: {reference}")]
    ManifestUnknown { reference: String },

    #[error("blob unknown: {digest} in {reference}")]
    BlobUnknown { reference: String, digest: String },

    #[error(
        "unauthorized: {registry} refused access to {reference}; run `kiln login {registry}` \
         (or check the credentials in the docker config)"
    )]
    Unauthorized { reference: String, registry: String },

    #[error("denied: {registry} does not allow this access to {reference}: {message}")]
    Denied {
        reference: String,
        registry: String,
        message: String,
    },

    #[error("digest mismatch for {reference}: expected {expected}, got {actual}")]
    DigestMismatch {
        reference: String,
        expected: String,
        actual: String,
    },

    #[error("size mismatch for {digest} from {reference}: expected {expected} bytes, got {actual}")]
    SizeMismatch {
        reference: String,
        digest: String,
        expected: u64,
        actual: u64,
    },

    #[error("truncated blob {digest} from {reference}: got {received} of {expected} bytes ({detail})")]
    Truncated {
        reference: String,
        digest: String,
        expected: u64,
        received: u64,
        detail: String,
    },

    #[error("malformed manifest {reference}: {reason}")]
    MalformedManifest { reference: String, reason: String },

    #[error("unsupported manifest media type {media_type:?} for {reference}")]
    UnsupportedMediaType { reference: String, media_type: String },

    #[error("no manifest for platform {platform} in {reference} (it has: {available})")]
    NoMatchingPlatform {
        reference: String,
        platform: String,
        available: String,
    },

    /// The registry answered with an error status that has no more specific variant.
    #[error("{op} {reference}: registry error{}: {message}", status.map(|s| format!(" (HTTP {s})")).unwrap_or_default())]
    Registry {
        op: &'static str,
        reference: String,
        status: Option<u16>,
        message: String,
    },

    /// The request did not get an answer: connection refused or reset, TLS failure, timeout.
    #[error("{op} {reference}: {message}")]
    /// `message` is the whole cause chain, URL secrets removed; the causes themselves are not kept, since
    /// printing them would bring the URLs back.
    Transport {
        op: &'static str,
        reference: String,
        message: String,
    },

    #[error("{context}: {source}")]
    Io {
        context: String,
        #[source]
        source: std::io::Error,
    },

    #[error("docker config {}: {reason}", path.display())]
    DockerConfig { path: PathBuf, reason: String },

    #[error("login to {registry} failed: {reason}")]
    LoginFailed { registry: String, reason: String },

    #[error(
        "{registry} asks for its credentials to be sent to {realm}, {why}; kiln sends a registry's \
         credentials only to that registry or, over https, to a host of its own domain"
    )]
    UntrustedRealm {
        registry: String,
        realm: String,
        why: String,
    },
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// What a request was about, so that a bare HTTP 404 can be told apart as a missing manifest or blob.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Target<'a> {
    Manifest,
    Blob(&'a str),
}

/// Bodies of error pages can be whole HTML documents; an error message needs only their start.
const MAX_MESSAGE: usize = 300;

fn shorten(s: &str) -> String {
    let s = s.trim();
    if s.len() <= MAX_MESSAGE {
        return s.to_owned();
    }
    let mut end = MAX_MESSAGE;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &s[..end])
}

/// Turns an oci-client error into ours, naming `reference` (shown as given) on `registry`.
pub(crate) fn from_oci(
    op: &'static str,
    reference: &str,
    registry: &str,
    target: Target<'_>,
    err: OciDistributionError,
) -> Error {
    let reference_s = reference.to_owned();
    let by_status = |status: u16, message: String| -> Error {
        match status {
            401 => Error::Unauthorized {
                reference: reference_s.clone(),
                registry: registry.to_owned(),
            },
            403 => Error::Denied {
                reference: reference_s.clone(),
                registry: registry.to_owned(),
                message: shorten(&message),
            },
            404 => match target {
                Target::Manifest => Error::ManifestUnknown {
                    reference: reference_s.clone(),
                },
                Target::Blob(digest) => Error::BlobUnknown {
                    reference: reference_s.clone(),
                    digest: digest.to_owned(),
                },
            },
            _ => Error::Registry {
                op,
                reference: reference_s.clone(),
                status: Some(status),
                message: shorten(&message),
            },
        }
    };
    match err {
        OciDistributionError::UnauthorizedError { .. } | OciDistributionError::AuthenticationFailure(_) => {
            by_status(401, String::new())
        }
        OciDistributionError::ImageManifestNotFoundError(_) => Error::ManifestUnknown {
            reference: reference_s,
        },
        OciDistributionError::ServerError { code, message, .. } => by_status(code, message),
        OciDistributionError::RegistryError { envelope, .. } => {
            let message = envelope
                .errors
                .iter()
                .map(|e| {
                    if e.message.is_empty() {
                        format!("{:?}", e.code)
                    } else {
                        e.message.clone()
                    }
                })
                .collect::<Vec<_>>()
                .join("; ");
            let first = envelope.errors.first().map(|e| &e.code);
            match first {
                Some(OciErrorCode::Unauthorized) => by_status(401, message),
                Some(OciErrorCode::Denied) => by_status(403, message),
                Some(OciErrorCode::ManifestUnknown) => Error::ManifestUnknown {
                    reference: reference_s,
                },
                // distribution answers NAME_UNKNOWN for a repository it has never seen; for a pull that is
                // the same situation as an unknown tag.
                Some(OciErrorCode::NameUnknown) if target == Target::Manifest => Error::ManifestUnknown {
                    reference: reference_s,
                },
                Some(OciErrorCode::BlobUnknown) | Some(OciErrorCode::NameUnknown) => by_status(404, message),
                _ => Error::Registry {
                    op,
                    reference: reference_s,
                    status: None,
                    message: shorten(&message),
                },
            }
        }
        OciDistributionError::DigestError(DigestError::VerificationError { expected, actual }) => {
            Error::DigestMismatch {
                reference: reference_s,
                expected,
                actual,
            }
        }
        OciDistributionError::RequestError(e) => match e.status() {
            Some(status) => by_status(status.as_u16(), crate::redact_urls(&e.to_string())),
            None => transport(op, reference, e),
        },
        OciDistributionError::ManifestParsingError(reason)
        | OciDistributionError::VersionedParsingError(reason) => Error::MalformedManifest {
            reference: reference_s,
            reason,
        },
        OciDistributionError::UnsupportedMediaTypeError(media_type) => Error::UnsupportedMediaType {
            reference: reference_s,
            media_type,
        },
        OciDistributionError::IoError(e) => Error::Io {
            context: format!("{op} {reference}"),
            source: e,
        },
        other => Error::Registry {
            op,
            reference: reference_s,
            status: None,
            message: shorten(&crate::redact_urls(&other.to_string())),
        },
    }
}

/// A transport failure, with the causes reqwest chains (e.g. "connection refused") spelled out since its
/// own message is only "error sending request".
pub(crate) fn transport(op: &'static str, reference: &str, err: impl std::error::Error + 'static) -> Error {
    Error::Transport {
        op,
        reference: reference.to_owned(),
        message: error_chain(&err),
    }
}

/// An error's message followed by those of its causes that add something.
pub(crate) fn error_chain(err: &(dyn std::error::Error + 'static)) -> String {
    let mut message = err.to_string();
    let mut cause = err.source();
    while let Some(c) = cause {
        let s = c.to_string();
        if !message.contains(&s) {
            message.push_str(": ");
            message.push_str(&s);
        }
        cause = c.source();
    }
    crate::redact_urls(&message)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_codes_map_to_clear_errors() {
        let e = from_oci(
            "pull",
            "localhost:5000/x:y",
            "localhost:5000",
            Target::Manifest,
            OciDistributionError::ServerError {
                code: 404,
                url: String::new(),
                message: String::new(),
            },
        );
        assert_eq!(e.to_string(), "manifest unknown: localhost:5000/x:y");

        let e = from_oci(
            "pull",
            "localhost:5000/x:y",
            "localhost:5000",
            Target::Manifest,
            OciDistributionError::UnauthorizedError { url: String::new() },
        );
        let s = e.to_string();
        assert!(s.starts_with("unauthorized: "), "{s}");
        assert!(s.contains("kiln login localhost:5000"), "{s}");
    }

    #[test]
    fn errors_can_cross_threads() {
        fn send_sync<T: Send + Sync + 'static>() {}
        send_sync::<Error>();
    }

    #[test]
    fn long_messages_are_cut() {
        let long = "é".repeat(1000);
        assert!(shorten(&long).len() <= MAX_MESSAGE + 4);
    }
}
