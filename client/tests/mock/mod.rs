//! An in-process mock cluster for the client tests.
//!
//! - Nodes serve `Kv` and `Admin` over real gRPC on loopback and share one perfectly
//!   replicated state machine. They check routes the way a real node must (shard, epoch,
//!   leadership, key range), deduplicate writes by session, can inject failures, and
//!   record every request they receive.
//! - Placement-driver members serve `Pd` (`ListShards`, `Locate`, `WatchShards`,
//!   `GetCluster`) from the same in-memory shard map. A test changes the map while the
//!   client runs (splits, leader moves), decides whether the change is published to the
//!   watchers, and can take a member away (its watch streams end, its calls fail).
#![allow(dead_code)]

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use cairn_client::ClientConfig;
use cairn_proto::pb::admin_server::{Admin, AdminServer};
use cairn_proto::pb::kv_server::{Kv, KvServer};
use cairn_proto::pb::pd_server::{Pd, PdServer};
use cairn_proto::{
    ApiError, ClusterSettings, ClusterStatus, Epoch, ErrorCode, KeyRange, NodeId, NodeInfo, NodeState, RaftRole,
    ReplicaDescriptor, ReplicaRole, Route, Session, ShardDescriptor, ShardId, ShardInfo, ShardMapEvent, ShardRoute,
    ShardStatus, pb,
};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status};

/// Page size of the mock's scans, small so that tests cross page boundaries.
pub const MOCK_SCAN_PAGE_DOCS: usize = 4;

/// Events buffered per watcher; a watcher that falls further behind is dropped (its
/// stream ends and the client subscribes again), as a real PD would do.
const WATCH_BUFFER_EVENTS: usize = 64;

/// One Kv request as a node received it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Received {
    pub node: NodeId,
    pub op: &'static str,
    pub shard: ShardId,
    /// Number of keys (1 for single-key operations).
    pub keys: usize,
    /// The routing error the node answered with, if any.
    pub routing_error: Option<ErrorCode>,
}

/// Calls one PD member received.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PdCalls {
    pub list_shards: u64,
    pub locate: u64,
    pub watch: u64,
    pub get_cluster: u64,
}

struct Watcher {
    member: usize,
    tx: mpsc::Sender<Result<pb::ShardMapEvent, Status>>,
}

#[derive(Default)]
pub struct State {
    pub addrs: HashMap<NodeId, String>,
    pub shards: Vec<ShardDescriptor>,
    pub leaders: HashMap<ShardId, NodeId>,
    /// When set, nodes' `ListShards` and the PD report no leader, so the client must
    /// discover it.
    pub hide_leaders: bool,
    pub data: BTreeMap<Vec<u8>, (Vec<u8>, u64)>,
    pub last_index: u64,
    /// (client_id, seq) -> result of an applied write, for deduplication.
    pub applied: HashMap<(u64, u64), (bool, u64)>,
    pub applies: u64,
    /// Kv requests received, by any node.
    pub requests: u64,
    pub received: Vec<Received>,
    pub sessions_seen: Vec<Session>,
    pub fail_before_apply: u32,
    pub fail_after_apply: u32,
    /// Nodes that are down: they answer every request with UNAVAILABLE (their followers
    /// still name them as leader until an election).
    pub down: Vec<NodeId>,
    /// Pending elections: shard -> Kv requests for it still answered under the current
    /// leadership; after those, the first request for it that reaches a live node makes
    /// that node the leader.
    pub elections: HashMap<ShardId, usize>,
    // ---- placement driver
    pub revision: u64,
    /// Every published event, for replays to watchers that subscribe from a revision.
    pub events: Vec<ShardMapEvent>,
    watchers: Vec<Watcher>,
    pub pd_calls: Vec<PdCalls>,
    pub pd_down: Vec<bool>,
}

impl State {
    fn check_route(
        &mut self,
        me: NodeId,
        op: &'static str,
        route: Option<pb::RouteHeader>,
        keys: &[&[u8]],
    ) -> Result<ShardDescriptor, ApiError> {
        self.requests += 1;
        let route = Route::try_from(route)?;
        let result = self.answer(me, route, keys);
        self.received.push(Received {
            node: me,
            op,
            shard: route.shard,
            keys: keys.len(),
            routing_error: result.as_ref().err().map(ApiError::code),
        });
        result
    }

    /// Checks a request that reached `me`, after holding any election it completes.
    fn answer(&mut self, me: NodeId, route: Route, keys: &[&[u8]]) -> Result<ShardDescriptor, ApiError> {
        let up = !self.down.contains(&me);
        if let Some(left) = self.elections.get_mut(&route.shard) {
            if *left > 0 {
                *left -= 1;
            } else if up {
                self.elections.remove(&route.shard);
                self.leaders.insert(route.shard, me);
            }
        }
        if !up {
            return Err(ApiError::Unavailable(format!("mock node {} is down", me.0)));
        }
        self.check(me, route, keys)
    }

    fn check(&self, me: NodeId, route: Route, keys: &[&[u8]]) -> Result<ShardDescriptor, ApiError> {
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
        if keys.iter().any(|k| !desc.range.contains(k)) {
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

    /// The PD's route of a shard.
    pub fn route(&self, desc: &ShardDescriptor) -> ShardRoute {
        let leader = self.leaders[&desc.id];
        ShardRoute {
            descriptor: desc.clone(),
            leader: (!self.hide_leaders).then(|| (leader, self.addrs[&leader].clone())),
        }
    }

    fn routes_in(&self, range: &KeyRange) -> Vec<ShardRoute> {
        let mut shards: Vec<&ShardDescriptor> =
            self.shards.iter().filter(|d| d.range.intersect(range).is_some()).collect();
        shards.sort_by(|a, b| a.range.start.cmp(&b.range.start));
        shards.into_iter().map(|d| self.route(d)).collect()
    }

    fn pd_call(&mut self, member: usize, count: impl FnOnce(&mut PdCalls)) -> Result<(), Status> {
        if self.pd_down[member] {
            return Err(Status::unavailable(format!("mock PD member {member} is down")));
        }
        count(&mut self.pd_calls[member]);
        Ok(())
    }

    fn cluster_status(&self) -> ClusterStatus {
        let nodes: Vec<NodeInfo> = self
            .addrs
            .iter()
            .map(|(id, addr)| NodeInfo {
                id: *id,
                addr: addr.clone(),
                state: NodeState::Up,
                capacity_bytes: 0,
                labels: Default::default(),
                last_heartbeat_ms_ago: Some(10),
                replicas: self.shards.len() as u64,
                leaders: self.leaders.values().filter(|l| *l == id).count() as u64,
                size_bytes: 0,
                db_bytes: 0,
                pd_member: false,
            })
            .collect();
        ClusterStatus {
            cluster_id: 1,
            pd_leader: None,
            pd_members: Vec::new(),
            nodes,
            shards: self
                .shards
                .iter()
                .map(|d| ShardInfo { route: self.route(d), key_count: 0, size_bytes: 0, term: 1, applied_index: 0 })
                .collect(),
            settings: ClusterSettings { replication_factor: 2, ..Default::default() },
            revision: self.revision,
            events: Vec::new(),
        }
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
        st.check_route(self.id, "get", r.route, &[&r.key]).map_err(|e| e.to_status())?;
        let document = st.data.get(&r.key).map(|(v, ver)| document(&r.key, v, *ver));
        Ok(Response::new(pb::GetResponse { document }))
    }

    async fn put(&self, request: Request<pb::PutRequest>) -> Result<Response<pb::PutResponse>, Status> {
        let r = request.into_inner();
        let mut st = self.state.lock().unwrap();
        st.check_route(self.id, "put", r.route, &[&r.key]).map_err(|e| e.to_status())?;
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
        st.check_route(self.id, "delete", r.route, &[&r.key]).map_err(|e| e.to_status())?;
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
        let desc = st.check_route(self.id, "scan", r.route, &[&r.start]).map_err(|e| e.to_status())?;
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

    async fn batch_get(&self, request: Request<pb::BatchGetRequest>) -> Result<Response<pb::BatchGetResponse>, Status> {
        let r = request.into_inner();
        let mut st = self.state.lock().unwrap();
        let keys: Vec<&[u8]> = r.keys.iter().map(Vec::as_slice).collect();
        st.check_route(self.id, "batch_get", r.route, &keys).map_err(|e| e.to_status())?;
        let items = r
            .keys
            .iter()
            .map(|k| match st.data.get(k) {
                Some((v, ver)) => pb::BatchGetItem { found: true, document: Some(document(k, v, *ver)) },
                None => pb::BatchGetItem { found: false, document: None },
            })
            .collect();
        Ok(Response::new(pb::BatchGetResponse { items }))
    }

    async fn batch_put(&self, request: Request<pb::BatchPutRequest>) -> Result<Response<pb::BatchPutResponse>, Status> {
        let r = request.into_inner();
        let mut st = self.state.lock().unwrap();
        let keys: Vec<&[u8]> = r.items.iter().map(|i| i.key.as_slice()).collect();
        st.check_route(self.id, "batch_put", r.route, &keys).map_err(|e| e.to_status())?;
        let items = r.items;
        let (_, version) = st
            .write(r.session.into(), |st| {
                st.last_index += 1;
                for item in items {
                    st.data.insert(item.key, (item.value, st.last_index));
                }
                Ok((true, st.last_index))
            })
            .map_err(|e| e.to_status())?;
        Ok(Response::new(pb::BatchPutResponse { version }))
    }
}

#[tonic::async_trait]
impl Admin for MockNode {
    async fn list_shards(&self, _: Request<pb::ListShardsRequest>) -> Result<Response<pb::ListShardsResponse>, Status> {
        let st = self.state.lock().unwrap();
        if st.down.contains(&self.id) {
            return Err(ApiError::Unavailable(format!("mock node {} is down", self.id.0)).to_status());
        }
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

    async fn set_link_faults(
        &self,
        _: Request<pb::SetLinkFaultsRequest>,
    ) -> Result<Response<pb::SetLinkFaultsResponse>, Status> {
        Err(ApiError::InvalidArgument("the mock node has no fault injection".into()).to_status())
    }

    async fn node_stats(&self, _: Request<pb::NodeStatsRequest>) -> Result<Response<pb::NodeStatsResponse>, Status> {
        Err(Status::unimplemented("not in the mock"))
    }

    async fn nudge(&self, _: Request<pb::NudgeRequest>) -> Result<Response<pb::NudgeResponse>, Status> {
        Ok(Response::new(pb::NudgeResponse {}))
    }
}

#[derive(Clone)]
struct MockPd {
    member: usize,
    state: Arc<Mutex<State>>,
}

#[tonic::async_trait]
impl Pd for MockPd {
    async fn register_node(
        &self,
        _: Request<pb::RegisterNodeRequest>,
    ) -> Result<Response<pb::RegisterNodeResponse>, Status> {
        Err(Status::unimplemented("not in the mock"))
    }

    async fn heartbeat(&self, _: Request<pb::HeartbeatRequest>) -> Result<Response<pb::HeartbeatResponse>, Status> {
        Err(Status::unimplemented("not in the mock"))
    }

    async fn locate(&self, request: Request<pb::LocateRequest>) -> Result<Response<pb::LocateResponse>, Status> {
        let key = request.into_inner().key;
        let mut st = self.state.lock().unwrap();
        st.pd_call(self.member, |c| c.locate += 1)?;
        let desc = st
            .shards
            .iter()
            .find(|d| d.range.contains(&key))
            .ok_or_else(|| ApiError::Unavailable("no shard holds the key".into()).to_status())?;
        let route = pb::ShardRoute::from(&st.route(desc));
        Ok(Response::new(pb::LocateResponse { route: Some(route), revision: st.revision }))
    }

    async fn list_shards(
        &self,
        request: Request<pb::PdListShardsRequest>,
    ) -> Result<Response<pb::PdListShardsResponse>, Status> {
        let r = request.into_inner();
        let mut st = self.state.lock().unwrap();
        st.pd_call(self.member, |c| c.list_shards += 1)?;
        let mut routes = st.routes_in(&KeyRange::new(r.start, r.end));
        if r.limit > 0 {
            routes.truncate(r.limit as usize);
        }
        let shards = routes.iter().map(pb::ShardRoute::from).collect();
        Ok(Response::new(pb::PdListShardsResponse { shards, revision: st.revision }))
    }

    type WatchShardsStream = ReceiverStream<Result<pb::ShardMapEvent, Status>>;

    async fn watch_shards(
        &self,
        request: Request<pb::WatchShardsRequest>,
    ) -> Result<Response<Self::WatchShardsStream>, Status> {
        let from = request.into_inner().from_revision;
        let mut st = self.state.lock().unwrap();
        st.pd_call(self.member, |c| c.watch += 1)?;
        let (tx, rx) = mpsc::channel(WATCH_BUFFER_EVENTS);
        let backlog: Vec<ShardMapEvent> = if from == 0 {
            let shards = st.routes_in(&KeyRange::full());
            vec![ShardMapEvent { revision: st.revision, full: true, shards, removed: Vec::new() }]
        } else {
            st.events.iter().filter(|e| e.revision > from).cloned().collect()
        };
        if backlog.len() > WATCH_BUFFER_EVENTS {
            return Err(Status::resource_exhausted("mock PD: backlog too long"));
        }
        for event in &backlog {
            tx.try_send(Ok(pb::ShardMapEvent::from(event))).expect("the backlog fits the buffer");
        }
        st.watchers.push(Watcher { member: self.member, tx });
        Ok(Response::new(ReceiverStream::new(rx)))
    }

    async fn get_cluster(&self, _: Request<pb::GetClusterRequest>) -> Result<Response<pb::GetClusterResponse>, Status> {
        let mut st = self.state.lock().unwrap();
        st.pd_call(self.member, |c| c.get_cluster += 1)?;
        Ok(Response::new(pb::GetClusterResponse::from(&st.cluster_status())))
    }

    async fn set_setting(&self, _: Request<pb::SetSettingRequest>) -> Result<Response<pb::SetSettingResponse>, Status> {
        Err(Status::unimplemented("not in the mock"))
    }

    async fn create_operator(
        &self,
        _: Request<pb::CreateOperatorRequest>,
    ) -> Result<Response<pb::CreateOperatorResponse>, Status> {
        Err(Status::unimplemented("not in the mock"))
    }

    async fn list_operators(
        &self,
        _: Request<pb::ListOperatorsRequest>,
    ) -> Result<Response<pb::ListOperatorsResponse>, Status> {
        Err(Status::unimplemented("not in the mock"))
    }

    async fn set_node_state(
        &self,
        _: Request<pb::SetNodeStateRequest>,
    ) -> Result<Response<pb::SetNodeStateResponse>, Status> {
        Err(Status::unimplemented("not in the mock"))
    }

    async fn rebalance_status(
        &self,
        _: Request<pb::RebalanceStatusRequest>,
    ) -> Result<Response<pb::RebalanceStatusResponse>, Status> {
        Err(Status::unimplemented("not in the mock"))
    }
}

/// The shape of a mock cluster.
pub struct Spec {
    pub nodes: u64,
    /// Split points: shards 1, 2, ... cover `["", s1)`, `[s1, s2)`, ..., `[sn, +inf)`.
    pub splits: Vec<&'static [u8]>,
    pub pd_members: usize,
}

pub struct Cluster {
    pub state: Arc<Mutex<State>>,
    /// Node addresses; node `i + 1` is at `addrs[i]`.
    pub addrs: Vec<String>,
    /// PD member addresses, member `i` at `pd_addrs[i]`.
    pub pd_addrs: Vec<String>,
}

async fn listen() -> (tokio::net::TcpListener, String) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    (listener, addr)
}

/// Starts nodes 1 and 2 and one PD member. Shard 1 = ["", "m") led by node 2, shard 2 =
/// ["m", +inf) led by node 1; both nodes host both shards.
pub async fn start_cluster() -> Cluster {
    start(Spec { nodes: 2, splits: vec![b"m"], pd_members: 1 }).await
}

/// Starts a cluster of `spec`. Every node hosts every shard; shard `i` is led by node
/// `i % nodes + 1`. The map starts at revision 1.
pub async fn start(spec: Spec) -> Cluster {
    let state = Arc::new(Mutex::new(State::default()));
    let mut addrs = Vec::new();
    for n in 1..=spec.nodes {
        let id = NodeId(n);
        let (listener, addr) = listen().await;
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
    let mut pd_addrs = Vec::new();
    for member in 0..spec.pd_members {
        let (listener, addr) = listen().await;
        pd_addrs.push(addr);
        let pd = MockPd { member, state: state.clone() };
        tokio::spawn(
            tonic::transport::Server::builder()
                .add_service(PdServer::new(pd))
                .serve_with_incoming(tonic::transport::server::TcpIncoming::from(listener)),
        );
    }
    {
        let mut st = state.lock().unwrap();
        let replicas: Vec<ReplicaDescriptor> = (1..=spec.nodes)
            .map(|n| ReplicaDescriptor {
                node: NodeId(n),
                addr: addrs[n as usize - 1].clone(),
                role: ReplicaRole::Voter,
            })
            .collect();
        let epoch = Epoch { conf_ver: 1, version: 1 };
        let mut bounds: Vec<Vec<u8>> = vec![Vec::new()];
        bounds.extend(spec.splits.iter().map(|s| s.to_vec()));
        bounds.push(Vec::new());
        for (i, w) in bounds.windows(2).enumerate() {
            let id = ShardId(i as u64 + 1);
            st.shards.push(ShardDescriptor {
                id,
                range: KeyRange::new(w[0].clone(), w[1].clone()),
                epoch,
                replicas: replicas.clone(),
            });
            st.leaders.insert(id, NodeId(id.0 % spec.nodes + 1));
        }
        st.revision = 1;
        st.pd_calls = vec![PdCalls::default(); spec.pd_members];
        st.pd_down = vec![false; spec.pd_members];
    }
    Cluster { state, addrs, pd_addrs }
}

impl Cluster {
    pub fn st(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap()
    }

    /// The PD endpoints as one comma-separated string.
    pub fn pd_list(&self) -> String {
        self.pd_addrs.join(",")
    }

    /// PD calls summed over the members.
    pub fn pd_calls(&self) -> PdCalls {
        self.st().pd_calls.iter().fold(PdCalls::default(), |a, c| PdCalls {
            list_shards: a.list_shards + c.list_shards,
            locate: a.locate + c.locate,
            watch: a.watch + c.watch,
            get_cluster: a.get_cluster + c.get_cluster,
        })
    }

    /// Splits shard `shard` at `at` into itself (left) and `new_id` (right), both at the
    /// next epoch version, with the same replicas and leader. Not published.
    pub fn split(&self, shard: u64, at: &[u8], new_id: u64) {
        let mut st = self.st();
        let i = st.shards.iter().position(|d| d.id == ShardId(shard)).expect("shard exists");
        let old = st.shards[i].clone();
        assert!(old.range.contains(at) && at != old.range.start.as_slice(), "split point inside the shard");
        let epoch = Epoch { conf_ver: old.epoch.conf_ver, version: old.epoch.version + 1 };
        st.shards[i].range.end = at.to_vec();
        st.shards[i].epoch = epoch;
        st.shards.push(ShardDescriptor {
            id: ShardId(new_id),
            range: KeyRange::new(at.to_vec(), old.range.end.clone()),
            epoch,
            replicas: old.replicas,
        });
        let leader = st.leaders[&old.id];
        st.leaders.insert(ShardId(new_id), leader);
    }

    /// Moves the leadership of `shard` to `node`. Not published.
    pub fn move_leader(&self, shard: u64, node: u64) {
        self.st().leaders.insert(ShardId(shard), NodeId(node));
    }

    /// Takes node `node` down: from now on it answers every request with UNAVAILABLE.
    /// Leaderships do not move by themselves (see [`Cluster::elect_after`]).
    pub fn kill_node(&self, node: u64) {
        self.st().down.push(NodeId(node));
    }

    /// Holds an election in `shard`: the next `requests` Kv requests for it are answered
    /// under the current leadership (followers keep naming the leader, even a dead one),
    /// then the first one that reaches a live node makes that node the leader. Not
    /// published.
    pub fn elect_after(&self, shard: u64, requests: usize) {
        self.st().elections.insert(ShardId(shard), requests);
    }

    /// Publishes the current routes of `shards` (and the removal of `removed`) as the next
    /// revision's event to every live watcher; returns the revision.
    pub fn publish(&self, shards: &[u64], removed: &[u64]) -> u64 {
        let mut st = self.st();
        st.revision += 1;
        let routes = shards
            .iter()
            .map(|id| {
                let desc = st.shards.iter().find(|d| d.id == ShardId(*id)).expect("shard exists");
                st.route(desc)
            })
            .collect();
        let event = ShardMapEvent {
            revision: st.revision,
            full: false,
            shards: routes,
            removed: removed.iter().map(|id| ShardId(*id)).collect(),
        };
        st.events.push(event.clone());
        let wire = pb::ShardMapEvent::from(&event);
        // A watcher whose buffer is full or whose client left is dropped.
        st.watchers.retain(|w| w.tx.try_send(Ok(wire.clone())).is_ok());
        st.revision
    }

    /// Takes PD member `member` away: its watch streams end and its calls fail.
    pub fn kill_pd(&self, member: usize) {
        let mut st = self.st();
        st.pd_down[member] = true;
        st.watchers.retain(|w| w.member != member);
    }

    /// Watch streams whose client is still subscribed.
    pub fn open_watchers(&self) -> usize {
        self.st().watchers.iter().filter(|w| !w.tx.is_closed()).count()
    }

    /// Kv requests received since the `since`-th one.
    pub fn received_since(&self, since: usize) -> Vec<Received> {
        self.st().received[since..].to_vec()
    }

    pub fn received_count(&self) -> usize {
        self.st().received.len()
    }

    /// The shard whose range holds `key` in the mock's current map.
    pub fn shard_of(&self, key: &[u8]) -> ShardId {
        self.st().shards.iter().find(|d| d.range.contains(key)).expect("the map covers the key space").id
    }

    pub fn leader_of(&self, shard: ShardId) -> NodeId {
        self.st().leaders[&shard]
    }
}

/// Backoff short enough for tests, deadline long enough for slow machines.
pub fn fast_config() -> ClientConfig {
    ClientConfig {
        backoff_base: Duration::from_millis(5),
        backoff_cap: Duration::from_millis(20),
        operation_timeout: Duration::from_secs(10),
        ..Default::default()
    }
}

/// Waits until `cond` holds, polling; panics after 10 s.
pub async fn wait_until(what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while !cond() {
        assert!(tokio::time::Instant::now() < deadline, "timed out waiting until {what}");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// An address nothing listens on.
pub async fn dead_addr() -> String {
    let (listener, addr) = listen().await;
    drop(listener);
    addr
}
