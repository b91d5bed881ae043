//! Layers every request passes through: request id and tracing span, HTTP metrics, CORS,
//! in-flight admission, request deadlines and panic containment.

use std::{
    pin::Pin,
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    task::{Context, Poll},
    time::{Duration, Instant},
};

use axum::{
    body::Body,
    extract::{MatchedPath, Request, State},
    http::{HeaderName, HeaderValue, Method, StatusCode, header},
    middleware::Next,
    response::{IntoResponse, Response},
};
use bytes::Bytes;
use hyper::body::{Body as HttpBody, Frame, SizeHint};
use ruma::api::error::ErrorKind;
use tokio::time::Sleep;
use tracing::Instrument;

use crate::{Config, Error, Services};

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
        return Error::limit_exceeded(Duration::from_millis(500)).into_response();
    };
    next.run(request).await
}

/// The limits [`deadlines`] holds a request to.
#[derive(Debug, Clone, Copy)]
pub struct Deadlines {
    /// Longest wait for the next part of the request body (`client_receive_timeout`).
    pub receive: Duration,
    /// Longest time from the request's head to its response (`client_request_timeout`).
    pub request: Duration,
}

impl Deadlines {
    pub fn from_config(config: &Config) -> Self {
        Self {
            receive: Duration::from_secs(config.client_receive_timeout.max(1)),
            request: Duration::from_secs(config.client_request_timeout.max(1)),
        }
    }
}

/// Answers `408` to a request whose body stops arriving for `receive`, or which takes longer
/// than `request` in all (body included). It runs inside [`admission`], so the in-flight
/// permit a slow client holds is released when its deadline passes. `/sync` long polls stay
/// below `request` (the configuration refuses a `client_sync_timeout_max` that does not).
pub async fn deadlines(State(limits): State<Deadlines>, request: Request, next: Next) -> Response {
    let stalled = Arc::new(AtomicBool::new(false));
    let request = request.map(|body| {
        Body::new(ReceiveTimeout {
            body,
            limit: limits.receive,
            wait: None,
            stalled: Arc::clone(&stalled),
        })
    });
    match tokio::time::timeout(limits.request, next.run(request)).await {
        // The handler answered whatever its failed body read made it answer; the client's
        // answer is that it was too slow.
        Ok(_) if stalled.load(Ordering::Acquire) => {
            timed_out("The request body did not arrive in time.")
        }
        Ok(response) => response,
        Err(_) => {
            metrics::counter!("tuwunel_http_timeouts_total", "kind" => "request").increment(1);
            timed_out("The request took too long.")
        }
    }
}

fn timed_out(message: &'static str) -> Response {
    let mut response =
        Error::matrix(StatusCode::REQUEST_TIMEOUT, ErrorKind::Unknown, message).into_response();
    // The rest of a late body may still come; the connection cannot carry another request.
    response.headers_mut().insert(header::CONNECTION, HeaderValue::from_static("close"));
    response
}

/// A request body that fails when its next part takes longer than `limit` to arrive, and
/// says so in `stalled`.
struct ReceiveTimeout {
    body: Body,
    limit: Duration,
    /// Running while the body is waited for.
    wait: Option<Pin<Box<Sleep>>>,
    stalled: Arc<AtomicBool>,
}

impl HttpBody for ReceiveTimeout {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, axum::Error>>> {
        let this = self.get_mut();
        if let Poll::Ready(frame) = Pin::new(&mut this.body).poll_frame(cx) {
            this.wait = None;
            return Poll::Ready(frame);
        }
        let limit = this.limit;
        let wait = this.wait.get_or_insert_with(|| Box::pin(tokio::time::sleep(limit)));
        if wait.as_mut().poll(cx).is_ready() {
            this.stalled.store(true, Ordering::Release);
            metrics::counter!("tuwunel_http_timeouts_total", "kind" => "receive").increment(1);
            return Poll::Ready(Some(Err(axum::Error::new("the request body stopped arriving"))));
        }
        Poll::Pending
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
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
