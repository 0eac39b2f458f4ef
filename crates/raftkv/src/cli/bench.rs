//! `raftkv bench`: a closed-loop load against raftkv or etcd.

use std::time::Duration;

use crate::bench::{self, BenchConfig, Stop, System};
use crate::cli::args::{BenchArgs, BenchSystem};
use crate::cli::client::{Cluster, Deadline};
use crate::cli::globals::Globals;

/// Exits 1, with the reason, if a raftkv target cannot be reached before the
/// run (nothing is run then) or no request at all succeeded.
pub async fn run(args: BenchArgs, globals: &Globals) -> i32 {
    let config = BenchConfig {
        system: match args.system {
            BenchSystem::Raftkv => System::Raftkv,
            BenchSystem::Etcd => System::Etcd,
        },
        targets: args.target,
        security: args.security.security(),
        clients: args.clients,
        stop: match args.requests {
            Some(n) => Stop::Requests(n),
            None => Stop::After(Duration::from_secs_f64(args.duration.max(0.1))),
        },
        keys: args.keys,
        value_size: args.value_size,
        mix: args.mix,
        consistency: args.consistency.as_str().to_string(),
        progress: !args.json && std::io::IsTerminal::is_terminal(&std::io::stderr()),
    };
    if config.system == System::Raftkv {
        if let Err(reason) = reachable(&config, globals).await {
            eprintln!("raftkv bench: {reason}; nothing was run");
            return 1;
        }
    }
    match bench::run(&config).await {
        Ok(result) => {
            let summary = result.to_json(&config);
            if !args.json {
                println!(
                    "{} clients: {} ops/s ({} ops, {} errors), latency p50 {} ms, p90 {} ms, p99 {} ms, p99.9 {} ms, max {} ms",
                    config.clients,
                    summary["ops_per_s"],
                    summary["ops"],
                    summary["errors"],
                    summary["p50_ms"],
                    summary["p90_ms"],
                    summary["p99_ms"],
                    summary["p999_ms"],
                    summary["max_ms"]
                );
            }
            println!("{summary}");
            if result.ops == 0 {
                eprintln!(
                    "raftkv bench: no request succeeded ({} errors, by HTTP status, 0 for no answer: {})",
                    result.errors, summary["error_statuses"]
                );
                return 1;
            }
            0
        }
        Err(error) => {
            eprintln!("raftkv bench: {error}");
            1
        }
    }
}

/// Whether every raftkv target answers its health probe (GET /v1/health).
async fn reachable(config: &BenchConfig, globals: &Globals) -> Result<(), String> {
    let deadline = Deadline::new(globals.timeout(), Duration::from_secs(5));
    let cluster = Cluster::new(&config.targets, &config.security, deadline)?;
    let mut failures = Vec::new();
    for (target, answer) in cluster.each("/v1/health").await {
        match answer {
            Ok(answer) if answer.status.is_success() => {}
            Ok(answer) => failures.push(format!("{target}: {}", answer.error().message())),
            Err(reason) => failures.push(format!("{target}: {reason}")),
        }
    }
    if failures.is_empty() {
        Ok(())
    } else {
        Err(format!("cannot reach every --target: {}", failures.join("; ")))
    }
}
