//! Nemeses for a cluster of real processes, on a schedule drawn from a seed.
//! The schedule is a pure function of (seed, nemeses, time limit): the same
//! seed gives the same faults at the same offsets (the cluster's own timing
//! still varies from run to run).
//!
//! Faults run in two lanes at once, so they combine: process and network
//! faults (kill, pause, PD leader kill, partition) in one, data movement
//! (moves, drains, replication changes) in the other. Within a lane faults
//! come one at a time, each healed before the next starts, so at most one node
//! is down or cut off at any moment while shards move, and every fault is
//! healed before the final reads.

use std::collections::BTreeMap;
use std::time::Duration;

use anyhow::Context;
use cairn_client::PdClient;
use cairn_proto::pb::LinkFault;
use cairn_proto::{AdminRequest, NodeId, OperatorKind, ShardId};
use rand::{Rng, SeedableRng};
use serde::{Deserialize, Serialize};

use crate::netns::Network;
use crate::procs::ProcessCluster;

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Nemesis {
    /// SIGKILL a node, restart it after the hold.
    Kill,
    /// SIGSTOP a node, SIGCONT it after the hold.
    Pause,
    /// SIGKILL whichever node leads the placement driver, restart it.
    PdLeader,
    /// Data movement: a leader transfer or a replica move through the PD.
    Move,
    /// A network partition (root only: namespaces and iptables): one node
    /// isolated, a majority and a minority, a ring of overlapping majorities,
    /// the nodes leading the most shards cut from the rest, or the PD leader
    /// isolated.
    Partition,
    /// Drain a node (every replica and leader moves off it), then make it
    /// active again after the hold.
    Drain,
    /// Replication factor 3 -> 5 for the hold, then back to 3 (replicas are
    /// added, then removed).
    Replication,
    /// Slow, lossy or one-way links, or snapshots cut, through the nodes'
    /// transport fault rules (`Admin.SetLinkFaults`; the chaos cluster runs
    /// with `fault-injection = true`).
    Link,
}

/// Faults of the same lane never overlap; the two lanes run side by side.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Lane {
    /// Kill, pause, PD leader kill, partition.
    Faults,
    /// Moves, drains, replication changes: administration through the PD.
    Movement,
}

impl Nemesis {
    pub fn lane(self) -> Lane {
        match self {
            Nemesis::Move | Nemesis::Drain | Nemesis::Replication => Lane::Movement,
            Nemesis::Kill | Nemesis::Pause | Nemesis::PdLeader | Nemesis::Partition | Nemesis::Link => Lane::Faults,
        }
    }

    pub const ALL: [Nemesis; 8] = [
        Nemesis::Kill,
        Nemesis::Pause,
        Nemesis::PdLeader,
        Nemesis::Move,
        Nemesis::Partition,
        Nemesis::Drain,
        Nemesis::Replication,
        Nemesis::Link,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Nemesis::Kill => "kill",
            Nemesis::Pause => "pause",
            Nemesis::PdLeader => "pd-leader",
            Nemesis::Move => "move",
            Nemesis::Partition => "partition",
            Nemesis::Drain => "drain",
            Nemesis::Replication => "replication",
            Nemesis::Link => "link",
        }
    }
}

impl std::str::FromStr for Nemesis {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        Nemesis::ALL.into_iter().find(|n| n.name() == s).ok_or_else(|| {
            let known: Vec<_> = Nemesis::ALL.iter().map(|n| n.name()).collect();
            format!("unknown nemesis {s:?} (known: {})", known.join(", "))
        })
    }
}

/// One scheduled fault.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Fault {
    /// Offset from the start of the run.
    pub at_ms: u64,
    pub nemesis: Nemesis,
    /// How long the fault lasts before it is healed.
    pub hold_ms: u64,
    /// Random choices the fault makes when it starts (target node, shard, ...).
    pub pick: u64,
}

/// Attempts to undo an administrative fault (0.5 s apart) before the run fails.
const HEAL_ATTEMPTS: usize = 60;
/// Attempts to set a node's link faults (0.25 s apart) before it is skipped.
const SET_ATTEMPTS: usize = 8;

/// Quiet time between two faults, and how long one lasts.
const GAP_MS: std::ops::Range<u64> = 300..1500;
const HOLD_MS: std::ops::Range<u64> = 500..4000;

/// The faults of a run of `time_limit` (none starts in its last 2 s), in
/// order of start: each lane's own sequence, drawn from the seed and the lane.
pub fn schedule(seed: u64, nemeses: &[Nemesis], time_limit: Duration) -> Vec<Fault> {
    let mut out = Vec::new();
    for (k, lane) in [Lane::Faults, Lane::Movement].into_iter().enumerate() {
        let mine: Vec<Nemesis> = nemeses.iter().copied().filter(|n| n.lane() == lane).collect();
        out.extend(lane_schedule(seed.wrapping_add(k as u64 * 0x9e37_79b9_7f4a_7c15), &mine, time_limit));
    }
    out.sort_by_key(|f| f.at_ms);
    out
}

/// One lane's faults, one after another.
fn lane_schedule(seed: u64, nemeses: &[Nemesis], time_limit: Duration) -> Vec<Fault> {
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let end = (time_limit.as_millis() as u64).saturating_sub(2_000);
    let mut out = Vec::new();
    let mut at = rng.random_range(GAP_MS);
    while at < end && !nemeses.is_empty() {
        let nemesis = nemeses[rng.random_range(0..nemeses.len())];
        let hold_ms = match nemesis {
            Nemesis::Move => 0,
            _ => rng.random_range(HOLD_MS).min(end - at),
        };
        out.push(Fault { at_ms: at, nemesis, hold_ms, pick: rng.random() });
        at += hold_ms + rng.random_range(GAP_MS);
    }
    out
}

/// Carries out a fault of the [`Lane::Faults`] lane on `cluster`, healing it
/// after its hold; returns what was done, for the report.
pub async fn perform_fault(
    cluster: &mut ProcessCluster,
    net: Option<&Network>,
    pd: &PdClient,
    fault: &Fault,
) -> anyhow::Result<String> {
    let n = cluster.nodes.len();
    let hold = Duration::from_millis(fault.hold_ms);
    match fault.nemesis {
        Nemesis::Kill => {
            let i = (fault.pick % n as u64) as usize;
            cluster.kill(i)?;
            tokio::time::sleep(hold).await;
            cluster.spawn(i)?;
            Ok(format!("killed node {} for {} ms", cluster.nodes[i].id, fault.hold_ms))
        }
        Nemesis::Pause => {
            let i = (fault.pick % n as u64) as usize;
            cluster.pause(i)?;
            tokio::time::sleep(hold).await;
            cluster.resume(i)?;
            Ok(format!("paused node {} for {} ms", cluster.nodes[i].id, fault.hold_ms))
        }
        Nemesis::PdLeader => {
            let Some(id) = pd.cluster(0).await.ok().and_then(|s| s.pd_leader.map(|(id, _)| id)) else {
                return Ok("PD leader unknown: nothing done".into());
            };
            let i = cluster.nodes.iter().position(|node| node.id == id).context("the PD leader is a cluster node")?;
            cluster.kill(i)?;
            tokio::time::sleep(hold).await;
            cluster.spawn(i)?;
            Ok(format!("killed the PD leader (node {id}) for {} ms", fault.hold_ms))
        }
        Nemesis::Partition => {
            let Some(net) = net else {
                return Ok("skipped: partitions need the namespace network (root)".into());
            };
            let (shape, what) = partition_shape(n, fault.pick, &leaders(cluster, pd).await);
            match shape {
                Shape::Groups(groups) => net.partition(&groups)?,
                Shape::Links(links) => net.keep_links(&links)?,
            }
            tokio::time::sleep(hold).await;
            net.heal()?;
            Ok(format!("{what} for {} ms", fault.hold_ms))
        }
        Nemesis::Link => {
            let ids: Vec<NodeId> = cluster.nodes.iter().map(|node| node.id).collect();
            let (rules, mut what) = link_faults(&ids, fault.pick);
            for (i, links) in rules.into_iter().enumerate() {
                if links.is_empty() {
                    continue;
                }
                // A node the previous fault restarted may not listen yet.
                let client = cluster.node_client(i)?;
                let mut set = false;
                for _ in 0..SET_ATTEMPTS {
                    if client.set_link_faults(links.clone(), fault.pick ^ i as u64).await.is_ok() {
                        set = true;
                        break;
                    }
                    tokio::time::sleep(Duration::from_millis(250)).await;
                }
                if !set {
                    what.push_str(&format!(" (node {} unreachable: its links left as they were)", ids[i]));
                }
            }
            tokio::time::sleep(hold).await;
            for (i, id) in ids.iter().enumerate() {
                let client = cluster.node_client(i)?;
                let mut healed = false;
                for _ in 0..HEAL_ATTEMPTS {
                    if client.set_link_faults(Vec::new(), 0).await.is_ok() {
                        healed = true;
                        break;
                    }
                    tokio::time::sleep(Duration::from_millis(500)).await;
                }
                anyhow::ensure!(healed, "the link faults of node {id} could not be cleared");
            }
            Ok(format!("{what} for {} ms", fault.hold_ms))
        }
        Nemesis::Move | Nemesis::Drain | Nemesis::Replication => {
            anyhow::bail!("{} is a data movement, not a process or network fault", fault.nemesis.name())
        }
    }
}

/// Carries out a fault of the [`Lane::Movement`] lane through the PD among
/// the cluster's `nodes`, undoing it after its hold; returns what was done.
pub async fn perform_movement(nodes: &[NodeId], pd: &PdClient, fault: &Fault) -> anyhow::Result<String> {
    let n = nodes.len();
    let hold = Duration::from_millis(fault.hold_ms);
    match fault.nemesis {
        Nemesis::Kill | Nemesis::Pause | Nemesis::PdLeader | Nemesis::Partition | Nemesis::Link => {
            anyhow::bail!("{} is a process or network fault, not a data movement", fault.nemesis.name())
        }
        Nemesis::Drain => {
            let id = nodes[(fault.pick % n as u64) as usize];
            if let Err(e) = pd.set_node_state(id, AdminRequest::Draining).await {
                return Ok(format!("drain of node {id} refused: {e}"));
            }
            tokio::time::sleep(hold).await;
            // The PD must take the node back whatever happened meanwhile.
            let mut last = String::new();
            for _ in 0..HEAL_ATTEMPTS {
                match pd.set_node_state(id, AdminRequest::Active).await {
                    Ok(_) => return Ok(format!("drained node {id} for {} ms, then active again", fault.hold_ms)),
                    Err(e) => last = e.to_string(),
                }
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
            anyhow::bail!("node {id} could not be made active again: {last}")
        }
        Nemesis::Replication => {
            if let Err(e) = pd.set_setting("replication-factor", "5").await {
                return Ok(format!("replication factor 5 refused: {e}"));
            }
            tokio::time::sleep(hold).await;
            let mut last = String::new();
            for _ in 0..HEAL_ATTEMPTS {
                match pd.set_setting("replication-factor", "3").await {
                    Ok(_) => return Ok(format!("replication factor 5 for {} ms, then 3", fault.hold_ms)),
                    Err(e) => last = e.to_string(),
                }
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
            anyhow::bail!("replication factor could not be set back to 3: {last}")
        }
        Nemesis::Move => {
            let status = match pd.cluster(0).await {
                Ok(s) => s,
                Err(e) => return Ok(format!("no move (PD: {e})")),
            };
            let shards: Vec<_> = status.shards.iter().filter(|s| s.route.descriptor.id != ShardId(0)).collect();
            if shards.is_empty() {
                return Ok("no data shard to move".into());
            }
            let d = &shards[(fault.pick % shards.len() as u64) as usize].route.descriptor;
            let on: Vec<NodeId> = d.replicas.iter().map(|r| r.node).collect();
            let others: Vec<NodeId> = status.nodes.iter().map(|node| node.id).filter(|id| !on.contains(id)).collect();
            let pick = fault.pick >> 8;
            let kind = if pick.is_multiple_of(2) || others.is_empty() {
                OperatorKind::TransferLeader { to: on[(pick as usize / 2) % on.len()] }
            } else {
                let from = on[(pick as usize / 2) % on.len()];
                OperatorKind::MoveReplica { from, to: others[(pick as usize / 7) % others.len()] }
            };
            Ok(match pd.create_operator(d.id, kind.clone()).await {
                Ok(op) => format!("operator {} on shard {}: {kind}", op.id, d.id),
                Err(e) => format!("{kind} on shard {} refused: {e}", d.id),
            })
        }
    }
}

/// Who leads what, as node indexes: what the leader-isolating partitions cut.
#[derive(Debug, Default)]
pub struct Leaders {
    pub pd: Option<usize>,
    /// Every node leading a data shard, with how many it leads.
    pub shards: BTreeMap<usize, usize>,
}

/// The leaders the PD knows of (none if it does not answer).
async fn leaders(cluster: &ProcessCluster, pd: &PdClient) -> Leaders {
    let Ok(status) = pd.cluster(0).await else { return Leaders::default() };
    let index = |id: NodeId| cluster.nodes.iter().position(|node| node.id == id);
    let mut shards = BTreeMap::new();
    for shard in status.shards.iter().filter(|s| s.route.descriptor.id != ShardId(0)) {
        if let Some(i) = shard.route.leader.as_ref().and_then(|(id, _)| index(*id)) {
            *shards.entry(i).or_insert(0) += 1;
        }
    }
    Leaders { pd: status.pd_leader.and_then(|(id, _)| index(id)), shards }
}

/// How a partition cuts the network.
#[derive(Debug, PartialEq, Eq)]
pub enum Shape {
    /// Only nodes of the same group talk.
    Groups(Vec<Vec<usize>>),
    /// `links[a]`: the nodes `a` still talks to.
    Links(Vec<Vec<usize>>),
}

/// The partition `pick` selects among `n` nodes, and its description.
pub fn partition_shape(n: usize, pick: u64, leaders: &Leaders) -> (Shape, String) {
    let one = (pick >> 8) as usize % n;
    match pick % 5 {
        0 => {
            let rest: Vec<usize> = (0..n).filter(|i| *i != one).collect();
            (Shape::Groups(vec![vec![one], rest]), format!("isolated node index {one}"))
        }
        1 => {
            // A minority of n/2 nodes starting at `one`, the rest the majority.
            let minority: Vec<usize> = (0..n / 2).map(|k| (one + k) % n).collect();
            let majority: Vec<usize> = (0..n).filter(|i| !minority.contains(i)).collect();
            let what = format!("majority {majority:?} / minority {minority:?}");
            (Shape::Groups(vec![majority, minority]), what)
        }
        2 => {
            // Each node talks to its neighbours on a ring: every node sees a
            // majority (with n = 5) but no two majorities are the same.
            let links: Vec<Vec<usize>> = (0..n).map(|i| vec![(i + n - 1) % n, (i + 1) % n]).collect();
            (Shape::Links(links), "ring of overlapping majorities".into())
        }
        3 if !leaders.shards.is_empty() => {
            // The nodes leading the most data shards (a minority of them) cut
            // from the rest: the majority elects new leaders while the old
            // ones may still believe they lead.
            let mut by_count: Vec<(usize, usize)> = leaders.shards.iter().map(|(i, c)| (*i, *c)).collect();
            by_count.sort_by_key(|(i, c)| (std::cmp::Reverse(*c), *i));
            let mut cut: Vec<usize> = by_count.into_iter().take((n / 2).max(1)).map(|(i, _)| i).collect();
            cut.sort();
            let rest: Vec<usize> = (0..n).filter(|i| !cut.contains(i)).collect();
            let what = format!("shard leaders {cut:?} cut from the rest");
            (Shape::Groups(vec![cut, rest]), what)
        }
        _ => {
            let leader = leaders.pd.unwrap_or(one);
            let rest: Vec<usize> = (0..n).filter(|i| *i != leader).collect();
            (Shape::Groups(vec![vec![leader], rest]), format!("isolated the PD leader (index {leader})"))
        }
    }
}

/// The link faults `pick` selects among the nodes `ids`: per node index, the
/// faults on its links to peers; and their description.
pub fn link_faults(ids: &[NodeId], pick: u64) -> (Vec<Vec<LinkFault>>, String) {
    let n = ids.len();
    let one = ((pick >> 8) & 0xff) as usize % n;
    let other = (one + 1 + ((pick >> 16) & 0xff) as usize % (n - 1)) % n;
    let mut rules: Vec<Vec<LinkFault>> = vec![Vec::new(); n];
    let link = |to: usize| LinkFault { to_node: ids[to].0, ..LinkFault::default() };
    // Both directions between `one` and every other node.
    let around = |rules: &mut Vec<Vec<LinkFault>>, fault: &dyn Fn(LinkFault) -> LinkFault| {
        for peer in (0..n).filter(|p| *p != one) {
            rules[one].push(fault(link(peer)));
            rules[peer].push(fault(link(one)));
        }
    };
    let what = match (pick & 0xff) % 5 {
        0 => {
            around(&mut rules, &|l| LinkFault { delay_min_ms: 50, delay_max_ms: 400, ..l });
            format!("slow links (50-400 ms) to and from node {}", ids[one])
        }
        1 => {
            around(&mut rules, &|l| LinkFault { drop_per_mille: 300, ..l });
            format!("lossy links (30% dropped) to and from node {}", ids[one])
        }
        2 => {
            rules[one].push(LinkFault { cut: true, ..link(other) });
            format!("one-way cut: node {} cannot reach node {}", ids[one], ids[other])
        }
        3 => {
            for (a, rules) in rules.iter_mut().enumerate() {
                for b in (0..n).filter(|b| *b != a) {
                    rules.push(LinkFault { drop_per_mille: 100, delay_min_ms: 5, delay_max_ms: 60, ..link(b) });
                }
            }
            "every link lossy (10%) and slow (5-60 ms)".into()
        }
        _ => {
            for rules in rules.iter_mut().enumerate().filter(|(p, _)| *p != one).map(|(_, r)| r) {
                rules.push(LinkFault { snapshots_cut: true, delay_min_ms: 10, delay_max_ms: 100, ..link(one) });
            }
            format!("snapshots to node {} cut, its links slow (10-100 ms)", ids[one])
        }
    };
    (rules, what)
}

/// Counts of faults by nemesis, for the report.
pub fn counts(faults: &[Fault]) -> BTreeMap<&'static str, usize> {
    let mut out = BTreeMap::new();
    for f in faults {
        *out.entry(f.nemesis.name()).or_default() += 1;
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_same_seed_gives_the_same_schedule() {
        let all = Nemesis::ALL;
        let a = schedule(7, &all, Duration::from_secs(60));
        assert_eq!(a, schedule(7, &all, Duration::from_secs(60)));
        assert_ne!(a, schedule(8, &all, Duration::from_secs(60)));
        assert!(a.len() >= 10, "{} faults in a minute", a.len());
        assert!(a.windows(2).all(|w| w[0].at_ms <= w[1].at_ms), "in order of start");
        // Within a lane faults do not overlap; the lanes do.
        for lane in [Lane::Faults, Lane::Movement] {
            let mine: Vec<&Fault> = a.iter().filter(|f| f.nemesis.lane() == lane).collect();
            assert!(mine.len() >= 5, "{} faults of {lane:?}", mine.len());
            for w in mine.windows(2) {
                assert!(w[0].at_ms + w[0].hold_ms < w[1].at_ms);
            }
        }
        let overlapping = a.windows(2).filter(|w| w[0].at_ms + w[0].hold_ms > w[1].at_ms).count();
        assert!(overlapping > 0, "faults of the two lanes combine");
        // Every fault ends before the last 2 s.
        assert!(a.iter().all(|f| f.at_ms + f.hold_ms <= 58_000));
        // One lane alone is as before: one fault at a time.
        let kills = schedule(7, &[Nemesis::Kill, Nemesis::Pause], Duration::from_secs(60));
        assert!(kills.windows(2).all(|w| w[0].at_ms + w[0].hold_ms < w[1].at_ms));
        assert!(schedule(1, &[], Duration::from_secs(60)).is_empty());
    }

    #[test]
    fn partition_shapes_cut_as_described() {
        let none = Leaders::default();
        let (shape, _) = partition_shape(5, (2 << 8) + 3, &none);
        assert_eq!(shape, Shape::Groups(vec![vec![2], vec![0, 1, 3, 4]]));
        let (shape, _) = partition_shape(5, (4 << 8) + 2, &none);
        assert_eq!(shape, Shape::Groups(vec![vec![1, 2, 3], vec![4, 0]]));
        let (Shape::Links(links), _) = partition_shape(5, 2, &none) else { panic!("a ring") };
        assert_eq!(links[0], vec![4, 1]);
        let pd_on_1 = Leaders { pd: Some(1), ..Leaders::default() };
        let (shape, _) = partition_shape(5, 4, &pd_on_1);
        assert_eq!(shape, Shape::Groups(vec![vec![1], vec![0, 2, 3, 4]]));
        // Shard leaders: the two nodes leading the most shards, cut together.
        let shards = Leaders { pd: Some(1), shards: BTreeMap::from([(0, 1), (2, 3), (4, 2)]) };
        let (shape, what) = partition_shape(5, 3, &shards);
        assert_eq!(shape, Shape::Groups(vec![vec![2, 4], vec![0, 1, 3]]), "{what}");
        // Nobody known to lead a shard: the PD leader's case.
        let (shape, _) = partition_shape(5, 3, &pd_on_1);
        assert_eq!(shape, Shape::Groups(vec![vec![1], vec![0, 2, 3, 4]]));
    }

    #[test]
    fn link_faults_cut_as_described() {
        let ids: Vec<NodeId> = (1..=5).map(NodeId).collect();
        let (rules, what) = link_faults(&ids, 2 | (1 << 8) | (2 << 16));
        assert_eq!(what, "one-way cut: node 2 cannot reach node 5");
        assert_eq!(rules[1], vec![LinkFault { to_node: 5, cut: true, ..LinkFault::default() }]);
        assert!(rules.iter().enumerate().all(|(i, r)| i == 1 || r.is_empty()), "one way only");
        let (rules, _) = link_faults(&ids, 1 | (3 << 8));
        assert_eq!(rules[3].len(), 4, "node 4 to every peer");
        assert!(rules.iter().enumerate().all(|(i, r)| i == 3 || r.len() == 1 && r[0].to_node == 4));
        for pick in 0..64u64 {
            let (rules, _) = link_faults(&ids, pick.wrapping_mul(0x9e37_79b9_7f4a_7c15));
            for (i, r) in rules.iter().enumerate() {
                assert!(r.iter().all(|l| l.to_node != ids[i].0), "no rule to self");
            }
        }
    }

    #[test]
    fn nemeses_parse_by_name() {
        assert_eq!("pd-leader".parse::<Nemesis>(), Ok(Nemesis::PdLeader));
        assert!("netem".parse::<Nemesis>().unwrap_err().contains("known: kill"));
    }
}
