//! `GET /rooms/{roomId}/hierarchy`: the tree of a space (walked by `rooms::spaces`, which
//! asks other servers about rooms this server is not in), a page at a time.
//!
//! The walk is deterministic for a given state, so a page token only needs to say how many
//! rooms were already returned (plus the walk's parameters, which may not change between
//! pages): each page walks again and skips that many.

use std::sync::Arc;

use ruma::api::client::space::get_hierarchy;

use crate::http::routes::Routes;
use crate::{
    Error, Result, Services,
    http::ruma::{Ruma, route},
    rooms::spaces::{WalkRequest, Walker},
};

/// Rooms per page when the client does not say.
const DEFAULT_LIMIT: usize = 50;
/// Most rooms per page.
const MAX_LIMIT: usize = 100;
/// How deep the walk goes when the client does not say, and at most.
const MAX_DEPTH: usize = 20;

pub(super) fn routes(router: Routes) -> Routes {
    route(router, hierarchy)
}

/// The position in a walk: rooms already returned, and the walk's parameters.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Token {
    skip: usize,
    max_depth: Option<u64>,
    suggested_only: bool,
}

impl Token {
    fn parse(text: &str) -> Result<Self> {
        let invalid = || Error::invalid_param(format!("Unknown pagination token '{text}'."));
        let mut parts = text.split('_');
        let (Some(skip), Some(depth), Some(suggested), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err(invalid());
        };
        let skip = skip.strip_prefix('h').ok_or_else(invalid)?.parse().map_err(|_| invalid())?;
        let max_depth = match depth {
            "-" => None,
            depth => Some(depth.parse().map_err(|_| invalid())?),
        };
        let suggested_only = match suggested {
            "s" => true,
            "a" => false,
            _ => return Err(invalid()),
        };
        Ok(Self { skip, max_depth, suggested_only })
    }
}

impl std::fmt::Display for Token {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let depth = self.max_depth.map_or_else(|| "-".to_owned(), |depth| depth.to_string());
        let suggested = if self.suggested_only { "s" } else { "a" };
        write!(f, "h{}_{depth}_{suggested}", self.skip)
    }
}

async fn hierarchy(
    services: Arc<Services>,
    request: Ruma<get_hierarchy::v1::Request>,
) -> Result<get_hierarchy::v1::Response> {
    let sender = request.sender()?.clone();
    let body = request.body;

    let limit = match body.limit.map(u64::from) {
        None => DEFAULT_LIMIT,
        Some(0) => return Err(Error::invalid_param("limit must be greater than zero.")),
        Some(limit) => usize::try_from(limit).unwrap_or(MAX_LIMIT).min(MAX_LIMIT),
    };
    let requested_depth = body.max_depth.map(u64::from);
    let max_depth = requested_depth
        .map_or(MAX_DEPTH, |depth| usize::try_from(depth).unwrap_or(MAX_DEPTH).min(MAX_DEPTH));
    let skip = match body.from.as_deref().map(Token::parse).transpose()? {
        None => 0,
        Some(token) => {
            if token.max_depth != requested_depth || token.suggested_only != body.suggested_only {
                return Err(Error::invalid_param(
                    "suggested_only and max_depth cannot change on paginated requests.",
                ));
            }
            token.skip
        }
    };

    let walker = Walker {
        storage: &services.storage,
        client: &services.federation.client,
        remote: &services.rooms.remote_spaces,
    };
    let walk = WalkRequest {
        room_id: body.room_id,
        limit,
        max_depth,
        skip,
        suggested_only: body.suggested_only,
    };
    let page = walker.walk(&sender.user_id, &walk).await?;
    let mut response = get_hierarchy::v1::Response::new();
    response.rooms = page.rooms;
    response.next_batch = page.next.map(|skip| {
        Token { skip, max_depth: requested_depth, suggested_only: body.suggested_only }.to_string()
    });
    Ok(response)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_round_trip() {
        let token = Token { skip: 7, max_depth: Some(2), suggested_only: true };
        assert_eq!(Token::parse(&token.to_string()).ok(), Some(token));
        let token = Token { skip: 0, max_depth: None, suggested_only: false };
        assert_eq!(Token::parse(&token.to_string()).ok(), Some(token));
        for bad in ["", "h1", "x1_-_a", "h1_-_q", "h1_-_a_x", "h-1_-_a"] {
            assert!(Token::parse(bad).is_err(), "{bad}");
        }
    }
}
