//! State resolution over rooms built by another implementation: forks of the fake-room kit's
//! rooms, verified like any received event, stored, and resolved by `rooms::state_res`.
//!
//! Joining such rooms and exchanging messages in them waits for remote joins (issue 23 S10).

use std::{collections::BTreeMap, sync::Arc};

use ruma::{OwnedEventId, RoomVersionId};
use serde_json::json;
use tuwunel::{
    federation::events::verify_batch,
    rooms::{pdu::state_key_bytes, state, state_res},
    storage::{
        Batch, EngineOptions, Namespace, Storage,
        codec::Json,
        rooms::{EVENT_META_TABLE, EventMeta, EventStatus, PDUS_TABLE},
    },
};

use crate::{
    fake_room::{EventSpec, FakeKeys, FakeRoom, FakeRooms},
    testbed::{Ca, FakeServer},
};

/// A kit room's events in a database of our own.
struct Stored {
    storage: Arc<Storage>,
    _dir: tempfile::TempDir,
    shorts: BTreeMap<OwnedEventId, u64>,
}

impl Stored {
    /// Verifies every event of `room` as a received one and stores it with its state key.
    async fn load(room: &FakeRoom, keys: &FakeKeys) -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        let storage =
            Arc::new(Storage::open(&EngineOptions::for_path(dir.path())).expect("open").0);
        let events = room.events();
        let verified =
            verify_batch(keys, &room.version, events.iter().map(|event| event.raw()).collect())
                .await;
        let mut shorts = BTreeMap::new();
        let mut batch = Batch::new();
        for (event, verified) in events.iter().zip(verified) {
            let pdu = verified.expect("the kit's events verify").pdu;
            assert_eq!(pdu.event_id, event.id);
            let short = storage
                .interner()
                .intern(&storage, Namespace::EventId, pdu.event_id.as_bytes())
                .await
                .expect("intern");
            PDUS_TABLE.put(&mut batch, &short, &pdu.to_bytes());
            let meta = EventMeta {
                room: 1,
                position: 0,
                state_before: 0,
                state_after: 0,
                redacted: false,
                transaction: None,
                has_children: None,
                status: EventStatus::Timeline,
                backfill: None,
            };
            EVENT_META_TABLE.put(&mut batch, &short, &Json(meta));
            if let Some(state_key) = &pdu.state_key {
                let key = state_key_bytes(&pdu.kind.to_string(), state_key);
                storage.interner().intern(&storage, Namespace::StateKey, &key).await.expect("key");
            }
            shorts.insert(pdu.event_id.clone(), short);
        }
        storage.writer().commit(batch).await.expect("commit");
        Self { storage, _dir: dir, shorts }
    }

    /// The state after `head` as the kit's room has it, stored as a snapshot.
    async fn snapshot(&self, room: &FakeRoom, head: &OwnedEventId) -> u64 {
        let mut after = room.state_before(head);
        let event = room.event(head).expect("known");
        if let Some(key) = event.state_key() {
            after.insert((event.kind().to_owned(), key.to_owned()), head.clone());
        }
        let mut map = state::StateMap::new();
        for ((kind, key), id) in after {
            let key = state::short_key(&self.storage, &kind, &key).expect("read").expect("key");
            map.insert(key, self.shorts[&id]);
        }
        let mut batch = Batch::new();
        let (id, _) =
            state::write_diff(&self.storage, &mut batch, None, &state::StateMap::new(), &map);
        self.storage.writer().commit(batch).await.expect("commit");
        id
    }

    fn event_at(&self, resolved: &state::StateMap, kind: &str, key: &str) -> Option<u64> {
        let key = state::short_key(&self.storage, kind, key).expect("read")?;
        resolved.get(&key).copied()
    }
}

#[tokio::test]
async fn forks_of_version_1_and_2_rooms_resolve_by_their_versions_algorithm() {
    let ca = Ca::new();
    let kit = FakeRooms::new();
    let fake = FakeServer::serving(&ca, kit.routes()).await;
    let keys = FakeKeys::of(&fake);
    let (alice, bob) = (fake.user_id("alice"), fake.user_id("bob"));
    for version in [RoomVersionId::V1, RoomVersionId::V2] {
        let room = kit.create_room(&fake, version.clone(), "alice");
        room.send(EventSpec::member(&bob, "join"));
        let levels = |bob_level: u64| {
            json!({"users": {&alice: 100, &bob: bob_level}, "users_default": 0,
                "events_default": 0, "state_default": 50})
        };
        let fork = room.send(EventSpec::state(&alice, "m.room.power_levels", "", levels(60)));
        let depth = fork.depth();
        // Alice demotes bob on one branch and then sets the topic; on the other, bob (still
        // 60 there) changes the power levels and, deeper, the topic.
        let demote = room.send(
            EventSpec::state(&alice, "m.room.power_levels", "", levels(0))
                .prevs(&[&fork.id])
                .depth(depth + 1),
        );
        let alice_topic = room.send(
            EventSpec::state(&alice, "m.room.topic", "", json!({"topic": "alice"}))
                .prevs(&[&demote.id])
                .depth(depth + 2),
        );
        let bob_levels = room.send(
            EventSpec::state(&bob, "m.room.power_levels", "", levels(60))
                .prevs(&[&fork.id])
                .depth(depth + 1),
        );
        let bob_topic = room.send(
            EventSpec::state(&bob, "m.room.topic", "", json!({"topic": "bob"}))
                .prevs(&[&bob_levels.id])
                .depth(depth + 5),
        );
        assert_eq!(room.heads(), [alice_topic.id.clone(), bob_topic.id.clone()]);

        let stored = Stored::load(&room, &keys).await;
        let left = stored.snapshot(&room, &alice_topic.id).await;
        let right = stored.snapshot(&room, &bob_topic.id).await;
        let rules = version.rules().expect("known version");
        let resolved =
            state_res::resolve(&stored.storage, &rules, &[left, right]).expect("resolves").state;
        assert_eq!(
            resolved,
            state_res::resolve(&stored.storage, &rules, &[right, left]).expect("resolves").state,
            "{version}: the order of the states does not matter"
        );
        // Version 1 (its own algorithm) and version 2 (state resolution v2, over events of
        // version 1's format) agree here: bob's power levels are not allowed once he is
        // demoted, whatever their order; his topic, though deeper, is not allowed with the
        // resolved power levels.
        assert_eq!(
            stored.event_at(&resolved, "m.room.power_levels", ""),
            Some(stored.shorts[&demote.id]),
            "{version}"
        );
        assert_eq!(
            stored.event_at(&resolved, "m.room.topic", ""),
            Some(stored.shorts[&alice_topic.id]),
            "{version}"
        );
        // Everything both branches agree on stays.
        for ((kind, key), id) in room.state_before(&fork.id) {
            if kind != "m.room.power_levels" {
                assert_eq!(stored.event_at(&resolved, &kind, &key), Some(stored.shorts[&id]));
            }
        }
        stored.storage.close().await;
    }
}
