//! The redb tables of a node's one database file, and the records stored in them.
//!
//! Layout (every shard's state lives in the same file):
//! - `raft_log`: (shard, index) -> sealed openraft entry (opaque bytes here).
//! - `raft_meta`: (shard, name) -> sealed bytes; names are [`META_VOTE`],
//!   [`META_COMMITTED`], [`META_PURGED`].
//! - `shards`: shard -> sealed [`ShardRecord`]: descriptor, applied log id,
//!   membership and the `data_id` under which the shard's documents live.
//! - `docs`: (data_id, user key) -> sealed [`StoredDoc`], or its first bytes
//!   when it is too big for one page, the rest in `doc_tails`: (data_id, user
//!   key, part) -> the next bytes (see [`super::docs`]).
//! - `sessions`: (data_id, client, seq) -> sealed response, and
//!   `session_clients`: (data_id, client) -> last seen (ms).
//! - `data_gc`: data_id -> [`GC_STAGING`] or [`GC_GARBAGE`].
//! - `node_meta`: name -> sealed bytes (node identity, bootstrap record).
//! - `tombstones`: shard -> sealed [`Tombstone`]: a replica of that shard was
//!   destroyed here at that `conf_ver`; creating one again needs a newer one.
//!
//! Documents are keyed by a `data_id` rather than the shard id so that a
//! received snapshot can be written across many small transactions into a fresh
//! `data_id` and switched in with one atomic update of the shard record; the old
//! `data_id` is then deleted in the background in bounded batches.

use cairn_proto::{ShardDescriptor, ShardId};
use redb::TableDefinition;
use serde::{Deserialize, Serialize};

pub const RAFT_LOG: TableDefinition<(u64, u64), &[u8]> = TableDefinition::new("raft_log");
pub const RAFT_META: TableDefinition<(u64, &str), &[u8]> = TableDefinition::new("raft_meta");
pub const SHARDS: TableDefinition<u64, &[u8]> = TableDefinition::new("shards");
pub const DOCS: TableDefinition<(u64, &[u8]), &[u8]> = TableDefinition::new("docs");
pub const DOC_TAILS: TableDefinition<(u64, &[u8], u32), &[u8]> = TableDefinition::new("doc_tails");
pub const SESSIONS: TableDefinition<(u64, u64, u64), &[u8]> = TableDefinition::new("sessions");
pub const SESSION_CLIENTS: TableDefinition<(u64, u64), u64> = TableDefinition::new("session_clients");
pub const DATA_GC: TableDefinition<u64, u8> = TableDefinition::new("data_gc");
pub const NODE_META: TableDefinition<&str, &[u8]> = TableDefinition::new("node_meta");
pub const TOMBSTONES: TableDefinition<u64, &[u8]> = TableDefinition::new("tombstones");

pub const META_VOTE: &str = "vote";
pub const META_COMMITTED: &str = "committed";
pub const META_PURGED: &str = "purged";

/// `node_meta` key of the [`NodeRecord`].
pub const NODE_RECORD: &str = "node";
/// `node_meta` key of the next unused data id (u64, bincode).
pub const NEXT_DATA_ID: &str = "next_data_id";

/// A data id being filled by an incoming snapshot; garbage if the node restarts first.
pub const GC_STAGING: u8 = 1;
/// A data id no shard refers to any more; deleted in the background.
pub const GC_GARBAGE: u8 = 2;

/// A document as stored: the value plus the metadata the API returns.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct StoredDoc {
    pub version: u64,
    pub created_at_ms: u64,
    pub updated_at_ms: u64,
    #[serde(with = "serde_bytes")]
    pub value: Vec<u8>,
}

/// A [`StoredDoc`] decoded in place, to verify one without copying its value.
#[derive(Debug, Deserialize)]
pub struct StoredDocRef<'a> {
    pub version: u64,
    pub created_at_ms: u64,
    pub updated_at_ms: u64,
    #[serde(borrow)]
    pub value: &'a [u8],
}

/// The persistent state of one hosted replica, updated atomically with every
/// apply (so documents and `applied` never disagree).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ShardRecord {
    pub descriptor: ShardDescriptor,
    pub data_id: u64,
    /// Index of the last applied log entry (0 before the first apply).
    pub applied_index: u64,
    /// The openraft log id of the last applied entry, opaque here.
    pub applied_log_id: Option<Vec<u8>>,
    /// The openraft stored membership as of `applied_log_id`, opaque here.
    pub membership: Option<Vec<u8>>,
    /// Documents and their bytes as of `applied_index`.
    pub stats: DataStats,
}

/// Size of a shard's documents, kept exact by every apply and carried by
/// snapshots, so heartbeats report it without scanning.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct DataStats {
    pub key_count: u64,
    /// Keys plus values, in bytes.
    pub size_bytes: u64,
}

impl DataStats {
    pub fn add(&mut self, key: &[u8], value: &[u8]) {
        self.key_count += 1;
        self.size_bytes += (key.len() + value.len()) as u64;
    }

    pub fn remove(&mut self, key: &[u8], value: &[u8]) {
        self.key_count = self.key_count.saturating_sub(1);
        self.size_bytes = self.size_bytes.saturating_sub((key.len() + value.len()) as u64);
    }
}

/// The shard state a snapshot carries besides its records (header `shard_state`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SnapshotShardState {
    pub descriptor: ShardDescriptor,
    pub stats: DataStats,
}

impl ShardRecord {
    pub fn shard(&self) -> ShardId {
        self.descriptor.id
    }
}

/// Who this node is, written once when its data directory is created.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeRecord {
    pub node_id: u64,
    /// The cluster the node registered with (0 until known: PD members learn
    /// it from the PD they bootstrap).
    pub cluster_id: u64,
    /// Unix ms when the data directory was initialised.
    pub created_at_ms: u64,
    /// PD members: whether the PD group (shard 0) has been created and initialised.
    pub bootstrapped: bool,
}

/// What is left of a destroyed replica: the configuration version it was
/// destroyed at. Written in the transaction that deletes the replica's record
/// and only ever raised, so it stays a lower bound for any replica of the shard
/// this node may host again: a stale `CreateReplica` / `JoinReplica` (or one
/// re-sent after the destroy) names a `conf_ver` at or below it and is refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Tombstone {
    pub conf_ver: u64,
    /// Unix ms of the (latest) destroy, for operators reading the database.
    pub destroyed_at_ms: u64,
}
