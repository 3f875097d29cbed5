//! The node's side of the placement driver: registration and heartbeats, and
//! the execution of the commands heartbeat answers carry.
//!
//! Every node runs one agent, PD members included. A heartbeat reports the
//! node's counters and its replicas (role, leader, term, applied index, and for
//! led shards key count and size); the PD answers with commands, which the agent
//! executes before the next heartbeat. To keep idle nodes with many replicas
//! cheap, a heartbeat carries only the replicas whose report changed (and the
//! ones removed), with a full report every [`FULL_REPORT_EVERY`] heartbeats,
//! after any failure, and whenever the PD asks (a new PD leader does). Commands are idempotent and re-sent by
//! the PD until the node reports their effect, so a lost answer costs one
//! interval.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use cairn_client::PdClient;
use cairn_proto::{
    ApiError, Heartbeat, NodeCommand, NodeId, RaftRole, RegisterNode, ReplicaReport, ReplicaRole, ShardId,
};
use tokio_util::sync::CancellationToken;

use super::PD_SHARD;
use crate::config::NodeConfig;
use crate::node::NodeShared;

/// A heartbeat reports every replica at least this often (in heartbeats).
pub const FULL_REPORT_EVERY: u32 = 60;

/// Builds heartbeats: full or only what changed since the last one sent.
#[derive(Default)]
struct Reporter {
    last: HashMap<ShardId, ReplicaReport>,
    since_full: u32,
    want_full: bool,
}

impl Reporter {
    /// The heartbeat to send now and the reports it stands for.
    fn build(&self, node: &NodeShared, cluster_id: u64) -> (Heartbeat, HashMap<ShardId, ReplicaReport>) {
        let mut current = HashMap::new();
        for r in node.registry.all().iter().filter(|r| r.shard() != PD_SHARD) {
            let st = r.group.status();
            let shard = r.shard();
            // Sizes come from the leader only; unchanged applied index, unchanged size.
            let (key_count, size_bytes) = match (st.role, self.last.get(&shard)) {
                (RaftRole::Leader, Some(prev)) if prev.applied_index == st.applied_index && prev.role == st.role => {
                    (prev.key_count, prev.size_bytes)
                }
                (RaftRole::Leader, _) => node
                    .storage
                    .shard_record(shard)
                    .ok()
                    .flatten()
                    .map(|rec| (rec.stats.key_count, rec.stats.size_bytes))
                    .unwrap_or_default(),
                _ => (0, 0),
            };
            let descriptor = r.descriptor();
            let replicas = if st.role == RaftRole::Leader { descriptor.replicas } else { Vec::new() };
            let report = ReplicaReport {
                shard,
                epoch: descriptor.epoch,
                role: st.role,
                leader: st.leader,
                term: st.term,
                applied_index: st.applied_index,
                key_count,
                size_bytes,
                replicas,
            };
            current.insert(shard, report);
        }
        let full = self.want_full || self.since_full + 1 >= FULL_REPORT_EVERY;
        let (replicas, removed) = if full {
            (current.values().cloned().collect(), Vec::new())
        } else {
            let changed = current.values().filter(|r| self.last.get(&r.shard) != Some(*r)).cloned().collect();
            let removed = self.last.keys().filter(|s| !current.contains_key(s)).copied().collect();
            (changed, removed)
        };
        let hb = Heartbeat {
            node: node.id,
            cluster_id,
            addr: node.addr.clone(),
            stats: node.stats(),
            replicas,
            full,
            removed,
        };
        (hb, current)
    }

    fn sent(&mut self, hb: &Heartbeat, current: HashMap<ShardId, ReplicaReport>, full_report_wanted: bool) {
        self.last = current;
        self.since_full = if hb.full { 0 } else { self.since_full + 1 };
        self.want_full = full_report_wanted;
    }

    fn failed(&mut self) {
        // The PD may have changed leaders meanwhile: tell the next one everything.
        self.want_full = true;
    }
}

/// Registers until the PD answers (it may still be electing or bootstrapping).
/// Returns `None` if cancelled first.
pub async fn register_until_done(
    pd: &PdClient,
    req: &RegisterNode,
    cancel: &CancellationToken,
) -> Result<Option<(NodeId, u64)>, ApiError> {
    let mut attempt = 0u32;
    loop {
        match pd.register_node(req).await {
            Ok(r) => return Ok(Some(r)),
            // A refusal (wrong cluster, address taken, removed) will not change by retrying.
            Err(e @ ApiError::InvalidArgument(_)) => return Err(e),
            Err(e) => {
                attempt += 1;
                if attempt == 1 || attempt % 10 == 0 {
                    tracing::info!(error = %e, endpoints = ?pd.endpoints(), "waiting for the placement driver");
                }
            }
        }
        tokio::select! {
            _ = cancel.cancelled() => return Ok(None),
            _ = tokio::time::sleep(Duration::from_millis(500)) => {}
        }
    }
}

pub fn registration(config: &NodeConfig, node: Option<NodeId>, cluster_id: u64) -> RegisterNode {
    RegisterNode {
        node,
        addr: config.advertise_addr(),
        capacity_bytes: config.capacity_bytes,
        labels: config.labels.clone(),
        cluster_id,
    }
}

/// Runs the heartbeat loop until `cancel`.
pub fn spawn(
    node: Arc<NodeShared>,
    pd: PdClient,
    config: NodeConfig,
    cluster_id: u64,
    cancel: CancellationToken,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut interval = Duration::from_millis(config.heartbeat_interval_ms);
        let mut failures = 0u32;
        let mut reporter = Reporter { want_full: true, ..Default::default() };
        // Confirm the address (and for PD members, learn nothing new) once.
        let mut registered = false;
        loop {
            if !registered {
                match pd.register_node(&registration(&config, Some(node.id), cluster_id)).await {
                    Ok(_) => registered = true,
                    Err(e) => tracing::debug!(error = %e, "registration not confirmed yet"),
                }
            }
            if registered {
                let (hb, current) = reporter.build(&node, cluster_id);
                let sent = pd.heartbeat(&hb).await;
                crate::metrics::heartbeat_sent(&sent);
                match sent {
                    Ok(answer) => {
                        reporter.sent(&hb, current, answer.full_report_wanted);
                        if failures > 0 {
                            tracing::info!(after = failures, "placement driver reachable again");
                        }
                        failures = 0;
                        if answer.interval_ms != 0 {
                            interval = Duration::from_millis(answer.interval_ms.clamp(100, 60_000));
                        }
                        for command in answer.commands {
                            execute(&node, &config, command).await;
                        }
                    }
                    Err(e) => {
                        reporter.failed();
                        failures += 1;
                        if failures == 1 || failures % 30 == 0 {
                            tracing::warn!(error = %e, failures, "heartbeat to the placement driver failed");
                        }
                    }
                }
            }
            tokio::select! {
                _ = cancel.cancelled() => return,
                _ = tokio::time::sleep(interval) => {}
            }
        }
    })
}

async fn execute(node: &NodeShared, config: &NodeConfig, command: NodeCommand) {
    match command {
        NodeCommand::CreateReplica { mut descriptor } => {
            let shard = descriptor.id;
            // The PD records the epoch the group has once initialised; the
            // group's first membership entry is what moves conf_ver 0 -> 1.
            descriptor.epoch.conf_ver = 0;
            if shard == PD_SHARD || node.registry.get(shard).is_some() {
                return;
            }
            if !descriptor.replicas.iter().any(|r| r.node == node.id) {
                tracing::warn!(%shard, "PD asked for a replica of a shard this node is not a member of; ignored");
                return;
            }
            let voters: Vec<(NodeId, String)> = descriptor
                .replicas
                .iter()
                .filter(|r| r.role == ReplicaRole::Voter)
                .map(|r| (r.node, r.addr.clone()))
                .collect();
            if let Err(e) = node.create_replica(descriptor, Some(&voters), config).await {
                tracing::warn!(%shard, error = %e, "creating a replica failed; the PD will ask again");
            }
        }
    }
}
