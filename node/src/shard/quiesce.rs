//! Quiescent groups (docs/rfcs/001-quiescent-groups.md): a task that puts idle
//! groups led here to sleep, and a failure detector that wakes the groups whose
//! leader's node stopped answering.
//!
//! Both tasks own their state (when each group last grew its log, when each peer
//! last answered) and stop with the node's cancellation token.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;

use cairn_proto::ShardId;
use futures::StreamExt;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::node::NodeShared;
use crate::raft::RaftSettings;
use cairn_proto::RaftRole;

/// Groups put to sleep at once.
const QUIESCE_CONCURRENCY_MAX: usize = 64;

/// Spawns the quiescer and the peer failure detector.
pub fn spawn(node: Arc<NodeShared>, settings: &RaftSettings, cancel: CancellationToken) -> Vec<JoinHandle<()>> {
    let mut tasks = Vec::new();
    if settings.quiesce_after_ms > 0 {
        let quiesce_after = Duration::from_millis(settings.quiesce_after_ms);
        let (node, cancel) = (node.clone(), cancel.clone());
        tasks.push(tokio::spawn(async move {
            let mut idle_since: HashMap<ShardId, (u64, Instant)> = HashMap::new();
            let mut tick = tokio::time::interval(quiesce_after / 4);
            loop {
                tokio::select! {
                    _ = cancel.cancelled() => return,
                    _ = tick.tick() => {}
                }
                let mut candidates = Vec::new();
                for replica in node.registry.all() {
                    let st = replica.group.status();
                    if st.role != RaftRole::Leader || replica.group.is_quiescent() {
                        idle_since.remove(&replica.shard());
                        continue;
                    }
                    let now = Instant::now();
                    let entry = idle_since.entry(replica.shard()).or_insert((st.last_log_index, now));
                    if entry.0 != st.last_log_index {
                        *entry = (st.last_log_index, now);
                    } else if now.duration_since(entry.1) >= quiesce_after {
                        candidates.push(replica);
                    }
                }
                // Bounded concurrency: each attempt is one round trip to the followers.
                let attempts = futures::stream::iter(candidates)
                    .map(|r| async move { r.group.try_quiesce().await.then_some(r.shard()) })
                    .buffer_unordered(QUIESCE_CONCURRENCY_MAX)
                    .filter_map(|s| async move { s })
                    .collect::<Vec<ShardId>>();
                let Some(slept) = cancel.run_until_cancelled(attempts).await else { return };
                for s in &slept {
                    idle_since.remove(s);
                }
                let slept = slept.len();
                if slept > 0 {
                    tracing::debug!(groups = slept, "groups went quiescent");
                }
            }
        }));
    }
    let interval = Duration::from_millis(settings.peer_ping_interval_ms);
    let down_after = Duration::from_millis(settings.peer_down_after_ms);
    tasks.push(tokio::spawn(async move {
        let mut last_ok: HashMap<u64, Instant> = HashMap::new();
        let mut tick = tokio::time::interval(interval);
        loop {
            tokio::select! {
                _ = cancel.cancelled() => return,
                _ = tick.tick() => {}
            }
            let peers = node.transport.peer_ids();
            let pings = futures::future::join_all(peers.iter().map(|p| node.transport.ping(*p, interval)));
            let Some(results) = cancel.run_until_cancelled(pings).await else { return };
            let now = Instant::now();
            for (peer, result) in peers.into_iter().zip(results) {
                let seen = last_ok.entry(peer).or_insert(now);
                if result.is_ok() {
                    *seen = now;
                    continue;
                }
                if now.duration_since(*seen) < down_after {
                    continue;
                }
                let mut woken = 0;
                for replica in node.registry.all() {
                    if replica.group.is_quiescent() && replica.group.status().leader.map(|l| l.0) == Some(peer) {
                        replica.group.set_ticking(true);
                        woken += 1;
                    }
                }
                if woken > 0 {
                    tracing::info!(peer, groups = woken, "peer is down: woke the groups it led");
                }
            }
        }
    }));
    tasks
}
