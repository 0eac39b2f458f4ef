//! A leader whose log store fails while writes are in flight: the node stops
//! and says why, every caller hears the truth (done, or unknown: never a
//! definite failure for a write that may commit), nothing acknowledged is
//! lost, and the rest of the cluster goes on. Both ways a node writes: on the
//! log writer's thread, and from the raft loop itself when every store is in
//! memory (`LogStore::in_memory`).

mod common;

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;

use bytes::Bytes;
use common::*;
use raftkv_raft::storage::{LogStore, MemLogStore, MemSnapshotStore, MemStableStore, StorageError};
use raftkv_raft::{Entry, LogIndex, NodeId, Raft, RaftError};

/// A memory log whose appends fail once `broken` is set, as a disk that
/// fills up or starts returning EIO, counting the appends tried since.
struct BreakingLog {
    inner: MemLogStore,
    broken: Arc<AtomicBool>,
    tried_broken: Arc<AtomicUsize>,
    in_memory: bool,
}

impl LogStore for BreakingLog {
    fn first_index(&self) -> Result<LogIndex, StorageError> {
        self.inner.first_index()
    }
    fn last_index(&self) -> Result<LogIndex, StorageError> {
        self.inner.last_index()
    }
    fn get(&self, index: LogIndex) -> Result<Option<Entry>, StorageError> {
        self.inner.get(index)
    }
    fn get_range(&self, from: LogIndex, to: LogIndex) -> Result<Vec<Entry>, StorageError> {
        self.inner.get_range(from, to)
    }
    fn append(&self, entries: &[Entry]) -> Result<(), StorageError> {
        if self.broken.load(Ordering::SeqCst) {
            self.tried_broken.fetch_add(1, Ordering::SeqCst);
            let eio = std::io::Error::from_raw_os_error(5);
            return Err(StorageError::Io { op: "append", path: "log".into(), source: eio });
        }
        self.inner.append(entries)
    }
    fn truncate_suffix(&self, from: LogIndex) -> Result<(), StorageError> {
        self.inner.truncate_suffix(from)
    }
    fn purge_prefix(&self, upto: LogIndex) -> Result<(), StorageError> {
        self.inner.purge_prefix(upto)
    }
    fn in_memory(&self) -> bool {
        self.in_memory
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_log_on_the_writer_thread_stops_the_leader_and_every_caller_hears_the_truth() {
    leader_log_fails(false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_log_written_by_the_raft_loop_stops_the_leader_and_every_caller_hears_the_truth() {
    leader_log_fails(true).await;
}

async fn leader_log_fails(in_memory: bool) {
    let mut cluster = Cluster::new(false);
    let broken: Vec<Arc<AtomicBool>> = (0..3).map(|_| Arc::new(AtomicBool::new(false))).collect();
    let tried_broken: Vec<Arc<AtomicUsize>> = (0..3).map(|_| Arc::new(AtomicUsize::new(0))).collect();
    for id in 1..=3u64 {
        let log = Arc::new(BreakingLog {
            inner: MemLogStore::new(),
            broken: broken[id as usize - 1].clone(),
            tried_broken: tried_broken[id as usize - 1].clone(),
            in_memory,
        });
        let stable = Arc::new(MemStableStore::new());
        Raft::bootstrap_cluster(log.as_ref(), stable.as_ref(), (1..=3).map(NodeId)).unwrap();
        cluster.start(id, (log, stable, Arc::new(MemSnapshotStore::new(2))));
    }
    let leader = cluster.leader_among(&[1, 2, 3]).await;
    for i in 0..10 {
        cluster.raft(leader).apply(command(i), TIMEOUT).await.unwrap();
    }

    // Writes in flight when the disk breaks, and more behind them.
    let raft = cluster.raft(leader).clone();
    let write = |i: usize| {
        let raft = raft.clone();
        tokio::spawn(async move { (i, raft.apply(command(i), TIMEOUT).await) })
    };
    let mut writes: Vec<_> = (10..200).map(write).collect();
    tokio::task::yield_now().await;
    broken[leader as usize - 1].store(true, Ordering::SeqCst);
    // At least one append meets the broken disk.
    writes.push(write(200));

    let reason = tokio::time::timeout(TIMEOUT, raft.failed()).await.expect("the leader fail-stops");
    assert!(reason.contains("storage failed") && reason.contains("append"), "{reason}");
    let (mut acknowledged, mut not_done) = (vec![], vec![]);
    for write in writes {
        let (i, result) = write.await.unwrap();
        match result {
            Ok(_) => acknowledged.push(command(i)),
            Err(error) if error.outcome_unknown() => {}
            Err(error) => {
                assert!(
                    matches!(error, RaftError::Failed { .. } | RaftError::NotLeader { .. }),
                    "write {i}: {error:?}"
                );
                not_done.push(command(i));
            }
        }
    }
    // Nothing is written after the failed append: the node stopped there.
    assert_eq!(tried_broken[leader as usize - 1].load(Ordering::SeqCst), 1, "appends tried after the failure");
    // Asked after the failure is known: definitely not done.
    match raft.apply(command(999), TIMEOUT).await {
        Err(error @ RaftError::Failed { .. }) => assert!(!error.outcome_unknown()),
        other => panic!("a write to a failed node: {other:?}"),
    }

    // The two others elect a leader and keep every acknowledged write.
    let survivors: Vec<u64> = (1..=3).filter(|id| *id != leader).collect();
    let new_leader = cluster.leader_among(&survivors).await;
    let marker = Bytes::from("after the failure");
    cluster.raft(new_leader).apply(marker.clone(), TIMEOUT).await.unwrap();
    for id in survivors {
        let applied = wait_for_command(&cluster, id, &marker).await;
        for command in &acknowledged {
            assert!(applied.contains(command), "node {id} lost acknowledged {command:?}");
        }
        for command in &not_done {
            assert!(!applied.contains(command), "node {id} applied {command:?}, answered as not done");
        }
        assert!(applied.starts_with(&(0..10).map(command).collect::<Vec<_>>()));
    }
    cluster.shutdown().await;
}

async fn wait_for_command(cluster: &Cluster, id: u64, command: &Bytes) -> Vec<Bytes> {
    for _ in 0..1000 {
        let applied = cluster.nodes[&id].recorder.commands();
        if applied.contains(command) {
            return applied;
        }
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    panic!("node {id} never applied {command:?}");
}
