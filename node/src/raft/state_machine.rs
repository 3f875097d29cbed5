//! `RaftStateMachine` for one shard. The state is the shard's slice of the
//! node's database; applying sends a batch to the storage writer, which runs the
//! document logic in its transaction and returns one response per entry.
//! Building a snapshot is opening a read transaction.

use std::io;
use std::sync::Arc;

use cairn_proto::{ReplicaDescriptor, ReplicaRole, ShardDescriptor, ShardId};
use futures::{Stream, StreamExt};
use openraft::storage::{EntryResponder, RaftStateMachine};
use openraft::{EntryPayload, OptionalSend, RaftSnapshotBuilder};
use tokio::sync::watch;

use super::types::{LogId, Snapshot, SnapshotMeta, StoredMembership, TypeConfig};
use crate::storage::apply::{ApplyBatch, ApplyItem};
use crate::storage::codec::{decode, encode};
use crate::storage::snapshot::SnapshotView;
use crate::storage::{Storage, WriteOp};

/// Entries applied per writer round trip; bounds the memory of one apply call.
const APPLY_CHUNK_ENTRIES: usize = 512;

pub struct StateMachine {
    shard: ShardId,
    storage: Arc<Storage>,
    /// The shard's current descriptor, published for request routing checks.
    descriptor: watch::Sender<ShardDescriptor>,
}

impl StateMachine {
    pub fn new(shard: ShardId, storage: Arc<Storage>, descriptor: watch::Sender<ShardDescriptor>) -> Self {
        Self { shard, storage, descriptor }
    }

    fn refresh_descriptor(&self) -> io::Result<()> {
        if let Some(record) = self.storage.shard_record(self.shard)? {
            self.descriptor.send_if_modified(|d| {
                if *d != record.descriptor {
                    *d = record.descriptor.clone();
                    true
                } else {
                    false
                }
            });
        }
        Ok(())
    }
}

/// The replicas a membership config describes.
pub fn replicas_of(membership: &openraft::Membership<u64, openraft::BasicNode>) -> Vec<ReplicaDescriptor> {
    let addr = |id: u64| membership.get_node(&id).map(|n| n.addr.clone()).unwrap_or_default();
    let mut out: Vec<ReplicaDescriptor> = membership
        .voter_ids()
        .map(|id| ReplicaDescriptor { node: cairn_proto::NodeId(id), addr: addr(id), role: ReplicaRole::Voter })
        .collect();
    out.extend(membership.learner_ids().map(|id| ReplicaDescriptor {
        node: cairn_proto::NodeId(id),
        addr: addr(id),
        role: ReplicaRole::Learner,
    }));
    out
}

/// The meta of a view; `last_log_id` is `None` when nothing is applied yet.
fn snapshot_meta_of(view: &SnapshotView) -> io::Result<SnapshotMeta> {
    let last_log_id: Option<LogId> = match &view.record.applied_log_id {
        Some(applied) => Some(decode(applied).map_err(io::Error::from)?),
        None => None,
    };
    let last_membership: StoredMembership = match &view.record.membership {
        Some(m) => decode(m).map_err(io::Error::from)?,
        None => StoredMembership::default(),
    };
    Ok(SnapshotMeta { last_log_id, last_membership })
}

pub struct SnapshotBuilder {
    shard: ShardId,
    storage: Arc<Storage>,
}

impl RaftSnapshotBuilder<TypeConfig> for SnapshotBuilder {
    type SnapshotData = SnapshotView;

    async fn build_snapshot(&mut self) -> Result<Snapshot, io::Error> {
        let view = self.storage.snapshot_view(self.shard)?.ok_or_else(|| io::Error::other("shard record missing"))?;
        let meta = snapshot_meta_of(&view)?;
        Ok(Snapshot { meta, snapshot: view })
    }
}

impl RaftStateMachine<TypeConfig> for StateMachine {
    type SnapshotData = SnapshotView;
    type SnapshotBuilder = SnapshotBuilder;

    async fn applied_state(&mut self) -> Result<(Option<LogId>, StoredMembership), io::Error> {
        let record = self.storage.shard_record(self.shard)?.ok_or_else(|| io::Error::other("shard record missing"))?;
        let applied = match &record.applied_log_id {
            Some(b) => Some(decode::<LogId>(b).map_err(io::Error::from)?),
            None => None,
        };
        let membership = match &record.membership {
            Some(b) => decode::<StoredMembership>(b).map_err(io::Error::from)?,
            None => StoredMembership::default(),
        };
        Ok((applied, membership))
    }

    async fn apply<Strm>(&mut self, mut entries: Strm) -> Result<(), io::Error>
    where
        Strm: Stream<Item = Result<EntryResponder<TypeConfig>, io::Error>> + Unpin + OptionalSend,
    {
        let mut items = Vec::new();
        let mut responders = Vec::new();
        let mut last: Option<LogId> = None;
        let mut membership: Option<Vec<u8>> = None;
        let mut membership_changed = false;
        let mut joint = false;
        loop {
            let next = entries.next().await;
            let done = next.is_none();
            if let Some(item) = next {
                let (entry, responder) = item?;
                let index = entry.log_id.index;
                items.push(match entry.payload {
                    EntryPayload::Blank => ApplyItem::Noop { index },
                    EntryPayload::Normal(cmd) => ApplyItem::Command { index, cmd },
                    EntryPayload::Membership(m) => {
                        joint |= m.get_joint_config().len() > 1;
                        let replicas = replicas_of(&m);
                        membership = Some(encode(&StoredMembership::new(Some(entry.log_id), m)));
                        membership_changed = true;
                        ApplyItem::Membership { index, replicas }
                    }
                });
                responders.push(responder);
                last = Some(entry.log_id);
            }
            if items.len() >= APPLY_CHUNK_ENTRIES || (done && !items.is_empty()) {
                let Some(last_id) = last else { break };
                let batch = ApplyBatch {
                    items: std::mem::take(&mut items),
                    last_applied_log_id: encode(&last_id),
                    membership: membership.take(),
                };
                if std::mem::take(&mut joint) {
                    crate::test_hooks::before_joint_apply(self.storage.path(), self.shard).await;
                }
                let shard = self.shard.0;
                let responses = self.storage.call(|done| WriteOp::Apply { shard, batch, done }).await?;
                for (responder, response) in std::mem::take(&mut responders).into_iter().zip(responses) {
                    if let Some(r) = responder {
                        r.send(response);
                    }
                }
            }
            if done {
                break;
            }
        }
        if membership_changed {
            self.refresh_descriptor()?;
        }
        Ok(())
    }

    async fn get_snapshot_builder(&mut self) -> Self::SnapshotBuilder {
        SnapshotBuilder { shard: self.shard, storage: self.storage.clone() }
    }

    async fn install_snapshot(&mut self, meta: &SnapshotMeta, snapshot: SnapshotView) -> Result<(), io::Error> {
        let mut record = snapshot.record.clone();
        record.applied_index = meta.last_log_id.map(|l| l.index).unwrap_or(0);
        record.applied_log_id = meta.last_log_id.map(|l| encode(&l));
        record.membership = Some(encode(&meta.last_membership));
        record.descriptor.replicas = replicas_of(meta.last_membership.membership());
        drop(snapshot);
        self.storage.call(|done| WriteOp::InstallSnapshot { record, done }).await?;
        self.refresh_descriptor()?;
        tracing::info!(shard = %self.shard, last_log_id = ?meta.last_log_id, "installed snapshot");
        Ok(())
    }

    async fn get_current_snapshot(&mut self) -> Result<Option<Snapshot>, io::Error> {
        let Some(view) = self.storage.snapshot_view(self.shard)? else {
            return Ok(None);
        };
        if view.record.applied_log_id.is_none() {
            return Ok(None);
        }
        let meta = snapshot_meta_of(&view)?;
        Ok(Some(Snapshot { meta, snapshot: view }))
    }
}
