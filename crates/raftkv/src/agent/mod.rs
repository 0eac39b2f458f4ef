//! One raftkv node: the raft node and the replicated state, with what it
//! takes to run in a cluster. Read bottom-up:
//!
//! - `config`, `datadir`: what it starts with, where it keeps its data.
//! - `activity`: the reads and writes it answered and the leadership
//!   changes it saw, for the dashboard.
//! - `gossip`: SWIM membership over UDP (who is alive, their addresses),
//!   for discovery, `--bootstrap-expect` and the autopilot.
//! - `autopilot`: server health, failure tolerance and dead-server cleanup
//!   (Consul's rules), judged on the leader from the raft status.
//! - `outcome`: `Failure`, what became of an operation that failed (done,
//!   not done, or unknown), passed unchanged from where it is decided to the
//!   API's answer.
//! - `request`: the admin operations (join, remove, transfer).
//! - `wire`: the internal RPC's messages and the calling side.
//! - `forward`: the write forwarder, a follower's batched hand-off to the
//!   leader.
//! - `node`: `Agent`, and `Agent::route`, the one decision "run here or on
//!   the leader" for writes and admin operations.
//! - `service`: the serving side of the internal RPC.
//! - `discover`: how a new node finds its cluster (join addresses, gossip,
//!   `--bootstrap-expect`).
//! - `removal`: a node learns that it was removed, and stops taking part.
//! - `start`: start-up, resume and join; `restore`: a backup restored
//!   through the log; `recover`: offline recovery after a loss of quorum.

pub mod activity;
pub mod autopilot;
pub mod config;
pub mod datadir;
pub mod discover;
pub mod forward;
pub mod gossip;
pub mod node;
pub mod outcome;
pub mod recover;
pub mod removal;
pub mod request;
pub mod restore;
pub mod service;
pub mod start;
pub mod wire;

pub use config::{AgentConfig, AgentError, UploadLimits};
pub use node::{Agent, Readiness, Route};
pub use outcome::{Failure, Kind, Outcome};
pub use request::{AdminDone, AdminOp, Member};
