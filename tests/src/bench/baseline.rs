//! The disk's own durable-commit rate, measured with redb directly: one writer doing
//! sequential single-row transactions with `Durability::Immediate`. Each commit waits
//! for its fsync, so commits/s is what this disk gives one durable writer that does not
//! batch. The database goes through the same counting backend the nodes use, so the
//! fsyncs one redb commit costs are counted, not assumed.

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use cairn_node::storage::backend::{CountingBackend, IoCounters};
use redb::{Durability, TableDefinition};
use serde::Serialize;

const TABLE: TableDefinition<u64, &[u8]> = TableDefinition::new("baseline");

/// Bytes of the one row each commit inserts: small, so a commit costs its fsync and
/// little else.
const ROW_BYTES: usize = 64;

/// Name of the baseline database file inside the bench's directory.
const DB_FILE: &str = "baseline.redb";

#[derive(Clone, Debug, Serialize)]
pub struct Baseline {
    pub commits: u64,
    pub seconds: f64,
    pub commits_per_sec: f64,
    /// `sync_data` calls per commit, as the counting backend saw them.
    pub fsyncs_per_commit: f64,
}

/// Commits one-row durable transactions into a fresh database in `dir` for `duration`,
/// printing progress on stderr every second.
pub fn measure(dir: &Path, duration: Duration) -> anyhow::Result<Baseline> {
    std::fs::create_dir_all(dir)?;
    let path = dir.join(DB_FILE);
    let file = std::fs::OpenOptions::new().read(true).write(true).create(true).truncate(true).open(&path)?;
    let io = Arc::new(IoCounters::default());
    let db = redb::Builder::new().create_with_backend(CountingBackend::new(file, io.clone()))?;
    // Create the table once, so the timed commits all do the same work.
    let txn = db.begin_write()?;
    txn.open_table(TABLE)?;
    txn.commit()?;

    let row = [0xa5u8; ROW_BYTES];
    let fsyncs_before = io.fsyncs.load(Ordering::Relaxed);
    let start = Instant::now();
    let mut last_report = (start, 0u64);
    let mut commits = 0u64;
    loop {
        let now = Instant::now();
        if now >= start + duration {
            break;
        }
        if now - last_report.0 >= Duration::from_secs(1) {
            eprintln!(
                "[baseline] {:>5.1}s  commits {:>7}  now {:>7.0}/s",
                (now - start).as_secs_f64(),
                commits,
                (commits - last_report.1) as f64 / (now - last_report.0).as_secs_f64(),
            );
            last_report = (now, commits);
        }
        let mut txn = db.begin_write()?;
        txn.set_durability(Durability::Immediate)?;
        {
            let mut table = txn.open_table(TABLE)?;
            table.insert(commits, row.as_slice())?;
        }
        txn.commit()?;
        commits += 1;
    }
    let seconds = start.elapsed().as_secs_f64();
    let fsyncs = io.fsyncs.load(Ordering::Relaxed) - fsyncs_before;
    drop(db);
    std::fs::remove_file(&path)?;
    Ok(Baseline {
        commits,
        seconds,
        commits_per_sec: commits as f64 / seconds,
        fsyncs_per_commit: if commits == 0 { 0.0 } else { fsyncs as f64 / commits as f64 },
    })
}
