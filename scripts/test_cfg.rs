//! Build script of the crates whose tests need what not every machine has, so those tests are ignored with
//! the reason instead of failing or passing silently:
//! - `kiln_unprivileged` when the tests are built by a user other than root (namespaces, overlayfs, chown
//!   need root): `#[cfg_attr(kiln_unprivileged, ignore = "needs root: ...")]`. CI builds and runs as root.
//! - `kiln_no_conformance` when BuildKit's conformance data is absent. It is looked for in
//!   `$KILN_CONFORMANCE_DIR`, else in `shared/conformance/buildkit` beside the repository (where this
//!   project's CI has it); tests read the path from `env!("KILN_CONFORMANCE_DIR")`.
use std::path::{Path, PathBuf};

fn main() {
    println!("cargo::rustc-check-cfg=cfg(kiln_unprivileged)");
    println!("cargo::rustc-check-cfg=cfg(kiln_no_conformance)");
    println!("cargo::rerun-if-changed=build.rs");
    println!("cargo::rerun-if-env-changed=USER");
    println!("cargo::rerun-if-env-changed=KILN_CONFORMANCE_DIR");
    let root = std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("Uid:"))
                .and_then(|ids| ids.split_whitespace().nth(1).map(|euid| euid == "0"))
        })
        .unwrap_or(false);
    if !root {
        println!("cargo::rustc-cfg=kiln_unprivileged");
    }

    let conformance = std::env::var_os("KILN_CONFORMANCE_DIR")
        .filter(|d| !d.is_empty())
        .map(PathBuf::from)
        .or_else(|| workspace_root().map(|r| r.join("../shared/conformance/buildkit")))
        .unwrap_or_default();
    println!("cargo::rerun-if-changed={}", conformance.display());
    if !conformance.join("parser").is_dir() {
        println!("cargo::rustc-cfg=kiln_no_conformance");
    }
    println!("cargo::rustc-env=KILN_CONFORMANCE_DIR={}", conformance.display());
}

/// The directory holding Cargo.lock, above this crate's manifest.
fn workspace_root() -> Option<PathBuf> {
    let manifest = PathBuf::from(std::env::var_os("CARGO_MANIFEST_DIR")?);
    manifest
        .ancestors()
        .find(|d| d.join("Cargo.lock").is_file())
        .map(Path::to_path_buf)
}
