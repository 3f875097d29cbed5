//! The process cluster of `cairn_tests::procs`, on the server binary Cargo
//! builds for this package's tests.

#![allow(dead_code)] // Each test binary that includes this module uses a different part of it.

use std::path::Path;

pub use cairn_tests::procs::*;

/// The server binary, built by Cargo as a binary of this package.
pub const NODE_BIN: &str = env!("CARGO_BIN_EXE_cairn-test-node");

/// Starts `n` nodes hosting `shards` shards with the test Raft timings.
pub async fn start(n: usize, shards: u32) -> anyhow::Result<ProcessCluster> {
    ProcessCluster::start(Path::new(NODE_BIN), n, shards).await
}
