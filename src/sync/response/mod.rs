//! Computing one /sync response for a user's device from a token.
//!
//! Everything is read up to the committed position taken at the start (`upto`), which
//! becomes `next_batch`: events committed while the response is built wait for the next
//! sync, so nothing is sent twice and nothing is skipped.
//!
//! A response reads through a [`SyncReader`] (what the server holds, handed in by the
//! front door) and one [`SyncView`] (who it is for and the range it covers); a /sync
//! response adds its parameters ([`SyncContext`]). [`compute`] walks the user's memberships
//! and fills the response section by section, one module each. The sections take the view
//! and explicit bounds and limits, so sliding sync (`sync::sliding`) reads through the same
//! functions.

pub(crate) mod account_data;
pub(crate) mod e2ee;
pub(crate) mod ephemeral;
pub(crate) mod invites;
pub(crate) mod joined;
mod left;
mod presence;
pub(crate) mod render;
pub(crate) mod summary;
pub(crate) mod timeline;
pub(crate) mod to_device;

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

/// One response's view of the streams, whatever API asks (`/sync`, sliding sync): who it is
/// for, and the range `(since, upto]` it covers. The section readers take it, and the
/// request's own parameters (filters, limits, tokens) come to them as arguments.
pub struct SyncView<'a> {
    pub reader: &'a SyncReader<'a>,
    /// The syncing device: its own events carry their `transaction_id`.
    pub sender: &'a Sender,
    pub user: &'a UserId,
    pub device: &'a DeviceId,
    /// The lower bound (0 for an initial response).
    pub since: u64,
    pub upto: u64,
    /// The typing counter when the response started.
    pub typing_now: u64,
    /// Users the syncing user ignores.
    pub ignored: Arc<HashSet<String>>,
}

impl<'a> SyncView<'a> {
    /// The view of `sender`'s response covering `(since, upto]`.
    pub fn new(
        reader: &'a SyncReader<'a>,
        sender: &'a Sender,
        since: u64,
        upto: u64,
    ) -> Result<Self> {
        let user = &sender.user_id;
        Ok(Self {
            reader,
            sender,
            user,
            device: &sender.device_id,
            since,
            upto,
            typing_now: reader.typing.counter(),
            ignored: rooms::timeline::ignored_users(reader.storage, user)?,
        })
    }

    pub fn storage(&self) -> &'a Storage {
        self.reader.storage
    }
}

/// One /sync response being computed: the view, and what the client asked for.
struct SyncContext<'a> {
    view: SyncView<'a>,
    params: &'a SyncParams<'a>,
    initial: bool,
}

impl<'a> std::ops::Deref for SyncContext<'a> {
    type Target = SyncView<'a>;

    fn deref(&self) -> &SyncView<'a> {
        &self.view
    }
}

/// Computes the response for `params`.
pub fn compute(reader: &SyncReader<'_>, params: &SyncParams<'_>) -> Result<Computed> {
    let user = &params.sender.user_id;
    let since = params.since.map_or(0, |token| token.position);
    // Not past the user's own unanswered sends (see `SyncHub::hold`).
    let upto = reader.hub.visible_to(user, reader.storage.writer().committed_position()).max(since);
    let ctx = SyncContext {
        view: SyncView::new(reader, params.sender, since, upto)?,
        params,
        initial: params.since.is_none(),
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

    let delivered_through = params.since.map_or(0, |token| token.to_device_position());
    let page = to_device::page(&ctx, delivered_through, to_device::LIMIT)?;
    if page.more {
        // The rest waits for the next sync: the token says how far delivery got, so it is
        // neither skipped nor acknowledged unseen.
        next.to_device = page.last_delivered;
    }
    has_news |= !page.events.is_empty();
    response.to_device.events = page.events;

    presence::presence(&ctx, &joined_rooms, &mut response)?;
    has_news |= !response.presence.events.is_empty();

    has_news |= e2ee::keys(&ctx, &memberships, &membership_changes, &mut response)?;

    response.next_batch = next.to_string();
    Ok(Computed { response, has_news })
}
