//! The registry of hosted replicas. Read on every request, written only when a
//! replica is created or destroyed; a read-mostly map behind an `RwLock` whose
//! guard is never held across an await.

use std::collections::BTreeMap;
use std::sync::{Arc, RwLock};

use cairn_proto::{ShardDescriptor, ShardId};
use tokio::sync::watch;

use crate::raft::RaftGroup;

pub struct Replica {
    pub group: RaftGroup,
    /// The descriptor as of the last applied entry of this replica.
    pub descriptor: watch::Receiver<ShardDescriptor>,
}

impl Replica {
    pub fn shard(&self) -> ShardId {
        self.group.shard()
    }

    pub fn descriptor(&self) -> ShardDescriptor {
        self.descriptor.borrow().clone()
    }

    /// The configuration version this replica has applied (0 before its
    /// group's first membership entry or snapshot).
    pub fn conf_ver(&self) -> u64 {
        self.descriptor.borrow().epoch.conf_ver
    }
}

#[derive(Default)]
pub struct Registry {
    replicas: RwLock<BTreeMap<ShardId, Arc<Replica>>>,
}

impl Registry {
    pub fn get(&self, shard: ShardId) -> Option<Arc<Replica>> {
        self.replicas.read().expect("registry lock poisoned").get(&shard).cloned()
    }

    pub fn insert(&self, replica: Arc<Replica>) {
        self.replicas.write().expect("registry lock poisoned").insert(replica.shard(), replica);
    }

    pub fn remove(&self, shard: ShardId) -> Option<Arc<Replica>> {
        self.replicas.write().expect("registry lock poisoned").remove(&shard)
    }

    pub fn all(&self) -> Vec<Arc<Replica>> {
        self.replicas.read().expect("registry lock poisoned").values().cloned().collect()
    }

    pub fn len(&self) -> usize {
        self.replicas.read().expect("registry lock poisoned").len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}
