//! The layout of a node's data directory and the names it keeps in its
//! stable store: one place for what the agent, the backup upload and the
//! offline tools all touch.
//!
//! ```text
//! DATA_DIR/LOCK                 advisory lock, held while an agent runs
//! DATA_DIR/log/                 the write-ahead log
//! DATA_DIR/stable               hard state, cluster id, address book
//! DATA_DIR/snapshots/           the newest snapshots
//! DATA_DIR/restore-ID.upload    a backup being uploaded (removed at start)
//! ```

use std::fs::File;
use std::path::{Path, PathBuf};

use crate::agent::config::AgentError;
use crate::agent::outcome::{Failure, Kind};

/// The stable-store key of the id of the node the data dir belongs to.
pub const NODE_ID_KEY: &str = "raftkv.node_id";
/// The stable-store key of the cluster id this node belongs to.
pub const CLUSTER_ID_KEY: &str = "raftkv.cluster_id";
/// The stable-store key of the address book (JSON: node id -> raft address).
pub const PEERS_KEY: &str = "raftkv.peers";
/// The gossip addresses of the other nodes last seen, for a restart to
/// announce itself to (as serf's snapshot does).
pub const GOSSIP_PEERS_KEY: &str = "raftkv.gossip_peers";
/// Stable-store key of the members this node last saw in a committed
/// configuration and the ids removed since (`agent::removal`), JSON.
pub const REMOVED_KEY: &str = "raftkv.removed";

const UPLOAD_PREFIX: &str = "restore-";
const UPLOAD_SUFFIX: &str = ".upload";

pub fn log_dir(dir: &Path) -> PathBuf {
    dir.join("log")
}

pub fn stable_file(dir: &Path) -> PathBuf {
    dir.join("stable")
}

pub fn snapshot_dir(dir: &Path) -> PathBuf {
    dir.join("snapshots")
}

/// Where the backup upload `id` is spooled.
pub fn upload_file(dir: &Path, id: &str) -> PathBuf {
    dir.join(format!("{UPLOAD_PREFIX}{id}{UPLOAD_SUFFIX}"))
}

/// Takes the data dir's lock (`LOCK`, an advisory file lock the OS releases
/// when the process ends, even by SIGKILL).
pub fn lock(dir: &Path) -> Result<File, AgentError> {
    let path = dir.join("LOCK");
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .map_err(|e| AgentError::Config(format!("cannot open {}: {e}", path.display())))?;
    match file.try_lock() {
        Ok(()) => Ok(file),
        Err(std::fs::TryLockError::WouldBlock) => Err(AgentError::Config(format!(
            "{} is in use by a running raftkv agent (lock held on {})",
            dir.display(),
            path.display()
        ))),
        Err(std::fs::TryLockError::Error(e)) => Err(AgentError::Config(format!("cannot lock {}: {e}", path.display()))),
    }
}

/// Removes uploads a crash left behind.
pub fn remove_stale_uploads(dir: &Path) {
    let Ok(entries) = std::fs::read_dir(dir) else { return };
    for entry in entries.flatten() {
        let name = entry.file_name();
        let name = name.to_string_lossy();
        if name.starts_with(UPLOAD_PREFIX) && name.ends_with(UPLOAD_SUFFIX) {
            if let Err(error) = std::fs::remove_file(entry.path()) {
                tracing::warn!(%error, file = %name, "cannot remove a stale restore upload");
            }
        }
    }
}

/// Refuses (not done, 507) if writing `more` bytes into `dir` would leave
/// less than `reserve` free. `doing` names the write in the message
/// ("taking", "logging").
pub fn check_headroom(dir: &Path, more: u64, reserve: u64, doing: &str) -> Result<(), Failure> {
    let Some(free) = free_space(dir) else { return Ok(()) };
    if free.saturating_sub(more) < reserve {
        let message = format!(
            "the data dir has {free} bytes free; {doing} {more} more would leave less than the {reserve} bytes \
             kept for the log (--disk-reserve-bytes)"
        );
        return Err(Failure::not_done(Kind::InsufficientStorage, message));
    }
    Ok(())
}

/// Bytes free for this process in the file system holding `dir`.
pub fn free_space(dir: &Path) -> Option<u64> {
    #[cfg(unix)]
    {
        use std::os::unix::ffi::OsStrExt;
        let path = std::ffi::CString::new(dir.as_os_str().as_bytes()).ok()?;
        // SAFETY: `statvfs` fills the zeroed struct it is given and reads
        // only the NUL-terminated path.
        let mut stats: libc::statvfs = unsafe { std::mem::zeroed() };
        if unsafe { libc::statvfs(path.as_ptr(), &mut stats) } != 0 {
            return None;
        }
        Some((stats.f_bavail as u64).saturating_mul(stats.f_frsize as u64))
    }
    #[cfg(not(unix))]
    {
        let _ = dir;
        None
    }
}

pub fn storage_error(dir: &Path) -> impl Fn(raftkv_raft::storage::StorageError) -> AgentError + '_ {
    move |source| AgentError::Storage { dir: dir.to_path_buf(), source }
}
