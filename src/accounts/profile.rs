//! Reading a local user's profile: one reader of the stored fields, for the profile
//! endpoints, member events and the user directory alike.

use ruma::UserId;

use crate::{
    Result,
    storage::{Storage, users::PROFILES_TABLE},
};

/// A string field of `user`'s stored profile (`displayname`, `avatar_url`...): `None` when
/// it is not set or not a string.
pub fn profile_string(storage: &Storage, user: &UserId, field: &str) -> Result<Option<String>> {
    let bytes = PROFILES_TABLE.get(storage.engine(), &(user.to_owned(), field.to_owned()))?;
    Ok(bytes.and_then(|bytes| serde_json::from_slice::<String>(&bytes).ok()))
}
