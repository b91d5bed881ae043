//! Other servers' users joining a room here (the resident side of a remote join):
//! `make_join` answers a join event template built on the room's current state, and
//! `send_join` takes the signed join, has the room's actor check and accept it (which also
//! relays it to the room's other servers), and answers the state before the join with its
//! auth chain.
//!
//! Both check the room first, as the history endpoints do (unknown `404`, disabled for
//! federation or denying the asking server by its server ACL `403`), and that the joining
//! user is of the asking server.

use std::{collections::BTreeSet, sync::Arc};

use ruma::{
    CanonicalJsonObject, CanonicalJsonValue, EventId, MilliSecondsSinceUnixEpoch, OwnedEventId,
    RoomId, RoomVersionId, ServerName, UserId,
    api::error::{ErrorKind, IncompatibleRoomVersionErrorData},
    events::{StateEventType, TimelineEventType, room::member::MembershipState},
};
use serde_json::value::RawValue as RawJsonValue;

use super::serve::{auth_chain, federation_raw, room_for, server_joined};
use crate::{
    Error, Result,
    federation::events::{EventKeys, Refusal, verify_batch},
    rooms::{
        self, Pdu, Rooms,
        actor::{Arrival, Ingested},
        builder::{self, Template},
        state,
        state_res::{ResEvent, res_event},
    },
    storage::Storage,
};

/// Most prev events a template names (the spec's limit per event).
const MAX_PREV_EVENTS: usize = 20;
/// Most members' events the answer to an `omit_members` join keeps, for the room summary's
/// heroes when the room has neither a name nor a canonical alias (the spec's advice; the
/// summary shows at most five).
const HEROES: usize = 5;

/// A join event template and the room version it is for.
pub struct JoinTemplate {
    pub version: RoomVersionId,
    pub event: Box<RawJsonValue>,
}

/// What `send_join` answers: the state before the join, the auth chain, and the servers in
/// the room.
pub struct JoinAnswer {
    pub state: Vec<Box<RawJsonValue>>,
    pub auth_chain: Vec<Box<RawJsonValue>>,
    pub members_omitted: bool,
    pub servers_in_room: Vec<String>,
}

/// `make_join`: a template for `user_id`'s join, on the room's forward extremities and
/// current state, refused when the rules would refuse it now.
#[allow(clippy::too_many_arguments)]
pub fn make_join(
    storage: &Storage,
    server_name: &ServerName,
    origin: &ServerName,
    room_id: &RoomId,
    user_id: &UserId,
    supported: &[RoomVersionId],
    now: MilliSecondsSinceUnixEpoch,
) -> Result<JoinTemplate> {
    if user_id.server_name() != origin {
        return Err(Error::forbidden("The joining user is not of the asking server."));
    }
    let record = room_for(storage, room_id, origin)?;
    if !supported.contains(&record.version) {
        return Err(Error::matrix(
            axum::http::StatusCode::BAD_REQUEST,
            ErrorKind::IncompatibleRoomVersion(IncompatibleRoomVersionErrorData::new(
                record.version.clone(),
            )),
            "Your server does not support this room's version.",
        ));
    }
    if !server_joined(storage, record.short, server_name)? {
        return Err(Error::not_found("This server has no member in the room."));
    }
    let rules = record
        .version
        .rules()
        .ok_or_else(|| Error::internal(format!("unsupported room version {}", record.version)))?;
    let heads = rooms::heads(storage.engine(), record.short)?
        .ok_or_else(|| Error::not_found("Unknown room."))?;
    let at = |kind: &str, state_key: &str| -> Result<Option<Pdu>> {
        let Some(key) = state::short_key(storage, kind, state_key)? else { return Ok(None) };
        let Some(short) = state::lookup(storage, heads.snapshot, key)? else { return Ok(None) };
        rooms::pdu(storage.engine(), short)
    };
    if at("m.room.create", "")?.is_some_and(|create| {
        create.content_value().get("m.federate") == Some(&serde_json::Value::Bool(false))
    }) {
        return Err(Error::forbidden("This room is not open to other servers."));
    }

    let content = serde_json::json!({"membership": "join"});
    let join = Template::state(
        TimelineEventType::RoomMember,
        user_id.as_str(),
        &user_id.to_owned(),
        serde_json::from_value(content.clone())?,
    );
    let auth_events = builder::auth_events_for(&join, &rules.authorization, |kind, state_key| {
        Ok(at(&kind.to_string(), state_key)?.map(|event| event.event_id))
    })?;
    let prev_events: Vec<OwnedEventId> =
        heads.extremities.iter().rev().take(MAX_PREV_EVENTS).cloned().collect();
    let reference_hash = |id: &EventId| builder::stored_reference_hash(storage, &rules, id);
    let mut template: CanonicalJsonObject = serde_json::from_value(serde_json::json!({
        "type": "m.room.member",
        "room_id": room_id,
        "sender": user_id,
        "state_key": user_id,
        "content": content,
        "origin": origin,
        "origin_server_ts": now,
    }))?;
    template.insert("depth".to_owned(), builder::clamped_depth(heads.depth.saturating_add(1)));
    template.insert(
        "prev_events".to_owned(),
        builder::references(&prev_events, &rules, Some(&reference_hash))?,
    );
    template.insert(
        "auth_events".to_owned(),
        builder::references(&auth_events, &rules, Some(&reference_hash))?,
    );

    // The join as the rules see it now: a user who may not join is told at once.
    let mut checked = template.clone();
    checked.insert(
        "event_id".to_owned(),
        CanonicalJsonValue::String(format!("$template:{server_name}")),
    );
    let pdu = ResEvent { pdu: Arc::new(Pdu::from_json(checked)?), rejected: false };
    let failure = std::cell::RefCell::new(None);
    let record_failure = |fetched: Result<Option<ResEvent>>| match fetched {
        Ok(pdu) => pdu,
        Err(error) => {
            failure.borrow_mut().get_or_insert(error);
            None
        }
    };
    let verdict = ruma::state_res::check_state_independent_auth_rules(
        &rules.authorization,
        &pdu,
        |event_id: &EventId| {
            record_failure(rooms::event_short(storage, event_id).and_then(|short| match short {
                Some(short) => res_event(storage, short),
                None => Ok(None),
            }))
        },
    )
    .and_then(|()| {
        ruma::state_res::check_state_dependent_auth_rules(
            &rules.authorization,
            &pdu,
            |kind: &StateEventType, state_key: &str| {
                record_failure(
                    at(&kind.to_string(), state_key)
                        .map(|found| found.map(|pdu| ResEvent::in_state(Arc::new(pdu)))),
                )
            },
        )
    });
    if let Some(error) = failure.into_inner() {
        return Err(error);
    }
    verdict.map_err(|reason| Error::forbidden(format!("You may not join this room: {reason}.")))?;
    Ok(JoinTemplate { version: record.version, event: serde_json::value::to_raw_value(&template)? })
}

/// `send_join` (v2): checks the signed join `pdu` (`event_id`), has the room's actor accept
/// it, and answers the state before it. With `omit_members` the members' events are left
/// out of the state (but for the heroes of a room without a name or alias) and the state's
/// events out of the auth chain.
#[allow(clippy::too_many_arguments)]
pub async fn send_join(
    storage: &Arc<Storage>,
    rooms: &Rooms,
    keys: &impl EventKeys,
    origin: &ServerName,
    room_id: &RoomId,
    event_id: &EventId,
    pdu: Box<RawJsonValue>,
    omit_members: bool,
) -> Result<JoinAnswer> {
    let record = room_for(storage, room_id, origin)?;
    let verified = verify_batch(keys, &record.version, vec![pdu])
        .await
        .pop()
        .ok_or_else(|| Error::internal("verification answered nothing"))?;
    let pdu = match verified {
        Ok(verified) => verified.pdu,
        Err(Refusal::Format(reason)) => {
            return Err(Error::bad_json(format!("Invalid event: {reason}")));
        }
        Err(Refusal::Internal(reason)) => return Err(Error::internal(reason)),
        Err(refusal) => return Err(Error::forbidden(refusal.to_string())),
    };
    if pdu.event_id != event_id {
        return Err(Error::bad_json("The event's id is not the one in the path."));
    }
    if pdu.room_id != room_id {
        return Err(Error::bad_json("The event is not in this room."));
    }
    if pdu.kind != TimelineEventType::RoomMember
        || pdu.content_str("membership").as_deref() != Some("join")
    {
        return Err(Error::bad_json("send_join takes only join events."));
    }
    if pdu.state_key.as_deref() != Some(pdu.sender.as_str()) {
        return Err(Error::bad_json("The join's state_key is not its sender."));
    }
    if pdu.sender.server_name() != origin {
        return Err(Error::forbidden("The joining user is not of the asking server."));
    }
    let join_id = pdu.event_id.clone();
    match rooms.ingest(pdu, origin.to_owned(), Arrival::SendJoin).await? {
        Ingested::Accepted | Ingested::Known => {}
        Ingested::SoftFailed => {
            return Err(Error::forbidden("The join is not allowed by the room's current state."));
        }
        Ingested::Rejected(reason) | Ingested::Dropped(reason) => {
            return Err(Error::forbidden(format!("The join was refused: {reason}")));
        }
    }
    let storage = Arc::clone(storage);
    tokio::task::spawn_blocking(move || answer(&storage, &record.version, &join_id, omit_members))
        .await
        .map_err(|error| Error::internal(format!("answering send_join failed: {error}")))?
}

/// The state before the accepted join `join_id`, its auth chain and the servers in it.
fn answer(
    storage: &Storage,
    version: &RoomVersionId,
    join_id: &EventId,
    omit_members: bool,
) -> Result<JoinAnswer> {
    let short = rooms::event_short(storage, join_id)?
        .ok_or_else(|| Error::internal("the accepted join is not stored"))?;
    let meta = rooms::any_event_meta(storage.engine(), short)?
        .ok_or_else(|| Error::internal("the accepted join has no meta"))?;
    let mut state = Vec::new();
    let mut shorts = vec![short];
    for short in state::load(storage, meta.state_before)?.into_values() {
        shorts.push(short);
        state.push(
            rooms::pdu(storage.engine(), short)?
                .ok_or_else(|| Error::internal(format!("state event {short} is missing")))?,
        );
    }
    let is_member = |pdu: &Pdu| pdu.kind == TimelineEventType::RoomMember;
    let membership = |pdu: &Pdu| {
        MembershipState::from(pdu.content_str("membership").unwrap_or_default().as_str())
    };
    let servers_in_room: BTreeSet<String> = state
        .iter()
        .filter(|pdu| is_member(pdu) && membership(pdu) == MembershipState::Join)
        .filter_map(|pdu| pdu.state_key.as_deref().and_then(|key| UserId::parse(key).ok()))
        .map(|user| user.server_name().to_string())
        .collect();
    let chain = auth_chain(storage, shorts)?;
    let (state, chain) = if omit_members {
        let named = state.iter().any(|pdu| {
            pdu.state_key.as_deref() == Some("")
                && matches!(pdu.kind.to_string().as_str(), "m.room.name" | "m.room.canonical_alias")
        });
        let mut heroes = 0;
        let kept: Vec<Pdu> = state
            .into_iter()
            .filter(|pdu| {
                if !is_member(pdu) {
                    return true;
                }
                let hero = !named
                    && heroes < HEROES
                    && matches!(membership(pdu), MembershipState::Join | MembershipState::Invite);
                heroes += usize::from(hero);
                hero
            })
            .collect();
        let returned: BTreeSet<&EventId> = kept.iter().map(|pdu| &*pdu.event_id).collect();
        let chain: Vec<Arc<Pdu>> =
            chain.into_iter().filter(|pdu| !returned.contains(&*pdu.event_id)).collect();
        (kept, chain)
    } else {
        (state, chain)
    };
    Ok(JoinAnswer {
        state: state.iter().map(|pdu| federation_raw(pdu, version)).collect::<Result<_>>()?,
        auth_chain: chain.iter().map(|pdu| federation_raw(pdu, version)).collect::<Result<_>>()?,
        members_omitted: omit_members,
        servers_in_room: servers_in_room.into_iter().collect(),
    })
}
