//! Events other servers send (PDUs), from their JSON to a [`Pdu`] this server may store: the
//! first three of the spec's "checks performed on receipt of a PDU", those that need no room
//! state.
//!
//! 1. Format: the room version's event format and the spec's size limits (ruma's
//!    `check_pdu_format`: 65 535 bytes, at most 20 `prev_events` and 10 `auth_events`,
//!    identifier lengths, a non-negative depth, version 12's create event rules).
//! 2. Signatures: every server that must have signed the event has (ruma's
//!    `required_server_signatures_to_verify_event`: the sender's server, in versions 1 and 2
//!    the event id's server, from version 8 a restricted join's authorising server), with a
//!    key that was valid when the event says it was made; room versions 1 to 4 do not enforce
//!    key validity, so any key the server ever had counts there.
//! 3. Hashes: an event whose content hash does not match is kept in its redacted form.
//!
//! An event failing 1 or 2 is dropped: nothing of it may be stored. What passes comes out as a
//! [`Pdu`] whose stored form is the event as received, less `unsigned` (which no signature
//! covers, so another server could put anything there, `redacted_because` included), plus
//! the event id (computed from the reference hash from version 3 on).
//!
//! A batch fetches the keys it needs concurrently (at most [`KEY_FETCH_CONCURRENCY`] at once)
//! and checks the signatures on the blocking pool. The auth checks (4 to 6) belong to the
//! room's actor.

use std::{collections::BTreeMap, fmt, future::Future, sync::Arc};

use futures_util::{StreamExt, stream};
use ruma::{
    CanonicalJsonObject, CanonicalJsonValue, EventId, OwnedEventId, OwnedServerName, RoomVersionId,
    ServerName,
    room_version_rules::{EventIdFormatVersion, RoomVersionRules},
    serde::Base64,
    signatures::{PublicKeyMap, Verified},
};
use serde_json::value::RawValue as RawJsonValue;

use super::keys::{KeyError, ServerKeys};
use crate::rooms::pdu::Pdu;

/// How many servers' keys one batch fetches at once.
pub const KEY_FETCH_CONCURRENCY: usize = 8;

/// An event that passed the checks.
#[derive(Debug, Clone)]
pub struct VerifiedPdu {
    /// The event as it is to be stored (redacted when its content hash did not match).
    pub pdu: Pdu,
    /// The content hash did not match: [`Self::pdu`] is the redacted event.
    pub redacted: bool,
}

/// Why an event was dropped.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refusal {
    /// Not an event in its room version's format, or over the size limits (check 1).
    Format(String),
    /// The keys of a server that must have signed it could not be had.
    Keys(String),
    /// A signature that must be there is missing or does not verify (check 2).
    Signature(String),
    /// The check itself failed (a panic on the blocking pool).
    Internal(String),
}

impl fmt::Display for Refusal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Format(reason) => write!(f, "Invalid event: {reason}"),
            Self::Keys(reason) => write!(f, "Could not get the signing keys: {reason}"),
            Self::Signature(reason) => write!(f, "Signature check failed: {reason}"),
            Self::Internal(reason) => write!(f, "The event could not be checked: {reason}"),
        }
    }
}

/// Where the verifier gets servers' public keys: [`ServerKeys`] in the server, a fixed map in
/// tests.
pub trait EventKeys: Sync {
    /// The keys of `server` that may have signed an event dated `at_ms` (any key the server
    /// ever had unless `enforce_validity`), fetching them when none of `key_ids` (the key
    /// ids the event's signatures name) is known.
    fn event_keys(
        &self,
        server: &ServerName,
        at_ms: u64,
        enforce_validity: bool,
        key_ids: &[String],
    ) -> impl Future<Output = Result<BTreeMap<String, Base64>, KeyError>> + Send;
}

impl EventKeys for ServerKeys {
    fn event_keys(
        &self,
        server: &ServerName,
        at_ms: u64,
        enforce_validity: bool,
        key_ids: &[String],
    ) -> impl Future<Output = Result<BTreeMap<String, Base64>, KeyError>> + Send {
        self.keys_for_event(server, at_ms, enforce_validity, key_ids)
    }
}

impl<K: EventKeys + Send> EventKeys for Arc<K> {
    fn event_keys(
        &self,
        server: &ServerName,
        at_ms: u64,
        enforce_validity: bool,
        key_ids: &[String],
    ) -> impl Future<Output = Result<BTreeMap<String, Base64>, KeyError>> + Send {
        self.as_ref().event_keys(server, at_ms, enforce_validity, key_ids)
    }
}

/// An event that passed the format check and has an id, waiting for its signatures.
struct Prepared {
    object: CanonicalJsonObject,
    event_id: OwnedEventId,
    origin_server_ts: u64,
    /// The servers that must have signed it, with the key ids their signatures name.
    signers: BTreeMap<OwnedServerName, Vec<String>>,
}

/// Checks a batch of events of one room of `version` (format, signatures, hashes) and turns
/// those that pass into [`Pdu`]s; the results are in the order of `pdus`.
pub async fn verify_batch<K: EventKeys>(
    keys: &K,
    version: &RoomVersionId,
    pdus: Vec<Box<RawJsonValue>>,
) -> Vec<Result<VerifiedPdu, Refusal>> {
    let Some(rules) = version.rules() else {
        let refusal = Refusal::Format(format!("room version {version} is not supported"));
        return pdus.iter().map(|_| Err(refusal.clone())).collect();
    };
    let prepared: Vec<Result<Prepared, Refusal>> =
        pdus.iter().map(|pdu| prepare(pdu.get(), &rules)).collect();

    // One key lookup per (server, date): events of a batch share their servers, and a
    // stored key document answers without the network.
    let wanted: BTreeMap<(OwnedServerName, u64), Vec<String>> = prepared
        .iter()
        .flatten()
        .flat_map(|event| {
            event.signers.iter().map(|(server, key_ids)| {
                ((server.clone(), event.origin_server_ts), key_ids.clone())
            })
        })
        .collect();
    let enforce = rules.enforce_key_validity;
    let found: BTreeMap<(OwnedServerName, u64), Result<BTreeMap<String, Base64>, KeyError>> =
        stream::iter(wanted)
            .map(|((server, at_ms), key_ids)| async move {
                let found = keys.event_keys(&server, at_ms, enforce, &key_ids).await;
                ((server, at_ms), found)
            })
            .buffer_unordered(KEY_FETCH_CONCURRENCY)
            .collect()
            .await;

    let jobs: Vec<Result<(Prepared, PublicKeyMap), Refusal>> = prepared
        .into_iter()
        .map(|event| {
            let event = event?;
            let mut key_map = PublicKeyMap::new();
            for server in event.signers.keys() {
                match found.get(&(server.clone(), event.origin_server_ts)) {
                    Some(Ok(server_keys)) => {
                        key_map.insert(server.to_string(), server_keys.clone());
                    }
                    Some(Err(error)) => {
                        return Err(Refusal::Keys(format!("keys of {server}: {error}")));
                    }
                    None => return Err(Refusal::Internal(format!("no key lookup for {server}"))),
                }
            }
            Ok((event, key_map))
        })
        .collect();
    let count = jobs.len();
    let checked = tokio::task::spawn_blocking(move || {
        jobs.into_iter()
            .map(|job| job.and_then(|(event, key_map)| check_signatures(event, &key_map, &rules)))
            .collect::<Vec<_>>()
    })
    .await;
    checked.unwrap_or_else(|error| {
        tracing::error!(%error, "checking event signatures failed");
        (0..count)
            .map(|_| Err(Refusal::Internal("the signature check failed".to_owned())))
            .collect()
    })
}

/// The id of an event in a room with `rules`: the `event_id` field in versions 1 and 2, `$`
/// and the reference hash from version 3 on (an `event_id` field there is ignored, as the
/// event's signer did not hash one).
pub fn event_id(
    object: &CanonicalJsonObject,
    rules: &RoomVersionRules,
) -> Result<OwnedEventId, Refusal> {
    if matches!(rules.event_id_format, EventIdFormatVersion::V1) {
        return match object.get("event_id") {
            Some(CanonicalJsonValue::String(id)) => EventId::parse(id.as_str())
                .ok()
                .filter(|id| id.server_name().is_some())
                .ok_or_else(|| Refusal::Format(format!("`{id}` is not a valid event id"))),
            _ => Err(Refusal::Format("the event has no `event_id`".to_owned())),
        };
    }
    let mut object = object.clone();
    object.remove("event_id");
    let hash = ruma::signatures::reference_hash(&object, rules)
        .map_err(|error| Refusal::Format(format!("no reference hash: {error}")))?;
    EventId::new_v2_or_v3(&hash).map_err(|error| Refusal::Format(format!("event id: {error}")))
}

/// Check 1 and what check 2 needs to know before it can fetch keys.
fn prepare(json: &str, rules: &RoomVersionRules) -> Result<Prepared, Refusal> {
    let mut object: CanonicalJsonObject = serde_json::from_str(json)
        .map_err(|error| Refusal::Format(format!("not canonical JSON: {error}")))?;
    ruma::state_res::check_pdu_format(&object, &rules.event_format).map_err(Refusal::Format)?;
    let event_id = event_id(&object, rules)?;
    // Nothing signs `unsigned`; what this server keeps there it fills in itself.
    object.remove("unsigned");
    if !matches!(rules.event_id_format, EventIdFormatVersion::V1) {
        object.remove("event_id");
    }
    let origin_server_ts = match object.get("origin_server_ts") {
        Some(CanonicalJsonValue::Integer(ts)) => u64::try_from(i64::from(*ts))
            .map_err(|_| Refusal::Format("`origin_server_ts` is negative".to_owned()))?,
        _ => return Err(Refusal::Format("`origin_server_ts` is not an integer".to_owned())),
    };
    let servers =
        ruma::signatures::required_server_signatures_to_verify_event(&object, &rules.signatures)
            .map_err(|error| Refusal::Format(error.to_string()))?;
    let signers = servers
        .into_iter()
        .map(|server| {
            let key_ids = signature_key_ids(&object, &server);
            (server, key_ids)
        })
        .collect();
    Ok(Prepared { object, event_id, origin_server_ts, signers })
}

/// The key ids of `server`'s signatures on `object`.
fn signature_key_ids(object: &CanonicalJsonObject, server: &ServerName) -> Vec<String> {
    match object.get("signatures") {
        Some(CanonicalJsonValue::Object(signatures)) => match signatures.get(server.as_str()) {
            Some(CanonicalJsonValue::Object(by_server)) => by_server.keys().cloned().collect(),
            _ => Vec::new(),
        },
        _ => Vec::new(),
    }
}

/// Checks 2 and 3 of one event (CPU: the blocking pool's).
fn check_signatures(
    event: Prepared,
    key_map: &PublicKeyMap,
    rules: &RoomVersionRules,
) -> Result<VerifiedPdu, Refusal> {
    let Prepared { object, event_id, .. } = event;
    let verified = ruma::signatures::verify_event(key_map, &object, rules)
        .map_err(|error| Refusal::Signature(error.to_string()))?;
    let (mut object, redacted) = match verified {
        Verified::All => (object, false),
        Verified::Signatures => {
            let redacted = ruma::canonical_json::redact(object, &rules.redaction, None)
                .map_err(|error| Refusal::Format(format!("cannot be redacted: {error}")))?;
            (redacted, true)
        }
    };
    object.insert("event_id".to_owned(), CanonicalJsonValue::String(event_id.to_string()));
    let pdu = Pdu::from_json(object).map_err(|error| Refusal::Format(error.to_string()))?;
    Ok(VerifiedPdu { pdu, redacted })
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;

    use ruma::signatures::Ed25519KeyPair;
    use serde_json::{Value, json};

    use super::*;
    use crate::{
        federation::keys::valid_at,
        storage::federation::{ServerKeysRecord, StoredVerifyKey},
    };

    /// Keys of a few servers, as stored records, and the lookups made.
    #[derive(Default)]
    struct FixedKeys {
        records: BTreeMap<String, ServerKeysRecord>,
        lookups: Mutex<Vec<(String, u64)>>,
    }

    impl FixedKeys {
        fn with(mut self, server: &str, pair: &Ed25519KeyPair, valid_until_ts: u64) -> Self {
            let record = self.records.entry(server.to_owned()).or_insert(ServerKeysRecord {
                keys: BTreeMap::new(),
                valid_until_ts,
                fetched_at: 0,
                document: Value::Null,
            });
            record.keys.insert(
                format!("ed25519:{}", pair.version()),
                StoredVerifyKey {
                    key: Base64::<ruma::serde::base64::Standard, _>::new(
                        pair.public_key().to_vec(),
                    )
                    .encode(),
                    valid_until_ts,
                    expired: false,
                },
            );
            self
        }
    }

    impl EventKeys for FixedKeys {
        async fn event_keys(
            &self,
            server: &ServerName,
            at_ms: u64,
            enforce_validity: bool,
            _key_ids: &[String],
        ) -> Result<BTreeMap<String, Base64>, KeyError> {
            self.lookups.lock().expect("lookups").push((server.to_string(), at_ms));
            let record = self
                .records
                .get(server.as_str())
                .ok_or_else(|| KeyError(format!("{server} is unreachable")))?;
            Ok(valid_at(record, at_ms, enforce_validity))
        }
    }

    fn pair(version: &str) -> Ed25519KeyPair {
        Ed25519KeyPair::from_der(&Ed25519KeyPair::generate(), version.to_owned()).expect("fixture")
    }

    const TS: u64 = 1_700_000_000_000;

    fn message(room: &str, sender: &str, body: &str) -> CanonicalJsonObject {
        object(json!({
            "type": "m.room.message",
            "room_id": room,
            "sender": sender,
            "content": { "msgtype": "m.text", "body": body },
            "origin_server_ts": TS,
            "depth": 5,
            "prev_events": ["$prev"],
            "auth_events": ["$create", "$power", "$member"],
        }))
    }

    fn object(value: Value) -> CanonicalJsonObject {
        serde_json::from_value(value).expect("fixture")
    }

    /// Hashes `event` and signs it as `server` with `key`.
    fn sign(
        mut event: CanonicalJsonObject,
        server: &str,
        key: &Ed25519KeyPair,
        version: &RoomVersionId,
    ) -> CanonicalJsonObject {
        let rules = version.rules().expect("rules");
        ruma::signatures::hash_and_sign_event(server, key, &mut event, &rules.redaction)
            .expect("fixture");
        event
    }

    /// Adds `server`'s signature to an already hashed event.
    fn countersign(
        mut event: CanonicalJsonObject,
        server: &str,
        key: &Ed25519KeyPair,
        version: &RoomVersionId,
    ) -> CanonicalJsonObject {
        let rules = version.rules().expect("rules");
        ruma::signatures::sign_event(server, key, &mut event, &rules.redaction).expect("fixture");
        event
    }

    fn raw(event: &CanonicalJsonObject) -> Box<RawJsonValue> {
        serde_json::value::to_raw_value(event).expect("fixture")
    }

    async fn verify_one(
        keys: &FixedKeys,
        version: &RoomVersionId,
        event: &CanonicalJsonObject,
    ) -> Result<VerifiedPdu, Refusal> {
        verify_batch(keys, version, vec![raw(event)]).await.pop().expect("fixture")
    }

    #[tokio::test]
    async fn a_signed_event_passes_with_its_reference_hash_id() {
        let key = pair("a1");
        let keys = FixedKeys::default().with("a.example", &key, u64::MAX);
        let version = RoomVersionId::V11;
        let mut event =
            sign(message("!r:a.example", "@u:a.example", "hi"), "a.example", &key, &version);
        // Fields no signature covers are not kept.
        event.insert(
            "unsigned".to_owned(),
            CanonicalJsonValue::Object(object(json!({"redacted_because": {"type": "x"}}))),
        );
        let verified = verify_one(&keys, &version, &event).await.expect("verified");
        assert!(!verified.redacted);
        let expected = format!(
            "${}",
            ruma::signatures::reference_hash(&event, &version.rules().expect("rules"))
                .expect("fixture")
        );
        assert_eq!(verified.pdu.event_id.as_str(), expected);
        assert_eq!(verified.pdu.content_str("body").as_deref(), Some("hi"));
        assert!(verified.pdu.redacted_because.is_none(), "unsigned was dropped");
        assert!(!verified.pdu.stored_text().contains("unsigned"));

        // A stray `event_id` in a version-3+ event changes nothing.
        event.insert("event_id".to_owned(), CanonicalJsonValue::String("$forged".to_owned()));
        let again = verify_one(&keys, &version, &event).await.expect("verified");
        assert_eq!(again.pdu.event_id.as_str(), expected);
    }

    #[tokio::test]
    async fn a_bad_or_unknown_signature_is_refused() {
        let key = pair("a1");
        let keys = FixedKeys::default().with("a.example", &key, u64::MAX);
        let version = RoomVersionId::V10;
        // Signed by another key under the same key id.
        let impostor = pair("a1");
        let forged =
            sign(message("!r:a.example", "@u:a.example", "hi"), "a.example", &impostor, &version);
        assert!(matches!(verify_one(&keys, &version, &forged).await, Err(Refusal::Signature(_))));
        // A key id the server never had.
        let unknown =
            sign(message("!r:a.example", "@u:a.example", "hi"), "a.example", &pair("zz"), &version);
        assert!(matches!(verify_one(&keys, &version, &unknown).await, Err(Refusal::Signature(_))));
        // A signed field changed afterwards.
        let mut tampered =
            sign(message("!r:a.example", "@u:a.example", "hi"), "a.example", &key, &version);
        tampered
            .insert("sender".to_owned(), CanonicalJsonValue::String("@admin:a.example".to_owned()));
        assert!(matches!(verify_one(&keys, &version, &tampered).await, Err(Refusal::Signature(_))));
        // A server whose keys cannot be had.
        let elsewhere =
            sign(message("!r:a.example", "@u:b.example", "hi"), "b.example", &key, &version);
        assert!(matches!(verify_one(&keys, &version, &elsewhere).await, Err(Refusal::Keys(_))));
    }

    #[tokio::test]
    async fn an_event_relayed_without_its_senders_signature_is_refused() {
        let (origin, victim) = (pair("o1"), pair("v1"));
        let keys = FixedKeys::default().with("origin.example", &origin, u64::MAX).with(
            "victim.example",
            &victim,
            u64::MAX,
        );
        let version = RoomVersionId::V11;
        let claimed = message("!r:origin.example", "@boss:victim.example", "send me money");
        let relayed = sign(claimed.clone(), "origin.example", &origin, &version);
        let refusal = verify_one(&keys, &version, &relayed).await.expect_err("refused");
        assert!(
            matches!(&refusal, Refusal::Signature(reason) if reason.contains("victim.example"))
        );
        // The sender's own server's signature is what counts.
        let genuine = sign(claimed, "victim.example", &victim, &version);
        verify_one(&keys, &version, &genuine).await.expect("verified");
    }

    #[tokio::test]
    async fn a_content_hash_mismatch_keeps_the_redacted_event() {
        let key = pair("a1");
        let keys = FixedKeys::default().with("a.example", &key, u64::MAX);
        for version in [RoomVersionId::V6, RoomVersionId::V11] {
            let mut event =
                sign(message("!r:a.example", "@u:a.example", "hi"), "a.example", &key, &version);
            // Content is outside what is signed, inside what is hashed.
            event.insert(
                "content".to_owned(),
                CanonicalJsonValue::Object(object(json!({"msgtype": "m.text", "body": "changed"}))),
            );
            let verified = verify_one(&keys, &version, &event).await.expect("signatures hold");
            assert!(verified.redacted, "{version}");
            assert_eq!(verified.pdu.content_value(), json!({}), "{version}");
            // The id is the same either way: the reference hash is over the redacted form.
            let expected =
                ruma::signatures::reference_hash(&event, &version.rules().expect("rules"))
                    .expect("fixture");
            assert_eq!(verified.pdu.event_id.as_str(), format!("${expected}"));
        }
    }

    /// A version-1 event: explicit id, `[id, hashes]` references.
    fn v1_event(event_id: &str, sender: &str) -> CanonicalJsonObject {
        object(json!({
            "event_id": event_id,
            "type": "m.room.message",
            "room_id": "!r:a.example",
            "sender": sender,
            "content": { "msgtype": "m.text", "body": "old" },
            "origin_server_ts": TS,
            "depth": 3,
            "prev_events": [["$p:a.example", {"sha256": "abc"}]],
            "auth_events": [["$c:a.example", {"sha256": "def"}]],
        }))
    }

    #[tokio::test]
    async fn in_versions_1_and_2_the_event_ids_server_must_sign() {
        let (a, b) = (pair("a1"), pair("b1"));
        let keys = FixedKeys::default().with("a.example", &a, 1).with("b.example", &b, 1);
        for version in [RoomVersionId::V1, RoomVersionId::V2] {
            let event = sign(v1_event("$x:b.example", "@u:a.example"), "a.example", &a, &version);
            let refusal = verify_one(&keys, &version, &event).await.expect_err("refused");
            assert!(matches!(&refusal, Refusal::Signature(reason) if reason.contains("b.example")));

            let both = countersign(event, "b.example", &b, &version);
            // Old keys (valid until 1 ms after the epoch) count: v1-v4 ignore validity.
            let verified = verify_one(&keys, &version, &both).await.expect("verified");
            assert_eq!(verified.pdu.event_id.as_str(), "$x:b.example");
            assert_eq!(verified.pdu.prev_events[0].as_str(), "$p:a.example");

            let no_id = sign(v1_event("$x:b.example", "@u:a.example"), "a.example", &a, &version);
            let mut no_id = countersign(no_id, "b.example", &b, &version);
            no_id.remove("event_id");
            assert!(matches!(verify_one(&keys, &version, &no_id).await, Err(Refusal::Format(_))));
        }
    }

    #[tokio::test]
    async fn from_version_5_keys_must_have_been_valid_when_the_event_was_made() {
        let key = pair("a1");
        let keys = FixedKeys::default().with("a.example", &key, TS - 1);
        for (version, passes) in [(RoomVersionId::V4, true), (RoomVersionId::V5, false)] {
            let event =
                sign(message("!r:a.example", "@u:a.example", "hi"), "a.example", &key, &version);
            assert_eq!(verify_one(&keys, &version, &event).await.is_ok(), passes, "{version}");
        }
        let keys = FixedKeys::default().with("a.example", &key, TS);
        let event = sign(
            message("!r:a.example", "@u:a.example", "hi"),
            "a.example",
            &key,
            &RoomVersionId::V5,
        );
        verify_one(&keys, &RoomVersionId::V5, &event).await.expect("valid until its date");
    }

    fn restricted_join(authoriser: &str) -> CanonicalJsonObject {
        object(json!({
            "type": "m.room.member",
            "state_key": "@j:a.example",
            "room_id": "!r:c.example",
            "sender": "@j:a.example",
            "content": { "membership": "join", "join_authorised_via_users_server": authoriser },
            "origin_server_ts": TS,
            "depth": 9,
            "prev_events": ["$prev"],
            "auth_events": ["$create", "$power", "$rules"],
        }))
    }

    #[tokio::test]
    async fn from_version_8_a_restricted_joins_authoriser_must_sign() {
        let (a, c) = (pair("a1"), pair("c1"));
        let keys =
            FixedKeys::default().with("a.example", &a, u64::MAX).with("c.example", &c, u64::MAX);
        let join = restricted_join("@admin:c.example");

        let v7 = sign(join.clone(), "a.example", &a, &RoomVersionId::V7);
        verify_one(&keys, &RoomVersionId::V7, &v7).await.expect("no authoriser before v8");

        for version in [RoomVersionId::V8, RoomVersionId::V10, RoomVersionId::V12] {
            let mut join = join.clone();
            if version == RoomVersionId::V12 {
                join.insert("auth_events".to_owned(), CanonicalJsonValue::Array(vec![]));
            }
            let unsigned = sign(join, "a.example", &a, &version);
            let refusal = verify_one(&keys, &version, &unsigned).await.expect_err("refused");
            assert!(
                matches!(&refusal, Refusal::Signature(reason) if reason.contains("c.example")),
                "{version}: {refusal}"
            );
            let authorised = countersign(unsigned, "c.example", &c, &version);
            verify_one(&keys, &version, &authorised).await.expect("both signed");
        }
    }

    #[tokio::test]
    async fn oversized_and_malformed_events_are_refused_before_any_key_lookup() {
        let key = pair("a1");
        let keys = FixedKeys::default().with("a.example", &key, u64::MAX);
        let version = RoomVersionId::V11;
        let signed = |event| sign(event, "a.example", &key, &version);

        // ruma will not sign it, so it carries no signature: the size is checked first.
        let big = message("!r:a.example", "@u:a.example", &"b".repeat(70_000));
        let mut many_prevs = message("!r:a.example", "@u:a.example", "hi");
        let prevs = (0..21).map(|n| CanonicalJsonValue::String(format!("$p{n}"))).collect();
        many_prevs.insert("prev_events".to_owned(), CanonicalJsonValue::Array(prevs));
        let mut many_auth = message("!r:a.example", "@u:a.example", "hi");
        let auth = (0..11).map(|n| CanonicalJsonValue::String(format!("$a{n}"))).collect();
        many_auth.insert("auth_events".to_owned(), CanonicalJsonValue::Array(auth));
        let mut negative = message("!r:a.example", "@u:a.example", "hi");
        negative.insert("depth".to_owned(), CanonicalJsonValue::Integer((-1).into()));
        let mut long_type = message("!r:a.example", "@u:a.example", "hi");
        long_type.insert("type".to_owned(), CanonicalJsonValue::String("t".repeat(256)));

        let mut batch: Vec<Box<RawJsonValue>> = [big, signed(many_prevs), signed(many_auth)]
            .iter()
            .chain([signed(negative), signed(long_type)].iter())
            .map(raw)
            .collect();
        for text in [r#"{"type": 1.5}"#, "[]", r#""x""#, r#"{"type": "m.room.message"}"#] {
            batch.push(RawJsonValue::from_string(text.to_owned()).expect("fixture"));
        }
        let results = verify_batch(&keys, &version, batch).await;
        assert_eq!(results.len(), 9);
        for result in results {
            assert!(matches!(result, Err(Refusal::Format(_))), "{result:?}");
        }
        assert!(keys.lookups.lock().expect("lookups").is_empty(), "nothing was looked up");
    }

    #[tokio::test]
    async fn a_version_12_create_event_defines_the_room_id() {
        let key = pair("a1");
        let keys = FixedKeys::default().with("a.example", &key, u64::MAX);
        let version = RoomVersionId::V12;
        let create = sign(
            object(json!({
                "type": "m.room.create",
                "state_key": "",
                "sender": "@u:a.example",
                "content": { "room_version": "12" },
                "origin_server_ts": TS,
                "depth": 1,
                "prev_events": [],
                "auth_events": [],
            })),
            "a.example",
            &key,
            &version,
        );
        let verified = verify_one(&keys, &version, &create).await.expect("verified");
        let hash = verified.pdu.event_id.as_str().trim_start_matches('$').to_owned();
        assert_eq!(verified.pdu.room_id.as_str(), format!("!{hash}"));
        assert!(verified.pdu.implicit_room_id);

        // Later events carry that room id, and may not name the create event as an auth event.
        let room = verified.pdu.room_id.to_string();
        let mut later = message(&room, "@u:a.example", "hi");
        later.insert("auth_events".to_owned(), CanonicalJsonValue::Array(vec![]));
        let ok = sign(later.clone(), "a.example", &key, &version);
        assert_eq!(verify_one(&keys, &version, &ok).await.expect("verified").pdu.room_id, room);
        later.insert(
            "auth_events".to_owned(),
            CanonicalJsonValue::Array(vec![CanonicalJsonValue::String(format!("${hash}"))]),
        );
        let naming_create = sign(later, "a.example", &key, &version);
        assert!(matches!(
            verify_one(&keys, &version, &naming_create).await,
            Err(Refusal::Format(_))
        ));
        // A non-create event needs a room id.
        let mut no_room = message("!r:a.example", "@u:a.example", "hi");
        no_room.remove("room_id");
        let no_room = sign(no_room, "a.example", &key, &version);
        assert!(matches!(verify_one(&keys, &version, &no_room).await, Err(Refusal::Format(_))));
    }

    #[tokio::test]
    async fn a_batch_looks_keys_up_once_per_server_and_date_and_keeps_its_order() {
        let (a, b) = (pair("a1"), pair("b1"));
        let keys =
            FixedKeys::default().with("a.example", &a, u64::MAX).with("b.example", &b, u64::MAX);
        let version = RoomVersionId::V11;
        let good_a = sign(message("!r:a.example", "@u:a.example", "1"), "a.example", &a, &version);
        let good_b = sign(message("!r:a.example", "@u:b.example", "2"), "b.example", &b, &version);
        let bad = sign(message("!r:a.example", "@u:b.example", "3"), "b.example", &a, &version);
        let batch = [&good_a, &bad, &good_b, &good_a].into_iter().map(raw).collect();
        let results = verify_batch(&keys, &version, batch).await;
        let bodies: Vec<Option<String>> = results
            .iter()
            .map(|result| result.as_ref().ok().and_then(|v| v.pdu.content_str("body")))
            .collect();
        assert_eq!(
            bodies,
            [Some("1".to_owned()), None, Some("2".to_owned()), Some("1".to_owned())]
        );
        let mut lookups = keys.lookups.lock().expect("lookups").clone();
        lookups.sort();
        assert_eq!(lookups, [("a.example".to_owned(), TS), ("b.example".to_owned(), TS)]);
    }

    #[tokio::test]
    async fn an_unsupported_version_refuses_everything() {
        let keys = FixedKeys::default();
        let version = RoomVersionId::try_from("org.example.custom").expect("fixture");
        let event = message("!r:a.example", "@u:a.example", "hi");
        assert!(matches!(verify_one(&keys, &version, &event).await, Err(Refusal::Format(_))));
    }
}
