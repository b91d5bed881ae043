//! Token-bucket rate limits per action and key (an IP address or a user id).
//!
//! Each bucket holds up to `burst` tokens and refills at `per_second`; an action takes one
//! token or is refused with the time until one is available. Admins and application services
//! are exempted by the callers.

use std::{
    sync::Mutex,
    time::{Duration, Instant},
};

use dashmap::DashMap;

use crate::{Config, Error, Result, time::Time};

/// What is being limited.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Action {
    Registration,
    Login,
    FailedLogin,
    Message,
    Join,
    Invite,
    /// Reports of events, rooms and users to the server's admins (a fixed rule: see
    /// [`REPORT_RULE`]).
    Report,
}

/// Reports: ten at once, then one a minute. Admins read every report, and one user must not
/// be able to bury the others' under thousands.
pub const REPORT_RULE: Rule = Rule { per_second: 1.0 / 60.0, burst: 10.0 };

/// Rate and burst of one action.
#[derive(Debug, Clone, Copy)]
pub struct Rule {
    pub per_second: f64,
    pub burst: f64,
}

struct Bucket {
    tokens: f64,
    updated: Instant,
}

/// Buckets beyond this are pruned (full buckets first) before adding more.
const BUCKET_LIMIT: usize = 200_000;

pub struct RateLimiter {
    rules: [(Action, Rule); 7],
    buckets: DashMap<(Action, String), Mutex<Bucket>>,
    /// Buckets refill on the server's clock.
    time: Time,
}

impl Action {
    /// Every action, for metrics that must exist before their first increment.
    pub const ALL: [Action; 7] = [
        Action::Registration,
        Action::Login,
        Action::FailedLogin,
        Action::Message,
        Action::Join,
        Action::Invite,
        Action::Report,
    ];

    /// The `action` label of `tuwunel_rate_limited_total`.
    pub fn label(self) -> &'static str {
        match self {
            Action::Registration => "Registration",
            Action::Login => "Login",
            Action::FailedLogin => "FailedLogin",
            Action::Message => "Message",
            Action::Join => "Join",
            Action::Invite => "Invite",
            Action::Report => "Report",
        }
    }
}

/// Counts one refusal of `action` in `tuwunel_rate_limited_total`.
fn count_refusal(action: Action) {
    metrics::counter!("tuwunel_rate_limited_total", "action" => action.label()).increment(1);
}

impl RateLimiter {
    pub fn new(config: &Config, time: Time) -> Self {
        let rule = |per_second: f64, burst: u32| Rule {
            per_second: per_second.max(0.0),
            burst: f64::from(burst.max(1)),
        };
        Self {
            rules: [
                (
                    Action::Registration,
                    rule(config.rc_registration_per_second, config.rc_registration_burst_count),
                ),
                (Action::Login, rule(config.rc_login_per_second, config.rc_login_burst_count)),
                (
                    Action::FailedLogin,
                    rule(config.rc_failed_login_per_second, config.rc_failed_login_burst_count),
                ),
                (
                    Action::Message,
                    rule(config.rc_message_per_second, config.rc_message_burst_count),
                ),
                (Action::Join, rule(config.rc_joins_per_second, config.rc_joins_burst_count)),
                (Action::Invite, rule(config.rc_invites_per_second, config.rc_invites_burst_count)),
                (Action::Report, REPORT_RULE),
            ],
            buckets: DashMap::new(),
            time,
        }
    }

    fn rule(&self, action: Action) -> Rule {
        self.rules
            .iter()
            .find(|(candidate, _)| *candidate == action)
            .map_or(Rule { per_second: 1.0, burst: 1.0 }, |(_, rule)| *rule)
    }

    /// Takes one token for `action` by `key`, or refuses with `429 M_LIMIT_EXCEEDED`.
    pub fn check(&self, action: Action, key: &str) -> Result<()> {
        match self.take(action, key, true) {
            None => Ok(()),
            Some(wait) => {
                count_refusal(action);
                Err(Error::limit_exceeded(wait))
            }
        }
    }

    /// Refuses with `429 M_LIMIT_EXCEEDED` (counted like [`RateLimiter::check`]) when `key`
    /// has no token left for `action`, without taking one: for actions that only cost a
    /// token when they fail, such as a login with a wrong password.
    pub fn refuse_if_exhausted(&self, action: Action, key: &str) -> Result<()> {
        match self.take(action, key, false) {
            None => Ok(()),
            Some(wait) => {
                count_refusal(action);
                Err(Error::limit_exceeded(wait))
            }
        }
    }

    fn take(&self, action: Action, key: &str, consume: bool) -> Option<Duration> {
        let rule = self.rule(action);
        if self.buckets.len() >= BUCKET_LIMIT {
            self.prune();
        }
        let now = self.time.now();
        let entry = self
            .buckets
            .entry((action, key.to_owned()))
            .or_insert_with(|| Mutex::new(Bucket { tokens: rule.burst, updated: now }));
        let mut bucket = entry.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        let refill = now.saturating_duration_since(bucket.updated).as_secs_f64() * rule.per_second;
        bucket.tokens = (bucket.tokens + refill).min(rule.burst);
        bucket.updated = now;
        if bucket.tokens >= 1.0 {
            if consume {
                bucket.tokens -= 1.0;
            }
            return None;
        }
        // A rate of (nearly) nothing is an hour's wait, not a duration too long to represent.
        let hour = Duration::from_secs(3600);
        if rule.per_second <= 0.0 {
            return Some(hour);
        }
        Some(
            Duration::try_from_secs_f64((1.0 - bucket.tokens) / rule.per_second)
                .map_or(hour, |wait| wait.min(hour)),
        )
    }

    fn prune(&self) {
        let now = self.time.now();
        let rules = self.rules;
        self.buckets.retain(|(action, _), bucket| {
            let rule = rules
                .iter()
                .find(|(candidate, _)| candidate == action)
                .map_or(Rule { per_second: 1.0, burst: 1.0 }, |(_, rule)| *rule);
            let bucket = bucket.get_mut().unwrap_or_else(std::sync::PoisonError::into_inner);
            // A bucket that would be full again carries no information.
            bucket.tokens
                + now.saturating_duration_since(bucket.updated).as_secs_f64() * rule.per_second
                < rule.burst
        });
    }
}
