//! `cairnctl`: the admin and data CLI of Cairn. The binary lives in the `cairn-node`
//! package (so `cargo run --bin cairnctl` works from the workspace root) and calls
//! [`main`].
//!
//! Where it talks:
//! - By default, to the placement driver: `--pd ADDRS` (env `CAIRN_PD`, a comma-separated
//!   list of PD members, default `127.0.0.1:7700`). The data verbs (`put`, `get`,
//!   `delete`, `scan`) go through a [`Client`] routed by the PD's shard map.
//! - `--node ADDR` (env `CAIRN_NODE`) switches the data verbs to one node instead, through
//!   a [`DirectClient`] seeded there (no PD needed). `node-shards` always asks the nodes
//!   (through `--node`, default `127.0.0.1:7700`).
//! - `status`, `nodes` and `shards` always ask the PD (`GetCluster`), and so do the
//!   administrative verbs: `config show|set`, `shard move`, `leader transfer`,
//!   `node drain|activate|remove`, `operators` and `rebalance status` (`--node` does
//!   not apply to them).
//!
//! Keys on the command line are UTF-8 strings. Keys and range bounds are printed with
//! [`display_key`]: the UTF-8 text when every character is printable, else `0x` followed
//! by lowercase hex (so a text key that itself starts with `0x` and a binary key can look
//! alike); an empty range end means "to the end of the key space".
//!
//! Contract with scripts:
//! - Results go to stdout, as aligned tables (`--output table`, the default) or JSON
//!   (`--output json`, pretty-printed; a document's `value` is embedded as JSON, exactly
//!   as stored).
//! - Failures print one line `error: <message>` to stderr. Exit code 0 on success, 1 when
//!   the key was not found (`get`, `delete`; stderr says `error: not found: KEY`), 2 on
//!   any other error. The administrative verbs print the API error as it is, so their
//!   line is `error: CODE: text` with the stable code (`INVALID_ARGUMENT`, `UNAVAILABLE`,
//!   ...) first.
//! - Documents are validated as JSON before they are sent, and sent as the text given
//!   (only surrounding JSON whitespace is trimmed), never re-encoded. A document (from
//!   the argument or from stdin with `-`) may be at most [`VALUE_BYTES_MAX`] (1 MiB).
//!
//! JSON output, stable (fields may be added, never renamed or removed):
//! - `put`: `{"key": "k", "version": 12}`
//! - `get`: `{"key": "k", "version": 12, "created_at_ms": 1700000000000,
//!   "updated_at_ms": 1700000000000, "value": <the stored JSON>}`; `scan`: an array of
//!   such objects, in key order.
//! - `delete`: `{"key": "k", "deleted": true, "version": 13}` (`version`: the log index of
//!   the delete).
//! - `status`: `{"pd_leader": 1 | null, "pd_leader_addr": "host:port" | null,
//!   "nodes_up": 3, "nodes_total": 3, "shards": 4, "under_replicated": 0,
//!   "cluster_id": 7}`. `nodes_total` counts the nodes not removed; `nodes_up` those in
//!   state `up`; `under_replicated` the shards with fewer live voters than the
//!   replication factor.
//! - `nodes`: `[{"id": 1, "addr": "host:port", "state": "up" | "down" | "draining" |
//!   "removed", "replicas": 4, "leaders": 2, "size_bytes": 1024, "db_bytes": 65536,
//!   "pd_member": true, "last_heartbeat_ms_ago": 120 | null}]` (`null`: not heard from
//!   since the current PD leader took over).
//! - `shards`: `[{"id": 1, "start": "", "end": "m", "epoch": {"conf_ver": 1,
//!   "version": 1}, "replicas": [{"node": 1, "addr": "host:port", "role": "voter" |
//!   "learner"}], "leader": 1 | null, "size_bytes": 1024, "keys": 10}]`, in key order.
//! - `node-shards`: `[{"id", "start", "end", "epoch", "role", "leader", "leader_addr",
//!   "applied_index", "replicas"}]`: each shard as the most trusted replica reports it.
//! - `config show` and `config set NAME VALUE` (the settings after the change):
//!   `{"replication_factor": 3, "max_node_down_time_ms": 1800000, "max_moves_per_node": 2,
//!   "max_operators": 16, "snapshot_bytes_per_sec": 268435456, "operator_timeout_ms":
//!   600000, "balance_bytes_tolerance_percent": 25, "split_size_bytes": 100663296,
//!   "split_keys": 1000000}`.
//! - `operators`: `[{"id": 17, "shard": 3, "kind": "move-replica" | "add-replica" |
//!   "remove-replica" | "transfer-leader", "from": 1 | null, "to": 4 | null, "reason":
//!   "admin", "step": "catch-up", "age_ms": 1500, "snapshot_sent_bytes": 10485760,
//!   "snapshot_total_bytes": 41943040, "rollback": "target down" | null}]` (`from`/`to`:
//!   null when the kind has no such node; snapshot bytes 0 of 0 when none is in flight;
//!   `rollback`: why the operator is being rolled back). `shard move` and `leader
//!   transfer` print the operator they created as one such object.
//! - `node drain|activate|remove ID`: the node afterwards, as one element of `nodes`.
//! - `rebalance status`: `{"balanced": false, "mean_replicas": 4.0, "mean_leaders": 1.33,
//!   "mean_size_bytes": 419430400, "replica_spread": 3, "leader_spread": 2,
//!   "under_replicated": 1, "misplaced": 1, "operators": 2, "nodes": [{"id": 1, "state":
//!   "up", "replicas": 6, "leaders": 3, "size_bytes": 629145600, "replicas_vs_mean": 2.0,
//!   "leaders_vs_mean": 1.67, "size_vs_mean_percent": 50.0 | null}]}`, nodes by id. The
//!   means are over the nodes in state `up` (the PD's `mean_replicas`); `*_vs_mean` is the
//!   node's value minus the mean, `size_vs_mean_percent` its bytes' distance from the
//!   mean in percent (null when the mean is 0). Fractions are rounded to 2 decimals.

use std::io::{Read, Write};
use std::process::ExitCode;
use std::time::Duration;

use crate::client::SCAN_PAGE_DOCS_DEFAULT;
use crate::config::VALUE_BYTES_MAX;
use crate::{Client, ClientConfig, DirectClient, PdClient, ScanOptions};
use anyhow::{Context, bail};
use cairn_proto::{
    AdminRequest, ClusterSettings, ClusterStatus, Document, Epoch, KeyRange, NodeBalance, NodeId, NodeInfo, NodeState,
    OperatorInfo, OperatorKind, RaftRole, RebalanceStatus, ReplicaRole, SETTING_NAMES, ShardId, ShardInfo, ShardStatus,
    display_key, display_replicas,
};
use clap::builder::{PossibleValue, PossibleValuesParser};
use clap::{Parser, Subcommand, ValueEnum};
use futures::TryStreamExt;
use serde::Serialize;
use serde_json::value::RawValue;
use tokio::time::Instant;

/// The node `node-shards` asks when `--node` is not given.
const DEFAULT_NODE: &str = "127.0.0.1:7700";

/// Recent PD events `status` shows in table output.
const STATUS_EVENTS: u32 = 5;

#[derive(Debug, Parser)]
#[command(name = "cairnctl", version, about = "Read, write and inspect a Cairn cluster")]
struct Cli {
    /// Placement-driver members to talk to (host:port, comma separated).
    #[arg(long, global = true, env = "CAIRN_PD", default_value = "127.0.0.1:7700")]
    pd: String,
    /// Send put/get/delete/scan to this node (host:port) without the placement driver.
    #[arg(long, global = true, env = "CAIRN_NODE")]
    node: Option<String>,
    /// Output format.
    #[arg(long, global = true, value_enum, default_value_t = Output::Table)]
    output: Output,
    /// Deadline of the whole command, e.g. "10s", "500ms" or plain seconds ("2.5").
    #[arg(long, global = true, value_parser = parse_timeout, default_value = "10s")]
    timeout: Duration,
    #[command(subcommand)]
    command: Command,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum Output {
    Table,
    Json,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Store a JSON document at KEY.
    Put {
        key: String,
        /// The document as JSON text, or "-" to read it from stdin (at most 1 MiB).
        #[arg(value_name = "VALUE")]
        json: String,
        /// Write only if the document is at this version (0: only if it does not exist).
        #[arg(long)]
        expected_version: Option<u64>,
    },
    /// Print the document at KEY with its version (exit code 1 if there is none).
    Get { key: String },
    /// Delete the document at KEY (exit code 1 if there was none).
    Delete {
        key: String,
        /// Delete only if the document is at this version.
        #[arg(long)]
        expected_version: Option<u64>,
    },
    /// List documents in key order.
    Scan {
        /// Only keys starting with this prefix.
        #[arg(long, conflicts_with_all = ["start", "end"])]
        prefix: Option<String>,
        /// Inclusive start key (default: the first key).
        #[arg(long)]
        start: Option<String>,
        /// Exclusive end key (default: no upper bound).
        #[arg(long)]
        end: Option<String>,
        /// The most documents to print.
        #[arg(long, default_value_t = 100)]
        limit: usize,
    },
    /// Summarise the cluster: PD leader, nodes up, shards, under-replicated shards.
    Status,
    /// List the nodes as the placement driver sees them.
    Nodes,
    /// List the shards as the placement driver sees them: range, epoch, replicas, leader, size.
    Shards,
    /// List the shards as the nodes report them (through --node), without the placement driver.
    NodeShards,
    /// Show or change the cluster settings.
    Config {
        #[command(subcommand)]
        verb: ConfigVerb,
    },
    /// Move a shard's replica from one node to another.
    Shard {
        #[command(subcommand)]
        verb: ShardVerb,
    },
    /// Hand a shard's leadership to another node.
    Leader {
        #[command(subcommand)]
        verb: LeaderVerb,
    },
    /// Drain, re-activate or remove a node.
    Node {
        #[command(subcommand)]
        verb: NodeVerb,
    },
    /// List the operators in flight: shard, kind, step, age, snapshot progress.
    Operators,
    /// Show how far the cluster is from balanced.
    Rebalance {
        #[command(subcommand)]
        verb: RebalanceVerb,
    },
}

#[derive(Debug, Subcommand)]
enum ConfigVerb {
    /// Print every cluster setting.
    Show,
    /// Change one cluster setting; prints every setting afterwards.
    Set {
        /// The setting to change.
        #[arg(value_parser = setting_names())]
        name: String,
        /// Its new value, e.g. "3", "30m", "64MiB" (at most 256 bytes).
        value: String,
    },
}

#[derive(Debug, Subcommand)]
enum ShardVerb {
    /// Move SHARD's replica on one node to another (the new replica is filled first,
    /// then swapped in). Prints the operator it started.
    Move {
        shard: u64,
        /// The node whose replica leaves.
        #[arg(long, value_name = "NODE")]
        from: u64,
        /// The node that gets the new replica.
        #[arg(long, value_name = "NODE")]
        to: u64,
    },
}

#[derive(Debug, Subcommand)]
enum LeaderVerb {
    /// Hand SHARD's leadership to a node holding a voter. Prints the operator it started.
    Transfer {
        shard: u64,
        /// The node to lead the shard.
        #[arg(long, value_name = "NODE")]
        to: u64,
    },
}

#[derive(Debug, Subcommand)]
enum NodeVerb {
    /// Move every replica and leader off the node.
    Drain { id: u64 },
    /// Back to normal (ends a drain).
    Activate { id: u64 },
    /// Forget the node (refused while it still holds replicas).
    Remove { id: u64 },
}

#[derive(Debug, Subcommand)]
enum RebalanceVerb {
    /// Replicas, leaders and bytes per node against the mean; what is left to do.
    Status,
}

/// The names `config set` accepts, with their help.
fn setting_names() -> PossibleValuesParser {
    PossibleValuesParser::new(SETTING_NAMES.iter().map(|(name, help)| PossibleValue::new(*name).help(*help)))
}

/// How a command that did not fail ended.
enum Outcome {
    Done,
    NotFound(String),
}

/// Entry point of the `cairnctl` binary.
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    init_logging();
    let runtime = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(err) => return fail(&format!("cannot start the async runtime: {err}")),
    };
    match runtime.block_on(run(cli)) {
        Ok(Outcome::Done) => ExitCode::SUCCESS,
        Ok(Outcome::NotFound(key)) => {
            eprintln!("error: not found: {key}");
            ExitCode::from(1)
        }
        // A closed stdout (`cairnctl scan | head`) is not worth a complaint.
        Err(err) if is_broken_pipe(&err) => ExitCode::SUCCESS,
        Err(err) => fail(&format!("{err:#}")),
    }
}

fn fail(message: &str) -> ExitCode {
    // Keep the promise of one line even if a message carries newlines.
    eprintln!("error: {}", message.replace('\n', " "));
    ExitCode::from(2)
}

fn is_broken_pipe(err: &anyhow::Error) -> bool {
    err.downcast_ref::<std::io::Error>().is_some_and(|e| e.kind() == std::io::ErrorKind::BrokenPipe)
}

/// Logs go to stderr; `RUST_LOG=debug` shows every retry.
fn init_logging() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn"));
    tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr).init();
}

/// Where the data verbs go: the PD-routed client, or one node.
enum Store {
    Pd(Client),
    Node(Box<DirectClient>),
}

impl Store {
    /// Opens the store the flags ask for: the node if `node` is set, else the PD.
    /// Connecting to the PD loads its shard map, which counts against `deadline`.
    async fn open(pd: &str, node: Option<&str>, config: ClientConfig, deadline: Instant) -> anyhow::Result<Store> {
        if let Some(node) = node {
            return Ok(Store::Node(Box::new(DirectClient::new(node, config)?)));
        }
        let client = Client::connect_with(pd, config)
            .await
            .with_context(|| format!("connecting to the placement driver at {pd}"))?;
        Ok(Store::Pd(client.with_operation_timeout(deadline.saturating_duration_since(Instant::now()))))
    }

    async fn put(&self, key: &[u8], value: &[u8], expected: Option<u64>) -> anyhow::Result<u64> {
        Ok(match self {
            Store::Pd(c) => c.put_raw(key, value, expected).await?,
            Store::Node(c) => c.put(key, value, expected).await?,
        })
    }

    async fn get(&self, key: &[u8]) -> anyhow::Result<Option<Document>> {
        Ok(match self {
            Store::Pd(c) => c.get(key).await?,
            Store::Node(c) => c.get(key).await?,
        })
    }

    async fn delete(&self, key: &[u8], expected: Option<u64>) -> anyhow::Result<(bool, u64)> {
        Ok(match self {
            Store::Pd(c) => c.delete_raw(key, expected).await?,
            Store::Node(c) => c.delete(key, expected).await?,
        })
    }

    async fn scan(&self, range: KeyRange, limit: usize) -> anyhow::Result<Vec<Document>> {
        Ok(match self {
            Store::Pd(c) => {
                let page_docs = u32::try_from(limit).unwrap_or(u32::MAX).min(SCAN_PAGE_DOCS_DEFAULT);
                c.scan_with(range, ScanOptions { limit: Some(limit), page_docs }).try_collect().await?
            }
            Store::Node(c) => c.scan_range(&range.start, &range.end, limit).await?,
        })
    }
}

async fn run(cli: Cli) -> anyhow::Result<Outcome> {
    let deadline = Instant::now() + cli.timeout;
    let config = ClientConfig {
        connect_timeout: cli.timeout.min(ClientConfig::default().connect_timeout),
        request_timeout: cli.timeout,
        operation_timeout: cli.timeout,
        ..ClientConfig::default()
    };
    let Cli { pd, node, output: out, command, .. } = cli;
    let open = |config| Store::open(&pd, node.as_deref(), config, deadline);
    match command {
        Command::Put { key, json, expected_version } => {
            // Read and check the document before connecting: bad input fails fast.
            let text = if json == "-" {
                read_document(std::io::stdin().lock(), "stdin")?
            } else {
                check_size(json, "the document")?
            };
            let text = validate_json(&text)?;
            let version = open(config).await?.put(key.as_bytes(), text.as_bytes(), expected_version).await?;
            let key = display_key(key.as_bytes());
            print(&match out {
                Output::Table => render_fields(&[("key", key), ("version", version.to_string())]),
                Output::Json => to_json(&serde_json::json!({ "key": key, "version": version }))?,
            })?;
        }
        Command::Get { key } => {
            let Some(doc) = open(config).await?.get(key.as_bytes()).await? else {
                return Ok(Outcome::NotFound(display_key(key.as_bytes())));
            };
            print(&match out {
                Output::Table => render_document(&doc),
                Output::Json => to_json(&DocumentJson::from(&doc))?,
            })?;
        }
        Command::Delete { key, expected_version } => {
            let (deleted, version) = open(config).await?.delete(key.as_bytes(), expected_version).await?;
            let key = display_key(key.as_bytes());
            if !deleted {
                return Ok(Outcome::NotFound(key));
            }
            print(&match out {
                Output::Table => {
                    render_fields(&[("key", key), ("deleted", "true".into()), ("version", version.to_string())])
                }
                Output::Json => to_json(&serde_json::json!({ "key": key, "deleted": true, "version": version }))?,
            })?;
        }
        Command::Scan { prefix, start, end, limit } => {
            let range = match prefix {
                Some(prefix) => KeyRange::prefix(prefix.as_bytes()),
                None => KeyRange::new(start.unwrap_or_default(), end.unwrap_or_default()),
            };
            let docs = open(config).await?.scan(range, limit).await?;
            print(&match out {
                Output::Table => render_scan(&docs),
                Output::Json => to_json(&docs.iter().map(DocumentJson::from).collect::<Vec<_>>())?,
            })?;
        }
        Command::Status => {
            let events = if out == Output::Table { STATUS_EVENTS } else { 0 };
            let status = cluster_status(&pd, config, events).await?;
            print(&match out {
                Output::Table => render_status(&status),
                Output::Json => to_json(&StatusJson::from(&status))?,
            })?;
        }
        Command::Nodes => {
            let status = cluster_status(&pd, config, 0).await?;
            print(&match out {
                Output::Table => render_nodes(&status.nodes),
                Output::Json => to_json(&status.nodes.iter().map(NodeJson::from).collect::<Vec<_>>())?,
            })?;
        }
        Command::Shards => {
            let status = cluster_status(&pd, config, 0).await?;
            let shards = sorted_shards(&status);
            print(&match out {
                Output::Table => render_pd_shards(&shards),
                Output::Json => to_json(&shards.into_iter().map(PdShardJson::from).collect::<Vec<_>>())?,
            })?;
        }
        Command::NodeShards => {
            let node = node.unwrap_or_else(|| DEFAULT_NODE.to_string());
            let shards = DirectClient::new(node, config)?.refresh().await?;
            print(&match out {
                Output::Table => render_node_shards(&shards),
                Output::Json => to_json(&shards.iter().map(ShardJson::from).collect::<Vec<_>>())?,
            })?;
        }
        Command::Config { verb } => {
            let settings = match verb {
                ConfigVerb::Show => cluster_status(&pd, config, 0).await?.settings,
                ConfigVerb::Set { name, value } => PdClient::from_list(&pd, config)?.set_setting(&name, &value).await?,
            };
            print(&match out {
                Output::Table => render_settings(&settings),
                Output::Json => to_json(&SettingsJson::from(&settings))?,
            })?;
        }
        Command::Shard { verb: ShardVerb::Move { shard, from, to } } => {
            let kind = OperatorKind::MoveReplica { from: NodeId(from), to: NodeId(to) };
            let operator = PdClient::from_list(&pd, config)?.create_operator(ShardId(shard), kind).await?;
            print(&render_operator(&operator, out)?)?;
        }
        Command::Leader { verb: LeaderVerb::Transfer { shard, to } } => {
            let kind = OperatorKind::TransferLeader { to: NodeId(to) };
            let operator = PdClient::from_list(&pd, config)?.create_operator(ShardId(shard), kind).await?;
            print(&render_operator(&operator, out)?)?;
        }
        Command::Node { verb } => {
            let (id, state) = match verb {
                NodeVerb::Drain { id } => (id, AdminRequest::Draining),
                NodeVerb::Activate { id } => (id, AdminRequest::Active),
                NodeVerb::Remove { id } => (id, AdminRequest::Removed),
            };
            let node = PdClient::from_list(&pd, config)?.set_node_state(NodeId(id), state).await?;
            print(&match out {
                Output::Table => render_nodes(std::slice::from_ref(&node)),
                Output::Json => to_json(&NodeJson::from(&node))?,
            })?;
        }
        Command::Operators => {
            let mut operators = PdClient::from_list(&pd, config)?.list_operators().await?;
            operators.sort_by_key(|o| (o.shard, o.id));
            print(&match out {
                Output::Table => render_operators(&operators),
                Output::Json => to_json(&operators.iter().map(OperatorJson::from).collect::<Vec<_>>())?,
            })?;
        }
        Command::Rebalance { verb: RebalanceVerb::Status } => {
            let status = PdClient::from_list(&pd, config)?.rebalance_status().await?;
            let report = RebalanceJson::from(&status);
            print(&match out {
                Output::Table => render_rebalance(&report),
                Output::Json => to_json(&report)?,
            })?;
        }
    }
    Ok(Outcome::Done)
}

/// The cluster as the PD leader sees it, with up to `events` recent events.
async fn cluster_status(pd: &str, config: ClientConfig, events: u32) -> anyhow::Result<ClusterStatus> {
    let client = PdClient::from_list(pd, config)?;
    client.cluster(events).await.with_context(|| format!("asking the placement driver at {pd}"))
}

/// Parses "10s", "500ms", "1m30s" (humantime) or plain seconds ("10", "2.5").
fn parse_timeout(s: &str) -> Result<Duration, String> {
    let d = match humantime_serde::re::humantime::parse_duration(s) {
        Ok(d) => d,
        Err(human_err) => match s.trim().parse::<f64>() {
            Ok(secs) => Duration::try_from_secs_f64(secs).map_err(|e| format!("{s:?}: {e}"))?,
            Err(_) => {
                return Err(format!("{s:?} is not a duration ({human_err}); try \"10s\" or \"500ms\""));
            }
        },
    };
    if d.is_zero() {
        return Err("the timeout must be positive".into());
    }
    Ok(d)
}

/// Reads a document of at most [`VALUE_BYTES_MAX`] bytes from `reader` (`source` names it
/// in errors).
fn read_document(reader: impl Read, source: &str) -> anyhow::Result<String> {
    let mut buf = Vec::new();
    // One byte more than allowed tells "exactly at the limit" from "over it".
    let limit = VALUE_BYTES_MAX as u64 + 1;
    reader.take(limit).read_to_end(&mut buf).with_context(|| format!("reading the document from {source}"))?;
    if buf.len() > VALUE_BYTES_MAX {
        bail!("{}", too_large(&format!("the document on {source}")));
    }
    String::from_utf8(buf).with_context(|| format!("the document on {source} is not UTF-8"))
}

/// `text` if it fits in [`VALUE_BYTES_MAX`] bytes.
fn check_size(text: String, what: &str) -> anyhow::Result<String> {
    if text.len() > VALUE_BYTES_MAX {
        bail!("{}", too_large(what));
    }
    Ok(text)
}

fn too_large(what: &str) -> String {
    format!("{what} is larger than 1 MiB ({VALUE_BYTES_MAX} bytes), the largest document a node accepts")
}

/// Checks that `text` is one JSON value and returns it without surrounding JSON
/// whitespace, otherwise unchanged.
fn validate_json(text: &str) -> anyhow::Result<&str> {
    let trimmed = text.trim_matches(|c| matches!(c, ' ' | '\t' | '\n' | '\r'));
    serde_json::from_str::<serde::de::IgnoredAny>(trimmed).context("invalid JSON document")?;
    Ok(trimmed)
}

fn print(text: &str) -> anyhow::Result<()> {
    let mut stdout = std::io::stdout().lock();
    stdout.write_all(text.as_bytes())?;
    stdout.flush()?;
    Ok(())
}

fn to_json<T: Serialize>(value: &T) -> anyhow::Result<String> {
    let mut s = serde_json::to_string_pretty(value)?;
    s.push('\n');
    Ok(s)
}

/// A stored value as JSON output: the stored text itself when it is valid JSON (it
/// always should be), else a string, so output stays valid JSON whatever the server sent.
#[derive(Serialize)]
#[serde(untagged)]
enum JsonText<'a> {
    Raw(&'a RawValue),
    Text(String),
}

impl<'a> JsonText<'a> {
    fn new(bytes: &'a [u8]) -> Self {
        match serde_json::from_slice::<&RawValue>(bytes) {
            Ok(raw) => JsonText::Raw(raw),
            Err(_) => JsonText::Text(String::from_utf8_lossy(bytes).into_owned()),
        }
    }
}

#[derive(Serialize)]
struct DocumentJson<'a> {
    key: String,
    version: u64,
    created_at_ms: u64,
    updated_at_ms: u64,
    value: JsonText<'a>,
}

impl<'a> From<&'a Document> for DocumentJson<'a> {
    fn from(d: &'a Document) -> Self {
        DocumentJson {
            key: display_key(&d.key),
            version: d.version,
            created_at_ms: d.created_at_ms,
            updated_at_ms: d.updated_at_ms,
            value: JsonText::new(&d.value),
        }
    }
}

#[derive(Serialize)]
struct ShardJson {
    id: u64,
    start: String,
    /// Empty means "to the end of the key space".
    end: String,
    epoch: Epoch,
    role: RaftRole,
    leader: Option<NodeId>,
    leader_addr: String,
    applied_index: u64,
    replicas: Vec<ReplicaJson>,
}

#[derive(Serialize)]
struct ReplicaJson {
    node: NodeId,
    addr: String,
    role: ReplicaRole,
}

impl From<&ShardStatus> for ShardJson {
    fn from(s: &ShardStatus) -> Self {
        let d = &s.descriptor;
        ShardJson {
            id: d.id.0,
            start: display_key(&d.range.start),
            end: display_key(&d.range.end),
            epoch: d.epoch,
            role: s.role,
            leader: s.leader,
            leader_addr: s.leader_addr.clone(),
            applied_index: s.applied_index,
            replicas: d
                .replicas
                .iter()
                .map(|r| ReplicaJson { node: r.node, addr: r.addr.clone(), role: r.role })
                .collect(),
        }
    }
}

/// `status --output json`; see the module docs for the contract.
#[derive(Debug, PartialEq, Serialize)]
struct StatusJson {
    pd_leader: Option<NodeId>,
    pd_leader_addr: Option<String>,
    nodes_up: usize,
    nodes_total: usize,
    shards: usize,
    under_replicated: usize,
    cluster_id: u64,
}

impl From<&ClusterStatus> for StatusJson {
    fn from(s: &ClusterStatus) -> Self {
        StatusJson {
            pd_leader: s.pd_leader.as_ref().map(|(id, _)| *id),
            pd_leader_addr: s.pd_leader.as_ref().map(|(_, addr)| addr.clone()),
            nodes_up: s.nodes.iter().filter(|n| n.state == NodeState::Up).count(),
            nodes_total: s.nodes.iter().filter(|n| n.state != NodeState::Removed).count(),
            shards: s.shards.len(),
            under_replicated: s.under_replicated(),
            cluster_id: s.cluster_id,
        }
    }
}

/// One element of `nodes --output json`.
#[derive(Serialize)]
struct NodeJson {
    id: NodeId,
    addr: String,
    state: NodeState,
    replicas: u64,
    leaders: u64,
    size_bytes: u64,
    db_bytes: u64,
    pd_member: bool,
    last_heartbeat_ms_ago: Option<u64>,
}

impl From<&NodeInfo> for NodeJson {
    fn from(n: &NodeInfo) -> Self {
        NodeJson {
            id: n.id,
            addr: n.addr.clone(),
            state: n.state,
            replicas: n.replicas,
            leaders: n.leaders,
            size_bytes: n.size_bytes,
            db_bytes: n.db_bytes,
            pd_member: n.pd_member,
            last_heartbeat_ms_ago: n.last_heartbeat_ms_ago,
        }
    }
}

/// One element of `shards --output json`.
#[derive(Serialize)]
struct PdShardJson {
    id: u64,
    start: String,
    /// Empty means "to the end of the key space".
    end: String,
    epoch: Epoch,
    replicas: Vec<ReplicaJson>,
    leader: Option<NodeId>,
    size_bytes: u64,
    keys: u64,
}

impl From<&ShardInfo> for PdShardJson {
    fn from(s: &ShardInfo) -> Self {
        let d = &s.route.descriptor;
        PdShardJson {
            id: d.id.0,
            start: display_key(&d.range.start),
            end: display_key(&d.range.end),
            epoch: d.epoch,
            replicas: d
                .replicas
                .iter()
                .map(|r| ReplicaJson { node: r.node, addr: r.addr.clone(), role: r.role })
                .collect(),
            leader: s.route.leader.as_ref().map(|(id, _)| *id),
            size_bytes: s.size_bytes,
            keys: s.key_count,
        }
    }
}

/// `config show|set --output json`.
#[derive(Debug, PartialEq, Serialize)]
struct SettingsJson {
    replication_factor: u32,
    max_node_down_time_ms: u64,
    max_moves_per_node: u32,
    max_operators: u32,
    snapshot_bytes_per_sec: u64,
    operator_timeout_ms: u64,
    balance_bytes_tolerance_percent: u32,
    split_size_bytes: u64,
    split_keys: u64,
}

impl From<&ClusterSettings> for SettingsJson {
    fn from(s: &ClusterSettings) -> Self {
        SettingsJson {
            replication_factor: s.replication_factor,
            max_node_down_time_ms: s.max_node_down_time_ms,
            max_moves_per_node: s.max_moves_per_node,
            max_operators: s.max_operators,
            snapshot_bytes_per_sec: s.snapshot_bytes_per_sec,
            operator_timeout_ms: s.operator_timeout_ms,
            balance_bytes_tolerance_percent: s.balance_bytes_tolerance_percent,
            split_size_bytes: s.split_size_bytes,
            split_keys: s.split_keys,
        }
    }
}

/// One element of `operators --output json`.
#[derive(Debug, PartialEq, Serialize)]
struct OperatorJson {
    id: u64,
    shard: ShardId,
    kind: &'static str,
    from: Option<NodeId>,
    to: Option<NodeId>,
    reason: String,
    step: String,
    age_ms: u64,
    snapshot_sent_bytes: u64,
    snapshot_total_bytes: u64,
    rollback: Option<String>,
}

impl From<&OperatorInfo> for OperatorJson {
    fn from(o: &OperatorInfo) -> Self {
        let (kind, from, to) = match o.kind {
            OperatorKind::MoveReplica { from, to } => ("move-replica", Some(from), Some(to)),
            OperatorKind::AddReplica { to } => ("add-replica", None, Some(to)),
            OperatorKind::RemoveReplica { from } => ("remove-replica", Some(from), None),
            OperatorKind::TransferLeader { to } => ("transfer-leader", None, Some(to)),
        };
        OperatorJson {
            id: o.id,
            shard: o.shard,
            kind,
            from,
            to,
            reason: o.reason.clone(),
            step: o.step.clone(),
            age_ms: o.age_ms,
            snapshot_sent_bytes: o.snapshot_sent_bytes,
            snapshot_total_bytes: o.snapshot_total_bytes,
            rollback: o.rollback.clone(),
        }
    }
}

/// `rebalance status --output json`; see the module docs for the contract.
#[derive(Debug, PartialEq, Serialize)]
struct RebalanceJson {
    balanced: bool,
    mean_replicas: f64,
    mean_leaders: f64,
    mean_size_bytes: u64,
    replica_spread: u64,
    leader_spread: u64,
    under_replicated: u64,
    misplaced: u64,
    operators: u64,
    nodes: Vec<NodeBalanceJson>,
}

/// One node of `rebalance status --output json`.
#[derive(Debug, PartialEq, Serialize)]
struct NodeBalanceJson {
    id: NodeId,
    state: NodeState,
    replicas: u64,
    leaders: u64,
    size_bytes: u64,
    replicas_vs_mean: f64,
    leaders_vs_mean: f64,
    size_vs_mean_percent: Option<f64>,
}

/// `x` rounded to two decimals, so JSON output does not show float noise.
fn round2(x: f64) -> f64 {
    (x * 100.0).round() / 100.0
}

impl From<&RebalanceStatus> for RebalanceJson {
    fn from(r: &RebalanceStatus) -> Self {
        // The PD's mean is over up (active) nodes; the other means follow it.
        let up: Vec<&NodeBalance> = r.nodes.iter().filter(|n| n.state == NodeState::Up).collect();
        let count = up.len().max(1) as f64;
        let mean_leaders = up.iter().map(|n| n.leaders as f64).sum::<f64>() / count;
        let mean_size = up.iter().map(|n| n.size_bytes as f64).sum::<f64>() / count;
        let mut nodes: Vec<&NodeBalance> = r.nodes.iter().collect();
        nodes.sort_by_key(|n| n.node);
        RebalanceJson {
            balanced: r.balanced,
            mean_replicas: round2(r.mean_replicas),
            mean_leaders: round2(mean_leaders),
            mean_size_bytes: mean_size.round() as u64,
            replica_spread: r.replica_spread,
            leader_spread: r.leader_spread,
            under_replicated: r.under_replicated,
            misplaced: r.misplaced,
            operators: r.operators,
            nodes: nodes
                .into_iter()
                .map(|n| NodeBalanceJson {
                    id: n.node,
                    state: n.state,
                    replicas: n.replicas,
                    leaders: n.leaders,
                    size_bytes: n.size_bytes,
                    replicas_vs_mean: round2(n.replicas as f64 - r.mean_replicas),
                    leaders_vs_mean: round2(n.leaders as f64 - mean_leaders),
                    size_vs_mean_percent: (mean_size > 0.0)
                        .then(|| round2((n.size_bytes as f64 - mean_size) * 100.0 / mean_size)),
                })
                .collect(),
        }
    }
}

/// The PD's shards in key order.
fn sorted_shards(status: &ClusterStatus) -> Vec<&ShardInfo> {
    let mut shards: Vec<&ShardInfo> = status.shards.iter().collect();
    shards.sort_by(|a, b| a.route.descriptor.range.start.cmp(&b.route.descriptor.range.start));
    shards
}

/// Unix milliseconds as an RFC 3339 UTC timestamp.
fn format_unix_ms(ms: u64) -> String {
    let t = std::time::UNIX_EPOCH + Duration::from_millis(ms);
    humantime_serde::re::humantime::format_rfc3339_millis(t).to_string()
}

fn render_document(d: &Document) -> String {
    render_fields(&[
        ("key", display_key(&d.key)),
        ("version", d.version.to_string()),
        ("created_at", format_unix_ms(d.created_at_ms)),
        ("updated_at", format_unix_ms(d.updated_at_ms)),
        ("value", String::from_utf8_lossy(&d.value).into_owned()),
    ])
}

/// A two-column "name  value" listing.
fn render_fields(fields: &[(&str, String)]) -> String {
    let rows: Vec<Vec<String>> = fields.iter().map(|(k, v)| vec![k.to_string(), v.clone()]).collect();
    render_rows(&rows)
}

fn render_scan(docs: &[Document]) -> String {
    let mut rows = vec![vec!["KEY".to_string(), "VERSION".to_string(), "VALUE".to_string()]];
    rows.extend(
        docs.iter()
            .map(|d| vec![display_key(&d.key), d.version.to_string(), String::from_utf8_lossy(&d.value).into_owned()]),
    );
    render_rows(&rows)
}

fn render_node_shards(shards: &[ShardStatus]) -> String {
    let header = ["ID", "RANGE", "EPOCH", "ROLE", "LEADER", "APPLIED"];
    let mut rows = vec![header.iter().map(|h| h.to_string()).collect::<Vec<_>>()];
    rows.extend(shards.iter().map(|s| {
        let leader = match (s.leader, s.leader_addr.as_str()) {
            (Some(id), "") => id.to_string(),
            (Some(id), addr) => format!("{id} ({addr})"),
            (None, _) => "-".to_string(),
        };
        vec![
            s.descriptor.id.to_string(),
            s.descriptor.range.to_string(),
            s.descriptor.epoch.to_string(),
            s.role.as_str().to_string(),
            leader,
            s.applied_index.to_string(),
        ]
    }));
    render_rows(&rows)
}

/// A node as "id (addr)".
fn node_label(id: NodeId, addr: &str) -> String {
    if addr.is_empty() { id.to_string() } else { format!("{id} ({addr})") }
}

/// Bytes for people: "512 B", "1.5 KiB", "96.0 MiB".
fn human_bytes(n: u64) -> String {
    const UNITS: [&str; 5] = ["KiB", "MiB", "GiB", "TiB", "PiB"];
    if n < 1024 {
        return format!("{n} B");
    }
    let mut value = n as f64 / 1024.0;
    let mut unit = 0;
    while value >= 1024.0 && unit + 1 < UNITS.len() {
        value /= 1024.0;
        unit += 1;
    }
    format!("{value:.1} {}", UNITS[unit])
}

fn render_status(s: &ClusterStatus) -> String {
    let summary = StatusJson::from(s);
    let pd_leader = match &s.pd_leader {
        Some((id, addr)) => node_label(*id, addr),
        None => "none".to_string(),
    };
    let members: Vec<String> = s.pd_members.iter().map(|m| node_label(m.id, &m.addr)).collect();
    let mut text = render_fields(&[
        ("cluster_id", s.cluster_id.to_string()),
        ("pd_leader", pd_leader),
        ("pd_members", if members.is_empty() { "-".to_string() } else { members.join(", ") }),
        ("nodes", format!("{} up of {}", summary.nodes_up, summary.nodes_total)),
        ("shards", summary.shards.to_string()),
        ("under_replicated", summary.under_replicated.to_string()),
        ("replication", s.settings.replication_factor.to_string()),
        ("revision", s.revision.to_string()),
    ]);
    if !s.events.is_empty() {
        let mut rows = vec![vec!["EVENT AT".to_string(), "MESSAGE".to_string()]];
        rows.extend(s.events.iter().map(|e| vec![format_unix_ms(e.at_ms), e.message.replace('\n', " ")]));
        text.push('\n');
        text.push_str(&render_rows(&rows));
    }
    text
}

fn render_nodes(nodes: &[NodeInfo]) -> String {
    let header = ["ID", "ADDR", "STATE", "REPLICAS", "LEADERS", "SIZE", "DB", "PD", "HEARTBEAT"];
    let mut rows = vec![header.iter().map(|h| h.to_string()).collect::<Vec<_>>()];
    let mut nodes: Vec<&NodeInfo> = nodes.iter().collect();
    nodes.sort_by_key(|n| n.id);
    rows.extend(nodes.into_iter().map(|n| {
        let heartbeat = match n.last_heartbeat_ms_ago {
            Some(ms) => format!("{} ago", humantime_serde::re::humantime::format_duration(Duration::from_millis(ms))),
            None => "-".to_string(),
        };
        vec![
            n.id.to_string(),
            n.addr.clone(),
            n.state.as_str().to_string(),
            n.replicas.to_string(),
            n.leaders.to_string(),
            human_bytes(n.size_bytes),
            human_bytes(n.db_bytes),
            if n.pd_member { "yes" } else { "-" }.to_string(),
            heartbeat,
        ]
    }));
    render_rows(&rows)
}

fn render_pd_shards(shards: &[&ShardInfo]) -> String {
    let header = ["ID", "RANGE", "EPOCH", "LEADER", "REPLICAS", "KEYS", "SIZE"];
    let mut rows = vec![header.iter().map(|h| h.to_string()).collect::<Vec<_>>()];
    rows.extend(shards.iter().map(|s| {
        let d = &s.route.descriptor;
        let leader = match &s.route.leader {
            Some((id, addr)) => node_label(*id, addr),
            None => "-".to_string(),
        };
        let replicas = display_replicas(&d.replicas);
        vec![
            d.id.to_string(),
            d.range.to_string(),
            d.epoch.to_string(),
            leader,
            replicas,
            s.key_count.to_string(),
            human_bytes(s.size_bytes),
        ]
    }));
    render_rows(&rows)
}

/// Milliseconds for people, to the second ("0s", "1m 30s") or, below 10 s, to the
/// tenth of a second ("1.5s").
fn human_ms(ms: u64) -> String {
    if ms < 10_000 {
        return format!("{}.{}s", ms / 1000, ms % 1000 / 100);
    }
    humantime_serde::re::humantime::format_duration(Duration::from_secs(ms / 1000)).to_string()
}

/// A signed difference with one decimal ("+2.0", "-0.5", "0.0").
fn signed(x: f64) -> String {
    if x.abs() < 0.05 { "0.0".to_string() } else { format!("{x:+.1}") }
}

fn render_settings(s: &ClusterSettings) -> String {
    let duration = |ms: u64| humantime_serde::re::humantime::format_duration(Duration::from_millis(ms)).to_string();
    render_fields(&[
        ("replication-factor", s.replication_factor.to_string()),
        ("max-node-down-time", duration(s.max_node_down_time_ms)),
        ("max-moves-per-node", s.max_moves_per_node.to_string()),
        ("max-operators", s.max_operators.to_string()),
        ("snapshot-bytes-per-sec", human_bytes(s.snapshot_bytes_per_sec)),
        ("operator-timeout", duration(s.operator_timeout_ms)),
        ("balance-bytes-tolerance-percent", s.balance_bytes_tolerance_percent.to_string()),
        ("split-size", human_bytes(s.split_size_bytes)),
        ("split-keys", s.split_keys.to_string()),
    ])
}

/// Snapshot progress as "sent/total MiB (pct%)", or "-" when none is in flight.
fn snapshot_progress(sent: u64, total: u64) -> String {
    if total == 0 {
        return "-".to_string();
    }
    let mib = |b: u64| b as f64 / (1u64 << 20) as f64;
    let pct = (sent.min(total) as f64 * 100.0 / total as f64).floor();
    format!("{:.1}/{:.1} MiB ({pct}%)", mib(sent), mib(total))
}

fn render_operators(operators: &[OperatorInfo]) -> String {
    let header = ["ID", "SHARD", "KIND", "REASON", "STEP", "AGE", "SNAPSHOT", "ROLLBACK"];
    let mut rows = vec![header.iter().map(|h| h.to_string()).collect::<Vec<_>>()];
    rows.extend(operators.iter().map(|o| {
        vec![
            o.id.to_string(),
            o.shard.to_string(),
            o.kind.to_string(),
            o.reason.clone(),
            o.step.clone(),
            human_ms(o.age_ms),
            snapshot_progress(o.snapshot_sent_bytes, o.snapshot_total_bytes),
            o.rollback.as_deref().map(|r| r.replace('\n', " ")).unwrap_or_else(|| "-".to_string()),
        ]
    }));
    render_rows(&rows)
}

/// A created operator: its fields as a table, or one element of `operators` as JSON.
fn render_operator(o: &OperatorInfo, out: Output) -> anyhow::Result<String> {
    Ok(match out {
        Output::Table => render_fields(&[
            ("operator", o.id.to_string()),
            ("shard", o.shard.to_string()),
            ("kind", o.kind.to_string()),
            ("reason", o.reason.clone()),
            ("step", o.step.clone()),
        ]),
        Output::Json => to_json(&OperatorJson::from(o))?,
    })
}

fn render_rebalance(r: &RebalanceJson) -> String {
    let mut text = render_fields(&[
        ("balanced", if r.balanced { "yes" } else { "no" }.to_string()),
        ("replica_spread", r.replica_spread.to_string()),
        ("leader_spread", r.leader_spread.to_string()),
        ("under_replicated", r.under_replicated.to_string()),
        ("misplaced", r.misplaced.to_string()),
        ("operators", r.operators.to_string()),
        (
            "mean",
            format!(
                "{:.1} replicas, {:.1} leaders, {} per up node",
                r.mean_replicas,
                r.mean_leaders,
                human_bytes(r.mean_size_bytes)
            ),
        ),
    ]);
    let header = ["NODE", "STATE", "REPLICAS", "VS MEAN", "LEADERS", "VS MEAN", "SIZE", "VS MEAN"];
    let mut rows = vec![header.iter().map(|h| h.to_string()).collect::<Vec<_>>()];
    rows.extend(r.nodes.iter().map(|n| {
        vec![
            n.id.to_string(),
            n.state.as_str().to_string(),
            n.replicas.to_string(),
            signed(n.replicas_vs_mean),
            n.leaders.to_string(),
            signed(n.leaders_vs_mean),
            human_bytes(n.size_bytes),
            n.size_vs_mean_percent.map(|p| format!("{}%", signed(p))).unwrap_or_else(|| "-".to_string()),
        ]
    }));
    text.push('\n');
    text.push_str(&render_rows(&rows));
    text
}

/// Rows as text with every column but the last padded to its widest cell.
fn render_rows(rows: &[Vec<String>]) -> String {
    let columns = rows.iter().map(Vec::len).max().unwrap_or(0);
    let widths: Vec<usize> = (0..columns)
        .map(|c| rows.iter().filter_map(|r| r.get(c)).map(|cell| cell.chars().count()).max().unwrap_or(0))
        .collect();
    let mut out = String::new();
    for row in rows {
        let mut line = String::new();
        for (c, cell) in row.iter().enumerate() {
            if c + 1 < row.len() {
                line.push_str(cell);
                line.extend(std::iter::repeat_n(' ', widths[c] - cell.chars().count() + 2));
            } else {
                line.push_str(cell);
            }
        }
        out.push_str(line.trim_end());
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use cairn_proto::{PdEvent, ReplicaDescriptor, ShardDescriptor, ShardRoute};

    fn doc(key: &[u8], value: &str) -> Document {
        Document {
            key: key.to_vec(),
            value: value.as_bytes().to_vec(),
            version: 7,
            created_at_ms: 0,
            updated_at_ms: 1_500,
        }
    }

    #[test]
    fn parses_timeouts() {
        assert_eq!(parse_timeout("10s"), Ok(Duration::from_secs(10)));
        assert_eq!(parse_timeout("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_timeout("1m 30s"), Ok(Duration::from_secs(90)));
        assert_eq!(parse_timeout("3"), Ok(Duration::from_secs(3)));
        assert_eq!(parse_timeout("2.5"), Ok(Duration::from_millis(2500)));
        assert!(parse_timeout("0s").is_err());
        assert!(parse_timeout("-1").is_err());
        assert!(parse_timeout("soon").is_err());
    }

    #[test]
    fn validates_json_and_keeps_the_text() {
        assert_eq!(validate_json(" {\"b\": 1,  \"a\": 2}\n").unwrap(), "{\"b\": 1,  \"a\": 2}");
        assert_eq!(validate_json("12345678901234567890123").unwrap(), "12345678901234567890123");
        assert!(validate_json("{\"a\": }").is_err());
        assert!(validate_json("{} {}").is_err());
        assert!(validate_json("").is_err());
        // Only JSON whitespace is trimmed; other spaces keep the text invalid.
        assert!(validate_json("\u{a0}{}").is_err());
    }

    #[test]
    fn document_json_embeds_the_value_as_json() {
        let d = doc(b"user:1", "{\"z\":1,\"a\":[true,null]}");
        let json = serde_json::to_string(&DocumentJson::from(&d)).unwrap();
        assert_eq!(
            json,
            r#"{"key":"user:1","version":7,"created_at_ms":0,"updated_at_ms":1500,"value":{"z":1,"a":[true,null]}}"#
        );
        // A value that is not JSON still produces valid JSON output.
        let bad = doc(b"\x00k", "not json");
        let json = serde_json::to_string(&DocumentJson::from(&bad)).unwrap();
        let parsed: serde_json::Value = serde_json::from_str(&json).unwrap();
        assert_eq!(parsed["value"], "not json");
        assert_eq!(parsed["key"], "0x006b");
    }

    #[test]
    fn tables_are_aligned() {
        let text = render_scan(&[doc(b"a", "{}"), doc(b"longer-key", "[1]")]);
        assert_eq!(
            text,
            "KEY         VERSION  VALUE\n\
             a           7        {}\n\
             longer-key  7        [1]\n"
        );
        let text = render_document(&doc(b"k", "{}"));
        assert!(text.starts_with("key         k\nversion     7\ncreated_at  1970-01-01T00:00:00.000Z\n"), "{text}");
    }

    #[test]
    fn shards_render_as_table_and_json() {
        let s = ShardStatus {
            descriptor: ShardDescriptor {
                id: ShardId(4),
                range: KeyRange::new(b"m".to_vec(), Vec::new()),
                epoch: Epoch { conf_ver: 2, version: 3 },
                replicas: vec![ReplicaDescriptor { node: NodeId(1), addr: "h:1".into(), role: ReplicaRole::Voter }],
            },
            role: RaftRole::Leader,
            leader: Some(NodeId(1)),
            leader_addr: "h:1".into(),
            term: 5,
            applied_index: 42,
            last_log_index: 42,
        };
        let table = render_node_shards(std::slice::from_ref(&s));
        assert_eq!(
            table,
            "ID  RANGE      EPOCH  ROLE    LEADER   APPLIED\n4   [m, +inf)  2.3    leader  1 (h:1)  42\n"
        );
        let json: serde_json::Value = serde_json::to_value(ShardJson::from(&s)).unwrap();
        assert_eq!(
            json,
            serde_json::json!({
                "id": 4, "start": "m", "end": "", "epoch": {"conf_ver": 2, "version": 3},
                "role": "leader", "leader": 1, "leader_addr": "h:1", "applied_index": 42,
                "replicas": [{"node": 1, "addr": "h:1", "role": "voter"}]
            })
        );
    }

    #[test]
    fn cli_parses_global_flags_after_the_subcommand() {
        let cli = Cli::try_parse_from(["cairnctl", "get", "k", "--output", "json", "--timeout", "500ms"]).unwrap();
        assert_eq!(cli.output, Output::Json);
        assert_eq!(cli.timeout, Duration::from_millis(500));
        assert!(Cli::try_parse_from(["cairnctl", "scan", "--prefix", "a", "--start", "b"]).is_err());
    }

    /// Parses with the environment variables the flags read cleared, so the machine's
    /// `CAIRN_PD`/`CAIRN_NODE` cannot change the outcome.
    fn parse(args: &[&str]) -> Result<Cli, clap::Error> {
        use clap::{CommandFactory, FromArgMatches};
        let command = Cli::command().mut_arg("pd", |a| a.env(None::<&str>)).mut_arg("node", |a| a.env(None::<&str>));
        Cli::from_arg_matches(&command.try_get_matches_from(args)?)
    }

    #[test]
    fn cli_defaults_to_the_pd_and_switches_to_a_node() {
        let cli = parse(&["cairnctl", "get", "k"]).unwrap();
        assert_eq!((cli.pd.as_str(), cli.node.as_deref()), ("127.0.0.1:7700", None));
        let cli = parse(&["cairnctl", "status", "--pd", "a:1,b:2", "--output", "json"]).unwrap();
        assert_eq!(cli.pd, "a:1,b:2");
        assert!(matches!(cli.command, Command::Status));
        let cli = parse(&["cairnctl", "--node", "n:1", "put", "k", "-", "--expected-version", "0"]).unwrap();
        assert_eq!(cli.node.as_deref(), Some("n:1"));
        assert!(matches!(cli.command, Command::Put { ref json, expected_version: Some(0), .. } if json == "-"));
        for verb in ["nodes", "shards", "node-shards"] {
            assert!(parse(&["cairnctl", verb]).is_ok(), "{verb}");
        }
        let cli = parse(&["cairnctl", "scan", "--start", "a", "--end", "b", "--limit", "5"]).unwrap();
        assert!(matches!(cli.command, Command::Scan { limit: 5, prefix: None, .. }));
        assert!(parse(&["cairnctl", "put", "k"]).is_err(), "VALUE is required");
        assert!(parse(&["cairnctl", "frobnicate"]).is_err());
    }

    #[test]
    fn documents_are_bounded_to_one_mib() {
        let exact = "1".repeat(VALUE_BYTES_MAX);
        assert_eq!(read_document(exact.as_bytes(), "stdin").unwrap().len(), VALUE_BYTES_MAX);
        let over = "1".repeat(VALUE_BYTES_MAX + 1);
        let err = read_document(over.as_bytes(), "stdin").unwrap_err().to_string();
        assert_eq!(
            err,
            "the document on stdin is larger than 1 MiB (1048576 bytes), the largest document a node accepts"
        );
        assert!(check_size(over, "the document").is_err());
        assert!(check_size(exact, "the document").is_ok());
        assert!(read_document(&[0xff, 0xfe][..], "stdin").is_err(), "not UTF-8");
    }

    fn node_info(id: u64, state: NodeState, heartbeat: Option<u64>) -> NodeInfo {
        NodeInfo {
            id: NodeId(id),
            addr: format!("10.0.0.{id}:7700"),
            state,
            capacity_bytes: 0,
            labels: Default::default(),
            last_heartbeat_ms_ago: heartbeat,
            replicas: 2,
            leaders: id - 1,
            size_bytes: 1536,
            db_bytes: 3 << 20,
            pd_member: id == 1,
        }
    }

    fn cluster() -> ClusterStatus {
        let replica = |n: u64, role| ReplicaDescriptor { node: NodeId(n), addr: format!("10.0.0.{n}:7700"), role };
        let shard =
            |id: u64, start: &[u8], end: &[u8], leader: Option<u64>, replicas: Vec<ReplicaDescriptor>| ShardInfo {
                route: ShardRoute {
                    descriptor: ShardDescriptor {
                        id: ShardId(id),
                        range: KeyRange::new(start.to_vec(), end.to_vec()),
                        epoch: Epoch { conf_ver: 2, version: id },
                        replicas,
                    },
                    leader: leader.map(|n| (NodeId(n), format!("10.0.0.{n}:7700"))),
                },
                key_count: id * 10,
                size_bytes: id * 1000,
                term: 3,
                applied_index: 40,
            };
        let nodes = vec![
            node_info(2, NodeState::Up, Some(250)),
            node_info(1, NodeState::Up, Some(90)),
            node_info(3, NodeState::Down, None),
            node_info(4, NodeState::Removed, None),
        ];
        ClusterStatus {
            cluster_id: 7,
            pd_leader: Some((NodeId(1), "10.0.0.1:7700".into())),
            pd_members: vec![nodes[1].clone()],
            // Shard 2 (listed first) starts at "m"; shard 1 at the start of the key space.
            shards: vec![
                shard(2, b"m", b"", None, vec![replica(1, ReplicaRole::Voter), replica(2, ReplicaRole::Voter)]),
                shard(
                    1,
                    b"",
                    b"m",
                    Some(2),
                    vec![
                        replica(1, ReplicaRole::Voter),
                        replica(2, ReplicaRole::Voter),
                        replica(3, ReplicaRole::Learner),
                    ],
                ),
            ],
            nodes,
            settings: ClusterSettings { replication_factor: 2, ..Default::default() },
            revision: 12,
            events: vec![PdEvent { seq: 1, at_ms: 1_500, message: "bootstrapped".into() }],
        }
    }

    #[test]
    fn status_json_contract() {
        let json = serde_json::to_value(StatusJson::from(&cluster())).unwrap();
        assert_eq!(
            json,
            serde_json::json!({
                "pd_leader": 1, "pd_leader_addr": "10.0.0.1:7700", "nodes_up": 2, "nodes_total": 3,
                "shards": 2, "under_replicated": 0, "cluster_id": 7
            })
        );
        let mut leaderless = cluster();
        leaderless.pd_leader = None;
        // Node 1 goes down: both shards are left with one live voter of the two required.
        leaderless.nodes.iter_mut().find(|n| n.id == NodeId(1)).unwrap().state = NodeState::Down;
        let json = serde_json::to_value(StatusJson::from(&leaderless)).unwrap();
        assert_eq!(json["pd_leader"], serde_json::Value::Null);
        assert_eq!(json["pd_leader_addr"], serde_json::Value::Null);
        assert_eq!((json["nodes_up"].as_u64(), json["under_replicated"].as_u64()), (Some(1), Some(2)));
    }

    #[test]
    fn nodes_json_contract() {
        let json = serde_json::to_value(cluster().nodes.iter().map(NodeJson::from).collect::<Vec<_>>()).unwrap();
        assert_eq!(
            json[0],
            serde_json::json!({
                "id": 2, "addr": "10.0.0.2:7700", "state": "up", "replicas": 2, "leaders": 1,
                "size_bytes": 1536, "db_bytes": 3145728, "pd_member": false, "last_heartbeat_ms_ago": 250
            })
        );
        assert_eq!(json[2]["state"], "down");
        assert_eq!(json[2]["last_heartbeat_ms_ago"], serde_json::Value::Null);
        assert_eq!(json[1]["pd_member"], true);
        assert_eq!(json[3]["state"], "removed");
    }

    #[test]
    fn shards_json_contract_is_in_key_order() {
        let status = cluster();
        let json = serde_json::to_value(sorted_shards(&status).into_iter().map(PdShardJson::from).collect::<Vec<_>>())
            .unwrap();
        assert_eq!(
            json,
            serde_json::json!([
                {
                    "id": 1, "start": "", "end": "m", "epoch": {"conf_ver": 2, "version": 1},
                    "replicas": [
                        {"node": 1, "addr": "10.0.0.1:7700", "role": "voter"},
                        {"node": 2, "addr": "10.0.0.2:7700", "role": "voter"},
                        {"node": 3, "addr": "10.0.0.3:7700", "role": "learner"}
                    ],
                    "leader": 2, "size_bytes": 1000, "keys": 10
                },
                {
                    "id": 2, "start": "m", "end": "", "epoch": {"conf_ver": 2, "version": 2},
                    "replicas": [
                        {"node": 1, "addr": "10.0.0.1:7700", "role": "voter"},
                        {"node": 2, "addr": "10.0.0.2:7700", "role": "voter"}
                    ],
                    "leader": null, "size_bytes": 2000, "keys": 20
                }
            ])
        );
        // Binary range bounds are printed as hex.
        let mut binary = cluster();
        binary.shards[0].route.descriptor.range.start = vec![0x00, 0xff];
        let json = serde_json::to_value(PdShardJson::from(&binary.shards[0])).unwrap();
        assert_eq!(json["start"], "0x00ff");
    }

    #[test]
    fn cluster_tables_are_aligned() {
        let status = cluster();
        assert_eq!(
            render_status(&status),
            "cluster_id        7\n\
             pd_leader         1 (10.0.0.1:7700)\n\
             pd_members        1 (10.0.0.1:7700)\n\
             nodes             2 up of 3\n\
             shards            2\n\
             under_replicated  0\n\
             replication       2\n\
             revision          12\n\
             \n\
             EVENT AT                  MESSAGE\n\
             1970-01-01T00:00:01.500Z  bootstrapped\n"
        );
        assert_eq!(
            render_nodes(&status.nodes),
            "ID  ADDR           STATE    REPLICAS  LEADERS  SIZE     DB       PD   HEARTBEAT\n\
             1   10.0.0.1:7700  up       2         0        1.5 KiB  3.0 MiB  yes  90ms ago\n\
             2   10.0.0.2:7700  up       2         1        1.5 KiB  3.0 MiB  -    250ms ago\n\
             3   10.0.0.3:7700  down     2         2        1.5 KiB  3.0 MiB  -    -\n\
             4   10.0.0.4:7700  removed  2         3        1.5 KiB  3.0 MiB  -    -\n"
        );
        assert_eq!(
            render_pd_shards(&sorted_shards(&status)),
            "ID  RANGE      EPOCH  LEADER             REPLICAS        KEYS  SIZE\n\
             1   [, m)      2.1    2 (10.0.0.2:7700)  1,2,3(learner)  10    1000 B\n\
             2   [m, +inf)  2.2    -                  1,2             20    2.0 KiB\n"
        );
    }

    #[test]
    fn cli_parses_the_admin_verbs() {
        let cli = parse(&["cairnctl", "config", "show", "--output", "json"]).unwrap();
        assert!(matches!(cli.command, Command::Config { verb: ConfigVerb::Show }));
        assert_eq!(cli.output, Output::Json);
        let cli = parse(&["cairnctl", "config", "set", "max-operators", "4"]).unwrap();
        assert!(matches!(
            cli.command,
            Command::Config { verb: ConfigVerb::Set { ref name, ref value } } if name == "max-operators" && value == "4"
        ));
        for (name, _) in SETTING_NAMES {
            assert!(parse(&["cairnctl", "config", "set", name, "1"]).is_ok(), "{name}");
        }
        assert!(parse(&["cairnctl", "config", "set", "no-such-setting", "1"]).is_err());
        assert!(parse(&["cairnctl", "config", "set", "max-operators"]).is_err(), "VALUE is required");

        let cli = parse(&["cairnctl", "shard", "move", "3", "--from", "1", "--to", "4"]).unwrap();
        assert!(matches!(cli.command, Command::Shard { verb: ShardVerb::Move { shard: 3, from: 1, to: 4 } }));
        assert!(parse(&["cairnctl", "shard", "move", "3", "--to", "4"]).is_err(), "--from is required");
        assert!(parse(&["cairnctl", "shard", "move", "--from", "1", "--to", "4"]).is_err(), "SHARD is required");
        assert!(parse(&["cairnctl", "shard", "move", "x", "--from", "1", "--to", "4"]).is_err());

        let cli = parse(&["cairnctl", "leader", "transfer", "3", "--to", "2", "--output", "json"]).unwrap();
        assert!(matches!(cli.command, Command::Leader { verb: LeaderVerb::Transfer { shard: 3, to: 2 } }));
        assert!(parse(&["cairnctl", "leader", "transfer", "3"]).is_err(), "--to is required");

        let cli = parse(&["cairnctl", "node", "drain", "2"]).unwrap();
        assert!(matches!(cli.command, Command::Node { verb: NodeVerb::Drain { id: 2 } }));
        let cli = parse(&["cairnctl", "node", "activate", "2"]).unwrap();
        assert!(matches!(cli.command, Command::Node { verb: NodeVerb::Activate { id: 2 } }));
        // `node` the verb and `--node` the flag live side by side.
        let cli = parse(&["cairnctl", "--node", "n:1", "node", "remove", "5"]).unwrap();
        assert!(matches!(cli.command, Command::Node { verb: NodeVerb::Remove { id: 5 } }));
        assert_eq!(cli.node.as_deref(), Some("n:1"));
        assert!(parse(&["cairnctl", "node", "drain"]).is_err(), "ID is required");
        assert!(parse(&["cairnctl", "node", "sleep", "2"]).is_err());

        assert!(matches!(parse(&["cairnctl", "operators"]).unwrap().command, Command::Operators));
        let cli = parse(&["cairnctl", "rebalance", "status", "--output", "json"]).unwrap();
        assert!(matches!(cli.command, Command::Rebalance { verb: RebalanceVerb::Status }));
    }

    #[test]
    fn config_set_help_lists_the_settings() {
        use clap::CommandFactory;
        let mut command = Cli::command();
        let set = command.find_subcommand_mut("config").unwrap().find_subcommand_mut("set").unwrap();
        let help = set.render_long_help().to_string();
        for (name, what) in SETTING_NAMES {
            assert!(help.contains(name) && help.contains(what), "{name} missing from:\n{help}");
        }
    }

    #[test]
    fn settings_render_as_table_and_json() {
        let settings = ClusterSettings::default();
        let json = serde_json::to_value(SettingsJson::from(&settings)).unwrap();
        assert_eq!(
            json,
            serde_json::json!({
                "replication_factor": 3, "max_node_down_time_ms": 1800000, "max_moves_per_node": 2,
                "max_operators": 16, "snapshot_bytes_per_sec": 268435456, "operator_timeout_ms": 600000,
                "balance_bytes_tolerance_percent": 25, "split_size_bytes": 100663296, "split_keys": 1000000
            })
        );
        assert_eq!(
            render_settings(&settings),
            "replication-factor               3\n\
             max-node-down-time               30m\n\
             max-moves-per-node               2\n\
             max-operators                    16\n\
             snapshot-bytes-per-sec           256.0 MiB\n\
             operator-timeout                 10m\n\
             balance-bytes-tolerance-percent  25\n\
             split-size                       96.0 MiB\n\
             split-keys                       1000000\n"
        );
    }

    fn operators() -> Vec<OperatorInfo> {
        vec![
            OperatorInfo {
                id: 17,
                shard: ShardId(3),
                kind: OperatorKind::MoveReplica { from: NodeId(1), to: NodeId(4) },
                reason: "admin".into(),
                step: "catch-up".into(),
                age_ms: 95_000,
                snapshot_sent_bytes: 10 << 20,
                snapshot_total_bytes: 40 << 20,
                rollback: None,
            },
            OperatorInfo {
                id: 18,
                shard: ShardId(5),
                kind: OperatorKind::TransferLeader { to: NodeId(2) },
                reason: "balance-leaders".into(),
                step: "transfer-leader".into(),
                age_ms: 1_520,
                snapshot_sent_bytes: 0,
                snapshot_total_bytes: 0,
                rollback: Some("target down".into()),
            },
        ]
    }

    #[test]
    fn operators_render_as_table_and_json() {
        let ops = operators();
        assert_eq!(
            render_operators(&ops),
            "ID  SHARD  KIND                 REASON           STEP             AGE     SNAPSHOT             ROLLBACK\n\
             17  3      move-replica 1->4    admin            catch-up         1m 35s  10.0/40.0 MiB (25%)  -\n\
             18  5      transfer-leader ->2  balance-leaders  transfer-leader  1.5s    -                    target down\n"
        );
        let json = serde_json::to_value(ops.iter().map(OperatorJson::from).collect::<Vec<_>>()).unwrap();
        assert_eq!(
            json,
            serde_json::json!([
                {
                    "id": 17, "shard": 3, "kind": "move-replica", "from": 1, "to": 4, "reason": "admin",
                    "step": "catch-up", "age_ms": 95000, "snapshot_sent_bytes": 10485760,
                    "snapshot_total_bytes": 41943040, "rollback": null
                },
                {
                    "id": 18, "shard": 5, "kind": "transfer-leader", "from": null, "to": 2,
                    "reason": "balance-leaders", "step": "transfer-leader", "age_ms": 1520,
                    "snapshot_sent_bytes": 0, "snapshot_total_bytes": 0, "rollback": "target down"
                }
            ])
        );
        let add = OperatorInfo { kind: OperatorKind::AddReplica { to: NodeId(6) }, ..ops[0].clone() };
        let json = serde_json::to_value(OperatorJson::from(&add)).unwrap();
        assert_eq!(
            (json["kind"].as_str(), json["from"].as_u64(), json["to"].as_u64()),
            (Some("add-replica"), None, Some(6))
        );
        let remove = OperatorInfo { kind: OperatorKind::RemoveReplica { from: NodeId(1) }, ..ops[0].clone() };
        let json = serde_json::to_value(OperatorJson::from(&remove)).unwrap();
        assert_eq!(
            (json["kind"].as_str(), json["from"].as_u64(), json["to"].as_u64()),
            (Some("remove-replica"), Some(1), None)
        );
        let created = render_operator(&ops[0], Output::Table).unwrap();
        assert_eq!(
            created,
            "operator  17\nshard     3\nkind      move-replica 1->4\nreason    admin\nstep      catch-up\n"
        );
    }

    #[test]
    fn snapshot_progress_is_bounded() {
        assert_eq!(snapshot_progress(0, 0), "-");
        assert_eq!(snapshot_progress(0, 1 << 20), "0.0/1.0 MiB (0%)");
        assert_eq!(snapshot_progress(3 << 19, 1 << 20), "1.5/1.0 MiB (100%)", "never above 100%");
        assert_eq!(snapshot_progress(u64::MAX, u64::MAX), "17592186044416.0/17592186044416.0 MiB (100%)");
    }

    #[test]
    fn rebalance_renders_as_table_and_json() {
        let node = |id: u64, state, replicas, leaders, size_bytes| NodeBalance {
            node: NodeId(id),
            state,
            replicas,
            leaders,
            size_bytes,
        };
        let status = RebalanceStatus {
            nodes: vec![
                node(2, NodeState::Up, 2, 0, 200 << 20),
                node(1, NodeState::Up, 6, 3, 600 << 20),
                node(3, NodeState::Up, 4, 1, 400 << 20),
                node(4, NodeState::Draining, 1, 0, 100 << 20),
            ],
            mean_replicas: 4.0,
            replica_spread: 4,
            leader_spread: 3,
            under_replicated: 1,
            misplaced: 1,
            operators: 2,
            balanced: false,
        };
        let report = RebalanceJson::from(&status);
        let json = serde_json::to_value(&report).unwrap();
        assert_eq!(
            json,
            serde_json::json!({
                "balanced": false, "mean_replicas": 4.0, "mean_leaders": 1.33, "mean_size_bytes": 419430400,
                "replica_spread": 4, "leader_spread": 3, "under_replicated": 1, "misplaced": 1, "operators": 2,
                "nodes": [
                    {"id": 1, "state": "up", "replicas": 6, "leaders": 3, "size_bytes": 629145600,
                     "replicas_vs_mean": 2.0, "leaders_vs_mean": 1.67, "size_vs_mean_percent": 50.0},
                    {"id": 2, "state": "up", "replicas": 2, "leaders": 0, "size_bytes": 209715200,
                     "replicas_vs_mean": -2.0, "leaders_vs_mean": -1.33, "size_vs_mean_percent": -50.0},
                    {"id": 3, "state": "up", "replicas": 4, "leaders": 1, "size_bytes": 419430400,
                     "replicas_vs_mean": 0.0, "leaders_vs_mean": -0.33, "size_vs_mean_percent": 0.0},
                    {"id": 4, "state": "draining", "replicas": 1, "leaders": 0, "size_bytes": 104857600,
                     "replicas_vs_mean": -3.0, "leaders_vs_mean": -1.33, "size_vs_mean_percent": -75.0}
                ]
            })
        );
        assert_eq!(
            render_rebalance(&report),
            "balanced          no\n\
             replica_spread    4\n\
             leader_spread     3\n\
             under_replicated  1\n\
             misplaced         1\n\
             operators         2\n\
             mean              4.0 replicas, 1.3 leaders, 400.0 MiB per up node\n\
             \n\
             NODE  STATE     REPLICAS  VS MEAN  LEADERS  VS MEAN  SIZE       VS MEAN\n\
             1     up        6         +2.0     3        +1.7     600.0 MiB  +50.0%\n\
             2     up        2         -2.0     0        -1.3     200.0 MiB  -50.0%\n\
             3     up        4         0.0      1        -0.3     400.0 MiB  0.0%\n\
             4     draining  1         -3.0     0        -1.3     100.0 MiB  -75.0%\n"
        );
        // No up node (or an empty cluster): no division by zero, no size percentage.
        let empty = RebalanceStatus { nodes: vec![node(4, NodeState::Down, 0, 0, 0)], mean_replicas: 0.0, ..status };
        let json = serde_json::to_value(RebalanceJson::from(&empty)).unwrap();
        assert_eq!(json["nodes"][0]["size_vs_mean_percent"], serde_json::Value::Null);
        assert_eq!(json["mean_leaders"], 0.0);
    }

    #[test]
    fn ages_are_humanised() {
        assert_eq!(human_ms(0), "0.0s");
        assert_eq!(human_ms(1_520), "1.5s");
        assert_eq!(human_ms(9_999), "9.9s");
        assert_eq!(human_ms(95_000), "1m 35s");
        assert!(!human_ms(u64::MAX).is_empty());
    }

    #[test]
    fn bytes_are_humanised() {
        assert_eq!(human_bytes(0), "0 B");
        assert_eq!(human_bytes(1023), "1023 B");
        assert_eq!(human_bytes(1024), "1.0 KiB");
        assert_eq!(human_bytes(96 << 20), "96.0 MiB");
        assert_eq!(human_bytes(u64::MAX), "16384.0 PiB");
    }
}
