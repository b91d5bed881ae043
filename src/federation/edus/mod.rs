//! EDUs from other servers, one file per type: what each must satisfy to be applied, and
//! how it is applied. The EDUs this server sends are built by `super::outbox` (and, for
//! device lists, by the fan-out, from the device as it is when sent).
//!
//! Common rules: an EDU about a user comes only from that user's server; an EDU about a
//! room is applied only when its origin has a member joined to the room (as the spec asks)
//! and the room is not disabled for federation. What fails these checks is skipped.

pub mod device_list;
pub mod presence;
pub mod receipt;
pub mod to_device;
pub mod typing;

use ruma::{ServerName, UserId};

use crate::{Error, Result};

/// `user` must belong to `origin`.
fn from_origin(user: &UserId, origin: &ServerName) -> Result<()> {
    if user.server_name() == origin {
        Ok(())
    } else {
        Err(Error::forbidden(format!("{origin} cannot speak for {user}")))
    }
}
