//! Push rules: each user's ruleset, kept as the `m.push_rules` global account data the spec
//! describes (so clients reading it there see the same thing), merged with the server's
//! default rules, and cached for the evaluator.
//!
//! The defaults are the spec's, plus the three legacy mention rules the spec has since
//! dropped (`.m.rule.contains_display_name`, `.m.rule.roomnotif`,
//! `.m.rule.contains_user_name`): Element's notification settings toggle them, and older
//! clients and bridges mention people without `m.mentions`. They sit where Synapse serves
//! them, and the evaluator skips them for events that carry `m.mentions`.
//!
//! Rules are served as the client wrote them: ruma's types drop `"value": true` from a
//! highlight tweak, so [`render`] puts back the stored actions of any rule whose meaning
//! did not change, and lists every kind, empty or not.

use std::sync::{
    Arc,
    atomic::{AtomicU64, Ordering},
};

use dashmap::DashMap;
use ruma::{
    OwnedUserId, UserId,
    power_levels::NotificationPowerLevelsKey,
    push::{
        Action, ConditionalPushRule, ConditionalPushRuleInit, EventMatchConditionData,
        HighlightTweakValue, PatternedPushRule, PatternedPushRuleInit, PushCondition, RuleKind,
        Ruleset, SenderNotificationPermissionConditionData, SoundTweakValue, Tweak,
    },
};
use serde_json::{Value as JsonValue, json};

use crate::{
    Result,
    storage::{Storage, account_data::ACCOUNT_DATA_TABLE, codec::Json},
};

/// Most rulesets kept in memory at once.
const CACHE_LIMIT: usize = 4096;

/// The account data type holding push rules.
pub const PUSH_RULES: &str = "m.push_rules";

/// The kinds of rules the spec defines, in the order a ruleset is served.
pub const KINDS: [&str; 5] = ["override", "content", "room", "sender", "underride"];

/// The server's default rules for `user`: the spec's, with the legacy mention rules at
/// Synapse's places (display name after the user mention, `@room` after the room mention).
pub fn server_default(user: &UserId) -> Ruleset {
    let mut ruleset = Ruleset::server_default(user);
    let mention = [
        Action::Notify,
        Action::SetTweak(Tweak::Highlight(HighlightTweakValue::Yes)),
        Action::SetTweak(Tweak::Sound(SoundTweakValue::Default)),
    ];
    // The condition is deprecated with the rule; Synapse still serves both.
    #[allow(deprecated)]
    let display_name: ConditionalPushRule = ConditionalPushRuleInit {
        actions: mention.to_vec(),
        default: true,
        enabled: true,
        rule_id: ".m.rule.contains_display_name".to_owned(),
        conditions: vec![PushCondition::ContainsDisplayName],
    }
    .into();
    let room_notification: ConditionalPushRule = ConditionalPushRuleInit {
        actions: vec![Action::Notify, Action::SetTweak(Tweak::Highlight(HighlightTweakValue::Yes))],
        default: true,
        enabled: true,
        rule_id: ".m.rule.roomnotif".to_owned(),
        conditions: vec![
            PushCondition::SenderNotificationPermission(
                SenderNotificationPermissionConditionData::new(NotificationPowerLevelsKey::Room),
            ),
            PushCondition::EventMatch(EventMatchConditionData::new(
                "content.body".to_owned(),
                "@room".to_owned(),
            )),
        ],
    }
    .into();
    insert_after(&mut ruleset, ".m.rule.is_user_mention", display_name);
    insert_after(&mut ruleset, ".m.rule.is_room_mention", room_notification);
    let user_name: PatternedPushRule = PatternedPushRuleInit {
        actions: mention.to_vec(),
        default: true,
        enabled: true,
        rule_id: ".m.rule.contains_user_name".to_owned(),
        pattern: user.localpart().to_owned(),
    }
    .into();
    ruleset.content.insert(user_name);
    ruleset
}

/// Inserts `rule` among the override rules right after `anchor` (at the end without it).
fn insert_after(ruleset: &mut Ruleset, anchor: &str, rule: ConditionalPushRule) {
    let at = ruleset.override_.get_index_of(anchor).map_or(ruleset.override_.len(), |at| at + 1);
    ruleset.override_.shift_insert(at, rule);
}

/// The stored `global` ruleset of `user` as JSON, as last written.
pub fn stored(storage: &Storage, user: &UserId) -> Result<Option<JsonValue>> {
    let key = (user.to_owned(), String::new(), PUSH_RULES.to_owned());
    Ok(ACCOUNT_DATA_TABLE
        .get_readable(storage.engine(), &key)?
        .and_then(|Json(record)| record.content.get("global").cloned()))
}

/// The stored ruleset of `user`, with any default rules it lacks added.
pub fn load(storage: &Storage, user: &UserId) -> Result<Ruleset> {
    Ok(parse(stored(storage, user)?, user))
}

/// The ruleset stored as `global`, merged with the defaults.
pub fn parse(global: Option<JsonValue>, user: &UserId) -> Ruleset {
    match global.and_then(|global| serde_json::from_value::<Ruleset>(global).ok()) {
        Some(mut ruleset) => {
            ruleset.update_with_server_default(server_default(user));
            ruleset
        }
        None => server_default(user),
    }
}

/// `ruleset` as JSON with every kind present, each rule's actions as written in `written`
/// (a stored or client-sent ruleset) when they still mean what the rule's actions mean.
pub fn render(ruleset: &Ruleset, written: Option<&JsonValue>) -> Result<JsonValue> {
    let mut rendered = serde_json::to_value(ruleset)?;
    let Some(kinds) = rendered.as_object_mut() else {
        return Err(crate::Error::internal("a ruleset did not serialize as an object"));
    };
    for kind in KINDS {
        let rules = kinds.entry(kind).or_insert_with(|| JsonValue::Array(Vec::new()));
        let Some(rules) = rules.as_array_mut() else { continue };
        for rule in rules {
            let Some(id) = rule.get("rule_id").and_then(JsonValue::as_str) else { continue };
            if let Some(actions) = written_actions(written, kind, id)
                && same_actions(actions, rule.get("actions"))
            {
                rule["actions"] = actions.clone();
            }
        }
    }
    Ok(rendered)
}

/// The actions written for rule `id` of `kind` in `written`.
fn written_actions<'a>(
    written: Option<&'a JsonValue>,
    kind: &str,
    id: &str,
) -> Option<&'a JsonValue> {
    written?
        .get(kind)?
        .as_array()?
        .iter()
        .find(|rule| rule.get("rule_id").and_then(JsonValue::as_str) == Some(id))?
        .get("actions")
}

/// Whether two JSON action lists parse to the same actions.
fn same_actions(written: &JsonValue, current: Option<&JsonValue>) -> bool {
    let Some(current) = current else { return false };
    serde_json::from_value::<Vec<Action>>(written.clone())
        .ok()
        .and_then(|parsed| serde_json::to_value(parsed).ok())
        .is_some_and(|normalised| &normalised == current)
}

/// Records `actions` as the written form of rule `id` of `kind` in a stored `global` ruleset.
pub fn remember_actions(written: &mut JsonValue, kind: &RuleKind, id: &str, actions: JsonValue) {
    if !written.is_object() {
        *written = json!({});
    }
    let rules = &mut written[kind.as_str()];
    if !rules.is_array() {
        *rules = JsonValue::Array(Vec::new());
    }
    let Some(rules) = rules.as_array_mut() else { return };
    match rules.iter_mut().find(|rule| rule.get("rule_id").and_then(JsonValue::as_str) == Some(id))
    {
        Some(rule) => rule["actions"] = actions,
        None => rules.push(json!({ "rule_id": id, "actions": actions })),
    }
}

/// The account data content for `ruleset`, keeping the actions as written in `written`.
pub fn content(ruleset: &Ruleset, written: Option<&JsonValue>) -> Result<JsonValue> {
    Ok(json!({ "global": render(ruleset, written)? }))
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
