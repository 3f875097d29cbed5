//! The PD's decisions and views, as pure functions of the stored state, the
//! observed state, the input and the time.

use std::collections::BTreeMap;

use cairn_proto::{
    ClusterSettings, ClusterStatus, Epoch, Heartbeat, KeyRange, NodeCommand, NodeId, NodeInfo, NodeState, RaftRole,
    RegisterNode, ReplicaDescriptor, ReplicaReport, ReplicaRole, ShardDescriptor, ShardId, ShardInfo, ShardRoute,
    display_replicas,
};

use crate::model::{AdminState, ClusterRecord, NodeRecord, PD_SHARD, PdState, ShardRecord, Writes};
use crate::observed::Observed;

/// The most node commands one heartbeat answer carries; the rest follow with
/// the next heartbeats.
pub const COMMANDS_PER_HEARTBEAT_MAX: usize = 64;
/// The most shards the PD creates at bootstrap.
pub const INITIAL_SHARDS_MAX: u32 = 100_000;

#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum PdError {
    #[error("the cluster is not bootstrapped yet")]
    NotBootstrapped,
    #[error("node {0} is not registered with this cluster")]
    UnknownNode(NodeId),
    #[error("node {0} was removed from the cluster")]
    RemovedNode(NodeId),
    #[error("the node belongs to cluster {theirs}, this is cluster {ours}")]
    WrongCluster { ours: u64, theirs: u64 },
    #[error("address {addr} is already registered to node {node}")]
    AddressTaken { addr: String, node: NodeId },
    #[error("invalid setting: {0}")]
    InvalidSetting(String),
    #[error("shard {0} does not exist")]
    UnknownShard(ShardId),
    #[error("busy: {0}")]
    Busy(String),
    #[error("refused: {0}")]
    Refused(String),
}

/// The first writes of a new cluster: its record and the PD members as nodes.
pub fn bootstrap(
    cluster_id: u64,
    now_ms: u64,
    pd_members: &[(NodeId, String)],
    initial_shards: u32,
    settings: ClusterSettings,
) -> Result<Writes, PdError> {
    validate_settings(&settings)?;
    if initial_shards == 0 || initial_shards > INITIAL_SHARDS_MAX {
        return Err(PdError::InvalidSetting(format!("initial-shards must be between 1 and {INITIAL_SHARDS_MAX}")));
    }
    let next_node_id = pd_members.iter().map(|(id, _)| id.0).max().unwrap_or(0) + 1;
    let cluster = ClusterRecord {
        cluster_id,
        created_at_ms: now_ms,
        pd_members: pd_members.to_vec(),
        next_node_id,
        next_shard_id: 1,
        next_event_seq: 1,
        initial_shards,
        initial_shards_created: false,
        settings,
        next_operator_id: 1,
    };
    let mut writes = Writes { cluster: Some(cluster), ..Default::default() };
    for (id, addr) in pd_members {
        writes.nodes.push(NodeRecord {
            id: *id,
            addr: addr.clone(),
            admin: AdminState::Active,
            capacity_bytes: 0,
            labels: BTreeMap::new(),
            registered_at_ms: now_ms,
        });
    }
    let members: Vec<String> = pd_members.iter().map(|(id, a)| format!("{id}={a}")).collect();
    // `event` takes the sequence number from the cluster record in the writes.
    let message = format!("cluster {cluster_id} bootstrapped; PD members {}", members.join(","));
    writes.event(&PdState::default(), now_ms, message);
    Ok(writes)
}

pub fn validate_settings(s: &ClusterSettings) -> Result<(), PdError> {
    if s.replication_factor == 0 || s.replication_factor > 7 {
        return Err(PdError::InvalidSetting("replication-factor must be between 1 and 7".into()));
    }
    if s.max_node_down_time_ms < 1_000 {
        return Err(PdError::InvalidSetting("max-node-down-time must be at least 1 s".into()));
    }
    if s.split_size_bytes == 0 || s.split_keys == 0 {
        return Err(PdError::InvalidSetting("split thresholds must be positive".into()));
    }
    if s.max_moves_per_node == 0 || s.max_moves_per_node > 64 {
        return Err(PdError::InvalidSetting("max-moves-per-node must be between 1 and 64".into()));
    }
    if s.max_operators > 1024 {
        return Err(PdError::InvalidSetting("max-operators must be between 0 (scheduler paused) and 1024".into()));
    }
    if s.snapshot_bytes_per_sec != 0 && s.snapshot_bytes_per_sec < 1 << 20 {
        return Err(PdError::InvalidSetting("snapshot-bytes-per-sec must be 0 (unlimited) or at least 1MiB".into()));
    }
    if s.operator_timeout_ms < 10_000 {
        return Err(PdError::InvalidSetting("operator-timeout must be at least 10s".into()));
    }
    if s.balance_bytes_tolerance_percent == 0 || s.balance_bytes_tolerance_percent > 1000 {
        return Err(PdError::InvalidSetting("balance-bytes-tolerance-percent must be between 1 and 1000".into()));
    }
    Ok(())
}

fn cluster(state: &PdState) -> Result<&ClusterRecord, PdError> {
    state.cluster.as_ref().ok_or(PdError::NotBootstrapped)
}

/// Registers a node: a known node confirms its id (and may change address); a
/// new node gets the next id. Returns the id and the writes (possibly none).
pub fn register(state: &PdState, req: &RegisterNode, now_ms: u64) -> Result<(NodeId, Writes), PdError> {
    let c = cluster(state)?;
    if req.cluster_id != 0 && req.cluster_id != c.cluster_id {
        return Err(PdError::WrongCluster { ours: c.cluster_id, theirs: req.cluster_id });
    }
    let taken_by = state
        .nodes
        .values()
        .find(|n| n.addr == req.addr && n.admin != AdminState::Removed && Some(n.id) != req.node)
        .map(|n| n.id);
    if let Some(node) = taken_by {
        return Err(PdError::AddressTaken { addr: req.addr.clone(), node });
    }
    let mut writes = Writes::default();
    match req.node {
        Some(id) => {
            let known = state.nodes.get(&id).ok_or(PdError::UnknownNode(id))?;
            if known.admin == AdminState::Removed {
                return Err(PdError::RemovedNode(id));
            }
            let updated = NodeRecord {
                addr: req.addr.clone(),
                capacity_bytes: req.capacity_bytes,
                labels: req.labels.clone(),
                ..known.clone()
            };
            if &updated != known {
                if updated.addr != known.addr {
                    writes.event(state, now_ms, format!("node {id} moved from {} to {}", known.addr, updated.addr));
                }
                writes.nodes.push(updated);
            }
            Ok((id, writes))
        }
        None => {
            let mut c = c.clone();
            let id = NodeId(c.next_node_id);
            c.next_node_id += 1;
            writes.cluster = Some(c);
            writes.nodes.push(NodeRecord {
                id,
                addr: req.addr.clone(),
                admin: AdminState::Active,
                capacity_bytes: req.capacity_bytes,
                labels: req.labels.clone(),
                registered_at_ms: now_ms,
            });
            writes.event(state, now_ms, format!("node {id} registered at {}", req.addr));
            Ok((id, writes))
        }
    }
}

/// What the PD answers a heartbeat with.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct HeartbeatOutcome {
    pub commands: Vec<NodeCommand>,
    /// The PD has no complete picture of the node: ask for a full report.
    pub full_report_wanted: bool,
    pub writes: Writes,
    /// Shards whose observed leader changed (for the shard-map stream).
    pub leader_changed: Vec<ShardId>,
}

/// Records a heartbeat and decides what the node must do: create the replicas
/// of new shards it is a member of but does not host yet.
pub fn heartbeat(
    state: &PdState,
    observed: &mut Observed,
    hb: &Heartbeat,
    now_ms: u64,
) -> Result<HeartbeatOutcome, PdError> {
    let c = cluster(state)?;
    if hb.cluster_id != 0 && hb.cluster_id != c.cluster_id {
        return Err(PdError::WrongCluster { ours: c.cluster_id, theirs: hb.cluster_id });
    }
    let node = state.nodes.get(&hb.node).ok_or(PdError::UnknownNode(hb.node))?;
    if node.admin == AdminState::Removed {
        return Err(PdError::RemovedNode(hb.node));
    }
    // Reports of shards the PD does not know (stale, or made up) are dropped, so
    // the observed state stays bounded by the shard map.
    let known = |shard: ShardId| state.knows_shard(shard);
    let full_report_wanted = !hb.full && !observed.has_reported(hb.node);
    let mut membership_changed = Vec::new();
    for r in hb.replicas.iter().filter(|r| known(r.shard) && r.role == RaftRole::Leader && !r.replicas.is_empty()) {
        if let Some(record) = state.shard(r.shard)
            && let Some(adopted) = adopt_membership(record, r)
        {
            membership_changed.push(adopted);
        }
    }
    let mut leader_changed = observed.record(hb, known, now_ms);
    // The PD's own shard is not in the shard map clients route with.
    leader_changed.retain(|s| *s != PD_SHARD);
    let mut outcome = HeartbeatOutcome { leader_changed, full_report_wanted, ..Default::default() };
    for shard in state.shards.values().filter(|s| s.creating) {
        let d = &shard.descriptor;
        let member = d.replicas.iter().any(|r| r.node == hb.node && r.role == ReplicaRole::Voter);
        if member && !observed.hosts(hb.node, d.id) && outcome.commands.len() < COMMANDS_PER_HEARTBEAT_MAX {
            outcome.commands.push(NodeCommand::CreateReplica { descriptor: d.clone() });
        }
        // Every first replica exists: the shard is an ordinary shard from now on.
        if d.replicas.iter().all(|r| observed.hosts(r.node, d.id)) {
            outcome.writes.shards.push(ShardRecord { descriptor: d.clone(), creating: false });
        }
    }
    if !outcome.writes.shards.is_empty() {
        let n = outcome.writes.shards.len();
        outcome.writes.event(state, now_ms, format!("{n} new shard(s) have all their replicas"));
    }
    for record in membership_changed {
        let d = &record.descriptor;
        let replicas = display_replicas(&d.replicas);
        outcome.writes.event(state, now_ms, format!("shard {} membership {replicas} at {}", d.id, d.epoch));
        outcome.writes.shards.retain(|s| s.descriptor.id != d.id);
        outcome.writes.shards.push(record);
    }
    Ok(outcome)
}

/// Records shard 0's descriptor as the PD leader's own replica has it, when
/// the PD has no record of it yet (clusters bootstrapped before RFC 004, and
/// the first leader of a new one) or it is newer than the record.
pub fn record_pd_shard(state: &PdState, local: &ShardDescriptor, now_ms: u64) -> Option<Writes> {
    if local.id != PD_SHARD || local.epoch.conf_ver == 0 {
        return None;
    }
    let stale = state.pd_shard.as_ref().is_none_or(|r| r.descriptor.epoch.conf_ver < local.epoch.conf_ver);
    if !stale {
        return None;
    }
    let mut writes = Writes::default();
    writes.shards.push(ShardRecord { descriptor: local.clone(), creating: false });
    let members = display_replicas(&local.replicas);
    writes.event(state, now_ms, format!("PD members {members} at {}", local.epoch));
    Some(writes)
}

/// The shard record after a membership change its leader reports: the group's
/// config is the truth, and the PD follows it once applied (higher `conf_ver`,
/// same range version).
pub fn adopt_membership(record: &ShardRecord, report: &ReplicaReport) -> Option<ShardRecord> {
    let d = &record.descriptor;
    if report.epoch.version != d.epoch.version || report.epoch.conf_ver <= d.epoch.conf_ver {
        return None;
    }
    let descriptor = ShardDescriptor { epoch: report.epoch, replicas: report.replicas.clone(), ..d.clone() };
    // A shard whose group changed its first membership (a repair replacing a
    // member that died before creating its replica) is past creation: its new
    // members join through their operator, never by `CreateReplica`.
    Some(ShardRecord { descriptor, creating: false })
}

/// Creates the initial shards once `replication_factor` live nodes exist:
/// ranges cut evenly, replicas on the least loaded live nodes.
pub fn create_initial_shards(state: &PdState, observed: &Observed, now_ms: u64) -> Option<Writes> {
    let c = state.cluster.as_ref()?;
    if c.initial_shards_created {
        return None;
    }
    let rf = c.settings.replication_factor as usize;
    let live: Vec<&NodeRecord> = state
        .nodes
        .values()
        .filter(|n| n.admin == AdminState::Active && observed.has_reported(n.id) && observed.is_alive(n.id, now_ms))
        .collect();
    if live.len() < rf {
        return None;
    }
    let mut c = c.clone();
    let mut load: BTreeMap<NodeId, u64> = live.iter().map(|n| (n.id, 0)).collect();
    for (node, count) in state.replica_counts() {
        if let Some(l) = load.get_mut(&node) {
            *l = count;
        }
    }
    let mut writes = Writes::default();
    for range in KeyRange::split_evenly(c.initial_shards) {
        let id = ShardId(c.next_shard_id);
        c.next_shard_id += 1;
        let replicas = pick_nodes(&mut load, rf)
            .into_iter()
            .map(|node| ReplicaDescriptor { node, addr: state.nodes[&node].addr.clone(), role: ReplicaRole::Voter })
            .collect();
        let descriptor = ShardDescriptor { id, range, epoch: Epoch { conf_ver: 1, version: 1 }, replicas };
        writes.shards.push(ShardRecord { descriptor, creating: true });
    }
    c.initial_shards_created = true;
    let n = c.initial_shards;
    writes.cluster = Some(c);
    writes.event(state, now_ms, format!("created {n} initial shard(s) with {rf} replica(s) each"));
    Some(writes)
}

/// Picks `n` nodes with the fewest replicas (ties by id) and counts the new ones.
fn pick_nodes(load: &mut BTreeMap<NodeId, u64>, n: usize) -> Vec<NodeId> {
    let mut order: Vec<(u64, NodeId)> = load.iter().map(|(id, l)| (*l, *id)).collect();
    order.sort();
    let picked: Vec<NodeId> = order.into_iter().take(n).map(|(_, id)| id).collect();
    for id in &picked {
        *load.get_mut(id).expect("picked from the map") += 1;
    }
    let mut sorted = picked;
    sorted.sort();
    sorted
}

/// The route of a shard: its descriptor and the observed leader with address.
pub fn route(state: &PdState, observed: &Observed, shard: &ShardRecord) -> ShardRoute {
    let leader = observed
        .shards
        .get(&shard.descriptor.id)
        .and_then(|o| o.leader)
        .and_then(|l| shard.descriptor.replicas.iter().find(|r| r.node == l))
        .map(|r| (r.node, state.nodes.get(&r.node).map(|n| n.addr.clone()).unwrap_or_else(|| r.addr.clone())));
    ShardRoute { descriptor: shard.descriptor.clone(), leader }
}

pub fn node_state(record: &NodeRecord, observed: &Observed, now_ms: u64) -> NodeState {
    match record.admin {
        AdminState::Removed => NodeState::Removed,
        AdminState::Draining => NodeState::Draining,
        AdminState::Active if observed.is_alive(record.id, now_ms) => NodeState::Up,
        AdminState::Active => NodeState::Down,
    }
}

/// The cluster as `GetCluster` shows it.
pub fn cluster_status(
    state: &PdState,
    observed: &Observed,
    now_ms: u64,
    pd_leader: Option<(NodeId, String)>,
    revision: u64,
    events: usize,
) -> ClusterStatus {
    let mut leaders: BTreeMap<NodeId, u64> = BTreeMap::new();
    let mut sizes: BTreeMap<NodeId, u64> = BTreeMap::new();
    let shards: Vec<ShardInfo> = state
        .shards
        .values()
        .map(|s| {
            let obs = observed.shards.get(&s.descriptor.id).cloned().unwrap_or_default();
            let route = route(state, observed, s);
            if let Some((l, _)) = &route.leader {
                *leaders.entry(*l).or_default() += 1;
            }
            for r in &s.descriptor.replicas {
                *sizes.entry(r.node).or_default() += obs.size_bytes;
            }
            ShardInfo {
                route,
                key_count: obs.key_count,
                size_bytes: obs.size_bytes,
                term: obs.term,
                applied_index: obs.applied_index,
            }
        })
        .collect();
    let counts = state.replica_counts();
    let pd_ids = state.pd_members();
    let nodes: Vec<NodeInfo> = state
        .nodes
        .values()
        .map(|n| NodeInfo {
            id: n.id,
            addr: n.addr.clone(),
            state: node_state(n, observed, now_ms),
            capacity_bytes: n.capacity_bytes,
            labels: n.labels.clone(),
            last_heartbeat_ms_ago: observed.heartbeat_age(n.id, now_ms),
            replicas: counts.get(&n.id).copied().unwrap_or(0),
            leaders: leaders.get(&n.id).copied().unwrap_or(0),
            size_bytes: sizes.get(&n.id).copied().unwrap_or(0),
            db_bytes: observed.nodes.get(&n.id).map(|o| o.stats.db_bytes).unwrap_or(0),
            pd_member: pd_ids.contains(&n.id),
        })
        .collect();
    ClusterStatus {
        cluster_id: state.cluster.as_ref().map(|c| c.cluster_id).unwrap_or(0),
        pd_leader,
        pd_members: nodes.iter().filter(|n| n.pd_member).cloned().collect(),
        nodes,
        shards,
        settings: state.settings(),
        revision,
        events: state.recent_events(events),
    }
}

#[cfg(test)]
mod tests {
    use cairn_proto::NodeStats;

    use super::*;

    fn members() -> Vec<(NodeId, String)> {
        (1..=3).map(|i| (NodeId(i), format!("n{i}:1"))).collect()
    }

    fn booted(initial_shards: u32) -> PdState {
        let mut state = PdState::default();
        let w = bootstrap(42, 1_000, &members(), initial_shards, ClusterSettings::default()).unwrap();
        state.apply(&w, 1);
        state
    }

    fn hb(node: u64, hosted: &[u64]) -> Heartbeat {
        Heartbeat {
            node: NodeId(node),
            cluster_id: 42,
            addr: format!("n{node}:1"),
            stats: NodeStats::default(),
            replicas: hosted
                .iter()
                .map(|s| ReplicaReport {
                    shard: ShardId(*s),
                    epoch: Epoch::default(),
                    role: RaftRole::Follower,
                    leader: None,
                    term: 1,
                    applied_index: 0,
                    key_count: 0,
                    size_bytes: 0,
                    replicas: vec![],
                    joint: false,
                    last_log_index: 0,
                    progress: vec![],
                })
                .collect(),
            full: true,
            removed: vec![],
        }
    }

    fn req(node: Option<u64>, addr: &str, cluster_id: u64) -> RegisterNode {
        RegisterNode {
            node: node.map(NodeId),
            addr: addr.into(),
            capacity_bytes: 0,
            labels: BTreeMap::new(),
            cluster_id,
        }
    }

    #[test]
    fn bootstrap_registers_the_pd_members() {
        let state = booted(4);
        let c = state.cluster.as_ref().unwrap();
        assert_eq!(c.next_node_id, 4);
        assert_eq!(state.nodes.len(), 3);
        assert_eq!(state.events.len(), 1);
        assert!(bootstrap(1, 1, &members(), 0, ClusterSettings::default()).is_err());
        let bad = ClusterSettings { replication_factor: 0, ..Default::default() };
        assert!(bootstrap(1, 1, &members(), 1, bad).is_err());
    }

    #[test]
    fn registration_allocates_ids_and_checks_identity() {
        let mut state = booted(1);
        let (id, w) = register(&state, &req(None, "n4:1", 0), 2_000).unwrap();
        assert_eq!(id, NodeId(4));
        state.apply(&w, 2);
        // Re-registering with the id it got changes nothing.
        let (again, w) = register(&state, &req(Some(4), "n4:1", 42), 3_000).unwrap();
        assert_eq!((again, w.is_empty()), (NodeId(4), true));
        // A PD member confirms its bootstrap id.
        assert_eq!(register(&state, &req(Some(2), "n2:1", 0), 3_000).unwrap().0, NodeId(2));
        assert_eq!(
            register(&state, &req(None, "n4:1", 0), 3_000).unwrap_err(),
            PdError::AddressTaken { addr: "n4:1".into(), node: NodeId(4) }
        );
        assert_eq!(register(&state, &req(Some(9), "n9:1", 0), 1).unwrap_err(), PdError::UnknownNode(NodeId(9)));
        assert!(matches!(register(&state, &req(Some(4), "n4:1", 7), 1), Err(PdError::WrongCluster { .. })));
        assert_eq!(register(&PdState::default(), &req(None, "x:1", 0), 1).unwrap_err(), PdError::NotBootstrapped);
    }

    #[test]
    fn initial_shards_wait_for_replication_factor_live_nodes() {
        let state = booted(8);
        let mut obs = Observed::new(1_000);
        assert!(create_initial_shards(&state, &obs, 1_500).is_none(), "nobody reported yet");
        heartbeat(&state, &mut obs, &hb(1, &[0]), 1_500).unwrap();
        heartbeat(&state, &mut obs, &hb(2, &[0]), 1_500).unwrap();
        assert!(create_initial_shards(&state, &obs, 1_600).is_none(), "2 of 3 nodes");
        heartbeat(&state, &mut obs, &hb(3, &[0]), 1_600).unwrap();
        let w = create_initial_shards(&state, &obs, 1_700).unwrap();
        assert_eq!(w.shards.len(), 8);
        let ranges: Vec<KeyRange> = w.shards.iter().map(|s| s.descriptor.range.clone()).collect();
        assert_eq!(ranges, KeyRange::split_evenly(8));
        assert!(w.shards.iter().all(|s| s.creating && s.descriptor.replicas.len() == 3));
        let mut state = state;
        state.apply(&w, 5);
        assert!(create_initial_shards(&state, &obs, 1_800).is_none(), "exactly once");
    }

    #[test]
    fn heartbeats_create_missing_replicas_until_all_exist() {
        let mut state = booted(2);
        let mut obs = Observed::new(0);
        for n in 1..=3 {
            heartbeat(&state, &mut obs, &hb(n, &[]), 10).unwrap();
        }
        let w = create_initial_shards(&state, &obs, 20).unwrap();
        state.apply(&w, 2);
        let out = heartbeat(&state, &mut obs, &hb(1, &[]), 30).unwrap();
        assert_eq!(out.commands.len(), 2);
        assert!(out.writes.is_empty());
        heartbeat(&state, &mut obs, &hb(1, &[1, 2]), 40).unwrap();
        heartbeat(&state, &mut obs, &hb(2, &[1, 2]), 40).unwrap();
        let out = heartbeat(&state, &mut obs, &hb(3, &[1]), 40).unwrap();
        assert_eq!(
            out.commands,
            vec![NodeCommand::CreateReplica { descriptor: state.shards[&ShardId(2)].descriptor.clone() }]
        );
        assert_eq!(out.writes.shards.len(), 1, "shard 1 has all replicas now");
        assert!(!out.writes.shards[0].creating);
        assert_eq!(heartbeat(&state, &mut obs, &hb(9, &[]), 50).unwrap_err(), PdError::UnknownNode(NodeId(9)));
    }

    #[test]
    fn leader_hints_follow_terms_and_liveness_shows_in_status() {
        let mut state = booted(1);
        let mut obs = Observed::new(0);
        for n in 1..=3 {
            heartbeat(&state, &mut obs, &hb(n, &[]), 10).unwrap();
        }
        state.apply(&create_initial_shards(&state, &obs, 10).unwrap(), 2);
        let mut leader_report = hb(2, &[1]);
        leader_report.replicas[0].role = RaftRole::Leader;
        leader_report.replicas[0].leader = Some(NodeId(2));
        leader_report.replicas[0].term = 5;
        leader_report.replicas[0].key_count = 7;
        let out = heartbeat(&state, &mut obs, &leader_report, 100).unwrap();
        assert_eq!(out.leader_changed, vec![ShardId(1)]);
        // A stale report from an older term is ignored.
        let mut stale = hb(3, &[1]);
        stale.replicas[0].leader = Some(NodeId(3));
        stale.replicas[0].term = 4;
        assert!(heartbeat(&state, &mut obs, &stale, 200).unwrap().leader_changed.is_empty());
        let r = route(&state, &obs, &state.shards[&ShardId(1)]);
        assert_eq!(r.leader, Some((NodeId(2), "n2:1".into())));

        // Node 1 stops reporting; the others go on.
        let later = 100 + crate::observed::NODE_DOWN_AFTER_MS + 1;
        heartbeat(&state, &mut obs, &hb(2, &[1]), later).unwrap();
        heartbeat(&state, &mut obs, &hb(3, &[1]), later).unwrap();
        let status = cluster_status(&state, &obs, later, Some((NodeId(2), "n2:1".into())), 9, 10);
        let states: Vec<NodeState> = status.nodes.iter().map(|n| n.state).collect();
        assert_eq!(states, vec![NodeState::Down, NodeState::Up, NodeState::Up]);
        assert_eq!(status.under_replicated(), 1);
        assert_eq!(status.shards[0].key_count, 7);
        assert_eq!(status.nodes[1].leaders, 1);
        assert_eq!(status.pd_members.len(), 3);
    }

    #[test]
    fn the_pd_follows_membership_its_leaders_report() {
        let mut state = booted(1);
        let mut obs = Observed::new(0);
        for n in 1..=3 {
            heartbeat(&state, &mut obs, &hb(n, &[]), 10).unwrap();
        }
        state.apply(&create_initial_shards(&state, &obs, 10).unwrap(), 2);
        let before = state.shards[&ShardId(1)].descriptor.clone();
        let mut report = hb(2, &[1]);
        let r = &mut report.replicas[0];
        r.role = RaftRole::Leader;
        r.leader = Some(NodeId(2));
        r.epoch = Epoch { conf_ver: before.epoch.conf_ver + 2, version: before.epoch.version };
        r.replicas = before.replicas.clone();
        r.replicas[0].role = ReplicaRole::Learner;
        let out = heartbeat(&state, &mut obs, &report, 20).unwrap();
        let adopted = out.writes.shards.iter().find(|s| s.descriptor.id == ShardId(1)).expect("adopted");
        assert_eq!(adopted.descriptor.epoch.conf_ver, before.epoch.conf_ver + 2);
        assert_eq!(adopted.descriptor.replicas[0].role, ReplicaRole::Learner);
        assert_eq!(adopted.descriptor.range, before.range);
        state.apply(&out.writes, 3);
        // The same report again, an older one, or one from another range version: nothing.
        assert!(heartbeat(&state, &mut obs, &report, 30).unwrap().writes.shards.is_empty());
        report.replicas[0].epoch.version += 1;
        report.replicas[0].epoch.conf_ver += 5;
        assert!(heartbeat(&state, &mut obs, &report, 40).unwrap().writes.shards.is_empty());
    }
}
