//! Errors of the `Raft` handle. Each says what the caller can do next: retry
//! at the leader, wait, or treat the outcome as unknown.

use raftkv_core::{LogIndex, NodeId, ProposeError, ReadError};

use crate::storage::StorageError;

#[derive(Debug, thiserror::Error)]
pub enum RaftError {
    /// Only the leader accepts this; `leader` is the last one known.
    #[error("not the leader (leader: {})", leader.map_or("unknown".to_string(), |l| format!("node {l}")))]
    NotLeader { leader: Option<NodeId> },
    /// Leadership was lost while the request was in flight: a write may or may
    /// not have been committed.
    #[error("leadership lost while the request was in flight; its outcome is unknown")]
    LeadershipLost,
    #[error("timed out after {0:?}")]
    Timeout(std::time::Duration),
    /// The node is not running: the request was not carried out.
    #[error("raft node is shut down")]
    Shutdown,
    /// The node stopped (shut down, or failed for good) while the request was
    /// in flight: a write may or may not have been committed.
    #[error("the node stopped while the request was in flight ({reason}); its outcome is unknown")]
    Stopped { reason: String },
    /// The node stopped for good because it cannot go on (a storage failure, a
    /// snapshot it cannot keep): restart it, after fixing the cause.
    #[error("the node failed and stopped: {reason}")]
    Failed { reason: String },
    /// Leadership did not move to `target` (`Raft::leadership_transfer`).
    #[error("leadership transfer to node {target} failed: {reason}")]
    TransferFailed { target: NodeId, reason: String },
    #[error("request refused: {0}")]
    Refused(ProposeError),
    #[error("read failed: {0}")]
    Read(ReadError),
    #[error("storage: {0}")]
    Storage(#[from] StorageError),
    #[error("invalid configuration: {0}")]
    Config(String),
    /// Taking or storing a snapshot failed; nothing changed.
    #[error("snapshot failed: {0}")]
    Snapshot(String),
    /// `snapshot` was asked for, but nothing was applied since the newest one.
    #[error("nothing new to snapshot: the newest snapshot covers index {index}")]
    NothingNewToSnapshot { index: LogIndex },
    /// The entry proposed at `index` was replaced by another leader's entry.
    #[error("entry at index {index} was overwritten by a newer leader")]
    Overwritten { index: LogIndex },
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
        matches!(self, RaftError::LeadershipLost | RaftError::Timeout(_) | RaftError::Stopped { .. })
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
            Failure::Snapshot { reason } => RaftError::Snapshot(reason),
        }
    }
}
