//! Every store implementation passes the public conformance suite.

use raftkv_raft::storage::{
    conformance, FileSnapshotStore, FileStableStore, MemLogStore, MemSnapshotStore, MemStableStore, Wal, WalOptions,
};
use tempfile::TempDir;

/// Keeps every temporary directory alive until the test ends.
#[derive(Default)]
struct Dirs(Vec<TempDir>);

impl Dirs {
    fn next(&mut self) -> std::path::PathBuf {
        let dir = TempDir::new().expect("temporary directory");
        let path = dir.path().to_path_buf();
        self.0.push(dir);
        path
    }
}

#[test]
fn memory_stores_conform() {
    conformance::log_store(MemLogStore::new);
    conformance::stable_store(MemStableStore::new);
    conformance::snapshot_store(MemSnapshotStore::new);
}

#[test]
fn wal_conforms() {
    let mut dirs = Dirs::default();
    conformance::log_store(|| Wal::open(dirs.next(), WalOptions::default()).expect("open"));
}

#[test]
fn wal_with_tiny_segments_conforms() {
    // Segments of a few records each: rotation, multi-segment reads, truncation
    // and purge across segment boundaries.
    let mut dirs = Dirs::default();
    conformance::log_store(|| {
        Wal::open(dirs.next(), WalOptions { segment_bytes: 256, preallocate: true }).expect("open")
    });
}

#[test]
fn wal_without_preallocation_conforms() {
    let mut dirs = Dirs::default();
    conformance::log_store(|| {
        Wal::open(dirs.next(), WalOptions { preallocate: false, ..WalOptions::default() }).expect("open")
    });
}

#[test]
fn file_stable_store_conforms() {
    let mut dirs = Dirs::default();
    conformance::stable_store(|| FileStableStore::open(dirs.next()).expect("open"));
}

#[test]
fn file_snapshot_store_conforms() {
    let mut dirs = Dirs::default();
    conformance::snapshot_store(|retain| FileSnapshotStore::open(dirs.next(), retain).expect("open"));
}
