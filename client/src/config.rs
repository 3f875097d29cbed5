//! Client configuration: one serde struct with laptop-friendly defaults.
//!
//! Invariant: a [`ClientConfig`] that passed [`ClientConfig::validate`] has non-zero
//! timeouts, at least one attempt, and `backoff_base <= backoff_cap`; the clients rely on
//! that and never re-check it.

use std::time::Duration;

use cairn_proto::ApiError;
use cairn_proto::net::Net;
use serde::{Deserialize, Serialize};

/// The largest gRPC message a client sends or accepts: a request may carry a 4 MiB
/// value, and a scan page may return up to [`SCAN_PAGE_DOCS_MAX`] documents.
pub const MESSAGE_BYTES_MAX: usize = 16 * 1024 * 1024;

/// The largest document (JSON text) a node accepts with its default limits
/// (`limits.value-bytes-max`, 1 MiB). `cairnctl` refuses larger input before sending it.
pub const VALUE_BYTES_MAX: usize = 1 << 20;

/// The most documents the client asks for in one scan RPC; larger scans are paged.
pub const SCAN_PAGE_DOCS_MAX: u32 = 10_000;

/// Settings of [`crate::NodeClient`], [`crate::DirectClient`], [`crate::PdClient`] and
/// [`crate::Client`]. Durations are written as human durations (`"10s"`, `"50ms"`) in
/// configuration files.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, rename_all = "kebab-case", deny_unknown_fields)]
pub struct ClientConfig {
    /// How long establishing a TCP/HTTP2 connection to a node may take. Default 3 s.
    #[serde(with = "humantime_serde")]
    pub connect_timeout: Duration,
    /// Deadline of one RPC, sent to the server as `grpc-timeout` and enforced locally.
    /// Default 10 s.
    #[serde(with = "humantime_serde")]
    pub request_timeout: Duration,
    /// Deadline of one logical operation of [`crate::DirectClient`] or [`crate::Client`]
    /// across all of its retries; each RPC gets the smaller of this remainder and
    /// `request_timeout`. Default 30 s.
    #[serde(with = "humantime_serde")]
    pub operation_timeout: Duration,
    /// The most RPC attempts one logical operation makes. Default 20 (with the default
    /// backoff, about 16 s of waiting: enough to ride out a failover).
    pub max_attempts: u32,
    /// The first backoff delay; it doubles with every attempt. Default 50 ms.
    #[serde(with = "humantime_serde")]
    pub backoff_base: Duration,
    /// The largest backoff delay. Default 1 s.
    #[serde(with = "humantime_serde")]
    pub backoff_cap: Duration,
    /// Largest gRPC message sent or received. Default [`MESSAGE_BYTES_MAX`] (16 MiB).
    pub message_bytes_max: usize,
    /// The most nodes one shard-list refresh asks. Default 16.
    pub refresh_nodes_max: usize,
    /// The network connections are made over: real TCP unless a test dials
    /// through a simulated network. Not part of configuration files.
    #[serde(skip)]
    pub net: Net,
}

impl Default for ClientConfig {
    fn default() -> Self {
        Self {
            connect_timeout: Duration::from_secs(3),
            request_timeout: Duration::from_secs(10),
            operation_timeout: Duration::from_secs(30),
            max_attempts: 20,
            backoff_base: Duration::from_millis(50),
            backoff_cap: Duration::from_secs(1),
            message_bytes_max: MESSAGE_BYTES_MAX,
            refresh_nodes_max: 16,
            net: Net::tcp(),
        }
    }
}

impl ClientConfig {
    /// Checks each field and the relations between them.
    pub fn validate(&self) -> Result<(), ApiError> {
        let bad = |m: &str| Err(ApiError::InvalidArgument(format!("client config: {m}")));
        if self.connect_timeout.is_zero() {
            return bad("connect-timeout must be positive");
        }
        if self.request_timeout.is_zero() {
            return bad("request-timeout must be positive");
        }
        if self.operation_timeout.is_zero() {
            return bad("operation-timeout must be positive");
        }
        if self.max_attempts == 0 {
            return bad("max-attempts must be at least 1");
        }
        if self.backoff_base.is_zero() {
            return bad("backoff-base must be positive");
        }
        if self.backoff_base > self.backoff_cap {
            return bad("backoff-base must not exceed backoff-cap");
        }
        if self.message_bytes_max < 1024 * 1024 {
            return bad("message-bytes-max must be at least 1 MiB");
        }
        if self.refresh_nodes_max == 0 {
            return bad("refresh-nodes-max must be at least 1");
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_valid() {
        ClientConfig::default().validate().expect("defaults must validate");
    }

    #[test]
    fn reads_kebab_case_keys_and_human_durations() {
        let c: ClientConfig =
            serde_json::from_str(r#"{"request-timeout": "500ms", "max-attempts": 3}"#).expect("valid config");
        assert_eq!(c.request_timeout, Duration::from_millis(500));
        assert_eq!(c.max_attempts, 3);
        assert_eq!(c.backoff_cap, ClientConfig::default().backoff_cap, "unset keys keep their default");
        assert!(serde_json::from_str::<ClientConfig>(r#"{"retries": 3}"#).is_err(), "unknown keys are rejected");
    }

    #[test]
    fn rejects_inverted_backoff_and_zero_attempts() {
        let c = ClientConfig { backoff_base: Duration::from_secs(2), ..Default::default() };
        assert!(c.validate().is_err());
        let c = ClientConfig { max_attempts: 0, ..Default::default() };
        assert!(c.validate().is_err());
        let c = ClientConfig { request_timeout: Duration::ZERO, ..Default::default() };
        assert!(c.validate().is_err());
    }
}
