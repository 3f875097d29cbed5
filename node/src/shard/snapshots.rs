//! The snapshot task: openraft's own snapshot policy is off (it would purge
//! entries a member still needs, see [`crate::raft::snapshot_due`]); once a
//! second this task asks every hosted group whether a snapshot is due.

use std::sync::Arc;
use std::time::Duration;

use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::node::NodeShared;
use crate::raft::RaftSettings;

/// How often every group is checked (a metrics read each; a build only when due).
const CHECK_INTERVAL: Duration = Duration::from_secs(1);

pub fn spawn(node: Arc<NodeShared>, settings: &RaftSettings, cancel: CancellationToken) -> JoinHandle<()> {
    let settings = settings.clone();
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(CHECK_INTERVAL);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = cancel.cancelled() => return,
                _ = tick.tick() => {}
            }
            let due = async {
                let mut asked = 0;
                for replica in node.registry.all() {
                    if replica.group.snapshot_if_due(&settings).await {
                        asked += 1;
                    }
                }
                asked
            };
            let Some(asked) = cancel.run_until_cancelled(due).await else { return };
            if asked > 0 {
                tracing::debug!(groups = asked, "snapshots requested");
            }
        }
    })
}
