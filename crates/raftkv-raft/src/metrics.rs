//! What the library measures, through the `metrics` facade: nothing is
//! recorded, and nearly nothing spent, unless the application installs a
//! recorder (the `raftkv` server installs a Prometheus one). Names follow
//! Prometheus' conventions: a `raftkv_` prefix, `_total` counters, base
//! units (`_seconds`, `_bytes`).
//!
//! Only events are recorded here, each once per batch rather than per entry
//! where a batch exists. The protocol state (term, role, commit and applied
//! index, each peer's match index) is not pushed from the hot path: an
//! exporter reads `Raft::status` and `Raft::statistics` when it is scraped.

/// Entries made durable in the log (as leader or follower).
pub const ENTRIES_APPENDED: &str = "raftkv_raft_entries_appended_total";
/// A batch of log writes made durable by the log writer (write and fsync).
pub const APPEND_SECONDS: &str = "raftkv_raft_append_duration_seconds";
/// On the leader: from a batch of proposals entering the raft loop to its
/// commit.
pub const COMMIT_SECONDS: &str = "raftkv_raft_commit_duration_seconds";
/// Times this node saw the leader change (including to "none").
pub const LEADER_CHANGES: &str = "raftkv_raft_leader_changes_total";
/// Elections this node started (it became a candidate, term bumped).
pub const ELECTIONS: &str = "raftkv_raft_elections_started_total";
/// Snapshots this node wrote of its state machine.
pub const SNAPSHOTS: &str = "raftkv_raft_snapshots_written_total";
/// Writing a snapshot of the state machine to the snapshot store.
pub const SNAPSHOT_SECONDS: &str = "raftkv_raft_snapshot_write_duration_seconds";
/// The size of the last snapshot written.
pub const SNAPSHOT_BYTES: &str = "raftkv_raft_snapshot_size_bytes";
/// One fdatasync of a log segment.
pub const FSYNC_SECONDS: &str = "raftkv_storage_fsync_duration_seconds";
/// Bytes of records written to the log.
pub const WAL_BYTES: &str = "raftkv_storage_wal_bytes_written_total";
/// Log segments on disk.
pub const WAL_SEGMENTS: &str = "raftkv_storage_wal_segments";

/// Gives every metric above its help text (call once, after installing a
/// recorder).
pub fn describe() {
    use metrics::{describe_counter, describe_gauge, describe_histogram, Unit};
    describe_counter!(ENTRIES_APPENDED, "Entries made durable in the log.");
    describe_histogram!(APPEND_SECONDS, Unit::Seconds, "A batch of log writes made durable (write and fsync).");
    describe_histogram!(COMMIT_SECONDS, Unit::Seconds, "Leader: a batch of proposals from arrival to commit.");
    describe_counter!(LEADER_CHANGES, "Leader changes seen by this node.");
    describe_counter!(ELECTIONS, "Elections started by this node.");
    describe_counter!(SNAPSHOTS, "Snapshots of the state machine written.");
    describe_histogram!(SNAPSHOT_SECONDS, Unit::Seconds, "Writing a snapshot of the state machine.");
    describe_gauge!(SNAPSHOT_BYTES, Unit::Bytes, "Size of the last snapshot written.");
    describe_histogram!(FSYNC_SECONDS, Unit::Seconds, "One fdatasync of a log segment.");
    describe_counter!(WAL_BYTES, Unit::Bytes, "Bytes of records written to the log.");
    describe_gauge!(WAL_SEGMENTS, "Log segments on disk.");
}
