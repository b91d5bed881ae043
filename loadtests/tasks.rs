//! Running `count` jobs with at most `concurrency` in flight, a deadline, and a progress
//! line: the one loop shape every setup phase and closed-loop measurement uses.

use std::{
    future::Future,
    sync::{
        Arc, Mutex, PoisonError,
        atomic::{AtomicUsize, Ordering},
    },
    time::Instant,
};

use crate::{
    error::{Error, Result},
    progress::Progress,
};

/// Runs `job(0..count)` with bounded concurrency. Results come back in index order; jobs not
/// started or not finished by `deadline` are errors.
pub(crate) async fn run_bounded<T, F, Fut>(
    label: &str,
    count: usize,
    concurrency: usize,
    deadline: Instant,
    job: F,
) -> Vec<Result<T>>
where
    T: Send + 'static,
    F: Fn(usize) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<T>> + Send + 'static,
{
    let progress = Progress::start(label, count);
    let job = Arc::new(job);
    let next = Arc::new(AtomicUsize::new(0));
    let slots: Arc<Mutex<Vec<Option<Result<T>>>>> =
        Arc::new(Mutex::new((0..count).map(|_| None).collect()));
    let deadline = tokio::time::Instant::from_std(deadline);
    let mut workers = Vec::new();
    for _ in 0..concurrency.clamp(1, count.max(1)) {
        let job = Arc::clone(&job);
        let next = Arc::clone(&next);
        let slots = Arc::clone(&slots);
        let progress = Arc::clone(&progress);
        workers.push(tokio::spawn(async move {
            loop {
                let index = next.fetch_add(1, Ordering::Relaxed);
                if index >= count {
                    break;
                }
                let result = if tokio::time::Instant::now() >= deadline {
                    Err(Error::new("not started before the deadline (--max-duration)"))
                } else {
                    match tokio::time::timeout_at(deadline, job(index)).await {
                        Ok(result) => result,
                        Err(_) => Err(Error::new("unfinished at the deadline (--max-duration)")),
                    }
                };
                progress.add(result.is_ok());
                let mut slots = slots.lock().unwrap_or_else(PoisonError::into_inner);
                if let Some(slot) = slots.get_mut(index) {
                    *slot = Some(result);
                }
            }
        }));
    }
    for worker in workers {
        if let Err(error) = worker.await {
            crate::progress::note(&format!("a worker task failed: {error}"));
        }
    }
    progress.finish();
    let mut slots = slots.lock().unwrap_or_else(PoisonError::into_inner);
    slots
        .drain(..)
        .map(|slot| slot.unwrap_or_else(|| Err(Error::new("job did not run (worker failed)"))))
        .collect()
}

/// Results split into successes (with their job index) and failures.
#[derive(Debug)]
pub(crate) struct Outcome<T> {
    pub(crate) ok: Vec<(usize, T)>,
    pub(crate) failed: u64,
    /// The first few failure messages.
    pub(crate) examples: Vec<String>,
}

pub(crate) fn partition<T>(results: Vec<Result<T>>) -> Outcome<T> {
    let mut outcome = Outcome { ok: Vec::new(), failed: 0, examples: Vec::new() };
    for (index, result) in results.into_iter().enumerate() {
        match result {
            Ok(value) => outcome.ok.push((index, value)),
            Err(error) => {
                outcome.failed += 1;
                if outcome.examples.len() < 5 {
                    outcome.examples.push(error.to_string());
                }
            }
        }
    }
    outcome
}
