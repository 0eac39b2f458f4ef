//! The runtime's decisions around a `raftkv_core::Core`, without I/O.
//!
//! The core decides the protocol; something still has to decide how its
//! actions are carried out: which storage steps run in which order (and what a
//! crash between two of them leaves), when the state machine may restore a
//! received snapshot, which caller gets which answer, what happens after a
//! fatal error. Those decisions live here, in two deterministic parts that
//! never touch a clock, a file, a socket, a thread or an async runtime:
//!
//! - [`Driver`] is the raft loop's half: it owns the core, turns its actions
//!   into [`Effect`]s (storage jobs, messages per peer, work for the apply
//!   side, answers) and takes back what the executor reports (a persist done,
//!   a snapshot checked, captured or written, a storage failure).
//! - [`Applier`] is the apply side's half: it releases reads once the state
//!   machine reached their index and decides when to capture a snapshot
//!   (entries, bytes, interval).
//!
//! An executor runs the effects: `raftkv-raft`'s tokio runtime in
//! production, the simulator's simulated disks and network in tests. Both run
//! the same decisions, so the simulator's crash points and faults reach the
//! sequencing that ships. Callers are identified by a reply value `R` of the
//! executor's choosing (a channel in production, an operation id in the
//! simulator); the driver only moves it to where the answer is made.

#![warn(missing_docs)]

mod apply;
mod driver;
mod failure;
mod observe;
mod staged;

pub use apply::{Applier, ApplyEffect, SnapshotPolicy};
pub use driver::{
    reconcile_steps, ApplyJob, Driver, DriverConfig, Effect, LeaderInfo, PeerStatus, Status, StoreJob, StoreStep,
};
pub use failure::Failure;
pub use observe::Observed;
