//! The file-system seam of the durable stores. `StdFs` is the real one;
//! `fault::FaultyFs` wraps it to inject EIO and ENOSPC in tests.
//!
//! Files are written and read at explicit offsets, so that one open file can be
//! shared by a writer and readers without a cursor to fight over.

use std::fs::{self, File, OpenOptions};
use std::io;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// The file-system calls the durable stores make. None is durable by itself:
/// a store syncs files (`VfsFile::sync_data`) and directories (`sync_dir`).
pub trait Vfs: Send + Sync + 'static {
    /// Opens `path` for reading and writing, creating it (empty) if `create`.
    fn open(&self, path: &Path, create: bool) -> io::Result<Arc<dyn VfsFile>>;
    /// Creates `path` and any missing parents.
    fn create_dir_all(&self, path: &Path) -> io::Result<()>;
    /// Entries of a directory, as full paths.
    fn list(&self, dir: &Path) -> io::Result<Vec<PathBuf>>;
    /// Renames `from` to `to`, replacing `to` if it exists (atomic on POSIX).
    fn rename(&self, from: &Path, to: &Path) -> io::Result<()>;
    /// Removes a file.
    fn remove_file(&self, path: &Path) -> io::Result<()>;
    /// Removes a directory and everything in it.
    fn remove_dir_all(&self, path: &Path) -> io::Result<()>;
    /// Makes creations, renames and removals in `dir` durable.
    fn sync_dir(&self, dir: &Path) -> io::Result<()>;
}

/// An open file, read and written at explicit offsets.
pub trait VfsFile: Send + Sync {
    /// Fills `buf` from `offset`; an error if the file ends first.
    fn read_exact_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()>;
    /// Writes all of `buf` at `offset` (into the page cache: not durable
    /// before `sync_data`).
    fn write_all_at(&self, buf: &[u8], offset: u64) -> io::Result<()>;
    /// fdatasync: the data written so far, and the size, are durable.
    fn sync_data(&self) -> io::Result<()>;
    /// Cuts or extends the file to `len` bytes.
    fn set_len(&self, len: u64) -> io::Result<()>;
    /// The file's length, in bytes.
    fn len(&self) -> io::Result<u64>;
    /// Whether the file is empty.
    fn is_empty(&self) -> io::Result<bool> {
        Ok(self.len()? == 0)
    }
}

/// The operating system's file system.
#[derive(Clone, Copy, Debug, Default)]
pub struct StdFs;

impl Vfs for StdFs {
    fn open(&self, path: &Path, create: bool) -> io::Result<Arc<dyn VfsFile>> {
        let file = OpenOptions::new().read(true).write(true).create(create).truncate(false).open(path)?;
        Ok(Arc::new(file))
    }

    fn create_dir_all(&self, path: &Path) -> io::Result<()> {
        fs::create_dir_all(path)
    }

    fn list(&self, dir: &Path) -> io::Result<Vec<PathBuf>> {
        let mut paths = Vec::new();
        for entry in fs::read_dir(dir)? {
            paths.push(entry?.path());
        }
        paths.sort();
        Ok(paths)
    }

    fn rename(&self, from: &Path, to: &Path) -> io::Result<()> {
        fs::rename(from, to)
    }

    fn remove_file(&self, path: &Path) -> io::Result<()> {
        fs::remove_file(path)
    }

    fn remove_dir_all(&self, path: &Path) -> io::Result<()> {
        fs::remove_dir_all(path)
    }

    fn sync_dir(&self, dir: &Path) -> io::Result<()> {
        File::open(dir)?.sync_all()
    }
}

impl VfsFile for File {
    fn read_exact_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        FileExt::read_exact_at(self, buf, offset)
    }

    fn write_all_at(&self, buf: &[u8], offset: u64) -> io::Result<()> {
        FileExt::write_all_at(self, buf, offset)
    }

    fn sync_data(&self) -> io::Result<()> {
        File::sync_data(self)
    }

    fn set_len(&self, len: u64) -> io::Result<()> {
        File::set_len(self, len)
    }

    fn len(&self) -> io::Result<u64> {
        Ok(self.metadata()?.len())
    }
}

/// Reads a whole file through the seam.
pub(crate) fn read_all(file: &dyn VfsFile) -> io::Result<Vec<u8>> {
    let len = file.len()?;
    let len = usize::try_from(len).map_err(|_| io::Error::other(format!("file of {len} bytes does not fit memory")))?;
    let mut data = vec![0; len];
    file.read_exact_at(&mut data, 0)?;
    Ok(data)
}

/// How `write_atomically` failed: before the rename (the old file is in place
/// and nothing changed) or after it (the new file may or may not be durable).
#[derive(Debug)]
pub(crate) enum AtomicWriteError {
    BeforeRename(io::Error),
    AfterRename(io::Error),
}

impl AtomicWriteError {
    /// Whether the store must stop trusting the disk: any failure but running
    /// out of space before the rename.
    pub(crate) fn is_fatal(&self) -> bool {
        const ENOSPC: i32 = 28;
        match self {
            AtomicWriteError::BeforeRename(e) => e.raw_os_error() != Some(ENOSPC),
            AtomicWriteError::AfterRename(_) => true,
        }
    }

    pub(crate) fn into_io(self) -> io::Error {
        match self {
            AtomicWriteError::BeforeRename(e) | AtomicWriteError::AfterRename(e) => e,
        }
    }
}

/// Replaces `path` with `data` atomically: write a temporary file, fsync it,
/// rename it over `path`, fsync the directory. A crash leaves the old file or the
/// new one, never a mix.
pub(crate) fn write_atomically(vfs: &dyn Vfs, path: &Path, data: &[u8]) -> Result<(), AtomicWriteError> {
    let dir = path.parent().unwrap_or(Path::new("."));
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(".tmp");
    let tmp = PathBuf::from(tmp);
    let before = |e| AtomicWriteError::BeforeRename(e);
    let file = vfs.open(&tmp, true).map_err(before)?;
    file.set_len(0).map_err(before)?;
    file.write_all_at(data, 0).map_err(before)?;
    file.sync_data().map_err(before)?;
    drop(file);
    vfs.rename(&tmp, path).map_err(AtomicWriteError::AfterRename)?;
    vfs.sync_dir(dir).map_err(AtomicWriteError::AfterRename)
}

/// Creates `dir` (and its parents) and makes the new entry durable in its parent.
pub(crate) fn create_dir_durably(vfs: &dyn Vfs, dir: &Path) -> io::Result<()> {
    vfs.create_dir_all(dir)?;
    match dir.parent() {
        Some(parent) if !parent.as_os_str().is_empty() => vfs.sync_dir(parent),
        _ => Ok(()),
    }
}
