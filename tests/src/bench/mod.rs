//! The pieces of the `bench` command (`src/bin/bench.rs`): the disk baseline it is
//! compared with, the client workload, latency summaries and the report.
//!
//! Invariant: every figure the bench prints is either measured in the same run on the
//! same machine (the baseline included) or a ratio of two such measurements; nothing is
//! compared with a number remembered from elsewhere.

pub mod baseline;
pub mod latency;
pub mod report;
pub mod workload;
