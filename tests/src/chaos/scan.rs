//! Scans under concurrent inserts and deletes. Each key is inserted at most
//! once and deleted at most once. A scan must return its keys in order, each
//! once; every key it returns must have had an insert begun before the scan
//! ended (not a failed one) and no delete acknowledged before the scan began;
//! and it must return every key whose insert was acknowledged before the scan
//! began and whose delete (if any) had not begun before the scan ended.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::history::{Op, Outcome, Verdict};

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ScanIn {
    Insert,
    Delete,
    /// Over the workload's whole prefix; the op's key names the prefix.
    Scan,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ScanOut {
    Done,
    Keys { keys: Vec<String> },
}

pub type ScanOp = Op<ScanIn, ScanOut>;

/// One violation, naming the scan (op id) and the key.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct ScanError {
    pub scan: usize,
    pub key: String,
    pub kind: &'static str,
}

#[derive(Clone, Debug, Serialize)]
pub struct ScanReport {
    pub verdict: Verdict,
    pub scans: usize,
    pub keys_checked: usize,
    pub errors: Vec<ScanError>,
}

/// The most errors kept in a report (the count is still exact in `verdict`).
const ERRORS_KEPT: usize = 100;

pub fn check(history: &[ScanOp]) -> ScanReport {
    let mut inserts: BTreeMap<&str, &ScanOp> = BTreeMap::new();
    let mut deletes: BTreeMap<&str, &ScanOp> = BTreeMap::new();
    let mut scans = Vec::new();
    for op in history {
        match op.input {
            ScanIn::Insert => {
                inserts.insert(op.key.as_str(), op);
            }
            ScanIn::Delete => {
                deletes.insert(op.key.as_str(), op);
            }
            ScanIn::Scan => {
                if let (Outcome::Ok, Some(ScanOut::Keys { keys })) = (op.outcome, &op.output) {
                    scans.push((op, keys));
                }
            }
        }
    }
    let mut errors = Vec::new();
    let mut keys_checked = 0;
    let mut error = |scan: &ScanOp, key: &str, kind: &'static str| {
        errors.push(ScanError { scan: scan.id, key: key.to_string(), kind });
    };
    // Keys that must be present, as a sweep over the scans in call order:
    // acknowledged before the scan began, with a delete (if any) begun later.
    let delete_call = |key: &str| -> u64 {
        deletes.get(key).filter(|d| d.outcome != Outcome::Fail).map(|d| d.call).unwrap_or(u64::MAX)
    };
    let mut acked: Vec<(u64, &str)> =
        inserts.iter().filter(|(_, i)| i.outcome == Outcome::Ok).map(|(k, i)| (i.ret_or_max(), *k)).collect();
    acked.sort_unstable();
    scans.sort_by_key(|(s, _)| s.call);
    let mut next_acked = 0;
    // Key -> when its delete began (u64::MAX: never).
    let mut required: BTreeMap<&str, u64> = BTreeMap::new();
    for (scan, keys) in &scans {
        let end = scan.ret_or_max();
        while next_acked < acked.len() && acked[next_acked].0 < scan.call {
            let key = acked[next_acked].1;
            required.insert(key, delete_call(key));
            next_acked += 1;
        }
        required.retain(|_, deleted| *deleted >= scan.call);
        for pair in keys.windows(2) {
            if pair[0] >= pair[1] {
                error(scan, &pair[1], if pair[0] == pair[1] { "repeated" } else { "out of order" });
            }
        }
        let returned: std::collections::HashSet<&str> = keys.iter().map(String::as_str).collect();
        for key in keys.iter() {
            keys_checked += 1;
            match inserts.get(key.as_str()) {
                Some(i) if i.outcome != Outcome::Fail && i.call < end => {}
                _ => error(scan, key, "never inserted"),
            }
            if let Some(d) = deletes.get(key.as_str())
                && d.outcome == Outcome::Ok
                && d.ret_or_max() < scan.call
            {
                error(scan, key, "deleted before the scan began");
            }
        }
        for (key, deleted) in &required {
            if *deleted >= end && !returned.contains(key) {
                error(scan, key, "skipped");
            }
        }
    }
    let verdict = if errors.is_empty() { Verdict::Valid } else { Verdict::Invalid };
    errors.truncate(ERRORS_KEPT);
    ScanReport { verdict, scans: scans.len(), keys_checked, errors }
}

#[cfg(test)]
mod tests {
    use super::*;

    struct H(Vec<ScanOp>);

    impl H {
        fn new() -> Self {
            H(Vec::new())
        }
        fn push(
            mut self,
            key: &str,
            input: ScanIn,
            output: Option<ScanOut>,
            outcome: Outcome,
            call: u64,
            ret: u64,
        ) -> Self {
            let id = self.0.len();
            let ret = (outcome != Outcome::Unknown).then_some(ret);
            self.0.push(Op { id, process: 0, key: key.into(), input, output, outcome, call, ret });
            self
        }
        fn insert(self, key: &str, outcome: Outcome, call: u64, ret: u64) -> Self {
            self.push(key, ScanIn::Insert, Some(ScanOut::Done), outcome, call, ret)
        }
        fn delete(self, key: &str, outcome: Outcome, call: u64, ret: u64) -> Self {
            self.push(key, ScanIn::Delete, Some(ScanOut::Done), outcome, call, ret)
        }
        fn scan(self, keys: &[&str], call: u64, ret: u64) -> Self {
            let keys = keys.iter().map(|k| k.to_string()).collect();
            self.push("p/", ScanIn::Scan, Some(ScanOut::Keys { keys }), Outcome::Ok, call, ret)
        }
        fn kinds(&self) -> Vec<&'static str> {
            check(&self.0).errors.iter().map(|e| e.kind).collect()
        }
    }

    #[test]
    fn scans_during_inserts_and_deletes_are_valid() {
        let h = H::new()
            .insert("p/a", Outcome::Ok, 0, 1)
            .insert("p/b", Outcome::Ok, 2, 10) // concurrent with the first scan: optional
            .insert("p/c", Outcome::Unknown, 2, 0)
            .delete("p/a", Outcome::Ok, 12, 20) // concurrent with the second scan: optional
            .scan(&["p/a"], 3, 5)
            .scan(&["p/b", "p/c"], 11, 13)
            .scan(&["p/b"], 21, 22);
        let r = check(&h.0);
        assert_eq!(r.verdict, Verdict::Valid, "{r:?}");
    }

    #[test]
    fn a_skipped_key_is_invalid() {
        let h = H::new().insert("p/a", Outcome::Ok, 0, 1).insert("p/b", Outcome::Ok, 0, 1).scan(&["p/b"], 2, 3);
        assert_eq!(h.kinds(), vec!["skipped"]);
    }

    #[test]
    fn repeated_unordered_phantom_and_deleted_keys_are_invalid() {
        let base = || H::new().insert("p/a", Outcome::Ok, 0, 1).insert("p/b", Outcome::Ok, 0, 1);
        assert_eq!(base().scan(&["p/a", "p/a", "p/b"], 2, 3).kinds(), vec!["repeated"]);
        assert_eq!(base().scan(&["p/b", "p/a"], 2, 3).kinds(), vec!["out of order"]);
        assert_eq!(base().scan(&["p/a", "p/b", "p/z"], 2, 3).kinds(), vec!["never inserted"]);
        let deleted = base().delete("p/a", Outcome::Ok, 2, 3).scan(&["p/a", "p/b"], 4, 5);
        assert_eq!(deleted.kinds(), vec!["deleted before the scan began"]);
        let failed = H::new().insert("p/a", Outcome::Fail, 0, 1).scan(&["p/a"], 2, 3);
        assert_eq!(failed.kinds(), vec!["never inserted"]);
    }
}
