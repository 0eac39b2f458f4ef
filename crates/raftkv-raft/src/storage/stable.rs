//! `FileStableStore`: the hard state and named values in one small file,
//! replaced atomically on every change (write a temporary file, fsync, rename,
//! fsync the directory). A crash leaves the old file or the new one.
//!
//! Layout: magic `RKVSTAB1`, CRC-32C (u32, little-endian) of the body, body: a u32
//! count, then per value a u16 key length, the key (UTF-8), a u32 value length
//! and the value.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use bytes::{Buf, BufMut};
use raftkv_core::HardState;

use crate::locks::lock;

use crate::storage::error::{Result, StorageError};
use crate::storage::memory::{hard_state_from, hard_state_values};
use crate::storage::traits::StableStore;
use crate::storage::vfs::{create_dir_durably, read_all, write_atomically, StdFs, Vfs};

const MAGIC: &[u8; 8] = b"RKVSTAB1";
const FILE_NAME: &str = "stable";

struct State {
    values: BTreeMap<String, Vec<u8>>,
    poisoned: Option<String>,
}

/// A `StableStore` on disk: one file, replaced atomically on every change
/// (see the module doc).
pub struct FileStableStore {
    vfs: Arc<dyn Vfs>,
    path: PathBuf,
    state: Mutex<State>,
}

impl FileStableStore {
    /// Opens (or creates) the store in `dir`.
    pub fn open(dir: impl AsRef<Path>) -> Result<FileStableStore> {
        FileStableStore::open_with(Arc::new(StdFs), dir)
    }

    /// [`FileStableStore::open`] through the file system `vfs` (a
    /// [`FaultyFs`](crate::storage::fault::FaultyFs) in tests).
    pub fn open_with(vfs: Arc<dyn Vfs>, dir: impl AsRef<Path>) -> Result<FileStableStore> {
        let dir = dir.as_ref();
        create_dir_durably(vfs.as_ref(), dir).map_err(|e| StorageError::io("create directory", dir, e))?;
        let path = dir.join(FILE_NAME);
        let values = match vfs.open(&path, false) {
            Ok(file) => {
                let data = read_all(file.as_ref()).map_err(|e| StorageError::io("read", &path, e))?;
                decode(&path, &data)?
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => BTreeMap::new(),
            Err(e) => return Err(StorageError::io("open", &path, e)),
        };
        Ok(FileStableStore { vfs, path, state: Mutex::new(State { values, poisoned: None }) })
    }

    fn update(&self, changes: &[(&str, &[u8])]) -> Result<()> {
        let mut state = lock(&self.state);
        if let Some(reason) = &state.poisoned {
            return Err(StorageError::Poisoned { reason: reason.clone() });
        }
        let mut values = state.values.clone();
        for (key, value) in changes {
            if key.len() > u16::MAX as usize {
                return Err(StorageError::invalid("set", format!("key of {} bytes is too long", key.len())));
            }
            values.insert(key.to_string(), value.to_vec());
        }
        match write_atomically(self.vfs.as_ref(), &self.path, &encode(&values)) {
            Ok(()) => {
                state.values = values;
                Ok(())
            }
            Err(failure) => {
                // A full disk before the rename changed nothing: report it, stay
                // usable. Otherwise (an I/O error, or a rename that may or may not
                // have reached the disk) refuse further writes rather than guess;
                // the old file or the new one is intact.
                let fatal = failure.is_fatal();
                let error = StorageError::io("replace", &self.path, failure.into_io());
                if fatal {
                    state.poisoned = Some(error.to_string());
                }
                Err(error)
            }
        }
    }
}

fn encode(values: &BTreeMap<String, Vec<u8>>) -> Vec<u8> {
    let mut body = Vec::new();
    body.put_u32_le(values.len() as u32);
    for (key, value) in values {
        body.put_u16_le(key.len() as u16);
        body.put_slice(key.as_bytes());
        body.put_u32_le(value.len() as u32);
        body.put_slice(value);
    }
    let mut out = Vec::with_capacity(12 + body.len());
    out.put_slice(MAGIC);
    out.put_u32_le(crc32c::crc32c(&body));
    out.put_slice(&body);
    out
}

fn decode(path: &Path, data: &[u8]) -> Result<BTreeMap<String, Vec<u8>>> {
    let corrupt = |offset: usize, reason: String| StorageError::Corrupt {
        path: path.to_path_buf(),
        offset: offset as u64,
        reason,
    };
    if data.len() < 12 || &data[..8] != MAGIC {
        return Err(corrupt(0, format!("not a stable store file ({} bytes, bad header)", data.len())));
    }
    let expected = u32::from_le_bytes([data[8], data[9], data[10], data[11]]);
    let body = &data[12..];
    let actual = crc32c::crc32c(body);
    if actual != expected {
        return Err(corrupt(12, format!("checksum {actual:08x} does not match the stored {expected:08x}")));
    }
    let mut buf = body;
    let mut values = BTreeMap::new();
    let short = |buf: &[u8]| corrupt(data.len() - buf.len(), "truncated value".to_string());
    if buf.remaining() < 4 {
        return Err(short(buf));
    }
    let count = buf.get_u32_le();
    for _ in 0..count {
        if buf.remaining() < 2 {
            return Err(short(buf));
        }
        let key_len = buf.get_u16_le() as usize;
        if buf.remaining() < key_len {
            return Err(short(buf));
        }
        let key = String::from_utf8(buf[..key_len].to_vec())
            .map_err(|_| corrupt(data.len() - buf.len(), "key is not UTF-8".to_string()))?;
        buf.advance(key_len);
        if buf.remaining() < 4 {
            return Err(short(buf));
        }
        let value_len = buf.get_u32_le() as usize;
        if buf.remaining() < value_len {
            return Err(short(buf));
        }
        values.insert(key, buf[..value_len].to_vec());
        buf.advance(value_len);
    }
    Ok(values)
}

impl StableStore for FileStableStore {
    fn hard_state(&self) -> Result<HardState> {
        hard_state_from(self)
    }

    fn set_hard_state(&self, state: HardState) -> Result<()> {
        let [(term_key, term), (vote_key, vote)] = hard_state_values(state);
        self.update(&[(term_key, &term), (vote_key, &vote)])
    }

    fn get(&self, key: &str) -> Result<Option<Vec<u8>>> {
        Ok(lock(&self.state).values.get(key).cloned())
    }

    fn set(&self, key: &str, value: &[u8]) -> Result<()> {
        self.update(&[(key, value)])
    }
}
