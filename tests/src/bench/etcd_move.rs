//! `move-bench`'s measured peer: the same move done by etcd on the same machine,
//! in the same run, the way issue 4 describes it (a learner member added, caught
//! up, promoted, and an old member removed), idle and under the same writers.
//!
//! The etcd binary is Debian's `etcd-server` (`apt-get install etcd-server`); the
//! bench skips this part, saying so, when it cannot find it. The setup mirrors
//! Cairn's side as closely as etcd allows:
//! - three members on loopback, data in the bench's directory (same disk);
//! - the same bytes of documents, loaded by the same loader (same keys, same
//!   JSON values, each batch one transaction);
//! - etcd's `--snapshot-count` set to Cairn's snapshot policy (a snapshot every
//!   10 000 entries) and tiny puts until the leader has written one, so the new
//!   member is sent the database (etcd keeps only 5 000 entries behind a
//!   snapshot for slow followers) instead of replaying the log;
//! - writers: as many clients as Cairn's, each its own connection to the leader
//!   (Cairn's clients also write to the shard's leader), fresh keys of the same
//!   size, recorded by the same [`Writers`].
//!
//! The move's clock starts when the `MemberAdd` etcd accepts is sent (it refuses
//! membership changes until its leader has been in touch with every voter for 5 s)
//! and stops when `MemberRemove` returns; the new member's process is started right after `MemberAdd`
//! returns (etcd needs the member added before it can start), and
//! `MemberPromote` is retried every [`POLL_MS`] ms until etcd accepts it (etcd
//! refuses until the learner is in sync with the leader).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use serde::Serialize;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::process::{Child, Command};
use tokio::time::Instant;

use super::etcd_api::EtcdClient;
use super::move_load::{self, KvPut, LoadStats, WindowStats, Writers};
use super::move_status::Status;
use super::move_watch::{MOVE_TIMEOUT, POLL_MS};
use futures::future::BoxFuture;

/// etcd's snapshot interval here: Cairn's default snapshot policy.
const SNAPSHOT_COUNT: u64 = 10_000;

/// The most tiny puts spent making the leader write its first snapshot.
const FILL_PUTS_MAX: u64 = 60_000;

/// The longest the fill may take.
const FILL_TIMEOUT: Duration = Duration::from_secs(600);

/// How long a member may take to start, or the cluster to elect a leader.
const START_TIMEOUT: Duration = Duration::from_secs(60);

/// How long a refused `MemberAdd` ("unhealthy cluster") is retried.
const UNHEALTHY_RETRY: Duration = Duration::from_secs(30);

/// How long the members may take to apply the leader's log after the load.
const SETTLE_TIMEOUT: Duration = Duration::from_secs(300);

/// etcd's backend quota: well above any shard this bench loads (etcd refuses
/// writes past its quota, 2 GiB by default).
const QUOTA_BYTES: u64 = 16 << 30;

/// What the etcd side of the bench is asked to do.
#[derive(Clone, Debug)]
pub struct EtcdBenchConfig {
    pub binary: PathBuf,
    pub dir: PathBuf,
    /// Keys plus values to load, as Cairn's shard is loaded.
    pub shard_bytes: u64,
    pub value_bytes: usize,
    pub load_tasks: usize,
    pub writers: usize,
    pub warmup: Duration,
    pub before: Duration,
    pub after: Duration,
}

/// One membership move as etcd does it, timed from `MemberAdd` sent.
#[derive(Clone, Debug, Serialize)]
pub struct EtcdMove {
    pub seconds: f64,
    /// `MemberAdd` (learner) returned.
    pub learner_added_s: f64,
    /// The learner's process was started.
    pub learner_started_s: f64,
    /// `MemberPromote` succeeded, after this many refusals.
    pub promoted_s: f64,
    pub promote_refusals: u64,
    /// `MemberRemove` of the old member returned: the move's end.
    pub removed_s: f64,
    /// Snapshots the leader sent during the move (its
    /// `etcd_network_snapshot_send_success` counter).
    pub snapshots_sent: u64,
}

#[derive(Clone, Debug, Serialize)]
pub struct EtcdLoadedMove {
    pub result: EtcdMove,
    pub before: WindowStats,
    pub during: WindowStats,
    pub after: WindowStats,
    pub throughput_loss_percent: f64,
    pub p99_factor: Option<f64>,
}

/// Everything measured of etcd in this run.
#[derive(Clone, Debug, Serialize)]
pub struct EtcdRun {
    pub version: String,
    pub load: LoadStats,
    pub fill_puts: u64,
    /// The leader's database file after the load (etcd's `dbSize`).
    pub leader_db_bytes: u64,
    pub idle: EtcdMove,
    pub loaded: EtcdLoadedMove,
}

/// One etcd member process (killed when dropped).
struct Member {
    name: String,
    client_addr: SocketAddr,
    peer_addr: SocketAddr,
    dir: PathBuf,
    /// Its member id, once known.
    id: u64,
    child: Child,
    client: EtcdClient,
}

impl Member {
    fn peer_url(&self) -> String {
        format!("http://{}", self.peer_addr)
    }
}

/// A member's name, addresses and directory, before it runs.
struct MemberPlan {
    name: String,
    client_addr: SocketAddr,
    peer_addr: SocketAddr,
    dir: PathBuf,
}

impl MemberPlan {
    fn new(root: &Path, n: usize) -> anyhow::Result<MemberPlan> {
        let name = format!("etcd-{n}");
        Ok(MemberPlan { dir: root.join(&name), name, client_addr: free_port()?, peer_addr: free_port()? })
    }

    fn peer_url(&self) -> String {
        format!("http://{}", self.peer_addr)
    }

    /// Starts the member; `initial_cluster` lists every member it should know
    /// as `name=peer-url`, `existing` joins a running cluster.
    async fn start(self, binary: &Path, initial_cluster: &str, existing: bool) -> anyhow::Result<Member> {
        std::fs::create_dir_all(&self.dir)?;
        let log = std::fs::File::create(self.dir.with_extension("log"))?;
        let client_url = format!("http://{}", self.client_addr);
        let child = Command::new(binary)
            .args(["--name", &self.name])
            .arg("--data-dir")
            .arg(&self.dir)
            .args(["--listen-client-urls", &client_url, "--advertise-client-urls", &client_url])
            .args(["--listen-peer-urls", &self.peer_url(), "--initial-advertise-peer-urls", &self.peer_url()])
            .args(["--initial-cluster", initial_cluster, "--initial-cluster-token", "cairn-move-bench"])
            .args(["--initial-cluster-state", if existing { "existing" } else { "new" }])
            .args(["--snapshot-count", &SNAPSHOT_COUNT.to_string()])
            .args(["--quota-backend-bytes", &QUOTA_BYTES.to_string()])
            // Cairn's batch limit (1000 documents), so a load batch is one transaction.
            .args(["--max-txn-ops", "1000"])
            // info: a failed run's kept logs then show leader and membership changes.
            .args(["--logger", "zap", "--log-level", "info"])
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .kill_on_drop(true)
            .spawn()
            .with_context(|| format!("starting {}", binary.display()))?;
        let client = EtcdClient::new(self.client_addr)?;
        Ok(Member {
            name: self.name,
            client_addr: self.client_addr,
            peer_addr: self.peer_addr,
            dir: self.dir,
            id: 0,
            child,
            client,
        })
    }
}

/// An unused loopback port (bound, then released for etcd to bind).
fn free_port() -> anyhow::Result<SocketAddr> {
    let l = std::net::TcpListener::bind("127.0.0.1:0").context("binding 127.0.0.1:0")?;
    Ok(l.local_addr()?)
}

/// Finds the etcd binary: `spec` as a path, or looked up on `PATH`.
pub fn find_binary(spec: &str) -> Option<PathBuf> {
    let p = Path::new(spec);
    if p.components().count() > 1 {
        return p.is_file().then(|| p.to_path_buf());
    }
    std::env::var_os("PATH")?.to_str()?.split(':').map(|d| Path::new(d).join(spec)).find(|c| c.is_file())
}

impl KvPut for EtcdClient {
    fn put(&self, key: Vec<u8>, value: Vec<u8>) -> BoxFuture<'_, Result<(), (String, String)>> {
        Box::pin(async move {
            EtcdClient::put(self, key, value)
                .await
                .map_err(|s| (format!("{:?}", s.code()).to_uppercase(), s.message().to_string()))
        })
    }

    fn put_batch(&self, pairs: Vec<(Vec<u8>, Vec<u8>)>) -> BoxFuture<'_, anyhow::Result<()>> {
        Box::pin(async move { Ok(self.put_all(pairs).await?) })
    }
}

/// Runs the etcd side: cluster, load, idle move, loaded move.
pub async fn run(cfg: &EtcdBenchConfig, status: &Arc<Status>) -> anyhow::Result<EtcdRun> {
    std::fs::create_dir_all(&cfg.dir)?;
    status.phase("etcd-cluster");
    let plans: Vec<MemberPlan> = (1..=3).map(|n| MemberPlan::new(&cfg.dir, n)).collect::<anyhow::Result<_>>()?;
    let initial: Vec<String> = plans.iter().map(|p| format!("{}={}", p.name, p.peer_url())).collect();
    let mut members = Vec::new();
    for plan in plans {
        members.push(plan.start(&cfg.binary, &initial.join(","), false).await?);
    }
    let leader_id = wait_leader(&members).await?;
    for m in members.iter_mut() {
        m.id = m.client.status().await?.header.map(|h| h.member_id).unwrap_or(0);
    }
    let leader = members.iter().find(|m| m.id == leader_id).context("the leader among the members")?;
    let leader_client = leader.client.clone();
    let leader_name = leader.name.clone();
    let version = leader_client.status().await?.version;
    eprintln!("[etcd] {} members up, leader {leader_name}, etcd {version}", members.len());

    status.phase("etcd-load");
    let load = move_load::load_shard(&leader_client, cfg.shard_bytes, cfg.value_bytes, cfg.load_tasks, status).await?;
    eprintln!("[etcd-load] {:.1} MB in {:.1} s ({:.1} MB/s)", load.bytes as f64 / 1e6, load.seconds, load.mb_per_sec);
    status.phase("etcd-fill-log");
    let leader_dir = members.iter().find(|m| m.id == leader_id).map(|m| m.dir.clone()).context("leader dir")?;
    let snap_dir = leader_dir.join("member").join("snap");
    let has_snapshot = || {
        std::fs::read_dir(&snap_dir)
            .map(|d| d.flatten().any(|e| e.path().extension().is_some_and(|x| x == "snap")))
            .unwrap_or(false)
    };
    let fill = move_load::fill_log(&leader_client, FILL_PUTS_MAX, FILL_TIMEOUT, has_snapshot)
        .await
        .context("making etcd's leader write a snapshot")?;
    let fill_puts = fill.puts;
    eprintln!("[etcd-fill-log] {fill_puts} puts: the leader has written a snapshot");
    status.phase("etcd-settle");
    settle(&members, &leader_client).await?;
    let leader_db_bytes = leader_client.status().await?.db_size.max(0) as u64;

    // The idle move: a new learner, then the lowest-id follower removed.
    status.phase("etcd-idle-move");
    let source = members.iter().filter(|m| m.id != leader_id).map(|m| m.id).min().context("a follower")?;
    let (idle, joined) = move_member(cfg, &mut members, &leader_client, leader_id, 4, source).await?;
    eprintln!("[etcd-idle-move] done in {:.2} s ({} snapshot(s) sent)", idle.seconds, idle.snapshots_sent);
    members.retain(|m| m.id != source);
    members.push(joined);

    // The loaded move: another new member, the one just added removed.
    status.phase("etcd-writers");
    let mut clients: Vec<Arc<dyn KvPut>> = Vec::with_capacity(cfg.writers);
    let leader_addr = members.iter().find(|m| m.id == leader_id).context("the leader")?.client_addr;
    for _ in 0..cfg.writers {
        clients.push(Arc::new(EtcdClient::new(leader_addr)?));
    }
    let writers = Writers::start_with(clients, cfg.value_bytes, status.clone());
    let before_from = cfg.warmup;
    let before_to = cfg.warmup + cfg.before;
    tokio::time::sleep_until(writers.t0 + before_to).await;
    status.phase("etcd-loaded-move");
    let move_start = writers.now();
    let newest = members.last().map(|m| m.id).context("the member added by the idle move")?;
    let source = if newest != leader_id {
        newest
    } else {
        members.iter().filter(|m| m.id != leader_id).map(|m| m.id).min().context("a follower")?
    };
    let moved = move_member(cfg, &mut members, &leader_client, leader_id, 5, source).await;
    let after_from = writers.now();
    status.phase("etcd-after");
    tokio::time::sleep(cfg.after).await;
    let after_to = writers.now();
    let log = writers.stop().await?;
    let (moved, _joined) = moved.context("etcd's loaded move")?;
    eprintln!("[etcd-loaded-move] done in {:.2} s ({} snapshot(s) sent)", moved.seconds, moved.snapshots_sent);
    let move_end = move_start + Duration::from_secs_f64(moved.seconds);
    let before = move_load::window(&log, before_from, before_to);
    let during = move_load::window(&log, move_start, move_end);
    let after = move_load::window(&log, after_from, after_to);
    let (throughput_loss_percent, p99_factor) = move_load::loss(&before, &during);
    status.phase("etcd-shutdown");
    Ok(EtcdRun {
        version,
        load,
        fill_puts,
        leader_db_bytes,
        idle,
        loaded: EtcdLoadedMove { result: moved, before, during, after, throughput_loss_percent, p99_factor },
    })
}

/// Waits until every member reports the same leader; returns its id.
async fn wait_leader(members: &[Member]) -> anyhow::Result<u64> {
    let deadline = Instant::now() + START_TIMEOUT;
    loop {
        let mut leaders = Vec::new();
        for m in members {
            leaders.push(m.client.status().await.ok().map(|s| s.leader).unwrap_or(0));
        }
        if leaders[0] != 0 && leaders.iter().all(|l| *l == leaders[0]) {
            return Ok(leaders[0]);
        }
        anyhow::ensure!(
            Instant::now() < deadline,
            "etcd elected no leader in {START_TIMEOUT:?} (logs in the bench dir)"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Waits until every member has applied the leader's committed index.
async fn settle(members: &[Member], leader: &EtcdClient) -> anyhow::Result<()> {
    let target = leader.status().await?.raft_index;
    let deadline = Instant::now() + SETTLE_TIMEOUT;
    for m in members {
        while m.client.status().await?.raft_applied_index < target {
            anyhow::ensure!(Instant::now() < deadline, "{} did not apply index {target}", m.name);
            tokio::time::sleep(Duration::from_millis(POLL_MS)).await;
        }
    }
    Ok(())
}

/// Adds member `n` as a learner, starts it, promotes it once etcd allows, then
/// removes `source` (stopping its process). Returns the move and the new member.
async fn move_member(
    cfg: &EtcdBenchConfig,
    members: &mut [Member],
    leader: &EtcdClient,
    leader_id: u64,
    n: usize,
    source: u64,
) -> anyhow::Result<(EtcdMove, Member)> {
    let leader_addr = members.iter().find(|m| m.id == leader_id).context("the leader")?.client_addr;
    let snapshots_before = snapshots_sent(leader_addr).await?;
    let plan = MemberPlan::new(&cfg.dir, n)?;
    let mut initial: Vec<String> = members.iter().map(|m| format!("{}={}", m.name, m.peer_url())).collect();
    initial.push(format!("{}={}", plan.name, plan.peer_url()));

    // etcd refuses a member change ("unhealthy cluster") until the leader has been
    // connected to every voter for 5 s (its HealthInterval); that wait is not part
    // of the move, so the clock starts at the attempt etcd accepts.
    let refused_since = Instant::now();
    let (t0, id) = loop {
        let t0 = Instant::now();
        match leader.add_learner(plan.peer_url()).await {
            Ok(id) => break (t0, id),
            Err(e) if e.code() == tonic::Code::Unavailable && refused_since.elapsed() < UNHEALTHY_RETRY => {
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Err(e) => return Err(anyhow::anyhow!("MemberAdd: {e}")),
        }
    };
    let learner_added_s = t0.elapsed().as_secs_f64();
    let mut joined = plan.start(&cfg.binary, &initial.join(","), true).await?;
    joined.id = id;
    let learner_started_s = t0.elapsed().as_secs_f64();
    let mut promote_refusals = 0u64;
    loop {
        match leader.promote(id).await {
            Ok(()) => break,
            Err(e) if t0.elapsed() < MOVE_TIMEOUT => {
                promote_refusals += 1;
                if promote_refusals == 1 {
                    eprintln!("[etcd] promote refused while the learner catches up: {}", e.message());
                }
                tokio::time::sleep(Duration::from_millis(POLL_MS)).await;
            }
            Err(e) => return Err(anyhow::anyhow!("MemberPromote: {e}")),
        }
    }
    let promoted_s = t0.elapsed().as_secs_f64();
    leader.remove(source).await.context("MemberRemove")?;
    let removed_s = t0.elapsed().as_secs_f64();
    let snapshots_sent = snapshots_sent(leader_addr).await?.saturating_sub(snapshots_before);
    if let Some(m) = members.iter_mut().find(|m| m.id == source) {
        // A removed member stops by itself; this only makes sure.
        let _ = m.child.kill().await;
    }
    let moved = EtcdMove {
        seconds: removed_s,
        learner_added_s,
        learner_started_s,
        promoted_s,
        promote_refusals,
        removed_s,
        snapshots_sent,
    };
    Ok((moved, joined))
}

/// The member's `etcd_network_snapshot_send_success` counter (summed over its
/// peers), from its Prometheus endpoint on the client port.
async fn snapshots_sent(addr: SocketAddr) -> anyhow::Result<u64> {
    let text = http_get(addr, "/metrics").await?;
    Ok(sum_series(&text, "etcd_network_snapshot_send_success") as u64)
}

/// The sum of every sample of the series `name` in a Prometheus text page.
fn sum_series(text: &str, name: &str) -> f64 {
    text.lines()
        .filter(|l| l.strip_prefix(name).is_some_and(|rest| rest.starts_with(['{', ' '])))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// A plain HTTP/1.0 GET on loopback (etcd serves its metrics over HTTP/1).
async fn http_get(addr: SocketAddr, path: &str) -> anyhow::Result<String> {
    /// Metrics pages are tens of KB; refuse anything absurd.
    const MAX_BYTES: u64 = 16 << 20;
    let mut stream = tokio::time::timeout(Duration::from_secs(5), tokio::net::TcpStream::connect(addr)).await??;
    stream.write_all(format!("GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n").as_bytes()).await?;
    let mut body = String::new();
    tokio::time::timeout(Duration::from_secs(10), (&mut stream).take(MAX_BYTES).read_to_string(&mut body)).await??;
    let (head, rest) = body.split_once("\r\n\r\n").context("an HTTP response")?;
    anyhow::ensure!(
        head.starts_with("HTTP/1.") && head.contains(" 200 "),
        "GET {path}: {}",
        head.lines().next().unwrap_or("")
    );
    Ok(rest.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_series_is_summed_over_its_labels_only() {
        let page = "# HELP etcd_network_snapshot_send_success x\n\
                    etcd_network_snapshot_send_success{To=\"a\"} 2\n\
                    etcd_network_snapshot_send_success{To=\"b\"} 1\n\
                    etcd_network_snapshot_send_successes_other 9\n\
                    etcd_network_snapshot_send_success 4\n";
        assert_eq!(sum_series(page, "etcd_network_snapshot_send_success"), 7.0);
    }

    #[test]
    fn a_binary_is_found_on_the_path_or_not_at_all() {
        assert!(find_binary("sh").is_some());
        assert!(find_binary("no-such-binary-cairn").is_none());
        assert!(find_binary("/no/such/dir/etcd").is_none());
    }
}
