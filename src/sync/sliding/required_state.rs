//! Which state events a sliding sync room config asks for: the `required_state` patterns of
//! MSC4186, what they match, how the configs of one room combine, and what a grown config
//! newly matches.
//!
//! A pattern is an event type or `*`, and a state key, `*`, `$ME` (the syncing user's id) or,
//! for `m.room.member` only, `$LAZY` (the members the timeline needs, tracked per
//! connection). `("*", key)` matches that key in every type and nothing else: Synapse answers
//! it with the whole state, which is more than the client asked for.
//!
//! A config is a set of patterns, so combining the configs of the lists and subscriptions
//! that show a room is a union: commutative and idempotent, whatever order they come in.

use std::collections::BTreeSet;

use ruma::{UserId, events::StateEventType};

/// Matches any event type, or any state key.
const WILDCARD: &str = "*";
/// The syncing user's id.
const ME: &str = "$ME";
/// The members a timeline needs (`m.room.member` only).
const LAZY: &str = "$LAZY";
const MEMBER: &str = "m.room.member";

/// The event type half of a pattern.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
enum TypePattern {
    Any,
    Is(String),
}

/// The state key half of a pattern. `$ME` never appears: it is resolved when parsed.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
enum KeyPattern {
    Any,
    Is(String),
}

/// The `required_state` of one room: what a client wants of its current state.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash)]
pub struct RequiredState {
    patterns: BTreeSet<(TypePattern, KeyPattern)>,
    /// `(m.room.member, $LAZY)`: the members of the timeline's senders and targets.
    lazy_members: bool,
}

impl RequiredState {
    /// The config of `entries` (as the client sent them) for `user`.
    pub fn new<'a>(
        entries: impl IntoIterator<Item = (&'a StateEventType, &'a str)>,
        user: &UserId,
    ) -> Self {
        let mut required = Self::default();
        for (event_type, state_key) in entries {
            let event_type = event_type.to_string();
            if event_type == MEMBER && state_key == LAZY {
                required.lazy_members = true;
                continue;
            }
            let type_pattern =
                if event_type == WILDCARD { TypePattern::Any } else { TypePattern::Is(event_type) };
            let key_pattern = match state_key {
                WILDCARD => KeyPattern::Any,
                ME => KeyPattern::Is(user.to_string()),
                key => KeyPattern::Is(key.to_owned()),
            };
            required.patterns.insert((type_pattern, key_pattern));
        }
        required
    }

    /// Whether nothing is asked for.
    pub fn is_empty(&self) -> bool {
        self.patterns.is_empty() && !self.lazy_members
    }

    /// Whether `$LAZY` members are asked for.
    pub fn lazy_members(&self) -> bool {
        self.lazy_members
    }

    /// What `self` and `other` ask for together.
    pub fn combine(&self, other: &Self) -> Self {
        let mut patterns = self.patterns.clone();
        patterns.extend(other.patterns.iter().cloned());
        Self { patterns, lazy_members: self.lazy_members || other.lazy_members }
    }

    /// Whether the state event `(event_type, state_key)` is asked for by a pattern (the
    /// `$LAZY` members are chosen by the timeline, not here).
    pub fn matches(&self, event_type: &str, state_key: &str) -> bool {
        if self.patterns.is_empty() {
            return false;
        }
        [TypePattern::Any, TypePattern::Is(event_type.to_owned())].into_iter().any(|type_pattern| {
            [KeyPattern::Any, KeyPattern::Is(state_key.to_owned())]
                .into_iter()
                .any(|key_pattern| self.patterns.contains(&(type_pattern.clone(), key_pattern)))
        })
    }

    /// What `grown` asks for that `self` did not: sent when a room's config grows, so the
    /// client gets the current values of the keys it newly asked for.
    pub fn expansion<'a>(&'a self, grown: &'a Self) -> Expansion<'a> {
        Expansion { before: self, after: grown }
    }

    /// Whether `grown` asks for anything `self` does not. Decided on the patterns: a pattern
    /// is covered when one of `self`'s is at least as wide.
    pub fn is_expanded_by(&self, grown: &Self) -> bool {
        let lazy_covered = |required: &Self| {
            required.lazy_members
                || required.covers(&(TypePattern::Is(MEMBER.to_owned()), KeyPattern::Any))
        };
        (grown.lazy_members && !lazy_covered(self))
            || grown.patterns.iter().any(|pattern| !self.covers(pattern))
    }

    fn covers(&self, (event_type, state_key): &(TypePattern, KeyPattern)) -> bool {
        let types = [TypePattern::Any, event_type.clone()];
        let keys = [KeyPattern::Any, state_key.clone()];
        types.iter().any(|type_pattern| {
            keys.iter().any(|key_pattern| {
                self.patterns.contains(&(type_pattern.clone(), key_pattern.clone()))
            })
        })
    }

    /// The number of patterns, `$LAZY` included (for the request bounds).
    pub fn len(&self) -> usize {
        self.patterns.len() + usize::from(self.lazy_members)
    }
}

/// The keys a grown config matches and the old one did not.
pub struct Expansion<'a> {
    before: &'a RequiredState,
    after: &'a RequiredState,
}

impl Expansion<'_> {
    /// Whether `(event_type, state_key)` is newly asked for.
    pub fn matches(&self, event_type: &str, state_key: &str) -> bool {
        self.after.matches(event_type, state_key) && !self.before.matches(event_type, state_key)
    }

    /// Whether `$LAZY` members are newly asked for.
    pub fn lazy_members(&self) -> bool {
        self.after.lazy_members && !self.before.lazy_members
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;
    use ruma::{owned_user_id, user_id};

    use super::*;

    fn config(entries: &[(&str, &str)]) -> RequiredState {
        let entries: Vec<(StateEventType, &str)> =
            entries.iter().map(|(event_type, key)| ((*event_type).into(), *key)).collect();
        RequiredState::new(
            entries.iter().map(|(event_type, key)| (event_type, *key)),
            user_id!("@me:example.org"),
        )
    }

    #[test]
    fn patterns_match_as_the_msc_says() {
        // (config, event type, state key, matches)
        type Row<'a> = (&'a [(&'a str, &'a str)], &'a str, &'a str, bool);
        let table: &[Row<'_>] = &[
            (&[("m.room.name", "")], "m.room.name", "", true),
            (&[("m.room.name", "")], "m.room.topic", "", false),
            (&[("m.room.name", "")], "m.room.name", "x", false),
            (&[("m.room.member", "*")], "m.room.member", "@a:b", true),
            (&[("m.room.member", "*")], "m.room.name", "", false),
            (&[("*", "")], "m.room.topic", "", true),
            (&[("*", "")], "m.room.member", "@a:b", false),
            (&[("*", "*")], "m.anything", "any key", true),
            (&[("m.room.member", "$ME")], "m.room.member", "@me:example.org", true),
            (&[("m.room.member", "$ME")], "m.room.member", "$ME", false),
            (&[("m.room.member", "$ME")], "m.room.member", "@other:example.org", false),
            (&[("m.custom", "$ME")], "m.custom", "@me:example.org", true),
            // $LAZY is chosen by the timeline, never by the matcher.
            (&[("m.room.member", "$LAZY")], "m.room.member", "@a:b", false),
            // Outside m.room.member it is an ordinary key.
            (&[("m.custom", "$LAZY")], "m.custom", "$LAZY", true),
            (&[], "m.room.name", "", false),
        ];
        for (entries, event_type, state_key, expected) in table {
            assert_eq!(
                config(entries).matches(event_type, state_key),
                *expected,
                "{entries:?} on ({event_type}, {state_key})"
            );
        }
        assert!(config(&[("m.room.member", "$LAZY")]).lazy_members());
        assert!(!config(&[("m.custom", "$LAZY")]).lazy_members());
        assert!(config(&[]).is_empty());
    }

    #[test]
    fn me_is_the_syncing_user() {
        let entries = [(StateEventType::RoomMember, "$ME")];
        let config = RequiredState::new(
            entries.iter().map(|(event_type, key)| (event_type, *key)),
            &owned_user_id!("@someone:example.org"),
        );
        assert!(config.matches("m.room.member", "@someone:example.org"));
        assert!(!config.matches("m.room.member", "@me:example.org"));
    }

    #[test]
    fn a_grown_config_newly_matches_only_its_new_keys() {
        let before = config(&[("m.room.name", "")]);
        let after = before.combine(&config(&[("m.room.topic", ""), ("m.room.member", "$LAZY")]));
        assert!(before.is_expanded_by(&after));
        assert!(!after.is_expanded_by(&before));
        let expansion = before.expansion(&after);
        assert!(expansion.matches("m.room.topic", ""));
        assert!(!expansion.matches("m.room.name", ""));
        assert!(expansion.lazy_members());
        // A wider pattern covers a narrower one, and all members cover the lazy ones.
        let wide = config(&[("*", "*")]);
        assert!(!wide.is_expanded_by(&after));
        assert!(
            !config(&[("m.room.member", "*")])
                .is_expanded_by(&config(&[("m.room.member", "$LAZY"), ("m.room.member", "@x:y")]))
        );
        assert!(config(&[("*", "")]).is_expanded_by(&config(&[("m.room.member", "*")])));
    }

    fn arbitrary_config() -> impl Strategy<Value = RequiredState> {
        let types = prop::sample::select(vec!["*", "m.room.member", "m.room.name", "m.custom"]);
        let keys = prop::sample::select(vec!["*", "", "$ME", "$LAZY", "@a:b", "@me:example.org"]);
        prop::collection::vec((types, keys), 0..6).prop_map(|entries| config(&entries))
    }

    proptest! {
        #[test]
        fn combining_is_commutative_and_idempotent(a in arbitrary_config(), b in arbitrary_config()) {
            prop_assert_eq!(a.combine(&b), b.combine(&a));
            prop_assert_eq!(a.combine(&a), a.clone());
            prop_assert_eq!(a.combine(&b).combine(&b), a.combine(&b));
        }

        #[test]
        fn an_expansion_only_holds_keys_of_what_was_added(
            a in arbitrary_config(),
            b in arbitrary_config(),
            event_type in prop::sample::select(vec!["m.room.member", "m.room.name", "m.custom", "m.other"]),
            state_key in prop::sample::select(vec!["", "@a:b", "@me:example.org", "$LAZY", "zz"]),
        ) {
            let grown = a.combine(&b);
            let expansion = a.expansion(&grown);
            if expansion.matches(event_type, state_key) {
                prop_assert!(b.matches(event_type, state_key));
                prop_assert!(a.is_expanded_by(&grown));
            }
            if expansion.lazy_members() {
                prop_assert!(b.lazy_members());
            }
            if !a.is_expanded_by(&grown) {
                prop_assert!(!expansion.matches(event_type, state_key));
            }
        }
    }
}
