//! The async runtime of every Raft group: tokio's, except that the random
//! numbers openraft draws (election timeouts, first tick delays) come from
//! `cairn_proto::sim` in a simulation, so one seed replays one run. Outside a
//! simulation each draw is seeded from the thread's generator.

use std::future::Future;
use std::time::Duration;

use openraft::rt::OptionalSend;
use openraft_rt_tokio::TokioRuntime;
use rand010::SeedableRng;
use rand010::rngs::SmallRng;

/// tokio, with seedable randomness.
#[derive(Debug)]
pub struct CairnRuntime(TokioRuntime);

impl openraft::AsyncRuntime for CairnRuntime {
    type JoinError = <TokioRuntime as openraft::AsyncRuntime>::JoinError;
    type JoinHandle<T: OptionalSend + 'static> = <TokioRuntime as openraft::AsyncRuntime>::JoinHandle<T>;
    type Sleep = <TokioRuntime as openraft::AsyncRuntime>::Sleep;
    type Instant = <TokioRuntime as openraft::AsyncRuntime>::Instant;
    type TimeoutError = <TokioRuntime as openraft::AsyncRuntime>::TimeoutError;
    type Timeout<R, T: Future<Output = R> + OptionalSend> = <TokioRuntime as openraft::AsyncRuntime>::Timeout<R, T>;
    type ThreadLocalRng = SmallRng;

    fn spawn<T>(future: T) -> Self::JoinHandle<T::Output>
    where
        T: Future + OptionalSend + 'static,
        T::Output: OptionalSend + 'static,
    {
        TokioRuntime::spawn(future)
    }

    fn sleep(duration: Duration) -> Self::Sleep {
        TokioRuntime::sleep(duration)
    }

    fn sleep_until(deadline: Self::Instant) -> Self::Sleep {
        TokioRuntime::sleep_until(deadline)
    }

    fn timeout<R, F: Future<Output = R> + OptionalSend>(duration: Duration, future: F) -> Self::Timeout<R, F> {
        TokioRuntime::timeout(duration, future)
    }

    fn timeout_at<R, F: Future<Output = R> + OptionalSend>(deadline: Self::Instant, future: F) -> Self::Timeout<R, F> {
        TokioRuntime::timeout_at(deadline, future)
    }

    fn is_panic(join_error: &Self::JoinError) -> bool {
        TokioRuntime::is_panic(join_error)
    }

    fn thread_rng() -> Self::ThreadLocalRng {
        SmallRng::seed_from_u64(cairn_proto::sim::random_u64())
    }

    type Mpsc = <TokioRuntime as openraft::AsyncRuntime>::Mpsc;
    type Watch = <TokioRuntime as openraft::AsyncRuntime>::Watch;
    type Oneshot = <TokioRuntime as openraft::AsyncRuntime>::Oneshot;
    type Mutex<T: OptionalSend + 'static> = <TokioRuntime as openraft::AsyncRuntime>::Mutex<T>;

    fn new(threads: usize) -> Self {
        Self(TokioRuntime::new(threads))
    }

    fn block_on<F, T>(&mut self, future: F) -> T
    where
        F: Future<Output = T>,
    {
        self.0.block_on(future)
    }
}
