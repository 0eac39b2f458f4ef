//! The operations that must run on the leader besides writes: membership
//! and leadership changes, with what each answers when it is done.

use raftkv_raft::{LogIndex, NodeId};

/// A node asking to become a member, and where it listens.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Member {
    pub id: NodeId,
    pub raft_addr: String,
    pub http_addr: String,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum AdminOp {
    /// Add a voter (after recording its addresses in the replicated peers).
    Join(Member),
    Remove(NodeId),
    /// Hand leadership to this node, or (`None`) to the first other voter by id.
    Transfer(Option<NodeId>),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AdminDone {
    /// The membership change committed at this index.
    Changed(LogIndex),
    /// This node leads now.
    Transferred(NodeId),
}
