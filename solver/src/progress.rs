//! Progress is a stream of events from the solver to one renderer the CLI picks (`--progress`); the solver
//! never prints.

use std::time::Duration;

/// Which output of a running step a log chunk came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stream {
    Stdout,
    Stderr,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// A step starts running; `id` is stable for the build and numbers steps in the order they start.
    Started {
        id: usize,
        name: String,
    },
    /// Output of a running step.
    Log {
        id: usize,
        stream: Stream,
        data: Vec<u8>,
    },
    /// A step whose result came from the cache.
    Cached {
        id: usize,
        name: String,
    },
    Done {
        id: usize,
        duration: Duration,
    },
    Failed {
        id: usize,
        duration: Duration,
        error: String,
    },
    /// A step stopped because the build was cancelled (another step failed, or the caller cancelled).
    Cancelled {
        id: usize,
        duration: Duration,
    },
}

/// Where the solver sends events. Sending never blocks the solver: a renderer that falls behind drops nothing,
/// the channel is unbounded.
pub type EventSender = tokio::sync::mpsc::UnboundedSender<Event>;
