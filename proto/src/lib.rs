//! Cairn's wire protocol and the domain types that cross it.
//!
//! Invariants:
//! - This is the only crate that knows prost/tonic generated types (`pb`). Other crates
//!   convert at their gRPC edge (a `service` module) with the conversions in [`convert`],
//!   and their logic works on [`types`] only.
//! - Errors cross the wire in exactly one way: [`ApiError::to_status`] puts a `pb::Error`
//!   into the status details and [`ApiError::from_status`] reads it back. Error codes
//!   ([`ErrorCode`]) are stable.

pub mod convert;
pub mod error;
pub mod net;
pub mod pd;
pub mod sim;
pub mod types;

/// Generated protobuf and gRPC code. Only service edges should touch it.
pub mod pb {
    #![allow(clippy::all, missing_docs)]
    tonic::include_proto!("cairn.v1");
}

pub use error::{ApiError, ErrorCode};
pub use pd::*;
pub use types::*;
