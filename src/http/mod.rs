//! HTTP: the axum router (client API, federation API, discovery, metrics), its middleware,
//! and the listeners on TCP addresses or a UNIX socket (their accept loop and connection
//! limits are in `listener`).

pub mod auth;
pub mod client;
pub mod discovery;
pub mod federation;
pub mod held;
pub mod listener;
pub mod media;
pub mod metrics;
pub mod middleware;
pub mod range;
pub mod routes;
pub mod ruma;
pub mod tls;
pub mod validate;

use std::{net::SocketAddr, path::PathBuf, sync::Arc};

use axum::{
    Router,
    extract::State,
    http::Method,
    middleware::{from_fn, from_fn_with_state},
    response::Response,
    routing::get,
};
use tokio::{net::TcpListener, task::JoinHandle};

use self::listener::ConnectionLimits;
use tower_http::catch_panic::CatchPanicLayer;

use self::routes::{BodyKind, Routes};
use crate::{Error, Result, Services, shutdown::Shutdown};

/// Every route the application router serves, with how each reads its body.
pub fn routes(services: &Arc<Services>) -> Routes {
    let mut routes = Routes::new();
    routes = discovery::routes(routes);
    routes = client::routes(routes);
    routes = federation::routes(routes);
    if services.config.metrics_enabled && services.config.metrics_address.is_none() {
        routes = routes.mount(Method::GET, "/metrics", BodyKind::Ignored, get(metrics_endpoint));
    }
    routes
}

/// The application router with every route and layer.
pub fn router(services: &Arc<Services>) -> Router {
    routes(services)
        .into_router()
        .fallback(middleware::unknown_path)
        .method_not_allowed_fallback(middleware::wrong_method)
        .layer(from_fn(held::keep_until_flushed))
        .layer(from_fn_with_state(
            middleware::Deadlines::from_config(&services.config),
            middleware::deadlines,
        ))
        .layer(from_fn_with_state(Arc::clone(services), middleware::admission))
        .layer(from_fn(middleware::cors))
        .layer(from_fn(middleware::observe))
        .layer(CatchPanicLayer::custom(middleware::panic_response))
        .with_state(Arc::clone(services))
}

async fn metrics_endpoint(State(services): State<Arc<Services>>) -> Response {
    for (table, disk, _memory) in services.storage.engine().table_sizes() {
        ::metrics::gauge!("tuwunel_database_table_bytes", "table" => table).set(disk as f64);
        // Alerts watch this counter: it exists (at 0) before the first unreadable record.
        ::metrics::counter!("tuwunel_storage_undecodable_records_total", "table" => table)
            .increment(0);
    }
    ::metrics::counter!("tuwunel_database_wal_syncs_total")
        .absolute(services.storage.engine().wal_syncs());
    let memory = services.storage.engine().memory();
    for (kind, bytes) in [
        ("block_cache", memory.block_cache as f64),
        ("block_cache_pinned", memory.block_cache_pinned as f64),
        ("memtables", memory.memtables as f64),
        ("table_readers", memory.table_readers as f64),
    ] {
        ::metrics::gauge!("tuwunel_database_memory_bytes", "kind" => kind).set(bytes);
    }
    for (allocator, usage) in crate::memory::heaps() {
        for (kind, bytes) in [("in_use", usage.in_use), ("resident", usage.resident)] {
            ::metrics::gauge!("tuwunel_heap_bytes", "allocator" => allocator, "kind" => kind)
                .set(bytes as f64);
        }
    }
    for cache in services.storage.cache_usage() {
        ::metrics::gauge!("tuwunel_cache_entries", "cache" => cache.label)
            .set(cache.entries as f64);
        if let Some(bytes) = cache.bytes {
            ::metrics::gauge!("tuwunel_cache_bytes", "cache" => cache.label).set(bytes as f64);
        }
    }
    match &services.metrics {
        Some(handle) => metrics::render(handle),
        None => axum::response::IntoResponse::into_response(Error::not_found(
            "Metrics are not enabled.",
        )),
    }
}

/// The running listeners.
pub struct Listeners {
    /// Bound TCP addresses (with the actual port when 0 was configured).
    pub addresses: Vec<SocketAddr>,
    /// Those of `addresses` that speak TLS.
    pub tls_addresses: Vec<SocketAddr>,
    pub metrics_address: Option<SocketAddr>,
    pub unix_socket: Option<PathBuf>,
    pub tasks: Vec<JoinHandle<()>>,
}

/// Binds every configured listener and serves `router` on each until `shutdown` fires.
pub async fn serve(services: &Arc<Services>, shutdown: &Shutdown) -> Result<Listeners> {
    let config = &services.config;
    let app = router(services);
    // One set of limits for every listener, so the per-address count spans them all.
    let limits = ConnectionLimits::from_config(config);
    let mut listeners = Listeners {
        addresses: Vec::new(),
        tls_addresses: Vec::new(),
        metrics_address: None,
        unix_socket: None,
        tasks: Vec::new(),
    };

    if let Some(path) = &config.unix_socket_path {
        listeners.tasks.push(
            serve_unix(path, config.unix_socket_mode(), app.clone(), limits.clone(), shutdown)
                .await?,
        );
        listeners.unix_socket = Some(path.clone());
    } else {
        let (addresses, explicit) = config.listen_addresses();
        let mut certificate = None;
        for ip in addresses {
            for port in config.port.to_vec() {
                let address = SocketAddr::new(ip, port);
                let transport = tls::Transport::for_port(config, port, &mut certificate)?;
                match bind_tcp(address) {
                    Ok(listener) => {
                        let local = listener.local_addr()?;
                        tracing::info!(address = %local, tls = transport.is_tls(), "listening");
                        listeners.addresses.push(local);
                        if transport.is_tls() {
                            listeners.tls_addresses.push(local);
                        }
                        listeners.tasks.push(listener::spawn(
                            listener,
                            app.clone(),
                            limits.clone(),
                            transport,
                            shutdown.clone(),
                        ));
                    }
                    Err(error) if !explicit => {
                        tracing::warn!(%address, %error, "cannot listen on a default address; skipping it");
                    }
                    Err(error) => {
                        return Err(Error::internal(format!(
                            "cannot listen on {address}: {error}"
                        )));
                    }
                }
            }
        }
        if listeners.addresses.is_empty() {
            return Err(Error::internal("no address could be bound"));
        }
    }

    if let (true, Some(address)) = (config.metrics_enabled, config.metrics_address) {
        let metrics_app =
            Router::new().route("/metrics", get(metrics_endpoint)).with_state(Arc::clone(services));
        let listener = TcpListener::bind(address).await.map_err(|error| {
            Error::internal(format!("cannot listen on metrics_address {address}: {error}"))
        })?;
        let local = listener.local_addr()?;
        tracing::info!(address = %local, "serving metrics");
        listeners.metrics_address = Some(local);
        listeners.tasks.push(listener::spawn(
            listener,
            metrics_app,
            limits,
            tls::Transport::Plain,
            shutdown.clone(),
        ));
    }
    Ok(listeners)
}

/// Binds a listening socket. IPv6 sockets accept IPv6 only, so `["0.0.0.0", "::"]` binds both
/// families instead of failing on the second with "address in use".
fn bind_tcp(address: SocketAddr) -> std::io::Result<TcpListener> {
    use socket2::{Domain, Protocol, Socket, Type};
    let socket = Socket::new(Domain::for_address(address), Type::STREAM, Some(Protocol::TCP))?;
    socket.set_reuse_address(true)?;
    if address.is_ipv6() {
        socket.set_only_v6(true)?;
    }
    socket.set_nonblocking(true)?;
    socket.bind(&address.into())?;
    socket.listen(1024)?;
    TcpListener::from_std(socket.into())
}

async fn serve_unix(
    path: &std::path::Path,
    mode: u32,
    app: Router,
    limits: ConnectionLimits,
    shutdown: &Shutdown,
) -> Result<JoinHandle<()>> {
    use std::os::unix::fs::PermissionsExt;

    if path.exists() {
        // A socket left by an unclean stop would make bind fail; anything else is not ours.
        let metadata = std::fs::symlink_metadata(path)?;
        if std::os::unix::fs::FileTypeExt::is_socket(&metadata.file_type()) {
            std::fs::remove_file(path)?;
        } else {
            return Err(Error::internal(format!("{} exists and is not a socket", path.display())));
        }
    }
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent)?;
    }
    let listener = tokio::net::UnixListener::bind(path).map_err(|error| {
        Error::internal(format!("cannot listen on {}: {error}", path.display()))
    })?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))?;
    tracing::info!(socket = %path.display(), "listening");
    // A UNIX socket is local: never TLS.
    let serving = listener::spawn(listener, app, limits, tls::Transport::Plain, shutdown.clone());
    let guard = UnixSocket { path: path.to_owned(), serving: serving.abort_handle() };
    Ok(tokio::spawn(async move {
        let _ = serving.await;
        drop(guard);
    }))
}

/// Removes the socket file once its listener has ended, and ends the listener when the
/// task that waits for it is aborted (a shutdown past its deadline).
struct UnixSocket {
    path: PathBuf,
    serving: tokio::task::AbortHandle,
}

impl Drop for UnixSocket {
    fn drop(&mut self) {
        self.serving.abort();
        let _ = std::fs::remove_file(&self.path);
    }
}
