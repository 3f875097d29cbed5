//! A scenario's summary: timings, operators, clients, checks and the verdict.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::PathBuf;
use std::time::Duration;

use super::clients::ClientsReport;
use crate::bench::latency::LatencySummary;

/// One acceptance criterion (or an extra observation) and whether it held.
#[derive(Clone, Debug)]
pub struct Check {
    pub name: String,
    pub ok: bool,
    /// Required checks decide the verdict; the others are reported only.
    pub required: bool,
    pub detail: String,
}

#[derive(Clone, Debug, Default)]
pub struct Summary {
    pub scenario: String,
    pub dir: PathBuf,
    pub settings: Vec<(String, String)>,
    pub timings: Vec<(String, Duration)>,
    /// Finished operators by (kind, outcome), from the PD's event log.
    pub operators: BTreeMap<(String, String), u64>,
    pub missed_events: u64,
    pub clients: Option<ClientsReport>,
    pub checks: Vec<Check>,
    /// Free-form sections (name, lines): per-node tables, cairnctl output.
    pub sections: Vec<(String, Vec<String>)>,
}

impl Summary {
    pub fn new(scenario: &str, dir: PathBuf) -> Summary {
        Summary { scenario: scenario.to_string(), dir, ..Default::default() }
    }

    pub fn setting(&mut self, name: &str, value: impl ToString) {
        self.settings.push((name.to_string(), value.to_string()));
    }

    pub fn timing(&mut self, what: &str, took: Duration) {
        eprintln!("== {what}: {:.1} s", took.as_secs_f64());
        self.timings.push((what.to_string(), took));
    }

    pub fn check(&mut self, name: &str, ok: bool, detail: impl Into<String>) {
        self.checks.push(Check { name: name.to_string(), ok, required: true, detail: detail.into() });
    }

    /// A check reported but not counted in the verdict.
    pub fn observe(&mut self, name: &str, ok: bool, detail: impl Into<String>) {
        self.checks.push(Check { name: name.to_string(), ok, required: false, detail: detail.into() });
    }

    pub fn section(&mut self, name: &str, lines: Vec<String>) {
        self.sections.push((name.to_string(), lines));
    }

    pub fn passed(&self) -> bool {
        !self.checks.is_empty() && self.checks.iter().all(|c| c.ok || !c.required)
    }

    pub fn render(&self) -> String {
        let mut out = String::new();
        let verdict = if self.passed() { "PASS" } else { "FAIL" };
        let _ = writeln!(out, "== acceptance {}: {verdict} ==", self.scenario);
        let _ = writeln!(out, "data directory: {}", self.dir.display());
        for (name, value) in &self.settings {
            let _ = writeln!(out, "  {name}: {value}");
        }
        let _ = writeln!(out, "timings:");
        for (what, took) in &self.timings {
            let _ = writeln!(out, "  {what:<58} {:>8.1} s", took.as_secs_f64());
        }
        let ops: Vec<String> = self.operators.iter().map(|((k, o), n)| format!("{k} {o}: {n}")).collect();
        let ops = if ops.is_empty() { "none".to_string() } else { ops.join(", ") };
        let missed =
            if self.missed_events > 0 { format!(" ({} events missed)", self.missed_events) } else { String::new() };
        let _ = writeln!(out, "operators finished (PD event log): {ops}{missed}");
        if let Some(c) = &self.clients {
            let n = c.acked.len();
            let k = c.counts;
            let _ = writeln!(
                out,
                "clients: {n} for {:.0} s: put {} ok / {} failed, get {} ok / {} failed, acknowledged key read back wrong or missing: {}",
                c.elapsed.as_secs_f64(),
                k.puts_ok,
                k.puts_failed,
                k.gets_ok,
                k.gets_failed,
                k.gets_lost
            );
            let _ = writeln!(out, "  put latency {}", latency(&c.put_latency));
            let _ = writeln!(out, "  get latency {}", latency(&c.get_latency));
            for e in c.errors.iter().take(10) {
                let _ = writeln!(out, "  error: {e}");
            }
        }
        for (name, lines) in &self.sections {
            let _ = writeln!(out, "{name}:");
            for line in lines {
                let _ = writeln!(out, "  {line}");
            }
        }
        let _ = writeln!(out, "checks:");
        for c in &self.checks {
            let mark = match (c.ok, c.required) {
                (true, _) => "ok  ",
                (false, true) => "FAIL",
                (false, false) => "warn",
            };
            let _ = writeln!(out, "  [{mark}] {}: {}", c.name, c.detail);
        }
        let _ = writeln!(out, "verdict: {verdict}");
        out
    }
}

fn latency(l: &Option<LatencySummary>) -> String {
    match l {
        Some(l) => format!("p50 {:.1} ms, p99 {:.1} ms, max {:.0} ms", l.p50_ms, l.p99_ms, l.max_ms),
        None => "no samples".into(),
    }
}
