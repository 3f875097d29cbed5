//! Linearizability of per-key registers (read, write, compare-and-set), checked
//! as Porcupine does: Wing & Gong's search with Lowe's memoisation, one key at
//! a time. Operations whose outcome is unknown return at infinity: the search
//! may place them anywhere after their invocation, or nowhere. Cheap checks
//! run first (a read of a value never written; versions going backwards in
//! real time), and bounds make the answer `unknown`, never a silent `valid`:
//! a key with more than `max_ops_per_key` operations, or a search that
//! explores more than `max_states_per_key` states.

use std::collections::{BTreeMap, HashSet};

use serde::{Deserialize, Serialize};

use super::history::{Op, Outcome, Verdict};

/// What a register operation asks. Values are unique across a run.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RegIn {
    Read,
    Write {
        value: u64,
    },
    /// Replaces `from` with `to` (done through the document's version, which
    /// identifies the value since every write makes a new one).
    Cas {
        from: u64,
        to: u64,
    },
}

/// What an `ok` register operation returned: the value read (none: the key
/// does not exist) or written, with the document's version (0: none).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RegOut {
    Read { value: Option<u64>, version: u64 },
    Written { version: u64 },
}

pub type RegOp = Op<RegIn, RegOut>;

#[derive(Clone, Debug)]
pub struct Limits {
    pub max_ops_per_key: usize,
    pub max_states_per_key: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Self { max_ops_per_key: 5_000, max_states_per_key: 2_000_000 }
    }
}

/// The answer for one key.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct KeyResult {
    pub key: String,
    pub verdict: Verdict,
    /// Operations considered (ok and unknown; failed ones had no effect).
    pub ops: usize,
    /// Why not valid.
    pub reason: Option<String>,
    /// For an invalid search: the operations of the deepest partial
    /// linearization found, in order, then the one that could not be placed.
    pub witness: Vec<usize>,
}

/// The answer for a history: the worst key decides.
#[derive(Clone, Debug, Serialize)]
pub struct Report {
    pub verdict: Verdict,
    pub keys: Vec<KeyResult>,
}

impl Report {
    pub fn failures(&self) -> impl Iterator<Item = &KeyResult> {
        self.keys.iter().filter(|k| k.verdict != Verdict::Valid)
    }
}

/// Checks `history` with the default limits and prints a one-line summary
/// (seed, operations by outcome, keys, `faults`, verdict) and every failing
/// key: what the in-process chaos tests report. Returns the report and the
/// number of operations that succeeded.
pub fn check_and_print(seed: u64, history: &[RegOp], faults: &str) -> (Report, usize) {
    let count = |o: Outcome| history.iter().filter(|op| op.outcome == o).count();
    let report = check(history, &Limits::default());
    println!(
        "seed {seed}: {} operations (ok {}, fail {}, unknown {}) on {} keys; faults: {faults}; verdict: {}",
        history.len(),
        count(Outcome::Ok),
        count(Outcome::Fail),
        count(Outcome::Unknown),
        report.keys.len(),
        report.verdict
    );
    for k in report.failures() {
        println!("key {}: {} ({:?}) witness {:?}", k.key, k.verdict, k.reason, k.witness);
    }
    (report, count(Outcome::Ok))
}

/// Checks every key of `history`.
pub fn check(history: &[RegOp], limits: &Limits) -> Report {
    let mut by_key: BTreeMap<&str, Vec<&RegOp>> = BTreeMap::new();
    for op in history {
        by_key.entry(op.key.as_str()).or_default().push(op);
    }
    let keys: Vec<KeyResult> = by_key.into_iter().map(|(key, ops)| check_key(key, &ops, limits)).collect();
    let verdict = keys.iter().fold(Verdict::Valid, |v, k| v.and(k.verdict));
    Report { verdict, keys }
}

fn result(key: &str, verdict: Verdict, ops: usize, reason: Option<String>, witness: Vec<usize>) -> KeyResult {
    KeyResult { key: key.to_string(), verdict, ops, reason, witness }
}

/// Checks the operations of one key.
pub fn check_key(key: &str, ops: &[&RegOp], limits: &Limits) -> KeyResult {
    // Failed operations had no effect; unknown reads tell nothing.
    let ops: Vec<&RegOp> = ops
        .iter()
        .copied()
        .filter(|o| match o.outcome {
            Outcome::Ok => true,
            Outcome::Fail => false,
            Outcome::Unknown => !matches!(o.input, RegIn::Read),
        })
        .collect();
    if let Some(bad) = malformed(&ops) {
        return result(key, Verdict::Invalid, ops.len(), Some(bad), vec![]);
    }
    if let Some(bad) = read_of_unwritten(&ops) {
        return result(key, Verdict::Invalid, ops.len(), Some(bad.0), vec![bad.1]);
    }
    if let Some(bad) = version_regression(&ops) {
        return result(key, Verdict::Invalid, ops.len(), Some(bad.0), bad.1);
    }
    // An unknown write whose value nobody observed (no read returned it, no
    // successful compare-and-set started from it) can be taken as never having
    // happened: in any linearization that places it, no operation depends on
    // it. Dropping it keeps the search from trying every place for it.
    // Observed values: read, or the start of a compare-and-set that is kept
    // (one of unknown outcome is kept when its own result was observed, and
    // then what it started from was needed too: iterate to a fixed point).
    let mut observed: HashSet<u64> = ops
        .iter()
        .filter_map(|o| match (o.outcome, o.input, o.output) {
            (Outcome::Ok, RegIn::Read, Some(RegOut::Read { value, .. })) => value,
            (Outcome::Ok, RegIn::Cas { from, .. }, _) => Some(from),
            _ => None,
        })
        .collect();
    loop {
        let before = observed.len();
        for o in ops.iter().filter(|o| o.outcome == Outcome::Unknown) {
            if let RegIn::Cas { from, to } = o.input
                && observed.contains(&to)
            {
                observed.insert(from);
            }
        }
        if observed.len() == before {
            break;
        }
    }
    let ops: Vec<&RegOp> = ops
        .into_iter()
        .filter(|o| match (o.outcome, o.input) {
            (Outcome::Unknown, RegIn::Write { value } | RegIn::Cas { to: value, .. }) => observed.contains(&value),
            _ => true,
        })
        .collect();
    if ops.len() > limits.max_ops_per_key {
        let why = format!("{} operations exceed the cap of {} per key", ops.len(), limits.max_ops_per_key);
        return result(key, Verdict::Unknown, ops.len(), Some(why), vec![]);
    }
    search(key, &ops, limits)
}

/// An `ok` operation whose output does not fit its input.
fn malformed(ops: &[&RegOp]) -> Option<String> {
    ops.iter().find_map(|o| match (o.outcome, &o.input, &o.output) {
        (Outcome::Ok, RegIn::Read, Some(RegOut::Read { .. })) => None,
        (Outcome::Ok, RegIn::Write { .. } | RegIn::Cas { .. }, Some(RegOut::Written { .. })) => None,
        (Outcome::Ok, input, output) => Some(format!("op {}: {input:?} returned {output:?}", o.id)),
        _ => None,
    })
}

/// A read of a value no write (acknowledged or unknown) could have produced.
fn read_of_unwritten(ops: &[&RegOp]) -> Option<(String, usize)> {
    let written: HashSet<u64> = ops
        .iter()
        .filter_map(|o| match o.input {
            RegIn::Write { value } | RegIn::Cas { to: value, .. } => Some(value),
            RegIn::Read => None,
        })
        .collect();
    ops.iter().find_map(|o| match o.output {
        Some(RegOut::Read { value: Some(v), .. }) if !written.contains(&v) => {
            Some((format!("op {} read {v}, a value no write produced", o.id), o.id))
        }
        _ => None,
    })
}

/// A read that started after another operation returned, yet saw an older
/// version than that operation did (a stale read, found without a search).
fn version_regression(ops: &[&RegOp]) -> Option<(String, Vec<usize>)> {
    let version = |o: &RegOp| match o.output {
        Some(RegOut::Read { version, .. } | RegOut::Written { version }) => Some(version),
        None => None,
    };
    let mut returned: Vec<(u64, u64, usize)> = ops.iter().filter_map(|o| Some((o.ret?, version(o)?, o.id))).collect();
    returned.sort_unstable();
    let mut reads: Vec<&RegOp> = ops.iter().copied().filter(|o| matches!(o.input, RegIn::Read)).collect();
    reads.sort_unstable_by_key(|o| o.call);
    let (mut i, mut newest): (usize, Option<(u64, usize)>) = (0, None);
    for read in reads {
        while i < returned.len() && returned[i].0 < read.call {
            if newest.is_none_or(|(v, _)| returned[i].1 > v) {
                newest = Some((returned[i].1, returned[i].2));
            }
            i += 1;
        }
        if let (Some(seen), Some((v, by))) = (version(read), newest)
            && seen < v
        {
            return Some((
                format!("op {} read version {seen} after op {by} had returned version {v}", read.id),
                vec![by, read.id],
            ));
        }
    }
    None
}

type State = Option<u64>;

/// The register's sequential specification.
fn step(state: State, op: &RegOp) -> Option<State> {
    match (op.input, op.output) {
        (RegIn::Read, Some(RegOut::Read { value, .. })) => (state == value).then_some(state),
        (RegIn::Read, _) => None,
        (RegIn::Write { value }, _) => Some(Some(value)),
        (RegIn::Cas { from, to }, _) => (state == Some(from)).then_some(Some(to)),
    }
}

#[derive(Clone, Copy)]
struct Entry {
    op: usize,
    is_call: bool,
    /// For a call: the index of its return entry.
    partner: usize,
    prev: usize,
    next: usize,
}

/// Wing & Gong's search over a doubly linked list of call and return entries
/// (index 0 is the head sentinel), memoised on (linearized set, state).
fn search(key: &str, ops: &[&RegOp], limits: &Limits) -> KeyResult {
    let n = ops.len();
    // Calls before returns at equal times: such operations count as concurrent.
    let mut times: Vec<(u64, bool, usize)> = Vec::with_capacity(2 * n);
    for (i, o) in ops.iter().enumerate() {
        times.push((o.call, false, i));
        times.push((o.ret_or_max(), true, i));
    }
    times.sort_unstable();
    let mut entries = vec![Entry { op: usize::MAX, is_call: false, partner: 0, prev: 0, next: 1 }];
    let mut ret_index = vec![0usize; n];
    for (pos, (_, is_return, op)) in times.iter().enumerate() {
        let idx = pos + 1;
        entries.push(Entry { op: *op, is_call: !is_return, partner: 0, prev: idx - 1, next: idx + 1 });
        if *is_return {
            ret_index[*op] = idx;
        }
    }
    let end = entries.len();
    for e in entries.iter_mut().skip(1) {
        if e.is_call {
            e.partner = ret_index[e.op];
        }
    }
    let words = n.div_ceil(64).max(1);
    let mut linearized = vec![0u64; words];
    let mut cache: HashSet<(Vec<u64>, State)> = HashSet::new();
    let mut stack: Vec<(usize, State)> = Vec::new();
    let mut state: State = None;
    let mut explored = 0usize;
    let mut deepest: (usize, Vec<usize>, usize) = (0, vec![], usize::MAX);
    let mut cur = entries[0].next;
    let lift = |entries: &mut Vec<Entry>, i: usize| {
        let (p, nx) = (entries[i].prev, entries[i].next);
        entries[p].next = nx;
        if nx < end {
            entries[nx].prev = p;
        }
        let r = entries[i].partner;
        let (rp, rn) = (entries[r].prev, entries[r].next);
        entries[rp].next = rn;
        if rn < end {
            entries[rn].prev = rp;
        }
    };
    let unlift = |entries: &mut Vec<Entry>, i: usize| {
        let r = entries[i].partner;
        let (rp, rn) = (entries[r].prev, entries[r].next);
        entries[rp].next = r;
        if rn < end {
            entries[rn].prev = r;
        }
        let (p, nx) = (entries[i].prev, entries[i].next);
        entries[p].next = i;
        if nx < end {
            entries[nx].prev = i;
        }
    };
    while entries[0].next < end {
        explored += 1;
        if explored > limits.max_states_per_key {
            let why = format!("search budget of {} states exhausted", limits.max_states_per_key);
            return result(key, Verdict::Unknown, n, Some(why), vec![]);
        }
        let e = entries[cur];
        if e.is_call {
            if let Some(next_state) = step(state, ops[e.op]) {
                let mut with = linearized.clone();
                with[e.op / 64] |= 1 << (e.op % 64);
                if cache.insert((with.clone(), next_state)) {
                    stack.push((cur, state));
                    state = next_state;
                    linearized = with;
                    lift(&mut entries, cur);
                    cur = entries[0].next;
                    continue;
                }
            }
            cur = e.next;
        } else {
            // A return whose call is not linearized yet. At infinity (unknown
            // outcome), every definite operation is placed: the rest never
            // took effect.
            if ops[e.op].ret.is_none() {
                return result(key, Verdict::Valid, n, None, vec![]);
            }
            if stack.len() >= deepest.0 {
                let order: Vec<usize> = stack.iter().map(|(i, _)| ops[entries[*i].op].id).collect();
                deepest = (stack.len(), order, ops[e.op].id);
            }
            let Some((call, prev_state)) = stack.pop() else {
                let (_, mut witness, stuck) = deepest;
                witness.push(stuck);
                let why = format!(
                    "not linearizable: at most {} of {n} operations could be ordered; op {stuck} could not be placed",
                    witness.len() - 1
                );
                return result(key, Verdict::Invalid, n, Some(why), witness);
            };
            state = prev_state;
            let op = entries[call].op;
            linearized[op / 64] &= !(1 << (op % 64));
            unlift(&mut entries, call);
            cur = entries[call].next;
        }
    }
    result(key, Verdict::Valid, n, None, vec![])
}

/// The broken variant of a real history: `history` plus one read, after
/// everything else, that returns a value overwritten since (the first
/// acknowledged write of a key that a later acknowledged write replaced).
/// The checker must reject it. `None` when no key was written twice.
pub fn with_stale_read(history: &[RegOp]) -> Option<Vec<RegOp>> {
    let written = |o: &&RegOp| o.outcome == Outcome::Ok && !matches!(o.input, RegIn::Read);
    let (first, value, version) = history
        .iter()
        .filter(written)
        .filter(|w| history.iter().filter(written).any(|later| later.key == w.key && later.call > w.ret_or_max()))
        .filter_map(|w| match (w.input, w.output) {
            (RegIn::Write { value } | RegIn::Cas { to: value, .. }, Some(RegOut::Written { version })) => {
                Some((w, value, version))
            }
            _ => None,
        })
        .min_by_key(|(w, _, _)| w.ret)?;
    let end = history.iter().map(|o| o.ret.unwrap_or(o.call)).max().unwrap_or(0);
    let mut stale = history.to_vec();
    stale.push(Op {
        id: history.iter().map(|o| o.id + 1).max().unwrap_or(0),
        process: u64::MAX,
        key: first.key.clone(),
        input: RegIn::Read,
        output: Some(RegOut::Read { value: Some(value), version }),
        outcome: Outcome::Ok,
        call: end + 1,
        ret: Some(end + 2),
    });
    Some(stale)
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{Rng, SeedableRng};

    /// Builds histories by hand: (process, input, output, outcome, call, ret).
    struct H(Vec<RegOp>);

    impl H {
        fn new() -> Self {
            H(Vec::new())
        }
        fn op(mut self, input: RegIn, output: Option<RegOut>, outcome: Outcome, call: u64, ret: Option<u64>) -> Self {
            let id = self.0.len();
            self.0.push(Op { id, process: id as u64, key: "k".into(), input, output, outcome, call, ret });
            self
        }
        fn write(self, value: u64, version: u64, call: u64, ret: u64) -> Self {
            self.op(RegIn::Write { value }, Some(RegOut::Written { version }), Outcome::Ok, call, Some(ret))
        }
        fn write_unknown(self, value: u64, call: u64) -> Self {
            self.op(RegIn::Write { value }, None, Outcome::Unknown, call, None)
        }
        fn read(self, value: Option<u64>, version: u64, call: u64, ret: u64) -> Self {
            self.op(RegIn::Read, Some(RegOut::Read { value, version }), Outcome::Ok, call, Some(ret))
        }
        fn cas(self, from: u64, to: u64, version: u64, call: u64, ret: u64) -> Self {
            self.op(RegIn::Cas { from, to }, Some(RegOut::Written { version }), Outcome::Ok, call, Some(ret))
        }
        fn check(&self) -> KeyResult {
            let r = check(&self.0, &Limits::default());
            r.keys.into_iter().next().expect("one key")
        }
    }

    #[test]
    fn the_stale_read_variant_is_rejected_and_needs_an_overwritten_key() {
        let h = H::new().write(1, 1, 0, 10).read(Some(1), 1, 20, 30).write(2, 2, 40, 50);
        assert_eq!(check(&h.0, &Limits::default()).verdict, Verdict::Valid);
        let stale = with_stale_read(&h.0).expect("key k was written twice");
        assert_eq!(stale.len(), 4);
        assert_eq!(stale[3].output, Some(RegOut::Read { value: Some(1), version: 1 }));
        assert_eq!(check(&stale, &Limits::default()).verdict, Verdict::Invalid);
        // Concurrent writes: neither certainly replaced the other.
        let h = H::new().write(1, 1, 0, 10).write(2, 2, 5, 15);
        assert!(with_stale_read(&h.0).is_none());
    }

    #[test]
    fn sequential_and_concurrent_histories_are_valid() {
        let h = H::new().read(None, 0, 0, 1).write(1, 5, 2, 3).read(Some(1), 5, 4, 5).cas(1, 2, 6, 6, 7).read(
            Some(2),
            6,
            8,
            9,
        );
        assert_eq!(h.check().verdict, Verdict::Valid, "{:?}", h.check());
        // Two overlapping writes; reads may see either order while they overlap.
        let h = H::new().write(1, 5, 0, 10).write(2, 6, 1, 11).read(Some(1), 5, 2, 3).read(Some(2), 6, 12, 13);
        assert_eq!(h.check().verdict, Verdict::Valid, "{:?}", h.check());
    }

    #[test]
    fn a_stale_read_is_invalid() {
        // Write 1 then write 2 complete; a later read returns 1.
        let h = H::new().write(1, 5, 0, 1).write(2, 6, 2, 3).read(Some(1), 5, 4, 5);
        let r = h.check();
        assert_eq!(r.verdict, Verdict::Invalid, "{r:?}");
        assert!(r.reason.unwrap().contains("version"), "found by the version pre-check");
        // The same without versions to give it away: the search must find it.
        let h = H::new().write(1, 0, 0, 1).write(2, 0, 2, 3).read(Some(1), 0, 4, 5);
        let r = h.check();
        assert_eq!(r.verdict, Verdict::Invalid, "{r:?}");
        assert!(r.reason.unwrap().contains("not linearizable"));
        assert_eq!(*r.witness.last().unwrap(), 2, "the read cannot be placed");
    }

    #[test]
    fn a_lost_write_is_invalid() {
        // An acknowledged write, then reads that see the old value forever.
        let h = H::new().read(None, 0, 0, 1).write(7, 0, 2, 3).read(None, 0, 4, 5);
        assert_eq!(h.check().verdict, Verdict::Invalid);
    }

    #[test]
    fn a_duplicate_apply_is_invalid() {
        // cas 1->2 then write 3, then a read of 2 again: the cas applied twice
        // (a retried proposal applied at two log positions).
        let h = H::new().write(1, 0, 0, 1).cas(1, 2, 0, 2, 3).write(3, 0, 4, 5).read(Some(2), 0, 6, 7);
        assert_eq!(h.check().verdict, Verdict::Invalid);
    }

    #[test]
    fn a_read_of_a_never_written_value_is_invalid_without_a_search() {
        let h = H::new().write(1, 5, 0, 1).read(Some(99), 5, 2, 3);
        let r = h.check();
        assert_eq!(r.verdict, Verdict::Invalid);
        assert!(r.reason.unwrap().contains("no write produced"));
        // A failed write's value does not count as written.
        let h = H::new().op(RegIn::Write { value: 4 }, None, Outcome::Fail, 0, Some(1)).read(Some(4), 0, 2, 3);
        assert_eq!(h.check().verdict, Verdict::Invalid);
    }

    #[test]
    fn unknown_writes_may_or_may_not_have_happened() {
        // Seen later: it took effect.
        let h = H::new().write_unknown(1, 0).read(Some(1), 0, 5, 6);
        assert_eq!(h.check().verdict, Verdict::Valid);
        // Never seen: it did not.
        let h = H::new().write_unknown(1, 0).read(None, 0, 5, 6);
        assert_eq!(h.check().verdict, Verdict::Valid);
        // Seen, then not seen (without another write): invalid.
        let h = H::new().write_unknown(1, 0).read(Some(1), 0, 5, 6).read(None, 0, 7, 8);
        assert_eq!(h.check().verdict, Verdict::Invalid);
    }

    #[test]
    fn unobserved_unknown_writes_do_not_cost_a_search() {
        // 40 overlapping writes of unknown outcome that nobody read, around a
        // simple valid history: without pruning the search tries every order.
        let mut h = H::new().write(1, 0, 0, 1);
        for i in 0..40 {
            h = h.write_unknown(100 + i, 2);
        }
        let h = h.read(Some(1), 0, 3, 4).write(2, 0, 5, 6).read(Some(2), 0, 7, 8);
        let limits = Limits { max_states_per_key: 10_000, ..Limits::default() };
        let r = check(&h.0, &limits);
        assert_eq!(r.verdict, Verdict::Valid, "{:?}", r.keys[0]);
        // An unknown write that was read still counts.
        let h = H::new().write(1, 0, 0, 1).write_unknown(7, 2).read(Some(7), 0, 3, 4).read(Some(1), 0, 5, 6);
        assert_eq!(check(&h.0, &limits).verdict, Verdict::Invalid, "7 was seen, so 1 cannot come back");
    }

    #[test]
    fn bounds_give_unknown_not_valid() {
        let mut h = H::new();
        for i in 0..20 {
            h = h.write(i + 1, 0, i * 10, i * 10 + 5);
        }
        let limits = Limits { max_ops_per_key: 10, ..Limits::default() };
        let r = check(&h.0, &limits);
        assert_eq!(r.verdict, Verdict::Unknown);
        let limits = Limits { max_states_per_key: 3, ..Limits::default() };
        let r = check(&h.0, &limits);
        assert_eq!(r.verdict, Verdict::Unknown);
        assert!(r.keys[0].reason.as_ref().unwrap().contains("budget"));
    }

    /// Random histories from a real sequential register run, each operation
    /// stretched over a random interval around its linearization point: valid
    /// by construction. Then one read is made stale: must be invalid.
    #[test]
    fn random_overlapping_histories_of_a_real_register_are_valid() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(6);
        for _ in 0..200 {
            let mut ops = Vec::new();
            let mut state: Option<u64> = None;
            let mut next_value = 1;
            for i in 0..30u64 {
                let at = i * 100 + 50; // the linearization point
                let (call, ret) = (at - rng.random_range(0..150).min(at), at + rng.random_range(0..150));
                let id = ops.len();
                let (input, output) = match rng.random_range(0..3) {
                    0 => (RegIn::Read, RegOut::Read { value: state, version: 0 }),
                    1 => {
                        state = Some(next_value);
                        next_value += 1;
                        (RegIn::Write { value: next_value - 1 }, RegOut::Written { version: 0 })
                    }
                    _ => match state {
                        Some(from) => {
                            state = Some(next_value);
                            next_value += 1;
                            (RegIn::Cas { from, to: next_value - 1 }, RegOut::Written { version: 0 })
                        }
                        None => (RegIn::Read, RegOut::Read { value: None, version: 0 }),
                    },
                };
                let unknown = !matches!(input, RegIn::Read) && rng.random_range(0..10) == 0;
                ops.push(Op {
                    id,
                    process: id as u64,
                    key: "k".into(),
                    input,
                    output: (!unknown).then_some(output),
                    outcome: if unknown { Outcome::Unknown } else { Outcome::Ok },
                    call,
                    ret: (!unknown).then_some(ret),
                });
            }
            let r = check(&ops, &Limits::default());
            assert_eq!(r.verdict, Verdict::Valid, "{:?}", r.keys[0]);
        }
    }
}
