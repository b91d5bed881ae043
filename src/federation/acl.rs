//! Server access control lists (`m.room.server_acl`): which servers may take part in a room.
//!
//! One check, [`check`] (against a room's current state snapshot), for every request
//! another server makes about a room, answering `403 M_FORBIDDEN` as the spec asks; the
//! PDUs and room EDUs of incoming transactions go through [`room_allows`] the same way. The
//! rules are ruma's (`*` and `?` wildcards against the host without its port, deny before
//! allow, `allow_ip_literals`); what this module adds is reading a stored event leniently,
//! as Synapse does: a list that is not a list counts as empty, entries that are not strings
//! are skipped, an `allow_ip_literals` that is not a boolean counts as `true`.

use ruma::{ServerName, events::room::server_acl::RoomServerAclEventContent};
use serde_json::Value as JsonValue;

use crate::{Error, Result, rooms, storage::Storage};

/// The rules of an `m.room.server_acl` content, read leniently.
pub fn from_content(content: &JsonValue) -> RoomServerAclEventContent {
    let list = |field: &str| -> Vec<String> {
        content
            .get(field)
            .and_then(JsonValue::as_array)
            .into_iter()
            .flatten()
            .filter_map(JsonValue::as_str)
            .map(str::to_owned)
            .collect()
    };
    let allow_ip_literals =
        content.get("allow_ip_literals").and_then(JsonValue::as_bool).unwrap_or(true);
    RoomServerAclEventContent::new(allow_ip_literals, list("allow"), list("deny"))
}

/// Whether the room's ACL at state `snapshot` lets `server` in; a room without one lets
/// every server in.
pub fn room_allows(storage: &Storage, snapshot: u64, server: &ServerName) -> Result<bool> {
    let Some(event) = rooms::state_event(storage, snapshot, "m.room.server_acl", "")? else {
        return Ok(true);
    };
    Ok(from_content(&event.content_value()).is_allowed(server))
}

/// [`room_allows`] as the spec's answer to a refused server: `403 M_FORBIDDEN`.
pub fn check(storage: &Storage, snapshot: u64, server: &ServerName) -> Result<()> {
    if room_allows(storage, snapshot, server)? {
        Ok(())
    } else {
        Err(Error::forbidden(format!("Server {server} is denied by the room's server ACL.")))
    }
}

#[cfg(test)]
mod tests {
    use ruma::server_name;
    use serde_json::json;

    use super::*;

    #[test]
    fn deny_wins_and_ports_are_ignored() {
        let acl = from_content(&json!({"allow": ["*"], "deny": ["evil.example", "*.bad.org"]}));
        assert!(acl.is_allowed(server_name!("good.example")));
        assert!(!acl.is_allowed(server_name!("evil.example")));
        assert!(!acl.is_allowed(server_name!("evil.example:8448")));
        assert!(!acl.is_allowed(server_name!("x.bad.org")));
        assert!(!acl.is_allowed(server_name!("EVIL.example")), "case-insensitive");
    }

    #[test]
    fn an_empty_allow_list_denies_everyone() {
        assert!(!from_content(&json!({})).is_allowed(server_name!("good.example")));
        assert!(!from_content(&json!({"allow": "*"})).is_allowed(server_name!("good.example")));
    }

    #[test]
    fn wildcards_and_ip_literals() {
        let acl = from_content(&json!({"allow": ["matrix.?rg", "*.example"]}));
        assert!(acl.is_allowed(server_name!("matrix.org")));
        assert!(!acl.is_allowed(server_name!("matrix.organ")));
        assert!(acl.is_allowed(server_name!("a.b.example")));
        let open = from_content(&json!({"allow": ["*"]}));
        assert!(open.is_allowed(server_name!("1.2.3.4")), "allowed by default");
        let no_ips = from_content(&json!({"allow": ["*"], "allow_ip_literals": false}));
        assert!(!no_ips.is_allowed(server_name!("1.2.3.4")));
        assert!(!no_ips.is_allowed(server_name!("[::1]:8448")));
        let odd = from_content(&json!({"allow": ["*", 3, null], "allow_ip_literals": "no"}));
        assert!(odd.is_allowed(server_name!("1.2.3.4")), "a non-boolean counts as true");
    }
}
