//! The room DAG beyond the live timeline, as other servers' events need it: events referenced
//! but not held (backward extremities), memoised auth chains, backfilled history, redactions
//! waiting for their target, and PDUs acknowledged to their sender but not processed yet.
//! Only federated traffic writes these tables; a room used only by local clients never does.

use ruma::OwnedEventId;
use serde::{Deserialize, Serialize};

use super::{
    catalogue::{
        AUTH_CHAINS, BACKFILL_TIMELINE, BACKWARD_EXTREMITIES, INBOUND_PDUS, PENDING_REDACTIONS,
    },
    codec::{CodecError, Json, Value},
    table::Table,
};

/// The short ids of an event's whole auth chain (the event itself excluded), sorted and
/// without duplicates, so chains merge and compare in one pass. Stored as big-endian words:
/// a 50 000-member room's chains are large, and JSON would triple them.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct AuthChain(Vec<u64>);

impl AuthChain {
    /// The chain made of `events`, in any order and with repeats.
    pub fn new(mut events: Vec<u64>) -> Self {
        events.sort_unstable();
        events.dedup();
        Self(events)
    }

    pub fn events(&self) -> &[u64] {
        &self.0
    }

    pub fn contains(&self, event: u64) -> bool {
        self.0.binary_search(&event).is_ok()
    }
}

impl Value for AuthChain {
    fn encode_value(&self) -> Vec<u8> {
        self.0.iter().flat_map(|event| event.to_be_bytes()).collect()
    }

    fn decode_value(bytes: &[u8]) -> Result<Self, CodecError> {
        if !bytes.len().is_multiple_of(8) {
            return Err(CodecError("malformed auth chain"));
        }
        let events: Vec<u64> = bytes
            .chunks_exact(8)
            .map(|word| {
                let mut buffer = [0u8; 8];
                buffer.copy_from_slice(word);
                u64::from_be_bytes(buffer)
            })
            .collect();
        // Written sorted by `new`; a row that is not is damaged, and a binary search over it
        // would answer wrongly.
        if !events.windows(2).all(|pair| pair[0] < pair[1]) {
            return Err(CodecError("unsorted auth chain"));
        }
        Ok(Self(events))
    }
}

/// A PDU from another server that its `/send` transaction acknowledged before the room's
/// actor finished with it; replayed at startup.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct InboundPdu {
    /// The server whose transaction carried it.
    pub origin: String,
    /// The PDU as received (canonical JSON text).
    pub pdu: String,
    pub received_ms: u64,
}

/// `(short room, event id) -> depth hint`: prev events of accepted events that this server
/// does not hold, where backfill and `get_missing_events` start.
pub const BACKWARD_EXTREMITIES_TABLE: Table<(u64, OwnedEventId), u64> =
    Table::new(BACKWARD_EXTREMITIES);
/// `short event -> its auth chain`. Rows never change once written (an event's auth events
/// are fixed by its hash).
pub const AUTH_CHAINS_TABLE: Table<u64, AuthChain> = Table::new(AUTH_CHAINS);
/// `(short room, backfill seq) -> short event`: history older than the room's first live
/// position, the seq growing towards older events.
pub const BACKFILL_TIMELINE_TABLE: Table<(u64, u64), u64> = Table::new(BACKFILL_TIMELINE);
/// `(target event id, redaction short event) -> ()`: redactions whose target is unknown or
/// not yet validated, applied when the target is accepted.
pub const PENDING_REDACTIONS_TABLE: Table<(OwnedEventId, u64), ()> = Table::new(PENDING_REDACTIONS);
/// `(short room, arrival id) -> the PDU`: acknowledged, not yet processed.
pub const INBOUND_PDUS_TABLE: Table<(u64, u64), Json<InboundPdu>> = Table::new(INBOUND_PDUS);

#[cfg(test)]
mod tests {
    use std::ops::ControlFlow;

    use ruma::owned_event_id;

    use super::*;
    use crate::storage::{Batch, Direction, EngineOptions, Storage, codec::prefix};

    #[test]
    fn auth_chains_are_sorted_sets_and_round_trip() {
        let chain = AuthChain::new(vec![9, 3, 3, 7, 1]);
        assert_eq!(chain.events(), [1, 3, 7, 9]);
        assert!(chain.contains(7) && !chain.contains(8));
        assert_eq!(AuthChain::decode_value(&chain.encode_value()), Ok(chain));
        assert_eq!(AuthChain::decode_value(&[]), Ok(AuthChain::default()));
        assert!(AuthChain::decode_value(&[0; 7]).is_err());
        let unsorted: Vec<u8> = [2u64, 1].iter().flat_map(|word| word.to_be_bytes()).collect();
        assert!(AuthChain::decode_value(&unsorted).is_err());
    }

    #[tokio::test]
    async fn the_tables_store_and_scan_their_rows_per_room() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (storage, _) = Storage::open(&EngineOptions::for_path(dir.path())).expect("open");
        let missing = owned_event_id!("$missing:example.org");
        let target = owned_event_id!("$target:example.org");
        let pdu = InboundPdu { origin: "other.example".into(), pdu: "{}".into(), received_ms: 5 };
        let mut batch = Batch::new();
        BACKWARD_EXTREMITIES_TABLE.put(&mut batch, &(1, missing.clone()), &12);
        BACKWARD_EXTREMITIES_TABLE.put(&mut batch, &(2, missing.clone()), &3);
        AUTH_CHAINS_TABLE.put(&mut batch, &40, &AuthChain::new(vec![2, 1]));
        for seq in 1..=3 {
            BACKFILL_TIMELINE_TABLE.put(&mut batch, &(1, seq), &(100 + seq));
        }
        PENDING_REDACTIONS_TABLE.put(&mut batch, &(target.clone(), 77), &());
        INBOUND_PDUS_TABLE.put(&mut batch, &(1, 1), &Json(pdu.clone()));
        storage.writer().commit(batch).await.expect("commit");

        let engine = storage.engine();
        let mut extremities = Vec::new();
        BACKWARD_EXTREMITIES_TABLE
            .scan(engine, &prefix(&1u64), None, Direction::Forward, |(_, id), depth| {
                extremities.push((id, depth));
                ControlFlow::Continue(())
            })
            .expect("scan");
        assert_eq!(extremities, [(missing, 12)]);
        assert_eq!(
            AUTH_CHAINS_TABLE.get(engine, &40).expect("read"),
            Some(AuthChain::new(vec![1, 2]))
        );
        // Backfill pages from the newest backfilled event towards older ones.
        let mut older = Vec::new();
        BACKFILL_TIMELINE_TABLE
            .scan(engine, &prefix(&1u64), None, Direction::Forward, |_, short| {
                older.push(short);
                ControlFlow::Continue(())
            })
            .expect("scan");
        assert_eq!(older, [101, 102, 103]);
        let mut redactions = Vec::new();
        PENDING_REDACTIONS_TABLE
            .scan_keys(engine, &prefix(&target), None, Direction::Forward, |(_, redaction)| {
                redactions.push(redaction);
                ControlFlow::Continue(())
            })
            .expect("scan");
        assert_eq!(redactions, [77]);
        assert_eq!(INBOUND_PDUS_TABLE.get(engine, &(1, 1)).expect("read"), Some(Json(pdu)));
        storage.close().await;
    }
}
