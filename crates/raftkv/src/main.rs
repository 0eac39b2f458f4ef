//! `raftkv`: the replicated key-value server (`raftkv agent`) and its CLI.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Parser, Subcommand, ValueEnum};
use raftkv::agent::{Agent, AgentConfig, Limits};
use serde_json::{json, Value};

/// glibc's malloc took about a tenth of the server's CPU under load (perf,
/// 256 writing clients); mimalloc's thread-local free lists cost less.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser)]
#[command(name = "raftkv", version, about = "A replicated key-value store on Raft")]
struct Cli {
    /// Log format of the agent.
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Human)]
    log_format: LogFormat,
    #[command(subcommand)]
    command: Commands,
}

#[derive(Clone, Copy, ValueEnum)]
enum LogFormat {
    Human,
    Json,
}

#[derive(Subcommand)]
enum Commands {
    /// Run a server node. Exits 0 after Ctrl-C, 2 if it cannot start, and 3
    /// once its raft node failed for good (a storage failure, say): restart it,
    /// after fixing the cause.
    Agent(AgentArgs),
    /// Run a 3-node cluster on loopback in this process, until Ctrl-C (exits 3
    /// if a node fails for good).
    Demo(DemoArgs),
    /// Load a cluster with a closed loop of clients and report throughput and latency.
    Bench(BenchArgs),
    /// Set a key.
    Put {
        key: String,
        value: String,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Read a key.
    Get {
        key: String,
        #[arg(long, default_value = "linearizable")]
        consistency: String,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Delete a key.
    Delete {
        key: String,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Set KEY to VALUE if it currently holds EXPECTED (--absent: if it does not exist).
    Cas {
        key: String,
        value: String,
        #[arg(long, conflicts_with = "absent", required_unless_present = "absent")]
        expected: Option<String>,
        #[arg(long)]
        absent: bool,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// List keys under a prefix.
    List {
        #[arg(default_value = "")]
        prefix: String,
        #[arg(long, default_value_t = 100)]
        limit: usize,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Show the cluster's members.
    Members {
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Show a node's raft statistics.
    Stats {
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Add node ID (listening for raft at RAFT_ADDR) as a voter.
    Join {
        id: u64,
        raft_addr: String,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Remove node ID from the cluster.
    Remove {
        id: u64,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Hand leadership to node ID (or to another voter).
    TransferLeader {
        id: Option<u64>,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Back up, restore or check the whole state.
    #[command(subcommand)]
    Snapshot(SnapshotCommand),
    /// Offline: make a stopped node start as part of a smaller cluster after a
    /// loss of quorum (rewrites its configuration to the servers in PEERS).
    Recover {
        /// The stopped node's data dir.
        #[arg(long)]
        data_dir: PathBuf,
        /// JSON: [{"id": 1, "address": "127.0.0.1:9001", "non_voter": false}, ...]
        #[arg(long)]
        peers: PathBuf,
    },
}

#[derive(Subcommand)]
enum SnapshotCommand {
    /// Download a consistent backup of the cluster's keys into FILE.
    Save {
        file: PathBuf,
        #[arg(long, default_value = "linearizable")]
        consistency: String,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Replace the cluster's keys with those of the backup FILE (through raft).
    Restore {
        file: PathBuf,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Check a backup FILE and print its index, term, configuration, size and key count.
    Inspect {
        file: PathBuf,
        #[arg(long)]
        json: bool,
    },
}

#[derive(Args)]
struct AgentArgs {
    /// This node's id (a positive integer, unique in the cluster).
    #[arg(long)]
    id: u64,
    /// Where the HTTP API listens.
    #[arg(long)]
    http_addr: SocketAddr,
    /// Where raft and internal RPCs listen; other nodes connect here, so it must
    /// be an address they can reach (not 0.0.0.0).
    #[arg(long)]
    raft_addr: SocketAddr,
    #[arg(long)]
    data_dir: PathBuf,
    /// Start a new cluster with this node as its only voter.
    #[arg(long)]
    bootstrap: bool,
    /// Raft address of a member to join through (repeat to try several).
    #[arg(long)]
    join: Vec<String>,
    /// Heartbeat interval in milliseconds.
    #[arg(long, default_value_t = 100)]
    heartbeat_ms: u64,
    /// Minimum election timeout in milliseconds (the maximum is twice this).
    #[arg(long, default_value_t = 1000)]
    election_timeout_ms: u64,
    /// Timeout of one client request, in milliseconds.
    #[arg(long, default_value_t = 10_000)]
    request_timeout_ms: u64,
}

#[derive(Args)]
struct DemoArgs {
    /// Where the nodes keep their data (kept; rerunning resumes). Default: a
    /// temporary directory removed on exit.
    #[arg(long)]
    dir: Option<PathBuf>,
    /// HTTP ports are this and the next two.
    #[arg(long, default_value_t = 8001)]
    http_port: u16,
    /// Raft ports are this and the next two.
    #[arg(long, default_value_t = 9001)]
    raft_port: u16,
}

#[derive(Args)]
struct BenchArgs {
    /// Nodes to load (comma-separated; clients spread over them): HTTP
    /// addresses for raftkv, client addresses for etcd.
    #[arg(long, value_delimiter = ',', default_value = "127.0.0.1:8001")]
    target: Vec<String>,
    /// The system under test.
    #[arg(long, value_enum, default_value_t = BenchSystem::Raftkv)]
    system: BenchSystem,
    #[arg(long, default_value_t = 16)]
    clients: usize,
    /// Seconds to run (unless --requests is given).
    #[arg(long, default_value_t = 10.0)]
    duration: f64,
    /// Stop after this many requests instead of after --duration.
    #[arg(long)]
    requests: Option<u64>,
    /// Distinct keys.
    #[arg(long, default_value_t = 1000)]
    keys: u64,
    #[arg(long, default_value_t = 128)]
    value_size: usize,
    /// Weights of writes, reads and compare-and-swaps, as write:read:cas.
    #[arg(long, default_value = "100:0:0")]
    mix: raftkv::bench::Mix,
    /// Read consistency: linearizable, lease (raftkv) or stale.
    #[arg(long, default_value = "linearizable")]
    consistency: String,
    /// Print only the JSON summary.
    #[arg(long)]
    json: bool,
}

#[derive(Clone, Copy, ValueEnum)]
enum BenchSystem {
    Raftkv,
    Etcd,
}

#[derive(Args)]
struct ClientArgs {
    /// HTTP address of any node.
    #[arg(long, default_value = "127.0.0.1:8001")]
    addr: String,
    /// Print the server's JSON.
    #[arg(long)]
    json: bool,
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

#[tokio::main]
async fn main() {
    let cli = Cli::parse();
    let code = match cli.command {
        Commands::Agent(args) => {
            init_logging(cli.log_format);
            run_agent(args).await
        }
        Commands::Demo(args) => {
            init_logging(cli.log_format);
            run_demo(args).await
        }
        Commands::Bench(args) => run_bench(args).await,
        Commands::Snapshot(command) => run_snapshot(command).await,
        Commands::Recover { data_dir, peers } => match raftkv::ops::recover(&data_dir, &peers) {
            Ok(report) => {
                println!("{report}");
                0
            }
            Err(message) => {
                eprintln!("raftkv recover: {message}");
                1
            }
        },
        command => run_client(command).await,
    };
    std::process::exit(code);
}

async fn run_agent(args: AgentArgs) -> i32 {
    let mut raft = raftkv_raft::Config::new(raftkv_raft::NodeId(args.id));
    raft.heartbeat_interval = Duration::from_millis(args.heartbeat_ms);
    raft.election_timeout_min = Duration::from_millis(args.election_timeout_ms);
    raft.election_timeout_max = Duration::from_millis(2 * args.election_timeout_ms);
    raft.lease_clock_drift = Duration::from_millis(args.election_timeout_ms / 10);
    let config = AgentConfig {
        id: args.id,
        http_addr: args.http_addr,
        raft_addr: args.raft_addr,
        data_dir: args.data_dir,
        bootstrap: args.bootstrap,
        join: args.join,
        raft,
        limits: Limits::default(),
        request_timeout: Duration::from_millis(args.request_timeout_ms),
    };
    let agent = match Agent::start(config).await {
        Ok(agent) => agent,
        Err(error) => {
            eprintln!("raftkv agent: {error}");
            return 2;
        }
    };
    let code = tokio::select! {
        signal = stop_requested() => {
            tracing::info!(signal, "shutting down");
            0
        }
        reason = agent.failed() => {
            tracing::error!(%reason, "the node failed; exiting so that it can be restarted");
            NODE_FAILED
        }
    };
    agent.shutdown().await;
    flush_output();
    code
}

/// Resolves when the process is asked to stop: Ctrl-C, or SIGTERM (what a
/// supervisor such as systemd sends), so that either ends in a clean shutdown.
async fn stop_requested() -> &'static str {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        match signal(SignalKind::terminate()) {
            Ok(mut terminate) => tokio::select! {
                _ = tokio::signal::ctrl_c() => "interrupt",
                _ = terminate.recv() => "terminate",
            },
            Err(error) => {
                tracing::warn!(%error, "cannot listen for SIGTERM; only Ctrl-C stops the process cleanly");
                let _ = tokio::signal::ctrl_c().await;
                "interrupt"
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
        "interrupt"
    }
}

/// Exit status of an agent (or demo) whose raft node failed for good.
const NODE_FAILED: i32 = 3;

/// Whatever is buffered goes out before `process::exit`.
fn flush_output() {
    use std::io::Write;
    let _ = std::io::stdout().flush();
    let _ = std::io::stderr().flush();
}

async fn run_demo(args: DemoArgs) -> i32 {
    let (root, temporary) = match args.dir {
        Some(dir) => (dir, false),
        None => (std::env::temp_dir().join(format!("raftkv-demo-{}", std::process::id())), true),
    };
    let address = |port: u16, i: u16| SocketAddr::from(([127, 0, 0, 1], port + i));
    let mut agents = Vec::new();
    for i in 0..3u16 {
        let id = u64::from(i) + 1;
        let config = AgentConfig {
            id,
            http_addr: address(args.http_port, i),
            raft_addr: address(args.raft_port, i),
            data_dir: root.join(format!("node{id}")),
            bootstrap: i == 0,
            join: if i == 0 { Vec::new() } else { vec![address(args.raft_port, 0).to_string()] },
            raft: raftkv_raft::Config::new(raftkv_raft::NodeId(id)),
            limits: Limits::default(),
            request_timeout: Duration::from_secs(10),
        };
        match Agent::start(config).await {
            Ok(agent) => agents.push(agent),
            Err(error) => {
                eprintln!("raftkv demo: node {id}: {error}");
                for agent in &agents {
                    agent.shutdown().await;
                }
                return 2;
            }
        }
    }
    let first = address(args.http_port, 0);
    let second = address(args.http_port, 1);
    println!("raftkv demo: 3 nodes running, data in {}", root.display());
    for agent in &agents {
        println!("  node {}: http {}  raft {}", agent.id, agent.config.http_addr, agent.config.raft_addr);
    }
    // The binary as it was started, so that the commands work as printed.
    let exe = std::env::current_exe()
        .ok()
        .and_then(|path| {
            let cwd = std::env::current_dir().ok()?;
            Some(path.strip_prefix(&cwd).map(|p| p.to_path_buf()).unwrap_or(path))
        })
        .map_or("raftkv".to_string(), |p| p.display().to_string());
    println!("try, in another terminal:");
    println!("  {exe} members --addr {first}");
    println!("  {exe} put greeting hello --addr {second}      # forwarded to the leader if node 2 follows");
    println!("  {exe} get greeting --addr {}", address(args.http_port, 2));
    println!("  curl -s {first}/api/maintain/stats");
    println!("press Ctrl-C to stop");
    // The first node to fail for good stops the whole demo: a cluster that
    // quietly runs on with a dead member would hide the failure.
    let (failures, mut failed) = tokio::sync::mpsc::unbounded_channel();
    for agent in &agents {
        let (agent, failures) = (agent.clone(), failures.clone());
        tokio::spawn(async move {
            let reason = agent.failed().await;
            let _ = failures.send((agent.id, reason));
        });
    }
    let failure = tokio::select! {
        _ = stop_requested() => None,
        failure = failed.recv() => failure,
    };
    for agent in &agents {
        agent.shutdown().await;
    }
    let code = match failure {
        Some((id, reason)) => {
            eprintln!("raftkv demo: node {id} failed and stopped: {reason}");
            eprintln!("raftkv demo: stopping the demo; data kept in {}", root.display());
            NODE_FAILED
        }
        None => {
            if temporary {
                let _ = std::fs::remove_dir_all(&root);
            }
            println!("raftkv demo: stopped");
            0
        }
    };
    flush_output();
    code
}

async fn run_bench(args: BenchArgs) -> i32 {
    use raftkv::bench::{BenchConfig, Stop, System};
    let config = BenchConfig {
        system: match args.system {
            BenchSystem::Raftkv => System::Raftkv,
            BenchSystem::Etcd => System::Etcd,
        },
        targets: args.target,
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
    match raftkv::bench::run(&config).await {
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

async fn run_snapshot(command: SnapshotCommand) -> i32 {
    use raftkv::ops;
    let (result, json) = match command {
        SnapshotCommand::Save { file, consistency, client } => {
            let saved = ops::save(&client.addr, &encode(&consistency), &file).await;
            let saved = saved.map(|mut value| {
                value["file"] = json!(file.display().to_string());
                value
            });
            (saved, client.json)
        }
        SnapshotCommand::Restore { file, client } => (ops::restore(&client.addr, &file).await, client.json),
        SnapshotCommand::Inspect { file, json } => (ops::inspect(&file).map(|(h, size)| ops::describe(&h, size)), json),
    };
    match result {
        Ok(value) if json => {
            println!("{value}");
            0
        }
        Ok(value) => {
            let map = value.as_object().cloned().unwrap_or_default();
            for (key, value) in map {
                println!("{key}: {}", value.as_str().map_or_else(|| value.to_string(), str::to_string));
            }
            0
        }
        Err(message) => {
            eprintln!("raftkv snapshot: {message}");
            1
        }
    }
}

async fn run_client(command: Commands) -> i32 {
    match client(command).await {
        Ok(()) => 0,
        Err(message) => {
            eprintln!("raftkv: {message}");
            1
        }
    }
}

/// Sends one request; returns the status and the JSON (or text) body.
async fn call(
    method: reqwest::Method,
    addr: &str,
    path: &str,
    body: Option<Value>,
    accept_json: bool,
) -> Result<(reqwest::StatusCode, String), String> {
    let client = reqwest::Client::new();
    let mut request = client.request(method, format!("http://{addr}{path}")).timeout(Duration::from_secs(30));
    if accept_json {
        request = request.header(reqwest::header::ACCEPT, "application/json");
    }
    if let Some(body) = body {
        request = request.json(&body);
    }
    let response = request.send().await.map_err(|e| format!("cannot reach {addr}: {e}"))?;
    let status = response.status();
    let text = response.text().await.map_err(|e| format!("bad response from {addr}: {e}"))?;
    Ok((status, text))
}

/// Percent-encodes a query value.
fn encode(value: &str) -> String {
    form_urlencoded::byte_serialize(value.as_bytes()).collect()
}

/// One CLI request: method, target, path, JSON body, and how to print the answer.
struct Call {
    method: reqwest::Method,
    client: ClientArgs,
    path: String,
    body: Option<Value>,
    human: fn(&Value) -> String,
}

impl Call {
    fn new(
        method: reqwest::Method,
        client: ClientArgs,
        path: String,
        body: Option<Value>,
        human: fn(&Value) -> String,
    ) -> Call {
        Call { method, client, path, body, human }
    }
}

async fn client(command: Commands) -> Result<(), String> {
    use reqwest::Method;
    let request = match command {
        Commands::Agent(_)
        | Commands::Demo(_)
        | Commands::Bench(_)
        | Commands::Snapshot(_)
        | Commands::Recover { .. } => unreachable!("handled by main"),
        Commands::Put { key, value, client } => {
            Call::new(Method::POST, client, "/api/v1/set".into(), Some(json!({"key": key, "value": value})), |v| {
                format!("OK (index {})", v["index"])
            })
        }
        Commands::Get { key, consistency, client } => Call::new(
            Method::GET,
            client,
            format!("/api/v1/get?key={}&consistency={}", encode(&key), encode(&consistency)),
            None,
            |v| v["value"].as_str().unwrap_or_default().to_string(),
        ),
        Commands::Delete { key, client } => {
            Call::new(Method::DELETE, client, format!("/api/v1/delete?key={}", encode(&key)), None, |v| {
                if v["deleted"] == json!(true) {
                    "deleted".into()
                } else {
                    "no such key".into()
                }
            })
        }
        // `--absent` is the same request as no `--expected`: `expected: null`.
        Commands::Cas { key, value, expected, absent: _, client } => Call::new(
            Method::POST,
            client,
            "/api/v1/cas".into(),
            Some(json!({"key": key, "expected": expected, "value": value})),
            |v| format!("OK (index {})", v["index"]),
        ),
        Commands::List { prefix, limit, client } => Call::new(
            Method::GET,
            client,
            format!("/api/v1/list?prefix={}&limit={limit}", encode(&prefix)),
            None,
            |v| {
                let items = v["items"].as_array().cloned().unwrap_or_default();
                items
                    .iter()
                    .map(|i| {
                        format!(
                            "{}\t{}",
                            i["key"].as_str().unwrap_or_default(),
                            i["value"].as_str().unwrap_or_default()
                        )
                    })
                    .collect::<Vec<_>>()
                    .join("\n")
            },
        ),
        Commands::Members { client } => Call::new(Method::GET, client, "/api/v1/members".into(), None, |v| {
            let members = v["members"].as_array().cloned().unwrap_or_default();
            members
                .iter()
                .map(|m| {
                    let leader = if m["leader"] == json!(true) { " (leader)" } else { "" };
                    format!(
                        "{}\t{}\traft {}\thttp {}{leader}",
                        m["id"],
                        m["suffrage"].as_str().unwrap_or_default(),
                        m["raft_addr"].as_str().unwrap_or("?"),
                        m["http_addr"].as_str().unwrap_or("?")
                    )
                })
                .collect::<Vec<_>>()
                .join("\n")
        }),
        Commands::Stats { client } => Call::new(Method::GET, client, "/api/maintain/stats".into(), None, |v| {
            let map = v.as_object().cloned().unwrap_or_default();
            map.iter().map(|(k, v)| format!("{k}: {}", v.as_str().unwrap_or_default())).collect::<Vec<_>>().join("\n")
        }),
        Commands::Join { id, raft_addr, client } => Call::new(
            Method::POST,
            client,
            "/api/v1/join".into(),
            Some(json!({"id": id, "raft_addr": raft_addr})),
            |v| format!("joined (index {})", v["index"]),
        ),
        Commands::Remove { id, client } => {
            Call::new(Method::POST, client, "/api/v1/remove".into(), Some(json!({"id": id})), |v| {
                format!("removed (index {})", v["index"])
            })
        }
        Commands::TransferLeader { id, client } => {
            Call::new(Method::POST, client, "/api/v1/transfer-leader".into(), Some(json!({"id": id})), |v| {
                format!("leadership moving to node {}", v["target"])
            })
        }
    };
    let (status, text) = call(request.method, &request.client.addr, &request.path, request.body, true).await?;
    let (client, human) = (request.client, request.human);
    if client.json {
        println!("{text}");
        return if status.is_success() { Ok(()) } else { Err(format!("HTTP {status}")) };
    }
    if !status.is_success() {
        return Err(format!("{} (HTTP {})", raftkv::ops::error_message(&text), status.as_u16()));
    }
    let value: Value = serde_json::from_str(&text).unwrap_or(Value::String(text.clone()));
    println!("{}", human(&value));
    Ok(())
}
