//! Checking the ed25519 signatures on uploaded key objects. The server never holds a private
//! key here; it only refuses key material whose owner did not sign it.

use ruma::{
    CanonicalJsonObject, CanonicalJsonValue,
    serde::Base64,
    signatures::{
        SigningKeyAlgorithm, to_canonical_json_string_for_signing, verify_canonical_json_bytes,
    },
};
use serde_json::Value as JsonValue;

/// Why a signature did not check out, for the client.
pub type Failure = String;

/// The single `ed25519:<id>` entry of a key object's `keys`: `(key id, public key)`.
pub fn single_ed25519_key(object: &JsonValue) -> Option<(String, String)> {
    let keys = object.get("keys")?.as_object()?;
    let mut ed25519 = keys.iter().filter(|(id, _)| id.starts_with("ed25519:"));
    let (id, public) = ed25519.next()?;
    if ed25519.next().is_some() {
        return None;
    }
    Some((id.clone(), public.as_str()?.to_owned()))
}

/// The public key stored under `keys["ed25519:<id>"]`.
pub fn ed25519_key<'a>(object: &'a JsonValue, id: &str) -> Option<&'a str> {
    object.get("keys")?.get(format!("ed25519:{id}"))?.as_str()
}

/// Whether `object` carries a valid signature by `signer`'s key `key_id` (`ed25519:...`)
/// whose public half is `public_key` (unpadded base64).
pub fn verify(
    object: &JsonValue,
    signer: &str,
    key_id: &str,
    public_key: &str,
) -> Result<(), Failure> {
    let signature = object
        .get("signatures")
        .and_then(|signatures| signatures.get(signer))
        .and_then(|by_signer| by_signer.get(key_id))
        .and_then(JsonValue::as_str)
        .ok_or_else(|| format!("no signature by {signer} with {key_id}"))?;
    let signature =
        <Base64>::parse(signature).map_err(|_| "the signature is not base64".to_owned())?;
    let public_key =
        <Base64>::parse(public_key).map_err(|_| "the public key is not base64".to_owned())?;
    let canonical = canonical_for_signing(object)?;
    verify_canonical_json_bytes(
        &SigningKeyAlgorithm::Ed25519,
        public_key.as_bytes(),
        signature.as_bytes(),
        canonical.as_bytes(),
    )
    .map_err(|_| format!("invalid signature by {signer} with {key_id}"))
}

/// The canonical JSON a signature covers (without `signatures` and `unsigned`).
pub fn canonical_for_signing(object: &JsonValue) -> Result<String, Failure> {
    let canonical = to_canonical_object(object)?;
    to_canonical_json_string_for_signing(&canonical)
        .map_err(|error| format!("not signable JSON: {error}"))
}

fn to_canonical_object(object: &JsonValue) -> Result<CanonicalJsonObject, Failure> {
    match CanonicalJsonValue::try_from(object.clone()) {
        Ok(CanonicalJsonValue::Object(object)) => Ok(object),
        Ok(_) => Err("expected a JSON object".to_owned()),
        Err(error) => Err(format!("not canonical JSON: {error}")),
    }
}

/// Whether two key objects are the same key material, ignoring signatures and `unsigned`.
pub fn same_key(left: &JsonValue, right: &JsonValue) -> bool {
    matches!((canonical_for_signing(left), canonical_for_signing(right)), (Ok(left), Ok(right)) if left == right)
}

/// Checks a signed key object from `POST /keys/signatures/upload` made by `signer` on
/// `target`'s key `key_id`, and answers the new signatures worth storing as
/// `(signer key id, signature)`. The three legal cases: the signer's self-signing key on one
/// of their own devices, one of the signer's devices on their own master key, and the
/// signer's user-signing key on someone else's master key.
pub fn check_uploaded(
    reader: &(impl crate::storage::Read + ?Sized),
    signer: &ruma::UserId,
    target: &ruma::UserId,
    key_id: &str,
    object: &JsonValue,
) -> Result<Vec<(String, String)>, (&'static str, String)> {
    use super::query::{MASTER, SELF_SIGNING, USER_SIGNING, stored_cross_signing_key};
    use crate::storage::{codec::Json, keys::DEVICE_KEYS_TABLE};

    let storage_error = |error: crate::Error| ("M_UNKNOWN", format!("storage: {error}"));
    let invalid = |message: String| ("M_INVALID_SIGNATURE", message);
    let master = stored_cross_signing_key(reader, target, MASTER).map_err(storage_error)?;
    let master_public = master.as_ref().and_then(single_ed25519_key).map(|(_, public)| public);

    // Which key signs which: (the stored object being signed, the accepted signing keys).
    let (stored, signing_keys): (JsonValue, Vec<(String, String)>) =
        if master_public.as_deref() == Some(key_id) {
            let stored = master.unwrap_or_default();
            if signer == target {
                let mut devices = Vec::new();
                if let Some(by_signer) = object
                    .get("signatures")
                    .and_then(|signatures| signatures.get(signer.as_str()))
                    .and_then(JsonValue::as_object)
                {
                    for signing_key in by_signer.keys() {
                        let Some(device) = signing_key.strip_prefix("ed25519:") else { continue };
                        if let Some(Json(device_keys)) = DEVICE_KEYS_TABLE
                            .get(reader, &(signer.to_owned(), device.into()))
                            .map_err(storage_error)?
                            && let Some(public) = ed25519_key(&device_keys, device)
                        {
                            devices.push((signing_key.clone(), public.to_owned()));
                        }
                    }
                }
                (stored, devices)
            } else {
                let user_signing = stored_cross_signing_key(reader, signer, USER_SIGNING)
                    .map_err(storage_error)?;
                let key = user_signing
                    .as_ref()
                    .and_then(single_ed25519_key)
                    .ok_or_else(|| ("M_NOT_FOUND", "You have no user-signing key.".to_owned()))?;
                (stored, vec![key])
            }
        } else if signer == target {
            let device_keys = DEVICE_KEYS_TABLE
                .get(reader, &(target.to_owned(), key_id.into()))
                .map_err(storage_error)?
                .map(|Json(keys)| keys)
                .ok_or_else(|| ("M_NOT_FOUND", format!("No device or key '{key_id}'.")))?;
            let self_signing =
                stored_cross_signing_key(reader, signer, SELF_SIGNING).map_err(storage_error)?;
            let key = self_signing
                .as_ref()
                .and_then(single_ed25519_key)
                .ok_or_else(|| ("M_NOT_FOUND", "You have no self-signing key.".to_owned()))?;
            (device_keys, vec![key])
        } else {
            return Err(("M_NOT_FOUND", format!("'{key_id}' is not {target}'s master key.")));
        };

    if !same_key(&stored, object) {
        return Err(invalid("The signed object does not match the stored key.".to_owned()));
    }
    if signing_keys.is_empty() {
        return Err(invalid("No signature by a key allowed to sign this one.".to_owned()));
    }
    let mut accepted = Vec::new();
    for (signing_key_id, public) in signing_keys {
        // A signature the stored object already carries (a device's own) needs no row.
        let already = stored
            .get("signatures")
            .and_then(|signatures| signatures.get(signer.as_str()))
            .and_then(|by_signer| by_signer.get(&signing_key_id))
            .is_some();
        if already {
            continue;
        }
        verify(object, signer.as_str(), &signing_key_id, &public).map_err(invalid)?;
        if let Some(signature) = object["signatures"][signer.as_str()][&signing_key_id].as_str() {
            accepted.push((signing_key_id, signature.to_owned()));
        }
    }
    Ok(accepted)
}
