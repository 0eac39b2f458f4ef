//! `Failure`: why a request failed, as the driver knows it.

use std::fmt;

use raftkv_core::{LogIndex, NodeId, ProposeError, ReadError};

/// Why a request failed, as the driver knows it. The executor maps it to its
/// own error type; each says whether the operation may still take effect.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Failure {
    /// This node does not lead: nothing was done; retry on `leader`.
    NotLeader {
        /// The leader of this node's term, if known.
        leader: Option<NodeId>,
    },
    /// Leadership was lost after the write was proposed: it may still commit.
    LeadershipLost,
    /// The node stopped with the write in flight: it may still commit.
    Stopped {
        /// The failure that stopped the node, or "shut down".
        reason: String,
    },
    /// The node had stopped for good before the request was taken.
    Failed {
        /// The failure that stopped it.
        reason: String,
    },
    /// The node was shut down before the request was taken.
    Shutdown,
    /// The core refused the request (a transfer in progress, a membership
    /// change pending or invalid, ...): nothing was done.
    Refused(ProposeError),
    /// The read could not be confirmed: nothing was read.
    Read(ReadError),
    /// The entry proposed at `index` was replaced by another leader's.
    Overwritten {
        /// Where the proposal was appended.
        index: LogIndex,
    },
    /// A snapshot was asked for, but nothing was applied since the newest
    /// one: nothing was taken.
    NothingNewToSnapshot {
        /// The last index the newest snapshot covers.
        index: LogIndex,
    },
    /// Taking or storing a snapshot failed; nothing changed.
    Snapshot {
        /// What failed.
        reason: String,
    },
    /// `add_voter`: the server did not catch up before its deadline and was
    /// removed again (committed): not a member, nothing to undo.
    NotCaughtUp {
        /// The server that was to be added.
        id: NodeId,
        /// How far its log matched the leader's when its removal was proposed.
        match_index: LogIndex,
        /// The leader's last index then.
        last_index: LogIndex,
    },
    /// `add_voter`: another change decided the staging server's fate first
    /// (removed it, or kept it a plain learner) at `index`: not a voter.
    Superseded {
        /// The server that was to be added.
        id: NodeId,
        /// Index of the configuration that decided otherwise.
        index: LogIndex,
    },
}

impl Failure {
    /// A write the node took but will not finish, because it stopped (with
    /// `failure`, or shut down): it may be on followers and commit anyway.
    pub fn stopped(failure: Option<&str>) -> Failure {
        Failure::Stopped { reason: failure.unwrap_or("shut down").to_string() }
    }

    /// Anything else the stopped node will not do: definitely not done.
    pub fn not_done(failure: Option<&str>) -> Failure {
        match failure {
            Some(reason) => Failure::Failed { reason: reason.to_string() },
            None => Failure::Shutdown,
        }
    }

    /// Whether a write that failed so may still take effect.
    pub fn outcome_unknown(&self) -> bool {
        matches!(self, Failure::LeadershipLost | Failure::Stopped { .. })
    }
}

impl From<ProposeError> for Failure {
    fn from(error: ProposeError) -> Failure {
        match error {
            ProposeError::NotLeader { leader } => Failure::NotLeader { leader },
            other => Failure::Refused(other),
        }
    }
}

impl From<ReadError> for Failure {
    fn from(error: ReadError) -> Failure {
        match error {
            ReadError::NoLeader => Failure::NotLeader { leader: None },
            other => Failure::Read(other),
        }
    }
}

impl fmt::Display for Failure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Failure::NotLeader { leader } => {
                write!(f, "not the leader (leader: {})", leader.map_or("unknown".to_string(), |l| format!("node {l}")))
            }
            Failure::LeadershipLost => {
                write!(f, "leadership lost while the request was in flight; its outcome is unknown")
            }
            Failure::Stopped { reason } => {
                write!(f, "the node stopped while the request was in flight ({reason}); its outcome is unknown")
            }
            Failure::Failed { reason } => write!(f, "the node failed and stopped: {reason}"),
            Failure::Shutdown => write!(f, "raft node is shut down"),
            Failure::Refused(error) => write!(f, "request refused: {error}"),
            Failure::Read(error) => write!(f, "read failed: {error}"),
            Failure::Overwritten { index } => write!(f, "entry at index {index} was overwritten by a newer leader"),
            Failure::NothingNewToSnapshot { index } => {
                write!(f, "nothing new to snapshot: the newest snapshot covers index {index}")
            }
            Failure::Snapshot { reason } => write!(f, "snapshot failed: {reason}"),
            Failure::NotCaughtUp { id, match_index, last_index } => write!(
                f,
                "node {id} was not caught up and answering for the stabilization period before its deadline (its log \
                 matched through {match_index} of {last_index} at the deadline) and was removed again"
            ),
            Failure::Superseded { id, index } => {
                write!(f, "another membership change (index {index}) decided node {id}'s fate before its promotion")
            }
        }
    }
}

impl std::error::Error for Failure {}
