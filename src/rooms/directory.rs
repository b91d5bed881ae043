//! The published room directory of this server: which rooms are listed, filtered and cut
//! into pages. Our clients' `/publicRooms` and other servers' `/publicRooms` read the same
//! pages. Which rooms are published is [`Aliases`]' (rows) and `Rooms::set_published`'s
//! (who may change it).

use ruma::{
    UInt,
    directory::{Filter, PublicRoomsChunk, RoomNetwork},
    room::RoomType,
};

use super::{aliases::Aliases, summary::RoomInfo};
use crate::{Error, Result, storage::Storage};

/// Most rooms one page holds (also the page size when none is asked for).
pub const MAX_PAGE: usize = 500;

/// Where a directory page starts: `n<index>` is the page from `index` on, `p<index>` the page
/// that ends before `index`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Since {
    Next(usize),
    Previous(usize),
}

impl Since {
    fn parse(token: &str) -> Result<Self> {
        let invalid = || Error::invalid_param(format!("Invalid pagination token '{token}'."));
        let number = |digits: &str| digits.parse::<usize>().map_err(|_| invalid());
        if let Some(digits) = token.strip_prefix('n') {
            Ok(Self::Next(number(digits)?))
        } else if let Some(digits) = token.strip_prefix('p') {
            Ok(Self::Previous(number(digits)?))
        } else {
            Err(invalid())
        }
    }
}

/// What a page was asked for.
#[derive(Debug, Clone, Default)]
pub struct PageRequest<'a> {
    pub limit: Option<UInt>,
    pub since: Option<&'a str>,
    pub filter: Filter,
    pub network: RoomNetwork,
}

/// One page of the directory.
#[derive(Debug, Clone, Default)]
pub struct Page {
    pub chunk: Vec<PublicRoomsChunk>,
    pub next_batch: Option<String>,
    pub prev_batch: Option<String>,
    pub total: usize,
}

/// The published rooms this server knows that pass `filter`, largest first.
fn published_rooms(storage: &Storage, aliases: &Aliases, filter: &Filter) -> Result<Vec<RoomInfo>> {
    let term = filter.generic_search_term.as_deref().map(str::trim).filter(|term| !term.is_empty());
    let mut rooms = Vec::new();
    for room_id in aliases.published()? {
        let Some(info) = RoomInfo::load(storage, &room_id)? else { continue };
        if !filter.room_types.is_empty()
            && !filter
                .room_types
                .iter()
                .any(|wanted| wanted.as_str() == info.room_type.as_ref().map(RoomType::as_str))
        {
            continue;
        }
        if term.is_some_and(|term| !info.matches(term)) {
            continue;
        }
        rooms.push(info);
    }
    rooms.sort_by(|a, b| {
        b.num_joined_members.cmp(&a.num_joined_members).then_with(|| a.room_id.cmp(&b.room_id))
    });
    Ok(rooms)
}

/// One page of this server's directory.
pub fn page(storage: &Storage, aliases: &Aliases, request: &PageRequest<'_>) -> Result<Page> {
    let limit = match request.limit.map(u64::from) {
        None | Some(0) => MAX_PAGE,
        Some(limit) => usize::try_from(limit).unwrap_or(usize::MAX).min(MAX_PAGE),
    };
    let since = request.since.map(Since::parse).transpose()?;
    let rooms = match request.network {
        RoomNetwork::Matrix | RoomNetwork::All => {
            published_rooms(storage, aliases, &request.filter)?
        }
        // No application service offers third-party networks here.
        _ => Vec::new(),
    };
    let total = rooms.len();
    let (start, end) = match since {
        None => (0, limit.min(total)),
        Some(Since::Next(start)) => (start.min(total), start.saturating_add(limit).min(total)),
        Some(Since::Previous(end)) => {
            let end = end.min(total);
            (end.saturating_sub(limit), end)
        }
    };
    let chunk = rooms.get(start..end).unwrap_or_default().iter().map(RoomInfo::chunk).collect();
    Ok(Page {
        chunk,
        next_batch: (end < total).then(|| format!("n{end}")),
        prev_batch: (start > 0).then(|| format!("p{start}")),
        total,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn since_tokens_round_trip_and_reject_garbage() {
        assert_eq!(Since::parse("n20").ok(), Some(Since::Next(20)));
        assert_eq!(Since::parse("p3").ok(), Some(Since::Previous(3)));
        assert!(Since::parse("x1").is_err());
        assert!(Since::parse("n").is_err());
        assert!(Since::parse("n-1").is_err());
    }
}
