//! Snapshots received from the leader at the runtime's edges: one whose
//! content the state machine refuses, one the disk cannot store, and start-up
//! from what a crash during an install, or a damaged snapshot, leaves behind.

mod common;

use std::sync::atomic::Ordering;
use std::sync::Arc;

use bytes::Bytes;
use common::*;
use raftkv_raft::storage::{
    LogStore, MemLogStore, MemSnapshotStore, MemStableStore, SnapshotInfo, SnapshotSink, SnapshotStore, StableStore,
    StorageError,
};
use raftkv_raft::transport::MemNetwork;
use raftkv_raft::{
    Config, Configuration, Entry, EntryPayload, HardState, LogId, LogIndex, NodeId, Raft, RaftError, SnapshotMeta,
    SnapshotOp, StateMachine, Term,
};

/// Stops a follower after `before` commands, has the leader apply `after`
/// more (it compacts its log), and returns the follower's id.
async fn leave_behind(cluster: &mut Cluster, before: usize, after: usize) -> u64 {
    let leader = cluster.leader_among(&[1, 2, 3]).await;
    for i in 0..before {
        cluster.raft(leader).apply(command(i), TIMEOUT).await.unwrap();
    }
    let follower = (1..=3).find(|id| *id != leader).unwrap();
    cluster.wait_applied(follower, before).await;
    cluster.stop(follower).await;
    for i in before..before + after {
        cluster.raft(leader).apply(command(i), TIMEOUT).await.unwrap();
    }
    let status = cluster.raft(leader).status().await.unwrap();
    assert!(status.first_log_index.0 > before as u64 + 2, "the leader's log was not compacted: {status:?}");
    follower
}

/// When the received snapshot cannot be stored, the node stops and says why,
/// and its log is still whole: no purge runs behind a snapshot that is not on
/// disk. Restarted on a healthy disk it catches up.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_snapshot_that_cannot_be_stored_stops_the_node_with_its_log_whole() {
    let mut cluster = Cluster::bootstrap_with(3, true, snapshot_often).await;
    let follower = leave_behind(&mut cluster, 20, 400).await;
    let dir = cluster.dirs[(follower - 1) as usize].path().to_path_buf();
    let (log, stable, snapshots) = open_durable(&dir);
    let before = (log.first_index().unwrap(), log.last_index().unwrap());
    cluster.start(follower, (log.clone(), stable, Arc::new(FailingCommits(snapshots))));

    let raft = cluster.raft(follower).clone();
    let reason = tokio::time::timeout(TIMEOUT, raft.failed()).await.expect("the node fail-stops");
    assert!(reason.contains("commit snapshot"), "{reason}");
    assert_eq!(raft.failure(), Some(reason));
    assert!(matches!(raft.apply(command(0), TIMEOUT).await, Err(raftkv_raft::RaftError::Failed { .. })));
    assert_eq!((log.first_index().unwrap(), log.last_index().unwrap()), before, "the log changed");

    drop(cluster.nodes.remove(&follower));
    drop((log, raft));
    cluster.start(follower, open_durable(&dir));
    let expected: Vec<Bytes> = (0..420).map(command).collect();
    assert_eq!(cluster.wait_applied(follower, 420).await, expected);
    cluster.shutdown().await;
}

/// A snapshot whose content the state machine refuses is not stored and
/// changes nothing; the node stays up, and installs the next sound one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_snapshot_changes_nothing_and_the_next_sound_one_installs() {
    refused_then_sound(false).await;
}

/// The same when the check refuses at the first bytes, before the rest of
/// the snapshot arrived: the refusal reaches the core once it is whole.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_snapshot_refused_before_its_end_changes_nothing_and_the_next_sound_one_installs() {
    refused_then_sound(true).await;
}

async fn refused_then_sound(early: bool) {
    let mut cluster = Cluster::bootstrap_with(3, true, snapshot_often).await;
    let follower = leave_behind(&mut cluster, 20, 400).await;
    let dir = cluster.dirs[(follower - 1) as usize].path().to_path_buf();
    let (log, stable, snapshots) = open_durable(&dir);
    let before = (log.first_index().unwrap(), log.last_index().unwrap());
    let recorder = Recorder::default();
    recorder.refuse_snapshots.store(true, Ordering::SeqCst);
    recorder.refuse_early.store(early, Ordering::SeqCst);
    cluster.start_with(follower, (log.clone(), stable, snapshots.clone()), recorder.clone());

    // The leader sends it again after each refusal.
    let refused_thrice = async {
        while recorder.checks.load(Ordering::SeqCst) < 3 {
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
    };
    tokio::time::timeout(TIMEOUT, refused_thrice).await.expect("the leader sends the refused snapshot again");
    let raft = cluster.raft(follower).clone();
    assert_eq!(raft.failure(), None, "a refused snapshot stopped the node");
    assert!(snapshots.list().unwrap().is_empty(), "a refused snapshot was stored");
    assert_eq!((log.first_index().unwrap(), log.last_index().unwrap()), before, "the log changed");
    assert_eq!(raft.status().await.unwrap().snapshot, None, "a refused snapshot was installed");

    recorder.refuse_snapshots.store(false, Ordering::SeqCst);
    let expected: Vec<Bytes> = (0..420).map(command).collect();
    assert_eq!(cluster.wait_applied(follower, 420).await, expected);
    assert!(!snapshots.list().unwrap().is_empty());
    cluster.shutdown().await;
}

fn entry(index: u64, term: u64, command: &str) -> Entry {
    Entry { index: LogIndex(index), term: Term(term), payload: EntryPayload::Command(Bytes::from(command.to_string())) }
}

/// Stores as a crash during an install may leave them: a snapshot at (8, 3)
/// holding commands 1..=8, and the log given.
fn crashed_install(log_entries: Vec<Entry>) -> (Arc<MemLogStore>, Arc<MemStableStore>, Arc<MemSnapshotStore>) {
    let log = Arc::new(MemLogStore::new());
    log.append(&log_entries).unwrap();
    let stable = Arc::new(MemStableStore::new());
    stable.set_hard_state(HardState { current_term: Term(3), voted_for: None }).unwrap();
    let snapshots = Arc::new(MemSnapshotStore::new(2));
    let meta = SnapshotMeta { last_log_id: LogId::new(Term(3), LogIndex(8)), config: Configuration::new([NodeId(1)]) };
    let mut sink = snapshots.create(meta).unwrap();
    let mut state = Recorder::default();
    for i in 1..=8 {
        state.apply(&[entry(i, 3, &format!("kept {i}"))]);
    }
    state.snapshot().write_to(&mut sink).unwrap();
    sink.commit().unwrap();
    (log, stable, snapshots)
}

fn start(
    stores: &(Arc<MemLogStore>, Arc<MemStableStore>, Arc<MemSnapshotStore>),
) -> Result<Raft, raftkv_raft::RaftError> {
    let transport = Arc::new(MemNetwork::new().transport(NodeId(1)));
    Raft::new(
        Config::fast(NodeId(1)),
        Recorder::default(),
        stores.0.clone(),
        stores.1.clone(),
        stores.2.clone(),
        transport,
    )
}

/// Waits until the single voter leads.
async fn leads(raft: &Raft) {
    let mut leader = raft.leader_watch();
    tokio::time::timeout(TIMEOUT, leader.wait_for(|info| info.leader == Some(NodeId(1))))
        .await
        .expect("the single voter leads")
        .unwrap();
}

/// Entries after the snapshot with a lower term than its own were never
/// committed past it: start-up cuts them, so the node's last log id never
/// understates what it holds (it would grant votes to candidates missing
/// committed entries).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn start_up_cuts_entries_that_disagree_with_the_snapshot() {
    let old: Vec<Entry> = (1..=10).map(|i| entry(i, if i <= 5 { 1 } else { 2 }, "old")).collect();
    let stores = crashed_install(old);
    let raft = start(&stores).unwrap();
    let status = raft.status().await.unwrap();
    assert_eq!((status.last_log_index, status.last_log_term), (LogIndex(8), Term(3)), "{status:?}");
    assert_eq!((stores.0.first_index().unwrap(), stores.0.last_index().unwrap()), (LogIndex(9), LogIndex(8)));
    // A single voter: it leads and appends right after the snapshot.
    leads(&raft).await;
    let (index, _) = raft.apply(command(1), TIMEOUT).await.unwrap();
    assert!(index > LogIndex(8));
    raft.shutdown().await;
}

/// A crash after the snapshot was stored but before the log was purged leaves
/// a log that ends before the snapshot: start-up empties it so that the next
/// entry follows the snapshot.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn start_up_empties_a_log_that_ends_before_the_snapshot() {
    let stores = crashed_install((1..=5).map(|i| entry(i, 1, "old")).collect());
    let raft = start(&stores).unwrap();
    let status = raft.status().await.unwrap();
    assert_eq!((status.first_log_index, status.last_log_index), (LogIndex(9), LogIndex(8)), "{status:?}");
    leads(&raft).await;
    let (index, _) = raft.apply(command(1), TIMEOUT).await.unwrap();
    assert!(index > LogIndex(8));
    raft.shutdown().await;
}

/// A snapshot store whose newest snapshot cannot be read (damaged on disk).
struct NewestDamaged(Arc<MemSnapshotStore>);

impl SnapshotStore for NewestDamaged {
    fn create(&self, meta: SnapshotMeta) -> Result<Box<dyn SnapshotSink>, StorageError> {
        self.0.create(meta)
    }
    fn list(&self) -> Result<Vec<SnapshotInfo>, StorageError> {
        self.0.list()
    }
    fn open(&self, id: &str) -> Result<(SnapshotInfo, Box<dyn std::io::Read + Send>), StorageError> {
        if self.0.list()?.first().is_some_and(|newest| newest.id == id) {
            return Err(StorageError::Corrupt { path: id.into(), offset: 0, reason: "checksum mismatch".into() });
        }
        self.0.open(id)
    }
}

/// Snapshots at 5 and 10 (the newest damaged) of a single voter, and a log
/// from `first` to 12.
fn damaged_newest(first: u64) -> (Arc<MemLogStore>, Arc<MemStableStore>, Arc<NewestDamaged>) {
    let log = Arc::new(MemLogStore::new());
    log.purge_prefix(LogIndex(first - 1)).unwrap();
    log.append(&(first..=12).map(|i| entry(i, 1, &format!("c{i}"))).collect::<Vec<_>>()).unwrap();
    let stable = Arc::new(MemStableStore::new());
    stable.set_hard_state(HardState { current_term: Term(1), voted_for: Some(NodeId(1)) }).unwrap();
    let snapshots = Arc::new(MemSnapshotStore::new(2));
    let mut state = Recorder::default();
    for i in 1..=10 {
        state.apply(&[entry(i, 1, &format!("c{i}"))]);
        if i == 5 || i == 10 {
            let config = Configuration::new([NodeId(1)]);
            let meta = SnapshotMeta { last_log_id: LogId::new(Term(1), LogIndex(i)), config };
            let mut sink = snapshots.create(meta).unwrap();
            state.snapshot().write_to(&mut sink).unwrap();
            sink.commit().unwrap();
        }
    }
    (log, stable, Arc::new(NewestDamaged(snapshots)))
}

/// With the newest snapshot damaged, start-up falls back to the older one
/// only while the log holds every entry after it; otherwise it refuses, with
/// what to do, instead of starting without entries it acknowledged.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_damaged_newest_snapshot_falls_back_only_when_the_log_covers_the_gap() {
    let start = |(log, stable, snapshots): (Arc<MemLogStore>, Arc<MemStableStore>, Arc<NewestDamaged>)| {
        let transport = Arc::new(MemNetwork::new().transport(NodeId(1)));
        let recorder = Recorder::default();
        Raft::new(Config::fast(NodeId(1)), recorder.clone(), log, stable, snapshots, transport).map(|r| (r, recorder))
    };
    let refused = start(damaged_newest(11)).err().expect("start-up must refuse: entries 6..=10 are nowhere");
    let message = refused.to_string();
    assert!(message.contains("cannot be read") && message.contains("would lose entries"), "{message}");
    assert!(
        matches!(refused, RaftError::Snapshot { op: SnapshotOp::Restore, snapshot: Some(id), .. } if id.index == LogIndex(10)),
        "{refused:?}"
    );

    let (raft, recorder) = start(damaged_newest(6)).expect("the log covers everything after the older snapshot");
    leads(&raft).await;
    raft.barrier(TIMEOUT).await.unwrap();
    let expected: Vec<Bytes> = (1..=12).map(|i| Bytes::from(format!("c{i}"))).collect();
    assert_eq!(recorder.commands(), expected);
    raft.shutdown().await;
}
