//! How documents lie in the database, and every read and write of them.
//!
//! A document is stored as its sealed record: a CRC32, then the encoded
//! [`StoredDoc`] (version, timestamps, value length, value). redb keeps a
//! B-tree leaf in 4 KiB pages, and an entry too big for one page takes an
//! 8 KiB (or larger) allocation of its own, so a 4.1 KB document would cost
//! twice its size on disk and in every commit (RFC 007). A record whose key
//! and bytes exceed [`ENTRY_BYTES_MAX`] is therefore cut:
//! - its head, the first bytes, under `docs[(data_id, key)]`, filling a page;
//! - the rest under `doc_tails[(data_id, key, part)]` in parts of a page each
//!   but the last, which is small and shares its page with other tails.
//!
//! The head is self-describing: the record's header (with the value's length)
//! is at its front, so a reader knows the whole record's length from the head
//! alone, and a head shorter than that has tails. Records written whole (all
//! of them before this layout, and small ones now) read the same way, so the
//! layout can change without a migration. The CRC32 covers the whole record
//! and is checked once it is put back together. Snapshots carry whole records:
//! the layout is local to a node's file.

use std::borrow::Cow;

use redb::{ReadableTable, Table};
use serde::Deserialize;

use super::StorageError;
use super::codec::{CodecError, DECODE_LIMIT_BYTES, decode_borrowed_prefix, decode_sealed};
use super::tables::StoredDoc;

/// Most bytes of key plus value in one entry such that redb keeps it in a
/// single 4 KiB page (its leaf header, offsets and tuple encoding take the
/// rest; `entries_of_entry_bytes_max_fit_a_page` checks it against redb:
/// in redb 5.0 entries of up to ~4070 bytes fit).
pub const ENTRY_BYTES_MAX: usize = 4000;
/// Keys longer than this keep their documents whole: their heads and parts
/// would be small and many.
const SPLIT_KEY_BYTES_MAX: usize = 1024;
/// Bytes a tail's key has beyond the head's (the part number).
const PART_NUMBER_BYTES: usize = 4;

/// The `docs` table: (data_id, key) -> a sealed record or its head.
pub type DocsTable<'t> = Table<'t, (u64, &'static [u8]), &'static [u8]>;
/// The `doc_tails` table: (data_id, key, part) -> the next bytes of a record.
pub type TailsTable<'t> = Table<'t, (u64, &'static [u8], u32), &'static [u8]>;

/// The front of an encoded [`StoredDoc`], up to its value's length.
#[derive(Deserialize)]
struct RecordHeader {
    _version: u64,
    _created_at_ms: u64,
    _updated_at_ms: u64,
    value_len: u64,
}

/// Length of the whole sealed record whose first bytes are `head`.
pub fn record_len(head: &[u8]) -> Result<usize, CodecError> {
    let payload = head.get(4..).ok_or(CodecError::Truncated(head.len()))?;
    let (header, used) = decode_borrowed_prefix::<RecordHeader>(payload)?;
    let value_len = usize::try_from(header.value_len).unwrap_or(usize::MAX);
    if value_len > DECODE_LIMIT_BYTES {
        return Err(CodecError::DocLength { announced: header.value_len, found: head.len() as u64 });
    }
    Ok(4 + used + value_len)
}

/// How a write lays a record out.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Layout {
    /// One entry whatever its size: the fewest B-tree writes, for commits of
    /// a few documents (client writes). A document just over a page takes
    /// two pages, but a commit that wrote its tail to a second table would
    /// also rewrite one of that table's pages and its branch pages: measured
    /// with `bench` (4 KiB values, 16 writers), writes were ~9 % slower.
    Whole,
    /// Page-sized head and tails, for bulk writes (snapshot staging) where a
    /// commit writes hundreds of documents and their tails share pages: half
    /// the bytes for documents just over one page.
    Paged,
}

/// How many of a record's bytes go into its head.
fn head_len(key: &[u8], record_len: usize, layout: Layout) -> usize {
    if layout == Layout::Whole || key.len() > SPLIT_KEY_BYTES_MAX || key.len() + record_len <= ENTRY_BYTES_MAX {
        record_len
    } else {
        ENTRY_BYTES_MAX - key.len()
    }
}

/// Bytes of a record in each tail part (the last may hold fewer).
fn part_len(key: &[u8]) -> usize {
    ENTRY_BYTES_MAX - key.len() - PART_NUMBER_BYTES
}

fn tails_of(data_id: u64, key: &[u8]) -> std::ops::RangeInclusive<(u64, &[u8], u32)> {
    (data_id, key, 0)..=(data_id, key, u32::MAX)
}

/// The whole sealed record of the document whose stored head is `head`:
/// borrowed when it is whole, else put back together from its tails. Not
/// verified here: the caller unseals it.
pub fn whole_record<'h, T>(tails: &T, data_id: u64, key: &[u8], head: &'h [u8]) -> Result<Cow<'h, [u8]>, StorageError>
where
    T: ReadableTable<(u64, &'static [u8], u32), &'static [u8]>,
{
    let total = record_len(head)?;
    if head.len() == total {
        return Ok(Cow::Borrowed(head));
    }
    if head.len() > total {
        return Err(CodecError::DocLength { announced: total as u64, found: head.len() as u64 }.into());
    }
    let mut out = Vec::with_capacity(total);
    out.extend_from_slice(head);
    for (expected, item) in (0u32..).zip(tails.range(tails_of(data_id, key))?) {
        let (k, v) = item?;
        let part = k.value().2;
        if part != expected {
            return Err(CodecError::DocPart { expected, found: part }.into());
        }
        out.extend_from_slice(v.value());
        if out.len() > total {
            break;
        }
    }
    if out.len() != total {
        return Err(CodecError::DocLength { announced: total as u64, found: out.len() as u64 }.into());
    }
    Ok(Cow::Owned(out))
}

/// The document at `key`, verified.
pub fn get<D, T>(docs: &D, tails: &T, data_id: u64, key: &[u8]) -> Result<Option<StoredDoc>, StorageError>
where
    D: ReadableTable<(u64, &'static [u8]), &'static [u8]>,
    T: ReadableTable<(u64, &'static [u8], u32), &'static [u8]>,
{
    match docs.get((data_id, key))? {
        Some(head) => Ok(Some(decode_sealed(&whole_record(tails, data_id, key, head.value())?)?)),
        None => Ok(None),
    }
}

/// Stores the sealed record `record` at `key` laid out as `layout` says,
/// replacing whatever was there (its tails included).
pub fn put(
    docs: &mut DocsTable<'_>,
    tails: &mut TailsTable<'_>,
    data_id: u64,
    key: &[u8],
    record: &[u8],
    layout: Layout,
) -> Result<(), StorageError> {
    let (head, rest) = record.split_at(head_len(key, record.len(), layout));
    let had_tails = match docs.insert((data_id, key), head)? {
        Some(old) => has_tails(old.value())?,
        None => false,
    };
    if had_tails {
        tails.retain_in(tails_of(data_id, key), |_, _| false)?;
    }
    for (part, bytes) in (0u32..).zip(rest.chunks(part_len(key))) {
        tails.insert((data_id, key, part), bytes)?;
    }
    Ok(())
}

/// Deletes the document at `key` and its tails; whether there was one.
pub fn remove(
    docs: &mut DocsTable<'_>,
    tails: &mut TailsTable<'_>,
    data_id: u64,
    key: &[u8],
) -> Result<bool, StorageError> {
    let had_tails = match docs.remove((data_id, key))? {
        Some(old) => has_tails(old.value())?,
        None => return Ok(false),
    };
    if had_tails {
        tails.retain_in(tails_of(data_id, key), |_, _| false)?;
    }
    Ok(true)
}

fn has_tails(head: &[u8]) -> Result<bool, CodecError> {
    Ok(record_len(head)? > head.len())
}

/// Deletes up to `budget` rows (heads and tails) stored under `data_id`;
/// returns how many it deleted (fewer than `budget`: none are left).
pub fn delete_some(
    docs: &mut DocsTable<'_>,
    tails: &mut TailsTable<'_>,
    data_id: u64,
    budget: usize,
) -> Result<usize, StorageError> {
    let keys: Vec<Vec<u8>> = docs
        .range((data_id, &[][..])..(data_id + 1, &[][..]))?
        .take(budget)
        .map(|r| r.map(|(k, _)| k.value().1.to_vec()))
        .collect::<Result<_, _>>()?;
    for k in &keys {
        docs.remove((data_id, k.as_slice()))?;
    }
    let parts: Vec<(Vec<u8>, u32)> = tails
        .range((data_id, &[][..], 0)..(data_id + 1, &[][..], 0))?
        .take(budget - keys.len())
        .map(|r| {
            r.map(|(k, _)| {
                let (_, key, part) = k.value();
                (key.to_vec(), part)
            })
        })
        .collect::<Result<_, _>>()?;
    for (k, part) in &parts {
        tails.remove((data_id, k.as_slice(), *part))?;
    }
    Ok(keys.len() + parts.len())
}

#[cfg(test)]
mod tests {
    use redb::{Database, ReadableTableMetadata};

    use super::*;
    use crate::storage::codec::encode_sealed;
    use crate::storage::tables::{DOC_TAILS, DOCS};

    fn sealed(value_len: usize) -> Vec<u8> {
        let value: Vec<u8> = (0..value_len).map(|i| (i % 251) as u8).collect();
        encode_sealed(&StoredDoc { version: 300, created_at_ms: 1 << 40, updated_at_ms: 1 << 41, value })
    }

    #[test]
    fn record_len_reads_the_length_from_the_front() {
        // Across the varint encoding's length boundaries.
        for n in [0, 1, 250, 251, 252, 4096, 65_535, 65_536, 1 << 20] {
            let record = sealed(n);
            assert_eq!(record_len(&record).unwrap(), record.len(), "value of {n} bytes");
            assert_eq!(record_len(&record[..64.min(record.len())]).unwrap(), record.len());
        }
        assert!(record_len(&[1, 2, 3]).is_err());
        assert!(record_len(&[0, 0, 0, 0, 1]).is_err(), "a header cut short");
    }

    fn with_tables(f: impl FnOnce(&mut DocsTable<'_>, &mut TailsTable<'_>)) -> (tempfile::TempDir, Database) {
        let dir = tempfile::tempdir().unwrap();
        let db = Database::create(dir.path().join("db")).unwrap();
        let txn = db.begin_write().unwrap();
        {
            let mut docs = txn.open_table(DOCS).unwrap();
            let mut tails = txn.open_table(DOC_TAILS).unwrap();
            f(&mut docs, &mut tails);
        }
        txn.commit().unwrap();
        (dir, db)
    }

    #[test]
    fn documents_round_trip_across_layouts_and_overwrites() {
        let key = b"user/42".as_slice();
        let sizes = [10, 3900, 3990, 4096, 10_000, 200_000, 100, 8000];
        with_tables(|docs, tails| {
            // Each size paged, then overwritten whole (a client write after a
            // snapshot), then paged again.
            for n in sizes {
                let record = sealed(n);
                for layout in [Layout::Paged, Layout::Whole, Layout::Paged] {
                    put(docs, tails, 7, key, &record, layout).unwrap();
                    let doc = get(docs, tails, 7, key).unwrap().expect("stored");
                    assert_eq!(encode_sealed(&doc), record, "value of {n} bytes, {layout:?}");
                    let head = docs.get((7, key)).unwrap().unwrap().value().len();
                    let parts = tails.range(tails_of(7, key)).unwrap().count();
                    if layout == Layout::Whole || key.len() + record.len() <= ENTRY_BYTES_MAX {
                        assert_eq!((head, parts), (record.len(), 0), "value of {n} bytes, {layout:?}");
                    } else {
                        assert_eq!(key.len() + head, ENTRY_BYTES_MAX);
                        assert_eq!(parts, (record.len() - head).div_ceil(part_len(key)), "value of {n} bytes");
                    }
                }
            }
            // A document at a neighbouring key is untouched by the overwrites.
            put(docs, tails, 7, b"user/43", &sealed(9000), Layout::Paged).unwrap();
            assert!(remove(docs, tails, 7, key).unwrap());
            assert!(!remove(docs, tails, 7, key).unwrap());
            assert_eq!(tails.range(tails_of(7, key)).unwrap().count(), 0);
            assert_eq!(encode_sealed(&get(docs, tails, 7, b"user/43").unwrap().unwrap()), sealed(9000));
            // Long keys keep their documents whole.
            let long = vec![b'k'; SPLIT_KEY_BYTES_MAX + 1];
            put(docs, tails, 7, &long, &sealed(9000), Layout::Paged).unwrap();
            assert_eq!(tails.range(tails_of(7, &long)).unwrap().count(), 0);
            assert_eq!(encode_sealed(&get(docs, tails, 7, &long).unwrap().unwrap()), sealed(9000));
        });
    }

    #[test]
    fn whole_records_written_before_the_layout_still_read() {
        with_tables(|docs, tails| {
            let record = sealed(20_000);
            docs.insert((1, b"old".as_slice()), record.as_slice()).unwrap();
            assert_eq!(encode_sealed(&get(docs, tails, 1, b"old").unwrap().unwrap()), record);
            // Overwriting it stores the new layout.
            put(docs, tails, 1, b"old", &record, Layout::Paged).unwrap();
            assert!(tails.range(tails_of(1, b"old")).unwrap().count() > 0);
            assert_eq!(encode_sealed(&get(docs, tails, 1, b"old").unwrap().unwrap()), record);
        });
    }

    #[test]
    fn missing_extra_or_corrupt_tails_are_errors() {
        let key = b"k".as_slice();
        with_tables(|docs, tails| {
            put(docs, tails, 1, key, &sealed(20_000), Layout::Paged).unwrap();
            let last = tails.range(tails_of(1, key)).unwrap().count() as u32 - 1;
            // A part missing at the end.
            let saved = tails.remove((1, key, last)).unwrap().unwrap().value().to_vec();
            let e = get(docs, tails, 1, key).unwrap_err();
            assert!(e.to_string().contains("announces"), "{e}");
            // A gap in the parts.
            tails.insert((1, key, last + 1), saved.as_slice()).unwrap();
            let e = get(docs, tails, 1, key).unwrap_err();
            assert!(e.to_string().contains("part"), "{e}");
            tails.remove((1, key, last + 1)).unwrap();
            // A flipped byte in a tail: the record's checksum fails.
            let mut bad = saved.clone();
            bad[0] ^= 1;
            tails.insert((1, key, last), bad.as_slice()).unwrap();
            let e = get(docs, tails, 1, key).unwrap_err();
            assert!(e.to_string().contains("checksum"), "{e}");
            // Too many bytes.
            let mut long = saved.clone();
            long.push(0);
            tails.insert((1, key, last), long.as_slice()).unwrap();
            assert!(get(docs, tails, 1, key).is_err());
            tails.insert((1, key, last), saved.as_slice()).unwrap();
            assert!(get(docs, tails, 1, key).unwrap().is_some());
        });
    }

    #[test]
    fn delete_some_takes_heads_then_tails_within_the_budget() {
        with_tables(|docs, tails| {
            for i in 0..5u8 {
                put(docs, tails, 3, &[i], &sealed(10_000), Layout::Paged).unwrap();
                put(docs, tails, 4, &[i], &sealed(10_000), Layout::Paged).unwrap();
            }
            let per_doc = 1 + tails.range(tails_of(3, &[0])).unwrap().count();
            let mut deleted = 0;
            loop {
                let n = delete_some(docs, tails, 3, 4).unwrap();
                deleted += n;
                if n < 4 {
                    break;
                }
            }
            assert_eq!(deleted, 5 * per_doc);
            assert_eq!(docs.range((3, &[][..])..(4, &[][..])).unwrap().count(), 0);
            assert_eq!(tails.range((3, &[][..], 0)..(4, &[][..], 0)).unwrap().count(), 0);
            for i in 0..5u8 {
                assert!(get(docs, tails, 4, &[i]).unwrap().is_some());
            }
        });
    }

    /// The bytes a table takes per entry, from redb's own statistics: `count`
    /// heads of documents under keys of `key_len` bytes, each of
    /// `entry_bytes` key plus head, and as many tail parts of a page.
    fn bytes_per_entry(key_len: usize, entry_bytes: usize, count: usize) -> (u64, u64) {
        let dir = tempfile::tempdir().unwrap();
        let db = Database::create(dir.path().join("db")).unwrap();
        let txn = db.begin_write().unwrap();
        let (heads, parts) = {
            let mut docs = txn.open_table(DOCS).unwrap();
            let mut tails = txn.open_table(DOC_TAILS).unwrap();
            for i in 0..count {
                let mut key = vec![b'k'; key_len];
                let n = key_len.min(8);
                key[..n].copy_from_slice(&(i as u64).to_be_bytes()[8 - n..]);
                docs.insert((1, key.as_slice()), vec![7u8; entry_bytes - key_len].as_slice()).unwrap();
                let part = vec![7u8; entry_bytes - key_len - PART_NUMBER_BYTES];
                tails.insert((1, key.as_slice(), 0), part.as_slice()).unwrap();
            }
            (docs.stats().unwrap(), tails.stats().unwrap())
        };
        txn.commit().unwrap();
        let per = |s: redb::TableStats| (s.stored_bytes() + s.metadata_bytes() + s.fragmented_bytes()) / count as u64;
        (per(heads), per(parts))
    }

    #[test]
    fn entries_of_entry_bytes_max_fit_a_page() {
        // If a redb upgrade changes its page layout, this fails rather than
        // documents silently taking two pages each again.
        for key_len in [3, 21, SPLIT_KEY_BYTES_MAX] {
            let (head, part) = bytes_per_entry(key_len, ENTRY_BYTES_MAX, 200);
            assert!(head <= 4096 + 512 && part <= 4096 + 512, "key of {key_len}: a head takes {head}, a part {part}");
            // And the cliff this layout avoids is real: a little more takes two pages.
            let (head, part) = bytes_per_entry(key_len, ENTRY_BYTES_MAX + 100, 200);
            assert!(head >= 6000 && part >= 6000, "key of {key_len}: past a page a head takes {head}, a part {part}");
        }
    }
}
