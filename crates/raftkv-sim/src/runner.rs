//! Runs many seeds on all cores and summarises them.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::Instant;

use serde::Serialize;

use crate::sim::{run_seed, Faults, Outcome, SimConfig};

#[derive(Clone, Debug)]
pub struct RunPlan {
    pub first_seed: u64,
    pub seeds: u64,
    pub nodes: usize,
    pub faults: Faults,
    pub faults_text: String,
    pub threads: usize,
    /// Name of a deliberate bug to turn on (bug-injection builds only).
    pub bug: Option<String>,
}

#[derive(Clone, Debug, Serialize)]
pub struct Summary {
    pub seeds: u64,
    pub first_seed: u64,
    pub nodes: usize,
    pub faults: String,
    pub violations: u64,
    pub liveness_failures: u64,
    pub ops: u64,
    pub completed_ops: u64,
    pub elections: u64,
    pub snapshots_installed: u64,
    pub membership_changes: u64,
    /// `add_voter` calls, committed promotions of staging learners, those
    /// by another leader than the one that staged, and staged adds removed
    /// at their deadline (`Outcome`'s counters, summed).
    pub staged_adds: u64,
    pub promotions: u64,
    pub handoff_promotions: u64,
    pub staged_timeouts: u64,
    pub elapsed_ms: u64,
    pub seeds_per_sec: f64,
    pub failing_seeds: Vec<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub bug: Option<String>,
    /// The first seed that failed, when any did.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub first_failure: Option<u64>,
}

/// Counters summed over the seeds run.
#[derive(Default)]
struct Totals {
    seeds: u64,
    ops: u64,
    completed_ops: u64,
    elections: u64,
    snapshots_installed: u64,
    membership_changes: u64,
    staged_adds: u64,
    promotions: u64,
    handoff_promotions: u64,
    staged_timeouts: u64,
}

impl Totals {
    fn add(&mut self, outcome: &Outcome) {
        self.seeds += 1;
        self.ops += outcome.ops as u64;
        self.completed_ops += outcome.completed_ops as u64;
        self.elections += outcome.elections as u64;
        self.snapshots_installed += outcome.snapshots_installed as u64;
        self.membership_changes += outcome.membership_changes as u64;
        self.staged_adds += outcome.staged_adds as u64;
        self.promotions += outcome.promotions as u64;
        self.handoff_promotions += outcome.handoff_promotions as u64;
        self.staged_timeouts += outcome.staged_timeouts as u64;
    }
}

/// Runs `plan` and returns the summary and the outcomes of failing seeds, in seed order.
pub fn run_plan(plan: &RunPlan, stop_at_first_failure: bool) -> (Summary, Vec<Outcome>) {
    let started = Instant::now();
    let next = AtomicU64::new(plan.first_seed);
    let end = plan.first_seed + plan.seeds;
    let stop = AtomicU64::new(u64::MAX);
    let results: Mutex<Vec<Outcome>> = Mutex::new(Vec::new());
    let totals = Mutex::new(Totals::default());
    std::thread::scope(|scope| {
        for _ in 0..plan.threads.max(1) {
            scope.spawn(|| {
                #[cfg(feature = "bug-injection")]
                raftkv_core::bugs::set_active(plan.bug.as_deref().and_then(raftkv_core::bugs::InjectedBug::from_name));
                loop {
                    let seed = next.fetch_add(1, Ordering::Relaxed);
                    if seed >= end || seed > stop.load(Ordering::Relaxed) {
                        break;
                    }
                    let outcome = run_seed(SimConfig::new(seed, plan.nodes, plan.faults));
                    if let Ok(mut t) = totals.lock() {
                        t.add(&outcome);
                    }
                    if outcome.failed() {
                        if stop_at_first_failure {
                            stop.fetch_min(seed, Ordering::Relaxed);
                        }
                        if let Ok(mut r) = results.lock() {
                            r.push(outcome);
                        }
                    }
                }
            });
        }
    });
    let mut failures = results.into_inner().unwrap_or_default();
    failures.sort_by_key(|o| o.seed);
    if stop_at_first_failure {
        failures.truncate(1);
    }
    let t = totals.into_inner().unwrap_or_default();
    let elapsed = started.elapsed();
    let summary = Summary {
        seeds: t.seeds,
        first_seed: plan.first_seed,
        nodes: plan.nodes,
        faults: plan.faults_text.clone(),
        violations: failures.iter().filter(|o| !o.violations.is_empty()).count() as u64,
        liveness_failures: failures.iter().filter(|o| o.violations.is_empty() && o.liveness_failure.is_some()).count()
            as u64,
        ops: t.ops,
        completed_ops: t.completed_ops,
        elections: t.elections,
        snapshots_installed: t.snapshots_installed,
        membership_changes: t.membership_changes,
        staged_adds: t.staged_adds,
        promotions: t.promotions,
        handoff_promotions: t.handoff_promotions,
        staged_timeouts: t.staged_timeouts,
        elapsed_ms: elapsed.as_millis() as u64,
        seeds_per_sec: t.seeds as f64 / elapsed.as_secs_f64().max(1e-9),
        failing_seeds: failures.iter().map(|o| o.seed).collect(),
        bug: plan.bug.clone(),
        first_failure: failures.first().map(|o| o.seed),
    };
    (summary, failures)
}
