//! Running the ops that do work on files: `exec` (RUN, through the [`Executor`](crate::executor::Executor))
//! and `file` (COPY/ADD and the other file actions, in-process). Both write into a prepared snapshot stacked
//! on their input's layers and commit it as one more layer.

pub(crate) mod exec;
pub(crate) mod file;

use std::path::PathBuf;
use std::sync::Arc;

use kiln_cache::PreparedSnapshot;

use crate::overlay::{self, MountedTree};
use crate::solve::Inner;
use crate::source::LayerRef;
use crate::{SolveError, StepFailure};

impl Inner {
    fn snapshot_dirs(&self, layers: &[LayerRef]) -> Vec<PathBuf> {
        overlay::lower_dirs(layers.iter().map(|l| self.store.snapshot_path(&l.snapshot)))
    }

    /// A directory showing `layers` merged; writable views keep their writes in a throwaway upper dir.
    fn mount_view(&self, idx: usize, layers: &[LayerRef], writable: bool) -> Result<MountedTree, SolveError> {
        MountedTree::mount(&self.store, &self.snapshot_dirs(layers), writable).map_err(|e| {
            self.step_error(
                idx,
                StepFailure::Mount {
                    what: "mounting a view of another result".to_string(),
                    error: Arc::new(e),
                },
            )
        })
    }

    fn prepare(&self, idx: usize) -> Result<PreparedSnapshot, SolveError> {
        self.store.prepare_snapshot().map_err(|e| self.step_error(idx, e))
    }

    /// Commits the step's upper dir as a layer on `below`.
    fn commit(
        &self,
        idx: usize,
        prepared: PreparedSnapshot,
        below: &[LayerRef],
    ) -> Result<Vec<LayerRef>, SolveError> {
        let parent = below.last().map(|l| &l.snapshot);
        let snapshot = self
            .store
            .commit_snapshot(prepared, parent)
            .map_err(|e| self.step_error(idx, e))?;
        let mut layers = below.to_vec();
        layers.push(LayerRef { snapshot, blob: None });
        Ok(layers)
    }
}

/// A blocking job's panic or cancellation, as the step's failure.
fn joined<T>(result: Result<T, tokio::task::JoinError>) -> Result<T, SolveError> {
    result.map_err(|e| match e.is_cancelled() {
        true => SolveError::Cancelled,
        false => SolveError::Graph(format!("a step's worker thread failed: {e}")),
    })
}
