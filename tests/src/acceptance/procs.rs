//! The processes of an acceptance run: the `cairn` and `cairnctl` binaries, a
//! `cairn playground` child and `cairn server` nodes that join it.
//!
//! No process outlives the run: a [`Playground`] dropped while running (an error,
//! a panic, Ctrl-C) SIGKILLs itself and every node it listed, and a [`JoinedNode`]
//! is spawned with `kill_on_drop`. Node pids from `playground.json` are killed only
//! while their command line still names this run's directory, so a reused pid is
//! never hit.

use std::collections::BTreeSet;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Stdio};
use std::time::{Duration, Instant};

use anyhow::Context;
use serde::Deserialize;

/// Ports are drawn from here: below Linux's ephemeral range (32768-60999), so
/// outgoing connections do not take them meanwhile.
const PORT_RANGE: std::ops::Range<u16> = 20_000..32_000;
const PORT_ATTEMPTS_MAX: usize = 50;
/// The playground waits up to 60 s for its cluster before it writes its listing.
const PLAYGROUND_LISTING_TIMEOUT: Duration = Duration::from_secs(120);
/// The playground stops its nodes one after the other, each within 15 s.
const PLAYGROUND_STOP_TIMEOUT: Duration = Duration::from_secs(90);
const NODE_STOP_TIMEOUT: Duration = Duration::from_secs(30);
/// The node log filter when `RUST_LOG` is not set (the playground's default).
const NODE_LOG_DEFAULT: &str = "info,openraft=error,h2=warn";

/// Where the `cairn` and `cairnctl` binaries are.
#[derive(Clone, Debug)]
pub struct Binaries {
    pub cairn: PathBuf,
    pub cairnctl: PathBuf,
}

impl Binaries {
    /// The binaries next to this executable (the same target directory and
    /// profile). With `build`, first runs `cargo build -p cairn-node --bins` in
    /// that profile and target directory, so they match the current sources.
    pub fn locate(build: bool) -> anyhow::Result<Binaries> {
        let exe = std::env::current_exe().context("locating this executable")?;
        let dir = exe.parent().context("this executable has no directory")?.to_path_buf();
        if build {
            build_node_bins(&dir)?;
        }
        let bins = Binaries { cairn: dir.join("cairn"), cairnctl: dir.join("cairnctl") };
        for bin in [&bins.cairn, &bins.cairnctl] {
            anyhow::ensure!(
                bin.is_file(),
                "{} is missing: build it with `cargo build --release -p cairn-node --bins` (or drop --no-build)",
                bin.display()
            );
        }
        Ok(bins)
    }
}

/// `cargo build -p cairn-node --bins` into the target directory and profile `bin_dir` belongs to.
fn build_node_bins(bin_dir: &Path) -> anyhow::Result<()> {
    let profile = bin_dir.file_name().and_then(|n| n.to_str()).context("the executable's directory has no name")?;
    let target = bin_dir.parent().context("the executable is not in a target directory")?;
    let workspace = Path::new(env!("CARGO_MANIFEST_DIR")).parent().context("the tests crate has no parent")?;
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let mut command = std::process::Command::new(cargo);
    command.args(["build", "--quiet", "-p", "cairn-node", "--bins"]);
    match profile {
        "debug" => {}
        "release" => {
            command.arg("--release");
        }
        other => {
            command.args(["--profile", other]);
        }
    }
    eprintln!("building cairn and cairnctl ({profile}) ...");
    let status = command
        .current_dir(workspace)
        .env("CARGO_TARGET_DIR", target)
        .status()
        .context("running cargo build -p cairn-node --bins")?;
    anyhow::ensure!(status.success(), "cargo build -p cairn-node --bins failed: {status}");
    Ok(())
}

/// Hands out loopback ports that were free when asked, never the same one twice.
#[derive(Debug, Default)]
pub struct Ports {
    given: BTreeSet<u16>,
}

impl Ports {
    /// `count` consecutive free ports; returns the first.
    pub fn consecutive(&mut self, count: u16) -> anyhow::Result<u16> {
        for _ in 0..PORT_ATTEMPTS_MAX {
            let base = rand::random_range(PORT_RANGE.start..PORT_RANGE.end - count);
            let range = base..base + count;
            if range.clone().any(|p| self.given.contains(&p)) {
                continue;
            }
            let bound: Result<Vec<TcpListener>, _> =
                range.clone().map(|p| TcpListener::bind(("127.0.0.1", p))).collect();
            if bound.is_ok() {
                self.given.extend(range);
                return Ok(base);
            }
        }
        anyhow::bail!("no {count} consecutive free loopback ports in {PORT_RANGE:?} after {PORT_ATTEMPTS_MAX} tries")
    }

    pub fn one(&mut self) -> anyhow::Result<u16> {
        self.consecutive(1)
    }
}

/// `playground.json`, as the playground writes it.
#[derive(Clone, Debug, Deserialize)]
pub struct PlaygroundFile {
    pub pd: Vec<String>,
    pub nodes: Vec<ListedNode>,
}

#[derive(Clone, Debug, Deserialize)]
pub struct ListedNode {
    pub id: u64,
    pub pid: u32,
    pub addr: String,
    pub pd_member: bool,
    pub data_dir: PathBuf,
    pub log: PathBuf,
}

/// A running `cairn playground`.
pub struct Playground {
    child: tokio::process::Child,
    dir: PathBuf,
    pub listing: PlaygroundFile,
    pub log: PathBuf,
    stopped: bool,
}

impl Playground {
    /// Starts `cairn playground --nodes N --initial-shards S --data-dir DIR
    /// --base-port P` (output to `DIR/playground.log`) and waits for its
    /// `playground.json`.
    pub async fn start(
        bins: &Binaries,
        dir: &Path,
        nodes: u32,
        shards: u32,
        base_port: u16,
    ) -> anyhow::Result<Playground> {
        std::fs::create_dir_all(dir)?;
        let log = dir.join("playground.log");
        let log_file = std::fs::File::create(&log)?;
        let child = tokio::process::Command::new(&bins.cairn)
            .arg("playground")
            .args(["--nodes", &nodes.to_string(), "--initial-shards", &shards.to_string()])
            .arg("--data-dir")
            .arg(dir)
            .args(["--base-port", &base_port.to_string()])
            .env("NO_COLOR", "1")
            .stdin(Stdio::null())
            .stdout(Stdio::from(log_file.try_clone()?))
            .stderr(Stdio::from(log_file))
            .kill_on_drop(true)
            .spawn()
            .with_context(|| format!("starting {} playground", bins.cairn.display()))?;
        let listing_path = dir.join("playground.json");
        let mut playground = Playground {
            child,
            dir: dir.to_path_buf(),
            listing: PlaygroundFile { pd: Vec::new(), nodes: Vec::new() },
            log,
            stopped: false,
        };
        let deadline = Instant::now() + PLAYGROUND_LISTING_TIMEOUT;
        loop {
            if let Ok(text) = std::fs::read(&listing_path)
                && let Ok(listing) = serde_json::from_slice::<PlaygroundFile>(&text)
            {
                playground.listing = listing;
                return Ok(playground);
            }
            if let Some(status) = playground.child.try_wait()? {
                playground.stopped = true;
                anyhow::bail!("the playground exited with {status}; see {}", playground.log.display());
            }
            anyhow::ensure!(
                Instant::now() < deadline,
                "the playground wrote no {} within {PLAYGROUND_LISTING_TIMEOUT:?}; see {}",
                listing_path.display(),
                playground.log.display()
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// The PD members' addresses, comma separated (what `--pd` takes).
    pub fn pd(&self) -> String {
        self.listing.pd.join(",")
    }

    /// Whether the playground process itself still runs.
    pub fn running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    /// SIGTERM: the playground stops every node cleanly (each flushes and exits
    /// 0), then exits. Returns its exit status.
    pub async fn stop(&mut self) -> anyhow::Result<ExitStatus> {
        if let Some(pid) = self.child.id() {
            signal(pid, "TERM")?;
        }
        let status = match tokio::time::timeout(PLAYGROUND_STOP_TIMEOUT, self.child.wait()).await {
            Ok(status) => status?,
            Err(_) => {
                self.kill_nodes();
                self.child.kill().await?;
                anyhow::bail!(
                    "the playground did not stop within {PLAYGROUND_STOP_TIMEOUT:?}; killed it and its nodes"
                );
            }
        };
        self.stopped = true;
        // The playground waits for its nodes; make sure none is left anyway.
        let left: Vec<u32> = self.listing.nodes.iter().map(|n| n.pid).filter(|&p| names_dir(p, &self.dir)).collect();
        anyhow::ensure!(left.is_empty(), "playground nodes still running after it exited: pids {left:?}");
        Ok(status)
    }

    /// SIGKILLs every listed node that still runs from this run's directory.
    fn kill_nodes(&self) {
        for node in &self.listing.nodes {
            if names_dir(node.pid, &self.dir) {
                let _ = signal(node.pid, "KILL");
            }
        }
    }
}

impl Drop for Playground {
    fn drop(&mut self) {
        if !self.stopped {
            self.kill_nodes();
            // `kill_on_drop` kills the playground itself.
        }
    }
}

/// A `cairn server --pd ...` process that joined the cluster.
pub struct JoinedNode {
    child: tokio::process::Child,
    pub addr: String,
    pub data_dir: PathBuf,
    pub log: PathBuf,
    /// The id the PD gave it, once known.
    pub id: Option<u64>,
}

impl JoinedNode {
    /// Starts `cairn server --pd PD --listen ADDR --data-dir DIR`, its output in
    /// `DIR/node.log`; `RUST_LOG` is inherited (the playground's filter if unset).
    pub fn start(bins: &Binaries, pd: &str, addr: &str, data_dir: &Path) -> anyhow::Result<JoinedNode> {
        std::fs::create_dir_all(data_dir)?;
        let log = data_dir.join("node.log");
        let log_file = std::fs::OpenOptions::new().create(true).append(true).open(&log)?;
        let child = tokio::process::Command::new(&bins.cairn)
            .args(["server", "--pd", pd, "--listen", addr])
            .arg("--data-dir")
            .arg(data_dir)
            .env("RUST_LOG", std::env::var("RUST_LOG").unwrap_or_else(|_| NODE_LOG_DEFAULT.into()))
            .env("NO_COLOR", "1")
            .stdin(Stdio::null())
            .stdout(Stdio::from(log_file.try_clone()?))
            .stderr(Stdio::from(log_file))
            .kill_on_drop(true)
            .spawn()
            .with_context(|| format!("starting {} server --listen {addr}", bins.cairn.display()))?;
        Ok(JoinedNode { child, addr: addr.to_string(), data_dir: data_dir.to_path_buf(), log, id: None })
    }

    pub fn pid(&self) -> Option<u32> {
        self.child.id()
    }

    /// The exit status if the process has exited.
    pub fn exited(&mut self) -> Option<ExitStatus> {
        self.child.try_wait().ok().flatten()
    }

    /// SIGKILL, as a crash: nothing is flushed.
    pub async fn sigkill(&mut self) -> anyhow::Result<ExitStatus> {
        self.child.start_kill()?;
        Ok(self.child.wait().await?)
    }

    /// SIGTERM: the node flushes and exits 0. SIGKILL if it takes too long.
    pub async fn stop(&mut self) -> anyhow::Result<ExitStatus> {
        if let Some(status) = self.exited() {
            return Ok(status);
        }
        if let Some(pid) = self.child.id() {
            signal(pid, "TERM")?;
        }
        match tokio::time::timeout(NODE_STOP_TIMEOUT, self.child.wait()).await {
            Ok(status) => Ok(status?),
            Err(_) => {
                self.child.kill().await?;
                anyhow::bail!("node {} did not stop within {NODE_STOP_TIMEOUT:?} after SIGTERM; killed it", self.addr)
            }
        }
    }
}

/// Sends `kill -SIGNAL pid`.
pub fn signal(pid: u32, signal: &str) -> anyhow::Result<()> {
    let status = std::process::Command::new("kill")
        .args([format!("-{signal}"), pid.to_string()])
        .stderr(Stdio::null())
        .status()
        .context("running kill")?;
    anyhow::ensure!(status.success(), "kill -{signal} {pid} failed: {status}");
    Ok(())
}

/// Whether process `pid` runs with a command line that names `dir` (a zombie's
/// is empty).
fn names_dir(pid: u32, dir: &Path) -> bool {
    let needle = dir.to_string_lossy();
    std::fs::read(format!("/proc/{pid}/cmdline"))
        .map(|c| String::from_utf8_lossy(&c).contains(needle.as_ref()))
        .unwrap_or(false)
}

/// The last `lines` lines of a log file, for error reports.
pub fn tail(path: &Path, lines: usize) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}
