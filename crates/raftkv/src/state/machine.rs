//! The replicated key-value state (an ordered map and the peer records) and
//! the state machine that applies commands to it, snapshots and restores it.
//!
//! A backup is restored into a live cluster through the log, so that every
//! node replaces its state at the same index and a crash at any point leaves
//! either the old state or the new one: `RestoreBegin` opens a staging map,
//! `RestoreChunk`s fill it in order (a repeated chunk is ignored, so a chunk
//! whose outcome was unknown can be sent again), and `RestoreCommit` swaps it in
//! if every chunk and key arrived. The staging map is part of snapshots, so a
//! node that installs one in the middle of a restore carries on with it.

use std::collections::BTreeMap;
use std::sync::{Arc, RwLock, RwLockReadGuard};

use bytes::Bytes;
use raftkv_raft::{Entry, EntryPayload, LogIndex, StateMachine, Term};

use crate::state::blob::Blob;
use crate::state::command::{Answer, Command, Peer};
use crate::state::image::{self, ImageHeader, ImageKind, ImageReader, ImageWriter, Members, StagingHeader};

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Value {
    pub value: Blob,
    /// Index of the entry that last wrote it.
    pub index: LogIndex,
}

/// A restore being received through the log.
#[derive(Clone, Debug)]
pub struct Staging {
    pub id: String,
    pub next_seq: u64,
    pub data: imbl::OrdMap<String, Value>,
}

/// The state. `data` is a persistent map: cloning it is O(1) and shares
/// structure, so a snapshot captures it without pausing applies.
#[derive(Debug, Default)]
pub struct KvState {
    pub data: imbl::OrdMap<String, Value>,
    pub peers: BTreeMap<u64, Peer>,
    pub applied: LogIndex,
    pub applied_term: Term,
    pub staging: Option<Staging>,
    /// The last restore committed (a repeated commit answers as the first did).
    pub last_restore: Option<(String, u64)>,
}

/// A capture of the state: persistent maps shared with the live state, written
/// out record by record on the snapshot writer's thread (or for a backup).
pub struct Captured {
    header: ImageHeader,
    data: imbl::OrdMap<String, Value>,
    staging: Option<imbl::OrdMap<String, Value>>,
}

impl Captured {
    /// The data records, then the staging map's, in the image's order.
    fn records(&self) -> impl Iterator<Item = (&String, &Value)> {
        self.data.iter().chain(self.staging.iter().flat_map(|s| s.iter()))
    }

    /// The exact size of the image `write_image` produces.
    pub fn size(&self) -> u64 {
        image::encoded_size(&self.header, self.records().map(|(k, v)| (k.as_str(), &v.value.0[..])))
    }

    pub fn header(&self) -> &ImageHeader {
        &self.header
    }

    pub fn write_image(&self, out: &mut dyn std::io::Write) -> std::io::Result<()> {
        let mut writer = ImageWriter::new(std::io::BufWriter::with_capacity(1 << 16, out), &self.header)?;
        for (key, value) in self.records() {
            writer.record(key, &value.value.0, value.index.0)?;
        }
        writer.finish()?;
        Ok(())
    }
}

impl raftkv_raft::SnapshotSource for Captured {
    fn write_to(self: Box<Self>, out: &mut dyn std::io::Write) -> std::io::Result<()> {
        self.write_image(out)
    }
}

/// Milliseconds since the Unix epoch by the system clock (0 before it).
pub fn unix_ms() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64)
}

impl KvState {
    /// O(1): the persistent maps are shared, not copied.
    pub fn capture(&self, kind: ImageKind, members: Option<Members>) -> Captured {
        let with_internals = kind == ImageKind::Snapshot;
        let staging = self.staging.as_ref().filter(|_| with_internals);
        let header = ImageHeader {
            format: image::FORMAT,
            kind,
            index: self.applied.0,
            term: self.applied_term.0,
            members,
            keys: self.data.len() as u64,
            peers: if with_internals { self.peers.clone() } else { BTreeMap::new() },
            staging: staging.map(|s| StagingHeader {
                id: s.id.clone(),
                next_seq: s.next_seq,
                keys: s.data.len() as u64,
            }),
            last_restore: self.last_restore.clone().filter(|_| with_internals),
            created_unix_ms: unix_ms(),
        };
        Captured { header, data: self.data.clone(), staging: staging.map(|s| s.data.clone()) }
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
            state.applied_term = entry.term;
            let EntryPayload::Command(data) = &entry.payload else {
                responses.push(Bytes::new());
                continue;
            };
            if data.is_empty() {
                // A barrier.
                responses.push(Answer::Done.encode());
                continue;
            }
            let outcome = match Command::decode(data) {
                Ok(command) => apply(&mut state, command, entry.index, &self.on_peer),
                Err(reason) => {
                    tracing::error!(index = %entry.index, %reason, "skipping an undecodable log entry");
                    Answer::Invalid { reason }
                }
            };
            responses.push(outcome.encode());
        }
        responses
    }

    /// O(1): the persistent maps are shared, not copied.
    fn snapshot(&mut self) -> Box<dyn raftkv_raft::SnapshotSource> {
        Box::new(self.kv.read().capture(ImageKind::Snapshot, None))
    }

    /// A snapshot from the leader must be a whole, intact raft snapshot image
    /// (magic, format, bounded lengths, checksum) before it is stored.
    fn snapshot_check(&self) -> Option<raftkv_raft::SnapshotCheck> {
        Some(Arc::new(|snapshot: &mut dyn std::io::Read| {
            let (header, _) = image::verify(snapshot)?;
            if header.kind != ImageKind::Snapshot {
                return Err(std::io::Error::other(format!("a {:?} image is not a raft snapshot", header.kind)));
            }
            Ok(())
        }))
    }

    /// Reads and checks the whole image before touching the live state.
    fn restore(&mut self, snapshot: &mut dyn std::io::Read) -> std::io::Result<()> {
        let mut reader = ImageReader::open(std::io::BufReader::with_capacity(1 << 16, snapshot))?;
        let header = reader.header.clone();
        let mut data = imbl::OrdMap::new();
        for _ in 0..header.keys {
            let record = reader.next_record()?.ok_or_else(|| std::io::Error::other("image ended early"))?;
            data.insert(record.key, Value { value: record.value, index: LogIndex(record.index) });
        }
        let mut staging = header.staging.as_ref().map(|s| Staging {
            id: s.id.clone(),
            next_seq: s.next_seq,
            data: imbl::OrdMap::new(),
        });
        while let Some(record) = reader.next_record()? {
            if let Some(staging) = staging.as_mut() {
                staging.data.insert(record.key, Value { value: record.value, index: LogIndex(record.index) });
            }
        }
        reader.finish()?;
        for (id, peer) in &header.peers {
            (self.on_peer)(*id, peer);
        }
        let mut state = self.kv.state.write().unwrap_or_else(|p| p.into_inner());
        state.applied = LogIndex(header.index);
        state.applied_term = Term(header.term);
        state.peers = header.peers;
        state.data = data;
        state.staging = staging;
        state.last_restore = header.last_restore;
        Ok(())
    }
}

fn apply(state: &mut KvState, command: Command, index: LogIndex, on_peer: &PeerCallback) -> Answer {
    match command {
        Command::Set { key, value } => {
            state.data.insert(key, Value { value, index });
            Answer::Done
        }
        Command::Delete { key } => Answer::Deleted { existed: state.data.remove(&key).is_some() },
        Command::Cas { key, expected, value } => {
            let current = state.data.get(&key).map(|v| v.value.clone());
            if current == expected {
                state.data.insert(key, Value { value, index });
                Answer::Done
            } else {
                Answer::CasFailed { current }
            }
        }
        Command::RegisterPeer { id, raft_addr, http_addr } => {
            let peer = Peer { raft_addr, http_addr };
            on_peer(id, &peer);
            state.peers.insert(id, peer);
            Answer::Done
        }
        Command::RestoreBegin { id } => {
            state.staging = Some(Staging { id, next_seq: 0, data: imbl::OrdMap::new() });
            Answer::Done
        }
        Command::RestoreChunk { id, seq, pairs } => {
            let Some(staging) = state.staging.as_mut().filter(|s| s.id == id) else {
                return Answer::RestoreFailed { reason: format!("restore {id} is not in progress (superseded?)") };
            };
            if seq < staging.next_seq {
                return Answer::Done; // a chunk sent again after an unknown outcome
            }
            if seq > staging.next_seq {
                return Answer::RestoreFailed {
                    reason: format!("restore {id}: chunk {seq} arrived, chunk {} expected", staging.next_seq),
                };
            }
            // Only a forged snapshot's staging header could be at the end of
            // the range; every node refuses it alike.
            let Some(next) = staging.next_seq.checked_add(1) else {
                return Answer::RestoreFailed {
                    reason: format!("restore {id}: chunk {seq} is past the last possible"),
                };
            };
            staging.next_seq = next;
            for (key, value) in pairs {
                staging.data.insert(key, Value { value, index });
            }
            Answer::Done
        }
        Command::RestoreCommit { id, chunks, keys } => {
            if let Some((_, keys)) = state.last_restore.as_ref().filter(|(done, _)| *done == id) {
                return Answer::Restored { keys: *keys };
            }
            let Some(staging) = state.staging.take_if(|s| s.id == id) else {
                return Answer::RestoreFailed { reason: format!("restore {id} is not in progress (superseded?)") };
            };
            let received = staging.data.len() as u64;
            if staging.next_seq != chunks || received != keys {
                return Answer::RestoreFailed {
                    reason: format!(
                        "restore {id}: {} of {chunks} chunks and {received} of {keys} keys arrived",
                        staging.next_seq
                    ),
                };
            }
            state.data = staging.data;
            state.last_restore = Some((id, keys));
            Answer::Restored { keys }
        }
        Command::RestoreAbort { id } => {
            state.staging.take_if(|s| s.id == id);
            Answer::Done
        }
    }
}

#[cfg(test)]
mod tests {
    use raftkv_raft::Term;

    use super::*;

    fn entry(index: u64, command: &Command) -> Entry {
        Entry { term: Term(1), index: LogIndex(index), payload: EntryPayload::Command(command.encode()) }
    }

    #[test]
    fn a_staging_sequence_at_the_end_of_the_range_fails_the_restore_instead_of_wrapping() {
        let mut state = KvState::default();
        let id = "r1".to_string();
        state.staging = Some(Staging { id: id.clone(), next_seq: u64::MAX, data: imbl::OrdMap::new() });
        let chunk = Command::RestoreChunk { id, seq: u64::MAX, pairs: vec![("k".into(), "v".into())] };
        let on_peer: PeerCallback = Box::new(|_, _| {});
        let answer = apply(&mut state, chunk, LogIndex(9), &on_peer);
        assert!(matches!(answer, Answer::RestoreFailed { .. }), "{answer:?}");
        assert_eq!(state.staging.as_ref().map(|s| (s.next_seq, s.data.len())), Some((u64::MAX, 0)));
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
        let outcomes: Vec<Answer> = machine.apply(&entries).iter().map(|r| Answer::decode(r).unwrap()).collect();
        assert_eq!(
            outcomes,
            vec![
                Answer::Done,
                Answer::CasFailed { current: Some("1".into()) },
                Answer::Done,
                Answer::Done,
                Answer::Deleted { existed: true },
                Answer::Deleted { existed: false },
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
        let capture = raftkv_raft::StateMachine::snapshot(&mut machine);
        // Writes after the capture do not leak into it.
        machine.apply(&[set(4, "a", "changed"), set(5, "c", "3")]);
        let mut bytes = Vec::new();
        capture.write_to(&mut bytes).unwrap();

        let restored = Kv::default();
        let mut other = restored.state_machine(|_, _| {});
        raftkv_raft::StateMachine::restore(&mut other, &mut bytes.as_slice()).unwrap();
        let state = restored.read();
        assert_eq!(state.applied, LogIndex(3));
        assert_eq!(state.data.get("a"), Some(&Value { value: "1".into(), index: LogIndex(1) }));
        assert_eq!(state.data.get("c"), None);
        assert_eq!(state.peers[&2].raft_addr, "127.0.0.1:9002");
        drop(state);
        assert!(raftkv_raft::StateMachine::restore(&mut other, &mut &b"{not json"[..]).is_err());
    }

    #[test]
    fn a_garbage_entry_is_reported_not_applied() {
        let kv = Kv::default();
        let mut machine = kv.state_machine(|_, _| {});
        let bad = Entry { term: Term(1), index: LogIndex(1), payload: EntryPayload::Command(Bytes::from("{")) };
        let outcome = Answer::decode(&machine.apply(&[bad])[0]).unwrap();
        assert!(matches!(outcome, Answer::Invalid { .. }));
        assert!(kv.read().data.is_empty());
    }

    fn outcomes(machine: &mut KvMachine, first: u64, commands: &[Command]) -> Vec<Answer> {
        let entries: Vec<Entry> = commands.iter().enumerate().map(|(i, c)| entry(first + i as u64, c)).collect();
        machine.apply(&entries).iter().map(|r| Answer::decode(r).unwrap()).collect()
    }

    fn chunk(id: &str, seq: u64, pairs: &[(&str, &str)]) -> Command {
        let pairs = pairs.iter().map(|(k, v)| (k.to_string(), Blob::from(*v))).collect();
        Command::RestoreChunk { id: id.into(), seq, pairs }
    }

    #[test]
    fn a_restore_replaces_the_state_only_when_every_chunk_arrived() {
        let kv = Kv::default();
        let mut machine = kv.state_machine(|_, _| {});
        let set = Command::Set { key: "old".into(), value: "1".into() };
        let begin = Command::RestoreBegin { id: "r1".into() };
        let done = outcomes(&mut machine, 1, &[set, begin, chunk("r1", 0, &[("a", "1")])]);
        assert!(done.iter().all(|o| *o == Answer::Done), "{done:?}");
        // A repeated chunk (outcome unknown, sent again) is ignored; a gap fails.
        let results = outcomes(&mut machine, 4, &[chunk("r1", 0, &[("a", "1")]), chunk("r1", 2, &[("c", "3")])]);
        assert_eq!(results[0], Answer::Done);
        assert!(matches!(&results[1], Answer::RestoreFailed { reason } if reason.contains("chunk 1 expected")));
        assert!(kv.read().data.contains_key("old"), "nothing is replaced before the commit");

        // A commit that does not match what arrived fails and drops the staging.
        let short = Command::RestoreCommit { id: "r1".into(), chunks: 2, keys: 2 };
        assert!(matches!(&outcomes(&mut machine, 6, &[short])[0], Answer::RestoreFailed { .. }));
        assert!(kv.read().staging.is_none());
        assert!(kv.read().data.contains_key("old"));

        // A full restore, with its commit sent twice.
        let commands = [
            Command::RestoreBegin { id: "r2".into() },
            chunk("r2", 0, &[("a", "1"), ("b", "2")]),
            chunk("r2", 1, &[("c", "3")]),
            Command::RestoreCommit { id: "r2".into(), chunks: 2, keys: 3 },
            Command::RestoreCommit { id: "r2".into(), chunks: 2, keys: 3 },
        ];
        let results = outcomes(&mut machine, 7, &commands);
        assert_eq!(results[3], Answer::Restored { keys: 3 });
        assert_eq!(results[4], Answer::Restored { keys: 3 }, "a repeated commit answers as the first");
        let state = kv.read();
        let keys: Vec<&String> = state.data.keys().collect();
        assert_eq!(keys, ["a", "b", "c"]);
        assert!(state.staging.is_none());
    }

    #[test]
    fn a_newer_restore_supersedes_an_older_one() {
        let kv = Kv::default();
        let mut machine = kv.state_machine(|_, _| {});
        let commands = [
            Command::RestoreBegin { id: "old".into() },
            Command::RestoreBegin { id: "new".into() },
            chunk("old", 0, &[("x", "1")]),
            Command::RestoreAbort { id: "old".into() },
        ];
        let results = outcomes(&mut machine, 1, &commands);
        assert!(matches!(&results[2], Answer::RestoreFailed { reason } if reason.contains("not in progress")));
        assert_eq!(kv.read().staging.as_ref().map(|s| s.id.as_str()), Some("new"), "an old abort leaves the new one");
    }

    /// A node that installs a snapshot taken in the middle of a restore must be
    /// able to finish it like the others: the staging map is in the snapshot.
    #[test]
    fn a_snapshot_in_the_middle_of_a_restore_carries_the_staging_map() {
        let kv = Kv::default();
        let mut machine = kv.state_machine(|_, _| {});
        let before = [
            Command::Set { key: "live".into(), value: "1".into() },
            Command::RestoreBegin { id: "r".into() },
            chunk("r", 0, &[("a", "1"), ("b", "2")]),
        ];
        outcomes(&mut machine, 1, &before);
        let mut bytes = Vec::new();
        raftkv_raft::StateMachine::snapshot(&mut machine).write_to(&mut bytes).unwrap();

        let other = Kv::default();
        let mut restored = other.state_machine(|_, _| {});
        raftkv_raft::StateMachine::restore(&mut restored, &mut bytes.as_slice()).unwrap();
        let after = [chunk("r", 1, &[("c", "3")]), Command::RestoreCommit { id: "r".into(), chunks: 2, keys: 3 }];
        assert_eq!(outcomes(&mut restored, 4, &after)[1], Answer::Restored { keys: 3 });
        assert_eq!(outcomes(&mut machine, 4, &after)[1], Answer::Restored { keys: 3 });
        let (a, b) = (kv.read(), other.read());
        assert_eq!(a.data, b.data);
        assert!(!b.data.contains_key("live"));
    }
}
