//! Streaming a shard snapshot to a peer in bounded, checksummed chunks.
//!
//! A blocking task reads the snapshot view chunk by chunk
//! (`SnapshotReader::next_chunk`) into a channel of capacity
//! [`CHUNKS_IN_FLIGHT`], so at most a few chunks are in memory however large
//! the shard is.

use std::future::Future;

use cairn_proto::pb;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;

use super::{Transport, TransportError};
use crate::storage::codec::encode;
use crate::storage::snapshot::SnapshotReader;

/// Chunks buffered between the disk reader and the network.
pub const CHUNKS_IN_FLIGHT: usize = 2;

/// What the receiver needs besides the records.
pub struct SnapshotOffer {
    pub shard: u64,
    pub vote: Vec<u8>,
    pub meta: Vec<u8>,
    pub shard_state: Vec<u8>,
}

#[derive(Debug, Clone, Copy, Default)]
pub struct SnapshotSent {
    pub records: u64,
    pub bytes: u64,
}

impl Transport {
    /// Streams a snapshot to `target` and returns the receiver's reply payload.
    pub async fn send_snapshot(
        &self,
        target: u64,
        offer: SnapshotOffer,
        mut reader: SnapshotReader,
        cancel: impl Future<Output = ()> + Send,
    ) -> Result<(Vec<u8>, SnapshotSent), TransportError> {
        let mut client = self.client_for(target)?;
        let (tx, rx) = mpsc::channel::<pb::SnapshotChunk>(CHUNKS_IN_FLIGHT);
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
        let producer = tokio::task::spawn_blocking(move || -> Result<SnapshotSent, String> {
            let mut sent = SnapshotSent::default();
            if tx.blocking_send(header).is_err() {
                return Err("receiver closed".into());
            }
            while let Some(records) = reader.next_chunk(chunk_bytes).map_err(|e| e.to_string())? {
                let bytes = encode(&records);
                sent.records += records.len() as u64;
                sent.bytes += bytes.len() as u64;
                let chunk = pb::SnapshotChunk {
                    part: Some(pb::snapshot_chunk::Part::Data(pb::SnapshotData {
                        crc32: crc32fast::hash(&bytes),
                        record_count: records.len() as u32,
                        records: bytes,
                    })),
                };
                if tx.blocking_send(chunk).is_err() {
                    return Err("receiver closed".into());
                }
            }
            let trailer = pb::SnapshotChunk {
                part: Some(pb::snapshot_chunk::Part::Trailer(pb::SnapshotTrailer {
                    total_records: sent.records,
                    total_bytes: sent.bytes,
                })),
            };
            tx.blocking_send(trailer).map_err(|_| "receiver closed".to_string())?;
            Ok(sent)
        });
        let call = client.install_snapshot(ReceiverStream::new(rx));
        let reply = tokio::select! {
            r = call => r,
            _ = cancel => {
                tracing::info!(shard, peer = target, "snapshot transfer cancelled");
                return Err(TransportError::Closed);
            }
        };
        let sent = match producer.await {
            Ok(Ok(sent)) => sent,
            Ok(Err(e)) => return Err(TransportError::Unreachable(target, format!("snapshot read failed: {e}"))),
            Err(e) => return Err(TransportError::Unreachable(target, format!("snapshot reader panicked: {e}"))),
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
