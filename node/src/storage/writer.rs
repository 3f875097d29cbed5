//! The single writer of a node's database: group commit for every shard.
//!
//! All writes of the node (log appends, votes, applies, snapshot staging and
//! installs, shard creation) arrive on one bounded channel. The writer thread
//! takes everything queued (up to [`WriterConfig::batch_ops_max`]) and commits it
//! in at most two redb transactions:
//! 1. one non-durable transaction with the work that does not need an fsync
//!    (applies, snapshot staging, committed-index hints), answered at once;
//! 2. one durable transaction with the work Raft needs on disk (log appends,
//!    votes, truncations, purges, installs), after which every waiting group's
//!    flush callback fires.
//!
//! So N busy groups share one fsync, and no tokio worker ever waits on a commit:
//! the thread is a plain OS thread and callers await oneshot replies.
//! Reordering the two classes within a batch is safe: a durable commit persists
//! every earlier non-durable one, and no op in one class depends on an op of the
//! other class in the same batch (callers await the ops they depend on).

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use redb::{Database, Durability, ReadableTable, WriteTransaction};
use tokio::sync::{mpsc, oneshot};

use super::StorageError;
use super::apply::{ApplyBatch, apply_batch};
use super::codec::{decode, encode, encode_sealed, unseal};
use super::snapshot::SnapshotRecord;
use super::tables::*;
use crate::command::CommandResponse;

pub type Reply<T> = oneshot::Sender<Result<T, StorageError>>;
/// Called on the writer thread once a log append is durable (or failed).
pub type FlushCallback = Box<dyn FnOnce(Result<(), StorageError>) + Send>;

pub enum WriteOp {
    AppendLog {
        shard: u64,
        entries: Vec<(u64, Vec<u8>)>,
        done: FlushCallback,
    },
    /// Deletes log entries with index >= `from_index`.
    TruncateLog {
        shard: u64,
        from_index: u64,
        done: Reply<()>,
    },
    /// Deletes log entries with index <= `upto_index` and records the purged log id.
    PurgeLog {
        shard: u64,
        upto_index: u64,
        purged: Vec<u8>,
        done: Reply<()>,
    },
    SaveVote {
        shard: u64,
        vote: Vec<u8>,
        done: Reply<()>,
    },
    SaveCommitted {
        shard: u64,
        committed: Option<Vec<u8>>,
    },
    Apply {
        shard: u64,
        batch: ApplyBatch,
        done: Reply<Vec<CommandResponse>>,
    },
    CreateShard {
        record: ShardRecord,
        done: Reply<()>,
    },
    AllocStaging {
        done: Reply<u64>,
    },
    StageRecords {
        data_id: u64,
        records: Vec<SnapshotRecord>,
        done: Reply<()>,
    },
    /// Switches a shard to the data staged under `record.data_id`.
    InstallSnapshot {
        record: ShardRecord,
        done: Reply<()>,
    },
    DiscardStaging {
        data_id: u64,
    },
    /// Deletes a replica: its record, Raft log and metadata now; its documents
    /// and sessions in the background.
    DestroyShard {
        shard: u64,
        done: Reply<()>,
    },
    PutNodeMeta {
        key: &'static str,
        value: Vec<u8>,
        done: Reply<()>,
    },
    /// Completes once everything submitted before it is durable.
    Barrier {
        done: Reply<()>,
    },
}

impl WriteOp {
    fn is_durable(&self) -> bool {
        !matches!(
            self,
            WriteOp::Apply { .. }
                | WriteOp::SaveCommitted { .. }
                | WriteOp::AllocStaging { .. }
                | WriteOp::StageRecords { .. }
                | WriteOp::DiscardStaging { .. }
        )
    }

    /// The reply channel of an op answered with `()`, or the op itself.
    // The error side is the op handed back unchanged, not an error to shrink.
    #[allow(clippy::result_large_err)]
    fn into_unit_reply(self) -> Result<Reply<()>, WriteOp> {
        match self {
            WriteOp::TruncateLog { done, .. }
            | WriteOp::PurgeLog { done, .. }
            | WriteOp::SaveVote { done, .. }
            | WriteOp::CreateShard { done, .. }
            | WriteOp::StageRecords { done, .. }
            | WriteOp::InstallSnapshot { done, .. }
            | WriteOp::PutNodeMeta { done, .. }
            | WriteOp::DestroyShard { done, .. }
            | WriteOp::Barrier { done } => Ok(done),
            other => Err(other),
        }
    }

    fn fail(self, err: StorageError) {
        let op = match self.into_unit_reply() {
            Ok(done) => {
                let _ = done.send(Err(err));
                return;
            }
            Err(op) => op,
        };
        match op {
            WriteOp::AppendLog { done, .. } => done(Err(err)),
            WriteOp::Apply { done, .. } => {
                let _ = done.send(Err(err));
            }
            WriteOp::AllocStaging { done } => {
                let _ = done.send(Err(err));
            }
            _ => {}
        }
    }
}

#[derive(Clone, Debug)]
pub struct WriterConfig {
    /// Most ops committed in one pair of transactions.
    pub batch_ops_max: usize,
    /// Rows deleted per background garbage-collection transaction.
    pub gc_rows_per_txn: usize,
}

impl Default for WriterConfig {
    fn default() -> Self {
        Self { batch_ops_max: 4096, gc_rows_per_txn: 4096 }
    }
}

/// Counters the writer maintains; read by metrics and tests.
#[derive(Debug, Default)]
pub struct WriterCounters {
    pub durable_commits: AtomicU64,
    pub nondurable_commits: AtomicU64,
    pub log_entries_persisted: AtomicU64,
    pub ops: AtomicU64,
}

/// What an op produced, delivered after its transaction commits.
enum Done {
    Flush(FlushCallback),
    Unit(Reply<()>),
    Responses(Reply<Vec<CommandResponse>>, Vec<CommandResponse>),
    DataId(Reply<u64>, u64),
    Nothing,
}

impl Done {
    fn complete(self) {
        match self {
            Done::Flush(cb) => cb(Ok(())),
            Done::Unit(tx) => {
                let _ = tx.send(Ok(()));
            }
            Done::Responses(tx, r) => {
                let _ = tx.send(Ok(r));
            }
            Done::DataId(tx, id) => {
                let _ = tx.send(Ok(id));
            }
            Done::Nothing => {}
        }
    }

    fn fail(self, err: &StorageError) {
        let err = || StorageError::Failed(err.to_string());
        match self {
            Done::Flush(cb) => cb(Err(err())),
            Done::Unit(tx) => {
                let _ = tx.send(Err(err()));
            }
            Done::Responses(tx, _) => {
                let _ = tx.send(Err(err()));
            }
            Done::DataId(tx, _) => {
                let _ = tx.send(Err(err()));
            }
            Done::Nothing => {}
        }
    }
}

pub(super) struct Writer {
    pub db: Arc<Database>,
    pub rx: mpsc::Receiver<WriteOp>,
    pub config: WriterConfig,
    pub counters: Arc<WriterCounters>,
    /// Set to simulate a crash: pending work is dropped, nothing more commits.
    pub crashed: Arc<AtomicBool>,
}

impl Writer {
    pub fn run(mut self) {
        let mut gc_pending = true;
        loop {
            let first = if gc_pending {
                match self.rx.try_recv() {
                    Ok(op) => Some(op),
                    Err(mpsc::error::TryRecvError::Empty) => None,
                    Err(mpsc::error::TryRecvError::Disconnected) => return,
                }
            } else {
                match self.rx.blocking_recv() {
                    Some(op) => Some(op),
                    None => return,
                }
            };
            if self.crashed.load(Ordering::Acquire) {
                return;
            }
            let Some(first) = first else {
                match self.gc_step() {
                    Ok(more) => gc_pending = more,
                    Err(e) => {
                        tracing::error!(error = %e, "garbage collection of shard data failed");
                        gc_pending = false;
                    }
                }
                continue;
            };
            let mut batch = vec![first];
            while batch.len() < self.config.batch_ops_max {
                match self.rx.try_recv() {
                    Ok(op) => batch.push(op),
                    Err(_) => break,
                }
            }
            self.counters.ops.fetch_add(batch.len() as u64, Ordering::Relaxed);
            if self.process(batch) {
                gc_pending = true;
            }
        }
    }

    /// Commits one batch; returns whether it created garbage to collect.
    fn process(&mut self, batch: Vec<WriteOp>) -> bool {
        let (durable, fast): (Vec<_>, Vec<_>) = batch.into_iter().partition(|op| op.is_durable());
        let mut garbage = false;
        for (ops, is_durable) in [(fast, false), (durable, true)] {
            let durability = if is_durable { Durability::Immediate } else { Durability::None };
            if ops.is_empty() {
                continue;
            }
            let entries: u64 = ops
                .iter()
                .map(|op| if let WriteOp::AppendLog { entries, .. } = op { entries.len() as u64 } else { 0 })
                .sum();
            garbage |= ops.iter().any(|op| {
                matches!(
                    op,
                    WriteOp::InstallSnapshot { .. } | WriteOp::DiscardStaging { .. } | WriteOp::DestroyShard { .. }
                )
            });
            let mut txn = match self.db.begin_write() {
                Ok(t) => t,
                Err(e) => {
                    let err = StorageError::from(e);
                    for op in ops {
                        op.fail(StorageError::Failed(err.to_string()));
                    }
                    continue;
                }
            };
            if let Err(e) = txn.set_durability(durability) {
                tracing::error!(error = %e, "cannot set durability");
            }
            let mut dones = Vec::with_capacity(ops.len());
            let mut failed: Option<StorageError> = None;
            for op in ops {
                if let Some(err) = &failed {
                    op.fail(StorageError::Failed(err.to_string()));
                    continue;
                }
                match execute(&txn, op) {
                    Ok(done) => dones.push(done),
                    Err((e, op)) => {
                        if let Some(op) = op {
                            op.fail(StorageError::Failed(e.to_string()));
                        }
                        failed = Some(e);
                    }
                }
            }
            if self.crashed.load(Ordering::Acquire) {
                return false;
            }
            let result = match failed {
                Some(e) => Err(e),
                None => txn.commit().map_err(StorageError::from),
            };
            match result {
                Ok(()) => {
                    if is_durable {
                        self.counters.durable_commits.fetch_add(1, Ordering::Relaxed);
                        self.counters.log_entries_persisted.fetch_add(entries, Ordering::Relaxed);
                    } else {
                        self.counters.nondurable_commits.fetch_add(1, Ordering::Relaxed);
                    }
                    for d in dones {
                        d.complete();
                    }
                }
                Err(e) => {
                    tracing::error!(error = %e, "write transaction failed");
                    for d in dones {
                        d.fail(&e);
                    }
                }
            }
        }
        garbage
    }

    /// Deletes one bounded slice of unreferenced data; returns whether more remains.
    fn gc_step(&mut self) -> Result<bool, StorageError> {
        let mut txn = self.db.begin_write()?;
        txn.set_durability(Durability::None)?;
        let more = {
            let mut gc = txn.open_table(DATA_GC)?;
            let mut target = None;
            for item in gc.iter()? {
                let (k, v) = item?;
                if v.value() == GC_GARBAGE {
                    target = Some(k.value());
                    break;
                }
            }
            let Some(data_id) = target else {
                return Ok(false);
            };
            let mut budget = self.config.gc_rows_per_txn;
            budget -= delete_prefix_docs(&txn, data_id, budget)?;
            budget -= delete_prefix_sessions(&txn, data_id, budget)?;
            let mut clients = txn.open_table(SESSION_CLIENTS)?;
            let keys: Vec<u64> = clients
                .range((data_id, 0)..=(data_id, u64::MAX))?
                .take(budget)
                .map(|r| r.map(|(k, _)| k.value().1))
                .collect::<Result<_, _>>()?;
            budget -= keys.len();
            for c in keys {
                clients.remove((data_id, c))?;
            }
            if budget > 0 {
                // Everything of this data id is gone.
                gc.remove(data_id)?;
            }
            true
        };
        txn.commit()?;
        Ok(more)
    }
}

fn delete_prefix_docs(txn: &WriteTransaction, data_id: u64, budget: usize) -> Result<usize, StorageError> {
    let mut docs = txn.open_table(DOCS)?;
    let start: (u64, &[u8]) = (data_id, &[]);
    let keys: Vec<Vec<u8>> = docs
        .range(start..(data_id + 1, &[][..]))?
        .take(budget)
        .map(|r| r.map(|(k, _)| k.value().1.to_vec()))
        .collect::<Result<_, _>>()?;
    for k in &keys {
        docs.remove((data_id, k.as_slice()))?;
    }
    Ok(keys.len())
}

fn delete_prefix_sessions(txn: &WriteTransaction, data_id: u64, budget: usize) -> Result<usize, StorageError> {
    let mut sessions = txn.open_table(SESSIONS)?;
    let keys: Vec<(u64, u64, u64)> = sessions
        .range((data_id, 0, 0)..=(data_id, u64::MAX, u64::MAX))?
        .take(budget)
        .map(|r| r.map(|(k, _)| k.value()))
        .collect::<Result<_, _>>()?;
    for k in &keys {
        sessions.remove(*k)?;
    }
    Ok(keys.len())
}

/// Executes one op inside `txn`. On error, returns the op back if it has not
/// been consumed, so its caller can be told.
fn execute(txn: &WriteTransaction, op: WriteOp) -> Result<Done, (StorageError, Option<Box<WriteOp>>)> {
    // Ops that consume themselves before anything can fail are handled so that
    // their reply travels with the error.
    match op {
        WriteOp::AppendLog { shard, entries, done } => {
            let r = (|| -> Result<(), StorageError> {
                let mut log = txn.open_table(RAFT_LOG)?;
                for (index, bytes) in &entries {
                    log.insert((shard, *index), bytes.as_slice())?;
                }
                Ok(())
            })();
            match r {
                Ok(()) => Ok(Done::Flush(done)),
                Err(e) => {
                    done(Err(StorageError::Failed(e.to_string())));
                    Err((e, None))
                }
            }
        }
        WriteOp::Apply { shard, batch, done } => match apply_batch(txn, shard, batch) {
            Ok(responses) => Ok(Done::Responses(done, responses)),
            Err(e) => {
                let _ = done.send(Err(StorageError::Failed(e.to_string())));
                Err((e, None))
            }
        },
        WriteOp::AllocStaging { done } => match alloc_data_id(txn).and_then(|id| {
            txn.open_table(DATA_GC)?.insert(id, GC_STAGING)?;
            Ok(id)
        }) {
            Ok(id) => Ok(Done::DataId(done, id)),
            Err(e) => {
                let _ = done.send(Err(StorageError::Failed(e.to_string())));
                Err((e, None))
            }
        },
        other => {
            let r = execute_unit(txn, &other);
            match r {
                Ok(()) => Ok(match other.into_unit_reply() {
                    Ok(done) => Done::Unit(done),
                    Err(_) => Done::Nothing,
                }),
                Err(e) => Err((e, Some(Box::new(other)))),
            }
        }
    }
}

fn execute_unit(txn: &WriteTransaction, op: &WriteOp) -> Result<(), StorageError> {
    match op {
        WriteOp::TruncateLog { shard, from_index, .. } => {
            let mut log = txn.open_table(RAFT_LOG)?;
            let keys: Vec<u64> = log
                .range((*shard, *from_index)..=(*shard, u64::MAX))?
                .map(|r| r.map(|(k, _)| k.value().1))
                .collect::<Result<_, _>>()?;
            for i in keys {
                log.remove((*shard, i))?;
            }
        }
        WriteOp::PurgeLog { shard, upto_index, purged, .. } => {
            let mut log = txn.open_table(RAFT_LOG)?;
            let keys: Vec<u64> = log
                .range((*shard, 0)..=(*shard, *upto_index))?
                .map(|r| r.map(|(k, _)| k.value().1))
                .collect::<Result<_, _>>()?;
            for i in keys {
                log.remove((*shard, i))?;
            }
            txn.open_table(RAFT_META)?.insert((*shard, META_PURGED), encode_sealed_bytes(purged).as_slice())?;
        }
        WriteOp::SaveVote { shard, vote, .. } => {
            txn.open_table(RAFT_META)?.insert((*shard, META_VOTE), encode_sealed_bytes(vote).as_slice())?;
        }
        WriteOp::SaveCommitted { shard, committed } => {
            let mut meta = txn.open_table(RAFT_META)?;
            match committed {
                Some(c) => {
                    meta.insert((*shard, META_COMMITTED), encode_sealed_bytes(c).as_slice())?;
                }
                None => {
                    meta.remove((*shard, META_COMMITTED))?;
                }
            }
        }
        WriteOp::CreateShard { record, .. } => {
            let mut shards = txn.open_table(SHARDS)?;
            if shards.get(record.shard().0)?.is_some() {
                return Err(StorageError::ShardExists(record.shard().0));
            }
            let mut record = record.clone();
            record.data_id = alloc_data_id(txn)?;
            shards.insert(record.shard().0, encode_sealed(&record).as_slice())?;
        }
        WriteOp::StageRecords { data_id, records, .. } => {
            let mut docs = txn.open_table(DOCS)?;
            let mut sessions = txn.open_table(SESSIONS)?;
            let mut clients = txn.open_table(SESSION_CLIENTS)?;
            for r in records {
                match r {
                    SnapshotRecord::Doc { key, doc } => {
                        docs.insert((*data_id, key.as_slice()), doc.as_slice())?;
                    }
                    SnapshotRecord::Session { client, seq, response } => {
                        sessions.insert((*data_id, *client, *seq), response.as_slice())?;
                    }
                    SnapshotRecord::Client { client, last_seen_ms } => {
                        clients.insert((*data_id, *client), *last_seen_ms)?;
                    }
                }
            }
        }
        WriteOp::InstallSnapshot { record, .. } => {
            let mut shards = txn.open_table(SHARDS)?;
            let mut gc = txn.open_table(DATA_GC)?;
            let shard = record.shard().0;
            let old = match shards.get(shard)? {
                Some(v) => Some(super::codec::decode_sealed::<ShardRecord>(v.value())?.data_id),
                None => None,
            };
            shards.insert(shard, encode_sealed(record).as_slice())?;
            gc.remove(record.data_id)?;
            if let Some(old) = old.filter(|o| *o != record.data_id) {
                gc.insert(old, GC_GARBAGE)?;
            }
        }
        WriteOp::DiscardStaging { data_id } => {
            txn.open_table(DATA_GC)?.insert(*data_id, GC_GARBAGE)?;
        }
        WriteOp::DestroyShard { shard, .. } => {
            let mut shards = txn.open_table(SHARDS)?;
            let record = match shards.remove(*shard)? {
                Some(v) => super::codec::decode_sealed::<ShardRecord>(v.value())?,
                None => return Err(StorageError::ShardMissing(*shard)),
            };
            txn.open_table(DATA_GC)?.insert(record.data_id, GC_GARBAGE)?;
            let mut log = txn.open_table(RAFT_LOG)?;
            let keys: Vec<u64> = log
                .range((*shard, 0)..=(*shard, u64::MAX))?
                .map(|r| r.map(|(k, _)| k.value().1))
                .collect::<Result<_, _>>()?;
            for i in keys {
                log.remove((*shard, i))?;
            }
            let mut meta = txn.open_table(RAFT_META)?;
            for name in [META_VOTE, META_COMMITTED, META_PURGED] {
                meta.remove((*shard, name))?;
            }
        }
        WriteOp::PutNodeMeta { key, value, .. } => {
            txn.open_table(NODE_META)?.insert(*key, encode_sealed_bytes(value).as_slice())?;
        }
        WriteOp::Barrier { .. } => {}
        WriteOp::AppendLog { .. } | WriteOp::Apply { .. } | WriteOp::AllocStaging { .. } => {
            unreachable!("handled by execute")
        }
    }
    Ok(())
}

/// Allocates a fresh data id; the counter is persisted in the same transaction.
pub(super) fn alloc_data_id(txn: &WriteTransaction) -> Result<u64, StorageError> {
    let mut meta = txn.open_table(NODE_META)?;
    let next: u64 = match meta.get(NEXT_DATA_ID)? {
        Some(v) => decode(unseal(v.value())?)?,
        None => 1,
    };
    meta.insert(NEXT_DATA_ID, encode_sealed_bytes(&encode(&(next + 1))).as_slice())?;
    Ok(next)
}

fn encode_sealed_bytes(bytes: &[u8]) -> Vec<u8> {
    super::codec::seal(bytes)
}
