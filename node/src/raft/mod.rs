//! Everything that knows openraft. The rest of the node sees [`RaftGroup`]
//! (one shard's Raft instance) and domain types; upgrading openraft should touch
//! this module only.
//!
//! - [`types`]: the type configuration and aliases.
//! - [`log_store`]: `RaftLogStorage` over the node's shared storage writer.
//! - [`state_machine`]: `RaftStateMachine` whose state is the shard's documents.
//! - [`network`]: openraft's network traits over the node's batched transport.
//! - [`group`]: the façade the KV and Raft services use.
//! - [`snapshot_recv`]: receiving a streamed snapshot and installing it.

pub mod group;
pub mod log_store;
pub mod network;
pub mod runtime;
pub mod snapshot_recv;
pub mod state_machine;
pub mod types;

pub use group::{
    GroupError, GroupStatus, LeaderView, MembershipSummary, RaftGroup, RaftSettings, ReadPolicyKind,
    SNAPSHOT_DEFER_FACTOR, snapshot_due,
};
