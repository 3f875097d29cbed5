//! `cairn-client`: the async client library of Cairn and the `cairnctl` admin CLI.
//!
//! Most applications want [`Client`]: connect it to the placement driver, then read and
//! write documents by key.
//!
//! ```no_run
//! # async fn demo() -> Result<(), cairn_client::Error> {
//! use cairn_client::Client;
//!
//! let client = Client::connect("127.0.0.1:7700").await?;
//! client.put("user:1", r#"{"name":"Ada"}"#).await?;
//! let doc = client.get("user:1").await?;
//! # Ok(())
//! # }
//! ```
//!
//! Layers, from the wire up:
//! - [`node_client::NodeClient`] is a thin typed wrapper over one node's gRPC endpoint. It
//!   routes nothing and retries nothing: one call is one RPC, with a deadline.
//! - [`pd_client::PdClient`] is the same for the placement driver (PD), over a list of PD
//!   members: one call is one logical RPC, failing over between members.
//! - [`client::Client`] routes by the PD's shard map: it loads the map at connect time,
//!   follows its changes with a background watch ([`watch`]), routes each key to its
//!   shard's leader, follows leader hints, refreshes stale routes from the nodes' answers
//!   and the PD, and retries with bounded, jittered backoff. Its errors are the typed
//!   [`Error`].
//! - [`direct::DirectClient`] talks to a cluster through a seed node without a PD, by the
//!   shard list the nodes report. `cairnctl --node` uses it.
//! - [`shard_map`], [`routing`], [`retry`] and [`session`] hold the decisions those
//!   clients make as pure data structures and functions, so they can be unit-tested
//!   without a network.
//!
//! Invariants:
//! - This crate depends on `cairn-proto` only; generated `pb` types never leave
//!   [`node_client`] and [`pd_client`], and every public signature uses the domain types
//!   of `cairn_proto`.
//! - Below [`Client`], every error is a [`cairn_proto::ApiError`]: server errors decode
//!   with `ApiError::from_status`, transport failures become `Unavailable`, and expired
//!   deadlines `DeadlineExceeded`. [`Client`] maps them to [`Error`] in one place
//!   (`From<ApiError>`), and never returns a routing error: those are retried, and surface
//!   as `Unavailable`/`DeadlineExceeded` once attempts or time run out.
//! - A logical write keeps one session sequence number across all of its retries, so the
//!   server applies it at most once.
//! - The cached shard map is only a hint: nodes check the route of every request, so a
//!   stale map costs retries, never a wrong answer.
//! - Every spawned task is owned: [`Client`]'s watch task ends when its last clone is
//!   dropped or on [`Client::shutdown`].
//! - Everything is bounded: attempts per operation, total time per operation, backoff
//!   delay, message sizes, scan page sizes, batch fan-out, shard-list pages, pooled
//!   connections and the number of nodes asked during a refresh.

pub mod cli;
pub mod client;
pub mod config;
pub mod direct;
pub mod error;
pub mod node_client;
pub mod pd_client;
pub mod retry;
pub mod routing;
pub mod session;
pub mod shard_map;
pub mod watch;

pub use cairn_proto::{Document, KeyRange, ShardRoute};
pub use client::{Client, DocumentStream, PdEndpoints, ScanOptions, Versioned};
pub use config::ClientConfig;
pub use direct::DirectClient;
pub use error::Error;
pub use node_client::{NodeClient, ScanRange};
pub use pd_client::{PdClient, ShardMapStream};
