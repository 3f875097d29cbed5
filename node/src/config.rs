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
    /// Address the gRPC services (KV, Raft, Admin, Pd) listen on.
    pub listen: SocketAddr,
    /// Address peers and clients use to reach this node; defaults to `listen`.
    pub advertise: Option<String>,
    pub data_dir: PathBuf,
    /// Prometheus endpoint (`GET /metrics`); off when absent.
    pub metrics_listen: Option<SocketAddr>,
    /// The placement driver's members, as `(node id, address)`: the voters of
    /// the PD group, which bootstrap the cluster exactly once. A node whose
    /// advertised address is listed is a PD member with that id. Every PD
    /// member must be started with the same list.
    pub initial_pd: Vec<(u64, String)>,
    /// PD endpoints this node registers and heartbeats with; defaults to the
    /// addresses in `initial-pd`. Required for a node that is not a PD member.
    pub pd: Vec<String>,
    /// Bootstrap only (read by the first PD leader): shards to create once
    /// `replication-factor` nodes are up, cutting the key space evenly.
    pub initial_shards: u32,
    /// Bootstrap only: the cluster's replication factor; defaults to the number
    /// of PD members, at most 3. Changed later in the PD's cluster settings.
    pub replication_factor: Option<u32>,
    /// Bootstrap only: how long a node may be down before its replicas are
    /// re-created elsewhere.
    pub max_node_down_time_ms: u64,
    /// Disk bytes this node offers to the PD (0 = unknown).
    pub capacity_bytes: u64,
    /// Free-form labels reported to the PD (zone, rack, ...).
    pub labels: std::collections::BTreeMap<String, String>,
    /// How often the node heartbeats to the PD.
    pub heartbeat_interval_ms: u64,
    /// Longest a KV request may take on the server before `DEADLINE_EXCEEDED`.
    pub request_timeout_ms: u64,
    pub limits: Limits,
    pub raft: RaftSettings,
    pub transport: TransportConfig,
    /// redb page cache.
    pub cache_bytes: usize,
    /// For chaos testing only, never in production: accepts
    /// `Admin.SetLinkFaults` (drop, delay or cut this node's messages to
    /// peers) and keeps database writes in memory until they are synced, so a
    /// SIGKILL loses them as a power failure would.
    pub fault_injection: bool,
    /// The network peers and the PD are dialed over: real TCP unless a test
    /// runs the node on a simulated network. Not part of configuration files.
    #[serde(skip)]
    pub net: cairn_proto::net::Net,
}

impl Default for NodeConfig {
    fn default() -> Self {
        Self {
            listen: "127.0.0.1:7700".parse().expect("valid literal address"),
            advertise: None,
            data_dir: PathBuf::from("./cairn-data"),
            metrics_listen: None,
            initial_pd: Vec::new(),
            pd: Vec::new(),
            initial_shards: 1,
            replication_factor: None,
            max_node_down_time_ms: 30 * 60 * 1000,
            capacity_bytes: 0,
            labels: Default::default(),
            heartbeat_interval_ms: 1000,
            request_timeout_ms: 10_000,
            limits: Limits::default(),
            raft: RaftSettings::default(),
            transport: TransportConfig::default(),
            cache_bytes: 256 << 20,
            fault_injection: false,
            net: Default::default(),
        }
    }
}

impl NodeConfig {
    pub fn advertise_addr(&self) -> String {
        self.advertise.clone().unwrap_or_else(|| self.listen.to_string())
    }

    /// The PD endpoints to talk to: `pd`, else the `initial-pd` addresses.
    pub fn pd_endpoints(&self) -> Vec<String> {
        if self.pd.is_empty() { self.initial_pd.iter().map(|(_, a)| a.clone()).collect() } else { self.pd.clone() }
    }

    /// This node's PD member id, if its advertised address is in `initial-pd`.
    pub fn pd_member_id(&self) -> Option<u64> {
        let me = self.advertise_addr();
        self.initial_pd.iter().find(|(_, a)| *a == me).map(|(id, _)| *id)
    }

    /// The bootstrap replication factor.
    pub fn bootstrap_replication_factor(&self) -> u32 {
        self.replication_factor.unwrap_or_else(|| (self.initial_pd.len() as u32).clamp(1, 3))
    }

    pub fn validate(&self) -> Result<(), String> {
        self.raft.validate()?;
        if !self.initial_pd.is_empty() {
            let mut ids: Vec<u64> = self.initial_pd.iter().map(|(id, _)| *id).collect();
            ids.sort_unstable();
            ids.dedup();
            if ids.len() != self.initial_pd.len() {
                return Err("initial-pd lists a node id twice".into());
            }
            if ids.contains(&0) {
                return Err("node ids must be positive".into());
            }
            if self.initial_pd.len() > 7 {
                return Err("initial-pd may list at most 7 members".into());
            }
        }
        if self.pd_endpoints().is_empty() {
            return Err(
                "no placement driver given: set pd (--pd ADDRS) or initial-pd (--initial-pd ID=ADDR,...)".into()
            );
        }
        if let Some(rf) = self.replication_factor
            && !(1..=7).contains(&rf)
        {
            return Err("replication-factor must be between 1 and 7".into());
        }
        if self.max_node_down_time_ms < 1000 {
            return Err("max-node-down-time-ms must be at least 1000".into());
        }
        if self.heartbeat_interval_ms < 100 || self.heartbeat_interval_ms > 60_000 {
            return Err("heartbeat-interval-ms must be between 100 and 60000".into());
        }
        if self.initial_shards == 0 || self.initial_shards > 10_000 {
            return Err("initial-shards must be between 1 and 10000".into());
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
        if !(0..=19).contains(&self.transport.snapshot_sender_nice) {
            return Err("transport snapshot-sender-nice must be between 0 and 19".into());
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
    fn defaults_need_a_pd() {
        let err = NodeConfig::default().validate().unwrap_err();
        assert!(err.contains("placement driver"), "{err}");
        NodeConfig { pd: vec!["127.0.0.1:7700".into()], ..Default::default() }.validate().unwrap();
    }

    #[test]
    fn snapshot_sender_nice_is_a_nice_value() {
        let mut c = NodeConfig { pd: vec!["127.0.0.1:7700".into()], ..Default::default() };
        for ok in [0, 10, 19] {
            c.transport.snapshot_sender_nice = ok;
            c.validate().unwrap();
        }
        for bad in [-1, 20] {
            c.transport.snapshot_sender_nice = bad;
            let err = c.validate().unwrap_err();
            assert!(err.contains("snapshot-sender-nice"), "{err}");
        }
    }

    #[test]
    fn members_parse_and_validate() {
        let m = parse_members("1=127.0.0.1:1,2=127.0.0.1:2").unwrap();
        assert_eq!(m, vec![(1, "127.0.0.1:1".into()), (2, "127.0.0.1:2".into())]);
        assert!(parse_members("1=nothost").is_err());
        assert!(parse_members("x=127.0.0.1:1").is_err());
        let c = NodeConfig { initial_pd: m, listen: "127.0.0.1:2".parse().unwrap(), ..Default::default() };
        c.validate().unwrap();
        assert_eq!(c.pd_member_id(), Some(2));
        assert_eq!(c.pd_endpoints(), vec!["127.0.0.1:1".to_string(), "127.0.0.1:2".into()]);
        assert_eq!(c.bootstrap_replication_factor(), 2);
        let dup = NodeConfig { initial_pd: parse_members("1=127.0.0.1:1,1=127.0.0.1:2").unwrap(), ..c };
        assert!(dup.validate().is_err());
    }

    #[test]
    fn toml_round_trip_uses_kebab_case() {
        let text = "pd = [\"127.0.0.1:7700\"]\nlisten = \"127.0.0.1:9000\"\n[raft]\nheartbeat-interval-ms = 100\n";
        let c: NodeConfig = toml::from_str(text).unwrap();
        assert_eq!(c.pd, vec!["127.0.0.1:7700".to_string()]);
        assert_eq!(c.raft.heartbeat_interval_ms, 100);
        assert_eq!(c.raft.election_timeout_min_ms, RaftSettings::default().election_timeout_min_ms);
    }

    #[test]
    fn unknown_keys_are_errors() {
        let err = toml::from_str::<NodeConfig>("initial-shards = 4\nlisten-addr = \"127.0.0.1:1\"\n").unwrap_err();
        assert!(err.to_string().contains("listen-addr"), "{err}");
        assert!(toml::from_str::<NodeConfig>("[raft]\nheartbeat-ms = 1\n").is_err());
    }

    #[test]
    fn relations_are_checked() {
        let ok = NodeConfig { pd: vec!["127.0.0.1:7700".into()], ..Default::default() };
        let mut c = ok.clone();
        c.raft.election_timeout_min_ms = c.raft.heartbeat_interval_ms;
        assert!(c.validate().is_err());
        let mut c = ok;
        c.limits.request_bytes_max = 10;
        assert!(c.validate().is_err());
    }
}
