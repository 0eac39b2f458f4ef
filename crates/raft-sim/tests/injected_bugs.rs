//! The simulator has teeth: each deliberate protocol bug (compiled in only with
//! `--features bug-injection`) is caught within 10,000 seeds. Without the feature
//! this file is empty.
#![cfg(feature = "bug-injection")]

use raft_core::bugs::InjectedBug;
use raft_sim::runner::{run_plan, RunPlan};
use raft_sim::Faults;

fn first_failing_seed(bug: InjectedBug) -> Option<(u64, String)> {
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

fn assert_caught(bug: InjectedBug) {
    match first_failing_seed(bug) {
        Some((seed, why)) => eprintln!("{} caught at seed {seed}: {why}", bug.name()),
        None => panic!("{} was not caught within 10,000 seeds", bug.name()),
    }
}

#[test]
fn commit_of_old_term_entry_by_counting_is_caught() {
    assert_caught(InjectedBug::CommitOldTermByCount);
}

#[test]
fn vote_without_log_check_is_caught() {
    assert_caught(InjectedBug::VoteWithoutLogCheck);
}

#[test]
fn vote_sent_before_persisted_is_caught() {
    assert_caught(InjectedBug::VoteBeforePersist);
}

#[test]
fn read_index_without_heartbeat_round_is_caught() {
    assert_caught(InjectedBug::ReadIndexWithoutHeartbeat);
}

#[test]
fn learner_counted_in_quorum_is_caught() {
    assert_caught(InjectedBug::CountLearnerInQuorum);
}

#[test]
fn configuration_applied_on_commit_is_caught() {
    assert_caught(InjectedBug::ConfigOnCommit);
}
