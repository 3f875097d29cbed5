//! openraft type configuration for shard groups.

use crate::command::{CommandResponse, ShardCommand};

openraft::declare_raft_types!(
    /// Type configuration of every shard's Raft group.
    pub TypeConfig:
        D = ShardCommand,
        R = CommandResponse,
        NodeId = u64,
        Node = openraft::BasicNode,
        AsyncRuntime = super::runtime::CairnRuntime,
);

pub type Entry = openraft::Entry<
    openraft::type_config::alias::CommittedLeaderIdOf<TypeConfig>,
    openraft::EntryPayload<ShardCommand, u64, openraft::BasicNode>,
>;
pub type LogId = openraft::type_config::alias::LogIdOf<TypeConfig>;
pub type Vote = openraft::type_config::alias::VoteOf<TypeConfig>;
pub type StoredMembership = openraft::type_config::alias::StoredMembershipOf<TypeConfig>;
pub type SnapshotMeta = openraft::type_config::alias::SnapshotMetaOf<TypeConfig>;
pub type Snapshot = openraft::type_config::alias::SnapshotOf<TypeConfig, crate::storage::snapshot::SnapshotView>;
pub type Raft = openraft::Raft<TypeConfig, super::state_machine::StateMachine>;
