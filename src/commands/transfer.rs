//! `kiln pull`, `kiln push`, `kiln login`, `kiln logout`, with docker's messages. Transfers draw a bar per
//! blob (bytes, rate) when stderr is a terminal, and print one line per finished blob otherwise.

use std::collections::HashMap;
use std::io::{BufRead, IsTerminal, Read, Write};
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context, bail};
use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};
use kiln_cache::Digest;
use kiln_exporter::PushProgress;
use kiln_image::stored;
use kiln_image::{self as images, PullProgress};
use kiln_registry::{Platform, Reference};

use super::images::{open_store, registry_client, runtime, short_id};
use crate::cli::{GlobalArgs, LoginArgs, PullArgs, PushArgs};

/// Per-blob progress: bars on a terminal, a line per finished blob elsewhere, nothing when quiet.
struct Transfers {
    bars: Option<(MultiProgress, HashMap<Digest, ProgressBar>)>,
    quiet: bool,
}

impl Transfers {
    fn new(quiet: bool) -> Transfers {
        let bars = (!quiet && std::io::stderr().is_terminal()).then(|| {
            (
                MultiProgress::with_draw_target(ProgressDrawTarget::stderr()),
                HashMap::new(),
            )
        });
        Transfers { bars, quiet }
    }

    fn bar(&mut self, digest: &Digest, total: u64) -> Option<&ProgressBar> {
        let (multi, bars) = self.bars.as_mut()?;
        Some(bars.entry(*digest).or_insert_with(|| {
            let bar = multi.add(ProgressBar::new(total));
            bar.set_style(
                ProgressStyle::with_template(
                    "{prefix}: {msg:12} [{bar:30}] {bytes}/{total_bytes} {bytes_per_sec}",
                )
                .unwrap_or_else(|_| ProgressStyle::default_bar())
                .progress_chars("=> "),
            );
            bar.set_prefix(short_id(digest));
            bar.enable_steady_tick(Duration::from_millis(200));
            bar
        }))
    }

    fn update(&mut self, digest: &Digest, current: u64, total: u64, message: &'static str) {
        if let Some(bar) = self.bar(digest, total) {
            bar.set_message(message);
            bar.set_position(current);
        }
    }

    fn finish(&mut self, digest: &Digest, size: u64, message: String) {
        if self.quiet {
            return;
        }
        match self.bar(digest, size) {
            Some(bar) => {
                bar.set_position(size);
                bar.set_style(
                    ProgressStyle::with_template("{prefix}: {msg}")
                        .unwrap_or_else(|_| ProgressStyle::default_bar()),
                );
                bar.finish_with_message(message);
            }
            None => println!("{}: {message}", short_id(digest)),
        }
    }

    fn println(&self, line: &str) {
        if self.quiet {
            return;
        }
        match &self.bars {
            Some((multi, _)) => {
                let _ = multi.println(line);
            }
            None => println!("{line}"),
        }
    }
}

pub fn pull(global: &GlobalArgs, args: PullArgs) -> anyhow::Result<ExitCode> {
    let store = open_store(global)?;
    let registry = registry_client(global)?;
    let reference = Reference::parse(&args.reference)?;
    let platforms = args
        .platform
        .iter()
        .map(|p| p.parse::<Platform>())
        .collect::<Result<Vec<_>, _>>()?;
    let mut out = Transfers::new(args.quiet);
    let last = args.reference.rsplit('/').next().unwrap_or_default();
    if !last.contains([':', '@']) {
        out.println("Using default tag: latest");
    }
    out.println(&format!(
        "{}: Pulling from {}",
        reference.digest().or(reference.tag()).unwrap_or("latest"),
        reference.repository()
    ));
    let pulled =
        runtime()?.block_on(images::pull(
            &store,
            &registry,
            &reference,
            &platforms,
            |event| match event {
                PullProgress::Resolved { .. } => {}
                PullProgress::Exists { digest, size } => out.finish(&digest, size, "Already exists".into()),
                PullProgress::Downloading {
                    digest,
                    received,
                    total,
                } => out.update(&digest, received, total, "Downloading"),
                PullProgress::Downloaded { digest, size } => {
                    out.finish(&digest, size, "Pull complete".into())
                }
            },
        ))?;
    let familiar = stored::familiar_name(&pulled.name);
    out.println(&format!("Digest: {}", pulled.digest));
    if pulled.downloaded == 0 && !pulled.changed {
        out.println(&format!("Status: Image is up to date for {familiar}"));
    } else {
        out.println(&format!("Status: Downloaded newer image for {familiar}"));
    }
    println!("{}", pulled.name);
    Ok(ExitCode::SUCCESS)
}

pub fn push(global: &GlobalArgs, args: PushArgs) -> anyhow::Result<ExitCode> {
    let store = open_store(global)?;
    let registry = registry_client(global)?;
    let target = Reference::parse(&args.reference)?;
    let local = stored::image_name(&target);
    let mut out = Transfers::new(args.quiet);
    out.println(&format!(
        "The push refers to repository [{}]",
        stored::familiar_name(&format!("{}/{}", target.registry(), target.repository()))
    ));
    let tag = target.tag().unwrap_or("latest").to_owned();
    let digest =
        runtime()?.block_on(kiln_exporter::push(
            &store,
            &registry,
            &local,
            &target,
            |event| match event {
                PushProgress::Exists { digest, size } => {
                    out.finish(&digest, size, "Layer already exists".into())
                }
                PushProgress::Mounted { digest, size, from } => {
                    out.finish(&digest, size, format!("Mounted from {from}"))
                }
                PushProgress::Uploading { digest, sent, total } => {
                    out.update(&digest, sent, total, "Pushing")
                }
                PushProgress::Pushed { digest, size } => out.finish(&digest, size, "Pushed".into()),
                PushProgress::Manifest {
                    reference,
                    digest,
                    size,
                } => {
                    if reference == target.to_string() {
                        out.println(&format!("{tag}: digest: {digest} size: {size}"));
                    }
                }
            },
        ))?;
    if args.quiet {
        println!("{digest}");
    }
    Ok(ExitCode::SUCCESS)
}

pub fn login(global: &GlobalArgs, args: LoginArgs) -> anyhow::Result<ExitCode> {
    let server = args.server.unwrap_or_else(|| "docker.io".to_owned());
    let stdin = std::io::stdin();
    let interactive = stdin.is_terminal();
    let username = match args.username {
        Some(u) => u,
        None if interactive && !args.password_stdin => {
            eprint!("Username: ");
            std::io::stderr().flush()?;
            let mut line = String::new();
            stdin.lock().read_line(&mut line)?;
            line.trim().to_owned()
        }
        None => bail!("must provide --username when the password does not come from a terminal"),
    };
    if username.is_empty() {
        bail!("a username is required");
    }
    let password = if args.password_stdin {
        let mut s = String::new();
        stdin
            .lock()
            .read_to_string(&mut s)
            .context("read the password from standard input")?;
        s.trim_end_matches(['\n', '\r']).to_owned()
    } else if let Some(p) = args.password {
        eprintln!("WARNING! Using --password via the CLI is insecure. Use --password-stdin.");
        p
    } else if interactive {
        rpassword::prompt_password("Password: ").context("read the password")?
    } else {
        bail!("no password: use --password-stdin or run on a terminal");
    };
    if password.is_empty() {
        bail!("a password is required");
    }
    let registry = registry_client(global)?;
    runtime()?.block_on(registry.login(&server, &username, &password))?;
    println!("Login Succeeded");
    Ok(ExitCode::SUCCESS)
}

pub fn logout(global: &GlobalArgs, server: Option<String>) -> anyhow::Result<ExitCode> {
    let server = server.unwrap_or_else(|| "docker.io".to_owned());
    let registry = registry_client(global)?;
    if registry.logout(&server)? {
        println!("Removing login credentials for {server}");
    } else {
        println!("Not logged in to {server}");
    }
    Ok(ExitCode::SUCCESS)
}
