//! The operations that must run on the leader besides writes: membership
//! and leadership changes, with what each answers when it is done.

use raftkv_raft::{LogIndex, NodeId};

use crate::agent::autopilot::AutopilotState;

/// A node asking to become a member, and where it listens.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Member {
    pub id: NodeId,
    pub raft_addr: String,
    pub http_addr: String,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum AdminOp {
    /// Add a voter through staging (after recording its addresses in the
    /// replicated peers). `replace`: a member with this id at another
    /// address is removed first, instead of refusing the join.
    Join {
        member: Member,
        replace: bool,
    },
    Remove(NodeId),
    /// Hand leadership to this node, or (`None`) to the first other voter by id.
    Transfer(Option<NodeId>),
    /// The leader's autopilot view (a query: nothing changes).
    AutopilotState,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum AdminDone {
    /// The membership change committed at this index.
    Changed(LogIndex),
    /// This node leads now.
    Transferred(NodeId),
    Autopilot(Box<AutopilotState>),
}
