//! Leader-side replication progress, one entry per peer (etcd's `tracker`).
//! Knows nothing about the network; `Core` turns decisions into actions.

use std::collections::VecDeque;

use crate::types::{LogIndex, Millis, SnapshotMeta};

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ProgressState {
    /// The leader does not know where the follower's log matches: one append at a
    /// time, waiting for its answer (or the next heartbeat) before sending again.
    Probe { paused: bool },
    /// The follower's log is known to match: appends stream optimistically, up to
    /// `max_inflight` unacknowledged messages.
    Replicate,
    /// The follower needs entries the leader compacted: a snapshot is streamed one
    /// chunk at a time; `offset` is the next byte the follower expects.
    Snapshot { meta: SnapshotMeta, offset: u64, chunk_in_flight: bool },
}

#[derive(Clone, Debug)]
pub struct Progress {
    /// Highest index known to match the leader's log (figure 2 `matchIndex`).
    pub match_index: LogIndex,
    /// Next index to send (figure 2 `nextIndex`).
    pub next_index: LogIndex,
    pub state: ProgressState,
    /// Last index of each append in flight, oldest first (Replicate only).
    pub inflight: VecDeque<LogIndex>,
    /// Heard from since the last CheckQuorum round.
    pub recent_active: bool,
    /// Highest heartbeat round this peer acknowledged in the current term.
    pub acked_round: u64,
    /// When `match_index` last advanced or a snapshot chunk was acknowledged; used
    /// to fall back to probing when replication stalls on lost messages.
    pub last_progress_at: Millis,
    /// When the peer last answered this leader (any append or snapshot
    /// answer of this term); `None` until it has.
    pub last_contact_at: Option<Millis>,
    /// A staging learner only: since when it has been caught up without a
    /// break, as this leader's ticks saw it (`Core::tick_promotions`).
    pub caught_up_since: Option<Millis>,
}

impl Progress {
    pub fn new(next_index: LogIndex, now: Millis) -> Progress {
        Progress {
            match_index: LogIndex::ZERO,
            next_index,
            state: ProgressState::Probe { paused: false },
            inflight: VecDeque::new(),
            recent_active: false,
            acked_round: 0,
            last_progress_at: now,
            last_contact_at: None,
            caught_up_since: None,
        }
    }

    pub fn become_probe(&mut self) {
        self.state = ProgressState::Probe { paused: false };
        self.next_index = self.match_index.next();
        self.inflight.clear();
    }

    pub fn become_replicate(&mut self) {
        self.state = ProgressState::Replicate;
        self.next_index = self.match_index.next();
        self.inflight.clear();
    }

    /// Records a successful append through `index`. Returns whether it was news.
    pub fn maybe_update(&mut self, index: LogIndex, now: Millis) -> bool {
        let mut updated = false;
        if index > self.match_index {
            self.match_index = index;
            self.last_progress_at = now;
            updated = true;
        }
        if self.next_index <= index {
            self.next_index = index.next();
        }
        while self.inflight.front().is_some_and(|last| *last <= index) {
            self.inflight.pop_front();
        }
        updated
    }

    /// Handles a rejection of the append whose previous index was `rejected`;
    /// `probe_next` is where the conflict hint says to try next. Returns false
    /// when the rejection is stale (a reordered or duplicated response).
    pub fn maybe_decrease_to(&mut self, rejected: LogIndex, probe_next: LogIndex) -> bool {
        match self.state {
            ProgressState::Replicate => {
                if rejected <= self.match_index {
                    return false;
                }
                self.become_probe();
                true
            }
            ProgressState::Probe { .. } => {
                if self.next_index.prev() != rejected {
                    return false;
                }
                self.next_index = probe_next.min(rejected).max(self.match_index.next());
                self.state = ProgressState::Probe { paused: false };
                true
            }
            ProgressState::Snapshot { .. } => false,
        }
    }

    pub fn can_send_append(&self, max_inflight: usize) -> bool {
        match self.state {
            ProgressState::Probe { paused } => !paused,
            ProgressState::Replicate => self.inflight.len() < max_inflight,
            ProgressState::Snapshot { .. } => false,
        }
    }

    /// Records that an append ending at `last` was sent.
    pub fn sent_append(&mut self, last: LogIndex, entries: usize) {
        match &mut self.state {
            ProgressState::Replicate => {
                if entries > 0 {
                    self.next_index = last.next();
                    self.inflight.push_back(last);
                }
            }
            ProgressState::Probe { paused } => *paused = true,
            ProgressState::Snapshot { .. } => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stale_rejections_are_ignored() {
        let mut progress = Progress::new(LogIndex(10), 0);
        progress.maybe_update(LogIndex(5), 0);
        progress.become_replicate();
        progress.sent_append(LogIndex(8), 3);
        // A rejection at or below the match index is from an old exchange.
        assert!(!progress.maybe_decrease_to(LogIndex(5), LogIndex(3)));
        assert_eq!(progress.state, ProgressState::Replicate);
        assert!(progress.maybe_decrease_to(LogIndex(7), LogIndex(6)));
        assert_eq!(progress.next_index, LogIndex(6));
    }

    #[test]
    fn probe_never_goes_below_match() {
        let mut progress = Progress::new(LogIndex(10), 0);
        progress.maybe_update(LogIndex(4), 0);
        progress.become_probe();
        progress.next_index = LogIndex(9);
        assert!(progress.maybe_decrease_to(LogIndex(8), LogIndex(1)));
        assert_eq!(progress.next_index, LogIndex(5));
    }

    #[test]
    fn acknowledgements_free_the_window() {
        let mut progress = Progress::new(LogIndex(1), 0);
        progress.become_replicate();
        for last in [3, 6, 9] {
            progress.sent_append(LogIndex(last), 3);
        }
        assert!(!progress.can_send_append(3));
        progress.maybe_update(LogIndex(6), 1);
        assert_eq!(progress.inflight.len(), 1);
        assert!(progress.can_send_append(3));
    }
}
