//! The tokio executor of one node. Every decision (what the core's actions
//! become, in which order, who is answered how) is the `raftkv_driver`'s; this
//! module only carries the decisions out, in rooms that each own one thing:
//!
//! - the **raft loop** (`raft_loop.rs`, one tokio task) owns the `Driver` and with
//!   it the `Core`. Timers, inbound messages, client requests and reports
//!   from the other rooms come in through channels; after each wake-up it
//!   carries out the driver's effects. Proposals that arrive together become
//!   one batch. Messages leave at the end of the wake-up, one batch per peer:
//!   from this task when the transport only queues (gRPC, memory), else
//!   from one sender task per peer.
//! - the **log writer** (`writer.rs`, one OS thread: storage calls block)
//!   runs store jobs in order and reports the highest sequence done; when
//!   every store lives in memory (`LogStore::in_memory`) there is no thread
//!   and the raft loop runs the jobs itself;
//! - the **apply task** (`apply.rs`) owns the state machine;
//! - **snapshot files** (`snapshots.rs`) are written, read and checked on
//!   blocking threads, their results reported back to the raft loop.
//!
//! The raft loop also keeps the observers (`Raft::observe`, in the crate's
//! `observe.rs`) and offers them what happens without ever waiting.
//!
//! A fatal error (storage, a snapshot that cannot be kept) stops the loop
//! before any further effect runs; the owner learns it through
//! `Raft::failure`.
//!
//! What the rooms send each other (requests, pending callers, loop events,
//! the shared clock) is in `events.rs`, a leaf they all import. This file
//! only declares the modules and re-exports what the `Raft` handle uses, so
//! imports point from here down and never back.

mod apply;
mod events;
mod raft_loop;
pub(crate) mod restore;
pub(crate) mod snapshots;
mod writer;

pub use raftkv_driver::{LeaderInfo, PeerStatus, Status};

pub(crate) use events::{Reply, Request};
pub(crate) use raft_loop::{run, Channels, Node, SHUTDOWN_GRACE};
pub(crate) use writer::{run_steps, Stores};
