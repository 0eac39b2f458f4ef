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

use std::collections::BTreeSet;

use bytes::{Buf, BufMut, Bytes};
use raftkv_core::{Configuration, Entry, EntryPayload, LogIndex, NodeId, Term};

/// Bytes of an entry's header (term, index, kind): the shortest entry.
pub const ENTRY_HEADER_LEN: usize = 17;

const KIND_NOOP: u8 = 0;
const KIND_COMMAND: u8 = 1;
const KIND_CONFIG: u8 = 2;
const KIND_CONFIG_STAGED: u8 = 3;

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
    }
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
        kind => return Err(format!("entry {index} has unknown kind {kind}")),
    };
    Ok(Entry { term, index, payload })
}

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
