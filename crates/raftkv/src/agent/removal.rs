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
//! data dir, start it with `--join`, and have an operator add it (`Removed`:
//! the members refuse a removed id's traffic and its own request to rejoin).

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use raftkv_raft::storage::StableStore;
use raftkv_raft::{LogIndex, NodeId};

use crate::agent::datadir;
use crate::agent::node::Agent;
use crate::agent::wire;

const ROUND: Duration = Duration::from_secs(2);

/// How often the committed configuration is looked at for removed members.
const TRACK_EVERY: Duration = Duration::from_secs(1);

/// The members this node last saw in a committed configuration, and the
/// ids removed from the cluster since it has known it (etcd's removed
/// members): their raft and internal traffic is refused, and a removed node
/// cannot add itself back; an operator's join (`raftkv join ID ADDR`, an
/// admin action) can, and its id is taken back once the configuration that
/// holds it commits. Kept in the stable store across restarts.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Removed {
    pub members: BTreeSet<u64>,
    pub removed: BTreeSet<u64>,
}

impl Removed {
    pub fn load(stable: &dyn StableStore) -> Removed {
        let bytes = stable.get(datadir::REMOVED_KEY).ok().flatten();
        bytes.and_then(|bytes| serde_json::from_slice(&bytes).ok()).unwrap_or_default()
    }

    /// Moves on to the committed configuration `members`: who left is
    /// removed, who is in it is not. Returns whether anything changed.
    pub fn advance(&mut self, members: BTreeSet<u64>, me: u64) -> bool {
        let before = self.clone();
        for gone in self.members.difference(&members) {
            if *gone != me {
                self.removed.insert(*gone);
            }
        }
        for present in &members {
            self.removed.remove(present);
        }
        self.members = members;
        *self != before
    }
}

impl Agent {
    /// Keeps the removed ids (see `Removed`) as committed configurations
    /// come and go, in the address book (which refuses their traffic) and
    /// the stable store.
    pub(crate) async fn track_removed(self: Arc<Agent>, stable: Arc<dyn StableStore>) {
        let mut known = Removed::load(stable.as_ref());
        loop {
            tokio::time::sleep(TRACK_EVERY).await;
            let Ok(status) = self.raft.status().await else { return };
            if status.membership_index > status.commit_index || status.membership.members().is_empty() {
                continue;
            }
            let members = status.membership.members().into_iter().map(|id| id.0).collect();
            let changed = known.advance(members, self.id.0);
            // Whoever the committed configuration holds is let in, however
            // it came to be refused: the leader refuses a node it removes at
            // once (`Agent::refuse_removed`), and an operator may add it back
            // before this loop ever saw it gone.
            for id in &known.members {
                self.book.readmit(NodeId(*id));
            }
            if !changed {
                continue;
            }
            for id in &known.removed {
                self.refuse_removed(NodeId(*id));
            }
            match serde_json::to_vec(&known).map(|bytes| stable.set(datadir::REMOVED_KEY, &bytes)) {
                Ok(Ok(())) => {}
                Ok(Err(error)) => tracing::warn!(%error, "cannot persist the removed members"),
                Err(error) => tracing::warn!(%error, "cannot encode the removed members"),
            }
        }
    }

    /// Refuses `id`'s traffic and calls from now on. Called here for every id
    /// a committed configuration left out, and by the leader right after a
    /// removal it committed, so that a node removed while its own join was
    /// still retrying cannot add itself back before the next look. An
    /// operator's join takes it back once the configuration holding it
    /// commits.
    pub(crate) fn refuse_removed(&self, id: NodeId) {
        if id != self.id && self.book.mark_removed(id) {
            tracing::info!(node = %id, "node removed from the cluster: its traffic is refused from now on");
        }
    }

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
                let reason = format!(
                    "{reason}; it no longer takes part: to return, wipe its data dir, start it with --join and have \
                     an operator add it (raftkv join {} ADDRESS)",
                    self.id
                );
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn who_leaves_a_committed_configuration_is_removed_until_one_holds_it_again() {
        let set = |ids: &[u64]| ids.iter().copied().collect::<BTreeSet<u64>>();
        let mut removed = Removed::default();
        assert!(removed.advance(set(&[1, 2, 3]), 1));
        assert!(removed.removed.is_empty(), "nothing was removed from nothing");
        assert!(!removed.advance(set(&[1, 2, 3]), 1), "no change");
        assert!(removed.advance(set(&[1, 2]), 1));
        assert_eq!(removed.removed, set(&[3]));
        // This node is never its own tombstone.
        assert!(removed.advance(set(&[2]), 1));
        assert_eq!(removed.removed, set(&[3]));
        // Back in a configuration: taken back.
        assert!(removed.advance(set(&[2, 3]), 1));
        assert_eq!(removed.removed, set(&[]));
    }
}
