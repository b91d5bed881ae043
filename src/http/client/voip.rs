//! `GET /voip/turnServer`: the TURN servers clients may relay calls through. None is
//! configured yet, which the answer says as Synapse does, with an empty object: matrix-js-sdk
//! retries every other answer but 403 for as long as the client runs.

use std::sync::Arc;

use crate::http::routes::Routes;
use ruma::api::client::voip::get_turn_server_info;
use serde_json::{Value as JsonValue, json};

use crate::{
    Result, Services,
    http::ruma::{Ruma, route_raw},
};

pub(super) fn routes(router: Routes) -> Routes {
    route_raw(router, turn_server)
}

async fn turn_server(
    _services: Arc<Services>,
    request: Ruma<get_turn_server_info::v3::Request>,
) -> Result<axum::Json<JsonValue>> {
    request.sender()?;
    Ok(axum::Json(json!({})))
}
