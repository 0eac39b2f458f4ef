//! Snapshots and compaction, driven by hand through
//! `raftkv_sim::harness::Cluster`: an install over a divergent tail, the
//! configuration kept across compactions, duplicated and back-to-back streams,
//! and the runtime's verdict on a received snapshot. A test of a historical
//! bug of another Raft implementation names the bug and the issue it comes
//! from.

mod common;

use bytes::Bytes;
use raftkv_core::{
    Configuration, DurableState, Entry, InstallSnapshot, LogId, LogIndex, MembershipChange, Message, NodeId,
    SnapshotMeta, Term,
};
use raftkv_sim::harness::{Cluster, ELECTION_MAX_MS, HEARTBEAT_MS};

use common::{applied, ids, stabilize_recording, Envelope};

/// Advances time by one millisecond and ticks every running node, without
/// delivering anything: the caller decides what happens to the messages.
fn tick_all(cluster: &mut Cluster) {
    cluster.now += 1;
    let now = cluster.now;
    let running: Vec<u64> = cluster.nodes.values().filter(|n| n.core.is_some()).map(|n| n.id.0).collect();
    for id in running {
        cluster.with_core(id, |core| core.handle_tick(now));
    }
}

/// Like `Cluster::run_for`, recording the delivered messages `keep` selects.
fn run_recording(
    cluster: &mut Cluster,
    ms: u64,
    mut keep: impl FnMut(NodeId, NodeId, &Message) -> bool,
) -> Vec<Envelope> {
    let mut seen = Vec::new();
    for _ in 0..ms {
        tick_all(cluster);
        seen.extend(stabilize_recording(cluster, &mut keep));
    }
    seen
}

fn is_snapshot_chunk_to(to: NodeId, target: u64, message: &Message) -> bool {
    to == NodeId(target) && matches!(message, Message::InstallSnapshot(_))
}

/// Bug 13 (openraft 674e78aa "potential inconsistency when installing snapshot";
/// openraft docs/protocol/snapshot_replication.md): a follower holds an
/// uncommitted tail from an old leader that diverges from the new leader's log
/// and even reaches past the new leader's snapshot. The new leader has compacted
/// past the divergence, so it must send InstallSnapshot; afterwards the
/// follower's log and state equal the leader's and none of the divergent entries
/// survive, neither in the core nor on disk.
#[test]
fn snapshot_over_divergent_tail_truncates_it() {
    let mut cluster = Cluster::new(3);
    cluster.elect(1);
    cluster.propose(1, "x").unwrap();
    cluster.stabilize();
    let old_term = cluster.core(1).current_term();
    let common = cluster.core(1).last_log_id().index;

    // Node 1, cut off, appends eight entries that never reach anyone.
    cluster.isolate(1);
    for i in 0..8 {
        cluster.propose(1, &format!("divergent-{i}")).unwrap();
    }
    cluster.stabilize();
    let divergent_last = cluster.core(1).last_log_id();

    // Nodes 2 and 3 move on in a later term with a shorter log, then node 2 compacts all of it.
    cluster.elect(2);
    for i in 0..4 {
        cluster.propose(2, &format!("new-{i}")).unwrap();
    }
    cluster.stabilize();
    let leader_last = cluster.core(2).last_log_id();
    assert_eq!(cluster.core(2).commit_index(), leader_last.index);
    assert!(leader_last.index < divergent_last.index, "the divergent tail reaches past the snapshot");
    cluster.snapshot(2, 0);
    assert_eq!(cluster.core(2).log_start(), leader_last);

    cluster.heal();
    let chunks = run_recording(&mut cluster, 20 * HEARTBEAT_MS, |from, to, m| {
        from == NodeId(2) && is_snapshot_chunk_to(to, 1, m)
    });
    assert!(!chunks.is_empty(), "the leader compacted past node 1's match and must send a snapshot");

    cluster.propose(2, "after").unwrap();
    cluster.run_for(5 * HEARTBEAT_MS);
    let follower = cluster.core(1);
    assert_eq!(follower.last_log_id(), cluster.core(2).last_log_id());
    assert_eq!(follower.commit_index(), cluster.core(2).commit_index());
    assert_eq!(follower.snapshot().map(|s| s.last_log_id), Some(leader_last));
    for index in common.0 + 1..=divergent_last.index.0 {
        let term = follower.term_at(LogIndex(index));
        assert_ne!(term, Some(old_term), "divergent entry {index} survived in the core");
    }
    let stale_on_disk: Vec<LogId> =
        cluster.node(1).log.iter().filter(|e| e.term == old_term && e.index.0 > common.0).map(Entry::log_id).collect();
    assert!(stale_on_disk.is_empty(), "divergent entries survived on disk: {stale_on_disk:?}");
    assert_eq!(applied(&cluster, 1), applied(&cluster, 2));
    assert_eq!(applied(&cluster, 1), ["x", "new-0", "new-1", "new-2", "new-3", "after"]);
}

/// Bug 13 (openraft dba24036 "membership not recoverable after two compactions"):
/// the membership changes (learner 4 added, promoted, voter 3 removed), then a
/// follower compacts twice with only commands in between. After the first
/// compaction the configuration lives only in the core's compaction-point state;
/// the second snapshot must take it from there, because no configuration entry
/// is left in the log. Restarted from that snapshot, the follower must know the
/// current membership, and the cluster must still elect and commit with it: the
/// old leader crashes and node 2 must win with the vote of node 4, the promoted
/// learner, not of node 3.
#[test]
fn membership_survives_two_compactions_and_a_restart() {
    let mut cluster = Cluster::new(3);
    cluster.elect(1);
    cluster.propose(1, "a").unwrap();
    cluster.stabilize();

    cluster.add_node(4, DurableState::default(), |_| {});
    for change in [
        MembershipChange::AddLearner(NodeId(4)),
        MembershipChange::AddVoter(NodeId(4)),
        MembershipChange::RemoveServer(NodeId(3)),
    ] {
        cluster.with_core(1, |core| core.propose_membership(change)).unwrap();
        cluster.run_for(5 * HEARTBEAT_MS);
    }
    let expected = Configuration::new(ids(&[1, 2, 4]));
    assert_eq!(cluster.core(1).membership(), &expected);
    let last_config = cluster.core(1).membership_index();

    // First compaction: the trailing entry kept is a command, every config entry goes.
    cluster.propose(1, "b").unwrap();
    cluster.propose(1, "c").unwrap();
    cluster.run_for(5 * HEARTBEAT_MS);
    cluster.snapshot(2, 1);
    assert!(cluster.core(2).first_log_index() > last_config, "the config entries were compacted");

    // Second compaction, with only commands since the first.
    cluster.propose(1, "d").unwrap();
    cluster.run_for(5 * HEARTBEAT_MS);
    cluster.snapshot(2, 0);
    let node_2 = cluster.core(2);
    assert_eq!(node_2.first_log_index(), node_2.last_log_id().index.next(), "node 2 compacted its whole log");
    assert_eq!(node_2.snapshot().map(|s| &s.config), Some(&expected), "the second snapshot lost the membership");

    cluster.restart(2);
    assert_eq!(cluster.core(2).membership(), cluster.core(1).membership(), "membership lost by the restart");

    // The cluster still commits with node 2 in it.
    cluster.run_for(5 * HEARTBEAT_MS);
    cluster.propose(1, "e").unwrap();
    cluster.run_for(5 * HEARTBEAT_MS);
    cluster.assert_same_state(&[1, 2, 4]);

    // And node 2 can lead {1,2,4} without node 1: it must count node 4, not node 3.
    cluster.crash(1);
    cluster.elect(2);
    cluster.propose(2, "f").unwrap();
    cluster.run_for(5 * HEARTBEAT_MS);
    let state = cluster.assert_same_state(&[2, 4]);
    assert_eq!(state, ["a", "b", "c", "d", "e", "f"].map(Bytes::from).to_vec());
}

/// Bug 17 (etcd #18055, root cause in etcd #20657: two snapshots received
/// close together; the first was still being applied when the second arrived,
/// and the node panicked). A follower receives a complete snapshot stream while
/// its disk is slow (the install is not durable yet) and then the same stream
/// twice more, back to back. Later, once it has moved past that snapshot, the
/// old stream arrives again, and again right after the first chunk of a newer
/// snapshot. Nothing may panic (the harness asserts chunk order and restore
/// consistency), a stale copy must never move the follower's commit index or
/// state machine backwards, and the follower ends equal to the leader with the
/// newer snapshot.
#[test]
fn duplicate_and_back_to_back_snapshot_streams_converge_without_panic() {
    let mut cluster = Cluster::new(3);
    cluster.elect(1);
    cluster.isolate(3);
    for i in 0..6 {
        cluster.propose(1, &format!("first-{i}")).unwrap();
    }
    cluster.stabilize();
    cluster.snapshot(1, 0);
    let first = cluster.core(1).snapshot().expect("leader snapshot").last_log_id;

    // The first complete stream, received while node 3's writes are held.
    cluster.node_mut(3).hold_persists = true;
    cluster.heal();
    let mut stream = run_recording(&mut cluster, 5 * HEARTBEAT_MS, |_, to, m| is_snapshot_chunk_to(to, 3, m));
    // The leader retransmits the last chunk while its acknowledgement waits for the disk.
    stream.dedup_by_key(|(_, _, m)| match m {
        Message::InstallSnapshot(chunk) => chunk.offset,
        _ => u64::MAX,
    });
    assert!(stream.len() >= 2, "the snapshot should take several chunks, got {}", stream.len());
    assert!(
        matches!(stream.last(), Some((_, _, Message::InstallSnapshot(c))) if c.done && c.meta.last_log_id == first)
    );
    assert_eq!(cluster.core(3).snapshot().map(|s| s.last_log_id), Some(first), "installed in the core");
    assert!(cluster.node(3).snapshot.is_none(), "but not yet on disk");

    // The same stream twice more, back to back, before the install is durable.
    for _ in 0..2 {
        cluster.in_flight.extend(stream.iter().cloned());
    }
    cluster.stabilize();
    assert_eq!(cluster.core(3).commit_index(), first.index);
    cluster.release_persists(3);
    cluster.run_for(5 * HEARTBEAT_MS);
    assert_eq!(cluster.node(3).snapshot.as_ref().map(|(meta, _)| meta.last_log_id), Some(first));

    // Node 3 moves past the snapshot; a stale copy of its stream must not undo that.
    cluster.propose(1, "between").unwrap();
    cluster.run_for(3 * HEARTBEAT_MS);
    let (commit_before, state_before) = (cluster.core(3).commit_index(), applied(&cluster, 3));
    assert!(commit_before > first.index);
    assert_eq!(state_before, applied(&cluster, 1));
    cluster.in_flight.extend(stream.iter().cloned());
    cluster.stabilize();
    assert_eq!(cluster.core(3).commit_index(), commit_before, "a stale snapshot moved the commit index");
    assert_eq!(applied(&cluster, 3), state_before, "a stale snapshot rolled the state machine back");

    // A newer snapshot: node 3 falls behind again and the leader compacts.
    cluster.isolate(3);
    for i in 0..6 {
        cluster.propose(1, &format!("second-{i}")).unwrap();
    }
    cluster.stabilize();
    cluster.snapshot(1, 0);
    let second = cluster.core(1).snapshot().expect("leader snapshot").last_log_id;
    assert!(second.index > first.index);
    cluster.heal();

    // Stop when the newer stream's first chunk is about to arrive, and put two
    // copies of the old stream right behind it.
    let mut budget = 10 * ELECTION_MAX_MS;
    loop {
        let next_is_second = matches!(
            cluster.in_flight.front(),
            Some((_, to, Message::InstallSnapshot(c))) if *to == NodeId(3) && c.meta.last_log_id == second
        );
        if next_is_second {
            break;
        }
        if !cluster.deliver_one() {
            tick_all(&mut cluster);
            budget -= 1;
            assert!(budget > 0, "the leader never sent the newer snapshot");
        }
    }
    let rest: Vec<Envelope> = cluster.in_flight.drain(1..).collect();
    cluster.in_flight.extend(stream.iter().cloned());
    cluster.in_flight.extend(stream.iter().cloned());
    cluster.in_flight.extend(rest);

    cluster.run_for(20 * HEARTBEAT_MS);
    cluster.propose(1, "after").unwrap();
    cluster.run_for(5 * HEARTBEAT_MS);
    let follower = cluster.core(3);
    assert_eq!(follower.snapshot().map(|s| s.last_log_id), Some(second));
    assert_eq!(follower.last_log_id(), cluster.core(1).last_log_id());
    assert_eq!(follower.commit_index(), cluster.core(1).commit_index());
    cluster.assert_same_state(&[1, 2, 3]);
    assert_eq!(applied(&cluster, 3).len(), 14);
}

/// A follower's side of the snapshot verdict (`handle_snapshot_checked`): a
/// snapshot received whole is installed only once the runtime calls it sound;
/// a refused one changes nothing and the leader is told to start over; a new
/// stream abandons one awaiting its verdict, whose late verdict is ignored.
#[test]
fn a_received_snapshot_waits_for_its_verdict_and_a_new_stream_abandons_it() {
    use raftkv_core::{Action, Core, CoreConfig, DurableState};
    let mut core =
        Core::new(CoreConfig::new(NodeId(2)), DurableState::bootstrap([NodeId(1), NodeId(2)]), 0, 7).unwrap();
    let snapshot = |index: u64, done: bool| {
        let meta = SnapshotMeta {
            last_log_id: LogId::new(Term(1), LogIndex(index)),
            config: Configuration::new([NodeId(1), NodeId(2)]),
        };
        Message::InstallSnapshot(InstallSnapshot { term: Term(1), meta, offset: 0, data: Bytes::from("data"), done })
    };
    let answers = |core: &mut Core| -> Vec<(u64, bool)> {
        let actions: Vec<Action> = core.drain_actions().collect();
        let mut answers = Vec::new();
        for action in &actions {
            if let Action::Persist(request) = action {
                core.handle_persisted(request.seq).unwrap();
            }
        }
        for action in actions.into_iter().chain(core.drain_actions()) {
            match action {
                Action::Send { message: Message::InstallSnapshotResponse(r), .. } => {
                    answers.push((r.next_offset, r.done))
                }
                Action::RestoreSnapshot { .. } => answers.push((u64::MAX, true)),
                _ => {}
            }
        }
        answers
    };
    let a = LogId::new(Term(1), LogIndex(10));

    core.handle_message(1, NodeId(1), snapshot(10, true));
    assert!(core.is_checking_snapshot(a));
    assert_eq!(answers(&mut core), vec![], "nothing is answered or restored before the verdict");
    core.handle_message(2, NodeId(1), snapshot(10, true));
    assert_eq!(answers(&mut core), vec![], "a resent chunk of the snapshot being checked changes nothing");

    core.handle_snapshot_checked(a, false);
    assert_eq!(answers(&mut core), vec![(0, false)], "a refusal asks the leader to start over");
    assert_eq!(core.commit_index(), LogIndex::ZERO);
    assert_eq!(core.snapshot(), None);

    core.handle_message(3, NodeId(1), snapshot(10, true));
    assert!(core.is_checking_snapshot(a));
    core.handle_message(4, NodeId(1), snapshot(20, false));
    assert!(!core.is_checking_snapshot(a), "a new stream abandons the snapshot awaiting its verdict");
    let _ = answers(&mut core);
    core.handle_snapshot_checked(a, true);
    assert_eq!(answers(&mut core), vec![], "a late verdict on the abandoned snapshot is ignored");
    assert_eq!(core.snapshot(), None);

    core.handle_message(5, NodeId(1), snapshot(10, true));
    core.handle_snapshot_checked(a, true);
    assert_eq!(answers(&mut core), vec![(u64::MAX, true), (4, true)], "a sound one is restored, then acknowledged");
    assert_eq!(core.snapshot().map(|s| s.last_log_id), Some(a));
}
