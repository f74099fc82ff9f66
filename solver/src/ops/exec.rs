//! `RUN`: the exec op's mounts made ready (views of other results, client directories, cache mounts,
//! tmpfs, secrets), the command handed to the [`Executor`](crate::executor::Executor) on a blocking thread
//! with its output streamed as progress events, and the upper dir committed as the step's layer.

use std::sync::Arc;

use kiln_cache::MountSharing;
use kiln_fsutil::root::resolve_in_root;
use kiln_llb::{CacheSharing, Exec, MountKind, NetworkMode, Platform, SecurityMode};

use super::joined;
use crate::executor::{ExecMount, ExecSpec, Network, OutputStream, Security};
use crate::overlay::MountedTree;
use crate::progress::{Event, Stream};
use crate::solve::{Inner, OutputTail};
use crate::source::{LayerRef, Loaded};
use crate::{SolveError, StepFailure};

/// Who owns a secret file, and its mode, when the mount does not say: root, 0400 (as BuildKit).
const SECRET_OWNER_MODE: (u32, u32, u32) = (0, 0, 0o400);
/// An agent socket's owner and mode when the mount does not say: root, 0600 (as BuildKit).
const SSH_OWNER_MODE: (u32, u32, u32) = (0, 0, 0o600);

pub(crate) async fn run(
    inner: &Arc<Inner>,
    idx: usize,
    step: usize,
    exec: &Exec,
    inputs: &[Arc<Loaded>],
    platform: Platform,
) -> Result<Vec<LayerRef>, SolveError> {
    let input_of = |mount_input: Option<u32>| -> Option<&Arc<Loaded>> {
        mount_input.and_then(|i| inputs.get(i as usize))
    };
    let rootfs_mount = exec.mounts.iter().find(|m| m.dest == "/" && m.output);
    let below = match rootfs_mount.and_then(|m| input_of(m.input)) {
        Some(output) => inner.layers_of(idx, output)?,
        None => Vec::new(),
    };
    let prepared = inner.prepare(idx)?;
    // What the mounts need lives until the step is over: views of other results, held cache mounts.
    let mut views: Vec<MountedTree> = Vec::new();
    let mut held: Vec<(String, kiln_cache::CacheMount)> = Vec::new();
    let mut mounts = Vec::new();
    let mut secret_env = Vec::new();
    // Served until the step is over.
    let mut ssh_sockets = Vec::new();
    let mount_source = |root: &std::path::Path, selector: &str| {
        resolve_in_root(root, selector).map_err(|e| {
            inner.step_error(
                idx,
                StepFailure::Mount {
                    what: format!("mount source {selector:?}"),
                    error: Arc::new(e),
                },
            )
        })
    };
    for mount in exec.mounts.iter().filter(|m| !(m.dest == "/" && m.output)) {
        match &mount.kind {
            MountKind::Bind => {
                let source = match input_of(mount.input).map(|o| &**o) {
                    Some(Loaded::Dir { path, ignore }) => {
                        let source = mount_source(path, &mount.selector)?;
                        let store = &inner.store;
                        match MountedTree::client_dir(store, path, &source, ignore, !mount.readonly) {
                            Ok(None) => source,
                            Ok(Some(view)) => {
                                let path = view.path().to_path_buf();
                                views.push(view);
                                path
                            }
                            Err(e) => {
                                let what = format!("mounting {:?} of the context", mount.selector);
                                let error = Arc::new(e);
                                return Err(inner.step_error(idx, StepFailure::Mount { what, error }));
                            }
                        }
                    }
                    Some(Loaded::Layers(layers)) => {
                        let view = inner.mount_view(idx, layers, !mount.readonly)?;
                        let path = mount_source(view.path(), &mount.selector)?;
                        views.push(view);
                        path
                    }
                    None => {
                        let view = inner.mount_view(idx, &[], true)?;
                        let path = view.path().to_path_buf();
                        views.push(view);
                        path
                    }
                };
                mounts.push(ExecMount::Bind {
                    source,
                    dest: mount.dest.clone(),
                    readonly: mount.readonly,
                });
            }
            MountKind::Cache { id, sharing } => {
                // A second mount of the same cache in one step is the same directory: locking it again on
                // another descriptor would wait for this very step.
                if let Some((_, cache)) = held.iter().find(|(held_id, _)| held_id == id) {
                    mounts.push(ExecMount::Bind {
                        source: cache.path.clone(),
                        dest: mount.dest.clone(),
                        readonly: mount.readonly,
                    });
                    continue;
                }
                let sharing = match sharing {
                    CacheSharing::Shared => MountSharing::Shared,
                    CacheSharing::Private => MountSharing::Private,
                    CacheSharing::Locked => MountSharing::Exclusive,
                };
                inner.seed_cache_mount(id, mount.owner_mode).await?;
                // `from=`: a mount made now starts as a copy of that filesystem's `source`.
                let seed_from = match input_of(mount.input).map(|o| &**o) {
                    Some(Loaded::Dir { path, ignore }) => Some((path.clone(), Some(ignore.clone()))),
                    Some(Loaded::Layers(layers)) => {
                        let view = inner.mount_view(idx, layers, false)?;
                        let path = view.path().to_path_buf();
                        views.push(view);
                        Some((path, None))
                    }
                    None => None,
                };
                let store = inner.store.clone();
                let (cache_id, owner, selector) = (id.clone(), mount.owner_mode, mount.selector.clone());
                let cache = joined(
                    tokio::task::spawn_blocking(move || {
                        let seed = |dir: &std::path::Path| match &seed_from {
                            Some((root, ignore)) => seed_cache(dir, root, ignore.as_deref(), &selector),
                            None => Ok(()),
                        };
                        store.cache_mount_seeded(&cache_id, sharing, owner, &seed)
                    })
                    .await,
                )?
                .map_err(|e| inner.step_error(idx, e))?;
                mounts.push(ExecMount::Bind {
                    source: cache.path.clone(),
                    dest: mount.dest.clone(),
                    readonly: mount.readonly,
                });
                held.push((id.clone(), cache));
            }
            MountKind::Tmpfs { size } => mounts.push(ExecMount::Tmpfs {
                dest: mount.dest.clone(),
                size: *size,
            }),
            MountKind::Secret { id, required, env } => match inner.options.secrets.get(id) {
                Some(contents) => {
                    if let Some(name) = env {
                        // In the command's environment only: never in the op, its key or its history.
                        let value = std::str::from_utf8(&contents.0)
                            .ok()
                            .filter(|v| !v.contains('\0'));
                        let Some(value) = value else {
                            let what = format!("secret {id:?} as the environment variable {name}");
                            let why = "the secret is not text without NUL bytes";
                            let error = Arc::new(std::io::Error::other(why));
                            return Err(inner.step_error(idx, StepFailure::Mount { what, error }));
                        };
                        secret_env.push((name.clone(), value.to_string()));
                    }
                    if !mount.dest.is_empty() {
                        let (uid, gid, mode) = mount.owner_mode.unwrap_or(SECRET_OWNER_MODE);
                        mounts.push(ExecMount::File {
                            dest: mount.dest.clone(),
                            contents: contents.clone(),
                            uid,
                            gid,
                            mode,
                        });
                    }
                }
                None if *required => {
                    return Err(inner.step_error(idx, StepFailure::MissingSecret { id: id.clone() }));
                }
                None => {}
            },
            MountKind::Ssh { id, required } => match inner.options.ssh.get(id) {
                Some(agent) => {
                    let owner = mount.owner_mode.unwrap_or(SSH_OWNER_MODE);
                    let socket = agent.socket(owner).map_err(|e| {
                        let what = format!("serving the ssh agent {id:?}");
                        inner.step_error(
                            idx,
                            StepFailure::Mount {
                                what,
                                error: Arc::new(e),
                            },
                        )
                    })?;
                    mounts.push(ExecMount::Bind {
                        source: socket.path.clone(),
                        dest: mount.dest.clone(),
                        readonly: false,
                    });
                    ssh_sockets.push(socket);
                }
                None if *required => {
                    return Err(inner.step_error(idx, StepFailure::MissingSsh { id: id.clone() }));
                }
                None => {}
            },
        }
    }
    let spec = ExecSpec {
        lower_dirs: inner.snapshot_dirs(&below),
        upper_dir: prepared.upper.clone(),
        work_dir: prepared.work.clone(),
        args: exec.args.clone(),
        env: with_secret_env(&exec.env, secret_env),
        cwd: exec.cwd.clone(),
        user: exec.user.clone(),
        network: match exec.network {
            NetworkMode::Default => Network::Default,
            NetworkMode::Host => Network::Host,
            NetworkMode::None => Network::None,
        },
        security: match exec.security {
            SecurityMode::Sandbox => Security::Sandbox,
            SecurityMode::Insecure => Security::Insecure,
        },
        hostname: exec.hostname.clone(),
        extra_hosts: exec.extra_hosts.clone(),
        mounts,
        // The command is PID 1 itself, as under `docker build`.
        init: false,
        platform: (platform != Platform::host()).then_some(platform),
    };
    let this = inner.clone();
    let (status, tail) = joined(
        tokio::task::spawn_blocking(move || {
            let mut tail = OutputTail::default();
            let status = this.executor.run(&spec, &this.cancel, &mut |stream, data| {
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
        .await,
    )?;
    drop(views);
    drop(held);
    let status = status.map_err(|e| inner.step_error(idx, e))?;
    if !status.success() {
        let command = exec.args.last().cloned().unwrap_or_default();
        let failure = match status.signal {
            Some(signal) => StepFailure::Signal { command, signal },
            None => StepFailure::Exit {
                command,
                code: status.code,
            },
        };
        return Err(inner.step_failure(idx, failure, tail));
    }
    inner.commit(idx, prepared, &below)
}

/// The step's environment with each secret variable in place of any entry of the same name (as BuildKit's
/// executor replaces it), so an `ENV TOKEN=placeholder` does not shadow the secret.
fn with_secret_env(env: &[String], secrets: Vec<(String, String)>) -> Vec<String> {
    let mut out: Vec<String> = env
        .iter()
        .filter(|e| !secrets.iter().any(|(n, _)| n == kiln_llb::image::env_key(e)))
        .cloned()
        .collect();
    out.extend(secrets.into_iter().map(|(n, v)| format!("{n}={v}")));
    out
}

/// Copies `source` (a path in `root`) into a new cache mount `dir` with COPY's engine: inside the root,
/// `.dockerignore` applied for a context, owners and modes kept.
fn seed_cache(
    dir: &std::path::Path,
    root: &std::path::Path,
    ignore: Option<&kiln_fsutil::ignore::PatternMatcher>,
    source: &str,
) -> std::io::Result<()> {
    let copy = kiln_llb::Copy {
        src_input: 0,
        src: vec![if source.is_empty() {
            "/".into()
        } else {
            source.to_string()
        }],
        dest: "/".into(),
        follow_symlinks: true,
        dir_contents_only: true,
        create_dest_path: true,
        ..kiln_llb::Copy::default()
    };
    let env = crate::fileop::FileOpEnv {
        target: dir,
        inputs: &[root.to_path_buf()],
        ignore: &[ignore],
        timestamp: None,
    };
    crate::fileop::apply(&env, &[kiln_llb::FileAction::Copy(copy)]).map_err(std::io::Error::other)
}
