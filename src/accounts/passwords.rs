//! Password hashing with argon2id on a few dedicated threads: a hash takes tens of
//! milliseconds of CPU on purpose and must not stall the async runtime.
//!
//! Each hash needs argon2's 19 MiB working memory. Run on tokio's blocking pool, hundreds of
//! concurrent registrations or logins land on as many threads, and the allocator keeps each
//! thread's freed block around: a burst of registrations left the server holding over a GiB.
//! A fixed pool of one thread per core bounds both the memory (one block per thread, reused)
//! and the CPU that password checks can take from everything else.

use std::sync::OnceLock;

use argon2::{
    Argon2,
    password_hash::{PasswordHasher, PasswordVerifier},
};
use tokio::sync::oneshot;

use crate::{Error, Result};

type Job = Box<dyn FnOnce() + Send>;

/// The queue of the hashing threads, started on first use.
fn pool() -> &'static loole::Sender<Job> {
    static POOL: OnceLock<loole::Sender<Job>> = OnceLock::new();
    POOL.get_or_init(|| {
        let (sender, receiver) = loole::unbounded::<Job>();
        let threads = std::thread::available_parallelism().map_or(2, usize::from);
        for index in 0..threads {
            let receiver = receiver.clone();
            let spawned =
                std::thread::Builder::new().name(format!("password-{index}")).spawn(move || {
                    while let Ok(job) = receiver.recv() {
                        // A job that panics must not take its thread along: once every thread
                        // had died, every login would fail. Its caller sees its reply dropped.
                        if std::panic::catch_unwind(std::panic::AssertUnwindSafe(job)).is_err() {
                            tracing::error!("a password hashing job panicked");
                        }
                    }
                });
            if let Err(error) = spawned {
                tracing::error!(%error, "cannot start a password hashing thread");
            }
        }
        sender
    })
}

/// Runs `work` on the hashing threads.
async fn run<T: Send + 'static>(work: impl FnOnce() -> T + Send + 'static) -> Result<T> {
    let (reply, answer) = oneshot::channel();
    pool()
        .send(Box::new(move || {
            let _ = reply.send(work());
        }))
        .map_err(|_| Error::internal("the password hashing threads are gone"))?;
    answer.await.map_err(|_| Error::internal("password hashing did not answer"))
}

/// Hashes `password` into a PHC string.
pub async fn hash(password: String) -> Result<String> {
    run(move || {
        Argon2::default()
            .hash_password(password.as_bytes())
            .map(|hash| hash.to_string())
            .map_err(|error| Error::internal(format!("password hashing failed: {error}")))
    })
    .await?
}

/// Whether `password` matches the stored PHC `hash`.
pub async fn verify(password: String, hash: String) -> bool {
    run(move || Argon2::default().verify_password(password.as_bytes(), hash.as_str()).is_ok())
        .await
        .unwrap_or(false)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn panicking_jobs_do_not_use_up_the_hashing_threads() {
        let threads = std::thread::available_parallelism().map_or(2, usize::from);
        for _ in 0..=threads {
            let failed = run(|| -> u32 { panic!("a job that panics") }).await;
            assert!(failed.is_err());
        }
        assert_eq!(run(|| 42).await.expect("the threads still serve"), 42);
    }
}
