//! Leaves for talking to the outside: the TLS provider and settings every outbound client
//! starts from ([`outbound`]) and the checks that keep server-made requests away from the
//! operator's own network ([`ssrf`]). Domain code (media previews, push, federation) builds
//! its clients from these; nothing here knows a Matrix type.

pub mod outbound;
pub mod ssrf;
