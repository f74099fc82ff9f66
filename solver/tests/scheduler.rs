//! The scheduler's promises, with an executor that only records what it is asked to run (no root, no
//! sandbox): top-down cache lookup, identical vertices run once, parallel branches, the parallelism limit,
//! fail-fast and cancellation.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::Duration;

use futures::future::BoxFuture;
use kiln_cache::Store;
use kiln_llb::{Definition, Exec, Input, Meta, Mount, MountKind, Op, Platform, Vertex};
use kiln_solver::SolveError;
use kiln_solver::executor::{Cancel, ExecError, ExecSpec, Executor, OutputStream, RunStatus};
use kiln_solver::solve::{SolveOptions, Solver, SolverParts};
use kiln_solver::source::{Loaded, Source, SourceError, Sources};

/// How long a step waits for its partner before the test gives up, so a broken scheduler fails the test
/// instead of hanging it. Not a timing assertion: every passing run meets far sooner.
const RENDEZVOUS: Duration = Duration::from_secs(30);

/// Runs commands by name: `ok NAME` writes NAME into the layer, `fail` exits 1, `until-cancelled` runs
/// until the build is cancelled, `meet` waits until another `meet` runs at the same time, `busy` takes a
/// moment while counting how many commands run at once.
#[derive(Default)]
struct FakeExecutor {
    calls: Mutex<Vec<Vec<String>>>,
    running: AtomicUsize,
    most_at_once: AtomicUsize,
    cancelled: AtomicUsize,
    meeting: (Mutex<usize>, Condvar),
}

impl FakeExecutor {
    fn calls(&self) -> Vec<Vec<String>> {
        self.calls.lock().expect("calls").clone()
    }
}

impl Executor for FakeExecutor {
    fn run(
        &self,
        spec: &ExecSpec,
        cancel: &Cancel,
        _output: &mut dyn FnMut(OutputStream, &[u8]),
    ) -> Result<RunStatus, ExecError> {
        self.calls.lock().expect("calls").push(spec.args.clone());
        let now = self.running.fetch_add(1, Ordering::SeqCst) + 1;
        self.most_at_once.fetch_max(now, Ordering::SeqCst);
        let result = match spec.args.first().map(String::as_str) {
            Some("ok") => {
                let name = spec.args.get(1).cloned().unwrap_or_default();
                std::fs::write(spec.upper_dir.join(name), "made")
                    .map_err(|e| ExecError::Failed(Box::new(e)))?;
                Ok(RunStatus {
                    code: 0,
                    signal: None,
                })
            }
            Some("fail") => Ok(RunStatus {
                code: 1,
                signal: None,
            }),
            Some("until-cancelled") => {
                let waited = std::time::Instant::now();
                while !cancel.is_cancelled() && waited.elapsed() < RENDEZVOUS {
                    std::thread::sleep(Duration::from_millis(5));
                }
                self.cancelled.fetch_add(1, Ordering::SeqCst);
                Err(ExecError::Cancelled)
            }
            Some("meet") => {
                let (count, arrived) = &self.meeting;
                let mut count = count.lock().expect("meeting");
                *count += 1;
                arrived.notify_all();
                let (count, timeout) = arrived
                    .wait_timeout_while(count, RENDEZVOUS, |c| *c < 2)
                    .expect("meeting");
                drop(count);
                Ok(RunStatus {
                    code: if timeout.timed_out() { 2 } else { 0 },
                    signal: None,
                })
            }
            Some("busy") => {
                std::thread::sleep(Duration::from_millis(50));
                Ok(RunStatus {
                    code: 0,
                    signal: None,
                })
            }
            _ => Ok(RunStatus {
                code: 127,
                signal: None,
            }),
        };
        self.running.fetch_sub(1, Ordering::SeqCst);
        result
    }
}

/// An image source whose content is the empty filesystem, counting what it is asked.
#[derive(Default)]
struct FakeImages {
    keys: AtomicUsize,
    loads: AtomicUsize,
}

impl Source for FakeImages {
    fn key<'a>(
        &'a self,
        _: &'a kiln_llb::Source,
        _: &'a Platform,
    ) -> BoxFuture<'a, Result<Option<String>, SourceError>> {
        self.keys.fetch_add(1, Ordering::SeqCst);
        Box::pin(async { Ok(Some("sha256:fake-base".to_string())) })
    }

    fn load<'a>(
        &'a self,
        _: &'a kiln_llb::Source,
        _: &'a Platform,
    ) -> BoxFuture<'a, Result<Loaded, SourceError>> {
        self.loads.fetch_add(1, Ordering::SeqCst);
        Box::pin(async { Ok(Loaded::Layers(Vec::new())) })
    }
}

struct Fixture {
    _dir: tempfile::TempDir,
    store: Store,
    executor: Arc<FakeExecutor>,
    images: Arc<FakeImages>,
}

impl Fixture {
    fn new() -> Fixture {
        let dir = tempfile::tempdir().expect("temp dir");
        let store = Store::open(&dir.path().join("root")).expect("store");
        Fixture {
            _dir: dir,
            store,
            executor: Arc::new(FakeExecutor::default()),
            images: Arc::new(FakeImages::default()),
        }
    }

    fn solver(&self, parallelism: usize, definitions: &[Definition]) -> Solver {
        let mut sources = Sources::new();
        sources.register("image", self.images.clone());
        let parts = SolverParts {
            store: self.store.clone(),
            sources,
            executor: self.executor.clone(),
            options: SolveOptions {
                max_parallelism: parallelism,
                ..SolveOptions::default()
            },
            events: None,
            cancel: Cancel::default(),
            imports: Vec::new(),
        };
        Solver::new(parts, definitions).expect("solver")
    }
}

fn meta(description: &str) -> Meta {
    Meta {
        description: description.to_string(),
        ..Meta::default()
    }
}

fn image(def: &mut Definition) -> Input {
    let op = Op::Source(kiln_llb::Source::Image {
        reference: "base".to_string(),
    });
    def.add(Vertex::new(op, Vec::new(), None, meta("")))
}

/// A RUN of `args` on `base` (or on scratch).
fn run(def: &mut Definition, base: Option<Input>, args: &[&str]) -> Input {
    let exec = Exec {
        args: args.iter().map(|a| a.to_string()).collect(),
        cwd: "/".to_string(),
        mounts: vec![Mount {
            input: base.map(|_| 0),
            selector: String::new(),
            dest: "/".to_string(),
            kind: MountKind::Bind,
            readonly: false,
            output: true,
            owner_mode: None,
        }],
        ..Exec::default()
    };
    let inputs = base.into_iter().collect();
    def.add(Vertex::new(
        Op::Exec(exec),
        inputs,
        None,
        meta(&format!("RUN {}", args.join(" "))),
    ))
}

fn merge(def: &mut Definition, inputs: Vec<Input>) -> Input {
    def.add(Vertex::new(Op::Merge, inputs, None, meta("merge")))
}

fn block_on<T>(f: impl std::future::Future<Output = T>) -> T {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime")
        .block_on(f)
}

#[test]
fn a_cached_root_needs_nothing_below_it() {
    let fx = Fixture::new();
    let mut def = Definition::default();
    let base = image(&mut def);
    let a = run(&mut def, Some(base), &["ok", "a"]);
    def.root = Some(run(&mut def, Some(a), &["ok", "b"]));
    let layers = block_on(fx.solver(2, std::slice::from_ref(&def)).solve(def.root)).expect("first build");
    assert_eq!(layers.len(), 2);
    assert_eq!(fx.executor.calls().len(), 2);
    assert_eq!(fx.images.loads.load(Ordering::SeqCst), 1);

    let again = block_on(fx.solver(2, std::slice::from_ref(&def)).solve(def.root)).expect("second build");
    assert_eq!(again, layers, "the cached result");
    assert_eq!(fx.executor.calls().len(), 2, "nothing ran again");
    assert_eq!(
        fx.images.loads.load(Ordering::SeqCst),
        1,
        "the base was not even loaded"
    );
}

#[test]
fn identical_vertices_run_once_across_definitions() {
    let fx = Fixture::new();
    let (mut one, mut two) = (Definition::default(), Definition::default());
    let shared_one = run(&mut one, None, &["ok", "shared"]);
    one.root = Some(run(&mut one, Some(shared_one), &["ok", "one"]));
    let shared_two = run(&mut two, None, &["ok", "shared"]);
    two.root = Some(run(&mut two, Some(shared_two), &["ok", "two"]));
    assert_eq!(shared_one, shared_two, "the same op has the same digest");
    let solver = fx.solver(2, &[one.clone(), two.clone()]);
    block_on(async { futures::future::try_join(solver.solve(one.root), solver.solve(two.root)).await })
        .expect("build");
    let calls = fx.executor.calls();
    assert_eq!(calls.iter().filter(|c| c[1] == "shared").count(), 1, "{calls:?}");
    assert_eq!(calls.len(), 3);
}

#[test]
fn independent_branches_run_at_the_same_time() {
    let fx = Fixture::new();
    let mut def = Definition::default();
    let left = run(&mut def, None, &["meet", "left"]);
    let right = run(&mut def, None, &["meet", "right"]);
    def.root = Some(merge(&mut def, vec![left, right]));
    let layers = block_on(fx.solver(2, std::slice::from_ref(&def)).solve(def.root))
        .expect("both branches met, so they ran side by side");
    assert_eq!(layers.len(), 2, "a merge stacks its inputs' layers");
}

#[test]
fn no_more_steps_run_at_once_than_allowed() {
    let fx = Fixture::new();
    let mut def = Definition::default();
    let branches: Vec<Input> = (0..6)
        .map(|i| run(&mut def, None, &["busy", &i.to_string()]))
        .collect();
    def.root = Some(merge(&mut def, branches));
    block_on(fx.solver(2, std::slice::from_ref(&def)).solve(def.root)).expect("build");
    assert_eq!(fx.executor.calls().len(), 6);
    assert!(fx.executor.most_at_once.load(Ordering::SeqCst) <= 2);
}

#[test]
fn a_failed_step_stops_the_steps_running_beside_it() {
    let fx = Fixture::new();
    let mut def = Definition::default();
    let slow = run(&mut def, None, &["until-cancelled"]);
    let failing = run(&mut def, None, &["fail"]);
    def.root = Some(merge(&mut def, vec![slow, failing]));
    let err =
        block_on(fx.solver(2, std::slice::from_ref(&def)).solve(def.root)).expect_err("the build fails");
    match &err {
        SolveError::Step { description, .. } => assert_eq!(description, "RUN fail"),
        other => panic!("expected the failed step, got {other:?}"),
    }
    assert_eq!(err.exit_code(), Some(1));
    // The other branch was told to stop rather than left to run (the solve returned without it).
    let waited = std::time::Instant::now();
    while fx.executor.cancelled.load(Ordering::SeqCst) == 0 && waited.elapsed() < RENDEZVOUS {
        std::thread::sleep(Duration::from_millis(5));
    }
    assert_eq!(fx.executor.cancelled.load(Ordering::SeqCst), 1);
}

#[test]
fn cancelling_stops_a_running_build() {
    let fx = Fixture::new();
    let mut def = Definition::default();
    def.root = Some(run(&mut def, None, &["until-cancelled"]));
    let solver = fx.solver(2, std::slice::from_ref(&def));
    let outcome = block_on(async {
        let (handle, executor) = (solver.clone(), fx.executor.clone());
        // Cancelled once the step is running, as Ctrl-C in the middle of a RUN would.
        let canceller = tokio::spawn(async move {
            while executor.calls().is_empty() {
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            handle.cancel();
        });
        let outcome = solver.solve(def.root).await;
        canceller.abort();
        outcome
    });
    assert!(matches!(outcome, Err(SolveError::Cancelled)), "{outcome:?}");
    assert_eq!(fx.executor.cancelled.load(Ordering::SeqCst), 1);
}
