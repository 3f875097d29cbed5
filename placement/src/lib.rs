//! `cairn-placement`: the placement driver (PD) as data and pure functions.
//!
//! The PD's state lives in a replicated, transactional key space (shard 0 of
//! the cluster, hosted by the PD members; see `docs/rfcs/002-placement-driver.md`).
//! This crate knows nothing of Raft, gRPC or time sources:
//! - [`model`]: the stored records (cluster, nodes, shards, events), their keys,
//!   and [`model::PdState`], the PD's state as loaded from those keys.
//! - [`observed`]: what the PD leader learned from heartbeats (leaders, sizes,
//!   liveness). Kept in memory only; a new PD leader rebuilds it within one
//!   heartbeat interval.
//! - [`decide`]: functions `(state, observed, input, now) -> (answer, Writes)`:
//!   bootstrap, node registration, heartbeats, initial shard creation, and the
//!   read-only views (routing, cluster status).
//! - [`operator`]: the next step of an operator (replica move, addition,
//!   removal, leader transfer) from the shard's observed state; commands for
//!   nodes; finishing and rolling back.
//! - [`schedule`]: the scheduler (repair, replication factor, drain, replica
//!   and leader balance) and the rebalance status.
//! - [`admin`]: settings, hand-made operators, node drain/remove.
//!
//! Invariants:
//! - Only the PD writes the shard map; nodes report what they observe.
//! - Every change is a [`model::Writes`] applied atomically by the runtime with
//!   compare-on-version of every key it touches, so a stale PD leader's writes
//!   fail instead of overwriting a newer leader's.
//! - Decisions are deterministic given their inputs (time is a parameter).

pub mod admin;
pub mod decide;
pub mod model;
pub mod observed;
pub mod operator;
pub mod schedule;

pub use decide::*;
pub use model::{PdState, Writes};
pub use observed::Observed;
