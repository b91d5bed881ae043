//! The Client-Server API, one file per endpoint family.

pub(crate) mod account;
mod account_data;
mod capabilities;
mod devices;
mod filters;
mod key_backup;
mod keys;
mod live;
mod login;
mod media;
mod openid;
mod profile;
mod push;
mod register;
pub(crate) mod rooms;
mod rtc;
mod search;
mod sliding_sync;
mod sync;
mod thirdparty;
mod threepid;
mod user_directory;
mod voip;

use crate::http::routes::Routes;

pub fn routes(router: Routes) -> Routes {
    let router = register::routes(router);
    let router = login::routes(router);
    let router = account::routes(router);
    let router = threepid::routes(router);
    let router = devices::routes(router);
    let router = profile::routes(router);
    let router = openid::routes(router);
    let router = account_data::routes(router);
    let router = filters::routes(router);
    let router = capabilities::routes(router);
    let router = rooms::routes(router);
    let router = search::routes(router);
    let router = sync::routes(router);
    let router = sliding_sync::routes(router);
    let router = live::routes(router);
    let router = keys::routes(router);
    let router = key_backup::routes(router);
    let router = push::routes(router);
    let router = media::routes(router);
    let router = thirdparty::routes(router);
    let router = voip::routes(router);
    let router = rtc::routes(router);
    user_directory::routes(router)
}

/// Fails unless `sender` is the user named in the path.
pub(super) fn require_self(
    sender: &crate::accounts::Sender,
    user: &ruma::UserId,
    action: &str,
) -> crate::Result<()> {
    if sender.user_id == user {
        Ok(())
    } else {
        Err(crate::Error::forbidden(format!("You cannot {action} for another user.")))
    }
}
