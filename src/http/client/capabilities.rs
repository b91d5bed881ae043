//! `GET /capabilities`: what clients may offer their users on this server.

use std::{collections::BTreeMap, sync::Arc};

#[allow(deprecated)]
use ruma::{
    RoomVersionId,
    api::client::discovery::get_capabilities::v3::{
        self as capabilities, ChangePasswordCapability, GetLoginTokenCapability,
        ProfileFieldsCapability, RoomVersionStability, RoomVersionsCapability,
        SetAvatarUrlCapability, SetDisplayNameCapability, ThirdPartyIdChangesCapability,
    },
};

use crate::http::routes::Routes;
use crate::{
    Result, Services,
    http::ruma::{Ruma, route},
    rooms::create::CREATABLE_ROOM_VERSIONS,
};

pub(super) fn routes(router: Routes) -> Routes {
    route(router, get)
}

// Clients from before Matrix 1.16 still read set_displayname and set_avatar_url.
#[allow(deprecated)]
async fn get(
    services: Arc<Services>,
    request: Ruma<capabilities::Request>,
) -> Result<capabilities::Response> {
    request.sender()?;
    let available: BTreeMap<RoomVersionId, RoomVersionStability> = CREATABLE_ROOM_VERSIONS
        .iter()
        .map(|version| (version.clone(), RoomVersionStability::Stable))
        .collect();
    let mut capabilities = capabilities::Capabilities::new();
    capabilities.change_password = ChangePasswordCapability::new(true);
    capabilities.room_versions =
        RoomVersionsCapability::new(services.config.default_room_version.clone(), available);
    capabilities.set_displayname = SetDisplayNameCapability::new(true);
    capabilities.set_avatar_url = SetAvatarUrlCapability::new(true);
    capabilities.thirdparty_id_changes = ThirdPartyIdChangesCapability::new(false);
    capabilities.get_login_token = GetLoginTokenCapability::new(true);
    capabilities.profile_fields = Some(ProfileFieldsCapability::new(true));
    Ok(capabilities::Response::new(capabilities))
}
