//! `cairn-client`: the async client library of Cairn and the `cairnctl` admin CLI.
//!
//! Layers, from the wire up:
//! - [`node_client::NodeClient`] is a thin typed wrapper over one node's gRPC endpoint. It
//!   routes nothing and retries nothing: one call is one RPC, with a deadline.
//! - [`direct::DirectClient`] talks to a cluster through a seed node without a placement
//!   driver. It caches the shard list the nodes report, routes each key to its shard's
//!   leader, follows leader hints, refreshes the list on stale-route errors and retries
//!   with bounded, jittered backoff.
//! - [`routing`], [`retry`] and [`session`] hold the decisions those clients make as small
//!   pure functions, so they can be unit-tested without a network.
//!
//! Invariants:
//! - This crate depends on `cairn-proto` only; generated `pb` types never leave
//!   [`node_client`], and every public signature uses the domain types of
//!   `cairn_proto::types`.
//! - Every error is a [`cairn_proto::ApiError`]: server errors decode with
//!   `ApiError::from_status`, transport failures become `Unavailable`, and expired deadlines
//!   `DeadlineExceeded`.
//! - A logical write keeps one session sequence number across all of its retries, so the
//!   server applies it at most once.
//! - Everything is bounded: attempts per operation, total time per operation, backoff
//!   delay, message sizes, scan page sizes and the number of nodes asked during a refresh.

pub mod cli;
pub mod config;
pub mod direct;
pub mod node_client;
pub mod pd_client;
pub mod retry;
pub mod routing;
pub mod session;

pub use config::ClientConfig;
pub use direct::DirectClient;
pub use node_client::{NodeClient, ScanRange};
pub use pd_client::{PdClient, ShardMapStream};
