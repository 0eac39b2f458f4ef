//! Linearizable reads without the log (thesis §6.4), driven by hand through
//! `raftkv_sim::harness::Cluster`: ReadIndex after an election, heartbeat
//! rounds and their quorum, reads forwarded by followers and learners, and
//! leases (their end before a new leader, their renewal after a reload). A
//! test of a historical bug of another Raft implementation names the bug and
//! the issue it comes from.

use raftkv_core::{LogIndex, Message, NodeId, ReadError, ReadMode};
use raftkv_sim::harness::{Cluster, ELECTION_MAX_MS, HEARTBEAT_MS};

/// Removes every block between `a` and `b`, in both directions.
fn connect(cluster: &mut Cluster, a: u64, b: u64) {
    cluster.blocked.remove(&(NodeId(a), NodeId(b)));
    cluster.blocked.remove(&(NodeId(b), NodeId(a)));
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
    // The read waits for a round after the unconfirmed one; drop whatever
    // node 1 sends.
    cluster.read(1, 1, ReadMode::Linearizable).unwrap();
    let _ = cluster.take_messages(|_, _, _| true);
    // The same read id asked again, and then the old acks arrive late.
    cluster.read(1, 1, ReadMode::Linearizable).unwrap();
    let _ = cluster.take_messages(|_, _, _| true);
    let count = 2 * old_acks.len();
    cluster.in_flight.extend(old_acks.clone());
    cluster.in_flight.extend(old_acks);
    for _ in 0..count {
        cluster.deliver_one();
    }
    // Once the old round is confirmed the round the read waits for begins:
    // drop it as well.
    let _ = cluster.take_messages(|_, _, _| true);
    assert!(cluster.node(1).reads.is_empty(), "stale acknowledgements confirmed a read");
    // A fresh round confirms it.
    cluster.run_for(20);
    assert!(matches!(cluster.node(1).reads.get(&1), Some(Ok(_))));
}

/// Reads share heartbeat rounds (thesis §6.4): while one round is
/// unconfirmed, reads that come after it start none of their own; they wait
/// for the next round, which starts as soon as the first is confirmed (no
/// tick needed) and answers them all together.
#[test]
fn reads_during_an_unconfirmed_round_share_the_next_one() {
    let mut cluster = Cluster::new(3);
    cluster.elect(1);
    cluster.run_for(10);
    let appends = |from: NodeId, _: NodeId, m: &Message| from == NodeId(1) && matches!(m, Message::AppendEntries(_));
    cluster.read(1, 1, ReadMode::Linearizable).unwrap();
    let first = cluster.take_messages(appends);
    assert_eq!(first.len(), 2, "the first read starts a round to both followers");
    for read_id in 2..=4 {
        cluster.read(1, read_id, ReadMode::Linearizable).unwrap();
    }
    assert!(cluster.take_messages(appends).is_empty(), "a second round started while the first was unconfirmed");
    let now = cluster.now;
    cluster.in_flight.extend(first);
    cluster.stabilize();
    assert_eq!(cluster.now, now);
    for read_id in 1..=4 {
        assert!(matches!(cluster.node(1).reads.get(&read_id), Some(Ok(_))), "read {read_id} answered");
    }
    assert!(cluster.core(1).is_leader());
}

/// Bug 14 (openraft d60f1e85: the read quorum was majority - 1): with four or
/// five voters, a leader that hears only from one follower (two voters, a
/// minority either way) must not confirm a linearizable read, however many
/// heartbeat rounds pass. Reconnecting a third voter, a majority of both sizes,
/// confirms it.
#[test]
fn read_needs_a_full_majority_of_voters() {
    for size in [4, 5] {
        let mut cluster = Cluster::new(size);
        cluster.elect(1);
        let index = cluster.propose(1, "x").unwrap();
        cluster.stabilize();
        for id in 3..=size {
            cluster.isolate(id);
        }
        cluster.read(1, 1, ReadMode::Linearizable).unwrap();
        cluster.run_for(5 * HEARTBEAT_MS);
        assert!(cluster.core(1).is_leader());
        assert_eq!(cluster.node(1).reads.get(&1), None, "read answered by 2 of {size} voters");

        connect(&mut cluster, 1, 3);
        connect(&mut cluster, 2, 3);
        cluster.run_for(2 * HEARTBEAT_MS);
        assert!(matches!(cluster.node(1).reads.get(&1), Some(Ok(i)) if *i >= index), "3 of {size} voters");
    }
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

/// A ReadIndexRequest sent by node 3, for `Cluster::take_messages`.
fn read_request_from_3(from: NodeId, _: NodeId, m: &Message) -> bool {
    from == NodeId(3) && matches!(m, Message::ReadIndexRequest { .. })
}

/// A follower asks the leader once for all the reads that came before its
/// request (thesis §6.4): while one request is unanswered, later reads wait
/// for the next, sent as soon as the answer comes, and the answer to the
/// first never serves them (it may predate a write they must see).
#[test]
fn a_followers_reads_share_one_request_to_the_leader() {
    let mut cluster = Cluster::new(3);
    cluster.elect(1);
    cluster.propose(1, "x").unwrap();
    cluster.stabilize();
    cluster.run_for(10);
    let answers =
        |_: NodeId, to: NodeId, m: &Message| to == NodeId(3) && matches!(m, Message::ReadIndexResponse { .. });
    cluster.read(3, 1, ReadMode::Linearizable).unwrap();
    let first = cluster.take_messages(read_request_from_3);
    assert_eq!(first.len(), 1);
    cluster.read(3, 2, ReadMode::Linearizable).unwrap();
    cluster.read(3, 3, ReadMode::Linearizable).unwrap();
    assert!(cluster.take_messages(read_request_from_3).is_empty(), "a second request while the first was unanswered");

    // The leader answers the first request; hold the answer back while a
    // write commits, then deliver it.
    cluster.in_flight.extend(first);
    let mut held = Vec::new();
    loop {
        held.extend(cluster.take_messages(answers));
        if !cluster.deliver_one() {
            break;
        }
    }
    assert_eq!(held.len(), 1);
    let later = cluster.propose(1, "y").unwrap();
    cluster.stabilize();
    assert!(cluster.core(1).commit_index() >= later);
    cluster.in_flight.extend(held);
    cluster.deliver_one();
    assert!(matches!(cluster.node(3).reads.get(&1), Some(Ok(i)) if *i < later), "read 1: the first answer");
    for read_id in [2, 3] {
        assert_eq!(cluster.node(3).reads.get(&read_id), None, "read {read_id} answered by a request sent before it");
    }
    assert_eq!(cluster.take_messages(read_request_from_3).len(), 1, "the next request goes once the first is answered");
    cluster.in_flight.clear();
    cluster.run_for(HEARTBEAT_MS + 5);
    for read_id in [2, 3] {
        assert!(matches!(cluster.node(3).reads.get(&read_id), Some(Ok(i)) if *i >= later), "read {read_id}");
    }
}

/// A forwarded request (or its answer) that is lost holds its reads up for a
/// heartbeat interval, not forever: they are asked for again, alone or with
/// the reads that came since, in one request.
#[test]
fn a_followers_lost_read_request_is_asked_again() {
    let mut cluster = Cluster::new(3);
    cluster.elect(1);
    let index = cluster.propose(1, "x").unwrap();
    cluster.stabilize();
    cluster.run_for(10);
    // Lost with a read behind it.
    cluster.read(3, 4, ReadMode::Linearizable).unwrap();
    assert_eq!(cluster.take_messages(read_request_from_3).len(), 1);
    cluster.read(3, 5, ReadMode::Linearizable).unwrap();
    cluster.run_for(HEARTBEAT_MS + 5);
    for read_id in [4, 5] {
        assert!(matches!(cluster.node(3).reads.get(&read_id), Some(Ok(i)) if *i >= index), "read {read_id}");
    }
    // Lost alone, twice.
    cluster.read(3, 6, ReadMode::Linearizable).unwrap();
    assert_eq!(cluster.take_messages(read_request_from_3).len(), 1);
    for _ in 0..HEARTBEAT_MS {
        cluster.now += 1;
        let now = cluster.now;
        cluster.with_core(3, |core| core.handle_tick(now));
    }
    assert_eq!(cluster.take_messages(read_request_from_3).len(), 1, "asked again after a heartbeat interval");
    cluster.run_for(HEARTBEAT_MS + 5);
    assert!(matches!(cluster.node(3).reads.get(&6), Some(Ok(i)) if *i >= index));
    assert!(cluster.core(1).is_leader());
}

/// A learner cannot elect anyone. When its leader goes silent for an election
/// timeout, it forgets it and fails the reads it forwarded, rather than keep
/// routing to a dead node forever.
#[test]
fn learner_forgets_a_silent_leader_and_fails_its_forwarded_reads() {
    let mut cluster = Cluster::with_members(&[1], &[2], |_| {});
    cluster.campaign(1);
    cluster.stabilize();
    cluster.run_for(20);
    assert_eq!(cluster.core(2).leader(), Some(NodeId(1)));
    cluster.crash(1);
    cluster.read(2, 3, ReadMode::Linearizable).unwrap();
    cluster.run_for(3 * ELECTION_MAX_MS);
    assert_eq!(cluster.core(2).leader(), None);
    assert_eq!(cluster.node(2).reads.get(&3), Some(&Err(ReadError::LeadershipLost)));
    assert_eq!(cluster.read(2, 4, ReadMode::Linearizable), Err(ReadError::NoLeader));
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

/// `reload_config` validates the new settings, refuses to change what must stay
/// fixed, drops a leader's lease (measured with the old timeouts) until the next
/// round confirms it, and the new heartbeat interval takes effect.
#[test]
fn reload_config_validates_and_renews_the_lease() {
    let mut cluster = Cluster::new(3);
    cluster.elect(1);
    cluster.run_for(200);
    assert!(cluster.core(1).lease_valid());

    let base = cluster.core(1).config().clone();
    let mut bad = base.clone();
    bad.election_timeout_max_ms = bad.election_timeout_min_ms;
    assert!(cluster.with_core(1, |core| core.reload_config(bad)).is_err());
    let mut fixed = base.clone();
    fixed.check_quorum = !fixed.check_quorum;
    let refused = cluster.with_core(1, |core| core.reload_config(fixed)).unwrap_err();
    assert!(refused.reason.contains("cannot change"), "{refused}");
    assert!(cluster.core(1).lease_valid(), "a refused reload changes nothing");

    let mut slower = base.clone();
    slower.heartbeat_interval_ms = base.heartbeat_interval_ms * 3;
    cluster.with_core(1, |core| core.reload_config(slower)).unwrap();
    assert_eq!(cluster.core(1).config().heartbeat_interval_ms, base.heartbeat_interval_ms * 3);
    assert!(!cluster.core(1).lease_valid(), "the lease must be renewed under the new timeouts");
    cluster.run_for(base.heartbeat_interval_ms * 4);
    assert!(cluster.core(1).lease_valid(), "the next heartbeat round renews the lease");

    // Heartbeats now leave every 3 intervals.
    let _ = cluster.take_messages(|_, _, _| true);
    let mut heartbeats = 0;
    for _ in 0..base.heartbeat_interval_ms * 9 {
        cluster.now += 1;
        let now = cluster.now;
        cluster.with_core(1, |core| core.handle_tick(now));
        cluster.process(NodeId(1));
        heartbeats += cluster
            .take_messages(|from, to, m| from.0 == 1 && to.0 == 2 && matches!(m, Message::AppendEntries(_)))
            .len();
        cluster.stabilize();
    }
    assert!((2..=4).contains(&heartbeats), "{heartbeats} heartbeats to node 2 in 9 old intervals");
}
