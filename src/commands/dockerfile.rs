//! The flags every Dockerfile command shares (`build`, `debug llb`) turned into a build request, so both see
//! the same graph.

use crate::cli::DockerfileArgs;
use anyhow::{Context, bail};
use kiln_build::{BuildRequest, Dockerfile, NamedContextSpec};
use kiln_llb::Platform;
use std::path::{Path, PathBuf};

/// Where the Dockerfile is: `-f` as given, else `CONTEXT/Dockerfile`.
pub fn dockerfile_path(args: &DockerfileArgs) -> PathBuf {
    args.file
        .clone()
        .unwrap_or_else(|| args.context.join("Dockerfile"))
}

/// Reads and parses the Dockerfile at `path`; `-` reads it from standard input, as `docker build -f -` does.
pub fn load(path: &Path) -> anyhow::Result<Dockerfile> {
    let from_stdin = path == Path::new("-");
    let display_name = if from_stdin {
        "Dockerfile".to_string()
    } else {
        path.display().to_string()
    };
    let source = if from_stdin {
        let mut bytes = Vec::new();
        std::io::Read::read_to_end(&mut std::io::stdin(), &mut bytes)
            .context("reading the Dockerfile from standard input")?;
        bytes
    } else {
        std::fs::read(path).with_context(|| format!("cannot read Dockerfile {display_name}"))?
    };
    let source = String::from_utf8(source).map_err(|e| {
        anyhow::anyhow!(
            "{display_name}: not valid UTF-8 (byte {})",
            e.utf8_error().valid_up_to()
        )
    })?;
    let beside = (!from_stdin).then(|| path.to_path_buf());
    Ok(Dockerfile::parse(source, &display_name, beside)?)
}

/// The request for the Dockerfile, context, target, build args, platforms and named contexts the flags give.
pub fn request(args: &DockerfileArgs) -> anyhow::Result<BuildRequest> {
    let dockerfile = load(&dockerfile_path(args))?;
    let mut req = BuildRequest::new(dockerfile, args.context.clone());
    req.target = args.target.clone();
    req.build_args = build_args(args)?;
    req.platforms = platforms(args)?;
    req.named_contexts = args
        .build_contexts
        .iter()
        .map(|raw| NamedContextSpec::parse(raw))
        .collect::<Result<_, _>>()?;
    Ok(req)
}

fn platforms(args: &DockerfileArgs) -> anyhow::Result<Vec<Platform>> {
    let mut platforms: Vec<Platform> = Vec::new();
    for raw in &args.platform {
        let platform = Platform::parse(raw)?;
        if !platforms.contains(&platform) {
            platforms.push(platform);
        }
    }
    Ok(platforms)
}

/// `--build-arg KEY=VALUE`, or `KEY` alone to take the value from kiln's environment (as docker does).
fn build_args(args: &DockerfileArgs) -> anyhow::Result<Vec<(String, String)>> {
    let mut out = Vec::new();
    for raw in &args.build_args {
        match raw.split_once('=') {
            Some(("", _)) => bail!("invalid --build-arg {raw:?}: the name is empty (write KEY=VALUE)"),
            Some((key, value)) => out.push((key.to_string(), value.to_string())),
            None => {
                if let Ok(value) = std::env::var(raw) {
                    out.push((raw.clone(), value));
                }
            }
        }
    }
    Ok(out)
}
