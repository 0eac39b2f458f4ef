//! The write-ahead log across reopen, damage and failing disks: what survives,
//! what is cut off with a warning, and what is a clear error.

use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Condvar, Mutex};

use bytes::Bytes;
use raftkv_core::{Entry, EntryPayload, LogIndex, Term};
use raftkv_raft::storage::fault::FaultyFs;
use raftkv_raft::storage::vfs::{StdFs, Vfs, VfsFile};
use raftkv_raft::storage::{LogStore, StorageError, Wal, WalOptions};
use tempfile::TempDir;

fn entry(term: u64, index: u64) -> Entry {
    let data = format!("entry {index} of term {term} {}", "x".repeat((index % 50) as usize));
    Entry { term: Term(term), index: LogIndex(index), payload: EntryPayload::Command(Bytes::from(data)) }
}

fn entries(term: u64, from: u64, to: u64) -> Vec<Entry> {
    (from..=to).map(|i| entry(term, i)).collect()
}

fn small_segments() -> WalOptions {
    WalOptions { segment_bytes: 1024, preallocate: true }
}

/// Without zeros written ahead, so that cutting bytes off a file's end cuts records.
fn unpadded(options: WalOptions) -> WalOptions {
    WalOptions { preallocate: false, ..options }
}

fn segments(dir: &Path) -> Vec<PathBuf> {
    let mut paths: Vec<PathBuf> = fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "wal"))
        .collect();
    paths.sort();
    paths
}

fn all(wal: &Wal) -> Vec<Entry> {
    wal.get_range(wal.first_index().unwrap(), wal.last_index().unwrap()).unwrap()
}

fn flip_bit(path: &Path, offset: u64) {
    let mut data = fs::read(path).unwrap();
    data[offset as usize] ^= 0x10;
    fs::write(path, data).unwrap();
}

fn chop(path: &Path, bytes_off_the_end: u64) {
    let len = fs::metadata(path).unwrap().len();
    fs::OpenOptions::new().write(true).open(path).unwrap().set_len(len - bytes_off_the_end).unwrap();
}

#[test]
fn everything_survives_reopen_across_segments() {
    let dir = TempDir::new().unwrap();
    {
        let wal = Wal::open(dir.path(), small_segments()).unwrap();
        wal.append(&entries(1, 1, 50)).unwrap();
        for i in 51..=120 {
            wal.append(&[entry(2, i)]).unwrap();
        }
    }
    assert!(segments(dir.path()).len() > 5, "expected several segments");
    let wal = Wal::open(dir.path(), small_segments()).unwrap();
    assert_eq!((wal.first_index().unwrap(), wal.last_index().unwrap()), (LogIndex(1), LogIndex(120)));
    assert_eq!(all(&wal), [entries(1, 1, 50), entries(2, 51, 120)].concat());
    // And the reopened log keeps going.
    wal.append(&entries(3, 121, 130)).unwrap();
    assert_eq!(wal.get(LogIndex(130)).unwrap(), Some(entry(3, 130)));
}

#[test]
fn truncation_and_purge_survive_reopen() {
    let dir = TempDir::new().unwrap();
    {
        let wal = Wal::open(dir.path(), small_segments()).unwrap();
        wal.append(&entries(1, 1, 100)).unwrap();
        wal.truncate_suffix(LogIndex(60)).unwrap();
        wal.append(&entries(2, 60, 80)).unwrap();
        wal.purge_prefix(LogIndex(30)).unwrap();
    }
    let wal = Wal::open(dir.path(), small_segments()).unwrap();
    assert_eq!((wal.first_index().unwrap(), wal.last_index().unwrap()), (LogIndex(31), LogIndex(80)));
    assert_eq!(all(&wal), [entries(1, 31, 59), entries(2, 60, 80)].concat());
    // Purge past the end, reopen: empty, positioned after the purge point.
    wal.purge_prefix(LogIndex(500)).unwrap();
    drop(wal);
    let wal = Wal::open(dir.path(), small_segments()).unwrap();
    assert_eq!((wal.first_index().unwrap(), wal.last_index().unwrap()), (LogIndex(501), LogIndex(500)));
    assert!(segments(dir.path()).is_empty(), "purged segments left behind");
    wal.append(&entries(3, 501, 502)).unwrap();
    drop(wal);
    let wal = Wal::open(dir.path(), small_segments()).unwrap();
    assert_eq!(all(&wal), entries(3, 501, 502));
}

#[test]
fn torn_tail_is_cut_off_and_the_log_goes_on() {
    let dir = TempDir::new().unwrap();
    {
        let wal = Wal::open(dir.path(), unpadded(WalOptions::default())).unwrap();
        wal.append(&entries(1, 1, 10)).unwrap();
    }
    let segment = segments(dir.path()).pop().unwrap();
    let full = fs::read(&segment).unwrap();
    // Every possible tear inside the last record, header included.
    let last_record_len = {
        let wal = Wal::open(dir.path(), unpadded(WalOptions::default())).unwrap();
        drop(wal);
        // Record = 8-byte frame header + 17-byte entry header + command bytes.
        let EntryPayload::Command(data) = entry(1, 10).payload else { unreachable!() };
        8 + 17 + data.len() as u64
    };
    for cut in 1..last_record_len {
        fs::write(&segment, &full).unwrap();
        chop(&segment, cut);
        let wal = Wal::open(dir.path(), unpadded(WalOptions::default())).unwrap();
        assert_eq!(wal.last_index().unwrap(), LogIndex(9), "after cutting {cut} bytes");
        assert_eq!(all(&wal), entries(1, 1, 9));
        wal.append(&[entry(2, 10)]).unwrap();
        drop(wal);
        let wal = Wal::open(dir.path(), unpadded(WalOptions::default())).unwrap();
        assert_eq!(wal.get(LogIndex(10)).unwrap(), Some(entry(2, 10)), "append after a torn tail, cut {cut}");
    }
}

#[test]
fn damage_in_a_closed_segment_is_an_error_naming_file_and_offset() {
    let dir = TempDir::new().unwrap();
    {
        let wal = Wal::open(dir.path(), unpadded(small_segments())).unwrap();
        wal.append(&entries(1, 1, 60)).unwrap();
        for i in 61..=80 {
            wal.append(&[entry(1, i)]).unwrap();
        }
    }
    let closed = segments(dir.path())[0].clone();
    let len = fs::metadata(&closed).unwrap().len();
    let pristine = fs::read(&closed).unwrap();
    for offset in [0, 10, 24, 30, len / 2, len - 1] {
        fs::write(&closed, &pristine).unwrap();
        flip_bit(&closed, offset);
        match Wal::open(dir.path(), unpadded(small_segments())) {
            Err(StorageError::Corrupt { path, .. }) => assert_eq!(path, closed, "flip at {offset}"),
            Err(other) => panic!("flip at {offset}: expected Corrupt, got {other}"),
            Ok(wal) => panic!("flip at {offset}: opened with last index {:?}", wal.last_index()),
        }
    }
    fs::write(&closed, &pristine).unwrap();
    chop(&closed, 5);
    let error = Wal::open(dir.path(), unpadded(small_segments())).err().expect("a cut closed segment must not open");
    assert!(matches!(error, StorageError::Corrupt { .. }), "got {error}");
    assert!(error.to_string().contains(&closed.display().to_string()), "error names the file: {error}");
}

#[test]
fn damage_inside_the_last_segment_is_an_error_not_a_torn_tail() {
    let dir = TempDir::new().unwrap();
    {
        let wal = Wal::open(dir.path(), WalOptions::default()).unwrap();
        wal.append(&entries(1, 1, 20)).unwrap();
    }
    let segment = segments(dir.path()).pop().unwrap();
    // Inside the third record: valid records follow it.
    let offset = 24 + 2 * 60;
    flip_bit(&segment, offset);
    match Wal::open(dir.path(), WalOptions::default()) {
        Err(StorageError::Corrupt { path, offset: at, reason }) => {
            assert_eq!(path, segment);
            assert!(at <= offset, "reported offset {at} is after the damage at {offset}: {reason}");
        }
        Err(other) => panic!("expected Corrupt, got {other}"),
        Ok(wal) => panic!("opened a damaged log with last index {:?}", wal.last_index()),
    }
}

#[test]
fn any_flipped_bit_is_refused_or_cut_off_never_returned() {
    let dir = TempDir::new().unwrap();
    {
        let wal = Wal::open(dir.path(), small_segments()).unwrap();
        for batch in 0..4 {
            wal.append(&entries(1, batch * 10 + 1, batch * 10 + 10)).unwrap();
        }
    }
    let files = segments(dir.path());
    assert!(files.len() >= 3, "closed segments and a last one");
    for file in &files {
        let pristine = fs::read(file).unwrap();
        for offset in (0..pristine.len() as u64).step_by(3) {
            fs::write(file, &pristine).unwrap();
            flip_bit(file, offset);
            if let Ok(wal) = Wal::open(dir.path(), small_segments()) {
                // Only a torn-looking last record may go; what remains is exact.
                let survivors = all(&wal);
                let expected = entries(1, 1, survivors.len() as u64);
                assert_eq!(survivors, expected, "flip at {offset} of {}", file.display());
                assert!(survivors.len() >= 39, "flip at {offset} of {} lost more than the last record", file.display());
            }
        }
        fs::write(file, &pristine).unwrap();
    }
}

#[test]
fn failed_fsync_poisons_the_log_and_loses_nothing_acknowledged() {
    let dir = TempDir::new().unwrap();
    let fs = FaultyFs::default();
    let wal = Wal::open_with(Arc::new(fs.clone()), dir.path(), WalOptions::default()).unwrap();
    wal.append(&entries(1, 1, 10)).unwrap();
    fs.fail_syncs_after(0);
    let error = wal.append(&entries(1, 11, 12)).unwrap_err();
    assert!(matches!(error, StorageError::Io { .. }), "got {error}");
    fs.heal();
    // The disk works again, but the page cache cannot be trusted: still refused.
    for attempt in [wal.append(&entries(1, 13, 13)), wal.truncate_suffix(LogIndex(5)), wal.purge_prefix(LogIndex(2))] {
        assert!(matches!(attempt, Err(StorageError::Poisoned { .. })), "got {attempt:?}");
    }
    drop(wal);
    let wal = Wal::open(dir.path(), WalOptions::default()).unwrap();
    let survivors = all(&wal);
    assert!(survivors.len() >= 10, "lost acknowledged entries");
    assert_eq!(survivors, entries(1, 1, survivors.len() as u64));
}

#[test]
fn full_disk_is_reported_and_the_log_recovers_when_space_returns() {
    let dir = TempDir::new().unwrap();
    let fs = FaultyFs::default();
    let wal = Wal::open_with(Arc::new(fs.clone()), dir.path(), WalOptions::default()).unwrap();
    wal.append(&entries(1, 1, 10)).unwrap();
    fs.fill_disk_after(100);
    let error = wal.append(&entries(1, 11, 30)).unwrap_err();
    assert!(error.is_out_of_space(), "expected ENOSPC, got {error}");
    assert_eq!(wal.last_index().unwrap(), LogIndex(10), "a refused append changed the log");
    fs.heal();
    wal.append(&entries(1, 11, 30)).unwrap();
    drop(wal);
    let wal = Wal::open(dir.path(), WalOptions::default()).unwrap();
    assert_eq!(all(&wal), entries(1, 1, 30));
}

#[test]
fn full_disk_while_starting_a_segment_leaves_the_log_usable() {
    let dir = TempDir::new().unwrap();
    let fs = FaultyFs::default();
    let wal = Wal::open_with(Arc::new(fs.clone()), dir.path(), small_segments()).unwrap();
    wal.append(&entries(1, 1, 10)).unwrap();
    fs.fill_disk_after(0);
    assert!(wal.append(&entries(1, 11, 40)).unwrap_err().is_out_of_space());
    fs.heal();
    wal.append(&entries(1, 11, 40)).unwrap();
    drop(wal);
    let wal = Wal::open(dir.path(), small_segments()).unwrap();
    assert_eq!(all(&wal), entries(1, 1, 40));
}

/// A file system whose file fsyncs wait at a gate while it is closed, so that a
/// test can hold one sync in progress and see who shares the next.
#[derive(Clone, Default)]
struct GatedFs {
    state: Arc<(Mutex<(bool, u64)>, Condvar)>,
}

impl GatedFs {
    fn close(&self) {
        self.state.0.lock().unwrap().0 = true;
    }

    fn open(&self) {
        self.state.0.lock().unwrap().0 = false;
        self.state.1.notify_all();
    }

    /// File fsyncs started so far.
    fn syncs(&self) -> u64 {
        self.state.0.lock().unwrap().1
    }

    fn wait_for_syncs(&self, n: u64) {
        let mut state = self.state.0.lock().unwrap();
        while state.1 < n {
            state = self.state.1.wait(state).unwrap();
        }
    }
}

struct GatedFile {
    file: Arc<dyn VfsFile>,
    fs: GatedFs,
}

impl Vfs for GatedFs {
    fn open(&self, path: &Path, create: bool) -> io::Result<Arc<dyn VfsFile>> {
        Ok(Arc::new(GatedFile { file: StdFs.open(path, create)?, fs: self.clone() }))
    }
    fn create_dir_all(&self, path: &Path) -> io::Result<()> {
        StdFs.create_dir_all(path)
    }
    fn list(&self, dir: &Path) -> io::Result<Vec<PathBuf>> {
        StdFs.list(dir)
    }
    fn rename(&self, from: &Path, to: &Path) -> io::Result<()> {
        StdFs.rename(from, to)
    }
    fn remove_file(&self, path: &Path) -> io::Result<()> {
        StdFs.remove_file(path)
    }
    fn remove_dir_all(&self, path: &Path) -> io::Result<()> {
        StdFs.remove_dir_all(path)
    }
    fn sync_dir(&self, dir: &Path) -> io::Result<()> {
        StdFs.sync_dir(dir)
    }
}

impl VfsFile for GatedFile {
    fn read_exact_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        self.file.read_exact_at(buf, offset)
    }
    fn write_all_at(&self, buf: &[u8], offset: u64) -> io::Result<()> {
        self.file.write_all_at(buf, offset)
    }
    fn sync_data(&self) -> io::Result<()> {
        let (lock, changed) = &*self.fs.state;
        let mut state = lock.lock().unwrap();
        state.1 += 1;
        changed.notify_all();
        while state.0 {
            state = changed.wait(state).unwrap();
        }
        drop(state);
        self.file.sync_data()
    }
    fn set_len(&self, len: u64) -> io::Result<()> {
        self.file.set_len(len)
    }
    fn len(&self) -> io::Result<u64> {
        self.file.len()
    }
}

#[test]
fn writes_that_arrive_during_an_fsync_share_the_next_one() {
    let dir = TempDir::new().unwrap();
    let fs = GatedFs::default();
    let wal = Arc::new(Wal::open_with(Arc::new(fs.clone()), dir.path(), WalOptions::default()).unwrap());
    wal.append(&entries(1, 1, 1)).unwrap();
    let base = fs.syncs();

    fs.close();
    let first = wal.write(&[entry(1, 2)]).unwrap();
    let syncer = {
        let wal = wal.clone();
        std::thread::spawn(move || wal.sync_to(first))
    };
    fs.wait_for_syncs(base + 1);
    // While that fsync is held, eight more appends arrive from eight threads.
    let waiters: Vec<_> = (3..=10)
        .map(|i| {
            let ticket = wal.write(&[entry(1, i)]).unwrap();
            let wal = wal.clone();
            std::thread::spawn(move || wal.sync_to(ticket))
        })
        .collect();
    fs.open();
    syncer.join().unwrap().unwrap();
    for waiter in waiters {
        waiter.join().unwrap().unwrap();
    }
    // One fsync for the first write, one shared by the eight that waited.
    assert_eq!(fs.syncs() - base, 2);
    assert_eq!(all(&wal), entries(1, 1, 10));
}

#[test]
fn concurrent_appenders_all_land_in_order() {
    let dir = TempDir::new().unwrap();
    let fs = FaultyFs::default();
    let wal = Arc::new(Wal::open_with(Arc::new(fs.clone()), dir.path(), WalOptions::default()).unwrap());
    let next = Arc::new(Mutex::new(1u64));
    let before = fs.syncs();
    let per_thread = 200;
    let threads: Vec<_> = (0..16)
        .map(|_| {
            let (wal, next) = (wal.clone(), next.clone());
            std::thread::spawn(move || {
                for _ in 0..per_thread {
                    let ticket = {
                        let mut next = next.lock().unwrap();
                        let ticket = wal.write(&[entry(1, *next)]).unwrap();
                        *next += 1;
                        ticket
                    };
                    wal.sync_to(ticket).unwrap();
                }
            })
        })
        .collect();
    for thread in threads {
        thread.join().unwrap();
    }
    let appends = 16 * per_thread;
    let syncs = fs.syncs() - before;
    // Every append returned after an fsync that covered it, in index order.
    assert_eq!(all(&wal), entries(1, 1, appends));
    assert!(syncs <= appends, "{syncs} fsyncs for {appends} appends");
}

#[test]
fn an_empty_last_segment_does_not_hide_the_entries_before_it() {
    // A full disk right after a new segment's header: the segment stays, empty.
    // (A crash between creating a segment and writing to it leaves the same.)
    let dir = TempDir::new().unwrap();
    let fs = FaultyFs::default();
    let wal = Wal::open_with(Arc::new(fs.clone()), dir.path(), small_segments()).unwrap();
    wal.append(&entries(1, 1, 30)).unwrap();
    let before = segments(dir.path()).len();
    fs.fill_disk_after(24);
    assert!(wal.append(&entries(1, 31, 31)).unwrap_err().is_out_of_space());
    assert_eq!(segments(dir.path()).len(), before + 1, "the new segment was not kept");
    assert_eq!(wal.get_range(LogIndex(3), LogIndex(30)).unwrap(), entries(1, 3, 30));
    drop(wal);
    fs.heal();
    let wal = Wal::open(dir.path(), small_segments()).unwrap();
    assert_eq!(all(&wal), entries(1, 1, 30));
    wal.append(&entries(1, 31, 31)).unwrap();
    assert_eq!(wal.get_range(LogIndex(29), LogIndex(31)).unwrap(), entries(1, 29, 31));
}

#[test]
fn zeros_written_ahead_end_the_log_and_a_tear_before_them_is_cut() {
    let dir = TempDir::new().unwrap();
    {
        let wal = Wal::open(dir.path(), WalOptions::default()).unwrap();
        wal.append(&entries(1, 1, 10)).unwrap();
    }
    let segment = segments(dir.path()).pop().unwrap();
    let data = fs::read(&segment).unwrap();
    assert!(data.len() >= 4 << 20, "the segment was not filled ahead ({} bytes)", data.len());
    let end = data.len() - data.iter().rev().take_while(|b| **b == 0).count();
    // Reopen: the zeros are not records.
    let wal = Wal::open(dir.path(), WalOptions::default()).unwrap();
    assert_eq!(all(&wal), entries(1, 1, 10));
    drop(wal);
    // A record torn in the middle, zeros after it: cut, nothing else lost.
    let EntryPayload::Command(last) = entry(1, 10).payload else { unreachable!() };
    let last_record = 8 + 17 + last.len();
    let mut torn = data.clone();
    for b in &mut torn[end - last_record / 2..end] {
        *b = 0;
    }
    fs::write(&segment, &torn).unwrap();
    let wal = Wal::open(dir.path(), WalOptions::default()).unwrap();
    assert_eq!(all(&wal), entries(1, 1, 9));
    wal.append(&[entry(2, 10)]).unwrap();
    drop(wal);
    let wal = Wal::open(dir.path(), WalOptions::default()).unwrap();
    assert_eq!(all(&wal), [entries(1, 1, 9), vec![entry(2, 10)]].concat());
    drop(wal);
    // Garbage far out in the zeros of the last segment is a torn write too: cut.
    let mut garbage = fs::read(&segment).unwrap();
    let at = garbage.len() - 100;
    garbage[at] = 0x7f;
    fs::write(&segment, &garbage).unwrap();
    let wal = Wal::open(dir.path(), WalOptions::default()).unwrap();
    assert_eq!(all(&wal), [entries(1, 1, 9), vec![entry(2, 10)]].concat());
}

#[test]
fn damage_over_several_records_of_the_last_segment_is_an_error_not_a_tear() {
    let dir = TempDir::new().unwrap();
    {
        let wal = Wal::open(dir.path(), unpadded(WalOptions::default())).unwrap();
        wal.append(&entries(1, 1, 30)).unwrap();
    }
    let segment = segments(dir.path()).pop().unwrap();
    let mut data = fs::read(&segment).unwrap();
    // Wipe a stretch covering records 3 and 4 (as a bad sector would); 5..30 follow intact.
    let start = 24 + 2 * 30;
    for b in &mut data[start..start + 140] {
        *b ^= 0xff;
    }
    fs::write(&segment, &data).unwrap();
    match Wal::open(dir.path(), unpadded(WalOptions::default())) {
        Err(StorageError::Corrupt { path, .. }) => assert_eq!(path, segment),
        Err(other) => panic!("expected Corrupt, got {other}"),
        Ok(wal) => panic!("opened, silently cut to {:?}", wal.last_index()),
    }
}

#[test]
fn a_failed_manifest_write_on_a_full_disk_is_reported_not_fatal() {
    let dir = TempDir::new().unwrap();
    let fs = FaultyFs::default();
    let wal = Wal::open_with(Arc::new(fs.clone()), dir.path(), small_segments()).unwrap();
    wal.append(&entries(1, 1, 40)).unwrap();
    fs.fill_disk_after(0);
    assert!(wal.purge_prefix(LogIndex(20)).unwrap_err().is_out_of_space());
    fs.heal();
    // Nothing changed and the log still works.
    assert_eq!(wal.first_index().unwrap(), LogIndex(1));
    wal.purge_prefix(LogIndex(20)).unwrap();
    wal.append(&entries(1, 41, 41)).unwrap();
    assert_eq!(all(&wal), entries(1, 21, 41));
}

/// A final record that is whole and checksummed but does not decode (written
/// by a newer format, say) is no torn write: opening refuses with an error
/// naming file and offset, and the file keeps every byte.
#[test]
fn a_whole_final_record_that_does_not_decode_is_refused_not_cut() {
    let dir = TempDir::new().unwrap();
    {
        let wal = Wal::open(dir.path(), unpadded(WalOptions::default())).unwrap();
        wal.append(&entries(1, 1, 5)).unwrap();
    }
    let segment = segments(dir.path()).pop().unwrap();
    // Entry 6 of term 1 with an entry kind this build does not know.
    let mut payload = Vec::new();
    payload.extend_from_slice(&1u64.to_le_bytes());
    payload.extend_from_slice(&6u64.to_le_bytes());
    payload.push(77);
    payload.extend_from_slice(b"from a newer version");
    let mut record = Vec::new();
    record.extend_from_slice(&(payload.len() as u32).to_le_bytes());
    record.extend_from_slice(&crc32c::crc32c(&payload).to_le_bytes());
    record.extend_from_slice(&payload);
    let mut data = fs::read(&segment).unwrap();
    let offset = data.len() as u64;
    data.extend_from_slice(&record);
    fs::write(&segment, &data).unwrap();

    match Wal::open(dir.path(), unpadded(WalOptions::default())) {
        Err(StorageError::Corrupt { path, offset: at, reason }) => {
            assert_eq!((path, at), (segment.clone(), offset));
            assert!(reason.contains("valid checksum"), "{reason}");
        }
        Err(other) => panic!("expected a Corrupt error, got {other}"),
        Ok(wal) => panic!("opened a log ending in an unreadable record; last index {:?}", wal.last_index()),
    }
    assert_eq!(fs::read(&segment).unwrap(), data, "the log must keep the record it cannot read");
}

/// A last segment whose entry 1 is damaged, followed by record lookalikes
/// up to `bytes`: every 24 bytes a header whose index field names entry 2
/// and whose length reaches half the file (checking each in turn would
/// checksum ~180 GB for 4 MiB; a 1 MiB file took 0.4 s before the search
/// was made linear, 4 MiB 7.7 s).
fn damaged_then_lookalikes(dir: &Path, bytes: usize) -> (PathBuf, Vec<u8>) {
    {
        let wal = Wal::open(dir, unpadded(WalOptions::default())).unwrap();
        wal.append(&entries(1, 1, 1)).unwrap();
    }
    let segment = segments(dir).pop().unwrap();
    let mut data = fs::read(&segment).unwrap();
    data[24 + 8 + 17] ^= 0x10;
    let claimed = (bytes / 2) as u32;
    while data.len() + 24 <= bytes {
        data.extend_from_slice(&claimed.to_le_bytes());
        data.extend_from_slice(&0u32.to_le_bytes());
        data.extend_from_slice(&1u64.to_le_bytes());
        data.extend_from_slice(&2u64.to_le_bytes());
    }
    (segment, data)
}

#[test]
fn a_tail_full_of_record_lookalikes_is_judged_by_its_records_in_linear_time() {
    // Nothing valid behind the damage: a torn tail, cut (quickly: the
    // search is linear, whatever the lookalikes claim).
    let dir = TempDir::new().unwrap();
    let (segment, data) = damaged_then_lookalikes(dir.path(), 1 << 20);
    fs::write(&segment, &data).unwrap();
    let wal = Wal::open(dir.path(), unpadded(WalOptions::default())).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(wal.last_index().unwrap(), LogIndex(0));
    drop(wal);

    // The same with a valid record of entry 2 at the very end, behind
    // all of them: corruption inside the log, refused, nothing cut.
    let dir = TempDir::new().unwrap();
    let (segment, mut data) = damaged_then_lookalikes(dir.path(), 1 << 20);
    let mut payload = Vec::new();
    payload.extend_from_slice(&1u64.to_le_bytes());
    payload.extend_from_slice(&2u64.to_le_bytes());
    payload.push(1);
    payload.extend_from_slice(b"entry two");
    data.extend_from_slice(&(payload.len() as u32).to_le_bytes());
    data.extend_from_slice(&crc32c::crc32c(&payload).to_le_bytes());
    data.extend_from_slice(&payload);
    fs::write(&segment, &data).unwrap();
    match Wal::open(dir.path(), unpadded(WalOptions::default())) {
        Err(StorageError::Corrupt { path, offset, reason }) => {
            assert_eq!(path, segment);
            assert_eq!(offset, 24, "the damaged record: {reason}");
        }
        Err(other) => panic!("expected Corrupt, got {other}"),
        Ok(wal) => panic!("opened a damaged log with last index {:?}", wal.last_index()),
    }
    assert_eq!(fs::read(&segment).unwrap(), data, "nothing was cut");
}

#[test]
fn a_tail_with_more_lookalikes_than_any_torn_write_leaves_is_refused_not_cut() {
    // 4 MiB of lookalikes hold over 400,000 candidate records.
    let dir = TempDir::new().unwrap();
    let (segment, data) = damaged_then_lookalikes(dir.path(), 4 << 20);
    fs::write(&segment, &data).unwrap();
    match Wal::open(dir.path(), unpadded(WalOptions::default())) {
        Err(StorageError::Corrupt { offset, reason, .. }) => {
            assert_eq!(offset, 24, "{reason}");
            assert!(reason.contains("candidate records"), "{reason}");
        }
        Err(other) => panic!("expected Corrupt, got {other}"),
        Ok(wal) => panic!("opened a crafted log with last index {:?}", wal.last_index()),
    }
    assert_eq!(fs::read(&segment).unwrap(), data, "nothing was cut");
}
