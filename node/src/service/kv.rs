//! `cairn.v1.Kv` over [`crate::shard::kv::Kv`].

use std::sync::Arc;
use std::time::Instant;

use cairn_proto::pb;
use cairn_proto::{ApiError, Route, Session};
use tonic::{Request, Response, Status};

use crate::node::NodeShared;
use crate::shard::kv::ScanSpec;

pub struct KvService {
    pub node: Arc<NodeShared>,
}

fn finish<T>(op: &'static str, started: Instant, r: Result<T, ApiError>) -> Result<Response<T>, Status> {
    let code = match &r {
        Ok(_) => "OK",
        Err(e) => e.code().as_str(),
    };
    crate::metrics::request(op, code, started.elapsed());
    r.map(Response::new).map_err(|e| e.to_status())
}

#[tonic::async_trait]
impl pb::kv_server::Kv for KvService {
    async fn get(&self, req: Request<pb::GetRequest>) -> Result<Response<pb::GetResponse>, Status> {
        let started = Instant::now();
        let r = async {
            let req = req.into_inner();
            let route = Route::try_from(req.route)?;
            let doc = self.node.kv.get(route, req.key, req.stale_ok).await?;
            Ok(pb::GetResponse { document: doc.map(Into::into) })
        }
        .await;
        finish("get", started, r)
    }

    async fn put(&self, req: Request<pb::PutRequest>) -> Result<Response<pb::PutResponse>, Status> {
        let started = Instant::now();
        let r = async {
            let req = req.into_inner();
            let route = Route::try_from(req.route)?;
            let version =
                self.node.kv.put(route, Session::from(req.session), req.key, req.value, req.expected_version).await?;
            Ok(pb::PutResponse { version })
        }
        .await;
        finish("put", started, r)
    }

    async fn delete(&self, req: Request<pb::DeleteRequest>) -> Result<Response<pb::DeleteResponse>, Status> {
        let started = Instant::now();
        let r = async {
            let req = req.into_inner();
            let route = Route::try_from(req.route)?;
            let (deleted, version) =
                self.node.kv.delete(route, Session::from(req.session), req.key, req.expected_version).await?;
            Ok(pb::DeleteResponse { deleted, version })
        }
        .await;
        finish("delete", started, r)
    }

    async fn scan(&self, req: Request<pb::ScanRequest>) -> Result<Response<pb::ScanResponse>, Status> {
        let started = Instant::now();
        let r = async {
            let req = req.into_inner();
            let route = Route::try_from(req.route)?;
            let spec = ScanSpec {
                start: req.start,
                end: req.end,
                prefix: req.prefix,
                limit: req.limit,
                stale_ok: req.stale_ok,
                keys_only: req.keys_only,
            };
            let (docs, next) = self.node.kv.scan(route, spec).await?;
            Ok(pb::ScanResponse { documents: docs.into_iter().map(Into::into).collect(), continue_from: next })
        }
        .await;
        finish("scan", started, r)
    }

    async fn batch_get(&self, req: Request<pb::BatchGetRequest>) -> Result<Response<pb::BatchGetResponse>, Status> {
        let started = Instant::now();
        let r = async {
            let req = req.into_inner();
            let route = Route::try_from(req.route)?;
            let docs = self.node.kv.batch_get(route, req.keys, req.stale_ok).await?;
            Ok(pb::BatchGetResponse {
                items: docs
                    .into_iter()
                    .map(|d| pb::BatchGetItem { found: d.is_some(), document: d.map(Into::into) })
                    .collect(),
            })
        }
        .await;
        finish("batch_get", started, r)
    }

    async fn batch_put(&self, req: Request<pb::BatchPutRequest>) -> Result<Response<pb::BatchPutResponse>, Status> {
        let started = Instant::now();
        let r = async {
            let req = req.into_inner();
            let route = Route::try_from(req.route)?;
            let items = req.items.into_iter().map(|i| (i.key, i.value)).collect();
            let version = self.node.kv.batch_put(route, Session::from(req.session), items).await?;
            Ok(pb::BatchPutResponse { version })
        }
        .await;
        finish("batch_put", started, r)
    }
}
