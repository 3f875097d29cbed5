//! Points where a test can hold a node still, to crash it in a precise state
//! (the crash-point tests of RFC 003). Nothing registers a hook outside tests;
//! without one a point costs a mutex lock, and points sit only on rare paths
//! (membership changes).
//!
//! Hooks are keyed by the node's database path, so clusters of concurrent
//! tests in one process do not see each other's hooks.

use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use cairn_proto::ShardId;
use tokio::sync::oneshot;

struct JointPause {
    db: PathBuf,
    shard: ShardId,
    pause: Duration,
    reached: oneshot::Sender<()>,
}

static JOINT_PAUSES: Mutex<Vec<JointPause>> = Mutex::new(Vec::new());

/// Once: the next time the node whose database is at `db` applies a joint
/// membership entry of `shard`, the apply waits `pause` first (so the change
/// cannot leave the joint configuration from this node meanwhile). The
/// receiver fires when the pause begins.
pub fn pause_before_joint_apply(db: &Path, shard: ShardId, pause: Duration) -> oneshot::Receiver<()> {
    let (reached, rx) = oneshot::channel();
    let mut pauses = JOINT_PAUSES.lock().expect("test hook lock");
    pauses.push(JointPause { db: db.to_path_buf(), shard, pause, reached });
    rx
}

/// Called by the state machine before it applies a joint membership entry.
pub(crate) async fn before_joint_apply(db: &Path, shard: ShardId) {
    let hit = {
        let mut pauses = JOINT_PAUSES.lock().expect("test hook lock");
        let at = pauses.iter().position(|p| p.db == db && p.shard == shard);
        at.map(|i| pauses.swap_remove(i))
    };
    if let Some(p) = hit {
        tracing::warn!(%shard, pause_ms = p.pause.as_millis() as u64, "test hook: pausing before a joint membership apply");
        // The test may have stopped listening; the pause happens regardless.
        let _ = p.reached.send(());
        tokio::time::sleep(p.pause).await;
    }
}

static LOSE_UNSYNCED: Mutex<Vec<PathBuf>> = Mutex::new(Vec::new());

/// From now on, the database at `db` (when opened) behaves like a disk that
/// loses power when its node crashes: writes not yet synced are lost.
pub fn lose_unsynced_writes(db: &Path) {
    LOSE_UNSYNCED.lock().expect("test hook lock").push(db.to_path_buf());
}

/// Whether the database at `db` was marked by [`lose_unsynced_writes`].
pub(crate) fn loses_unsynced_writes(db: &Path) -> bool {
    LOSE_UNSYNCED.lock().expect("test hook lock").iter().any(|p| p == db)
}

static HELD_DURABLE: Mutex<Vec<PathBuf>> = Mutex::new(Vec::new());
/// Holds in force anywhere: the writer checks this on every batch, so without
/// a hold the check is one atomic load, no lock.
static HELD_DURABLE_COUNT: AtomicUsize = AtomicUsize::new(0);

/// Holds back the durable commits of the node whose database is at `db`
/// until the returned guard is dropped: its log appends, votes, truncations
/// and purges wait in its writer (appended entries stay readable in memory,
/// as they are while a commit is in flight), while applies still commit. A
/// crash meanwhile loses them.
#[must_use = "durable commits resume when the guard is dropped"]
pub fn hold_durable_commits(db: &Path) -> DurableHold {
    HELD_DURABLE.lock().expect("test hook lock").push(db.to_path_buf());
    HELD_DURABLE_COUNT.fetch_add(1, Ordering::AcqRel);
    DurableHold { db: db.to_path_buf() }
}

/// Releases [`hold_durable_commits`] when dropped.
pub struct DurableHold {
    db: PathBuf,
}

impl Drop for DurableHold {
    fn drop(&mut self) {
        HELD_DURABLE.lock().expect("test hook lock").retain(|p| p != &self.db);
        HELD_DURABLE_COUNT.fetch_sub(1, Ordering::AcqRel);
    }
}

/// Whether a test holds back the durable commits of the database at `db`.
pub(crate) fn durable_commits_held(db: &Path) -> bool {
    HELD_DURABLE_COUNT.load(Ordering::Acquire) > 0
        && HELD_DURABLE.lock().expect("test hook lock").iter().any(|p| p == db)
}
