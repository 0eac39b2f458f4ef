//! The replicated key-value state: an ordered map, the commands that change it
//! (encoded into log entries) and their results, and the cluster's peer
//! records (id -> addresses), which travel through the log too.

use std::collections::BTreeMap;
use std::sync::{Arc, RwLock, RwLockReadGuard};

use bytes::Bytes;
use raft::{Entry, EntryPayload, LogIndex, StateMachine};
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
}

impl Command {
    pub fn encode(&self) -> Bytes {
        // Serializing these plain types cannot fail.
        Bytes::from(serde_json::to_vec(self).unwrap_or_default())
    }

    pub fn decode(data: &[u8]) -> Result<Command, String> {
        serde_json::from_slice(data).map_err(|e| format!("undecodable command: {e}"))
    }
}

/// The outcome of a command, as returned through `Raft::apply`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "result", rename_all = "snake_case")]
pub enum Outcome {
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
}

impl Outcome {
    pub fn encode(&self) -> Bytes {
        Bytes::from(serde_json::to_vec(self).unwrap_or_default())
    }

    pub fn decode(data: &[u8]) -> Result<Outcome, String> {
        serde_json::from_slice(data).map_err(|e| format!("undecodable result: {e}"))
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Peer {
    pub raft_addr: String,
    pub http_addr: String,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Value {
    pub value: String,
    /// Index of the entry that last wrote it.
    pub index: LogIndex,
}

/// The state. `data` is a persistent map: cloning it is O(1) and shares
/// structure, so a snapshot captures it without pausing applies.
#[derive(Debug, Default)]
pub struct KvState {
    pub data: imbl::OrdMap<String, Value>,
    pub peers: BTreeMap<u64, Peer>,
    pub applied: LogIndex,
}

/// The state as a snapshot holds it (JSON).
#[derive(Serialize, Deserialize)]
struct SnapshotImage {
    applied: u64,
    /// key -> (value, index of the write)
    data: Vec<(String, String, u64)>,
    peers: BTreeMap<u64, Peer>,
}

/// A capture: the persistent map shared with the live state, copied out only
/// when written, on the snapshot writer's thread.
struct Captured {
    applied: u64,
    data: imbl::OrdMap<String, Value>,
    peers: BTreeMap<u64, Peer>,
}

impl raft::SnapshotSource for Captured {
    fn write_to(self: Box<Self>, out: &mut dyn std::io::Write) -> std::io::Result<()> {
        let image = SnapshotImage {
            applied: self.applied,
            data: self.data.iter().map(|(k, v)| (k.clone(), v.value.clone(), v.index.0)).collect(),
            peers: self.peers,
        };
        let mut out = std::io::BufWriter::new(out);
        serde_json::to_writer(&mut out, &image).map_err(std::io::Error::other)?;
        std::io::Write::flush(&mut out)
    }
}

/// Shared read access to the state; the apply task is the only writer.
#[derive(Clone, Default)]
pub struct Kv {
    state: Arc<RwLock<KvState>>,
}

type PeerCallback = Box<dyn Fn(u64, &Peer) + Send + Sync>;

impl Kv {
    pub fn read(&self) -> RwLockReadGuard<'_, KvState> {
        // The apply task finishes every update before releasing the lock.
        self.state.read().unwrap_or_else(|p| p.into_inner())
    }

    /// The state machine to hand to `Raft::new`; `on_peer` learns every peer
    /// record as it is applied (to feed the transport's address book).
    pub fn state_machine(&self, on_peer: impl Fn(u64, &Peer) + Send + Sync + 'static) -> KvMachine {
        KvMachine { kv: self.clone(), on_peer: Box::new(on_peer) }
    }
}

pub struct KvMachine {
    kv: Kv,
    on_peer: PeerCallback,
}

impl StateMachine for KvMachine {
    fn apply(&mut self, entries: &[Entry]) -> Vec<Bytes> {
        let mut state = self.kv.state.write().unwrap_or_else(|p| p.into_inner());
        let mut responses = Vec::with_capacity(entries.len());
        for entry in entries {
            state.applied = entry.index;
            let EntryPayload::Command(data) = &entry.payload else {
                responses.push(Bytes::new());
                continue;
            };
            if data.is_empty() {
                // A barrier.
                responses.push(Outcome::Done.encode());
                continue;
            }
            let outcome = match Command::decode(data) {
                Ok(command) => apply(&mut state, command, entry.index, &self.on_peer),
                Err(reason) => {
                    tracing::error!(index = %entry.index, %reason, "skipping an undecodable log entry");
                    Outcome::Invalid { reason }
                }
            };
            responses.push(outcome.encode());
        }
        responses
    }

    /// O(1): the persistent map is shared, not copied.
    fn snapshot(&mut self) -> Box<dyn raft::SnapshotSource> {
        let state = self.kv.read();
        Box::new(Captured { applied: state.applied.0, data: state.data.clone(), peers: state.peers.clone() })
    }

    fn restore(&mut self, snapshot: &mut dyn std::io::Read) -> std::io::Result<()> {
        let image: SnapshotImage =
            serde_json::from_reader(std::io::BufReader::new(snapshot)).map_err(std::io::Error::other)?;
        for (id, peer) in &image.peers {
            (self.on_peer)(*id, peer);
        }
        let mut state = self.kv.state.write().unwrap_or_else(|p| p.into_inner());
        state.applied = LogIndex(image.applied);
        state.peers = image.peers;
        state.data =
            image.data.into_iter().map(|(k, value, index)| (k, Value { value, index: LogIndex(index) })).collect();
        Ok(())
    }
}

fn apply(state: &mut KvState, command: Command, index: LogIndex, on_peer: &PeerCallback) -> Outcome {
    match command {
        Command::Set { key, value } => {
            state.data.insert(key, Value { value, index });
            Outcome::Done
        }
        Command::Delete { key } => Outcome::Deleted { existed: state.data.remove(&key).is_some() },
        Command::Cas { key, expected, value } => {
            let current = state.data.get(&key).map(|v| v.value.clone());
            if current == expected {
                state.data.insert(key, Value { value, index });
                Outcome::Done
            } else {
                Outcome::CasFailed { current }
            }
        }
        Command::RegisterPeer { id, raft_addr, http_addr } => {
            let peer = Peer { raft_addr, http_addr };
            on_peer(id, &peer);
            state.peers.insert(id, peer);
            Outcome::Done
        }
    }
}

#[cfg(test)]
mod tests {
    use raft::Term;

    use super::*;

    fn entry(index: u64, command: &Command) -> Entry {
        Entry { term: Term(1), index: LogIndex(index), payload: EntryPayload::Command(command.encode()) }
    }

    #[test]
    fn commands_apply_in_order_with_their_outcomes() {
        let kv = Kv::default();
        let mut machine = kv.state_machine(|_, _| {});
        let commands = [
            Command::Set { key: "a".into(), value: "1".into() },
            Command::Cas { key: "a".into(), expected: Some("2".into()), value: "3".into() },
            Command::Cas { key: "a".into(), expected: Some("1".into()), value: "3".into() },
            Command::Cas { key: "b".into(), expected: None, value: "x".into() },
            Command::Delete { key: "b".into() },
            Command::Delete { key: "b".into() },
        ];
        let entries: Vec<Entry> = commands.iter().enumerate().map(|(i, c)| entry(i as u64 + 1, c)).collect();
        let outcomes: Vec<Outcome> = machine.apply(&entries).iter().map(|r| Outcome::decode(r).unwrap()).collect();
        assert_eq!(
            outcomes,
            vec![
                Outcome::Done,
                Outcome::CasFailed { current: Some("1".into()) },
                Outcome::Done,
                Outcome::Done,
                Outcome::Deleted { existed: true },
                Outcome::Deleted { existed: false },
            ]
        );
        let state = kv.read();
        assert_eq!(state.data["a"], Value { value: "3".into(), index: LogIndex(3) });
        assert!(!state.data.contains_key("b"));
        assert_eq!(state.applied, LogIndex(6));
    }

    #[test]
    fn a_snapshot_captures_the_state_at_its_moment_and_restores_it() {
        let kv = Kv::default();
        let mut machine = kv.state_machine(|_, _| {});
        let set = |i: u64, key: &str, value: &str| entry(i, &Command::Set { key: key.into(), value: value.into() });
        let register = Command::RegisterPeer { id: 2, raft_addr: "127.0.0.1:9002".into(), http_addr: "h".into() };
        machine.apply(&[set(1, "a", "1"), set(2, "b", "2"), entry(3, &register)]);
        let capture = raft::StateMachine::snapshot(&mut machine);
        // Writes after the capture do not leak into it.
        machine.apply(&[set(4, "a", "changed"), set(5, "c", "3")]);
        let mut bytes = Vec::new();
        capture.write_to(&mut bytes).unwrap();

        let restored = Kv::default();
        let mut other = restored.state_machine(|_, _| {});
        raft::StateMachine::restore(&mut other, &mut bytes.as_slice()).unwrap();
        let state = restored.read();
        assert_eq!(state.applied, LogIndex(3));
        assert_eq!(state.data.get("a"), Some(&Value { value: "1".into(), index: LogIndex(1) }));
        assert_eq!(state.data.get("c"), None);
        assert_eq!(state.peers[&2].raft_addr, "127.0.0.1:9002");
        drop(state);
        assert!(raft::StateMachine::restore(&mut other, &mut &b"{not json"[..]).is_err());
    }

    #[test]
    fn a_garbage_entry_is_reported_not_applied() {
        let kv = Kv::default();
        let mut machine = kv.state_machine(|_, _| {});
        let bad = Entry { term: Term(1), index: LogIndex(1), payload: EntryPayload::Command(Bytes::from("{")) };
        let outcome = Outcome::decode(&machine.apply(&[bad])[0]).unwrap();
        assert!(matches!(outcome, Outcome::Invalid { .. }));
        assert!(kv.read().data.is_empty());
    }
}
