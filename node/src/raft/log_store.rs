//! `RaftLogStorage` for one shard over the node's shared storage writer.
//!
//! `append` returns at once: entries go into an in-memory `pending` map (so the
//! log reader sees them immediately, as openraft requires) and to the writer,
//! whose group commit makes them durable and then fires openraft's flush
//! callback and drops them from `pending`. Votes, truncations and purges wait for
//! their durable commit before returning.

use std::collections::BTreeMap;
use std::fmt::Debug;
use std::io;
use std::ops::{Bound, RangeBounds};
use std::sync::{Arc, Mutex};

use cairn_proto::ShardId;
use openraft::storage::{IOFlushed, LogState, RaftLogStorage};
use openraft::{OptionalSend, RaftLogReader};

use super::types::{Entry, LogId, TypeConfig, Vote};
use crate::storage::codec::{decode, encode, encode_sealed};
use crate::storage::tables::{META_COMMITTED, META_PURGED, META_VOTE};
use crate::storage::{Storage, WriteOp};

#[derive(Clone)]
pub struct LogStore {
    shard: ShardId,
    storage: Arc<Storage>,
    shared: Arc<Shared>,
}

struct Shared {
    /// Entries appended but not yet durable, by index.
    pending: Mutex<BTreeMap<u64, Entry>>,
    vote: Mutex<Option<Vote>>,
}

impl LogStore {
    pub fn open(shard: ShardId, storage: Arc<Storage>) -> io::Result<Self> {
        let vote = match storage.raft_meta(shard, META_VOTE)? {
            Some(bytes) => Some(decode::<Vote>(&bytes).map_err(io::Error::from)?),
            None => None,
        };
        Ok(Self {
            shard,
            storage,
            shared: Arc::new(Shared { pending: Mutex::new(BTreeMap::new()), vote: Mutex::new(vote) }),
        })
    }

    fn pending(&self) -> std::sync::MutexGuard<'_, BTreeMap<u64, Entry>> {
        self.shared.pending.lock().expect("pending log lock poisoned")
    }
}

fn bounds(range: &impl RangeBounds<u64>) -> (u64, u64) {
    let start = match range.start_bound() {
        Bound::Included(s) => *s,
        Bound::Excluded(s) => s.saturating_add(1),
        Bound::Unbounded => 0,
    };
    let end = match range.end_bound() {
        Bound::Included(e) => e.saturating_add(1),
        Bound::Excluded(e) => *e,
        Bound::Unbounded => u64::MAX,
    };
    (start, end)
}

impl RaftLogReader<TypeConfig> for LogStore {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + OptionalSend>(
        &mut self,
        range: RB,
    ) -> Result<Vec<Entry>, io::Error> {
        let (start, end) = bounds(&range);
        // Pending first: an entry leaves `pending` only after it is committed, so
        // anything missing from this copy is found by the database read below.
        let pending: Vec<(u64, Entry)> = self.pending().range(start..end).map(|(i, e)| (*i, e.clone())).collect();
        let mut out: BTreeMap<u64, Entry> = BTreeMap::new();
        for (index, bytes) in self.storage.log_range(self.shard, start, end)? {
            out.insert(index, decode::<Entry>(&bytes).map_err(io::Error::from)?);
        }
        out.extend(pending);
        Ok(out.into_values().collect())
    }

    async fn read_vote(&mut self) -> Result<Option<Vote>, io::Error> {
        Ok(*self.shared.vote.lock().expect("vote lock poisoned"))
    }
}

impl RaftLogStorage<TypeConfig> for LogStore {
    type LogReader = LogStore;

    async fn get_log_state(&mut self) -> Result<LogState<TypeConfig>, io::Error> {
        let last_purged_log_id = match self.storage.raft_meta(self.shard, META_PURGED)? {
            Some(bytes) => Some(decode::<LogId>(&bytes).map_err(io::Error::from)?),
            None => None,
        };
        let pending_last = self.pending().values().next_back().map(|e| e.log_id);
        let stored_last = match self.storage.last_log(self.shard)? {
            Some((_, bytes)) => Some(decode::<Entry>(&bytes).map_err(io::Error::from)?.log_id),
            None => None,
        };
        let last_log_id = pending_last.or(stored_last).or(last_purged_log_id);
        Ok(LogState { last_purged_log_id, last_log_id })
    }

    async fn get_log_reader(&mut self) -> Self::LogReader {
        self.clone()
    }

    async fn save_vote(&mut self, vote: &Vote) -> Result<(), io::Error> {
        *self.shared.vote.lock().expect("vote lock poisoned") = Some(*vote);
        let bytes = encode(vote);
        let shard = self.shard.0;
        self.storage.call(|done| WriteOp::SaveVote { shard, vote: bytes, done }).await?;
        Ok(())
    }

    async fn save_committed(&mut self, committed: Option<LogId>) -> Result<(), io::Error> {
        let committed = committed.map(|c| encode(&c));
        self.storage.submit(WriteOp::SaveCommitted { shard: self.shard.0, committed }).await?;
        Ok(())
    }

    async fn read_committed(&mut self) -> Result<Option<LogId>, io::Error> {
        Ok(match self.storage.raft_meta(self.shard, META_COMMITTED)? {
            Some(bytes) => Some(decode::<LogId>(&bytes).map_err(io::Error::from)?),
            None => None,
        })
    }

    async fn append<I>(&mut self, entries: I, callback: IOFlushed<TypeConfig>) -> Result<(), io::Error>
    where
        I: IntoIterator<Item = Entry> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        let mut encoded = Vec::new();
        let mut ids = Vec::new();
        {
            let mut pending = self.pending();
            for entry in entries {
                let index = entry.log_id.index;
                encoded.push((index, encode_sealed(&entry)));
                ids.push(entry.log_id);
                pending.insert(index, entry);
            }
        }
        let shared = self.shared.clone();
        let done = Box::new(move |result: Result<(), crate::storage::StorageError>| {
            if result.is_ok() {
                let mut pending = shared.pending.lock().expect("pending log lock poisoned");
                for id in ids {
                    // A truncation may have replaced the entry; keep the newer one.
                    if pending.get(&id.index).map(|e| e.log_id == id).unwrap_or(false) {
                        pending.remove(&id.index);
                    }
                }
            }
            callback.io_completed(result.map_err(io::Error::from));
        });
        self.storage.submit(WriteOp::AppendLog { shard: self.shard.0, entries: encoded, done }).await?;
        Ok(())
    }

    async fn truncate_after(&mut self, last_log_id: Option<LogId>) -> Result<(), io::Error> {
        let from_index = last_log_id.map(|l| l.index + 1).unwrap_or(0);
        self.pending().retain(|i, _| *i < from_index);
        let shard = self.shard.0;
        self.storage.call(|done| WriteOp::TruncateLog { shard, from_index, done }).await?;
        Ok(())
    }

    async fn purge(&mut self, log_id: LogId) -> Result<(), io::Error> {
        self.pending().retain(|i, _| *i > log_id.index);
        let shard = self.shard.0;
        let purged = encode(&log_id);
        self.storage.call(|done| WriteOp::PurgeLog { shard, upto_index: log_id.index, purged, done }).await?;
        Ok(())
    }
}
