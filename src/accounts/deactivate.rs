//! Deactivating an account (by its owner through the client API, or by an admin command):
//! what it leaves behind and in which order.

use ruma::UserId;

use super::{Accounts, UserMessage};
use crate::{
    Result,
    push::pushers::{Push, PusherMessage},
    rooms::Rooms,
};

/// How long removing the pushers may take.
const PUSHERS_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(30);

/// Deactivates `user`: leaves every room, removes their pushers, then closes the account
/// (devices and tokens go with it).
pub async fn deactivate(
    accounts: &Accounts,
    rooms: &Rooms,
    push: &Push,
    user: &UserId,
) -> Result<()> {
    rooms.leave_all(user).await?;
    push.pushers
        .call(&user.to_owned(), |reply| PusherMessage::RemoveAll { reply }, PUSHERS_TIMEOUT)
        .await??;
    accounts.call(user, |reply| UserMessage::Deactivate { reply }).await
}
