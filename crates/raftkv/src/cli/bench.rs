//! `raftkv bench`: a closed-loop load against raftkv or etcd.

use std::time::Duration;

use crate::bench::{self, BenchConfig, Stop, System};
use crate::cli::args::{BenchArgs, BenchSystem};

pub async fn run(args: BenchArgs) -> i32 {
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
        consistency: args.consistency,
        progress: !args.json && std::io::IsTerminal::is_terminal(&std::io::stderr()),
    };
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
            0
        }
        Err(error) => {
            eprintln!("raftkv bench: {error}");
            1
        }
    }
}
