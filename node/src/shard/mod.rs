//! Hosted shard replicas and the KV operations served on them.
//!
//! - [`registry`]: ShardId -> replica, created and destroyed at run time.
//! - [`kv`]: request checks (route, epoch, range, limits, JSON) and the read and
//!   write paths.
//! - [`quiesce`]: idle groups sleep; a node-level failure detector wakes them.
//! - [`snapshots`]: when each group builds a snapshot (and purges its log).

pub mod kv;
pub mod quiesce;
pub mod registry;
pub mod snapshots;

pub use registry::{Registry, Replica};
