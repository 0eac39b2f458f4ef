//! Messages exchanged between cores. The runtime owns their encoding; the core
//! treats every field as untrusted input.

use bytes::Bytes;

use crate::types::{Entry, LogId, LogIndex, SnapshotMeta, Term};

/// Identifier a runtime gives a read so that it can match `ReadReady`.
pub type ReadId = u64;

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Message {
    RequestVote(RequestVote),
    RequestVoteResponse(RequestVoteResponse),
    AppendEntries(AppendEntries),
    AppendEntriesResponse(AppendEntriesResponse),
    InstallSnapshot(InstallSnapshot),
    InstallSnapshotResponse(InstallSnapshotResponse),
    /// Leadership transfer: the receiver starts an election at once (thesis §3.10).
    TimeoutNow {
        term: Term,
    },
    /// A follower asks the leader for a read index on behalf of one of its clients.
    ReadIndexRequest {
        term: Term,
        read_id: ReadId,
    },
    /// `index` is `None` when the leader could not confirm the read.
    ReadIndexResponse {
        term: Term,
        read_id: ReadId,
        index: Option<LogIndex>,
    },
}

impl Message {
    pub fn term(&self) -> Term {
        match self {
            Message::RequestVote(m) => m.term,
            Message::RequestVoteResponse(m) => m.term,
            Message::AppendEntries(m) => m.term,
            Message::AppendEntriesResponse(m) => m.term,
            Message::InstallSnapshot(m) => m.term,
            Message::InstallSnapshotResponse(m) => m.term,
            Message::TimeoutNow { term } => *term,
            Message::ReadIndexRequest { term, .. } => *term,
            Message::ReadIndexResponse { term, .. } => *term,
        }
    }

    /// Short name for traces.
    pub fn kind(&self) -> &'static str {
        match self {
            Message::RequestVote(m) if m.pre_vote => "PreVote",
            Message::RequestVote(_) => "RequestVote",
            Message::RequestVoteResponse(m) if m.pre_vote => "PreVoteResp",
            Message::RequestVoteResponse(_) => "RequestVoteResp",
            Message::AppendEntries(_) => "AppendEntries",
            Message::AppendEntriesResponse(_) => "AppendEntriesResp",
            Message::InstallSnapshot(_) => "InstallSnapshot",
            Message::InstallSnapshotResponse(_) => "InstallSnapshotResp",
            Message::TimeoutNow { .. } => "TimeoutNow",
            Message::ReadIndexRequest { .. } => "ReadIndex",
            Message::ReadIndexResponse { .. } => "ReadIndexResp",
        }
    }
}

/// RequestVote (figure 2), also used for PreVote (thesis §9.6).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RequestVote {
    /// For a pre-vote: the term the candidate *would* use; its own term is unchanged.
    pub term: Term,
    pub last_log_id: LogId,
    pub pre_vote: bool,
    /// Set by a candidate started by TimeoutNow: voters skip the "heard from a
    /// leader recently" check, which exists to stop disruptive elections.
    pub leadership_transfer: bool,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RequestVoteResponse {
    pub term: Term,
    pub granted: bool,
    pub pre_vote: bool,
}

/// AppendEntries (figure 2). With no entries it is a heartbeat.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AppendEntries {
    pub term: Term,
    pub prev_log_id: LogId,
    pub entries: Vec<Entry>,
    pub leader_commit: LogIndex,
    /// The leader's heartbeat round when this message left; echoed in the response.
    /// A response for round `r` proves the follower accepted this leader at a time
    /// after round `r` began, which confirms ReadIndex reads and extends the lease.
    pub round: u64,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AppendEntriesResponse {
    pub term: Term,
    pub round: u64,
    pub result: AppendResult,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AppendResult {
    /// The follower's log matches the leader's through `match_index`: the request's
    /// `prev_log_id.index + entries.len()`, never the follower's own last index.
    Success { match_index: LogIndex },
    /// The log did not contain `rejected` with the expected term. `hint` is the last
    /// entry at or below `rejected` whose term is at most the expected term, so the
    /// leader can skip a whole term at once (etcd's findConflictByTerm).
    Conflict { rejected: LogIndex, hint: LogId },
    /// The receiver's term is higher; only `term` matters.
    StaleTerm,
}

/// One chunk of a snapshot (figure 13, with offset and done).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct InstallSnapshot {
    pub term: Term,
    pub meta: SnapshotMeta,
    pub offset: u64,
    pub data: Bytes,
    pub done: bool,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct InstallSnapshotResponse {
    pub term: Term,
    pub snapshot: LogId,
    /// The offset the receiver expects next; after `done`, the snapshot is installed.
    pub next_offset: u64,
    pub done: bool,
}
