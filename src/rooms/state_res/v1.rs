//! State resolution for room version 1 (the spec's `rooms/v1` algorithm), which ruma does
//! not implement; room version 2 has version 1's events and state resolution v2. It works on
//! our `u64` state maps and reads only the conflicted events and the few state events their
//! auth checks need.
//!
//! The spec leaves a few choices open; they follow Synapse, so that servers resolving the
//! same fork agree:
//! - A key is conflicted when the states hold different events for it. A key some states
//!   lack is not conflicted: the union keeps it (the spec's "union ... excluding any
//!   conflicting events").
//! - Power levels, then join rules, then memberships are resolved against the state
//!   resolved so far; each member key is checked against the state as it was after the join
//!   rules (one member's resolution does not feed another's).
//! - Each auth-relevant key is resolved on its own: its events sorted by ascending depth,
//!   then descending `sha1(event_id)`; the first is taken, and each next one replaces it
//!   while the auth rules allow it over the state with the one before.
//! - Any other key takes the event of highest depth, then lowest `sha1(event_id)`, that the
//!   auth rules allow; when none is allowed, the last of that order (the shallowest).
//!
//! The auth checks are ruma's state-dependent rules with the room version's rules: what
//! depends on the state the event is checked against, as the algorithm asks.

use std::{
    cell::RefCell,
    collections::{BTreeMap, BTreeSet, HashMap},
};

use ruma::{events::StateEventType, room_version_rules::AuthorizationRules};

use super::{ResEvent, res_event};
use crate::{
    Error, Result,
    rooms::state::{self, StateMap},
    storage::Storage,
};

/// Resolves `maps` (at least one) by the room version 1 algorithm.
pub(super) fn resolve(
    storage: &Storage,
    rules: &AuthorizationRules,
    maps: &[StateMap],
) -> Result<StateMap> {
    let (mut resolved, conflicted) = separate(maps);
    if conflicted.is_empty() {
        return Ok(resolved);
    }
    let mut resolver = Resolver::new(storage, rules);
    let mut by_kind: BTreeMap<Phase, Vec<(u64, Vec<Candidate>)>> = BTreeMap::new();
    for (key, events) in conflicted {
        let (kind, _) = resolver.key(key)?;
        let mut candidates = Vec::with_capacity(events.len());
        for event in events {
            candidates.push(resolver.candidate(event)?);
        }
        by_kind.entry(Phase::of(&kind)).or_default().push((key, candidates));
    }
    for (phase, keys) in by_kind {
        // Every key of a phase is checked against the state as the phase found it.
        let mut winners = Vec::with_capacity(keys.len());
        for (key, candidates) in keys {
            let winner = match phase {
                Phase::Other => resolver.normal_event(&resolved, candidates)?,
                _ => resolver.auth_event(&resolved, key, candidates)?,
            };
            winners.push((key, winner));
        }
        resolved.extend(winners);
    }
    Ok(resolved)
}

/// The unconflicted state (every key for which the states that hold it agree) and the
/// conflicted keys with their events.
fn separate(maps: &[StateMap]) -> (StateMap, BTreeMap<u64, BTreeSet<u64>>) {
    let mut unconflicted = StateMap::new();
    let mut conflicted: BTreeMap<u64, BTreeSet<u64>> = BTreeMap::new();
    for map in maps {
        for (&key, &event) in map {
            if let Some(events) = conflicted.get_mut(&key) {
                events.insert(event);
                continue;
            }
            match unconflicted.get(&key) {
                None => {
                    unconflicted.insert(key, event);
                }
                Some(&other) if other != event => {
                    unconflicted.remove(&key);
                    conflicted.insert(key, BTreeSet::from([other, event]));
                }
                Some(_) => {}
            }
        }
    }
    (unconflicted, conflicted)
}

/// The order in which conflicted keys are resolved.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Phase {
    PowerLevels,
    JoinRules,
    Members,
    Other,
}

impl Phase {
    fn of(kind: &StateEventType) -> Self {
        match kind {
            StateEventType::RoomPowerLevels => Self::PowerLevels,
            StateEventType::RoomJoinRules => Self::JoinRules,
            StateEventType::RoomMember => Self::Members,
            _ => Self::Other,
        }
    }
}

/// A conflicted event with what orders it.
#[derive(Debug, Clone)]
struct Candidate {
    short: u64,
    depth: u64,
    sha1: [u8; 20],
    event: ResEvent,
}

impl Candidate {
    /// Ascending depth, then descending `sha1(event_id)`: the spec's order for the events
    /// that affect the auth rules. Other events are taken in the reverse order.
    fn auth_order(&self, other: &Self) -> std::cmp::Ordering {
        self.depth.cmp(&other.depth).then_with(|| other.sha1.cmp(&self.sha1))
    }
}

fn sha1(text: &str) -> [u8; 20] {
    let digest = ring::digest::digest(&ring::digest::SHA1_FOR_LEGACY_USE_ONLY, text.as_bytes());
    let mut bytes = [0; 20];
    bytes.copy_from_slice(digest.as_ref());
    bytes
}

/// Reads what the auth checks need, each once.
struct Resolver<'a> {
    storage: &'a Storage,
    rules: &'a AuthorizationRules,
    keys: HashMap<u64, (StateEventType, String)>,
    short_keys: RefCell<HashMap<(StateEventType, String), Option<u64>>>,
    events: RefCell<HashMap<u64, Option<ResEvent>>>,
}

impl<'a> Resolver<'a> {
    fn new(storage: &'a Storage, rules: &'a AuthorizationRules) -> Self {
        Self {
            storage,
            rules,
            keys: HashMap::new(),
            short_keys: RefCell::new(HashMap::new()),
            events: RefCell::new(HashMap::new()),
        }
    }

    fn key(&mut self, short: u64) -> Result<(StateEventType, String)> {
        if let Some(key) = self.keys.get(&short) {
            return Ok(key.clone());
        }
        let (kind, state_key) = state::resolve_key(self.storage, short)?
            .ok_or_else(|| Error::internal(format!("state key {short} cannot be resolved")))?;
        let key = (StateEventType::from(kind), state_key);
        self.keys.insert(short, key.clone());
        self.short_keys.borrow_mut().insert(key.clone(), Some(short));
        Ok(key)
    }

    fn short_key(&self, kind: &StateEventType, state_key: &str) -> Result<Option<u64>> {
        let key = (kind.clone(), state_key.to_owned());
        if let Some(short) = self.short_keys.borrow().get(&key) {
            return Ok(*short);
        }
        let short = state::short_key(self.storage, &kind.to_string(), state_key)?;
        self.short_keys.borrow_mut().insert(key, short);
        Ok(short)
    }

    fn event(&self, short: u64) -> Result<Option<ResEvent>> {
        if let Some(event) = self.events.borrow().get(&short) {
            return Ok(event.clone());
        }
        let event = res_event(self.storage, short)?;
        self.events.borrow_mut().insert(short, event.clone());
        Ok(event)
    }

    fn candidate(&self, short: u64) -> Result<Candidate> {
        let event = self
            .event(short)?
            .ok_or_else(|| Error::internal(format!("conflicted event {short} is not stored")))?;
        Ok(Candidate {
            short,
            depth: event.pdu.depth,
            sha1: sha1(event.pdu.event_id.as_str()),
            event,
        })
    }

    /// Whether the auth rules allow `event` in the state `resolved` with `key` set to
    /// `overlay` (when given). A read that fails is an error, not a refusal.
    fn allowed(
        &self,
        event: &ResEvent,
        resolved: &StateMap,
        overlay: Option<(u64, &ResEvent)>,
    ) -> Result<bool> {
        let failure: RefCell<Option<Error>> = RefCell::new(None);
        let fetch_state = |kind: &StateEventType, state_key: &str| -> Option<ResEvent> {
            let found = (|| {
                let Some(key) = self.short_key(kind, state_key)? else {
                    return Ok(None);
                };
                if let Some((overlay_key, overlay_event)) = overlay
                    && overlay_key == key
                {
                    return Ok(Some(overlay_event.clone()));
                }
                match resolved.get(&key) {
                    Some(&short) => self.event(short),
                    None => Ok(None),
                }
            })();
            found.unwrap_or_else(|error| {
                failure.borrow_mut().get_or_insert(error);
                None
            })
        };
        let verdict =
            ruma::state_res::check_state_dependent_auth_rules(self.rules, event, fetch_state);
        if let Some(error) = failure.into_inner() {
            return Err(error);
        }
        if let Err(reason) = &verdict {
            tracing::debug!(event = %event.pdu.event_id, %reason, "refused in v1 state resolution");
        }
        Ok(verdict.is_ok())
    }

    /// A key whose events affect the auth rules: the longest run, in the spec's order, of
    /// events each allowed over the one before.
    fn auth_event(
        &self,
        resolved: &StateMap,
        key: u64,
        mut candidates: Vec<Candidate>,
    ) -> Result<u64> {
        candidates.sort_by(Candidate::auth_order);
        let mut candidates = candidates.into_iter();
        let mut winner = candidates.next().ok_or_else(|| Error::internal("empty conflict"))?;
        for candidate in candidates {
            if !self.allowed(&candidate.event, resolved, Some((key, &winner.event)))? {
                break;
            }
            winner = candidate;
        }
        Ok(winner.short)
    }

    /// Any other key: the first allowed event by descending depth, then ascending
    /// `sha1(event_id)`; the last of them when none is.
    fn normal_event(&self, resolved: &StateMap, mut candidates: Vec<Candidate>) -> Result<u64> {
        candidates.sort_by(|a, b| b.auth_order(a));
        let mut last = None;
        for candidate in candidates {
            if self.allowed(&candidate.event, resolved, None)? {
                return Ok(candidate.short);
            }
            last = Some(candidate.short);
        }
        last.ok_or_else(|| Error::internal("empty conflict"))
    }
}

#[cfg(test)]
mod tests {
    use ruma::{CanonicalJsonValue, OwnedEventId, RoomVersionId};
    use serde_json::{Value, json};

    use super::{super::tests::Vectors, *};
    use crate::rooms::Pdu;

    const ALICE: &str = "@alice:a.example";
    const BOB: &str = "@bob:b.example";
    const CAROL: &str = "@carol:c.example";
    const EVE: &str = "@eve:e.example";

    /// A version-1 state event; auth events and prev events play no part in resolution.
    fn event(
        id: &str,
        kind: &str,
        state_key: &str,
        sender: &str,
        depth: u64,
        content: Value,
    ) -> Pdu {
        let json = json!({
            "event_id": format!("${id}:a.example"), "room_id": "!room:a.example",
            "sender": sender, "type": kind, "state_key": state_key, "depth": depth,
            "origin_server_ts": depth, "content": content,
            "prev_events": [], "auth_events": [],
        });
        let Ok(CanonicalJsonValue::Object(object)) = CanonicalJsonValue::try_from(json) else {
            panic!("canonical");
        };
        Pdu::from_json(object).expect("parses")
    }

    fn member(id: &str, user: &str, sender: &str, depth: u64, membership: &str) -> Pdu {
        event(id, "m.room.member", user, sender, depth, json!({ "membership": membership }))
    }

    fn power_levels(id: &str, sender: &str, depth: u64, users: Value) -> Pdu {
        let content = json!({ "users": users, "users_default": 0, "state_default": 50,
            "events_default": 0, "ban": 50, "kick": 50, "redact": 50, "invite": 0 });
        event(id, "m.room.power_levels", "", sender, depth, content)
    }

    fn join_rules(id: &str, sender: &str, depth: u64, rule: &str) -> Pdu {
        event(id, "m.room.join_rules", "", sender, depth, json!({ "join_rule": rule }))
    }

    fn topic(id: &str, sender: &str, depth: u64) -> Pdu {
        event(id, "m.room.topic", "", sender, depth, json!({ "topic": id }))
    }

    /// A public room of version 1: alice (100) created it, bob (60) and carol (0) joined.
    fn bootstrap() -> Vec<Pdu> {
        vec![
            event("create", "m.room.create", "", ALICE, 1, json!({ "creator": ALICE })),
            member("alice", ALICE, ALICE, 2, "join"),
            power_levels("pl", ALICE, 3, json!({ ALICE: 100, BOB: 60 })),
            join_rules("jr", ALICE, 4, "public"),
            member("bob", BOB, BOB, 5, "join"),
            member("carol", CAROL, CAROL, 6, "join"),
        ]
    }

    fn id(name: &str) -> OwnedEventId {
        format!("${name}:a.example").try_into().expect("event id")
    }

    /// The room with `extra` events, and the states after two branches: the bootstrap with
    /// the `left` events, and with the `right` ones.
    struct Fork {
        vectors: Vectors,
        left: u64,
        right: u64,
    }

    fn forked(extra: Vec<Pdu>, left: &[&str], right: &[&str]) -> Fork {
        let base: Vec<OwnedEventId> = bootstrap().iter().map(|pdu| pdu.event_id.clone()).collect();
        let vectors = Vectors::from_pdus(bootstrap().into_iter().chain(extra).collect());
        let branch = |names: &[&str]| {
            let mut state = vectors.state_of(&base);
            state.extend(vectors.state_of(&names.iter().map(|name| id(name)).collect::<Vec<_>>()));
            vectors.snapshot(&state)
        };
        let (left, right) = (branch(left), branch(right));
        Fork { vectors, left, right }
    }

    impl Fork {
        /// The resolved state as `(type, state key) -> event name`, for the keys asked.
        fn resolved(&self, keys: &[(&str, &str)]) -> Vec<Option<String>> {
            let resolved = self.vectors.resolve(&[self.left, self.right]);
            assert_eq!(resolved, self.vectors.resolve(&[self.right, self.left]), "order");
            let named = self.vectors.named(&resolved);
            keys.iter()
                .map(|(kind, state_key)| {
                    named.get(&((*kind).to_owned(), (*state_key).to_owned())).map(|id| {
                        id.trim_start_matches('$').trim_end_matches(":a.example").to_owned()
                    })
                })
                .collect()
        }
    }

    fn one(fork: &Fork, kind: &str, state_key: &str) -> Option<String> {
        fork.resolved(&[(kind, state_key)]).pop().flatten()
    }

    #[test]
    fn without_conflicts_the_states_are_united() {
        let fork = forked(
            vec![topic("topic", ALICE, 7), member("eve", EVE, EVE, 8, "join")],
            &["topic"],
            &["eve"],
        );
        assert_eq!(
            fork.resolved(&[("m.room.topic", ""), ("m.room.member", EVE), ("m.room.member", BOB)]),
            [Some("topic".to_owned()), Some("eve".to_owned()), Some("bob".to_owned())]
        );
    }

    #[test]
    fn a_deeper_power_levels_change_wins_when_it_is_allowed() {
        let fork = forked(
            vec![
                power_levels("pl-alice", ALICE, 7, json!({ ALICE: 100, BOB: 60, CAROL: 10 })),
                power_levels("pl-bob", BOB, 8, json!({ ALICE: 100, BOB: 60, CAROL: 60 })),
            ],
            &["pl-alice"],
            &["pl-bob"],
        );
        assert_eq!(one(&fork, "m.room.power_levels", ""), Some("pl-bob".to_owned()));
    }

    #[test]
    fn a_power_levels_change_by_a_user_demoted_on_the_other_branch_loses_though_deeper() {
        let fork = forked(
            vec![
                power_levels("pl-alice", ALICE, 7, json!({ ALICE: 100, BOB: 0 })),
                power_levels("pl-bob", BOB, 8, json!({ ALICE: 100, BOB: 60, CAROL: 60 })),
            ],
            &["pl-alice"],
            &["pl-bob"],
        );
        assert_eq!(one(&fork, "m.room.power_levels", ""), Some("pl-alice".to_owned()));
    }

    #[test]
    fn at_equal_depth_the_lower_sha1_of_the_event_id_wins() {
        let names = ["pl-x", "pl-y"];
        let fork = forked(
            vec![
                power_levels(names[0], ALICE, 7, json!({ ALICE: 100, BOB: 60, CAROL: 1 })),
                power_levels(names[1], ALICE, 7, json!({ ALICE: 100, BOB: 60, CAROL: 2 })),
            ],
            &[names[0]],
            &[names[1]],
        );
        let lower =
            names.iter().min_by_key(|name| sha1(id(name).as_str())).map(|name| (*name).to_owned());
        assert_eq!(one(&fork, "m.room.power_levels", ""), lower);

        // Other events too: highest depth first, then the lower hash.
        let names = ["topic-x", "topic-y"];
        let fork = forked(
            vec![topic(names[0], ALICE, 7), topic(names[1], BOB, 7)],
            &[names[0]],
            &[names[1]],
        );
        let lower =
            names.iter().min_by_key(|name| sha1(id(name).as_str())).map(|name| (*name).to_owned());
        assert_eq!(one(&fork, "m.room.topic", ""), lower);
    }

    #[test]
    fn join_rules_are_checked_against_the_resolved_power_levels() {
        let fork = forked(
            vec![
                power_levels("pl-alice", ALICE, 7, json!({ ALICE: 100, BOB: 0 })),
                join_rules("jr-bob", BOB, 8, "invite"),
            ],
            &["pl-alice"],
            &["jr-bob"],
        );
        assert_eq!(
            fork.resolved(&[("m.room.power_levels", ""), ("m.room.join_rules", "")]),
            [Some("pl-alice".to_owned()), Some("jr".to_owned())]
        );
        // Without the demotion, bob's deeper join rules stand.
        let fork = forked(
            vec![
                power_levels("pl-alice", ALICE, 7, json!({ ALICE: 100, BOB: 60, CAROL: 5 })),
                join_rules("jr-bob", BOB, 8, "invite"),
            ],
            &["pl-alice"],
            &["jr-bob"],
        );
        assert_eq!(one(&fork, "m.room.join_rules", ""), Some("jr-bob".to_owned()));
    }

    #[test]
    fn a_ban_beats_a_later_join_and_a_join_only_one_branch_knows_stays() {
        let fork = forked(
            vec![member("ban", EVE, ALICE, 7, "ban"), member("eve", EVE, EVE, 8, "join")],
            &["ban"],
            &["eve"],
        );
        assert_eq!(one(&fork, "m.room.member", EVE), Some("ban".to_owned()));

        // Closing the room on one branch does not undo a join on the other: in version 1 a
        // key one state lacks is not a conflict.
        let fork = forked(
            vec![join_rules("jr-invite", ALICE, 7, "invite"), member("eve", EVE, EVE, 8, "join")],
            &["jr-invite"],
            &["eve"],
        );
        assert_eq!(
            fork.resolved(&[("m.room.join_rules", ""), ("m.room.member", EVE)]),
            [Some("jr-invite".to_owned()), Some("eve".to_owned())]
        );
    }

    #[test]
    fn a_membership_conflict_is_checked_against_the_resolved_join_rules() {
        // Eve joined on both branches, left on one and rejoined on the other after alice
        // closed the room there: the rejoin is not allowed in the resolved (invite) room.
        let fork = forked(
            vec![
                member("eve", EVE, EVE, 7, "join"),
                member("eve-leave", EVE, EVE, 8, "leave"),
                join_rules("jr-invite", ALICE, 9, "invite"),
                member("eve-rejoin", EVE, EVE, 10, "join"),
            ],
            &["eve", "eve-leave", "jr-invite"],
            &["eve", "eve-leave", "eve-rejoin"],
        );
        assert_eq!(
            fork.resolved(&[("m.room.join_rules", ""), ("m.room.member", EVE)]),
            [Some("jr-invite".to_owned()), Some("eve-leave".to_owned())]
        );
    }

    #[test]
    fn other_keys_take_the_deepest_allowed_event_or_else_the_shallowest() {
        let fork = forked(
            vec![
                power_levels("pl-alice", ALICE, 7, json!({ ALICE: 100, BOB: 0 })),
                topic("topic-alice", ALICE, 8),
                topic("topic-bob", BOB, 9),
            ],
            &["pl-alice", "topic-alice"],
            &["topic-bob"],
        );
        assert_eq!(
            fork.resolved(&[("m.room.power_levels", ""), ("m.room.topic", "")]),
            [Some("pl-alice".to_owned()), Some("topic-alice".to_owned())]
        );
        // Carol (0) may not set the topic on either branch: the shallower one stays.
        let fork = forked(
            vec![topic("topic-8", CAROL, 8), topic("topic-9", CAROL, 9)],
            &["topic-8"],
            &["topic-9"],
        );
        assert_eq!(one(&fork, "m.room.topic", ""), Some("topic-8".to_owned()));
    }

    #[test]
    fn room_version_1_resolves_by_this_algorithm_and_version_2_by_ruma() {
        let fork = forked(
            vec![
                power_levels("pl-alice", ALICE, 7, json!({ ALICE: 100, BOB: 0 })),
                power_levels("pl-bob", BOB, 8, json!({ ALICE: 100, BOB: 60, CAROL: 60 })),
            ],
            &["pl-alice"],
            &["pl-bob"],
        );
        let pl = state::short_key(&fork.vectors.storage, "m.room.power_levels", "")
            .expect("read")
            .expect("interned");
        for version in [RoomVersionId::V1, RoomVersionId::V2] {
            let rules = version.rules().expect("known");
            let resolved =
                super::super::resolve(&fork.vectors.storage, &rules, &[fork.left, fork.right])
                    .expect("resolves");
            assert_eq!(resolved.state.get(&pl), Some(&fork.vectors.short("$pl-alice:a.example")));
            // Only state resolution v2 walks auth chains.
            assert_eq!(resolved.walked_auth_chains.is_empty(), version == RoomVersionId::V1);
        }
    }

    #[test]
    fn separating_keeps_agreeing_and_lone_keys_and_collects_every_conflicting_event() {
        let a = StateMap::from([(1, 10), (2, 20), (3, 30)]);
        let b = StateMap::from([(1, 10), (2, 21), (4, 40)]);
        let c = StateMap::from([(2, 22), (3, 30)]);
        let (unconflicted, conflicted) = separate(&[a, b, c]);
        assert_eq!(unconflicted, StateMap::from([(1, 10), (3, 30), (4, 40)]));
        assert_eq!(conflicted, BTreeMap::from([(2, BTreeSet::from([20, 21, 22]))]));
    }
}
