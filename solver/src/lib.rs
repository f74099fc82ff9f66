//! The solver: turns an LLB definition into results. It schedules the graph in parallel, computes cache keys
//! (op digest + input keys + content hashes of exactly the files an op reads), deduplicates identical vertices,
//! and runs ops — RUN in a Linux sandbox, file operations in-process.
pub mod base;
pub mod context;
pub mod fileop;
pub mod http;
pub mod overlay;
pub mod progress;
pub mod sandbox;
pub mod solve;
