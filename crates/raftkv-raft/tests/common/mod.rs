//! A cluster of `Raft` nodes in one process over the in-memory transport,
//! and a state machine that records what it applied.
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use raftkv_raft::storage::{
    FileSnapshotStore, FileStableStore, LogStore, MemLogStore, MemSnapshotStore, MemStableStore, SnapshotInfo,
    SnapshotSink, SnapshotStore, StableStore, StorageError, Wal, WalOptions,
};
use raftkv_raft::transport::MemNetwork;
use raftkv_raft::{Config, Entry, EntryPayload, LogIndex, NodeId, Raft, SnapshotMeta, StateMachine};

pub const TIMEOUT: Duration = Duration::from_secs(10);

/// Records applied commands; answers each with "<index>".
#[derive(Clone, Default)]
pub struct Recorder {
    pub applied: Arc<Mutex<Vec<(LogIndex, Bytes)>>>,
    /// Received snapshots are refused while this is set.
    pub refuse_snapshots: Arc<AtomicBool>,
    /// ... and refused at once, before the rest of the snapshot arrived.
    pub refuse_early: Arc<AtomicBool>,
    /// How many received snapshots were checked.
    pub checks: Arc<AtomicUsize>,
}

impl StateMachine for Recorder {
    fn apply(&mut self, entries: &[Entry]) -> Vec<Bytes> {
        let mut applied = self.applied.lock().unwrap();
        entries
            .iter()
            .map(|entry| {
                // A panic here stops the node, which the tests notice.
                assert!(!matches!(entry.payload, EntryPayload::Restore(_)), "a restore step reached apply");
                if let EntryPayload::Command(command) = &entry.payload {
                    if !command.is_empty() {
                        applied.push((entry.index, command.clone()));
                    }
                }
                Bytes::from(entry.index.0.to_string())
            })
            .collect()
    }

    fn snapshot(&mut self) -> Box<dyn raftkv_raft::SnapshotSource> {
        let applied = self.applied.lock().unwrap();
        Box::new(RecorderSnapshot(applied.iter().map(|(i, c)| (i.0, c.to_vec())).collect()))
    }

    fn snapshot_check(&self) -> Option<raftkv_raft::SnapshotCheck> {
        let (refuse, checks) = (self.refuse_snapshots.clone(), self.checks.clone());
        let early = self.refuse_early.clone();
        Some(Arc::new(move |snapshot: &mut dyn std::io::Read| {
            if refuse.load(Ordering::SeqCst) && early.load(Ordering::SeqCst) {
                checks.fetch_add(1, Ordering::SeqCst);
                return Err(std::io::Error::other("refused by the test before reading"));
            }
            let parsed: Result<Vec<(u64, Vec<u8>)>, _> = serde_json::from_reader(snapshot);
            checks.fetch_add(1, Ordering::SeqCst);
            parsed.map_err(std::io::Error::other)?;
            if refuse.load(Ordering::SeqCst) {
                return Err(std::io::Error::other("refused by the test"));
            }
            Ok(())
        }))
    }

    fn restore(&mut self, snapshot: &mut dyn std::io::Read) -> std::io::Result<()> {
        let restored: Vec<(u64, Vec<u8>)> = serde_json::from_reader(snapshot).map_err(std::io::Error::other)?;
        *self.applied.lock().unwrap() = restored.into_iter().map(|(i, c)| (LogIndex(i), Bytes::from(c))).collect();
        Ok(())
    }
}

pub struct RecorderSnapshot(Vec<(u64, Vec<u8>)>);

impl raftkv_raft::SnapshotSource for RecorderSnapshot {
    fn write_to(self: Box<Self>, out: &mut dyn std::io::Write) -> std::io::Result<()> {
        serde_json::to_writer(out, &self.0).map_err(std::io::Error::other)
    }
}

impl Recorder {
    pub fn commands(&self) -> Vec<Bytes> {
        self.applied.lock().unwrap().iter().map(|(_, c)| c.clone()).collect()
    }
}

pub struct Node {
    pub raft: Raft,
    pub recorder: Recorder,
    pub log: Arc<dyn LogStore>,
    pub stable: Arc<dyn StableStore>,
}

pub type Stores = (Arc<dyn LogStore>, Arc<dyn StableStore>, Arc<dyn SnapshotStore>);

pub struct Cluster {
    pub network: MemNetwork,
    pub nodes: BTreeMap<u64, Node>,
    pub dirs: Vec<tempfile::TempDir>,
    pub durable: bool,
    pub config: fn(NodeId) -> Config,
}

impl Cluster {
    pub fn new(durable: bool) -> Cluster {
        Cluster { network: MemNetwork::new(), nodes: BTreeMap::new(), dirs: Vec::new(), durable, config: Config::fast }
    }

    pub fn stores(&mut self) -> Stores {
        if self.durable {
            let dir = tempfile::TempDir::new().unwrap();
            let path: PathBuf = dir.path().to_path_buf();
            self.dirs.push(dir);
            open_durable(&path)
        } else {
            (Arc::new(MemLogStore::new()), Arc::new(MemStableStore::new()), Arc::new(MemSnapshotStore::new(2)))
        }
    }

    pub fn start(&mut self, id: u64, stores: Stores) {
        self.start_with(id, stores, Recorder::default());
    }

    pub fn start_with(&mut self, id: u64, (log, stable, snapshots): Stores, recorder: Recorder) {
        let transport = Arc::new(self.network.transport(NodeId(id)));
        let config = (self.config)(NodeId(id));
        let raft =
            Raft::new(config, recorder.clone(), log.clone(), stable.clone(), snapshots, transport).expect("start node");
        self.network.register(NodeId(id), raft.inbox());
        self.nodes.insert(id, Node { raft, recorder, log, stable });
    }

    /// A cluster of `size` founders.
    pub async fn bootstrap(size: u64, durable: bool) -> Cluster {
        Cluster::bootstrap_with(size, durable, Config::fast).await
    }

    pub async fn bootstrap_with(size: u64, durable: bool, config: fn(NodeId) -> Config) -> Cluster {
        let mut cluster = Cluster::new(durable);
        cluster.config = config;
        for id in 1..=size {
            let stores = cluster.stores();
            Raft::bootstrap_cluster(stores.0.as_ref(), stores.1.as_ref(), (1..=size).map(NodeId)).unwrap();
            cluster.start(id, stores);
        }
        cluster
    }

    pub fn raft(&self, id: u64) -> &Raft {
        &self.nodes[&id].raft
    }

    /// Waits until the running nodes agree on one leader among `candidates`.
    pub async fn leader_among(&self, candidates: &[u64]) -> u64 {
        for _ in 0..1000 {
            let views: Vec<Option<NodeId>> = candidates.iter().map(|id| self.raft(*id).leader().leader).collect();
            if let Some(Some(leader)) = views.first() {
                if views.iter().all(|v| *v == Some(*leader)) && candidates.contains(&leader.0) {
                    return leader.0;
                }
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        panic!("no agreed leader among {candidates:?}");
    }

    pub async fn stop(&mut self, id: u64) -> Node {
        let node = self.nodes.remove(&id).expect("node is running");
        node.raft.shutdown().await;
        node
    }

    /// Waits until node `id` has applied `count` commands.
    pub async fn wait_applied(&self, id: u64, count: usize) -> Vec<Bytes> {
        for _ in 0..1000 {
            let commands = self.nodes[&id].recorder.commands();
            if commands.len() >= count {
                return commands;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        panic!("node {id} applied only {} of {count} commands", self.nodes[&id].recorder.commands().len());
    }

    pub async fn shutdown(self) {
        for node in self.nodes.values() {
            node.raft.shutdown().await;
        }
    }
}

pub fn open_durable(path: &std::path::Path) -> Stores {
    let log = Wal::open(path.join("log"), WalOptions::default()).unwrap();
    let stable = FileStableStore::open(path.join("stable")).unwrap();
    let snapshots = FileSnapshotStore::open(path.join("snapshots"), 2).unwrap();
    (Arc::new(log), Arc::new(stable), Arc::new(snapshots))
}

pub fn command(i: usize) -> Bytes {
    Bytes::from(format!("command {i}"))
}

/// Snapshots every 50 entries, small chunks: followers behind catch up by
/// InstallSnapshot.
pub fn snapshot_often(id: NodeId) -> Config {
    Config {
        snapshot_threshold: 50,
        snapshot_interval: Duration::from_millis(10),
        trailing_logs: 10,
        snapshot_chunk_bytes: 256,
        ..Config::fast(id)
    }
}

/// A snapshot store whose commits fail, as on a full disk.
pub struct FailingCommits(pub Arc<dyn SnapshotStore>);

pub struct FailingSink(Box<dyn SnapshotSink>);

impl std::io::Write for FailingSink {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.write(buf)
    }
    fn flush(&mut self) -> std::io::Result<()> {
        self.0.flush()
    }
}

impl SnapshotSink for FailingSink {
    fn id(&self) -> &str {
        self.0.id()
    }
    fn commit(self: Box<Self>) -> Result<SnapshotInfo, StorageError> {
        let _ = self.0.cancel();
        let enospc = std::io::Error::from_raw_os_error(28);
        Err(StorageError::Io { op: "commit snapshot", path: "snapshots".into(), source: enospc })
    }
    fn cancel(self: Box<Self>) -> Result<(), StorageError> {
        self.0.cancel()
    }
}

impl SnapshotStore for FailingCommits {
    fn create(&self, meta: SnapshotMeta) -> Result<Box<dyn SnapshotSink>, StorageError> {
        Ok(Box::new(FailingSink(self.0.create(meta)?)))
    }
    fn list(&self) -> Result<Vec<SnapshotInfo>, StorageError> {
        self.0.list()
    }
    fn open(&self, id: &str) -> Result<(SnapshotInfo, Box<dyn std::io::Read + Send>), StorageError> {
        self.0.open(id)
    }
}
