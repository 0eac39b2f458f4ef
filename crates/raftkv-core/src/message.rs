//! Messages exchanged between cores. The runtime owns their encoding; the core
//! treats every field as untrusted input.

use bytes::Bytes;

use crate::types::{Entry, EntryPayload, LogId, LogIndex, SnapshotMeta, Term};

/// Identifier a runtime gives a read so that it can match `ReadReady`.
pub type ReadId = u64;

/// A message from one core to another: the RPCs of figure 2 and figure 13,
/// and those of the thesis' extensions (leadership transfer, reads).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Message {
    /// A candidate asks for a vote, or a pre-candidate for a pre-vote.
    RequestVote(RequestVote),
    /// The answer to a `RequestVote`.
    RequestVoteResponse(RequestVoteResponse),
    /// The leader replicates entries, or sends a heartbeat.
    AppendEntries(AppendEntries),
    /// The answer to an `AppendEntries`.
    AppendEntriesResponse(AppendEntriesResponse),
    /// The leader sends a chunk of its snapshot.
    InstallSnapshot(InstallSnapshot),
    /// The answer to an `InstallSnapshot` chunk.
    InstallSnapshotResponse(InstallSnapshotResponse),
    /// Leadership transfer: the receiver starts an election at once (thesis §3.10).
    TimeoutNow {
        /// The sending leader's term.
        term: Term,
    },
    /// A follower asks the leader for a read index on behalf of one of its clients.
    ReadIndexRequest {
        /// The follower's current term: only the leader of this term serves
        /// the read.
        term: Term,
        /// The follower's id for the read, echoed in the answer.
        read_id: ReadId,
    },
    /// `index` is `None` when the leader could not confirm the read.
    ReadIndexResponse {
        /// The request's term, echoed.
        term: Term,
        /// The request's read id, echoed.
        read_id: ReadId,
        /// The read index (thesis §6.4), or `None` if the read was refused.
        index: Option<LogIndex>,
    },
}

/// Terms, indexes and offsets at or above this bound are refused as corrupt or
/// hostile input. No real cluster comes near 2^62, and the bound keeps every
/// `+ 1` and `+ len` the core does on message fields far from overflow.
pub const MAX_WIRE_NUMBER: u64 = 1 << 62;

impl Message {
    /// Whether every term, index and offset in the message is below
    /// `MAX_WIRE_NUMBER` (2^62); the core drops messages that are not.
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

    /// The term the message carries: the sender's current term, except for a
    /// pre-vote request (the term it would campaign in) and echoed terms.
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
    /// The candidate's last log entry, for the election restriction (§5.4.1).
    pub last_log_id: LogId,
    /// Whether this is a pre-vote (thesis §9.6): granting one changes neither
    /// the voter's term nor its vote.
    pub pre_vote: bool,
    /// Set by a candidate started by TimeoutNow: voters skip the "heard from a
    /// leader recently" check, which exists to stop disruptive elections.
    pub leadership_transfer: bool,
}

/// The answer to a `RequestVote` (figure 2).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RequestVoteResponse {
    /// The voter's current term; for a granted pre-vote, the term asked about.
    pub term: Term,
    /// Whether the vote (or pre-vote) is granted.
    pub granted: bool,
    /// The request's `pre_vote`, echoed.
    pub pre_vote: bool,
}

/// AppendEntries (figure 2). With no entries it is a heartbeat.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AppendEntries {
    /// The leader's term.
    pub term: Term,
    /// The entry just before `entries` (figure 2, `prevLogIndex` and
    /// `prevLogTerm`): the follower accepts only if its log holds it.
    pub prev_log_id: LogId,
    /// The entries to store after `prev_log_id`; empty for a heartbeat.
    pub entries: Vec<Entry>,
    /// The leader's commit index (figure 2, `leaderCommit`).
    pub leader_commit: LogIndex,
    /// The leader's heartbeat round when this message left; echoed in the response.
    /// A response for round `r` proves the follower accepted this leader at a time
    /// after round `r` began, which confirms ReadIndex reads and extends the lease.
    pub round: u64,
}

/// A follower's answer to an `AppendEntries` (figure 2), or to an
/// `InstallSnapshot` of a stale term.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AppendEntriesResponse {
    /// The follower's current term.
    pub term: Term,
    /// The `round` of the request answered (0 when answering an
    /// `InstallSnapshot`).
    pub round: u64,
    /// Whether the entries were accepted, and how far the logs match.
    pub result: AppendResult,
}

/// The outcome of an `AppendEntries` on the follower.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AppendResult {
    /// The follower's log matches the leader's through `match_index`: the request's
    /// `prev_log_id.index + entries.len()`, never the follower's own last index.
    Success {
        /// The last index known to match the leader's log.
        match_index: LogIndex,
    },
    /// The log did not contain `rejected` with the expected term. `hint` is the last
    /// entry at or below `rejected` whose term is at most the expected term, so the
    /// leader can skip a whole term at once (etcd's findConflictByTerm).
    Conflict {
        /// The request's `prev_log_id.index`.
        rejected: LogIndex,
        /// Where the leader may look for a match next.
        hint: LogId,
    },
    /// The receiver's term is higher; only `term` matters.
    StaleTerm,
}

/// One chunk of a snapshot (figure 13, with offset and done).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct InstallSnapshot {
    /// The leader's term.
    pub term: Term,
    /// The snapshot the chunk belongs to (last included entry and its
    /// configuration).
    pub meta: SnapshotMeta,
    /// Where `data` starts in the snapshot's data, in bytes.
    pub offset: u64,
    /// The chunk's bytes.
    pub data: Bytes,
    /// Whether this is the last chunk.
    pub done: bool,
}

/// A follower's answer to an `InstallSnapshot` chunk.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct InstallSnapshotResponse {
    /// The follower's current term.
    pub term: Term,
    /// The snapshot answered about, by its last included entry.
    pub snapshot: LogId,
    /// The offset the receiver expects next; after `done`, the snapshot is installed.
    pub next_offset: u64,
    /// Whether the follower now holds everything the snapshot covers
    /// (installed, or already committed there): the stream is over.
    pub done: bool,
}
