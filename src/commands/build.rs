//! `kiln build`: Dockerfile → LLB (per platform) → solve → image in the store.

use super::dockerfile::{self, LoadedDockerfile};
use super::images as image_cmds;
use super::output::{self, Kind, Output};
use crate::cli::{BuildArgs, GlobalArgs};
use crate::progress::{self, ProgressMode};
use anyhow::{Context, bail};
use kiln_cache::{Compression, Digest, Store};
use kiln_exporter::ArchiveFormat;
use kiln_exporter::image::{BaseImage, Built, BuiltImage, ImageOptions, build_image, build_index, tag};
use kiln_frontend::convert::{self, Converted};
use kiln_frontend::lint::{self, CheckConfig, LintWarning};
use kiln_solver::base::BaseImages;
use kiln_solver::sandbox::Sandbox;
use kiln_solver::solve::{LayerRef, SolveError, SolveOptions, Solver};
use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Instant;

pub fn run(global: &GlobalArgs, args: BuildArgs) -> anyhow::Result<ExitCode> {
    if args.check {
        return check(&args);
    }
    let started = Instant::now();
    let path = dockerfile::dockerfile_path(&args.dockerfile);
    let loaded = dockerfile::load(&path)?;
    let platforms = dockerfile::platforms(&args.dockerfile)?;
    let labels = key_values(&args.labels, "--label")?;
    let secrets = secrets(&args.secrets)?;
    let mut local_dirs = dockerfile::local_dirs(&args.dockerfile)?;
    let context_dir = std::fs::canonicalize(&args.dockerfile.context)
        .with_context(|| format!("build context {}", args.dockerfile.context.display()))?;
    local_dirs.insert(convert::CONTEXT_NAME.to_string(), context_dir);

    let store = image_cmds::open_store(global)?;
    let lease = store.create_lease()?;
    let leased = store.with_lease(&lease);
    let outcome = build(
        global,
        &args,
        &loaded,
        &platforms,
        labels,
        secrets.paths.clone(),
        local_dirs,
        &leased,
        started,
    );
    // Everything the build made is named (tagged) or recorded in the cache by now.
    if let Err(e) = store.release_lease(&lease) {
        tracing::warn!("releasing the build's lease: {e}");
    }
    outcome
}

#[allow(clippy::too_many_arguments)]
fn build(
    global: &GlobalArgs,
    args: &BuildArgs,
    loaded: &LoadedDockerfile,
    platforms: &[kiln_llb::Platform],
    labels: BTreeMap<String, String>,
    secrets: HashMap<String, PathBuf>,
    local_dirs: HashMap<String, PathBuf>,
    store: &Store,
    started: Instant,
) -> anyhow::Result<ExitCode> {
    let runtime = image_cmds::runtime()?;
    let registry = image_cmds::registry_client(global)?;
    let bases = Arc::new(BaseImages::new(
        store.clone(),
        registry.clone(),
        args.pull,
        runtime.handle().clone(),
    ));
    let path = dockerfile::dockerfile_path(&args.dockerfile);

    // The frontend asks for base image configs synchronously, so it runs on a blocking thread.
    let mut converted: Vec<Converted> = Vec::new();
    for platform in platforms {
        let mut opts = dockerfile::convert_options(&args.dockerfile, &path, platform)?;
        opts.no_cache = args.no_cache;
        opts.no_cache_filter = args.no_cache_filter.clone();
        let ast = loaded.ast.clone();
        let resolver = bases.clone();
        let result = runtime
            .block_on(runtime.spawn_blocking(move || convert::convert(&ast, &opts, Some(&*resolver))))
            .context("converting the Dockerfile")?;
        converted.push(result.map_err(|d| dockerfile::located(d, &loaded.display_name))?);
    }
    report_lints(loaded, &converted)?;
    for unused in converted
        .first()
        .map(|c| c.unused_build_args.clone())
        .unwrap_or_default()
    {
        eprintln!("WARNING: build-arg {unused:?} was not consumed by any stage that was built");
    }

    let (events, receiver) = tokio::sync::mpsc::unbounded_channel();
    let mode = if args.quiet {
        ProgressMode::Quiet
    } else {
        args.progress
    };
    let renderer = runtime.spawn(progress::render(mode, receiver));
    let definitions: Vec<_> = converted.iter().map(|c| c.definition.clone()).collect();
    let options = SolveOptions {
        max_parallelism: args
            .max_parallelism
            .unwrap_or_else(|| std::thread::available_parallelism().map_or(2, |n| n.get())),
        local_dirs,
        secrets,
    };
    let solver = Solver::new(
        store.clone(),
        bases,
        Sandbox::new(),
        options,
        Some(events),
        &definitions,
    );
    let solved: Result<Vec<Vec<LayerRef>>, SolveError> = runtime.block_on(async {
        let roots = converted.iter().map(|c| solver.solve(c.definition.root));
        futures::future::try_join_all(roots).await
    });
    solver.save_indexes();
    let stats = solver.stats();
    drop(solver);
    let solved = match solved {
        Ok(solved) => solved,
        Err(e) => {
            // Steps still running in other branches are not waited for (they hold the progress channel open
            // too): their sandboxes die with kiln.
            renderer.abort();
            eprintln!("{}", render_solve_error(&e, loaded));
            runtime.shutdown_background();
            return Ok(ExitCode::FAILURE);
        }
    };
    let tally = runtime.block_on(renderer).unwrap_or_default();

    let outputs = outputs(args)?;
    let epoch = source_date_epoch(args)?;
    // The image that --iidfile, --metadata-file and the summary speak of: the first image output's.
    let mut result: Option<ImageResult> = None;
    for output in &outputs {
        match &output.kind {
            Kind::Local { dest } => {
                for (c, layers) in converted.iter().zip(&solved) {
                    let dest = if converted.len() > 1 {
                        dest.join(platform_dir(&c.platform))
                    } else {
                        dest.clone()
                    };
                    let snapshots: Vec<_> = layers.iter().map(|l| l.snapshot.clone()).collect();
                    kiln_exporter::output::write_local(store, &snapshots, &dest, epoch)
                        .with_context(|| format!("writing the filesystem to {}", dest.display()))?;
                }
            }
            Kind::Tar { dest } => {
                if converted.len() > 1 {
                    bail!("--output type=tar writes one filesystem; build one --platform at a time");
                }
                for layers in &solved {
                    let snapshots: Vec<_> = layers.iter().map(|l| l.snapshot.clone()).collect();
                    kiln_exporter::output::write_tar(store, &snapshots, dest, epoch)?;
                }
            }
            Kind::Image { names, push } => {
                let push = *push || args.push;
                let output = &image_output(output, push);
                let image = export_all(store, &converted, &solved, output, &labels, epoch, true)?;
                let mut all_names: Vec<String> = args.tags.clone();
                all_names.extend(names.iter().cloned());
                let mut tagged = Vec::new();
                for name in &all_names {
                    tagged.push(tag(store, name, image.built()).with_context(|| format!("tagging {name}"))?);
                }
                if push {
                    if all_names.is_empty() {
                        bail!("--push needs a name: give -t NAME");
                    }
                    let opts = kiln_exporter::PushOptions {
                        compression: output.compression.unwrap_or(Compression::Gzip),
                        level: output.compression_level,
                    };
                    for (name, full) in all_names.iter().zip(&tagged) {
                        let target = kiln_registry::Reference::parse(name)?;
                        let digest = runtime
                            .block_on(kiln_exporter::push_with(
                                store,
                                &registry,
                                full,
                                &target,
                                &opts,
                                |_| {},
                            ))
                            .with_context(|| format!("pushing {name}"))?;
                        eprintln!("Pushed {name}@{digest}");
                    }
                }
                result.get_or_insert(ImageResult { image, names: tagged });
            }
            Kind::Oci { dest, dir } => {
                let image = export_all(store, &converted, &solved, output, &labels, epoch, true)?;
                let (digest, media_type) = image.top();
                kiln_exporter::output::write_image_archive(
                    store,
                    &digest,
                    &media_type,
                    &args.tags,
                    ArchiveFormat::Oci,
                    dest,
                    *dir,
                )?;
                result.get_or_insert(ImageResult {
                    image,
                    names: Vec::new(),
                });
            }
            Kind::Docker { dest } => {
                let image = export_all(store, &converted, &solved, output, &labels, epoch, false)?;
                let (digest, media_type) = image.top();
                kiln_exporter::output::write_image_archive(
                    store,
                    &digest,
                    &media_type,
                    &args.tags,
                    ArchiveFormat::Docker,
                    dest,
                    false,
                )?;
                result.get_or_insert(ImageResult {
                    image,
                    names: Vec::new(),
                });
            }
        }
    }
    let id = result.as_ref().map(|r| r.id());
    if let (Some(file), Some(id)) = (&args.iidfile, id) {
        write_file(file, id.to_string().as_bytes())?;
    }
    if let (Some(file), Some(r)) = (&args.metadata_file, &result) {
        let (digest, media_type) = r.image.top();
        let metadata = serde_json::json!({
            "containerimage.config.digest": r.id().to_string(),
            "containerimage.digest": digest.to_string(),
            "containerimage.descriptor": { "mediaType": media_type, "digest": digest.to_string() },
            "image.name": r.names.join(","),
        });
        write_file(file, serde_json::to_string_pretty(&metadata)?.as_bytes())?;
    }
    if args.quiet {
        if let Some(id) = id {
            println!("{id}");
        }
    } else {
        let steps = tally.steps.max(stats.ran + stats.cached);
        let names = result.as_ref().map(|r| r.names.join(", ")).unwrap_or_default();
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

/// The outputs asked for; with none, the image goes into the store (under `-t` names, if any).
fn outputs(args: &BuildArgs) -> anyhow::Result<Vec<Output>> {
    let mut outputs = args
        .outputs
        .iter()
        .map(|raw| output::parse(raw))
        .collect::<anyhow::Result<Vec<_>>>()?;
    if outputs.is_empty() || (args.push && !outputs.iter().any(|o| matches!(o.kind, Kind::Image { .. }))) {
        outputs.push(Output::image(Vec::new(), args.push));
    }
    Ok(outputs)
}

/// A `type=image` output that only goes into the store, with no compression asked for, keeps the build's
/// layers uncompressed: compressing them is left to whatever ships the image (a push, an export), which
/// does it once per layer and setting. Pushed images are compressed now (gzip unless asked otherwise).
fn image_output(output: &Output, push: bool) -> Output {
    let asked =
        output.compression.is_some() || output.compression_level.is_some() || output.force_compression;
    let mut output = output.clone();
    if !push && !asked {
        output.compression = Some(Compression::None);
    }
    output
}

/// SOURCE_DATE_EPOCH from `--build-arg`, else the environment (which buildx passes on as a build arg too).
fn source_date_epoch(args: &BuildArgs) -> anyhow::Result<Option<u64>> {
    let raw = dockerfile::build_args(&args.dockerfile)?
        .into_iter()
        .rev()
        .find(|(k, _)| k == "SOURCE_DATE_EPOCH")
        .map(|(_, v)| v)
        .or_else(|| std::env::var("SOURCE_DATE_EPOCH").ok());
    match raw.as_deref() {
        None | Some("") => Ok(None),
        Some(value) => value
            .parse()
            .map(Some)
            .with_context(|| format!("invalid SOURCE_DATE_EPOCH {value:?}: give seconds since 1970")),
    }
}

/// `linux_arm64`, `linux_arm_v7`: the per-platform subdirectory of a multi-platform local output (buildx's).
fn platform_dir(platform: &kiln_llb::Platform) -> String {
    platform.to_string().replace('/', "_")
}

/// One platform's image, or an index over several.
enum Exported {
    Image(BuiltImage),
    Index(kiln_exporter::image::BuiltIndex),
}

impl Exported {
    fn built(&self) -> Built<'_> {
        match self {
            Exported::Image(image) => Built::Image(image),
            Exported::Index(index) => Built::Index(index),
        }
    }

    /// The digest and media type of what a name points at.
    fn top(&self) -> (Digest, String) {
        match self {
            Exported::Image(image) => (image.manifest_digest, image.media_type.clone()),
            Exported::Index(index) => (index.digest, index.media_type.clone()),
        }
    }
}

struct ImageResult {
    image: Exported,
    names: Vec<String>,
}

impl ImageResult {
    /// docker's image ID: the config digest of a single-platform image, the index digest of a multi-platform one.
    fn id(&self) -> Digest {
        match &self.image {
            Exported::Image(image) => image.config_digest,
            Exported::Index(index) => index.digest,
        }
    }
}

fn export_all(
    store: &Store,
    converted: &[Converted],
    solved: &[Vec<LayerRef>],
    output: &Output,
    labels: &BTreeMap<String, String>,
    source_date_epoch: Option<u64>,
    oci_default: bool,
) -> anyhow::Result<Exported> {
    let defaults = ImageOptions::default();
    let opts = ImageOptions {
        compression: output.compression.unwrap_or(defaults.compression),
        level: output.compression_level,
        force_compression: output.force_compression,
        oci_mediatypes: output.oci_mediatypes.unwrap_or(oci_default),
        source_date_epoch,
        annotations: output.annotations.clone(),
        labels: labels.clone(),
    };
    let mut built = Vec::new();
    for (c, layers) in converted.iter().zip(solved) {
        built.push(export(store, c, layers, &opts)?);
    }
    if built.len() == 1 {
        return Ok(Exported::Image(built.remove(0)));
    }
    let index = build_index(store, &built, opts.oci_mediatypes, &output.index_annotations)?;
    Ok(Exported::Index(index))
}

/// Writes the image: the base image's blobs as they are, the build's own layers exported from snapshots.
fn export(
    store: &Store,
    c: &Converted,
    layers: &[LayerRef],
    opts: &ImageOptions,
) -> anyhow::Result<BuiltImage> {
    let base_count = layers.iter().take_while(|l| l.blob.is_some()).count();
    let base = match layers[..base_count].last().and_then(|l| l.blob.as_ref()) {
        Some(top) => {
            let base = BaseImage::from_store(store, &top.manifest)?;
            if base.layers.len() != base_count {
                bail!(
                    "internal: the base image {} has {} layers, the build found {base_count}",
                    top.manifest,
                    base.layers.len()
                );
            }
            base
        }
        None => BaseImage::default(),
    };
    let snapshots: Vec<_> = layers[base_count..].iter().map(|l| l.snapshot.clone()).collect();
    Ok(build_image(
        store,
        &base,
        &snapshots,
        &c.image,
        &c.platform,
        opts,
    )?)
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

/// The `--secret`s of a build. Values taken from the environment are written to private files that exist only
/// while the build runs (dropping this removes them), so no secret outlives the build on disk.
struct Secrets {
    paths: HashMap<String, PathBuf>,
    written: Vec<PathBuf>,
}

impl Drop for Secrets {
    fn drop(&mut self) {
        for file in &self.written {
            let _ = std::fs::remove_file(file);
        }
    }
}

/// `--secret id=ID,src=FILE` (or `env=VAR`).
fn secrets(raw: &[String]) -> anyhow::Result<Secrets> {
    let mut secrets = Secrets {
        paths: HashMap::new(),
        written: Vec::new(),
    };
    for (n, spec) in raw.iter().enumerate() {
        let fields: HashMap<&str, &str> = spec.split(',').filter_map(|f| f.split_once('=')).collect();
        let Some(id) = fields.get("id").filter(|i| !i.is_empty()) else {
            bail!("invalid --secret {spec:?}: write id=ID,src=FILE or id=ID,env=VAR");
        };
        let path = if let Some(src) = fields.get("src").or(fields.get("source")) {
            PathBuf::from(src)
        } else {
            let var = fields.get("env").copied().unwrap_or(id);
            let value = std::env::var(var)
                .with_context(|| format!("--secret {id}: environment variable {var} is not set"))?;
            // Named by position, not by id: an id is user text and must not pick the path.
            let file = std::env::temp_dir().join(format!("kiln-secret-{}-{n}", std::process::id()));
            use std::os::unix::fs::OpenOptionsExt;
            let mut f = std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(&file)
                .with_context(|| format!("--secret {id}: creating {}", file.display()))?;
            secrets.written.push(file.clone());
            std::io::Write::write_all(&mut f, value.as_bytes())?;
            file
        };
        if !path.is_file() {
            bail!("--secret {id}: {} is not a file", path.display());
        }
        secrets.paths.insert(id.to_string(), path);
    }
    Ok(secrets)
}

/// A failed build, the way BuildKit shows it: the step, its last output, the Dockerfile lines, the reason.
fn render_solve_error(error: &SolveError, loaded: &LoadedDockerfile) -> String {
    let SolveError::Step {
        description,
        lines,
        message,
        output_tail,
        ..
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
            loaded.display_name
        ));
        let first = start.saturating_sub(2).max(1);
        for (i, text) in loaded
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
    out.push_str(&format!("error: failed to solve: {description}: {message}"));
    out
}

fn report_lints(loaded: &LoadedDockerfile, converted: &[Converted]) -> anyhow::Result<()> {
    let config = CheckConfig::from_dockerfile(&loaded.ast)
        .map_err(|e| anyhow::anyhow!("{}: invalid check directive: {e}", loaded.display_name))?;
    let mut warnings = lint::lint(&loaded.ast);
    for c in converted {
        warnings.extend(c.lints.iter().cloned());
    }
    let warnings = enabled(&config, warnings);
    for warning in &warnings {
        eprintln!("WARNING: {}:{warning}", loaded.display_name);
    }
    if config.error && !warnings.is_empty() {
        bail!("{} lint warning(s) and check=error=true", warnings.len());
    }
    Ok(())
}

fn enabled(config: &CheckConfig, mut warnings: Vec<LintWarning>) -> Vec<LintWarning> {
    warnings.retain(|w| config.enabled(w.rule));
    warnings.sort_by(|a, b| (a.line, a.rule).cmp(&(b.line, b.rule)));
    warnings.dedup();
    warnings
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
    let warnings = enabled(&config, warnings);
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
