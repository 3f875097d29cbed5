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

/// One record of a shard as it travels in a snapshot, borrowing its bytes
/// from the chunk (sending: from the read view) so that nothing is copied
/// record by record. The byte fields are byte strings (`serde_bytes`): serde
/// serialises a plain `&[u8]` as a sequence, one `u8` call per byte (the same
/// bytes in bincode, at ~10 % of a move's CPU).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum SnapshotRecord<'a> {
    /// `doc` is the sealed stored document, verified by the receiver.
    Doc {
        #[serde(borrow, with = "serde_bytes")]
        key: &'a [u8],
        #[serde(borrow, with = "serde_bytes")]
        doc: &'a [u8],
    },
    Session {
        client: u64,
        seq: u64,
        #[serde(borrow, with = "serde_bytes")]
        response: &'a [u8],
    },
    Client {
        client: u64,
        last_seen_ms: u64,
    },
}

impl SnapshotRecord<'_> {
    /// Checks what a peer sent before it is staged.
    fn validate(&self) -> Result<(), StorageError> {
        match self {
            SnapshotRecord::Doc { doc, .. } => {
                super::codec::decode_sealed_borrowed::<StoredDocRef<'_>>(doc)?;
            }
            SnapshotRecord::Session { response, .. } => {
                super::codec::decode_sealed::<crate::command::CommandResponse>(response)?;
            }
            SnapshotRecord::Client { .. } => {}
        }
        Ok(())
    }
}

/// A chunk of a snapshot: records encoded one after another.
#[derive(Debug, Default)]
pub struct SnapshotChunk {
    bytes: Vec<u8>,
    count: u32,
}

impl SnapshotChunk {
    fn push(&mut self, record: &SnapshotRecord<'_>) {
        super::codec::encode_into(record, &mut self.bytes);
        self.count += 1;
    }

    pub fn len_bytes(&self) -> usize {
        self.bytes.len()
    }

    pub fn count(&self) -> u32 {
        self.count
    }

    pub fn into_parts(self) -> (Vec<u8>, u32) {
        (self.bytes, self.count)
    }

    /// Checks a chunk a peer sent: it holds exactly `count` records, each of
    /// which decodes and verifies (documents and session answers carry their
    /// own checksums). Nothing is staged from a chunk that fails.
    pub fn validate(bytes: Vec<u8>, count: u32) -> Result<SnapshotChunk, StorageError> {
        let chunk = SnapshotChunk { bytes, count };
        let mut seen = 0u64;
        for record in chunk.records() {
            record?.validate()?;
            seen += 1;
        }
        if seen != u64::from(count) {
            return Err(super::codec::CodecError::RecordCount { found: seen, said: u64::from(count) }.into());
        }
        Ok(chunk)
    }

    /// The records, decoded in place.
    pub fn records(&self) -> impl Iterator<Item = Result<SnapshotRecord<'_>, StorageError>> {
        let mut rest = self.bytes.as_slice();
        std::iter::from_fn(move || {
            if rest.is_empty() {
                return None;
            }
            match super::codec::decode_borrowed_prefix::<SnapshotRecord<'_>>(rest) {
                Ok((record, used)) => {
                    rest = &rest[used..];
                    Some(Ok(record))
                }
                Err(e) => {
                    rest = &[];
                    Some(Err(e.into()))
                }
            }
        })
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
    /// The next chunk of about `max_bytes` (at least one record), or `None` at
    /// the end. Blocking: call from a blocking thread.
    pub fn next_chunk(&mut self, max_bytes: usize) -> Result<Option<SnapshotChunk>, StorageError> {
        let data_id = self.view.record.data_id;
        // Room for the chunk and the record that crosses the bound, so the
        // buffer is not regrown (and copied) while it fills.
        let mut out = SnapshotChunk { bytes: Vec::with_capacity(max_bytes + (max_bytes / 4).min(256 << 10)), count: 0 };
        loop {
            match &self.phase {
                Phase::Docs(after) => {
                    let table = self.view.txn.open_table(DOCS)?;
                    let tails = self.view.txn.open_table(DOC_TAILS)?;
                    let range = match after {
                        Some(k) => table.range((data_id, k.as_slice())..(data_id + 1, &[][..]))?,
                        None => table.range((data_id, &[][..])..(data_id + 1, &[][..]))?,
                    };
                    let mut next = Phase::Sessions(None);
                    for item in range {
                        let (k, v) = item?;
                        let key = k.value().1;
                        if after.as_deref() == Some(key) {
                            continue;
                        }
                        let doc = super::docs::whole_record(&tails, data_id, key, v.value())?;
                        out.push(&SnapshotRecord::Doc { key, doc: &doc });
                        if out.len_bytes() >= max_bytes {
                            next = Phase::Docs(Some(key.to_vec()));
                            break;
                        }
                    }
                    self.phase = next;
                }
                Phase::Sessions(after) => {
                    let table = self.view.txn.open_table(SESSIONS)?;
                    let start = match after {
                        Some((c, s)) => (data_id, *c, *s),
                        None => (data_id, 0, 0),
                    };
                    let mut next = Phase::Clients(None);
                    for item in table.range(start..=(data_id, u64::MAX, u64::MAX))? {
                        let (k, v) = item?;
                        let (_, client, seq) = k.value();
                        if *after == Some((client, seq)) {
                            continue;
                        }
                        out.push(&SnapshotRecord::Session { client, seq, response: v.value() });
                        if out.len_bytes() >= max_bytes {
                            next = Phase::Sessions(Some((client, seq)));
                            break;
                        }
                    }
                    self.phase = next;
                }
                Phase::Clients(after) => {
                    let table = self.view.txn.open_table(SESSION_CLIENTS)?;
                    let start = (data_id, after.unwrap_or(0));
                    let mut next = Phase::Done;
                    for item in table.range(start..=(data_id, u64::MAX))? {
                        let (k, v) = item?;
                        let client = k.value().1;
                        if *after == Some(client) {
                            continue;
                        }
                        out.push(&SnapshotRecord::Client { client, last_seen_ms: v.value() });
                        if out.len_bytes() >= max_bytes {
                            next = Phase::Clients(Some(client));
                            break;
                        }
                    }
                    self.phase = next;
                }
                Phase::Done => {
                    return Ok(if out.count() == 0 { None } else { Some(out) });
                }
            }
            if out.len_bytes() >= max_bytes {
                return Ok(Some(out));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::storage::codec::encode_sealed;

    fn doc(value: &[u8]) -> Vec<u8> {
        encode_sealed(&StoredDoc { version: 7, created_at_ms: 1, updated_at_ms: 2, value: value.to_vec() })
    }

    fn chunk_of(records: &[SnapshotRecord<'_>]) -> (Vec<u8>, u32) {
        let mut chunk = SnapshotChunk::default();
        for r in records {
            chunk.push(r);
        }
        chunk.into_parts()
    }

    #[test]
    fn a_chunk_round_trips_and_bad_chunks_are_refused() {
        let (a, b) = (doc(br#"{"a":1}"#), doc(br#"{"b":2}"#));
        let answer = encode_sealed(&crate::command::CommandResponse::Put { version: 3 });
        let records = vec![
            SnapshotRecord::Doc { key: b"a", doc: &a },
            SnapshotRecord::Doc { key: b"b", doc: &b },
            SnapshotRecord::Session { client: 4, seq: 5, response: &answer },
            SnapshotRecord::Client { client: 4, last_seen_ms: 6 },
        ];
        let (bytes, count) = chunk_of(&records);
        assert_eq!(count, 4);
        // The wire format: variant, then each byte field as its length and bytes.
        let (one, _) = chunk_of(&[SnapshotRecord::Doc { key: b"k", doc: b"dd" }]);
        assert_eq!(one, [0, 1, b'k', 2, b'd', b'd']);
        let chunk = SnapshotChunk::validate(bytes.clone(), count).expect("a good chunk");
        let back: Vec<_> = chunk.records().collect::<Result<_, _>>().expect("decodes");
        assert_eq!(back, records);

        // Announced count differs from the records present.
        assert!(SnapshotChunk::validate(bytes.clone(), 3).is_err());
        assert!(SnapshotChunk::validate(bytes.clone(), 5).is_err());
        // Cut short in the middle of a record.
        assert!(SnapshotChunk::validate(bytes[..bytes.len() - 3].to_vec(), 4).is_err());
        // A document whose own checksum fails (one byte of its value flipped).
        let pos = bytes.windows(5).position(|w| w == br#"{"a":"#).expect("value present");
        let mut flipped = bytes.clone();
        flipped[pos + 5] ^= 0x01;
        let e = SnapshotChunk::validate(flipped, 4).expect_err("corrupt document");
        assert!(e.to_string().contains("checksum"), "{e}");
        // A document that is not a sealed stored document at all.
        let (bytes, count) = chunk_of(&[SnapshotRecord::Doc { key: b"k", doc: b"not sealed" }]);
        assert!(SnapshotChunk::validate(bytes, count).is_err());
    }
}
