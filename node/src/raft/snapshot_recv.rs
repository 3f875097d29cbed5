//! Receiving a snapshot streamed by a shard leader: validate every part, stage
//! the records under a fresh data id in bounded transactions, then hand the
//! staged view to openraft, which installs it through the state machine.
//! On any failure the staged data is discarded and the shard is unchanged.

use std::collections::VecDeque;

use cairn_proto::ApiError;
use tokio::sync::oneshot;

use super::group::RaftGroup;
use super::types::{Snapshot, SnapshotMeta, Vote};
use crate::storage::codec::{decode, encode};
use crate::storage::snapshot::{SnapshotChunk, SnapshotView};
use crate::storage::tables::{ShardRecord, SnapshotShardState};
use crate::storage::{StorageError, WriteOp};

/// Chunks staged by the storage writer while the next one is received: the
/// receiver's memory is bounded by this many decoded chunks plus the one in hand.
const STAGE_IN_FLIGHT: usize = 2;

/// The storage writer's answer to one staged chunk.
fn staged_ok(answer: Result<Result<(), StorageError>, oneshot::error::RecvError>) -> Result<(), ApiError> {
    match answer {
        Ok(Ok(())) => Ok(()),
        Ok(Err(e)) => Err(ApiError::Unavailable(e.to_string())),
        Err(_) => Err(ApiError::Unavailable(StorageError::Closed.to_string())),
    }
}

/// One part of an incoming snapshot stream, already taken off the wire.
pub enum SnapshotPart {
    Header { shard: u64, vote: Vec<u8>, meta: Vec<u8>, shard_state: Vec<u8> },
    Data { records: Vec<u8>, record_count: u32, crc32: u32 },
    Trailer { total_records: u64, total_bytes: u64 },
}

impl RaftGroup {
    /// Consumes the stream after its header; returns the encoded openraft reply.
    pub async fn receive_snapshot(
        &self,
        vote: Vec<u8>,
        meta: Vec<u8>,
        shard_state: Vec<u8>,
        mut parts: impl futures::Stream<Item = Result<SnapshotPart, ApiError>> + Unpin,
    ) -> Result<Vec<u8>, ApiError> {
        use futures::StreamExt;
        let bad = |what: String| ApiError::InvalidArgument(format!("snapshot for shard {}: {what}", self.shard()));
        let vote: Vote = decode(&vote).map_err(|e| bad(format!("vote: {e}")))?;
        let meta: SnapshotMeta = decode(&meta).map_err(|e| bad(format!("meta: {e}")))?;
        let SnapshotShardState { descriptor, stats } =
            decode(&shard_state).map_err(|e| bad(format!("shard state: {e}")))?;
        if descriptor.id != self.shard() {
            return Err(bad(format!("descriptor names shard {}", descriptor.id)));
        }
        let storage = self.storage().clone();
        let data_id = storage
            .call(|done| WriteOp::AllocStaging { done })
            .await
            .map_err(|e| ApiError::Unavailable(e.to_string()))?;
        let started = std::time::Instant::now();
        // Chunks handed to the storage writer and not yet written, oldest first:
        // the next chunk is read and decoded while the writer stores these.
        let mut pending: VecDeque<oneshot::Receiver<Result<(), StorageError>>> = VecDeque::new();
        let staged = async {
            let (mut records_seen, mut bytes_seen) = (0u64, 0u64);
            loop {
                let Some(part) = parts.next().await else {
                    return Err(bad("stream ended before its trailer".into()));
                };
                match part? {
                    SnapshotPart::Header { .. } => return Err(bad("second header".into())),
                    SnapshotPart::Data { records, record_count, crc32 } => {
                        if crc32fast::hash(&records) != crc32 {
                            return Err(bad("chunk checksum mismatch".into()));
                        }
                        let records_len = records.len() as u64;
                        let chunk =
                            SnapshotChunk::validate(records, record_count).map_err(|e| bad(format!("chunk: {e}")))?;
                        records_seen += u64::from(chunk.count());
                        bytes_seen += records_len;
                        if pending.len() >= STAGE_IN_FLIGHT
                            && let Some(oldest) = pending.pop_front()
                        {
                            staged_ok(oldest.await)?;
                        }
                        let (done, written) = oneshot::channel();
                        storage
                            .submit(WriteOp::StageRecords { data_id, chunk, done })
                            .await
                            .map_err(|e| ApiError::Unavailable(e.to_string()))?;
                        pending.push_back(written);
                    }
                    SnapshotPart::Trailer { total_records, total_bytes } => {
                        if total_records != records_seen || total_bytes != bytes_seen {
                            return Err(bad(format!(
                                "trailer says {total_records} records / {total_bytes} bytes, received {records_seen} / {bytes_seen}"
                            )));
                        }
                        while let Some(oldest) = pending.pop_front() {
                            staged_ok(oldest.await)?;
                        }
                        return Ok(bytes_seen);
                    }
                }
            }
        }
        .await;
        let bytes = match staged {
            Ok(b) => b,
            Err(e) => {
                // Every submitted chunk is written (or failed) before the discard,
                // which the writer then applies after them.
                for written in pending.drain(..) {
                    let _ = written.await;
                }
                let _ = storage.submit(WriteOp::DiscardStaging { data_id }).await;
                tracing::warn!(shard = %self.shard(), error = %e, "snapshot rejected");
                return Err(e);
            }
        };
        let staged_in = started.elapsed();
        tracing::info!(shard = %self.shard(), bytes, staged_s = staged_in.as_secs_f64(), "snapshot staged");
        let record = ShardRecord {
            descriptor,
            data_id,
            applied_index: meta.last_log_id.map(|l| l.index).unwrap_or(0),
            applied_log_id: meta.last_log_id.map(|l| encode(&l)),
            membership: Some(encode(&meta.last_membership)),
            stats,
        };
        let txn = storage.begin_read().map_err(|e| ApiError::Unavailable(e.to_string()))?;
        let view = SnapshotView { record, txn: std::sync::Arc::new(txn) };
        let result = self.raft().install_full_snapshot(vote, Snapshot { meta, snapshot: view }).await;
        // openraft may decline an outdated snapshot; then nothing refers to the staged data.
        let installed =
            storage.shard_record(self.shard()).ok().flatten().map(|r| r.data_id == data_id).unwrap_or(false);
        if !installed {
            let _ = storage.submit(WriteOp::DiscardStaging { data_id }).await;
        }
        tracing::info!(
            shard = %self.shard(),
            installed,
            install_s = (started.elapsed() - staged_in).as_secs_f64(),
            "snapshot received"
        );
        crate::metrics::snapshot_received(bytes, started.elapsed());
        let resp = result.map_err(|e| ApiError::Unavailable(e.to_string()))?;
        Ok(encode(&resp))
    }
}
