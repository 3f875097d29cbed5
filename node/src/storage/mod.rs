//! Storage of a node: one redb database file for every hosted shard's Raft log,
//! vote, applied state, documents, sessions and snapshot staging.
//!
//! Invariants:
//! - Only the writer thread ([`writer`]) writes; everyone else submits a
//!   [`WriteOp`] and awaits its reply. Readers open their own read transactions.
//! - A shard's documents and its `applied` index change in the same transaction.
//! - Everything stored is sealed with a CRC32 and verified when read.
//!
//! This module knows nothing of openraft: log entries, votes and memberships are
//! opaque bytes here; `crate::raft` gives them meaning.

pub mod apply;
pub mod backend;
pub mod codec;
pub mod docs;
pub mod snapshot;
pub mod tables;
pub mod writer;

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use cairn_proto::{KeyRange, ShardId};
use redb::{Database, ReadTransaction, ReadableDatabase, ReadableTable};
use tokio::sync::{mpsc, oneshot};

use self::backend::{CountingBackend, IoCounters};
use self::codec::{decode_sealed, unseal};
use self::snapshot::SnapshotView;
use self::tables::*;
pub use self::writer::{FlushCallback, Reply, WriteOp, WriterConfig, WriterCounters};

#[derive(Debug, thiserror::Error)]
pub enum StorageError {
    #[error("database: {0}")]
    Database(#[from] redb::DatabaseError),
    #[error("transaction: {0}")]
    Transaction(#[from] redb::TransactionError),
    #[error("table: {0}")]
    Table(#[from] redb::TableError),
    #[error("storage: {0}")]
    Storage(#[from] redb::StorageError),
    #[error("commit: {0}")]
    Commit(#[from] redb::CommitError),
    #[error("durability: {0}")]
    Durability(#[from] redb::SetDurabilityError),
    #[error("corrupt record: {0}")]
    Codec(#[from] codec::CodecError),
    #[error("io: {0}")]
    Io(#[from] std::io::Error),
    #[error("shard {0} has no record in this node's database")]
    ShardMissing(u64),
    #[error("shard {0} already exists in this node's database")]
    ShardExists(u64),
    /// A replica of the shard was destroyed here at `tombstone`; one asked for
    /// at `requested` (not newer) is stale.
    #[error("shard {shard} was destroyed here at conf_ver {tombstone}; refusing a replica at conf_ver {requested}")]
    Tombstoned { shard: u64, tombstone: u64, requested: u64 },
    /// The replica's configuration moved past the one a destroy was asked for.
    #[error("shard {shard}'s replica is at conf_ver {local}, newer than the {allowed} the destroy was asked for")]
    ReplicaNewer { shard: u64, local: u64, allowed: u64 },
    #[error("the storage writer has stopped")]
    Closed,
    #[error("{0}")]
    Failed(String),
}

impl From<StorageError> for std::io::Error {
    fn from(e: StorageError) -> Self {
        match e {
            StorageError::Io(e) => e,
            other => std::io::Error::other(other),
        }
    }
}

#[derive(Clone, Debug)]
pub struct StorageConfig {
    /// Capacity of the writer's queue (ops); senders wait when it is full.
    pub queue_ops_max: usize,
    pub writer: WriterConfig,
    /// redb page cache.
    pub cache_bytes: usize,
}

impl Default for StorageConfig {
    fn default() -> Self {
        Self { queue_ops_max: 16 * 1024, writer: WriterConfig::default(), cache_bytes: 256 << 20 }
    }
}

/// Snapshot of the storage counters.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct StorageStats {
    pub fsyncs: u64,
    pub bytes_written: u64,
    pub durable_commits: u64,
    pub nondurable_commits: u64,
    pub log_entries_persisted: u64,
    pub ops: u64,
}

pub struct Storage {
    path: PathBuf,
    db: Arc<Database>,
    tx: mpsc::Sender<WriteOp>,
    io: Arc<IoCounters>,
    counters: Arc<WriterCounters>,
    crashed: Arc<AtomicBool>,
    thread: Mutex<Option<std::thread::JoinHandle<()>>>,
    /// Ops submitted, and how far the writer has got (waited on only in a
    /// simulation).
    submitted: AtomicU64,
    progress: Arc<writer::Progress>,
}

impl std::fmt::Debug for Storage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Storage").field("path", &self.path).finish()
    }
}

impl Storage {
    /// Opens (or creates) the database file at `path` and starts the writer thread.
    pub fn open(path: &Path, config: StorageConfig) -> Result<Arc<Storage>, StorageError> {
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir)?;
        }
        let file = std::fs::OpenOptions::new().read(true).write(true).create(true).truncate(false).open(path)?;
        let io = Arc::new(IoCounters::default());
        let crashed = Arc::new(AtomicBool::new(false));
        let backend = if crate::test_hooks::loses_unsynced_writes(path) {
            tracing::warn!(path = %path.display(), "test hook: this database loses unsynced writes when the node crashes");
            CountingBackend::losing_unsynced(file, io.clone(), crashed.clone())
        } else {
            CountingBackend::new(file, io.clone())
        };
        let db = redb::Builder::new().set_cache_size(config.cache_bytes).create_with_backend(backend)?;
        let db = Arc::new(db);
        Self::prepare(&db)?;
        let (tx, rx) = mpsc::channel(config.queue_ops_max);
        let counters = Arc::new(WriterCounters::default());
        let progress = Arc::new(writer::Progress::default());
        let writer = writer::Writer {
            db: db.clone(),
            rx,
            config: config.writer.clone(),
            counters: counters.clone(),
            crashed: crashed.clone(),
            path: path.to_path_buf(),
            held: Vec::new(),
            progress: progress.clone(),
        };
        let thread = std::thread::Builder::new().name("cairn-writer".into()).spawn(move || writer.run())?;
        Ok(Arc::new(Storage {
            path: path.to_path_buf(),
            db,
            tx,
            io,
            counters,
            crashed,
            thread: Mutex::new(Some(thread)),
            submitted: AtomicU64::new(0),
            progress,
        }))
    }

    /// Creates every table and turns snapshot staging left by a crash into garbage.
    fn prepare(db: &Database) -> Result<(), StorageError> {
        let txn = db.begin_write()?;
        {
            txn.open_table(RAFT_LOG)?;
            txn.open_table(RAFT_META)?;
            txn.open_table(SHARDS)?;
            txn.open_table(DOCS)?;
            txn.open_table(DOC_TAILS)?;
            txn.open_table(SESSIONS)?;
            txn.open_table(SESSION_CLIENTS)?;
            txn.open_table(NODE_META)?;
            txn.open_table(TOMBSTONES)?;
            let mut gc = txn.open_table(DATA_GC)?;
            let staging: Vec<u64> = gc
                .iter()?
                .filter_map(|r| match r {
                    Ok((k, v)) if v.value() == GC_STAGING => Some(Ok(k.value())),
                    Ok(_) => None,
                    Err(e) => Some(Err(e)),
                })
                .collect::<Result<_, _>>()?;
            for id in staging {
                gc.insert(id, GC_GARBAGE)?;
            }
        }
        txn.commit()?;
        Ok(())
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Queues a write; waits only while the queue is full.
    pub async fn submit(&self, op: WriteOp) -> Result<(), StorageError> {
        if self.crashed.load(Ordering::Acquire) {
            return Err(StorageError::Closed);
        }
        let ticket = self.submitted.fetch_add(1, Ordering::Relaxed) + 1;
        self.tx.send(op).await.map_err(|_| StorageError::Closed)?;
        if cairn_proto::sim::active() {
            // One thread runs the whole simulation: wait here, so the
            // writer's real time never passes as simulated time.
            self.progress.wait_for(ticket);
        }
        Ok(())
    }

    /// Queues a write and waits for its reply.
    pub async fn call<T>(&self, make: impl FnOnce(Reply<T>) -> WriteOp) -> Result<T, StorageError> {
        let (tx, rx) = oneshot::channel();
        self.submit(make(tx)).await?;
        rx.await.map_err(|_| StorageError::Closed)?
    }

    /// Waits until everything submitted so far is durable.
    pub async fn flush(&self) -> Result<(), StorageError> {
        self.call(|done| WriteOp::Barrier { done }).await
    }

    pub fn stats(&self) -> StorageStats {
        StorageStats {
            fsyncs: self.io.fsyncs.load(Ordering::Relaxed),
            bytes_written: self.io.bytes_written.load(Ordering::Relaxed),
            durable_commits: self.counters.durable_commits.load(Ordering::Relaxed),
            nondurable_commits: self.counters.nondurable_commits.load(Ordering::Relaxed),
            log_entries_persisted: self.counters.log_entries_persisted.load(Ordering::Relaxed),
            ops: self.counters.ops.load(Ordering::Relaxed),
        }
    }

    /// Size of the database file.
    pub fn file_bytes(&self) -> u64 {
        std::fs::metadata(&self.path).map(|m| m.len()).unwrap_or(0)
    }

    /// Simulates a process crash: nothing queued or in flight commits any more.
    /// Only what earlier durable commits wrote survives, as after a SIGKILL.
    pub fn crash(&self) {
        self.crashed.store(true, Ordering::Release);
        // Wake the writer so it notices; the op is dropped unexecuted.
        let _ = self.tx.try_send(WriteOp::SaveCommitted { shard: u64::MAX, committed: None });
        self.join_writer();
    }

    /// Flushes and stops the writer thread. Later submits fail with `Closed`.
    pub async fn close(&self) -> Result<(), StorageError> {
        let r = self.flush().await;
        self.crashed.store(true, Ordering::Release);
        let _ = self.tx.try_send(WriteOp::SaveCommitted { shard: u64::MAX, committed: None });
        let handle = self.thread.lock().expect("writer handle lock").take();
        if let Some(h) = handle {
            let _ = tokio::task::spawn_blocking(move || h.join()).await;
        }
        r
    }

    fn join_writer(&self) {
        let handle = self.thread.lock().expect("writer handle lock").take();
        if let Some(h) = handle {
            let _ = h.join();
        }
    }

    pub fn begin_read(&self) -> Result<ReadTransaction, StorageError> {
        Ok(self.db.begin_read()?)
    }

    // ------------------------------------------------------------------ reads

    pub fn node_meta(&self, key: &str) -> Result<Option<Vec<u8>>, StorageError> {
        let txn = self.begin_read()?;
        let table = txn.open_table(NODE_META)?;
        Ok(match table.get(key)? {
            Some(v) => Some(unseal(v.value())?.to_vec()),
            None => None,
        })
    }

    /// The tombstone of `shard`, verified (checksum and decoding) on read.
    pub fn tombstone(&self, shard: ShardId) -> Result<Option<Tombstone>, StorageError> {
        let txn = self.begin_read()?;
        let table = txn.open_table(TOMBSTONES)?;
        Ok(match table.get(shard.0)? {
            Some(v) => Some(decode_sealed(v.value())?),
            None => None,
        })
    }

    /// Every tombstone, in shard order; the first corrupt one is an error.
    pub fn tombstones(&self) -> Result<Vec<(ShardId, Tombstone)>, StorageError> {
        let txn = self.begin_read()?;
        let table = txn.open_table(TOMBSTONES)?;
        let mut out = Vec::new();
        for item in table.iter()? {
            let (k, v) = item?;
            out.push((ShardId(k.value()), decode_sealed(v.value())?));
        }
        Ok(out)
    }

    pub fn shard_records(&self) -> Result<Vec<ShardRecord>, StorageError> {
        let txn = self.begin_read()?;
        let table = txn.open_table(SHARDS)?;
        let mut out = Vec::new();
        for item in table.iter()? {
            let (_, v) = item?;
            out.push(decode_sealed(v.value())?);
        }
        Ok(out)
    }

    pub fn shard_record(&self, shard: ShardId) -> Result<Option<ShardRecord>, StorageError> {
        let txn = self.begin_read()?;
        read_shard_record(&txn, shard.0)
    }

    pub fn raft_meta(&self, shard: ShardId, name: &str) -> Result<Option<Vec<u8>>, StorageError> {
        let txn = self.begin_read()?;
        let table = txn.open_table(RAFT_META)?;
        Ok(match table.get((shard.0, name))? {
            Some(v) => Some(unseal(v.value())?.to_vec()),
            None => None,
        })
    }

    /// Log entries with `start <= index < end`, unsealed, in index order.
    pub fn log_range(&self, shard: ShardId, start: u64, end: u64) -> Result<Vec<(u64, Vec<u8>)>, StorageError> {
        if start >= end {
            return Ok(Vec::new());
        }
        let txn = self.begin_read()?;
        let table = txn.open_table(RAFT_LOG)?;
        let mut out = Vec::new();
        for item in table.range((shard.0, start)..(shard.0, end))? {
            let (k, v) = item?;
            out.push((k.value().1, unseal(v.value())?.to_vec()));
        }
        Ok(out)
    }

    /// The last log entry of a shard, unsealed.
    pub fn last_log(&self, shard: ShardId) -> Result<Option<(u64, Vec<u8>)>, StorageError> {
        let txn = self.begin_read()?;
        let table = txn.open_table(RAFT_LOG)?;
        let last = table.range((shard.0, 0)..=(shard.0, u64::MAX))?.next_back();
        Ok(match last {
            Some(item) => {
                let (k, v) = item?;
                Some((k.value().1, unseal(v.value())?.to_vec()))
            }
            None => None,
        })
    }

    /// A consistent read view of one shard's records.
    pub fn snapshot_view(&self, shard: ShardId) -> Result<Option<SnapshotView>, StorageError> {
        let txn = self.begin_read()?;
        let Some(record) = read_shard_record(&txn, shard.0)? else {
            return Ok(None);
        };
        Ok(Some(SnapshotView { record, txn: Arc::new(txn) }))
    }

    /// Reads documents of a shard in one read transaction, so they are consistent
    /// with each other and with the returned record.
    pub fn read_docs<T>(
        &self,
        shard: ShardId,
        f: impl FnOnce(&ShardRecord, &DocReader) -> Result<T, StorageError>,
    ) -> Result<T, StorageError> {
        let txn = self.begin_read()?;
        let record = read_shard_record(&txn, shard.0)?.ok_or(StorageError::ShardMissing(shard.0))?;
        let reader =
            DocReader { data_id: record.data_id, table: txn.open_table(DOCS)?, tails: txn.open_table(DOC_TAILS)? };
        f(&record, &reader)
    }
}

fn read_shard_record(txn: &ReadTransaction, shard: u64) -> Result<Option<ShardRecord>, StorageError> {
    let table = txn.open_table(SHARDS)?;
    Ok(match table.get(shard)? {
        Some(v) => Some(decode_sealed(v.value())?),
        None => None,
    })
}

/// Documents in key order, and the key to continue from if the limit cut the scan short.
pub type ScanPage = (Vec<(Vec<u8>, StoredDoc)>, Option<Vec<u8>>);

/// Document reads within one read transaction.
pub struct DocReader {
    data_id: u64,
    table: redb::ReadOnlyTable<(u64, &'static [u8]), &'static [u8]>,
    tails: redb::ReadOnlyTable<(u64, &'static [u8], u32), &'static [u8]>,
}

impl DocReader {
    pub fn get(&self, key: &[u8]) -> Result<Option<StoredDoc>, StorageError> {
        docs::get(&self.table, &self.tails, self.data_id, key)
    }

    /// Up to `limit` documents with keys in `range`, in key order; also returns
    /// the key to continue from when the limit cut the scan short.
    pub fn scan(&self, range: &KeyRange, limit: usize) -> Result<ScanPage, StorageError> {
        let start: (u64, &[u8]) = (self.data_id, range.start.as_slice());
        let iter = if range.end.is_empty() {
            self.table.range(start..(self.data_id + 1, &[][..]))?
        } else {
            self.table.range(start..(self.data_id, range.end.as_slice()))?
        };
        let mut out = Vec::new();
        for item in iter {
            let (k, v) = item?;
            let key = k.value().1.to_vec();
            if out.len() == limit {
                return Ok((out, Some(key)));
            }
            let record = docs::whole_record(&self.tails, self.data_id, &key, v.value())?;
            out.push((key, decode_sealed(&record)?));
        }
        Ok((out, None))
    }
}
