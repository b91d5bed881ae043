//! End-to-end encryption: whose devices to re-fetch, and this device's key supply.

use std::collections::{BTreeMap, HashMap};

use ruma::{
    OneTimeKeyAlgorithm, OwnedRoomId, OwnedUserId, UInt,
    api::client::sync::sync_events::v3::Response,
};

use super::{SyncContext, SyncView};
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
        let (changed, left) = device_list_changes(ctx, memberships, membership_changes)?;
        changes = !changed.is_empty() || !left.is_empty();
        response.device_lists.changed = changed;
        response.device_lists.left = left;
    }
    let (one_time, unused_fallback) = key_supply(ctx)?;
    response.device_one_time_keys_count = one_time;
    response.device_unused_fallback_key_types = Some(unused_fallback);
    Ok(changes)
}

/// The users whose devices changed in the view's range (`changed`) and those the user no
/// longer shares a room with (`left`). `membership_changes` holds the rooms whose timelines
/// were read whole, so their scans are not repeated.
pub(crate) fn device_list_changes(
    view: &SyncView<'_>,
    memberships: &[(OwnedRoomId, MembershipRecord)],
    membership_changes: &HashMap<OwnedRoomId, Vec<(String, String)>>,
) -> Result<(Vec<OwnedUserId>, Vec<OwnedUserId>)> {
    device_lists::changes_in(
        view.storage(),
        view.user,
        memberships,
        view.since,
        view.upto,
        membership_changes,
    )
}

/// The device's unclaimed one-time keys by algorithm and its unused fallback key types.
pub(crate) fn key_supply(
    view: &SyncView<'_>,
) -> Result<(BTreeMap<OneTimeKeyAlgorithm, UInt>, Vec<OneTimeKeyAlgorithm>)> {
    let supply = keys_query::cached_key_supply(view.storage(), view.user, view.device)?;
    let (one_time, unused_fallback) = &*supply;
    Ok((
        one_time
            .iter()
            .map(|(algorithm, count)| (algorithm.as_str().into(), UInt::new_saturating(*count)))
            .collect(),
        unused_fallback.iter().map(|algorithm| algorithm.as_str().into()).collect(),
    ))
}
