//! One chaos run against a cluster of real processes: workloads record their
//! histories while the nemesis schedule runs, every fault is healed, final
//! reads are made, the checkers judge, and a report in Jepsen's terms is
//! printed. A run that is not valid keeps its directory: histories (JSON
//! lines), the schedule, the faults as performed and every node's log.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use cairn_client::{Client, ClientConfig};

use super::history::{Op, Outcome, Recorder, Verdict};
use super::linear::{self, Limits, RegIn, RegOut};
use super::nemesis::{self, Lane, Nemesis};
use super::register::{self, RegisterWorkload};
use super::scan::{self as scan_check, ScanIn, ScanOut};
use super::set_full::{self, SetIn, SetOut};
use super::{scan_workload, set_workload};
use crate::netns::Network;
use crate::procs::{ProcessCluster, TEST_CONFIG_TOML};

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Workload {
    Register,
    Set,
    Scan,
}

impl Workload {
    pub const ALL: [Workload; 3] = [Workload::Register, Workload::Set, Workload::Scan];

    pub fn name(self) -> &'static str {
        match self {
            Workload::Register => "register",
            Workload::Set => "set",
            Workload::Scan => "scan",
        }
    }
}

impl std::str::FromStr for Workload {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        Workload::ALL
            .into_iter()
            .find(|w| w.name() == s)
            .ok_or_else(|| format!("unknown workload {s:?} (known: register, set, scan)"))
    }
}

#[derive(Clone, Debug)]
pub struct RunConfig {
    pub seed: u64,
    pub time_limit: Duration,
    pub nemeses: Vec<Nemesis>,
    pub workloads: Vec<Workload>,
    pub nodes: usize,
    pub shards: u32,
    /// The `cairn` server binary.
    pub server_bin: PathBuf,
    /// Keep the directory even when the run is valid.
    pub keep_dir: bool,
}

impl RunConfig {
    /// The command that repeats this run (same seed, same schedule).
    pub fn replay_command(&self) -> String {
        let list = |v: Vec<&str>| v.join(",");
        format!(
            "cargo run --release -p cairn-tests --bin chaos -- --seed {} --time-limit {} --nemesis {} --workload {} --nodes {} --shards {}",
            self.seed,
            self.time_limit.as_secs(),
            list(self.nemeses.iter().map(|n| n.name()).collect()),
            list(self.workloads.iter().map(|w| w.name()).collect()),
            self.nodes,
            self.shards
        )
    }
}

/// Register keys and processes, set adders.
const REGISTER_KEYS: usize = 8;
const REGISTER_PROCESSES: usize = 8;
/// Operations per register key before the processes move to fresh keys.
const REGISTER_OPS_PER_KEY: u64 = 1_000;
const SET_ADDERS: usize = 4;
const SCAN_WRITERS: usize = 4;
/// Attempts of each final read after the faults are healed.
const FINAL_READ_ATTEMPTS: usize = 40;

pub struct RunResult {
    pub verdict: Verdict,
    pub report: String,
    /// The run's directory when kept.
    pub kept: Option<PathBuf>,
}

fn history_log(dir: &std::path::Path, name: &str) -> anyhow::Result<std::io::BufWriter<std::fs::File>> {
    Ok(std::io::BufWriter::new(std::fs::File::create(dir.join(name))?))
}

fn by_outcome<I, O>(ops: &[Op<I, O>], kind: impl Fn(&I) -> &'static str) -> String {
    let mut counts: BTreeMap<(&'static str, &'static str), usize> = BTreeMap::new();
    for op in ops {
        let outcome = match op.outcome {
            Outcome::Ok => "ok",
            Outcome::Fail => "fail",
            Outcome::Unknown => "unknown",
        };
        *counts.entry((kind(&op.input), outcome)).or_default() += 1;
    }
    counts.iter().map(|((k, o), n)| format!("{k} {o} {n}")).collect::<Vec<_>>().join(", ")
}

pub async fn run(config: &RunConfig) -> anyhow::Result<RunResult> {
    // Partitions need a network of namespaces (root); without one the other
    // nemeses run on loopback and partitions are reported as skipped.
    let net = if config.nemeses.contains(&Nemesis::Partition) {
        match Network::create(config.nodes) {
            Ok(net) => Some(net),
            Err(e) => {
                eprintln!("[chaos] partitions skipped: {e}");
                None
            }
        }
    } else {
        None
    };
    // Fault injection: link faults through the admin API, and a SIGKILL loses
    // what a node had not synced, as a power failure would.
    let node_config = format!("fault-injection = true\n{TEST_CONFIG_TOML}");
    let mut cluster = match &net {
        Some(net) => ProcessCluster::launch_at(&config.server_bin, net.places(), config.shards, &node_config).await?,
        None => ProcessCluster::launch(&config.server_bin, config.nodes, config.shards, &node_config).await?,
    };
    let dir = cluster.dir().to_path_buf();
    let pd = cluster.pd_client()?;
    let shards = config.shards as usize;
    crate::wait_until("every shard to have its replicas and a leader", Duration::from_secs(60), || async {
        let status = pd.cluster(0).await.ok()?;
        let data: Vec<_> = status.shards.iter().filter(|s| s.route.descriptor.id.0 != 0).collect();
        (data.len() == shards && data.iter().all(|s| s.route.leader.is_some()) && status.under_replicated() == 0)
            .then_some(())
    })
    .await?;
    let schedule = nemesis::schedule(config.seed, &config.nemeses, config.time_limit);
    std::fs::write(dir.join("schedule.json"), serde_json::to_string_pretty(&schedule)?)?;
    eprintln!("[chaos] cluster of {} nodes up in {}; {} faults scheduled", config.nodes, dir.display(), schedule.len());

    let client_config = ClientConfig { operation_timeout: Duration::from_secs(5), ..ClientConfig::default() };
    let client = Client::connect_with(cluster.pd_endpoints(), client_config).await?;
    let registers: Arc<Recorder<RegIn, RegOut>> =
        Arc::new(Recorder::with_log(history_log(&dir, "history-register.jsonl")?));
    let set: Arc<Recorder<SetIn, SetOut>> = Arc::new(Recorder::with_log(history_log(&dir, "history-set.jsonl")?));
    let scans: Arc<Recorder<ScanIn, ScanOut>> = Arc::new(Recorder::with_log(history_log(&dir, "history-scan.jsonl")?));
    let stop = Arc::new(AtomicBool::new(false));
    let mut tasks = Vec::new();
    if config.workloads.contains(&Workload::Scan) {
        let run = scan_workload::run(client.clone(), SCAN_WRITERS, config.seed, scans.clone(), stop.clone());
        tasks.push(tokio::spawn(run));
    }
    if config.workloads.contains(&Workload::Register) {
        let w = RegisterWorkload {
            keys: REGISTER_KEYS,
            processes: REGISTER_PROCESSES,
            seed: config.seed,
            ops_per_key: REGISTER_OPS_PER_KEY,
        };
        tasks.push(tokio::spawn(register::run(client.clone(), w, registers.clone(), stop.clone())));
    }
    if config.workloads.contains(&Workload::Set) {
        tasks.push(tokio::spawn(set_workload::run(client.clone(), SET_ADDERS, set.clone(), stop.clone())));
    }

    // Progress every second.
    let current: Arc<Mutex<[String; 2]>> = Arc::new(Mutex::new(["none".into(), "none".into()]));
    let started = Instant::now();
    let progress = {
        let (registers, set, scans, current, stop) =
            (registers.clone(), set.clone(), scans.clone(), current.clone(), stop.clone());
        tokio::spawn(async move {
            while !stop.load(Ordering::Relaxed) {
                tokio::time::sleep(Duration::from_secs(1)).await;
                let (r, s, c) = (registers.counts(), set.counts(), scans.counts());
                let [fault, movement] = current.lock().expect("fault lock").clone();
                eprintln!(
                    "[chaos] {:>6.1}s  ops {} (ok {}, fail {}, unknown {})  fault: {fault}  movement: {movement}",
                    started.elapsed().as_secs_f64(),
                    r.invoked + s.invoked + c.invoked,
                    r.ok + s.ok + c.ok,
                    r.fail + s.fail + c.fail,
                    r.unknown + s.unknown + c.unknown,
                );
            }
        })
    };

    // The two lanes of the schedule run side by side (nemesis module docs).
    let performed: Mutex<Vec<(u64, String)>> = Mutex::new(Vec::new());
    let note = |lane: usize, fault: &nemesis::Fault, what: Option<String>| {
        let mut current = current.lock().expect("fault lock");
        match what {
            None => current[lane] = format!("{} (for {} ms)", fault.nemesis.name(), fault.hold_ms),
            Some(what) => {
                current[lane] = "none".into();
                let line = format!("{:>8} ms  {:<11}  {what}", fault.at_ms, fault.nemesis.name());
                eprintln!("[chaos] {line}");
                performed.lock().expect("faults lock").push((fault.at_ms, line));
            }
        }
    };
    let node_ids: Vec<_> = cluster.nodes.iter().map(|n| n.id).collect();
    let faults_lane = async {
        for fault in schedule.iter().filter(|f| f.nemesis.lane() == Lane::Faults) {
            tokio::time::sleep_until((started + Duration::from_millis(fault.at_ms)).into()).await;
            note(0, fault, None);
            let what = nemesis::perform_fault(&mut cluster, net.as_ref(), &pd, fault).await?;
            note(0, fault, Some(what));
        }
        anyhow::Ok(())
    };
    let movement_lane = async {
        for fault in schedule.iter().filter(|f| f.nemesis.lane() == Lane::Movement) {
            tokio::time::sleep_until((started + Duration::from_millis(fault.at_ms)).into()).await;
            note(1, fault, None);
            let what = nemesis::perform_movement(&node_ids, &pd, fault).await?;
            note(1, fault, Some(what));
        }
        anyhow::Ok(())
    };
    // A lane's error ends the run at once (the other lane is dropped).
    tokio::try_join!(faults_lane, movement_lane)?;
    let mut performed = performed.into_inner().expect("faults lock");
    performed.sort_by_key(|(at, _)| *at);
    let performed: String = performed.into_iter().map(|(_, line)| line + "\n").collect();
    std::fs::write(dir.join("faults.log"), &performed)?;
    tokio::time::sleep_until((started + config.time_limit).into()).await;
    stop.store(true, Ordering::Relaxed);
    for t in tasks {
        t.await?;
    }
    let _ = progress.await;

    // Every fault is healed; final reads.
    eprintln!("[chaos] healed; final reads");
    let mut final_ok = true;
    if config.workloads.contains(&Workload::Register) {
        let keys: std::collections::BTreeSet<String> = registers.history().into_iter().map(|o| o.key).collect();
        for key in keys {
            let mut read = false;
            for _ in 0..FINAL_READ_ATTEMPTS {
                let id = registers.invoke(u64::MAX, &key, RegIn::Read);
                match client.get(&key).await {
                    Ok(doc) => {
                        let (value, version) = match doc {
                            Some(d) => (register::decode_value(&d.value), d.version),
                            None => (None, 0),
                        };
                        registers.complete(id, Outcome::Ok, Some(RegOut::Read { value, version }));
                        read = true;
                        break;
                    }
                    Err(_) => {
                        registers.complete(id, Outcome::Fail, None);
                        tokio::time::sleep(Duration::from_millis(500)).await;
                    }
                }
            }
            final_ok &= read;
        }
    }
    if config.workloads.contains(&Workload::Set) {
        final_ok &= set_workload::final_read(&client, &set, FINAL_READ_ATTEMPTS).await;
    }
    if config.workloads.contains(&Workload::Scan) {
        let mut scanned = false;
        for _ in 0..FINAL_READ_ATTEMPTS {
            if scan_workload::scan(&client, &scans).await {
                scanned = true;
                break;
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
        final_ok &= scanned;
    }

    // Check and report.
    let mut verdict = if final_ok { Verdict::Valid } else { Verdict::Unknown };
    let mut report = String::new();
    writeln!(
        report,
        "chaos run: seed {}, {} s, nemeses {}, workloads {}, {} nodes, {} shards",
        config.seed,
        config.time_limit.as_secs(),
        config.nemeses.iter().map(|n| n.name()).collect::<Vec<_>>().join(","),
        config.workloads.iter().map(|w| w.name()).collect::<Vec<_>>().join(","),
        config.nodes,
        config.shards
    )?;
    let faults = nemesis::counts(&schedule);
    writeln!(report, "faults: {faults:?}")?;
    if !final_ok {
        writeln!(report, "final reads: some did not succeed after healing (verdict at best unknown)")?;
    }
    if config.workloads.contains(&Workload::Register) {
        let h = registers.history();
        let r = linear::check(&h, &Limits::default());
        let kind = |i: &RegIn| match i {
            RegIn::Read => "read",
            RegIn::Write { .. } => "write",
            RegIn::Cas { .. } => "cas",
        };
        writeln!(report, "register: {} operations: {}", h.len(), by_outcome(&h, kind))?;
        writeln!(report, "  linearizability: {} keys checked, verdict {}", r.keys.len(), r.verdict)?;
        for k in r.failures() {
            writeln!(
                report,
                "  key {}: {} - {} (ops {:?})",
                k.key,
                k.verdict,
                k.reason.as_deref().unwrap_or(""),
                k.witness
            )?;
        }
        verdict = verdict.and(r.verdict);
    }
    if config.workloads.contains(&Workload::Set) {
        let h = set.history();
        let r = set_full::check_all(&h);
        let kind = |i: &SetIn| match i {
            SetIn::Add { .. } => "add",
            SetIn::Read => "read",
        };
        writeln!(report, "set: {} operations: {}", h.len(), by_outcome(&h, kind))?;
        writeln!(
            report,
            "  set-full: {} acknowledged, {} ok, lost {:?}, stale {:?}, unexpected {:?}, duplicated {:?}, never read {}, unchecked {}; verdict {}",
            r.acknowledged,
            r.ok,
            r.lost,
            r.stale,
            r.unexpected,
            r.duplicated,
            r.never_read,
            r.unchecked.len(),
            r.verdict()
        )?;
        verdict = verdict.and(r.verdict());
    }
    if config.workloads.contains(&Workload::Scan) {
        let h = scans.history();
        let r = scan_check::check(&h);
        let kind = |i: &ScanIn| match i {
            ScanIn::Insert => "insert",
            ScanIn::Delete => "delete",
            ScanIn::Scan => "scan",
        };
        writeln!(report, "scan: {} operations: {}", h.len(), by_outcome(&h, kind))?;
        writeln!(report, "  scans: {} checked, {} keys returned, verdict {}", r.scans, r.keys_checked, r.verdict)?;
        for e in &r.errors {
            writeln!(report, "  scan op {}: key {} {}", e.scan, e.key, e.kind)?;
        }
        verdict = verdict.and(r.verdict);
    }
    let kept = if verdict != Verdict::Valid || config.keep_dir {
        let dir = cluster.keep();
        writeln!(report, "kept: {} (histories, schedule.json, faults.log, node-*/node.log)", dir.display())?;
        writeln!(report, "replay: {}", config.replay_command())?;
        Some(dir)
    } else {
        cluster.finish();
        None
    };
    writeln!(report, "verdict: {verdict}")?;
    Ok(RunResult { verdict, report, kept })
}
