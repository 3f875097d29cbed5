//! [`RaftGroup`]: one shard's Raft instance behind a small, openraft-free API.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use cairn_proto::{NodeId, RaftRole, ShardDescriptor, ShardId};
use openraft::async_runtime::WatchReceiver;
use openraft::errors::{ClientWriteError, RaftError};
use openraft::{BasicNode, ReadPolicy, ServerState};
use serde::{Deserialize, Serialize};
use tokio::sync::watch;

use super::log_store::LogStore;
use super::network::{ShardNetworkFactory, ShardRouter};
use super::state_machine::StateMachine;
use super::types::{LogId, Raft, TypeConfig};
use crate::command::{CommandResponse, ShardCommand};
use crate::storage::Storage;
use crate::storage::codec::{decode, encode};
use crate::transport::{MessageKind, Transport};

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ReadPolicyKind {
    /// Confirm leadership with a quorum round trip per read batch (safest).
    ReadIndex,
    /// Trust the leader lease (no round trip; relies on bounded clock drift).
    Lease,
}

/// Raft timing and log retention, shared by every group of a node.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(default, rename_all = "kebab-case", deny_unknown_fields)]
pub struct RaftSettings {
    pub heartbeat_interval_ms: u64,
    pub election_timeout_min_ms: u64,
    pub election_timeout_max_ms: u64,
    /// Build a snapshot (cheap: a read view) after this many applied entries;
    /// the log before it can then be purged. A leader defers it while a member
    /// still needs entries the purge would delete (a learner receiving a
    /// snapshot, a lagging follower), up to [`SNAPSHOT_DEFER_FACTOR`] times this.
    pub snapshot_logs_since_last: u64,
    /// Entries kept in the log behind the last snapshot, so lagging followers
    /// catch up from the log instead of by snapshot.
    pub logs_to_keep: u64,
    pub max_payload_entries: u64,
    pub install_snapshot_timeout_ms: u64,
    pub read_policy: ReadPolicyKind,
    /// A group whose leader saw no new entry for this long goes quiescent (no
    /// ticks, no heartbeats); 0 keeps every group awake. See docs/rfcs/001.
    pub quiesce_after_ms: u64,
    /// How often a node pings each peer to detect failures of sleeping leaders.
    pub peer_ping_interval_ms: u64,
    /// A peer silent for this long is taken as down: the groups it leads wake.
    pub peer_down_after_ms: u64,
}

impl Default for RaftSettings {
    fn default() -> Self {
        Self {
            heartbeat_interval_ms: 250,
            election_timeout_min_ms: 1000,
            election_timeout_max_ms: 2000,
            snapshot_logs_since_last: 10_000,
            logs_to_keep: 5_000,
            max_payload_entries: 256,
            install_snapshot_timeout_ms: 60_000,
            read_policy: ReadPolicyKind::ReadIndex,
            quiesce_after_ms: 10_000,
            peer_ping_interval_ms: 500,
            peer_down_after_ms: 2_000,
        }
    }
}

impl RaftSettings {
    pub fn validate(&self) -> Result<(), String> {
        if self.heartbeat_interval_ms == 0 {
            return Err("heartbeat-interval-ms must be positive".into());
        }
        if self.election_timeout_min_ms < 3 * self.heartbeat_interval_ms {
            return Err(format!(
                "election-timeout-min-ms ({}) must be at least 3 x heartbeat-interval-ms ({})",
                self.election_timeout_min_ms, self.heartbeat_interval_ms
            ));
        }
        if self.election_timeout_max_ms <= self.election_timeout_min_ms {
            return Err("election-timeout-max-ms must exceed election-timeout-min-ms".into());
        }
        if self.peer_ping_interval_ms == 0 || self.peer_down_after_ms < 2 * self.peer_ping_interval_ms {
            return Err("peer-down-after-ms must be at least twice a positive peer-ping-interval-ms".into());
        }
        self.to_openraft().map(|_| ())
    }

    fn to_openraft(&self) -> Result<openraft::Config, String> {
        let config = openraft::Config {
            cluster_name: "cairn-shard".into(),
            heartbeat_interval: self.heartbeat_interval_ms,
            election_timeout_min: self.election_timeout_min_ms,
            election_timeout_max: self.election_timeout_max_ms,
            install_snapshot_timeout: self.install_snapshot_timeout_ms,
            // Snapshots are triggered by `snapshot_if_due` (the node's snapshot
            // task), which knows what the members still need.
            snapshot_policy: openraft::SnapshotPolicy::Never,
            max_in_snapshot_log_to_keep: self.logs_to_keep,
            max_payload_entries: self.max_payload_entries,
            enable_pre_vote: Some(true),
            // A restarted leader must win an election like any other node.
            // openraft would otherwise let it lead again in its old term, and
            // it may have lost entries its followers stored (a leader sends
            // entries before its own disk has them, and this crate applies
            // and records the commit point without an fsync): its next
            // entries would reuse those log ids, the followers would keep
            // theirs, and writes it acknowledged would exist only on it.
            // Found by the first chaos soak; tests/tests/leader_restart.rs.
            enable_leader_restore: Some(false),
            // Retry delays after a failed RPC to a member (default "200ms",
            // doubling to 1 s). A learner added by a replica move fails its first
            // append: its replica is created a few ms after the configuration
            // that lists it. Starting at 20 ms, the snapshot starts right after
            // (measured: 0.17 s of a move's start went to the first 200 ms wait);
            // a member that stays down is still retried at most once a second.
            backoff: "20ms 40ms ...1s".into(),
            ..Default::default()
        };
        config.validate().map_err(|e| e.to_string())
    }
}

/// A leader builds a snapshot (and so purges its log) while a member still
/// needs the purged entries only once this many times `snapshot-logs-since-last`
/// entries have piled up: the bound on the log a dead follower can hold back.
pub const SNAPSHOT_DEFER_FACTOR: u64 = 10;

/// Whether a replica should build a snapshot now. `matched`: on a leader, every
/// other member's matched index; `None` elsewhere.
///
/// openraft purges the log up to `logs-to-keep` entries behind each new
/// snapshot and does not hold the purge back for a member that is being sent a
/// snapshot: under a steady write load a leader that snapshots during a long
/// transfer deletes the entries right after the snapshot it is sending, and the
/// learner needs another snapshot when the first one lands (the move bench saw
/// six in a row). So a leader waits until every member has the entries the
/// purge would delete.
pub fn snapshot_due(applied: u64, snapshot: u64, matched: Option<&[u64]>, settings: &RaftSettings) -> bool {
    let since = applied.saturating_sub(snapshot);
    if since < settings.snapshot_logs_since_last.max(1) {
        return false;
    }
    if since >= settings.snapshot_logs_since_last.saturating_mul(SNAPSHOT_DEFER_FACTOR) {
        return true;
    }
    let purge_to = applied.saturating_sub(settings.logs_to_keep);
    matched.is_none_or(|m| m.iter().all(|i| *i >= purge_to))
}

/// Why a group could not serve a request.
#[derive(Debug, Clone, thiserror::Error)]
pub enum GroupError {
    #[error("not the leader")]
    NotLeader(Option<(NodeId, String)>),
    #[error("unavailable: {0}")]
    Unavailable(String),
    #[error("invalid message: {0}")]
    Invalid(String),
}

fn write_error(e: RaftError<TypeConfig, ClientWriteError<TypeConfig>>) -> GroupError {
    match e {
        RaftError::APIError(ClientWriteError::ForwardToLeader(f)) => {
            GroupError::NotLeader(f.leader_id.map(|id| (NodeId(id), f.leader_node.map(|n| n.addr).unwrap_or_default())))
        }
        e => GroupError::Unavailable(e.to_string()),
    }
}

/// What a node reports about one hosted group.
#[derive(Debug, Clone)]
pub struct GroupStatus {
    pub role: RaftRole,
    pub leader: Option<NodeId>,
    pub leader_addr: String,
    pub term: u64,
    pub applied_index: u64,
    pub last_log_index: u64,
}

/// A group's configuration as this replica's effective membership (the last
/// membership entry in its log, committed or not) has it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct MembershipSummary {
    /// Every voter; in a joint configuration the union of its voter sets.
    pub voters: BTreeSet<NodeId>,
    /// The voter set the configuration moves to: the last set of a joint one,
    /// the only one otherwise.
    pub target_voters: BTreeSet<NodeId>,
    /// Members that are not voters.
    pub learners: BTreeSet<NodeId>,
    /// Between the two entries of a voter change.
    pub joint: bool,
}

impl MembershipSummary {
    pub fn contains(&self, node: NodeId) -> bool {
        self.voters.contains(&node) || self.learners.contains(&node)
    }

    fn of(membership: &openraft::Membership<u64, BasicNode>) -> Self {
        let configs = membership.get_joint_config();
        Self {
            voters: membership.voter_ids().map(NodeId).collect(),
            target_voters: configs.last().map(|c| c.iter().copied().map(NodeId).collect()).unwrap_or_default(),
            learners: membership.learner_ids().map(NodeId).collect(),
            joint: configs.len() > 1,
        }
    }
}

/// What a leader knows about its group, for the PD's reports.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LeaderView {
    /// The last index of the leader's log.
    pub last_log_index: u64,
    pub membership: MembershipSummary,
    /// Every other member with the index its log matches the leader's up to
    /// (0: nothing known yet), in node order.
    pub matched: Vec<(NodeId, u64)>,
}

pub struct RaftGroup {
    shard: ShardId,
    node_id: u64,
    raft: Raft,
    read_policy: ReadPolicyKind,
    storage: Arc<Storage>,
    transport: Arc<Transport>,
    /// Whether openraft's ticker runs; false while the group is quiescent.
    ticking: AtomicBool,
}

impl RaftGroup {
    /// Starts the Raft instance of a shard whose record exists in `storage`.
    pub async fn start(
        node_id: NodeId,
        shard: ShardId,
        storage: Arc<Storage>,
        transport: Arc<Transport>,
        settings: &RaftSettings,
        descriptor: watch::Sender<ShardDescriptor>,
    ) -> Result<Self, GroupError> {
        let config = settings.to_openraft().map_err(GroupError::Invalid)?;
        let log = LogStore::open(shard, storage.clone()).map_err(|e| GroupError::Unavailable(e.to_string()))?;
        let sm = StateMachine::new(shard, storage.clone(), descriptor);
        let network = ShardNetworkFactory { router: ShardRouter::new(transport.clone()), shard };
        let raft = Raft::new(node_id.0, Arc::new(config), network, log, sm)
            .await
            .map_err(|e| GroupError::Unavailable(e.to_string()))?;
        Ok(Self {
            shard,
            node_id: node_id.0,
            raft,
            read_policy: settings.read_policy,
            storage,
            transport,
            ticking: AtomicBool::new(true),
        })
    }

    pub fn shard(&self) -> ShardId {
        self.shard
    }

    pub(super) fn raft(&self) -> &Raft {
        &self.raft
    }

    pub(super) fn storage(&self) -> &Arc<Storage> {
        &self.storage
    }

    /// Initialises a new group with its first voters; harmless on a group that
    /// already has a log (every bootstrap member calls it with the same config).
    pub async fn initialize(&self, members: &[(NodeId, String)]) -> Result<(), GroupError> {
        if self.raft.is_initialized().await.map_err(|e| GroupError::Unavailable(e.to_string()))? {
            return Ok(());
        }
        let nodes: BTreeMap<u64, BasicNode> =
            members.iter().map(|(id, addr)| (id.0, BasicNode { addr: addr.clone() })).collect();
        match self.raft.initialize(nodes).await {
            Ok(()) => Ok(()),
            Err(RaftError::APIError(openraft::errors::InitializeError::NotAllowed(_))) => Ok(()),
            Err(e) => Err(GroupError::Unavailable(e.to_string())),
        }
    }

    /// The leader this replica believes in, with its address.
    pub fn leader_hint(&self) -> Option<(NodeId, String)> {
        let m = self.raft.metrics().borrow_watched().clone();
        // A removed leader that stepped down still names itself: no hint.
        let leader = m.current_leader.filter(|l| *l != self.node_id || m.state == ServerState::Leader)?;
        let addr = m.membership_config.membership().get_node(&leader).map(|n| n.addr.clone()).unwrap_or_default();
        Some((NodeId(leader), addr))
    }

    pub fn status(&self) -> GroupStatus {
        let m = self.raft.metrics().borrow_watched().clone();
        let role = match m.state {
            ServerState::Leader => RaftRole::Leader,
            ServerState::Follower => RaftRole::Follower,
            ServerState::Candidate => RaftRole::Candidate,
            ServerState::Learner => RaftRole::Learner,
            ServerState::Shutdown => RaftRole::Shutdown,
        };
        let leader_addr = m
            .current_leader
            .and_then(|l| m.membership_config.membership().get_node(&l).map(|n| n.addr.clone()))
            .unwrap_or_default();
        GroupStatus {
            role,
            leader: m.current_leader.map(NodeId),
            leader_addr,
            term: m.current_term,
            applied_index: m.last_applied.map(|l| l.index).unwrap_or(0),
            last_log_index: m.last_log_index.unwrap_or(0),
        }
    }

    pub fn is_leader(&self) -> bool {
        self.leads(&self.raft.metrics().borrow_watched())
    }

    /// Whether these metrics say this replica leads. Both halves matter: a
    /// leader removed from the configuration steps down to learner (openraft's
    /// `removed_leader_step_down`) but keeps `current_leader` pointing at
    /// itself, since no later leader ever writes to it.
    fn leads(&self, m: &openraft::RaftMetrics<TypeConfig>) -> bool {
        m.state == ServerState::Leader && m.current_leader == Some(self.node_id)
    }

    /// Proposes a command and waits until it is applied on this leader.
    pub async fn write(&self, cmd: ShardCommand) -> Result<CommandResponse, GroupError> {
        match self.raft.client_write(cmd).await {
            Ok(resp) => Ok(resp.response().clone()),
            Err(RaftError::APIError(ClientWriteError::ForwardToLeader(f))) => Err(GroupError::NotLeader(
                f.leader_id.map(|id| (NodeId(id), f.leader_node.map(|n| n.addr).unwrap_or_default())),
            )),
            Err(e) => Err(GroupError::Unavailable(e.to_string())),
        }
    }

    /// Returns once this replica's state machine reflects every write
    /// acknowledged before the call, confirmed as leader (read index or lease);
    /// the result is the log id the state machine has applied through.
    pub async fn read_barrier(&self) -> Result<LogId, GroupError> {
        let policy = match self.read_policy {
            ReadPolicyKind::ReadIndex => ReadPolicy::ReadIndex,
            ReadPolicyKind::Lease => ReadPolicy::LeaseRead,
        };
        match self.raft.ensure_linearizable(policy).await {
            Ok(read) => Ok(*read.log_id()),
            Err(RaftError::APIError(openraft::errors::LinearizableReadError::ForwardToLeader(f))) => {
                Err(GroupError::NotLeader(
                    f.leader_id.map(|id| (NodeId(id), f.leader_node.map(|n| n.addr).unwrap_or_default())),
                ))
            }
            Err(e) => Err(GroupError::Unavailable(e.to_string())),
        }
    }

    /// Handles one Raft message from a peer: decode, deliver, encode the reply.
    pub async fn handle_message(&self, kind: MessageKind, payload: &[u8]) -> Result<Vec<u8>, GroupError> {
        let invalid = |e: crate::storage::codec::CodecError| GroupError::Invalid(e.to_string());
        let fatal = |e: String| GroupError::Unavailable(e);
        Ok(match kind {
            MessageKind::AppendEntries => {
                let req: openraft::raft::AppendEntriesRequest<TypeConfig> = decode(payload).map_err(invalid)?;
                if !req.entries.is_empty() {
                    self.set_ticking(true);
                }
                encode(&self.raft.append_entries(req).await.map_err(|e| fatal(e.to_string()))?)
            }
            MessageKind::Vote => {
                let req = decode(payload).map_err(invalid)?;
                // Someone is electing: this group's timers must run again.
                self.set_ticking(true);
                encode(&self.raft.vote(req).await.map_err(|e| fatal(e.to_string()))?)
            }
            MessageKind::PreVote => {
                let req = decode(payload).map_err(invalid)?;
                self.set_ticking(true);
                encode(&self.raft.pre_vote(req).await.map_err(|e| fatal(e.to_string()))?)
            }
            MessageKind::Quiesce => {
                let (term, leader): (u64, u64) = decode(payload).map_err(invalid)?;
                let m = self.raft.metrics().borrow_watched().clone();
                // Sleep only on the word of the leader this replica follows.
                let agree = m.current_term == term && m.current_leader == Some(leader) && leader != self.node_id;
                if agree {
                    self.set_ticking(false);
                }
                encode(&agree)
            }
            MessageKind::Wake => {
                self.set_ticking(true);
                encode(&true)
            }
            MessageKind::TransferLeader => {
                let req = decode(payload).map_err(invalid)?;
                encode(&self.raft.handle_transfer_leader(req).await.map_err(|e| fatal(e.to_string()))?)
            }
        })
    }

    /// Asks openraft to build a snapshot if [`snapshot_due`] says so (a build
    /// already running makes this a no-op). Returns whether it asked.
    pub async fn snapshot_if_due(&self, settings: &RaftSettings) -> bool {
        let (applied, snapshot, matched) = {
            let m = self.raft.metrics().borrow_watched().clone();
            let matched: Option<Vec<u64>> = self.leads(&m).then(|| {
                m.replication
                    .iter()
                    .flatten()
                    .filter(|(id, _)| **id != self.node_id)
                    .map(|(_, l)| l.as_ref().map(|l| l.index).unwrap_or(0))
                    .collect()
            });
            (m.last_applied.map(|l| l.index).unwrap_or(0), m.snapshot.map(|l| l.index).unwrap_or(0), matched)
        };
        if !snapshot_due(applied, snapshot, matched.as_deref(), settings) {
            return false;
        }
        self.raft.trigger().snapshot().await.is_ok()
    }

    /// The index of this replica's last snapshot (0: none).
    pub fn snapshot_index(&self) -> u64 {
        self.raft.metrics().borrow_watched().snapshot.as_ref().map(|l| l.index).unwrap_or(0)
    }

    /// Whether the group is quiescent here (its ticker parked).
    pub fn is_quiescent(&self) -> bool {
        !self.ticking.load(Ordering::Acquire)
    }

    /// Starts or parks openraft's ticker (elections, heartbeats) for this replica.
    pub fn set_ticking(&self, on: bool) {
        if self.ticking.swap(on, Ordering::AcqRel) != on {
            self.raft.runtime_config().tick(on);
            tracing::debug!(shard = %self.shard, ticking = on, "group ticker");
        }
    }

    /// Wakes a quiescent group before it serves a request. On the leader the
    /// followers are told too, without waiting for them.
    pub fn wake(&self) {
        if !self.is_quiescent() {
            return;
        }
        self.set_ticking(true);
        if self.is_leader() {
            let followers = self.followers();
            let (transport, shard) = (self.transport.clone(), self.shard.0);
            tokio::spawn(async move {
                for f in followers {
                    let _ =
                        transport.call(f, shard, MessageKind::Wake, encode(&()), true, Duration::from_secs(1)).await;
                }
            });
        }
    }

    fn followers(&self) -> Vec<u64> {
        let m = self.raft.metrics().borrow_watched().clone();
        m.membership_config.membership().nodes().map(|(id, _)| *id).filter(|id| *id != self.node_id).collect()
    }

    /// On an idle leader whose followers have every entry: puts the followers to
    /// sleep, then itself. Returns whether the group is now quiescent.
    pub async fn try_quiesce(&self) -> bool {
        let m = self.raft.metrics().borrow_watched().clone();
        if !self.leads(&m) || self.is_quiescent() {
            return false;
        }
        let membership = m.membership_config.membership();
        if membership.get_joint_config().len() != 1 {
            return false;
        }
        let Some(last) = m.last_log_index else { return false };
        let Some(replication) = &m.replication else { return false };
        let followers = self.followers();
        let caught_up = followers
            .iter()
            .all(|f| replication.get(f).map(|matched| matched.map(|l| l.index) == Some(last)).unwrap_or(false));
        if !caught_up || m.last_applied.map(|l| l.index) != Some(last) {
            return false;
        }
        let payload = encode(&(m.current_term, self.node_id));
        let acks = futures::future::join_all(followers.iter().map(|f| {
            self.transport.call(*f, self.shard.0, MessageKind::Quiesce, payload.clone(), true, Duration::from_secs(1))
        }))
        .await;
        let all = acks.iter().all(|a| a.as_ref().ok().and_then(|b| decode::<bool>(b).ok()).unwrap_or(false));
        // A request may have arrived meanwhile; then stay awake (followers wake
        // on the next append anyway).
        let still_idle = self.raft.metrics().borrow_watched().last_log_index == Some(last);
        if all && still_idle {
            self.set_ticking(false);
            true
        } else {
            false
        }
    }

    /// Adds `node` as a learner (the leader then sends it the log or a
    /// snapshot). Returns once the change is committed, not when the learner
    /// has caught up. The learner's replica must exist on its node.
    pub async fn add_learner(&self, node: NodeId, addr: &str) -> Result<(), GroupError> {
        self.raft
            .add_learner(node.0, BasicNode { addr: addr.to_string() }, false)
            .await
            .map(|_| ())
            .map_err(write_error)
    }

    /// Removes the learner `node` from the group (one membership entry).
    /// openraft refuses to remove a voter this way. Removing a node that is not
    /// a member still writes an (unchanged) membership entry, so callers check
    /// [`membership`](Self::membership) first.
    pub async fn remove_learner(&self, node: NodeId) -> Result<(), GroupError> {
        self.raft
            .change_membership(openraft::ChangeMembers::RemoveNodes(BTreeSet::from([node.0])), false)
            .await
            .map(|_| ())
            .map_err(write_error)
    }

    /// Makes `voters` the voter set (joint consensus, then the new config);
    /// every new voter must already be a learner. Voters left out are removed
    /// from the group entirely.
    ///
    /// openraft (0.10) computes the next configuration from the effective one
    /// with `bridge_to`: from a uniform `C1` it writes the joint `C1,C2` and,
    /// once that is committed, the uniform `C2` (this call waits for both).
    /// From a joint configuration that already contains the target (`C1,C2`
    /// asked for `C2`, as after a leader crashed between the two entries) it
    /// writes the uniform `C2` directly; asked for a third set `C3` it goes
    /// `C2,C3` then `C3`. So re-issuing the same call always ends in the uniform
    /// target. From a uniform configuration equal to the target it would still
    /// write an (unchanged) entry; callers skip that case. While the last
    /// membership entry is uncommitted it fails (`InProgress`) and may be retried.
    pub async fn change_voters(&self, voters: &[NodeId]) -> Result<(), GroupError> {
        let ids: BTreeSet<u64> = voters.iter().map(|n| n.0).collect();
        self.raft
            .change_membership(openraft::ChangeMembers::ReplaceAllVoters(ids), false)
            .await
            .map(|_| ())
            .map_err(write_error)
    }

    /// The effective membership of this replica.
    pub fn membership(&self) -> MembershipSummary {
        let m = self.raft.metrics().borrow_watched().clone();
        MembershipSummary::of(m.membership_config.membership())
    }

    /// The leader's view of the group (`None` unless this replica leads).
    pub fn leader_view(&self) -> Option<LeaderView> {
        let m = self.raft.metrics().borrow_watched().clone();
        if !self.leads(&m) {
            return None;
        }
        let replication = m.replication.as_ref()?;
        let membership = m.membership_config.membership();
        let matched = membership
            .nodes()
            .map(|(id, _)| *id)
            .filter(|id| *id != self.node_id)
            .map(|id| (NodeId(id), replication.get(&id).and_then(|l| l.as_ref()).map(|l| l.index).unwrap_or(0)))
            .collect();
        Some(LeaderView {
            last_log_index: m.last_log_index.unwrap_or(0),
            membership: MembershipSummary::of(membership),
            matched,
        })
    }

    /// How far each peer's log matches the leader's (leader only; else empty).
    pub fn replication_progress(&self) -> BTreeMap<NodeId, u64> {
        let m = self.raft.metrics().borrow_watched().clone();
        m.replication
            .map(|r| r.iter().map(|(id, log)| (NodeId(*id), log.map(|l| l.index).unwrap_or(0))).collect())
            .unwrap_or_default()
    }

    /// Asks the group to hand leadership to `to`.
    pub async fn transfer_leader(&self, to: NodeId) -> Result<(), GroupError> {
        self.raft.trigger().transfer_leader(to.0).await.map_err(|e| GroupError::Unavailable(e.to_string()))
    }

    /// Waits until the state machine has applied up to `index`, or the timeout.
    pub async fn wait_applied(&self, index: u64, timeout: Duration) -> Result<(), GroupError> {
        self.raft
            .wait(Some(timeout))
            .applied_index_at_least(Some(index), "wait applied")
            .await
            .map(|_| ())
            .map_err(|e| GroupError::Unavailable(e.to_string()))
    }

    /// Stops the group's Raft core.
    ///
    /// openraft (0.10.0-alpha.37) joins its core task in a way that is not
    /// cancellation safe: when the core stops on a fatal error (its storage
    /// writer gone, as in a crash) and a caller joining it is dropped (a
    /// request past its deadline, an aborted server), a second waiter panics
    /// with the core's state mutex held, and `Raft::shutdown` then panics on
    /// the poisoned mutex. The core has stopped either way, so shutting down
    /// runs in a task of its own and such a panic is logged, not propagated.
    pub async fn shutdown(&self) {
        let raft = self.raft.clone();
        match tokio::spawn(async move { raft.shutdown().await }).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => tracing::warn!(shard = %self.shard, error = %e, "raft shutdown"),
            Err(e) => tracing::warn!(
                shard = %self.shard,
                error = %e,
                "raft shutdown panicked inside openraft (its core had already stopped)"
            ),
        }
    }
}

/// Keeps `TypeConfig` referenced here so the alias module stays the one place
/// naming it for users of this module.
#[allow(dead_code)]
type _Config = TypeConfig;

#[cfg(test)]
mod tests {
    use super::*;

    fn settings() -> RaftSettings {
        RaftSettings { snapshot_logs_since_last: 100, logs_to_keep: 20, ..Default::default() }
    }

    #[test]
    fn snapshots_wait_for_members_that_need_the_purged_entries() {
        let s = settings();
        // Not enough new entries.
        assert!(!snapshot_due(150, 60, None, &s));
        // A follower (or a lone leader) snapshots at the threshold.
        assert!(snapshot_due(160, 60, None, &s));
        assert!(snapshot_due(160, 60, Some(&[]), &s));
        // A leader whose members all hold the entries behind the purge point (140).
        assert!(snapshot_due(160, 60, Some(&[140, 160]), &s));
        // A learner still receiving a snapshot (matched 0) or a lagging follower
        // holds it back ...
        assert!(!snapshot_due(160, 60, Some(&[0, 160]), &s));
        assert!(!snapshot_due(160, 60, Some(&[139, 160]), &s));
        // ... until ten times the threshold has piled up.
        assert!(!snapshot_due(1_059, 60, Some(&[0]), &s));
        assert!(snapshot_due(1_060, 60, Some(&[0]), &s));
    }
}
