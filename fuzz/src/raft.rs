//! Harnesses for the decoders of `raftkv-raft` that read bytes from outside
//! the process: the raft wire messages (protobuf, then the conversion into
//! the core's `Message`), the wire header in gRPC metadata, the WAL (records,
//! segment headers, the manifest, recovery of a whole directory), the entry
//! codec, the stable store's file and the snapshot store's metadata.
//!
//! Each `pub fn name(data: &[u8])` takes any bytes and panics only if the
//! decoder broke a rule: it panicked itself, asked for a huge allocation
//! (`support::bounded`), returned something that does not round-trip, or
//! recovered a log that is not consistent. The fuzz targets of the same
//! name call them, and so do the `cargo test` fuzz tests and the corpus
//! replay (`crates/raftkv-raft/tests/fuzz_*.rs`, through `#[path]`).
//!
//! The stores are opened on `MemFs`, a file system in memory behind the
//! stores' public `Vfs` seam: no disk, no fsync, thousands of opens a second.
#![allow(dead_code)]

use std::collections::{BTreeMap, BTreeSet};
use std::io::{self, Read};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use prost::Message as _;
use raftkv_raft::storage::codec::{decode_configuration, decode_entry, encode_entry, encoded_entry_len};
use raftkv_raft::storage::vfs::{Vfs, VfsFile};
use raftkv_raft::storage::{FileSnapshotStore, FileStableStore, LogStore, SnapshotStore, StableStore, Wal, WalOptions};
use raftkv_raft::transport::grpc::{check_metadata, from_proto, proto, to_proto, Identity, WireHeader};
use raftkv_raft::{Configuration, Entry, EntryPayload, LogId, LogIndex, Message, NodeId, SnapshotMeta, Term};
use serde::{Deserialize, Serialize};

use crate::support::bounded;

/// Numbers at or above this never come from a well-behaved peer or log
/// (`raftkv_core::MAX_WIRE_NUMBER`); the harness does no `+ 1` on them.
const MAX_WIRE_NUMBER: u64 = 1 << 62;

// ---- A file system in memory ---------------------------------------------------

/// Files and directories in memory; clones share them.
#[derive(Clone, Default)]
pub struct MemFs {
    files: Arc<Mutex<BTreeMap<PathBuf, Arc<MemFile>>>>,
    dirs: Arc<Mutex<BTreeSet<PathBuf>>>,
}

#[derive(Default)]
pub struct MemFile {
    data: Mutex<Vec<u8>>,
}

fn locked<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

impl MemFs {
    /// Puts a file with `data` at `path` (its directory is created).
    pub fn put(&self, path: &Path, data: &[u8]) {
        if let Some(parent) = path.parent() {
            self.create_dir_all(parent).expect("a directory in memory");
        }
        let file = MemFile { data: Mutex::new(data.to_vec()) };
        locked(&self.files).insert(path.to_path_buf(), Arc::new(file));
    }

    /// The bytes of the file at `path`, if there is one.
    pub fn contents(&self, path: &Path) -> Option<Vec<u8>> {
        locked(&self.files).get(path).map(|file| locked(&file.data).clone())
    }
}

impl VfsFile for MemFile {
    fn read_exact_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        let data = locked(&self.data);
        let start = usize::try_from(offset).map_err(|_| io::ErrorKind::UnexpectedEof)?;
        let end = start.checked_add(buf.len()).filter(|end| *end <= data.len()).ok_or(io::ErrorKind::UnexpectedEof)?;
        buf.copy_from_slice(&data[start..end]);
        Ok(())
    }

    fn write_all_at(&self, buf: &[u8], offset: u64) -> io::Result<()> {
        let mut data = locked(&self.data);
        let start = usize::try_from(offset).map_err(|_| io::Error::other("offset too large"))?;
        let end = start + buf.len();
        if data.len() < end {
            data.resize(end, 0);
        }
        data[start..end].copy_from_slice(buf);
        Ok(())
    }

    fn sync_data(&self) -> io::Result<()> {
        Ok(())
    }

    fn set_len(&self, len: u64) -> io::Result<()> {
        // Nothing here grows a file by more than a write would.
        let len = usize::try_from(len).ok().filter(|len| *len <= 1 << 30).ok_or(io::Error::other("too large"))?;
        locked(&self.data).resize(len, 0);
        Ok(())
    }

    fn len(&self) -> io::Result<u64> {
        Ok(locked(&self.data).len() as u64)
    }
}

impl Vfs for MemFs {
    fn open(&self, path: &Path, create: bool) -> io::Result<Arc<dyn VfsFile>> {
        let mut files = locked(&self.files);
        if let Some(file) = files.get(path) {
            return Ok(file.clone());
        }
        let parent = path.parent().unwrap_or(Path::new(""));
        if !create || !locked(&self.dirs).contains(parent) {
            return Err(io::ErrorKind::NotFound.into());
        }
        let file = Arc::new(MemFile::default());
        files.insert(path.to_path_buf(), file.clone());
        Ok(file)
    }

    fn create_dir_all(&self, path: &Path) -> io::Result<()> {
        let mut dirs = locked(&self.dirs);
        for ancestor in path.ancestors() {
            dirs.insert(ancestor.to_path_buf());
        }
        Ok(())
    }

    fn list(&self, dir: &Path) -> io::Result<Vec<PathBuf>> {
        if !locked(&self.dirs).contains(dir) {
            return Err(io::ErrorKind::NotFound.into());
        }
        let mut paths: BTreeSet<PathBuf> = BTreeSet::new();
        let in_dir = |path: &Path| path.parent() == Some(dir) && path != dir;
        paths.extend(locked(&self.files).keys().filter(|p| in_dir(p)).cloned());
        paths.extend(locked(&self.dirs).iter().filter(|p| in_dir(p)).cloned());
        Ok(paths.into_iter().collect())
    }

    fn rename(&self, from: &Path, to: &Path) -> io::Result<()> {
        let mut files = locked(&self.files);
        if let Some(file) = files.remove(from) {
            files.insert(to.to_path_buf(), file);
            return Ok(());
        }
        let mut dirs = locked(&self.dirs);
        if !dirs.contains(from) {
            return Err(io::ErrorKind::NotFound.into());
        }
        let moved = |path: &Path| path.strip_prefix(from).ok().map(|rest| to.join(rest));
        let old_files: Vec<PathBuf> = files.keys().filter(|p| p.starts_with(from)).cloned().collect();
        for path in old_files {
            if let (Some(file), Some(new)) = (files.remove(&path), moved(&path)) {
                files.insert(new, file);
            }
        }
        let old_dirs: Vec<PathBuf> = dirs.iter().filter(|p| p.starts_with(from)).cloned().collect();
        for path in old_dirs {
            dirs.remove(&path);
            if let Some(new) = moved(&path) {
                dirs.insert(new);
            }
        }
        Ok(())
    }

    fn remove_file(&self, path: &Path) -> io::Result<()> {
        locked(&self.files).remove(path).map(|_| ()).ok_or(io::ErrorKind::NotFound.into())
    }

    fn remove_dir_all(&self, path: &Path) -> io::Result<()> {
        let mut dirs = locked(&self.dirs);
        if !dirs.contains(path) {
            return Err(io::ErrorKind::NotFound.into());
        }
        dirs.retain(|p| !p.starts_with(path));
        locked(&self.files).retain(|p, _| !p.starts_with(path));
        Ok(())
    }

    fn sync_dir(&self, _dir: &Path) -> io::Result<()> {
        Ok(())
    }
}

// ---- The entry codec -----------------------------------------------------------

/// `decode_entry`, and `decode_configuration` both ways, on any bytes. A
/// decoded entry must encode to `encoded_entry_len` bytes that decode to it
/// again; an input in the canonical form (what `encode_entry` writes) must
/// come back byte for byte.
pub fn entry_codec(data: &[u8]) {
    let decoded = bounded("decode_entry", data.len(), || decode_entry(Bytes::copy_from_slice(data)));
    for staged in [false, true] {
        let mut buf = data;
        let _ = bounded("decode_configuration", data.len(), || decode_configuration(&mut buf, staged));
    }
    if let Ok(entry) = decoded {
        let mut out = Vec::new();
        encode_entry(&entry, &mut out);
        assert_eq!(out.len(), encoded_entry_len(&entry), "encoded_entry_len disagrees for {entry:?}");
        let again = decode_entry(Bytes::from(out.clone())).expect("an encoded entry decodes");
        assert_eq!(again, entry, "entry does not round-trip");
        if is_canonical(&entry, data) {
            assert_eq!(out, data, "a canonical encoding does not come back byte for byte");
        }
    }
}

/// Whether `data` is what `encode_entry` writes for `entry` (a
/// configuration's lists sorted without repeats, and kind 3 only with staging).
fn is_canonical(entry: &Entry, data: &[u8]) -> bool {
    let mut out = Vec::new();
    encode_entry(entry, &mut out);
    out == data
}

// ---- The WAL -------------------------------------------------------------------

const WAL_DIR: &str = "/wal";
const SEGMENT_MAGIC: &[u8; 8] = b"RKVWAL01";
const MANIFEST_MAGIC: &[u8; 8] = b"RKVWALM1";

/// A segment's 24-byte header for a segment starting at `first`.
pub fn segment_header(first: u64) -> Vec<u8> {
    let mut header = Vec::with_capacity(24);
    header.extend_from_slice(SEGMENT_MAGIC);
    header.extend_from_slice(&first.to_le_bytes());
    let crc = crc32c::crc32c(&header);
    header.extend_from_slice(&crc.to_le_bytes());
    header.extend_from_slice(&[0; 4]);
    header
}

/// One record: length, CRC-32C of the payload, the encoded entry.
pub fn record(entry: &Entry) -> Vec<u8> {
    let mut payload = Vec::new();
    encode_entry(entry, &mut payload);
    let mut out = Vec::with_capacity(8 + payload.len());
    out.extend_from_slice(&(payload.len() as u32).to_le_bytes());
    out.extend_from_slice(&crc32c::crc32c(&payload).to_le_bytes());
    out.extend_from_slice(&payload);
    out
}

/// A whole segment holding `entries` (which start at `first`).
pub fn segment(first: u64, entries: &[Entry]) -> Vec<u8> {
    let mut out = segment_header(first);
    for entry in entries {
        out.extend_from_slice(&record(entry));
    }
    out
}

/// The manifest naming `first` as the log's first index.
pub fn manifest(first: u64) -> Vec<u8> {
    let mut out = MANIFEST_MAGIC.to_vec();
    out.extend_from_slice(&first.to_le_bytes());
    let crc = crc32c::crc32c(&out);
    out.extend_from_slice(&crc.to_le_bytes());
    out
}

/// A segment's file name.
pub fn segment_name(first: u64) -> String {
    format!("{first:020}.wal")
}

/// Sets the CRC of every record whose length fits in `records`, as a writer
/// would have, so that a fuzzer's mutations reach the entry decoder behind
/// the checksum. Returns how many records it walked.
pub fn fix_record_crcs(records: &mut [u8]) -> u64 {
    let mut offset = 0usize;
    let mut count = 0;
    while offset + 8 <= records.len() {
        let len = u32::from_le_bytes(records[offset..offset + 4].try_into().unwrap_or_default()) as usize;
        if len == 0 || records.len() - offset - 8 < len {
            break;
        }
        let crc = crc32c::crc32c(&records[offset + 8..offset + 8 + len]);
        records[offset + 4..offset + 8].copy_from_slice(&crc.to_le_bytes());
        offset += 8 + len;
        count += 1;
    }
    count
}

fn wal_options() -> WalOptions {
    // No preallocation: appends after recovery write what they say.
    WalOptions { segment_bytes: 1 << 16, preallocate: false }
}

/// Opens the WAL in `fs`: an error, or a log consistent with itself.
pub fn open_wal(fs: &MemFs, input_len: usize) -> Option<Vec<Entry>> {
    let opened = bounded("Wal::open", input_len, || Wal::open_with(Arc::new(fs.clone()), WAL_DIR, wal_options()));
    let wal = opened.ok()?;
    Some(check_log(&wal, fs, input_len))
}

/// What a recovered log must satisfy: its entries are `first..=last`, in
/// order, with terms that never go down, readable one by one and as a range;
/// an entry appended after them reads back; and opening it again recovers
/// the same log (recovery left nothing that a second recovery would change).
fn check_log(wal: &Wal, fs: &MemFs, input_len: usize) -> Vec<Entry> {
    let first = wal.first_index().expect("first_index");
    let last = wal.last_index().expect("last_index");
    assert!(first.0 >= 1, "a recovered log starts at index {first}");
    assert!(first.0 <= last.0.saturating_add(1), "a recovered log from {first} to {last}");
    let entries = bounded("Wal::get_range", input_len, || wal.get_range(first, last))
        .unwrap_or_else(|e| panic!("a log that opened cannot read its own entries {first}..={last}: {e}"));
    assert_eq!(entries.len() as u64, last.0 + 1 - first.0, "entries {first}..={last} of a recovered log");
    for (i, entry) in entries.iter().enumerate() {
        assert_eq!(entry.index.0, first.0 + i as u64, "entry out of place");
        if i > 0 {
            assert!(entry.term >= entries[i - 1].term, "terms go down at {}", entry.index);
        }
        let one = wal.get(entry.index).expect("get").expect("an entry of the log");
        assert_eq!(&one, entry, "get and get_range disagree at {}", entry.index);
    }
    let last_term = entries.last().map_or(Term(0), |e| e.term);
    // Append one more entry (the harness itself adds 1 only to small numbers).
    if last.0 < MAX_WIRE_NUMBER && last_term.0 < MAX_WIRE_NUMBER {
        let next = Entry {
            term: Term(last_term.0.max(1)),
            index: LogIndex(last.0 + 1),
            payload: EntryPayload::Command(Bytes::from_static(b"after recovery")),
        };
        wal.append(std::slice::from_ref(&next)).expect("append after recovery");
        assert_eq!(wal.last_index().expect("last_index"), next.index);
        assert_eq!(wal.get(next.index).expect("get").as_ref(), Some(&next), "appended entry reads back");
        let reopened = Wal::open_with(Arc::new(fs.clone()), WAL_DIR, wal_options())
            .unwrap_or_else(|e| panic!("a recovered log with one more entry does not reopen: {e}"));
        assert_eq!(reopened.first_index().expect("first_index"), first, "first index after reopening");
        assert_eq!(reopened.last_index().expect("last_index"), next.index, "last index after reopening");
        let again = reopened.get_range(first, next.index).expect("entries after reopening");
        assert_eq!(&again[..entries.len()], &entries[..], "a second recovery changed the log");
    }
    entries
}

/// One segment of records, as the fuzzer makes it. `data`: a flags byte
/// (bit 0: set every record's CRC as a writer would; bit 1: zeros follow
/// the records, as preallocation leaves; bit 2: a fresh segment follows, so
/// this one is closed, not the last), the first index (u64 LE; 0 reads as
/// 1), then the records.
pub fn wal_record(data: &[u8]) {
    let Some((&flags, rest)) = data.split_first() else { return };
    let (first, records) = match rest.split_at_checked(8) {
        Some((first, records)) => (u64::from_le_bytes(first.try_into().unwrap_or_default()).max(1), records),
        None => (1, rest),
    };
    let mut records = records.to_vec();
    let walked = if flags & 1 != 0 { fix_record_crcs(&mut records) } else { 0 };
    if flags & 2 != 0 {
        records.extend_from_slice(&[0; 64]);
    }
    let fs = MemFs::default();
    let dir = Path::new(WAL_DIR);
    let mut file = segment_header(first);
    file.extend_from_slice(&records);
    fs.put(&dir.join(segment_name(first)), &file);
    if flags & 4 != 0 {
        if let Some(next) = first.checked_add(walked.max(1)) {
            fs.put(&dir.join(segment_name(next)), &segment_header(next));
        }
    }
    open_wal(&fs, data.len());
}

/// A log directory of up to eight files, as the fuzzer makes it. `data`:
/// per file a kind byte, a u16 LE length and that many bytes of content
/// (fewer if the input ends). Kinds (low 3 bits): 0 the manifest; 1 a
/// segment named by its own first index (bytes 8..16 of its content), with
/// record CRCs set if bit 3 of the kind is; 2 the same, CRCs as they are;
/// 3 a segment named by a number from the content's first byte; 4 a `.tmp`
/// file; 5 a file of another name; 6 a segment with a name that is no number;
/// 7 the manifest, made valid with the first index the content starts with.
pub fn wal_dir(data: &[u8]) {
    let fs = MemFs::default();
    let dir = Path::new(WAL_DIR);
    fs.create_dir_all(dir).expect("a directory in memory");
    let mut rest = data;
    for _ in 0..8 {
        let Some((&kind, tail)) = rest.split_first() else { break };
        let (len, tail) = match tail.split_at_checked(2) {
            Some((len, tail)) => (u16::from_le_bytes([len[0], len[1]]) as usize, tail),
            None => (tail.len(), &[][..]),
        };
        let (content, tail) = tail.split_at(len.min(tail.len()));
        rest = tail;
        let named_first = || content.get(8..16).map_or(1, |b| u64::from_le_bytes(b.try_into().unwrap_or_default()));
        let (name, content) = match kind & 7 {
            0 => ("wal.meta".to_string(), content.to_vec()),
            1 | 2 => {
                let mut content = content.to_vec();
                if kind & 8 != 0 && content.len() > 24 {
                    fix_record_crcs(&mut content[24..]);
                }
                (segment_name(named_first()), content)
            }
            3 => (segment_name(u64::from(content.first().copied().unwrap_or(0))), content.to_vec()),
            4 => ("00000000000000000001.wal.tmp".to_string(), content.to_vec()),
            5 => ("README".to_string(), content.to_vec()),
            6 => ("first.wal".to_string(), content.to_vec()),
            _ => {
                let first = content.get(..8).map_or(1, |b| u64::from_le_bytes(b.try_into().unwrap_or_default()));
                ("wal.meta".to_string(), manifest(first))
            }
        };
        fs.put(&dir.join(name), &content);
    }
    open_wal(&fs, data.len());
}

// ---- The stable store ----------------------------------------------------------

const STABLE_DIR: &str = "/stable";
const STABLE_MAGIC: &[u8; 8] = b"RKVSTAB1";

/// The stable store's file holding `values`, as the store writes it.
pub fn stable_file(values: &BTreeMap<String, Vec<u8>>) -> Vec<u8> {
    let mut body = Vec::new();
    body.extend_from_slice(&(values.len() as u32).to_le_bytes());
    for (key, value) in values {
        body.extend_from_slice(&(key.len() as u16).to_le_bytes());
        body.extend_from_slice(key.as_bytes());
        body.extend_from_slice(&(value.len() as u32).to_le_bytes());
        body.extend_from_slice(value);
    }
    let mut out = STABLE_MAGIC.to_vec();
    out.extend_from_slice(&crc32c::crc32c(&body).to_le_bytes());
    out.extend_from_slice(&body);
    out
}

/// Opens a stable store whose file is `file`: an error, or a store whose
/// hard state reads (or is refused) and that takes a write and reads it back
/// after reopening, with the hard state unchanged.
pub fn open_stable(file: &[u8]) -> Option<FileStableStore> {
    let fs = MemFs::default();
    fs.put(&Path::new(STABLE_DIR).join("stable"), file);
    let store =
        bounded("FileStableStore::open", file.len(), || FileStableStore::open_with(Arc::new(fs.clone()), STABLE_DIR))
            .ok()?;
    let hard_state = store.hard_state().ok();
    store.set("fuzz-check", b"written after opening").expect("a write to a store that opened");
    let reopened = FileStableStore::open_with(Arc::new(fs.clone()), STABLE_DIR).expect("the store reopens");
    assert_eq!(reopened.get("fuzz-check").expect("get").as_deref(), Some(&b"written after opening"[..]));
    assert_eq!(reopened.hard_state().ok(), hard_state, "a write changed the hard state");
    Some(reopened)
}

/// The stable store's file, as the fuzzer makes it: a flags byte (bit 0:
/// set the body's CRC as a writer would), then the file.
pub fn stable_store(data: &[u8]) {
    let Some((&flags, file)) = data.split_first() else { return };
    let mut file = file.to_vec();
    if flags & 1 != 0 && file.len() >= 12 {
        let crc = crc32c::crc32c(&file[12..]);
        file[8..12].copy_from_slice(&crc.to_le_bytes());
    }
    open_stable(&file);
}

// ---- The snapshot store --------------------------------------------------------

const SNAPSHOT_DIR: &str = "/snapshots";
/// A snapshot id as the store names them (index, term, a unique number).
pub const SNAPSHOT_ID: &str = "00000000000000000009-00000000000000000002-0000000000000001";

/// The snapshot store's metadata, field for field (the store's own type is
/// private): its checksum covers this struct serialized as JSON.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct StoredMeta {
    pub version: u32,
    pub index: u64,
    pub term: u64,
    pub voters: Vec<u64>,
    pub voters_outgoing: Vec<u64>,
    pub learners: Vec<u64>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub staging: Vec<u64>,
    pub size: u64,
    pub checksum: u32,
}

#[derive(Serialize, Deserialize)]
struct MetaFile {
    meta: StoredMeta,
    meta_checksum: u32,
}

/// `meta.json` for `meta`, with its checksum right.
pub fn meta_file(meta: &StoredMeta) -> Vec<u8> {
    let meta_checksum = crc32c::crc32c(&serde_json::to_vec(meta).expect("metadata serializes"));
    serde_json::to_vec_pretty(&MetaFile { meta: meta.clone(), meta_checksum }).expect("metadata serializes")
}

/// Opens a snapshot store holding one snapshot with `meta_json` and `data`:
/// listing never fails; a snapshot that opens has the size and checksum its
/// metadata says, and reads back in chunks as it does whole.
pub fn open_snapshot(meta_json: &[u8], data: &[u8], chunk_offset: u64) {
    let fs = MemFs::default();
    let dir = Path::new(SNAPSHOT_DIR).join(SNAPSHOT_ID);
    fs.put(&dir.join("meta.json"), meta_json);
    fs.put(&dir.join("data"), data);
    let n = meta_json.len() + data.len();
    let store = FileSnapshotStore::open_with(Arc::new(fs), SNAPSHOT_DIR, 2).expect("a snapshot store opens");
    let listed = bounded("FileSnapshotStore::list", n, || store.list()).expect("listing reads only metadata");
    let opened = bounded("FileSnapshotStore::open", n, || store.open(SNAPSHOT_ID));
    match opened {
        Ok((info, mut reader)) => {
            assert_eq!(listed.len(), 1, "a snapshot that opens is listed");
            assert_eq!(listed[0], info);
            let mut whole = Vec::new();
            reader.read_to_end(&mut whole).expect("an opened snapshot reads");
            assert_eq!(whole, data, "an opened snapshot reads back its data");
            assert_eq!(info.size, data.len() as u64);
            assert_eq!(info.checksum, crc32c::crc32c(data));
            let chunk =
                bounded("FileSnapshotStore::read_chunk", n, || store.read_chunk(SNAPSHOT_ID, chunk_offset, 4096));
            if let Ok(chunk) = chunk {
                let start = usize::try_from(chunk_offset).unwrap_or(usize::MAX).min(data.len());
                assert_eq!(&chunk[..], &data[start..(start + 4096).min(data.len())], "chunk at {chunk_offset}");
            }
        }
        Err(_) => {
            // Unreadable metadata is skipped when listing; a data file that
            // does not match is found only by opening.
            assert!(listed.len() <= 1);
        }
    }
}

/// A snapshot's metadata and data, as the fuzzer makes it: a flags byte
/// (bit 0: the input is metadata fields to be written with a right
/// checksum; else raw `meta.json`), a u16 LE length of the metadata part,
/// the metadata part, the data.
pub fn snapshot_meta(data: &[u8]) {
    let Some((&flags, rest)) = data.split_first() else { return };
    let Some((len, rest)) = rest.split_at_checked(2) else { return };
    let len = (u16::from_le_bytes([len[0], len[1]]) as usize).min(rest.len());
    let (meta, snapshot) = rest.split_at(len);
    let offset = u64::from(flags >> 1) * 64;
    if flags & 1 != 0 {
        // The fields, with the checksum right: what a careful forger writes.
        let Ok(mut stored) = serde_json::from_slice::<StoredMeta>(meta) else { return };
        if flags & 2 != 0 {
            stored.size = snapshot.len() as u64;
            stored.checksum = crc32c::crc32c(snapshot);
        }
        open_snapshot(&meta_file(&stored), snapshot, offset);
    } else {
        open_snapshot(meta, snapshot, offset);
    }
}

// ---- Raft wire messages --------------------------------------------------------

/// A `Batch` of raft messages off the wire: prost decodes it, and each
/// message converts into the core's `Message` or is refused. A converted
/// message converts back and forth unchanged, and survives the wire again.
/// Also decodes the bytes as one `RaftMessage`.
pub fn raft_message(data: &[u8]) {
    if let Ok(batch) = bounded("Batch::decode", data.len(), || proto::Batch::decode(data)) {
        for message in batch.messages {
            check_message(message, data.len());
        }
    }
    if let Ok(message) = bounded("RaftMessage::decode", data.len(), || proto::RaftMessage::decode(data)) {
        check_message(message, data.len());
    }
}

fn check_message(message: proto::RaftMessage, input_len: usize) {
    let Ok(converted) = bounded("from_proto", input_len, || from_proto(message)) else { return };
    let back = to_proto(&converted);
    let wire = back.encode_to_vec();
    let decoded = proto::RaftMessage::decode(wire.as_slice()).expect("an encoded message decodes");
    assert_eq!(decoded, back, "a message does not survive the wire");
    let again = from_proto(decoded).expect("a message this node sent is one it accepts");
    assert_eq!(again, converted, "a message does not round-trip through the wire");
}

// ---- The wire header -----------------------------------------------------------

/// The keys a header reader looks at, and one it does not.
const HEADER_KEYS: [&str; 6] =
    ["raftkv-protocol", "raftkv-cluster-id-bin", "raftkv-from", "raftkv-to", "raftkv-from-addr-bin", "x-other"];

/// gRPC metadata as the fuzzer makes it: per entry a key byte (an index into
/// the known keys), a length byte and the value's bytes (as they would
/// arrive: binary values base64-encoded by the sender, or not). The header
/// reader and the admission check refuse or accept, never panic; a header
/// that reads writes back to metadata that reads the same.
pub fn wire_header(data: &[u8]) {
    use tonic::codegen::http::{HeaderMap, HeaderName, HeaderValue};
    let mut headers = HeaderMap::new();
    let mut rest = data;
    while let Some((&key, tail)) = rest.split_first() {
        let Some((&len, tail)) = tail.split_first() else { break };
        let (value, tail) = tail.split_at((len as usize).min(tail.len()));
        rest = tail;
        let name = HeaderName::from_static(HEADER_KEYS[key as usize % HEADER_KEYS.len()]);
        if let Ok(value) = HeaderValue::from_bytes(value) {
            headers.append(name, value);
        }
    }
    let metadata = tonic::metadata::MetadataMap::from_headers(headers);
    let identity = Identity::new("cluster", NodeId(1), "127.0.0.1:7001");
    let _ = bounded("check_metadata", data.len(), || check_metadata(&identity, &metadata));
    if let Ok(header) = bounded("WireHeader::read", data.len(), || WireHeader::read(&metadata)) {
        let mut written = tonic::metadata::MetadataMap::new();
        header.write_to(&mut written);
        let again = WireHeader::read(&written).expect("a header this node wrote reads back");
        assert_eq!(again, header, "a header does not round-trip");
    }
}

// ---- Seeds ---------------------------------------------------------------------

/// Entries of every kind, a log from index 1.
pub fn seed_entries() -> Vec<Entry> {
    use raftkv_core::RestoreStep::{Begin, Chunk, Commit};
    use EntryPayload::{Command, Config, Noop, Restore};
    let mut config = Configuration::new([NodeId(1), NodeId(2), NodeId(3)]);
    config.learners.insert(NodeId(4));
    let mut staged = config.clone();
    staged.staging.insert(NodeId(4));
    let mut joint = config.clone();
    joint.voters_outgoing.insert(NodeId(5));
    let payloads = vec![
        Noop,
        Command(Bytes::from_static(br#"{"op":"set","key":"a","value":"1"}"#)),
        Command(Bytes::new()),
        Config(config),
        Config(staged),
        Config(joint),
        Restore(Begin { id: 7, len: 5, crc32c: 0xdead_beef }),
        Restore(Chunk { id: 7, seq: 0, data: Bytes::from_static(b"hello") }),
        Restore(Commit { id: 7, chunks: 1 }),
    ];
    payloads
        .into_iter()
        .enumerate()
        .map(|(i, payload)| Entry { term: Term(1 + i as u64 / 4), index: LogIndex(1 + i as u64), payload })
        .collect()
}

/// Messages of every kind.
pub fn seed_messages() -> Vec<Message> {
    use raftkv_core::{
        AppendEntries, AppendEntriesResponse, AppendResult, InstallSnapshot, InstallSnapshotResponse, RequestVote,
        RequestVoteResponse,
    };
    let id = LogId::new(Term(2), LogIndex(4));
    let config = Configuration::new([NodeId(1), NodeId(2)]);
    let append = |entries: Vec<Entry>| {
        Message::AppendEntries(AppendEntries {
            term: Term(3),
            prev_log_id: id,
            entries,
            leader_commit: LogIndex(3),
            round: 9,
        })
    };
    let response = |result| Message::AppendEntriesResponse(AppendEntriesResponse { term: Term(3), round: 9, result });
    vec![
        Message::RequestVote(RequestVote {
            term: Term(3),
            last_log_id: id,
            pre_vote: true,
            leadership_transfer: false,
        }),
        Message::RequestVoteResponse(RequestVoteResponse { term: Term(3), granted: true, pre_vote: false }),
        append(Vec::new()),
        append(seed_entries()),
        response(AppendResult::Success { match_index: LogIndex(7) }),
        response(AppendResult::Conflict { rejected: LogIndex(4), hint: id }),
        response(AppendResult::StaleTerm),
        Message::InstallSnapshot(InstallSnapshot {
            term: Term(3),
            meta: SnapshotMeta { last_log_id: id, config },
            offset: 0,
            data: Bytes::from_static(b"RKVIMG01 and the rest of a snapshot"),
            done: true,
        }),
        Message::InstallSnapshotResponse(InstallSnapshotResponse {
            term: Term(3),
            snapshot: id,
            next_offset: 35,
            done: true,
        }),
        Message::TimeoutNow { term: Term(3) },
        Message::ReadIndexRequest { term: Term(3), read_id: 77 },
        Message::ReadIndexResponse { term: Term(3), read_id: 77, index: Some(LogIndex(6)) },
        Message::ReadIndexResponse { term: Term(3), read_id: 78, index: None },
    ]
}

/// Small valid inputs of each raft harness, in its own input format: the
/// seed corpora of the fuzz targets (`fuzz/corpus/<name>/`), also replayed
/// by `cargo test`.
pub fn seeds() -> Vec<(&'static str, Vec<Vec<u8>>)> {
    let entries = seed_entries();
    let mut records = Vec::new();
    for entry in &entries {
        records.extend_from_slice(&record(entry));
    }
    let with_flags = |flags: u8, first: u64, records: &[u8]| {
        let mut out = vec![flags];
        out.extend_from_slice(&first.to_le_bytes());
        out.extend_from_slice(records);
        out
    };
    let torn = &records[..records.len() - 5];
    let wal_record = vec![
        with_flags(0, 1, &records),
        with_flags(2, 1, &records),
        with_flags(4, 1, &records),
        with_flags(0, 1, torn),
        with_flags(1, 1, &records),
        with_flags(0, 1, &[]),
    ];

    let file = |kind: u8, content: &[u8]| {
        let mut out = vec![kind];
        out.extend_from_slice(&(content.len() as u16).to_le_bytes());
        out.extend_from_slice(content);
        out
    };
    let (a, b) = entries.split_at(4);
    let wal_dir = vec![
        file(1, &segment(1, &entries)),
        [file(1, &segment(1, a)), file(1, &segment(5, b))].concat(),
        [file(1, &segment(1, a)), file(1, &segment(5, b)), file(0, &manifest(3))].concat(),
        [file(1, &segment(1, a)), file(1, &segment(5, b)), file(7, &7u64.to_le_bytes())].concat(),
        [file(1, &segment(1, a)), file(1, &segment(5, &[])), file(4, b"left over")].concat(),
        [file(0, &manifest(10))].concat(),
    ];

    let entry_codec = entries
        .iter()
        .map(|entry| {
            let mut out = Vec::new();
            encode_entry(entry, &mut out);
            out
        })
        .collect();

    let mut hard_state = BTreeMap::new();
    hard_state.insert("CurrentTerm".to_string(), 5u64.to_be_bytes().to_vec());
    hard_state.insert("LastVoteCand".to_string(), 2u64.to_be_bytes().to_vec());
    hard_state.insert("cluster_id".to_string(), b"3f2a".to_vec());
    let stable_store = [BTreeMap::new(), hard_state]
        .iter()
        .flat_map(|values| [[&[0u8][..], &stable_file(values)].concat(), [&[1u8][..], &stable_file(values)].concat()])
        .collect();

    let data = b"the bytes of a snapshot".to_vec();
    let meta = StoredMeta {
        version: 1,
        index: 9,
        term: 2,
        voters: vec![1, 2, 3],
        voters_outgoing: vec![],
        learners: vec![4],
        staging: vec![4],
        size: data.len() as u64,
        checksum: crc32c::crc32c(&data),
    };
    let snapshot_input = |flags: u8, meta: &[u8], data: &[u8]| {
        let mut out = vec![flags];
        out.extend_from_slice(&(meta.len() as u16).to_le_bytes());
        out.extend_from_slice(meta);
        out.extend_from_slice(data);
        out
    };
    let fields = serde_json::to_vec(&meta).expect("metadata serializes");
    let snapshot_meta = vec![
        snapshot_input(0, &meta_file(&meta), &data),
        snapshot_input(1, &fields, &data),
        snapshot_input(3, &fields, &data[..5]),
        snapshot_input(0, &meta_file(&StoredMeta { staging: vec![], ..meta.clone() }), &data),
    ];

    let messages = seed_messages();
    let mut raft_message: Vec<Vec<u8>> =
        messages.iter().map(|m| proto::Batch { messages: vec![to_proto(m)] }.encode_to_vec()).collect();
    raft_message.push(proto::Batch { messages: messages.iter().map(to_proto).collect() }.encode_to_vec());

    let identity = Identity::new("cluster", NodeId(2), "127.0.0.1:7002");
    let mut wire_header = Vec::new();
    for to in [Some(NodeId(1)), None] {
        let mut metadata = tonic::metadata::MetadataMap::new();
        identity.header(to).write_to(&mut metadata);
        let mut out = Vec::new();
        for (name, value) in metadata.into_headers().iter() {
            let key = HEADER_KEYS.iter().position(|k| *k == name.as_str()).unwrap_or(HEADER_KEYS.len() - 1);
            let value = &value.as_bytes()[..value.len().min(255)];
            out.push(key as u8);
            out.push(value.len() as u8);
            out.extend_from_slice(value);
        }
        wire_header.push(out);
    }

    vec![
        ("wal_record", wal_record),
        ("wal_dir", wal_dir),
        ("entry_codec", entry_codec),
        ("stable_store", stable_store),
        ("snapshot_meta", snapshot_meta),
        ("raft_message", raft_message),
        ("wire_header", wire_header),
    ]
}
