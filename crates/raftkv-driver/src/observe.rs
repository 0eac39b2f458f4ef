//! What the driver tells observers (hashicorp/raft's `RegisterObserver`):
//! vote requests this node answered, peers the leader stops or resumes
//! hearing from, and changes of the configuration in force. Leader changes
//! are `Effect::LeaderChanged` already, which the executor passes on too.
//!
//! All of it is read off what the core does, never decided here, and only
//! while the executor says someone observes (`Driver::set_observing`): with
//! nobody observing nothing is recorded or compared, per tick or per message.

use std::collections::BTreeMap;

use raftkv_core::{Configuration, Core, LogIndex, Millis, NodeId, RequestVote, RequestVoteResponse, Term};

/// Something an observer may want to know (`Effect::Observed`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Observed {
    /// This node answered a (pre-)vote request from `from` (paper §5.2,
    /// thesis §9.6), as the answer left: after the vote it gives is durable.
    /// `term` is the term the candidate asked in (for a pre-vote, the term it
    /// would campaign in). A request the core ignores without answering
    /// (leader stickiness, thesis §4.2.3, or a malformed one) is not reported.
    RequestVote {
        /// The candidate.
        from: NodeId,
        /// The term asked in.
        term: Term,
        /// Whether it was a pre-vote.
        pre_vote: bool,
        /// Whether the vote was granted.
        granted: bool,
    },
    /// On the leader: `peer` has not answered for an election timeout
    /// (`election_timeout_min_ms`, the window CheckQuorum judges by). It last
    /// answered this leader at `last_contact_at`; `None`: not in this term.
    /// hashicorp's `FailedHeartbeatObservation`.
    PeerUnreachable {
        /// The silent member.
        peer: NodeId,
        /// When it last answered this leader, on the executor's clock (ms).
        last_contact_at: Option<Millis>,
    },
    /// On the leader: `peer`, reported unreachable, answered again
    /// (hashicorp's `ResumedHeartbeatObservation`).
    PeerReachable {
        /// The member heard from again.
        peer: NodeId,
    },
    /// The configuration in force changed to `configuration`, carried by the
    /// entry at `index` (it takes effect when appended, thesis §4.1; a cut
    /// suffix or an installed snapshot can change it too): reported once when
    /// it takes effect, with `committed` telling whether it had committed by
    /// then, and once more (`committed: true`) when it commits if it had not.
    /// A configuration appended and replaced between two looks (both in one
    /// batch of inputs) is not reported on its own.
    MembershipChanged {
        /// The configuration now in force.
        configuration: Configuration,
        /// Index of the entry that carried it (or the snapshot's last index).
        index: LogIndex,
        /// Whether it has committed.
        committed: bool,
    },
}

/// Vote requests remembered until answered, at most (one per candidate and
/// kind): bounds what unanswered requests from made-up ids can hold.
const MAX_VOTE_REQUESTS: usize = 64;

/// What the driver remembers while someone observes.
pub(crate) struct Watch {
    /// The term of the latest request from each candidate, per kind
    /// (pre-vote or not), until its answer leaves.
    vote_requests: BTreeMap<(NodeId, bool), Term>,
    /// As leader in `peers_term`: each peer, since when it is watched, and
    /// whether it was reported unreachable.
    peers: BTreeMap<NodeId, PeerWatch>,
    peers_term: Term,
    /// The configuration in force as last reported (or as found when
    /// observing began), and whether it was reported committed.
    membership: (LogIndex, Configuration, bool),
}

struct PeerWatch {
    since: Millis,
    unreachable: bool,
}

impl Watch {
    /// Starts from the core's state: nothing is reported about what was
    /// already so (an observer learns the present from `status`).
    pub(crate) fn new(core: &Core) -> Watch {
        let index = core.membership_index();
        Watch {
            vote_requests: BTreeMap::new(),
            peers: BTreeMap::new(),
            peers_term: Term(0),
            membership: (index, core.membership().clone(), index <= core.commit_index()),
        }
    }

    /// A vote request arrived, before the core handles it.
    pub(crate) fn vote_requested(&mut self, from: NodeId, request: &RequestVote) {
        let key = (from, request.pre_vote);
        if self.vote_requests.len() < MAX_VOTE_REQUESTS || self.vote_requests.contains_key(&key) {
            self.vote_requests.insert(key, request.term);
        }
    }

    /// The core's answer to a vote request from `to` leaves. A granted
    /// answer carries the term asked in; a refused one carries the voter's
    /// term, so the request's is taken from when it arrived.
    pub(crate) fn vote_answered(&mut self, to: NodeId, answer: &RequestVoteResponse) -> Observed {
        let asked = self.vote_requests.remove(&(to, answer.pre_vote));
        let term = if answer.granted { answer.term } else { asked.unwrap_or(answer.term) };
        Observed::RequestVote { from: to, term, pre_vote: answer.pre_vote, granted: answer.granted }
    }

    /// On a tick: on the leader, which peers crossed the election timeout
    /// since they last answered, either way. A peer that never answered this
    /// leader counts from when it was first watched in the term. Elsewhere
    /// the record is dropped, silently: the next leader's ticks start over.
    pub(crate) fn tick_peers(&mut self, core: &Core, now: Millis, mut emit: impl FnMut(Observed)) {
        if !core.is_leader() {
            self.peers.clear();
            return;
        }
        if self.peers_term != core.current_term() {
            self.peers.clear();
            self.peers_term = core.current_term();
        }
        let timeout = core.config().election_timeout_min_ms;
        let peers = core.peers();
        // Members that left the configuration are forgotten without a word.
        self.peers.retain(|id, _| peers.iter().any(|peer| peer.id == *id));
        for peer in peers {
            let watch = self.peers.entry(peer.id).or_insert(PeerWatch { since: now, unreachable: false });
            let silent = now.saturating_sub(peer.last_contact_at.unwrap_or(watch.since));
            let unreachable = silent >= timeout;
            if unreachable != watch.unreachable {
                watch.unreachable = unreachable;
                emit(if unreachable {
                    Observed::PeerUnreachable { peer: peer.id, last_contact_at: peer.last_contact_at }
                } else {
                    Observed::PeerReachable { peer: peer.id }
                });
            }
        }
    }

    /// After a batch of inputs: whether the configuration in force changed,
    /// or committed, since last reported.
    pub(crate) fn membership(&mut self, core: &Core) -> Option<Observed> {
        let (index, configuration) = (core.membership_index(), core.membership());
        let committed = index <= core.commit_index();
        let (seen_index, seen, seen_committed) = &mut self.membership;
        if *seen_index == index && seen == configuration {
            if *seen_committed || !committed {
                return None;
            }
            *seen_committed = true;
        } else {
            self.membership = (index, configuration.clone(), committed);
        }
        Some(Observed::MembershipChanged { configuration: configuration.clone(), index, committed })
    }
}

#[cfg(test)]
mod tests {
    use raftkv_core::{
        AppendEntriesResponse, AppendResult, Core, CoreConfig, DurableState, MembershipChange, Message, RequestVote,
        RequestVoteResponse,
    };

    use super::*;
    use crate::driver::{Driver, DriverConfig, Effect, StoreJob};

    /// Node 1 of three, without CheckQuorum (the peers answer only when the
    /// test says so, and its leadership must outlast their silence).
    fn driver(observing: bool) -> Driver<u32> {
        let mut config = CoreConfig::new(NodeId(1));
        config.check_quorum = false;
        let durable = DurableState::bootstrap([NodeId(1), NodeId(2), NodeId(3)]);
        let core = Core::new(config, durable, 0, 1).unwrap();
        let config = DriverConfig { trailing_logs: 0, check_snapshots: false, transfer_wait_ms: 0, read_id_seed: 1 };
        let mut driver = Driver::new(core, config);
        driver.set_observing(observing);
        driver
    }

    /// Carries out the effects, every store job durable at once; returns
    /// what was observed.
    fn step(driver: &mut Driver<u32>) -> Vec<Observed> {
        let mut observed = Vec::new();
        loop {
            let effects: Vec<Effect<u32>> = driver.effects().collect();
            let mut stored = None;
            for effect in effects {
                match effect {
                    Effect::Store(StoreJob { seq: Some(seq), .. }) => stored = Some(seq),
                    Effect::Observed(o) => observed.push(o),
                    _ => {}
                }
            }
            match stored {
                Some(seq) => driver.persisted(seq),
                None => return observed,
            }
        }
    }

    fn vote(term: u64, pre_vote: bool, driver: &Driver<u32>) -> Message {
        let last_log_id = driver.core().last_log_id();
        Message::RequestVote(RequestVote { term: Term(term), last_log_id, pre_vote, leadership_transfer: false })
    }

    fn acked(driver: &Driver<u32>) -> Message {
        let match_index = driver.core().last_log_id().index;
        let term = driver.core().current_term();
        Message::AppendEntriesResponse(AppendEntriesResponse {
            term,
            round: 0,
            result: AppendResult::Success { match_index },
        })
    }

    /// One script: votes asked of node 1, then node 1 leading while its
    /// peers are silent, one of them answering again, and a removal
    /// appended then committed. What was observed after each input.
    fn script(observing: bool) -> Vec<Vec<Observed>> {
        let mut driver = driver(observing);
        let mut seen = Vec::new();
        let mut now = 10_000;
        // Granted (after its vote is durable), then refused to another
        // candidate of the same term, and refused for a stale term: the
        // observation names the term asked in, not the one answered with.
        for (from, message) in
            [(2, vote(2, false, &driver)), (3, vote(2, false, &driver)), (3, vote(1, false, &driver))]
        {
            driver.receive(now, NodeId(from), message);
            seen.push(step(&mut driver));
        }
        // Node 1 campaigns (pre-vote, then the election in term 3) and leads.
        now += 5_000;
        driver.tick(now);
        step(&mut driver);
        for pre_vote in [true, false] {
            let answer = RequestVoteResponse { term: Term(3), granted: true, pre_vote };
            driver.receive(now, NodeId(2), Message::RequestVoteResponse(answer));
            seen.push(step(&mut driver));
        }
        assert!(driver.core().is_leader(), "node 1 leads term 3");
        // Nobody answers for an election timeout (1 s by default), counted
        // from the first tick as leader; then node 2 answers again.
        let led_at = now;
        for at in [led_at, led_at + 999, led_at + 1_000, led_at + 1_500] {
            driver.tick(at);
            seen.push(step(&mut driver));
        }
        now = led_at + 1_600;
        let ack = acked(&driver);
        driver.receive(now, NodeId(2), ack);
        seen.push(step(&mut driver));
        driver.tick(now);
        seen.push(step(&mut driver));
        // A removal is in force once appended, then commits with node 2's
        // acknowledgement; node 3, unreachable, is forgotten without a word.
        driver.change_membership(MembershipChange::RemoveServer(NodeId(3)), None, 7);
        seen.push(step(&mut driver));
        let ack = acked(&driver);
        driver.receive(now, NodeId(2), ack);
        seen.push(step(&mut driver));
        driver.tick(now + 10);
        seen.push(step(&mut driver));
        seen
    }

    #[test]
    fn observations_report_votes_peers_and_configurations() {
        let vote = |from: u64, term: u64, granted: bool| Observed::RequestVote {
            from: NodeId(from),
            term: Term(term),
            pre_vote: false,
            granted,
        };
        let membership = |voters: &[u64], index: u64, committed: bool| Observed::MembershipChanged {
            configuration: Configuration::new(voters.iter().map(|id| NodeId(*id))),
            index: LogIndex(index),
            committed,
        };
        let unreachable = |peer: u64| Observed::PeerUnreachable { peer: NodeId(peer), last_contact_at: None };
        let expected: Vec<Vec<Observed>> = vec![
            vec![vote(2, 2, true)],
            vec![vote(3, 2, false)],
            vec![vote(3, 1, false)],
            // Leading: answers received are not observed.
            vec![],
            vec![],
            // Silent for 999 ms, then for the election timeout.
            vec![],
            vec![],
            vec![unreachable(2), unreachable(3)],
            vec![],
            // Node 2's answer commits the leader's no-op and with it the
            // founding configuration, which this node had not seen commit;
            // its next tick finds it answering.
            vec![membership(&[1, 2, 3], 1, true)],
            vec![Observed::PeerReachable { peer: NodeId(2) }],
            vec![membership(&[1, 2], 3, false)],
            vec![membership(&[1, 2], 3, true)],
            vec![],
        ];
        assert_eq!(script(true), expected);
    }

    /// Nobody observing: the same inputs make no observation.
    #[test]
    fn nothing_is_observed_unless_someone_observes() {
        assert!(script(false).iter().all(Vec::is_empty));
    }
}
