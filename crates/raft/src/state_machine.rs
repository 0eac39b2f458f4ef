//! The application's replicated state machine, as the runtime sees it.

use std::io;

use bytes::Bytes;
use raft_core::Entry;

/// Applies committed entries. It runs on its own task; `apply` is called with
/// batches in log order, each entry once (after a restart, the log after the
/// newest snapshot is applied again on top of the restored snapshot).
pub trait StateMachine: Send + 'static {
    /// Applies `entries` in order and returns one response per entry (empty for
    /// no-ops and configuration entries, which the state machine may ignore).
    fn apply(&mut self, entries: &[Entry]) -> Vec<Bytes>;

    /// Captures the state after the last applied entry. This must be quick (a
    /// copy-on-write view, a clone of an immutable structure); the capture is
    /// written out on another thread while `apply` goes on.
    fn snapshot(&mut self) -> Box<dyn SnapshotSource>;

    /// Replaces the whole state with a snapshot's, as written by `write_to`.
    fn restore(&mut self, snapshot: &mut dyn io::Read) -> io::Result<()>;
}

/// A captured state, written out away from the apply task.
pub trait SnapshotSource: Send + 'static {
    fn write_to(self: Box<Self>, out: &mut dyn io::Write) -> io::Result<()>;
}
