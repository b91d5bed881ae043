//! Unread notification counts: reading them for /sync and push payloads, and the receipt
//! rule that resets them (a threaded receipt resets only its thread).

use std::{collections::BTreeMap, ops::ControlFlow, sync::Arc};

use ruma::UserId;

use crate::{
    Result,
    storage::{
        Batch, Direction, Read, Storage,
        codec::{Json, Prefix},
        push::{ThreadCounts, UNREAD_COUNTS_TABLE, UNREAD_EVENTS_TABLE, UnreadCounts},
    },
};

/// Counts of one room by thread (`""` is the main timeline).
pub fn room_counts(
    reader: &(impl Read + ?Sized),
    user: &UserId,
    room: u64,
) -> Result<ThreadCounts> {
    let mut counts = ThreadCounts::default();
    // The main timeline's row is rewritten by every notifying event, so the table holds many
    // versions of it until compaction: a scan that began on it would step over them all.
    // It is read with a point read, and the scan for threads starts past it.
    let user_key = user.to_owned();
    if let Some(Json(main)) =
        UNREAD_COUNTS_TABLE.get(reader, &(user_key.clone(), room, String::new()))?
    {
        counts.insert(String::new(), main);
    }
    UNREAD_COUNTS_TABLE.scan(
        reader,
        &Prefix::of2(user, &room),
        Some(&(user_key, room, "\0".to_owned())),
        Direction::Forward,
        |(_, _, thread), Json(record)| {
            counts.insert(thread, record);
            ControlFlow::Continue(())
        },
    )?;
    Ok(counts.shrunk())
}

/// [`room_counts`] through the coherent cache, for /sync and push evaluation.
pub fn cached_room_counts(
    storage: &Storage,
    user: &UserId,
    room: u64,
) -> Result<Arc<ThreadCounts>> {
    storage
        .coherent()
        .unread_counts
        .get(&(user.to_owned(), room), || room_counts(storage.engine(), user, room))
}

/// Unread notifications across all of a user's rooms (a push payload's `counts.unread`).
pub fn total_unread(reader: &(impl Read + ?Sized), user: &UserId) -> Result<u64> {
    let mut total = 0;
    UNREAD_COUNTS_TABLE.scan(
        reader,
        &Prefix::of(user),
        None,
        Direction::Forward,
        |_, Json(record)| {
            total += record.notifications;
            ControlFlow::Continue(())
        },
    )?;
    Ok(total)
}

/// Adds to `batch` the removal of the unread events a receipt at `upto` covers: all threads
/// for an unthreaded receipt, else only the receipt's thread (`"main"` is the main timeline).
/// Answers the new counts of the threads that changed; the caller stamps their position.
pub fn read_up_to(
    reader: &(impl Read + ?Sized),
    user: &UserId,
    room: u64,
    upto: u64,
    thread: Option<&str>,
    batch: &mut Batch,
) -> Result<BTreeMap<String, UnreadCounts>> {
    let wanted = thread.map(|thread| if thread == "main" { "" } else { thread });
    let mut removed: BTreeMap<String, (u64, u64)> = BTreeMap::new();
    UNREAD_EVENTS_TABLE.scan(
        reader,
        &Prefix::of2(user, &room),
        None,
        Direction::Forward,
        |key, Json(record)| {
            if key.2 > upto {
                return ControlFlow::Break(());
            }
            if wanted.is_none_or(|wanted| wanted == record.thread) {
                UNREAD_EVENTS_TABLE.delete(batch, &key);
                let entry = removed.entry(record.thread).or_default();
                entry.0 += 1;
                entry.1 += u64::from(record.highlight);
            }
            ControlFlow::Continue(())
        },
    )?;
    let mut current = room_counts(reader, user, room)?;
    let mut changed = BTreeMap::new();
    for (thread, (notifications, highlights)) in removed {
        let mut counts = current.remove(&thread).unwrap_or_default();
        counts.notifications = counts.notifications.saturating_sub(notifications);
        counts.highlights = counts.highlights.saturating_sub(highlights);
        changed.insert(thread, counts);
    }
    Ok(changed)
}

/// The row [`write_counts`] leaves for one thread's new counts: none for a thread with
/// nothing unread (the main timeline's row always stays).
fn stored_counts(thread: &str, mut counts: UnreadCounts, position: u64) -> Option<UnreadCounts> {
    if counts.notifications == 0 && counts.highlights == 0 && !thread.is_empty() {
        return None;
    }
    counts.position = position;
    Some(counts)
}

/// Writes `changed` counts stamped with `position` (dropping threads with nothing unread).
pub fn write_counts(
    batch: &mut Batch,
    user: &UserId,
    room: u64,
    changed: BTreeMap<String, UnreadCounts>,
    position: u64,
) {
    for (thread, counts) in changed {
        let key = (user.to_owned(), room, thread);
        match stored_counts(&key.2, counts, position) {
            Some(counts) => UNREAD_COUNTS_TABLE.put(batch, &key, &Json(counts)),
            None => UNREAD_COUNTS_TABLE.delete(batch, &key),
        }
    }
}

/// A room's counts (as [`room_counts`] reads them) after [`write_counts`] wrote `changed`.
pub fn with_written(
    counts: &ThreadCounts,
    changed: &BTreeMap<String, UnreadCounts>,
    position: u64,
) -> ThreadCounts {
    let mut after = counts.clone();
    for (thread, counts) in changed {
        match stored_counts(thread, counts.clone(), position) {
            Some(counts) => after.insert(thread.clone(), counts),
            None => {
                after.remove(thread);
            }
        }
    }
    after.shrunk()
}
