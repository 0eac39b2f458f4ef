//! Raft's safety properties, checked after every simulation step (paper figure 3
//! and openraft's fuzzer list): election safety, log matching, leader
//! completeness, state machine safety, monotonic terms and commit indexes, and
//! one vote per term.
//!
//! The checker sees nodes only through what they expose or write; it never
//! reaches into the protocol's private state.

use std::collections::{BTreeMap, HashMap};

use raft_core::{
    vote_result, Configuration, Core, Entry, EntryPayload, HardState, LogId, LogIndex, NodeId, Term, VoteResult,
};

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
        }
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
    pub violations: Vec<String>,
}

impl Checker {
    fn violation(&mut self, now: u64, text: String) {
        self.violations.push(format!("t={now}ms: {text}"));
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
                    format!(
                        "log matching: node {node} writes entry {}-{} that differs from another node's \
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
                format!(
                    "state machine safety: node {node} applies {}-{} but term {} was applied at that index",
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
            self.violation(now, format!("durable state of node {node}: {text}"));
        }
        self.nodes.entry(node).or_default().durable_hard_state = new;
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

    /// The per-step checks on one live node.
    pub fn check_node(&mut self, now: u64, core: &Core) {
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
            self.violation(now, format!("node {id}: {text}"));
        }
        if core.commit_index() < old_commit {
            self.violation(
                now,
                format!("node {id}: commit index went back from {old_commit} to {}", core.commit_index()),
            );
        }
        if !core.is_leader() {
            return;
        }
        let term = hard_state.current_term;
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
                self.violation(now, format!("election safety: nodes {other} and {id} both lead term {term}"));
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

    /// A committed entry must be safe from being overwritten: no node that lacks it
    /// may be able to win an election, i.e. the voters whose logs are no more up
    /// to date than that node's must not form a quorum of the committing leader's
    /// configuration. Raft guarantees this because a quorum durably holds an entry
    /// of the commit term at or after it (§5.4.3); committing an older term's entry
    /// by counting replicas breaks it (the paper's figure 8) at the moment of the
    /// commit, long before an unlucky election turns it into lost data.
    pub fn check_commits_protected(&mut self, now: u64, logs: &[NodeLog]) {
        for (entry, config) in std::mem::take(&mut self.newly_committed) {
            for candidate in logs {
                let holds = candidate.start.index >= entry.index || candidate.term_at(entry.index) == Some(entry.term);
                if holds || !config.is_voter(candidate.id) {
                    continue;
                }
                let electable =
                    vote_result(&config, |voter| logs.iter().find(|l| l.id == voter).map(|l| l.last <= candidate.last))
                        == VoteResult::Won;
                if electable {
                    self.violation(
                        now,
                        format!(
                            "committed entry {entry} is not protected: node {} (last log {}) lacks it and could win \
                             an election in {config}",
                            candidate.id, candidate.last
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
                format!(
                    "leader completeness: node {} leads term {} without committed entry {term}-{index}",
                    core.id(),
                    core.current_term()
                ),
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

/// What the protection check needs of one node's log (in memory if it runs, on
/// disk if it is down).
pub struct NodeLog {
    pub id: NodeId,
    pub start: LogId,
    pub last: LogId,
    /// Terms of the entries after `start`, in order.
    pub terms: Vec<Term>,
}

impl NodeLog {
    fn term_at(&self, index: LogIndex) -> Option<Term> {
        if index == self.start.index {
            return Some(self.start.term);
        }
        let offset = index.0.checked_sub(self.start.index.0 + 1)?;
        self.terms.get(offset as usize).copied()
    }
}
