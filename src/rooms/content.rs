//! Typed reads of the state event contents that rooms' rules depend on, through ruma's
//! types, in one place so that every reader agrees. Reads are lenient: a content that does
//! not parse means what its absence means, as the spec's defaults say.

use ruma::{
    OwnedRoomId,
    events::room::{
        history_visibility::{HistoryVisibility, RoomHistoryVisibilityEventContent},
        join_rules::RoomJoinRulesEventContent,
        member::MembershipState,
    },
    room::{AllowRule, JoinRule, JoinRuleSummary},
};
use serde::Deserialize;

use super::Pdu;

/// The join rule of a room whose `m.room.join_rules` event is `event`: `invite` without one
/// (the spec's default) or when its content is unreadable. A readable rule with an unreadable
/// allow list keeps its rule and allows no room.
pub fn join_rule(event: Option<&Pdu>) -> JoinRule {
    let Some(event) = event else {
        return JoinRule::Invite;
    };
    let content = event.content.get();
    let rule = serde_json::from_str::<RoomJoinRulesEventContent>(content)
        .map(|content| content.join_rule)
        .or_else(|_| {
            #[derive(Deserialize)]
            struct RuleOnly {
                join_rule: String,
            }
            let RuleOnly { join_rule } = serde_json::from_str(content)?;
            serde_json::from_value(serde_json::json!({ "join_rule": join_rule }))
        });
    match rule {
        Ok(rule) if !rule.as_str().is_empty() => rule,
        Ok(_) => JoinRule::Invite,
        Err(error) => {
            tracing::warn!(event = %event.event_id, %error, "unreadable join rules");
            JoinRule::Invite
        }
    }
}

/// The history visibility of a room whose `m.room.history_visibility` event is `event`:
/// `shared` without one (the spec's default) or when its content is unreadable.
pub fn history_visibility(event: Option<&Pdu>) -> HistoryVisibility {
    event
        .and_then(|event| event.content_as::<RoomHistoryVisibilityEventContent>().ok())
        .map_or(HistoryVisibility::Shared, |content| content.history_visibility)
}

/// The membership an `m.room.member` event states; `None` when its content has no readable
/// `membership` (the rest of the content does not matter).
pub fn membership(event: &Pdu) -> Option<MembershipState> {
    #[derive(Deserialize)]
    struct MembershipOnly {
        membership: MembershipState,
    }
    serde_json::from_str::<MembershipOnly>(event.content.get()).ok().map(|only| only.membership)
}

/// The rooms whose members may join under `rule` (its `m.room_membership` allow rules).
pub fn allowed_rooms(rule: &JoinRule) -> Vec<OwnedRoomId> {
    match rule {
        JoinRule::Restricted(restricted) | JoinRule::KnockRestricted(restricted) => restricted
            .allow
            .iter()
            .filter_map(|allow| match allow {
                AllowRule::RoomMembership(membership) => Some(membership.room_id.clone()),
                _ => None,
            })
            .collect(),
        _ => Vec::new(),
    }
}

/// `rule` as a room summary states it; a rule this server does not know lets nobody in
/// unasked, so it shows as `private`.
pub fn join_rule_summary(rule: &JoinRule) -> JoinRuleSummary {
    match rule {
        JoinRule::Invite
        | JoinRule::Knock
        | JoinRule::Private
        | JoinRule::Public
        | JoinRule::Restricted(_)
        | JoinRule::KnockRestricted(_) => JoinRuleSummary::from(rule.clone()),
        _ => JoinRuleSummary::Private,
    }
}

#[cfg(test)]
mod tests {
    use ruma::CanonicalJsonValue;
    use serde_json::json;

    use super::*;

    fn join_rules(content: serde_json::Value) -> Pdu {
        let event = json!({
            "event_id": "$jr:x", "room_id": "!r:x", "sender": "@a:x",
            "type": "m.room.join_rules", "state_key": "", "origin_server_ts": 1,
            "content": content,
        });
        let Ok(CanonicalJsonValue::Object(object)) = CanonicalJsonValue::try_from(event) else {
            panic!("test event is canonical");
        };
        Pdu::from_json(object).expect("test event parses")
    }

    fn rooms(rule: &JoinRule) -> Vec<String> {
        allowed_rooms(rule).iter().map(ToString::to_string).collect()
    }

    #[test]
    fn allowed_rooms_are_the_membership_rules() {
        let event = join_rules(json!({"join_rule": "restricted", "allow": [
            {"type": "m.room_membership", "room_id": "!a:x"},
            {"type": "m.other", "room_id": "!b:x"},
            {"type": "m.room_membership", "room_id": "not a room"},
            {"type": "m.room_membership"},
        ]}));
        let rule = join_rule(Some(&event));
        assert_eq!(rule.as_str(), "restricted");
        assert_eq!(rooms(&rule), ["!a:x"]);
        let summary = serde_json::to_value(join_rule_summary(&rule)).expect("serializes");
        assert_eq!(summary["allowed_room_ids"], json!(["!a:x"]));
    }

    #[test]
    fn an_unreadable_allow_list_keeps_the_rule_and_allows_no_room() {
        let rule =
            join_rule(Some(&join_rules(json!({"join_rule": "knock_restricted", "allow": "nope"}))));
        assert_eq!(rule.as_str(), "knock_restricted");
        assert!(rooms(&rule).is_empty());
    }

    #[test]
    fn absent_empty_and_unreadable_rules_are_invite() {
        assert_eq!(join_rule(None).as_str(), "invite");
        assert_eq!(join_rule(Some(&join_rules(json!({"join_rule": ""})))).as_str(), "invite");
        assert_eq!(join_rule(Some(&join_rules(json!({"join_rule": 3})))).as_str(), "invite");
        assert_eq!(join_rule(Some(&join_rules(json!({})))).as_str(), "invite");
    }

    #[test]
    fn history_visibility_defaults_to_shared() {
        // Only the content matters to the reader.
        let read = |content| history_visibility(Some(&join_rules(content)));
        assert_eq!(history_visibility(None), HistoryVisibility::Shared);
        assert_eq!(
            read(json!({"history_visibility": "world_readable"})),
            HistoryVisibility::WorldReadable
        );
        assert_eq!(read(json!({"history_visibility": "joined"})), HistoryVisibility::Joined);
        assert_eq!(read(json!({"history_visibility": 3})), HistoryVisibility::Shared);
        assert_eq!(read(json!({})), HistoryVisibility::Shared);
    }

    #[test]
    fn membership_reads_only_the_membership_field() {
        // Only the content matters to the reader.
        let read = |content| membership(&join_rules(content));
        assert_eq!(read(json!({"membership": "ban", "reason": 3})), Some(MembershipState::Ban));
        assert_eq!(read(json!({"membership": "join"})), Some(MembershipState::Join));
        assert_eq!(
            read(json!({"membership": "x.custom"})).map(|m| m.to_string()),
            Some("x.custom".to_owned())
        );
        assert_eq!(read(json!({"membership": 3})), None);
        assert_eq!(read(json!({})), None);
    }

    #[test]
    fn unknown_rules_summarise_as_private() {
        let rule = join_rule(Some(&join_rules(json!({"join_rule": "by_riddle"}))));
        assert_eq!(rule.as_str(), "by_riddle");
        assert_eq!(join_rule_summary(&rule), JoinRuleSummary::Private);
        let public = join_rule(Some(&join_rules(json!({"join_rule": "public"}))));
        assert_eq!(join_rule_summary(&public), JoinRuleSummary::Public);
    }
}
