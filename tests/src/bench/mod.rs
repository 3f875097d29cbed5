//! The pieces of the `bench` command (`src/bin/bench.rs`): the disk baseline it is
//! compared with, the client workload, latency summaries and the report; the
//! command-line pieces both benches share (`cli`); and of the
//! `move-bench` command (`src/bin/move-bench.rs`, the `move_*` and `etcd_*` modules,
//! `seqwrite` and `cpu`): a replica move of a large shard, idle and under writers, beside the
//! disk's sequential write rate.
//!
//! Invariant: every figure the benches print is either measured in the same run on the
//! same machine (the baselines included) or a ratio of two such measurements; nothing is
//! compared with a number remembered from elsewhere. `move-bench` measures etcd in the
//! same run (`etcd_api`, `etcd_move`); only when no etcd binary is found does its verdict
//! fall back on the figures issue 4 quotes, labelled as such ([`move_report::ETCD`]).

pub mod baseline;
pub mod cli;
pub mod cpu;
pub mod etcd_api;
pub mod etcd_move;
pub mod latency;
pub mod move_load;
pub mod move_report;
pub mod move_status;
pub mod move_watch;
pub mod report;
pub mod seqwrite;
pub mod workload;
