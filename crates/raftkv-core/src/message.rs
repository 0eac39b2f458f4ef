//! Messages exchanged between cores. The runtime owns their encoding; the core
//! treats every field as untrusted input.

use bytes::Bytes;

use crate::types::{Entry, EntryPayload, LogId, LogIndex, SnapshotMeta, Term};

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

/// Terms, indexes and offsets at or above this bound are refused as corrupt or
/// hostile input. No real cluster comes near 2^62, and the bound keeps every
/// `+ 1` and `+ len` the core does on message fields far from overflow.
pub const MAX_WIRE_NUMBER: u64 = 1 << 62;

impl Message {
    /// Whether every term, index and offset in the message is below
    /// [`MAX_WIRE_NUMBER`]; the core drops messages that are not.
    pub fn is_well_formed(&self) -> bool {
        let ok = |n: u64| n < MAX_WIRE_NUMBER;
        let id_ok = |id: &LogId| ok(id.term.0) && ok(id.index.0);
        ok(self.term().0)
            && match self {
                Message::RequestVote(m) => id_ok(&m.last_log_id),
                Message::RequestVoteResponse(_) | Message::TimeoutNow { .. } => true,
                Message::AppendEntries(m) => {
                    id_ok(&m.prev_log_id)
                        && ok(m.leader_commit.0)
                        && ok(m.entries.len() as u64)
                        && m.entries.iter().all(|e| match &e.payload {
                            EntryPayload::Config(config) => config.staging_is_well_formed(),
                            _ => true,
                        })
                }
                Message::AppendEntriesResponse(m) => match m.result {
                    AppendResult::Success { match_index } => ok(match_index.0),
                    AppendResult::Conflict { rejected, hint } => ok(rejected.0) && id_ok(&hint),
                    AppendResult::StaleTerm => true,
                },
                Message::InstallSnapshot(m) => {
                    id_ok(&m.meta.last_log_id)
                        && ok(m.offset)
                        && ok(m.data.len() as u64)
                        && m.meta.config.staging_is_well_formed()
                }
                Message::InstallSnapshotResponse(m) => id_ok(&m.snapshot) && ok(m.next_offset),
                Message::ReadIndexRequest { .. } => true,
                Message::ReadIndexResponse { index, .. } => index.is_none_or(|i| ok(i.0)),
            }
    }

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
