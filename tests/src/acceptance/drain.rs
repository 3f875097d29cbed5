//! Drain (issue 4): `cairnctl node drain 2` on a loaded cluster empties node 2;
//! `cairnctl node remove 2` then succeeds.
//!
//! In the playground node 2 is a PD member: draining moves its data replicas
//! and its replica of the PD's own shard 0 to a joined node (RFC 004), after
//! which `node remove 2` succeeds. Then the same on node 4, a node that joined.

use std::path::PathBuf;

use super::clients::Clients;
use super::ctl::NodeJson;
use super::events::Events;
use super::procs::Binaries;
use super::report::Summary;
use super::setup::{self, Env, Options};

/// The PD member the issue drains.
const PD_MEMBER: u64 = 2;
/// A node that joined (not a PD member), drained and removed after node 2.
const JOINED_NODE: u64 = 4;

pub async fn run(opts: Options, bins: Binaries, dir: PathBuf) -> anyhow::Result<Summary> {
    let mut summary = Summary::new("drain", dir.clone());
    summary.setting("cluster", format!("playground of 3 nodes + 2 joined, {} shards", opts.shards));
    summary.setting(
        "workload",
        format!(
            "{} clients, each a put of a fresh {} B document then a get of one of its acknowledged keys, {} times/s",
            opts.clients, opts.value_bytes, opts.client_rate
        ),
    );
    let (mut env, plan) = setup::loaded_five_nodes(opts.clone(), bins, dir, &mut summary).await?;
    let joined = JOINED_NODE;
    anyhow::ensure!(
        env.joined.iter().any(|j| j.id == Some(joined)),
        "node {joined} is not one of the nodes that joined: {:?}",
        env.joined.iter().map(|j| j.id).collect::<Vec<_>>()
    );
    let mut events = Events::start(&env.pd).await?;
    let clients = env.start_clients().await?;
    let mut transcript = Vec::new();

    // Node 2, a PD member: drain moves its data replicas and its replica of
    // the PD's shard 0 (RFC 004), then remove succeeds. Then node 4, a node
    // that joined (and may have become a PD member in node 2's place).
    for node in [PD_MEMBER, joined] {
        let drained = drain(&mut env, &mut events, &clients, node, &mut summary, &mut transcript).await;
        let remove = env.ctl.run(&["node", "remove", &node.to_string()]).await?;
        transcript.push(format!("$ {}  -> exit {:?}", remove.command, remove.code));
        transcript.extend(remove.stdout.lines().chain(remove.stderr.lines()).map(|l| format!("    {l}")));
        if drained {
            let state = serde_json::from_str::<NodeJson>(&remove.stdout).map(|n| n.state).unwrap_or_default();
            summary.check(
                &format!("`cairnctl node remove {node}` then succeeds"),
                remove.success() && state == "removed",
                format!("exit {:?}, state {state:?} {}", remove.code, remove.stderr),
            );
        }
    }
    let nodes = env.ctl.nodes().await?;
    transcript.push("$ cairnctl nodes (after)".into());
    transcript.extend(nodes.iter().map(|n| {
        format!(
            "    node {} {} {} replicas {} leaders {} pd_member {}",
            n.id, n.addr, n.state, n.replicas, n.leaders, n.pd_member
        )
    }));
    let node4_process = match env.joined.iter_mut().find(|j| j.id == Some(joined)).and_then(|j| j.exited()) {
        Some(status) => format!("exited by itself: {status}"),
        None => "still running".into(),
    };
    transcript.push(format!("node {joined}'s process after its removal: {node4_process}"));
    summary.section("cairnctl transcript", transcript);

    let report = clients.stop().await?;
    let failed = report.counts.failed();
    summary.check(
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
    summary.observe("every node exited 0 after SIGTERM", clean, "see the stop section");
    let dbs = env.inspect_all(&map)?;
    setup::check_databases(&mut summary, &map, &dbs);
    for node in [PD_MEMBER, joined] {
        if let Some(db) = dbs.iter().find(|d| d.node == node) {
            let rows: u64 = db.records.values().map(|r| r.rows).sum::<u64>() + db.orphan_rows;
            summary.check(
                &format!("node {node}'s database holds no replica (PD's included) and no document"),
                db.records.is_empty() && rows == 0 && db.pd_rows == 0,
                format!(
                    "{} replica records, {rows} document rows, {} tombstones; PD records (shard 0): {} rows",
                    db.records.len(),
                    db.tombstones.len(),
                    db.pd_rows
                ),
            );
        }
    }
    Ok(summary)
}

/// `cairnctl node drain NODE`, then waits until the PD lists no replica and no
/// leader on it and no operator; records the timing or the failure. Returns
/// whether the node was emptied.
async fn drain(
    env: &mut Env,
    events: &mut Events,
    clients: &Clients,
    node: u64,
    summary: &mut Summary,
    transcript: &mut Vec<String>,
) -> bool {
    let out = match env.ctl.run(&["node", "drain", &node.to_string()]).await {
        Ok(out) => out,
        Err(e) => {
            summary.check(&format!("`cairnctl node drain {node}` empties node {node}"), false, format!("{e:#}"));
            return false;
        }
    };
    transcript.push(format!("$ {}  -> exit {:?}", out.command, out.code));
    transcript.extend(out.stdout.lines().chain(out.stderr.lines()).map(|l| format!("    {l}")));
    if !out.success() {
        summary.check(&format!("`cairnctl node drain {node}` empties node {node}"), false, out.stderr);
        return false;
    }
    let before = env.ctl.nodes().await.ok().and_then(|n| n.into_iter().find(|n| n.id == node));
    let watched = env
        .watch(&format!("drain {node}"), events, Some(clients), env.opts.timeout, |s| {
            let n = s.node(node)?;
            let empty = s.shards_on(node) == 0 && n.replicas == 0 && n.leaders == 0 && !n.pd_member;
            (empty && s.operators.is_empty()).then_some(())
        })
        .await;
    match watched {
        Ok((_, took, s)) => {
            summary.timing(&format!("node drain {node} -> node {node} holds no replica, no operator"), took);
            summary.check(
                &format!("`cairnctl node drain {node}` empties node {node}"),
                true,
                format!(
                    "{} replicas before; now replicas per node {}",
                    before.map(|n| n.replicas.to_string()).unwrap_or_else(|| "?".into()),
                    s.rebalance.replica_counts()
                ),
            );
            true
        }
        Err(e) => {
            summary.check(&format!("`cairnctl node drain {node}` empties node {node}"), false, format!("{e:#}"));
            false
        }
    }
}
