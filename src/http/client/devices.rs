//! Device management: list, inspect, rename and delete devices (deletion needs UIA).

use std::sync::Arc;

use ruma::{
    MilliSecondsSinceUnixEpoch, OwnedDeviceId, UInt, UserId,
    api::client::device::{
        Device, delete_device, delete_devices, get_device, get_devices, update_device,
    },
};

use super::account::password_challenge;
use crate::http::routes::Routes;
use crate::{
    Error, Result, Services,
    accounts::{Devices, UserMessage},
    http::{
        ruma::{Ruma, route},
        validate,
    },
    limits,
    storage::{
        Direction,
        codec::{Json, Prefix},
        users::{DEVICES_TABLE, DeviceRecord},
    },
};

pub(super) fn routes(router: Routes) -> Routes {
    let router = route(router, list);
    let router = route(router, get);
    let router = route(router, update);
    let router = route(router, delete);
    route(router, delete_many)
}

fn to_device(
    services: &Services,
    user: &UserId,
    device_id: OwnedDeviceId,
    record: DeviceRecord,
) -> Device {
    let mut device = Device::new(device_id.clone());
    device.display_name = record.display_name;
    if let Some(seen) = services.accounts.last_seen(user, &device_id) {
        device.last_seen_ip = seen.ip;
        device.last_seen_ts = UInt::try_from(seen.ts_ms).ok().map(MilliSecondsSinceUnixEpoch);
    }
    device
}

async fn list(
    services: Arc<Services>,
    request: Ruma<get_devices::v3::Request>,
) -> Result<get_devices::v3::Response> {
    let user = &request.sender()?.user_id;
    let devices = DEVICES_TABLE
        .collect(services.storage.engine(), &Prefix::of(user), Direction::Forward, usize::MAX)?
        .into_iter()
        .map(|((_, device_id), Json(record))| to_device(&services, user, device_id, record))
        .collect();
    Ok(get_devices::v3::Response::new(devices))
}

async fn get(
    services: Arc<Services>,
    request: Ruma<get_device::v3::Request>,
) -> Result<get_device::v3::Response> {
    let user = request.sender()?.user_id.clone();
    let user = &user;
    let device_id = request.body.device_id;
    let Json(record) = DEVICES_TABLE
        .get(services.storage.engine(), &(user.clone(), device_id.clone()))?
        .ok_or_else(|| Error::not_found("No such device."))?;
    Ok(get_device::v3::Response::new(to_device(&services, user, device_id, record)))
}

async fn update(
    services: Arc<Services>,
    request: Ruma<update_device::v3::Request>,
) -> Result<update_device::v3::Response> {
    let user = request.sender()?.user_id.clone();
    let body = request.body;
    if let Some(name) = &body.display_name {
        validate::max_chars("A device name", name, limits::MAX_DEVICE_NAME_CHARS)?;
    }
    services
        .accounts
        .call(&user, |reply| UserMessage::RenameDevice {
            device_id: body.device_id,
            display_name: body.display_name,
            reply,
        })
        .await?;
    Ok(update_device::v3::Response::new())
}

async fn delete(
    services: Arc<Services>,
    request: Ruma<delete_device::v3::Request>,
) -> Result<delete_device::v3::Response> {
    let user = request.sender()?.user_id.clone();
    let body = request.body;
    if !DEVICES_TABLE
        .contains(services.storage.engine(), &(user.clone(), body.device_id.clone()))?
    {
        return Err(Error::not_found("No such device."));
    }
    let operation = Some(body.device_id.to_string());
    let claim =
        password_challenge(&services, "delete_device", &user, operation, body.auth.as_ref())
            .await?;
    services
        .accounts
        .call(&user, |reply| UserMessage::RemoveDevices {
            devices: Devices::One(body.device_id),
            reply,
        })
        .await?;
    claim.finish();
    Ok(delete_device::v3::Response::new())
}

async fn delete_many(
    services: Arc<Services>,
    request: Ruma<delete_devices::v3::Request>,
) -> Result<delete_devices::v3::Response> {
    let user = request.sender()?.user_id.clone();
    let body = request.body;
    let mut devices: Vec<&str> = body.devices.iter().map(|device| device.as_str()).collect();
    devices.sort_unstable();
    devices.dedup();
    let operation = Some(devices.join("\n"));
    let claim =
        password_challenge(&services, "delete_devices", &user, operation, body.auth.as_ref())
            .await?;
    services
        .accounts
        .call(&user, |reply| UserMessage::RemoveDevices {
            devices: Devices::Many(body.devices),
            reply,
        })
        .await?;
    claim.finish();
    Ok(delete_devices::v3::Response::new())
}
