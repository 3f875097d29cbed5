//! The shard-map watch of [`crate::Client`]: one background task that follows the
//! placement driver's `WatchShards` stream and applies every event to the client's
//! cached [`ShardMap`].
//!
//! Invariants:
//! - The task subscribes from the map's current revision, so after a re-subscription
//!   (the PD member went away, the stream failed) it sees every change it missed, or a
//!   `full` event that replaces the map; events already applied are skipped by
//!   [`ShardMap::apply_event`].
//! - Re-subscriptions are spaced by the client's jittered, capped backoff; the delay
//!   grows while they keep failing and starts over once an event arrives.
//! - The task holds no reference to the client, only the map and a [`PdClient`]; it ends
//!   as soon as its [`CancellationToken`] is cancelled, which the client does when its
//!   last clone is dropped or on [`crate::Client::shutdown`].
//! - The map lock is held only to apply one event, never across an await.

use std::sync::{Arc, PoisonError, RwLock};

use tokio::task::JoinHandle;
use tokio_stream::StreamExt;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use crate::config::ClientConfig;
use crate::pd_client::PdClient;
use crate::retry::backoff_delay;
use crate::shard_map::ShardMap;

/// Starts the watch task. It must be called inside a tokio runtime.
pub(crate) fn spawn(
    pd: PdClient,
    map: Arc<RwLock<ShardMap>>,
    config: &ClientConfig,
    cancel: CancellationToken,
) -> JoinHandle<()> {
    let (base, cap) = (config.backoff_base, config.backoff_cap);
    tokio::spawn(async move {
        tokio::select! {
            () = cancel.cancelled() => {}
            () = follow(&pd, &map, base, cap) => {}
        }
        debug!("stopped following the shard map");
    })
}

/// Follows the shard map until cancelled (it never returns on its own).
async fn follow(pd: &PdClient, map: &RwLock<ShardMap>, base: std::time::Duration, cap: std::time::Duration) {
    // Consecutive subscriptions that ended without delivering an event.
    let mut fruitless: u32 = 0;
    // Whether the last subscription attempt succeeded. Operations still work without the
    // watch (they ask the PD when a route fails), so an outage is worth one warning, not
    // an error.
    let mut subscribed = true;
    loop {
        let from = map.read().unwrap_or_else(PoisonError::into_inner).revision();
        match pd.watch_shards(from).await {
            Ok(mut stream) => {
                if !subscribed {
                    info!(from, "following shard-map changes again");
                }
                subscribed = true;
                debug!(from, "following shard-map changes");
                loop {
                    match stream.next().await {
                        Some(Ok(event)) => {
                            fruitless = 0;
                            let revision = event.revision;
                            let applied = map.write().unwrap_or_else(PoisonError::into_inner).apply_event(&event);
                            debug!(revision, full = event.full, applied, "shard-map event");
                        }
                        Some(Err(err)) => {
                            debug!(error = %err, "shard-map watch failed; subscribing again");
                            break;
                        }
                        None => {
                            debug!("shard-map watch ended; subscribing again");
                            break;
                        }
                    }
                }
            }
            Err(err) if subscribed => {
                subscribed = false;
                warn!(error = %err, "cannot follow shard-map changes; retrying");
            }
            Err(err) => debug!(error = %err, fruitless, "cannot follow shard-map changes; retrying"),
        }
        let delay = backoff_delay(fruitless, base, cap, &mut cairn_proto::sim::rng());
        fruitless = fruitless.saturating_add(1);
        tokio::time::sleep(delay).await;
    }
}
