//! The solver: turns an LLB graph into results. It schedules the graph in parallel, computes cache keys (op
//! digest + input keys + content hashes of exactly the files an op reads), deduplicates identical vertices,
//! and runs ops through interfaces: [`source::Source`]s provide content, an [`executor::Executor`] runs RUN
//! commands (the namespace sandbox lives in `kiln-sandbox`), file operations run in-process ([`fileop`]).
//! It knows nothing of Dockerfiles or of what becomes of its results.

pub mod context;
mod error;
pub mod executor;
pub mod fileop;
mod graph;
mod ops;
pub mod overlay;
pub mod progress;
pub mod records;
pub mod solve;
pub mod source;

pub use error::{SolveError, StepFailure};
