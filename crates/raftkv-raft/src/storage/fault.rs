//! A file system that fails on request, for testing what the stores do when the
//! disk does: `FaultyFs` wraps another `Vfs` and, once armed, makes fsyncs fail
//! with EIO or writes fail with ENOSPC (after writing part of the buffer, as a
//! real full disk may).

use std::io;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use crate::storage::vfs::{StdFs, Vfs, VfsFile};

const EIO: i32 = 5;
const ENOSPC: i32 = 28;
const NEVER: u64 = u64::MAX;

#[derive(Debug)]
struct Switches {
    /// Number of fsyncs (file or directory) still allowed to succeed.
    syncs_left: AtomicU64,
    /// Bytes that writes may still add before they fail with ENOSPC.
    bytes_left: AtomicU64,
    /// fsyncs (file or directory) that succeeded so far.
    syncs_done: AtomicU64,
}

/// A `Vfs` with injectable failures; clones share the switches.
#[derive(Clone)]
pub struct FaultyFs {
    inner: Arc<dyn Vfs>,
    switches: Arc<Switches>,
}

impl Default for FaultyFs {
    fn default() -> Self {
        FaultyFs::new(Arc::new(StdFs))
    }
}

impl FaultyFs {
    /// Wraps `inner`, with no failure armed.
    pub fn new(inner: Arc<dyn Vfs>) -> FaultyFs {
        let switches = Switches {
            syncs_left: AtomicU64::new(NEVER),
            bytes_left: AtomicU64::new(NEVER),
            syncs_done: AtomicU64::new(0),
        };
        FaultyFs { inner, switches: Arc::new(switches) }
    }

    /// After `n` more successful fsyncs, every fsync fails with EIO.
    pub fn fail_syncs_after(&self, n: u64) {
        self.switches.syncs_left.store(n, Ordering::SeqCst);
    }

    /// After `bytes` more bytes written, writes fail with ENOSPC.
    pub fn fill_disk_after(&self, bytes: u64) {
        self.switches.bytes_left.store(bytes, Ordering::SeqCst);
    }

    /// Clears every injected failure (the operator freed space, say).
    pub fn heal(&self) {
        self.switches.syncs_left.store(NEVER, Ordering::SeqCst);
        self.switches.bytes_left.store(NEVER, Ordering::SeqCst);
    }

    /// fsyncs that succeeded so far, files and directories together.
    pub fn syncs(&self) -> u64 {
        self.switches.syncs_done.load(Ordering::SeqCst)
    }

    fn sync_allowed(&self) -> io::Result<()> {
        let allowed = self
            .switches
            .syncs_left
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| if n == NEVER { Some(n) } else { n.checked_sub(1) })
            .is_ok();
        if allowed {
            self.switches.syncs_done.fetch_add(1, Ordering::SeqCst);
            Ok(())
        } else {
            Err(io::Error::from_raw_os_error(EIO))
        }
    }
}

impl Vfs for FaultyFs {
    fn open(&self, path: &Path, create: bool) -> io::Result<Arc<dyn VfsFile>> {
        let file = self.inner.open(path, create)?;
        Ok(Arc::new(FaultyFile { file, fs: self.clone() }))
    }

    fn create_dir_all(&self, path: &Path) -> io::Result<()> {
        self.inner.create_dir_all(path)
    }

    fn list(&self, dir: &Path) -> io::Result<Vec<PathBuf>> {
        self.inner.list(dir)
    }

    fn rename(&self, from: &Path, to: &Path) -> io::Result<()> {
        self.inner.rename(from, to)
    }

    fn remove_file(&self, path: &Path) -> io::Result<()> {
        self.inner.remove_file(path)
    }

    fn remove_dir_all(&self, path: &Path) -> io::Result<()> {
        self.inner.remove_dir_all(path)
    }

    fn sync_dir(&self, dir: &Path) -> io::Result<()> {
        self.sync_allowed()?;
        self.inner.sync_dir(dir)
    }
}

struct FaultyFile {
    file: Arc<dyn VfsFile>,
    fs: FaultyFs,
}

impl VfsFile for FaultyFile {
    fn read_exact_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        self.file.read_exact_at(buf, offset)
    }

    fn write_all_at(&self, buf: &[u8], offset: u64) -> io::Result<()> {
        let len = buf.len() as u64;
        let left = self.fs.switches.bytes_left.load(Ordering::SeqCst);
        if left == NEVER {
            return self.file.write_all_at(buf, offset);
        }
        if len <= left {
            self.fs.switches.bytes_left.fetch_sub(len, Ordering::SeqCst);
            return self.file.write_all_at(buf, offset);
        }
        // A full disk: part of the buffer lands, then the write fails.
        self.fs.switches.bytes_left.store(0, Ordering::SeqCst);
        self.file.write_all_at(&buf[..left as usize], offset)?;
        Err(io::Error::from_raw_os_error(ENOSPC))
    }

    fn sync_data(&self) -> io::Result<()> {
        self.fs.sync_allowed()?;
        self.file.sync_data()
    }

    fn set_len(&self, len: u64) -> io::Result<()> {
        self.file.set_len(len)
    }

    fn len(&self) -> io::Result<u64> {
        self.file.len()
    }
}
