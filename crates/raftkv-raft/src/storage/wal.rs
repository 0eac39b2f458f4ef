//! `Wal`: the durable `LogStore`, a segmented append-only write-ahead log.
//! It keeps the contract of the `storage` module: a call that returns `Ok`
//! has made its write durable; a failed fsync poisons the log; ENOSPC is
//! reported and leaves the log usable.
//!
//! ## On disk
//! A directory of segments named by their first index (`{index:020}.wal`, say
//! `00000000000000000001.wal`) and a small manifest `wal.meta` holding the
//! logical first index (replaced atomically, and written before a purge
//! deletes anything). A segment is a 24-byte header (magic `RKVWAL01`, first
//! index, CRC-32C of both) followed by records: a u32 length, the CRC-32C of
//! the payload, and the payload (one entry, `codec`). All integers
//! little-endian. An offset per entry is kept in memory, so reads never scan.
//!
//! ## Preallocation
//! Segments are filled with zeros `PREALLOCATE_BYTES` (4 MiB) ahead of the
//! writes, so that an fdatasync flushes data alone, without a change of size
//! or block allocation (about 1.5x the fsync rate on ext4). Zeros where a
//! record header should be mean "no more records"; anything else there is
//! damage, handled as under "Opening".
//!
//! ## Writing: group commit
//! `write` frames a batch and writes it at the end of the active segment (into
//! the page cache) under a short lock and returns a ticket; `sync_to(ticket)`
//! returns once an fdatasync covered it. `append` is `write` + `sync_to`.
//! Syncs are shared: one caller runs fdatasync while the others park; when it
//! ends it wakes only the waiters it covered, plus one to run the next sync (a
//! condvar's herd cost more CPU than the fsync itself on two cores). A segment
//! is synced before the next one is created, so only the last segment can hold
//! unsynced bytes.
//!
//! Every fsync of a segment (group commit, rotation, truncation) takes one
//! lock, and a failure poisons the log before the lock is released: Linux
//! reports a failed writeback to only one of several overlapping fsyncs, so
//! none may count once one failed.
//!
//! ## Truncation and purge, crash-safe at every step
//! `truncate_suffix(i)` deletes whole segments after `i` from the newest down,
//! fsyncs the directory, then cuts the segment holding `i` and fsyncs it: at
//! any crash point the log is a prefix of the old one that still holds
//! everything before `i` (entries after it were never committed, since a newer
//! leader disagreed with them). `purge_prefix(i)` first records the new first
//! index in the manifest, then deletes segments wholly below it, oldest first;
//! opening finishes a purge that crashed midway.
//!
//! ## Opening
//! Every record is checked. Damage in the last segment is a torn tail (a crash
//! during a write that was never acknowledged), cut off with a warning, only
//! if no valid record of a later index lies anywhere after it (searched by the
//! index field, since the damaged length cannot be trusted; in linear time,
//! and a segment crafted with more candidates than any torn write leaves is
//! refused, never cut). Damage anywhere
//! else, or followed by a valid record, is a `Corrupt` error naming the file
//! and offset: never skipped, never a panic. A damaged *final* record cannot
//! be told apart from a torn write and is cut; nothing wrong is ever returned.
//! A final record that is whole and checksummed but does not decode (a newer
//! format, or a bug) is not a tear: it is a `Corrupt` error, never cut.
//! A segment name or manifest naming a first index of 0, or of 2^62 or more
//! (which no log reaches, and where the next index could overflow), is a
//! `Corrupt` error too.
//!
//! ## After a failure
//! A failed fsync poisons the log: the page cache may hold bytes the disk lost,
//! so every later write is refused (`StorageError::Poisoned`). ENOSPC on a
//! write cuts the partial bytes off again and returns the error; the log stays
//! usable once space is freed.
//!
//! ## Why a WAL of our own
//! The Rust WALs considered each lacked part of what Raft needs here:
//! raft-engine (TiKV) is built for thousands of Raft groups in one engine,
//! with memtables, rewrites and a large dependency tree; okaywal is
//! checkpoint-oriented, without suffix truncation by index; simple_wal has no
//! group commit (and no release since 2020); wal-db addresses records by byte
//! offset rather than by Raft index. None gives index-addressed entries with
//! suffix truncation, prefix purge, group commit and the torn-tail rules above
//! without a layer as large as the log itself.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use bytes::{BufMut, Bytes};
use raftkv_core::{Entry, LogIndex, Term};

use crate::locks::lock;

use crate::storage::codec::{decode_entry, encode_entry, encoded_entry_len, ENTRY_HEADER_LEN};
use crate::storage::error::{Result, StorageError};
use crate::storage::traits::{check_contiguous, LogStore};
use crate::storage::vfs::{create_dir_durably, read_all, write_atomically, StdFs, Vfs, VfsFile};

const SEGMENT_MAGIC: &[u8; 8] = b"RKVWAL01";
const MANIFEST_MAGIC: &[u8; 8] = b"RKVWALM1";
const MANIFEST_FILE: &str = "wal.meta";
const SEGMENT_SUFFIX: &str = ".wal";
const HEADER_LEN: u64 = 24;
const RECORD_HEADER_LEN: u64 = 8;
/// How far ahead of the writes a segment is filled with zeros.
const PREALLOCATE_BYTES: u64 = 4 << 20;
/// Larger records are refused on write and treated as damage on read.
pub const MAX_RECORD_BYTES: u64 = 256 << 20;
/// A segment or manifest naming a first index at or above this is damage:
/// no log gets near it (the core refuses such numbers from the wire too,
/// `MAX_WIRE_NUMBER`), and below it no `+ 1` on an index read back can
/// overflow, however many records follow.
const MAX_FIRST_INDEX: u64 = 1 << 62;

/// How a [`Wal`] lays out its segments.
#[derive(Clone, Debug)]
pub struct WalOptions {
    /// A segment is closed and a new one started once it would grow past this.
    pub segment_bytes: u64,
    /// Fill segments with zeros ahead of the writes (in `PREALLOCATE_BYTES`
    /// steps), so that an fdatasync flushes data alone, not a size and block
    /// allocation change too: on ext4 that is ~1.5x more fsyncs per second.
    pub preallocate: bool,
}

impl Default for WalOptions {
    fn default() -> Self {
        WalOptions { segment_bytes: 64 << 20, preallocate: true }
    }
}

struct Segment {
    first: LogIndex,
    path: PathBuf,
    file: Arc<dyn VfsFile>,
    /// Byte offset of the record of entry `first + i`.
    offsets: Vec<u64>,
    /// Bytes in use (header and whole records).
    end: u64,
    /// File length: zeros from `end` up to here were written ahead.
    allocated: u64,
}

impl Segment {
    fn last(&self) -> LogIndex {
        LogIndex(self.first.0 + self.offsets.len() as u64 - 1)
    }

    fn record_span(&self, index: LogIndex) -> (u64, u64) {
        let i = (index.0 - self.first.0) as usize;
        let start = self.offsets[i];
        let end = self.offsets.get(i + 1).copied().unwrap_or(self.end);
        (start, end)
    }
}

struct Inner {
    segments: Vec<Segment>,
    /// Logical first index; entries below it may still sit in the oldest segment.
    first_index: LogIndex,
    last_index: LogIndex,
    last_term: Term,
    /// Bumped by every write; `sync_to` waits for a sync that covers a ticket.
    written_seq: u64,
    poisoned: Option<String>,
}

struct SyncState {
    synced_seq: u64,
    syncing: bool,
    poisoned: Option<String>,
    /// Threads parked in `sync_to`, with the ticket each waits for.
    waiters: Vec<(u64, std::thread::Thread)>,
}

impl SyncState {
    /// Wakes every waiter whose ticket is now synced (all of them once poisoned)
    /// and, if no sync is running, one more to run the next.
    fn wake_waiters(&mut self) {
        let synced = self.synced_seq;
        let poisoned = self.poisoned.is_some();
        let mut next_syncer_woken = self.syncing;
        self.waiters.retain(|(ticket, thread)| {
            let wake = *ticket <= synced || poisoned || !next_syncer_woken;
            if *ticket > synced {
                next_syncer_woken = true;
            }
            if wake {
                thread.unpark();
            }
            !wake
        });
    }
}

/// The durable `LogStore`: a segmented write-ahead log in one directory,
/// with group commit (see the module doc for its format and recovery).
pub struct Wal {
    dir: PathBuf,
    vfs: Arc<dyn Vfs>,
    options: WalOptions,
    inner: Mutex<Inner>,
    sync: Mutex<SyncState>,
    /// Held around every fsync of a segment. Linux reports a failed writeback to
    /// only one of the fsyncs that overlap it; one at a time, each that follows a
    /// failure sees the poison the failing one left.
    fsync_lock: Mutex<()>,
}

fn segment_name(first: LogIndex) -> String {
    format!("{:020}{SEGMENT_SUFFIX}", first.0)
}

fn segment_header(first: LogIndex) -> [u8; HEADER_LEN as usize] {
    let mut header = [0u8; HEADER_LEN as usize];
    header[..8].copy_from_slice(SEGMENT_MAGIC);
    header[8..16].copy_from_slice(&first.0.to_le_bytes());
    let crc = crc32c::crc32c(&header[..16]);
    header[16..20].copy_from_slice(&crc.to_le_bytes());
    header
}

fn frame(entry: &Entry, out: &mut Vec<u8>) {
    let start = out.len();
    out.put_u32_le(0);
    out.put_u32_le(0);
    encode_entry(entry, out);
    let payload = &out[start + RECORD_HEADER_LEN as usize..];
    let len = payload.len() as u32;
    let crc = crc32c::crc32c(payload);
    out[start..start + 4].copy_from_slice(&len.to_le_bytes());
    out[start + 4..start + 8].copy_from_slice(&crc.to_le_bytes());
}

/// What reading a record at some offset found.
enum Record {
    Entry(Entry, u64),
    /// The record runs past the end of the data: a torn write.
    Truncated,
    Damaged(String),
    /// Whole and checksummed, but not an entry this build can read (a newer
    /// format, or a bug): never a torn write, so never cut.
    Undecodable(String),
}

fn read_record(data: &[u8], offset: u64) -> Record {
    let rest = &data[offset as usize..];
    if (rest.len() as u64) < RECORD_HEADER_LEN {
        return Record::Truncated;
    }
    let len = u32::from_le_bytes([rest[0], rest[1], rest[2], rest[3]]) as u64;
    let crc = u32::from_le_bytes([rest[4], rest[5], rest[6], rest[7]]);
    if len > MAX_RECORD_BYTES {
        return Record::Damaged(format!("record length {len} exceeds the maximum {MAX_RECORD_BYTES}"));
    }
    if RECORD_HEADER_LEN + len > rest.len() as u64 {
        return Record::Truncated;
    }
    // No entry is shorter than its header; a length of 0 over zeros would
    // otherwise pass the checksum (the CRC of nothing is 0).
    if len < ENTRY_HEADER_LEN as u64 {
        return Record::Damaged(format!("record of {len} bytes is shorter than an entry ({ENTRY_HEADER_LEN} bytes)"));
    }
    let payload = &rest[RECORD_HEADER_LEN as usize..(RECORD_HEADER_LEN + len) as usize];
    let actual = crc32c::crc32c(payload);
    if actual != crc {
        return Record::Damaged(format!("record checksum {actual:08x} does not match the stored {crc:08x}"));
    }
    match decode_entry(Bytes::copy_from_slice(payload)) {
        Ok(entry) => Record::Entry(entry, offset + RECORD_HEADER_LEN + len),
        Err(reason) => Record::Undecodable(reason),
    }
}

impl Wal {
    /// Opens (or creates) the log in `dir`, recovering from any crash.
    pub fn open(dir: impl AsRef<Path>, options: WalOptions) -> Result<Wal> {
        Wal::open_with(Arc::new(StdFs), dir, options)
    }

    /// [`Wal::open`] through the file system `vfs` (a
    /// [`FaultyFs`](crate::storage::fault::FaultyFs) in tests).
    pub fn open_with(vfs: Arc<dyn Vfs>, dir: impl AsRef<Path>, options: WalOptions) -> Result<Wal> {
        let dir = dir.as_ref().to_path_buf();
        create_dir_durably(vfs.as_ref(), &dir).map_err(|e| StorageError::io("create directory", &dir, e))?;
        let manifest_first = read_manifest(vfs.as_ref(), &dir)?;

        let mut named = Vec::new();
        for path in vfs.list(&dir).map_err(|e| StorageError::io("list", &dir, e))? {
            let name = path.file_name().and_then(|n| n.to_str()).unwrap_or_default().to_string();
            if let Some(stem) = name.strip_suffix(SEGMENT_SUFFIX) {
                match stem.parse::<u64>() {
                    Ok(first) if first > 0 && first < MAX_FIRST_INDEX => named.push((LogIndex(first), path)),
                    _ => {
                        return Err(StorageError::Corrupt {
                            path,
                            offset: 0,
                            reason: "segment file name is not a first index (1..2^62)".to_string(),
                        })
                    }
                }
            } else if name.ends_with(".tmp") {
                vfs.remove_file(&path).map_err(|e| StorageError::io("remove", &path, e))?;
            } else if name != MANIFEST_FILE {
                tracing::warn!(path = %path.display(), "ignoring an unknown file in the log directory");
            }
        }
        named.sort_by_key(|(first, _)| *first);

        let mut segments: Vec<Segment> = Vec::new();
        let mut last_term = Term(0);
        let count = named.len();
        'segments: for (i, (first, path)) in named.into_iter().enumerate() {
            let is_last = i + 1 == count;
            let file = vfs.open(&path, false).map_err(|e| StorageError::io("open", &path, e))?;
            let data = read_all(file.as_ref()).map_err(|e| StorageError::io("read", &path, e))?;
            let corrupt = |offset: u64, reason: String| StorageError::Corrupt { path: path.clone(), offset, reason };
            if (data.len() as u64) < HEADER_LEN && is_last {
                // Crashed while creating the segment: it never held an entry.
                tracing::warn!(path = %path.display(), "removing a segment whose header was never completed");
                vfs.remove_file(&path).map_err(|e| StorageError::io("remove", &path, e))?;
                continue;
            }
            if (data.len() as u64) < HEADER_LEN || data[..HEADER_LEN as usize] != segment_header(first) {
                return Err(corrupt(0, format!("bad segment header (expected first index {first})")));
            }
            if let Some(previous) = segments.last() {
                if previous.last().next() != first {
                    return Err(corrupt(
                        0,
                        format!("segment starts at {first} but the previous one ends at {}", previous.last()),
                    ));
                }
            }
            let mut offsets = Vec::new();
            let mut offset = HEADER_LEN;
            let mut expected = first;
            while offset < data.len() as u64 {
                if data[offset as usize..].iter().all(|b| *b == 0) {
                    // Zeros written ahead of the data: the end of the segment's records.
                    break;
                }
                match read_record(&data, offset) {
                    Record::Entry(entry, next) => {
                        if entry.index != expected {
                            return Err(corrupt(offset, format!("entry {} where {expected} belongs", entry.index)));
                        }
                        if entry.term < last_term {
                            return Err(corrupt(
                                offset,
                                format!("entry {} has term {} after term {last_term}", entry.index, entry.term),
                            ));
                        }
                        last_term = entry.term;
                        offsets.push(offset);
                        offset = next;
                        expected = expected.next();
                    }
                    damage => {
                        // A crash tears only the end of the last segment: the damage
                        // is a torn tail only if no later entry survives behind it.
                        let whole = matches!(damage, Record::Undecodable(_));
                        let behind = if is_last && !whole {
                            valid_record_follows(&data, offset, expected)
                        } else {
                            Behind::Entry
                        };
                        if behind == Behind::Nothing {
                            tracing::warn!(
                                path = %path.display(),
                                offset,
                                bytes = data.len() as u64 - offset,
                                "cutting off a torn write at the end of the log (never acknowledged)"
                            );
                            file.set_len(offset).map_err(|e| StorageError::io("truncate", &path, e))?;
                            file.sync_data().map_err(|e| StorageError::io("sync", &path, e))?;
                            segments.push(Segment { first, path, file, offsets, end: offset, allocated: offset });
                            continue 'segments;
                        }
                        if let Behind::GaveUp { why } = behind {
                            let reason = format!(
                                "damaged record in the last segment, and behind it {why}: no torn write leaves \
                                 that (a crafted segment?); refused, not cut"
                            );
                            return Err(corrupt(offset, reason));
                        }
                        let reason = match damage {
                            Record::Damaged(reason) => reason,
                            Record::Undecodable(reason) => format!(
                                "a whole record with a valid checksum that this build cannot read ({reason}); \
                                 was the log written by a newer version?"
                            ),
                            _ => "record runs past the end of a closed segment".to_string(),
                        };
                        return Err(corrupt(offset, reason));
                    }
                }
            }
            if offsets.is_empty() && !is_last {
                return Err(corrupt(HEADER_LEN, "closed segment holds no entries".to_string()));
            }
            let allocated = (data.len() as u64).max(offset);
            segments.push(Segment { first, path, file, offsets, end: offset, allocated });
        }
        // An empty last segment is a fresh one: keep it as the active segment.
        let last_index = match segments.last() {
            Some(segment) => segment.last(),
            None => manifest_first.map_or(LogIndex::ZERO, |f| f.prev()),
        };
        let first_index = match (manifest_first, segments.first()) {
            (Some(manifest), Some(segment)) => manifest.max(segment.first),
            (Some(manifest), None) => manifest,
            (None, Some(segment)) => segment.first,
            (None, None) => LogIndex(1),
        };
        metrics::gauge!(crate::metrics::WAL_SEGMENTS).set(segments.len() as f64);
        let wal = Wal {
            dir,
            vfs,
            options,
            inner: Mutex::new(Inner {
                segments,
                first_index,
                last_index: last_index.max(first_index.prev()),
                last_term,
                written_seq: 0,
                poisoned: None,
            }),
            fsync_lock: Mutex::new(()),
            sync: Mutex::new(SyncState { synced_seq: 0, syncing: false, poisoned: None, waiters: Vec::new() }),
        };
        {
            // A purge that crashed after writing the manifest left whole segments
            // below the first index; finish it.
            let mut inner = lock(&wal.inner);
            if inner.last_index < inner.first_index {
                let first = inner.first_index;
                wal.drop_segments_below(&mut inner, first)?;
                inner.last_term = Term(0);
            }
        }
        Ok(wal)
    }

    /// Writes `entries` after the last entry (into the page cache) and returns a
    /// ticket for `sync_to`. Entries must continue the log.
    pub fn write(&self, entries: &[Entry]) -> Result<u64> {
        let mut inner = lock(&self.inner);
        if let Some(reason) = &inner.poisoned {
            return Err(StorageError::Poisoned { reason: reason.clone() });
        }
        check_contiguous("append", inner.last_index, inner.last_term, entries)?;
        let Some(last) = entries.last() else { return Ok(inner.written_seq) };
        let mut buf = Vec::with_capacity(entries.iter().map(|e| encoded_entry_len(e) + 8).sum());
        let mut lengths = Vec::with_capacity(entries.len());
        for entry in entries {
            let before = buf.len();
            frame(entry, &mut buf);
            let len = (buf.len() - before) as u64;
            if len - RECORD_HEADER_LEN > MAX_RECORD_BYTES {
                return Err(StorageError::invalid("append", format!("entry {} exceeds the record limit", entry.index)));
            }
            lengths.push(len);
        }
        self.ensure_room(&mut inner, buf.len() as u64)?;
        let Some(segment) = inner.segments.last_mut() else {
            return Err(StorageError::invalid("append", "no active segment"));
        };
        let start = segment.end;
        if self.options.preallocate && start + buf.len() as u64 > segment.allocated {
            let step = PREALLOCATE_BYTES.min(self.options.segment_bytes);
            let target = (start + buf.len() as u64).max(segment.allocated + step);
            // Zeros past the data read as "no more records"; a partial fill is harmless.
            if let Err(e) = fill_zeros(segment.file.as_ref(), segment.allocated, target) {
                return Err(StorageError::io("preallocate", &segment.path, e));
            }
            segment.allocated = target;
        }
        metrics::counter!(crate::metrics::WAL_BYTES).increment(buf.len() as u64);
        if let Err(e) = segment.file.write_all_at(&buf, start) {
            let error = StorageError::io("write", &segment.path, e);
            // Cut off whatever part of the batch landed; the log stays as it was.
            let restored = segment.file.set_len(start).is_ok();
            segment.allocated = start;
            if !(restored && error.is_out_of_space()) {
                self.poison(&mut inner, &error);
            }
            return Err(error);
        }
        let mut offset = start;
        for len in lengths {
            segment.offsets.push(offset);
            offset += len;
        }
        segment.end = offset;
        inner.last_index = last.index;
        inner.last_term = last.term;
        inner.written_seq += 1;
        Ok(inner.written_seq)
    }

    /// Returns once every write up to `ticket` is durable. Concurrent callers
    /// share fsyncs.
    pub fn sync_to(&self, ticket: u64) -> Result<()> {
        let mut state = lock(&self.sync);
        loop {
            if state.synced_seq >= ticket {
                return Ok(());
            }
            if let Some(reason) = &state.poisoned {
                return Err(StorageError::Poisoned { reason: reason.clone() });
            }
            if state.syncing {
                // Wait for this sync (or be picked to run the next). Parking rather
                // than a condvar: only the waiters a sync covered, plus one to run
                // the next sync, are woken; a herd of wake-ups costs more CPU on a
                // small machine than the fsync they wait for.
                let me = std::thread::current();
                if !state.waiters.iter().any(|(_, thread)| thread.id() == me.id()) {
                    state.waiters.push((ticket, me));
                }
                drop(state);
                std::thread::park();
                state = lock(&self.sync);
                continue;
            }
            state.syncing = true;
            drop(state);
            let (target, active) = {
                let inner = lock(&self.inner);
                (inner.written_seq, inner.segments.last().map(|s| (s.file.clone(), s.path.clone())))
            };
            let result = match active {
                Some((file, path)) => self.fsync(file.as_ref(), &path),
                None => Ok(()),
            };
            state = lock(&self.sync);
            state.syncing = false;
            // `fsync` poisons on failure, its own or (before its lock is released)
            // a rotation's or truncation's: never count a sync after a failure.
            if result.is_ok() && state.poisoned.is_none() {
                state.synced_seq = state.synced_seq.max(target);
            }
            state.wake_waiters();
            if let Err(error) = result {
                // Lock order is inner, then sync: let go of sync first.
                drop(state);
                let mut inner = lock(&self.inner);
                self.poison(&mut inner, &error);
                return Err(error);
            }
        }
    }

    /// Makes sure the active segment can take `bytes` more, starting a new one
    /// (after syncing the current) when it cannot, or when there is none.
    fn ensure_room(&self, inner: &mut Inner, bytes: u64) -> Result<()> {
        let next = inner.last_index.next();
        if let Some(active) = inner.segments.last() {
            let full = active.end + bytes > self.options.segment_bytes && !active.offsets.is_empty();
            if !full {
                return Ok(());
            }
            if let Err(error) = self.fsync(active.file.as_ref(), &active.path) {
                self.poison(inner, &error);
                return Err(error);
            }
        }
        let path = self.dir.join(segment_name(next));
        let created = self.create_segment(&path, next);
        match created {
            Ok(file) => {
                inner.segments.push(Segment {
                    first: next,
                    path,
                    file,
                    offsets: Vec::new(),
                    end: HEADER_LEN,
                    allocated: HEADER_LEN,
                });
                metrics::gauge!(crate::metrics::WAL_SEGMENTS).set(inner.segments.len() as f64);
                Ok(())
            }
            Err(error) => {
                if self.vfs.remove_file(&path).is_err() {
                    self.poison(inner, &error);
                }
                Err(error)
            }
        }
    }

    fn create_segment(&self, path: &Path, first: LogIndex) -> Result<Arc<dyn VfsFile>> {
        let file = self.vfs.open(path, true).map_err(|e| StorageError::io("create", path, e))?;
        file.set_len(0).map_err(|e| StorageError::io("truncate", path, e))?;
        file.write_all_at(&segment_header(first), 0).map_err(|e| StorageError::io("write", path, e))?;
        self.fsync(file.as_ref(), path)?;
        self.vfs.sync_dir(&self.dir).map_err(|e| StorageError::io("sync", &self.dir, e))?;
        Ok(file)
    }

    /// fdatasync of a segment, one at a time, refused once the log is poisoned;
    /// a failure poisons the log before the next fsync can start.
    fn fsync(&self, file: &dyn VfsFile, path: &Path) -> Result<()> {
        let _one_at_a_time = lock(&self.fsync_lock);
        if let Some(reason) = lock(&self.sync).poisoned.clone() {
            return Err(StorageError::Poisoned { reason });
        }
        let started = std::time::Instant::now();
        let synced = file.sync_data().map_err(|e| {
            let error = StorageError::io("sync", path, e);
            lock(&self.sync).poisoned = Some(error.to_string());
            error
        });
        metrics::histogram!(crate::metrics::FSYNC_SECONDS).record(started.elapsed());
        synced
    }

    fn poison(&self, inner: &mut Inner, error: &StorageError) {
        tracing::error!(%error, dir = %self.dir.display(), "write-ahead log refuses further writes");
        inner.poisoned = Some(error.to_string());
        let mut sync = lock(&self.sync);
        sync.poisoned = Some(error.to_string());
        sync.wake_waiters();
    }

    fn check_poisoned(inner: &Inner) -> Result<()> {
        match &inner.poisoned {
            Some(reason) => Err(StorageError::Poisoned { reason: reason.clone() }),
            None => Ok(()),
        }
    }

    /// Removes segments whose entries all lie below `first`, oldest first.
    fn drop_segments_below(&self, inner: &mut Inner, first: LogIndex) -> Result<()> {
        let mut removed = false;
        while let Some(oldest) = inner.segments.first() {
            if !oldest.offsets.is_empty() && oldest.last() >= first {
                break;
            }
            let path = oldest.path.clone();
            self.vfs.remove_file(&path).map_err(|e| StorageError::io("remove", &path, e))?;
            inner.segments.remove(0);
            removed = true;
        }
        metrics::gauge!(crate::metrics::WAL_SEGMENTS).set(inner.segments.len() as f64);
        if removed {
            self.vfs.sync_dir(&self.dir).map_err(|e| StorageError::io("sync", &self.dir, e))?;
        }
        Ok(())
    }

    fn read_entries(inner: &Inner, from: LogIndex, to: LogIndex) -> Result<Vec<Entry>> {
        let mut entries = Vec::new();
        if from > to {
            return Ok(entries);
        }
        // Segments are contiguous, so "ends before `from`" holds for a prefix of them
        // (an empty segment ends where it starts).
        let start = inner.segments.partition_point(|s| s.first.0 + s.offsets.len() as u64 <= from.0);
        for segment in &inner.segments[start..] {
            if segment.first > to {
                break;
            }
            let a = from.max(segment.first);
            let b = to.min(segment.last());
            let (begin, _) = segment.record_span(a);
            let (_, end) = segment.record_span(b);
            let mut data = vec![0; (end - begin) as usize];
            segment.file.read_exact_at(&mut data, begin).map_err(|e| StorageError::io("read", &segment.path, e))?;
            let mut offset = 0;
            let mut expected = a;
            while offset < data.len() as u64 {
                match read_record(&data, offset) {
                    Record::Entry(entry, next) if entry.index == expected => {
                        entries.push(entry);
                        offset = next;
                        expected = expected.next();
                    }
                    Record::Entry(entry, _) => {
                        return Err(StorageError::Corrupt {
                            path: segment.path.clone(),
                            offset: begin + offset,
                            reason: format!("entry {} where {expected} belongs", entry.index),
                        })
                    }
                    Record::Damaged(reason) | Record::Undecodable(reason) => {
                        return Err(StorageError::Corrupt {
                            path: segment.path.clone(),
                            offset: begin + offset,
                            reason,
                        })
                    }
                    Record::Truncated => {
                        return Err(StorageError::Corrupt {
                            path: segment.path.clone(),
                            offset: begin + offset,
                            reason: "record cut short".to_string(),
                        })
                    }
                }
            }
        }
        Ok(entries)
    }
}

/// What the search behind a damaged record found.
#[derive(Debug, PartialEq, Eq)]
enum Behind {
    /// A whole, valid record of a later entry: the damage is inside the log.
    Entry,
    /// Nothing valid: the damage is a torn tail.
    Nothing,
    /// The search met more candidates than natural damage holds (see
    /// `MAX_CANDIDATES`, `MAX_FALSE_MATCHES`): a crafted segment, refused,
    /// never cut.
    GaveUp { why: String },
}

/// Candidate records (a plausible index field behind a length that fits)
/// the search weighs at most. Torn writes and preallocated zeros hold few;
/// a quarter million takes megabytes of data laid out as records, and
/// about half a second to weigh.
const MAX_CANDIDATES: usize = 1 << 18;

/// Candidates whose checksum holds but that are not the entry their index
/// field names, at most: by chance one in 2^32; each costs decoding.
const MAX_FALSE_MATCHES: usize = 64;

/// Whether a whole, valid record of a later entry lies anywhere after the
/// damaged record of entry `expected` at `offset`. If so, the damage is not a
/// torn tail but corruption inside the log (possibly over several records). The
/// damaged record's length field cannot be trusted, so the search looks at every
/// position for an index field (16 bytes into a record) naming one of the
/// entries that could follow, behind a length that fits, and checks the
/// record there.
///
/// In linear time: candidates may overlap (a crafted segment can make every
/// few bytes one, each reaching far), so their checksums are not computed
/// one by one. One pass over the bytes takes the CRC of each prefix that
/// starts or ends a candidate's payload; CRC-32C being linear, a payload's
/// is then `P(end) ^ combine(P(start), 0, len)`.
fn valid_record_follows(data: &[u8], offset: u64, expected: LogIndex) -> Behind {
    const MIN_RECORD: u64 = RECORD_HEADER_LEN + ENTRY_HEADER_LEN as u64;
    let from = offset as usize + 1 + 16;
    if from + 8 > data.len() {
        return Behind::Nothing;
    }
    let lowest = expected.0 + 1;
    let highest = expected.0 + (data.len() as u64 - offset) / MIN_RECORD + 1;
    let le32 = |at: usize| u32::from_le_bytes([data[at], data[at + 1], data[at + 2], data[at + 3]]);
    // (record start, payload start, payload end, stored checksum, index field)
    let mut candidates = Vec::new();
    for at in from..=data.len() - 8 {
        let mut field = [0u8; 8];
        field.copy_from_slice(&data[at..at + 8]);
        let index = u64::from_le_bytes(field);
        if !(lowest..=highest).contains(&index) {
            continue;
        }
        let start = at - 16;
        let len = u64::from(le32(start));
        let payload = start + RECORD_HEADER_LEN as usize;
        if !(ENTRY_HEADER_LEN as u64..=MAX_RECORD_BYTES).contains(&len) || len > (data.len() - payload) as u64 {
            continue;
        }
        if candidates.len() == MAX_CANDIDATES {
            return Behind::GaveUp { why: format!("more than {MAX_CANDIDATES} candidate records") };
        }
        candidates.push((start, payload, payload + len as usize, le32(start + 4), index));
    }
    let Some(&(_, base, _, _, _)) = candidates.first() else { return Behind::Nothing };
    let mut marks: Vec<usize> = candidates.iter().flat_map(|&(_, s, e, _, _)| [s, e]).collect();
    marks.sort_unstable();
    marks.dedup();
    let mut prefixes = Vec::with_capacity(marks.len());
    let (mut crc, mut at) = (0u32, base);
    for &mark in &marks {
        crc = crc32c::crc32c_append(crc, &data[at..mark]);
        prefixes.push(crc);
        at = mark;
    }
    let prefix = |at: usize| marks.binary_search(&at).ok().map(|i| prefixes[i]);
    let mut false_matches = 0;
    for (start, payload, end, stored, index) in candidates {
        let (Some(before), Some(after)) = (prefix(payload), prefix(end)) else { continue };
        if after ^ crc_shift(before, end - payload) != stored {
            continue;
        }
        if matches!(read_record(data, start as u64), Record::Entry(entry, _) if entry.index.0 == index) {
            return Behind::Entry;
        }
        false_matches += 1;
        if false_matches > MAX_FALSE_MATCHES {
            return Behind::GaveUp {
                why: format!("more than {MAX_FALSE_MATCHES} checksummed records that are not entries"),
            };
        }
    }
    Behind::Nothing
}

/// `crc32c_combine(crc, 0, len)`: what a CRC-32C over some bytes
/// contributes to the CRC of those bytes followed by `len` more, i.e. `crc`
/// times x^(8 len) modulo the (reflected) Castagnoli polynomial. In O(log
/// len) multiplications, with the powers x^(2^k) computed once (as zlib's
/// `crc32_combine` does): a thousand times faster than the crate's combine,
/// which the search behind a damaged record calls once per candidate.
fn crc_shift(crc: u32, len: usize) -> u32 {
    const POLY: u32 = 0x82f6_3b78;
    fn multiply(a: u32, mut b: u32) -> u32 {
        let (mut m, mut product) = (1u32 << 31, 0u32);
        loop {
            if a & m != 0 {
                product ^= b;
                if a & (m - 1) == 0 {
                    return product;
                }
            }
            m >>= 1;
            if m == 0 {
                return product;
            }
            b = if b & 1 != 0 { (b >> 1) ^ POLY } else { b >> 1 };
        }
    }
    static POWERS: std::sync::OnceLock<[u32; 64]> = std::sync::OnceLock::new();
    let powers = POWERS.get_or_init(|| {
        // x^(2^k), k = 0..64 (reflected: x^0 is bit 31).
        let mut table = [0u32; 64];
        let mut p = 1u32 << 30;
        for entry in &mut table {
            *entry = p;
            p = multiply(p, p);
        }
        table
    });
    // x^(8 len) = the product of x^(2^(k+3)) over the bits k of len.
    let (mut factor, mut n, mut k) = (1u32 << 31, len as u64, 3usize);
    while n != 0 {
        if n & 1 != 0 {
            factor = multiply(powers[k & 63], factor);
        }
        n >>= 1;
        k += 1;
    }
    multiply(factor, crc)
}

/// Writes zeros over `from..to` of `file`.
fn fill_zeros(file: &dyn VfsFile, from: u64, to: u64) -> std::io::Result<()> {
    const CHUNK: u64 = 1 << 20;
    let zeros = vec![0u8; CHUNK.min(to.saturating_sub(from)) as usize];
    let mut offset = from;
    while offset < to {
        let n = CHUNK.min(to - offset) as usize;
        file.write_all_at(&zeros[..n], offset)?;
        offset += n as u64;
    }
    Ok(())
}

fn read_manifest(vfs: &dyn Vfs, dir: &Path) -> Result<Option<LogIndex>> {
    let path = dir.join(MANIFEST_FILE);
    let file = match vfs.open(&path, false) {
        Ok(file) => file,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(StorageError::io("open", &path, e)),
    };
    let data = read_all(file.as_ref()).map_err(|e| StorageError::io("read", &path, e))?;
    if data.len() != 20 || &data[..8] != MANIFEST_MAGIC {
        return Err(StorageError::Corrupt { path, offset: 0, reason: "bad log manifest header".to_string() });
    }
    let crc = u32::from_le_bytes([data[16], data[17], data[18], data[19]]);
    if crc32c::crc32c(&data[..16]) != crc {
        return Err(StorageError::Corrupt { path, offset: 16, reason: "log manifest fails its checksum".to_string() });
    }
    let mut first = [0u8; 8];
    first.copy_from_slice(&data[8..16]);
    let first = u64::from_le_bytes(first);
    if first == 0 || first >= MAX_FIRST_INDEX {
        let reason = format!("log manifest names first index {first}, outside 1..2^62");
        return Err(StorageError::Corrupt { path, offset: 8, reason });
    }
    Ok(Some(LogIndex(first)))
}

/// Writes the manifest. The error says whether the log must be poisoned: only
/// when the rename may have happened.
fn write_manifest(vfs: &dyn Vfs, dir: &Path, first: LogIndex) -> Result<(), (StorageError, bool)> {
    let mut data = Vec::with_capacity(20);
    data.put_slice(MANIFEST_MAGIC);
    data.put_u64_le(first.0);
    let crc = crc32c::crc32c(&data);
    data.put_u32_le(crc);
    let path = dir.join(MANIFEST_FILE);
    write_atomically(vfs, &path, &data).map_err(|e| {
        let poison = e.is_fatal();
        (StorageError::io("write", &path, e.into_io()), poison)
    })
}

impl LogStore for Wal {
    fn first_index(&self) -> Result<LogIndex> {
        Ok(lock(&self.inner).first_index)
    }

    fn last_index(&self) -> Result<LogIndex> {
        Ok(lock(&self.inner).last_index)
    }

    fn get(&self, index: LogIndex) -> Result<Option<Entry>> {
        let inner = lock(&self.inner);
        if index < inner.first_index || index > inner.last_index {
            return Ok(None);
        }
        Ok(Wal::read_entries(&inner, index, index)?.pop())
    }

    fn get_range(&self, from: LogIndex, to: LogIndex) -> Result<Vec<Entry>> {
        let inner = lock(&self.inner);
        Wal::read_entries(&inner, from.max(inner.first_index), to.min(inner.last_index))
    }

    fn append(&self, entries: &[Entry]) -> Result<()> {
        let ticket = self.write(entries)?;
        self.sync_to(ticket)
    }

    fn truncate_suffix(&self, from: LogIndex) -> Result<()> {
        let mut inner = lock(&self.inner);
        Wal::check_poisoned(&inner)?;
        if from < inner.first_index {
            return Err(StorageError::invalid(
                "truncate_suffix",
                format!("index {from} is below the first index {}", inner.first_index),
            ));
        }
        if from > inner.last_index {
            return Ok(());
        }
        let result = self.truncate_locked(&mut inner, from);
        if let Err(error) = &result {
            self.poison(&mut inner, error);
        }
        result
    }

    fn purge_prefix(&self, upto: LogIndex) -> Result<()> {
        let mut inner = lock(&self.inner);
        Wal::check_poisoned(&inner)?;
        if upto < inner.first_index {
            return Ok(());
        }
        let first = upto.next();
        if let Err((error, poison)) = write_manifest(self.vfs.as_ref(), &self.dir, first) {
            // A full disk before the rename changed nothing: reported, not fatal.
            if poison {
                self.poison(&mut inner, &error);
            }
            return Err(error);
        }
        inner.first_index = first;
        if upto >= inner.last_index {
            inner.last_index = upto;
            inner.last_term = Term(0);
        }
        let result = self.drop_segments_below(&mut inner, first);
        if let Err(error) = &result {
            self.poison(&mut inner, error);
        }
        result
    }
}

impl Wal {
    fn truncate_locked(&self, inner: &mut Inner, from: LogIndex) -> Result<()> {
        // Newest first, so that a crash leaves a prefix of the old log.
        let mut removed = false;
        while inner.segments.last().is_some_and(|s| s.first >= from) {
            if let Some(segment) = inner.segments.pop() {
                self.vfs.remove_file(&segment.path).map_err(|e| StorageError::io("remove", &segment.path, e))?;
                removed = true;
            }
        }
        metrics::gauge!(crate::metrics::WAL_SEGMENTS).set(inner.segments.len() as f64);
        if removed {
            self.vfs.sync_dir(&self.dir).map_err(|e| StorageError::io("sync", &self.dir, e))?;
        }
        if let Some(segment) = inner.segments.last_mut() {
            if segment.last() >= from {
                let (cut, _) = segment.record_span(from);
                segment.file.set_len(cut).map_err(|e| StorageError::io("truncate", &segment.path, e))?;
                self.fsync(segment.file.as_ref(), &segment.path)?;
                segment.offsets.truncate((from.0 - segment.first.0) as usize);
                segment.end = cut;
                segment.allocated = cut;
            }
        }
        inner.last_index = from.prev().max(inner.first_index.prev());
        inner.last_term = if inner.last_index >= inner.first_index {
            Wal::read_entries(inner, inner.last_index, inner.last_index)?.pop().map_or(Term(0), |e| e.term)
        } else {
            Term(0)
        };
        // Everything left was synced above or by segment rotation.
        inner.written_seq += 1;
        let mut sync = lock(&self.sync);
        if let Some(reason) = sync.poisoned.clone() {
            return Err(StorageError::Poisoned { reason });
        }
        sync.synced_seq = sync.synced_seq.max(inner.written_seq);
        sync.wake_waiters();
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::crc_shift;

    #[test]
    fn crc_shift_is_the_crates_combine_with_nothing_appended() {
        let data: Vec<u8> = (0..5000u32).map(|i| (i.wrapping_mul(2654435761) >> 13) as u8).collect();
        for len in [0usize, 1, 2, 7, 8, 100, 1023, 4096, 1 << 20, 3 << 27] {
            for crc in [0u32, 1, 0xdead_beef, crc32c::crc32c(&data)] {
                assert_eq!(crc_shift(crc, len), crc32c::crc32c_combine(crc, 0, len), "crc {crc:x}, len {len}");
            }
        }
        // A range's CRC from two prefix CRCs.
        let (a, b) = (1234, 4321);
        let (before, after) = (crc32c::crc32c(&data[..a]), crc32c::crc32c(&data[..b]));
        assert_eq!(after ^ crc_shift(before, b - a), crc32c::crc32c(&data[a..b]));
    }
}
