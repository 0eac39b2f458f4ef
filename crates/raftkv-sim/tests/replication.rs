//! Log replication, driven by hand through `raftkv_sim::harness::Cluster`:
//! rejected and stale appends, what a heartbeat may commit, probing after a
//! change of leader, and acknowledgements that arrive after the term they
//! answered. A test of a historical bug of another Raft implementation names
//! the bug and the issue it comes from.

mod common;

use raftkv_core::{AppendEntries, Entry, EntryPayload, LogId, LogIndex, Message, NodeId, Term};
use raftkv_sim::harness::{Cluster, HEARTBEAT_MS};

use common::{match_index, Envelope};

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

fn entries_sent(messages: &[(NodeId, NodeId, Message)], from: u64, to: u64) -> usize {
    messages
        .iter()
        .filter(|(f, t, _)| f.0 == from && t.0 == to)
        .map(|(_, _, m)| match m {
            Message::AppendEntries(append) => append.entries.len(),
            _ => 0,
        })
        .sum()
}

/// Like `Cluster::stabilize`, but messages for which `hold` holds are taken out
/// instead of delivered, and returned: a delayed message, delivered later by
/// pushing it back into `in_flight`.
fn stabilize_holding(cluster: &mut Cluster, mut hold: impl FnMut(NodeId, NodeId, &Message) -> bool) -> Vec<Envelope> {
    let mut held = Vec::new();
    let mut budget = 1_000_000;
    while let Some((from, to, message)) = cluster.in_flight.front() {
        if hold(*from, *to, message) {
            held.extend(cluster.in_flight.pop_front());
        } else {
            cluster.deliver_one();
        }
        budget -= 1;
        assert!(budget > 0, "messages never stopped flowing");
    }
    held
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

/// A new leader's heartbeat is acknowledged at the old match index (zero) before
/// its probe is answered. That must not make it stream the whole log again.
#[test]
fn heartbeat_reply_does_not_restart_replication_from_the_beginning() {
    let mut cluster = Cluster::new(3);
    cluster.elect(1);
    for i in 0..20 {
        cluster.propose(1, &format!("c{i}")).unwrap();
    }
    cluster.stabilize();
    // Node 2 takes over while its messages to node 3 are lost: the probe to 3 is gone.
    cluster.blocked.insert((NodeId(2), NodeId(3)));
    cluster.with_core(1, |core| core.transfer_leadership(NodeId(2))).unwrap();
    cluster.stabilize();
    assert_eq!(cluster.leader(), Some(2));
    cluster.heal();

    let mut delivered = Vec::new();
    for _ in 0..100 {
        cluster.now += 1;
        let now = cluster.now;
        for id in 1..=3 {
            cluster.with_core(id, |core| core.handle_tick(now));
        }
        while let Some(message) = cluster.in_flight.front().cloned() {
            cluster.deliver_one();
            delivered.push(message);
        }
    }
    assert_eq!(cluster.core(3).last_log_id(), cluster.core(2).last_log_id());
    // Node 3 only lacks the new leader's no-op: one entry, perhaps sent twice.
    let sent = entries_sent(&delivered, 2, 3);
    assert!(sent <= 2, "node 2 sent {sent} entries to node 3, which lacked one");
}

/// Bug 18a (etcd-io/raft testdata async_storage_writes_append_aba_race.txt):
/// leadership goes 1 -> 2 -> 1. In its first term node 1 sent entries 3..5 to
/// node 3 only, and node 3's acknowledgement (match 5) is delayed. Node 2 then
/// wins without them and overwrites node 3's copies. When node 1 leads again, its
/// no-op at index 4 reaches only node 4; the delayed acknowledgement then
/// arrives. Counted, it would make {1,3,4} a majority of five and commit index 4
/// while node 3 does not hold it. It must be ignored: node 3's match stays 0 and
/// the commit index does not move until real acknowledgements arrive.
#[test]
fn stale_term_append_ack_does_not_advance_commit_of_a_later_leader() {
    let mut cluster = Cluster::new(5);
    cluster.elect(1);

    // Entries 3..5 of node 1's first term reach node 3 only; keep its acknowledgements.
    for command in ["a", "b", "c"] {
        cluster.propose(1, command).unwrap();
    }
    let _dropped = cluster.take_messages(|from, to, _| from == NodeId(1) && to != NodeId(3));
    let stale_acks = stabilize_holding(&mut cluster, |from, to, m| {
        from == NodeId(3) && to == NodeId(1) && matches!(m, Message::AppendEntriesResponse(_))
    });
    let stale_match = raftkv_sim::harness::acknowledged_matches(&stale_acks).into_iter().max();
    assert_eq!(stale_match, Some(LogIndex(5)), "node 3 should have acknowledged entries 3..5");
    let first_term = cluster.core(1).current_term();

    // Node 2 wins with {2,4,5} and overwrites node 3's entries 3..5.
    cluster.isolate(1);
    cluster.elect(2);
    assert_ne!(cluster.core(3).term_at(LogIndex(3)), Some(first_term));

    // Leadership goes back to node 1, whose no-op reaches node 4 only.
    cluster.heal();
    cluster.run_for(HEARTBEAT_MS);
    cluster.with_core(2, |core| core.transfer_leadership(NodeId(1))).unwrap();
    while !cluster.core(1).is_leader() {
        assert!(cluster.deliver_one(), "node 1 should take over");
    }
    let held = cluster
        .take_messages(|from, to, m| from == NodeId(1) && to != NodeId(4) && matches!(m, Message::AppendEntries(_)));
    cluster.stabilize();
    let noop = cluster.core(1).last_log_id();
    assert!(noop.term > first_term && noop.index == LogIndex(4), "unexpected no-op {noop}");
    assert_eq!(match_index(&cluster, 1, 4), noop.index);
    let commit_before = cluster.core(1).commit_index();
    assert!(commit_before < noop.index);

    // The delayed acknowledgements of the first term arrive now.
    cluster.in_flight.extend(stale_acks);
    cluster.stabilize();
    assert_eq!(match_index(&cluster, 1, 3), LogIndex::ZERO, "a stale-term ack set node 3's match");
    assert_eq!(cluster.core(1).commit_index(), commit_before, "a stale-term ack advanced the commit index");

    cluster.in_flight.extend(held);
    cluster.stabilize();
    assert!(cluster.core(1).commit_index() >= noop.index);
}
