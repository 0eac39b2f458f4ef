//! The contract of durable state: the three store traits (`LogStore`,
//! `StableStore`, `SnapshotStore` with its `SnapshotSink`), `SnapshotInfo`,
//! and the helpers the implementations share (`snapshot_id`,
//! `check_contiguous`). Every store imports them from here.

use std::io::{self, Read};

use bytes::Bytes;
use raftkv_core::{Entry, HardState, LogIndex, SnapshotMeta};

use crate::storage::error::{Result, StorageError};

/// The Raft log: contiguous entries `first_index..=last_index`.
///
/// An empty log still has a position: `first_index() == last_index() + 1`, so that
/// after a snapshot purged everything the next append continues where it left off.
/// A new store starts at index 1 (`first_index() == 1`, `last_index() == 0`).
pub trait LogStore: Send + Sync {
    /// Index of the first entry held, or `last_index() + 1` when empty.
    fn first_index(&self) -> Result<LogIndex>;
    /// Index of the last entry held, or `first_index() - 1` when empty.
    fn last_index(&self) -> Result<LogIndex>;
    /// The entry at `index`, or `None` outside `first_index..=last_index`.
    fn get(&self, index: LogIndex) -> Result<Option<Entry>>;
    /// Entries `from..=to`, clipped to what the log holds.
    fn get_range(&self, from: LogIndex, to: LogIndex) -> Result<Vec<Entry>>;
    /// Appends entries whose indexes continue the log (`last_index() + 1`, then
    /// consecutive) and returns once they are durable.
    fn append(&self, entries: &[Entry]) -> Result<()>;
    /// Removes every entry at or after `from` (`first_index() <= from`); durable on return.
    fn truncate_suffix(&self, from: LogIndex) -> Result<()>;
    /// Removes every entry at or before `upto`; durable on return. `upto` may lie
    /// past the last entry (a snapshot newer than the log): the log is then empty
    /// and the next append starts at `upto + 1`.
    fn purge_prefix(&self, upto: LogIndex) -> Result<()>;

    /// Whether every call returns without waiting on a device (a store in
    /// memory). When the log, stable and snapshot stores all say so, the
    /// runtime calls them from its own loop instead of handing each write to
    /// the log writer's thread, which saves two thread wake-ups per write.
    /// The default, `false`, is right for anything that touches a disk.
    fn in_memory(&self) -> bool {
        false
    }
}

/// The hard state (current term and vote) and a few named values.
pub trait StableStore: Send + Sync {
    /// The stored hard state; the default (term 0, no vote) when none was stored.
    fn hard_state(&self) -> Result<HardState>;
    /// Stores the hard state; durable on return.
    fn set_hard_state(&self, state: HardState) -> Result<()>;
    /// The value stored under `key`, if any.
    fn get(&self, key: &str) -> Result<Option<Vec<u8>>>;
    /// Stores a named value; durable on return.
    fn set(&self, key: &str, value: &[u8]) -> Result<()>;

    /// Whether every call returns without waiting on a device; see
    /// `LogStore::in_memory`.
    fn in_memory(&self) -> bool {
        false
    }

    /// A value stored with `set_u64` (8 bytes, big-endian); an error if the
    /// value under `key` has another length.
    fn get_u64(&self, key: &str) -> Result<Option<u64>> {
        match self.get(key)? {
            None => Ok(None),
            Some(bytes) => {
                let array: [u8; 8] = bytes.as_slice().try_into().map_err(|_| {
                    StorageError::invalid("get_u64", format!("value of {key:?} has {} bytes, not 8", bytes.len()))
                })?;
                Ok(Some(u64::from_be_bytes(array)))
            }
        }
    }

    /// Stores `value` under `key` as 8 bytes, big-endian; durable on return.
    fn set_u64(&self, key: &str, value: u64) -> Result<()> {
        self.set(key, &value.to_be_bytes())
    }
}

/// A stored snapshot as listed: its id, what it covers, and its data's size and
/// CRC-32C.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SnapshotInfo {
    /// The store's name for it; ids sort by (index, term) and never repeat.
    pub id: String,
    /// What it covers: its last included entry and the configuration there.
    pub meta: SnapshotMeta,
    /// Length of its data, in bytes.
    pub size: u64,
    /// CRC-32C of its data.
    pub checksum: u32,
}

/// Snapshots: written through a sink, listed newest first, read back verified.
pub trait SnapshotStore: Send + Sync {
    /// Starts a snapshot covering `meta`; nothing lists until the sink commits.
    fn create(&self, meta: SnapshotMeta) -> Result<Box<dyn SnapshotSink>>;
    /// Committed snapshots, newest (highest index, then term) first.
    fn list(&self) -> Result<Vec<SnapshotInfo>>;
    /// Opens a committed snapshot for reading, after verifying its checksum.
    fn open(&self, id: &str) -> Result<(SnapshotInfo, Box<dyn io::Read + Send>)>;

    /// Whether creating, writing and committing a snapshot never waits on a
    /// device; see `LogStore::in_memory`.
    fn in_memory(&self) -> bool {
        false
    }

    /// Up to `max` bytes of a committed snapshot's data at `offset` (fewer only at
    /// the end), for streaming it to a follower chunk by chunk. The default reads
    /// through `open`; stores that can read at an offset do better.
    fn read_chunk(&self, id: &str, offset: u64, max: usize) -> Result<Bytes> {
        let (_, mut reader) = self.open(id)?;
        let what = |e: io::Error| StorageError::io("read snapshot", id, e);
        io::copy(&mut (&mut reader).take(offset), &mut io::sink()).map_err(what)?;
        let mut data = Vec::with_capacity(max);
        reader.take(max as u64).read_to_end(&mut data).map_err(what)?;
        Ok(Bytes::from(data))
    }
}

/// A snapshot being written. Dropping it without `commit` cancels it.
pub trait SnapshotSink: io::Write + Send {
    /// The id the snapshot will be listed under once committed.
    fn id(&self) -> &str;
    /// Makes the snapshot durable and visible; older ones beyond the store's
    /// retention are removed.
    fn commit(self: Box<Self>) -> Result<SnapshotInfo>;
    /// Discards what was written.
    fn cancel(self: Box<Self>) -> Result<()>;
}

/// Names a snapshot so that ids sort by (index, term) and never repeat.
pub(crate) fn snapshot_id(meta: &SnapshotMeta, unique: u64) -> String {
    format!("{:020}-{:020}-{unique:016x}", meta.last_log_id.index.0, meta.last_log_id.term.0)
}

/// Checks that `entries` continue a log whose last index is `last`, with terms
/// that never go down.
pub(crate) fn check_contiguous(
    op: &'static str,
    last: LogIndex,
    last_term: raftkv_core::Term,
    entries: &[Entry],
) -> Result<()> {
    let mut expected = last.next();
    let mut term = last_term;
    for entry in entries {
        if entry.index != expected {
            return Err(StorageError::invalid(
                op,
                format!("entry index {} does not follow {} (expected {expected})", entry.index, expected.prev()),
            ));
        }
        if entry.term < term {
            return Err(StorageError::invalid(
                op,
                format!("entry {} has term {} below the preceding term {term}", entry.index, entry.term),
            ));
        }
        term = entry.term;
        expected = expected.next();
    }
    Ok(())
}
