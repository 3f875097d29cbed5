//! The simulated-network tier (RFC 006, tier 3): five real nodes and a routed
//! client on turmoil's simulated network, one seed for the network and the
//! fault schedule (isolations, one-way cuts, held and flapping and slow
//! links, crashes losing unsynced writes, leader transfers and replica
//! moves), and a register history that must be linearizable.

use std::time::Duration;

use cairn_tests::chaos::Verdict;
use cairn_tests::chaos::linear;
use cairn_tests::chaos::register::RegisterWorkload;
use cairn_tests::sim::{self, SimConfig, SimNemesis};

/// A seed whose schedule has every kind of fault (checked below).
const SEED: u64 = 2;

#[test]
fn registers_stay_linearizable_on_a_simulated_network_under_faults() -> anyhow::Result<()> {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(
            std::env::var("RUST_LOG").unwrap_or_else(|_| "cairn_tests=info,cairn_node=warn,openraft=error".into()),
        )
        .with_test_writer()
        .try_init();
    let config = SimConfig {
        seed: SEED,
        nodes: 5,
        shards: 2,
        nemeses: SimNemesis::ALL.to_vec(),
        faults: 20,
        hold: Duration::from_secs(2),
        gap: Duration::from_millis(1500),
        workload: RegisterWorkload { keys: 4, processes: 6, seed: SEED, ops_per_key: 500 },
    };
    let kinds: std::collections::BTreeSet<SimNemesis> = sim::schedule(&config).iter().filter_map(|p| p.fault).collect();
    assert_eq!(kinds.len(), SimNemesis::ALL.len() - 1, "every fault (move rides along): {kinds:?}");
    let started = std::time::Instant::now();
    let run = sim::run(&config)?;
    println!(
        "simulated {:?} in {} steps ({:?} of real time); faults: {:?}",
        run.sim_elapsed,
        run.steps,
        started.elapsed(),
        run.faults_by_type
    );
    let (report, ok) = linear::check_and_print(SEED, &run.history, &run.faults.join("; "));
    assert!(ok >= 200, "the workload made progress ({ok} operations succeeded)");
    assert_eq!(report.verdict, Verdict::Valid);

    // The broken variant: the same history with a stale read added must be
    // rejected, so a valid verdict above means the checker looked.
    let stale = linear::with_stale_read(&run.history).expect("a key written twice");
    assert_eq!(linear::check(&stale, &linear::Limits::default()).verdict, Verdict::Invalid);
    Ok(())
}

/// One seed replays one run: the same operations with the same results in the
/// same order, the same faults, the same simulated time.
#[test]
fn one_seed_replays_one_run() -> anyhow::Result<()> {
    let config = SimConfig {
        seed: 7,
        nodes: 5,
        shards: 2,
        nemeses: SimNemesis::ALL.to_vec(),
        faults: 8,
        hold: Duration::from_secs(2),
        gap: Duration::from_millis(1500),
        workload: RegisterWorkload { keys: 4, processes: 6, seed: 7, ops_per_key: 500 },
    };
    let first = sim::run(&config)?;
    let second = sim::run(&config)?;
    println!(
        "runs: {} and {} operations, {:?} and {:?} simulated, {} and {} steps",
        first.history.len(),
        second.history.len(),
        first.sim_elapsed,
        second.sim_elapsed,
        first.steps,
        second.steps
    );
    assert_eq!((first.sim_elapsed, first.steps), (second.sim_elapsed, second.steps));
    assert_eq!(first.history.len(), second.history.len());
    assert_eq!(first.fingerprint(), second.fingerprint(), "the same seed replays the same run");
    Ok(())
}
