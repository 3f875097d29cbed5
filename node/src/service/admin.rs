//! `cairn.v1.Admin`: what this node hosts and its counters; link faults for
//! chaos runs on nodes started with `fault-injection = true`.

use std::sync::Arc;

use cairn_proto::{ApiError, pb};
use tonic::{Request, Response, Status};

use crate::node::NodeShared;
use crate::transport::faults::LinkRule;

pub struct AdminService {
    pub node: Arc<NodeShared>,
    /// `NodeConfig::fault_injection`: whether `SetLinkFaults` is accepted.
    pub fault_injection: bool,
}

/// Link faults one request may set (one per peer; clusters are small).
const LINK_FAULTS_MAX: usize = 64;
/// Longest delay a link fault may add to a message.
const LINK_DELAY_MAX_MS: u32 = 10_000;

/// Checks a request's link faults; nothing is applied unless all are valid.
fn link_rules(me: u64, links: &[pb::LinkFault]) -> Result<Vec<(u64, LinkRule)>, ApiError> {
    if links.len() > LINK_FAULTS_MAX {
        return Err(ApiError::InvalidArgument(format!(
            "{} link faults exceed the limit of {LINK_FAULTS_MAX}",
            links.len()
        )));
    }
    let mut seen = std::collections::HashSet::new();
    links
        .iter()
        .map(|l| {
            let bad = |why: String| Err(ApiError::InvalidArgument(format!("link fault to node {}: {why}", l.to_node)));
            if l.to_node == me || l.to_node == 0 {
                return bad("not a peer".into());
            }
            if !seen.insert(l.to_node) {
                return bad("given twice".into());
            }
            if l.drop_per_mille > 1000 {
                return bad(format!("drop_per_mille {} is above 1000", l.drop_per_mille));
            }
            if l.delay_min_ms > l.delay_max_ms || l.delay_max_ms > LINK_DELAY_MAX_MS {
                return bad(format!(
                    "delay {}..={} ms is not a range within 0..={LINK_DELAY_MAX_MS} ms",
                    l.delay_min_ms, l.delay_max_ms
                ));
            }
            let rule = LinkRule {
                cut: l.cut,
                drop_probability: f64::from(l.drop_per_mille) / 1000.0,
                delay_ms: (l.delay_max_ms > 0).then_some((u64::from(l.delay_min_ms), u64::from(l.delay_max_ms))),
                snapshots_cut: l.snapshots_cut,
            };
            Ok((l.to_node, rule))
        })
        .collect()
}

#[tonic::async_trait]
impl pb::admin_server::Admin for AdminService {
    async fn list_shards(&self, _: Request<pb::ListShardsRequest>) -> Result<Response<pb::ListShardsResponse>, Status> {
        let shards = self.node.shard_statuses().iter().map(Into::into).collect();
        Ok(Response::new(pb::ListShardsResponse { node_id: self.node.id.0, shards }))
    }

    async fn node_stats(&self, _: Request<pb::NodeStatsRequest>) -> Result<Response<pb::NodeStatsResponse>, Status> {
        Ok(Response::new((&self.node.stats()).into()))
    }

    async fn set_link_faults(
        &self,
        req: Request<pb::SetLinkFaultsRequest>,
    ) -> Result<Response<pb::SetLinkFaultsResponse>, Status> {
        if !self.fault_injection {
            return Err(ApiError::InvalidArgument(
                "fault injection is off on this node (it is for chaos testing: fault-injection = true)".into(),
            )
            .to_status());
        }
        let req = req.into_inner();
        let rules = link_rules(self.node.id.0, &req.links).map_err(|e| e.to_status())?;
        let faults = self.node.transport.faults();
        faults.clear();
        faults.seed(req.seed);
        for (peer, rule) in rules {
            faults.set_link(peer, rule);
        }
        tracing::warn!(links = req.links.len(), seed = req.seed, "link faults set");
        Ok(Response::new(pb::SetLinkFaultsResponse {}))
    }

    async fn nudge(&self, req: Request<pb::NudgeRequest>) -> Result<Response<pb::NudgeResponse>, Status> {
        let from = req.into_inner().cluster_id;
        let ours = self.node.cluster_id;
        if from != 0 && ours != 0 && from != ours {
            return Err(ApiError::InvalidArgument(format!(
                "nudge from the PD of cluster {from:#x}; this node belongs to cluster {ours:#x}"
            ))
            .to_status());
        }
        self.node.report_soon.notify_one();
        Ok(Response::new(pb::NudgeResponse {}))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn link(to: u64) -> pb::LinkFault {
        pb::LinkFault { to_node: to, ..Default::default() }
    }

    #[test]
    fn link_faults_are_checked_before_any_is_applied() {
        let ok = link_rules(1, &[pb::LinkFault { drop_per_mille: 250, delay_min_ms: 5, delay_max_ms: 50, ..link(2) }])
            .expect("valid");
        assert_eq!(ok[0].1, LinkRule { drop_probability: 0.25, delay_ms: Some((5, 50)), ..LinkRule::default() });
        for (bad, why) in [
            (vec![link(1)], "not a peer"),
            (vec![link(2), link(2)], "given twice"),
            (vec![pb::LinkFault { drop_per_mille: 1001, ..link(2) }], "above 1000"),
            (vec![pb::LinkFault { delay_min_ms: 9, delay_max_ms: 3, ..link(2) }], "not a range"),
            (vec![pb::LinkFault { delay_max_ms: 10_001, ..link(2) }], "not a range"),
            ((2..70).map(link).collect(), "exceed the limit"),
        ] {
            let err = link_rules(1, &bad).expect_err(why).to_string();
            assert!(err.contains(why), "{err}");
        }
    }
}
