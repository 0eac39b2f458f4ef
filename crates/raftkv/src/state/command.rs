//! What travels through the log: the commands that change the state, the
//! state machine's answer to each, and the peer records (id -> addresses).

use bytes::Bytes;
use serde::{Deserialize, Serialize};

use crate::state::blob::Blob;

/// A write, as stored in the log.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum Command {
    Set {
        key: String,
        value: Blob,
    },
    Delete {
        key: String,
    },
    /// Set `key` to `value` if its current value is `expected` (`None`: absent).
    Cas {
        key: String,
        expected: Option<Blob>,
        value: Blob,
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
        pairs: Vec<(String, Blob)>,
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
        current: Option<Blob>,
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

/// Bounds on what a client may write (and a backup may hold).
#[derive(Clone, Copy, Debug)]
pub struct Limits {
    pub max_key_bytes: usize,
    pub max_value_bytes: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits { max_key_bytes: 4 << 10, max_value_bytes: 1 << 20 }
    }
}

impl Limits {
    pub fn check_key(&self, key: &str) -> Result<(), String> {
        if key.is_empty() {
            return Err("key must not be empty".to_string());
        }
        if key.len() > self.max_key_bytes {
            return Err(format!("key of {} bytes exceeds the limit of {}", key.len(), self.max_key_bytes));
        }
        Ok(())
    }

    pub fn check_value(&self, value: &[u8]) -> Result<(), String> {
        if value.len() > self.max_value_bytes {
            return Err(format!("value of {} bytes exceeds the limit of {}", value.len(), self.max_value_bytes));
        }
        Ok(())
    }
}

impl Command {
    /// Whether a client (or a follower on a client's behalf) may propose this
    /// command: a write or a restore step within the limits. Peer records are
    /// the leader's own business (joins), never a client's.
    pub fn check_client(&self, limits: &Limits) -> Result<(), String> {
        match self {
            Command::Set { key, value } | Command::Cas { key, value, .. } => {
                limits.check_key(key)?;
                limits.check_value(&value.0)
            }
            Command::Delete { key } => limits.check_key(key),
            Command::RestoreChunk { pairs, .. } => pairs.iter().try_for_each(|(key, value)| {
                limits.check_key(key)?;
                limits.check_value(&value.0)
            }),
            Command::RestoreBegin { .. } | Command::RestoreCommit { .. } | Command::RestoreAbort { .. } => Ok(()),
            Command::RegisterPeer { .. } => Err("peer records are written by the leader, not by clients".to_string()),
        }
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clients_may_send_writes_and_restores_within_the_limits_only() {
        let limits = Limits { max_key_bytes: 3, max_value_bytes: 2 };
        let set = |key: &str, value: &str| Command::Set { key: key.into(), value: value.into() };
        assert_eq!(set("k", "vv").check_client(&limits), Ok(()));
        for refused in [
            set("", "v"),
            set("kkkk", "v"),
            set("k", "vvv"),
            Command::Delete { key: String::new() },
            Command::Cas { key: "k".into(), expected: None, value: "vvv".into() },
            Command::RestoreChunk {
                id: "r".into(),
                seq: 0,
                pairs: vec![("k".into(), "v".into()), ("".into(), "v".into())],
            },
            Command::RegisterPeer { id: 7, raft_addr: "127.0.0.1:1".into(), http_addr: String::new() },
        ] {
            assert!(refused.check_client(&limits).is_err(), "{refused:?}");
        }
        assert_eq!(Command::RestoreCommit { id: "r".into(), chunks: 1, keys: 1 }.check_client(&limits), Ok(()));
    }
}
