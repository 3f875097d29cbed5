//! `cairnctl` as a user runs it: one process per command, `--pd` and
//! `--output json`, the JSON read as documented in `client/src/cli.rs` (only
//! the fields used here; the contract allows more to be added).

use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

use anyhow::Context;
use serde::Deserialize;
use serde::de::DeserializeOwned;

/// Deadline of one `cairnctl` process (its own `--timeout` is 10 s).
const CTL_PROCESS_TIMEOUT: Duration = Duration::from_secs(30);

/// Runs `cairnctl --pd PD --output json ...`.
#[derive(Clone, Debug)]
pub struct Ctl {
    bin: PathBuf,
    pd: String,
}

/// What one `cairnctl` run printed and how it exited.
#[derive(Clone, Debug)]
pub struct CtlOutput {
    pub command: String,
    pub code: Option<i32>,
    pub stdout: String,
    pub stderr: String,
}

impl CtlOutput {
    pub fn success(&self) -> bool {
        self.code == Some(0)
    }
}

impl Ctl {
    pub fn new(bin: PathBuf, pd: &str) -> Ctl {
        Ctl { bin, pd: pd.to_string() }
    }

    /// Runs `cairnctl --pd PD --output json ARGS`, whatever its exit code.
    pub async fn run(&self, args: &[&str]) -> anyhow::Result<CtlOutput> {
        let command = format!("cairnctl --pd {} --output json {}", self.pd, args.join(" "));
        let child = tokio::process::Command::new(&self.bin)
            .args(["--pd", &self.pd, "--output", "json"])
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .with_context(|| format!("starting {command}"))?;
        let out = tokio::time::timeout(CTL_PROCESS_TIMEOUT, child.wait_with_output())
            .await
            .with_context(|| format!("{command} did not exit within {CTL_PROCESS_TIMEOUT:?}"))??;
        Ok(CtlOutput {
            command,
            code: out.status.code(),
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).trim().to_string(),
        })
    }

    /// Runs the command and reads its JSON output; a non-zero exit is an error
    /// carrying cairnctl's error line.
    pub async fn json<T: DeserializeOwned>(&self, args: &[&str]) -> anyhow::Result<T> {
        let out = self.run(args).await?;
        anyhow::ensure!(out.success(), "`{}` exited with {:?}: {}", out.command, out.code, out.stderr);
        serde_json::from_str(&out.stdout).with_context(|| format!("reading the JSON of `{}`", out.command))
    }

    pub async fn status(&self) -> anyhow::Result<StatusJson> {
        self.json(&["status"]).await
    }

    pub async fn nodes(&self) -> anyhow::Result<Vec<NodeJson>> {
        self.json(&["nodes"]).await
    }

    pub async fn shards(&self) -> anyhow::Result<Vec<ShardJson>> {
        self.json(&["shards"]).await
    }

    pub async fn operators(&self) -> anyhow::Result<Vec<OperatorJson>> {
        self.json(&["operators"]).await
    }

    pub async fn rebalance(&self) -> anyhow::Result<RebalanceJson> {
        self.json(&["rebalance", "status"]).await
    }
}

/// `status --output json`.
#[derive(Clone, Debug, Deserialize)]
pub struct StatusJson {
    pub pd_leader: Option<u64>,
    pub nodes_up: usize,
    pub nodes_total: usize,
    pub shards: usize,
    pub under_replicated: usize,
}

/// One element of `nodes --output json`.
#[derive(Clone, Debug, Deserialize)]
pub struct NodeJson {
    pub id: u64,
    pub addr: String,
    pub state: String,
    pub replicas: u64,
    pub leaders: u64,
    pub size_bytes: u64,
    pub pd_member: bool,
}

/// One element of `shards --output json`.
#[derive(Clone, Debug, Deserialize)]
pub struct ShardJson {
    pub id: u64,
    pub replicas: Vec<ReplicaJson>,
    pub leader: Option<u64>,
    pub size_bytes: u64,
    pub keys: u64,
}

#[derive(Clone, Debug, Deserialize)]
pub struct ReplicaJson {
    pub node: u64,
    pub role: String,
}

impl ShardJson {
    pub fn voters(&self) -> Vec<u64> {
        self.replicas.iter().filter(|r| r.role == "voter").map(|r| r.node).collect()
    }

    pub fn learners(&self) -> Vec<u64> {
        self.replicas.iter().filter(|r| r.role != "voter").map(|r| r.node).collect()
    }

    pub fn on(&self, node: u64) -> bool {
        self.replicas.iter().any(|r| r.node == node)
    }
}

/// One element of `operators --output json`.
#[derive(Clone, Debug, Deserialize)]
pub struct OperatorJson {
    pub id: u64,
    pub shard: u64,
    pub kind: String,
    pub from: Option<u64>,
    pub to: Option<u64>,
    pub reason: String,
    pub step: String,
    pub age_ms: u64,
    pub snapshot_sent_bytes: u64,
    pub snapshot_total_bytes: u64,
    pub rollback: Option<String>,
}

impl OperatorJson {
    /// `s3 move 1->4 catch-up 12/40MB`, for progress lines.
    pub fn brief(&self) -> String {
        let kind = match self.kind.as_str() {
            "move-replica" => "move",
            "add-replica" => "add",
            "remove-replica" => "remove",
            "transfer-leader" => "leader",
            other => other,
        };
        let nodes = match (self.from, self.to) {
            (Some(f), Some(t)) => format!("{f}->{t}"),
            (Some(f), None) => format!("{f}->"),
            (None, Some(t)) => format!("->{t}"),
            (None, None) => String::new(),
        };
        let snapshot = if self.snapshot_total_bytes > 0 {
            format!(" {:.0}/{:.0}MB", self.snapshot_sent_bytes as f64 / 1e6, self.snapshot_total_bytes as f64 / 1e6)
        } else {
            String::new()
        };
        let rollback = self.rollback.as_ref().map(|r| format!(" ROLLBACK({r})")).unwrap_or_default();
        format!("s{} {kind} {nodes} {}{snapshot}{rollback}", self.shard, self.step)
    }
}

/// `rebalance status --output json`.
#[derive(Clone, Debug, Deserialize)]
pub struct RebalanceJson {
    pub balanced: bool,
    pub mean_replicas: f64,
    pub replica_spread: u64,
    pub leader_spread: u64,
    pub under_replicated: u64,
    pub misplaced: u64,
    pub operators: u64,
    pub nodes: Vec<NodeBalanceJson>,
}

#[derive(Clone, Debug, Deserialize)]
pub struct NodeBalanceJson {
    pub id: u64,
    pub state: String,
    pub replicas: u64,
    pub leaders: u64,
    pub size_bytes: u64,
}

impl RebalanceJson {
    /// `1:17 2:17 3:16 4:11 5:11` (replicas per node, `*` after a node not up).
    pub fn replica_counts(&self) -> String {
        let node = |n: &NodeBalanceJson| {
            let mark = if n.state == "up" { "" } else { "*" };
            format!("{}:{}{mark}", n.id, n.replicas)
        };
        self.nodes.iter().map(node).collect::<Vec<_>>().join(" ")
    }

    pub fn leader_counts(&self) -> String {
        self.nodes.iter().map(|n| format!("{}:{}", n.id, n.leaders)).collect::<Vec<_>>().join(" ")
    }
}
