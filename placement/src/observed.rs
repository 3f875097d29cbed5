//! What the PD leader has learned from heartbeats. Never stored: a new PD
//! leader starts empty and treats every node as up for one grace period
//! ([`NODE_DOWN_AFTER_MS`] from its takeover), by which time every live node
//! has reported again.

use std::collections::{BTreeMap, BTreeSet};

use cairn_proto::{Heartbeat, NodeId, NodeStats, PeerProgress, RaftRole, ShardId};

/// How often nodes heartbeat, unless the PD says otherwise.
pub const HEARTBEAT_INTERVAL_MS: u64 = 1_000;
/// A node not heard from for this long is shown as down.
pub const NODE_DOWN_AFTER_MS: u64 = 5_000;
/// A node not heard from for this long is not given new work (replicas,
/// leaderships), though it is not down yet: a node that just died must not
/// receive a leader transfer in the seconds before it is declared down.
pub const NODE_FRESH_MS: u64 = 2_500;

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct NodeObs {
    pub last_heartbeat_ms: u64,
    pub stats: NodeStats,
    /// Shards the node hosts a live replica of, as of its last heartbeat.
    pub hosted: BTreeSet<ShardId>,
}

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ShardObs {
    pub leader: Option<NodeId>,
    pub term: u64,
    pub applied_index: u64,
    pub key_count: u64,
    pub size_bytes: u64,
    /// From the leader's last report: its configuration's `conf_ver`, whether
    /// that configuration is joint, its last log index and its peers' progress.
    pub conf_ver: u64,
    pub joint: bool,
    pub last_log_index: u64,
    pub progress: Vec<PeerProgress>,
}

impl ShardObs {
    pub fn progress_of(&self, node: NodeId) -> Option<&PeerProgress> {
        self.progress.iter().find(|p| p.node == node)
    }
}

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Observed {
    /// When the current PD leader took over (Unix ms).
    pub since_ms: u64,
    pub nodes: BTreeMap<NodeId, NodeObs>,
    pub shards: BTreeMap<ShardId, ShardObs>,
}

impl Observed {
    pub fn new(since_ms: u64) -> Self {
        Self { since_ms, ..Default::default() }
    }

    /// Records a heartbeat (a full report replaces what the node hosts; a delta
    /// adds the reported replicas and drops the removed ones); returns the
    /// shards whose leader changed. Reports of shards for which `known` is
    /// false are dropped, so the observed state stays bounded by the shard map.
    pub fn record(&mut self, hb: &Heartbeat, known: impl Fn(ShardId) -> bool, now_ms: u64) -> Vec<ShardId> {
        let node = self.nodes.entry(hb.node).or_default();
        node.last_heartbeat_ms = now_ms;
        node.stats = hb.stats.clone();
        if hb.full {
            node.hosted.clear();
        }
        for s in &hb.removed {
            node.hosted.remove(s);
        }
        for r in hb.replicas.iter().filter(|r| known(r.shard)) {
            if r.role == RaftRole::Shutdown {
                node.hosted.remove(&r.shard);
            } else {
                node.hosted.insert(r.shard);
            }
        }
        let mut changed = Vec::new();
        for r in hb.replicas.iter().filter(|r| known(r.shard)) {
            let Some(leader) = r.leader else { continue };
            let obs = self.shards.entry(r.shard).or_default();
            // A report from an older term never overrides a newer one.
            if r.term < obs.term {
                continue;
            }
            if obs.leader != Some(leader) {
                changed.push(r.shard);
            }
            obs.leader = Some(leader);
            obs.term = r.term;
            if r.role == RaftRole::Leader {
                obs.applied_index = r.applied_index;
                obs.key_count = r.key_count;
                obs.size_bytes = r.size_bytes;
                obs.conf_ver = r.epoch.conf_ver;
                obs.joint = r.joint;
                obs.last_log_index = r.last_log_index;
                obs.progress = r.progress.clone();
            }
        }
        changed
    }

    /// Milliseconds since the node's last heartbeat, if any since takeover.
    pub fn heartbeat_age(&self, node: NodeId, now_ms: u64) -> Option<u64> {
        self.nodes.get(&node).map(|n| now_ms.saturating_sub(n.last_heartbeat_ms))
    }

    /// Whether the node counts as alive: heard from recently, or not yet
    /// expected to have been heard from since this PD leader took over.
    pub fn is_alive(&self, node: NodeId, now_ms: u64) -> bool {
        let last = self.nodes.get(&node).map(|n| n.last_heartbeat_ms).unwrap_or(self.since_ms);
        now_ms.saturating_sub(last) < NODE_DOWN_AFTER_MS
    }

    /// Whether the node has reported recently enough to be given new work.
    pub fn is_fresh(&self, node: NodeId, now_ms: u64) -> bool {
        self.nodes.get(&node).is_some_and(|n| now_ms.saturating_sub(n.last_heartbeat_ms) < NODE_FRESH_MS)
    }

    /// Whether the node has actually reported since this PD leader took over.
    pub fn has_reported(&self, node: NodeId) -> bool {
        self.nodes.contains_key(&node)
    }

    pub fn hosts(&self, node: NodeId, shard: ShardId) -> bool {
        self.nodes.get(&node).is_some_and(|n| n.hosted.contains(&shard))
    }

    /// How long the node has been silent, counting from this PD leader's
    /// takeover for a node not heard from since.
    pub fn silent_for(&self, node: NodeId, now_ms: u64) -> u64 {
        let last = self.nodes.get(&node).map(|n| n.last_heartbeat_ms).unwrap_or(self.since_ms);
        now_ms.saturating_sub(last)
    }

    /// Every node has had the time to report since this PD leader took over,
    /// so the observed state is complete enough to schedule from.
    pub fn settled(&self, now_ms: u64) -> bool {
        now_ms.saturating_sub(self.since_ms) >= NODE_DOWN_AFTER_MS
    }
}
