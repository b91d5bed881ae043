//! Responses that keep something alive until they have been written to the client: a send
//! holds its sender's syncs back until its answer is out (see `SyncHub::hold`).
//!
//! A [`Held`] response shares its guard between its body and the connection. hyper drops a
//! body once it has buffered the last bytes, just *before* writing them out; so connections
//! accepted through [`Flushing`] also keep the guard until their next completed flush, which
//! is the one that writes the answer. Whichever lets go last releases it: after the flush on
//! our TCP listeners, at the body's end elsewhere (the UNIX socket, in-process tests).

use std::{
    any::Any,
    convert::Infallible,
    io,
    net::SocketAddr,
    pin::Pin,
    sync::{Arc, Mutex},
    task::{Context, Poll},
};

use axum::{
    Router,
    body::{Body, Bytes},
    extract::{ConnectInfo, Request},
    middleware::Next,
    response::{IntoResponse, Response},
    routing::future::RouteFuture,
    serve::{IncomingStream, Listener},
};
use http_body::{Frame, SizeHint};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tower::Service;

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
    fn flushed(&self) {
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

/// A listener whose connections tell [`ConnectionFlushes`] when they have flushed.
pub struct Flushing<L>(pub L);

impl<L> Listener for Flushing<L>
where
    L: Listener<Addr = SocketAddr>,
{
    type Io = FlushingIo<L::Io>;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Self::Io, SocketAddr) {
        let (io, address) = self.0.accept().await;
        (FlushingIo { io, flushes: ConnectionFlushes::default() }, address)
    }

    fn local_addr(&self) -> io::Result<SocketAddr> {
        self.0.local_addr()
    }
}

/// A connection's stream; every completed flush releases what the connection kept.
pub struct FlushingIo<T> {
    io: T,
    flushes: ConnectionFlushes,
}

impl<T> Drop for FlushingIo<T> {
    fn drop(&mut self) {
        // A connection that ends releases everything, written or not.
        self.flushes.flushed();
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for FlushingIo<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        context: &mut Context<'_>,
        buffer: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_read(context, buffer)
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for FlushingIo<T> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        context: &mut Context<'_>,
        buffer: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.io).poll_write(context, buffer)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        context: &mut Context<'_>,
        buffers: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.io).poll_write_vectored(context, buffers)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, context: &mut Context<'_>) -> Poll<io::Result<()>> {
        let flushed = Pin::new(&mut self.io).poll_flush(context);
        if flushed.is_ready() {
            self.flushes.flushed();
        }
        flushed
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, context: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(context)
    }
}

/// The per-connection service of a [`Flushing`] listener: the router, with the peer address
/// (as `ConnectInfo<SocketAddr>`, like `into_make_service_with_connect_info`) and the
/// connection's [`ConnectionFlushes`] in every request's extensions.
#[derive(Clone)]
pub struct ConnectionService(pub Router);

impl<L> Service<IncomingStream<'_, Flushing<L>>> for ConnectionService
where
    L: Listener<Addr = SocketAddr>,
{
    type Response = WithConnection;
    type Error = Infallible;
    type Future = std::future::Ready<Result<WithConnection, Infallible>>;

    fn poll_ready(&mut self, _context: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, stream: IncomingStream<'_, Flushing<L>>) -> Self::Future {
        std::future::ready(Ok(WithConnection {
            router: self.0.clone(),
            flushes: stream.io().flushes.clone(),
            address: *stream.remote_addr(),
        }))
    }
}

/// The router serving one connection.
#[derive(Clone)]
pub struct WithConnection {
    router: Router,
    flushes: ConnectionFlushes,
    address: SocketAddr,
}

impl Service<Request> for WithConnection {
    type Response = Response;
    type Error = Infallible;
    type Future = RouteFuture<Infallible>;

    fn poll_ready(&mut self, context: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Service::<Request>::poll_ready(&mut self.router, context)
    }

    fn call(&mut self, mut request: Request) -> Self::Future {
        request.extensions_mut().insert(ConnectInfo(self.address));
        request.extensions_mut().insert(self.flushes.clone());
        self.router.call(request)
    }
}
