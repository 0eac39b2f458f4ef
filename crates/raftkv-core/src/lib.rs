//! The pure Raft protocol core.
//!
//! `Core` is one Raft node as a deterministic state machine: the runtime feeds it
//! inputs (`handle_tick(now)`, `handle_message`, `handle_persisted`, `propose`,
//! `read_index`, ...) and drains `Action`s (persist, send, apply, answer reads).
//! It has no I/O, no clock, no threads and no entropy of its own; the same inputs
//! and seed give the same actions, which is what lets `raftkv-sim` replay any run.
//!
//! # Invariants and assertions
//!
//! What the protocol relies on is checked at three levels, all of them on in
//! release builds (CI and the simulator run `--release`, where `debug_assert!`
//! would be gone):
//!
//! - **Plain `assert!`** where state changes, for checks that cost O(1): the
//!   commit index never passes the last index nor goes back (an install lands
//!   only past it), entries at or below it are never truncated, appends are
//!   contiguous and their terms never go down along the log (§5.3), terms
//!   never go back, a leader never campaigns and leads only with its own
//!   durable vote of its term over a log of no later term (§5.2, §5.4), the
//!   durable index stays within the log. They stay on in production: a core
//!   that broke one would go on replicating a state it cannot vouch for.
//! - **`Core::check_invariants`** checks the whole state (the list is in
//!   `invariants.rs`): O(log length + peers + queued work), returning an
//!   `InvariantViolation`. **`Core::check_invariants_per_step`** checks the
//!   part that costs O(1) per peer. `raftkv-sim` runs the per-step check
//!   after every input of every node and the full one when a node starts and
//!   after every 16th input, and reports a violation with its seed and node;
//!   its hand-driven harness runs the full check after every input.
//! - The **`invariants` feature** (and this crate's own unit tests) make
//!   `drain_actions` run the full check and panic on a violation, for test
//!   builds of embedders that do not call it themselves.
//!
//! None of them can be reached by hostile input: malformed messages are
//! dropped on arrival and runtime misuse is an `InputError`, so an assertion
//! fires only on a state the core itself produced, which is a bug.
//!
//! # Example
//!
//! One founding voter, driven by hand: tick until it leads, propose a command,
//! and watch the actions. A runtime makes each `Persist` durable before it
//! reports it; here "durable" is immediate.
//!
//! ```
//! use bytes::Bytes;
//! use raftkv_core::{Action, Core, CoreConfig, DurableState, EntryPayload, NodeId};
//!
//! /// Drains the core until it has nothing more to say, reporting every
//! /// persist as done, and returns what it asked for.
//! fn settle(core: &mut Core) -> Vec<Action> {
//!     let mut all = Vec::new();
//!     loop {
//!         let actions: Vec<Action> = core.drain_actions().collect();
//!         if actions.is_empty() {
//!             return all;
//!         }
//!         for action in &actions {
//!             if let Action::Persist(request) = action {
//!                 core.handle_persisted(request.seq).expect("persists are reported in order");
//!             }
//!         }
//!         all.extend(actions);
//!     }
//! }
//!
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let id = NodeId(1);
//! // Time is the caller's: milliseconds, here starting at 0. The seed drives
//! // the randomized election timeout.
//! let mut core = Core::new(CoreConfig::new(id), DurableState::bootstrap([id]), 0, 7)?;
//! let mut now = 0;
//! while !core.is_leader() {
//!     now += 100;
//!     core.handle_tick(now);
//!     settle(&mut core);
//! }
//! assert_eq!(core.leader(), Some(id));
//!
//! let index = core.propose(Bytes::from_static(b"hello"))?;
//! let actions = settle(&mut core);
//! // First the entry is written, then (a lone voter is its own quorum) it
//! // commits and is handed to the state machine.
//! let written = actions.iter().position(|action| {
//!     matches!(action, Action::Persist(request)
//!         if request.log.as_ref().is_some_and(|log| log.entries.iter().any(|e| e.index == index)))
//! });
//! let applied = actions.iter().position(|action| {
//!     matches!(action, Action::Apply { entries }
//!         if entries.iter().any(|e| e.index == index && e.payload == EntryPayload::Command(Bytes::from_static(b"hello"))))
//! });
//! assert!(written.is_some() && applied.is_some() && written < applied);
//! assert_eq!(core.commit_index(), index);
//! # Ok(())
//! # }
//! ```

#![warn(missing_docs)]

mod config;
mod core;
mod election;
mod error;
mod invariants;
mod log;
mod membership;
mod message;
mod progress;
mod quorum;
mod read;
mod replication;
pub mod rng;
mod types;

#[cfg(feature = "bug-injection")]
pub mod bugs;

pub use crate::config::{ConfigError, CoreConfig};
pub use crate::core::{Action, Core, DurableState, LogWrite, PeerProgress, PersistRequest, ReadMode, Role};
pub use crate::error::{InputError, ProposeError, ReadError};
pub use crate::invariants::InvariantViolation;
pub use crate::membership::MembershipChange;
pub use crate::message::{
    AppendEntries, AppendEntriesResponse, AppendResult, InstallSnapshot, InstallSnapshotResponse, Message, ReadId,
    RequestVote, RequestVoteResponse,
};
pub use crate::quorum::{joint_majority_value, majority_value, vote_result, VoteResult};
pub use crate::types::{
    Configuration, Entry, EntryPayload, HardState, LogId, LogIndex, Millis, NodeId, RestoreStep, SnapshotMeta, Term,
};
