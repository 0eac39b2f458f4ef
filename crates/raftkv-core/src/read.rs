//! Linearizable reads without writing to the log (thesis §6.4): ReadIndex,
//! leader leases, and ReadIndex on behalf of followers.
//!
//! A read is answered at an index; the runtime answers it once its state
//! machine has applied that index.

use crate::core::{Action, Core, ForwardedReads, PendingRead, ReadMode, ReadOrigin, Role};
use crate::error::ReadError;
use crate::message::{Message, ReadId};
use crate::quorum::majority_value;
use crate::types::{LogIndex, Millis, NodeId, Term};

impl Core {
    /// Starts a read at time `now`. The outcome arrives as `Action::ReadReady` or
    /// `Action::ReadFailed` with the same `read_id`; a follower asks the leader
    /// (`forward_reads`).
    ///
    /// NB: `now` must be read when the request is handled, not taken from the last
    /// tick: after a pause (GC, SIGSTOP) the last tick can be far in the past and a
    /// lease that expired during the pause would still look valid.
    pub fn read_index(&mut self, now: Millis, read_id: ReadId, mode: ReadMode) -> Result<(), ReadError> {
        self.advance_clock(now);
        if self.role != Role::Leader {
            if self.leader.is_none() {
                return Err(ReadError::NoLeader);
            }
            self.reads_to_forward.push(read_id);
            return Ok(());
        }
        if mode == ReadMode::Lease && self.lease_valid() {
            let index = self.commit_index;
            self.actions.push(Action::ReadReady { read_id, index });
            return Ok(());
        }
        self.register_read(read_id, ReadOrigin::Local);
        Ok(())
    }

    /// The lease (thesis §6.4.1): followers that acknowledged a round refuse votes
    /// for one minimum election timeout after *receiving* it, which is after the
    /// round began, so no other leader can exist before `round start + timeout`.
    /// The drift bound covers followers' clocks running fast.
    pub fn lease_valid(&self) -> bool {
        self.lease_valid_at(self.now)
    }

    /// Whether the lease holds at local time `now` (never earlier than the last
    /// input's): what a lease read arriving at `now` would find. For observers
    /// such as the simulator's checker, which must judge a paused node by the
    /// time its clock shows, not by its last tick.
    pub fn lease_valid_at(&self, now: Millis) -> bool {
        let Some(state) = self.leader_state.as_ref() else { return false };
        if !self.config.check_quorum || state.lease_disabled || !self.committed_in_current_term() {
            return false;
        }
        let Some(start) = state.lease_start else { return false };
        #[allow(unused_mut)]
        let mut lease_ms = self.lease_ms;
        #[cfg(feature = "bug-injection")]
        if crate::bugs::enabled(crate::bugs::InjectedBug::LeaseOutlivesVoteGuard) {
            lease_ms = self.config.election_timeout_max_ms;
        }
        now.max(self.now) < start.saturating_add(lease_ms)
    }

    pub(crate) fn committed_in_current_term(&self) -> bool {
        self.log.term_at(self.commit_index) == Some(self.hard_state.current_term)
    }

    fn register_read(&mut self, read_id: ReadId, origin: ReadOrigin) {
        let committed = self.committed_in_current_term();
        let commit_index = self.commit_index;
        let Some(state) = self.leader_state.as_mut() else { return };
        let read = PendingRead { read_id, origin, index: commit_index, round: state.round + 1 };
        if !committed {
            // A new leader does not know the commit index until its no-op commits
            // (thesis §6.4): the read waits.
            state.reads_waiting_commit.push(read);
            return;
        }
        #[cfg(feature = "bug-injection")]
        if crate::bugs::enabled(crate::bugs::InjectedBug::ReadIndexWithoutHeartbeat) {
            return self.resolve_read(read);
        }
        state.reads_pending.push_back(read);
        state.read_round_wanted = true;
    }

    pub(crate) fn release_reads_waiting_commit(&mut self) {
        if !self.committed_in_current_term() {
            return;
        }
        let Some(state) = self.leader_state.as_mut() else { return };
        let waiting = std::mem::take(&mut state.reads_waiting_commit);
        for read in waiting {
            self.register_read(read.read_id, read.origin);
        }
    }

    /// Confirms every round acknowledged by a quorum: resolves reads that waited
    /// for it and extends the lease from the time the round began.
    pub(crate) fn maybe_confirm_rounds(&mut self) {
        let id = self.id;
        let Some(state) = self.leader_state.as_mut() else { return };
        let round = state.round;
        let acked = |peer: NodeId| {
            if peer == id {
                round
            } else {
                state.progress.get(&peer).map_or(0, |p| p.acked_round)
            }
        };
        // A full majority of each half of the configuration; learners never count.
        let confirmed = majority_value(&self.membership.voters, acked)
            .min(majority_value(&self.membership.voters_outgoing, acked))
            .min(round);
        if confirmed <= state.confirmed_round {
            return;
        }
        state.confirmed_round = confirmed;
        while let Some((r, started)) = state.round_started.front().copied() {
            if r > confirmed {
                break;
            }
            state.lease_start = Some(started);
            state.round_started.pop_front();
        }
        let mut ready = Vec::new();
        while state.reads_pending.front().is_some_and(|read| read.round <= confirmed) {
            if let Some(read) = state.reads_pending.pop_front() {
                ready.push(read);
            }
        }
        for read in ready {
            self.resolve_read(read);
        }
    }

    fn resolve_read(&mut self, read: PendingRead) {
        match read.origin {
            ReadOrigin::Local => self.actions.push(Action::ReadReady { read_id: read.read_id, index: read.index }),
            ReadOrigin::Remote { peer, term } => {
                let message = Message::ReadIndexResponse { term, read_id: read.read_id, index: Some(read.index) };
                self.send(peer, message);
            }
        }
    }

    pub(crate) fn fail_read(&mut self, read: PendingRead) {
        match read.origin {
            ReadOrigin::Local => {
                self.actions.push(Action::ReadFailed { read_id: read.read_id, error: ReadError::LeadershipLost })
            }
            ReadOrigin::Remote { peer, term } => {
                self.send(peer, Message::ReadIndexResponse { term, read_id: read.read_id, index: None });
            }
        }
    }

    /// A follower asks the leader once for every read that came since its
    /// last request (thesis §6.4), as the leader shares one heartbeat round
    /// among reads. The leader's answer, its commit index when the request
    /// arrived, serves every read that came before the request was sent,
    /// never one that came after: those wait for the next request, sent when
    /// the one in flight is answered. A request unanswered for a heartbeat
    /// interval is taken as lost: its reads are asked for again, with any
    /// new ones, in one request, so at most one request is ever in flight.
    /// Called once per batch of inputs (ticks included), from `flush`.
    pub(crate) fn forward_reads(&mut self) {
        if self.reads_to_forward.is_empty() && self.forwarded_reads.is_empty() {
            return;
        }
        let Some(leader) = self.leader else {
            // Not reachable: losing the leader fails the reads already.
            return self.fail_forwarded_reads();
        };
        let now = self.now;
        let resend_after = self.config.heartbeat_interval_ms;
        if self.forwarded_reads.values().any(|sent| now < sent.sent_at.saturating_add(resend_after)) {
            return;
        }
        let lost = std::mem::take(&mut self.forwarded_reads);
        // The id: a new read's (read ids never repeat: the runtime's promise),
        // or, with only lost reads to ask for again, the newest lost
        // request's. Every lost read came before that request was sent, so a
        // late answer to it still serves them all. Never an old id for a new
        // read: a late answer to the old request could miss a write
        // acknowledged before the new read came.
        let read_id = match self.reads_to_forward.first() {
            Some(&first) => first,
            None => match lost.iter().max_by_key(|(_, sent)| sent.sent_at) {
                Some((&id, _)) => id,
                None => return,
            },
        };
        let mut reads: Vec<ReadId> = lost.into_values().flat_map(|sent| sent.reads).collect();
        reads.append(&mut self.reads_to_forward);
        let term = self.hard_state.current_term;
        self.forwarded_reads.insert(read_id, ForwardedReads { leader, term, sent_at: now, reads });
        self.send(leader, Message::ReadIndexRequest { term, read_id });
    }

    pub(crate) fn fail_forwarded_reads(&mut self) {
        let sent = std::mem::take(&mut self.forwarded_reads).into_values().flat_map(|sent| sent.reads);
        let reads: Vec<ReadId> = sent.chain(std::mem::take(&mut self.reads_to_forward)).collect();
        for read_id in reads {
            self.actions.push(Action::ReadFailed { read_id, error: ReadError::LeadershipLost });
        }
    }

    /// A follower's read, forwarded in `term`. Served only by the leader of that
    /// term; any other node refuses it at once so that the follower can retry.
    pub(crate) fn handle_read_index_request(&mut self, from: NodeId, term: Term, read_id: ReadId) {
        if self.role == Role::Leader && term == self.hard_state.current_term {
            self.register_read(read_id, ReadOrigin::Remote { peer: from, term });
        } else {
            self.send(from, Message::ReadIndexResponse { term, read_id, index: None });
        }
    }

    /// A leader's answer to a forwarded request, for every read it stands for.
    /// Answers from any other node or term (a stale leader, a duplicate, a
    /// forgery) are dropped: only the leader the request was sent to, in the
    /// term it was sent in, can vouch for the index.
    pub(crate) fn handle_read_index_response(
        &mut self,
        from: NodeId,
        term: Term,
        read_id: ReadId,
        index: Option<LogIndex>,
    ) {
        let Some(sent) = self.forwarded_reads.remove(&read_id) else { return };
        if sent.leader != from || sent.term != term {
            self.forwarded_reads.insert(read_id, sent);
            return;
        }
        #[allow(unused_mut)]
        let mut reads = sent.reads;
        #[cfg(feature = "bug-injection")]
        if crate::bugs::enabled(crate::bugs::InjectedBug::ForwardedAnswerServesLaterReads)
            && !self.reads_to_forward.is_empty()
        {
            crate::bugs::note_triggered();
            reads.append(&mut self.reads_to_forward);
        }
        for read_id in reads {
            let action = match index {
                Some(index) => Action::ReadReady { read_id, index },
                None => Action::ReadFailed { read_id, error: ReadError::LeadershipLost },
            };
            self.actions.push(action);
        }
    }
}
