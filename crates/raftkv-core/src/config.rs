//! Protocol settings of one core, validated before use.

use std::fmt;

use crate::types::NodeId;

/// Upper bound on every timeout, so timer arithmetic never nears overflow.
pub const MAX_TIMEOUT_MS: u64 = 3_600_000;

/// Protocol settings of one core. Times are milliseconds of the caller's
/// clock. [`CoreConfig::validate`] checks them (`Core::new` and
/// `Core::reload_config` call it).
#[derive(Clone, Debug)]
pub struct CoreConfig {
    /// This node's id.
    pub id: NodeId,
    /// How often a leader sends heartbeats (default 100 ms).
    pub heartbeat_interval_ms: u64,
    /// Election timeouts are drawn uniformly from `[min, max)` (paper §5.2).
    /// This is `min` (default 1000 ms); it also bounds leases and how long a
    /// node refuses votes after hearing a leader (thesis §6.4.1, §4.2.3).
    pub election_timeout_min_ms: u64,
    /// The exclusive upper end of the election timeout range (default 2000 ms).
    pub election_timeout_max_ms: u64,
    /// PreVote (thesis §9.6): a node first asks whether it could win, without
    /// bumping its term, so a partitioned node cannot disrupt the cluster on return.
    pub pre_vote: bool,
    /// A leader that has not heard from a quorum within an election timeout steps
    /// down (thesis §6.2). Lease reads require it.
    pub check_quorum: bool,
    /// Appends in flight to one peer before the leader waits for answers.
    pub max_inflight_appends: usize,
    /// Most entries in one AppendEntries (default 512).
    pub max_entries_per_append: usize,
    /// Most bytes of entries in one AppendEntries, as `Entry::size_bytes`
    /// counts them (default 1 MiB); a larger single entry still goes alone.
    pub max_bytes_per_append: usize,
    /// Bound on how much faster a follower's clock may run than the leader's over
    /// one election timeout; the lease ends this much earlier.
    pub lease_clock_drift_ms: u64,
    /// A staging learner counts as caught up while its log is within this
    /// many entries of the leader's (and it answered within an election
    /// timeout). The default, one append's worth, lets its first round as a
    /// voter finish within a heartbeat (thesis §4.2.1).
    pub promotion_max_lag: u64,
    /// How long a staging learner must stay caught up, as one leader sees
    /// it, before that leader promotes it to voter.
    pub promotion_stable_ms: u64,
}

impl CoreConfig {
    /// The defaults for node `id`.
    pub fn new(id: NodeId) -> CoreConfig {
        CoreConfig {
            id,
            heartbeat_interval_ms: 100,
            election_timeout_min_ms: 1000,
            election_timeout_max_ms: 2000,
            pre_vote: true,
            check_quorum: true,
            max_inflight_appends: 64,
            max_entries_per_append: 512,
            max_bytes_per_append: 1 << 20,
            lease_clock_drift_ms: 100,
            promotion_max_lag: 512,
            promotion_stable_ms: 5_000,
        }
    }

    /// Checks every setting and how they relate (positive intervals and limits,
    /// heartbeat < minimum election timeout < maximum, drift below the minimum,
    /// timeouts at most one hour); the error names the first one broken.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let fail = |reason: &'static str| Err(ConfigError { reason });
        if self.heartbeat_interval_ms == 0 {
            return fail("heartbeat_interval_ms must be positive");
        }
        if self.election_timeout_max_ms > MAX_TIMEOUT_MS {
            return fail("timeouts must be at most one hour");
        }
        if self.election_timeout_min_ms <= self.heartbeat_interval_ms {
            return fail("election_timeout_min_ms must exceed heartbeat_interval_ms");
        }
        if self.election_timeout_max_ms <= self.election_timeout_min_ms {
            return fail("election_timeout_max_ms must exceed election_timeout_min_ms");
        }
        if self.max_inflight_appends == 0 || self.max_entries_per_append == 0 || self.max_bytes_per_append == 0 {
            return fail("append limits must be positive");
        }
        if self.lease_clock_drift_ms >= self.election_timeout_min_ms {
            return fail("lease_clock_drift_ms must be below election_timeout_min_ms");
        }
        if self.promotion_max_lag == 0 {
            return fail("promotion_max_lag must be positive");
        }
        if self.promotion_stable_ms < self.election_timeout_max_ms || self.promotion_stable_ms > MAX_TIMEOUT_MS {
            // A whole election timeout of answers, not one lucky burst.
            return fail("promotion_stable_ms must be between election_timeout_max_ms and one hour");
        }
        Ok(())
    }
}

/// Settings the core cannot run with, or durable state it cannot start from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConfigError {
    /// What is wrong, in words.
    pub reason: &'static str,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "invalid raft configuration: {}", self.reason)
    }
}

impl std::error::Error for ConfigError {}
