//! Joining a room that lives on other servers (the joiner's side of a remote join): ask a
//! resident server for a join template (`make_join`, offering every room version this
//! server can join), complete and sign it, send it (`send_join` v2, the whole state), check
//! the answer, and hand the room to its actor, which stores the state and its auth chain
//! and makes the join the room's head ([`RoomMessage::CompleteJoin`]).
//!
//! The answer is checked before anything of it is stored: its size (`send_join` answers
//! are read up to `federation_join_max_response_mb`, at most [`MAX_JOIN_EVENTS`] events),
//! every event's format, signatures and hashes (`federation::events`; an event that fails
//! is dropped, not the join, as Synapse does), the create event (present, of the version
//! the template named, of this room) and the join the resident returns (ours, plus
//! signatures). The auth rules over the state and its auth chain are the actor's part.
//!
//! A candidate that fails (unreachable, refusing, answering something unusable) gives way
//! to the next; the client gets the most telling failure.
//!
//! [`RoomMessage::CompleteJoin`]: crate::rooms::actor::RoomMessage::CompleteJoin

use std::{collections::HashMap, time::Duration};

use axum::http::StatusCode;
use ruma::{
    CanonicalJsonObject, OwnedEventId, OwnedServerName, RoomId, RoomVersionId, UserId,
    api::{
        error::{ErrorKind, IncompatibleRoomVersionErrorData},
        federation::membership::{create_join_event, prepare_join_event},
    },
    events::{TimelineEventType, room::member::MembershipState},
    room_version_rules::RoomVersionRules,
};
use serde_json::value::RawValue as RawJsonValue;

use crate::{
    Config, Error, Result,
    federation::{Federation, client::OutboundError, events::verify_batch},
    rooms::{
        Pdu, Rooms,
        actor::{JoinedState, Sent},
        builder::{self, Expected},
    },
};

/// The room versions this server joins: every version ruma has rules for.
pub const JOINABLE_ROOM_VERSIONS: [RoomVersionId; 12] = [
    RoomVersionId::V1,
    RoomVersionId::V2,
    RoomVersionId::V3,
    RoomVersionId::V4,
    RoomVersionId::V5,
    RoomVersionId::V6,
    RoomVersionId::V7,
    RoomVersionId::V8,
    RoomVersionId::V9,
    RoomVersionId::V10,
    RoomVersionId::V11,
    RoomVersionId::V12,
];

/// Most events (state and auth chain together) one `send_join` answer may hold: each is
/// verified and stored, so the byte cap alone (events of a few hundred bytes) is not bound
/// enough.
pub const MAX_JOIN_EVENTS: usize = 500_000;

/// How remote joins are bounded, from the configuration.
#[derive(Debug, Clone)]
pub struct JoinSettings {
    /// Largest `send_join` answer read (`federation_join_max_response_mb`).
    pub max_response: usize,
    /// Most candidate servers tried (`max_make_join_attempts_per_join_attempt`).
    pub max_attempts: usize,
    /// How long one request may take (`federation_timeout`).
    pub timeout: Duration,
}

impl JoinSettings {
    pub fn from_config(config: &Config) -> Self {
        let mib = usize::try_from(config.federation_join_max_response_mb).unwrap_or(usize::MAX);
        Self {
            max_response: mib.saturating_mul(1024 * 1024),
            max_attempts: config.max_make_join_attempts_per_join_attempt.max(1),
            timeout: Duration::from_secs(config.federation_timeout.max(1)),
        }
    }
}

/// Why one candidate did not get us into the room.
#[derive(Debug)]
enum Failure {
    /// The request failed (unreachable, refused by policy, or the server's own error).
    Request(OutboundError),
    /// The server answered something this server cannot use.
    Answer(String),
    /// The room's version is not one this server joins.
    Incompatible(RoomVersionId),
}

impl std::fmt::Display for Failure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Request(error) => error.fmt(f),
            Self::Answer(why) => write!(f, "unusable answer: {why}"),
            Self::Incompatible(version) => write!(f, "room version {version} is not supported"),
        }
    }
}

/// Joins `user` to `room_id`, which this server does not hold (or holds without a local
/// member), through the first of `servers` that lets them in. `content` is added to the
/// template's (display name, avatar, reason).
pub async fn join_remote(
    rooms: &Rooms,
    federation: &Federation,
    settings: &JoinSettings,
    room_id: &RoomId,
    user: &UserId,
    servers: &[OwnedServerName],
    content: CanonicalJsonObject,
) -> Result<Sent> {
    let candidates = candidates(room_id, servers, &rooms.server_name, settings.max_attempts);
    if candidates.is_empty() {
        return Err(Error::not_found(
            "This server does not know that room and no server to join it through was given.",
        ));
    }
    let mut failures = Vec::with_capacity(candidates.len());
    for server in candidates {
        match attempt(rooms, federation, settings, &server, room_id, user, &content).await {
            Ok(sent) => return Ok(sent),
            Err(AttemptError::Local(error)) => return Err(error),
            Err(AttemptError::Failed(failure)) => {
                tracing::info!(room = %room_id, %server, %failure, "joining through a server failed");
                failures.push((server, failure));
            }
        }
    }
    Err(client_error(failures))
}

/// The servers to ask, in order: those given (the alias answer's, the client's `via`), then
/// the room id's own server where the id names one; never this server, each once.
fn candidates(
    room_id: &RoomId,
    servers: &[OwnedServerName],
    ourselves: &ruma::ServerName,
    max: usize,
) -> Vec<OwnedServerName> {
    let mut candidates: Vec<OwnedServerName> = Vec::new();
    for server in servers.iter().cloned().chain(room_id.server_name().map(ToOwned::to_owned)) {
        if server != ourselves && !candidates.contains(&server) {
            candidates.push(server);
        }
    }
    candidates.truncate(max);
    candidates
}

/// A candidate's failure, or an error of this server that no other candidate would avoid.
enum AttemptError {
    Failed(Failure),
    Local(Error),
}

impl From<Failure> for AttemptError {
    fn from(failure: Failure) -> Self {
        Self::Failed(failure)
    }
}

/// One candidate: `make_join`, the signed join, `send_join`, the checked answer, the room.
async fn attempt(
    rooms: &Rooms,
    federation: &Federation,
    settings: &JoinSettings,
    server: &OwnedServerName,
    room_id: &RoomId,
    user: &UserId,
    content: &CanonicalJsonObject,
) -> std::result::Result<Sent, AttemptError> {
    let client = &federation.client;
    let mut request = prepare_join_event::v1::Request::new(room_id.to_owned(), user.to_owned());
    request.ver = JOINABLE_ROOM_VERSIONS.to_vec();
    let made = client.send(server, request).await.map_err(Failure::Request)?;
    // The spec's default for servers that leave it out.
    let version = made.room_version.unwrap_or(RoomVersionId::V1);
    let rules = joinable_rules(&version).ok_or_else(|| Failure::Incompatible(version.clone()))?;
    let template: CanonicalJsonObject = serde_json::from_str(made.event.get())
        .map_err(|error| Failure::Answer(format!("the template is not an object: {error}")))?;
    let expected = Expected { room_id, user, membership: MembershipState::Join };
    let join = builder::from_template(
        template,
        expected,
        content.clone(),
        &rules,
        &rooms.key,
        &rooms.server_name,
        rooms.time.timestamp(),
    )
    .map_err(|error| Failure::Answer(error.to_string()))?;
    let sent_json = join.federation_json(&version).map_err(AttemptError::Local)?;
    let raw = serde_json::value::to_raw_value(&sent_json)
        .map_err(|error| AttemptError::Local(error.into()))?;
    let mut request =
        create_join_event::v2::Request::new(room_id.to_owned(), join.event_id.clone(), raw);
    // The whole state: this server does not keep rooms with a partial state.
    request.omit_members = false;
    let answer = client
        .send_limited(server, request, settings.timeout, settings.max_response)
        .await
        .map_err(Failure::Request)?;
    let joined = check_answer(federation, room_id, &version, &rules, join, &sent_json, answer)
        .await
        .map_err(AttemptError::Failed)?;
    match rooms.complete_join(joined).await {
        Ok(sent) => Ok(sent),
        // The rules refuse the join on the state the resident gave: another resident may
        // give a state that allows it.
        Err(error) if error.status() == StatusCode::FORBIDDEN => {
            Err(Failure::Answer(error.to_string()).into())
        }
        Err(error) => Err(AttemptError::Local(error)),
    }
}

/// The rules of `version` if this server joins rooms of it.
fn joinable_rules(version: &RoomVersionId) -> Option<RoomVersionRules> {
    if JOINABLE_ROOM_VERSIONS.contains(version) { version.rules() } else { None }
}

/// Checks a `send_join` answer and turns it into what the room's actor stores.
async fn check_answer(
    federation: &Federation,
    room_id: &RoomId,
    version: &RoomVersionId,
    rules: &RoomVersionRules,
    join: Pdu,
    sent_json: &CanonicalJsonObject,
    answer: create_join_event::v2::Response,
) -> std::result::Result<JoinedState, Failure> {
    let answer = answer.room_state;
    let total = answer.state.len().saturating_add(answer.auth_chain.len());
    if total > MAX_JOIN_EVENTS {
        return Err(Failure::Answer(format!(
            "{total} events, more than the {MAX_JOIN_EVENTS} this server takes"
        )));
    }
    let state_count = answer.state.len();
    let mut all = answer.state;
    all.extend(answer.auth_chain);
    let verified = verify_batch(&federation.keys, version, all).await;
    let mut events: HashMap<OwnedEventId, Pdu> = HashMap::with_capacity(verified.len());
    let mut state = Vec::with_capacity(state_count);
    let mut dropped = 0usize;
    for (index, result) in verified.into_iter().enumerate() {
        let pdu = match result {
            Ok(verified) if verified.pdu.room_id == room_id => verified.pdu,
            Ok(verified) => {
                tracing::debug!(event = %verified.pdu.event_id, room = %room_id, "dropped a join answer's event of another room");
                dropped += 1;
                continue;
            }
            Err(refusal) => {
                tracing::debug!(room = %room_id, %refusal, "dropped a join answer's event");
                dropped += 1;
                continue;
            }
        };
        if index < state_count {
            state.push(pdu.event_id.clone());
        }
        events.insert(pdu.event_id.clone(), pdu);
    }
    if dropped > 0 {
        tracing::info!(room = %room_id, dropped, "a join answer held events that failed their checks");
    }
    check_create(&events, &state, room_id, version, rules)?;
    let join = match answer.event {
        Some(returned) => returned_join(federation, version, join, sent_json, returned).await?,
        None => join,
    };
    Ok(JoinedState {
        version: version.clone(),
        events: events.into_values().collect(),
        state,
        join,
    })
}

/// The state's create event must be there, of the version the template was for, and of
/// this room (in version 12, whose room id is the create event's hash, that is its id).
fn check_create(
    events: &HashMap<OwnedEventId, Pdu>,
    state: &[OwnedEventId],
    room_id: &RoomId,
    version: &RoomVersionId,
    rules: &RoomVersionRules,
) -> std::result::Result<(), Failure> {
    let create = state
        .iter()
        .filter_map(|id| events.get(id))
        .find(|pdu| {
            pdu.kind == TimelineEventType::RoomCreate && pdu.state_key.as_deref() == Some("")
        })
        .ok_or_else(|| Failure::Answer("the state has no valid create event".to_owned()))?;
    // A create event without `room_version` is of version 1 (the spec's default).
    let created = create.content_str("room_version").unwrap_or_else(|| "1".to_owned());
    if created != version.as_str() {
        return Err(Failure::Answer(format!(
            "the create event is of room version {created}, the template of {version}"
        )));
    }
    if rules.authorization.room_create_event_id_as_room_id {
        let derived = create.event_id.as_str().trim_start_matches('$');
        if room_id.as_str().trim_start_matches('!') != derived {
            return Err(Failure::Answer("the create event is not this room's".to_owned()));
        }
    }
    Ok(())
}

/// The join a resident returned (with its own signature, which a restricted join needs):
/// it must be the event this server sent, up to signatures, and verify.
async fn returned_join(
    federation: &Federation,
    version: &RoomVersionId,
    join: Pdu,
    sent_json: &CanonicalJsonObject,
    returned: Box<RawJsonValue>,
) -> std::result::Result<Pdu, Failure> {
    let unsigned = |mut object: CanonicalJsonObject| {
        object.remove("signatures");
        object.remove("unsigned");
        object
    };
    let parsed: CanonicalJsonObject = serde_json::from_str(returned.get())
        .map_err(|_| Failure::Answer("the returned join is not an object".to_owned()))?;
    if unsigned(parsed) != unsigned(sent_json.clone()) {
        return Err(Failure::Answer("the returned join is not the one sent".to_owned()));
    }
    let verified = verify_batch(&federation.keys, version, vec![returned])
        .await
        .pop()
        .ok_or_else(|| Failure::Answer("the returned join was not checked".to_owned()))?
        .map_err(|refusal| Failure::Answer(format!("the returned join: {refusal}")))?;
    if verified.redacted || verified.pdu.event_id != join.event_id {
        return Err(Failure::Answer("the returned join is not the one sent".to_owned()));
    }
    Ok(verified.pdu)
}

/// The error the client gets when no candidate worked: a resident's refusal first, then a
/// version this server cannot join, then "unknown room" when every server said so, else
/// the last failure as a bad gateway.
fn client_error(failures: Vec<(OwnedServerName, Failure)>) -> Error {
    let refused = failures.iter().find_map(|(server, failure)| match failure {
        Failure::Request(OutboundError::Remote { status: 403, message, .. }) => {
            Some(format!("{server} refused the join: {message}"))
        }
        _ => None,
    });
    if let Some(message) = refused {
        return Error::forbidden(message);
    }
    if let Some(version) = failures.iter().find_map(|(_, failure)| match failure {
        Failure::Incompatible(version) => Some(version.clone()),
        _ => None,
    }) {
        return Error::matrix(
            StatusCode::BAD_REQUEST,
            ErrorKind::IncompatibleRoomVersion(IncompatibleRoomVersionErrorData::new(version)),
            "This server cannot join rooms of this version.",
        );
    }
    let unknown = failures.iter().all(|(_, failure)| {
        matches!(failure, Failure::Request(OutboundError::Remote { status: 404, .. }))
    });
    if unknown {
        return Error::not_found("No server that was asked knows this room.");
    }
    let last = failures
        .last()
        .map_or_else(String::new, |(server, failure)| format!(" (last: {server}: {failure})"));
    Error::matrix(
        StatusCode::BAD_GATEWAY,
        ErrorKind::Unknown,
        format!("Could not join the room through any of {} servers{last}.", failures.len()),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn server(name: &str) -> OwnedServerName {
        name.try_into().expect("server name")
    }

    #[test]
    fn candidates_come_in_the_given_order_then_the_room_ids_server_without_this_one() {
        let room_id = RoomId::parse("!abc:origin.example").expect("room id");
        let ours = server("us.example");
        let given =
            [server("b.example"), server("us.example"), server("a.example"), server("b.example")];
        assert_eq!(
            candidates(&room_id, &given, &ours, 10),
            [server("b.example"), server("a.example"), server("origin.example")]
        );
        assert_eq!(candidates(&room_id, &given, &ours, 1), [server("b.example")]);
        let v12 = RoomId::parse("!Ykq3bEOF0zRmPgJt2gZn3XL0fnGk4vnwpjaaaaaaaaa").expect("room id");
        assert!(candidates(&v12, &[], &ours, 10).is_empty());
    }

    #[test]
    fn the_client_hears_a_refusal_before_anything_else() {
        let remote = |status| {
            Failure::Request(OutboundError::Remote {
                status,
                errcode: "M_X".to_owned(),
                message: "no".to_owned(),
            })
        };
        let error = client_error(vec![
            (server("a.example"), remote(500)),
            (server("b.example"), remote(403)),
        ]);
        assert_eq!(error.status(), StatusCode::FORBIDDEN);
        let error = client_error(vec![(server("a.example"), remote(404))]);
        assert_eq!(error.status(), StatusCode::NOT_FOUND);
        let error = client_error(vec![
            (server("a.example"), remote(404)),
            (server("b.example"), remote(500)),
        ]);
        assert_eq!(error.status(), StatusCode::BAD_GATEWAY);
        let error =
            client_error(vec![(server("a.example"), Failure::Incompatible(RoomVersionId::V1))]);
        assert_eq!(error.status(), StatusCode::BAD_REQUEST);
    }
}
