//! `StorageError`, what every store reports, and the `Result` they return.
//! A leaf: the traits and every store import it from here.

use std::io;
use std::path::PathBuf;

/// What went wrong in a store, with the file, offset or index concerned.
#[derive(Debug, thiserror::Error)]
pub enum StorageError {
    /// A file-system call failed.
    #[error("{op} {path}: {source}")]
    Io {
        /// What the store was doing (`"write"`, `"sync"`, `"rename"`, ...).
        op: &'static str,
        /// The file or directory concerned.
        path: PathBuf,
        /// The operating system's error.
        #[source]
        source: io::Error,
    },
    /// Data on disk failed a check (checksum, framing, sequence). Never skipped.
    #[error("corrupt data in {path} at offset {offset}: {reason}")]
    Corrupt {
        /// The damaged file.
        path: PathBuf,
        /// Where in it the damage starts, in bytes.
        offset: u64,
        /// The check that failed.
        reason: String,
    },
    /// An earlier write or fsync failed, so the page cache can no longer be trusted
    /// to match the disk; every later write is refused.
    #[error("store refuses writes after an earlier failure: {reason}")]
    Poisoned {
        /// The failure that poisoned the store.
        reason: String,
    },
    /// The caller broke the contract (a gap in appended indexes, a truncation below
    /// the first index, ...). Nothing was written.
    #[error("{op}: {reason}")]
    InvalidArgument {
        /// The store method that was called.
        op: &'static str,
        /// What broke the contract.
        reason: String,
    },
    /// What was asked for does not exist (a snapshot id, say).
    #[error("{what} not found")]
    NotFound {
        /// What was looked for.
        what: String,
    },
    /// The stores disagree in a way no crash leaves behind (entries missing
    /// between the snapshot and the log, say): the node cannot start from them.
    #[error("inconsistent stored state: {what}")]
    Inconsistent {
        /// What disagrees, with the indexes concerned.
        what: String,
    },
}

impl StorageError {
    pub(crate) fn io(op: &'static str, path: impl Into<PathBuf>, source: io::Error) -> StorageError {
        StorageError::Io { op, path: path.into(), source }
    }

    pub(crate) fn invalid(op: &'static str, reason: impl Into<String>) -> StorageError {
        StorageError::InvalidArgument { op, reason: reason.into() }
    }

    /// Whether the disk ran out of space (the write was refused; nothing
    /// acknowledged before it is affected).
    pub fn is_out_of_space(&self) -> bool {
        matches!(self, StorageError::Io { source, .. } if source.raw_os_error() == Some(ENOSPC))
    }
}

const ENOSPC: i32 = 28;

/// The result of a store call: a [`StorageError`] unless another error is named.
pub type Result<T, E = StorageError> = std::result::Result<T, E>;
