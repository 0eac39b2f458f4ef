//! What travels through the log: the commands that change the state, the
//! state machine's answer to each, and the peer records (id -> addresses).

use bytes::Bytes;
use serde::{Deserialize, Serialize};

/// A write, as stored in the log.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum Command {
    Set {
        key: String,
        value: String,
    },
    Delete {
        key: String,
    },
    /// Set `key` to `value` if its current value is `expected` (`None`: absent).
    Cas {
        key: String,
        expected: Option<String>,
        value: String,
    },
    /// Records where node `id` listens, before it is added as a voter.
    RegisterPeer {
        id: u64,
        raft_addr: String,
        http_addr: String,
    },
    /// Starts restore `id`, replacing any other restore in progress.
    RestoreBegin {
        id: String,
    },
    /// Chunk `seq` (from 0) of restore `id`: key/value pairs.
    RestoreChunk {
        id: String,
        seq: u64,
        pairs: Vec<(String, String)>,
    },
    /// Replaces the state with restore `id`'s, if it received `chunks` chunks
    /// holding `keys` keys.
    RestoreCommit {
        id: String,
        chunks: u64,
        keys: u64,
    },
    /// Drops restore `id`.
    RestoreAbort {
        id: String,
    },
}

impl Command {
    pub fn encode(&self) -> Bytes {
        to_json(self)
    }

    pub fn decode(data: &[u8]) -> Result<Command, String> {
        from_json(data, "command")
    }
}

/// The outcome of a command, as returned through `Raft::apply`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "result", rename_all = "snake_case")]
pub enum Answer {
    Done,
    Deleted {
        existed: bool,
    },
    CasFailed {
        current: Option<String>,
    },
    /// The entry could not be decoded (only a bug or a foreign writer does this).
    Invalid {
        reason: String,
    },
    /// A restore replaced the state with `keys` keys.
    Restored {
        keys: u64,
    },
    /// A restore step did not apply; the state is unchanged.
    RestoreFailed {
        reason: String,
    },
}

impl Answer {
    pub fn encode(&self) -> Bytes {
        to_json(self)
    }

    pub fn decode(data: &[u8]) -> Result<Answer, String> {
        from_json(data, "result")
    }
}

/// The one encoding of log entries and their answers: JSON, which stays
/// readable in a dumped log and lets new fields default on old entries.
fn to_json(value: &impl Serialize) -> Bytes {
    // Serializing these plain enums of strings and integers cannot fail.
    Bytes::from(serde_json::to_vec(value).unwrap_or_default())
}

fn from_json<T: serde::de::DeserializeOwned>(data: &[u8], what: &str) -> Result<T, String> {
    serde_json::from_slice(data).map_err(|e| format!("undecodable {what}: {e}"))
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Peer {
    pub raft_addr: String,
    pub http_addr: String,
}
