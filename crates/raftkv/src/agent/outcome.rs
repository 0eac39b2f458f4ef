//! What became of an operation that failed. One `Failure` is made where the
//! failure happens (the raft handle, the forwarder, the leader's answer) and
//! passed on unchanged: across the internal RPC as typed fields (`wire`), and
//! to HTTP by one mapping (`api::error`). Nothing downstream guesses an
//! outcome from a status code or a message.

use std::fmt;

use raftkv_raft::{ProposeError, RaftError};

/// Whether an operation that failed took effect.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// Definitely not carried out: safe to retry as it is.
    NotDone,
    /// Carried out, though the caller gets no ordinary answer for it.
    Done,
    /// May or may not have been carried out (a write may still commit): a
    /// retry may apply it twice.
    Unknown,
}

impl Outcome {
    /// The name clients see in an error body.
    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::NotDone => "not_done",
            Outcome::Done => "done",
            Outcome::Unknown => "unknown",
        }
    }
}

/// What went wrong, in terms a client can act on. `code()` is the stable,
/// machine-readable name in error bodies.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// The request is malformed or out of bounds.
    BadRequest,
    /// The write can never fit an internal message.
    TooLarge,
    /// No leader is known, or the node asked does not lead (any more).
    NoLeader,
    /// The follower could not hand the request to the leader.
    NotSent,
    /// A leadership transfer is under way; writes wait for it.
    LeadershipTransfer,
    /// Raft refused the request as it stands (a membership change pending, an
    /// invalid change, ...).
    Refused,
    /// Leadership did not move to the node asked for.
    TransferFailed,
    /// The leader cannot take this membership change yet (another one has not
    /// committed, or it has not committed in its term): retry shortly.
    NotReady,
    /// The node is shutting down.
    ShuttingDown,
    /// The node failed for good and serves nothing.
    NodeFailed,
    /// No answer within the request timeout.
    Timeout,
    /// Leadership moved or the node stopped, or the connection to the leader
    /// broke, after the request was handed on.
    OutcomeUnknown,
    /// A snapshot was asked for, but nothing was applied since the last one.
    NothingNew,
    /// A restore is already running on this node.
    RestoreRunning,
    /// A restore step was refused by the state machine; the state is as before.
    RestoreFailed,
    /// A joining server did not catch up in time and was removed again.
    NotCaughtUp,
    /// The data dir has no room left beyond what is kept for the log.
    InsufficientStorage,
    /// A bug or an unexpected state; the message says which.
    Internal,
}

impl Kind {
    pub const ALL: [Kind; 18] = [
        Kind::BadRequest,
        Kind::TooLarge,
        Kind::NoLeader,
        Kind::NotSent,
        Kind::LeadershipTransfer,
        Kind::Refused,
        Kind::TransferFailed,
        Kind::NotReady,
        Kind::ShuttingDown,
        Kind::NodeFailed,
        Kind::Timeout,
        Kind::OutcomeUnknown,
        Kind::NothingNew,
        Kind::RestoreRunning,
        Kind::RestoreFailed,
        Kind::NotCaughtUp,
        Kind::InsufficientStorage,
        Kind::Internal,
    ];

    pub fn code(self) -> &'static str {
        match self {
            Kind::BadRequest => "bad_request",
            Kind::TooLarge => "too_large",
            Kind::NoLeader => "no_leader",
            Kind::NotSent => "not_sent",
            Kind::LeadershipTransfer => "leadership_transfer",
            Kind::Refused => "refused",
            Kind::TransferFailed => "transfer_failed",
            Kind::NotReady => "not_ready",
            Kind::ShuttingDown => "shutting_down",
            Kind::NodeFailed => "node_failed",
            Kind::Timeout => "timeout",
            Kind::OutcomeUnknown => "outcome_unknown",
            Kind::NothingNew => "nothing_new",
            Kind::RestoreRunning => "restore_running",
            Kind::RestoreFailed => "restore_failed",
            Kind::NotCaughtUp => "not_caught_up",
            Kind::InsufficientStorage => "insufficient_storage",
            Kind::Internal => "internal",
        }
    }
}

/// A failed operation: what went wrong, whether it took effect, and a message
/// for people that names what it was about.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Failure {
    pub kind: Kind,
    pub outcome: Outcome,
    pub message: String,
}

impl Failure {
    /// Definitely not carried out.
    pub fn not_done(kind: Kind, message: impl Into<String>) -> Failure {
        Failure { kind, outcome: Outcome::NotDone, message: message.into() }
    }

    /// May or may not have been carried out.
    pub fn unknown(kind: Kind, message: impl Into<String>) -> Failure {
        Failure { kind, outcome: Outcome::Unknown, message: message.into() }
    }

    pub fn bad_request(message: impl Into<String>) -> Failure {
        Failure::not_done(Kind::BadRequest, message)
    }

    pub fn internal(outcome: Outcome, message: impl Into<String>) -> Failure {
        Failure { kind: Kind::Internal, outcome, message: message.into() }
    }

    /// No leader to run the operation: not carried out.
    pub fn no_leader(message: impl Into<String>) -> Failure {
        Failure::not_done(Kind::NoLeader, message)
    }

    /// The same failure for an operation that changes nothing (a read, a
    /// status query): whatever happened, nothing was done.
    pub fn changed_nothing(self) -> Failure {
        Failure { outcome: Outcome::NotDone, ..self }
    }

    /// Whether a retry of the same operation is safe and may succeed.
    pub fn retry_safe(&self) -> bool {
        self.outcome == Outcome::NotDone
    }
}

impl fmt::Display for Failure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for Failure {}

impl From<RaftError> for Failure {
    /// The raft handle's errors, each with the outcome the handle documents.
    fn from(error: RaftError) -> Failure {
        let message = error.to_string();
        let (kind, outcome) = match &error {
            RaftError::NotLeader { .. } | RaftError::Read(_) => (Kind::NoLeader, Outcome::NotDone),
            // Proposed, then leadership moved or the node stopped: the entry
            // may be on followers already and commit later.
            RaftError::LeadershipLost | RaftError::Stopped { .. } => (Kind::OutcomeUnknown, Outcome::Unknown),
            RaftError::Timeout(_) => (Kind::Timeout, Outcome::Unknown),
            RaftError::Shutdown => (Kind::ShuttingDown, Outcome::NotDone),
            RaftError::Failed { .. } => (Kind::NodeFailed, Outcome::NotDone),
            // Did not move as far as this node saw; a late TimeoutNow may still
            // make the target campaign.
            RaftError::TransferFailed { .. } => (Kind::TransferFailed, Outcome::Unknown),
            RaftError::Refused(ProposeError::TransferInProgress { .. }) => (Kind::LeadershipTransfer, Outcome::NotDone),
            RaftError::Refused(ProposeError::ConfigChangePending { .. } | ProposeError::NoCommitInTerm { .. }) => {
                (Kind::NotReady, Outcome::NotDone)
            }
            RaftError::Refused(_) => (Kind::Refused, Outcome::NotDone),
            RaftError::Config(_) => (Kind::BadRequest, Outcome::NotDone),
            RaftError::NothingNewToSnapshot { .. } => (Kind::NothingNew, Outcome::NotDone),
            // Replaced by another leader's entry: it never commits.
            RaftError::Overwritten { .. } => (Kind::NoLeader, Outcome::NotDone),
            // Removed again (committed), or another change decided first.
            RaftError::NotCaughtUp { .. } => (Kind::NotCaughtUp, Outcome::NotDone),
            RaftError::Superseded { .. } => (Kind::Refused, Outcome::NotDone),
            other if other.outcome_unknown() => (Kind::Internal, Outcome::Unknown),
            _ => (Kind::Internal, Outcome::NotDone),
        };
        Failure { kind, outcome, message }
    }
}

#[cfg(test)]
mod tests {
    use raftkv_raft::NodeId;

    use super::*;

    #[test]
    fn codes_are_distinct() {
        let codes: std::collections::BTreeSet<&str> = Kind::ALL.iter().map(|k| k.code()).collect();
        assert_eq!(codes.len(), Kind::ALL.len());
    }

    /// A write whose entry may still commit is never reported as not done;
    /// one the node never took is.
    #[test]
    fn raft_errors_keep_their_outcome() {
        let unknown = [
            RaftError::LeadershipLost,
            RaftError::Stopped { reason: "shutdown".into() },
            RaftError::Timeout(std::time::Duration::from_secs(1)),
        ];
        for error in unknown {
            assert!(error.outcome_unknown());
            assert_eq!(Failure::from(error).outcome, Outcome::Unknown);
        }
        let not_done = [
            RaftError::NotLeader { leader: Some(NodeId(2)) },
            RaftError::Shutdown,
            RaftError::Failed { reason: "disk".into() },
        ];
        for error in not_done {
            assert!(!error.outcome_unknown());
            assert_eq!(Failure::from(error).outcome, Outcome::NotDone);
        }
    }
}
