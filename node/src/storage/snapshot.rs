//! Snapshots of a shard as a consistent read view of its records.
//!
//! A shard's state machine *is* its slice of the database, so building a
//! snapshot costs one read transaction: [`SnapshotView`] pins the records of a
//! data id at one applied index. Sending reads it in bounded chunks
//! ([`SnapshotReader`]); receiving stages chunks under a fresh data id across
//! many small transactions and switches the shard to it at the end. Nothing ever
//! holds a whole shard in memory.

use std::sync::Arc;

use redb::{ReadTransaction, ReadableTable};
use serde::{Deserialize, Serialize};

use super::StorageError;
use super::tables::*;

/// One record of a shard as it travels in a snapshot.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum SnapshotRecord {
    /// `doc` is the sealed stored document, verified by the receiver.
    Doc {
        key: Vec<u8>,
        doc: Vec<u8>,
    },
    Session {
        client: u64,
        seq: u64,
        response: Vec<u8>,
    },
    Client {
        client: u64,
        last_seen_ms: u64,
    },
}

impl SnapshotRecord {
    pub fn size_bytes(&self) -> usize {
        match self {
            SnapshotRecord::Doc { key, doc } => key.len() + doc.len() + 16,
            SnapshotRecord::Session { response, .. } => response.len() + 24,
            SnapshotRecord::Client { .. } => 24,
        }
    }

    /// Checks what a peer sent before it is staged.
    pub fn validate(&self) -> Result<(), StorageError> {
        match self {
            SnapshotRecord::Doc { doc, .. } => {
                super::codec::decode_sealed::<StoredDoc>(doc)?;
            }
            SnapshotRecord::Session { response, .. } => {
                super::codec::decode_sealed::<crate::command::CommandResponse>(response)?;
            }
            SnapshotRecord::Client { .. } => {}
        }
        Ok(())
    }
}

/// A consistent view of one shard's records at one applied index.
#[derive(Clone)]
pub struct SnapshotView {
    pub record: ShardRecord,
    pub txn: Arc<ReadTransaction>,
}

impl std::fmt::Debug for SnapshotView {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SnapshotView")
            .field("shard", &self.record.descriptor.id)
            .field("data_id", &self.record.data_id)
            .field("applied_index", &self.record.applied_index)
            .finish()
    }
}

impl SnapshotView {
    pub fn reader(&self) -> SnapshotReader {
        SnapshotReader { view: self.clone(), phase: Phase::Docs(None) }
    }
}

enum Phase {
    Docs(Option<Vec<u8>>),
    Sessions(Option<(u64, u64)>),
    Clients(Option<u64>),
    Done,
}

/// Reads a [`SnapshotView`] in chunks of at most about `max_bytes`.
pub struct SnapshotReader {
    view: SnapshotView,
    phase: Phase,
}

impl SnapshotReader {
    /// The next chunk, or `None` at the end. Blocking: call from a blocking thread.
    pub fn next_chunk(&mut self, max_bytes: usize) -> Result<Option<Vec<SnapshotRecord>>, StorageError> {
        let data_id = self.view.record.data_id;
        let mut out = Vec::new();
        let mut size = 0usize;
        loop {
            match &self.phase {
                Phase::Docs(after) => {
                    let table = self.view.txn.open_table(DOCS)?;
                    let mut last = None;
                    let range = match after {
                        Some(k) => table.range((data_id, k.as_slice())..(data_id + 1, &[][..]))?,
                        None => table.range((data_id, &[][..])..(data_id + 1, &[][..]))?,
                    };
                    let mut full = false;
                    for item in range {
                        let (k, v) = item?;
                        let key = k.value().1.to_vec();
                        if after.as_ref() == Some(&key) {
                            continue;
                        }
                        let rec = SnapshotRecord::Doc { key: key.clone(), doc: v.value().to_vec() };
                        size += rec.size_bytes();
                        out.push(rec);
                        last = Some(key);
                        if size >= max_bytes {
                            full = true;
                            break;
                        }
                    }
                    self.phase = if full { Phase::Docs(last) } else { Phase::Sessions(None) };
                }
                Phase::Sessions(after) => {
                    let table = self.view.txn.open_table(SESSIONS)?;
                    let start = match after {
                        Some((c, s)) => (data_id, *c, *s),
                        None => (data_id, 0, 0),
                    };
                    let mut last = None;
                    let mut full = false;
                    for item in table.range(start..=(data_id, u64::MAX, u64::MAX))? {
                        let (k, v) = item?;
                        let (_, client, seq) = k.value();
                        if *after == Some((client, seq)) {
                            continue;
                        }
                        let rec = SnapshotRecord::Session { client, seq, response: v.value().to_vec() };
                        size += rec.size_bytes();
                        out.push(rec);
                        last = Some((client, seq));
                        if size >= max_bytes {
                            full = true;
                            break;
                        }
                    }
                    self.phase = if full { Phase::Sessions(last) } else { Phase::Clients(None) };
                }
                Phase::Clients(after) => {
                    let table = self.view.txn.open_table(SESSION_CLIENTS)?;
                    let start = (data_id, after.unwrap_or(0));
                    let mut last = None;
                    let mut full = false;
                    for item in table.range(start..=(data_id, u64::MAX))? {
                        let (k, v) = item?;
                        let client = k.value().1;
                        if *after == Some(client) {
                            continue;
                        }
                        let rec = SnapshotRecord::Client { client, last_seen_ms: v.value() };
                        size += rec.size_bytes();
                        out.push(rec);
                        last = Some(client);
                        if size >= max_bytes {
                            full = true;
                            break;
                        }
                    }
                    self.phase = if full { Phase::Clients(last) } else { Phase::Done };
                }
                Phase::Done => {
                    return Ok(if out.is_empty() { None } else { Some(out) });
                }
            }
            if size >= max_bytes {
                return Ok(Some(out));
            }
        }
    }
}
