//! Other servers downloading our media: `GET /media/download/{mediaId}` and
//! `GET /media/thumbnail/{mediaId}`, answered `multipart/mixed` (`http::media::multipart`).
//! Only media uploaded here is served, never what this server cached from others: the spec
//! has servers ask the media's own server.

use std::sync::Arc;

use axum::response::Response;
use ruma::{
    UInt,
    api::federation::authenticated_media::{get_content, get_content_thumbnail},
};

use super::Signed;
use crate::{Error, Result, Services, http::media::multipart, media::thumbnail::Method};

pub(super) async fn download(
    services: Arc<Services>,
    request: Signed<get_content::v1::Request>,
) -> Result<Response> {
    let body = request.body;
    let served = services
        .media
        .content(&services.config.server_name, &body.media_id, body.timeout_ms)
        .await?;
    Ok(multipart(served, false))
}

pub(super) async fn thumbnail(
    services: Arc<Services>,
    request: Signed<get_content_thumbnail::v1::Request>,
) -> Result<Response> {
    let body = request.body;
    let method = match body.method.as_ref() {
        None | Some(ruma::media::Method::Scale) => Method::Scale,
        Some(ruma::media::Method::Crop) => Method::Crop,
        Some(other) => {
            return Err(Error::invalid_param(format!(
                "Unknown thumbnail method `{}`: use crop or scale.",
                other.as_str()
            )));
        }
    };
    let dimension = |value: UInt| u32::try_from(u64::from(value)).unwrap_or(u32::MAX);
    let served = services
        .media
        .thumbnail(
            &services.config.server_name,
            &body.media_id,
            dimension(body.width),
            dimension(body.height),
            method,
            body.animated.unwrap_or(false),
            body.timeout_ms,
        )
        .await?;
    Ok(multipart(served, true))
}
