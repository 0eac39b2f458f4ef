//! One seeded simulation: N cores on a simulated network with simulated disks,
//! clocks and clients, driven through faults; safety checked after every step,
//! liveness and linearizability at the end.
//!
//! Everything random comes from one `Rng` seeded by the run's seed, and every
//! collection that is iterated is ordered, so a seed replays exactly.

use std::cmp::Reverse;
use std::collections::{BTreeMap, BTreeSet, BinaryHeap, VecDeque};

use bytes::Bytes;
use raftkv_core::rng::Rng;
use raftkv_core::{
    Configuration, Core, CoreConfig, DurableState, Entry, EntryPayload, HardState, InstallSnapshot, LogId, LogIndex,
    LogWrite, MembershipChange, Message, NodeId, ReadMode, Role, SnapshotMeta, Term,
};
use raftkv_driver::{
    reconcile_steps, Applier, ApplyEffect, ApplyJob, Driver, DriverConfig, Effect, Failure, SnapshotPolicy, StoreJob,
    StoreStep,
};

use crate::checker::{kind, promoted_from_staging, state_digest, Checker, LogView};
use crate::kv::{Command, KvStore};
use crate::linearizability::{check_history, CheckResult, OpInput, OpOutput, Operation};

/// Which faults a run injects.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Faults {
    /// Drop, delay, duplicate and reorder messages.
    pub network: bool,
    /// Symmetric and one-way partitions, leader isolation.
    pub partitions: bool,
    /// Crash (losing unsynced writes, with torn tails) and restart.
    pub crashes: bool,
    pub clock_drift: bool,
    pub membership: bool,
    pub snapshots: bool,
    pub transfers: bool,
    /// `reload_config` of timing within its validation bounds.
    pub reload: bool,
    /// ENOSPC and EIO at any storage step, snapshot steps included.
    pub disk_errors: bool,
}

impl Faults {
    pub const NONE: Faults = Faults {
        network: false,
        partitions: false,
        crashes: false,
        clock_drift: false,
        membership: false,
        snapshots: false,
        transfers: false,
        reload: false,
        disk_errors: false,
    };
    pub const ALL: Faults = Faults {
        network: true,
        partitions: true,
        crashes: true,
        clock_drift: true,
        membership: true,
        snapshots: true,
        transfers: true,
        reload: true,
        disk_errors: true,
    };

    /// Parses `all`, `none`, or a comma-separated list of fault names.
    pub fn parse(text: &str) -> Result<Faults, String> {
        match text {
            "all" => return Ok(Faults::ALL),
            "none" => return Ok(Faults::NONE),
            _ => {}
        }
        let mut faults = Faults::NONE;
        for name in text.split(',') {
            match name.trim() {
                "network" => faults.network = true,
                "partitions" => faults.partitions = true,
                "crashes" => faults.crashes = true,
                "clock-drift" => faults.clock_drift = true,
                "membership" => faults.membership = true,
                "snapshots" => faults.snapshots = true,
                "transfers" => faults.transfers = true,
                "reload" => faults.reload = true,
                "disk-errors" => faults.disk_errors = true,
                other => {
                    return Err(format!(
                        "unknown fault {other:?}; expected all, none or a list of network, partitions, crashes, \
                         clock-drift, membership, snapshots, transfers, reload, disk-errors"
                    ))
                }
            }
        }
        Ok(faults)
    }
}

#[derive(Clone, Debug)]
pub struct SimConfig {
    pub seed: u64,
    pub nodes: usize,
    pub faults: Faults,
    /// Simulated time with faults on; then everything heals for the liveness phase.
    pub fault_phase_ms: u64,
    /// Bound on the time the healed cluster gets to converge.
    pub liveness_ms: u64,
    pub clients: usize,
    pub keys: u64,
    /// Print every event and action to stderr.
    pub trace: bool,
}

impl SimConfig {
    pub fn new(seed: u64, nodes: usize, faults: Faults) -> SimConfig {
        SimConfig { seed, nodes, faults, fault_phase_ms: 6_000, liveness_ms: 15_000, clients: 4, keys: 3, trace: false }
    }
}

/// What one run found.
#[derive(Clone, Debug, Default)]
pub struct Outcome {
    pub seed: u64,
    pub violations: Vec<String>,
    pub liveness_failure: Option<String>,
    /// Client operations in the history (completed or indeterminate).
    pub ops: usize,
    pub completed_ops: usize,
    pub committed_index: u64,
    pub elections: usize,
    pub snapshots_installed: usize,
    pub membership_changes: usize,
    /// `Driver::add_voter` calls the membership churn made.
    pub staged_adds: usize,
    /// Staging learners promoted by a committed single-server change.
    pub promotions: usize,
    /// Of those, promoted by another leader than the one that marked them
    /// staging (the mark handed over with the log).
    pub handoff_promotions: usize,
    /// Staged adds answered `NotCaughtUp`: removed again at their deadline.
    pub staged_timeouts: usize,
}

impl Outcome {
    pub fn failed(&self) -> bool {
        !self.violations.is_empty() || self.liveness_failure.is_some()
    }
}

const HEARTBEAT_MS: u64 = 20;
const ELECTION_MIN_MS: u64 = 150;
const ELECTION_MAX_MS: u64 = 300;
const TICK_MS: u64 = 5;
/// A node's whole-state invariants, walks along its log included, are checked
/// on start and after every this many inputs; the rest after every input.
const FULL_CHECK_EVERY: u64 = 16;
const CLIENT_TIMEOUT_MS: u64 = 800;
const SNAPSHOT_CHUNK_BYTES: usize = 48;
/// Clock rates differ by at most ±1% (10,000 parts per million).
const MAX_DRIFT_PPM: i64 = 10_000;

/// Per-seed knobs, drawn from the seed, so that seeds explore different regimes:
/// tiny appends and windows (old-term entries acknowledged one at a time), slow
/// disks, long network delays, learners from the start, crashes right after a
/// write is issued.
#[derive(Clone, Debug)]
struct Profile {
    max_entries_per_append: usize,
    max_inflight_appends: usize,
    /// Chance (per mille) that a write stalls the disk for 10–80 ms.
    slow_disk_per_mille: u64,
    /// Chance (per mille) that a crash is scheduled right after a write is issued,
    /// before it can complete.
    crash_after_write_per_mille: u64,
    max_network_delay_ms: u64,
    chaos_interval_ms: (u64, u64),
    initial_learners: usize,
    pre_vote: bool,
    check_quorum: bool,
    /// Chance (per mille) that a node crashes within moments of writing a vote.
    crash_after_vote_per_mille: u64,
    /// Chance (per mille) that a new leader crashes before it can replicate much
    /// (the setup of the paper's figure 8).
    crash_new_leader_per_mille: u64,
    /// Chance (per ten thousand) that a storage step fails (ENOSPC or EIO).
    disk_error_per_10k: u64,
    /// The promotion rule's settings (`CoreConfig`): entries a staging
    /// learner may trail by, and how long it must stay caught up.
    promotion_max_lag: u64,
    promotion_stable_ms: u64,
}

impl Profile {
    fn draw(rng: &mut Rng, faults: Faults, nodes: usize) -> Profile {
        Profile {
            max_entries_per_append: [1, 2, 8, 64][rng.range(0, 4) as usize],
            max_inflight_appends: [1, 2, 8][rng.range(0, 3) as usize],
            slow_disk_per_mille: if faults.crashes { [0, 20, 200][rng.range(0, 3) as usize] } else { 0 },
            crash_after_write_per_mille: if faults.crashes { [0, 5, 30][rng.range(0, 3) as usize] } else { 0 },
            max_network_delay_ms: if faults.network { [5, 30, 120][rng.range(0, 3) as usize] } else { 3 },
            chaos_interval_ms: [(50, 300), (100, 600), (300, 1200)][rng.range(0, 3) as usize],
            initial_learners: if faults.membership && nodes >= 4 && rng.chance(1, 3) { nodes - 3 } else { 0 },
            pre_vote: !rng.chance(1, 4),
            check_quorum: !rng.chance(1, 4),
            crash_after_vote_per_mille: if faults.crashes { [0, 100, 400][rng.range(0, 3) as usize] } else { 0 },
            crash_new_leader_per_mille: if faults.crashes { [0, 200, 500][rng.range(0, 3) as usize] } else { 0 },
            disk_error_per_10k: if faults.disk_errors { [0, 0, 5, 30][rng.range(0, 4) as usize] } else { 0 },
            promotion_max_lag: draw_promotion_max_lag(rng),
            promotion_stable_ms: rng.range(ELECTION_MAX_MS, MAX_PROMOTION_STABLE_MS + 1),
        }
    }
}

/// The longest stable period drawn: promotions must fit in the fault phase
/// and the convergence window.
const MAX_PROMOTION_STABLE_MS: u64 = 3_000;

/// One entry (every write breaks it), a few, or one full append (the default).
fn draw_promotion_max_lag(rng: &mut Rng) -> u64 {
    [1, 16, 512][rng.range(0, 3) as usize]
}

#[derive(Debug)]
enum Event {
    Tick(usize),
    Deliver {
        from: NodeId,
        to: NodeId,
        message: Message,
    },
    /// The log writer finished the store jobs up to `job`.
    PersistDone {
        node: usize,
        incarnation: u64,
        job: u64,
    },
    /// The state machine's check of the snapshot received as `serial` ended.
    SnapshotChecked {
        node: usize,
        incarnation: u64,
        serial: u64,
    },
    /// A captured state was written to the snapshot store (or failed to be).
    SnapshotWritten {
        node: usize,
        incarnation: u64,
        index: LogIndex,
        meta: SnapshotMeta,
    },
    ClientIssue(usize),
    /// A client's request reaches its node.
    ClientRequest {
        client: usize,
        node: usize,
        op_id: u64,
        key: u64,
        input: OpInput,
        mode: ReadMode,
    },
    /// The node stops (SIGSTOP, a long GC pause) until `until`.
    Pause {
        node: usize,
        until: u64,
    },
    Crash(usize),
    ClientTimeout {
        client: usize,
        op_id: u64,
    },
    Chaos,
    Restart(usize),
}

struct Disk {
    hard_state: HardState,
    snapshot: Option<(SnapshotMeta, Bytes)>,
    /// Entries held, contiguous (some may lie at or below the snapshot).
    log: Vec<Entry>,
    /// Where an empty log continues: one past the last purge.
    next_when_empty: LogIndex,
}

/// Received snapshots not committed yet, by serial: their meta and bytes.
type Sinks = BTreeMap<u64, (SnapshotMeta, Bytes)>;

/// Store jobs handed to the log writer and not done yet, with the received
/// snapshots they commit: a crash runs a prefix of their steps.
struct Queued {
    number: u64,
    job: StoreJob,
    sinks: Sinks,
}

impl Disk {
    fn last_index(&self) -> LogIndex {
        self.log.last().map_or(self.next_when_empty.prev(), |e| e.index)
    }

    fn first_index(&self) -> LogIndex {
        self.log.first().map_or(self.next_when_empty, |e| e.index)
    }

    fn term_at(&self, index: LogIndex) -> Option<Term> {
        let first = self.log.first()?.index;
        self.log.get(index.0.checked_sub(first.0)? as usize).map(|e| e.term)
    }

    fn truncate_from(&mut self, from: LogIndex) {
        if from <= self.last_index() {
            self.log.retain(|entry| entry.index < from);
            if self.log.is_empty() {
                self.next_when_empty = from;
            }
        }
    }

    /// Runs one store step as the log writer does; `Err` if the writer would
    /// refuse it (a runtime bug, never a fault).
    fn run(&mut self, step: &StoreStep, sinks: &Sinks) -> Result<(), String> {
        match step {
            StoreStep::CutDisagreeing(at) => {
                if self.last_index() >= at.index && self.term_at(at.index) != Some(at.term) {
                    self.truncate_from(at.index.max(self.first_index()));
                }
            }
            StoreStep::CommitReceived { serial } => {
                let Some((meta, data)) = sinks.get(serial) else {
                    return Err(format!("commit of received snapshot {serial}, which is not held"));
                };
                // The store lists the newest first; an older one never replaces it.
                let newer = self.snapshot.as_ref().is_none_or(|(held, _)| held.last_log_id <= meta.last_log_id);
                if newer {
                    self.snapshot = Some((meta.clone(), data.clone()));
                }
            }
            StoreStep::Purge(upto) => {
                self.log.retain(|entry| entry.index > *upto);
                if self.log.is_empty() {
                    self.next_when_empty = self.next_when_empty.max(upto.next());
                }
            }
            StoreStep::Write(write) => {
                self.truncate_from(write.truncate_from);
                if let Some(first) = write.entries.first() {
                    let expected = self.last_index().next();
                    if first.index != expected {
                        return Err(format!("append at {} where the log continues at {expected}", first.index));
                    }
                    self.log.extend(write.entries.iter().cloned());
                }
            }
            StoreStep::HardState(state) => self.hard_state = *state,
        }
        Ok(())
    }
}

/// Who waits for an answer from a node's driver.
#[derive(Clone, Copy, Debug)]
enum SimReply {
    Client {
        client: usize,
        op_id: u64,
        key: u64,
    },
    /// Membership changes and transfers the chaos asks for: nobody waits.
    Admin,
    /// A staged add (`Driver::add_voter`) of `id`, the churn's call `call`.
    StagedAdd {
        id: NodeId,
        call: u64,
    },
}

/// A staged add the churn asked of a leader, and its answer.
struct StagedCall {
    id: NodeId,
    node: usize,
    /// The leader's configuration index when called: what decides the call
    /// commits after it.
    from: LogIndex,
    answer: Option<StagedAnswer>,
}

#[derive(Clone, Debug)]
enum StagedAnswer {
    /// Promoted, or a voter already, by the configuration at this index.
    Done(LogIndex),
    Failed(Failure),
    /// Its node went down with the call pending (as `Stopped`: unknown).
    Lost,
}

struct SimNode {
    id: NodeId,
    driver: Option<Driver<SimReply>>,
    applier: Option<Applier<SimReply>>,
    incarnation: u64,
    clock_rate_ppm: i64,
    clock_offset_ms: u64,
    disk: Disk,
    /// Store jobs not done yet, in order.
    queued: VecDeque<Queued>,
    next_job: u64,
    kv: KvStore,
    /// Snapshots being received from the leader (uncommitted sinks), by serial.
    receiving: BTreeMap<u64, (SnapshotMeta, Vec<u8>)>,
    /// Captured states waiting to be written, by index.
    captures: BTreeMap<LogIndex, Bytes>,
    /// Snapshots this node can send, by last index.
    snapshots: BTreeMap<LogIndex, Bytes>,
    /// Last completion time of a write: writes complete in order.
    disk_busy_until: u64,
    /// A paused node processes nothing before this time.
    paused_until: u64,
    /// Inputs handled since the last full check of the core's invariants.
    inputs_since_full_check: u64,
}

impl SimNode {
    fn core(&self) -> Option<&Core> {
        self.driver.as_ref().map(|d| d.core())
    }
}

impl SimNode {
    /// What this node's clock shows at simulated time `now`.
    fn local_time(&self, now: u64) -> u64 {
        let scaled = (now as i128 * (1_000_000 + self.clock_rate_ppm as i128) / 1_000_000) as u64;
        self.clock_offset_ms + scaled
    }
}

struct Client {
    busy: Option<u64>,
    preferred: usize,
}

pub struct Simulation {
    cfg: SimConfig,
    rng: Rng,
    now: u64,
    seq: u64,
    queue: BinaryHeap<Reverse<(u64, u64)>>,
    events: BTreeMap<u64, Event>,
    nodes: Vec<SimNode>,
    blocked: BTreeSet<(NodeId, NodeId)>,
    drop_per_mille: u64,
    duplicate_per_mille: u64,
    delay_ms: (u64, u64),
    clients: Vec<Client>,
    history: BTreeMap<u64, Operation>,
    next_op_id: u64,
    next_value: u64,
    max_acked_index: LogIndex,
    faults_on: bool,
    pub checker: Checker,
    outcome: Outcome,
    snapshot_policy: SnapshotPolicy,
    trailing_entries: u64,
    profile: Profile,
    /// Staged adds by call number.
    staged_calls: BTreeMap<u64, StagedCall>,
    /// Committed configurations by index, with their entry's term: each is
    /// recorded when first applied anywhere, which is in index order (a node
    /// applies in order, and a snapshot it installs was captured by one that
    /// applied everything it covers).
    committed_configs: BTreeMap<LogIndex, (Term, Configuration)>,
    /// Each staging learner of the newest committed configuration, with the
    /// term of the entry that marked it.
    staged_in_term: BTreeMap<NodeId, Term>,
}

impl Simulation {
    pub fn new(cfg: SimConfig) -> Simulation {
        let mut rng = Rng::new(cfg.seed ^ 0x005E_ED0F_5A11);
        let profile = Profile::draw(&mut rng, cfg.faults, cfg.nodes);
        let ids: Vec<NodeId> = (1..=cfg.nodes as u64).map(NodeId).collect();
        let voter_count = cfg.nodes - profile.initial_learners;
        let mut initial = Configuration::new(ids[..voter_count].iter().copied());
        initial.learners = ids[voter_count..].iter().copied().collect();
        let mut nodes = Vec::new();
        for id in &ids {
            let mut durable = DurableState::bootstrap([]);
            durable.entries[0].payload = EntryPayload::Config(initial.clone());
            let clock_rate_ppm = if cfg.faults.clock_drift {
                rng.range(0, 2 * MAX_DRIFT_PPM as u64 + 1) as i64 - MAX_DRIFT_PPM
            } else {
                0
            };
            nodes.push(SimNode {
                id: *id,
                driver: None,
                applier: None,
                incarnation: 0,
                clock_rate_ppm,
                clock_offset_ms: rng.range(0, 10_000),
                disk: Disk {
                    hard_state: durable.hard_state,
                    snapshot: None,
                    log: durable.entries,
                    next_when_empty: LogIndex(1),
                },
                queued: VecDeque::new(),
                next_job: 0,
                kv: KvStore::default(),
                receiving: BTreeMap::new(),
                captures: BTreeMap::new(),
                snapshots: BTreeMap::new(),
                disk_busy_until: 0,
                paused_until: 0,
                inputs_since_full_check: 0,
            });
        }
        let (snapshot_threshold, trailing_entries) =
            if cfg.faults.snapshots { (rng.range(8, 40), rng.range(0, 10)) } else { (u64::MAX, 0) };
        let clients = (0..cfg.clients).map(|i| Client { busy: None, preferred: i % cfg.nodes }).collect();
        let mut sim = Simulation {
            rng,
            now: 0,
            seq: 0,
            queue: BinaryHeap::new(),
            events: BTreeMap::new(),
            nodes,
            blocked: BTreeSet::new(),
            drop_per_mille: 0,
            duplicate_per_mille: 0,
            delay_ms: (1, 3),
            clients,
            history: BTreeMap::new(),
            next_op_id: 1,
            next_value: 1,
            max_acked_index: LogIndex::ZERO,
            faults_on: true,
            checker: Checker::default(),
            outcome: Outcome { seed: cfg.seed, ..Outcome::default() },
            // No interval: captures as eager as the policy allows. (A capture
            // refused because a newer snapshot was installed under it, its
            // restore still queued, was once retried at once, forever: seed
            // 29986 on 3 nodes.)
            snapshot_policy: SnapshotPolicy { threshold: snapshot_threshold, interval_ms: 0, log_bytes: u64::MAX },
            trailing_entries,
            profile,
            staged_calls: BTreeMap::new(),
            committed_configs: BTreeMap::new(),
            staged_in_term: BTreeMap::new(),
            cfg,
        };
        if sim.cfg.faults.network {
            sim.randomize_network();
        }
        for node in 0..sim.nodes.len() {
            sim.start_node(node);
            let first_tick = sim.rng.range(1, TICK_MS + 1);
            sim.schedule(first_tick, Event::Tick(node));
        }
        for client in 0..sim.clients.len() {
            let start = sim.rng.range(50, 400);
            sim.schedule(start, Event::ClientIssue(client));
        }
        let chaos = sim.rng.range(sim.profile.chaos_interval_ms.0, sim.profile.chaos_interval_ms.1);
        sim.schedule(chaos, Event::Chaos);
        sim
    }

    /// Runs the fault phase, heals, checks liveness and linearizability.
    pub fn run(mut self) -> Outcome {
        let fault_end = self.cfg.fault_phase_ms;
        self.run_until(fault_end);
        self.heal_everything();
        let deadline = fault_end + self.cfg.liveness_ms;
        let mut converged = false;
        while self.now < deadline && self.checker.violations.is_empty() {
            let next = (self.now + 100).min(deadline);
            self.run_until(next);
            if self.converged().is_ok() {
                converged = true;
                break;
            }
        }
        if !converged && self.checker.violations.is_empty() {
            let reason = self.converged().err().unwrap_or_default();
            self.outcome.liveness_failure =
                Some(format!("not converged {} ms after healing at t={fault_end}ms: {reason}", self.cfg.liveness_ms));
        }
        if converged && self.checker.violations.is_empty() {
            self.check_staged_calls();
        }
        self.finish()
    }

    fn finish(mut self) -> Outcome {
        let history: Vec<Operation> = self.history.values().cloned().collect();
        self.outcome.ops = history.len();
        self.outcome.completed_ops = history.iter().filter(|op| op.output.is_some()).count();
        self.outcome.committed_index = self.checker.max_applied_index().0;
        match check_history(&history) {
            CheckResult::Linearizable => {}
            CheckResult::NotLinearizable { key, ops } => {
                let mut text = format!("{}: history of key {key} has no linearization:", kind::LINEARIZABILITY);
                for op in ops {
                    text.push_str(&format!(
                        "\n    op {} client {} {:?} -> {:?} [{}, {}]",
                        op.id,
                        op.client,
                        op.input,
                        op.output,
                        op.invoke,
                        op.complete.map_or("?".to_string(), |t| t.to_string())
                    ));
                }
                self.checker.violations.push(text);
            }
            CheckResult::Unknown { key } => {
                let text = format!("{}: check of key {key} exceeded its budget", kind::LINEARIZABILITY);
                self.checker.violations.push(text);
            }
        }
        self.outcome.violations = std::mem::take(&mut self.checker.violations);
        self.outcome
    }

    pub fn run_until(&mut self, until: u64) {
        while let Some(Reverse((time, seq))) = self.queue.peek().copied() {
            if time > until || !self.checker.violations.is_empty() {
                break;
            }
            self.queue.pop();
            let Some(event) = self.events.remove(&seq) else { continue };
            self.now = time;
            self.handle_event(event);
            self.check_all();
        }
        self.now = self.now.max(until);
    }

    fn schedule(&mut self, delay: u64, event: Event) {
        self.seq += 1;
        self.queue.push(Reverse((self.now + delay, self.seq)));
        self.events.insert(self.seq, event);
    }

    fn trace(&self, text: impl FnOnce() -> String) {
        if self.cfg.trace {
            eprintln!("[{:>6}ms] {}", self.now, text());
        }
    }

    fn local_now(&self, node: usize) -> u64 {
        self.nodes[node].local_time(self.now)
    }

    fn core_config(&self, id: NodeId) -> CoreConfig {
        let mut config = CoreConfig::new(id);
        config.heartbeat_interval_ms = HEARTBEAT_MS;
        config.election_timeout_min_ms = ELECTION_MIN_MS;
        config.election_timeout_max_ms = ELECTION_MAX_MS;
        config.max_inflight_appends = self.profile.max_inflight_appends;
        config.max_entries_per_append = self.profile.max_entries_per_append;
        config.max_bytes_per_append = 4096;
        // Leader slow by 1% and follower fast by 1% over 150 ms: 3 ms; keep a margin.
        config.lease_clock_drift_ms = 10;
        config.pre_vote = self.profile.pre_vote;
        config.check_quorum = self.profile.check_quorum;
        config.promotion_max_lag = self.profile.promotion_max_lag;
        config.promotion_stable_ms = self.profile.promotion_stable_ms;
        config
    }

    // ---- Nodes -------------------------------------------------------------------

    fn start_node(&mut self, node: usize) {
        let id = self.nodes[node].id;
        let config = self.core_config(id);
        let now = self.local_now(node);
        let seed = self.rng.next_u64();
        let n = &mut self.nodes[node];
        n.incarnation += 1;
        let snapshot_meta = n.disk.snapshot.as_ref().map(|(meta, _)| meta.clone());
        // Start-up repairs the log behind the snapshot as the runtime does.
        if let Some(meta) = &snapshot_meta {
            let (first, last) = (n.disk.first_index(), n.disk.last_index());
            let disk = &n.disk;
            let steps = reconcile_steps(meta.last_log_id, first, last, |index| disk.term_at(index));
            for step in &steps {
                if let Err(error) = n.disk.run(step, &BTreeMap::new()) {
                    self.checker.violations.push(format!("node {id} cannot repair its log on start: {error}"));
                    return;
                }
            }
        }
        let snapshot_index = snapshot_meta.as_ref().map_or(LogIndex::ZERO, |m| m.last_log_id.index);
        n.kv = match &n.disk.snapshot {
            Some((_, data)) => KvStore::decode_snapshot(data).unwrap_or_default(),
            None => KvStore::default(),
        };
        n.snapshots.clear();
        if let Some((meta, data)) = &n.disk.snapshot {
            n.snapshots.insert(meta.last_log_id.index, data.clone());
        }
        let durable = DurableState {
            hard_state: n.disk.hard_state,
            snapshot: snapshot_meta,
            entries: n.disk.log.iter().filter(|e| e.index > snapshot_index).cloned().collect(),
        };
        let hard_state = durable.hard_state;
        match Core::new(config, durable, now, seed) {
            Ok(core) => {
                let driver_config = DriverConfig {
                    trailing_logs: self.trailing_entries,
                    check_snapshots: true,
                    transfer_wait_ms: ELECTION_MIN_MS + ELECTION_MAX_MS,
                    read_id_seed: seed.rotate_left(29),
                };
                let mut driver = Driver::new(core, driver_config);
                // Odd ids run the observation code (a runtime does when
                // someone observes), even ids the default without it.
                driver.set_observing(id.0 % 2 == 1);
                n.driver = Some(driver);
                n.applier = Some(Applier::new(snapshot_index, self.snapshot_policy, seed, now));
            }
            Err(error) => {
                let text = format!("node {id} cannot restart from its disk: {error}");
                self.checker.violations.push(text);
                return;
            }
        }
        self.checker.on_restart(id, hard_state);
        self.nodes[node].inputs_since_full_check = FULL_CHECK_EVERY;
        self.check_core_invariants(node);
        self.observe_state(node, "restarted from its snapshot");
        self.trace(|| format!("n{id} started (incarnation {})", self.nodes[node].incarnation));
    }

    /// The process dies: the writer had run some of the queued store steps,
    /// the next one may be torn; nothing in memory survives.
    fn crash_node(&mut self, node: usize) {
        let id = self.nodes[node].id;
        if self.nodes[node].driver.is_none() {
            return;
        }
        let (steps, _, sinks) = self.take_store_jobs(node, u64::MAX);
        let survive = self.rng.range(0, steps.len() as u64 + 1) as usize;
        let mut torn = None;
        if let Some(StoreStep::Write(write)) = steps.get(survive) {
            let keep = self.rng.range(0, write.entries.len() as u64 + 1) as usize;
            torn = Some(StoreStep::Write(LogWrite {
                truncate_from: write.truncate_from,
                entries: write.entries[..keep].to_vec(),
            }));
        }
        let total = steps.len();
        for step in steps.iter().take(survive).chain(torn.iter()) {
            self.run_step(node, step, &sinks);
        }
        self.go_down(node);
        self.trace(|| format!("n{id} crashed ({survive} of {total} queued store steps done)"));
    }

    /// The queued store jobs up to `number`, merged as the log writer merges
    /// what queued while it was busy, with the received snapshots they commit.
    fn take_store_jobs(&mut self, node: usize, number: u64) -> (Vec<StoreStep>, Option<u64>, Sinks) {
        let mut jobs = Vec::new();
        let mut sinks = BTreeMap::new();
        while self.nodes[node].queued.front().is_some_and(|q| q.number <= number) {
            let Some(q) = self.nodes[node].queued.pop_front() else { break };
            sinks.extend(q.sinks);
            jobs.push(q.job);
        }
        let (steps, seq) = StoreJob::merge(jobs);
        (steps, seq, sinks)
    }

    /// Runs a store step on the node's disk, telling the checker what became durable.
    fn run_step(&mut self, node: usize, step: &StoreStep, sinks: &Sinks) {
        let id = self.nodes[node].id;
        if let Err(error) = self.nodes[node].disk.run(step, sinks) {
            self.checker.violations.push(format!("node {id}: the log writer refuses a step: {error}"));
        }
        if let StoreStep::HardState(state) = step {
            self.checker.on_hard_state_persisted(self.now, id, *state);
        } else if let Some(snapshot) = self.nodes[node].disk.snapshot.as_ref().map(|(meta, _)| meta.last_log_id) {
            // Judge what a restart would work with: the log after start-up's repair.
            let disk = &self.nodes[node].disk;
            let (first, mut last) = (disk.first_index(), disk.last_index());
            let mut purged = LogIndex::ZERO;
            for step in reconcile_steps(snapshot, first, last, |index| disk.term_at(index)) {
                match step {
                    StoreStep::Write(write) => last = last.min(write.truncate_from.prev()),
                    StoreStep::Purge(upto) => purged = purged.max(upto),
                    _ => {}
                }
            }
            let term_at = |index: LogIndex| (index > purged && index <= last).then(|| disk.term_at(index)).flatten();
            self.checker.on_disk_changed(self.now, id, Some(snapshot), term_at);
        }
    }

    /// The node's process is gone (crash or fail-stop): only its disk remains.
    fn go_down(&mut self, node: usize) {
        // Staged adds its driver still held are gone with it (their apply
        // work too): unknown, as `Stopped` would have said.
        for call in self.staged_calls.values_mut() {
            if call.node == node && call.answer.is_none() {
                call.answer = Some(StagedAnswer::Lost);
            }
        }
        let n = &mut self.nodes[node];
        n.driver = None;
        n.applier = None;
        n.incarnation += 1;
        n.queued.clear();
        n.receiving.clear();
        n.captures.clear();
    }

    /// A storage step failed: the node stops, answers what it can, and its
    /// supervisor restarts it later.
    fn fail_stop(&mut self, node: usize) {
        let id = self.nodes[node].id;
        let Some(driver) = self.nodes[node].driver.as_mut() else { return };
        let reason = driver.failure().unwrap_or("stopped").to_string();
        let effects = driver.stop();
        for effect in effects {
            self.execute(node, effect);
        }
        self.go_down(node);
        self.trace(|| format!("n{id} fail-stopped: {reason}"));
        let down = self.rng.range(1, 300);
        self.schedule(down, Event::Restart(node));
    }

    /// Hands `node`'s driver one input, carries out what follows, and checks
    /// the core's invariants on the state it was left in.
    fn with_driver<R>(&mut self, node: usize, f: impl FnOnce(&mut Driver<SimReply>) -> R) -> Option<R> {
        self.drive(node, false, f)
    }

    /// `with_driver`; `tick` says the input is a tick, which the checker
    /// observed the leader before (`Checker::before_leader_tick`). What the
    /// input appended is judged before its effects run: they may hand the
    /// node further inputs.
    fn drive<R>(&mut self, node: usize, tick: bool, f: impl FnOnce(&mut Driver<SimReply>) -> R) -> Option<R> {
        let result = self.nodes[node].driver.as_mut().map(f);
        if result.is_some() {
            if let Some(core) = self.nodes[node].core() {
                self.checker.after_input(self.now, core, tick);
            }
            self.run_effects(node);
            self.check_core_invariants(node);
        }
        result
    }

    /// The core's invariants after an input: the per-step ones every time,
    /// all of them every `FULL_CHECK_EVERY` inputs.
    fn check_core_invariants(&mut self, node: usize) {
        let n = &mut self.nodes[node];
        n.inputs_since_full_check += 1;
        let full = n.inputs_since_full_check >= FULL_CHECK_EVERY;
        if full {
            n.inputs_since_full_check = 0;
        }
        if let Some(core) = n.core() {
            self.checker.check_core_invariants(self.now, core, full);
        }
    }

    /// Carries out the driver's effects until it has none, as the runtime does.
    fn run_effects(&mut self, node: usize) {
        loop {
            let Some(driver) = self.nodes[node].driver.as_mut() else { return };
            let effects: Vec<Effect<SimReply>> = driver.effects().collect();
            let failed = driver.failure().is_some();
            if effects.is_empty() && !failed {
                return;
            }
            for effect in effects {
                self.execute(node, effect);
            }
            if self.nodes[node].driver.as_ref().is_some_and(|d| d.failure().is_some()) {
                return self.fail_stop(node);
            }
        }
    }

    fn execute(&mut self, node: usize, effect: Effect<SimReply>) {
        let id = self.nodes[node].id;
        match effect {
            Effect::Store(job) => self.queue_store_job(node, job),
            Effect::Send { to, messages } => {
                for message in messages {
                    self.send(id, to, message);
                }
            }
            Effect::Apply(job) => self.apply_job(node, job),
            Effect::Fail { reply, failure } => self.answer_failure(reply, failure),
            Effect::AlreadyDone { reply: SimReply::StagedAdd { id, call }, index } => {
                // Answered at once, from the configuration in force.
                let in_force = self.nodes[node].core().map(|core| {
                    let voter = core.membership().voters.contains(&id);
                    (voter, core.membership_index(), core.commit_index())
                });
                if !in_force.is_some_and(|(voter, at, commit)| voter && at == index && index <= commit) {
                    let text = format!(
                        "node {id} was found a voter already at {index} on n{id_at}, whose configuration in force \
                         (voter, index, commit) is {in_force:?}",
                        id_at = self.nodes[node].id
                    );
                    self.checker.violation(self.now, kind::STAGED_ADD, text);
                }
                self.answer_staged(call, StagedAnswer::Done(index));
            }
            Effect::TransferStarted { .. }
            | Effect::AlreadyLeads { .. }
            | Effect::AlreadyDone { .. }
            | Effect::SnapshotTaken { .. } => {}
            Effect::LeaderChanged(info) => {
                if info.leader == Some(id) {
                    self.outcome.elections += 1;
                    if self.faults_on && self.rng.chance(self.profile.crash_new_leader_per_mille, 1000) {
                        let at = self.rng.range(0, 5 * HEARTBEAT_MS);
                        self.schedule(at, Event::Crash(node));
                    }
                }
                self.trace(|| format!("n{id} sees leader {:?} in term {}", info.leader, info.term));
            }
            Effect::ReadChunk { to, term, meta, offset } => {
                let Some(data) = self.nodes[node].snapshots.get(&meta.last_log_id.index).cloned() else {
                    self.trace(|| format!("n{id} has no snapshot {} to send", meta.last_log_id));
                    return;
                };
                let start = (offset as usize).min(data.len());
                let end = (start + SNAPSHOT_CHUNK_BYTES).min(data.len());
                let chunk =
                    InstallSnapshot { term, meta, offset, data: data.slice(start..end), done: end == data.len() };
                if let Some(driver) = self.nodes[node].driver.as_mut() {
                    driver.chunk_read(to, Message::InstallSnapshot(chunk));
                }
            }
            Effect::ReceiveStart { serial, meta } => {
                self.nodes[node].receiving.insert(serial, (meta, Vec::new()));
            }
            Effect::ReceiveChunk { serial, data, done } => {
                let n = &mut self.nodes[node];
                let Some((_, buffer)) = n.receiving.get_mut(&serial) else {
                    self.checker.violations.push(format!("node {id} was told to write to a snapshot it does not hold"));
                    return;
                };
                buffer.extend_from_slice(&data);
                if done {
                    let incarnation = n.incarnation;
                    let delay = self.rng.range(0, 4);
                    self.schedule(delay, Event::SnapshotChecked { node, incarnation, serial });
                }
            }
            Effect::DiscardReceived { serial, refused } => {
                self.nodes[node].receiving.remove(&serial);
                if let Some(reason) = refused {
                    self.trace(|| format!("n{id} refused received snapshot {serial}: {reason}"));
                }
            }
            Effect::WriteSnapshot { index, meta } => {
                let incarnation = self.nodes[node].incarnation;
                let delay = self.rng.range(1, 6);
                self.schedule(delay, Event::SnapshotWritten { node, incarnation, index, meta });
            }
            Effect::DropCapture { index } => {
                self.nodes[node].captures.remove(&index);
            }
            Effect::Observed(observed) => self.trace(|| format!("n{id} observes {observed:?}")),
        }
    }

    /// Hands a store job to the simulated log writer: jobs finish in order,
    /// after the disk's latency; a crash meanwhile runs a prefix of them.
    fn queue_store_job(&mut self, node: usize, job: StoreJob) {
        let id = self.nodes[node].id;
        let mut sinks = BTreeMap::new();
        for step in &job.steps {
            match step {
                StoreStep::Write(write) => {
                    let prev_term =
                        self.nodes[node].core().and_then(|c| c.term_at(write.truncate_from.prev())).unwrap_or(Term(0));
                    self.checker.on_entries_written(self.now, id, prev_term, &write.entries);
                }
                StoreStep::CommitReceived { serial } => match self.nodes[node].receiving.remove(serial) {
                    Some((meta, data)) => {
                        sinks.insert(*serial, (meta, Bytes::from(data)));
                    }
                    None => {
                        let text = format!("node {id} must commit received snapshot {serial}, which it does not hold");
                        self.checker.violations.push(text);
                    }
                },
                _ => {}
            }
        }
        self.trace(|| {
            format!("n{id} store job {:?}: {:?}", job.seq, job.steps.iter().map(describe_step).collect::<Vec<_>>())
        });
        let mut latency = self.rng.range(1, 4);
        if self.rng.chance(self.profile.slow_disk_per_mille, 1000) {
            latency += self.rng.range(10, 80);
        }
        let votes = job.steps.iter().any(|s| matches!(s, StoreStep::HardState(hs) if hs.voted_for.is_some()));
        let crash_chance =
            if votes { self.profile.crash_after_vote_per_mille } else { self.profile.crash_after_write_per_mille };
        if self.faults_on && self.rng.chance(crash_chance, 1000) {
            let at = self.rng.range(0, latency + 1);
            self.schedule(at, Event::Crash(node));
        }
        let n = &mut self.nodes[node];
        let done_at = n.disk_busy_until.max(self.now + latency);
        n.disk_busy_until = done_at;
        n.next_job += 1;
        let (incarnation, number) = (n.incarnation, n.next_job);
        n.queued.push_back(Queued { number, job, sinks });
        self.schedule(done_at - self.now, Event::PersistDone { node, incarnation, job: number });
    }

    /// The writer runs the jobs up to `number` as one merged batch; a step may
    /// fail (ENOSPC, EIO), after which nothing later runs and the node stops.
    fn finish_store_jobs(&mut self, node: usize, number: u64) {
        let (steps, seq, sinks) = self.take_store_jobs(node, number);
        for step in &steps {
            if self.faults_on && self.rng.chance(self.profile.disk_error_per_10k, 10_000) {
                // EIO may leave the write on disk after all; ENOSPC never does.
                let eio = self.rng.chance(1, 2);
                if eio && self.rng.chance(1, 2) {
                    self.run_step(node, step, &sinks);
                }
                let what = if eio { "EIO" } else { "ENOSPC" };
                let reason = format!("storage failed: {what} at {}", describe_step(step));
                if let Some(driver) = self.nodes[node].driver.as_mut() {
                    driver.fail(reason);
                }
                return self.run_effects(node);
            }
            self.run_step(node, step, &sinks);
        }
        if let Some(seq) = seq {
            self.with_driver(node, |driver| driver.persisted(seq));
        }
    }

    /// Work for the apply side, carried out at once (the state machine is quick).
    fn apply_job(&mut self, node: usize, job: ApplyJob<SimReply>) {
        let id = self.nodes[node].id;
        let now = self.local_now(node);
        match job {
            ApplyJob::Batch { entries, mut replies } => {
                // Several callers may wait on one index (those of one staged
                // add): answer each, in the order given.
                replies.sort_by_key(|(index, _)| *index);
                let mut replies = replies.into_iter().peekable();
                let last = entries.last().map(|e| e.index);
                let mut bytes = 0;
                for entry in entries {
                    bytes += entry.size_bytes() as u64;
                    let index = entry.index;
                    let answered = replies.peek().is_some_and(|(at, _)| *at == index);
                    let config = match &entry.payload {
                        EntryPayload::Config(config) if answered => Some(config.clone()),
                        _ => None,
                    };
                    let result = self.apply_entry(node, entry);
                    while let Some((_, reply)) = replies.next_if(|(at, _)| *at == index) {
                        self.answer_write(reply, index, result.as_ref(), config.as_ref());
                    }
                }
                for (index, reply) in replies {
                    let text = format!("n{id} was told to answer {reply:?} at {index}, outside its batch to apply");
                    match reply {
                        SimReply::StagedAdd { .. } => self.checker.violation(self.now, kind::STAGED_ADD, text),
                        _ => self.checker.violations.push(text),
                    }
                }
                if let (Some(last), Some(applier)) = (last, self.nodes[node].applier.as_mut()) {
                    applier.applied(last, bytes);
                }
            }
            ApplyJob::Read { index, reply } => {
                if let Some(applier) = self.nodes[node].applier.as_mut() {
                    applier.read(index, reply);
                }
            }
            ApplyJob::Restore { meta } => {
                let n = &mut self.nodes[node];
                let restored = match &n.disk.snapshot {
                    Some((stored, data)) if *stored == meta => {
                        KvStore::decode_snapshot(data).map(|kv| (kv, data.clone()))
                    }
                    _ => Err("the snapshot to restore is not the one stored".to_string()),
                };
                match restored {
                    Ok((kv, data)) if kv.applied == meta.last_log_id.index => {
                        n.kv = kv;
                        n.snapshots.insert(meta.last_log_id.index, data);
                        if let Some(applier) = n.applier.as_mut() {
                            applier.restored(meta.last_log_id.index);
                        }
                        self.outcome.snapshots_installed += 1;
                        self.trace(|| format!("n{id} restored snapshot {}", meta.last_log_id));
                        self.observe_state(node, "restored a snapshot");
                    }
                    Ok((kv, _)) => self.checker.violations.push(format!(
                        "node {id}: snapshot {} holds state applied through {}",
                        meta.last_log_id, kv.applied
                    )),
                    Err(error) => {
                        self.checker.violations.push(format!("node {id}: restore {}: {error}", meta.last_log_id))
                    }
                }
            }
            ApplyJob::SnapshotFinished { taken } => {
                if let Some(applier) = self.nodes[node].applier.as_mut() {
                    applier.snapshot_finished(taken, now);
                }
            }
            ApplyJob::Snapshot { reply } => {
                if let Some(applier) = self.nodes[node].applier.as_mut() {
                    applier.request_snapshot(reply);
                }
            }
            ApplyJob::Policy(policy) => {
                if let Some(applier) = self.nodes[node].applier.as_mut() {
                    applier.set_policy(policy, now);
                }
            }
        }
        self.poll_applier(node);
    }

    /// Carries out the apply side's decisions: reads released, captures taken.
    fn poll_applier(&mut self, node: usize) {
        let now = self.local_now(node);
        let Some(applier) = self.nodes[node].applier.as_mut() else { return };
        applier.poll(now);
        let effects: Vec<ApplyEffect<SimReply>> = applier.drain().collect();
        for effect in effects {
            match effect {
                ApplyEffect::ReadReady { reply, .. } => {
                    if let SimReply::Client { client, op_id, key } = reply {
                        let value = self.nodes[node].kv.get(key);
                        self.complete_op(client, op_id, OpOutput::Get { value });
                    }
                }
                ApplyEffect::Capture { index, waiters } => {
                    let data = self.nodes[node].kv.encode_snapshot();
                    self.nodes[node].captures.insert(index, data);
                    self.with_driver(node, |driver| driver.snapshot_captured(index, waiters));
                }
                ApplyEffect::SnapshotTaken { .. } => {}
                ApplyEffect::Fail { reply, failure } => self.answer_failure(reply, failure),
            }
        }
    }

    /// Applies one committed entry; returns the client's output if it was a command.
    fn apply_entry(&mut self, node: usize, entry: Entry) -> Option<(u64, OpOutput)> {
        let id = self.nodes[node].id;
        self.checker.on_applied(self.now, id, &entry);
        let n = &mut self.nodes[node];
        if entry.index != n.kv.applied.next() {
            let text = format!("node {id} applies index {} after {}", entry.index, n.kv.applied);
            self.checker.violations.push(text);
            return None;
        }
        n.kv.applied = entry.index;
        if let EntryPayload::Config(config) = &entry.payload {
            if !self.committed_configs.contains_key(&entry.index) {
                self.on_config_committed(entry.index, entry.term, config.clone());
            }
        }
        let n = &mut self.nodes[node];
        let mut result = None;
        if let EntryPayload::Command(data) = &entry.payload {
            match Command::decode(data) {
                Ok(command) => result = Some((command.op_id, n.kv.apply(&command))),
                Err(error) => {
                    let text = format!("node {id} applies undecodable command at {}: {error}", entry.index);
                    self.checker.violations.push(text);
                    return None;
                }
            }
        }
        self.observe_state(node, "applied");
        result
    }

    /// The driver answered a proposal with the entry applied at its index:
    /// the command's `result`, or `config` (given to staged adds).
    fn answer_write(
        &mut self,
        reply: SimReply,
        index: LogIndex,
        result: Option<&(u64, OpOutput)>,
        config: Option<&Configuration>,
    ) {
        if let SimReply::StagedAdd { id, call } = reply {
            // A voter of the incoming half: one in the outgoing half alone is
            // being removed (7 nodes, seed 1255, call 0 was answered done so
            // before the driver read the incoming half only).
            let from = self.staged_calls.get(&call).map_or(LogIndex::ZERO, |c| c.from);
            if !config.is_some_and(|c| c.voters.contains(&id)) || index < from {
                let text = format!(
                    "the staged add of node {id} (call {call}, configuration at {from} when called) succeeded at \
                     {index}, whose entry is {config:?}"
                );
                self.checker.violation(self.now, kind::STAGED_ADD, text);
            }
            return self.answer_staged(call, StagedAnswer::Done(index));
        }
        let SimReply::Client { client, op_id, .. } = reply else { return };
        match result {
            Some((applied, output)) if *applied == op_id => {
                self.max_acked_index = self.max_acked_index.max(index);
                self.complete_op(client, op_id, output.clone());
            }
            _ => self
                .checker
                .violations
                .push(format!("client {client} op {op_id} was answered with the entry at {index}, which is another's")),
        }
    }

    /// A failure the driver reported: definite ones leave the history, unknown
    /// outcomes stay in it as indeterminate.
    fn answer_failure(&mut self, reply: SimReply, failure: Failure) {
        if let SimReply::StagedAdd { call, .. } = reply {
            if matches!(failure, Failure::NotCaughtUp { .. }) {
                self.outcome.staged_timeouts += 1;
            }
            return self.answer_staged(call, StagedAnswer::Failed(failure));
        }
        let SimReply::Client { client, op_id, .. } = reply else { return };
        if failure.outcome_unknown() {
            if self.clients[client].busy == Some(op_id) {
                self.clients[client].busy = None;
                let think = self.rng.range(0, 20);
                self.schedule(think, Event::ClientIssue(client));
            }
            return;
        }
        if let Failure::NotLeader { leader: Some(leader) } = failure {
            self.clients[client].preferred = (leader.0 - 1) as usize;
        }
        self.fail_op(client, op_id);
    }

    // ---- Network -----------------------------------------------------------------

    fn send(&mut self, from: NodeId, to: NodeId, message: Message) {
        if self.blocked.contains(&(from, to)) || self.rng.chance(self.drop_per_mille, 1000) {
            self.trace(|| format!("n{from} -> n{to} {} dropped", message.kind()));
            return;
        }
        self.trace(|| format!("n{from} -> n{to} {:?}", message));
        if self.rng.chance(self.duplicate_per_mille, 1000) {
            let delay = self.rng.range(self.delay_ms.0, self.delay_ms.1 + 1);
            self.schedule(delay, Event::Deliver { from, to, message: message.clone() });
        }
        let delay = self.rng.range(self.delay_ms.0, self.delay_ms.1 + 1);
        self.schedule(delay, Event::Deliver { from, to, message });
    }

    fn randomize_network(&mut self) {
        self.drop_per_mille = self.rng.range(0, 80);
        self.duplicate_per_mille = self.rng.range(0, 40);
        let low = self.rng.range(1, 5);
        self.delay_ms = (low, low + self.rng.range(0, self.profile.max_network_delay_ms));
    }

    fn heal_everything(&mut self) {
        self.faults_on = false;
        self.blocked.clear();
        self.drop_per_mille = 0;
        self.duplicate_per_mille = 0;
        self.delay_ms = (1, 3);
        for node in 0..self.nodes.len() {
            self.nodes[node].paused_until = self.nodes[node].paused_until.min(self.now);
            if self.nodes[node].driver.is_none() {
                self.start_node(node);
            } else if self.cfg.faults.reload {
                // The operator puts every node back on the cluster's timing: a
                // node left with a much shorter timeout and no PreVote keeps
                // deposing leaders it cannot replace.
                let config = self.core_config(self.nodes[node].id);
                self.reload(node, config);
            }
        }
        self.trace(|| "healed: network whole, every node running".to_string());
    }

    // ---- Events ------------------------------------------------------------------

    /// The node an event is for, if the event is something a node processes.
    fn target_node(event: &Event) -> Option<usize> {
        match event {
            Event::Deliver { to, .. } => Some((to.0 - 1) as usize),
            Event::PersistDone { node, .. }
            | Event::SnapshotChecked { node, .. }
            | Event::ClientRequest { node, .. } => Some(*node),
            _ => None,
        }
    }

    fn handle_event(&mut self, event: Event) {
        if let Some(node) = Self::target_node(&event) {
            let paused_until = self.nodes[node].paused_until;
            if paused_until > self.now {
                // A paused process handles its backlog when it resumes, in an order
                // the pause scrambles.
                let delay = paused_until - self.now + self.rng.range(0, 4);
                return self.schedule(delay, event);
            }
        }
        match event {
            Event::Tick(node) => {
                if self.nodes[node].paused_until <= self.now {
                    let now = self.local_now(node);
                    if let Some(core) = self.nodes[node].core() {
                        self.checker.before_leader_tick(core, now);
                    }
                    self.drive(node, true, |driver| driver.tick(now));
                    self.poll_applier(node);
                }
                self.schedule(TICK_MS, Event::Tick(node));
            }
            Event::Deliver { from, to, message } => {
                if self.blocked.contains(&(from, to)) {
                    return;
                }
                let node = (to.0 - 1) as usize;
                let now = self.local_now(node);
                self.trace(|| format!("n{to} <- n{from} {}", message.kind()));
                self.with_driver(node, |driver| driver.receive(now, from, message));
            }
            Event::SnapshotChecked { node, incarnation, serial } => {
                if self.nodes[node].incarnation != incarnation {
                    return;
                }
                let verdict = match self.nodes[node].receiving.get(&serial) {
                    Some((meta, data)) => match KvStore::decode_snapshot(data) {
                        Ok(kv) if kv.applied == meta.last_log_id.index => Ok(()),
                        Ok(kv) => Err(format!("it holds state through {}, not {}", kv.applied, meta.last_log_id)),
                        Err(error) => Err(error),
                    },
                    None => Err("the received data is gone".to_string()),
                };
                self.with_driver(node, |driver| driver.snapshot_checked(serial, verdict));
            }
            Event::SnapshotWritten { node, incarnation, index, meta } => {
                if self.nodes[node].incarnation != incarnation {
                    return;
                }
                let Some(data) = self.nodes[node].captures.remove(&index) else { return };
                let failed = self.faults_on && self.rng.chance(self.profile.disk_error_per_10k, 10_000);
                let written = if failed {
                    Err("no space left on device".to_string())
                } else {
                    // Written whole and synced, then listed: a crash before leaves nothing.
                    let n = &mut self.nodes[node];
                    let newer = n.disk.snapshot.as_ref().is_none_or(|(held, _)| held.last_log_id <= meta.last_log_id);
                    if newer {
                        n.disk.snapshot = Some((meta.clone(), data.clone()));
                    }
                    n.snapshots.insert(index, data);
                    Ok(meta)
                };
                let id = self.nodes[node].id;
                self.trace(|| {
                    format!("n{id} snapshot at {index} written: {:?}", written.as_ref().map(|m| m.last_log_id))
                });
                self.with_driver(node, |driver| driver.snapshot_written(index, written));
            }
            Event::PersistDone { node, incarnation, job } => {
                if self.nodes[node].incarnation != incarnation {
                    return;
                }
                self.finish_store_jobs(node, job);
            }
            Event::ClientIssue(client) => {
                if self.faults_on {
                    self.issue_op(client);
                }
            }
            Event::ClientRequest { client, node, op_id, key, input, mode } => {
                self.submit_op(client, node, op_id, key, input, mode);
            }
            Event::ClientTimeout { client, op_id } => {
                if self.clients[client].busy == Some(op_id) {
                    // The outcome stays unknown: the op is indeterminate in the history.
                    self.clients[client].busy = None;
                    let think = self.rng.range(0, 20);
                    self.schedule(think, Event::ClientIssue(client));
                }
            }
            Event::Chaos => {
                if self.faults_on {
                    self.chaos();
                    let (low, high) = self.profile.chaos_interval_ms;
                    let next = self.rng.range(low, high);
                    self.schedule(next, Event::Chaos);
                }
            }
            Event::Pause { node, until } => {
                self.nodes[node].paused_until = self.nodes[node].paused_until.max(until);
                let id = self.nodes[node].id;
                self.trace(|| format!("n{id} paused until {until}ms"));
            }
            Event::Crash(node) => {
                if self.faults_on && self.nodes[node].driver.is_some() {
                    self.crash_node(node);
                    let down = if self.rng.chance(1, 2) { self.rng.range(1, 30) } else { self.rng.range(30, 1_000) };
                    self.schedule(down, Event::Restart(node));
                }
            }
            Event::Restart(node) => {
                if self.nodes[node].driver.is_none() {
                    self.start_node(node);
                }
            }
        }
    }

    fn check_all(&mut self) {
        for node in &self.nodes {
            if let Some(core) = node.core() {
                self.checker.check_node(self.now, core, node.local_time(self.now));
            }
        }
        self.checker.check_leases(self.now);
        if self.checker.has_new_commits() {
            let memory: Vec<LogView> = self.nodes.iter().map(memory_log).collect();
            let durable: Vec<LogView> = self.nodes.iter().map(durable_log).collect();
            self.checker.check_commits_protected(self.now, &memory, &durable);
        }
    }

    /// Reports the state machine of `node` (after an apply, a restore or a restart).
    fn observe_state(&mut self, node: usize, how: &str) {
        let n = &self.nodes[node];
        let (id, index, digest) = (n.id, n.kv.applied, state_digest(&n.kv));
        self.checker.on_state_at(self.now, id, index, digest, how);
    }

    // ---- Clients -----------------------------------------------------------------

    fn issue_op(&mut self, client: usize) {
        if self.clients[client].busy.is_some() {
            return;
        }
        let op_id = self.next_op_id;
        self.next_op_id += 1;
        let key = self.rng.range(0, self.cfg.keys);
        let input = match self.rng.range(0, 100) {
            0..=39 => OpInput::Get,
            40..=74 => {
                self.next_value += 1;
                OpInput::Put { value: self.next_value }
            }
            75..=94 => {
                self.next_value += 1;
                let expected = if self.rng.chance(1, 4) { None } else { Some(self.rng.range(1, self.next_value)) };
                OpInput::Cas { expected, new: self.next_value }
            }
            _ => OpInput::Delete,
        };
        let mode = if self.rng.chance(1, 2) { ReadMode::Lease } else { ReadMode::Linearizable };
        // Half the time the client goes back to the node that last answered.
        let node = if self.rng.chance(1, 2) {
            self.clients[client].preferred
        } else {
            self.rng.range(0, self.nodes.len() as u64) as usize
        };
        self.history.insert(
            op_id,
            Operation {
                id: op_id,
                client: client as u64,
                key,
                input: input.clone(),
                output: None,
                invoke: self.now,
                complete: None,
            },
        );
        self.clients[client].busy = Some(op_id);
        self.schedule(CLIENT_TIMEOUT_MS, Event::ClientTimeout { client, op_id });
        let delay = self.rng.range(0, 3);
        self.schedule(delay, Event::ClientRequest { client, node, op_id, key, input, mode });
    }

    /// The request reaches `node`: hand it to the core.
    fn submit_op(&mut self, client: usize, node: usize, op_id: u64, key: u64, input: OpInput, mode: ReadMode) {
        if self.clients[client].busy != Some(op_id) {
            return;
        }
        let id = self.nodes[node].id;
        self.trace(|| format!("client {client} op {op_id} {input:?} key {key} ({mode:?}) -> n{id}"));
        self.clients[client].preferred = node;
        let reply = SimReply::Client { client, op_id, key };
        let now = self.local_now(node);
        let running = match input {
            OpInput::Get => self.with_driver(node, |driver| driver.read(now, mode, reply)),
            input => {
                let command = Command { op_id, key, input };
                self.with_driver(node, |driver| driver.propose(vec![command.encode()], vec![reply]))
            }
        };
        if running.is_none() {
            // The node is down: the request never reached it.
            self.fail_op(client, op_id);
        }
    }

    fn complete_op(&mut self, client: usize, op_id: u64, output: OpOutput) {
        if self.clients[client].busy != Some(op_id) {
            return;
        }
        self.trace(|| format!("client {client} op {op_id} completed: {output:?}"));
        if let Some(op) = self.history.get_mut(&op_id) {
            op.output = Some(output);
            op.complete = Some(self.now);
        }
        self.clients[client].busy = None;
        let think = self.rng.range(0, 20);
        self.schedule(think, Event::ClientIssue(client));
    }

    /// The op certainly had no effect: it leaves the history.
    fn fail_op(&mut self, client: usize, op_id: u64) {
        if self.clients[client].busy != Some(op_id) {
            return;
        }
        self.history.remove(&op_id);
        self.clients[client].busy = None;
        let backoff = self.rng.range(5, 40);
        self.schedule(backoff, Event::ClientIssue(client));
    }

    // ---- Faults ------------------------------------------------------------------

    fn leader_node(&self) -> Option<usize> {
        // The live leader with the highest term (an old one may not know yet).
        (0..self.nodes.len())
            .filter_map(|i| self.nodes[i].core().filter(|c| c.is_leader()).map(|c| (c.current_term(), i)))
            .max()
            .map(|(_, i)| i)
    }

    fn chaos(&mut self) {
        let faults = self.cfg.faults;
        let n = self.nodes.len() as u64;
        match self.rng.range(0, 9) {
            0 if faults.crashes => {
                let node = match self.leader_node() {
                    Some(leader) if self.rng.chance(1, 2) => leader,
                    _ => self.rng.range(0, n) as usize,
                };
                self.schedule(0, Event::Crash(node));
            }
            1 if faults.partitions => {
                let choice = self.rng.range(0, 4);
                self.blocked.clear();
                let ids: Vec<NodeId> = self.nodes.iter().map(|n| n.id).collect();
                match choice {
                    0 => {
                        let isolated = match self.leader_node() {
                            Some(leader) => self.nodes[leader].id,
                            None => ids[self.rng.range(0, n) as usize],
                        };
                        self.isolate(isolated, &ids);
                        self.trace(|| format!("partition: n{isolated} isolated"));
                    }
                    1 => {
                        let side: Vec<NodeId> = ids.iter().copied().filter(|_| self.rng.chance(1, 2)).collect();
                        for a in &ids {
                            for b in &ids {
                                if side.contains(a) != side.contains(b) {
                                    self.blocked.insert((*a, *b));
                                }
                            }
                        }
                        self.trace(|| format!("partition: {side:?} | rest"));
                    }
                    2 => {
                        for _ in 0..self.rng.range(1, n + 1) {
                            let a = ids[self.rng.range(0, n) as usize];
                            let b = ids[self.rng.range(0, n) as usize];
                            self.blocked.insert((a, b));
                        }
                        self.trace(|| format!("one-way partitions: {:?}", self.blocked));
                    }
                    _ => self.trace(|| "partitions healed".to_string()),
                }
            }
            2 if faults.network => self.randomize_network(),
            // Twice the weight of the others: staged adds need non-voters,
            // which removals and demotions make first.
            3 | 8 if faults.membership => self.change_membership(),
            4 if faults.transfers => {
                if let Some(leader) = self.leader_node() {
                    let voters: Vec<NodeId> = self.nodes[leader]
                        .core()
                        .map(|c| c.membership().voters.iter().copied().collect())
                        .unwrap_or_default();
                    if !voters.is_empty() {
                        let target = voters[self.rng.range(0, voters.len() as u64) as usize];
                        self.trace(|| format!("transfer leadership to n{target}"));
                        self.with_driver(leader, |driver| driver.transfer_leadership(target, SimReply::Admin));
                    }
                }
            }
            6 if faults.crashes => {
                // Pause the leader most of the time: the classic stale-leader setup.
                let node = match self.leader_node() {
                    Some(leader) if self.rng.chance(2, 3) => leader,
                    _ => self.rng.range(0, n) as usize,
                };
                let until = self.now + self.rng.range(50, 1_500);
                self.schedule(0, Event::Pause { node, until });
            }
            5 if faults.partitions => {
                self.blocked.clear();
                self.trace(|| "partitions healed".to_string());
            }
            7 if faults.reload => self.reload_timing(),
            _ => {}
        }
    }

    /// `reload_config` on one node (the leader half the time): new heartbeat
    /// and election timeouts within the validation bounds. Nodes disagree on
    /// timing until they restart (with the run's base timing).
    fn reload_timing(&mut self) {
        let node = match self.leader_node() {
            Some(leader) if self.rng.chance(1, 2) => leader,
            _ => self.rng.range(0, self.nodes.len() as u64) as usize,
        };
        let id = self.nodes[node].id;
        let mut config = self.core_config(id);
        config.election_timeout_min_ms = [60, 100, 150, 220, 300][self.rng.range(0, 5) as usize];
        config.election_timeout_max_ms = config.election_timeout_min_ms + [30, 100, 200][self.rng.range(0, 3) as usize];
        config.heartbeat_interval_ms =
            [10, 20, 40][self.rng.range(0, 3) as usize].min(config.election_timeout_min_ms / 2);
        if self.rng.chance(1, 3) {
            // The promotion rule's settings are reloadable too.
            config.promotion_max_lag = draw_promotion_max_lag(&mut self.rng);
            config.promotion_stable_ms = self.rng.range(ELECTION_MAX_MS, MAX_PROMOTION_STABLE_MS + 1);
        }
        // Validation wants a stable period of at least an election timeout.
        config.promotion_stable_ms = config.promotion_stable_ms.max(config.election_timeout_max_ms);
        let summary = format!(
            "heartbeat {} ms, election {}..{} ms, promotion after {} ms within {} entries",
            config.heartbeat_interval_ms,
            config.election_timeout_min_ms,
            config.election_timeout_max_ms,
            config.promotion_stable_ms,
            config.promotion_max_lag
        );
        let result = self.reload(node, config);
        self.trace(|| format!("n{id} reloaded to {summary}: {result:?}"));
    }

    /// `reload_config` of `node`'s timing, keeping the run's snapshot settings.
    fn reload(&mut self, node: usize, config: CoreConfig) -> Option<Result<(), String>> {
        let (trailing, policy) = (self.trailing_entries, self.snapshot_policy);
        let wait = config.election_timeout_min_ms + config.election_timeout_max_ms;
        self.with_driver(node, |driver| driver.reload(config, trailing, policy, wait))
    }

    fn isolate(&mut self, isolated: NodeId, ids: &[NodeId]) {
        for other in ids {
            if *other != isolated {
                self.blocked.insert((isolated, *other));
                self.blocked.insert((*other, isolated));
            }
        }
    }

    fn change_membership(&mut self) {
        let Some(leader) = self.leader_node() else { return };
        let Some(current) = self.nodes[leader].core().map(|c| c.membership().clone()) else { return };
        let leader_id = self.nodes[leader].id;
        let all: Vec<NodeId> = self.nodes.iter().map(|n| n.id).collect();
        let outsiders: Vec<NodeId> = all.iter().copied().filter(|id| !current.is_member(*id)).collect();
        let learners: Vec<NodeId> = current.learners.iter().copied().collect();
        // Staging learners are the promotion rule's to promote.
        let plain: Vec<NodeId> = learners.iter().copied().filter(|id| !current.is_staging(*id)).collect();
        let voters: Vec<NodeId> = current.voters.iter().copied().collect();
        // At least three voters; on three nodes two, so that staged adds
        // find someone to add.
        let min_voters = if all.len() <= 3 { 2.min(all.len()) } else { 3 };
        let pick = |rng: &mut Rng, list: &[NodeId]| list[rng.range(0, list.len() as u64) as usize];
        if (!outsiders.is_empty() || !plain.is_empty()) && self.rng.chance(1, 2) {
            // Someone to add: the staged add, most of the time.
            return self.staged_add(leader, &current);
        }
        let change = match self.rng.range(0, 9) {
            0 if !outsiders.is_empty() => MembershipChange::AddLearner(pick(&mut self.rng, &outsiders)),
            1 if !plain.is_empty() => MembershipChange::AddVoter(pick(&mut self.rng, &plain)),
            2 | 8 if voters.len() > min_voters => {
                // The leader itself a third of the time: it leads until the
                // change commits, then steps down (thesis §4.2.2).
                let victim = if current.voters.contains(&leader_id) && self.rng.chance(1, 3) {
                    leader_id
                } else {
                    pick(&mut self.rng, &voters)
                };
                if self.rng.chance(1, 2) {
                    MembershipChange::RemoveServer(victim)
                } else {
                    MembershipChange::DemoteVoter(victim)
                }
            }
            3 if !learners.is_empty() => MembershipChange::RemoveServer(pick(&mut self.rng, &learners)),
            4 => {
                let mut new_voters = BTreeSet::new();
                while new_voters.len() < min_voters.max(self.rng.range(1, all.len() as u64 + 1) as usize) {
                    new_voters.insert(pick(&mut self.rng, &all));
                }
                let learners = all
                    .iter()
                    .copied()
                    .filter(|id| !new_voters.contains(id) && !current.voters.contains(id) && self.rng.chance(1, 2))
                    .collect();
                MembershipChange::Joint { voters: new_voters, learners }
            }
            5 | 6 => return self.staged_add(leader, &current),
            7 if self.cfg.faults.transfers && !current.staging.is_empty() => {
                // Leadership moves while a learner is staging: the next leader
                // inherits the mark and starts its stable period over.
                let others: Vec<NodeId> = voters.iter().copied().filter(|id| *id != leader_id).collect();
                if others.is_empty() {
                    return;
                }
                let target = pick(&mut self.rng, &others);
                self.trace(|| format!("transfer leadership to n{target} while {:?} stage", current.staging));
                self.with_driver(leader, |driver| driver.transfer_leadership(target, SimReply::Admin));
                return;
            }
            _ => return,
        };
        let at = self.nodes[leader].core().map_or(LogIndex::ZERO, |c| c.membership_index());
        let (guard, stale) = self.draw_guard(at);
        self.trace(|| format!("membership change {change:?} (prev_index {guard:?})"));
        let before = self.nodes[leader].core().map(|c| (c.membership_index(), c.last_log_id()));
        self.with_driver(leader, |driver| driver.change_membership(change, guard, SimReply::Admin));
        let after = self.nodes[leader].core().map(|c| (c.membership_index(), c.last_log_id()));
        if after.map(|a| a.0) != before.map(|b| b.0) {
            self.outcome.membership_changes += 1;
        }
        if stale {
            self.check_nothing_appended(leader, guard, before, after);
        }
    }

    /// A `prev_index` guard for a change on a leader whose configuration is
    /// at `at`: none, `at`, or a stale index (then nothing may be appended).
    /// Returns the guard and whether it is stale.
    fn draw_guard(&mut self, at: LogIndex) -> (Option<LogIndex>, bool) {
        match self.rng.range(0, 4) {
            0 | 1 => (None, false),
            2 => (Some(at), false),
            _ if at.0 > 0 && self.rng.chance(3, 4) => (Some(LogIndex(self.rng.range(0, at.0))), true),
            _ => (Some(at.next()), true),
        }
    }

    /// A change guarded by a stale index appends nothing.
    fn check_nothing_appended(
        &mut self,
        leader: usize,
        guard: Option<LogIndex>,
        before: Option<(LogIndex, LogId)>,
        after: Option<(LogIndex, LogId)>,
    ) {
        if after.is_some() && after != before {
            let id = self.nodes[leader].id;
            let text = format!(
                "n{id} took a change guarded by stale prev_index {guard:?}: (configuration index, last log id) \
                 went from {before:?} to {after:?}"
            );
            self.checker.violation(self.now, kind::PREV_INDEX_GUARD, text);
        }
    }

    /// `Driver::add_voter` on the leader: of an outsider or a plain learner
    /// mostly, of any node sometimes (a staging one: the caller joins the
    /// waiting one; a voter: done, or wait for its configuration to commit);
    /// a timeout short enough that the removal at the deadline runs, or long
    /// enough to be promoted; a guard current, stale or none.
    fn staged_add(&mut self, leader: usize, current: &Configuration) {
        let Some(core) = self.nodes[leader].core() else { return };
        let (at, stable_ms) = (core.membership_index(), core.config().promotion_stable_ms);
        let all: Vec<NodeId> = self.nodes.iter().map(|n| n.id).collect();
        let candidates: Vec<NodeId> =
            all.iter().copied().filter(|id| !current.is_voter(*id) && !current.is_staging(*id)).collect();
        let list = if candidates.is_empty() || self.rng.chance(1, 6) { &all } else { &candidates };
        let id = list[self.rng.range(0, list.len() as u64) as usize];
        let timeout_ms =
            if self.rng.chance(1, 2) { self.rng.range(50, stable_ms) } else { stable_ms + self.rng.range(500, 6_000) };
        let (guard, stale) = self.draw_guard(at);
        let call = self.staged_calls.len() as u64;
        self.staged_calls.insert(call, StagedCall { id, node: leader, from: at, answer: None });
        self.outcome.staged_adds += 1;
        self.trace(|| format!("staged add of n{id} (call {call}), timeout {timeout_ms} ms, prev_index {guard:?}"));
        let now = self.local_now(leader);
        let before = self.nodes[leader].core().map(|c| (c.membership_index(), c.last_log_id()));
        let reply = SimReply::StagedAdd { id, call };
        self.with_driver(leader, |driver| driver.add_voter(now, id, guard, timeout_ms, reply));
        if self.nodes[leader].core().map(|c| c.membership_index()) != before.map(|b| b.0) {
            self.outcome.membership_changes += 1;
        }
        if stale {
            let after = self.nodes[leader].core().map(|c| (c.membership_index(), c.last_log_id()));
            self.check_nothing_appended(leader, guard, before, after);
            let answer = self.staged_calls.get(&call).and_then(|c| c.answer.clone());
            // The guard is checked first, on a leader: nothing else may answer.
            let refused = matches!(
                answer,
                Some(StagedAnswer::Failed(Failure::Refused(raftkv_core::ProposeError::ConfigChanged { .. })))
            );
            if !refused {
                let text = format!("staged add of n{id} guarded by stale prev_index {guard:?} was answered {answer:?}");
                self.checker.violation(self.now, kind::PREV_INDEX_GUARD, text);
            }
        }
    }

    /// Records the answer to staged add `call`; one answer per call.
    fn answer_staged(&mut self, call: u64, answer: StagedAnswer) {
        self.trace(|| format!("staged add call {call} answered {answer:?}"));
        let Some(record) = self.staged_calls.get_mut(&call) else {
            let text = format!("an answer {answer:?} to staged add call {call}, which was never made");
            return self.checker.violation(self.now, kind::STAGED_ADD, text);
        };
        if let Some(first) = &record.answer {
            let text =
                format!("staged add call {call} of node {} answered twice: {first:?}, then {answer:?}", record.id);
            return self.checker.violation(self.now, kind::STAGED_ADD, text);
        }
        record.answer = Some(answer);
    }

    /// A configuration committed at `index` (in term `term`), first applied
    /// now: counts promotions, and by whom, against the staging marks.
    fn on_config_committed(&mut self, index: LogIndex, term: Term, config: Configuration) {
        let prev = self.committed_configs.range(..index).next_back().map(|(_, (_, c))| c);
        if let Some(id) = prev.and_then(|prev| promoted_from_staging(prev, &config)) {
            self.outcome.promotions += 1;
            let marked_by = self.staged_in_term.get(&id).and_then(|t| self.checker.leader_of(*t));
            if marked_by != self.checker.leader_of(term) {
                self.outcome.handoff_promotions += 1;
            }
        }
        let newly: Vec<NodeId> =
            config.staging.iter().copied().filter(|id| prev.is_none_or(|p| !p.is_staging(*id))).collect();
        self.staged_in_term.retain(|id, _| config.is_staging(*id));
        for id in newly {
            self.staged_in_term.insert(id, term);
        }
        self.committed_configs.insert(index, (term, config));
    }

    /// At the end of a converged run: every staged add was answered (or its
    /// node went down with it), and each failure that says what committed
    /// agrees with the committed configurations.
    fn check_staged_calls(&mut self) {
        let mut problems = Vec::new();
        for (call, record) in &self.staged_calls {
            let (id, from) = (record.id, record.from);
            let after = self.committed_configs.range(from.next()..);
            match &record.answer {
                None => problems.push(format!(
                    "staged add call {call} of node {id} on n{} was never answered",
                    self.nodes[record.node].id
                )),
                Some(StagedAnswer::Failed(Failure::NotCaughtUp { id: named, .. })) => {
                    // A configuration after the call dropped it while it was staging.
                    let removed = after.into_iter().any(|(index, (_, config))| {
                        let before = self.committed_configs.range(..*index).next_back().map(|(_, (_, c))| c);
                        !config.is_member(id) && before.is_some_and(|b| b.is_staging(id))
                    });
                    if *named != id || !removed {
                        problems.push(format!(
                            "staged add call {call} of node {id} failed NotCaughtUp (for {named}), but no configuration \
                             committed after {from} removed it while staging"
                        ));
                    }
                }
                Some(StagedAnswer::Failed(Failure::Superseded { id: named, index })) => {
                    let decided = self.committed_configs.get(index).map(|(_, c)| c);
                    if *named != id
                        || *index < from
                        || decided.is_none_or(|c| c.voters.contains(&id) || c.is_staging(id))
                    {
                        problems.push(format!(
                            "staged add call {call} of node {id} (from {from}) was superseded at {index}, where the \
                             committed configuration is {decided:?}"
                        ));
                    }
                }
                Some(StagedAnswer::Done(index)) => {
                    // Checked when answered too; here against the committed
                    // history. The configuration in force at `index`: a
                    // voter found at once is answered with the leader's
                    // configuration index, which after a restart or an
                    // install is its compaction point, not the entry's.
                    let decided = self.committed_configs.range(..=*index).next_back().map(|(_, (_, c))| c);
                    if !decided.is_some_and(|c| c.voters.contains(&id)) {
                        problems.push(format!(
                            "staged add call {call} of node {id} succeeded at {index}, where the committed \
                             configuration is {decided:?}"
                        ));
                    }
                }
                Some(_) => {}
            }
        }
        for text in problems {
            self.checker.violation(self.now, kind::STAGED_ADD, text);
        }
    }

    // ---- Liveness ----------------------------------------------------------------

    /// Whether the healed cluster has converged: one leader whose commit covers
    /// every acknowledged write, applied by every member.
    fn converged(&self) -> Result<(), String> {
        let leader = self.leader_node().ok_or("no leader")?;
        let core = self.nodes[leader].core().ok_or("leader down")?;
        let commit = core.commit_index();
        if commit < self.max_acked_index {
            return Err(format!("leader n{} commit {commit} below acknowledged {}", core.id(), self.max_acked_index));
        }
        if core.last_log_id().index != commit {
            return Err(format!("leader n{} has uncommitted entries", core.id()));
        }
        if !core.membership().staging.is_empty() {
            // Every node is up and reachable: each staging one catches up.
            return Err(format!("leader n{} still has {} staging", core.id(), core.membership()));
        }
        let members: Vec<NodeId> = core.membership().members().into_iter().collect();
        for id in members {
            let node = &self.nodes[(id.0 - 1) as usize];
            let Some(member) = node.core() else { return Err(format!("member n{id} down")) };
            if node.kv.applied != commit {
                return Err(format!("member n{id} applied {} of {commit}", node.kv.applied));
            }
            if member.role() == Role::Leader && member.id() != core.id() {
                return Err(format!("second leader n{id}"));
            }
        }
        Ok(())
    }
}

/// A node's log as an election would see it: in memory when it runs, on disk when
/// it is down (what it would restart with).
fn memory_log(node: &SimNode) -> LogView<'_> {
    match node.core() {
        Some(core) => LogView::Memory(core),
        None => durable_log(node),
    }
}

/// A node's log as a crash would leave it: the synced log after its snapshot.
fn durable_log(node: &SimNode) -> LogView<'_> {
    let start = node.disk.snapshot.as_ref().map_or(LogId::ZERO, |(meta, _)| meta.last_log_id);
    // Entries the snapshot covers may stay behind (a purge keeps trailing ones);
    // those after it are contiguous.
    let after = node.disk.log.partition_point(|entry| entry.index <= start.index);
    LogView::Disk { id: node.id, start, entries: &node.disk.log[after..] }
}

fn describe_step(step: &StoreStep) -> String {
    match step {
        StoreStep::CutDisagreeing(at) => format!("cut disagreeing with {at}"),
        StoreStep::CommitReceived { serial } => format!("commit received snapshot {serial}"),
        StoreStep::Purge(upto) => format!("purge up to {upto}"),
        StoreStep::Write(write) => match (write.entries.first(), write.entries.last()) {
            (Some(first), Some(last)) => format!("write {}..={} from {}", first.index, last.index, write.truncate_from),
            _ => format!("truncate from {}", write.truncate_from),
        },
        StoreStep::HardState(state) => format!("hard state {state:?}"),
    }
}

/// Runs one seed. A panic in the simulated code (a failed assertion in the
/// core, say) is a violation of that seed like any other, so that a run over
/// many seeds names the seed to replay.
pub fn run_seed(cfg: SimConfig) -> Outcome {
    let seed = cfg.seed;
    std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| Simulation::new(cfg).run())).unwrap_or_else(|payload| {
        let message = payload
            .downcast_ref::<String>()
            .map(String::as_str)
            .or_else(|| payload.downcast_ref::<&str>().copied())
            .unwrap_or("(no message)");
        Outcome { seed, violations: vec![format!("{}: {message}", kind::PANIC)], ..Outcome::default() }
    })
}
