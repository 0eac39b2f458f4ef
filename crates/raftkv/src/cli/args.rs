//! The command line: what each command takes (clap).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Parser, Subcommand, ValueEnum};

/// What the client commands' exit statuses mean (the agent's are under `raftkv agent --help`).
const EXIT_STATUSES: &str = "\
Exit status of the client commands:
  0  done
  1  failed, or not done: nothing took effect (a bad argument, a refusal, no
     endpoint reachable, an unhealthy endpoint for `endpoint health`)
  2  bad command line
  4  a write may or may not have taken effect (no answer after it was sent, or
     a 504 / outcome \"unknown\"): it was not sent again; retry only what is idempotent";

#[derive(Parser)]
#[command(
    name = "raftkv",
    version,
    about = "A replicated key-value store on Raft",
    args_override_self = true,
    after_help = EXIT_STATUSES
)]
pub struct Cli {
    /// Log format of the agent.
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Human)]
    pub log_format: LogFormat,
    #[command(flatten)]
    pub global: GlobalClientArgs,
    #[command(subcommand)]
    pub command: Commands,
}

#[derive(Clone, Copy, ValueEnum)]
pub enum LogFormat {
    /// Lines for people (coloured on a terminal).
    Human,
    /// One JSON object per line.
    Json,
}

/// Options of every client command; they may come before or after the
/// command's name.
#[derive(Args, Clone)]
#[command(next_help_heading = "Client options")]
pub struct GlobalClientArgs {
    /// Nodes to send requests to, comma-separated, each host:port or
    /// http(s)://host:port. A request a node did not take (it cannot be
    /// connected to, or answers 503 with outcome "not_done") goes on to the
    /// next; a write that may have taken effect is never sent again (exit 4);
    /// reads are tried on each in turn. Default: --addr, else 127.0.0.1:8001.
    #[arg(long, global = true, env = "RAFTKV_ENDPOINTS", value_delimiter = ',', value_name = "ENDPOINTS")]
    pub endpoints: Vec<String>,
    /// Deadline of the whole command, e.g. 5s, 500ms, 2m (default: 30s per
    /// request, 5s for `endpoint`, longer for join and leave, none for
    /// snapshot transfers).
    #[arg(long, global = true, env = "RAFTKV_TIMEOUT", value_parser = parse_duration, value_name = "DURATION")]
    pub timeout: Option<Duration>,
    /// Output format of get, list, members, stats and endpoint (json works
    /// for every client command).
    #[arg(short = 'w', long, global = true, value_enum, default_value_t = WriteOut::Simple)]
    pub write_out: WriteOut,
}

#[derive(Clone, Copy, PartialEq, Eq, Debug, ValueEnum)]
pub enum WriteOut {
    /// Plain lines, as `raftkv` always printed them.
    Simple,
    /// The server's JSON, as one document.
    Json,
    /// Aligned columns under a header.
    Table,
}

/// Read consistency.
#[derive(Clone, Copy, PartialEq, Eq, Debug, Default, ValueEnum)]
pub enum Consistency {
    /// Sees every write acknowledged before the read began (ReadIndex: the
    /// leader confirms it still leads).
    #[default]
    Linearizable,
    /// Like linearizable, trusting the leader's lease instead of a round of
    /// heartbeats (wrong only if clocks drift beyond the configured bound).
    Lease,
    /// The asked node's state as it is, possibly behind.
    Stale,
}

impl Consistency {
    pub fn as_str(self) -> &'static str {
        match self {
            Consistency::Linearizable => "linearizable",
            Consistency::Lease => "lease",
            Consistency::Stale => "stale",
        }
    }
}

/// A duration with its unit: `1.5s`, `500ms`, `2m`, `1h`.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    let split = text.find(|c: char| !(c.is_ascii_digit() || c == '.')).unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let scale = match unit.trim() {
        "ms" => 0.001,
        "s" => 1.0,
        "m" => 60.0,
        "h" => 3600.0,
        "" => return Err(format!("{text:?} needs a unit: ms, s, m or h (e.g. 5s, 500ms)")),
        other => return Err(format!("unknown unit {other:?} in {text:?}: use ms, s, m or h (e.g. 5s, 500ms)")),
    };
    let number: f64 = number.parse().map_err(|_| format!("{text:?} is not a duration (e.g. 5s, 500ms)"))?;
    Duration::try_from_secs_f64(number * scale)
        .ok()
        .filter(|d| !d.is_zero())
        .ok_or_else(|| format!("{text:?}: a duration must be positive and not huge"))
}

#[derive(Subcommand)]
pub enum Commands {
    /// Run a server node. Exits 0 after Ctrl-C, 2 if it cannot start, and 3
    /// once its raft node failed for good (a storage failure, say): restart it,
    /// after fixing the cause.
    Agent(Box<AgentArgs>),
    /// Run a 3-node cluster on loopback in this process, until Ctrl-C (exits 3
    /// if a node fails for good).
    Demo(DemoArgs),
    /// Load a cluster with a closed loop of clients and report throughput and latency.
    Bench(BenchArgs),
    /// Set KEY to a value: VALUE, `-` to read it from stdin, or --file.
    Put {
        /// The key to set.
        key: String,
        #[command(flatten)]
        value: ValueArgs,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Read a key, or with --prefix every key under a prefix.
    Get {
        /// The key to read.
        #[arg(required_unless_present = "prefix", conflicts_with = "prefix")]
        key: Option<String>,
        /// Read every key that starts with PREFIX, with its value, in key
        /// order ("" for all keys), page by page.
        #[arg(long, value_name = "PREFIX")]
        prefix: Option<String>,
        /// With --prefix: stop after N keys.
        #[arg(long, requires = "prefix", value_name = "N")]
        limit: Option<usize>,
        #[command(flatten)]
        paging: PagingArgs,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Delete a key, or with --prefix every key under a prefix.
    Delete {
        /// The key to delete.
        #[arg(required_unless_present = "prefix", conflicts_with = "prefix")]
        key: Option<String>,
        /// Delete every key that starts with PREFIX ("" for all keys): lists
        /// them page by page and deletes each with its own write, then says
        /// how many. NOT ATOMIC: a failure part way leaves the keys before it
        /// deleted, and a key written under PREFIX meanwhile may survive.
        #[arg(long, value_name = "PREFIX")]
        prefix: Option<String>,
        /// With --prefix: how the keys are listed.
        #[command(flatten)]
        paging: PagingArgs,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Set KEY to VALUE if it currently holds EXPECTED (--absent: if it does not exist).
    Cas {
        /// The key to set.
        key: String,
        #[command(flatten)]
        value: ValueArgs,
        /// The value KEY must hold for the swap to happen.
        #[arg(long, conflicts_with = "absent", required_unless_present = "absent")]
        expected: Option<String>,
        /// Swap only if KEY does not exist.
        #[arg(long)]
        absent: bool,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// List the keys under a prefix with their values, every page of them
    /// unless --limit.
    List {
        /// Only keys that start with this ("": every key).
        #[arg(default_value = "")]
        prefix: String,
        /// Stop after N keys (default: all of them).
        #[arg(long, value_name = "N")]
        limit: Option<usize>,
        #[command(flatten)]
        paging: PagingArgs,
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
    /// Add node ID (listening for raft at RAFT_ADDR) as a voter. The node must
    /// be running and answer there as a node of this cluster; it becomes a
    /// voter once it has caught up and stayed so (the server stabilization
    /// time), and is removed again if it does not within the join timeout.
    Join {
        /// The new node's id.
        id: u64,
        /// Where the new node listens for raft (its --raft-addr).
        raft_addr: String,
        /// Where the node serves its HTTP API (shown by `members`).
        #[arg(long)]
        http_addr: Option<String>,
        /// If a member with this id exists at another address, remove it first.
        #[arg(long)]
        replace: bool,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Make the node at --addr (or the one endpoint) leave the cluster: it
    /// hands leadership over, is removed from the configuration, tells
    /// gossip, and exits.
    Leave {
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Gossip views (Consul's `members`).
    #[command(subcommand)]
    Gossip(GossipCommand),
    /// Operator views (Consul's `operator`).
    #[command(subcommand)]
    Operator(OperatorCommand),
    /// Remove node ID from the cluster.
    Remove {
        /// The id of the node to remove.
        id: u64,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Hand leadership to node ID (or to another voter).
    TransferLeader {
        /// The voter to hand leadership to (default: another voter, the leader's choice).
        id: Option<u64>,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Each endpoint's health and status (like `etcdctl endpoint`).
    #[command(subcommand)]
    Endpoint(EndpointCommand),
    /// Back up, restore or check the whole state.
    #[command(subcommand)]
    Snapshot(SnapshotCommand),
    /// Certificates for TLS between nodes and for clients (like `consul tls`).
    #[command(subcommand)]
    Tls(TlsCommand),
    /// Print a new gossip encryption key (for --encrypt).
    Keygen,
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

/// Where a value comes from: the VALUE argument, stdin (`-`), or a file.
#[derive(Args)]
pub struct ValueArgs {
    /// The value; `-` reads it from stdin, as it is (a final newline too).
    #[arg(required_unless_present = "file")]
    pub value: Option<String>,
    /// Read the value from FILE, as it is: any bytes (for values too long
    /// for an argument, or not text).
    #[arg(long, conflicts_with = "value", value_name = "FILE")]
    pub file: Option<PathBuf>,
}

/// How a read of many keys pages through them.
#[derive(Args)]
pub struct PagingArgs {
    /// Keys asked for per request (a page also stops at 16 MiB of keys and values).
    #[arg(long, default_value_t = 1000, value_parser = clap::builder::RangedU64ValueParser::<usize>::new().range(1..=100_000))]
    pub page_size: usize,
    /// Read consistency.
    #[arg(long, value_enum, default_value_t)]
    pub consistency: Consistency,
}

#[derive(Subcommand)]
pub enum EndpointCommand {
    /// Ask every endpoint whether it is healthy (GET /v1/health: its raft
    /// node runs) and ready (GET /v1/ready: it knows a leader and has applied
    /// everything it knows committed). Exits 1 if any endpoint is not both.
    Health {
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Every endpoint's node id, raft state, leader, term, commit and applied
    /// index (GET /api/maintain/stats, /v1/health, /v1/ready). Exits 1 if any
    /// endpoint did not answer.
    Status {
        #[command(flatten)]
        client: ClientArgs,
    },
}

#[derive(Subcommand)]
pub enum TlsCommand {
    /// The cluster's certificate authority.
    #[command(subcommand)]
    Ca(CaCommand),
    /// Node and client certificates.
    #[command(subcommand)]
    Cert(CertCommand),
}

#[derive(Subcommand)]
pub enum CaCommand {
    /// Create the cluster's CA: raftkv-ca.pem and raftkv-ca-key.pem (keep the key safe).
    Create {
        /// Where to write the files.
        #[arg(long, default_value = ".")]
        dir: PathBuf,
        /// Days the CA is valid.
        #[arg(long, default_value_t = 1825)]
        days: u32,
    },
}

#[derive(Subcommand)]
pub enum CertCommand {
    /// Create a node's certificate (--node ID: node-ID.pem, node-ID-key.pem)
    /// or a client's (--client: client.pem, client-key.pem), signed by the CA.
    Create(CertCreate),
}

#[derive(Args)]
pub struct CertCreate {
    /// The node id the certificate names.
    #[arg(long, required_unless_present = "client", conflicts_with = "client")]
    pub node: Option<u64>,
    /// A client certificate (names no node; for an API that requires client certificates).
    #[arg(long)]
    pub client: bool,
    /// Extra DNS names the certificate is valid for (repeat).
    #[arg(long)]
    pub dns: Vec<String>,
    /// Extra IP addresses the certificate is valid for (repeat).
    #[arg(long)]
    pub ip: Vec<std::net::IpAddr>,
    /// The CA's certificate.
    #[arg(long, default_value = "raftkv-ca.pem")]
    pub ca: PathBuf,
    /// The CA's private key.
    #[arg(long, default_value = "raftkv-ca-key.pem")]
    pub ca_key: PathBuf,
    /// Where to write the files.
    #[arg(long, default_value = ".")]
    pub dir: PathBuf,
    /// Days the certificate is valid.
    #[arg(long, default_value_t = 365)]
    pub days: u32,
}

#[derive(Subcommand)]
pub enum GossipCommand {
    /// Every node the node at --addr knows by gossip, alive, suspect or down.
    Members {
        #[command(flatten)]
        client: ClientArgs,
    },
}

#[derive(Subcommand)]
pub enum OperatorCommand {
    /// Server health as the leader's autopilot sees it.
    #[command(subcommand)]
    Autopilot(AutopilotCommand),
}

#[derive(Subcommand)]
pub enum AutopilotCommand {
    /// Each server's health, how long it has held, and the failure tolerance.
    State {
        #[command(flatten)]
        client: ClientArgs,
    },
}

#[derive(Subcommand)]
pub enum SnapshotCommand {
    /// Download a consistent backup of the cluster's keys into FILE.
    Save {
        /// Where to write the backup (through FILE.partial, renamed once checked).
        file: PathBuf,
        /// Read consistency of the state saved.
        #[arg(long, value_enum, default_value_t)]
        consistency: Consistency,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Replace the cluster's keys with those of the backup FILE (through raft).
    Restore {
        /// The backup to restore (checked whole before anything is sent).
        file: PathBuf,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Check a backup FILE and print its index, term, configuration, size and key count.
    Inspect {
        /// The backup to check.
        file: PathBuf,
        /// Print JSON (same as -w json).
        #[arg(long)]
        json: bool,
    },
}

/// `raftkv agent`'s settings. Each comes from the command line, else from
/// its `RAFTKV_*` environment variable, else from the `--config` file, else
/// its default (see `cli::config`).
#[derive(Args, serde::Serialize)]
pub struct AgentArgs {
    /// A TOML file of settings, named like the flags (`http_addr =
    /// "127.0.0.1:8001"`, `join = ["..."]`, `bootstrap = true`); flags and
    /// environment variables win over it.
    #[arg(long, env = "RAFTKV_CONFIG", value_name = "FILE")]
    #[serde(skip)]
    pub config: Option<PathBuf>,
    /// Print the settings in force (from flags, environment and file) as
    /// TOML, and exit.
    #[arg(long)]
    #[serde(skip)]
    pub print_config: bool,
    /// This node's id (a positive integer, unique in the cluster).
    #[arg(long, env = "RAFTKV_ID")]
    pub id: u64,
    /// Where the HTTP API listens.
    #[arg(long, env = "RAFTKV_HTTP_ADDR")]
    pub http_addr: SocketAddr,
    /// Where raft and internal RPCs listen; other nodes connect here, so it must
    /// be an address they can reach (not 0.0.0.0).
    #[arg(long, env = "RAFTKV_RAFT_ADDR")]
    pub raft_addr: SocketAddr,
    /// Where this node keeps its log, state and snapshots (its own: a data
    /// dir that belongs to another node id is refused).
    #[arg(long, env = "RAFTKV_DATA_DIR")]
    pub data_dir: PathBuf,
    /// Start a new cluster with this node as its only voter.
    #[arg(long, env = "RAFTKV_BOOTSTRAP", conflicts_with_all = ["join", "retry_join", "bootstrap_expect"])]
    pub bootstrap: bool,
    /// Address of a member to join through: its raft address, or its gossip
    /// address (--serf-addr) when this node gossips too (repeat to try
    /// several; given up after 30 s).
    #[arg(long, env = "RAFTKV_JOIN", value_delimiter = ',')]
    pub join: Vec<String>,
    /// Like --join, but tried until a member answers.
    #[arg(long, env = "RAFTKV_RETRY_JOIN", value_delimiter = ',')]
    pub retry_join: Vec<String>,
    /// Where gossip (SWIM over UDP) listens: members find each other and
    /// each other's failures through it. It must be reachable by the others.
    #[arg(long, env = "RAFTKV_SERF_ADDR")]
    pub serf_addr: Option<SocketAddr>,
    /// Found a new cluster once this many servers without a cluster have
    /// found each other by gossip (all of them started with the same N);
    /// needs --serf-addr.
    #[arg(long, env = "RAFTKV_BOOTSTRAP_EXPECT", requires = "serf_addr")]
    pub bootstrap_expect: Option<usize>,
    /// Gossip: how often this node probes another, in milliseconds.
    #[arg(long, default_value_t = 1000, env = "RAFTKV_GOSSIP_PROBE_MS")]
    pub gossip_probe_ms: u64,
    /// Gossip: how long a suspect has to answer before it is declared down.
    #[arg(long, default_value_t = 5000, env = "RAFTKV_GOSSIP_SUSPECT_MS")]
    pub gossip_suspect_ms: u64,
    /// Heartbeat interval in milliseconds.
    #[arg(long, default_value_t = 100, env = "RAFTKV_HEARTBEAT_MS")]
    pub heartbeat_ms: u64,
    /// Minimum election timeout in milliseconds (the maximum is twice this).
    #[arg(long, default_value_t = 1000, env = "RAFTKV_ELECTION_TIMEOUT_MS")]
    pub election_timeout_ms: u64,
    /// Timeout of one client request, in milliseconds.
    #[arg(long, default_value_t = 10_000, env = "RAFTKV_REQUEST_TIMEOUT_MS")]
    pub request_timeout_ms: u64,
    /// Autopilot: a server that has not answered the leader for this long
    /// is unhealthy.
    #[arg(long, default_value_t = 500, env = "RAFTKV_LAST_CONTACT_THRESHOLD_MS")]
    pub last_contact_threshold_ms: u64,
    /// Autopilot: a server trailing the leader by more entries is unhealthy,
    /// and a joining one is not caught up.
    #[arg(long, default_value_t = 250, env = "RAFTKV_MAX_TRAILING_LOGS")]
    pub max_trailing_logs: u64,
    /// Autopilot: how long a joining server must stay caught up before it
    /// becomes a voter (and a server healthy to count as stable, or silent
    /// to count as dead). At least twice --election-timeout-ms.
    #[arg(long, default_value_t = 10_000, env = "RAFTKV_SERVER_STABILIZATION_MS")]
    pub server_stabilization_ms: u64,
    /// Autopilot: remove dead servers, never leaving fewer than --min-quorum
    /// voters or fewer healthy voters than a quorum.
    #[arg(long, default_value_t = true, action = clap::ArgAction::Set, env = "RAFTKV_CLEANUP_DEAD_SERVERS")]
    pub cleanup_dead_servers: bool,
    /// Autopilot: the fewest voters dead-server cleanup leaves.
    #[arg(long, default_value_t = 3, env = "RAFTKV_MIN_QUORUM")]
    pub min_quorum: usize,
    /// How long a joining server has to catch up and stay caught up before
    /// the leader gives up and removes it again.
    #[arg(long, default_value_t = 60_000, env = "RAFTKV_JOIN_TIMEOUT_MS")]
    pub join_timeout_ms: u64,
    /// CA certificate(s) (PEM) of the cluster. With --tls-cert and --tls-key:
    /// mutual TLS between nodes (only holders of a certificate of this CA
    /// naming their node id are heard on the raft port) and HTTPS on the API.
    #[arg(long, requires_all = ["tls_cert", "tls_key"], env = "RAFTKV_TLS_CA")]
    pub tls_ca: Option<PathBuf>,
    /// This node's certificate (PEM; `raftkv tls cert create --node ID`).
    #[arg(long, requires = "tls_ca", env = "RAFTKV_TLS_CERT")]
    pub tls_cert: Option<PathBuf>,
    /// This node's private key (PEM).
    #[arg(long, requires = "tls_ca", env = "RAFTKV_TLS_KEY")]
    pub tls_key: Option<PathBuf>,
    /// With TLS: the HTTP API also requires a client certificate of the CA.
    #[arg(long, requires = "tls_ca", env = "RAFTKV_HTTP_REQUIRE_CLIENT_CERT")]
    pub http_require_client_cert: bool,
    /// Token file (JSON) of the HTTP API; requests then need a bearer token
    /// whose role (read, write, admin) allows them. Reloaded when it changes
    /// and on SIGHUP.
    #[arg(long, env = "RAFTKV_TOKENS")]
    pub tokens: Option<PathBuf>,
    /// Gossip encryption key: 32 random bytes, base64 (`raftkv keygen`);
    /// every member needs the same.
    #[arg(long, env = "RAFTKV_ENCRYPT", hide_env_values = true)]
    #[serde(serialize_with = "hidden")]
    pub encrypt: Option<String>,
    /// Open connections per listener (HTTP, raft), all clients together.
    #[arg(long, default_value_t = 4096, env = "RAFTKV_MAX_CONNECTIONS")]
    pub max_connections: usize,
    /// Open connections per client IP address and listener.
    #[arg(long, default_value_t = 1024, env = "RAFTKV_MAX_CONNECTIONS_PER_IP")]
    pub max_connections_per_ip: usize,
    /// HTTP: a request's head must arrive within this many milliseconds.
    #[arg(long, default_value_t = 10_000, env = "RAFTKV_HTTP_HEADER_TIMEOUT_MS")]
    pub http_header_timeout_ms: u64,
    /// HTTP: a connection without traffic this long is closed.
    #[arg(long, default_value_t = 120_000, env = "RAFTKV_HTTP_IDLE_TIMEOUT_MS")]
    pub http_idle_timeout_ms: u64,
    /// Largest backup upload taken by POST /api/v1/snapshot, in bytes.
    #[arg(long, default_value_t = 1 << 30, env = "RAFTKV_MAX_UPLOAD_BYTES")]
    pub max_upload_bytes: u64,
    /// A backup upload must arrive within this many milliseconds.
    #[arg(long, default_value_t = 600_000, env = "RAFTKV_UPLOAD_TIMEOUT_MS")]
    pub upload_timeout_ms: u64,
    /// Free space the data dir keeps for the log, in bytes: an upload, or a
    /// restore's log, that would leave less is refused (507, nothing restored).
    #[arg(long, default_value_t = 256 << 20, env = "RAFTKV_DISK_RESERVE_BYTES")]
    pub disk_reserve_bytes: u64,
    /// Record no metrics (`GET /metrics` answers 404).
    #[arg(long, env = "RAFTKV_NO_METRICS")]
    pub no_metrics: bool,
}

#[derive(Args)]
pub struct DemoArgs {
    /// Where the nodes keep their data (kept; rerunning resumes). Default: a
    /// temporary directory removed on exit.
    #[arg(long)]
    pub dir: Option<PathBuf>,
    /// HTTP ports are this and the next two.
    #[arg(long, default_value_t = 8001)]
    pub http_port: u16,
    /// Raft ports are this and the next two.
    #[arg(long, default_value_t = 9001)]
    pub raft_port: u16,
}

#[derive(Args)]
pub struct BenchArgs {
    /// Nodes to load (comma-separated; clients spread over them): HTTP
    /// addresses for raftkv, client addresses for etcd.
    #[arg(long, value_delimiter = ',', default_value = "127.0.0.1:8001")]
    pub target: Vec<String>,
    /// The system under test.
    #[arg(long, value_enum, default_value_t = BenchSystem::Raftkv)]
    pub system: BenchSystem,
    /// Clients, each with one request at a time.
    #[arg(long, default_value_t = 16)]
    pub clients: usize,
    /// Seconds to run (unless --requests is given).
    #[arg(long, default_value_t = 10.0)]
    pub duration: f64,
    /// Stop after this many requests instead of after --duration.
    #[arg(long)]
    pub requests: Option<u64>,
    /// Distinct keys.
    #[arg(long, default_value_t = 1000)]
    pub keys: u64,
    /// Bytes of each value written.
    #[arg(long, default_value_t = 128)]
    pub value_size: usize,
    /// Weights of writes, reads and compare-and-swaps, as write:read:cas.
    #[arg(long, default_value = "100:0:0")]
    pub mix: crate::bench::Mix,
    /// Read consistency of the reads (etcd has no lease reads; stale is its serializable).
    #[arg(long, value_enum, default_value_t)]
    pub consistency: Consistency,
    /// Print only the JSON summary.
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub security: SecurityArgs,
}

#[derive(Clone, Copy, ValueEnum)]
pub enum BenchSystem {
    /// raftkv's HTTP API.
    Raftkv,
    /// etcd's v3 gRPC API.
    Etcd,
}

#[derive(Args)]
pub struct ClientArgs {
    /// HTTP address of one node: host:port, or a URL (http:// or https://);
    /// the same as --endpoints with one endpoint [default: 127.0.0.1:8001].
    #[arg(long, value_name = "ADDR")]
    pub addr: Option<String>,
    /// Print the server's JSON (same as -w json).
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub security: SecurityArgs,
}

/// How a client is let in: TLS and a token.
#[derive(Args, Clone)]
pub struct SecurityArgs {
    /// CA certificate (PEM) the node's certificate must chain to; given, the
    /// CLI speaks HTTPS.
    #[arg(long, env = "RAFTKV_CACERT")]
    pub cacert: Option<PathBuf>,
    /// Client certificate (PEM), for a node that requires one (with --key).
    #[arg(long = "cert", id = "client_cert", env = "RAFTKV_CLIENT_CERT", requires = "client_key")]
    pub cert: Option<PathBuf>,
    /// The client certificate's private key (PEM).
    #[arg(long = "key", id = "client_key", env = "RAFTKV_CLIENT_KEY", requires = "client_cert")]
    pub key: Option<PathBuf>,
    /// Bearer token, for a node started with --tokens.
    #[arg(long, env = "RAFTKV_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
}

impl SecurityArgs {
    pub fn security(&self) -> crate::http_client::ClientSecurity {
        crate::http_client::ClientSecurity {
            cacert: self.cacert.clone(),
            cert: self.cert.clone(),
            key: self.key.clone(),
            token: self.token.clone(),
        }
    }
}

/// A secret, printed as whether it is set.
fn hidden<S: serde::Serializer>(secret: &Option<String>, serializer: S) -> Result<S::Ok, S::Error> {
    match secret {
        Some(_) => serializer.serialize_str("<hidden>"),
        None => serializer.serialize_none(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_need_a_unit_and_must_be_positive() {
        assert_eq!(parse_duration("5s"), Ok(Duration::from_secs(5)));
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("1.5s"), Ok(Duration::from_millis(1500)));
        assert_eq!(parse_duration("2m"), Ok(Duration::from_secs(120)));
        for bad in ["5", "5x", "s", "0s", "-1s", "1e400s", ""] {
            assert!(parse_duration(bad).is_err(), "{bad:?}");
        }
    }
}
