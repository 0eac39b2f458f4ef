//! The application's replicated state machine, as the runtime sees it.

use bytes::Bytes;
use raft_core::Entry;

/// Applies committed entries. It runs on its own task; `apply` is called with
/// batches in log order, each entry exactly once per process lifetime (after a
/// restart the log is replayed from the last snapshot).
pub trait StateMachine: Send + 'static {
    /// Applies `entries` in order and returns one response per entry (empty for
    /// no-ops and configuration entries, which the state machine may ignore).
    fn apply(&mut self, entries: &[Entry]) -> Vec<Bytes>;
}
