//! A registration's namespaces, compiled: which users, aliases and rooms a service is
//! interested in, and which it claims for itself alone.
//!
//! Matching is Tuwunel's, so registrations keep their meaning for operators who switch:
//! unanchored (`@irc_.*` also matches `@x_irc_y`; write `^` to anchor), users and aliases
//! case-insensitive, rooms exact.

use regex::Regex;
use ruma::{RoomAliasId, RoomId, UserId};

/// One compiled namespace entry.
#[derive(Clone, Debug)]
pub struct CompiledNamespace {
    pub exclusive: bool,
    pub regex: Regex,
}

/// Every namespace of one registration, compiled by `Registration::check`.
#[derive(Clone, Debug, Default)]
pub struct CompiledNamespaces {
    pub users: Vec<CompiledNamespace>,
    pub aliases: Vec<CompiledNamespace>,
    pub rooms: Vec<CompiledNamespace>,
}

/// How a namespace list matches one id.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Claim {
    /// No entry matches.
    None,
    /// Only shared entries match: the service is interested, others may use the id.
    Shared,
    /// An exclusive entry matches: the id is the service's alone.
    Exclusive,
}

impl Claim {
    /// Whether the service is interested at all.
    pub fn matches(self) -> bool {
        self != Self::None
    }

    fn of(list: &[CompiledNamespace], id: &str) -> Self {
        let mut claim = Self::None;
        for namespace in list {
            if namespace.regex.is_match(id) {
                if namespace.exclusive {
                    return Self::Exclusive;
                }
                claim = Self::Shared;
            }
        }
        claim
    }
}

impl CompiledNamespaces {
    pub fn user(&self, user_id: &UserId) -> Claim {
        Claim::of(&self.users, user_id.as_str())
    }

    pub fn alias(&self, alias: &RoomAliasId) -> Claim {
        Claim::of(&self.aliases, alias.as_str())
    }

    pub fn room(&self, room_id: &RoomId) -> Claim {
        Claim::of(&self.rooms, room_id.as_str())
    }
}

#[cfg(test)]
mod tests {
    use ruma::{room_alias_id, room_id, server_name, user_id};

    use super::*;
    use crate::appservices::registration::{Namespace, Registration};

    fn compiled(
        users: &[(bool, &str)],
        aliases: &[(bool, &str)],
        rooms: &[(bool, &str)],
    ) -> CompiledNamespaces {
        let list = |entries: &[(bool, &str)]| {
            entries
                .iter()
                .map(|(exclusive, regex)| Namespace {
                    exclusive: *exclusive,
                    regex: (*regex).to_owned(),
                })
                .collect()
        };
        let mut registration =
            Registration::from_yaml(include_str!("../../tests/fixtures/appservices/spec.yaml"))
                .expect("fixture parses")
                .registration;
        registration.namespaces.users = list(users);
        registration.namespaces.aliases = list(aliases);
        registration.namespaces.rooms = list(rooms);
        registration.check(server_name!("test.local")).expect("valid")
    }

    #[test]
    fn exclusive_wins_over_shared_and_matching_is_unanchored() {
        let namespaces = compiled(&[(false, "irc_.*"), (true, "@irc_admin")], &[], &[]);
        assert_eq!(namespaces.user(user_id!("@irc_bob:test.local")), Claim::Shared);
        assert_eq!(namespaces.user(user_id!("@irc_admin:test.local")), Claim::Exclusive);
        // Unanchored, as in Tuwunel.
        assert_eq!(namespaces.user(user_id!("@x_irc_y:test.local")), Claim::Shared);
        assert_eq!(namespaces.user(user_id!("@alice:test.local")), Claim::None);
        assert!(!Claim::None.matches());
    }

    #[test]
    fn users_and_aliases_ignore_case_rooms_do_not() {
        let namespaces =
            compiled(&[(true, "@irc_.*")], &[(true, "#irc_.*")], &[(false, "!abc:test")]);
        assert_eq!(namespaces.user(user_id!("@IRC_Bob:test.local")), Claim::Exclusive);
        assert_eq!(namespaces.alias(room_alias_id!("#IRC_x:test.local")), Claim::Exclusive);
        assert_eq!(namespaces.room(room_id!("!abc:test.local")), Claim::Shared);
        assert_eq!(namespaces.room(room_id!("!ABC:test.local")), Claim::None);
    }
}
