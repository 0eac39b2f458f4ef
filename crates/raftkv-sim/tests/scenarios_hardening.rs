//! Scenario tests for defences found by review of the core rather than taken
//! from other implementations' bug reports: hostile or malformed input, duplicated and stale answers,
//! a single voter's durability, and progress tracking that must not waste work.

use bytes::Bytes;
use raftkv_core::{
    AppendEntries, Configuration, Entry, EntryPayload, InstallSnapshot, LogId, LogIndex, Message, NodeId, ReadError,
    ReadMode, SnapshotMeta, Term,
};
use raftkv_sim::harness::{Cluster, ELECTION_MAX_MS, HEARTBEAT_MS};

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

/// A forwarded read is answered only by the leader it was sent to, in the term it
/// was sent in; a forged or stale answer from another node is ignored.
#[test]
fn read_index_answers_come_only_from_the_leader_asked() {
    let mut cluster = Cluster::new(3);
    cluster.elect(1);
    let term = cluster.core(2).current_term();
    cluster.read(2, 7, ReadMode::Linearizable).unwrap();
    let forged = Message::ReadIndexResponse { term, read_id: 7, index: Some(LogIndex(1)) };
    cluster.in_flight.push_front((NodeId(3), NodeId(2), forged));
    cluster.deliver_one();
    assert!(!cluster.node(2).reads.contains_key(&7), "accepted a read index from a node that is not the leader");
    let stale = Message::ReadIndexResponse { term: Term(term.0 - 1), read_id: 7, index: Some(LogIndex(1)) };
    cluster.in_flight.push_front((NodeId(1), NodeId(2), stale));
    cluster.deliver_one();
    assert!(!cluster.node(2).reads.contains_key(&7), "accepted a read index from an older term");
    cluster.run_for(30);
    assert_eq!(cluster.node(2).reads.get(&7), Some(&Ok(cluster.core(1).commit_index())));
}

/// A leader refuses a read forwarded in another term, and the follower's read
/// fails at once instead of waiting forever.
#[test]
fn read_forwarded_in_an_old_term_is_refused_not_lost() {
    let mut cluster = Cluster::new(3);
    cluster.elect(1);
    let term = cluster.core(1).current_term();
    let request = Message::ReadIndexRequest { term: Term(term.0 - 1), read_id: 9 };
    cluster.in_flight.push_back((NodeId(2), NodeId(1), request));
    cluster.deliver_one();
    let answers = cluster.take_messages(|_, to, m| to.0 == 2 && matches!(m, Message::ReadIndexResponse { .. }));
    assert_eq!(answers.len(), 1);
    assert!(matches!(answers[0].2, Message::ReadIndexResponse { index: None, read_id: 9, .. }));
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

/// Chunks of one snapshot id from two leaders (a deposed one and its successor)
/// must not be stitched together: the second stream starts over at offset 0.
#[test]
fn snapshot_chunks_from_two_leaders_never_mix() {
    let mut cluster = Cluster::new(3);
    let meta = SnapshotMeta {
        last_log_id: LogId::new(Term(2), LogIndex(50)),
        config: Configuration::new([NodeId(1), NodeId(2), NodeId(3)]),
    };
    let chunk = |term, offset| InstallSnapshot {
        term: Term(term),
        meta: meta.clone(),
        offset,
        data: Bytes::from_static(&[7; 16]),
        done: false,
    };
    cluster.in_flight.push_back((NodeId(1), NodeId(3), Message::InstallSnapshot(chunk(2, 0))));
    cluster.in_flight.push_back((NodeId(2), NodeId(3), Message::InstallSnapshot(chunk(3, 16))));
    cluster.deliver_one();
    cluster.deliver_one();
    let replies = cluster.take_messages(|_, _, m| matches!(m, Message::InstallSnapshotResponse(_)));
    let offsets: Vec<(u64, u64)> = replies
        .iter()
        .map(|(_, to, m)| match m {
            Message::InstallSnapshotResponse(r) => (to.0, r.next_offset),
            _ => unreachable!(),
        })
        .collect();
    assert_eq!(offsets, vec![(1, 16), (2, 0)], "node 3 accepted a chunk from another leader's stream");
}

/// Duplicated acknowledgements of snapshot chunks must not make the leader send
/// each chunk again.
#[test]
fn duplicate_snapshot_acknowledgements_do_not_resend_chunks() {
    let mut cluster = Cluster::new(3);
    cluster.elect(1);
    cluster.crash(3);
    for i in 0..10 {
        cluster.propose(1, &format!("c{i}")).unwrap();
    }
    cluster.stabilize();
    cluster.snapshot(1, 0);
    cluster.start(3);
    let size = cluster.node(1).snapshot.as_ref().map(|(_, data)| data.len()).unwrap();
    let chunks_needed = size.div_ceil(16);

    let now = cluster.now + ELECTION_MAX_MS;
    cluster.now = now;
    cluster.with_core(1, |core| core.handle_tick(now));
    let mut chunks_sent = 0;
    while let Some((from, to, message)) = cluster.in_flight.pop_front() {
        if matches!(message, Message::InstallSnapshot(_)) {
            chunks_sent += 1;
        }
        let copies = if matches!(message, Message::InstallSnapshotResponse(_)) { 2 } else { 1 };
        for _ in 0..copies {
            let message = message.clone();
            cluster.with_core(to.0, |core| core.handle_message(now, from, message));
        }
    }
    assert_eq!(cluster.node(3).commands(), cluster.node(1).commands());
    assert_eq!(chunks_sent, chunks_needed, "{chunks_sent} chunks sent for a snapshot of {chunks_needed}");
}

/// Terms and indexes near `u64::MAX` are dropped, not added to: no overflow, no
/// term jump that would make the node useless.
#[test]
fn messages_with_absurd_numbers_are_dropped() {
    let mut cluster = Cluster::new(3);
    cluster.elect(1);
    let term = cluster.core(2).current_term();
    let last = cluster.core(2).last_log_id();
    let hostile = [
        Message::AppendEntries(AppendEntries {
            term: Term(u64::MAX),
            prev_log_id: last,
            entries: Vec::new(),
            leader_commit: LogIndex(0),
            round: 0,
        }),
        Message::AppendEntries(AppendEntries {
            term,
            prev_log_id: LogId::new(term, LogIndex(u64::MAX - 1)),
            entries: vec![
                Entry { term, index: LogIndex(u64::MAX), payload: EntryPayload::Noop },
                Entry { term, index: LogIndex(0), payload: EntryPayload::Noop },
            ],
            leader_commit: LogIndex(u64::MAX),
            round: 0,
        }),
        Message::InstallSnapshot(InstallSnapshot {
            term,
            meta: SnapshotMeta { last_log_id: LogId::new(term, LogIndex(u64::MAX)), config: Configuration::default() },
            offset: u64::MAX,
            data: Bytes::from_static(b"x"),
            done: true,
        }),
        Message::TimeoutNow { term: Term(u64::MAX) },
    ];
    for message in hostile {
        cluster.in_flight.push_back((NodeId(1), NodeId(2), message));
        cluster.deliver_one();
    }
    assert_eq!(cluster.core(2).current_term(), term);
    assert_eq!(cluster.core(2).last_log_id(), last);
    // The node still works.
    cluster.propose(1, "after").unwrap();
    cluster.run_for(30);
    assert_eq!(cluster.core(2).last_log_id(), cluster.core(1).last_log_id());
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

/// A follower that moved to the leader's new term answers a request of the
/// leader's previous term (delayed, say, while the leader restarted and won
/// again) with StaleTerm, in the new term and with the old request's round.
/// That answer must not confirm the new term's round of the same number: it
/// would hand out a lease, or answer a ReadIndex, that no quorum confirmed.
#[test]
fn a_stale_term_answer_never_confirms_a_round() {
    let mut cluster = Cluster::new(3);
    cluster.elect(1);
    cluster.run_for(50);
    // Nobody answers node 1 from now on, except the forged stale answer.
    for id in [2, 3] {
        cluster.blocked.insert((NodeId(id), NodeId(1)));
    }
    cluster.run_for(ELECTION_MAX_MS / 2);
    assert!(!cluster.core(1).lease_valid(), "no round was confirmed since answers stopped");
    cluster.read(1, 7, ReadMode::Linearizable).unwrap();
    let term = cluster.core(1).current_term();
    // The round the read waits for is the latest one begun: answer it with StaleTerm.
    let round = cluster
        .take_messages(|from, to, m| from.0 == 1 && to.0 == 2 && matches!(m, Message::AppendEntries(_)))
        .iter()
        .filter_map(|(_, _, m)| match m {
            Message::AppendEntries(append) => Some(append.round),
            _ => None,
        })
        .max()
        .expect("node 1 sent a heartbeat round for the read");
    let stale = raftkv_core::AppendEntriesResponse { term, round, result: raftkv_core::AppendResult::StaleTerm };
    let now = cluster.now;
    cluster.with_core(1, |core| core.handle_message(now, NodeId(2), Message::AppendEntriesResponse(stale)));
    assert!(!cluster.node(1).reads.contains_key(&7), "a StaleTerm answer confirmed a read");
    assert!(!cluster.core(1).lease_valid(), "a StaleTerm answer renewed the lease");
}
