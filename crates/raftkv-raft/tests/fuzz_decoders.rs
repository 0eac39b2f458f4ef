//! Fuzz tests of the decoders that read bytes from outside the process: raft
//! wire messages and the wire header, the entry codec, the WAL (records,
//! segment headers, the manifest, whole directories), the stable store and
//! the snapshot store's metadata. Each decoder gets arbitrary bytes and
//! valid encodings with mutations (bit flips, truncations, splices, length
//! fields set huge), and must return errors as values, never panic, never
//! ask for a huge allocation because a length field said so, and give
//! back what was encoded. The checks live in `fuzz/src/raft.rs`, shared
//! with the cargo-fuzz targets of the same names (docs/fuzzing.md).

#[path = "../../../fuzz/src/raft.rs"]
mod harness;
#[path = "../../../fuzz/src/support.rs"]
mod support;

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

use bytes::Bytes;
use harness::MemFs;
use proptest::prelude::*;
use prost::Message as _;
use raftkv_core::{
    AppendEntries, AppendEntriesResponse, AppendResult, InstallSnapshot, InstallSnapshotResponse, RequestVote,
    RequestVoteResponse, RestoreStep,
};
use raftkv_raft::storage::codec::{decode_entry, encode_entry};
use raftkv_raft::storage::{LogStore, StableStore, Wal, WalOptions};
use raftkv_raft::transport::grpc::{from_proto, proto, to_proto};
use raftkv_raft::{Configuration, Entry, EntryPayload, LogId, LogIndex, Message, NodeId, SnapshotMeta, Term};

#[global_allocator]
static ALLOC: support::Tracking = support::Tracking;

fn config(cases: u32) -> ProptestConfig {
    ProptestConfig { cases, failure_persistence: None, ..ProptestConfig::default() }
}

// ---- Strategies ------------------------------------------------------------------

fn bytes(max: usize) -> impl Strategy<Value = Vec<u8>> {
    proptest::collection::vec(any::<u8>(), 0..max)
}

/// Numbers small, at the edges, or anything.
fn number() -> impl Strategy<Value = u64> {
    prop_oneof![0..10u64, Just(u64::MAX), Just((1 << 62) - 1), Just(1 << 62), any::<u64>()]
}

fn ids() -> impl Strategy<Value = BTreeSet<NodeId>> {
    proptest::collection::btree_set((1..8u64).prop_map(NodeId), 0..4)
}

fn configuration() -> impl Strategy<Value = Configuration> {
    (ids(), ids(), ids(), any::<u8>()).prop_map(|(voters, voters_outgoing, learners, pick)| {
        // Staging marks only learners that are not voters too.
        let config = Configuration { voters, voters_outgoing, learners, staging: BTreeSet::new() };
        let staging = (config.learners.iter().enumerate())
            .filter(|(i, id)| pick & (1 << i) != 0 && config.is_learner(**id))
            .map(|(_, id)| *id)
            .collect();
        Configuration { staging, ..config }
    })
}

fn restore_step() -> impl Strategy<Value = RestoreStep> {
    prop_oneof![
        (number(), number(), any::<u32>()).prop_map(|(id, len, crc32c)| RestoreStep::Begin { id, len, crc32c }),
        (number(), number(), bytes(64)).prop_map(|(id, seq, data)| RestoreStep::Chunk {
            id,
            seq,
            data: Bytes::from(data)
        }),
        (number(), number()).prop_map(|(id, chunks)| RestoreStep::Commit { id, chunks }),
    ]
}

fn payload() -> impl Strategy<Value = EntryPayload> {
    prop_oneof![
        Just(EntryPayload::Noop),
        bytes(96).prop_map(|data| EntryPayload::Command(Bytes::from(data))),
        configuration().prop_map(EntryPayload::Config),
        restore_step().prop_map(EntryPayload::Restore),
    ]
}

fn entry() -> impl Strategy<Value = Entry> {
    (number(), number(), payload()).prop_map(|(term, index, payload)| Entry {
        term: Term(term),
        index: LogIndex(index),
        payload,
    })
}

/// `n` entries of a log from `first`, terms never going down.
fn log(first: u64, n: usize) -> impl Strategy<Value = Vec<Entry>> {
    proptest::collection::vec((0..2u64, payload()), n).prop_map(move |steps| {
        let mut term = 1;
        steps
            .into_iter()
            .enumerate()
            .map(|(i, (bump, payload))| {
                term += bump;
                Entry { term: Term(term), index: LogIndex(first + i as u64), payload }
            })
            .collect()
    })
}

fn log_id() -> impl Strategy<Value = LogId> {
    (number(), number()).prop_map(|(term, index)| LogId::new(Term(term), LogIndex(index)))
}

fn message() -> impl Strategy<Value = Message> {
    prop_oneof![
        (number(), log_id(), any::<bool>(), any::<bool>()).prop_map(|(term, last_log_id, pre_vote, transfer)| {
            Message::RequestVote(RequestVote { term: Term(term), last_log_id, pre_vote, leadership_transfer: transfer })
        }),
        (number(), any::<bool>(), any::<bool>()).prop_map(|(term, granted, pre_vote)| {
            Message::RequestVoteResponse(RequestVoteResponse { term: Term(term), granted, pre_vote })
        }),
        (number(), log_id(), proptest::collection::vec(entry(), 0..4), number(), number()).prop_map(
            |(term, prev_log_id, entries, commit, round)| Message::AppendEntries(AppendEntries {
                term: Term(term),
                prev_log_id,
                entries,
                leader_commit: LogIndex(commit),
                round,
            })
        ),
        (number(), number(), 0..3u8, number(), log_id()).prop_map(|(term, round, kind, index, hint)| {
            let result = match kind {
                0 => AppendResult::Success { match_index: LogIndex(index) },
                1 => AppendResult::Conflict { rejected: LogIndex(index), hint },
                _ => AppendResult::StaleTerm,
            };
            Message::AppendEntriesResponse(AppendEntriesResponse { term: Term(term), round, result })
        }),
        (number(), log_id(), configuration(), number(), bytes(64), any::<bool>()).prop_map(
            |(term, last_log_id, config, offset, data, done)| Message::InstallSnapshot(InstallSnapshot {
                term: Term(term),
                meta: SnapshotMeta { last_log_id, config },
                offset,
                data: Bytes::from(data),
                done,
            })
        ),
        (number(), log_id(), number(), any::<bool>()).prop_map(|(term, snapshot, next_offset, done)| {
            Message::InstallSnapshotResponse(InstallSnapshotResponse { term: Term(term), snapshot, next_offset, done })
        }),
        number().prop_map(|term| Message::TimeoutNow { term: Term(term) }),
        (number(), number()).prop_map(|(term, read_id)| Message::ReadIndexRequest { term: Term(term), read_id }),
        (number(), number(), proptest::option::of(number())).prop_map(|(term, read_id, index)| {
            Message::ReadIndexResponse { term: Term(term), read_id, index: index.map(LogIndex) }
        }),
    ]
}

/// One change to a valid encoding. Positions are taken modulo the length.
#[derive(Clone, Debug)]
enum Mutation {
    FlipBit(usize, u8),
    Truncate(usize),
    /// Copies `len` bytes from one place over another (records into records).
    Splice {
        from: usize,
        to: usize,
        len: usize,
    },
    Insert(usize, Vec<u8>),
    Remove(usize, usize),
    /// Writes a huge little-endian number (a length field set huge).
    Huge(usize, u64),
}

fn mutation() -> impl Strategy<Value = Mutation> {
    prop_oneof![
        3 => (any::<usize>(), 0..8u8).prop_map(|(at, bit)| Mutation::FlipBit(at, bit)),
        2 => any::<usize>().prop_map(Mutation::Truncate),
        1 => (any::<usize>(), any::<usize>(), 1..64usize).prop_map(|(from, to, len)| Mutation::Splice { from, to, len }),
        1 => (any::<usize>(), bytes(16)).prop_map(|(at, data)| Mutation::Insert(at, data)),
        1 => (any::<usize>(), 1..32usize).prop_map(|(at, len)| Mutation::Remove(at, len)),
        2 => (any::<usize>(), prop_oneof![Just(u64::MAX), Just(u32::MAX as u64), Just(0x7fff_ffff), Just(1 << 40)])
            .prop_map(|(at, n)| Mutation::Huge(at, n)),
    ]
}

fn mutations() -> impl Strategy<Value = Vec<Mutation>> {
    proptest::collection::vec(mutation(), 1..4)
}

fn mutate(data: &mut Vec<u8>, mutations: &[Mutation]) {
    for m in mutations {
        let n = data.len();
        if n == 0 {
            if let Mutation::Insert(_, bytes) = m {
                data.extend_from_slice(bytes);
            }
            continue;
        }
        match m {
            Mutation::FlipBit(at, bit) => data[at % n] ^= 1 << bit,
            Mutation::Truncate(at) => data.truncate(at % n),
            Mutation::Splice { from, to, len } => {
                let (from, to) = (from % n, to % n);
                let len = (*len).min(n - from).min(n - to);
                let piece = data[from..from + len].to_vec();
                data[to..to + len].copy_from_slice(&piece);
            }
            Mutation::Insert(at, bytes) => {
                let at = at % (n + 1);
                data.splice(at..at, bytes.iter().copied());
            }
            Mutation::Remove(at, len) => {
                let at = at % n;
                data.drain(at..(at + len).min(n));
            }
            Mutation::Huge(at, value) => {
                let at = at % n;
                let bytes = value.to_le_bytes();
                let len = if *value > u32::MAX as u64 { 8 } else { 4 };
                let len = len.min(n - at);
                data[at..at + len].copy_from_slice(&bytes[..len]);
            }
        }
    }
}

// ---- The entry codec -------------------------------------------------------------

proptest! {
    #![proptest_config(config(20_000))]

    #[test]
    fn entry_codec_takes_arbitrary_bytes(data in bytes(256)) {
        harness::entry_codec(&data);
    }

    #[test]
    fn entry_codec_takes_mutated_entries(entry in entry(), mutations in mutations()) {
        let mut data = Vec::new();
        encode_entry(&entry, &mut data);
        mutate(&mut data, &mutations);
        harness::entry_codec(&data);
    }
}

proptest! {
    #![proptest_config(config(4000))]

    /// Valid entries round-trip byte for byte, and every prefix of one with
    /// a fixed length (all but commands, whose bytes run to the end) is an error.
    #[test]
    fn entries_round_trip_and_their_prefixes_are_errors(entry in entry()) {
        let mut data = Vec::new();
        encode_entry(&entry, &mut data);
        harness::entry_codec(&data);
        prop_assert_eq!(&decode_entry(Bytes::from(data.clone())).unwrap(), &entry);
        let exact = !matches!(entry.payload, EntryPayload::Command(_));
        for len in 0..data.len() {
            let prefix = decode_entry(Bytes::copy_from_slice(&data[..len]));
            prop_assert!(len >= 17 && !exact || prefix.is_err(), "prefix of {} bytes of {:?} decoded", len, entry);
        }
    }
}

// ---- The WAL ---------------------------------------------------------------------

fn wal_dir() -> &'static Path {
    Path::new("/wal")
}

/// Every entry a damaged log gives back is the one that was written there.
fn assert_nothing_wrong(recovered: &[Entry], written: &[Entry]) {
    for entry in recovered {
        let original = written.iter().find(|e| e.index == entry.index);
        assert_eq!(Some(entry), original, "a damaged log gave back an entry that was never written");
    }
}

proptest! {
    #![proptest_config(config(5000))]

    #[test]
    fn wal_record_takes_arbitrary_bytes(data in bytes(512)) {
        harness::wal_record(&data);
    }

    #[test]
    fn wal_dir_takes_arbitrary_bytes(data in bytes(1024)) {
        harness::wal_dir(&data);
    }

    /// Records with their checksums set (so the entry decoder behind them
    /// is reached) and any first index, near the top of the range too.
    #[test]
    fn wal_records_with_valid_checksums(
        first in prop_oneof![Just(1u64), 1..1000u64, Just(u64::MAX), Just(u64::MAX - 3), Just(1 << 62)],
        entries in log(1, 6),
        mutations in mutations(),
        flags in 0..8u8,
    ) {
        let renumbered: Vec<Entry> = entries
            .into_iter()
            .enumerate()
            .filter_map(|(i, e)| Some(Entry { index: LogIndex(first.checked_add(i as u64)?), ..e }))
            .collect();
        let mut records = Vec::new();
        for entry in &renumbered {
            records.extend_from_slice(&harness::record(entry));
        }
        mutate(&mut records, &mutations);
        let mut data = vec![flags | 1];
        data.extend_from_slice(&first.to_le_bytes());
        data.extend_from_slice(&records);
        harness::wal_record(&data);
    }

    /// A valid log of one to three segments and a manifest, one file
    /// damaged: it opens with an error, or recovers entries that were all
    /// written (a torn tail cut off), never a wrong one.
    #[test]
    fn damaged_logs_recover_or_refuse(
        entries in log(1, 12),
        cuts in proptest::collection::btree_set(1..12usize, 0..3),
        purged in 0..4u64,
        victim in any::<usize>(),
        mutations in mutations(),
    ) {
        let fs = MemFs::default();
        let mut bounds: Vec<usize> = std::iter::once(0).chain(cuts.iter().copied()).chain([entries.len()]).collect();
        bounds.dedup();
        let mut files = Vec::new();
        for pair in bounds.windows(2) {
            let first = pair[0] as u64 + 1;
            files.push((harness::segment_name(first), harness::segment(first, &entries[pair[0]..pair[1]])));
        }
        if purged > 0 {
            files.push(("wal.meta".to_string(), harness::manifest(purged + 1)));
        }
        let victim = victim % files.len();
        mutate(&mut files[victim].1, &mutations);
        for (name, data) in &files {
            fs.put(&wal_dir().join(name), data);
        }
        let total: usize = files.iter().map(|(_, data)| data.len()).sum();
        if let Some(recovered) = harness::open_wal(&fs, total) {
            assert_nothing_wrong(&recovered, &entries);
        }
    }

    /// A log cut anywhere in its last segment (a crash mid-write) opens, with
    /// the entries whose records are whole.
    #[test]
    fn a_log_cut_anywhere_opens_with_its_whole_records(entries in log(1, 8), cut in any::<usize>()) {
        let file = harness::segment(1, &entries);
        let cut = 24 + cut % (file.len() - 24 + 1);
        let whole = entries.iter().scan(24, |end, e| { *end += harness::record(e).len(); Some(*end) })
            .filter(|end| *end <= cut).count();
        let fs = MemFs::default();
        fs.put(&wal_dir().join(harness::segment_name(1)), &file[..cut]);
        let recovered = harness::open_wal(&fs, cut).expect("a torn tail is cut off, not an error");
        prop_assert_eq!(&recovered[..], &entries[..whole]);
    }
}

#[test]
fn a_record_length_set_huge_is_damage_not_an_allocation() {
    let entries: Vec<Entry> = (1..=3)
        .map(|i| Entry { term: Term(1), index: LogIndex(i), payload: EntryPayload::Command(Bytes::from("x")) })
        .collect();
    for huge in [u32::MAX, 256 << 20, (256 << 20) + 1, 1 << 30] {
        for victim in 0..3 {
            let mut file = harness::segment(1, &entries);
            let offset = 24 + victim * harness::record(&entries[0]).len();
            file[offset..offset + 4].copy_from_slice(&huge.to_le_bytes());
            let fs = MemFs::default();
            fs.put(&wal_dir().join(harness::segment_name(1)), &file);
            // The last record is a torn tail; an earlier one is followed by a
            // valid record, so it is corruption.
            let recovered = harness::open_wal(&fs, file.len());
            match recovered {
                Some(recovered) => {
                    assert_eq!(victim, 2, "damage before a valid record was cut off as a torn tail");
                    assert_eq!(recovered, entries[..2]);
                }
                None => assert!(victim < 2, "a damaged final record is a torn tail"),
            }
        }
    }
}

/// A segment named by, or a manifest naming, an index at the top of the
/// range (written with valid checksums, so only a forger or a bug makes
/// one) is refused: opening used to overflow `index + 1` and panic.
#[test]
fn first_indexes_at_the_top_of_the_range_are_refused() {
    for first in [u64::MAX, u64::MAX - 1, 1 << 62] {
        let entry = Entry { term: Term(1), index: LogIndex(first), payload: EntryPayload::Noop };
        for damaged_tail in [false, true] {
            let mut file = harness::segment(first, std::slice::from_ref(&entry));
            if damaged_tail {
                file.extend_from_slice(&[0xAB; 40]);
            }
            let fs = MemFs::default();
            fs.put(&wal_dir().join(harness::segment_name(first)), &file);
            assert!(harness::open_wal(&fs, file.len()).is_none(), "a segment starting at {first} opened");
        }
    }
    for first in [0, u64::MAX, 1 << 62] {
        let fs = MemFs::default();
        fs.put(&wal_dir().join("wal.meta"), &harness::manifest(first));
        assert!(harness::open_wal(&fs, 20).is_none(), "a manifest naming {first} opened");
    }
    // Just below the bound, both still open.
    let first = (1 << 62) - 1;
    let entry = Entry { term: Term(1), index: LogIndex(first), payload: EntryPayload::Noop };
    let fs = MemFs::default();
    fs.put(&wal_dir().join(harness::segment_name(first)), &harness::segment(first, std::slice::from_ref(&entry)));
    assert_eq!(harness::open_wal(&fs, 64), Some(vec![entry]));
    let fs = MemFs::default();
    fs.put(&wal_dir().join("wal.meta"), &harness::manifest(first));
    assert_eq!(harness::open_wal(&fs, 20), Some(vec![]));
}

#[test]
fn the_real_file_system_refuses_or_recovers_random_segments() {
    // The in-memory file system stands in for the disk in the tests above;
    // a few directories on the real one confirm that it behaves the same.
    let mut runner = proptest::test_runner::TestRunner::new(config(50));
    runner
        .run(&(log(1, 5), mutations()), |(entries, mutations)| {
            let dir = tempfile::tempdir().unwrap();
            let mut file = harness::segment(1, &entries);
            mutate(&mut file, &mutations);
            std::fs::write(dir.path().join(harness::segment_name(1)), &file).unwrap();
            if let Ok(wal) = Wal::open(dir.path(), WalOptions::default()) {
                let (first, last) = (wal.first_index().unwrap(), wal.last_index().unwrap());
                let recovered = wal.get_range(first, last).unwrap();
                assert_nothing_wrong(&recovered, &entries);
            }
            Ok(())
        })
        .unwrap();
}

// ---- The stable store ------------------------------------------------------------

fn stable_values() -> impl Strategy<Value = BTreeMap<String, Vec<u8>>> {
    proptest::collection::btree_map("[a-z_]{0,12}", bytes(24), 0..6)
}

proptest! {
    #![proptest_config(config(5000))]

    #[test]
    fn stable_store_takes_arbitrary_bytes(data in bytes(256)) {
        harness::stable_store(&data);
        // The same bytes behind a valid header reach the body's decoder.
        let mut file = vec![1];
        file.extend_from_slice(b"RKVSTAB1");
        file.extend_from_slice(&data);
        harness::stable_store(&file);
    }

    #[test]
    fn stable_store_files_round_trip_or_are_refused_when_damaged(
        values in stable_values(),
        mutations in mutations(),
        fix_crc in any::<bool>(),
    ) {
        let file = harness::stable_file(&values);
        let store = harness::open_stable(&file).expect("a valid stable store file opens");
        for (key, value) in &values {
            prop_assert_eq!(store.get(key).unwrap(), Some(value.clone()));
        }
        let mut damaged = file.clone();
        mutate(&mut damaged, &mutations);
        if !fix_crc && damaged != file {
            prop_assert!(harness::open_stable(&damaged).is_none(), "a damaged stable store file opened");
        }
        let mut input = vec![u8::from(fix_crc)];
        input.extend_from_slice(&damaged);
        harness::stable_store(&input);
    }
}

#[test]
fn stable_store_lengths_set_huge_are_refused() {
    let values = BTreeMap::from([("term".to_string(), vec![1; 8]), ("vote".to_string(), vec![2; 8])]);
    let file = harness::stable_file(&values);
    // The count, the first key's length and the first value's length.
    for (at, width) in [(12, 4), (16, 2), (22, 4)] {
        let mut input = vec![1];
        let mut damaged = file.clone();
        damaged[at..at + width].copy_from_slice(&[0xff; 4][..width]);
        input.extend_from_slice(&damaged);
        harness::stable_store(&input);
        let crc = crc32c::crc32c(&damaged[12..]);
        damaged[8..12].copy_from_slice(&crc.to_le_bytes());
        assert!(harness::open_stable(&damaged).is_none(), "a length at {at} set huge was accepted");
    }
}

// ---- The snapshot store ----------------------------------------------------------

fn stored_meta() -> impl Strategy<Value = harness::StoredMeta> {
    (number(), number(), configuration()).prop_map(|(index, term, config)| {
        let ids = |set: &BTreeSet<NodeId>| set.iter().map(|id| id.0).collect();
        harness::StoredMeta {
            version: 1,
            index,
            term,
            voters: ids(&config.voters),
            voters_outgoing: ids(&config.voters_outgoing),
            learners: ids(&config.learners),
            staging: ids(&config.staging),
            size: 0,
            checksum: 0,
        }
    })
}

proptest! {
    #![proptest_config(config(4000))]

    #[test]
    fn snapshot_meta_takes_arbitrary_bytes(data in bytes(512)) {
        harness::snapshot_meta(&data);
    }

    #[test]
    fn snapshots_open_as_written_or_are_refused_when_damaged(
        meta in stored_meta(),
        data in bytes(300),
        damage_meta in any::<bool>(),
        mutations in mutations(),
        offset in 0..400u64,
    ) {
        let meta = harness::StoredMeta { size: data.len() as u64, checksum: crc32c::crc32c(&data), ..meta };
        let json = harness::meta_file(&meta);
        harness::open_snapshot(&json, &data, offset);
        let (mut json2, mut data2) = (json.clone(), data.clone());
        if damage_meta { mutate(&mut json2, &mutations) } else { mutate(&mut data2, &mutations) }
        harness::open_snapshot(&json2, &data2, offset);
        // The same metadata text, with a checksum made right: the fields'
        // own values are all the store has to go by.
        let mut input = vec![1 | ((offset as u8 & 0x3f) << 1)];
        input.extend_from_slice(&(json2.len() as u16).to_le_bytes());
        input.extend_from_slice(&json2);
        input.extend_from_slice(&data2);
        harness::snapshot_meta(&input);
    }
}

// ---- Raft wire messages and the wire header --------------------------------------

proptest! {
    #![proptest_config(config(10_000))]

    #[test]
    fn raft_messages_take_arbitrary_bytes(data in bytes(512)) {
        harness::raft_message(&data);
    }

    #[test]
    fn raft_messages_round_trip_and_take_mutations(messages in proptest::collection::vec(message(), 1..4), mutations in mutations()) {
        let batch = proto::Batch { messages: messages.iter().map(to_proto).collect() };
        let mut wire = batch.encode_to_vec();
        harness::raft_message(&wire);
        let decoded = proto::Batch::decode(wire.as_slice()).unwrap();
        for (sent, received) in messages.iter().zip(decoded.messages) {
            prop_assert_eq!(&from_proto(received).unwrap(), sent);
        }
        mutate(&mut wire, &mutations);
        harness::raft_message(&wire);
    }

    #[test]
    fn wire_headers_take_arbitrary_metadata(data in bytes(256)) {
        harness::wire_header(&data);
    }
}

/// A protobuf length prefix set huge (a bytes field or a packed list claiming
/// gigabytes in a short message) is refused, without allocating it.
#[test]
fn protobuf_lengths_set_huge_are_refused() {
    let message = Message::InstallSnapshot(InstallSnapshot {
        term: Term(2),
        meta: SnapshotMeta { last_log_id: LogId::new(Term(1), LogIndex(5)), config: Configuration::new([NodeId(1)]) },
        offset: 0,
        data: Bytes::from_static(b"chunk of a snapshot"),
        done: false,
    });
    let wire = proto::Batch { messages: vec![to_proto(&message)] }.encode_to_vec();
    for at in 0..wire.len() {
        for huge in [[0xff, 0xff, 0xff, 0xff, 0x0f], [0x80, 0x80, 0x80, 0x80, 0x08]] {
            let mut damaged = wire[..at].to_vec();
            damaged.extend_from_slice(&huge);
            damaged.extend_from_slice(&wire[(at + 1).min(wire.len())..]);
            harness::raft_message(&damaged);
        }
    }
}
