//! Deliberate protocol bugs, compiled only with the `bug-injection` feature.
//!
//! The simulator turns one on to prove that its checkers catch it. Normal builds
//! contain none of this code. The switch is thread-local so that parallel test
//! threads cannot see each other's bug.

use std::cell::Cell;

/// One deliberate bug, named for the rule it breaks.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum InjectedBug {
    /// Commit an entry of an earlier term by counting its replicas (§5.4.2 forbids it).
    CommitOldTermByCount,
    /// Grant a vote without the election restriction's log check (§5.4.1).
    VoteWithoutLogCheck,
    /// Send a vote before the vote is durable.
    VoteBeforePersist,
    /// Answer ReadIndex at once, without the heartbeat round that confirms leadership.
    ReadIndexWithoutHeartbeat,
    /// Count learners in the commit quorum.
    CountLearnerInQuorum,
    /// Let a configuration take effect when committed instead of when appended.
    ConfigOnCommit,
    /// A follower acknowledges an append at once, before the write it vouches for
    /// is durable.
    AckAppendBeforePersist,
    /// The leader counts its own entries in the commit quorum before they are
    /// durable (its last index instead of its durable index).
    LeaderCountsUnsyncedSelf,
    /// A lease lasts the maximum election timeout: longer than the minimum
    /// election timeout for which followers refuse votes after hearing the leader.
    LeaseOutlivesVoteGuard,
    /// (In the runtime's driver.) A snapshot install keeps the log entries
    /// that disagree with it: the suffix is neither cut before the snapshot is
    /// stored nor on start.
    InstallKeepsConflictingSuffix,
    /// The leader promotes a staging learner without the promotion rule's
    /// lag and stable-period tests (thesis §4.2.1): as soon as it answered.
    PromoteBeforeCaughtUp,
    /// A follower serves the reads waiting for its next ReadIndex request
    /// with the answer to the one in flight, which the leader may have
    /// given before they arrived (thesis §6.4).
    ForwardedAnswerServesLaterReads,
}

impl InjectedBug {
    /// Every bug, in a fixed order.
    pub const ALL: [InjectedBug; 12] = [
        InjectedBug::CommitOldTermByCount,
        InjectedBug::VoteWithoutLogCheck,
        InjectedBug::VoteBeforePersist,
        InjectedBug::ReadIndexWithoutHeartbeat,
        InjectedBug::CountLearnerInQuorum,
        InjectedBug::ConfigOnCommit,
        InjectedBug::AckAppendBeforePersist,
        InjectedBug::LeaderCountsUnsyncedSelf,
        InjectedBug::LeaseOutlivesVoteGuard,
        InjectedBug::InstallKeepsConflictingSuffix,
        InjectedBug::PromoteBeforeCaughtUp,
        InjectedBug::ForwardedAnswerServesLaterReads,
    ];

    /// The bug's name on the simulator's command line (e.g. `"commit-old-term"`).
    pub fn name(self) -> &'static str {
        match self {
            InjectedBug::CommitOldTermByCount => "commit-old-term",
            InjectedBug::VoteWithoutLogCheck => "vote-without-log-check",
            InjectedBug::VoteBeforePersist => "vote-before-persist",
            InjectedBug::ReadIndexWithoutHeartbeat => "read-index-without-heartbeat",
            InjectedBug::CountLearnerInQuorum => "count-learner-in-quorum",
            InjectedBug::ConfigOnCommit => "config-on-commit",
            InjectedBug::AckAppendBeforePersist => "ack-append-before-persist",
            InjectedBug::LeaderCountsUnsyncedSelf => "leader-counts-unsynced-self",
            InjectedBug::LeaseOutlivesVoteGuard => "lease-outlives-vote-guard",
            InjectedBug::InstallKeepsConflictingSuffix => "install-keeps-conflicting-suffix",
            InjectedBug::PromoteBeforeCaughtUp => "promote-before-caught-up",
            InjectedBug::ForwardedAnswerServesLaterReads => "forwarded-answer-serves-later-reads",
        }
    }

    /// The bug called `name` (see [`InjectedBug::name`]), if any.
    pub fn from_name(name: &str) -> Option<InjectedBug> {
        InjectedBug::ALL.into_iter().find(|bug| bug.name() == name)
    }
}

thread_local! {
    static ACTIVE: Cell<Option<InjectedBug>> = const { Cell::new(None) };
}

/// Turns on `bug` (or none) for every core driven from this thread.
pub fn set_active(bug: Option<InjectedBug>) {
    ACTIVE.with(|active| active.set(bug));
}

/// Whether `bug` is the one on for this thread.
pub fn enabled(bug: InjectedBug) -> bool {
    ACTIVE.with(|active| active.get() == Some(bug))
}

/// Whether any deliberate bug is on for this thread.
pub fn any_enabled() -> bool {
    ACTIVE.with(|active| active.get().is_some())
}

/// How many times an injected bug changed a decision (to tell "not triggered"
/// from "triggered but not caught").
pub static TRIGGERED: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

/// Counts one decision changed by an injected bug, in [`TRIGGERED`].
pub fn note_triggered() {
    TRIGGERED.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
}
