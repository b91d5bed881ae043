//! Glue between axum and ruma: every Matrix endpoint is declared by its ruma request type,
//! which supplies the method, the paths (all versions) and the body shape; [`route`] mounts it.
//!
//! The request body is read with `max_request_size` as a hard limit (`413 M_TOO_LARGE`) and,
//! unless the method is `GET` (whose body the spec does not define, and ruma ignores),
//! checked before ruma sees it: one JSON value (`400 M_NOT_JSON` otherwise), nested at most
//! [`limits::MAX_JSON_DEPTH`] levels and with no repeated key (`400 M_BAD_JSON`). This is
//! the one door every Matrix endpoint's body comes through, so nothing deeper is ever
//! stored. An empty body is what ruma makes of it: `{}`, which endpoints whose body fields
//! are all optional accept (clients send `POST /join` and `/leave` empty) and others refuse
//! as `M_NOT_JSON`; endpoints whose body *is* the content (events, account data, tags)
//! need one. Then ruma parses: JSON of the wrong shape is `400 M_BAD_JSON`, bad path or
//! query parameters `400 M_INVALID_PARAM`.

use std::{any::TypeId, collections::BTreeSet, future::Future, net::IpAddr, sync::Arc};

use axum::{
    body::Body,
    extract::{FromRequest, RawPathParams, Request, State},
    http::{HeaderMap, Method, header::CONTENT_LENGTH},
    response::{IntoResponse, Response},
    routing::{MethodFilter, on},
};
use bytes::Bytes;
use ruma::api::{
    IncomingRequest, IncomingRequestExt, OutgoingResponse, OutgoingResponseExt,
    client::{
        config::{set_global_account_data, set_room_account_data},
        message::send_message_event,
        session::login,
        state::send_state_event,
        tag::create_tag,
    },
    error::{DeserializationError, FromHttpRequestError},
    path_builder::PathBuilder,
};

use super::{
    auth::{self, AuthPolicy},
    routes::{BodyKind, Routes},
};
use crate::{
    Config, Error, Result, Services, accounts::Sender, actors::contain::contained_sync, limits,
};

/// A parsed Matrix request of type `T`, with who sent it.
pub struct Ruma<T> {
    pub body: T,
    pub headers: HeaderMap,
    /// The authenticated caller (always present on endpoints that require a token).
    pub sender: Option<Sender>,
    pub client_ip: Option<IpAddr>,
    /// The body as sent, for the few endpoints that keep what ruma's types would normalise.
    pub raw_body: Bytes,
}

impl<T> Ruma<T> {
    /// The caller of an endpoint that requires authentication.
    pub fn sender(&self) -> Result<&Sender> {
        self.sender.as_ref().ok_or_else(Error::missing_token)
    }
}

/// Reads a request body, refusing anything over `limit` bytes.
pub async fn read_body(headers: &HeaderMap, body: Body, limit: usize) -> Result<Bytes> {
    let declared = headers
        .get(CONTENT_LENGTH)
        .and_then(|value| value.to_str().ok())
        .and_then(|value| value.parse::<u64>().ok());
    if declared.is_some_and(|length| length > limit as u64) {
        return Err(too_large(limit));
    }
    axum::body::to_bytes(body, limit).await.map_err(|error| {
        // `to_bytes` reports both a length overrun and a broken connection as errors; only
        // the first is the client's mistake worth a 413.
        if std::error::Error::source(&error)
            .is_some_and(|source| source.is::<http_body_util::LengthLimitError>())
            || error.to_string().contains("length limit")
        {
            too_large(limit)
        } else {
            Error::bad_json(format!("could not read the request body: {error}"))
        }
    })
}

fn too_large(limit: usize) -> Error {
    Error::too_large(format!("Request body is larger than the server's limit of {limit} bytes."))
}

impl<T> FromRequest<Arc<Services>> for Ruma<T>
where
    T: IncomingRequest + Send + 'static,
    T::Authentication: AuthPolicy,
{
    type Rejection = Error;

    async fn from_request(request: Request, services: &Arc<Services>) -> Result<Self> {
        let (mut parts, body) = request.into_parts();
        let client_ip = auth::client_ip(&parts);
        let sender =
            auth::authenticate(services, &parts, <T::Authentication as AuthPolicy>::POLICY)?;
        if let Some(sender) = &sender {
            services.accounts.note_seen(sender, client_ip);
            tracing::Span::current().record("user", sender.user_id.as_str());
        }
        let params =
            <RawPathParams as axum::extract::FromRequestParts<Arc<Services>>>::from_request_parts(
                &mut parts, services,
            )
            .await
            .map_err(|rejection| {
                Error::invalid_param(format!("invalid path parameter: {}", rejection.body_text()))
            })?;
        let mut params: Vec<&str> = params.iter().map(|(_, value)| value).collect();
        if parts.extensions.get::<EmptyLastParameter>().is_some() {
            params.push("");
        }
        let bytes =
            read_body(&parts.headers, body, services.config.max_request_size.as_usize()).await?;
        let sent_empty = bytes.is_empty();
        let bytes = strip_empty_auth(checked_body::<T>(bytes)?);
        avoid_known_panics::<T>(&bytes, sent_empty)?;
        let headers = parts.headers.clone();
        let request = axum::http::Request::from_parts(parts, bytes.as_ref());
        // ruma's parsers are a dependency reading client input: a panic in one must be a
        // refusal of this request, not a 500 (or worse, elsewhere, a failed actor).
        match contained_sync(|| T::try_from_http_request(request, &params)) {
            Ok(Ok(body)) => Ok(Self { body, headers, sender, client_ip, raw_body: bytes }),
            Ok(Err(error)) => Err(classify(sent_empty, error)),
            Err(panic) => {
                tracing::warn!(%panic, "parsing a request panicked inside ruma");
                Err(Error::bad_json("The request could not be parsed."))
            }
        }
    }
}

/// Refuses a body that is not one JSON value, or that nests too deep or repeats a key, and
/// an empty body where the endpoint needs one. Any other empty body is given to ruma as
/// `{}` (most of its parsers do that themselves, a few hand-written ones do not). `GET`
/// requests have no body in the spec: one sent anyway is read (within the size limit) and
/// ignored, as ruma ignores it.
pub(super) fn checked_body<T: IncomingRequest + 'static>(bytes: Bytes) -> Result<Bytes> {
    if T::METHOD == Method::GET {
        return Ok(bytes);
    }
    if bytes.is_empty() {
        if body_required::<T>() {
            return Err(needs_body());
        }
        return Ok(Bytes::from_static(b"{}"));
    }
    // The size was bounded while reading.
    limits::check_body(&bytes, usize::MAX)?;
    Ok(bytes)
}

/// Endpoints whose whole body is event or account data content. ruma reads an empty body as
/// `{}`, which such a body accepts, but the spec requires a body here: an empty `PUT` must
/// not send an empty message or erase account data.
fn body_required<T: 'static>() -> bool {
    [
        TypeId::of::<send_message_event::v3::Request>(),
        TypeId::of::<send_state_event::v3::Request>(),
        TypeId::of::<set_global_account_data::v3::Request>(),
        TypeId::of::<set_room_account_data::v3::Request>(),
        TypeId::of::<create_tag::v3::Request>(),
    ]
    .contains(&TypeId::of::<T>())
}

/// Inputs known to make one of ruma's parsers panic, refused before it sees them: its
/// `login` parser indexes the body's `type` without checking it is there.
fn avoid_known_panics<T: 'static>(bytes: &[u8], sent_empty: bool) -> Result<()> {
    if TypeId::of::<T>() == TypeId::of::<login::v3::Request>() {
        if sent_empty {
            return Err(needs_body());
        }
        let has_type = serde_json::from_slice::<serde_json::Map<String, serde_json::Value>>(bytes)
            .is_ok_and(|body| body.contains_key("type"));
        if !has_type {
            return Err(Error::bad_json("A login request needs a `type`."));
        }
    }
    Ok(())
}

/// An `auth` object with neither `type` nor `session` carries no authentication; some
/// clients (matrix-nio) send one to start User-Interactive Authentication. Treat it as
/// absent, as the spec's first round is, instead of failing to parse the request.
fn strip_empty_auth(bytes: Bytes) -> Bytes {
    if !bytes.windows(6).any(|window| window == b"\"auth\"") {
        return bytes;
    }
    let Ok(serde_json::Value::Object(mut body)) =
        serde_json::from_slice::<serde_json::Value>(&bytes)
    else {
        return bytes;
    };
    let empty = match body.get("auth") {
        Some(serde_json::Value::Object(auth)) => {
            !auth.contains_key("type") && !auth.contains_key("session")
        }
        Some(serde_json::Value::Null) => true,
        _ => false,
    };
    if !empty {
        return bytes;
    }
    body.remove("auth");
    serde_json::to_vec(&body).map(Bytes::from).unwrap_or(bytes)
}

fn needs_body() -> Error {
    Error::not_json("This endpoint needs a JSON object as its request body.")
}

/// Turns a ruma parse failure into the spec's error. The body is known to be JSON by now,
/// so a body failure is JSON of the wrong shape, or missing fields of a body never sent.
pub(super) fn classify(sent_empty: bool, error: FromHttpRequestError) -> Error {
    match error {
        FromHttpRequestError::Deserialization(DeserializationError::Json(_)) if sent_empty => {
            needs_body()
        }
        FromHttpRequestError::Deserialization(DeserializationError::Json(json)) => {
            Error::bad_json(format!("Request body has the wrong shape: {json}"))
        }
        FromHttpRequestError::Deserialization(DeserializationError::Query(query)) => {
            Error::invalid_param(format!("Invalid query string: {query}"))
        }
        FromHttpRequestError::Deserialization(DeserializationError::Ident(ident)) => {
            Error::invalid_param(format!("Invalid identifier: {ident}"))
        }
        FromHttpRequestError::Deserialization(other) => {
            Error::bad_json(format!("Invalid request: {other}"))
        }
        FromHttpRequestError::MethodMismatch { expected, received } => Error::unrecognized(
            axum::http::StatusCode::METHOD_NOT_ALLOWED,
            format!("Expected {expected}, got {received}."),
        ),
        other => Error::bad_json(format!("Invalid request: {other}")),
    }
}

/// A ruma response rendered as an HTTP response.
pub struct RumaResponse<T>(pub T);

impl<T: OutgoingResponse> IntoResponse for RumaResponse<T> {
    fn into_response(self) -> Response {
        match self.0.try_into_http_response::<Vec<u8>>() {
            Ok(response) => response.map(Body::from),
            Err(error) => {
                Error::internal(format!("serializing a response failed: {error}")).into_response()
            }
        }
    }
}

/// Mounts `handler` for every path and version of the endpoint `R`.
pub fn route<R, H, F>(routes: Routes, handler: H) -> Routes
where
    R: IncomingRequest + Send + 'static,
    R::Authentication: AuthPolicy,
    R::OutgoingResponse: Send,
    H: Fn(Arc<Services>, Ruma<R>) -> F + Clone + Send + Sync + 'static,
    F: Future<Output = Result<R::OutgoingResponse>> + Send + 'static,
{
    route_with_paths(routes, handler, &[])
}

/// Like [`route`], also mounting `extra` paths (forms the path router cannot express, such
/// as a trailing parameter that may be empty).
pub fn route_with_paths<R, H, F>(routes: Routes, handler: H, extra: &[&'static str]) -> Routes
where
    R: IncomingRequest + Send + 'static,
    R::Authentication: AuthPolicy,
    R::OutgoingResponse: Send,
    H: Fn(Arc<Services>, Ruma<R>) -> F + Clone + Send + Sync + 'static,
    F: Future<Output = Result<R::OutgoingResponse>> + Send + 'static,
{
    mount::<R, _, _, _>(routes, extra, move |services: Arc<Services>, request: Ruma<R>| {
        let answer = handler(services, request);
        async move { answer.await.map(RumaResponse) }
    })
}

/// Like [`route`], for a handler that answers with a response of its own making: JSON the
/// ruma response type cannot express (fields the spec requires that ruma leaves out when
/// empty, actions kept byte for byte), or a response that must outlive its handler.
pub fn route_raw<R, H, F, O>(routes: Routes, handler: H) -> Routes
where
    R: IncomingRequest + Send + 'static,
    R::Authentication: AuthPolicy,
    H: Fn(Arc<Services>, Ruma<R>) -> F + Clone + Send + Sync + 'static,
    F: Future<Output = Result<O>> + Send + 'static,
    O: IntoResponse + 'static,
{
    mount(routes, &[], handler)
}

/// Mounts `handler` on every path of `R` and on `extra`. A path whose last segment is a
/// parameter is also mounted with that segment empty and a trailing slash (`.../state/m.room.name/`
/// is the spec's empty state key): the path router cannot match an empty segment, and
/// clients do send it. The handler then sees the parameter as the empty string and judges
/// it as it judges any other value.
fn mount<R, H, F, O>(routes: Routes, extra: &[&'static str], handler: H) -> Routes
where
    R: IncomingRequest + Send + 'static,
    R::Authentication: AuthPolicy,
    H: Fn(Arc<Services>, Ruma<R>) -> F + Clone + Send + Sync + 'static,
    F: Future<Output = Result<O>> + Send + 'static,
    O: IntoResponse + 'static,
{
    let filter = method_filter(&R::METHOD);
    let body = if R::METHOD == Method::GET { BodyKind::Ignored } else { BodyKind::Json };
    let mut paths: BTreeSet<&'static str> = R::PATH_BUILDER.all_paths().collect();
    paths.extend(extra);
    let mut routes = routes;
    for path in paths {
        let direct = handler.clone();
        routes = routes.mount(
            R::METHOD,
            path,
            body,
            on(filter, move |State(services): State<Arc<Services>>, request: Ruma<R>| async move {
                let answering = Arc::clone(&services);
                direct(services, request)
                    .await
                    .map_err(|error| error.with_info_uri(|| limits_info_uri(&answering.config)))
            }),
        );
        if let Some(emptied) = with_empty_last_parameter(path) {
            let handler = handler.clone();
            routes = routes.mount(
                R::METHOD,
                emptied,
                body,
                on(filter, move |State(services): State<Arc<Services>>, request: Request| {
                    let handler = handler.clone();
                    async move {
                        let (mut parts, body) = request.into_parts();
                        parts.extensions.insert(EmptyLastParameter);
                        let request =
                            Ruma::<R>::from_request(Request::from_parts(parts, body), &services)
                                .await?;
                        let answering = Arc::clone(&services);
                        handler(services, request).await.map_err(|error| {
                            error.with_info_uri(|| limits_info_uri(&answering.config))
                        })
                    }
                }),
            );
        }
    }
    routes
}

/// Marks a request routed through [`with_empty_last_parameter`]'s path.
#[derive(Clone, Copy)]
struct EmptyLastParameter;

/// `/a/{b}/{c}` as `/a/{b}/` (the form whose last parameter is empty); `None` when the path
/// does not end in a parameter.
fn with_empty_last_parameter(path: &str) -> Option<String> {
    let (head, last) = path.rsplit_once('/')?;
    (last.starts_with('{') && last.ends_with('}')).then(|| format!("{head}/"))
}

/// Where a user who reached one of the account bounds can learn more (the spec's `info_uri`
/// of `M_USER_LIMIT_EXCEEDED`): the operator's support page, else the support document that
/// `/.well-known/matrix/support` serves.
fn limits_info_uri(config: &Config) -> String {
    config
        .well_known
        .support_page
        .clone()
        .unwrap_or_else(|| format!("https://{}/.well-known/matrix/support", config.server_name))
}

pub(super) fn method_filter(method: &Method) -> MethodFilter {
    match *method {
        Method::POST => MethodFilter::POST,
        Method::PUT => MethodFilter::PUT,
        Method::DELETE => MethodFilter::DELETE,
        Method::PATCH => MethodFilter::PATCH,
        Method::HEAD => MethodFilter::HEAD,
        Method::OPTIONS => MethodFilter::OPTIONS,
        _ => MethodFilter::GET,
    }
}
