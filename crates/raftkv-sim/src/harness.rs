//! A hand-driven cluster for scenario tests: the test decides which messages
//! arrive, which writes complete and how time moves, like etcd's interaction
//! tests. Nothing here is random; every node's seed is its id.

use std::collections::{BTreeMap, BTreeSet, VecDeque};

use bytes::Bytes;
use raftkv_core::{
    Action, Configuration, Core, CoreConfig, DurableState, Entry, EntryPayload, HardState, InstallSnapshot, LogId,
    LogIndex, Message, NodeId, PersistRequest, ReadId, ReadMode, SnapshotMeta, Term,
};

pub const HEARTBEAT_MS: u64 = 10;
pub const ELECTION_MIN_MS: u64 = 100;
pub const ELECTION_MAX_MS: u64 = 200;
const CHUNK_BYTES: usize = 16;

/// One node: its core (None while crashed), its disk, and what it applied.
pub struct TestNode {
    pub id: NodeId,
    pub core: Option<Core>,
    pub config: CoreConfig,
    pub hard_state: HardState,
    pub snapshot: Option<(SnapshotMeta, Bytes)>,
    pub log: Vec<Entry>,
    /// Persists issued but not completed: lost by a crash.
    pub unsynced: VecDeque<PersistRequest>,
    /// When set, persists stay unsynced until `release_persists`.
    pub hold_persists: bool,
    /// Applied entries' payloads in order; the "state machine".
    pub applied: Vec<Entry>,
    pub applied_index: LogIndex,
    pub reads: BTreeMap<ReadId, Result<LogIndex, raftkv_core::ReadError>>,
    staged_snapshot: Option<(LogId, Vec<u8>)>,
    received_snapshot: Option<(SnapshotMeta, Bytes)>,
    snapshots: BTreeMap<LogIndex, Bytes>,
}

impl TestNode {
    pub fn core(&self) -> &Core {
        self.core.as_ref().expect("node is running")
    }

    /// The "state machine" as bytes: every applied command, in order.
    fn encode_state(&self) -> Bytes {
        let mut data = Vec::new();
        data.extend_from_slice(&self.applied_index.0.to_be_bytes());
        for entry in &self.applied {
            if let EntryPayload::Command(command) = &entry.payload {
                data.extend_from_slice(&(command.len() as u32).to_be_bytes());
                data.extend_from_slice(command);
            }
        }
        Bytes::from(data)
    }

    fn decode_state(data: &[u8]) -> (LogIndex, Vec<Bytes>) {
        let index = LogIndex(u64::from_be_bytes(data[..8].try_into().expect("8-byte header")));
        let mut commands = Vec::new();
        let mut rest = &data[8..];
        while rest.len() >= 4 {
            let len = u32::from_be_bytes(rest[..4].try_into().expect("4-byte length")) as usize;
            commands.push(Bytes::copy_from_slice(&rest[4..4 + len]));
            rest = &rest[4 + len..];
        }
        (index, commands)
    }

    /// A snapshot's commands as applied entries (their indexes are not kept).
    fn restored_commands(data: &[u8], term: Term) -> (LogIndex, Vec<Entry>) {
        let (index, commands) = TestNode::decode_state(data);
        let entry = |c| Entry { term, index: LogIndex::ZERO, payload: EntryPayload::Command(c) };
        (index, commands.into_iter().map(entry).collect())
    }

    /// Commands applied so far (including those restored from a snapshot).
    pub fn commands(&self) -> Vec<Bytes> {
        self.applied
            .iter()
            .filter_map(|e| match &e.payload {
                EntryPayload::Command(c) => Some(c.clone()),
                _ => None,
            })
            .collect()
    }
}

pub struct Cluster {
    pub nodes: BTreeMap<NodeId, TestNode>,
    /// Messages in flight, in send order.
    pub in_flight: VecDeque<(NodeId, NodeId, Message)>,
    pub blocked: BTreeSet<(NodeId, NodeId)>,
    pub now: u64,
}

impl Cluster {
    /// A cluster whose founding configuration has `voters` and `learners`.
    pub fn with_members(voters: &[u64], learners: &[u64], tune: impl Fn(&mut CoreConfig)) -> Cluster {
        let mut config = Configuration::new(voters.iter().map(|v| NodeId(*v)));
        config.learners = learners.iter().map(|l| NodeId(*l)).collect();
        let mut durable = DurableState::bootstrap([]);
        durable.entries[0].payload = EntryPayload::Config(config);
        let mut cluster =
            Cluster { nodes: BTreeMap::new(), in_flight: VecDeque::new(), blocked: BTreeSet::new(), now: 0 };
        for id in voters.iter().chain(learners) {
            cluster.add_node(*id, durable.clone(), &tune);
        }
        cluster
    }

    pub fn new(size: u64) -> Cluster {
        let voters: Vec<u64> = (1..=size).collect();
        Cluster::with_members(&voters, &[], |_| {})
    }

    /// Adds a node with the given durable state (an empty one for a new server).
    pub fn add_node(&mut self, id: u64, durable: DurableState, tune: impl Fn(&mut CoreConfig)) {
        let id = NodeId(id);
        let mut config = CoreConfig::new(id);
        config.heartbeat_interval_ms = HEARTBEAT_MS;
        config.election_timeout_min_ms = ELECTION_MIN_MS;
        config.election_timeout_max_ms = ELECTION_MAX_MS;
        config.lease_clock_drift_ms = 5;
        config.max_entries_per_append = 4;
        tune(&mut config);
        let node = TestNode {
            id,
            core: None,
            config,
            hard_state: durable.hard_state,
            snapshot: None,
            log: durable.entries,
            unsynced: VecDeque::new(),
            hold_persists: false,
            applied: Vec::new(),
            applied_index: LogIndex::ZERO,
            reads: BTreeMap::new(),
            staged_snapshot: None,
            received_snapshot: None,
            snapshots: BTreeMap::new(),
        };
        self.nodes.insert(id, node);
        self.start(id.0);
    }

    pub fn node(&self, id: u64) -> &TestNode {
        &self.nodes[&NodeId(id)]
    }

    pub fn node_mut(&mut self, id: u64) -> &mut TestNode {
        self.nodes.get_mut(&NodeId(id)).expect("node exists")
    }

    pub fn core(&self, id: u64) -> &Core {
        self.node(id).core()
    }

    /// Runs `f` on the core of `id` and processes the actions it produced.
    pub fn with_core<R>(&mut self, id: u64, f: impl FnOnce(&mut Core) -> R) -> R {
        let core = self.node_mut(id).core.as_mut().expect("node is running");
        let result = f(core);
        self.process(NodeId(id));
        result
    }

    /// (Re)starts a node from its disk.
    pub fn start(&mut self, id: u64) {
        let now = self.now;
        let node = self.node_mut(id);
        let snapshot_meta = node.snapshot.as_ref().map(|(meta, _)| meta.clone());
        let start = snapshot_meta.as_ref().map_or(LogIndex::ZERO, |m| m.last_log_id.index);
        let durable = DurableState {
            hard_state: node.hard_state,
            snapshot: snapshot_meta,
            entries: node.log.iter().filter(|e| e.index > start).cloned().collect(),
        };
        node.applied.clear();
        node.applied_index = start;
        node.snapshots.clear();
        if let Some((meta, data)) = &node.snapshot {
            node.snapshots.insert(meta.last_log_id.index, data.clone());
            node.applied = TestNode::restored_commands(data, meta.last_log_id.term).1;
        }
        let core = Core::new(node.config.clone(), durable, now, node.id.0).expect("valid test configuration");
        if let Err(violation) = core.check_invariants() {
            panic!("at {now}ms, on start: {violation}");
        }
        node.core = Some(core);
    }

    /// Crashes a node: unsynced writes are lost.
    pub fn crash(&mut self, id: u64) {
        let node = self.node_mut(id);
        node.core = None;
        node.unsynced.clear();
        node.staged_snapshot = None;
        node.received_snapshot = None;
    }

    pub fn restart(&mut self, id: u64) {
        self.crash(id);
        self.start(id);
    }

    pub fn isolate(&mut self, id: u64) {
        let ids: Vec<NodeId> = self.nodes.keys().copied().collect();
        for other in ids {
            if other.0 != id {
                self.blocked.insert((NodeId(id), other));
                self.blocked.insert((other, NodeId(id)));
            }
        }
    }

    pub fn heal(&mut self) {
        self.blocked.clear();
    }

    /// Completes every held write of node `id`.
    pub fn release_persists(&mut self, id: u64) {
        self.node_mut(id).hold_persists = false;
        self.sync(NodeId(id));
        self.process(NodeId(id));
    }

    fn sync(&mut self, id: NodeId) {
        let node = self.nodes.get_mut(&id).expect("node exists");
        let mut last = None;
        while let Some(request) = node.unsynced.pop_front() {
            if let Some(meta) = &request.snapshot {
                if let Some((received, data)) = &node.received_snapshot {
                    if received == meta {
                        node.snapshot = Some((meta.clone(), data.clone()));
                    }
                }
                node.log.retain(|e| e.index > meta.last_log_id.index);
            }
            if let Some(write) = &request.log {
                node.log.retain(|e| e.index < write.truncate_from);
                node.log.extend(write.entries.iter().cloned());
            }
            if let Some(hard_state) = request.hard_state {
                node.hard_state = hard_state;
            }
            last = Some(request.seq);
        }
        if let (Some(seq), Some(core)) = (last, node.core.as_mut()) {
            core.handle_persisted(seq).expect("persist sequence issued by this core");
        }
    }

    /// Drains actions of node `id` until it has none, then checks the core's
    /// invariants (a test fails at the first input that breaks one).
    pub fn process(&mut self, id: NodeId) {
        loop {
            let Some(core) = self.nodes.get_mut(&id).and_then(|n| n.core.as_mut()) else { return };
            let actions: Vec<Action> = core.drain_actions().collect();
            if actions.is_empty() {
                if let Err(violation) = core.check_invariants() {
                    panic!("at {}ms: {violation}", self.now);
                }
                return;
            }
            for action in actions {
                self.handle_action(id, action);
            }
            let node = self.nodes.get_mut(&id).expect("node exists");
            if let (Some((meta, _)), Some(core)) = (&node.received_snapshot, node.core.as_mut()) {
                // The received snapshot is sound by construction: the verdict is yes.
                if core.is_checking_snapshot(meta.last_log_id) {
                    core.handle_snapshot_checked(meta.last_log_id, true);
                }
            }
            if !node.hold_persists && !node.unsynced.is_empty() {
                self.sync(id);
            }
        }
    }

    fn handle_action(&mut self, id: NodeId, action: Action) {
        let node = self.nodes.get_mut(&id).expect("node exists");
        match action {
            Action::Persist(request) => node.unsynced.push_back(request),
            Action::Send { to, message } => self.in_flight.push_back((id, to, message)),
            Action::SendSnapshotChunk { to, term, meta, offset } => {
                let Some(data) = node.snapshots.get(&meta.last_log_id.index).cloned() else { return };
                let start = (offset as usize).min(data.len());
                let end = (start + CHUNK_BYTES).min(data.len());
                let chunk =
                    InstallSnapshot { term, meta, offset, data: data.slice(start..end), done: end == data.len() };
                self.in_flight.push_back((id, to, Message::InstallSnapshot(chunk)));
            }
            Action::WriteSnapshotChunk { meta, offset, data, done } => {
                if offset == 0 {
                    node.staged_snapshot = Some((meta.last_log_id, Vec::new()));
                }
                if let Some((staged, buffer)) = &mut node.staged_snapshot {
                    assert_eq!(*staged, meta.last_log_id, "chunk of another snapshot");
                    assert_eq!(buffer.len() as u64, offset, "chunk out of order");
                    buffer.extend_from_slice(&data);
                }
                if done {
                    if let Some((_, buffer)) = node.staged_snapshot.take() {
                        node.received_snapshot = Some((meta, Bytes::from(buffer)));
                    }
                }
            }
            Action::Apply { entries } => {
                for entry in entries {
                    assert_eq!(entry.index, node.applied_index.next(), "node {id} applies out of order");
                    node.applied_index = entry.index;
                    node.applied.push(entry);
                }
            }
            Action::RestoreSnapshot { meta } => {
                let (received, data) = node.received_snapshot.clone().expect("snapshot received before restore");
                assert_eq!(received, meta);
                let (index, applied) = TestNode::restored_commands(&data, meta.last_log_id.term);
                assert_eq!(index, meta.last_log_id.index);
                node.applied = applied;
                node.applied_index = index;
                node.snapshots.insert(index, data);
            }
            Action::ReadReady { read_id, index } => {
                node.reads.insert(read_id, Ok(index));
            }
            Action::ReadFailed { read_id, error } => {
                node.reads.insert(read_id, Err(error));
            }
            Action::LeaderChanged { .. } => {}
        }
    }

    /// Delivers one in-flight message; returns false when none was left.
    pub fn deliver_one(&mut self) -> bool {
        let Some((from, to, message)) = self.in_flight.pop_front() else { return false };
        if self.blocked.contains(&(from, to)) {
            return true;
        }
        let now = self.now;
        if let Some(core) = self.nodes.get_mut(&to).and_then(|n| n.core.as_mut()) {
            core.handle_message(now, from, message);
            self.process(to);
        }
        true
    }

    /// Delivers messages until none are in flight.
    pub fn stabilize(&mut self) {
        let mut budget = 1_000_000;
        while self.deliver_one() {
            budget -= 1;
            assert!(budget > 0, "messages never stopped flowing");
        }
    }

    /// Removes in-flight messages for which `drop` holds; returns them.
    pub fn take_messages(
        &mut self,
        mut matches: impl FnMut(NodeId, NodeId, &Message) -> bool,
    ) -> Vec<(NodeId, NodeId, Message)> {
        let (taken, kept): (Vec<_>, Vec<_>) = self.in_flight.drain(..).partition(|(f, t, m)| matches(*f, *t, m));
        self.in_flight = kept.into();
        taken
    }

    /// Advances time by `ms`, ticking every node each millisecond and delivering
    /// messages at once.
    pub fn run_for(&mut self, ms: u64) {
        for _ in 0..ms {
            self.now += 1;
            let ids: Vec<NodeId> = self.nodes.keys().copied().collect();
            for id in ids {
                let now = self.now;
                if let Some(core) = self.nodes.get_mut(&id).and_then(|n| n.core.as_mut()) {
                    core.handle_tick(now);
                    self.process(id);
                }
            }
            self.stabilize();
        }
    }

    /// The running leader with the highest term.
    pub fn leader(&self) -> Option<u64> {
        self.nodes
            .values()
            .filter_map(|n| n.core.as_ref().filter(|c| c.is_leader()).map(|c| (c.current_term(), n.id.0)))
            .max()
            .map(|(_, id)| id)
    }

    /// Runs until some node leads and has committed in its term; panics after `max_ms`.
    pub fn wait_for_leader(&mut self, max_ms: u64) -> u64 {
        for _ in 0..max_ms {
            if let Some(leader) = self.leader() {
                let core = self.core(leader);
                if core.term_at(core.commit_index()) == Some(core.current_term()) {
                    return leader;
                }
            }
            self.run_for(1);
        }
        panic!("no leader within {max_ms} ms");
    }

    /// Makes `id` campaign now (its election timer fires).
    pub fn campaign(&mut self, id: u64) {
        self.now += ELECTION_MAX_MS;
        let now = self.now;
        self.with_core(id, |core| core.handle_tick(now));
    }

    /// Elects `id` by letting its timer fire first, then stabilizing.
    pub fn elect(&mut self, id: u64) {
        self.campaign(id);
        self.stabilize();
        assert_eq!(self.leader(), Some(id), "node {id} did not win the election");
        self.stabilize();
    }

    pub fn propose(&mut self, id: u64, command: &str) -> Result<LogIndex, raftkv_core::ProposeError> {
        let command = Bytes::copy_from_slice(command.as_bytes());
        self.with_core(id, |core| core.propose(command))
    }

    pub fn read(&mut self, id: u64, read_id: ReadId, mode: ReadMode) -> Result<(), raftkv_core::ReadError> {
        let now = self.now;
        self.with_core(id, |core| core.read_index(now, read_id, mode))
    }

    /// Snapshots node `id` at its applied index and compacts its log, keeping `trailing` entries.
    pub fn snapshot(&mut self, id: u64, trailing: u64) {
        let node = self.node_mut(id);
        let applied = node.applied_index;
        let data = node.encode_state();
        let core = node.core.as_mut().expect("node is running");
        let meta = core.snapshot_meta_for(applied).expect("applied index is in the log");
        core.handle_snapshot_taken(meta.clone()).expect("snapshot covers applied entries");
        let upto = LogIndex(applied.0.saturating_sub(trailing));
        core.compact_log(upto).expect("compaction covered by the snapshot");
        node.snapshot = Some((meta, data.clone()));
        node.snapshots.insert(applied, data);
        node.log.retain(|e| e.index > upto);
    }

    /// Asserts every running node applied the same commands, and returns them.
    pub fn assert_same_state(&self, ids: &[u64]) -> Vec<Bytes> {
        let first = self.node(ids[0]).commands();
        for id in &ids[1..] {
            assert_eq!(self.node(*id).commands(), first, "node {id} differs from node {}", ids[0]);
        }
        first
    }
}

/// The match indexes of the successful append acknowledgements among `messages`, in order.
pub fn acknowledged_matches(messages: &[(NodeId, NodeId, Message)]) -> Vec<LogIndex> {
    messages
        .iter()
        .filter_map(|(_, _, m)| match m {
            Message::AppendEntriesResponse(r) => match r.result {
                raftkv_core::AppendResult::Success { match_index } => Some(match_index),
                _ => None,
            },
            _ => None,
        })
        .collect()
}
