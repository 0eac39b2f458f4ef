//! Settings of a `Raft` node (DESIGN.md section 4 defaults).

use std::time::Duration;

use raft_core::{CoreConfig, NodeId};

#[derive(Clone, Debug)]
pub struct Config {
    pub id: NodeId,
    pub heartbeat_interval: Duration,
    /// Election timeouts are drawn from `[min, max)`.
    pub election_timeout_min: Duration,
    pub election_timeout_max: Duration,
    pub pre_vote: bool,
    pub check_quorum: bool,
    pub max_inflight_appends: usize,
    pub max_entries_per_append: usize,
    pub max_bytes_per_append: usize,
    /// How much earlier a lease ends to cover clock drift between nodes.
    pub lease_clock_drift: Duration,
    /// How often the runtime ticks the core's timers.
    pub tick_interval: Duration,
    /// Most proposals taken into one log write.
    pub max_batch: usize,
    /// A snapshot is taken once this many entries were applied since the last.
    pub snapshot_threshold: u64,
    /// Entries kept in the log behind a snapshot, for followers slightly behind.
    pub trailing_logs: u64,
    /// Bytes of snapshot data per InstallSnapshot message.
    pub snapshot_chunk_bytes: usize,
}

impl Config {
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
            trailing_logs: 10240,
            snapshot_chunk_bytes: 1 << 20,
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
            ..Config::new(id)
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
        }
    }
}
