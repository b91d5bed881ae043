//! Push rules at commit: what the room's members are notified of, with the room context
//! (members, display names, power levels) the rules read.

use std::sync::Arc;

use ruma::events::room::member::MembershipState;
use ruma::{OwnedUserId, UserId, events::TimelineEventType};

use super::{Loaded, RoomActor};
use crate::{
    Result, limits,
    push::{
        counts as push_counts,
        evaluate::{Evaluated, Outcome, RoomContext, evaluate},
    },
    rooms::{Pdu, timeline},
};

impl RoomActor {
    /// Evaluates push rules for events about to commit (`(event, short id, thread root)` in
    /// order, changing the memberships `membership_changes`), for their commit to record.
    pub(super) async fn evaluate_push(
        &self,
        room: &Loaded,
        events: &[(Arc<Pdu>, u64, Option<String>)],
        membership_changes: &[(OwnedUserId, MembershipState)],
    ) -> Result<Outcome> {
        // The members as they will be once the events commit.
        let mut joined: Vec<OwnedUserId> = self.joined_members(room)?.as_ref().clone();
        for (user, membership) in membership_changes {
            joined.retain(|member| member != user);
            if *membership == MembershipState::Join {
                joined.push(user.clone());
            }
        }
        let member_count = joined.len() as u64;
        let mut local: Vec<OwnedUserId> =
            joined.into_iter().filter(|user| user.server_name() == self.server_name).collect();
        // An invited local user hears of the invite through their push rules too.
        for (pdu, ..) in events {
            if pdu.kind == TimelineEventType::RoomMember
                && crate::rooms::content::membership(pdu) == Some(MembershipState::Invite)
                && let Some(target) =
                    pdu.state_key.as_deref().and_then(|key| UserId::parse(key).ok())
                && target.server_name() == self.server_name
                && !local.contains(&target)
            {
                local.push(target);
            }
        }
        // Sending an event reads everything before it (in its thread, or the main timeline):
        // every unread row there is, since the event is newer than all of them.
        let mut outcome = Outcome::default();
        for (pdu, _, thread) in events {
            if pdu.sender.server_name() != self.server_name {
                continue;
            }
            let scope = thread.as_deref().unwrap_or("main");
            let changed = push_counts::read_up_to(
                self.storage.engine(),
                &pdu.sender,
                room.short,
                u64::MAX,
                Some(scope),
                &mut outcome.batch,
            )?;
            for (thread, counts) in changed {
                outcome.counts.insert((pdu.sender.clone(), thread), counts);
            }
        }
        let senders: Vec<&UserId> = events.iter().map(|(pdu, ..)| pdu.sender.as_ref()).collect();
        let has_recipients = local.iter().any(|user| !senders.contains(&user.as_ref()));
        if !has_recipients {
            return Ok(outcome);
        }
        // Display names only match a `content.body`; events without one (joins, state) skip
        // reading every member's event.
        let any_body = events.iter().any(|(pdu, ..)| pdu.content_str("body").is_some());
        let mut recipients = Vec::with_capacity(local.len());
        for user in local {
            let name = if any_body {
                self.display_name(room, &user)?
            } else {
                user.localpart().to_owned()
            };
            recipients.push((user, name));
        }
        let context = RoomContext {
            room_id: room.room_id.clone(),
            room_short: room.short,
            member_count,
            power_levels: Some(self.powers(room)?.into()),
            recipients,
            now_ms: self.time.now_ms(),
        };
        let evaluated: Vec<Evaluated<'_>> = events
            .iter()
            .enumerate()
            .map(|(index, (pdu, short, thread))| Evaluated {
                pdu,
                short: *short,
                index,
                thread: thread.clone(),
            })
            .collect();
        evaluate(&self.storage, &self.push.rules, &context, &evaluated, &mut outcome).await?;
        Ok(outcome)
    }

    /// The room's joined members as of the last commit.
    pub(super) fn joined_members(&self, room: &Loaded) -> Result<Arc<Vec<OwnedUserId>>> {
        let cached = || room.joined.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some(joined) = cached().as_ref() {
            return Ok(Arc::clone(joined));
        }
        let joined: Arc<Vec<OwnedUserId>> = Arc::new(
            timeline::joined_members(&self.storage, room.short)?
                .into_iter()
                .filter_map(|user| UserId::parse(user).ok())
                .collect(),
        );
        *cached() = Some(Arc::clone(&joined));
        Ok(joined)
    }

    /// `user`'s display name in the room (their localpart without one), as push rules see it.
    pub(super) fn display_name(&self, room: &Loaded, user: &UserId) -> Result<String> {
        let names = || room.display_names.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some(name) = names().get(user) {
            return Ok(name.clone());
        }
        // ruma turns a display name with wildcards into a regular expression, and panics
        // when it grows too large: a name longer than clients may set stands for nobody's.
        let name = self
            .current(room, "m.room.member", user.as_str())?
            .and_then(|member| member.content_str("displayname"))
            .filter(|name| name.chars().count() <= limits::MAX_DISPLAYNAME_CHARS)
            .unwrap_or_else(|| user.localpart().to_owned());
        names().insert(user.to_owned(), name.clone());
        Ok(name)
    }
}
