//! Chaos testing (issue 5, RFC 006): recorded histories and the checkers that
//! judge them, workloads that record them through routed clients, nemeses on
//! a seeded schedule, and the run behind the `chaos` command. Every checker
//! is tested against known-bad histories, so a `valid` verdict means something.

pub mod history;
pub mod linear;
pub mod nemesis;
pub mod register;
pub mod run;
pub mod scan;
pub mod scan_workload;
pub mod set_full;
pub mod set_workload;

pub use history::{Op, Outcome, Recorder, Verdict};
