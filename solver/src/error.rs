//! What solving can fail with. A step's failure carries the step (its progress name and Dockerfile lines),
//! the typed cause and the last lines the step printed; each message includes its cause once, so nothing is
//! chained twice. Errors are shared between every vertex waiting on the failed one, hence `Arc` causes.

use std::sync::Arc;

use crate::context::ContextError;
use crate::executor::ExecError;
use crate::fileop::FileOpError;
use crate::source::SourceError;

#[derive(Debug, Clone, thiserror::Error)]
pub enum SolveError {
    /// A step failed; `description` is its progress name (`[build 3/5] RUN make`).
    #[error("{description}: {failure}")]
    Step {
        description: String,
        /// Dockerfile lines of the instruction.
        lines: Option<(usize, usize)>,
        failure: StepFailure,
        /// The last lines the step printed.
        output_tail: Vec<String>,
    },
    /// The build was cancelled (Ctrl-C, or the library caller) before it finished.
    #[error("the build was cancelled")]
    Cancelled,
    #[error(transparent)]
    Store(Arc<kiln_cache::Error>),
    /// A graph the solver cannot run: an input that is not in it, a cycle. Frontends never make one.
    #[error("invalid build graph: {0}")]
    Graph(String),
}

/// Why a step failed.
#[derive(Debug, Clone, thiserror::Error)]
pub enum StepFailure {
    #[error("process {command:?} did not complete successfully: exit code: {code}")]
    Exit { command: String, code: i32 },
    #[error("process {command:?} was killed by signal {signal}")]
    Signal { command: String, signal: i32 },
    #[error(transparent)]
    Source(Arc<SourceError>),
    #[error(transparent)]
    Exec(Arc<ExecError>),
    #[error(transparent)]
    File(Arc<FileOpError>),
    #[error(transparent)]
    Context(Arc<ContextError>),
    #[error(transparent)]
    Store(Arc<kiln_cache::Error>),
    /// A mount or view the step needs: `what` says which.
    #[error("{what}: {error}")]
    Mount {
        what: String,
        error: Arc<std::io::Error>,
    },
    #[error("secret {id:?} is required but was not given (pass --secret id={id},src=FILE)")]
    MissingSecret { id: String },
    #[error(
        "ssh agent {id:?} is required, but the build has none of that id: pass --ssh {id}=SOCKET_OR_KEY (or --ssh default for $SSH_AUTH_SOCK)"
    )]
    MissingSsh { id: String },
    /// An input that is a client directory where a filesystem is needed.
    #[error("a client directory ({path}) cannot be used as a filesystem here")]
    NotAFilesystem { path: String },
}

impl SolveError {
    /// The exit code of a step's command that ran and failed.
    pub fn exit_code(&self) -> Option<i32> {
        match self {
            SolveError::Step {
                failure: StepFailure::Exit { code, .. },
                ..
            } => Some(*code),
            _ => None,
        }
    }
}

impl From<kiln_cache::Error> for SolveError {
    fn from(e: kiln_cache::Error) -> Self {
        SolveError::Store(Arc::new(e))
    }
}

macro_rules! step_failure_from {
    ($($variant:ident($t:ty)),*) => {$(
        impl From<$t> for StepFailure {
            fn from(e: $t) -> Self {
                StepFailure::$variant(Arc::new(e))
            }
        }
    )*};
}
step_failure_from!(
    Source(SourceError),
    Exec(ExecError),
    File(FileOpError),
    Context(ContextError),
    Store(kiln_cache::Error)
);
