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

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use redb::{Database, Durability, ReadableTable, WriteTransaction};
use tokio::sync::{mpsc, oneshot};

use super::StorageError;
use super::apply::{ApplyBatch, apply_batch};
use super::codec::{decode, encode, encode_sealed, unseal};
use super::snapshot::{SnapshotChunk, SnapshotRecord};
use super::tables::*;
use crate::command::CommandResponse;

/// Commits taking at least this long are logged (at info), with their durability.
const SLOW_COMMIT: Duration = Duration::from_millis(100);

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
    /// Creates a shard's record (with a fresh data id) without looking at
    /// tombstones: the PD shard's bootstrap. Refused, without failing the rest
    /// of the batch, with [`StorageError::ShardExists`] when the shard has a
    /// record.
    CreateShard {
        record: ShardRecord,
        done: Reply<()>,
    },
    /// [`WriteOp::CreateShard`] for a replica asked for at `requested_conf_ver`:
    /// also refused, with [`StorageError::Tombstoned`], when the shard's
    /// tombstone is at least that (checked in the creating transaction).
    CreateShardUnlessTombstoned {
        record: ShardRecord,
        requested_conf_ver: u64,
        done: Reply<()>,
    },
    AllocStaging {
        done: Reply<u64>,
    },
    StageRecords {
        data_id: u64,
        chunk: SnapshotChunk,
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
    /// and sessions in the background. In the same transaction it raises the
    /// shard's tombstone to the largest of its old value, `tombstone_conf_ver`
    /// and the record's own `conf_ver`. Refused, without failing the rest of
    /// the batch, with [`StorageError::ShardMissing`] when there is no record,
    /// and with [`StorageError::ReplicaNewer`] when `max_conf_ver` is given and
    /// the record's `conf_ver` exceeds it.
    DestroyShard {
        shard: u64,
        tombstone_conf_ver: u64,
        max_conf_ver: Option<u64>,
        destroyed_at_ms: u64,
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
            | WriteOp::CreateShardUnlessTombstoned { done, .. }
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
    /// Most of the writer's time background garbage collection (a dropped
    /// replica's documents) may take, in percent, 1-100: after a step that took
    /// `t` the next one waits `t × (100 − p) ÷ p`, committing writes meanwhile,
    /// so deleting a moved replica's copy (after T3) never takes the node's
    /// disk and CPU from its clients for long. 100 runs steps back to back.
    pub gc_busy_percent: u32,
}

impl Default for WriterConfig {
    fn default() -> Self {
        Self { batch_ops_max: 4096, gc_rows_per_txn: 4096, gc_busy_percent: GC_BUSY_PERCENT }
    }
}

/// Default share of the writer's time for garbage collection: a 400 MB
/// replica's copy is deleted in ~5 s instead of ~1 s, and in the 3 s after the
/// move the clients keep 74-90 % of their throughput instead of 47-67 %
/// (move-bench, interleaved runs).
pub const GC_BUSY_PERCENT: u32 = 25;

/// How long garbage collection rests after a step that took `took`.
fn gc_rest(took: Duration, busy_percent: u32) -> Duration {
    let p = busy_percent.clamp(1, 100);
    took * (100 - p) / p
}

/// What the writer does next.
enum Next {
    Op(WriteOp),
    /// Nothing queued and garbage collection may take a step.
    CollectGarbage,
    Closed,
}

/// How many ops the writer has finished, for a caller that waits for its op
/// inline: in a simulation (`cairn_proto::sim`) a submit blocks the one
/// simulation thread until the writer is done, so the real disk's timing
/// never shows in simulated time.
#[derive(Debug, Default)]
pub struct Progress {
    /// Ops finished, and whether the writer has stopped.
    state: Mutex<(u64, bool)>,
    changed: Condvar,
}

impl Progress {
    fn finished(&self, ops: u64) {
        self.state.lock().expect("writer progress lock").0 += ops;
        self.changed.notify_all();
    }

    fn stopped(&self) {
        self.state.lock().expect("writer progress lock").1 = true;
        self.changed.notify_all();
    }

    /// Blocks until `ops` ops in all are finished, or the writer stopped.
    pub fn wait_for(&self, ops: u64) {
        let mut state = self.state.lock().expect("writer progress lock");
        while state.0 < ops && !state.1 {
            state = self.changed.wait(state).expect("writer progress lock");
        }
    }
}

/// Marks the writer stopped however its loop ends.
struct StopGuard(Arc<Progress>);

impl Drop for StopGuard {
    fn drop(&mut self) {
        self.0.stopped();
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
    /// An op that was checked and declined without writing anything: its
    /// caller gets the error, the transaction commits the rest of the batch.
    Refused(Reply<()>, StorageError),
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
            Done::Refused(tx, e) => {
                let _ = tx.send(Err(e));
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
            Done::Unit(tx) | Done::Refused(tx, _) => {
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
    /// The database's path: the key of the test hooks.
    pub path: std::path::PathBuf,
    /// Durable ops a test holds back ([`crate::test_hooks::hold_durable_commits`]).
    pub held: Vec<WriteOp>,
    pub progress: Arc<Progress>,
}

impl Writer {
    pub fn run(mut self) {
        let _stopped = StopGuard(self.progress.clone());
        // Only for waiting on the queue with a deadline while garbage
        // collection rests; without it collection runs back to back.
        let timer = match tokio::runtime::Builder::new_current_thread().enable_time().build() {
            Ok(rt) => Some(rt),
            Err(e) => {
                tracing::warn!(error = %e, "no timer for the writer: garbage collection will not be paced");
                None
            }
        };
        let mut gc_pending = true;
        let mut gc_rest_until: Option<Instant> = None;
        loop {
            let next = self.next(gc_pending, gc_rest_until, timer.as_ref());
            if self.crashed.load(Ordering::Acquire) {
                return;
            }
            let first = match next {
                Next::Op(op) => op,
                Next::Closed => return,
                Next::CollectGarbage => {
                    let started = Instant::now();
                    match self.gc_step() {
                        Ok(more) => gc_pending = more,
                        Err(e) => {
                            tracing::error!(error = %e, "garbage collection of shard data failed");
                            gc_pending = false;
                        }
                    }
                    gc_rest_until = Some(Instant::now() + gc_rest(started.elapsed(), self.config.gc_busy_percent));
                    continue;
                }
            };
            let mut batch = vec![first];
            while batch.len() < self.config.batch_ops_max {
                match self.rx.try_recv() {
                    Ok(op) => batch.push(op),
                    Err(_) => break,
                }
            }
            let ops = batch.len() as u64;
            self.counters.ops.fetch_add(ops, Ordering::Relaxed);
            if self.process(batch) {
                gc_pending = true;
            }
            self.progress.finished(ops);
        }
    }

    /// Commits one batch; returns whether it created garbage to collect.
    fn process(&mut self, batch: Vec<WriteOp>) -> bool {
        let (mut durable, fast): (Vec<_>, Vec<_>) = batch.into_iter().partition(|op| op.is_durable());
        if crate::test_hooks::durable_commits_held(&self.path) {
            self.held.append(&mut durable);
        } else if !self.held.is_empty() {
            durable.splice(0..0, std::mem::take(&mut self.held));
        }
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
            let commit_started = Instant::now();
            let result = match failed {
                Some(e) => Err(e),
                None => txn.commit().map_err(StorageError::from),
            };
            let commit_took = commit_started.elapsed();
            if commit_took >= SLOW_COMMIT {
                tracing::info!(durable = is_durable, ms = commit_took.as_millis() as u64, "slow commit");
            }
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

    /// The next op; with garbage to collect, [`Next::CollectGarbage`] once
    /// the queue is empty and collection's rest is over (ops arriving during
    /// the rest are committed at once).
    fn next(&mut self, gc_pending: bool, rest_until: Option<Instant>, timer: Option<&tokio::runtime::Runtime>) -> Next {
        if !gc_pending {
            return self.rx.blocking_recv().map_or(Next::Closed, Next::Op);
        }
        match self.rx.try_recv() {
            Ok(op) => return Next::Op(op),
            Err(mpsc::error::TryRecvError::Disconnected) => return Next::Closed,
            Err(mpsc::error::TryRecvError::Empty) => {}
        }
        let left = rest_until.and_then(|until| until.checked_duration_since(Instant::now()));
        let (Some(left), Some(timer)) = (left, timer) else {
            return Next::CollectGarbage;
        };
        // The timeout's timer is made inside: it needs the runtime's context.
        match timer.block_on(async { tokio::time::timeout(left, self.rx.recv()).await }) {
            Ok(Some(op)) => Next::Op(op),
            Ok(None) => Next::Closed,
            Err(_elapsed) => Next::CollectGarbage,
        }
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
    super::docs::delete_some(&mut txn.open_table(DOCS)?, &mut txn.open_table(DOC_TAILS)?, data_id, budget)
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
        WriteOp::CreateShard { record, done } => match create_shard(txn, &record, None) {
            Ok(None) => Ok(Done::Unit(done)),
            Ok(Some(refusal)) => Ok(Done::Refused(done, refusal)),
            Err(e) => {
                let _ = done.send(Err(StorageError::Failed(e.to_string())));
                Err((e, None))
            }
        },
        WriteOp::CreateShardUnlessTombstoned { record, requested_conf_ver, done } => {
            match create_shard(txn, &record, Some(requested_conf_ver)) {
                Ok(None) => Ok(Done::Unit(done)),
                Ok(Some(refusal)) => Ok(Done::Refused(done, refusal)),
                Err(e) => {
                    let _ = done.send(Err(StorageError::Failed(e.to_string())));
                    Err((e, None))
                }
            }
        }
        WriteOp::DestroyShard { shard, tombstone_conf_ver, max_conf_ver, destroyed_at_ms, done } => {
            match destroy_shard(txn, shard, tombstone_conf_ver, max_conf_ver, destroyed_at_ms) {
                Ok(None) => Ok(Done::Unit(done)),
                Ok(Some(refusal)) => Ok(Done::Refused(done, refusal)),
                Err(e) => {
                    let _ = done.send(Err(StorageError::Failed(e.to_string())));
                    Err((e, None))
                }
            }
        }
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
            // One pass over the range (no lookup per removed entry).
            txn.open_table(RAFT_LOG)?.retain_in((*shard, *from_index)..=(*shard, u64::MAX), |_, _| false)?;
        }
        WriteOp::PurgeLog { shard, upto_index, purged, .. } => {
            txn.open_table(RAFT_LOG)?.retain_in((*shard, 0)..=(*shard, *upto_index), |_, _| false)?;
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
        WriteOp::StageRecords { data_id, chunk, .. } => {
            let mut docs = txn.open_table(DOCS)?;
            let mut tails = txn.open_table(DOC_TAILS)?;
            let mut sessions = txn.open_table(SESSIONS)?;
            let mut clients = txn.open_table(SESSION_CLIENTS)?;
            for r in chunk.records() {
                match r? {
                    SnapshotRecord::Doc { key, doc } => {
                        super::docs::put(&mut docs, &mut tails, *data_id, key, doc, super::docs::Layout::Paged)?;
                    }
                    SnapshotRecord::Session { client, seq, response } => {
                        sessions.insert((*data_id, client, seq), response)?;
                    }
                    SnapshotRecord::Client { client, last_seen_ms } => {
                        clients.insert((*data_id, client), last_seen_ms)?;
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
        WriteOp::PutNodeMeta { key, value, .. } => {
            txn.open_table(NODE_META)?.insert(*key, encode_sealed_bytes(value).as_slice())?;
        }
        WriteOp::Barrier { .. } => {}
        WriteOp::AppendLog { .. }
        | WriteOp::Apply { .. }
        | WriteOp::AllocStaging { .. }
        | WriteOp::CreateShard { .. }
        | WriteOp::CreateShardUnlessTombstoned { .. }
        | WriteOp::DestroyShard { .. } => {
            unreachable!("handled by execute")
        }
    }
    Ok(())
}

/// Reads a shard's tombstone inside a write transaction, verified.
fn read_tombstone(txn: &WriteTransaction, shard: u64) -> Result<Option<Tombstone>, StorageError> {
    let table = txn.open_table(TOMBSTONES)?;
    let value = table.get(shard)?;
    Ok(match value {
        Some(v) => Some(super::codec::decode_sealed::<Tombstone>(v.value())?),
        None => None,
    })
}

/// Creates a shard's record; returns the refusal instead when the checks of
/// [`WriteOp::CreateShard`] / [`WriteOp::CreateShardUnlessTombstoned`] decline
/// it (nothing is written then).
fn create_shard(
    txn: &WriteTransaction,
    record: &ShardRecord,
    requested_conf_ver: Option<u64>,
) -> Result<Option<StorageError>, StorageError> {
    let shard = record.shard().0;
    if txn.open_table(SHARDS)?.get(shard)?.is_some() {
        return Ok(Some(StorageError::ShardExists(shard)));
    }
    if let Some(requested) = requested_conf_ver
        && let Some(t) = read_tombstone(txn, shard)?
        && t.conf_ver >= requested
    {
        return Ok(Some(StorageError::Tombstoned { shard, tombstone: t.conf_ver, requested }));
    }
    let mut record = record.clone();
    record.data_id = alloc_data_id(txn)?;
    txn.open_table(SHARDS)?.insert(shard, encode_sealed(&record).as_slice())?;
    Ok(None)
}

/// Deletes a shard's record, log and metadata, marks its data as garbage and
/// raises its tombstone, all in `txn`; returns the refusal instead when the
/// checks of [`WriteOp::DestroyShard`] decline it (nothing is written then).
fn destroy_shard(
    txn: &WriteTransaction,
    shard: u64,
    tombstone_conf_ver: u64,
    max_conf_ver: Option<u64>,
    destroyed_at_ms: u64,
) -> Result<Option<StorageError>, StorageError> {
    let mut shards = txn.open_table(SHARDS)?;
    let record = match shards.get(shard)? {
        Some(v) => super::codec::decode_sealed::<ShardRecord>(v.value())?,
        None => return Ok(Some(StorageError::ShardMissing(shard))),
    };
    let local = record.descriptor.epoch.conf_ver;
    if let Some(allowed) = max_conf_ver
        && local > allowed
    {
        return Ok(Some(StorageError::ReplicaNewer { shard, local, allowed }));
    }
    let old = read_tombstone(txn, shard)?.map(|t| t.conf_ver).unwrap_or(0);
    shards.remove(shard)?;
    let tombstone = Tombstone { conf_ver: old.max(tombstone_conf_ver).max(local), destroyed_at_ms };
    txn.open_table(TOMBSTONES)?.insert(shard, encode_sealed(&tombstone).as_slice())?;
    txn.open_table(DATA_GC)?.insert(record.data_id, GC_GARBAGE)?;
    txn.open_table(RAFT_LOG)?.retain_in((shard, 0)..=(shard, u64::MAX), |_, _| false)?;
    let mut meta = txn.open_table(RAFT_META)?;
    for name in [META_VOTE, META_COMMITTED, META_PURGED] {
        meta.remove((shard, name))?;
    }
    Ok(None)
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

#[cfg(test)]
mod tests {
    use cairn_proto::{Epoch, KeyRange, ShardDescriptor, ShardId};

    use super::*;
    use crate::storage::{Storage, StorageConfig};

    fn record(shard: u64, conf_ver: u64) -> ShardRecord {
        ShardRecord {
            descriptor: ShardDescriptor {
                id: ShardId(shard),
                range: KeyRange::full(),
                epoch: Epoch { conf_ver, version: 1 },
                replicas: vec![],
            },
            data_id: 0,
            applied_index: 0,
            applied_log_id: None,
            membership: None,
            stats: Default::default(),
        }
    }

    fn open() -> (tempfile::TempDir, Arc<Storage>) {
        let dir = tempfile::tempdir().unwrap();
        let storage = Storage::open(&dir.path().join("db"), StorageConfig::default()).unwrap();
        (dir, storage)
    }

    async fn create(storage: &Storage, shard: u64, conf_ver: u64, requested: Option<u64>) -> Result<(), StorageError> {
        let record = record(shard, conf_ver);
        match requested {
            Some(requested_conf_ver) => {
                storage.call(|done| WriteOp::CreateShardUnlessTombstoned { record, requested_conf_ver, done }).await
            }
            None => storage.call(|done| WriteOp::CreateShard { record, done }).await,
        }
    }

    async fn destroy(storage: &Storage, shard: u64, conf_ver: u64, max: Option<u64>) -> Result<(), StorageError> {
        storage
            .call(|done| WriteOp::DestroyShard {
                shard,
                tombstone_conf_ver: conf_ver,
                max_conf_ver: max,
                destroyed_at_ms: 42,
                done,
            })
            .await
    }

    #[tokio::test]
    async fn destroy_leaves_a_tombstone_with_the_record_gone() {
        let (_dir, storage) = open();
        create(&storage, 7, 3, Some(3)).await.unwrap();
        storage
            .call(|done| WriteOp::AppendLog {
                shard: 7,
                entries: vec![(1, vec![1]), (2, vec![2])],
                done: Box::new(move |r| {
                    let _ = done.send(r);
                }),
            })
            .await
            .unwrap();
        let data_id = storage.shard_record(ShardId(7)).unwrap().unwrap().data_id;
        destroy(&storage, 7, 5, Some(5)).await.unwrap();
        assert!(storage.shard_record(ShardId(7)).unwrap().is_none());
        assert!(storage.last_log(ShardId(7)).unwrap().is_none());
        assert_eq!(storage.tombstone(ShardId(7)).unwrap(), Some(Tombstone { conf_ver: 5, destroyed_at_ms: 42 }));
        assert_eq!(storage.tombstones().unwrap(), vec![(ShardId(7), Tombstone { conf_ver: 5, destroyed_at_ms: 42 })]);
        // The documents' data id is garbage (or already collected), never live.
        let txn = storage.begin_read().unwrap();
        let gc = txn.open_table(DATA_GC).unwrap();
        assert!(gc.get(data_id).unwrap().is_none_or(|v| v.value() == GC_GARBAGE));
    }

    #[tokio::test]
    async fn tombstones_refuse_stale_creations_and_only_grow() {
        let (_dir, storage) = open();
        create(&storage, 7, 4, None).await.unwrap();
        // Destroyed with a lower conf_ver than the record's own: the record's wins.
        destroy(&storage, 7, 2, None).await.unwrap();
        assert_eq!(storage.tombstone(ShardId(7)).unwrap().map(|t| t.conf_ver), Some(4));
        for requested in [0, 3, 4] {
            let e = create(&storage, 7, 0, Some(requested)).await.unwrap_err();
            assert!(
                matches!(e, StorageError::Tombstoned { shard: 7, tombstone: 4, requested: r } if r == requested),
                "{e}"
            );
        }
        assert!(storage.shard_record(ShardId(7)).unwrap().is_none());
        // A newer configuration may come back; destroying it again keeps the maximum.
        create(&storage, 7, 0, Some(5)).await.unwrap();
        destroy(&storage, 7, 1, None).await.unwrap();
        assert_eq!(storage.tombstone(ShardId(7)).unwrap().map(|t| t.conf_ver), Some(4));
        // A plain CreateShard (the PD shard's bootstrap) does not look at tombstones.
        create(&storage, 7, 0, None).await.unwrap();
        assert!(matches!(create(&storage, 7, 0, None).await, Err(StorageError::ShardExists(7))));
    }

    #[tokio::test]
    async fn a_destroy_for_an_older_configuration_is_refused() {
        let (_dir, storage) = open();
        create(&storage, 9, 6, None).await.unwrap();
        let e = destroy(&storage, 9, 5, Some(5)).await.unwrap_err();
        assert!(matches!(e, StorageError::ReplicaNewer { shard: 9, local: 6, allowed: 5 }), "{e}");
        assert!(storage.shard_record(ShardId(9)).unwrap().is_some());
        assert!(storage.tombstone(ShardId(9)).unwrap().is_none());
        assert!(matches!(destroy(&storage, 10, 1, None).await, Err(StorageError::ShardMissing(10))));
        // A refusal does not fail the batch it rode in: the writer still works.
        destroy(&storage, 9, 6, Some(6)).await.unwrap();
    }

    #[tokio::test]
    async fn a_corrupt_tombstone_is_an_error_not_a_panic() {
        let (_dir, storage) = open();
        {
            let txn = storage.db.begin_write().unwrap();
            txn.open_table(TOMBSTONES).unwrap().insert(3, &[1u8, 2, 3, 4, 5][..]).unwrap();
            txn.commit().unwrap();
        }
        assert!(matches!(storage.tombstone(ShardId(3)), Err(StorageError::Codec(_))));
        assert!(storage.tombstones().is_err());
        // The creation that has to read it fails, and says why.
        let e = create(&storage, 3, 0, Some(9)).await.unwrap_err();
        assert!(e.to_string().contains("checksum"), "{e}");
        // Other shards are unaffected.
        create(&storage, 4, 0, Some(1)).await.unwrap();
    }

    /// The documents in the first chunk of `shard`'s snapshot, as sent.
    fn sent_docs(storage: &Storage, shard: u64) -> Vec<(Vec<u8>, Vec<u8>)> {
        let view = storage.snapshot_view(ShardId(shard)).unwrap().expect("a record");
        let chunk = view.reader().next_chunk(1 << 20).unwrap().expect("a chunk");
        chunk
            .records()
            .filter_map(|r| match r.unwrap() {
                SnapshotRecord::Doc { key, doc } => Some((key.to_vec(), doc.to_vec())),
                _ => None,
            })
            .collect()
    }

    #[tokio::test]
    async fn a_database_from_before_doc_tails_opens_and_staged_documents_are_paged() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("db");
        let sealed = |n: usize, version: u64| {
            encode_sealed(&StoredDoc { version, created_at_ms: 1, updated_at_ms: 2, value: vec![b'x'; n] })
        };
        let docs: Vec<(Vec<u8>, Vec<u8>)> =
            vec![(b"a".to_vec(), sealed(10_000, 1)), (b"b".to_vec(), sealed(4_100, 2)), (b"c".to_vec(), sealed(10, 3))];
        // A file written before the `doc_tails` table existed: documents whole.
        {
            let db = Database::create(&path).unwrap();
            let txn = db.begin_write().unwrap();
            {
                let mut old = record(1, 1);
                old.data_id = 500;
                txn.open_table(SHARDS).unwrap().insert(1, encode_sealed(&old).as_slice()).unwrap();
                let mut table = txn.open_table(DOCS).unwrap();
                for (k, d) in &docs {
                    table.insert((500, k.as_slice()), d.as_slice()).unwrap();
                }
            }
            txn.commit().unwrap();
        }
        let storage = Storage::open(&path, StorageConfig::default()).unwrap();
        let read_all = |storage: &Storage| -> Vec<(Vec<u8>, Vec<u8>)> {
            storage
                .read_docs(ShardId(1), |_, d| d.scan(&KeyRange::full(), 10))
                .unwrap()
                .0
                .into_iter()
                .map(|(k, d)| (k, encode_sealed(&d)))
                .collect()
        };
        assert_eq!(read_all(&storage), docs);
        assert_eq!(sent_docs(&storage, 1), docs, "a snapshot carries whole documents");

        // Received by snapshot, the documents past a page are stored paged.
        let staging = storage.call(|done| WriteOp::AllocStaging { done }).await.unwrap();
        let mut bytes = Vec::new();
        for (key, doc) in &docs {
            super::super::codec::encode_into(&SnapshotRecord::Doc { key, doc }, &mut bytes);
        }
        let chunk = SnapshotChunk::validate(bytes, docs.len() as u32).unwrap();
        storage.call(|done| WriteOp::StageRecords { data_id: staging, chunk, done }).await.unwrap();
        let mut installed = record(1, 2);
        installed.data_id = staging;
        storage.call(|done| WriteOp::InstallSnapshot { record: installed, done }).await.unwrap();
        assert_eq!(read_all(&storage), docs);
        assert_eq!(sent_docs(&storage, 1), docs, "paged documents are sent whole");
        let paged: std::collections::BTreeSet<Vec<u8>> = {
            let txn = storage.begin_read().unwrap();
            let tails = txn.open_table(DOC_TAILS).unwrap();
            let range = tails.range((staging, &[][..], 0)..(staging + 1, &[][..], 0)).unwrap();
            range.map(|r| r.unwrap().0.value().1.to_vec()).collect()
        };
        assert_eq!(paged, [b"a".to_vec(), b"b".to_vec()].into_iter().collect());

        // The replaced data id goes in the background, heads and tails alike.
        let rows = |data_id: u64| {
            let txn = storage.begin_read().unwrap();
            let heads =
                txn.open_table(DOCS).unwrap().range((data_id, &[][..])..(data_id + 1, &[][..])).unwrap().count();
            let tails = txn
                .open_table(DOC_TAILS)
                .unwrap()
                .range((data_id, &[][..], 0)..(data_id + 1, &[][..], 0))
                .unwrap()
                .count();
            heads + tails
        };
        for _ in 0..1000 {
            if rows(500) == 0 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert_eq!(rows(500), 0, "the old data id is collected");
        assert_eq!(rows(staging), 3 + 3, "3 heads, 2 parts of a and 1 of b");
    }

    #[test]
    fn garbage_collection_rests_in_proportion_to_its_steps() {
        let step = Duration::from_millis(10);
        assert_eq!(gc_rest(step, 25), Duration::from_millis(30));
        assert_eq!(gc_rest(step, 50), step);
        assert_eq!(gc_rest(step, 100), Duration::ZERO, "back to back");
        assert_eq!(gc_rest(step, 0), Duration::from_millis(990), "at least 1 %");
        assert_eq!(gc_rest(step, 250), Duration::ZERO, "at most 100 %");
    }

    /// A dropped replica's documents are deleted a slice at a time, resting
    /// between slices (paced at 1 % here): writes arriving meanwhile commit
    /// without waiting for the deletion to end, the deletion goes on, and a
    /// resting writer stops when the database closes.
    #[tokio::test]
    async fn writes_commit_while_paced_garbage_collection_rests() {
        let dir = tempfile::tempdir().unwrap();
        let config = StorageConfig {
            // One row per slice and a rest of 99 slices' time: deleting 2000
            // rows takes at least 2000 × 99 slices, seconds at the least.
            writer: WriterConfig { gc_rows_per_txn: 1, gc_busy_percent: 1, ..WriterConfig::default() },
            ..StorageConfig::default()
        };
        let storage = Storage::open(&dir.path().join("db"), config).unwrap();
        create(&storage, 7, 1, None).await.unwrap();
        let staging = storage.call(|done| WriteOp::AllocStaging { done }).await.unwrap();
        let doc = encode_sealed(&StoredDoc { version: 1, created_at_ms: 1, updated_at_ms: 1, value: vec![b'x'; 100] });
        let keys: Vec<Vec<u8>> = (0..2000u32).map(|i| format!("k{i:05}").into_bytes()).collect();
        let mut bytes = Vec::new();
        for key in &keys {
            super::super::codec::encode_into(&SnapshotRecord::Doc { key, doc: &doc }, &mut bytes);
        }
        let chunk = SnapshotChunk::validate(bytes, keys.len() as u32).unwrap();
        storage.call(|done| WriteOp::StageRecords { data_id: staging, chunk, done }).await.unwrap();
        let mut installed = record(7, 2);
        installed.data_id = staging;
        storage.call(|done| WriteOp::InstallSnapshot { record: installed, done }).await.unwrap();
        let rows = || {
            let txn = storage.begin_read().unwrap();
            txn.open_table(DOCS).unwrap().range((staging, &[][..])..(staging + 1, &[][..])).unwrap().count()
        };
        assert_eq!(rows(), keys.len());

        destroy(&storage, 7, 3, Some(3)).await.unwrap();
        for i in 0..5u64 {
            create(&storage, 100 + i, 1, None).await.unwrap();
            storage.flush().await.unwrap();
        }
        assert!(rows() > 0, "writes waited for the whole deletion ({} rows)", keys.len());
        // And the deletion goes on between them.
        for _ in 0..1000 {
            if rows() < keys.len() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert!(rows() < keys.len(), "the deletion took no step");
        // Closing wakes the writer from its rest (a hang here is the failure).
        storage.close().await.unwrap();
    }
}
