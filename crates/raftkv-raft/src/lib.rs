//! Raft with the batteries included: the `Raft` handle runs a node of a
//! replicated state machine on tokio, around the pure protocol core
//! (`raftkv-core`), with durable storage (`storage`) and a pluggable transport
//! (`transport`).
//!
//! # Example
//!
//! Three nodes in one process over the in-memory transport, with memory
//! stores: found the cluster, write through the leader, then read the write
//! back on a follower after a linearizable read. Real nodes use the durable
//! stores ([`storage::Wal`], [`storage::FileStableStore`],
//! [`storage::FileSnapshotStore`]) and the gRPC transport
//! ([`transport::grpc::GrpcTransport`]).
//!
//! ```
//! use std::collections::BTreeMap;
//! use std::io::{Read, Write};
//! use std::sync::{Arc, Mutex};
//! use std::time::Duration;
//!
//! use bytes::Bytes;
//! use raftkv_raft::storage::{MemLogStore, MemSnapshotStore, MemStableStore};
//! use raftkv_raft::transport::MemNetwork;
//! use raftkv_raft::{Config, Entry, EntryPayload, NodeId, Raft, RaftError, SnapshotSource, StateMachine};
//!
//! /// A replicated map: a command `key=value` sets `key`, and answers with
//! /// the value it replaced. Clones share the map, so the example can look.
//! #[derive(Clone, Default)]
//! struct Kv(Arc<Mutex<BTreeMap<String, String>>>);
//!
//! /// A captured map, one `key=value` per line.
//! struct Image(String);
//!
//! impl SnapshotSource for Image {
//!     fn write_to(self: Box<Self>, out: &mut dyn Write) -> std::io::Result<()> {
//!         out.write_all(self.0.as_bytes())
//!     }
//! }
//!
//! impl StateMachine for Kv {
//!     fn apply(&mut self, entries: &[Entry]) -> Vec<Bytes> {
//!         let mut map = self.0.lock().unwrap();
//!         let mut answers = Vec::new();
//!         for entry in entries {
//!             let mut replaced = None;
//!             if let EntryPayload::Command(command) = &entry.payload {
//!                 if let Some((key, value)) = std::str::from_utf8(command).ok().and_then(|c| c.split_once('=')) {
//!                     replaced = map.insert(key.to_string(), value.to_string());
//!                 }
//!             }
//!             answers.push(Bytes::from(replaced.unwrap_or_default()));
//!         }
//!         answers
//!     }
//!
//!     fn snapshot(&mut self) -> Box<dyn SnapshotSource> {
//!         let map = self.0.lock().unwrap();
//!         Box::new(Image(map.iter().map(|(key, value)| format!("{key}={value}\n")).collect()))
//!     }
//!
//!     fn restore(&mut self, snapshot: &mut dyn Read) -> std::io::Result<()> {
//!         let mut image = String::new();
//!         snapshot.read_to_string(&mut image)?;
//!         let mut map = self.0.lock().unwrap();
//!         map.clear();
//!         for (key, value) in image.lines().filter_map(|line| line.split_once('=')) {
//!             map.insert(key.to_string(), value.to_string());
//!         }
//!         Ok(())
//!     }
//! }
//!
//! /// Whether to simply try again: no leader yet (or another one), or an
//! /// outcome unknown, harmless here since the write sets a value.
//! fn retry(error: &RaftError) -> bool {
//!     matches!(error, RaftError::NotLeader { .. } | RaftError::Read(_)) || error.outcome_unknown()
//! }
//!
//! # #[tokio::main(flavor = "multi_thread", worker_threads = 2)]
//! # async fn main() -> Result<(), RaftError> {
//! let network = MemNetwork::new();
//! let voters = [NodeId(1), NodeId(2), NodeId(3)];
//! let mut nodes = Vec::new();
//! for id in voters {
//!     let (log, stable) = (Arc::new(MemLogStore::new()), Arc::new(MemStableStore::new()));
//!     // Every founder writes the same first configuration.
//!     Raft::bootstrap_cluster(log.as_ref(), stable.as_ref(), voters)?;
//!     let snapshots = Arc::new(MemSnapshotStore::new(2));
//!     let transport = Arc::new(network.transport(id));
//!     let kv = Kv::default();
//!     // `Config::fast`: timeouts for nodes on one machine.
//!     let raft = Raft::new(Config::fast(id), kv.clone(), log, stable, snapshots, transport)?;
//!     network.register(id, raft.inbox());
//!     nodes.push((raft, kv));
//! }
//!
//! // Only the leader takes writes; the others answer `NotLeader` (naming
//! // the leader once they know it). Until one is elected, try each in turn.
//! let timeout = Duration::from_secs(5);
//! let command = Bytes::from_static(b"greeting=hello");
//! let mut attempts = 0;
//! let (written, writer) = 'written: loop {
//!     attempts += 1;
//!     assert!(attempts <= 100, "no leader took the write");
//!     for (raft, _) in &nodes {
//!         match raft.apply(command.clone(), timeout).await {
//!             // Committed, and applied on this node: `_replaced` is what
//!             // the state machine answered.
//!             Ok((index, _replaced)) => break 'written (index, raft.id()),
//!             Err(error) if retry(&error) => {}
//!             Err(error) => return Err(error),
//!         }
//!     }
//!     tokio::time::sleep(Duration::from_millis(50)).await;
//! };
//!
//! // Read it back on another node. `linearizable_read` asks the leader for
//! // its commit index and has it confirm its leadership with a heartbeat
//! // round (ReadIndex, thesis §6.4); once this node has applied that index,
//! // its state reflects every write committed before the read began.
//! let (reader, kv) = nodes.iter().find(|(raft, _)| raft.id() != writer).expect("three nodes");
//! let mut attempts = 0;
//! let read_index = loop {
//!     attempts += 1;
//!     assert!(attempts <= 100, "the read was never confirmed");
//!     match reader.linearizable_read(timeout).await {
//!         Ok(index) => break index,
//!         Err(error) if retry(&error) => tokio::time::sleep(Duration::from_millis(50)).await,
//!         Err(error) => return Err(error),
//!     }
//! };
//! assert!(read_index >= written);
//! reader.applied_watch().wait_for(|applied| *applied >= read_index).await.expect("the node runs");
//! assert_eq!(kv.0.lock().unwrap().get("greeting").map(String::as_str), Some("hello"));
//!
//! for (raft, _) in &nodes {
//!     raft.shutdown().await;
//! }
//! # Ok(())
//! # }
//! ```

#![warn(missing_docs)]

pub mod storage;
pub mod transport;

mod config;
mod error;
mod locks;
pub mod metrics;
mod observe;
mod runtime;
mod state_machine;
pub mod stats;

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use tokio::sync::{mpsc, oneshot, watch};

pub use config::{Config, ReloadableConfig};
pub use error::{RaftError, SnapshotOp};
pub use observe::{Observation, Observer};
pub use raftkv_core::{
    AppendEntries, Configuration, Entry, EntryPayload, HardState, LogId, LogIndex, MembershipChange, Message, NodeId,
    ProposeError, ReadError, ReadMode, Role, SnapshotMeta, Term,
};
pub use runtime::{LeaderInfo, PeerStatus, Status};
pub use state_machine::{SnapshotCheck, SnapshotSource, StateMachine};
pub use stats::Stats;

use raftkv_core::{Core, DurableState};
use runtime::{Request, Stores};
use storage::{LogStore, SnapshotStore, StableStore, StorageError};
use transport::{Inbox, Transport};

/// Queue bound between the handle and the raft loop; callers wait when full.
const REQUEST_QUEUE: usize = 1 << 16;

/// What `Raft::recover_cluster` changed.
#[derive(Clone, Debug)]
pub struct Recovery {
    /// The configuration in force before, and the index it was written at.
    pub previous: Configuration,
    /// Index of the entry (or snapshot) that carried `previous`; 0 if none did.
    pub previous_index: LogIndex,
    /// The configuration now in force: the one given to `recover_cluster`.
    pub configuration: Configuration,
    /// The snapshot that now holds the state and `configuration`: it ends at
    /// the node's last entry.
    pub snapshot: LogId,
}

/// Restores the newest readable snapshot into `state_machine` and returns its
/// metadata. A newest snapshot that cannot be read is skipped for an older one
/// only while the log still holds every entry after the older one: otherwise
/// the node would start without entries it may have acknowledged, and start-up
/// is refused with what to do.
fn restore_newest_snapshot(
    snapshots: &dyn SnapshotStore,
    log: &dyn LogStore,
    state_machine: &mut dyn StateMachine,
) -> Result<Option<SnapshotMeta>, RaftError> {
    let first = log.first_index()?;
    // The newest snapshot, if it was skipped, and why.
    let mut skipped: Option<(LogId, String)> = None;
    for info in snapshots.list()? {
        if let Some((newest, why)) = &skipped {
            if first > info.meta.last_log_id.index.next() {
                return Err(RaftError::Snapshot {
                    op: SnapshotOp::Restore,
                    snapshot: Some(*newest),
                    reason: format!(
                        "it cannot be read ({why}), and the log starts at {first}, after the older snapshot {} \
                         ends at {}: starting from it would lose entries. Restore the newest snapshot's file from a \
                         backup, or move this node's data aside and let it rejoin the cluster",
                        info.id, info.meta.last_log_id.index
                    ),
                });
            }
        }
        let opened = snapshots.open(&info.id).map_err(|e| format!("reading {}: {e}", info.id)).and_then(
            |(opened, mut reader)| match state_machine.restore(&mut reader) {
                Ok(()) => Ok(opened),
                Err(e) => Err(format!("the state machine refused {}: {e}", opened.id)),
            },
        );
        match opened {
            Ok(info) => return Ok(Some(info.meta)),
            Err(why) => {
                tracing::warn!(%why, id = info.id, "cannot use a snapshot; trying the next older one");
                if skipped.is_none() {
                    skipped = Some((info.meta.last_log_id, why));
                }
            }
        }
    }
    if let Some((newest, why)) = skipped {
        if first > LogIndex(1) {
            return Err(RaftError::Snapshot {
                op: SnapshotOp::Restore,
                snapshot: Some(newest),
                reason: format!(
                    "it cannot be read ({why}), no older snapshot can either, and the log starts at {first}: restore \
                     the snapshot file from a backup, or move this node's data aside and let it rejoin"
                ),
            });
        }
    }
    Ok(None)
}

/// Makes the log continue the snapshot the node starts from
/// (`raftkv_driver::reconcile_steps`, run by the log writer's own step runner),
/// with a warning when it changes anything.
fn reconcile_log(log: &dyn LogStore, stable: &dyn StableStore, snapshot: &SnapshotMeta) -> Result<(), RaftError> {
    let id = snapshot.last_log_id;
    let (first, last) = (log.first_index()?, log.last_index()?);
    let terms: std::collections::BTreeMap<LogIndex, Term> = [id.index, id.index.next()]
        .into_iter()
        .filter(|index| first <= *index && *index <= last)
        .map(|index| Ok(log.get(index)?.map(|entry| (index, entry.term))))
        .collect::<Result<Vec<_>, RaftError>>()?
        .into_iter()
        .flatten()
        .collect();
    let steps = raftkv_driver::reconcile_steps(id, first, last, |index| terms.get(&index).copied());
    if steps.iter().any(|step| matches!(step, raftkv_driver::StoreStep::Write(_))) {
        tracing::warn!(snapshot = %id, %first, %last, "the log disagrees with the snapshot after it; cutting it");
    }
    runtime::run_steps(log, stable, steps, &mut Default::default())?;
    Ok(())
}

/// A handle to a running Raft node. Cheap to clone; every clone drives the same
/// node. Methods that need the leader return `RaftError::NotLeader` elsewhere.
///
/// Besides the leader and applied watches, `observe` subscribes to what
/// happens on the node (hashicorp's `RegisterObserver`): leader changes, the
/// vote requests it answers, peers the leader stops and resumes hearing from,
/// and configuration changes, as [`Observation`]s in a bounded queue that the
/// raft loop never waits on (a full queue drops, and counts, what does not fit).
#[derive(Clone)]
pub struct Raft {
    inner: Arc<Inner>,
}

struct Inner {
    id: NodeId,
    requests: mpsc::Sender<Request>,
    inbox: Inbox,
    leader: watch::Receiver<LeaderInfo>,
    applied: watch::Receiver<LogIndex>,
    transport: Arc<dyn Transport>,
    shutdown: watch::Sender<bool>,
    failure: watch::Receiver<Option<String>>,
    task: std::sync::Mutex<Option<tokio::task::JoinHandle<()>>>,
    /// How long past its deadline an `add_voter` caller waits for the removal
    /// to commit before giving up (two election timeouts, as started).
    staging_grace: Duration,
    /// Where observers are registered and dropped (`observe`), and their ids.
    observers: mpsc::UnboundedSender<observe::ObserverChange>,
    next_observer: std::sync::atomic::AtomicU64,
    /// A `restore` is running (one at a time).
    restoring: Arc<std::sync::atomic::AtomicBool>,
    /// `Config::max_restore_bytes`, and the bytes of a restore chunk (half an append).
    max_restore_bytes: u64,
    restore_chunk_bytes: usize,
}

/// Restore chunks proposed and not yet applied, at most, so that a large
/// restore does not flood the log writer.
const RESTORE_IN_FLIGHT: usize = 8;

/// Marks a `restore` as running until dropped. If the restore ends before its
/// `Commit` was proposed (an error, a timeout, a dropped caller), a `Commit`
/// that every node refuses is proposed in its place, closing the restore so
/// that snapshots are taken again at once (best effort: a new leader's first
/// entry closes it too).
struct RestoreGuard {
    restoring: Arc<std::sync::atomic::AtomicBool>,
    requests: mpsc::Sender<Request>,
    id: Option<u64>,
    commit_sent: bool,
}

impl Drop for RestoreGuard {
    fn drop(&mut self) {
        if let (Some(id), false) = (self.id, self.commit_sent) {
            let (reply, _) = oneshot::channel();
            let step = raftkv_core::RestoreStep::Commit { id, chunks: u64::MAX };
            let _ = self.requests.try_send(Request::Restore { step, reply });
        }
        self.restoring.store(false, std::sync::atomic::Ordering::Release);
    }
}

impl Raft {
    /// Whether the stores hold any state (a node that ran before restarts from
    /// it; a new one must be bootstrapped or join a cluster).
    pub fn has_existing_state(log: &dyn LogStore, stable: &dyn StableStore) -> Result<bool, RaftError> {
        Ok(log.last_index()? > LogIndex::ZERO || stable.hard_state()?.current_term > Term(0))
    }

    /// Writes the founding configuration of a new cluster (identical on every
    /// founder, hashicorp's `BootstrapCluster`). Refuses stores that hold state.
    pub fn bootstrap_cluster(
        log: &dyn LogStore,
        stable: &dyn StableStore,
        voters: impl IntoIterator<Item = NodeId>,
    ) -> Result<(), RaftError> {
        if Raft::has_existing_state(log, stable)? {
            let (term, last_index) = (stable.hard_state()?.current_term, log.last_index()?);
            return Err(RaftError::AlreadyBootstrapped { term, last_index });
        }
        let durable = DurableState::bootstrap(voters);
        log.append(&durable.entries)?;
        stable.set_hard_state(durable.hard_state)?;
        Ok(())
    }

    /// Rewrites the configuration of a **stopped** node after a loss of quorum
    /// (hashicorp's `RecoverCluster`, like its peers.json). The node's newest
    /// snapshot and whole log are applied to `state_machine` (a fresh
    /// instance), which is then stored as a snapshot at the node's last entry
    /// with `configuration` as its membership, and the log is emptied: the
    /// next start elects a leader among the servers left. Run it on every
    /// survivor with the same configuration; entries a survivor holds that the
    /// old cluster had not committed become committed. Ids stay real (the
    /// snapshot ends at an entry the node has), so survivors with different
    /// logs reconcile through ordinary replication and InstallSnapshot.
    /// Servers not in `configuration` must not be started again with their
    /// old data.
    pub fn recover_cluster(
        log: &dyn LogStore,
        stable: &dyn StableStore,
        snapshots: &dyn SnapshotStore,
        state_machine: &mut dyn StateMachine,
        configuration: Configuration,
    ) -> Result<Recovery, RaftError> {
        if configuration.voters.is_empty() || configuration.is_joint() {
            return Err(RaftError::Config(
                "a recovered configuration needs at least one voter and no outgoing set".into(),
            ));
        }
        if let Some(both) = configuration.voters.intersection(&configuration.learners).next() {
            return Err(RaftError::Config(format!("node {both} cannot be both a voter and a nonvoter")));
        }
        if !Raft::has_existing_state(log, stable)? {
            return Err(RaftError::NothingToRecover { reason: "this node holds no raft state: it never ran".into() });
        }
        let snapshot = restore_newest_snapshot(snapshots, log, state_machine)?;
        if let Some(snapshot) = &snapshot {
            reconcile_log(log, stable, snapshot)?;
        }
        // Restores through the log are carried out as the apply task would.
        let check = state_machine.snapshot_check();
        let mut restores = runtime::restore::Restores::new(u64::MAX);
        let mut previous = snapshot.as_ref().map(|s| (s.config.clone(), s.last_log_id.index));
        let mut tail = snapshot.as_ref().map_or(LogId::new(Term(0), LogIndex::ZERO), |s| s.last_log_id);
        let last = log.last_index()?;
        let mut next = tail.index.next();
        while next <= last {
            let upto = LogIndex((next.0 + 4095).min(last.0));
            let entries = log.get_range(next, upto)?;
            for entry in &entries {
                if let EntryPayload::Config(config) = &entry.payload {
                    previous = Some((config.clone(), entry.index));
                }
            }
            runtime::restore::apply_entries(state_machine, &mut restores, check.as_ref(), &entries)
                .map_err(|reason| RaftError::Snapshot { op: SnapshotOp::Restore, snapshot: None, reason })?;
            tail = entries.last().map_or(tail, |e| e.log_id());
            next = upto.next();
        }
        if tail.index == LogIndex::ZERO {
            return Err(RaftError::NothingToRecover {
                reason: "neither a snapshot nor log entries to rebuild the state from".into(),
            });
        }
        let meta = SnapshotMeta { last_log_id: tail, config: configuration.clone() };
        runtime::snapshots::write_snapshot(snapshots, meta, state_machine.snapshot())
            .map_err(|e| RaftError::Snapshot { op: SnapshotOp::Write, snapshot: Some(tail), reason: e.to_string() })?;
        log.purge_prefix(tail.index)?;
        let (previous, previous_index) = previous.unwrap_or_default();
        Ok(Recovery { previous, previous_index, configuration, snapshot: tail })
    }

    /// Starts a node from its stores. Must be called inside a tokio runtime.
    /// Restores the newest readable snapshot into the state machine and replays
    /// the log after it.
    pub fn new(
        config: Config,
        state_machine: impl StateMachine,
        log: Arc<dyn LogStore>,
        stable: Arc<dyn StableStore>,
        snapshots: Arc<dyn SnapshotStore>,
        transport: Arc<dyn Transport>,
    ) -> Result<Raft, RaftError> {
        config.validate().map_err(RaftError::Config)?;
        config.core_config().validate().map_err(|e| RaftError::Config(e.to_string()))?;
        let mut state_machine = state_machine;
        let hard_state = stable.hard_state()?;
        let snapshot = restore_newest_snapshot(snapshots.as_ref(), log.as_ref(), &mut state_machine)?;
        if let Some(snapshot) = &snapshot {
            reconcile_log(log.as_ref(), stable.as_ref(), snapshot)?;
        }
        let start = snapshot.as_ref().map_or(LogIndex::ZERO, |s| s.last_log_id.index);
        let (first, last) = (log.first_index()?, log.last_index()?);
        if first > start.next() {
            return Err(RaftError::Storage(StorageError::Inconsistent {
                what: format!(
                    "the log starts at {first} but the newest snapshot ends at {start}: entries {}..{} are missing",
                    start.next(),
                    first.prev()
                ),
            }));
        }
        let entries = log.get_range(start.next(), last)?;
        let durable = DurableState { hard_state, snapshot, entries };
        let start_index = start;
        let start = Instant::now();
        // Differs between runs (clock and process): election jitter, and read
        // ids that never repeat across restarts.
        let seed = config.id.0
            ^ u64::from(std::process::id()).rotate_left(32)
            ^ (std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH)).map_or(0, |d| d.as_nanos() as u64);
        // The configuration was checked above: what is left to refuse is the
        // stored state.
        let core = Core::new(config.core_config(), durable, 0, seed).map_err(|e| {
            RaftError::Storage(StorageError::Inconsistent {
                what: format!("{e} (snapshot ends at {start_index}, log {first}..={last})"),
            })
        })?;

        let (requests_tx, requests) = mpsc::channel(REQUEST_QUEUE);
        let (inbox, inbox_rx) = Inbox::channel();
        let (leader_tx, leader) = watch::channel(LeaderInfo::default());
        let (applied_tx, applied) = watch::channel(LogIndex::ZERO);
        let (shutdown, shutdown_rx) = watch::channel(false);
        let (failure_tx, failure) = watch::channel(None);
        let (observers, observers_rx) = mpsc::unbounded_channel();
        let channels = runtime::Channels {
            requests,
            inbox: inbox_rx,
            shutdown: shutdown_rx,
            leader: leader_tx,
            applied: applied_tx,
            failure: failure_tx,
            observers: observers_rx,
        };
        let stores = Stores { log, stable, snapshots };
        let id = config.id;
        let staging_grace = 2 * config.election_timeout_max;
        let max_restore_bytes = config.max_restore_bytes;
        let restore_chunk_bytes = (config.max_bytes_per_append / 2).max(1);
        let node_transport = transport.clone();
        let task = tokio::spawn(async move {
            let node =
                runtime::Node { core, stores, state_machine: Box::new(state_machine), transport: node_transport };
            runtime::run(node, &config, channels, start, seed).await;
        });
        Ok(Raft {
            inner: Arc::new(Inner {
                id,
                requests: requests_tx,
                inbox,
                leader,
                applied,
                transport,
                shutdown,
                failure,
                task: std::sync::Mutex::new(Some(task)),
                staging_grace,
                observers,
                next_observer: std::sync::atomic::AtomicU64::new(0),
                restoring: Arc::new(std::sync::atomic::AtomicBool::new(false)),
                max_restore_bytes,
                restore_chunk_bytes,
            }),
        })
    }

    /// This node's id.
    pub fn id(&self) -> NodeId {
        self.inner.id
    }

    /// Where the transport delivers messages for this node.
    pub fn inbox(&self) -> Inbox {
        self.inner.inbox.clone()
    }

    async fn request<T>(&self, make: impl FnOnce(runtime::Reply<T>) -> Request) -> Result<T, RaftError> {
        let (reply, response) = oneshot::channel();
        self.inner.requests.send(make(reply)).await.map_err(|_| self.not_running())?;
        response.await.map_err(|_| self.stopped_in_flight())?
    }

    /// A request that never reached the raft loop: definitely not carried out.
    fn not_running(&self) -> RaftError {
        raftkv_driver::Failure::not_done(self.failure().as_deref()).into()
    }

    /// A request the raft loop took but never answered.
    fn stopped_in_flight(&self) -> RaftError {
        raftkv_driver::Failure::stopped(self.failure().as_deref()).into()
    }

    /// Why the node stopped for good, if it did: a storage failure or a
    /// snapshot it could not keep. The node no longer serves anything; its
    /// owner should report the reason and restart it (a process exits non-zero
    /// so that its supervisor does). `None` while it runs or after a clean
    /// `shutdown`.
    pub fn failure(&self) -> Option<String> {
        self.inner.failure.borrow().clone()
    }

    /// Resolves with the reason once the node stops for good (see `failure`);
    /// never resolves for a node that runs or was shut down cleanly.
    pub async fn failed(&self) -> String {
        let mut failure = self.inner.failure.clone();
        loop {
            if let Some(reason) = failure.borrow_and_update().clone() {
                return reason;
            }
            if failure.changed().await.is_err() {
                return std::future::pending().await;
            }
        }
    }

    async fn with_timeout<T>(
        timeout: Duration,
        future: impl std::future::Future<Output = Result<T, RaftError>>,
    ) -> Result<T, RaftError> {
        tokio::time::timeout(timeout, future).await.map_err(|_| RaftError::Timeout(timeout))?
    }

    /// Replicates `command` and applies it; resolves with its index and the
    /// state machine's response. After `LeadershipLost` or `Timeout` the command
    /// may or may not have been applied.
    pub async fn apply(&self, command: Bytes, timeout: Duration) -> Result<(LogIndex, Bytes), RaftError> {
        Raft::with_timeout(timeout, self.request(|reply| Request::Propose { command, reply })).await
    }

    /// Applies several commands; they share log writes and messages with each
    /// other and with concurrent callers.
    pub async fn apply_batch(
        &self,
        commands: Vec<Bytes>,
        timeout: Duration,
    ) -> Result<Vec<(LogIndex, Bytes)>, RaftError> {
        self.apply_each(commands, timeout).await.into_iter().collect()
    }

    /// Proposes several commands together and answers each on its own: one
    /// may fail (or have an unknown outcome) while others applied. The timeout
    /// covers the whole batch.
    pub async fn apply_each(
        &self,
        commands: Vec<Bytes>,
        timeout: Duration,
    ) -> Vec<Result<(LogIndex, Bytes), RaftError>> {
        let mut pending = Vec::with_capacity(commands.len());
        for command in commands {
            let (reply, response) = oneshot::channel();
            let sent = self.inner.requests.send(Request::Propose { command, reply }).await;
            pending.push(sent.ok().map(|()| response));
        }
        let deadline = tokio::time::Instant::now() + timeout;
        let mut results = Vec::with_capacity(pending.len());
        for response in pending {
            results.push(match response {
                None => Err(self.not_running()),
                Some(response) => match tokio::time::timeout_at(deadline, response).await {
                    Ok(Ok(result)) => result,
                    Ok(Err(_)) => Err(self.stopped_in_flight()),
                    Err(_) => Err(RaftError::Timeout(timeout)),
                },
            });
        }
        results
    }

    /// Resolves once everything committed before the call is applied here
    /// (hashicorp's `Barrier`): an empty entry goes through the log.
    pub async fn barrier(&self, timeout: Duration) -> Result<LogIndex, RaftError> {
        self.apply(Bytes::new(), timeout).await.map(|(index, _)| index)
    }

    /// Returns an index at which a linearizable read may be served, once this
    /// node's state machine has applied it. `ReadMode::Lease` answers at once
    /// while the leader's lease holds. On a follower the leader is asked.
    pub async fn read_index(&self, mode: ReadMode, timeout: Duration) -> Result<LogIndex, RaftError> {
        Raft::with_timeout(timeout, self.request(|reply| Request::Read { mode, reply })).await
    }

    /// `read_index` with a heartbeat round (ReadIndex); then read the state machine.
    pub async fn linearizable_read(&self, timeout: Duration) -> Result<LogIndex, RaftError> {
        self.read_index(ReadMode::Linearizable, timeout).await
    }

    /// Confirms that this node is still the leader (a heartbeat round).
    pub async fn verify_leader(&self, timeout: Duration) -> Result<(), RaftError> {
        if self.leader().leader != Some(self.id()) {
            return Err(RaftError::NotLeader { leader: self.leader().leader });
        }
        self.linearizable_read(timeout).await.map(|_| ())
    }

    /// The leader as last known, and its term.
    pub fn leader(&self) -> LeaderInfo {
        *self.inner.leader.borrow()
    }

    /// The leader's id and address (hashicorp's `LeaderWithID`), as far as
    /// known; the address comes from the transport.
    pub fn leader_with_address(&self) -> Option<(NodeId, Option<String>)> {
        let leader = self.leader().leader?;
        Some((leader, self.inner.transport.address_of(leader)))
    }

    /// A watch of the leader; it always holds the latest value.
    pub fn leader_watch(&self) -> watch::Receiver<LeaderInfo> {
        self.inner.leader.clone()
    }

    /// Subscribes to this node's observations that `filter` takes
    /// (hashicorp's `RegisterObserver` with a `FilterFn`), from the raft
    /// loop's next wake-up on: what happened before is not replayed (read the
    /// present from `leader` and `status`). The loop never waits for an
    /// observer: an observation that finds its queue full (`capacity`, at
    /// least one) is dropped and counted in `Observer::dropped`. `filter`
    /// runs on the raft loop: it must be quick and must not block (one that
    /// panics is deregistered). Dropping the `Observer` deregisters it;
    /// after the node stops, `recv` ends with `None`. Peer observations come
    /// from the leader only: observe every node to follow them across
    /// elections.
    pub fn observe(&self, filter: impl Fn(&Observation) -> bool + Send + 'static, capacity: usize) -> Observer {
        let id = self.inner.next_observer.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        observe::register(id, Box::new(filter), capacity, self.inner.observers.clone())
    }

    /// Highest index the state machine has applied.
    pub fn applied_index(&self) -> LogIndex {
        *self.inner.applied.borrow()
    }

    /// A watch of the applied index.
    pub fn applied_watch(&self) -> watch::Receiver<LogIndex> {
        self.inner.applied.clone()
    }

    /// The node's protocol state as the raft loop sees it now: role, term,
    /// log and commit indexes, configuration, and on the leader each member's
    /// match index, trailing entries and last contact.
    pub async fn status(&self) -> Result<Status, RaftError> {
        let (reply, response) = oneshot::channel();
        self.inner.requests.send(Request::Status { reply }).await.map_err(|_| self.not_running())?;
        response.await.map_err(|_| self.not_running())
    }

    /// The node's state for operators, typed (serializes with serde): the
    /// servers' addresses and the protocol version come from the transport.
    pub async fn statistics(&self) -> Result<Stats, RaftError> {
        let transport = self.inner.transport.clone();
        self.statistics_with(|id| transport.address_of(id)).await
    }

    /// `statistics` with each server's address from `address_of`.
    pub async fn statistics_with(&self, address_of: impl Fn(NodeId) -> Option<String>) -> Result<Stats, RaftError> {
        let status = self.status().await?;
        let protocol_version = self.inner.transport.protocol_version();
        Ok(Stats::new(&status, self.applied_index(), protocol_version, address_of))
    }

    /// Proposes a membership change; resolves once it is committed and applied
    /// here. `MembershipChange::Joint` replaces several servers at once
    /// (thesis §4.3); `AddVoter` here gives a vote at once, for a server known
    /// to be caught up: `add_voter` is the safe way to add one.
    pub async fn change_membership(&self, change: MembershipChange, timeout: Duration) -> Result<LogIndex, RaftError> {
        self.change_membership_at(change, None, timeout).await
    }

    /// `change_membership`, refused with `ProposeError::ConfigChanged` (nothing
    /// done) unless the configuration in force is still the one committed or
    /// appended at `prev_index` (hashicorp's `prevIndex`; 0 or `None` skips the
    /// check). Read the index from `status().membership_index`.
    pub async fn change_membership_at(
        &self,
        change: MembershipChange,
        prev_index: Option<LogIndex>,
        timeout: Duration,
    ) -> Result<LogIndex, RaftError> {
        let prev_index = prev_index.filter(|index| *index != LogIndex::ZERO);
        let result = self.request(|reply| Request::Membership { change, prev_index, reply });
        Raft::with_timeout(timeout, result).await.map(|(index, _)| index)
    }

    /// Adds `id` as a voter once it has caught up (thesis §4.2.1): first a
    /// learner marked staging, which the leader promotes when its log has
    /// been within `promotion_max_lag` entries for `promotion_stable` (any
    /// later leader finishes it). Resolves with the promotion's index once it
    /// is applied here (at once for a voter already). If `id` has not caught
    /// up within `timeout`, the leader removes it again and this fails with
    /// `NotCaughtUp` once the removal committed; `Superseded` if another
    /// change decided first. Both are "not done". `LeadershipLost`,
    /// `Stopped` and `Timeout` leave it unknown: ask again (a retry joins a
    /// staging server or finds it a voter). The server's address must be
    /// known to the transport.
    pub async fn add_voter(
        &self,
        id: NodeId,
        prev_index: Option<LogIndex>,
        timeout: Duration,
    ) -> Result<LogIndex, RaftError> {
        let prev_index = prev_index.filter(|index| *index != LogIndex::ZERO);
        let timeout_ms = timeout.as_millis().min(u64::MAX as u128) as u64;
        let result = self.request(|reply| Request::AddVoter { id, prev_index, timeout_ms, reply });
        // The leader answers after its removal commits; this only bounds a wait
        // whose answer was lost.
        Raft::with_timeout(timeout + self.inner.staging_grace, result).await.map(|(index, _)| index)
    }

    /// Adds `id` as a learner (hashicorp's nonvoter): it receives the log,
    /// never votes and is never promoted by the library.
    pub async fn add_nonvoter(
        &self,
        id: NodeId,
        prev_index: Option<LogIndex>,
        timeout: Duration,
    ) -> Result<LogIndex, RaftError> {
        self.change_membership_at(MembershipChange::AddLearner(id), prev_index, timeout).await
    }

    /// Makes voter `id` a learner (a single-server change, thesis §4.1). A
    /// leader demoting itself leads until the change commits, then steps
    /// down: transfer leadership first to avoid the election gap.
    pub async fn demote_voter(
        &self,
        id: NodeId,
        prev_index: Option<LogIndex>,
        timeout: Duration,
    ) -> Result<LogIndex, RaftError> {
        self.change_membership_at(MembershipChange::DemoteVoter(id), prev_index, timeout).await
    }

    /// Removes `id` (voter or learner) from the configuration; a leader
    /// removing itself steps down once the removal commits (thesis §4.2.2).
    pub async fn remove_server(
        &self,
        id: NodeId,
        prev_index: Option<LogIndex>,
        timeout: Duration,
    ) -> Result<LogIndex, RaftError> {
        self.change_membership_at(MembershipChange::RemoveServer(id), prev_index, timeout).await
    }

    /// Hands leadership to `target` (thesis §3.10) and resolves once `target`
    /// leads (at once when asked of `target` while it leads). Fails with `TransferFailed` when another node took over, or when
    /// `target` did not within about two election timeouts (unreachable, or
    /// too far behind): the leader then resumes serving.
    pub async fn leadership_transfer(&self, target: NodeId) -> Result<(), RaftError> {
        let mut leader = self.inner.leader.clone();
        let before = leader.borrow_and_update().term;
        let Some(wait) = self.request(|reply| Request::Transfer { target, reply }).await? else {
            return Ok(()); // `target` is this node, and it leads
        };
        let moved = tokio::time::timeout(wait, async {
            loop {
                let now = *leader.borrow_and_update();
                match now.leader {
                    Some(new) if now.term > before => return Ok(new),
                    _ => {}
                }
                if leader.changed().await.is_err() {
                    return Err(self.not_running());
                }
            }
        })
        .await;
        match moved {
            Ok(Ok(new)) if new == target => Ok(()),
            Ok(Ok(new)) => Err(RaftError::TransferFailed { target, reason: format!("node {new} took over instead") }),
            Ok(Err(error)) => Err(error),
            Err(_) => Err(RaftError::TransferFailed {
                target,
                reason: format!(
                    "it did not take over within {wait:?} as far as this node saw (unreachable or behind); \
                     this node serves again, though a late TimeoutNow may still make the target campaign"
                ),
            }),
        }
    }

    /// Takes a snapshot of the state machine now (hashicorp's `Snapshot`) and
    /// compacts the log behind it, keeping `trailing_logs`; resolves with the
    /// snapshot's last entry once it is stored. A snapshot already being written
    /// finishes first. Fails with `NothingNewToSnapshot` when nothing was applied
    /// since the newest snapshot.
    pub async fn snapshot(&self) -> Result<LogId, RaftError> {
        self.request(|reply| Request::Snapshot { reply }).await
    }

    /// Replaces the state machine's state, on every node, with the snapshot
    /// read from `reader` (as the state machine's `SnapshotSource::write_to`
    /// wrote it; a backup), on the leader (hashicorp's `Restore`). Unlike
    /// hashicorp, which installs the snapshot on the leader alone behind a
    /// hole in the log, the restore goes through the log, because a leader
    /// that crashes before a follower holds such a snapshot leaves the
    /// cluster with diverged state machines (`docs/design/restore.md`).
    ///
    /// The snapshot is read whole first (at most `Config::max_restore_bytes`,
    /// on a blocking thread), then proposed as a `Begin` entry with its length
    /// and CRC-32C, chunks of at most half `max_bytes_per_append` (a few in
    /// flight at a time), and a `Commit`. Every node applies them in log
    /// order and replaces its state at the `Commit` entry, once the bytes
    /// check (and the state machine's `snapshot_check`, if any, accepts
    /// them); entries after it apply on top of the restored state. Resolves
    /// with the `Commit`'s index once applied here; a snapshot of the new
    /// state follows soon. The state machine never sees the restore's
    /// entries in `apply`.
    ///
    /// One restore at a time per node (`RestoreInProgress`). `NotLeader` and
    /// `RestoreFailed` (unreadable, too large, or refused at the `Commit` on
    /// every node: damaged bytes, or refused by the state machine) are not
    /// done. `LeadershipLost`, `Stopped` and `Timeout` leave the outcome
    /// unknown (a new leader may commit a `Commit` already in its log); a
    /// retry restores again under a new id, which abandons the old.
    pub async fn restore(
        &self,
        reader: impl std::io::Read + Send + 'static,
        timeout: Duration,
    ) -> Result<LogIndex, RaftError> {
        use std::sync::atomic::Ordering;
        if self.inner.restoring.swap(true, Ordering::AcqRel) {
            return Err(RaftError::RestoreInProgress);
        }
        let mut guard = RestoreGuard {
            restoring: self.inner.restoring.clone(),
            requests: self.inner.requests.clone(),
            id: None,
            commit_sent: false,
        };
        Raft::with_timeout(timeout, self.restore_inner(reader, &mut guard)).await
    }

    async fn restore_inner(
        &self,
        reader: impl std::io::Read + Send + 'static,
        guard: &mut RestoreGuard,
    ) -> Result<LogIndex, RaftError> {
        use raftkv_core::RestoreStep;
        use std::collections::hash_map::RandomState;
        use std::hash::{BuildHasher, Hasher};

        let leader = self.leader().leader;
        if leader != Some(self.id()) {
            return Err(RaftError::NotLeader { leader });
        }
        let limit = self.inner.max_restore_bytes;
        let spooled = tokio::task::spawn_blocking(move || {
            let mut data = Vec::new();
            std::io::Read::read_to_end(&mut std::io::Read::take(reader, limit.saturating_add(1)), &mut data)
                .map(|_| data)
        })
        .await;
        let data = match spooled {
            Ok(Ok(data)) => data,
            Ok(Err(error)) => {
                let reason = format!("reading the snapshot: {error}");
                return Err(RaftError::RestoreFailed { index: LogIndex::ZERO, reason });
            }
            Err(error) => {
                let reason = format!("reading the snapshot: the reader panicked or was cancelled ({error})");
                return Err(RaftError::RestoreFailed { index: LogIndex::ZERO, reason });
            }
        };
        if data.len() as u64 > limit {
            let reason = format!("the snapshot is larger than max_restore_bytes ({limit})");
            return Err(RaftError::RestoreFailed { index: LogIndex::ZERO, reason });
        }
        let data = Bytes::from(data);
        // Random, so that a retry (or another node's restore) never continues this one.
        let id = RandomState::new().build_hasher().finish() ^ self.id().0.rotate_left(48);
        let chunk = self.inner.restore_chunk_bytes;
        let chunks = data.len().div_ceil(chunk) as u64;
        let begin = RestoreStep::Begin { id, len: data.len() as u64, crc32c: crc32c::crc32c(&data) };
        guard.id = Some(id);
        let mut steps = vec![begin];
        steps.extend((0..chunks).map(|seq| {
            let start = seq as usize * chunk;
            RestoreStep::Chunk { id, seq, data: data.slice(start..(start + chunk).min(data.len())) }
        }));
        let mut in_flight = std::collections::VecDeque::new();
        for (i, step) in steps.into_iter().enumerate() {
            if in_flight.len() >= RESTORE_IN_FLIGHT {
                if let Some(answer) = in_flight.pop_front() {
                    self.restore_answer(answer).await?;
                }
            }
            in_flight.push_back(self.propose_restore_step(step, i == 0).await?);
        }
        guard.commit_sent = true;
        let commit = self.propose_restore_step(RestoreStep::Commit { id, chunks }, false).await?;
        for answer in in_flight {
            self.restore_answer(answer).await?;
        }
        self.restore_answer(commit).await
    }

    /// Sends one restore step to the raft loop; the answer comes once its
    /// entry is applied here. A node that stopped after the `first` step was
    /// taken stopped with the restore in flight (`Stopped`).
    async fn propose_restore_step(
        &self,
        step: raftkv_core::RestoreStep,
        first: bool,
    ) -> Result<oneshot::Receiver<Result<(LogIndex, Bytes), RaftError>>, RaftError> {
        let (reply, response) = oneshot::channel();
        let sent = self.inner.requests.send(Request::Restore { step, reply }).await;
        match sent {
            Ok(()) => Ok(response),
            Err(_) if first => Err(self.not_running()),
            Err(_) => Err(self.stopped_in_flight()),
        }
    }

    async fn restore_answer(
        &self,
        answer: oneshot::Receiver<Result<(LogIndex, Bytes), RaftError>>,
    ) -> Result<LogIndex, RaftError> {
        let (index, _) = answer.await.map_err(|_| self.stopped_in_flight())??;
        Ok(index)
    }

    /// Changes the settings in `reload` while the node runs (hashicorp's
    /// `ReloadConfig`), after checking the combination; returns the settings
    /// now in force. Leases stay safe while nodes are reloaded one by one (see
    /// `Core::reload_config`), provided every node started with the same
    /// `election_timeout_min`.
    pub async fn reload_config(&self, reload: ReloadableConfig) -> Result<Config, RaftError> {
        self.request(|reply| Request::Reload { reload: Box::new(reload), reply }).await
    }

    /// Stops the node: writes in flight fail with `Stopped` (their outcome is
    /// unknown), later requests with `Shutdown`; the log writer finishes what
    /// it was given, the tasks end.
    pub async fn shutdown(&self) {
        self.inner.shutdown.send_replace(true);
        let task = locks::lock(&self.inner.task).take();
        if let Some(task) = task {
            if tokio::time::timeout(runtime::SHUTDOWN_GRACE, task).await.is_err() {
                tracing::warn!(node = %self.inner.id, "raft tasks did not stop within the grace period");
            }
        }
    }
}
