//! Pruning of users' notification lists: entries older than `notification_retention_seconds`
//! are deleted by the hourly housekeeping, so the list (one row per notified member of every
//! message) does not grow without end. Unread counts are kept apart and stay exact.

use std::ops::ControlFlow;

use ruma::OwnedUserId;

use crate::{
    Result,
    storage::{
        Batch, Direction, Storage,
        codec::{Json, Prefix},
        push::NOTIFICATIONS_TABLE,
    },
};

/// Rows deleted per commit, to keep each batch small.
const ROWS_PER_COMMIT: usize = 4096;

/// Deletes notifications older than `retention_seconds` before `now_ms` (0 keeps them all);
/// returns how many were deleted. A user's entries are in stream order, which follows time,
/// so each user's scan stops at the first entry young enough to keep.
pub async fn purge_notifications(
    storage: &Storage,
    retention_seconds: u64,
    now_ms: u64,
) -> Result<usize> {
    purge_notifications_in_chunks(storage, retention_seconds, now_ms, ROWS_PER_COMMIT).await
}

/// [`purge_notifications`], committing every `rows_per_commit` deletions.
pub async fn purge_notifications_in_chunks(
    storage: &Storage,
    retention_seconds: u64,
    now_ms: u64,
    rows_per_commit: usize,
) -> Result<usize> {
    let rows_per_commit = rows_per_commit.max(1);
    if retention_seconds == 0 {
        return Ok(0);
    }
    let cutoff = now_ms.saturating_sub(retention_seconds.saturating_mul(1000));
    let mut purged = 0;
    let mut batch = Batch::new();
    let mut pending = 0;
    let mut start: Option<(OwnedUserId, u64)> = None;
    loop {
        let mut next_user = None;
        let mut visited = false;
        NOTIFICATIONS_TABLE.scan(
            storage.engine(),
            &Prefix::all(),
            start.as_ref(),
            Direction::Forward,
            |(user, position), Json(record)| {
                visited = true;
                if record.ts > cutoff {
                    // The rest of this user's list is younger: go on after it.
                    next_user = Some((user, u64::MAX));
                    return ControlFlow::Break(());
                }
                NOTIFICATIONS_TABLE.delete(&mut batch, &(user, position));
                pending += 1;
                if pending >= rows_per_commit {
                    return ControlFlow::Break(());
                }
                ControlFlow::Continue(())
            },
        )?;
        if pending >= rows_per_commit || (!visited || next_user.is_none()) && pending > 0 {
            storage.writer().commit(std::mem::take(&mut batch)).await?;
            purged += pending;
            pending = 0;
        }
        match next_user {
            Some(next) => start = Some(next),
            // A full batch resumes where it stopped (those rows are deleted now).
            None if visited => {}
            None => break,
        }
    }
    Ok(purged)
}
