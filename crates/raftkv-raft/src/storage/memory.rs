//! In-memory stores: the reference behaviour of each trait, for tests and for
//! nodes that need no durability. Nothing survives the process.

use std::collections::{BTreeMap, VecDeque};
use std::io::{self, Cursor};
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use raftkv_core::{Entry, HardState, LogIndex, NodeId, SnapshotMeta, Term};

use crate::locks::lock;

use crate::storage::error::{Result, StorageError};
use crate::storage::traits::{
    check_contiguous, snapshot_id, LogStore, SnapshotInfo, SnapshotSink, SnapshotStore, StableStore,
};

#[derive(Debug)]
struct MemLog {
    /// Index of `entries[0]`, or of the next append when empty.
    first: LogIndex,
    entries: VecDeque<Entry>,
}

impl MemLog {
    fn last(&self) -> LogIndex {
        LogIndex(self.first.0 + self.entries.len() as u64 - 1)
    }
}

/// A `LogStore` in memory: the reference behaviour of the trait.
#[derive(Debug)]
pub struct MemLogStore {
    log: Mutex<MemLog>,
}

impl Default for MemLogStore {
    fn default() -> Self {
        MemLogStore { log: Mutex::new(MemLog { first: LogIndex(1), entries: VecDeque::new() }) }
    }
}

impl MemLogStore {
    /// An empty log, starting at index 1.
    pub fn new() -> MemLogStore {
        MemLogStore::default()
    }
}

impl LogStore for MemLogStore {
    fn in_memory(&self) -> bool {
        true
    }

    fn first_index(&self) -> Result<LogIndex> {
        Ok(lock(&self.log).first)
    }

    fn last_index(&self) -> Result<LogIndex> {
        Ok(lock(&self.log).last())
    }

    fn get(&self, index: LogIndex) -> Result<Option<Entry>> {
        let log = lock(&self.log);
        if index < log.first {
            return Ok(None);
        }
        Ok(log.entries.get((index.0 - log.first.0) as usize).cloned())
    }

    fn get_range(&self, from: LogIndex, to: LogIndex) -> Result<Vec<Entry>> {
        let log = lock(&self.log);
        let from = from.max(log.first);
        let to = to.min(log.last());
        if from > to {
            return Ok(Vec::new());
        }
        let start = (from.0 - log.first.0) as usize;
        let end = (to.0 - log.first.0) as usize;
        Ok(log.entries.range(start..=end).cloned().collect())
    }

    fn append(&self, entries: &[Entry]) -> Result<()> {
        let mut log = lock(&self.log);
        let last_term = log.entries.back().map_or(Term(0), |e| e.term);
        check_contiguous("append", log.last(), last_term, entries)?;
        log.entries.extend(entries.iter().cloned());
        Ok(())
    }

    fn truncate_suffix(&self, from: LogIndex) -> Result<()> {
        let mut log = lock(&self.log);
        if from < log.first {
            return Err(StorageError::invalid(
                "truncate_suffix",
                format!("index {from} is below the first index {}", log.first),
            ));
        }
        let keep = (from.0 - log.first.0) as usize;
        log.entries.truncate(keep);
        Ok(())
    }

    fn purge_prefix(&self, upto: LogIndex) -> Result<()> {
        let mut log = lock(&self.log);
        if upto < log.first {
            return Ok(());
        }
        if upto >= log.last() {
            log.entries.clear();
        } else {
            let drop = (upto.0 + 1 - log.first.0) as usize;
            log.entries.drain(..drop);
        }
        log.first = upto.next();
        Ok(())
    }
}

/// A `StableStore` in memory; the hard state is kept as named values.
#[derive(Debug, Default)]
pub struct MemStableStore {
    values: Mutex<BTreeMap<String, Vec<u8>>>,
}

impl MemStableStore {
    /// An empty store: term 0, no vote, no values.
    pub fn new() -> MemStableStore {
        MemStableStore::default()
    }
}

pub(crate) const TERM_KEY: &str = "raft.current_term";
pub(crate) const VOTE_KEY: &str = "raft.voted_for";

/// The hard state as stored under `TERM_KEY` and `VOTE_KEY`.
pub(crate) fn hard_state_from(store: &dyn StableStore) -> Result<HardState> {
    let current_term = Term(store.get_u64(TERM_KEY)?.unwrap_or(0));
    let voted_for = match store.get(VOTE_KEY)? {
        None => None,
        Some(bytes) if bytes.is_empty() => None,
        Some(_) => store.get_u64(VOTE_KEY)?.map(NodeId),
    };
    Ok(HardState { current_term, voted_for })
}

pub(crate) fn hard_state_values(state: HardState) -> [(&'static str, Vec<u8>); 2] {
    let vote = state.voted_for.map_or(Vec::new(), |id| id.0.to_be_bytes().to_vec());
    [(TERM_KEY, state.current_term.0.to_be_bytes().to_vec()), (VOTE_KEY, vote)]
}

impl StableStore for MemStableStore {
    fn in_memory(&self) -> bool {
        true
    }

    fn hard_state(&self) -> Result<HardState> {
        hard_state_from(self)
    }

    fn set_hard_state(&self, state: HardState) -> Result<()> {
        let mut values = lock(&self.values);
        for (key, value) in hard_state_values(state) {
            values.insert(key.to_string(), value);
        }
        Ok(())
    }

    fn get(&self, key: &str) -> Result<Option<Vec<u8>>> {
        Ok(lock(&self.values).get(key).cloned())
    }

    fn set(&self, key: &str, value: &[u8]) -> Result<()> {
        lock(&self.values).insert(key.to_string(), value.to_vec());
        Ok(())
    }
}

#[derive(Debug)]
struct MemSnapshots {
    committed: BTreeMap<String, (SnapshotInfo, Bytes)>,
    next_unique: u64,
}

/// Snapshots in memory, keeping the newest `retain`.
#[derive(Clone, Debug)]
pub struct MemSnapshotStore {
    inner: Arc<Mutex<MemSnapshots>>,
    retain: usize,
}

impl MemSnapshotStore {
    /// An empty store that keeps the newest `retain` committed snapshots (at
    /// least one).
    pub fn new(retain: usize) -> MemSnapshotStore {
        let inner = MemSnapshots { committed: BTreeMap::new(), next_unique: 0 };
        MemSnapshotStore { inner: Arc::new(Mutex::new(inner)), retain: retain.max(1) }
    }
}

impl SnapshotStore for MemSnapshotStore {
    fn in_memory(&self) -> bool {
        true
    }

    fn create(&self, meta: SnapshotMeta) -> Result<Box<dyn SnapshotSink>> {
        let mut inner = lock(&self.inner);
        inner.next_unique += 1;
        let id = snapshot_id(&meta, inner.next_unique);
        Ok(Box::new(MemSink { store: self.clone(), id, meta, data: Vec::new() }))
    }

    fn list(&self) -> Result<Vec<SnapshotInfo>> {
        // Ids sort by (index, term, creation): newest last.
        Ok(lock(&self.inner).committed.values().rev().map(|(info, _)| info.clone()).collect())
    }

    fn open(&self, id: &str) -> Result<(SnapshotInfo, Box<dyn io::Read + Send>)> {
        let inner = lock(&self.inner);
        let (info, data) =
            inner.committed.get(id).ok_or_else(|| StorageError::NotFound { what: format!("snapshot {id}") })?;
        Ok((info.clone(), Box::new(Cursor::new(data.clone()))))
    }
}

struct MemSink {
    store: MemSnapshotStore,
    id: String,
    meta: SnapshotMeta,
    data: Vec<u8>,
}

impl io::Write for MemSink {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.data.extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl SnapshotSink for MemSink {
    fn id(&self) -> &str {
        &self.id
    }

    fn commit(self: Box<Self>) -> Result<SnapshotInfo> {
        let sink = *self;
        let info = SnapshotInfo {
            id: sink.id.clone(),
            meta: sink.meta,
            size: sink.data.len() as u64,
            checksum: crc32c::crc32c(&sink.data),
        };
        let mut inner = lock(&sink.store.inner);
        inner.committed.insert(sink.id, (info.clone(), Bytes::from(sink.data)));
        while inner.committed.len() > sink.store.retain {
            inner.committed.pop_first();
        }
        Ok(info)
    }

    fn cancel(self: Box<Self>) -> Result<()> {
        Ok(())
    }
}
