//! Computing one /sync response for a user's device from a token.
//!
//! Everything is read up to the committed position taken at the start (`upto`), which
//! becomes `next_batch`: events committed while the response is built wait for the next
//! sync, so nothing is sent twice and nothing is skipped.
//!
//! A response reads through a [`SyncReader`] (what the server holds, handed in by the
//! front door) and one [`SyncContext`] (what this response is about). [`compute`] walks the
//! user's memberships and fills the response section by section, one module each.

mod account_data;
mod e2ee;
mod ephemeral;
mod invites;
mod joined;
mod left;
mod presence;
mod render;
mod summary;
mod timeline;
mod to_device;

use std::{
    collections::{HashMap, HashSet},
    sync::Arc,
};

use ruma::api::client::sync::sync_events::v3::Response;
use ruma::events::room::member::MembershipState;
use ruma::{DeviceId, UserId, api::client::filter::FilterDefinition};

use super::{hub::SyncHub, token::SyncToken};
use crate::{
    Result,
    accounts::Sender,
    rooms::{self, typing::Typing},
    storage::Storage,
    time::Time,
};

/// What the client asked for.
pub struct SyncParams<'a> {
    pub sender: &'a Sender,
    pub since: Option<SyncToken>,
    pub full_state: bool,
    pub filter: &'a FilterDefinition,
}

/// What a response reads from; the front door builds it from the server's services.
pub struct SyncReader<'a> {
    pub storage: &'a Storage,
    /// Keeps a user's view behind their unanswered sends.
    pub hub: &'a SyncHub,
    pub typing: &'a Typing,
    pub time: &'a Time,
    /// `allow_local_presence`.
    pub presence_enabled: bool,
}

/// A computed response and whether it carries anything new.
pub struct Computed {
    pub response: Response,
    pub has_news: bool,
}

/// One response being computed: who for, and the range of the streams it covers.
struct SyncContext<'a> {
    reader: &'a SyncReader<'a>,
    params: &'a SyncParams<'a>,
    user: &'a UserId,
    device: &'a DeviceId,
    /// The token's position (0 for an initial sync): the response covers `(since, upto]`.
    since: u64,
    upto: u64,
    initial: bool,
    /// The typing counter when the response started.
    typing_now: u64,
    /// Users the syncing user ignores.
    ignored: Arc<HashSet<String>>,
}

impl SyncContext<'_> {
    fn storage(&self) -> &Storage {
        self.reader.storage
    }
}

/// Computes the response for `params`.
pub fn compute(reader: &SyncReader<'_>, params: &SyncParams<'_>) -> Result<Computed> {
    let user = &params.sender.user_id;
    let since = params.since.map_or(0, |token| token.position);
    // Not past the user's own unanswered sends (see `SyncHub::hold`).
    let upto = reader.hub.visible_to(user, reader.storage.writer().committed_position()).max(since);
    let ctx = SyncContext {
        reader,
        params,
        user,
        device: &params.sender.device_id,
        since,
        upto,
        initial: params.since.is_none(),
        typing_now: reader.typing.counter(),
        ignored: rooms::timeline::ignored_users(reader.storage, user)?,
    };
    let mut next = SyncToken { position: upto, typing: ctx.typing_now, to_device: None };
    let mut response = Response::new(String::new());
    let mut has_news = false;

    let account_changes = if ctx.initial { HashMap::new() } else { account_data::changed(&ctx)? };

    let memberships = rooms::cached_memberships(reader.storage, user)?;
    let mut joined_rooms = Vec::new();
    let mut membership_changes = HashMap::new();
    for (room_id, record) in memberships.iter() {
        let room_id = room_id.clone();
        // Changes committed after `upto` belong to the next sync.
        if record.position > upto || !render::room_allowed(params.filter, &room_id) {
            continue;
        }
        let changed = record.position > since;
        let new = ctx.initial || changed;
        match record.membership {
            MembershipState::Join => {
                joined_rooms.push(room_id.clone());
                let room_account = account_changes.get(room_id.as_str());
                if let Some(joined) =
                    joined::joined_room(&ctx, &room_id, new, room_account, &mut membership_changes)?
                {
                    response.rooms.join.insert(room_id, joined);
                    has_news = true;
                }
            }
            MembershipState::Invite if new && !invites::invited_by_ignored(&ctx, record)? => {
                response.rooms.invite.insert(room_id, invites::invited(&ctx, record)?);
                has_news = true;
            }
            MembershipState::Knock if new => {
                response.rooms.knock.insert(room_id, invites::knocked(&ctx, record)?);
                has_news = true;
            }
            MembershipState::Leave | MembershipState::Ban
                if !record.forgotten
                    && ((changed && !ctx.initial)
                        || (ctx.initial && params.filter.room.include_leave)) =>
            {
                response
                    .rooms
                    .leave
                    .insert(room_id.clone(), left::left_room(&ctx, &room_id, record)?);
                has_news = true;
            }
            _ => {}
        }
    }

    has_news |= account_data::global(&ctx, &account_changes, &mut response)?;

    to_device::page(&ctx, &mut response, &mut next)?;
    has_news |= !response.to_device.events.is_empty();

    presence::presence(&ctx, &joined_rooms, &mut response)?;
    has_news |= !response.presence.events.is_empty();

    has_news |= e2ee::keys(&ctx, &memberships, &membership_changes, &mut response)?;

    response.next_batch = next.to_string();
    Ok(Computed { response, has_news })
}
