//! Federation: this server's identity towards other servers (its signing key) and, as the
//! federation work lands, server discovery, destination actors and PDU intake.

pub mod signing_key;

pub use self::signing_key::SigningKey;
