//! What this node has served and seen, for the dashboard (`/ui`): how many
//! reads and writes its API answered and how long they took (counters and a
//! fixed latency histogram, cumulative since start, so a viewer takes rates
//! from two readings and nodes' readings add up), and the recent leadership
//! changes as this node saw them. Recording is a few relaxed atomic adds per
//! request, kept whether or not Prometheus metrics are on. Every member
//! reports its own through the internal `ClusterInfo` RPC.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::Duration;

/// Upper bounds of the latency buckets, in microseconds; one more bucket
/// takes everything above the last.
pub const BUCKET_BOUNDS_US: [u64; 14] =
    [100, 200, 500, 1_000, 2_000, 5_000, 10_000, 20_000, 50_000, 100_000, 200_000, 500_000, 1_000_000, 5_000_000];
/// How many latency buckets a reading has.
pub const BUCKETS: usize = BUCKET_BOUNDS_US.len() + 1;

/// How many leadership changes are kept.
const KEPT_EVENTS: usize = 32;

/// Which kind of request an answer was.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Op {
    Read,
    Write,
}

#[derive(Default)]
struct Counters {
    /// Answered with success.
    done: AtomicU64,
    /// Answered with an error (refused, failed or unknown).
    failed: AtomicU64,
    micros: AtomicU64,
    buckets: [AtomicU64; BUCKETS],
}

/// One kind of request's counters as read at one moment.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Reading {
    pub done: u64,
    pub failed: u64,
    /// Every answer's latency, summed.
    pub micros: u64,
    /// Answers per latency bucket (`BUCKET_BOUNDS_US`, then the rest).
    pub buckets: Vec<u64>,
}

impl Counters {
    fn record(&self, succeeded: bool, elapsed: Duration) {
        let micros = u64::try_from(elapsed.as_micros()).unwrap_or(u64::MAX);
        let counter = if succeeded { &self.done } else { &self.failed };
        counter.fetch_add(1, Ordering::Relaxed);
        self.micros.fetch_add(micros, Ordering::Relaxed);
        let bucket = BUCKET_BOUNDS_US.iter().position(|bound| micros <= *bound).unwrap_or(BUCKETS - 1);
        self.buckets[bucket].fetch_add(1, Ordering::Relaxed);
    }

    fn read(&self) -> Reading {
        Reading {
            done: self.done.load(Ordering::Relaxed),
            failed: self.failed.load(Ordering::Relaxed),
            micros: self.micros.load(Ordering::Relaxed),
            buckets: self.buckets.iter().map(|b| b.load(Ordering::Relaxed)).collect(),
        }
    }
}

/// A leadership change this node saw: from `LeaderChanged` observations.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LeaderEvent {
    pub unix_ms: u64,
    pub term: u64,
    /// `None`: no leader known in `term` (an election is under way).
    pub leader: Option<u64>,
}

#[derive(Default)]
pub struct Activity {
    reads: Counters,
    writes: Counters,
    leaders: Mutex<VecDeque<LeaderEvent>>,
}

impl Activity {
    pub fn record(&self, op: Op, succeeded: bool, elapsed: Duration) {
        match op {
            Op::Read => self.reads.record(succeeded, elapsed),
            Op::Write => self.writes.record(succeeded, elapsed),
        }
    }

    pub fn reads(&self) -> Reading {
        self.reads.read()
    }

    pub fn writes(&self) -> Reading {
        self.writes.read()
    }

    pub fn leader_changed(&self, event: LeaderEvent) {
        let mut leaders = self.leaders.lock().unwrap_or_else(|p| p.into_inner());
        if leaders.len() == KEPT_EVENTS {
            leaders.pop_front();
        }
        leaders.push_back(event);
    }

    /// The kept leadership changes, oldest first.
    pub fn leader_events(&self) -> Vec<LeaderEvent> {
        self.leaders.lock().unwrap_or_else(|p| p.into_inner()).iter().cloned().collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn answers_land_in_their_kind_and_latency_bucket() {
        let activity = Activity::default();
        activity.record(Op::Write, true, Duration::from_micros(100));
        activity.record(Op::Write, true, Duration::from_micros(101));
        activity.record(Op::Write, false, Duration::from_secs(60));
        activity.record(Op::Read, true, Duration::ZERO);
        let writes = activity.writes();
        assert_eq!((writes.done, writes.failed, writes.micros), (2, 1, 60_000_201));
        assert_eq!((writes.buckets[0], writes.buckets[1], writes.buckets[BUCKETS - 1]), (1, 1, 1));
        assert_eq!(writes.buckets.iter().sum::<u64>(), 3);
        assert_eq!((activity.reads().done, activity.reads().buckets[0]), (1, 1));
    }

    #[test]
    fn only_the_latest_leadership_changes_are_kept() {
        let activity = Activity::default();
        for term in 0..100 {
            activity.leader_changed(LeaderEvent { unix_ms: term, term, leader: Some(term % 3) });
        }
        let events = activity.leader_events();
        assert_eq!(events.len(), KEPT_EVENTS);
        assert_eq!((events[0].term, events[KEPT_EVENTS - 1].term), (100 - KEPT_EVENTS as u64, 99));
    }
}
