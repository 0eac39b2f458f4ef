//! The application's replicated state machine, as the runtime sees it.

use std::io;
use std::sync::Arc;

use bytes::Bytes;
use raftkv_core::Entry;

/// Applies committed entries. It runs on its own task; `apply` is called with
/// batches in log order, each entry once (after a restart, the log after the
/// newest snapshot is applied again on top of the restored snapshot).
pub trait StateMachine: Send + 'static {
    /// Applies `entries` in order and returns one response per entry (empty for
    /// no-ops and configuration entries, which the state machine may ignore).
    /// The entries of a restore (`EntryPayload::Restore`, `Raft::restore`)
    /// never reach it: the runtime carries them out with `restore`.
    fn apply(&mut self, entries: &[Entry]) -> Vec<Bytes>;

    /// Captures the state after the last applied entry. This must be quick (a
    /// copy-on-write view, a clone of an immutable structure); the capture is
    /// written out on another thread while `apply` goes on.
    fn snapshot(&mut self) -> Box<dyn SnapshotSource>;

    /// Replaces the whole state with a snapshot's, as written by `write_to`:
    /// a stored or installed snapshot, or the bytes given to `Raft::restore`
    /// at its `Commit` entry (after `snapshot_check`, if any, accepted them;
    /// without a check the state is captured first and put back if this
    /// fails, so that a refused restore changes nothing).
    fn restore(&mut self, snapshot: &mut dyn io::Read) -> io::Result<()>;

    /// How to check a snapshot received from the leader before it replaces
    /// anything: format, checksum, limits. Asked once, when the node starts;
    /// the check reads the snapshot as its chunks arrive, on a thread of its
    /// own. A refused snapshot is not stored and the node keeps its state and
    /// log (the leader sends it again). The check also runs on the bytes of a
    /// `Raft::restore` at its `Commit`: refused there, the restore is refused
    /// on every node and changes nothing. `None`: every snapshot is accepted,
    /// and one `restore` cannot read stops the node.
    fn snapshot_check(&self) -> Option<SnapshotCheck> {
        None
    }
}

/// Reads a whole snapshot and says whether `restore` would accept it.
pub type SnapshotCheck = Arc<dyn Fn(&mut dyn io::Read) -> io::Result<()> + Send + Sync>;

/// A captured state, written out away from the apply task.
pub trait SnapshotSource: Send + 'static {
    /// Writes the captured state to `out`, in the format
    /// `StateMachine::restore` reads. Runs on a blocking thread while `apply`
    /// goes on; an error fails the snapshot, which is then not stored.
    fn write_to(self: Box<Self>, out: &mut dyn io::Write) -> io::Result<()>;
}
