//! The node's side of the placement driver: registration and heartbeats, and
//! the execution of the commands heartbeat answers carry.
//!
//! Every node runs one agent, PD members included. A heartbeat reports the
//! node's counters and its replicas (role, leader, term, applied index, and for
//! led shards key count and size, the configuration (voters, learners, joint),
//! the last log index and each peer's replication and snapshot progress); the
//! PD answers with commands. To keep idle nodes with many replicas cheap, a
//! heartbeat carries only the replicas whose report changed (and the ones
//! removed), with a full report every [`FULL_REPORT_EVERY`] heartbeats, after
//! any failure, and whenever the PD asks (a new PD leader does). A leader whose
//! peers' progress moves (a learner filling up) is re-reported every time,
//! which is what the PD needs during a move; it asks such nodes to report more
//! often with the answer's `interval_ms`, which holds for the next heartbeat
//! only.
//!
//! A command that takes effect wakes the loop to report at once
//! ([`NodeShared::report_soon`]), and the PD finishes operators as reports
//! arrive, so a move's steps follow each other without waiting out intervals.
//! Commands are idempotent and re-sent by the PD until the node reports their
//! effect, so a lost answer or a dropped command costs one interval. Each runs
//! in its own task ([`execute_command`] does the work), at most one per shard
//! (a command for a shard with one in flight is dropped) and at most
//! [`COMMANDS_IN_FLIGHT_MAX`] in all; the heartbeat loop owns that bookkeeping.
//! Leader commands name the `conf_ver` they were computed from and are ignored
//! by a replica that is not the leader or whose applied `conf_ver` differs: the
//! PD recomputes from newer reports.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use cairn_client::PdClient;
use cairn_proto::{
    ApiError, Heartbeat, NodeCommand, NodeId, PeerProgress, RaftRole, RegisterNode, ReplicaReport, ReplicaRole,
    ShardDescriptor, ShardId,
};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use super::PD_SHARD;
use crate::config::NodeConfig;
use crate::node::{NodeError, NodeShared};
use crate::raft::GroupError;
use crate::shard::Replica;
use crate::storage::StorageError;

/// A heartbeat reports every replica at least this often (in heartbeats).
pub const FULL_REPORT_EVERY: u32 = 60;

/// PD commands executing at once on a node, all shards together; more are
/// dropped (the PD re-sends them).
pub const COMMANDS_IN_FLIGHT_MAX: usize = 64;

/// How long the agent's shutdown waits for commands in flight before it
/// aborts them (they are idempotent; the PD re-sends what did not finish).
const COMMANDS_DRAIN_MS: u64 = 2_000;

/// Least time between two heartbeats when a command's effect wakes the loop
/// early ([`NodeShared::report_soon`]), so a burst of commands costs one report.
const REPORT_SOON_GAP: Duration = Duration::from_millis(10);

/// Bounds of a heartbeat interval the PD asks for.
pub const PD_INTERVAL_MIN_MS: u64 = 50;
pub const PD_INTERVAL_MAX_MS: u64 = 60_000;

/// Builds heartbeats: full or only what changed since the last one sent.
#[derive(Default)]
struct Reporter {
    // Ordered: a heartbeat lists reports in key order (the same bytes for the
    // same state, which a simulation's replay needs).
    last: BTreeMap<ShardId, ReplicaReport>,
    since_full: u32,
    want_full: bool,
}

impl Reporter {
    /// The heartbeat to send now and the reports it stands for.
    fn build(&self, node: &NodeShared, cluster_id: u64) -> (Heartbeat, BTreeMap<ShardId, ReplicaReport>) {
        let mut current = BTreeMap::new();
        // Shard 0 too: the PD moves its own replicas like any other (RFC 004).
        for r in node.registry.all().iter() {
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
            let mut report = ReplicaReport {
                shard,
                epoch: descriptor.epoch,
                role: st.role,
                leader: st.leader,
                term: st.term,
                applied_index: st.applied_index,
                key_count,
                size_bytes,
                replicas: Vec::new(),
                joint: false,
                last_log_index: 0,
                progress: Vec::new(),
            };
            if st.role == RaftRole::Leader {
                report.replicas = descriptor.replicas;
                // `joint` is the effective membership's (the last membership
                // entry in the log, perhaps not applied yet), the replicas and
                // epoch the applied one's: a joint entry shows before its
                // conf_ver does, and a ChangeVoters for the older conf_ver
                // completes it (see `RaftGroup::change_voters`).
                if let Some(view) = r.group.leader_view() {
                    report.joint = view.membership.joint;
                    report.last_log_index = view.last_log_index;
                    report.progress = view
                        .matched
                        .into_iter()
                        .map(|(peer, matched_index)| {
                            let snapshot = node.transport.snapshot_progress(shard.0, peer.0).unwrap_or_default();
                            PeerProgress {
                                node: peer,
                                matched_index,
                                snapshot_sent_bytes: snapshot.sent_bytes,
                                snapshot_total_bytes: snapshot.total_bytes,
                            }
                        })
                        .collect();
                }
            }
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

    fn sent(&mut self, hb: &Heartbeat, current: BTreeMap<ShardId, ReplicaReport>, full_report_wanted: bool) {
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
                if attempt == 1 || attempt.is_multiple_of(10) {
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

/// How long to wait before the next heartbeat: what the PD asked for (clamped
/// to [`PD_INTERVAL_MIN_MS`]..=[`PD_INTERVAL_MAX_MS`]) if anything, else the
/// configured interval. Never sticky: each answer decides for one heartbeat.
pub fn next_interval(answer_interval_ms: u64, configured: Duration) -> Duration {
    if answer_interval_ms == 0 {
        configured
    } else {
        Duration::from_millis(answer_interval_ms.clamp(PD_INTERVAL_MIN_MS, PD_INTERVAL_MAX_MS))
    }
}

/// Heartbeats failed in a row before the node adds its peers to its PD
/// endpoints (one: a failed heartbeat already spent the client's retries).
const PD_FAILURES_BEFORE_WIDENING: u32 = 1;

/// Runs the heartbeat loop until `cancel`.
pub fn spawn(
    node: Arc<NodeShared>,
    config: NodeConfig,
    cluster_id: u64,
    cancel: CancellationToken,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let configured = Duration::from_millis(config.heartbeat_interval_ms);
        let configured_pd = node.pd_client().endpoints();
        let config = Arc::new(config);
        let mut executor = Executor::default();
        let mut failures = 0u32;
        let mut reporter = Reporter { want_full: true, ..Default::default() };
        // Confirm the address (and for PD members, learn nothing new) once.
        let mut registered = false;
        loop {
            let mut interval = configured;
            let pd = node.pd_client();
            // PD requests retry for many seconds while the PD is unreachable;
            // shutdown does not wait for them.
            if !registered {
                let reg = registration(&config, Some(node.id), cluster_id);
                let Some(answer) = cancel.run_until_cancelled(pd.register_node(&reg)).await else {
                    executor.shutdown().await;
                    return;
                };
                match answer {
                    Ok(_) => registered = true,
                    Err(e) => tracing::debug!(error = %e, "registration not confirmed yet"),
                }
            }
            if registered {
                let (hb, current) = reporter.build(&node, cluster_id);
                let Some(sent) = cancel.run_until_cancelled(pd.heartbeat(&hb)).await else {
                    executor.shutdown().await;
                    return;
                };
                crate::metrics::heartbeat_sent(&sent);
                match sent {
                    Ok(answer) => {
                        reporter.sent(&hb, current, answer.full_report_wanted);
                        if failures > 0 {
                            tracing::info!(after = failures, "placement driver reachable again");
                        }
                        failures = 0;
                        interval = next_interval(answer.interval_ms, configured);
                        if let Some(settings) = &answer.settings {
                            node.transport.set_snapshot_bytes_per_sec(settings.snapshot_bytes_per_sec);
                        }
                        for command in answer.commands {
                            executor.dispatch(&node, &config, command);
                        }
                    }
                    Err(e) => {
                        reporter.failed();
                        failures += 1;
                        if failures == 1 || failures.is_multiple_of(30) {
                            tracing::warn!(error = %e, failures, "heartbeat to the placement driver failed");
                        }
                        // The configured endpoints may all be gone (drained and
                        // removed): any peer forwards PD requests.
                        if failures.is_multiple_of(PD_FAILURES_BEFORE_WIDENING)
                            && let Some(endpoints) = node.widen_pd_endpoints(&configured_pd)
                        {
                            tracing::info!(?endpoints, "PD endpoints widened to this node's peers");
                        }
                    }
                }
            }
            tokio::select! {
                _ = cancel.cancelled() => {
                    executor.shutdown().await;
                    return;
                }
                _ = tokio::time::sleep(interval) => {}
                _ = node.report_soon.notified(), if registered => {
                    tokio::time::sleep(REPORT_SOON_GAP).await;
                }
            }
        }
    })
}

/// The commands in flight: owned by the heartbeat loop alone.
#[derive(Default)]
struct Executor {
    tasks: JoinSet<()>,
    /// Task -> the shard it works on, to free the shard when the task ends.
    shards: HashMap<tokio::task::Id, ShardId>,
    busy: HashSet<ShardId>,
}

impl Executor {
    /// Starts `command` in its own task, or drops it (the PD re-sends) when
    /// its shard has a command in flight or [`COMMANDS_IN_FLIGHT_MAX`] run.
    fn dispatch(&mut self, node: &Arc<NodeShared>, config: &Arc<NodeConfig>, command: NodeCommand) {
        self.reap();
        let shard = command.shard();
        let kind = command_kind(&command);
        if self.busy.contains(&shard) || self.tasks.len() >= COMMANDS_IN_FLIGHT_MAX {
            crate::metrics::node_command(kind, "busy");
            tracing::debug!(%shard, kind, in_flight = self.tasks.len(), "PD command dropped: busy");
            return;
        }
        let (node, config) = (node.clone(), config.clone());
        let span = tracing::info_span!("pd_command", node_id = node.id.0, shard_id = shard.0, kind);
        let handle = self.tasks.spawn(async move { run_command(&node, &config, command).await }.instrument(span));
        self.shards.insert(handle.id(), shard);
        self.busy.insert(shard);
        crate::metrics::node_commands_in_flight(self.tasks.len());
    }

    /// Frees the shards of finished tasks.
    fn reap(&mut self) {
        while let Some(done) = self.tasks.try_join_next_with_id() {
            let id = match done {
                Ok((id, ())) => id,
                Err(e) => {
                    if e.is_panic() {
                        tracing::error!(error = %e, "a PD command task panicked");
                    }
                    e.id()
                }
            };
            if let Some(shard) = self.shards.remove(&id) {
                self.busy.remove(&shard);
            }
        }
        crate::metrics::node_commands_in_flight(self.tasks.len());
    }

    /// Waits a little for the commands in flight, then aborts the rest.
    async fn shutdown(&mut self) {
        let drained = tokio::time::timeout(Duration::from_millis(COMMANDS_DRAIN_MS), async {
            while self.tasks.join_next().await.is_some() {}
        })
        .await;
        if drained.is_err() {
            tracing::info!(in_flight = self.tasks.len(), "aborting PD commands in flight at shutdown");
        }
        self.tasks.shutdown().await;
        self.shards.clear();
        self.busy.clear();
        crate::metrics::node_commands_in_flight(0);
    }
}

/// Executes one command and records its outcome (log and metrics).
async fn run_command(node: &NodeShared, config: &NodeConfig, command: NodeCommand) {
    let kind = command_kind(&command);
    let result = execute_command(node, config, command).await;
    let label = match &result {
        Ok(outcome) => outcome.label(),
        Err(_) => "failed",
    };
    crate::metrics::node_command(kind, label);
    match &result {
        // The span names the node, shard and kind.
        Ok(Outcome::Skipped(skip)) if skip.is_routine() => {
            tracing::debug!(outcome = label, "PD command not for this replica now; the PD recomputes");
        }
        Ok(outcome) => {
            tracing::info!(outcome = %outcome, "PD command executed");
            if matches!(outcome, Outcome::Done) {
                node.report_soon.notify_one();
            }
        }
        Err(e) => tracing::warn!(error = %e, "PD command failed; the PD will ask again"),
    }
}

/// The metric and log name of a command.
pub fn command_kind(command: &NodeCommand) -> &'static str {
    match command {
        NodeCommand::CreateReplica { .. } => "create-replica",
        NodeCommand::JoinReplica { .. } => "join-replica",
        NodeCommand::AddLearner { .. } => "add-learner",
        NodeCommand::RemoveLearner { .. } => "remove-learner",
        NodeCommand::ChangeVoters { .. } => "change-voters",
        NodeCommand::TransferLeader { .. } => "transfer-leader",
        NodeCommand::DestroyReplica { .. } => "destroy-replica",
    }
}

/// What executing a command came to.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// The command's effect was brought about now (for `TransferLeader`: the
    /// transfer was asked of the group).
    Done,
    /// Its effect was already there (a re-sent command).
    AlreadyDone,
    /// Not executed: the command does not apply to this replica as it is now.
    Skipped(Skip),
}

/// Why a command was not executed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Skip {
    /// `CreateReplica` of the PD's own shard 0, which only bootstrap creates
    /// (new PD members join it).
    PdShard,
    /// The command's descriptor does not list this node.
    NotAMember,
    /// This node hosts no replica of the shard.
    NotHosted,
    /// Leader command on a replica that is not the leader.
    NotLeader,
    /// Leader command computed from another configuration than the replica's.
    StaleConfVer { local: u64, command: u64 },
    /// Create or join refused: the shard was destroyed here at `tombstone`.
    Tombstoned { tombstone: u64, requested: u64 },
    /// Destroy refused: the replica's configuration is newer than the command's.
    ReplicaNewer { local: u64, command: u64 },
    /// Destroy refused: this replica leads the shard.
    Leader,
    /// `RemoveLearner` of a voter.
    NotALearner(NodeId),
    /// `TransferLeader` to a node that is not (or not staying) a voter.
    NotAVoter(NodeId),
    /// `ChangeVoters` naming a node that is not a member (not even a learner).
    NotAMemberYet(NodeId),
    /// `ChangeVoters` with no voter.
    NoVoters,
}

impl Outcome {
    pub fn label(&self) -> &'static str {
        match self {
            Outcome::Done => "done",
            Outcome::AlreadyDone => "already-done",
            Outcome::Skipped(skip) => skip.label(),
        }
    }
}

impl std::fmt::Display for Outcome {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Outcome::Skipped(skip) => write!(f, "skipped ({skip:?})"),
            other => f.write_str(other.label()),
        }
    }
}

impl Skip {
    pub fn label(&self) -> &'static str {
        match self {
            Skip::PdShard => "pd-shard",
            Skip::NotAMember => "not-a-member",
            Skip::NotHosted => "not-hosted",
            Skip::NotLeader => "not-leader",
            Skip::StaleConfVer { .. } => "stale-conf-ver",
            Skip::Tombstoned { .. } => "tombstoned",
            Skip::ReplicaNewer { .. } => "replica-newer",
            Skip::Leader => "leader",
            Skip::NotALearner(_) => "not-a-learner",
            Skip::NotAVoter(_) => "not-a-voter",
            Skip::NotAMemberYet(_) => "not-a-member-yet",
            Skip::NoVoters => "no-voters",
        }
    }

    /// Skips that happen in normal operation (a command that raced a leader
    /// change or a newer configuration), logged at debug only.
    fn is_routine(&self) -> bool {
        matches!(self, Skip::NotLeader | Skip::StaleConfVer { .. } | Skip::NotHosted)
    }
}

/// Why a command could not be carried out (it may succeed when re-sent).
#[derive(Debug, thiserror::Error)]
pub enum CommandError {
    #[error("shard {shard}: {source}")]
    Group { shard: ShardId, source: GroupError },
    #[error(transparent)]
    Node(#[from] NodeError),
    #[error(transparent)]
    Storage(#[from] StorageError),
}

/// Executes one PD command on this node and says what came of it. This is
/// what the agent's command tasks run; it is public so tests can drive
/// commands and check their outcomes.
///
/// - `CreateReplica { descriptor }`: creates and initialises (with the
///   descriptor's voters) a replica of a new shard, if the descriptor lists
///   this node, the shard is not hosted, and no tombstone of the shard is at
///   least `descriptor.epoch.conf_ver`.
/// - `JoinReplica { descriptor }`: the same checks, then an empty, uninitialised
///   replica that its leader fills (log or snapshot).
/// - `AddLearner` / `RemoveLearner` / `ChangeVoters` (leader, same `conf_ver`):
///   change the group's configuration; already in effect -> `AlreadyDone`.
///   `ChangeVoters` on a joint configuration completes it (see
///   [`RaftGroup::change_voters`](crate::raft::RaftGroup::change_voters)).
/// - `TransferLeader` (leader): asks the group to hand leadership to a voter.
/// - `DestroyReplica { conf_ver }`: not for shard 0, not on the leader, only
///   if the replica's `conf_ver` is at most the command's; deletes it and
///   leaves a tombstone at `conf_ver` in the same transaction.
///
/// Both creation commands store the descriptor with `conf_ver` 0 (see
/// [`NodeShared::create_replica`]).
pub async fn execute_command(
    node: &NodeShared,
    config: &NodeConfig,
    command: NodeCommand,
) -> Result<Outcome, CommandError> {
    match command {
        NodeCommand::CreateReplica { descriptor } => create(node, config, descriptor, true).await,
        NodeCommand::JoinReplica { descriptor } => create(node, config, descriptor, false).await,
        NodeCommand::AddLearner { shard, conf_ver, node: learner, addr } => {
            let replica = match led(node, shard, Some(conf_ver)) {
                Ok(r) => r,
                Err(skip) => return Ok(Outcome::Skipped(skip)),
            };
            if replica.group.membership().contains(learner) {
                return Ok(Outcome::AlreadyDone);
            }
            replica.group.wake();
            replica.group.add_learner(learner, &addr).await.map_err(|source| CommandError::Group { shard, source })?;
            Ok(Outcome::Done)
        }
        NodeCommand::RemoveLearner { shard, conf_ver, node: learner } => {
            let replica = match led(node, shard, Some(conf_ver)) {
                Ok(r) => r,
                Err(skip) => return Ok(Outcome::Skipped(skip)),
            };
            let membership = replica.group.membership();
            if !membership.contains(learner) {
                return Ok(Outcome::AlreadyDone);
            }
            if membership.voters.contains(&learner) {
                return Ok(Outcome::Skipped(Skip::NotALearner(learner)));
            }
            replica.group.wake();
            replica.group.remove_learner(learner).await.map_err(|source| CommandError::Group { shard, source })?;
            Ok(Outcome::Done)
        }
        NodeCommand::ChangeVoters { shard, conf_ver, voters } => {
            let replica = match led(node, shard, Some(conf_ver)) {
                Ok(r) => r,
                Err(skip) => return Ok(Outcome::Skipped(skip)),
            };
            let target: BTreeSet<NodeId> = voters.into_iter().collect();
            if target.is_empty() {
                return Ok(Outcome::Skipped(Skip::NoVoters));
            }
            let membership = replica.group.membership();
            if !membership.joint && membership.voters == target {
                return Ok(Outcome::AlreadyDone);
            }
            if let Some(missing) = target.iter().find(|n| !membership.contains(**n)) {
                return Ok(Outcome::Skipped(Skip::NotAMemberYet(*missing)));
            }
            replica.group.wake();
            let target: Vec<NodeId> = target.into_iter().collect();
            replica.group.change_voters(&target).await.map_err(|source| CommandError::Group { shard, source })?;
            Ok(Outcome::Done)
        }
        NodeCommand::TransferLeader { shard, to } => {
            let replica = match led(node, shard, None) {
                Ok(r) => r,
                Err(skip) => return Ok(Outcome::Skipped(skip)),
            };
            if to == node.id {
                return Ok(Outcome::AlreadyDone);
            }
            if !replica.group.membership().target_voters.contains(&to) {
                return Ok(Outcome::Skipped(Skip::NotAVoter(to)));
            }
            replica.group.wake();
            replica.group.transfer_leader(to).await.map_err(|source| CommandError::Group { shard, source })?;
            Ok(Outcome::Done)
        }
        NodeCommand::DestroyReplica { shard, conf_ver } => destroy(node, config, shard, conf_ver).await,
    }
}

/// `CreateReplica` (`initialise`) and `JoinReplica`.
async fn create(
    node: &NodeShared,
    config: &NodeConfig,
    descriptor: ShardDescriptor,
    initialise: bool,
) -> Result<Outcome, CommandError> {
    let shard = descriptor.id;
    if shard == PD_SHARD && initialise {
        return Ok(Outcome::Skipped(Skip::PdShard));
    }
    if !descriptor.replicas.iter().any(|r| r.node == node.id) {
        return Ok(Outcome::Skipped(Skip::NotAMember));
    }
    if node.registry.get(shard).is_some() {
        return Ok(Outcome::AlreadyDone);
    }
    let voters: Option<Vec<(NodeId, String)>> = initialise.then(|| {
        descriptor.replicas.iter().filter(|r| r.role == ReplicaRole::Voter).map(|r| (r.node, r.addr.clone())).collect()
    });
    // The tombstone is checked in the transaction that creates the record.
    match node.create_replica(descriptor, voters.as_deref(), config).await {
        Ok(()) => Ok(Outcome::Done),
        Err(NodeError::Tombstoned { tombstone, requested, .. }) => {
            crate::metrics::tombstone_refusal();
            Ok(Outcome::Skipped(Skip::Tombstoned { tombstone, requested }))
        }
        Err(NodeError::AlreadyHosted(_)) => Ok(Outcome::AlreadyDone),
        Err(e) => Err(e.into()),
    }
}

/// `DestroyReplica`.
async fn destroy(
    node: &NodeShared,
    config: &NodeConfig,
    shard: ShardId,
    conf_ver: u64,
) -> Result<Outcome, CommandError> {
    let Some(replica) = node.registry.get(shard) else {
        // Destroyed before (a re-sent command) if its tombstone covers this one.
        return Ok(match node.storage.tombstone(shard)? {
            Some(t) if t.conf_ver >= conf_ver => Outcome::AlreadyDone,
            _ => Outcome::Skipped(Skip::NotHosted),
        });
    };
    let local = replica.conf_ver();
    if local > conf_ver {
        return Ok(Outcome::Skipped(Skip::ReplicaNewer { local, command: conf_ver }));
    }
    if replica.group.is_leader() {
        return Ok(Outcome::Skipped(Skip::Leader));
    }
    drop(replica);
    match node.destroy_replica_at(shard, conf_ver, config).await {
        Ok(()) => Ok(Outcome::Done),
        Err(NodeError::ReplicaNewer { local, allowed, .. }) => {
            Ok(Outcome::Skipped(Skip::ReplicaNewer { local, command: allowed }))
        }
        Err(e) => Err(e.into()),
    }
}

/// The replica of `shard` if this node leads it and (when given) its applied
/// `conf_ver` is the command's.
fn led(node: &NodeShared, shard: ShardId, conf_ver: Option<u64>) -> Result<Arc<Replica>, Skip> {
    let replica = node.registry.get(shard).ok_or(Skip::NotHosted)?;
    if !replica.group.is_leader() {
        return Err(Skip::NotLeader);
    }
    if let Some(command) = conf_ver {
        let local = replica.conf_ver();
        if local != command {
            return Err(Skip::StaleConfVer { local, command });
        }
    }
    Ok(replica)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_pd_sets_the_next_interval_only() {
        let configured = Duration::from_millis(1000);
        assert_eq!(next_interval(0, configured), configured);
        assert_eq!(next_interval(200, configured), Duration::from_millis(200));
        assert_eq!(next_interval(1, configured), Duration::from_millis(PD_INTERVAL_MIN_MS));
        assert_eq!(next_interval(u64::MAX, configured), Duration::from_millis(PD_INTERVAL_MAX_MS));
        // The answer after a short one says 0 again: back to the configured interval.
        assert_eq!(next_interval(0, configured), configured);
    }

    #[test]
    fn outcome_labels_are_distinct() {
        let skips = [
            Skip::PdShard,
            Skip::NotAMember,
            Skip::NotHosted,
            Skip::NotLeader,
            Skip::StaleConfVer { local: 1, command: 2 },
            Skip::Tombstoned { tombstone: 1, requested: 1 },
            Skip::ReplicaNewer { local: 2, command: 1 },
            Skip::Leader,
            Skip::NotALearner(NodeId(1)),
            Skip::NotAVoter(NodeId(1)),
            Skip::NotAMemberYet(NodeId(1)),
            Skip::NoVoters,
        ];
        let mut labels: Vec<&str> = skips.iter().map(|s| s.label()).collect();
        labels.extend([Outcome::Done.label(), Outcome::AlreadyDone.label(), "busy", "failed"]);
        let unique: HashSet<&str> = labels.iter().copied().collect();
        assert_eq!(unique.len(), labels.len(), "{labels:?}");
    }
}
