//! The document state machine, executed by the writer inside its write
//! transaction: it sees its own earlier writes, so a batch of entries is applied
//! in log order with compare-and-set checks against the latest state.
//!
//! Everything here is deterministic: it depends only on the database and the
//! log entries (including the leader's timestamp carried by each command).

use cairn_proto::{KeyRange, ReplicaDescriptor};
use redb::{ReadableTable, WriteTransaction};

use super::StorageError;
use super::codec::{decode_sealed, encode_sealed};
use super::tables::*;
use crate::command::{CommandResponse, KvWrite, ShardCommand};

/// Session responses of a client idle this long are forgotten.
pub const SESSION_TTL_MS: u64 = 60 * 60 * 1000;
/// Expired sessions are swept whenever the applied index crosses a multiple of this.
pub const SESSION_SWEEP_EVERY_ENTRIES: u64 = 1024;

/// One log entry to apply, already stripped of its Raft envelope.
#[derive(Debug)]
pub enum ApplyItem {
    Command {
        index: u64,
        cmd: ShardCommand,
    },
    /// A blank entry.
    Noop {
        index: u64,
    },
    /// A membership entry: the shard's voters and learners from now on.
    Membership {
        index: u64,
        replicas: Vec<ReplicaDescriptor>,
    },
}

impl ApplyItem {
    pub fn index(&self) -> u64 {
        match self {
            ApplyItem::Command { index, .. } | ApplyItem::Noop { index } | ApplyItem::Membership { index, .. } => {
                *index
            }
        }
    }
}

/// A run of consecutive entries of one shard, with the Raft bookkeeping to
/// store atomically with their effects.
#[derive(Debug)]
pub struct ApplyBatch {
    pub items: Vec<ApplyItem>,
    pub last_applied_log_id: Vec<u8>,
    /// The stored membership after the batch, if a membership entry is in it.
    pub membership: Option<Vec<u8>>,
}

pub(super) fn apply_batch(
    txn: &WriteTransaction,
    shard: u64,
    batch: ApplyBatch,
) -> Result<Vec<CommandResponse>, StorageError> {
    let mut shards = txn.open_table(SHARDS)?;
    let mut record: ShardRecord = match shards.get(shard)? {
        Some(v) => decode_sealed(v.value())?,
        None => return Err(StorageError::ShardMissing(shard)),
    };
    let mut docs = txn.open_table(DOCS)?;
    let mut sessions = txn.open_table(SESSIONS)?;
    let mut clients = txn.open_table(SESSION_CLIENTS)?;
    let data_id = record.data_id;
    let mut responses = Vec::with_capacity(batch.items.len());
    let mut last_ts = 0;
    let first_index = batch.items.first().map(|i| i.index()).unwrap_or(record.applied_index + 1);

    for item in batch.items {
        let index = item.index();
        let response = match item {
            ApplyItem::Noop { .. } => CommandResponse::Noop,
            ApplyItem::Membership { replicas, .. } => {
                record.descriptor.epoch.conf_ver += 1;
                record.descriptor.replicas = replicas;
                CommandResponse::Noop
            }
            ApplyItem::Command { cmd, .. } => {
                last_ts = last_ts.max(cmd.ts_ms);
                let session = cmd.session;
                let remembered = if session.client_id != 0 {
                    // Forget answers the client has acknowledged.
                    for seq in collect_keys(
                        &sessions,
                        (data_id, session.client_id, 0)..(data_id, session.client_id, session.acked_below),
                    )? {
                        sessions.remove((data_id, session.client_id, seq))?;
                    }
                    match sessions.get((data_id, session.client_id, session.seq))? {
                        Some(v) => Some(decode_sealed::<CommandResponse>(v.value())?),
                        None => None,
                    }
                } else {
                    None
                };
                match remembered {
                    // A retry of a write that already ran: answer as the first time.
                    Some(response) => response,
                    None => {
                        let response = execute(&mut docs, data_id, &record, index, &cmd)?;
                        if session.client_id != 0 && response.is_final() {
                            sessions.insert(
                                (data_id, session.client_id, session.seq),
                                encode_sealed(&response).as_slice(),
                            )?;
                            clients.insert((data_id, session.client_id), cmd.ts_ms)?;
                        }
                        response
                    }
                }
            }
        };
        responses.push(response);
        record.applied_index = index;
    }

    // Sweep expired sessions when this batch crossed a sweep boundary.
    let next_boundary = first_index.div_ceil(SESSION_SWEEP_EVERY_ENTRIES) * SESSION_SWEEP_EVERY_ENTRIES;
    if last_ts > 0 && next_boundary <= record.applied_index {
        sweep_sessions(&mut sessions, &mut clients, data_id, last_ts)?;
    }

    record.applied_log_id = Some(batch.last_applied_log_id);
    if batch.membership.is_some() {
        record.membership = batch.membership;
    }
    shards.insert(shard, encode_sealed(&record).as_slice())?;
    Ok(responses)
}

fn execute(
    docs: &mut redb::Table<(u64, &[u8]), &[u8]>,
    data_id: u64,
    record: &ShardRecord,
    index: u64,
    cmd: &ShardCommand,
) -> Result<CommandResponse, StorageError> {
    if cmd.range_version != record.descriptor.epoch.version {
        return Ok(CommandResponse::EpochMismatch);
    }
    let range: &KeyRange = &record.descriptor.range;
    if cmd.op.keys().iter().any(|k| !range.contains(k)) {
        return Ok(CommandResponse::KeyNotInShard);
    }
    let current = |docs: &redb::Table<(u64, &[u8]), &[u8]>, key: &[u8]| -> Result<Option<StoredDoc>, StorageError> {
        Ok(match docs.get((data_id, key))? {
            Some(v) => Some(decode_sealed(v.value())?),
            None => None,
        })
    };
    let condition_holds = |cur: &Option<StoredDoc>, expected: Option<u64>| match expected {
        None => true,
        Some(0) => cur.is_none(),
        Some(v) => cur.as_ref().map(|d| d.version) == Some(v),
    };
    Ok(match &cmd.op {
        KvWrite::Put { key, value, expected_version } => {
            let cur = current(docs, key)?;
            if !condition_holds(&cur, *expected_version) {
                return Ok(CommandResponse::ConditionFailed { current_version: cur.map(|d| d.version).unwrap_or(0) });
            }
            let doc = StoredDoc {
                version: index,
                created_at_ms: cur.map(|d| d.created_at_ms).unwrap_or(cmd.ts_ms),
                updated_at_ms: cmd.ts_ms,
                value: value.clone(),
            };
            docs.insert((data_id, key.as_slice()), encode_sealed(&doc).as_slice())?;
            CommandResponse::Put { version: index }
        }
        KvWrite::Delete { key, expected_version } => {
            let cur = current(docs, key)?;
            if !condition_holds(&cur, *expected_version) {
                return Ok(CommandResponse::ConditionFailed { current_version: cur.map(|d| d.version).unwrap_or(0) });
            }
            let deleted = cur.is_some();
            if deleted {
                docs.remove((data_id, key.as_slice()))?;
            }
            CommandResponse::Delete { deleted, version: index }
        }
        KvWrite::BatchPut { items } => {
            for (key, value) in items {
                let cur = current(docs, key)?;
                let doc = StoredDoc {
                    version: index,
                    created_at_ms: cur.map(|d| d.created_at_ms).unwrap_or(cmd.ts_ms),
                    updated_at_ms: cmd.ts_ms,
                    value: value.clone(),
                };
                docs.insert((data_id, key.as_slice()), encode_sealed(&doc).as_slice())?;
            }
            CommandResponse::BatchPut { version: index }
        }
    })
}

fn collect_keys(
    sessions: &redb::Table<(u64, u64, u64), &[u8]>,
    range: std::ops::Range<(u64, u64, u64)>,
) -> Result<Vec<u64>, StorageError> {
    let mut out = Vec::new();
    for item in sessions.range(range)? {
        let (k, _) = item?;
        out.push(k.value().2);
    }
    Ok(out)
}

fn sweep_sessions(
    sessions: &mut redb::Table<(u64, u64, u64), &[u8]>,
    clients: &mut redb::Table<(u64, u64), u64>,
    data_id: u64,
    now_ms: u64,
) -> Result<(), StorageError> {
    let mut expired = Vec::new();
    for item in clients.range((data_id, 0)..=(data_id, u64::MAX))? {
        let (k, v) = item?;
        if v.value().saturating_add(SESSION_TTL_MS) < now_ms {
            expired.push(k.value().1);
        }
    }
    for client in expired {
        for seq in collect_keys(sessions, (data_id, client, 0)..(data_id, client, u64::MAX))? {
            sessions.remove((data_id, client, seq))?;
        }
        sessions.remove((data_id, client, u64::MAX))?;
        clients.remove((data_id, client))?;
    }
    Ok(())
}
