//! The simulator has teeth: each deliberate protocol bug (compiled in only with
//! `--features bug-injection`) is caught within 10,000 seeds, and by the check
//! that guards the property the bug breaks, not by whatever fails first. Without
//! the feature this file is empty.
#![cfg(feature = "bug-injection")]

use raftkv_core::bugs::InjectedBug;
use raftkv_sim::checker::{kind, violation_kind};
use raftkv_sim::runner::{run_plan, RunPlan};
use raftkv_sim::Faults;

/// The first failing seed and its first violation (or liveness failure).
fn first_failure(bug: InjectedBug) -> Option<(u64, String)> {
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
    let plan = RunPlan {
        first_seed: 1,
        seeds: 10_000,
        nodes: 5,
        faults: Faults::ALL,
        faults_text: "all".into(),
        threads,
        bug: Some(bug.name().to_string()),
    };
    let (_, failures) = run_plan(&plan, true);
    failures.first().map(|outcome| {
        let why = outcome.violations.first().cloned().or(outcome.liveness_failure.clone()).unwrap_or_default();
        (outcome.seed, why)
    })
}

/// Requires `bug` to be caught within 10,000 seeds by a violation of one of the
/// `expected` kinds: the properties the bug breaks.
fn assert_caught_as(bug: InjectedBug, expected: &[&str]) {
    match first_failure(bug) {
        Some((seed, why)) => {
            eprintln!("{} caught at seed {seed}: {why}", bug.name());
            assert!(
                expected.contains(&violation_kind(&why)),
                "{} was caught at seed {seed}, but not as a violation of {expected:?}: {why}",
                bug.name()
            );
        }
        None => panic!("{} was not caught within 10,000 seeds", bug.name()),
    }
}

/// An unprotected commit shows on the logs in memory or, when the replicas that
/// hold it in memory have not synced it yet, only on disk: either is the bug.
const UNPROTECTED_COMMIT: &[&str] = &[kind::COMMIT_PROTECTION, kind::DURABLE_COMMIT_PROTECTION];

#[test]
fn every_bug_has_a_test() {
    // A new bug in `bugs.rs` needs a test below naming the check that catches it.
    assert_eq!(InjectedBug::ALL.len(), 12);
}

#[test]
fn commit_of_old_term_entry_by_counting_is_caught() {
    assert_caught_as(InjectedBug::CommitOldTermByCount, UNPROTECTED_COMMIT);
}

#[test]
fn vote_without_log_check_is_caught() {
    assert_caught_as(InjectedBug::VoteWithoutLogCheck, &[kind::LEADER_COMPLETENESS]);
}

#[test]
fn vote_sent_before_persisted_is_caught() {
    // Two leaders of one term: seen as such, or, when the second writes its
    // first entry in the step that makes it leader, as two different entries
    // of that term at one index, which only two leaders of a term can write.
    assert_caught_as(InjectedBug::VoteBeforePersist, &[kind::ELECTION_SAFETY, kind::LOG_MATCHING]);
}

#[test]
fn read_index_without_heartbeat_round_is_caught() {
    assert_caught_as(InjectedBug::ReadIndexWithoutHeartbeat, &[kind::LINEARIZABILITY]);
}

#[test]
fn forwarded_answer_serving_later_reads_is_caught() {
    assert_caught_as(InjectedBug::ForwardedAnswerServesLaterReads, &[kind::LINEARIZABILITY]);
}

#[test]
fn learner_counted_in_quorum_is_caught() {
    assert_caught_as(InjectedBug::CountLearnerInQuorum, UNPROTECTED_COMMIT);
}

#[test]
fn configuration_applied_on_commit_is_caught() {
    // Counting with a configuration other than the log's newest lets a commit
    // and an election use majorities that do not intersect: whichever comes
    // second shows it, as a commit no majority of the newest configuration
    // holds, or as a leader elected without a committed entry.
    let expected = [kind::COMMIT_PROTECTION, kind::DURABLE_COMMIT_PROTECTION, kind::LEADER_COMPLETENESS];
    assert_caught_as(InjectedBug::ConfigOnCommit, &expected);
}

// The two below commit on replicas that hold the entry in memory only: the logs
// in memory look fine, so only the check on what a crash would leave sees it.
#[test]
fn append_acknowledged_before_persisted_is_caught() {
    assert_caught_as(InjectedBug::AckAppendBeforePersist, &[kind::DURABLE_COMMIT_PROTECTION]);
}

#[test]
fn leader_counting_its_unsynced_entries_is_caught() {
    assert_caught_as(InjectedBug::LeaderCountsUnsyncedSelf, &[kind::DURABLE_COMMIT_PROTECTION]);
}

#[test]
fn lease_outliving_the_vote_guard_is_caught() {
    assert_caught_as(InjectedBug::LeaseOutlivesVoteGuard, &[kind::LEASE_EXCLUSIVITY]);
}

/// In the runtime's driver, which the simulator runs: the disk keeps entries
/// that disagree with an installed snapshot (no cut before it is stored, none
/// on start), so a restart would begin from a log whose terms go backwards.
#[test]
fn an_install_that_keeps_a_conflicting_suffix_is_caught() {
    assert_caught_as(InjectedBug::InstallKeepsConflictingSuffix, &[kind::DURABLE_LOG_CONSISTENCY]);
}

/// Thesis §4.2.1: a staging learner becomes a voter only once it has caught
/// up. The leader promoting it as soon as it answers is seen by the checker
/// on what the leader's own ticks showed (its lag, its contact, for how long).
#[test]
fn a_promotion_before_the_learner_caught_up_is_caught() {
    assert_caught_as(InjectedBug::PromoteBeforeCaughtUp, &[kind::PROMOTION]);
}
