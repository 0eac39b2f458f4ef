//! Errors of the `Raft` handle. Each says what the caller can do next: retry
//! at the leader, wait, or treat the outcome as unknown.

use raftkv_core::{LogId, LogIndex, NodeId, ProposeError, ReadError, Term};

use crate::storage::StorageError;

/// Why a call on a [`Raft`](crate::Raft) failed, and so what the caller may
/// do next; [`RaftError::outcome_unknown`] tells whether a write that failed
/// so may still take effect.
#[derive(Debug, thiserror::Error)]
pub enum RaftError {
    /// Only the leader accepts this; `leader` is the last one known.
    #[error("not the leader (leader: {})", leader.map_or("unknown".to_string(), |l| format!("node {l}")))]
    NotLeader {
        /// The leader this node knows of in its term, if any: where to retry.
        leader: Option<NodeId>,
    },
    /// Leadership was lost while the request was in flight: a write may or may
    /// not have been committed.
    #[error("leadership lost while the request was in flight; its outcome is unknown")]
    LeadershipLost,
    /// No answer within the timeout the caller gave (the duration): a write
    /// may or may not take effect.
    #[error("timed out after {0:?}")]
    Timeout(std::time::Duration),
    /// The node is not running: the request was not carried out.
    #[error("raft node is shut down")]
    Shutdown,
    /// The node stopped (shut down, or failed for good) while the request was
    /// in flight: a write may or may not have been committed.
    #[error("the node stopped while the request was in flight ({reason}); its outcome is unknown")]
    Stopped {
        /// The failure that stopped the node, or "shut down".
        reason: String,
    },
    /// The node stopped for good because it cannot go on (a storage failure, a
    /// snapshot it cannot keep): restart it, after fixing the cause.
    #[error("the node failed and stopped: {reason}")]
    Failed {
        /// What failed.
        reason: String,
    },
    /// Leadership did not move to `target` (`Raft::leadership_transfer`).
    #[error("leadership transfer to node {target} failed: {reason}")]
    TransferFailed {
        /// The node leadership was to move to.
        target: NodeId,
        /// What happened instead.
        reason: String,
    },
    /// The leader refused the request (a transfer in progress, a membership
    /// change pending or invalid, ...): nothing was done.
    #[error("request refused: {0}")]
    Refused(ProposeError),
    /// A read could not be confirmed (leadership was lost first): nothing was
    /// read; retry.
    #[error("read failed: {0}")]
    Read(ReadError),
    /// A store call failed, or the stores hold state the node cannot start
    /// from (`StorageError::Inconsistent`): the error names the file, offset
    /// or indexes concerned.
    #[error("storage: {0}")]
    Storage(#[from] StorageError),
    /// A configuration (`Config`, `ReloadableConfig`, or a membership given to
    /// `recover_cluster`) is invalid; nothing changed.
    #[error("invalid configuration: {0}")]
    Config(String),
    /// Taking, writing or restoring a snapshot failed (`op`); `snapshot` is
    /// the last entry it covers, when known. Nothing changed.
    #[error(
        "{op} snapshot{} failed: {reason}",
        snapshot.map(|s| format!(" at index {} (term {})", s.index, s.term)).unwrap_or_default()
    )]
    Snapshot {
        /// What was being done.
        op: SnapshotOp,
        /// The snapshot's last included entry, when known.
        snapshot: Option<LogId>,
        /// What failed.
        reason: String,
    },
    /// `bootstrap_cluster` on stores that already hold raft state.
    #[error("cannot bootstrap: this node already has raft state (term {term}, last log index {last_index})")]
    AlreadyBootstrapped {
        /// The stored current term.
        term: Term,
        /// The stored log's last index.
        last_index: LogIndex,
    },
    /// `recover_cluster` found nothing to recover.
    #[error("nothing to recover: {reason}")]
    NothingToRecover {
        /// Why.
        reason: String,
    },
    /// `snapshot` was asked for, but nothing was applied since the newest one.
    #[error("nothing new to snapshot: the newest snapshot covers index {index}")]
    NothingNewToSnapshot {
        /// The last index the newest snapshot covers.
        index: LogIndex,
    },
    /// The entry proposed at `index` was replaced by another leader's entry.
    #[error("entry at index {index} was overwritten by a newer leader")]
    Overwritten {
        /// Where the command had been appended.
        index: LogIndex,
    },
    /// `add_voter`: the server did not catch up before the deadline and was
    /// removed again (the removal committed). Not a member: safe to retry.
    #[error(
        "node {id} was not caught up and answering for the stabilization period before its deadline (its log \
         matched through {match_index} of {last_index} at the deadline) and was removed again"
    )]
    NotCaughtUp {
        /// The server that was to be added.
        id: NodeId,
        /// How far its log matched the leader's at the deadline.
        match_index: LogIndex,
        /// The leader's last index then.
        last_index: LogIndex,
    },
    /// `add_voter`: another membership change, committed at `index`, removed
    /// the staging server or kept it a plain learner before its promotion.
    #[error("another membership change (index {index}) decided node {id}'s fate before its promotion")]
    Superseded {
        /// The server that was to be added.
        id: NodeId,
        /// Index of the change that decided its fate.
        index: LogIndex,
    },
    /// `restore`: another restore is running on this node; nothing done.
    #[error("another restore is in progress on this node")]
    RestoreInProgress,
    /// `restore`: the restore whose commit was applied at `index` was refused
    /// on every node (bytes lost or damaged, or refused by the state
    /// machine): the state is unchanged. Before anything was proposed,
    /// `index` is 0 (the snapshot could not be read, or is too large).
    #[error("restore refused{}: {reason}; the state is unchanged", if index.0 == 0 { String::new() } else { format!(" at index {index}") })]
    RestoreFailed {
        /// Index of the restore's `Commit` entry; 0 if nothing was proposed.
        index: LogIndex,
        /// Why it was refused.
        reason: String,
    },
}

impl From<ProposeError> for RaftError {
    fn from(error: ProposeError) -> RaftError {
        raftkv_driver::Failure::from(error).into()
    }
}

impl From<ReadError> for RaftError {
    fn from(error: ReadError) -> RaftError {
        raftkv_driver::Failure::from(error).into()
    }
}

impl RaftError {
    /// Whether a write that failed with this error may still take effect
    /// (commit and apply later): the caller must not report it as not done.
    pub fn outcome_unknown(&self) -> bool {
        // Every variant is named, so that a new one is decided here.
        match self {
            RaftError::LeadershipLost | RaftError::Timeout(_) | RaftError::Stopped { .. } => true,
            RaftError::NotLeader { .. }
            | RaftError::Shutdown
            | RaftError::Failed { .. }
            | RaftError::TransferFailed { .. }
            | RaftError::Refused(_)
            | RaftError::Read(_)
            | RaftError::Storage(_)
            | RaftError::Config(_)
            | RaftError::Snapshot { .. }
            | RaftError::AlreadyBootstrapped { .. }
            | RaftError::NothingToRecover { .. }
            | RaftError::NothingNewToSnapshot { .. }
            | RaftError::Overwritten { .. }
            | RaftError::NotCaughtUp { .. }
            | RaftError::Superseded { .. }
            | RaftError::RestoreInProgress
            | RaftError::RestoreFailed { .. } => false,
        }
    }
}

impl From<raftkv_driver::Failure> for RaftError {
    fn from(failure: raftkv_driver::Failure) -> RaftError {
        use raftkv_driver::Failure;
        match failure {
            Failure::NotLeader { leader } => RaftError::NotLeader { leader },
            Failure::LeadershipLost => RaftError::LeadershipLost,
            Failure::Stopped { reason } => RaftError::Stopped { reason },
            Failure::Failed { reason } => RaftError::Failed { reason },
            Failure::Shutdown => RaftError::Shutdown,
            Failure::Refused(error) => RaftError::Refused(error),
            Failure::Read(error) => RaftError::Read(error),
            Failure::Overwritten { index } => RaftError::Overwritten { index },
            Failure::NothingNewToSnapshot { index } => RaftError::NothingNewToSnapshot { index },
            Failure::Snapshot { reason } => RaftError::Snapshot { op: SnapshotOp::Take, snapshot: None, reason },
            Failure::NotCaughtUp { id, match_index, last_index } => {
                RaftError::NotCaughtUp { id, match_index, last_index }
            }
            Failure::Superseded { id, index } => RaftError::Superseded { id, index },
        }
    }
}

/// What a failed snapshot operation was doing.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SnapshotOp {
    /// Capturing the state machine and storing it (`Raft::snapshot`).
    Take,
    /// Writing a snapshot to the store.
    Write,
    /// Reading a stored snapshot back into the state machine (at start-up,
    /// or in `recover_cluster`).
    Restore,
}

impl std::fmt::Display for SnapshotOp {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            SnapshotOp::Take => "taking a",
            SnapshotOp::Write => "writing",
            SnapshotOp::Restore => "restoring",
        })
    }
}
