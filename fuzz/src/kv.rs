//! Harnesses for the decoders of `raftkv` that read bytes from outside the
//! process: the image of snapshots and backups (`state/image.rs`: a leader's
//! InstallSnapshot, an operator's backup file, a restore upload) and the
//! JSON of commands and answers (`state/command.rs`: log entries, forwarded
//! writes, a leader's answer to a forwarded write), the internal gRPC's
//! messages and gossip datagrams (`agent/gossip.rs`).
//!
//! Like `raft.rs`: each `pub fn name(data: &[u8])` panics only if a decoder
//! broke a rule; the fuzz targets, the `cargo test` fuzz tests and the
//! corpus replay (`crates/raftkv/tests/fuzz_*.rs`) all call them.
#![allow(dead_code)]

use std::collections::BTreeMap;

use raftkv::state::image::{self, ImageHeader, ImageKind, ImageWriter, Members};
use raftkv::state::{Answer, Command, Kv, KvMachine, KvState, Limits, Peer};
use raftkv_raft::{Entry, EntryPayload, LogIndex, StateMachine, Term};

use crate::support::bounded;

const END: &[u8; 8] = b"RKVEND01";

/// An image with `header` and `records` (data records, then staging
/// records), as the writer makes it.
pub fn image_bytes(header: &ImageHeader, records: &[(String, Vec<u8>, u64)]) -> Vec<u8> {
    let mut writer = ImageWriter::new(Vec::new(), header).expect("an image header serializes");
    for (key, value, index) in records {
        writer.record(key, value, *index).expect("writing to memory");
    }
    writer.finish().expect("as many records as the header says")
}

/// A header for `keys` data records (and a staging map of `staging` keys).
pub fn image_header(kind: ImageKind, keys: u64, staging: Option<(String, u64, u64)>) -> ImageHeader {
    ImageHeader {
        format: image::FORMAT,
        kind,
        index: 42,
        term: 3,
        members: Some(Members { voters: vec![1, 2, 3], learners: vec![] }),
        keys,
        peers: BTreeMap::new(),
        staging: staging.map(|(id, next_seq, keys)| image::StagingHeader { id, next_seq, keys }),
        last_restore: None,
        created_unix_ms: 1,
    }
}

/// Sets the trailer's CRC of an image that ends in one, as a writer would
/// have: a fuzzer's mutations then reach the reader's checks behind it.
pub fn fix_trailer(image: &mut [u8]) {
    let n = image.len();
    if n >= 12 && &image[n - 12..n - 4] == END {
        let crc = crc32c::crc32c(&image[..n - 12]);
        image[n - 4..].copy_from_slice(&crc.to_le_bytes());
    }
}

fn new_machine() -> (Kv, KvMachine) {
    let kv = Kv::default();
    let machine = kv.state_machine(|_, _| {});
    (kv, machine)
}

/// What two restored states must share.
fn same_state(a: &KvState, b: &KvState) -> bool {
    let staging = |s: &KvState| s.staging.as_ref().map(|s| (s.id.clone(), s.next_seq, s.data.clone()));
    a.data == b.data
        && a.peers == b.peers
        && a.applied == b.applied
        && a.applied_term == b.applied_term
        && staging(a) == staging(b)
        && a.last_restore == b.last_restore
}

/// An image as the fuzzer makes it: a flags byte (bit 0: set the trailer's
/// CRC as a writer would), then the image. `verify`, the state machine's
/// `snapshot_check` and `restore` agree on whether it is whole; one that
/// restores is captured again into an image that verifies and restores to
/// the same state; a restore in progress in it takes its next chunk.
pub fn image(data: &[u8]) {
    let Some((&flags, bytes)) = data.split_first() else { return };
    let mut bytes = bytes.to_vec();
    if flags & 1 != 0 {
        fix_trailer(&mut bytes);
    }
    check_image(&bytes);
}

/// `image` without the flags byte: `bytes` is the image as it arrives.
pub fn check_image(bytes: &[u8]) {
    let n = bytes.len();
    let verified = bounded("image::verify", n, || image::verify(bytes));
    let (kv, mut machine) = new_machine();
    let checked = bounded("snapshot_check", n, || {
        let check = machine.snapshot_check().expect("the machine checks snapshots");
        check(&mut &bytes[..])
    });
    let restored = bounded("KvMachine::restore", n, || machine.restore(&mut &bytes[..]));
    match &verified {
        Ok((header, size)) => {
            assert_eq!(*size, n as u64, "verify's size of an image");
            assert!(restored.is_ok(), "an image that verifies does not restore: {restored:?}");
            assert_eq!(checked.is_ok(), header.kind == ImageKind::Snapshot, "snapshot_check of a {:?}", header.kind);
        }
        Err(_) => {
            assert!(restored.is_err(), "an image that does not verify restores");
            assert!(checked.is_err(), "an image that does not verify passes snapshot_check");
        }
    }
    let Ok((header, _)) = verified else { return };

    // Captured again, it makes an image that restores to the same state.
    let captured = kv.read().capture(ImageKind::Snapshot, header.members.clone());
    let mut again = Vec::new();
    captured.write_image(&mut again).expect("an image is written to memory");
    assert_eq!(again.len() as u64, captured.size(), "an image's size as announced");
    image::verify(again.as_slice()).expect("an image this node wrote verifies");
    let (kv2, mut machine2) = new_machine();
    machine2.restore(&mut again.as_slice()).expect("an image this node wrote restores");
    assert!(same_state(&kv.read(), &kv2.read()), "an image does not round-trip through a restore");

    // A restore in progress takes its next chunk (one at the end of the
    // range is refused, not counted past it).
    let staging = kv.read().staging.as_ref().map(|s| (s.id.clone(), s.next_seq));
    if let Some((id, seq)) = staging {
        let applied = kv.read().applied.0;
        let chunk = Command::RestoreChunk { id, seq, pairs: vec![("k".into(), "v".into())] };
        let entry = Entry {
            term: Term(1),
            index: LogIndex(applied.saturating_add(1)),
            payload: EntryPayload::Command(chunk.encode()),
        };
        let answers = machine.apply(&[entry]);
        Answer::decode(&answers[0]).expect("the machine's answer decodes");
    }
}

/// A command or an answer in JSON, as a log entry or a forwarding leader
/// carries it. A command that decodes encodes to JSON that decodes to it
/// again, is judged by the client limits without panicking, and applies to
/// a state machine with an answer that decodes; likewise for answers.
pub fn command_json(data: &[u8]) {
    let n = data.len();
    if let Ok(command) = bounded("Command::decode", n, || Command::decode(data)) {
        let again = Command::decode(&command.encode()).expect("an encoded command decodes");
        assert_eq!(again, command, "a command does not round-trip");
        let _ = command.check_client(&Limits::default());
    }
    // Whatever the bytes, the state machine answers (`Invalid` if they are no command).
    let (_, mut machine) = new_machine();
    let entry = Entry { term: Term(1), index: LogIndex(1), payload: EntryPayload::Command(data.to_vec().into()) };
    let answers = bounded("KvMachine::apply", n, || machine.apply(&[entry]));
    assert_eq!(answers.len(), 1);
    Answer::decode(&answers[0]).expect("the machine's answer decodes");
    if let Ok(answer) = bounded("Answer::decode", n, || Answer::decode(data)) {
        let again = Answer::decode(&answer.encode()).expect("an encoded answer decodes");
        assert_eq!(again, answer, "an answer does not round-trip");
    }
}

/// The internal gRPC's messages (forwarded writes, admin operations, cluster
/// info, and their answers), as a node receives them from another: prost
/// decodes each kind, the conversions read them or refuse them, and what
/// converts converts back unchanged. A forwarded batch's commands are judged
/// as the serving side judges them (decoded, within the client limits); an
/// applied answer decodes as the forwarding side decodes it.
pub fn internal_rpc(data: &[u8]) {
    use prost::Message as _;
    use raftkv::agent::wire::{self, proto};
    let n = data.len();
    if let Ok(batch) = bounded("ApplyBatchRequest::decode", n, || proto::ApplyBatchRequest::decode(data)) {
        for command in batch.commands {
            if let Ok(command) = Command::decode(&command) {
                let _ = command.check_client(&Limits::default());
            }
        }
    }
    if let Ok(response) = bounded("ApplyBatchResponse::decode", n, || proto::ApplyBatchResponse::decode(data)) {
        if let Some(refused) = response.refused {
            check_failure(refused);
        }
        for result in response.results {
            match result.result {
                Some(proto::apply_result::Result::Applied(applied)) => {
                    let _ = Answer::decode(&applied.response);
                }
                Some(proto::apply_result::Result::Failure(failure)) => check_failure(failure),
                None => {}
            }
        }
    }
    if let Ok(request) = bounded("AdminRequest::decode", n, || proto::AdminRequest::decode(data)) {
        if let Ok(op) = wire::admin_from_proto(request) {
            let again = wire::admin_from_proto(wire::admin_to_proto(op.clone()));
            assert_eq!(again, Ok(op), "an admin operation does not round-trip");
        }
    }
    if let Ok(response) = bounded("AdminResponse::decode", n, || proto::AdminResponse::decode(data)) {
        match response.result {
            Some(proto::admin_response::Result::Failure(failure)) => check_failure(failure),
            Some(proto::admin_response::Result::Done(done)) if !done.autopilot_json.is_empty() => {
                let _ = serde_json::from_slice::<raftkv::agent::autopilot::AutopilotState>(&done.autopilot_json);
            }
            _ => {}
        }
    }
    let _ = bounded("ClusterInfoResponse::decode", n, || proto::ClusterInfoResponse::decode(data));
}

/// A failure from another node reads as one this node sends the same way.
fn check_failure(failure: raftkv::agent::wire::proto::Failure) {
    use raftkv::agent::wire;
    let read = wire::failure_from_proto(failure);
    let again = wire::failure_from_proto(wire::failure_to_proto(read.clone()));
    assert_eq!(again, read, "a failure does not round-trip");
}

/// Gossip datagrams as a member's socket receives them
/// (`agent::gossip::fuzzing::receive`): the AES-GCM opening, the frame with
/// its cluster id, foca's codec with raftkv's bounds, and foca's handling of
/// what decodes. The input is a flag byte (bit 0: seal each datagram with
/// the member's key first, so mutations reach the frame and foca through
/// the encryption; else the bytes arrive as sent and must open or be read
/// unsealed), then datagrams, each behind a two-byte little-endian length.
pub fn gossip(data: &[u8]) {
    let Some((&flags, mut rest)) = data.split_first() else { return };
    let mut datagrams = Vec::new();
    while rest.len() >= 2 && datagrams.len() < 16 {
        let len = usize::from(u16::from_le_bytes([rest[0], rest[1]])).min(rest.len() - 2);
        datagrams.push(rest[2..2 + len].to_vec());
        rest = &rest[2 + len..];
    }
    let n = data.len();
    let members = bounded("gossip receive", n, || raftkv::agent::gossip::fuzzing::receive(&datagrams, flags & 1 == 1));
    // At most as many members as the datagrams could name.
    assert!(members <= n / 8, "{members} members from {n} bytes");
}

/// `datagrams` in the `gossip` harness's input format.
pub fn gossip_input(sealed: bool, datagrams: &[Vec<u8>]) -> Vec<u8> {
    let mut input = vec![u8::from(sealed)];
    for datagram in datagrams {
        input.extend_from_slice(&(datagram.len() as u16).to_le_bytes());
        input.extend_from_slice(datagram);
    }
    input
}

/// Small valid inputs of each kv harness, in its own input format: the seed
/// corpora of the fuzz targets (`fuzz/corpus/<name>/`), also replayed by
/// `cargo test`.
pub fn seeds() -> Vec<(&'static str, Vec<Vec<u8>>)> {
    let record = |k: &str, v: &[u8], i: u64| (k.to_string(), v.to_vec(), i);
    let data = vec![
        record("alpha", b"one", 3),
        record("beta", b"", 4),
        record("ключ", "значение".as_bytes(), 5),
        record("binary", &[0xff, 0, 0xfe], 6),
    ];
    let mut with_peers = image_header(ImageKind::Snapshot, 4, None);
    with_peers.peers.insert(1, Peer { raft_addr: "127.0.0.1:7001".into(), http_addr: "127.0.0.1:8001".into() });
    with_peers.last_restore = Some(("r1".into(), 2));
    let staging = image_header(ImageKind::Snapshot, 4, Some(("r2".into(), 1, 1)));
    let staged: Vec<_> = data.iter().cloned().chain([record("gamma", b"three", 7)]).collect();
    let images = [
        image_bytes(&image_header(ImageKind::Snapshot, 0, None), &[]),
        image_bytes(&image_header(ImageKind::Backup, 4, None), &data),
        image_bytes(&with_peers, &data),
        image_bytes(&staging, &staged),
    ];
    let image = images.iter().flat_map(|i| [[&[0u8][..], i].concat(), [&[1u8][..], i].concat()]).collect();

    let commands = [
        Command::Set { key: "a".into(), value: "1".into() },
        Command::Set { key: "b".into(), value: vec![0xff, 0].into() },
        Command::Delete { key: "a".into() },
        Command::Cas { key: "a".into(), expected: Some("1".into()), value: "2".into() },
        Command::Cas { key: "b".into(), expected: None, value: "2".into() },
        Command::RegisterPeer { id: 2, raft_addr: "127.0.0.1:7002".into(), http_addr: "127.0.0.1:8002".into() },
        Command::RestoreBegin { id: "r".into() },
        Command::RestoreChunk { id: "r".into(), seq: 0, pairs: vec![("k".into(), "v".into())] },
        Command::RestoreCommit { id: "r".into(), chunks: 1, keys: 1 },
        Command::RestoreAbort { id: "r".into() },
    ];
    let answers = [
        Answer::Done,
        Answer::Deleted { existed: true },
        Answer::CasFailed { current: Some("1".into()) },
        Answer::CasFailed { current: Some(vec![0xfe].into()) },
        Answer::Invalid { reason: "x".into() },
        Answer::Restored { keys: 3 },
        Answer::RestoreFailed { reason: "y".into() },
    ];
    let command_json =
        commands.iter().map(|c| c.encode().to_vec()).chain(answers.iter().map(|a| a.encode().to_vec())).collect();
    let internal_rpc = internal_seeds(&commands.iter().map(|c| c.encode().to_vec()).collect::<Vec<_>>());
    let samples = raftkv::agent::gossip::fuzzing::samples();
    let mut gossip: Vec<Vec<u8>> = samples.iter().map(|d| gossip_input(true, std::slice::from_ref(d))).collect();
    gossip.push(gossip_input(true, &samples));
    gossip.push(gossip_input(false, &samples));
    vec![("image", image), ("command_json", command_json), ("internal_rpc", internal_rpc), ("gossip", gossip)]
}

fn internal_seeds(commands: &[Vec<u8>]) -> Vec<Vec<u8>> {
    use prost::Message as _;
    use raftkv::agent::wire::{self, proto};
    use raftkv::agent::{AdminDone, AdminOp, Failure, Kind, Member, Outcome};
    use raftkv_raft::NodeId;
    let failure = Failure { kind: Kind::NoLeader, outcome: Outcome::NotDone, message: "no leader is known".into() };
    let member = Member { id: NodeId(4), raft_addr: "127.0.0.1:7004".into(), http_addr: "127.0.0.1:8004".into() };
    let mut seeds = vec![
        proto::ApplyBatchRequest { commands: commands.iter().cloned().map(Into::into).collect() }.encode_to_vec(),
        proto::ApplyBatchResponse {
            refused: None,
            results: vec![
                proto::ApplyResult {
                    result: Some(proto::apply_result::Result::Applied(proto::Applied {
                        index: 7,
                        response: Answer::Done.encode(),
                    })),
                },
                proto::ApplyResult {
                    result: Some(proto::apply_result::Result::Failure(wire::failure_to_proto(failure.clone()))),
                },
            ],
        }
        .encode_to_vec(),
        proto::ApplyBatchResponse { refused: Some(wire::failure_to_proto(failure.clone())), results: vec![] }
            .encode_to_vec(),
        proto::ClusterInfoResponse {
            cluster_id: "3f2a".into(),
            leader_id: 1,
            leader_raft_addr: "127.0.0.1:7001".into(),
            node_id: 2,
            members: vec![1, 2, 3],
            membership_index: 5,
            membership_committed: true,
            removed: false,
            activity: Some(proto::NodeActivity {
                role: "follower".into(),
                term: 4,
                commit_index: 9,
                applied_index: 9,
                last_log_index: 10,
                reads: Some(proto::RequestCounts { done: 3, failed: 1, micros: 900, buckets: vec![1, 2, 0, 1] }),
                writes: None,
                serving: true,
            }),
        }
        .encode_to_vec(),
    ];
    for op in [
        AdminOp::Join { member, replace: true },
        AdminOp::Remove(NodeId(3)),
        AdminOp::Transfer(None),
        AdminOp::Transfer(Some(NodeId(2))),
        AdminOp::AutopilotState,
    ] {
        seeds.push(wire::admin_to_proto(op).encode_to_vec());
    }
    for answer in
        [Ok(AdminDone::Changed(raftkv_raft::LogIndex(9))), Ok(AdminDone::Transferred(NodeId(2))), Err(failure)]
    {
        seeds.push(wire::admin_answer_to_proto(answer).encode_to_vec());
    }
    seeds
}
