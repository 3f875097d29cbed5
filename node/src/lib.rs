//! `cairn-node`: the storage node. Hosts many shard replicas (one Raft group
//! each) over one redb database, serves the KV, Raft and Admin gRPC services,
//! and ships the `cairn` binary.
//!
//! Invariants:
//! - `openraft` is used only inside [`raft`]; everything else sees
//!   [`raft::ShardRaft`] and domain types.
//! - Generated protobuf types appear only in [`service`] (the gRPC edge).
//! - Only the storage writer writes the database ([`storage`]).

pub mod command;
pub mod config;
pub mod metrics;
pub mod node;
pub mod pd;
pub mod raft;
pub mod service;
pub mod shard;
pub mod storage;
pub mod test_hooks;
pub mod transport;

pub use config::NodeConfig;
pub use node::{Node, NodeError};
pub mod cli;
pub mod playground;
