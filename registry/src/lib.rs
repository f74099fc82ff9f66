//! The registry client: talks the OCI distribution protocol to pull and push manifests and blobs, with
//! docker-compatible credentials. Shared by pulls (solver, `kiln pull`), pushes (exporter, `kiln push`) and
//! cache import/export.
//!
//! Built on oci-client for the protocol (auth challenges and token exchange, manifest and blob requests,
//! uploads). This crate adds docker's reference and credential conventions, platform selection, streaming
//! verification into a writer with resume, and errors that name what failed.

mod client;
mod docker_config;
mod error;
mod platform;
mod redact;
mod reference;

pub use client::{
    MEDIA_TYPE_DOCKER_MANIFEST, MEDIA_TYPE_DOCKER_MANIFEST_LIST, MEDIA_TYPE_OCI_INDEX,
    MEDIA_TYPE_OCI_MANIFEST, Manifest, RegistryClient, RegistryConfig, Resolved,
};
pub use docker_config::{Credentials, DockerConfig, canonical_registry, default_docker_config_dir};
pub use error::{Error, Result};
pub use platform::{Platform, PlatformMatch};
pub use redact::{redact_urls, without_credentials};
pub use reference::Reference;

/// The OCI types used in this API (descriptors, digests), re-exported so callers use the same version.
pub use oci_spec;
