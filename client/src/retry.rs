//! Retry decisions: what to do after a failed attempt, and how long to wait.
//!
//! Pure functions only; [`crate::DirectClient`] ([`retry_action`]) and [`crate::Client`]
//! ([`plan_retry`]) execute what they decide.
//!
//! Invariant: only errors that cannot have been caused by the request itself are retried
//! (`ApiError::is_retryable`); a retried write is safe because it keeps its session
//! sequence number (see [`crate::session`]).

use std::time::Duration;

use cairn_proto::{ApiError, NodeId, ShardDescriptor};
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

/// What [`crate::Client`] does about the cached leader of the shard after a failed attempt.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum LeaderUpdate {
    Keep,
    /// Record this leader hint.
    Note {
        leader: NodeId,
        addr: String,
    },
    /// Forget the cached leader, so the next attempt asks the replicas.
    Forget,
}

/// Whether [`crate::Client`] waits a backoff delay before the next attempt.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Wait {
    /// Retry at once (a leader hint to follow).
    No,
    /// Wait: the failure is transient (an election, an overloaded or stepping-down node).
    Backoff,
    /// Wait only if the next attempt would go to the same shard epoch at the same address
    /// as the failed one: a new route or another replica is worth trying at once.
    IfUnchanged,
}

/// How [`crate::Client`] recovers from a failed attempt: the commands it executes against
/// its shard map, the placement driver and the clock before the next attempt.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RetryPlan {
    pub leader: LeaderUpdate,
    /// A descriptor the node returned, installed if newer than the cached one.
    pub install: Option<ShardDescriptor>,
    /// Send the next attempt to another replica if the shard has one.
    pub avoid_target: bool,
    /// Ask the placement driver for the current route of the keys.
    pub refresh_from_pd: bool,
    pub wait: Wait,
}

/// The decision after a failed attempt of [`crate::Client`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RetryDecision {
    /// Retrying cannot help: return the error.
    Fail,
    Retry(RetryPlan),
}

/// Decides how to recover from `err`, returned by the node at `target`. `previous_failure`
/// is the address the attempt before this one failed on with a node-level error (down,
/// no replica, deadline), if any.
///
/// - `NOT_LEADER` with a hint: follow it at once; after a backoff if the hint names the
///   node that just failed (it may be back, or its followers may not have noticed yet), or
///   the node itself (it is stepping down).
/// - `NOT_LEADER` without a hint: an election is under way; forget the leader, ask another
///   replica after a backoff.
/// - `EPOCH_MISMATCH` / `KEY_NOT_IN_SHARD`: install the node's current descriptor and ask
///   the PD; retry at once if that changed the route.
/// - `SHARD_NOT_FOUND` / `UNAVAILABLE`: the node cannot serve the shard; forget it as
///   leader, ask the PD, and try another replica at once.
/// - `DEADLINE_EXCEEDED`: as `UNAVAILABLE`, but always after a backoff (the node may be
///   overloaded).
/// - Anything else is the caller's error: fail.
pub fn plan_retry(err: &ApiError, target: &str, previous_failure: Option<&str>) -> RetryDecision {
    let plan = |leader, install, avoid_target, refresh_from_pd, wait| {
        RetryDecision::Retry(RetryPlan { leader, install, avoid_target, refresh_from_pd, wait })
    };
    match err {
        ApiError::NotLeader { leader: Some((leader, addr)), .. } if !addr.is_empty() => {
            if addr == target {
                plan(LeaderUpdate::Forget, None, true, true, Wait::Backoff)
            } else {
                let note = LeaderUpdate::Note { leader: *leader, addr: addr.clone() };
                let wait = if previous_failure == Some(addr.as_str()) { Wait::Backoff } else { Wait::No };
                plan(note, None, false, false, wait)
            }
        }
        ApiError::NotLeader { .. } => plan(LeaderUpdate::Forget, None, true, false, Wait::Backoff),
        ApiError::EpochMismatch { current } | ApiError::KeyNotInShard { current } => {
            plan(LeaderUpdate::Keep, Some(current.clone()), false, true, Wait::IfUnchanged)
        }
        ApiError::ShardNotFound { .. } | ApiError::Unavailable(_) => {
            plan(LeaderUpdate::Forget, None, true, true, Wait::IfUnchanged)
        }
        ApiError::DeadlineExceeded(_) => plan(LeaderUpdate::Forget, None, true, true, Wait::Backoff),
        ApiError::InvalidArgument(_)
        | ApiError::TooLarge(_)
        | ApiError::ConditionFailed { .. }
        | ApiError::Internal(_) => RetryDecision::Fail,
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
    use cairn_proto::ShardId;
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

    fn retry(err: &ApiError, target: &str, previous: Option<&str>) -> RetryPlan {
        match plan_retry(err, target, previous) {
            RetryDecision::Retry(plan) => plan,
            RetryDecision::Fail => panic!("{err:?} must be retried"),
        }
    }

    #[test]
    fn plans_follow_hints_at_once_unless_they_point_back() {
        let hint = ApiError::NotLeader { shard: ShardId(1), leader: Some((NodeId(2), "n2:1".into())) };
        let p = retry(&hint, "n1:1", None);
        assert_eq!(p.leader, LeaderUpdate::Note { leader: NodeId(2), addr: "n2:1".into() });
        assert_eq!((p.wait, p.avoid_target, p.refresh_from_pd), (Wait::No, false, false));
        // The hinted node is the one that just failed: follow it, but not in a hot loop.
        let p = retry(&hint, "n1:1", Some("n2:1"));
        assert_eq!(p.wait, Wait::Backoff);
        assert!(matches!(p.leader, LeaderUpdate::Note { .. }));
        // A node naming itself while refusing to lead is stepping down.
        let p = retry(&hint, "n2:1", None);
        assert_eq!(
            (p.leader, p.avoid_target, p.refresh_from_pd, p.wait),
            (LeaderUpdate::Forget, true, true, Wait::Backoff)
        );
        // No usable hint: an election; ask another replica after a backoff.
        for err in [
            ApiError::NotLeader { shard: ShardId(1), leader: None },
            ApiError::NotLeader { shard: ShardId(1), leader: Some((NodeId(2), String::new())) },
        ] {
            let p = retry(&err, "n1:1", None);
            assert_eq!((p.leader, p.avoid_target, p.wait), (LeaderUpdate::Forget, true, Wait::Backoff));
        }
    }

    #[test]
    fn plans_refresh_stale_routes_and_leave_failed_nodes() {
        let current = ShardDescriptor { id: ShardId(4), ..Default::default() };
        for err in
            [ApiError::EpochMismatch { current: current.clone() }, ApiError::KeyNotInShard { current: current.clone() }]
        {
            let p = retry(&err, "n1:1", None);
            assert_eq!(p.install.as_ref(), Some(&current));
            assert_eq!(
                (p.leader, p.refresh_from_pd, p.avoid_target, p.wait),
                (LeaderUpdate::Keep, true, false, Wait::IfUnchanged)
            );
        }
        for err in [ApiError::ShardNotFound { shard: ShardId(4) }, ApiError::Unavailable("down".into())] {
            let p = retry(&err, "n1:1", None);
            assert_eq!(
                (p.leader, p.refresh_from_pd, p.avoid_target, p.wait),
                (LeaderUpdate::Forget, true, true, Wait::IfUnchanged)
            );
            assert_eq!(p.install, None);
        }
        let p = retry(&ApiError::DeadlineExceeded("slow".into()), "n1:1", None);
        assert_eq!((p.avoid_target, p.wait), (true, Wait::Backoff));
        for err in [
            ApiError::ConditionFailed { current_version: 1 },
            ApiError::InvalidArgument("x".into()),
            ApiError::TooLarge("x".into()),
            ApiError::Internal("x".into()),
        ] {
            assert_eq!(plan_retry(&err, "n1:1", None), RetryDecision::Fail, "{err:?}");
            assert!(!err.is_retryable());
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
