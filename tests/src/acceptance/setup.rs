//! What every scenario starts from and ends with: the options, a playground of
//! three nodes (the PD members) plus nodes that join, the once-a-second watch
//! that prints progress and waits for a condition, and the clean stop and
//! database inspection at the end.

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::Context;
use cairn_client::{Client, ClientConfig, PdClient};
use cairn_proto::{KeyRange, ShardDescriptor};

use super::clients::{Clients, ClientsConfig};
use super::ctl::{Ctl, NodeJson, OperatorJson, RebalanceJson, ShardJson};
use super::data::{self, LoadPlan};
use super::events::Events;
use super::inspect::{self, DbReport};
use super::procs::{Binaries, JoinedNode, Playground, Ports, tail};
use super::report::Summary;

/// Nodes of the playground (all of them PD members).
pub const PLAYGROUND_NODES: u32 = 3;
/// Deadline for the playground's cluster to be up with every shard.
const READY_TIMEOUT: Duration = Duration::from_secs(120);
/// Deadline for a joining node to register and be up.
const JOIN_TIMEOUT: Duration = Duration::from_secs(60);
/// How long the PD must list no operator before the nodes are stopped, so that
/// the nodes' background deletion of dropped replicas' documents (which runs
/// whenever a node's storage writer is idle) has run.
pub const QUIET_PERIOD: Duration = Duration::from_secs(10);
const QUIET_TIMEOUT: Duration = Duration::from_secs(180);
/// Writes the clients must have acknowledged before a scenario's action starts.
const WARM_UP_PUTS_PER_CLIENT: u64 = 3;
const WARM_UP_TIMEOUT: Duration = Duration::from_secs(60);
/// Node log lines printed when a node dies unexpectedly.
const LOG_TAIL_LINES: usize = 30;

/// The command-line options every scenario shares.
#[derive(Clone, Debug)]
pub struct Options {
    pub data_mb: f64,
    pub clients: u32,
    pub shards: u32,
    pub value_bytes: usize,
    /// Put-then-get iterations per second of each client.
    pub client_rate: f64,
    pub load_tasks: usize,
    /// Deadline of the scenario's main wait (balance, repair, each drain).
    pub timeout: Duration,
}

/// A cluster of real processes: the playground and the nodes that joined it.
pub struct Env {
    pub opts: Options,
    pub bins: Binaries,
    pub dir: PathBuf,
    pub ports: Ports,
    pub playground: Playground,
    pub joined: Vec<JoinedNode>,
    /// Joined nodes this run killed on purpose (their exit is expected).
    pub killed: BTreeSet<u64>,
    pub ctl: Ctl,
    pub pd: String,
    /// Seeds the keys, so runs differ.
    pub run: u64,
    pub started: Instant,
}

/// What the PD says, read once a second while waiting.
#[derive(Clone, Debug)]
pub struct Snapshot {
    pub rebalance: RebalanceJson,
    pub operators: Vec<OperatorJson>,
    pub shards: Vec<ShardJson>,
    pub nodes: Vec<NodeJson>,
}

impl Snapshot {
    pub async fn read(ctl: &Ctl) -> anyhow::Result<Snapshot> {
        let (rebalance, operators, shards, nodes) =
            tokio::try_join!(ctl.rebalance(), ctl.operators(), ctl.shards(), ctl.nodes())?;
        Ok(Snapshot { rebalance, operators, shards, nodes })
    }

    pub fn node(&self, id: u64) -> Option<&NodeJson> {
        self.nodes.iter().find(|n| n.id == id)
    }

    pub fn up(&self, id: u64) -> bool {
        self.node(id).is_some_and(|n| n.state == "up")
    }

    /// Shards with a replica on `node`.
    pub fn shards_on(&self, node: u64) -> usize {
        self.shards.iter().filter(|s| s.on(node)).count()
    }

    /// Every node's replica count is within one of the mean over the up nodes.
    pub fn within_one_of_mean(&self) -> bool {
        let up: Vec<_> = self.rebalance.nodes.iter().filter(|n| n.state == "up").collect();
        !up.is_empty() && up.iter().all(|n| (n.replicas as f64 - self.rebalance.mean_replicas).abs() <= 1.0)
    }

    /// The progress line: replicas and leaders per node, operators in flight.
    pub fn brief(&self) -> String {
        let r = &self.rebalance;
        let ops: Vec<String> = self.operators.iter().take(6).map(|o| o.brief()).collect();
        let more = self.operators.len().saturating_sub(ops.len());
        let more = if more > 0 { format!(" +{more}") } else { String::new() };
        format!(
            "replicas {} (mean {:.1}, spread {}) leaders {} | ops {}: {}{more}",
            r.replica_counts(),
            r.mean_replicas,
            r.replica_spread,
            r.leader_counts(),
            self.operators.len(),
            ops.join(", ")
        )
    }
}

impl Env {
    /// Starts the playground (3 nodes, `opts.shards` shards) in `dir` and waits
    /// until `cairnctl status` shows 3 nodes up and every shard.
    pub async fn start(opts: Options, bins: Binaries, dir: PathBuf) -> anyhow::Result<Env> {
        let started = Instant::now();
        let mut ports = Ports::default();
        let base = ports.consecutive(PLAYGROUND_NODES as u16)?;
        eprintln!(
            "starting: cairn playground --nodes {PLAYGROUND_NODES} --initial-shards {} --base-port {base}",
            opts.shards
        );
        let playground = Playground::start(&bins, &dir, PLAYGROUND_NODES, opts.shards, base).await?;
        let pd = playground.pd();
        let ctl = Ctl::new(bins.cairnctl.clone(), &pd);
        let mut env = Env {
            opts,
            bins,
            dir,
            ports,
            playground,
            joined: Vec::new(),
            killed: BTreeSet::new(),
            ctl,
            pd,
            run: rand::random(),
            started,
        };
        env.wait_status(PLAYGROUND_NODES as usize).await?;
        Ok(env)
    }

    /// Waits until `cairnctl status` shows `nodes` up and every shard, none under-replicated.
    async fn wait_status(&mut self, nodes: usize) -> anyhow::Result<()> {
        let deadline = Instant::now() + READY_TIMEOUT;
        loop {
            self.check_alive()?;
            let last = match self.ctl.status().await {
                Ok(s) if s.nodes_up == nodes && s.shards == self.opts.shards as usize && s.under_replicated == 0 => {
                    return Ok(());
                }
                Ok(s) => format!("{} of {nodes} nodes up, {} shards", s.nodes_up, s.shards),
                Err(e) => e.to_string(),
            };
            anyhow::ensure!(Instant::now() < deadline, "the cluster is not ready after {READY_TIMEOUT:?}: {last}");
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    }

    /// A client routed by the PD (for loading and verifying).
    pub async fn client(&self) -> anyhow::Result<Client> {
        Ok(Client::connect(self.pd.as_str()).await?)
    }

    /// Starts `count` `cairn server --pd ...` nodes in `DIR/node-N`, one after
    /// the other (each registers before the next starts, so the PD gives node
    /// `N` the id `N` and the directory names match the ids), and waits until the
    /// PD lists each of them as up; returns their ids.
    pub async fn join(&mut self, count: usize) -> anyhow::Result<Vec<u64>> {
        let first = PLAYGROUND_NODES as usize + self.joined.len() + 1;
        let mut ids = Vec::new();
        for n in first..first + count {
            let addr = format!("127.0.0.1:{}", self.ports.one()?);
            let dir = self.dir.join(format!("node-{n}"));
            eprintln!("joining: cairn server --pd {} --listen {addr} --data-dir {}", self.pd, dir.display());
            self.joined.push(JoinedNode::start(&self.bins, &self.pd, &addr, &dir)?);
            let deadline = Instant::now() + JOIN_TIMEOUT;
            let id = loop {
                self.check_alive()?;
                let nodes = self.ctl.nodes().await.unwrap_or_default();
                if let Some(node) = nodes.iter().find(|node| node.addr == addr && node.state == "up") {
                    break node.id;
                }
                anyhow::ensure!(Instant::now() < deadline, "node {addr} did not come up within {JOIN_TIMEOUT:?}");
                tokio::time::sleep(Duration::from_millis(100)).await;
            };
            self.joined.last_mut().expect("just pushed").id = Some(id);
            ids.push(id);
        }
        Ok(ids)
    }

    /// Fails if the playground or a node (not killed on purpose) has exited.
    pub fn check_alive(&mut self) -> anyhow::Result<()> {
        if !self.playground.running() {
            anyhow::bail!("the playground exited; its output:\n{}", tail(&self.playground.log, LOG_TAIL_LINES));
        }
        for node in &self.playground.listing.nodes {
            if node.pid != 0 && !std::path::Path::new(&format!("/proc/{}", node.pid)).exists() {
                anyhow::bail!(
                    "playground node {} ({}) exited; its log:\n{}",
                    node.id,
                    node.addr,
                    tail(&node.log, LOG_TAIL_LINES)
                );
            }
        }
        for j in &mut self.joined {
            if j.id.is_some_and(|id| self.killed.contains(&id)) {
                continue;
            }
            if let Some(status) = j.exited() {
                anyhow::bail!(
                    "node {:?} ({}) exited with {status}; its log:\n{}",
                    j.id,
                    j.addr,
                    tail(&j.log, LOG_TAIL_LINES)
                );
            }
        }
        Ok(())
    }

    /// Polls [`Snapshot::read`] every second, printing a progress line (and the
    /// PD's new events) to stderr, until `done` returns `Some` or `timeout`
    /// passes. Returns the value and how long it took.
    pub async fn watch<T>(
        &mut self,
        what: &str,
        events: &mut Events,
        clients: Option<&Clients>,
        timeout: Duration,
        mut done: impl FnMut(&Snapshot) -> Option<T>,
    ) -> anyhow::Result<(T, Duration, Snapshot)> {
        let started = Instant::now();
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut last: Option<Snapshot> = None;
        loop {
            tick.tick().await;
            self.check_alive()?;
            match events.poll().await {
                Ok(new) => {
                    for e in new {
                        eprintln!("  pd event: {}", e.message);
                    }
                }
                Err(e) => eprintln!("  (reading the PD's events failed: {e})"),
            }
            let clients_line = clients.map(|c| format!(" | clients {}", c.counts().brief())).unwrap_or_default();
            match Snapshot::read(&self.ctl).await {
                Ok(snapshot) => {
                    eprintln!("[{what} {:>4.0}s] {}{clients_line}", started.elapsed().as_secs_f64(), snapshot.brief());
                    if let Some(value) = done(&snapshot) {
                        return Ok((value, started.elapsed(), snapshot));
                    }
                    last = Some(snapshot);
                }
                Err(e) => eprintln!("[{what} {:>4.0}s] cairnctl failed: {e:#}", started.elapsed().as_secs_f64()),
            }
            if started.elapsed() > timeout {
                let state = last.map(|s| s.brief()).unwrap_or_else(|| "no answer from cairnctl".into());
                anyhow::bail!("timed out after {timeout:?} waiting for {what}; last: {state}");
            }
        }
    }

    /// Waits until the PD has listed no operator for [`QUIET_PERIOD`].
    pub async fn wait_quiet(&mut self, events: &mut Events) -> anyhow::Result<Duration> {
        let mut quiet_since: Option<Instant> = None;
        let (_, took, _) = self
            .watch("quiet (no operator)", events, None, QUIET_TIMEOUT, |s| {
                if !s.operators.is_empty() || s.rebalance.operators > 0 {
                    quiet_since = None;
                    return None;
                }
                let since = *quiet_since.get_or_insert_with(Instant::now);
                (since.elapsed() >= QUIET_PERIOD).then_some(())
            })
            .await?;
        Ok(took)
    }

    /// Loads `opts.data_mb` MB, timing it into `summary`.
    pub async fn load(&self, summary: &mut Summary) -> anyhow::Result<LoadPlan> {
        let plan = LoadPlan::for_mb(self.run, self.opts.data_mb, self.opts.value_bytes);
        let client = self.client().await?;
        let stats = data::load(&client, plan, self.opts.load_tasks).await?;
        client.shutdown().await;
        let mb = stats.bytes as f64 / 1e6;
        summary.timing(
            &format!(
                "load {mb:.1} MB ({} docs, {:.1} MB/s, {} retried batches)",
                stats.docs,
                mb / stats.elapsed.as_secs_f64(),
                stats.retried
            ),
            stats.elapsed,
        );
        Ok(plan)
    }

    /// Starts the clients and waits until each has a few acknowledged writes.
    pub async fn start_clients(&self) -> anyhow::Result<Clients> {
        let clients = Clients::start(ClientsConfig {
            pd: self.pd.clone(),
            clients: self.opts.clients,
            rate_per_client: self.opts.client_rate,
            value_bytes: self.opts.value_bytes,
            run: self.run,
        })
        .await?;
        clients.warm_up(WARM_UP_PUTS_PER_CLIENT * u64::from(self.opts.clients), WARM_UP_TIMEOUT).await?;
        Ok(clients)
    }

    /// The PD's descriptors of every data shard, typed (cairnctl prints keys for people).
    pub async fn pd_map(&self) -> anyhow::Result<Vec<ShardDescriptor>> {
        let pd = PdClient::from_list(&self.pd, ClientConfig::default())?;
        let (routes, _) = pd.list_shards(&KeyRange::full(), 0).await?;
        Ok(routes.into_iter().map(|r| r.descriptor).collect())
    }

    /// Every node's id, data directory and whether this run killed it.
    pub fn nodes(&self) -> Vec<(u64, PathBuf, bool)> {
        let mut out: Vec<(u64, PathBuf, bool)> =
            self.playground.listing.nodes.iter().map(|n| (n.id, n.data_dir.clone(), false)).collect();
        for j in &self.joined {
            if let Some(id) = j.id {
                out.push((id, j.data_dir.clone(), self.killed.contains(&id)));
            }
        }
        out
    }

    /// SIGTERM to every joined node, then to the playground (which stops its
    /// nodes the same way); returns one line per process with its exit status,
    /// and whether every one exited 0 (killed nodes aside).
    pub async fn stop_all(&mut self) -> (Vec<String>, bool) {
        let mut lines = Vec::new();
        let mut clean = true;
        for j in &mut self.joined {
            let killed = j.id.is_some_and(|id| self.killed.contains(&id));
            let outcome = j.stop().await;
            let ok = matches!(&outcome, Ok(s) if s.success()) || killed;
            clean &= ok;
            let what = outcome.map(|s| s.to_string()).unwrap_or_else(|e| e.to_string());
            let note = if killed { " (SIGKILLed by this run)" } else { "" };
            lines.push(format!("node {} ({}): {what}{note}", j.id.unwrap_or(0), j.addr));
        }
        let outcome = self.playground.stop().await;
        clean &= matches!(&outcome, Ok(s) if s.success());
        let what = outcome.map(|s| s.to_string()).unwrap_or_else(|e| e.to_string());
        lines.push(format!("playground (nodes 1-3): {what}"));
        (lines, clean)
    }

    /// Inspects the database of every node not killed by this run.
    pub fn inspect_all(&self, map: &[ShardDescriptor]) -> anyhow::Result<Vec<DbReport>> {
        let ranges = inspect::ranges(map);
        let mut out = Vec::new();
        for (id, dir, killed) in self.nodes() {
            if killed {
                continue;
            }
            let path = dir.join(cairn_node::node::DB_FILE);
            out.push(inspect::inspect(id, &path, &ranges).with_context(|| format!("inspecting node {id}"))?);
        }
        Ok(out)
    }
}

/// The starting point of the repair and drain scenarios: the playground, two
/// nodes joined, the PD's balancing done, then `opts.data_mb` loaded.
pub async fn loaded_five_nodes(
    opts: Options,
    bins: Binaries,
    dir: PathBuf,
    summary: &mut Summary,
) -> anyhow::Result<(Env, LoadPlan)> {
    let started = Instant::now();
    let mut env = Env::start(opts.clone(), bins, dir).await?;
    summary.timing("playground ready (3 nodes up, every shard)", started.elapsed());
    let join_at = Instant::now();
    let ids = env.join(2).await?;
    let mut events = Events::start(&env.pd).await?;
    env.watch("initial balance", &mut events, None, opts.timeout, |s| {
        let up = s.rebalance.nodes.iter().filter(|n| n.state == "up").count();
        (up == 5 && s.rebalance.balanced && s.within_one_of_mean() && s.operators.is_empty()).then_some(())
    })
    .await?;
    summary.timing(&format!("nodes {ids:?} joined and the PD balanced the (empty) shards"), join_at.elapsed());
    let plan = env.load(summary).await?;
    Ok((env, plan))
}

/// Reads back every acknowledged write (the clients' and the bulk load's) and
/// records the checks.
pub async fn verify_acked(
    env: &Env,
    plan: LoadPlan,
    report: &super::clients::ClientsReport,
    summary: &mut Summary,
) -> anyhow::Result<()> {
    let at = Instant::now();
    let client = env.client().await?;
    let acked = data::verify(&client, report.acked_keys(env.run), env.opts.value_bytes).await;
    let loaded = data::verify(&client, data::load_keys(plan), env.opts.value_bytes).await;
    client.shutdown().await;
    summary.timing("read back every acknowledged write", at.elapsed());
    let detail = |v: &data::VerifyStats| {
        format!(
            "{} checked, {} missing, {} wrong, {} failed reads {:?}",
            v.checked, v.missing, v.wrong, v.read_errors, v.examples
        )
    };
    summary.check(
        "no acknowledged write read back missing or different during the run",
        report.counts.gets_lost == 0,
        format!("{} reads of acknowledged keys, {} wrong or missing", report.counts.gets_ok, report.counts.gets_lost),
    );
    summary.check("every acknowledged client write is readable with its value afterwards", acked.ok(), detail(&acked));
    summary.check("every loaded document is readable with its value afterwards", loaded.ok(), detail(&loaded));
    Ok(())
}

/// Waits until the cluster is quiet before the stop ([`Env::wait_quiet`]),
/// recording how long that took, or a failed check if it never was.
pub async fn settle(env: &mut Env, events: &mut Events, summary: &mut Summary) {
    match env.wait_quiet(events).await {
        Ok(took) => {
            summary.timing(&format!("wait until no operator for {:?} (background deletion runs)", QUIET_PERIOD), took)
        }
        Err(e) => summary.check("the cluster went quiet (no operator) before the stop", false, format!("{e:#}")),
    }
}

/// The shards the PD lists on each node, by node.
pub fn placement(map: &[ShardDescriptor]) -> BTreeMap<u64, BTreeSet<u64>> {
    let mut out: BTreeMap<u64, BTreeSet<u64>> = BTreeMap::new();
    for d in map {
        for r in &d.replicas {
            out.entry(r.node.0).or_default().insert(d.id.0);
        }
    }
    out
}

/// The checks every scenario makes on the stopped nodes' databases, and a
/// per-node table for the summary: each node holds a record of exactly the
/// shards the PD lists on it, no document outside those records (none left by
/// moved or dropped replicas, collected or not), and every replica of a shard
/// holds the same number of documents.
pub fn check_databases(summary: &mut Summary, map: &[ShardDescriptor], dbs: &[DbReport]) {
    let listed = placement(map);
    let mut lines = vec![format!(
        "{:>4} {:>9} {:>7} {:>10} {:>10} {:>10} {:>8} {:>10}",
        "node", "file MB", "shards", "doc rows", "orphans", "(queued)", "tombst.", "gc queue"
    )];
    let mut placement_errors = Vec::new();
    let mut orphan_errors = Vec::new();
    for db in dbs {
        let rows: u64 = db.records.values().map(|r| r.rows).sum();
        lines.push(format!(
            "{:>4} {:>9.1} {:>7} {:>10} {:>10} {:>10} {:>8} {:>10}",
            db.node,
            db.file_bytes as f64 / 1e6,
            db.records.len(),
            rows,
            db.orphan_rows,
            db.orphan_rows_queued,
            db.tombstones.len(),
            db.gc_garbage.len()
        ));
        let hosted: BTreeSet<u64> = db.records.keys().copied().collect();
        let expected = listed.get(&db.node).cloned().unwrap_or_default();
        let extra: Vec<u64> = hosted.difference(&expected).copied().collect();
        let missing: Vec<u64> = expected.difference(&hosted).copied().collect();
        if !extra.is_empty() {
            placement_errors
                .push(format!("node {} still has records of shards {extra:?} the PD lists elsewhere", db.node));
        }
        if !missing.is_empty() {
            placement_errors.push(format!("node {} has no record of shards {missing:?} the PD lists on it", db.node));
        }
        if db.orphan_rows > 0 {
            orphan_errors.push(format!(
                "node {}: {} rows ({:.1} MB) under no shard record, {} of them queued for deletion; by shard: {:?}",
                db.node,
                db.orphan_rows,
                db.orphan_bytes as f64 / 1e6,
                db.orphan_rows_queued,
                db.orphan_shards
            ));
        }
        let outside: u64 = db.records.values().map(|r| r.rows_outside_range).sum();
        if outside > 0 {
            orphan_errors.push(format!("node {}: {outside} rows outside their shard's range", db.node));
        }
    }
    summary.section("node databases after the stop", lines);
    summary.check(
        "every node's database holds a replica record of exactly the shards the PD lists on it",
        placement_errors.is_empty(),
        if placement_errors.is_empty() { format!("{} nodes checked", dbs.len()) } else { placement_errors.join("; ") },
    );
    summary.check(
        "no document row outside the node's live replicas (dropped replicas' documents deleted)",
        orphan_errors.is_empty(),
        if orphan_errors.is_empty() { "0 orphan rows on every node".to_string() } else { orphan_errors.join("; ") },
    );
    // Replicas of one shard agree (the cluster was idle and stopped cleanly).
    let mut per_shard: BTreeMap<u64, Vec<(u64, u64, u64, u64)>> = BTreeMap::new();
    for db in dbs {
        for (shard, r) in &db.records {
            per_shard.entry(*shard).or_default().push((db.node, r.rows, r.key_count, r.applied_index));
        }
    }
    let mut disagreements = Vec::new();
    for (shard, replicas) in &per_shard {
        let rows: BTreeSet<u64> = replicas.iter().map(|r| r.1).collect();
        let stats_match = replicas.iter().all(|r| r.1 == r.2);
        if rows.len() > 1 || !stats_match {
            let detail: Vec<String> = replicas
                .iter()
                .map(|(n, rows, keys, applied)| format!("node {n}: {rows} rows, stats {keys}, applied {applied}"))
                .collect();
            disagreements.push(format!("shard {shard}: {}", detail.join(", ")));
        }
    }
    summary.check(
        "every replica of a shard holds the same documents count as the others and as its own statistics",
        disagreements.is_empty(),
        if disagreements.is_empty() { format!("{} shards", per_shard.len()) } else { disagreements.join("; ") },
    );
}
