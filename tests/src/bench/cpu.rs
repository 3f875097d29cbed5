//! CPU time of this process, in total and by thread name, from `/proc` (Linux), so
//! `move-bench` can tell a move that waits for the disk from one that waits for the
//! cores. All nodes run in this process: `cairn-writer` threads are the nodes'
//! storage writers (one per node), `tokio-runtime-w` threads run the async tasks
//! (gRPC, Raft, clients) and the blocking tasks (snapshot chunk reads).
//!
//! `/proc` reports times in USER_HZ ticks, which Linux fixes at 100 per second.
//! Threads that exit between two samples drop out of the per-name figures (not out
//! of the total, which `/proc/self/stat` keeps for the whole process).

use std::collections::BTreeMap;

use serde::Serialize;

/// USER_HZ: `/proc` time units per second.
const TICKS_PER_SEC: f64 = 100.0;

#[derive(Clone, Debug, Default)]
pub struct CpuSample {
    total_s: f64,
    by_thread: BTreeMap<u64, (String, f64)>,
    /// The whole machine (`/proc/stat`): busy and iowait seconds over all cores.
    machine: Option<(f64, f64)>,
}

/// CPU used over a stretch of wall time.
#[derive(Clone, Debug, Serialize)]
pub struct CpuUse {
    pub wall_s: f64,
    /// CPU seconds of the whole process.
    pub cpu_s: f64,
    /// `cpu_s / wall_s`: how many cores were busy on average.
    pub cores: f64,
    /// Cores busy on average, by thread name.
    pub cores_by_thread: BTreeMap<String, f64>,
    /// The whole machine: cores busy (any process), and cores idle waiting for I/O.
    pub machine_busy_cores: Option<f64>,
    pub machine_iowait_cores: Option<f64>,
}

/// user + system seconds from the text of a `stat` file (after the `(comm)` field,
/// which may itself hold spaces or parentheses).
fn parse_stat(text: &str) -> Option<(String, f64)> {
    let open = text.find('(')?;
    let close = text.rfind(')')?;
    let comm = text.get(open + 1..close)?.to_string();
    let fields: Vec<&str> = text.get(close + 1..)?.split_whitespace().collect();
    // After `(comm)`: state is field 3 of stat(5), so utime (14) and stime (15)
    // are at offsets 11 and 12 here.
    let utime: f64 = fields.get(11)?.parse().ok()?;
    let stime: f64 = fields.get(12)?.parse().ok()?;
    Some((comm, (utime + stime) / TICKS_PER_SEC))
}

/// Busy and iowait seconds of all cores from the text of `/proc/stat`.
fn parse_machine(text: &str) -> Option<(f64, f64)> {
    let line = text.lines().find(|l| l.starts_with("cpu "))?;
    let v: Vec<f64> = line.split_whitespace().skip(1).map(|f| f.parse().unwrap_or(0.0)).collect();
    // user nice system idle iowait irq softirq steal (guest time is inside user).
    let busy = v.first()? + v.get(1)? + v.get(2)? + v.get(5)? + v.get(6)? + v.get(7).unwrap_or(&0.0);
    Some((busy / TICKS_PER_SEC, v.get(4)? / TICKS_PER_SEC))
}

/// Reads this process's CPU times; `None` where `/proc` is not available.
pub fn sample() -> Option<CpuSample> {
    let (_, total_s) = parse_stat(&std::fs::read_to_string("/proc/self/stat").ok()?)?;
    let mut by_thread = BTreeMap::new();
    for entry in std::fs::read_dir("/proc/self/task").ok()?.flatten() {
        let Some(tid) = entry.file_name().to_str().and_then(|s| s.parse::<u64>().ok()) else { continue };
        if let Some(stat) = std::fs::read_to_string(entry.path().join("stat")).ok().and_then(|t| parse_stat(&t)) {
            by_thread.insert(tid, stat);
        }
    }
    let machine = std::fs::read_to_string("/proc/stat").ok().and_then(|t| parse_machine(&t));
    Some(CpuSample { total_s, by_thread, machine })
}

impl CpuSample {
    /// What was used between `earlier` and this sample, `wall_s` apart.
    pub fn since(&self, earlier: &CpuSample, wall_s: f64) -> CpuUse {
        let wall = wall_s.max(1e-9);
        let mut by_name: BTreeMap<String, f64> = BTreeMap::new();
        for (tid, (name, s)) in &self.by_thread {
            let before = earlier.by_thread.get(tid).map(|(_, b)| *b).unwrap_or(0.0);
            *by_name.entry(name.clone()).or_default() += (s - before).max(0.0);
        }
        let cpu_s = (self.total_s - earlier.total_s).max(0.0);
        let machine =
            self.machine.zip(earlier.machine).map(|((b1, w1), (b0, w0))| ((b1 - b0) / wall, (w1 - w0) / wall));
        CpuUse {
            wall_s,
            cpu_s,
            cores: cpu_s / wall,
            cores_by_thread: by_name.into_iter().filter(|(_, s)| *s > 0.0).map(|(n, s)| (n, s / wall)).collect(),
            machine_busy_cores: machine.map(|m| m.0),
            machine_iowait_cores: machine.map(|m| m.1),
        }
    }
}

impl CpuUse {
    /// `1.62 cores (cairn-writer 0.40, tokio-rt-worker 1.20); machine 1.90 busy, 0.05 iowait`.
    pub fn describe(&self) -> String {
        let parts: Vec<String> = self.cores_by_thread.iter().map(|(n, c)| format!("{n} {c:.2}")).collect();
        let mut text = format!("{:.2} cores ({})", self.cores, parts.join(", "));
        if let (Some(busy), Some(iowait)) = (self.machine_busy_cores, self.machine_iowait_cores) {
            text.push_str(&format!("; machine {busy:.2} busy, {iowait:.2} iowait"));
        }
        text
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stat_lines_are_parsed_past_odd_names() {
        let line = "1234 (tokio (x) w) S 1 2 3 4 5 6 7 8 9 10 150 50 0 0 20 0";
        assert_eq!(parse_stat(line), Some(("tokio (x) w".to_string(), 2.0)));
    }

    #[test]
    fn machine_times_are_read_from_the_cpu_line() {
        let text = "cpu  100 0 50 1000 20 5 5 0 0 0\ncpu0 50 0 25 500 10 2 3 0 0 0\n";
        assert_eq!(parse_machine(text), Some((1.6, 0.2)));
    }

    #[test]
    fn this_process_can_be_sampled() {
        let a = sample().expect("/proc on Linux");
        let b = sample().expect("/proc on Linux");
        let used = b.since(&a, 1.0);
        assert!(used.cpu_s >= 0.0);
    }
}
