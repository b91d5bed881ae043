//! Event filters (`RoomEventFilter`): types and senders with `*` wildcards, rooms, URLs.

use ruma::api::client::filter::{RoomEventFilter, UrlFilter};

use super::Pdu;

/// Whether `pattern` (which may end in `*`) matches `kind`.
fn type_matches(pattern: &str, kind: &str) -> bool {
    match pattern.strip_suffix('*') {
        Some(prefix) => kind.starts_with(prefix),
        None => pattern == kind,
    }
}

/// Whether an event of `kind` passes the type lists of a filter.
pub fn allows_type(types: Option<&[String]>, not_types: &[String], kind: &str) -> bool {
    if not_types.iter().any(|pattern| type_matches(pattern, kind)) {
        return false;
    }
    types.is_none_or(|types| types.iter().any(|pattern| type_matches(pattern, kind)))
}

/// Whether `pdu` passes `filter`.
pub fn allows(filter: &RoomEventFilter, pdu: &Pdu) -> bool {
    let kind = pdu.kind.to_string();
    if !allows_type(filter.types.as_deref(), &filter.not_types, &kind) {
        return false;
    }
    if filter.not_senders.contains(&pdu.sender)
        || filter.senders.as_ref().is_some_and(|senders| !senders.contains(&pdu.sender))
    {
        return false;
    }
    if filter.not_rooms.contains(&pdu.room_id)
        || filter.rooms.as_ref().is_some_and(|rooms| !rooms.contains(&pdu.room_id))
    {
        return false;
    }
    match filter.url_filter {
        Some(UrlFilter::EventsWithUrl) => pdu.content_value().get("url").is_some(),
        Some(UrlFilter::EventsWithoutUrl) => pdu.content_value().get("url").is_none(),
        _ => true,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wildcards() {
        assert!(allows_type(Some(&["m.room.*".to_owned()]), &[], "m.room.message"));
        assert!(!allows_type(Some(&["m.room.*".to_owned()]), &[], "m.reaction"));
        assert!(!allows_type(None, &["m.room.member".to_owned()], "m.room.member"));
        assert!(allows_type(None, &[], "anything"));
        assert!(!allows_type(Some(&[]), &[], "anything"));
    }
}
