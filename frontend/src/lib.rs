//! The Dockerfile frontend: everything that knows what a Dockerfile means and nothing that executes it.
//! It lexes and parses Dockerfiles (nom) into an AST that keeps every instruction's lines, expands shell words
//! with BuildKit's rules, scopes ARG and ENV, reads `.dockerignore`, runs lint checks, and converts the stages
//! a target needs into an LLB graph (`kiln-llb`) for the solver.

pub mod ast;
pub mod convert;
pub mod dockerignore;
pub mod error;
pub mod instructions;
pub mod lint;
pub mod parser;
pub mod shell;

pub use error::Diagnostic;
