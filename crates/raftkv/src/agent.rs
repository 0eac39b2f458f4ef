//! One raftkv server process (`raftkv agent`): opens the data directory,
//! bootstraps, joins or resumes, and serves the raft transport and internal
//! RPCs on the raft address and the HTTP API on the HTTP address.
//!
//! What owns what: `Agent` holds the `Raft` handle, the replicated `Kv` state,
//! the address book (persisted in the stable store under `peers`) and the
//! clients to other nodes' internal service. HTTP handlers (`http.rs`) and the
//! internal service (below) both go through it.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::{mpsc, oneshot};

use raftkv_raft::storage::{FileStableStore, LogStore, StableStore, Wal, WalOptions};
use raftkv_raft::transport::grpc::{AddressBook, GrpcTransport, Identity, RaftService};
use raftkv_raft::{Config, NodeId, Raft, RaftError};
use tokio::net::TcpListener;
use tokio_stream::wrappers::TcpListenerStream;
use tonic::transport::{Channel, Endpoint};

use crate::store::{Command, Kv, Outcome, Peer};

pub mod proto {
    tonic::include_proto!("raftkv.internal.v1");
}

use proto::internal_client::InternalClient;

pub const PROTOCOL_VERSION: u32 = 1;
const CLUSTER_ID_KEY: &str = "raftkv.cluster_id";
pub(crate) const PEERS_KEY: &str = "raftkv.peers";

#[derive(Clone, Debug)]
pub struct AgentConfig {
    pub id: u64,
    pub http_addr: SocketAddr,
    pub raft_addr: SocketAddr,
    pub data_dir: PathBuf,
    pub bootstrap: bool,
    pub join: Vec<String>,
    pub raft: Config,
    pub limits: Limits,
    pub request_timeout: Duration,
}

#[derive(Clone, Copy, Debug)]
pub struct Limits {
    pub max_key_bytes: usize,
    pub max_value_bytes: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits { max_key_bytes: 4 << 10, max_value_bytes: 1 << 20 }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    #[error("{0}")]
    Config(String),
    #[error("storage in {dir}: {source}")]
    Storage { dir: PathBuf, source: raftkv_raft::storage::StorageError },
    #[error("raft: {0}")]
    Raft(#[from] RaftError),
    #[error("cannot listen on {addr}: {source}")]
    Listen { addr: SocketAddr, source: std::io::Error },
    #[error("join failed: {0}")]
    Join(String),
}

/// A running agent.
pub struct Agent {
    pub id: NodeId,
    pub config: AgentConfig,
    pub cluster_id: String,
    pub raft: Raft,
    pub kv: Kv,
    pub book: AddressBook,
    clients: Mutex<BTreeMap<String, InternalClient<Channel>>>,
    /// One batching forwarder per leader address (see `forward_batches`).
    forwarders: Mutex<BTreeMap<String, mpsc::UnboundedSender<Forward>>>,
    tasks: Mutex<Vec<tokio::task::JoinHandle<()>>>,
    /// Held while the agent runs, so that offline tools refuse the data dir.
    _lock: std::fs::File,
    /// Held by the restore this node coordinates (one at a time).
    pub(crate) restoring: Arc<tokio::sync::Mutex<()>>,
}

/// Takes the data dir's lock (`LOCK`, an advisory file lock the OS releases
/// when the process ends, even by SIGKILL).
pub fn lock_data_dir(dir: &std::path::Path) -> Result<std::fs::File, AgentError> {
    let path = dir.join("LOCK");
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .map_err(|e| AgentError::Config(format!("cannot open {}: {e}", path.display())))?;
    match file.try_lock() {
        Ok(()) => Ok(file),
        Err(std::fs::TryLockError::WouldBlock) => Err(AgentError::Config(format!(
            "{} is in use by a running raftkv agent (lock held on {})",
            dir.display(),
            path.display()
        ))),
        Err(std::fs::TryLockError::Error(e)) => Err(AgentError::Config(format!("cannot lock {}: {e}", path.display()))),
    }
}

fn storage(dir: &std::path::Path) -> impl Fn(raftkv_raft::storage::StorageError) -> AgentError + '_ {
    move |source| AgentError::Storage { dir: dir.to_path_buf(), source }
}

fn new_cluster_id() -> String {
    let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_nanos());
    format!("{:016x}{:08x}", nanos as u64, std::process::id())
}

impl Agent {
    /// Starts the agent; returns once it serves (a joining node: once it joined).
    pub async fn start(config: AgentConfig) -> Result<Arc<Agent>, AgentError> {
        if config.raft_addr.ip().is_unspecified() {
            return Err(AgentError::Config(format!(
                "--raft-addr {}: local bind address is not advertisable (give an address other nodes can reach)",
                config.raft_addr
            )));
        }
        if config.id == 0 {
            return Err(AgentError::Config("--id must be a positive integer".to_string()));
        }
        let dir = config.data_dir.clone();
        std::fs::create_dir_all(&dir)
            .map_err(|e| AgentError::Config(format!("cannot create data dir {}: {e}", dir.display())))?;
        let lock = lock_data_dir(&dir)?;
        crate::backup::remove_stale_uploads(&dir);
        let log: Arc<dyn LogStore> =
            Arc::new(Wal::open(dir.join("log"), WalOptions::default()).map_err(storage(&dir))?);
        let stable: Arc<dyn StableStore> = Arc::new(FileStableStore::open(dir.join("stable")).map_err(storage(&dir))?);
        let existing = Raft::has_existing_state(log.as_ref(), stable.as_ref())?;
        let id = NodeId(config.id);
        let raft_addr = config.raft_addr.to_string();

        let cluster_id = match stable.get(CLUSTER_ID_KEY).map_err(storage(&dir))? {
            Some(bytes) if existing => String::from_utf8_lossy(&bytes).into_owned(),
            _ if existing => {
                return Err(AgentError::Config(format!("{} has raft state but no cluster id", dir.display())))
            }
            _ if config.bootstrap => {
                let cluster_id = new_cluster_id();
                Raft::bootstrap_cluster(log.as_ref(), stable.as_ref(), [id])?;
                stable.set(CLUSTER_ID_KEY, cluster_id.as_bytes()).map_err(storage(&dir))?;
                tracing::info!(%cluster_id, "bootstrapped a new cluster");
                cluster_id
            }
            _ if !config.join.is_empty() => {
                let cluster_id = ask_cluster_id(&config.join).await?;
                stable.set(CLUSTER_ID_KEY, cluster_id.as_bytes()).map_err(storage(&dir))?;
                cluster_id
            }
            _ => {
                return Err(AgentError::Config(format!(
                    "{} holds no raft state: pass --bootstrap to start a new cluster or --join ADDR to join one",
                    dir.display()
                )))
            }
        };

        let book = AddressBook::new();
        if let Some(bytes) = stable.get(PEERS_KEY).map_err(storage(&dir))? {
            let peers: BTreeMap<u64, String> = serde_json::from_slice(&bytes).unwrap_or_default();
            for (peer, address) in peers {
                book.insert(NodeId(peer), &address);
            }
        }
        book.insert(id, &raft_addr);
        {
            let stable = stable.clone();
            book.on_change(move |all| {
                let peers: BTreeMap<u64, &String> = all.iter().map(|(id, a)| (id.0, a)).collect();
                let encoded = serde_json::to_vec(&peers).unwrap_or_default();
                if let Err(error) = stable.set(PEERS_KEY, &encoded) {
                    tracing::warn!(%error, "cannot persist the address book");
                }
            });
        }
        book.insert(id, &raft_addr);

        let identity = Identity { cluster_id: cluster_id.clone(), id, advertise_addr: raft_addr.clone() };
        let transport = Arc::new(GrpcTransport::new(identity.clone(), book.clone()));
        let kv = Kv::default();
        let machine = {
            let book = book.clone();
            kv.state_machine(move |peer, record: &Peer| {
                book.insert(NodeId(peer), &record.raft_addr);
            })
        };
        let snapshots: Arc<dyn raftkv_raft::storage::SnapshotStore> =
            Arc::new(raftkv_raft::storage::FileSnapshotStore::open(dir.join("snapshots"), 2).map_err(storage(&dir))?);
        let raft = Raft::new(config.raft.clone(), machine, log, stable, snapshots, transport)?;

        let raft_listener = TcpListener::bind(config.raft_addr)
            .await
            .map_err(|source| AgentError::Listen { addr: config.raft_addr, source })?;
        let http_listener = TcpListener::bind(config.http_addr)
            .await
            .map_err(|source| AgentError::Listen { addr: config.http_addr, source })?;

        let agent = Arc::new(Agent {
            id,
            config: config.clone(),
            cluster_id,
            raft: raft.clone(),
            kv,
            book: book.clone(),
            clients: Mutex::new(BTreeMap::new()),
            forwarders: Mutex::new(BTreeMap::new()),
            tasks: Mutex::new(Vec::new()),
            _lock: lock,
            restoring: Arc::new(tokio::sync::Mutex::new(())),
        });

        let raft_service = RaftService::new(identity, raft.inbox(), book).into_server();
        let internal = proto::internal_server::InternalServer::new(InternalService { agent: agent.clone() })
            .max_decoding_message_size(MAX_INTERNAL_MESSAGE);
        let grpc = tokio::spawn(async move {
            let served = tonic::transport::Server::builder()
                .add_service(raft_service)
                .add_service(internal)
                .serve_with_incoming(nodelay(TcpListenerStream::new(raft_listener)))
                .await;
            if let Err(error) = served {
                tracing::error!(%error, "raft server stopped");
            }
        });
        let router = crate::http::router(agent.clone());
        let http = tokio::spawn(async move {
            use axum::serve::ListenerExt;
            // Answers leave at once, not after a delayed ACK (Nagle).
            let http_listener = http_listener.tap_io(|tcp| {
                let _ = tcp.set_nodelay(true);
            });
            if let Err(error) = axum::serve(http_listener, router).await {
                tracing::error!(%error, "HTTP server stopped");
            }
        });
        let register = tokio::spawn(register_self(agent.clone()));
        // A node that failed for good stops serving at once (the HTTP API
        // also refuses every request, on connections already open too); the
        // process owner decides what comes next (`raftkv agent` exits).
        let serving = [grpc.abort_handle(), http.abort_handle()];
        let failed = {
            let raft = raft.clone();
            tokio::spawn(async move {
                let reason = raft.failed().await;
                tracing::error!(%id, %reason, "the raft node failed and stopped; this node stops serving");
                for task in serving {
                    task.abort();
                }
            })
        };
        agent.tasks.lock().unwrap_or_else(|p| p.into_inner()).extend([grpc, http, register, failed]);

        if !existing && !config.bootstrap {
            agent.join(&config.join).await?;
        }
        tracing::info!(id = %agent.id, http = %config.http_addr, raft = %config.raft_addr, "agent serving");
        Ok(agent)
    }

    /// Resolves with the reason once the raft node stopped for good because it
    /// cannot go on (a storage failure, say); by then this node no longer
    /// serves. Never resolves while it runs or after a clean shutdown.
    pub async fn failed(&self) -> String {
        self.raft.failed().await
    }

    /// Stops serving and shuts the raft node down.
    pub async fn shutdown(&self) {
        for task in self.tasks.lock().unwrap_or_else(|p| p.into_inner()).drain(..) {
            task.abort();
        }
        self.raft.shutdown().await;
    }

    fn header(&self) -> proto::Header {
        proto::Header { protocol_version: PROTOCOL_VERSION, cluster_id: self.cluster_id.clone(), from: self.id.0 }
    }

    fn client(&self, address: &str) -> Result<InternalClient<Channel>, tonic::Status> {
        let mut clients = self.clients.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(client) = clients.get(address) {
            return Ok(client.clone());
        }
        let client = InternalClient::new(internal_endpoint(address)?.connect_lazy())
            .max_decoding_message_size(MAX_INTERNAL_MESSAGE)
            .max_encoding_message_size(MAX_INTERNAL_MESSAGE);
        clients.insert(address.to_string(), client.clone());
        Ok(client)
    }

    /// The forwarder to the leader at `address`, started on first use.
    fn forwarder(&self, address: &str) -> Result<mpsc::UnboundedSender<Forward>, tonic::Status> {
        let mut forwarders = self.forwarders.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(forwarder) = forwarders.get(address).filter(|f| !f.is_closed()) {
            return Ok(forwarder.clone());
        }
        let target = ForwardTarget {
            address: address.to_string(),
            endpoint: internal_endpoint(address)?,
            max_message: MAX_INTERNAL_MESSAGE,
            header: self.header(),
            timeout: self.config.request_timeout,
        };
        let (tx, rx) = mpsc::unbounded_channel();
        tokio::spawn(forward_batches(target, rx));
        forwarders.insert(address.to_string(), tx.clone());
        Ok(tx)
    }

    /// The leader's raft address, if a leader is known.
    pub fn leader_addr(&self) -> Option<(NodeId, String)> {
        let leader = self.raft.leader().leader?;
        Some((leader, self.book.get(leader)?))
    }

    /// Runs a write: here if this node leads, else on the leader (one hop).
    pub async fn write(&self, command: Command) -> Result<(raftkv_raft::LogIndex, Outcome), WriteError> {
        let timeout = self.config.request_timeout;
        let (index, response) = match self.raft.leader().leader {
            Some(leader) if leader == self.id => self.raft.apply(command.encode(), timeout).await?,
            Some(leader) => {
                let address = self.book.get(leader).ok_or(WriteError::NoLeader)?;
                let forwarder = self.forwarder(&address).map_err(|s| WriteError::NotSent(s.message().to_string()))?;
                let (reply, answer) = oneshot::channel();
                let forward = Forward { command: command.encode(), queued: std::time::Instant::now(), reply };
                if forwarder.send(forward).is_err() {
                    return Err(WriteError::Internal("the write forwarder stopped".into()));
                }
                // The forwarder answers within about two timeouts (queued, then sent);
                // this bound only guards against a forwarder that never does.
                let bound = 2 * timeout + Duration::from_secs(2);
                match tokio::time::timeout(bound, answer).await {
                    Ok(Ok(forwarded)) => forwarded?,
                    Ok(Err(_)) => {
                        let status = tonic::Status::unknown("the forwarder dropped the write in flight");
                        return Err(WriteError::Unknown(status));
                    }
                    Err(_) => {
                        let status = tonic::Status::deadline_exceeded("no answer from the write forwarder");
                        return Err(WriteError::Unknown(status));
                    }
                }
            }
            None => return Err(WriteError::NoLeader),
        };
        let outcome = Outcome::decode(&response).map_err(WriteError::Internal)?;
        Ok((index, outcome))
    }

    async fn join(&self, targets: &[String]) -> Result<(), AgentError> {
        let request = proto::JoinRequest {
            header: Some(self.header()),
            id: self.id.0,
            raft_addr: self.config.raft_addr.to_string(),
            http_addr: self.config.http_addr.to_string(),
        };
        let mut last_error = String::from("no --join address given");
        for attempt in 0..30 {
            for target in targets {
                let client = self.client(target).map_err(|s| AgentError::Join(s.message().to_string()));
                let mut client = client?;
                let mut call = tonic::Request::new(request.clone());
                call.set_timeout(Duration::from_secs(10));
                match client.join(call).await {
                    Ok(response) => {
                        tracing::info!(via = %target, index = response.into_inner().index, "joined the cluster");
                        return Ok(());
                    }
                    Err(status) => {
                        last_error = format!("{target}: {}", status.message());
                        tracing::warn!(attempt, error = %last_error, "join attempt failed");
                    }
                }
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
        Err(AgentError::Join(last_error))
    }
}

/// Accepted connections with Nagle's algorithm off: raft acknowledgements and
/// forwarded answers are small writes that must not wait for a delayed ACK
/// (about 40 ms on Linux).
fn nodelay(incoming: TcpListenerStream) -> impl tokio_stream::Stream<Item = std::io::Result<tokio::net::TcpStream>> {
    tokio_stream::StreamExt::map(incoming, |accepted| {
        if let Ok(stream) = &accepted {
            let _ = stream.set_nodelay(true);
        }
        accepted
    })
}

/// A write on its way to the leader, and where its answer goes.
struct Forward {
    command: bytes::Bytes,
    queued: std::time::Instant,
    reply: oneshot::Sender<Result<(raftkv_raft::LogIndex, bytes::Bytes), WriteError>>,
}

/// Most forwarded batches in flight to one leader; while they are, new writes
/// gather into the next batch.
const FORWARD_IN_FLIGHT: usize = 4;
const FORWARD_BATCH: usize = 1024;
/// Command bytes per forwarded batch (one write larger than this goes alone).
const FORWARD_BATCH_BYTES: usize = 4 << 20;
/// Largest internal gRPC message: a forwarded batch of large writes, or a
/// restore chunk whose JSON escapes blew up.
const MAX_INTERNAL_MESSAGE: usize = 64 << 20;

/// The endpoint of a node's internal service (and raft transport).
fn internal_endpoint(address: &str) -> Result<Endpoint, tonic::Status> {
    Ok(Endpoint::from_shared(format!("http://{address}"))
        .map_err(|e| tonic::Status::invalid_argument(format!("bad address {address}: {e}")))?
        .connect_timeout(FORWARD_CONNECT_TIMEOUT)
        .tcp_nodelay(true))
}

/// How long a forwarder tries to open a connection to the leader.
const FORWARD_CONNECT_TIMEOUT: Duration = Duration::from_secs(1);
/// Bytes an `ApplyBatchRequest` spends besides the commands: the header, and
/// per command a field tag and a length (counted generously).
const FORWARD_HEADER_BYTES: usize = 1024;
const FORWARD_COMMAND_OVERHEAD: usize = 16;

/// The leader a forwarder sends to, and the limits of its calls.
struct ForwardTarget {
    address: String,
    endpoint: Endpoint,
    /// Largest message either way (the request we encode, the reply we decode).
    max_message: usize,
    header: proto::Header,
    timeout: Duration,
}

/// The forwarder's connection to the leader, opened explicitly (so that a
/// write is sent only over a connection known to be up) and forgotten after
/// any failure of a call on it (so that the next batch connects explicitly
/// again instead of letting the channel reconnect behind the request).
type Connection = Arc<Mutex<Option<(u64, InternalClient<Channel>)>>>;

/// Sends the writes that queue up for one leader as `ApplyBatch` calls: a
/// follower under load forwards one call per batch, not one per write.
///
/// Outcomes: a write that was never sent (it cannot fit a message, waited a
/// whole timeout for a slot, or no connection could be opened) and one the
/// leader refused before proposing it are definite failures; once a request
/// has left, any other failure (a broken connection, a reply that cannot be
/// read, a timeout) leaves its outcome unknown.
async fn forward_batches(target: ForwardTarget, mut queue: mpsc::UnboundedReceiver<Forward>) {
    let ForwardTarget { address, endpoint, max_message, header, timeout } = target;
    let slots = Arc::new(tokio::sync::Semaphore::new(FORWARD_IN_FLIGHT));
    let connection: Connection = Arc::new(Mutex::new(None));
    let mut connections = 0u64;
    let budget = FORWARD_BATCH_BYTES.min(max_message.saturating_sub(FORWARD_HEADER_BYTES));
    // A write that did not fit the last batch opens the next.
    let mut carried: Option<Forward> = None;
    loop {
        let Ok(slot) = slots.clone().acquire_owned().await else { return };
        let first = match carried.take() {
            Some(first) => first,
            None => match queue.recv().await {
                Some(first) => first,
                None => return,
            },
        };
        // One write too large for any message is refused unsent.
        if first.command.len() + FORWARD_COMMAND_OVERHEAD > budget.max(1) {
            let message = format!(
                "a command of {} bytes cannot fit an internal message (at most {max_message} bytes); it was not sent",
                first.command.len()
            );
            let _ = first.reply.send(Err(WriteError::TooLarge(message)));
            continue;
        }
        let mut bytes = first.command.len() + FORWARD_COMMAND_OVERHEAD;
        let mut batch = vec![first];
        while batch.len() < FORWARD_BATCH {
            match queue.try_recv() {
                Ok(next) if bytes + next.command.len() + FORWARD_COMMAND_OVERHEAD > budget => {
                    carried = Some(next);
                    break;
                }
                Ok(next) => {
                    bytes += next.command.len() + FORWARD_COMMAND_OVERHEAD;
                    batch.push(next);
                }
                Err(_) => break,
            }
        }
        // Writes that waited a whole timeout for a slot (the leader is slow or
        // gone) are refused unsent: a definite failure the client may retry.
        let (stale, fresh): (Vec<Forward>, Vec<Forward>) =
            batch.into_iter().partition(|forward| forward.queued.elapsed() >= timeout);
        for forward in stale {
            let message = "no leader took the write in time; it was not sent".to_string();
            let _ = forward.reply.send(Err(WriteError::NotSent(message)));
        }
        if fresh.is_empty() {
            continue;
        }
        let batch = fresh;
        let open = connection.lock().unwrap_or_else(|p| p.into_inner()).clone();
        let (id, mut client) = match open {
            Some(open) => open,
            None => {
                let connected =
                    tokio::time::timeout(FORWARD_CONNECT_TIMEOUT + Duration::from_millis(100), endpoint.connect())
                        .await;
                let error = match connected {
                    Ok(Ok(channel)) => {
                        connections += 1;
                        let client = InternalClient::new(channel)
                            .max_decoding_message_size(max_message)
                            .max_encoding_message_size(max_message);
                        *connection.lock().unwrap_or_else(|p| p.into_inner()) = Some((connections, client.clone()));
                        None
                    }
                    Ok(Err(error)) => Some(error.to_string()),
                    Err(_) => Some(format!("no connection within {FORWARD_CONNECT_TIMEOUT:?}")),
                };
                match error {
                    None => connection.lock().unwrap_or_else(|p| p.into_inner()).clone().expect("just stored"),
                    Some(error) => {
                        tracing::debug!(leader = %address, %error, "cannot connect to the leader");
                        for forward in batch {
                            let message =
                                format!("cannot connect to the leader at {address} ({error}); it was not sent");
                            let _ = forward.reply.send(Err(WriteError::NotSent(message)));
                        }
                        continue;
                    }
                }
            }
        };
        let (header, connection) = (header.clone(), connection.clone());
        tokio::spawn(async move {
            let _slot = slot;
            // Forgets this connection (not a newer one) after a failure on it.
            let forget = || {
                let mut open = connection.lock().unwrap_or_else(|p| p.into_inner());
                if open.as_ref().is_some_and(|(open, _)| *open == id) {
                    *open = None;
                }
            };
            let commands = batch.iter().map(|f| f.command.clone()).collect();
            let mut request = tonic::Request::new(proto::ApplyBatchRequest { header: Some(header), commands });
            request.set_timeout(timeout);
            // The server enforces the deadline; this bounds a dead connection too.
            let sent = tokio::time::timeout(timeout + Duration::from_secs(1), client.apply_batch(request)).await;
            let results = match sent {
                Ok(Ok(response)) => response.into_inner().results,
                Ok(Err(status)) => {
                    let failure = classify_call_failure(status);
                    if !matches!(failure, WriteError::Refused(_)) {
                        forget();
                    }
                    for forward in batch {
                        let _ = forward.reply.send(Err(failure.duplicate()));
                    }
                    return;
                }
                Err(_) => {
                    forget();
                    for forward in batch {
                        let status = tonic::Status::deadline_exceeded("the leader did not answer in time");
                        let _ = forward.reply.send(Err(WriteError::Unknown(status)));
                    }
                    return;
                }
            };
            let mut results = results.into_iter();
            for forward in batch {
                let answer = match results.next() {
                    Some(result) if result.error_code == 0 => {
                        Ok((raftkv_raft::LogIndex(result.index), result.response))
                    }
                    Some(result) => Err(classify_result_failure(tonic::Status::new(
                        tonic::Code::from(result.error_code),
                        result.error_message,
                    ))),
                    None => {
                        Err(WriteError::Unknown(tonic::Status::unknown("the leader sent fewer results than writes")))
                    }
                };
                let _ = forward.reply.send(answer);
            }
        });
    }
}

/// Why a write failed, to map onto an HTTP status.
#[derive(Debug, thiserror::Error)]
pub enum WriteError {
    #[error("{0}")]
    Raft(#[from] RaftError),
    #[error("no leader is known")]
    NoLeader,
    /// The leader refused the forwarded write before proposing it.
    #[error("the leader refused the write: {}", .0.message())]
    Refused(tonic::Status),
    /// The write was never sent to the leader (no connection could be opened,
    /// or it waited too long for one): not carried out, retry.
    #[error("{0}")]
    NotSent(String),
    /// The write can never fit an internal message: not carried out.
    #[error("{0}")]
    TooLarge(String),
    /// The forwarded write may or may not have been applied (the call failed or
    /// timed out after it left, or leadership moved after it was proposed).
    #[error("outcome unknown: {}", .0.message())]
    Unknown(tonic::Status),
    #[error("{0}")]
    Internal(String),
}

impl WriteError {
    /// The same failure, for each write of a batch.
    fn duplicate(&self) -> WriteError {
        let copy = |status: &tonic::Status| {
            tonic::Status::with_metadata(status.code(), status.message(), status.metadata().clone())
        };
        match self {
            WriteError::Raft(error) => WriteError::Internal(error.to_string()),
            WriteError::NoLeader => WriteError::NoLeader,
            WriteError::Refused(status) => WriteError::Refused(copy(status)),
            WriteError::Unknown(status) => WriteError::Unknown(copy(status)),
            WriteError::NotSent(message) => WriteError::NotSent(message.clone()),
            WriteError::TooLarge(message) => WriteError::TooLarge(message.clone()),
            WriteError::Internal(message) => WriteError::Internal(message.clone()),
        }
    }
}

/// Metadata on the statuses with which a node refuses an internal call before
/// doing anything (bad header, not the leader): a client tells them from the
/// statuses its own transport makes up (tonic maps I/O errors onto codes such
/// as `Unavailable` or `InvalidArgument`), which say nothing of the outcome.
const REFUSED_KEY: &str = "raftkv-refused";

/// A refusal made before anything was done (see `REFUSED_KEY`).
fn refusal(code: tonic::Code, message: impl Into<String>) -> tonic::Status {
    let mut metadata = tonic::metadata::MetadataMap::new();
    metadata.insert(REFUSED_KEY, tonic::metadata::MetadataValue::from_static("1"));
    tonic::Status::with_metadata(code, message, metadata)
}

/// Whether a failed `ApplyBatch` call definitely did not apply its writes.
/// Only the leader's own refusals (marked, see `REFUSED_KEY`) are definite,
/// and a call that failed because the channel could not reconnect (it never
/// left); anything else may have happened after the request left: a broken
/// connection, a reply too large to decode, a timeout. Outcome unknown.
fn classify_call_failure(status: tonic::Status) -> WriteError {
    if status.metadata().get(REFUSED_KEY).is_some() {
        return WriteError::Refused(status);
    }
    let mut source = std::error::Error::source(&status);
    while let Some(error) = source {
        if error.downcast_ref::<tonic::ConnectError>().is_some() {
            return WriteError::NotSent(format!("cannot reach the leader ({}); it was not sent", status.message()));
        }
        source = error.source();
    }
    WriteError::Unknown(status)
}

/// Whether one write the leader answered failed definitely: it came in a
/// reply, so its code is the leader's own. `Unavailable` (not the leader, or
/// the node failed), `FailedPrecondition` (refused) and `InvalidArgument`
/// (undecodable) are refusals before proposing; `Unknown` (leadership lost or
/// the node stopped after proposing), `DeadlineExceeded` and anything else
/// leave the outcome unknown.
fn classify_result_failure(status: tonic::Status) -> WriteError {
    match status.code() {
        tonic::Code::FailedPrecondition | tonic::Code::InvalidArgument | tonic::Code::Unavailable => {
            WriteError::Refused(status)
        }
        _ => WriteError::Unknown(status),
    }
}

async fn ask_cluster_id(targets: &[String]) -> Result<String, AgentError> {
    let mut last_error = String::new();
    for attempt in 0..30 {
        for target in targets {
            match InternalClient::connect(format!("http://{target}")).await {
                Ok(mut client) => match client.cluster_info(proto::ClusterInfoRequest {}).await {
                    Ok(info) => return Ok(info.into_inner().cluster_id),
                    Err(status) => last_error = format!("{target}: {}", status.message()),
                },
                Err(error) => last_error = format!("{target}: {error}"),
            }
            tracing::warn!(attempt, error = %last_error, "cannot reach a member to join");
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    Err(AgentError::Join(format!("no member answered: {last_error}")))
}

/// Once this node leads, records its own addresses in the replicated peer list
/// (a bootstrapped node has no one to register it).
async fn register_self(agent: Arc<Agent>) {
    let mut leader = agent.raft.leader_watch();
    loop {
        let leads = leader.borrow().leader == Some(agent.id);
        let registered = agent.kv.read().peers.contains_key(&agent.id.0);
        if registered {
            return;
        }
        if leads {
            let command = Command::RegisterPeer {
                id: agent.id.0,
                raft_addr: agent.config.raft_addr.to_string(),
                http_addr: agent.config.http_addr.to_string(),
            };
            if agent.raft.apply(command.encode(), agent.config.request_timeout).await.is_ok() {
                return;
            }
        }
        if tokio::time::timeout(Duration::from_secs(1), leader.changed()).await.is_ok_and(|r| r.is_err()) {
            return;
        }
    }
}

struct InternalService {
    agent: Arc<Agent>,
}

impl InternalService {
    fn check(&self, header: Option<&proto::Header>) -> Result<(), tonic::Status> {
        let Some(header) = header else {
            return Err(refusal(tonic::Code::FailedPrecondition, "internal RPC without a header"));
        };
        if header.protocol_version != PROTOCOL_VERSION {
            return Err(refusal(
                tonic::Code::FailedPrecondition,
                format!(
                    "protocol version mismatch: peer speaks {}, node {} speaks {PROTOCOL_VERSION}",
                    header.protocol_version, self.agent.id
                ),
            ));
        }
        if !header.cluster_id.is_empty() && header.cluster_id != self.agent.cluster_id {
            return Err(refusal(
                tonic::Code::FailedPrecondition,
                format!(
                    "cluster id mismatch: peer {} belongs to cluster {:?}, node {} to cluster {:?}",
                    header.from, header.cluster_id, self.agent.id, self.agent.cluster_id
                ),
            ));
        }
        Ok(())
    }

    fn not_leader(&self) -> tonic::Status {
        match self.agent.leader_addr() {
            Some((leader, address)) => {
                refusal(tonic::Code::Unavailable, format!("not the leader; node {leader} at {address} leads"))
            }
            None => refusal(tonic::Code::Unavailable, "no leader is known"),
        }
    }
}

fn failed(status: tonic::Status) -> proto::ApplyResult {
    proto::ApplyResult {
        error_code: status.code() as i32,
        error_message: status.message().to_string(),
        ..Default::default()
    }
}

pub(crate) fn status_of(error: RaftError) -> tonic::Status {
    match error {
        RaftError::NotLeader { leader } => tonic::Status::unavailable(format!(
            "not the leader (leader: {})",
            leader.map_or("unknown".to_string(), |l| l.to_string())
        )),
        RaftError::Timeout(d) => tonic::Status::deadline_exceeded(format!("timed out after {d:?}")),
        // Proposed, then leadership moved or the node stopped: the write may still commit.
        error @ (RaftError::LeadershipLost | RaftError::Stopped { .. }) => tonic::Status::unknown(error.to_string()),
        RaftError::Refused(e) => tonic::Status::failed_precondition(e.to_string()),
        // Not running: the request was not carried out.
        error @ (RaftError::Shutdown | RaftError::Failed { .. }) => tonic::Status::unavailable(error.to_string()),
        // Leadership did not move.
        error @ RaftError::TransferFailed { .. } => tonic::Status::aborted(error.to_string()),
        other => tonic::Status::internal(other.to_string()),
    }
}

#[tonic::async_trait]
impl proto::internal_server::Internal for InternalService {
    async fn apply_batch(
        &self,
        request: tonic::Request<proto::ApplyBatchRequest>,
    ) -> Result<tonic::Response<proto::ApplyBatchResponse>, tonic::Status> {
        let request = request.into_inner();
        self.check(request.header.as_ref())?;
        if self.agent.raft.leader().leader != Some(self.agent.id) {
            return Err(self.not_leader());
        }
        // Undecodable commands are refused one by one; the rest go in together.
        let mut results: Vec<Option<proto::ApplyResult>> = Vec::with_capacity(request.commands.len());
        let mut valid = Vec::with_capacity(request.commands.len());
        for command in request.commands {
            match Command::decode(&command) {
                Ok(_) => {
                    results.push(None);
                    valid.push(command);
                }
                Err(reason) => results.push(Some(failed(tonic::Status::invalid_argument(reason)))),
            }
        }
        let mut applied = self.agent.raft.apply_each(valid, self.agent.config.request_timeout).await.into_iter();
        let results = results
            .into_iter()
            .map(|result| {
                result.unwrap_or_else(|| match applied.next() {
                    Some(Ok((index, response))) => {
                        proto::ApplyResult { index: index.0, response, ..Default::default() }
                    }
                    Some(Err(error)) => failed(status_of(error)),
                    None => failed(tonic::Status::internal("no result for a proposed command")),
                })
            })
            .collect();
        Ok(tonic::Response::new(proto::ApplyBatchResponse { results }))
    }

    async fn cluster_info(
        &self,
        _request: tonic::Request<proto::ClusterInfoRequest>,
    ) -> Result<tonic::Response<proto::ClusterInfoResponse>, tonic::Status> {
        let (leader_id, leader_raft_addr) = self.agent.leader_addr().map_or((0, String::new()), |(l, a)| (l.0, a));
        Ok(tonic::Response::new(proto::ClusterInfoResponse {
            cluster_id: self.agent.cluster_id.clone(),
            leader_id,
            leader_raft_addr,
        }))
    }

    async fn join(
        &self,
        request: tonic::Request<proto::JoinRequest>,
    ) -> Result<tonic::Response<proto::JoinResponse>, tonic::Status> {
        let request = request.into_inner();
        self.check(request.header.as_ref())?;
        let index = add_member(&self.agent, request).await?;
        Ok(tonic::Response::new(proto::JoinResponse { index: index.0 }))
    }

    async fn admin(
        &self,
        request: tonic::Request<proto::AdminRequest>,
    ) -> Result<tonic::Response<proto::AdminResponse>, tonic::Status> {
        let request = request.into_inner();
        self.check(request.header.as_ref())?;
        let agent = &self.agent;
        if agent.raft.leader().leader != Some(agent.id) {
            return Err(self.not_leader());
        }
        let timeout = agent.config.request_timeout;
        let index = match request.op {
            Some(proto::admin_request::Op::Remove(id)) => {
                agent.raft.remove_server(NodeId(id), timeout).await.map_err(status_of)?
            }
            Some(proto::admin_request::Op::TransferTo(target)) => {
                transfer(agent, (target != 0).then_some(NodeId(target))).await?;
                raftkv_raft::LogIndex::ZERO
            }
            None => return Err(tonic::Status::invalid_argument("admin request without an operation")),
        };
        Ok(tonic::Response::new(proto::AdminResponse { index: index.0 }))
    }
}

/// Adds a node as a voter: on the leader, record its addresses then add it;
/// elsewhere, ask the leader.
pub(crate) async fn add_member(
    agent: &Agent,
    request: proto::JoinRequest,
) -> Result<raftkv_raft::LogIndex, tonic::Status> {
    if request.id == 0 || request.raft_addr.is_empty() {
        return Err(tonic::Status::invalid_argument("join needs a positive id and a raft address"));
    }
    let timeout = agent.config.request_timeout;
    match agent.raft.leader().leader {
        Some(leader) if leader == agent.id => {
            let register = Command::RegisterPeer {
                id: request.id,
                raft_addr: request.raft_addr.clone(),
                http_addr: request.http_addr.clone(),
            };
            agent.raft.apply(register.encode(), timeout).await.map_err(status_of)?;
            let status = agent.raft.status().await.map_err(status_of)?;
            if status.membership.voters.contains(&NodeId(request.id)) {
                return Ok(status.membership_index);
            }
            agent.raft.add_voter(NodeId(request.id), timeout).await.map_err(status_of)
        }
        Some(_) => {
            let (_, address) = agent.leader_addr().ok_or_else(|| tonic::Status::unavailable("no leader is known"))?;
            let mut client = agent.client(&address)?;
            let forwarded = proto::JoinRequest { header: Some(agent.header()), ..request };
            let mut call = tonic::Request::new(forwarded);
            call.set_timeout(timeout);
            Ok(raftkv_raft::LogIndex(client.join(call).await?.into_inner().index))
        }
        None => Err(tonic::Status::unavailable("no leader is known")),
    }
}

/// Hands leadership to `target`, or to the most up-to-date other voter.
pub(crate) async fn transfer(agent: &Agent, target: Option<NodeId>) -> Result<NodeId, tonic::Status> {
    let status = agent.raft.status().await.map_err(status_of)?;
    let target = match target {
        Some(target) => target,
        None => status
            .membership
            .voters
            .iter()
            .copied()
            .find(|v| *v != agent.id)
            .ok_or_else(|| tonic::Status::failed_precondition("no other voter to hand leadership to"))?,
    };
    agent.raft.leadership_transfer(target).await.map_err(status_of)?;
    Ok(target)
}

/// Asks the leader to run an admin operation (from a follower).
pub(crate) async fn forward_admin(agent: &Agent, op: proto::admin_request::Op) -> Result<u64, tonic::Status> {
    let (_, address) = agent.leader_addr().ok_or_else(|| tonic::Status::unavailable("no leader is known"))?;
    let mut client = agent.client(&address)?;
    let mut call = tonic::Request::new(proto::AdminRequest { header: Some(agent.header()), op: Some(op) });
    call.set_timeout(agent.config.request_timeout);
    Ok(client.admin(call).await?.into_inner().index)
}

#[cfg(test)]
mod tests {
    //! The forwarder against a stand-in leader on loopback: which failures
    //! are definite (not sent, refused) and which leave the outcome unknown.

    use std::sync::atomic::{AtomicUsize, Ordering};

    use super::*;

    /// How the stand-in leader answers `ApplyBatch`.
    #[derive(Clone, Copy)]
    enum Answer {
        /// Applies each command; the response is `reply_bytes` long.
        Apply { reply_bytes: usize },
        /// Refuses the call as a follower does (marked).
        NotLeader,
        /// An unmarked `Unavailable` that reads like a refusal (as a transport
        /// error could): nothing says the request was not carried out.
        Unmarked,
    }

    struct StandIn {
        answer: Answer,
        calls: Arc<AtomicUsize>,
    }

    #[tonic::async_trait]
    impl proto::internal_server::Internal for StandIn {
        async fn apply_batch(
            &self,
            request: tonic::Request<proto::ApplyBatchRequest>,
        ) -> Result<tonic::Response<proto::ApplyBatchResponse>, tonic::Status> {
            self.calls.fetch_add(1, Ordering::SeqCst);
            match self.answer {
                Answer::Apply { reply_bytes } => {
                    let results = (1..=request.into_inner().commands.len() as u64)
                        .map(|index| proto::ApplyResult {
                            index,
                            response: vec![7u8; reply_bytes].into(),
                            ..Default::default()
                        })
                        .collect();
                    Ok(tonic::Response::new(proto::ApplyBatchResponse { results }))
                }
                Answer::NotLeader => Err(refusal(tonic::Code::Unavailable, "not the leader; node 2 at x leads")),
                Answer::Unmarked => Err(tonic::Status::unavailable("not the leader; node 2 at x leads")),
            }
        }

        async fn cluster_info(
            &self,
            _: tonic::Request<proto::ClusterInfoRequest>,
        ) -> Result<tonic::Response<proto::ClusterInfoResponse>, tonic::Status> {
            Err(tonic::Status::unimplemented("stand-in"))
        }

        async fn join(
            &self,
            _: tonic::Request<proto::JoinRequest>,
        ) -> Result<tonic::Response<proto::JoinResponse>, tonic::Status> {
            Err(tonic::Status::unimplemented("stand-in"))
        }

        async fn admin(
            &self,
            _: tonic::Request<proto::AdminRequest>,
        ) -> Result<tonic::Response<proto::AdminResponse>, tonic::Status> {
            Err(tonic::Status::unimplemented("stand-in"))
        }
    }

    /// Serves a stand-in leader; returns its address, its call counter and its task.
    async fn stand_in(answer: Answer) -> (String, Arc<AtomicUsize>, tokio::task::JoinHandle<()>) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap().to_string();
        let calls = Arc::new(AtomicUsize::new(0));
        let service = proto::internal_server::InternalServer::new(StandIn { answer, calls: calls.clone() });
        let task = tokio::spawn(async move {
            let _ = tonic::transport::Server::builder()
                .add_service(service)
                .serve_with_incoming(TcpListenerStream::new(listener))
                .await;
        });
        (address, calls, task)
    }

    /// A forwarder to `address` whose messages hold at most `max_message` bytes.
    fn forwarder(address: &str, max_message: usize) -> mpsc::UnboundedSender<Forward> {
        let target = ForwardTarget {
            address: address.to_string(),
            endpoint: internal_endpoint(address).unwrap(),
            max_message,
            header: proto::Header { protocol_version: PROTOCOL_VERSION, cluster_id: String::new(), from: 1 },
            timeout: Duration::from_secs(5),
        };
        let (tx, rx) = mpsc::unbounded_channel();
        tokio::spawn(forward_batches(target, rx));
        tx
    }

    async fn forward(
        forwarder: &mpsc::UnboundedSender<Forward>,
        command: &[u8],
    ) -> Result<(raftkv_raft::LogIndex, bytes::Bytes), WriteError> {
        let (reply, answer) = oneshot::channel();
        let command = bytes::Bytes::copy_from_slice(command);
        forwarder.send(Forward { command, queued: std::time::Instant::now(), reply }).unwrap();
        answer.await.unwrap()
    }

    /// A port nothing listens on.
    async fn closed_address() -> String {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        listener.local_addr().unwrap().to_string()
    }

    #[tokio::test]
    async fn a_write_that_found_no_connection_was_not_sent() {
        let forwarder = forwarder(&closed_address().await, MAX_INTERNAL_MESSAGE);
        match forward(&forwarder, b"w").await {
            Err(WriteError::NotSent(message)) => assert!(message.contains("not sent"), "{message}"),
            other => panic!("a write that could not connect must be a definite failure, not {other:?}"),
        }
    }

    #[tokio::test]
    async fn a_reply_too_large_to_read_leaves_the_outcome_unknown() {
        let (address, calls, _server) = stand_in(Answer::Apply { reply_bytes: 4096 }).await;
        let forwarder = forwarder(&address, 2048);
        match forward(&forwarder, b"w").await {
            Err(WriteError::Unknown(status)) => {
                assert_eq!(status.code(), tonic::Code::OutOfRange, "{status:?}")
            }
            other => panic!("the leader ran the write; its reply was lost: outcome unknown, not {other:?}"),
        }
        assert_eq!(calls.load(Ordering::SeqCst), 1);
    }

    #[tokio::test]
    async fn a_command_too_large_for_any_message_is_refused_unsent() {
        let (address, calls, _server) = stand_in(Answer::Apply { reply_bytes: 1 }).await;
        let forwarder = forwarder(&address, 2048);
        match forward(&forwarder, &[1u8; 4096]).await {
            Err(WriteError::TooLarge(message)) => assert!(message.contains("not sent"), "{message}"),
            other => panic!("expected a definite refusal, got {other:?}"),
        }
        // Small writes still go, and only they reached the leader.
        assert!(forward(&forwarder, b"w").await.is_ok());
        assert_eq!(calls.load(Ordering::SeqCst), 1);
    }

    #[tokio::test]
    async fn only_the_leaders_marked_refusals_are_definite() {
        let (address, _, _server) = stand_in(Answer::NotLeader).await;
        let marked = forwarder(&address, MAX_INTERNAL_MESSAGE);
        assert!(matches!(forward(&marked, b"w").await, Err(WriteError::Refused(_))));
        let (address, _, _server) = stand_in(Answer::Unmarked).await;
        let unmarked = forwarder(&address, MAX_INTERNAL_MESSAGE);
        assert!(matches!(forward(&unmarked, b"w").await, Err(WriteError::Unknown(_))));
    }

    #[tokio::test]
    async fn after_a_failed_call_the_next_batch_connects_again_and_is_not_sent_if_it_cannot() {
        let (address, calls, server) = stand_in(Answer::Apply { reply_bytes: 4096 }).await;
        let forwarder = forwarder(&address, 2048);
        assert!(matches!(forward(&forwarder, b"w").await, Err(WriteError::Unknown(_))));
        // The leader goes away; the forwarder must not send over a channel
        // that reconnects behind the request.
        server.abort();
        let _ = server.await;
        match forward(&forwarder, b"w").await {
            Err(WriteError::NotSent(message)) => assert!(message.contains("not sent"), "{message}"),
            other => panic!("expected a definite failure, got {other:?}"),
        }
        assert_eq!(calls.load(Ordering::SeqCst), 1);
    }

    #[test]
    fn answered_failures_are_definite_only_for_refusals_before_proposing() {
        for code in [tonic::Code::FailedPrecondition, tonic::Code::InvalidArgument, tonic::Code::Unavailable] {
            assert!(matches!(classify_result_failure(tonic::Status::new(code, "")), WriteError::Refused(_)));
        }
        for code in [tonic::Code::Unknown, tonic::Code::DeadlineExceeded, tonic::Code::Internal] {
            assert!(matches!(classify_result_failure(tonic::Status::new(code, "")), WriteError::Unknown(_)));
        }
        // A node that failed or shut down did not carry the write out.
        let failed = status_of(RaftError::Failed { reason: "disk".into() });
        assert!(matches!(classify_result_failure(failed), WriteError::Refused(_)));
        let stopped = status_of(RaftError::Stopped { reason: "disk".into() });
        assert!(matches!(classify_result_failure(stopped), WriteError::Unknown(_)));
    }
}
