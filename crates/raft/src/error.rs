//! Errors of the `Raft` handle. Each says what the caller can do next: retry
//! at the leader, wait, or treat the outcome as unknown.

use raft_core::{LogIndex, NodeId, ProposeError, ReadError};

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
    #[error("raft node is shut down")]
    Shutdown,
    #[error("request refused: {0}")]
    Refused(ProposeError),
    #[error("read failed: {0}")]
    Read(ReadError),
    #[error("storage: {0}")]
    Storage(#[from] StorageError),
    #[error("invalid configuration: {0}")]
    Config(String),
    /// `snapshot` was asked for, but nothing was applied since the newest one.
    #[error("nothing new to snapshot: the newest snapshot covers index {index}")]
    NothingNewToSnapshot { index: LogIndex },
    /// The entry proposed at `index` was replaced by another leader's entry.
    #[error("entry at index {index} was overwritten by a newer leader")]
    Overwritten { index: LogIndex },
}

impl From<ProposeError> for RaftError {
    fn from(error: ProposeError) -> RaftError {
        match error {
            ProposeError::NotLeader { leader } => RaftError::NotLeader { leader },
            other => RaftError::Refused(other),
        }
    }
}

impl From<ReadError> for RaftError {
    fn from(error: ReadError) -> RaftError {
        match error {
            ReadError::NoLeader => RaftError::NotLeader { leader: None },
            other => RaftError::Read(other),
        }
    }
}
