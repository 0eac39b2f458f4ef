//! Each kind of failure comes back as its own `RaftError` variant, with what
//! it concerns: configuration (`Config`) only for invalid configuration,
//! snapshots (`Snapshot`), stored state (`Storage`), and the bootstrap and
//! recovery misuses; none of them leaves a write's outcome unknown.

mod common;

use std::sync::Arc;

use common::*;
use raftkv_raft::storage::{LogStore, MemLogStore, MemSnapshotStore, MemStableStore, StorageError};
use raftkv_raft::transport::MemNetwork;
use raftkv_raft::{Config, Configuration, Entry, EntryPayload, LogIndex, NodeId, Raft, RaftError, SnapshotOp, Term};

fn entry(index: u64) -> Entry {
    Entry { term: Term(1), index: LogIndex(index), payload: EntryPayload::Command(command(index as usize)) }
}

fn bootstrapped() -> (Arc<MemLogStore>, Arc<MemStableStore>) {
    let (log, stable) = (Arc::new(MemLogStore::new()), Arc::new(MemStableStore::new()));
    Raft::bootstrap_cluster(log.as_ref(), stable.as_ref(), [NodeId(1)]).unwrap();
    (log, stable)
}

#[test]
fn bootstrapping_twice_names_the_state_found() {
    let (log, stable) = bootstrapped();
    let error = Raft::bootstrap_cluster(log.as_ref(), stable.as_ref(), [NodeId(1)]).unwrap_err();
    assert!(matches!(error, RaftError::AlreadyBootstrapped { last_index: LogIndex(1), .. }), "{error:?}");
    assert!(error.to_string().contains("last log index 1"), "{error}");
    assert!(!error.outcome_unknown());
}

#[test]
fn recovery_refuses_bad_configurations_and_empty_nodes_apart() {
    let snapshots = MemSnapshotStore::new(2);
    let (log, stable) = (MemLogStore::new(), MemStableStore::new());
    let voters = Configuration::new([NodeId(1)]);
    let error = Raft::recover_cluster(&log, &stable, &snapshots, &mut Recorder::default(), voters.clone()).unwrap_err();
    assert!(matches!(&error, RaftError::NothingToRecover { reason } if reason.contains("never ran")), "{error:?}");

    let (log, stable) = bootstrapped();
    let empty = Configuration::new([]);
    let error =
        Raft::recover_cluster(log.as_ref(), stable.as_ref(), &snapshots, &mut Recorder::default(), empty).unwrap_err();
    assert!(matches!(error, RaftError::Config(_)), "{error:?}");
    assert!(!error.outcome_unknown());
}

#[test]
fn a_recovery_whose_snapshot_cannot_be_written_says_so_and_where() {
    let (log, stable) = bootstrapped();
    log.append(&[entry(2), entry(3)]).unwrap();
    let snapshots = FailingCommits(Arc::new(MemSnapshotStore::new(2)));
    let voters = Configuration::new([NodeId(1)]);
    let error =
        Raft::recover_cluster(log.as_ref(), stable.as_ref(), &snapshots, &mut Recorder::default(), voters).unwrap_err();
    match &error {
        RaftError::Snapshot { op: SnapshotOp::Write, snapshot: Some(id), reason } => {
            assert_eq!(id.index, LogIndex(3));
            assert!(reason.contains("commit snapshot"), "{reason}");
        }
        other => panic!("expected a snapshot write failure, got {other:?}"),
    }
    assert!(error.to_string().starts_with("writing snapshot at index 3"), "{error}");
    assert!(!error.outcome_unknown());
    // Nothing was purged.
    assert_eq!(log.first_index().unwrap(), LogIndex(1));
}

#[tokio::test]
async fn a_log_that_does_not_reach_the_snapshot_is_a_storage_error() {
    let (log, stable) = bootstrapped();
    // Entries 2..=4 are gone, and no snapshot covers them.
    log.purge_prefix(LogIndex(4)).unwrap();
    log.append(&[entry(5)]).unwrap();
    let transport = Arc::new(MemNetwork::new().transport(NodeId(1)));
    let snapshots = Arc::new(MemSnapshotStore::new(2));
    let error = Raft::new(Config::fast(NodeId(1)), Recorder::default(), log, stable, snapshots, transport)
        .err()
        .expect("start-up must refuse a log with a gap");
    match &error {
        RaftError::Storage(StorageError::Inconsistent { what }) => {
            assert!(what.contains("the log starts at 5") && what.contains("entries 1..4"), "{what}");
        }
        other => panic!("expected inconsistent stored state, got {other:?}"),
    }
    assert!(!error.outcome_unknown());
}

#[tokio::test]
async fn an_invalid_configuration_is_a_config_error() {
    let (log, stable) = bootstrapped();
    let mut config = Config::fast(NodeId(1));
    config.heartbeat_interval = std::time::Duration::ZERO;
    let transport = Arc::new(MemNetwork::new().transport(NodeId(1)));
    let snapshots = Arc::new(MemSnapshotStore::new(2));
    let error = Raft::new(config, Recorder::default(), log, stable, snapshots, transport)
        .err()
        .expect("a zero heartbeat interval is invalid");
    assert!(matches!(&error, RaftError::Config(reason) if reason.contains("heartbeat")), "{error:?}");
}
