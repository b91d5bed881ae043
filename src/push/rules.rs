//! Push rules: each user's ruleset, kept as the `m.push_rules` global account data the spec
//! describes (so clients reading it there see the same thing), merged with the server's
//! default rules, and cached for the evaluator.

use std::sync::{
    Arc,
    atomic::{AtomicU64, Ordering},
};

use dashmap::DashMap;
use ruma::{OwnedUserId, UserId, push::Ruleset};
use serde_json::{Value as JsonValue, json};

use crate::{
    Result,
    storage::{Storage, account_data::ACCOUNT_DATA_TABLE, codec::Json},
};

/// Most rulesets kept in memory at once.
const CACHE_LIMIT: usize = 4096;

/// The account data type holding push rules.
pub const PUSH_RULES: &str = "m.push_rules";

/// The stored ruleset of `user`, with any default rules it lacks added.
pub fn load(storage: &Storage, user: &UserId) -> Result<Ruleset> {
    let key = (user.to_string(), String::new(), PUSH_RULES.to_owned());
    let stored = ACCOUNT_DATA_TABLE
        .get_readable(storage.engine(), &key)?
        .and_then(|Json(record)| record.content.get("global").cloned())
        .and_then(|global| serde_json::from_value::<Ruleset>(global).ok());
    Ok(match stored {
        Some(mut ruleset) => {
            ruleset.update_with_server_default(Ruleset::server_default(user));
            ruleset
        }
        None => Ruleset::server_default(user),
    })
}

/// The account data content for `ruleset`.
pub fn content(ruleset: &Ruleset) -> Result<JsonValue> {
    Ok(json!({ "global": serde_json::to_value(ruleset)? }))
}

/// Rulesets by user, for the evaluator. A write invalidates its user's entry; the
/// generation keeps a load that raced a write from caching the old ruleset.
#[derive(Default)]
pub struct RulesCache {
    rulesets: DashMap<OwnedUserId, Arc<Ruleset>>,
    generation: AtomicU64,
}

impl RulesCache {
    pub fn get(&self, storage: &Storage, user: &UserId) -> Result<Arc<Ruleset>> {
        if let Some(ruleset) = self.rulesets.get(user) {
            return Ok(Arc::clone(&ruleset));
        }
        let generation = self.generation.load(Ordering::Acquire);
        let ruleset = crate::memory::long_lived(|| load(storage, user).map(Arc::new))?;
        if self.generation.load(Ordering::Acquire) == generation {
            // A crude bound instead of an LRU: rulesets reload cheaply from storage.
            if self.rulesets.len() >= CACHE_LIMIT {
                self.rulesets.clear();
            }
            crate::memory::long_lived(|| {
                self.rulesets.insert(user.to_owned(), Arc::clone(&ruleset));
            });
        }
        Ok(ruleset)
    }

    pub fn invalidate(&self, user: &UserId) {
        self.generation.fetch_add(1, Ordering::AcqRel);
        self.rulesets.remove(user);
    }
}
