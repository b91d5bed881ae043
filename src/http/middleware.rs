//! Layers every request passes through: request id and tracing span, HTTP metrics, CORS,
//! in-flight admission and panic containment.

use std::{
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::Instant,
};

use axum::{
    body::Body,
    extract::{MatchedPath, Request, State},
    http::{HeaderName, HeaderValue, Method, StatusCode, header},
    middleware::Next,
    response::{IntoResponse, Response},
};
use tracing::Instrument;

use crate::{Error, Services};

pub static REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

static NEXT_REQUEST: AtomicU64 = AtomicU64::new(1);

/// Gives the request an id (kept from `X-Request-Id` when a proxy set a sane one), runs it in
/// a span carrying that id, echoes the id back, and records metrics by route and status.
pub async fn observe(request: Request, next: Next) -> Response {
    let request_id = request
        .headers()
        .get(&REQUEST_ID)
        .and_then(|value| value.to_str().ok())
        .filter(|value| {
            !value.is_empty() && value.len() <= 64 && value.bytes().all(|b| b.is_ascii_graphic())
        })
        .map(str::to_owned)
        .unwrap_or_else(|| format!("{:x}", NEXT_REQUEST.fetch_add(1, Ordering::Relaxed)));
    let route = request
        .extensions()
        .get::<MatchedPath>()
        .map_or_else(|| "unmatched".to_owned(), |path| path.as_str().to_owned());
    let method = request.method().clone();
    let span = tracing::info_span!(
        "request",
        id = %request_id,
        %method,
        path = %request.uri().path(),
        user = tracing::field::Empty,
        room = tracing::field::Empty,
    );
    let started = Instant::now();
    let mut response = next.run(request).instrument(span.clone()).await;
    let elapsed = started.elapsed();
    let status = response.status();
    span.in_scope(|| {
        if status.is_server_error() {
            tracing::warn!(
                status = status.as_u16(),
                ms = elapsed.as_millis() as u64,
                "request failed"
            );
        } else {
            tracing::debug!(
                status = status.as_u16(),
                ms = elapsed.as_millis() as u64,
                "request done"
            );
        }
    });
    if let Ok(value) = HeaderValue::from_str(&request_id) {
        response.headers_mut().insert(REQUEST_ID.clone(), value);
    }
    let labels = [
        ("method", method.as_str().to_owned()),
        ("route", route),
        ("status", status.as_u16().to_string()),
    ];
    metrics::counter!("tuwunel_http_requests_total", &labels).increment(1);
    metrics::histogram!("tuwunel_http_request_seconds", &labels).record(elapsed.as_secs_f64());
    response
}

/// CORS as the client-server spec asks: every response allows any origin, and an `OPTIONS`
/// pre-flight is answered directly with the allowed methods and headers.
pub async fn cors(request: Request, next: Next) -> Response {
    let mut response = if request.method() == Method::OPTIONS {
        StatusCode::NO_CONTENT.into_response()
    } else {
        next.run(request).await
    };
    let headers = response.headers_mut();
    headers.insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, HeaderValue::from_static("*"));
    headers.insert(
        header::ACCESS_CONTROL_ALLOW_METHODS,
        HeaderValue::from_static("GET, POST, PUT, DELETE, OPTIONS"),
    );
    headers.insert(
        header::ACCESS_CONTROL_ALLOW_HEADERS,
        HeaderValue::from_static("X-Requested-With, Content-Type, Authorization"),
    );
    response
}

/// Refuses requests beyond `max_in_flight_requests` with `429` instead of queueing them.
pub async fn admission(
    State(services): State<Arc<Services>>,
    request: Request,
    next: Next,
) -> Response {
    // Health checks and metrics scrapes are exempt: an overloaded server should still say so.
    if matches!(request.uri().path(), "/_tuwunel/server_version" | "/metrics") {
        return next.run(request).await;
    }
    let Ok(_permit) = Arc::clone(&services.in_flight).try_acquire_owned() else {
        metrics::counter!("tuwunel_http_refused_total").increment(1);
        return Error::limit_exceeded(std::time::Duration::from_millis(500)).into_response();
    };
    next.run(request).await
}

/// Converts a handler panic into `500 M_UNKNOWN` (the panic is logged by the hook).
pub fn panic_response(_panic: Box<dyn std::any::Any + Send + 'static>) -> Response<Body> {
    Error::internal("a request handler panicked").into_response()
}

/// Unknown paths: `404 M_UNRECOGNIZED`.
pub async fn unknown_path() -> Response {
    Error::unrecognized(StatusCode::NOT_FOUND, "Unrecognized request").into_response()
}

/// Known path, wrong method: `405 M_UNRECOGNIZED`.
pub async fn wrong_method() -> Response {
    Error::unrecognized(
        StatusCode::METHOD_NOT_ALLOWED,
        "This endpoint does not support that method.",
    )
    .into_response()
}
