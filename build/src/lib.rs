//! The library build API: a [`BuildRequest`] (what `docker buildx build`'s flags say) in, a [`BuildResult`]
//! out. It converts the Dockerfile per platform (frontend), solves the graphs together (solver, with the
//! sources and the executor it is given) and hands the result to every output's exporter. The CLI only parses
//! arguments into a request and renders what comes back; a builder daemon or a bake-style multi-target
//! command would call the same [`Builder`].

mod dockerfile;
mod ssh;

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::PathBuf;
use std::sync::Arc;

use kiln_cache::Store;
use kiln_exporter::spec::{Kind, Output};
use kiln_exporter::{ExportInput, ExportedImage, PlatformResult};
use kiln_frontend::Diagnostic;
use kiln_frontend::convert::{self, Converted};
use kiln_frontend::lint::{self, CheckConfig, LintWarning};
use kiln_llb::{Definition, Entitlement, Platform};
use kiln_registry::RegistryClient;
use kiln_remotecache::{CacheFrom, CacheTo, Destination, ExportRequest, Mode};
use kiln_solver::SolveError;
use kiln_solver::executor::{Cancel, Executor, SecretBytes};
use kiln_solver::progress::EventSender;
use kiln_solver::records::{CacheImport, FinishedRecord, Miss};
use kiln_solver::solve::{Explanation, SolveOptions, SolveStats, Solver, SolverParts};
use kiln_solver::source::{BaseImages, HttpSource, ImageSource, LayerRef, LocalSource, Sources};

pub use dockerfile::{Dockerfile, NamedContextSpec};
pub use ssh::SshSpec;

/// What to build, and where the result goes.
#[derive(Debug, Clone)]
pub struct BuildRequest {
    pub dockerfile: Dockerfile,
    /// The build context directory.
    pub context: PathBuf,
    pub named_contexts: Vec<NamedContextSpec>,
    /// `--build-arg`s in the order given; a later one wins.
    pub build_args: Vec<(String, String)>,
    pub target: Option<String>,
    /// Target platforms; empty means the host's.
    pub platforms: Vec<Platform>,
    /// `--label`s for the image config.
    pub labels: BTreeMap<String, String>,
    /// Secrets by id, as values: they reach `RUN --mount=type=secret` in memory, never as files on disk.
    pub secrets: HashMap<String, SecretBytes>,
    pub no_cache: bool,
    pub no_cache_filter: Vec<String>,
    /// Look up base images in their registry even when the store has them.
    pub pull: bool,
    /// How many steps may run at once; `None` for the number of CPU cores.
    pub max_parallelism: Option<usize>,
    /// Where the result goes; none means an image in the store (under `tags`).
    pub outputs: Vec<Output>,
    /// `-t` names.
    pub tags: Vec<String>,
    /// `--push`: image outputs are pushed (and one is added if there is none).
    pub push: bool,
    /// Makes the output reproducible: times in configs and layers are this, in seconds since 1970.
    pub source_date_epoch: Option<u64>,
    /// `--cache-to`: where the build's cache records go.
    pub cache_to: Vec<CacheTo>,
    /// `--cache-from`: caches a miss in the store falls back to, in order.
    pub cache_from: Vec<CacheFrom>,
    /// `--explain-cache`: say why each step that missed did.
    pub explain_cache: bool,
    /// `--allow`: the entitlements RUN steps may use.
    pub allow: BTreeSet<Entitlement>,
    /// `--ssh`: the agents RUN --mount=type=ssh may use.
    pub ssh: Vec<SshSpec>,
}

impl BuildRequest {
    /// A request for the Dockerfile `dockerfile` in `context` with every option at its default.
    pub fn new(dockerfile: Dockerfile, context: PathBuf) -> BuildRequest {
        BuildRequest {
            dockerfile,
            context,
            named_contexts: Vec::new(),
            build_args: Vec::new(),
            target: None,
            platforms: Vec::new(),
            labels: BTreeMap::new(),
            secrets: HashMap::new(),
            no_cache: false,
            no_cache_filter: Vec::new(),
            pull: false,
            max_parallelism: None,
            outputs: Vec::new(),
            tags: Vec::new(),
            push: false,
            source_date_epoch: None,
            cache_to: Vec::new(),
            cache_from: Vec::new(),
            explain_cache: false,
            allow: BTreeSet::new(),
            ssh: Vec::new(),
        }
    }

    fn platforms(&self) -> Vec<Platform> {
        match self.platforms.is_empty() {
            true => vec![Platform::host()],
            false => self.platforms.clone(),
        }
    }

    /// The outputs asked for; with none, the image goes into the store (under `-t` names, if any), and
    /// `--push` without an image output adds one.
    fn outputs(&self) -> Vec<Output> {
        let mut outputs = self.outputs.clone();
        if outputs.is_empty() || (self.push && !outputs.iter().any(|o| matches!(o.kind, Kind::Image { .. })))
        {
            outputs.push(Output::image(Vec::new(), self.push));
        }
        outputs
    }
}

/// What a build made.
#[derive(Debug, Clone, Default)]
pub struct BuildResult {
    /// The image the first image output wrote: what `--iidfile` and `--metadata-file` speak of.
    pub image: Option<ExportedImage>,
    pub stats: SolveStats,
    /// Lint findings of the enabled rules, build args no stage used, caches that could not be used, each
    /// one line.
    pub warnings: Vec<String>,
    /// With `explain_cache`: why each step that missed the cache did.
    pub explanations: Vec<Explanation>,
}

#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    /// The Dockerfile is wrong; the diagnostic says where (file:line:col) and what to do.
    #[error("{0}")]
    Dockerfile(Diagnostic),
    /// A flag or option that does not make sense; the message says what to write instead.
    #[error("{0}")]
    Usage(String),
    /// `# check=error=true` and the lint rules found something.
    #[error("{count} lint warning(s) and check=error=true")]
    Lint { count: usize, warnings: Vec<String> },
    #[error(transparent)]
    Solve(SolveError),
    #[error(transparent)]
    Export(#[from] kiln_exporter::Error),
    #[error(transparent)]
    Store(#[from] kiln_cache::Error),
    /// A `--cache-to` failed (and `ignore-error=true` was not given).
    #[error("exporting the build cache to {destination}: {source}")]
    CacheExport {
        destination: String,
        source: Box<kiln_remotecache::Error>,
    },
}

/// Builds on one store, pulling and pushing through one registry client, running RUN steps with one
/// executor.
pub struct Builder {
    store: Store,
    registry: RegistryClient,
    executor: Arc<dyn Executor>,
}

impl Builder {
    pub fn new(store: Store, registry: RegistryClient, executor: Arc<dyn Executor>) -> Builder {
        Builder {
            store,
            registry,
            executor,
        }
    }

    /// Runs the build. Progress goes to `events` as it happens; setting `cancel` stops the build (its
    /// running steps are killed) with [`SolveError::Cancelled`].
    pub async fn build(
        &self,
        req: &BuildRequest,
        events: Option<EventSender>,
        cancel: &Cancel,
    ) -> Result<BuildResult, BuildError> {
        let lease = self.store.create_lease()?;
        let store = self.store.with_lease(&lease);
        let outcome = self.build_leased(&store, req, events, cancel).await;
        // Everything the build made is named (tagged) or recorded in the cache by now.
        if let Err(e) = self.store.release_lease(&lease) {
            tracing::warn!("releasing the build's lease: {e}");
        }
        outcome
    }

    async fn build_leased(
        &self,
        store: &Store,
        req: &BuildRequest,
        events: Option<EventSender>,
        cancel: &Cancel,
    ) -> Result<BuildResult, BuildError> {
        let context = std::fs::canonicalize(&req.context)
            .map_err(|e| BuildError::Usage(format!("build context {}: {e}", req.context.display())))?;
        let ssh = ssh::agents(&req.ssh).map_err(BuildError::Usage)?;
        let outputs = req.outputs();
        // The cache descriptions are fetched while the Dockerfile is converted.
        let imports = {
            let (store, registry) = (store.clone(), self.registry.clone());
            let (from, platforms) = (req.cache_from.clone(), req.platforms());
            tokio::spawn(async move { open_imports(&store, &registry, &from, &platforms).await })
        };
        let bases = Arc::new(BaseImages::new(
            store.clone(),
            self.registry.clone(),
            req.pull,
            tokio::runtime::Handle::current(),
        ));
        let converted = convert_all(req, Some(bases.clone())).await?;
        let mut warnings = lint_warnings(&req.dockerfile, &converted)?;
        for unused in converted
            .first()
            .map(|c| c.unused_build_args.clone())
            .unwrap_or_default()
        {
            warnings.push(format!(
                "build-arg {unused:?} was not consumed by any stage that was built"
            ));
        }

        let mut sources = Sources::new();
        let images = Arc::new(ImageSource(bases));
        sources
            .register("image", images.clone())
            .register("oci-layout", images)
            .register(
                "local",
                Arc::new(LocalSource::new(dockerfile::local_dirs(req, &context))),
            )
            .register("http", Arc::new(HttpSource::new(store.clone())));
        let (imports, import_warnings) = imports.await.unwrap_or_default();
        warnings.extend(import_warnings);
        let definitions: Vec<Definition> = converted.iter().map(|c| c.definition.clone()).collect();
        let cache_mounts = cache_mount_ids(&definitions);
        let parts = SolverParts {
            store: store.clone(),
            sources,
            executor: self.executor.clone(),
            options: SolveOptions {
                max_parallelism: req
                    .max_parallelism
                    .unwrap_or_else(|| std::thread::available_parallelism().map_or(2, |n| n.get())),
                secrets: req.secrets.clone(),
                ssh,
                explain: req.explain_cache,
            },
            events,
            cancel: cancel.clone(),
            imports,
        };
        let solver = Solver::new(parts, &definitions).map_err(BuildError::Solve)?;
        let solved =
            futures::future::try_join_all(converted.iter().map(|c| solver.solve(c.definition.root))).await;
        solver.save_indexes();
        let stats = solver.stats();
        let finished = solver.finished();
        let explanations = solver.explanations();
        drop(solver);
        record_misses(store, &finished);
        let solved = match solved {
            Ok(solved) => solved,
            Err(error) => {
                for warning in self.export_failed(store, req, &finished, &cache_mounts).await {
                    tracing::warn!("{warning}");
                }
                return Err(BuildError::Solve(error));
            }
        };

        let inline = req
            .cache_to
            .iter()
            .any(|to| to.destination == Destination::Inline);
        let platforms: Vec<PlatformResult> = converted
            .iter()
            .zip(&solved)
            .map(|(c, layers)| {
                let mut result = platform_result(c, layers);
                if inline && let Some(description) = kiln_remotecache::inline_description(&finished, layers) {
                    result
                        .config_extra
                        .insert(kiln_remotecache::description::INLINE_KEY.to_string(), description);
                }
                result
            })
            .collect();
        let report = |step: String| tracing::info!("{step}");
        let input = ExportInput {
            store,
            registry: &self.registry,
            platforms: &platforms,
            tags: &req.tags,
            labels: &req.labels,
            source_date_epoch: req.source_date_epoch,
            report: &report,
        };
        let mut image = None;
        for output in &outputs {
            let exported = output.exporter(req.push).export(&input).await?;
            if image.is_none() {
                image = exported;
            }
        }
        let image_names = image_names(req, &outputs);
        for to in req
            .cache_to
            .iter()
            .filter(|to| to.destination != Destination::Inline)
        {
            let export = ExportRequest {
                store,
                registry: &self.registry,
                records: &finished,
                finals: &solved,
                source_date_epoch: req.source_date_epoch,
                image_names: &image_names,
                cache_mounts: &cache_mounts,
            };
            match kiln_remotecache::export(to, &export).await {
                Ok(summary) => tracing::info!(
                    "exported the build cache to {}: {} records, {} layers",
                    destination_name(to),
                    summary.records,
                    summary.layers
                ),
                Err(e) if to.ignore_error => {
                    warnings.push(format!(
                        "exporting the build cache to {} failed (ignore-error=true): {e}",
                        destination_name(to)
                    ));
                }
                Err(source) => {
                    return Err(BuildError::CacheExport {
                        destination: destination_name(to),
                        source: Box::new(source),
                    });
                }
            }
        }
        Ok(BuildResult {
            image,
            stats,
            warnings,
            explanations,
        })
    }

    /// A failed build has no final image, so each `--cache-to` (but inline) gets every step that finished,
    /// whatever its mode: the next build skips them. Returns what happened, as warnings.
    async fn export_failed(
        &self,
        store: &Store,
        req: &BuildRequest,
        finished: &[FinishedRecord],
        cache_mounts: &[String],
    ) -> Vec<String> {
        let mut warnings = Vec::new();
        for to in req
            .cache_to
            .iter()
            .filter(|to| to.destination != Destination::Inline)
        {
            let to = CacheTo {
                mode: Mode::Max,
                ..to.clone()
            };
            let export = ExportRequest {
                store,
                registry: &self.registry,
                records: finished,
                finals: &[],
                source_date_epoch: req.source_date_epoch,
                image_names: &req.tags,
                cache_mounts,
            };
            warnings.push(match kiln_remotecache::export(&to, &export).await {
                Ok(summary) => format!(
                    "the build failed; exported the cache of the {} steps that finished to {}",
                    summary.records,
                    destination_name(&to)
                ),
                Err(e) => format!(
                    "the build failed, and exporting its cache to {} failed too: {e}",
                    destination_name(&to)
                ),
            });
        }
        warnings
    }
}

/// Remembers which steps ran, for `kiln explain`; failing to is not worth failing the build over.
fn record_misses(store: &Store, finished: &[FinishedRecord]) {
    let misses: Vec<Miss> = finished
        .iter()
        .filter(|f| f.ran)
        .map(|f| Miss {
            key: f.key.clone(),
            inputs: f.inputs.clone(),
        })
        .collect();
    let bytes = (!misses.is_empty()).then(|| serde_json::to_vec(&misses).unwrap_or_default());
    if let Err(e) = store.set_last_build_misses(bytes.as_deref()) {
        tracing::warn!("{e}");
    }
}

/// `kiln explain`: why each step the last build on `store` ran had no cache record, against the store's
/// records of the same step (those the build itself wrote left out).
pub fn explain_last(store: &Store) -> Result<Option<Vec<Explanation>>, BuildError> {
    let Some(bytes) = store.last_build_misses()? else {
        return Ok(None);
    };
    let misses: Vec<Miss> = serde_json::from_slice(&bytes)
        .map_err(|e| BuildError::Usage(format!("the store's record of the last build is unreadable: {e}")))?;
    let own: std::collections::HashSet<String> = misses.iter().map(|m| m.key.clone()).collect();
    let known = kiln_solver::records::recorded_inputs(store, &own)?;
    Ok(Some(
        misses
            .iter()
            .filter(|m| !m.inputs.description.is_empty())
            .map(|m| Explanation {
                description: m.inputs.description.clone(),
                reasons: kiln_solver::records::explain(
                    &m.inputs,
                    known.get(&m.inputs.step).map_or(&[][..], Vec::as_slice),
                ),
            })
            .collect(),
    ))
}

/// Opens each `--cache-from` in order; one that cannot be used is a warning, and the build goes on
/// without it.
async fn open_imports(
    store: &Store,
    registry: &RegistryClient,
    from: &[CacheFrom],
    platforms: &[Platform],
) -> (Vec<Arc<dyn CacheImport>>, Vec<String>) {
    let opened = futures::future::join_all(
        from.iter()
            .map(|f| kiln_remotecache::open(f, store, registry, platforms)),
    )
    .await;
    let mut imports: Vec<Arc<dyn CacheImport>> = Vec::new();
    let mut warnings = Vec::new();
    for (f, result) in from.iter().zip(opened) {
        match result {
            Ok(caches) => imports.extend(caches.into_iter().map(|c| Arc::new(c) as Arc<dyn CacheImport>)),
            Err(reason) => warnings.push(format!(
                "--cache-from {}: {reason}; building without it",
                f.name()
            )),
        }
    }
    (imports, warnings)
}

fn destination_name(to: &CacheTo) -> String {
    match &to.destination {
        Destination::Registry { reference, .. } => reference.clone(),
        Destination::Local { dest, .. } => dest.display().to_string(),
        Destination::Inline => "the image config".to_string(),
    }
}

/// The ids of the cache mounts the build's RUN steps use, once each.
fn cache_mount_ids(definitions: &[Definition]) -> Vec<String> {
    let mut ids = std::collections::BTreeSet::new();
    for vertex in definitions.iter().flat_map(|d| &d.vertices) {
        if let kiln_llb::Op::Exec(exec) = &vertex.op {
            for mount in &exec.mounts {
                if let kiln_llb::MountKind::Cache { id, .. } = &mount.kind {
                    ids.insert(id.clone());
                }
            }
        }
    }
    ids.into_iter().collect()
}

/// The names the build's images get: where a registry export can mount blobs from.
fn image_names(req: &BuildRequest, outputs: &[Output]) -> Vec<String> {
    let mut names = req.tags.clone();
    for output in outputs {
        if let Kind::Image { names: more, .. } = &output.kind {
            names.extend(more.iter().cloned());
        }
    }
    names
}

/// The graphs of a build, one per platform, without resolving any base image: what `kiln debug llb` shows.
pub async fn definitions(req: &BuildRequest) -> Result<Vec<Definition>, BuildError> {
    Ok(convert_all(req, None)
        .await?
        .into_iter()
        .map(|c| c.definition)
        .collect())
}

/// `--check`: the lint findings over the Dockerfile and the stages the target needs, and whether
/// `# check=error=true` makes them fail the build.
pub fn check(req: &BuildRequest) -> Result<(Vec<String>, bool), BuildError> {
    let mut converted = Vec::new();
    for platform in req.platforms() {
        let opts = dockerfile::convert_options(req, &platform)?;
        let result = convert::convert(&req.dockerfile.ast, &opts, None)
            .map_err(|d| dockerfile::located(d, &req.dockerfile.display_name))?;
        converted.push(result);
    }
    let config = check_config(&req.dockerfile)?;
    Ok((enabled(&req.dockerfile, &config, &converted), config.error))
}

/// The frontend asks the resolver for base image configs synchronously, so it runs on a blocking thread.
async fn convert_all(
    req: &BuildRequest,
    resolver: Option<Arc<BaseImages>>,
) -> Result<Vec<Converted>, BuildError> {
    let mut converted = Vec::new();
    for platform in req.platforms() {
        let opts = dockerfile::convert_options(req, &platform)?;
        let ast = req.dockerfile.ast.clone();
        let resolver = resolver.clone();
        let result = tokio::task::spawn_blocking(move || {
            let resolver = resolver
                .as_deref()
                .map(|r| r as &dyn kiln_llb::image::ImageResolver);
            convert::convert(&ast, &opts, resolver)
        })
        .await
        .map_err(|e| BuildError::Usage(format!("converting the Dockerfile: {e}")))?;
        converted.push(result.map_err(|d| dockerfile::located(d, &req.dockerfile.display_name))?);
    }
    Ok(converted)
}

fn check_config(dockerfile: &Dockerfile) -> Result<CheckConfig, BuildError> {
    CheckConfig::from_dockerfile(&dockerfile.ast).map_err(|e| {
        BuildError::Usage(format!(
            "{}: invalid check directive: {e}",
            dockerfile.display_name
        ))
    })
}

/// The enabled lint findings, one line each (`file:line ...`), in Dockerfile order.
fn enabled(dockerfile: &Dockerfile, config: &CheckConfig, converted: &[Converted]) -> Vec<String> {
    let mut warnings: Vec<LintWarning> = lint::lint(&dockerfile.ast);
    for c in converted {
        warnings.extend(c.lints.iter().cloned());
    }
    warnings.retain(|w| config.enabled(w.rule));
    warnings.sort_by(|a, b| (a.line, a.rule).cmp(&(b.line, b.rule)));
    warnings.dedup();
    warnings
        .iter()
        .map(|w| format!("{}:{w}", dockerfile.display_name))
        .collect()
}

/// A build's lint findings; an error when `# check=error=true` and there are any.
fn lint_warnings(dockerfile: &Dockerfile, converted: &[Converted]) -> Result<Vec<String>, BuildError> {
    let config = check_config(dockerfile)?;
    let warnings = enabled(dockerfile, &config, converted);
    if config.error && !warnings.is_empty() {
        return Err(BuildError::Lint {
            count: warnings.len(),
            warnings,
        });
    }
    Ok(warnings)
}

/// What the exporters need of one platform's solved layers: the base image's come first, with the blobs
/// they came from.
fn platform_result(c: &Converted, layers: &[LayerRef]) -> PlatformResult {
    let base_layers = layers.iter().take_while(|l| l.blob.is_some()).count();
    PlatformResult {
        platform: c.platform.clone(),
        image: c.image.clone(),
        base_manifest: layers[..base_layers]
            .last()
            .and_then(|l| l.blob.as_ref())
            .map(|b| b.manifest),
        base_layers,
        layers: layers.iter().map(|l| l.snapshot.clone()).collect(),
        config_extra: BTreeMap::new(),
    }
}
