//! Chaos testing (issue 5, RFC 006): recorded histories and the checkers that
//! judge them. Every checker is tested against known-bad histories here, so a
//! `valid` verdict means something.

pub mod history;
pub mod linear;
pub mod register;
pub mod scan;
pub mod set_full;

pub use history::{Op, Outcome, Recorder, Verdict};
