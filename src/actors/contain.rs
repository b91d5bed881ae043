//! Containing panics inside an actor. A panic fails the actor, and its supervisor restarts
//! it after a backoff during which everyone's messages to it get 429: fine for a bug, not
//! for input. Where an actor hands what a client or another server sent to a dependency
//! that may panic on it (ruma's push rule evaluation, its auth rules), the call runs in
//! [`contained`], so only that request fails and the actor keeps serving the others.
//! Inputs known to make a dependency panic are refused before they get there; this is the
//! second line.

use std::{
    any::Any,
    future::Future,
    panic::{AssertUnwindSafe, catch_unwind},
    pin::Pin,
    task::{Context, Poll},
};

/// Runs `future`, turning a panic while it is polled into `Err` with the panic's message.
/// The caller must not rely on state the future was changing when it panicked.
pub async fn contained<F: Future>(future: F) -> Result<F::Output, String> {
    CatchPanic { future: Box::pin(future) }.await
}

/// Runs `work`, turning a panic into `Err` with the panic's message.
pub fn contained_sync<T>(work: impl FnOnce() -> T) -> Result<T, String> {
    catch_unwind(AssertUnwindSafe(work)).map_err(|payload| panic_message(payload.as_ref()))
}

struct CatchPanic<F> {
    future: Pin<Box<F>>,
}

impl<F: Future> Future for CatchPanic<F> {
    type Output = Result<F::Output, String>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let future = self.get_mut().future.as_mut();
        match catch_unwind(AssertUnwindSafe(|| future.poll(cx))) {
            Ok(Poll::Ready(output)) => Poll::Ready(Ok(output)),
            Ok(Poll::Pending) => Poll::Pending,
            Err(payload) => Poll::Ready(Err(panic_message(payload.as_ref()))),
        }
    }
}

/// The message a panic was raised with.
pub fn panic_message(payload: &(dyn Any + Send)) -> String {
    if let Some(message) = payload.downcast_ref::<&str>() {
        (*message).to_owned()
    } else if let Some(message) = payload.downcast_ref::<String>() {
        message.clone()
    } else {
        "a panic without a message".to_owned()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_panic_becomes_an_error_and_a_value_passes() {
        assert_eq!(contained(async { 7 }).await, Ok(7));
        let panicked = contained(async {
            tokio::task::yield_now().await;
            panic!("boom {}", 1);
        })
        .await;
        assert_eq!(panicked, Err::<(), _>("boom 1".to_owned()));
        assert_eq!(contained_sync(|| -> u8 { panic!("static") }), Err("static".to_owned()));
    }
}
