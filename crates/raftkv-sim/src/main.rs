//! `raftkv-sim`: run many seeded simulations of a Raft cluster under faults.
//!
//! Prints one JSON summary as the last line with `--json`; exits non-zero on any
//! violation or liveness failure and prints the command that replays it.

use std::process::ExitCode;

use clap::Parser;
use raftkv_sim::runner::{run_plan, RunPlan};
use raftkv_sim::{Faults, SimConfig, Simulation};

#[derive(Parser, Debug)]
#[command(name = "raftkv-sim", about = "Deterministic fault simulation of raftkv-core")]
struct Args {
    /// Number of seeds to run.
    #[arg(long, default_value_t = 1000)]
    seeds: u64,
    /// Run only this seed, printing a readable trace with --trace.
    #[arg(long)]
    seed: Option<u64>,
    /// First seed of the range.
    #[arg(long, default_value_t = 1)]
    first_seed: u64,
    /// Cluster size.
    #[arg(long, default_value_t = 5)]
    nodes: usize,
    /// all, none, or a list: network,partitions,crashes,clock-drift,membership,snapshots,transfers
    #[arg(long, default_value = "all")]
    faults: String,
    /// Print the event trace of a single seed (with --seed).
    #[arg(long)]
    trace: bool,
    /// Print a JSON summary as the last line.
    #[arg(long)]
    json: bool,
    /// Worker threads (default: available cores).
    #[arg(long)]
    threads: Option<usize>,
    /// Turn on a deliberate bug (needs --features bug-injection) to show it is caught.
    #[arg(long)]
    bug: Option<String>,
}

fn main() -> ExitCode {
    let args = Args::parse();
    let faults = match Faults::parse(&args.faults) {
        Ok(faults) => faults,
        Err(error) => {
            eprintln!("error: {error}");
            return ExitCode::from(2);
        }
    };
    if args.nodes == 0 || args.nodes > 9 {
        eprintln!("error: --nodes must be between 1 and 9, got {}", args.nodes);
        return ExitCode::from(2);
    }
    if let Some(bug) = &args.bug {
        #[cfg(feature = "bug-injection")]
        {
            let Some(found) = raftkv_core::bugs::InjectedBug::from_name(bug) else {
                let names: Vec<_> = raftkv_core::bugs::InjectedBug::ALL.iter().map(|b| b.name()).collect();
                eprintln!("error: unknown bug {bug:?}; known: {}", names.join(", "));
                return ExitCode::from(2);
            };
            raftkv_core::bugs::set_active(Some(found));
        }
        #[cfg(not(feature = "bug-injection"))]
        {
            eprintln!("error: --bug {bug} needs a build with --features bug-injection");
            return ExitCode::from(2);
        }
    }
    let bug_flag = args.bug.as_ref().map(|b| format!(" --features bug-injection -- --bug {b}")).unwrap_or_default();
    let replay = |seed: u64| {
        let separator = if bug_flag.is_empty() { " --" } else { "" };
        format!(
            "cargo run --release -p raftkv-sim{bug_flag}{separator} --seed {seed} --nodes {} --faults {} --trace",
            args.nodes, args.faults
        )
    };

    if let Some(seed) = args.seed {
        let mut cfg = SimConfig::new(seed, args.nodes, faults);
        cfg.trace = args.trace;
        let outcome = Simulation::new(cfg).run();
        println!(
            "seed {seed}: {} ops ({} completed), committed index {}, {} elections, {} snapshot installs, {} membership \
             changes, {} staged adds, {} promotions ({} by another leader), {} staged adds removed at their deadline",
            outcome.ops,
            outcome.completed_ops,
            outcome.committed_index,
            outcome.elections,
            outcome.snapshots_installed,
            outcome.membership_changes,
            outcome.staged_adds,
            outcome.promotions,
            outcome.handoff_promotions,
            outcome.staged_timeouts
        );
        for violation in &outcome.violations {
            println!("VIOLATION {violation}");
        }
        if let Some(failure) = &outcome.liveness_failure {
            println!("LIVENESS {failure}");
        }
        if outcome.failed() {
            if !args.trace {
                println!("replay: {}", replay(seed));
            }
            return ExitCode::FAILURE;
        }
        return ExitCode::SUCCESS;
    }

    let threads = args.threads.unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()));
    let plan = RunPlan {
        first_seed: args.first_seed,
        seeds: args.seeds,
        nodes: args.nodes,
        faults,
        faults_text: args.faults.clone(),
        threads,
        bug: args.bug.clone(),
    };
    let (summary, failures) = run_plan(&plan, args.bug.is_some());
    for outcome in &failures {
        println!("seed {} FAILED", outcome.seed);
        for violation in outcome.violations.iter().take(3) {
            println!("  VIOLATION {violation}");
        }
        if let Some(failure) = &outcome.liveness_failure {
            println!("  LIVENESS {failure}");
        }
    }
    if let Some(first) = failures.first() {
        println!("replay the first failure: {}", replay(first.seed));
    }
    #[cfg(feature = "bug-injection")]
    if args.bug.is_some() {
        eprintln!("bug triggered {} times", raftkv_core::bugs::TRIGGERED.load(std::sync::atomic::Ordering::Relaxed));
    }
    if args.json {
        match serde_json::to_string(&summary) {
            Ok(line) => println!("{line}"),
            Err(error) => eprintln!("error: cannot encode summary: {error}"),
        }
    } else {
        println!(
            "{} seeds, {} violations, {} liveness failures, {} ops, {} staged adds, {} promotions ({} by another \
             leader), {} removed at their deadline, {:.1} seeds/s",
            summary.seeds,
            summary.violations,
            summary.liveness_failures,
            summary.ops,
            summary.staged_adds,
            summary.promotions,
            summary.handoff_promotions,
            summary.staged_timeouts,
            summary.seeds_per_sec
        );
    }
    if failures.is_empty() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}
