//! The pure Raft protocol core.
//!
//! `Core` is one Raft node as a deterministic state machine: the runtime feeds it
//! inputs (`handle_tick(now)`, `handle_message`, `handle_persisted`, `propose`,
//! `read_index`, ...) and drains `Action`s (persist, send, apply, answer reads).
//! It has no I/O, no clock, no threads and no entropy of its own; the same inputs
//! and seed give the same actions, which is what lets `raftkv-sim` replay any run.

mod config;
mod core;
mod election;
mod error;
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
pub use crate::core::{Action, Core, DurableState, LogWrite, PersistRequest, ReadMode, Role};
pub use crate::error::{InputError, ProposeError, ReadError};
pub use crate::membership::MembershipChange;
pub use crate::message::{
    AppendEntries, AppendEntriesResponse, AppendResult, InstallSnapshot, InstallSnapshotResponse, Message, ReadId,
    RequestVote, RequestVoteResponse,
};
pub use crate::quorum::{joint_majority_value, majority_value, vote_result, VoteResult};
pub use crate::types::{
    Configuration, Entry, EntryPayload, HardState, LogId, LogIndex, Millis, NodeId, SnapshotMeta, Term,
};
