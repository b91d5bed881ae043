//! State resolution over stored snapshots: the adapter between our `u64` state maps and
//! ruma's `state_res::resolve` (v2 and v2.1). ruma decides; this module supplies what only
//! storage knows: the events with their rejected status, each map's full auth chain, and the
//! conflicted state subgraph. Only a real conflict reaches ruma: identical inputs answer from
//! storage alone. Room version 1 resolves by the older algorithm ruma lacks, in [`v1`].
//!
//! Everything here reads storage synchronously; callers in async code use
//! [`resolve_blocking`], which runs on the blocking pool.

use std::{
    cell::RefCell,
    collections::{HashMap, HashSet},
    sync::Arc,
};

use ruma::{
    EventId, MilliSecondsSinceUnixEpoch, OwnedEventId, RoomId, UserId,
    events::{StateEventType, TimelineEventType},
    room_version_rules::{RoomVersionRules, StateResolutionVersion},
    state_res::{self, utils::event_id_set::EventIdSet},
};
use serde_json::value::RawValue as RawJsonValue;

use super::{
    Pdu,
    auth_chain::{self, AuthChains},
    state::{self, StateMap},
};
use crate::{
    Error, Result,
    storage::{Storage, dag::AuthChain, rooms::EventStatus},
};

mod v1;

/// A stored event as state resolution sees it: with whether it was rejected, which the auth
/// rules and the resolution must both honour.
#[derive(Debug, Clone)]
pub struct ResEvent {
    pub pdu: Arc<Pdu>,
    pub rejected: bool,
}

impl ResEvent {
    /// An event of a state map (current state, a snapshot): rejected events never enter
    /// one, so no status needs reading.
    pub fn in_state(pdu: Arc<Pdu>) -> Self {
        Self { pdu, rejected: false }
    }
}

impl state_res::Event for ResEvent {
    type Id = OwnedEventId;

    fn event_id(&self) -> &Self::Id {
        &self.pdu.event_id
    }

    fn room_id(&self) -> Option<&RoomId> {
        (!self.pdu.implicit_room_id).then_some(&self.pdu.room_id)
    }

    fn sender(&self) -> &UserId {
        &self.pdu.sender
    }

    fn origin_server_ts(&self) -> MilliSecondsSinceUnixEpoch {
        self.pdu.origin_server_ts
    }

    fn event_type(&self) -> &TimelineEventType {
        &self.pdu.kind
    }

    fn content(&self) -> &RawJsonValue {
        &self.pdu.content
    }

    fn state_key(&self) -> Option<&str> {
        self.pdu.state_key.as_deref()
    }

    fn prev_events(&self) -> Box<dyn DoubleEndedIterator<Item = &Self::Id> + '_> {
        Box::new(self.pdu.prev_events.iter())
    }

    fn auth_events(&self) -> Box<dyn DoubleEndedIterator<Item = &Self::Id> + '_> {
        Box::new(self.pdu.auth_events.iter())
    }

    fn redacts(&self) -> Option<&Self::Id> {
        self.pdu.redacts.as_ref()
    }

    fn rejected(&self) -> bool {
        self.rejected
    }
}

/// A stored event with its status, for resolution and auth checks. `None` when the event is
/// not stored. An event with a readable PDU but no meta, or the reverse, is damage and an
/// error: answering `None` would make ruma leave it out as unverifiable, a wrong state
/// instead of a failed resolution.
pub fn res_event(storage: &Storage, short: u64) -> Result<Option<ResEvent>> {
    match (super::shared_pdu(storage, short)?, super::any_event_meta(storage.engine(), short)?) {
        (Some(pdu), Some(meta)) => {
            Ok(Some(ResEvent { pdu, rejected: meta.status == EventStatus::Rejected }))
        }
        (None, None) => Ok(None),
        _ => Err(Error::internal(format!("event {short} is stored without its event or its meta"))),
    }
}

/// The outcome of a resolution: the resolved state, and the auth chains walked to get it,
/// which the caller's next batch stores ([`Resolution::store_auth_chains`]).
#[derive(Debug, Default)]
pub struct Resolution {
    pub state: StateMap,
    pub walked_auth_chains: Vec<(u64, AuthChain)>,
}

impl Resolution {
    pub fn store_auth_chains(&self, batch: &mut crate::storage::Batch) {
        for (event, chain) in &self.walked_auth_chains {
            crate::storage::dag::AUTH_CHAINS_TABLE.put(batch, event, chain);
        }
    }
}

/// Resolves the states at `snapshots` (forward extremities' states, or a new event's prev
/// events' states) with the room version's rules.
pub fn resolve(
    storage: &Storage,
    rules: &RoomVersionRules,
    snapshots: &[u64],
) -> Result<Resolution> {
    resolve_with_limit(storage, rules, snapshots, auth_chain::WALK_LIMIT)
}

/// [`resolve`] on the blocking pool.
pub async fn resolve_blocking(
    storage: Arc<Storage>,
    rules: RoomVersionRules,
    snapshots: Vec<u64>,
) -> Result<Resolution> {
    tokio::task::spawn_blocking(move || resolve(&storage, &rules, &snapshots))
        .await
        .map_err(|error| Error::internal(format!("state resolution task failed: {error}")))?
}

/// [`resolve`] with a walk bound other than [`auth_chain::WALK_LIMIT`].
pub fn resolve_with_limit(
    storage: &Storage,
    rules: &RoomVersionRules,
    snapshots: &[u64],
    limit: usize,
) -> Result<Resolution> {
    let mut snapshots = snapshots.to_vec();
    snapshots.sort_unstable();
    snapshots.dedup();
    // Fast paths, in `u64` space: nothing or one state, or states that are all the same.
    // (States that merely do not disagree on shared keys are not among them: a key missing
    // from one state is conflicted, and its event may fail the resolved auth.)
    let mut maps = Vec::with_capacity(snapshots.len());
    for snapshot in &snapshots {
        maps.push(state::load(storage, *snapshot)?);
    }
    if maps.windows(2).all(|pair| pair[0] == pair[1]) {
        return Ok(Resolution {
            state: maps.pop().unwrap_or_default(),
            walked_auth_chains: vec![],
        });
    }
    let StateResolutionVersion::V2(v2_rules) = &rules.state_res else {
        let state = v1::resolve(storage, &rules.authorization, &maps)?;
        return Ok(Resolution { state, walked_auth_chains: vec![] });
    };

    let mut names = Names::new(storage);
    let mut ruma_maps = Vec::with_capacity(maps.len());
    for map in &maps {
        let mut ruma_map = state_res::StateMap::with_capacity(map.len());
        for (&key, &event) in map {
            ruma_map.insert(names.key(key)?, names.event(event)?);
        }
        ruma_maps.push(ruma_map);
    }

    // The auth difference is all ruma uses the chains for, and it only depends on what the
    // chains do not share: each map passes its chain minus the common part, which keeps the
    // conversion to ids off the (large) shared history.
    let mut chains = AuthChains::with_limit(storage, limit);
    let mut full_chains: Vec<HashSet<u64>> = Vec::with_capacity(maps.len());
    for map in &maps {
        let mut full = HashSet::new();
        for &event in map.values() {
            full.extend(chains.of(event)?.events().iter().copied());
        }
        full_chains.push(full);
    }
    let mut auth_chains = Vec::with_capacity(full_chains.len());
    for reduced in without_common_part(full_chains) {
        let mut set = EventIdSet::new();
        for event in reduced {
            set.insert(names.event(event)?);
        }
        auth_chains.push(set);
    }

    // ruma's callbacks cannot fail: a storage error is kept and wins over ruma's answer
    // (ruma would otherwise leave the event out as unverifiable, a silently wrong state).
    let failure: RefCell<Option<Error>> = RefCell::new(None);
    let names = RefCell::new(names);
    let fetched: RefCell<HashMap<OwnedEventId, Option<ResEvent>>> = RefCell::new(HashMap::new());
    let fetch_event = |event_id: &EventId| -> Option<ResEvent> {
        if let Some(event) = fetched.borrow().get(event_id) {
            return event.clone();
        }
        let event = match names.borrow_mut().short(event_id).and_then(|short| match short {
            Some(short) => res_event(storage, short),
            None => Ok(None),
        }) {
            Ok(event) => event,
            Err(error) => {
                failure.borrow_mut().get_or_insert(error);
                None
            }
        };
        fetched.borrow_mut().insert(event_id.to_owned(), event.clone());
        event
    };
    let subgraph = |conflicted: &state_res::StateMap<Vec<OwnedEventId>>| {
        let result = (|| {
            let mut shorts = HashSet::new();
            for event_id in conflicted.values().flatten() {
                let short = names.borrow_mut().short(event_id)?.ok_or_else(|| {
                    Error::internal(format!("conflicted event {event_id} is not stored"))
                })?;
                shorts.insert(short);
            }
            let mut set = EventIdSet::new();
            for short in auth_chain::conflicted_subgraph(storage, &shorts, limit)? {
                set.insert(names.borrow_mut().event(short)?);
            }
            Ok::<_, Error>(set)
        })();
        match result {
            Ok(set) => Some(set),
            Err(error) => {
                failure.borrow_mut().get_or_insert(error);
                None
            }
        }
    };
    let resolved = state_res::resolve(
        &rules.authorization,
        v2_rules,
        &ruma_maps,
        auth_chains,
        fetch_event,
        subgraph,
    );
    if let Some(error) = failure.into_inner() {
        return Err(error);
    }
    let resolved =
        resolved.map_err(|error| Error::internal(format!("state resolution failed: {error}")))?;

    let mut names = names.into_inner();
    let mut state = StateMap::new();
    for (key, event_id) in resolved {
        let short_key = names.short_key(&key)?;
        let short = names
            .short(&event_id)?
            .ok_or_else(|| Error::internal(format!("resolved event {event_id} is not stored")))?;
        state.insert(short_key, short);
    }
    Ok(Resolution { state, walked_auth_chains: chains.into_walked() })
}

/// Each chain minus the events every chain holds. The auth difference (the union minus the
/// intersection) of the result is that of `chains`: the common part is in the intersection
/// and so never in the difference.
fn without_common_part(chains: Vec<HashSet<u64>>) -> Vec<HashSet<u64>> {
    let common: HashSet<u64> = match chains.split_first() {
        Some((first, rest)) => {
            first.iter().copied().filter(|event| rest.iter().all(|c| c.contains(event))).collect()
        }
        None => HashSet::new(),
    };
    chains.into_iter().map(|chain| chain.difference(&common).copied().collect()).collect()
}

/// Conversions between short ids and the ids ruma works with, each looked up once.
struct Names<'a> {
    storage: &'a Storage,
    keys: HashMap<u64, (StateEventType, String)>,
    short_keys: HashMap<(StateEventType, String), u64>,
    events: HashMap<u64, OwnedEventId>,
    shorts: HashMap<OwnedEventId, u64>,
}

impl<'a> Names<'a> {
    fn new(storage: &'a Storage) -> Self {
        Self {
            storage,
            keys: HashMap::new(),
            short_keys: HashMap::new(),
            events: HashMap::new(),
            shorts: HashMap::new(),
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
        self.short_keys.insert(key.clone(), short);
        Ok(key)
    }

    fn short_key(&mut self, key: &(StateEventType, String)) -> Result<u64> {
        if let Some(short) = self.short_keys.get(key) {
            return Ok(*short);
        }
        state::short_key(self.storage, &key.0.to_string(), &key.1)?
            .ok_or_else(|| Error::internal(format!("state key {key:?} was never stored")))
    }

    fn event(&mut self, short: u64) -> Result<OwnedEventId> {
        if let Some(event_id) = self.events.get(&short) {
            return Ok(event_id.clone());
        }
        let event_id = super::event_id(self.storage, short)?
            .ok_or_else(|| Error::internal(format!("event {short} has no id")))?;
        self.events.insert(short, event_id.clone());
        self.shorts.insert(event_id.clone(), short);
        Ok(event_id)
    }

    fn short(&mut self, event_id: &EventId) -> Result<Option<u64>> {
        if let Some(short) = self.shorts.get(event_id) {
            return Ok(Some(*short));
        }
        let short = super::event_short(self.storage, event_id)?;
        if let Some(short) = short {
            self.shorts.insert(event_id.to_owned(), short);
            self.events.insert(short, event_id.to_owned());
        }
        Ok(short)
    }
}

#[cfg(test)]
mod tests {
    use std::{
        collections::{BTreeMap, HashMap},
        path::PathBuf,
    };

    use axum::http::StatusCode;
    use proptest::{prelude::*, sample, test_runner::TestRunner};
    use ruma::{CanonicalJsonValue, OwnedEventId, RoomVersionId};

    use super::*;
    use crate::{
        rooms::pdu::state_key_bytes,
        storage::{
            Batch, EngineOptions, Interner, Namespace,
            codec::Json,
            dag::AUTH_CHAINS_TABLE,
            rooms::{EVENT_META_TABLE, EventMeta, PDUS_TABLE},
        },
    };

    /// ruma's state resolution vectors (tests/fixtures/state_res, see its NOTICE) in a
    /// temporary database, as the room's events.
    pub(super) struct Vectors {
        runtime: tokio::runtime::Runtime,
        _dir: tempfile::TempDir,
        pub(super) storage: Arc<Storage>,
        pub(super) rules: RoomVersionRules,
        /// In file order.
        pub(super) pdus: Vec<Pdu>,
        shorts: HashMap<OwnedEventId, u64>,
    }

    fn fixture(name: &str) -> PathBuf {
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/state_res").join(name)
    }

    fn read_pdus(file: &str) -> Vec<Pdu> {
        let text = std::fs::read_to_string(fixture(file)).expect("fixture");
        let values: Vec<serde_json::Value> = serde_json::from_str(&text).expect("json array");
        values
            .into_iter()
            .map(|value| {
                let Ok(CanonicalJsonValue::Object(object)) = CanonicalJsonValue::try_from(value)
                else {
                    panic!("{file}: an event is not a canonical object");
                };
                Pdu::from_json(object).expect("fixture event parses")
            })
            .collect()
    }

    impl Vectors {
        fn load(files: &[&str]) -> Self {
            Self::from_pdus(files.iter().flat_map(|file| read_pdus(file)).collect())
        }

        /// The events (the first is the create event) in a temporary database.
        pub(super) fn from_pdus(pdus: Vec<Pdu>) -> Self {
            let runtime = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(1)
                .enable_all()
                .build()
                .expect("runtime");
            let dir = tempfile::tempdir().expect("tempdir");
            let storage = runtime.block_on(async {
                Arc::new(Storage::open(&EngineOptions::for_path(dir.path())).expect("open").0)
            });
            let version: serde_json::Value =
                serde_json::from_str(pdus[0].content.get()).expect("create content");
            // A create event without `room_version` is of version 1.
            let version = RoomVersionId::try_from(version["room_version"].as_str().unwrap_or("1"))
                .expect("room version");
            let rules = version.rules().expect("supported version");
            let mut vectors = Self {
                runtime,
                _dir: dir,
                storage,
                rules,
                pdus: Vec::new(),
                shorts: HashMap::new(),
            };
            let mut batch = Batch::new();
            for pdu in &pdus {
                let short = vectors.storage.interner().allocate();
                Interner::record(&mut batch, Namespace::EventId, pdu.event_id.as_bytes(), short);
                PDUS_TABLE.put(&mut batch, &short, &pdu.to_bytes());
                vectors.put_status(&mut batch, short, EventStatus::Timeline);
                vectors.shorts.insert(pdu.event_id.clone(), short);
                let kind = pdu.kind.to_string();
                let key = state_key_bytes(&kind, pdu.state_key.as_deref().expect("state event"));
                vectors
                    .runtime
                    .block_on(vectors.storage.interner().intern(
                        &vectors.storage,
                        Namespace::StateKey,
                        &key,
                    ))
                    .expect("intern");
            }
            vectors.commit(batch);
            vectors.pdus = pdus;
            vectors
        }

        pub(super) fn put_status(&self, batch: &mut Batch, short: u64, status: EventStatus) {
            let meta = EventMeta {
                room: 1,
                position: 0,
                state_before: 0,
                state_after: 0,
                redacted: false,
                transaction: None,
                has_children: None,
                status,
                backfill: None,
            };
            EVENT_META_TABLE.put(batch, &short, &Json(meta));
        }

        pub(super) fn commit(&self, batch: Batch) {
            self.runtime.block_on(self.storage.writer().commit(batch)).expect("commit");
        }

        pub(super) fn short(&self, event_id: &str) -> u64 {
            self.shorts[&OwnedEventId::try_from(event_id).expect("event id")]
        }

        pub(super) fn key_of(&self, pdu: &Pdu) -> u64 {
            state::short_key(
                &self.storage,
                &pdu.kind.to_string(),
                pdu.state_key.as_deref().unwrap_or(""),
            )
            .expect("read")
            .expect("interned")
        }

        /// Stores `state` as a full snapshot.
        pub(super) fn snapshot(&self, state: &StateMap) -> u64 {
            let mut batch = Batch::new();
            let (id, _) =
                state::write_diff(&self.storage, &mut batch, None, &StateMap::new(), state);
            self.commit(batch);
            id
        }

        /// The state made of the listed events.
        pub(super) fn state_of(&self, event_ids: &[OwnedEventId]) -> StateMap {
            event_ids
                .iter()
                .map(|id| {
                    let pdu = self.pdus.iter().find(|pdu| &pdu.event_id == id).expect("listed");
                    (self.key_of(pdu), self.shorts[id])
                })
                .collect()
        }

        pub(super) fn resolve(&self, snapshots: &[u64]) -> StateMap {
            resolve(&self.storage, &self.rules, snapshots).expect("resolution").state
        }

        /// `(type, state key) -> event id`, as ruma's snapshots list them.
        pub(super) fn named(&self, state: &StateMap) -> BTreeMap<(String, String), String> {
            state
                .iter()
                .map(|(key, event)| {
                    let key = state::resolve_key(&self.storage, *key).expect("read").expect("key");
                    let id =
                        crate::rooms::event_id(&self.storage, *event).expect("read").expect("id");
                    (key, id.to_string())
                })
                .collect()
        }

        /// Every event's state after it, resolved as a server receiving them one by one
        /// would (ruma's "iterative" resolution): the state before an event resolves its
        /// prev events' states; the state after resolves the state before against it plus
        /// the event. Returns the snapshots after each event and the leaves' resolution.
        fn resolve_iteratively(&self) -> (HashMap<OwnedEventId, u64>, StateMap) {
            let mut after: HashMap<OwnedEventId, u64> = HashMap::new();
            let mut referenced = HashSet::new();
            for _pass in 0..self.pdus.len() {
                for pdu in &self.pdus {
                    if after.contains_key(&pdu.event_id)
                        || !pdu.prev_events.iter().all(|prev| after.contains_key(prev))
                    {
                        continue;
                    }
                    referenced.extend(pdu.prev_events.iter().cloned());
                    let prevs: Vec<u64> = pdu.prev_events.iter().map(|prev| after[prev]).collect();
                    let before =
                        if prevs.is_empty() { StateMap::new() } else { self.resolve(&prevs) };
                    let mut proposed = before.clone();
                    proposed.insert(self.key_of(pdu), self.shorts[&pdu.event_id]);
                    let state = self.resolve(&[self.snapshot(&before), self.snapshot(&proposed)]);
                    after.insert(pdu.event_id.clone(), self.snapshot(&state));
                }
            }
            assert_eq!(after.len(), self.pdus.len(), "every event has its prev events");
            let leaves: Vec<u64> = self
                .pdus
                .iter()
                .filter(|pdu| !referenced.contains(&pdu.event_id))
                .map(|pdu| after[&pdu.event_id])
                .collect();
            let resolved = self.resolve(&leaves);
            (after, resolved)
        }
    }

    impl Drop for Vectors {
        fn drop(&mut self) {
            self.runtime.block_on(self.storage.close());
        }
    }

    /// The resolved state of ruma's snapshot file `name`.
    fn expected(name: &str) -> BTreeMap<(String, String), String> {
        let text =
            std::fs::read_to_string(fixture(&format!("snapshots/{name}@resolved_state.snap")))
                .expect("snapshot");
        // An insta snapshot: a `---` delimited header, then the JSON.
        let json = text.splitn(3, "---\n").nth(2).expect("snapshot body");
        let events: Vec<serde_json::Value> = serde_json::from_str(json).expect("snapshot json");
        events
            .iter()
            .map(|event| {
                let field = |name: &str| event[name].as_str().expect("string field").to_owned();
                ((field("type"), field("state_key")), field("event_id"))
            })
            .collect()
    }

    fn assert_batches(name: &str, files: &[&str]) {
        let vectors = Vectors::load(files);
        let (_, resolved) = vectors.resolve_iteratively();
        assert_eq!(vectors.named(&resolved), expected(name), "{name}");
    }

    fn state_maps(files: &[&str]) -> Vec<Vec<OwnedEventId>> {
        files
            .iter()
            .map(|file| {
                serde_json::from_str(&std::fs::read_to_string(fixture(file)).expect("state file"))
                    .expect("event id list")
            })
            .collect()
    }

    fn assert_state_maps(name: &str, maps: &[&str], pdus: &[&str]) -> StateMap {
        let vectors = Vectors::load(pdus);
        let snapshots: Vec<u64> =
            state_maps(maps).iter().map(|ids| vectors.snapshot(&vectors.state_of(ids))).collect();
        let resolved = vectors.resolve(&snapshots);
        assert_eq!(vectors.named(&resolved), expected(name), "{name}");
        resolved
    }

    fn auth_difference(chains: &[HashSet<u64>]) -> HashSet<u64> {
        let union: HashSet<u64> = chains.iter().flatten().copied().collect();
        union
            .iter()
            .copied()
            .filter(|event| !chains.iter().all(|chain| chain.contains(event)))
            .collect()
    }

    proptest! {
        #[test]
        fn dropping_the_common_part_keeps_the_auth_difference(
            chains in proptest::collection::vec(proptest::collection::hash_set(1u64..30, 0..20), 1..5)
        ) {
            let reduced = without_common_part(chains.clone());
            prop_assert_eq!(auth_difference(&reduced), auth_difference(&chains));
        }
    }

    #[test]
    fn minimal_private_chat() {
        assert_batches("minimal_private_chat", &["bootstrap-private-chat.json"]);
    }

    #[test]
    fn minimal_public_chat() {
        assert_batches("minimal_public_chat", &["bootstrap-public-chat.json"]);
    }

    #[test]
    fn origin_server_ts_tiebreak() {
        assert_batches(
            "origin_server_ts_tiebreak",
            &["bootstrap-private-chat.json", "origin-server-ts-tiebreak.json"],
        );
    }

    #[test]
    fn ban_vs_power_levels() {
        assert_batches(
            "ban_vs_power_levels",
            &[
                "bootstrap-public-chat.json",
                "ban-vs-power-levels-alice.json",
                "ban-vs-power-levels-bob.json",
            ],
        );
    }

    #[test]
    fn topic_vs_power_levels() {
        assert_batches(
            "topic_vs_power_levels",
            &[
                "bootstrap-public-chat.json",
                "topic-vs-power-levels-alice.json",
                "topic-vs-power-levels-bob.json",
            ],
        );
    }

    #[test]
    fn power_levels_admin_vs_mod() {
        assert_batches(
            "power_levels_admin_vs_mod",
            &[
                "bootstrap-public-chat.json",
                "power-levels-admin-vs-mod-alice.json",
                "power-levels-admin-vs-mod-bob.json",
            ],
        );
    }

    #[test]
    fn topic_vs_ban() {
        assert_batches(
            "topic_vs_ban",
            &[
                "bootstrap-public-chat.json",
                "topic-vs-ban-common.json",
                "topic-vs-ban-alice.json",
                "topic-vs-ban-bob.json",
            ],
        );
    }

    #[test]
    fn join_rules_vs_join() {
        assert_batches(
            "join_rules_vs_join",
            &[
                "bootstrap-public-chat.json",
                "join-rules-vs-join-common.json",
                "join-rules-vs-join-alice.json",
                "join-rules-vs-join-ella.json",
            ],
        );
    }

    #[test]
    fn concurrent_joins() {
        assert_batches(
            "concurrent_joins",
            &[
                "bootstrap-public-chat.json",
                "concurrent-joins-charlie.json",
                "concurrent-joins-ella.json",
            ],
        );
    }

    const PROBLEM_A: [&str; 2] =
        ["MSC4297-problem-A/state-bob.json", "MSC4297-problem-A/state-charlie.json"];
    const PROBLEM_B: [&str; 2] =
        ["MSC4297-problem-B/state-eve.json", "MSC4297-problem-B/state-zara.json"];

    #[test]
    fn msc4297_problem_a_state_res_v2_0() {
        assert_state_maps(
            "msc4297_problem_a_state_res_v2_0",
            &PROBLEM_A,
            &["MSC4297-problem-A/pdus-v11.json"],
        );
    }

    #[test]
    fn msc4297_problem_a_state_res_v2_1() {
        assert_state_maps(
            "msc4297_problem_a_state_res_v2_1",
            &PROBLEM_A,
            &["MSC4297-problem-A/pdus-v12.json"],
        );
    }

    #[test]
    fn msc4297_problem_b_state_res_v2_0() {
        assert_state_maps(
            "msc4297_problem_b_state_res_v2_0",
            &PROBLEM_B,
            &["MSC4297-problem-B/pdus-v11.json"],
        );
    }

    #[test]
    fn msc4297_problem_b_state_res_v2_1() {
        assert_state_maps(
            "msc4297_problem_b_state_res_v2_1",
            &PROBLEM_B,
            &["MSC4297-problem-B/pdus-v12.json"],
        );
    }

    #[test]
    fn a_resolution_that_drops_a_key_is_stored_with_a_tombstone() {
        // Problem A under v2.0: both states hold join rules, the resolved state has none.
        let vectors = Vectors::load(&["MSC4297-problem-A/pdus-v11.json"]);
        let maps = state_maps(&PROBLEM_A);
        let bob = vectors.state_of(&maps[0]);
        let bob_snapshot = vectors.snapshot(&bob);
        let charlie_snapshot = vectors.snapshot(&vectors.state_of(&maps[1]));
        let resolved = vectors.resolve(&[bob_snapshot, charlie_snapshot]);
        let join_rules = state::short_key(&vectors.storage, "m.room.join_rules", "")
            .expect("read")
            .expect("interned");
        assert!(bob.contains_key(&join_rules) && !resolved.contains_key(&join_rules));

        let mut batch = Batch::new();
        let (id, chain) = state::write_diff(
            &vectors.storage,
            &mut batch,
            Some((bob_snapshot, 0)),
            &bob,
            &resolved,
        );
        vectors.commit(batch);
        assert_eq!(chain, 1);
        assert_eq!(state::load(&vectors.storage, id).expect("load"), resolved);
        assert_eq!(state::lookup(&vectors.storage, id, join_rules).expect("lookup"), None);
    }

    #[test]
    fn one_state_or_the_same_state_twice_resolves_to_itself() {
        let vectors = Vectors::load(&[
            "bootstrap-public-chat.json",
            "topic-vs-ban-common.json",
            "topic-vs-ban-alice.json",
            "topic-vs-ban-bob.json",
        ]);
        let (after, _) = vectors.resolve_iteratively();
        for snapshot in after.values() {
            let state = state::load(&vectors.storage, *snapshot).expect("load");
            assert_eq!(vectors.resolve(&[*snapshot]), state);
            assert_eq!(vectors.resolve(&[*snapshot, *snapshot]), state);
        }
        assert!(vectors.resolve(&[]).is_empty());
    }

    #[test]
    fn the_order_of_the_states_does_not_matter() {
        let vectors = Vectors::load(&[
            "bootstrap-public-chat.json",
            "ban-vs-power-levels-alice.json",
            "ban-vs-power-levels-bob.json",
            "concurrent-joins-charlie.json",
            "concurrent-joins-ella.json",
        ]);
        let (after, _) = vectors.resolve_iteratively();
        let snapshots: Vec<u64> = after.values().copied().collect();
        let mut runner = TestRunner::new(ProptestConfig::with_cases(24));
        runner
            .run(
                &sample::subsequence(snapshots.clone(), 2..=4).prop_shuffle().prop_flat_map(
                    |chosen| {
                        let len = chosen.len();
                        (Just(chosen), Just((0..len).collect::<Vec<_>>()).prop_shuffle())
                    },
                ),
                |(chosen, order)| {
                    let reordered: Vec<u64> = order.iter().map(|index| chosen[*index]).collect();
                    prop_assert_eq!(vectors.resolve(&chosen), vectors.resolve(&reordered));
                    Ok(())
                },
            )
            .expect("the same resolution in any order");
    }

    #[test]
    fn a_rejected_auth_event_is_not_honoured() {
        let vectors =
            Vectors::load(&["bootstrap-public-chat.json", "concurrent-joins-charlie.json"]);
        let bootstrap: Vec<OwnedEventId> =
            vectors.pdus[..vectors.pdus.len() - 1].iter().map(|pdu| pdu.event_id.clone()).collect();
        let without = vectors.state_of(&bootstrap);
        let charlie = vectors.pdus.last().expect("charlie's join");
        let mut with = without.clone();
        with.insert(vectors.key_of(charlie), vectors.short(charlie.event_id.as_str()));
        let snapshots = [vectors.snapshot(&without), vectors.snapshot(&with)];
        assert_eq!(vectors.resolve(&snapshots), with, "the public room lets charlie join");

        // The join rules that let charlie in were rejected: his join has nothing to pass on.
        let join_rules = vectors.short("$00-m-room-join_rules");
        let mut batch = Batch::new();
        vectors.put_status(&mut batch, join_rules, EventStatus::Rejected);
        vectors.commit(batch);
        assert!(res_event(&vectors.storage, join_rules).expect("read").expect("stored").rejected);
        let resolved = vectors.resolve(&snapshots);
        assert!(!resolved.contains_key(&vectors.key_of(charlie)), "{resolved:?}");
    }

    #[test]
    fn an_event_without_its_meta_fails_the_resolution_instead_of_dropping_out() {
        let vectors =
            Vectors::load(&["bootstrap-public-chat.json", "concurrent-joins-charlie.json"]);
        let bootstrap: Vec<OwnedEventId> =
            vectors.pdus[..vectors.pdus.len() - 1].iter().map(|pdu| pdu.event_id.clone()).collect();
        let without = vectors.state_of(&bootstrap);
        let charlie = vectors.pdus.last().expect("charlie's join");
        let charlie_short = vectors.short(charlie.event_id.as_str());
        let mut with = without.clone();
        with.insert(vectors.key_of(charlie), charlie_short);
        let snapshots = [vectors.snapshot(&without), vectors.snapshot(&with)];
        let mut batch = Batch::new();
        EVENT_META_TABLE.delete(&mut batch, &charlie_short);
        vectors.commit(batch);

        let error = resolve(&vectors.storage, &vectors.rules, &snapshots).expect_err("damage");
        assert_eq!(error.status(), StatusCode::INTERNAL_SERVER_ERROR);
        assert!(error.to_string().contains("without its event or its meta"), "{error}");
    }

    #[test]
    fn a_stored_chain_stands_for_the_walk_below_it() {
        let vectors = Vectors::load(&["bootstrap-public-chat.json"]);
        let bob = vectors.short("$00-m-room-member-join-bob");
        let power_levels = vectors.short("$00-m-room-power_levels");
        let bob_pdu = vectors.pdus.iter().find(|pdu| pdu.event_id.as_str().ends_with("join-bob"));
        assert!(
            bob_pdu
                .expect("bob")
                .auth_events
                .iter()
                .any(|id| id.as_str() == "$00-m-room-power_levels")
        );
        // A marker no walk could find: its presence shows the row was used.
        let marker = 999_999;
        let mut batch = Batch::new();
        AUTH_CHAINS_TABLE.put(&mut batch, &power_levels, &AuthChain::new(vec![marker]));
        vectors.commit(batch);
        let chain = AuthChains::new(&vectors.storage).of(bob).expect("walk");
        assert!(chain.contains(marker) && chain.contains(power_levels), "{chain:?}");
    }

    #[test]
    fn auth_chains_are_walked_bounded_and_read_back_from_their_rows() {
        let vectors = Vectors::load(&["bootstrap-public-chat.json"]);
        let bob = vectors.short("$00-m-room-member-join-bob");
        let mut chains = AuthChains::new(&vectors.storage);
        let chain = chains.of(bob).expect("walk");
        let expected: Vec<u64> = [
            "$00-m-room-create",
            "$00-m-room-member-join-alice",
            "$00-m-room-power_levels",
            "$00-m-room-join_rules",
        ]
        .iter()
        .map(|id| vectors.short(id))
        .collect();
        assert_eq!(chain, AuthChain::new(expected));
        let walked = chains.into_walked();
        assert_eq!(walked, vec![(bob, chain.clone())]);

        // Over the bound: an internal error, not a partial chain.
        let error = AuthChains::with_limit(&vectors.storage, 2).of(bob).expect_err("bounded");
        assert_eq!(error.status(), StatusCode::INTERNAL_SERVER_ERROR);
        assert!(error.to_string().contains("passed 2 events"), "{error}");

        // A stored row is the chain: the walk does not happen (the row says otherwise).
        let resolution = Resolution { state: StateMap::new(), walked_auth_chains: walked };
        let mut batch = Batch::new();
        resolution.store_auth_chains(&mut batch);
        AUTH_CHAINS_TABLE.put(
            &mut batch,
            &vectors.short("$01-m-room-power_levels"),
            &AuthChain::new(vec![1]),
        );
        vectors.commit(batch);
        assert_eq!(
            AUTH_CHAINS_TABLE.get(vectors.storage.engine(), &bob).expect("read"),
            Some(chain)
        );
        let row = AuthChains::with_limit(&vectors.storage, 0)
            .of(vectors.short("$01-m-room-power_levels"))
            .expect("read, not walked");
        assert_eq!(row, AuthChain::new(vec![1]));
    }

    #[test]
    fn a_resolution_over_the_walk_bound_is_an_internal_error() {
        let vectors = Vectors::load(&[
            "bootstrap-public-chat.json",
            "topic-vs-power-levels-alice.json",
            "topic-vs-power-levels-bob.json",
        ]);
        let (after, _) = vectors.resolve_iteratively();
        let alice = after[&vectors.pdus[vectors.pdus.len() - 2].event_id];
        let bob = after[&vectors.pdus[vectors.pdus.len() - 1].event_id];
        assert!(resolve_with_limit(&vectors.storage, &vectors.rules, &[alice, bob], 100).is_ok());
        let error = resolve_with_limit(&vectors.storage, &vectors.rules, &[alice, bob], 2)
            .expect_err("bounded");
        assert_eq!(error.status(), StatusCode::INTERNAL_SERVER_ERROR);
    }

    #[test]
    fn walks_over_a_cyclic_auth_graph_end() {
        // Room versions 1 and 2 let a server pick event ids, so it can make auth events
        // that reference each other.
        let vectors = Vectors::load(&["bootstrap-public-chat.json"]);
        let event = |id: &str, auth: &str| {
            let json = serde_json::json!({
                "event_id": id, "room_id": "!room:example.com", "sender": "@alice:example.com",
                "type": "m.room.topic", "state_key": id, "origin_server_ts": 1,
                "content": {}, "prev_events": [], "auth_events": [auth],
            });
            let Ok(CanonicalJsonValue::Object(object)) = CanonicalJsonValue::try_from(json) else {
                panic!("canonical");
            };
            Pdu::from_json(object).expect("parses")
        };
        let cycle = [event("$a:x", "$b:x"), event("$b:x", "$c:x"), event("$c:x", "$a:x")];
        let mut batch = Batch::new();
        let mut shorts = Vec::new();
        for pdu in &cycle {
            let short = vectors.storage.interner().allocate();
            Interner::record(&mut batch, Namespace::EventId, pdu.event_id.as_bytes(), short);
            PDUS_TABLE.put(&mut batch, &short, &pdu.to_bytes());
            shorts.push(short);
        }
        vectors.commit(batch);
        let chain = AuthChains::new(&vectors.storage).of(shorts[0]).expect("walk ends");
        assert_eq!(chain, AuthChain::new(shorts.clone()));
        let conflicted: HashSet<u64> = [shorts[0], shorts[2]].into_iter().collect();
        let subgraph =
            auth_chain::conflicted_subgraph(&vectors.storage, &conflicted, 100).expect("ends");
        assert_eq!(subgraph, shorts.iter().copied().collect());
    }

    #[test]
    fn the_conflicted_subgraph_holds_the_paths_between_conflicted_events() {
        // Problem B (v12): eve's and zara's states conflict; what lies between the
        // conflicted events on auth paths is the subgraph, and nothing unrelated.
        let vectors = Vectors::load(&["MSC4297-problem-B/pdus-v12.json"]);
        let maps = state_maps(&PROBLEM_B);
        let (eve, zara) = (vectors.state_of(&maps[0]), vectors.state_of(&maps[1]));
        let conflicted: HashSet<u64> = eve
            .iter()
            .chain(&zara)
            .filter(|(key, event)| eve.get(key) != Some(event) || zara.get(key) != Some(event))
            .map(|(_, event)| *event)
            .collect();
        let subgraph =
            auth_chain::conflicted_subgraph(&vectors.storage, &conflicted, 1000).expect("walk");
        // The reference: every event reachable from a conflicted event that reaches one.
        let pdus: HashMap<u64, &Pdu> =
            vectors.pdus.iter().map(|pdu| (vectors.shorts[&pdu.event_id], pdu)).collect();
        let auth = |event: u64| -> Vec<u64> {
            pdus[&event].auth_events.iter().map(|id| vectors.shorts[id]).collect()
        };
        let reachable = |from: u64| -> HashSet<u64> {
            let mut seen = HashSet::new();
            let mut stack = auth(from);
            while let Some(next) = stack.pop() {
                if seen.insert(next) {
                    stack.extend(auth(next));
                }
            }
            seen
        };
        let expected: HashSet<u64> = pdus
            .keys()
            .copied()
            .filter(|event| {
                let below_conflicted =
                    conflicted.iter().any(|c| *c == *event || reachable(*c).contains(event));
                let above_conflicted =
                    conflicted.iter().any(|c| *c == *event || reachable(*event).contains(c));
                let some_edge = conflicted.iter().any(|c| reachable(*c).contains(event))
                    || conflicted.iter().any(|c| reachable(*event).contains(c));
                below_conflicted && above_conflicted && some_edge
            })
            .collect();
        assert!(!subgraph.is_empty());
        assert_eq!(subgraph, expected);
    }

    #[test]
    fn resolution_on_the_blocking_pool_gives_the_same_state() {
        let vectors = Vectors::load(&[
            "bootstrap-public-chat.json",
            "topic-vs-power-levels-alice.json",
            "topic-vs-power-levels-bob.json",
        ]);
        let (after, resolved) = vectors.resolve_iteratively();
        let leaves = [
            after[&vectors.pdus[vectors.pdus.len() - 2].event_id],
            after[&vectors.pdus[vectors.pdus.len() - 1].event_id],
        ];
        let blocking = vectors
            .runtime
            .block_on(resolve_blocking(
                Arc::clone(&vectors.storage),
                vectors.rules.clone(),
                leaves.to_vec(),
            ))
            .expect("resolution");
        assert_eq!(blocking.state, resolved);
    }
}
