//! Streaming a shard snapshot to a peer in bounded, checksummed chunks.
//!
//! A blocking task reads the snapshot view chunk by chunk
//! (`SnapshotReader::next_chunk`) into a channel of capacity
//! [`CHUNKS_IN_FLIGHT`], so at most a few chunks are in memory however large
//! the shard is. Each data chunk then waits for its bytes in the node's
//! snapshot [`TokenBucket`](super::bandwidth::TokenBucket) before the stream
//! hands it to gRPC, and its bytes are counted in [`SnapshotProgress`] (what a
//! leader reports to the PD) until the transfer ends, however it ends.

use std::collections::HashMap;
use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use cairn_proto::pb;
use futures::StreamExt;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;

use super::{Transport, TransportError};
use crate::storage::snapshot::SnapshotReader;

/// Chunks buffered between the disk reader and the network.
pub const CHUNKS_IN_FLIGHT: usize = 2;
/// Chunks a simulation reads ahead at most (its snapshots are a few chunks;
/// a larger one fails the transfer there rather than taking unbounded memory).
const SIM_CHUNKS_MAX: u64 = 256;

/// What the receiver needs besides the records.
pub struct SnapshotOffer {
    pub shard: u64,
    pub vote: Vec<u8>,
    pub meta: Vec<u8>,
    pub shard_state: Vec<u8>,
    /// What the transfer will roughly send, for progress reports: the shard's
    /// key and value bytes as its record counts them. An estimate: the stream
    /// also carries document metadata, sessions and encoding overhead, so the
    /// bytes sent may pass it (reports then show sent = total).
    pub total_bytes: u64,
}

/// How far one outgoing snapshot transfer is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct TransferProgress {
    /// Chunk bytes handed to the network so far.
    pub sent_bytes: u64,
    /// The estimated size of the whole transfer, never below `sent_bytes`.
    pub total_bytes: u64,
}

struct Transfer {
    sent_bytes: AtomicU64,
    total_bytes: u64,
}

/// The snapshots this node is sending, per (shard, target node). An entry
/// lives exactly as long as its transfer: [`SnapshotProgress::start`] returns a
/// guard that removes it when dropped (sent, failed or cancelled).
#[derive(Default)]
pub struct SnapshotProgress {
    // A plain mutex: held for a map operation, never across an await.
    transfers: Mutex<HashMap<(u64, u64), Arc<Transfer>>>,
}

impl SnapshotProgress {
    /// Registers a transfer of `shard` to `target`; a previous one to the same
    /// target (openraft cancels it before starting another) is replaced.
    pub fn start(self: &Arc<Self>, shard: u64, target: u64, total_bytes: u64) -> TransferGuard {
        let transfer = Arc::new(Transfer { sent_bytes: AtomicU64::new(0), total_bytes });
        self.transfers.lock().expect("snapshot progress lock").insert((shard, target), transfer.clone());
        TransferGuard { registry: self.clone(), key: (shard, target), transfer }
    }

    pub fn get(&self, shard: u64, target: u64) -> Option<TransferProgress> {
        let transfers = self.transfers.lock().expect("snapshot progress lock");
        let t = transfers.get(&(shard, target))?;
        let sent_bytes = t.sent_bytes.load(Ordering::Relaxed);
        Some(TransferProgress { sent_bytes, total_bytes: t.total_bytes.max(sent_bytes) })
    }

    /// Transfers in flight.
    pub fn len(&self) -> usize {
        self.transfers.lock().expect("snapshot progress lock").len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Keeps a transfer's entry in [`SnapshotProgress`] and counts its bytes.
pub struct TransferGuard {
    registry: Arc<SnapshotProgress>,
    key: (u64, u64),
    transfer: Arc<Transfer>,
}

impl TransferGuard {
    /// A handle that counts bytes into this transfer without keeping its entry.
    pub fn counter(&self) -> SentCounter {
        SentCounter(self.transfer.clone())
    }
}

/// Counts a transfer's bytes sent (see [`TransferGuard::counter`]).
#[derive(Clone)]
pub struct SentCounter(Arc<Transfer>);

impl SentCounter {
    pub fn add(&self, bytes: u64) {
        self.0.sent_bytes.fetch_add(bytes, Ordering::Relaxed);
    }
}

impl Drop for TransferGuard {
    fn drop(&mut self) {
        let mut transfers = self.registry.transfers.lock().expect("snapshot progress lock");
        // Only this transfer's own entry: a newer one to the same target stays.
        if transfers.get(&self.key).is_some_and(|t| Arc::ptr_eq(t, &self.transfer)) {
            transfers.remove(&self.key);
        }
    }
}

#[derive(Debug, Clone, Copy, Default)]
pub struct SnapshotSent {
    pub records: u64,
    pub bytes: u64,
}

impl Transport {
    /// Streams a snapshot to `target` and returns the receiver's reply payload.
    /// Data chunks go out at the node's snapshot bandwidth; the transfer shows
    /// in [`Transport::snapshot_progress`] until this returns (or is dropped).
    pub async fn send_snapshot(
        &self,
        target: u64,
        offer: SnapshotOffer,
        mut reader: SnapshotReader,
        cancel: impl Future<Output = ()> + Send,
    ) -> Result<(Vec<u8>, SnapshotSent), TransportError> {
        if !self.faults().snapshot_allowed(target) {
            return Err(TransportError::Unreachable(target, "snapshot cut by a test fault rule".into()));
        }
        let mut client = self.client_for(target)?;
        // In a simulation the chunks are read inline, all at once (its
        // snapshots are small), so a reader thread's timing never shows.
        let inline = cairn_proto::sim::active();
        let capacity = match inline {
            true => (offer.total_bytes / self.config.snapshot_chunk_bytes.max(1) as u64 * 2 + 4).min(SIM_CHUNKS_MAX)
                as usize,
            false => CHUNKS_IN_FLIGHT,
        };
        let (tx, rx) = mpsc::channel::<pb::SnapshotChunk>(capacity);
        let header = pb::SnapshotChunk {
            part: Some(pb::snapshot_chunk::Part::Header(pb::SnapshotHeader {
                shard_id: offer.shard,
                from_node: self.node_id,
                to_node: target,
                vote: offer.vote,
                meta: offer.meta,
                shard_state: offer.shard_state,
            })),
        };
        let chunk_bytes = self.config.snapshot_chunk_bytes;
        let shard = offer.shard;
        // Dropped when this function returns or is dropped: the entry goes then.
        let progress = self.snapshot_progress.start(shard, target, offer.total_bytes);
        let producer = match inline {
            true => {
                let produced = produce(header, &mut reader, chunk_bytes, |c| tx.try_send(c).is_ok());
                // The stream ends when the sender goes.
                drop(tx);
                futures::future::Either::Left(std::future::ready(produced))
            }
            false => {
                let (done, result) = tokio::sync::oneshot::channel();
                let nice = self.config.snapshot_sender_nice;
                let spawned = std::thread::Builder::new().name("cairn-snapshot".into()).spawn(move || {
                    lower_thread_priority(nice);
                    let _ = done.send(produce(header, &mut reader, chunk_bytes, |c| tx.blocking_send(c).is_ok()));
                });
                futures::future::Either::Right(async move {
                    spawned.map_err(|e| format!("starting the snapshot reader: {e}"))?;
                    result.await.unwrap_or_else(|_| Err("snapshot reader panicked".into()))
                })
            }
        };
        let bandwidth = self.snapshot_bandwidth.clone();
        let counted = progress.counter();
        let chunks = ReceiverStream::new(rx).then(move |chunk| {
            let (bandwidth, counted) = (bandwidth.clone(), counted.clone());
            async move {
                if let Some(pb::snapshot_chunk::Part::Data(data)) = &chunk.part {
                    let bytes = data.records.len() as u64;
                    let waited = bandwidth.acquire(bytes).await;
                    if !waited.is_zero() {
                        crate::metrics::snapshot_bandwidth_wait(waited);
                    }
                    counted.add(bytes);
                }
                chunk
            }
        });
        let call = client.install_snapshot(chunks);
        let reply = tokio::select! {
            r = call => r,
            _ = cancel => {
                tracing::info!(shard, peer = target, "snapshot transfer cancelled");
                return Err(TransportError::Closed);
            }
        };
        let sent = match producer.await {
            Ok(sent) => sent,
            Err(e) => return Err(TransportError::Unreachable(target, format!("snapshot read failed: {e}"))),
        };
        match reply {
            Ok(resp) => Ok((resp.into_inner().payload, sent)),
            Err(status) => {
                let api = cairn_proto::ApiError::from_status(&status);
                Err(TransportError::Remote(target, api))
            }
        }
    }
}

/// Sets the calling thread's nice value to `nice` (Linux schedules threads
/// apart, so only this thread is affected). The thread is the snapshot
/// reader's own and ends with the transfer: an unprivileged process cannot
/// raise a priority back, so a pooled thread must never be lowered.
#[cfg(target_os = "linux")]
fn lower_thread_priority(nice: i32) {
    if nice <= 0 {
        return;
    }
    // SAFETY: gettid and setpriority read no memory of ours; they act on the
    // calling thread only.
    let failed = unsafe {
        let tid = libc::syscall(libc::SYS_gettid) as libc::id_t;
        libc::setpriority(libc::PRIO_PROCESS, tid, nice) != 0
    };
    if failed {
        tracing::debug!(nice, error = %std::io::Error::last_os_error(), "snapshot reader keeps its priority");
    }
}

#[cfg(not(target_os = "linux"))]
fn lower_thread_priority(_nice: i32) {}

/// Reads the snapshot into chunks (header, data, trailer), handing each to
/// `send`, which returns false once the receiving side is gone.
fn produce(
    header: pb::SnapshotChunk,
    reader: &mut SnapshotReader,
    chunk_bytes: usize,
    mut send: impl FnMut(pb::SnapshotChunk) -> bool,
) -> Result<SnapshotSent, String> {
    let closed = || "receiver closed".to_string();
    let mut sent = SnapshotSent::default();
    if !send(header) {
        return Err(closed());
    }
    while let Some(chunk) = reader.next_chunk(chunk_bytes).map_err(|e| e.to_string())? {
        let (bytes, record_count) = chunk.into_parts();
        sent.records += u64::from(record_count);
        sent.bytes += bytes.len() as u64;
        let chunk = pb::SnapshotChunk {
            part: Some(pb::snapshot_chunk::Part::Data(pb::SnapshotData {
                crc32: crc32fast::hash(&bytes),
                record_count,
                records: bytes,
            })),
        };
        if !send(chunk) {
            return Err(closed());
        }
    }
    let trailer = pb::SnapshotChunk {
        part: Some(pb::snapshot_chunk::Part::Trailer(pb::SnapshotTrailer {
            total_records: sent.records,
            total_bytes: sent.bytes,
        })),
    };
    if !send(trailer) {
        return Err(closed());
    }
    Ok(sent)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn progress_lives_as_long_as_its_transfer() {
        let registry = Arc::new(SnapshotProgress::default());
        assert_eq!(registry.get(1, 2), None);
        let guard = registry.start(1, 2, 1000);
        let counter = guard.counter();
        counter.add(300);
        assert_eq!(registry.get(1, 2), Some(TransferProgress { sent_bytes: 300, total_bytes: 1000 }));
        assert_eq!(registry.get(1, 3), None);
        // The total is an estimate; the report never shows more sent than total.
        counter.add(900);
        assert_eq!(registry.get(1, 2), Some(TransferProgress { sent_bytes: 1200, total_bytes: 1200 }));
        drop(guard);
        assert_eq!(registry.get(1, 2), None);
        // A counter outliving its transfer (a stream not yet dropped) changes nothing.
        counter.add(1);
        assert!(registry.is_empty());
    }

    #[test]
    fn a_newer_transfer_to_the_same_target_survives_the_old_ones_end() {
        let registry = Arc::new(SnapshotProgress::default());
        let old = registry.start(1, 2, 10);
        let new = registry.start(1, 2, 20);
        drop(old);
        assert_eq!(registry.get(1, 2), Some(TransferProgress { sent_bytes: 0, total_bytes: 20 }));
        assert_eq!(registry.len(), 1);
        drop(new);
        assert!(registry.is_empty());
    }
}
