//! The callers of `add_voter` while their server is staging: the leader adds
//! it as a learner marked staging, the core promotes it once it has caught up
//! (thesis §4.2.1), and the caller is answered by what commits: the promotion
//! (done), the removal this leader proposed when the caller's deadline passed
//! (`NotCaughtUp`, not done), or another change that decided the server's
//! fate first (`Superseded`, not done). The driver owns the records; this
//! module only keeps them and reads committed configurations.

use std::collections::BTreeMap;

use raftkv_core::{Entry, EntryPayload, LogIndex, Millis, NodeId};

use crate::failure::Failure;

/// The removal of a server that did not catch up in time, as proposed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Removal {
    pub index: LogIndex,
    /// How far its log matched the leader's when its time ran out.
    pub match_index: LogIndex,
    pub last_index: LogIndex,
}

struct Record<R> {
    replies: Vec<R>,
    /// Configurations committed at or after this index decide the outcome
    /// (the staging entry, or the configuration the first caller found).
    from: LogIndex,
    /// When the removal is proposed if the server is still staging.
    deadline: Millis,
    removal: Option<Removal>,
}

/// What committed for a staged server, for each of its callers.
pub(crate) enum Answer {
    /// Promoted by the configuration at this index.
    Done(LogIndex),
    Failed(Failure),
}

pub(crate) struct StagedAdds<R> {
    records: BTreeMap<NodeId, Record<R>>,
}

impl<R> StagedAdds<R> {
    pub fn new() -> StagedAdds<R> {
        StagedAdds { records: BTreeMap::new() }
    }

    /// Adds a caller waiting for `id`. A second caller for the same server
    /// joins the first; the removal waits for the later deadline.
    pub fn wait(&mut self, id: NodeId, from: LogIndex, deadline: Millis, reply: R) {
        let record =
            self.records.entry(id).or_insert_with(|| Record { replies: Vec::new(), from, deadline, removal: None });
        record.deadline = record.deadline.max(deadline);
        record.replies.push(reply);
    }

    /// Servers whose deadline passed and whose removal was not proposed yet.
    pub fn due(&self, now: Millis) -> Vec<NodeId> {
        self.records.iter().filter(|(_, r)| r.removal.is_none() && now >= r.deadline).map(|(id, _)| *id).collect()
    }

    pub fn removal_proposed(&mut self, id: NodeId, removal: Removal) {
        if let Some(record) = self.records.get_mut(&id) {
            record.removal = Some(removal);
        }
    }

    /// Reads the committed `entries`: each configuration at or after a
    /// record's `from` that no longer has its server staging answers every
    /// caller of that record.
    pub fn committed(&mut self, entries: &[Entry]) -> Vec<(R, Answer)> {
        let mut answers = Vec::new();
        if self.records.is_empty() {
            return answers;
        }
        for entry in entries {
            let EntryPayload::Config(config) = &entry.payload else { continue };
            let index = entry.index;
            let decided: Vec<NodeId> = self
                .records
                .iter()
                .filter(|(id, record)| index >= record.from && !config.is_staging(**id))
                .map(|(id, _)| *id)
                .collect();
            for id in decided {
                let Some(record) = self.records.remove(&id) else { continue };
                let answer = || match record.removal {
                    // A voter of the incoming half only: one in the outgoing
                    // half alone is being removed (thesis §4.3).
                    _ if config.voters.contains(&id) => Answer::Done(index),
                    Some(removal) if removal.index == index && !config.is_member(id) => {
                        Answer::Failed(Failure::NotCaughtUp {
                            id,
                            match_index: removal.match_index,
                            last_index: removal.last_index,
                        })
                    }
                    _ => Answer::Failed(Failure::Superseded { id, index }),
                };
                answers.extend(record.replies.into_iter().map(|reply| (reply, answer())));
            }
        }
        answers
    }

    /// Every caller still waiting, the records dropped (leadership lost, or
    /// the node stops).
    pub fn take_all(&mut self) -> Vec<R> {
        std::mem::take(&mut self.records).into_values().flat_map(|record| record.replies).collect()
    }
}

#[cfg(test)]
mod tests {
    use raftkv_core::{
        AppendEntriesResponse, AppendResult, Core, CoreConfig, DurableState, MembershipChange, Message, Term,
    };

    use super::*;
    use crate::driver::{ApplyJob, Driver, DriverConfig, Effect};

    const STABLE_MS: Millis = 2_000;

    /// A single-voter leader (node 1) with a driver, carried out by hand:
    /// node 2 answers its appends when `peer_answers`, persists complete
    /// unless `hold_persists`.
    struct Solo {
        driver: Driver<u32>,
        now: Millis,
        peer_answers: bool,
        hold_persists: bool,
        held: Vec<u64>,
        answered: BTreeMap<u32, Result<LogIndex, Failure>>,
    }

    impl Solo {
        fn new() -> Solo {
            let mut config = CoreConfig::new(NodeId(1));
            config.promotion_stable_ms = STABLE_MS;
            config.promotion_max_lag = 1;
            let core = Core::new(config, DurableState::bootstrap([NodeId(1)]), 0, 1).unwrap();
            let config =
                DriverConfig { trailing_logs: 0, check_snapshots: false, transfer_wait_ms: 0, read_id_seed: 1 };
            let mut solo = Solo {
                driver: Driver::new(core, config),
                now: 0,
                peer_answers: true,
                hold_persists: false,
                held: Vec::new(),
                answered: BTreeMap::new(),
            };
            while !solo.driver.core().is_leader() || solo.driver.core().commit_index() < LogIndex(2) {
                assert!(solo.now < 100_000, "a single voter elects itself");
                solo.run_for(100);
            }
            solo
        }

        fn run_for(&mut self, ms: Millis) {
            for _ in 0..ms / 10 {
                self.now += 10;
                self.driver.tick(self.now);
                self.carry_out();
            }
        }

        fn carry_out(&mut self) {
            loop {
                let effects: Vec<Effect<u32>> = self.driver.effects().collect();
                if effects.is_empty() && (self.hold_persists || self.held.is_empty()) {
                    return;
                }
                for effect in effects {
                    self.effect(effect);
                }
                if !self.hold_persists {
                    for seq in std::mem::take(&mut self.held) {
                        self.driver.persisted(seq);
                    }
                }
            }
        }

        fn effect(&mut self, effect: Effect<u32>) {
            match effect {
                Effect::Store(job) => self.held.extend(job.seq),
                Effect::Send { to, messages } if self.peer_answers => {
                    for message in messages {
                        let Message::AppendEntries(append) = message else { continue };
                        let match_index = LogIndex(append.prev_log_id.index.0 + append.entries.len() as u64);
                        let result = AppendResult::Success { match_index };
                        let answer = AppendEntriesResponse { term: append.term, round: append.round, result };
                        self.driver.receive(self.now, to, Message::AppendEntriesResponse(answer));
                    }
                }
                Effect::Apply(ApplyJob::Batch { replies, .. }) => {
                    for (index, reply) in replies {
                        self.answered.insert(reply, Ok(index));
                    }
                }
                Effect::AlreadyDone { reply, index } => drop(self.answered.insert(reply, Ok(index))),
                Effect::Fail { reply, failure } => drop(self.answered.insert(reply, Err(failure))),
                _ => {}
            }
        }

        fn add_voter(&mut self, id: u64, timeout_ms: Millis, reply: u32) {
            self.driver.add_voter(self.now, NodeId(id), None, timeout_ms, reply);
            self.carry_out();
        }

        fn is_voter(&self, id: u64) -> bool {
            self.driver.core().membership().is_voter(NodeId(id))
        }
    }

    /// The caller is answered when the promotion the core proposed commits;
    /// a retry then is done at once; a guard on a stale index is refused.
    #[test]
    fn a_staged_voter_is_answered_when_its_promotion_commits() {
        let mut solo = Solo::new();
        let read = solo.driver.core().membership_index();
        solo.add_voter(2, 60_000, 7);
        assert!(solo.driver.core().membership().is_staging(NodeId(2)));
        solo.add_voter(2, 60_000, 8);
        solo.run_for(STABLE_MS + 500);
        let promoted = solo.driver.core().membership_index();
        assert!(solo.is_voter(2));
        assert_eq!(solo.answered.get(&7), Some(&Ok(promoted)));
        assert_eq!(solo.answered.get(&8), Some(&Ok(promoted)), "a second caller waits with the first");
        solo.add_voter(2, 60_000, 9);
        assert_eq!(solo.answered.get(&9), Some(&Ok(promoted)), "a retry is done at once");
        solo.driver.add_voter(solo.now, NodeId(3), Some(read), 60_000, 10);
        solo.carry_out();
        let refused = solo.answered.get(&10);
        assert!(matches!(refused, Some(Err(Failure::Refused(raftkv_core::ProposeError::ConfigChanged { .. })))));
    }

    /// A server that never answers is removed at the caller's deadline, and
    /// the caller is told once the removal has committed.
    #[test]
    fn a_staged_voter_that_never_catches_up_is_removed_at_its_deadline() {
        let mut solo = Solo::new();
        solo.peer_answers = false;
        solo.add_voter(2, 3_000, 7);
        solo.run_for(2_900);
        assert!(solo.answered.is_empty(), "{:?}", solo.answered);
        solo.run_for(200);
        let membership = solo.driver.core().membership();
        assert!(!membership.is_member(NodeId(2)), "{membership}");
        let answer = solo.answered.get(&7);
        assert!(matches!(answer, Some(Err(Failure::NotCaughtUp { id: NodeId(2), .. }))), "{answer:?}");
    }

    /// At the deadline another change is uncommitted: the removal is refused,
    /// retried on each tick, and proposed once that change commits.
    #[test]
    fn the_removal_is_retried_behind_a_pending_change() {
        let mut solo = Solo::new();
        solo.peer_answers = false;
        solo.add_voter(2, 3_000, 7);
        solo.run_for(2_000);
        solo.hold_persists = true;
        solo.driver.change_membership(MembershipChange::AddLearner(NodeId(3)), None, 8);
        solo.run_for(2_000);
        assert!(solo.driver.core().membership().is_staging(NodeId(2)), "no removal while a change is pending");
        assert!(solo.answered.is_empty());
        solo.hold_persists = false;
        solo.run_for(100);
        assert!(matches!(solo.answered.get(&8), Some(Ok(_))));
        assert!(matches!(solo.answered.get(&7), Some(Err(Failure::NotCaughtUp { .. }))), "{:?}", solo.answered);
    }

    /// A promotion appended before the deadline wins: no removal is proposed
    /// behind it, and the caller learns that the server did catch up.
    #[test]
    fn a_promotion_appended_before_the_deadline_wins_the_race() {
        let mut solo = Solo::new();
        solo.add_voter(2, STABLE_MS + 1_000, 7);
        while !solo.is_voter(2) {
            assert!(solo.now < 10 * STABLE_MS, "never promoted");
            solo.hold_persists = true;
            solo.run_for(10);
        }
        assert!(solo.driver.core().commit_index() < solo.driver.core().membership_index());
        solo.run_for(2_000);
        assert!(solo.answered.is_empty(), "{:?}", solo.answered);
        solo.hold_persists = false;
        solo.run_for(100);
        assert!(matches!(solo.answered.get(&7), Some(Ok(_))), "{:?}", solo.answered);
    }

    /// Leadership lost or the node stopped: the next leader may still promote
    /// or remove the server, so the outcome is unknown.
    #[test]
    fn leadership_lost_or_a_stop_leaves_the_outcome_unknown() {
        let mut solo = Solo::new();
        solo.peer_answers = false;
        solo.add_voter(2, 60_000, 7);
        let term = Term(solo.driver.core().current_term().0 + 1);
        let stale = AppendEntriesResponse { term, round: 0, result: AppendResult::StaleTerm };
        solo.driver.receive(solo.now, NodeId(2), Message::AppendEntriesResponse(stale));
        solo.carry_out();
        assert_eq!(solo.answered.get(&7), Some(&Err(Failure::LeadershipLost)));

        let mut solo = Solo::new();
        solo.add_voter(2, 60_000, 7);
        let stopped = solo.driver.stop();
        let failure = stopped.iter().find_map(|e| match e {
            Effect::Fail { reply: 7, failure } => Some(failure),
            _ => None,
        });
        assert!(failure.is_some_and(Failure::outcome_unknown), "{stopped:?}");
    }
}
