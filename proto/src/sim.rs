//! Hooks for running nodes and clients inside a single-threaded, seeded
//! simulation (the turmoil test tier, `cairn-tests`' `sim.rs`): on a thread
//! that entered one, randomness and the wall clock come from the simulation
//! and blocking work runs inline, so one seed replays one run. Everywhere
//! else (every production thread) the flag is unset and each hook costs one
//! thread-local read.

use std::cell::RefCell;
use std::time::{SystemTime, UNIX_EPOCH};

use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};

struct State {
    rng: SmallRng,
    clock_ms: Box<dyn Fn() -> u64>,
}

thread_local! {
    static SIM: RefCell<Option<State>> = const { RefCell::new(None) };
}

/// Marks this thread as running a simulation until the guard drops: random
/// numbers come from `seed`, the wall clock from `clock_ms` (milliseconds
/// since the Unix epoch).
#[must_use = "the simulation ends when the guard drops"]
pub fn enter(seed: u64, clock_ms: impl Fn() -> u64 + 'static) -> Guard {
    SIM.with(|s| *s.borrow_mut() = Some(State { rng: SmallRng::seed_from_u64(seed), clock_ms: Box::new(clock_ms) }));
    Guard(())
}

/// Ends the simulation of this thread when dropped.
pub struct Guard(());

impl Drop for Guard {
    fn drop(&mut self) {
        SIM.with(|s| *s.borrow_mut() = None);
    }
}

/// Whether this thread runs a simulation.
pub fn active() -> bool {
    SIM.with(|s| s.borrow().is_some())
}

/// Milliseconds since the Unix epoch: the simulation's clock, or the system's.
pub fn now_ms() -> u64 {
    let simulated = SIM.with(|s| s.borrow().as_ref().map(|st| (st.clock_ms)()));
    simulated.unwrap_or_else(|| SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(0))
}

/// A random number: the simulation's next, or the thread generator's.
pub fn random_u64() -> u64 {
    SIM.with(|s| s.borrow_mut().as_mut().map(|st| st.rng.random())).unwrap_or_else(rand::random)
}

/// A generator for one use: seeded by the simulation, or from the thread's
/// generator.
pub fn rng() -> SmallRng {
    SmallRng::seed_from_u64(random_u64())
}

/// Runs blocking work (disk reads) off the async threads, or inline in a
/// simulation (where a thread pool's timing would make runs differ). `None`
/// if the work panicked.
pub async fn unblock<T, F>(f: F) -> Option<T>
where
    T: Send + 'static,
    F: FnOnce() -> T + Send + 'static,
{
    if active() {
        return Some(f());
    }
    tokio::task::spawn_blocking(f).await.ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_simulation_replays_its_randomness_and_clock() {
        assert!(!active());
        let draw = || {
            let _sim = enter(7, || 1_000);
            assert!(active());
            assert_eq!(now_ms(), 1_000);
            (random_u64(), rng().random::<u64>())
        };
        assert_eq!(draw(), draw());
        assert!(!active(), "the guard ends the simulation");
        assert!(now_ms() > 1_000);
    }
}
