//! Other servers downloading our media: `GET /media/download/{mediaId}` and
//! `GET /media/thumbnail/{mediaId}`, answered `multipart/mixed` (`http::media::multipart`).
//! Only media uploaded here is served, never what this server cached from others: the spec
//! has servers ask the media's own server.

use std::sync::Arc;

use axum::response::Response;
use ruma::api::federation::authenticated_media::{get_content, get_content_thumbnail};

use super::Signed;
use crate::{
    Result, Services,
    http::media::multipart,
    media::thumbnail::{self, Method},
};

pub(super) async fn download(
    services: Arc<Services>,
    request: Signed<get_content::v1::Request>,
) -> Result<Response> {
    let body = &request.body;
    let served = services
        .media
        .content(&services.config.server_name, &body.media_id, body.timeout_ms)
        .await?;
    multipart(served, false, &request.headers).await
}

pub(super) async fn thumbnail(
    services: Arc<Services>,
    request: Signed<get_content_thumbnail::v1::Request>,
) -> Result<Response> {
    let body = &request.body;
    let served = services
        .media
        .thumbnail(
            &services.config.server_name,
            &body.media_id,
            thumbnail::dimension(body.width),
            thumbnail::dimension(body.height),
            Method::requested(body.method.as_ref())?,
            body.animated.unwrap_or(false),
            body.timeout_ms,
        )
        .await?;
    multipart(served, true, &request.headers).await
}
