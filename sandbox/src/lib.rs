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
mod net;
mod parent;
mod protocol;
mod rootpath;
mod seccomp;
mod sys;
mod user;

use std::path::PathBuf;

pub use emulation::check_emulation;
pub use helper::sandbox_main;
use kiln_solver::executor::{Cancel, ExecError, Executor};

/// The hidden first argument that makes the kiln binary act as the sandbox helper.
pub const SANDBOX_ARG: &str = "__kiln-sandbox";

pub use kiln_solver::executor::{ExecMount, ExecSpec, Network, OutputStream, RunStatus, Security};

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

impl Executor for Sandbox {
    fn run(
        &self,
        spec: &ExecSpec,
        cancel: &Cancel,
        output: &mut dyn FnMut(OutputStream, &[u8]),
    ) -> Result<RunStatus, ExecError> {
        if let Some(platform) = spec
            .platform
            .as_ref()
            .filter(|p| **p != kiln_llb::Platform::host())
        {
            check_emulation(&platform.architecture).map_err(|e| ExecError::Failed(Box::new(e)))?;
        }
        match self.run_cancellable(spec, cancel, output) {
            Err(SandboxError::Cancelled) => Err(ExecError::Cancelled),
            other => other.map_err(|e| ExecError::Failed(Box::new(e))),
        }
    }
}

/// Why a sandboxed run could not happen. A command that runs and fails is not an error: see [`RunStatus`].
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SandboxError {
    #[error("invalid sandbox spec: {0}")]
    InvalidSpec(String),
    #[error("{context}: {error}")]
    Io { context: String, error: std::io::Error },
    #[error("starting the sandbox helper {}: {error}", helper.display())]
    Spawn { helper: PathBuf, error: std::io::Error },
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
    /// The build was cancelled; the command was killed.
    #[error("cancelled")]
    Cancelled,
}
