//! Scenario tests for historical bugs of real Raft implementations, driven by
//! hand through `raftkv_sim::harness::Cluster`: elections, replication, reads and
//! membership. Each test names its bug and the issue it comes from.

use raftkv_core::{
    AppendEntries, Entry, EntryPayload, LogId, LogIndex, MembershipChange, Message, NodeId, ReadError, ReadMode, Role,
    Term,
};
use raftkv_sim::harness::{Cluster, ELECTION_MAX_MS};

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

/// Bug 6 (hashicorp #612): after a follower rejects an append (a gap from a lost
/// message), replication to it must continue, not deadlock.
#[test]
fn follower_keeps_receiving_entries_after_a_rejected_append() {
    let mut cluster = Cluster::new(3);
    cluster.elect(1);
    for i in 0..3 {
        cluster.propose(1, &format!("a{i}")).unwrap();
        cluster.stabilize();
    }
    // Lose the next append to node 3: the one after it has a gap and is rejected.
    cluster.propose(1, "lost").unwrap();
    let lost = cluster.take_messages(|_, to, m| to == NodeId(3) && matches!(m, Message::AppendEntries(_)));
    assert!(!lost.is_empty());
    cluster.stabilize();
    cluster.propose(1, "after-gap").unwrap();
    cluster.stabilize();
    for i in 0..5 {
        cluster.propose(1, &format!("b{i}")).unwrap();
    }
    cluster.run_for(50);
    let last = cluster.core(1).last_log_id();
    assert_eq!(cluster.core(3).last_log_id(), last);
    assert_eq!(cluster.core(3).commit_index(), last.index);
    cluster.assert_same_state(&[1, 2, 3]);
}

/// Bug 8 (etcd #7331): a new leader must not serve ReadIndex before it commits an
/// entry of its own term; the read waits for the no-op.
#[test]
fn read_right_after_election_waits_for_the_noop_commit() {
    let mut cluster = Cluster::new(3);
    cluster.elect(1);
    cluster.propose(1, "x").unwrap();
    cluster.stabilize();
    // Node 2 wins, but hold its appends so the no-op cannot commit yet.
    cluster.campaign(2);
    while cluster.leader() != Some(2) {
        assert!(cluster.deliver_one(), "node 2 should win");
    }
    let appends = cluster.take_messages(|from, _, m| from == NodeId(2) && matches!(m, Message::AppendEntries(_)));
    cluster.read(2, 7, ReadMode::Linearizable).unwrap();
    let _ = cluster.take_messages(|from, _, m| from == NodeId(2) && matches!(m, Message::AppendEntries(_)));
    assert!(cluster.node(2).reads.is_empty(), "read answered before the no-op committed");
    let noop_index = cluster.core(2).last_log_id().index;
    cluster.in_flight.extend(appends);
    cluster.stabilize();
    cluster.run_for(30);
    let answer = cluster.node(2).reads.get(&7).copied().expect("read answered after the commit");
    assert!(answer.unwrap() >= noop_index);
}

/// Bug 9 (etcd #20418, raft PR #397): a ReadIndex must be confirmed by
/// acknowledgements of a heartbeat round sent after it; delayed acks of an older
/// round do not count.
#[test]
fn delayed_acks_of_an_older_round_do_not_confirm_a_read() {
    let mut cluster = Cluster::new(3);
    cluster.elect(1);
    cluster.stabilize();
    // Round r: capture the heartbeats' answers instead of delivering them.
    cluster.run_for(10);
    let _ = cluster.take_messages(|_, _, _| true);
    cluster.now += 10;
    let now = cluster.now;
    cluster.with_core(1, |core| core.handle_tick(now));
    let old_round: Vec<_> =
        cluster.take_messages(|from, _, m| from == NodeId(1) && matches!(m, Message::AppendEntries(_)));
    // Deliver the old round to the followers and keep their answers back.
    let count = old_round.len();
    cluster.in_flight.extend(old_round);
    for _ in 0..count {
        cluster.deliver_one();
    }
    let old_acks = cluster.take_messages(|_, to, _| to == NodeId(1));
    assert!(!old_acks.is_empty());
    // The read starts a new round; drop that round entirely.
    cluster.read(1, 1, ReadMode::Linearizable).unwrap();
    let _ = cluster.take_messages(|_, _, _| true);
    // The same read id asked again, and then the old acks arrive late.
    cluster.read(1, 1, ReadMode::Linearizable).unwrap();
    let _ = cluster.take_messages(|_, _, _| true);
    cluster.in_flight.extend(old_acks.clone());
    cluster.in_flight.extend(old_acks);
    cluster.stabilize();
    assert!(cluster.node(1).reads.is_empty(), "stale acknowledgements confirmed a read");
    // A fresh round confirms it.
    cluster.run_for(20);
    assert!(matches!(cluster.node(1).reads.get(&1), Some(Ok(_))));
}

/// Bug 10 (Jepsen, hashicorp #108, consul #54): a partitioned old leader must not
/// serve linearizable reads, and its lease must end before anyone else can lead.
#[test]
fn partitioned_old_leader_serves_no_reads_and_its_lease_ends_before_a_new_leader() {
    let mut cluster = Cluster::new(3);
    cluster.elect(1);
    cluster.propose(1, "v1").unwrap();
    cluster.run_for(30);
    assert!(cluster.core(1).lease_valid(), "a healthy leader holds a lease");
    cluster.isolate(1);
    let mut lease_ended_at = None;
    let mut new_leader_at = None;
    for _ in 0..10 * ELECTION_MAX_MS {
        cluster.run_for(1);
        if lease_ended_at.is_none() && !cluster.core(1).lease_valid() {
            lease_ended_at = Some(cluster.now);
        }
        if new_leader_at.is_none() && cluster.leader().is_some_and(|l| l != 1) {
            new_leader_at = Some(cluster.now);
        }
    }
    let (lease_end, elected) = (lease_ended_at.unwrap(), new_leader_at.unwrap());
    assert!(lease_end < elected, "lease ended at {lease_end} ms, new leader at {elected} ms");
    let new_leader = cluster.leader().unwrap();
    cluster.propose(new_leader, "v2").unwrap();
    cluster.run_for(20);
    // Reads on the old node: a lease read and a ReadIndex read; neither may succeed.
    let lease = cluster.read(1, 10, ReadMode::Lease);
    let linear = cluster.read(1, 11, ReadMode::Linearizable);
    cluster.run_for(100);
    for (result, read_id) in [(lease, 10), (linear, 11)] {
        let answered = cluster.node(1).reads.get(&read_id).copied();
        assert!(
            result.is_err() || !matches!(answered, Some(Ok(_))),
            "read {read_id} on the partitioned old leader succeeded: {answered:?}"
        );
    }
}

/// Bug 11 (hashicorp raft.go:654, etcd pendingConfIndex, openraft #2051): a new
/// leader must commit in its own term before a single-server change, or an
/// uncommitted change of a previous leader and its own could both commit.
#[test]
fn membership_change_waits_for_the_new_leaders_first_commit() {
    let mut cluster = Cluster::new(3);
    cluster.elect(1);
    // C1 reaches nobody, then its leader dies.
    cluster.with_core(1, |core| core.propose_membership(MembershipChange::RemoveServer(NodeId(3)))).unwrap();
    let _ = cluster.take_messages(|from, _, _| from == NodeId(1));
    cluster.crash(1);
    cluster.campaign(2);
    while cluster.leader() != Some(2) {
        assert!(cluster.deliver_one(), "node 2 should win");
    }
    let held = cluster.take_messages(|from, _, m| from == NodeId(2) && matches!(m, Message::AppendEntries(_)));
    let refused = cluster.with_core(2, |core| core.propose_membership(MembershipChange::RemoveServer(NodeId(1))));
    assert!(matches!(refused, Err(raftkv_core::ProposeError::NoCommitInTerm { .. })), "{refused:?}");
    cluster.in_flight.extend(held);
    cluster.stabilize();
    cluster.run_for(20);
    let accepted = cluster.with_core(2, |core| core.propose_membership(MembershipChange::RemoveServer(NodeId(1))));
    assert!(accepted.is_ok(), "{accepted:?}");
    // And only one change at a time.
    let second = cluster.with_core(2, |core| core.propose_membership(MembershipChange::AddLearner(NodeId(9))));
    assert!(matches!(second, Err(raftkv_core::ProposeError::ConfigChangePending { .. })), "{second:?}");
}

fn append(term: u64, prev: (u64, u64), entries: &[(u64, u64)], commit: u64) -> Message {
    Message::AppendEntries(AppendEntries {
        term: Term(term),
        prev_log_id: LogId::new(Term(prev.0), LogIndex(prev.1)),
        entries: entries
            .iter()
            .map(|(t, i)| Entry { term: Term(*t), index: LogIndex(*i), payload: EntryPayload::Noop })
            .collect(),
        leader_commit: LogIndex(commit),
        round: 0,
    })
}

/// Bug 12 (openraft 9540c904, 6202138f): a stale, shorter append arriving after a
/// newer one must not truncate matching entries, and a heartbeat's commit index
/// must not commit a divergent suffix the follower has not matched.
#[test]
fn stale_append_does_not_truncate_and_heartbeat_does_not_commit_divergent_suffix() {
    let mut cluster = Cluster::new(3);
    // Node 2 hears from leader 1 of term 5 directly.
    cluster.node_mut(2).hold_persists = false;
    let newer = append(5, (1, 1), &[(5, 2), (5, 3), (5, 4), (5, 5)], 1);
    let stale = append(5, (1, 1), &[(5, 2), (5, 3)], 1);
    let now = cluster.now;
    cluster.with_core(2, |core| core.handle_message(now, NodeId(1), newer));
    cluster.with_core(2, |core| core.handle_message(now, NodeId(1), stale));
    assert_eq!(cluster.core(2).last_log_id(), LogId::new(Term(5), LogIndex(5)));
    // The stale append is acknowledged only up to what it carried.
    let answers = cluster.take_messages(|from, _, _| from == NodeId(2));
    let matches = raftkv_sim::harness::acknowledged_matches(&answers);
    assert_eq!(matches, vec![LogIndex(5), LogIndex(3)]);

    // A leader of term 6 whose log matches node 2 only up to index 3 sends a
    // heartbeat that vouches for index 3 with commit index 5: node 2 may commit 3
    // only, because its entries 4 and 5 may diverge from the new leader's.
    let heartbeat = append(6, (5, 3), &[], 5);
    cluster.with_core(2, |core| core.handle_message(now, NodeId(3), heartbeat));
    assert_eq!(cluster.core(2).commit_index(), LogIndex(3));
    assert_eq!(cluster.core(2).last_log_id(), LogId::new(Term(5), LogIndex(5)));
    // The real conflict truncates: term 6 at index 4 replaces 5-4 and 5-5.
    let conflict = append(6, (5, 3), &[(6, 4)], 4);
    cluster.with_core(2, |core| core.handle_message(now, NodeId(3), conflict));
    assert_eq!(cluster.core(2).last_log_id(), LogId::new(Term(6), LogIndex(4)));
    assert_eq!(cluster.core(2).commit_index(), LogIndex(4));
}

/// A read sent to a follower goes to the leader and comes back with an index the
/// follower must apply before answering (ReadIndex on behalf of followers).
#[test]
fn follower_read_is_confirmed_by_the_leader() {
    let mut cluster = Cluster::new(3);
    cluster.elect(1);
    cluster.propose(1, "x").unwrap();
    cluster.stabilize();
    cluster.read(3, 5, ReadMode::Linearizable).unwrap();
    cluster.run_for(20);
    let index = cluster.node(3).reads.get(&5).copied().unwrap().unwrap();
    assert!(index >= LogIndex(3));
    // Without a known leader, a follower refuses at once.
    cluster.crash(1);
    cluster.restart(3);
    assert_eq!(cluster.read(3, 6, ReadMode::Linearizable), Err(ReadError::NoLeader));
}
