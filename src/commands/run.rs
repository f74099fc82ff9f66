//! `kiln run IMAGE [CMD...]`: runs a command in an image with the sandbox builds use, so users can try what
//! they built. Changes the command makes are thrown away with the run.

use super::images as image_cmds;
use crate::cli::{GlobalArgs, RunArgs};
use anyhow::{Context, bail};
use kiln_image as images;
use kiln_llb::Platform;
use kiln_registry::Reference;
use kiln_sandbox::{ExecSpec, Network, Sandbox};
use std::process::ExitCode;

pub fn run(global: &GlobalArgs, args: RunArgs) -> anyhow::Result<ExitCode> {
    let platform = match &args.platform {
        Some(p) => Platform::parse(p)?,
        None => Platform::host(),
    };
    let store = image_cmds::open_store(global)?;
    let lease = store.create_lease()?;
    let leased = store.with_lease(&lease);
    let outcome = (|| {
        let image = match images::local_image(&leased, &args.image, &platform)? {
            Some(image) => image,
            None => {
                let reference = Reference::parse(&args.image)
                    .with_context(|| format!("no image {:?} in the store", args.image))?;
                let registry = image_cmds::registry_client(global)?;
                image_cmds::runtime()?.block_on(images::resolve_for_build(
                    &leased, &registry, &reference, &platform, false,
                ))?
            }
        };
        let info = kiln_image::config::parse(&image.config, &format!("image {}", args.image))?;
        let snapshots = images::materialize(&leased, &image)?;
        if platform != Platform::host() {
            kiln_sandbox::check_emulation(&platform.architecture)?;
        }
        let config = info.config;
        let mut command = config.entrypoint.clone().unwrap_or_default();
        command.extend(if args.command.is_empty() {
            config.cmd.clone().unwrap_or_default()
        } else {
            args.command.clone()
        });
        if command.is_empty() {
            bail!(
                "image {} has no ENTRYPOINT or CMD: give a command, e.g. `kiln run {} sh`",
                args.image,
                args.image
            );
        }
        let mut env = config.env.clone();
        for entry in &args.env {
            let key = kiln_llb::image::env_key(entry);
            env.retain(|e| kiln_llb::image::env_key(e) != key);
            env.push(if entry.contains('=') {
                entry.clone()
            } else {
                format!("{key}={}", std::env::var(key).unwrap_or_default())
            });
        }
        let network = match args.network.as_str() {
            "default" | "bridge" => Network::Default,
            "host" => Network::Host,
            "none" => Network::None,
            other => bail!("unsupported --network {other:?}: use default, host or none"),
        };
        let prepared = leased.prepare_snapshot()?;
        let spec = ExecSpec {
            lower_dirs: kiln_solver::overlay::lower_dirs(snapshots.iter().map(|s| leased.snapshot_path(s))),
            upper_dir: prepared.upper.clone(),
            work_dir: prepared.work.clone(),
            args: command,
            env,
            cwd: args.workdir.clone().unwrap_or(config.working_dir.clone()),
            user: args.user.clone().unwrap_or(config.user.clone()),
            network,
            init: false,
            ..ExecSpec::default()
        };
        // Ctrl-C belongs to the command in the sandbox; kiln must outlive it to clean up.
        let _ignore = IgnoreInterrupts::new();
        let code = Sandbox::new().run_attached(&spec)?;
        drop(prepared);
        Ok(ExitCode::from(u8::try_from(code.clamp(0, 255)).unwrap_or(1)))
    })();
    if let Err(e) = store.release_lease(&lease) {
        tracing::warn!("releasing the run's lease: {e}");
    }
    outcome
}

struct IgnoreInterrupts(libc::sighandler_t);

impl IgnoreInterrupts {
    fn new() -> Self {
        // SAFETY: installing SIG_IGN has no handler code to race with; the previous disposition is restored.
        IgnoreInterrupts(unsafe { libc::signal(libc::SIGINT, libc::SIG_IGN) })
    }
}

impl Drop for IgnoreInterrupts {
    fn drop(&mut self) {
        // SAFETY: restores the disposition saved in `new`.
        unsafe { libc::signal(libc::SIGINT, self.0) };
    }
}
