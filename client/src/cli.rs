//! `cairnctl`: the admin and data CLI of Cairn. The binary lives in the `cairn-node`
//! package (so `cargo run --bin cairnctl` works from the workspace root) and calls
//! [`main`].
//!
//! It talks to the cluster through one node (`--node`, a [`DirectClient`] seed) until the
//! placement driver exists. Keys on the command line are UTF-8 strings and are printed
//! with `display_key` (text when printable, `0x..` hex otherwise).
//!
//! Contract with scripts:
//! - Results go to stdout, as aligned tables (`--output table`, the default) or JSON
//!   (`--output json`; a document's `value` is embedded as JSON, exactly as stored).
//! - Failures print one line `error: <message>` to stderr. Exit code 0 on success, 1 when
//!   the key was not found (`get`, `delete`), 2 on any other error.
//! - Documents are validated as JSON before they are sent, and sent as the text given
//!   (only surrounding JSON whitespace is trimmed), never re-encoded.

use std::io::{Read, Write};
use std::process::ExitCode;
use std::time::Duration;

use crate::config::MESSAGE_BYTES_MAX;
use crate::{ClientConfig, DirectClient};
use anyhow::{Context, bail};
use cairn_proto::{Document, Epoch, NodeId, RaftRole, ReplicaRole, ShardStatus, display_key};
use clap::{Parser, Subcommand, ValueEnum};
use serde::Serialize;
use serde_json::value::RawValue;

#[derive(Debug, Parser)]
#[command(name = "cairnctl", version, about = "Read, write and inspect a Cairn cluster")]
struct Cli {
    /// Address (host:port) of the node to talk to.
    #[arg(long, global = true, env = "CAIRN_NODE", default_value = "127.0.0.1:7700")]
    node: String,
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
        /// The document as JSON text, or "-" to read it from stdin.
        json: String,
        /// Write only if the document is at this version (0: only if it does not exist).
        #[arg(long)]
        expected_version: Option<u64>,
    },
    /// Print the document at KEY (exit code 1 if there is none).
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
    /// List the shards of the cluster: range, epoch, leader and progress.
    Shards,
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

async fn run(cli: Cli) -> anyhow::Result<Outcome> {
    let config = ClientConfig {
        connect_timeout: cli.timeout.min(ClientConfig::default().connect_timeout),
        request_timeout: cli.timeout,
        operation_timeout: cli.timeout,
        ..ClientConfig::default()
    };
    let client = DirectClient::new(cli.node.clone(), config)?;
    let out = cli.output;
    match cli.command {
        Command::Put { key, json, expected_version } => {
            let text = if json == "-" { read_stdin()? } else { json };
            let text = validate_json(&text)?;
            let version = client.put(key.as_bytes(), text.as_bytes(), expected_version).await?;
            let key = display_key(key.as_bytes());
            print(&match out {
                Output::Table => render_fields(&[("key", key), ("version", version.to_string())]),
                Output::Json => to_json(&serde_json::json!({ "key": key, "version": version }))?,
            })?;
        }
        Command::Get { key } => {
            let Some(doc) = client.get(key.as_bytes()).await? else {
                return Ok(Outcome::NotFound(display_key(key.as_bytes())));
            };
            print(&match out {
                Output::Table => render_document(&doc),
                Output::Json => to_json(&DocumentJson::from(&doc))?,
            })?;
        }
        Command::Delete { key, expected_version } => {
            let (deleted, version) = client.delete(key.as_bytes(), expected_version).await?;
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
            let docs = match prefix {
                Some(prefix) => client.scan_prefix(prefix.as_bytes(), limit).await?,
                None => {
                    let start = start.unwrap_or_default();
                    let end = end.unwrap_or_default();
                    client.scan_range(start.as_bytes(), end.as_bytes(), limit).await?
                }
            };
            print(&match out {
                Output::Table => render_scan(&docs),
                Output::Json => to_json(&docs.iter().map(DocumentJson::from).collect::<Vec<_>>())?,
            })?;
        }
        Command::Shards => {
            let shards = client.refresh().await?;
            print(&match out {
                Output::Table => render_shards(&shards),
                Output::Json => to_json(&shards.iter().map(ShardJson::from).collect::<Vec<_>>())?,
            })?;
        }
    }
    Ok(Outcome::Done)
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

fn read_stdin() -> anyhow::Result<String> {
    let mut buf = Vec::new();
    // One byte more than allowed tells "exactly at the limit" from "over it".
    let limit = MESSAGE_BYTES_MAX as u64 + 1;
    std::io::stdin().take(limit).read_to_end(&mut buf).context("reading the document from stdin")?;
    if buf.len() > MESSAGE_BYTES_MAX {
        bail!("the document on stdin is larger than {MESSAGE_BYTES_MAX} bytes");
    }
    String::from_utf8(buf).context("the document on stdin is not UTF-8")
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

fn render_shards(shards: &[ShardStatus]) -> String {
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
    use cairn_proto::{KeyRange, ReplicaDescriptor, ShardDescriptor, ShardId};

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
        let table = render_shards(std::slice::from_ref(&s));
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
}
