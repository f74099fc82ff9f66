//! The solver: turns an LLB definition into results. It schedules the graph in parallel, computes cache keys
//! (op digest + input keys + content hashes of exactly the files an op reads), deduplicates identical vertices,
//! and runs ops — RUN in a Linux sandbox, file operations in-process. Filled in by the build issue.
