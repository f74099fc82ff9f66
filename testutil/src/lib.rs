//! Test support shared by kiln's crates: a real `docker-registry` (distribution 2.8) on a free loopback port,
//! a fake registry for misbehaviour ([`fake`]), and busybox base images packed into OCI image layouts, so
//! tests need no network.
//!
//! The helpers panic with a descriptive message when the environment lacks a tool: a test cannot
//! proceed without it, and the message says what to install.

pub mod fake;
mod layout;
mod registry;

pub use layout::{
    BUSYBOX_APPLETS, IndexLayout, OciLayout, arm64_busybox, busybox_index_layout, busybox_index_layout_from,
    busybox_oci_layout, busybox_oci_layout_from, sha256_digest,
};
pub use registry::Registry;
