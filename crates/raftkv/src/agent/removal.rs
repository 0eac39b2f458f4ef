//! How a node learns that it was removed from the cluster's configuration,
//! and what it does then.
//!
//! A node that applied its own removal knows it from its committed
//! configuration. One that was cut off while it was removed never hears of
//! it: the leader stops sending to it, and it would campaign (PreVote keeps
//! that harmless) and forward writes forever. So every few seconds a member
//! asks the leader it knows, or any node in its address book, for its
//! configuration (`ClusterInfo`); a committed configuration newer than its
//! own that lacks it means it was removed. It then says so in its log,
//! stops its raft node (no more campaigns), and answers every request with
//! `node_failed` naming the removal; stats say `Removed`. To return, wipe its
//! data dir and join again.

use std::sync::Arc;
use std::time::Duration;

use raftkv_raft::{LogIndex, NodeId};

use crate::agent::node::Agent;
use crate::agent::wire;

const ROUND: Duration = Duration::from_secs(2);

impl Agent {
    /// Watches for this node's removal (see the module doc).
    pub(crate) async fn watch_removal(self: Arc<Agent>) {
        let mut was_member = false;
        loop {
            tokio::time::sleep(ROUND).await;
            let Ok(status) = self.raft.status().await else { return };
            let (ours, at) = (&status.membership, status.membership_index);
            let reason = if ours.is_member(self.id) {
                was_member = true;
                self.removal_seen_elsewhere(at).await
            } else if was_member && at <= status.commit_index {
                Some(format!("node {} was removed from the cluster's configuration at index {at}", self.id))
            } else {
                None
            };
            if let Some(reason) = reason {
                let reason = format!("{reason}; it no longer takes part: wipe its data dir and join again to return");
                tracing::error!(id = %self.id, %reason, "removed from the cluster");
                *self.removed.write().unwrap_or_else(|p| p.into_inner()) = Some(reason);
                self.raft.shutdown().await;
                return;
            }
        }
    }

    /// Asks the leader (or, with none known, the nodes in the address book)
    /// for its configuration: a committed one newer than `ours` that lacks
    /// this node means it was removed.
    async fn removal_seen_elsewhere(&self, ours: LogIndex) -> Option<String> {
        let leader = self.raft.leader().leader;
        if leader == Some(self.id) {
            return None;
        }
        let asked: Vec<(NodeId, String)> = match leader.and_then(|l| self.book.get(l).map(|a| (l, a))) {
            Some(leader) => vec![leader],
            None => self.book.all().into_iter().filter(|(id, _)| *id != self.id).collect(),
        };
        for (id, address) in asked {
            let Ok(info) = wire::cluster_info(&self.peers.channels, &address).await else { continue };
            let newer = info.membership_committed && info.membership_index > ours.0;
            if info.cluster_id == self.cluster_id && info.node_id == id.0 && newer && !info.members.contains(&self.id.0)
            {
                return Some(format!(
                    "node {me} was removed from the cluster: node {id} holds a committed configuration (index {}) \
                     without node {me}",
                    info.membership_index,
                    me = self.id
                ));
            }
        }
        None
    }
}
