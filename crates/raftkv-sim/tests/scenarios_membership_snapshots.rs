//! Scenario tests for historical Raft bugs around membership changes, quorums
//! and snapshots in real Raft implementations, driven by hand through `raftkv_sim::harness::Cluster`. Each test names its bug
//! and the issue it comes from.
//!
//! Where the harness has no shortcut for a starting state (a joint founding
//! configuration, logs that already diverge), the test crafts each node's
//! `DurableState` and adds the node with `Cluster::add_node`, exactly as a
//! runtime would restart it from disk.

use std::collections::{BTreeSet, VecDeque};

use bytes::Bytes;
use raftkv_core::{
    Configuration, DurableState, Entry, EntryPayload, HardState, LogId, LogIndex, MembershipChange, Message, NodeId,
    ReadMode, Role, Term,
};
use raftkv_sim::harness::{Cluster, ELECTION_MAX_MS, HEARTBEAT_MS};

// ---- Helpers -------------------------------------------------------------------

fn ids(list: &[u64]) -> BTreeSet<NodeId> {
    list.iter().map(|id| NodeId(*id)).collect()
}

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

/// Applied commands of node `id`, as text, for readable assertion failures.
fn applied(cluster: &Cluster, id: u64) -> Vec<String> {
    cluster.node(id).commands().iter().map(|c| String::from_utf8_lossy(c).into_owned()).collect()
}

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

type Envelope = (NodeId, NodeId, Message);

/// Like `Cluster::stabilize`, but returns a copy of every delivered (not blocked)
/// message for which `keep` holds, so a test can check what was said.
fn stabilize_recording(
    cluster: &mut Cluster,
    keep: &mut impl FnMut(NodeId, NodeId, &Message) -> bool,
) -> Vec<Envelope> {
    let mut seen = Vec::new();
    let mut budget = 1_000_000;
    while let Some((from, to, message)) = cluster.in_flight.front().cloned() {
        if !cluster.blocked.contains(&(from, to)) && keep(from, to, &message) {
            seen.push((from, to, message));
        }
        cluster.deliver_one();
        budget -= 1;
        assert!(budget > 0, "messages never stopped flowing");
    }
    seen
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

/// Removes every block between `a` and `b`, in both directions.
fn connect(cluster: &mut Cluster, a: u64, b: u64) {
    cluster.blocked.remove(&(NodeId(a), NodeId(b)));
    cluster.blocked.remove(&(NodeId(b), NodeId(a)));
}

fn match_index(cluster: &Cluster, leader: u64, peer: u64) -> LogIndex {
    cluster.core(leader).peer_progress(NodeId(peer)).map_or(LogIndex::ZERO, |(matched, _)| matched)
}

/// Selects the (pre-)vote answers sent by node `id`.
fn vote_responses_from(id: u64) -> impl FnMut(NodeId, NodeId, &Message) -> bool {
    move |from, _, message| from == NodeId(id) && matches!(message, Message::RequestVoteResponse(_))
}

fn is_snapshot_chunk_to(to: NodeId, target: u64, message: &Message) -> bool {
    to == NodeId(target) && matches!(message, Message::InstallSnapshot(_))
}

// ---- Bug 2: PreVote deadlock in a joint configuration ---------------------------------

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

// ---- Bug 4: a removed node rejoining as a learner -------------------------------------

/// Bug 4 (hashicorp/raft #524, fixed in #526): a voter removed while it was
/// partitioned keeps campaigning; without PreVote its term grows, and when it is
/// re-added as a nonvoter its higher term deposes the leader. With PreVote its
/// term must not grow, and healing plus re-adding it as a learner must leave the
/// leader and its term untouched while the node catches up.
#[test]
fn removed_partitioned_node_readded_as_learner_does_not_disturb_the_leader() {
    let mut cluster = Cluster::new(4);
    cluster.elect(1);
    cluster.propose(1, "before").unwrap();
    cluster.stabilize();
    let term = cluster.core(1).current_term();

    cluster.isolate(4);
    let removal =
        cluster.with_core(1, |core| core.propose_membership(MembershipChange::RemoveServer(NodeId(4)))).unwrap();
    cluster.stabilize();
    assert!(cluster.core(1).commit_index() >= removal, "{{1,2,3}} commits the removal without node 4");
    cluster.propose(1, "while-removed").unwrap();

    // Node 4 still believes it is a voter and keeps trying to get elected.
    let term_of_4 = cluster.core(4).current_term();
    cluster.run_for(10 * ELECTION_MAX_MS);
    assert!(cluster.core(4).membership().is_voter(NodeId(4)), "node 4 never heard of its removal");
    assert_eq!(cluster.core(4).current_term(), term_of_4, "PreVote must keep the partitioned node's term");

    // Healed but not a member: its pre-votes reach the cluster and change nothing.
    cluster.heal();
    cluster.run_for(5 * ELECTION_MAX_MS);
    assert_eq!((cluster.leader(), cluster.core(1).current_term()), (Some(1), term));

    let readd = cluster.with_core(1, |core| core.propose_membership(MembershipChange::AddLearner(NodeId(4)))).unwrap();
    cluster.run_for(5 * ELECTION_MAX_MS);
    cluster.propose(1, "after-readd").unwrap();
    cluster.run_for(5 * ELECTION_MAX_MS);

    assert_eq!((cluster.leader(), cluster.core(1).current_term()), (Some(1), term), "the leader was disturbed");
    assert_eq!(cluster.core(4).current_term(), term);
    assert!(cluster.core(4).commit_index() >= readd);
    assert_eq!(cluster.core(4).role(), Role::Learner);
    assert_eq!(applied(&cluster, 4), applied(&cluster, 1));
    assert_eq!(applied(&cluster, 1), ["before", "while-removed", "after-readd"]);
}

// ---- Bug 13: snapshots over divergent tails, and membership across compactions ---------

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

// ---- Bug 14: quorum counting -------------------------------------------------------

/// Voters {1,2,3} and learners {4,5}, led by node 3, which proposes the joint
/// change to C(old = {1,2,3}, new = {3,4,5}) while the nodes in `blocked` are
/// cut off. Returns the cluster and the index of the joint entry.
fn joint_change_with_blocked(blocked: &[u64]) -> (Cluster, LogIndex) {
    let mut cluster = Cluster::with_members(&[1, 2, 3], &[4, 5], |_| {});
    // Node 3 belongs to both halves, so it stays leader through the change.
    cluster.elect(3);
    cluster.propose(3, "before").unwrap();
    cluster.stabilize();
    for id in blocked {
        cluster.isolate(*id);
    }
    let change = MembershipChange::Joint { voters: ids(&[3, 4, 5]), learners: BTreeSet::new() };
    let joint = cluster.with_core(3, |core| core.propose_membership(change)).unwrap();
    // The joint configuration takes effect as soon as it is appended.
    let membership = cluster.core(3).membership();
    assert_eq!((&membership.voters, &membership.voters_outgoing), (&ids(&[3, 4, 5]), &ids(&[1, 2, 3])));
    cluster.stabilize();
    (cluster, joint)
}

/// Bug 14 (openraft d882e743, a10d9906; thesis §4.3): in C(old = {1,2,3},
/// new = {3,4,5}) an entry needs a majority of each half. With {4,5} cut off the
/// old half acknowledges everything and still nothing commits; with {1,2} cut
/// off the same holds for the new half. A linearizable read is not confirmed
/// either. Once healed, both commit and the read succeeds.
#[test]
fn joint_entry_does_not_commit_with_a_majority_of_only_one_half() {
    for blocked in [[4, 5], [1, 2]] {
        let (mut cluster, joint) = joint_change_with_blocked(&blocked);
        let during = cluster.propose(3, "during").unwrap();
        cluster.stabilize();
        for peer in [1, 2, 4, 5].into_iter().filter(|p| !blocked.contains(p)) {
            assert!(
                match_index(&cluster, 3, peer) >= during,
                "node {peer} should have acknowledged (blocked {blocked:?})"
            );
        }
        let commit = cluster.core(3).commit_index();
        assert!(commit < joint, "joint entry {joint} committed at {commit} with {blocked:?} cut off");

        cluster.read(3, 1, ReadMode::Linearizable).unwrap();
        cluster.run_for(3 * HEARTBEAT_MS);
        assert!(!matches!(cluster.node(3).reads.get(&1), Some(Ok(_))), "read confirmed with {blocked:?} cut off");
        assert!(cluster.core(3).commit_index() < joint);

        cluster.heal();
        cluster.run_for(5 * HEARTBEAT_MS);
        assert!(cluster.core(3).commit_index() > during, "nothing committed after healing (blocked {blocked:?})");
        assert_eq!(cluster.core(3).membership(), &Configuration::new(ids(&[3, 4, 5])));
        assert!(matches!(cluster.node(3).reads.get(&1), Some(Ok(_))), "read not confirmed after healing");
        cluster.assert_same_state(&[3, 4, 5]);
    }
}

/// Bug 14 (openraft d882e743: a node being added through a joint config was not
/// counted): with nodes 1 and 5 cut off, {2,3} is a majority of the old half and
/// {3,4} of the new half, where node 4 is a new member. The joint entry must
/// commit, and so must C(new) after it.
#[test]
fn joint_entry_commits_with_a_majority_of_each_half_counting_new_members() {
    let (mut cluster, joint) = joint_change_with_blocked(&[1, 5]);
    assert!(cluster.core(3).commit_index() >= joint, "joint entry not committed by {{2,3}} + {{3,4}}");
    cluster.run_for(3 * HEARTBEAT_MS);
    let leader = cluster.core(3);
    assert_eq!(leader.membership(), &Configuration::new(ids(&[3, 4, 5])));
    assert_eq!(leader.commit_index(), leader.last_log_id().index, "C(new) not committed by {{3,4}}");
    cluster.propose(3, "after").unwrap();
    cluster.run_for(3 * HEARTBEAT_MS);
    cluster.assert_same_state(&[3, 4]);
}

/// Bug 14 (learners never count: quorum miscounts): with voters
/// {1,2,3} and learners {4,5}, cut off voters 2 and 3. The leader and both
/// learners hold a new entry, three of five members, but only one of three
/// voters: it must not commit. Healing commits it.
#[test]
fn learner_acknowledgements_do_not_commit_without_a_voter_majority() {
    let mut cluster = Cluster::with_members(&[1, 2, 3], &[4, 5], |_| {});
    cluster.elect(1);
    cluster.propose(1, "before").unwrap();
    cluster.stabilize();
    cluster.isolate(2);
    cluster.isolate(3);
    let index = cluster.propose(1, "x").unwrap();
    cluster.stabilize();
    for learner in [4, 5] {
        assert!(match_index(&cluster, 1, learner) >= index, "learner {learner} should have acknowledged");
    }
    assert!(cluster.core(1).commit_index() < index, "learners' acknowledgements committed entry {index}");

    // Healing lets voters 2 and 3 acknowledge; a few heartbeats carry the commit to everyone.
    cluster.heal();
    cluster.run_for(5 * HEARTBEAT_MS);
    assert!(cluster.core(1).commit_index() >= index);
    cluster.assert_same_state(&[1, 2, 3, 4, 5]);
}

/// Bug 14 (openraft 4d58a51e: a learner blocked replication): an unreachable
/// learner must not stop commits, CheckQuorum or reads. The leader keeps its
/// term for many election timeouts and serves a linearizable read.
#[test]
fn unreachable_learner_does_not_block_commits_or_reads() {
    let mut cluster = Cluster::with_members(&[1, 2, 3], &[4], |_| {});
    cluster.elect(1);
    let term = cluster.core(1).current_term();
    cluster.isolate(4);
    let index = cluster.propose(1, "x").unwrap();
    cluster.stabilize();
    assert!(cluster.core(1).commit_index() >= index, "an isolated learner blocked a commit");

    cluster.run_for(5 * ELECTION_MAX_MS);
    assert_eq!((cluster.leader(), cluster.core(1).current_term()), (Some(1), term));
    cluster.read(1, 1, ReadMode::Linearizable).unwrap();
    cluster.run_for(2 * HEARTBEAT_MS);
    assert!(matches!(cluster.node(1).reads.get(&1), Some(Ok(i)) if *i >= index));
    cluster.assert_same_state(&[1, 2, 3]);
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

// ---- Bug 17: InstallSnapshot streams received close together --------------------------

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

// ---- Bug 18: async-storage ABA and the unaware promoted learner --------------------

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

/// Bug 18b (etcd-io/raft testdata campaign_learner_must_vote.txt): voters {1,2}
/// promote learner 3; the promotion commits on {1,2} but never reaches node 3,
/// which still believes it is a learner. Node 1 crashes. Node 2 needs node 3's
/// vote (2 of {1,2,3}), and node 3 must grant it: a vote request is proof the
/// candidate's configuration counts it, and the candidate's log is newer.
#[test]
fn learner_unaware_of_its_promotion_grants_its_vote() {
    let mut cluster = Cluster::with_members(&[1, 2], &[3], |_| {});
    cluster.elect(1);
    cluster.propose(1, "before").unwrap();
    cluster.run_for(2 * HEARTBEAT_MS);

    cluster.blocked.insert((NodeId(1), NodeId(3)));
    let promotion =
        cluster.with_core(1, |core| core.propose_membership(MembershipChange::AddVoter(NodeId(3)))).unwrap();
    cluster.stabilize();
    assert!(cluster.core(1).commit_index() >= promotion, "{{1,2}} should commit the promotion");
    assert_eq!(cluster.core(3).role(), Role::Learner, "node 3 must not know about its promotion");
    assert!(cluster.core(3).last_log_id().index < promotion);

    cluster.crash(1);
    cluster.heal();
    cluster.campaign(2);
    let answers = stabilize_recording(&mut cluster, &mut |from, _, m| {
        from == NodeId(3) && matches!(m, Message::RequestVoteResponse(_))
    });
    let granted = |pre_vote: bool| {
        answers
            .iter()
            .any(|(_, _, m)| matches!(m, Message::RequestVoteResponse(r) if r.granted && r.pre_vote == pre_vote))
    };
    assert!(granted(true) && granted(false), "the unaware learner refused its vote: {answers:?}");
    assert_eq!(cluster.leader(), Some(2));
    cluster.propose(2, "after").unwrap();
    cluster.run_for(3 * HEARTBEAT_MS);
    assert_eq!(cluster.core(3).role(), Role::Follower);
    cluster.assert_same_state(&[2, 3]);
}
