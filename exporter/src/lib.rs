//! Exporters: turn images into what users ship (what images are in the store is `kiln_image`'s). [`push()`]
//! sends one to a registry, [`archive`] writes OCI and docker
//! archives and OCI layouts. [`image`] makes images from build results: [`layer`] turns a snapshot into a
//! deterministic layer tar, [`export`] hashes and compresses it into the store once, and the config, manifest
//! and index are written as [`canonical`] JSON. [`output`] is the build's `-o/--output`: a built image as an
//! archive or layout, or its final filesystem (the layer chain merged as overlayfs shows it) as a directory
//! or a tar.

mod atomic;
mod error;

pub mod archive;
pub mod canonical;
pub mod export;
pub mod image;
pub mod layer;
pub mod output;
pub mod push;
mod tree;

pub use archive::{ArchiveFormat, save};
pub use error::{Error, Result};
pub use push::{PushOptions, PushProgress, push, push_with};
