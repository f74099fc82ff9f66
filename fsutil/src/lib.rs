//! Files inside a root, for every crate that reads or writes trees it does not trust: build contexts,
//! image layers, stage filesystems, archives.
//!
//! - [`root`]: confined path resolution (`fs.RootPath` semantics) and descriptor-relative file access;
//! - [`ignore`] and [`glob`]: moby's ignore patterns and Go's `filepath.Match`, as BuildKit applies them;
//! - [`select`]: the one file-selection engine — exactly what a COPY reads, for its copy and its cache key;
//! - [`tar`] and [`compress`]: the one extractor of untrusted archives and the one content-sniffing
//!   decompressor;
//! - [`passwd`]: the one reader of an image's /etc/passwd and /etc/group;
//! - [`mount`]: overlayfs, bind and tmpfs mounts through the new mount API.
//!
//! Nothing here knows about Dockerfiles, images or the store.

pub mod compress;
pub mod glob;
pub mod ignore;
pub mod mount;
pub mod passwd;
pub mod root;
pub mod select;
pub mod stat;
pub mod tar;

pub use root::{Owner, Rel, Root};
pub use stat::{Kind, Meta, Ts};
