//! Client sessions for exactly-once writes (Raft dissertation, section 6.3).
//!
//! Invariants:
//! - `client_id` is random and non-zero (zero turns deduplication off on the server).
//! - Every logical write gets one sequence number, allocated once and kept across all of
//!   its retries, so the server can recognise a retry of a write it already applied.
//! - `acked_below` is the smallest sequence number still in flight (or the next one to be
//!   allocated when none is): every number below it has been answered or abandoned and
//!   will never be sent again, so the server may forget it.

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, PoisonError};

use cairn_proto::Session;

/// Allocates sequence numbers for one client and tracks which are in flight.
#[derive(Debug)]
pub struct SessionTracker {
    client_id: u64,
    next_seq: AtomicU64,
    // Only ever locked for a few set operations, never across an await.
    in_flight: Mutex<BTreeSet<u64>>,
}

impl SessionTracker {
    /// A tracker with a random non-zero client id.
    pub fn random() -> Self {
        Self::with_client_id(cairn_proto::sim::random_u64().max(1))
    }

    /// A tracker with the given client id (0 turns deduplication off).
    pub fn with_client_id(client_id: u64) -> Self {
        Self { client_id, next_seq: AtomicU64::new(1), in_flight: Mutex::new(BTreeSet::new()) }
    }

    /// This client's id.
    pub fn client_id(&self) -> u64 {
        self.client_id
    }

    /// Starts a logical write: allocates its sequence number and marks it in flight until
    /// the returned ticket is dropped.
    pub fn begin(&self) -> WriteTicket<'_> {
        // The lock is taken before allocating so that `acked_below`, computed under the same
        // lock, can never pass a number that is allocated but not yet recorded.
        let mut in_flight = self.in_flight.lock().unwrap_or_else(PoisonError::into_inner);
        let seq = self.next_seq.fetch_add(1, Ordering::Relaxed);
        in_flight.insert(seq);
        WriteTicket { tracker: self, seq }
    }

    /// The session to send for an attempt of the write holding sequence number `seq`.
    pub fn session(&self, seq: u64) -> Session {
        let in_flight = self.in_flight.lock().unwrap_or_else(PoisonError::into_inner);
        let next = self.next_seq.load(Ordering::Relaxed);
        Session { client_id: self.client_id, seq, acked_below: acked_below(&in_flight, next) }
    }

    fn finish(&self, seq: u64) {
        self.in_flight.lock().unwrap_or_else(PoisonError::into_inner).remove(&seq);
    }
}

/// The smallest sequence number still in flight, or `next_seq` when none is.
pub fn acked_below(in_flight: &BTreeSet<u64>, next_seq: u64) -> u64 {
    in_flight.first().copied().unwrap_or(next_seq)
}

/// One logical write in flight. Dropping it (on success, final failure or cancellation)
/// tells the server, through later sessions, that its number will not be sent again.
#[derive(Debug)]
pub struct WriteTicket<'a> {
    tracker: &'a SessionTracker,
    seq: u64,
}

impl WriteTicket<'_> {
    /// The write's sequence number.
    pub fn seq(&self) -> u64 {
        self.seq
    }

    /// The session to send with the next attempt of this write.
    pub fn session(&self) -> Session {
        self.tracker.session(self.seq)
    }
}

impl Drop for WriteTicket<'_> {
    fn drop(&mut self) {
        self.tracker.finish(self.seq);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn random_client_id_is_non_zero() {
        for _ in 0..100 {
            assert_ne!(SessionTracker::random().client_id(), 0);
        }
    }

    #[test]
    fn acked_below_is_the_oldest_write_in_flight() {
        let t = SessionTracker::with_client_id(9);
        let a = t.begin();
        let b = t.begin();
        assert_eq!((a.seq(), b.seq()), (1, 2));
        assert_eq!(b.session(), Session { client_id: 9, seq: 2, acked_below: 1 });
        drop(a);
        assert_eq!(b.session().acked_below, 2);
        let c = t.begin();
        assert_eq!(c.session(), Session { client_id: 9, seq: 3, acked_below: 2 });
        drop(b);
        drop(c);
        assert_eq!(acked_below(&t.in_flight.lock().unwrap(), 4), 4);
        // A retry of the same write keeps its number.
        let d = t.begin();
        assert_eq!(d.session().seq, d.session().seq);
        assert_eq!(d.session().acked_below, 4);
    }

    #[test]
    fn acked_below_never_exceeds_a_seq_in_flight() {
        let t = SessionTracker::with_client_id(1);
        let tickets: Vec<_> = (0..10).map(|_| t.begin()).collect();
        for ticket in &tickets {
            let s = ticket.session();
            assert!(s.acked_below <= s.seq);
        }
    }
}
