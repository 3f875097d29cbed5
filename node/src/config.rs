//! Configuration of a `cairn server`: one serde struct, kebab-case keys, every
//! field defaulted to a value that works on a laptop, checked by `validate()`.

use std::net::SocketAddr;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use crate::raft::RaftSettings;
use crate::transport::TransportConfig;

/// Request limits. Inputs over a limit get `TOO_LARGE` (sizes) or
/// `INVALID_ARGUMENT` (counts) and change nothing.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(default, rename_all = "kebab-case", deny_unknown_fields)]
pub struct Limits {
    pub key_bytes_max: usize,
    pub value_bytes_max: usize,
    pub request_bytes_max: usize,
    pub scan_limit_max: u32,
    /// Used when a scan asks for limit 0.
    pub scan_limit_default: u32,
    pub batch_items_max: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            key_bytes_max: 4 << 10,
            value_bytes_max: 1 << 20,
            request_bytes_max: 4 << 20,
            scan_limit_max: 10_000,
            scan_limit_default: 1_000,
            batch_items_max: 1_000,
        }
    }
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(default, rename_all = "kebab-case", deny_unknown_fields)]
pub struct NodeConfig {
    /// This node's id; must be unique in the cluster and stable across restarts.
    pub node_id: u64,
    /// Address the gRPC services (KV, Raft, Admin) listen on.
    pub listen: SocketAddr,
    /// Address peers and clients use to reach this node; defaults to `listen`.
    pub advertise: Option<String>,
    pub data_dir: PathBuf,
    /// Prometheus endpoint (`GET /metrics`); off when absent.
    pub metrics_listen: Option<SocketAddr>,
    /// Static bootstrap: the first voters of every initial shard, as
    /// `(node id, address)`. Used once, when the data directory is new.
    pub initial_members: Vec<(u64, String)>,
    /// Static bootstrap: number of initial shards, cutting the key space evenly.
    pub initial_shards: u32,
    /// Longest a KV request may take on the server before `DEADLINE_EXCEEDED`.
    pub request_timeout_ms: u64,
    pub limits: Limits,
    pub raft: RaftSettings,
    pub transport: TransportConfig,
    /// redb page cache.
    pub cache_bytes: usize,
}

impl Default for NodeConfig {
    fn default() -> Self {
        Self {
            node_id: 1,
            listen: "127.0.0.1:7700".parse().expect("valid literal address"),
            advertise: None,
            data_dir: PathBuf::from("./cairn-data"),
            metrics_listen: None,
            initial_members: Vec::new(),
            initial_shards: 1,
            request_timeout_ms: 10_000,
            limits: Limits::default(),
            raft: RaftSettings::default(),
            transport: TransportConfig::default(),
            cache_bytes: 256 << 20,
        }
    }
}

impl NodeConfig {
    pub fn advertise_addr(&self) -> String {
        self.advertise.clone().unwrap_or_else(|| self.listen.to_string())
    }

    pub fn validate(&self) -> Result<(), String> {
        if self.node_id == 0 {
            return Err("node-id must be positive".into());
        }
        self.raft.validate()?;
        if !self.initial_members.is_empty() {
            if !self.initial_members.iter().any(|(id, _)| *id == self.node_id) {
                return Err(format!("initial-members does not include this node ({})", self.node_id));
            }
            let mut ids: Vec<u64> = self.initial_members.iter().map(|(id, _)| *id).collect();
            ids.sort_unstable();
            ids.dedup();
            if ids.len() != self.initial_members.len() {
                return Err("initial-members lists a node id twice".into());
            }
            if ids.contains(&0) {
                return Err("node ids must be positive".into());
            }
        }
        if self.initial_shards == 0 || self.initial_shards > 100_000 {
            return Err("initial-shards must be between 1 and 100000".into());
        }
        let l = &self.limits;
        if l.key_bytes_max == 0 || l.value_bytes_max == 0 || l.scan_limit_max == 0 || l.batch_items_max == 0 {
            return Err("limits must be positive".into());
        }
        if l.key_bytes_max + l.value_bytes_max > l.request_bytes_max {
            return Err("request-bytes-max must hold one key and one value".into());
        }
        if l.request_bytes_max * 2 > self.transport.message_bytes_max {
            return Err("transport message-bytes-max must be at least twice request-bytes-max".into());
        }
        if l.scan_limit_default > l.scan_limit_max {
            return Err("scan-limit-default exceeds scan-limit-max".into());
        }
        if self.request_timeout_ms == 0 {
            return Err("request-timeout-ms must be positive".into());
        }
        Ok(())
    }
}

/// Parses `1=127.0.0.1:7701,2=127.0.0.1:7702`.
pub fn parse_members(s: &str) -> Result<Vec<(u64, String)>, String> {
    s.split(',')
        .filter(|p| !p.trim().is_empty())
        .map(|part| {
            let (id, addr) = part.trim().split_once('=').ok_or_else(|| format!("expected ID=ADDR, got {part:?}"))?;
            let id: u64 = id.parse().map_err(|_| format!("bad node id {id:?}"))?;
            if addr.parse::<SocketAddr>().is_err() {
                return Err(format!("bad address {addr:?} (want HOST:PORT with an IP)"));
            }
            Ok((id, addr.to_string()))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_validate() {
        NodeConfig::default().validate().unwrap();
    }

    #[test]
    fn members_parse_and_validate() {
        let m = parse_members("1=127.0.0.1:1,2=127.0.0.1:2").unwrap();
        assert_eq!(m, vec![(1, "127.0.0.1:1".into()), (2, "127.0.0.1:2".into())]);
        assert!(parse_members("1=nothost").is_err());
        assert!(parse_members("x=127.0.0.1:1").is_err());
        let mut c = NodeConfig { initial_members: m, node_id: 3, ..Default::default() };
        assert!(c.validate().is_err());
        c.node_id = 2;
        c.validate().unwrap();
    }

    #[test]
    fn toml_round_trip_uses_kebab_case() {
        let text = "node-id = 4\nlisten = \"127.0.0.1:9000\"\n[raft]\nheartbeat-interval-ms = 100\n";
        let c: NodeConfig = toml::from_str(text).unwrap();
        assert_eq!(c.node_id, 4);
        assert_eq!(c.raft.heartbeat_interval_ms, 100);
        assert_eq!(c.raft.election_timeout_min_ms, RaftSettings::default().election_timeout_min_ms);
    }

    #[test]
    fn unknown_keys_are_errors() {
        let err = toml::from_str::<NodeConfig>("node-id = 4\nlisten-addr = \"127.0.0.1:1\"\n").unwrap_err();
        assert!(err.to_string().contains("listen-addr"), "{err}");
        assert!(toml::from_str::<NodeConfig>("[raft]\nheartbeat-ms = 1\n").is_err());
    }

    #[test]
    fn relations_are_checked() {
        let mut c = NodeConfig::default();
        c.raft.election_timeout_min_ms = c.raft.heartbeat_interval_ms;
        assert!(c.validate().is_err());
        let mut c = NodeConfig::default();
        c.limits.request_bytes_max = 10;
        assert!(c.validate().is_err());
    }
}
