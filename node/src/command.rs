//! The commands a shard's Raft log carries and the results of applying them.
//!
//! A command is decided on the leader (timestamp, session, routed epoch) and
//! applied identically on every replica: nothing in [`crate::storage::apply`]
//! may read a clock or any other local state outside the database.

use cairn_proto::Session;
use serde::{Deserialize, Serialize};

/// One entry of application data in a shard's Raft log.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ShardCommand {
    /// Exactly-once session of the client that issued the write.
    pub session: Session,
    /// The leader's wall clock (Unix ms) when it proposed the command; the
    /// documents' created/updated times and session expiry use it, so every
    /// replica computes the same values.
    pub ts_ms: u64,
    /// The range version the request was routed with; re-checked at apply time
    /// so that a range change ordered before this command in the log wins.
    pub range_version: u64,
    pub op: KvWrite,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum KvWrite {
    Put {
        #[serde(with = "serde_bytes")]
        key: Vec<u8>,
        #[serde(with = "serde_bytes")]
        value: Vec<u8>,
        expected_version: Option<u64>,
    },
    Delete {
        #[serde(with = "serde_bytes")]
        key: Vec<u8>,
        expected_version: Option<u64>,
    },
    /// All items are written atomically at one log index, or none is.
    BatchPut {
        #[serde(with = "crate::storage::codec::byte_pairs")]
        items: Vec<(Vec<u8>, Vec<u8>)>,
    },
    /// If every compare holds, every op is applied atomically at one log index
    /// (etcd's Txn without the else branch). Used by the placement driver.
    Txn {
        /// (key, expected version); 0 = the key must not exist.
        compares: Vec<(Vec<u8>, u64)>,
        ops: Vec<TxnOp>,
    },
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum TxnOp {
    Put {
        #[serde(with = "serde_bytes")]
        key: Vec<u8>,
        #[serde(with = "serde_bytes")]
        value: Vec<u8>,
    },
    Delete {
        #[serde(with = "serde_bytes")]
        key: Vec<u8>,
    },
}

impl TxnOp {
    pub fn key(&self) -> &[u8] {
        match self {
            TxnOp::Put { key, .. } | TxnOp::Delete { key } => key,
        }
    }
}

impl KvWrite {
    pub fn keys(&self) -> Vec<&[u8]> {
        match self {
            KvWrite::Put { key, .. } | KvWrite::Delete { key, .. } => vec![key.as_slice()],
            KvWrite::BatchPut { items } => items.iter().map(|(k, _)| k.as_slice()).collect(),
            KvWrite::Txn { compares, ops } => {
                compares.iter().map(|(k, _)| k.as_slice()).chain(ops.iter().map(TxnOp::key)).collect()
            }
        }
    }
}

/// The outcome of applying one log entry.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, Default)]
pub enum CommandResponse {
    /// A blank or membership entry.
    #[default]
    Noop,
    Put {
        version: u64,
    },
    Delete {
        deleted: bool,
        version: u64,
    },
    BatchPut {
        version: u64,
    },
    Txn {
        version: u64,
    },
    ConditionFailed {
        current_version: u64,
    },
    /// The shard's range changed after the request was routed.
    EpochMismatch,
    /// A key is outside the shard's range as of this log index.
    KeyNotInShard,
}

impl CommandResponse {
    /// Whether a client retrying with the same session sequence number must see
    /// this same response again. Routing rejections are not remembered: the
    /// client refreshes its route and retries the write, which must then run.
    pub fn is_final(&self) -> bool {
        !matches!(self, CommandResponse::EpochMismatch | CommandResponse::KeyNotInShard)
    }
}

impl std::fmt::Display for ShardCommand {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let (op, keys) = match &self.op {
            KvWrite::Put { .. } => ("put", 1),
            KvWrite::Delete { .. } => ("delete", 1),
            KvWrite::BatchPut { items } => ("batch_put", items.len()),
            KvWrite::Txn { ops, .. } => ("txn", ops.len()),
        };
        write!(f, "{op}(keys={keys}, client={}, seq={})", self.session.client_id, self.session.seq)
    }
}

impl std::fmt::Display for CommandResponse {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{self:?}")
    }
}
