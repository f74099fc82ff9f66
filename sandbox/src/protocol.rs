//! What kiln and the helper processes say to each other: the request (spec pipe, kiln → helper) and the
//! reports (status pipe, helper/init/command → kiln, one JSON object per line).

use std::os::fd::BorrowedFd;
use std::path::PathBuf;

use rustix::io::Errno;
use serde::{Deserialize, Serialize};

use super::{ExecSpec, SandboxError};

/// Everything the helper needs; the generated files were written by kiln so the helper does no host I/O
/// besides mounting.
#[derive(Debug, Serialize, Deserialize)]
pub(crate) struct HelperRequest {
    pub spec: ExecSpec,
    /// An empty host directory the rootfs overlay is mounted on (in the helper's private mount namespace).
    pub rootfs: PathBuf,
    /// An empty host directory, the lower layer of an overlay without lower dirs.
    pub empty_dir: PathBuf,
    pub hosts: PathBuf,
    pub resolv_conf: PathBuf,
    pub hostname_file: PathBuf,
    pub hostname: String,
    /// `run_attached`: stay in kiln's session so the command can use the terminal.
    pub attached: bool,
    /// The slirp4netns binary, for the default network.
    pub slirp4netns: Option<PathBuf>,
    /// kiln's pid, to notice if kiln died before the helper armed PR_SET_PDEATHSIG.
    pub parent_pid: i32,
}

#[derive(Debug, Serialize, Deserialize)]
pub(crate) enum Report {
    /// Mount-point stubs the sandbox created in the upper dir, for kiln to remove after the run.
    Stubs(Vec<Stub>),
    Exit {
        code: i32,
        signal: Option<i32>,
    },
    Error(ChildError),
}

/// A failure inside the sandbox, sent to kiln instead of a bare exit code.
#[derive(Debug, Serialize, Deserialize)]
pub(crate) enum ChildError {
    InvalidSpec(String),
    Setup { step: String, message: String },
    UserNotFound { user: String },
    GroupNotFound { group: String },
    ExecutableNotFound { name: String, path: String },
    Exec { path: String, message: String },
}

impl From<kiln_fsutil::mount::MountError> for ChildError {
    fn from(e: kiln_fsutil::mount::MountError) -> Self {
        ChildError::Setup {
            step: e.step,
            message: e.message,
        }
    }
}

impl ChildError {
    pub fn errno(step: impl Into<String>, errno: Errno) -> Self {
        Self::Setup {
            step: step.into(),
            message: kiln_fsutil::mount::describe_errno(errno),
        }
    }

    pub fn setup(step: impl Into<String>, message: impl Into<String>) -> Self {
        Self::Setup {
            step: step.into(),
            message: message.into(),
        }
    }
}

impl From<ChildError> for SandboxError {
    fn from(e: ChildError) -> Self {
        match e {
            ChildError::InvalidSpec(m) => SandboxError::InvalidSpec(m),
            ChildError::Setup { step, message } => SandboxError::Setup { step, message },
            ChildError::UserNotFound { user } => SandboxError::UserNotFound { user },
            ChildError::GroupNotFound { group } => SandboxError::GroupNotFound { group },
            ChildError::ExecutableNotFound { name, path } => SandboxError::ExecutableNotFound { name, path },
            ChildError::Exec { path, message } => SandboxError::Exec { path, message },
        }
    }
}

/// A mount-point stub, as it was in the upper dir right before the command started.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Stub {
    /// Relative to the upper dir, components joined by `/`; bytes because image paths need not be UTF-8.
    pub path: Vec<u8>,
    pub kind: StubKind,
    pub ino: u64,
    pub ctime: (i64, i64),
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) enum StubKind {
    /// An empty file the sandbox created as a mount point.
    File,
    /// A directory the sandbox created as (or on the way to) a mount point.
    Dir,
    /// A directory of a lower layer that overlayfs copied up only because a stub was created inside it.
    CopiedUp,
}

/// Writes one report line. Best effort: if kiln is gone there is nobody to tell.
pub(crate) fn send(status: BorrowedFd<'_>, report: &Report) {
    let Ok(mut line) = serde_json::to_vec(report) else {
        return;
    };
    line.push(b'\n');
    let mut rest = &line[..];
    while !rest.is_empty() {
        match rustix::io::write(status, rest) {
            Ok(n) => rest = &rest[n..],
            Err(Errno::INTR) => {}
            Err(_) => return,
        }
    }
}
