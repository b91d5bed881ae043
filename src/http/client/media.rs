//! The media endpoints: uploads (`/_matrix/media/v3/upload`, `/_matrix/media/v1/create`),
//! authenticated downloads, thumbnails, configuration and URL previews
//! (`/_matrix/client/v1/media/...`), and their deprecated unauthenticated forms under
//! `/_matrix/media/*/` when `allow_legacy_media` is on.
//!
//! Upload bodies are raw bytes of any size up to `max_request_size`, so the upload handlers
//! authenticate with the shared auth code and stream the body to a staging file instead of
//! going through [`Ruma`] (which buffers). Downloads stream from the file with the safe
//! headers of `http::media`, whole or in the one `Range` asked for.

use std::{future::Future, sync::Arc};

use axum::{
    body::Body,
    extract::{FromRequest, FromRequestParts, RawPathParams, Request, State},
    http::{
        Method as HttpMethod, StatusCode,
        header::{CONTENT_LENGTH, CONTENT_TYPE},
        request::Parts,
    },
    response::{IntoResponse, Response},
    routing::{get, post, put},
};
use http_body_util::BodyExt;
use ruma::{
    MilliSecondsSinceUnixEpoch, ServerName, UInt,
    api::{
        IncomingRequest, Metadata,
        client::{authenticated_media, media},
        error::ErrorKind,
        path_builder::PathBuilder,
    },
};
use serde::Deserialize;

use crate::{
    Error, Result, Services,
    accounts::Sender,
    http::{
        auth::{self, AuthPolicy, Policy},
        media::serve,
        routes::{BodyKind, Routes},
        ruma::{Ruma, RumaResponse, route},
    },
    media::{
        owner::Described,
        store::StagedFile,
        thumbnail::{self, Method},
    },
};

/// Longest content type and file name stored with an upload.
const MAX_DESCRIPTION: usize = crate::media::MAX_DESCRIPTION;

pub(super) fn routes(router: Routes) -> Routes {
    let mut router = router;
    for path in media::create_content::v3::Request::PATH_BUILDER.all_paths() {
        router = router.mount(HttpMethod::POST, path, BodyKind::Raw, post(upload));
    }
    for path in media::create_content_async::v3::Request::PATH_BUILDER.all_paths() {
        router = router.mount(HttpMethod::PUT, path, BodyKind::Raw, put(upload_to));
    }
    router = route(router, create);
    router = route(router, config);
    router = route(router, preview);
    router = mount_get(router, download);
    router = mount_get(router, download_as);
    router = mount_get(router, thumbnail);

    router = mount_legacy(router, legacy_download);
    router = mount_legacy(router, legacy_download_as);
    router = mount_legacy(router, legacy_thumbnail);
    router = mount_legacy(router, legacy_config);
    mount_legacy(router, legacy_preview)
}

/// Mounts a GET endpoint whose request ruma parses but whose response streams.
fn mount_get<R, H, F>(router: Routes, handler: H) -> Routes
where
    R: IncomingRequest + Send + 'static,
    R::Authentication: AuthPolicy,
    H: Fn(Arc<Services>, Ruma<R>) -> F + Clone + Send + Sync + 'static,
    F: Future<Output = Result<Response>> + Send + 'static,
{
    let mut router = router;
    for path in R::PATH_BUILDER.all_paths() {
        let handler = handler.clone();
        router = router.mount(
            HttpMethod::GET,
            path,
            BodyKind::Ignored,
            get(move |State(services): State<Arc<Services>>, request: Ruma<R>| {
                handler(services, request)
            }),
        );
    }
    router
}

/// Mounts a deprecated unauthenticated endpoint: `404 M_NOT_FOUND` (the spec's answer for
/// frozen media) unless `allow_legacy_media` is on, checked before anything else so the
/// answer does not depend on the request.
fn mount_legacy<R, H, F>(router: Routes, handler: H) -> Routes
where
    R: IncomingRequest + Send + 'static,
    R::Authentication: AuthPolicy,
    H: Fn(Arc<Services>, Ruma<R>) -> F + Clone + Send + Sync + 'static,
    F: Future<Output = Result<Response>> + Send + 'static,
{
    let mut router = router;
    for path in R::PATH_BUILDER.all_paths() {
        let handler = handler.clone();
        router = router.mount(
            HttpMethod::GET,
            path,
            BodyKind::Ignored,
            get(move |State(services): State<Arc<Services>>, request: Request| async move {
                if !services.media.allow_legacy {
                    return Err(Error::not_found(
                        "Unauthenticated media is disabled on this server; use the \
                         /_matrix/client/v1/media/ endpoints with an access token.",
                    ));
                }
                let request = Ruma::<R>::from_request(request, &services).await?;
                handler(services, request).await
            }),
        );
    }
    router
}

// ----- uploads -------------------------------------------------------------------------

/// `POST /_matrix/media/v3/upload`.
async fn upload(State(services): State<Arc<Services>>, request: Request) -> Result<Response> {
    let (parts, body) = request.into_parts();
    let sender = uploader(&services, &parts)?;
    let described = described(&parts)?;
    let staged = receive(&services, &parts, body).await?;
    let content_uri = services.media.create(&sender.user_id, staged, described).await?;
    Ok(RumaResponse(media::create_content::v3::Response::new(content_uri)).into_response())
}

/// `PUT /_matrix/media/v3/upload/{serverName}/{mediaId}`: content for a `/create`d id.
async fn upload_to(State(services): State<Arc<Services>>, request: Request) -> Result<Response> {
    let (mut parts, body) = request.into_parts();
    let sender = uploader(&services, &parts)?;
    let params = RawPathParams::from_request_parts(&mut parts, &services)
        .await
        .map_err(|rejection| Error::invalid_param(rejection.body_text()))?;
    let mut params = params.iter().map(|(_, value)| value.to_owned());
    let (Some(server_name), Some(media_id)) = (params.next(), params.next()) else {
        return Err(Error::not_found("Unknown media ID."));
    };
    let server_name = ServerName::parse(&server_name)
        .map_err(|_| Error::not_found("Unknown media ID: not a server name."))?;
    // Refuse before reading a byte: a wrong id should not cost an upload.
    services.media.check_fillable(&sender.user_id, &server_name, &media_id)?;
    let described = described(&parts)?;
    let staged = receive(&services, &parts, body).await?;
    services.media.fill(&sender.user_id, &media_id, staged, described).await?;
    Ok(axum::Json(serde_json::json!({})).into_response())
}

/// `POST /_matrix/media/v1/create`.
async fn create(
    services: Arc<Services>,
    request: Ruma<media::create_mxc_uri::v1::Request>,
) -> Result<media::create_mxc_uri::v1::Response> {
    let sender = request.sender()?;
    let (content_uri, until) = services.media.reserve(&sender.user_id).await?;
    let mut response = media::create_mxc_uri::v1::Response::new(content_uri);
    response.unused_expires_at =
        Some(MilliSecondsSinceUnixEpoch(UInt::try_from(until).unwrap_or(UInt::MAX)));
    Ok(response)
}

/// The authenticated uploader: uploads need an access token and are not for guests.
fn uploader(services: &Services, parts: &Parts) -> Result<Sender> {
    let sender =
        auth::authenticate(services, parts, Policy::Required)?.ok_or_else(Error::missing_token)?;
    if sender.guest {
        return Err(Error::matrix(
            StatusCode::FORBIDDEN,
            ErrorKind::GuestAccessForbidden,
            "Guest accounts cannot upload media; register a full account.",
        ));
    }
    services.accounts.note_seen(&sender, auth::client_ip(parts));
    tracing::Span::current().record("user", sender.user_id.as_str());
    Ok(sender)
}

#[derive(Deserialize)]
struct UploadQuery {
    filename: Option<String>,
}

/// The content type (header) and file name (query) of an upload.
fn described(parts: &Parts) -> Result<Described> {
    let content_type = match parts.headers.get(CONTENT_TYPE) {
        None => None,
        Some(value) => Some(
            value
                .to_str()
                .map_err(|_| Error::invalid_param("The Content-Type header is not ASCII."))?
                .trim()
                .to_owned(),
        ),
    }
    .filter(|value| !value.is_empty());
    let filename = axum::extract::Query::<UploadQuery>::try_from_uri(&parts.uri)
        .map_err(|rejection| Error::invalid_param(rejection.body_text()))?
        .0
        .filename
        .filter(|name| !name.is_empty());
    if content_type.as_ref().is_some_and(|value| value.len() > MAX_DESCRIPTION)
        || filename.as_ref().is_some_and(|name| name.chars().count() > MAX_DESCRIPTION)
    {
        return Err(Error::invalid_param(format!(
            "Content type and file name may be at most {MAX_DESCRIPTION} characters."
        )));
    }
    Ok(Described { content_type, filename })
}

/// Streams the request body into a staging file, chunk by chunk, within `max_request_size`.
async fn receive(services: &Services, parts: &Parts, body: Body) -> Result<StagedFile> {
    let limit = services.media.max_upload_size();
    let declared = parts
        .headers
        .get(CONTENT_LENGTH)
        .and_then(|value| value.to_str().ok())
        .and_then(|value| value.parse::<u64>().ok());
    if declared.is_some_and(|length| length > limit) {
        return Err(Error::too_large(format!(
            "The upload is larger than this server's limit of {limit} bytes."
        )));
    }
    let mut staging = services.media.stage_upload().await?;
    let mut body = body;
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(|error| {
            Error::matrix(
                StatusCode::BAD_REQUEST,
                ErrorKind::Unknown,
                format!("The upload was interrupted: {error}"),
            )
        })?;
        if let Ok(data) = frame.into_data() {
            staging.write(&data).await?;
        }
    }
    staging.finish().await
}

// ----- downloads -----------------------------------------------------------------------

async fn download(
    services: Arc<Services>,
    request: Ruma<authenticated_media::get_content::v1::Request>,
) -> Result<Response> {
    let body = request.body;
    let served = services.media.content(&body.server_name, &body.media_id, body.timeout_ms).await?;
    serve(served, None, false, &request.headers).await
}

async fn download_as(
    services: Arc<Services>,
    request: Ruma<authenticated_media::get_content_as_filename::v1::Request>,
) -> Result<Response> {
    let body = request.body;
    let served = services.media.content(&body.server_name, &body.media_id, body.timeout_ms).await?;
    serve(served, Some(body.filename), false, &request.headers).await
}

async fn thumbnail(
    services: Arc<Services>,
    request: Ruma<authenticated_media::get_content_thumbnail::v1::Request>,
) -> Result<Response> {
    let body = request.body;
    let served = services
        .media
        .thumbnail(
            &body.server_name,
            &body.media_id,
            thumbnail::dimension(body.width),
            thumbnail::dimension(body.height),
            Method::requested(body.method.as_ref())?,
            body.animated.unwrap_or(false),
            body.timeout_ms,
        )
        .await?;
    serve(served, None, true, &request.headers).await
}

async fn config(
    services: Arc<Services>,
    _request: Ruma<authenticated_media::get_media_config::v1::Request>,
) -> Result<authenticated_media::get_media_config::v1::Response> {
    Ok(authenticated_media::get_media_config::v1::Response::new(upload_size(&services)))
}

async fn preview(
    services: Arc<Services>,
    request: Ruma<authenticated_media::get_media_preview::v1::Request>,
) -> Result<authenticated_media::get_media_preview::v1::Response> {
    let data = services.media.preview(&request.body.url).await?;
    Ok(authenticated_media::get_media_preview::v1::Response::from_serialize(&data)?)
}

// The legacy request types are deprecated, which is the point of these handlers.
#[allow(deprecated)]
async fn legacy_download(
    services: Arc<Services>,
    request: Ruma<media::get_content::v3::Request>,
) -> Result<Response> {
    let body = request.body;
    let served = services.media.content(&body.server_name, &body.media_id, body.timeout_ms).await?;
    serve(served, None, false, &request.headers).await
}

#[allow(deprecated)]
async fn legacy_download_as(
    services: Arc<Services>,
    request: Ruma<media::get_content_as_filename::v3::Request>,
) -> Result<Response> {
    let body = request.body;
    let served = services.media.content(&body.server_name, &body.media_id, body.timeout_ms).await?;
    serve(served, Some(body.filename), false, &request.headers).await
}

#[allow(deprecated)]
async fn legacy_thumbnail(
    services: Arc<Services>,
    request: Ruma<media::get_content_thumbnail::v3::Request>,
) -> Result<Response> {
    let body = request.body;
    let served = services
        .media
        .thumbnail(
            &body.server_name,
            &body.media_id,
            thumbnail::dimension(body.width),
            thumbnail::dimension(body.height),
            Method::requested(body.method.as_ref())?,
            body.animated.unwrap_or(false),
            body.timeout_ms,
        )
        .await?;
    serve(served, None, true, &request.headers).await
}

#[allow(deprecated)]
async fn legacy_config(
    services: Arc<Services>,
    _request: Ruma<media::get_media_config::v3::Request>,
) -> Result<Response> {
    let response = media::get_media_config::v3::Response::new(upload_size(&services));
    Ok(RumaResponse(response).into_response())
}

#[allow(deprecated)]
async fn legacy_preview(
    services: Arc<Services>,
    request: Ruma<media::get_media_preview::v3::Request>,
) -> Result<Response> {
    let data = services.media.preview(&request.body.url).await?;
    let response = media::get_media_preview::v3::Response::from_serialize(&data)?;
    Ok(RumaResponse(response).into_response())
}

fn upload_size(services: &Services) -> UInt {
    UInt::try_from(services.media.max_upload_size()).unwrap_or(UInt::MAX)
}
