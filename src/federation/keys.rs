//! Servers' signing keys: this server's own key document, the keys of other servers fetched
//! directly (`GET /_matrix/key/v2/server`) or through the notaries in `trusted_servers`
//! (`POST /_matrix/key/v2/query`), and the notary service this server offers in turn.
//!
//! Fetched documents are checked before use: the right `server_name`, a valid signature by
//! one of the server's own listed keys and, through a notary, a valid signature by the
//! notary. What they say is kept in the `server_signing_keys` table (through the Writer):
//! every key ever seen, with until when it may be used. `valid_until_ts` is capped at seven
//! days after the fetch, as the spec asks; old keys stay for verifying old events. A key id
//! we do not know triggers one refetch; concurrent requests for one server's keys share one
//! fetch, and a failed fetch is not retried for [`FAILURE_TTL`].

use std::{
    collections::{BTreeMap, HashMap},
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use ruma::{
    CanonicalJsonObject, CanonicalJsonValue, MilliSecondsSinceUnixEpoch, OwnedServerName,
    OwnedServerSigningKeyId, ServerName, ServerSigningKeyId, UInt,
    api::federation::discovery::{
        ServerSigningKeys, VerifyKey, get_remote_server_keys_batch, get_server_keys,
    },
    serde::{Base64, Raw},
};

use super::{
    SigningKey,
    client::{FederationClient, OutboundError},
    flight::SingleFlight,
};
use crate::{
    Error, Result,
    storage::{
        Batch, Storage,
        codec::Json,
        federation::{SERVER_KEYS_TABLE, ServerKeysRecord, StoredVerifyKey},
    },
    time::Time,
};

/// How long other servers may cache our key document.
pub const OWN_KEYS_VALIDITY: Duration = Duration::from_secs(7 * 24 * 60 * 60);
/// The longest a fetched key document counts as current, whatever it says.
const MAX_VALIDITY_MS: u64 = 7 * 24 * 60 * 60 * 1000;
/// How long a failed fetch of a server's keys is remembered.
pub const FAILURE_TTL: Duration = Duration::from_secs(30);
/// How long after a refetch that did not bring a requested key id another one may be tried.
const UNKNOWN_KEY_COOLDOWN: Duration = Duration::from_secs(5 * 60);
/// A key fetch gives up after this long (or `federation_timeout`, if shorter).
const FETCH_TIMEOUT: Duration = Duration::from_secs(30);

/// Why keys could not be had.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyError(pub String);

impl std::fmt::Display for KeyError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// Where keys are fetched from, in the configured order.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Source {
    Direct,
    Notaries,
}

/// How keys are looked for, from the configuration.
#[derive(Debug, Clone)]
pub struct KeySettings {
    pub trusted_servers: Vec<OwnedServerName>,
    pub query_trusted_first: bool,
    pub only_trusted: bool,
    pub timeout: Duration,
}

/// The key store.
pub struct ServerKeys {
    storage: Arc<Storage>,
    own: OwnedServerName,
    signing_key: Arc<SigningKey>,
    client: Arc<FederationClient>,
    settings: KeySettings,
    flights: SingleFlight<OwnedServerName, Result<Arc<ServerKeysRecord>, KeyError>>,
    failures: Mutex<HashMap<OwnedServerName, (KeyError, Instant)>>,
    misses: Mutex<HashMap<OwnedServerName, Instant>>,
    /// What key validity is judged by (the fetch cool-downs above are the network's own
    /// timing and run on the system clock).
    time: Time,
}

impl ServerKeys {
    pub fn new(
        storage: Arc<Storage>,
        signing_key: Arc<SigningKey>,
        client: Arc<FederationClient>,
        settings: KeySettings,
        time: Time,
    ) -> Self {
        Self {
            storage,
            own: client.origin().to_owned(),
            signing_key,
            client,
            settings,
            flights: SingleFlight::default(),
            failures: Mutex::new(HashMap::new()),
            misses: Mutex::new(HashMap::new()),
            time,
        }
    }

    /// This server's key document, self-signed, valid for [`OWN_KEYS_VALIDITY`].
    pub fn own_document(&self) -> Result<CanonicalJsonObject> {
        let valid_until = self
            .time
            .timestamp()
            .get()
            .saturating_add(UInt::try_from(OWN_KEYS_VALIDITY.as_millis()).unwrap_or(UInt::MAX));
        let mut keys =
            ServerSigningKeys::new(self.own.clone(), MilliSecondsSinceUnixEpoch(valid_until));
        keys.verify_keys.insert(
            self.signing_key.key_id().to_owned(),
            VerifyKey::new(self.signing_key.public_key()),
        );
        let CanonicalJsonValue::Object(mut object) =
            ruma::canonical_json::to_canonical_value(&keys)
                .map_err(|error| Error::internal(format!("key document: {error}")))?
        else {
            return Err(Error::internal("key document is not an object"));
        };
        object.remove("signatures");
        self.signing_key.sign_json(&mut object)?;
        Ok(object)
    }

    /// What is stored about `server`'s keys.
    pub fn stored(&self, server: &ServerName) -> Result<Option<ServerKeysRecord>> {
        Ok(SERVER_KEYS_TABLE
            .get(self.storage.engine(), &server.to_string())?
            .map(|Json(record)| record))
    }

    /// The public key `key_id` of `server`, for checking a signature made now (a request's):
    /// it must be one of the server's current keys. Fetches the server's keys when they are
    /// unknown, expired, or do not include `key_id`.
    pub async fn current_key(
        &self,
        server: &ServerName,
        key_id: &ServerSigningKeyId,
    ) -> Result<Base64, KeyError> {
        if server == self.own {
            return if key_id == self.signing_key.key_id() {
                Ok(self.signing_key.public_key())
            } else {
                Err(KeyError(format!("{key_id} is not a key of this server")))
            };
        }
        let now = self.time.now_ms();
        let stored = self.stored(server).map_err(|error| KeyError(error.to_string()))?;
        if let Some(key) = stored.as_ref().and_then(|record| usable_now(record, key_id, now)) {
            return Ok(key);
        }
        let known_document = stored.is_some_and(|record| record.valid_until_ts > now);
        if known_document && self.missed_recently(server) {
            return Err(KeyError(format!("{server} has no current key {key_id}")));
        }
        let record = self.fetch_wanting(server, Some(key_id)).await?;
        match usable_now(&record, key_id, self.time.now_ms()) {
            Some(key) => Ok(key),
            None => {
                self.misses
                    .lock()
                    .unwrap_or_else(|poison| poison.into_inner())
                    .insert(server.to_owned(), Instant::now());
                Err(KeyError(format!("{server} has no current key {key_id}")))
            }
        }
    }

    /// Every key of `server` that may have signed an event dated `at_ms`: with
    /// `enforce_validity` (room versions 5 and later) those valid until at least `at_ms`,
    /// current or old; without (versions 1 to 4) every key the server ever had. Fetches when
    /// nothing current is known.
    pub async fn keys_valid_at(
        &self,
        server: &ServerName,
        at_ms: u64,
        enforce_validity: bool,
    ) -> Result<BTreeMap<String, Base64>, KeyError> {
        self.keys_for_event(server, at_ms, enforce_validity, &[]).await
    }

    /// [`Self::keys_valid_at`] for an event whose signatures by `server` name `key_ids`:
    /// when none of them is known, the keys are fetched again (at most once per
    /// [`UNKNOWN_KEY_COOLDOWN`]), as a server that rotated its key signs with a new one. A
    /// failed fetch falls back to the keys already known: what a key signed while it was
    /// valid stays signed when its server is unreachable.
    pub async fn keys_for_event(
        &self,
        server: &ServerName,
        at_ms: u64,
        enforce_validity: bool,
        key_ids: &[String],
    ) -> Result<BTreeMap<String, Base64>, KeyError> {
        if server == self.own {
            return Ok(BTreeMap::from([(
                self.signing_key.key_id().to_string(),
                self.signing_key.public_key(),
            )]));
        }
        let knows = |record: &ServerKeysRecord| {
            key_ids.is_empty() || key_ids.iter().any(|id| record.keys.contains_key(id))
        };
        let stored = self.stored(server).map_err(|error| KeyError(error.to_string()))?;
        let record = match stored {
            Some(record)
                if record.valid_until_ts > self.time.now_ms()
                    && (knows(&record) || self.missed_recently(server)) =>
            {
                record
            }
            stored => {
                let wanted = key_ids.iter().find_map(|id| key_id(id));
                match self.fetch_wanting(server, wanted.as_deref()).await {
                    Ok(record) => {
                        if !knows(&record) {
                            self.misses
                                .lock()
                                .unwrap_or_else(|poison| poison.into_inner())
                                .insert(server.to_owned(), Instant::now());
                        }
                        (*record).clone()
                    }
                    Err(error) => match stored {
                        Some(record) => {
                            tracing::debug!(%server, %error, "using the keys already known");
                            record
                        }
                        None => return Err(error),
                    },
                }
            }
        };
        Ok(valid_at(&record, at_ms, enforce_validity))
    }

    /// Fetches `server`'s keys now (sharing a fetch already under way) and stores them.
    pub async fn fetch(&self, server: &ServerName) -> Result<Arc<ServerKeysRecord>, KeyError> {
        self.fetch_wanting(server, None).await
    }

    /// [`Self::fetch`], naming to notaries the key id that is wanted, when one is.
    async fn fetch_wanting(
        &self,
        server: &ServerName,
        wanted: Option<&ServerSigningKeyId>,
    ) -> Result<Arc<ServerKeysRecord>, KeyError> {
        if let Some(error) = self.recent_failure(server) {
            return Err(error);
        }
        let key = server.to_owned();
        let result = self.flights.run(&key, || self.fetch_and_store(server, wanted)).await;
        if let Err(error) = &result {
            self.failures
                .lock()
                .unwrap_or_else(|poison| poison.into_inner())
                .insert(key, (error.clone(), Instant::now() + FAILURE_TTL));
        }
        result
    }

    /// Forgets remembered failures (an operator retrying by hand, a server back online).
    pub fn forget_failures(&self, server: &ServerName) {
        self.failures.lock().unwrap_or_else(|poison| poison.into_inner()).remove(server);
        self.misses.lock().unwrap_or_else(|poison| poison.into_inner()).remove(server);
    }

    fn recent_failure(&self, server: &ServerName) -> Option<KeyError> {
        let mut failures = self.failures.lock().unwrap_or_else(|poison| poison.into_inner());
        match failures.get(server) {
            Some((error, until)) if *until > Instant::now() => Some(error.clone()),
            Some(_) => {
                failures.remove(server);
                None
            }
            None => None,
        }
    }

    fn missed_recently(&self, server: &ServerName) -> bool {
        self.misses
            .lock()
            .unwrap_or_else(|poison| poison.into_inner())
            .get(server)
            .is_some_and(|at| at.elapsed() < UNKNOWN_KEY_COOLDOWN)
    }

    async fn fetch_and_store(
        &self,
        server: &ServerName,
        wanted: Option<&ServerSigningKeyId>,
    ) -> Result<Arc<ServerKeysRecord>, KeyError> {
        let order: &[Source] = if self.settings.only_trusted {
            &[Source::Notaries]
        } else if self.settings.query_trusted_first {
            &[Source::Notaries, Source::Direct]
        } else {
            &[Source::Direct, Source::Notaries]
        };
        let mut errors = Vec::new();
        for source in order {
            let fetched = match source {
                Source::Direct => self.fetch_direct(server).await,
                Source::Notaries => self.fetch_from_notaries(server, wanted).await,
            };
            match fetched {
                Ok(document) => return self.store(server, document).await,
                Err(error) => errors.push(error.0),
            }
        }
        Err(KeyError(format!("no keys for {server}: {}", errors.join("; "))))
    }

    /// `GET /_matrix/key/v2/server` from the server itself.
    async fn fetch_direct(&self, server: &ServerName) -> Result<CanonicalJsonObject, KeyError> {
        let response = self
            .client
            .send_with_timeout(server, get_server_keys::v2::Request::new(), self.timeout())
            .await
            .map_err(|error| KeyError(format!("{server}: {error}")))?;
        let document = to_object(response.server_key.json().get())?;
        check_self_signed(server, &document)?;
        Ok(document)
    }

    /// `POST /_matrix/key/v2/query` to each trusted server in turn, until one vouches.
    async fn fetch_from_notaries(
        &self,
        server: &ServerName,
        wanted: Option<&ServerSigningKeyId>,
    ) -> Result<CanonicalJsonObject, KeyError> {
        if self.settings.trusted_servers.is_empty() {
            return Err(KeyError("no trusted_servers to ask".to_owned()));
        }
        let mut errors = Vec::new();
        for notary in &self.settings.trusted_servers {
            if notary == server || *notary == self.own {
                continue;
            }
            match self.fetch_from_notary(notary, server, wanted).await {
                Ok(document) => return Ok(document),
                Err(error) => errors.push(format!("{notary}: {}", error.0)),
            }
        }
        Err(KeyError(format!("no notary vouched ({})", errors.join("; "))))
    }

    /// Asks `notary` for `server`'s keys. A wanted key id is named, valid from now on:
    /// Synapse, asked for "all keys" of a server, answers only what it has already and
    /// fetches nothing, though the spec says a notary should.
    async fn fetch_from_notary(
        &self,
        notary: &ServerName,
        server: &ServerName,
        wanted: Option<&ServerSigningKeyId>,
    ) -> Result<CanonicalJsonObject, KeyError> {
        let now = self.time.timestamp();
        let criteria = wanted
            .map(|key_id| {
                let mut criteria = get_remote_server_keys_batch::v2::QueryCriteria::new();
                criteria.minimum_valid_until_ts = Some(now);
                (key_id.to_owned(), criteria)
            })
            .into_iter()
            .collect();
        let request = get_remote_server_keys_batch::v2::Request::new(BTreeMap::from([(
            server.to_owned(),
            criteria,
        )]));
        let response = self
            .client
            .send_with_timeout(notary, request, self.timeout())
            .await
            .map_err(|error: OutboundError| KeyError(error.to_string()))?;
        let notary_keys = self.notary_keys(notary).await?;
        let mut newest: Option<(u64, CanonicalJsonObject)> = None;
        for raw in &response.server_keys {
            let Ok(mut document) = to_object(raw.json().get()) else { continue };
            if document.get("server_name").and_then(as_str) != Some(server.as_str()) {
                continue;
            }
            if let Err(error) = verify_signed_by(&document, notary.as_str(), &notary_keys) {
                tracing::warn!(%notary, %server, %error, "a notary's key answer has a bad signature");
                continue;
            }
            // Keep only the origin's own signature: that is what we store and vouch for.
            strip_signatures_except(&mut document, server.as_str());
            if check_self_signed(server, &document).is_err() {
                continue;
            }
            let valid_until = valid_until_of(&document);
            if newest.as_ref().is_none_or(|(best, _)| valid_until > *best) {
                newest = Some((valid_until, document));
            }
        }
        newest
            .map(|(_, document)| document)
            .ok_or_else(|| KeyError(format!("{notary} had no valid keys for {server}")))
    }

    /// A notary's current keys, fetched from it directly when not known.
    async fn notary_keys(&self, notary: &ServerName) -> Result<BTreeMap<String, Base64>, KeyError> {
        let now = self.time.now_ms();
        if let Ok(Some(record)) = self.stored(notary)
            && record.valid_until_ts > now
        {
            return Ok(current_keys(&record, now));
        }
        let document = self.fetch_direct(notary).await?;
        let record = self.store(notary, document).await?;
        Ok(current_keys(&record, self.time.now_ms()))
    }

    /// Merges a checked key document into the stored record and commits it.
    async fn store(
        &self,
        server: &ServerName,
        document: CanonicalJsonObject,
    ) -> Result<Arc<ServerKeysRecord>, KeyError> {
        let now = self.time.now_ms();
        let previous = self.stored(server).map_err(|error| KeyError(error.to_string()))?;
        let record = merge(previous, &document, now)?;
        let mut batch = Batch::new();
        SERVER_KEYS_TABLE.put(&mut batch, &server.to_string(), &Json(record.clone()));
        self.storage
            .writer()
            .commit(batch)
            .await
            .map_err(|error| KeyError(format!("storing keys: {error}")))?;
        metrics::counter!("tuwunel_federation_key_fetches_total").increment(1);
        tracing::debug!(%server, keys = record.keys.len(), "stored server keys");
        Ok(Arc::new(record))
    }

    /// The document to vouch for as a notary: our own, or the stored one when it is valid
    /// until at least `minimum_valid_until` (fetched directly from the server otherwise, if
    /// `may_fetch`, the stored one being the answer when that fails). `None` when nothing is
    /// known.
    pub async fn notary_document(
        &self,
        server: &ServerName,
        minimum_valid_until: u64,
        may_fetch: bool,
    ) -> Result<Option<CanonicalJsonObject>> {
        if server == self.own {
            return self.own_document().map(Some);
        }
        let stored = self.stored(server)?;
        if let Some(record) = &stored
            && record.valid_until_ts >= minimum_valid_until
            && let Ok(document) = to_object(&record.document.to_string())
        {
            return Ok(Some(document));
        }
        if !may_fetch {
            return Ok(stored.and_then(|record| to_object(&record.document.to_string()).ok()));
        }
        let fresh = async {
            let document = self.fetch_direct(server).await?;
            self.store(server, document.clone()).await?;
            Ok::<_, KeyError>(document)
        };
        match fresh.await {
            Ok(document) => Ok(Some(document)),
            Err(error) => {
                tracing::debug!(%server, %error, "notary: could not refresh keys");
                Ok(stored.and_then(|record| to_object(&record.document.to_string()).ok()))
            }
        }
    }

    /// Adds this server's signature to a document it vouches for.
    pub fn countersign(&self, document: &mut CanonicalJsonObject) -> Result<()> {
        self.signing_key.sign_json(document)
    }

    fn timeout(&self) -> Duration {
        self.settings.timeout.min(FETCH_TIMEOUT)
    }
}

/// `key_id` of `record` if it may sign something made now.
fn usable_now(record: &ServerKeysRecord, key_id: &ServerSigningKeyId, now: u64) -> Option<Base64> {
    let key = record.keys.get(key_id.as_str())?;
    if key.expired || key.valid_until_ts <= now {
        return None;
    }
    Base64::parse(&key.key).ok()
}

/// The keys of `record` that may have signed something dated `at_ms` (all of them unless
/// `enforce_validity`).
pub(crate) fn valid_at(
    record: &ServerKeysRecord,
    at_ms: u64,
    enforce_validity: bool,
) -> BTreeMap<String, Base64> {
    record
        .keys
        .iter()
        .filter(|(_, key)| !enforce_validity || key.valid_until_ts >= at_ms)
        .filter_map(|(id, key)| Some((id.clone(), Base64::parse(&key.key).ok()?)))
        .collect()
}

fn current_keys(record: &ServerKeysRecord, now: u64) -> BTreeMap<String, Base64> {
    record
        .keys
        .iter()
        .filter(|(_, key)| !key.expired && key.valid_until_ts > now)
        .filter_map(|(id, key)| Some((id.clone(), Base64::parse(&key.key).ok()?)))
        .collect()
}

fn as_str(value: &CanonicalJsonValue) -> Option<&str> {
    match value {
        CanonicalJsonValue::String(text) => Some(text),
        _ => None,
    }
}

fn to_object(json: &str) -> Result<CanonicalJsonObject, KeyError> {
    serde_json::from_str(json).map_err(|error| KeyError(format!("not a key document: {error}")))
}

fn valid_until_of(document: &CanonicalJsonObject) -> u64 {
    match document.get("valid_until_ts") {
        Some(CanonicalJsonValue::Integer(value)) => u64::try_from(i64::from(*value)).unwrap_or(0),
        _ => 0,
    }
}

fn strip_signatures_except(document: &mut CanonicalJsonObject, keep: &str) {
    if let Some(CanonicalJsonValue::Object(signatures)) = document.get_mut("signatures") {
        signatures.retain(|entity, _| entity == keep);
    }
}

/// Checks that `document` is `server`'s key document, signed by a key it lists.
pub fn check_self_signed(
    server: &ServerName,
    document: &CanonicalJsonObject,
) -> Result<(), KeyError> {
    let keys: ServerSigningKeys = serde_json::from_value(
        serde_json::to_value(document).map_err(|error| KeyError(error.to_string()))?,
    )
    .map_err(|error| KeyError(format!("not a key document: {error}")))?;
    if keys.server_name != server {
        return Err(KeyError(format!(
            "the key document is for {}, not {server}",
            keys.server_name
        )));
    }
    let own: BTreeMap<String, Base64> =
        keys.verify_keys.iter().map(|(id, key)| (id.to_string(), key.key.clone())).collect();
    verify_signed_by(document, server.as_str(), &own)
}

/// Checks `entity`'s signatures on `object`: every one by a key in `keys` must verify, and
/// at least one must be there. Signatures by other key ids are ignored.
pub fn verify_signed_by(
    object: &CanonicalJsonObject,
    entity: &str,
    keys: &BTreeMap<String, Base64>,
) -> Result<(), KeyError> {
    let Some(CanonicalJsonValue::Object(signatures)) = object.get("signatures") else {
        return Err(KeyError("the document is not signed".to_owned()));
    };
    let Some(CanonicalJsonValue::Object(by_entity)) = signatures.get(entity) else {
        return Err(KeyError(format!("the document is not signed by {entity}")));
    };
    let canonical = ruma::signatures::to_canonical_json_string_for_signing(object)
        .map_err(|error| KeyError(error.to_string()))?;
    let mut verified = false;
    for (key_id, signature) in by_entity {
        let Some(public) = keys.get(key_id) else { continue };
        let Ok(id) = <&ServerSigningKeyId>::try_from(key_id.as_str()) else { continue };
        let CanonicalJsonValue::String(signature) = signature else {
            return Err(KeyError(format!("signature {key_id} is not a string")));
        };
        let signature = Base64::<ruma::serde::base64::Standard>::parse(signature)
            .map_err(|_| KeyError(format!("signature {key_id} is not base64")))?;
        ruma::signatures::verify_canonical_json_bytes(
            &id.algorithm(),
            public.as_bytes(),
            signature.as_bytes(),
            canonical.as_bytes(),
        )
        .map_err(|error| KeyError(format!("signature {key_id} of {entity} is invalid: {error}")))?;
        verified = true;
    }
    if verified {
        Ok(())
    } else {
        Err(KeyError(format!("no signature of {entity} by a key we know")))
    }
}

/// The stored record after taking in a checked key document fetched at `now`.
fn merge(
    previous: Option<ServerKeysRecord>,
    document: &CanonicalJsonObject,
    now: u64,
) -> Result<ServerKeysRecord, KeyError> {
    let value = serde_json::to_value(document).map_err(|error| KeyError(error.to_string()))?;
    let parsed: ServerSigningKeys = serde_json::from_value(value.clone())
        .map_err(|error| KeyError(format!("not a key document: {error}")))?;
    let valid_until =
        u64::from(parsed.valid_until_ts.get()).min(now.saturating_add(MAX_VALIDITY_MS));
    let mut keys = previous.map(|record| record.keys).unwrap_or_default();
    // Keys the server no longer lists stay known, for old events, but no longer sign anew.
    for (id, key) in &mut keys {
        if !parsed.verify_keys.keys().any(|current| current.as_str() == id) {
            key.expired = true;
        }
    }
    for (id, old) in &parsed.old_verify_keys {
        keys.insert(
            id.to_string(),
            StoredVerifyKey {
                key: old.key.encode(),
                valid_until_ts: u64::from(old.expired_ts.get()),
                expired: true,
            },
        );
    }
    for (id, key) in &parsed.verify_keys {
        keys.insert(
            id.to_string(),
            StoredVerifyKey { key: key.key.encode(), valid_until_ts: valid_until, expired: false },
        );
    }
    Ok(ServerKeysRecord { keys, valid_until_ts: valid_until, fetched_at: now, document: value })
}

/// A document as ruma's raw response type wants it.
pub fn to_raw(document: &CanonicalJsonObject) -> Result<Raw<ServerSigningKeys>> {
    Ok(Raw::from_json(serde_json::value::to_raw_value(document)?))
}

/// `OwnedServerSigningKeyId` of a string, for callers holding stored ids.
pub fn key_id(id: &str) -> Option<OwnedServerSigningKeyId> {
    id.try_into().ok()
}

#[cfg(test)]
mod tests {
    use ruma::signatures::Ed25519KeyPair;

    use super::*;

    fn signed_document(
        server: &str,
        pair: &Ed25519KeyPair,
        valid_until: u64,
    ) -> CanonicalJsonObject {
        let key_id = format!("ed25519:{}", pair.version());
        let value = serde_json::json!({
            "server_name": server,
            "verify_keys": { key_id: { "key": Base64::<ruma::serde::base64::Standard, _>::new(pair.public_key().to_vec()).encode() } },
            "old_verify_keys": {},
            "valid_until_ts": valid_until,
        });
        let mut object: CanonicalJsonObject = serde_json::from_value(value).expect("object");
        ruma::signatures::sign_json(server, pair, &mut object).expect("sign");
        object
    }

    fn pair(version: &str) -> Ed25519KeyPair {
        Ed25519KeyPair::from_der(&Ed25519KeyPair::generate(), version.to_owned()).expect("pair")
    }

    fn name(text: &str) -> OwnedServerName {
        text.try_into().expect("name")
    }

    #[test]
    fn self_signatures_are_checked() {
        let key = pair("one");
        let document = signed_document("remote.example", &key, 5_000);
        assert!(check_self_signed(&name("remote.example"), &document).is_ok());
        assert!(check_self_signed(&name("other.example"), &document).is_err());

        let mut tampered = document.clone();
        tampered.insert("valid_until_ts".to_owned(), CanonicalJsonValue::Integer(9_999u32.into()));
        assert!(check_self_signed(&name("remote.example"), &tampered).is_err());

        // Signed by a key the document does not list.
        let stranger = pair("two");
        let mut foreign = signed_document("remote.example", &key, 5_000);
        foreign.remove("signatures");
        ruma::signatures::sign_json("remote.example", &stranger, &mut foreign).expect("sign");
        assert!(check_self_signed(&name("remote.example"), &foreign).is_err());
    }

    #[test]
    fn merging_keeps_old_keys_and_caps_validity() {
        let first = pair("first");
        let now = 1_000_000;
        let far = now + 365 * 24 * 60 * 60 * 1000;
        let record = merge(None, &signed_document("r.example", &first, far), now).expect("merge");
        assert_eq!(record.valid_until_ts, now + MAX_VALIDITY_MS);
        assert!(!record.keys["ed25519:first"].expired);

        let second = pair("second");
        let later = now + 1000;
        let record =
            merge(Some(record), &signed_document("r.example", &second, later + 5000), later)
                .expect("merge");
        assert!(record.keys["ed25519:first"].expired, "a key gone from the document is old");
        assert!(!record.keys["ed25519:second"].expired);
        let id = key_id("ed25519:first").expect("id");
        assert!(usable_now(&record, &id, later).is_none());
        let id = key_id("ed25519:second").expect("id");
        assert!(usable_now(&record, &id, later).is_some());
        assert!(usable_now(&record, &id, later + 5000).is_none(), "expired with its document");
    }

    #[test]
    fn keys_for_events_follow_the_validity_rule_of_the_room_version() {
        let (old, new) = (pair("old"), pair("new"));
        let now = 1_000_000;
        let record =
            merge(None, &signed_document("r.example", &old, now + 10), now).expect("merge");
        let record = merge(Some(record), &signed_document("r.example", &new, now + 500), now + 20)
            .expect("merge");
        let ids = |keys: BTreeMap<String, Base64>| keys.into_keys().collect::<Vec<_>>();
        // The old key stopped being listed at now + 20 but was last valid until now + 10.
        assert_eq!(ids(valid_at(&record, now + 5, true)), ["ed25519:new", "ed25519:old"]);
        assert_eq!(ids(valid_at(&record, now + 11, true)), ["ed25519:new"]);
        assert!(valid_at(&record, now + 501, true).is_empty(), "nothing was valid then");
        // Room versions 1-4: every key the server had.
        assert_eq!(ids(valid_at(&record, now + 501, false)), ["ed25519:new", "ed25519:old"]);
    }
}
