//! Fault rules for chaos tests (RFC 006): what this node sends to a peer can
//! be dropped, delayed or cut, per link or per (link, shard), and snapshots
//! can be cut on their own. Only in-process tests and `Admin.SetLinkFaults`
//! on a node started with `fault-injection = true` install rules; without
//! any, a message costs one atomic load.
//!
//! A rule acts on the sending side only, so a cut from A to B with B to A left
//! open is a one-way partition at the message level: A's requests never reach
//! B while B's reach A and are answered. Random drops come from a seeded
//! generator, so a test's choices repeat (the cluster's timing does not).

use std::collections::{HashMap, HashSet};
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use rand::{Rng, SeedableRng};

/// What happens to messages sent to one peer.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct LinkRule {
    /// Every message is dropped.
    pub cut: bool,
    /// Each message is dropped with this probability (0..=1).
    pub drop_probability: f64,
    /// Each message waits a delay drawn from this range (ms) before it is sent.
    pub delay_ms: Option<(u64, u64)>,
    /// Snapshot streams to the peer fail at once.
    pub snapshots_cut: bool,
}

/// The fate of one message.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Fate {
    Deliver,
    DeliverAfter(Duration),
    Drop,
}

struct Rules {
    links: HashMap<u64, LinkRule>,
    shards_cut: HashSet<(u64, u64)>,
    rng: rand::rngs::StdRng,
}

pub struct Faults {
    active: AtomicBool,
    rules: Mutex<Rules>,
}

impl Default for Faults {
    fn default() -> Self {
        Self {
            active: AtomicBool::new(false),
            rules: Mutex::new(Rules {
                links: HashMap::new(),
                shards_cut: HashSet::new(),
                rng: rand::rngs::StdRng::seed_from_u64(0),
            }),
        }
    }
}

impl Faults {
    fn update(&self, f: impl FnOnce(&mut Rules)) {
        let mut rules = self.rules.lock().expect("fault rules lock");
        f(&mut rules);
        let active = !rules.links.is_empty() || !rules.shards_cut.is_empty();
        self.active.store(active, Ordering::Release);
    }

    /// Seeds the generator behind random drops and delays.
    pub fn seed(&self, seed: u64) {
        self.update(|r| r.rng = rand::rngs::StdRng::seed_from_u64(seed));
    }

    /// Sets the rule for messages to `peer` (a default rule removes it).
    pub fn set_link(&self, peer: u64, rule: LinkRule) {
        self.update(|r| {
            if rule == LinkRule::default() {
                r.links.remove(&peer);
            } else {
                r.links.insert(peer, rule);
            }
        });
    }

    /// Drops every message of `shard` to `peer`.
    pub fn cut_shard(&self, peer: u64, shard: u64) {
        self.update(|r| {
            r.shards_cut.insert((peer, shard));
        });
    }

    /// Removes every rule.
    pub fn clear(&self) {
        self.update(|r| {
            r.links.clear();
            r.shards_cut.clear();
        });
    }

    /// The fate of a message of `shard` to `peer`.
    pub fn message(&self, peer: u64, shard: u64) -> Fate {
        if !self.active.load(Ordering::Acquire) {
            return Fate::Deliver;
        }
        let mut rules = self.rules.lock().expect("fault rules lock");
        if rules.shards_cut.contains(&(peer, shard)) {
            return Fate::Drop;
        }
        let Some(rule) = rules.links.get(&peer).cloned() else {
            return Fate::Deliver;
        };
        if rule.cut || (rule.drop_probability > 0.0 && rules.rng.random_bool(rule.drop_probability.min(1.0))) {
            return Fate::Drop;
        }
        match rule.delay_ms {
            Some((lo, hi)) if hi > 0 => {
                Fate::DeliverAfter(Duration::from_millis(rules.rng.random_range(lo..=hi.max(lo))))
            }
            _ => Fate::Deliver,
        }
    }

    /// Whether a snapshot stream to `peer` may start.
    pub fn snapshot_allowed(&self, peer: u64) -> bool {
        if !self.active.load(Ordering::Acquire) {
            return true;
        }
        let rules = self.rules.lock().expect("fault rules lock");
        rules.links.get(&peer).is_none_or(|r| !r.cut && !r.snapshots_cut)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rules_decide_each_message() {
        let f = Faults::default();
        assert_eq!(f.message(2, 1), Fate::Deliver);
        f.set_link(2, LinkRule { cut: true, ..LinkRule::default() });
        assert_eq!(f.message(2, 1), Fate::Drop);
        assert_eq!(f.message(3, 1), Fate::Deliver, "other links unaffected");
        assert!(!f.snapshot_allowed(2));
        f.set_link(2, LinkRule::default());
        assert_eq!(f.message(2, 1), Fate::Deliver, "a default rule removes the cut");

        f.cut_shard(3, 7);
        assert_eq!((f.message(3, 7), f.message(3, 8)), (Fate::Drop, Fate::Deliver));

        f.clear();
        f.seed(1);
        f.set_link(4, LinkRule { drop_probability: 0.5, delay_ms: Some((10, 20)), ..LinkRule::default() });
        let fates: Vec<Fate> = (0..200).map(|_| f.message(4, 1)).collect();
        let dropped = fates.iter().filter(|x| **x == Fate::Drop).count();
        assert!((60..140).contains(&dropped), "about half dropped: {dropped}");
        assert!(fates.iter().all(|x| match x {
            Fate::DeliverAfter(d) => (10..=20).contains(&(d.as_millis() as u64)),
            other => *other == Fate::Drop,
        }));
        // The same seed, the same fates.
        f.seed(1);
        let again: Vec<Fate> = (0..200).map(|_| f.message(4, 1)).collect();
        assert_eq!(fates, again);
    }
}
