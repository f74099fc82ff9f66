//! `kiln`: build container images from Dockerfiles, buildx-style, without a daemon.

mod cli;
mod commands;
mod progress;

use clap::Parser;
use std::process::ExitCode;

fn main() -> ExitCode {
    // The sandbox helper is this binary re-executed; it must start single-threaded, before anything else.
    if std::env::args_os()
        .nth(1)
        .is_some_and(|a| a == kiln_sandbox::SANDBOX_ARG)
    {
        kiln_sandbox::sandbox_main();
    }
    private_mount_namespace();
    let cli = cli::Cli::parse();
    init_logging(cli.global.debug);
    match commands::run(cli) {
        Ok(code) => code,
        Err(err) => {
            eprintln!("error: {}", render_error(&err));
            ExitCode::FAILURE
        }
    }
}

/// The error and its causes on one line, each cause once: kiln's errors carry their cause in their message,
/// and a cause that is also chained as `source()` (from a library's error type) is not repeated.
fn render_error(err: &anyhow::Error) -> String {
    let mut out = String::new();
    for cause in err.chain() {
        let text = cause.to_string();
        if text.is_empty() || out.contains(&text) {
            continue;
        }
        if !out.is_empty() {
            out.push_str(": ");
        }
        out.push_str(&text);
    }
    out
}

fn init_logging(debug: bool) {
    let default = if debug { "debug" } else { "warn" };
    let filter = tracing_subscriber::EnvFilter::try_from_env("KILN_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .init();
}

/// Everything kiln mounts (overlays for file operations, views of other stages) lives in a mount namespace of
/// its own, so it vanishes when kiln exits — even on SIGKILL no mount is left on the host. This must happen
/// while the process is still single-threaded. Without privileges there is nothing to mount anyway, and the
/// commands that need mounts report that themselves.
fn private_mount_namespace() {
    use rustix::mount::{MountPropagationFlags, mount_change};
    // SAFETY: unshare is only unsafe with CLONE_FILES, which is not among the flags.
    if unsafe { rustix::thread::unshare_unsafe(rustix::thread::UnshareFlags::NEWNS) }.is_ok()
        && let Err(e) = mount_change("/", MountPropagationFlags::PRIVATE | MountPropagationFlags::REC)
    {
        tracing::warn!("making kiln's mounts private: {e}");
    }
}
