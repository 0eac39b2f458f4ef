//! What an agent is started with, and why it may fail to start.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use raftkv_raft::{Config, RaftError};

use crate::state::Limits;

#[derive(Clone, Debug)]
pub struct AgentConfig {
    pub id: u64,
    pub http_addr: SocketAddr,
    pub raft_addr: SocketAddr,
    pub data_dir: PathBuf,
    pub bootstrap: bool,
    pub join: Vec<String>,
    pub raft: Config,
    pub limits: Limits,
    pub request_timeout: Duration,
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
