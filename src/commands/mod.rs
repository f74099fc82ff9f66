//! One module per command group; each turns parsed arguments into calls on the library crates.

mod archive;
mod build;
mod debug;
mod dockerfile;
mod images;
mod run;
mod storage;
mod transfer;

use crate::cli::{Cli, Command, GlobalArgs};
use std::path::PathBuf;
use std::process::ExitCode;

pub fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    tracing::debug!(root = %store_root(&cli.global).display(), "store");
    match cli.command {
        Command::Build(args) => build::run(&cli.global, *args),
        Command::Debug(command) => debug::run(command),
        Command::Run(args) => run::run(&cli.global, args),
        Command::Pull(args) => transfer::pull(&cli.global, args),
        Command::Push(args) => transfer::push(&cli.global, args),
        Command::Login(args) => transfer::login(&cli.global, args),
        Command::Logout { server } => transfer::logout(&cli.global, server),
        Command::Images(args) => images::images(&cli.global, args),
        Command::Tag { source, target } => images::tag(&cli.global, &source, &target),
        Command::Rmi(args) => images::rmi(&cli.global, args),
        Command::Inspect { images: names } => images::inspect(&cli.global, &names),
        Command::Load(args) => archive::load(&cli.global, args),
        Command::Save(args) => archive::save(&cli.global, args),
        Command::Prune(args) => storage::prune(&cli.global, args),
        Command::Du { verbose } => storage::du(&cli.global, verbose),
        Command::Store(crate::cli::StoreCommand::Check { quick, repair }) => {
            storage::check(&cli.global, quick, repair)
        }
        Command::Explain => build::explain(&cli.global),
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
