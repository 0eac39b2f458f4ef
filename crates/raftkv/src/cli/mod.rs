//! The `raftkv` command line: `args` says what each command takes; `serve`
//! runs nodes (`agent`, `demo`); `kv` (the client commands), `snapshot` (backups) and `bench`
//! are clients of the HTTP API through the one `client`.

pub mod args;
pub mod bench;
pub mod client;
pub mod config;
pub mod globals;
pub mod kv;
pub mod serve;
pub mod snapshot;
pub mod tls;

use clap::{CommandFactory, FromArgMatches};

use crate::agent::recover;
use crate::cli::args::{Cli, Commands, LogFormat};
use crate::cli::globals::Globals;

/// Runs the command line; returns the process's exit status.
pub async fn run() -> i32 {
    let command = Cli::command();
    let argv = match config::expand(std::env::args_os().collect(), &command) {
        Ok(argv) => argv,
        Err(error) => {
            eprintln!("raftkv agent: {error}");
            return 2;
        }
    };
    let matches = command.get_matches_from(argv);
    let endpoints_from_env = matches.value_source("endpoints") == Some(clap::parser::ValueSource::EnvVariable);
    let cli = match Cli::from_arg_matches(&matches) {
        Ok(cli) => cli,
        Err(error) => error.exit(),
    };
    let globals = Globals { args: cli.global, endpoints_from_env };
    match cli.command {
        Commands::Agent(args) => {
            init_logging(cli.log_format);
            serve::run_agent(*args).await
        }
        Commands::Demo(args) => {
            init_logging(cli.log_format);
            serve::run_demo(args).await
        }
        Commands::Bench(args) => bench::run(args, &globals).await,
        Commands::Snapshot(command) => snapshot::run(command, &globals).await,
        Commands::Tls(command) => tls::run(command),
        Commands::Keygen => tls::keygen(),
        Commands::Recover { data_dir, peers } => match recover::recover(&data_dir, &peers) {
            Ok(report) => {
                println!("{report}");
                0
            }
            Err(message) => {
                eprintln!("raftkv recover: {message}");
                1
            }
        },
        command => kv::run(command, &globals).await,
    }
}

fn init_logging(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    // Colours only on a terminal: log files and collectors get plain text.
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr).with_ansi(ansi);
    match format {
        LogFormat::Human => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
}
