//! Helpers shared by the scenario test files: each test binary compiles this
//! module on its own and uses only some of it.

#![allow(dead_code)]

use std::collections::BTreeSet;

use raftkv_core::{LogIndex, Message, NodeId};
use raftkv_sim::harness::Cluster;

pub fn ids(list: &[u64]) -> BTreeSet<NodeId> {
    list.iter().map(|id| NodeId(*id)).collect()
}

/// Applied commands of node `id`, as text, for readable assertion failures.
pub fn applied(cluster: &Cluster, id: u64) -> Vec<String> {
    cluster.node(id).commands().iter().map(|c| String::from_utf8_lossy(c).into_owned()).collect()
}

pub type Envelope = (NodeId, NodeId, Message);

/// Like `Cluster::stabilize`, but returns a copy of every delivered (not blocked)
/// message for which `keep` holds, so a test can check what was said.
pub fn stabilize_recording(
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

pub fn match_index(cluster: &Cluster, leader: u64, peer: u64) -> LogIndex {
    cluster.core(leader).peer_progress(NodeId(peer)).map_or(LogIndex::ZERO, |(matched, _)| matched)
}
