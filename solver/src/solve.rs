//! Scheduling and running an LLB graph.
//!
//! Two passes over the graph, both memoised per vertex so identical vertices (same digest) run once:
//! - **keys** (cheap, no execution): `blake3(version, vertex digest, input keys, content parts)`, where the
//!   content parts are a base image's manifest digest and the hash of exactly the context files an op reads;
//! - **results**, top-down: a vertex whose key has a cache record is done without looking at its inputs, so a
//!   rebuild with nothing changed pulls, unpacks and runs nothing. Only on a miss are the inputs solved
//!   (concurrently) and the op run, holding one of `max_parallelism` permits while it runs.

use crate::base::{BaseImages, BlobRef};
use crate::context::ContextHasher;
use crate::fileop::{self, FileOpEnv};
use crate::overlay::{self, MountedTree};
use crate::progress::{Event, EventSender, Stream};
use crate::sandbox::{self, Network, OutputStream, Sandbox, SandboxMount, SandboxSpec};
use futures::future::{BoxFuture, FutureExt, try_join_all};
use kiln_cache::{CacheRecord, MountSharing, PreparedSnapshot, SnapshotId, Store};
use kiln_fsutil::ignore::PatternMatcher;
use kiln_fsutil::root::resolve_in_root;
use kiln_llb::{
    Definition, Digest, Exec, FileAction, FileOp, Input, MountKind, NetworkMode, Op, Source, Vertex,
};
use serde::{Deserialize, Serialize};
use std::collections::{HashMap, VecDeque};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Instant, SystemTime, UNIX_EPOCH};
use tokio::sync::{OnceCell, Semaphore};

/// Bumped whenever what a key covers changes, so old cache records stop matching instead of lying.
const CACHE_KEY_VERSION: &str = "kiln-cache-v1";

/// What of a local source an op reads, for its cache key.
enum ContextSelection {
    /// A COPY/ADD's sources.
    Copy(kiln_llb::Copy),
    /// A `RUN --mount=type=bind` of this path and everything below it.
    Bind(String),
}

/// How many lines of a failed step's output the error repeats.
const OUTPUT_TAIL_LINES: usize = 20;

#[derive(Debug, Clone)]
pub struct SolveOptions {
    pub max_parallelism: usize,
    /// Directories the client provides, by LLB source name (`context`, `context:NAME`).
    pub local_dirs: HashMap<String, PathBuf>,
    /// Secret files for `RUN --mount=type=secret`, by id. Their contents never enter keys or layers.
    pub secrets: HashMap<String, PathBuf>,
}

/// One layer of a result: a snapshot in the store and, for layers of a pulled image, the blob it came from,
/// so an export reuses the blob instead of compressing the layer again.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LayerRef {
    pub snapshot: SnapshotId,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub blob: Option<BlobRef>,
}

/// What a solved vertex produced.
#[derive(Debug, Clone)]
enum Output {
    /// A filesystem: layers bottom to top.
    Layers(Vec<LayerRef>),
    /// A directory of the client's (the build context), used in place.
    Dir {
        path: PathBuf,
        ignore: Option<Arc<PatternMatcher>>,
    },
}

#[derive(Debug, Clone, thiserror::Error)]
pub enum SolveError {
    /// A step failed; `description` is its progress name (`[build 3/5] RUN make`).
    #[error("{description}: {message}")]
    Step {
        description: String,
        /// Dockerfile lines of the instruction.
        lines: Option<(usize, usize)>,
        message: String,
        exit_code: Option<i32>,
        /// The last lines the step printed.
        output_tail: Vec<String>,
    },
    #[error("{0}")]
    Other(String),
}

impl SolveError {
    fn other(message: impl std::fmt::Display) -> Self {
        SolveError::Other(message.to_string())
    }
}

type Shared<T> = Result<Arc<T>, SolveError>;

/// One context hasher per local source, opened on first use.
type HasherCell = Arc<OnceCell<Result<Arc<ContextHasher>, SolveError>>>;

/// The solver for one build. Cheap to share: everything lives behind an `Arc`.
#[derive(Clone)]
pub struct Solver {
    inner: Arc<Inner>,
}

struct Inner {
    store: Store,
    bases: Arc<BaseImages>,
    sandbox: Sandbox,
    options: SolveOptions,
    events: Option<EventSender>,
    permits: Semaphore,
    next_step: AtomicUsize,
    vertices: Vec<Vertex>,
    index: HashMap<Digest, usize>,
    /// Vertices whose cached results must not be used.
    uncached: Vec<bool>,
    keys: Vec<OnceCell<Result<blake3::Hash, SolveError>>>,
    results: Vec<OnceCell<Shared<Output>>>,
    hashers: Mutex<HashMap<String, HasherCell>>,
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

impl Solver {
    /// A solver over the union of `definitions` (one per platform of a multi-platform build: vertices they
    /// share, such as a `--platform=$BUILDPLATFORM` stage, are solved once).
    pub fn new(
        store: Store,
        bases: Arc<BaseImages>,
        sandbox: Sandbox,
        options: SolveOptions,
        events: Option<EventSender>,
        definitions: &[Definition],
    ) -> Self {
        let mut vertices: Vec<Vertex> = Vec::new();
        let mut index = HashMap::new();
        for def in definitions {
            for v in &def.vertices {
                if let std::collections::hash_map::Entry::Vacant(slot) = index.entry(v.digest) {
                    slot.insert(vertices.len());
                    vertices.push(v.clone());
                }
            }
        }
        // A step that must run again (--no-cache, --no-cache-filter) may produce something new, so nothing built
        // on it may come from the cache either. Inputs precede their users in `vertices`.
        let mut uncached = vec![false; vertices.len()];
        for (i, v) in vertices.iter().enumerate() {
            uncached[i] = v.meta.ignore_cache
                || v.inputs
                    .iter()
                    .any(|input| index.get(&input.vertex).is_some_and(|&j| uncached[j]));
        }
        let permits = Semaphore::new(options.max_parallelism.max(1));
        let keys = (0..vertices.len()).map(|_| OnceCell::new()).collect();
        let results = (0..vertices.len()).map(|_| OnceCell::new()).collect();
        Solver {
            inner: Arc::new(Inner {
                store,
                bases,
                sandbox,
                options,
                events,
                permits,
                next_step: AtomicUsize::new(1),
                vertices,
                index,
                uncached,
                keys,
                results,
                hashers: Mutex::new(HashMap::new()),
                ran: AtomicUsize::new(0),
                cached: AtomicUsize::new(0),
            }),
        }
    }

    /// Solves `root` (an output of a definition given to [`Solver::new`]) to layers, bottom to top. `None`
    /// is the empty filesystem.
    pub async fn solve(&self, root: Option<Input>) -> Result<Vec<LayerRef>, SolveError> {
        let Some(root) = root else { return Ok(Vec::new()) };
        let idx = self.inner.position(&root.vertex)?;
        match &*self.inner.clone().result(idx).await? {
            Output::Layers(layers) => Ok(layers.clone()),
            Output::Dir { path, .. } => Err(SolveError::other(format!(
                "the build result is a client directory ({}), not a filesystem",
                path.display()
            ))),
        }
    }

    pub fn stats(&self) -> SolveStats {
        SolveStats {
            ran: self.inner.ran.load(Ordering::Relaxed),
            cached: self.inner.cached.load(Ordering::Relaxed),
        }
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

impl Inner {
    fn position(&self, digest: &Digest) -> Result<usize, SolveError> {
        self.index
            .get(digest)
            .copied()
            .ok_or_else(|| SolveError::other(format!("the graph has no vertex {digest}")))
    }

    fn emit(&self, event: Event) {
        if let Some(events) = &self.events {
            // A renderer that went away must not stop the build.
            let _ = events.send(event);
        }
    }

    fn step_error(&self, idx: usize, message: impl std::fmt::Display) -> SolveError {
        let v = &self.vertices[idx];
        SolveError::Step {
            description: v.meta.description.clone(),
            lines: v.meta.lines,
            message: message.to_string(),
            exit_code: None,
            output_tail: Vec::new(),
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
        let v = &self.vertices[idx];
        let mut inputs = Vec::with_capacity(v.inputs.len());
        for input in &v.inputs {
            inputs.push(self.position(&input.vertex)?);
        }
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
            Op::Source(Source::Image { reference }) => {
                let platform = v.platform.clone().unwrap_or_else(kiln_llb::Platform::host);
                let base = self
                    .bases
                    .resolve(reference, &platform)
                    .await
                    .map_err(|e| self.step_error(idx, e))?;
                hasher.update(base.manifest_digest.as_bytes());
            }
            Op::Source(Source::OciLayout { path, reference }) => {
                let platform = v.platform.clone().unwrap_or_else(kiln_llb::Platform::host);
                let base = self
                    .bases
                    .resolve_layout(Path::new(path), reference, &platform)
                    .await
                    .map_err(|e| self.step_error(idx, e))?;
                hasher.update(base.manifest_digest.as_bytes());
            }
            Op::Exec(exec) => {
                for mount in &exec.mounts {
                    if let (MountKind::Bind, Some(input)) = (&mount.kind, mount.input)
                        && let Some(name) = self.local_source_name(idx, input)
                    {
                        let selector = if mount.selector.is_empty() {
                            ".".to_string()
                        } else {
                            mount.selector.clone()
                        };
                        let part = self
                            .hash_context(idx, &name, ContextSelection::Bind(selector))
                            .await?;
                        hasher.update(part.as_bytes());
                    }
                }
            }
            Op::File(file) => {
                for action in &file.actions {
                    if let FileAction::Copy(copy) = action
                        && let Some(name) = self.local_source_name(idx, copy.src_input)
                    {
                        let part = self
                            .hash_context(idx, &name, ContextSelection::Copy(copy.clone()))
                            .await?;
                        hasher.update(part.as_bytes());
                    }
                }
            }
            Op::Source(_) | Op::Merge => {}
        }
        Ok(hasher.finalize())
    }

    /// The client directory name when input `input` of vertex `idx` is a local source.
    fn local_source_name(&self, idx: usize, input: u32) -> Option<String> {
        let digest = self.vertices[idx].inputs.get(input as usize)?.vertex;
        let source = &self.vertices[*self.index.get(&digest)?];
        match &source.op {
            Op::Source(Source::Local { name, .. }) => Some(name.clone()),
            _ => None,
        }
    }

    fn local_excludes(&self, name: &str) -> Vec<String> {
        self.vertices
            .iter()
            .find_map(|v| match &v.op {
                Op::Source(Source::Local { name: n, exclude, .. }) if n == name => Some(exclude.clone()),
                _ => None,
            })
            .unwrap_or_default()
    }

    fn local_dir(&self, name: &str) -> Result<PathBuf, SolveError> {
        self.options.local_dirs.get(name).cloned().ok_or_else(|| {
            SolveError::other(format!(
                "the build uses the local directory {name:?}, but none was given for it"
            ))
        })
    }

    /// The `.dockerignore` matcher of a local source. Always `Some`: it also tells file operations that the
    /// input is a client directory, whose files are owned by root in the image whoever owns them on the host.
    fn ignore_matcher(&self, name: &str) -> Result<Option<Arc<PatternMatcher>>, SolveError> {
        let excludes = self.local_excludes(name);
        PatternMatcher::new(&excludes)
            .map(|m| Some(Arc::new(m)))
            .map_err(|e| SolveError::other(format!(".dockerignore: {e}")))
    }

    async fn hasher(&self, name: &str) -> Result<Arc<ContextHasher>, SolveError> {
        let cell = {
            let mut hashers = self
                .hashers
                .lock()
                .map_err(|_| SolveError::other("context hashers poisoned"))?;
            hashers.entry(name.to_string()).or_default().clone()
        };
        cell.get_or_init(|| async {
            let dir = self.local_dir(name)?;
            let ignore = self.ignore_matcher(name)?;
            let index_dir = self.store.context_index_dir();
            tokio::task::spawn_blocking(move || {
                let matcher = match ignore {
                    Some(m) => (*m).clone(),
                    None => PatternMatcher::new(&[]).map_err(SolveError::other)?,
                };
                ContextHasher::open(&dir, matcher, Some(&index_dir))
                    .map(Arc::new)
                    .map_err(|e| {
                        SolveError::other(format!("reading the build context {}: {e}", dir.display()))
                    })
            })
            .await
            .map_err(SolveError::other)?
        })
        .await
        .clone()
    }

    async fn hash_context(
        &self,
        idx: usize,
        name: &str,
        selection: ContextSelection,
    ) -> Result<blake3::Hash, SolveError> {
        let hasher = self.hasher(name).await?;
        let result = tokio::task::spawn_blocking(move || match &selection {
            // The same selection the copy makes, so the key covers exactly the files it reads.
            ContextSelection::Copy(copy) => hasher.hash_copy(&fileop::copy_spec(copy)),
            ContextSelection::Bind(path) => hasher.hash_selection(std::slice::from_ref(path), true, &[]),
        })
        .await
        .map_err(SolveError::other)?;
        result.map_err(|e| self.step_error(idx, e))
    }

    // ---- results ----------------------------------------------------------------------------------------

    fn result(self: Arc<Self>, idx: usize) -> BoxFuture<'static, Shared<Output>> {
        async move {
            let this = self.clone();
            self.results[idx]
                .get_or_init(|| this.compute_result(idx))
                .await
                .clone()
        }
        .boxed()
    }

    async fn compute_result(self: Arc<Self>, idx: usize) -> Shared<Output> {
        let v = &self.vertices[idx];
        match &v.op {
            Op::Source(Source::Local { name, .. }) => {
                let path = self.local_dir(name)?;
                let ignore = self.ignore_matcher(name)?;
                return Ok(Arc::new(Output::Dir { path, ignore }));
            }
            Op::Source(Source::Scratch) => return Ok(Arc::new(Output::Layers(Vec::new()))),
            Op::Merge => {
                let inputs = self.input_results(idx).await?;
                let mut layers = Vec::new();
                for input in inputs {
                    layers.extend(self.layers_of(idx, &input)?);
                }
                return Ok(Arc::new(Output::Layers(layers)));
            }
            _ => {}
        }
        let key = self.clone().key(idx).await?;
        let key_text = format!("{CACHE_KEY_VERSION}:{}", key.to_hex());
        if !self.uncached[idx]
            && let Some(layers) = self.cached_layers(&key_text)?
        {
            self.cached.fetch_add(1, Ordering::Relaxed);
            if !v.meta.description.is_empty() && !matches!(v.op, Op::Source(_)) {
                let id = self.next_step.fetch_add(1, Ordering::Relaxed);
                self.emit(Event::Cached {
                    id,
                    name: v.meta.description.clone(),
                });
            }
            return Ok(Arc::new(Output::Layers(layers)));
        }
        let inputs = self.input_results(idx).await?;
        let _permit = self.permits.acquire().await.map_err(SolveError::other)?;
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
                self.record(&key_text, &layers)?;
                Ok(Arc::new(Output::Layers(layers)))
            }
            Err(e) => {
                self.emit(Event::Failed {
                    id,
                    duration: started.elapsed(),
                    error: e.to_string(),
                });
                Err(e)
            }
        }
    }

    async fn input_results(self: &Arc<Self>, idx: usize) -> Result<Vec<Arc<Output>>, SolveError> {
        let mut positions = Vec::new();
        for input in &self.vertices[idx].inputs {
            positions.push(self.position(&input.vertex)?);
        }
        // Fail fast, as BuildKit does: once one input fails, the build stops waiting for its siblings (the
        // CLI then exits, and the sandboxes of steps still running die with kiln).
        try_join_all(positions.into_iter().map(|i| self.clone().result(i))).await
    }

    fn layers_of(&self, idx: usize, output: &Output) -> Result<Vec<LayerRef>, SolveError> {
        match output {
            Output::Layers(layers) => Ok(layers.clone()),
            Output::Dir { path, .. } => Err(self.step_error(
                idx,
                format!(
                    "a client directory ({}) cannot be used as a filesystem here",
                    path.display()
                ),
            )),
        }
    }

    /// Layers of a cache record, if it exists and every snapshot it names is still in the store.
    fn cached_layers(&self, key: &str) -> Result<Option<Vec<LayerRef>>, SolveError> {
        let Some(record) = self.store.get_cache_record(key).map_err(SolveError::other)? else {
            return Ok(None);
        };
        let Ok(layers) = serde_json::from_value::<Vec<LayerRef>>(record.result) else {
            return Ok(None);
        };
        for layer in &layers {
            if self
                .store
                .snapshot(&layer.snapshot)
                .map_err(SolveError::other)?
                .is_none()
                || !self.store.snapshot_path(&layer.snapshot).is_dir()
            {
                return Ok(None);
            }
        }
        Ok(Some(layers))
    }

    fn record(&self, key: &str, layers: &[LayerRef]) -> Result<(), SolveError> {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0);
        let record = CacheRecord {
            result: serde_json::to_value(layers).map_err(SolveError::other)?,
            blobs: layers
                .iter()
                .filter_map(|l| l.blob.as_ref().map(|b| b.digest))
                .collect(),
            snapshots: layers.iter().map(|l| l.snapshot.clone()).collect(),
            created: now,
            last_used: now,
        };
        self.store
            .put_cache_record(key, &record)
            .map_err(SolveError::other)
    }

    async fn run(
        self: Arc<Self>,
        idx: usize,
        step: usize,
        inputs: Vec<Arc<Output>>,
    ) -> Result<Vec<LayerRef>, SolveError> {
        let v = &self.vertices[idx];
        let platform = v.platform.clone().unwrap_or_else(kiln_llb::Platform::host);
        match &v.op {
            Op::Source(Source::Image { reference }) => {
                let base = self.bases.resolve(reference, &platform).await.map_err(|e| self.step_error(idx, e))?;
                self.bases.materialize(&base).await.map_err(|e| self.step_error(idx, e))
            }
            Op::Source(Source::OciLayout { path, reference }) => {
                let base = self
                    .bases
                    .resolve_layout(Path::new(path), reference, &platform)
                    .await
                    .map_err(|e| self.step_error(idx, e))?;
                self.bases.materialize(&base).await.map_err(|e| self.step_error(idx, e))
            }
            Op::Source(Source::Http { url, checksum, filename }) => {
                let url = url.clone();
                let checksum = checksum.clone();
                let filename = filename.clone();
                let dir = self.store.prepare_snapshot().map_err(SolveError::other)?;
                crate::http::fetch(&url, checksum.as_deref(), filename.as_deref(), &dir.upper)
                    .await
                    .map_err(|e| self.step_error(idx, e))?;
                let snapshot = self.store.commit_snapshot(dir, None).map_err(SolveError::other)?;
                Ok(vec![LayerRef { snapshot, blob: None }])
            }
            Op::Source(Source::Git { remote, .. }) => Err(self.step_error(
                idx,
                format!("git sources ({remote}) are not supported yet; clone the repository into the context instead"),
            )),
            Op::Exec(exec) => {
                if platform != kiln_llb::Platform::host() {
                    sandbox::check_emulation(&platform.architecture).map_err(|e| self.step_error(idx, e))?;
                }
                self.run_exec(idx, step, exec, &inputs).await
            }
            Op::File(file) => self.run_file(idx, file, &inputs).await,
            Op::Source(Source::Local { .. }) | Op::Source(Source::Scratch) | Op::Merge => {
                Err(SolveError::other("internal: sources without work reached run"))
            }
        }
    }

    fn snapshot_dirs(&self, layers: &[LayerRef]) -> Vec<PathBuf> {
        overlay::lower_dirs(layers.iter().map(|l| self.store.snapshot_path(&l.snapshot)))
    }

    fn commit(&self, prepared: PreparedSnapshot, below: &[LayerRef]) -> Result<Vec<LayerRef>, SolveError> {
        let parent = below.last().map(|l| &l.snapshot);
        let snapshot = self
            .store
            .commit_snapshot(prepared, parent)
            .map_err(SolveError::other)?;
        let mut layers = below.to_vec();
        layers.push(LayerRef { snapshot, blob: None });
        Ok(layers)
    }

    async fn run_exec(
        self: &Arc<Self>,
        idx: usize,
        step: usize,
        exec: &Exec,
        inputs: &[Arc<Output>],
    ) -> Result<Vec<LayerRef>, SolveError> {
        let input_of = |mount_input: Option<u32>| -> Option<&Arc<Output>> {
            mount_input.and_then(|i| inputs.get(i as usize))
        };
        let rootfs_mount = exec.mounts.iter().find(|m| m.dest == "/" && m.output);
        let below = match rootfs_mount.and_then(|m| input_of(m.input)) {
            Some(output) => self.layers_of(idx, output)?,
            None => Vec::new(),
        };
        let prepared = self.store.prepare_snapshot().map_err(SolveError::other)?;
        // Mounts that need a view of another result live until the step is over.
        let mut views: Vec<MountedTree> = Vec::new();
        let mut locks = Vec::new();
        let mut mounts = Vec::new();
        for mount in exec.mounts.iter().filter(|m| !(m.dest == "/" && m.output)) {
            match &mount.kind {
                MountKind::Bind => {
                    let source = match input_of(mount.input).map(|o| &**o) {
                        Some(Output::Dir { path, .. }) => {
                            resolve_in_root(path, &mount.selector).map_err(|e| {
                                self.step_error(idx, format!("mount source {:?}: {e}", mount.selector))
                            })?
                        }
                        Some(Output::Layers(layers)) => {
                            let view = self.mount_view(layers, !mount.readonly)?;
                            let path = resolve_in_root(view.path(), &mount.selector).map_err(|e| {
                                self.step_error(idx, format!("mount source {:?}: {e}", mount.selector))
                            })?;
                            views.push(view);
                            path
                        }
                        None => {
                            let view = self.mount_view(&[], true)?;
                            let path = view.path().to_path_buf();
                            views.push(view);
                            path
                        }
                    };
                    mounts.push(SandboxMount::Bind {
                        source,
                        dest: mount.dest.clone(),
                        readonly: mount.readonly,
                    });
                }
                MountKind::Cache { id, sharing } => {
                    // Private and locked caches are used by one step at a time, across kiln processes too.
                    let sharing = match sharing {
                        kiln_llb::CacheSharing::Shared => MountSharing::Shared,
                        kiln_llb::CacheSharing::Private | kiln_llb::CacheSharing::Locked => {
                            MountSharing::Exclusive
                        }
                    };
                    let store = self.store.clone();
                    let (cache_id, owner) = (id.clone(), mount.owner_mode);
                    let cache =
                        tokio::task::spawn_blocking(move || store.cache_mount(&cache_id, sharing, owner))
                            .await
                            .map_err(SolveError::other)?
                            .map_err(|e| self.step_error(idx, format!("cache mount {id:?}: {e}")))?;
                    mounts.push(SandboxMount::Bind {
                        source: cache.path.clone(),
                        dest: mount.dest.clone(),
                        readonly: mount.readonly,
                    });
                    locks.push(cache);
                }
                MountKind::Tmpfs { size } => mounts.push(SandboxMount::Tmpfs {
                    dest: mount.dest.clone(),
                    size: *size,
                }),
                MountKind::Secret { id, required } => {
                    match self.options.secrets.get(id) {
                        Some(path) => mounts.push(SandboxMount::Bind {
                            source: path.clone(),
                            dest: mount.dest.clone(),
                            readonly: true,
                        }),
                        None if *required => {
                            return Err(self.step_error(idx, format!("secret {id:?} is required but was not given (pass --secret id={id},src=FILE)")));
                        }
                        None => {}
                    }
                }
                MountKind::Ssh { id, required } => {
                    if *required {
                        return Err(self.step_error(
                            idx,
                            format!("ssh agent {id:?} is required, but kiln does not forward ssh agents yet"),
                        ));
                    }
                }
            }
        }
        let spec = SandboxSpec {
            lower_dirs: self.snapshot_dirs(&below),
            upper_dir: prepared.upper.clone(),
            work_dir: prepared.work.clone(),
            args: exec.args.clone(),
            env: exec.env.clone(),
            cwd: exec.cwd.clone(),
            user: exec.user.clone(),
            network: match exec.network {
                NetworkMode::Host => Network::Host,
                NetworkMode::None => Network::None,
            },
            hostname: exec.hostname.clone(),
            extra_hosts: exec.extra_hosts.clone(),
            mounts,
            // The command is PID 1 itself, as under `docker build`.
            init: false,
        };
        let sandbox = self.sandbox.clone();
        let this = self.clone();
        let (status, tail) = tokio::task::spawn_blocking(move || {
            let mut tail = OutputTail::default();
            let status = sandbox.run(&spec, &mut |stream, data| {
                tail.push(data);
                let stream = match stream {
                    OutputStream::Stdout => Stream::Stdout,
                    OutputStream::Stderr => Stream::Stderr,
                };
                this.emit(Event::Log {
                    id: step,
                    stream,
                    data: data.to_vec(),
                });
            });
            (status, tail.lines())
        })
        .await
        .map_err(SolveError::other)?;
        drop(views);
        drop(locks);
        let status = status.map_err(|e| self.step_error(idx, e))?;
        if !status.success() {
            let v = &self.vertices[idx];
            let command = exec.args.last().map(String::as_str).unwrap_or_default();
            let message = match status.signal {
                Some(signal) => format!("process {command:?} was killed by signal {signal}"),
                None => format!(
                    "process {command:?} did not complete successfully: exit code: {}",
                    status.code
                ),
            };
            return Err(SolveError::Step {
                description: v.meta.description.clone(),
                lines: v.meta.lines,
                message,
                exit_code: Some(status.code),
                output_tail: tail,
            });
        }
        self.commit(prepared, &below)
    }

    /// A directory showing `layers` merged; writable views keep their writes in a throwaway upper dir.
    fn mount_view(&self, layers: &[LayerRef], writable: bool) -> Result<MountedTree, SolveError> {
        MountedTree::mount(&self.store, &self.snapshot_dirs(layers), writable).map_err(SolveError::other)
    }

    async fn run_file(
        self: &Arc<Self>,
        idx: usize,
        file: &FileOp,
        inputs: &[Arc<Output>],
    ) -> Result<Vec<LayerRef>, SolveError> {
        let below = match (file.has_base, inputs.first()) {
            (true, Some(base)) => self.layers_of(idx, base)?,
            _ => Vec::new(),
        };
        let prepared = self.store.prepare_snapshot().map_err(SolveError::other)?;
        let mut views: Vec<MountedTree> = Vec::new();
        // With nothing below, the upper dir is the whole tree and needs no overlay.
        let target = if below.is_empty() {
            prepared.upper.clone()
        } else {
            let view = MountedTree::mount_upper(
                &self.store,
                &self.snapshot_dirs(&below),
                &prepared.upper,
                &prepared.work,
            )
            .map_err(SolveError::other)?;
            let path = view.path().to_path_buf();
            views.push(view);
            path
        };
        let mut roots = Vec::with_capacity(inputs.len());
        let mut ignores = Vec::with_capacity(inputs.len());
        for (i, input) in inputs.iter().enumerate() {
            match &**input {
                Output::Dir { path, ignore } => {
                    roots.push(path.clone());
                    ignores.push(ignore.clone());
                }
                // The base is the tree being written; a copy from it reads the merged view.
                Output::Layers(_) if file.has_base && i == 0 => {
                    roots.push(target.clone());
                    ignores.push(None);
                }
                Output::Layers(layers) => {
                    let view = self.mount_view(layers, false)?;
                    roots.push(view.path().to_path_buf());
                    ignores.push(None);
                    views.push(view);
                }
            }
        }
        let actions = file.actions.clone();
        let result = tokio::task::spawn_blocking(move || {
            let ignore_refs: Vec<Option<&PatternMatcher>> = ignores.iter().map(|i| i.as_deref()).collect();
            let env = FileOpEnv {
                target: &target,
                inputs: &roots,
                ignore: &ignore_refs,
                timestamp: None,
            };
            fileop::apply(&env, &actions)
        })
        .await
        .map_err(SolveError::other)?;
        drop(views);
        result.map_err(|e| self.step_error(idx, e))?;
        self.commit(prepared, &below)
    }
}

/// The last lines of a step's output, for the error when it fails.
#[derive(Default)]
struct OutputTail {
    lines: VecDeque<String>,
    partial: Vec<u8>,
}

impl OutputTail {
    fn push(&mut self, data: &[u8]) {
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

    fn lines(mut self) -> Vec<String> {
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
