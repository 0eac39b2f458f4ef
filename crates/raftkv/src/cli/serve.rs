//! `raftkv agent` (one node) and `raftkv demo` (three on loopback): run
//! until Ctrl-C or SIGTERM (exit 0), or until a node fails for good (exit 3,
//! for a supervisor to restart it once the cause is fixed).

use std::net::SocketAddr;
use std::time::Duration;

use crate::agent::autopilot::AutopilotConfig;
use crate::agent::gossip::GossipConfig;
use crate::agent::AgentConfig;
use crate::cli::args::{AgentArgs, DemoArgs};
use crate::server;
use crate::state::Limits;

pub async fn run_agent(args: AgentArgs) -> i32 {
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
    };
    let agent = match server::start(config).await {
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
        () = agent.left() => {
            // The answer to the leave request goes out first.
            tokio::time::sleep(Duration::from_millis(200)).await;
            0
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
        };
        match server::start(config).await {
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
