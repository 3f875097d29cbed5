//! The disk's sequential write rate, the yardstick of the `move-bench` snapshot
//! throughput: one file written front to back with large buffered writes, then one
//! `fsync`, timed from the first write to the end of the `fsync`. The figure is
//! what this file system gives one writer that streams bytes and makes them
//! durable once, which is what receiving a snapshot amounts to at best.
//!
//! The buffer holds pseudo-random bytes (not zeros), so a compressing or
//! deduplicating layer under the file system cannot flatter the rate.

use std::io::Write;
use std::path::Path;
use std::time::{Duration, Instant};

use rand::rngs::StdRng;
use rand::{RngCore, SeedableRng};
use serde::Serialize;

/// Bytes of one `write` call.
pub const WRITE_BUFFER_BYTES: usize = 1 << 20;

/// Name of the scratch file inside the bench's directory; removed afterwards.
const FILE: &str = "seqwrite.bin";

#[derive(Clone, Debug, Serialize)]
pub struct SeqWrite {
    pub bytes: u64,
    /// First write to the end of the `fsync`.
    pub seconds: f64,
    /// Of which the final `fsync` (the dirty pages the kernel had not yet written back).
    pub fsync_seconds: f64,
    /// `bytes / seconds`, in MB/s (10^6 bytes).
    pub mb_per_sec: f64,
}

/// Writes `bytes` (rounded up to whole buffers) to a fresh file in `dir`, fsyncs it,
/// removes it, and prints progress on stderr every second.
pub fn measure(dir: &Path, bytes: u64) -> anyhow::Result<SeqWrite> {
    std::fs::create_dir_all(dir)?;
    let path = dir.join(FILE);
    let mut buf = vec![0u8; WRITE_BUFFER_BYTES];
    StdRng::seed_from_u64(0x5e9_717e).fill_bytes(&mut buf);
    let buffers = bytes.div_ceil(WRITE_BUFFER_BYTES as u64).max(1);
    let mut file = std::fs::OpenOptions::new().write(true).create(true).truncate(true).open(&path)?;
    let start = Instant::now();
    let mut last_report = start;
    for i in 0..buffers {
        // A different first word per buffer, so no two buffers are identical.
        buf[..8].copy_from_slice(&i.to_le_bytes());
        file.write_all(&buf)?;
        if last_report.elapsed() >= Duration::from_secs(1) {
            last_report = Instant::now();
            eprintln!(
                "[seqwrite] {:>5.1}s  written {:>7.1} MB of {:.1} MB",
                start.elapsed().as_secs_f64(),
                ((i + 1) * WRITE_BUFFER_BYTES as u64) as f64 / 1e6,
                (buffers * WRITE_BUFFER_BYTES as u64) as f64 / 1e6
            );
        }
    }
    let before_sync = Instant::now();
    file.sync_all()?;
    let fsync_seconds = before_sync.elapsed().as_secs_f64();
    let seconds = start.elapsed().as_secs_f64();
    drop(file);
    std::fs::remove_file(&path)?;
    let written = buffers * WRITE_BUFFER_BYTES as u64;
    Ok(SeqWrite { bytes: written, seconds, fsync_seconds, mb_per_sec: written as f64 / 1e6 / seconds })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn writes_whole_buffers_and_cleans_up() {
        let dir = tempfile::tempdir().expect("temp dir");
        let s = measure(dir.path(), 1).expect("measure");
        assert_eq!(s.bytes, WRITE_BUFFER_BYTES as u64);
        assert!(s.seconds >= s.fsync_seconds);
        assert!(!dir.path().join(FILE).exists());
    }
}
