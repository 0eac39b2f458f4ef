//! One seeded simulation: N cores on a simulated network with simulated disks,
//! clocks and clients, driven through faults; safety checked after every step,
//! liveness and linearizability at the end.
//!
//! Everything random comes from one `Rng` seeded by the run's seed, and every
//! collection that is iterated is ordered, so a seed replays exactly.

use std::cmp::Reverse;
use std::collections::{BTreeMap, BTreeSet, BinaryHeap, VecDeque};

use bytes::Bytes;
use raft_core::rng::Rng;
use raft_core::{
    Action, Configuration, Core, CoreConfig, DurableState, Entry, EntryPayload, HardState, InstallSnapshot, LogId,
    LogIndex, MembershipChange, Message, NodeId, PersistRequest, ReadMode, Role, SnapshotMeta, Term,
};

use crate::checker::{kind, state_digest, Checker, LogView};
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
    };
    pub const ALL: Faults = Faults {
        network: true,
        partitions: true,
        crashes: true,
        clock_drift: true,
        membership: true,
        snapshots: true,
        transfers: true,
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
                other => {
                    return Err(format!(
                        "unknown fault {other:?}; expected all, none or a list of network, partitions, crashes, \
                         clock-drift, membership, snapshots, transfers"
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
        }
    }
}

#[derive(Debug)]
enum Event {
    Tick(usize),
    Deliver {
        from: NodeId,
        to: NodeId,
        message: Message,
    },
    PersistDone {
        node: usize,
        incarnation: u64,
        seq: u64,
    },
    /// The runtime finished checking the content of a snapshot received whole.
    SnapshotChecked {
        node: usize,
        incarnation: u64,
        id: LogId,
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
    /// Entries after the snapshot's index (or from 1), contiguous.
    log: Vec<Entry>,
    /// Written but not yet synced: lost (or torn) by a crash.
    unsynced: VecDeque<PersistRequest>,
}

impl Disk {
    fn apply(&mut self, request: &PersistRequest, received: Option<&(SnapshotMeta, Bytes)>) {
        if let Some(meta) = &request.snapshot {
            if let Some((received_meta, data)) = received {
                if received_meta == meta {
                    self.snapshot = Some((meta.clone(), data.clone()));
                }
            }
            let index = meta.last_log_id.index;
            self.log.retain(|entry| entry.index > index);
        }
        if let Some(write) = &request.log {
            self.log.retain(|entry| entry.index < write.truncate_from);
            self.log.extend(write.entries.iter().cloned());
        }
        if let Some(hard_state) = request.hard_state {
            self.hard_state = hard_state;
        }
    }

    fn purge(&mut self, upto: LogIndex) {
        self.log.retain(|entry| entry.index > upto);
    }
}

struct PendingWrite {
    client: usize,
    op_id: u64,
}

struct PendingRead {
    client: usize,
    op_id: u64,
    key: u64,
}

struct SimNode {
    id: NodeId,
    core: Option<Core>,
    incarnation: u64,
    clock_rate_ppm: i64,
    clock_offset_ms: u64,
    disk: Disk,
    kv: KvStore,
    /// A snapshot being received: its id and the bytes so far.
    staged_snapshot: Option<(LogId, Vec<u8>)>,
    /// A fully received snapshot waiting for its persist.
    received_snapshot: Option<(SnapshotMeta, Bytes)>,
    /// Snapshots this node can send, by last index.
    snapshots: BTreeMap<LogIndex, Bytes>,
    pending_writes: BTreeMap<LogIndex, PendingWrite>,
    pending_reads: BTreeMap<u64, PendingRead>,
    /// Reads confirmed at an index the state machine has not applied yet.
    ready_reads: Vec<(LogIndex, u64)>,
    /// Last completion time of a write: writes complete in order.
    disk_busy_until: u64,
    last_snapshot_index: LogIndex,
    /// A paused node processes nothing before this time.
    paused_until: u64,
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
    snapshot_threshold: u64,
    trailing_entries: u64,
    profile: Profile,
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
                core: None,
                incarnation: 0,
                clock_rate_ppm,
                clock_offset_ms: rng.range(0, 10_000),
                disk: Disk {
                    hard_state: durable.hard_state,
                    snapshot: None,
                    log: durable.entries,
                    unsynced: VecDeque::new(),
                },
                kv: KvStore::default(),
                staged_snapshot: None,
                received_snapshot: None,
                snapshots: BTreeMap::new(),
                pending_writes: BTreeMap::new(),
                pending_reads: BTreeMap::new(),
                ready_reads: Vec::new(),
                disk_busy_until: 0,
                last_snapshot_index: LogIndex::ZERO,
                paused_until: 0,
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
            snapshot_threshold,
            trailing_entries,
            profile,
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
        let snapshot_index = snapshot_meta.as_ref().map_or(LogIndex::ZERO, |m| m.last_log_id.index);
        n.kv = match &n.disk.snapshot {
            Some((_, data)) => KvStore::decode_snapshot(data).unwrap_or_default(),
            None => KvStore::default(),
        };
        n.snapshots.clear();
        if let Some((meta, data)) = &n.disk.snapshot {
            n.snapshots.insert(meta.last_log_id.index, data.clone());
        }
        n.last_snapshot_index = snapshot_index;
        let durable = DurableState {
            hard_state: n.disk.hard_state,
            snapshot: snapshot_meta,
            entries: n.disk.log.iter().filter(|e| e.index > snapshot_index).cloned().collect(),
        };
        let hard_state = durable.hard_state;
        match Core::new(config, durable, now, seed) {
            Ok(core) => n.core = Some(core),
            Err(error) => {
                let text = format!("node {id} cannot restart from its disk: {error}");
                self.checker.violations.push(text);
                return;
            }
        }
        self.checker.on_restart(id, hard_state);
        self.observe_state(node, "restarted from its snapshot");
        self.trace(|| format!("n{id} started (incarnation {})", self.nodes[node].incarnation));
    }

    fn crash_node(&mut self, node: usize) {
        let id = self.nodes[node].id;
        if self.nodes[node].core.is_none() {
            return;
        }
        // A prefix of the unsynced writes survives; the next one may be torn.
        let unsynced: Vec<PersistRequest> = self.nodes[node].disk.unsynced.drain(..).collect();
        let survive = self.rng.range(0, unsynced.len() as u64 + 1) as usize;
        let received = self.nodes[node].received_snapshot.clone();
        for request in &unsynced[..survive] {
            self.nodes[node].disk.apply(request, received.as_ref());
        }
        if let Some(torn) = unsynced.get(survive) {
            if let Some(write) = &torn.log {
                let keep = self.rng.range(0, write.entries.len() as u64 + 1) as usize;
                let partial = PersistRequest {
                    seq: torn.seq,
                    hard_state: None,
                    snapshot: None,
                    log: Some(raft_core::LogWrite {
                        truncate_from: write.truncate_from,
                        entries: write.entries[..keep].to_vec(),
                    }),
                };
                if torn.snapshot.is_none() {
                    self.nodes[node].disk.apply(&partial, None);
                }
            }
        }
        let n = &mut self.nodes[node];
        n.core = None;
        n.incarnation += 1;
        n.staged_snapshot = None;
        n.received_snapshot = None;
        n.pending_writes.clear();
        n.pending_reads.clear();
        n.ready_reads.clear();
        self.trace(|| format!("n{id} crashed ({survive} of {} unsynced writes kept)", unsynced.len()));
    }

    fn with_core<R>(&mut self, node: usize, f: impl FnOnce(&mut Core) -> R) -> Option<R> {
        let result = self.nodes[node].core.as_mut().map(f);
        if result.is_some() {
            self.process_actions(node);
        }
        result
    }

    fn process_actions(&mut self, node: usize) {
        loop {
            let actions: Vec<Action> = match self.nodes[node].core.as_mut() {
                Some(core) => core.drain_actions().collect(),
                None => return,
            };
            if actions.is_empty() {
                return;
            }
            for action in actions {
                self.handle_action(node, action);
            }
        }
    }

    fn handle_action(&mut self, node: usize, action: Action) {
        let id = self.nodes[node].id;
        match action {
            Action::Persist(request) => {
                if let Some(write) = &request.log {
                    let prev_term = self.nodes[node]
                        .core
                        .as_ref()
                        .and_then(|c| c.term_at(write.truncate_from.prev()))
                        .unwrap_or(Term(0));
                    self.checker.on_entries_written(self.now, id, prev_term, &write.entries);
                }
                self.trace(|| format!("n{id} persist #{} {}", request.seq, describe_persist(&request)));
                let mut latency = self.rng.range(1, 4);
                if self.rng.chance(self.profile.slow_disk_per_mille, 1000) {
                    latency += self.rng.range(10, 80);
                }
                let votes = request.hard_state.is_some_and(|hs| hs.voted_for.is_some());
                let crash_chance = if votes {
                    self.profile.crash_after_vote_per_mille
                } else {
                    self.profile.crash_after_write_per_mille
                };
                if self.faults_on && self.rng.chance(crash_chance, 1000) {
                    let at = self.rng.range(0, latency + 1);
                    self.schedule(at, Event::Crash(node));
                }
                let n = &mut self.nodes[node];
                let done_at = n.disk_busy_until.max(self.now + latency);
                n.disk_busy_until = done_at;
                let (incarnation, seq) = (n.incarnation, request.seq);
                n.disk.unsynced.push_back(request);
                self.schedule(done_at - self.now, Event::PersistDone { node, incarnation, seq });
            }
            Action::Send { to, message } => self.send(id, to, message),
            Action::SendSnapshotChunk { to, term, meta, offset } => {
                let Some(data) = self.nodes[node].snapshots.get(&meta.last_log_id.index).cloned() else {
                    self.trace(|| format!("n{id} has no snapshot {} to send", meta.last_log_id));
                    return;
                };
                let start = (offset as usize).min(data.len());
                let end = (start + SNAPSHOT_CHUNK_BYTES).min(data.len());
                let chunk =
                    InstallSnapshot { term, meta, offset, data: data.slice(start..end), done: end == data.len() };
                self.send(id, to, Message::InstallSnapshot(chunk));
            }
            Action::WriteSnapshotChunk { meta, offset, data, done } => {
                let n = &mut self.nodes[node];
                if offset == 0 {
                    n.staged_snapshot = Some((meta.last_log_id, Vec::new()));
                }
                match &mut n.staged_snapshot {
                    Some((staged, buffer)) if *staged == meta.last_log_id && buffer.len() as u64 == offset => {
                        buffer.extend_from_slice(&data);
                    }
                    _ => {
                        let text = format!("node {id} was told to write snapshot chunk at {offset} out of order");
                        self.checker.violations.push(text);
                        return;
                    }
                }
                if done {
                    if let Some((_, buffer)) = n.staged_snapshot.take() {
                        n.received_snapshot = Some((meta.clone(), Bytes::from(buffer)));
                    }
                    let incarnation = n.incarnation;
                    let delay = self.rng.range(0, 4);
                    self.schedule(delay, Event::SnapshotChecked { node, incarnation, id: meta.last_log_id });
                }
            }
            Action::Apply { entries } => {
                for entry in entries {
                    self.apply_entry(node, entry);
                }
                self.answer_ready_reads(node);
                self.maybe_take_snapshot(node);
            }
            Action::RestoreSnapshot { meta } => {
                let n = &mut self.nodes[node];
                let restored = match &n.received_snapshot {
                    Some((received, data)) if *received == meta => {
                        KvStore::decode_snapshot(data).map(|kv| (kv, data.clone()))
                    }
                    _ => Err("no received snapshot matches".to_string()),
                };
                match restored {
                    Ok((kv, data)) if kv.applied == meta.last_log_id.index => {
                        n.kv = kv;
                        n.snapshots.insert(meta.last_log_id.index, data);
                        n.last_snapshot_index = meta.last_log_id.index;
                        self.outcome.snapshots_installed += 1;
                        self.trace(|| format!("n{id} restored snapshot {}", meta.last_log_id));
                        self.observe_state(node, "restored a snapshot");
                        self.answer_ready_reads(node);
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
            Action::ReadReady { read_id, index } => {
                self.trace(|| format!("n{id} read {read_id} ready at {index}"));
                if self.nodes[node].kv.applied >= index {
                    self.answer_read(node, read_id);
                } else {
                    self.nodes[node].ready_reads.push((index, read_id));
                }
            }
            Action::ReadFailed { read_id, .. } => {
                if let Some(read) = self.nodes[node].pending_reads.remove(&read_id) {
                    self.fail_op(read.client, read.op_id);
                }
            }
            Action::LeaderChanged { leader, term } => {
                if leader == Some(id) {
                    self.outcome.elections += 1;
                    if self.faults_on && self.rng.chance(self.profile.crash_new_leader_per_mille, 1000) {
                        let at = self.rng.range(0, 5 * HEARTBEAT_MS);
                        self.schedule(at, Event::Crash(node));
                    }
                }
                self.trace(|| format!("n{id} sees leader {leader:?} in term {term}"));
            }
        }
    }

    fn apply_entry(&mut self, node: usize, entry: Entry) {
        let id = self.nodes[node].id;
        self.checker.on_applied(self.now, id, &entry);
        let n = &mut self.nodes[node];
        if entry.index != n.kv.applied.next() {
            let text = format!("node {id} applies index {} after {}", entry.index, n.kv.applied);
            self.checker.violations.push(text);
            return;
        }
        n.kv.applied = entry.index;
        let mut result = None;
        if let EntryPayload::Command(data) = &entry.payload {
            match Command::decode(data) {
                Ok(command) => result = Some((command.op_id, n.kv.apply(&command))),
                Err(error) => {
                    let text = format!("node {id} applies undecodable command at {}: {error}", entry.index);
                    self.checker.violations.push(text);
                    return;
                }
            }
        }
        self.observe_state(node, "applied");
        if let Some(pending) = self.nodes[node].pending_writes.remove(&entry.index) {
            match result {
                Some((op_id, output)) if op_id == pending.op_id => {
                    self.max_acked_index = self.max_acked_index.max(entry.index);
                    self.complete_op(pending.client, pending.op_id, output);
                }
                // Another entry won this index: ours can never commit.
                _ => self.fail_op(pending.client, pending.op_id),
            }
        }
    }

    fn answer_ready_reads(&mut self, node: usize) {
        let applied = self.nodes[node].kv.applied;
        let (ready, waiting): (Vec<_>, Vec<_>) =
            self.nodes[node].ready_reads.drain(..).partition(|(index, _)| *index <= applied);
        self.nodes[node].ready_reads = waiting;
        for (_, read_id) in ready {
            self.answer_read(node, read_id);
        }
    }

    fn answer_read(&mut self, node: usize, read_id: u64) {
        if let Some(read) = self.nodes[node].pending_reads.remove(&read_id) {
            let value = self.nodes[node].kv.get(read.key);
            self.complete_op(read.client, read.op_id, OpOutput::Get { value });
        }
    }

    fn maybe_take_snapshot(&mut self, node: usize) {
        let n = &mut self.nodes[node];
        let Some(core) = n.core.as_mut() else { return };
        let applied = n.kv.applied;
        if applied.0 < n.last_snapshot_index.0.saturating_add(self.snapshot_threshold) {
            return;
        }
        let Some(meta) = core.snapshot_meta_for(applied) else { return };
        let data = n.kv.encode_snapshot();
        if core.handle_snapshot_taken(meta.clone()).is_err() {
            return;
        }
        // The snapshot file is written and synced before the log is purged.
        n.disk.snapshot = Some((meta, data.clone()));
        n.snapshots.insert(applied, data);
        n.last_snapshot_index = applied;
        let upto = LogIndex(applied.0.saturating_sub(self.trailing_entries));
        if upto > core.log_start().index && core.compact_log(upto).is_ok() {
            n.disk.purge(upto);
        }
        let id = n.id;
        self.trace(|| format!("n{id} took snapshot at {applied}, compacted to {upto}"));
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
            if self.nodes[node].core.is_none() {
                self.start_node(node);
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
                    self.with_core(node, |core| core.handle_tick(now));
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
                self.with_core(node, |core| core.handle_message(now, from, message));
            }
            Event::SnapshotChecked { node, incarnation, id } => {
                if self.nodes[node].incarnation != incarnation {
                    return;
                }
                let sound = match &self.nodes[node].received_snapshot {
                    Some((meta, data)) if meta.last_log_id == id => KvStore::decode_snapshot(data).is_ok(),
                    _ => false,
                };
                self.with_core(node, |core| core.handle_snapshot_checked(id, sound));
            }
            Event::PersistDone { node, incarnation, seq } => {
                if self.nodes[node].incarnation != incarnation {
                    return;
                }
                let id = self.nodes[node].id;
                while self.nodes[node].disk.unsynced.front().is_some_and(|r| r.seq <= seq) {
                    let Some(request) = self.nodes[node].disk.unsynced.pop_front() else { break };
                    let received = self.nodes[node].received_snapshot.clone();
                    self.nodes[node].disk.apply(&request, received.as_ref());
                    if let Some(hard_state) = request.hard_state {
                        self.checker.on_hard_state_persisted(self.now, id, hard_state);
                    }
                }
                let result = self.with_core(node, |core| core.handle_persisted(seq));
                if let Some(Err(error)) = result {
                    self.checker.violations.push(format!("node {id}: {error}"));
                }
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
                if self.faults_on && self.nodes[node].core.is_some() {
                    self.crash_node(node);
                    let down = if self.rng.chance(1, 2) { self.rng.range(1, 30) } else { self.rng.range(30, 1_000) };
                    self.schedule(down, Event::Restart(node));
                }
            }
            Event::Restart(node) => {
                if self.nodes[node].core.is_none() {
                    self.start_node(node);
                }
            }
        }
    }

    fn check_all(&mut self) {
        for node in &self.nodes {
            if let Some(core) = &node.core {
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
        let accepted = match input {
            OpInput::Get => {
                self.nodes[node].pending_reads.insert(op_id, PendingRead { client, op_id, key });
                let now = self.local_now(node);
                let accepted = self.with_core(node, |core| core.read_index(now, op_id, mode).is_ok()).unwrap_or(false);
                if !accepted {
                    self.nodes[node].pending_reads.remove(&op_id);
                }
                accepted
            }
            input => {
                let command = Command { op_id, key, input };
                match self.with_core(node, |core| core.propose(command.encode())) {
                    Some(Ok(index)) => {
                        self.nodes[node].pending_writes.insert(index, PendingWrite { client, op_id });
                        true
                    }
                    Some(Err(raft_core::ProposeError::NotLeader { leader: Some(leader) })) => {
                        self.clients[client].preferred = (leader.0 - 1) as usize;
                        false
                    }
                    _ => false,
                }
            }
        };
        if accepted {
            self.clients[client].preferred = node;
        } else {
            // Refused before it entered the log or read anything: no effect.
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
            .filter_map(|i| self.nodes[i].core.as_ref().filter(|c| c.is_leader()).map(|c| (c.current_term(), i)))
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
            3 if faults.membership => self.change_membership(),
            4 if faults.transfers => {
                if let Some(leader) = self.leader_node() {
                    let voters: Vec<NodeId> = self.nodes[leader]
                        .core
                        .as_ref()
                        .map(|c| c.membership().voters.iter().copied().collect())
                        .unwrap_or_default();
                    if !voters.is_empty() {
                        let target = voters[self.rng.range(0, voters.len() as u64) as usize];
                        let result = self.with_core(leader, |core| core.transfer_leadership(target));
                        self.trace(|| format!("transfer leadership to n{target}: {result:?}"));
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
            _ => {}
        }
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
        let Some(current) = self.nodes[leader].core.as_ref().map(|c| c.membership().clone()) else { return };
        let all: Vec<NodeId> = self.nodes.iter().map(|n| n.id).collect();
        let outsiders: Vec<NodeId> = all.iter().copied().filter(|id| !current.is_member(*id)).collect();
        let learners: Vec<NodeId> = current.learners.iter().copied().collect();
        let voters: Vec<NodeId> = current.voters.iter().copied().collect();
        let min_voters = 3.min(all.len());
        let pick = |rng: &mut Rng, list: &[NodeId]| list[rng.range(0, list.len() as u64) as usize];
        let change = match self.rng.range(0, 5) {
            0 if !outsiders.is_empty() => MembershipChange::AddLearner(pick(&mut self.rng, &outsiders)),
            1 if !learners.is_empty() => MembershipChange::AddVoter(pick(&mut self.rng, &learners)),
            2 if voters.len() > min_voters => {
                let victim = pick(&mut self.rng, &voters);
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
            _ => return,
        };
        let result = self.with_core(leader, |core| core.propose_membership(change.clone()));
        if matches!(result, Some(Ok(_))) {
            self.outcome.membership_changes += 1;
        }
        self.trace(|| format!("membership change {change:?}: {result:?}"));
    }

    // ---- Liveness ----------------------------------------------------------------

    /// Whether the healed cluster has converged: one leader whose commit covers
    /// every acknowledged write, applied by every member.
    fn converged(&self) -> Result<(), String> {
        let leader = self.leader_node().ok_or("no leader")?;
        let core = self.nodes[leader].core.as_ref().ok_or("leader down")?;
        let commit = core.commit_index();
        if commit < self.max_acked_index {
            return Err(format!("leader n{} commit {commit} below acknowledged {}", core.id(), self.max_acked_index));
        }
        if core.last_log_id().index != commit {
            return Err(format!("leader n{} has uncommitted entries", core.id()));
        }
        let members: Vec<NodeId> = core.membership().members().into_iter().collect();
        for id in members {
            let node = &self.nodes[(id.0 - 1) as usize];
            let Some(member) = node.core.as_ref() else { return Err(format!("member n{id} down")) };
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
    match &node.core {
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

fn describe_persist(request: &PersistRequest) -> String {
    let mut parts = Vec::new();
    if let Some(hs) = request.hard_state {
        parts.push(format!("term={} vote={:?}", hs.current_term, hs.voted_for.map(|v| v.0)));
    }
    if let Some(meta) = &request.snapshot {
        parts.push(format!("snapshot={}", meta.last_log_id));
    }
    if let Some(write) = &request.log {
        let last = write.entries.last().map_or("-".to_string(), |e| e.log_id().to_string());
        parts.push(format!("log from {} (+{} to {last})", write.truncate_from, write.entries.len()));
    }
    parts.join(" ")
}

/// Runs one seed.
pub fn run_seed(cfg: SimConfig) -> Outcome {
    Simulation::new(cfg).run()
}
