//! The one error type of the Cairn API and its stable codes.

use prost::Message;
use serde::{Deserialize, Serialize};

use crate::types::{NodeId, ShardDescriptor, ShardId};

/// Stable error codes; the numbers match `cairn.v1.ErrorCode` and never change.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum ErrorCode {
    NotLeader = 1,
    EpochMismatch = 2,
    KeyNotInShard = 3,
    ShardNotFound = 4,
    InvalidArgument = 5,
    TooLarge = 6,
    ConditionFailed = 7,
    Unavailable = 8,
    DeadlineExceeded = 9,
    Internal = 10,
}

impl ErrorCode {
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorCode::NotLeader => "NOT_LEADER",
            ErrorCode::EpochMismatch => "EPOCH_MISMATCH",
            ErrorCode::KeyNotInShard => "KEY_NOT_IN_SHARD",
            ErrorCode::ShardNotFound => "SHARD_NOT_FOUND",
            ErrorCode::InvalidArgument => "INVALID_ARGUMENT",
            ErrorCode::TooLarge => "TOO_LARGE",
            ErrorCode::ConditionFailed => "CONDITION_FAILED",
            ErrorCode::Unavailable => "UNAVAILABLE",
            ErrorCode::DeadlineExceeded => "DEADLINE_EXCEEDED",
            ErrorCode::Internal => "INTERNAL",
        }
    }

    fn from_i32(v: i32) -> Option<Self> {
        Some(match v {
            1 => ErrorCode::NotLeader,
            2 => ErrorCode::EpochMismatch,
            3 => ErrorCode::KeyNotInShard,
            4 => ErrorCode::ShardNotFound,
            5 => ErrorCode::InvalidArgument,
            6 => ErrorCode::TooLarge,
            7 => ErrorCode::ConditionFailed,
            8 => ErrorCode::Unavailable,
            9 => ErrorCode::DeadlineExceeded,
            10 => ErrorCode::Internal,
            _ => return None,
        })
    }
}

impl std::fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// An error of the Cairn API. The retryable cases carry what the caller needs to
/// retry correctly.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ApiError {
    #[error("NOT_LEADER: shard {shard} is led by {}", leader.as_ref().map(|(id, addr)| format!("node {id} at {addr}")).unwrap_or_else(|| "an unknown node".into()))]
    NotLeader { shard: ShardId, leader: Option<(NodeId, String)> },
    #[error("EPOCH_MISMATCH: shard {} is at epoch {}", current.id, current.epoch)]
    EpochMismatch { current: ShardDescriptor },
    #[error("KEY_NOT_IN_SHARD: the key is outside shard {} {}", current.id, current.range)]
    KeyNotInShard { current: ShardDescriptor },
    #[error("SHARD_NOT_FOUND: this node hosts no replica of shard {shard}")]
    ShardNotFound { shard: ShardId },
    #[error("INVALID_ARGUMENT: {0}")]
    InvalidArgument(String),
    #[error("TOO_LARGE: {0}")]
    TooLarge(String),
    #[error("CONDITION_FAILED: the document is at version {current_version}")]
    ConditionFailed { current_version: u64 },
    #[error("UNAVAILABLE: {0}")]
    Unavailable(String),
    #[error("DEADLINE_EXCEEDED: {0}")]
    DeadlineExceeded(String),
    #[error("INTERNAL: {0}")]
    Internal(String),
}

impl ApiError {
    pub fn code(&self) -> ErrorCode {
        match self {
            ApiError::NotLeader { .. } => ErrorCode::NotLeader,
            ApiError::EpochMismatch { .. } => ErrorCode::EpochMismatch,
            ApiError::KeyNotInShard { .. } => ErrorCode::KeyNotInShard,
            ApiError::ShardNotFound { .. } => ErrorCode::ShardNotFound,
            ApiError::InvalidArgument(_) => ErrorCode::InvalidArgument,
            ApiError::TooLarge(_) => ErrorCode::TooLarge,
            ApiError::ConditionFailed { .. } => ErrorCode::ConditionFailed,
            ApiError::Unavailable(_) => ErrorCode::Unavailable,
            ApiError::DeadlineExceeded(_) => ErrorCode::DeadlineExceeded,
            ApiError::Internal(_) => ErrorCode::Internal,
        }
    }

    /// Whether retrying the same request (possibly after refreshing the route) can succeed.
    pub fn is_retryable(&self) -> bool {
        matches!(
            self,
            ApiError::NotLeader { .. }
                | ApiError::EpochMismatch { .. }
                | ApiError::KeyNotInShard { .. }
                | ApiError::ShardNotFound { .. }
                | ApiError::Unavailable(_)
                | ApiError::DeadlineExceeded(_)
        )
    }

    pub fn to_pb(&self) -> crate::pb::Error {
        let mut e = crate::pb::Error { code: self.code() as i32, message: self.to_string(), ..Default::default() };
        match self {
            ApiError::NotLeader { shard, leader } => {
                e.shard_id = shard.0;
                if let Some((id, addr)) = leader {
                    e.leader_id = Some(id.0);
                    e.leader_addr = addr.clone();
                }
            }
            ApiError::EpochMismatch { current } | ApiError::KeyNotInShard { current } => {
                e.shard_id = current.id.0;
                e.current = Some(current.into());
            }
            ApiError::ShardNotFound { shard } => e.shard_id = shard.0,
            ApiError::ConditionFailed { current_version } => e.current_version = *current_version,
            _ => {}
        }
        e
    }

    /// Decodes an error received from the wire. Unknown codes and malformed
    /// details become `Internal`, never a panic.
    pub fn from_pb(e: crate::pb::Error) -> ApiError {
        let Some(code) = ErrorCode::from_i32(e.code) else {
            return ApiError::Internal(format!("unknown error code {}: {}", e.code, e.message));
        };
        let current = || -> Result<ShardDescriptor, ApiError> {
            match e.current.clone() {
                Some(d) => ShardDescriptor::try_from(d).map_err(|err| ApiError::Internal(err.to_string())),
                None => Err(ApiError::Internal(format!("{code} without a shard descriptor"))),
            }
        };
        match code {
            ErrorCode::NotLeader => ApiError::NotLeader {
                shard: ShardId(e.shard_id),
                leader: e.leader_id.map(|id| (NodeId(id), e.leader_addr.clone())),
            },
            ErrorCode::EpochMismatch => match current() {
                Ok(current) => ApiError::EpochMismatch { current },
                Err(err) => err,
            },
            ErrorCode::KeyNotInShard => match current() {
                Ok(current) => ApiError::KeyNotInShard { current },
                Err(err) => err,
            },
            ErrorCode::ShardNotFound => ApiError::ShardNotFound { shard: ShardId(e.shard_id) },
            ErrorCode::InvalidArgument => ApiError::InvalidArgument(strip_code(&e.message, code)),
            ErrorCode::TooLarge => ApiError::TooLarge(strip_code(&e.message, code)),
            ErrorCode::ConditionFailed => ApiError::ConditionFailed { current_version: e.current_version },
            ErrorCode::Unavailable => ApiError::Unavailable(strip_code(&e.message, code)),
            ErrorCode::DeadlineExceeded => ApiError::DeadlineExceeded(strip_code(&e.message, code)),
            ErrorCode::Internal => ApiError::Internal(strip_code(&e.message, code)),
        }
    }

    fn grpc_code(&self) -> tonic::Code {
        match self {
            ApiError::NotLeader { .. } | ApiError::EpochMismatch { .. } | ApiError::KeyNotInShard { .. } => {
                tonic::Code::FailedPrecondition
            }
            ApiError::ShardNotFound { .. } => tonic::Code::NotFound,
            ApiError::InvalidArgument(_) => tonic::Code::InvalidArgument,
            ApiError::TooLarge(_) => tonic::Code::ResourceExhausted,
            ApiError::ConditionFailed { .. } => tonic::Code::Aborted,
            ApiError::Unavailable(_) => tonic::Code::Unavailable,
            ApiError::DeadlineExceeded(_) => tonic::Code::DeadlineExceeded,
            ApiError::Internal(_) => tonic::Code::Internal,
        }
    }

    /// The one place an `ApiError` becomes a gRPC status.
    pub fn to_status(&self) -> tonic::Status {
        let details = self.to_pb().encode_to_vec();
        tonic::Status::with_details(self.grpc_code(), self.to_string(), details.into())
    }

    /// The one place a gRPC status becomes an `ApiError`. A status without
    /// Cairn details (transport failure, proxy, timeout) maps by its gRPC code.
    pub fn from_status(status: &tonic::Status) -> ApiError {
        if !status.details().is_empty()
            && let Ok(e) = crate::pb::Error::decode(status.details())
        {
            return ApiError::from_pb(e);
        }
        match status.code() {
            tonic::Code::DeadlineExceeded | tonic::Code::Cancelled => {
                ApiError::DeadlineExceeded(status.message().to_string())
            }
            tonic::Code::Unavailable | tonic::Code::Unknown | tonic::Code::Aborted => {
                ApiError::Unavailable(format!("{}: {}", status.code(), status.message()))
            }
            tonic::Code::InvalidArgument => ApiError::InvalidArgument(status.message().to_string()),
            tonic::Code::ResourceExhausted | tonic::Code::OutOfRange => {
                ApiError::TooLarge(status.message().to_string())
            }
            other => ApiError::Internal(format!("{other}: {}", status.message())),
        }
    }
}

fn strip_code(message: &str, code: ErrorCode) -> String {
    message.strip_prefix(code.as_str()).and_then(|m| m.strip_prefix(": ")).unwrap_or(message).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::types::{Epoch, KeyRange};

    #[test]
    fn every_error_survives_the_wire() {
        let desc = ShardDescriptor {
            id: ShardId(3),
            range: KeyRange::new(b"a".to_vec(), b"m".to_vec()),
            epoch: Epoch { conf_ver: 2, version: 5 },
            replicas: vec![],
        };
        let errors = [
            ApiError::NotLeader { shard: ShardId(1), leader: Some((NodeId(2), "127.0.0.1:1".into())) },
            ApiError::NotLeader { shard: ShardId(1), leader: None },
            ApiError::EpochMismatch { current: desc.clone() },
            ApiError::KeyNotInShard { current: desc },
            ApiError::ShardNotFound { shard: ShardId(9) },
            ApiError::InvalidArgument("bad json".into()),
            ApiError::TooLarge("value of 2 MiB".into()),
            ApiError::ConditionFailed { current_version: 17 },
            ApiError::Unavailable("no quorum".into()),
            ApiError::DeadlineExceeded("5s".into()),
            ApiError::Internal("boom".into()),
        ];
        for e in errors {
            assert_eq!(ApiError::from_status(&e.to_status()), e);
        }
    }

    #[test]
    fn malformed_details_do_not_panic() {
        let s = tonic::Status::with_details(tonic::Code::Internal, "x", vec![0xff, 0xff, 0xff].into());
        assert!(matches!(ApiError::from_status(&s), ApiError::Internal(_)));
        let e = crate::pb::Error { code: 999, ..Default::default() };
        assert!(matches!(ApiError::from_pb(e), ApiError::Internal(_)));
    }
}
