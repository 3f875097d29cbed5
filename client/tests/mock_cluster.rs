//! `DirectClient` against an in-process mock cluster: two gRPC nodes sharing one perfectly
//! replicated state machine, with two shards split at "m". The mock checks routes the
//! way a real node must (shard, epoch, leadership, key range) and can inject failures, so
//! these tests cover the client's redirect, refresh, retry, deduplication and scan walk.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use cairn_client::{ClientConfig, DirectClient};
use cairn_proto::pb::admin_server::{Admin, AdminServer};
use cairn_proto::pb::kv_server::{Kv, KvServer};
use cairn_proto::{
    ApiError, Epoch, KeyRange, NodeId, RaftRole, ReplicaDescriptor, ReplicaRole, Route, Session, ShardDescriptor,
    ShardId, ShardStatus, pb,
};
use tonic::{Request, Response, Status};

/// Page size of the mock's scans, small so that tests cross page boundaries.
const MOCK_SCAN_PAGE_DOCS: usize = 4;

#[derive(Default)]
struct State {
    addrs: HashMap<NodeId, String>,
    shards: Vec<ShardDescriptor>,
    leaders: HashMap<ShardId, NodeId>,
    /// When set, `ListShards` reports no leader, so the client must discover it.
    hide_leaders: bool,
    data: BTreeMap<Vec<u8>, (Vec<u8>, u64)>,
    last_index: u64,
    /// (client_id, seq) -> result of an applied write, for deduplication.
    applied: HashMap<(u64, u64), (bool, u64)>,
    applies: u64,
    /// Kv requests received, by any node.
    requests: u64,
    sessions_seen: Vec<Session>,
    fail_before_apply: u32,
    fail_after_apply: u32,
}

impl State {
    fn check_route(
        &mut self,
        me: NodeId,
        route: Option<pb::RouteHeader>,
        key: Option<&[u8]>,
    ) -> Result<ShardDescriptor, ApiError> {
        self.requests += 1;
        let route = Route::try_from(route)?;
        let desc = self
            .shards
            .iter()
            .find(|d| d.id == route.shard)
            .cloned()
            .ok_or(ApiError::ShardNotFound { shard: route.shard })?;
        if desc.epoch != route.epoch {
            return Err(ApiError::EpochMismatch { current: desc });
        }
        let leader = self.leaders[&desc.id];
        if leader != me {
            return Err(ApiError::NotLeader { shard: desc.id, leader: Some((leader, self.addrs[&leader].clone())) });
        }
        if let Some(key) = key
            && !desc.range.contains(key)
        {
            return Err(ApiError::KeyNotInShard { current: desc });
        }
        Ok(desc)
    }

    /// Applies a write once per session; `op` runs only for a new session.
    fn write(
        &mut self,
        session: Session,
        op: impl FnOnce(&mut State) -> Result<(bool, u64), ApiError>,
    ) -> Result<(bool, u64), ApiError> {
        self.sessions_seen.push(session);
        if self.fail_before_apply > 0 {
            self.fail_before_apply -= 1;
            return Err(ApiError::Unavailable("injected before apply".into()));
        }
        let key = (session.client_id, session.seq);
        let result = match self.applied.get(&key) {
            Some(result) => *result,
            None => {
                let result = op(self)?;
                self.applies += 1;
                self.applied.insert(key, result);
                result
            }
        };
        if self.fail_after_apply > 0 {
            self.fail_after_apply -= 1;
            return Err(ApiError::Unavailable("injected after apply".into()));
        }
        Ok(result)
    }
}

#[derive(Clone)]
struct MockNode {
    id: NodeId,
    state: Arc<Mutex<State>>,
}

fn document(key: &[u8], value: &[u8], version: u64) -> pb::Document {
    pb::Document { key: key.to_vec(), value: value.to_vec(), version, created_at_ms: 1, updated_at_ms: 2 }
}

#[tonic::async_trait]
impl Kv for MockNode {
    async fn get(&self, request: Request<pb::GetRequest>) -> Result<Response<pb::GetResponse>, Status> {
        let r = request.into_inner();
        let mut st = self.state.lock().unwrap();
        st.check_route(self.id, r.route, Some(&r.key)).map_err(|e| e.to_status())?;
        let document = st.data.get(&r.key).map(|(v, ver)| document(&r.key, v, *ver));
        Ok(Response::new(pb::GetResponse { document }))
    }

    async fn put(&self, request: Request<pb::PutRequest>) -> Result<Response<pb::PutResponse>, Status> {
        let r = request.into_inner();
        let mut st = self.state.lock().unwrap();
        st.check_route(self.id, r.route, Some(&r.key)).map_err(|e| e.to_status())?;
        let (key, value, expected) = (r.key, r.value, r.expected_version);
        let (_, version) = st
            .write(r.session.into(), |st| {
                let current = st.data.get(&key).map(|(_, v)| *v).unwrap_or(0);
                if expected.is_some_and(|e| e != current) {
                    return Err(ApiError::ConditionFailed { current_version: current });
                }
                st.last_index += 1;
                st.data.insert(key, (value, st.last_index));
                Ok((true, st.last_index))
            })
            .map_err(|e| e.to_status())?;
        Ok(Response::new(pb::PutResponse { version }))
    }

    async fn delete(&self, request: Request<pb::DeleteRequest>) -> Result<Response<pb::DeleteResponse>, Status> {
        let r = request.into_inner();
        let mut st = self.state.lock().unwrap();
        st.check_route(self.id, r.route, Some(&r.key)).map_err(|e| e.to_status())?;
        let (key, expected) = (r.key, r.expected_version);
        let (deleted, version) = st
            .write(r.session.into(), |st| {
                let current = st.data.get(&key).map(|(_, v)| *v).unwrap_or(0);
                if expected.is_some_and(|e| e != current) {
                    return Err(ApiError::ConditionFailed { current_version: current });
                }
                st.last_index += 1;
                Ok((st.data.remove(&key).is_some(), st.last_index))
            })
            .map_err(|e| e.to_status())?;
        Ok(Response::new(pb::DeleteResponse { deleted, version }))
    }

    async fn scan(&self, request: Request<pb::ScanRequest>) -> Result<Response<pb::ScanResponse>, Status> {
        let r = request.into_inner();
        let mut st = self.state.lock().unwrap();
        let desc = st.check_route(self.id, r.route, Some(&r.start)).map_err(|e| e.to_status())?;
        let asked = KeyRange::new(r.start, r.end);
        let Some(range) = asked.intersect(&desc.range) else {
            return Err(ApiError::KeyNotInShard { current: desc }.to_status());
        };
        if range != asked {
            return Err(ApiError::KeyNotInShard { current: desc }.to_status());
        }
        let page = (r.limit as usize).min(MOCK_SCAN_PAGE_DOCS);
        let mut hits = st.data.range(range.start.clone()..).filter(|(k, _)| range.contains(k));
        let documents: Vec<_> = hits.by_ref().take(page).map(|(k, (v, ver))| document(k, v, *ver)).collect();
        let continue_from = hits.next().map(|(k, _)| k.clone());
        Ok(Response::new(pb::ScanResponse { documents, continue_from }))
    }

    async fn batch_get(&self, _: Request<pb::BatchGetRequest>) -> Result<Response<pb::BatchGetResponse>, Status> {
        Err(Status::unimplemented("not in the mock"))
    }

    async fn batch_put(&self, _: Request<pb::BatchPutRequest>) -> Result<Response<pb::BatchPutResponse>, Status> {
        Err(Status::unimplemented("not in the mock"))
    }
}

#[tonic::async_trait]
impl Admin for MockNode {
    async fn list_shards(&self, _: Request<pb::ListShardsRequest>) -> Result<Response<pb::ListShardsResponse>, Status> {
        let st = self.state.lock().unwrap();
        let shards = st
            .shards
            .iter()
            .map(|d| {
                let leader = st.leaders[&d.id];
                let status = ShardStatus {
                    descriptor: d.clone(),
                    role: if leader == self.id { RaftRole::Leader } else { RaftRole::Follower },
                    leader: (!st.hide_leaders).then_some(leader),
                    leader_addr: if st.hide_leaders { String::new() } else { st.addrs[&leader].clone() },
                    term: 1,
                    applied_index: st.last_index,
                    last_log_index: st.last_index,
                };
                pb::ShardStatus::from(&status)
            })
            .collect();
        Ok(Response::new(pb::ListShardsResponse { node_id: self.id.0, shards }))
    }

    async fn node_stats(&self, _: Request<pb::NodeStatsRequest>) -> Result<Response<pb::NodeStatsResponse>, Status> {
        Err(Status::unimplemented("not in the mock"))
    }
}

struct Cluster {
    state: Arc<Mutex<State>>,
    addrs: Vec<String>,
}

/// Starts nodes 1 and 2. Shard 1 = ["", "m") led by node 2, shard 2 = ["m", +inf) led by
/// node 1; both nodes host both shards.
async fn start_cluster() -> Cluster {
    let state = Arc::new(Mutex::new(State::default()));
    let mut addrs = Vec::new();
    for id in [NodeId(1), NodeId(2)] {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        state.lock().unwrap().addrs.insert(id, addr.clone());
        addrs.push(addr);
        let node = MockNode { id, state: state.clone() };
        tokio::spawn(
            tonic::transport::Server::builder()
                .add_service(KvServer::new(node.clone()))
                .add_service(AdminServer::new(node))
                .serve_with_incoming(tonic::transport::server::TcpIncoming::from(listener)),
        );
    }
    {
        let mut st = state.lock().unwrap();
        let replicas: Vec<ReplicaDescriptor> = [1, 2]
            .into_iter()
            .map(|n| ReplicaDescriptor {
                node: NodeId(n),
                addr: addrs[n as usize - 1].clone(),
                role: ReplicaRole::Voter,
            })
            .collect();
        let epoch = Epoch { conf_ver: 1, version: 1 };
        st.shards = vec![
            ShardDescriptor {
                id: ShardId(1),
                range: KeyRange::new(Vec::new(), b"m".to_vec()),
                epoch,
                replicas: replicas.clone(),
            },
            ShardDescriptor { id: ShardId(2), range: KeyRange::new(b"m".to_vec(), Vec::new()), epoch, replicas },
        ];
        st.leaders = HashMap::from([(ShardId(1), NodeId(2)), (ShardId(2), NodeId(1))]);
    }
    Cluster { state, addrs }
}

fn fast_config() -> ClientConfig {
    ClientConfig {
        backoff_base: Duration::from_millis(5),
        backoff_cap: Duration::from_millis(20),
        operation_timeout: Duration::from_secs(10),
        ..Default::default()
    }
}

#[tokio::test]
async fn reads_and_writes_route_to_each_shards_leader() {
    let cluster = start_cluster().await;
    let client = DirectClient::new(cluster.addrs[0].clone(), fast_config()).unwrap();

    let v1 = client.put(b"apple", b"{\"a\":1}", None).await.unwrap();
    let v2 = client.put(b"zebra", b"[1,2]", Some(0)).await.unwrap();
    assert!(v2 > v1);
    let doc = client.get(b"apple").await.unwrap().expect("apple exists");
    assert_eq!((doc.value.as_slice(), doc.version), (&b"{\"a\":1}"[..], v1));
    assert_eq!(client.get(b"nothing").await.unwrap(), None);

    // Compare-and-set failures are returned, not retried.
    let err = client.put(b"zebra", b"{}", Some(0)).await.unwrap_err();
    assert_eq!(err, ApiError::ConditionFailed { current_version: v2 });

    let (deleted, _) = client.delete(b"zebra", None).await.unwrap();
    assert!(deleted);
    let (deleted, _) = client.delete(b"zebra", None).await.unwrap();
    assert!(!deleted);

    let shards = client.shards().await.unwrap();
    assert_eq!(shards.iter().map(|s| s.descriptor.id).collect::<Vec<_>>(), [ShardId(1), ShardId(2)]);

    // Every session carried this client's id, and acked_below never passed its seq.
    let st = cluster.state.lock().unwrap();
    assert!(st.sessions_seen.iter().all(|s| s.client_id == client.client_id() && s.acked_below <= s.seq));
}

#[tokio::test]
async fn follows_leader_hints_when_the_list_names_no_leader() {
    let cluster = start_cluster().await;
    cluster.state.lock().unwrap().hide_leaders = true;
    let client = DirectClient::new(cluster.addrs[0].clone(), fast_config()).unwrap();
    // Shard 1 is led by node 2; the first attempt goes to node 1 and is redirected.
    client.put(b"a", b"1", None).await.unwrap();
    assert_eq!(cluster.state.lock().unwrap().requests, 2, "one redirect");
    // The hint is cached: the read goes straight to the leader.
    assert_eq!(client.get(b"a").await.unwrap().unwrap().value, b"1");
    assert_eq!(cluster.state.lock().unwrap().requests, 3);
}

#[tokio::test]
async fn refreshes_after_an_epoch_change_and_a_leader_move() {
    let cluster = start_cluster().await;
    let client = DirectClient::new(cluster.addrs[1].clone(), fast_config()).unwrap();
    client.put(b"x", b"1", None).await.unwrap();
    {
        let mut st = cluster.state.lock().unwrap();
        st.shards[1].epoch.conf_ver += 1;
        st.leaders.insert(ShardId(2), NodeId(2));
    }
    client.put(b"x", b"2", None).await.unwrap();
    assert_eq!(client.get(b"x").await.unwrap().unwrap().value, b"2");
    let shards = client.shards().await.unwrap();
    assert_eq!(shards[1].descriptor.epoch.conf_ver, 2);
}

#[tokio::test]
async fn a_retried_write_is_applied_once() {
    let cluster = start_cluster().await;
    let client = DirectClient::new(cluster.addrs[0].clone(), fast_config()).unwrap();
    client.put(b"k", b"0", None).await.unwrap();
    let applies_before = cluster.state.lock().unwrap().applies;
    {
        let mut st = cluster.state.lock().unwrap();
        st.fail_before_apply = 1;
        st.fail_after_apply = 2;
    }
    let version = client.put(b"k", b"1", None).await.unwrap();
    let st = cluster.state.lock().unwrap();
    assert_eq!(st.applies, applies_before + 1, "the retries were deduplicated");
    assert_eq!(st.data[&b"k".to_vec()].1, version, "the retry returned the first apply's version");
    let last: Vec<_> = st.sessions_seen.iter().rev().take(4).collect();
    assert!(last.iter().all(|s| s.seq == last[0].seq), "one seq across retries: {last:?}");
}

#[tokio::test]
async fn gives_up_after_max_attempts() {
    let cluster = start_cluster().await;
    let config = ClientConfig { max_attempts: 3, ..fast_config() };
    let client = DirectClient::new(cluster.addrs[0].clone(), config).unwrap();
    client.shards().await.unwrap();
    cluster.state.lock().unwrap().fail_before_apply = 100;
    let err = client.put(b"k", b"1", None).await.unwrap_err();
    // The leader failed; the client then tried its replicas, which pointed back at it.
    assert!(err.is_retryable(), "{err:?}");
    let st = cluster.state.lock().unwrap();
    assert_eq!(st.requests, 3);
    assert_eq!(st.applies, 0);
}

#[tokio::test]
async fn scans_walk_pages_and_shards_in_key_order() {
    let cluster = start_cluster().await;
    let client = DirectClient::new(cluster.addrs[0].clone(), fast_config()).unwrap();
    let mut keys: Vec<String> =
        (0..13).map(|i| format!("a{i:02}")).chain((0..11).map(|i| format!("p{i:02}"))).collect();
    keys.push("m".into());
    for k in &keys {
        client.put(k.as_bytes(), b"{}", None).await.unwrap();
    }
    keys.sort();
    let scanned = |docs: Vec<cairn_proto::Document>| -> Vec<String> {
        docs.into_iter().map(|d| String::from_utf8(d.key).unwrap()).collect()
    };

    assert_eq!(scanned(client.scan_range(b"", b"", 1000).await.unwrap()), keys);
    assert_eq!(scanned(client.scan_range(b"", b"", 7).await.unwrap()), keys[..7]);
    assert_eq!(scanned(client.scan_range(b"a05", b"p03", 1000).await.unwrap()), keys[5..17]);
    let p: Vec<String> = keys.iter().filter(|k| k.starts_with('p')).cloned().collect();
    assert_eq!(scanned(client.scan_prefix(b"p", 1000).await.unwrap()), p);
    assert!(client.scan_prefix(b"q", 10).await.unwrap().is_empty());
    assert!(client.scan_range(b"", b"", 0).await.unwrap().is_empty());
}
