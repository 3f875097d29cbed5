//! Test harnesses for Cairn: an in-process cluster of real nodes (real gRPC on
//! loopback, real redb files in a temp directory) and helpers to wait for
//! conditions with deadlines. Used by the tests in `tests/tests/` and by the
//! `bench` command.

pub mod acceptance;
pub mod bench;
pub mod chaos;
pub mod cluster;
pub mod netns;
pub mod procs;
pub mod sim;
pub mod wait;

pub use cluster::TestCluster;
pub use wait::wait_until;
