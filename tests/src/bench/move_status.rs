//! What `move-bench` is doing right now, for its once-a-second progress line on
//! stderr: the phase, bytes loaded, writes acknowledged, and the move's operator
//! step and snapshot progress. Written by the loader, the writers and the move
//! watcher; read only by the printer. Nothing here feeds the report.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use tokio::time::Instant;

#[derive(Debug)]
pub struct Status {
    phase: Mutex<(String, Instant)>,
    /// Document bytes (keys plus values) the loader has had acknowledged.
    pub loaded_bytes: AtomicU64,
    /// What the loader aims at, 0 outside the load.
    pub load_target_bytes: AtomicU64,
    /// Writes the bench's writers have had acknowledged, and their failures.
    pub writes: AtomicU64,
    pub write_errors: AtomicU64,
    /// The move watcher's last view: operator step and snapshot bytes.
    operator: Mutex<String>,
}

impl Default for Status {
    fn default() -> Self {
        Status {
            phase: Mutex::new(("start".into(), Instant::now())),
            loaded_bytes: AtomicU64::new(0),
            load_target_bytes: AtomicU64::new(0),
            writes: AtomicU64::new(0),
            write_errors: AtomicU64::new(0),
            operator: Mutex::new(String::new()),
        }
    }
}

impl Status {
    /// Enters `phase`, printing it at once.
    pub fn phase(&self, phase: &str) {
        eprintln!("[{phase}] ...");
        *self.phase.lock().unwrap_or_else(PoisonError::into_inner) = (phase.to_string(), Instant::now());
        self.operator.lock().unwrap_or_else(PoisonError::into_inner).clear();
    }

    pub fn set_operator(&self, line: String) {
        *self.operator.lock().unwrap_or_else(PoisonError::into_inner) = line;
    }

    fn line(&self, writes_per_sec: f64) -> String {
        let (phase, since) = self.phase.lock().unwrap_or_else(PoisonError::into_inner).clone();
        let mut line = format!("[{phase}] {:>6.1}s", since.elapsed().as_secs_f64());
        let target = self.load_target_bytes.load(Ordering::Relaxed);
        if target > 0 {
            line.push_str(&format!(
                "  loaded {:.1} of {:.1} MB",
                self.loaded_bytes.load(Ordering::Relaxed) as f64 / 1e6,
                target as f64 / 1e6
            ));
        }
        let writes = self.writes.load(Ordering::Relaxed);
        if writes > 0 {
            line.push_str(&format!(
                "  writes {writes} ({writes_per_sec:.0}/s, {} errors)",
                self.write_errors.load(Ordering::Relaxed)
            ));
        }
        let operator = self.operator.lock().unwrap_or_else(PoisonError::into_inner).clone();
        if !operator.is_empty() {
            line.push_str("  ");
            line.push_str(&operator);
        }
        line
    }
}

/// Prints the status line every second until aborted.
pub async fn print_every_second(status: Arc<Status>) {
    let start = Instant::now() + Duration::from_secs(1);
    let mut tick = tokio::time::interval_at(start, Duration::from_secs(1));
    let mut last = (status.writes.load(Ordering::Relaxed), Instant::now());
    loop {
        let now = tick.tick().await;
        let writes = status.writes.load(Ordering::Relaxed);
        let rate = (writes - last.0) as f64 / (now - last.1).as_secs_f64().max(1e-3);
        last = (writes, now);
        eprintln!("{}", status.line(rate));
    }
}
