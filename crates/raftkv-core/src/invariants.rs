//! The whole-state invariants of one node, checked by `Core::check_invariants`
//! (all of them) and `Core::check_invariants_per_step` (those that cost no
//! walk along the log or the queues: cheap enough after every input).
//!
//! Each holds between any two inputs, whatever the network did, as long as the
//! core's code is right: hostile or malformed messages are dropped before they
//! can break one (`Message::is_well_formed`, the checks at the top of each
//! handler). What only a cluster can judge (one leader per term, Log Matching
//! across nodes, Leader Completeness) is the simulator's checker's; these are
//! what the paper's properties require of a single node's own state:
//!
//! - the log (§5.3): contiguous after the compaction point, terms never going
//!   down along it, so that (index, term) names one prefix (Log Matching);
//! - indexes: compaction point <= applied <= commit <= last index, the durable
//!   index within the log, the compaction point covered by a snapshot that
//!   this node holds and that matches its log (figure 13);
//! - roles and terms (§5.2): only a leader has leader state and names itself
//!   leader; leaders and candidates voted for themselves in their term, and
//!   only a campaigning node holds votes, its own among them; a leader's term
//!   and vote are durable, its last entry is of its term (it appended a no-op,
//!   §5.4.2, and never truncates: Leader Append-Only);
//! - membership (thesis §4.1): the configuration in force is the newest in the
//!   log, or the compaction point's (from an entry at or before it) when the
//!   log holds none; in it and in every configuration in the log, at the
//!   compaction point and in the snapshot, staging marks only learners and no
//!   voter of either half (`staging ⊆ learners`,
//!   `staging ∩ (voters ∪ voters_outgoing) = ∅`: a staging member never
//!   counts, thesis §4.2.1);
//! - a leader's progress (figure 2): one per other member, `match_index` within
//!   its log, `next_index` just past `match_index` or beyond, in-flight appends
//!   ordered between the two, rounds and reads within the current round;
//! - persistence: sequence numbers ordered, messages held only behind persists
//!   not yet done;
//! - reads forwarded to a leader: only by a follower of that leader.
//!
//! Not an invariant: a last log term no higher than the current term, except
//! on a leader. The runtime writes a persist's log before its hard state, so a
//! crash between the two restarts a node with entries of a term its hard state
//! never reached (harmless: that term's leader was elected by a durable
//! majority, so none is left to elect this node in that term).

use std::fmt;

use crate::core::{Core, LeaderState, Role};
use crate::progress::{Progress, ProgressState};
use crate::types::{Configuration, EntryPayload, LogIndex, NodeId};

/// A broken invariant: which one and the state that breaks it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct InvariantViolation {
    /// The node whose state breaks it.
    pub node: NodeId,
    /// Short name of the invariant, e.g. `"log terms non-decreasing"`.
    pub invariant: &'static str,
    /// The values that break it, in words.
    pub detail: String,
}

impl fmt::Display for InvariantViolation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "node {}: {}: {}", self.node, self.invariant, self.detail)
    }
}

impl std::error::Error for InvariantViolation {}

/// Returns early with a violation of `$name` unless `$cond` holds.
macro_rules! ensure {
    ($self:expr, $cond:expr, $name:expr, $($detail:tt)+) => {
        if !$cond {
            return Err(InvariantViolation { node: $self.id, invariant: $name, detail: format!($($detail)+) });
        }
    };
}

impl Core {
    /// Checks every invariant of this node's state (listed in this module's
    /// documentation): O(log length + peers + queued work). With the
    /// `invariants` feature the core calls it itself whenever its actions are
    /// drained, and panics on a violation.
    pub fn check_invariants(&self) -> Result<(), InvariantViolation> {
        self.check_invariants_per_step()?;
        self.check_log_order()?;
        self.check_membership()?;
        self.check_votes()?;
        self.check_queues()?;
        self.check_forwarded_reads()?;
        if let Some(state) = &self.leader_state {
            self.check_leader(state)?;
        }
        Ok(())
    }

    /// The invariants that cost O(1) per peer: indexes, roles and terms,
    /// persistence counters, the configuration's index, each peer's match and
    /// next index. Cheap enough to run after every input (the simulator does).
    /// What it leaves to `check_invariants` (the order of the log's terms,
    /// whole queues and sets) is asserted piece by piece where it changes:
    /// `RaftLog::push` refuses an entry out of order, for one.
    pub fn check_invariants_per_step(&self) -> Result<(), InvariantViolation> {
        self.check_indexes()?;
        self.check_membership_index()?;
        self.check_roles()?;
        self.check_persistence()?;
        if let Some(state) = &self.leader_state {
            ensure!(
                self,
                state.confirmed_round <= state.round,
                "confirmed round started",
                "confirmed {}, current {}",
                state.confirmed_round,
                state.round
            );
            if let Some(start) = state.lease_start {
                ensure!(self, start <= self.now, "lease starts in the past", "lease from {start}, now {}", self.now);
            }
            for (peer, progress) in &state.progress {
                self.check_progress(*peer, progress, state.round)?;
            }
        }
        Ok(())
    }

    // ---- Per step ----------------------------------------------------------------

    /// Compaction point <= applied <= commit <= last index; the durable index
    /// within the log; the compaction point covered by a matching snapshot.
    fn check_indexes(&self) -> Result<(), InvariantViolation> {
        let start = self.log.start();
        let last = self.log.last_index();
        ensure!(
            self,
            start.index <= self.apply_sent && self.apply_sent <= self.commit_index && self.commit_index <= last,
            "compaction <= applied <= commit <= last",
            "compaction point {}, applied {}, commit {}, last {last}",
            start.index,
            self.apply_sent,
            self.commit_index
        );
        ensure!(
            self,
            self.durable_index <= last,
            "durable within log",
            "durable index {} past the last index {last}",
            self.durable_index
        );
        match &self.snapshot {
            None => ensure!(
                self,
                start.index == LogIndex::ZERO,
                "compaction point covered by a snapshot",
                "log starts after {start} but no snapshot is held"
            ),
            Some(snapshot) => {
                let id = snapshot.last_log_id;
                ensure!(
                    self,
                    start.index <= id.index && id.index <= self.apply_sent,
                    "snapshot between compaction point and applied",
                    "snapshot {id}, compaction point {start}, applied {}",
                    self.apply_sent
                );
                ensure!(
                    self,
                    self.log.matches(id),
                    "snapshot matches the log",
                    "snapshot {id}, but the log has term {:?} there",
                    self.log.term_at(id.index)
                );
            }
        }
        Ok(())
    }

    /// The configuration in force comes from a configuration entry at
    /// `membership_index`, or from the compaction point when that entry was
    /// compacted away (compaction keeps its index).
    fn check_membership_index(&self) -> Result<(), InvariantViolation> {
        self.check_staging(&self.membership, format_args!("in force"))?;
        if self.membership_index <= self.log.start().index {
            return Ok(());
        }
        let carried = self.log.entry(self.membership_index).map(|entry| &entry.payload);
        ensure!(
            self,
            matches!(carried, Some(EntryPayload::Config(_))),
            "membership index names a configuration entry",
            "configuration in force from {}, which holds {carried:?}",
            self.membership_index
        );
        Ok(())
    }

    /// A staging mark sits on learners only, and never on a voter of either
    /// half: `staging ⊆ learners` and `staging ∩ (voters ∪ voters_outgoing) = ∅`
    /// (a staging member never counts, thesis §4.2.1). `which` names the
    /// configuration checked.
    fn check_staging(&self, config: &Configuration, which: fmt::Arguments<'_>) -> Result<(), InvariantViolation> {
        let staging = &config.staging;
        ensure!(
            self,
            staging.is_subset(&config.learners),
            "staging marks only learners",
            "configuration {config} ({which}) marks {staging:?} staging"
        );
        ensure!(
            self,
            staging.iter().all(|id| !config.is_voter(*id)),
            "a staging member is no voter",
            "configuration {config} ({which}) marks voters staging: {staging:?}"
        );
        Ok(())
    }

    /// Who may hold leader state, votes and a pending win (§5.2).
    fn check_roles(&self) -> Result<(), InvariantViolation> {
        let term = self.hard_state.current_term;
        let is_leader = self.role == Role::Leader;
        ensure!(self, self.role != Role::Learner, "learner is not a stored role", "role {:?}", self.role);
        ensure!(
            self,
            is_leader == self.leader_state.is_some(),
            "leader state only on a leader",
            "role {:?}, leader state {}",
            self.role,
            self.leader_state.is_some()
        );
        ensure!(
            self,
            is_leader == (self.leader == Some(self.id)),
            "names itself leader only as leader",
            "role {:?}, known leader {:?}",
            self.role,
            self.leader
        );
        if matches!(self.role, Role::Leader | Role::Candidate) {
            ensure!(
                self,
                self.hard_state.voted_for == Some(self.id),
                "leaders and candidates voted for themselves",
                "role {:?} in term {term} with vote {:?}",
                self.role,
                self.hard_state.voted_for
            );
        }
        ensure!(
            self,
            !self.won_awaiting_persist || (self.role == Role::Candidate && !self.hard_state_durable()),
            "a win waits only for its term to be durable",
            "role {:?}, hard state durable {}",
            self.role,
            self.hard_state_durable()
        );
        let campaigning = matches!(self.role, Role::PreCandidate | Role::Candidate);
        ensure!(
            self,
            campaigning == (self.votes.get(&self.id) == Some(&true)) && (campaigning || self.votes.is_empty()),
            "votes only while campaigning, its own first",
            "role {:?}, votes {:?}",
            self.role,
            self.votes
        );
        if is_leader {
            ensure!(
                self,
                self.hard_state_durable(),
                "a leader's term and vote are durable",
                "term {term} led before its hard state was written"
            );
            let last = self.log.last_log_id();
            ensure!(
                self,
                last.term == term,
                "a leader's last entry is of its term",
                "leader of term {term} with last entry {last}"
            );
            ensure!(
                self,
                self.announced_leader == Some((Some(self.id), term)),
                "a leader announced itself in its term",
                "announced {:?}",
                self.announced_leader
            );
        }
        if let Some(heard) = self.leader_heard_at {
            ensure!(self, heard <= self.now, "leader heard in the past", "heard at {heard}, now {}", self.now);
        }
        Ok(())
    }

    /// Persist sequence numbers are ordered; held messages and written log
    /// ids wait only for persists not yet done (ends of the queues; the
    /// whole queues in `check_queues`).
    fn check_persistence(&self) -> Result<(), InvariantViolation> {
        let (done, emitted) = (self.persist_seq_done, self.persist_seq_emitted);
        ensure!(
            self,
            done <= emitted && self.hard_state_seq <= emitted,
            "persist sequences",
            "done {done}, emitted {emitted}, hard state in {}",
            self.hard_state_seq
        );
        let pending = u64::from(!self.pending_persist.is_empty());
        let ends = |seqs: (Option<u64>, Option<u64>), limit: u64| {
            seqs.0.is_none_or(|first| first > done) && seqs.1.is_none_or(|last| last <= limit)
        };
        let log_ids = (self.persist_log_ids.front().map(|e| e.0), self.persist_log_ids.back().map(|e| e.0));
        ensure!(
            self,
            ends(log_ids, emitted),
            "written log ids wait for pending persists",
            "persists {log_ids:?} (done {done}, emitted {emitted})"
        );
        let gated = (self.gated.front().map(|e| e.0), self.gated.back().map(|e| e.0));
        ensure!(
            self,
            ends(gated, emitted + pending),
            "held messages wait for pending persists",
            "held for persists {gated:?} (done {done}, emitted {emitted})"
        );
        if let Some(from) = self.pending_persist.log_from {
            let last = self.log.last_index();
            ensure!(self, from <= last.next(), "pending log write within log", "from {from}, last index {last}");
        }
        Ok(())
    }

    /// A peer's progress as a leader sees it (figure 2): `match_index` within
    /// the leader's log, `next_index` past it and at most one past the log.
    fn check_progress(&self, peer: NodeId, progress: &Progress, round: u64) -> Result<(), InvariantViolation> {
        let last = self.log.last_index();
        let (matched, next) = (progress.match_index, progress.next_index);
        ensure!(
            self,
            peer != self.id && matched <= last && matched < next && next <= last.next(),
            "match < next <= last + 1",
            "peer {peer}: match {matched}, next {next}, last {last}"
        );
        ensure!(
            self,
            progress.acked_round <= round,
            "acknowledged rounds were sent",
            "peer {peer} acknowledged round {} of {round}",
            progress.acked_round
        );
        ensure!(
            self,
            progress.last_contact_at.is_none_or(|at| at <= self.now),
            "a peer's last contact is not in the future",
            "peer {peer}: last contact at {:?}, now {}",
            progress.last_contact_at,
            self.now
        );
        ensure!(
            self,
            progress.caught_up_since.is_none_or(|at| at <= self.now && self.membership.is_staging(peer)),
            "only a staging learner is caught up toward promotion, never since the future",
            "peer {peer}: caught up since {:?}, now {}, staging {:?}",
            progress.caught_up_since,
            self.now,
            self.membership.staging
        );
        let (oldest, newest) = (progress.inflight.front(), progress.inflight.back());
        ensure!(
            self,
            oldest.is_none_or(|sent| matched < *sent) && newest.is_none_or(|sent| *sent < next),
            "in-flight appends between match and next",
            "peer {peer}: {oldest:?}..={newest:?} in flight, match {matched}, next {next}"
        );
        Ok(())
    }

    // ---- Full --------------------------------------------------------------------

    /// Contiguous indexes and non-decreasing terms after the compaction point
    /// (§5.3): (index, term) then names one prefix of the log.
    fn check_log_order(&self) -> Result<(), InvariantViolation> {
        let start = self.log.start();
        let mut expected = start.index.next();
        let mut previous_term = start.term;
        for entry in self.log.slice(self.log.first_index(), self.log.last_index()) {
            ensure!(
                self,
                entry.index == expected,
                "log contiguous",
                "expected index {expected}, found {}",
                entry.index
            );
            ensure!(
                self,
                entry.term >= previous_term,
                "log terms non-decreasing",
                "entry {} has term {} after term {previous_term}",
                entry.index,
                entry.term
            );
            previous_term = entry.term;
            expected = expected.next();
        }
        Ok(())
    }

    /// The configuration in force is its entry's, or the compaction point's;
    /// no configuration entry follows it (thesis §4.1: one takes effect when
    /// appended); a snapshot held records the configuration at its index.
    fn check_membership(&self) -> Result<(), InvariantViolation> {
        let in_force = if self.membership_index <= self.log.start().index {
            Some(&self.base_membership)
        } else {
            match self.log.entry(self.membership_index).map(|entry| &entry.payload) {
                Some(EntryPayload::Config(config)) => Some(config),
                _ => None,
            }
        };
        ensure!(
            self,
            in_force == Some(&self.membership),
            "membership is its entry's",
            "{} in force from {}, where the log says {in_force:?}",
            self.membership,
            self.membership_index
        );
        // Every configuration this node may yet put in force (after a
        // truncation, or as a snapshot's) keeps staging marks on learners.
        self.check_staging(&self.base_membership, format_args!("at the compaction point"))?;
        for entry in self.log.slice(self.log.first_index(), self.log.last_index()) {
            if let EntryPayload::Config(config) = &entry.payload {
                self.check_staging(config, format_args!("in the log at {}", entry.index))?;
            }
        }
        if let Some(snapshot) = &self.snapshot {
            self.check_staging(&snapshot.config, format_args!("of the snapshot"))?;
            let (id, config) = (snapshot.last_log_id, self.config_at(snapshot.last_log_id.index));
            ensure!(
                self,
                snapshot.config == config,
                "snapshot configuration",
                "snapshot {id} holds {}, the log says {config}",
                snapshot.config
            );
        }
        // With the deliberate bug that applies configurations on commit, the
        // configuration in force may be older than the newest in the log.
        #[cfg(feature = "bug-injection")]
        if crate::bugs::enabled(crate::bugs::InjectedBug::ConfigOnCommit) {
            return Ok(());
        }
        let after = self.membership_index.next().max(self.log.first_index());
        let newer = self.log.slice(after, self.log.last_index()).iter().rev().find_map(|entry| match &entry.payload {
            EntryPayload::Config(config) => Some((entry.index, config)),
            _ => None,
        });
        if let Some((index, config)) = newer {
            ensure!(
                self,
                false,
                "membership is the newest in the log",
                "in force: {} from {}; newer in the log: {config} at {index}",
                self.membership,
                self.membership_index
            );
        }
        Ok(())
    }

    /// Only voters' votes are counted.
    fn check_votes(&self) -> Result<(), InvariantViolation> {
        if let Some(voter) = self.votes.keys().find(|id| !self.membership.is_voter(**id)) {
            ensure!(self, false, "only voters' votes count", "node {voter} is no voter of {}", self.membership);
        }
        Ok(())
    }

    /// Written log ids and held messages in persist order, all behind
    /// persists not yet done.
    fn check_queues(&self) -> Result<(), InvariantViolation> {
        let mut previous = self.persist_seq_done;
        for (seq, id) in &self.persist_log_ids {
            ensure!(
                self,
                previous < *seq,
                "written log ids in persist order",
                "log id {id} of persist {seq} after persist {previous}"
            );
            previous = *seq;
        }
        let mut previous = self.persist_seq_done + 1;
        for (seq, to, message) in &self.gated {
            ensure!(
                self,
                previous <= *seq,
                "held messages in persist order",
                "{} to node {to} held for persist {seq} after {previous}",
                message.kind()
            );
            previous = *seq;
        }
        Ok(())
    }

    /// Reads forwarded to a leader, or waiting to be, are pending only on a
    /// follower of it; each request stands for at least one read.
    fn check_forwarded_reads(&self) -> Result<(), InvariantViolation> {
        let term = self.hard_state.current_term;
        ensure!(
            self,
            self.reads_to_forward.is_empty() || (self.role == Role::Follower && self.leader.is_some()),
            "reads wait to be forwarded only on a follower of a known leader",
            "{} reads wait; role {:?}, leader {:?}",
            self.reads_to_forward.len(),
            self.role,
            self.leader
        );
        for (read_id, sent) in &self.forwarded_reads {
            let (leader, asked_in) = (&sent.leader, &sent.term);
            ensure!(
                self,
                !sent.reads.is_empty()
                    && self.role == Role::Follower
                    && self.leader == Some(*leader)
                    && *asked_in <= term,
                "forwarded reads only to the known leader",
                "read {read_id:?} forwarded to node {leader} in term {asked_in}; role {:?}, leader {:?}, term {term}",
                self.role,
                self.leader
            );
        }
        Ok(())
    }

    /// A leader's peers, rounds and reads (figure 2, thesis §6.4).
    fn check_leader(&self, state: &LeaderState) -> Result<(), InvariantViolation> {
        let config = &self.membership;
        let all_members = [&config.voters, &config.voters_outgoing, &config.learners];
        let tracked = state.progress.keys().all(|peer| config.is_member(*peer))
            && all_members.iter().all(|set| set.iter().all(|m| *m == self.id || state.progress.contains_key(m)));
        ensure!(
            self,
            tracked,
            "progress for every other member",
            "progress for {:?}, members {config}",
            state.progress.keys().collect::<Vec<_>>()
        );
        for (peer, progress) in &state.progress {
            // (Not bounded by the window: `reload_config` may narrow it.)
            ensure!(
                self,
                progress.inflight.is_empty() || progress.state == ProgressState::Replicate,
                "in-flight appends only while replicating",
                "peer {peer} in {:?} with {} in flight",
                progress.state,
                progress.inflight.len()
            );
            ensure!(
                self,
                progress.inflight.iter().zip(progress.inflight.iter().skip(1)).all(|(a, b)| a < b),
                "in-flight appends in order",
                "peer {peer}: {:?} in flight",
                progress.inflight
            );
            if let ProgressState::Snapshot { meta, .. } = &progress.state {
                ensure!(
                    self,
                    meta.last_log_id.index <= self.apply_sent,
                    "a sent snapshot was taken here",
                    "peer {peer} is sent snapshot {} but only {} was applied",
                    meta.last_log_id,
                    self.apply_sent
                );
            }
        }

        let mut previous = state.confirmed_round;
        for (round, started) in &state.round_started {
            ensure!(
                self,
                previous < *round && *round <= state.round && *started <= self.now,
                "unconfirmed rounds in order",
                "round {round} started at {started} after round {previous} (current {}, now {})",
                state.round,
                self.now
            );
            previous = *round;
        }
        let mut previous = state.confirmed_round + 1;
        for read in &state.reads_pending {
            ensure!(
                self,
                previous <= read.round && read.round <= state.round + 1 && read.index <= self.commit_index,
                "pending reads wait for an unconfirmed round",
                "read {:?} at {} waits for round {} (confirmed {}, current {}, commit {})",
                read.read_id,
                read.index,
                read.round,
                state.confirmed_round,
                state.round,
                self.commit_index
            );
            previous = read.round;
        }
        ensure!(
            self,
            state.reads_waiting_commit.is_empty() || !self.committed_in_current_term(),
            "reads wait for a commit only before the term's first",
            "{} reads wait though {} of term {} is committed",
            state.reads_waiting_commit.len(),
            self.commit_index,
            self.hard_state.current_term
        );
        if let Some(transfer) = state.transfer {
            ensure!(self, transfer.target != self.id, "transfer to another node", "transfer to itself");
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use std::collections::VecDeque;

    use bytes::Bytes;

    use crate::core::{Action, Core, DurableState, Role};
    use crate::message::Message;
    use crate::types::{Configuration, Entry, EntryPayload, LogIndex, NodeId, Term};
    use crate::CoreConfig;

    /// Three cores wired in memory, persists durable at once; `drain_actions`
    /// checks every invariant (unit tests turn the self-check on).
    struct Trio {
        cores: Vec<Core>,
        inbox: VecDeque<(NodeId, NodeId, Message)>,
        now: u64,
    }

    impl Trio {
        fn new() -> Trio {
            let ids = [NodeId(1), NodeId(2), NodeId(3)];
            let cores = ids
                .iter()
                .map(|id| {
                    let mut config = CoreConfig::new(*id);
                    config.check_quorum = false;
                    Core::new(config, DurableState::bootstrap(ids), 0, id.0).unwrap()
                })
                .collect();
            Trio { cores, inbox: VecDeque::new(), now: 0 }
        }

        fn drain(&mut self, node: usize) {
            let from = self.cores[node].id();
            let actions: Vec<Action> = self.cores[node].drain_actions().collect();
            let mut persisted = None;
            for action in actions {
                match action {
                    Action::Persist(request) => persisted = Some(request.seq),
                    Action::Send { to, message } => self.inbox.push_back((from, to, message)),
                    _ => {}
                }
            }
            if let Some(seq) = persisted {
                self.cores[node].handle_persisted(seq).unwrap();
                self.drain(node);
            }
        }

        fn settle(&mut self) {
            for node in 0..3 {
                self.drain(node);
            }
            while let Some((from, to, message)) = self.inbox.pop_front() {
                let node = (to.0 - 1) as usize;
                self.cores[node].handle_message(self.now, from, message);
                self.drain(node);
            }
        }

        /// Node 1 leads with a few committed commands.
        fn led_by_node_1() -> Trio {
            let mut trio = Trio::new();
            while !trio.cores[0].is_leader() {
                trio.now += 50;
                trio.cores[0].handle_tick(trio.now);
                trio.settle();
            }
            for i in 0..5u8 {
                trio.cores[0].propose(Bytes::from(vec![i])).unwrap();
                trio.settle();
            }
            trio
        }
    }

    fn broken(core: &Core) -> &'static str {
        core.check_invariants().expect_err("a broken invariant is reported").invariant
    }

    #[test]
    fn a_healthy_cluster_holds_every_invariant() {
        let trio = Trio::led_by_node_1();
        assert_eq!(trio.cores[0].commit_index(), LogIndex(7));
        for core in &trio.cores {
            core.check_invariants().unwrap();
        }
    }

    /// Restore steps are replicated and committed like commands, only by
    /// the leader, and count their bytes in `size_bytes`.
    #[test]
    fn restore_steps_replicate_and_commit_like_commands() {
        use crate::error::ProposeError;
        use crate::types::RestoreStep;
        let mut trio = Trio::led_by_node_1();
        let steps = [
            RestoreStep::Begin { id: 5, len: 3, crc32c: 1 },
            RestoreStep::Chunk { id: 5, seq: 0, data: Bytes::from_static(b"abc") },
            RestoreStep::Commit { id: 5, chunks: 1 },
        ];
        let first = trio.cores[0].last_log_id().index.next();
        for step in steps.clone() {
            trio.cores[0].propose_restore(step).unwrap();
            trio.settle();
        }
        // A heartbeat tells the followers the commit index.
        trio.now += 500;
        trio.cores[0].handle_tick(trio.now);
        trio.settle();
        let refused = trio.cores[1].propose_restore(steps[0].clone());
        assert!(matches!(refused, Err(ProposeError::NotLeader { leader: Some(NodeId(1)) })), "{refused:?}");
        for core in &trio.cores {
            assert!(core.commit_index() >= LogIndex(first.0 + 2));
            for (i, step) in steps.iter().enumerate() {
                let entry = core.log.entry(LogIndex(first.0 + i as u64)).expect("replicated");
                assert_eq!(entry.payload, EntryPayload::Restore(step.clone()));
            }
            core.check_invariants().unwrap();
        }
        let chunk = trio.cores[0].log.entry(LogIndex(first.0 + 1)).unwrap();
        assert_eq!(chunk.size_bytes(), 24 + 20 + 3);
    }

    #[test]
    fn a_commit_index_past_the_log_is_reported() {
        let mut trio = Trio::led_by_node_1();
        trio.cores[1].commit_index = LogIndex(99);
        assert_eq!(broken(&trio.cores[1]), "compaction <= applied <= commit <= last");
    }

    #[test]
    fn terms_going_down_along_the_log_are_reported() {
        let mut trio = Trio::led_by_node_1();
        let core = &mut trio.cores[2];
        let index = core.log.last_index().next();
        core.log.entries_mut_for_tests().push(Entry { term: Term(0), index, payload: EntryPayload::Noop });
        assert_eq!(broken(core), "log terms non-decreasing");
    }

    #[test]
    fn a_leader_without_its_own_vote_is_reported() {
        let mut trio = Trio::led_by_node_1();
        trio.cores[0].hard_state.voted_for = Some(NodeId(2));
        assert_eq!(broken(&trio.cores[0]), "leaders and candidates voted for themselves");
    }

    #[test]
    fn leader_state_on_a_follower_is_reported() {
        let mut trio = Trio::led_by_node_1();
        trio.cores[0].role = Role::Follower;
        assert_eq!(broken(&trio.cores[0]), "leader state only on a leader");
    }

    #[test]
    fn a_match_index_past_the_leaders_log_is_reported() {
        let mut trio = Trio::led_by_node_1();
        let last = trio.cores[0].log.last_index();
        let state = trio.cores[0].leader_state.as_mut().unwrap();
        let progress = state.progress.get_mut(&NodeId(2)).unwrap();
        progress.match_index = last.next();
        progress.next_index = last.next().next();
        assert_eq!(broken(&trio.cores[0]), "match < next <= last + 1");
    }

    #[test]
    fn a_stale_membership_is_reported() {
        let mut trio = Trio::led_by_node_1();
        trio.cores[1].membership.voters.remove(&NodeId(3));
        assert_eq!(broken(&trio.cores[1]), "membership is its entry's");
        trio.cores[1].check_invariants_per_step().unwrap();
    }

    /// A staging mark on a voter breaks the invariant wherever the
    /// configuration is: in force, or only further back in the log.
    #[test]
    fn a_staging_voter_is_reported_in_force_and_in_the_log() {
        let mut trio = Trio::led_by_node_1();
        let core = &mut trio.cores[1];
        let ids = |list: &[u64]| list.iter().map(|id| NodeId(*id)).collect();
        let mut marked = Configuration::new([NodeId(1), NodeId(2), NodeId(3)]);
        marked.learners = ids(&[3]);
        marked.staging = ids(&[3]);
        let (term, first) = (core.current_term(), core.log.last_index().next());
        let entries = core.log.entries_mut_for_tests();
        entries.push(Entry { term, index: first, payload: EntryPayload::Config(marked.clone()) });
        (core.membership, core.membership_index) = (marked, first);
        assert_eq!(core.check_invariants_per_step().unwrap_err().invariant, "a staging member is no voter");

        let sound = Configuration::new([NodeId(1), NodeId(2), NodeId(3)]);
        let entries = core.log.entries_mut_for_tests();
        entries.push(Entry { term, index: first.next(), payload: EntryPayload::Config(sound.clone()) });
        (core.membership, core.membership_index) = (sound, first.next());
        core.check_invariants_per_step().unwrap();
        assert_eq!(broken(core), "a staging member is no voter");
    }

    #[test]
    fn hostile_entries_whose_terms_go_down_are_dropped() {
        let mut trio = Trio::led_by_node_1();
        let follower = &mut trio.cores[1];
        let last = follower.log.last_log_id();
        let term = follower.current_term();
        let entries = vec![
            Entry { term, index: last.index.next(), payload: EntryPayload::Noop },
            Entry { term: Term(1), index: last.index.next().next(), payload: EntryPayload::Noop },
        ];
        let append =
            crate::message::AppendEntries { term, prev_log_id: last, entries, leader_commit: last.index, round: 0 };
        follower.handle_message(trio.now, NodeId(1), Message::AppendEntries(append));
        assert_eq!(follower.log.last_log_id(), last);
        follower.check_invariants().unwrap();
    }
}
