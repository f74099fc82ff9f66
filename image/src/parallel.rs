//! Running transfers (blob downloads and uploads) side by side while their progress reaches one callback.

use std::future::Future;
use std::sync::Arc;

use tokio::sync::Semaphore;
use tokio::sync::mpsc::{UnboundedSender, unbounded_channel};
use tokio::task::JoinSet;

/// Where a job reports progress. Sending never blocks; a send to a finished run is dropped.
pub type Events<P> = UnboundedSender<P>;

/// Runs each job as a tokio task, at most `limit` at a time, and hands the events they send to `progress`
/// as they arrive. Returns the first error, aborting the jobs still running; their effects must be safe to
/// abandon (a blob writer that is dropped uncommitted leaves nothing).
pub async fn run<P, E, F, Fut>(jobs: Vec<F>, limit: usize, mut progress: impl FnMut(P)) -> Result<(), E>
where
    P: Send + 'static,
    E: Send + 'static,
    F: FnOnce(Events<P>) -> Fut,
    Fut: Future<Output = Result<(), E>> + Send + 'static,
{
    let (tx, mut rx) = unbounded_channel();
    let permits = Arc::new(Semaphore::new(limit.max(1)));
    let mut set = JoinSet::new();
    for job in jobs {
        let fut = job(tx.clone());
        let permits = permits.clone();
        set.spawn(async move {
            // The semaphore is never closed, so acquiring only waits.
            let _permit = permits.acquire_owned().await.ok();
            fut.await
        });
    }
    drop(tx);
    loop {
        tokio::select! {
            Some(event) = rx.recv() => progress(event),
            joined = set.join_next() => match joined {
                None => break,
                Some(Ok(Ok(()))) => {}
                Some(Ok(Err(e))) => {
                    set.abort_all();
                    return Err(e);
                }
                Some(Err(join)) => {
                    if join.is_panic() {
                        std::panic::resume_unwind(join.into_panic());
                    }
                    // Cancelled: only abort_all above cancels, and it returns right after.
                }
            },
        }
    }
    while let Ok(event) = rx.try_recv() {
        progress(event);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn events_arrive_and_the_first_error_wins() {
        let jobs: Vec<_> = (0..5u32)
            .map(|i| {
                move |tx: Events<u32>| async move {
                    let _ = tx.send(i);
                    if i == 3 {
                        Err(format!("job {i} failed"))
                    } else {
                        Ok(())
                    }
                }
            })
            .collect();
        let mut seen = Vec::new();
        let err = run(jobs, 2, |e| seen.push(e)).await.unwrap_err();
        assert_eq!(err, "job 3 failed");

        let jobs: Vec<_> = (0..5u32)
            .map(|i| move |tx: Events<u32>| async move { tx.send(i).map_err(|_| "closed") })
            .collect();
        let mut seen = Vec::new();
        run(jobs, 2, |e| seen.push(e)).await.unwrap();
        seen.sort();
        assert_eq!(seen, vec![0, 1, 2, 3, 4]);
    }
}
