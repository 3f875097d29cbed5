//! What a stopped node's database file holds, read with redb directly
//! (read-only) and the node's own table definitions and record codec.
//!
//! A node keeps each replica's documents under the `data_id` its shard record
//! names; a destroyed replica's record goes at once (with a tombstone) and its
//! `data_id` is queued in `data_gc` for the writer to delete in the background.
//! So "the moved replica's documents are gone" means: no shard record for a shard
//! the PD no longer lists on this node, and no document row under a `data_id` that
//! no shard record names. Rows of the second kind are split into those still
//! queued for collection (`data_gc`) and those nothing will ever delete (leaked).

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use anyhow::Context;
use cairn_node::storage::codec::decode_sealed;
use cairn_node::storage::tables::{DATA_GC, DOC_TAILS, DOCS, GC_GARBAGE, SHARDS, ShardRecord, TOMBSTONES, Tombstone};
use cairn_proto::{KeyRange, ShardDescriptor};
use redb::{ReadableDatabase, ReadableTable};

/// The PD group's shard (its documents are the PD's records, not user data).
const PD_SHARD: u64 = 0;

/// One replica record in the file.
#[derive(Clone, Debug)]
pub struct RecordInfo {
    pub data_id: u64,
    pub conf_ver: u64,
    pub applied_index: u64,
    /// What the record's statistics say.
    pub key_count: u64,
    /// What is actually stored under its `data_id`.
    pub rows: u64,
    /// Rows under its `data_id` whose key lies outside the shard's range.
    pub rows_outside_range: u64,
}

/// The contents of one node's database file.
#[derive(Clone, Debug, Default)]
pub struct DbReport {
    pub node: u64,
    pub path: PathBuf,
    pub file_bytes: u64,
    /// Data shards (not the PD's shard 0) this node has a record of.
    pub records: BTreeMap<u64, RecordInfo>,
    pub pd_rows: u64,
    pub tombstones: BTreeMap<u64, u64>,
    /// `data_id`s queued for deletion, and those left staging.
    pub gc_garbage: BTreeSet<u64>,
    pub gc_staging: BTreeSet<u64>,
    /// Rows under a `data_id` no record names.
    pub orphan_rows: u64,
    pub orphan_bytes: u64,
    /// Of those, rows whose `data_id` is queued in `data_gc`.
    pub orphan_rows_queued: u64,
    /// The shards (by the PD's ranges) the orphan rows' keys belong to, with counts.
    pub orphan_shards: BTreeMap<u64, u64>,
}

impl DbReport {
    /// Orphan rows that nothing will delete.
    pub fn leaked_rows(&self) -> u64 {
        self.orphan_rows - self.orphan_rows_queued
    }
}

/// Reads the database at `path` of node `node`; `ranges` are the PD's shard
/// ranges, to name the shard an orphan row came from.
pub fn inspect(node: u64, path: &Path, ranges: &[(u64, KeyRange)]) -> anyhow::Result<DbReport> {
    let db = redb::ReadOnlyDatabase::open(path).with_context(|| format!("opening {} read-only", path.display()))?;
    let txn = db.begin_read()?;
    let mut report = DbReport {
        node,
        path: path.to_path_buf(),
        file_bytes: std::fs::metadata(path).map(|m| m.len()).unwrap_or(0),
        ..Default::default()
    };
    let mut by_data_id: BTreeMap<u64, (u64, KeyRange)> = BTreeMap::new();
    let mut pd_data_id = None;
    for item in txn.open_table(SHARDS)?.iter()? {
        let (k, v) = item?;
        let record: ShardRecord =
            decode_sealed(v.value()).with_context(|| format!("shard record {} in {}", k.value(), path.display()))?;
        let shard = record.descriptor.id.0;
        if shard == PD_SHARD {
            pd_data_id = Some(record.data_id);
            continue;
        }
        by_data_id.insert(record.data_id, (shard, record.descriptor.range.clone()));
        report.records.insert(
            shard,
            RecordInfo {
                data_id: record.data_id,
                conf_ver: record.descriptor.epoch.conf_ver,
                applied_index: record.applied_index,
                key_count: record.stats.key_count,
                rows: 0,
                rows_outside_range: 0,
            },
        );
    }
    for item in txn.open_table(TOMBSTONES)?.iter()? {
        let (k, v) = item?;
        let tombstone: Tombstone = decode_sealed(v.value())?;
        report.tombstones.insert(k.value(), tombstone.conf_ver);
    }
    for item in txn.open_table(DATA_GC)?.iter()? {
        let (k, v) = item?;
        if v.value() == GC_GARBAGE {
            report.gc_garbage.insert(k.value());
        } else {
            report.gc_staging.insert(k.value());
        }
    }
    for item in txn.open_table(DOCS)?.iter()? {
        let (k, v) = item?;
        let (data_id, key) = k.value();
        if Some(data_id) == pd_data_id {
            report.pd_rows += 1;
            continue;
        }
        match by_data_id.get(&data_id) {
            Some((shard, range)) => {
                let info = report.records.get_mut(shard).expect("every data id maps to a record");
                info.rows += 1;
                if !range.contains(key) {
                    info.rows_outside_range += 1;
                }
            }
            None => {
                report.orphan_rows += 1;
                report.orphan_bytes += (key.len() + v.value().len()) as u64;
                if report.gc_garbage.contains(&data_id) {
                    report.orphan_rows_queued += 1;
                }
                let shard = ranges.iter().find(|(_, r)| r.contains(key)).map(|(id, _)| *id).unwrap_or(u64::MAX);
                *report.orphan_shards.entry(shard).or_insert(0) += 1;
            }
        }
    }
    // The rest of documents too big for one page: a part under a data id no
    // record names is an orphan row like its head.
    for item in txn.open_table(DOC_TAILS)?.iter()? {
        let (k, v) = item?;
        let (data_id, key, _) = k.value();
        if Some(data_id) == pd_data_id || by_data_id.contains_key(&data_id) {
            continue;
        }
        report.orphan_rows += 1;
        report.orphan_bytes += (key.len() + v.value().len()) as u64;
        if report.gc_garbage.contains(&data_id) {
            report.orphan_rows_queued += 1;
        }
    }
    Ok(report)
}

/// The PD's ranges of the data shards, for [`inspect`].
pub fn ranges(shards: &[ShardDescriptor]) -> Vec<(u64, KeyRange)> {
    shards.iter().map(|d| (d.id.0, d.range.clone())).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use cairn_node::storage::codec::encode_sealed;
    use cairn_node::storage::tables::DataStats;
    use cairn_proto::{Epoch, ShardId};

    fn record(shard: u64, data_id: u64, range: KeyRange, keys: u64) -> Vec<u8> {
        let descriptor = ShardDescriptor {
            id: ShardId(shard),
            range,
            epoch: Epoch { conf_ver: 3, version: 1 },
            replicas: Vec::new(),
        };
        encode_sealed(&ShardRecord {
            descriptor,
            data_id,
            applied_index: 9,
            applied_log_id: None,
            membership: None,
            stats: DataStats { key_count: keys, size_bytes: 0 },
        })
    }

    /// Shard 1 lives here (data id 10); shard 2 moved away: its record is gone,
    /// data id 20 is queued for deletion and data id 30 is not (leaked).
    #[test]
    fn sorts_rows_into_live_queued_and_leaked() {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("cairn.redb");
        let (a, b) = (KeyRange::new(Vec::new(), b"m".to_vec()), KeyRange::new(b"m".to_vec(), Vec::new()));
        {
            let db = redb::Database::create(&path).expect("create");
            let txn = db.begin_write().expect("write");
            {
                txn.open_table(SHARDS)
                    .expect("shards")
                    .insert(1, record(1, 10, a.clone(), 2).as_slice())
                    .expect("insert");
                txn.open_table(TOMBSTONES)
                    .expect("tombstones")
                    .insert(2, encode_sealed(&Tombstone { conf_ver: 4, destroyed_at_ms: 1 }).as_slice())
                    .expect("insert");
                txn.open_table(DATA_GC).expect("gc").insert(20, GC_GARBAGE).expect("insert");
                let mut docs = txn.open_table(DOCS).expect("docs");
                for (data_id, key) in [(10, "a"), (10, "b"), (20, "n"), (20, "o"), (30, "p")] {
                    docs.insert((data_id, key.as_bytes()), b"{}".as_slice()).expect("insert");
                }
                // Tails: of a live document (not an orphan), of a queued one and a leaked one.
                let mut tails = txn.open_table(DOC_TAILS).expect("doc tails");
                for (data_id, key) in [(10, "a"), (20, "n"), (30, "q")] {
                    tails.insert((data_id, key.as_bytes(), 0), b"}".as_slice()).expect("insert");
                }
            }
            txn.commit().expect("commit");
        }
        let report = inspect(7, &path, &[(1, a), (2, b)]).expect("inspect");
        assert_eq!(report.records.keys().copied().collect::<Vec<_>>(), vec![1]);
        assert_eq!((report.records[&1].rows, report.records[&1].key_count), (2, 2));
        assert_eq!((report.orphan_rows, report.orphan_rows_queued, report.leaked_rows()), (5, 3, 2));
        assert_eq!(report.orphan_shards.get(&2), Some(&3));
        assert_eq!(report.tombstones.get(&2), Some(&4));
    }
}
