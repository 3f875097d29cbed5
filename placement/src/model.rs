//! The PD's stored records, their keys in the PD key space, and [`PdState`].
//!
//! Keys (values are JSON of the records below):
//! - `pd/cluster` -> [`ClusterRecord`]
//! - `pd/node/<id, 20 digits>` -> [`NodeRecord`]
//! - `pd/shard/<id, 20 digits>` -> [`ShardRecord`] (shard 0 is the PD's own
//!   group, kept apart in [`PdState::pd_shard`]: never routed to, never balanced)
//! - `pd/event/<seq, 20 digits>` -> [`EventRecord`] (the last [`EVENTS_KEPT`])
//! - `pd/op/<shard id, 20 digits>` -> [`OperatorRecord`] (at most one per shard,
//!   deleted when it finishes)

use std::collections::{BTreeMap, VecDeque};

use cairn_proto::{ClusterSettings, KeyRange, NodeId, OperatorKind, PdEvent, ReplicaRole, ShardDescriptor, ShardId};
use serde::{Deserialize, Serialize};

pub const PREFIX: &[u8] = b"pd/";
pub const CLUSTER_KEY: &[u8] = b"pd/cluster";
const NODE_PREFIX: &str = "pd/node/";
const SHARD_PREFIX: &str = "pd/shard/";
const EVENT_PREFIX: &str = "pd/event/";
const OPERATOR_PREFIX: &str = "pd/op/";

/// The PD's own shard (RFC 004): its replicas are the PD members.
pub const PD_SHARD: ShardId = ShardId(0);

/// Events kept in the PD's bounded event log.
pub const EVENTS_KEPT: usize = 256;

pub fn node_key(id: NodeId) -> Vec<u8> {
    format!("{NODE_PREFIX}{:020}", id.0).into_bytes()
}

pub fn shard_key(id: ShardId) -> Vec<u8> {
    format!("{SHARD_PREFIX}{:020}", id.0).into_bytes()
}

pub fn event_key(seq: u64) -> Vec<u8> {
    format!("{EVENT_PREFIX}{seq:020}").into_bytes()
}

pub fn operator_key(shard: ShardId) -> Vec<u8> {
    format!("{OPERATOR_PREFIX}{:020}", shard.0).into_bytes()
}

/// The cluster itself: identity, id allocators and settings.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClusterRecord {
    pub cluster_id: u64,
    pub created_at_ms: u64,
    /// The PD members (the voters of shard 0) as bootstrapped; the current ones
    /// are [`PdState::pd_members`].
    pub pd_members: Vec<(NodeId, String)>,
    pub next_node_id: u64,
    pub next_shard_id: u64,
    pub next_event_seq: u64,
    /// Shards to create once `settings.replication_factor` nodes are up.
    pub initial_shards: u32,
    pub initial_shards_created: bool,
    pub settings: ClusterSettings,
    /// Next operator id (records from before operators existed lack it).
    #[serde(default = "first_id")]
    pub next_operator_id: u64,
}

fn first_id() -> u64 {
    1
}

/// A change of one shard's replicas or leader, in flight. Its progress is
/// not stored: the next step is computed from the shard's observed state
/// ([`crate::operator::step`]), so a new PD leader resumes it where it is.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct OperatorRecord {
    pub id: u64,
    pub shard: ShardId,
    pub kind: OperatorKind,
    /// Why it was created ("admin", "repair", "drain", ...).
    pub reason: String,
    pub created_at_ms: u64,
    /// Not promoted by then: rolled back.
    pub deadline_ms: u64,
    /// Set when the PD decided to roll it back, with the reason.
    pub rollback: Option<String>,
}

/// A node's administrative state (liveness is observed, not stored).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AdminState {
    Active,
    Draining,
    Removed,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeRecord {
    pub id: NodeId,
    pub addr: String,
    pub admin: AdminState,
    pub capacity_bytes: u64,
    pub labels: BTreeMap<String, String>,
    pub registered_at_ms: u64,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ShardRecord {
    pub descriptor: ShardDescriptor,
    /// The shard was created by the PD and some of its first replicas may not
    /// exist yet: nodes that do not report it are told to create it.
    pub creating: bool,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct EventRecord {
    pub seq: u64,
    pub at_ms: u64,
    pub message: String,
}

/// The PD's state: every record, plus the version of every key as read, which
/// the runtime uses as the compare of its next transaction.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PdState {
    pub cluster: Option<ClusterRecord>,
    pub nodes: BTreeMap<NodeId, NodeRecord>,
    /// The data shards (never [`PD_SHARD`]).
    pub shards: BTreeMap<ShardId, ShardRecord>,
    /// Shard 0, the PD's own group, as its leader last reported it (`None`
    /// until the first PD leader that knows about it records it).
    pub pd_shard: Option<ShardRecord>,
    pub events: VecDeque<EventRecord>,
    pub operators: BTreeMap<ShardId, OperatorRecord>,
    pub versions: BTreeMap<Vec<u8>, u64>,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("PD record {key}: {reason}")]
pub struct LoadError {
    pub key: String,
    pub reason: String,
}

impl PdState {
    /// Builds the state from `(key, value, version)` triples of the `pd/` prefix.
    /// Unknown keys under the prefix are an error: they mean a newer PD wrote
    /// them, and guessing would risk the shard map.
    pub fn load<'a>(records: impl IntoIterator<Item = (&'a [u8], &'a [u8], u64)>) -> Result<Self, LoadError> {
        let mut state = PdState::default();
        for (key, value, version) in records {
            let text = String::from_utf8_lossy(key).into_owned();
            let bad = |reason: String| LoadError { key: text.clone(), reason };
            fn parse<T: serde::de::DeserializeOwned>(v: &[u8]) -> Result<T, String> {
                serde_json::from_slice(v).map_err(|e| e.to_string())
            }
            if key == CLUSTER_KEY {
                state.cluster = Some(parse(value).map_err(bad)?);
            } else if text.starts_with(NODE_PREFIX) {
                let r: NodeRecord = parse(value).map_err(bad)?;
                if node_key(r.id) != key {
                    return Err(bad(format!("holds node {}", r.id)));
                }
                state.nodes.insert(r.id, r);
            } else if text.starts_with(SHARD_PREFIX) {
                let r: ShardRecord = parse(value).map_err(bad)?;
                if shard_key(r.descriptor.id) != key {
                    return Err(bad(format!("holds shard {}", r.descriptor.id)));
                }
                state.insert_shard(r);
            } else if text.starts_with(EVENT_PREFIX) {
                state.events.push_back(parse(value).map_err(bad)?);
            } else if text.starts_with(OPERATOR_PREFIX) {
                let r: OperatorRecord = parse(value).map_err(bad)?;
                if operator_key(r.shard) != key {
                    return Err(bad(format!("holds the operator of shard {}", r.shard)));
                }
                state.operators.insert(r.shard, r);
            } else {
                return Err(bad("unknown PD key".into()));
            }
            state.versions.insert(key.to_vec(), version);
        }
        state.events.make_contiguous().sort_by_key(|e| e.seq);
        Ok(state)
    }

    /// Applies committed writes (at log index `version`) to this state.
    pub fn apply(&mut self, writes: &Writes, version: u64) {
        if let Some(c) = &writes.cluster {
            self.cluster = Some(c.clone());
            self.versions.insert(CLUSTER_KEY.to_vec(), version);
        }
        for n in &writes.nodes {
            self.nodes.insert(n.id, n.clone());
            self.versions.insert(node_key(n.id), version);
        }
        for s in &writes.shards {
            self.versions.insert(shard_key(s.descriptor.id), version);
            self.insert_shard(s.clone());
        }
        for e in &writes.events {
            self.events.push_back(e.clone());
            self.versions.insert(event_key(e.seq), version);
        }
        for o in &writes.operators {
            self.operators.insert(o.shard, o.clone());
            self.versions.insert(operator_key(o.shard), version);
        }
        for shard in &writes.operators_done {
            self.operators.remove(shard);
            // Absent again: a later operator on the shard compares against 0.
            self.versions.remove(&operator_key(*shard));
        }
        while self.events.len() > EVENTS_KEPT {
            if let Some(e) = self.events.pop_front() {
                self.versions.remove(&event_key(e.seq));
            }
        }
    }

    fn insert_shard(&mut self, record: ShardRecord) {
        if record.descriptor.id == PD_SHARD {
            self.pd_shard = Some(record);
        } else {
            self.shards.insert(record.descriptor.id, record);
        }
    }

    /// Any shard's record, the PD's own included.
    pub fn shard(&self, id: ShardId) -> Option<&ShardRecord> {
        if id == PD_SHARD { self.pd_shard.as_ref() } else { self.shards.get(&id) }
    }

    /// Whether `id` is a shard this PD knows (data shards and the PD's own).
    pub fn knows_shard(&self, id: ShardId) -> bool {
        self.shard(id).is_some()
    }

    /// The current PD members: shard 0's replicas as last reported, else the
    /// members the cluster was bootstrapped with.
    pub fn pd_members(&self) -> Vec<NodeId> {
        match &self.pd_shard {
            Some(r) => r.descriptor.replicas.iter().filter(|r| r.role == ReplicaRole::Voter).map(|r| r.node).collect(),
            None => self.cluster.as_ref().map(|c| c.pd_members.iter().map(|(id, _)| *id).collect()).unwrap_or_default(),
        }
    }

    pub fn settings(&self) -> ClusterSettings {
        self.cluster.as_ref().map(|c| c.settings.clone()).unwrap_or_default()
    }

    /// The shard whose range holds `key`.
    pub fn shard_for_key(&self, key: &[u8]) -> Option<&ShardRecord> {
        self.shards.values().find(|s| s.descriptor.range.contains(key))
    }

    /// Shards overlapping `range`, in key order.
    pub fn shards_in(&self, range: &KeyRange) -> Vec<&ShardRecord> {
        let mut out: Vec<&ShardRecord> =
            self.shards.values().filter(|s| s.descriptor.range.intersect(range).is_some()).collect();
        out.sort_by(|a, b| a.descriptor.range.start.cmp(&b.descriptor.range.start));
        out
    }

    /// Replicas per node, counting voters and learners.
    pub fn replica_counts(&self) -> BTreeMap<NodeId, u64> {
        let mut counts: BTreeMap<NodeId, u64> = self.nodes.keys().map(|id| (*id, 0)).collect();
        for s in self.shards.values() {
            for r in &s.descriptor.replicas {
                *counts.entry(r.node).or_default() += 1;
            }
        }
        counts
    }

    pub fn recent_events(&self, n: usize) -> Vec<PdEvent> {
        let skip = self.events.len().saturating_sub(n);
        self.events
            .iter()
            .skip(skip)
            .map(|e| PdEvent { seq: e.seq, at_ms: e.at_ms, message: e.message.clone() })
            .collect()
    }

    pub fn voters(&self, shard: ShardId) -> Vec<NodeId> {
        self.shards
            .get(&shard)
            .map(|s| s.descriptor.replicas.iter().filter(|r| r.role == ReplicaRole::Voter).map(|r| r.node).collect())
            .unwrap_or_default()
    }
}

/// One atomic change of the PD state: records to write (whole records) and
/// events to append. Events beyond [`EVENTS_KEPT`] are deleted by the same
/// transaction ([`Writes::to_ops`]).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Writes {
    pub cluster: Option<ClusterRecord>,
    pub nodes: Vec<NodeRecord>,
    pub shards: Vec<ShardRecord>,
    pub events: Vec<EventRecord>,
    /// Operators created or updated.
    pub operators: Vec<OperatorRecord>,
    /// Shards whose operator finished (its record is deleted).
    pub operators_done: Vec<ShardId>,
}

/// One key-level operation of a PD transaction.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum KeyOp {
    Put(Vec<u8>, Vec<u8>),
    Delete(Vec<u8>),
}

impl Writes {
    pub fn is_empty(&self) -> bool {
        self.cluster.is_none()
            && self.nodes.is_empty()
            && self.shards.is_empty()
            && self.events.is_empty()
            && self.operators.is_empty()
            && self.operators_done.is_empty()
    }

    /// Adds an event, taking its sequence number from the cluster record (which
    /// is then part of these writes).
    pub fn event(&mut self, state: &PdState, at_ms: u64, message: impl Into<String>) {
        let mut cluster = match self.cluster.clone().or_else(|| state.cluster.clone()) {
            Some(c) => c,
            None => return,
        };
        let seq = cluster.next_event_seq;
        cluster.next_event_seq += 1;
        self.cluster = Some(cluster);
        self.events.push(EventRecord { seq, at_ms, message: message.into() });
    }

    pub fn merge(&mut self, other: Writes) {
        if other.cluster.is_some() {
            self.cluster = other.cluster;
        }
        self.nodes.extend(other.nodes);
        self.shards.extend(other.shards);
        self.events.extend(other.events);
        self.operators.extend(other.operators);
        self.operators_done.extend(other.operators_done);
    }

    /// The transaction for these writes against `state`: compares (key, version
    /// read; 0 = absent) for every key touched, then the operations.
    pub fn to_ops(&self, state: &PdState) -> (Vec<(Vec<u8>, u64)>, Vec<KeyOp>) {
        let mut ops = Vec::new();
        if let Some(c) = &self.cluster {
            ops.push(KeyOp::Put(CLUSTER_KEY.to_vec(), json(c)));
        }
        for n in &self.nodes {
            ops.push(KeyOp::Put(node_key(n.id), json(n)));
        }
        for s in &self.shards {
            ops.push(KeyOp::Put(shard_key(s.descriptor.id), json(s)));
        }
        for e in &self.events {
            ops.push(KeyOp::Put(event_key(e.seq), json(e)));
        }
        for o in &self.operators {
            ops.push(KeyOp::Put(operator_key(o.shard), json(o)));
        }
        for shard in &self.operators_done {
            ops.push(KeyOp::Delete(operator_key(*shard)));
        }
        let overflow = (state.events.len() + self.events.len()).saturating_sub(EVENTS_KEPT);
        for e in state.events.iter().take(overflow) {
            ops.push(KeyOp::Delete(event_key(e.seq)));
        }
        let compares = ops
            .iter()
            .map(|op| {
                let key = match op {
                    KeyOp::Put(k, _) | KeyOp::Delete(k) => k.clone(),
                };
                let version = state.versions.get(&key).copied().unwrap_or(0);
                (key, version)
            })
            .collect();
        (compares, ops)
    }
}

/// Serialises a record; the records are plain data, so this cannot fail.
fn json<T: Serialize>(v: &T) -> Vec<u8> {
    serde_json::to_vec(v).expect("PD records are plain data and always serialise")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cluster() -> ClusterRecord {
        ClusterRecord {
            cluster_id: 9,
            created_at_ms: 1,
            pd_members: vec![(NodeId(1), "a:1".into())],
            next_node_id: 2,
            next_shard_id: 1,
            next_event_seq: 1,
            initial_shards: 1,
            initial_shards_created: false,
            settings: ClusterSettings::default(),
            next_operator_id: 1,
        }
    }

    #[test]
    fn writes_round_trip_through_load_with_versions() {
        let mut state = PdState::default();
        let mut w = Writes { cluster: Some(cluster()), ..Default::default() };
        w.nodes.push(NodeRecord {
            id: NodeId(1),
            addr: "a:1".into(),
            admin: AdminState::Active,
            capacity_bytes: 0,
            labels: BTreeMap::new(),
            registered_at_ms: 1,
        });
        w.event(&state, 5, "bootstrapped");
        let (compares, ops) = w.to_ops(&state);
        assert!(compares.iter().all(|(_, v)| *v == 0), "everything is new");
        state.apply(&w, 7);
        let stored: Vec<(Vec<u8>, Vec<u8>, u64)> = ops
            .into_iter()
            .map(|op| match op {
                KeyOp::Put(k, v) => (k, v, 7),
                KeyOp::Delete(_) => unreachable!("nothing to delete"),
            })
            .collect();
        let loaded = PdState::load(stored.iter().map(|(k, v, ver)| (k.as_slice(), v.as_slice(), *ver))).unwrap();
        assert_eq!(loaded, state);
        assert_eq!(loaded.cluster.unwrap().next_event_seq, 2);
        // The next write of the cluster record compares against version 7.
        let (compares, _) = Writes { cluster: state.cluster.clone(), ..Default::default() }.to_ops(&state);
        assert_eq!(compares, vec![(CLUSTER_KEY.to_vec(), 7)]);
    }

    #[test]
    fn the_event_log_is_bounded() {
        let mut state = PdState { cluster: Some(cluster()), ..Default::default() };
        for i in 0..(EVENTS_KEPT + 10) {
            let mut w = Writes::default();
            w.event(&state, i as u64, format!("e{i}"));
            let (_, ops) = w.to_ops(&state);
            let deletes = ops.iter().filter(|o| matches!(o, KeyOp::Delete(_))).count();
            assert_eq!(deletes, usize::from(i >= EVENTS_KEPT));
            state.apply(&w, i as u64 + 1);
        }
        assert_eq!(state.events.len(), EVENTS_KEPT);
        assert_eq!(state.events.front().unwrap().message, "e10");
    }

    #[test]
    fn unknown_or_mismatched_keys_are_load_errors() {
        assert!(PdState::load([(&b"pd/other"[..], &b"{}"[..], 1)]).is_err());
        let rec = serde_json::to_vec(&ShardRecord { descriptor: ShardDescriptor::default(), creating: false }).unwrap();
        assert!(PdState::load([(shard_key(ShardId(5)).as_slice(), rec.as_slice(), 1)]).is_err());
        assert!(PdState::load([(CLUSTER_KEY, &b"not json"[..], 1)]).is_err());
    }
}
