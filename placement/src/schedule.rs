//! The scheduler: from the stored and observed state to new operators, as a
//! pure function (RFC 003). Rules in priority order, each skipping shards that
//! already have an operator:
//! 1. repair: replicas on nodes down longer than `max-node-down-time` (or
//!    removed) are re-created elsewhere;
//! 2. replication factor: too few voters get one added, too many one removed,
//!    and learners no operator owns are removed;
//! 3. drain: replicas of draining nodes move off;
//! 4. replica balance: counts within one of each other over the nodes that
//!    may hold replicas, then bytes within `balance-bytes-tolerance-percent`;
//! 5. leader balance: no node leads more than its share (rounded up).
//!
//! Limits: `max-operators` in the cluster, `max-moves-per-node` replica
//! operators per node (source or target). Leader transfers are cheap and only
//! count toward `max-operators`. `max-operators` 0 pauses the scheduler: it
//! starts nothing (operators an administrator creates still run).

use std::collections::{BTreeMap, BTreeSet};

use cairn_proto::{NodeBalance, NodeId, OperatorKind, RebalanceStatus, ReplicaRole, ShardId};

use crate::decide::node_state;
use crate::model::{AdminState, OperatorRecord, PD_SHARD, PdState, Writes};
use crate::observed::Observed;
use crate::operator::{incoming, involved, new_operator, outgoing};

/// The cluster as the scheduler sees it: who may hold replicas, and the load
/// of every node counting operators in flight as done.
struct View<'a> {
    state: &'a PdState,
    /// Active nodes heard from recently: they may receive replicas and leaderships.
    eligible: BTreeSet<NodeId>,
    /// Nodes whose replicas must go: removed, or down longer than allowed.
    gone: BTreeSet<NodeId>,
    draining: BTreeSet<NodeId>,
    /// Replicas (voters and learners) per node, after in-flight operators.
    count: BTreeMap<NodeId, i64>,
    bytes: BTreeMap<NodeId, i64>,
    leaders: BTreeMap<NodeId, i64>,
    /// Replica operators per node in flight (in this view, planned ones too).
    moves: BTreeMap<NodeId, u32>,
    /// Shards with an operator (in flight or planned).
    busy: BTreeSet<ShardId>,
    /// Hosts of each shard after in-flight operators.
    hosts: BTreeMap<ShardId, BTreeSet<NodeId>>,
    size: BTreeMap<ShardId, i64>,
    leader: BTreeMap<ShardId, NodeId>,
    operators: usize,
}

impl<'a> View<'a> {
    fn new(state: &'a PdState, observed: &Observed, now_ms: u64) -> Self {
        let settings = state.settings();
        let mut view = View {
            state,
            eligible: BTreeSet::new(),
            gone: BTreeSet::new(),
            draining: BTreeSet::new(),
            count: BTreeMap::new(),
            bytes: BTreeMap::new(),
            leaders: BTreeMap::new(),
            moves: BTreeMap::new(),
            busy: BTreeSet::new(),
            hosts: BTreeMap::new(),
            size: BTreeMap::new(),
            leader: BTreeMap::new(),
            operators: state.operators.len(),
        };
        for n in state.nodes.values() {
            let silent = observed.silent_for(n.id, now_ms);
            match n.admin {
                AdminState::Removed => {
                    view.gone.insert(n.id);
                }
                _ if silent > settings.max_node_down_time_ms => {
                    view.gone.insert(n.id);
                }
                AdminState::Draining => {
                    view.draining.insert(n.id);
                }
                AdminState::Active if observed.is_fresh(n.id, now_ms) => {
                    view.eligible.insert(n.id);
                }
                AdminState::Active => {}
            }
            view.count.insert(n.id, 0);
            view.bytes.insert(n.id, 0);
            view.leaders.insert(n.id, 0);
        }
        // The PD's own shard is repaired and drained like the others, but its
        // replicas and leadership are not balanced: it only needs to know
        // where the shard is, who leads it and what is in flight.
        if let Some(s) = &state.pd_shard {
            let d = &s.descriptor;
            let mut hosts: BTreeSet<NodeId> = d.replicas.iter().map(|r| r.node).collect();
            if let Some(op) = state.operators.get(&d.id) {
                view.busy.insert(d.id);
                if op.rollback.is_none() {
                    hosts.extend(incoming(&op.kind));
                    if let Some(from) = outgoing(&op.kind) {
                        hosts.remove(&from);
                    }
                }
                for n in involved(&op.kind) {
                    *view.moves.entry(n).or_default() += 1;
                }
            }
            view.hosts.insert(d.id, hosts);
            let obs = observed.shards.get(&d.id);
            if let Some(l) = obs.and_then(|o| o.leader).filter(|l| d.replicas.iter().any(|r| r.node == *l)) {
                view.leader.insert(d.id, l);
            }
        }
        for s in state.shards.values() {
            let d = &s.descriptor;
            let obs = observed.shards.get(&d.id);
            let size = obs.map(|o| o.size_bytes as i64).unwrap_or(0);
            view.size.insert(d.id, size);
            let mut hosts: BTreeSet<NodeId> = d.replicas.iter().map(|r| r.node).collect();
            if let Some(op) = state.operators.get(&d.id) {
                view.busy.insert(d.id);
                if op.rollback.is_none() {
                    hosts.extend(incoming(&op.kind));
                    if let Some(from) = outgoing(&op.kind) {
                        hosts.remove(&from);
                    }
                }
                for n in involved(&op.kind) {
                    *view.moves.entry(n).or_default() += 1;
                }
            }
            for n in &hosts {
                *view.count.entry(*n).or_default() += 1;
                *view.bytes.entry(*n).or_default() += size;
            }
            view.hosts.insert(d.id, hosts);
            if let Some(l) = obs.and_then(|o| o.leader).filter(|l| d.replicas.iter().any(|r| r.node == *l)) {
                view.leader.insert(d.id, l);
                *view.leaders.entry(l).or_default() += 1;
            }
        }
        view
    }

    fn room(&self, node: NodeId, max_moves: u32) -> bool {
        self.moves.get(&node).copied().unwrap_or(0) < max_moves
    }

    /// The best new home for a replica of `shard`: eligible, not hosting it,
    /// with room, fewest replicas, then fewest bytes, then lowest id.
    fn best_target(&self, shard: ShardId, max_moves: u32) -> Option<NodeId> {
        let hosts = self.hosts.get(&shard)?;
        self.eligible
            .iter()
            .filter(|n| !hosts.contains(n) && self.room(**n, max_moves))
            .min_by_key(|n| (self.count[n], self.bytes[n], **n))
            .copied()
    }

    /// Records a planned operator in the view.
    fn plan(&mut self, shard: ShardId, kind: &OperatorKind) {
        self.busy.insert(shard);
        self.operators += 1;
        let size = self.size.get(&shard).copied().unwrap_or(0);
        for n in involved(kind) {
            *self.moves.entry(n).or_default() += 1;
        }
        let hosts = self.hosts.entry(shard).or_default();
        if let Some(to) = incoming(kind) {
            hosts.insert(to);
            *self.count.entry(to).or_default() += 1;
            *self.bytes.entry(to).or_default() += size;
        }
        if let Some(from) = outgoing(kind) {
            hosts.remove(&from);
            *self.count.entry(from).or_default() -= 1;
            *self.bytes.entry(from).or_default() -= size;
        }
        if let OperatorKind::TransferLeader { to } = kind
            && let Some(old) = self.leader.insert(shard, *to)
        {
            *self.leaders.entry(old).or_default() -= 1;
            *self.leaders.entry(*to).or_default() += 1;
        }
    }
}

/// A planned operator: shard, kind, reason.
pub type Plan = (ShardId, OperatorKind, &'static str);

/// Whether every node has had time to report to this PD leader, so that the
/// observed state is complete enough to schedule from.
pub fn settled(state: &PdState, observed: &Observed, now_ms: u64) -> bool {
    observed.settled(now_ms)
        || state.nodes.values().filter(|n| n.admin != AdminState::Removed).all(|n| observed.has_reported(n.id))
}

/// The operators to start now, within the limits.
pub fn schedule(state: &PdState, observed: &Observed, now_ms: u64) -> Vec<Plan> {
    if !settled(state, observed, now_ms) {
        return Vec::new();
    }
    let settings = state.settings();
    plan_all(state, observed, now_ms, settings.max_operators as usize, settings.max_moves_per_node)
}

fn plan_all(state: &PdState, observed: &Observed, now_ms: u64, max_operators: usize, max_moves: u32) -> Vec<Plan> {
    let settings = state.settings();
    let rf = settings.replication_factor as usize;
    let mut view = View::new(state, observed, now_ms);
    let mut plans: Vec<Plan> = Vec::new();
    let full = |view: &View| view.operators >= max_operators;
    let push = |view: &mut View, plans: &mut Vec<Plan>, shard, kind: OperatorKind, reason| {
        view.plan(shard, &kind);
        plans.push((shard, kind, reason));
    };

    // Shards in key order; each rule considers only shards without an operator.
    let shards: Vec<_> = state.shards.values().filter(|s| !s.creating).collect();
    // The PD's own shard first: repair, drain and stray learners only.
    let with_pd: Vec<_> = state.pd_shard.iter().chain(shards.iter().copied()).collect();
    // Repair takes shards still being created too: one whose member died
    // before creating its replica would otherwise wait for it forever (it
    // only needs a leader, i.e. a quorum that did create theirs).
    let all: Vec<_> = state.pd_shard.iter().chain(state.shards.values()).collect();

    // 1. Repair, 3. drain: replicas on gone or draining nodes move off.
    let (gone, draining) = (view.gone.clone(), view.draining.clone());
    for (nodes, reason) in [(&gone, "repair"), (&draining, "drain")] {
        let candidates = if reason == "repair" { &all } else { &with_pd };
        for s in candidates {
            let d = &s.descriptor;
            if full(&view) || view.busy.contains(&d.id) || !view.leader.contains_key(&d.id) {
                continue;
            }
            let Some(from) = d.replicas.iter().map(|r| r.node).find(|n| nodes.contains(n)) else { continue };
            if reason == "drain" && !view.room(from, max_moves) {
                continue;
            }
            let is_learner = d.replicas.iter().any(|r| r.node == from && r.role == ReplicaRole::Learner);
            let kind = if is_learner {
                OperatorKind::RemoveReplica { from }
            } else if let Some(to) = view.best_target(d.id, max_moves) {
                OperatorKind::MoveReplica { from, to }
            } else {
                continue;
            };
            push(&mut view, &mut plans, d.id, kind, reason);
        }
        // Repair before drain; a full repair pass may use all the room.
        if reason == "repair" && full(&view) {
            return plans;
        }
    }

    // 2. Replication factor (data shards; the PD keeps its member count) and
    // stray learners.
    for s in &with_pd {
        let d = &s.descriptor;
        if full(&view) || view.busy.contains(&d.id) || !view.leader.contains_key(&d.id) {
            continue;
        }
        let voters: Vec<NodeId> = d.replicas.iter().filter(|r| r.role == ReplicaRole::Voter).map(|r| r.node).collect();
        let learner = d.replicas.iter().find(|r| r.role == ReplicaRole::Learner).map(|r| r.node);
        let kind = if let Some(from) = learner {
            Some(OperatorKind::RemoveReplica { from })
        } else if d.id == PD_SHARD {
            None
        } else if voters.len() < rf {
            view.best_target(d.id, max_moves).map(|to| OperatorKind::AddReplica { to })
        } else if voters.len() > rf {
            // The most loaded voter, preferring one that does not lead.
            let leader = view.leader.get(&d.id).copied();
            voters
                .iter()
                .filter(|n| view.room(**n, max_moves))
                .max_by_key(|n| (Some(**n) != leader, view.count[n], view.bytes[n], **n))
                .map(|from| OperatorKind::RemoveReplica { from: *from })
        } else {
            None
        };
        if let Some(kind) = kind {
            push(&mut view, &mut plans, d.id, kind, "replication-factor");
        }
    }

    // 4. Replica balance by count, then by bytes.
    while !full(&view) {
        let Some(kind_shard) = balance_move(&view, max_moves, settings.balance_bytes_tolerance_percent) else { break };
        let (shard, kind) = kind_shard;
        push(&mut view, &mut plans, shard, kind, "balance-replicas");
    }

    // 5. Leader balance.
    let led: i64 = view.leaders.values().sum();
    let nodes = view.eligible.len() as i64;
    if nodes > 0 {
        let share = (led + nodes - 1) / nodes;
        for s in &shards {
            let d = &s.descriptor;
            if full(&view) || view.busy.contains(&d.id) {
                continue;
            }
            let Some(leader) = view.leader.get(&d.id).copied() else { continue };
            if view.leaders[&leader] <= share {
                continue;
            }
            let best = d
                .replicas
                .iter()
                .filter(|r| r.role == ReplicaRole::Voter && r.node != leader && view.eligible.contains(&r.node))
                .map(|r| r.node)
                .min_by_key(|n| (view.leaders[n], *n));
            if let Some(to) = best
                && view.leaders[&to] + 1 < view.leaders[&leader]
            {
                push(&mut view, &mut plans, d.id, OperatorKind::TransferLeader { to }, "balance-leaders");
            }
        }
    }
    plans
}

/// One replica move that narrows the spread, if the cluster is unbalanced.
fn balance_move(view: &View, max_moves: u32, tolerance_percent: u32) -> Option<(ShardId, OperatorKind)> {
    if view.eligible.len() < 2 {
        return None;
    }
    let by_count = |n: &NodeId| (view.count[n], view.bytes[n], *n);
    // Counts first: from the fullest node with room to the emptiest.
    let mut sources: Vec<NodeId> = view.eligible.iter().copied().filter(|n| view.room(*n, max_moves)).collect();
    sources.sort_by_key(|n| std::cmp::Reverse(by_count(n)));
    let mut targets: Vec<NodeId> = view.eligible.iter().copied().filter(|n| view.room(*n, max_moves)).collect();
    targets.sort_by_key(by_count);
    for from in &sources {
        for to in &targets {
            if view.count[from] - view.count[to] <= 1 {
                break;
            }
            if let Some(shard) = movable(view, *from, *to, i64::MAX) {
                return Some((shard, OperatorKind::MoveReplica { from: *from, to: *to }));
            }
        }
    }
    // Then bytes, only between nodes where the move keeps counts within one.
    let total: i64 = view.eligible.iter().map(|n| view.bytes[n]).sum();
    let mean = total / view.eligible.len() as i64;
    let slack = mean * tolerance_percent as i64 / 100;
    let mut heavy: Vec<NodeId> = sources.clone();
    heavy.sort_by_key(|n| std::cmp::Reverse(view.bytes[n]));
    let mut light: Vec<NodeId> = targets.clone();
    light.sort_by_key(|n| view.bytes[n]);
    for from in &heavy {
        if view.bytes[from] - mean <= slack {
            break;
        }
        for to in &light {
            let gap = view.bytes[from] - view.bytes[to];
            if gap <= slack || view.count[from] < view.count[to] + 1 {
                continue;
            }
            // Strictly less than the gap, so every move lowers the variance.
            if let Some(shard) = movable(view, *from, *to, gap) {
                return Some((shard, OperatorKind::MoveReplica { from: *from, to: *to }));
            }
        }
    }
    None
}

/// A shard hosted by `from`, not by `to`, without an operator, smaller than
/// `below` bytes: a follower rather than a leader (no transfer needed), then
/// the smallest (the quickest to move).
fn movable(view: &View, from: NodeId, to: NodeId, below: i64) -> Option<ShardId> {
    view.hosts
        .iter()
        .filter(|(shard, hosts)| {
            hosts.contains(&from)
                && !hosts.contains(&to)
                && !view.busy.contains(shard)
                && view.leader.contains_key(shard)
                && view.size.get(shard).copied().unwrap_or(0) < below
                && view.state.shards.get(shard).is_some_and(|s| {
                    !s.creating && s.descriptor.replicas.iter().any(|r| r.node == from && r.role == ReplicaRole::Voter)
                })
        })
        .min_by_key(|(shard, _)| (view.leader.get(shard) == Some(&from), view.size[shard], **shard))
        .map(|(shard, _)| *shard)
}

/// Turns plans into operator records and their writes.
pub fn create(state: &PdState, plans: &[Plan], now_ms: u64) -> (Writes, Vec<OperatorRecord>) {
    let settings = state.settings();
    let mut writes = Writes::default();
    let mut ops = Vec::new();
    for (shard, kind, reason) in plans {
        if let Some(op) = new_operator(state, &mut writes, *shard, kind.clone(), reason, &settings, now_ms) {
            ops.push(op);
        }
    }
    if !ops.is_empty() {
        let list: Vec<String> = ops.iter().map(|o| format!("{} shard {} ({})", o.kind, o.shard, o.reason)).collect();
        writes.event(state, now_ms, format!("scheduled {}", list.join("; ")));
    }
    (writes, ops)
}

/// How far the cluster is from balanced (`cairn rebalance status`).
pub fn rebalance_status(state: &PdState, observed: &Observed, now_ms: u64) -> RebalanceStatus {
    let view = View::new(state, observed, now_ms);
    let settings = state.settings();
    let rf = settings.replication_factor as usize;
    // Actual placement (not counting operators in flight) for the display.
    let counts = state.replica_counts();
    let mut nodes = Vec::new();
    for n in state.nodes.values() {
        let replicas = counts.get(&n.id).copied().unwrap_or(0);
        if !view.eligible.contains(&n.id) && replicas == 0 {
            continue;
        }
        let size_bytes = state
            .shards
            .values()
            .filter(|s| s.descriptor.replicas.iter().any(|r| r.node == n.id))
            .map(|s| observed.shards.get(&s.descriptor.id).map(|o| o.size_bytes).unwrap_or(0))
            .sum();
        nodes.push(NodeBalance {
            node: n.id,
            state: node_state(n, observed, now_ms),
            replicas,
            leaders: view.leaders.get(&n.id).copied().unwrap_or(0).max(0) as u64,
            size_bytes,
        });
    }
    let eligible: Vec<&NodeBalance> = nodes.iter().filter(|n| view.eligible.contains(&n.node)).collect();
    let spread = |f: fn(&NodeBalance) -> u64| {
        let max = eligible.iter().map(|n| f(n)).max().unwrap_or(0);
        let min = eligible.iter().map(|n| f(n)).min().unwrap_or(0);
        max - min
    };
    let mean_replicas = if eligible.is_empty() {
        0.0
    } else {
        eligible.iter().map(|n| n.replicas as f64).sum::<f64>() / eligible.len() as f64
    };
    let under_replicated = state
        .shards
        .values()
        .filter(|s| {
            let live = s
                .descriptor
                .replicas
                .iter()
                .filter(|r| r.role == ReplicaRole::Voter && observed.is_alive(r.node, now_ms))
                .count();
            live < rf
        })
        .count() as u64;
    let misplaced = state
        .shards
        .values()
        .chain(state.pd_shard.iter())
        .flat_map(|s| s.descriptor.replicas.iter())
        .filter(|r| view.gone.contains(&r.node) || view.draining.contains(&r.node))
        .count() as u64;
    // Balanced: nothing in flight and nothing the scheduler would start even
    // without limits.
    let pending = plan_all(state, observed, now_ms, usize::MAX, u32::MAX);
    RebalanceStatus {
        replica_spread: spread(|n| n.replicas),
        leader_spread: spread(|n| n.leaders),
        nodes,
        mean_replicas,
        under_replicated,
        misplaced,
        operators: state.operators.len() as u64,
        // Not before the PD has heard from every node, knows every leader and
        // every shard is past creation: until then the scheduler has not had
        // its say (it skips shards being created).
        balanced: settled(state, observed, now_ms)
            && view.leader.len() == state.shards.len() + usize::from(state.pd_shard.is_some())
            && state.shards.values().all(|s| !s.creating)
            && state.operators.is_empty()
            && pending.is_empty()
            && under_replicated == 0
            && misplaced == 0,
    }
}
