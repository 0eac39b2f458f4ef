//! Errors the core returns to its runtime. Each says what was refused and why, with
//! the ids and indexes the caller needs to act (retry elsewhere, wait, give up).

use std::fmt;

use crate::types::{LogIndex, NodeId, Term};

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ProposeError {
    /// Only the leader accepts proposals; `leader` is the last one known.
    NotLeader { leader: Option<NodeId> },
    /// Proposals are refused while leadership moves to `target` (thesis §3.10).
    TransferInProgress { target: NodeId },
    /// A membership change at `index` has not committed yet: one at a time.
    ConfigChangePending { index: LogIndex },
    /// The leader has not committed an entry of its own `term` yet (thesis §4.1: one change at a time, after the first commit of a term).
    NoCommitInTerm { term: Term },
    /// The requested membership change is not valid for the current configuration.
    InvalidMembershipChange { reason: &'static str, node: Option<NodeId> },
    /// The configuration changed since the one the caller named
    /// (`propose_membership_at`): nothing was done.
    ConfigChanged { expected: LogIndex, latest: LogIndex },
}

impl fmt::Display for ProposeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ProposeError::NotLeader { leader: Some(leader) } => write!(f, "not the leader (leader is node {leader})"),
            ProposeError::NotLeader { leader: None } => write!(f, "not the leader (no leader known)"),
            ProposeError::TransferInProgress { target } => {
                write!(f, "leadership transfer to node {target} in progress")
            }
            ProposeError::ConfigChangePending { index } => {
                write!(f, "membership change at index {index} has not committed yet")
            }
            ProposeError::NoCommitInTerm { term } => {
                write!(f, "leader has not committed an entry of its term {term} yet")
            }
            ProposeError::InvalidMembershipChange { reason, node: Some(node) } => {
                write!(f, "invalid membership change for node {node}: {reason}")
            }
            ProposeError::InvalidMembershipChange { reason, node: None } => {
                write!(f, "invalid membership change: {reason}")
            }
            ProposeError::ConfigChanged { expected, latest } => {
                write!(f, "configuration changed since index {expected} (latest is {latest})")
            }
        }
    }
}

impl std::error::Error for ProposeError {}

/// Why a read could not be served or confirmed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ReadError {
    /// This node is not the leader and knows no leader to ask.
    NoLeader,
    /// Leadership was lost (or moved) before the read was confirmed.
    LeadershipLost,
}

impl fmt::Display for ReadError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ReadError::NoLeader => write!(f, "no leader known to confirm the read"),
            ReadError::LeadershipLost => write!(f, "leadership lost before the read was confirmed"),
        }
    }
}

impl std::error::Error for ReadError {}

/// A runtime input that contradicts what the core knows (a programming error in the
/// runtime, reported instead of panicking so that the node can stop cleanly).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct InputError {
    pub input: &'static str,
    pub reason: String,
}

impl fmt::Display for InputError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "invalid {} input: {}", self.input, self.reason)
    }
}

impl std::error::Error for InputError {}
