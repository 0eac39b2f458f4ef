//! Snapshot files for the runtime: writing a capture, finding and restoring a
//! stored snapshot, reading chunks for a follower, and checking one received
//! from the leader as its chunks arrive.

use bytes::Bytes;
use raftkv_core::{InstallSnapshot, LogId, Message, NodeId, SnapshotMeta, Term};
use tokio::sync::mpsc;

use crate::runtime::events::LoopEvent;
use crate::state_machine::{SnapshotCheck, SnapshotSource, StateMachine};
use crate::storage::{SnapshotInfo, SnapshotStore, StorageError};

/// Writes a captured state to the store as the snapshot `meta`.
pub(crate) fn write_snapshot(
    store: &dyn SnapshotStore,
    meta: SnapshotMeta,
    source: Box<dyn SnapshotSource>,
) -> Result<SnapshotInfo, StorageError> {
    let id = meta.last_log_id;
    let started = std::time::Instant::now();
    let mut sink = store.create(meta)?;
    if let Err(e) = source.write_to(&mut sink) {
        let _ = sink.cancel();
        return Err(StorageError::io("write snapshot", id.to_string(), e));
    }
    let info = sink.commit()?;
    metrics::histogram!(crate::metrics::SNAPSHOT_SECONDS).record(started.elapsed());
    metrics::gauge!(crate::metrics::SNAPSHOT_BYTES).set(info.size as f64);
    metrics::counter!(crate::metrics::SNAPSHOTS).increment(1);
    Ok(info)
}

/// The stored snapshot that covers exactly up to `id`.
pub(crate) fn find_snapshot(store: &dyn SnapshotStore, id: LogId) -> Result<SnapshotInfo, StorageError> {
    store
        .list()?
        .into_iter()
        .find(|info| info.meta.last_log_id == id)
        .ok_or_else(|| StorageError::NotFound { what: format!("snapshot {id}") })
}

/// Restores the stored snapshot `meta` into the state machine.
pub(crate) fn restore(
    state_machine: &mut dyn StateMachine,
    store: &dyn SnapshotStore,
    meta: &SnapshotMeta,
) -> Result<(), String> {
    let id = meta.last_log_id;
    let info = find_snapshot(store, id).map_err(|e| format!("snapshot {id} to restore: {e}"))?;
    let (_, mut reader) = store.open(&info.id).map_err(|e| format!("opening snapshot {id}: {e}"))?;
    state_machine.restore(&mut reader).map_err(|e| format!("restoring snapshot {id}: {e}"))
}

/// Reads up to `max` bytes of the stored snapshot `meta` at `offset`, as the
/// `InstallSnapshot` message for a follower.
pub(crate) fn read_chunk(
    store: &dyn SnapshotStore,
    term: Term,
    meta: SnapshotMeta,
    offset: u64,
    max: usize,
) -> Result<Message, StorageError> {
    let info = find_snapshot(store, meta.last_log_id)?;
    let data = store.read_chunk(&info.id, offset, max)?;
    let done = offset + data.len() as u64 >= info.size;
    Ok(Message::InstallSnapshot(InstallSnapshot { term, meta, offset, data, done }))
}

/// Runs the state machine's check of the snapshot arriving as `serial` on a
/// thread of its own, over the chunks sent into the returned feed; the
/// verdict comes back as `LoopEvent::SnapshotChecked` once the feed is closed
/// (or the check ends early).
pub(crate) fn spawn_check(
    check: SnapshotCheck,
    node: NodeId,
    serial: u64,
    events: mpsc::UnboundedSender<LoopEvent>,
) -> std::sync::mpsc::Sender<Bytes> {
    let (feed, chunks) = std::sync::mpsc::channel();
    let verdicts = events.clone();
    let run = move || {
        let mut reader = ChunkReader { chunks, current: Bytes::new() };
        let checked = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| check(&mut reader)));
        let result = match checked {
            Ok(Ok(())) => Ok(()),
            Ok(Err(error)) => Err(error.to_string()),
            Err(_) => Err("the check panicked".to_string()),
        };
        let _ = events.send(LoopEvent::SnapshotChecked { serial, result });
    };
    let name = format!("raft-snapshot-check-{node}-{serial}");
    if let Err(error) = std::thread::Builder::new().name(name).spawn(run) {
        // Without its thread the check cannot run: refuse rather than trust.
        let result = Err(format!("cannot start the check: {error}"));
        let _ = verdicts.send(LoopEvent::SnapshotChecked { serial, result });
    }
    feed
}

/// The chunks of a snapshot as they arrive, as one `Read`; it ends when the
/// feed closes.
struct ChunkReader {
    chunks: std::sync::mpsc::Receiver<Bytes>,
    current: Bytes,
}

impl std::io::Read for ChunkReader {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        while self.current.is_empty() {
            match self.chunks.recv() {
                Ok(chunk) => self.current = chunk,
                Err(_) => return Ok(0),
            }
        }
        let n = buf.len().min(self.current.len());
        buf[..n].copy_from_slice(&self.current[..n]);
        bytes::Buf::advance(&mut self.current, n);
        Ok(n)
    }
}
