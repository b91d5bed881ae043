//! `GET /voip/turnServer`: the TURN servers clients may relay calls through, with
//! credentials (`accounts::turn`). With none configured the answer is an empty object, as
//! Synapse gives: matrix-js-sdk retries every other answer but 403 for as long as it runs.
//! Guests get credentials only with `turn_allow_guests`.

use std::sync::Arc;

use axum::http::StatusCode;
use ruma::api::{client::voip::get_turn_server_info, error::ErrorKind};
use serde_json::{Value as JsonValue, json};

use crate::http::routes::Routes;
use crate::{
    Error, Result, Services,
    http::ruma::{Ruma, route_raw},
};

pub(super) fn routes(router: Routes) -> Routes {
    route_raw(router, turn_server)
}

async fn turn_server(
    services: Arc<Services>,
    request: Ruma<get_turn_server_info::v3::Request>,
) -> Result<axum::Json<JsonValue>> {
    let sender = request.sender()?;
    let turn = services.accounts.turn.as_ref();
    if sender.guest && !turn.is_some_and(|turn| turn.allows_guests()) {
        return Err(Error::matrix(
            StatusCode::FORBIDDEN,
            ErrorKind::GuestAccessForbidden,
            "Guest accounts get no TURN credentials on this server.",
        ));
    }
    let Some(turn) = turn else {
        return Ok(axum::Json(json!({})));
    };
    let credentials = turn.credentials(&sender.user_id, services.time.now_ms() / 1000);
    Ok(axum::Json(json!({
        "username": credentials.username,
        "password": credentials.password,
        "uris": credentials.uris,
        "ttl": credentials.ttl.as_secs(),
    })))
}
