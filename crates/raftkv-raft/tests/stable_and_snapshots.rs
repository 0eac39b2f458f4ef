//! The stable store and the snapshot store under damage, crashes and failing
//! disks: every fault is recovered or reported, nothing wrong is returned.

use std::fs;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use raftkv_core::{Configuration, HardState, LogId, LogIndex, NodeId, SnapshotMeta, Term};
use raftkv_raft::storage::fault::FaultyFs;
use raftkv_raft::storage::{FileSnapshotStore, FileStableStore, SnapshotStore, StableStore, StorageError};
use tempfile::TempDir;

fn flip_bit(path: &Path, offset: usize) {
    let mut data = fs::read(path).unwrap();
    data[offset] ^= 0x01;
    fs::write(path, data).unwrap();
}

#[test]
fn stable_store_survives_reopen() {
    let dir = TempDir::new().unwrap();
    let state = HardState { current_term: Term(9), voted_for: Some(NodeId(2)) };
    {
        let store = FileStableStore::open(dir.path()).unwrap();
        store.set_hard_state(state).unwrap();
        store.set("cluster_id", b"abc").unwrap();
    }
    let store = FileStableStore::open(dir.path()).unwrap();
    assert_eq!(store.hard_state().unwrap(), state);
    assert_eq!(store.get("cluster_id").unwrap(), Some(b"abc".to_vec()));
}

#[test]
fn damaged_stable_file_is_a_clear_error() {
    let dir = TempDir::new().unwrap();
    {
        let store = FileStableStore::open(dir.path()).unwrap();
        store.set_hard_state(HardState { current_term: Term(9), voted_for: Some(NodeId(2)) }).unwrap();
    }
    let path = dir.path().join("stable");
    let pristine = fs::read(&path).unwrap();
    for offset in 0..pristine.len() {
        fs::write(&path, &pristine).unwrap();
        flip_bit(&path, offset);
        match FileStableStore::open(dir.path()) {
            Err(StorageError::Corrupt { path: reported, .. }) => assert_eq!(reported, path),
            Err(other) => panic!("flip at {offset}: expected Corrupt, got {other}"),
            Ok(_) => panic!("flip at {offset}: a damaged stable file opened"),
        }
    }
    for len in 0..pristine.len() {
        fs::write(&path, &pristine[..len]).unwrap();
        assert!(
            matches!(FileStableStore::open(dir.path()), Err(StorageError::Corrupt { .. })),
            "a stable file cut to {len} bytes opened"
        );
    }
}

#[test]
fn half_written_temporary_stable_file_is_ignored() {
    let dir = TempDir::new().unwrap();
    let state = HardState { current_term: Term(4), voted_for: None };
    FileStableStore::open(dir.path()).unwrap().set_hard_state(state).unwrap();
    // A crash while replacing the file leaves a partial temporary beside it.
    fs::write(dir.path().join("stable.tmp"), b"RKVSTAB1garbage").unwrap();
    let store = FileStableStore::open(dir.path()).unwrap();
    assert_eq!(store.hard_state().unwrap(), state);
    store.set_hard_state(HardState { current_term: Term(5), voted_for: None }).unwrap();
    assert_eq!(FileStableStore::open(dir.path()).unwrap().hard_state().unwrap().current_term, Term(5));
}

#[test]
fn stable_store_refuses_writes_after_a_failed_fsync_and_keeps_the_old_state() {
    let dir = TempDir::new().unwrap();
    let fs = FaultyFs::default();
    let store = FileStableStore::open_with(Arc::new(fs.clone()), dir.path()).unwrap();
    let old = HardState { current_term: Term(3), voted_for: Some(NodeId(1)) };
    store.set_hard_state(old).unwrap();
    fs.fail_syncs_after(0);
    assert!(store.set_hard_state(HardState { current_term: Term(4), voted_for: None }).is_err());
    fs.heal();
    assert!(matches!(store.set("k", b"v"), Err(StorageError::Poisoned { .. })));
    // The file on disk is the old one: the new one never replaced it.
    assert_eq!(FileStableStore::open(dir.path()).unwrap().hard_state().unwrap(), old);
}

fn meta(index: u64) -> SnapshotMeta {
    SnapshotMeta {
        last_log_id: LogId::new(Term(2), LogIndex(index)),
        config: Configuration::new([NodeId(1), NodeId(2), NodeId(3)]),
    }
}

fn commit(store: &FileSnapshotStore, index: u64, data: &[u8]) -> String {
    let mut sink = store.create(meta(index)).unwrap();
    sink.write_all(data).unwrap();
    sink.commit().unwrap().id
}

fn snapshot_dir(root: &Path, id: &str) -> PathBuf {
    root.join(id)
}

#[test]
fn damaged_snapshot_data_is_refused_on_open() {
    let dir = TempDir::new().unwrap();
    let store = FileSnapshotStore::open(dir.path(), 3).unwrap();
    let data: Vec<u8> = (0..5000u32).flat_map(|i| i.to_be_bytes()).collect();
    let id = commit(&store, 10, &data);
    let path = snapshot_dir(dir.path(), &id).join("data");
    for offset in [0, 1, 4999, data.len() - 1] {
        fs::write(&path, &data).unwrap();
        flip_bit(&path, offset);
        match store.open(&id) {
            Err(StorageError::Corrupt { path: reported, reason, .. }) => {
                assert_eq!(reported, path);
                assert!(reason.contains("checksum"), "{reason}");
            }
            Err(other) => panic!("flip at {offset}: expected Corrupt, got {other}"),
            Ok(_) => panic!("flip at {offset}: a damaged snapshot opened"),
        }
    }
    fs::write(&path, &data[..data.len() - 3]).unwrap();
    assert!(matches!(store.open(&id), Err(StorageError::Corrupt { .. })), "a truncated snapshot opened");
    fs::write(&path, &data).unwrap();
    let (_, mut reader) = store.open(&id).unwrap();
    let mut read = Vec::new();
    reader.read_to_end(&mut read).unwrap();
    assert!(read == data);
}

#[test]
fn damaged_snapshot_metadata_is_refused_and_older_snapshots_still_list() {
    let dir = TempDir::new().unwrap();
    let store = FileSnapshotStore::open(dir.path(), 3).unwrap();
    let older = commit(&store, 10, b"older");
    let newer = commit(&store, 20, b"newer");
    let meta_path = snapshot_dir(dir.path(), &newer).join("meta.json");
    let pristine = fs::read(&meta_path).unwrap();
    for offset in (0..pristine.len()).step_by(5) {
        fs::write(&meta_path, &pristine).unwrap();
        flip_bit(&meta_path, offset);
        if let Ok((info, _)) = store.open(&newer) {
            // Whitespace in the JSON may change without harm; the content may not.
            assert_eq!(info.meta, meta(20), "flip at {offset} changed the metadata");
            continue;
        }
        let listed: Vec<String> = store.list().unwrap().into_iter().map(|i| i.id).collect();
        assert_eq!(listed, vec![older.clone()], "flip at {offset}: listing");
    }
}

#[test]
fn crash_in_the_middle_of_a_snapshot_leaves_nothing_that_lists() {
    let dir = TempDir::new().unwrap();
    {
        let store = FileSnapshotStore::open(dir.path(), 3).unwrap();
        commit(&store, 5, b"kept");
        let mut sink = store.create(meta(9)).unwrap();
        sink.write_all(&vec![1; 3 << 20]).unwrap();
        // The process dies here: no commit, no cancel, no destructor.
        std::mem::forget(sink);
    }
    assert!(fs::read_dir(dir.path()).unwrap().any(|e| e.unwrap().file_name().to_string_lossy().ends_with(".tmp")));
    let store = FileSnapshotStore::open(dir.path(), 3).unwrap();
    let listed = store.list().unwrap();
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0].meta, meta(5));
    assert!(!fs::read_dir(dir.path()).unwrap().any(|e| e.unwrap().file_name().to_string_lossy().ends_with(".tmp")));
}

#[test]
fn failed_snapshot_commit_lists_nothing() {
    let dir = TempDir::new().unwrap();
    let fs = FaultyFs::default();
    let store = FileSnapshotStore::open_with(Arc::new(fs.clone()), dir.path(), 3).unwrap();
    let mut sink = store.create(meta(9)).unwrap();
    sink.write_all(b"data").unwrap();
    fs.fail_syncs_after(0);
    assert!(sink.commit().is_err());
    fs.heal();
    assert!(store.list().unwrap().is_empty());
    let mut sink = store.create(meta(9)).unwrap();
    fs.fill_disk_after(10);
    let written = sink.write_all(&[7; 2 << 20]).and_then(|()| sink.flush());
    assert!(written.is_err(), "a write to a full disk succeeded");
    drop(sink);
    fs.heal();
    assert!(store.list().unwrap().is_empty());
}

#[test]
fn stable_store_on_a_full_disk_reports_and_stays_usable() {
    let dir = TempDir::new().unwrap();
    let fs = FaultyFs::default();
    let store = FileStableStore::open_with(Arc::new(fs.clone()), dir.path()).unwrap();
    let old = HardState { current_term: Term(3), voted_for: Some(NodeId(1)) };
    store.set_hard_state(old).unwrap();
    fs.fill_disk_after(0);
    let error = store.set_hard_state(HardState { current_term: Term(4), voted_for: None }).unwrap_err();
    assert!(error.is_out_of_space(), "{error}");
    fs.heal();
    assert_eq!(store.hard_state().unwrap(), old);
    let new = HardState { current_term: Term(5), voted_for: Some(NodeId(2)) };
    store.set_hard_state(new).unwrap();
    assert_eq!(FileStableStore::open(dir.path()).unwrap().hard_state().unwrap(), new);
}

#[test]
fn retention_counts_only_our_snapshots_and_keeps_the_one_just_committed() {
    let dir = TempDir::new().unwrap();
    fs::create_dir(dir.path().join("lost+found")).unwrap();
    let store = FileSnapshotStore::open(dir.path(), 2).unwrap();
    let newest = commit(&store, 30, b"30");
    let second = commit(&store, 20, b"20");
    // An older snapshot than both retained ones: kept, not deleted under the caller.
    let older = commit(&store, 10, b"10");
    let listed: Vec<String> = store.list().unwrap().into_iter().map(|i| i.id).collect();
    assert_eq!(listed[0], newest);
    assert!(listed.contains(&second) && listed.contains(&older), "{listed:?}");
    assert!(dir.path().join("lost+found").exists(), "a directory that is not ours was removed");
    // The next commit reaps down to the newest two again.
    let latest = commit(&store, 40, b"40");
    let listed: Vec<String> = store.list().unwrap().into_iter().map(|i| i.id).collect();
    assert_eq!(listed, vec![latest, newest]);
}
