//! Sync tokens: `s<position>_<typing>`. The position covers every persisted stream (timeline,
//! state, memberships, account data, receipts, to-device, presence), all of which take their
//! positions from the Writer's one counter; the typing number covers the in-memory typing
//! stream. A token from before a restart keeps working: positions persist, and a typing
//! number the server no longer knows just means "send typing state again".

use std::fmt;

use crate::{Error, Result};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct SyncToken {
    pub position: u64,
    pub typing: u64,
}

impl SyncToken {
    pub fn parse(text: &str) -> Result<Self> {
        let invalid = || Error::invalid_param(format!("Invalid sync token '{text}'."));
        let rest = text.strip_prefix('s').ok_or_else(invalid)?;
        let (position, typing) = rest.split_once('_').unwrap_or((rest, "0"));
        Ok(Self {
            position: position.parse().map_err(|_| invalid())?,
            typing: typing.parse().map_err(|_| invalid())?,
        })
    }
}

impl fmt::Display for SyncToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "s{}_{}", self.position, self.typing)
    }
}

#[cfg(test)]
mod tests {
    use super::SyncToken;

    #[test]
    fn tokens_round_trip_and_reject_garbage() {
        let token = SyncToken { position: 42, typing: 7 };
        assert_eq!(SyncToken::parse(&token.to_string()).expect("valid"), token);
        assert_eq!(SyncToken::parse("s5").expect("valid"), SyncToken { position: 5, typing: 0 });
        assert!(SyncToken::parse("t5").is_err());
        assert!(SyncToken::parse("s_x").is_err());
        assert!(SyncToken::parse("").is_err());
    }
}
