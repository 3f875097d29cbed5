//! The node's side of the placement driver: registration and heartbeats, and
//! the execution of the commands heartbeat answers carry.
//!
//! Every node runs one agent, PD members included. A heartbeat reports the
//! node's counters and every replica it hosts (role, leader, term, applied
//! index, key count and size); the PD answers with commands, which the agent
//! executes before the next heartbeat. Commands are idempotent and re-sent by
//! the PD until the node reports their effect, so a lost answer costs one
//! interval.

use std::sync::Arc;
use std::time::Duration;

use cairn_client::PdClient;
use cairn_proto::{ApiError, Heartbeat, NodeCommand, NodeId, RegisterNode, ReplicaReport, ReplicaRole};
use tokio_util::sync::CancellationToken;

use super::PD_SHARD;
use crate::config::NodeConfig;
use crate::node::NodeShared;

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
                let hb = heartbeat(&node, cluster_id);
                let sent = pd.heartbeat(&hb).await;
                crate::metrics::heartbeat_sent(&sent);
                match sent {
                    Ok((commands, next)) => {
                        if failures > 0 {
                            tracing::info!(after = failures, "placement driver reachable again");
                        }
                        failures = 0;
                        if !next.is_zero() {
                            interval = next.clamp(Duration::from_millis(100), Duration::from_secs(60));
                        }
                        for command in commands {
                            execute(&node, &config, command).await;
                        }
                    }
                    Err(e) => {
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

fn heartbeat(node: &NodeShared, cluster_id: u64) -> Heartbeat {
    let records = node.storage.shard_records().unwrap_or_default();
    let replicas = node
        .registry
        .all()
        .iter()
        .filter(|r| r.shard() != PD_SHARD)
        .map(|r| {
            let st = r.group.status();
            let stats = records.iter().find(|rec| rec.shard() == r.shard()).map(|rec| rec.stats).unwrap_or_default();
            ReplicaReport {
                shard: r.shard(),
                epoch: r.descriptor().epoch,
                role: st.role,
                leader: st.leader,
                term: st.term,
                applied_index: st.applied_index,
                key_count: stats.key_count,
                size_bytes: stats.size_bytes,
            }
        })
        .collect();
    Heartbeat { node: node.id, cluster_id, addr: node.addr.clone(), stats: node.stats(), replicas }
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
