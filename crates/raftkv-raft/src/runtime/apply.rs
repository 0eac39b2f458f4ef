//! The apply task: owns the state machine. It applies committed batches,
//! answers the proposals they carry, restores installed snapshots, and
//! carries out the `Applier`'s decisions (reads released in order, captures
//! for snapshots). Restore steps in the log (`Raft::restore`) are gathered
//! and carried out by `restore.rs`; the state machine never sees them.

use std::sync::Arc;
use std::time::Instant;

use raftkv_core::LogIndex;
use raftkv_driver::{Applier, ApplyEffect, ApplyJob};
use tokio::sync::{mpsc, watch};

use crate::runtime::events::{millis_since, LoopEvent, Pending};
use crate::runtime::restore::{apply_entries, Outcome, Restores};
use crate::runtime::snapshots::restore;
use crate::state_machine::{SnapshotCheck, StateMachine};
use crate::storage::SnapshotStore;

pub(crate) struct ApplyTask {
    pub state_machine: Box<dyn StateMachine>,
    pub applier: Applier<Pending>,
    pub applied: watch::Sender<LogIndex>,
    pub events: mpsc::UnboundedSender<LoopEvent>,
    pub snapshots: Arc<dyn SnapshotStore>,
    pub start: Instant,
    /// The restore through the log being gathered, if any.
    pub restores: Restores,
    /// The state machine's check of snapshots, also run on restores.
    pub check: Option<SnapshotCheck>,
}

impl ApplyTask {
    pub(crate) async fn run(mut self, mut jobs: mpsc::UnboundedReceiver<ApplyJob<Pending>>) {
        self.applied.send_replace(self.applier.applied_index());
        let mut wake_at: Option<u64> = None;
        loop {
            let job = tokio::select! {
                job = jobs.recv() => match job {
                    Some(job) => Some(job),
                    None => break,
                },
                _ = sleep_until(self.start, wake_at) => None,
            };
            let now = millis_since(self.start);
            if let Some(job) = job {
                // A failed restore or a panicking state machine leaves a state
                // nothing may be applied to or read from: the node stops, and
                // the work queued behind is refused, never carried out.
                let handled = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| self.handle(job, now)));
                let failed = match handled {
                    Ok(Ok(())) => None,
                    Ok(Err(reason)) => Some(reason),
                    Err(_) => Some("the state machine panicked".to_string()),
                };
                if let Some(reason) = failed {
                    let _ = self.events.send(LoopEvent::Fatal(reason.clone()));
                    return refuse_all(jobs, &reason).await;
                }
            }
            wake_at = self.applier.poll(now);
            self.carry_out();
        }
    }

    fn handle(&mut self, job: ApplyJob<Pending>, now: u64) -> Result<(), String> {
        match job {
            ApplyJob::Batch { mut entries, replies } => {
                // Entries a restored snapshot already holds are not applied
                // again (a guard: the driver orders restores before later work).
                let applied = self.applier.applied_index();
                let stale = entries.iter().take_while(|e| e.index <= applied).count();
                if stale > 0 {
                    tracing::warn!(%applied, skipped = stale, "entries at or below the applied index skipped");
                    entries.drain(..stale);
                }
                let (replies, covered): (Vec<_>, Vec<_>) = replies.into_iter().partition(|(i, _)| *i > applied);
                for (_, reply) in covered {
                    // Applied through the snapshot: done, but its response is not known.
                    reply.fail(raftkv_driver::Failure::LeadershipLost);
                }
                let Some(last) = entries.last().map(|e| e.index) else { return Ok(()) };
                let first = entries[0].index;
                let restored_before = self.restores.restored();
                let mut outcomes =
                    apply_entries(self.state_machine.as_mut(), &mut self.restores, self.check.as_ref(), &entries)?;
                let bytes = entries.iter().map(|e| e.size_bytes() as u64).sum();
                self.applier.applied(last, bytes);
                if self.restores.restored() != restored_before {
                    self.applier.snapshot_soon();
                }
                self.applier.set_capture_held(self.restores.holds_captures());
                // Published before the answers, so that a caller answered
                // sees its index applied (`Raft::applied_index`).
                self.applied.send_replace(last);
                for (index, reply) in replies {
                    let outcome = outcomes.get_mut((index.0 - first.0) as usize).map(std::mem::take);
                    match outcome.unwrap_or_default() {
                        Outcome::Applied(response) => reply.applied(index, response),
                        Outcome::RestoreRefused(reason) => reply.restore_refused(index, reason),
                    }
                }
            }
            ApplyJob::Read { index, reply } => self.applier.read(index, reply),
            ApplyJob::Restore { meta } => {
                restore(self.state_machine.as_mut(), self.snapshots.as_ref(), &meta)?;
                self.restores.clear();
                self.applier.set_capture_held(false);
                let index = meta.last_log_id.index;
                self.applier.restored(index);
                self.applied.send_replace(index);
            }
            ApplyJob::SnapshotFinished { taken } => self.applier.snapshot_finished(taken, now),
            ApplyJob::Snapshot { reply } => self.applier.request_snapshot(reply),
            ApplyJob::Policy(policy) => self.applier.set_policy(policy, now),
        }
        Ok(())
    }

    fn carry_out(&mut self) {
        let effects: Vec<ApplyEffect<Pending>> = self.applier.drain().collect();
        for effect in effects {
            match effect {
                ApplyEffect::ReadReady { reply, index } => reply.read_at(index),
                ApplyEffect::Capture { index, waiters } => {
                    let started = Instant::now();
                    let source = self.state_machine.snapshot();
                    // The capture runs on the apply path: report how long applies paused.
                    tracing::info!(%index, pause = ?started.elapsed(), "state machine captured for a snapshot");
                    let _ = self.events.send(LoopEvent::SnapshotCaptured { index, source, waiters });
                }
                ApplyEffect::SnapshotTaken { reply, id } => reply.snapshot_taken(id),
                ApplyEffect::Fail { reply, failure } => reply.fail(failure),
            }
        }
    }
}

/// After the state machine failed: every caller still queued is told the
/// node failed, until the raft loop closes the channel.
async fn refuse_all(mut jobs: mpsc::UnboundedReceiver<ApplyJob<Pending>>, reason: &str) {
    while let Some(job) = jobs.recv().await {
        for (reply, failure) in job.refused(Some(reason)) {
            reply.fail(failure);
        }
    }
}

/// Sleeps until `at` (milliseconds since `start`), or forever without one.
async fn sleep_until(start: Instant, at: Option<u64>) {
    match at {
        Some(at) => tokio::time::sleep_until((start + std::time::Duration::from_millis(at)).into()).await,
        None => std::future::pending().await,
    }
}
