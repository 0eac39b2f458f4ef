//! Raft's safety properties, checked after every simulation step (paper figure 3
//! and openraft's fuzzer list): election safety, log matching, leader
//! completeness, state machine safety, monotonic terms and commit indexes, one
//! vote per term, commit protection (in memory and on disk), lease exclusivity
//! and equal state-machine digests at equal applied indexes; and each node's
//! own invariants (`Core::check_invariants`) after every input it handles.
//!
//! The checker sees nodes only through what they expose or write; it never
//! reaches into the protocol's private state.
//!
//! Promotions of staging learners (thesis §4.2.1) are judged on what each
//! leader showed before each of its ticks (`Core::peers`, its log and its
//! settings), not on the core's own record of them (`caught_up_since`): see
//! [`Checker::before_leader_tick`].
//!
//! Every violation reads `t=<time>ms: <kind>: <details>`, `kind` being one of
//! the constants in [`kind`]; [`violation_kind`] recovers it (the tests that
//! inject bugs match on it).

use std::collections::{BTreeMap, HashMap};

use raftkv_core::{
    vote_result, Configuration, Core, Entry, EntryPayload, HardState, LogId, LogIndex, NodeId, RestoreStep, Term,
    VoteResult,
};

use crate::kv::KvStore;

/// The kinds of violation, as they appear in the messages.
pub mod kind {
    pub const ELECTION_SAFETY: &str = "election safety";
    pub const LOG_MATCHING: &str = "log matching";
    pub const LEADER_COMPLETENESS: &str = "leader completeness";
    pub const STATE_MACHINE_SAFETY: &str = "state machine safety";
    /// A term went back or a vote changed within a term, in memory.
    pub const HARD_STATE_REGRESSION: &str = "hard state regression";
    /// The same, on disk.
    pub const DURABLE_HARD_STATE_REGRESSION: &str = "durable hard state regression";
    pub const COMMIT_REGRESSION: &str = "commit regression";
    /// A committed entry could be lost by an election, judged on the logs in memory.
    pub const COMMIT_PROTECTION: &str = "commit protection";
    /// The same, judged on what a crash of every node would leave (synced logs
    /// and snapshots).
    pub const DURABLE_COMMIT_PROTECTION: &str = "durable commit protection";
    pub const LEASE_EXCLUSIVITY: &str = "lease exclusivity";
    pub const STATE_DIGEST: &str = "state digest";
    /// A node's disk holds a log that does not continue its snapshot: what it
    /// would restart with understates what it holds.
    pub const DURABLE_LOG_CONSISTENCY: &str = "durable log consistency";
    /// Found by the end-of-run history check (`sim.rs`).
    pub const LINEARIZABILITY: &str = "linearizability";
    /// A node's own state breaks an invariant of the core
    /// (`Core::check_invariants`), after an input it handled.
    pub const CORE_INVARIANT: &str = "core invariant";
    /// The simulated code panicked (a failed assertion in the core, say).
    pub const PANIC: &str = "panic";
    /// A leader promoted a staging learner that its own ticks had not seen
    /// caught up for the stable period (thesis §4.2.1).
    pub const PROMOTION: &str = "promotion before caught up";
    /// A staged add (`Driver::add_voter`) was answered against what
    /// committed, twice, or never (`sim.rs`).
    pub const STAGED_ADD: &str = "staged add answer";
    /// A membership change guarded by a stale `prev_index` appended
    /// something, or was answered other than `ConfigChanged`.
    pub const PREV_INDEX_GUARD: &str = "prev_index guard";
}

/// The kind of a violation message: the text before the first `": "`, after
/// the `t=<time>ms: ` prefix if there is one.
pub fn violation_kind(violation: &str) -> &str {
    let text = match violation.split_once("ms: ") {
        Some((time, rest)) if time.strip_prefix("t=").is_some_and(|t| t.bytes().all(|b| b.is_ascii_digit())) => rest,
        _ => violation,
    };
    text.split_once(": ").map_or(text, |(kind, _)| kind)
}

/// Digest of a state machine's content (FNV-1a over its keys and values), to
/// compare nodes at equal applied indexes without keeping copies.
pub fn state_digest(kv: &KvStore) -> u64 {
    let mut hash = 0xcbf2_9ce4_8422_2325u64;
    for (key, value) in &kv.map {
        for byte in key.to_le_bytes().into_iter().chain(value.to_le_bytes()) {
            hash ^= u64::from(byte);
            hash = hash.wrapping_mul(0x0100_0000_01b3);
        }
    }
    hash
}

/// Stable hash of an entry's payload (FNV-1a), so that equal entries compare
/// equal across nodes without keeping copies.
pub fn payload_hash(payload: &EntryPayload) -> u64 {
    let mut hash = 0xcbf2_9ce4_8422_2325u64;
    let mut feed = |bytes: &[u8]| {
        for byte in bytes {
            hash ^= u64::from(*byte);
            hash = hash.wrapping_mul(0x0100_0000_01b3);
        }
    };
    match payload {
        EntryPayload::Noop => feed(b"noop"),
        EntryPayload::Command(data) => {
            feed(b"cmd");
            feed(data);
        }
        EntryPayload::Config(config) => {
            feed(b"cfg");
            for (tag, set) in [(b'v', &config.voters), (b'o', &config.voters_outgoing), (b'l', &config.learners)] {
                feed(&[tag]);
                for id in set {
                    feed(&id.0.to_le_bytes());
                }
            }
            // Every node here runs one version: copies of an entry must agree
            // on its staging marks too.
            if !config.staging.is_empty() {
                feed(b"s");
                for id in &config.staging {
                    feed(&id.0.to_le_bytes());
                }
            }
        }
        EntryPayload::Restore(step) => match step {
            RestoreStep::Begin { id, len, crc32c } => {
                feed(b"rb");
                feed(&id.to_le_bytes());
                feed(&len.to_le_bytes());
                feed(&crc32c.to_le_bytes());
            }
            RestoreStep::Chunk { id, seq, data } => {
                feed(b"rc");
                feed(&id.to_le_bytes());
                feed(&seq.to_le_bytes());
                feed(data);
            }
            RestoreStep::Commit { id, chunks } => {
                feed(b"rm");
                feed(&id.to_le_bytes());
                feed(&chunks.to_le_bytes());
            }
        },
    }
    hash
}

#[derive(Default)]
struct NodeView {
    hard_state: HardState,
    durable_hard_state: HardState,
    commit_index: LogIndex,
    leader_in_term: Option<Term>,
}

/// What one staging learner looked like to a leader as a tick began.
#[derive(Clone, Copy, Debug)]
struct StagingSeen {
    /// The local time of the first tick since which the promotion rule's
    /// condition held at every tick of this leader; `None`: it failed at this one.
    since: Option<u64>,
    match_index: LogIndex,
    last_contact_at: Option<u64>,
}

/// What the promotion check keeps of a node while it leads one term.
struct LeaderWatch {
    term: Term,
    /// The configuration in force after the node's last input, with its
    /// index: the one a change appended by the next input is made from.
    config: (LogIndex, Configuration),
    /// The leader's last log index after its last input: what the next one
    /// appends follows it (a leader never truncates its log).
    last: LogIndex,
    /// Each staging learner as the last tick began.
    staging: BTreeMap<NodeId, StagingSeen>,
    /// The tick being handled: its local time, the commit index and the last
    /// log index as it began.
    tick: Option<(u64, LogIndex, LogIndex)>,
}

impl LeaderWatch {
    fn new(core: &Core) -> LeaderWatch {
        LeaderWatch {
            term: core.current_term(),
            config: (core.membership_index(), core.membership().clone()),
            last: core.last_log_id().index,
            staging: BTreeMap::new(),
            tick: None,
        }
    }
}

/// The voter a single-server change from `prev` to `next` adds out of
/// `prev`'s staging learners (`AddVoter` of a staging id), if that is what it
/// is. A joint change may make a staging learner a voter directly; so may
/// leaving the joint configuration: neither is the promotion rule's.
pub fn promoted_from_staging(prev: &Configuration, next: &Configuration) -> Option<NodeId> {
    if prev.is_joint() || next.is_joint() || !prev.voters.is_subset(&next.voters) {
        return None;
    }
    let mut added = next.voters.difference(&prev.voters);
    let id = *added.next()?;
    (added.next().is_none() && prev.is_staging(id)).then_some(id)
}

#[derive(Default)]
pub struct Checker {
    leaders: BTreeMap<Term, NodeId>,
    /// (index, term) → (payload hash, term of the previous entry): by induction,
    /// equal records for every written entry give the Log Matching property.
    entries: HashMap<(u64, u64), (u64, u64)>,
    /// Index → (term, payload hash) of the entry applied there by anyone.
    applied: BTreeMap<u64, (u64, u64)>,
    /// Index → (entry term, term of the leader that first committed it).
    committed: BTreeMap<u64, (u64, u64)>,
    /// Entries committed during the current step, with the committing leader's
    /// configuration, waiting for `check_commits_protected`.
    newly_committed: Vec<(LogId, Configuration)>,
    nodes: BTreeMap<NodeId, NodeView>,
    /// Applied index → (digest of the state machine there, first node seen there).
    digests: BTreeMap<u64, (u64, NodeId)>,
    /// The highest term in which a leader was seen holding a commit of its own
    /// term: (term, leader, commit index, when).
    highest_committed_term: Option<(Term, NodeId, LogIndex, u64)>,
    /// Leases valid during the current step: (node, term, local time).
    leases: Vec<(NodeId, Term, u64)>,
    /// Per node, while it leads a term: what the promotion check saw of it.
    watches: BTreeMap<NodeId, LeaderWatch>,
    pub violations: Vec<String>,
}

impl Checker {
    /// Records a violation of `kind` found at simulated time `now`.
    pub fn violation(&mut self, now: u64, kind: &str, text: String) {
        self.violations.push(format!("t={now}ms: {kind}: {text}"));
    }

    /// The node seen leading `term`, if any was.
    pub fn leader_of(&self, term: Term) -> Option<NodeId> {
        self.leaders.get(&term).copied()
    }

    /// The watch of `core`'s leadership, started afresh in a new term.
    fn leader_watch(&mut self, core: &Core) -> &mut LeaderWatch {
        let watch = self.watches.entry(core.id()).or_insert_with(|| LeaderWatch::new(core));
        if watch.term != core.current_term() {
            *watch = LeaderWatch::new(core);
        }
        watch
    }

    /// Before a tick of `core` at its local time `local_now`: if it leads,
    /// evaluates the promotion rule's condition for each staging learner on
    /// what the leader shows (thesis §4.2.1; `docs/design/staged-membership.md`
    /// §2): its log within `promotion_max_lag` entries of the leader's last
    /// index, and an answer less than `election_timeout_min_ms` ago, with the
    /// leader's own settings. The core evaluates the rule only on ticks, on
    /// the state the tick begins with (the tick's earlier steps move no match
    /// index, contact or log end), so this is taken before the tick: after
    /// it, the leader's log may end with the promotion itself. Keeps, per
    /// staging learner, the first tick since which the condition held at
    /// every tick of this leader in this term; a learner not staging at a
    /// tick, or missing from its progress, starts over.
    pub fn before_leader_tick(&mut self, core: &Core, local_now: u64) {
        if !core.is_leader() {
            return;
        }
        let last = core.last_log_id().index;
        let commit = core.commit_index();
        let watch = self.leader_watch(core);
        watch.tick = Some((local_now, commit, last));
        if core.membership().staging.is_empty() {
            watch.staging.clear();
            return;
        }
        let config = core.config();
        let (max_lag, contact_ms) = (config.promotion_max_lag, config.election_timeout_min_ms);
        let mut seen = BTreeMap::new();
        for peer in core.peers() {
            if !core.membership().is_staging(peer.id) {
                continue;
            }
            let close = peer.match_index.0.saturating_add(max_lag) >= last.0;
            let heard = peer.last_contact_at.is_some_and(|at| local_now.saturating_sub(at) < contact_ms);
            let held = watch.staging.get(&peer.id).and_then(|s| s.since);
            let since = (close && heard).then(|| held.unwrap_or(local_now));
            seen.insert(
                peer.id,
                StagingSeen { since, match_index: peer.match_index, last_contact_at: peer.last_contact_at },
            );
        }
        watch.staging = seen;
    }

    /// After `core` handled an input (`tick`: a tick, preceded by
    /// `before_leader_tick`): the configurations a leader appended with it
    /// (read off its log, not its configuration in force, which a deliberate
    /// bug may move only on commit). One that moves a staging learner of the
    /// configuration in force before into the voters by a single-server
    /// change must be the promotion rule's: appended on a tick, the
    /// configuration before committed and not joint, the learner caught up
    /// at that tick and, by the leader's clock, at every tick for at least
    /// `promotion_stable_ms` (the leader's setting) before it.
    pub fn after_input(&mut self, now: u64, core: &Core, tick: bool) {
        if !core.is_leader() {
            return;
        }
        let fresh = self.watches.get(&core.id()).is_none_or(|w| w.term != core.current_term());
        let watch = self.leader_watch(core);
        let tick_seen = if tick { watch.tick.take() } else { None };
        let last = core.last_log_id().index;
        let appended = watch.last.0 + 1..=last.0;
        watch.last = last;
        let promoted = if fresh {
            None
        } else {
            appended.map(LogIndex).find_map(|i| match core.entry(i).map(|e| &e.payload) {
                Some(EntryPayload::Config(next)) => promoted_from_staging(&watch.config.1, next).map(|id| (i, id)),
                _ => None,
            })
        };
        let prev_index = watch.config.0;
        if watch.config.0 != core.membership_index() {
            watch.config = (core.membership_index(), core.membership().clone());
        }
        let Some((index, id)) = promoted else { return };
        let watch = self.leader_watch(core);
        let leader = core.id();
        let stable_ms = core.config().promotion_stable_ms;
        let what = format!("leader {leader} (term {}) promoted staging {id} at {index}", core.current_term());
        let text = match tick_seen {
            None => Some(format!("{what} outside a tick, so not by the promotion rule")),
            Some((_, commit, _)) if prev_index > commit => {
                Some(format!("{what} while the configuration at {prev_index} was uncommitted (commit {commit})"))
            }
            Some((at, _, last)) => match watch.staging.get(&id) {
                Some(StagingSeen { since: Some(since), .. }) if at.saturating_sub(*since) >= stable_ms => None,
                Some(StagingSeen { since: Some(since), .. }) => Some(format!(
                    "{what} at its local time {at}ms, caught up only since {since}ms: {} ms < promotion_stable_ms {stable_ms}",
                    at - since
                )),
                Some(StagingSeen { since: None, match_index, last_contact_at }) => Some(format!(
                    "{what} at its local time {at}ms, not caught up then: match {match_index} of {last} (max lag {}), \
                     last contact {last_contact_at:?} (within {} ms)",
                    core.config().promotion_max_lag,
                    core.config().election_timeout_min_ms
                )),
                None => Some(format!("{what} at its local time {at}ms, not seen staging as that tick began")),
            },
        };
        if let Some(text) = text {
            self.violation(now, kind::PROMOTION, text);
        }
    }

    /// After a storage step: the log a restart of `node` would work with (its
    /// disk's, after start-up's repair) must continue its snapshot `snapshot`
    /// (the entry at its index, if held, has its term; the next one a term no
    /// lower), or the node would start from a log whose terms go backwards.
    /// `term_at` reads that log.
    pub fn on_disk_changed(
        &mut self,
        now: u64,
        node: NodeId,
        snapshot: Option<LogId>,
        term_at: impl Fn(LogIndex) -> Option<Term>,
    ) {
        let Some(snapshot) = snapshot else { return };
        let at = term_at(snapshot.index);
        let next = term_at(snapshot.index.next());
        if at.is_some_and(|term| term != snapshot.term) || next.is_some_and(|term| term < snapshot.term) {
            let text = format!(
                "node {node}'s disk holds snapshot {snapshot} with a log whose entry {} has term {at:?} and entry {} term {next:?}",
                snapshot.index,
                snapshot.index.next()
            );
            self.violation(now, kind::DURABLE_LOG_CONSISTENCY, text);
        }
    }

    /// Entries a node is about to write, `prev_term` being the term of the entry
    /// before the first one.
    pub fn on_entries_written(&mut self, now: u64, node: NodeId, prev_term: Term, entries: &[Entry]) {
        let mut prev = prev_term;
        for entry in entries {
            let record = (payload_hash(&entry.payload), prev.0);
            let key = (entry.index.0, entry.term.0);
            match self.entries.get(&key) {
                Some(existing) if *existing != record => self.violation(
                    now,
                    kind::LOG_MATCHING,
                    format!(
                        "node {node} writes entry {}-{} that differs from another node's \
                         (payload or previous term {} vs {})",
                        entry.term, entry.index, prev, existing.1
                    ),
                ),
                Some(_) => {}
                None => {
                    self.entries.insert(key, record);
                }
            }
            prev = entry.term;
        }
    }

    /// A node applies `entry` to its state machine.
    pub fn on_applied(&mut self, now: u64, node: NodeId, entry: &Entry) {
        let record = (entry.term.0, payload_hash(&entry.payload));
        match self.applied.get(&entry.index.0) {
            Some(existing) if *existing != record => self.violation(
                now,
                kind::STATE_MACHINE_SAFETY,
                format!(
                    "node {node} applies {}-{} but term {} was applied at that index",
                    entry.term, entry.index, existing.0
                ),
            ),
            Some(_) => {}
            None => {
                self.applied.insert(entry.index.0, record);
            }
        }
    }

    /// A node's durable hard state changed.
    pub fn on_hard_state_persisted(&mut self, now: u64, node: NodeId, new: HardState) {
        let old = self.nodes.entry(node).or_default().durable_hard_state;
        if let Some(text) = hard_state_regression(old, new) {
            self.violation(now, kind::DURABLE_HARD_STATE_REGRESSION, format!("node {node}: {text}"));
        }
        self.nodes.entry(node).or_default().durable_hard_state = new;
    }

    /// A node's state machine, with digest `digest`, reflects every entry through
    /// `index`: after applying an entry, restoring a snapshot, or restarting from
    /// one. Every node must hold the same state at the same index.
    pub fn on_state_at(&mut self, now: u64, node: NodeId, index: LogIndex, digest: u64, how: &str) {
        match self.digests.get(&index.0) {
            Some((existing, first)) if *existing != digest => {
                let first = *first;
                self.violation(
                    now,
                    kind::STATE_DIGEST,
                    format!(
                        "node {node} holds state {digest:016x} at applied index {index} ({how}) but node {first} \
                         held {existing:016x} there"
                    ),
                );
            }
            Some(_) => {}
            None => {
                self.digests.insert(index.0, (digest, node));
            }
        }
    }

    /// A node restarted: its in-memory view restarts from what it made durable.
    pub fn on_restart(&mut self, node: NodeId, durable: HardState) {
        let view = self.nodes.entry(node).or_default();
        view.hard_state = durable;
        view.commit_index = LogIndex::ZERO;
        view.leader_in_term = None;
    }

    pub fn has_new_commits(&self) -> bool {
        !self.newly_committed.is_empty()
    }

    pub fn max_applied_index(&self) -> LogIndex {
        LogIndex(self.applied.keys().next_back().copied().unwrap_or(0))
    }

    /// The core's own invariants, after `core` handled an input: all of them
    /// if `full`, else those that need no walk along the log.
    pub fn check_core_invariants(&mut self, now: u64, core: &Core, full: bool) {
        let checked = if full { core.check_invariants() } else { core.check_invariants_per_step() };
        if let Err(violation) = checked {
            self.violation(now, kind::CORE_INVARIANT, violation.to_string());
        }
    }

    /// The per-step checks on one live node, whose clock shows `local_now`.
    pub fn check_node(&mut self, now: u64, core: &Core, local_now: u64) {
        let id = core.id();
        let hard_state = core.hard_state();
        let view = self.nodes.entry(id).or_default();
        let old_hard_state = view.hard_state;
        view.hard_state = hard_state;
        let old_commit = view.commit_index;
        view.commit_index = old_commit.max(core.commit_index());
        let newly_leader = core.is_leader() && view.leader_in_term != Some(hard_state.current_term);
        if core.is_leader() {
            view.leader_in_term = Some(hard_state.current_term);
        }
        if let Some(text) = hard_state_regression(old_hard_state, hard_state) {
            self.violation(now, kind::HARD_STATE_REGRESSION, format!("node {id}: {text}"));
        }
        if core.commit_index() < old_commit {
            self.violation(
                now,
                kind::COMMIT_REGRESSION,
                format!("node {id}: commit index went back from {old_commit} to {}", core.commit_index()),
            );
        }
        if core.lease_valid_at(local_now) {
            self.leases.push((id, hard_state.current_term, local_now));
        }
        if !core.is_leader() {
            return;
        }
        let term = hard_state.current_term;
        if core.term_at(core.commit_index()) == Some(term)
            && self.highest_committed_term.is_none_or(|(highest, ..)| highest < term)
        {
            self.highest_committed_term = Some((term, id, core.commit_index(), now));
        }
        for index in old_commit.0 + 1..=core.commit_index().0 {
            if let Some(entry_term) = core.term_at(LogIndex(index)) {
                if let std::collections::btree_map::Entry::Vacant(slot) = self.committed.entry(index) {
                    slot.insert((entry_term.0, term.0));
                    self.newly_committed.push((LogId::new(entry_term, LogIndex(index)), core.membership().clone()));
                }
            }
        }
        match self.leaders.get(&term) {
            Some(other) if *other != id => {
                let other = *other;
                self.violation(now, kind::ELECTION_SAFETY, format!("nodes {other} and {id} both lead term {term}"));
            }
            Some(_) => {}
            None => {
                self.leaders.insert(term, id);
            }
        }
        if newly_leader {
            self.check_leader_completeness(now, core);
        }
    }

    /// Lease exclusivity (thesis §6.4.1): no node may hold a lease, judged by its
    /// own clock, in a term below one in which a leader has committed an entry
    /// of its own. Such a leader was elected, and a quorum that acknowledged the
    /// lease's round refuses votes for longer than the lease lasts, so the lease
    /// must have ended first; a lease read served after that misses the newer
    /// leader's writes. Call after `check_node` on every live node.
    pub fn check_leases(&mut self, now: u64) {
        let leases = std::mem::take(&mut self.leases);
        let Some((committed_term, leader, commit, at)) = self.highest_committed_term else { return };
        for (node, term, local_now) in leases {
            if term < committed_term {
                self.violation(
                    now,
                    kind::LEASE_EXCLUSIVITY,
                    format!(
                        "node {node} holds a valid lease in term {term} at its local time {local_now}ms, but node \
                         {leader} leads term {committed_term} and committed through {commit} in it (seen at t={at}ms)"
                    ),
                );
                return;
            }
        }
    }

    /// A committed entry must be safe from being overwritten: no node that lacks it
    /// may be able to win an election, i.e. the voters whose logs are no more up
    /// to date than that node's must not form a quorum of the committing leader's
    /// configuration. Raft guarantees this because a quorum durably holds an entry
    /// of the commit term at or after it (§5.4.3); committing an older term's entry
    /// by counting replicas breaks it (the paper's figure 8) at the moment of the
    /// commit, long before an unlucky election turns it into lost data.
    ///
    /// Judged twice: on `memory` (the logs an election would see now; a node that
    /// is down counts with its disk) and on `durable` (what a crash of every node
    /// would leave: synced logs and snapshots). The second catches a commit that
    /// counted an acknowledgement or the leader's own entry before the write was
    /// synced. Hard states do not enter it: any node can move to a fresh term, so
    /// only the logs decide who could win.
    pub fn check_commits_protected(&mut self, now: u64, memory: &[LogView<'_>], durable: &[LogView<'_>]) {
        for (entry, config) in std::mem::take(&mut self.newly_committed) {
            for (logs, label, seen) in
                [(memory, kind::COMMIT_PROTECTION, "in memory"), (durable, kind::DURABLE_COMMIT_PROTECTION, "on disk")]
            {
                if let Some((candidate, last)) = unprotected(entry, &config, logs) {
                    self.violation(
                        now,
                        label,
                        format!(
                            "committed entry {entry} is not protected {seen}: node {candidate} (last log {last}) \
                             lacks it and could win an election in {config}"
                        ),
                    );
                    return;
                }
            }
        }
    }

    /// Every entry committed in an earlier term must be in a new leader's log
    /// (§5.4.3). A leader of an old term can still appear late (its votes were
    /// cast before later terms began); it need not hold entries committed after.
    fn check_leader_completeness(&mut self, now: u64, core: &Core) {
        let start = core.log_start().index.0;
        let leader_term = core.current_term().0;
        let mut missing = None;
        for (index, (term, commit_term)) in self.committed.range(start + 1..) {
            if *commit_term < leader_term && core.term_at(LogIndex(*index)) != Some(Term(*term)) {
                missing = Some((*index, *term));
                break;
            }
        }
        if let Some((index, term)) = missing {
            self.violation(
                now,
                kind::LEADER_COMPLETENESS,
                format!("node {} leads term {} without committed entry {term}-{index}", core.id(), core.current_term()),
            );
        }
    }
}

fn hard_state_regression(old: HardState, new: HardState) -> Option<String> {
    if new.current_term < old.current_term {
        return Some(format!("term went back from {} to {}", old.current_term, new.current_term));
    }
    if new.current_term == old.current_term {
        if let Some(voted) = old.voted_for {
            if new.voted_for != Some(voted) {
                return Some(format!("vote in term {} changed from {voted} to {:?}", new.current_term, new.voted_for));
            }
        }
    }
    None
}

/// A node lacking `entry` that could win an election in `config` on `logs`, with
/// its last log id.
fn unprotected(entry: LogId, config: &Configuration, logs: &[LogView<'_>]) -> Option<(NodeId, LogId)> {
    for candidate in logs {
        let holds = candidate.start().index >= entry.index || candidate.term_at(entry.index) == Some(entry.term);
        if holds || !config.is_voter(candidate.id()) {
            continue;
        }
        let last = candidate.last();
        let electable = vote_result(config, |voter| logs.iter().find(|l| l.id() == voter).map(|l| l.last() <= last))
            == VoteResult::Won;
        if electable {
            return Some((candidate.id(), last));
        }
    }
    None
}

/// One node's log as the protection check reads it, borrowed: the core's log in
/// memory, or entries on disk after a snapshot point.
pub enum LogView<'a> {
    Memory(&'a Core),
    Disk {
        id: NodeId,
        /// The snapshot's last entry (or zero).
        start: LogId,
        /// The contiguous entries after `start`.
        entries: &'a [Entry],
    },
}

impl LogView<'_> {
    fn id(&self) -> NodeId {
        match self {
            LogView::Memory(core) => core.id(),
            LogView::Disk { id, .. } => *id,
        }
    }

    fn start(&self) -> LogId {
        match self {
            LogView::Memory(core) => core.log_start(),
            LogView::Disk { start, .. } => *start,
        }
    }

    fn last(&self) -> LogId {
        match self {
            LogView::Memory(core) => core.last_log_id(),
            LogView::Disk { start, entries, .. } => entries.last().map_or(*start, |e| e.log_id()),
        }
    }

    fn term_at(&self, index: LogIndex) -> Option<Term> {
        match self {
            LogView::Memory(core) => core.term_at(index),
            LogView::Disk { start, entries, .. } => {
                if index == start.index {
                    return Some(start.term);
                }
                let offset = index.0.checked_sub(start.index.0 + 1)?;
                let entry = entries.get(offset as usize)?;
                (entry.index == index).then_some(entry.term)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(term: u64, index: u64) -> Entry {
        Entry { term: Term(term), index: LogIndex(index), payload: EntryPayload::Noop }
    }

    #[test]
    fn violation_kinds_are_read_back() {
        assert_eq!(violation_kind("t=12ms: lease exclusivity: node 1 ..."), kind::LEASE_EXCLUSIVITY);
        assert_eq!(violation_kind("linearizability: history of key 1 ..."), kind::LINEARIZABILITY);
        assert_eq!(violation_kind("node 3: restore 2-9: bad"), "node 3");
    }

    #[test]
    fn different_states_at_one_applied_index_are_flagged() {
        let mut checker = Checker::default();
        let mut kv = KvStore::default();
        kv.map.insert(1, 5);
        checker.on_state_at(1, NodeId(1), LogIndex(4), state_digest(&kv), "applied");
        checker.on_state_at(2, NodeId(2), LogIndex(4), state_digest(&kv), "restored a snapshot");
        assert!(checker.violations.is_empty());
        kv.map.insert(2, 6);
        checker.on_state_at(3, NodeId(3), LogIndex(4), state_digest(&kv), "restored a snapshot");
        assert_eq!(checker.violations.len(), 1);
        assert_eq!(violation_kind(&checker.violations[0]), kind::STATE_DIGEST);
    }

    #[test]
    fn disk_views_read_terms_after_the_snapshot() {
        let entries = [entry(2, 6), entry(3, 7)];
        let view = LogView::Disk { id: NodeId(1), start: LogId::new(Term(2), LogIndex(5)), entries: &entries };
        assert_eq!(view.term_at(LogIndex(5)), Some(Term(2)));
        assert_eq!(view.term_at(LogIndex(7)), Some(Term(3)));
        assert_eq!(view.term_at(LogIndex(4)), None);
        assert_eq!(view.term_at(LogIndex(8)), None);
        assert_eq!(view.last(), LogId::new(Term(3), LogIndex(7)));
    }

    #[test]
    fn a_commit_held_by_a_minority_of_disks_is_unprotected() {
        let config = Configuration::new([NodeId(1), NodeId(2), NodeId(3)]);
        let long = [entry(1, 1), entry(2, 2)];
        let short = [entry(1, 1)];
        let view = |id, entries| LogView::Disk { id: NodeId(id), start: LogId::ZERO, entries };
        let committed = LogId::new(Term(2), LogIndex(2));
        let two_hold = [view(1, &long[..]), view(2, &long[..]), view(3, &short[..])];
        assert_eq!(unprotected(committed, &config, &two_hold), None);
        let one_holds = [view(1, &long[..]), view(2, &short[..]), view(3, &short[..])];
        assert_eq!(unprotected(committed, &config, &one_holds), Some((NodeId(2), LogId::new(Term(1), LogIndex(1)))));
    }
}
