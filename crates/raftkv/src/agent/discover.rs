//! How a node without state finds its cluster: a member's raft address
//! answers `ClusterInfo` (a `--join` or `--retry-join` address, or one that
//! gossip learnt), or, with `--bootstrap-expect N` and no cluster heard of,
//! the first N servers that find each other by gossip found one together.
//!
//! Founders must agree on who they are: each waits until the N lowest node
//! ids alive in gossip (answering, not suspect) have stayed the same, with
//! the same identities, for a while, and derives the cluster id from those
//! identities, generations included, so founders that saw the same set make
//! the same cluster and a cluster founded again by the same servers (after
//! a wipe) gets another id, whose traffic a leftover node of the old one
//! cannot join. A node that is not among them waits for the cluster to
//! form and joins it. (If more than N servers start at once and see
//! different sets, the sets make different clusters; as with Consul, start
//! exactly N servers with `--bootstrap-expect N`.)

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use crate::agent::gossip::{Gossip, GossipId, Liveness};
use crate::agent::wire;

/// What a new node does.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Start {
    /// Join the cluster `cluster_id` through these raft addresses.
    Join { cluster_id: String, via: Vec<String> },
    /// Found a cluster with these voters (this node among them).
    Bootstrap { founders: Vec<GossipId> },
}

/// How long the founders' set must hold before they bootstrap.
const SETTLE: Duration = Duration::from_secs(2);
/// How long a node tries before giving up, unless it retries forever.
const GIVE_UP: Duration = Duration::from_secs(30);
const ROUND: Duration = Duration::from_millis(250);

/// Looks for the cluster until it is found (or founded), or, unless
/// `forever`, until `GIVE_UP` passes.
pub async fn discover(
    me: u64,
    channels: &raftkv_raft::transport::grpc::Channels,
    targets: &[String],
    forever: bool,
    gossip: Option<&Gossip>,
    expect: Option<usize>,
) -> Result<Start, String> {
    let started = Instant::now();
    let mut settled: Option<(Vec<GossipId>, Instant)> = None;
    let mut last_error = String::from("no --join address given and no member found by gossip");
    let mut round = 0u64;
    loop {
        if let Some(gossip) = gossip {
            // Announce now and then: a target may start after us.
            if round.is_multiple_of(8) {
                gossip.announce_all(targets.iter().filter_map(|t| t.parse::<SocketAddr>().ok()));
            }
        }
        round += 1;
        let mut candidates: Vec<String> = targets.to_vec();
        if let Some(gossip) = gossip {
            let view = gossip.view();
            candidates
                .extend(view.alive().filter(|m| m.node != me && !m.raft_addr.is_empty()).map(|m| m.raft_addr.clone()));
        }
        for candidate in &candidates {
            match wire::cluster_info(channels, candidate).await {
                Ok(info) if !info.cluster_id.is_empty() => {
                    return Ok(Start::Join { cluster_id: info.cluster_id, via: vec![candidate.clone()] });
                }
                Ok(_) => last_error = format!("{candidate}: answers without a cluster"),
                Err(error) => last_error = format!("{candidate}: {error}"),
            }
        }
        if let (Some(gossip), Some(expect)) = (gossip, expect) {
            let view = gossip.view();
            if view.clusters.is_empty() {
                let answering = view.members.iter().filter(|m| m.liveness == Liveness::Alive && m.id.node != 0);
                let mut alive: Vec<GossipId> =
                    answering.map(|m| m.id.clone()).filter(|m| !m.raft_addr.is_empty()).collect();
                alive.sort_by_key(|m| m.node);
                alive.dedup_by_key(|m| m.node);
                alive.truncate(expect);
                let ids: Vec<u64> = alive.iter().map(|m| m.node).collect();
                if ids.len() == expect && ids.contains(&me) {
                    match &settled {
                        Some((set, since)) if *set == alive && since.elapsed() >= SETTLE => {
                            return Ok(Start::Bootstrap { founders: alive });
                        }
                        Some((set, _)) if *set == alive => {}
                        _ => settled = Some((alive, Instant::now())),
                    }
                } else {
                    settled = None;
                    last_error = format!("{} of {expect} expected servers found by gossip", ids.len());
                }
            } else {
                settled = None;
            }
        }
        if !forever && started.elapsed() >= GIVE_UP {
            return Err(last_error);
        }
        if round % 8 == 1 {
            tracing::info!(error = %last_error, "looking for the cluster");
        }
        tokio::time::sleep(ROUND).await;
    }
}

/// The cluster id founders derive from their set: the same set, the same id.
pub fn founders_cluster_id(founders: &[GossipId]) -> String {
    let mut sorted: Vec<(u64, &str, u64)> =
        founders.iter().map(|f| (f.node, f.raft_addr.as_str(), f.generation)).collect();
    sorted.sort();
    let mut bytes = Vec::new();
    for (node, raft_addr, generation) in sorted {
        bytes.extend_from_slice(&node.to_be_bytes());
        bytes.extend_from_slice(raft_addr.as_bytes());
        bytes.push(0);
        bytes.extend_from_slice(&generation.to_be_bytes());
    }
    let (low, high) = (crc32c::crc32c(&bytes), crc32c::crc32c_append(0x5241_4654, &bytes));
    format!("{high:08x}{low:08x}{:08x}", bytes.len())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn founder(node: u64) -> GossipId {
        GossipId {
            node,
            gossip_addr: SocketAddr::from(([127, 0, 0, 1], 7000 + node as u16)),
            raft_addr: format!("127.0.0.1:{}", 9000 + node),
            http_addr: String::new(),
            generation: node * 7,
        }
    }

    #[test]
    fn founders_in_any_order_derive_one_cluster_id_and_other_sets_another() {
        let (a, b, c) = (founder(1), founder(2), founder(3));
        let one = founders_cluster_id(&[a.clone(), b.clone(), c.clone()]);
        assert_eq!(one, founders_cluster_id(&[c.clone(), a.clone(), b.clone()]));
        assert_ne!(one, founders_cluster_id(&[a.clone(), b.clone()]));
        assert_ne!(one, founders_cluster_id(&[a.clone(), b.clone(), founder(4)]));
        // The same servers founding again (restarted: new generations) make another cluster.
        let again = GossipId { generation: c.generation + 1, ..c };
        assert_ne!(one, founders_cluster_id(&[a, b, again]));
    }
}
