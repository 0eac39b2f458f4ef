//! Membership changes, driven by hand through `raftkv_sim::harness::Cluster`:
//! one change at a time after the term's first commit, joint consensus needing
//! a majority of each half, learners that never count or block, a promoted
//! learner that does not know it yet, a removed node that comes back. A test
//! of a historical bug of another Raft implementation names the bug and the
//! issue it comes from.

mod common;

use std::collections::BTreeSet;

use raftkv_core::{
    Configuration, CoreConfig, DurableState, LogIndex, MembershipChange, Message, NodeId, ReadMode, Role,
};
use raftkv_sim::harness::{Cluster, ELECTION_MAX_MS, HEARTBEAT_MS};

use common::{applied, ids, match_index, stabilize_recording};

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

/// A change guarded by the index of the configuration its caller read is
/// refused, with nothing appended, once the configuration has moved on; a
/// staging learner never counts in a quorum.
#[test]
fn a_guarded_change_is_refused_once_the_configuration_moved_and_staging_never_counts() {
    let mut cluster = Cluster::with_members(&[1, 2, 3], &[], |_| {});
    cluster.elect(1);
    cluster.propose(1, "first").unwrap();
    cluster.stabilize();
    let read = cluster.core(1).membership_index();
    let staged = cluster
        .with_core(1, |core| core.propose_membership_at(MembershipChange::AddStaging(NodeId(4)), Some(read)))
        .unwrap();
    cluster.stabilize();
    assert!(cluster.core(1).membership().is_staging(NodeId(4)));
    let last = cluster.core(1).last_log_id();
    let stale =
        cluster.with_core(1, |core| core.propose_membership_at(MembershipChange::AddLearner(NodeId(5)), Some(read)));
    assert_eq!(stale, Err(raftkv_core::ProposeError::ConfigChanged { expected: read, latest: staged }));
    assert_eq!(cluster.core(1).last_log_id(), last, "a refused change appends nothing");

    // With two of the three voters cut off, the staging learner does not make
    // a quorum: nothing commits.
    cluster.isolate(2);
    cluster.isolate(3);
    let commit = cluster.core(1).commit_index();
    let _ = cluster.propose(1, "without a quorum");
    cluster.run_for(3 * ELECTION_MAX_MS);
    assert_eq!(cluster.core(1).commit_index(), commit);
}

const STABLE_MS: u64 = 300;
const MAX_LAG: u64 = 4;

fn promotion_rule(config: &mut CoreConfig) {
    config.promotion_stable_ms = STABLE_MS;
    config.promotion_max_lag = MAX_LAG;
}

/// Voters {1,2,3} led by node 1, with an empty node 4 that node 1 has just
/// marked staging (not yet delivered).
fn staging_node_4() -> Cluster {
    let mut cluster = Cluster::with_members(&[1, 2, 3], &[], promotion_rule);
    cluster.elect(1);
    for i in 0..20 {
        cluster.propose(1, &format!("before-{i}")).unwrap();
    }
    cluster.stabilize();
    cluster.add_node(4, DurableState::default(), promotion_rule);
    cluster.with_core(1, |core| core.propose_membership(MembershipChange::AddStaging(NodeId(4)))).unwrap();
    cluster
}

fn staging_peer(cluster: &Cluster, leader: u64, id: u64) -> raftkv_core::PeerProgress {
    let peers = cluster.core(leader).peers();
    peers.into_iter().find(|p| p.id == NodeId(id)).expect("the leader tracks the peer")
}

/// Thesis §4.2.1: the leader promotes a staging learner only once it has
/// been caught up for the whole stable period, then the promotion commits
/// and the new voter counts.
#[test]
fn a_staging_learner_is_promoted_once_caught_up_for_the_stable_period() {
    let mut cluster = staging_node_4();
    let mut since = None;
    for _ in 0..10 * STABLE_MS {
        cluster.run_for(1);
        if since.is_none() {
            since = staging_peer(&cluster, 1, 4).caught_up_since;
        }
        if cluster.core(1).membership().is_voter(NodeId(4)) {
            break;
        }
        assert!(cluster.core(1).membership().is_staging(NodeId(4)));
    }
    let since = since.expect("node 4 caught up");
    let promoted_at = cluster.now;
    assert!(cluster.core(1).membership().is_voter(NodeId(4)), "never promoted");
    assert!(promoted_at >= since + STABLE_MS, "promoted at {promoted_at}, caught up since {since}");
    assert!(promoted_at <= since + STABLE_MS + HEARTBEAT_MS, "late: {promoted_at}, caught up since {since}");
    cluster.run_for(3 * HEARTBEAT_MS);
    let membership = cluster.core(4).membership();
    assert!(membership.is_voter(NodeId(4)) && membership.staging.is_empty(), "{membership}");
    // Node 4 now counts: with 2 and 3 cut off, {1, 4} is not a majority of
    // four, but with only 3 cut off {1, 2, 4} is.
    cluster.isolate(3);
    let index = cluster.propose(1, "after").unwrap();
    cluster.run_for(3 * HEARTBEAT_MS);
    assert!(cluster.core(1).commit_index() >= index);
    assert_eq!(applied(&cluster, 4), applied(&cluster, 1));
}

/// A staging learner that is silent, or that answers but stays more than
/// `promotion_max_lag` entries behind, is never promoted.
#[test]
fn a_silent_or_lagging_staging_learner_is_never_promoted() {
    let mut cluster = staging_node_4();
    // Caught up, then silent while nothing is written: its log stays close,
    // its silence keeps it a learner.
    cluster.run_for(STABLE_MS / 2);
    assert!(staging_peer(&cluster, 1, 4).caught_up_since.is_some());
    cluster.isolate(4);
    cluster.run_for(5 * STABLE_MS);
    let last = cluster.core(1).last_log_id().index;
    assert!(staging_peer(&cluster, 1, 4).match_index.0 + MAX_LAG >= last.0);
    assert!(cluster.core(1).membership().is_staging(NodeId(4)), "a silent learner was promoted");
    assert_eq!(staging_peer(&cluster, 1, 4).caught_up_since, None);

    // Heard from, but its disk stops finishing writes: it answers without
    // catching up.
    cluster.heal();
    cluster.run_for(STABLE_MS / 2);
    assert!(staging_peer(&cluster, 1, 4).caught_up_since.is_some());
    cluster.node_mut(4).hold_persists = true;
    for i in 0..10 {
        cluster.propose(1, &format!("more-{i}")).unwrap();
    }
    cluster.run_for(5 * STABLE_MS);
    let peer = staging_peer(&cluster, 1, 4);
    let last = cluster.core(1).last_log_id().index;
    assert!(peer.last_contact_at.is_some_and(|at| at + ELECTION_MAX_MS > cluster.now), "{peer:?}");
    assert!(peer.match_index.0 + MAX_LAG < last.0, "{peer:?}, last {last}");
    assert!(cluster.core(1).membership().is_staging(NodeId(4)), "a lagging learner was promoted");

    cluster.release_persists(4);
    cluster.run_for(2 * STABLE_MS);
    assert!(cluster.core(1).membership().is_voter(NodeId(4)), "caught up at last, it should be promoted");
}

/// The promotion is one membership change like any other: while another is
/// uncommitted the leader waits, and proposes the promotion once it commits.
#[test]
fn a_promotion_waits_for_a_pending_change() {
    let mut cluster = staging_node_4();
    cluster.run_for(3 * HEARTBEAT_MS);
    // Nodes 2 and 3 answer but do not persist: the next change stays uncommitted.
    cluster.node_mut(2).hold_persists = true;
    cluster.node_mut(3).hold_persists = true;
    let pending =
        cluster.with_core(1, |core| core.propose_membership(MembershipChange::AddLearner(NodeId(5)))).unwrap();
    cluster.run_for(3 * STABLE_MS);
    assert!(cluster.core(1).is_leader());
    assert!(cluster.core(1).commit_index() < pending);
    assert!(cluster.core(1).membership().is_staging(NodeId(4)), "promoted past an uncommitted change");
    assert!(staging_peer(&cluster, 1, 4).caught_up_since.is_some_and(|at| at + STABLE_MS <= cluster.now));

    cluster.release_persists(2);
    cluster.release_persists(3);
    cluster.run_for(3 * HEARTBEAT_MS);
    assert!(cluster.core(1).commit_index() >= pending);
    assert!(cluster.core(1).membership().is_voter(NodeId(4)), "promoted once the change committed");
}

/// The staging mark is in the replicated configuration: when the leader dies
/// before the promotion, the next leader promotes the learner after a stable
/// period of its own observations.
#[test]
fn a_new_leader_finishes_the_promotion() {
    let mut cluster = staging_node_4();
    cluster.run_for(STABLE_MS / 2);
    assert!(staging_peer(&cluster, 1, 4).caught_up_since.is_some());
    cluster.crash(1);
    let leader = cluster.wait_for_leader(10 * ELECTION_MAX_MS);
    let elected_at = cluster.now;
    assert!(cluster.core(leader).membership().is_staging(NodeId(4)));
    for _ in 0..10 * STABLE_MS {
        if cluster.core(leader).membership().is_voter(NodeId(4)) {
            break;
        }
        cluster.run_for(1);
    }
    assert!(cluster.core(leader).membership().is_voter(NodeId(4)), "the new leader never promoted node 4");
    assert!(cluster.now >= elected_at + STABLE_MS, "the stable period restarts with the leader");
}
