//! The node's outgoing snapshot bandwidth: one token bucket shared by every
//! snapshot stream the node sends, whose rate can change at run time (the PD's
//! `snapshot-bytes-per-sec`, learnt from heartbeat answers).
//!
//! A chunk waits until the bucket holds its bytes (or, for a chunk larger than
//! the burst, a full bucket, which it then overdraws), so the long-run rate is
//! the configured one whatever the chunk size. The burst is one second's worth
//! of bytes: a stream that was idle sends at most that much at once. Rate 0
//! means unlimited.
//!
//! [`Bucket`] is the pure arithmetic (no clock, no lock), tested with explicit
//! instants; [`TokenBucket`] wraps it for concurrent async callers. Hand-written
//! rather than `governor`: we need byte-sized costs larger than the burst, a
//! rate changed under waiting callers, and nothing else; `governor` brings its
//! own clock abstraction and several dependencies for that.

use std::sync::Mutex;
use std::time::Duration;

use tokio::sync::Notify;
use tokio::time::Instant;

const NANOS_PER_SEC: i128 = 1_000_000_000;

/// Token bucket state. Tokens are kept in byte-nanoseconds-per-second units
/// (bytes x 10^9) so refills and waits are exact integers.
#[derive(Debug, Clone)]
pub struct Bucket {
    /// Bytes per second; 0 = unlimited.
    rate_bytes_per_sec: u64,
    /// bytes x 10^9; negative while a chunk larger than the burst is paid off.
    tokens: i128,
    last: Instant,
}

impl Bucket {
    /// A full bucket.
    pub fn new(rate_bytes_per_sec: u64, now: Instant) -> Self {
        Self { rate_bytes_per_sec, tokens: Self::burst_of(rate_bytes_per_sec), last: now }
    }

    fn burst_of(rate: u64) -> i128 {
        // One second's worth.
        rate as i128 * NANOS_PER_SEC
    }

    pub fn rate_bytes_per_sec(&self) -> u64 {
        self.rate_bytes_per_sec
    }

    /// Whole bytes available now (negative while overdrawn).
    pub fn available_bytes(&mut self, now: Instant) -> i64 {
        self.refill(now);
        (self.tokens / NANOS_PER_SEC) as i64
    }

    fn refill(&mut self, now: Instant) {
        let elapsed = now.saturating_duration_since(self.last);
        self.last = now.max(self.last);
        if self.rate_bytes_per_sec == 0 {
            return;
        }
        let added = elapsed.as_nanos() as i128 * self.rate_bytes_per_sec as i128;
        self.tokens = (self.tokens + added).min(Self::burst_of(self.rate_bytes_per_sec));
    }

    /// Takes `bytes` if the bucket holds them (a chunk larger than the burst
    /// needs a full bucket and overdraws it); otherwise returns how long until
    /// it will, at the current rate.
    pub fn try_take(&mut self, bytes: u64, now: Instant) -> Result<(), Duration> {
        self.refill(now);
        if self.rate_bytes_per_sec == 0 {
            return Ok(());
        }
        let burst = Self::burst_of(self.rate_bytes_per_sec);
        let cost = bytes as i128 * NANOS_PER_SEC;
        let needed = cost.min(burst);
        if self.tokens >= needed {
            self.tokens -= cost;
            return Ok(());
        }
        let missing = needed - self.tokens;
        let rate = self.rate_bytes_per_sec as i128;
        // Round up, so that after the wait the tokens are there.
        let nanos = (missing + rate - 1) / rate;
        Err(Duration::from_nanos(u64::try_from(nanos).unwrap_or(u64::MAX)))
    }

    /// Changes the rate from `now` on. Tokens earned so far count at the old
    /// rate, then are capped at the new burst; from unlimited, the bucket
    /// starts full.
    pub fn set_rate(&mut self, rate_bytes_per_sec: u64, now: Instant) {
        self.refill(now);
        if self.rate_bytes_per_sec == 0 {
            self.tokens = Self::burst_of(rate_bytes_per_sec);
        }
        self.rate_bytes_per_sec = rate_bytes_per_sec;
        self.tokens = self.tokens.min(Self::burst_of(rate_bytes_per_sec));
    }
}

/// A [`Bucket`] shared by concurrent async callers.
#[derive(Debug)]
pub struct TokenBucket {
    // A plain mutex: held only for the arithmetic, never across an await.
    state: Mutex<Bucket>,
    /// Wakes waiters when the rate changes, so a raised (or removed) limit
    /// applies to chunks already waiting.
    changed: Notify,
}

impl TokenBucket {
    pub fn new(rate_bytes_per_sec: u64) -> Self {
        Self { state: Mutex::new(Bucket::new(rate_bytes_per_sec, Instant::now())), changed: Notify::new() }
    }

    pub fn rate_bytes_per_sec(&self) -> u64 {
        self.state.lock().expect("token bucket lock").rate_bytes_per_sec()
    }

    /// Sets the rate (0 = unlimited) for every stream, waiting ones included.
    /// Returns whether it changed.
    pub fn set_rate(&self, rate_bytes_per_sec: u64) -> bool {
        let changed = {
            let mut b = self.state.lock().expect("token bucket lock");
            let changed = b.rate_bytes_per_sec() != rate_bytes_per_sec;
            if changed {
                b.set_rate(rate_bytes_per_sec, Instant::now());
            }
            changed
        };
        if changed {
            self.changed.notify_waiters();
        }
        changed
    }

    /// Waits until `bytes` may be sent and takes them; returns how long it
    /// waited (zero when it did not). Cancellation-safe: tokens are taken only
    /// when it returns.
    pub async fn acquire(&self, bytes: u64) -> Duration {
        let started = Instant::now();
        let mut waited = false;
        loop {
            // Registered before the state is read, so a rate change between
            // the two still wakes this caller.
            let changed = self.changed.notified();
            let wait = match self.state.lock().expect("token bucket lock").try_take(bytes, Instant::now()) {
                Ok(()) if waited => return started.elapsed(),
                Ok(()) => return Duration::ZERO,
                Err(wait) => wait,
            };
            waited = true;
            tokio::select! {
                _ = tokio::time::sleep(wait) => {}
                _ = changed => {}
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    #[test]
    fn starts_full_then_refills_at_the_rate() {
        let t0 = Instant::now();
        let mut b = Bucket::new(1000, t0);
        assert_eq!(b.try_take(1000, t0), Ok(()));
        assert_eq!(b.try_take(500, t0), Err(ms(500)));
        assert_eq!(b.try_take(500, t0 + ms(499)), Err(ms(1)));
        assert_eq!(b.try_take(500, t0 + ms(500)), Ok(()));
        assert_eq!(b.available_bytes(t0 + ms(500)), 0);
    }

    #[test]
    fn burst_is_one_second_worth() {
        let t0 = Instant::now();
        let mut b = Bucket::new(1000, t0);
        // A long idle period does not save up more than the burst.
        assert_eq!(b.available_bytes(t0 + Duration::from_secs(3600)), 1000);
        let t1 = t0 + Duration::from_secs(3600);
        assert_eq!(b.try_take(1000, t1), Ok(()));
        assert!(b.try_take(1, t1).is_err());
    }

    #[test]
    fn long_run_rate_is_the_configured_one() {
        // 100 chunks of 100 bytes at 1000 B/s from a full bucket of 1000: the
        // first 10 go at once, the other 90 take 9 s.
        let t0 = Instant::now();
        let mut b = Bucket::new(1000, t0);
        let mut now = t0;
        for _ in 0..100 {
            loop {
                match b.try_take(100, now) {
                    Ok(()) => break,
                    Err(wait) => now += wait,
                }
            }
        }
        assert_eq!(now - t0, Duration::from_secs(9));
    }

    #[test]
    fn a_chunk_larger_than_the_burst_overdraws_and_is_paid_back() {
        let t0 = Instant::now();
        let mut b = Bucket::new(100, t0);
        // 1000 bytes at 100 B/s: it goes with a full bucket, leaving a 900 B debt.
        assert_eq!(b.try_take(1000, t0), Ok(()));
        assert_eq!(b.available_bytes(t0), -900);
        // The next byte waits for the debt plus itself: 9.01 s.
        assert_eq!(b.try_take(1, t0), Err(ms(9010)));
        assert_eq!(b.try_take(1, t0 + ms(9010)), Ok(()));
    }

    #[test]
    fn zero_is_unlimited_and_rates_change_at_run_time() {
        let t0 = Instant::now();
        let mut b = Bucket::new(0, t0);
        for _ in 0..1000 {
            assert_eq!(b.try_take(u32::MAX as u64, t0), Ok(()));
        }
        // From unlimited to limited: a full bucket at the new rate.
        b.set_rate(10, t0);
        assert_eq!(b.try_take(10, t0), Ok(()));
        assert_eq!(b.try_take(10, t0), Err(Duration::from_secs(1)));
        // Tokens earned before the change count at the old rate; then faster.
        b.set_rate(1000, t0 + ms(500));
        assert_eq!(b.available_bytes(t0 + ms(500)), 5);
        assert_eq!(b.try_take(10, t0 + ms(500)), Err(ms(5)));
        // Lowered: capped at the new burst.
        b.set_rate(2, t0 + Duration::from_secs(10));
        assert_eq!(b.available_bytes(t0 + Duration::from_secs(10)), 2);
        b.set_rate(0, t0 + Duration::from_secs(10));
        assert_eq!(b.try_take(1 << 40, t0 + Duration::from_secs(10)), Ok(()));
    }

    #[tokio::test]
    async fn unlimited_never_waits() {
        let bucket = TokenBucket::new(0);
        for _ in 0..100 {
            assert_eq!(bucket.acquire(1 << 30).await, Duration::ZERO);
        }
    }

    #[tokio::test]
    async fn a_waiting_chunk_follows_a_rate_change() {
        let bucket = std::sync::Arc::new(TokenBucket::new(1));
        assert_eq!(bucket.acquire(1).await, Duration::ZERO);
        // At 1 B/s this would wait about 11 days.
        let waiter = tokio::spawn({
            let bucket = bucket.clone();
            async move { bucket.acquire(1_000_000).await }
        });
        tokio::task::yield_now().await;
        assert!(!waiter.is_finished());
        assert!(bucket.set_rate(0));
        assert!(!bucket.set_rate(0), "unchanged rate");
        // Liveness only: the timeout guards against a hang, it measures nothing.
        tokio::time::timeout(Duration::from_secs(30), waiter).await.expect("woken").expect("no panic");
        assert_eq!(bucket.rate_bytes_per_sec(), 0);
    }
}
