//! `kiln build`: the flags turned into a [`BuildRequest`], the build run by `kiln_build`, and what comes
//! back rendered: progress, warnings, a failed step with its Dockerfile lines, the summary, `--iidfile` and
//! `--metadata-file`.

use super::dockerfile;
use super::images as image_cmds;
use crate::cli::{BuildArgs, GlobalArgs};
use crate::progress::{self, ProgressMode};
use anyhow::{Context, bail};
use kiln_build::{BuildError, BuildRequest, Builder, Dockerfile};
use kiln_cache::Digest;
use kiln_exporter::output::Dest;
use kiln_exporter::spec::{self, Kind};
use kiln_sandbox::Sandbox;
use kiln_solver::SolveError;
use kiln_solver::executor::{Cancel, SecretBytes};
use kiln_solver::solve::Explanation;
use std::collections::{BTreeMap, HashMap};
use std::io::IsTerminal;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Instant;

pub fn run(global: &GlobalArgs, args: BuildArgs) -> anyhow::Result<ExitCode> {
    let started = Instant::now();
    let req = request(&args)?;
    if args.check {
        return check(&req);
    }
    let store = image_cmds::open_store(global)?;
    let runtime = image_cmds::runtime()?;
    let registry = image_cmds::registry_client(global)?;
    let builder = Builder::new(store, registry, Arc::new(Sandbox::new()));

    let (events, receiver) = tokio::sync::mpsc::unbounded_channel();
    let mode = if args.quiet {
        ProgressMode::Quiet
    } else {
        args.progress
    };
    let renderer = runtime.spawn(progress::render(mode, receiver));
    let cancel = Cancel::default();
    let outcome = runtime.block_on(builder.build(&req, Some(events), &cancel));
    let result = match outcome {
        Ok(result) => result,
        Err(BuildError::Solve(e)) => {
            // Steps cancelled in other branches may still be winding down; they die with kiln.
            renderer.abort();
            eprintln!("{}", render_solve_error(&e, &req.dockerfile));
            runtime.shutdown_background();
            return Ok(ExitCode::FAILURE);
        }
        Err(BuildError::Lint { warnings, count }) => {
            for warning in &warnings {
                eprintln!("WARNING: {warning}");
            }
            bail!("{count} lint warning(s) and check=error=true");
        }
        Err(e) => return Err(e.into()),
    };
    let tally = runtime.block_on(renderer).unwrap_or_default();
    for warning in &result.warnings {
        eprintln!("WARNING: {warning}");
    }
    print_explanations(&result.explanations);
    if let Some(image) = &result.image {
        for (name, digest) in &image.pushed {
            eprintln!("Pushed {name}@{digest}");
        }
    }
    let id = result.image.as_ref().map(|i| i.id);
    if let (Some(file), Some(id)) = (&args.iidfile, id) {
        write_file(file, id.to_string().as_bytes())?;
    }
    if let (Some(file), Some(image)) = (&args.metadata_file, &result.image) {
        let metadata = serde_json::json!({
            "containerimage.config.digest": image.id.to_string(),
            "containerimage.digest": image.digest.to_string(),
            "containerimage.descriptor": { "mediaType": image.media_type, "digest": image.digest.to_string() },
            "image.name": image.names.join(","),
        });
        write_file(file, serde_json::to_string_pretty(&metadata)?.as_bytes())?;
    }
    if args.quiet {
        if let Some(id) = id {
            println!("{id}");
        }
    } else {
        let stats = result.stats;
        let steps = tally.steps.max(stats.ran + stats.cached);
        let names = result
            .image
            .as_ref()
            .map(|i| i.names.join(", "))
            .unwrap_or_default();
        eprintln!(
            "Built {}in {:.1}s ({steps} steps, {} cached){}",
            id.map(|id| format!("{} ", short(&id))).unwrap_or_default(),
            started.elapsed().as_secs_f64(),
            tally.cached.max(stats.cached),
            if names.is_empty() {
                String::new()
            } else {
                format!(": {names}")
            }
        );
    }
    Ok(ExitCode::SUCCESS)
}

fn print_explanations(explanations: &[Explanation]) {
    for explained in explanations {
        eprintln!("CACHE MISS {}", explained.description);
        for reason in &explained.reasons {
            eprintln!("  - {reason}");
        }
    }
}

/// `kiln explain`: the last build's misses, explained against the store's records.
pub fn explain(global: &GlobalArgs) -> anyhow::Result<ExitCode> {
    let store = image_cmds::open_store(global)?;
    match kiln_build::explain_last(&store)? {
        None => {
            eprintln!("The last build ran no step: everything came from the cache (or no build ran yet).")
        }
        Some(explanations) => print_explanations(&explanations),
    }
    Ok(ExitCode::SUCCESS)
}

/// The build the flags ask for.
pub fn request(args: &BuildArgs) -> anyhow::Result<BuildRequest> {
    let mut req = dockerfile::request(&args.dockerfile)?;
    req.labels = key_values(&args.labels, "--label")?;
    req.secrets = secrets(&args.secrets)?;
    req.no_cache = args.no_cache;
    req.no_cache_filter = args.no_cache_filter.clone();
    req.pull = args.pull;
    req.cache_to = args
        .cache_to
        .iter()
        .map(|raw| kiln_remotecache::parse_cache_to(raw))
        .collect::<Result<Vec<_>, _>>()?;
    req.cache_from = args
        .cache_from
        .iter()
        .map(|raw| kiln_remotecache::parse_cache_from(raw))
        .collect::<Result<Vec<_>, _>>()?;
    req.explain_cache = args.explain_cache;
    req.ssh = args
        .ssh
        .iter()
        .map(|raw| kiln_build::SshSpec::parse(raw).map_err(anyhow::Error::msg))
        .collect::<anyhow::Result<_>>()?;
    req.allow = args
        .allow
        .iter()
        .map(|name| name.parse().map_err(|e: String| anyhow::anyhow!("--allow: {e}")))
        .collect::<anyhow::Result<_>>()?;
    req.max_parallelism = args.max_parallelism;
    req.tags = args.tags.clone();
    req.push = args.push;
    req.outputs = args
        .outputs
        .iter()
        .map(|raw| spec::parse(raw))
        .collect::<Result<Vec<_>, _>>()?;
    // Binary output would garble a terminal; buildx refuses it too.
    let to_stdout = req.outputs.iter().any(|o| match &o.kind {
        Kind::Oci { dest, .. } | Kind::Docker { dest } | Kind::Tar { dest } => *dest == Dest::Stdout,
        Kind::Image { .. } | Kind::Local { .. } => false,
    });
    if to_stdout && std::io::stdout().is_terminal() {
        bail!(
            "cannot write an archive to standard output while it is a terminal: redirect it, or give a file as the destination"
        );
    }
    req.source_date_epoch = source_date_epoch(&req.build_args)?;
    Ok(req)
}

/// SOURCE_DATE_EPOCH from `--build-arg`, else the environment (which buildx passes on as a build arg too).
fn source_date_epoch(build_args: &[(String, String)]) -> anyhow::Result<Option<u64>> {
    let raw = build_args
        .iter()
        .rev()
        .find(|(k, _)| k == "SOURCE_DATE_EPOCH")
        .map(|(_, v)| v.clone())
        .or_else(|| std::env::var("SOURCE_DATE_EPOCH").ok());
    match raw.as_deref() {
        None | Some("") => Ok(None),
        Some(value) => value
            .parse()
            .map(Some)
            .with_context(|| format!("invalid SOURCE_DATE_EPOCH {value:?}: give seconds since 1970")),
    }
}

fn short(digest: &Digest) -> String {
    digest.hex().chars().take(12).collect()
}

fn write_file(path: &std::path::Path, bytes: &[u8]) -> anyhow::Result<()> {
    std::fs::write(path, bytes).with_context(|| format!("writing {}", path.display()))
}

fn key_values(raw: &[String], flag: &str) -> anyhow::Result<BTreeMap<String, String>> {
    raw.iter()
        .map(|kv| match kv.split_once('=') {
            Some((k, v)) if !k.is_empty() => Ok((k.to_string(), v.to_string())),
            _ => bail!("invalid {flag} {kv:?}: write KEY=VALUE"),
        })
        .collect()
}

/// `--secret id=ID,src=FILE` (or `env=VAR`, or the environment variable named ID): read now, handed to the
/// build as values, so no secret is ever written to a file of kiln's.
fn secrets(raw: &[String]) -> anyhow::Result<HashMap<String, SecretBytes>> {
    let mut secrets = HashMap::new();
    for spec in raw {
        let fields: HashMap<&str, &str> = spec.split(',').filter_map(|f| f.split_once('=')).collect();
        let Some(id) = fields.get("id").filter(|i| !i.is_empty()) else {
            bail!("invalid --secret {spec:?}: write id=ID,src=FILE or id=ID,env=VAR");
        };
        let value = if let Some(src) = fields.get("src").or(fields.get("source")) {
            let path = std::path::Path::new(src);
            if !path.is_file() {
                bail!("--secret {id}: {} is not a file", path.display());
            }
            std::fs::read(path).with_context(|| format!("--secret {id}: reading {}", path.display()))?
        } else if let Some(var) = fields.get("env") {
            std::env::var(var)
                .with_context(|| format!("--secret {id}: environment variable {var} is not set"))?
                .into_bytes()
        } else if let Some(value) = std::env::var_os(id) {
            // As buildx: `id=ID` alone is the environment variable of that name, else the file of that name.
            value.into_encoded_bytes()
        } else {
            let path = std::path::Path::new(id);
            if !path.is_file() {
                bail!(
                    "--secret {id}: neither an environment variable {id} nor a file ./{id} exists; \
                     write id={id},src=FILE or id={id},env=VAR"
                );
            }
            std::fs::read(path).with_context(|| format!("--secret {id}: reading {}", path.display()))?
        };
        secrets.insert(id.to_string(), SecretBytes(value));
    }
    Ok(secrets)
}

/// A failed build, the way BuildKit shows it: the step, its last output, the Dockerfile lines, the reason.
fn render_solve_error(error: &SolveError, dockerfile: &Dockerfile) -> String {
    let SolveError::Step {
        description,
        lines,
        failure,
        output_tail,
    } = error
    else {
        return format!("error: failed to solve: {error}");
    };
    let mut out = String::new();
    if !output_tail.is_empty() {
        out.push_str(&format!("------\n > {description}:\n"));
        for line in output_tail {
            out.push_str(&format!("{line}\n"));
        }
        out.push_str("------\n");
    }
    if let Some((start, end)) = lines {
        out.push_str(&format!(
            "{}:{start}\n--------------------\n",
            dockerfile.display_name
        ));
        let first = start.saturating_sub(2).max(1);
        for (i, text) in dockerfile
            .source
            .lines()
            .enumerate()
            .skip(first - 1)
            .take(end + 2 - first + 1)
        {
            let number = i + 1;
            let marker = if (*start..=*end).contains(&number) {
                ">>>"
            } else {
                "   "
            };
            out.push_str(&format!(" {number:>3} | {marker} {text}\n"));
        }
        out.push_str("--------------------\n");
    }
    out.push_str(&format!("error: failed to solve: {description}: {failure}"));
    out
}

/// `--check`: every lint rule over the Dockerfile and the stages the target needs, then exit.
fn check(req: &BuildRequest) -> anyhow::Result<ExitCode> {
    let (warnings, error) = kiln_build::check(req)?;
    for warning in &warnings {
        eprintln!("{warning}");
    }
    match warnings.len() {
        0 => eprintln!("Check complete, no warnings found."),
        n => eprintln!(
            "Check complete, {n} warning{} found.",
            if n == 1 { " was" } else { "s were" }
        ),
    }
    Ok(if error && !warnings.is_empty() {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    })
}
