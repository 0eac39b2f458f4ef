//! Binary encoding of log entries for the write-ahead log, and of the
//! configuration they may carry. Decoding treats its input as untrusted: every
//! length is checked against what is left, and errors say what was wrong.
//!
//! Entry layout (little-endian): term u64, index u64, kind u8, then for a command
//! its bytes (to the end), for a configuration three id lists (voters, outgoing
//! voters, learners), each a u32 count followed by u64 ids. A configuration
//! with learners marked staging is kind 3 and carries a fourth list (staging);
//! one without is kind 2, byte for byte as before staging existed, so logs
//! that never staged anyone stay readable by builds that predate it.
//!
//! A restore step (`Raft::restore`) is kind 4: a step tag u8, then for `Begin`
//! (tag 0) id u64, len u64, crc32c u32; for `Chunk` (tag 1) id u64, seq u64, a
//! u32 data length and the data; for `Commit` (tag 2) id u64, chunks u64. Its
//! lengths are exact, so every prefix of such an entry is an error.

use std::collections::BTreeSet;

use bytes::{Buf, BufMut, Bytes};
use raftkv_core::{Configuration, Entry, EntryPayload, LogIndex, NodeId, RestoreStep, Term};

/// Bytes of an entry's header (term, index, kind): the shortest entry.
pub const ENTRY_HEADER_LEN: usize = 17;

const KIND_NOOP: u8 = 0;
const KIND_COMMAND: u8 = 1;
const KIND_CONFIG: u8 = 2;
const KIND_CONFIG_STAGED: u8 = 3;
const KIND_RESTORE: u8 = 4;

const STEP_BEGIN: u8 = 0;
const STEP_CHUNK: u8 = 1;
const STEP_COMMIT: u8 = 2;

/// Appends the encoding of `entry` to `out`.
pub fn encode_entry(entry: &Entry, out: &mut Vec<u8>) {
    out.put_u64_le(entry.term.0);
    out.put_u64_le(entry.index.0);
    match &entry.payload {
        EntryPayload::Noop => out.put_u8(KIND_NOOP),
        EntryPayload::Command(data) => {
            out.put_u8(KIND_COMMAND);
            out.put_slice(data);
        }
        EntryPayload::Config(config) => {
            out.put_u8(if config.staging.is_empty() { KIND_CONFIG } else { KIND_CONFIG_STAGED });
            encode_configuration(config, out);
        }
        EntryPayload::Restore(step) => {
            out.put_u8(KIND_RESTORE);
            encode_restore_step(step, out);
        }
    }
}

fn encode_restore_step(step: &RestoreStep, out: &mut Vec<u8>) {
    match step {
        RestoreStep::Begin { id, len, crc32c } => {
            out.put_u8(STEP_BEGIN);
            out.put_u64_le(*id);
            out.put_u64_le(*len);
            out.put_u32_le(*crc32c);
        }
        RestoreStep::Chunk { id, seq, data } => {
            out.put_u8(STEP_CHUNK);
            out.put_u64_le(*id);
            out.put_u64_le(*seq);
            // A chunk is at most half an append (`Raft::restore`), far below 4 GiB.
            out.put_u32_le(u32::try_from(data.len()).unwrap_or(u32::MAX));
            out.put_slice(data);
        }
        RestoreStep::Commit { id, chunks } => {
            out.put_u8(STEP_COMMIT);
            out.put_u64_le(*id);
            out.put_u64_le(*chunks);
        }
    }
}

fn restore_step_len(step: &RestoreStep) -> usize {
    match step {
        RestoreStep::Begin { .. } => 1 + 8 + 8 + 4,
        RestoreStep::Chunk { data, .. } => 1 + 8 + 8 + 4 + data.len(),
        RestoreStep::Commit { .. } => 1 + 8 + 8,
    }
}

/// Decodes a restore step that fills `buf` exactly.
fn decode_restore_step(mut buf: Bytes, index: LogIndex) -> Result<RestoreStep, String> {
    let need = |buf: &Bytes, n: usize, what: &str| {
        if buf.remaining() < n {
            Err(format!("restore entry {index}: {what} truncated ({} of {n} bytes)", buf.remaining()))
        } else {
            Ok(())
        }
    };
    need(&buf, 1, "step tag")?;
    let step = match buf.get_u8() {
        STEP_BEGIN => {
            need(&buf, 20, "begin")?;
            RestoreStep::Begin { id: buf.get_u64_le(), len: buf.get_u64_le(), crc32c: buf.get_u32_le() }
        }
        STEP_CHUNK => {
            need(&buf, 20, "chunk header")?;
            let (id, seq, len) = (buf.get_u64_le(), buf.get_u64_le(), buf.get_u32_le() as usize);
            need(&buf, len, "chunk data")?;
            RestoreStep::Chunk { id, seq, data: buf.split_to(len) }
        }
        STEP_COMMIT => {
            need(&buf, 16, "commit")?;
            RestoreStep::Commit { id: buf.get_u64_le(), chunks: buf.get_u64_le() }
        }
        tag => return Err(format!("restore entry {index} has unknown step {tag}")),
    };
    if !buf.is_empty() {
        return Err(format!("restore entry {index} has {} trailing bytes", buf.len()));
    }
    Ok(step)
}

/// Size of `encode_entry`'s output.
pub fn encoded_entry_len(entry: &Entry) -> usize {
    ENTRY_HEADER_LEN
        + match &entry.payload {
            EntryPayload::Noop => 0,
            EntryPayload::Command(data) => data.len(),
            EntryPayload::Config(config) => {
                let staging = if config.staging.is_empty() { 0 } else { 4 + 8 * config.staging.len() };
                12 + 8 * (config.voters.len() + config.voters_outgoing.len() + config.learners.len()) + staging
            }
            EntryPayload::Restore(step) => restore_step_len(step),
        }
}

/// Decodes one entry that fills `data` exactly. A command's bytes share `data`'s
/// buffer rather than being copied.
pub fn decode_entry(data: Bytes) -> Result<Entry, String> {
    let mut buf = data;
    if buf.remaining() < ENTRY_HEADER_LEN {
        return Err(format!("entry of {} bytes is shorter than its {ENTRY_HEADER_LEN}-byte header", buf.remaining()));
    }
    let term = Term(buf.get_u64_le());
    let index = LogIndex(buf.get_u64_le());
    let payload = match buf.get_u8() {
        KIND_NOOP if buf.is_empty() => EntryPayload::Noop,
        KIND_NOOP => return Err(format!("no-op entry {index} carries {} bytes", buf.len())),
        KIND_COMMAND => EntryPayload::Command(buf),
        kind @ (KIND_CONFIG | KIND_CONFIG_STAGED) => {
            let config = decode_configuration(&mut buf, kind == KIND_CONFIG_STAGED)?;
            if !buf.is_empty() {
                return Err(format!("configuration entry {index} has {} trailing bytes", buf.len()));
            }
            EntryPayload::Config(config)
        }
        KIND_RESTORE => EntryPayload::Restore(decode_restore_step(buf, index)?),
        kind => return Err(format!("entry {index} has unknown kind {kind}")),
    };
    Ok(Entry { term, index, payload })
}

/// Appends the encoding of `config` to `out`: the three id lists, and the
/// staging list only when it is not empty (the entry's kind says which).
pub fn encode_configuration(config: &Configuration, out: &mut Vec<u8>) {
    let staging = (!config.staging.is_empty()).then_some(&config.staging);
    for set in [&config.voters, &config.voters_outgoing, &config.learners].into_iter().chain(staging) {
        out.put_u32_le(set.len() as u32);
        for id in set {
            out.put_u64_le(id.0);
        }
    }
}

/// Decodes a configuration; `staged`: it carries the fourth list (kind 3),
/// which must name learners only.
pub fn decode_configuration(buf: &mut impl Buf, staged: bool) -> Result<Configuration, String> {
    let mut sets: [BTreeSet<NodeId>; 4] = Default::default();
    let lists = if staged { 4 } else { 3 };
    for set in sets.iter_mut().take(lists) {
        if buf.remaining() < 4 {
            return Err("configuration truncated before a member count".to_string());
        }
        let count = buf.get_u32_le() as usize;
        if buf.remaining() < count.saturating_mul(8) {
            return Err(format!("configuration lists {count} members but holds {} bytes", buf.remaining()));
        }
        for _ in 0..count {
            set.insert(NodeId(buf.get_u64_le()));
        }
    }
    let [voters, voters_outgoing, learners, staging] = sets;
    let config = Configuration { voters, voters_outgoing, learners, staging };
    if let Some(id) = config.staging.iter().find(|id| !config.is_learner(**id)) {
        return Err(format!("configuration marks node {id} staging, which is not a learner"));
    }
    Ok(config)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn round_trip(entry: Entry) {
        let mut out = Vec::new();
        encode_entry(&entry, &mut out);
        assert_eq!(out.len(), encoded_entry_len(&entry));
        assert_eq!(decode_entry(Bytes::from(out)).unwrap(), entry);
    }

    #[test]
    fn entries_round_trip() {
        round_trip(Entry { term: Term(3), index: LogIndex(7), payload: EntryPayload::Noop });
        round_trip(Entry { term: Term(3), index: LogIndex(8), payload: EntryPayload::Command(Bytes::from("set x 1")) });
        round_trip(Entry { term: Term(3), index: LogIndex(9), payload: EntryPayload::Command(Bytes::new()) });
        let mut config = Configuration::new([NodeId(1), NodeId(2)]);
        config.voters_outgoing.insert(NodeId(3));
        config.learners.insert(NodeId(9));
        round_trip(Entry { term: Term(u64::MAX), index: LogIndex(10), payload: EntryPayload::Config(config) });
    }

    fn restore_entries() -> Vec<Entry> {
        let steps = [
            RestoreStep::Begin { id: 0x0102_0304_0506_0708, len: 5, crc32c: 0xdead_beef },
            RestoreStep::Chunk { id: 7, seq: 3, data: Bytes::from_static(b"hello") },
            RestoreStep::Chunk { id: 7, seq: 0, data: Bytes::new() },
            RestoreStep::Commit { id: u64::MAX, chunks: 2 },
        ];
        steps
            .into_iter()
            .enumerate()
            .map(|(i, step)| Entry {
                term: Term(2),
                index: LogIndex(20 + i as u64),
                payload: EntryPayload::Restore(step),
            })
            .collect()
    }

    #[test]
    fn restore_steps_round_trip_and_every_prefix_is_an_error() {
        for entry in restore_entries() {
            round_trip(entry.clone());
            let mut out = Vec::new();
            encode_entry(&entry, &mut out);
            assert_eq!(out[16], 4);
            for len in 0..out.len() {
                assert!(decode_entry(Bytes::copy_from_slice(&out[..len])).is_err(), "prefix of {len} bytes decoded");
            }
            let mut longer = out.clone();
            longer.push(0);
            assert!(decode_entry(Bytes::from(longer)).unwrap_err().contains("trailing"));
        }
        // An unknown step tag.
        let mut out = Vec::new();
        encode_entry(&restore_entries()[0], &mut out);
        out[17] = 9;
        assert!(decode_entry(Bytes::from(out)).unwrap_err().contains("unknown step"));
        // A chunk length far beyond the data must not allocate or panic.
        let mut out = Vec::new();
        encode_entry(&restore_entries()[1], &mut out);
        out[34..38].copy_from_slice(&u32::MAX.to_le_bytes());
        assert!(decode_entry(Bytes::from(out)).unwrap_err().contains("chunk data truncated"));
    }

    /// The bytes of kind 4, fixed: a change here makes existing logs unreadable.
    #[test]
    fn restore_steps_golden() {
        let header = |index: u64| {
            let mut h = Vec::new();
            h.extend_from_slice(&2u64.to_le_bytes());
            h.extend_from_slice(&index.to_le_bytes());
            h.push(4);
            h
        };
        let entries = restore_entries();
        let mut begin = header(20);
        begin.push(0);
        begin.extend_from_slice(&0x0102_0304_0506_0708u64.to_le_bytes());
        begin.extend_from_slice(&5u64.to_le_bytes());
        begin.extend_from_slice(&0xdead_beefu32.to_le_bytes());
        let mut chunk = header(21);
        chunk.push(1);
        chunk.extend_from_slice(&7u64.to_le_bytes());
        chunk.extend_from_slice(&3u64.to_le_bytes());
        chunk.extend_from_slice(&5u32.to_le_bytes());
        chunk.extend_from_slice(b"hello");
        let mut commit = header(23);
        commit.push(2);
        commit.extend_from_slice(&u64::MAX.to_le_bytes());
        commit.extend_from_slice(&2u64.to_le_bytes());
        for (entry, golden) in [(&entries[0], begin), (&entries[1], chunk), (&entries[3], commit)] {
            let mut out = Vec::new();
            encode_entry(entry, &mut out);
            assert_eq!(out, golden, "{entry:?}");
        }
    }

    #[test]
    fn truncated_or_malformed_input_is_an_error() {
        let config = Configuration::new([NodeId(1), NodeId(2)]);
        let mut out = Vec::new();
        encode_entry(&Entry { term: Term(1), index: LogIndex(1), payload: EntryPayload::Config(config) }, &mut out);
        for len in 0..out.len() {
            assert!(decode_entry(Bytes::copy_from_slice(&out[..len])).is_err(), "prefix of {len} bytes decoded");
        }
        let mut bad_kind = out.clone();
        bad_kind[16] = 9;
        assert!(decode_entry(Bytes::from(bad_kind)).unwrap_err().contains("unknown kind"));
        // A member count far beyond the data must not allocate or panic.
        let mut huge = out[..17].to_vec();
        huge.extend_from_slice(&u32::MAX.to_le_bytes());
        assert!(decode_entry(Bytes::from(huge)).is_err());
    }

    /// A configuration without staging is kind 2, byte for byte as before
    /// staging existed; with it, kind 3 with a fourth list that names
    /// learners only, and every prefix is still an error.
    #[test]
    fn staging_is_kind_3_and_leaves_kind_2_unchanged() {
        let mut config = Configuration::new([NodeId(1), NodeId(2)]);
        config.learners.insert(NodeId(9));
        let mut out = Vec::new();
        encode_entry(
            &Entry { term: Term(1), index: LogIndex(4), payload: EntryPayload::Config(config.clone()) },
            &mut out,
        );
        let mut golden = Vec::new();
        golden.extend_from_slice(&1u64.to_le_bytes());
        golden.extend_from_slice(&4u64.to_le_bytes());
        golden.push(2);
        for list in [&[1u64, 2][..], &[], &[9]] {
            golden.extend_from_slice(&(list.len() as u32).to_le_bytes());
            list.iter().for_each(|id| golden.extend_from_slice(&id.to_le_bytes()));
        }
        assert_eq!(out, golden);

        config.staging.insert(NodeId(9));
        let staged = Entry { term: Term(1), index: LogIndex(5), payload: EntryPayload::Config(config.clone()) };
        round_trip(staged.clone());
        let mut out = Vec::new();
        encode_entry(&staged, &mut out);
        assert_eq!(out[16], 3);
        for len in 0..out.len() {
            assert!(decode_entry(Bytes::copy_from_slice(&out[..len])).is_err(), "prefix of {len} bytes decoded");
        }
        // A staging mark on a voter is refused.
        let mut voter_staged = config;
        voter_staged.staging.insert(NodeId(1));
        let mut out = Vec::new();
        encode_entry(
            &Entry { term: Term(1), index: LogIndex(6), payload: EntryPayload::Config(voter_staged) },
            &mut out,
        );
        assert!(decode_entry(Bytes::from(out)).unwrap_err().contains("not a learner"));
    }
}
