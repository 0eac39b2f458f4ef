//! Durable state of a Raft node: the log, the hard state (term and vote) and
//! snapshots, behind three traits in the spirit of hashicorp/raft's `LogStore`,
//! `StableStore` and `SnapshotStore`.
//!
//! Every implementation here comes in two kinds: in memory (`memory`), for tests
//! and the simulator's model, and on disk (`wal`, `stable`, `snapshot`). The
//! [`conformance`] suite checks any implementation against the contract written
//! on the traits; both kinds pass it.
//!
//! The contract all three share: a method that returns `Ok` after a write has made
//! it durable (it survives a crash of the process or the machine). A store that
//! cannot trust its disk any more (a failed fsync: the page cache may hold what
//! the disk lost) refuses every later write with [`StorageError::Poisoned`]
//! rather than acknowledge something it may lose. A full disk (ENOSPC) is
//! reported ([`StorageError::is_out_of_space`]), the partial bytes are cut off
//! again, and the store stays usable once space is freed.
//!
//! The on-disk stores: [`wal`] (the log; its module doc describes the format,
//! group commit, crash safety and recovery), [`stable`] (hard state and named
//! values, one file replaced atomically), [`snapshot`] (one directory per
//! snapshot); all reach the file system through [`vfs`], where [`fault`]
//! injects EIO, ENOSPC and counts fsyncs for the tests.
//!
//! Layout: `error` (`StorageError`, `Result`) and `traits` (the three traits and the
//! helpers their implementations share) are leaves every store imports
//! directly; this file only declares the modules and re-exports what users
//! name, so imports point from here down and never back.

pub mod codec;
pub mod conformance;
mod error;
pub mod fault;
pub mod memory;
pub mod snapshot;
pub mod stable;
mod traits;
pub mod vfs;
pub mod wal;

pub use error::{Result, StorageError};
pub use memory::{MemLogStore, MemSnapshotStore, MemStableStore};
pub use snapshot::FileSnapshotStore;
pub use stable::FileStableStore;
pub use traits::{LogStore, SnapshotInfo, SnapshotSink, SnapshotStore, StableStore};
pub use wal::{Wal, WalOptions};
