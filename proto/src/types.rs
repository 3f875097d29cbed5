//! Domain types shared by every Cairn crate: ids, key ranges, epochs, shard
//! descriptors and documents. They are plain data with serde, so they can be
//! stored with bincode and printed as JSON.

use std::fmt;

use serde::{Deserialize, Serialize};

/// Identifies a shard (one Raft group) across the whole cluster.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize, Default)]
#[serde(transparent)]
pub struct ShardId(pub u64);

/// Identifies a storage node across the whole cluster.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize, Default)]
#[serde(transparent)]
pub struct NodeId(pub u64);

impl fmt::Display for ShardId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

impl fmt::Display for NodeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

/// The version of a shard's configuration. `conf_ver` moves with membership
/// changes, `version` with key-range changes (split, merge).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize, Default)]
pub struct Epoch {
    pub conf_ver: u64,
    pub version: u64,
}

impl fmt::Display for Epoch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}", self.conf_ver, self.version)
    }
}

/// A half-open key range `[start, end)`. An empty `end` means "no upper bound".
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize, Default)]
pub struct KeyRange {
    pub start: Vec<u8>,
    pub end: Vec<u8>,
}

impl KeyRange {
    /// The whole key space.
    pub fn full() -> Self {
        Self::default()
    }

    pub fn new(start: impl Into<Vec<u8>>, end: impl Into<Vec<u8>>) -> Self {
        Self { start: start.into(), end: end.into() }
    }

    pub fn contains(&self, key: &[u8]) -> bool {
        key >= self.start.as_slice() && (self.end.is_empty() || key < self.end.as_slice())
    }

    /// The intersection of two ranges, or `None` if they do not overlap.
    pub fn intersect(&self, other: &KeyRange) -> Option<KeyRange> {
        let start = std::cmp::max(&self.start, &other.start).clone();
        let end = match (self.end.is_empty(), other.end.is_empty()) {
            (true, true) => Vec::new(),
            (true, false) => other.end.clone(),
            (false, true) => self.end.clone(),
            (false, false) => std::cmp::min(&self.end, &other.end).clone(),
        };
        if !end.is_empty() && start >= end {
            return None;
        }
        Some(KeyRange { start, end })
    }

    /// The range of every key that starts with `prefix`.
    pub fn prefix(prefix: &[u8]) -> KeyRange {
        KeyRange { start: prefix.to_vec(), end: prefix_end(prefix) }
    }

    /// Cuts the whole key space into `n` ranges of equal width, measured on the
    /// first two bytes of the key. Used by the static bootstrap.
    pub fn split_evenly(n: u32) -> Vec<KeyRange> {
        assert!(n >= 1, "at least one range");
        let n = u64::from(n);
        let space: u64 = 1 << 16;
        let bound = |i: u64| -> Vec<u8> {
            let v = (space * i / n) as u16;
            v.to_be_bytes().to_vec()
        };
        (0..n)
            .map(|i| KeyRange {
                start: if i == 0 { Vec::new() } else { bound(i) },
                end: if i + 1 == n { Vec::new() } else { bound(i + 1) },
            })
            .collect()
    }
}

impl fmt::Display for KeyRange {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "[{}, {})",
            display_key(&self.start),
            if self.end.is_empty() { "+inf".to_string() } else { display_key(&self.end) }
        )
    }
}

/// The smallest key greater than every key with this prefix; empty if there is none.
pub fn prefix_end(prefix: &[u8]) -> Vec<u8> {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            return end;
        }
    }
    Vec::new()
}

/// Renders a key for people: UTF-8 text when printable, hex otherwise.
pub fn display_key(key: &[u8]) -> String {
    match std::str::from_utf8(key) {
        Ok(s) if s.chars().all(|c| !c.is_control()) => s.to_string(),
        _ => {
            let mut out = String::from("0x");
            for b in key {
                out.push_str(&format!("{b:02x}"));
            }
            out
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ReplicaRole {
    Voter,
    Learner,
}

#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct ReplicaDescriptor {
    pub node: NodeId,
    pub addr: String,
    pub role: ReplicaRole,
}

/// Renders replicas for people: `1,2,4(learner)`.
pub fn display_replicas(replicas: &[ReplicaDescriptor]) -> String {
    let labels: Vec<String> = replicas
        .iter()
        .map(|r| match r.role {
            ReplicaRole::Voter => r.node.to_string(),
            ReplicaRole::Learner => format!("{}(learner)", r.node),
        })
        .collect();
    labels.join(",")
}

/// Everything a router needs to send a request to a shard.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize, Default)]
pub struct ShardDescriptor {
    pub id: ShardId,
    pub range: KeyRange,
    pub epoch: Epoch,
    pub replicas: Vec<ReplicaDescriptor>,
}

/// The route a request was sent with.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct Route {
    pub shard: ShardId,
    pub epoch: Epoch,
}

/// A client session for exactly-once writes. `client_id == 0` turns
/// deduplication off.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct Session {
    pub client_id: u64,
    pub seq: u64,
    pub acked_below: u64,
}

/// A stored document as the API returns it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Document {
    pub key: Vec<u8>,
    /// The JSON text.
    pub value: Vec<u8>,
    /// The Raft log index of the write that produced this value.
    pub version: u64,
    pub created_at_ms: u64,
    pub updated_at_ms: u64,
}

/// Role of a replica as its Raft group sees it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RaftRole {
    Leader,
    Follower,
    Candidate,
    Learner,
    Shutdown,
}

impl RaftRole {
    pub fn as_str(self) -> &'static str {
        match self {
            RaftRole::Leader => "leader",
            RaftRole::Follower => "follower",
            RaftRole::Candidate => "candidate",
            RaftRole::Learner => "learner",
            RaftRole::Shutdown => "shutdown",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "leader" => RaftRole::Leader,
            "follower" => RaftRole::Follower,
            "candidate" => RaftRole::Candidate,
            "learner" => RaftRole::Learner,
            "shutdown" => RaftRole::Shutdown,
            _ => return None,
        })
    }
}

/// One hosted replica as a node reports it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ShardStatus {
    pub descriptor: ShardDescriptor,
    pub role: RaftRole,
    pub leader: Option<NodeId>,
    pub leader_addr: String,
    pub term: u64,
    pub applied_index: u64,
    pub last_log_index: u64,
}

/// Counters a node reports about itself.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct NodeStats {
    pub node_id: NodeId,
    pub addr: String,
    pub shard_count: u64,
    pub fsyncs: u64,
    pub log_entries_persisted: u64,
    pub write_batches: u64,
    pub db_bytes: u64,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn split_evenly_covers_the_key_space_without_gaps() {
        let ranges = KeyRange::split_evenly(8);
        assert_eq!(ranges.len(), 8);
        assert!(ranges[0].start.is_empty());
        assert!(ranges[7].end.is_empty());
        for w in ranges.windows(2) {
            assert_eq!(w[0].end, w[1].start);
        }
        assert!(ranges[0].contains(b""));
        assert!(ranges[7].contains(&[0xff, 0xff, 0xff]));
        assert!(ranges[1].contains(&[0x20, 0x00]));
        assert!(!ranges[1].contains(&[0x1f, 0xff]));
    }

    #[test]
    fn prefix_range() {
        assert_eq!(prefix_end(b"ab"), b"ac".to_vec());
        assert_eq!(prefix_end(&[0x61, 0xff]), vec![0x62]);
        assert_eq!(prefix_end(&[0xff, 0xff]), Vec::<u8>::new());
        let r = KeyRange::prefix(b"user:");
        assert!(r.contains(b"user:1"));
        assert!(!r.contains(b"user;"));
    }

    #[test]
    fn intersect() {
        let a = KeyRange::new(b"b".to_vec(), b"m".to_vec());
        assert_eq!(a.intersect(&KeyRange::full()), Some(a.clone()));
        assert_eq!(a.intersect(&KeyRange::new(b"m".to_vec(), Vec::new())), None);
        assert_eq!(
            a.intersect(&KeyRange::new(b"c".to_vec(), b"z".to_vec())),
            Some(KeyRange::new(b"c".to_vec(), b"m".to_vec()))
        );
    }
}
