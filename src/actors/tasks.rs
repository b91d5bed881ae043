//! Background tasks that are not actors: the listeners' accept loops and their connections,
//! the server's periodic work, admin commands run in the background. None of them may die
//! unseen. A panic in one is logged as an error and counted in
//! `tuwunel_task_panics_total{task}` (which exists at 0 from the start, for alerts); a task
//! that must keep running is restarted ([`supervise`], or a loop of its own around
//! [`contained`](super::contain::contained) where it holds state that must survive, such as
//! a listening socket), and one that runs once reports how it ended to whoever waits for it
//! ([`spawn`]).
//!
//! What is not here, and why: keyed actors have their own supervisors; the Writer thread
//! stops the server when it dies (`server::stop_if_the_writer_dies`); the password hashing
//! and metrics threads catch panics per job; timers that only sleep and send a message
//! cannot fail; work handed to the blocking pool and awaited by a request (sync, search,
//! thumbnails, backups) reports a panic to that request as a 500 (or, for thumbnails, a 400)
//! and the log.

use std::{future::Future, time::Duration};

use tokio::task::{JoinError, JoinHandle};

use super::contain::{contained, panic_message};

/// The background tasks, by the `task` label of `tuwunel_task_panics_total`.
pub const NAMES: [&str; 11] = [
    "listener",
    "connection",
    "admin_room_command",
    "admin_startup_command",
    "admin_signal_command",
    "housekeeping",
    "memory_trim",
    "profile_propagation",
    "federation_fanout",
    "federation_wake",
    "federation_transaction",
];

/// The first pause before a supervised task runs again; it doubles per panic in a row.
const FIRST_RESTART: Duration = Duration::from_millis(100);
/// The longest pause before a supervised task runs again.
const LAST_RESTART: Duration = Duration::from_secs(30);

/// Logs and counts a panic of the background task `task`.
pub fn report_panic(task: &'static str, panic: &str) {
    debug_assert!(NAMES.contains(&task), "{task} is not listed in tasks::NAMES");
    metrics::counter!("tuwunel_task_panics_total", "task" => task).increment(1);
    tracing::error!(task, %panic, "a background task panicked");
}

/// Reports a task that ended with a panic (a cancelled one is not reported).
pub fn report_join_error(task: &'static str, error: JoinError) {
    if error.is_panic() {
        report_panic(task, &panic_message(error.into_panic().as_ref()));
    }
}

/// Runs `future` in a task of its own; a panic is reported and the handle yields `None`.
pub fn spawn<T: Send + 'static>(
    task: &'static str,
    future: impl Future<Output = T> + Send + 'static,
) -> JoinHandle<Option<T>> {
    tokio::spawn(async move {
        match contained(future).await {
            Ok(output) => Some(output),
            Err(panic) => {
                report_panic(task, &panic);
                None
            }
        }
    })
}

/// Runs the future `make` returns until it completes; each time it panics, the panic is
/// reported and, after a pause (doubling from 100 ms to 30 s while the panics follow each
/// other), a new one runs.
pub fn supervise<F, Fut>(task: &'static str, mut make: F) -> JoinHandle<()>
where
    F: FnMut() -> Fut + Send + 'static,
    Fut: Future<Output = ()> + Send,
{
    tokio::spawn(async move {
        let mut pause = FIRST_RESTART;
        loop {
            let started = tokio::time::Instant::now();
            match contained(make()).await {
                Ok(()) => return,
                Err(panic) => {
                    report_panic(task, &panic);
                    // A task that ran well for a while before panicking starts over quickly.
                    if started.elapsed() > LAST_RESTART {
                        pause = FIRST_RESTART;
                    }
                    tracing::warn!(task, ?pause, "restarting the background task");
                    tokio::time::sleep(pause).await;
                    pause = (pause * 2).min(LAST_RESTART);
                }
            }
        }
    })
}

#[cfg(test)]
mod tests {
    use std::sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    };

    use super::*;

    #[tokio::test]
    async fn a_supervised_task_runs_again_after_a_panic_until_it_completes() {
        let runs = Arc::new(AtomicUsize::new(0));
        let counted = Arc::clone(&runs);
        let task = supervise("housekeeping", move || {
            let run = counted.fetch_add(1, Ordering::SeqCst) + 1;
            async move {
                tokio::task::yield_now().await;
                assert!(run >= 3, "run {run} fails");
            }
        });
        tokio::time::timeout(Duration::from_secs(5), task)
            .await
            .expect("completes after two restarts")
            .expect("the supervisor itself never panics");
        assert_eq!(runs.load(Ordering::SeqCst), 3);
    }

    #[tokio::test]
    async fn a_spawned_task_reports_a_panic_as_none() {
        let panicked = spawn("housekeeping", async {
            tokio::task::yield_now().await;
            panic!("boom");
        });
        assert_eq!(panicked.await.expect("contained"), None::<()>);
        assert_eq!(spawn("housekeeping", async { 5 }).await.expect("ran"), Some(5));
    }
}
