//! End-to-end encryption: whose devices to re-fetch, and this device's key supply.

use std::collections::HashMap;

use ruma::{OwnedRoomId, UInt, api::client::sync::sync_events::v3::Response};

use super::SyncContext;
use crate::{
    Result,
    keys::{device_lists, query as keys_query},
    storage::rooms::MembershipRecord,
};

/// Device list changes (incremental syncs only) and the one-time and fallback key counts
/// into `response`; true when a device list changed.
pub(super) fn keys(
    ctx: &SyncContext<'_>,
    memberships: &[(OwnedRoomId, MembershipRecord)],
    membership_changes: &HashMap<OwnedRoomId, Vec<(String, String)>>,
    response: &mut Response,
) -> Result<bool> {
    let mut changes = false;
    if !ctx.initial {
        let (changed, left) = device_lists::changes_in(
            ctx.storage(),
            ctx.user,
            memberships,
            ctx.since,
            ctx.upto,
            membership_changes,
        )?;
        changes = !changed.is_empty() || !left.is_empty();
        response.device_lists.changed = changed;
        response.device_lists.left = left;
    }
    let supply = keys_query::cached_key_supply(ctx.storage(), ctx.user, ctx.device)?;
    let (one_time, unused_fallback) = &*supply;
    response.device_one_time_keys_count = one_time
        .iter()
        .map(|(algorithm, count)| (algorithm.as_str().into(), UInt::new_saturating(*count)))
        .collect();
    response.device_unused_fallback_key_types =
        Some(unused_fallback.iter().map(|algorithm| algorithm.as_str().into()).collect());
    Ok(changes)
}
