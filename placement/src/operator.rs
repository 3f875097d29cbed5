//! Operators: the next step of a replica move, addition, removal or leader
//! transfer, as a pure function of the operator and the shard's observed
//! state (RFC 003). Nothing about an operator's progress is stored, so a lost
//! or repeated command, a crashed leader, source or target, or a new PD leader
//! only delay it: the next heartbeat recomputes the step from what the group
//! reports.
//!
//! Invariants:
//! - A voter change is proposed only when the group's leader reports a
//!   caught-up target, and a quorum of both the old and the new voter set is
//!   alive (so the joint configuration can always be left).
//! - The voter set changes by at most one member per operator, and a move
//!   never leaves fewer voters than it found.
//! - Rollback only before promotion: once the target is a voter (joint or
//!   not) the operator goes forward to its uniform configuration.

use std::collections::BTreeSet;

use cairn_proto::{
    ClusterSettings, NodeCommand, NodeId, OperatorInfo, OperatorKind, ReplicaRole, ShardDescriptor, ShardId,
};

use crate::model::{AdminState, OperatorRecord, PdState, ShardRecord, Writes};
use crate::observed::{Observed, ShardObs};

/// A learner this close to the leader's last log index counts as caught up.
pub const CATCH_UP_SLACK: u64 = 1_000;
/// Heartbeat interval the PD asks of nodes taking part in an operator.
pub const OPERATOR_HEARTBEAT_MS: u64 = 100;

/// What an operator needs next.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Step {
    /// `node` must execute `command` (re-sent with every heartbeat of `node`
    /// until the reports show its effect).
    Command {
        node: NodeId,
        command: NodeCommand,
        name: &'static str,
    },
    /// Nothing to send: waiting for the named condition.
    Wait(&'static str),
    Finished(Outcome),
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Outcome {
    Done,
    RolledBack(String),
    /// Could not start or continue (e.g. the shard or the target is gone).
    Abandoned(String),
}

impl Outcome {
    pub fn label(&self) -> &'static str {
        match self {
            Outcome::Done => "done",
            Outcome::RolledBack(_) => "rolled-back",
            Outcome::Abandoned(_) => "abandoned",
        }
    }
}

impl Step {
    pub fn name(&self) -> &'static str {
        match self {
            Step::Command { name, .. } => name,
            Step::Wait(name) => name,
            Step::Finished(o) => o.label(),
        }
    }
}

/// The shard's configuration as the PD knows it.
struct Config {
    voters: BTreeSet<NodeId>,
    learners: BTreeSet<NodeId>,
    /// The leader reported this very configuration as joint.
    joint: bool,
}

impl Config {
    fn of(d: &ShardDescriptor, obs: &ShardObs) -> Self {
        let pick = |role| d.replicas.iter().filter(|r| r.role == role).map(|r| r.node).collect();
        Config {
            voters: pick(ReplicaRole::Voter),
            learners: pick(ReplicaRole::Learner),
            joint: obs.joint && obs.conf_ver == d.epoch.conf_ver,
        }
    }

    fn contains(&self, n: NodeId) -> bool {
        self.voters.contains(&n) || self.learners.contains(&n)
    }
}

/// The voter set an operator ends with, given the current (possibly joint)
/// voters; `None` for operators that do not change voters.
fn target_voters(kind: &OperatorKind, voters: &BTreeSet<NodeId>) -> Option<BTreeSet<NodeId>> {
    let mut v = voters.clone();
    match kind {
        OperatorKind::MoveReplica { from, to } => {
            v.remove(from);
            v.insert(*to);
        }
        OperatorKind::AddReplica { to } => {
            v.insert(*to);
        }
        OperatorKind::RemoveReplica { from } => {
            v.remove(from);
        }
        OperatorKind::TransferLeader { .. } => return None,
    }
    Some(v)
}

/// The node an operator adds, if any.
pub fn incoming(kind: &OperatorKind) -> Option<NodeId> {
    match kind {
        OperatorKind::MoveReplica { to, .. } | OperatorKind::AddReplica { to } => Some(*to),
        _ => None,
    }
}

/// The node an operator removes, if any.
pub fn outgoing(kind: &OperatorKind) -> Option<NodeId> {
    match kind {
        OperatorKind::MoveReplica { from, .. } | OperatorKind::RemoveReplica { from } => Some(*from),
        _ => None,
    }
}

/// The nodes an operator keeps busy (for the per-node limit and fast heartbeats).
pub fn involved(kind: &OperatorKind) -> Vec<NodeId> {
    incoming(kind).into_iter().chain(outgoing(kind)).collect()
}

fn live(state: &PdState, observed: &Observed, node: NodeId, now_ms: u64) -> bool {
    state.nodes.get(&node).is_some_and(|n| n.admin != AdminState::Removed) && observed.is_alive(node, now_ms)
}

fn quorum_alive(state: &PdState, observed: &Observed, voters: &BTreeSet<NodeId>, now_ms: u64) -> bool {
    let up = voters.iter().filter(|n| live(state, observed, **n, now_ms)).count();
    up > voters.len() / 2
}

/// The target is promoted: it is a voter (joint or not), so the operator can
/// only go forward.
pub fn promoted(op: &OperatorRecord, shard: &ShardRecord) -> bool {
    match incoming(&op.kind) {
        Some(to) => shard.descriptor.replicas.iter().any(|r| r.node == to && r.role == ReplicaRole::Voter),
        None => false,
    }
}

/// The next step of `op` on `shard`.
pub fn step(state: &PdState, observed: &Observed, op: &OperatorRecord, now_ms: u64) -> Step {
    let Some(shard) = state.shard(op.shard) else {
        return Step::Finished(Outcome::Abandoned(format!("shard {} no longer exists", op.shard)));
    };
    let d = &shard.descriptor;
    let empty = ShardObs::default();
    let obs = observed.shards.get(&d.id).unwrap_or(&empty);
    let config = Config::of(d, obs);
    // Every command goes to the leader, except the target's replica creation;
    // a leader the PD has not heard from (or that the config no longer lists)
    // is waited for.
    let leader = obs.leader.filter(|l| config.voters.contains(l) && live(state, observed, *l, now_ms));

    if let Some(reason) = &op.rollback
        && !promoted(op, shard)
    {
        let Some(to) = incoming(&op.kind) else {
            return Step::Finished(Outcome::Abandoned(reason.clone()));
        };
        if !config.contains(to) {
            return Step::Finished(Outcome::RolledBack(reason.clone()));
        }
        let Some(leader) = leader else { return Step::Wait("leader") };
        let command = NodeCommand::RemoveLearner { shard: d.id, conf_ver: d.epoch.conf_ver, node: to };
        return Step::Command { node: leader, command, name: "remove-learner" };
    }

    if let OperatorKind::TransferLeader { to } = op.kind {
        if obs.leader == Some(to) {
            return Step::Finished(Outcome::Done);
        }
        if !config.voters.contains(&to) || config.joint {
            return Step::Finished(Outcome::Abandoned(format!("node {to} is not a voter of shard {}", d.id)));
        }
        let Some(leader) = leader else { return Step::Wait("leader") };
        if !observed.is_fresh(to, now_ms) {
            // Silent for a while: maybe dead; never hand it the shard.
            return Step::Wait("target");
        }
        return Step::Command {
            node: leader,
            command: NodeCommand::TransferLeader { shard: d.id, to },
            name: "transfer-leader",
        };
    }

    let target = target_voters(&op.kind, &config.voters).expect("voter-changing operator");
    let finished = config.voters == target && !config.joint && outgoing(&op.kind).is_none_or(|f| !config.contains(f));
    if finished {
        return Step::Finished(Outcome::Done);
    }
    let Some(leader) = leader else { return Step::Wait("leader") };

    if config.joint {
        // Between the two entries of a voter change (the leader may have
        // crashed in between): re-issuing the change completes it.
        if let Some(to) = incoming(&op.kind)
            && !config.voters.contains(&to)
        {
            // Joint for another change than ours: let it finish first.
            return Step::Wait("other-change");
        }
        let command =
            NodeCommand::ChangeVoters { shard: d.id, conf_ver: d.epoch.conf_ver, voters: target.into_iter().collect() };
        return Step::Command { node: leader, command, name: "leave-joint" };
    }

    if let Some(to) = incoming(&op.kind)
        && !config.voters.contains(&to)
    {
        if !config.learners.contains(&to) {
            let Some(addr) = state.nodes.get(&to).map(|n| n.addr.clone()) else {
                return Step::Finished(Outcome::Abandoned(format!("node {to} is not registered")));
            };
            let command = NodeCommand::AddLearner { shard: d.id, conf_ver: d.epoch.conf_ver, node: to, addr };
            return Step::Command { node: leader, command, name: "add-learner" };
        }
        if !observed.hosts(to, d.id) {
            return Step::Command {
                node: to,
                command: NodeCommand::JoinReplica { descriptor: d.clone() },
                name: "create-replica",
            };
        }
        let caught_up = obs
            .progress_of(to)
            .is_some_and(|p| p.matched_index > 0 && p.matched_index + CATCH_UP_SLACK >= obs.last_log_index);
        if !caught_up {
            return Step::Wait("catch-up");
        }
    }

    if let Some(from) = outgoing(&op.kind) {
        if config.learners.contains(&from) && !config.voters.contains(&from) {
            let command = NodeCommand::RemoveLearner { shard: d.id, conf_ver: d.epoch.conf_ver, node: from };
            return Step::Command { node: leader, command, name: "remove-learner" };
        }
        if leader == from {
            // A leader being moved away hands over first, to the voter that
            // stays and is furthest along.
            let successor = target
                .iter()
                .filter(|n| **n != from && config.voters.contains(n) && observed.is_fresh(**n, now_ms))
                .max_by_key(|n| (obs.progress_of(**n).map(|p| p.matched_index).unwrap_or(0), std::cmp::Reverse(**n)))
                .copied();
            let Some(to) = successor else { return Step::Wait("successor") };
            return Step::Command {
                node: leader,
                command: NodeCommand::TransferLeader { shard: d.id, to },
                name: "transfer-leader",
            };
        }
    }

    // Enter the joint configuration only if both halves can commit.
    if !quorum_alive(state, observed, &config.voters, now_ms) || !quorum_alive(state, observed, &target, now_ms) {
        return Step::Wait("quorum");
    }
    let command =
        NodeCommand::ChangeVoters { shard: d.id, conf_ver: d.epoch.conf_ver, voters: target.into_iter().collect() };
    Step::Command { node: leader, command, name: "promote" }
}

/// An operator that finished, for the runtime's log and metrics.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Finished {
    pub op: OperatorRecord,
    pub outcome: Outcome,
    pub duration_ms: u64,
}

/// Moves every operator along what needs no node: finishes those whose
/// effect the reports show, and marks for rollback those past their deadline
/// or whose target left before promotion.
pub fn advance(state: &PdState, observed: &Observed, now_ms: u64) -> (Writes, Vec<Finished>) {
    let mut writes = Writes::default();
    let mut finished = Vec::new();
    for op in state.operators.values() {
        match step(state, observed, op, now_ms) {
            Step::Finished(outcome) => {
                let message = match &outcome {
                    Outcome::Done => format!("operator {} on shard {} ({}) done", op.id, op.shard, op.kind),
                    Outcome::RolledBack(why) => {
                        format!("operator {} on shard {} ({}) rolled back: {why}", op.id, op.shard, op.kind)
                    }
                    Outcome::Abandoned(why) => {
                        format!("operator {} on shard {} ({}) abandoned: {why}", op.id, op.shard, op.kind)
                    }
                };
                writes.event(state, now_ms, message);
                writes.operators_done.push(op.shard);
                finished.push(Finished {
                    op: op.clone(),
                    outcome,
                    duration_ms: now_ms.saturating_sub(op.created_at_ms),
                });
            }
            _ if op.rollback.is_some() => {}
            _ => {
                let Some(shard) = state.shard(op.shard) else { continue };
                if promoted(op, shard) {
                    continue;
                }
                let why = match op.kind {
                    _ if now_ms > op.deadline_ms => Some("operator timed out".to_string()),
                    OperatorKind::MoveReplica { to, .. } | OperatorKind::AddReplica { to }
                        if !live(state, observed, to, now_ms) =>
                    {
                        Some(format!("target node {to} is down"))
                    }
                    OperatorKind::TransferLeader { to } if !live(state, observed, to, now_ms) => {
                        Some(format!("target node {to} is down"))
                    }
                    OperatorKind::MoveReplica { from, .. } | OperatorKind::RemoveReplica { from }
                        if op.reason == "balance-replicas" && !live(state, observed, from, now_ms) =>
                    {
                        // A balancing move from a node that died: repair takes over.
                        Some(format!("source node {from} is down"))
                    }
                    _ => None,
                };
                if let Some(why) = why {
                    if incoming(&op.kind).is_some() {
                        writes.event(
                            state,
                            now_ms,
                            format!("operator {} on shard {}: rolling back: {why}", op.id, op.shard),
                        );
                        writes.operators.push(OperatorRecord { rollback: Some(why), ..op.clone() });
                    } else {
                        let message =
                            format!("operator {} on shard {} ({}) abandoned: {why}", op.id, op.shard, op.kind);
                        writes.event(state, now_ms, message);
                        writes.operators_done.push(op.shard);
                        finished.push(Finished {
                            op: op.clone(),
                            outcome: Outcome::Abandoned(why),
                            duration_ms: now_ms.saturating_sub(op.created_at_ms),
                        });
                    }
                }
            }
        }
    }
    (writes, finished)
}

/// The commands for `node`: the operators' next steps addressed to it, then
/// the destruction of replicas it hosts that no configuration lists.
pub fn commands_for(state: &PdState, observed: &Observed, node: NodeId, now_ms: u64) -> Vec<NodeCommand> {
    let mut out = Vec::new();
    for op in state.operators.values() {
        if let Step::Command { node: to, command, .. } = step(state, observed, op, now_ms)
            && to == node
        {
            out.push(command);
        }
    }
    if let Some(hosted) = observed.nodes.get(&node).map(|n| &n.hosted) {
        for shard in hosted {
            let Some(record) = state.shard(*shard) else { continue };
            let d = &record.descriptor;
            if record.creating || d.replicas.iter().any(|r| r.node == node) {
                continue;
            }
            out.push(NodeCommand::DestroyReplica { shard: *shard, conf_ver: d.epoch.conf_ver });
        }
    }
    out
}

/// Every node an operator may have a command for now: the nodes it moves
/// replicas to or from, leader transfer targets and the shards' leaders.
pub fn nodes_in_operators(state: &PdState, observed: &Observed) -> BTreeSet<NodeId> {
    let mut nodes = BTreeSet::new();
    for op in state.operators.values() {
        nodes.extend(involved(&op.kind));
        if let OperatorKind::TransferLeader { to } = op.kind {
            nodes.insert(to);
        }
        nodes.extend(observed.shards.get(&op.shard).and_then(|o| o.leader));
    }
    nodes
}

/// Whether `node` takes part in an operator now (it should report often).
pub fn busy(state: &PdState, observed: &Observed, node: NodeId) -> bool {
    state.operators.values().any(|op| {
        involved(&op.kind).contains(&node)
            || matches!(op.kind, OperatorKind::TransferLeader { to } if to == node)
            || observed.shards.get(&op.shard).and_then(|o| o.leader) == Some(node)
    })
}

/// An operator as `ListOperators` shows it.
pub fn info(state: &PdState, observed: &Observed, op: &OperatorRecord, now_ms: u64) -> OperatorInfo {
    let step = step(state, observed, op, now_ms);
    let progress = incoming(&op.kind)
        .and_then(|to| observed.shards.get(&op.shard).and_then(|o| o.progress_of(to)).cloned())
        .unwrap_or_default();
    OperatorInfo {
        id: op.id,
        shard: op.shard,
        kind: op.kind.clone(),
        reason: op.reason.clone(),
        step: step.name().to_string(),
        age_ms: now_ms.saturating_sub(op.created_at_ms),
        snapshot_sent_bytes: progress.snapshot_sent_bytes,
        snapshot_total_bytes: progress.snapshot_total_bytes,
        rollback: op.rollback.clone(),
    }
}

/// A new operator record (its id taken from the cluster record in `writes`).
pub fn new_operator(
    state: &PdState,
    writes: &mut Writes,
    shard: ShardId,
    kind: OperatorKind,
    reason: &str,
    settings: &ClusterSettings,
    now_ms: u64,
) -> Option<OperatorRecord> {
    let mut cluster = writes.cluster.clone().or_else(|| state.cluster.clone())?;
    let id = cluster.next_operator_id;
    cluster.next_operator_id += 1;
    writes.cluster = Some(cluster);
    let op = OperatorRecord {
        id,
        shard,
        kind,
        reason: reason.to_string(),
        created_at_ms: now_ms,
        deadline_ms: now_ms.saturating_add(settings.operator_timeout_ms),
        rollback: None,
    };
    writes.operators.push(op.clone());
    Some(op)
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use cairn_proto::{Epoch, KeyRange, PeerProgress, ReplicaDescriptor};

    use super::*;
    use crate::model::{ClusterRecord, NodeRecord};

    const NOW: u64 = 100_000;

    /// Nodes 1-4 alive; shard 1 with `voters` and `learners`, led by `leader`.
    fn setup(voters: &[u64], learners: &[u64], leader: u64, joint: bool) -> (PdState, Observed) {
        let mut state = PdState::default();
        let mut w = Writes {
            cluster: Some(ClusterRecord {
                cluster_id: 1,
                created_at_ms: 0,
                pd_members: vec![],
                next_node_id: 5,
                next_shard_id: 2,
                next_event_seq: 1,
                initial_shards: 1,
                initial_shards_created: true,
                settings: ClusterSettings::default(),
                next_operator_id: 1,
            }),
            ..Default::default()
        };
        for n in 1..=4 {
            w.nodes.push(NodeRecord {
                id: NodeId(n),
                addr: format!("n{n}:1"),
                admin: AdminState::Active,
                capacity_bytes: 0,
                labels: BTreeMap::new(),
                registered_at_ms: 0,
            });
        }
        let replica = |n: &u64, role| ReplicaDescriptor { node: NodeId(*n), addr: format!("n{n}:1"), role };
        let mut replicas: Vec<ReplicaDescriptor> = voters.iter().map(|n| replica(n, ReplicaRole::Voter)).collect();
        replicas.extend(learners.iter().map(|n| replica(n, ReplicaRole::Learner)));
        let descriptor = ShardDescriptor {
            id: ShardId(1),
            range: KeyRange::full(),
            epoch: Epoch { conf_ver: 5, version: 1 },
            replicas,
        };
        w.shards.push(ShardRecord { descriptor, creating: false });
        state.apply(&w, 1);
        let mut observed = Observed::new(0);
        for n in 1..=4 {
            let node = observed.nodes.entry(NodeId(n)).or_default();
            node.last_heartbeat_ms = NOW;
            if voters.contains(&n) || learners.contains(&n) {
                node.hosted.insert(ShardId(1));
            }
        }
        let obs = observed.shards.entry(ShardId(1)).or_default();
        obs.leader = Some(NodeId(leader));
        obs.conf_ver = 5;
        obs.joint = joint;
        obs.last_log_index = 5_000;
        obs.progress = (1..=4)
            .filter(|n| *n != leader)
            .map(|n| PeerProgress { node: NodeId(n), matched_index: 5_000, ..Default::default() })
            .collect();
        (state, observed)
    }

    fn op(kind: OperatorKind) -> OperatorRecord {
        OperatorRecord {
            id: 1,
            shard: ShardId(1),
            kind,
            reason: "test".into(),
            created_at_ms: 0,
            deadline_ms: NOW * 2,
            rollback: None,
        }
    }

    fn command(step: Step) -> (NodeId, NodeCommand) {
        match step {
            Step::Command { node, command, .. } => (node, command),
            other => panic!("expected a command, got {other:?}"),
        }
    }

    #[test]
    fn a_move_goes_learner_replica_catch_up_promote_done() {
        let mv = op(OperatorKind::MoveReplica { from: NodeId(2), to: NodeId(4) });
        let (state, observed) = setup(&[1, 2, 3], &[], 1, false);
        let (to, c) = command(step(&state, &observed, &mv, NOW));
        assert_eq!(to, NodeId(1));
        assert!(matches!(c, NodeCommand::AddLearner { node: NodeId(4), conf_ver: 5, .. }), "{c:?}");

        let (state, mut observed) = setup(&[1, 2, 3], &[4], 1, false);
        observed.nodes.get_mut(&NodeId(4)).unwrap().hosted.clear();
        let (to, c) = command(step(&state, &observed, &mv, NOW));
        assert_eq!((to, matches!(c, NodeCommand::JoinReplica { .. })), (NodeId(4), true));

        let (state, mut observed) = setup(&[1, 2, 3], &[4], 1, false);
        observed.shards.get_mut(&ShardId(1)).unwrap().progress.retain(|p| p.node != NodeId(4));
        assert_eq!(step(&state, &observed, &mv, NOW), Step::Wait("catch-up"));

        let (state, observed) = setup(&[1, 2, 3], &[4], 1, false);
        let (to, c) = command(step(&state, &observed, &mv, NOW));
        let promote =
            NodeCommand::ChangeVoters { shard: ShardId(1), conf_ver: 5, voters: vec![NodeId(1), NodeId(3), NodeId(4)] };
        assert_eq!((to, c), (NodeId(1), promote.clone()));

        // Joint (voters are the union): the same change again completes it.
        let (state, observed) = setup(&[1, 2, 3, 4], &[], 1, true);
        assert_eq!(command(step(&state, &observed, &mv, NOW)), (NodeId(1), promote));

        let (state, observed) = setup(&[1, 3, 4], &[], 1, false);
        assert_eq!(step(&state, &observed, &mv, NOW), Step::Finished(Outcome::Done));
    }

    #[test]
    fn a_leaving_leader_hands_over_first_and_quorum_is_required() {
        let mv = op(OperatorKind::MoveReplica { from: NodeId(1), to: NodeId(4) });
        let (state, observed) = setup(&[1, 2, 3], &[4], 1, false);
        let (to, c) = command(step(&state, &observed, &mv, NOW));
        assert_eq!(to, NodeId(1));
        assert!(matches!(c, NodeCommand::TransferLeader { to: NodeId(2) | NodeId(3), .. }), "{c:?}");

        // Node 3 is down: the new set {2, 3, 4} has a quorum, the old {1, 2, 3} too.
        let mv = op(OperatorKind::MoveReplica { from: NodeId(2), to: NodeId(4) });
        let (state, mut observed) = setup(&[1, 2, 3], &[4], 1, false);
        observed.nodes.get_mut(&NodeId(3)).unwrap().last_heartbeat_ms = 0;
        assert!(matches!(step(&state, &observed, &mv, NOW), Step::Command { name: "promote", .. }));
        // Nodes 2 and 3 down: the old set has no quorum; never enter a joint config then.
        observed.nodes.get_mut(&NodeId(2)).unwrap().last_heartbeat_ms = 0;
        assert_eq!(step(&state, &observed, &mv, NOW), Step::Wait("quorum"));
    }

    #[test]
    fn rollback_removes_the_learner_but_never_undoes_a_promotion() {
        let mut mv = op(OperatorKind::MoveReplica { from: NodeId(2), to: NodeId(4) });
        let (mut state, mut observed) = setup(&[1, 2, 3], &[4], 1, false);
        observed.nodes.get_mut(&NodeId(4)).unwrap().last_heartbeat_ms = 0;
        state.operators.insert(ShardId(1), mv.clone());
        let (w, _) = advance(&state, &observed, NOW);
        assert_eq!(w.operators[0].rollback.as_deref(), Some("target node 4 is down"));
        mv.rollback = Some("target node 4 is down".into());
        let (to, c) = command(step(&state, &observed, &mv, NOW));
        assert_eq!(
            (to, c),
            (NodeId(1), NodeCommand::RemoveLearner { shard: ShardId(1), conf_ver: 5, node: NodeId(4) })
        );
        let (state, observed) = setup(&[1, 2, 3], &[], 1, false);
        assert!(matches!(step(&state, &observed, &mv, NOW), Step::Finished(Outcome::RolledBack(_))));
        // Promoted (joint): the rollback is ignored and the change completes.
        let (state, observed) = setup(&[1, 2, 3, 4], &[], 1, true);
        assert!(matches!(step(&state, &observed, &mv, NOW), Step::Command { name: "leave-joint", .. }));
    }

    #[test]
    fn leadership_never_goes_to_a_node_gone_silent() {
        // Node 2 stopped reporting 3 s ago: not down yet, but not fresh.
        let (state, mut observed) = setup(&[1, 2, 3], &[], 1, false);
        observed.nodes.get_mut(&NodeId(2)).unwrap().last_heartbeat_ms = NOW - 3_000;
        let transfer = op(OperatorKind::TransferLeader { to: NodeId(2) });
        assert_eq!(step(&state, &observed, &transfer, NOW), Step::Wait("target"));
        // A leaving leader hands over to the fresh voter.
        let mv = op(OperatorKind::MoveReplica { from: NodeId(1), to: NodeId(4) });
        let (state, mut observed) = setup(&[1, 2, 3], &[4], 1, false);
        observed.nodes.get_mut(&NodeId(2)).unwrap().last_heartbeat_ms = NOW - 3_000;
        let (_, c) = command(step(&state, &observed, &mv, NOW));
        assert_eq!(c, NodeCommand::TransferLeader { shard: ShardId(1), to: NodeId(3) });
    }

    #[test]
    fn replicas_no_configuration_lists_are_destroyed() {
        let (state, mut observed) = setup(&[1, 2, 3], &[], 1, false);
        observed.nodes.get_mut(&NodeId(4)).unwrap().hosted.insert(ShardId(1));
        assert_eq!(
            commands_for(&state, &observed, NodeId(4), NOW),
            vec![NodeCommand::DestroyReplica { shard: ShardId(1), conf_ver: 5 }]
        );
        assert!(commands_for(&state, &observed, NodeId(2), NOW).is_empty());
    }
}
