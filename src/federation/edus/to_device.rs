//! `m.direct_to_device`: messages from another server's user to devices of this server's
//! users, queued like a local user's (`accounts::to_device`) and delivered once per
//! `message_id`: the id is recorded in the same commit as the messages, so a repeated EDU
//! (a retried transaction under a new id) delivers nothing. An EDU that names, or through
//! `*` reaches, more than `limits::MAX_EDU_TO_DEVICE_MESSAGES` devices is dropped whole.

use ruma::{
    OwnedDeviceId, ServerName, api::federation::transactions::edu::DirectDeviceContent,
    to_device::DeviceIdOrAllDevices,
};
use serde_json::Value as JsonValue;

use super::from_origin;
use crate::{
    Error, Result,
    accounts::to_device::{self, Delivery},
    federation::intake::Intake,
    limits,
    storage::{
        Batch, Direction,
        codec::Prefix,
        ephemeral::{TO_DEVICE_TRANSACTIONS_TABLE, ToDeviceRecord},
        users::DEVICES_TABLE,
    },
};

pub async fn receive(
    intake: &Intake,
    origin: &ServerName,
    content: DirectDeviceContent,
) -> Result<()> {
    from_origin(&content.sender, origin)?;
    let message_id = content.message_id.to_string();
    if message_id.len() > limits::MAX_OPAQUE_ID_BYTES {
        return Err(Error::invalid_param("message_id is too long"));
    }
    let storage = &intake.storage;
    let engine = storage.engine();
    // Another server's user has no devices here: the device part of the key stays empty,
    // which no local device id is.
    let seen = (content.sender.clone(), OwnedDeviceId::from(""), message_id);
    if TO_DEVICE_TRANSACTIONS_TABLE.contains(engine, &seen)? {
        return Ok(());
    }
    let requested: usize = content.messages.values().map(|devices| devices.len()).sum();
    if requested > limits::MAX_EDU_TO_DEVICE_MESSAGES {
        return Err(too_many());
    }
    let kind = content.ev_type.to_string();
    let mut deliveries: Vec<Delivery> = Vec::new();
    for (user, devices) in content.messages {
        if user.server_name() != intake.server_name {
            continue;
        }
        for (target, message) in devices {
            let text = message.json().get();
            if text.len() > limits::MAX_PDU_BYTES {
                continue;
            }
            let Ok(message) = serde_json::from_str::<JsonValue>(text) else { continue };
            let record = ToDeviceRecord {
                sender: content.sender.clone(),
                kind: kind.clone(),
                content: message,
            };
            match target {
                DeviceIdOrAllDevices::DeviceId(device) => {
                    if DEVICES_TABLE.contains(engine, &(user.clone(), device.clone()))? {
                        deliveries.push((user.clone(), device, record));
                    }
                }
                DeviceIdOrAllDevices::AllDevices => {
                    let devices = DEVICES_TABLE.collect(
                        engine,
                        &Prefix::of(&user),
                        Direction::Forward,
                        limits::MAX_EDU_TO_DEVICE_MESSAGES + 1,
                    )?;
                    for ((_, device), _) in devices {
                        deliveries.push((user.clone(), device, record.clone()));
                    }
                }
            }
            if deliveries.len() > limits::MAX_EDU_TO_DEVICE_MESSAGES {
                return Err(too_many());
            }
        }
    }
    let mut batch = Batch::new();
    TO_DEVICE_TRANSACTIONS_TABLE.put(&mut batch, &seen, &());
    to_device::deliver(storage, &intake.hub, batch, deliveries, 0, |_, _| {}).await
}

fn too_many() -> Error {
    Error::bad_json(format!(
        "a to-device EDU may reach at most {} devices",
        limits::MAX_EDU_TO_DEVICE_MESSAGES
    ))
}
