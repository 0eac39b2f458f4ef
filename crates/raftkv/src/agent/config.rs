//! What an agent is started with, and why it may fail to start.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use raftkv_raft::transport::listen::ListenLimits;
use raftkv_raft::transport::tls::Tls;
use raftkv_raft::{Config, RaftError};

use crate::agent::autopilot::AutopilotConfig;
use crate::agent::gossip::GossipConfig;
use crate::state::Limits;

#[derive(Clone, Debug)]
pub struct AgentConfig {
    pub id: u64,
    pub http_addr: SocketAddr,
    pub raft_addr: SocketAddr,
    pub data_dir: PathBuf,
    pub bootstrap: bool,
    /// Raft or gossip addresses of members to join through; tried for a
    /// while (`join`) or until one answers (`retry_join`).
    pub join: Vec<String>,
    pub retry_join: Vec<String>,
    /// Gossip (`--serf-addr`): discovery and failure detection.
    pub gossip: Option<GossipConfig>,
    /// Found a cluster with the first this many servers gossip finds.
    pub bootstrap_expect: Option<usize>,
    pub raft: Config,
    pub limits: Limits,
    pub request_timeout: Duration,
    /// Server health and dead-server cleanup; its lag and period are also
    /// the raft library's promotion rule for joining servers.
    pub autopilot: AutopilotConfig,
    /// How long a joining server has to catch up and stay caught up for
    /// the stabilization time before the leader removes it again.
    pub join_timeout: Duration,
    /// Mutual TLS on the raft port and between nodes (`None`: plain TCP).
    pub tls: Option<Tls>,
    /// Connection caps of the raft port.
    pub raft_listen: ListenLimits,
    /// Bounds on backup uploads spooled into the data dir.
    pub uploads: UploadLimits,
}

/// Bounds on a backup upload (`POST /api/v1/snapshot`), which is spooled
/// into the data dir before it is checked.
#[derive(Clone, Copy, Debug)]
pub struct UploadLimits {
    pub max_bytes: u64,
    /// The whole upload must arrive within this.
    pub timeout: Duration,
    /// Free space the data dir keeps for the log: an upload that would leave
    /// less is refused.
    pub disk_reserve: u64,
}

impl Default for UploadLimits {
    fn default() -> UploadLimits {
        UploadLimits { max_bytes: 1 << 30, timeout: Duration::from_secs(600), disk_reserve: 256 << 20 }
    }
}

impl AgentConfig {
    /// `raft` with the autopilot's lag and period as its promotion rule.
    pub fn raft_config(&self) -> Config {
        let mut raft = self.raft.clone();
        raft.promotion_max_lag = self.autopilot.max_trailing_logs;
        raft.promotion_stable = self.autopilot.server_stabilization_time;
        raft
    }

    pub fn validate(&self) -> Result<(), AgentError> {
        let refuse = |why: &str| Err(AgentError::Config(why.to_string()));
        if self.bootstrap && self.bootstrap_expect.is_some() {
            return refuse("--bootstrap and --bootstrap-expect contradict each other: pick one");
        }
        if self.bootstrap_expect.is_some() && self.gossip.is_none() {
            return refuse("--bootstrap-expect needs --serf-addr: the founders find each other by gossip");
        }
        if self.bootstrap_expect.is_some_and(|n| n == 0 || n > 64) {
            return refuse("--bootstrap-expect must be between 1 and 64");
        }
        if let Some(gossip) = &self.gossip {
            gossip.validate().map_err(AgentError::Config)?;
            if gossip.addr.ip().is_unspecified() {
                return refuse("--serf-addr must be an address other nodes can reach (not 0.0.0.0)");
            }
        }
        self.autopilot.validate().map_err(|e| AgentError::Config(format!("autopilot: {e}")))?;
        self.raft_config().validate().map_err(|e| AgentError::Config(format!("raft: {e}")))?;
        if self.join_timeout <= self.autopilot.server_stabilization_time {
            return Err(AgentError::Config(format!(
                "--join-timeout-ms ({:?}) must exceed the server stabilization time ({:?}): a joining server \
                 must stay caught up that long before its promotion",
                self.join_timeout, self.autopilot.server_stabilization_time
            )));
        }
        Ok(())
    }
}

#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    #[error("{0}")]
    Config(String),
    #[error("storage in {dir}: {source}")]
    Storage { dir: PathBuf, source: raftkv_raft::storage::StorageError },
    #[error("raft: {0}")]
    Raft(#[from] RaftError),
    #[error("cannot listen on {addr}: {source}")]
    Listen { addr: SocketAddr, source: std::io::Error },
    #[error("join failed: {0}")]
    Join(String),
}
