//! Media types and the annotations kiln reads and writes, in one place.

use kiln_cache::Compression;

pub use kiln_registry::{
    MEDIA_TYPE_DOCKER_MANIFEST, MEDIA_TYPE_DOCKER_MANIFEST_LIST, MEDIA_TYPE_OCI_INDEX,
    MEDIA_TYPE_OCI_MANIFEST,
};

pub const MEDIA_TYPE_OCI_CONFIG: &str = "application/vnd.oci.image.config.v1+json";
pub const MEDIA_TYPE_DOCKER_CONFIG: &str = "application/vnd.docker.container.image.v1+json";

/// The tag (or full name) of an image in an OCI layout's index.
pub const ANNOTATION_REF_NAME: &str = "org.opencontainers.image.ref.name";
/// The full name containerd (and docker's containerd store) gives an image in an archive.
pub const ANNOTATION_IMAGE_NAME: &str = "io.containerd.image.name";

pub fn is_index(media_type: &str) -> bool {
    media_type == MEDIA_TYPE_OCI_INDEX || media_type == MEDIA_TYPE_DOCKER_MANIFEST_LIST
}

pub fn is_manifest(media_type: &str) -> bool {
    media_type == MEDIA_TYPE_OCI_MANIFEST || media_type == MEDIA_TYPE_DOCKER_MANIFEST
}

/// The layer media type for a compression, in OCI's or docker's vocabulary. Docker's schema 2 has no zstd
/// type; BuildKit's `…tar.zstd` is used, though images with zstd layers are given OCI types.
pub fn layer(compression: Compression, oci: bool) -> &'static str {
    match (compression, oci) {
        (Compression::None, true) => "application/vnd.oci.image.layer.v1.tar",
        (Compression::Gzip, true) => "application/vnd.oci.image.layer.v1.tar+gzip",
        (Compression::Zstd, true) => "application/vnd.oci.image.layer.v1.tar+zstd",
        (Compression::None, false) => "application/vnd.docker.image.rootfs.diff.tar",
        (Compression::Gzip, false) => "application/vnd.docker.image.rootfs.diff.tar.gzip",
        (Compression::Zstd, false) => "application/vnd.docker.image.rootfs.diff.tar.zstd",
    }
}
