//! One module per command group; each turns parsed arguments into calls on the library crates.

mod build;
mod debug;
mod dockerfile;

use crate::cli::{Cli, Command, GlobalArgs};
use std::path::PathBuf;
use std::process::ExitCode;

pub fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    tracing::debug!(root = %store_root(&cli.global).display(), "store");
    match cli.command {
        Command::Build(args) => build::run(&cli.global, args),
        Command::Debug(command) => debug::run(command),
    }
}

/// `--root`, else `$KILN_ROOT`, else `/var/lib/kiln` for root, else the user's data dir.
pub fn store_root(global: &GlobalArgs) -> PathBuf {
    if let Some(root) = &global.root {
        return root.clone();
    }
    if let Some(root) = std::env::var_os("KILN_ROOT").filter(|r| !r.is_empty()) {
        return PathBuf::from(root);
    }
    if rustix::process::geteuid().is_root() {
        return PathBuf::from("/var/lib/kiln");
    }
    let data = std::env::var_os("XDG_DATA_HOME")
        .filter(|d| !d.is_empty())
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".local/share")))
        .unwrap_or_else(|| PathBuf::from("."));
    data.join("kiln")
}
