//! [`DirectClient`]: a cluster client that needs no placement driver. It learns the shard
//! list from the nodes themselves (`Admin.ListShards`, starting at a seed node) and routes
//! every request by that cached list.
//!
//! How one operation proceeds: find the cached shard containing the key (refreshing the
//! list if none does), send to its known leader (else to its replicas in turn), and on
//! failure let [`retry_action`] decide: follow a leader hint at once, back off and retry
//! on transient errors, or refresh the shard list on a stale route.
//!
//! Invariants:
//! - Every operation is bounded by `max_attempts` RPC attempts and by `operation_timeout`
//!   in total; each RPC's deadline is the smaller of `request_timeout` and what remains.
//! - A write takes one session sequence number before its first attempt and keeps it for
//!   every retry, so a retry of an applied write is deduplicated by the server, never
//!   applied twice. A write that finally fails with `Unavailable`/`DeadlineExceeded` may
//!   still have been applied.
//! - The cached shard list is only a hint: the server checks the route of every request,
//!   so a stale cache costs retries, never a wrong answer.
//! - No lock is held across an await, except the refresh lock, which only serialises
//!   refreshes.

use std::collections::{HashMap, HashSet, VecDeque};
use std::future::Future;
use std::sync::{Mutex, PoisonError, RwLock};

use cairn_proto::{ApiError, Document, KeyRange, Route, ShardStatus, display_key};
use tokio::time::Instant;
use tracing::debug;

use crate::config::{ClientConfig, SCAN_PAGE_DOCS_MAX};
use crate::node_client::NodeClient;
use crate::retry::{RetryAction, backoff_delay, retry_action};
use crate::routing;
use crate::session::SessionTracker;

/// The most node connections one client keeps; beyond it the pool starts over. A cluster
/// has far fewer nodes, so this only bounds garbage from bad leader hints.
const NODE_CLIENTS_MAX: usize = 256;

/// A client of a whole cluster that routes by the shard list its nodes report.
///
/// Share it between tasks behind an `Arc`; all methods take `&self`.
#[derive(Debug)]
pub struct DirectClient {
    seed: String,
    config: ClientConfig,
    sessions: SessionTracker,
    nodes: Mutex<HashMap<String, NodeClient>>,
    shards: RwLock<Vec<ShardStatus>>,
    refresh_lock: tokio::sync::Mutex<()>,
}

impl DirectClient {
    /// A client that learns the cluster from the node at `seed` (`host:port`). Nothing is
    /// contacted until the first operation. Fails with `InvalidArgument` on a bad config.
    pub fn new(seed: impl Into<String>, config: ClientConfig) -> Result<Self, ApiError> {
        config.validate()?;
        Ok(Self {
            seed: seed.into(),
            config,
            sessions: SessionTracker::random(),
            nodes: Mutex::new(HashMap::new()),
            shards: RwLock::new(Vec::new()),
            refresh_lock: tokio::sync::Mutex::new(()),
        })
    }

    /// The seed node's address.
    pub fn seed(&self) -> &str {
        &self.seed
    }

    /// This client's session id (random, non-zero).
    pub fn client_id(&self) -> u64 {
        self.sessions.client_id()
    }

    /// The configuration in use.
    pub fn config(&self) -> &ClientConfig {
        &self.config
    }

    /// The cached shard list, sorted by range start; fetched first if the cache is empty.
    /// Each entry is the most trusted report of that shard (its leader's, when the leader
    /// was asked), so `role` and `applied_index` are those of the reporting replica.
    pub async fn shards(&self) -> Result<Vec<ShardStatus>, ApiError> {
        let cached = self.cached();
        if !cached.is_empty() {
            return Ok(cached);
        }
        self.refresh().await
    }

    /// Fetches the shard list again: asks the seed (then the other known nodes if the seed
    /// is down or does not host every shard) and replaces the cache.
    pub async fn refresh(&self) -> Result<Vec<ShardStatus>, ApiError> {
        self.refresh_until(Instant::now() + self.config.operation_timeout).await
    }

    /// The document at `key`, read linearizably from the shard's leader; `None` if absent.
    pub async fn get(&self, key: &[u8]) -> Result<Option<Document>, ApiError> {
        self.with_routing("get", key, |node, status| {
            let route = route_of(status);
            let key = key.to_vec();
            async move { node.get(route, &key, false).await }
        })
        .await
    }

    /// Stores the JSON text `value` at `key` and returns its new version. With
    /// `expected_version`, the write happens only if the document is at that version
    /// (`Some(0)`: only if it does not exist), else `ConditionFailed`.
    pub async fn put(&self, key: &[u8], value: &[u8], expected_version: Option<u64>) -> Result<u64, ApiError> {
        let ticket = self.sessions.begin();
        self.with_routing("put", key, |node, status| {
            let route = route_of(status);
            let session = ticket.session();
            let (key, value) = (key.to_vec(), value.to_vec());
            async move { node.put(route, session, &key, &value, expected_version).await }
        })
        .await
    }

    /// Deletes `key`; returns whether a document existed and the log index of the delete.
    /// `expected_version` works as in [`DirectClient::put`].
    pub async fn delete(&self, key: &[u8], expected_version: Option<u64>) -> Result<(bool, u64), ApiError> {
        let ticket = self.sessions.begin();
        self.with_routing("delete", key, |node, status| {
            let route = route_of(status);
            let session = ticket.session();
            let key = key.to_vec();
            async move { node.delete(route, session, &key, expected_version).await }
        })
        .await
    }

    /// Up to `limit` documents whose keys start with `prefix`, in key order.
    pub async fn scan_prefix(&self, prefix: &[u8], limit: usize) -> Result<Vec<Document>, ApiError> {
        let range = KeyRange::prefix(prefix);
        self.scan_range(&range.start, &range.end, limit).await
    }

    /// Up to `limit` documents with keys in `[start, end)` (an empty `end` means no upper
    /// bound), in key order. Walks the shards overlapping the range in key order, one page
    /// of at most [`SCAN_PAGE_DOCS_MAX`] documents at a time. Each page is linearizable on
    /// its own; the scan as a whole is not a snapshot.
    pub async fn scan_range(&self, start: &[u8], end: &[u8], limit: usize) -> Result<Vec<Document>, ApiError> {
        let mut out: Vec<Document> = Vec::new();
        let mut cursor = start.to_vec();
        while out.len() < limit {
            if !end.is_empty() && cursor.as_slice() >= end {
                break;
            }
            let want = u32::try_from(limit - out.len()).unwrap_or(u32::MAX).min(SCAN_PAGE_DOCS_MAX);
            let (docs, continue_from, shard_end) = self
                .with_routing("scan", &cursor, |node, status| {
                    let route = route_of(status);
                    let window = routing::scan_window(&cursor, end, &status.descriptor.range);
                    let shard_end = status.descriptor.range.end.clone();
                    async move {
                        let (docs, continue_from) = node.scan(route, window, want, false, false).await?;
                        Ok((docs, continue_from, shard_end))
                    }
                })
                .await?;
            out.extend(docs);
            match routing::next_scan_cursor(&cursor, continue_from, &shard_end, end)? {
                Some(next) => cursor = next,
                None => break,
            }
        }
        out.truncate(limit);
        Ok(out)
    }

    /// Runs one logical operation on the shard holding `key`, retrying as [`retry_action`]
    /// decides. `call` makes one attempt against a node, given the shard status it was
    /// routed by; it is called again for every attempt.
    async fn with_routing<T, F, Fut>(&self, op: &'static str, key: &[u8], mut call: F) -> Result<T, ApiError>
    where
        F: FnMut(NodeClient, &ShardStatus) -> Fut,
        Fut: Future<Output = Result<T, ApiError>>,
    {
        let deadline = Instant::now() + self.config.operation_timeout;
        let mut last_err: Option<ApiError> = None;
        // Addresses that failed as unreachable during this operation: a hint
        // naming one of them comes from a replica that has not yet noticed its
        // leader died, and following it would only burn attempts.
        let mut unreachable: Vec<String> = Vec::new();
        // Nodes that redirected us since the last backoff.
        let mut redirected_by: Vec<String> = Vec::new();
        for attempt in 0..self.config.max_attempts {
            let Some(remaining) = deadline.checked_duration_since(Instant::now()).filter(|d| !d.is_zero()) else {
                break;
            };
            let status = match self.route(key, deadline).await {
                Ok(status) => status,
                // For example a seed address that is not an address.
                Err(err) if !err.is_retryable() => return Err(err),
                Err(err) => {
                    debug!(op, key = %display_key(key), attempt, error = %err, "no route, backing off");
                    last_err = Some(err);
                    self.backoff(attempt, deadline).await;
                    continue;
                }
            };
            let shard = status.descriptor.id;
            let addr = routing::target_addr(&status, attempt, &self.seed);
            let node = match self.node(&addr) {
                Ok(node) => node.with_request_timeout(remaining.min(self.config.request_timeout)),
                // The seed's address came from the user: a bad one will not get better.
                Err(err) if addr == self.seed => return Err(err),
                Err(err) => {
                    debug!(op, %shard, %addr, error = %err, "unusable node address, forgetting the leader");
                    self.update_cache(|shards| routing::forget_leader(shards, shard));
                    last_err = Some(err);
                    continue;
                }
            };
            let err = match call(node, &status).await {
                Ok(value) => return Ok(value),
                Err(err) => err,
            };
            let action = retry_action(&err);
            debug!(op, key = %display_key(key), %shard, %addr, attempt, error = %err, ?action, "attempt failed");
            match action {
                RetryAction::Fail => return Err(err),
                RetryAction::Redirect { addr: ref leader_addr, .. } if unreachable.contains(leader_addr) => {
                    self.update_cache(|shards| routing::forget_leader(shards, shard));
                    self.backoff(attempt, deadline).await;
                }
                RetryAction::Redirect { leader, addr: leader_addr } => {
                    // A node naming itself as leader while refusing to lead is stale, and
                    // during a transfer the old and new leader can name each other for a
                    // moment; going straight back would only spin.
                    let spinning = leader_addr == addr || redirected_by.contains(&leader_addr);
                    redirected_by.push(addr.clone());
                    self.update_cache(|shards| routing::note_leader(shards, shard, leader, &leader_addr));
                    if spinning {
                        redirected_by.clear();
                        self.backoff(attempt, deadline).await;
                    }
                }
                RetryAction::Backoff => {
                    if matches!(err, ApiError::Unavailable(_)) && !unreachable.contains(&addr) {
                        unreachable.push(addr.clone());
                    }
                    self.update_cache(|shards| routing::forget_leader(shards, shard));
                    self.backoff(attempt, deadline).await;
                }
                RetryAction::Refresh => {
                    if let ApiError::EpochMismatch { current } | ApiError::KeyNotInShard { current } = &err {
                        self.update_cache(|shards| {
                            routing::apply_descriptor(shards, current);
                        });
                    }
                    let refreshed = self.refresh_until(deadline).await;
                    // Wait before the next attempt unless the refresh produced a different
                    // route: a split or move in progress needs time to settle.
                    let moved = refreshed.as_ref().is_ok_and(|shards| {
                        routing::shard_for_key(shards, key).is_some_and(|s| route_of(s) != route_of(&status))
                    });
                    if let Err(refresh_err) = &refreshed {
                        debug!(op, error = %refresh_err, "shard list refresh failed");
                    }
                    if !moved {
                        self.backoff(attempt, deadline).await;
                    }
                }
            }
            last_err = Some(err);
        }
        Err(last_err.unwrap_or_else(|| {
            ApiError::DeadlineExceeded(format!("{op}: no attempt fit in {:?}", self.config.operation_timeout))
        }))
    }

    /// The cached shard holding `key`, refreshing the cache once if no shard does.
    async fn route(&self, key: &[u8], deadline: Instant) -> Result<ShardStatus, ApiError> {
        if let Some(status) = routing::shard_for_key(&self.cached(), key) {
            return Ok(status.clone());
        }
        let shards = self.refresh_until(deadline).await?;
        routing::shard_for_key(&shards, key)
            .cloned()
            .ok_or_else(|| ApiError::Unavailable(format!("no known shard holds key {}", display_key(key))))
    }

    /// Fetches shard lists until they cover the key space or `refresh_nodes_max` nodes
    /// were asked: the seed first, then every node the cache and the answers mention.
    async fn refresh_until(&self, deadline: Instant) -> Result<Vec<ShardStatus>, ApiError> {
        let _serialised = self.refresh_lock.lock().await;
        let old = self.cached();
        let mut queue: VecDeque<String> = VecDeque::from([self.seed.clone()]);
        queue.extend(routing::known_addrs(&old));
        let mut asked: HashSet<String> = HashSet::new();
        let mut reports: Vec<ShardStatus> = Vec::new();
        let mut answered = 0usize;
        let mut last_err: Option<ApiError> = None;
        while let Some(addr) = queue.pop_front() {
            if asked.len() >= self.config.refresh_nodes_max {
                break;
            }
            if !asked.insert(addr.clone()) {
                continue;
            }
            let Some(remaining) = deadline.checked_duration_since(Instant::now()).filter(|d| !d.is_zero()) else {
                break;
            };
            let node = match self.node(&addr) {
                Ok(node) => node.with_request_timeout(remaining.min(self.config.request_timeout)),
                Err(err) => {
                    last_err = Some(err);
                    continue;
                }
            };
            match node.list_shards().await {
                Ok((node_id, statuses)) => {
                    debug!(%addr, %node_id, shards = statuses.len(), "fetched shard list");
                    answered += 1;
                    queue.extend(routing::known_addrs(&statuses));
                    reports.extend(statuses);
                    if routing::covers_key_space(&routing::merge_statuses(reports.clone())) {
                        break;
                    }
                }
                Err(err) => {
                    debug!(%addr, error = %err, "node did not list its shards");
                    last_err = Some(err);
                }
            }
        }
        if answered == 0 {
            return Err(last_err.unwrap_or_else(|| ApiError::Unavailable("no node could be asked for shards".into())));
        }
        let mut merged = routing::merge_statuses(reports.iter().cloned());
        if !routing::covers_key_space(&merged) {
            // Keep what the cache knew about the ranges nobody reported this time; fresh
            // reports come first, so they win every tie.
            merged = routing::merge_statuses(reports.into_iter().chain(old));
        }
        *self.shards.write().unwrap_or_else(PoisonError::into_inner) = merged.clone();
        Ok(merged)
    }

    fn cached(&self) -> Vec<ShardStatus> {
        self.shards.read().unwrap_or_else(PoisonError::into_inner).clone()
    }

    fn update_cache(&self, f: impl FnOnce(&mut [ShardStatus])) {
        f(&mut self.shards.write().unwrap_or_else(PoisonError::into_inner));
    }

    /// The pooled client of the node at `addr`.
    fn node(&self, addr: &str) -> Result<NodeClient, ApiError> {
        let mut nodes = self.nodes.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(node) = nodes.get(addr) {
            return Ok(node.clone());
        }
        let node = NodeClient::new(addr, &self.config)?;
        if nodes.len() >= NODE_CLIENTS_MAX {
            nodes.clear();
        }
        nodes.insert(addr.to_string(), node.clone());
        Ok(node)
    }

    /// Sleeps the backoff delay of `attempt`, but not past `deadline`.
    async fn backoff(&self, attempt: u32, deadline: Instant) {
        let delay =
            backoff_delay(attempt, self.config.backoff_base, self.config.backoff_cap, &mut cairn_proto::sim::rng());
        let until = (Instant::now() + delay).min(deadline);
        tokio::time::sleep_until(until).await;
    }
}

/// The route a request to this shard carries.
fn route_of(status: &ShardStatus) -> Route {
    Route { shard: status.descriptor.id, epoch: status.descriptor.epoch }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[tokio::test]
    async fn gives_up_within_the_operation_timeout_when_no_node_answers() {
        let config = ClientConfig {
            operation_timeout: Duration::from_millis(400),
            backoff_base: Duration::from_millis(10),
            backoff_cap: Duration::from_millis(50),
            ..Default::default()
        };
        let client = DirectClient::new("127.0.0.1:1", config).expect("valid config");
        let started = std::time::Instant::now();
        let err = client.get(b"k").await.unwrap_err();
        assert!(err.is_retryable(), "{err:?}");
        assert!(started.elapsed() < Duration::from_secs(3), "took {:?}", started.elapsed());
    }

    #[tokio::test]
    async fn a_bad_seed_address_fails_at_once() {
        let client = DirectClient::new("not an address", ClientConfig::default()).expect("valid config");
        let started = std::time::Instant::now();
        let err = client.get(b"k").await.unwrap_err();
        assert!(matches!(err, ApiError::InvalidArgument(_)), "{err:?}");
        assert!(started.elapsed() < Duration::from_millis(500), "took {:?}", started.elapsed());
    }

    #[tokio::test]
    async fn rejects_an_invalid_config() {
        let config = ClientConfig { max_attempts: 0, ..Default::default() };
        assert!(matches!(DirectClient::new("127.0.0.1:1", config), Err(ApiError::InvalidArgument(_))));
    }
}
