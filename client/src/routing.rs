//! Routing decisions over a cached shard list: which shard holds a key, which node to ask,
//! how to merge the lists several nodes report, and how a scan walks shards.
//!
//! Pure functions only; [`crate::DirectClient`] and [`crate::Client`] own their caches
//! and do the I/O (the PD-routed client's cache rules are in [`crate::shard_map`]).
//!
//! Invariants:
//! - Among reports of one shard, a newer epoch always wins (`version`, then `conf_ver`);
//!   an older report never overwrites a newer one.
//! - When cached ranges overlap (a node still reports a shard from before a split or
//!   merge), a key routes to the overlapping shard with the newest epoch `version`; a
//!   wrong guess costs one `EpochMismatch`/`KeyNotInShard` and a refresh, never a wrong
//!   answer, because the server checks every route.
//! - A scan cursor only moves forward, so a scan terminates.

use std::collections::BTreeMap;

use cairn_proto::{
    ApiError, Epoch, KeyRange, NodeId, RaftRole, ReplicaRole, ShardDescriptor, ShardId, ShardRoute, ShardStatus,
};

use crate::node_client::ScanRange;

/// Orders epochs by age: a range change (`version`) outranks a membership change.
fn epoch_rank(e: Epoch) -> (u64, u64) {
    (e.version, e.conf_ver)
}

/// The cached shard whose range contains `key`; with overlapping ranges, the one with the
/// newest epoch.
pub fn shard_for_key<'a>(shards: &'a [ShardStatus], key: &[u8]) -> Option<&'a ShardStatus> {
    let mut best: Option<&ShardStatus> = None;
    for s in shards.iter().filter(|s| s.descriptor.range.contains(key)) {
        if best.is_none_or(|b| epoch_rank(s.descriptor.epoch) > epoch_rank(b.descriptor.epoch)) {
            best = Some(s);
        }
    }
    best
}

/// How much a report of a shard is trusted: newest epoch first, then a live replica over
/// one shutting down, then the highest term, then the leader's own report.
fn report_rank(s: &ShardStatus) -> (u64, u64, bool, u64, bool) {
    let (version, conf_ver) = epoch_rank(s.descriptor.epoch);
    (version, conf_ver, s.role != RaftRole::Shutdown, s.term, s.role == RaftRole::Leader)
}

/// Merges the shard reports of several nodes into one list, one entry per shard id,
/// sorted by range start. Of equally trusted reports the earliest wins, so callers put
/// fresh reports before cached ones. If the chosen report knows no leader, the leader
/// known by a report of the same epoch and at least the same term is kept.
pub fn merge_statuses(reports: impl IntoIterator<Item = ShardStatus>) -> Vec<ShardStatus> {
    let mut by_id: BTreeMap<ShardId, Vec<ShardStatus>> = BTreeMap::new();
    for r in reports {
        by_id.entry(r.descriptor.id).or_default().push(r);
    }
    let mut merged: Vec<ShardStatus> = by_id
        .into_values()
        .filter_map(|reports| {
            let mut best: Option<&ShardStatus> = None;
            for r in &reports {
                if best.is_none_or(|b| report_rank(r) > report_rank(b)) {
                    best = Some(r);
                }
            }
            let mut best = best?.clone();
            if best.leader.is_none() || best.leader_addr.is_empty() {
                let hint = reports
                    .iter()
                    .filter(|r| r.descriptor.epoch == best.descriptor.epoch && r.term >= best.term)
                    .filter(|r| r.leader.is_some() && !r.leader_addr.is_empty())
                    .max_by_key(|r| r.term);
                if let Some(hint) = hint {
                    best.leader = hint.leader;
                    best.leader_addr = hint.leader_addr.clone();
                }
            }
            Some(best)
        })
        .collect();
    merged.sort_by(|a, b| {
        a.descriptor.range.start.cmp(&b.descriptor.range.start).then(a.descriptor.id.cmp(&b.descriptor.id))
    });
    merged
}

/// Whether the ranges of `shards` together cover the whole key space without a gap.
pub fn covers_key_space(shards: &[ShardStatus]) -> bool {
    let mut ranges: Vec<&KeyRange> = shards.iter().map(|s| &s.descriptor.range).collect();
    ranges.sort_by(|a, b| a.start.cmp(&b.start));
    // `covered` is the end of the prefix of the key space covered so far.
    let mut covered: &[u8] = &[];
    for r in ranges {
        if r.start.as_slice() > covered {
            return false;
        }
        if r.end.is_empty() {
            return true;
        }
        covered = covered.max(r.end.as_slice());
    }
    false
}

/// The address to send attempt number `attempt` for a shard to: its known leader, else
/// its replicas in turn (voters first), else `seed` when no replica has an address.
pub fn target_addr(status: &ShardStatus, attempt: u32, seed: &str) -> String {
    if status.leader.is_some() && !status.leader_addr.is_empty() {
        return status.leader_addr.clone();
    }
    let mut replicas: Vec<&str> = status
        .descriptor
        .replicas
        .iter()
        .filter(|r| r.role == ReplicaRole::Voter && !r.addr.is_empty())
        .map(|r| r.addr.as_str())
        .collect();
    replicas.extend(
        status
            .descriptor
            .replicas
            .iter()
            .filter(|r| r.role == ReplicaRole::Learner && !r.addr.is_empty())
            .map(|r| r.addr.as_str()),
    );
    if replicas.is_empty() {
        return seed.to_string();
    }
    // The index fits: `attempt % len` is below `len`, which is a `usize`.
    replicas[attempt as usize % replicas.len()].to_string()
}

/// Records a leader hint for `shard`.
pub fn note_leader(shards: &mut [ShardStatus], shard: ShardId, leader: NodeId, addr: &str) {
    for s in shards.iter_mut().filter(|s| s.descriptor.id == shard) {
        s.leader = Some(leader);
        s.leader_addr = addr.to_string();
    }
}

/// Forgets the cached leader of `shard`, so the next attempt asks its replicas in turn.
pub fn forget_leader(shards: &mut [ShardStatus], shard: ShardId) {
    for s in shards.iter_mut().filter(|s| s.descriptor.id == shard) {
        s.leader = None;
        s.leader_addr.clear();
    }
}

/// Installs the descriptor a replica returned with `EpochMismatch`/`KeyNotInShard`, if it
/// is newer than the cached one. Returns whether the cache changed. Shards the cache does
/// not know are left to a refresh, which also learns their leaders.
pub fn apply_descriptor(shards: &mut [ShardStatus], current: &ShardDescriptor) -> bool {
    let mut changed = false;
    for s in shards.iter_mut().filter(|s| s.descriptor.id == current.id) {
        if epoch_rank(current.epoch) > epoch_rank(s.descriptor.epoch) {
            if current.epoch.conf_ver != s.descriptor.epoch.conf_ver {
                // Membership changed: the cached leader may no longer be a replica.
                s.leader = None;
                s.leader_addr.clear();
            }
            s.descriptor = current.clone();
            changed = true;
        }
    }
    changed
}

/// Every node address the cache mentions, leaders first, without duplicates.
pub fn known_addrs(shards: &[ShardStatus]) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    let leaders = shards.iter().map(|s| s.leader_addr.as_str());
    let replicas = shards.iter().flat_map(|s| s.descriptor.replicas.iter().map(|r| r.addr.as_str()));
    for addr in leaders.chain(replicas) {
        if !addr.is_empty() && !out.iter().any(|a| a == addr) {
            out.push(addr.to_string());
        }
    }
    out
}

/// The part of a scan of `[cursor, range_end)` that one shard serves: from the cursor to
/// the nearer of `range_end` and the shard's end (an empty end means unbounded).
pub fn scan_window(cursor: &[u8], range_end: &[u8], shard: &KeyRange) -> ScanRange {
    let end = match (range_end.is_empty(), shard.end.is_empty()) {
        (true, _) => shard.end.clone(),
        (false, true) => range_end.to_vec(),
        (false, false) => range_end.min(shard.end.as_slice()).to_vec(),
    };
    ScanRange { start: cursor.to_vec(), end, prefix: None }
}

/// Where a scan of `[.., range_end)` continues after one page was read from a shard
/// ending at `shard_end`: at `continue_from` if the page was cut short, else at the next
/// shard, or nowhere (`None`) once the range or the key space is exhausted. A server
/// that would make the cursor go backwards or stand still is an `Internal` error.
pub fn next_scan_cursor(
    cursor: &[u8],
    continue_from: Option<Vec<u8>>,
    shard_end: &[u8],
    range_end: &[u8],
) -> Result<Option<Vec<u8>>, ApiError> {
    let next = match continue_from {
        Some(next) => next,
        None if shard_end.is_empty() => return Ok(None),
        None => shard_end.to_vec(),
    };
    if next.as_slice() <= cursor {
        return Err(ApiError::Internal(format!(
            "scan cursor would not advance: {} after {}",
            cairn_proto::display_key(&next),
            cairn_proto::display_key(cursor)
        )));
    }
    if !range_end.is_empty() && next.as_slice() >= range_end {
        return Ok(None);
    }
    Ok(Some(next))
}

/// The address to send attempt number `attempt` for a PD-routed shard to: its leader,
/// unless that is `avoid` (the address the previous attempt failed on); else its
/// replicas in turn (voters first), skipping `avoid` when another replica has an address.
/// `None` when no replica has an address.
pub fn pick_target(route: &ShardRoute, attempt: u32, avoid: Option<&str>) -> Option<String> {
    if let Some((_, addr)) = &route.leader
        && !addr.is_empty()
        && avoid != Some(addr.as_str())
    {
        return Some(addr.clone());
    }
    let replicas = &route.descriptor.replicas;
    let by_role = |role: ReplicaRole| {
        replicas.iter().filter(move |r| r.role == role && !r.addr.is_empty()).map(|r| r.addr.as_str())
    };
    let all: Vec<&str> = by_role(ReplicaRole::Voter).chain(by_role(ReplicaRole::Learner)).collect();
    let preferred: Vec<&str> = all.iter().copied().filter(|a| Some(*a) != avoid).collect();
    let pool = if preferred.is_empty() { all } else { preferred };
    if pool.is_empty() {
        return None;
    }
    // The index fits: `attempt % len` is below `len`, which is a `usize`.
    Some(pool[attempt as usize % pool.len()].to_string())
}

/// The smallest key greater than `key`: `key` followed by a zero byte.
pub fn key_successor(key: &[u8]) -> Vec<u8> {
    let mut next = Vec::with_capacity(key.len() + 1);
    next.extend_from_slice(key);
    next.push(0);
    next
}

/// Where a scan continues after a page read from `[cursor, ..)` of a shard ending at
/// `shard_end`. A page cut short (`continue_from` set) continues right after the last key
/// it returned (or at `continue_from` if it returned none), so a key is never returned
/// twice and, because the next page is routed afresh, never skipped when the shard split
/// or moved in between. A shard read to its end continues at the shard's end. `None`
/// once the range or the key space is exhausted.
pub fn next_page_cursor(
    cursor: &[u8],
    last_key: Option<&[u8]>,
    continue_from: Option<Vec<u8>>,
    shard_end: &[u8],
    range_end: &[u8],
) -> Result<Option<Vec<u8>>, ApiError> {
    let continue_from = match (continue_from, last_key) {
        (Some(_), Some(last)) => Some(key_successor(last)),
        (continue_from, _) => continue_from,
    };
    next_scan_cursor(cursor, continue_from, shard_end, range_end)
}

/// Where the next page of a PD shard listing of `[cursor, range_end)` starts, after a
/// page of `shards` asked with `page_limit`: at the end of the last shard if the page was
/// full, else nowhere. A listing that would not advance is an `Internal` error.
pub fn next_listing_cursor(
    cursor: &[u8],
    shards: &[ShardRoute],
    page_limit: u32,
    range_end: &[u8],
) -> Result<Option<Vec<u8>>, ApiError> {
    if page_limit == 0 || shards.len() < page_limit as usize {
        return Ok(None);
    }
    let Some(last) = shards.last() else { return Ok(None) };
    next_scan_cursor(cursor, None, &last.descriptor.range.end, range_end)
        .map_err(|_| ApiError::Internal("the PD's shard listing did not advance".into()))
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use cairn_proto::ReplicaDescriptor;

    pub(crate) fn status(id: u64, start: &[u8], end: &[u8], version: u64, leader: Option<(u64, &str)>) -> ShardStatus {
        ShardStatus {
            descriptor: ShardDescriptor {
                id: ShardId(id),
                range: KeyRange::new(start.to_vec(), end.to_vec()),
                epoch: Epoch { conf_ver: 1, version },
                replicas: (1..=3)
                    .map(|n| ReplicaDescriptor {
                        node: NodeId(n),
                        addr: format!("n{n}:7700"),
                        role: ReplicaRole::Voter,
                    })
                    .collect(),
            },
            role: RaftRole::Follower,
            leader: leader.map(|(n, _)| NodeId(n)),
            leader_addr: leader.map(|(_, a)| a.to_string()).unwrap_or_default(),
            term: 1,
            applied_index: 10,
            last_log_index: 10,
        }
    }

    #[test]
    fn routes_keys_to_the_containing_shard() {
        let shards = vec![status(1, b"", b"m", 1, None), status(2, b"m", b"", 1, None)];
        assert_eq!(shard_for_key(&shards, b"").map(|s| s.descriptor.id), Some(ShardId(1)));
        assert_eq!(shard_for_key(&shards, b"l\xff").map(|s| s.descriptor.id), Some(ShardId(1)));
        assert_eq!(shard_for_key(&shards, b"m").map(|s| s.descriptor.id), Some(ShardId(2)));
        assert_eq!(shard_for_key(&shards, b"\xff\xff").map(|s| s.descriptor.id), Some(ShardId(2)));
        let gap = vec![status(1, b"", b"m", 1, None), status(2, b"p", b"", 1, None)];
        assert!(shard_for_key(&gap, b"n").is_none());
    }

    #[test]
    fn overlapping_ranges_route_to_the_newest_epoch() {
        // Shard 1 split into 1 and 3 at "m", but one report of the old shard 1 remains.
        let shards = vec![status(9, b"", b"", 1, None), status(3, b"m", b"", 2, None), status(1, b"", b"m", 2, None)];
        assert_eq!(shard_for_key(&shards, b"x").map(|s| s.descriptor.id), Some(ShardId(3)));
        assert_eq!(shard_for_key(&shards, b"a").map(|s| s.descriptor.id), Some(ShardId(1)));
    }

    #[test]
    fn merge_keeps_the_newest_report_of_each_shard() {
        let old = status(1, b"", b"", 1, Some((1, "n1:7700")));
        let mut new = status(1, b"", b"m", 2, None);
        new.term = 2;
        let mut leader_view = new.clone();
        leader_view.role = RaftRole::Leader;
        leader_view.leader = Some(NodeId(2));
        leader_view.leader_addr = "n2:7700".into();
        let other = status(2, b"m", b"", 2, None);

        let merged = merge_statuses(vec![other.clone(), old.clone(), new.clone()]);
        assert_eq!(merged.len(), 2);
        assert_eq!(merged[0].descriptor, new.descriptor);
        assert_eq!(merged[1], other);

        // The leader's own report wins over a follower's at the same epoch and term.
        let merged = merge_statuses(vec![new.clone(), leader_view.clone()]);
        assert_eq!(merged, vec![leader_view]);
    }

    #[test]
    fn merge_borrows_a_leader_hint_from_an_equal_report() {
        let mut without = status(1, b"", b"", 1, None);
        without.term = 3;
        let mut with = status(1, b"", b"", 1, Some((2, "n2:7700")));
        with.term = 3;
        let merged = merge_statuses(vec![without.clone(), with]);
        assert_eq!(merged[0].leader, Some(NodeId(2)));
        assert_eq!(merged[0].leader_addr, "n2:7700");
        // A hint from an older term is not trusted.
        let mut stale = status(1, b"", b"", 1, Some((1, "n1:7700")));
        stale.term = 2;
        let merged = merge_statuses(vec![without, stale]);
        assert_eq!(merged[0].leader, None);
    }

    #[test]
    fn coverage() {
        assert!(!covers_key_space(&[]));
        assert!(covers_key_space(&[status(1, b"", b"", 1, None)]));
        assert!(covers_key_space(&[status(2, b"m", b"", 1, None), status(1, b"", b"m", 1, None)]));
        assert!(!covers_key_space(&[status(1, b"", b"m", 1, None)]));
        assert!(!covers_key_space(&[status(1, b"a", b"", 1, None)]));
        assert!(!covers_key_space(&[status(1, b"", b"k", 1, None), status(2, b"m", b"", 1, None)]));
        // Overlaps are fine.
        assert!(covers_key_space(&[
            status(1, b"", b"p", 1, None),
            status(2, b"c", b"f", 1, None),
            status(3, b"m", b"", 1, None)
        ]));
    }

    #[test]
    fn targets_the_leader_else_rotates_replicas_else_the_seed() {
        let led = status(1, b"", b"", 1, Some((2, "n2:7700")));
        assert_eq!(target_addr(&led, 0, "seed:1"), "n2:7700");
        assert_eq!(target_addr(&led, 5, "seed:1"), "n2:7700");

        let mut leaderless = status(1, b"", b"", 1, None);
        leaderless.descriptor.replicas[0].role = ReplicaRole::Learner;
        let picks: Vec<String> = (0..4).map(|a| target_addr(&leaderless, a, "seed:1")).collect();
        assert_eq!(picks, ["n2:7700", "n3:7700", "n1:7700", "n2:7700"]);

        leaderless.descriptor.replicas.clear();
        assert_eq!(target_addr(&leaderless, 3, "seed:1"), "seed:1");
    }

    #[test]
    fn leader_hints_and_descriptors_update_the_cache() {
        let mut shards = vec![status(1, b"", b"", 1, None)];
        note_leader(&mut shards, ShardId(1), NodeId(3), "n3:7700");
        assert_eq!(target_addr(&shards[0], 0, "s"), "n3:7700");
        forget_leader(&mut shards, ShardId(1));
        assert_eq!(shards[0].leader, None);

        note_leader(&mut shards, ShardId(1), NodeId(3), "n3:7700");
        let mut newer = shards[0].descriptor.clone();
        newer.range = KeyRange::new(Vec::new(), b"m".to_vec());
        newer.epoch.version = 2;
        assert!(apply_descriptor(&mut shards, &newer));
        assert_eq!(shards[0].descriptor, newer);
        assert_eq!(shards[0].leader, Some(NodeId(3)), "a range change keeps the leader");
        // An older descriptor never overwrites a newer one.
        let mut older = newer.clone();
        older.epoch.version = 1;
        assert!(!apply_descriptor(&mut shards, &older));
        assert_eq!(shards[0].descriptor, newer);
        // A membership change drops the cached leader.
        let mut moved = newer.clone();
        moved.epoch.conf_ver = 5;
        assert!(apply_descriptor(&mut shards, &moved));
        assert_eq!(shards[0].leader, None);
    }

    #[test]
    fn known_addrs_are_deduplicated_leaders_first() {
        let shards = vec![status(1, b"", b"m", 1, Some((3, "n3:7700"))), status(2, b"m", b"", 1, None)];
        assert_eq!(known_addrs(&shards), ["n3:7700", "n1:7700", "n2:7700"]);
    }

    #[test]
    fn scan_windows_clip_to_the_shard_and_the_range() {
        let shard = KeyRange::new(b"c".to_vec(), b"m".to_vec());
        assert_eq!(
            scan_window(b"d", b"", &shard),
            ScanRange { start: b"d".to_vec(), end: b"m".to_vec(), prefix: None }
        );
        assert_eq!(scan_window(b"d", b"f", &shard).end, b"f".to_vec());
        assert_eq!(scan_window(b"d", b"z", &shard).end, b"m".to_vec());
        let last = KeyRange::new(b"m".to_vec(), Vec::new());
        assert_eq!(scan_window(b"n", b"", &last).end, Vec::<u8>::new());
        assert_eq!(scan_window(b"n", b"q", &last).end, b"q".to_vec());
    }

    fn pd_route(leader: Option<&str>, learner: Option<&str>) -> ShardRoute {
        let mut descriptor = status(1, b"", b"", 1, None).descriptor;
        if let Some(addr) = learner {
            descriptor.replicas.push(ReplicaDescriptor {
                node: NodeId(9),
                addr: addr.to_string(),
                role: ReplicaRole::Learner,
            });
        }
        ShardRoute { descriptor, leader: leader.map(|a| (NodeId(2), a.to_string())) }
    }

    #[test]
    fn pd_routes_target_the_leader_unless_it_just_failed() {
        let led = pd_route(Some("n2:7700"), None);
        assert_eq!(pick_target(&led, 0, None).as_deref(), Some("n2:7700"));
        assert_eq!(pick_target(&led, 7, Some("n1:7700")).as_deref(), Some("n2:7700"));
        // The leader just failed: another replica, never the failed one.
        for attempt in 0..6 {
            let t = pick_target(&led, attempt, Some("n2:7700")).unwrap();
            assert!(t == "n1:7700" || t == "n3:7700", "{t}");
        }
        // Leaderless: voters in turn, then learners.
        let leaderless = pd_route(None, Some("l9:7700"));
        let picks: Vec<String> = (0..4).map(|a| pick_target(&leaderless, a, None).unwrap()).collect();
        assert_eq!(picks, ["n1:7700", "n2:7700", "n3:7700", "l9:7700"]);
        // A single replica that failed is still the only choice.
        let mut single = pd_route(None, None);
        single.descriptor.replicas.truncate(1);
        assert_eq!(pick_target(&single, 3, Some("n1:7700")).as_deref(), Some("n1:7700"));
        single.descriptor.replicas[0].addr.clear();
        assert_eq!(pick_target(&single, 0, None), None);
        // An empty leader address is no leader.
        let blank = pd_route(Some(""), None);
        assert_eq!(pick_target(&blank, 1, None).as_deref(), Some("n2:7700"));
    }

    #[test]
    fn pages_continue_after_the_last_key_returned() {
        assert_eq!(key_successor(b"ab"), b"ab\0".to_vec());
        assert_eq!(key_successor(b""), vec![0]);
        // Cut short: right after the last key, whatever `continue_from` says.
        assert_eq!(next_page_cursor(b"a", Some(b"c"), Some(b"f".to_vec()), b"m", b"").unwrap(), Some(b"c\0".to_vec()));
        // Cut short without documents: at `continue_from`.
        assert_eq!(next_page_cursor(b"a", None, Some(b"f".to_vec()), b"m", b"").unwrap(), Some(b"f".to_vec()));
        // Shard done: the next shard, or the end.
        assert_eq!(next_page_cursor(b"a", Some(b"c"), None, b"m", b"").unwrap(), Some(b"m".to_vec()));
        assert_eq!(next_page_cursor(b"a", Some(b"c"), None, b"", b"").unwrap(), None);
        assert_eq!(next_page_cursor(b"a", Some(b"c"), Some(b"d".to_vec()), b"m", b"c\0").unwrap(), None);
        // A page that would go backwards is a server bug.
        assert!(next_page_cursor(b"d", None, Some(b"c".to_vec()), b"m", b"").is_err());
    }

    #[test]
    fn shard_listings_page_by_the_last_end() {
        let route = |start: &[u8], end: &[u8]| ShardRoute {
            descriptor: ShardDescriptor { range: KeyRange::new(start.to_vec(), end.to_vec()), ..Default::default() },
            leader: None,
        };
        let page = vec![route(b"", b"g"), route(b"g", b"p")];
        assert_eq!(next_listing_cursor(b"", &page, 2, b"").unwrap(), Some(b"p".to_vec()));
        assert_eq!(next_listing_cursor(b"", &page, 3, b"").unwrap(), None, "a short page is the last");
        assert_eq!(next_listing_cursor(b"", &page, 2, b"k").unwrap(), None, "past the range");
        assert_eq!(next_listing_cursor(b"", &[route(b"", b"")], 1, b"").unwrap(), None, "end of key space");
        assert!(next_listing_cursor(b"p", &page, 2, b"").is_err(), "no progress");
        assert_eq!(next_listing_cursor(b"", &page, 0, b"").unwrap(), None, "limit 0 lists everything");
    }

    #[test]
    fn scan_cursor_walks_forward_and_stops() {
        // Page cut short: continue inside the shard.
        assert_eq!(next_scan_cursor(b"c", Some(b"f".to_vec()), b"m", b"").unwrap(), Some(b"f".to_vec()));
        // Shard done: next shard.
        assert_eq!(next_scan_cursor(b"c", None, b"m", b"").unwrap(), Some(b"m".to_vec()));
        // Shard done and the range ends inside it, at its end, or the key space ends.
        assert_eq!(next_scan_cursor(b"c", None, b"m", b"k").unwrap(), None);
        assert_eq!(next_scan_cursor(b"c", None, b"m", b"m").unwrap(), None);
        assert_eq!(next_scan_cursor(b"c", None, b"", b"").unwrap(), None);
        // A continuation at or past the range end stops too.
        assert_eq!(next_scan_cursor(b"c", Some(b"k".to_vec()), b"m", b"k").unwrap(), None);
        // No progress is a server bug, not an endless loop.
        assert!(next_scan_cursor(b"c", Some(b"c".to_vec()), b"m", b"").is_err());
        assert!(next_scan_cursor(b"c", Some(b"b".to_vec()), b"m", b"").is_err());
    }
}
