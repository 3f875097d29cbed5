//! Pushing operator steps to the nodes. The PD answers commands in heartbeat
//! replies only, so a step ordered for a node used to wait for that node's next
//! heartbeat: up to its interval (1 s by default; 100 ms once it takes part in an
//! operator), once per step. A replica move has three such hand-offs (leader
//! adds the learner, target creates its replica, leader promotes).
//!
//! After each change of its state, the PD leader works out the commands every
//! node taking part in an operator should now receive and, for a node whose
//! commands differ from those it was last given (in a heartbeat reply or a
//! nudge), calls the node's `Admin.Nudge`; the node heartbeats at once and
//! receives them in the reply.
//!
//! Invariants:
//! - A node is nudged only for commands it has not been given, so nudges and the
//!   heartbeats they cause cannot feed each other.
//! - At most one nudge per node is in flight, each bounded by [`NUDGE_TIMEOUT`];
//!   a lost nudge costs nothing but the wait for the next regular heartbeat.
//! - A nudge carries no command: the heartbeat reply, computed from the PD's
//!   state at that moment, stays the only way commands reach a node.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use cairn_client::{ClientConfig, NodeClient};
use cairn_placement::Observed;
use cairn_placement::model::PdState;
use cairn_proto::net::Net;
use cairn_proto::{NodeCommand, NodeId};

/// The longest a nudge may take (connect included).
const NUDGE_TIMEOUT: Duration = Duration::from_secs(1);

#[derive(Default)]
struct Inner {
    /// Per node: the operator commands it was last given or nudged for.
    given: HashMap<NodeId, Vec<NodeCommand>>,
    in_flight: HashSet<NodeId>,
    /// A client per node, with the address it was made for.
    clients: HashMap<NodeId, (String, NodeClient)>,
}

pub struct Nudger {
    net: Net,
    inner: Mutex<Inner>,
}

impl Nudger {
    pub fn new(net: Net) -> Nudger {
        Nudger { net, inner: Mutex::new(Inner::default()) }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// `node` was just answered a heartbeat while the PD had `commands` for it
    /// (the reply carries them, or as many as it may).
    pub fn given(&self, node: NodeId, commands: &[NodeCommand]) {
        self.lock().given.insert(node, commands.to_vec());
    }

    /// Forgets what every node was given (a new PD leader term).
    pub fn reset(&self) {
        self.lock().given.clear();
    }

    /// Nudges every node taking part in an operator whose commands differ
    /// from those it was last given.
    pub fn nudge_changed(self: &Arc<Self>, state: &PdState, observed: &Observed, now_ms: u64) {
        let cluster_id = state.cluster.as_ref().map(|c| c.cluster_id).unwrap_or(0);
        let mut nudged = Vec::new();
        let mut inner = self.lock();
        for node in cairn_placement::operator::nodes_in_operators(state, observed) {
            let Some(record) = state.nodes.get(&node) else { continue };
            if inner.in_flight.contains(&node) || !observed.is_alive(node, now_ms) {
                continue;
            }
            let commands = cairn_placement::operator::commands_for(state, observed, node, now_ms);
            if commands.is_empty() || inner.given.get(&node) == Some(&commands) {
                continue;
            }
            let Some(client) = client_for(&mut inner, &self.net, node, &record.addr) else { continue };
            inner.given.insert(node, commands);
            inner.in_flight.insert(node);
            nudged.push((node, client));
        }
        drop(inner);
        for (node, client) in nudged {
            let this = self.clone();
            tokio::spawn(async move {
                nudge(client, cluster_id, node).await;
                this.lock().in_flight.remove(&node);
            });
        }
    }
}

/// The cached client of `node` at `addr`, or a new one.
fn client_for(inner: &mut Inner, net: &Net, node: NodeId, addr: &str) -> Option<NodeClient> {
    if let Some((a, c)) = inner.clients.get(&node)
        && a == addr
    {
        return Some(c.clone());
    }
    let config = ClientConfig {
        connect_timeout: NUDGE_TIMEOUT,
        request_timeout: NUDGE_TIMEOUT,
        net: net.clone(),
        ..ClientConfig::default()
    };
    match NodeClient::new(addr, &config) {
        Ok(c) => {
            inner.clients.insert(node, (addr.to_string(), c.clone()));
            Some(c)
        }
        Err(e) => {
            tracing::debug!(%node, addr, error = %e, "no client to nudge the node with");
            None
        }
    }
}

async fn nudge(client: NodeClient, cluster_id: u64, node: NodeId) {
    let outcome = match tokio::time::timeout(NUDGE_TIMEOUT, client.nudge(cluster_id)).await {
        Ok(r) => r,
        Err(_) => Err(cairn_proto::ApiError::DeadlineExceeded(format!("nudge of node {node}"))),
    };
    crate::metrics::pd_nudge(&outcome);
    if let Err(e) = &outcome {
        tracing::debug!(%node, error = %e, "nudge failed (the node's next heartbeat brings its commands)");
    }
}
