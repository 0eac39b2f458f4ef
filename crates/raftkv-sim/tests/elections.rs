//! Elections, driven by hand through `raftkv_sim::harness::Cluster`: PreVote
//! and CheckQuorum, stale terms after a restart, the election restriction
//! (§5.4.1), a single voter's durable term, leadership transfer, and the
//! window after hearing a leader in which a node neither votes nor campaigns.
//! A test of a historical bug of another Raft implementation names the bug and
//! the issue it comes from.
//!
//! Where the harness has no shortcut for a starting state (a joint founding
//! configuration, logs that already diverge), the test crafts each node's
//! `DurableState` and adds the node with `Cluster::add_node`, exactly as a
//! runtime would restart it from disk.

mod common;

use std::collections::{BTreeSet, VecDeque};

use bytes::Bytes;
use raftkv_core::{
    Configuration, DurableState, Entry, EntryPayload, HardState, LogId, LogIndex, Message, NodeId, Role, Term,
};
use raftkv_sim::harness::{Cluster, ELECTION_MAX_MS, HEARTBEAT_MS};

use common::{ids, stabilize_recording};

/// A cluster with no nodes yet, for tests that add nodes with crafted disks.
fn empty_cluster() -> Cluster {
    Cluster { nodes: Default::default(), in_flight: VecDeque::new(), blocked: BTreeSet::new(), now: 0 }
}

fn config_entry(term: u64, index: u64, config: Configuration) -> Entry {
    Entry { term: Term(term), index: LogIndex(index), payload: EntryPayload::Config(config) }
}

fn command_entry(term: u64, index: u64, command: &str) -> Entry {
    Entry { term: Term(term), index: LogIndex(index), payload: EntryPayload::Command(Bytes::from(command.to_owned())) }
}

/// A disk holding `entries` from index 1, with `current_term` and `voted_for`.
fn crafted_disk(current_term: u64, voted_for: Option<u64>, entries: Vec<Entry>) -> DurableState {
    DurableState {
        hard_state: HardState { current_term: Term(current_term), voted_for: voted_for.map(NodeId) },
        snapshot: None,
        entries,
    }
}

/// Runs until some node leads and has committed an entry of its own term;
/// `None` if that does not happen within `max_ms`.
fn committed_leader_within(cluster: &mut Cluster, max_ms: u64) -> Option<u64> {
    for _ in 0..max_ms {
        cluster.run_for(1);
        if let Some(leader) = cluster.leader() {
            let core = cluster.core(leader);
            if core.term_at(core.commit_index()) == Some(core.current_term()) {
                return Some(leader);
            }
        }
    }
    None
}

/// `(id, current term, last log id)` of every running node, for failure messages.
fn terms_and_logs(cluster: &Cluster) -> Vec<(u64, Term, LogId)> {
    cluster
        .nodes
        .values()
        .filter_map(|n| n.core.as_ref().map(|c| (n.id.0, c.current_term(), c.last_log_id())))
        .collect()
}

/// Selects the (pre-)vote answers sent by node `id`.
fn vote_responses_from(id: u64) -> impl FnMut(NodeId, NodeId, &Message) -> bool {
    move |from, _, message| from == NodeId(id) && matches!(message, Message::RequestVoteResponse(_))
}

/// Bug 1 (etcd #8334, #9586; raft-rs #84): with PreVote and CheckQuorum, a
/// pre-candidate must drop its old leader, or followers refuse each other's
/// pre-votes forever. Isolate the leader: the two followers elect a new one.
#[test]
fn followers_of_isolated_leader_elect_a_new_one_with_prevote_and_checkquorum() {
    let mut cluster = Cluster::new(3);
    cluster.elect(1);
    cluster.isolate(1);
    cluster.run_for(10 * ELECTION_MAX_MS);
    let leader = cluster.leader().expect("a leader among the connected majority");
    assert_ne!(leader, 1);
    // CheckQuorum: the isolated old leader stepped down on its own.
    assert_ne!(cluster.core(1).role(), Role::Leader);
    cluster.heal();
    cluster.run_for(10 * ELECTION_MAX_MS);
    assert_eq!(cluster.core(1).leader(), Some(NodeId(leader)));
}

/// Bug 3 (canonical/raft #279): a node restarted with a stale term must not
/// block elections under PreVote. Four nodes: kill a follower, then the leader,
/// restart the follower; the three live nodes elect a leader.
#[test]
fn restarted_follower_with_stale_term_does_not_block_election() {
    let mut cluster = Cluster::new(4);
    cluster.elect(1);
    cluster.crash(4);
    // Terms move on while node 4 is down: leadership moves 1 -> 2 -> 3.
    cluster.with_core(1, |core| core.transfer_leadership(NodeId(2))).unwrap();
    cluster.stabilize();
    assert_eq!(cluster.leader(), Some(2));
    cluster.with_core(2, |core| core.transfer_leadership(NodeId(3))).unwrap();
    cluster.stabilize();
    assert_eq!(cluster.leader(), Some(3));
    cluster.crash(3);
    cluster.start(4);
    assert!(cluster.core(4).current_term() < cluster.core(2).current_term());
    let leader = cluster.wait_for_leader(20 * ELECTION_MAX_MS);
    assert!([1, 2, 4].contains(&leader));
}

/// A single voter wins its election at once. Its appends to learners must wait
/// until its new term is durable: if it crashed before that, it could win the
/// same term again with a different log, and the learner would hold entries of
/// that term that the leader never wrote.
#[test]
fn single_voter_leads_only_once_its_term_is_durable() {
    let mut cluster = Cluster::with_members(&[1], &[2], |_| {});
    cluster.node_mut(1).hold_persists = true;
    cluster.campaign(1);
    let term = cluster.core(1).current_term();
    assert!(!cluster.core(1).is_leader(), "led before its term {term} was durable");
    let early = cluster.take_messages(|_, _, m| m.term() >= term && matches!(m, Message::AppendEntries(_)));
    assert!(early.is_empty(), "sent {early:?} before term {term} was durable");

    // Crash before the write completes: the term is forgotten, and nothing of it
    // reached the learner. The next campaign reuses the term safely.
    cluster.crash(1);
    cluster.node_mut(1).hold_persists = false;
    cluster.start(1);
    assert!(cluster.core(1).current_term() < term);
    cluster.campaign(1);
    cluster.stabilize();
    assert!(cluster.core(1).is_leader());
    cluster.propose(1, "x").unwrap();
    cluster.run_for(50);
    assert_eq!(cluster.core(2).last_log_id(), cluster.core(1).last_log_id());
    assert_eq!(cluster.node(2).commands(), vec![Bytes::from_static(b"x")]);
}

/// Bug 14 (openraft a48a3282: votes compared last log ids in the wrong order;
/// paper §5.4.1): node 2 has the longer log (last 2-4) and node 1 the later last
/// term (3-2). Node 1 must refuse node 2's (pre-)vote, node 2 must grant node
/// 1's, and node 1's election must replace node 2's uncommitted entries.
#[test]
fn higher_last_term_beats_longer_log_in_a_vote() {
    let voters = Configuration::new(ids(&[1, 2, 3]));
    let mut cluster = empty_cluster();
    let later_term = vec![config_entry(1, 1, voters.clone()), command_entry(3, 2, "later-term")];
    let mut longer = vec![config_entry(1, 1, voters.clone())];
    longer.extend((2..=4).map(|i| command_entry(2, i, &format!("longer-{i}"))));
    cluster.add_node(1, crafted_disk(3, None, later_term), |_| {});
    cluster.add_node(2, crafted_disk(3, None, longer), |_| {});
    cluster.add_node(3, crafted_disk(3, None, vec![config_entry(1, 1, voters)]), |_| {});
    // Without node 3 the vote between 1 and 2 decides each election.
    cluster.crash(3);

    cluster.campaign(2);
    let answers = stabilize_recording(&mut cluster, &mut vote_responses_from(1));
    assert!(!answers.is_empty(), "node 1 did not answer node 2");
    for (_, _, answer) in &answers {
        assert!(
            matches!(answer, Message::RequestVoteResponse(r) if !r.granted),
            "node 1 granted a longer, older log: {answer:?}"
        );
    }
    assert_eq!(cluster.leader(), None);

    cluster.campaign(1);
    let answers = stabilize_recording(&mut cluster, &mut vote_responses_from(2));
    assert!(
        answers.iter().any(|(_, _, m)| matches!(m, Message::RequestVoteResponse(r) if r.granted && !r.pre_vote)),
        "node 2 refused a later last term: {answers:?}"
    );
    assert_eq!(cluster.leader(), Some(1));
    cluster.stabilize();
    assert_eq!(cluster.core(2).last_log_id(), cluster.core(1).last_log_id());
    assert_eq!(cluster.core(2).term_at(LogIndex(2)), Some(Term(3)));
}

/// Bug 2 (openraft #1796, fixed by openraft PR #1800): during a joint change,
/// cohort A = {1,2,3} holds the longest log (an uncommitted entry at index 3 of
/// term 2) but is still in term 2, while cohort B = {4,5,6} moved on to term 4
/// (node 4 campaigned there) with a shorter log. Neither cohort is a quorum of
/// the outgoing half {1..6}. B rejects A's pre-votes on term; A rejects B's on
/// log. Unless the rejection teaches A the higher term, the cluster spins in
/// pre-votes forever. A leader must appear within a bounded time, and by the
/// election restriction it must come from A and keep the entry at index 3.
#[test]
fn joint_config_prevote_split_between_longest_log_and_highest_term_still_elects() {
    // C(old = {1..6}, new = {1..5}): removing node 6, as in the issue.
    let joint = Configuration {
        voters: ids(&[1, 2, 3, 4, 5]),
        voters_outgoing: ids(&[1, 2, 3, 4, 5, 6]),
        ..Default::default()
    };
    let shared = vec![config_entry(1, 1, joint.clone()), command_entry(2, 2, "shared")];
    let mut longest = shared.clone();
    longest.push(command_entry(2, 3, "cohort-a-tail"));

    let mut cluster = empty_cluster();
    for id in [1, 2, 3] {
        cluster.add_node(id, crafted_disk(2, None, longest.clone()), |_| {});
    }
    for id in [4, 5, 6] {
        // Node 4 is the active candidate of term 4 and its cohort voted for it.
        cluster.add_node(id, crafted_disk(4, Some(4), shared.clone()), |_| {});
    }
    assert!(cluster.nodes.values().all(|n| n.config.pre_vote), "the scenario needs PreVote");

    let Some(leader) = committed_leader_within(&mut cluster, 20 * ELECTION_MAX_MS) else {
        panic!("no leader within {} ms: {:?}", 20 * ELECTION_MAX_MS, terms_and_logs(&cluster));
    };
    // Only cohort A holds the best log (2-3); B's nodes would be refused by A.
    assert!([1, 2, 3].contains(&leader), "node {leader} won without the longest log");
    let core = cluster.core(leader);
    assert!(core.current_term() > Term(4), "the leader's term {} must pass cohort B's term 4", core.current_term());
    assert_eq!(core.entry(LogIndex(3)).map(|e| e.term), Some(Term(2)), "the leader lost entry 2-3");

    // The leader commits A's tail in its own term, and every voter of C(new) applies it.
    cluster.run_for(10 * HEARTBEAT_MS);
    let state = cluster.assert_same_state(&[1, 2, 3, 4, 5]);
    assert_eq!(state, vec![Bytes::from("shared"), Bytes::from("cohort-a-tail")]);
}

/// Asking again for a transfer to the same target resends TimeoutNow, which may
/// have been lost.
#[test]
fn repeated_transfer_request_resends_timeout_now() {
    let mut cluster = Cluster::new(3);
    cluster.elect(1);
    cluster.with_core(1, |core| core.transfer_leadership(NodeId(2))).unwrap();
    let lost = cluster.take_messages(|_, _, m| matches!(m, Message::TimeoutNow { .. }));
    assert_eq!(lost.len(), 1);
    cluster.with_core(1, |core| core.transfer_leadership(NodeId(2))).unwrap();
    cluster.stabilize();
    assert_eq!(cluster.leader(), Some(2));
}

/// A reload that lowers the election timeout must not shorten the window in
/// which this node refuses votes after hearing the leader: the leader may hold
/// a lease measured with the old timeout. A lease never grows by a reload.
#[test]
fn a_lowered_election_timeout_keeps_refusing_votes_for_the_old_window() {
    let mut cluster = Cluster::new(3);
    cluster.elect(1);
    cluster.run_for(200);
    let base = cluster.core(2).config().clone();
    for id in [2, 3] {
        let mut lower = cluster.core(id).config().clone();
        lower.election_timeout_min_ms = base.election_timeout_min_ms / 4;
        lower.election_timeout_max_ms = base.election_timeout_min_ms / 2;
        lower.lease_clock_drift_ms = lower.election_timeout_min_ms / 10;
        cluster.with_core(id, |core| core.reload_config(lower)).unwrap();
    }
    // The leader is cut off; after the new, shorter timeout nodes 2 and 3
    // campaign, but each heard the leader within the old window and refuses.
    cluster.isolate(1);
    cluster.run_for(base.election_timeout_min_ms * 3 / 4);
    let early = cluster.leader();
    assert!(!matches!(early, Some(2) | Some(3)), "a vote was granted inside the old window: {early:?}");
    cluster.run_for(base.election_timeout_min_ms * 2);
    let leader = cluster.leader().expect("after the old window a new leader is elected");
    assert_ne!(leader, 1);
    // Raising the timeout again never lengthens the lease past the shortest one configured.
    let mut higher = cluster.core(leader).config().clone();
    higher.election_timeout_min_ms = base.election_timeout_min_ms * 2;
    higher.election_timeout_max_ms = base.election_timeout_max_ms * 2;
    cluster.with_core(leader, |core| core.reload_config(higher)).unwrap();
    cluster.run_for(base.heartbeat_interval_ms * 3);
    assert!(cluster.core(leader).lease_valid(), "the lease renews after the reload");
    cluster.run_for(base.heartbeat_interval_ms / 2);
}

/// A follower whose election timeout was lowered must not campaign while the
/// leader may still hold a lease it helped confirm: its own (pre-)vote counts
/// for itself, so refusing others' votes is not enough. Node 3 is cut off from
/// the leader, node 2 confirms a heartbeat round, is then cut off from the
/// leader and reloaded to a short timeout. While leader 1 still serves lease
/// reads, nobody else may lead a newer term.
#[test]
fn a_lowered_election_timeout_does_not_let_a_follower_campaign_inside_a_lease() {
    let mut cluster = Cluster::new(3);
    cluster.elect(1);
    cluster.run_for(200);
    let cut = |cluster: &mut Cluster, a: u64, b: u64| {
        cluster.blocked.insert((NodeId(a), NodeId(b)));
        cluster.blocked.insert((NodeId(b), NodeId(a)));
    };
    cut(&mut cluster, 1, 3);
    // Node 2 acknowledges the next heartbeat round: the lease runs from its start.
    cluster.run_for(HEARTBEAT_MS + 1);
    assert!(cluster.core(1).lease_valid());
    cut(&mut cluster, 1, 2);
    let mut lower = cluster.core(2).config().clone();
    lower.election_timeout_min_ms = 20;
    lower.election_timeout_max_ms = 21;
    lower.lease_clock_drift_ms = 2;
    cluster.with_core(2, |core| core.reload_config(lower)).unwrap();
    for _ in 0..ELECTION_MAX_MS * 2 {
        cluster.run_for(1);
        if cluster.core(1).lease_valid() {
            let term = cluster.core(1).current_term();
            for id in [2, 3] {
                let core = cluster.core(id);
                assert!(
                    !(core.is_leader() && core.current_term() > term),
                    "node {id} leads term {} while node 1 holds a lease in term {term}",
                    core.current_term()
                );
            }
        }
    }
    let leader = cluster.leader().expect("a leader once the lease has run out");
    assert_ne!(leader, 1, "node 1 cannot reach a quorum");
}
