//! Retry decisions: what to do after a failed attempt, and how long to wait.
//!
//! Pure functions only; [`crate::DirectClient`] executes what they decide.
//!
//! Invariant: only errors that cannot have been caused by the request itself are retried
//! (`ApiError::is_retryable`); a retried write is safe because it keeps its session
//! sequence number (see [`crate::session`]).

use std::time::Duration;

use cairn_proto::{ApiError, NodeId};
use rand::Rng;

/// What the router does after an attempt failed with a given error.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RetryAction {
    /// Another node leads the shard: send the next attempt there, without waiting.
    Redirect { leader: NodeId, addr: String },
    /// A transient failure (no known leader, node down, deadline): forget the cached
    /// leader, wait a backoff delay, and try again.
    Backoff,
    /// The cached route is stale: refresh the shard list, then try again.
    Refresh,
    /// Retrying cannot help: return the error to the caller.
    Fail,
}

/// Classifies an attempt's error.
pub fn retry_action(err: &ApiError) -> RetryAction {
    match err {
        ApiError::NotLeader { leader: Some((leader, addr)), .. } if !addr.is_empty() => {
            RetryAction::Redirect { leader: *leader, addr: addr.clone() }
        }
        ApiError::NotLeader { .. } | ApiError::Unavailable(_) | ApiError::DeadlineExceeded(_) => RetryAction::Backoff,
        ApiError::EpochMismatch { .. } | ApiError::KeyNotInShard { .. } | ApiError::ShardNotFound { .. } => {
            RetryAction::Refresh
        }
        ApiError::InvalidArgument(_)
        | ApiError::TooLarge(_)
        | ApiError::ConditionFailed { .. }
        | ApiError::Internal(_) => RetryAction::Fail,
    }
}

/// The delay before retry number `attempt` (0-based): exponential from `base`, capped at
/// `cap`, with "equal jitter" (a uniform draw from the upper half of the delay), so
/// clients that failed together do not retry together, yet never retry instantly.
pub fn backoff_delay(attempt: u32, base: Duration, cap: Duration, rng: &mut impl Rng) -> Duration {
    // 2^20 times any sane base is far above any sane cap; the clamp only avoids overflow.
    let factor = 1u32 << attempt.min(20);
    let full = base.saturating_mul(factor).min(cap);
    let full_ns = u64::try_from(full.as_nanos()).unwrap_or(u64::MAX);
    let half_ns = full_ns / 2;
    Duration::from_nanos(half_ns + rng.random_range(0..=full_ns - half_ns))
}

#[cfg(test)]
mod tests {
    use super::*;
    use cairn_proto::{ShardDescriptor, ShardId};
    use rand::SeedableRng;
    use rand::rngs::StdRng;

    #[test]
    fn classifies_every_error() {
        let shard = ShardId(1);
        assert_eq!(
            retry_action(&ApiError::NotLeader { shard, leader: Some((NodeId(2), "h:1".into())) }),
            RetryAction::Redirect { leader: NodeId(2), addr: "h:1".into() }
        );
        // A hint without an address cannot be followed.
        assert_eq!(
            retry_action(&ApiError::NotLeader { shard, leader: Some((NodeId(2), String::new())) }),
            RetryAction::Backoff
        );
        assert_eq!(retry_action(&ApiError::NotLeader { shard, leader: None }), RetryAction::Backoff);
        assert_eq!(retry_action(&ApiError::Unavailable("x".into())), RetryAction::Backoff);
        assert_eq!(retry_action(&ApiError::DeadlineExceeded("x".into())), RetryAction::Backoff);
        let current = ShardDescriptor::default();
        assert_eq!(retry_action(&ApiError::EpochMismatch { current: current.clone() }), RetryAction::Refresh);
        assert_eq!(retry_action(&ApiError::KeyNotInShard { current }), RetryAction::Refresh);
        assert_eq!(retry_action(&ApiError::ShardNotFound { shard }), RetryAction::Refresh);
        assert_eq!(retry_action(&ApiError::ConditionFailed { current_version: 3 }), RetryAction::Fail);
        assert_eq!(retry_action(&ApiError::InvalidArgument("x".into())), RetryAction::Fail);
        assert_eq!(retry_action(&ApiError::TooLarge("x".into())), RetryAction::Fail);
        assert_eq!(retry_action(&ApiError::Internal("x".into())), RetryAction::Fail);
    }

    #[test]
    fn retried_errors_are_exactly_the_retryable_ones() {
        let errors = [
            ApiError::NotLeader { shard: ShardId(1), leader: None },
            ApiError::ShardNotFound { shard: ShardId(1) },
            ApiError::Unavailable("x".into()),
            ApiError::ConditionFailed { current_version: 1 },
            ApiError::Internal("x".into()),
        ];
        for e in errors {
            assert_eq!(retry_action(&e) != RetryAction::Fail, e.is_retryable(), "{e:?}");
        }
    }

    #[test]
    fn backoff_grows_is_jittered_and_capped() {
        let base = Duration::from_millis(50);
        let cap = Duration::from_secs(1);
        let mut rng = StdRng::seed_from_u64(7);
        for attempt in 0..40 {
            let full = base.saturating_mul(1 << attempt.min(20)).min(cap);
            for _ in 0..50 {
                let d = backoff_delay(attempt, base, cap, &mut rng);
                assert!(d >= full / 2 && d <= full, "attempt {attempt}: {d:?} not in [{:?}, {full:?}]", full / 2);
            }
        }
        assert!(backoff_delay(0, base, cap, &mut rng) <= base);
        assert!(backoff_delay(u32::MAX, base, cap, &mut rng) <= cap);
        // Jitter: many draws at one attempt are not all equal.
        let draws: std::collections::BTreeSet<_> = (0..20).map(|_| backoff_delay(3, base, cap, &mut rng)).collect();
        assert!(draws.len() > 1);
    }
}
