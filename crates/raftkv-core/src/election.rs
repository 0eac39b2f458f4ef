//! Terms, elections, PreVote, leader stickiness and role changes (paper §5.2,
//! thesis §9.6 and §4.2.3).
//!
//! Must not touch replication progress directly beyond creating and dropping the
//! leader state.

use crate::core::{Core, LeaderState, Role};
use crate::message::{AppendEntriesResponse, AppendResult, Message, RequestVote, RequestVoteResponse};
use crate::progress::Progress;
use crate::quorum::{vote_result, VoteResult};
use crate::types::{Entry, EntryPayload, NodeId, Term};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Campaign {
    PreVote,
    Election,
    /// Started by TimeoutNow: no pre-vote, and voters skip the stickiness check.
    Transfer,
}

impl Core {
    /// Applies the term rules common to every message (figure 2, "all servers").
    /// Returns false when the message must be dropped.
    pub(crate) fn handle_message_term(&mut self, from: NodeId, message: &Message) -> bool {
        let term = message.term();
        let current = self.hard_state.current_term;
        if term > current {
            match message {
                // A pre-vote never changes the receiver's term; a granted pre-vote
                // response carries the candidate's proposed term.
                Message::RequestVote(request) if request.pre_vote => return true,
                Message::RequestVoteResponse(response) if response.pre_vote && response.granted => return true,
                Message::RequestVote(request) => {
                    if !self.transfer_vote(from, request) && self.leader_recently_heard() {
                        // Leader stickiness (thesis §4.2.3): a node that heard from a
                        // leader within the minimum timeout ignores the request and keeps
                        // its term, so a disruptive candidate cannot depose the leader.
                        return false;
                    }
                    self.become_follower(term, None);
                }
                Message::AppendEntries(_) | Message::InstallSnapshot(_) | Message::TimeoutNow { .. } => {
                    self.become_follower(term, Some(from));
                }
                _ => self.become_follower(term, None),
            }
            return true;
        }
        if term < current {
            match message {
                // Tell a stale leader about the newer term so that it steps down; with
                // CheckQuorum it would otherwise keep a partitioned cluster waiting.
                Message::AppendEntries(request) => {
                    let response =
                        AppendEntriesResponse { term: current, round: request.round, result: AppendResult::StaleTerm };
                    self.send(from, Message::AppendEntriesResponse(response));
                }
                Message::InstallSnapshot(_) => {
                    let response = AppendEntriesResponse { term: current, round: 0, result: AppendResult::StaleTerm };
                    self.send(from, Message::AppendEntriesResponse(response));
                }
                // A node restarted with a stale term learns the current term from the
                // rejection (canonical/raft #279).
                Message::RequestVote(request) => {
                    let response = RequestVoteResponse { term: current, granted: false, pre_vote: request.pre_vote };
                    self.send(from, Message::RequestVoteResponse(response));
                }
                _ => {}
            }
            return false;
        }
        true
    }

    pub(crate) fn handle_election_timeout(&mut self) {
        if !self.membership.is_voter(self.id) {
            // Learners and removed nodes never campaign. A leader silent for a whole
            // election timeout is forgotten, so that reads forwarded to it fail and
            // the runtime stops routing to it, until a leader speaks again.
            if self.leader.is_some() {
                self.fail_forwarded_reads();
                self.set_leader(None);
            }
            self.reset_election_timer();
            return;
        }
        // A node that acknowledged the leader recently may have confirmed its
        // lease, which runs for up to the longest election timeout this node
        // had. Refusing others' votes in that window is not enough: our own
        // vote counts for ourselves, so do not campaign in it either (a timer
        // redrawn from a lowered timeout by `reload_config` fires early).
        if self.role != Role::Leader {
            if let Some(guard_end) = self.vote_guard_end() {
                if self.now < guard_end {
                    // Jittered like any election timer, so that followers held
                    // back together do not campaign together.
                    let spread =
                        self.config.election_timeout_max_ms.saturating_sub(self.config.election_timeout_min_ms);
                    self.election_deadline = guard_end.saturating_add(self.rng.range(0, spread));
                    return;
                }
            }
        }
        let kind = if self.config.pre_vote { Campaign::PreVote } else { Campaign::Election };
        self.campaign(kind);
    }

    pub(crate) fn campaign(&mut self, kind: Campaign) {
        if !self.membership.is_voter(self.id) {
            return;
        }
        assert!(self.role != Role::Leader, "node {}: a leader campaigns", self.id);
        self.fail_forwarded_reads();
        let term = match kind {
            Campaign::PreVote => {
                self.role = Role::PreCandidate;
                Term(self.hard_state.current_term.0 + 1)
            }
            Campaign::Election | Campaign::Transfer => {
                self.hard_state.current_term = Term(self.hard_state.current_term.0 + 1);
                self.hard_state.voted_for = Some(self.id);
                self.mark_hard_state_dirty();
                self.role = Role::Candidate;
                self.hard_state.current_term
            }
        };
        self.set_leader(None);
        self.reset_election_timer();
        self.won_awaiting_persist = false;
        self.votes.clear();
        self.votes.insert(self.id, true);
        if self.election_result() == VoteResult::Won {
            return self.election_won(kind);
        }
        let request = RequestVote {
            term,
            last_log_id: self.log.last_log_id(),
            pre_vote: kind == Campaign::PreVote,
            leadership_transfer: kind == Campaign::Transfer,
        };
        let voters: Vec<NodeId> = self
            .membership
            .members()
            .into_iter()
            .filter(|id| self.membership.is_voter(*id) && *id != self.id)
            .collect();
        for voter in voters {
            // The request depends on our term and self-vote being durable.
            self.send_after_persist(voter, Message::RequestVote(request.clone()));
        }
    }

    fn election_result(&self) -> VoteResult {
        vote_result(&self.membership, |id| self.votes.get(&id).copied())
    }

    fn election_won(&mut self, kind: Campaign) {
        match kind {
            Campaign::PreVote => self.campaign(Campaign::Election),
            // Votes from others arrive only after our term and vote were durable
            // (the requests wait for it); a single voter wins before that.
            Campaign::Election | Campaign::Transfer if self.hard_state_durable() => self.become_leader(),
            Campaign::Election | Campaign::Transfer => self.won_awaiting_persist = true,
        }
    }

    /// Whether a vote request may skip leader stickiness as a leadership
    /// transfer's (thesis §3.10): only from a voter of the configuration. A
    /// leader hands leadership only to a voter, so a flagged request from
    /// anyone else (a removed server, a forger) is an ordinary one.
    fn transfer_vote(&self, from: NodeId, request: &RequestVote) -> bool {
        request.leadership_transfer && self.membership.voters.contains(&from)
    }

    pub(crate) fn handle_request_vote(&mut self, from: NodeId, request: RequestVote) {
        let current = self.hard_state.current_term;
        let may_vote = if request.pre_vote {
            request.term > current
        } else {
            request.term == current && self.hard_state.voted_for.is_none_or(|v| v == from)
        };
        #[allow(unused_mut)]
        let mut log_ok = request.last_log_id >= self.log.last_log_id();
        #[cfg(feature = "bug-injection")]
        if crate::bugs::enabled(crate::bugs::InjectedBug::VoteWithoutLogCheck) {
            log_ok = true;
        }
        let stickiness_ok = self.transfer_vote(from, &request) || !self.leader_recently_heard();
        let granted = may_vote && log_ok && stickiness_ok;
        if granted && !request.pre_vote {
            self.hard_state.voted_for = Some(from);
            self.mark_hard_state_dirty();
            self.reset_election_timer();
        }
        let term = if request.pre_vote && granted { request.term } else { current };
        let response = Message::RequestVoteResponse(RequestVoteResponse { term, granted, pre_vote: request.pre_vote });
        #[cfg(feature = "bug-injection")]
        if crate::bugs::enabled(crate::bugs::InjectedBug::VoteBeforePersist) {
            return self.send(from, response);
        }
        self.send_after_persist(from, response);
    }

    pub(crate) fn handle_vote_response(&mut self, from: NodeId, response: RequestVoteResponse) {
        let (expected_role, expected_term, kind) = if response.pre_vote {
            (Role::PreCandidate, Term(self.hard_state.current_term.0 + 1), Campaign::PreVote)
        } else {
            (Role::Candidate, self.hard_state.current_term, Campaign::Election)
        };
        if self.role != expected_role || (response.granted && response.term != expected_term) {
            return;
        }
        if !self.membership.is_voter(from) {
            return;
        }
        self.votes.insert(from, response.granted);
        match self.election_result() {
            VoteResult::Won => self.election_won(kind),
            VoteResult::Lost => self.become_follower(self.hard_state.current_term, None),
            VoteResult::Pending => {}
        }
    }

    pub(crate) fn handle_timeout_now(&mut self, from: NodeId) {
        if self.leader == Some(from) && self.role != Role::Leader {
            self.campaign(Campaign::Transfer);
        }
    }

    /// Steps down (or stays) as a follower in `term`, which must not be lower.
    pub(crate) fn become_follower(&mut self, term: Term, leader: Option<NodeId>) {
        assert!(term >= self.hard_state.current_term, "node {}: term {term} would go back", self.id);
        if term > self.hard_state.current_term {
            self.hard_state.current_term = term;
            self.hard_state.voted_for = None;
            self.mark_hard_state_dirty();
        }
        if self.role == Role::Leader {
            self.step_down_leader_state();
        }
        if self.role != Role::Follower || self.leader != leader {
            self.fail_forwarded_reads();
        }
        self.role = Role::Follower;
        self.won_awaiting_persist = false;
        self.votes.clear();
        self.set_leader(leader);
        if leader.is_some() {
            self.leader_heard_at = Some(self.now);
        }
        self.reset_election_timer();
    }

    pub(crate) fn become_leader(&mut self) {
        // Won an election of this term with our own vote, durable (§5.2), and
        // holding nothing of a later term: the no-op below keeps terms ordered.
        let term = self.hard_state.current_term;
        assert!(
            self.role == Role::Candidate && self.hard_state.voted_for == Some(self.id) && self.hard_state_durable(),
            "node {}: leads term {term} as {:?} with vote {:?} (durable: {})",
            self.id,
            self.role,
            self.hard_state.voted_for,
            self.hard_state_durable()
        );
        assert!(self.log.last_log_id().term <= term, "node {}: leads term {term} over a later log", self.id);
        self.role = Role::Leader;
        self.votes.clear();
        let now = self.now;
        let mut state = LeaderState {
            heartbeat_due: now,
            check_quorum_due: now + self.config.election_timeout_min_ms,
            ..LeaderState::default()
        };
        let next = self.log.last_index().next();
        for member in self.membership.members() {
            if member != self.id {
                state.progress.insert(member, Progress::new(next, now));
            }
        }
        self.leader_state = Some(state);
        self.set_leader(Some(self.id));
        // A new leader commits a no-op of its own term: only then can it count
        // replicas to commit (§5.4.2) and serve reads (§6.4).
        let entry = Entry { term: self.hard_state.current_term, index: next, payload: EntryPayload::Noop };
        self.append_entry(entry);
        self.request_broadcast();
    }

    /// Drops the leader's state, failing what depended on it.
    fn step_down_leader_state(&mut self) {
        if let Some(state) = self.leader_state.take() {
            let reads = state.reads_waiting_commit.into_iter().chain(state.reads_pending);
            for read in reads {
                self.fail_read(read);
            }
        }
    }
}
