//! Relations between events (`m.relates_to`): what the room actor indexes when it commits an
//! event and what the read paths follow.

use ruma::{EventId, OwnedEventId};

use super::Pdu;

/// The `m.relates_to` target and relation type of an event.
pub fn relation_of(pdu: &Pdu) -> Option<(OwnedEventId, String)> {
    let content = pdu.content_value();
    let relates_to = content.get("m.relates_to")?;
    let rel_type = relates_to.get("rel_type")?.as_str()?.to_owned();
    let event_id = EventId::parse(relates_to.get("event_id")?.as_str()?).ok()?;
    Some((event_id, rel_type))
}
