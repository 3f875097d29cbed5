//! [`Error`]: the error type of [`crate::Client`], the one a caller matches on.
//!
//! Invariants:
//! - The text of an error starts with its stable code (`CONDITION_FAILED: ...`), the same
//!   codes as the wire's `cairn.v1.ErrorCode`, so scripts can match on it.
//! - Routing errors (`NOT_LEADER`, `EPOCH_MISMATCH`, `KEY_NOT_IN_SHARD`, `SHARD_NOT_FOUND`)
//!   are the client's business: it retries them, and when retries run out they surface as
//!   [`Error::Unavailable`] or [`Error::DeadlineExceeded`] with the last cause in the
//!   message. A caller never has to handle a routing error itself.
//! - Errors the caller caused ([`Error::ConditionFailed`], [`Error::InvalidArgument`],
//!   [`Error::TooLarge`], [`Error::Json`]) are returned at once, never retried.
//! - A write that ends in `Unavailable` or `DeadlineExceeded` may or may not have been
//!   applied; it was applied at most once.

use std::time::Duration;

use cairn_proto::{ApiError, display_key};

/// Why an operation of [`crate::Client`] failed.
///
/// ```no_run
/// # async fn demo(client: cairn_client::Client) -> Result<(), cairn_client::Error> {
/// use cairn_client::Error;
/// match client.put_if_version("user:1", r#"{"name":"Ada"}"#, 0).await {
///     Ok(version) => println!("created at version {version}"),
///     Err(Error::ConditionFailed { current_version }) => println!("exists (version {current_version})"),
///     Err(err) if err.is_retryable() => println!("try again later: {err}"),
///     Err(err) => return Err(err),
/// }
/// # Ok(())
/// # }
/// ```
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A conditional write or delete found the document at another version
    /// (`current_version` 0: the document does not exist).
    #[error("CONDITION_FAILED: the document is at version {current_version}")]
    ConditionFailed { current_version: u64 },
    /// The request is malformed: an empty or bad key, a value that is not JSON, a bad
    /// address or configuration.
    #[error("INVALID_ARGUMENT: {0}")]
    InvalidArgument(String),
    /// A key, value or request is over a server limit.
    #[error("TOO_LARGE: {0}")]
    TooLarge(String),
    /// The cluster could not serve the operation within `max_attempts`: nodes or the
    /// placement driver were unreachable, or the shard kept moving. Retrying later may work.
    #[error("UNAVAILABLE: {0}")]
    Unavailable(String),
    /// The operation did not finish within its deadline (`operation_timeout`).
    #[error("DEADLINE_EXCEEDED: {0}")]
    DeadlineExceeded(String),
    /// A typed helper (`put_json`, `get_json`, ...) could not convert between the
    /// document at `key` and the Rust type.
    #[error("JSON of the document at {key}: {source}")]
    Json {
        key: String,
        #[source]
        source: serde_json::Error,
    },
    /// A bug or a corrupt answer on the server or in the client.
    #[error("INTERNAL: {0}")]
    Internal(String),
}

impl Error {
    /// Whether the same operation may succeed if tried again later.
    pub fn is_retryable(&self) -> bool {
        matches!(self, Error::Unavailable(_) | Error::DeadlineExceeded(_))
    }

    /// The version a failed condition found (0: absent), if this is `ConditionFailed`.
    pub fn current_version(&self) -> Option<u64> {
        match self {
            Error::ConditionFailed { current_version } => Some(*current_version),
            _ => None,
        }
    }

    pub(crate) fn json(key: &[u8], source: serde_json::Error) -> Error {
        Error::Json { key: display_key(key), source }
    }
}

impl From<ApiError> for Error {
    /// Maps a server or transport error. A routing error only gets here when retrying it
    /// is no longer allowed, so it becomes `Unavailable` with the cause in the message.
    fn from(err: ApiError) -> Self {
        match err {
            ApiError::ConditionFailed { current_version } => Error::ConditionFailed { current_version },
            ApiError::InvalidArgument(m) => Error::InvalidArgument(m),
            ApiError::TooLarge(m) => Error::TooLarge(m),
            ApiError::Unavailable(m) => Error::Unavailable(m),
            ApiError::DeadlineExceeded(m) => Error::DeadlineExceeded(m),
            ApiError::Internal(m) => Error::Internal(m),
            routing @ (ApiError::NotLeader { .. }
            | ApiError::EpochMismatch { .. }
            | ApiError::KeyNotInShard { .. }
            | ApiError::ShardNotFound { .. }) => Error::Unavailable(routing.to_string()),
        }
    }
}

/// The error of an operation that ran out of attempts or time: `DeadlineExceeded` when
/// the deadline passed, else `Unavailable`, naming the operation, the key, the effort
/// spent and the last cause.
pub(crate) fn gave_up(
    op: &str,
    key: &[u8],
    attempts: u32,
    elapsed: Duration,
    deadline_passed: bool,
    last: Option<&ApiError>,
) -> Error {
    let cause = last.map(ToString::to_string).unwrap_or_else(|| "no attempt could be made".to_string());
    let message = format!(
        "{op} {}: gave up after {attempts} attempt(s) in {}ms; last error: {cause}",
        display_key(key),
        elapsed.as_millis()
    );
    if deadline_passed { Error::DeadlineExceeded(message) } else { Error::Unavailable(message) }
}

/// Whether `new` should replace `old` as the cause reported when an operation gives up.
/// Two errors are not causes and do not hide an earlier one: a leader hint (`NOT_LEADER`
/// naming a leader) is a redirect, and a `DEADLINE_EXCEEDED` of an attempt cut short by
/// the operation's own deadline (`deadline_passed`) only says that time ran out.
pub(crate) fn supersedes(new: &ApiError, old: Option<&ApiError>, deadline_passed: bool) -> bool {
    let redirect = |e: &ApiError| matches!(e, ApiError::NotLeader { leader: Some(_), .. });
    match old {
        None => true,
        Some(_) if deadline_passed && matches!(new, ApiError::DeadlineExceeded(_)) => false,
        Some(old) => !redirect(new) || redirect(old),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use cairn_proto::{ShardDescriptor, ShardId};

    #[test]
    fn api_errors_map_to_caller_facing_errors() {
        assert!(matches!(
            Error::from(ApiError::ConditionFailed { current_version: 4 }),
            Error::ConditionFailed { current_version: 4 }
        ));
        assert!(matches!(Error::from(ApiError::TooLarge("v".into())), Error::TooLarge(m) if m == "v"));
        assert!(matches!(Error::from(ApiError::InvalidArgument("k".into())), Error::InvalidArgument(_)));
        assert!(matches!(Error::from(ApiError::Internal("x".into())), Error::Internal(_)));
        assert!(matches!(Error::from(ApiError::DeadlineExceeded("x".into())), Error::DeadlineExceeded(_)));
        for routing in [
            ApiError::NotLeader { shard: ShardId(1), leader: None },
            ApiError::EpochMismatch { current: ShardDescriptor::default() },
            ApiError::KeyNotInShard { current: ShardDescriptor::default() },
            ApiError::ShardNotFound { shard: ShardId(1) },
        ] {
            let code = routing.code().as_str();
            let Error::Unavailable(message) = Error::from(routing) else { panic!("routing errors are Unavailable") };
            assert!(message.starts_with(code), "{message}");
        }
    }

    #[test]
    fn giving_up_names_the_cause_and_picks_the_kind() {
        let last = ApiError::NotLeader { shard: ShardId(3), leader: None };
        let err = gave_up("put", b"k1", 5, Duration::from_millis(120), false, Some(&last));
        let Error::Unavailable(message) = &err else { panic!("{err:?}") };
        assert_eq!(
            message,
            "put k1: gave up after 5 attempt(s) in 120ms; last error: NOT_LEADER: shard 3 is led by an unknown node"
        );
        assert!(err.is_retryable());
        let err = gave_up("get", b"\x00", 2, Duration::from_secs(1), true, None);
        assert!(matches!(&err, Error::DeadlineExceeded(m) if m.contains("0x00") && m.contains("no attempt")), "{err}");
    }

    #[test]
    fn redirects_do_not_hide_the_cause() {
        let hint = ApiError::NotLeader { shard: ShardId(1), leader: Some((cairn_proto::NodeId(2), "n2:1".into())) };
        let down = ApiError::Unavailable("n2:1 refused".into());
        assert!(supersedes(&hint, None, false));
        assert!(!supersedes(&hint, Some(&down), false));
        assert!(supersedes(&down, Some(&hint), false));
        assert!(supersedes(&hint, Some(&hint), false));
        let election = ApiError::NotLeader { shard: ShardId(1), leader: None };
        assert!(supersedes(&election, Some(&down), false), "no known leader is a cause of its own");
        let slow = ApiError::DeadlineExceeded("Put took longer than 3ms".into());
        assert!(!supersedes(&slow, Some(&down), true), "the operation's deadline cut the attempt short");
        assert!(supersedes(&slow, Some(&down), false), "a node too slow for request_timeout is a cause");
        assert!(supersedes(&slow, None, true));
    }

    #[test]
    fn only_transient_errors_are_retryable() {
        assert!(Error::Unavailable("x".into()).is_retryable());
        assert!(!Error::ConditionFailed { current_version: 1 }.is_retryable());
        assert_eq!(Error::ConditionFailed { current_version: 9 }.current_version(), Some(9));
        assert_eq!(Error::Internal("x".into()).current_version(), None);
    }
}
