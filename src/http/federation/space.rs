//! Other servers asking about our spaces: `GET /hierarchy/{roomId}`, answered by
//! `rooms::spaces` with what the asking server may see (server ACLs included).

use std::sync::Arc;

use ruma::api::federation::space::get_hierarchy;

use super::Signed;
use crate::{Result, Services, rooms::spaces};

pub(super) async fn hierarchy(
    services: Arc<Services>,
    request: Signed<get_hierarchy::v1::Request>,
) -> Result<get_hierarchy::v1::Response> {
    spaces::for_server(
        &services.storage,
        &request.body.room_id,
        &request.origin,
        request.body.suggested_only,
    )
}
