//! The server's clock: wall-clock milliseconds, monotonic instants and sleeps, read through
//! one injectable [`Time`] instead of the system directly.
//!
//! Domain code (token expiry, UIA sessions, presence, typing, retention cut-offs, the
//! timestamps the server writes) asks `Time`, so a test can run it on a [`ManualClock`] and
//! move time forward instead of sleeping. The runtime's own timing (actor idle checks,
//! restart backoff, request deadlines, metrics) stays on the system clock: it measures the
//! machine, not the domain.

use std::{
    fmt,
    future::Future,
    pin::Pin,
    sync::Arc,
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use ruma::{MilliSecondsSinceUnixEpoch, UInt};
use tokio::sync::watch;

/// A source of time.
pub trait Clock: Send + Sync + 'static {
    /// Wall-clock time in milliseconds since the Unix epoch.
    fn now_ms(&self) -> u64;
    /// Monotonic time, for durations.
    fn now(&self) -> Instant;
    /// Resolves once `delay` has passed on this clock.
    fn sleep(&self, delay: Duration) -> Pin<Box<dyn Future<Output = ()> + Send>>;
}

/// The clock every service shares; cheap to clone.
#[derive(Clone)]
pub struct Time(Arc<dyn Clock>);

impl fmt::Debug for Time {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("Time").field(&self.now_ms()).finish()
    }
}

impl Time {
    /// The system's clock (what a running server uses).
    pub fn system() -> Self {
        Self(Arc::new(SystemClock))
    }

    /// Time from any clock.
    pub fn from_clock(clock: Arc<dyn Clock>) -> Self {
        Self(clock)
    }

    /// Wall-clock milliseconds since the Unix epoch.
    pub fn now_ms(&self) -> u64 {
        self.0.now_ms()
    }

    /// Monotonic now.
    pub fn now(&self) -> Instant {
        self.0.now()
    }

    /// Now as a Matrix timestamp (saturating at the largest one Matrix can carry).
    pub fn timestamp(&self) -> MilliSecondsSinceUnixEpoch {
        MilliSecondsSinceUnixEpoch(UInt::new_saturating(self.now_ms()))
    }

    /// Resolves once `delay` has passed on this clock.
    pub fn sleep(&self, delay: Duration) -> impl Future<Output = ()> + Send + 'static {
        self.0.sleep(delay)
    }
}

/// The operating system's clocks and tokio's timer.
struct SystemClock;

impl Clock for SystemClock {
    fn now_ms(&self) -> u64 {
        // Before 1970 only on a broken clock; zero is as good an answer as any.
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |since| u64::try_from(since.as_millis()).unwrap_or(u64::MAX))
    }

    fn now(&self) -> Instant {
        Instant::now()
    }

    fn sleep(&self, delay: Duration) -> Pin<Box<dyn Future<Output = ()> + Send>> {
        Box::pin(tokio::time::sleep(delay))
    }
}

/// A clock that stands still until a test moves it ([`ManualClock::advance`]). It starts at
/// the system's time, so the timestamps it gives look like real ones.
pub struct ManualClock {
    start: Instant,
    start_ms: u64,
    /// How far the test has moved the clock; sleepers wait on it.
    offset: watch::Sender<Duration>,
}

impl ManualClock {
    pub fn new() -> Arc<Self> {
        Arc::new(Self {
            start: Instant::now(),
            start_ms: SystemClock.now_ms(),
            offset: watch::channel(Duration::ZERO).0,
        })
    }

    /// A [`Time`] reading this clock.
    pub fn time(self: &Arc<Self>) -> Time {
        Time(Arc::clone(self) as Arc<dyn Clock>)
    }

    /// Moves the clock forward by `by`, waking the sleepers whose deadline it reaches.
    pub fn advance(&self, by: Duration) {
        self.offset.send_modify(|offset| *offset = offset.saturating_add(by));
    }

    fn offset(&self) -> Duration {
        *self.offset.borrow()
    }
}

impl Clock for ManualClock {
    fn now_ms(&self) -> u64 {
        let offset = u64::try_from(self.offset().as_millis()).unwrap_or(u64::MAX);
        self.start_ms.saturating_add(offset)
    }

    fn now(&self) -> Instant {
        self.start + self.offset()
    }

    fn sleep(&self, delay: Duration) -> Pin<Box<dyn Future<Output = ()> + Send>> {
        let deadline = self.offset().saturating_add(delay);
        let mut offset = self.offset.subscribe();
        Box::pin(async move {
            if offset.wait_for(|offset| *offset >= deadline).await.is_err() {
                // The clock is gone: its time never reaches the deadline.
                std::future::pending::<()>().await;
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_manual_sleep_wakes_at_its_deadline_and_not_before() {
        let clock = ManualClock::new();
        let time = clock.time();
        let (woke, mut wake) = tokio::sync::oneshot::channel();
        let sleeper = time.sleep(Duration::from_secs(10));
        tokio::spawn(async move {
            sleeper.await;
            let _ = woke.send(());
        });

        clock.advance(Duration::from_secs(9));
        // Real time passing does not move the clock.
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(wake.try_recv().is_err(), "woke before its deadline");

        clock.advance(Duration::from_secs(1));
        tokio::time::timeout(Duration::from_secs(5), &mut wake)
            .await
            .expect("woke at its deadline")
            .expect("sleeper finished");
    }

    #[tokio::test]
    async fn a_zero_sleep_is_already_due() {
        let clock = ManualClock::new();
        tokio::time::timeout(Duration::from_secs(5), clock.time().sleep(Duration::ZERO))
            .await
            .expect("a zero delay does not wait for the clock");
    }

    #[test]
    fn manual_time_moves_only_when_advanced() {
        let clock = ManualClock::new();
        let time = clock.time();
        let (ms, instant) = (time.now_ms(), time.now());
        assert_eq!(time.now_ms(), ms);
        clock.advance(Duration::from_millis(1500));
        assert_eq!(time.now_ms(), ms + 1500);
        assert_eq!(time.now() - instant, Duration::from_millis(1500));
        assert_eq!(u64::from(time.timestamp().get()), ms + 1500);
    }

    #[test]
    fn the_system_clock_is_the_epoch_time() {
        let time = Time::system();
        let ms = time.now_ms();
        let ruma = u64::from(MilliSecondsSinceUnixEpoch::now().get());
        assert!(ruma.abs_diff(ms) < 60_000, "system clock {ms}, ruma {ruma}");
    }
}
