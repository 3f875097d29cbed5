//! openraft's own storage test suite against Cairn's redb log store and state
//! machine (sharing one database and writer, as on a real node).

use std::sync::Arc;

use cairn_node::raft::log_store::LogStore;
use cairn_node::raft::state_machine::StateMachine;
use cairn_node::raft::types::TypeConfig;
use cairn_node::storage::tables::ShardRecord;
use cairn_node::storage::{Storage, StorageConfig, WriteOp};
use cairn_proto::{Epoch, KeyRange, ShardDescriptor, ShardId};
use openraft::StorageError;
use openraft::testing::log::{StoreBuilder, Suite};

struct Builder;

impl StoreBuilder<TypeConfig, LogStore, StateMachine, tempfile::TempDir> for Builder {
    async fn build(&self) -> Result<(tempfile::TempDir, LogStore, StateMachine), StorageError<TypeConfig>> {
        let dir = tempfile::tempdir().expect("temp dir");
        let storage = Storage::open(&dir.path().join("db.redb"), StorageConfig::default()).expect("open storage");
        let shard = ShardId(7);
        let descriptor = ShardDescriptor {
            id: shard,
            range: KeyRange::full(),
            epoch: Epoch { conf_ver: 0, version: 1 },
            replicas: vec![],
        };
        let record = ShardRecord {
            descriptor: descriptor.clone(),
            data_id: 0,
            applied_index: 0,
            applied_log_id: None,
            membership: None,
            stats: Default::default(),
        };
        storage.call(|done| WriteOp::CreateShard { record, done }).await.expect("create shard");
        let log = LogStore::open(shard, storage.clone()).expect("log store");
        let (tx, _rx) = tokio::sync::watch::channel(descriptor);
        let sm = StateMachine::new(shard, Arc::clone(&storage), tx);
        Ok((dir, log, sm))
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn openraft_storage_suite() {
    let _ = tracing_subscriber::fmt().with_env_filter("openraft=info").with_test_writer().try_init();
    Suite::test_all(Builder).await.expect("openraft storage suite");
}
