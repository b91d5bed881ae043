//! Room endpoints of the Client-Server API, one file per family.

mod aliases;
mod create;
mod hierarchy;
mod membership;
mod peek;
mod public_rooms;
mod read;
mod relations;
mod reports;
mod send;
mod summary;
mod upgrade;
mod visibility;

use ruma::RoomId;

use crate::http::routes::Routes;
use crate::{Result, Services};

pub(in crate::http) fn routes(router: Routes) -> Routes {
    let router = create::routes(router);
    let router = membership::routes(router);
    let router = send::routes(router);
    let router = aliases::routes(router);
    let router = visibility::routes(router);
    let router = public_rooms::routes(router);
    let router = hierarchy::routes(router);
    let router = upgrade::routes(router);
    let router = reports::routes(router);
    let router = relations::routes(router);
    let router = peek::routes(router);
    let router = summary::routes(router);
    read::routes(router)
}

/// Fails with `M_NOT_FOUND` unless this server knows the room.
pub(crate) fn require_room(
    services: &Services,
    room_id: &RoomId,
) -> Result<crate::storage::rooms::RoomRecord> {
    crate::rooms::require_room(&services.storage, room_id)
}
