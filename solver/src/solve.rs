//! Scheduling and running an LLB graph.
//!
//! Two passes over the graph, both memoised per vertex so identical vertices (same digest) run once:
//! - **keys** (cheap, no execution): `blake3(version, vertex digest, input keys, content parts)`, where the
//!   content parts are what a [`Source`](crate::source::Source) says decides its content (a base image's
//!   manifest digest) and the hash of exactly the context files an op reads;
//! - **results**, top-down: a vertex whose key has a cache record is done without looking at its inputs, so a
//!   rebuild with nothing changed pulls, unpacks and runs nothing. Only on a miss are the inputs solved
//!   (concurrently) and the op run, holding one of `max_parallelism` permits while it runs.
//!
//! Fail-fast, as BuildKit: the first step that fails stops the build; steps still running elsewhere are
//! cancelled (their commands killed) rather than waited for.

use std::collections::{HashMap, VecDeque};
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use futures::future::{BoxFuture, FutureExt, try_join_all};
use kiln_cache::{CacheRecord, Store};
use kiln_llb::{Definition, Digest, FileAction, Input, MountKind, Op, Platform};
use tokio::sync::{OnceCell, Semaphore};

use crate::context::ContextHasher;
use crate::executor::{Cancel, Executor, SecretBytes, SshAgent};
use crate::fileop;
use crate::graph::Graph;
use crate::progress::{Event, EventSender};
use crate::records::{self, CacheHit, CacheImport, FinishedRecord, KeyInputs};
use crate::source::{LayerRef, Loaded, Sources};
use crate::{SolveError, StepFailure, ops};

/// Bumped whenever what a key covers changes, so old cache records stop matching instead of lying.
const CACHE_KEY_VERSION: &str = "kiln-cache-v2";

/// How many lines of a failed step's output the error repeats.
const OUTPUT_TAIL_LINES: usize = 20;

#[derive(Debug, Clone, Default)]
pub struct SolveOptions {
    pub max_parallelism: usize,
    /// Secrets for `RUN --mount=type=secret`, by id. Their contents never enter keys, layers or the disk.
    pub secrets: HashMap<String, SecretBytes>,
    /// SSH agents for `RUN --mount=type=ssh`, by id.
    pub ssh: HashMap<String, Arc<dyn SshAgent>>,
    /// Say for every step that misses why (`--explain-cache`).
    pub explain: bool,
}

/// Why one step missed the cache.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Explanation {
    pub description: String,
    pub reasons: Vec<String>,
}

type Shared<T> = Result<Arc<T>, SolveError>;

/// One context hasher per client directory, opened on first use.
type HasherCell = Arc<OnceCell<Result<Arc<ContextHasher>, SolveError>>>;

/// The solver for one build. Cheap to share: everything lives behind an `Arc`.
#[derive(Clone)]
pub struct Solver {
    inner: Arc<Inner>,
}

pub(crate) struct Inner {
    pub store: Store,
    sources: Sources,
    pub executor: Arc<dyn Executor>,
    pub options: SolveOptions,
    events: Option<EventSender>,
    pub cancel: Cancel,
    permits: Semaphore,
    next_step: AtomicUsize,
    pub graph: Graph,
    keys: Vec<OnceCell<Result<blake3::Hash, SolveError>>>,
    results: Vec<OnceCell<Shared<Loaded>>>,
    hashers: Mutex<HashMap<PathBuf, HasherCell>>,
    /// Caches from elsewhere, asked in order when the store has no record.
    imports: Vec<Arc<dyn CacheImport>>,
    /// What went wrong with them so far, each said once.
    import_failures: Mutex<std::collections::HashSet<String>>,
    /// Steps with a result, by key, in the order they finished.
    finished: Mutex<Vec<FinishedRecord>>,
    /// The inputs of the store's records by step, read once when the first miss is explained.
    local_inputs: OnceCell<HashMap<String, Vec<KeyInputs>>>,
    explanations: Mutex<Vec<(usize, Explanation)>>,
    /// Vertices that ran or came from the cache, for the progress summary.
    ran: AtomicUsize,
    cached: AtomicUsize,
}

/// What a solve reports besides its results.
#[derive(Debug, Clone, Copy, Default)]
pub struct SolveStats {
    pub ran: usize,
    pub cached: usize,
}

/// What the solver needs from the build around it.
pub struct SolverParts {
    pub store: Store,
    pub sources: Sources,
    pub executor: Arc<dyn Executor>,
    pub options: SolveOptions,
    pub events: Option<EventSender>,
    /// Set by the caller to stop the build; the solver sets it too when a step fails (fail-fast).
    pub cancel: Cancel,
    /// Caches from elsewhere (`--cache-from`), asked in order when the store has no record for a key.
    pub imports: Vec<Arc<dyn CacheImport>>,
}

impl Solver {
    /// A solver over the union of `definitions` (one per platform of a multi-platform build: vertices they
    /// share, such as a `--platform=$BUILDPLATFORM` stage, are solved once).
    pub fn new(parts: SolverParts, definitions: &[Definition]) -> Result<Self, SolveError> {
        let graph = Graph::new(definitions)?;
        let count = graph.vertices.len();
        let permits = Semaphore::new(parts.options.max_parallelism.max(1));
        Ok(Solver {
            inner: Arc::new(Inner {
                store: parts.store,
                sources: parts.sources,
                executor: parts.executor,
                options: parts.options,
                events: parts.events,
                cancel: parts.cancel,
                permits,
                next_step: AtomicUsize::new(1),
                graph,
                keys: (0..count).map(|_| OnceCell::new()).collect(),
                results: (0..count).map(|_| OnceCell::new()).collect(),
                hashers: Mutex::new(HashMap::new()),
                imports: parts.imports,
                import_failures: Mutex::default(),
                finished: Mutex::new(Vec::new()),
                local_inputs: OnceCell::new(),
                explanations: Mutex::new(Vec::new()),
                ran: AtomicUsize::new(0),
                cached: AtomicUsize::new(0),
            }),
        })
    }

    /// Solves `root` (an output of a definition given to [`Solver::new`]) to layers, bottom to top. `None`
    /// is the empty filesystem.
    pub async fn solve(&self, root: Option<Input>) -> Result<Vec<LayerRef>, SolveError> {
        let Some(root) = root else { return Ok(Vec::new()) };
        let idx = self.inner.position(&root.vertex)?;
        let result = self.inner.clone().result(idx).await;
        if result.is_err() {
            // Fail fast: whatever still runs in other branches is stopped, not waited for.
            self.inner.cancel.cancel();
        }
        match &*result? {
            Loaded::Layers(layers) => Ok(layers.clone()),
            Loaded::Dir { path, .. } => Err(SolveError::Graph(format!(
                "the build result is a client directory ({}), not a filesystem",
                path.display()
            ))),
        }
    }

    /// Stops the build: steps that are running are killed, no new one starts, and `solve` returns
    /// [`SolveError::Cancelled`].
    pub fn cancel(&self) {
        self.inner.cancel.cancel();
    }

    pub fn stats(&self) -> SolveStats {
        SolveStats {
            ran: self.inner.ran.load(Ordering::Relaxed),
            cached: self.inner.cached.load(Ordering::Relaxed),
        }
    }

    /// The steps that have a result, run or from a cache, in the order they finished: what `--cache-to`
    /// exports. Complete after [`Solver::solve`] returns, also when it failed.
    pub fn finished(&self) -> Vec<FinishedRecord> {
        lock(&self.inner.finished).clone()
    }

    /// Why each step that missed the cache did, with [`SolveOptions::explain`].
    pub fn explanations(&self) -> Vec<Explanation> {
        let mut explained = lock(&self.inner.explanations).clone();
        // In graph order (inputs first), not in the top-down order the misses were found in.
        explained.sort_by_key(|(idx, _)| *idx);
        explained.into_iter().map(|(_, e)| e).collect()
    }

    /// Saves what the context hashers learned (stat indexes), so the next build re-checks with stats alone.
    pub fn save_indexes(&self) {
        let hashers: Vec<_> = self
            .inner
            .hashers
            .lock()
            .map(|h| h.values().cloned().collect())
            .unwrap_or_default();
        for cell in hashers {
            if let Some(Ok(hasher)) = cell.get()
                && let Err(e) = hasher.save_index()
            {
                tracing::warn!("saving the context index: {e}");
            }
        }
    }
}

/// What of a client directory an op reads, for its cache key.
enum ContextSelection {
    /// A COPY/ADD's sources.
    Copy(kiln_llb::Copy),
    /// A `RUN --mount=type=bind` of this path and everything below it.
    Bind(String),
}

impl Inner {
    fn position(&self, digest: &Digest) -> Result<usize, SolveError> {
        self.graph
            .position(digest)
            .ok_or_else(|| SolveError::Graph(format!("the graph has no vertex {digest}")))
    }

    fn platform(&self, idx: usize) -> Platform {
        self.graph.vertices[idx]
            .platform
            .clone()
            .unwrap_or_else(Platform::host)
    }

    pub fn emit(&self, event: Event) {
        if let Some(events) = &self.events {
            // A renderer that went away must not stop the build.
            let _ = events.send(event);
        }
    }

    pub fn step_error(&self, idx: usize, failure: impl Into<StepFailure>) -> SolveError {
        self.step_failure(idx, failure.into(), Vec::new())
    }

    pub fn step_failure(&self, idx: usize, failure: StepFailure, output_tail: Vec<String>) -> SolveError {
        let v = &self.graph.vertices[idx];
        if let StepFailure::Exec(e) = &failure
            && matches!(**e, crate::executor::ExecError::Cancelled)
        {
            return SolveError::Cancelled;
        }
        SolveError::Step {
            description: v.meta.description.clone(),
            lines: v.meta.lines,
            failure,
            output_tail,
        }
    }

    // ---- keys -------------------------------------------------------------------------------------------

    fn key(self: Arc<Self>, idx: usize) -> BoxFuture<'static, Result<blake3::Hash, SolveError>> {
        async move {
            let this = self.clone();
            self.keys[idx].get_or_init(|| this.compute_key(idx)).await.clone()
        }
        .boxed()
    }

    async fn compute_key(self: Arc<Self>, idx: usize) -> Result<blake3::Hash, SolveError> {
        let v = &self.graph.vertices[idx];
        let inputs = &self.graph.inputs[idx];
        // Fail fast: the first failing input stops the others from being awaited.
        let input_keys = try_join_all(inputs.iter().map(|&i| self.clone().key(i))).await?;
        let mut hasher = blake3::Hasher::new();
        hasher.update(CACHE_KEY_VERSION.as_bytes());
        hasher.update(v.digest.as_bytes());
        for (input, key) in v.inputs.iter().zip(input_keys) {
            hasher.update(key.as_bytes());
            hasher.update(&input.output.to_le_bytes());
        }
        match &v.op {
            Op::Source(source) => {
                let platform = self.platform(idx);
                let provider = self.sources.get(source).map_err(|e| self.step_error(idx, e))?;
                let part = provider
                    .key(source, &platform)
                    .await
                    .map_err(|e| self.step_error(idx, e))?;
                if let Some(part) = part {
                    hasher.update(part.as_bytes());
                }
            }
            Op::Exec(exec) => {
                for mount in &exec.mounts {
                    if let (MountKind::Bind, Some(input)) = (&mount.kind, mount.input) {
                        let selector = match mount.selector.is_empty() {
                            true => ".".to_string(),
                            false => mount.selector.clone(),
                        };
                        if let Some(part) = self
                            .hash_context(idx, input, ContextSelection::Bind(selector))
                            .await?
                        {
                            hasher.update(part.as_bytes());
                        }
                    }
                }
            }
            Op::File(file) => {
                for action in &file.actions {
                    if let FileAction::Copy(copy) = action
                        && let Some(part) = self
                            .hash_context(idx, copy.src_input, ContextSelection::Copy(copy.clone()))
                            .await?
                    {
                        hasher.update(part.as_bytes());
                    }
                }
            }
            Op::Merge => {}
        }
        Ok(hasher.finalize())
    }

    /// The hash of what the op reads of input `input` when that is a client directory; `None` for other
    /// inputs, whose own keys cover their content.
    async fn hash_context(
        self: &Arc<Self>,
        idx: usize,
        input: u32,
        selection: ContextSelection,
    ) -> Result<Option<blake3::Hash>, SolveError> {
        let Some(&source) = self.graph.inputs[idx].get(input as usize) else {
            return Ok(None);
        };
        if !matches!(
            self.graph.vertices[source].op,
            Op::Source(kiln_llb::Source::Local { .. })
        ) {
            return Ok(None);
        }
        let Loaded::Dir { path, ignore } = &*self.clone().result(source).await? else {
            return Ok(None);
        };
        let hasher = self.hasher(path, ignore).await?;
        let result = tokio::task::spawn_blocking(move || match &selection {
            // The same selection the copy makes, so the key covers exactly the files it reads.
            ContextSelection::Copy(copy) => hasher.hash_copy(&fileop::copy_spec(copy)),
            ContextSelection::Bind(path) => hasher.hash_selection(std::slice::from_ref(path), true, &[]),
        })
        .await
        .map_err(|e| SolveError::Graph(format!("hashing the context: {e}")))?;
        result.map(Some).map_err(|e| self.step_error(idx, e))
    }

    async fn hasher(
        &self,
        dir: &std::path::Path,
        ignore: &Arc<kiln_fsutil::ignore::PatternMatcher>,
    ) -> Result<Arc<ContextHasher>, SolveError> {
        let cell = {
            // The table only memoises; a panic elsewhere cannot leave it inconsistent.
            let mut hashers = self
                .hashers
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            hashers.entry(dir.to_path_buf()).or_default().clone()
        };
        cell.get_or_init(|| async {
            let dir = dir.to_path_buf();
            let matcher = (**ignore).clone();
            let index_dir = self.store.context_index_dir();
            let opened = tokio::task::spawn_blocking(move || {
                ContextHasher::open(&dir, matcher, Some(&index_dir)).map(Arc::new)
            })
            .await
            .map_err(|e| SolveError::Graph(format!("opening the context: {e}")))?;
            opened.map_err(|e| SolveError::Step {
                description: "load build context".to_string(),
                lines: None,
                failure: e.into(),
                output_tail: Vec::new(),
            })
        })
        .await
        .clone()
    }

    // ---- results ----------------------------------------------------------------------------------------

    pub fn result(self: Arc<Self>, idx: usize) -> BoxFuture<'static, Shared<Loaded>> {
        async move {
            let this = self.clone();
            self.results[idx]
                .get_or_init(|| this.compute_result(idx))
                .await
                .clone()
        }
        .boxed()
    }

    async fn compute_result(self: Arc<Self>, idx: usize) -> Shared<Loaded> {
        let v = &self.graph.vertices[idx];
        match &v.op {
            Op::Source(source) => {
                let provider = self.sources.get(source).map_err(|e| self.step_error(idx, e))?;
                // What is at hand anyway is not worth a cache record.
                if !provider.records() {
                    let loaded = provider
                        .load(source, &self.platform(idx))
                        .await
                        .map_err(|e| self.step_error(idx, e))?;
                    return Ok(Arc::new(loaded));
                }
            }
            Op::Merge => {
                let inputs = self.input_results(idx).await?;
                let mut layers = Vec::new();
                for input in inputs {
                    layers.extend(self.layers_of(idx, &input)?);
                }
                return Ok(Arc::new(Loaded::Layers(layers)));
            }
            Op::Exec(_) | Op::File(_) => {}
        }
        let key = self.clone().key(idx).await?;
        let key_text = format!("{CACHE_KEY_VERSION}:{}", key.to_hex());
        if !self.graph.uncached[idx]
            && let Some((layers, inputs)) = self.cached_anywhere(idx, &key_text).await?
        {
            self.cached.fetch_add(1, Ordering::Relaxed);
            if !v.meta.description.is_empty() && !matches!(v.op, Op::Source(_)) {
                let id = self.next_step.fetch_add(1, Ordering::Relaxed);
                self.emit(Event::Cached {
                    id,
                    name: v.meta.description.clone(),
                });
            }
            self.finish(&key_text, &layers, inputs, false);
            return Ok(Arc::new(Loaded::Layers(layers)));
        }
        let explained = match self.options.explain && !self.graph.uncached[idx] {
            true => Some(self.explain_miss(idx).await?),
            false => None,
        };
        let inputs = self.input_results(idx).await?;
        let _permit = self.permits.acquire().await.map_err(|_| SolveError::Cancelled)?;
        if self.cancel.is_cancelled() {
            return Err(SolveError::Cancelled);
        }
        let id = self.next_step.fetch_add(1, Ordering::Relaxed);
        let started = Instant::now();
        self.emit(Event::Started {
            id,
            name: v.meta.description.clone(),
        });
        let outcome = self.clone().run(idx, id, inputs).await;
        match outcome {
            Ok(layers) => {
                self.ran.fetch_add(1, Ordering::Relaxed);
                self.emit(Event::Done {
                    id,
                    duration: started.elapsed(),
                });
                let inputs = match explained {
                    Some(inputs) => inputs,
                    None => self.key_inputs(idx, true).await?,
                };
                self.record(&key_text, &layers, &inputs, None)?;
                self.finish(&key_text, &layers, inputs, true);
                Ok(Arc::new(Loaded::Layers(layers)))
            }
            Err(SolveError::Cancelled) => {
                self.emit(Event::Cancelled {
                    id,
                    duration: started.elapsed(),
                });
                Err(SolveError::Cancelled)
            }
            Err(e) => {
                // Fail fast: the steps running beside this one stop now.
                self.cancel.cancel();
                self.emit(Event::Failed {
                    id,
                    duration: started.elapsed(),
                    error: e.to_string(),
                });
                Err(e)
            }
        }
    }

    async fn input_results(self: &Arc<Self>, idx: usize) -> Result<Vec<Arc<Loaded>>, SolveError> {
        // Fail fast, as BuildKit does: once one input fails, the build stops waiting for its siblings.
        try_join_all(self.graph.inputs[idx].iter().map(|&i| self.clone().result(i))).await
    }

    pub fn layers_of(&self, idx: usize, output: &Loaded) -> Result<Vec<LayerRef>, SolveError> {
        match output {
            Loaded::Layers(layers) => Ok(layers.clone()),
            Loaded::Dir { path, .. } => Err(self.step_error(
                idx,
                StepFailure::NotAFilesystem {
                    path: path.display().to_string(),
                },
            )),
        }
    }

    /// A cache mount this store does not have yet, seeded from the first imported cache that carries it,
    /// so a fresh machine starts with what another machine's builds left there. A cache that fails is one
    /// warning: the step then starts with an empty mount, as it would without imports.
    pub(crate) async fn seed_cache_mount(
        self: &Arc<Self>,
        id: &str,
        owner: Option<kiln_cache::MountOwner>,
    ) -> Result<(), SolveError> {
        if self.imports.is_empty() || self.store.has_cache_mount(id) {
            return Ok(());
        }
        for import in &self.imports {
            let blob = match import.fetch_cache_mount(id).await {
                Ok(Some(blob)) => blob,
                Ok(None) => continue,
                Err(reason) => {
                    tracing::warn!(
                        "cache {}: cache mount {id:?}: {reason}; not seeding it",
                        import.name()
                    );
                    continue;
                }
            };
            let (store, id_owned) = (self.store.clone(), id.to_owned());
            match tokio::task::spawn_blocking(move || store.seed_cache_mount(&id_owned, &blob, owner)).await {
                Ok(Ok(_)) => return Ok(()),
                Ok(Err(e)) => {
                    tracing::warn!("cache {}: cache mount {id:?}: {e}; not seeding it", import.name())
                }
                Err(e) => tracing::warn!("seeding cache mount {id:?}: {e}"),
            }
        }
        Ok(())
    }

    /// The result under `key` in the store or, failing that, in the first imported cache that has it
    /// (recorded in the store then, so the next build finds it there), with the inputs of its key: as
    /// recorded, or worked out again for a record that has none.
    async fn cached_anywhere(
        self: &Arc<Self>,
        idx: usize,
        key: &str,
    ) -> Result<Option<(Vec<LayerRef>, KeyInputs)>, SolveError> {
        let Some((hit, imported_from)) = self.find_cached(idx, key).await? else {
            return Ok(None);
        };
        let inputs = match hit.inputs {
            Some(inputs) => inputs,
            None => self.key_inputs(idx, false).await?,
        };
        if let Some(source) = imported_from {
            self.record(key, &hit.layers, &inputs, Some(source))?;
        }
        Ok(Some((hit.layers, inputs)))
    }

    /// The hit for `key` and, for one from an imported cache, that cache's name.
    async fn find_cached(
        self: &Arc<Self>,
        idx: usize,
        key: &str,
    ) -> Result<Option<(CacheHit, Option<&str>)>, SolveError> {
        if let Some(found) = self.cached_layers(key)? {
            return Ok(Some((found, None)));
        }
        for import in &self.imports {
            match import.load(key).await {
                Ok(Some(hit)) => return Ok(Some((hit, Some(import.name())))),
                Ok(None) => {}
                Err(reason) => {
                    // A bad blob under many records would fail every step above it the same way: say it once.
                    if lock(&self.import_failures).insert(format!("{}: {reason}", import.name())) {
                        tracing::warn!(
                            "cache {}: {reason}; building {} (and any other step that needs it) without it",
                            import.name(),
                            self.graph.vertices[idx].meta.description
                        );
                    }
                }
            }
        }
        Ok(None)
    }

    /// Remembers a step's result for `--cache-to`; a vertex reached twice is listed once.
    fn finish(&self, key: &str, layers: &[LayerRef], inputs: KeyInputs, ran: bool) {
        let mut finished = lock(&self.finished);
        if !finished.iter().any(|f| f.key == key) {
            finished.push(FinishedRecord {
                ran,
                key: key.to_string(),
                layers: layers.to_vec(),
                inputs,
            });
        }
    }

    /// What the key of vertex `idx` was made of; `with_files` lists the context files it reads too (a walk
    /// of the selection, so only for steps that run or are explained).
    async fn key_inputs(self: &Arc<Self>, idx: usize, with_files: bool) -> Result<KeyInputs, SolveError> {
        let v = &self.graph.vertices[idx];
        let platform = self.platform(idx).to_string();
        let mut inputs = KeyInputs {
            step: records::step_id(&platform, &v.meta.description),
            description: v.meta.description.clone(),
            ..KeyInputs::default()
        };
        for &input in &self.graph.inputs[idx] {
            let key = self.clone().key(input).await?;
            inputs
                .parents
                .push(format!("{CACHE_KEY_VERSION}:{}", key.to_hex()));
        }
        match &v.op {
            Op::Source(source) => {
                let provider = self.sources.get(source).map_err(|e| self.step_error(idx, e))?;
                inputs.source = provider
                    .key(source, &self.platform(idx))
                    .await
                    .map_err(|e| self.step_error(idx, e))?;
            }
            Op::Exec(exec) => {
                inputs.env = exec
                    .env
                    .iter()
                    .map(|e| kiln_registry::without_credentials(e))
                    .collect()
            }
            Op::File(file) if with_files => {
                for action in &file.actions {
                    if let FileAction::Copy(copy) = action {
                        let listed = self.list_context(idx, copy).await?;
                        match listed {
                            Some(files) => inputs.files.extend(files),
                            None => inputs.files_unlisted = true,
                        }
                    }
                }
                if inputs.files_unlisted {
                    inputs.files.clear();
                }
                inputs.files.sort_by(|a, b| a.path.cmp(&b.path));
            }
            Op::File(_) | Op::Merge => {}
        }
        Ok(inputs)
    }

    /// The context files a COPY reads, when its source is a client directory (and they are few enough).
    async fn list_context(
        self: &Arc<Self>,
        idx: usize,
        copy: &kiln_llb::Copy,
    ) -> Result<Option<Vec<records::FileFact>>, SolveError> {
        let Some(&source) = self.graph.inputs[idx].get(copy.src_input as usize) else {
            return Ok(Some(Vec::new()));
        };
        if !matches!(
            self.graph.vertices[source].op,
            Op::Source(kiln_llb::Source::Local { .. })
        ) {
            return Ok(Some(Vec::new()));
        }
        let Loaded::Dir { path, ignore } = &*self.clone().result(source).await? else {
            return Ok(Some(Vec::new()));
        };
        let hasher = self.hasher(path, ignore).await?;
        let copy = copy.clone();
        let listed = tokio::task::spawn_blocking(move || {
            hasher.list_copy(&fileop::copy_spec(&copy), records::MAX_LISTED_FILES)
        })
        .await
        .map_err(|e| SolveError::Graph(format!("listing the context: {e}")))?;
        listed.map_err(|e| self.step_error(idx, e))
    }

    /// Explains why vertex `idx` missed, against the store's records of the same step and the imported
    /// caches'; returns its inputs for the record it will get.
    async fn explain_miss(self: &Arc<Self>, idx: usize) -> Result<KeyInputs, SolveError> {
        let inputs = self.key_inputs(idx, true).await?;
        if self.graph.vertices[idx].meta.description.is_empty() {
            return Ok(inputs);
        }
        let local = self
            .local_inputs
            .get_or_try_init(|| async {
                records::recorded_inputs(&self.store, &Default::default()).map_err(SolveError::from)
            })
            .await?;
        let mut known: Vec<KeyInputs> = local.get(&inputs.step).cloned().unwrap_or_default();
        for import in &self.imports {
            known.extend(import.inputs_for_step(&inputs.step));
        }
        let reasons = records::explain(&inputs, &known);
        let explained = Explanation {
            description: self.graph.vertices[idx].meta.description.clone(),
            reasons,
        };
        lock(&self.explanations).push((idx, explained));
        Ok(inputs)
    }

    /// Layers of a cache record, if it exists and every snapshot it names is still in the store, with the
    /// inputs recorded for it.
    fn cached_layers(&self, key: &str) -> Result<Option<CacheHit>, SolveError> {
        let Some(record) = self.store.get_cache_record(key)? else {
            return Ok(None);
        };
        let inputs = record
            .inputs
            .and_then(|i| serde_json::from_value::<KeyInputs>(i).ok());
        let Ok(layers) = serde_json::from_value::<Vec<LayerRef>>(record.result) else {
            return Ok(None);
        };
        for layer in &layers {
            if self.store.snapshot(&layer.snapshot)?.is_none()
                || !self.store.snapshot_path(&layer.snapshot).is_dir()
            {
                return Ok(None);
            }
        }
        Ok(Some(CacheHit { layers, inputs }))
    }

    fn record(
        &self,
        key: &str,
        layers: &[LayerRef],
        inputs: &KeyInputs,
        imported_from: Option<&str>,
    ) -> Result<(), SolveError> {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0);
        let record = CacheRecord {
            // Layer refs are plain data; serialising them cannot fail.
            result: serde_json::to_value(layers).unwrap_or_default(),
            blobs: layers
                .iter()
                .filter_map(|l| l.blob.as_ref().map(|b| b.digest))
                .collect(),
            snapshots: layers.iter().map(|l| l.snapshot.clone()).collect(),
            created: now,
            last_used: now,
            inputs: serde_json::to_value(inputs).ok(),
            imported_from: imported_from.map(str::to_owned),
        };
        Ok(self.store.put_cache_record(key, &record)?)
    }

    async fn run(
        self: Arc<Self>,
        idx: usize,
        step: usize,
        inputs: Vec<Arc<Loaded>>,
    ) -> Result<Vec<LayerRef>, SolveError> {
        let v = &self.graph.vertices[idx];
        match &v.op {
            Op::Source(source) => {
                let provider = self.sources.get(source).map_err(|e| self.step_error(idx, e))?;
                let loaded = provider
                    .load(source, &self.platform(idx))
                    .await
                    .map_err(|e| self.step_error(idx, e))?;
                self.layers_of(idx, &loaded)
            }
            Op::Exec(exec) => ops::exec::run(&self, idx, step, exec, &inputs, self.platform(idx)).await,
            Op::File(file) => ops::file::run(&self, idx, file, &inputs).await,
            Op::Merge => Err(SolveError::Graph("a merge reached run".to_string())),
        }
    }
}

/// The last lines of a step's output, for the error when it fails.
#[derive(Default)]
pub(crate) struct OutputTail {
    lines: VecDeque<String>,
    partial: Vec<u8>,
}

impl OutputTail {
    pub fn push(&mut self, data: &[u8]) {
        for &byte in data {
            if byte == b'\n' {
                let line = String::from_utf8_lossy(&self.partial).into_owned();
                self.partial.clear();
                if self.lines.len() == OUTPUT_TAIL_LINES {
                    self.lines.pop_front();
                }
                self.lines.push_back(line);
            } else if self.partial.len() < 4096 {
                self.partial.push(byte);
            }
        }
    }

    pub fn lines(mut self) -> Vec<String> {
        if !self.partial.is_empty() {
            let line = String::from_utf8_lossy(&self.partial).into_owned();
            if self.lines.len() == OUTPUT_TAIL_LINES {
                self.lines.pop_front();
            }
            self.lines.push_back(line);
        }
        self.lines.into()
    }
}

/// The solver's tables only collect; a panic elsewhere cannot leave them inconsistent.
fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}
