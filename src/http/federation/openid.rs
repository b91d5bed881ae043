//! `GET /openid/userinfo`: who an OpenID token belongs to. Unauthenticated, as the spec
//! says: the caller is usually not a homeserver but a service our user gave the token to.

use std::sync::Arc;

use ruma::api::federation::openid::get_openid_userinfo;

use crate::{Error, Result, Services, accounts::openid, http::ruma::Ruma};

pub(super) async fn userinfo(
    services: Arc<Services>,
    request: Ruma<get_openid_userinfo::v1::Request>,
) -> Result<get_openid_userinfo::v1::Response> {
    let user =
        openid::user_of(&services.storage, &request.body.access_token, services.time.now_ms())?
            .ok_or_else(|| Error::unknown_token(false, "Access token unknown or expired."))?;
    Ok(get_openid_userinfo::v1::Response::new(user))
}
