//! Media retention: media nobody has downloaded for longer than the operator keeps it
//! (`media_retention_local_days` for uploads, `media_retention_remote_days` for what other
//! servers' media is cached here) is deleted by the hourly housekeeping, file, thumbnails
//! and record, through its owner's actor like any deletion.
//!
//! Downloads are recorded to the day, not per hit: a download writes only when its media
//! was last recorded on an earlier day (the record is read to serve it anyway), so a file
//! downloaded a thousand times a day costs one write. A recorded day counts as its last
//! millisecond, so the coarse record can only keep media longer, never delete it early.

use std::ops::ControlFlow;

use super::{Media, owner::OwnerMessage};
use crate::{
    Result,
    storage::{Direction, codec::Json, codec::Prefix, media::MEDIA_TABLE, media::MediaRecord},
};

/// One day in milliseconds, the grain of recorded downloads.
pub const DAY_MS: u64 = 86_400_000;

/// How long unused media is kept, in days; 0 keeps it forever.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Retention {
    pub local_days: u64,
    pub remote_days: u64,
}

/// Media retention would delete now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Unused {
    pub owner: String,
    pub server_name: String,
    pub media_id: String,
    pub size: u64,
    pub last_used_ms: u64,
}

impl Retention {
    pub fn is_off(&self) -> bool {
        self.local_days == 0 && self.remote_days == 0
    }

    /// Whether `record` (of this server's media when `local`) has gone unused for the
    /// whole retention period at `now_ms`.
    pub fn expired(&self, record: &MediaRecord, local: bool, now_ms: u64) -> bool {
        let days = if local { self.local_days } else { self.remote_days };
        days > 0
            && !record.is_pending()
            && now_ms.saturating_sub(last_used_ms(record)) >= days.saturating_mul(DAY_MS)
    }
}

/// The day (since the epoch) of `ms`.
pub fn day_of(ms: u64) -> u64 {
    ms / DAY_MS
}

/// When `record` was last used: its upload (or fetch), or the end of the last day it was
/// downloaded on, whichever is later.
pub fn last_used_ms(record: &MediaRecord) -> u64 {
    let downloaded =
        record.accessed_day.map_or(0, |day| day.saturating_add(1).saturating_mul(DAY_MS) - 1);
    record.created_ms.max(downloaded)
}

impl Media {
    /// The retention policy in force.
    pub fn retention(&self) -> Retention {
        self.retention
    }

    /// Every media item the policy would delete now, oldest use first.
    pub fn unused(&self) -> Result<Vec<Unused>> {
        let mut unused = Vec::new();
        if self.retention.is_off() {
            return Ok(unused);
        }
        let now = self.time.now_ms();
        MEDIA_TABLE.scan(
            self.storage.engine(),
            &Prefix::all(),
            None,
            Direction::Forward,
            |(server_name, media_id), Json(record)| {
                let local = server_name == self.server_name;
                if self.retention.expired(&record, local, now) {
                    let last_used_ms = last_used_ms(&record);
                    unused.push(Unused {
                        owner: record.owner,
                        server_name,
                        media_id,
                        size: record.size,
                        last_used_ms,
                    });
                }
                ControlFlow::Continue(())
            },
        )?;
        unused.sort_by_key(|item| item.last_used_ms);
        Ok(unused)
    }

    /// Deletes what the policy says has gone unused; returns how many items and bytes.
    /// Each owner's actor checks again before deleting, after any download it was told of.
    pub async fn apply_retention(&self) -> Result<(usize, u64)> {
        let (mut count, mut bytes) = (0, 0);
        let now_ms = self.time.now_ms();
        let retention = self.retention;
        for item in self.unused()? {
            let Unused { owner, server_name, media_id, .. } = item;
            let deleted = self
                .call_owner(&owner, |reply| OwnerMessage::Expire {
                    server_name,
                    media_id,
                    retention,
                    now_ms,
                    reply,
                })
                .await?;
            if let Some(record) = deleted {
                count += 1;
                bytes += record.size;
            }
        }
        if count > 0 {
            metrics::counter!("tuwunel_media_retention_deleted_total").increment(count as u64);
        }
        Ok((count, bytes))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const CREATED: u64 = 1_700_000_000_000;

    fn record(accessed_day: Option<u64>) -> MediaRecord {
        MediaRecord { created_ms: CREATED, size: 1, accessed_day, ..MediaRecord::default() }
    }

    #[test]
    fn unused_media_expires_exactly_after_its_days() {
        let retention = Retention { local_days: 30, remote_days: 7 };
        let never = record(None);
        let local_limit = CREATED + 30 * DAY_MS;
        assert!(!retention.expired(&never, true, local_limit - 1));
        assert!(retention.expired(&never, true, local_limit));
        let remote_limit = CREATED + 7 * DAY_MS;
        assert!(!retention.expired(&never, false, remote_limit - 1));
        assert!(retention.expired(&never, false, remote_limit));
    }

    #[test]
    fn a_download_counts_to_the_end_of_its_day() {
        let retention = Retention { local_days: 30, remote_days: 0 };
        let day = day_of(CREATED) + 10;
        let downloaded = record(Some(day));
        let end_of_day = (day + 1) * DAY_MS - 1;
        assert_eq!(last_used_ms(&downloaded), end_of_day);
        assert!(!retention.expired(&downloaded, true, end_of_day + 30 * DAY_MS - 1));
        assert!(retention.expired(&downloaded, true, end_of_day + 30 * DAY_MS));
        // A download recorded on the upload's own day changes nothing earlier.
        assert_eq!(
            last_used_ms(&record(Some(day_of(CREATED)))),
            (day_of(CREATED) + 1) * DAY_MS - 1
        );
    }

    #[test]
    fn zero_days_keep_forever_and_pending_ids_are_left_alone() {
        let retention = Retention { local_days: 0, remote_days: 1 };
        assert!(!retention.expired(&record(None), true, u64::MAX));
        assert!(retention.expired(&record(None), false, u64::MAX));
        let pending = MediaRecord { pending_until_ms: Some(CREATED), ..record(None) };
        assert!(!retention.expired(&pending, false, u64::MAX));
        assert!(Retention::default().is_off());
    }
}
