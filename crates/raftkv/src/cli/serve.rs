//! `raftkv agent` (one node) and `raftkv demo` (three on loopback): run
//! until Ctrl-C or SIGTERM (exit 0), or until a node fails for good (exit 3,
//! for a supervisor to restart it once the cause is fixed).

use std::net::SocketAddr;
use std::time::Duration;

use crate::agent::autopilot::AutopilotConfig;
use crate::agent::gossip::{GossipConfig, GossipKey};
use crate::agent::{AgentConfig, UploadLimits};
use crate::api::auth::Tokens;
use crate::api::http::{HttpOptions, OVER_CAP};
use crate::cli::args::{AgentArgs, DemoArgs};
use crate::server;
use crate::server::ApiOptions;
use crate::state::Limits;
use raftkv_raft::transport::listen::{ListenLimits, ListenTls};
use raftkv_raft::transport::tls::{Tls, TlsFiles};

pub async fn run_agent(args: AgentArgs) -> i32 {
    if args.print_config {
        return match toml::to_string(&args) {
            Ok(text) => {
                print!("{text}");
                0
            }
            Err(error) => {
                eprintln!("raftkv agent: cannot print the settings: {error}");
                1
            }
        };
    }
    if !args.no_metrics {
        if let Err(error) = crate::api::metrics::install() {
            eprintln!("raftkv agent: {error}");
            return 2;
        }
    }
    let descriptors = raise_open_file_limit();
    let (mut raft_listen, mut http_listen) =
        (ListenLimits::default(), ListenLimits { refusal: OVER_CAP, ..ListenLimits::default() });
    for limits in [&mut raft_listen, &mut http_listen] {
        limits.max_connections = args.max_connections;
        limits.max_per_address = args.max_connections_per_ip;
    }
    // A peer needs a few connections (raft's stream, the internal calls'):
    // 64 from one address covers many nodes behind one NAT.
    raft_listen.max_per_address = raft_listen.max_per_address.min(RAFT_PER_ADDRESS);
    // Both listeners at their caps must leave descriptors for the log,
    // snapshots and peers: a flood of connections never fails the WAL.
    if let Some(limit) = descriptors {
        let budget = (limit.saturating_sub(RESERVED_DESCRIPTORS) / 2) as usize;
        if args.max_connections > budget {
            tracing::warn!(
                open_file_limit = limit,
                max_connections = args.max_connections,
                capped_at = budget,
                "the open-file limit cannot hold --max-connections on both listeners; capping it"
            );
            // One client address keeps to three quarters of it, leaving
            // room for the others.
            for limits in [&mut raft_listen, &mut http_listen] {
                limits.max_connections = budget.max(16);
                limits.max_per_address = limits.max_per_address.min(limits.max_connections * 3 / 4).max(1);
            }
        }
    }
    let tls = match (&args.tls_ca, &args.tls_cert, &args.tls_key) {
        (Some(ca), Some(cert), Some(key)) => {
            let files = TlsFiles { ca: ca.clone(), cert: cert.clone(), key: key.clone() };
            match Tls::load_for_node(files, raftkv_raft::NodeId(args.id)) {
                Ok(tls) => Some(tls),
                Err(error) => {
                    eprintln!("raftkv agent: TLS: {error}");
                    return 2;
                }
            }
        }
        _ => None,
    };
    let tokens = match &args.tokens {
        Some(path) => match Tokens::load(path) {
            Ok(tokens) => Some(tokens),
            Err(error) => {
                eprintln!("raftkv agent: {error}");
                return 2;
            }
        },
        None => None,
    };
    let gossip_key = match args.encrypt.as_deref().map(GossipKey::from_base64).transpose() {
        Ok(key) => key,
        Err(error) => {
            eprintln!("raftkv agent: --encrypt: {error}");
            return 2;
        }
    };
    warn_if_exposed(&args, tls.is_some(), tokens.is_some());
    let config_file = args.config.clone();
    let http_tls = match &tls {
        Some(tls) => ListenTls::Http { tls: tls.clone(), require_client_certificate: args.http_require_client_cert },
        None => ListenTls::None,
    };
    let api = ApiOptions {
        http: HttpOptions {
            limits: http_listen,
            tls: http_tls,
            header_timeout: Duration::from_millis(args.http_header_timeout_ms.max(100)),
            idle_timeout: Duration::from_millis(args.http_idle_timeout_ms.max(100)),
        },
        tokens: tokens.clone(),
    };
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
        retry_join: args.retry_join,
        gossip: args.serf_addr.map(|addr| GossipConfig {
            key: gossip_key.clone(),
            addr,
            probe_period: Duration::from_millis(args.gossip_probe_ms),
            suspect_to_down: Duration::from_millis(args.gossip_suspect_ms),
        }),
        bootstrap_expect: args.bootstrap_expect,
        raft,
        limits: Limits::default(),
        request_timeout: Duration::from_millis(args.request_timeout_ms),
        autopilot: AutopilotConfig {
            last_contact_threshold: Duration::from_millis(args.last_contact_threshold_ms),
            max_trailing_logs: args.max_trailing_logs,
            server_stabilization_time: Duration::from_millis(args.server_stabilization_ms),
            cleanup_dead_servers: args.cleanup_dead_servers,
            min_quorum: args.min_quorum,
        },
        join_timeout: Duration::from_millis(args.join_timeout_ms),
        tls: tls.clone(),
        raft_listen,
        uploads: UploadLimits {
            max_bytes: args.max_upload_bytes,
            timeout: Duration::from_millis(args.upload_timeout_ms),
            disk_reserve: args.disk_reserve_bytes,
        },
    };
    let server = match server::start(config, api).await {
        Ok(server) => server,
        Err(error) => {
            eprintln!("raftkv agent: {error}");
            return 2;
        }
    };
    let settings = config_file.map(|path| (path, server.agent.clone()));
    let reloads = tokio::spawn(reload_on_hangup(tls, tokens, settings));
    let stop = tokio::select! {
        signal = stop_requested() => Stop::Asked(signal),
        reason = server.failed() => Stop::Failed(reason),
        () = server.left() => Stop::Left,
    };
    reloads.abort();
    let code = match stop {
        Stop::Asked(signal) => {
            tracing::info!(signal, "shutting down: handing leadership over, draining requests (again to stop at once)");
            tokio::select! {
                () = server.stop(DRAIN) => 0,
                again = stop_requested() => {
                    // What was acknowledged is on disk already; what runs is
                    // cut off, and its clients see the connection drop.
                    tracing::warn!(signal = again, "asked again: stopping now, without waiting");
                    if again == "interrupt" { 130 } else { 143 }
                }
                () = tokio::time::sleep(STOP_WITHIN) => {
                    tracing::error!(?STOP_WITHIN, "the stop did not finish in time; exiting");
                    1
                }
            }
        }
        Stop::Failed(reason) => {
            tracing::error!(%reason, "the node failed; exiting so that it can be restarted");
            server.agent.shutdown().await;
            NODE_FAILED
        }
        Stop::Left => {
            // The answer to the leave request goes out first.
            tokio::time::sleep(Duration::from_millis(200)).await;
            server.agent.shutdown().await;
            0
        }
    };
    tracing::info!(code, "stopped");
    flush_output();
    code
}

/// Why an agent stops.
enum Stop {
    Asked(&'static str),
    Failed(String),
    Left,
}

/// How long a planned stop waits for the requests in flight.
const DRAIN: Duration = Duration::from_secs(5);

/// A planned stop's bound as a whole: a hand-off (two election timeouts at
/// most), the drain, and raft's own shutdown.
const STOP_WITHIN: Duration = Duration::from_secs(20);

/// Connections to the raft port from one address, at most.
const RAFT_PER_ADDRESS: usize = 64;

/// Descriptors kept back from the connection caps: the log's segments,
/// snapshots, peers' connections, gossip, the runtime.
const RESERVED_DESCRIPTORS: u64 = 256;

/// Raises the soft open-file limit to the hard one; returns the limit now
/// in force (`None` if it cannot be read).
fn raise_open_file_limit() -> Option<u64> {
    #[cfg(unix)]
    {
        let mut limit = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
        // SAFETY: getrlimit and setrlimit only read and write the struct passed.
        if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) } != 0 {
            return None;
        }
        if limit.rlim_cur < limit.rlim_max {
            let raised = libc::rlimit { rlim_cur: limit.rlim_max, rlim_max: limit.rlim_max };
            // SAFETY: as above.
            if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &raised) } == 0 {
                limit = raised;
            }
        }
        // `rlim_t` is u64 on Linux, not on every Unix.
        #[allow(clippy::unnecessary_cast)]
        Some(limit.rlim_cur as u64)
    }
    #[cfg(not(unix))]
    {
        None
    }
}

/// Says loudly what is exposed when a listener faces the network without
/// TLS or tokens.
fn warn_if_exposed(args: &AgentArgs, tls: bool, tokens: bool) {
    let exposed = |addr: &SocketAddr| !addr.ip().is_loopback();
    if exposed(&args.raft_addr) && !tls {
        tracing::warn!(
            raft_addr = %args.raft_addr,
            "SECURITY: the raft port listens beyond loopback without TLS: anyone who reaches it can learn the \
             cluster id and send raft traffic as any node. Start with --tls-ca, --tls-cert and --tls-key."
        );
    }
    if exposed(&args.http_addr) && !(tls && tokens) {
        tracing::warn!(
            http_addr = %args.http_addr,
            tls,
            tokens,
            "SECURITY: the HTTP API listens beyond loopback without {}: anyone who reaches it can {}. See \
             README, \"Running it securely\".",
            if tls || tokens { if tls { "tokens" } else { "TLS" } } else { "TLS or tokens" },
            if tokens { "read the tokens on the wire" } else { "read and write every key, change the membership and restore backups" }
        );
    }
    if let (Some(addr), None) = (args.serf_addr, &args.encrypt) {
        if exposed(&addr) {
            tracing::warn!(serf_addr = %addr, "SECURITY: gossip is not encrypted; give every member the same --encrypt key");
        }
    }
}

/// On SIGHUP, reloads the TLS files and the token file (they are also
/// reloaded when they change), and the `--config` file's reloadable
/// settings (`reload_settings`).
async fn reload_on_hangup(
    tls: Option<Tls>,
    tokens: Option<Tokens>,
    settings: Option<(std::path::PathBuf, std::sync::Arc<crate::agent::Agent>)>,
) {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        let Ok(mut hangups) = signal(SignalKind::hangup()) else { return };
        while hangups.recv().await.is_some() {
            if let Some((path, agent)) = &settings {
                match reload_settings(path, agent).await {
                    Ok(applied) => tracing::info!(file = %path.display(), ?applied, "SIGHUP: settings reloaded"),
                    Err(error) => {
                        tracing::warn!(file = %path.display(), %error, "SIGHUP: the settings do not load; keeping the previous ones")
                    }
                }
            }
            if let Some(tls) = &tls {
                match tls.reload() {
                    Ok(changed) => tracing::info!(changed, "SIGHUP: TLS files reloaded"),
                    Err(error) => {
                        tracing::warn!(%error, "SIGHUP: the TLS files do not load; keeping the previous ones")
                    }
                }
            }
            if let Some(tokens) = &tokens {
                match tokens.reload() {
                    Ok(changed) => tracing::info!(changed, count = tokens.len(), "SIGHUP: tokens reloaded"),
                    Err(error) => {
                        tracing::warn!(%error, "SIGHUP: the token file does not load; keeping the previous tokens")
                    }
                }
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = (tls, tokens, settings);
    }
}

/// Applies the `--config` file's reloadable settings (those that
/// `POST /api/maintain/config` changes) that the command line and the
/// environment do not give; returns their names. Others take effect at the
/// next start.
async fn reload_settings(path: &std::path::Path, agent: &crate::agent::Agent) -> Result<Vec<String>, String> {
    use clap::CommandFactory;
    let command = crate::cli::args::Cli::command();
    let agent_command = command.find_subcommand("agent").ok_or("no agent command")?;
    let settings = crate::cli::config::file_settings(path, agent_command, &crate::cli::config::given_to_agent())?;
    let mut raft = raftkv_raft::ReloadableConfig::default();
    let mut autopilot = agent.autopilot_config();
    let mut applied = Vec::new();
    for (long, _, value) in settings {
        let number = || {
            value.as_integer().and_then(|n| u64::try_from(n).ok()).ok_or_else(|| format!("`{long}` must be a number"))
        };
        let ms = |n: u64| Duration::from_millis(n);
        match long.as_str() {
            "heartbeat-ms" => raft.heartbeat_interval = Some(ms(number()?)),
            "election-timeout-ms" => {
                let n = number()?;
                raft.election_timeout_min = Some(ms(n));
                raft.election_timeout_max = Some(ms(n.saturating_mul(2)));
            }
            "last-contact-threshold-ms" => autopilot.last_contact_threshold = ms(number()?),
            "max-trailing-logs" => autopilot.max_trailing_logs = number()?,
            "server-stabilization-ms" => autopilot.server_stabilization_time = ms(number()?),
            "min-quorum" => autopilot.min_quorum = usize::try_from(number()?).map_err(|e| e.to_string())?,
            "cleanup-dead-servers" => {
                autopilot.cleanup_dead_servers =
                    value.as_bool().ok_or_else(|| format!("`{long}` must be true or false"))?
            }
            _ => continue,
        }
        applied.push(long);
    }
    agent.reload(raft, autopilot).await.map_err(|failure| failure.message)?;
    Ok(applied)
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

pub async fn run_demo(args: DemoArgs) -> i32 {
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
            retry_join: Vec::new(),
            gossip: None,
            bootstrap_expect: None,
            raft: raftkv_raft::Config::new(raftkv_raft::NodeId(id)),
            limits: Limits::default(),
            request_timeout: Duration::from_secs(10),
            // Joins wait one election timeout of stability: a demo forms in seconds.
            autopilot: AutopilotConfig {
                server_stabilization_time: Duration::from_secs(2),
                ..AutopilotConfig::default()
            },
            join_timeout: Duration::from_secs(30),
            tls: None,
            raft_listen: ListenLimits::default(),
            uploads: UploadLimits::default(),
        };
        match server::start(config, ApiOptions::default()).await {
            Ok(server) => agents.push(server.agent.clone()),
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
