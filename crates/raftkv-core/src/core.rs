//! `Core`: one Raft node as a deterministic state machine.
//!
//! Owns the protocol state (paper figure 2) and nothing else: no clock, no RNG of
//! the process, no channels, no I/O. Inputs are `handle_*` calls and `propose*` /
//! `read_index` / membership requests; outputs are `Action`s drained by the
//! runtime. The behaviour is split by concern into `election.rs`,
//! `replication.rs`, `read.rs` and `membership.rs`; this file holds the state,
//! the persistence contract and the action queue.
//!
//! Persistence contract: every `Action::Persist` has a sequence number; the
//! runtime applies them in order and reports completion with `handle_persisted`.
//! A message that depends on persisted state (a vote, an append or snapshot
//! acknowledgement, a vote request) is held inside the core until the persist
//! it depends on completes. A leader's appends to followers do not wait for its
//! own write (thesis §10.2.1); the leader counts itself in the commit quorum only
//! through `durable_index`, which advances with `handle_persisted`.

use std::collections::{BTreeMap, VecDeque};

use bytes::Bytes;

use crate::config::{ConfigError, CoreConfig};
use crate::error::InputError;
use crate::log::RaftLog;
use crate::message::{Message, ReadId};
use crate::progress::Progress;
use crate::rng::Rng;
use crate::types::{
    Configuration, Entry, EntryPayload, HardState, LogId, LogIndex, Millis, NodeId, SnapshotMeta, Term,
};

/// What a node restarts from: exactly what its runtime made durable.
#[derive(Clone, Debug, Default)]
pub struct DurableState {
    /// The term and vote last made durable.
    pub hard_state: HardState,
    /// The newest snapshot the node holds; the log starts after it.
    pub snapshot: Option<SnapshotMeta>,
    /// Contiguous entries after the snapshot (or from index 1).
    pub entries: Vec<Entry>,
}

impl DurableState {
    /// State of a founding member of a new cluster: the configuration as entry 1 in
    /// term 1, identical on every founder (hashicorp's `BootstrapCluster`).
    pub fn bootstrap(voters: impl IntoIterator<Item = NodeId>) -> DurableState {
        DurableState {
            hard_state: HardState { current_term: Term(1), voted_for: None },
            snapshot: None,
            entries: vec![Entry {
                term: Term(1),
                index: LogIndex(1),
                payload: EntryPayload::Config(Configuration::new(voters)),
            }],
        }
    }
}

/// A node's role in its current term (paper §5.1, PreVote from thesis §9.6).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Role {
    /// Follows the leader of its term, or waits for one.
    Follower,
    /// Asks for pre-votes, its term unchanged, before it campaigns (thesis §9.6).
    PreCandidate,
    /// Campaigns for votes in a term it started (paper §5.2).
    Candidate,
    /// Leads its term: accepts proposals, replicates the log, decides commits.
    Leader,
    /// A follower that is a non-voting member of the configuration.
    Learner,
}

/// What a leader knows of another member (`Core::peers`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PeerProgress {
    /// The member.
    pub id: NodeId,
    /// Whether it is one of the configuration's `voters` (a learner, or a
    /// member of the outgoing half only, is not).
    pub voter: bool,
    /// Highest index known to match the leader's log.
    pub match_index: LogIndex,
    /// When it last answered this leader; `None`: not in this term.
    pub last_contact_at: Option<Millis>,
    /// A learner the leader will promote to voter once it has caught up.
    pub staging: bool,
    /// Staging only: since when this leader has seen it caught up.
    pub caught_up_since: Option<Millis>,
}

/// Truncate the log from `truncate_from`, then append `entries` (which start there).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LogWrite {
    /// First index to drop from the stored log; everything from it on goes.
    pub truncate_from: LogIndex,
    /// The entries to write from `truncate_from` on, contiguous; empty when the
    /// write only truncates.
    pub entries: Vec<Entry>,
}

/// One durable write. Apply in `seq` order: the snapshot (drop log entries up to
/// its index), then the log write, then the hard state; report with
/// `handle_persisted(seq)`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PersistRequest {
    /// Sequence number: 1 for a core's first request, then one more each time.
    pub seq: u64,
    /// The term and vote to store, when they changed.
    pub hard_state: Option<HardState>,
    /// A snapshot received from the leader (its data came in `WriteSnapshotChunk`)
    /// becomes this node's snapshot.
    pub snapshot: Option<SnapshotMeta>,
    /// The change to the stored log, when the log changed.
    pub log: Option<LogWrite>,
}

/// How `Core::read_index` confirms that this node still leads (thesis §6.4).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ReadMode {
    /// ReadIndex: confirm leadership with a heartbeat round.
    Linearizable,
    /// Leader lease: answered at once while the lease holds, else as `Linearizable`.
    Lease,
}

/// Work the core asks of its runtime, drained with `Core::drain_actions` and
/// carried out in the order given.
#[derive(Clone, Debug, PartialEq)]
pub enum Action {
    /// Make this durable, after every earlier persist, then report
    /// `handle_persisted(seq)`.
    Persist(PersistRequest),
    /// Send `message` to `to`. Delivery may fail, be late or repeat: the
    /// protocol tolerates all three.
    Send {
        /// The receiver.
        to: NodeId,
        /// What to send.
        message: Message,
    },
    /// Read a chunk (of the runtime's chunk size, or less at the end) at
    /// `offset` of the snapshot `meta` and send it to `to` as
    /// `Message::InstallSnapshot` in `term` (with `done` on the last chunk).
    SendSnapshotChunk {
        /// The follower to send the chunk to.
        to: NodeId,
        /// The leader's term, to put in the message.
        term: Term,
        /// The snapshot to read, by its metadata.
        meta: SnapshotMeta,
        /// Where the chunk starts in the snapshot's data, in bytes.
        offset: u64,
    },
    /// Store a received chunk of snapshot `meta` at `offset`.
    WriteSnapshotChunk {
        /// The snapshot being received.
        meta: SnapshotMeta,
        /// Where `data` starts in the snapshot's data, in bytes. Offset 0 starts
        /// a new stream: whatever was received before is dropped.
        offset: u64,
        /// The chunk's bytes.
        data: Bytes,
        /// Whether this is the last chunk: the snapshot is then whole, and the
        /// core waits for `handle_snapshot_checked` before it installs it.
        done: bool,
    },
    /// Apply these committed entries, in order, after everything applied before.
    Apply {
        /// Committed entries, contiguous, starting just after those applied.
        entries: Vec<Entry>,
    },
    /// Replace the state machine with the received snapshot `meta`.
    RestoreSnapshot {
        /// The snapshot whose data came in `WriteSnapshotChunk`s.
        meta: SnapshotMeta,
    },
    /// The read may be answered once the state machine has applied `index`.
    ReadReady {
        /// The id the read was started with.
        read_id: ReadId,
        /// The read index (thesis §6.4): the leader's commit index when the
        /// read reached it, in a term where it had committed an entry.
        index: LogIndex,
    },
    /// The read `read_id` could not be confirmed; it may be retried.
    ReadFailed {
        /// The id the read was started with.
        read_id: ReadId,
        /// Why it failed.
        error: crate::error::ReadError,
    },
    /// The known leader or the term changed (said only when it is news: a
    /// new term with no leader known on either side is not).
    LeaderChanged {
        /// The leader of `term`, if known; this node itself when it leads.
        leader: Option<NodeId>,
        /// This node's current term.
        term: Term,
    },
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum ReadOrigin {
    Local,
    /// Forwarded by `peer` in `term`; the answer echoes the term.
    Remote {
        peer: NodeId,
        term: Term,
    },
}

#[derive(Clone, Copy, Debug)]
pub(crate) struct PendingRead {
    pub read_id: ReadId,
    pub origin: ReadOrigin,
    pub index: LogIndex,
    /// The heartbeat round whose quorum acknowledgement confirms this read.
    pub round: u64,
}

/// One request a follower sent the leader for reads that came before it
/// (thesis §6.4): sent under the id of its first read; only `leader`'s
/// answer in `term` is accepted.
#[derive(Clone, Debug)]
pub(crate) struct ForwardedReads {
    pub leader: NodeId,
    pub term: Term,
    pub sent_at: Millis,
    pub reads: Vec<ReadId>,
}

#[derive(Clone, Copy, Debug)]
pub(crate) struct Transfer {
    pub target: NodeId,
    pub deadline: Millis,
}

/// A snapshot being received: from which leader, in which term, and the next byte
/// expected. A chunk from anyone else starts over at offset 0, so that chunks of
/// two streams (say, from a deposed leader and its successor) never mix.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct IncomingSnapshot {
    pub from: NodeId,
    pub term: Term,
    pub id: LogId,
    pub next_offset: u64,
}

/// Durable work requested since the last `drain_actions`.
#[derive(Clone, Debug, Default)]
pub(crate) struct PendingPersist {
    pub hard_state: bool,
    pub snapshot: Option<SnapshotMeta>,
    pub log_from: Option<LogIndex>,
}

impl PendingPersist {
    pub(crate) fn is_empty(&self) -> bool {
        !self.hard_state && self.snapshot.is_none() && self.log_from.is_none()
    }
}

/// State only a leader has; dropped when it steps down.
#[derive(Clone, Debug, Default)]
pub(crate) struct LeaderState {
    pub progress: BTreeMap<NodeId, Progress>,
    pub heartbeat_due: Millis,
    pub check_quorum_due: Millis,
    /// Current heartbeat round and when each unconfirmed round began.
    pub round: u64,
    pub round_started: VecDeque<(u64, Millis)>,
    pub confirmed_round: u64,
    /// When the newest quorum-confirmed round began: the lease counts from here.
    pub lease_start: Option<Millis>,
    /// Set once a TimeoutNow may be in flight: no lease reads for the rest of the term.
    pub lease_disabled: bool,
    pub transfer: Option<Transfer>,
    pub reads_waiting_commit: Vec<PendingRead>,
    pub reads_pending: VecDeque<PendingRead>,
    pub read_round_wanted: bool,
    pub broadcast_wanted: bool,
}

/// One Raft node as a deterministic state machine: the protocol state of
/// figure 2 (and of the thesis' extensions), fed by `handle_*`, `propose*`,
/// `read_index` and membership calls, answering with `Action`s from
/// [`Core::drain_actions`]. See the crate documentation for an example.
pub struct Core {
    pub(crate) config: CoreConfig,
    /// Lease length (election_timeout_min − drift): the shortest ever
    /// configured in this run, so a reload never lengthens a lease beyond
    /// what followers started out protecting.
    pub(crate) lease_ms: u64,
    /// How long after hearing a leader this node refuses votes: the longest
    /// election_timeout_min ever configured in this run, so a reload never
    /// shortens the window behind a lease this node already acknowledged.
    pub(crate) vote_guard_ms: u64,
    pub(crate) id: NodeId,
    pub(crate) rng: Rng,
    pub(crate) now: Millis,

    /// `current_term` and `voted_for` (figure 2).
    pub(crate) hard_state: HardState,
    pub(crate) role: Role,
    pub(crate) leader: Option<NodeId>,
    pub(crate) announced_leader: Option<(Option<NodeId>, Term)>,
    pub(crate) log: RaftLog,
    /// Highest index known committed. Invariant: `apply_sent <= commit_index <= last index`.
    /// Advanced by a leader only by counting current-term entries (§5.4.2).
    pub(crate) commit_index: LogIndex,
    /// Highest index handed to the runtime in `Action::Apply` (or restored).
    pub(crate) apply_sent: LogIndex,
    /// Highest index known durable on this node's disk.
    pub(crate) durable_index: LogIndex,

    /// The effective configuration: the latest in the log (it takes effect when
    /// appended, thesis §4.1), and the index of the entry that carried it.
    pub(crate) membership: Configuration,
    pub(crate) membership_index: LogIndex,
    /// Configuration in force at the log's compaction point.
    pub(crate) base_membership: Configuration,
    /// Newest snapshot this node can send.
    pub(crate) snapshot: Option<SnapshotMeta>,
    /// A snapshot being received, chunk by chunk.
    pub(crate) incoming_snapshot: Option<IncomingSnapshot>,
    /// A snapshot received whole, waiting for the runtime's verdict on its
    /// content (`handle_snapshot_checked`) before it replaces anything.
    pub(crate) checking_snapshot: Option<(IncomingSnapshot, SnapshotMeta)>,

    pub(crate) election_deadline: Millis,
    /// When a leader was last heard from; votes are refused within the minimum
    /// election timeout of it. With CheckQuorum (and so leases) this starts at the
    /// start time: a node that just restarted may have acknowledged a lease it has
    /// forgotten, and must not help elect another leader before that lease ends.
    pub(crate) leader_heard_at: Option<Millis>,
    pub(crate) votes: BTreeMap<NodeId, bool>,
    pub(crate) leader_state: Option<LeaderState>,
    /// A follower's reads that came since its last request to the leader:
    /// they wait for the next one (see `forward_reads`).
    pub(crate) reads_to_forward: Vec<ReadId>,
    /// Requests sent to a leader and not yet answered, by the id they were
    /// sent under.
    pub(crate) forwarded_reads: BTreeMap<ReadId, ForwardedReads>,

    pub(crate) pending_persist: PendingPersist,
    pub(crate) persist_seq_emitted: u64,
    pub(crate) persist_seq_done: u64,
    /// The persist that carries the newest hard state.
    pub(crate) hard_state_seq: u64,
    /// Won an election (alone: a single voter) whose term and vote are not durable
    /// yet; leadership starts once they are, so that no append of this term can
    /// leave before the term itself would survive a crash.
    pub(crate) won_awaiting_persist: bool,
    /// Last log id written by each persist not yet acknowledged.
    pub(crate) persist_log_ids: VecDeque<(u64, LogId)>,
    /// Messages held until the persist with the given sequence completes.
    pub(crate) gated: VecDeque<(u64, NodeId, Message)>,
    pub(crate) actions: Vec<Action>,
}

impl Core {
    /// Restores a node from `durable` state at time `now`. The seed drives the
    /// randomized election timeout and nothing else.
    pub fn new(config: CoreConfig, durable: DurableState, now: Millis, rng_seed: u64) -> Result<Core, ConfigError> {
        config.validate()?;
        let start = durable.snapshot.as_ref().map(|s| s.last_log_id).unwrap_or(LogId::ZERO);
        let log = RaftLog::new(start, durable.entries)
            .map_err(|_| ConfigError { reason: "durable log entries are not contiguous after the snapshot" })?;
        let base_membership = durable.snapshot.as_ref().map(|s| s.config.clone()).unwrap_or_default();
        let leader_heard_at = config.check_quorum.then_some(now);
        let (lease_ms, vote_guard_ms) =
            (config.election_timeout_min_ms - config.lease_clock_drift_ms, config.election_timeout_min_ms);
        let mut core = Core {
            id: config.id,
            config,
            rng: Rng::new(rng_seed),
            now,
            hard_state: durable.hard_state,
            role: Role::Follower,
            leader: None,
            announced_leader: None,
            commit_index: start.index,
            apply_sent: start.index,
            durable_index: log.last_index(),
            log,
            membership: base_membership.clone(),
            membership_index: start.index,
            base_membership,
            snapshot: durable.snapshot,
            incoming_snapshot: None,
            checking_snapshot: None,
            lease_ms,
            vote_guard_ms,
            election_deadline: now,
            leader_heard_at,
            votes: BTreeMap::new(),
            leader_state: None,
            reads_to_forward: Vec::new(),
            forwarded_reads: BTreeMap::new(),
            pending_persist: PendingPersist::default(),
            persist_seq_emitted: 0,
            persist_seq_done: 0,
            hard_state_seq: 0,
            won_awaiting_persist: false,
            persist_log_ids: VecDeque::new(),
            gated: VecDeque::new(),
            actions: Vec::new(),
        };
        core.recompute_membership();
        core.reset_election_timer();
        Ok(core)
    }

    // ---- Observers -------------------------------------------------------------

    /// The settings in force: those of `new` or of the last `reload_config`.
    pub fn config(&self) -> &CoreConfig {
        &self.config
    }

    /// This node's id.
    pub fn id(&self) -> NodeId {
        self.id
    }

    /// This node's role: `Role::Learner` for a follower that is a learner of
    /// the configuration in force.
    pub fn role(&self) -> Role {
        if self.role == Role::Follower && !self.membership.is_voter(self.id) && self.membership.is_learner(self.id) {
            return Role::Learner;
        }
        self.role
    }

    /// Whether this node leads its current term.
    pub fn is_leader(&self) -> bool {
        self.role == Role::Leader
    }

    /// The latest term this node has seen (figure 2, `currentTerm`).
    pub fn current_term(&self) -> Term {
        self.hard_state.current_term
    }

    /// The term and vote in memory, which may not be durable yet.
    pub fn hard_state(&self) -> HardState {
        self.hard_state
    }

    /// The leader of the current term, if known; this node's id when it leads.
    pub fn leader(&self) -> Option<NodeId> {
        self.leader
    }

    /// The highest index known committed (figure 2, `commitIndex`); it never
    /// goes back.
    pub fn commit_index(&self) -> LogIndex {
        self.commit_index
    }

    /// The highest index handed to the runtime to apply (`Action::Apply`) or
    /// covered by an installed snapshot; the state machine may still be
    /// behind it.
    pub fn applied_sent(&self) -> LogIndex {
        self.apply_sent
    }

    /// Id of the last entry of the log, or of the compaction point when the
    /// log holds no entry after it.
    pub fn last_log_id(&self) -> LogId {
        self.log.last_log_id()
    }

    /// Index of the first entry held in memory: one past the compaction point.
    pub fn first_log_index(&self) -> LogIndex {
        self.log.first_index()
    }

    /// The compaction point: the last entry a snapshot replaced
    /// (`LogId::ZERO` if none did). The log holds the entries after it.
    pub fn log_start(&self) -> LogId {
        self.log.start()
    }

    /// The entry at `index`, if the log holds it (not compacted, not past the end).
    pub fn entry(&self, index: LogIndex) -> Option<&Entry> {
        self.log.entry(index)
    }

    /// Term of the entry at `index`, if known: an entry held, or the
    /// compaction point.
    pub fn term_at(&self, index: LogIndex) -> Option<Term> {
        self.log.term_at(index)
    }

    /// The configuration in force: the newest in the log, committed or not
    /// (thesis §4.1), else the compaction point's.
    pub fn membership(&self) -> &Configuration {
        &self.membership
    }

    /// Index of the entry that carried `membership`, or of the compaction
    /// point when it came with a snapshot.
    pub fn membership_index(&self) -> LogIndex {
        self.membership_index
    }

    /// The newest snapshot this node holds (taken or received): what it sends
    /// a follower that needs compacted entries.
    pub fn snapshot(&self) -> Option<&SnapshotMeta> {
        self.snapshot.as_ref()
    }

    /// The leadership transfer in progress, if this node is a leader moving away.
    pub fn transfer_target(&self) -> Option<NodeId> {
        self.leader_state.as_ref().and_then(|l| l.transfer.map(|t| t.target))
    }

    /// Replication progress of `peer` (match index, next index), for stats.
    pub fn peer_progress(&self, peer: NodeId) -> Option<(LogIndex, LogIndex)> {
        let progress = self.leader_state.as_ref()?.progress.get(&peer)?;
        Some((progress.match_index, progress.next_index))
    }

    /// On a leader, what it knows of each other member: how far its log
    /// matches and when it last answered in this term (the inputs of a
    /// server-health rule such as Consul autopilot's). Empty elsewhere.
    pub fn peers(&self) -> Vec<PeerProgress> {
        let Some(state) = self.leader_state.as_ref() else { return Vec::new() };
        state
            .progress
            .iter()
            .map(|(id, progress)| PeerProgress {
                id: *id,
                voter: self.membership.voters.contains(id),
                match_index: progress.match_index,
                last_contact_at: progress.last_contact_at,
                staging: self.membership.is_staging(*id),
                caught_up_since: progress.caught_up_since,
            })
            .collect()
    }

    /// Takes the actions queued so far, flushing batched work (appends to peers,
    /// a heartbeat round for reads, one persist, one apply) first.
    pub fn drain_actions(&mut self) -> std::vec::Drain<'_, Action> {
        self.flush();
        #[cfg(any(test, feature = "invariants"))]
        self.assert_invariants();
        self.actions.drain(..)
    }

    /// Panics on a broken invariant (`invariants` feature and unit tests),
    /// unless a deliberate bug is on: the simulator reports those itself.
    #[cfg(any(test, feature = "invariants"))]
    fn assert_invariants(&self) {
        #[cfg(feature = "bug-injection")]
        if crate::bugs::any_enabled() {
            return;
        }
        if let Err(violation) = self.check_invariants() {
            panic!("raftkv-core invariant broken: {violation}");
        }
    }

    // ---- Inputs ----------------------------------------------------------------

    /// Advances timers: elections, heartbeats, CheckQuorum, transfer deadlines.
    pub fn handle_tick(&mut self, now: Millis) {
        self.advance_clock(now);
        if self.role == Role::Leader {
            self.tick_leader();
        } else if self.now >= self.election_deadline {
            self.handle_election_timeout();
        }
    }

    /// The persist with sequence `seq` (and every one before it) is durable.
    pub fn handle_persisted(&mut self, seq: u64) -> Result<(), InputError> {
        if seq > self.persist_seq_emitted {
            return Err(InputError {
                input: "handle_persisted",
                reason: format!("sequence {seq} was never requested (last {})", self.persist_seq_emitted),
            });
        }
        if seq <= self.persist_seq_done {
            return Ok(());
        }
        self.persist_seq_done = seq;
        let mut written = None;
        while self.persist_log_ids.front().is_some_and(|(s, _)| *s <= seq) {
            written = self.persist_log_ids.pop_front().map(|(_, id)| id);
        }
        if let Some(id) = written {
            // The disk now holds exactly the log as it was when `seq` was flushed.
            // If our log still holds that id, the two agree up to it (Log Matching).
            if id.index <= self.log.start().index || self.log.matches(id) {
                self.durable_index = id.index;
            }
            assert!(self.durable_index <= self.log.last_index(), "node {}: durable index past the log", self.id);
        }
        while self.gated.front().is_some_and(|(s, _, _)| *s <= seq) {
            if let Some((_, to, message)) = self.gated.pop_front() {
                self.actions.push(Action::Send { to, message });
            }
        }
        if self.role == Role::Candidate && self.won_awaiting_persist && self.hard_state_durable() {
            self.won_awaiting_persist = false;
            self.become_leader();
        }
        if self.role == Role::Leader {
            self.maybe_advance_commit();
        }
        Ok(())
    }

    /// Handles `message` from `from`, received at `now`. Malformed messages
    /// ([`Message::is_well_formed`]) and messages claiming to come from this
    /// node are dropped.
    pub fn handle_message(&mut self, now: Millis, from: NodeId, message: Message) {
        self.advance_clock(now);
        if from == self.id || !message.is_well_formed() {
            return;
        }
        match message {
            Message::ReadIndexRequest { term, read_id } => return self.handle_read_index_request(from, term, read_id),
            Message::ReadIndexResponse { term, read_id, index } => {
                return self.handle_read_index_response(from, term, read_id, index)
            }
            _ => {}
        }
        if !self.handle_message_term(from, &message) {
            return;
        }
        match message {
            Message::RequestVote(request) => self.handle_request_vote(from, request),
            Message::RequestVoteResponse(response) => self.handle_vote_response(from, response),
            Message::AppendEntries(request) => self.handle_append_entries(from, request),
            Message::AppendEntriesResponse(response) => self.handle_append_response(from, response),
            Message::InstallSnapshot(request) => self.handle_install_snapshot(from, request),
            Message::InstallSnapshotResponse(response) => self.handle_install_snapshot_response(from, response),
            Message::TimeoutNow { .. } => self.handle_timeout_now(from),
            Message::ReadIndexRequest { .. } | Message::ReadIndexResponse { .. } => {}
        }
    }

    // ---- Shared machinery ----------------------------------------------------------

    pub(crate) fn advance_clock(&mut self, now: Millis) {
        self.now = self.now.max(now);
    }

    pub(crate) fn reset_election_timer(&mut self) {
        let timeout = self.rng.range(self.config.election_timeout_min_ms, self.config.election_timeout_max_ms);
        self.election_deadline = self.now + timeout;
    }

    /// Whether a leader was heard from within the minimum election timeout: such a
    /// node refuses (pre-)votes unless the candidate is taking over by transfer.
    pub(crate) fn leader_recently_heard(&self) -> bool {
        match self.role {
            Role::Leader => true,
            Role::PreCandidate | Role::Candidate => false,
            Role::Follower | Role::Learner => self.vote_guard_end().is_some_and(|end| self.now < end),
        }
    }

    /// Until when this node neither votes for another nor campaigns itself:
    /// the longest election timeout it had after last hearing a leader, whose
    /// lease it may have confirmed.
    pub(crate) fn vote_guard_end(&self) -> Option<Millis> {
        self.leader_heard_at.map(|heard| heard.saturating_add(self.vote_guard_ms))
    }

    /// Records the known leader and tells the runtime when it changed (a term
    /// change without any leader on either side is not news).
    pub(crate) fn set_leader(&mut self, leader: Option<NodeId>) {
        self.leader = leader;
        let current = (leader, self.hard_state.current_term);
        let news = match self.announced_leader {
            None => leader.is_some(),
            Some((None, _)) if leader.is_none() => false,
            Some(previous) => previous != current,
        };
        if news {
            self.announced_leader = Some(current);
            self.actions.push(Action::LeaderChanged { leader, term: current.1 });
        }
    }

    pub(crate) fn mark_hard_state_dirty(&mut self) {
        self.pending_persist.hard_state = true;
    }

    /// Whether the current term and vote are on disk.
    pub(crate) fn hard_state_durable(&self) -> bool {
        !self.pending_persist.hard_state && self.hard_state_seq <= self.persist_seq_done
    }

    pub(crate) fn mark_log_dirty(&mut self, from: LogIndex) {
        let from = self.pending_persist.log_from.map_or(from, |f| f.min(from));
        self.pending_persist.log_from = Some(from);
        if from <= self.durable_index {
            self.durable_index = from.prev();
        }
    }

    /// Sends now if nothing pending needs to be durable first, else holds the
    /// message until the persist it depends on completes.
    pub(crate) fn send_after_persist(&mut self, to: NodeId, message: Message) {
        let seq = if self.pending_persist.is_empty() { self.persist_seq_emitted } else { self.persist_seq_emitted + 1 };
        if seq <= self.persist_seq_done {
            self.actions.push(Action::Send { to, message });
        } else {
            self.gated.push_back((seq, to, message));
        }
    }

    pub(crate) fn send(&mut self, to: NodeId, message: Message) {
        self.actions.push(Action::Send { to, message });
    }

    /// Appends an entry to our own log (leader) and schedules its persistence.
    pub(crate) fn append_entry(&mut self, entry: Entry) {
        let index = entry.index;
        let is_config = matches!(entry.payload, EntryPayload::Config(_));
        self.log.push(entry);
        self.mark_log_dirty(index);
        if is_config {
            self.recompute_membership();
        }
    }

    /// Emits everything batched during this round of inputs.
    fn flush(&mut self) {
        if self.role == Role::Leader {
            self.flush_leader();
        } else {
            self.forward_reads();
        }
        if !self.pending_persist.is_empty() {
            let pending = std::mem::take(&mut self.pending_persist);
            self.persist_seq_emitted += 1;
            let seq = self.persist_seq_emitted;
            let log = pending.log_from.map(|from| {
                let from = from.max(self.log.first_index());
                LogWrite { truncate_from: from, entries: self.log.slice(from, self.log.last_index()).to_vec() }
            });
            self.persist_log_ids.push_back((seq, self.log.last_log_id()));
            if pending.hard_state {
                self.hard_state_seq = seq;
            }
            self.actions.push(Action::Persist(PersistRequest {
                seq,
                hard_state: pending.hard_state.then_some(self.hard_state),
                snapshot: pending.snapshot,
                log,
            }));
        }
        self.emit_apply();
    }

    /// Hands newly committed entries to the state machine.
    pub(crate) fn emit_apply(&mut self) {
        if self.commit_index > self.apply_sent {
            let entries = self.log.slice(self.apply_sent.next(), self.commit_index).to_vec();
            self.apply_sent = self.commit_index;
            if !entries.is_empty() {
                self.actions.push(Action::Apply { entries });
            }
        }
    }

    /// Raises the commit index (it never goes down) to `index`, which the log
    /// must hold: nothing is committed that this node does not have.
    pub(crate) fn set_commit_index(&mut self, index: LogIndex) {
        if index <= self.commit_index {
            return;
        }
        assert!(
            index <= self.log.last_index(),
            "node {}: commit index {index} past the last index {}",
            self.id,
            self.log.last_index()
        );
        self.commit_index = index;
        #[cfg(feature = "bug-injection")]
        if crate::bugs::enabled(crate::bugs::InjectedBug::ConfigOnCommit) {
            self.recompute_membership();
        }
    }

    /// Replaces the timing and batching settings at runtime (heartbeat, election
    /// timeouts, lease drift, append limits). The node's identity, PreVote and
    /// CheckQuorum cannot change while it runs. A leader drops its lease and
    /// the heartbeat rounds begun under the old settings, and renews the lease
    /// with the next round; the election timer is drawn again from the new range.
    ///
    /// Lease safety across nodes whose reloads happen at different moments: a
    /// lease is never longer than the shortest `election_timeout_min − drift`
    /// this node ran with, and vote refusal after hearing a leader never
    /// shorter than the longest `election_timeout_min`, until the node
    /// restarts. Nodes started with different timeouts are not covered: lease
    /// reads need every node to start with the same `election_timeout_min`.
    pub fn reload_config(&mut self, config: CoreConfig) -> Result<(), ConfigError> {
        config.validate()?;
        let old = &self.config;
        if config.id != old.id || config.pre_vote != old.pre_vote || config.check_quorum != old.check_quorum {
            return Err(ConfigError { reason: "id, pre_vote and check_quorum cannot change while the node runs" });
        }
        self.lease_ms = self.lease_ms.min(config.election_timeout_min_ms - config.lease_clock_drift_ms);
        self.vote_guard_ms = self.vote_guard_ms.max(config.election_timeout_min_ms);
        self.config = config;
        let now = self.now;
        let heartbeat = self.config.heartbeat_interval_ms;
        if let Some(state) = self.leader_state.as_mut() {
            state.lease_start = None;
            state.round_started.clear();
            state.heartbeat_due = state.heartbeat_due.min(now + heartbeat);
        } else {
            self.reset_election_timer();
        }
        Ok(())
    }

    /// Snapshot metadata for a snapshot of the state machine after applying `index`:
    /// the configuration in force there, from the log. `None` if `index` was not
    /// yet handed out for applying or is no longer in the log.
    pub fn snapshot_meta_for(&self, index: LogIndex) -> Option<SnapshotMeta> {
        if index > self.apply_sent {
            return None;
        }
        let term = self.log.term_at(index)?;
        Some(SnapshotMeta { last_log_id: LogId::new(term, index), config: self.config_at(index) })
    }

    /// The runtime finished writing a snapshot covering `meta`; leaders stream it to
    /// followers that are behind the log's start.
    pub fn handle_snapshot_taken(&mut self, meta: SnapshotMeta) -> Result<(), InputError> {
        let id = meta.last_log_id;
        if id.index > self.apply_sent || !(id.index <= self.log.start().index || self.log.matches(id)) {
            return Err(InputError {
                input: "handle_snapshot_taken",
                reason: format!("snapshot {id} is not an applied prefix of the log (applied {})", self.apply_sent),
            });
        }
        if self.snapshot.as_ref().is_none_or(|s| s.last_log_id.index < id.index) {
            self.snapshot = Some(meta);
        }
        Ok(())
    }

    /// Forgets log entries up to `upto`, which a snapshot must cover. The runtime
    /// purges its log store to match.
    pub fn compact_log(&mut self, upto: LogIndex) -> Result<(), InputError> {
        let covered = self.snapshot.as_ref().map_or(LogIndex::ZERO, |s| s.last_log_id.index);
        if upto > covered || upto > self.apply_sent {
            return Err(InputError {
                input: "compact_log",
                reason: format!("index {upto} is beyond the snapshot ({covered}) or applied ({})", self.apply_sent),
            });
        }
        if upto <= self.log.start().index {
            return Ok(());
        }
        self.base_membership = self.config_at(upto);
        self.log.compact_to(upto);
        Ok(())
    }

    /// The configuration in force at `index` (the newest config entry at or
    /// before it, or the compaction point's).
    pub(crate) fn config_at(&self, index: LogIndex) -> Configuration {
        // `membership` is the newest config entry of the whole log (or the
        // compaction point's): at or after its index nothing newer can be in
        // force, and the scan below, through every entry since the last
        // snapshot, is not needed. Snapshots ask for the newest indexes.
        #[allow(unused_mut)]
        let mut whole_log = true;
        #[cfg(feature = "bug-injection")]
        if crate::bugs::enabled(crate::bugs::InjectedBug::ConfigOnCommit) {
            whole_log = false;
        }
        if whole_log && index >= self.membership_index {
            return self.membership.clone();
        }
        for entry in self.log.slice(self.log.first_index(), index).iter().rev() {
            if let EntryPayload::Config(config) = &entry.payload {
                return config.clone();
            }
        }
        self.base_membership.clone()
    }

    /// Recomputes the effective configuration after the log changed under it.
    pub(crate) fn recompute_membership(&mut self) {
        #[allow(unused_mut)]
        let mut upto = self.log.last_index();
        #[cfg(feature = "bug-injection")]
        if crate::bugs::enabled(crate::bugs::InjectedBug::ConfigOnCommit) {
            // The bootstrap configuration (index 1) is the same everywhere and counts
            // as committed; later ones wait for their commit.
            upto = self.commit_index.max(LogIndex(1)).min(upto);
        }
        let mut found = None;
        for entry in self.log.slice(self.log.first_index(), upto).iter().rev() {
            if let EntryPayload::Config(config) = &entry.payload {
                found = Some((config.clone(), entry.index));
                break;
            }
        }
        let (config, index) = found.unwrap_or_else(|| (self.base_membership.clone(), self.log.start().index));
        if config != self.membership || index != self.membership_index {
            self.membership = config;
            self.membership_index = index;
            if self.role == Role::Leader {
                self.sync_progress_with_membership();
            }
        }
    }
}
