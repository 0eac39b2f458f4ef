//! Errors the core returns to its runtime. Each says what was refused and why, with
//! the ids and indexes the caller needs to act (retry elsewhere, wait, give up).

use std::fmt;

use crate::types::{LogIndex, NodeId, Term};

/// Why a proposal, a membership change or a leadership transfer was refused.
/// Nothing was appended: the caller may retry, here or elsewhere.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ProposeError {
    /// Only the leader accepts proposals; `leader` is the last one known.
    NotLeader {
        /// The leader of this node's current term, if it knows one.
        leader: Option<NodeId>,
    },
    /// Proposals are refused while leadership moves to `target` (thesis §3.10).
    TransferInProgress {
        /// The voter leadership is being handed to.
        target: NodeId,
    },
    /// A membership change at `index` has not committed yet: one at a time.
    ConfigChangePending {
        /// Index of the configuration entry not committed yet.
        index: LogIndex,
    },
    /// The leader has not committed an entry of its own `term` yet (thesis §4.1: one change at a time, after the first commit of a term).
    NoCommitInTerm {
        /// The leader's current term.
        term: Term,
    },
    /// The requested membership change is not valid for the current configuration.
    InvalidMembershipChange {
        /// Why, in words (e.g. "already a voter").
        reason: &'static str,
        /// The node the change named, when one is at fault.
        node: Option<NodeId>,
    },
    /// The configuration changed since the one the caller named
    /// (`propose_membership_at`): nothing was done.
    ConfigChanged {
        /// Index of the configuration entry the caller named.
        expected: LogIndex,
        /// Index of the entry of the configuration in force.
        latest: LogIndex,
    },
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
    /// The refused input, by method name (e.g. `"compact_log"`).
    pub input: &'static str,
    /// What in it contradicts the core's state.
    pub reason: String,
}

impl fmt::Display for InputError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "invalid {} input: {}", self.input, self.reason)
    }
}

impl std::error::Error for InputError {}
