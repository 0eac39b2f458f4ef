//! Proposals, membership changes (single-server and joint consensus, thesis
//! ch. 4) and leadership transfer (thesis §3.10).

use std::collections::BTreeSet;

use bytes::Bytes;

use crate::core::{Core, Role, Transfer};
use crate::error::ProposeError;
use crate::message::Message;
use crate::types::{Configuration, Entry, EntryPayload, LogIndex, NodeId, RestoreStep};

/// A requested change of membership.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum MembershipChange {
    /// Add a voter, or promote a learner.
    AddVoter(NodeId),
    /// Add a learner: it receives the log but never votes nor counts.
    AddLearner(NodeId),
    /// Add a learner marked staging (or mark an existing learner): the
    /// leader promotes it to voter once it has caught up (thesis §4.2.1).
    AddStaging(NodeId),
    /// Remove a voter or a learner from the configuration.
    RemoveServer(NodeId),
    /// Make a voter a learner.
    DemoteVoter(NodeId),
    /// Replace the voters (and learners) at once through C(old,new).
    Joint {
        /// The voters of C(new); not empty.
        voters: BTreeSet<NodeId>,
        /// The learners of C(new); none of them a current voter (demote those
        /// with `DemoteVoter` first).
        learners: BTreeSet<NodeId>,
    },
}

impl Core {
    fn check_can_propose(&self) -> Result<(), ProposeError> {
        if self.role != Role::Leader {
            return Err(ProposeError::NotLeader { leader: self.leader });
        }
        if let Some(target) = self.transfer_target() {
            return Err(ProposeError::TransferInProgress { target });
        }
        Ok(())
    }

    /// Appends one command; returns its index. The outcome is known when the
    /// entry at that index is applied: ours if its term is the one we proposed in.
    pub fn propose(&mut self, command: Bytes) -> Result<LogIndex, ProposeError> {
        self.check_can_propose()?;
        let index = self.log.last_index().next();
        self.append_entry(Entry { term: self.hard_state.current_term, index, payload: EntryPayload::Command(command) });
        self.request_broadcast();
        Ok(index)
    }

    /// Appends one step of a restore through the log (`RestoreStep`); like a
    /// command, its outcome is known when the entry at the index is applied.
    pub fn propose_restore(&mut self, step: RestoreStep) -> Result<LogIndex, ProposeError> {
        self.check_can_propose()?;
        let index = self.log.last_index().next();
        self.append_entry(Entry { term: self.hard_state.current_term, index, payload: EntryPayload::Restore(step) });
        self.request_broadcast();
        Ok(index)
    }

    /// Appends several commands at once (one persist, one broadcast); returns the
    /// index of the first. Their indexes are consecutive.
    pub fn propose_batch(&mut self, commands: impl IntoIterator<Item = Bytes>) -> Result<LogIndex, ProposeError> {
        self.check_can_propose()?;
        let first = self.log.last_index().next();
        let term = self.hard_state.current_term;
        for command in commands {
            let index = self.log.last_index().next();
            self.log.push(Entry { term, index, payload: EntryPayload::Command(command) });
        }
        if self.log.last_index() >= first {
            self.mark_log_dirty(first);
            self.request_broadcast();
        }
        Ok(first)
    }

    /// Proposes a membership change. One change at a time, and only after the
    /// leader committed an entry of its term (otherwise two configurations
    /// could each commit with disjoint majorities: the single-server change
    /// bug Ongaro reported on raft-dev in 2015, against thesis §4.1).
    pub fn propose_membership(&mut self, change: MembershipChange) -> Result<LogIndex, ProposeError> {
        self.propose_membership_at(change, None)
    }

    /// `propose_membership`, only if the configuration in force is still the
    /// one at `prev_index` (hashicorp's guard: a caller that read the
    /// configuration changes it only as it read it). Refused otherwise, with
    /// nothing done.
    pub fn propose_membership_at(
        &mut self,
        change: MembershipChange,
        prev_index: Option<LogIndex>,
    ) -> Result<LogIndex, ProposeError> {
        self.check_can_propose()?;
        if let Some(expected) = prev_index.filter(|expected| *expected != self.membership_index) {
            return Err(ProposeError::ConfigChanged { expected, latest: self.membership_index });
        }
        if !self.committed_in_current_term() {
            return Err(ProposeError::NoCommitInTerm { term: self.hard_state.current_term });
        }
        if self.membership_index > self.commit_index || self.membership.is_joint() {
            return Err(ProposeError::ConfigChangePending { index: self.membership_index });
        }
        let next = next_configuration(&self.membership, change)?;
        let index = self.log.last_index().next();
        self.append_entry(Entry { term: self.hard_state.current_term, index, payload: EntryPayload::Config(next) });
        self.request_broadcast();
        Ok(index)
    }

    /// Hands leadership to `target`: catch it up, then send TimeoutNow. Proposals
    /// are refused until it takes over or an election timeout passes.
    pub fn transfer_leadership(&mut self, target: NodeId) -> Result<(), ProposeError> {
        if self.role != Role::Leader {
            return Err(ProposeError::NotLeader { leader: self.leader });
        }
        if target == self.id || !self.membership.voters.contains(&target) {
            return Err(ProposeError::InvalidMembershipChange {
                reason: "transfer target must be another voter",
                node: Some(target),
            });
        }
        let deadline = self.now + self.config.election_timeout_min_ms;
        let Some(state) = self.leader_state.as_mut() else { return Ok(()) };
        if let Some(current) = state.transfer {
            if current.target == target {
                // A retry: the TimeoutNow may have been lost.
                self.maybe_send_timeout_now(target);
                return Ok(());
            }
            return Err(ProposeError::TransferInProgress { target: current.target });
        }
        state.transfer = Some(Transfer { target, deadline });
        // Once TimeoutNow may be in flight another leader can appear without the
        // voters' stickiness: no lease reads for the rest of this term.
        state.lease_disabled = true;
        self.maybe_send_timeout_now(target);
        self.send_to_peer(target);
        Ok(())
    }

    /// The promotion rule for staging learners (thesis §4.2.1, "catching up
    /// new servers"), run on each of the leader's ticks. A staging learner is
    /// caught up while its log is within `promotion_max_lag` entries of the
    /// leader's and it answered within an election timeout (with no writes a
    /// dead learner's log stays close; its silence does not). Once caught up
    /// without a break for `promotion_stable_ms`, the lowest such id is
    /// proposed as voter, if a change may be proposed at all; a refusal (a
    /// change pending, a transfer, no commit in this term) ends by itself,
    /// and the next tick tries again. The stable period restarts with each
    /// leader: it counts only what this leader saw.
    pub(crate) fn tick_promotions(&mut self) {
        let now = self.now;
        let last = self.log.last_index();
        #[allow(unused_mut)]
        let (mut max_lag, mut stable_ms) = (self.config.promotion_max_lag, self.config.promotion_stable_ms);
        #[cfg(feature = "bug-injection")]
        if crate::bugs::enabled(crate::bugs::InjectedBug::PromoteBeforeCaughtUp) {
            // Any lag is close enough and no period is needed: only contact counts.
            (max_lag, stable_ms) = (u64::MAX, 0);
        }
        let contact_ms = self.config.election_timeout_min_ms;
        let Some(state) = self.leader_state.as_mut() else { return };
        let mut ready = None;
        for (id, progress) in state.progress.iter_mut() {
            if !self.membership.is_staging(*id) {
                progress.caught_up_since = None;
                continue;
            }
            let close = progress.match_index.0.saturating_add(max_lag) >= last.0;
            let heard = progress.last_contact_at.is_some_and(|at| now.saturating_sub(at) < contact_ms);
            if !(close && heard) {
                progress.caught_up_since = None;
                continue;
            }
            let since = *progress.caught_up_since.get_or_insert(now);
            if ready.is_none() && now - since >= stable_ms {
                ready = Some(*id);
            }
        }
        if let Some(id) = ready {
            // Refusals are transient (see above); the rule runs again next tick.
            let _refused = self.propose_membership(MembershipChange::AddVoter(id));
        }
    }

    pub(crate) fn maybe_send_timeout_now(&mut self, peer: NodeId) {
        let last = self.log.last_index();
        let Some(state) = self.leader_state.as_ref() else { return };
        let Some(transfer) = state.transfer else { return };
        if transfer.target != peer || state.progress.get(&peer).is_none_or(|p| p.match_index < last) {
            return;
        }
        let term = self.hard_state.current_term;
        self.send(peer, Message::TimeoutNow { term });
    }
}

/// The configuration after `change`, or why the change is invalid.
fn next_configuration(current: &Configuration, change: MembershipChange) -> Result<Configuration, ProposeError> {
    let invalid = |reason, node| Err(ProposeError::InvalidMembershipChange { reason, node });
    let mut next = current.clone();
    match change {
        MembershipChange::AddVoter(id) => {
            if current.voters.contains(&id) {
                return invalid("already a voter", Some(id));
            }
            next.learners.remove(&id);
            next.voters.insert(id);
        }
        MembershipChange::AddLearner(id) => {
            if current.is_member(id) {
                return invalid("already a member", Some(id));
            }
            next.learners.insert(id);
        }
        MembershipChange::AddStaging(id) => {
            if current.is_voter(id) {
                return invalid("already a voter", Some(id));
            }
            if current.is_staging(id) {
                return invalid("already staging", Some(id));
            }
            next.learners.insert(id);
            next.staging.insert(id);
        }
        MembershipChange::RemoveServer(id) => {
            if !current.is_member(id) {
                return invalid("not a member", Some(id));
            }
            next.voters.remove(&id);
            next.learners.remove(&id);
        }
        MembershipChange::DemoteVoter(id) => {
            if !current.voters.contains(&id) {
                return invalid("not a voter", Some(id));
            }
            next.voters.remove(&id);
            next.learners.insert(id);
        }
        MembershipChange::Joint { voters, learners } => {
            if voters.is_empty() {
                return invalid("the new configuration has no voters", None);
            }
            if let Some(both) = voters.intersection(&learners).next() {
                return invalid("a node cannot be both voter and learner", Some(*both));
            }
            if let Some(demoted) = learners.intersection(&current.voters).next() {
                // Demoting inside a joint change would leave the node voting in the
                // old half while a learner in the new one; demote on its own instead.
                return invalid("demote a voter with a single change, not a joint one", Some(*demoted));
            }
            next.voters = voters;
            next.learners = learners;
            if next.voters != current.voters {
                next.voters_outgoing = current.voters.clone();
            }
        }
    }
    if next.voters.is_empty() {
        return invalid("the change would leave no voters", None);
    }
    // A staging mark lives only on a learner: a promoted or removed node loses it.
    Ok(next.keep_staging_on_learners())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ids(list: &[u64]) -> BTreeSet<NodeId> {
        list.iter().map(|i| NodeId(*i)).collect()
    }

    #[test]
    fn joint_change_keeps_old_voters_as_outgoing() {
        let current = Configuration::new(ids(&[1, 2, 3]));
        let next =
            next_configuration(&current, MembershipChange::Joint { voters: ids(&[3, 4, 5]), learners: ids(&[6]) })
                .unwrap();
        assert_eq!(next.voters, ids(&[3, 4, 5]));
        assert_eq!(next.voters_outgoing, ids(&[1, 2, 3]));
        assert_eq!(next.learners, ids(&[6]));
    }

    #[test]
    fn removing_the_last_voter_is_refused() {
        let current = Configuration::new(ids(&[1]));
        assert!(matches!(
            next_configuration(&current, MembershipChange::RemoveServer(NodeId(1))),
            Err(ProposeError::InvalidMembershipChange { .. })
        ));
    }

    #[test]
    fn promoting_a_learner_moves_it_to_voters() {
        let mut current = Configuration::new(ids(&[1, 2, 3]));
        current.learners.insert(NodeId(4));
        let next = next_configuration(&current, MembershipChange::AddVoter(NodeId(4))).unwrap();
        assert!(next.voters.contains(&NodeId(4)) && next.learners.is_empty());
        assert!(!next.is_joint());
    }

    /// A staging mark sits on a learner only: set by AddStaging (on a new node
    /// or an existing learner), gone once the node is promoted, removed or
    /// dropped by a joint change, kept by a joint change that keeps it a learner.
    #[test]
    fn staging_marks_learners_and_leaves_with_them() {
        let current = Configuration::new(ids(&[1, 2, 3]));
        let staged = next_configuration(&current, MembershipChange::AddStaging(NodeId(4))).unwrap();
        assert!(staged.is_staging(NodeId(4)) && staged.is_learner(NodeId(4)));
        assert!(next_configuration(&staged, MembershipChange::AddStaging(NodeId(4))).is_err());
        assert!(next_configuration(&staged, MembershipChange::AddStaging(NodeId(1))).is_err());
        let mut plain = current.clone();
        plain.learners.insert(NodeId(5));
        assert!(next_configuration(&plain, MembershipChange::AddStaging(NodeId(5))).unwrap().is_staging(NodeId(5)));

        let promoted = next_configuration(&staged, MembershipChange::AddVoter(NodeId(4))).unwrap();
        assert!(promoted.voters.contains(&NodeId(4)) && promoted.staging.is_empty());
        let removed = next_configuration(&staged, MembershipChange::RemoveServer(NodeId(4))).unwrap();
        assert!(removed.staging.is_empty() && removed.learners.is_empty());
        let kept = MembershipChange::Joint { voters: ids(&[1, 2, 5]), learners: ids(&[4]) };
        assert_eq!(next_configuration(&staged, kept).unwrap().staging, ids(&[4]));
        let dropped = MembershipChange::Joint { voters: ids(&[1, 2, 4]), learners: BTreeSet::new() };
        assert!(next_configuration(&staged, dropped).unwrap().staging.is_empty());
    }
}
