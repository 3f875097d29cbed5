//! [`ShardMap`]: the client's cached copy of the placement driver's shard map, and every
//! rule for changing it. Pure data: [`crate::Client`] and its watch task do the I/O and
//! call these methods under a short lock.
//!
//! Sources of change, from most to least authoritative:
//! - a whole map ([`ShardMap::replace`]: the initial `ListShards`, a `full` watch event);
//! - a watch delta ([`ShardMap::apply_event`]), applied once, in revision order;
//! - single routes ([`ShardMap::upsert`]: `Locate`, a partial `ListShards`) and
//!   descriptors returned by nodes with `EPOCH_MISMATCH`/`KEY_NOT_IN_SHARD`
//!   ([`ShardMap::install_descriptor`]);
//! - leader hints (`NOT_LEADER`) and forgotten leaders.
//!
//! Invariants:
//! - Cached ranges never overlap, so a key has at most one route. Installing a route
//!   removes the cached routes it overlaps, unless one of them has a newer epoch
//!   `version` (then the incoming route is the stale one and is dropped).
//! - A route never replaces a cached route of the same shard with a newer epoch
//!   (`version`, then `conf_ver`).
//! - A leader hint survives an update that names no leader, as long as the shard's
//!   membership (`conf_ver`) did not change.
//! - Shard 0 (the placement driver's own group) never enters the map.
//! - `revision` is the PD revision up to which every change has been applied. Only whole
//!   maps and watch events move it; single routes may be newer than it, never older
//!   than the cached ones.
//!
//! The map is only a hint: nodes check every route, so a stale entry costs a retry and
//! a refresh, never a wrong answer.

use std::collections::{BTreeMap, HashMap};
use std::ops::Bound::{Excluded, Included, Unbounded};

use cairn_proto::{Epoch, KeyRange, NodeId, ShardDescriptor, ShardId, ShardMapEvent, ShardRoute};

/// The id of the placement driver's own group, which holds no data.
const PD_SHARD: ShardId = ShardId(0);

/// Orders epochs by age: a range change (`version`) outranks a membership change.
fn epoch_rank(e: Epoch) -> (u64, u64) {
    (e.version, e.conf_ver)
}

/// The cached shard map. See the module docs for its invariants.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ShardMap {
    revision: u64,
    /// Range start -> shard; indexes exactly the routes of `by_id`.
    by_start: BTreeMap<Vec<u8>, ShardId>,
    by_id: HashMap<ShardId, ShardRoute>,
}

impl ShardMap {
    /// An empty map at revision 0.
    pub fn new() -> Self {
        Self::default()
    }

    /// The PD revision every change up to which has been applied.
    pub fn revision(&self) -> u64 {
        self.revision
    }

    /// The number of cached shards.
    pub fn len(&self) -> usize {
        self.by_id.len()
    }

    pub fn is_empty(&self) -> bool {
        self.by_id.is_empty()
    }

    /// Every cached route, in key order.
    pub fn routes(&self) -> Vec<ShardRoute> {
        self.by_start.values().filter_map(|id| self.by_id.get(id)).cloned().collect()
    }

    /// The cached route of shard `id`.
    pub fn get(&self, id: ShardId) -> Option<&ShardRoute> {
        self.by_id.get(&id)
    }

    /// The cached route whose range contains `key`.
    pub fn locate(&self, key: &[u8]) -> Option<&ShardRoute> {
        let (_, id) = self.by_start.range::<[u8], _>((Unbounded, Included(key))).next_back()?;
        self.by_id.get(id).filter(|r| r.descriptor.range.contains(key))
    }

    /// Replaces the whole map with `routes` at `revision` (a full listing or a `full`
    /// watch event). Leader hints of shards whose epoch did not change are kept when
    /// the new route names no leader. Overlapping routes are resolved as by
    /// [`ShardMap::upsert`].
    pub fn replace(&mut self, routes: Vec<ShardRoute>, revision: u64) {
        let old = std::mem::take(self);
        for mut route in routes {
            if route.leader.is_none()
                && let Some(cached) = old.by_id.get(&route.descriptor.id)
                && cached.descriptor.epoch == route.descriptor.epoch
            {
                route.leader = cached.leader.clone();
            }
            self.upsert(route);
        }
        self.revision = revision;
    }

    /// Applies one `WatchShards` event. A `full` event replaces the map; a delta is
    /// applied only if it is newer than `revision` (a re-subscription may replay events
    /// already seen). Returns whether the event was applied.
    pub fn apply_event(&mut self, event: &ShardMapEvent) -> bool {
        if event.full {
            self.replace(event.shards.clone(), event.revision);
            return true;
        }
        if event.revision <= self.revision {
            return false;
        }
        for id in &event.removed {
            self.remove(*id);
        }
        for route in &event.shards {
            self.upsert(route.clone());
        }
        self.revision = event.revision;
        true
    }

    /// Installs one route (from `Locate`, a partial listing or a watch delta). Returns
    /// whether the map changed. See the module docs for when a route is dropped.
    pub fn upsert(&mut self, mut route: ShardRoute) -> bool {
        let id = route.descriptor.id;
        if id == PD_SHARD {
            return false;
        }
        if let Some(cached) = self.by_id.get(&id) {
            if epoch_rank(route.descriptor.epoch) < epoch_rank(cached.descriptor.epoch) {
                return false;
            }
            if route.leader.is_none() && cached.descriptor.epoch.conf_ver == route.descriptor.epoch.conf_ver {
                route.leader = cached.leader.clone();
            }
            if *cached == route {
                return false;
            }
        }
        let overlapping = self.overlapping(&route.descriptor.range, id);
        if overlapping
            .iter()
            .filter_map(|other| self.by_id.get(other))
            .any(|other| other.descriptor.epoch.version > route.descriptor.epoch.version)
        {
            return false;
        }
        for other in overlapping {
            self.remove(other);
        }
        self.remove(id);
        self.by_start.insert(route.descriptor.range.start.clone(), id);
        self.by_id.insert(id, route);
        true
    }

    /// Installs a descriptor a node returned with `EPOCH_MISMATCH`/`KEY_NOT_IN_SHARD`, if
    /// it is newer than the cached one (or the shard is not cached). The cached leader is
    /// kept unless the membership changed. Returns whether the map changed.
    pub fn install_descriptor(&mut self, descriptor: &ShardDescriptor) -> bool {
        let leader = match self.by_id.get(&descriptor.id) {
            Some(cached) if epoch_rank(descriptor.epoch) <= epoch_rank(cached.descriptor.epoch) => return false,
            Some(cached) if cached.descriptor.epoch.conf_ver == descriptor.epoch.conf_ver => cached.leader.clone(),
            _ => None,
        };
        self.upsert(ShardRoute { descriptor: descriptor.clone(), leader })
    }

    /// Records a leader hint for a cached shard.
    pub fn note_leader(&mut self, shard: ShardId, leader: NodeId, addr: &str) {
        if let Some(route) = self.by_id.get_mut(&shard) {
            route.leader = Some((leader, addr.to_string()));
        }
    }

    /// Forgets the cached leader of `shard`, so the next attempt asks its replicas.
    pub fn forget_leader(&mut self, shard: ShardId) {
        if let Some(route) = self.by_id.get_mut(&shard) {
            route.leader = None;
        }
    }

    /// Removes shard `id` (merged away).
    pub fn remove(&mut self, id: ShardId) {
        if let Some(route) = self.by_id.remove(&id)
            && self.by_start.get(&route.descriptor.range.start) == Some(&id)
        {
            self.by_start.remove(&route.descriptor.range.start);
        }
    }

    /// Groups keys (given with their positions) by the cached shard holding them, each
    /// group's positions sorted by key; the second value lists the positions no cached
    /// shard holds. Groups come in key order.
    pub fn group_keys<'k>(&self, keys: impl IntoIterator<Item = (usize, &'k [u8])>) -> (Vec<KeyGroup>, Vec<usize>) {
        let mut groups: BTreeMap<Vec<u8>, KeyGroup> = BTreeMap::new();
        let mut unrouted = Vec::new();
        let mut sorted: Vec<(usize, &[u8])> = keys.into_iter().collect();
        sorted.sort_by(|a, b| a.1.cmp(b.1).then(a.0.cmp(&b.0)));
        for (pos, key) in sorted {
            match self.locate(key) {
                Some(route) => groups
                    .entry(route.descriptor.range.start.clone())
                    .or_insert_with(|| KeyGroup { shard: route.descriptor.id, positions: Vec::new() })
                    .positions
                    .push(pos),
                None => unrouted.push(pos),
            }
        }
        (groups.into_values().collect(), unrouted)
    }

    /// The cached shards, other than `except`, whose ranges overlap `range`.
    fn overlapping(&self, range: &KeyRange, except: ShardId) -> Vec<ShardId> {
        let candidates: Box<dyn DoubleEndedIterator<Item = (&Vec<u8>, &ShardId)>> = if range.end.is_empty() {
            Box::new(self.by_start.iter())
        } else {
            Box::new(self.by_start.range::<[u8], _>((Unbounded, Excluded(range.end.as_slice()))))
        };
        let mut out = Vec::new();
        // Cached ranges are disjoint, so walking down from the highest start below
        // `range.end`, the first range that ends at or before `range.start` is the last
        // one that could overlap.
        for (_, id) in candidates.rev() {
            let Some(route) = self.by_id.get(id) else { continue };
            let cached = &route.descriptor.range;
            if !cached.end.is_empty() && cached.end.as_slice() <= range.start.as_slice() {
                break;
            }
            if *id != except {
                out.push(*id);
            }
        }
        out
    }
}

/// Keys that one cached shard holds: positions into the caller's key list, sorted by key.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KeyGroup {
    pub shard: ShardId,
    pub positions: Vec<usize>,
}

#[cfg(test)]
mod tests {
    use super::*;
    use cairn_proto::{ReplicaDescriptor, ReplicaRole};

    fn route(id: u64, start: &str, end: &str, version: u64, leader: Option<u64>) -> ShardRoute {
        ShardRoute {
            descriptor: ShardDescriptor {
                id: ShardId(id),
                range: KeyRange::new(start.as_bytes().to_vec(), end.as_bytes().to_vec()),
                epoch: Epoch { conf_ver: 1, version },
                replicas: (1..=3)
                    .map(|n| ReplicaDescriptor { node: NodeId(n), addr: format!("n{n}:1"), role: ReplicaRole::Voter })
                    .collect(),
            },
            leader: leader.map(|n| (NodeId(n), format!("n{n}:1"))),
        }
    }

    fn ids(map: &ShardMap) -> Vec<u64> {
        map.routes().iter().map(|r| r.descriptor.id.0).collect()
    }

    fn at(map: &ShardMap, key: &str) -> Option<u64> {
        map.locate(key.as_bytes()).map(|r| r.descriptor.id.0)
    }

    fn two_shards() -> ShardMap {
        let mut map = ShardMap::new();
        map.replace(vec![route(2, "m", "", 1, Some(1)), route(1, "", "m", 1, Some(2))], 5);
        map
    }

    #[test]
    fn locates_keys_in_disjoint_ranges() {
        let map = two_shards();
        assert_eq!(map.revision(), 5);
        assert_eq!(ids(&map), [1, 2]);
        assert_eq!(at(&map, ""), Some(1));
        assert_eq!(at(&map, "l\u{7f}"), Some(1));
        assert_eq!(at(&map, "m"), Some(2));
        assert_eq!(at(&map, "zzz"), Some(2));
        let mut gap = ShardMap::new();
        gap.replace(vec![route(1, "", "c", 1, None), route(2, "f", "k", 1, None)], 1);
        assert_eq!(at(&gap, "d"), None);
        assert_eq!(at(&gap, "k"), None);
        assert_eq!(at(&gap, "f"), Some(2));
    }

    #[test]
    fn shard_zero_never_enters() {
        let mut map = ShardMap::new();
        assert!(!map.upsert(route(0, "", "", 9, None)));
        map.replace(vec![route(0, "", "", 9, None)], 3);
        assert!(map.is_empty());
    }

    #[test]
    fn a_split_event_replaces_the_parent_range() {
        let mut map = two_shards();
        // Shard 2 splits at "t" into 2 and 3.
        let event = ShardMapEvent {
            revision: 6,
            full: false,
            shards: vec![route(2, "m", "t", 2, None), route(3, "t", "", 2, Some(3))],
            removed: vec![],
        };
        assert!(map.apply_event(&event));
        assert_eq!(map.revision(), 6);
        assert_eq!(ids(&map), [1, 2, 3]);
        assert_eq!(at(&map, "x"), Some(3));
        assert_eq!(map.get(ShardId(2)).unwrap().leader, Some((NodeId(1), "n1:1".into())), "the hint survives a split");
        // A replay of the same revision changes nothing.
        let mut replay = event.clone();
        replay.shards = vec![route(2, "m", "", 1, None)];
        assert!(!map.apply_event(&replay));
        assert_eq!(at(&map, "x"), Some(3));
    }

    #[test]
    fn a_merge_event_removes_the_absorbed_shard() {
        let mut map = two_shards();
        map.upsert(route(2, "m", "t", 2, None));
        map.upsert(route(3, "t", "", 2, None));
        let merge = ShardMapEvent {
            revision: 9,
            full: false,
            shards: vec![route(2, "m", "", 3, None)],
            removed: vec![ShardId(3)],
        };
        assert!(map.apply_event(&merge));
        assert_eq!(ids(&map), [1, 2]);
        assert_eq!(at(&map, "x"), Some(2));
        // Even without the `removed` list, the merged range evicts the absorbed shard.
        let mut map = two_shards();
        map.upsert(route(2, "m", "t", 2, None));
        map.upsert(route(3, "t", "", 2, None));
        assert!(map.upsert(route(2, "m", "", 3, None)));
        assert_eq!(ids(&map), [1, 2]);
    }

    #[test]
    fn overlaps_are_resolved_by_epoch_version() {
        let mut map = two_shards();
        // A newer route overlapping an older one evicts it.
        assert!(map.upsert(route(3, "t", "", 2, None)));
        assert_eq!(ids(&map), [1, 3]);
        assert_eq!(at(&map, "p"), None, "the rest of the old range is unknown until located");
        // An older route overlapping a newer one is dropped.
        assert!(!map.upsert(route(2, "m", "", 1, Some(1))));
        assert_eq!(ids(&map), [1, 3]);
        assert!(map.upsert(route(2, "m", "t", 2, None)));
        assert_eq!(ids(&map), [1, 2, 3]);
    }

    #[test]
    fn an_older_route_of_the_same_shard_is_ignored_and_hints_survive() {
        let mut map = two_shards();
        assert!(!map.upsert(route(1, "", "m", 1, None)), "same epoch, no leader: keeps the hint, no change");
        assert_eq!(map.get(ShardId(1)).unwrap().leader.as_ref().map(|l| l.0), Some(NodeId(2)));
        let mut older = route(1, "", "m", 1, Some(3));
        older.descriptor.epoch.conf_ver = 0;
        assert!(!map.upsert(older));
        // A newer membership drops the hint unless the route brings one.
        let mut moved = route(1, "", "m", 1, None);
        moved.descriptor.epoch.conf_ver = 2;
        assert!(map.upsert(moved));
        assert_eq!(map.get(ShardId(1)).unwrap().leader, None);
        // The PD naming a leader at the same epoch is taken.
        let mut led = route(1, "", "m", 1, Some(3));
        led.descriptor.epoch.conf_ver = 2;
        assert!(map.upsert(led));
        assert_eq!(map.get(ShardId(1)).unwrap().leader.as_ref().map(|l| l.0), Some(NodeId(3)));
    }

    #[test]
    fn descriptors_from_nodes_install_only_when_newer() {
        let mut map = two_shards();
        let current = route(2, "m", "t", 2, None).descriptor;
        assert!(map.install_descriptor(&current));
        assert_eq!(map.get(ShardId(2)).unwrap().descriptor, current);
        assert_eq!(map.get(ShardId(2)).unwrap().leader.as_ref().map(|l| l.0), Some(NodeId(1)), "range change keeps it");
        assert!(!map.install_descriptor(&route(2, "m", "", 1, None).descriptor));
        assert!(!map.install_descriptor(&current), "equal is not newer");
        let mut reconfigured = current.clone();
        reconfigured.epoch.conf_ver = 7;
        assert!(map.install_descriptor(&reconfigured));
        assert_eq!(map.get(ShardId(2)).unwrap().leader, None, "membership change drops the leader");
        // An unknown shard is installed.
        assert!(map.install_descriptor(&route(3, "t", "", 2, None).descriptor));
        assert_eq!(at(&map, "x"), Some(3));
    }

    #[test]
    fn full_events_replace_but_keep_same_epoch_hints() {
        let mut map = two_shards();
        map.note_leader(ShardId(2), NodeId(3), "n3:1");
        let full = ShardMapEvent {
            revision: 2,
            full: true,
            shards: vec![route(2, "", "", 1, None), route(4, "x", "", 3, None)],
            removed: vec![],
        };
        assert!(map.apply_event(&full));
        assert_eq!(map.revision(), 2, "a full event sets the revision even if lower");
        assert_eq!(ids(&map), [4], "4 is newer and overlaps 2");
        let mut map = two_shards();
        map.note_leader(ShardId(2), NodeId(3), "n3:1");
        map.replace(vec![route(1, "", "m", 1, None), route(2, "m", "", 1, None)], 7);
        assert_eq!(map.get(ShardId(2)).unwrap().leader.as_ref().map(|l| l.0), Some(NodeId(3)));
        map.forget_leader(ShardId(2));
        assert_eq!(map.get(ShardId(2)).unwrap().leader, None);
    }

    #[test]
    fn groups_keys_by_shard_in_key_order() {
        let map = {
            let mut m = ShardMap::new();
            m.replace(vec![route(1, "", "g", 1, None), route(2, "g", "p", 1, None), route(3, "t", "", 1, None)], 1);
            m
        };
        let keys: Vec<&[u8]> = vec![b"z", b"a", b"h", b"q", b"b", b"a"];
        let (groups, unrouted) = map.group_keys(keys.iter().copied().enumerate());
        assert_eq!(
            groups,
            [
                KeyGroup { shard: ShardId(1), positions: vec![1, 5, 4] },
                KeyGroup { shard: ShardId(2), positions: vec![2] },
                KeyGroup { shard: ShardId(3), positions: vec![0] },
            ]
        );
        assert_eq!(unrouted, [3]);
    }
}
