//! File ops (COPY, ADD, mkdir, mkfile, rm, symlink): the actions of [`crate::fileop`] applied to an overlay
//! of the base input, reading sources from client directories in place and from other results through
//! read-only views.

use std::sync::Arc;

use kiln_fsutil::ignore::PatternMatcher;
use kiln_llb::FileOp;

use super::joined;
use crate::fileop::{self, FileOpEnv};
use crate::overlay::MountedTree;
use crate::solve::Inner;
use crate::source::{LayerRef, Loaded};
use crate::{SolveError, StepFailure};

pub(crate) async fn run(
    inner: &Arc<Inner>,
    idx: usize,
    file: &FileOp,
    inputs: &[Arc<Loaded>],
) -> Result<Vec<LayerRef>, SolveError> {
    let below = match (file.has_base, inputs.first()) {
        (true, Some(base)) => inner.layers_of(idx, base)?,
        _ => Vec::new(),
    };
    let prepared = inner.prepare(idx)?;
    let mut views: Vec<MountedTree> = Vec::new();
    // With nothing below, the upper dir is the whole tree and needs no overlay.
    let target = if below.is_empty() {
        prepared.upper.clone()
    } else {
        let view = MountedTree::mount_upper(
            &inner.store,
            &inner.snapshot_dirs(&below),
            &prepared.upper,
            &prepared.work,
        )
        .map_err(|e| {
            inner.step_error(
                idx,
                StepFailure::Mount {
                    what: "mounting the step's filesystem".to_string(),
                    error: Arc::new(e),
                },
            )
        })?;
        let path = view.path().to_path_buf();
        views.push(view);
        path
    };
    let mut roots = Vec::with_capacity(inputs.len());
    let mut ignores: Vec<Option<Arc<PatternMatcher>>> = Vec::with_capacity(inputs.len());
    for (i, input) in inputs.iter().enumerate() {
        match &**input {
            // The matcher also tells the copy that the input is a client directory, whose files are owned by
            // root in the image whoever owns them on the host.
            Loaded::Dir { path, ignore } => {
                roots.push(path.clone());
                ignores.push(Some(ignore.clone()));
            }
            // The base is the tree being written; a copy from it reads the merged view.
            Loaded::Layers(_) if file.has_base && i == 0 => {
                roots.push(target.clone());
                ignores.push(None);
            }
            Loaded::Layers(layers) => {
                let view = inner.mount_view(idx, layers, false)?;
                roots.push(view.path().to_path_buf());
                ignores.push(None);
                views.push(view);
            }
        }
    }
    let actions = file.actions.clone();
    let result = joined(
        tokio::task::spawn_blocking(move || {
            let ignore_refs: Vec<Option<&PatternMatcher>> = ignores.iter().map(|i| i.as_deref()).collect();
            let env = FileOpEnv {
                target: &target,
                inputs: &roots,
                ignore: &ignore_refs,
                timestamp: None,
            };
            fileop::apply(&env, &actions)
        })
        .await,
    )?;
    drop(views);
    result.map_err(|e| inner.step_error(idx, e))?;
    inner.commit(idx, prepared, &below)
}
