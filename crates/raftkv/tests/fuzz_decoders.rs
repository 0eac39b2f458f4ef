//! Fuzz tests of raftkv's decoders of bytes from outside the process: the
//! image of snapshots and backups (`state/image.rs`, read from a leader's
//! InstallSnapshot, a backup file or a restore upload), the JSON of
//! commands and answers (`state/command.rs`, read from the log and from
//! forwarded writes), the internal gRPC's messages (`agent/wire.rs`) and
//! gossip datagrams (`agent/gossip.rs`). Arbitrary bytes and valid encodings with mutations
//! (bit flips, truncations, splices, length fields set huge) must give
//! errors as values, never a panic or a huge allocation, and what is valid
//! must round-trip. The checks live in `fuzz/src/kv.rs`, shared with the
//! cargo-fuzz targets of the same names (docs/fuzzing.md).

#[path = "../../../fuzz/src/kv.rs"]
mod harness;
#[path = "../../../fuzz/src/support.rs"]
mod support;

use std::collections::BTreeMap;

use proptest::prelude::*;
use raftkv::state::image::{self, ImageError, ImageHeader, ImageKind};
use raftkv::state::{Blob, Command, Kv, Peer};
use raftkv_raft::StateMachine;

#[global_allocator]
static ALLOC: support::Tracking = support::Tracking;

fn config(cases: u32) -> ProptestConfig {
    ProptestConfig { cases, failure_persistence: None, ..ProptestConfig::default() }
}

fn bytes(max: usize) -> impl Strategy<Value = Vec<u8>> {
    proptest::collection::vec(any::<u8>(), 0..max)
}

/// One change to a valid encoding; positions are taken modulo the length.
#[derive(Clone, Debug)]
enum Mutation {
    FlipBit(usize, u8),
    Truncate(usize),
    Splice {
        from: usize,
        to: usize,
        len: usize,
    },
    Insert(usize, Vec<u8>),
    Remove(usize, usize),
    /// A little-endian u32 written over 4 bytes (a length field set huge).
    Huge(usize, u32),
}

fn mutations() -> impl Strategy<Value = Vec<Mutation>> {
    let one = prop_oneof![
        3 => (any::<usize>(), 0..8u8).prop_map(|(at, bit)| Mutation::FlipBit(at, bit)),
        2 => any::<usize>().prop_map(Mutation::Truncate),
        1 => (any::<usize>(), any::<usize>(), 1..64usize).prop_map(|(from, to, len)| Mutation::Splice { from, to, len }),
        1 => (any::<usize>(), bytes(16)).prop_map(|(at, data)| Mutation::Insert(at, data)),
        1 => (any::<usize>(), 1..32usize).prop_map(|(at, len)| Mutation::Remove(at, len)),
        2 => (any::<usize>(), prop_oneof![Just(u32::MAX), Just(64 << 20), Just((64 << 20) + 1), Just(256 << 20), Just(1 << 20)])
            .prop_map(|(at, n)| Mutation::Huge(at, n)),
    ];
    proptest::collection::vec(one, 1..4)
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
                let len = 4.min(n - at);
                data[at..at + len].copy_from_slice(&value.to_le_bytes()[..len]);
            }
        }
    }
}

// ---- Images ----------------------------------------------------------------------

/// A valid image: its header, its data records (unique keys, as a state
/// has them) and its staging records.
#[derive(Clone, Debug)]
struct Image {
    header: ImageHeader,
    data: BTreeMap<String, (Vec<u8>, u64)>,
    staging: BTreeMap<String, (Vec<u8>, u64)>,
}

impl Image {
    fn bytes(&self) -> Vec<u8> {
        let records: Vec<(String, Vec<u8>, u64)> =
            (self.data.iter().chain(&self.staging)).map(|(k, (v, i))| (k.clone(), v.clone(), *i)).collect();
        harness::image_bytes(&self.header, &records)
    }
}

fn records() -> impl Strategy<Value = BTreeMap<String, (Vec<u8>, u64)>> {
    proptest::collection::btree_map("\\PC{0,8}", (value(), any::<u64>()), 0..6)
}

/// A value: text, or any bytes.
fn value() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof!["\\PC{0,16}".prop_map(String::into_bytes), proptest::collection::vec(any::<u8>(), 0..16),]
}

fn an_image() -> impl Strategy<Value = Image> {
    let peers = proptest::collection::btree_map(1..9u64, ("[0-9.:]{0,12}", "[0-9.:]{0,12}"), 0..3);
    (
        prop_oneof![Just(ImageKind::Snapshot), Just(ImageKind::Backup)],
        records(),
        proptest::option::of(("[a-z0-9]{0,8}", prop_oneof![0..5u64, Just(u64::MAX)], records())),
        peers,
        proptest::option::of(("[a-z0-9]{0,8}", any::<u64>())),
        any::<u64>(),
        any::<u64>(),
    )
        .prop_map(|(kind, data, staging, peers, last_restore, index, term)| {
            let staging_records = staging.as_ref().map(|(_, _, records)| records.clone()).unwrap_or_default();
            let mut header = harness::image_header(
                kind,
                data.len() as u64,
                staging.map(|(id, next_seq, records)| (id, next_seq, records.len() as u64)),
            );
            header.index = index;
            header.term = term;
            header.peers =
                (peers.into_iter()).map(|(id, (raft_addr, http_addr))| (id, Peer { raft_addr, http_addr })).collect();
            header.last_restore = last_restore;
            Image { header, data, staging: staging_records }
        })
}

proptest! {
    #![proptest_config(config(5000))]

    #[test]
    fn images_take_arbitrary_bytes(data in bytes(512)) {
        harness::image(&data);
        // The same bytes behind the magic and a plausible header length.
        let mut input = vec![1];
        input.extend_from_slice(b"RKVIMG01");
        input.extend_from_slice(&(data.len().min(64) as u32).to_le_bytes());
        input.extend_from_slice(&data);
        harness::image(&input);
    }

    /// A valid image restores to what was written; damaged, it is refused
    /// (bar a mutation that changed nothing), and with its trailer's CRC
    /// made right the reader's own checks hold.
    #[test]
    fn images_round_trip_or_are_refused_when_damaged(image in an_image(), mutations in mutations()) {
        let bytes = image.bytes();
        harness::check_image(&bytes);
        let kv = Kv::default();
        kv.state_machine(|_, _| {}).restore(&mut bytes.as_slice()).unwrap();
        {
            let state = kv.read();
            let data: BTreeMap<String, (Vec<u8>, u64)> =
                state.data.iter().map(|(k, v)| (k.clone(), (v.value.0.to_vec(), v.index.0))).collect();
            prop_assert_eq!(&data, &image.data);
            prop_assert_eq!(state.applied.0, image.header.index);
            prop_assert_eq!(state.staging.as_ref().map(|s| s.data.len()), image.header.staging.as_ref().map(|_| image.staging.len()));
        }
        let mut damaged = bytes.clone();
        mutate(&mut damaged, &mutations);
        if damaged != bytes {
            prop_assert!(image::verify(damaged.as_slice()).is_err(), "a damaged image verified");
        }
        let mut input = vec![1];
        input.extend_from_slice(&damaged);
        harness::image(&input);
    }
}

/// Each length field of an image set huge, in a short file, with the
/// trailer's CRC right: refused, without allocating what it claims.
#[test]
fn image_lengths_set_huge_are_refused_without_allocating() {
    let header = harness::image_header(ImageKind::Snapshot, 1, None);
    let bytes = harness::image_bytes(&header, &[("key".to_string(), b"value".to_vec(), 7)]);
    let header_len = u32::from_le_bytes(bytes[8..12].try_into().unwrap()) as usize;
    let key_at = 12 + header_len;
    let value_at = key_at + 4 + 3;
    for at in [8, key_at, value_at] {
        for huge in [u32::MAX, 64 << 20, (64 << 20) + 1, 256 << 20, (1 << 20) + 1, 1 << 20] {
            let mut damaged = bytes.clone();
            damaged[at..at + 4].copy_from_slice(&huge.to_le_bytes());
            harness::fix_trailer(&mut damaged);
            harness::check_image(&damaged);
            let refused = image::verify(damaged.as_slice());
            assert!(
                matches!(refused, Err(ImageError::Damaged { .. } | ImageError::Truncated { .. })),
                "length {huge} at {at}: {refused:?}"
            );
        }
    }
}

// ---- Commands and answers ------------------------------------------------------

fn text() -> impl Strategy<Value = String> {
    "\\PC{0,12}"
}

fn command() -> impl Strategy<Value = Command> {
    prop_oneof![
        (text(), value()).prop_map(|(key, value)| Command::Set { key, value: value.into() }),
        text().prop_map(|key| Command::Delete { key }),
        (text(), proptest::option::of(value()), value()).prop_map(|(key, expected, value)| Command::Cas {
            key,
            expected: expected.map(Blob::from),
            value: value.into(),
        }),
        (any::<u64>(), text(), text()).prop_map(|(id, raft_addr, http_addr)| Command::RegisterPeer {
            id,
            raft_addr,
            http_addr
        }),
        text().prop_map(|id| Command::RestoreBegin { id }),
        (text(), any::<u64>(), proptest::collection::vec((text(), value()), 0..3)).prop_map(|(id, seq, pairs)| {
            Command::RestoreChunk { id, seq, pairs: pairs.into_iter().map(|(k, v)| (k, Blob::from(v))).collect() }
        }),
        (text(), any::<u64>(), any::<u64>()).prop_map(|(id, chunks, keys)| Command::RestoreCommit { id, chunks, keys }),
        text().prop_map(|id| Command::RestoreAbort { id }),
    ]
}

/// JSON that is nearly a command: a known or unknown op, fields of the
/// right names with values of any type.
fn json_ish() -> impl Strategy<Value = Vec<u8>> {
    let leaf = prop_oneof![
        Just(serde_json::Value::Null),
        any::<bool>().prop_map(serde_json::Value::from),
        any::<i64>().prop_map(serde_json::Value::from),
        any::<u64>().prop_map(serde_json::Value::from),
        any::<f64>().prop_map(serde_json::Value::from),
        text().prop_map(serde_json::Value::from),
    ];
    let value = leaf.prop_recursive(3, 16, 4, |inner| {
        prop_oneof![
            proptest::collection::vec(inner.clone(), 0..4).prop_map(serde_json::Value::from),
            proptest::collection::btree_map(text(), inner, 0..3)
                .prop_map(|m| serde_json::Value::Object(m.into_iter().collect())),
        ]
    });
    let field = prop_oneof![
        Just("key"),
        Just("value"),
        Just("expected"),
        Just("id"),
        Just("seq"),
        Just("pairs"),
        Just("chunks"),
        Just("keys"),
        Just("raft_addr"),
        Just("http_addr"),
        Just("result"),
        Just("other"),
    ];
    let op = prop_oneof![
        Just("set"),
        Just("delete"),
        Just("cas"),
        Just("register_peer"),
        Just("restore_begin"),
        Just("restore_chunk"),
        Just("restore_commit"),
        Just("restore_abort"),
        Just("Set"),
        Just("done"),
    ];
    (op, proptest::collection::vec((field, value), 0..5), any::<bool>()).prop_map(|(op, fields, tag)| {
        let mut object = serde_json::Map::new();
        object.insert(if tag { "op" } else { "result" }.to_string(), op.into());
        for (name, value) in fields {
            object.insert(name.to_string(), value);
        }
        serde_json::to_vec(&serde_json::Value::Object(object)).unwrap()
    })
}

proptest! {
    #![proptest_config(config(5000))]

    #[test]
    fn command_json_takes_arbitrary_bytes(data in bytes(256)) {
        harness::command_json(&data);
    }

    #[test]
    fn command_json_takes_json_that_is_nearly_a_command(data in json_ish()) {
        harness::command_json(&data);
    }

    #[test]
    fn commands_round_trip_and_take_mutations(command in command(), mutations in mutations()) {
        let encoded = command.encode();
        prop_assert_eq!(Command::decode(&encoded).unwrap(), command);
        harness::command_json(&encoded);
        let mut damaged = encoded.to_vec();
        mutate(&mut damaged, &mutations);
        harness::command_json(&damaged);
    }
}

// ---- The internal gRPC -----------------------------------------------------------

proptest! {
    #![proptest_config(config(5000))]

    #[test]
    fn internal_rpc_takes_arbitrary_bytes(data in bytes(256)) {
        harness::internal_rpc(&data);
    }

    #[test]
    fn internal_rpc_takes_mutated_messages(seed in any::<prop::sample::Index>(), mutations in mutations()) {
        let seeds = harness::seeds().into_iter().find(|(name, _)| *name == "internal_rpc").unwrap().1;
        let mut data = seed.get(&seeds).clone();
        harness::internal_rpc(&data);
        mutate(&mut data, &mutations);
        harness::internal_rpc(&data);
    }
}

// ---- Gossip datagrams ------------------------------------------------------------

proptest! {
    #![proptest_config(config(1000))]

    #[test]
    fn gossip_takes_arbitrary_datagrams(data in bytes(1024)) {
        harness::gossip(&data);
    }

    #[test]
    fn gossip_takes_real_datagrams_with_mutations(
        sealed in any::<bool>(),
        mutations in proptest::collection::vec(mutations(), 1..4),
    ) {
        let mut datagrams = raftkv::agent::gossip::fuzzing::samples();
        for (datagram, mutations) in datagrams.iter_mut().zip(&mutations) {
            mutate(datagram, mutations);
        }
        harness::gossip(&harness::gossip_input(sealed, &datagrams));
    }
}

/// The samples are what real members exchange: a member hearing them comes
/// to know the other one (foca's members do not count the member itself),
/// so the harness reaches foca's handling.
#[test]
fn gossip_samples_introduce_a_member() {
    use raftkv::agent::gossip::fuzzing::{receive, samples};
    let samples = samples();
    assert!(samples.len() >= 2, "{} samples", samples.len());
    assert_eq!(receive(&[], true), 0);
    assert_eq!(receive(&samples, true), 1);
    assert_eq!(receive(&samples, false), 1);
}
