//! Hosted shard replicas and the KV operations served on them.
//!
//! - [`registry`]: ShardId -> replica, created and destroyed at run time.
//! - [`kv`]: request checks (route, epoch, range, limits, JSON) and the read and
//!   write paths.

pub mod kv;
pub mod registry;

pub use registry::{Registry, Replica};
