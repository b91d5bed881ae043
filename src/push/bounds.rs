//! How large a user's push rules may grow. The room actor evaluates every local member's
//! rules for every event it commits, so what one user defines costs every room they are in:
//! the number of their own rules, the conditions of each, and the patterns with wildcards
//! (which ruma compiles into a regular expression each time it checks one) are bounded by
//! the constants in [`crate::limits`]. The user actor checks a ruleset after a change and
//! before it is written, so concurrent changes cannot pass the bounds together.

use ruma::push::{PushCondition, Ruleset};

use crate::{Error, Result, limits};

/// Refuses `ruleset` when the user's own rules (not the server's defaults) exceed a bound.
pub fn check(ruleset: &Ruleset) -> Result<()> {
    let mut own = 0;
    let mut wildcard_patterns = 0;
    let mut wildcard_chars = 0;
    let mut count_pattern = |pattern: &str| {
        if pattern.contains(['*', '?']) {
            wildcard_patterns += 1;
            wildcard_chars += pattern.chars().count();
        }
    };
    for rule in ruleset.content.iter().filter(|rule| !rule.default) {
        own += 1;
        count_pattern(&rule.pattern);
    }
    for rule in ruleset.override_.iter().chain(&ruleset.underride).filter(|rule| !rule.default) {
        own += 1;
        if rule.conditions.len() > limits::MAX_PUSH_RULE_CONDITIONS {
            return Err(Error::field_too_large(format!(
                "A push rule may have at most {} conditions.",
                limits::MAX_PUSH_RULE_CONDITIONS
            )));
        }
        for condition in &rule.conditions {
            if let PushCondition::EventMatch(data) = condition {
                count_pattern(&data.pattern);
            }
        }
    }
    own += ruleset.room.iter().filter(|rule| !rule.default).count();
    own += ruleset.sender.iter().filter(|rule| !rule.default).count();
    if own > limits::MAX_PUSH_RULES {
        return Err(Error::user_limit(format!(
            "You can have at most {} push rules of your own.",
            limits::MAX_PUSH_RULES
        )));
    }
    if wildcard_patterns > limits::MAX_PUSH_WILDCARD_PATTERNS
        || wildcard_chars > limits::MAX_PUSH_WILDCARD_CHARS
    {
        return Err(Error::user_limit(format!(
            "Your push rules can have at most {} patterns with wildcards (* or ?), of at most \
             {} characters together.",
            limits::MAX_PUSH_WILDCARD_PATTERNS,
            limits::MAX_PUSH_WILDCARD_CHARS
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use ruma::{
        owned_user_id,
        push::{
            Action, EventMatchConditionData, NewConditionalPushRule, NewPatternedPushRule,
            NewPushRule, NewSimplePushRule,
        },
    };

    use super::*;

    fn ruleset() -> Ruleset {
        Ruleset::server_default(&owned_user_id!("@alice:example.org"))
    }

    fn keyword(id: usize, pattern: &str) -> NewPushRule {
        NewPushRule::Content(NewPatternedPushRule::new(
            format!("keyword{id}"),
            pattern.to_owned(),
            vec![Action::Notify],
        ))
    }

    #[test]
    fn the_defaults_pass_and_the_own_rules_are_counted() {
        let mut rules = ruleset();
        assert!(check(&rules).is_ok(), "the server's defaults are not counted");
        for id in 0..limits::MAX_PUSH_RULES {
            let rule = NewPushRule::Sender(NewSimplePushRule::new(
                format!("@user{id}:example.org").try_into().expect("user id"),
                vec![],
            ));
            rules.insert(rule, None, None).expect("insert");
        }
        assert!(check(&rules).is_ok());
        rules.insert(keyword(0, "one more"), None, None).expect("insert");
        assert_eq!(check(&rules).expect_err("too many").errcode(), "M_USER_LIMIT_EXCEEDED");
    }

    #[test]
    fn patterns_with_wildcards_have_a_budget() {
        let mut rules = ruleset();
        let long = "a?".repeat(limits::MAX_PUSH_WILDCARD_CHARS / 4);
        rules.insert(keyword(0, &long), None, None).expect("insert");
        rules.insert(keyword(1, &long), None, None).expect("insert");
        assert!(check(&rules).is_ok(), "exactly the budget");
        rules.insert(keyword(2, "x*"), None, None).expect("insert");
        assert!(check(&rules).is_err(), "over the character budget");

        let mut rules = ruleset();
        for id in 0..=limits::MAX_PUSH_WILDCARD_PATTERNS {
            rules.insert(keyword(id, "a*"), None, None).expect("insert");
        }
        assert!(check(&rules).is_err(), "over the pattern count");
        // Keywords without wildcards are not counted.
        let mut rules = ruleset();
        for id in 0..=limits::MAX_PUSH_WILDCARD_PATTERNS {
            rules.insert(keyword(id, "plain"), None, None).expect("insert");
        }
        assert!(check(&rules).is_ok());
    }

    #[test]
    fn a_rule_with_too_many_conditions_is_too_large() {
        let condition = |n: usize| {
            PushCondition::EventMatch(EventMatchConditionData::new(
                "content.msgtype".to_owned(),
                format!("m.type{n}"),
            ))
        };
        let mut rules = ruleset();
        let conditions = (0..=limits::MAX_PUSH_RULE_CONDITIONS).map(condition).collect();
        let rule = NewConditionalPushRule::new("many".to_owned(), conditions, vec![]);
        rules.insert(NewPushRule::Override(rule), None, None).expect("insert");
        assert_eq!(check(&rules).expect_err("refused").errcode(), "M_TOO_LARGE");
    }
}
