//! The raft loop: one tokio task that owns the `Driver` and with it the
//! `Core`, and carries out the driver's effects after each wake-up (see the
//! module doc of `runtime` for the rooms around it). `run` starts the rooms
//! of one node and returns when the loop has stopped. Observers
//! (`crate::observe`) are offered what happens with `try_send` only: the
//! loop never waits for one.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use raftkv_core::{Core, LogIndex, Message, NodeId, Role};
use raftkv_driver::{Applier, ApplyJob, Driver, Effect, Failure, LeaderInfo};
use tokio::sync::{mpsc, watch};

use crate::config::{Config, ReloadableConfig};
use crate::error::RaftError;
use crate::observe::{Observation, ObserverChange, Observers};
use crate::runtime::apply;
use crate::runtime::events::{millis_since, LoopEvent, Pending, Request};
use crate::runtime::snapshots;
use crate::runtime::writer::{self, Stores, WriterEvent, WriterJob};
use crate::state_machine::{SnapshotCheck, SnapshotSource, StateMachine};
use crate::storage::{SnapshotSink, SnapshotStore};
use crate::transport::Transport;

/// How long `Raft::shutdown` waits for the tasks to finish.
pub(crate) const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);

pub(crate) struct Channels {
    pub requests: mpsc::Receiver<Request>,
    pub inbox: mpsc::Receiver<(NodeId, Message)>,
    pub shutdown: watch::Receiver<bool>,
    pub leader: watch::Sender<LeaderInfo>,
    pub applied: watch::Sender<LogIndex>,
    /// Set once, with the reason, when the node stops because it cannot go on.
    pub failure: watch::Sender<Option<String>>,
    /// Observers registered and dropped (`Raft::observe`).
    pub observers: mpsc::UnboundedReceiver<ObserverChange>,
}

/// A snapshot being received from the leader: its uncommitted sink, and the
/// feed of its check while the check reads.
struct Receiving {
    sink: Box<dyn SnapshotSink>,
    check: Option<std::sync::mpsc::Sender<Bytes>>,
}

struct RaftLoop {
    driver: Driver<Pending>,
    id: NodeId,
    start: Instant,
    transport: Arc<dyn Transport>,
    direct_sends: bool,
    peers: BTreeMap<NodeId, mpsc::UnboundedSender<Message>>,
    writer: Writer,
    apply: mpsc::UnboundedSender<ApplyJob<Pending>>,
    events: mpsc::UnboundedSender<LoopEvent>,
    snapshots: Arc<dyn SnapshotStore>,
    check: Option<SnapshotCheck>,
    receiving: BTreeMap<u64, Receiving>,
    captures: BTreeMap<LogIndex, Box<dyn SnapshotSource>>,
    /// The settings in force (`reload_config` changes some).
    config: Config,
    leader: watch::Sender<LeaderInfo>,
    /// Delivered to with `try_send` only: an observer never holds up the loop.
    observers: Observers,
    /// What `measure` compares with and times (see `crate::metrics`).
    measured: Measured,
}

/// Where store jobs run.
enum Writer {
    /// On the log writer's thread, which reports back through `WriterEvent`s.
    Thread(std::sync::mpsc::Sender<WriterJob>),
    /// Here, at once: every store is in memory (`LogStore::in_memory`).
    /// `persisted` is the highest sequence written and not yet reported to
    /// the driver.
    Inline { stores: Stores, persisted: Option<u64> },
}

/// The raft loop's measurements between wake-ups.
struct Measured {
    role: Role,
    /// On the leader: the last index of each batch of proposals and when
    /// it arrived, oldest first, until committed.
    proposed: std::collections::VecDeque<(LogIndex, Instant)>,
}

/// Batches of proposals timed at once, at most (older ones are dropped
/// untimed: a leader that cannot commit has other signs).
const MAX_TIMED_BATCHES: usize = 4096;

/// What a node runs on.
pub(crate) struct Node {
    pub core: Core,
    pub stores: Stores,
    pub state_machine: Box<dyn StateMachine>,
    pub transport: Arc<dyn Transport>,
}

/// Starts the rooms of one node; returns when the raft loop has stopped.
/// `seed` differs between runs of the node (read ids must never repeat).
pub(crate) async fn run(node: Node, config: &Config, channels: Channels, start: Instant, seed: u64) {
    let Node { core, stores, state_machine, transport } = node;
    let Channels { mut requests, mut inbox, mut shutdown, leader, applied, failure: failure_tx, mut observers } =
        channels;
    let check = state_machine.snapshot_check();
    let snapshots = stores.snapshots.clone();
    let (events_tx, mut events) = mpsc::unbounded_channel();
    let snapshot_index = core.snapshot().map_or(LogIndex::ZERO, |s| s.last_log_id.index);
    let (writer_events_tx, mut writer_events) = mpsc::unbounded_channel();
    let inline = stores.log.in_memory() && stores.stable.in_memory() && stores.snapshots.in_memory();
    let (writer, writer_thread) = if inline {
        (Writer::Inline { stores, persisted: None }, None)
    } else {
        let (writer, writer_rx) = std::sync::mpsc::channel();
        let writer_thread = std::thread::Builder::new()
            .name(format!("raft-log-writer-{}", config.id))
            .spawn(move || writer::log_writer(stores, writer_rx, writer_events_tx));
        match writer_thread {
            Ok(handle) => (Writer::Thread(writer), Some(handle)),
            Err(error) => {
                let reason = format!("cannot start the log writer thread: {error}");
                tracing::error!(%reason, "the node stops");
                failure_tx.send_replace(Some(reason));
                return;
            }
        }
    };
    let (apply_tx, apply_rx) = mpsc::unbounded_channel();
    let apply_task = apply::ApplyTask {
        state_machine,
        applier: Applier::new(snapshot_index, config.snapshot_policy(), config.id.0, millis_since(start)),
        applied,
        events: events_tx.clone(),
        snapshots: snapshots.clone(),
        start,
        restores: super::restore::Restores::new(config.max_restore_bytes),
        check: check.clone(),
    };
    let apply_task = tokio::spawn(apply_task.run(apply_rx));

    let mut raft = RaftLoop {
        driver: Driver::new(core, config.driver_config(check.is_some(), seed.rotate_left(29) ^ 0x9e37_79b9_7f4a_7c15)),
        id: config.id,
        start,
        direct_sends: transport.queues_without_waiting(),
        transport,
        peers: BTreeMap::new(),
        writer,
        apply: apply_tx,
        events: events_tx,
        snapshots,
        check,
        receiving: BTreeMap::new(),
        captures: BTreeMap::new(),
        config: config.clone(),
        leader,
        observers: Observers::default(),
        measured: Measured { role: Role::Follower, proposed: std::collections::VecDeque::new() },
    };
    let max_batch = config.max_batch.max(1);
    let mut ticker = tokio::time::interval(config.tick_interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    loop {
        tokio::select! {
            biased;
            _ = shutdown.changed() => break,
            // Observers registered (`Raft::observe`) or dropped.
            Some(change) = observers.recv() => {
                raft.observers.change(change);
                while let Ok(change) = observers.try_recv() {
                    raft.observers.change(change);
                }
                raft.driver.set_observing(!raft.observers.is_empty());
            }
            event = writer_events.recv(), if !inline => match event {
                Some(WriterEvent::Persisted(seq)) => {
                    let mut seq = seq;
                    let mut failed = None;
                    while let Ok(event) = writer_events.try_recv() {
                        match event {
                            WriterEvent::Persisted(next) => seq = seq.max(next),
                            WriterEvent::Failed(error) => {
                                failed = Some(error);
                                break;
                            }
                        }
                    }
                    raft.driver.persisted(seq);
                    if let Some(error) = failed {
                        raft.driver.fail(format!("storage failed: {error}"));
                    }
                }
                // A node that cannot persist must stop: continuing could
                // acknowledge what the disk lost.
                Some(WriterEvent::Failed(error)) => raft.driver.fail(format!("storage failed: {error}")),
                None => raft.driver.fail("the log writer stopped".to_string()),
            },
            event = events.recv() => match event {
                Some(event) => raft.handle_event(event),
                None => break,
            },
            message = inbox.recv() => {
                let Some((from, message)) = message else { break };
                let now = raft.now();
                raft.driver.receive(now, from, message);
                for _ in 0..1024 {
                    let Ok((from, message)) = inbox.try_recv() else { break };
                    raft.driver.receive(now, from, message);
                }
            }
            request = requests.recv() => {
                let Some(request) = request else { break };
                raft.handle_requests(request, &mut requests, max_batch);
            }
            _ = ticker.tick() => {
                let now = raft.now();
                raft.driver.tick(now);
            }
        }
        raft.carry_out();
        raft.measure();
        if raft.driver.failure().is_some() {
            break;
        }
    }
    let failure = raft.driver.failure().map(str::to_string);
    if let Some(reason) = &failure {
        tracing::error!(node = %raft.id, %reason, "the node cannot go on and stops");
        failure_tx.send_replace(Some(reason.clone()));
    }
    for effect in raft.driver.stop() {
        raft.execute(effect);
    }
    drop(raft);
    // Requests still queued were never taken: they definitely did nothing.
    requests.close();
    while let Ok(request) = requests.try_recv() {
        refuse(request, failure.as_deref());
    }
    // The writer ends when its channel closes; the apply task when its does.
    let _ = apply_task.await;
    if let Some(writer_thread) = writer_thread {
        let _ = tokio::task::spawn_blocking(move || writer_thread.join()).await;
    }
}

impl RaftLoop {
    fn now(&self) -> u64 {
        millis_since(self.start)
    }

    fn handle_requests(&mut self, first: Request, requests: &mut mpsc::Receiver<Request>, max_batch: usize) {
        let before = self.driver.core().last_log_id().index;
        self.take_requests(first, requests, max_batch);
        let core = self.driver.core();
        let last = core.last_log_id().index;
        if core.is_leader() && last > before {
            let proposed = &mut self.measured.proposed;
            if proposed.len() == MAX_TIMED_BATCHES {
                proposed.pop_front();
            }
            proposed.push_back((last, Instant::now()));
        }
    }

    /// Counts elections and times commits (`crate::metrics`), after each
    /// wake-up: a role compared, and a clock read only while proposals wait.
    fn measure(&mut self) {
        let core = self.driver.core();
        let role = core.role();
        if role != self.measured.role {
            if role == Role::Candidate {
                metrics::counter!(crate::metrics::ELECTIONS).increment(1);
            }
            if role != Role::Leader {
                self.measured.proposed.clear();
            }
            self.measured.role = role;
        }
        let commit = core.commit_index();
        if self.measured.proposed.front().is_some_and(|(index, _)| *index <= commit) {
            let now = Instant::now();
            while let Some(&(index, at)) = self.measured.proposed.front() {
                if index > commit {
                    break;
                }
                metrics::histogram!(crate::metrics::COMMIT_SECONDS).record(now - at);
                self.measured.proposed.pop_front();
            }
        }
    }

    fn take_requests(&mut self, first: Request, requests: &mut mpsc::Receiver<Request>, max_batch: usize) {
        let mut commands = Vec::new();
        let mut replies = Vec::new();
        let mut next = Some(first);
        while let Some(request) = next.take() {
            match request {
                Request::Propose { command, reply } => {
                    commands.push(command);
                    replies.push(Pending::Write(reply));
                }
                other => {
                    // Keep order: proposals gathered so far go first.
                    self.driver.propose(std::mem::take(&mut commands), std::mem::take(&mut replies));
                    self.handle_other(other);
                }
            }
            if commands.len() < max_batch {
                next = requests.try_recv().ok();
            }
        }
        self.driver.propose(commands, replies);
    }

    fn handle_other(&mut self, request: Request) {
        let now = self.now();
        match request {
            Request::Propose { command, reply } => self.driver.propose(vec![command], vec![Pending::Write(reply)]),
            Request::Restore { step, reply } => self.driver.propose_restore(step, Pending::Write(reply)),
            Request::Read { mode, reply } => self.driver.read(now, mode, Pending::Read(reply)),
            Request::Membership { change, prev_index, reply } => {
                self.driver.change_membership(change, prev_index, Pending::Write(reply))
            }
            Request::AddVoter { id, prev_index, timeout_ms, reply } => {
                self.driver.add_voter(now, id, prev_index, timeout_ms, Pending::Write(reply))
            }
            Request::Transfer { target, reply } => self.driver.transfer_leadership(target, Pending::Transfer(reply)),
            Request::Snapshot { reply } => self.driver.request_snapshot(Pending::Snapshot(reply)),
            Request::Status { reply } => drop(reply.send(self.driver.status(now))),
            Request::Reload { reload, reply } => {
                let _ = reply.send(self.reload(&reload));
            }
        }
    }

    /// `Raft::reload_config`: the core takes the timing, the apply side the
    /// snapshot policy, the driver the log retention.
    fn reload(&mut self, reload: &ReloadableConfig) -> Result<Config, RaftError> {
        let next = self.config.reloaded(reload).map_err(RaftError::Config)?;
        self.driver
            .reload(next.core_config(), next.trailing_logs, next.snapshot_policy(), next.transfer_wait_ms())
            .map_err(RaftError::Config)?;
        tracing::info!(node = %self.id, ?reload, "configuration reloaded");
        self.config = next.clone();
        Ok(next)
    }

    fn handle_event(&mut self, event: LoopEvent) {
        match event {
            LoopEvent::SnapshotCaptured { index, source, waiters } => {
                self.captures.insert(index, source);
                self.driver.snapshot_captured(index, waiters);
            }
            LoopEvent::SnapshotWritten { index, result } => {
                match &result {
                    Ok(meta) => tracing::info!(node = %self.id, snapshot = %meta.last_log_id, "snapshot taken"),
                    Err(error) => {
                        tracing::warn!(node = %self.id, %index, %error, "taking a snapshot failed; will retry")
                    }
                }
                self.driver.snapshot_written(index, result);
            }
            LoopEvent::ChunkRead { to, message } => self.driver.chunk_read(to, message),
            LoopEvent::SnapshotChecked { serial, result } => self.driver.snapshot_checked(serial, result),
            LoopEvent::Fatal(reason) => self.driver.fail(reason),
        }
    }

    /// Carries out what the driver decided in this wake-up. Once the node
    /// failed only answers go out: nothing more is stored, sent or applied.
    /// Store jobs run here (`Writer::Inline`) are reported as persisted at
    /// once, and what that releases is carried out in the same wake-up.
    fn carry_out(&mut self) {
        loop {
            let effects: Vec<Effect<Pending>> = self.driver.effects().collect();
            for effect in effects {
                if self.driver.failure().is_some() && !effect.answers() {
                    continue;
                }
                self.execute(effect);
            }
            let persisted = match &mut self.writer {
                Writer::Inline { persisted, .. } => persisted.take(),
                Writer::Thread(_) => None,
            };
            match persisted {
                Some(seq) if self.driver.failure().is_none() => self.driver.persisted(seq),
                _ => return,
            }
        }
    }

    fn execute(&mut self, effect: Effect<Pending>) {
        match effect {
            Effect::Store(job) => {
                let mut sinks = Vec::new();
                for step in &job.steps {
                    if let raftkv_driver::StoreStep::CommitReceived { serial } = step {
                        match self.receiving.remove(serial) {
                            Some(received) => sinks.push((*serial, received.sink)),
                            None => return self.driver.fail(format!("received snapshot {serial} is gone")),
                        }
                    }
                }
                match &mut self.writer {
                    Writer::Thread(writer) => {
                        if writer.send(WriterJob { job, sinks }).is_err() {
                            self.driver.fail("the log writer is gone".to_string());
                        }
                    }
                    Writer::Inline { stores, persisted } => {
                        let mut sinks = sinks.into_iter().collect();
                        let (steps, seq) = raftkv_driver::StoreJob::merge(vec![job]);
                        match writer::write(stores, steps, &mut sinks) {
                            Ok(()) => *persisted = seq.max(*persisted),
                            Err(error) => self.driver.fail(format!("storage failed: {error}")),
                        }
                    }
                }
            }
            Effect::Send { to, messages } => self.send(to, messages),
            Effect::Apply(job) => {
                let _ = self.apply.send(job);
            }
            Effect::Fail { reply, failure } => reply.fail(failure),
            Effect::TransferStarted { reply, wait_ms } => reply.transfer_started(Some(Duration::from_millis(wait_ms))),
            Effect::AlreadyLeads { reply } => reply.transfer_started(None),
            Effect::AlreadyDone { reply, index } => reply.applied(index, Bytes::new()),
            Effect::SnapshotTaken { reply, id } => reply.snapshot_taken(id),
            Effect::LeaderChanged(info) => {
                tracing::info!(node = %self.id, leader = ?info.leader.map(|l| l.0), term = %info.term, "leader changed");
                metrics::counter!(crate::metrics::LEADER_CHANGES).increment(1);
                self.leader.send_replace(info);
                if !self.observers.is_empty() {
                    self.observe(Observation::leader_changed(info));
                }
            }
            Effect::ReadChunk { to, term, meta, offset } => {
                let (store, events) = (self.snapshots.clone(), self.events.clone());
                let max = self.config.snapshot_chunk_bytes.max(1);
                tokio::task::spawn_blocking(move || {
                    match snapshots::read_chunk(store.as_ref(), term, meta, offset, max) {
                        Ok(message) => drop(events.send(LoopEvent::ChunkRead { to, message })),
                        // The leader resends when the follower stays silent.
                        Err(error) => tracing::warn!(%error, peer = %to, "cannot read a snapshot chunk"),
                    }
                });
            }
            Effect::ReceiveStart { serial, meta } => {
                let id = meta.last_log_id;
                match self.snapshots.create(meta) {
                    Ok(sink) => {
                        let check = self
                            .check
                            .clone()
                            .map(|check| snapshots::spawn_check(check, self.id, serial, self.events.clone()));
                        self.receiving.insert(serial, Receiving { sink, check });
                    }
                    // The core accepted the chunk; a node that cannot keep it must stop.
                    Err(error) => self.driver.fail(format!("cannot store snapshot {id}: {error}")),
                }
            }
            Effect::ReceiveChunk { serial, data, done } => {
                use std::io::Write;
                let Some(receiving) = self.receiving.get_mut(&serial) else {
                    return self.driver.fail(format!("received snapshot {serial} is gone"));
                };
                if let Err(error) = receiving.sink.write_all(&data) {
                    return self.driver.fail(format!("cannot store received snapshot {serial}: {error}"));
                }
                if let Some(check) = &receiving.check {
                    // A check that already ended (refused early) no longer reads.
                    let _ = check.send(data);
                }
                if done {
                    // Closing the feed ends the check's input; its verdict comes as an event.
                    receiving.check = None;
                }
            }
            Effect::DiscardReceived { serial, refused } => {
                if let Some(refused) = refused {
                    tracing::error!(
                        node = %self.id, %refused,
                        "refusing a snapshot from the leader: its content is not sound; keeping the current state and log"
                    );
                }
                if let Some(received) = self.receiving.remove(&serial) {
                    let _ = received.sink.cancel();
                }
            }
            Effect::WriteSnapshot { index, meta } => {
                let Some(source) = self.captures.remove(&index) else {
                    return self.driver.snapshot_written(index, Err(format!("no capture at {index}")));
                };
                let (store, events) = (self.snapshots.clone(), self.events.clone());
                tokio::task::spawn_blocking(move || {
                    // A panicking state machine must not leave the apply side
                    // believing a snapshot is still being written.
                    let written = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                        snapshots::write_snapshot(store.as_ref(), meta, source)
                    }));
                    let result = match written {
                        Ok(Ok(info)) => Ok(info.meta),
                        Ok(Err(error)) => Err(error.to_string()),
                        Err(_) => Err(format!("writing snapshot {index} panicked")),
                    };
                    let _ = events.send(LoopEvent::SnapshotWritten { index, result });
                });
            }
            Effect::DropCapture { index } => {
                self.captures.remove(&index);
            }
            Effect::Observed(observed) => self.observe(Observation::from_driver(observed, self.start)),
        }
    }

    /// Offers `observation` to the observers; once the last one has left
    /// (dropped, or its filter panicked) the driver stops observing.
    fn observe(&mut self, observation: Observation) {
        self.observers.deliver(&observation);
        if self.observers.is_empty() {
            self.driver.set_observing(false);
        }
    }

    fn send(&mut self, to: NodeId, messages: Vec<Message>) {
        if self.direct_sends {
            // Bounded batches: appends can be large (`max_bytes_per_append` each).
            const MAX_BATCH: usize = 32;
            let mut messages = messages;
            while messages.len() > MAX_BATCH {
                let rest = messages.split_off(MAX_BATCH);
                self.send_now(to, std::mem::replace(&mut messages, rest));
            }
            return self.send_now(to, messages);
        }
        let sender = self.peers.entry(to).or_insert_with(|| {
            let (tx, rx) = mpsc::unbounded_channel();
            tokio::spawn(peer_sender(to, self.transport.clone(), rx));
            tx
        });
        for message in messages {
            if sender.send(message).is_err() {
                self.peers.remove(&to);
                return;
            }
        }
    }

    /// Sends from this task: the transport only queues, so its future is
    /// ready at once.
    fn send_now(&self, to: NodeId, messages: Vec<Message>) {
        let mut context = std::task::Context::from_waker(std::task::Waker::noop());
        let mut sending = self.transport.send(to, messages);
        match sending.as_mut().poll(&mut context) {
            std::task::Poll::Ready(Ok(())) => {}
            std::task::Poll::Ready(Err(error)) => tracing::debug!(peer = %to, %error, "send failed; raft will retry"),
            std::task::Poll::Pending => {
                tracing::warn!(peer = %to, "the transport's send did not complete at once; batch dropped");
            }
        }
    }
}

/// Answers a request the raft loop never took, after it stopped.
fn refuse(request: Request, failure: Option<&str>) {
    let failure = Failure::not_done(failure);
    match request {
        Request::Propose { reply, .. }
        | Request::Restore { reply, .. }
        | Request::Membership { reply, .. }
        | Request::AddVoter { reply, .. } => Pending::Write(reply).fail(failure),
        Request::Read { reply, .. } => Pending::Read(reply).fail(failure),
        Request::Transfer { reply, .. } => Pending::Transfer(reply).fail(failure),
        Request::Snapshot { reply } => Pending::Snapshot(reply).fail(failure),
        Request::Reload { reply, .. } => drop(reply.send(Err(RaftError::from(failure)))),
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
