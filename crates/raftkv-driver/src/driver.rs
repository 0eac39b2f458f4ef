//! The raft loop's decisions: what the core's actions become, in which order.

use std::collections::BTreeMap;

use bytes::Bytes;
use raftkv_core::{
    Action, Configuration, Core, CoreConfig, Entry, HardState, LogId, LogIndex, LogWrite, MembershipChange, Message,
    Millis, NodeId, PersistRequest, ProposeError, ReadId, ReadMode, RestoreStep, Role, SnapshotMeta, Term,
};

use crate::apply::SnapshotPolicy;
use crate::failure::Failure;
use crate::observe::{Observed, Watch};
use crate::staged::{Answer, Removal, StagedAdds};

/// Settings of the driver itself (the core has its own).
#[derive(Clone, Debug)]
pub struct DriverConfig {
    /// Entries kept behind a snapshot the node took, for followers slightly behind.
    pub trailing_logs: u64,
    /// Whether received snapshots are checked by the state machine (the executor
    /// reports each verdict with `snapshot_checked`) or accepted as they are.
    pub check_snapshots: bool,
    /// How long a caller waits for a leadership transfer to complete.
    pub transfer_wait_ms: Millis,
    /// Random bits that start this run's read ids. A read id must never repeat
    /// across restarts: a leader's late answer to a read of the previous run
    /// would otherwise answer a new read with an older index (a stale read).
    pub read_id_seed: u64,
}

/// One step of durable work, run in order by the log writer. A step that
/// returns has made its change durable.
#[derive(Clone, Debug, PartialEq)]
pub enum StoreStep {
    /// Remove the entries from `at.index` on unless the log holds `at` itself:
    /// they disagree with a snapshot being installed and were never committed
    /// past it (the leader's log holds `at`).
    CutDisagreeing(LogId),
    /// Commit the snapshot received as `serial`: durable and listed after this.
    CommitReceived {
        /// The serial the driver gave the received snapshot (`Effect::ReceiveStart`).
        serial: u64,
    },
    /// Remove the entries up to `upto` (which may lie past the last entry).
    Purge(LogIndex),
    /// Remove the entries from `write.truncate_from` on (if any), then append
    /// `write.entries`.
    Write(LogWrite),
    /// Store the term and vote, replacing the previous ones.
    HardState(HardState),
}

/// Steps the log writer runs in order; once they are all durable it reports
/// `persisted(seq)` (jobs without a sequence report nothing).
#[derive(Clone, Debug, PartialEq)]
pub struct StoreJob {
    /// The core's persist sequence number to report once the steps are
    /// durable; `None` for the driver's own work (a purge after a snapshot).
    pub seq: Option<u64>,
    /// The steps, to run in order.
    pub steps: Vec<StoreStep>,
}

impl StoreJob {
    /// The steps that make a persist request durable. A received snapshot is
    /// stored in an order that leaves a consistent state at every crash point:
    /// the disagreeing suffix goes first (a crash leaves the old snapshot and
    /// a shorter log), then the snapshot is committed (a crash leaves it with
    /// a log that ends before it or continues it, which start-up repairs),
    /// then the log before it is purged.
    pub fn of(request: PersistRequest, received: Option<u64>) -> StoreJob {
        let mut steps = Vec::new();
        if let (Some(meta), Some(serial)) = (&request.snapshot, received) {
            let id = meta.last_log_id;
            if !keeps_conflicting_suffix() {
                steps.push(StoreStep::CutDisagreeing(id));
            }
            steps.push(StoreStep::CommitReceived { serial });
            steps.push(StoreStep::Purge(id.index));
        }
        if let Some(write) = request.log {
            let emptied = request.snapshot.is_some() && write.entries.is_empty();
            if !(emptied && keeps_conflicting_suffix()) {
                steps.push(StoreStep::Write(write));
            }
        }
        if let Some(state) = request.hard_state {
            steps.push(StoreStep::HardState(state));
        }
        StoreJob { seq: Some(request.seq), steps }
    }

    /// Merges jobs queued together into as few steps as keep their meaning:
    /// writes that continue each other become one append, and hard states
    /// written before the next step that needs them collapse into the last
    /// one. Returns the steps and the highest sequence covered.
    pub fn merge(jobs: Vec<StoreJob>) -> (Vec<StoreStep>, Option<u64>) {
        let mut steps: Vec<StoreStep> = Vec::new();
        let mut hard_state = None;
        let mut seq = None;
        for job in jobs {
            seq = job.seq.or(seq);
            for step in job.steps {
                match step {
                    StoreStep::HardState(state) => hard_state = Some(state),
                    StoreStep::Write(write) => {
                        if let Some(StoreStep::Write(last)) = steps.last_mut() {
                            let end = last.entries.last().map_or(last.truncate_from, |e| e.index.next());
                            if write.truncate_from == end {
                                last.entries.extend(write.entries);
                                continue;
                            }
                        }
                        steps.push(StoreStep::Write(write));
                    }
                    other => {
                        // A snapshot step must not overtake a hard state queued before it.
                        if let Some(state) = hard_state.take() {
                            steps.push(StoreStep::HardState(state));
                        }
                        steps.push(other);
                    }
                }
            }
        }
        if let Some(state) = hard_state {
            steps.push(StoreStep::HardState(state));
        }
        (steps, seq)
    }
}

/// Work for the apply side, in order.
#[derive(Debug)]
pub enum ApplyJob<R> {
    /// Apply these entries; answer the proposals among them with the state
    /// machine's responses.
    Batch {
        /// Committed entries, contiguous, just after those already applied.
        entries: Vec<Entry>,
        /// The callers to answer, each with the state machine's response for
        /// the entry at its index: their proposals, or the promotion that
        /// answers an `add_voter`.
        replies: Vec<(LogIndex, R)>,
    },
    /// Answer once `index` is applied.
    Read {
        /// The read index.
        index: LogIndex,
        /// The reader to answer.
        reply: R,
    },
    /// Replace the state with the stored snapshot `meta` (installed from the leader).
    Restore {
        /// The snapshot to restore, now committed in the snapshot store.
        meta: SnapshotMeta,
    },
    /// The capture asked for last is over: `taken` is the newest snapshot
    /// that covers it (the one written, or a newer one installed from the
    /// leader meanwhile); `None` if it failed and nothing covers it.
    SnapshotFinished {
        /// The snapshot that covers the capture, by its last included entry.
        taken: Option<LogId>,
    },
    /// Take a snapshot now.
    Snapshot {
        /// The caller, answered once the snapshot is stored.
        reply: R,
    },
    /// Use this snapshot policy from now on (`Applier::set_policy`).
    Policy(SnapshotPolicy),
}

impl<R> ApplyJob<R> {
    /// The callers of this work, each with its answer, when it will not run
    /// because the node stopped: writes may have committed (unknown), reads
    /// and snapshot requests were not done.
    pub fn refused(self, failure: Option<&str>) -> Vec<(R, Failure)> {
        match self {
            ApplyJob::Batch { replies, .. } => {
                replies.into_iter().map(|(_, reply)| (reply, Failure::stopped(failure))).collect()
            }
            ApplyJob::Read { reply, .. } | ApplyJob::Snapshot { reply } => vec![(reply, Failure::not_done(failure))],
            ApplyJob::Restore { .. } | ApplyJob::SnapshotFinished { .. } | ApplyJob::Policy(_) => Vec::new(),
        }
    }
}

/// Who leads, as last known by this node.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct LeaderInfo {
    /// The leader of `term`, if known.
    pub leader: Option<NodeId>,
    /// This node's current term.
    pub term: Term,
}

/// What the executor must do.
#[derive(Debug)]
pub enum Effect<R> {
    /// Durable work for the log writer, run after every job before it.
    Store(StoreJob),
    /// Messages for one peer, in order.
    Send {
        /// The peer.
        to: NodeId,
        /// The messages, to send in this order.
        messages: Vec<Message>,
    },
    /// Work for the apply side, run after every job before it.
    Apply(ApplyJob<R>),
    /// Answer the caller with `failure`.
    Fail {
        /// The caller to answer.
        reply: R,
        /// Why the request failed, and whether it may still take effect.
        failure: Failure,
    },
    /// A leadership transfer started; the caller waits up to `wait_ms` for it.
    TransferStarted {
        /// The caller of `transfer_leadership`.
        reply: R,
        /// How long to wait for the new leader, in ms (`DriverConfig::transfer_wait_ms`).
        wait_ms: Millis,
    },
    /// A leadership transfer asked of the node that already leads: done, as
    /// etcd's move-leader answers, so that a caller retrying a transfer whose
    /// first answer it lost is told the truth.
    AlreadyLeads {
        /// The caller of `transfer_leadership`.
        reply: R,
    },
    /// A request found already done (`add_voter` of a voter whose
    /// configuration has committed): answer it as applied at `index`.
    AlreadyDone {
        /// The caller to answer.
        reply: R,
        /// Index of the committed configuration that already holds the change.
        index: LogIndex,
    },
    /// The snapshot the caller asked for is stored.
    SnapshotTaken {
        /// The caller of `request_snapshot`.
        reply: R,
        /// The stored snapshot, by its last included entry.
        id: LogId,
    },
    /// The known leader or the term changed: pass it on to whoever watches
    /// leadership (and to observers).
    LeaderChanged(LeaderInfo),
    /// Read a chunk of the stored snapshot `meta` at `offset` and hand it back
    /// with `chunk_read` as an `InstallSnapshot` in `term`.
    ReadChunk {
        /// The follower the chunk is for.
        to: NodeId,
        /// The leader's term, to put in the message.
        term: Term,
        /// The snapshot to read, by its metadata.
        meta: SnapshotMeta,
        /// Where the chunk starts in the snapshot's data, in bytes.
        offset: u64,
    },
    /// Start receiving snapshot `serial` into a new, uncommitted sink of the
    /// snapshot store (and start the state machine's check of it, if checks
    /// are on); any other received snapshot is abandoned first.
    ReceiveStart {
        /// Names this receipt in the effects and reports that follow; a new
        /// serial for each stream started.
        serial: u64,
        /// The snapshot being received.
        meta: SnapshotMeta,
    },
    /// The next chunk of snapshot `serial`; after the last (`done`), close
    /// the check's input: its verdict comes back through `snapshot_checked`.
    ReceiveChunk {
        /// The receipt the chunk belongs to.
        serial: u64,
        /// The chunk's bytes, the next ones of the snapshot's data.
        data: Bytes,
        /// Whether this is the last chunk.
        done: bool,
    },
    /// Drop the uncommitted snapshot `serial` (refused, with the reason, or abandoned).
    DiscardReceived {
        /// The receipt to drop.
        serial: u64,
        /// Why the state machine refused it; `None` when abandoned for a newer stream.
        refused: Option<String>,
    },
    /// Write the capture taken at `index` to the snapshot store, covering
    /// `meta`, and report it with `snapshot_written`.
    WriteSnapshot {
        /// The applied index of the capture.
        index: LogIndex,
        /// The metadata to store with it (last included entry, configuration).
        meta: SnapshotMeta,
    },
    /// A capture at `index` cannot become a snapshot (a newer one was
    /// installed under it): drop it.
    DropCapture {
        /// The applied index of the capture.
        index: LogIndex,
    },
    /// Something observers may want to know; produced only while the
    /// executor says someone observes (`Driver::set_observing`).
    Observed(Observed),
}

impl<R> Effect<R> {
    /// Whether this effect only answers a caller or informs (the leader
    /// watch, observers): all that may happen after a failure.
    pub fn answers(&self) -> bool {
        matches!(
            self,
            Effect::Fail { .. }
                | Effect::TransferStarted { .. }
                | Effect::AlreadyLeads { .. }
                | Effect::AlreadyDone { .. }
                | Effect::SnapshotTaken { .. }
                | Effect::LeaderChanged(_)
                | Effect::Observed(_)
        )
    }
}

/// A snapshot of the node's protocol state, for `stats` and tests.
#[derive(Clone, Debug)]
pub struct Status {
    /// This node's id.
    pub id: NodeId,
    /// Its role (`Role::Learner` for a learner that follows).
    pub role: Role,
    /// Its current term.
    pub term: Term,
    /// The leader of the current term, if known.
    pub leader: Option<NodeId>,
    /// The highest index known committed.
    pub commit_index: LogIndex,
    /// Index of the last entry of the log (or of the compaction point).
    pub last_log_index: LogIndex,
    /// Term of that entry.
    pub last_log_term: Term,
    /// Index of the first entry held: one past the compaction point.
    pub first_log_index: LogIndex,
    /// The configuration in force (the newest in the log, thesis §4.1).
    pub membership: Configuration,
    /// Index of the entry that carried `membership`.
    pub membership_index: LogIndex,
    /// The vote in memory for the current term, if any (figure 2, `votedFor`).
    pub voted_for: Option<NodeId>,
    /// Time since a message from the leader last arrived (zero on the leader,
    /// `None` if none ever did).
    pub last_contact: Option<std::time::Duration>,
    /// The newest snapshot this node holds.
    pub snapshot: Option<LogId>,
    /// On the leader, each other member's replication and contact (empty
    /// elsewhere).
    pub peers: Vec<PeerStatus>,
}

/// A member as the leader sees it: the inputs of a server-health rule
/// (Consul autopilot's: last contact, in the leader's term, trailing entries).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PeerStatus {
    /// The member.
    pub id: NodeId,
    /// Whether it is one of the configuration's `voters`.
    pub voter: bool,
    /// The highest index known to match the leader's log (figure 2, `matchIndex`).
    pub match_index: LogIndex,
    /// Entries the leader has that the peer is not known to have.
    pub trailing: u64,
    /// Time since it last answered this leader; `None`: not in this term.
    pub last_contact: Option<std::time::Duration>,
    /// A learner this leader will promote once it has caught up.
    pub staging: bool,
    /// Staging only: how long it has been caught up, as this leader saw.
    pub caught_up_for: Option<std::time::Duration>,
}

/// A snapshot arriving from the leader (or received whole, awaiting its verdict).
#[derive(Clone, Debug)]
struct Receiving {
    serial: u64,
    id: LogId,
    /// A check may refuse before the last chunk arrived: its verdict waits here.
    verdict: Option<Result<(), String>>,
}

/// Work for the apply side, in order, behind the installs not stored yet.
enum Gated<R> {
    /// A snapshot install: until the persist that stores it is done the state
    /// machine keeps its state, and everything after waits behind its restore.
    Install {
        meta: SnapshotMeta,
        seq: Option<u64>,
        restore: bool,
    },
    Job(ApplyJob<R>),
}

/// The raft loop's half of the runtime (see the crate's documentation).
pub struct Driver<R> {
    core: Core,
    config: DriverConfig,
    proposals: BTreeMap<LogIndex, (Term, R)>,
    reads: BTreeMap<ReadId, R>,
    next_read_id: ReadId,
    outbox: BTreeMap<NodeId, Vec<Message>>,
    effects: Vec<Effect<R>>,
    incoming: Option<Receiving>,
    received: Option<Receiving>,
    next_serial: u64,
    /// Installs not stored yet and the work queued behind each, in order.
    gate: std::collections::VecDeque<Gated<R>>,
    /// Callers waiting for the snapshot being written at an index.
    writing: BTreeMap<LogIndex, Vec<R>>,
    failure: Option<String>,
    last_leader_contact: Option<Millis>,
    /// `add_voter` callers waiting for their staging server's fate.
    staged: StagedAdds<R>,
    /// What observations are made of; `None` while nobody observes.
    watch: Option<Watch>,
}

impl<R> Driver<R> {
    /// A driver around `core`, a node restored from its durable state.
    pub fn new(core: Core, config: DriverConfig) -> Driver<R> {
        let next_read_id = (config.read_id_seed % (1 << 61)) + 1;
        Driver {
            core,
            config,
            proposals: BTreeMap::new(),
            reads: BTreeMap::new(),
            // Below the wire limit, with room for 2^61 reads in this run.
            next_read_id,
            outbox: BTreeMap::new(),
            effects: Vec::new(),
            incoming: None,
            received: None,
            next_serial: 0,
            gate: std::collections::VecDeque::new(),
            writing: BTreeMap::new(),
            failure: None,
            last_leader_contact: None,
            staged: StagedAdds::new(),
            watch: None,
        }
    }

    /// The core, to read its state.
    pub fn core(&self) -> &Core {
        &self.core
    }

    /// This node's id.
    pub fn id(&self) -> NodeId {
        self.core.config().id
    }

    /// Why the node must stop, once something it cannot go on after happened.
    /// No effect is produced after it; the executor stops and calls `stop`.
    pub fn failure(&self) -> Option<&str> {
        self.failure.as_deref()
    }

    /// Whether someone observes this node: only then are `Effect::Observed`
    /// made (see `Observed`), and what they are made of recorded. Turned on,
    /// it reports changes from now on, not the state it finds.
    pub fn set_observing(&mut self, observing: bool) {
        match (observing, self.watch.is_some()) {
            (true, false) => self.watch = Some(Watch::new(&self.core)),
            (false, true) => self.watch = None,
            _ => {}
        }
    }

    /// Carries out the core's actions and returns the effects of this step,
    /// messages last (one batch per peer). Nothing runs after a failure.
    pub fn effects(&mut self) -> std::vec::Drain<'_, Effect<R>> {
        while self.failure.is_none() {
            let actions: Vec<Action> = self.core.drain_actions().collect();
            if actions.is_empty() {
                break;
            }
            for action in actions {
                if let Err(reason) = self.action(action) {
                    self.fail(reason);
                    break;
                }
            }
        }
        if self.failure.is_none() {
            if let Some(observed) = self.watch.as_mut().and_then(|watch| watch.membership(&self.core)) {
                self.effects.push(Effect::Observed(observed));
            }
            for (to, messages) in std::mem::take(&mut self.outbox) {
                self.effects.push(Effect::Send { to, messages });
            }
        } else {
            // Only answers go out after a failure: nothing is stored, sent or
            // applied; callers whose work is dropped are answered as in `stop`.
            self.outbox.clear();
            let effects = std::mem::take(&mut self.effects);
            for effect in effects {
                match effect {
                    Effect::Apply(job) => self.refuse_job(job),
                    answer if answer.answers() => self.effects.push(answer),
                    _ => {}
                }
            }
        }
        self.effects.drain(..)
    }

    // ---- Inputs ------------------------------------------------------------

    /// Advances timers to `now` (elections, heartbeats, promotions and
    /// overdue staging servers, observers' peer watch).
    pub fn tick(&mut self, now: Millis) {
        self.core.handle_tick(now);
        self.remove_overdue_staging(now);
        if let Some(watch) = self.watch.as_mut() {
            let effects = &mut self.effects;
            watch.tick_peers(&self.core, now, |observed| effects.push(Effect::Observed(observed)));
        }
    }

    /// A message from `from`, received at `now`.
    pub fn receive(&mut self, now: Millis, from: NodeId, message: Message) {
        if let (Some(watch), Message::RequestVote(request)) = (self.watch.as_mut(), &message) {
            watch.vote_requested(from, request);
        }
        self.core.handle_message(now, from, message);
        if self.core.leader() == Some(from) {
            self.last_leader_contact = Some(now);
        }
    }

    /// Proposes commands together (one log write, one broadcast).
    pub fn propose(&mut self, commands: Vec<Bytes>, replies: Vec<R>) {
        if commands.is_empty() {
            return;
        }
        let term = self.core.current_term();
        match self.core.propose_batch(commands) {
            Ok(first) => {
                for (i, reply) in replies.into_iter().enumerate() {
                    self.proposals.insert(LogIndex(first.0 + i as u64), (term, reply));
                }
            }
            Err(error) => {
                let failure = Failure::from(error);
                for reply in replies {
                    self.effects.push(Effect::Fail { reply, failure: failure.clone() });
                }
            }
        }
    }

    /// Proposes one step of a restore through the log; answered like a
    /// command, when the entry at its index is applied in its term.
    pub fn propose_restore(&mut self, step: RestoreStep, reply: R) {
        let term = self.core.current_term();
        match self.core.propose_restore(step) {
            Ok(index) => {
                self.proposals.insert(index, (term, reply));
            }
            Err(error) => self.effects.push(Effect::Fail { reply, failure: Failure::from(error) }),
        }
    }

    /// Starts a read at `now` (read when the request is handled, not at the
    /// last tick); `reply` is answered once the state machine has applied the
    /// read index, or with a failure.
    pub fn read(&mut self, now: Millis, mode: ReadMode, reply: R) {
        let read_id = self.next_read_id;
        self.next_read_id += 1;
        match self.core.read_index(now, read_id, mode) {
            Ok(()) => {
                self.reads.insert(read_id, reply);
            }
            Err(error) => self.effects.push(Effect::Fail { reply, failure: error.into() }),
        }
    }

    /// Proposes `change`, only if the configuration in force is still the
    /// one at `prev_index` when given; answered once the change is applied.
    pub fn change_membership(&mut self, change: MembershipChange, prev_index: Option<LogIndex>, reply: R) {
        let term = self.core.current_term();
        match self.core.propose_membership_at(change, prev_index) {
            Ok(index) => {
                self.proposals.insert(index, (term, reply));
            }
            Err(error) => self.effects.push(Effect::Fail { reply, failure: error.into() }),
        }
    }

    /// Adds `id` as a voter the safe way (thesis §4.2.1): as a learner marked
    /// staging, promoted by the core once it has caught up. The reply comes
    /// when the promotion commits (answered like any membership change), or
    /// with `NotCaughtUp` once the removal this leader proposes at
    /// `now + timeout_ms` has committed, or with whatever else decided the
    /// server's fate first. `prev_index` guards the staging entry only
    /// (hashicorp's "configuration still at index N"). A retry finds the
    /// truth: a voter already (done), or still staging (it waits with the
    /// first caller).
    pub fn add_voter(&mut self, now: Millis, id: NodeId, prev_index: Option<LogIndex>, timeout_ms: Millis, reply: R) {
        let core = &self.core;
        let deadline = now.saturating_add(timeout_ms);
        let (membership, at) = (core.membership(), core.membership_index());
        let refused = if core.role() != Role::Leader {
            Some(Failure::NotLeader { leader: core.leader() })
        } else {
            prev_index
                .filter(|expected| *expected != at)
                .map(|expected| Failure::Refused(ProposeError::ConfigChanged { expected, latest: at }))
        };
        if let Some(failure) = refused {
            return self.effects.push(Effect::Fail { reply, failure });
        }
        // A voter of the incoming half; one in the outgoing half alone is
        // being removed by the joint change in force.
        let voter = membership.voters.contains(&id);
        if voter && at <= core.commit_index() {
            return self.effects.push(Effect::AlreadyDone { reply, index: at });
        }
        if voter || membership.is_staging(id) {
            // Its fate is in the configuration in force: wait for it.
            return self.staged.wait(id, at, deadline, reply);
        }
        match self.core.propose_membership_at(MembershipChange::AddStaging(id), prev_index) {
            Ok(index) => self.staged.wait(id, index, deadline, reply),
            Err(error) => self.effects.push(Effect::Fail { reply, failure: error.into() }),
        }
    }

    /// Proposes the removal of each staging server whose callers' deadline
    /// passed. A refusal (a change pending, a transfer, no commit in this
    /// term yet) ends by itself: the next tick tries again. A server no
    /// longer staging (its promotion is appended) is left to what commits.
    fn remove_overdue_staging(&mut self, now: Millis) {
        if !self.core.is_leader() {
            return;
        }
        for id in self.staged.due(now) {
            if !self.core.membership().is_staging(id) {
                continue;
            }
            let match_index = self.core.peer_progress(id).map_or(LogIndex::ZERO, |(matched, _)| matched);
            let last_index = self.core.last_log_id().index;
            if let Ok(index) = self.core.propose_membership(MembershipChange::RemoveServer(id)) {
                self.staged.removal_proposed(id, Removal { index, match_index, last_index });
            }
        }
    }

    /// Hands leadership to `target` (thesis §3.10); asked of the leader for
    /// itself, it is done already.
    pub fn transfer_leadership(&mut self, target: NodeId, reply: R) {
        if target == self.core.id() && self.core.role() == Role::Leader {
            self.effects.push(Effect::AlreadyLeads { reply });
            return;
        }
        match self.core.transfer_leadership(target) {
            Ok(()) => self.effects.push(Effect::TransferStarted { reply, wait_ms: self.config.transfer_wait_ms }),
            Err(error) => self.effects.push(Effect::Fail { reply, failure: error.into() }),
        }
    }

    /// A caller wants a snapshot now; the apply side decides when it captures.
    pub fn request_snapshot(&mut self, reply: R) {
        self.for_apply(ApplyJob::Snapshot { reply });
    }

    /// New timing for the core, retention for the driver, policy for the
    /// apply side; nothing changes if the core refuses the timing.
    pub fn reload(
        &mut self,
        core: CoreConfig,
        trailing_logs: u64,
        policy: SnapshotPolicy,
        transfer_wait_ms: Millis,
    ) -> Result<(), String> {
        self.core.reload_config(core).map_err(|e| e.reason.to_string())?;
        self.config.trailing_logs = trailing_logs;
        self.config.transfer_wait_ms = transfer_wait_ms;
        self.for_apply(ApplyJob::Policy(policy));
        Ok(())
    }

    /// The log writer made every job up to `seq` durable.
    pub fn persisted(&mut self, seq: u64) {
        if let Err(error) = self.core.handle_persisted(seq) {
            return self.fail(format!("the log writer acknowledged an unknown persist: {error}"));
        }
        self.release(seq);
    }

    /// Lets through, in order, the restores of installs stored by `seq` and
    /// the work queued behind them, up to the first install not stored yet.
    fn release(&mut self, seq: u64) {
        while let Some(front) = self.gate.front() {
            if let Gated::Install { seq: stored, .. } = front {
                if !stored.is_some_and(|at| at <= seq) {
                    return;
                }
            }
            match self.gate.pop_front() {
                Some(Gated::Install { meta, restore: true, .. }) => {
                    self.effects.push(Effect::Apply(ApplyJob::Restore { meta }))
                }
                Some(Gated::Job(job)) => self.effects.push(Effect::Apply(job)),
                _ => {}
            }
        }
    }

    /// The install of `meta` at the back of the gate (its position), opened
    /// if the last install there is another.
    fn install_entry(&mut self, meta: &SnapshotMeta) -> usize {
        let last = self.gate.iter().rposition(|g| matches!(g, Gated::Install { .. }));
        match last {
            Some(at) if matches!(&self.gate[at], Gated::Install { meta: last, .. } if last == meta) => at,
            _ => {
                self.gate.push_back(Gated::Install { meta: meta.clone(), seq: None, restore: false });
                self.gate.len() - 1
            }
        }
    }

    /// The state machine's verdict on the snapshot received whole as `serial`.
    pub fn snapshot_checked(&mut self, serial: u64, verdict: Result<(), String>) {
        if let Some(incoming) = self.incoming.as_mut().filter(|i| i.serial == serial) {
            // The check ended before the last chunk (it refused early): the
            // core hears it once the snapshot is received whole.
            incoming.verdict = Some(verdict);
            return;
        }
        let Some(id) = self.received.as_ref().filter(|r| r.serial == serial).map(|r| r.id) else { return };
        let sound = verdict.is_ok();
        if let Err(reason) = verdict {
            self.received = None;
            self.effects.push(Effect::DiscardReceived { serial, refused: Some(reason) });
        }
        self.core.handle_snapshot_checked(id, sound);
    }

    /// A chunk read off the snapshot store for a follower.
    pub fn chunk_read(&mut self, to: NodeId, message: Message) {
        self.outbox.entry(to).or_default().push(message);
    }

    /// The apply side captured its state after `index`, for the `waiters`.
    pub fn snapshot_captured(&mut self, index: LogIndex, waiters: Vec<R>) {
        match self.core.snapshot_meta_for(index) {
            Some(meta) => {
                self.writing.entry(index).or_default().extend(waiters);
                self.effects.push(Effect::WriteSnapshot { index, meta });
            }
            None => {
                // The entries were compacted under it: a newer snapshot was installed.
                let newest = self.core.snapshot().map_or(index, |s| s.last_log_id.index);
                for reply in waiters {
                    self.effects.push(Effect::Fail { reply, failure: Failure::NothingNewToSnapshot { index: newest } });
                }
                self.effects.push(Effect::DropCapture { index });
                // That snapshot covers the capture: the apply side must not
                // capture the same state again while its restore is queued.
                let taken = self.core.snapshot().map(|s| s.last_log_id).filter(|id| id.index >= index);
                self.effects.push(Effect::Apply(ApplyJob::SnapshotFinished { taken }));
            }
        }
    }

    /// The capture at `index` was written (as `meta`) or failed. A written one
    /// lets the core compact its log, keeping `trailing_logs`; the log writer
    /// purges the same prefix, behind the stored snapshot.
    pub fn snapshot_written(&mut self, index: LogIndex, written: Result<SnapshotMeta, String>) {
        let waiters = self.writing.remove(&index).unwrap_or_default();
        let taken = written.as_ref().ok().map(|meta| meta.last_log_id);
        self.effects.push(Effect::Apply(ApplyJob::SnapshotFinished { taken }));
        let answer = written.and_then(|meta| {
            let id = meta.last_log_id;
            self.core.handle_snapshot_taken(meta).map_err(|e| format!("snapshot {id} not usable: {e}"))?;
            let upto = LogIndex(index.0.saturating_sub(self.config.trailing_logs));
            if upto > self.core.log_start().index && self.core.compact_log(upto).is_ok() {
                self.effects.push(Effect::Store(StoreJob { seq: None, steps: vec![StoreStep::Purge(upto)] }));
            }
            Ok(id)
        });
        for reply in waiters {
            self.effects.push(match &answer {
                Ok(id) => Effect::SnapshotTaken { reply, id: *id },
                Err(reason) => Effect::Fail { reply, failure: Failure::Snapshot { reason: reason.clone() } },
            });
        }
    }

    /// Something the node cannot go on after: no further effect is produced.
    pub fn fail(&mut self, reason: String) {
        if self.failure.is_none() {
            self.failure = Some(reason);
        }
    }

    /// The node stops (shut down, or after a failure): every caller still
    /// waiting is answered, writes with an unknown outcome.
    pub fn stop(&mut self) -> Vec<Effect<R>> {
        let failure = self.failure.clone();
        let failure = failure.as_deref();
        let mut effects = Vec::new();
        // A proposal may be on followers already and commit under the next leader.
        for (_, (_, reply)) in std::mem::take(&mut self.proposals) {
            effects.push(Effect::Fail { reply, failure: Failure::stopped(failure) });
        }
        // A staging server may still be promoted or removed by the next leader.
        for reply in self.staged.take_all() {
            effects.push(Effect::Fail { reply, failure: Failure::stopped(failure) });
        }
        let waiting = std::mem::take(&mut self.reads)
            .into_values()
            .chain(std::mem::take(&mut self.writing).into_values().flatten());
        for reply in waiting {
            effects.push(Effect::Fail { reply, failure: Failure::not_done(failure) });
        }
        // Work held behind an install that never finished.
        for gated in std::mem::take(&mut self.gate) {
            if let Gated::Job(job) = gated {
                self.refuse_job(job);
            }
        }
        effects.append(&mut self.effects);
        effects.push(Effect::LeaderChanged(LeaderInfo { leader: None, term: self.core.current_term() }));
        effects
    }

    /// Answers the callers of apply work that will not run (`ApplyJob::refused`).
    fn refuse_job(&mut self, job: ApplyJob<R>) {
        for (reply, failure) in job.refused(self.failure.as_deref()) {
            self.effects.push(Effect::Fail { reply, failure });
        }
    }

    /// The node's protocol state at `now` (durations are measured to it).
    pub fn status(&self, now: Millis) -> Status {
        let core = &self.core;
        let last = core.last_log_id();
        let since = |at: Millis| std::time::Duration::from_millis(now.saturating_sub(at));
        Status {
            id: self.id(),
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
                Some(std::time::Duration::ZERO)
            } else {
                self.last_leader_contact.map(since)
            },
            peers: core
                .peers()
                .into_iter()
                .map(|peer| PeerStatus {
                    id: peer.id,
                    voter: peer.voter,
                    match_index: peer.match_index,
                    trailing: last.index.0.saturating_sub(peer.match_index.0),
                    last_contact: peer.last_contact_at.map(since),
                    staging: peer.staging,
                    caught_up_for: peer.caught_up_since.map(since),
                })
                .collect(),
        }
    }

    // ---- Actions -----------------------------------------------------------

    fn action(&mut self, action: Action) -> Result<(), String> {
        match action {
            Action::Persist(request) => {
                let received = match &request.snapshot {
                    Some(meta) => Some(self.take_received(meta, request.seq)?),
                    None => None,
                };
                self.effects.push(Effect::Store(StoreJob::of(request, received)));
            }
            Action::Send { to, message } => {
                if let (Some(watch), Message::RequestVoteResponse(answer)) = (self.watch.as_mut(), &message) {
                    self.effects.push(Effect::Observed(watch.vote_answered(to, answer)));
                }
                self.outbox.entry(to).or_default().push(message)
            }
            Action::Apply { entries } => self.apply(entries),
            Action::ReadReady { read_id, index } => {
                if let Some(reply) = self.reads.remove(&read_id) {
                    self.for_apply(ApplyJob::Read { index, reply });
                }
            }
            Action::ReadFailed { read_id, error } => {
                if let Some(reply) = self.reads.remove(&read_id) {
                    self.effects.push(Effect::Fail { reply, failure: error.into() });
                }
            }
            Action::LeaderChanged { leader, term } => {
                if leader != Some(self.id()) {
                    // Proposals not yet committed may or may not commit later;
                    // committed ones are answered when they apply.
                    let uncommitted = self.proposals.split_off(&self.core.commit_index().next());
                    for (_, (_, reply)) in uncommitted {
                        self.effects.push(Effect::Fail { reply, failure: Failure::LeadershipLost });
                    }
                    // The next leader finishes a promotion, or not: unknown.
                    for reply in self.staged.take_all() {
                        self.effects.push(Effect::Fail { reply, failure: Failure::LeadershipLost });
                    }
                }
                self.effects.push(Effect::LeaderChanged(LeaderInfo { leader, term }));
            }
            Action::SendSnapshotChunk { to, term, meta, offset } => {
                self.effects.push(Effect::ReadChunk { to, term, meta, offset })
            }
            Action::WriteSnapshotChunk { meta, offset, data, done } => self.receive_chunk(meta, offset, data, done)?,
            Action::RestoreSnapshot { meta } => {
                let at = self.install_entry(&meta);
                if let Gated::Install { restore, .. } = &mut self.gate[at] {
                    *restore = true;
                }
            }
        }
        Ok(())
    }

    /// Committed entries go to the apply side with the proposals they answer:
    /// only a proposal whose entry kept its term was applied; another
    /// leader's entry at its index means it was overwritten.
    fn apply(&mut self, entries: Vec<Entry>) {
        let mut replies = Vec::new();
        for (reply, answer) in self.staged.committed(&entries) {
            match answer {
                // Answered like the change that promoted it, once applied.
                Answer::Done(index) => replies.push((index, reply)),
                Answer::Failed(failure) => self.effects.push(Effect::Fail { reply, failure }),
            }
        }
        if let (Some(first), Some(last)) = (entries.first(), entries.last()) {
            let (first, last) = (first.index, last.index);
            let mut ours = self.proposals.split_off(&first);
            let mut later = ours.split_off(&last.next());
            self.proposals.append(&mut later);
            for (index, (term, reply)) in ours {
                if entries.get((index.0 - first.0) as usize).is_some_and(|e| e.term == term) {
                    replies.push((index, reply));
                } else {
                    self.effects.push(Effect::Fail { reply, failure: Failure::Overwritten { index } });
                }
            }
        }
        self.for_apply(ApplyJob::Batch { entries, replies });
    }

    /// Work for the apply side, in order, behind an install's restore.
    fn for_apply(&mut self, job: ApplyJob<R>) {
        if self.gate.is_empty() {
            self.effects.push(Effect::Apply(job));
        } else {
            self.gate.push_back(Gated::Job(job));
        }
    }

    /// A chunk the core accepted. The first opens a new sink (abandoning any
    /// other); the last one closes the check, or (without checks) tells the
    /// core at once that the snapshot is sound.
    fn receive_chunk(&mut self, meta: SnapshotMeta, offset: u64, data: Bytes, done: bool) -> Result<(), String> {
        let id = meta.last_log_id;
        if offset == 0 {
            for abandoned in [self.incoming.take(), self.received.take()].into_iter().flatten() {
                self.effects.push(Effect::DiscardReceived { serial: abandoned.serial, refused: None });
            }
            self.next_serial += 1;
            let serial = self.next_serial;
            self.incoming = Some(Receiving { serial, id, verdict: None });
            self.effects.push(Effect::ReceiveStart { serial, meta });
        }
        let Some(incoming) = self.incoming.as_ref() else {
            return Err(format!("snapshot {id} chunk at offset {offset} without a start"));
        };
        if incoming.id != id {
            return Err(format!("snapshot {id} chunk while receiving {}", incoming.id));
        }
        let serial = incoming.serial;
        self.effects.push(Effect::ReceiveChunk { serial, data, done });
        if done {
            let Some(mut received) = self.incoming.take() else { return Ok(()) };
            let early = received.verdict.take();
            self.received = Some(received);
            match early {
                Some(verdict) => self.snapshot_checked(serial, verdict),
                None if !self.config.check_snapshots => self.core.handle_snapshot_checked(id, true),
                None => {}
            }
        }
        Ok(())
    }

    /// The received snapshot that `meta` installs, for the log writer to
    /// commit with the persist `seq`.
    fn take_received(&mut self, meta: &SnapshotMeta, seq: u64) -> Result<u64, String> {
        let id = meta.last_log_id;
        let Some(received) = self.received.take().filter(|received| received.id == id) else {
            return Err(format!("snapshot {id} is to be installed but was not received whole"));
        };
        let at = self.install_entry(meta);
        if let Gated::Install { seq: stored, .. } = &mut self.gate[at] {
            *stored = Some(seq);
        }
        Ok(received.serial)
    }
}

/// The steps that make a log continue the snapshot a node starts from. A
/// crash during an install can leave a log that ends before the snapshot (its
/// purge did not run) and, from damaged stores, entries after it that
/// disagree with it (another term at its index, or a term lower than its own
/// right after it). Neither was committed past the snapshot: they are cut, so
/// that the node never understates what it holds. `term_at` reads the log.
pub fn reconcile_steps(
    snapshot: LogId,
    first: LogIndex,
    last: LogIndex,
    term_at: impl Fn(LogIndex) -> Option<Term>,
) -> Vec<StoreStep> {
    let held = |index: LogIndex| if first <= index && index <= last { term_at(index) } else { None };
    let cut_from = if held(snapshot.index).is_some_and(|term| term != snapshot.term) {
        Some(snapshot.index)
    } else if held(snapshot.index.next()).is_some_and(|term| term < snapshot.term) {
        Some(snapshot.index.next())
    } else {
        None
    };
    let cut_from = cut_from.filter(|_| !keeps_conflicting_suffix());
    let mut steps = Vec::new();
    let mut last = last;
    if let Some(from) = cut_from {
        let from = from.max(first);
        steps.push(StoreStep::Write(LogWrite { truncate_from: from, entries: Vec::new() }));
        last = from.prev();
    }
    if last < snapshot.index {
        steps.push(StoreStep::Purge(snapshot.index));
    }
    steps
}

/// The deliberate bug `InstallKeepsConflictingSuffix` (only with `bug-injection`).
fn keeps_conflicting_suffix() -> bool {
    #[cfg(feature = "bug-injection")]
    {
        raftkv_core::bugs::enabled(raftkv_core::bugs::InjectedBug::InstallKeepsConflictingSuffix)
    }
    #[cfg(not(feature = "bug-injection"))]
    {
        false
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use raftkv_core::EntryPayload;

    fn entry(index: u64, term: u64) -> Entry {
        Entry { index: LogIndex(index), term: Term(term), payload: EntryPayload::Noop }
    }

    fn state(term: u64) -> HardState {
        HardState { current_term: Term(term), voted_for: None }
    }

    /// Writes that continue each other become one append; the last hard state
    /// is written once, but never after a snapshot step queued behind it.
    #[test]
    fn merged_jobs_keep_their_meaning() {
        let write = |from: u64, to: u64| {
            StoreStep::Write(LogWrite {
                truncate_from: LogIndex(from),
                entries: (from..=to).map(|i| entry(i, 1)).collect(),
            })
        };
        let jobs = vec![
            StoreJob { seq: Some(1), steps: vec![write(5, 6), StoreStep::HardState(state(1))] },
            StoreJob { seq: Some(2), steps: vec![write(7, 8), StoreStep::HardState(state(2))] },
            StoreJob { seq: None, steps: vec![StoreStep::Purge(LogIndex(3))] },
            StoreJob { seq: Some(3), steps: vec![write(8, 9)] },
        ];
        let (steps, seq) = StoreJob::merge(jobs);
        assert_eq!(seq, Some(3));
        assert_eq!(
            steps,
            vec![write(5, 8), StoreStep::HardState(state(2)), StoreStep::Purge(LogIndex(3)), write(8, 9)]
        );
    }

    /// After a failure nothing is stored, sent or applied, but every caller
    /// whose work is dropped is answered: not done, or unknown for writes.
    #[test]
    fn after_a_failure_dropped_work_is_answered_not_lost() {
        use raftkv_core::{Core, CoreConfig, DurableState};
        let core = Core::new(CoreConfig::new(NodeId(1)), DurableState::bootstrap([NodeId(1)]), 0, 1).unwrap();
        let config = DriverConfig { trailing_logs: 0, check_snapshots: false, transfer_wait_ms: 0, read_id_seed: 1 };
        let mut driver: Driver<u32> = Driver::new(core, config);
        driver.tick(10_000);
        driver.request_snapshot(7);
        driver.fail("disk full".to_string());
        let effects: Vec<Effect<u32>> = driver.effects().collect();
        assert!(effects.iter().all(Effect::answers), "{effects:?}");
        let refused = effects.iter().any(|e| matches!(e, Effect::Fail { reply: 7, failure: Failure::Failed { .. } }));
        assert!(refused, "{effects:?}");
    }

    /// A transfer to the node that leads is done at once (a retry whose first
    /// answer was lost learns the truth); asked of a node that does not lead,
    /// it is refused as not done.
    #[test]
    fn a_transfer_to_the_leader_itself_is_done() {
        use raftkv_core::{Core, CoreConfig, DurableState};
        let core = Core::new(CoreConfig::new(NodeId(1)), DurableState::bootstrap([NodeId(1)]), 0, 1).unwrap();
        let config = DriverConfig { trailing_logs: 0, check_snapshots: false, transfer_wait_ms: 0, read_id_seed: 1 };
        let mut driver: Driver<u32> = Driver::new(core, config);
        driver.transfer_leadership(NodeId(1), 1);
        let effects: Vec<Effect<u32>> = driver.effects().collect();
        let refused =
            effects.iter().any(|e| matches!(e, Effect::Fail { reply: 1, failure: Failure::NotLeader { .. } }));
        assert!(refused, "a follower does not lead: {effects:?}");

        let mut now = 0;
        while driver.core().role() != Role::Leader {
            assert!(now < 100_000, "a single voter elects itself");
            now += 100;
            driver.tick(now);
            let stored: Vec<u64> = driver
                .effects()
                .filter_map(|e| match e {
                    Effect::Store(StoreJob { seq: Some(seq), .. }) => Some(seq),
                    _ => None,
                })
                .collect();
            stored.into_iter().for_each(|seq| driver.persisted(seq));
        }
        driver.effects().for_each(drop);
        driver.transfer_leadership(NodeId(1), 2);
        let effects: Vec<Effect<u32>> = driver.effects().collect();
        assert!(matches!(effects.as_slice(), [Effect::AlreadyLeads { reply: 2 }]), "{effects:?}");
    }

    /// Start-up cuts what disagrees with the snapshot and empties a log that
    /// ends before it; a log that continues it is left alone.
    #[test]
    fn reconcile_cuts_what_disagrees_and_empties_a_short_log() {
        let snapshot = LogId::new(Term(3), LogIndex(8));
        let terms = |index: LogIndex| Some(if index.0 <= 5 { Term(1) } else { Term(2) });
        assert_eq!(
            reconcile_steps(snapshot, LogIndex(1), LogIndex(10), terms),
            vec![
                StoreStep::Write(LogWrite { truncate_from: LogIndex(8), entries: Vec::new() }),
                StoreStep::Purge(LogIndex(8))
            ]
        );
        assert_eq!(reconcile_steps(snapshot, LogIndex(1), LogIndex(5), terms), vec![StoreStep::Purge(LogIndex(8))]);
        let continues = |index: LogIndex| Some(if index.0 <= 8 { Term(3) } else { Term(4) });
        assert_eq!(reconcile_steps(snapshot, LogIndex(1), LogIndex(10), continues), vec![]);
    }
}
