//! Durable state of a Raft node: the log, the hard state (term and vote) and
//! snapshots, behind three traits in the spirit of hashicorp/raft's `LogStore`,
//! `StableStore` and `SnapshotStore`.
//!
//! Every implementation here comes in two kinds: in memory (`memory`), for tests
//! and the simulator's model, and on disk (`wal`, `stable`, `snapshot`). The
//! [`conformance`] suite checks any implementation against the contract written
//! on the traits; both kinds pass it.
//!
//! The contract all three share: a method that returns `Ok` after a write has made
//! it durable (it survives a crash of the process or the machine). A store that
//! cannot trust its disk any more (a failed fsync: the page cache may hold what
//! the disk lost) refuses every later write with [`StorageError::Poisoned`]
//! rather than acknowledge something it may lose. A full disk (ENOSPC) is
//! reported ([`StorageError::is_out_of_space`]), the partial bytes are cut off
//! again, and the store stays usable once space is freed.
//!
//! The on-disk stores: [`wal`] (the log; its module doc describes the format,
//! group commit, crash safety and recovery), [`stable`] (hard state and named
//! values, one file replaced atomically), [`snapshot`] (one directory per
//! snapshot); all reach the file system through [`vfs`], where [`fault`]
//! injects EIO, ENOSPC and counts fsyncs for the tests.

use std::io::{self, Read};
use std::path::PathBuf;

use bytes::Bytes;
use raftkv_core::{Entry, HardState, LogIndex, SnapshotMeta};

pub mod codec;
pub mod conformance;
pub mod fault;
pub mod memory;
pub mod snapshot;
pub mod stable;
pub mod vfs;
pub mod wal;

pub use memory::{MemLogStore, MemSnapshotStore, MemStableStore};
pub use snapshot::FileSnapshotStore;
pub use stable::FileStableStore;
pub use wal::{Wal, WalOptions};

/// What went wrong in a store, with the file, offset or index concerned.
#[derive(Debug, thiserror::Error)]
pub enum StorageError {
    #[error("{op} {path}: {source}")]
    Io {
        op: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    /// Data on disk failed a check (checksum, framing, sequence). Never skipped.
    #[error("corrupt data in {path} at offset {offset}: {reason}")]
    Corrupt { path: PathBuf, offset: u64, reason: String },
    /// An earlier write or fsync failed, so the page cache can no longer be trusted
    /// to match the disk; every later write is refused.
    #[error("store refuses writes after an earlier failure: {reason}")]
    Poisoned { reason: String },
    /// The caller broke the contract (a gap in appended indexes, a truncation below
    /// the first index, ...). Nothing was written.
    #[error("{op}: {reason}")]
    InvalidArgument { op: &'static str, reason: String },
    #[error("{what} not found")]
    NotFound { what: String },
    /// The stores disagree in a way no crash leaves behind (entries missing
    /// between the snapshot and the log, say): the node cannot start from them.
    #[error("inconsistent stored state: {what}")]
    Inconsistent { what: String },
}

impl StorageError {
    pub(crate) fn io(op: &'static str, path: impl Into<PathBuf>, source: io::Error) -> StorageError {
        StorageError::Io { op, path: path.into(), source }
    }

    pub(crate) fn invalid(op: &'static str, reason: impl Into<String>) -> StorageError {
        StorageError::InvalidArgument { op, reason: reason.into() }
    }

    /// Whether the disk ran out of space (the write was refused; nothing
    /// acknowledged before it is affected).
    pub fn is_out_of_space(&self) -> bool {
        matches!(self, StorageError::Io { source, .. } if source.raw_os_error() == Some(ENOSPC))
    }
}

const ENOSPC: i32 = 28;

pub type Result<T, E = StorageError> = std::result::Result<T, E>;

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
}

/// The hard state (current term and vote) and a few named values.
pub trait StableStore: Send + Sync {
    /// The stored hard state; the default (term 0, no vote) when none was stored.
    fn hard_state(&self) -> Result<HardState>;
    /// Stores the hard state; durable on return.
    fn set_hard_state(&self, state: HardState) -> Result<()>;
    fn get(&self, key: &str) -> Result<Option<Vec<u8>>>;
    /// Stores a named value; durable on return.
    fn set(&self, key: &str, value: &[u8]) -> Result<()>;

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

    fn set_u64(&self, key: &str, value: u64) -> Result<()> {
        self.set(key, &value.to_be_bytes())
    }
}

/// A stored snapshot as listed: its id, what it covers, and its data's size and
/// CRC-32C.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SnapshotInfo {
    pub id: String,
    pub meta: SnapshotMeta,
    pub size: u64,
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
