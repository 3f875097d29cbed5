//! Histories of operations, as Jepsen records them: every operation is invoked
//! by one process and completes `ok`, `fail` (certainly no effect) or
//! `unknown` (may or may not have taken effect; it "returns at infinity").
//! A recorder hands out times from one monotonic clock and writes the events
//! as JSON lines, so a failed run's history can be kept and checked again.

use std::io::Write;
use std::sync::Mutex;
use std::time::Instant;

use serde::{Deserialize, Serialize};

/// How an operation ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Outcome {
    /// Acknowledged: it took effect, with the recorded result.
    Ok,
    /// Certainly not applied (refused before anything was proposed, or a
    /// failed condition).
    Fail,
    /// Timeout or lost connection after it may have been proposed.
    Unknown,
}

/// One completed (or never completed) operation: `input` is what was asked,
/// `output` what an `ok` returned.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Op<I, O> {
    /// Position in the history (unique).
    pub id: usize,
    pub process: u64,
    pub key: String,
    pub input: I,
    pub output: Option<O>,
    pub outcome: Outcome,
    /// Invocation time, ns on the recorder's clock.
    pub call: u64,
    /// Completion time; `None` for `unknown` (returns at infinity).
    pub ret: Option<u64>,
}

impl<I, O> Op<I, O> {
    /// Completion time with `unknown` at infinity.
    pub fn ret_or_max(&self) -> u64 {
        self.ret.unwrap_or(u64::MAX)
    }
}

/// An event of a recorded history, one JSON line each.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "lowercase")]
pub enum Event<I, O> {
    Invoke { id: usize, process: u64, key: String, input: I, time: u64 },
    Complete { id: usize, outcome: Outcome, output: Option<O>, time: u64 },
}

/// Records a history from many tasks: [`Recorder::invoke`] before the call,
/// [`Recorder::complete`] after. Operations left open when the history is
/// taken are `unknown`.
pub struct Recorder<I, O> {
    start: Instant,
    inner: Mutex<Inner<I, O>>,
}

struct Inner<I, O> {
    ops: Vec<Op<I, O>>,
    log: Option<Box<dyn Write + Send>>,
    /// Completed operations by outcome: ok, fail, unknown.
    done: [usize; 3],
}

/// Operations recorded so far, for progress lines.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Counts {
    pub invoked: usize,
    pub ok: usize,
    pub fail: usize,
    pub unknown: usize,
}

impl<I: Clone + Serialize, O: Clone + Serialize> Recorder<I, O> {
    pub fn new() -> Self {
        Self { start: Instant::now(), inner: Mutex::new(Inner { ops: Vec::new(), log: None, done: [0; 3] }) }
    }

    /// Also writes every event to `log` as a JSON line.
    pub fn with_log(log: impl Write + Send + 'static) -> Self {
        let r = Self::new();
        r.inner.lock().expect("recorder lock").log = Some(Box::new(log));
        r
    }

    fn now(&self) -> u64 {
        self.start.elapsed().as_nanos() as u64
    }

    pub fn invoke(&self, process: u64, key: impl Into<String>, input: I) -> usize {
        let mut inner = self.inner.lock().expect("recorder lock");
        let time = self.now();
        let id = inner.ops.len();
        let key = key.into();
        if let Some(log) = inner.log.as_mut() {
            let event = Event::<I, O>::Invoke { id, process, key: key.clone(), input: input.clone(), time };
            let _ = writeln!(log, "{}", serde_json::to_string(&event).expect("event to JSON"));
        }
        inner.ops.push(Op { id, process, key, input, output: None, outcome: Outcome::Unknown, call: time, ret: None });
        id
    }

    /// Completes operation `id`. An `unknown` completion keeps it open forever.
    pub fn complete(&self, id: usize, outcome: Outcome, output: Option<O>) {
        let mut inner = self.inner.lock().expect("recorder lock");
        let time = self.now();
        if let Some(log) = inner.log.as_mut() {
            let event = Event::<I, O>::Complete { id, outcome, output: output.clone(), time };
            let _ = writeln!(log, "{}", serde_json::to_string(&event).expect("event to JSON"));
        }
        inner.done[outcome as usize] += 1;
        let op = &mut inner.ops[id];
        op.outcome = outcome;
        op.output = output;
        op.ret = (outcome != Outcome::Unknown).then_some(time);
    }

    /// How many operations were invoked and how each completed.
    pub fn counts(&self) -> Counts {
        let inner = self.inner.lock().expect("recorder lock");
        Counts { invoked: inner.ops.len(), ok: inner.done[0], fail: inner.done[1], unknown: inner.done[2] }
    }

    /// The history so far (open operations as `unknown`).
    pub fn history(&self) -> Vec<Op<I, O>> {
        self.inner.lock().expect("recorder lock").ops.clone()
    }
}

impl<I: Clone + Serialize, O: Clone + Serialize> Default for Recorder<I, O> {
    fn default() -> Self {
        Self::new()
    }
}

/// Rebuilds operations from recorded events (a kept `history.jsonl`).
pub fn from_events<I, O>(events: impl IntoIterator<Item = Event<I, O>>) -> anyhow::Result<Vec<Op<I, O>>> {
    let mut ops: Vec<Op<I, O>> = Vec::new();
    for event in events {
        match event {
            Event::Invoke { id, process, key, input, time } => {
                anyhow::ensure!(id == ops.len(), "event invokes operation {id}, expected {}", ops.len());
                ops.push(Op {
                    id,
                    process,
                    key,
                    input,
                    output: None,
                    outcome: Outcome::Unknown,
                    call: time,
                    ret: None,
                });
            }
            Event::Complete { id, outcome, output, time } => {
                let op = ops.get_mut(id).ok_or_else(|| anyhow::anyhow!("completion of unknown operation {id}"))?;
                anyhow::ensure!(time >= op.call, "operation {id} completes before it was invoked");
                op.outcome = outcome;
                op.output = output;
                op.ret = (outcome != Outcome::Unknown).then_some(time);
            }
        }
    }
    Ok(ops)
}

/// A checker's answer, worst first when combined.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Verdict {
    Valid,
    /// The checker could not decide within its bounds (never taken as valid).
    Unknown,
    Invalid,
}

impl Verdict {
    /// The worse of two verdicts: invalid > unknown > valid.
    pub fn and(self, other: Verdict) -> Verdict {
        self.max(other)
    }
}

impl std::fmt::Display for Verdict {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Verdict::Valid => "valid",
            Verdict::Unknown => "unknown",
            Verdict::Invalid => "invalid",
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn recorded_events_rebuild_the_history() {
        let buf = std::sync::Arc::new(Mutex::new(Vec::<u8>::new()));
        struct Shared(std::sync::Arc<Mutex<Vec<u8>>>);
        impl Write for Shared {
            fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
                self.0.lock().unwrap().extend_from_slice(b);
                Ok(b.len())
            }
            fn flush(&mut self) -> std::io::Result<()> {
                Ok(())
            }
        }
        let r: Recorder<u64, u64> = Recorder::with_log(Shared(buf.clone()));
        let a = r.invoke(1, "k", 10);
        let b = r.invoke(2, "k", 20);
        r.complete(a, Outcome::Ok, Some(7));
        r.complete(b, Outcome::Unknown, None);
        let c = r.invoke(3, "j", 30);
        r.complete(c, Outcome::Fail, None);
        let text = String::from_utf8(buf.lock().unwrap().clone()).unwrap();
        let events: Vec<Event<u64, u64>> = text.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
        assert_eq!(from_events(events).unwrap(), r.history());
        let h = r.history();
        assert_eq!(h[1].ret, None);
        assert!(h[0].ret.unwrap() >= h[0].call);
    }

    #[test]
    fn verdicts_combine_to_the_worst() {
        assert_eq!(Verdict::Valid.and(Verdict::Unknown), Verdict::Unknown);
        assert_eq!(Verdict::Unknown.and(Verdict::Invalid), Verdict::Invalid);
        assert_eq!(Verdict::Valid.and(Verdict::Valid), Verdict::Valid);
    }
}
