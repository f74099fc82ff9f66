//! The Linux sandbox that runs a Dockerfile `RUN` step (DESIGN.md §5): no daemon, no external runtime.
//!
//! kiln runs tokio, and forking a multithreaded process to set up namespaces is unsound, so the sandbox is a
//! separate, single-threaded process: kiln re-executes itself (`/proc/self/exe __kiln-sandbox <spec-fd>
//! <status-fd>`) and hands it a JSON request over a pipe. From there:
//!
//! ```text
//! kiln ──spawn──▶ helper      unshare(NEWNS|NEWPID|NEWIPC|NEWUTS[|NEWNET]), private mounts, hostname;
//!                   │          then waits, relays signals from kiln and reports the exit status
//!                   └─fork─▶ PID 1     overlay rootfs, /proc, /dev, /sys, /etc/{hosts,resolv.conf,hostname},
//!                              │       extra mounts, pivot_root, then either becomes the command (as in
//!                              │       `docker build`) or, with `init`, stays as a tini-style init and
//!                              └─fork─▶ command   groups/gid/uid, capabilities, chdir, close_range, execve
//! ```
//!
//! Everything the helper side has to tell kiln (setup errors, the mount stubs it created in the upper dir,
//! the command's exit status) travels as JSON lines over the status pipe, which is close-on-exec: a
//! successful `execve` of the command leaves no kiln descriptor behind. After the run, kiln removes the
//! mount-point stubs from the upper dir (only if they are still the untouched stubs the sandbox made), so the
//! upper dir holds exactly the changes of the command.
//!
//! The kiln binary must call [`sandbox_main`] first thing in `main`, before any thread exists (in particular
//! before a tokio runtime is built), when `argv[1] == SANDBOX_ARG`.

mod emulation;
mod exec;
mod helper;
mod init;
mod parent;
pub(crate) mod protocol;
mod rootpath;
mod sys;
mod user;

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

pub use emulation::check_emulation;
pub use helper::sandbox_main;

/// The hidden first argument that makes the kiln binary act as the sandbox helper.
pub const SANDBOX_ARG: &str = "__kiln-sandbox";

/// What to run and on which filesystem.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SandboxSpec {
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
    /// `""` gives `buildkitsandbox`, the name `docker build` uses, so Dockerfiles see what they see there.
    pub hostname: String,
    /// Extra /etc/hosts entries, `name:ip` (as `docker build --add-host`) or `name=ip`.
    pub extra_hosts: Vec<String>,
    /// Mounted after the standard ones, in order.
    pub mounts: Vec<SandboxMount>,
    /// `false` (as `docker build`): the command is PID 1 of its pid namespace, so it reaps orphans and
    /// ignores signals it has no handler for. `true` (as `docker run --init`): a tini-style init is PID 1 and
    /// the command its child; init reaps zombies and passes SIGTERM/SIGINT/... on. Either way, when PID 1
    /// exits the kernel kills everything left in the namespace.
    pub init: bool,
}

/// The network namespace of the command.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum Network {
    /// The host's network, so package managers work (the `docker build` default).
    #[default]
    Host,
    /// A new network namespace with only loopback (`RUN --network=none`).
    None,
}

/// An extra mount inside the sandbox. Destinations are absolute paths inside the rootfs; symlinks on the way
/// are resolved inside the rootfs, and a missing mount point is created (and removed again after the run).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum SandboxMount {
    /// A host file or directory (recursively bound).
    Bind {
        source: PathBuf,
        dest: String,
        readonly: bool,
    },
    /// A fresh tmpfs (mode 1777), `size` in bytes.
    Tmpfs { dest: String, size: Option<u64> },
    /// A writable overlay, e.g. for `RUN --mount=type=bind,from=STAGE,rw`; writes land in `upper_dir`.
    Overlay {
        lower_dirs: Vec<PathBuf>,
        upper_dir: PathBuf,
        work_dir: PathBuf,
        dest: String,
    },
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

/// Runs commands in the sandbox by re-executing a kiln binary in helper mode.
#[derive(Debug, Clone)]
pub struct Sandbox {
    helper: PathBuf,
}

impl Default for Sandbox {
    fn default() -> Self {
        Self::new()
    }
}

impl Sandbox {
    /// Uses the running binary (`/proc/self/exe`) as the helper; it must call [`sandbox_main`].
    pub fn new() -> Self {
        Self::with_helper("/proc/self/exe")
    }

    /// Uses another binary whose `main` calls [`sandbox_main`] when `argv[1] == SANDBOX_ARG`.
    pub fn with_helper(path: impl Into<PathBuf>) -> Self {
        Self { helper: path.into() }
    }

    /// The binary this sandbox re-executes.
    pub fn helper(&self) -> &std::path::Path {
        &self.helper
    }
}

/// Why a sandboxed run could not happen. A command that runs and fails is not an error: see [`RunStatus`].
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SandboxError {
    #[error("invalid sandbox spec: {0}")]
    InvalidSpec(String),
    #[error("{context}: {source}")]
    Io {
        context: String,
        #[source]
        source: std::io::Error,
    },
    #[error("starting the sandbox helper {}: {source}", helper.display())]
    Spawn {
        helper: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// A setup step inside the sandbox failed, e.g. "mounting overlay: EINVAL: ...".
    #[error("{step}: {message}")]
    Setup { step: String, message: String },
    #[error("user {user:?} not found in /etc/passwd of the image")]
    UserNotFound { user: String },
    #[error("group {group:?} not found in /etc/group of the image")]
    GroupNotFound { group: String },
    #[error("executable {name:?} not found in $PATH ({path})")]
    ExecutableNotFound { name: String, path: String },
    #[error("cannot execute {path:?}: {message}")]
    Exec { path: String, message: String },
    /// The helper died or spoke nonsense; the message says how.
    #[error("sandbox helper: {0}")]
    Helper(String),
    /// A foreign platform cannot run here; the message says how to fix it.
    #[error("{0}")]
    Emulation(String),
}
