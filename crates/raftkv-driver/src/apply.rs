//! The apply side's decisions: when a read may be answered, and when the state
//! machine's state is captured for a snapshot.

use std::collections::VecDeque;

use raftkv_core::rng::Rng;
use raftkv_core::{LogId, LogIndex, Millis};

use crate::failure::Failure;

/// When snapshots are taken on their own.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SnapshotPolicy {
    /// Entries applied since the last snapshot before another is due.
    pub threshold: u64,
    /// At most one automatic snapshot per interval (jittered by up to a quarter).
    pub interval_ms: u64,
    /// Entry bytes applied since the last snapshot that force one at once,
    /// whatever the count and the timer say: the core holds that log in memory.
    pub log_bytes: u64,
}

/// What the apply side must do next.
#[derive(Debug, PartialEq, Eq)]
pub enum ApplyEffect<R> {
    /// The state machine has applied `index`: answer the read.
    ReadReady {
        /// The reader to answer.
        reply: R,
        /// The read index, now applied.
        index: LogIndex,
    },
    /// Capture the state machine's state after `index` for a snapshot; the
    /// `waiters` asked for one and are answered once it is written.
    Capture {
        /// The applied index the captured state reflects.
        index: LogIndex,
        /// Callers of `request_snapshot` waiting for this capture.
        waiters: Vec<R>,
    },
    /// A snapshot covering the waiter's state was stored.
    SnapshotTaken {
        /// The caller to answer.
        reply: R,
        /// The stored snapshot, by its last included entry.
        id: LogId,
    },
    /// Answer the caller with `failure` (a snapshot asked for when nothing was
    /// applied since the last one).
    Fail {
        /// The caller to answer.
        reply: R,
        /// Why it failed.
        failure: Failure,
    },
}

/// The apply side's bookkeeping. The executor applies entries and restores
/// snapshots into the state machine, tells the applier, and carries out the
/// effects it returns.
pub struct Applier<R> {
    policy: SnapshotPolicy,
    applied: LogIndex,
    /// Reads waiting for the state machine to reach their index, in order.
    waiting: VecDeque<(LogIndex, R)>,
    /// Applied index at the last capture (or restore).
    last: LogIndex,
    /// Entry bytes applied since the last capture (or restore).
    bytes_since: u64,
    /// Index of the newest snapshot stored (or restored).
    covered: LogIndex,
    /// A capture is being written.
    running: bool,
    /// No capture for now (`set_capture_held`).
    held: bool,
    /// A capture is due as soon as allowed (`snapshot_soon`).
    soon: bool,
    /// No automatic snapshot before this.
    not_before: Millis,
    waiters: Vec<R>,
    rng: Rng,
    effects: Vec<ApplyEffect<R>>,
}

impl<R> Applier<R> {
    /// An applier whose state machine holds the snapshot at `start` (or nothing).
    pub fn new(start: LogIndex, policy: SnapshotPolicy, seed: u64, now: Millis) -> Applier<R> {
        let mut applier = Applier {
            policy,
            applied: start,
            waiting: VecDeque::new(),
            last: start,
            bytes_since: 0,
            covered: start,
            running: false,
            held: false,
            soon: false,
            not_before: now,
            waiters: Vec::new(),
            rng: Rng::new(seed ^ 0x5eed_5a95),
            effects: Vec::new(),
        };
        applier.schedule_next(now);
        applier
    }

    /// The highest index the state machine has applied (or restored).
    pub fn applied_index(&self) -> LogIndex {
        self.applied
    }

    /// Takes the effects produced so far, in order, for the executor to carry
    /// out.
    pub fn drain(&mut self) -> std::vec::Drain<'_, ApplyEffect<R>> {
        self.effects.drain(..)
    }

    /// Entries up to `last`, of `bytes` in all, were applied.
    pub fn applied(&mut self, last: LogIndex, bytes: u64) {
        self.applied = self.applied.max(last);
        self.bytes_since = self.bytes_since.saturating_add(bytes);
        self.release_reads();
    }

    /// The state machine now holds an installed snapshot up to `index`.
    pub fn restored(&mut self, index: LogIndex) {
        self.applied = index;
        self.last = index;
        self.bytes_since = 0;
        self.covered = index;
        self.soon = false;
        self.release_reads();
    }

    /// While `held`, no capture starts, automatic or asked for (callers of
    /// `request_snapshot` wait): the executor holds captures while a state it
    /// could not rebuild from a snapshot is being gathered (a restore through
    /// the log that is open).
    pub fn set_capture_held(&mut self, held: bool) {
        self.held = held;
    }

    /// The state changed wholesale (a restore through the log): capture a
    /// snapshot as soon as captures are allowed, whatever the count and the
    /// timer say, so that the log behind it can go and lagging followers get
    /// the new state by InstallSnapshot.
    pub fn snapshot_soon(&mut self) {
        self.soon = true;
    }

    /// A read confirmed at `index`, answered once the state machine reached it.
    pub fn read(&mut self, index: LogIndex, reply: R) {
        if index <= self.applied {
            self.effects.push(ApplyEffect::ReadReady { reply, index });
        } else {
            self.waiting.push_back((index, reply));
        }
    }

    fn release_reads(&mut self) {
        let applied = self.applied;
        let (ready, still): (VecDeque<_>, VecDeque<_>) = self.waiting.drain(..).partition(|(i, _)| *i <= applied);
        self.waiting = still;
        for (index, reply) in ready {
            self.effects.push(ApplyEffect::ReadReady { reply, index });
        }
    }

    /// A caller wants a snapshot now (`Raft::snapshot`).
    pub fn request_snapshot(&mut self, reply: R) {
        self.waiters.push(reply);
    }

    /// The capture asked for last was written (`taken`) or failed.
    pub fn snapshot_finished(&mut self, taken: Option<LogId>, now: Millis) {
        self.running = false;
        self.schedule_next(now);
        match taken {
            Some(id) => self.covered = self.covered.max(id.index),
            // Failed: the log since the last good snapshot still counts.
            None => self.last = self.covered,
        }
        // Callers that asked while it was written get it if it covers their state.
        if let Some(id) = taken.filter(|id| id.index >= self.applied) {
            for reply in self.waiters.drain(..) {
                self.effects.push(ApplyEffect::SnapshotTaken { reply, id });
            }
        }
    }

    /// Replaces the snapshot policy (a reloaded configuration); a new interval
    /// restarts the timer from `now`.
    pub fn set_policy(&mut self, policy: SnapshotPolicy, now: Millis) {
        let interval_changed = policy.interval_ms != self.policy.interval_ms;
        self.policy = policy;
        if interval_changed {
            self.schedule_next(now);
        }
    }

    fn schedule_next(&mut self, now: Millis) {
        let interval = self.policy.interval_ms;
        let jitter = self.rng.range(0, interval / 4 + 1);
        self.not_before = now.saturating_add(interval).saturating_add(jitter);
    }

    /// Captures a snapshot if one is due or wanted; returns when to look again.
    pub fn poll(&mut self, now: Millis) -> Option<Millis> {
        if self.running || self.held {
            return None;
        }
        if !self.waiters.is_empty() {
            if self.applied > self.last {
                self.capture();
            } else {
                let index = self.last;
                for reply in self.waiters.drain(..) {
                    self.effects.push(ApplyEffect::Fail { reply, failure: Failure::NothingNewToSnapshot { index } });
                }
            }
            return None;
        }
        if self.applied <= self.last {
            return None;
        }
        if self.soon {
            self.soon = false;
            self.capture();
            return None;
        }
        if self.bytes_since >= self.policy.log_bytes.max(1) {
            self.capture();
            return None;
        }
        if self.applied.0 - self.last.0 < self.policy.threshold.max(1) {
            return None;
        }
        if now >= self.not_before {
            self.capture();
            None
        } else {
            Some(self.not_before)
        }
    }

    fn capture(&mut self) {
        self.running = true;
        self.last = self.applied;
        self.bytes_since = 0;
        let waiters = std::mem::take(&mut self.waiters);
        self.effects.push(ApplyEffect::Capture { index: self.applied, waiters });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use raftkv_core::Term;

    fn policy() -> SnapshotPolicy {
        SnapshotPolicy { threshold: 10, interval_ms: 100, log_bytes: 1000 }
    }

    #[test]
    fn reads_wait_for_their_index_and_leave_in_order() {
        let mut applier: Applier<u32> = Applier::new(LogIndex(5), policy(), 1, 0);
        applier.read(LogIndex(4), 1);
        applier.read(LogIndex(8), 2);
        applier.read(LogIndex(7), 3);
        assert_eq!(applier.drain().collect::<Vec<_>>(), vec![ApplyEffect::ReadReady { reply: 1, index: LogIndex(4) }]);
        applier.applied(LogIndex(7), 10);
        assert_eq!(applier.drain().collect::<Vec<_>>(), vec![ApplyEffect::ReadReady { reply: 3, index: LogIndex(7) }]);
        applier.restored(LogIndex(20));
        assert_eq!(applier.drain().collect::<Vec<_>>(), vec![ApplyEffect::ReadReady { reply: 2, index: LogIndex(8) }]);
    }

    #[test]
    fn captures_by_count_after_the_interval_and_by_bytes_at_once() {
        let mut applier: Applier<u32> = Applier::new(LogIndex(0), policy(), 1, 0);
        applier.applied(LogIndex(10), 10);
        let wake = applier.poll(1).expect("due by count, but not before the interval");
        assert!(wake >= 100);
        assert_eq!(applier.poll(wake), None);
        assert!(matches!(applier.drain().next(), Some(ApplyEffect::Capture { index: LogIndex(10), .. })));
        // One capture at a time.
        applier.applied(LogIndex(11), 5000);
        assert_eq!(applier.poll(wake), None);
        assert!(applier.drain().next().is_none());
        applier.snapshot_finished(Some(LogId::new(Term(1), LogIndex(10))), wake);
        assert_eq!(applier.poll(wake), None);
        assert!(matches!(applier.drain().next(), Some(ApplyEffect::Capture { index: LogIndex(11), .. })));
    }

    #[test]
    fn held_captures_wait_and_a_soon_snapshot_skips_the_count_and_timer() {
        let mut applier: Applier<u32> = Applier::new(LogIndex(0), policy(), 1, 0);
        applier.set_capture_held(true);
        applier.applied(LogIndex(50), 5000);
        applier.request_snapshot(9);
        assert_eq!(applier.poll(1_000), None);
        assert!(applier.drain().next().is_none());
        applier.set_capture_held(false);
        assert_eq!(applier.poll(1_000), None);
        assert!(matches!(applier.drain().next(), Some(ApplyEffect::Capture { index: LogIndex(50), .. })));
        applier.snapshot_finished(Some(LogId::new(Term(1), LogIndex(50))), 1_000);
        applier.drain().for_each(drop);
        // One entry, far below the count, before the interval: captured at once.
        applier.applied(LogIndex(51), 1);
        applier.snapshot_soon();
        assert_eq!(applier.poll(1_001), None);
        assert!(matches!(applier.drain().next(), Some(ApplyEffect::Capture { index: LogIndex(51), .. })));
    }

    #[test]
    fn a_wanted_snapshot_with_nothing_new_is_refused() {
        let mut applier: Applier<u32> = Applier::new(LogIndex(3), policy(), 1, 0);
        applier.request_snapshot(9);
        applier.poll(0);
        let refused = ApplyEffect::Fail { reply: 9, failure: Failure::NothingNewToSnapshot { index: LogIndex(3) } };
        assert_eq!(applier.drain().collect::<Vec<_>>(), vec![refused]);
    }
}
