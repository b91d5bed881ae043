//! The accept loop every listener runs (TCP addresses, the UNIX socket, the metrics address)
//! and what each connection is held to, so that slow or idle clients cannot hold the
//! server's resources:
//!
//! - **headers**: a new connection must deliver its first request's head within
//!   `client_header_timeout`, and every later request its head within that time of its first
//!   byte (a client sending half a header is cut off);
//! - **idle**: a keep-alive connection waiting for its next request is closed after
//!   `client_idle_timeout` (long enough that a reverse proxy's own idle limit ends it first);
//! - **responses**: a client that stops accepting a response for `client_response_timeout`
//!   is cut off (it would otherwise hold the connection and the response's buffers);
//! - **connections per address**: at most `client_max_connections_per_ip` at once from one
//!   IPv4 address or IPv6 /64; loopback peers are a reverse proxy on this host and are not
//!   counted (the proxy limits its own clients);
//! - **requests per connection**: HTTP/1.1 carries one request at a time; an HTTP/2
//!   connection at most [`MAX_STREAMS_PER_CONNECTION`] (hyper's default is 200), so the
//!   per-address cap also bounds how many in-flight permits one address can hold.
//!
//! While a request is being handled no connection deadline runs: the request body and the
//! handler have their own limits (`middleware::deadlines`), and a `/sync` long poll must be
//! able to wait. Requests take an in-flight permit (`middleware::admission`) only once their
//! head has arrived, so slow headers never hold one.
//!
//! hyper-util's connection builder serves HTTP/1.1 and HTTP/2 (prior knowledge) on each
//! accepted stream. On shutdown the loop stops accepting and closes each connection once its
//! requests are answered; the listener's task ends when the last one has. [`serve_connection`]
//! takes any byte stream: a TLS listener completes its handshake on the accepted stream
//! (`super::tls`, bounded by the header timeout) and hands the decrypted stream to it.

use std::{
    collections::HashMap,
    convert::Infallible,
    future::Future,
    io,
    net::{IpAddr, Ipv6Addr, SocketAddr},
    pin::Pin,
    sync::{Arc, Mutex},
    task::{Context, Poll},
    time::{Duration, Instant},
};

use axum::{
    Router,
    body::Body,
    extract::{ConnectInfo, Request},
    response::Response,
};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper_util::{
    rt::{TokioExecutor, TokioIo},
    server::conn::auto::Builder,
};
use tokio::{
    io::{AsyncRead, AsyncWrite, ReadBuf},
    net::{TcpListener, UnixListener},
    sync::Notify,
    task::{JoinHandle, JoinSet},
    time::Sleep,
};
use tower::ServiceExt;

use super::{
    held::ConnectionFlushes,
    tls::{self, Accepted, Transport},
};
use crate::{
    Config,
    actors::{contain::contained, tasks},
    shutdown::Shutdown,
};

/// What every connection of a listener is held to (see the module documentation).
#[derive(Debug, Clone)]
pub struct ConnectionLimits {
    pub header: Duration,
    pub idle: Duration,
    pub response: Duration,
    /// Connections at once per address (0: no limit).
    pub per_address: usize,
    /// Count loopback peers too (only tests do; in service they are the reverse proxy).
    pub count_loopback: bool,
    /// Open connections per address, shared by the listeners that use these limits.
    open: Arc<Mutex<HashMap<IpAddr, usize>>>,
}

impl ConnectionLimits {
    pub fn new(header: Duration, idle: Duration, response: Duration, per_address: usize) -> Self {
        Self { header, idle, response, per_address, count_loopback: false, open: Arc::default() }
    }

    pub fn from_config(config: &Config) -> Self {
        let seconds = |value: u64| Duration::from_secs(value.max(1));
        Self::new(
            seconds(config.client_header_timeout),
            seconds(config.client_idle_timeout),
            seconds(config.client_response_timeout),
            config.client_max_connections_per_ip,
        )
    }

    /// Counts a new connection from `peer`, or refuses it when its address is at the limit.
    fn admit(&self, peer: IpAddr) -> Result<Option<Admitted>, ()> {
        let exempt = !self.count_loopback && address_key(peer).is_loopback();
        if self.per_address == 0 || exempt {
            return Ok(None);
        }
        let key = address_key(peer);
        let mut open = self.open.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        let count = open.entry(key).or_insert(0);
        if *count >= self.per_address {
            return Err(());
        }
        *count += 1;
        Ok(Some(Admitted { open: Arc::clone(&self.open), key }))
    }
}

/// The address connections are counted under: an IPv4 address (also when it arrives
/// IPv4-mapped), or the /64 network of an IPv6 address, since one client typically holds a
/// whole /64.
fn address_key(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V4(_) => ip,
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => {
                let mut segments = v6.segments();
                segments[4..].fill(0);
                IpAddr::V6(Ipv6Addr::from(segments))
            }
        },
    }
}

/// One counted connection; uncounted when dropped.
struct Admitted {
    open: Arc<Mutex<HashMap<IpAddr, usize>>>,
    key: IpAddr,
}

impl Drop for Admitted {
    fn drop(&mut self) {
        let mut open = self.open.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some(count) = open.get_mut(&self.key) {
            *count = count.saturating_sub(1);
            if *count == 0 {
                open.remove(&self.key);
            }
        }
    }
}

/// A listening socket the accept loop can take connections from.
pub trait Acceptor: Send + Sync + 'static {
    type Stream: AsyncRead + AsyncWrite + Unpin + Send + 'static;

    /// The next connection and its peer address (`None` for a UNIX socket).
    fn accept(&self)
    -> impl Future<Output = io::Result<(Self::Stream, Option<SocketAddr>)>> + Send;
}

impl Acceptor for TcpListener {
    type Stream = tokio::net::TcpStream;

    async fn accept(&self) -> io::Result<(Self::Stream, Option<SocketAddr>)> {
        let (stream, peer) = TcpListener::accept(self).await?;
        // Responses are written whole; waiting to coalesce them only adds latency.
        let _ = stream.set_nodelay(true);
        Ok((stream, Some(peer)))
    }
}

impl Acceptor for UnixListener {
    type Stream = tokio::net::UnixStream;

    async fn accept(&self) -> io::Result<(Self::Stream, Option<SocketAddr>)> {
        let (stream, _) = UnixListener::accept(self).await?;
        Ok((stream, None))
    }
}

/// Requests one HTTP/2 connection may have in progress at once (`SETTINGS_MAX_CONCURRENT_STREAMS`).
/// A client that wants more opens another connection, which the per-address cap counts;
/// so one address holds at most this many times `client_max_connections_per_ip` permits.
/// HTTP/2 reaches tuwunel only with prior knowledge (there is no TLS listener to negotiate
/// it), which in practice means a reverse proxy speaking h2c: it opens more connections
/// when one is full.
pub const MAX_STREAMS_PER_CONNECTION: u32 = 32;

/// How long the loop pauses after a failed accept (such as running out of file
/// descriptors), so it does not spin.
const ACCEPT_RETRY: Duration = Duration::from_millis(100);

/// Serves `app` on every connection `acceptor` takes until `shutdown` fires, then finishes
/// the connections' requests. The task ends when the last connection has closed; aborting
/// it closes them all. A panic in the accept loop (a bug) is reported and the loop starts
/// again on the same socket, the open connections untouched: the address never stops
/// accepting unnoticed. A connection whose task panics is reported too.
pub fn spawn<A: Acceptor>(
    acceptor: A,
    app: Router,
    limits: ConnectionLimits,
    transport: Transport,
    shutdown: Shutdown,
) -> JoinHandle<()> {
    tokio::spawn(async move {
        let mut connections = JoinSet::new();
        while let Err(panic) = contained(accept_until_shutdown(
            &acceptor,
            &app,
            &limits,
            &transport,
            &shutdown,
            &mut connections,
        ))
        .await
        {
            tasks::report_panic("listener", &panic);
            tokio::time::sleep(ACCEPT_RETRY).await;
        }
        // No new connections (the socket closes with the acceptor); the open ones finish
        // their requests.
        drop(acceptor);
        while let Some(joined) = connections.join_next().await {
            if let Err(error) = joined {
                tasks::report_join_error("connection", error);
            }
        }
    })
}

/// Accepts connections into `connections` until `shutdown` fires.
async fn accept_until_shutdown<A: Acceptor>(
    acceptor: &A,
    app: &Router,
    limits: &ConnectionLimits,
    transport: &Transport,
    shutdown: &Shutdown,
    connections: &mut JoinSet<()>,
) {
    let stopping = shutdown.clone().wait();
    tokio::pin!(stopping);
    loop {
        tokio::select! {
            biased;
            () = &mut stopping => return,
            Some(joined) = connections.join_next(), if !connections.is_empty() => {
                if let Err(error) = joined {
                    tasks::report_join_error("connection", error);
                }
            }
            accepted = acceptor.accept() => match accepted {
                Ok((stream, peer)) => {
                    let admitted = match peer.map(|peer| limits.admit(peer.ip())) {
                        Some(Err(())) => {
                            metrics::counter!("tuwunel_http_connections_refused_total")
                                .increment(1);
                            tracing::debug!(?peer, "too many connections from this address");
                            continue;
                        }
                        Some(Ok(admitted)) => admitted,
                        None => None,
                    };
                    let connection = serve_transport(
                        stream,
                        peer,
                        app.clone(),
                        limits.clone(),
                        transport.clone(),
                        shutdown.clone(),
                    );
                    connections.spawn(async move {
                        connection.await;
                        drop(admitted);
                    });
                }
                Err(error) => {
                    tracing::warn!(%error, "accepting a connection failed");
                    tokio::time::sleep(ACCEPT_RETRY).await;
                }
            },
        }
    }
}

/// Serves one accepted connection over `transport`: after a TLS handshake (bounded by the
/// header timeout) when the listener speaks TLS.
async fn serve_transport<S>(
    stream: S,
    peer: Option<SocketAddr>,
    app: Router,
    limits: ConnectionLimits,
    transport: Transport,
    shutdown: Shutdown,
) where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    match transport {
        Transport::Plain => serve_connection(stream, peer, app, limits, shutdown).await,
        Transport::Tls { acceptor, dual } => {
            match tls::accept(stream, &acceptor, dual, limits.header).await {
                Some(Accepted::Tls(stream)) => {
                    serve_connection(stream, peer, app, limits, shutdown).await;
                }
                Some(Accepted::Plain(stream)) => {
                    serve_connection(stream, peer, app, limits, shutdown).await;
                }
                None => tracing::debug!(?peer, "closing a connection without a TLS handshake"),
            }
        }
    }
}

/// Serves HTTP on one connection, under `limits`, until the client or the server ends it.
pub async fn serve_connection<S>(
    stream: S,
    peer: Option<SocketAddr>,
    app: Router,
    limits: ConnectionLimits,
    shutdown: Shutdown,
) where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let activity = Arc::new(Activity::new());
    let flushes = ConnectionFlushes::default();
    let io = TokioIo::new(Watched {
        inner: stream,
        activity: Arc::clone(&activity),
        response_timeout: limits.response,
        write_stall: None,
        flushes: flushes.clone(),
        lingering: None,
    });
    let service = ConnectionService { app, peer, activity: Arc::clone(&activity), flushes };
    // No hyper timer is set: hyper's own header timeout would also end keep-alive
    // connections after that time, and `watch` keeps the two apart.
    let mut builder = Builder::new(TokioExecutor::new());
    builder.http2().max_concurrent_streams(MAX_STREAMS_PER_CONNECTION);
    let connection = builder.serve_connection(io, service);
    tokio::pin!(connection);
    let watchdog = watch(Arc::clone(&activity), limits.header, limits.idle);
    tokio::pin!(watchdog);
    let stopping = shutdown.wait();
    tokio::pin!(stopping);
    let mut closing = false;
    loop {
        tokio::select! {
            biased;
            result = connection.as_mut() => {
                if let Err(error) = result {
                    tracing::debug!(%error, ?peer, "connection ended with an error");
                }
                return;
            }
            expired = watchdog.as_mut() => match expired {
                Expired::Header => {
                    metrics::counter!("tuwunel_http_timeouts_total", "kind" => "header")
                        .increment(1);
                    tracing::debug!(?peer, "closing a connection whose request head is late");
                    return;
                }
                // Idle: close it the polite way (at once for HTTP/1, GOAWAY for HTTP/2).
                Expired::Idle if !closing => {
                    connection.as_mut().graceful_shutdown();
                    closing = true;
                    watchdog.set(watch(Arc::clone(&activity), limits.header, limits.idle));
                }
                // Still open after being asked to close while idle.
                Expired::Idle => return,
            },
            () = stopping.as_mut(), if !closing => {
                connection.as_mut().graceful_shutdown();
                closing = true;
            }
        }
    }
}

/// Where a connection is between requests.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// Waiting for a request's head: since the connection opened, or since the first byte
    /// of a request after an idle spell.
    AwaitingHead(Instant),
    /// Between requests, nothing received yet, since this instant.
    Idle(Instant),
    /// This many requests handed to the application and not yet fully answered.
    Active(usize),
}

/// A connection's phase, moved by its reads and by its requests' start and end; `changed`
/// tells the connection's [`watch`].
struct Activity {
    phase: Mutex<Phase>,
    changed: Notify,
}

impl Activity {
    fn new() -> Self {
        Self { phase: Mutex::new(Phase::AwaitingHead(Instant::now())), changed: Notify::new() }
    }

    fn phase(&self) -> Phase {
        *self.phase.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn update(&self, change: impl FnOnce(Phase) -> Phase) {
        let mut phase = self.phase.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        let next = change(*phase);
        if next != *phase {
            *phase = next;
            // A stored permit if the watchdog is not waiting: no change goes unnoticed.
            self.changed.notify_one();
        }
    }

    /// Bytes arrived: after an idle spell, the next request's head has begun.
    fn received(&self) {
        self.update(|phase| match phase {
            Phase::Idle(_) => Phase::AwaitingHead(Instant::now()),
            other => other,
        });
    }

    fn request_started(&self) {
        self.update(|phase| match phase {
            Phase::Active(requests) => Phase::Active(requests + 1),
            _ => Phase::Active(1),
        });
    }

    fn request_ended(&self) {
        self.update(|phase| match phase {
            Phase::Active(requests) if requests > 1 => Phase::Active(requests - 1),
            Phase::Active(_) => Phase::Idle(Instant::now()),
            other => other,
        });
    }
}

/// Which connection deadline passed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Expired {
    Header,
    Idle,
}

/// Resolves when the connection has spent too long waiting for a request head or idle.
async fn watch(activity: Arc<Activity>, header: Duration, idle: Duration) -> Expired {
    loop {
        let phase = activity.phase();
        let (deadline, expired) = match phase {
            Phase::AwaitingHead(since) => (since + header, Expired::Header),
            Phase::Idle(since) => (since + idle, Expired::Idle),
            Phase::Active(_) => {
                activity.changed.notified().await;
                continue;
            }
        };
        tokio::select! {
            () = tokio::time::sleep_until(deadline.into()) => {
                if activity.phase() == phase {
                    return expired;
                }
            }
            () = activity.changed.notified() => {}
        }
    }
}

/// Marks a request as started while it is handled and until its response body is done.
struct RequestGuard(Arc<Activity>);

impl RequestGuard {
    fn begin(activity: Arc<Activity>) -> Self {
        activity.request_started();
        Self(activity)
    }
}

impl Drop for RequestGuard {
    fn drop(&mut self) {
        self.0.request_ended();
    }
}

/// The application as one connection's hyper service: adds the peer address for the
/// handlers (`ConnectInfo`) and tracks each request until its response is written.
#[derive(Clone)]
struct ConnectionService {
    app: Router,
    peer: Option<SocketAddr>,
    activity: Arc<Activity>,
    flushes: ConnectionFlushes,
}

impl hyper::service::Service<Request<Incoming>> for ConnectionService {
    type Response = Response;
    type Error = Infallible;
    type Future = Pin<Box<dyn Future<Output = Result<Response, Infallible>> + Send>>;

    fn call(&self, mut request: Request<Incoming>) -> Self::Future {
        if let Some(peer) = self.peer {
            request.extensions_mut().insert(ConnectInfo(peer));
        }
        request.extensions_mut().insert(self.flushes.clone());
        let guard = RequestGuard::begin(Arc::clone(&self.activity));
        let answering = self.app.clone().oneshot(request.map(Body::new));
        Box::pin(async move {
            let response = answering.await?;
            // The guard lives as long as the body: hyper drops it once it is written.
            Ok(response.map(|body| {
                Body::new(body.map_frame(move |frame| {
                    let _ = &guard;
                    frame
                }))
            }))
        })
    }
}

/// A connection's byte stream, watched: reads move its [`Activity`], and a write the client
/// does not accept within the response timeout fails the connection.
struct Watched<S> {
    inner: S,
    activity: Arc<Activity>,
    response_timeout: Duration,
    /// Running while a write waits for the client.
    write_stall: Option<Pin<Box<Sleep>>>,
    /// Guards of responses held until written (`http::held`): let go at each completed flush.
    flushes: ConnectionFlushes,
    /// Set once the write side is shut: how long what the client still sends is read and
    /// thrown away before the socket closes (see [`Watched::linger`]).
    lingering: Option<Pin<Box<Sleep>>>,
}

/// How long a closing connection keeps reading what the client still sends.
const LINGER: Duration = Duration::from_secs(2);

impl<S> Watched<S> {
    /// Whether a write that has not progressed has waited too long (arming the timer on
    /// the first wait).
    fn write_stalled(&mut self, cx: &mut Context<'_>) -> bool {
        let timeout = self.response_timeout;
        let stall = self.write_stall.get_or_insert_with(|| Box::pin(tokio::time::sleep(timeout)));
        if stall.as_mut().poll(cx).is_ready() {
            metrics::counter!("tuwunel_http_timeouts_total", "kind" => "response").increment(1);
            return true;
        }
        false
    }
}

impl<S: AsyncRead + Unpin> Watched<S> {
    /// A lingering close, as web servers do it: the response is out and the write side shut
    /// (the client sees the end of the response), and what the client is still sending (a
    /// request body the handler refused without reading, such as an upload with an expired
    /// token) is read and dropped until the client closes too, for at most [`LINGER`].
    /// Closing a socket with unread bytes makes the kernel answer with a reset, which
    /// discards the response the client has not read yet.
    fn linger(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let timer = self.lingering.get_or_insert_with(|| Box::pin(tokio::time::sleep(LINGER)));
        let mut scratch = [0u8; 8192];
        loop {
            if timer.as_mut().poll(cx).is_ready() {
                return Poll::Ready(Ok(()));
            }
            let mut buf = ReadBuf::new(&mut scratch);
            match Pin::new(&mut self.inner).poll_read(cx, &mut buf) {
                Poll::Ready(Ok(())) if buf.filled().is_empty() => return Poll::Ready(Ok(())),
                Poll::Ready(Ok(())) => {}
                Poll::Ready(Err(_)) => return Poll::Ready(Ok(())),
                Poll::Pending => return Poll::Pending,
            }
        }
    }
}

impl<S> Drop for Watched<S> {
    fn drop(&mut self) {
        // A connection that ends releases everything it kept, written or not.
        self.flushes.flushed();
    }
}

fn stalled() -> io::Error {
    io::Error::new(io::ErrorKind::TimedOut, "the client stopped accepting the response")
}

impl<S: AsyncRead + Unpin> AsyncRead for Watched<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        let read = Pin::new(&mut this.inner).poll_read(cx, buf);
        if matches!(read, Poll::Ready(Ok(()))) && buf.filled().len() > before {
            this.activity.received();
        }
        read
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncWrite for Watched<S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        match Pin::new(&mut this.inner).poll_write(cx, buf) {
            Poll::Ready(result) => {
                this.write_stall = None;
                Poll::Ready(result)
            }
            Poll::Pending if this.write_stalled(cx) => Poll::Ready(Err(stalled())),
            Poll::Pending => Poll::Pending,
        }
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        match Pin::new(&mut this.inner).poll_write_vectored(cx, bufs) {
            Poll::Ready(result) => {
                this.write_stall = None;
                Poll::Ready(result)
            }
            Poll::Pending if this.write_stalled(cx) => Poll::Ready(Err(stalled())),
            Poll::Pending => Poll::Pending,
        }
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let flushed = Pin::new(&mut this.inner).poll_flush(cx);
        if flushed.is_ready() {
            this.flushes.flushed();
        }
        flushed
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if this.lingering.is_none() {
            match Pin::new(&mut this.inner).poll_shutdown(cx) {
                Poll::Ready(Ok(())) => {}
                other => return other,
            }
        }
        this.linger(cx)
    }
}

#[cfg(test)]
mod tests {
    use std::io::{Read, Write};

    use axum::{extract::Request, routing::post};

    use super::*;

    #[test]
    fn addresses_are_counted_per_ipv4_address_and_ipv6_network() {
        let ip = |text: &str| text.parse::<IpAddr>().expect("address");
        assert_eq!(address_key(ip("192.0.2.7")), ip("192.0.2.7"));
        assert_eq!(address_key(ip("::ffff:192.0.2.7")), ip("192.0.2.7"));
        assert_eq!(address_key(ip("2001:db8:1:2:aaaa::1")), ip("2001:db8:1:2::"));
        assert_eq!(address_key(ip("2001:db8:1:2:bbbb::9")), address_key(ip("2001:db8:1:2::5")));
        assert_ne!(address_key(ip("2001:db8:1:3::1")), address_key(ip("2001:db8:1:2::1")));
    }

    #[test]
    fn the_per_address_limit_counts_open_connections_and_exempts_loopback() {
        let limits = ConnectionLimits::new(
            Duration::from_secs(1),
            Duration::from_secs(1),
            Duration::from_secs(1),
            2,
        );
        let ip = |text: &str| text.parse::<IpAddr>().expect("address");
        let first = limits.admit(ip("192.0.2.1")).expect("first");
        let second = limits.admit(ip("192.0.2.1")).expect("second");
        assert!(limits.admit(ip("192.0.2.1")).is_err(), "a third is refused");
        assert!(limits.admit(ip("198.51.100.1")).is_ok(), "another address is not affected");
        drop(first);
        let third = limits.admit(ip("192.0.2.1")).expect("a closed one frees its place");
        for _ in 0..10 {
            assert!(matches!(limits.admit(ip("127.0.0.1")), Ok(None)), "loopback is not counted");
        }
        drop((second, third));
        assert!(limits.open.lock().expect("lock").get(&ip("192.0.2.1")).is_none());
    }

    /// A server on 127.0.0.1 with short limits, counting loopback (so that peers bound to
    /// different loopback addresses act as different clients), and an echo endpoint that
    /// reads its body.
    async fn start(per_address: usize) -> (SocketAddr, Shutdown, JoinHandle<()>) {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let address = listener.local_addr().expect("address");
        let mut limits = ConnectionLimits::new(
            Duration::from_millis(400),
            Duration::from_millis(600),
            Duration::from_millis(400),
            per_address,
        );
        limits.count_loopback = true;
        let app = Router::new()
            .route(
                "/echo",
                post(|request: Request| async move {
                    match axum::body::to_bytes(request.into_body(), 1 << 20).await {
                        Ok(bytes) => Response::new(Body::from(bytes)),
                        Err(_) => Response::new(Body::from("body failed")),
                    }
                }),
            )
            .route("/big", axum::routing::get(|| async { vec![b'x'; 64 << 20] }));
        let shutdown = Shutdown::new();
        let task = spawn(listener, app, limits, Transport::Plain, shutdown.clone());
        (address, shutdown, task)
    }

    /// A client socket from `source` (a loopback address) with a read timeout.
    fn connect(address: SocketAddr, source: &str) -> std::net::TcpStream {
        let socket = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None)
            .expect("socket");
        let source: SocketAddr = format!("{source}:0").parse().expect("source");
        socket.bind(&source.into()).expect("bind source");
        socket.connect(&address.into()).expect("connect");
        let stream: std::net::TcpStream = socket.into();
        stream.set_read_timeout(Some(Duration::from_secs(10))).expect("timeout");
        stream
    }

    /// Reads until the server closes the connection; true if it did within the read timeout.
    fn closed_by_server(stream: &mut std::net::TcpStream) -> bool {
        let mut buffer = [0_u8; 4096];
        loop {
            match stream.read(&mut buffer) {
                Ok(0) => return true,
                Ok(_) => {}
                Err(error) if error.kind() == io::ErrorKind::ConnectionReset => return true,
                Err(_) => return false,
            }
        }
    }

    fn echo(address: SocketAddr, source: &str) -> String {
        let mut stream = connect(address, source);
        stream
            .write_all(b"POST /echo HTTP/1.1\r\nHost: t\r\nContent-Length: 2\r\nConnection: close\r\n\r\nhi")
            .expect("request");
        let mut response = String::new();
        let _ = stream.read_to_string(&mut response);
        response
    }

    async fn blocking<T: Send + 'static>(work: impl FnOnce() -> T + Send + 'static) -> T {
        tokio::task::spawn_blocking(work).await.expect("blocking task")
    }

    #[tokio::test]
    async fn half_a_header_is_cut_off_and_others_are_served_meanwhile() {
        let (address, shutdown, task) = start(0).await;
        let slow: Vec<_> = (0..50)
            .map(|_| {
                let mut stream = connect(address, "127.0.0.2");
                stream.write_all(b"POST /echo HTTP/1.1\r\nHost: t\r\nX-Slow").expect("half");
                stream
            })
            .collect();
        let served = blocking(move || echo(address, "127.0.0.1")).await;
        assert!(served.starts_with("HTTP/1.1 200") && served.ends_with("hi"), "{served}");
        let started = Instant::now();
        let all_closed =
            blocking(move || slow.into_iter().all(|mut stream| closed_by_server(&mut stream)))
                .await;
        assert!(all_closed, "slow headers were not cut off");
        assert!(started.elapsed() < Duration::from_secs(5), "took {:?}", started.elapsed());
        shutdown.trigger();
        task.await.expect("listener");
    }

    #[tokio::test]
    async fn a_connection_that_sends_nothing_is_closed_after_the_header_timeout() {
        let (address, shutdown, task) = start(0).await;
        let closed = blocking(move || closed_by_server(&mut connect(address, "127.0.0.1"))).await;
        assert!(closed);
        shutdown.trigger();
        task.await.expect("listener");
    }

    #[tokio::test]
    async fn keep_alive_outlives_the_header_timeout_but_not_the_idle_timeout() {
        let (address, shutdown, task) = start(0).await;
        let outcome = blocking(move || {
            let mut stream = connect(address, "127.0.0.1");
            let request = b"POST /echo HTTP/1.1\r\nHost: t\r\nContent-Length: 2\r\n\r\nhi";
            let mut buffer = [0_u8; 4096];
            stream.write_all(request).expect("first");
            let read = stream.read(&mut buffer).expect("first response");
            assert!(buffer[..read].starts_with(b"HTTP/1.1 200"));
            // Idle for longer than the header timeout (400 ms) but within the idle one.
            std::thread::sleep(Duration::from_millis(500));
            stream.write_all(request).expect("second");
            let read = stream.read(&mut buffer).expect("second response");
            assert!(buffer[..read].starts_with(b"HTTP/1.1 200"), "kept alive");
            let idle_since = Instant::now();
            let closed = closed_by_server(&mut stream);
            (closed, idle_since.elapsed())
        })
        .await;
        assert!(outcome.0, "an idle connection must be closed");
        assert!(outcome.1 >= Duration::from_millis(500), "closed after {:?}", outcome.1);
        shutdown.trigger();
        task.await.expect("listener");
    }

    #[tokio::test]
    async fn connections_beyond_the_per_address_limit_are_refused() {
        let (address, shutdown, task) = start(3).await;
        let outcome = blocking(move || {
            let held: Vec<_> = (0..3).map(|_| connect(address, "127.0.0.2")).collect();
            let mut refused = connect(address, "127.0.0.2");
            let refused_closed = closed_by_server(&mut refused);
            // Another address is served while the first is at its limit.
            let other = echo(address, "127.0.0.1");
            drop(held);
            (refused_closed, other)
        })
        .await;
        assert!(outcome.0, "the fourth connection from one address must be closed");
        assert!(outcome.1.starts_with("HTTP/1.1 200"), "{}", outcome.1);
        // Once the held ones are gone (their close is noticed), the address may connect again.
        let again = blocking(move || {
            let deadline = Instant::now() + Duration::from_secs(5);
            loop {
                let response = echo(address, "127.0.0.2");
                if response.starts_with("HTTP/1.1 200") || Instant::now() > deadline {
                    return response;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
        })
        .await;
        assert!(again.starts_with("HTTP/1.1 200"), "{again}");
        shutdown.trigger();
        task.await.expect("listener");
    }

    #[tokio::test]
    async fn a_client_that_stops_reading_a_response_is_cut_off() {
        let (address, shutdown, task) = start(0).await;
        let closed = blocking(move || {
            let mut stream = connect(address, "127.0.0.1");
            stream.write_all(b"GET /big HTTP/1.1\r\nHost: t\r\n\r\n").expect("request");
            // Read a little, then nothing while the server's writes back up.
            let mut buffer = [0_u8; 1024];
            let _ = stream.read(&mut buffer).expect("start of the response");
            std::thread::sleep(Duration::from_millis(1500));
            // The server gave up: what is left in the socket buffers ends early.
            let mut rest = Vec::new();
            let _ = stream.read_to_end(&mut rest);
            rest.len() < (64 << 20) - 1024
        })
        .await;
        assert!(closed, "the whole response was still delivered");
        shutdown.trigger();
        task.await.expect("listener");
    }

    #[tokio::test]
    async fn an_http2_connection_carries_a_bounded_number_of_requests_at_once() {
        use std::{
            collections::HashMap,
            sync::atomic::{AtomicUsize, Ordering},
        };

        /// Requests in progress per connection (by peer address), and the most seen at once.
        #[derive(Default)]
        struct Load {
            active: Mutex<HashMap<SocketAddr, usize>>,
            most: AtomicUsize,
        }
        let load = Arc::new(Load::default());
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let address = listener.local_addr().expect("address");
        let handler_load = Arc::clone(&load);
        let app = Router::new().route(
            "/hold",
            axum::routing::get(move |ConnectInfo(peer): ConnectInfo<SocketAddr>| {
                let load = Arc::clone(&handler_load);
                async move {
                    let now = {
                        let mut active = load.active.lock().expect("lock");
                        let count = active.entry(peer).or_insert(0);
                        *count += 1;
                        *count
                    };
                    load.most.fetch_max(now, Ordering::SeqCst);
                    // Long enough that requests sent together overlap in the handler.
                    tokio::time::sleep(Duration::from_millis(150)).await;
                    *load.active.lock().expect("lock").entry(peer).or_insert(1) -= 1;
                    "held"
                }
            }),
        );
        let limits = ConnectionLimits::new(
            Duration::from_secs(5),
            Duration::from_secs(5),
            Duration::from_secs(5),
            0,
        );
        let shutdown = Shutdown::new();
        let task = spawn(listener, app, limits, Transport::Plain, shutdown.clone());

        crate::net::outbound::install_tls_provider();
        let client = reqwest::Client::builder().http2_prior_knowledge().build().expect("client");
        let url = format!("http://{address}/hold");
        let requests = 3 * MAX_STREAMS_PER_CONNECTION as usize;
        let mut sent = JoinSet::new();
        for _ in 0..requests {
            let (client, url) = (client.clone(), url.clone());
            sent.spawn(async move {
                let response = client.get(&url).send().await.expect("request");
                assert_eq!(response.version(), reqwest::Version::HTTP_2);
                response.status()
            });
        }
        let answered = tokio::time::timeout(Duration::from_secs(30), async {
            let mut answered = 0;
            while let Some(status) = sent.join_next().await {
                assert_eq!(status.expect("task"), reqwest::StatusCode::OK);
                answered += 1;
            }
            answered
        })
        .await
        .expect("every request is answered");
        assert_eq!(answered, requests);
        // The client had more requests ready than the server allows on one connection: it
        // had to wait for streams, never running more than the bound at once.
        assert_eq!(load.most.load(Ordering::SeqCst), MAX_STREAMS_PER_CONNECTION as usize);
        shutdown.trigger();
        drop(client);
        tokio::time::timeout(Duration::from_secs(5), task)
            .await
            .expect("the listener ends")
            .expect("listener");
    }

    /// A listening socket whose first accepted connection makes the accept loop panic.
    struct PanicsOnce {
        inner: TcpListener,
        panicked: std::sync::atomic::AtomicBool,
    }

    impl Acceptor for PanicsOnce {
        type Stream = tokio::net::TcpStream;

        async fn accept(&self) -> io::Result<(Self::Stream, Option<SocketAddr>)> {
            let accepted = Acceptor::accept(&self.inner).await;
            if !self.panicked.swap(true, std::sync::atomic::Ordering::SeqCst) {
                panic!("a bug in the accept loop");
            }
            accepted
        }
    }

    #[tokio::test]
    async fn the_accept_loop_survives_a_panic_and_keeps_serving() {
        let inner = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let address = inner.local_addr().expect("address");
        let acceptor = PanicsOnce { inner, panicked: std::sync::atomic::AtomicBool::new(false) };
        let app = Router::new().route("/echo", post(|body: String| async move { body }));
        let limits = ConnectionLimits::new(
            Duration::from_secs(5),
            Duration::from_secs(5),
            Duration::from_secs(5),
            0,
        );
        let shutdown = Shutdown::new();
        let task = spawn(acceptor, app, limits, Transport::Plain, shutdown.clone());
        let (first, second) = blocking(move || {
            // The connection the loop panicked on is dropped with it.
            let mut first = connect(address, "127.0.0.1");
            let dropped = closed_by_server(&mut first);
            (dropped, echo(address, "127.0.0.1"))
        })
        .await;
        assert!(first, "the connection accepted when the loop panicked is closed");
        assert!(second.starts_with("HTTP/1.1 200") && second.ends_with("hi"), "{second}");
        assert!(!task.is_finished(), "the listener still runs");
        shutdown.trigger();
        tokio::time::timeout(Duration::from_secs(5), task)
            .await
            .expect("the listener ends")
            .expect("listener");
    }

    #[tokio::test]
    async fn shutdown_lets_a_request_in_flight_finish_and_then_ends_the_task() {
        let (address, shutdown, task) = start(0).await;
        let client = blocking(move || {
            let mut stream = connect(address, "127.0.0.1");
            stream
                .write_all(b"POST /echo HTTP/1.1\r\nHost: t\r\nContent-Length: 4\r\n\r\nab")
                .expect("first half");
            stream
        })
        .await;
        // Let the request reach the handler, then stop the listener while its body is due.
        tokio::time::sleep(Duration::from_millis(100)).await;
        shutdown.trigger();
        let response = blocking(move || {
            let mut stream = client;
            stream.write_all(b"cd").expect("second half");
            let mut response = String::new();
            let _ = stream.read_to_string(&mut response);
            response
        })
        .await;
        assert!(response.starts_with("HTTP/1.1 200") && response.ends_with("abcd"), "{response}");
        tokio::time::timeout(Duration::from_secs(5), task)
            .await
            .expect("the listener ends once its connections have")
            .expect("listener");
    }
}
