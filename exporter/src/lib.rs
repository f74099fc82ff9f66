//! Exporters: turn a build's result into what users ship, one [`Exporter`] per `-o` kind ([`spec`] parses
//! buildx's syntax). [`image`] makes images from build results: [`layer`] turns a snapshot into a
//! deterministic layer tar, [`export`] hashes and compresses it into the store once, and the config, manifest
//! and index are written as [`canonical`] JSON. [`push()`] sends an image to a registry, [`archive`] writes
//! OCI and docker archives and OCI layouts, [`output`] writes a final filesystem (the layer chain merged as
//! overlayfs shows it) as a directory or a tar. What images are in the store is `kiln_image`'s.

mod atomic;
mod error;

pub mod archive;
pub mod canonical;
pub mod export;
mod exporters;
pub mod image;
pub mod layer;
pub mod output;
pub mod push;
pub mod spec;
mod tree;

pub use archive::{ArchiveFormat, save};
pub use error::{Error, Result};
pub use exporters::{ExportInput, ExportedImage, Exporter, PlatformResult};
pub use push::{PushOptions, PushProgress, push, push_with};
