//! The log writer: one OS thread (storage calls block) that owns the node's
//! `Stores` and runs the driver's store jobs in order, merging what queued while it was busy into one append
//! and one fsync, and reports the highest sequence done. A failed step stops
//! it before anything later runs (later jobs are dropped unrun). Stores that all live in memory
//! (`LogStore::in_memory`) need no thread: the raft loop calls `write` itself.

use std::collections::BTreeMap;
use std::sync::Arc;

use raftkv_core::LogIndex;
use raftkv_driver::{StoreJob, StoreStep};
use tokio::sync::mpsc;

use crate::storage::{LogStore, SnapshotSink, SnapshotStore, StableStore, StorageError};

/// The stores of one node. The log writer owns them once the node runs; the
/// raft loop keeps its own handle on the snapshot store.
pub(crate) struct Stores {
    pub log: Arc<dyn LogStore>,
    pub stable: Arc<dyn StableStore>,
    pub snapshots: Arc<dyn SnapshotStore>,
}

/// A store job and the received snapshots its `CommitReceived` steps commit.
pub(crate) struct WriterJob {
    pub job: StoreJob,
    pub sinks: Vec<(u64, Box<dyn SnapshotSink>)>,
}

pub(crate) enum WriterEvent {
    Persisted(u64),
    Failed(StorageError),
}

pub(crate) fn log_writer(
    stores: Stores,
    jobs: std::sync::mpsc::Receiver<WriterJob>,
    events: mpsc::UnboundedSender<WriterEvent>,
) {
    while let Ok(first) = jobs.recv() {
        let mut batch = vec![first];
        while let Ok(next) = jobs.try_recv() {
            batch.push(next);
        }
        let mut sinks = BTreeMap::new();
        let mut queued = Vec::with_capacity(batch.len());
        for WriterJob { job, sinks: received } in batch {
            sinks.extend(received);
            queued.push(job);
        }
        let (steps, seq) = StoreJob::merge(queued);
        let ran = write(&stores, steps, &mut sinks);
        let event = match ran {
            Err(error) => WriterEvent::Failed(error),
            Ok(()) => match seq {
                Some(seq) => WriterEvent::Persisted(seq),
                None => continue,
            },
        };
        let failed = matches!(event, WriterEvent::Failed(_));
        if events.send(event).is_err() {
            return;
        }
        if failed {
            // Nothing after a failed step runs. The channel stays open until
            // the raft loop lets go of it, so that the loop learns the
            // failure from the event just sent, not from a closed channel
            // that would hide what failed.
            while jobs.recv().is_ok() {}
            return;
        }
    }
}

/// Runs merged steps in order and records them (`crate::metrics`).
pub(crate) fn write(
    stores: &Stores,
    steps: Vec<StoreStep>,
    sinks: &mut BTreeMap<u64, Box<dyn SnapshotSink>>,
) -> Result<(), StorageError> {
    let entries: usize = steps
        .iter()
        .map(|step| match step {
            StoreStep::Write(write) => write.entries.len(),
            _ => 0,
        })
        .sum();
    let started = std::time::Instant::now();
    let ran = run_steps(stores.log.as_ref(), stores.stable.as_ref(), steps, sinks);
    if entries > 0 && ran.is_ok() {
        metrics::histogram!(crate::metrics::APPEND_SECONDS).record(started.elapsed());
        metrics::counter!(crate::metrics::ENTRIES_APPENDED).increment(entries as u64);
    }
    ran
}

/// Runs steps in order; each is durable when it returns.
pub(crate) fn run_steps(
    log: &dyn LogStore,
    stable: &dyn StableStore,
    steps: Vec<StoreStep>,
    sinks: &mut BTreeMap<u64, Box<dyn SnapshotSink>>,
) -> Result<(), StorageError> {
    for step in steps {
        match step {
            StoreStep::CutDisagreeing(at) => {
                if log.last_index()? >= at.index {
                    let holds = log.get(at.index)?.is_some_and(|entry| entry.term == at.term);
                    if !holds {
                        let from = at.index.max(log.first_index()?);
                        tracing::info!(snapshot = %at, %from, "cutting the log entries an installed snapshot replaces");
                        log.truncate_suffix(from)?;
                    }
                }
            }
            StoreStep::CommitReceived { serial } => {
                let Some(sink) = sinks.remove(&serial) else {
                    return Err(StorageError::NotFound { what: format!("received snapshot {serial}") });
                };
                sink.commit()?;
            }
            StoreStep::Purge(upto) => log.purge_prefix(upto)?,
            StoreStep::Write(write) => {
                if write.truncate_from <= log.last_index()? {
                    log.truncate_suffix(write.truncate_from.max(LogIndex(1)))?;
                }
                if !write.entries.is_empty() {
                    log.append(&write.entries)?;
                }
            }
            StoreStep::HardState(state) => stable.set_hard_state(state)?,
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use bytes::Bytes;
    use raftkv_core::{Configuration, Entry, EntryPayload, LogId, PersistRequest, SnapshotMeta, Term};

    use super::*;
    use crate::storage::{MemLogStore, MemSnapshotStore, MemStableStore, SnapshotInfo};

    fn entry(index: u64, term: u64) -> Entry {
        Entry { index: LogIndex(index), term: Term(term), payload: EntryPayload::Command(Bytes::from("x")) }
    }

    /// A sink whose commit fails, as on a full or failing disk.
    struct FailingSink;

    impl std::io::Write for FailingSink {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    impl SnapshotSink for FailingSink {
        fn id(&self) -> &str {
            "failing"
        }
        fn commit(self: Box<Self>) -> Result<SnapshotInfo, StorageError> {
            Err(StorageError::io("commit", "snapshot", std::io::Error::other("no space left on device")))
        }
        fn cancel(self: Box<Self>) -> Result<(), StorageError> {
            Ok(())
        }
    }

    /// Entries 1..=5 of term 1 and 6..=10 of term 2, and the steps that
    /// install a snapshot (8, `term`) received as serial 1.
    fn install(term: u64) -> (Stores, SnapshotMeta, Vec<StoreStep>) {
        let log = MemLogStore::new();
        let entries: Vec<Entry> = (1..=10).map(|i| entry(i, if i <= 5 { 1 } else { 2 })).collect();
        log.append(&entries).unwrap();
        let stores = Stores {
            log: Arc::new(log),
            stable: Arc::new(MemStableStore::new()),
            snapshots: Arc::new(MemSnapshotStore::new(2)),
        };
        let meta = SnapshotMeta { last_log_id: LogId::new(Term(term), LogIndex(8)), config: Configuration::default() };
        let request = PersistRequest { seq: 1, hard_state: None, snapshot: Some(meta.clone()), log: None };
        let (steps, _) = StoreJob::merge(vec![StoreJob::of(request, Some(1))]);
        (stores, meta, steps)
    }

    /// A crash (here: a failed commit, after which nothing runs) between the
    /// steps of an install never leaves the disagreeing entries behind a
    /// stored snapshot, and never purges entries before one is stored.
    #[test]
    fn an_install_cuts_the_disagreeing_suffix_before_storing_and_purges_after() {
        let (stores, _, steps) = install(3);
        let mut sinks: BTreeMap<u64, Box<dyn SnapshotSink>> = BTreeMap::from([(1, Box::new(FailingSink) as _)]);
        assert!(run_steps(stores.log.as_ref(), stores.stable.as_ref(), steps, &mut sinks).is_err());
        assert!(stores.snapshots.list().unwrap().is_empty());
        assert_eq!(stores.log.first_index().unwrap(), LogIndex(1), "nothing purged behind an unstored snapshot");
        assert_eq!(stores.log.last_index().unwrap(), LogIndex(7), "entries from the snapshot's index on are cut");

        let (stores, meta, steps) = install(3);
        let mut sinks = BTreeMap::from([(1, stores.snapshots.create(meta.clone()).unwrap())]);
        run_steps(stores.log.as_ref(), stores.stable.as_ref(), steps, &mut sinks).unwrap();
        assert_eq!(stores.snapshots.list().unwrap()[0].meta, meta);
        assert_eq!(stores.log.first_index().unwrap(), LogIndex(9));
        assert_eq!(stores.log.last_index().unwrap(), LogIndex(8));
    }

    /// A log whose first append fails and whose later ones would succeed,
    /// counting the calls.
    struct FailsOnce {
        inner: MemLogStore,
        appends: std::sync::atomic::AtomicUsize,
    }

    impl LogStore for FailsOnce {
        fn first_index(&self) -> Result<LogIndex, StorageError> {
            self.inner.first_index()
        }
        fn last_index(&self) -> Result<LogIndex, StorageError> {
            self.inner.last_index()
        }
        fn get(&self, index: LogIndex) -> Result<Option<Entry>, StorageError> {
            self.inner.get(index)
        }
        fn get_range(&self, from: LogIndex, to: LogIndex) -> Result<Vec<Entry>, StorageError> {
            self.inner.get_range(from, to)
        }
        fn append(&self, entries: &[Entry]) -> Result<(), StorageError> {
            if self.appends.fetch_add(1, std::sync::atomic::Ordering::SeqCst) == 0 {
                return Err(StorageError::io("append", "log", std::io::Error::from_raw_os_error(5)));
            }
            self.inner.append(entries)
        }
        fn truncate_suffix(&self, from: LogIndex) -> Result<(), StorageError> {
            self.inner.truncate_suffix(from)
        }
        fn purge_prefix(&self, upto: LogIndex) -> Result<(), StorageError> {
            self.inner.purge_prefix(upto)
        }
    }

    fn append_job(seq: u64) -> WriterJob {
        let write = raftkv_core::LogWrite { truncate_from: LogIndex(1), entries: vec![entry(1, 1)] };
        let request = PersistRequest { seq, hard_state: None, snapshot: None, log: Some(write) };
        WriterJob { job: StoreJob::of(request, None), sinks: Vec::new() }
    }

    /// After a failed step the writer runs nothing more, reports nothing
    /// more, and keeps taking jobs (the raft loop's sends do not fail, so it
    /// learns the failure from the event) until the channel closes.
    #[test]
    fn after_a_failure_nothing_runs_and_the_channel_stays_open_until_closed() {
        let log = Arc::new(FailsOnce { inner: MemLogStore::new(), appends: Default::default() });
        let stores = Stores {
            log: log.clone(),
            stable: Arc::new(MemStableStore::new()),
            snapshots: Arc::new(MemSnapshotStore::new(2)),
        };
        let (jobs, jobs_rx) = std::sync::mpsc::channel();
        let (events_tx, mut events) = mpsc::unbounded_channel();
        let writer = std::thread::spawn(move || log_writer(stores, jobs_rx, events_tx));
        jobs.send(append_job(1)).unwrap();
        assert!(matches!(events.blocking_recv(), Some(WriterEvent::Failed(_))));
        for seq in 2..50 {
            jobs.send(append_job(seq)).expect("the writer takes jobs after a failure");
        }
        drop(jobs);
        writer.join().unwrap();
        assert_eq!(log.appends.load(std::sync::atomic::Ordering::SeqCst), 1, "a job after the failure ran");
        assert!(events.try_recv().is_err(), "an event after the failure");
    }

    /// A log that holds the snapshot's last entry keeps what follows it
    /// (figure 13, step 6).
    #[test]
    fn an_install_keeps_a_log_that_continues_the_snapshot() {
        let (stores, meta, steps) = install(2);
        let mut sinks = BTreeMap::from([(1, stores.snapshots.create(meta).unwrap())]);
        run_steps(stores.log.as_ref(), stores.stable.as_ref(), steps, &mut sinks).unwrap();
        assert_eq!(stores.log.first_index().unwrap(), LogIndex(9));
        assert_eq!(stores.log.last_index().unwrap(), LogIndex(10));
    }
}
