//! Access, refresh and login tokens: generation, hashing for storage, and the cache that
//! makes resolving an access token on every request a memory lookup.
//!
//! Tokens are stored only as SHA-256 hashes, so a copy of the database does not hand out
//! sessions. The cache maps a token hash to what it stands for; revocations (logout, device
//! deletion, password change) remove entries after the database write, and a revocation
//! epoch stops a concurrent lookup from re-inserting an entry the write just revoked.

use std::sync::atomic::{AtomicU64, Ordering};

use dashmap::DashMap;
use rand::{Rng, distributions::Alphanumeric};
use sha2::{Digest, Sha256};

use crate::storage::users::AccessTokenRecord;

/// Entries beyond this are dropped wholesale; the database answers the next lookups.
const CACHE_LIMIT: usize = 100_000;

/// A new random token with a recognisable prefix (`tw_at_`, `tw_rt_`, `tw_lt_`).
pub fn generate(prefix: &str) -> String {
    let random: String =
        rand::thread_rng().sample_iter(&Alphanumeric).take(32).map(char::from).collect();
    format!("tw_{prefix}_{random}")
}

/// A new device id: ten upper-case letters, as clients are used to.
pub fn generate_device_id() -> String {
    let mut rng = rand::thread_rng();
    (0..10).map(|_| char::from(rng.gen_range(b'A'..=b'Z'))).collect()
}

/// The storage key of a token.
pub fn hash(token: &str) -> String {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let digest = Sha256::digest(token.as_bytes());
    // Every request hashes its token: one allocation, not a formatted string per byte.
    let mut hex = String::with_capacity(digest.len() * 2);
    for byte in digest {
        hex.push(char::from(HEX[usize::from(byte >> 4)]));
        hex.push(char::from(HEX[usize::from(byte & 0x0f)]));
    }
    hex
}

/// Resolved access tokens by hash.
#[derive(Default)]
pub struct TokenCache {
    entries: DashMap<String, AccessTokenRecord>,
    revocations: AtomicU64,
}

impl TokenCache {
    pub fn get(&self, token_hash: &str) -> Option<AccessTokenRecord> {
        self.entries.get(token_hash).map(|entry| entry.clone())
    }

    /// The epoch to pass to [`TokenCache::insert`]; read it before reading the database.
    pub fn epoch(&self) -> u64 {
        self.revocations.load(Ordering::SeqCst)
    }

    /// Caches a record read from the database at `epoch`, unless a revocation happened since.
    pub fn insert(&self, token_hash: String, record: AccessTokenRecord, epoch: u64) {
        if self.entries.len() >= CACHE_LIMIT {
            self.entries.clear();
        }
        self.entries.insert(token_hash.clone(), record);
        if self.revocations.load(Ordering::SeqCst) != epoch {
            self.entries.remove(&token_hash);
        }
    }

    /// Forgets revoked tokens; call after the revocation is committed.
    pub fn revoke<'a>(&self, token_hashes: impl IntoIterator<Item = &'a String>) {
        self.revocations.fetch_add(1, Ordering::SeqCst);
        for token_hash in token_hashes {
            self.entries.remove(token_hash);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_are_random_and_hashes_stable() {
        let first = generate("at");
        let second = generate("at");
        assert_ne!(first, second);
        assert!(first.starts_with("tw_at_") && first.len() == 38);
        assert_eq!(hash("abc"), hash("abc"));
        assert_eq!(hash("abc").len(), 64);
        let device = generate_device_id();
        assert_eq!(device.len(), 10);
        assert!(device.chars().all(|c| c.is_ascii_uppercase()));
    }

    #[test]
    fn a_revocation_during_lookup_wins() {
        let cache = TokenCache::default();
        let record = AccessTokenRecord {
            user_id: ruma::user_id!("@a:x").to_owned(),
            device_id: ruma::device_id!("D").to_owned(),
            expires_ms: None,
            minted_from: None,
            guest: false,
        };
        let epoch = cache.epoch();
        cache.revoke([&"h".to_owned()]);
        cache.insert("h".to_owned(), record.clone(), epoch);
        assert!(cache.get("h").is_none(), "stale entry re-inserted");
        cache.insert("h".to_owned(), record, cache.epoch());
        assert!(cache.get("h").is_some());
    }
}
