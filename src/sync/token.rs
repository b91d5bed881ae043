//! Sync tokens: `s<position>_<typing>[_<to-device>]`. The position covers every persisted
//! stream (timeline, state, memberships, account data, receipts, to-device, presence), all of
//! which take their positions from the Writer's one counter; the typing number covers the
//! in-memory typing stream. The optional third number appears only when a response carried a
//! full page of to-device messages: it says how far the device's queue was delivered, so the
//! rest comes next time instead of being acknowledged unseen. A token from before a restart
//! keeps working: positions persist, and a typing number the server no longer knows just means
//! "send typing state again".

use std::fmt;

use crate::{Error, Result};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct SyncToken {
    pub position: u64,
    pub typing: u64,
    /// How far this device's to-device queue was delivered, when short of `position`.
    pub to_device: Option<u64>,
}

impl SyncToken {
    pub fn parse(text: &str) -> Result<Self> {
        let invalid = || Error::invalid_param(format!("Invalid sync token '{text}'."));
        let rest = text.strip_prefix('s').ok_or_else(invalid)?;
        let mut parts = rest.split('_');
        let number = |part: Option<&str>| {
            part.map(|text| text.parse::<u64>().map_err(|_| invalid())).transpose()
        };
        let position = number(parts.next())?.ok_or_else(invalid)?;
        let typing = number(parts.next())?.unwrap_or(0);
        let to_device = number(parts.next())?;
        if parts.next().is_some() || to_device.is_some_and(|delivered| delivered > position) {
            return Err(invalid());
        }
        Ok(Self { position, typing, to_device })
    }

    /// The to-device position this token delivered through.
    pub fn to_device_position(&self) -> u64 {
        self.to_device.unwrap_or(self.position)
    }
}

impl fmt::Display for SyncToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "s{}_{}", self.position, self.typing)?;
        match self.to_device {
            Some(delivered) => write!(f, "_{delivered}"),
            None => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::SyncToken;

    #[test]
    fn tokens_round_trip_and_reject_garbage() {
        let token = SyncToken { position: 42, typing: 7, to_device: None };
        assert_eq!(SyncToken::parse(&token.to_string()).expect("valid"), token);
        let lagging = SyncToken { position: 42, typing: 7, to_device: Some(30) };
        assert_eq!(lagging.to_string(), "s42_7_30");
        assert_eq!(SyncToken::parse("s42_7_30").expect("valid").to_device_position(), 30);
        assert_eq!(
            SyncToken::parse("s5").expect("valid"),
            SyncToken { position: 5, typing: 0, to_device: None }
        );
        assert!(SyncToken::parse("s5_1_9").is_err(), "delivered beyond the position");
        assert!(SyncToken::parse("s5_1_2_3").is_err());
        assert!(SyncToken::parse("t5").is_err());
        assert!(SyncToken::parse("s_x").is_err());
        assert!(SyncToken::parse("").is_err());
    }
}

#[cfg(test)]
mod proptests {
    use proptest::prelude::*;

    use super::SyncToken;

    proptest! {
        #[test]
        fn arbitrary_text_never_panics(text in any::<String>()) {
            let _ = SyncToken::parse(&text);
        }

        #[test]
        fn token_shaped_text_never_panics(text in "s[0-9_]{0,60}") {
            if let Ok(token) = SyncToken::parse(&text) {
                prop_assert!(token.to_device_position() <= token.position);
            }
        }

        #[test]
        fn tokens_round_trip(
            position in any::<u64>(),
            typing in any::<u64>(),
            delivered in proptest::option::of(any::<u64>()),
        ) {
            let token = SyncToken { position, typing, to_device: delivered.map(|d| d.min(position)) };
            prop_assert_eq!(SyncToken::parse(&token.to_string()).ok(), Some(token));
        }
    }
}
