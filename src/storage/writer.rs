//! The Writer: the single path by which anything is written to the database.
//!
//! Actors hand it batches; it commits them in groups — everything waiting in its mailbox
//! when it becomes free, up to [`MAX_GROUP`] batches — as one RocksDB write with one WAL
//! sync, assigns stream positions inside that write, and answers each sender only once the
//! group is durable. Positions are therefore assigned in commit order with no gaps, and a
//! reader that sees position N finds everything up to N.
//!
//! It runs on its own OS thread with a bounded `loole` mailbox rather than as a ractor actor:
//! forming a group needs to see the whole queue at once, which a ractor mailbox does not
//! offer, and a synced RocksDB write blocks, which must not happen on the async runtime. A
//! full mailbox makes senders wait, which is the back-pressure the actors upstream need.
//!
//! If the thread dies (a panic: a bug, since every RocksDB error is answered as a failed
//! commit), it is not restarted in place. A panic can strike between a durable write and the
//! publication of its stream positions, leaving the in-memory counters, the per-table marks
//! and the recent timeline out of step with the database; rebuilding all of that is what a
//! start does anyway. So the Writer reports its death ([`Writer::failed`]) and the server
//! stops with a non-zero exit status, for the service manager to restart it from the
//! database, which every group leaves consistent (one atomic, synced batch). The
//! alternative, every write answering 503 until someone notices, is what this prevents.
//!
//! It also remembers, per table, the stream position as of the last commit that put a row
//! in it, and records that before publishing the commit's position: a reader that took
//! `committed_position` as its bound and finds a stream table's mark at or below its token
//! knows, without a scan, that the table gained nothing in between. For the same reason it
//! records each group's timeline rows in the [`RecentTimeline`] before publishing.

use std::{
    ops::Range,
    panic::AssertUnwindSafe,
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    thread::JoinHandle,
    time::Instant,
};

use axum::http::StatusCode;
use ruma::api::error::ErrorKind;
use tokio::sync::{oneshot, watch};

use super::{
    Batch, Engine,
    catalogue::{TABLES, TableId},
    codec::{Key, Value},
    meta::{COUNTERS, SHORTID_COUNTER, STREAM_POSITION},
    recent_timeline::RecentTimeline,
    rooms::TIMELINE_TABLE,
};
use crate::{Error, Result};

/// Most batches committed in one group.
pub const MAX_GROUP: usize = 512;

/// Batches that may wait for the Writer before senders are made to wait.
const MAILBOX_CAPACITY: usize = 4096;

/// Adds rows that need the stream positions assigned to its batch.
pub type Finish = Box<dyn FnOnce(&mut Batch, Range<u64>) + Send>;

struct Request {
    batch: Batch,
    positions: u64,
    finish: Option<Finish>,
    reply: oneshot::Sender<Result<Range<u64>>>,
    enqueued: Instant,
}

enum Message {
    Commit(Request),
    /// Commit what is queued and stop; `flush` writes the memtables out first, for a clean
    /// shutdown (a stop without it loses nothing: every commit is in the synced WAL).
    Stop {
        done: oneshot::Sender<()>,
        flush: bool,
    },
    /// Panic, as a bug would ([`Writer::inject_failure`]).
    Panic,
}

/// A handle to the Writer; cheap to clone.
#[derive(Clone)]
pub struct Writer {
    mailbox: loole::Sender<Message>,
    committed: Arc<watch::Sender<u64>>,
    stats: Arc<Counters>,
    last_puts: Arc<[AtomicU64]>,
    recent_timeline: Arc<RecentTimeline>,
    /// Why the thread died, once it has (see the module documentation).
    failure: Arc<watch::Sender<Option<String>>>,
}

/// Totals since the Writer started.
#[derive(Debug, Default)]
struct Counters {
    groups: AtomicU64,
    batches: AtomicU64,
}

/// Commit totals, for tests and the admin console.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WriterStats {
    pub groups: u64,
    pub batches: u64,
}

impl Writer {
    /// Starts the Writer thread over `engine`, continuing the persisted counters.
    pub(super) fn start(
        engine: Arc<Engine>,
        shortids: Arc<AtomicU64>,
        cache_modifier: f64,
    ) -> Result<(Self, JoinHandle<()>)> {
        let committed_position = COUNTERS.get(&*engine, &STREAM_POSITION.to_owned())?.unwrap_or(0);
        let (mailbox, inbox) = loole::bounded(MAILBOX_CAPACITY);
        let (committed, _) = watch::channel(committed_position);
        let committed = Arc::new(committed);
        let stats = Arc::new(Counters::default());
        // What happened before the start is unknown: every table counts as written then.
        let last_puts: Arc<[AtomicU64]> =
            TABLES.iter().map(|_| AtomicU64::new(committed_position)).collect();
        let recent_timeline = Arc::new(RecentTimeline::new(committed_position, cache_modifier));
        let state = WriterState {
            last_puts: Arc::clone(&last_puts),
            recent_timeline: Arc::clone(&recent_timeline),
            stats: Arc::clone(&stats),
            engine,
            inbox,
            committed: Arc::clone(&committed),
            next_position: committed_position + 1,
            shortids,
            persisted_shortid: u64::MAX,
        };
        let failure = Arc::new(watch::channel(None).0);
        let report = Arc::clone(&failure);
        let thread = std::thread::Builder::new()
            .name("tuwunel-writer".to_owned())
            .spawn(move || {
                // `state` (with the mailbox's receiver) is gone once this returns, so waiting
                // senders get an error instead of hanging.
                if let Err(panic) = std::panic::catch_unwind(AssertUnwindSafe(|| state.run())) {
                    let reason = panic_message(panic.as_ref());
                    tracing::error!(%reason, "the database writer thread panicked");
                    report.send_replace(Some(format!("the database writer panicked: {reason}")));
                }
            })
            .map_err(|error| Error::internal(format!("cannot start the writer thread: {error}")))?;
        Ok((Self { mailbox, committed, stats, last_puts, recent_timeline, failure }, thread))
    }

    /// Resolves, with the reason, if the Writer thread dies other than by [`Writer::stop`];
    /// never otherwise.
    pub async fn failed(&self) -> String {
        let mut receiver = self.failure.subscribe();
        let reason =
            receiver.wait_for(Option::is_some).await.ok().and_then(|reason| reason.clone());
        match reason {
            Some(reason) => reason,
            // The sender lives as long as this handle does.
            None => std::future::pending().await,
        }
    }

    /// Makes the Writer thread panic, as a bug in it would: for tests of what follows.
    pub fn inject_failure(&self) {
        let _ = self.mailbox.try_send(Message::Panic);
    }

    /// Commits `batch` durably.
    pub async fn commit(&self, batch: Batch) -> Result<()> {
        self.submit(batch, 0, None).await.map(drop)
    }

    /// Commits `batch` plus the rows `finish` adds once `count` consecutive stream positions
    /// are assigned; returns those positions.
    pub async fn commit_with_positions(
        &self,
        count: u64,
        batch: Batch,
        finish: impl FnOnce(&mut Batch, Range<u64>) + Send + 'static,
    ) -> Result<Range<u64>> {
        self.submit(batch, count, Some(Box::new(finish))).await
    }

    async fn submit(
        &self,
        batch: Batch,
        positions: u64,
        finish: Option<Finish>,
    ) -> Result<Range<u64>> {
        let (reply, answer) = oneshot::channel();
        let request = Request { batch, positions, finish, reply, enqueued: Instant::now() };
        metrics::gauge!("tuwunel_writer_queue_depth").set(self.mailbox.len() as f64);
        self.mailbox.send_async(Message::Commit(request)).await.map_err(|_| stopped())?;
        answer.await.map_err(|_| stopped())?
    }

    /// The highest stream position whose data is committed and readable.
    pub fn committed_position(&self) -> u64 {
        *self.committed.borrow()
    }

    /// The committed position as of the last commit that put a row in `table` (at least that
    /// of the start). Rows it holds with positions above a token came no earlier.
    pub fn last_put(&self, table: TableId) -> u64 {
        self.last_puts
            .get(usize::from(table.0))
            .map_or(u64::MAX, |mark| mark.load(Ordering::SeqCst))
    }

    /// The newest timeline entries of recently written rooms.
    pub fn recent_timeline(&self) -> &RecentTimeline {
        &self.recent_timeline
    }

    /// Whether `table` may hold rows put after the stream position `since` (false settles
    /// it without a read, for a reader whose bound is the committed position).
    pub fn written_since(&self, table: TableId, since: u64) -> bool {
        self.last_put(table) > since
    }

    /// Groups and batches committed so far.
    pub fn stats(&self) -> WriterStats {
        WriterStats {
            groups: self.stats.groups.load(Ordering::Relaxed),
            batches: self.stats.batches.load(Ordering::Relaxed),
        }
    }

    /// Watches the committed stream position.
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.committed.subscribe()
    }

    /// Commits what is already queued, flushes, and stops; later commits fail.
    pub(super) async fn stop(&self) {
        let (done, finished) = oneshot::channel();
        if self.mailbox.send_async(Message::Stop { done, flush: true }).await.is_ok() {
            let _ = finished.await;
        }
    }

    /// Commits what is queued and stops without flushing, for a caller that cannot wait
    /// asynchronously (it joins the thread instead) and may be past caring about the files:
    /// a storage dropped after its directory was removed.
    pub(super) fn stop_blocking(&self) {
        let (done, _finished) = oneshot::channel();
        let _ = self.mailbox.send(Message::Stop { done, flush: false });
    }
}

/// The text of a panic's payload.
fn panic_message(panic: &(dyn std::any::Any + Send)) -> String {
    panic
        .downcast_ref::<&str>()
        .map(|text| (*text).to_owned())
        .or_else(|| panic.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "a panic without a message".to_owned())
}

fn stopped() -> Error {
    Error::matrix(
        StatusCode::SERVICE_UNAVAILABLE,
        ErrorKind::Unknown,
        "The server is shutting down; retry shortly.",
    )
}

struct WriterState {
    last_puts: Arc<[AtomicU64]>,
    recent_timeline: Arc<RecentTimeline>,
    stats: Arc<Counters>,
    engine: Arc<Engine>,
    inbox: loole::Receiver<Message>,
    committed: Arc<watch::Sender<u64>>,
    next_position: u64,
    shortids: Arc<AtomicU64>,
    persisted_shortid: u64,
}

impl WriterState {
    fn run(mut self) {
        while let Ok(first) = self.inbox.recv() {
            let mut group = Vec::new();
            let mut stop = None;
            match first {
                Message::Commit(request) => group.push(request),
                Message::Stop { done, flush } => stop = Some((done, flush)),
                Message::Panic => panic!("failure injected into the writer"),
            }
            while stop.is_none() && group.len() < MAX_GROUP {
                match self.inbox.try_recv() {
                    Ok(Message::Commit(request)) => group.push(request),
                    Ok(Message::Stop { done, flush }) => stop = Some((done, flush)),
                    Ok(Message::Panic) => panic!("failure injected into the writer"),
                    Err(_) => break,
                }
            }
            if !group.is_empty() {
                self.commit_group(group);
            }
            if let Some((done, flush)) = stop {
                if flush && let Err(error) = self.engine.flush() {
                    tracing::error!(%error, "flushing the database at shutdown failed");
                }
                self.inbox.close();
                let _ = done.send(());
                return;
            }
        }
    }

    fn commit_group(&mut self, mut group: Vec<Request>) {
        let started = Instant::now();
        let first_position = self.next_position;
        let size = group.len();
        let assembled = std::panic::catch_unwind(AssertUnwindSafe(|| {
            let mut combined = Batch::new();
            let mut next = first_position;
            let mut ranges = Vec::with_capacity(group.len());
            for request in &mut group {
                metrics::histogram!("tuwunel_writer_queue_wait_seconds")
                    .record(request.enqueued.elapsed().as_secs_f64());
                let range = next..next + request.positions;
                next += request.positions;
                combined.append(std::mem::take(&mut request.batch));
                if let Some(finish) = request.finish.take() {
                    let mut rows = Batch::new();
                    finish(&mut rows, range.clone());
                    combined.append(rows);
                }
                ranges.push(range);
            }
            (combined, next, ranges)
        }));
        let (mut combined, next, ranges) = match assembled {
            Ok(assembled) => assembled,
            Err(_) => {
                tracing::error!("a batch builder panicked; failing its commit group");
                for request in group {
                    let _ = request.reply.send(Err(Error::internal("batch assembly panicked")));
                }
                return;
            }
        };

        if next > first_position {
            COUNTERS.put(&mut combined, &STREAM_POSITION.to_owned(), &(next - 1));
        }
        let shortid = self.shortids.load(Ordering::Acquire);
        if shortid != self.persisted_shortid {
            COUNTERS.put(&mut combined, &SHORTID_COUNTER.to_owned(), &shortid);
        }
        let mut put_tables: Vec<TableId> = combined.put_tables().collect();
        put_tables.sort_unstable_by_key(|table| table.0);
        put_tables.dedup_by_key(|table| table.0);
        let mut timeline_rows: Vec<(u64, u64, u64)> = combined
            .puts_to(TIMELINE_TABLE.id())
            .filter_map(|(key, value)| {
                let (room, position) = <(u64, u64)>::decode(key).ok()?;
                Some((room, position, u64::decode_value(value).ok()?))
            })
            .collect();

        let writing = Instant::now();
        let written = self.engine.write(combined);
        metrics::histogram!("tuwunel_writer_write_seconds").record(writing.elapsed().as_secs_f64());
        match written {
            Ok(()) => {
                self.next_position = next;
                self.persisted_shortid = shortid;
                // Before the position is published (see the module documentation).
                let as_of = next.saturating_sub(1);
                self.recent_timeline.record(first_position.saturating_sub(1), &mut timeline_rows);
                for table in put_tables {
                    if let Some(mark) = self.last_puts.get(usize::from(table.0)) {
                        mark.fetch_max(as_of, Ordering::SeqCst);
                    }
                }
                if next > first_position {
                    self.committed.send_replace(next - 1);
                }
                self.stats.groups.fetch_add(1, Ordering::Relaxed);
                self.stats.batches.fetch_add(size as u64, Ordering::Relaxed);
                for (request, range) in group.into_iter().zip(ranges) {
                    let _ = request.reply.send(Ok(range));
                }
            }
            Err(error) => {
                tracing::error!(%error, size, "committing a write group failed");
                metrics::counter!("tuwunel_writer_failures_total").increment(1);
                for request in group {
                    let _ =
                        request.reply.send(Err(Error::internal(format!("commit failed: {error}"))));
                }
            }
        }
        metrics::counter!("tuwunel_writer_groups_total").increment(1);
        metrics::counter!("tuwunel_writer_batches_total").increment(size as u64);
        metrics::histogram!("tuwunel_writer_group_size").record(size as f64);
        metrics::histogram!("tuwunel_writer_commit_seconds")
            .record(started.elapsed().as_secs_f64());
    }
}
