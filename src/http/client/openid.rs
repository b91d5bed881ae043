//! `POST /user/{userId}/openid/request_token`: a token a third-party service exchanges, at
//! `GET /_matrix/federation/v1/openid/userinfo`, for the user's id (`accounts::openid`).

use std::{sync::Arc, time::Duration};

use ruma::{api::client::account::request_openid_token, authentication::TokenType};

use super::require_self;
use crate::http::routes::Routes;
use crate::{
    Result, Services,
    accounts::UserMessage,
    http::ruma::{Ruma, route},
};

pub(super) fn routes(router: Routes) -> Routes {
    route(router, request_token)
}

async fn request_token(
    services: Arc<Services>,
    request: Ruma<request_openid_token::v3::Request>,
) -> Result<request_openid_token::v3::Response> {
    let sender = request.sender()?.clone();
    require_self(&sender, &request.body.user_id, "request an OpenID token")?;
    let ttl = Duration::from_secs(services.config.openid_token_ttl.max(1));
    let token = services
        .accounts
        .call(&sender.user_id, |reply| UserMessage::IssueOpenIdToken { ttl, reply })
        .await?;
    Ok(request_openid_token::v3::Response::new(
        token,
        TokenType::Bearer,
        services.config.server_name.clone(),
        ttl,
    ))
}
