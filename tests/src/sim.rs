//! The simulated-network tier (RFC 006, tier 3): real nodes (gRPC, openraft,
//! redb) and a real routed client, all in one thread, talking over turmoil's
//! simulated network instead of TCP. One seed fixes the network's decisions
//! (latencies, flapping links), the order hosts run in and the fault
//! schedule, which runs in simulated time.
//!
//! What is not simulated: the disk (each node's redb file is real, on tmpfs
//! when there is one, written by its real writer thread) and the wall clock
//! some PD bookkeeping reads. A run is reproducible in its schedule and its
//! network, not in its disk timing.
//!
//! Nemeses are turmoil's own (partitions, one-way cuts, held links, flapping
//! links, slow links) plus crashes that lose unsynced writes and data
//! movement through the PD, one fault at a time, each healed before the next.
//! The register workload records a history that must be linearizable.

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::fmt;
use std::rc::Rc;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use anyhow::Context;
use cairn_client::{Client, ClientConfig, PdClient};
use cairn_node::node::DB_FILE;
use cairn_node::{Node, NodeConfig};
use cairn_proto::net::{Connection, DialFuture, Dialer, Net};
use cairn_proto::{NodeId, OperatorKind, ShardId};
use rand::{Rng, SeedableRng};
use tokio::sync::{Notify, mpsc};

use crate::chaos::Recorder;
use crate::chaos::linear::{RegIn, RegOp, RegOut};
use crate::chaos::register::{self, RegisterWorkload};
use crate::cluster::test_raft_settings;

/// The port every simulated node serves on.
const PORT: u16 = 7700;
/// The simulated time the cluster may take to come up and the workload to
/// reach it.
const SETUP_MAX: Duration = Duration::from_secs(120);
/// Quiet time after the last fault heals, before the workload stops.
const SETTLE: Duration = Duration::from_secs(5);
/// The simulated time the workload may take to stop and read back.
const WIND_DOWN_MAX: Duration = Duration::from_secs(120);
/// The simulated wall clock at the start of every run (2026-01-01).
const EPOCH_MS: u64 = 1_767_225_600_000;
/// Data-movement commands queued for the workload host at most.
const ADMIN_QUEUE: usize = 16;

/// Dials turmoil's simulated TCP.
struct SimDialer;

impl Dialer for SimDialer {
    fn dial(&self, host: &str, port: u16) -> DialFuture {
        let host = host.to_string();
        Box::pin(async move {
            let stream = turmoil::net::TcpStream::connect((host.as_str(), port)).await?;
            Ok(Box::new(stream) as Connection)
        })
    }
}

/// A fault of the simulated tier.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, clap::ValueEnum)]
pub enum SimNemesis {
    /// One node cut off from every other host (the workload's client included).
    Isolate,
    /// Two nodes (one of three) cut off from the others: a minority and a
    /// majority, both still reachable by the client.
    Majority,
    /// Two nodes cut one way only.
    OneWay,
    /// Every message between two nodes held back until the fault heals, then
    /// delivered at once (a long delay, not a loss).
    Hold,
    /// Every link flaps: down at random for a few ticks at a time.
    Flaky,
    /// Every link slow: 20-200 ms per message.
    Slow,
    /// A node crashes, losing the writes its disk had not synced, and
    /// restarts from its data directory when the fault heals.
    Crash,
    /// Data movement alongside the other faults: a leader transfer or a
    /// replica move through the PD during most faults (every step when it is
    /// the only nemesis).
    Move,
}

impl SimNemesis {
    pub const ALL: [SimNemesis; 8] = [
        SimNemesis::Isolate,
        SimNemesis::Majority,
        SimNemesis::OneWay,
        SimNemesis::Hold,
        SimNemesis::Flaky,
        SimNemesis::Slow,
        SimNemesis::Crash,
        SimNemesis::Move,
    ];
}

impl fmt::Display for SimNemesis {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let name = match self {
            SimNemesis::Isolate => "isolate",
            SimNemesis::Majority => "majority",
            SimNemesis::OneWay => "one-way",
            SimNemesis::Hold => "hold",
            SimNemesis::Flaky => "flaky",
            SimNemesis::Slow => "slow",
            SimNemesis::Crash => "crash",
            SimNemesis::Move => "move",
        };
        f.write_str(name)
    }
}

#[derive(Clone, Debug)]
pub struct SimConfig {
    pub seed: u64,
    /// Nodes in the cluster (3..=7); the first three are the PD's members.
    pub nodes: usize,
    pub shards: u32,
    /// Faults drawn from these.
    pub nemeses: Vec<SimNemesis>,
    /// How many faults, one after another.
    pub faults: usize,
    /// Simulated time a fault lasts, and between two faults.
    pub hold: Duration,
    pub gap: Duration,
    pub workload: RegisterWorkload,
}

/// One step of the schedule, starting `at` after the cluster is ready and
/// healed `hold` later: a fault on nodes `a` and `b` (indexes; which of them
/// it uses depends on the nemesis), data movement halfway through it, or both.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Planned {
    pub at: Duration,
    pub fault: Option<SimNemesis>,
    pub a: usize,
    pub b: usize,
    pub movement: Option<Movement>,
}

/// A leader transfer (`leader`) or replica move of `shard`; `pick` chooses
/// the nodes among those that qualify when it happens.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Movement {
    pub shard: ShardId,
    pub leader: bool,
    pub pick: u64,
}

/// The schedule: a pure function of the config.
pub fn schedule(config: &SimConfig) -> Vec<Planned> {
    let mut rng = rand::rngs::StdRng::seed_from_u64(config.seed ^ 0x0005_eed5);
    let faults: Vec<SimNemesis> = config.nemeses.iter().copied().filter(|n| *n != SimNemesis::Move).collect();
    let moving = config.nemeses.contains(&SimNemesis::Move);
    let mut at = Duration::ZERO;
    let mut plan = Vec::new();
    for _ in 0..config.faults {
        at += config.gap;
        let fault = (!faults.is_empty()).then(|| faults[rng.random_range(0..faults.len())]);
        let a = rng.random_range(0..config.nodes);
        let b = (a + rng.random_range(1..config.nodes)) % config.nodes;
        let movement = (moving && (faults.is_empty() || rng.random_bool(0.6))).then(|| Movement {
            shard: ShardId(rng.random_range(1..=config.shards as u64)),
            leader: rng.random_bool(0.5),
            pick: rng.random(),
        });
        plan.push(Planned { at, fault, a, b, movement });
        at += config.hold;
    }
    plan
}

/// What a run produced.
pub struct SimRun {
    pub history: Vec<RegOp>,
    /// Each fault as it was applied.
    pub faults: Vec<String>,
    pub faults_by_type: BTreeMap<SimNemesis, usize>,
    /// Simulated time from start to the workload's end, and turmoil steps.
    pub sim_elapsed: Duration,
    pub steps: u64,
}

impl SimRun {
    /// A digest of the run: every operation (who, what, result, outcome) in
    /// invocation order, the order they completed in, the faults, the
    /// simulated time and the steps. Two runs of one seed must agree on it.
    pub fn fingerprint(&self) -> u64 {
        use std::hash::{Hash, Hasher};
        let mut h = std::hash::DefaultHasher::new();
        for op in &self.history {
            (op.process, &op.key, op.input, op.output, op.outcome as u8).hash(&mut h);
        }
        let mut completed: Vec<&RegOp> = self.history.iter().filter(|o| o.ret.is_some()).collect();
        completed.sort_by_key(|o| o.ret);
        completed.iter().map(|o| o.id).collect::<Vec<_>>().hash(&mut h);
        (&self.faults, self.sim_elapsed, self.steps).hash(&mut h);
        h.finish()
    }
}

/// Per-node control shared between the harness and the node's host.
#[derive(Default)]
struct Control {
    /// Set to make the host crash its node.
    crash: Notify,
    /// Whether the node is up (set by the host; cleared after its crash).
    up: AtomicBool,
}

/// A command the harness sends to the workload host.
#[derive(Debug)]
enum Admin {
    Move(Movement),
}

fn host_name(i: usize) -> String {
    format!("n{}", i + 1)
}

fn node_config(i: usize, config: &SimConfig, data: &std::path::Path, net: &Net) -> NodeConfig {
    let members: Vec<(u64, String)> =
        (0..config.nodes.min(3)).map(|m| (m as u64 + 1, format!("{}:{PORT}", host_name(m)))).collect();
    NodeConfig {
        listen: ([0, 0, 0, 0], PORT).into(),
        advertise: Some(format!("{}:{PORT}", host_name(i))),
        data_dir: data.join(host_name(i)),
        initial_pd: members,
        initial_shards: config.shards,
        heartbeat_interval_ms: 200,
        raft: test_raft_settings(),
        fault_injection: true,
        net: net.clone(),
        ..NodeConfig::default()
    }
}

/// Serves the node of one host until the harness asks it to crash.
async fn host(config: NodeConfig, control: Arc<Control>) -> turmoil::Result {
    let listener = turmoil::net::TcpListener::bind(config.listen).await?;
    let incoming = futures::stream::unfold(listener, |l| async move {
        let conn = l.accept().await.map(|(s, _)| Box::new(s) as Connection);
        Some((conn, l))
    });
    cairn_node::test_hooks::lose_unsynced_writes(&config.data_dir.join(DB_FILE));
    let node = Node::start_with_incoming(config, Box::pin(incoming)).await?;
    control.up.store(true, Ordering::Release);
    control.crash.notified().await;
    node.crash().await;
    control.up.store(false, Ordering::Release);
    Ok(())
}

/// The workload host: waits for the cluster, runs the register workload until
/// `stop`, and carries out the harness's data movement meanwhile.
#[allow(clippy::too_many_arguments)] // one call site, each a distinct handle of the harness
async fn workload(
    pd: Vec<String>,
    net: Net,
    workload: RegisterWorkload,
    recorder: Arc<Recorder<RegIn, RegOut>>,
    ready: Arc<AtomicBool>,
    stop: Arc<AtomicBool>,
    mut admin: mpsc::Receiver<Admin>,
    moves: Rc<RefCell<Vec<String>>>,
) -> turmoil::Result {
    let config = ClientConfig { net, ..ClientConfig::default() };
    let pd_client = PdClient::new(&pd, config.clone())?;
    let client = loop {
        match Client::connect_with(pd.clone(), config.clone()).await {
            Ok(c) => break c,
            Err(_) => tokio::time::sleep(Duration::from_millis(200)).await,
        }
    };
    // Ready once every shard answers.
    loop {
        let shards = pd_client.cluster(0).await.map(|s| s.shards.len()).unwrap_or(0);
        if shards > 0 && client.put("sim/ready", r#"{"ready":true}"#).await.is_ok() {
            let (routes, _) = pd_client.list_shards(&cairn_proto::KeyRange::full(), 0).await?;
            if routes.iter().all(|r| r.leader.is_some()) {
                break;
            }
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    ready.store(true, Ordering::Release);
    let running = tokio::spawn(register::run(client.clone(), workload, recorder.clone(), stop.clone()));
    while !stop.load(Ordering::Acquire) {
        tokio::select! {
            cmd = admin.recv() => match cmd {
                Some(Admin::Move(m)) => {
                    let what = move_shard(&pd_client, m).await;
                    moves.borrow_mut().push(what);
                }
                None => break,
            },
            _ = tokio::time::sleep(Duration::from_millis(100)) => {}
        }
    }
    running.await?;
    Ok(())
}

/// Asks the PD for a leader transfer or a replica move of `shard`; returns
/// what happened, for the report. A refusal is fine: the attempt is the fault.
async fn move_shard(pd: &PdClient, Movement { shard, leader, pick }: Movement) -> String {
    let Ok(status) = pd.cluster(0).await else { return format!("shard {shard}: no move (PD busy)") };
    let Some(info) = status.shards.iter().find(|s| s.route.descriptor.id == shard) else {
        return format!("shard {shard}: no move (unknown)");
    };
    let on: Vec<NodeId> = info.route.descriptor.replicas.iter().map(|r| r.node).collect();
    let free: Vec<NodeId> = status.nodes.iter().map(|n| n.id).filter(|id| !on.contains(id)).collect();
    let kind = if leader || free.is_empty() {
        OperatorKind::TransferLeader { to: on[pick as usize % on.len()] }
    } else {
        OperatorKind::MoveReplica { from: on[pick as usize % on.len()], to: free[(pick >> 8) as usize % free.len()] }
    };
    match pd.create_operator(shard, kind.clone()).await {
        Ok(op) => format!("shard {shard}: operator {} {kind}", op.id),
        Err(e) => format!("shard {shard}: {kind} refused: {e}"),
    }
}

/// Runs the schedule against a simulated cluster and returns the history.
pub fn run(config: &SimConfig) -> anyhow::Result<SimRun> {
    anyhow::ensure!((3..=7).contains(&config.nodes), "3 to 7 nodes");
    anyhow::ensure!(!config.nemeses.is_empty(), "no nemesis chosen");
    let plan = schedule(config);
    let faulted = plan.last().map(|p| p.at + config.hold).unwrap_or_default();
    // A tmpfs keeps fsyncs short: the writer threads' real time is simulated
    // time the hosts spend waiting.
    let data = match std::path::Path::new("/dev/shm").is_dir() {
        true => tempfile::tempdir_in("/dev/shm"),
        false => tempfile::tempdir(),
    }?;
    let net = Net::with_dialer(Arc::new(SimDialer));
    // From here on this thread is the simulation: the nodes' and the client's
    // randomness and wall clock come from the seed and turmoil's clock.
    let _simulation = cairn_proto::sim::enter(config.seed, || {
        let since = turmoil::since_epoch().unwrap_or_default();
        EPOCH_MS + since.as_millis() as u64
    });
    let mut sim = turmoil::Builder::new()
        .rng_seed(config.seed)
        .epoch(std::time::UNIX_EPOCH + Duration::from_millis(EPOCH_MS))
        .simulation_duration(SETUP_MAX + faulted + SETTLE + WIND_DOWN_MAX)
        .tick_duration(Duration::from_millis(1))
        .min_message_latency(Duration::from_millis(1))
        .max_message_latency(Duration::from_millis(5))
        // A flapping link (the Flaky nemesis) comes back after ~20 ticks.
        .repair_rate(0.05)
        .build();

    let controls: Vec<Arc<Control>> = (0..config.nodes).map(|_| Arc::new(Control::default())).collect();
    for (i, control) in controls.iter().enumerate() {
        let node = node_config(i, config, data.path(), &net);
        let control = control.clone();
        sim.host(host_name(i), move || host(node.clone(), control.clone()));
    }
    let recorder = Arc::new(Recorder::new());
    let ready = Arc::new(AtomicBool::new(false));
    let stop = Arc::new(AtomicBool::new(false));
    let (admin_tx, admin_rx) = mpsc::channel(ADMIN_QUEUE);
    let moves = Rc::new(RefCell::new(Vec::new()));
    {
        let pd: Vec<String> = (0..config.nodes.min(3)).map(|m| format!("{}:{PORT}", host_name(m))).collect();
        let fut = workload(
            pd,
            net.clone(),
            config.workload.clone(),
            recorder.clone(),
            ready.clone(),
            stop.clone(),
            admin_rx,
            moves.clone(),
        );
        sim.client("workload", fut);
    }

    // Setup: until the workload host finds every shard led.
    let mut steps = 0u64;
    while !ready.load(Ordering::Acquire) {
        anyhow::ensure!(sim.elapsed() < SETUP_MAX, "the cluster did not come up in {SETUP_MAX:?} of simulated time");
        sim.step().map_err(|e| anyhow::anyhow!("{e}"))?;
        steps += 1;
    }
    let t0 = sim.elapsed();
    let mut faults = Vec::new();
    let mut faults_by_type = BTreeMap::new();
    for p in &plan {
        steps += step_until(&mut sim, t0 + p.at)?;
        if let Some(fault) = p.fault {
            let what = strike(&mut sim, fault, p, config.nodes, &controls);
            tracing::info!(at = ?p.at, fault = %what, "sim fault");
            faults.push(what);
            *faults_by_type.entry(fault).or_insert(0) += 1;
        }
        if let Some(m) = p.movement {
            steps += step_until(&mut sim, t0 + p.at + config.hold / 2)?;
            // A full queue means the workload host is behind: skip this one.
            if admin_tx.try_send(Admin::Move(m)).is_ok() {
                *faults_by_type.entry(SimNemesis::Move).or_insert(0) += 1;
            }
        }
        steps += step_until(&mut sim, t0 + p.at + config.hold)?;
        if let Some(fault) = p.fault {
            steps += heal(&mut sim, fault, p, config.nodes, &controls)?;
        }
    }
    let settled = sim.elapsed() + SETTLE;
    steps += step_until(&mut sim, settled)?;
    stop.store(true, Ordering::Release);
    drop(admin_tx);
    // Until the workload host ends (every process finishes its operation).
    loop {
        steps += 1;
        if sim.step().map_err(|e| anyhow::anyhow!("{e}"))? {
            break;
        }
    }
    faults.extend(moves.borrow().iter().cloned());
    Ok(SimRun { history: recorder.history(), faults, faults_by_type, sim_elapsed: sim.elapsed(), steps })
}

/// Starts `fault` as `p` plans it; returns what it did, for the report.
fn strike(
    sim: &mut turmoil::Sim<'_>,
    fault: SimNemesis,
    p: &Planned,
    nodes: usize,
    controls: &[Arc<Control>],
) -> String {
    let ips: Vec<_> = (0..nodes).map(|i| sim.lookup(host_name(i))).collect();
    let (a, b) = (host_name(p.a), host_name(p.b));
    match fault {
        SimNemesis::Isolate => {
            for (x, y) in cut_links(fault, p, nodes) {
                sim.partition(x, y);
            }
            format!("{a} isolated")
        }
        SimNemesis::Majority => {
            for (x, y) in cut_links(fault, p, nodes) {
                sim.partition(x, y);
            }
            let names: Vec<String> = minority(p, nodes).iter().map(|i| host_name(*i)).collect();
            format!("minority {} cut from the majority", names.join(","))
        }
        SimNemesis::OneWay => {
            sim.partition_oneway(ips[p.a], ips[p.b]);
            format!("{a} -> {b} cut")
        }
        SimNemesis::Hold => {
            sim.hold(ips[p.a], ips[p.b]);
            format!("{a} <-> {b} held")
        }
        SimNemesis::Flaky => {
            sim.set_fail_rate(0.002);
            "every link flapping".to_string()
        }
        SimNemesis::Slow => {
            sim.set_max_message_latency(Duration::from_millis(200));
            "every link slow".to_string()
        }
        SimNemesis::Crash => {
            controls[p.a].crash.notify_one();
            format!("{a} crashed (unsynced writes lost)")
        }
        SimNemesis::Move => unreachable!("movement is not a fault of its own"),
    }
}

/// The host pairs an isolation or a majority/minority cut partitions (and
/// its heal repairs): an isolated node loses the workload's client too.
fn cut_links(fault: SimNemesis, p: &Planned, nodes: usize) -> Vec<(String, String)> {
    let side = match fault {
        SimNemesis::Isolate => vec![p.a],
        _ => minority(p, nodes),
    };
    let mut links: Vec<(String, String)> = side
        .iter()
        .flat_map(|i| (0..nodes).filter(|j| !side.contains(j)).map(move |j| (host_name(*i), host_name(j))))
        .collect();
    if fault == SimNemesis::Isolate {
        links.push((host_name(p.a), "workload".to_string()));
    }
    links
}

/// The minority side of a majority/minority cut: nodes `a` and `b` of five
/// or more, `a` alone of three or four.
fn minority(p: &Planned, nodes: usize) -> Vec<usize> {
    if nodes >= 5 { vec![p.a, p.b] } else { vec![p.a] }
}

/// Heals `fault`; returns the steps it took (a crash first completes in its
/// host, which then restarts from its data directory).
fn heal(
    sim: &mut turmoil::Sim<'_>,
    fault: SimNemesis,
    p: &Planned,
    nodes: usize,
    controls: &[Arc<Control>],
) -> anyhow::Result<u64> {
    let ips: Vec<_> = (0..nodes).map(|i| sim.lookup(host_name(i))).collect();
    let mut steps = 0;
    match fault {
        SimNemesis::Isolate | SimNemesis::Majority => {
            for (x, y) in cut_links(fault, p, nodes) {
                sim.repair(x, y);
            }
        }
        SimNemesis::OneWay => sim.repair_oneway(ips[p.a], ips[p.b]),
        SimNemesis::Hold => sim.release(ips[p.a], ips[p.b]),
        // Links still down come back at the repair rate.
        SimNemesis::Flaky => sim.set_fail_rate(0.0),
        SimNemesis::Slow => sim.set_max_message_latency(Duration::from_millis(5)),
        SimNemesis::Crash => {
            let deadline = sim.elapsed() + Duration::from_secs(30);
            while controls[p.a].up.load(Ordering::Acquire) {
                anyhow::ensure!(sim.elapsed() < deadline, "{} did not crash in 30 s of simulated time", host_name(p.a));
                sim.step().map_err(|e| anyhow::anyhow!("{e}"))?;
                steps += 1;
            }
            sim.bounce(host_name(p.a));
        }
        SimNemesis::Move => {}
    }
    Ok(steps)
}

/// Steps the simulation until its clock reaches `until`; returns the steps.
fn step_until(sim: &mut turmoil::Sim<'_>, until: Duration) -> anyhow::Result<u64> {
    let mut steps = 0;
    while sim.elapsed() < until {
        sim.step().map_err(|e| anyhow::anyhow!("{e}")).context("simulation step")?;
        steps += 1;
    }
    Ok(steps)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(seed: u64) -> SimConfig {
        SimConfig {
            seed,
            nodes: 5,
            shards: 2,
            nemeses: SimNemesis::ALL.to_vec(),
            faults: 20,
            hold: Duration::from_secs(2),
            gap: Duration::from_secs(1),
            workload: RegisterWorkload { keys: 4, processes: 4, seed, ops_per_key: 500 },
        }
    }

    #[test]
    fn the_schedule_is_a_function_of_the_seed() {
        assert_eq!(schedule(&config(7)), schedule(&config(7)));
        assert_ne!(schedule(&config(7)), schedule(&config(8)));
        let plan = schedule(&config(7));
        for p in &plan {
            assert_ne!(p.a, p.b, "two distinct nodes");
            assert!(p.a < 5 && p.b < 5);
            assert!(p.fault.is_some() && p.fault != Some(SimNemesis::Move), "every step faults");
        }
        assert!(plan.iter().any(|p| p.movement.is_some()), "movement rides along");
        assert!(plan.iter().any(|p| p.movement.is_none()));
        assert!(plan.windows(2).all(|w| w[1].at >= w[0].at + Duration::from_secs(3)), "hold + gap apart");
    }

    #[test]
    fn movement_alone_moves_every_step_and_faults_never() {
        let c = SimConfig { nemeses: vec![SimNemesis::Move], ..config(3) };
        assert!(schedule(&c).iter().all(|p| p.fault.is_none() && p.movement.is_some()));
        let c = SimConfig { nemeses: vec![SimNemesis::Crash], ..config(3) };
        assert!(schedule(&c).iter().all(|p| p.fault == Some(SimNemesis::Crash) && p.movement.is_none()));
    }
}
