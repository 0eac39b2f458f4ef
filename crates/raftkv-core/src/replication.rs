//! Log replication: AppendEntries on both sides, per-peer flow control, commit,
//! InstallSnapshot in chunks, heartbeats and CheckQuorum (paper §5.3, §7).

use crate::core::{Action, Core, IncomingSnapshot, Role};
use crate::message::{
    AppendEntries, AppendEntriesResponse, AppendResult, InstallSnapshot, InstallSnapshotResponse, Message,
};
use crate::progress::{Progress, ProgressState};
use crate::quorum::{has_quorum, joint_majority_value};
use crate::types::{EntryPayload, LogId, LogIndex, NodeId};

impl Core {
    pub(crate) fn request_broadcast(&mut self) {
        if let Some(state) = self.leader_state.as_mut() {
            state.broadcast_wanted = true;
        }
    }

    pub(crate) fn tick_leader(&mut self) {
        let now = self.now;
        let Some(state) = self.leader_state.as_mut() else { return };
        if let Some(transfer) = state.transfer {
            if now >= transfer.deadline {
                // The target did not take over within an election timeout: resume.
                state.transfer = None;
            }
        }
        if now >= state.check_quorum_due {
            state.check_quorum_due = now + self.config.election_timeout_min_ms;
            if self.config.check_quorum && !self.quorum_recently_active() {
                let term = self.hard_state.current_term;
                return self.become_follower(term, None);
            }
        }
        let Some(state) = self.leader_state.as_mut() else { return };
        if now >= state.heartbeat_due {
            state.heartbeat_due = now + self.config.heartbeat_interval_ms;
            self.start_round();
            self.retry_stalled_peers();
        }
        self.tick_promotions();
    }

    /// CheckQuorum: whether a quorum was heard from since the last check; clears
    /// the activity flags for the next period.
    fn quorum_recently_active(&mut self) -> bool {
        let id = self.id;
        let Some(state) = self.leader_state.as_mut() else { return false };
        let active = has_quorum(&self.membership, |peer| {
            peer == id || state.progress.get(&peer).is_some_and(|p| p.recent_active)
        });
        for progress in state.progress.values_mut() {
            progress.recent_active = false;
        }
        active
    }

    /// Starts a heartbeat round: every peer gets an AppendEntries tagged with it.
    pub(crate) fn start_round(&mut self) {
        let now = self.now;
        let Some(state) = self.leader_state.as_mut() else { return };
        state.round += 1;
        state.round_started.push_back((state.round, now));
        state.read_round_wanted = false;
        let peers: Vec<NodeId> = state.progress.keys().copied().collect();
        for peer in peers {
            self.send_heartbeat(peer);
        }
        // A single-voter cluster confirms its rounds by itself.
        self.maybe_confirm_rounds();
    }

    /// Resends to peers whose replication made no progress for two heartbeats:
    /// a lost append or acknowledgement would otherwise stall them forever.
    fn retry_stalled_peers(&mut self) {
        let now = self.now;
        let last = self.log.last_index();
        let stall_ms = 2 * self.config.heartbeat_interval_ms;
        let newest_snapshot = self.snapshot.clone();
        let Some(state) = self.leader_state.as_mut() else { return };
        let mut resend = Vec::new();
        for (peer, progress) in state.progress.iter_mut() {
            match &mut progress.state {
                ProgressState::Probe { paused } => {
                    if *paused {
                        *paused = false;
                        resend.push(*peer);
                    }
                }
                ProgressState::Replicate => {
                    if progress.match_index < last && now >= progress.last_progress_at + stall_ms {
                        progress.become_probe();
                        progress.last_progress_at = now;
                        resend.push(*peer);
                    }
                }
                ProgressState::Snapshot { meta, offset, chunk_in_flight } => {
                    if *chunk_in_flight && now >= progress.last_progress_at + stall_ms {
                        *chunk_in_flight = false;
                        // The snapshot being sent may be gone from the runtime's store
                        // (replaced by newer ones): start over with the newest.
                        if let Some(newest) = newest_snapshot.as_ref() {
                            if newest.last_log_id.index > meta.last_log_id.index {
                                *meta = newest.clone();
                                *offset = 0;
                            }
                        }
                        progress.last_progress_at = now;
                        resend.push(*peer);
                    }
                }
            }
        }
        for peer in resend {
            self.send_to_peer(peer);
        }
    }

    pub(crate) fn flush_leader(&mut self) {
        let Some(state) = self.leader_state.as_mut() else { return };
        // Reads share rounds (thesis §6.4): while one is unconfirmed, reads
        // that came after it wait for the next, which starts as soon as this
        // one is confirmed (or at the next heartbeat, if it is lost). One
        // round in flight at a time keeps a busy leader's heartbeats to about
        // one per round trip instead of one per batch of reads.
        if state.read_round_wanted && state.confirmed_round >= state.round {
            self.start_round();
        }
        let Some(state) = self.leader_state.as_mut() else { return };
        if std::mem::take(&mut state.broadcast_wanted) {
            let peers: Vec<NodeId> = state.progress.keys().copied().collect();
            for peer in peers {
                self.send_to_peer(peer);
            }
        }
    }

    fn send_heartbeat(&mut self, peer: NodeId) {
        let Some(state) = self.leader_state.as_ref() else { return };
        let Some(progress) = state.progress.get(&peer) else { return };
        // The commit index sent is bounded by what the follower is known to hold:
        // the follower commits min(leader_commit, prev index) only.
        let prev_log_id = match self.log.term_at(progress.match_index) {
            Some(term) => LogId::new(term, progress.match_index),
            None => self.log.start(),
        };
        let message = AppendEntries {
            term: self.hard_state.current_term,
            prev_log_id,
            entries: Vec::new(),
            leader_commit: self.commit_index,
            round: state.round,
        };
        self.send(peer, Message::AppendEntries(message));
    }

    /// Sends `peer` whatever its progress state allows: appends up to the window,
    /// a probe, or the next snapshot chunk.
    pub(crate) fn send_to_peer(&mut self, peer: NodeId) {
        loop {
            let Some(state) = self.leader_state.as_mut() else { return };
            let round = state.round;
            let Some(progress) = state.progress.get_mut(&peer) else { return };
            if let ProgressState::Snapshot { meta, offset, chunk_in_flight } = &mut progress.state {
                if !*chunk_in_flight {
                    *chunk_in_flight = true;
                    let action = Action::SendSnapshotChunk {
                        to: peer,
                        term: self.hard_state.current_term,
                        meta: meta.clone(),
                        offset: *offset,
                    };
                    self.actions.push(action);
                }
                return;
            }
            if !progress.can_send_append(self.config.max_inflight_appends) {
                return;
            }
            let prev_index = progress.next_index.prev();
            let Some(prev_term) = self.log.term_at(prev_index) else {
                // The entries this peer needs were compacted: send the snapshot.
                let Some(meta) = self.snapshot.clone() else { return };
                progress.state = ProgressState::Snapshot { meta, offset: 0, chunk_in_flight: false };
                progress.inflight.clear();
                progress.last_progress_at = self.now;
                continue;
            };
            let is_probe = matches!(progress.state, ProgressState::Probe { .. });
            let last = self.log.last_index();
            if !is_probe && progress.next_index > last {
                return;
            }
            let mut bytes = 0;
            let entries: Vec<_> = self
                .log
                .slice(progress.next_index, last)
                .iter()
                .take(self.config.max_entries_per_append)
                .take_while(|entry| {
                    let first = bytes == 0;
                    bytes += entry.size_bytes();
                    first || bytes <= self.config.max_bytes_per_append
                })
                .cloned()
                .collect();
            let sent_last = LogIndex(prev_index.0 + entries.len() as u64);
            if progress.inflight.is_empty() && !entries.is_empty() {
                // Stall detection measures from the first append after an idle spell.
                progress.last_progress_at = self.now;
            }
            progress.sent_append(sent_last, entries.len());
            let message = AppendEntries {
                term: self.hard_state.current_term,
                prev_log_id: LogId::new(prev_term, prev_index),
                entries,
                leader_commit: self.commit_index,
                round,
            };
            self.send(peer, Message::AppendEntries(message));
            if is_probe {
                return;
            }
        }
    }

    /// A message of the current term from the leader `from` (AppendEntries or
    /// InstallSnapshot): follow it and restart the election timer. Returns
    /// false on a leader, which must drop it (two leaders in one term cannot
    /// happen: a forged or corrupt message).
    fn follow(&mut self, from: NodeId) -> bool {
        if self.role == Role::Leader {
            return false;
        }
        if self.role != Role::Follower || self.leader != Some(from) {
            self.become_follower(self.hard_state.current_term, Some(from));
        }
        self.leader_heard_at = Some(self.now);
        self.reset_election_timer();
        true
    }

    /// Follower side of AppendEntries (figure 2, receiver rules 1–5).
    pub(crate) fn handle_append_entries(&mut self, from: NodeId, request: AppendEntries) {
        if !self.follow(from) {
            return;
        }

        // Reject malformed input instead of trusting it: a leader's entries are
        // contiguous, of its term at most, and their terms never go down along
        // its log (from the previous entry's on).
        let mut previous_term = request.prev_log_id.term;
        let well_formed = request.entries.iter().enumerate().all(|(i, entry)| {
            let ordered = previous_term <= entry.term;
            previous_term = entry.term;
            entry.index.0 == request.prev_log_id.index.0 + 1 + i as u64 && ordered && entry.term <= request.term
        });
        if !well_formed {
            return;
        }
        let last_new = LogIndex(request.prev_log_id.index.0 + request.entries.len() as u64);
        let reply = |core: &mut Core, result: AppendResult| {
            let response = AppendEntriesResponse { term: core.hard_state.current_term, round: request.round, result };
            let acknowledged = match result {
                AppendResult::Success { match_index } => match_index,
                AppendResult::Conflict { .. } | AppendResult::StaleTerm => LogIndex::ZERO,
            };
            #[cfg(feature = "bug-injection")]
            if crate::bugs::enabled(crate::bugs::InjectedBug::AckAppendBeforePersist) {
                return core.send(from, Message::AppendEntriesResponse(response));
            }
            if core.hard_state_durable() && acknowledged <= core.durable_index {
                // Promises nothing that is not on disk already (a heartbeat, as a
                // rule): no need to wait behind unrelated writes.
                core.send(from, Message::AppendEntriesResponse(response));
            } else {
                core.send_after_persist(from, Message::AppendEntriesResponse(response));
            }
        };

        // Entries at or below our commit index are committed, hence identical to the
        // leader's (Leader Completeness); skip them rather than compare.
        let mut entries = request.entries;
        let mut prev = request.prev_log_id;
        if prev.index < self.commit_index && !entries.is_empty() {
            let skip = ((self.commit_index.0 - prev.index.0) as usize).min(entries.len());
            prev = entries[skip - 1].log_id();
            entries.drain(..skip);
        }
        if last_new <= self.commit_index {
            return reply(self, AppendResult::Success { match_index: last_new });
        }
        if !self.log.matches(prev) {
            let hint_index = self.log.last_index_with_term_at_most(prev.index, prev.term);
            let hint_term = self.log.term_at(hint_index).unwrap_or_default();
            let result =
                AppendResult::Conflict { rejected: request.prev_log_id.index, hint: LogId::new(hint_term, hint_index) };
            return reply(self, result);
        }

        let mut truncated = false;
        let mut new_config = false;
        for entry in entries {
            match self.log.term_at(entry.index) {
                Some(term) if term == entry.term => continue,
                Some(_) => {
                    // A real conflict: drop our entry and everything after it (§5.3).
                    // Never at or below the commit index, which we skipped above.
                    assert!(entry.index > self.commit_index, "conflict at committed index {}", entry.index);
                    self.log.truncate_from(entry.index);
                    self.mark_log_dirty(entry.index);
                    truncated = true;
                }
                None => {}
            }
            new_config |= matches!(entry.payload, EntryPayload::Config(_));
            let index = entry.index;
            self.log.push(entry);
            self.mark_log_dirty(index);
        }
        if truncated || new_config {
            self.recompute_membership();
        }
        let commit = request.leader_commit.min(last_new);
        self.set_commit_index(commit);
        reply(self, AppendResult::Success { match_index: last_new });
    }

    pub(crate) fn handle_append_response(&mut self, from: NodeId, response: AppendEntriesResponse) {
        let now = self.now;
        let last = self.log.last_index();
        let Some(state) = self.leader_state.as_mut() else { return };
        let Some(progress) = state.progress.get_mut(&from) else { return };
        progress.recent_active = true;
        progress.last_contact_at = Some(now);
        // A StaleTerm answer in our term answered a request of an older term
        // (ours before a restart, say): its round number is that term's, and
        // must not confirm a round of this one (a lease or a read).
        let answers_this_term = !matches!(response.result, AppendResult::StaleTerm);
        if answers_this_term && response.round > progress.acked_round {
            progress.acked_round = response.round.min(state.round);
        }
        match response.result {
            AppendResult::Success { match_index } => {
                let match_index = match_index.min(last);
                let advanced = progress.maybe_update(match_index, now);
                match &progress.state {
                    // The probe was answered: the follower's log matches ours through
                    // `match_index`, so stream from there. A heartbeat's success (at
                    // the old match index) does not answer it; switching on it would
                    // resend everything after the match index.
                    ProgressState::Probe { .. } if match_index.next() >= progress.next_index => {
                        progress.become_replicate();
                    }
                    // The follower got the snapshot's entries some other way.
                    ProgressState::Snapshot { meta, .. } if progress.match_index >= meta.last_log_id.index => {
                        progress.become_probe();
                    }
                    _ => {}
                }
                if advanced {
                    self.maybe_advance_commit();
                    self.maybe_send_timeout_now(from);
                }
                self.send_to_peer(from);
            }
            AppendResult::Conflict { rejected, hint } => {
                let probe_next = self.log.last_index_with_term_at_most(hint.index, hint.term).next();
                let Some(state) = self.leader_state.as_mut() else { return };
                let Some(progress) = state.progress.get_mut(&from) else { return };
                if progress.maybe_decrease_to(rejected, probe_next) {
                    self.send_to_peer(from);
                }
            }
            AppendResult::StaleTerm => {}
        }
        self.maybe_confirm_rounds();
    }

    /// Advances the commit index to the highest index a quorum holds, if that entry
    /// is from the current term (§5.4.2: never commit older terms by counting).
    pub(crate) fn maybe_advance_commit(&mut self) {
        let Some(state) = self.leader_state.as_ref() else { return };
        let id = self.id;
        #[allow(unused_mut)]
        let mut durable = self.durable_index;
        #[cfg(feature = "bug-injection")]
        if crate::bugs::enabled(crate::bugs::InjectedBug::LeaderCountsUnsyncedSelf) {
            durable = self.log.last_index();
        }
        let quorum_index = LogIndex(joint_majority_value(&self.membership, |peer| {
            if peer == id {
                durable.0
            } else {
                state.progress.get(&peer).map_or(0, |p| p.match_index.0)
            }
        }));
        let quorum_index = quorum_index.min(self.log.last_index());
        if quorum_index <= self.commit_index {
            return;
        }
        #[allow(unused_mut)]
        let mut own_term = self.log.term_at(quorum_index) == Some(self.hard_state.current_term);
        #[cfg(feature = "bug-injection")]
        if crate::bugs::enabled(crate::bugs::InjectedBug::CommitOldTermByCount) && !own_term {
            crate::bugs::note_triggered();
            own_term = true;
        }
        if !own_term {
            return;
        }
        self.set_commit_index(quorum_index);
        self.on_leader_commit();
    }

    /// Follow-ups of a commit on the leader: leave a joint configuration, step down
    /// if removed, serve reads that waited for the first commit of the term.
    fn on_leader_commit(&mut self) {
        if self.membership_index <= self.commit_index {
            if self.membership.is_joint() {
                // C(old,new) is committed: append C(new) (thesis §4.3).
                let mut next = self.membership.clone();
                next.voters_outgoing.clear();
                let entry = crate::types::Entry {
                    term: self.hard_state.current_term,
                    index: self.log.last_index().next(),
                    payload: EntryPayload::Config(next),
                };
                self.append_entry(entry);
                self.request_broadcast();
            } else if !self.membership.is_voter(self.id) {
                // Removed (or demoted) leader: step down once C(new) is committed.
                let term = self.hard_state.current_term;
                self.become_follower(term, None);
                return;
            }
        }
        self.release_reads_waiting_commit();
        self.request_broadcast();
    }

    /// Keeps one progress entry per member other than us; replication to removed
    /// nodes stops at once, and a promoted or unmarked learner's stable period
    /// ends.
    pub(crate) fn sync_progress_with_membership(&mut self) {
        let members = self.membership.members();
        let next = self.log.last_index().next();
        let now = self.now;
        let id = self.id;
        let Some(state) = self.leader_state.as_mut() else { return };
        state.progress.retain(|peer, _| members.contains(peer));
        for (peer, progress) in state.progress.iter_mut() {
            if !self.membership.is_staging(*peer) {
                progress.caught_up_since = None;
            }
        }
        for member in members {
            if member != id {
                state.progress.entry(member).or_insert_with(|| Progress::new(next, now));
            }
        }
        state.broadcast_wanted = true;
    }

    /// Leader side of InstallSnapshot: the follower expects `next_offset` next, or
    /// has installed the snapshot.
    pub(crate) fn handle_install_snapshot_response(&mut self, from: NodeId, response: InstallSnapshotResponse) {
        let now = self.now;
        let Some(state) = self.leader_state.as_mut() else { return };
        let Some(progress) = state.progress.get_mut(&from) else { return };
        progress.recent_active = true;
        progress.last_contact_at = Some(now);
        let ProgressState::Snapshot { meta, offset, chunk_in_flight } = &mut progress.state else {
            return;
        };
        if meta.last_log_id != response.snapshot {
            return;
        }
        if !response.done && (!*chunk_in_flight || response.next_offset == *offset) {
            // A duplicate or late answer: the chunk in flight at `offset` will be
            // answered on its own; acting twice would send every chunk twice.
            return;
        }
        progress.last_progress_at = now;
        if response.done {
            let index = meta.last_log_id.index;
            progress.maybe_update(index, now);
            progress.become_probe();
            self.maybe_advance_commit();
        } else {
            *offset = response.next_offset;
            *chunk_in_flight = false;
        }
        self.send_to_peer(from);
    }

    /// Follower side of InstallSnapshot: chunks must arrive in order; a gap or a
    /// restart makes us answer with the offset we expect, so the leader resumes.
    pub(crate) fn handle_install_snapshot(&mut self, from: NodeId, request: InstallSnapshot) {
        if !self.follow(from) {
            return;
        }

        let id = request.meta.last_log_id;
        let term = self.hard_state.current_term;
        if id.term > term {
            // Malformed: a leader's snapshot holds entries of its term at most.
            return;
        }
        let reply = |core: &mut Core, next_offset: u64, done: bool| {
            let response = InstallSnapshotResponse { term, snapshot: id, next_offset, done };
            core.send_after_persist(from, Message::InstallSnapshotResponse(response));
        };
        if id.index <= self.commit_index {
            // We already hold everything it covers, committed and therefore identical.
            self.incoming_snapshot = None;
            self.checking_snapshot = None;
            return reply(self, 0, true);
        }
        if let Some((checking, _)) = &self.checking_snapshot {
            if checking.from == from && checking.term == term && checking.id == id {
                // Received whole and being checked: a resent chunk changes nothing.
                return;
            }
        }
        let expected = match self.incoming_snapshot {
            Some(incoming) if incoming.from == from && incoming.term == term && incoming.id == id => {
                incoming.next_offset
            }
            _ => 0,
        };
        if request.offset != expected {
            return reply(self, expected, false);
        }
        if request.offset == 0 {
            // A new stream: the runtime drops whatever it received before, so
            // a snapshot awaiting its verdict is abandoned with it.
            self.checking_snapshot = None;
        }
        // Both below MAX_WIRE_NUMBER (checked on arrival): no overflow.
        let next = request.offset + request.data.len() as u64;
        self.actions.push(Action::WriteSnapshotChunk {
            meta: request.meta.clone(),
            offset: request.offset,
            data: request.data,
            done: request.done,
        });
        if !request.done {
            self.incoming_snapshot = Some(IncomingSnapshot { from, term, id, next_offset: next });
            return reply(self, next, false);
        }
        // Received whole: the runtime checks its content before it replaces
        // anything (`handle_snapshot_checked`); the answer waits for that.
        self.incoming_snapshot = None;
        self.checking_snapshot = Some((IncomingSnapshot { from, term, id, next_offset: next }, request.meta));
    }

    /// Whether the snapshot `id` was received whole and awaits a verdict.
    pub fn is_checking_snapshot(&self, id: LogId) -> bool {
        self.checking_snapshot.as_ref().is_some_and(|(incoming, _)| incoming.id == id)
    }

    /// The runtime's verdict on the snapshot `id` received whole: installed if
    /// its content is sound, refused (the leader starts the stream again)
    /// otherwise. A verdict on anything but the snapshot awaiting one is
    /// ignored, as is one arriving after this node changed term or role.
    pub fn handle_snapshot_checked(&mut self, id: LogId, sound: bool) {
        let Some((incoming, meta)) = self.checking_snapshot.take() else { return };
        if incoming.id != id {
            self.checking_snapshot = Some((incoming, meta));
            return;
        }
        let term = self.hard_state.current_term;
        let following = matches!(self.role, Role::Follower | Role::Learner);
        if incoming.term != term || !following || self.leader != Some(incoming.from) {
            return;
        }
        let (next_offset, done) = if !sound {
            (0, false)
        } else if id.index <= self.commit_index {
            (0, true)
        } else {
            self.install_snapshot(meta);
            (incoming.next_offset, true)
        };
        let response = InstallSnapshotResponse { term, snapshot: id, next_offset, done };
        self.send_after_persist(incoming.from, Message::InstallSnapshotResponse(response));
    }

    /// Makes a fully received snapshot this node's state (figure 13, steps 6–8):
    /// keep the log after it only if the log holds its last entry; otherwise (a
    /// divergent or short log) discard the whole log.
    fn install_snapshot(&mut self, meta: crate::types::SnapshotMeta) {
        let id = meta.last_log_id;
        // Callers install only past the commit index: it never goes back.
        assert!(
            id.index > self.commit_index,
            "node {}: install of {id} at or below commit {}",
            self.id,
            self.commit_index
        );
        // Entries committed before the snapshot go to the state machine first, so
        // that the restore lands after them in the action order.
        self.emit_apply();
        if self.log.matches(id) {
            self.base_membership = meta.config.clone();
            self.log.compact_to(id.index);
        } else {
            self.base_membership = meta.config.clone();
            self.log.reset_to(id);
            self.mark_log_dirty(id.index.next());
        }
        self.pending_persist.snapshot = Some(meta.clone());
        self.commit_index = id.index;
        self.apply_sent = id.index;
        self.snapshot = Some(meta.clone());
        self.recompute_membership();
        self.actions.push(Action::RestoreSnapshot { meta });
    }
}
