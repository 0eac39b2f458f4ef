//! What passes between the rooms of the runtime: the `Raft` handle's
//! `Request`s to the raft loop, the callers waiting for an answer (`Pending`,
//! answered through a `Reply`), the reports of the other rooms to the raft
//! loop (`LoopEvent`), and the clock they all run on (`millis_since`). A
//! leaf: the raft loop, the apply task and the snapshot code import it.

use std::time::{Duration, Instant};

use bytes::Bytes;
use raftkv_core::{LogId, LogIndex, MembershipChange, Message, NodeId, ReadMode, RestoreStep};
use raftkv_driver::{Failure, Status};
use tokio::sync::oneshot;

use crate::config::{Config, ReloadableConfig};
use crate::error::RaftError;
use crate::state_machine::SnapshotSource;

pub(crate) type Reply<T> = oneshot::Sender<Result<T, RaftError>>;

/// What the `Raft` handle asks of the raft loop.
pub(crate) enum Request {
    Propose {
        command: Bytes,
        reply: Reply<(LogIndex, Bytes)>,
    },
    /// One step of a restore through the log (`Raft::restore`).
    Restore {
        step: RestoreStep,
        reply: Reply<(LogIndex, Bytes)>,
    },
    Read {
        mode: ReadMode,
        reply: Reply<LogIndex>,
    },
    Membership {
        change: MembershipChange,
        prev_index: Option<LogIndex>,
        reply: Reply<(LogIndex, Bytes)>,
    },
    /// A voter added through staging (`Raft::add_voter`); removed again if
    /// not caught up within `timeout_ms`.
    AddVoter {
        id: NodeId,
        prev_index: Option<LogIndex>,
        timeout_ms: u64,
        reply: Reply<(LogIndex, Bytes)>,
    },
    /// Answered with how long the transfer may take once it started, or
    /// `None` when the target is this node and it leads.
    Transfer {
        target: NodeId,
        reply: Reply<Option<Duration>>,
    },
    Status {
        reply: oneshot::Sender<Status>,
    },
    Snapshot {
        reply: Reply<LogId>,
    },
    /// Boxed: every proposal moves through the channel as a `Request`,
    /// which is as large as its largest variant.
    Reload {
        reload: Box<ReloadableConfig>,
        reply: Reply<Config>,
    },
}

/// A caller waiting for an answer: the driver's reply value.
pub(crate) enum Pending {
    Write(Reply<(LogIndex, Bytes)>),
    Read(Reply<LogIndex>),
    Transfer(Reply<Option<Duration>>),
    Snapshot(Reply<LogId>),
}

impl Pending {
    pub(crate) fn fail(self, failure: Failure) {
        let error = RaftError::from(failure);
        match self {
            Pending::Write(reply) => drop(reply.send(Err(error))),
            Pending::Read(reply) => drop(reply.send(Err(error))),
            Pending::Transfer(reply) => drop(reply.send(Err(error))),
            Pending::Snapshot(reply) => drop(reply.send(Err(error))),
        }
    }

    pub(crate) fn applied(self, index: LogIndex, response: Bytes) {
        match self {
            Pending::Write(reply) => drop(reply.send(Ok((index, response)))),
            other => other.mismatch("a write's answer"),
        }
    }

    /// A restore's `Commit` applied at `index` was refused: nothing changed.
    pub(crate) fn restore_refused(self, index: LogIndex, reason: String) {
        match self {
            Pending::Write(reply) => drop(reply.send(Err(RaftError::RestoreFailed { index, reason }))),
            other => other.mismatch("a restore's answer"),
        }
    }

    pub(crate) fn read_at(self, index: LogIndex) {
        match self {
            Pending::Read(reply) => drop(reply.send(Ok(index))),
            other => other.mismatch("a read's answer"),
        }
    }

    pub(crate) fn snapshot_taken(self, id: LogId) {
        match self {
            Pending::Snapshot(reply) => drop(reply.send(Ok(id))),
            other => other.mismatch("a snapshot's answer"),
        }
    }

    pub(crate) fn transfer_started(self, wait: Option<Duration>) {
        match self {
            Pending::Transfer(reply) => drop(reply.send(Ok(wait))),
            other => other.mismatch("a transfer's answer"),
        }
    }

    /// An answer of the wrong kind: a bug between driver and executor, told
    /// to the caller rather than lost.
    fn mismatch(self, what: &str) {
        tracing::error!(what, "an answer reached a caller waiting for something else");
        self.fail(Failure::Snapshot { reason: format!("internal error: {what} reached the wrong caller") });
    }
}

/// What the other rooms tell the raft loop.
pub(crate) enum LoopEvent {
    /// The state machine captured its state after `index`; write it out.
    SnapshotCaptured {
        index: LogIndex,
        source: Box<dyn SnapshotSource>,
        waiters: Vec<Pending>,
    },
    SnapshotWritten {
        index: LogIndex,
        result: Result<raftkv_core::SnapshotMeta, String>,
    },
    ChunkRead {
        to: NodeId,
        message: Message,
    },
    /// The state machine's check of the snapshot received as `serial` ended.
    SnapshotChecked {
        serial: u64,
        result: Result<(), String>,
    },
    /// Something this node cannot continue after.
    Fatal(String),
}

/// Milliseconds since `start`: the clock the core and the applier run on.
pub(crate) fn millis_since(start: Instant) -> u64 {
    start.elapsed().as_millis().min(u64::MAX as u128) as u64
}
