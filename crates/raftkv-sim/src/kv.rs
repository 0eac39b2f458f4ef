//! The simulated clients' state machine: a map from small integer keys to values,
//! with put, delete and compare-and-set, and its command and snapshot encodings.
//!
//! Bytes from the log or a snapshot are decoded with checks; garbage is an error,
//! never a panic.

use std::collections::BTreeMap;

use bytes::{Buf, BufMut, Bytes, BytesMut};
use raftkv_core::LogIndex;

use crate::linearizability::{OpInput, OpOutput, Value};

/// A client command as stored in the log: the operation id lets the proposer
/// recognise its own entry when it is applied.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Command {
    pub op_id: u64,
    pub key: u64,
    pub input: OpInput,
}

const PUT: u8 = 1;
const DELETE: u8 = 2;
const CAS: u8 = 3;

impl Command {
    pub fn encode(&self) -> Bytes {
        let mut buf = BytesMut::with_capacity(32);
        buf.put_u64(self.op_id);
        buf.put_u64(self.key);
        match &self.input {
            OpInput::Put { value } => {
                buf.put_u8(PUT);
                buf.put_u64(*value);
            }
            OpInput::Delete => buf.put_u8(DELETE),
            OpInput::Cas { expected, new } => {
                buf.put_u8(CAS);
                buf.put_u8(u8::from(expected.is_some()));
                buf.put_u64(expected.unwrap_or(0));
                buf.put_u64(*new);
            }
            OpInput::Get => unreachable!("reads never enter the log"),
        }
        buf.freeze()
    }

    pub fn decode(mut data: &[u8]) -> Result<Command, String> {
        let need = |data: &[u8], n: usize| {
            if data.remaining() < n {
                Err(format!("command truncated: need {n} more bytes, have {}", data.remaining()))
            } else {
                Ok(())
            }
        };
        need(data, 17)?;
        let op_id = data.get_u64();
        let key = data.get_u64();
        let input = match data.get_u8() {
            PUT => {
                need(data, 8)?;
                OpInput::Put { value: data.get_u64() }
            }
            DELETE => OpInput::Delete,
            CAS => {
                need(data, 17)?;
                let has_expected = data.get_u8() == 1;
                let expected = data.get_u64();
                OpInput::Cas { expected: has_expected.then_some(expected), new: data.get_u64() }
            }
            other => return Err(format!("unknown command kind {other}")),
        };
        Ok(Command { op_id, key, input })
    }
}

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct KvStore {
    pub map: BTreeMap<u64, Value>,
    pub applied: LogIndex,
}

impl KvStore {
    pub fn apply(&mut self, command: &Command) -> OpOutput {
        let current = self.map.get(&command.key).copied();
        match &command.input {
            OpInput::Put { value } => {
                self.map.insert(command.key, *value);
                OpOutput::Put
            }
            OpInput::Delete => {
                self.map.remove(&command.key);
                OpOutput::Delete
            }
            OpInput::Cas { expected, new } => {
                let ok = current == *expected;
                if ok {
                    self.map.insert(command.key, *new);
                }
                OpOutput::Cas { ok }
            }
            OpInput::Get => OpOutput::Get { value: current },
        }
    }

    pub fn get(&self, key: u64) -> Option<Value> {
        self.map.get(&key).copied()
    }

    pub fn encode_snapshot(&self) -> Bytes {
        let mut buf = BytesMut::with_capacity(16 + 16 * self.map.len());
        buf.put_u64(self.applied.0);
        buf.put_u64(self.map.len() as u64);
        for (key, value) in &self.map {
            buf.put_u64(*key);
            buf.put_u64(*value);
        }
        buf.freeze()
    }

    pub fn decode_snapshot(mut data: &[u8]) -> Result<KvStore, String> {
        if data.remaining() < 16 {
            return Err("snapshot shorter than its header".into());
        }
        let applied = LogIndex(data.get_u64());
        let count = data.get_u64();
        if data.remaining() as u64 != count.saturating_mul(16) {
            return Err(format!("snapshot declares {count} keys but holds {} bytes", data.remaining()));
        }
        let mut map = BTreeMap::new();
        for _ in 0..count {
            map.insert(data.get_u64(), data.get_u64());
        }
        Ok(KvStore { map, applied })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn commands_round_trip_and_garbage_is_an_error() {
        for input in [OpInput::Put { value: 7 }, OpInput::Delete, OpInput::Cas { expected: None, new: 3 }] {
            let command = Command { op_id: 9, key: 2, input };
            assert_eq!(Command::decode(&command.encode()).unwrap(), command);
        }
        assert!(Command::decode(&[1, 2, 3]).is_err());
        let mut bad = Command { op_id: 1, key: 1, input: OpInput::Delete }.encode().to_vec();
        bad[16] = 99;
        assert!(Command::decode(&bad).is_err());
    }

    #[test]
    fn snapshot_round_trips_and_truncation_is_an_error() {
        let mut store = KvStore::default();
        store.apply(&Command { op_id: 1, key: 4, input: OpInput::Put { value: 5 } });
        store.applied = LogIndex(3);
        let data = store.encode_snapshot();
        assert_eq!(KvStore::decode_snapshot(&data).unwrap(), store);
        assert!(KvStore::decode_snapshot(&data[..data.len() - 1]).is_err());
    }
}
