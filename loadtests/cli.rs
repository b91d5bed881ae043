//! Command-line interface: global flags, one subcommand per scenario with its sizing flags,
//! and the loopback guard on `--url`.

use std::{net::IpAddr, path::PathBuf};

use clap::{Args, Parser, Subcommand};

use crate::error::{Error, Result};

/// Load tests for Matrix homeservers, through the standard Client-Server API only.
#[derive(Debug, Parser)]
#[command(name = "tuwunel-loadtest", version, about, long_about = None)]
pub(crate) struct Cli {
    /// Base URL of the homeserver's Client-Server API, e.g. http://127.0.0.1:8008.
    #[arg(long, required_unless_present = "compare")]
    pub(crate) url: Option<String>,

    /// Registration token for `m.login.registration_token`; without it registration uses
    /// `m.login.dummy` (open registration).
    #[arg(long, env = "LOADTEST_REGISTRATION_TOKEN")]
    pub(crate) registration_token: Option<String>,

    /// Directory where created users and rooms are saved (one JSON file per URL) and reused
    /// by later runs. Without it everything is created afresh and forgotten.
    #[arg(long)]
    pub(crate) world_dir: Option<PathBuf>,

    /// PID of the server process (same machine): samples its RSS and CPU every 200 ms.
    #[arg(long)]
    pub(crate) server_pid: Option<u32>,

    /// Write the JSON report here.
    #[arg(long)]
    pub(crate) report: Option<PathBuf>,

    /// Write one SVG latency histogram per measurement into this directory.
    #[arg(long)]
    pub(crate) svg_dir: Option<PathBuf>,

    /// Allow a URL that is not loopback (127.0.0.0/8, ::1, localhost).
    #[arg(long)]
    pub(crate) allow_non_loopback: bool,

    /// Upper bound in seconds on a scenario's measured phase (every loop also has a count bound).
    #[arg(long, default_value_t = 600)]
    pub(crate) max_duration: u64,

    /// Upper bound in seconds on setup (registering users, creating rooms, history).
    #[arg(long, default_value_t = 3600)]
    pub(crate) max_setup_duration: u64,

    /// Requests in flight during setup phases.
    #[arg(long, default_value_t = 24)]
    pub(crate) setup_concurrency: usize,

    /// Timeout in seconds of one request (long polls get their poll timeout on top).
    #[arg(long, default_value_t = 120)]
    pub(crate) request_timeout: u64,

    /// How many times one request is retried after `429 M_LIMIT_EXCEEDED`.
    #[arg(long, default_value_t = 20)]
    pub(crate) max_retries: u32,

    /// Compare two JSON reports: prints every metric of A and B and the ratio B/A.
    #[arg(long, num_args = 2, value_names = ["A", "B"], conflicts_with = "url")]
    pub(crate) compare: Option<Vec<PathBuf>>,

    #[command(subcommand)]
    pub(crate) scenario: Option<Scenario>,
}

#[derive(Debug, Clone, Subcommand)]
pub(crate) enum Scenario {
    /// Many senders across many rooms: throughput and send latency.
    Send(SendArgs),
    /// Members long-polling /sync while messages arrive at a fixed rate: delivery latency.
    Fanout(FanoutArgs),
    /// Thousands of rooms, activity in a random fraction at a time; server RSS.
    ManyRooms(ManyRoomsArgs),
    /// One user in many rooms with history: time and size of the initial /sync.
    InitialSync(InitialSyncArgs),
    /// Many users joining one room, and one user joining many rooms.
    Join(JoinArgs),
    /// Room creation throughput and latency.
    CreateRooms(CreateRoomsArgs),
    /// Upload and authenticated download of files.
    Media(MediaArgs),
    /// Thousands of parked /sync long polls: server CPU while nothing happens, then one wake.
    IdlePolls(IdlePollsArgs),
}

impl Scenario {
    pub(crate) fn name(&self) -> &'static str {
        match self {
            Self::Send(_) => "send",
            Self::Fanout(_) => "fanout",
            Self::ManyRooms(_) => "many-rooms",
            Self::InitialSync(_) => "initial-sync",
            Self::Join(_) => "join",
            Self::CreateRooms(_) => "create-rooms",
            Self::Media(_) => "media",
            Self::IdlePolls(_) => "idle-polls",
        }
    }
}

#[derive(Debug, Clone, Args, serde::Serialize)]
pub(crate) struct SendArgs {
    /// Rooms the messages are spread over (round-robin).
    #[arg(long, default_value_t = 1000)]
    pub(crate) rooms: usize,
    /// Users the rooms' members are drawn from.
    #[arg(long, default_value_t = 200)]
    pub(crate) users: usize,
    /// Members of each room (the senders of that room).
    #[arg(long, default_value_t = 3)]
    pub(crate) members_per_room: usize,
    /// Sends in flight at once (closed loop).
    #[arg(long, default_value_t = 16)]
    pub(crate) concurrency: usize,
    /// Messages to send.
    #[arg(long, default_value_t = 10_000)]
    pub(crate) messages: usize,
    /// Open loop at this many messages per second instead of the closed loop; latency is
    /// measured from each message's scheduled start.
    #[arg(long)]
    pub(crate) rate: Option<f64>,
    /// Open loop: most sends in flight at once (later ones wait, and their wait counts).
    #[arg(long, default_value_t = 1024)]
    pub(crate) max_in_flight: usize,
}

#[derive(Debug, Clone, Args, serde::Serialize)]
pub(crate) struct FanoutArgs {
    /// Long-polling members of each room.
    #[arg(long, default_value_t = 100)]
    pub(crate) members: usize,
    /// Active rooms; messages go to them round-robin.
    #[arg(long, default_value_t = 1)]
    pub(crate) rooms: usize,
    /// Users the members are drawn from (default: --members). Each user long-polls once for
    /// all its rooms.
    #[arg(long)]
    pub(crate) users: Option<usize>,
    /// Messages per second (open loop, one sender in every room).
    #[arg(long, default_value_t = 10.0)]
    pub(crate) rate: f64,
    /// Messages to send.
    #[arg(long, default_value_t = 200)]
    pub(crate) messages: usize,
    /// /sync long-poll timeout in milliseconds.
    #[arg(long, default_value_t = 30_000)]
    pub(crate) sync_timeout: u64,
    /// Seconds between starting the long polls and the first message.
    #[arg(long, default_value_t = 2.0)]
    pub(crate) settle_seconds: f64,
    /// Seconds after the last acknowledged send to wait for outstanding deliveries.
    #[arg(long, default_value_t = 15.0)]
    pub(crate) drain_seconds: f64,
}

#[derive(Debug, Clone, Args, serde::Serialize)]
pub(crate) struct ManyRoomsArgs {
    /// Rooms to create (or reuse).
    #[arg(long, default_value_t = 10_000)]
    pub(crate) rooms: usize,
    /// Users the members are drawn from.
    #[arg(long, default_value_t = 500)]
    pub(crate) users: usize,
    /// Members of each room.
    #[arg(long, default_value_t = 2)]
    pub(crate) members_per_room: usize,
    /// Fraction of the rooms active in one round.
    #[arg(long, default_value_t = 0.05)]
    pub(crate) active_fraction: f64,
    /// Rounds of activity, each in a fresh random selection of rooms.
    #[arg(long, default_value_t = 5)]
    pub(crate) rounds: usize,
    /// Messages sent in each active room per round.
    #[arg(long, default_value_t = 2)]
    pub(crate) messages_per_room: usize,
    /// Members of the active rooms that long-poll /sync during a round.
    #[arg(long, default_value_t = 50)]
    pub(crate) syncers: usize,
    /// Sends in flight at once.
    #[arg(long, default_value_t = 16)]
    pub(crate) concurrency: usize,
    /// /sync long-poll timeout in milliseconds.
    #[arg(long, default_value_t = 30_000)]
    pub(crate) sync_timeout: u64,
    /// Seconds between starting the long polls and the first message of a round.
    #[arg(long, default_value_t = 1.0)]
    pub(crate) settle_seconds: f64,
    /// Seconds after a round's last send to wait for outstanding deliveries.
    #[arg(long, default_value_t = 15.0)]
    pub(crate) drain_seconds: f64,
}

#[derive(Debug, Clone, Args, serde::Serialize)]
pub(crate) struct InitialSyncArgs {
    /// Rooms the user is in.
    #[arg(long, default_value_t = 500)]
    pub(crate) rooms: usize,
    /// Messages of history in each room.
    #[arg(long, default_value_t = 20)]
    pub(crate) history: usize,
    /// Initial syncs to time.
    #[arg(long, default_value_t = 5)]
    pub(crate) repeats: usize,
    /// Timeline limit of the inline filter.
    #[arg(long, default_value_t = 10)]
    pub(crate) timeline_limit: usize,
}

#[derive(Debug, Clone, Args, serde::Serialize)]
pub(crate) struct JoinArgs {
    /// Users joining one fresh public room.
    #[arg(long, default_value_t = 500)]
    pub(crate) users: usize,
    /// Fresh public rooms one fresh user joins.
    #[arg(long, default_value_t = 500)]
    pub(crate) rooms: usize,
    /// Joins in flight at once.
    #[arg(long, default_value_t = 32)]
    pub(crate) concurrency: usize,
}

#[derive(Debug, Clone, Args, serde::Serialize)]
pub(crate) struct CreateRoomsArgs {
    /// Rooms to create.
    #[arg(long, default_value_t = 500)]
    pub(crate) count: usize,
    /// Creations in flight at once.
    #[arg(long, default_value_t = 16)]
    pub(crate) concurrency: usize,
    /// Users the creations are spread over.
    #[arg(long, default_value_t = 16)]
    pub(crate) users: usize,
    /// `preset` of the createRoom requests.
    #[arg(long, default_value = "private_chat")]
    pub(crate) preset: String,
}

#[derive(Debug, Clone, Args, serde::Serialize)]
pub(crate) struct MediaArgs {
    /// Files to upload, then download.
    #[arg(long, default_value_t = 50)]
    pub(crate) count: usize,
    /// Size of each file in bytes.
    #[arg(long, default_value_t = 1_048_576)]
    pub(crate) size: usize,
    /// Transfers in flight at once.
    #[arg(long, default_value_t = 4)]
    pub(crate) concurrency: usize,
    /// Users the transfers are spread over.
    #[arg(long, default_value_t = 4)]
    pub(crate) users: usize,
}

#[derive(Debug, Clone, Args, serde::Serialize)]
pub(crate) struct IdlePollsArgs {
    /// Long polls to hold open at once (needs about this many file descriptors, in this
    /// process and in the server: `ulimit -n`).
    #[arg(long, default_value_t = 10_000)]
    pub(crate) polls: usize,
    /// Users the polls are spread over (each in a room of its own).
    #[arg(long, default_value_t = 200)]
    pub(crate) users: usize,
    /// Seconds to hold the polls while measuring the server's CPU.
    #[arg(long, default_value_t = 30.0)]
    pub(crate) hold_seconds: f64,
    /// /sync long-poll timeout in milliseconds; must outlast opening + settle + hold.
    #[arg(long, default_value_t = 60_000)]
    pub(crate) sync_timeout: u64,
    /// Polls opened per second (0: all at once). Opening 10,000 at once, 15 to 38% of the
    /// loopback connections failed and their retries showed up as the server's CPU.
    #[arg(long, default_value_t = 2_000.0)]
    pub(crate) open_rate: f64,
    /// Seconds to wait for all polls' connections to be established.
    #[arg(long, default_value_t = 60.0)]
    pub(crate) ramp_timeout: f64,
    /// Seconds between all connections being up and the start of the hold.
    #[arg(long, default_value_t = 3.0)]
    pub(crate) settle_seconds: f64,
    /// Seconds to wait, after one message per user, for every poll to return with it.
    #[arg(long, default_value_t = 30.0)]
    pub(crate) drain_seconds: f64,
}

/// Refuses URLs whose host is not loopback, unless allowed.
pub(crate) fn check_url(url: &str, allow_non_loopback: bool) -> Result<reqwest::Url> {
    let parsed =
        reqwest::Url::parse(url).map_err(|error| Error::new(format!("--url {url:?}: {error}")))?;
    if !matches!(parsed.scheme(), "http" | "https") {
        return Err(Error::new(format!("--url {url:?}: the scheme must be http or https")));
    }
    let host = parsed.host_str().unwrap_or_default();
    if !allow_non_loopback && !is_loopback(host) {
        return Err(Error::new(format!(
            "--url {url:?}: {host:?} is not a loopback address (127.0.0.0/8, ::1, localhost); \
             load tests are meant for a server on this machine. Pass --allow-non-loopback if \
             you really mean to load another host."
        )));
    }
    Ok(parsed)
}

fn is_loopback(host: &str) -> bool {
    let bare = host.trim_start_matches('[').trim_end_matches(']');
    match bare.parse::<IpAddr>() {
        Ok(IpAddr::V4(ip)) => ip.is_loopback(),
        Ok(IpAddr::V6(ip)) => {
            ip.is_loopback() || ip.to_ipv4_mapped().is_some_and(|ip| ip.is_loopback())
        }
        Err(_) => {
            let name = bare.trim_end_matches('.').to_ascii_lowercase();
            name == "localhost" || name.ends_with(".localhost")
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loopback_hosts() {
        for url in [
            "http://127.0.0.1:8008",
            "http://127.1.2.3",
            "http://[::1]:8008",
            "http://localhost:8008/",
            "http://LOCALHOST.",
        ] {
            assert!(check_url(url, false).is_ok(), "{url}");
        }
        for url in ["http://10.0.0.1:8008", "https://matrix.org", "http://[::2]", "ftp://127.0.0.1"]
        {
            assert!(check_url(url, false).is_err(), "{url}");
        }
        assert!(check_url("https://matrix.org", true).is_ok());
    }
}
