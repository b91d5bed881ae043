//! Push endpoints: push rules (`/pushrules/...`), pushers (`/pushers`, `/pushers/set`) and
//! the notification list (`/notifications`).

use std::{collections::HashMap, ops::ControlFlow, sync::Arc, time::Duration};

use ruma::{
    MilliSecondsSinceUnixEpoch, OwnedRoomId, UInt,
    api::client::push::{
        PusherIds, delete_pushrule, get_notifications, get_pushers, get_pushrule,
        get_pushrule_actions, get_pushrule_enabled, get_pushrules_all, get_pushrules_global_scope,
        set_pusher, set_pushrule, set_pushrule_actions, set_pushrule_enabled,
    },
    push::{
        InsertPushRuleError, NewPushRule, PushCondition, RemovePushRuleError, RuleKind, Ruleset,
    },
    serde::Raw,
};
use serde_json::Value as JsonValue;

use crate::http::routes::Routes;
use crate::{
    Error, Result, Services,
    accounts::Sender,
    accounts::{PushRulesUpdate, UserMessage, WrittenActions},
    http::{
        ruma::{Ruma, route, route_raw},
        validate,
    },
    limits,
    push::{pushers::PusherMessage, rules},
    rooms,
    storage::{
        Direction,
        codec::{Json, Prefix},
        push::{
            NOTIFICATIONS_TABLE, PUSHERS_TABLE, PUSHKEYS_TABLE, PusherRecord, UNREAD_EVENTS_TABLE,
        },
    },
};

const PUSHER_CALL_TIMEOUT: Duration = Duration::from_secs(30);
const DEFAULT_NOTIFICATIONS: usize = 20;
const MAX_NOTIFICATIONS: usize = 100;
/// The only path a push gateway may have (Push Gateway API).
const GATEWAY_PATH: &str = "/_matrix/push/v1/notify";

pub(super) fn routes(router: Routes) -> Routes {
    let router = route_raw(router, all_rules);
    let router = route_raw(router, global_rules);
    let router = route_raw(router, get_rule);
    let router = route(router, set_rule);
    let router = route(router, delete_rule);
    let router = route(router, get_enabled);
    let router = route(router, set_enabled);
    let router = route_raw(router, get_actions);
    let router = route(router, set_actions);
    let router = route(router, list_pushers);
    let router = route(router, set_pusher_handler);
    route(router, notifications)
}

fn rule_not_found() -> Error {
    Error::not_found("No such push rule.")
}

fn ruleset(services: &Services, sender: &Sender) -> Result<Ruleset> {
    rules::load(&services.storage, &sender.user_id)
}

/// The caller's ruleset as served: every kind listed, actions as the client wrote them.
fn rendered_ruleset(services: &Services, sender: &Sender) -> Result<JsonValue> {
    let stored = rules::stored(&services.storage, &sender.user_id)?;
    let ruleset = rules::parse(stored.clone(), &sender.user_id);
    rules::render(&ruleset, stored.as_ref())
}

/// One rule of the rendered ruleset.
fn rendered_rule(
    services: &Services,
    sender: &Sender,
    kind: &RuleKind,
    id: &str,
) -> Result<JsonValue> {
    let mut ruleset = rendered_ruleset(services, sender)?;
    ruleset
        .get_mut(kind.as_str())
        .and_then(JsonValue::as_array_mut)
        .and_then(|rules| {
            rules
                .iter_mut()
                .find(|rule| rule.get("rule_id").and_then(JsonValue::as_str) == Some(id))
        })
        .map(JsonValue::take)
        .ok_or_else(rule_not_found)
}

/// The `actions` of a request body as the client wrote them.
fn written_actions(raw_body: &[u8], kind: RuleKind, rule_id: &str) -> Option<WrittenActions> {
    let body: JsonValue = serde_json::from_slice(raw_body).ok()?;
    let actions = body.get("actions")?.clone();
    Some(WrittenActions { kind, rule_id: rule_id.to_owned(), actions })
}

/// Applies `update` to the caller's rules through their actor, then drops the cached copy.
async fn update_rules(
    services: &Services,
    sender: &Sender,
    update: PushRulesUpdate,
    written: Option<WrittenActions>,
) -> Result<()> {
    services
        .accounts
        .call(&sender.user_id, |reply| UserMessage::UpdatePushRules { update, written, reply })
        .await?;
    services.push.rules.invalidate(&sender.user_id);
    Ok(())
}

async fn all_rules(
    services: Arc<Services>,
    request: Ruma<get_pushrules_all::v3::Request>,
) -> Result<axum::Json<JsonValue>> {
    let global = rendered_ruleset(&services, request.sender()?)?;
    Ok(axum::Json(serde_json::json!({ "global": global })))
}

async fn global_rules(
    services: Arc<Services>,
    request: Ruma<get_pushrules_global_scope::v3::Request>,
) -> Result<axum::Json<JsonValue>> {
    Ok(axum::Json(rendered_ruleset(&services, request.sender()?)?))
}

async fn get_rule(
    services: Arc<Services>,
    request: Ruma<get_pushrule::v3::Request>,
) -> Result<axum::Json<JsonValue>> {
    let rule =
        rendered_rule(&services, request.sender()?, &request.body.kind, &request.body.rule_id)?;
    Ok(axum::Json(rule))
}

async fn set_rule(
    services: Arc<Services>,
    request: Ruma<set_pushrule::v3::Request>,
) -> Result<set_pushrule::v3::Response> {
    let sender = request.sender()?.clone();
    let body = request.body;
    check_new_rule(&body.rule)?;
    let written = written_actions(&request.raw_body, body.rule.kind(), body.rule.rule_id());
    update_rules(
        &services,
        &sender,
        Box::new(move |rules: &mut Ruleset| {
            rules.insert(body.rule, body.after.as_deref(), body.before.as_deref()).map_err(
                |error| match error {
                    InsertPushRuleError::UnknownRuleId => {
                        Error::not_found("The rule named in before/after does not exist.")
                    }
                    other => Error::invalid_param(format!("Invalid push rule: {other}")),
                },
            )
        }),
        written,
    )
    .await?;
    Ok(set_pushrule::v3::Response::new())
}

/// Bounds on a new rule's strings. The room actor evaluates every rule of every member for
/// each event, and ruma compiles a pattern with wildcards into a regular expression (and
/// panics when it grows past the regex crate's size limit).
fn check_new_rule(rule: &NewPushRule) -> Result<()> {
    let (rule_id, conditions): (&str, &[PushCondition]) = match rule {
        NewPushRule::Content(rule) => {
            validate::max_chars(
                "A push rule pattern",
                &rule.pattern,
                limits::MAX_PUSH_PATTERN_CHARS,
            )?;
            (&rule.rule_id, &[])
        }
        NewPushRule::Override(rule) | NewPushRule::Underride(rule) => {
            (&rule.rule_id, &rule.conditions)
        }
        NewPushRule::Room(rule) => (rule.rule_id.as_str(), &[]),
        NewPushRule::Sender(rule) => (rule.rule_id.as_str(), &[]),
        _ => return Err(Error::invalid_param("Unknown push rule kind.")),
    };
    validate::max_bytes("A push rule ID", rule_id, limits::MAX_ID_BYTES)?;
    for condition in conditions {
        if let PushCondition::EventMatch(data) = condition {
            validate::max_chars("A push rule key", &data.key, limits::MAX_PUSH_PATTERN_CHARS)?;
            validate::max_chars(
                "A push rule pattern",
                &data.pattern,
                limits::MAX_PUSH_PATTERN_CHARS,
            )?;
        }
    }
    Ok(())
}

async fn delete_rule(
    services: Arc<Services>,
    request: Ruma<delete_pushrule::v3::Request>,
) -> Result<delete_pushrule::v3::Response> {
    let sender = request.sender()?.clone();
    let body = request.body;
    update_rules(
        &services,
        &sender,
        Box::new(move |rules: &mut Ruleset| {
            rules.remove(body.kind, &body.rule_id).map_err(|error| match error {
                RemovePushRuleError::NotFound => rule_not_found(),
                other => Error::invalid_param(format!("Cannot remove this rule: {other}")),
            })
        }),
        None,
    )
    .await?;
    Ok(delete_pushrule::v3::Response::new())
}

async fn get_enabled(
    services: Arc<Services>,
    request: Ruma<get_pushrule_enabled::v3::Request>,
) -> Result<get_pushrule_enabled::v3::Response> {
    let rules = ruleset(&services, request.sender()?)?;
    let rule =
        rules.get(request.body.kind.clone(), &request.body.rule_id).ok_or_else(rule_not_found)?;
    Ok(get_pushrule_enabled::v3::Response::new(rule.enabled()))
}

async fn set_enabled(
    services: Arc<Services>,
    request: Ruma<set_pushrule_enabled::v3::Request>,
) -> Result<set_pushrule_enabled::v3::Response> {
    let sender = request.sender()?.clone();
    let body = request.body;
    update_rules(
        &services,
        &sender,
        Box::new(move |rules: &mut Ruleset| {
            rules.set_enabled(body.kind, &body.rule_id, body.enabled).map_err(|_| rule_not_found())
        }),
        None,
    )
    .await?;
    Ok(set_pushrule_enabled::v3::Response::new())
}

async fn get_actions(
    services: Arc<Services>,
    request: Ruma<get_pushrule_actions::v3::Request>,
) -> Result<axum::Json<JsonValue>> {
    let rule =
        rendered_rule(&services, request.sender()?, &request.body.kind, &request.body.rule_id)?;
    Ok(axum::Json(serde_json::json!({ "actions": rule["actions"] })))
}

async fn set_actions(
    services: Arc<Services>,
    request: Ruma<set_pushrule_actions::v3::Request>,
) -> Result<set_pushrule_actions::v3::Response> {
    let sender = request.sender()?.clone();
    let body = request.body;
    let written = written_actions(&request.raw_body, body.kind.clone(), &body.rule_id);
    update_rules(
        &services,
        &sender,
        Box::new(move |rules: &mut Ruleset| {
            rules.set_actions(body.kind, &body.rule_id, body.actions).map_err(|_| rule_not_found())
        }),
        written,
    )
    .await?;
    Ok(set_pushrule_actions::v3::Response::new())
}

async fn list_pushers(
    services: Arc<Services>,
    request: Ruma<get_pushers::v3::Request>,
) -> Result<get_pushers::v3::Response> {
    let user = &request.sender()?.user_id;
    let mut pushers = Vec::new();
    for (_, Json(record)) in PUSHERS_TABLE.collect(
        services.storage.engine(),
        &Prefix::of(user),
        Direction::Forward,
        usize::MAX,
    )? {
        if let Ok(pusher) = serde_json::from_value(record.pusher) {
            pushers.push(pusher);
        }
    }
    Ok(get_pushers::v3::Response::new(pushers))
}

/// Checks an HTTP pusher's gateway URL: http(s), the Push Gateway API's path.
fn check_pusher(pusher: &JsonValue) -> Result<()> {
    match pusher["kind"].as_str() {
        Some("http") => {}
        Some("email") => {
            return Err(Error::invalid_param("This server does not send email notifications."));
        }
        _ => return Err(Error::invalid_param("Unknown pusher kind.")),
    }
    if let Some(format) = pusher["data"]["format"].as_str() {
        validate::known_value("data.format", format, &["event_id_only"])?;
    }
    let url = pusher["data"]["url"]
        .as_str()
        .ok_or_else(|| Error::missing_param("An http pusher needs data.url."))?;
    let parsed =
        reqwest::Url::parse(url).map_err(|_| Error::invalid_param("data.url is not a URL."))?;
    if !matches!(parsed.scheme(), "http" | "https") || parsed.path() != GATEWAY_PATH {
        return Err(Error::invalid_param(format!(
            "data.url must be an http(s) URL with the path {GATEWAY_PATH}."
        )));
    }
    Ok(())
}

async fn remove_pusher(
    services: &Services,
    user: &ruma::UserId,
    app_id: String,
    pushkey: String,
) -> Result<()> {
    services
        .push
        .pushers
        .call(
            &user.to_owned(),
            |reply| PusherMessage::Remove { app_id, pushkey, reply },
            PUSHER_CALL_TIMEOUT,
        )
        .await?
}

async fn set_pusher_handler(
    services: Arc<Services>,
    request: Ruma<set_pusher::v3::Request>,
) -> Result<set_pusher::v3::Response> {
    let user = request.sender()?.user_id.clone();
    match request.body.action {
        set_pusher::v3::PusherAction::Post(data) => {
            let PusherIds { app_id, pushkey, .. } = data.pusher.ids.clone();
            validate::max_bytes("A pushkey", &pushkey, limits::MAX_PUSHKEY_BYTES)?;
            validate::max_chars("An app_id", &app_id, limits::MAX_APP_ID_CHARS)?;
            let pusher = serde_json::to_value(&data.pusher)?;
            if serde_json::to_vec(&pusher)?.len() > limits::MAX_PUSHER_BYTES {
                return Err(Error::field_too_large(format!(
                    "A pusher is limited to {} bytes.",
                    limits::MAX_PUSHER_BYTES
                )));
            }
            check_pusher(&pusher)?;
            if !data.append {
                // The same app and pushkey for other users means the device changed hands.
                let mut others = Vec::new();
                PUSHKEYS_TABLE.scan(
                    services.storage.engine(),
                    &Prefix::of2(app_id.as_str(), pushkey.as_str()),
                    None,
                    Direction::Forward,
                    |(_, _, other), ()| {
                        others.push(other);
                        ControlFlow::Continue(())
                    },
                )?;
                for other in others {
                    if other != user {
                        remove_pusher(&services, &other, app_id.clone(), pushkey.clone()).await?;
                    }
                }
            }
            let record = PusherRecord {
                pusher,
                created_ms: services.time.now_ms(),
                since_position: services.storage.writer().committed_position(),
            };
            services
                .push
                .pushers
                .call(
                    &user,
                    |reply| PusherMessage::Set { app_id, pushkey, record, reply },
                    PUSHER_CALL_TIMEOUT,
                )
                .await??;
        }
        set_pusher::v3::PusherAction::Delete(PusherIds { app_id, pushkey, .. }) => {
            remove_pusher(&services, &user, app_id, pushkey).await?;
        }
        _ => return Err(Error::invalid_param("Unknown pusher action.")),
    }
    Ok(set_pusher::v3::Response::new())
}

async fn notifications(
    services: Arc<Services>,
    request: Ruma<get_notifications::v3::Request>,
) -> Result<get_notifications::v3::Response> {
    let user = request.sender()?.user_id.clone();
    let body = request.body;
    let engine = services.storage.engine();
    let limit = body
        .limit
        .map_or(DEFAULT_NOTIFICATIONS, |limit| {
            usize::try_from(u64::from(limit)).unwrap_or(MAX_NOTIFICATIONS)
        })
        .clamp(1, MAX_NOTIFICATIONS);
    let from = match body.from.as_deref() {
        Some(from) => {
            Some(from.parse::<u64>().map_err(|_| Error::invalid_param("Invalid from token."))?)
        }
        None => None,
    };
    let only_highlight = body.only.as_deref() == Some("highlight");
    let mut found = Vec::new();
    let mut next_token = None;
    let start = from.map(|from| (user.to_owned(), from.saturating_sub(1)));
    NOTIFICATIONS_TABLE.scan(
        engine,
        &Prefix::of(&user),
        start.as_ref(),
        Direction::Reverse,
        |(_, position), Json(record)| {
            if from.is_some_and(|from| position >= from) {
                return ControlFlow::Continue(());
            }
            if found.len() >= limit {
                next_token = found.last().map(|(position, _): &(u64, _)| position.to_string());
                return ControlFlow::Break(());
            }
            if !only_highlight || record.highlight {
                found.push((position, record));
            }
            ControlFlow::Continue(())
        },
    )?;
    let mut room_shorts: HashMap<OwnedRoomId, u64> = HashMap::new();
    let mut result = Vec::with_capacity(found.len());
    for (position, record) in found {
        let Some(pdu) = rooms::readable_pdu(engine, record.event)? else { continue };
        let room_short = match room_shorts.get(&record.room_id) {
            Some(short) => *short,
            None => {
                let Some(room) = rooms::room(&services.storage, &record.room_id)? else { continue };
                room_shorts.insert(record.room_id.clone(), room.short);
                room.short
            }
        };
        let read =
            !UNREAD_EVENTS_TABLE.contains(engine, &(user.to_owned(), room_short, position))?;
        let event = Raw::from_json(serde_json::value::to_raw_value(
            &pdu.client_json(serde_json::Map::new()),
        )?);
        let actions = serde_json::from_value(record.actions).unwrap_or_default();
        let ts = MilliSecondsSinceUnixEpoch(UInt::new_saturating(record.ts));
        result.push(get_notifications::v3::Notification::new(
            actions,
            event,
            read,
            pdu.room_id.clone(),
            ts,
        ));
    }
    let mut response = get_notifications::v3::Response::new(result);
    response.next_token = next_token;
    Ok(response)
}
