//! The server's ed25519 signing key: generated at first start, kept in the database, used to
//! sign events and the key documents other servers fetch.

use ruma::{
    CanonicalJsonObject, OwnedServerName, OwnedServerSigningKeyId, ServerSigningKeyId,
    serde::Base64,
    signatures::{Ed25519KeyPair, KeyPair},
};

use crate::{
    Error, Result,
    storage::{Batch, Storage, meta::RECORDS},
};

const KEY_DOCUMENT: &str = "signing_key_pkcs8";
const KEY_VERSION: &str = "signing_key_version";

/// The server's signing key pair.
pub struct SigningKey {
    server_name: OwnedServerName,
    pair: Ed25519KeyPair,
    key_id: OwnedServerSigningKeyId,
}

impl SigningKey {
    /// Loads the key from the database, generating and storing one on first start.
    pub async fn load_or_generate(storage: &Storage, server_name: OwnedServerName) -> Result<Self> {
        let document = RECORDS.get(storage.engine(), &KEY_DOCUMENT.to_owned())?;
        let version = RECORDS.get(storage.engine(), &KEY_VERSION.to_owned())?;
        let (document, version) = match (document, version) {
            (Some(document), Some(version)) => {
                let version = String::from_utf8(version)
                    .map_err(|_| Error::internal("stored signing key version is not UTF-8"))?;
                (document, version)
            }
            _ => {
                let document = Ed25519KeyPair::generate().to_vec();
                let version = new_version();
                let mut batch = Batch::new();
                RECORDS.put(&mut batch, &KEY_DOCUMENT.to_owned(), &document);
                RECORDS.put(&mut batch, &KEY_VERSION.to_owned(), &version.as_bytes().to_vec());
                storage.writer().commit(batch).await?;
                tracing::info!(key = %version, "generated the server signing key");
                (document, version)
            }
        };
        let pair = Ed25519KeyPair::from_der(&document, version)
            .map_err(|error| Error::internal(format!("stored signing key is unusable: {error}")))?;
        Self::new(server_name, pair)
    }

    /// The key of `server_name` made of `pair` (whose version names it).
    pub fn new(server_name: OwnedServerName, pair: Ed25519KeyPair) -> Result<Self> {
        let key_id = ServerSigningKeyId::parse(format!("ed25519:{}", pair.version()))
            .map_err(|error| Error::internal(format!("signing key id: {error}")))?;
        Ok(Self { server_name, pair, key_id })
    }

    pub fn key_id(&self) -> &ServerSigningKeyId {
        &self.key_id
    }

    /// The public key, unpadded base64 as the spec publishes it.
    pub fn public_key(&self) -> Base64 {
        Base64::new(self.pair.public_key().to_vec())
    }

    /// Adds this server's signature to `object`.
    pub fn sign_json(&self, object: &mut CanonicalJsonObject) -> Result<()> {
        ruma::signatures::sign_json(self.server_name.as_str(), &self.pair, object)
            .map_err(|error| Error::internal(format!("signing failed: {error}")))
    }

    /// Signs raw bytes (for callers that build their own canonical form).
    pub fn sign_bytes(&self, bytes: &[u8]) -> Vec<u8> {
        self.pair.sign(bytes).as_bytes().to_vec()
    }

    pub fn pair(&self) -> &Ed25519KeyPair {
        &self.pair
    }
}

/// Key versions are `a_` plus four random alphanumerics, as other homeservers use.
fn new_version() -> String {
    use rand::{Rng, distributions::Alphanumeric};
    let suffix: String =
        rand::thread_rng().sample_iter(&Alphanumeric).take(4).map(char::from).collect();
    format!("a_{suffix}")
}
