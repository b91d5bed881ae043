//! History visibility for other servers: whether a server may see an event of a room in
//! full, or only its redacted form (which keeps the DAG walkable), as the spec's history
//! visibility rules apply to a server's users and as Synapse's `filter_events_for_server`
//! reads them.
//!
//! - `world_readable` or `shared` at the event: visible;
//! - `invited`: visible if one of the server's users was invited or joined at the event;
//! - `joined`: visible if one of the server's users was joined at the event.
//!
//! The visibility is the one in force before the event; for a change of visibility itself
//! the more permissive of before and after counts, so that a server sees the change that
//! hides what follows. Memberships are those after the event, so a server sees its own
//! user's join.

use std::collections::HashMap;

use ruma::{
    OwnedServerName, ServerName, UserId,
    events::room::{history_visibility::HistoryVisibility, member::MembershipState},
};

use crate::{
    Result,
    rooms::{self, Pdu, timeline},
    storage::{Storage, rooms::EventMeta},
};

/// How a server sees an event.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Seen {
    Visible,
    Redacted,
}

/// A history visibility setting, most permissive first.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Visibility {
    WorldReadable,
    Shared,
    Invited,
    Joined,
}

impl From<HistoryVisibility> for Visibility {
    fn from(value: HistoryVisibility) -> Self {
        match value {
            HistoryVisibility::WorldReadable => Self::WorldReadable,
            HistoryVisibility::Invited => Self::Invited,
            HistoryVisibility::Joined => Self::Joined,
            // The spec's default, and what an unknown value is treated as.
            _ => Self::Shared,
        }
    }
}

/// What one server may see; remembers the memberships of its users per state snapshot, so a
/// page of events costs one member scan per distinct snapshot.
pub struct ServerView<'a> {
    storage: &'a Storage,
    server: OwnedServerName,
    /// snapshot -> (a user of the server invited or joined, one joined).
    members: HashMap<u64, (bool, bool)>,
}

impl<'a> ServerView<'a> {
    pub fn new(storage: &'a Storage, server: &ServerName) -> Self {
        Self { storage, server: server.to_owned(), members: HashMap::new() }
    }

    /// How the server sees `pdu`, whose metadata is `meta`.
    pub fn check(&mut self, meta: &EventMeta, pdu: &Pdu) -> Result<Seen> {
        let at =
            |snapshot| rooms::history_visibility_at(self.storage, snapshot).map(Visibility::from);
        let mut visibility = at(meta.state_before)?;
        if pdu.kind.to_string() == "m.room.history_visibility"
            && pdu.state_key.as_deref() == Some("")
        {
            visibility = visibility.min(at(meta.state_after)?);
        }
        let visible = match visibility {
            Visibility::WorldReadable | Visibility::Shared => true,
            Visibility::Invited => self.members_at(meta.state_after)?.0,
            Visibility::Joined => self.members_at(meta.state_after)?.1,
        };
        Ok(if visible { Seen::Visible } else { Seen::Redacted })
    }

    /// Whether, at `snapshot`, a user of the server is invited or joined, and joined.
    fn members_at(&mut self, snapshot: u64) -> Result<(bool, bool)> {
        if let Some(known) = self.members.get(&snapshot) {
            return Ok(*known);
        }
        let (mut invited, mut joined) = (false, false);
        for member in timeline::members_at(self.storage, snapshot)? {
            let Some(user) = member.state_key.as_deref().and_then(|key| UserId::parse(key).ok())
            else {
                continue;
            };
            if user.server_name() != self.server {
                continue;
            }
            match rooms::content::membership(&member) {
                Some(MembershipState::Join) => (invited, joined) = (true, true),
                Some(MembershipState::Invite) => invited = true,
                _ => {}
            }
            if joined {
                break;
            }
        }
        self.members.insert(snapshot, (invited, joined));
        Ok((invited, joined))
    }
}

#[cfg(test)]
mod tests {
    use ruma::events::room::history_visibility::HistoryVisibility;

    use super::Visibility;

    #[test]
    fn unknown_settings_read_as_shared_and_order_by_permissiveness() {
        assert_eq!(Visibility::from(HistoryVisibility::Shared), Visibility::Shared);
        assert_eq!(Visibility::from(HistoryVisibility::from("secret")), Visibility::Shared);
        assert_eq!(Visibility::from(HistoryVisibility::Joined), Visibility::Joined);
        assert!(Visibility::WorldReadable < Visibility::Shared);
        assert!(Visibility::Invited < Visibility::Joined);
        assert_eq!(Visibility::Joined.min(Visibility::Shared), Visibility::Shared);
    }
}
