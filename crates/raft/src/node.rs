//! The runtime around one `Core`: who owns what.
//!
//! - The **raft loop** (one tokio task) owns the `Core`. Timers, inbound
//!   messages, client requests and storage acknowledgements come in through
//!   channels; after each wake-up it drains the core's actions and hands them out.
//!   Proposals that arrive together become one `propose_batch` (one log write,
//!   one broadcast).
//! - The **log writer** (one OS thread: storage calls block) applies persist
//!   requests in order, merging what queued up while it was busy into one append
//!   and one fsync, and reports the highest sequence done.
//! - Messages leave at the end of each wake-up, one batch per peer. A transport
//!   whose `send` only queues (gRPC, memory) is called from the raft loop
//!   itself, saving a task hand-off per batch; otherwise one **peer sender**
//!   task per peer sends in order, and what queues meanwhile goes out next.
//! - The **apply task** owns the state machine: it applies committed batches,
//!   answers the proposals they carry, and answers reads once the state machine
//!   has applied their index.
//!
//! The leader's appends leave for followers while its own write is in progress
//! (thesis §10.2.1); the core counts the leader's own copy only once durable.

use std::collections::{BTreeMap, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use raft_core::{
    Action, Configuration, Core, Entry, InstallSnapshot, LogId, LogIndex, MembershipChange, Message, NodeId,
    PersistRequest, ReadId, ReadMode, Role, SnapshotMeta, Term,
};
use tokio::sync::{mpsc, oneshot, watch};

use crate::config::{Config, ReloadableConfig};
use crate::error::RaftError;
use crate::state_machine::{SnapshotCheck, SnapshotSource, StateMachine};
use crate::storage::{LogStore, SnapshotInfo, SnapshotSink, SnapshotStore, StableStore, StorageError};
use crate::transport::Transport;

pub(crate) type Reply<T> = oneshot::Sender<Result<T, RaftError>>;

/// What the `Raft` handle asks of the raft loop.
pub(crate) enum Request {
    Propose {
        command: Bytes,
        reply: Reply<(LogIndex, Bytes)>,
    },
    Read {
        mode: ReadMode,
        reply: Reply<LogIndex>,
    },
    Membership {
        change: MembershipChange,
        reply: Reply<(LogIndex, Bytes)>,
    },
    /// Answered with how long the transfer may take once it started.
    Transfer {
        target: NodeId,
        reply: Reply<Duration>,
    },
    Status {
        reply: oneshot::Sender<Status>,
    },
    Snapshot {
        reply: Reply<LogId>,
    },
    Reload {
        reload: ReloadableConfig,
        reply: Reply<Config>,
    },
}

/// A snapshot of the node's protocol state, for `stats` and tests.
#[derive(Clone, Debug)]
pub struct Status {
    pub id: NodeId,
    pub role: Role,
    pub term: Term,
    pub leader: Option<NodeId>,
    pub commit_index: LogIndex,
    pub last_log_index: LogIndex,
    pub last_log_term: Term,
    pub first_log_index: LogIndex,
    pub membership: Configuration,
    pub membership_index: LogIndex,
    pub voted_for: Option<NodeId>,
    /// Time since a message from the leader last arrived (zero on the leader,
    /// `None` if none ever did).
    pub last_contact: Option<Duration>,
    /// The newest snapshot this node holds.
    pub snapshot: Option<LogId>,
}

/// Who leads, as last known by this node.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct LeaderInfo {
    pub leader: Option<NodeId>,
    pub term: Term,
}

/// Work for the apply task.
enum ApplyWork {
    Batch {
        entries: Vec<Entry>,
        replies: Vec<(LogIndex, Reply<(LogIndex, Bytes)>)>,
    },
    /// Answer once `index` is applied.
    Read {
        index: LogIndex,
        reply: Reply<LogIndex>,
    },
    /// Replace the state with the stored snapshot `meta` (installed from the leader).
    Restore {
        meta: SnapshotMeta,
    },
    /// The snapshot asked for last is written (`taken`) or failed: another may
    /// be taken.
    SnapshotFinished {
        taken: Option<LogId>,
    },
    /// Take a snapshot now (`Raft::snapshot`).
    Snapshot {
        reply: Reply<LogId>,
    },
    /// New snapshot settings (`Raft::reload_config`).
    Policy(SnapshotPolicy),
}

/// When the apply task takes snapshots on its own.
#[derive(Clone, Copy, Debug)]
struct SnapshotPolicy {
    threshold: u64,
    interval: Duration,
    log_bytes: u64,
}

impl SnapshotPolicy {
    fn of(config: &Config) -> SnapshotPolicy {
        SnapshotPolicy {
            threshold: config.snapshot_threshold.max(1),
            interval: config.snapshot_interval,
            log_bytes: config.snapshot_log_bytes.max(1),
        }
    }
}

/// What the apply task and background snapshot work tell the raft loop.
enum LoopEvent {
    /// The state machine captured its state after `index`; write it out.
    SnapshotCaptured {
        index: LogIndex,
        source: Box<dyn SnapshotSource>,
        waiters: Vec<Reply<LogId>>,
    },
    SnapshotWritten {
        index: LogIndex,
        result: Result<SnapshotInfo, StorageError>,
        waiters: Vec<Reply<LogId>>,
    },
    Outgoing {
        to: NodeId,
        message: Message,
    },
    /// The state machine's check of the snapshot received as `serial` ended.
    SnapshotChecked {
        serial: u64,
        id: LogId,
        result: Result<(), String>,
    },
    /// Something this node cannot continue after (a snapshot it accepted cannot be
    /// stored or restored).
    Fatal(String),
}

/// Work for the log writer thread, in order.
enum WriterJob {
    /// With the received snapshot when the request installs one.
    Persist(PersistRequest, Option<Box<dyn SnapshotSink>>),
    /// Drop log entries up to the index, now covered by a snapshot.
    Purge(LogIndex),
}

enum WriterEvent {
    Persisted(u64),
    Failed(StorageError),
}

pub(crate) struct Channels {
    pub requests: mpsc::Receiver<Request>,
    pub inbox: mpsc::Receiver<(NodeId, Message)>,
    pub shutdown: watch::Receiver<bool>,
    pub leader: watch::Sender<LeaderInfo>,
    pub applied: watch::Sender<LogIndex>,
    /// Set once, with the reason, when the node stops because it cannot go on.
    pub failure: watch::Sender<Option<String>>,
}

pub(crate) struct Stores {
    pub log: Arc<dyn LogStore>,
    pub stable: Arc<dyn StableStore>,
    pub snapshots: Arc<dyn SnapshotStore>,
}

struct PendingProposal {
    term: Term,
    reply: Reply<(LogIndex, Bytes)>,
}

/// A snapshot arriving from the leader, chunk by chunk, into a sink of the
/// snapshot store that is not committed yet.
struct Incoming {
    serial: u64,
    id: LogId,
    sink: Box<dyn SnapshotSink>,
    /// Feeds the state machine's check, which runs on its own thread.
    check: Option<std::sync::mpsc::Sender<Bytes>>,
}

/// A snapshot install under way. The log writer stores the snapshot in order
/// with the log's other writes: the disagreeing suffix is cut, the snapshot
/// committed, then the log before it purged. Until that persist is done the
/// state machine keeps its state, and work for it waits behind the restore.
struct Installing {
    meta: SnapshotMeta,
    /// The persist that stores it, once emitted.
    seq: Option<u64>,
    restore: bool,
}

struct RaftLoop {
    core: Core,
    id: NodeId,
    start: Instant,
    transport: Arc<dyn Transport>,
    peers: BTreeMap<NodeId, mpsc::UnboundedSender<Message>>,
    /// Messages of this wake-up, per peer, sent together at its end when the
    /// transport only queues (`Transport::queues_without_waiting`).
    outbox: BTreeMap<NodeId, Vec<Message>>,
    direct_sends: bool,
    writer: std::sync::mpsc::Sender<WriterJob>,
    apply: mpsc::UnboundedSender<ApplyWork>,
    events: mpsc::UnboundedSender<LoopEvent>,
    snapshots: Arc<dyn SnapshotStore>,
    /// A snapshot being received from the leader, then (whole) awaiting its
    /// check and its install.
    incoming: Option<Incoming>,
    received: Option<Incoming>,
    next_serial: u64,
    check: Option<SnapshotCheck>,
    installing: Option<Installing>,
    /// Work for the apply task held back behind an install's restore.
    held: Vec<ApplyWork>,
    /// The settings in force (`reload_config` changes some).
    config: Config,
    chunk_bytes: usize,
    proposals: BTreeMap<LogIndex, PendingProposal>,
    reads: BTreeMap<ReadId, Reply<LogIndex>>,
    next_read_id: ReadId,
    leader: watch::Sender<LeaderInfo>,
    max_batch: usize,
    last_leader_contact: Option<Instant>,
}

/// Starts the tasks of one node; returns when the raft loop has stopped.
pub(crate) async fn run(
    core: Core,
    config: &Config,
    stores: Stores,
    state_machine: Box<dyn StateMachine>,
    transport: Arc<dyn Transport>,
    channels: Channels,
    start: Instant,
) {
    let Channels { mut requests, mut inbox, mut shutdown, leader, applied, failure: failure_tx } = channels;
    let check = state_machine.snapshot_check();
    let snapshots = stores.snapshots.clone();
    let (events_tx, mut events) = mpsc::unbounded_channel();
    let snapshot_index = core.snapshot().map_or(LogIndex::ZERO, |s| s.last_log_id.index);
    let (writer_events_tx, mut writer_events) = mpsc::unbounded_channel();
    let (writer, writer_rx) = std::sync::mpsc::channel();
    let writer_thread = std::thread::Builder::new()
        .name(format!("raft-log-writer-{}", config.id))
        .spawn(move || log_writer(stores, writer_rx, writer_events_tx));
    let writer_thread = match writer_thread {
        Ok(handle) => handle,
        Err(error) => {
            let reason = format!("cannot start the log writer thread: {error}");
            tracing::error!(%reason, "the node stops");
            failure_tx.send_replace(Some(reason));
            return;
        }
    };
    let (apply_tx, apply_rx) = mpsc::unbounded_channel();
    let apply_task = tokio::spawn(apply_loop(
        state_machine,
        apply_rx,
        applied,
        ApplyContext {
            events: events_tx.clone(),
            snapshots: snapshots.clone(),
            policy: SnapshotPolicy::of(config),
            start: snapshot_index,
            seed: config.id.0,
        },
    ));

    let mut raft = RaftLoop {
        id: config.id,
        core,
        start,
        direct_sends: transport.queues_without_waiting(),
        transport,
        peers: BTreeMap::new(),
        outbox: BTreeMap::new(),
        writer,
        apply: apply_tx,
        events: events_tx,
        snapshots,
        incoming: None,
        received: None,
        next_serial: 0,
        check,
        installing: None,
        held: Vec::new(),
        config: config.clone(),
        chunk_bytes: config.snapshot_chunk_bytes.max(1),
        proposals: BTreeMap::new(),
        reads: BTreeMap::new(),
        next_read_id: 1,
        leader,
        max_batch: config.max_batch.max(1),
        last_leader_contact: None,
    };
    let mut ticker = tokio::time::interval(config.tick_interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    let mut failure = None;
    loop {
        tokio::select! {
            biased;
            _ = shutdown.changed() => break,
            event = writer_events.recv() => match event {
                Some(WriterEvent::Persisted(seq)) => {
                    let mut seq = seq;
                    while let Ok(WriterEvent::Persisted(next)) = writer_events.try_recv() {
                        seq = seq.max(next);
                    }
                    if let Err(error) = raft.core.handle_persisted(seq) {
                        tracing::error!(%error, "log writer acknowledged an unknown persist");
                    }
                    raft.persisted(seq);
                }
                Some(WriterEvent::Failed(error)) => {
                    // A node that cannot persist must stop: continuing could
                    // acknowledge what the disk lost.
                    failure = Some(format!("storage failed: {error}"));
                    break;
                }
                None => {
                    failure = Some("the log writer stopped".to_string());
                    break;
                }
            },
            event = events.recv() => {
                let Some(event) = event else { break };
                if let Err(reason) = raft.handle_event(event) {
                    failure = Some(reason);
                    break;
                }
            }
            message = inbox.recv() => {
                let Some((from, message)) = message else { break };
                let now = raft.now();
                raft.receive(now, from, message);
                for _ in 0..1024 {
                    let Ok((from, message)) = inbox.try_recv() else { break };
                    raft.receive(now, from, message);
                }
            }
            request = requests.recv() => {
                let Some(request) = request else { break };
                raft.handle_requests(request, &mut requests);
            }
            _ = ticker.tick() => {
                let now = raft.now();
                raft.core.handle_tick(now);
            }
        }
        if let Err(reason) = raft.process_actions() {
            failure = Some(reason);
            break;
        }
        raft.flush_outbox();
    }
    if let Some(reason) = &failure {
        tracing::error!(node = %raft.id, %reason, "the node cannot go on and stops");
        failure_tx.send_replace(Some(reason.clone()));
    }
    raft.shut_down(failure.clone());
    drop(raft);
    // Requests still queued were never taken: they definitely did nothing.
    requests.close();
    while let Ok(request) = requests.try_recv() {
        refuse(request, failure.as_deref());
    }
    // The writer ends when its channel closes; the apply task when its does.
    let _ = apply_task.await;
    let _ = tokio::task::spawn_blocking(move || writer_thread.join()).await;
}

impl RaftLoop {
    fn now(&self) -> u64 {
        self.start.elapsed().as_millis().min(u64::MAX as u128) as u64
    }

    fn receive(&mut self, now: u64, from: NodeId, message: Message) {
        self.core.handle_message(now, from, message);
        if self.core.leader() == Some(from) {
            self.last_leader_contact = Some(Instant::now());
        }
    }

    fn handle_requests(&mut self, first: Request, requests: &mut mpsc::Receiver<Request>) {
        let mut commands = Vec::new();
        let mut replies = Vec::new();
        let mut next = Some(first);
        while let Some(request) = next.take() {
            match request {
                Request::Propose { command, reply } => {
                    commands.push(command);
                    replies.push(reply);
                }
                other => {
                    // Keep order: proposals gathered so far go first.
                    self.propose(std::mem::take(&mut commands), std::mem::take(&mut replies));
                    self.handle_other(other);
                }
            }
            if commands.len() < self.max_batch {
                next = requests.try_recv().ok();
            }
        }
        self.propose(commands, replies);
    }

    fn propose(&mut self, commands: Vec<Bytes>, replies: Vec<Reply<(LogIndex, Bytes)>>) {
        if commands.is_empty() {
            return;
        }
        let term = self.core.current_term();
        match self.core.propose_batch(commands) {
            Ok(first) => {
                for (i, reply) in replies.into_iter().enumerate() {
                    let index = LogIndex(first.0 + i as u64);
                    self.proposals.insert(index, PendingProposal { term, reply });
                }
            }
            Err(error) => {
                for reply in replies {
                    let _ = reply.send(Err(error.clone().into()));
                }
            }
        }
    }

    fn handle_other(&mut self, request: Request) {
        match request {
            Request::Propose { .. } => {}
            Request::Read { mode, reply } => {
                let read_id = self.next_read_id;
                self.next_read_id += 1;
                let now = self.now();
                match self.core.read_index(now, read_id, mode) {
                    Ok(()) => {
                        self.reads.insert(read_id, reply);
                    }
                    Err(error) => {
                        let _ = reply.send(Err(error.into()));
                    }
                }
            }
            Request::Membership { change, reply } => {
                let term = self.core.current_term();
                match self.core.propose_membership(change) {
                    Ok(index) => {
                        self.proposals.insert(index, PendingProposal { term, reply });
                    }
                    Err(error) => {
                        let _ = reply.send(Err(error.into()));
                    }
                }
            }
            Request::Transfer { target, reply } => {
                let wait = self.config.election_timeout_min + self.config.election_timeout_max;
                let _ = reply.send(self.core.transfer_leadership(target).map(|()| wait).map_err(RaftError::from));
            }
            Request::Status { reply } => {
                let core = &self.core;
                let last = core.last_log_id();
                let _ = reply.send(Status {
                    id: self.id,
                    role: core.role(),
                    term: core.current_term(),
                    leader: core.leader(),
                    commit_index: core.commit_index(),
                    last_log_index: last.index,
                    last_log_term: last.term,
                    first_log_index: core.first_log_index(),
                    membership: core.membership().clone(),
                    membership_index: core.membership_index(),
                    voted_for: core.hard_state().voted_for,
                    snapshot: core.snapshot().map(|s| s.last_log_id),
                    last_contact: if core.is_leader() {
                        Some(Duration::ZERO)
                    } else {
                        self.last_leader_contact.map(|at| at.elapsed())
                    },
                });
            }
            Request::Snapshot { reply } => self.for_apply(ApplyWork::Snapshot { reply }),
            Request::Reload { reload, reply } => {
                let _ = reply.send(self.reload(&reload));
            }
        }
    }

    /// Carries out the core's actions until it has none left. An error is
    /// fatal: no further action runs, the node stops.
    fn process_actions(&mut self) -> Result<(), String> {
        loop {
            let actions: Vec<Action> = self.core.drain_actions().collect();
            if actions.is_empty() {
                return Ok(());
            }
            for action in actions {
                self.process_action(action)?;
            }
        }
    }

    fn process_action(&mut self, action: Action) -> Result<(), String> {
        match action {
            Action::Persist(request) => {
                let sink = match &request.snapshot {
                    Some(meta) => Some(self.take_received(meta, request.seq)?),
                    None => None,
                };
                if self.writer.send(WriterJob::Persist(request, sink)).is_err() {
                    return Err("the log writer is gone".to_string());
                }
            }
            Action::Send { to, message } => self.send(to, message),
            Action::Apply { entries } => self.apply(entries),
            Action::ReadReady { read_id, index } => {
                if let Some(reply) = self.reads.remove(&read_id) {
                    self.for_apply(ApplyWork::Read { index, reply });
                }
            }
            Action::ReadFailed { read_id, error } => {
                if let Some(reply) = self.reads.remove(&read_id) {
                    let _ = reply.send(Err(error.into()));
                }
            }
            Action::LeaderChanged { leader, term } => {
                tracing::info!(node = %self.id, leader = ?leader.map(|l| l.0), %term, "leader changed");
                if leader != Some(self.id) {
                    // Proposals not yet committed may or may not commit later;
                    // committed ones are answered when they apply.
                    let commit = self.core.commit_index();
                    let uncommitted = self.proposals.split_off(&commit.next());
                    for (_, proposal) in uncommitted {
                        let _ = proposal.reply.send(Err(RaftError::LeadershipLost));
                    }
                }
                self.leader.send_replace(LeaderInfo { leader, term });
            }
            Action::SendSnapshotChunk { to, term, meta, offset } => self.send_snapshot_chunk(to, term, meta, offset),
            Action::WriteSnapshotChunk { meta, offset, data, done } => {
                // The core accepted the chunk; a node that cannot keep it must stop.
                self.write_snapshot_chunk(meta, offset, data, done)?;
            }
            Action::RestoreSnapshot { meta } => match self.installing.as_mut() {
                Some(installing) if installing.meta == meta => installing.restore = true,
                _ => self.installing = Some(Installing { meta, seq: None, restore: true }),
            },
        }
        Ok(())
    }

    /// The received snapshot that `meta` installs, for the log writer to
    /// commit with the persist `seq`.
    fn take_received(&mut self, meta: &SnapshotMeta, seq: u64) -> Result<Box<dyn SnapshotSink>, String> {
        let id = meta.last_log_id;
        let received = self.received.take().filter(|received| received.id == id);
        let Some(received) = received else {
            return Err(format!("snapshot {id} is to be installed but was not received whole"));
        };
        match self.installing.as_mut() {
            Some(installing) if installing.meta == *meta => installing.seq = Some(seq),
            _ => self.installing = Some(Installing { meta: meta.clone(), seq: Some(seq), restore: false }),
        }
        Ok(received.sink)
    }

    /// Work for the apply task, in order, behind an install's restore.
    fn for_apply(&mut self, work: ApplyWork) {
        if self.installing.is_some() {
            self.held.push(work);
        } else {
            let _ = self.apply.send(work);
        }
    }

    /// The log writer finished every persist up to `seq`: an install stored
    /// by then is restored, and the work held behind it goes on.
    fn persisted(&mut self, seq: u64) {
        let stored = self.installing.as_ref().is_some_and(|i| i.seq.is_some_and(|at| at <= seq));
        if !stored {
            return;
        }
        if let Some(installing) = self.installing.take() {
            if installing.restore {
                let _ = self.apply.send(ApplyWork::Restore { meta: installing.meta });
            }
        }
        for work in std::mem::take(&mut self.held) {
            let _ = self.apply.send(work);
        }
    }

    fn send(&mut self, to: NodeId, message: Message) {
        if self.direct_sends {
            self.outbox.entry(to).or_default().push(message);
            return;
        }
        let sender = self.peers.entry(to).or_insert_with(|| {
            let (tx, rx) = mpsc::unbounded_channel();
            tokio::spawn(peer_sender(to, self.transport.clone(), rx));
            tx
        });
        if sender.send(message).is_err() {
            self.peers.remove(&to);
        }
    }

    /// Sends what this wake-up produced, one batch per peer, from this task.
    fn flush_outbox(&mut self) {
        let waker = std::task::Waker::noop();
        let mut context = std::task::Context::from_waker(waker);
        // Bounded batches: appends can be large (`max_bytes_per_append` each).
        const MAX_BATCH: usize = 32;
        for (to, mut messages) in std::mem::take(&mut self.outbox) {
            while messages.len() > MAX_BATCH {
                let rest = messages.split_off(MAX_BATCH);
                self.send_now(to, std::mem::replace(&mut messages, rest), &mut context);
            }
            self.send_now(to, messages, &mut context);
        }
    }

    fn send_now(&self, to: NodeId, messages: Vec<Message>, context: &mut std::task::Context<'_>) {
        let mut sending = self.transport.send(to, messages);
        match sending.as_mut().poll(context) {
            std::task::Poll::Ready(Ok(())) => {}
            std::task::Poll::Ready(Err(error)) => {
                tracing::debug!(peer = %to, %error, "send failed; raft will retry");
            }
            std::task::Poll::Pending => {
                tracing::warn!(peer = %to, "the transport's send did not complete at once; batch dropped");
            }
        }
    }

    fn apply(&mut self, entries: Vec<Entry>) {
        let mut replies = Vec::new();
        if let (Some(first), Some(last)) = (entries.first(), entries.last()) {
            let ours: Vec<LogIndex> = self.proposals.range(first.index..=last.index).map(|(i, _)| *i).collect();
            for index in ours {
                let Some(proposal) = self.proposals.remove(&index) else { continue };
                let offset = (index.0 - first.index.0) as usize;
                if entries.get(offset).is_some_and(|e| e.term == proposal.term) {
                    replies.push((index, proposal.reply));
                } else {
                    let _ = proposal.reply.send(Err(RaftError::Overwritten { index }));
                }
            }
        }
        self.for_apply(ApplyWork::Batch { entries, replies });
    }

    fn handle_event(&mut self, event: LoopEvent) -> Result<(), String> {
        match event {
            LoopEvent::SnapshotCaptured { index, source, waiters } => {
                let Some(meta) = self.core.snapshot_meta_for(index) else {
                    // The entries were compacted under it: a newer snapshot was installed.
                    let newest = self.core.snapshot().map_or(index, |s| s.last_log_id.index);
                    for waiter in waiters {
                        let _ = waiter.send(Err(RaftError::NothingNewToSnapshot { index: newest }));
                    }
                    let _ = self.apply.send(ApplyWork::SnapshotFinished { taken: None });
                    return Ok(());
                };
                let store = self.snapshots.clone();
                let events = self.events.clone();
                tokio::task::spawn_blocking(move || {
                    // A panicking state machine must not leave the snapshotter
                    // believing a snapshot is still being written.
                    let written = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                        write_snapshot(store.as_ref(), meta, source)
                    }));
                    let result = written.unwrap_or_else(|_| {
                        Err(StorageError::Poisoned { reason: format!("writing snapshot {index} panicked") })
                    });
                    let _ = events.send(LoopEvent::SnapshotWritten { index, result, waiters });
                });
            }
            LoopEvent::SnapshotWritten { index, result, waiters } => {
                let taken = result.as_ref().ok().map(|info| info.meta.last_log_id);
                let _ = self.apply.send(ApplyWork::SnapshotFinished { taken });
                let answer = match result {
                    Ok(info) => {
                        tracing::info!(node = %self.id, %index, id = info.id, bytes = info.size, "snapshot taken");
                        let id = info.meta.last_log_id;
                        match self.core.handle_snapshot_taken(info.meta) {
                            Ok(()) => {
                                let upto = LogIndex(index.0.saturating_sub(self.config.trailing_logs));
                                if upto > self.core.log_start().index && self.core.compact_log(upto).is_ok() {
                                    let _ = self.writer.send(WriterJob::Purge(upto));
                                }
                                Ok(id)
                            }
                            Err(error) => {
                                tracing::warn!(%error, "snapshot not usable");
                                Err(error.to_string())
                            }
                        }
                    }
                    Err(error) => {
                        tracing::warn!(%error, %index, "taking a snapshot failed; will retry");
                        Err(error.to_string())
                    }
                };
                for waiter in waiters {
                    let answer = answer.clone();
                    let _ =
                        waiter.send(answer.map_err(|e| RaftError::Config(format!("snapshot at {index} failed: {e}"))));
                }
            }
            LoopEvent::Outgoing { to, message } => self.send(to, message),
            LoopEvent::SnapshotChecked { serial, id, result } => {
                if self.received.as_ref().is_none_or(|r| r.serial != serial) {
                    return Ok(());
                }
                let sound = match result {
                    Ok(()) => true,
                    Err(reason) => {
                        tracing::error!(
                            node = %self.id, snapshot = %id, %reason,
                            "refusing a snapshot from the leader: its content is not sound; keeping the current state and log"
                        );
                        if let Some(received) = self.received.take() {
                            let _ = received.sink.cancel();
                        }
                        false
                    }
                };
                self.core.handle_snapshot_checked(id, sound);
            }
            LoopEvent::Fatal(reason) => return Err(reason),
        }
        Ok(())
    }

    /// Reads a chunk of the snapshot `meta` off the store (on a blocking thread)
    /// and sends it to `to`.
    fn send_snapshot_chunk(&mut self, to: NodeId, term: Term, meta: SnapshotMeta, offset: u64) {
        let store = self.snapshots.clone();
        let events = self.events.clone();
        let max = self.chunk_bytes;
        tokio::task::spawn_blocking(move || {
            let read = || -> Result<Message, StorageError> {
                let info = find_snapshot(store.as_ref(), meta.last_log_id)?;
                let data = store.read_chunk(&info.id, offset, max)?;
                let done = offset + data.len() as u64 >= info.size;
                Ok(Message::InstallSnapshot(InstallSnapshot { term, meta, offset, data, done }))
            };
            match read() {
                Ok(message) => {
                    let _ = events.send(LoopEvent::Outgoing { to, message });
                }
                // The leader resends when the follower stays silent.
                Err(error) => tracing::warn!(%error, peer = %to, "cannot read a snapshot chunk"),
            }
        });
    }

    /// Writes a chunk the core accepted into the store's sink (not committed)
    /// and feeds it to the state machine's check. When the last chunk is in,
    /// the check's verdict goes to the core (`handle_snapshot_checked`).
    fn write_snapshot_chunk(&mut self, meta: SnapshotMeta, offset: u64, data: Bytes, done: bool) -> Result<(), String> {
        use std::io::Write;
        let id = meta.last_log_id;
        if offset == 0 {
            for abandoned in [self.incoming.take(), self.received.take()].into_iter().flatten() {
                let _ = abandoned.sink.cancel();
            }
            let sink = self.snapshots.create(meta.clone()).map_err(|e| format!("cannot store snapshot {id}: {e}"))?;
            self.next_serial += 1;
            let serial = self.next_serial;
            let check = self.check.clone().map(|check| spawn_check(check, serial, id, self.events.clone()));
            self.incoming = Some(Incoming { serial, id, sink, check });
        }
        let Some(incoming) = self.incoming.as_mut() else {
            return Err(format!("snapshot {id} chunk at offset {offset} without a start"));
        };
        if incoming.id != id {
            return Err(format!("snapshot {id} chunk while receiving {}", incoming.id));
        }
        incoming.sink.write_all(&data).map_err(|e| format!("cannot store snapshot {id}: {e}"))?;
        if let Some(check) = &incoming.check {
            // A check that already ended (refused early) no longer reads.
            let _ = check.send(data);
        }
        if !done {
            return Ok(());
        }
        let Some(mut received) = self.incoming.take() else { return Ok(()) };
        match received.check.take() {
            // Closing the feed ends the check's input; its verdict comes as an event.
            Some(feed) => drop(feed),
            None => self.core.handle_snapshot_checked(id, true),
        }
        self.received = Some(received);
        Ok(())
    }

    /// `Raft::reload_config`: the core takes the timing, the apply task the
    /// snapshot policy, this loop the log retention.
    fn reload(&mut self, reload: &ReloadableConfig) -> Result<Config, RaftError> {
        let next = self.config.reloaded(reload).map_err(RaftError::Config)?;
        self.core.reload_config(next.core_config()).map_err(|e| RaftError::Config(e.reason.to_string()))?;
        let _ = self.apply.send(ApplyWork::Policy(SnapshotPolicy::of(&next)));
        tracing::info!(node = %self.id, ?reload, "configuration reloaded");
        self.config = next.clone();
        Ok(next)
    }

    fn shut_down(&mut self, failure: Option<String>) {
        let reason = failure.clone().unwrap_or_else(|| "shut down".to_string());
        // A proposal may be on followers already and commit under the next leader.
        for (_, proposal) in std::mem::take(&mut self.proposals) {
            let _ = proposal.reply.send(Err(RaftError::Stopped { reason: reason.clone() }));
        }
        for (_, reply) in std::mem::take(&mut self.reads) {
            let error = match &failure {
                Some(reason) => RaftError::Failed { reason: reason.clone() },
                None => RaftError::Shutdown,
            };
            let _ = reply.send(Err(error));
        }
        self.leader.send_replace(LeaderInfo { leader: None, term: self.core.current_term() });
    }
}

/// Runs the state machine's check of a snapshot arriving as `serial` on a
/// thread of its own, over the chunks sent into the returned feed; the verdict
/// comes back as `LoopEvent::SnapshotChecked` once the feed is closed (or the
/// check ends early).
fn spawn_check(
    check: SnapshotCheck,
    serial: u64,
    id: LogId,
    events: mpsc::UnboundedSender<LoopEvent>,
) -> std::sync::mpsc::Sender<Bytes> {
    let (feed, chunks) = std::sync::mpsc::channel();
    let verdicts = events.clone();
    let run = move || {
        let mut reader = ChunkReader { chunks, current: Bytes::new() };
        let checked = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| check(&mut reader)));
        let result = match checked {
            Ok(Ok(())) => Ok(()),
            Ok(Err(error)) => Err(error.to_string()),
            Err(_) => Err("the check panicked".to_string()),
        };
        let _ = events.send(LoopEvent::SnapshotChecked { serial, id, result });
    };
    if let Err(error) = std::thread::Builder::new().name(format!("raft-snapshot-check-{serial}")).spawn(run) {
        // Without its thread the check cannot run: refuse rather than trust.
        let result = Err(format!("cannot start the check: {error}"));
        let _ = verdicts.send(LoopEvent::SnapshotChecked { serial, id, result });
    }
    feed
}

/// The chunks of a snapshot as they arrive, as one `Read`; the end is when
/// the feed closes.
struct ChunkReader {
    chunks: std::sync::mpsc::Receiver<Bytes>,
    current: Bytes,
}

impl std::io::Read for ChunkReader {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        while self.current.is_empty() {
            match self.chunks.recv() {
                Ok(chunk) => self.current = chunk,
                Err(_) => return Ok(0),
            }
        }
        let n = buf.len().min(self.current.len());
        buf[..n].copy_from_slice(&self.current[..n]);
        bytes::Buf::advance(&mut self.current, n);
        Ok(n)
    }
}

/// Answers a request the raft loop never took, after it stopped.
fn refuse(request: Request, failure: Option<&str>) {
    let error = || match failure {
        Some(reason) => RaftError::Failed { reason: reason.to_string() },
        None => RaftError::Shutdown,
    };
    match request {
        Request::Propose { reply, .. } | Request::Membership { reply, .. } => drop(reply.send(Err(error()))),
        Request::Read { reply, .. } => drop(reply.send(Err(error()))),
        Request::Transfer { reply, .. } => drop(reply.send(Err(error()))),
        Request::Snapshot { reply } => drop(reply.send(Err(error()))),
        Request::Reload { reply, .. } => drop(reply.send(Err(error()))),
        // Status has no error to give: dropping it answers "not running".
        Request::Status { .. } => {}
    }
}

async fn peer_sender(to: NodeId, transport: Arc<dyn Transport>, mut queue: mpsc::UnboundedReceiver<Message>) {
    const MAX_BATCH: usize = 256;
    while let Some(first) = queue.recv().await {
        let mut batch = vec![first];
        while batch.len() < MAX_BATCH {
            match queue.try_recv() {
                Ok(message) => batch.push(message),
                Err(_) => break,
            }
        }
        if let Err(error) = transport.send(to, batch).await {
            tracing::debug!(peer = %to, %error, "send failed; raft will retry");
        }
    }
}

struct ApplyContext {
    events: mpsc::UnboundedSender<LoopEvent>,
    snapshots: Arc<dyn SnapshotStore>,
    policy: SnapshotPolicy,
    /// Index of the snapshot the state machine was restored from.
    start: LogIndex,
    /// Seeds the jitter of the snapshot interval.
    seed: u64,
}

/// The apply task's snapshot bookkeeping: when the last was taken, whether one
/// is being written, who waits for one.
struct Snapshotter {
    policy: SnapshotPolicy,
    /// Applied index at the last capture (or restore).
    last: LogIndex,
    /// Entry bytes applied since the last capture (or restore).
    bytes_since: u64,
    /// Index of the newest snapshot stored (or restored).
    covered: LogIndex,
    running: bool,
    /// No automatic snapshot before this (the jittered interval).
    not_before: tokio::time::Instant,
    waiters: Vec<Reply<LogId>>,
    rng: raft_core::rng::Rng,
    events: mpsc::UnboundedSender<LoopEvent>,
}

impl Snapshotter {
    fn schedule_next(&mut self) {
        let interval = self.policy.interval;
        let jitter_ms = self.rng.range(0, (interval.as_millis() / 4).min(u64::MAX as u128) as u64 + 1);
        self.not_before = tokio::time::Instant::now() + interval + Duration::from_millis(jitter_ms);
    }

    /// Whether the log grew enough for an automatic snapshot, and when it may
    /// be taken (`None`: now).
    fn automatic(&self, applied: LogIndex) -> Option<Option<tokio::time::Instant>> {
        if self.running || applied <= self.last {
            return None;
        }
        // The log since the last snapshot is held in memory: bound it by bytes,
        // whatever the entry count and the timer say.
        if self.bytes_since >= self.policy.log_bytes {
            return Some(None);
        }
        if applied.0 - self.last.0 < self.policy.threshold {
            return None;
        }
        if tokio::time::Instant::now() >= self.not_before {
            Some(None)
        } else {
            Some(Some(self.not_before))
        }
    }

    /// The state machine now holds an installed snapshot up to `index`.
    fn restored(&mut self, index: LogIndex) {
        self.last = index;
        self.bytes_since = 0;
        self.covered = index;
    }

    fn capture(&mut self, state_machine: &mut dyn StateMachine, applied: LogIndex) {
        self.running = true;
        self.last = applied;
        self.bytes_since = 0;
        let started = Instant::now();
        let source = state_machine.snapshot();
        // The capture runs on the apply path: report how long applies paused.
        tracing::info!(index = %applied, pause = ?started.elapsed(), "state machine captured for a snapshot");
        let waiters = std::mem::take(&mut self.waiters);
        let _ = self.events.send(LoopEvent::SnapshotCaptured { index: applied, source, waiters });
    }

    /// Takes a snapshot if one is due or wanted; returns when to look again.
    fn poll(&mut self, state_machine: &mut dyn StateMachine, applied: LogIndex) -> Option<tokio::time::Instant> {
        if self.running {
            return None;
        }
        if !self.waiters.is_empty() {
            if applied > self.last {
                self.capture(state_machine, applied);
            } else {
                for waiter in self.waiters.drain(..) {
                    let _ = waiter.send(Err(RaftError::NothingNewToSnapshot { index: self.last }));
                }
            }
            return None;
        }
        match self.automatic(applied) {
            Some(None) => {
                self.capture(state_machine, applied);
                None
            }
            Some(Some(at)) => Some(at),
            None => None,
        }
    }
}

pub(crate) fn write_snapshot(
    store: &dyn SnapshotStore,
    meta: SnapshotMeta,
    source: Box<dyn SnapshotSource>,
) -> Result<SnapshotInfo, StorageError> {
    let id = meta.last_log_id;
    let mut sink = store.create(meta)?;
    if let Err(e) = source.write_to(&mut sink) {
        let _ = sink.cancel();
        return Err(StorageError::io("write snapshot", id.to_string(), e));
    }
    sink.commit()
}

/// The stored snapshot that covers exactly up to `id`.
fn find_snapshot(store: &dyn SnapshotStore, id: LogId) -> Result<SnapshotInfo, StorageError> {
    store
        .list()?
        .into_iter()
        .find(|info| info.meta.last_log_id == id)
        .ok_or_else(|| StorageError::NotFound { what: format!("snapshot {id}") })
}

/// Restores the stored snapshot `meta` into the state machine.
fn restore(state_machine: &mut dyn StateMachine, store: &dyn SnapshotStore, meta: &SnapshotMeta) -> Result<(), String> {
    let id = meta.last_log_id;
    let info = find_snapshot(store, id).map_err(|e| format!("snapshot {id} to restore: {e}"))?;
    let (_, mut reader) = store.open(&info.id).map_err(|e| format!("opening snapshot {id}: {e}"))?;
    state_machine.restore(&mut reader).map_err(|e| format!("restoring snapshot {id}: {e}"))
}

async fn apply_loop(
    mut state_machine: Box<dyn StateMachine>,
    mut work: mpsc::UnboundedReceiver<ApplyWork>,
    applied_tx: watch::Sender<LogIndex>,
    context: ApplyContext,
) {
    let mut applied = context.start;
    let mut snapshots = Snapshotter {
        policy: context.policy,
        last: context.start,
        bytes_since: 0,
        covered: context.start,
        running: false,
        not_before: tokio::time::Instant::now(),
        waiters: Vec::new(),
        rng: raft_core::rng::Rng::new(context.seed ^ 0x5eed_5a95),
        events: context.events.clone(),
    };
    snapshots.schedule_next();
    applied_tx.send_replace(applied);

    let mut waiting: VecDeque<(LogIndex, Reply<LogIndex>)> = VecDeque::new();
    let mut wake_at: Option<tokio::time::Instant> = None;
    loop {
        let item = tokio::select! {
            item = work.recv() => match item {
                Some(item) => Some(item),
                None => break,
            },
            _ = sleep_until_some(wake_at) => None,
        };
        match item {
            None => {}
            Some(ApplyWork::Batch { entries, replies }) => {
                let Some(last) = entries.last().map(|e| e.index) else { continue };
                let first = entries[0].index;
                let responses = state_machine.apply(&entries);
                snapshots.bytes_since += entries.iter().map(|e| e.size_bytes() as u64).sum::<u64>();
                for (index, reply) in replies {
                    let response = responses.get((index.0 - first.0) as usize).cloned().unwrap_or_default();
                    let _ = reply.send(Ok((index, response)));
                }
                applied = last;
                applied_tx.send_replace(applied);
                // Reads are answered in index order as the state machine catches up.
                let mut still_waiting = VecDeque::new();
                for (index, reply) in waiting.drain(..) {
                    if index <= applied {
                        let _ = reply.send(Ok(index));
                    } else {
                        still_waiting.push_back((index, reply));
                    }
                }
                waiting = still_waiting;
            }
            Some(ApplyWork::Read { index, reply }) => {
                if index <= applied {
                    let _ = reply.send(Ok(index));
                } else {
                    waiting.push_back((index, reply));
                }
            }
            Some(ApplyWork::Restore { meta }) => {
                let store = context.snapshots.clone();
                if let Err(reason) = restore(state_machine.as_mut(), store.as_ref(), &meta) {
                    let _ = context.events.send(LoopEvent::Fatal(reason));
                    continue;
                }
                applied = meta.last_log_id.index;
                snapshots.restored(applied);
                applied_tx.send_replace(applied);
                let (ready, still): (VecDeque<_>, VecDeque<_>) = waiting.drain(..).partition(|(i, _)| *i <= applied);
                waiting = still;
                for (index, reply) in ready {
                    let _ = reply.send(Ok(index));
                }
            }
            Some(ApplyWork::SnapshotFinished { taken }) => {
                snapshots.running = false;
                snapshots.schedule_next();
                match taken {
                    Some(id) => snapshots.covered = snapshots.covered.max(id.index),
                    // Failed: the log since the last good snapshot still counts.
                    None => snapshots.last = snapshots.covered,
                }
                // Callers that asked while it was written get it if it covers their state.
                if let Some(id) = taken.filter(|id| id.index >= applied) {
                    for waiter in snapshots.waiters.drain(..) {
                        let _ = waiter.send(Ok(id));
                    }
                }
            }
            Some(ApplyWork::Snapshot { reply }) => snapshots.waiters.push(reply),
            Some(ApplyWork::Policy(policy)) => {
                let interval_changed = policy.interval != snapshots.policy.interval;
                snapshots.policy = policy;
                if interval_changed {
                    snapshots.schedule_next();
                }
            }
        }
        wake_at = snapshots.poll(state_machine.as_mut(), applied);
    }
}

/// Sleeps until `at`, or forever without one.
async fn sleep_until_some(at: Option<tokio::time::Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

/// The log writer thread: applies persist requests in order, merging runs of
/// plain appends into one write and one fsync.
fn log_writer(stores: Stores, jobs: std::sync::mpsc::Receiver<WriterJob>, events: mpsc::UnboundedSender<WriterEvent>) {
    while let Ok(first) = jobs.recv() {
        let mut batch = vec![first];
        while let Ok(next) = jobs.try_recv() {
            batch.push(next);
        }
        let mut persists = Vec::new();
        let mut last_seq = None;
        let mut result = Ok(());
        for job in batch {
            match job {
                WriterJob::Persist(request, sink) => {
                    last_seq = Some(request.seq);
                    persists.push((request, sink));
                }
                WriterJob::Purge(upto) => {
                    result = write_batch(&stores, std::mem::take(&mut persists))
                        .and_then(|()| stores.log.purge_prefix(upto));
                    if result.is_err() {
                        break;
                    }
                }
            }
        }
        if result.is_ok() {
            result = write_batch(&stores, persists);
        }
        let event = match (result, last_seq) {
            (Err(error), _) => WriterEvent::Failed(error),
            (Ok(()), Some(seq)) => WriterEvent::Persisted(seq),
            (Ok(()), None) => continue,
        };
        let failed = matches!(event, WriterEvent::Failed(_));
        if events.send(event).is_err() || failed {
            return;
        }
    }
}

fn write_batch(
    stores: &Stores,
    batch: Vec<(PersistRequest, Option<Box<dyn SnapshotSink>>)>,
) -> Result<(), StorageError> {
    let mut pending: Vec<Entry> = Vec::new();
    let mut hard_state = None;
    for (request, sink) in batch {
        if let Some(snapshot) = &request.snapshot {
            flush_entries(stores, &mut pending)?;
            install_received(stores, snapshot, sink)?;
        }
        if let Some(write) = request.log {
            let continues = match pending.last() {
                Some(last) => write.truncate_from == last.index.next(),
                None => write.truncate_from > stores.log.last_index()?,
            };
            if !continues {
                flush_entries(stores, &mut pending)?;
                if write.truncate_from <= stores.log.last_index()? {
                    stores.log.truncate_suffix(write.truncate_from)?;
                }
            }
            pending.extend(write.entries);
        }
        if let Some(state) = request.hard_state {
            hard_state = Some(state);
        }
    }
    flush_entries(stores, &mut pending)?;
    if let Some(state) = hard_state {
        stores.stable.set_hard_state(state)?;
    }
    Ok(())
}

/// Stores a snapshot received from the leader in place of the log it covers,
/// in an order that leaves a consistent state at every crash point:
/// 1. entries from the snapshot's index on that disagree with it go first (the
///    leader's log holds the snapshot's last entry, so they were never
///    committed); a crash now leaves the old snapshot and a shorter log;
/// 2. the snapshot is committed; a crash now leaves it with a log that ends
///    before it (start-up then empties the log) or continues it;
/// 3. the log up to the snapshot is purged.
///
/// A failure at any step stops the node before anything later runs.
fn install_received(
    stores: &Stores,
    meta: &SnapshotMeta,
    sink: Option<Box<dyn SnapshotSink>>,
) -> Result<(), StorageError> {
    let id = meta.last_log_id;
    let Some(sink) = sink else {
        return Err(StorageError::NotFound { what: format!("the received data of snapshot {id}") });
    };
    let log = &stores.log;
    if log.last_index()? >= id.index {
        let holds = log.get(id.index)?.is_some_and(|entry| entry.term == id.term);
        if !holds {
            let from = id.index.max(log.first_index()?);
            tracing::info!(snapshot = %id, %from, "cutting the log entries the installed snapshot replaces");
            log.truncate_suffix(from)?;
        }
    }
    sink.commit()?;
    log.purge_prefix(id.index)
}

fn flush_entries(stores: &Stores, pending: &mut Vec<Entry>) -> Result<(), StorageError> {
    if !pending.is_empty() {
        stores.log.append(pending)?;
        pending.clear();
    }
    Ok(())
}

/// How long `Raft::shutdown` waits for the tasks to finish.
pub(crate) const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);

#[cfg(test)]
mod tests {
    use super::*;
    use crate::storage::{MemLogStore, MemSnapshotStore, MemStableStore};
    use raft_core::EntryPayload;

    fn entry(index: u64, term: u64) -> Entry {
        Entry { index: LogIndex(index), term: Term(term), payload: EntryPayload::Command(Bytes::from("x")) }
    }

    /// A sink whose commit fails, as on a full or failing disk.
    struct FailingSink;

    impl std::io::Write for FailingSink {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    impl SnapshotSink for FailingSink {
        fn id(&self) -> &str {
            "failing"
        }
        fn commit(self: Box<Self>) -> Result<SnapshotInfo, StorageError> {
            Err(StorageError::io("commit", "snapshot", std::io::Error::other("no space left on device")))
        }
        fn cancel(self: Box<Self>) -> Result<(), StorageError> {
            Ok(())
        }
    }

    /// Entries 1..=5 of term 1 and 6..=10 of term 2, then a snapshot (8, 3)
    /// from a leader that disagrees with entries 6..=10.
    fn divergent() -> (Stores, SnapshotMeta) {
        let log = MemLogStore::new();
        let entries: Vec<Entry> = (1..=10).map(|i| entry(i, if i <= 5 { 1 } else { 2 })).collect();
        log.append(&entries).unwrap();
        let stores = Stores {
            log: Arc::new(log),
            stable: Arc::new(MemStableStore::new()),
            snapshots: Arc::new(MemSnapshotStore::new(2)),
        };
        let meta = SnapshotMeta { last_log_id: LogId::new(Term(3), LogIndex(8)), config: Configuration::default() };
        (stores, meta)
    }

    /// A crash (here: a failed commit, after which nothing runs) between the
    /// steps of an install never leaves the disagreeing entries behind a
    /// stored snapshot, and never purges entries before one is stored.
    #[test]
    fn an_install_cuts_the_disagreeing_suffix_before_storing_and_purges_after() {
        let (stores, meta) = divergent();
        let failed = install_received(&stores, &meta, Some(Box::new(FailingSink)));
        assert!(failed.is_err());
        assert!(stores.snapshots.list().unwrap().is_empty());
        assert_eq!(stores.log.first_index().unwrap(), LogIndex(1), "nothing purged behind an unstored snapshot");
        assert_eq!(stores.log.last_index().unwrap(), LogIndex(7), "entries from the snapshot's index on are cut");

        let (stores, meta) = divergent();
        let sink = stores.snapshots.create(meta.clone()).unwrap();
        install_received(&stores, &meta, Some(sink)).unwrap();
        assert_eq!(stores.snapshots.list().unwrap()[0].meta, meta);
        assert_eq!(stores.log.first_index().unwrap(), LogIndex(9));
        assert_eq!(stores.log.last_index().unwrap(), LogIndex(8));
    }

    /// A log that holds the snapshot's last entry keeps what follows it
    /// (figure 13, step 6).
    #[test]
    fn an_install_keeps_a_log_that_continues_the_snapshot() {
        let (stores, _) = divergent();
        let meta = SnapshotMeta { last_log_id: LogId::new(Term(2), LogIndex(8)), config: Configuration::default() };
        let sink = stores.snapshots.create(meta.clone()).unwrap();
        install_received(&stores, &meta, Some(sink)).unwrap();
        assert_eq!(stores.log.first_index().unwrap(), LogIndex(9));
        assert_eq!(stores.log.last_index().unwrap(), LogIndex(10));
    }
}
