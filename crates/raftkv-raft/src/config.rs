//! Settings of a `Raft` node and their defaults.

use std::time::Duration;

use raftkv_core::{CoreConfig, NodeId};
use raftkv_driver::{DriverConfig, SnapshotPolicy};

/// Bounds of the snapshot and retention settings (see `Config::validate`).
pub const MAX_SNAPSHOT_THRESHOLD: u64 = 100_000_000;
pub const MAX_SNAPSHOT_INTERVAL: Duration = Duration::from_secs(7 * 24 * 3600);
pub const MAX_SNAPSHOT_LOG_BYTES: u64 = 16 << 30;
pub const MAX_TRAILING_LOGS: u64 = 10_000_000;

/// Settings of a `Raft` node. Start from [`Config::new`] (the defaults) or
/// [`Config::fast`] (tests and demos) and change fields; [`Config::validate`]
/// checks them, and `Raft::new` refuses a node whose settings do not pass.
#[derive(Clone, Debug)]
pub struct Config {
    /// This node's id, the same across restarts.
    pub id: NodeId,
    /// How often the leader sends heartbeats (default 100 ms); below
    /// `election_timeout_min`.
    pub heartbeat_interval: Duration,
    /// Election timeouts are drawn from `[min, max)`.
    pub election_timeout_min: Duration,
    /// The exclusive upper end of the election timeout range (default 2 s).
    pub election_timeout_max: Duration,
    /// PreVote (thesis §9.6): a node asks whether it could win before it
    /// raises its term, so one that was cut off does not disrupt the cluster
    /// when it returns (default on). Fixed while the node runs.
    pub pre_vote: bool,
    /// CheckQuorum (thesis §6.2): a leader that has not heard from a quorum
    /// for an election timeout steps down (default on). `ReadMode::Lease`
    /// needs it. Fixed while the node runs.
    pub check_quorum: bool,
    /// AppendEntries in flight to one follower before the leader waits for
    /// answers (default 64).
    pub max_inflight_appends: usize,
    /// Most entries in one AppendEntries (default 512).
    pub max_entries_per_append: usize,
    /// Most bytes of entries in one AppendEntries (default 1 MiB); a larger
    /// entry goes alone. `Raft::restore` proposes chunks of half this.
    pub max_bytes_per_append: usize,
    /// How much earlier a lease ends to cover clock drift between nodes.
    pub lease_clock_drift: Duration,
    /// How often the runtime ticks the core's timers.
    pub tick_interval: Duration,
    /// Most proposals taken into one log write.
    pub max_batch: usize,
    /// A snapshot is taken once this many entries were applied since the last...
    pub snapshot_threshold: u64,
    /// ...but at most once per interval (jittered by up to a quarter of it),
    /// unless the entries applied since the last snapshot reach
    /// `snapshot_log_bytes`: the core keeps the log in memory, so a long burst
    /// of writes must not wait for the timer.
    pub snapshot_interval: Duration,
    /// Bytes of log (entry payloads) since the last snapshot that force one
    /// regardless of `snapshot_interval`.
    pub snapshot_log_bytes: u64,
    /// Entries kept in the log behind a snapshot, for followers slightly behind.
    pub trailing_logs: u64,
    /// Bytes of snapshot data per InstallSnapshot message.
    pub snapshot_chunk_bytes: usize,
    /// `add_voter` promotes its learner once the learner's log is within this
    /// many entries of the leader's...
    pub promotion_max_lag: u64,
    /// ...and has stayed so, answering, for this long (at least
    /// `election_timeout_max`).
    pub promotion_stable: Duration,
    /// Largest snapshot `Raft::restore` takes, and the most a node buffers
    /// while a restore goes through the log (in memory). Give every node the
    /// same value or more: a node that cannot hold a restore the leader
    /// proposed stops rather than diverge (default 1 GiB).
    pub max_restore_bytes: u64,
}

impl Config {
    /// The defaults for node `id`: heartbeats every 100 ms, election timeouts
    /// of 1 to 2 s, PreVote and CheckQuorum on, a snapshot once 8192 entries
    /// were applied (at most one per 2 minutes, unless 64 MiB of log piled up).
    pub fn new(id: NodeId) -> Config {
        Config {
            id,
            heartbeat_interval: Duration::from_millis(100),
            election_timeout_min: Duration::from_millis(1000),
            election_timeout_max: Duration::from_millis(2000),
            pre_vote: true,
            check_quorum: true,
            max_inflight_appends: 64,
            max_entries_per_append: 512,
            max_bytes_per_append: 1 << 20,
            lease_clock_drift: Duration::from_millis(100),
            tick_interval: Duration::from_millis(10),
            max_batch: 4096,
            snapshot_threshold: 8192,
            snapshot_interval: Duration::from_secs(120),
            snapshot_log_bytes: 64 << 20,
            trailing_logs: 10240,
            snapshot_chunk_bytes: 1 << 20,
            promotion_max_lag: 512,
            promotion_stable: Duration::from_secs(5),
            max_restore_bytes: 1 << 30,
        }
    }

    /// Timeouts scaled down for tests and demos on one machine.
    pub fn fast(id: NodeId) -> Config {
        Config {
            heartbeat_interval: Duration::from_millis(20),
            election_timeout_min: Duration::from_millis(200),
            election_timeout_max: Duration::from_millis(400),
            lease_clock_drift: Duration::from_millis(20),
            tick_interval: Duration::from_millis(5),
            promotion_stable: Duration::from_secs(1),
            ..Config::new(id)
        }
    }

    /// Applies the settings in `reload` that are set, and checks the result.
    pub fn reloaded(&self, reload: &ReloadableConfig) -> Result<Config, String> {
        let mut next = self.clone();
        let ReloadableConfig {
            trailing_logs,
            snapshot_threshold,
            snapshot_interval,
            snapshot_log_bytes,
            heartbeat_interval,
            election_timeout_min,
            election_timeout_max,
            promotion_max_lag,
            promotion_stable,
        } = reload.clone();
        next.trailing_logs = trailing_logs.unwrap_or(next.trailing_logs);
        next.snapshot_threshold = snapshot_threshold.unwrap_or(next.snapshot_threshold);
        next.snapshot_interval = snapshot_interval.unwrap_or(next.snapshot_interval);
        next.snapshot_log_bytes = snapshot_log_bytes.unwrap_or(next.snapshot_log_bytes);
        next.heartbeat_interval = heartbeat_interval.unwrap_or(next.heartbeat_interval);
        next.election_timeout_min = election_timeout_min.unwrap_or(next.election_timeout_min);
        next.election_timeout_max = election_timeout_max.unwrap_or(next.election_timeout_max);
        next.promotion_max_lag = promotion_max_lag.unwrap_or(next.promotion_max_lag);
        next.promotion_stable = promotion_stable.unwrap_or(next.promotion_stable);
        next.validate()?;
        Ok(next)
    }

    /// Checks the settings the core does not see, then the core's.
    pub fn validate(&self) -> Result<(), String> {
        // Upper bounds too: the log lives in memory until a snapshot, so a
        // setting that puts compaction off for good (2^64 - 1) is refused.
        if self.snapshot_threshold == 0 || self.snapshot_threshold > MAX_SNAPSHOT_THRESHOLD {
            return Err(format!("snapshot_threshold must be between 1 and {MAX_SNAPSHOT_THRESHOLD}"));
        }
        if self.snapshot_interval.is_zero() || self.snapshot_interval > MAX_SNAPSHOT_INTERVAL {
            return Err(format!("snapshot_interval must be positive and at most {MAX_SNAPSHOT_INTERVAL:?}"));
        }
        if self.snapshot_log_bytes == 0 || self.snapshot_log_bytes > MAX_SNAPSHOT_LOG_BYTES {
            return Err(format!("snapshot_log_bytes must be between 1 and {MAX_SNAPSHOT_LOG_BYTES}"));
        }
        if self.trailing_logs > MAX_TRAILING_LOGS {
            return Err(format!("trailing_logs must be at most {MAX_TRAILING_LOGS}"));
        }
        if self.tick_interval.is_zero() || self.tick_interval > self.heartbeat_interval {
            return Err(format!(
                "tick_interval ({:?}) must be positive and at most heartbeat_interval ({:?})",
                self.tick_interval, self.heartbeat_interval
            ));
        }
        self.core_config().validate().map_err(|e| e.reason.to_string())
    }

    fn millis(duration: Duration) -> u64 {
        duration.as_millis().min(u64::MAX as u128) as u64
    }

    /// When the apply side takes snapshots on its own.
    pub(crate) fn snapshot_policy(&self) -> SnapshotPolicy {
        SnapshotPolicy {
            threshold: self.snapshot_threshold.max(1),
            interval_ms: Config::millis(self.snapshot_interval),
            log_bytes: self.snapshot_log_bytes.max(1),
        }
    }

    /// How long a caller waits for a leadership transfer: the target's
    /// election after TimeoutNow, with room for a slow round.
    pub(crate) fn transfer_wait_ms(&self) -> u64 {
        Config::millis(self.election_timeout_min + self.election_timeout_max)
    }

    pub(crate) fn driver_config(&self, check_snapshots: bool, read_id_seed: u64) -> DriverConfig {
        DriverConfig {
            trailing_logs: self.trailing_logs,
            check_snapshots,
            transfer_wait_ms: self.transfer_wait_ms(),
            read_id_seed,
        }
    }

    pub(crate) fn core_config(&self) -> CoreConfig {
        let ms = |d: Duration| d.as_millis().min(u64::MAX as u128) as u64;
        CoreConfig {
            id: self.id,
            heartbeat_interval_ms: ms(self.heartbeat_interval),
            election_timeout_min_ms: ms(self.election_timeout_min),
            election_timeout_max_ms: ms(self.election_timeout_max),
            pre_vote: self.pre_vote,
            check_quorum: self.check_quorum,
            max_inflight_appends: self.max_inflight_appends,
            max_entries_per_append: self.max_entries_per_append,
            max_bytes_per_append: self.max_bytes_per_append,
            lease_clock_drift_ms: ms(self.lease_clock_drift),
            promotion_max_lag: self.promotion_max_lag,
            promotion_stable_ms: ms(self.promotion_stable),
        }
    }
}

/// The settings that may change while a node runs (hashicorp's
/// `ReloadableConfig`); `None` keeps the current value. See `Raft::reload_config`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ReloadableConfig {
    /// New [`Config::trailing_logs`] (entries).
    pub trailing_logs: Option<u64>,
    /// New [`Config::snapshot_threshold`] (entries).
    pub snapshot_threshold: Option<u64>,
    /// New [`Config::snapshot_interval`].
    pub snapshot_interval: Option<Duration>,
    /// New [`Config::snapshot_log_bytes`] (bytes).
    pub snapshot_log_bytes: Option<u64>,
    /// New [`Config::heartbeat_interval`].
    pub heartbeat_interval: Option<Duration>,
    /// New [`Config::election_timeout_min`]; a lease never gets longer than
    /// the shortest this node ran with.
    pub election_timeout_min: Option<Duration>,
    /// New [`Config::election_timeout_max`].
    pub election_timeout_max: Option<Duration>,
    /// New [`Config::promotion_max_lag`] (entries).
    pub promotion_max_lag: Option<u64>,
    /// New [`Config::promotion_stable`].
    pub promotion_stable: Option<Duration>,
}
