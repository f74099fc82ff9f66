//! A Dockerfile as a build request holds it, and what the frontend needs besides: the ignore patterns that
//! apply, the named contexts, the conversion options per platform.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use kiln_frontend::ast::Dockerfile as Ast;
use kiln_frontend::convert::{CONTEXT_NAME, ConvertOptions, NamedContext};
use kiln_frontend::{Diagnostic, dockerignore, parser};
use kiln_llb::Platform;

use crate::{BuildError, BuildRequest};

/// A parsed Dockerfile.
#[derive(Debug, Clone)]
pub struct Dockerfile {
    /// The name errors and warnings give it (`-f`'s path, or `Dockerfile` for standard input).
    pub display_name: String,
    /// The text, for showing the lines of a failed step.
    pub source: String,
    pub ast: Ast,
    /// Where `<Dockerfile>.dockerignore` is looked for; `None` when the Dockerfile has no place (stdin).
    pub path: Option<PathBuf>,
}

impl Dockerfile {
    /// Parses `source`; errors name `display_name` with line and column.
    pub fn parse(
        source: String,
        display_name: &str,
        path: Option<PathBuf>,
    ) -> Result<Dockerfile, BuildError> {
        let ast = parser::parse(&source).map_err(|d| located(d, display_name))?;
        Ok(Dockerfile {
            display_name: display_name.to_string(),
            source,
            ast,
            path,
        })
    }
}

/// A frontend diagnostic with the file name attached, so it prints as `file:line:col`.
pub(crate) fn located(diagnostic: Diagnostic, file: &str) -> BuildError {
    BuildError::Dockerfile(diagnostic.in_file(file))
}

/// A `--build-context NAME=VALUE`, parsed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NamedContextSpec {
    pub name: String,
    pub context: NamedContext,
    /// The directory of a local one, canonical.
    pub dir: Option<PathBuf>,
}

impl NamedContextSpec {
    /// `NAME=DIR`, `NAME=docker-image://REF` or `NAME=oci-layout://DIR[:TAG|@DIGEST]`.
    pub fn parse(raw: &str) -> Result<NamedContextSpec, BuildError> {
        let Some((name, value)) = raw
            .split_once('=')
            .filter(|(n, v)| !n.is_empty() && !v.is_empty())
        else {
            return Err(BuildError::Usage(format!(
                "invalid --build-context {raw:?}: write NAME=PATH, NAME=docker-image://REF or NAME=oci-layout://DIR"
            )));
        };
        let (context, dir) = if let Some(reference) = value.strip_prefix("docker-image://") {
            (NamedContext::Image(reference.to_string()), None)
        } else if let Some(layout) = value.strip_prefix("oci-layout://") {
            let (path, reference) = split_layout_reference(layout);
            let context = NamedContext::OciLayout {
                path: path.to_string(),
                reference: reference.to_string(),
            };
            (context, None)
        } else if value.contains("://") {
            return Err(BuildError::Usage(format!(
                "unsupported --build-context {raw:?}: use a directory, docker-image:// or oci-layout://"
            )));
        } else {
            let dir = std::fs::canonicalize(value)
                .ok()
                .filter(|d| d.is_dir())
                .ok_or_else(|| {
                    BuildError::Usage(format!("--build-context {name}: {value} is not a directory"))
                })?;
            (NamedContext::Local, Some(dir))
        };
        Ok(NamedContextSpec {
            name: name.to_string(),
            context,
            dir,
        })
    }
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

/// The client directories of a build, by the LLB source name the frontend gives them.
pub(crate) fn local_dirs(req: &BuildRequest, context: &Path) -> HashMap<String, PathBuf> {
    let mut dirs: HashMap<String, PathBuf> = req
        .named_contexts
        .iter()
        .filter_map(|c| {
            c.dir
                .as_ref()
                .map(|dir| (format!("{CONTEXT_NAME}:{}", c.name), dir.clone()))
        })
        .collect();
    dirs.insert(CONTEXT_NAME.to_string(), context.to_path_buf());
    dirs
}

/// Frontend options for one platform.
pub(crate) fn convert_options(req: &BuildRequest, platform: &Platform) -> Result<ConvertOptions, BuildError> {
    // A Dockerfile from stdin has no `<name>.dockerignore` beside it: only the context's applies.
    let beside = req
        .dockerfile
        .path
        .clone()
        .unwrap_or_else(|| req.context.join("Dockerfile"));
    let ignore_patterns =
        dockerignore::load_for_build(&req.context, &beside).map_err(|e| BuildError::Usage(e.to_string()))?;
    Ok(ConvertOptions {
        target: req.target.clone(),
        build_args: req.build_args.clone(),
        target_platform: platform.clone(),
        build_platform: Platform::host(),
        named_contexts: req
            .named_contexts
            .iter()
            .map(|c| (c.name.clone(), c.context.clone()))
            .collect(),
        ignore_patterns,
        no_cache: req.no_cache,
        no_cache_filter: req.no_cache_filter.clone(),
        allow: req.allow.clone(),
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
