//! Reading a Dockerfile and turning the CLI's build flags into frontend options — shared by `build` and
//! `debug llb` so both see the same graph.

use crate::cli::DockerfileArgs;
use anyhow::{Context, bail};
use kiln_frontend::ast::Dockerfile;
use kiln_frontend::convert::{ConvertOptions, NamedContext};
use kiln_frontend::{Diagnostic, dockerignore, parser};
use kiln_llb::Platform;
use std::collections::HashMap;
use std::path::{Path, PathBuf};

pub struct LoadedDockerfile {
    pub display_name: String,
    /// The text, for showing the lines of a failed step.
    pub source: String,
    pub ast: Dockerfile,
}

/// Where the Dockerfile is: `-f` as given, else `CONTEXT/Dockerfile`.
pub fn dockerfile_path(args: &DockerfileArgs) -> PathBuf {
    args.file
        .clone()
        .unwrap_or_else(|| args.context.join("Dockerfile"))
}

/// Reads and parses the Dockerfile at `path`; `-` reads it from standard input, as `docker build -f -` does.
pub fn load(path: &Path) -> anyhow::Result<LoadedDockerfile> {
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
    let ast = parser::parse(&source).map_err(|d| located(d, &display_name))?;
    Ok(LoadedDockerfile {
        display_name,
        source,
        ast,
    })
}

/// Attaches the file name to a frontend diagnostic so it prints as `file:line:col`.
pub fn located(diagnostic: Diagnostic, file: &str) -> anyhow::Error {
    anyhow::Error::new(diagnostic.in_file(file))
}

pub fn platforms(args: &DockerfileArgs) -> anyhow::Result<Vec<Platform>> {
    if args.platform.is_empty() {
        return Ok(vec![Platform::host()]);
    }
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
pub fn build_args(args: &DockerfileArgs) -> anyhow::Result<Vec<(String, String)>> {
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

/// `--build-context NAME=VALUE` entries, as the frontend substitutes them for images and stages.
pub fn named_contexts(args: &DockerfileArgs) -> anyhow::Result<Vec<(String, NamedContext)>> {
    let mut contexts = Vec::new();
    for raw in &args.build_contexts {
        let Some((name, value)) = raw
            .split_once('=')
            .filter(|(n, v)| !n.is_empty() && !v.is_empty())
        else {
            bail!(
                "invalid --build-context {raw:?}: write NAME=PATH, NAME=docker-image://REF or NAME=oci-layout://DIR"
            );
        };
        let context = if let Some(reference) = value.strip_prefix("docker-image://") {
            NamedContext::Image(reference.to_string())
        } else if let Some(layout) = value.strip_prefix("oci-layout://") {
            let (path, reference) = split_layout_reference(layout);
            NamedContext::OciLayout {
                path: path.to_string(),
                reference: reference.to_string(),
            }
        } else if value.contains("://") {
            bail!("unsupported --build-context {raw:?}: use a directory, docker-image:// or oci-layout://");
        } else {
            let dir = PathBuf::from(value);
            if !dir.is_dir() {
                bail!("--build-context {name}: {value} is not a directory");
            }
            NamedContext::Local
        };
        contexts.push((name.to_string(), context));
    }
    Ok(contexts)
}

/// The local directories of `--build-context NAME=DIR`, by the LLB source name the frontend gives them.
pub fn local_dirs(args: &DockerfileArgs) -> anyhow::Result<HashMap<String, PathBuf>> {
    let mut dirs = HashMap::new();
    for (name, context) in named_contexts(args)? {
        if context == NamedContext::Local
            && let Some((_, value)) = args
                .build_contexts
                .iter()
                .find_map(|raw| raw.split_once('=').filter(|(n, _)| *n == name))
        {
            let dir =
                std::fs::canonicalize(value).with_context(|| format!("--build-context {name}={value}"))?;
            dirs.insert(format!("{}:{name}", kiln_frontend::convert::CONTEXT_NAME), dir);
        }
    }
    Ok(dirs)
}

/// `DIR[:TAG|@DIGEST]`; the tag defaults to `latest`.
fn split_layout_reference(layout: &str) -> (&str, &str) {
    if let Some((path, digest)) = layout.rsplit_once('@') {
        return (path, digest);
    }
    match layout.rsplit_once(':') {
        Some((path, tag)) if !tag.contains('/') && !path.is_empty() => (path, tag),
        _ => (layout, "latest"),
    }
}

/// Frontend options for one platform from the CLI's flags.
pub fn convert_options(
    args: &DockerfileArgs,
    dockerfile: &Path,
    platform: &Platform,
) -> anyhow::Result<ConvertOptions> {
    // A Dockerfile from stdin has no `<name>.dockerignore` beside it: only the context's applies.
    let beside = if dockerfile == Path::new("-") {
        args.context.join("Dockerfile")
    } else {
        dockerfile.to_path_buf()
    };
    let ignore_patterns = dockerignore::load_for_build(&args.context, &beside)?;
    let contexts = named_contexts(args)?;
    Ok(ConvertOptions {
        target: args.target.clone(),
        build_args: build_args(args)?,
        target_platform: platform.clone(),
        build_platform: Platform::host(),
        named_contexts: contexts.into_iter().collect(),
        ignore_patterns,
        no_cache: false,
        no_cache_filter: Vec::new(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layout_references() {
        assert_eq!(split_layout_reference("/x/layout"), ("/x/layout", "latest"));
        assert_eq!(split_layout_reference("/x/layout:v1"), ("/x/layout", "v1"));
        assert_eq!(
            split_layout_reference("/x/layout@sha256:ab"),
            ("/x/layout", "sha256:ab")
        );
    }
}
