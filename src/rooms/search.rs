//! The search index's words: how a message body is split when the room actor indexes it and
//! when a search term is matched against the index.

use ruma::events::TimelineEventType;

use super::Pdu;

/// The words of a message body, as the search index stores them.
pub fn search_words(pdu: &Pdu) -> Vec<String> {
    if pdu.kind != TimelineEventType::RoomMessage {
        return Vec::new();
    }
    let Some(body) = pdu.content_str("body") else {
        return Vec::new();
    };
    let mut words: Vec<String> = tokenize(&body);
    words.sort_unstable();
    words.dedup();
    words.truncate(256);
    words
}

/// Lower-cased alphanumeric words of at most 64 bytes.
pub fn tokenize(text: &str) -> Vec<String> {
    text.split(|c: char| !c.is_alphanumeric())
        .filter(|word| !word.is_empty() && word.len() <= 64)
        .map(str::to_lowercase)
        .collect()
}
