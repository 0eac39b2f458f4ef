//! Input a correct, current peer would not send, driven by hand through
//! `raftkv_sim::harness::Cluster`: absurd numbers, forged answers, requests
//! and answers of an older term, snapshot chunks of two leaders' streams,
//! duplicated acknowledgements. Each is dropped or answered without harm, and
//! never turned into a panic or a wrong answer.

use bytes::Bytes;
use raftkv_core::{
    AppendEntries, Configuration, Entry, EntryPayload, InstallSnapshot, LogId, LogIndex, Message, NodeId, ReadMode,
    RequestVote, SnapshotMeta, Term,
};
use raftkv_sim::harness::{Cluster, ELECTION_MAX_MS};

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
    // A round is already in flight (unanswered), so the read waits for the
    // next one, begun at the next heartbeat: tick node 1 alone until then.
    // The round the read waits for is that one: answer it with StaleTerm.
    let mut rounds = Vec::new();
    for _ in 0..ELECTION_MAX_MS {
        cluster.now += 1;
        let now = cluster.now;
        cluster.with_core(1, |core| core.handle_tick(now));
        rounds = cluster
            .take_messages(|from, to, m| from.0 == 1 && to.0 == 2 && matches!(m, Message::AppendEntries(_)))
            .into_iter()
            .filter_map(|(_, _, m)| match m {
                Message::AppendEntries(append) => Some(append.round),
                _ => None,
            })
            .collect();
        if !rounds.is_empty() {
            break;
        }
    }
    assert!(!cluster.node(1).reads.contains_key(&7), "the read was answered without a confirmed round");
    let round = rounds.into_iter().max().expect("node 1 sent a heartbeat round for the read");
    let stale = raftkv_core::AppendEntriesResponse { term, round, result: raftkv_core::AppendResult::StaleTerm };
    let now = cluster.now;
    cluster.with_core(1, |core| core.handle_message(now, NodeId(2), Message::AppendEntriesResponse(stale)));
    assert!(!cluster.node(1).reads.contains_key(&7), "a StaleTerm answer confirmed a read");
    assert!(!cluster.core(1).lease_valid(), "a StaleTerm answer renewed the lease");
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

/// A vote request flagged as a leadership transfer skips leader stickiness
/// only when a voter sends it (a leader hands leadership only to voters): from
/// a server outside the configuration it cannot depose a healthy leader.
#[test]
fn a_transfer_vote_from_outside_the_configuration_does_not_depose_the_leader() {
    let mut cluster = Cluster::new(3);
    cluster.elect(1);
    let term = cluster.core(1).current_term();
    let forged = |term: Term| {
        Message::RequestVote(RequestVote {
            term,
            last_log_id: LogId::new(Term(u64::from(u32::MAX)), LogIndex(1 << 40)),
            pre_vote: false,
            leadership_transfer: true,
        })
    };
    for to in [1, 2] {
        cluster.in_flight.push_back((NodeId(99), NodeId(to), forged(Term(term.0 + 1000))));
        cluster.deliver_one();
    }
    assert_eq!(cluster.leader(), Some(1));
    assert_eq!((cluster.core(1).current_term(), cluster.core(2).current_term()), (term, term));
    cluster.propose(1, "after").unwrap();
    cluster.run_for(30);
    assert_eq!(cluster.core(2).last_log_id(), cluster.core(1).last_log_id());
}

/// A configuration whose staging mark sits on a voter (which no correct
/// leader writes: a staging mark lives on learners only) is dropped with the
/// message that carries it, in an append or a snapshot, and changes nothing.
#[test]
fn a_configuration_that_marks_a_voter_staging_is_dropped() {
    let mut cluster = Cluster::new(3);
    cluster.elect(1);
    let term = cluster.core(2).current_term();
    let last = cluster.core(2).last_log_id();
    let mut marked = Configuration::new([NodeId(1), NodeId(2), NodeId(3)]);
    marked.staging.insert(NodeId(3));
    assert!(!marked.staging_is_well_formed());
    let hostile = [
        Message::AppendEntries(AppendEntries {
            term,
            prev_log_id: last,
            entries: vec![Entry { term, index: last.index.next(), payload: EntryPayload::Config(marked.clone()) }],
            leader_commit: LogIndex(0),
            round: 0,
        }),
        Message::InstallSnapshot(InstallSnapshot {
            term,
            meta: SnapshotMeta { last_log_id: LogId::new(term, LogIndex(last.index.0 + 10)), config: marked },
            offset: 0,
            data: Bytes::from_static(b"x"),
            done: true,
        }),
    ];
    for message in hostile {
        cluster.in_flight.push_back((NodeId(1), NodeId(2), message));
        cluster.deliver_one();
    }
    assert_eq!(cluster.core(2).last_log_id(), last);
    assert!(cluster.core(2).membership().staging.is_empty());
    cluster.propose(1, "after").unwrap();
    cluster.run_for(30);
    assert_eq!(cluster.core(2).last_log_id(), cluster.core(1).last_log_id());
}
