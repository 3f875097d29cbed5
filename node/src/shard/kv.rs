//! The KV operations of a node. Every request is checked in this order, and a
//! failed check returns its error without touching any state:
//! 1. the shard is hosted here (`SHARD_NOT_FOUND`);
//! 2. the routed epoch is current (`EPOCH_MISMATCH`, with the descriptor): the
//!    range version must match, and the membership version must not be newer
//!    than this replica's (a newer one means this replica is behind);
//! 3. every key is in the shard's range (`KEY_NOT_IN_SHARD`);
//! 4. sizes and counts are within [`Limits`] (`TOO_LARGE`, `INVALID_ARGUMENT`),
//!    and values are JSON (`INVALID_ARGUMENT`);
//! 5. reads confirm leadership unless `stale_ok`; writes go through Raft, and a
//!    follower answers `NOT_LEADER` with its leader hint.
//!
//! Writes are re-checked against the range at apply time, in log order.

use std::sync::Arc;
use std::time::Duration;

use cairn_proto::{ApiError, Document, KeyRange, Route, Session};

use super::registry::{Registry, Replica};
use crate::command::{CommandResponse, KvWrite, ShardCommand};
use crate::config::Limits;
use crate::raft::GroupError;
use crate::raft::types::LogId;
use crate::storage::Storage;
use crate::storage::tables::StoredDoc;

/// What a scan asks for within one shard.
#[derive(Clone, Debug, Default)]
pub struct ScanSpec {
    pub start: Vec<u8>,
    pub end: Vec<u8>,
    pub prefix: Option<Vec<u8>>,
    pub limit: u32,
    pub stale_ok: bool,
    pub keys_only: bool,
}

pub struct Kv {
    pub registry: Arc<Registry>,
    pub storage: Arc<Storage>,
    pub limits: Limits,
    pub request_timeout: Duration,
}

fn to_document(key: Vec<u8>, d: StoredDoc) -> Document {
    Document { key, value: d.value, version: d.version, created_at_ms: d.created_at_ms, updated_at_ms: d.updated_at_ms }
}

fn group_error(shard: cairn_proto::ShardId, e: GroupError) -> ApiError {
    match e {
        GroupError::NotLeader(leader) => ApiError::NotLeader { shard, leader },
        GroupError::Unavailable(m) => ApiError::Unavailable(m),
        GroupError::Invalid(m) => ApiError::Internal(m),
    }
}

fn storage_error(e: crate::storage::StorageError) -> ApiError {
    ApiError::Internal(e.to_string())
}

/// The wall clock (a simulation's, in the turmoil test tier).
fn now_ms() -> u64 {
    cairn_proto::sim::now_ms()
}

impl Kv {
    /// Checks 1 and 2.
    fn route(&self, route: &Route) -> Result<Arc<Replica>, ApiError> {
        // Shard 0 holds the placement driver's records, written only by the PD.
        if route.shard == crate::pd::PD_SHARD {
            return Err(ApiError::ShardNotFound { shard: route.shard });
        }
        let replica = self.registry.get(route.shard).ok_or(ApiError::ShardNotFound { shard: route.shard })?;
        let current = replica.descriptor();
        if route.epoch.version != current.epoch.version || route.epoch.conf_ver > current.epoch.conf_ver {
            return Err(ApiError::EpochMismatch { current });
        }
        Ok(replica)
    }

    /// Check 3 and the key part of check 4.
    fn check_key(&self, replica: &Replica, key: &[u8]) -> Result<(), ApiError> {
        if key.is_empty() {
            return Err(ApiError::InvalidArgument("the key is empty".into()));
        }
        if key.len() > self.limits.key_bytes_max {
            return Err(ApiError::TooLarge(format!(
                "key of {} bytes exceeds the limit of {} bytes",
                key.len(),
                self.limits.key_bytes_max
            )));
        }
        let current = replica.descriptor();
        if !current.range.contains(key) {
            return Err(ApiError::KeyNotInShard { current });
        }
        Ok(())
    }

    fn check_value(&self, value: &[u8]) -> Result<(), ApiError> {
        if value.len() > self.limits.value_bytes_max {
            return Err(ApiError::TooLarge(format!(
                "value of {} bytes exceeds the limit of {} bytes",
                value.len(),
                self.limits.value_bytes_max
            )));
        }
        serde_json::from_slice::<serde::de::IgnoredAny>(value)
            .map_err(|e| ApiError::InvalidArgument(format!("the value is not valid JSON: {e}")))?;
        Ok(())
    }

    fn check_request_size(&self, bytes: usize) -> Result<(), ApiError> {
        if bytes > self.limits.request_bytes_max {
            return Err(ApiError::TooLarge(format!(
                "request of {bytes} bytes exceeds the limit of {} bytes",
                self.limits.request_bytes_max
            )));
        }
        Ok(())
    }

    async fn with_deadline<T>(&self, fut: impl Future<Output = Result<T, ApiError>>) -> Result<T, ApiError> {
        match tokio::time::timeout(self.request_timeout, fut).await {
            Ok(r) => r,
            Err(_) => Err(ApiError::DeadlineExceeded(format!(
                "no result within {} ms; a write may still be applied",
                self.request_timeout.as_millis()
            ))),
        }
    }

    /// Confirms leadership and waits for the state machine (unless `stale_ok`);
    /// returns the read's log id, `None` for a stale-ok read.
    async fn read_barrier(&self, replica: &Replica, stale_ok: bool) -> Result<Option<LogId>, ApiError> {
        if stale_ok {
            return Ok(None);
        }
        replica.group.wake();
        replica.group.read_barrier().await.map(Some).map_err(|e| group_error(replica.shard(), e))
    }

    pub async fn get(&self, route: Route, key: Vec<u8>, stale_ok: bool) -> Result<Option<Document>, ApiError> {
        let replica = self.route(&route)?;
        self.check_key(&replica, &key)?;
        self.with_deadline(async {
            self.read_barrier(&replica, stale_ok).await?;
            let doc = self.storage.read_docs(route.shard, |_, r| r.get(&key)).map_err(storage_error)?;
            Ok(doc.map(|d| to_document(key, d)))
        })
        .await
    }

    pub async fn batch_get(
        &self,
        route: Route,
        keys: Vec<Vec<u8>>,
        stale_ok: bool,
    ) -> Result<Vec<Option<Document>>, ApiError> {
        let replica = self.route(&route)?;
        if keys.len() > self.limits.batch_items_max {
            return Err(ApiError::InvalidArgument(format!(
                "{} keys exceed the batch limit of {}",
                keys.len(),
                self.limits.batch_items_max
            )));
        }
        for k in &keys {
            self.check_key(&replica, k)?;
        }
        self.with_deadline(async {
            self.read_barrier(&replica, stale_ok).await?;
            let storage = self.storage.clone();
            let shard = route.shard;
            cairn_proto::sim::unblock(move || {
                storage.read_docs(shard, |_, r| {
                    keys.into_iter().map(|k| Ok(r.get(&k)?.map(|d| to_document(k, d)))).collect::<Result<Vec<_>, _>>()
                })
            })
            .await
            .ok_or_else(|| ApiError::Internal("a document read panicked".into()))?
            .map_err(storage_error)
        })
        .await
    }

    pub async fn scan(&self, route: Route, spec: ScanSpec) -> Result<(Vec<Document>, Option<Vec<u8>>), ApiError> {
        let replica = self.route(&route)?;
        if spec.limit > self.limits.scan_limit_max {
            return Err(ApiError::InvalidArgument(format!(
                "scan limit {} exceeds the maximum of {}",
                spec.limit, self.limits.scan_limit_max
            )));
        }
        let limit = if spec.limit == 0 { self.limits.scan_limit_default } else { spec.limit } as usize;
        let wanted = match &spec.prefix {
            Some(p) => KeyRange::prefix(p),
            None => KeyRange { start: spec.start.clone(), end: spec.end.clone() },
        };
        if !wanted.end.is_empty() && wanted.start > wanted.end {
            return Err(ApiError::InvalidArgument("scan start is after its end".into()));
        }
        let current = replica.descriptor();
        let Some(range) = current.range.intersect(&wanted) else {
            return Err(ApiError::KeyNotInShard { current });
        };
        let keys_only = spec.keys_only;
        self.with_deadline(async {
            let read_log_id = self.read_barrier(&replica, spec.stale_ok).await?;
            let storage = self.storage.clone();
            let shard = route.shard;
            let start = range.start.clone();
            let (docs, next) =
                cairn_proto::sim::unblock(move || storage.read_docs(shard, |_, r| r.scan(&range, limit)))
                    .await
                    .ok_or_else(|| ApiError::Internal("a scan panicked".into()))?
                    .map_err(storage_error)?;
            // Who served which state: what the chaos runs' scan checkers are
            // matched against when they find a stale or missing key.
            tracing::debug!(
                target: "cairn::reads",
                %shard,
                read_log_id = ?read_log_id,
                status = ?replica.group.status(),
                start = %String::from_utf8_lossy(&start),
                docs = docs.len(),
                max_version = docs.iter().map(|(_, d)| d.version).max().unwrap_or(0),
                "scan served"
            );
            let docs = docs
                .into_iter()
                .map(|(k, mut d)| {
                    if keys_only {
                        d.value.clear();
                    }
                    to_document(k, d)
                })
                .collect();
            Ok((docs, next))
        })
        .await
    }

    async fn propose(
        &self,
        replica: &Replica,
        route: &Route,
        session: Session,
        op: KvWrite,
    ) -> Result<CommandResponse, ApiError> {
        replica.group.wake();
        let cmd = ShardCommand { session, ts_ms: now_ms(), range_version: route.epoch.version, op };
        let response = self
            .with_deadline(async { replica.group.write(cmd).await.map_err(|e| group_error(replica.shard(), e)) })
            .await?;
        match response {
            CommandResponse::ConditionFailed { current_version } => Err(ApiError::ConditionFailed { current_version }),
            CommandResponse::EpochMismatch => Err(ApiError::EpochMismatch { current: replica.descriptor() }),
            CommandResponse::KeyNotInShard => Err(ApiError::KeyNotInShard { current: replica.descriptor() }),
            other => Ok(other),
        }
    }

    pub async fn put(
        &self,
        route: Route,
        session: Session,
        key: Vec<u8>,
        value: Vec<u8>,
        expected_version: Option<u64>,
    ) -> Result<u64, ApiError> {
        let replica = self.route(&route)?;
        self.check_key(&replica, &key)?;
        self.check_value(&value)?;
        self.check_request_size(key.len() + value.len())?;
        match self.propose(&replica, &route, session, KvWrite::Put { key, value, expected_version }).await? {
            CommandResponse::Put { version } => Ok(version),
            other => Err(ApiError::Internal(format!("unexpected response to put: {other:?}"))),
        }
    }

    pub async fn delete(
        &self,
        route: Route,
        session: Session,
        key: Vec<u8>,
        expected_version: Option<u64>,
    ) -> Result<(bool, u64), ApiError> {
        let replica = self.route(&route)?;
        self.check_key(&replica, &key)?;
        match self.propose(&replica, &route, session, KvWrite::Delete { key, expected_version }).await? {
            CommandResponse::Delete { deleted, version } => Ok((deleted, version)),
            other => Err(ApiError::Internal(format!("unexpected response to delete: {other:?}"))),
        }
    }

    pub async fn batch_put(
        &self,
        route: Route,
        session: Session,
        items: Vec<(Vec<u8>, Vec<u8>)>,
    ) -> Result<u64, ApiError> {
        let replica = self.route(&route)?;
        if items.is_empty() {
            return Err(ApiError::InvalidArgument("a batch put needs at least one item".into()));
        }
        if items.len() > self.limits.batch_items_max {
            return Err(ApiError::InvalidArgument(format!(
                "{} items exceed the batch limit of {}",
                items.len(),
                self.limits.batch_items_max
            )));
        }
        let mut total = 0;
        for (k, v) in &items {
            self.check_key(&replica, k)?;
            self.check_value(v)?;
            total += k.len() + v.len();
        }
        self.check_request_size(total)?;
        match self.propose(&replica, &route, session, KvWrite::BatchPut { items }).await? {
            CommandResponse::BatchPut { version } => Ok(version),
            other => Err(ApiError::Internal(format!("unexpected response to batch put: {other:?}"))),
        }
    }
}
