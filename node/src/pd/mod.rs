//! The placement driver's runtime, on every node, acting while the node hosts
//! a replica of shard 0 (a PD member, RFC 004): the decisions are pure
//! functions in `cairn-placement`; this module loads the PD state from shard 0
//! (the PD's own Raft group, hosted by the PD members), runs the decisions on
//! the PD group's leader, commits their writes as one `Txn` each, and streams
//! shard-map changes to watchers.
//!
//! Invariants:
//! - Only the leader of shard 0 answers, and only from state it loaded after
//!   a read barrier in its current term; losing leadership drops that state
//!   (and ends every watch stream, whose clients re-subscribe elsewhere).
//! - Every write compares the versions of the keys it touches, so a deposed
//!   leader that has not noticed yet cannot overwrite its successor's writes.
//! - Watch revisions are `term << 32 | sequence`: increasing across leader
//!   changes, and a revision from another term always gets a full resync.

pub mod agent;
mod nudge;

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Duration;

use cairn_placement::{self as placement, Observed, PdState, Writes, model::KeyOp};
use cairn_proto::net::Net;
use cairn_proto::{
    AdminRequest, ApiError, ClusterSettings, ClusterStatus, Heartbeat, HeartbeatAnswer, KeyRange, NodeId, NodeInfo,
    OperatorInfo, OperatorKind, RebalanceStatus, RegisterNode, Session, ShardId, ShardMapEvent, ShardRoute,
};
use tokio::sync::{Mutex, MutexGuard, broadcast};
use tokio_util::sync::CancellationToken;

use crate::command::{CommandResponse, KvWrite, ShardCommand, TxnOp};
use crate::shard::{Registry, Replica};
use crate::storage::Storage;

/// The PD's own shard: never routed to by clients; moved only by repair and drain.
pub use cairn_placement::model::PD_SHARD;
/// Shard-map events kept for watchers that resume.
const WATCH_RING: usize = 1024;
/// How often the PD leader looks for work of its own (initial shards).
const TICK: Duration = Duration::from_millis(500);

/// Settings the first PD leader writes when it bootstraps the cluster.
#[derive(Clone, Debug)]
pub struct BootstrapSettings {
    pub members: Vec<(NodeId, String)>,
    pub initial_shards: u32,
    pub settings: ClusterSettings,
}

struct Leader {
    term: u64,
    state: PdState,
    observed: Observed,
    revision: u64,
    ring: VecDeque<ShardMapEvent>,
    events: broadcast::Sender<ShardMapEvent>,
}

pub struct PdRuntime {
    node: NodeId,
    addr: String,
    registry: Arc<Registry>,
    storage: Arc<Storage>,
    bootstrap: BootstrapSettings,
    leader: Mutex<Option<Leader>>,
    /// Tells nodes to heartbeat when the leader has new commands for them.
    nudger: Arc<nudge::Nudger>,
}

/// The wall clock (a simulation's, in the turmoil test tier).
fn now_ms() -> u64 {
    cairn_proto::sim::now_ms()
}

fn pd_error(e: placement::PdError) -> ApiError {
    match e {
        placement::PdError::NotBootstrapped => ApiError::Unavailable(e.to_string()),
        placement::PdError::UnknownShard(shard) => ApiError::ShardNotFound { shard },
        _ => ApiError::InvalidArgument(e.to_string()),
    }
}

fn operator_kind_label(kind: &OperatorKind) -> &'static str {
    match kind {
        OperatorKind::MoveReplica { .. } => "move-replica",
        OperatorKind::AddReplica { .. } => "add-replica",
        OperatorKind::RemoveReplica { .. } => "remove-replica",
        OperatorKind::TransferLeader { .. } => "transfer-leader",
    }
}

impl PdRuntime {
    pub fn new(
        node: NodeId,
        addr: String,
        registry: Arc<Registry>,
        storage: Arc<Storage>,
        bootstrap: BootstrapSettings,
        net: Net,
    ) -> Arc<Self> {
        let nudger = Arc::new(nudge::Nudger::new(net));
        Arc::new(Self { node, addr, registry, storage, bootstrap, leader: Mutex::new(None), nudger })
    }

    /// Runs the leader's periodic work until `cancel`.
    pub fn spawn(self: &Arc<Self>, cancel: CancellationToken) -> tokio::task::JoinHandle<()> {
        let this = self.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(TICK);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tokio::select! {
                    _ = cancel.cancelled() => return,
                    _ = tick.tick() => {}
                }
                // A tick may wait on a PD write that cannot commit (the
                // other members gone): shutdown must not wait for it.
                let Some(ticked) = cancel.run_until_cancelled(this.tick()).await else { return };
                if let Err(e) = ticked
                    && !matches!(e, ApiError::NotLeader { .. })
                {
                    tracing::warn!(error = %e, "PD tick failed");
                }
            }
        })
    }

    fn group(&self) -> Result<Arc<Replica>, ApiError> {
        self.registry.get(PD_SHARD).ok_or(ApiError::ShardNotFound { shard: PD_SHARD })
    }

    /// The PD leader's address as this member knows it (`None` if unknown or self).
    pub fn leader_hint(&self) -> Option<(NodeId, String)> {
        let replica = self.group().ok()?;
        let (id, addr) = replica.group.leader_hint()?;
        (id != self.node && !addr.is_empty()).then_some((id, addr))
    }

    /// Whether this node hosts a replica of shard 0 now (a PD member).
    pub fn is_member(&self) -> bool {
        self.registry.get(PD_SHARD).is_some()
    }

    /// Whether this member currently leads the PD group.
    pub fn is_leader(&self) -> bool {
        self.group().map(|r| r.group.is_leader()).unwrap_or(false)
    }

    /// Locks the leader state, loading it if this member became leader in a new
    /// term. Fails with `NOT_LEADER` (with a hint) on a follower.
    async fn lead(&self) -> Result<MutexGuard<'_, Option<Leader>>, ApiError> {
        let replica = self.group()?;
        let status = replica.group.status();
        let mut guard = self.leader.lock().await;
        if !replica.group.is_leader() {
            *guard = None;
            return Err(ApiError::NotLeader { shard: PD_SHARD, leader: self.leader_hint() });
        }
        if guard.as_ref().is_some_and(|l| l.term == status.term) {
            return Ok(guard);
        }
        *guard = None;
        self.nudger.reset();
        replica.group.wake();
        replica.group.read_barrier().await.map_err(|e| match e {
            crate::raft::GroupError::NotLeader(leader) => ApiError::NotLeader { shard: PD_SHARD, leader },
            other => ApiError::Unavailable(other.to_string()),
        })?;
        let state = self.load()?;
        let (events, _) = broadcast::channel(WATCH_RING);
        let mut leader = Leader {
            term: status.term,
            state,
            observed: Observed::new(now_ms()),
            revision: status.term << 32,
            ring: VecDeque::new(),
            events,
        };
        if leader.state.cluster.is_none() {
            let b = &self.bootstrap;
            if b.members.is_empty() {
                // A node that joined the PD of a cluster whose state it has
                // not received yet: it cannot be the first leader.
                return Err(ApiError::Unavailable("the PD state is not bootstrapped on this member".into()));
            }
            let cluster_id = cairn_proto::sim::random_u64() >> 1 | 1;
            let writes = placement::bootstrap(cluster_id, now_ms(), &b.members, b.initial_shards, b.settings.clone())
                .map_err(pd_error)?;
            self.commit(&replica, &mut leader, writes).await?;
            tracing::info!(cluster_id, "cluster bootstrapped");
        }
        tracing::info!(
            term = status.term,
            nodes = leader.state.nodes.len(),
            shards = leader.state.shards.len(),
            "this node leads the placement driver"
        );
        *guard = Some(leader);
        Ok(guard)
    }

    /// Reads every PD record from this replica of shard 0.
    fn load(&self) -> Result<PdState, ApiError> {
        let range = KeyRange::prefix(placement::model::PREFIX);
        let page = self
            .storage
            .read_docs(PD_SHARD, |_, docs| docs.scan(&range, usize::MAX))
            .map_err(|e| ApiError::Internal(format!("reading the PD state: {e}")))?;
        let records = page.0.iter().map(|(k, d)| (k.as_slice(), d.value.as_slice(), d.version));
        PdState::load(records).map_err(|e| ApiError::Internal(format!("the PD state is invalid: {e}")))
    }

    /// Commits `writes` as one transaction and applies them to the leader state.
    async fn commit(&self, replica: &Replica, leader: &mut Leader, writes: Writes) -> Result<u64, ApiError> {
        let r = self.commit_inner(replica, leader, writes).await;
        crate::metrics::pd_commit(&r);
        r
    }

    async fn commit_inner(&self, replica: &Replica, leader: &mut Leader, writes: Writes) -> Result<u64, ApiError> {
        let (compares, ops) = writes.to_ops(&leader.state);
        let ops = ops
            .into_iter()
            .map(|op| match op {
                KeyOp::Put(key, value) => TxnOp::Put { key, value },
                KeyOp::Delete(key) => TxnOp::Delete { key },
            })
            .collect();
        let cmd = ShardCommand {
            session: Session::default(),
            ts_ms: now_ms(),
            range_version: replica.descriptor().epoch.version,
            op: KvWrite::Txn { compares, ops },
        };
        let version = match replica.group.write(cmd).await {
            Ok(CommandResponse::Txn { version }) => version,
            Ok(CommandResponse::ConditionFailed { current_version }) => {
                // Someone else wrote: this leader's view is stale. Reload next time.
                leader.term = 0;
                return Err(ApiError::Unavailable(format!(
                    "the PD state changed under this leader (version {current_version}); retry"
                )));
            }
            Ok(other) => return Err(ApiError::Internal(format!("unexpected PD write result {other:?}"))),
            Err(crate::raft::GroupError::NotLeader(hint)) => {
                leader.term = 0;
                return Err(ApiError::NotLeader { shard: PD_SHARD, leader: hint });
            }
            Err(e) => return Err(ApiError::Unavailable(e.to_string())),
        };
        leader.state.apply(&writes, version);
        for e in &writes.events {
            tracing::info!(seq = e.seq, "PD event: {}", e.message);
        }
        // The shard map clients route with holds the data shards only.
        let ids: Vec<ShardId> = writes.shards.iter().map(|s| s.descriptor.id).filter(|id| *id != PD_SHARD).collect();
        if !ids.is_empty() {
            publish(leader, &ids);
        }
        Ok(version)
    }

    /// Finishes the operators whose effect the reports show and marks for
    /// rollback those that cannot complete (`placement::operator::advance`).
    async fn advance_operators(&self, replica: &Replica, leader: &mut Leader) -> Result<(), ApiError> {
        let (writes, finished) = placement::operator::advance(&leader.state, &leader.observed, now_ms());
        if writes.is_empty() {
            return Ok(());
        }
        self.commit(replica, leader, writes).await?;
        for f in &finished {
            let kind = operator_kind_label(&f.op.kind);
            crate::metrics::pd_operator_finished(kind, f.outcome.label(), f.op.reason.as_str(), f.duration_ms);
            tracing::info!(
                id = f.op.id, shard = %f.op.shard, kind = %f.op.kind, reason = %f.op.reason,
                outcome = ?f.outcome, duration_ms = f.duration_ms, "operator finished"
            );
        }
        Ok(())
    }

    /// The leader's periodic work: initial shards, then operators (finish,
    /// roll back), then the scheduler.
    async fn tick(&self) -> Result<(), ApiError> {
        if !self.is_member() {
            return Ok(());
        }
        let mut guard = self.lead().await?;
        let leader = guard.as_mut().expect("lead() returns a loaded leader");
        let replica = self.group()?;
        if let Some(writes) = placement::record_pd_shard(&leader.state, &replica.descriptor(), now_ms()) {
            self.commit(&replica, leader, writes).await?;
        }
        if let Some(writes) = placement::create_initial_shards(&leader.state, &leader.observed, now_ms()) {
            self.commit(&replica, leader, writes).await?;
        }
        self.advance_operators(&replica, leader).await?;
        let plans = placement::schedule::schedule(&leader.state, &leader.observed, now_ms());
        if !plans.is_empty() {
            let (writes, ops) = placement::schedule::create(&leader.state, &plans, now_ms());
            self.commit(&replica, leader, writes).await?;
            for op in &ops {
                tracing::info!(id = op.id, shard = %op.shard, kind = %op.kind, reason = %op.reason, "operator started");
            }
        }
        crate::metrics::pd_operators_in_flight(leader.state.operators.len());
        self.nudger.nudge_changed(&leader.state, &leader.observed, now_ms());
        Ok(())
    }

    pub async fn register(&self, req: RegisterNode) -> Result<(NodeId, u64), ApiError> {
        let mut guard = self.lead().await?;
        let leader = guard.as_mut().expect("lead() returns a loaded leader");
        let (id, writes) = placement::register(&leader.state, &req, now_ms()).map_err(pd_error)?;
        if !writes.is_empty() {
            let replica = self.group()?;
            self.commit(&replica, leader, writes).await?;
        }
        let cluster_id = leader.state.cluster.as_ref().map(|c| c.cluster_id).unwrap_or(0);
        Ok((id, cluster_id))
    }

    pub async fn heartbeat(&self, hb: Heartbeat) -> Result<HeartbeatAnswer, ApiError> {
        let mut guard = self.lead().await?;
        let leader = guard.as_mut().expect("lead() returns a loaded leader");
        let outcome = placement::heartbeat(&leader.state, &mut leader.observed, &hb, now_ms()).map_err(pd_error)?;
        if !outcome.leader_changed.is_empty() {
            publish(leader, &outcome.leader_changed);
        }
        if !outcome.writes.is_empty() {
            let replica = self.group()?;
            self.commit(&replica, leader, outcome.writes).await?;
        }
        // The report may show an operator's effect: finish it now rather than
        // at the next tick.
        if !leader.state.operators.is_empty() {
            let replica = self.group()?;
            self.advance_operators(&replica, leader).await?;
        }
        // Operator steps for this node, from the state just updated by its report.
        let now = now_ms();
        let mut commands = outcome.commands;
        let pending = placement::operator::commands_for(&leader.state, &leader.observed, hb.node, now);
        // Recorded whole, even when the reply cannot carry them all: a node is
        // nudged only when what the PD wants of it changes.
        self.nudger.given(hb.node, &pending);
        for command in pending {
            if commands.len() >= placement::COMMANDS_PER_HEARTBEAT_MAX {
                break;
            }
            commands.push(command);
        }
        // The report may have moved an operator on: the other nodes it now
        // needs hear of it at once.
        self.nudger.nudge_changed(&leader.state, &leader.observed, now);
        // Nodes taking part in an operator report faster, so each step follows
        // the previous one within ~100 ms; 0: the node's configured interval.
        let busy = placement::operator::busy(&leader.state, &leader.observed, hb.node);
        Ok(HeartbeatAnswer {
            commands,
            interval_ms: if busy { placement::operator::OPERATOR_HEARTBEAT_MS } else { 0 },
            full_report_wanted: outcome.full_report_wanted,
            settings: Some(leader.state.settings()),
        })
    }

    pub async fn locate(&self, key: &[u8]) -> Result<(ShardRoute, u64), ApiError> {
        let guard = self.lead().await?;
        let leader = guard.as_ref().expect("lead() returns a loaded leader");
        let shard = leader
            .state
            .shard_for_key(key)
            .ok_or_else(|| ApiError::Unavailable("no shard holds this key yet (initial shards not created)".into()))?;
        Ok((placement::route(&leader.state, &leader.observed, shard), leader.revision))
    }

    pub async fn list_shards(&self, range: &KeyRange, limit: u32) -> Result<(Vec<ShardRoute>, u64), ApiError> {
        let guard = self.lead().await?;
        let leader = guard.as_ref().expect("lead() returns a loaded leader");
        let limit = if limit == 0 { usize::MAX } else { limit as usize };
        let routes = leader
            .state
            .shards_in(range)
            .into_iter()
            .take(limit)
            .map(|s| placement::route(&leader.state, &leader.observed, s))
            .collect();
        Ok((routes, leader.revision))
    }

    pub async fn cluster(&self, events: u32) -> Result<ClusterStatus, ApiError> {
        let guard = self.lead().await?;
        let leader = guard.as_ref().expect("lead() returns a loaded leader");
        let me = Some((self.node, self.addr.clone()));
        let events = events.min(placement::model::EVENTS_KEPT as u32) as usize;
        Ok(placement::cluster_status(&leader.state, &leader.observed, now_ms(), me, leader.revision, events))
    }

    /// Starts a watch: the events to send first (changes after `from_revision`,
    /// or one full map) and the receiver of later changes.
    pub async fn watch(
        &self,
        from_revision: u64,
    ) -> Result<(Vec<ShardMapEvent>, broadcast::Receiver<ShardMapEvent>), ApiError> {
        let guard = self.lead().await?;
        let leader = guard.as_ref().expect("lead() returns a loaded leader");
        let rx = leader.events.subscribe();
        let oldest = leader.ring.front().map(|e| e.revision).unwrap_or(leader.revision + 1);
        let resumable = from_revision >> 32 == leader.term
            && from_revision <= leader.revision
            && from_revision + 1 >= oldest.min(leader.revision + 1);
        let first = if resumable {
            leader.ring.iter().filter(|e| e.revision > from_revision).cloned().collect()
        } else {
            vec![full_map(leader)]
        };
        Ok((first, rx))
    }

    /// Changes one cluster setting (`cairnctl config set`); returns them all.
    pub async fn set_setting(&self, name: &str, value: &str) -> Result<ClusterSettings, ApiError> {
        let mut guard = self.lead().await?;
        let leader = guard.as_mut().expect("lead() returns a loaded leader");
        let writes = placement::admin::set_setting(&leader.state, name, value, now_ms()).map_err(pd_error)?;
        if !writes.is_empty() {
            let replica = self.group()?;
            self.commit(&replica, leader, writes).await?;
        }
        Ok(leader.state.settings())
    }

    /// Creates an operator by hand (`cairnctl shard move`, `leader transfer`).
    pub async fn create_operator(&self, shard: ShardId, kind: OperatorKind) -> Result<OperatorInfo, ApiError> {
        let mut guard = self.lead().await?;
        let leader = guard.as_mut().expect("lead() returns a loaded leader");
        let now = now_ms();
        let (op, writes) =
            placement::admin::create_operator(&leader.state, &leader.observed, shard, kind, now).map_err(pd_error)?;
        let replica = self.group()?;
        self.commit(&replica, leader, writes).await?;
        tracing::info!(id = op.id, shard = %op.shard, kind = %op.kind, "operator started by an administrator");
        self.nudger.nudge_changed(&leader.state, &leader.observed, now);
        Ok(placement::operator::info(&leader.state, &leader.observed, &op, now))
    }

    /// The operators in flight.
    pub async fn list_operators(&self) -> Result<Vec<OperatorInfo>, ApiError> {
        let guard = self.lead().await?;
        let leader = guard.as_ref().expect("lead() returns a loaded leader");
        let now = now_ms();
        Ok(leader
            .state
            .operators
            .values()
            .map(|op| placement::operator::info(&leader.state, &leader.observed, op, now))
            .collect())
    }

    /// Drains, re-activates or removes a node; returns its new state.
    pub async fn set_node_state(&self, node: NodeId, state: AdminRequest) -> Result<NodeInfo, ApiError> {
        let mut guard = self.lead().await?;
        let leader = guard.as_mut().expect("lead() returns a loaded leader");
        let now = now_ms();
        let writes = placement::admin::set_node_state(&leader.state, node, state, now).map_err(pd_error)?;
        if !writes.is_empty() {
            let replica = self.group()?;
            self.commit(&replica, leader, writes).await?;
        }
        let status = placement::cluster_status(&leader.state, &leader.observed, now, None, leader.revision, 0);
        status
            .nodes
            .into_iter()
            .find(|n| n.id == node)
            .ok_or_else(|| ApiError::Internal(format!("node {node} vanished from the PD state")))
    }

    /// How far the cluster is from balanced.
    pub async fn rebalance_status(&self) -> Result<RebalanceStatus, ApiError> {
        let guard = self.lead().await?;
        let leader = guard.as_ref().expect("lead() returns a loaded leader");
        Ok(placement::schedule::rebalance_status(&leader.state, &leader.observed, now_ms()))
    }

    /// The whole map as one event (for a watcher that fell behind).
    pub async fn full_map(&self) -> Result<ShardMapEvent, ApiError> {
        let guard = self.lead().await?;
        Ok(full_map(guard.as_ref().expect("lead() returns a loaded leader")))
    }
}

fn full_map(leader: &Leader) -> ShardMapEvent {
    let shards = leader.state.shards.values().map(|s| placement::route(&leader.state, &leader.observed, s)).collect();
    ShardMapEvent { revision: leader.revision, full: true, shards, removed: Vec::new() }
}

/// Publishes the current routes of `shards` as the next revision.
fn publish(leader: &mut Leader, shards: &[ShardId]) {
    leader.revision += 1;
    let routes = shards
        .iter()
        .filter_map(|id| leader.state.shards.get(id))
        .map(|s| placement::route(&leader.state, &leader.observed, s))
        .collect();
    let removed = shards.iter().filter(|id| !leader.state.shards.contains_key(id)).copied().collect();
    let event = ShardMapEvent { revision: leader.revision, full: false, shards: routes, removed };
    if leader.ring.len() == WATCH_RING {
        leader.ring.pop_front();
    }
    leader.ring.push_back(event.clone());
    // No receivers is fine: nobody is watching.
    let _ = leader.events.send(event);
}
