//! `GET /_matrix/client/unstable/org.matrix.msc4143/rtc/transports`: the MatrixRTC transports
//! (for Element Call, a LiveKit JWT service) this server offers its signed-in users, from
//! `well_known.livekit_url` and `well_known.rtc_transports`. The same list goes into
//! `/.well-known/matrix/client` as `org.matrix.msc4143.rtc_foci` (`http::discovery`).

use std::sync::Arc;

use ruma::api::client::rtc::transports;
use serde_json::{Value as JsonValue, json};

use crate::http::routes::Routes;
use crate::{
    Result, Services,
    http::ruma::{Ruma, route_raw},
};

pub(super) fn routes(router: Routes) -> Routes {
    route_raw(router, rtc_transports)
}

async fn rtc_transports(
    services: Arc<Services>,
    request: Ruma<transports::v1::Request>,
) -> Result<axum::Json<JsonValue>> {
    request.sender()?;
    let list = services.config.well_known.rtc_transports_json();
    // The MSC's current text names the list `transports`; Synapse, ruma and the widget API
    // read `rtc_transports`. Both carry the same list, so either kind of client finds it.
    Ok(axum::Json(json!({ "rtc_transports": list, "transports": list })))
}
