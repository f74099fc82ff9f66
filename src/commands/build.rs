//! `kiln build`.

use super::dockerfile;
use crate::cli::{BuildArgs, GlobalArgs};
use anyhow::bail;
use kiln_frontend::convert;
use kiln_frontend::lint::{self, CheckConfig, LintWarning};
use std::process::ExitCode;

pub fn run(_global: &GlobalArgs, args: BuildArgs) -> anyhow::Result<ExitCode> {
    if !args.check {
        bail!(
            "building images needs the solver, which this version of kiln does not have yet; `kiln build --check` runs the lint checks"
        );
    }
    check(&args)
}

/// `--check`: every lint rule over the Dockerfile and the stages the target needs, then exit.
fn check(args: &BuildArgs) -> anyhow::Result<ExitCode> {
    let path = dockerfile::dockerfile_path(&args.dockerfile);
    let loaded = dockerfile::load(&path)?;
    let config = CheckConfig::from_dockerfile(&loaded.ast)
        .map_err(|e| anyhow::anyhow!("{}: invalid check directive: {e}", loaded.display_name))?;
    let mut warnings: Vec<LintWarning> = lint::lint(&loaded.ast);
    for platform in dockerfile::platforms(&args.dockerfile)? {
        let opts = dockerfile::convert_options(&args.dockerfile, &path, &platform)?;
        let converted = convert::convert(&loaded.ast, &opts, None)
            .map_err(|d| dockerfile::located(d, &loaded.display_name))?;
        warnings.extend(converted.lints);
    }
    warnings.retain(|w| config.enabled(w.rule));
    warnings.sort_by(|a, b| (a.line, a.rule).cmp(&(b.line, b.rule)));
    warnings.dedup();
    for warning in &warnings {
        eprintln!("{}:{warning}", loaded.display_name);
    }
    match warnings.len() {
        0 => eprintln!("Check complete, no warnings found."),
        n => eprintln!(
            "Check complete, {n} warning{} found.",
            if n == 1 { " was" } else { "s were" }
        ),
    }
    Ok(if config.error && !warnings.is_empty() {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    })
}
