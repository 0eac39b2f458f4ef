//! Vocabulary of the protocol: terms, indexes, node ids, log entries, hard state.
//!
//! Every number that could be confused with another has its own newtype.

use std::collections::BTreeSet;
use std::fmt;

use bytes::Bytes;

/// Milliseconds on the caller's monotonic clock. The core never reads a clock;
/// every input that depends on time carries `now`.
pub type Millis = u64;

macro_rules! number_newtype {
    ($(#[$doc:meta])* $name:ident) => {
        $(#[$doc])*
        #[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
        pub struct $name(pub u64);

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, "{}", self.0)
            }
        }
    };
}

number_newtype!(
    /// A Raft term (paper §5.1). Terms only grow.
    Term
);
number_newtype!(
    /// Position of an entry in the log; the first entry has index 1, 0 means "none".
    LogIndex
);
number_newtype!(
    /// Identity of a server; stable across restarts and address changes.
    NodeId
);

impl LogIndex {
    /// "No entry": the last index of an empty log, the commit index of a node
    /// that has committed nothing.
    pub const ZERO: LogIndex = LogIndex(0);

    /// The index after this one.
    pub fn next(self) -> LogIndex {
        LogIndex(self.0 + 1)
    }

    /// The previous index; `LogIndex::ZERO` stays zero.
    pub fn prev(self) -> LogIndex {
        LogIndex(self.0.saturating_sub(1))
    }
}

/// An entry's identity: by the Log Matching property (§5.3) two logs that hold an
/// entry with the same index and term are identical up to that index.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct LogId {
    /// Term of the leader that created the entry (§5.3).
    pub term: Term,
    /// Position of the entry in the log.
    pub index: LogIndex,
}

impl LogId {
    /// The id before the first entry (term 0, index 0): the last log id of an
    /// empty log, and what a log with no snapshot starts after.
    pub const ZERO: LogId = LogId { term: Term(0), index: LogIndex(0) };

    /// The id of the entry at `index` created in `term`.
    pub fn new(term: Term, index: LogIndex) -> LogId {
        LogId { term, index }
    }
}

impl PartialOrd for LogId {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

/// Order used by the election restriction (§5.4.1): the later last term wins; with
/// equal terms the longer log wins.
impl Ord for LogId {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        (self.term, self.index).cmp(&(other.term, other.index))
    }
}

impl fmt::Display for LogId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}-{}", self.term, self.index)
    }
}

/// State that must be durable before any message that depends on it leaves
/// (paper figure 2, "persistent state on all servers"; the log is persisted
/// separately through `LogWrite`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct HardState {
    /// The latest term this server has seen (figure 2, `currentTerm`). It only
    /// grows.
    pub current_term: Term,
    /// The candidate this server voted for in `current_term`, if any (figure 2,
    /// `votedFor`): at most one vote per term, cleared when the term changes.
    pub voted_for: Option<NodeId>,
}

/// Cluster membership as stored in the log.
///
/// A joint configuration C(old,new) has a non-empty `voters_outgoing`; decisions
/// then need a majority of `voters` *and* a majority of `voters_outgoing`
/// (thesis §4.2.1). Learners replicate but never vote or count. `staging`
/// marks learners that are to become voters once they have caught up (thesis
/// §4.2.1, "catching up new servers"); it is always a subset of `learners`,
/// and being in the configuration it survives a change of leader.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash)]
pub struct Configuration {
    /// The voters; during a joint change, those of C(new).
    pub voters: BTreeSet<NodeId>,
    /// The voters of C(old) during a joint change (thesis §4.3); empty
    /// otherwise.
    pub voters_outgoing: BTreeSet<NodeId>,
    /// Non-voting members: they receive the log but never vote nor count
    /// toward a quorum.
    pub learners: BTreeSet<NodeId>,
    /// Learners to be promoted to voter once caught up (thesis §4.2.1); always
    /// a subset of `learners`.
    pub staging: BTreeSet<NodeId>,
}

impl Configuration {
    /// A simple (not joint) configuration of `voters`, with no learners.
    pub fn new(voters: impl IntoIterator<Item = NodeId>) -> Configuration {
        Configuration { voters: voters.into_iter().collect(), ..Configuration::default() }
    }

    /// Whether this is a joint configuration C(old,new): `voters_outgoing` is
    /// not empty, and decisions need a majority of each half.
    pub fn is_joint(&self) -> bool {
        !self.voters_outgoing.is_empty()
    }

    /// Whether `id` votes in either half of the configuration.
    pub fn is_voter(&self, id: NodeId) -> bool {
        self.voters.contains(&id) || self.voters_outgoing.contains(&id)
    }

    /// Whether `id` is a learner and a voter of neither half.
    pub fn is_learner(&self, id: NodeId) -> bool {
        self.learners.contains(&id) && !self.is_voter(id)
    }

    /// Whether `id` is a learner marked to become a voter once caught up.
    pub fn is_staging(&self, id: NodeId) -> bool {
        self.staging.contains(&id) && self.is_learner(id)
    }

    /// Whether every staging mark is on a learner (no voter of either half):
    /// what a configuration from a peer must hold.
    pub fn staging_is_well_formed(&self) -> bool {
        self.staging.iter().all(|id| self.is_learner(*id))
    }

    /// Drops staging marks on anything but a learner (what arrives from a
    /// peer or a file is made to keep `staging ⊆ learners`).
    pub fn keep_staging_on_learners(mut self) -> Configuration {
        let staging = std::mem::take(&mut self.staging);
        self.staging = staging.into_iter().filter(|id| self.is_learner(*id)).collect();
        self
    }

    /// Whether `id` is a voter of either half or a learner.
    pub fn is_member(&self, id: NodeId) -> bool {
        self.is_voter(id) || self.learners.contains(&id)
    }

    /// Every member (voters of both halves and learners), ascending, once each.
    pub fn members(&self) -> BTreeSet<NodeId> {
        let mut all = self.voters.clone();
        all.extend(self.voters_outgoing.iter().copied());
        all.extend(self.learners.iter().copied());
        all
    }

    /// Whether there is no member at all: the configuration of a node that has
    /// neither been bootstrapped nor received a log or snapshot yet.
    pub fn is_empty(&self) -> bool {
        self.voters.is_empty() && self.voters_outgoing.is_empty() && self.learners.is_empty()
    }
}

impl fmt::Display for Configuration {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let ids = |set: &BTreeSet<NodeId>| set.iter().map(|id| id.0.to_string()).collect::<Vec<_>>().join(",");
        write!(f, "voters=[{}]", ids(&self.voters))?;
        if self.is_joint() {
            write!(f, " outgoing=[{}]", ids(&self.voters_outgoing))?;
        }
        if !self.learners.is_empty() {
            write!(f, " learners=[{}]", ids(&self.learners))?;
        }
        if !self.staging.is_empty() {
            write!(f, " staging=[{}]", ids(&self.staging))?;
        }
        Ok(())
    }
}

/// What an entry carries (configuration, data, or a no-op).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum EntryPayload {
    /// Appended by every new leader so that it can commit in its own term (§5.4.2).
    Noop,
    /// An opaque command for the state machine.
    Command(Bytes),
    /// A membership configuration; it takes effect when appended, not when committed.
    Config(Configuration),
    /// A step of a restore of the state machine from a user's snapshot
    /// (`Raft::restore`, `docs/design/restore.md`). Opaque to the core, like a
    /// command: only the apply side reads it.
    Restore(RestoreStep),
}

/// One entry of a restore through the log: `Begin`, the chunks in order, then
/// `Commit`, all proposed by one leader in one term. Every node applies them in
/// log order, so the restored state takes effect at `Commit`'s index everywhere.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RestoreStep {
    /// Restore `id` of `len` bytes, whose CRC-32C is `crc32c`, starts; any
    /// other unfinished restore is abandoned.
    Begin {
        /// Names this restore; every step of it carries the same id.
        id: u64,
        /// Length of the whole image, in bytes.
        len: u64,
        /// CRC-32C (Castagnoli) of the whole image.
        crc32c: u32,
    },
    /// The `seq`th chunk (from 0) of restore `id`.
    Chunk {
        /// The restore this chunk belongs to.
        id: u64,
        /// Position of the chunk in the image, counted in chunks from 0.
        seq: u64,
        /// The chunk's bytes, the next ones of the image.
        data: Bytes,
    },
    /// Replace the state with restore `id`'s bytes, sent in `chunks` chunks.
    Commit {
        /// The restore to finish.
        id: u64,
        /// How many chunks the restore was sent in.
        chunks: u64,
    },
}

impl RestoreStep {
    /// The restore this step belongs to.
    pub fn id(&self) -> u64 {
        match self {
            RestoreStep::Begin { id, .. } | RestoreStep::Chunk { id, .. } | RestoreStep::Commit { id, .. } => *id,
        }
    }

    /// Approximate size on the wire (see `Entry::size_bytes`).
    pub fn size_bytes(&self) -> usize {
        match self {
            RestoreStep::Begin { .. } => 21,
            RestoreStep::Chunk { data, .. } => 20 + data.len(),
            RestoreStep::Commit { .. } => 17,
        }
    }
}

/// One log entry (figure 2): a payload at a position, created by the leader of
/// a term.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Entry {
    /// Term of the leader that appended it; terms never go down along a log.
    pub term: Term,
    /// Position in the log, from 1.
    pub index: LogIndex,
    /// What the entry carries.
    pub payload: EntryPayload,
}

impl Entry {
    /// The entry's identity: its term and index.
    pub fn log_id(&self) -> LogId {
        LogId::new(self.term, self.index)
    }

    /// Approximate size on the wire, used to bound appends by bytes.
    pub fn size_bytes(&self) -> usize {
        const HEADER_BYTES: usize = 24;
        HEADER_BYTES
            + match &self.payload {
                EntryPayload::Noop => 0,
                EntryPayload::Command(data) => data.len(),
                EntryPayload::Config(config) => 8 * config.members().len(),
                EntryPayload::Restore(step) => step.size_bytes(),
            }
    }
}

/// What a snapshot covers: everything up to and including `last_log_id`, and the
/// configuration in force at that index (thesis §4.1).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SnapshotMeta {
    /// The last entry the snapshot covers (paper §7, "last included index" and
    /// "last included term").
    pub last_log_id: LogId,
    /// The configuration in force at `last_log_id.index` (thesis §5.1): the
    /// newest configuration entry at or before it.
    pub config: Configuration,
}
