//! The pieces of the `acceptance` command (`src/bin/acceptance.rs`): issue 4's
//! acceptance steps (scale out, repair, drain) run against real processes the way
//! a user runs them: `cairn playground` as a child process, more nodes joining
//! with `cairn server --pd`, the admin verbs through `cairnctl`, and the workload
//! through `cairn_client::Client`.
//!
//! Layout: [`procs`] starts and stops the processes (and kills them on drop, also
//! while unwinding), [`ctl`] runs `cairnctl` and reads its JSON contract, [`data`]
//! derives keys and values and loads and verifies documents, [`clients`] is the
//! concurrent read/write workload, [`events`] follows the PD's event log (finished
//! operators), [`inspect`] reads a stopped node's database file, [`report`] holds
//! the checks and the summary, and [`scale_out`], [`repair`] and [`drain`] are the
//! scenarios, built on the shared setup in [`setup`].
//!
//! Invariants:
//! - Nothing here changes the cluster except through what a user has: `cairnctl`,
//!   the client library, signals to processes. Databases are opened only after
//!   their node has exited, and read-only.
//! - Every value is a pure function of its key ([`data::value_for`]), so acknowledged
//!   writes are remembered as `(client, sequence number)` pairs and memory stays
//!   small however long the run.
//! - Every wait has a deadline.

pub mod clients;
pub mod ctl;
pub mod data;
pub mod drain;
pub mod events;
pub mod inspect;
pub mod procs;
pub mod repair;
pub mod report;
pub mod scale_out;
pub mod setup;
