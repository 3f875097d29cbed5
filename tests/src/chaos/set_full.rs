//! Jepsen's set-full check: elements are added (each once, as its own key) and
//! the whole set is read now and then. An acknowledged element must be in
//! every read that begins after its acknowledgement; an element seen once must
//! stay seen. Per element the outcome is `ok`, `stale` (missing from a read
//! that should have had it, present later), `lost` (missing from the last
//! read), `never-read` (an unknown add never seen: it did not happen, which is
//! allowed) or `unchecked` (acknowledged with no read after it: the run ended
//! too soon to tell, so the verdict is `unknown`, not `valid`). Elements read
//! but never added, read before their add began or whose add failed are
//! `unexpected`; an element twice in one read is `duplicated`.

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};

use super::history::{Op, Outcome, Verdict};

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SetIn {
    Add { element: u64 },
    Read,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SetOut {
    /// An acknowledged add (histories recorded before versions were).
    Added,
    /// An acknowledged add and the document version (the log index that
    /// stored it), to match against the log ids in the nodes' read traces.
    #[serde(rename = "added_at")]
    AddedAt {
        version: u64,
    },
    Read {
        elements: Vec<u64>,
    },
}

pub type SetOp = Op<SetIn, SetOut>;

#[derive(Clone, Debug, Default, Serialize)]
pub struct SetReport {
    pub verdict: Option<Verdict>,
    pub attempted: usize,
    pub acknowledged: usize,
    pub ok: usize,
    pub reads: usize,
    pub lost: Vec<u64>,
    pub stale: Vec<u64>,
    pub unexpected: Vec<u64>,
    pub duplicated: Vec<u64>,
    pub never_read: usize,
    pub unchecked: Vec<u64>,
}

impl SetReport {
    pub fn verdict(&self) -> Verdict {
        self.verdict.unwrap_or(Verdict::Unknown)
    }
}

struct Read<'a> {
    call: u64,
    ret: u64,
    elements: &'a [u64],
    set: BTreeSet<u64>,
}

pub fn check(history: &[SetOp]) -> SetReport {
    let mut report = SetReport::default();
    let mut adds: BTreeMap<u64, &SetOp> = BTreeMap::new();
    let mut reads: Vec<Read<'_>> = Vec::new();
    for op in history {
        match (&op.input, &op.output, op.outcome) {
            (SetIn::Add { element }, _, _) => {
                report.attempted += 1;
                if adds.insert(*element, op).is_some() {
                    // The workload adds each element once; a second add makes
                    // the history meaningless for this element.
                    report.unexpected.push(*element);
                }
            }
            (SetIn::Read, Some(SetOut::Read { elements }), Outcome::Ok) => {
                let set: BTreeSet<u64> = elements.iter().copied().collect();
                if set.len() != elements.len() {
                    let mut seen = BTreeSet::new();
                    report.duplicated.extend(elements.iter().filter(|e| !seen.insert(**e)));
                }
                reads.push(Read { call: op.call, ret: op.ret_or_max(), elements, set });
            }
            _ => {}
        }
    }
    reads.sort_by_key(|r| r.call);
    report.reads = reads.len();
    // Everything read must have been added (not failed) before the read ended.
    for r in &reads {
        for e in r.elements {
            let fine = adds.get(e).is_some_and(|a| a.outcome != Outcome::Fail && a.call < r.ret);
            if !fine {
                report.unexpected.push(*e);
            }
        }
    }
    for (element, add) in &adds {
        if add.outcome == Outcome::Fail {
            continue;
        }
        // From when must every read hold it? From its acknowledgement, or
        // from the end of the first read that saw it.
        let first_seen = reads.iter().filter(|r| r.set.contains(element)).map(|r| r.ret).min();
        let visible_from = match (add.outcome, add.ret, first_seen) {
            (Outcome::Ok, Some(ack), Some(seen)) => ack.min(seen),
            (Outcome::Ok, Some(ack), None) => ack,
            (_, _, Some(seen)) => seen,
            (_, _, None) => {
                report.never_read += 1;
                continue;
            }
        };
        if add.outcome == Outcome::Ok {
            report.acknowledged += 1;
        }
        let due: Vec<&Read<'_>> = reads.iter().filter(|r| r.call > visible_from).collect();
        let Some(last) = due.last() else {
            if first_seen.is_none() {
                report.unchecked.push(*element);
            } else {
                report.ok += 1;
            }
            continue;
        };
        if !last.set.contains(element) {
            report.lost.push(*element);
        } else if due.iter().any(|r| !r.set.contains(element)) {
            report.stale.push(*element);
        } else {
            report.ok += 1;
        }
    }
    report.unexpected.sort_unstable();
    report.unexpected.dedup();
    report.duplicated.sort_unstable();
    report.duplicated.dedup();
    let invalid = !(report.lost.is_empty()
        && report.stale.is_empty()
        && report.unexpected.is_empty()
        && report.duplicated.is_empty());
    report.verdict = Some(if invalid {
        Verdict::Invalid
    } else if !report.unchecked.is_empty() {
        Verdict::Unknown
    } else {
        Verdict::Valid
    });
    report
}

/// [`check`] per key (each key an independent set, e.g. a window of
/// elements), merged: counts summed, lists joined, the worst verdict.
pub fn check_all(history: &[SetOp]) -> SetReport {
    let mut by_key: BTreeMap<&str, Vec<SetOp>> = BTreeMap::new();
    for op in history {
        by_key.entry(op.key.as_str()).or_default().push(op.clone());
    }
    let mut all = SetReport { verdict: Some(Verdict::Valid), ..SetReport::default() };
    for ops in by_key.values() {
        let r = check(ops);
        all.verdict = Some(all.verdict().and(r.verdict()));
        all.attempted += r.attempted;
        all.acknowledged += r.acknowledged;
        all.ok += r.ok;
        all.reads += r.reads;
        all.never_read += r.never_read;
        all.lost.extend(r.lost);
        all.stale.extend(r.stale);
        all.unexpected.extend(r.unexpected);
        all.duplicated.extend(r.duplicated);
        all.unchecked.extend(r.unchecked);
    }
    all
}

#[cfg(test)]
mod tests {
    use super::*;

    struct H(Vec<SetOp>);

    impl H {
        fn new() -> Self {
            H(Vec::new())
        }
        fn push(mut self, input: SetIn, output: Option<SetOut>, outcome: Outcome, call: u64, ret: Option<u64>) -> Self {
            let id = self.0.len();
            self.0.push(Op { id, process: 0, key: "s".into(), input, output, outcome, call, ret });
            self
        }
        fn add(self, element: u64, outcome: Outcome, call: u64, ret: u64) -> Self {
            let ret = (outcome != Outcome::Unknown).then_some(ret);
            let output = (outcome == Outcome::Ok).then_some(SetOut::Added);
            self.push(SetIn::Add { element }, output, outcome, call, ret)
        }
        fn read(self, elements: &[u64], call: u64, ret: u64) -> Self {
            self.push(SetIn::Read, Some(SetOut::Read { elements: elements.to_vec() }), Outcome::Ok, call, Some(ret))
        }
    }

    #[test]
    fn a_correct_history_is_valid() {
        let h = H::new()
            .add(1, Outcome::Ok, 0, 1)
            .add(2, Outcome::Unknown, 2, 0)
            .add(3, Outcome::Fail, 3, 4)
            .add(4, Outcome::Unknown, 4, 0)
            .read(&[1], 5, 6)
            .read(&[1, 2], 7, 8)
            .read(&[1, 2], 9, 10);
        let r = check(&h.0);
        assert_eq!(r.verdict(), Verdict::Valid, "{r:?}");
        assert_eq!((r.ok, r.never_read, r.acknowledged), (2, 1, 1));
    }

    #[test]
    fn a_lost_element_is_invalid() {
        let h = H::new().add(1, Outcome::Ok, 0, 1).read(&[1], 2, 3).read(&[], 4, 5);
        let r = check(&h.0);
        assert_eq!(r.verdict(), Verdict::Invalid);
        assert_eq!(r.lost, vec![1]);
    }

    #[test]
    fn a_stale_read_is_invalid() {
        let h = H::new().add(1, Outcome::Ok, 0, 1).read(&[], 2, 3).read(&[1], 4, 5);
        let r = check(&h.0);
        assert_eq!(r.verdict(), Verdict::Invalid);
        assert_eq!(r.stale, vec![1]);
        // An unknown add, once seen, must stay seen.
        let h = H::new().add(1, Outcome::Unknown, 0, 0).read(&[1], 2, 3).read(&[], 4, 5);
        assert_eq!(check(&h.0).lost, vec![1]);
    }

    #[test]
    fn unexpected_and_duplicated_elements_are_invalid() {
        let never_added = H::new().add(1, Outcome::Ok, 0, 1).read(&[1, 9], 2, 3);
        assert_eq!(check(&never_added.0).unexpected, vec![9]);
        let failed_add_seen = H::new().add(1, Outcome::Fail, 0, 1).read(&[1], 2, 3);
        assert_eq!(check(&failed_add_seen.0).unexpected, vec![1]);
        let seen_before_added = H::new().read(&[1], 0, 1).add(1, Outcome::Ok, 2, 3).read(&[1], 4, 5);
        assert_eq!(check(&seen_before_added.0).unexpected, vec![1]);
        let twice = H::new().add(1, Outcome::Ok, 0, 1).read(&[1, 1], 2, 3);
        let r = check(&twice.0);
        assert_eq!((r.duplicated.clone(), r.verdict()), (vec![1], Verdict::Invalid));
    }

    #[test]
    fn sets_are_checked_per_key() {
        let mut h = H::new().add(1, Outcome::Ok, 0, 1).read(&[1], 2, 3).0;
        let mut other = H::new().add(2, Outcome::Ok, 0, 1).read(&[], 2, 3).0;
        for op in other.iter_mut() {
            op.key = "t".into();
            op.id += 10;
        }
        h.append(&mut other);
        let r = check_all(&h);
        assert_eq!((r.verdict(), r.lost.clone(), r.ok), (Verdict::Invalid, vec![2], 1));
    }

    /// A kept history (JSON lines of events) as operations.
    fn fixture(text: &str) -> Vec<SetOp> {
        let events: Vec<super::super::history::Event<SetIn, SetOut>> =
            text.lines().map(|l| serde_json::from_str(l).expect("event")).collect();
        super::super::history::from_events(events).expect("history")
    }

    /// Found by the first 30-minute soak (seed 2026, all nemeses, 2026-12-05):
    /// four acknowledged elements were in two reads, then missing from ten
    /// reads over ~5 s (a drain of node 2 moved shard 2's replicas, node 1 was
    /// killed, leadership moved), then present in the final read. Cut down to
    /// those elements and the reads from 2 s before. Cause (found with the
    /// second soak's read traces): a leader restored after a restart reused
    /// log ids its followers held; see the next test.
    #[test]
    fn the_soak_s_stale_set_read_is_caught() {
        let r = check(&fixture(include_str!("../../fixtures/soak-2026-12-05-stale-set-read.jsonl")));
        assert_eq!(r.verdict(), Verdict::Invalid);
        assert_eq!(r.stale, vec![703448, 703449, 703450, 703451]);
        assert!(r.lost.is_empty(), "present again in the final read");
    }

    /// The second soak (2026-12-05, 20 min, every nemesis but partitions)
    /// lost five acknowledged elements: a shard leader killed with log entries
    /// only its followers had stored came back before an election and led
    /// again in its old term, reusing those entries' log ids for these adds;
    /// the followers kept their own entries. Read on the old leader, gone once
    /// leadership moved. Fixed (openraft's leader restore is off); the product
    /// regression test is tests/tests/leader_restart.rs. History cut to these
    /// elements and the window's reads.
    #[test]
    fn the_second_soak_s_lost_adds_are_caught() {
        let r = check(&fixture(include_str!("../../fixtures/soak-2026-12-05b-lost-set-adds.jsonl")));
        assert_eq!(r.verdict(), Verdict::Invalid);
        assert_eq!(r.lost, vec![338242, 338243, 338244, 338245, 338249]);
    }

    #[test]
    fn an_acknowledged_element_with_no_read_after_it_is_unknown() {
        let h = H::new().read(&[], 0, 1).add(1, Outcome::Ok, 2, 3);
        let r = check(&h.0);
        assert_eq!(r.verdict(), Verdict::Unknown);
        assert_eq!(r.unchecked, vec![1]);
    }
}
