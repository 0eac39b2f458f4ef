//! Clusters of `Raft` nodes in one process over the in-memory transport:
//! replication, forwarding errors, failover, reads, membership changes and
//! restarts from durable stores. Waits are bounded; nothing asserts on timing.

mod common;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use common::*;
use raftkv_raft::{
    Config, Configuration, LogIndex, MembershipChange, NodeId, Observation, Observer, ProposeError, Raft, RaftError,
    ReadMode,
};
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_nodes_replicate_and_followers_name_the_leader() {
    let cluster = Cluster::bootstrap(3, false).await;
    let leader = cluster.leader_among(&[1, 2, 3]).await;
    for i in 0..100 {
        let (index, response) = cluster.raft(leader).apply(command(i), TIMEOUT).await.unwrap();
        assert_eq!(response, Bytes::from(index.0.to_string()), "the state machine's response comes back");
    }
    let expected: Vec<Bytes> = (0..100).map(command).collect();
    for id in 1..=3 {
        assert_eq!(cluster.wait_applied(id, 100).await, expected, "node {id}");
    }
    let follower = (1..=3).find(|id| *id != leader).unwrap();
    match cluster.raft(follower).apply(command(0), TIMEOUT).await {
        Err(RaftError::NotLeader { leader: Some(named) }) => assert_eq!(named, NodeId(leader)),
        other => panic!("apply on a follower: {other:?}"),
    }
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_proposals_all_apply_once_in_one_order() {
    let cluster = Cluster::bootstrap(3, false).await;
    let leader = cluster.leader_among(&[1, 2, 3]).await;
    let raft = cluster.raft(leader).clone();
    let tasks: Vec<_> = (0..64)
        .map(|client| {
            let raft = raft.clone();
            tokio::spawn(async move {
                for i in 0..20 {
                    raft.apply(command(client * 1000 + i), TIMEOUT).await.unwrap();
                }
            })
        })
        .collect();
    for task in tasks {
        task.await.unwrap();
    }
    let on_leader = cluster.wait_applied(leader, 64 * 20).await;
    assert_eq!(on_leader.len(), 64 * 20);
    let mut distinct = on_leader.clone();
    distinct.sort();
    distinct.dedup();
    assert_eq!(distinct.len(), 64 * 20, "a command applied twice");
    for id in 1..=3 {
        assert_eq!(cluster.wait_applied(id, 64 * 20).await, on_leader, "node {id} applied another order");
    }
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn isolated_leader_is_replaced_and_catches_up_after_healing() {
    let cluster = Cluster::bootstrap(3, false).await;
    let old = cluster.leader_among(&[1, 2, 3]).await;
    cluster.raft(old).apply(command(1), TIMEOUT).await.unwrap();
    cluster.network.isolate(NodeId(old));
    // A write to the isolated leader cannot commit.
    let stranded = cluster.raft(old).apply(command(99), Duration::from_millis(500)).await;
    assert!(stranded.is_err(), "isolated leader committed a write: {stranded:?}");
    let others: Vec<u64> = (1..=3).filter(|id| *id != old).collect();
    let new = cluster.leader_among(&others).await;
    cluster.raft(new).apply(command(2), TIMEOUT).await.unwrap();
    cluster.network.heal();
    let expected = vec![command(1), command(2)];
    for id in 1..=3 {
        assert_eq!(cluster.wait_applied(id, 2).await, expected, "node {id}");
    }
    assert_eq!(cluster.leader_among(&[1, 2, 3]).await, new);
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reads_on_every_node_see_acknowledged_writes() {
    let cluster = Cluster::bootstrap(3, false).await;
    let leader = cluster.leader_among(&[1, 2, 3]).await;
    let (index, _) = cluster.raft(leader).apply(command(7), TIMEOUT).await.unwrap();
    for id in 1..=3 {
        for mode in [ReadMode::Linearizable, ReadMode::Lease] {
            let read = cluster.raft(id).read_index(mode, TIMEOUT).await.unwrap();
            assert!(read >= index, "node {id} {mode:?} read at {read}, before the write at {index}");
            assert!(cluster.raft(id).applied_index() >= read, "node {id} answered before applying {read}");
        }
    }
    cluster.raft(leader).verify_leader(TIMEOUT).await.unwrap();
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn five_nodes_survive_two_failures_but_not_three() {
    let mut cluster = Cluster::bootstrap(5, false).await;
    let leader = cluster.leader_among(&[1, 2, 3, 4, 5]).await;
    let followers: Vec<u64> = (1..=5).filter(|id| *id != leader).collect();
    cluster.stop(followers[0]).await;
    cluster.stop(followers[1]).await;
    cluster.raft(leader).apply(command(1), TIMEOUT).await.unwrap();
    cluster.stop(followers[2]).await;
    let result = cluster.raft(leader).apply(command(2), Duration::from_millis(1500)).await;
    assert!(result.is_err(), "committed without a quorum: {result:?}");
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_single_node_grows_to_three_by_adding_voters() {
    let mut cluster = Cluster::new(false);
    let stores = cluster.stores();
    Raft::bootstrap_cluster(stores.0.as_ref(), stores.1.as_ref(), [NodeId(1)]).unwrap();
    cluster.start(1, stores);
    cluster.leader_among(&[1]).await;
    cluster.raft(1).apply(command(1), TIMEOUT).await.unwrap();
    for id in [2, 3] {
        let stores = cluster.stores();
        assert!(!Raft::has_existing_state(stores.0.as_ref(), stores.1.as_ref()).unwrap());
        cluster.start(id, stores);
        cluster.raft(1).change_membership(MembershipChange::AddVoter(NodeId(id)), TIMEOUT).await.unwrap();
    }
    let status = cluster.raft(1).status().await.unwrap();
    assert_eq!(status.membership.voters.len(), 3);
    cluster.raft(1).apply(command(2), TIMEOUT).await.unwrap();
    for id in 1..=3 {
        assert_eq!(cluster.wait_applied(id, 2).await, vec![command(1), command(2)], "node {id}");
    }
    // Removing the leader: it steps down once the change commits, and still
    // answers that the change was made; the others go on.
    cluster.raft(1).remove_server(NodeId(1), None, TIMEOUT).await.expect("the removal committed");
    let leader = cluster.leader_among(&[2, 3]).await;
    cluster.raft(leader).apply(command(3), TIMEOUT).await.unwrap();
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn durable_cluster_restarts_with_every_acknowledged_write() {
    let mut cluster = Cluster::bootstrap(3, true).await;
    let leader = cluster.leader_among(&[1, 2, 3]).await;
    for i in 0..50 {
        cluster.raft(leader).apply(command(i), TIMEOUT).await.unwrap();
    }
    // Stop everyone, then start again from the same stores.
    let mut stopped = Vec::new();
    for id in 1..=3 {
        stopped.push((id, cluster.stop(id).await));
    }
    for (id, node) in stopped {
        assert!(Raft::has_existing_state(node.log.as_ref(), node.stable.as_ref()).unwrap());
        let Node { log, stable, .. } = node;
        // Reopen the files, as a restarted process would.
        drop((log, stable));
        let dir = cluster.dirs[(id - 1) as usize].path().to_path_buf();
        cluster.start(id, open_durable(&dir));
    }
    let leader = cluster.leader_among(&[1, 2, 3]).await;
    cluster.raft(leader).apply(command(50), TIMEOUT).await.unwrap();
    let expected: Vec<Bytes> = (0..=50).map(command).collect();
    for id in 1..=3 {
        assert_eq!(cluster.wait_applied(id, 51).await, expected, "node {id}");
    }
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leadership_transfer_moves_the_leader() {
    let cluster = Cluster::bootstrap(3, false).await;
    let leader = cluster.leader_among(&[1, 2, 3]).await;
    let target = (1..=3).find(|id| *id != leader).unwrap();
    cluster.raft(leader).apply(command(1), TIMEOUT).await.unwrap();
    cluster.raft(leader).leadership_transfer(NodeId(target)).await.unwrap();
    let mut watch = cluster.raft(target).leader_watch();
    tokio::time::timeout(TIMEOUT, watch.wait_for(|info| info.leader == Some(NodeId(target))))
        .await
        .expect("the transfer completes")
        .unwrap();
    cluster.raft(target).apply(command(2), TIMEOUT).await.unwrap();
    cluster.shutdown().await;
}

/// A transfer to a voter that cannot take over (cut off here) fails and says
/// so; the leader keeps leading and serving writes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leadership_transfer_to_an_unreachable_voter_fails() {
    let cluster = Cluster::bootstrap(3, false).await;
    let leader = cluster.leader_among(&[1, 2, 3]).await;
    let target = (1..=3).find(|id| *id != leader).unwrap();
    cluster.network.isolate(NodeId(target));
    let result = cluster.raft(leader).leadership_transfer(NodeId(target)).await;
    assert!(matches!(&result, Err(RaftError::TransferFailed { target: t, .. }) if *t == NodeId(target)), "{result:?}");
    assert_eq!(cluster.raft(leader).leader().leader, Some(NodeId(leader)));
    cluster.raft(leader).apply(command(1), TIMEOUT).await.expect("the leader serves again");
    cluster.network.heal();
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_fails_requests_instead_of_hanging() {
    let cluster = Cluster::bootstrap(1, false).await;
    cluster.leader_among(&[1]).await;
    let raft = cluster.raft(1).clone();
    raft.shutdown().await;
    assert!(matches!(raft.apply(command(1), TIMEOUT).await, Err(RaftError::Shutdown)));
    assert!(matches!(raft.linearizable_read(TIMEOUT).await, Err(RaftError::Shutdown)));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_follower_far_behind_gets_a_snapshot_in_chunks_and_converges() {
    let _ = tracing_subscriber::fmt().with_test_writer().with_max_level(tracing::Level::INFO).try_init();
    let mut cluster = Cluster::bootstrap_with(3, true, snapshot_often).await;
    let leader = cluster.leader_among(&[1, 2, 3]).await;
    let lagging = (1..=3).find(|id| *id != leader).unwrap();
    let stopped = cluster.stop(lagging).await;
    drop(stopped);
    for i in 0..400 {
        cluster.raft(leader).apply(command(i), TIMEOUT).await.unwrap();
    }
    let status = cluster.raft(leader).status().await.unwrap();
    assert!(status.snapshot.is_some(), "the leader took no snapshot");
    assert!(status.first_log_index.0 > 2, "the leader's log was not compacted: {status:?}");
    // The follower comes back behind the leader's first index: only a snapshot helps.
    let dir = cluster.dirs[(lagging - 1) as usize].path().to_path_buf();
    cluster.start(lagging, open_durable(&dir));
    let expected: Vec<Bytes> = (0..400).map(command).collect();
    assert_eq!(cluster.wait_applied(lagging, 400).await, expected);
    let follower = cluster.raft(lagging).status().await.unwrap();
    assert!(follower.snapshot.is_some(), "the follower caught up without a snapshot");
    cluster.raft(leader).apply(command(400), TIMEOUT).await.unwrap();
    assert_eq!(cluster.wait_applied(lagging, 401).await.len(), 401);

    // Everyone restarts from their snapshot plus the log after it.
    let mut stopped = Vec::new();
    for id in 1..=3 {
        stopped.push(id);
        cluster.stop(id).await;
    }
    for id in stopped {
        let dir = cluster.dirs[(id - 1) as usize].path().to_path_buf();
        cluster.start(id, open_durable(&dir));
    }
    let leader = cluster.leader_among(&[1, 2, 3]).await;
    cluster.raft(leader).apply(command(401), TIMEOUT).await.unwrap();
    let expected: Vec<Bytes> = (0..=401).map(command).collect();
    for id in 1..=3 {
        assert_eq!(cluster.wait_applied(id, 402).await, expected, "node {id}");
    }
    cluster.shutdown().await;
}

/// `Raft::snapshot` takes one on demand and compacts the log; asking again with
/// nothing new applied says so. `reload_config` refuses bad combinations and
/// changes the snapshot policy at runtime: with a threshold of 10 and a one-hour
/// interval no snapshot is taken at 50 entries, but the log is not left to grow
/// past `snapshot_log_bytes` (2 KiB here) of entries.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn snapshots_on_demand_and_a_reloaded_policy() {
    fn config(id: NodeId) -> Config {
        Config { snapshot_log_bytes: 2048, ..Config::fast(id) }
    }
    let cluster = Cluster::bootstrap_with(1, true, config).await;
    cluster.leader_among(&[1]).await;
    let raft = cluster.raft(1);
    for i in 0..30 {
        raft.apply(command(i), TIMEOUT).await.unwrap();
    }
    let taken = raft.snapshot().await.unwrap();
    assert!(taken.index.0 >= 30, "{taken:?}");
    let status = raft.status().await.unwrap();
    assert_eq!(status.snapshot, Some(taken));
    match raft.snapshot().await {
        Err(RaftError::NothingNewToSnapshot { index }) => assert_eq!(index, taken.index),
        other => panic!("second snapshot with nothing new: {other:?}"),
    }

    let bad = raftkv_raft::ReloadableConfig {
        election_timeout_min: Some(Duration::from_millis(500)),
        election_timeout_max: Some(Duration::from_millis(400)),
        ..Default::default()
    };
    match raft.reload_config(bad).await {
        Err(RaftError::Config(reason)) => assert!(reason.contains("election_timeout_max"), "{reason}"),
        other => panic!("invalid timeouts accepted: {other:?}"),
    }
    let zero = raftkv_raft::ReloadableConfig { snapshot_threshold: Some(0), ..Default::default() };
    assert!(matches!(raft.reload_config(zero).await, Err(RaftError::Config(_))));

    let policy = raftkv_raft::ReloadableConfig {
        snapshot_threshold: Some(10),
        snapshot_interval: Some(Duration::from_secs(3600)),
        trailing_logs: Some(0),
        ..Default::default()
    };
    let now = raft.reload_config(policy).await.unwrap();
    assert_eq!((now.snapshot_threshold, now.trailing_logs), (10, 0));
    // 50 entries of about 30 bytes: past the threshold, under 2 KiB.
    for i in 30..80 {
        raft.apply(command(i), TIMEOUT).await.unwrap();
    }
    assert_eq!(raft.status().await.unwrap().snapshot, Some(taken), "the interval holds back a snapshot");
    for i in 80..200 {
        raft.apply(command(i), TIMEOUT).await.unwrap();
    }
    let mut forced = None;
    for _ in 0..500 {
        let status = raft.status().await.unwrap();
        if status.snapshot != Some(taken) {
            forced = Some(status);
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let forced = forced.expect("a log grown past snapshot_log_bytes is snapshotted");
    let forced_at = forced.snapshot.unwrap().index;
    assert!(forced_at.0 >= taken.index.0 + 50, "{forced:?}");
    // trailing_logs 0: the log is purged up to the snapshot.
    assert_eq!(forced.first_log_index, forced_at.next(), "{forced:?}");
    cluster.shutdown().await;
}

/// A large snapshot in chunks: a follower offline while the cluster
/// writes 50,000 entries with a snapshot every 1,000 comes back behind the
/// leader's log, receives the snapshot in several chunks, and converges. Its
/// link is cut in the middle of the install; the transfer resumes from the last
/// acknowledged chunk instead of starting over.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_follower_gets_a_50000_entry_snapshot_in_chunks_resumed_after_a_cut() {
    fn config(id: NodeId) -> Config {
        Config {
            snapshot_threshold: 1000,
            snapshot_interval: Duration::from_millis(10),
            trailing_logs: 1000,
            snapshot_chunk_bytes: 64 << 10,
            ..Config::fast(id)
        }
    }
    const WRITES: usize = 50_000;
    let mut cluster = Cluster::bootstrap_with(3, true, config).await;
    let leader = cluster.leader_among(&[1, 2, 3]).await;
    let lagging = (1..=3).find(|id| *id != leader).unwrap();
    drop(cluster.stop(lagging).await);
    for chunk in (0..WRITES).collect::<Vec<_>>().chunks(500) {
        let commands = chunk.iter().map(|i| command(*i)).collect();
        cluster.raft(leader).apply_batch(commands, TIMEOUT).await.unwrap();
    }
    // Let the leader's snapshots catch up with its writes, so that the install
    // below is not replaced by a newer snapshot halfway (which restarts it).
    let mut status = cluster.raft(leader).status().await.unwrap();
    for _ in 0..1000 {
        if status.snapshot.is_some_and(|s| s.index.0 + 1000 > status.commit_index.0) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
        status = cluster.raft(leader).status().await.unwrap();
    }
    assert!(status.first_log_index.0 > 10_000, "the leader's log was not compacted: {status:?}");

    // Watch the chunks to the lagging node; after the third, cut its links.
    let chunks: Arc<Mutex<Vec<u64>>> = Arc::default();
    let cut = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let filter: raftkv_raft::transport::MessageFilter = {
        let (chunks, cut) = (chunks.clone(), cut.clone());
        Arc::new(move |from, to, message| {
            use std::sync::atomic::Ordering;
            if cut.load(Ordering::SeqCst) && (from.0 == lagging || to.0 == lagging) {
                return false;
            }
            if let raftkv_raft::Message::InstallSnapshot(install) = message {
                if to.0 == lagging {
                    let mut chunks = chunks.lock().unwrap();
                    chunks.push(install.offset);
                    if chunks.len() == 3 {
                        cut.store(true, Ordering::SeqCst);
                    }
                }
            }
            true
        })
    };
    cluster.network.set_filter(Some(filter));
    let dir = cluster.dirs[(lagging - 1) as usize].path().to_path_buf();
    cluster.start(lagging, open_durable(&dir));
    for _ in 0..1000 {
        if cut.load(std::sync::atomic::Ordering::SeqCst) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(cut.load(std::sync::atomic::Ordering::SeqCst), "the install never reached a third chunk");
    // Long enough for the leader to notice the stall and retry into the void.
    tokio::time::sleep(Duration::from_millis(500)).await;
    cut.store(false, std::sync::atomic::Ordering::SeqCst);

    let expected: Vec<Bytes> = (0..WRITES).map(command).collect();
    assert_eq!(cluster.wait_applied(lagging, WRITES).await, expected);
    let follower = cluster.raft(lagging).status().await.unwrap();
    let installed = follower.snapshot.expect("the follower caught up through a snapshot");
    let offsets = chunks.lock().unwrap().clone();
    assert!(offsets.len() > 3, "one install in several chunks: {offsets:?}");
    // Chunks may be resent (a retry while the follower starts, or after the
    // cut), but never from the start once the third chunk went out.
    assert!(!offsets[3..].contains(&0), "the transfer started over after the cut: offsets {offsets:?}");
    assert!(offsets.windows(2).all(|w| w[1] >= w[0]), "chunks went backwards: {offsets:?}");
    cluster.raft(leader).apply(command(WRITES), TIMEOUT).await.unwrap();
    assert_eq!(cluster.wait_applied(lagging, WRITES + 1).await.len(), WRITES + 1);
    assert!(installed.index.0 > 10_000, "{installed:?}");
    cluster.shutdown().await;
}

/// Quorum loss: two of three nodes are gone for good. `recover_cluster` on the
/// stopped survivor makes it a one-node cluster that leads with every
/// committed entry; refused on a configuration without voters.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn recover_cluster_turns_a_survivor_into_a_working_cluster() {
    let mut cluster = Cluster::bootstrap_with(3, true, snapshot_often).await;
    let leader = cluster.leader_among(&[1, 2, 3]).await;
    for i in 0..120 {
        cluster.raft(leader).apply(command(i), TIMEOUT).await.unwrap();
    }
    let survivor = (1..=3).find(|id| *id != leader).unwrap();
    cluster.wait_applied(survivor, 120).await;
    for id in 1..=3 {
        cluster.stop(id).await;
    }
    let dir = cluster.dirs[(survivor - 1) as usize].path().to_path_buf();
    let (log, stable, snapshots) = open_durable(&dir);
    let empty = raftkv_raft::Configuration::default();
    let mut machine = Recorder::default();
    assert!(Raft::recover_cluster(log.as_ref(), stable.as_ref(), snapshots.as_ref(), &mut machine, empty).is_err());
    let alone = raftkv_raft::Configuration::new([NodeId(survivor)]);
    let recovery =
        Raft::recover_cluster(log.as_ref(), stable.as_ref(), snapshots.as_ref(), &mut machine, alone.clone()).unwrap();
    assert_eq!(machine.commands().len(), 120, "the whole log went into the recovery snapshot");
    assert_eq!(log.first_index().unwrap(), recovery.snapshot.index.next(), "the log is emptied");
    assert_eq!(recovery.previous.voters.len(), 3, "{recovery:?}");
    assert_eq!(recovery.configuration, alone);
    drop((log, stable, snapshots));

    cluster.start(survivor, open_durable(&dir));
    assert_eq!(cluster.leader_among(&[survivor]).await, survivor);
    cluster.raft(survivor).apply(command(120), TIMEOUT).await.unwrap();
    let expected: Vec<Bytes> = (0..=120).map(command).collect();
    assert_eq!(cluster.wait_applied(survivor, 121).await, expected);
    let status = cluster.raft(survivor).status().await.unwrap();
    assert_eq!(status.membership, alone);
    cluster.shutdown().await;
}

/// The leader reports, for each other member, how far its log matches, how
/// far it trails and when it last answered in this term: what a health rule
/// such as Consul autopilot's judges. A member cut off stops answering while
/// the others keep up; followers report no peers.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_leader_reports_each_members_progress_and_last_contact() {
    let cluster = Cluster::bootstrap(3, false).await;
    let leader = cluster.leader_among(&[1, 2, 3]).await;
    let (index, _) = cluster.raft(leader).apply(command(1), TIMEOUT).await.unwrap();
    let cut = (1..=3).find(|id| *id != leader).unwrap();
    let healthy = (1..=3).find(|id| *id != leader && *id != cut).unwrap();
    let mut caught_up = false;
    for _ in 0..500 {
        let peers = cluster.raft(leader).status().await.unwrap().peers;
        let ids: Vec<u64> = peers.iter().map(|p| p.id.0).collect();
        assert_eq!(ids.len(), 2, "{peers:?}");
        assert!(!ids.contains(&leader) && peers.iter().all(|p| p.voter), "{peers:?}");
        if peers.iter().all(|p| p.match_index >= index && p.trailing == 0 && p.last_contact.is_some()) {
            caught_up = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(caught_up, "the members never showed as caught up");
    for id in [cut, healthy] {
        assert!(cluster.raft(id).status().await.unwrap().peers.is_empty(), "follower {id} reports peers");
    }

    cluster.network.isolate(NodeId(cut));
    cluster.raft(leader).apply(command(2), TIMEOUT).await.unwrap();
    let mut apart = None;
    for _ in 0..500 {
        let peers = cluster.raft(leader).status().await.unwrap().peers;
        let of = |id: u64| peers.iter().find(|p| p.id == NodeId(id)).cloned().unwrap();
        let (silent, answering) = (of(cut), of(healthy));
        let lagging = silent.trailing > 0 && answering.trailing == 0;
        if lagging && silent.last_contact > answering.last_contact.map(|d| d + Duration::from_millis(300)) {
            apart = Some((silent, answering));
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(apart.is_some(), "the cut-off member never fell behind the answering one");
    cluster.network.heal();
    cluster.shutdown().await;
}

/// `add_voter` (thesis §4.2.1): the new server is first a staging learner,
/// which never counts; the leader promotes it once it has caught up, and the
/// caller is answered with the promotion. Asking again is done at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn add_voter_stages_the_server_and_promotes_it_once_caught_up() {
    let mut cluster = Cluster::bootstrap(3, false).await;
    let leader = cluster.leader_among(&[1, 2, 3]).await;
    for i in 0..50 {
        cluster.raft(leader).apply(command(i), TIMEOUT).await.unwrap();
    }
    let stores = cluster.stores();
    cluster.start(4, stores);
    let raft = cluster.raft(leader).clone();
    let adding = tokio::spawn(async move { raft.add_voter(NodeId(4), None, Duration::from_secs(20)).await });
    let mut staged = false;
    for _ in 0..500 {
        let status = cluster.raft(leader).status().await.unwrap();
        if status.membership.is_staging(NodeId(4)) {
            assert!(!status.membership.is_voter(NodeId(4)));
            let stats = cluster.raft(leader).statistics().await.unwrap().to_map();
            assert!(stats["latest_configuration"].contains("{Suffrage:Staging ID:4"), "{stats:?}");
            staged = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    assert!(staged, "node 4 was never seen staging");
    let promoted = adding.await.unwrap().expect("promoted");
    let status = cluster.raft(leader).status().await.unwrap();
    assert!(status.membership.is_voter(NodeId(4)) && status.membership.staging.is_empty());
    assert!(status.membership_index >= promoted);
    let again = cluster.raft(leader).add_voter(NodeId(4), None, TIMEOUT).await.unwrap();
    assert_eq!(again, status.membership_index, "a retry is done at once");
    assert_eq!(cluster.wait_applied(4, 50).await.len(), 50);
    cluster.shutdown().await;
}

/// A server that cannot be reached never catches up: at the deadline the
/// leader removes it again and the caller learns it was not added.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn add_voter_of_a_server_that_never_catches_up_removes_it_again() {
    let cluster = Cluster::bootstrap(3, false).await;
    let leader = cluster.leader_among(&[1, 2, 3]).await;
    cluster.raft(leader).apply(command(1), TIMEOUT).await.unwrap();
    let result = cluster.raft(leader).add_voter(NodeId(9), None, Duration::from_secs(2)).await;
    assert!(matches!(result, Err(RaftError::NotCaughtUp { id: NodeId(9), .. })), "{result:?}");
    assert!(!result.as_ref().unwrap_err().outcome_unknown());
    let status = cluster.raft(leader).status().await.unwrap();
    assert!(!status.membership.is_member(NodeId(9)), "{}", status.membership);
    // The cluster goes on, and a stale guard changes nothing.
    cluster.raft(leader).apply(command(2), TIMEOUT).await.unwrap();
    let stale = cluster.raft(leader).add_nonvoter(NodeId(9), Some(LogIndex(1)), TIMEOUT).await;
    assert!(matches!(stale, Err(RaftError::Refused(ProposeError::ConfigChanged { .. }))), "{stale:?}");
    cluster.shutdown().await;
}

/// The staging mark is replicated: when the leader stops before the
/// promotion, the next leader promotes the server, and the caller, told
/// that the outcome is unknown, learns it by asking again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_leader_finishes_a_staged_promotion() {
    let mut cluster = Cluster::bootstrap(3, false).await;
    let leader = cluster.leader_among(&[1, 2, 3]).await;
    cluster.raft(leader).apply(command(1), TIMEOUT).await.unwrap();
    let stores = cluster.stores();
    cluster.start(4, stores);
    let raft = cluster.raft(leader).clone();
    let adding = tokio::spawn(async move { raft.add_voter(NodeId(4), None, Duration::from_secs(30)).await });
    let others: Vec<u64> = (1..=3).filter(|id| *id != leader).collect();
    let mut replicated = false;
    for _ in 0..500 {
        let status = cluster.raft(others[0]).status().await.unwrap();
        if status.membership.is_staging(NodeId(4)) && status.commit_index >= status.membership_index {
            replicated = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    assert!(replicated, "the staging entry never committed");
    cluster.stop(leader).await;
    let answer = adding.await.unwrap();
    assert!(answer.as_ref().is_err_and(RaftError::outcome_unknown), "{answer:?}");
    let next = cluster.leader_among(&others).await;
    let promoted = cluster.raft(next).add_voter(NodeId(4), None, Duration::from_secs(30)).await;
    assert!(promoted.is_ok(), "{promoted:?}");
    assert!(cluster.raft(next).status().await.unwrap().membership.is_voter(NodeId(4)));
    cluster.shutdown().await;
}

/// Reads `observer` until an observation `wanted` takes arrives (within
/// `TIMEOUT`); returns it and what was read before it.
async fn observe_until(
    observer: &mut Observer,
    wanted: impl Fn(&Observation) -> bool,
) -> (Observation, Vec<Observation>) {
    let deadline = tokio::time::Instant::now() + TIMEOUT;
    let mut before = Vec::new();
    loop {
        match tokio::time::timeout_at(deadline, observer.recv()).await {
            Ok(Some(observation)) if wanted(&observation) => return (observation, before),
            Ok(Some(observation)) => before.push(observation),
            Ok(None) => panic!("the node stopped; observed {before:?}"),
            Err(_) => panic!("not observed within {TIMEOUT:?}; observed {before:?}"),
        }
    }
}

/// Observers on the followers see the leader change after the leader stops,
/// and the voter of the new leader sees the vote request it granted in the
/// new term before it learns who leads.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn observers_see_the_leader_change_and_the_vote_that_made_it() {
    let mut cluster = Cluster::bootstrap(3, false).await;
    let old = cluster.leader_among(&[1, 2, 3]).await;
    let old_term = cluster.raft(old).leader().term;
    let others: Vec<u64> = (1..=3).filter(|id| *id != old).collect();
    let elections = |o: &Observation| matches!(o, Observation::LeaderChanged { .. } | Observation::RequestVote { .. });
    let mut observers: Vec<Observer> = others.iter().map(|id| cluster.raft(*id).observe(elections, 64)).collect();
    cluster.stop(old).await;
    let new = cluster.leader_among(&others).await;
    let term = cluster.raft(new).leader().term;
    assert!(term > old_term);
    for (id, observer) in others.iter().zip(&mut observers) {
        let leads = Observation::LeaderChanged { leader: Some(NodeId(new)), term };
        let (_, before) = observe_until(observer, |o| *o == leads).await;
        if *id != new {
            let granted = Observation::RequestVote { from: NodeId(new), term, pre_vote: false, granted: true };
            assert!(before.contains(&granted), "node {id} observed {before:?}");
        }
    }
    cluster.shutdown().await;
}

/// The leader observes a follower it stops hearing from as unreachable once
/// it has been silent for an election timeout, and as reachable again after
/// the network heals.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_leader_observes_a_cut_off_peer_unreachable_then_reachable() {
    let cluster = Cluster::bootstrap(3, false).await;
    let leader = cluster.leader_among(&[1, 2, 3]).await;
    let cut = (1..=3).find(|id| *id != leader).unwrap();
    let of_cut = move |o: &Observation| match o {
        Observation::PeerUnreachable { peer, .. } | Observation::PeerReachable { peer } => *peer == NodeId(cut),
        _ => false,
    };
    let mut observer = cluster.raft(leader).observe(of_cut, 16);
    cluster.raft(leader).apply(command(1), TIMEOUT).await.unwrap();
    cluster.network.isolate(NodeId(cut));
    let (unreachable, before) = observe_until(&mut observer, |_| true).await;
    assert!(before.is_empty());
    let Observation::PeerUnreachable { last_contact, .. } = unreachable else {
        panic!("a peer cut off is first unreachable: {unreachable:?}");
    };
    let last_contact = last_contact.expect("it answered this leader before it was cut off");
    let election_timeout = Config::fast(NodeId(leader)).election_timeout_min;
    assert!(last_contact.elapsed() >= election_timeout, "{:?}", last_contact.elapsed());
    cluster.network.heal();
    let (reachable, _) = observe_until(&mut observer, |_| true).await;
    assert_eq!(reachable, Observation::PeerReachable { peer: NodeId(cut) });
    cluster.shutdown().await;
}

/// A removal is observed on the leader when appended and again when it
/// commits, and on the follower that stays at least when it commits.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn observers_see_a_configuration_take_effect_and_commit() {
    let cluster = Cluster::bootstrap(3, false).await;
    let leader = cluster.leader_among(&[1, 2, 3]).await;
    // A membership change waits for the leader's first commit in its term.
    cluster.raft(leader).apply(command(0), TIMEOUT).await.unwrap();
    let removed = (1..=3).find(|id| *id != leader).unwrap();
    let stays = (1..=3).find(|id| *id != leader && *id != removed).unwrap();
    let membership = |o: &Observation| matches!(o, Observation::MembershipChanged { .. });
    let mut on_leader = cluster.raft(leader).observe(membership, 16);
    let mut on_follower = cluster.raft(stays).observe(membership, 16);
    let index = cluster.raft(leader).remove_server(NodeId(removed), None, TIMEOUT).await.unwrap();
    let configuration = Configuration::new([NodeId(leader), NodeId(stays)]);
    let appended = Observation::MembershipChanged { configuration: configuration.clone(), index, committed: false };
    let committed = Observation::MembershipChanged { configuration, index, committed: true };
    let (_, before) = observe_until(&mut on_leader, |o| *o == committed).await;
    assert_eq!(before, vec![appended.clone()], "the leader appends before anyone acknowledges");
    // The follower may learn the entry and its commit in one batch.
    let (_, before) = observe_until(&mut on_follower, |o| *o == committed).await;
    assert!(before.iter().all(|o| *o == appended), "{before:?}");
    cluster.shutdown().await;
}

/// An observer that never reads, with room for one observation, holds up
/// nothing: membership changes and writes complete, and what did not fit is
/// dropped and counted; the oldest observation is the one kept.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_observer_never_holds_up_the_node_and_counts_what_it_dropped() {
    let cluster = Cluster::bootstrap(3, false).await;
    let leader = cluster.leader_among(&[1, 2, 3]).await;
    let follower = (1..=3).find(|id| *id != leader).unwrap();
    // A membership change waits for the leader's first commit in its term.
    cluster.raft(leader).apply(command(1000), TIMEOUT).await.unwrap();
    let mut full = cluster.raft(leader).observe(|_| true, 1);
    // Each change is observed when appended and when committed, before the
    // caller is answered: four observations at least.
    let removal = cluster.raft(leader).remove_server(NodeId(follower), None, TIMEOUT).await.unwrap();
    cluster.raft(leader).add_nonvoter(NodeId(follower), None, TIMEOUT).await.unwrap();
    for i in 0..200 {
        cluster.raft(leader).apply(command(i), TIMEOUT).await.unwrap();
    }
    assert!(full.dropped() >= 3, "dropped {}", full.dropped());
    match full.try_recv() {
        Some(Observation::MembershipChanged { index, committed: false, .. }) => assert_eq!(index, removal),
        other => panic!("the first observation stays queued: {other:?}"),
    }
    cluster.shutdown().await;
}

/// Dropping an observer deregisters it: the raft loop lets go of its filter
/// and never runs it again, while another observer goes on; once the node
/// stops, the observers left see their stream end.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dropping_an_observer_deregisters_it() {
    let cluster = Cluster::bootstrap(3, false).await;
    let leader = cluster.leader_among(&[1, 2, 3]).await;
    // A membership change waits for the leader's first commit in its term.
    cluster.raft(leader).apply(command(0), TIMEOUT).await.unwrap();
    let removed = (1..=3).find(|id| *id != leader).unwrap();
    let held = Arc::new(());
    let calls = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let (in_filter, counted) = (held.clone(), calls.clone());
    let dropped = cluster.raft(leader).observe(
        move |_| {
            let _held = &in_filter;
            counted.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            true
        },
        16,
    );
    let mut kept = cluster.raft(leader).observe(|o| matches!(o, Observation::MembershipChanged { .. }), 16);
    assert_eq!(Arc::strong_count(&held), 2, "the registration holds the filter");
    drop(dropped);
    for _ in 0..500 {
        if Arc::strong_count(&held) == 1 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(Arc::strong_count(&held), 1, "the raft loop still holds the dropped observer's filter");
    let calls_before = calls.load(std::sync::atomic::Ordering::SeqCst);
    let index = cluster.raft(leader).remove_server(NodeId(removed), None, TIMEOUT).await.unwrap();
    observe_until(
        &mut kept,
        |o| matches!(o, Observation::MembershipChanged { index: at, committed: true, .. } if *at == index),
    )
    .await;
    assert_eq!(calls.load(std::sync::atomic::Ordering::SeqCst), calls_before);
    cluster.raft(leader).shutdown().await;
    let ended = tokio::time::timeout(TIMEOUT, async { while kept.recv().await.is_some() {} }).await;
    assert!(ended.is_ok(), "the observer's stream did not end with the node");
    cluster.shutdown().await;
}

/// A snapshot of another cluster's state machine: `count` commands named
/// `restored {i}`, applied at indexes 1.., as `Recorder`'s snapshot writes it.
fn foreign_snapshot(count: usize) -> (Vec<u8>, Vec<Bytes>) {
    use raftkv_raft::{Entry, EntryPayload, StateMachine, Term};
    let commands: Vec<Bytes> = (0..count).map(|i| Bytes::from(format!("restored {i}"))).collect();
    let entries: Vec<Entry> = commands
        .iter()
        .enumerate()
        .map(|(i, c)| Entry { term: Term(7), index: LogIndex(i as u64 + 1), payload: EntryPayload::Command(c.clone()) })
        .collect();
    let mut source = Recorder::default();
    source.apply(&entries);
    let mut bytes = Vec::new();
    source.snapshot().write_to(&mut bytes).unwrap();
    (bytes, commands)
}

/// Restore chunks of 256 bytes: a restore of a few kilobytes is many
/// entries. Restores of at most 1 MiB.
fn small_appends(id: NodeId) -> Config {
    Config { max_bytes_per_append: 512, max_restore_bytes: 1 << 20, ..Config::fast(id) }
}

/// Waits until node `id`'s state machine holds exactly `expected`.
async fn wait_state(cluster: &Cluster, id: u64, expected: &[Bytes]) {
    for _ in 0..1000 {
        if cluster.nodes[&id].recorder.commands() == expected {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let has = cluster.nodes[&id].recorder.commands();
    panic!("node {id} holds {} commands, not the {} expected: {:?}", has.len(), expected.len(), has.last());
}

/// A restore replaces the state on every node at one index; writes before it
/// are gone, writes after it apply on top; the state machine never sees the
/// restore's entries (the recorder panics on one, which stops the node).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restore_replaces_the_state_everywhere_and_later_writes_apply_on_top() {
    let cluster = Cluster::bootstrap_with(3, false, small_appends).await;
    let leader = cluster.leader_among(&[1, 2, 3]).await;
    for i in 0..5 {
        cluster.raft(leader).apply(command(i), TIMEOUT).await.unwrap();
    }
    let (snapshot, mut expected) = foreign_snapshot(200);
    assert!(snapshot.len() > 20 * 256, "the restore spans more chunks than are in flight at once");
    let index = cluster.raft(leader).restore(std::io::Cursor::new(snapshot), TIMEOUT).await.unwrap();
    assert!(cluster.raft(leader).applied_index() >= index);
    assert_eq!(cluster.nodes[&leader].recorder.commands(), expected, "in force on the leader once answered");
    for i in 5..10 {
        let (after, _) = cluster.raft(leader).apply(command(i), TIMEOUT).await.unwrap();
        assert!(after > index);
        expected.push(command(i));
    }
    for id in 1..=3 {
        wait_state(&cluster, id, &expected).await;
        assert!(cluster.raft(id).failure().is_none(), "node {id} failed: {:?}", cluster.raft(id).failure());
    }
    // A second restore, of an empty state, works the same way.
    let (empty, _) = foreign_snapshot(0);
    cluster.raft(leader).restore(std::io::Cursor::new(empty), TIMEOUT).await.unwrap();
    cluster.raft(leader).apply(command(99), TIMEOUT).await.unwrap();
    for id in 1..=3 {
        wait_state(&cluster, id, &[command(99)]).await;
    }
    cluster.shutdown().await;
}

/// A follower cut off during the restore gets the restored state after
/// healing (by InstallSnapshot here: the leader snapshots right after a
/// restore and keeps 10 entries behind it).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_follower_cut_off_during_a_restore_converges_after_healing() {
    fn config(id: NodeId) -> Config {
        Config { max_bytes_per_append: 512, ..snapshot_often(id) }
    }
    let cluster = Cluster::bootstrap_with(3, false, config).await;
    let leader = cluster.leader_among(&[1, 2, 3]).await;
    cluster.raft(leader).apply(command(0), TIMEOUT).await.unwrap();
    let cut = (1..=3).find(|id| *id != leader).unwrap();
    cluster.wait_applied(cut, 1).await;
    cluster.network.isolate(NodeId(cut));
    let (snapshot, mut expected) = foreign_snapshot(300);
    cluster.raft(leader).restore(std::io::Cursor::new(snapshot), TIMEOUT).await.unwrap();
    for i in 1..60 {
        cluster.raft(leader).apply(command(i), TIMEOUT).await.unwrap();
        expected.push(command(i));
    }
    assert_eq!(cluster.nodes[&cut].recorder.commands(), vec![command(0)], "the cut-off follower saw nothing");
    cluster.network.heal();
    for id in 1..=3 {
        wait_state(&cluster, id, &expected).await;
    }
    let checks = cluster.nodes[&cut].recorder.checks.load(std::sync::atomic::Ordering::SeqCst);
    assert!(checks >= 1, "the follower caught up without a snapshot");
    cluster.shutdown().await;
}

/// Bytes the state machine's check refuses (as a damaged backup would be)
/// are refused on every node at the Commit: not done, and nothing changes
/// anywhere; the cluster goes on. (Lost or damaged chunks, and checksums,
/// are refused by the same rule: `runtime/restore.rs`'s tests.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_damaged_restore_is_refused_and_changes_nothing() {
    let cluster = Cluster::bootstrap_with(3, false, small_appends).await;
    let leader = cluster.leader_among(&[1, 2, 3]).await;
    let mut expected = Vec::new();
    for i in 0..5 {
        cluster.raft(leader).apply(command(i), TIMEOUT).await.unwrap();
        expected.push(command(i));
    }
    let (mut snapshot, _) = foreign_snapshot(100);
    let middle = snapshot.len() / 2;
    snapshot[middle] = b'}';
    let refused = cluster.raft(leader).restore(std::io::Cursor::new(snapshot), TIMEOUT).await;
    match &refused {
        Err(error @ RaftError::RestoreFailed { index, reason }) => {
            assert!(*index > LogIndex(5), "refused at its Commit: {index}");
            assert!(reason.contains("check refused"), "{reason}");
            assert!(!error.outcome_unknown());
        }
        other => panic!("a damaged restore: {other:?}"),
    }
    cluster.raft(leader).apply(command(5), TIMEOUT).await.unwrap();
    expected.push(command(5));
    for id in 1..=3 {
        wait_state(&cluster, id, &expected).await;
        assert!(cluster.raft(id).failure().is_none());
    }
    // Too large for max_restore_bytes: refused before anything is proposed.
    let before = cluster.raft(leader).status().await.unwrap().last_log_index;
    let huge = std::io::Read::take(std::io::repeat(b'x'), (1 << 20) + 1);
    let refused = cluster.raft(leader).restore(huge, TIMEOUT).await;
    assert!(matches!(&refused, Err(RaftError::RestoreFailed { index: LogIndex(0), .. })), "{refused:?}");
    assert_eq!(cluster.raft(leader).status().await.unwrap().last_log_index, before);
    cluster.shutdown().await;
}

/// A follower refuses a restore (`NotLeader`, naming the leader), and a
/// second restore on a node while one runs is refused (`RestoreInProgress`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restore_on_a_follower_or_while_one_runs_is_refused() {
    let cluster = Cluster::bootstrap_with(3, false, small_appends).await;
    let leader = cluster.leader_among(&[1, 2, 3]).await;
    let follower = (1..=3).find(|id| *id != leader).unwrap();
    let (snapshot, expected) = foreign_snapshot(2000);
    match cluster.raft(follower).restore(std::io::Cursor::new(snapshot.clone()), TIMEOUT).await {
        Err(error @ RaftError::NotLeader { leader: Some(named) }) => {
            assert_eq!(named, NodeId(leader));
            assert!(!error.outcome_unknown());
        }
        other => panic!("restore on a follower: {other:?}"),
    }
    // The first restore's reader says when it is read and waits for the gate:
    // the first runs, deterministically, while the second is asked for.
    struct Gated {
        started: Option<tokio::sync::oneshot::Sender<()>>,
        gate: std::sync::mpsc::Receiver<()>,
        data: std::io::Cursor<Vec<u8>>,
    }
    impl std::io::Read for Gated {
        fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
            if let Some(started) = self.started.take() {
                let _ = started.send(());
                let _ = self.gate.recv();
            }
            self.data.read(buf)
        }
    }
    let (started, is_started) = tokio::sync::oneshot::channel();
    let (open, gate) = std::sync::mpsc::channel();
    let reader = Gated { started: Some(started), gate, data: std::io::Cursor::new(snapshot) };
    let raft = cluster.raft(leader).clone();
    let first = tokio::spawn(async move { raft.restore(reader, TIMEOUT).await });
    is_started.await.unwrap();
    let second = cluster.raft(leader).restore(std::io::Cursor::new(foreign_snapshot(0).0), TIMEOUT).await;
    match second {
        Err(error @ RaftError::RestoreInProgress) => assert!(!error.outcome_unknown()),
        other => panic!("a second restore while one runs: {other:?}"),
    }
    open.send(()).unwrap();
    first.await.unwrap().unwrap();
    for id in 1..=3 {
        wait_state(&cluster, id, &expected).await;
    }
    cluster.shutdown().await;
}

/// The leader stops in the middle of a restore: the caller is told the
/// outcome is unknown, the nodes left agree on one state once a new leader
/// writes (the old one: the Commit was never proposed), and so does the old
/// leader once it restarts from its stores with the abandoned steps in its log.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_leader_stopped_mid_restore_leaves_an_unknown_outcome_and_one_state() {
    fn config(id: NodeId) -> Config {
        Config { max_bytes_per_append: 256, ..Config::fast(id) }
    }
    let mut cluster = Cluster::bootstrap_with(3, true, config).await;
    let leader = cluster.leader_among(&[1, 2, 3]).await;
    cluster.raft(leader).apply(command(0), TIMEOUT).await.unwrap();
    // Thousands of chunks of 128 bytes: the restore takes far longer than the stop.
    let (snapshot, _) = foreign_snapshot(20_000);
    let start = cluster.raft(leader).applied_index();
    let raft = cluster.raft(leader).clone();
    let restoring = tokio::spawn(async move { raft.restore(std::io::Cursor::new(snapshot), TIMEOUT).await });
    for _ in 0..1000 {
        if cluster.raft(leader).applied_index() > LogIndex(start.0 + 20) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    assert!(cluster.raft(leader).applied_index() > LogIndex(start.0 + 20), "the restore never got going");
    let Node { log, stable, .. } = cluster.stop(leader).await;
    let answer = restoring.await.unwrap();
    assert!(answer.as_ref().is_err_and(RaftError::outcome_unknown), "{answer:?}");
    let others: Vec<u64> = (1..=3).filter(|id| *id != leader).collect();
    let next = cluster.leader_among(&others).await;
    cluster.raft(next).apply(command(1), TIMEOUT).await.unwrap();
    let on_next = cluster.nodes[&next].recorder.commands();
    assert_eq!(on_next, vec![command(0), command(1)], "the restore never committed: the state is the old one");
    for id in &others {
        wait_state(&cluster, *id, &on_next).await;
        assert!(cluster.raft(*id).failure().is_none());
    }
    drop((log, stable));
    let dir = cluster.dirs[(leader - 1) as usize].path().to_path_buf();
    cluster.start(leader, open_durable(&dir));
    cluster.raft(next).apply(command(2), TIMEOUT).await.unwrap();
    let expected = vec![command(0), command(1), command(2)];
    for id in 1..=3 {
        wait_state(&cluster, id, &expected).await;
        assert!(cluster.raft(id).failure().is_none());
    }
    cluster.shutdown().await;
}

/// A restore survives a restart of every node: the WAL keeps its entries
/// (kind 4) and start-up replays them, so each node rebuilds the restored
/// state, then the writes after it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restore_is_replayed_from_the_log_after_a_restart() {
    let mut cluster = Cluster::bootstrap_with(3, true, small_appends).await;
    let leader = cluster.leader_among(&[1, 2, 3]).await;
    cluster.raft(leader).apply(command(0), TIMEOUT).await.unwrap();
    let (snapshot, mut expected) = foreign_snapshot(100);
    cluster.raft(leader).restore(std::io::Cursor::new(snapshot), TIMEOUT).await.unwrap();
    for i in 1..5 {
        cluster.raft(leader).apply(command(i), TIMEOUT).await.unwrap();
        expected.push(command(i));
    }
    for id in 1..=3 {
        wait_state(&cluster, id, &expected).await;
    }
    for id in 1..=3 {
        let Node { log, stable, .. } = cluster.stop(id).await;
        drop((log, stable));
        let dir = cluster.dirs[(id - 1) as usize].path().to_path_buf();
        cluster.start(id, open_durable(&dir));
    }
    let leader = cluster.leader_among(&[1, 2, 3]).await;
    cluster.raft(leader).apply(command(5), TIMEOUT).await.unwrap();
    expected.push(command(5));
    for id in 1..=3 {
        wait_state(&cluster, id, &expected).await;
    }
    cluster.shutdown().await;
}

/// No snapshot is taken inside an open restore: a follower restarted from
/// its stores in the middle of one (snapshots every 50 entries) still has
/// every chunk after its newest snapshot, and restores at the Commit with
/// the others.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_follower_restarted_mid_restore_restores_with_the_others() {
    fn config(id: NodeId) -> Config {
        Config { max_bytes_per_append: 256, ..snapshot_often(id) }
    }
    let mut cluster = Cluster::bootstrap_with(3, true, config).await;
    let leader = cluster.leader_among(&[1, 2, 3]).await;
    for i in 0..60 {
        cluster.raft(leader).apply(command(i), TIMEOUT).await.unwrap();
    }
    let follower = (1..=3).find(|id| *id != leader).unwrap();
    cluster.wait_applied(follower, 60).await;
    let (snapshot, mut expected) = foreign_snapshot(3000);
    let start = cluster.raft(follower).applied_index();
    let raft = cluster.raft(leader).clone();
    let restoring =
        tokio::spawn(async move { raft.restore(std::io::Cursor::new(snapshot), Duration::from_secs(60)).await });
    for _ in 0..2000 {
        if cluster.raft(follower).applied_index() > LogIndex(start.0 + 200) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    assert!(cluster.raft(follower).applied_index() > LogIndex(start.0 + 200), "the restore never got going");
    let Node { log, stable, .. } = cluster.stop(follower).await;
    drop((log, stable));
    let dir = cluster.dirs[(follower - 1) as usize].path().to_path_buf();
    cluster.start(follower, open_durable(&dir));
    restoring.await.unwrap().unwrap();
    cluster.raft(leader).apply(command(60), TIMEOUT).await.unwrap();
    expected.push(command(60));
    for id in 1..=3 {
        wait_state(&cluster, id, &expected).await;
        assert!(cluster.raft(id).failure().is_none());
    }
    cluster.shutdown().await;
}
