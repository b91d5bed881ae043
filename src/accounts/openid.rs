//! OpenID tokens: what a user hands a third-party service (an integration manager, a widget)
//! so that the service can ask this server, through
//! `GET /_matrix/federation/v1/openid/userinfo`, who the user is. Nothing else accepts them.
//!
//! Tokens are stored as SHA-256 hashes with their user and expiry (`openid_token_ttl`),
//! written only by the user's actor ([`issue`]), which also forgets the user's expired
//! tokens and caps how many live ones a user holds, so the table cannot grow without bound.
//! Deactivating an account deletes its tokens ([`revoke_all`]).

use std::{ops::ControlFlow, time::Duration};

use ruma::{OwnedUserId, UserId};

use super::tokens;
use crate::{
    Error, Result,
    storage::{
        Batch, Direction, Storage,
        codec::{Json, Prefix},
        users::{OPENID_TOKENS_BY_USER_TABLE, OPENID_TOKENS_TABLE, OpenIdTokenRecord, USERS_TABLE},
    },
};

/// Live OpenID tokens one user may hold; more requests are refused until one expires.
pub const MAX_LIVE_TOKENS: usize = 100;

/// The user's tokens as `(hash, expiry)`.
fn tokens_of(storage: &Storage, user: &UserId) -> Result<Vec<(String, u64)>> {
    let mut found = Vec::new();
    OPENID_TOKENS_BY_USER_TABLE.scan(
        storage.engine(),
        &Prefix::of(user),
        None,
        Direction::Forward,
        |(_, hash), expires| {
            found.push((hash, expires));
            ControlFlow::Continue(())
        },
    )?;
    Ok(found)
}

/// Mints a token for `user` valid for `ttl` from `now` (ms since the epoch). Only the user's
/// actor calls this.
pub async fn issue(storage: &Storage, user: &UserId, ttl: Duration, now: u64) -> Result<String> {
    let mut batch = Batch::new();
    let mut live = Vec::new();
    for (hash, expires) in tokens_of(storage, user)? {
        if expires <= now {
            OPENID_TOKENS_TABLE.delete(&mut batch, &hash);
            OPENID_TOKENS_BY_USER_TABLE.delete(&mut batch, &(user.to_owned(), hash));
        } else {
            live.push(expires);
        }
    }
    if live.len() >= MAX_LIVE_TOKENS {
        storage.writer().commit(batch).await?;
        let soonest = live.iter().min().copied().unwrap_or(now);
        return Err(Error::limit_exceeded(Duration::from_millis(soonest.saturating_sub(now))));
    }
    let token = tokens::generate("oi");
    let hash = tokens::hash(&token);
    let lifetime = u64::try_from(ttl.as_millis()).unwrap_or(u64::MAX);
    let expires_ms = now.saturating_add(lifetime);
    OPENID_TOKENS_TABLE.put(
        &mut batch,
        &hash,
        &Json(OpenIdTokenRecord { user_id: user.to_owned(), expires_ms }),
    );
    OPENID_TOKENS_BY_USER_TABLE.put(&mut batch, &(user.to_owned(), hash), &expires_ms);
    storage.writer().commit(batch).await?;
    Ok(token)
}

/// Adds the deletion of all of `user`'s tokens to `batch`. Only the user's actor calls this.
pub fn revoke_all(storage: &Storage, user: &UserId, batch: &mut Batch) -> Result<()> {
    for (hash, _) in tokens_of(storage, user)? {
        OPENID_TOKENS_TABLE.delete(batch, &hash);
        OPENID_TOKENS_BY_USER_TABLE.delete(batch, &(user.to_owned(), hash));
    }
    Ok(())
}

/// The user a token identifies at `now_ms`: `None` for a token that is unknown, expired, or
/// whose account is gone or deactivated.
pub fn user_of(storage: &Storage, token: &str, now_ms: u64) -> Result<Option<OwnedUserId>> {
    let engine = storage.engine();
    let Some(Json(record)) = OPENID_TOKENS_TABLE.get(engine, &tokens::hash(token))? else {
        return Ok(None);
    };
    if record.expires_ms <= now_ms {
        return Ok(None);
    }
    let active =
        USERS_TABLE.get(engine, &record.user_id)?.is_some_and(|Json(account)| !account.deactivated);
    Ok(active.then_some(record.user_id))
}
