//! A conformance suite for storage implementations: any `LogStore`,
//! `StableStore` or `SnapshotStore` can run it to check that it keeps the
//! contract the runtime relies on. Each function runs every check on fresh
//! stores made by the factory it is given, and panics with a message naming the
//! check that failed, so it fits in a `#[test]`.
//!
//! ```
//! use raftkv_raft::storage::{conformance, MemLogStore, MemSnapshotStore, MemStableStore};
//!
//! conformance::log_store(MemLogStore::new);
//! conformance::stable_store(MemStableStore::new);
//! conformance::snapshot_store(MemSnapshotStore::new);
//! ```
//!
//! A durable store is tested the same way with a factory that opens it in a new
//! temporary directory each time, e.g.
//! `conformance::log_store(|| Wal::open(tempdir().into_path(), WalOptions::default()).unwrap())`.

use std::io::{Read, Write};

use bytes::Bytes;
use raftkv_core::{Configuration, Entry, EntryPayload, HardState, LogId, LogIndex, NodeId, SnapshotMeta, Term};

use crate::storage::error::StorageError;
use crate::storage::traits::{LogStore, SnapshotInfo, SnapshotStore, StableStore};

fn entry(term: u64, index: u64) -> Entry {
    let payload = match index % 3 {
        0 => EntryPayload::Command(Bytes::from(format!("command {index} of term {term}"))),
        1 => EntryPayload::Noop,
        _ => EntryPayload::Config(Configuration::new([NodeId(1), NodeId(index)])),
    };
    Entry { term: Term(term), index: LogIndex(index), payload }
}

fn entries(term: u64, from: u64, to: u64) -> Vec<Entry> {
    (from..=to).map(|i| entry(term, i)).collect()
}

fn bounds(store: &impl LogStore) -> (u64, u64) {
    let first = store.first_index().expect("first_index");
    let last = store.last_index().expect("last_index");
    (first.0, last.0)
}

/// Runs every `LogStore` check, each on a store from `new_store`.
pub fn log_store<S: LogStore>(mut new_store: impl FnMut() -> S) {
    // A new store is empty and starts at index 1.
    let store = new_store();
    assert_eq!(bounds(&store), (1, 0), "new log: (first, last)");
    assert_eq!(store.get(LogIndex(1)).expect("get"), None, "new log: get(1)");
    assert!(store.get_range(LogIndex(1), LogIndex(10)).expect("get_range").is_empty(), "new log: get_range");

    // Appends in batches; reads back singly and by range, clipped to the log.
    let store = new_store();
    store.append(&entries(1, 1, 5)).expect("append 1..=5");
    store.append(&entries(2, 6, 6)).expect("append 6");
    store.append(&entries(2, 7, 20)).expect("append 7..=20");
    assert_eq!(bounds(&store), (1, 20), "after appends: (first, last)");
    for i in 1..=20 {
        let term = if i <= 5 { 1 } else { 2 };
        assert_eq!(store.get(LogIndex(i)).expect("get"), Some(entry(term, i)), "get({i})");
    }
    assert_eq!(store.get(LogIndex(21)).expect("get"), None, "get past the end");
    assert_eq!(store.get(LogIndex(0)).expect("get"), None, "get(0)");
    let range = store.get_range(LogIndex(4), LogIndex(8)).expect("get_range");
    assert_eq!(range, [entries(1, 4, 5), entries(2, 6, 8)].concat(), "get_range(4, 8)");
    let clipped = store.get_range(LogIndex(18), LogIndex(99)).expect("get_range");
    assert_eq!(clipped, entries(2, 18, 20), "get_range clipped at the end");
    assert!(store.get_range(LogIndex(9), LogIndex(8)).expect("get_range").is_empty(), "empty range");

    // Gaps, overlaps and falling terms are refused and change nothing.
    for (bad, what) in [
        (entries(2, 22, 22), "a gap"),
        (entries(2, 20, 21), "an overlap"),
        (entries(1, 21, 21), "a term below the last"),
        (vec![entry(2, 21), entry(2, 23)], "a gap inside the batch"),
    ] {
        match store.append(&bad) {
            Err(StorageError::InvalidArgument { .. }) => {}
            other => panic!("append with {what}: expected InvalidArgument, got {other:?}"),
        }
        assert_eq!(bounds(&store), (1, 20), "append with {what} changed the log");
    }
    store.append(&[]).expect("an empty append is a no-op");

    // Suffix truncation, then appends of a newer term continue from there.
    store.truncate_suffix(LogIndex(15)).expect("truncate_suffix(15)");
    assert_eq!(bounds(&store), (1, 14), "after truncate_suffix(15)");
    assert_eq!(store.get(LogIndex(15)).expect("get"), None, "truncated entry still readable");
    store.truncate_suffix(LogIndex(30)).expect("truncate past the end is a no-op");
    assert_eq!(bounds(&store), (1, 14), "after a no-op truncation");
    store.append(&entries(3, 15, 16)).expect("append after truncation");
    assert_eq!(store.get(LogIndex(15)).expect("get"), Some(entry(3, 15)), "entry replaced after truncation");

    // Prefix purge.
    store.purge_prefix(LogIndex(10)).expect("purge_prefix(10)");
    assert_eq!(bounds(&store), (11, 16), "after purge_prefix(10)");
    assert_eq!(store.get(LogIndex(10)).expect("get"), None, "purged entry still readable");
    assert_eq!(store.get(LogIndex(11)).expect("get"), Some(entry(2, 11)), "first entry after purge");
    assert_eq!(store.get_range(LogIndex(1), LogIndex(12)).expect("get_range"), entries(2, 11, 12), "range clipped");
    store.purge_prefix(LogIndex(5)).expect("purging below the first index is a no-op");
    assert_eq!(bounds(&store), (11, 16), "after a no-op purge");
    match store.truncate_suffix(LogIndex(5)) {
        Err(StorageError::InvalidArgument { .. }) => {}
        other => panic!("truncate_suffix below the first index: expected InvalidArgument, got {other:?}"),
    }

    // Purging past the end empties the log; appends continue after the purge point.
    store.purge_prefix(LogIndex(100)).expect("purge_prefix(100)");
    assert_eq!(bounds(&store), (101, 100), "after purging past the end");
    assert!(store.append(&entries(4, 100, 100)).is_err(), "append below the purge point");
    store.append(&entries(4, 101, 103)).expect("append after purging everything");
    assert_eq!(bounds(&store), (101, 103), "appends continue after the purge point");
    assert_eq!(store.get(LogIndex(101)).expect("get"), Some(entry(4, 101)), "entry after the purge point");

    // Truncating everything keeps the position.
    store.truncate_suffix(LogIndex(101)).expect("truncate_suffix(first)");
    assert_eq!(bounds(&store), (101, 100), "after truncating every entry");
    store.append(&entries(5, 101, 101)).expect("append after truncating every entry");
    assert_eq!(store.get(LogIndex(101)).expect("get"), Some(entry(5, 101)), "entry after truncating all");

    // Many small appends.
    let store = new_store();
    for i in 1..=1000 {
        store.append(&[entry(1 + i / 100, i)]).expect("append one");
    }
    assert_eq!(bounds(&store), (1, 1000), "after 1000 single appends");
    let all = store.get_range(LogIndex(1), LogIndex(1000)).expect("get_range");
    assert_eq!(all.len(), 1000, "get_range of 1000 entries");
    assert!(all.iter().enumerate().all(|(i, e)| *e == entry(1 + (i as u64 + 1) / 100, i as u64 + 1)));
}

/// Runs every `StableStore` check, each on a store from `new_store`.
pub fn stable_store<S: StableStore>(mut new_store: impl FnMut() -> S) {
    let store = new_store();
    assert_eq!(store.hard_state().expect("hard_state"), HardState::default(), "new store: hard state");
    assert_eq!(store.get("missing").expect("get"), None, "new store: get");
    assert_eq!(store.get_u64("missing").expect("get_u64"), None, "new store: get_u64");

    let state = HardState { current_term: Term(7), voted_for: Some(NodeId(3)) };
    store.set_hard_state(state).expect("set_hard_state");
    assert_eq!(store.hard_state().expect("hard_state"), state, "hard state read back");
    let no_vote = HardState { current_term: Term(8), voted_for: None };
    store.set_hard_state(no_vote).expect("set_hard_state");
    assert_eq!(store.hard_state().expect("hard_state"), no_vote, "vote cleared in a new term");

    store.set("name", b"value").expect("set");
    store.set("empty", b"").expect("set empty");
    store.set_u64("counter", 42).expect("set_u64");
    assert_eq!(store.get("name").expect("get"), Some(b"value".to_vec()), "named value");
    assert_eq!(store.get("empty").expect("get"), Some(Vec::new()), "empty value");
    assert_eq!(store.get_u64("counter").expect("get_u64"), Some(42), "u64 value");
    assert!(store.get_u64("name").is_err(), "get_u64 of a 5-byte value must fail");
    store.set("name", b"other").expect("overwrite");
    assert_eq!(store.get("name").expect("get"), Some(b"other".to_vec()), "overwritten value");
    assert_eq!(store.hard_state().expect("hard_state"), no_vote, "named values leave the hard state alone");
}

fn meta(term: u64, index: u64) -> SnapshotMeta {
    let mut config = Configuration::new([NodeId(1), NodeId(2), NodeId(3)]);
    config.learners.insert(NodeId(9));
    SnapshotMeta { last_log_id: LogId::new(Term(term), LogIndex(index)), config }
}

fn write_snapshot(store: &impl SnapshotStore, term: u64, index: u64, data: &[u8]) -> SnapshotInfo {
    let mut sink = store.create(meta(term, index)).expect("create");
    // Write in uneven pieces, as a state machine streaming its state would.
    for piece in data.chunks(777) {
        sink.write_all(piece).expect("write");
    }
    sink.commit().expect("commit")
}

fn read_snapshot(store: &impl SnapshotStore, id: &str) -> (SnapshotInfo, Vec<u8>) {
    let (info, mut reader) = store.open(id).expect("open");
    let mut data = Vec::new();
    reader.read_to_end(&mut data).expect("read");
    (info, data)
}

/// Runs every `SnapshotStore` check on stores from `new_store(retain)`.
pub fn snapshot_store<S: SnapshotStore>(mut new_store: impl FnMut(usize) -> S) {
    let store = new_store(2);
    assert!(store.list().expect("list").is_empty(), "new store lists nothing");
    match store.open("no-such-id") {
        Err(StorageError::NotFound { .. }) => {}
        Err(other) => panic!("open of an unknown id: expected NotFound, got {other}"),
        Ok(_) => panic!("open of an unknown id succeeded"),
    }

    let data: Vec<u8> = (0..100_000u32).flat_map(|i| i.to_le_bytes()).collect();
    let info = write_snapshot(&store, 2, 50, &data);
    assert_eq!(info.meta, meta(2, 50), "committed metadata");
    assert_eq!(info.size, data.len() as u64, "committed size");
    assert_eq!(info.checksum, crc32c::crc32c(&data), "committed checksum (CRC-32C)");
    assert_eq!(store.list().expect("list"), vec![info.clone()], "list after one commit");
    let (opened, read) = read_snapshot(&store, &info.id);
    assert_eq!(opened, info, "opened metadata");
    assert!(read == data, "snapshot data read back differs");

    // A sink not committed never lists, whether cancelled or dropped.
    let mut sink = store.create(meta(3, 60)).expect("create");
    sink.write_all(b"partial").expect("write");
    assert_eq!(store.list().expect("list").len(), 1, "an uncommitted snapshot lists");
    sink.cancel().expect("cancel");
    let mut sink = store.create(meta(3, 61)).expect("create");
    sink.write_all(b"dropped").expect("write");
    drop(sink);
    assert_eq!(store.list().expect("list"), vec![info.clone()], "cancelled or dropped snapshots list");

    // Newest first; only the newest `retain` are kept.
    let second = write_snapshot(&store, 3, 80, b"second");
    let empty = write_snapshot(&store, 3, 100, b"");
    let listed = store.list().expect("list");
    assert_eq!(listed, vec![empty.clone(), second.clone()], "newest first, retention 2");
    assert!(store.open(&info.id).is_err(), "a snapshot beyond retention can still be opened");
    assert_eq!(read_snapshot(&store, &empty.id).1, Vec::<u8>::new(), "empty snapshot");
    assert_eq!(read_snapshot(&store, &second.id).1, b"second".to_vec(), "second snapshot");

    // Same index and term twice: distinct ids, the later one lists first.
    let store = new_store(5);
    let a = write_snapshot(&store, 1, 10, b"a");
    let b = write_snapshot(&store, 1, 10, b"b");
    assert_ne!(a.id, b.id, "two snapshots at one index share an id");
    assert_eq!(store.list().expect("list")[0].id, b.id, "the later of equal snapshots lists first");
}
