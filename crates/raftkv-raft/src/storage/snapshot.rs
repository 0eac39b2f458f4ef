//! `FileSnapshotStore`: one directory per snapshot, `meta.json` (what it covers,
//! the data's size and CRC-32C, and a checksum of the metadata itself) beside
//! `data`. A snapshot is written under `<id>.tmp` and renamed into place when
//! committed, after its files are durable, so a crash mid-write leaves nothing
//! that lists. Leftover `.tmp` directories are removed when the store opens.
//! Opening a snapshot reads it through once to verify size and checksum.

use std::io;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use raftkv_core::{Configuration, LogId, LogIndex, NodeId, SnapshotMeta, Term};
use serde::{Deserialize, Serialize};

use crate::storage::error::{Result, StorageError};
use crate::storage::traits::{snapshot_id, SnapshotInfo, SnapshotSink, SnapshotStore};
use crate::storage::vfs::{create_dir_durably, read_all, StdFs, Vfs, VfsFile};

const META_FILE: &str = "meta.json";
const DATA_FILE: &str = "data";
const TMP_SUFFIX: &str = ".tmp";
const WRITE_BUFFER: usize = 1 << 20;
const READ_CHUNK: usize = 1 << 20;

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
struct StoredMeta {
    version: u32,
    index: u64,
    term: u64,
    voters: Vec<u64>,
    voters_outgoing: Vec<u64>,
    learners: Vec<u64>,
    /// Learners marked to become voters; absent in files written before
    /// staging existed (and whenever empty, so those files keep their
    /// checksums).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    staging: Vec<u64>,
    size: u64,
    checksum: u32,
}

#[derive(Serialize, Deserialize)]
struct MetaFile {
    meta: StoredMeta,
    /// CRC-32C of `meta` serialized as JSON.
    meta_checksum: u32,
}

impl StoredMeta {
    fn new(meta: &SnapshotMeta, size: u64, checksum: u32) -> StoredMeta {
        let ids = |set: &std::collections::BTreeSet<NodeId>| set.iter().map(|id| id.0).collect();
        StoredMeta {
            version: 1,
            index: meta.last_log_id.index.0,
            term: meta.last_log_id.term.0,
            voters: ids(&meta.config.voters),
            voters_outgoing: ids(&meta.config.voters_outgoing),
            learners: ids(&meta.config.learners),
            staging: ids(&meta.config.staging),
            size,
            checksum,
        }
    }

    fn info(&self, id: String) -> SnapshotInfo {
        let ids = |list: &[u64]| list.iter().map(|id| NodeId(*id)).collect();
        let config = Configuration {
            voters: ids(&self.voters),
            voters_outgoing: ids(&self.voters_outgoing),
            learners: ids(&self.learners),
            staging: ids(&self.staging),
        }
        .keep_staging_on_learners();
        let meta = SnapshotMeta { last_log_id: LogId::new(Term(self.term), LogIndex(self.index)), config };
        SnapshotInfo { id, meta, size: self.size, checksum: self.checksum }
    }
}

fn meta_checksum(meta: &StoredMeta) -> u32 {
    // Serializing a plain struct cannot fail.
    crc32c::crc32c(&serde_json::to_vec(meta).unwrap_or_default())
}

/// A `SnapshotStore` on disk: one directory per snapshot (see the module doc).
pub struct FileSnapshotStore {
    vfs: Arc<dyn Vfs>,
    dir: PathBuf,
    retain: usize,
    next_unique: Arc<AtomicU64>,
}

impl FileSnapshotStore {
    /// Opens (or creates) the store in `dir`, keeping the newest `retain` snapshots.
    pub fn open(dir: impl AsRef<Path>, retain: usize) -> Result<FileSnapshotStore> {
        FileSnapshotStore::open_with(Arc::new(StdFs), dir, retain)
    }

    /// [`FileSnapshotStore::open`] through the file system `vfs` (a
    /// [`FaultyFs`](crate::storage::fault::FaultyFs) in tests).
    pub fn open_with(vfs: Arc<dyn Vfs>, dir: impl AsRef<Path>, retain: usize) -> Result<FileSnapshotStore> {
        let dir = dir.as_ref().to_path_buf();
        create_dir_durably(vfs.as_ref(), &dir).map_err(|e| StorageError::io("create directory", &dir, e))?;
        let mut unique = 0;
        for path in vfs.list(&dir).map_err(|e| StorageError::io("list", &dir, e))? {
            let name = path.file_name().and_then(|n| n.to_str()).unwrap_or_default();
            if name.ends_with(TMP_SUFFIX) {
                tracing::warn!(path = %path.display(), "removing an uncommitted snapshot left by a crash");
                vfs.remove_dir_all(&path).map_err(|e| StorageError::io("remove", &path, e))?;
                continue;
            }
            if let Some(n) = name.rsplit('-').next().and_then(|n| u64::from_str_radix(n, 16).ok()) {
                unique = unique.max(n);
            }
        }
        Ok(FileSnapshotStore { vfs, dir, retain: retain.max(1), next_unique: Arc::new(AtomicU64::new(unique)) })
    }

    fn read_meta(&self, id: &str) -> Result<SnapshotInfo> {
        let path = self.dir.join(id).join(META_FILE);
        let file = self.vfs.open(&path, false).map_err(|e| match e.kind() {
            io::ErrorKind::NotFound => StorageError::NotFound { what: format!("snapshot {id}") },
            _ => StorageError::io("open", &path, e),
        })?;
        let data = read_all(file.as_ref()).map_err(|e| StorageError::io("read", &path, e))?;
        let corrupt = |reason: String| StorageError::Corrupt { path: path.clone(), offset: 0, reason };
        let parsed: MetaFile =
            serde_json::from_slice(&data).map_err(|e| corrupt(format!("unreadable snapshot metadata: {e}")))?;
        if meta_checksum(&parsed.meta) != parsed.meta_checksum {
            return Err(corrupt("snapshot metadata fails its checksum".to_string()));
        }
        Ok(parsed.meta.info(id.to_string()))
    }

    fn committed_ids(&self) -> Result<Vec<String>> {
        let mut ids: Vec<String> = self
            .vfs
            .list(&self.dir)
            .map_err(|e| StorageError::io("list", &self.dir, e))?
            .iter()
            .filter_map(|p| p.file_name().and_then(|n| n.to_str()).map(str::to_string))
            .filter(|name| !name.ends_with(TMP_SUFFIX))
            .collect();
        // Ids sort by (index, term, creation); newest first.
        ids.sort_unstable_by(|a, b| b.cmp(a));
        Ok(ids)
    }

    /// Removes snapshots beyond the newest `retain` readable ones, never the one
    /// just committed and never a directory whose metadata does not read (it may
    /// not be ours). Each goes by a rename to a temporary name first, so that a
    /// crash midway leaves nothing half-removed that lists.
    fn reap(&self, just_committed: &str) -> Result<()> {
        let readable: Vec<String> = self.committed_ids()?.into_iter().filter(|id| self.read_meta(id).is_ok()).collect();
        for id in readable.into_iter().skip(self.retain).filter(|id| id != just_committed) {
            let path = self.dir.join(&id);
            let doomed = self.dir.join(format!("{id}{TMP_SUFFIX}"));
            self.vfs.rename(&path, &doomed).map_err(|e| StorageError::io("rename", &path, e))?;
            self.vfs.remove_dir_all(&doomed).map_err(|e| StorageError::io("remove", &doomed, e))?;
        }
        self.vfs.sync_dir(&self.dir).map_err(|e| StorageError::io("sync", &self.dir, e))
    }
}

impl SnapshotStore for FileSnapshotStore {
    fn create(&self, meta: SnapshotMeta) -> Result<Box<dyn SnapshotSink>> {
        let unique = self.next_unique.fetch_add(1, Ordering::SeqCst) + 1;
        let id = snapshot_id(&meta, unique);
        let tmp_dir = self.dir.join(format!("{id}{TMP_SUFFIX}"));
        self.vfs.create_dir_all(&tmp_dir).map_err(|e| StorageError::io("create directory", &tmp_dir, e))?;
        let data_path = tmp_dir.join(DATA_FILE);
        let file = self.vfs.open(&data_path, true).map_err(|e| StorageError::io("create", &data_path, e))?;
        Ok(Box::new(FileSink {
            store: FileSnapshotStore {
                vfs: self.vfs.clone(),
                dir: self.dir.clone(),
                retain: self.retain,
                next_unique: self.next_unique.clone(),
            },
            id,
            meta,
            tmp_dir,
            file,
            buffer: Vec::with_capacity(WRITE_BUFFER),
            written: 0,
            checksum: 0,
            finished: false,
        }))
    }

    fn list(&self) -> Result<Vec<SnapshotInfo>> {
        let mut infos = Vec::new();
        for id in self.committed_ids()? {
            match self.read_meta(&id) {
                Ok(info) => infos.push(info),
                Err(error) => tracing::warn!(%error, id, "skipping a snapshot whose metadata cannot be read"),
            }
        }
        Ok(infos)
    }

    fn open(&self, id: &str) -> Result<(SnapshotInfo, Box<dyn io::Read + Send>)> {
        let info = self.read_meta(id)?;
        let path = self.dir.join(id).join(DATA_FILE);
        let file = self.vfs.open(&path, false).map_err(|e| StorageError::io("open", &path, e))?;
        let len = file.len().map_err(|e| StorageError::io("stat", &path, e))?;
        if len != info.size {
            return Err(StorageError::Corrupt {
                path,
                offset: len.min(info.size),
                reason: format!("snapshot data has {len} bytes, its metadata says {}", info.size),
            });
        }
        let mut checksum = 0;
        let mut buf = vec![0; READ_CHUNK];
        let mut offset = 0;
        while offset < len {
            let n = READ_CHUNK.min((len - offset) as usize);
            file.read_exact_at(&mut buf[..n], offset).map_err(|e| StorageError::io("read", &path, e))?;
            checksum = crc32c::crc32c_append(checksum, &buf[..n]);
            offset += n as u64;
        }
        if checksum != info.checksum {
            return Err(StorageError::Corrupt {
                path,
                offset: 0,
                reason: format!("snapshot data checksum {checksum:08x} does not match {:08x}", info.checksum),
            });
        }
        Ok((info, Box::new(FileReader { file, offset: 0, len })))
    }

    fn read_chunk(&self, id: &str, offset: u64, max: usize) -> Result<bytes::Bytes> {
        let info = self.read_meta(id)?;
        let path = self.dir.join(id).join(DATA_FILE);
        let file = self.vfs.open(&path, false).map_err(|e| StorageError::io("open", &path, e))?;
        let n = (max as u64).min(info.size.saturating_sub(offset)) as usize;
        let mut data = vec![0; n];
        file.read_exact_at(&mut data, offset).map_err(|e| StorageError::io("read", &path, e))?;
        Ok(bytes::Bytes::from(data))
    }
}

struct FileReader {
    file: Arc<dyn VfsFile>,
    offset: u64,
    len: u64,
}

impl io::Read for FileReader {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = (buf.len() as u64).min(self.len - self.offset) as usize;
        if n == 0 {
            return Ok(0);
        }
        self.file.read_exact_at(&mut buf[..n], self.offset)?;
        self.offset += n as u64;
        Ok(n)
    }
}

struct FileSink {
    store: FileSnapshotStore,
    id: String,
    meta: SnapshotMeta,
    tmp_dir: PathBuf,
    file: Arc<dyn VfsFile>,
    buffer: Vec<u8>,
    written: u64,
    checksum: u32,
    finished: bool,
}

impl FileSink {
    fn flush_buffer(&mut self) -> io::Result<()> {
        if !self.buffer.is_empty() {
            self.file.write_all_at(&self.buffer, self.written)?;
            self.written += self.buffer.len() as u64;
            self.buffer.clear();
        }
        Ok(())
    }

    fn finish(&mut self) -> Result<SnapshotInfo> {
        let data_path = self.tmp_dir.join(DATA_FILE);
        self.flush_buffer().map_err(|e| StorageError::io("write", &data_path, e))?;
        self.file.sync_data().map_err(|e| StorageError::io("sync", &data_path, e))?;
        let stored = StoredMeta::new(&self.meta, self.written, self.checksum);
        let meta_file = MetaFile { meta_checksum: meta_checksum(&stored), meta: stored.clone() };
        let json = serde_json::to_vec_pretty(&meta_file)
            .map_err(|e| StorageError::invalid("commit snapshot", format!("metadata does not serialize: {e}")))?;
        let vfs = self.store.vfs.clone();
        let meta_path = self.tmp_dir.join(META_FILE);
        let meta = vfs.open(&meta_path, true).map_err(|e| StorageError::io("create", &meta_path, e))?;
        meta.write_all_at(&json, 0).map_err(|e| StorageError::io("write", &meta_path, e))?;
        meta.sync_data().map_err(|e| StorageError::io("sync", &meta_path, e))?;
        vfs.sync_dir(&self.tmp_dir).map_err(|e| StorageError::io("sync", &self.tmp_dir, e))?;
        let final_dir = self.store.dir.join(&self.id);
        vfs.rename(&self.tmp_dir, &final_dir).map_err(|e| StorageError::io("rename", &self.tmp_dir, e))?;
        self.finished = true;
        vfs.sync_dir(&self.store.dir).map_err(|e| StorageError::io("sync", &self.store.dir, e))?;
        self.store.reap(&self.id)?;
        Ok(stored.info(self.id.clone()))
    }

    fn discard(&mut self) -> Result<()> {
        if self.finished {
            return Ok(());
        }
        self.finished = true;
        match self.store.vfs.remove_dir_all(&self.tmp_dir) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(StorageError::io("remove", &self.tmp_dir, e)),
        }
    }
}

impl io::Write for FileSink {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.checksum = crc32c::crc32c_append(self.checksum, buf);
        self.buffer.extend_from_slice(buf);
        if self.buffer.len() >= WRITE_BUFFER {
            self.flush_buffer()?;
        }
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        self.flush_buffer()
    }
}

impl SnapshotSink for FileSink {
    fn id(&self) -> &str {
        &self.id
    }

    fn commit(mut self: Box<Self>) -> Result<SnapshotInfo> {
        let result = self.finish();
        if result.is_err() {
            // Nothing half-written may list: drop the temporary directory.
            let _ = self.discard();
        }
        result
    }

    fn cancel(mut self: Box<Self>) -> Result<()> {
        self.discard()
    }
}

impl Drop for FileSink {
    fn drop(&mut self) {
        if let Err(error) = self.discard() {
            tracing::warn!(%error, id = self.id, "could not remove a cancelled snapshot");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Metadata without staging serializes exactly as before staging existed
    /// (so files written then keep their checksums); with it, it round-trips.
    #[test]
    fn staging_is_absent_from_metadata_that_has_none() {
        let mut config = Configuration::new([NodeId(1)]);
        config.learners.insert(NodeId(2));
        let meta = SnapshotMeta { last_log_id: LogId::new(Term(2), LogIndex(9)), config: config.clone() };
        let stored = StoredMeta::new(&meta, 10, 7);
        let json = serde_json::to_string(&stored).unwrap();
        assert_eq!(
            json,
            r#"{"version":1,"index":9,"term":2,"voters":[1],"voters_outgoing":[],"learners":[2],"size":10,"checksum":7}"#
        );
        config.staging.insert(NodeId(2));
        let meta = SnapshotMeta { last_log_id: LogId::new(Term(2), LogIndex(9)), config };
        let stored = StoredMeta::new(&meta, 10, 7);
        let read: StoredMeta = serde_json::from_str(&serde_json::to_string(&stored).unwrap()).unwrap();
        assert_eq!(read.info("s".into()).meta, meta);
    }
}
