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
use super::docs::{self, DocsTable, TailsTable};
use super::tables::*;
use crate::command::{CommandResponse, KvWrite, ShardCommand, TxnOp};

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
    let mut tails = txn.open_table(DOC_TAILS)?;
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
                        let response = execute(&mut docs, &mut tails, data_id, &mut record, index, &cmd)?;
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
    docs: &mut DocsTable<'_>,
    tails: &mut TailsTable<'_>,
    data_id: u64,
    record: &mut ShardRecord,
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
    let condition_holds = |cur: &Option<StoredDoc>, expected: Option<u64>| match expected {
        None => true,
        Some(0) => cur.is_none(),
        Some(v) => cur.as_ref().map(|d| d.version) == Some(v),
    };
    let stats = &mut record.stats;
    let mut w = DocWriter { docs, tails, data_id, index, ts_ms: cmd.ts_ms, stats };
    Ok(match &cmd.op {
        KvWrite::Put { key, value, expected_version } => {
            let cur = w.current(key)?;
            if !condition_holds(&cur, *expected_version) {
                return Ok(CommandResponse::ConditionFailed { current_version: cur.map(|d| d.version).unwrap_or(0) });
            }
            w.store(key, value, cur)?;
            CommandResponse::Put { version: index }
        }
        KvWrite::Delete { key, expected_version } => {
            let cur = w.current(key)?;
            if !condition_holds(&cur, *expected_version) {
                return Ok(CommandResponse::ConditionFailed { current_version: cur.map(|d| d.version).unwrap_or(0) });
            }
            let deleted = cur.is_some();
            w.remove(key, cur)?;
            CommandResponse::Delete { deleted, version: index }
        }
        KvWrite::BatchPut { items } => {
            for (key, value) in items {
                let cur = w.current(key)?;
                w.store(key, value, cur)?;
            }
            CommandResponse::BatchPut { version: index }
        }
        KvWrite::Txn { compares, ops } => {
            for (key, expected) in compares {
                let cur = w.current(key)?;
                if !condition_holds(&cur, Some(*expected)) {
                    return Ok(CommandResponse::ConditionFailed {
                        current_version: cur.map(|d| d.version).unwrap_or(0),
                    });
                }
            }
            for op in ops {
                let cur = w.current(op.key())?;
                match op {
                    TxnOp::Put { key, value } => w.store(key, value, cur)?,
                    TxnOp::Delete { key } => w.remove(key, cur)?,
                }
            }
            CommandResponse::Txn { version: index }
        }
    })
}

/// Writes documents of one shard at one log index, keeping its stats exact.
struct DocWriter<'a, 't, 'u> {
    docs: &'a mut DocsTable<'t>,
    tails: &'a mut TailsTable<'u>,
    data_id: u64,
    index: u64,
    ts_ms: u64,
    stats: &'a mut DataStats,
}

impl DocWriter<'_, '_, '_> {
    /// The document at `key` as of the writes so far, verified.
    fn current(&self, key: &[u8]) -> Result<Option<StoredDoc>, StorageError> {
        docs::get(self.docs, self.tails, self.data_id, key)
    }

    /// Writes `value` at this entry's index, keeping the creation time of the
    /// document it replaces.
    fn store(&mut self, key: &[u8], value: &[u8], cur: Option<StoredDoc>) -> Result<(), StorageError> {
        if let Some(old) = &cur {
            self.stats.remove(key, &old.value);
        }
        self.stats.add(key, value);
        let doc = StoredDoc {
            version: self.index,
            created_at_ms: cur.map(|d| d.created_at_ms).unwrap_or(self.ts_ms),
            updated_at_ms: self.ts_ms,
            value: value.to_vec(),
        };
        docs::put(self.docs, self.tails, self.data_id, key, &encode_sealed(&doc), docs::Layout::Whole)
    }

    fn remove(&mut self, key: &[u8], cur: Option<StoredDoc>) -> Result<(), StorageError> {
        if let Some(old) = cur {
            self.stats.remove(key, &old.value);
            docs::remove(self.docs, self.tails, self.data_id, key)?;
        }
        Ok(())
    }
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

#[cfg(test)]
mod tests {
    use cairn_proto::{Epoch, KeyRange, Session, ShardDescriptor, ShardId};

    use super::*;
    use crate::storage::{Storage, StorageConfig, WriteOp};

    async fn shard() -> (tempfile::TempDir, std::sync::Arc<Storage>) {
        let dir = tempfile::tempdir().unwrap();
        let storage = Storage::open(&dir.path().join("db"), StorageConfig::default()).unwrap();
        let record = ShardRecord {
            descriptor: ShardDescriptor {
                id: ShardId(1),
                range: KeyRange::new(b"a".to_vec(), b"m".to_vec()),
                epoch: Epoch { conf_ver: 1, version: 3 },
                replicas: vec![],
            },
            data_id: 0,
            applied_index: 0,
            applied_log_id: None,
            membership: None,
            stats: Default::default(),
        };
        storage.call(|done| WriteOp::CreateShard { record, done }).await.unwrap();
        (dir, storage)
    }

    fn put(index: u64, client: u64, seq: u64, key: &[u8], expected: Option<u64>, range_version: u64) -> ApplyItem {
        ApplyItem::Command {
            index,
            cmd: ShardCommand {
                session: Session { client_id: client, seq, acked_below: 0 },
                ts_ms: 1000 + index,
                range_version,
                op: KvWrite::Put {
                    key: key.to_vec(),
                    value: format!("{index}").into_bytes(),
                    expected_version: expected,
                },
            },
        }
    }

    async fn apply(storage: &Storage, items: Vec<ApplyItem>) -> Vec<CommandResponse> {
        let batch = ApplyBatch { items, last_applied_log_id: vec![], membership: None };
        storage.call(|done| WriteOp::Apply { shard: 1, batch, done }).await.unwrap()
    }

    #[tokio::test]
    async fn compare_and_set_sessions_and_routing_checks() {
        let (_dir, storage) = shard().await;
        let r = apply(
            &storage,
            vec![
                put(1, 7, 1, b"b", Some(0), 3), // create: must not exist
                put(2, 8, 1, b"b", Some(0), 3), // fails: exists at 1
                put(3, 8, 2, b"b", Some(1), 3), // CAS at the right version
                put(4, 7, 1, b"b", None, 3),    // retry of client 7 seq 1: answered, not run
                put(5, 9, 1, b"z", None, 3),    // outside the range
                put(6, 9, 2, b"c", None, 2),    // stale range version
                put(7, 9, 2, b"c", None, 3),    // the same seq after a refresh runs
            ],
        )
        .await;
        assert_eq!(
            r,
            vec![
                CommandResponse::Put { version: 1 },
                CommandResponse::ConditionFailed { current_version: 1 },
                CommandResponse::Put { version: 3 },
                CommandResponse::Put { version: 1 },
                CommandResponse::KeyNotInShard,
                CommandResponse::EpochMismatch,
                CommandResponse::Put { version: 7 },
            ]
        );
        let doc = storage.read_docs(ShardId(1), |rec, d| {
            assert_eq!(rec.applied_index, 7);
            d.get(b"b")
        });
        let doc = doc.unwrap().unwrap();
        // The retry did not overwrite the CAS write; created-at is kept.
        assert_eq!(
            (doc.version, doc.value.as_slice(), doc.created_at_ms, doc.updated_at_ms),
            (3, &b"3"[..], 1001, 1003)
        );
    }

    fn cmd(index: u64, op: KvWrite) -> ApplyItem {
        ApplyItem::Command {
            index,
            cmd: ShardCommand { session: Session::default(), ts_ms: index, range_version: 3, op },
        }
    }

    #[tokio::test]
    async fn txn_is_all_or_nothing_and_stats_stay_exact() {
        let (_dir, storage) = shard().await;
        let put = |k: &[u8], v: &[u8]| TxnOp::Put { key: k.to_vec(), value: v.to_vec() };
        let r = apply(
            &storage,
            vec![
                cmd(
                    1,
                    KvWrite::Txn { compares: vec![(b"b".to_vec(), 0)], ops: vec![put(b"b", b"12"), put(b"c", b"3")] },
                ),
                // "b" exists now: nothing of this one happens.
                cmd(2, KvWrite::Txn { compares: vec![(b"b".to_vec(), 0)], ops: vec![put(b"d", b"4")] }),
                cmd(
                    3,
                    KvWrite::Txn {
                        compares: vec![(b"b".to_vec(), 1), (b"c".to_vec(), 1)],
                        ops: vec![put(b"b", b"1"), TxnOp::Delete { key: b"c".to_vec() }],
                    },
                ),
                // A key outside the shard fails the whole command.
                cmd(4, KvWrite::Txn { compares: vec![], ops: vec![put(b"e", b"5"), put(b"z", b"6")] }),
            ],
        )
        .await;
        assert_eq!(
            r,
            vec![
                CommandResponse::Txn { version: 1 },
                CommandResponse::ConditionFailed { current_version: 1 },
                CommandResponse::Txn { version: 3 },
                CommandResponse::KeyNotInShard,
            ]
        );
        let (stats, keys) = storage
            .read_docs(ShardId(1), |rec, d| {
                let keys: Vec<Vec<u8>> = [&b"b"[..], b"c", b"d", b"e"]
                    .iter()
                    .filter(|k| d.get(k).unwrap().is_some())
                    .map(|k| k.to_vec())
                    .collect();
                Ok((rec.stats, keys))
            })
            .unwrap();
        assert_eq!(keys, vec![b"b".to_vec()]);
        assert_eq!(stats, DataStats { key_count: 1, size_bytes: 2 });
    }
}
