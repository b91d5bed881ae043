//! Queueing to-device messages for local devices: the one place that writes `to_device`
//! rows, for messages from this server's users (their user actor, once per client
//! transaction) and from other servers' users (an `m.direct_to_device` EDU, once per
//! `message_id`).

use std::ops::Range;

use ruma::{OwnedDeviceId, OwnedUserId};

use crate::{
    Result,
    storage::{
        Batch, Storage,
        codec::Json,
        ephemeral::{TO_DEVICE_TABLE, ToDeviceRecord},
    },
    sync::hub::SyncHub,
};

/// A message for one device: `(recipient, device id, message)`.
pub type Delivery = (OwnedUserId, OwnedDeviceId, ToDeviceRecord);

/// Commits `batch` with `deliveries` queued (each at a stream position of its own) and
/// `extra` more positions handed to `also` (for rows that go with the messages, such as
/// the outbox rows of messages for other servers), then wakes the recipients' syncs.
pub async fn deliver(
    storage: &Storage,
    hub: &SyncHub,
    batch: Batch,
    deliveries: Vec<Delivery>,
    extra: u64,
    also: impl FnOnce(&mut Batch, Range<u64>) + Send + 'static,
) -> Result<()> {
    let mut devices: Vec<_> = deliveries
        .iter()
        .map(|(recipient, device, _)| (recipient.clone(), device.clone()))
        .collect();
    devices.sort_unstable();
    devices.dedup();
    let mut recipients: Vec<OwnedUserId> =
        devices.iter().map(|(recipient, _)| recipient.clone()).collect();
    recipients.dedup();
    let writing = storage.coherent().to_device_queued.begin(devices);
    let count = deliveries.len() as u64;
    storage
        .writer()
        .commit_with_positions(count + extra, batch, move |batch, positions| {
            let local = positions.start..positions.start + count;
            for ((recipient, device, message), position) in deliveries.into_iter().zip(local) {
                TO_DEVICE_TABLE.put(batch, &(recipient, device, position), &Json(message));
            }
            also(batch, positions.start + count..positions.end);
        })
        .await?;
    writing.committed(|_, _| true);
    for recipient in &recipients {
        hub.user_changed(recipient);
    }
    Ok(())
}
