//! Repair (issue 4): SIGKILL one of 5 nodes; after `max-node-down-time` every
//! shard has 3 voters on live nodes, with no acknowledged write lost.
//!
//! The victim is a node that joined (not a PD member), SIGKILLed while the
//! clients work; `max-node-down-time` is set to 10 s with `cairnctl config set`.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use super::events::Events;
use super::procs::Binaries;
use super::report::Summary;
use super::setup::{self, Options};

const MAX_NODE_DOWN_TIME: &str = "10s";
const REPLICATION_FACTOR: usize = 3;

pub async fn run(opts: Options, bins: Binaries, dir: PathBuf) -> anyhow::Result<Summary> {
    let mut summary = Summary::new("repair", dir.clone());
    summary.setting("cluster", format!("playground of 3 nodes + 2 joined, {} shards", opts.shards));
    summary.setting(
        "workload",
        format!(
            "{} clients, each a put of a fresh {} B document then a get of one of its acknowledged keys, {} times/s",
            opts.clients, opts.value_bytes, opts.client_rate
        ),
    );
    let (mut env, plan) = setup::loaded_five_nodes(opts.clone(), bins, dir, &mut summary).await?;
    let set = env.ctl.run(&["config", "set", "max-node-down-time", MAX_NODE_DOWN_TIME]).await?;
    anyhow::ensure!(set.success(), "`{}` failed: {}", set.command, set.stderr);
    summary.setting("cairnctl config set max-node-down-time", MAX_NODE_DOWN_TIME);

    let mut events = Events::start(&env.pd).await?;
    let clients = env.start_clients().await?;
    let victim = env.joined.last_mut().expect("two nodes joined");
    let victim_id = victim.id.expect("joined nodes have ids");
    let pid = victim.pid().unwrap_or(0);
    eprintln!("SIGKILL node {victim_id} (pid {pid}, {})", victim.addr);
    let killed_at = Instant::now();
    let status = victim.sigkill().await?;
    env.killed.insert(victim_id);
    summary.setting("victim", format!("node {victim_id} (pid {pid}, not a PD member), {status}"));

    let mut down_after: Option<Duration> = None;
    let mut repair_started: Option<Duration> = None;
    let watched = env
        .watch("repair", &mut events, Some(&clients), opts.timeout, |s| {
            if down_after.is_none() && !s.up(victim_id) {
                down_after = Some(killed_at.elapsed());
            }
            if repair_started.is_none() && s.operators.iter().any(|o| o.from == Some(victim_id)) {
                repair_started = Some(killed_at.elapsed());
            }
            let repaired = s.shards.iter().all(|shard| {
                let voters = shard.voters();
                voters.len() == REPLICATION_FACTOR
                    && voters.iter().all(|v| s.up(*v))
                    && shard.learners().is_empty()
                    && !shard.on(victim_id)
            });
            (repaired && s.operators.is_empty()).then_some(())
        })
        .await;
    if let Some(t) = down_after {
        summary.timing(&format!("SIGKILL -> the PD lists node {victim_id} down"), t);
    }
    if let Some(t) = repair_started {
        summary.timing("SIGKILL -> first repair operator", t);
    }
    match &watched {
        Ok((_, _, snapshot)) => {
            summary.timing("SIGKILL -> every shard has 3 voters on live nodes, no operator", killed_at.elapsed());
            let voters: usize = snapshot.shards.iter().map(|s| s.voters().len()).sum();
            summary.check(
                "after max-node-down-time every shard has 3 voters on live nodes",
                true,
                format!(
                    "{} shards, {voters} voters, none on node {victim_id}; replicas per node {}",
                    snapshot.shards.len(),
                    snapshot.rebalance.replica_counts()
                ),
            );
            summary.observe(
                "repair waited for max-node-down-time",
                repair_started.is_none_or(|t| t >= Duration::from_secs(10)),
                format!("first repair operator {repair_started:?} after the kill"),
            );
        }
        Err(e) => {
            summary.check("after max-node-down-time every shard has 3 voters on live nodes", false, format!("{e:#}"))
        }
    }

    let report = clients.stop().await?;
    let failed = report.counts.failed();
    summary.observe(
        "no client call failed",
        failed == 0,
        format!("{} calls, {failed} failed", report.counts.puts_ok + report.counts.gets_ok + failed),
    );
    setup::verify_acked(&env, plan, &report, &mut summary).await?;
    summary.clients = Some(report);

    setup::settle(&mut env, &mut events, &mut summary).await;
    summary.operators = events.tally();
    summary.missed_events = events.missed;
    let map = env.pd_map().await?;
    let (stops, clean) = env.stop_all().await;
    summary.section("stop (SIGTERM)", stops);
    summary.observe("every live node exited 0 after SIGTERM", clean, "see the stop section");
    let dbs = env.inspect_all(&map)?;
    setup::check_databases(&mut summary, &map, &dbs);
    Ok(summary)
}
