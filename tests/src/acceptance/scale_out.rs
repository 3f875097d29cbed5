//! Scale out (issue 4): a 3-node playground with the shards and documents
//! loaded; two more nodes join; while the clients write and read, the PD moves
//! replicas until every node holds within one of the mean replica count; no
//! client call fails; every acknowledged write is readable afterwards; the moved
//! replicas' documents are gone from the source nodes' databases.

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::time::Instant;

use super::events::Events;
use super::procs::Binaries;
use super::report::Summary;
use super::setup::{self, Env, Options};

const JOINING_NODES: usize = 2;

pub async fn run(opts: Options, bins: Binaries, dir: PathBuf) -> anyhow::Result<Summary> {
    let mut summary = Summary::new("scale-out", dir.clone());
    summary
        .setting("cluster", format!("playground of 3 nodes, {} shards, then {JOINING_NODES} nodes join", opts.shards));
    summary.setting(
        "workload",
        format!(
            "{} clients, each a put of a fresh {} B document then a get of one of its acknowledged keys, {} times/s",
            opts.clients, opts.value_bytes, opts.client_rate
        ),
    );
    let started = Instant::now();
    let mut env = Env::start(opts.clone(), bins, dir).await?;
    summary.timing("playground ready (3 nodes up, every shard)", started.elapsed());
    let plan = env.load(&mut summary).await?;
    let before = setup::placement(&env.pd_map().await?);

    let mut events = Events::start(&env.pd).await?;
    let clients = env.start_clients().await?;
    let join_at = Instant::now();
    let ids = env.join(JOINING_NODES).await?;
    summary.timing(&format!("nodes {ids:?} joined (registered and up)"), join_at.elapsed());
    let nodes_total = 3 + JOINING_NODES;
    let watched = env
        .watch("balancing", &mut events, Some(&clients), opts.timeout, |s| {
            let up = s.rebalance.nodes.iter().filter(|n| n.state == "up").count();
            let done = up == nodes_total
                && s.rebalance.balanced
                && s.rebalance.replica_spread <= 1
                && s.within_one_of_mean()
                && s.operators.is_empty();
            done.then_some(())
        })
        .await;
    let (balanced_after, balanced) = match watched {
        Ok((_, _, snapshot)) => (join_at.elapsed(), Some(snapshot)),
        Err(e) => {
            eprintln!("{e:#}");
            summary.check("the PD balanced the cluster", false, format!("{e:#}"));
            (join_at.elapsed(), None)
        }
    };
    summary.timing("join -> balanced (every node within +-1 of the mean, no operator)", balanced_after);
    let report = clients.stop().await?;
    let client_failures = report.counts.failed();
    summary.check(
        "no client call failed",
        client_failures == 0,
        format!("{} calls, {client_failures} failed", report.counts.puts_ok + report.counts.gets_ok + client_failures),
    );
    setup::verify_acked(&env, plan, &report, &mut summary).await?;
    summary.clients = Some(report);

    setup::settle(&mut env, &mut events, &mut summary).await;
    let map = env.pd_map().await?;
    let after = setup::placement(&map);
    if let Some(s) = &balanced {
        let final_status = env.ctl.rebalance().await?;
        summary.check(
            "every node holds within +-1 of the mean replica count",
            s.within_one_of_mean() && final_status.replica_spread <= 1,
            format!(
                "replicas per node {} (mean {:.1}, spread {}); at the stop: {}",
                s.rebalance.replica_counts(),
                s.rebalance.mean_replicas,
                s.rebalance.replica_spread,
                final_status.replica_counts()
            ),
        );
    }
    summary.operators = events.tally();
    summary.missed_events = events.missed;

    let (stops, clean) = env.stop_all().await;
    summary.section("stop (SIGTERM)", stops);
    summary.observe("every node exited 0 after SIGTERM", clean, "see the stop section");
    let dbs = env.inspect_all(&map)?;
    setup::check_databases(&mut summary, &map, &dbs);

    // The replicas that moved away: gone from their source, with a tombstone.
    let mut moved = Vec::new();
    let mut left_behind = Vec::new();
    for (node, shards) in &before {
        let now: BTreeSet<u64> = after.get(node).cloned().unwrap_or_default();
        for shard in shards.difference(&now) {
            moved.push((*node, *shard));
            let Some(db) = dbs.iter().find(|d| d.node == *node) else { continue };
            let mut problems = Vec::new();
            if db.records.contains_key(shard) {
                problems.push("record still there");
            }
            if !db.tombstones.contains_key(shard) {
                problems.push("no tombstone");
            }
            if db.orphan_shards.get(shard).copied().unwrap_or(0) > 0 {
                problems.push("documents still there");
            }
            if !problems.is_empty() {
                left_behind.push(format!("shard {shard} on node {node}: {}", problems.join(", ")));
            }
        }
    }
    summary.check(
        "the moved replicas' documents are gone from the source nodes' databases",
        !moved.is_empty() && left_behind.is_empty(),
        if left_behind.is_empty() {
            format!(
                "{} replicas moved off nodes 1-3; each source has no record, a tombstone and no document of it",
                moved.len()
            )
        } else {
            left_behind.join("; ")
        },
    );
    Ok(summary)
}
