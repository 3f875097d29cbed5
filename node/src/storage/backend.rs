//! A redb storage backend over a file that counts what reaches the disk, so
//! group commit is measured rather than assumed.
//!
//! For crash tests it can also behave like a disk that loses power
//! ([`CountingBackend::losing_unsynced`]): writes and length changes stay in
//! memory until the next `sync_data`, and once the node crashes nothing more
//! reaches the file (the dying incarnation still reads its own writes), so a
//! restart sees the file as of the last sync.

use std::fs::File;
use std::ops::Bound;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use redb::backends::FileBackend;
use redb::{BackendError, StorageBackend};

/// Counters shared between the backend and whoever reports them.
#[derive(Debug, Default)]
pub struct IoCounters {
    /// `sync_data` calls: each is one fsync/fdatasync of the database file.
    pub fsyncs: AtomicU64,
    pub bytes_written: AtomicU64,
}

/// A change not yet synced.
#[derive(Debug)]
enum Pending {
    Write(u64, Vec<u8>),
    SetLen(u64),
}

/// Changes not yet synced, in order, and whether the node has crashed.
#[derive(Debug)]
struct Unsynced {
    pending: std::sync::Mutex<Vec<Pending>>,
    crashed: Arc<std::sync::atomic::AtomicBool>,
}

#[derive(Debug)]
pub struct CountingBackend {
    inner: FileBackend,
    counters: Arc<IoCounters>,
    unsynced: Option<Unsynced>,
}

impl CountingBackend {
    pub fn new(file: File, counters: Arc<IoCounters>) -> Self {
        Self { inner: FileBackend::new(file), counters, unsynced: None }
    }

    /// A backend that keeps writes in memory until `sync_data` and drops
    /// everything once `crashed` is set (tests only).
    pub fn losing_unsynced(file: File, counters: Arc<IoCounters>, crashed: Arc<std::sync::atomic::AtomicBool>) -> Self {
        let unsynced = Some(Unsynced { pending: std::sync::Mutex::new(Vec::new()), crashed });
        Self { inner: FileBackend::new(file), counters, unsynced }
    }
}

impl StorageBackend for CountingBackend {
    fn len(&self) -> Result<u64, BackendError> {
        let Some(u) = &self.unsynced else {
            return self.inner.len();
        };
        // The lock is held across the file's length too: a sync moving the
        // pending changes to the file in between would be counted twice or not at all.
        let pending = u.pending.lock().expect("unsynced lock");
        let mut len = self.inner.len()?;
        for p in pending.iter() {
            len = match p {
                Pending::Write(o, d) => len.max(o + d.len() as u64),
                Pending::SetLen(l) => *l,
            };
        }
        Ok(len)
    }

    fn read(&self, offset: u64, out: &mut [u8]) -> Result<(), BackendError> {
        let Some(u) = &self.unsynced else {
            return self.inner.read(offset, out);
        };
        // What the file holds (zeros past its end), then the pending changes in
        // order, all under the lock: a sync moving them to the file in between
        // would otherwise make this read miss them.
        let pending = u.pending.lock().expect("unsynced lock");
        let on_file = self.inner.len()?.saturating_sub(offset).min(out.len() as u64) as usize;
        out[on_file..].fill(0);
        if on_file > 0 {
            self.inner.read(offset, &mut out[..on_file])?;
        }
        let end = offset + out.len() as u64;
        for p in pending.iter() {
            match p {
                Pending::Write(o, d) => {
                    let (from, to) = ((*o).max(offset), (o + d.len() as u64).min(end));
                    if from < to {
                        out[(from - offset) as usize..(to - offset) as usize]
                            .copy_from_slice(&d[(from - o) as usize..(to - o) as usize]);
                    }
                }
                // Truncated bytes read back as zeros if the file grows again.
                Pending::SetLen(l) if *l < end => out[(l.saturating_sub(offset)) as usize..].fill(0),
                Pending::SetLen(_) => {}
            }
        }
        Ok(())
    }

    fn set_len(&self, len: u64) -> Result<(), BackendError> {
        match &self.unsynced {
            Some(u) => {
                u.pending.lock().expect("unsynced lock").push(Pending::SetLen(len));
                Ok(())
            }
            None => self.inner.set_len(len),
        }
    }

    fn sync_data(&self) -> Result<(), BackendError> {
        self.counters.fsyncs.fetch_add(1, Ordering::Relaxed);
        if let Some(u) = &self.unsynced {
            if u.crashed.load(Ordering::Acquire) {
                return Ok(());
            }
            for p in u.pending.lock().expect("unsynced lock").drain(..) {
                match p {
                    Pending::Write(offset, data) => self.inner.write(offset, &data)?,
                    Pending::SetLen(len) => self.inner.set_len(len)?,
                }
            }
        }
        self.inner.sync_data()
    }

    fn write(&self, offset: u64, data: &[u8]) -> Result<(), BackendError> {
        self.counters.bytes_written.fetch_add(data.len() as u64, Ordering::Relaxed);
        match &self.unsynced {
            Some(u) => {
                u.pending.lock().expect("unsynced lock").push(Pending::Write(offset, data.to_vec()));
                Ok(())
            }
            None => self.inner.write(offset, data),
        }
    }

    fn close(&self) -> Result<(), BackendError> {
        self.inner.close()
    }

    // The lock methods keep redb's file locking, so two processes can never
    // open the same data directory.
    fn try_lock_range(&self, start: Bound<u64>, end: Bound<u64>) -> Result<bool, BackendError> {
        self.inner.try_lock_range(start, end)
    }

    fn try_lock_shared_range(&self, start: Bound<u64>, end: Bound<u64>) -> Result<bool, BackendError> {
        self.inner.try_lock_shared_range(start, end)
    }

    fn lock_range(&self, start: Bound<u64>, end: Bound<u64>) -> Result<(), BackendError> {
        self.inner.lock_range(start, end)
    }

    fn lock_shared_range(&self, start: Bound<u64>, end: Bound<u64>) -> Result<(), BackendError> {
        self.inner.lock_shared_range(start, end)
    }

    fn unlock_range(&self, start: Bound<u64>, end: Bound<u64>) -> Result<(), BackendError> {
        self.inner.unlock_range(start, end)
    }

    fn query_lock_range(&self, start: Bound<u64>, end: Bound<u64>) -> Result<bool, BackendError> {
        self.inner.query_lock_range(start, end)
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::AtomicBool;

    use super::*;

    #[test]
    fn a_crash_loses_what_was_not_synced() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("db");
        let open = || std::fs::OpenOptions::new().read(true).write(true).create(true).truncate(false).open(&path);
        let crashed = Arc::new(AtomicBool::new(false));
        let b = CountingBackend::losing_unsynced(open().unwrap(), Arc::default(), crashed.clone());
        b.write(0, b"synced").unwrap();
        b.sync_data().unwrap();
        b.write(0, b"SY").unwrap();
        b.write(6, b"+later").unwrap();
        // The node sees its own writes...
        let mut out = [0u8; 12];
        b.read(0, &mut out).unwrap();
        assert_eq!(&out, b"SYnced+later");
        assert_eq!(b.len().unwrap(), 12);
        // ...but after a crash nothing more reaches the file, even on a sync.
        crashed.store(true, Ordering::Release);
        b.sync_data().unwrap();
        drop(b);
        assert_eq!(std::fs::read(&path).unwrap(), b"synced");

        // Without a crash a sync keeps everything, truncation included.
        let crashed = Arc::new(AtomicBool::new(false));
        let b = CountingBackend::losing_unsynced(open().unwrap(), Arc::default(), crashed);
        b.write(6, b"!!").unwrap();
        b.set_len(4).unwrap();
        let mut out = [9u8; 8];
        b.read(0, &mut out).unwrap();
        assert_eq!(&out, b"sync\0\0\0\0");
        b.sync_data().unwrap();
        drop(b);
        assert_eq!(std::fs::read(&path).unwrap(), b"sync");
    }
}
