//! The contract between the solver and whatever runs a `RUN` step: the solver prepares the filesystem (the
//! lower layers, an empty upper dir that becomes the step's layer, the extra mounts) and an [`Executor`] runs
//! the command on it. `kiln-sandbox` is the executor kiln ships (namespaces and overlayfs); the solver's own
//! tests use one that only records what it was asked.

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use kiln_llb::Platform;
use serde::{Deserialize, Serialize};

/// What to run and on which filesystem.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExecSpec {
    /// Read-only layers, top first. Empty for a `FROM scratch` rootfs.
    pub lower_dirs: Vec<PathBuf>,
    /// An empty directory, created by the caller, that receives every change and becomes the layer.
    pub upper_dir: PathBuf,
    /// An empty directory on the same filesystem as `upper_dir`, for overlayfs's own use.
    pub work_dir: PathBuf,
    /// The command; `args[0]` is looked up in the `PATH` of `env` unless it contains a `/`.
    pub args: Vec<String>,
    /// The exact environment (`KEY=VALUE`); only `HOME` is added when missing, from the user's passwd entry.
    pub env: Vec<String>,
    /// Working directory inside the rootfs, created (owned by the user) if missing. `""` means `/`.
    pub cwd: String,
    /// `""` (root), `name`, `uid`, `name:group`, `uid:gid`, resolved in the rootfs's /etc/passwd and
    /// /etc/group.
    pub user: String,
    pub network: Network,
    pub security: Security,
    /// `""` gives `buildkitsandbox`, the name `docker build` uses, so Dockerfiles see what they see there.
    pub hostname: String,
    /// Extra /etc/hosts entries, `name:ip` (as `docker build --add-host`) or `name=ip`.
    pub extra_hosts: Vec<String>,
    /// Mounted after the standard ones, in order.
    pub mounts: Vec<ExecMount>,
    /// `false` (as `docker build`): the command is PID 1 of its pid namespace. `true` (as `docker run
    /// --init`): a tini-style init is PID 1 and the command its child.
    pub init: bool,
    /// The platform the command is built for, when it is not the host's: the executor must be able to run
    /// its binaries (QEMU through binfmt_misc) or say how to make it so.
    #[serde(skip)]
    pub platform: Option<Platform>,
}

/// The network namespace of the command.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum Network {
    /// A network namespace of the command's own with outbound access through NAT, like docker's bridge; the
    /// host's loopback services are out of reach (the `docker build` default).
    #[default]
    Default,
    /// The host's network namespace (`RUN --network=host`).
    Host,
    /// A new network namespace with only loopback (`RUN --network=none`).
    None,
}

/// How confined the command is.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum Security {
    /// Docker's default capabilities, seccomp filter, and masked and read-only paths.
    #[default]
    Sandbox,
    /// Every capability, no seccomp filter, no masked paths (`RUN --security=insecure`).
    Insecure,
}

/// An extra mount for the command. Destinations are absolute paths inside the rootfs; symlinks on the way
/// are resolved inside the rootfs, and a missing mount point is created (and removed again after the run).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum ExecMount {
    /// A host file or directory (recursively bound).
    Bind {
        source: PathBuf,
        dest: String,
        readonly: bool,
    },
    /// A fresh tmpfs (mode 1777), `size` in bytes.
    Tmpfs { dest: String, size: Option<u64> },
    /// A file made for the run only (a secret): written into a private tmpfs, never to disk, and mounted
    /// read-only at `dest` with this owner and mode.
    File {
        dest: String,
        contents: SecretBytes,
        uid: u32,
        gid: u32,
        mode: u32,
    },
    /// A writable overlay, e.g. for `RUN --mount=type=bind,from=STAGE,rw`; writes land in `upper_dir`.
    Overlay {
        lower_dirs: Vec<PathBuf>,
        upper_dir: PathBuf,
        work_dir: PathBuf,
        dest: String,
    },
}

/// Bytes that must not show up in logs: `Debug` prints only their length.
#[derive(Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct SecretBytes(pub Vec<u8>);

impl std::fmt::Debug for SecretBytes {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "<{} secret bytes>", self.0.len())
    }
}

/// An SSH agent that `RUN --mount=type=ssh` steps may use (`kiln build --ssh`): a forwarded agent socket or
/// keys served from memory. Its keys never enter the rootfs; a step only gets a socket to ask through.
pub trait SshAgent: Send + Sync + std::fmt::Debug {
    /// A new socket on the host serving this agent to one step, owned and moded as given (the mount's
    /// `uid`, `gid`, `mode`); it stops serving and disappears when the returned value drops.
    fn socket(&self, owner: (u32, u32, u32)) -> std::io::Result<SshSocket>;
}

/// A socket an [`SshAgent`] serves for one step.
pub struct SshSocket {
    pub path: PathBuf,
    /// Whatever stops the serving when dropped.
    pub guard: Box<dyn Send>,
}

/// Which stream a chunk of output came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OutputStream {
    Stdout,
    Stderr,
}

/// How the command ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RunStatus {
    /// The exit code, or 128 + the signal number when the command was killed (as a shell reports it).
    pub code: i32,
    /// The signal that killed the command, if one did.
    pub signal: Option<i32>,
}

impl RunStatus {
    pub fn success(&self) -> bool {
        self.code == 0 && self.signal.is_none()
    }
}

/// Why a command could not be run (a command that runs and fails is a [`RunStatus`], not an error).
#[derive(Debug, thiserror::Error)]
pub enum ExecError {
    /// The build was cancelled while the command ran; it was stopped.
    #[error("cancelled")]
    Cancelled,
    #[error(transparent)]
    Failed(Box<dyn std::error::Error + Send + Sync>),
}

/// Asks the steps of a build to stop: set once (a failed step with fail-fast, Ctrl-C), seen by every
/// executor that is running a command, which then kills it.
#[derive(Debug, Clone, Default)]
pub struct Cancel(Arc<AtomicBool>);

impl Cancel {
    pub fn cancel(&self) {
        self.0.store(true, Ordering::SeqCst);
    }

    pub fn is_cancelled(&self) -> bool {
        self.0.load(Ordering::SeqCst)
    }
}

/// Runs `RUN` commands. Called from a blocking thread; `output` gets the command's stdout and stderr as they
/// arrive, and a set `cancel` must stop the command soon (within a second) with [`ExecError::Cancelled`].
pub trait Executor: Send + Sync {
    fn run(
        &self,
        spec: &ExecSpec,
        cancel: &Cancel,
        output: &mut dyn FnMut(OutputStream, &[u8]),
    ) -> Result<RunStatus, ExecError>;
}
