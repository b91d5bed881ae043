//! Responses that keep something alive until they have been written to the client: a send
//! holds its sender's syncs back until its answer is out (see `SyncHub::hold`).
//!
//! A [`Held`] response shares its guard between its body and the connection. hyper drops a
//! body once it has buffered the last bytes, just *before* writing them out; so every
//! connection of our listeners (`http::listener`) also keeps the guard until its next
//! completed flush, which is the one that writes the answer. Whichever lets go last releases
//! it: after the flush on our listeners, at the body's end where no listener of ours serves
//! the request (a router called in-process).

use std::{
    any::Any,
    pin::Pin,
    sync::{Arc, Mutex},
    task::{Context, Poll},
};

use axum::{
    body::{Body, Bytes},
    extract::Request,
    middleware::Next,
    response::{IntoResponse, Response},
};
use http_body::{Frame, SizeHint};

/// `response`, holding `guard` until it has been written.
pub struct Held<R, G> {
    pub response: R,
    pub guard: G,
}

/// A held guard, type-erased so the connection can keep it; only ever dropped.
#[derive(Clone)]
struct SharedGuard(#[allow(dead_code)] Arc<dyn Any + Send + Sync>);

impl<R, G> IntoResponse for Held<R, G>
where
    R: IntoResponse,
    G: Send + Sync + 'static,
{
    fn into_response(self) -> Response {
        let Self { response, guard } = self;
        let guard = SharedGuard(Arc::new(guard));
        let (mut parts, body) = response.into_response().into_parts();
        // For `keep_until_flushed`, which hands it to the connection.
        parts.extensions.insert(guard.clone());
        Response::from_parts(parts, Body::new(HeldBody { body, _guard: guard }))
    }
}

/// A body that carries a guard; everything else is the inner body's, its length included
/// (so the response keeps its `content-length`).
struct HeldBody {
    body: Body,
    _guard: SharedGuard,
}

impl http_body::Body for HeldBody {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        context: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, axum::Error>>> {
        Pin::new(&mut self.body).poll_frame(context)
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}

/// Guards a connection keeps until its next completed flush.
#[derive(Clone, Default)]
pub struct ConnectionFlushes(Arc<Mutex<Vec<SharedGuard>>>);

impl ConnectionFlushes {
    fn keep(&self, guard: SharedGuard) {
        if let Ok(mut kept) = self.0.lock() {
            kept.push(guard);
        }
    }

    /// Lets go of everything kept: what was buffered before has been written.
    pub(super) fn flushed(&self) {
        let released = self.0.lock().map(|mut kept| std::mem::take(&mut *kept));
        drop(released);
    }
}

/// Middleware: hands a held response's guard to its connection (when it has one).
pub async fn keep_until_flushed(request: Request, next: Next) -> Response {
    let flushes = request.extensions().get::<ConnectionFlushes>().cloned();
    let mut response = next.run(request).await;
    if let Some(guard) = response.extensions_mut().remove::<SharedGuard>()
        && let Some(flushes) = flushes
    {
        flushes.keep(guard);
    }
    response
}
