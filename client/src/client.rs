//! [`Client`]: the client of a Cairn cluster that routes by the placement driver's shard
//! map.
//!
//! How it works: [`Client::connect`] loads the whole shard map from the PD (`ListShards`)
//! and starts a background task ([`crate::watch`]) that follows `WatchShards` and applies
//! every change to the cached [`ShardMap`]. An operation finds the cached shard of its key
//! (asking the PD with `Locate` when none is cached), sends the request to the shard's
//! leader (else to a voter), and after a failure lets [`plan_retry`] decide: follow a
//! leader hint, install the descriptor a node returned and ask the PD again, try another
//! replica, back off.
//!
//! Invariants:
//! - Every operation is bounded by `max_attempts` attempts and by `operation_timeout` in
//!   total (both from [`ClientConfig`], adjustable per clone); each RPC, to a node or to
//!   the PD, gets the smaller of `request_timeout` and what remains. Backoff is
//!   exponential with jitter ([`crate::retry::backoff_delay`]).
//! - A logical write takes one session sequence number before its first attempt and keeps
//!   it for every retry, so the server applies it at most once. A write that ends in
//!   `Unavailable`/`DeadlineExceeded` may still have been applied.
//! - The map is only a hint: nodes check the route of every request, so a stale map costs
//!   retries, never a wrong answer.
//! - The map's lock is held only for short, pure [`ShardMap`] calls, never across an
//!   await. (One `RwLock` rather than a task owning the map: every operation reads it, and
//!   a channel round trip per read would cost more than it protects.)
//! - Fan-out is bounded: at most [`BATCH_SHARDS_IN_FLIGHT_MAX`] requests of one batch at
//!   a time, one scan page in memory per stream, at most [`NODE_CLIENTS_MAX`] pooled
//!   node connections.
//! - The watch task stops when the last clone of the client is dropped (a drop guard
//!   cancels it) or on [`Client::shutdown`].

use std::collections::{HashMap, VecDeque};
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex, PoisonError, RwLock};
use std::time::Duration;

use cairn_proto::{ApiError, Document, KeyRange, Route, ShardRoute, display_key};
use futures::stream::{self, FuturesUnordered, Stream, StreamExt};
use serde::Serialize;
use serde::de::DeserializeOwned;
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tokio_util::sync::{CancellationToken, DropGuard};
use tracing::debug;

use crate::config::{ClientConfig, SCAN_PAGE_DOCS_MAX};
use crate::error::{self, Error};
use crate::node_client::NodeClient;
use crate::pd_client::PdClient;
use crate::retry::{LeaderUpdate, RetryDecision, Wait, backoff_delay, plan_retry};
use crate::routing;
use crate::session::SessionTracker;
use crate::shard_map::ShardMap;
use crate::watch;

/// The most node connections one client keeps; beyond it the pool starts over. A cluster
/// has far fewer nodes, so this only bounds garbage from bad hints.
pub const NODE_CLIENTS_MAX: usize = 256;

/// The most shards one `ListShards` call to the PD returns; larger maps are paged.
pub const SHARD_LIST_PAGE_MAX: u32 = 1024;

/// The most requests of one batch (`batch_get`, `batch_put`) in flight at once.
pub const BATCH_SHARDS_IN_FLIGHT_MAX: usize = 16;

/// The most keys one `BatchGet` request carries; larger parts are split (reads need no
/// atomicity). Keeps each response well under the message limit for small documents.
pub const BATCH_GET_KEYS_PER_REQUEST_MAX: usize = 256;

/// The scan page size when [`ScanOptions::page_docs`] is not set.
pub const SCAN_PAGE_DOCS_DEFAULT: u32 = 1000;

/// A stream of documents in key order, as [`Client::scan`] returns it. It ends after the
/// last document, or after yielding one error.
pub type DocumentStream = Pin<Box<dyn Stream<Item = Result<Document, Error>> + Send>>;

/// A deserialized document and its version (for compare-and-set loops).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Versioned<T> {
    pub value: T,
    /// The version to pass to `put_if_version`/`put_json_if_version`.
    pub version: u64,
}

/// Options of [`Client::scan_with`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ScanOptions {
    /// The most documents the stream yields (`None`: all of the range).
    pub limit: Option<usize>,
    /// Documents per request, 1 to [`SCAN_PAGE_DOCS_MAX`] (clamped). Default
    /// [`SCAN_PAGE_DOCS_DEFAULT`].
    pub page_docs: u32,
}

impl Default for ScanOptions {
    fn default() -> Self {
        Self { limit: None, page_docs: SCAN_PAGE_DOCS_DEFAULT }
    }
}

/// Placement-driver endpoints for [`Client::connect`]: one comma-separated string
/// (`"10.0.0.1:7700,10.0.0.2:7700"`), or a `Vec`, array or slice of addresses (each may
/// itself be comma-separated). Collect any other iterator into a `Vec` first.
pub trait PdEndpoints {
    /// The addresses, trimmed, without empty entries.
    fn into_endpoints(self) -> Vec<String>;
}

fn split_endpoints<S: AsRef<str>>(items: impl IntoIterator<Item = S>) -> Vec<String> {
    items
        .into_iter()
        .flat_map(|item| {
            item.as_ref().split(',').map(str::trim).filter(|a| !a.is_empty()).map(String::from).collect::<Vec<_>>()
        })
        .collect()
}

impl PdEndpoints for &str {
    fn into_endpoints(self) -> Vec<String> {
        split_endpoints([self])
    }
}

impl PdEndpoints for String {
    fn into_endpoints(self) -> Vec<String> {
        split_endpoints([self])
    }
}

impl PdEndpoints for &String {
    fn into_endpoints(self) -> Vec<String> {
        split_endpoints([self])
    }
}

impl<S: AsRef<str>> PdEndpoints for Vec<S> {
    fn into_endpoints(self) -> Vec<String> {
        split_endpoints(self)
    }
}

impl<S: AsRef<str>> PdEndpoints for &Vec<S> {
    fn into_endpoints(self) -> Vec<String> {
        split_endpoints(self.iter())
    }
}

impl<S: AsRef<str>> PdEndpoints for &[S] {
    fn into_endpoints(self) -> Vec<String> {
        split_endpoints(self.iter())
    }
}

impl<S: AsRef<str>, const N: usize> PdEndpoints for [S; N] {
    fn into_endpoints(self) -> Vec<String> {
        split_endpoints(self)
    }
}

impl<S: AsRef<str>, const N: usize> PdEndpoints for &[S; N] {
    fn into_endpoints(self) -> Vec<String> {
        split_endpoints(self.iter())
    }
}

/// State shared by all clones of a [`Client`].
struct Inner {
    pd: PdClient,
    config: ClientConfig,
    map: Arc<RwLock<ShardMap>>,
    sessions: SessionTracker,
    nodes: Mutex<HashMap<String, NodeClient>>,
    cancel: CancellationToken,
    watch: Mutex<Option<JoinHandle<()>>>,
    /// Cancels the watch task when the last clone of the client is dropped.
    _stop_watch: DropGuard,
}

/// A client of a Cairn cluster, routed by the placement driver (PD).
///
/// Cheap to clone; clones share the shard map, the connections and the session, and the
/// background watch of the shard map stops when the last clone is dropped. Keys are any
/// bytes (`&str`, `String`, `Vec<u8>`, ...); values are JSON text, stored exactly as given.
///
/// ```no_run
/// # async fn demo() -> Result<(), cairn_client::Error> {
/// use cairn_client::Client;
///
/// let client = Client::connect("127.0.0.1:7700").await?;
/// let version = client.put("user:1", r#"{"name":"Ada"}"#).await?;
/// let doc = client.get("user:1").await?.expect("just written");
/// assert_eq!(doc.version, version);
/// assert!(client.delete("user:1").await?);
/// # Ok(())
/// # }
/// ```
#[derive(Clone)]
pub struct Client {
    inner: Arc<Inner>,
    operation_timeout: Duration,
    max_attempts: u32,
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Client")
            .field("pd", &self.inner.pd.endpoints())
            .field("client_id", &self.client_id())
            .field("shard_map_revision", &self.shard_map_revision())
            .field("operation_timeout", &self.operation_timeout)
            .field("max_attempts", &self.max_attempts)
            .finish_non_exhaustive()
    }
}

/// The outcome of a routed attempt loop over keys that must lie in one shard.
enum Routed<T> {
    Done(T),
    /// The keys no longer lie in one cached shard: group them again. `attempt` is the
    /// number of attempts spent so far.
    Regroup {
        attempt: u32,
    },
}

/// Keys of a batch that one request serves: positions into the batch, sorted by key.
struct Part {
    positions: Vec<usize>,
    attempt: u32,
}

enum PartOutcome<R> {
    Done(Vec<usize>, R),
    Regroup(Part),
}

impl Client {
    /// Connects to the PD at `endpoints` with the default [`ClientConfig`], loads the
    /// shard map and starts following its changes. Must be called inside a tokio runtime.
    ///
    /// ```no_run
    /// # async fn demo() -> Result<(), cairn_client::Error> {
    /// let client = cairn_client::Client::connect("10.0.0.1:7700,10.0.0.2:7700").await?;
    /// let same = cairn_client::Client::connect(vec!["10.0.0.1:7700", "10.0.0.2:7700"]).await?;
    /// # Ok(())
    /// # }
    /// ```
    pub async fn connect(endpoints: impl PdEndpoints) -> Result<Client, Error> {
        Self::connect_with(endpoints, ClientConfig::default()).await
    }

    /// As [`Client::connect`], with `config` for timeouts, attempts and backoff (also used
    /// for the PD). Fails with `InvalidArgument` on a bad config or address, and with
    /// `Unavailable`/`DeadlineExceeded` if no PD member answers.
    ///
    /// ```no_run
    /// # async fn demo() -> Result<(), cairn_client::Error> {
    /// use std::time::Duration;
    /// use cairn_client::{Client, ClientConfig};
    ///
    /// let config = ClientConfig { operation_timeout: Duration::from_secs(5), max_attempts: 10, ..Default::default() };
    /// let client = Client::connect_with("127.0.0.1:7700", config).await?;
    /// # Ok(())
    /// # }
    /// ```
    pub async fn connect_with(endpoints: impl PdEndpoints, config: ClientConfig) -> Result<Client, Error> {
        config.validate()?;
        let pd = PdClient::new(endpoints.into_endpoints(), config.clone())?;
        let (routes, revision) = list_all_shards(&pd).await?;
        debug!(shards = routes.len(), revision, pd = ?pd.endpoints(), "loaded the shard map");
        let mut map = ShardMap::new();
        map.replace(routes, revision);
        let map = Arc::new(RwLock::new(map));
        let cancel = CancellationToken::new();
        let task = watch::spawn(pd.clone(), map.clone(), &config, cancel.clone());
        let inner = Inner {
            pd,
            map,
            sessions: SessionTracker::random(),
            nodes: Mutex::new(HashMap::new()),
            watch: Mutex::new(Some(task)),
            _stop_watch: cancel.clone().drop_guard(),
            cancel,
            config: config.clone(),
        };
        Ok(Client {
            inner: Arc::new(inner),
            operation_timeout: config.operation_timeout,
            max_attempts: config.max_attempts,
        })
    }

    /// A clone whose operations have another deadline (a zero timeout fails every
    /// operation with `DeadlineExceeded`).
    pub fn with_operation_timeout(&self, timeout: Duration) -> Client {
        Client { operation_timeout: timeout, ..self.clone() }
    }

    /// A clone whose operations make at most `attempts` attempts (at least 1).
    pub fn with_max_attempts(&self, attempts: u32) -> Client {
        Client { max_attempts: attempts.max(1), ..self.clone() }
    }

    /// The configuration the client was created with.
    pub fn config(&self) -> &ClientConfig {
        &self.inner.config
    }

    /// This client's session id (random, non-zero), shared by its clones.
    pub fn client_id(&self) -> u64 {
        self.inner.sessions.client_id()
    }

    /// The placement-driver client, for cluster-level calls such as [`PdClient::cluster`].
    pub fn pd(&self) -> &PdClient {
        &self.inner.pd
    }

    /// The PD revision up to which the cached shard map reflects every change.
    pub fn shard_map_revision(&self) -> u64 {
        self.read_map(ShardMap::revision)
    }

    /// The cached shard map, in key order.
    pub fn cached_shards(&self) -> Vec<ShardRoute> {
        self.read_map(ShardMap::routes)
    }

    /// Loads the whole shard map from the PD again and replaces the cache; returns the
    /// revision loaded. Never needed for correctness: the watch and the routing errors
    /// keep the cache fresh.
    pub async fn refresh_shard_map(&self) -> Result<u64, Error> {
        let (routes, revision) = list_all_shards(&self.inner.pd).await?;
        self.write_map(|m| m.replace(routes, revision));
        Ok(revision)
    }

    /// Stops following the shard map and waits for the watch task to end. Operations
    /// keep working on every clone (routes are then learned from the PD on demand).
    /// Dropping the last clone stops the watch too, without waiting.
    pub async fn shutdown(&self) {
        self.inner.cancel.cancel();
        let task = self.inner.watch.lock().unwrap_or_else(PoisonError::into_inner).take();
        if let Some(task) = task
            && let Err(err) = task.await
            && err.is_panic()
        {
            tracing::error!(error = %err, "the shard-map watch task panicked");
        }
    }

    // ------------------------------------------------------------------ documents

    /// The document at `key`, read linearizably from its shard's leader; `None` if absent.
    ///
    /// ```no_run
    /// # async fn demo(client: cairn_client::Client) -> Result<(), cairn_client::Error> {
    /// if let Some(doc) = client.get("user:1").await? {
    ///     println!("{} at version {}", String::from_utf8_lossy(&doc.value), doc.version);
    /// }
    /// # Ok(())
    /// # }
    /// ```
    pub async fn get(&self, key: impl AsRef<[u8]>) -> Result<Option<Document>, Error> {
        let key = key.as_ref();
        self.single("get", key, |node, route| {
            let route = route_of(route);
            let key = key.to_vec();
            async move { node.get(route, &key, false).await }
        })
        .await
    }

    /// Stores the JSON text `value` at `key` (created or replaced) and returns its new
    /// version. The server rejects text that is not JSON (`InvalidArgument`) and values
    /// over its limit (`TooLarge`, 1 MiB by default).
    ///
    /// ```no_run
    /// # async fn demo(client: cairn_client::Client) -> Result<(), cairn_client::Error> {
    /// let version = client.put("config:theme", r#"{"dark": true}"#).await?;
    /// # Ok(())
    /// # }
    /// ```
    pub async fn put(&self, key: impl AsRef<[u8]>, value: impl AsRef<[u8]>) -> Result<u64, Error> {
        self.put_raw(key.as_ref(), value.as_ref(), None).await
    }

    /// Stores `value` at `key` only if the document is at `expected_version` (0: only if
    /// it does not exist); otherwise fails with [`Error::ConditionFailed`] carrying the
    /// current version. Returns the new version.
    ///
    /// ```no_run
    /// # async fn demo(client: cairn_client::Client) -> Result<(), cairn_client::Error> {
    /// use cairn_client::Error;
    /// match client.put_if_version("lock:job-7", r#"{"owner":"worker-3"}"#, 0).await {
    ///     Ok(_) => println!("acquired"),
    ///     Err(Error::ConditionFailed { current_version }) => println!("held (version {current_version})"),
    ///     Err(err) => return Err(err),
    /// }
    /// # Ok(())
    /// # }
    /// ```
    pub async fn put_if_version(
        &self,
        key: impl AsRef<[u8]>,
        value: impl AsRef<[u8]>,
        expected_version: u64,
    ) -> Result<u64, Error> {
        self.put_raw(key.as_ref(), value.as_ref(), Some(expected_version)).await
    }

    /// Deletes the document at `key`; returns whether it existed.
    ///
    /// ```no_run
    /// # async fn demo(client: cairn_client::Client) -> Result<(), cairn_client::Error> {
    /// let existed = client.delete("user:1").await?;
    /// # Ok(())
    /// # }
    /// ```
    pub async fn delete(&self, key: impl AsRef<[u8]>) -> Result<bool, Error> {
        Ok(self.delete_raw(key.as_ref(), None).await?.0)
    }

    /// Deletes the document at `key` only if it is at `expected_version`; otherwise fails
    /// with [`Error::ConditionFailed`] (`current_version` 0: it does not exist). Returns
    /// whether it existed.
    ///
    /// ```no_run
    /// # async fn demo(client: cairn_client::Client) -> Result<(), cairn_client::Error> {
    /// if let Some(doc) = client.get("session:9").await? {
    ///     client.delete_if_version("session:9", doc.version).await?;
    /// }
    /// # Ok(())
    /// # }
    /// ```
    pub async fn delete_if_version(&self, key: impl AsRef<[u8]>, expected_version: u64) -> Result<bool, Error> {
        Ok(self.delete_raw(key.as_ref(), Some(expected_version)).await?.0)
    }

    /// The documents with keys in `range` (`[start, end)`, an empty end meaning no upper
    /// bound), in key order, across shards. Pages of [`SCAN_PAGE_DOCS_DEFAULT`] documents
    /// are fetched as the stream is polled; each page is read linearizably from its
    /// shard's leader, the scan as a whole is not a snapshot. Every page is routed afresh
    /// and continues right after the last key returned, so a key is never returned twice
    /// nor skipped when shards split, merge or move during the scan. Each page has its own
    /// deadline and attempts.
    ///
    /// ```no_run
    /// # async fn demo(client: cairn_client::Client) -> Result<(), cairn_client::Error> {
    /// use cairn_client::KeyRange;
    /// use futures::TryStreamExt;
    ///
    /// let docs: Vec<_> = client.scan(KeyRange::new("a", "m")).try_collect().await?;
    /// # Ok(())
    /// # }
    /// ```
    pub fn scan(&self, range: KeyRange) -> DocumentStream {
        self.scan_with(range, ScanOptions::default())
    }

    /// The documents whose keys start with `prefix`, in key order (see [`Client::scan`]).
    ///
    /// ```no_run
    /// # async fn demo(client: cairn_client::Client) -> Result<(), cairn_client::Error> {
    /// use futures::StreamExt;
    ///
    /// let mut users = client.scan_prefix("user:");
    /// while let Some(doc) = users.next().await {
    ///     let doc = doc?;
    ///     println!("{}", String::from_utf8_lossy(&doc.key));
    /// }
    /// # Ok(())
    /// # }
    /// ```
    pub fn scan_prefix(&self, prefix: impl AsRef<[u8]>) -> DocumentStream {
        self.scan(KeyRange::prefix(prefix.as_ref()))
    }

    /// [`Client::scan`] with a limit and a page size.
    ///
    /// ```no_run
    /// # async fn demo(client: cairn_client::Client) -> Result<(), cairn_client::Error> {
    /// use cairn_client::{KeyRange, ScanOptions};
    /// use futures::TryStreamExt;
    ///
    /// let options = ScanOptions { limit: Some(10), page_docs: 10 };
    /// let first_ten: Vec<_> = client.scan_with(KeyRange::full(), options).try_collect().await?;
    /// # Ok(())
    /// # }
    /// ```
    pub fn scan_with(&self, range: KeyRange, options: ScanOptions) -> DocumentStream {
        let state = ScanState {
            client: self.clone(),
            cursor: Some(range.start),
            end: range.end,
            remaining: options.limit,
            page_docs: options.page_docs.clamp(1, SCAN_PAGE_DOCS_MAX),
        };
        let pages = stream::unfold(Some(state), |state| async move {
            let mut state = state?;
            match state.next_page().await {
                Ok(Some(docs)) => Some((Ok(docs), Some(state))),
                Ok(None) => None,
                // The error is the stream's last item.
                Err(err) => Some((Err(err), None)),
            }
        });
        Box::pin(pages.flat_map(|page| match page {
            Ok(docs) => stream::iter(docs.into_iter().map(Ok)).left_stream(),
            Err(err) => stream::once(async move { Err(err) }).right_stream(),
        }))
    }

    /// The documents at `keys`, in the order asked (`None` where absent). Keys are grouped
    /// by shard and the groups read concurrently (at most [`BATCH_SHARDS_IN_FLIGHT_MAX`]
    /// requests at a time, [`BATCH_GET_KEYS_PER_REQUEST_MAX`] keys per request); each
    /// request is linearizable on its own, the batch as a whole is not a snapshot.
    ///
    /// ```no_run
    /// # async fn demo(client: cairn_client::Client) -> Result<(), cairn_client::Error> {
    /// let docs = client.batch_get(["user:1", "user:2", "user:3"]).await?;
    /// let found = docs.iter().filter(|d| d.is_some()).count();
    /// # Ok(())
    /// # }
    /// ```
    pub async fn batch_get<K: AsRef<[u8]>>(
        &self,
        keys: impl IntoIterator<Item = K>,
    ) -> Result<Vec<Option<Document>>, Error> {
        let keys: Vec<Vec<u8>> = keys.into_iter().map(|k| k.as_ref().to_vec()).collect();
        let keys = keys.as_slice();
        let deadline = self.deadline();
        let parts = self
            .fan_out(keys, BATCH_GET_KEYS_PER_REQUEST_MAX, deadline, |part: Part| async move {
                let (first, last) = span(keys, &part.positions);
                let part_keys: Vec<Vec<u8>> = part.positions.iter().map(|&p| keys[p].clone()).collect();
                let routed = self
                    .routed("batch_get", first, last, deadline, part.attempt, |node, route| {
                        let route = route_of(route);
                        let part_keys = part_keys.clone();
                        async move { node.batch_get(route, part_keys, false).await }
                    })
                    .await?;
                Ok(match routed {
                    Routed::Done(docs) => PartOutcome::Done(part.positions, docs),
                    Routed::Regroup { attempt } => PartOutcome::Regroup(Part { positions: part.positions, attempt }),
                })
            })
            .await?;
        let mut out: Vec<Option<Document>> = vec![None; keys.len()];
        for (positions, docs) in parts {
            for (p, doc) in positions.into_iter().zip(docs) {
                out[p] = doc;
            }
        }
        Ok(out)
    }

    /// Stores every `(key, JSON text)` pair and returns each item's new version, in the
    /// order given. Items are grouped by shard and each group is written by one request,
    /// concurrently (at most [`BATCH_SHARDS_IN_FLIGHT_MAX`] at a time).
    ///
    /// Atomicity: the items of one shard are written atomically (all or none), but the
    /// batch as a whole is not: if it fails, some shards' items may have been written and
    /// others not. A shard's group must fit the server's request limits (by default 1000
    /// items and 4 MiB), else the batch fails with `TooLarge`. If a shard splits while its
    /// group is in flight, the group is regrouped and each new group gets a new session
    /// number, so a group whose first attempt's outcome was unknown may then be written a
    /// second time (with the same values).
    ///
    /// ```no_run
    /// # async fn demo(client: cairn_client::Client) -> Result<(), cairn_client::Error> {
    /// let versions = client.batch_put([("user:1", r#"{"n":1}"#), ("user:2", r#"{"n":2}"#)]).await?;
    /// # Ok(())
    /// # }
    /// ```
    pub async fn batch_put<K: AsRef<[u8]>, V: AsRef<[u8]>>(
        &self,
        items: impl IntoIterator<Item = (K, V)>,
    ) -> Result<Vec<u64>, Error> {
        let (keys, values): (Vec<Vec<u8>>, Vec<Vec<u8>>) =
            items.into_iter().map(|(k, v)| (k.as_ref().to_vec(), v.as_ref().to_vec())).unzip();
        let (keys, values) = (keys.as_slice(), values.as_slice());
        let deadline = self.deadline();
        let parts = self
            .fan_out(keys, usize::MAX, deadline, |part: Part| async move {
                let (first, last) = span(keys, &part.positions);
                let items: Vec<(Vec<u8>, Vec<u8>)> =
                    part.positions.iter().map(|&p| (keys[p].clone(), values[p].clone())).collect();
                let ticket = self.inner.sessions.begin();
                let routed = self
                    .routed("batch_put", first, last, deadline, part.attempt, |node, route| {
                        let route = route_of(route);
                        let session = ticket.session();
                        let items = items.clone();
                        async move { node.batch_put(route, session, items).await }
                    })
                    .await?;
                Ok(match routed {
                    Routed::Done(version) => PartOutcome::Done(part.positions, version),
                    Routed::Regroup { attempt } => PartOutcome::Regroup(Part { positions: part.positions, attempt }),
                })
            })
            .await?;
        let mut versions = vec![0; keys.len()];
        for (positions, version) in parts {
            for p in positions {
                versions[p] = version;
            }
        }
        Ok(versions)
    }

    // ------------------------------------------------------------------ typed helpers

    /// Serializes `value` to JSON and stores it at `key`; returns the new version.
    ///
    /// ```no_run
    /// # async fn demo(client: cairn_client::Client) -> Result<(), cairn_client::Error> {
    /// #[derive(serde::Serialize)]
    /// struct User { name: String }
    /// client.put_json("user:1", &User { name: "Ada".into() }).await?;
    /// # Ok(())
    /// # }
    /// ```
    pub async fn put_json<T: Serialize + ?Sized>(&self, key: impl AsRef<[u8]>, value: &T) -> Result<u64, Error> {
        let key = key.as_ref();
        let text = serde_json::to_vec(value).map_err(|e| Error::json(key, e))?;
        self.put_raw(key, &text, None).await
    }

    /// [`Client::put_json`] only if the document is at `expected_version` (0: absent),
    /// else [`Error::ConditionFailed`].
    ///
    /// ```no_run
    /// # async fn demo(client: cairn_client::Client) -> Result<(), cairn_client::Error> {
    /// # #[derive(serde::Serialize, serde::Deserialize)] struct Counter { n: u64 }
    /// // Increment with compare-and-set, retrying on conflicts.
    /// loop {
    ///     let current = client.get_json_versioned::<Counter>("counter").await?;
    ///     let (next, version) = match current {
    ///         Some(c) => (Counter { n: c.value.n + 1 }, c.version),
    ///         None => (Counter { n: 1 }, 0),
    ///     };
    ///     match client.put_json_if_version("counter", &next, version).await {
    ///         Ok(_) => break,
    ///         Err(cairn_client::Error::ConditionFailed { .. }) => continue,
    ///         Err(err) => return Err(err),
    ///     }
    /// }
    /// # Ok(())
    /// # }
    /// ```
    pub async fn put_json_if_version<T: Serialize + ?Sized>(
        &self,
        key: impl AsRef<[u8]>,
        value: &T,
        expected_version: u64,
    ) -> Result<u64, Error> {
        let key = key.as_ref();
        let text = serde_json::to_vec(value).map_err(|e| Error::json(key, e))?;
        self.put_raw(key, &text, Some(expected_version)).await
    }

    /// The document at `key` deserialized as `T`; `None` if absent, [`Error::Json`] if
    /// it does not fit `T`.
    ///
    /// ```no_run
    /// # async fn demo(client: cairn_client::Client) -> Result<(), cairn_client::Error> {
    /// #[derive(serde::Deserialize)]
    /// struct User { name: String }
    /// if let Some(user) = client.get_json::<User>("user:1").await? {
    ///     println!("{}", user.name);
    /// }
    /// # Ok(())
    /// # }
    /// ```
    pub async fn get_json<T: DeserializeOwned>(&self, key: impl AsRef<[u8]>) -> Result<Option<T>, Error> {
        Ok(self.get_json_versioned(key).await?.map(|v| v.value))
    }

    /// [`Client::get_json`] with the document's version, for compare-and-set with
    /// [`Client::put_json_if_version`].
    pub async fn get_json_versioned<T: DeserializeOwned>(
        &self,
        key: impl AsRef<[u8]>,
    ) -> Result<Option<Versioned<T>>, Error> {
        let key = key.as_ref();
        let Some(doc) = self.get(key).await? else { return Ok(None) };
        let value = serde_json::from_slice(&doc.value).map_err(|e| Error::json(key, e))?;
        Ok(Some(Versioned { value, version: doc.version }))
    }

    // ------------------------------------------------------------------ internals

    pub(crate) async fn put_raw(&self, key: &[u8], value: &[u8], expected: Option<u64>) -> Result<u64, Error> {
        // One sequence number for the whole logical write, whatever its retries.
        let ticket = self.inner.sessions.begin();
        self.single("put", key, |node, route| {
            let route = route_of(route);
            let session = ticket.session();
            let (key, value) = (key.to_vec(), value.to_vec());
            async move { node.put(route, session, &key, &value, expected).await }
        })
        .await
    }

    /// Deletes `key`; returns whether it existed and the log index of the delete.
    pub(crate) async fn delete_raw(&self, key: &[u8], expected: Option<u64>) -> Result<(bool, u64), Error> {
        let ticket = self.inner.sessions.begin();
        self.single("delete", key, |node, route| {
            let route = route_of(route);
            let session = ticket.session();
            let key = key.to_vec();
            async move { node.delete(route, session, &key, expected).await }
        })
        .await
    }

    fn deadline(&self) -> Instant {
        Instant::now() + self.operation_timeout
    }

    fn read_map<T>(&self, f: impl FnOnce(&ShardMap) -> T) -> T {
        f(&self.inner.map.read().unwrap_or_else(PoisonError::into_inner))
    }

    fn write_map<T>(&self, f: impl FnOnce(&mut ShardMap) -> T) -> T {
        f(&mut self.inner.map.write().unwrap_or_else(PoisonError::into_inner))
    }

    /// Runs one operation on the shard holding `key` under a fresh deadline.
    async fn single<T, F, Fut>(&self, op: &'static str, key: &[u8], call: F) -> Result<T, Error>
    where
        F: FnMut(NodeClient, &ShardRoute) -> Fut,
        Fut: Future<Output = Result<T, ApiError>>,
    {
        match self.routed(op, key, key, self.deadline(), 0, call).await? {
            Routed::Done(value) => Ok(value),
            // A route is only ever used for a key it contains.
            Routed::Regroup { .. } => Err(Error::Internal(format!("{op}: a route for one key did not hold it"))),
        }
    }

    /// Runs one logical operation on the shard holding the keys `first..=last`, retrying
    /// as [`plan_retry`] decides, starting at attempt number `attempt`. `call` makes one
    /// attempt against a node, given the route it was sent by; it is called again for
    /// every attempt. Returns `Regroup` if the keys no longer lie in one shard.
    async fn routed<T, F, Fut>(
        &self,
        op: &'static str,
        first: &[u8],
        last: &[u8],
        deadline: Instant,
        mut attempt: u32,
        mut call: F,
    ) -> Result<Routed<T>, Error>
    where
        F: FnMut(NodeClient, &ShardRoute) -> Fut,
        Fut: Future<Output = Result<T, ApiError>>,
    {
        let started = Instant::now();
        let mut last_err: Option<ApiError> = None;
        // The address the previous attempt failed on with a node-level error.
        let mut previous_failure: Option<String> = None;
        // Nodes that answered NOT_LEADER with a hint since the last backoff.
        let mut redirected_by: Vec<String> = Vec::new();
        // Nodes that failed with UNAVAILABLE and were not retried since (bounded by the attempts).
        let mut unreachable: Vec<String> = Vec::new();
        while attempt < self.max_attempts {
            let Some(remaining) = deadline.checked_duration_since(Instant::now()).filter(|d| !d.is_zero()) else {
                break;
            };
            let route = match self.route_for(first, deadline).await {
                Ok(route) => route,
                Err(err) if !err.is_retryable() => return Err(err.into()),
                Err(err) => {
                    debug!(op, key = %display_key(first), attempt, error = %err, "no route; backing off");
                    self.backoff(attempt, deadline).await;
                    attempt += 1;
                    last_err = Some(err);
                    continue;
                }
            };
            if !route.descriptor.range.contains(last) {
                return Ok(Routed::Regroup { attempt });
            }
            let shard = route.descriptor.id;
            let Some(addr) = routing::pick_target(&route, attempt, previous_failure.as_deref()) else {
                debug!(op, %shard, attempt, "the shard has no replica with an address; asking the PD");
                self.refresh(first, last, deadline).await;
                self.backoff(attempt, deadline).await;
                attempt += 1;
                last_err = Some(ApiError::Unavailable(format!("shard {shard} has no replica with an address")));
                continue;
            };
            let node = match self.node(&addr) {
                Ok(node) => node.with_request_timeout(remaining.min(self.inner.config.request_timeout)),
                Err(err) => {
                    // A hint or descriptor carried an address that is not one.
                    debug!(op, %shard, %addr, error = %err, "unusable node address; forgetting the leader");
                    self.write_map(|m| m.forget_leader(shard));
                    previous_failure = Some(addr);
                    attempt += 1;
                    last_err = Some(err);
                    continue;
                }
            };
            let err = match call(node, &route).await {
                Ok(value) => return Ok(Routed::Done(value)),
                Err(err) => err,
            };
            let mut decision = plan_retry(&err, &addr, previous_failure.as_deref());
            if matches!(err, ApiError::Unavailable(_)) && !unreachable.contains(&addr) {
                unreachable.push(addr.clone());
            }
            // A hint naming a node that just failed us comes from a replica that
            // may not have noticed its leader died: rather than spend the next
            // attempt on that node, back off and ask another replica once; the
            // next hint to it is followed (it may have been a passing error).
            let mut dead_hint = None;
            if let (ApiError::NotLeader { leader: Some((_, hint)), .. }, RetryDecision::Retry(plan)) =
                (&err, &mut decision)
                && let Some(at) = unreachable.iter().position(|a| a == hint)
            {
                unreachable.swap_remove(at);
                plan.leader = LeaderUpdate::Forget;
                plan.wait = Wait::Backoff;
                dead_hint = Some(hint.clone());
            }
            debug!(op, key = %display_key(first), %shard, %addr, attempt, error = %err, ?decision, "attempt failed");
            let RetryDecision::Retry(plan) = decision else { return Err(err.into()) };
            self.write_map(|m| {
                match &plan.leader {
                    LeaderUpdate::Keep => {}
                    LeaderUpdate::Note { leader, addr } => m.note_leader(shard, *leader, addr),
                    LeaderUpdate::Forget => m.forget_leader(shard),
                }
                if let Some(current) = &plan.install {
                    m.install_descriptor(current);
                }
            });
            if plan.refresh_from_pd {
                self.refresh(first, last, deadline).await;
            }
            previous_failure = dead_hint.or_else(|| plan.avoid_target.then(|| addr.clone()));
            let mut wait = match plan.wait {
                Wait::No => false,
                Wait::Backoff => true,
                Wait::IfUnchanged => {
                    let next = self.read_map(|m| m.locate(first).cloned());
                    next.is_none_or(|next| {
                        next.descriptor.id == shard
                            && next.descriptor.epoch == route.descriptor.epoch
                            && routing::pick_target(&next, attempt + 1, previous_failure.as_deref()).as_deref()
                                == Some(addr.as_str())
                    })
                }
            };
            // During a leader transfer the old and the new leader can each name
            // the other for a moment: a hint back to a node that already sent
            // us on is followed after a backoff, not in a hot loop.
            if let ApiError::NotLeader { leader: Some((_, hint)), .. } = &err {
                wait |= redirected_by.iter().any(|a| a == hint);
                redirected_by.push(addr.clone());
            }
            if wait {
                redirected_by.clear();
                self.backoff(attempt, deadline).await;
            }
            attempt += 1;
            if error::supersedes(&err, last_err.as_ref(), Instant::now() >= deadline) {
                last_err = Some(err);
            }
        }
        let deadline_passed = Instant::now() >= deadline;
        Err(error::gave_up(op, first, attempt, started.elapsed(), deadline_passed, last_err.as_ref()))
    }

    /// Runs a batch: groups `keys` by cached shard into parts of at most `part_keys_max`
    /// keys, runs `run` on each part (at most [`BATCH_SHARDS_IN_FLIGHT_MAX`] at a time),
    /// regroups parts whose keys no longer lie in one shard, and returns every part's
    /// result. The first error ends the batch (parts in flight are cancelled).
    async fn fan_out<R, F, Fut>(
        &self,
        keys: &[Vec<u8>],
        part_keys_max: usize,
        deadline: Instant,
        run: F,
    ) -> Result<Vec<(Vec<usize>, R)>, Error>
    where
        F: Fn(Part) -> Fut,
        Fut: Future<Output = Result<PartOutcome<R>, Error>>,
    {
        let all: Vec<usize> = (0..keys.len()).collect();
        let mut pending: VecDeque<Part> = self.partition(keys, all, 0, part_keys_max, deadline).await.into();
        let mut running = FuturesUnordered::new();
        let mut done = Vec::new();
        loop {
            while running.len() < BATCH_SHARDS_IN_FLIGHT_MAX {
                let Some(part) = pending.pop_front() else { break };
                running.push(run(part));
            }
            let Some(outcome) = running.next().await else { break };
            match outcome? {
                PartOutcome::Done(positions, result) => done.push((positions, result)),
                PartOutcome::Regroup(part) => {
                    // Counting the regroup as an attempt bounds a map that keeps changing.
                    let parts = self.partition(keys, part.positions, part.attempt + 1, part_keys_max, deadline).await;
                    pending.extend(parts);
                }
            }
        }
        Ok(done)
    }

    /// Groups the keys at `positions` by cached shard into parts of at most `max` keys,
    /// asking the PD first for the range of the keys no cached shard holds. Keys the PD
    /// does not know either form parts of their own; their attempts back off and regroup.
    async fn partition(
        &self,
        keys: &[Vec<u8>],
        positions: Vec<usize>,
        attempt: u32,
        max: usize,
        deadline: Instant,
    ) -> Vec<Part> {
        let group =
            |positions: &[usize]| self.read_map(|m| m.group_keys(positions.iter().map(|&p| (p, keys[p].as_slice()))));
        let (mut groups, mut unrouted) = group(&positions);
        // `unrouted` is in key order, so its ends bound the unknown keys.
        if let (Some(&lo), Some(&hi)) = (unrouted.first(), unrouted.last()) {
            self.refresh(&keys[lo], &keys[hi], deadline).await;
            (groups, unrouted) = group(&positions);
        }
        let mut parts = Vec::new();
        let chunks = groups.iter().flat_map(|g| g.positions.chunks(max)).chain(unrouted.chunks(max));
        for chunk in chunks {
            parts.push(Part { positions: chunk.to_vec(), attempt });
        }
        parts
    }

    /// The cached route of `key`, else the PD's.
    async fn route_for(&self, key: &[u8], deadline: Instant) -> Result<ShardRoute, ApiError> {
        if let Some(route) = self.read_map(|m| m.locate(key).cloned()) {
            return Ok(route);
        }
        self.locate_from_pd(key, deadline).await
    }

    /// Asks the PD for the route of `key` and caches it. Returns what the map then holds
    /// for the key, which may be newer than the PD's answer.
    async fn locate_from_pd(&self, key: &[u8], deadline: Instant) -> Result<ShardRoute, ApiError> {
        let budget = self.pd_budget(deadline)?;
        let (route, revision) = tokio::time::timeout(budget, self.inner.pd.locate(key))
            .await
            .map_err(|_| ApiError::DeadlineExceeded(format!("Locate from the PD took longer than {budget:?}")))??;
        debug!(key = %display_key(key), shard = %route.descriptor.id, revision, "located a key");
        let located = route.descriptor.id;
        self.write_map(|m| {
            m.upsert(route);
            m.locate(key).cloned()
        })
        .ok_or_else(|| {
            ApiError::Unavailable(format!(
                "the PD located key {} in shard {located}, which does not hold it",
                display_key(key)
            ))
        })
    }

    /// Asks the PD for the shards holding `first..=last` and caches them. Failures are
    /// logged and otherwise ignored: the attempt that follows reports what matters.
    async fn refresh(&self, first: &[u8], last: &[u8], deadline: Instant) {
        let result = if first == last {
            self.locate_from_pd(first, deadline).await.map(drop)
        } else {
            self.list_from_pd(first, last, deadline).await
        };
        if let Err(err) = result {
            debug!(from = %display_key(first), to = %display_key(last), error = %err, "refreshing routes from the PD failed");
        }
    }

    async fn list_from_pd(&self, first: &[u8], last: &[u8], deadline: Instant) -> Result<(), ApiError> {
        let end = routing::key_successor(last);
        let mut cursor = first.to_vec();
        loop {
            let budget = self.pd_budget(deadline)?;
            let range = KeyRange::new(cursor.clone(), end.clone());
            let (routes, _) =
                tokio::time::timeout(budget, self.inner.pd.list_shards(&range, SHARD_LIST_PAGE_MAX)).await.map_err(
                    |_| ApiError::DeadlineExceeded(format!("ListShards from the PD took longer than {budget:?}")),
                )??;
            let next = routing::next_listing_cursor(&cursor, &routes, SHARD_LIST_PAGE_MAX, &end)?;
            self.write_map(|m| {
                for route in routes {
                    m.upsert(route);
                }
            });
            match next {
                Some(next) => cursor = next,
                None => return Ok(()),
            }
        }
    }

    /// How long the next PD call may take: what remains of the operation, at most
    /// `request_timeout`.
    fn pd_budget(&self, deadline: Instant) -> Result<Duration, ApiError> {
        deadline
            .checked_duration_since(Instant::now())
            .filter(|d| !d.is_zero())
            .map(|d| d.min(self.inner.config.request_timeout))
            .ok_or_else(|| ApiError::DeadlineExceeded("no time left to ask the PD".into()))
    }

    /// The pooled client of the node at `addr`.
    fn node(&self, addr: &str) -> Result<NodeClient, ApiError> {
        let mut nodes = self.inner.nodes.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(node) = nodes.get(addr) {
            return Ok(node.clone());
        }
        let node = NodeClient::new(addr, &self.inner.config)?;
        if nodes.len() >= NODE_CLIENTS_MAX {
            nodes.clear();
        }
        nodes.insert(addr.to_string(), node.clone());
        Ok(node)
    }

    /// Sleeps the backoff delay of `attempt`, but not past `deadline`.
    async fn backoff(&self, attempt: u32, deadline: Instant) {
        let config = &self.inner.config;
        let delay = backoff_delay(attempt, config.backoff_base, config.backoff_cap, &mut cairn_proto::sim::rng());
        tokio::time::sleep_until((Instant::now() + delay).min(deadline)).await;
    }
}

/// The state of one scan stream between pages.
struct ScanState {
    client: Client,
    /// Where the next page starts; `None` when the scan is complete.
    cursor: Option<Vec<u8>>,
    end: Vec<u8>,
    remaining: Option<usize>,
    page_docs: u32,
}

impl ScanState {
    /// Reads the next page: `None` when the scan is complete. A page may be empty (an
    /// empty shard) while more follow.
    async fn next_page(&mut self) -> Result<Option<Vec<Document>>, Error> {
        let Some(cursor) = self.cursor.clone() else { return Ok(None) };
        if self.remaining == Some(0) || (!self.end.is_empty() && cursor >= self.end) {
            self.cursor = None;
            return Ok(None);
        }
        let want = match self.remaining {
            Some(remaining) => u32::try_from(remaining).unwrap_or(u32::MAX).min(self.page_docs),
            None => self.page_docs,
        };
        let end = self.end.clone();
        let (mut docs, mut continue_from, shard_end) = self
            .client
            .single("scan", &cursor, |node, route| {
                let window = routing::scan_window(&cursor, &end, &route.descriptor.range);
                let shard_end = route.descriptor.range.end.clone();
                let route = route_of(route);
                async move {
                    let (docs, continue_from) = node.scan(route, window, want, false, false).await?;
                    Ok((docs, continue_from, shard_end))
                }
            })
            .await?;
        let in_order = docs.first().is_none_or(|d| d.key >= cursor) && docs.windows(2).all(|w| w[0].key < w[1].key);
        if !in_order {
            return Err(Error::Internal(format!("scan page at {} is not in key order", display_key(&cursor))));
        }
        if docs.len() > want as usize {
            // A server that returns more than asked: keep the promise of the limit and
            // continue after what was kept.
            docs.truncate(want as usize);
            continue_from = docs.last().map(|d| routing::key_successor(&d.key));
        }
        let last = docs.last().map(|d| d.key.as_slice());
        self.cursor = routing::next_page_cursor(&cursor, last, continue_from, &shard_end, &self.end)?;
        if let Some(remaining) = &mut self.remaining {
            *remaining = remaining.saturating_sub(docs.len());
        }
        Ok(Some(docs))
    }
}

/// The whole shard map from the PD, paged, and the lowest revision of the pages (so a
/// watch from it replays whatever changed while paging).
async fn list_all_shards(pd: &PdClient) -> Result<(Vec<ShardRoute>, u64), ApiError> {
    let mut routes = Vec::new();
    let mut revision: Option<u64> = None;
    let mut cursor: Vec<u8> = Vec::new();
    loop {
        let (page, page_revision) =
            pd.list_shards(&KeyRange::new(cursor.clone(), Vec::new()), SHARD_LIST_PAGE_MAX).await?;
        revision = Some(revision.map_or(page_revision, |r| r.min(page_revision)));
        let next = routing::next_listing_cursor(&cursor, &page, SHARD_LIST_PAGE_MAX, &[])?;
        routes.extend(page);
        match next {
            Some(next) => cursor = next,
            None => return Ok((routes, revision.unwrap_or(0))),
        }
    }
}

/// The first and last key of a part (its positions are sorted by key and never empty).
fn span<'k>(keys: &'k [Vec<u8>], positions: &[usize]) -> (&'k [u8], &'k [u8]) {
    let first = positions.first().map_or(&[][..], |&p| keys[p].as_slice());
    let last = positions.last().map_or(&[][..], |&p| keys[p].as_slice());
    (first, last)
}

/// The route a request to this shard carries.
fn route_of(route: &ShardRoute) -> Route {
    Route { shard: route.descriptor.id, epoch: route.descriptor.epoch }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoints_accept_lists_and_comma_separated_strings() {
        assert_eq!("a:1, b:2,,".into_endpoints(), ["a:1", "b:2"]);
        assert_eq!(String::from("a:1").into_endpoints(), ["a:1"]);
        assert_eq!(vec!["a:1,b:2", "c:3"].into_endpoints(), ["a:1", "b:2", "c:3"]);
        assert_eq!(["a:1", " b:2 "].into_endpoints(), ["a:1", "b:2"]);
        assert_eq!((&["a:1"][..]).into_endpoints(), ["a:1"]);
        assert_eq!((&vec![String::from("x:9")]).into_endpoints(), ["x:9"]);
        assert!("".into_endpoints().is_empty());
    }

    /// Operations can run on spawned tasks: their futures are `Send`. (Never run; it only
    /// has to compile.)
    #[allow(dead_code, clippy::let_underscore_future)]
    fn operations_are_send(client: Client) {
        fn send<T: Send>(_: T) {}
        #[derive(serde::Serialize, serde::Deserialize)]
        struct Doc {
            n: u32,
        }
        send(client.get("k"));
        send(client.put("k", "{}"));
        send(client.put_if_version(String::from("k"), String::from("{}"), 0));
        send(client.delete("k"));
        send(client.delete_if_version("k", 3));
        send(client.batch_get(["a", "b"]));
        send(client.batch_put(vec![("a", "1")]));
        send(client.put_json("k", &Doc { n: 1 }));
        send(client.get_json::<Doc>("k"));
        send(client.scan_prefix("k"));
        send(client.refresh_shard_map());
        send(client.shutdown());
        send(Client::connect("a:1"));
    }

    #[tokio::test]
    async fn connect_rejects_bad_input_and_reports_an_unreachable_pd() {
        let err = Client::connect("").await.unwrap_err();
        assert!(matches!(err, Error::InvalidArgument(_)), "{err:?}");
        let err = Client::connect_with("127.0.0.1:1", ClientConfig { max_attempts: 0, ..Default::default() })
            .await
            .unwrap_err();
        assert!(matches!(err, Error::InvalidArgument(_)), "{err:?}");
        let config = ClientConfig {
            max_attempts: 2,
            backoff_base: Duration::from_millis(1),
            backoff_cap: Duration::from_millis(5),
            ..Default::default()
        };
        let err = Client::connect_with("127.0.0.1:1", config).await.unwrap_err();
        assert!(err.is_retryable(), "{err:?}");
    }
}
