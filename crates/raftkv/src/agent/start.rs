//! Start-up: open the data dir, then bootstrap a new cluster, resume, or
//! (a new node) learn the cluster's id; serve raft and the internal RPC on
//! the raft address. Joining comes after, once the caller serves its API
//! too (`Agent::join_if_new`).

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use raftkv_raft::storage::{FileSnapshotStore, FileStableStore, LogStore, SnapshotStore, StableStore, Wal, WalOptions};
use raftkv_raft::transport::grpc::{AddressBook, ChannelOptions, Channels, GrpcTransport, Identity, RaftService};
use raftkv_raft::transport::listen::{self, ListenTls};
use raftkv_raft::{NodeId, Raft};
use tokio::net::TcpListener;
use tokio::sync::watch;

use crate::agent::config::{AgentConfig, AgentError};
use crate::agent::datadir::{self, storage_error};
use crate::agent::discover::{self, Start};
use crate::agent::gossip::{Gossip, GossipId};
use crate::agent::node::Agent;
use crate::agent::service::InternalService;
use crate::agent::wire::{self, proto, Peers, Sender};
use crate::state::{Kv, Peer};

impl Agent {
    /// Starts the node and serves raft and the internal RPC; a node with no
    /// state and no `--bootstrap` has learnt its cluster's id but is not a
    /// member until `join_if_new`.
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
        config.validate()?;
        // Every listener is bound before the data dir is touched: a node
        // that cannot listen writes nothing.
        let listener = TcpListener::bind(config.raft_addr)
            .await
            .map_err(|source| AgentError::Listen { addr: config.raft_addr, source })?;
        let gossip_socket = match &config.gossip {
            Some(gossip) => Some(
                tokio::net::UdpSocket::bind(gossip.addr)
                    .await
                    .map_err(|source| AgentError::Listen { addr: gossip.addr, source })?,
            ),
            None => None,
        };
        let dir = config.data_dir.clone();
        std::fs::create_dir_all(&dir)
            .map_err(|e| AgentError::Config(format!("cannot create data dir {}: {e}", dir.display())))?;
        let lock = datadir::lock(&dir)?;
        datadir::remove_stale_uploads(&dir);
        let log: Arc<dyn LogStore> =
            Arc::new(Wal::open(datadir::log_dir(&dir), WalOptions::default()).map_err(storage_error(&dir))?);
        let stable: Arc<dyn StableStore> =
            Arc::new(FileStableStore::open(datadir::stable_file(&dir)).map_err(storage_error(&dir))?);
        let existing = Raft::has_existing_state(log.as_ref(), stable.as_ref())?;
        let id = NodeId(config.id);
        check_owner(stable.as_ref(), &dir, id)?;
        let raft_addr = config.raft_addr.to_string();

        // Internal calls (and the probes of discovery) go over mutual TLS too.
        let channels = wire::channels(config.tls.clone());
        let stored = stable.get(datadir::CLUSTER_ID_KEY).map_err(storage_error(&dir))?;
        let stored = stored.map(|bytes| String::from_utf8_lossy(&bytes).into_owned());
        // Gossip starts first: a new node may find its cluster through it.
        let (cluster_tx, cluster_rx) = watch::channel(stored.clone().unwrap_or_default());
        let gossip = match (&config.gossip, gossip_socket) {
            (Some(gossip_config), Some(socket)) => {
                let me = GossipId {
                    node: config.id,
                    gossip_addr: gossip_config.addr,
                    raft_addr: raft_addr.clone(),
                    http_addr: config.http_addr.to_string(),
                    generation: generation(),
                };
                Some(Gossip::start_on(socket, gossip_config, me, cluster_rx))
            }
            _ => None,
        };
        let stop_gossip = |gossip: &Option<(Gossip, tokio::task::JoinHandle<()>)>| {
            if let Some((_, task)) = gossip {
                task.abort();
            }
        };

        let mut founders = Vec::new();
        let mut join_via = config.join.clone();
        let targets: Vec<String> = config.join.iter().chain(&config.retry_join).cloned().collect();
        let cluster_id = match stored {
            Some(cluster_id) if existing => cluster_id,
            _ if existing => {
                stop_gossip(&gossip);
                return Err(AgentError::Config(format!("{} has raft state but no cluster id", dir.display())));
            }
            _ if config.bootstrap => {
                let cluster_id = new_cluster_id();
                // The id first: a crash between the two leaves an id without
                // raft state, which the next start replaces.
                stable.set(datadir::CLUSTER_ID_KEY, cluster_id.as_bytes()).map_err(storage_error(&dir))?;
                Raft::bootstrap_cluster(log.as_ref(), stable.as_ref(), [id])?;
                tracing::info!(%cluster_id, "bootstrapped a new cluster");
                cluster_id
            }
            _ if !targets.is_empty() || config.bootstrap_expect.is_some() => {
                let forever = !config.retry_join.is_empty();
                let handle = gossip.as_ref().map(|(gossip, _)| gossip);
                let found =
                    discover::discover(config.id, &channels, &targets, forever, handle, config.bootstrap_expect).await;
                let cluster_id = match found {
                    Ok(Start::Join { cluster_id, via }) => {
                        join_via = via;
                        cluster_id
                    }
                    Ok(Start::Bootstrap { founders: set }) => {
                        let cluster_id = discover::founders_cluster_id(&set);
                        stable.set(datadir::CLUSTER_ID_KEY, cluster_id.as_bytes()).map_err(storage_error(&dir))?;
                        let voters: Vec<NodeId> = set.iter().map(|f| NodeId(f.node)).collect();
                        Raft::bootstrap_cluster(log.as_ref(), stable.as_ref(), voters.clone())?;
                        tracing::info!(%cluster_id, ?voters, "bootstrapped a new cluster with the servers gossip found");
                        founders = set;
                        cluster_id
                    }
                    Err(error) => {
                        stop_gossip(&gossip);
                        return Err(AgentError::Join(format!("no cluster found: {error}")));
                    }
                };
                stable.set(datadir::CLUSTER_ID_KEY, cluster_id.as_bytes()).map_err(storage_error(&dir))?;
                cluster_id
            }
            _ => {
                stop_gossip(&gossip);
                return Err(AgentError::Config(format!(
                    "{} holds no raft state: pass --bootstrap to start a new cluster, --bootstrap-expect N with \
                     --serf-addr to found one with the servers gossip finds, or --join ADDR to join one",
                    dir.display()
                )));
            }
        };
        cluster_tx.send_replace(cluster_id.clone());

        let book = address_book(stable.clone(), id, &raft_addr).map_err(storage_error(&dir))?;
        let removed = crate::agent::removal::Removed::load(stable.as_ref());
        for id in &removed.removed {
            book.mark_removed(NodeId(*id));
        }
        for founder in &founders {
            book.insert(NodeId(founder.node), &founder.raft_addr);
        }
        let mut identity = Identity::new(cluster_id.clone(), id, raft_addr.clone());
        if config.tls.is_some() {
            identity = identity.requiring_certificates();
        }
        let raft_channels = Channels::new(ChannelOptions { tls: config.tls.clone(), ..ChannelOptions::default() });
        let transport = Arc::new(GrpcTransport::with_channels(identity.clone(), book.clone(), raft_channels));
        let kv = Kv::default();
        let machine = {
            let book = book.clone();
            kv.state_machine(move |peer, record: &Peer| {
                book.insert(NodeId(peer), &record.raft_addr);
            })
        };
        let snapshots: Arc<dyn SnapshotStore> =
            Arc::new(FileSnapshotStore::open(datadir::snapshot_dir(&dir), 2).map_err(storage_error(&dir))?);
        let raft = Raft::new(config.raft_config(), machine, log, stable.clone(), snapshots, transport)?;

        let peers = Peers { sender: Sender { identity: identity.clone() }, channels: channels.clone() };
        let needs_join = !existing && !config.bootstrap && founders.is_empty();
        let mut agent = Agent::new(config, cluster_id, raft.clone(), kv, book.clone(), peers, lock);
        agent.needs_join = needs_join;
        agent.join_via = join_via;
        let gossip_task = gossip.map(|(gossip, task)| {
            agent.gossip = Some(gossip);
            task
        });
        let agent = Arc::new(agent);
        if let Some(task) = gossip_task {
            agent.hold(task);
        }
        if let Some(gossip) = agent.gossip.clone() {
            agent.hold(tokio::spawn(keep_in_touch(gossip, targets, stable.clone())));
        }

        let raft_service = RaftService::new(identity, raft.inbox(), book).into_server();
        let internal = proto::internal_server::InternalServer::new(InternalService::new(agent.clone()))
            .max_decoding_message_size(wire::MAX_MESSAGE);
        let limits = agent.config.raft_listen.clone();
        let tls = match &agent.config.tls {
            Some(tls) => {
                agent.hold(tls.watch(Duration::from_secs(2)));
                ListenTls::Mutual(tls.clone())
            }
            None => ListenTls::None,
        };
        agent.hold(tokio::spawn(async move {
            // Bounded per connection: a peer needs one raft stream and a few
            // calls at a time; a dead connection is found by keepalive.
            let served = tonic::transport::Server::builder()
                .max_concurrent_streams(Some(256))
                .http2_keepalive_interval(Some(Duration::from_secs(10)))
                .http2_keepalive_timeout(Some(Duration::from_secs(20)))
                .tcp_keepalive(Some(Duration::from_secs(60)))
                .add_service(raft_service)
                .add_service(internal)
                .serve_with_incoming(listen::incoming(listener, limits, tls))
                .await;
            if let Err(error) = served {
                tracing::error!(%error, "raft server stopped");
            }
        }));
        agent.hold(tokio::spawn(agent.clone().register_members()));
        agent.hold(tokio::spawn(agent.clone().watch_removal()));
        agent.hold(tokio::spawn(agent.clone().track_removed(stable.clone())));
        agent.hold(tokio::spawn(agent.clone().run_autopilot()));
        agent.hold(tokio::spawn(agent.clone().record_leadership()));
        // A node that failed for good stops serving at once; the process owner
        // decides what comes next (`raftkv agent` exits).
        let failed = agent.clone();
        tokio::spawn(async move {
            let reason = failed.failed().await;
            tracing::error!(id = %failed.id, %reason, "the raft node failed and stopped; this node stops serving");
            failed.stop_serving();
        });
        Ok(agent)
    }

    /// A node that started without state and without `--bootstrap` asks the
    /// cluster to add it; any other returns at once.
    pub async fn join_if_new(&self) -> Result<(), AgentError> {
        if !self.needs_join {
            return Ok(());
        }
        self.join(&self.join_via).await.map_err(AgentError::Join)
    }
}

/// Keeps this node in the gossip: whenever it knows no other live member
/// (just restarted, or cut off for long), it announces itself to its join
/// addresses and to every node it last saw, which it keeps in the stable
/// store.
async fn keep_in_touch(gossip: Gossip, targets: Vec<String>, stable: Arc<dyn StableStore>) {
    let load = |bytes: Vec<u8>| serde_json::from_slice::<Vec<SocketAddr>>(&bytes).unwrap_or_default();
    let mut saved: Vec<SocketAddr> = stable.get(datadir::GOSSIP_PEERS_KEY).ok().flatten().map(load).unwrap_or_default();
    let me = gossip.me().gossip_addr;
    let mut round = 0u64;
    loop {
        let view = gossip.view();
        let mut seen: Vec<SocketAddr> =
            view.members.iter().map(|m| m.id.gossip_addr).filter(|addr| *addr != me).collect();
        seen.sort();
        seen.dedup();
        if !seen.is_empty() && seen != saved {
            match serde_json::to_vec(&seen).map(|bytes| stable.set(datadir::GOSSIP_PEERS_KEY, &bytes)) {
                Ok(Ok(())) => saved = seen,
                Ok(Err(error)) => tracing::debug!(%error, "cannot save the gossip peers"),
                Err(error) => tracing::debug!(%error, "cannot encode the gossip peers"),
            }
        }
        let alone = view.alive().all(|m| m.gossip_addr == me);
        if alone && round.is_multiple_of(2) {
            let named = targets.iter().filter_map(|t| t.parse::<SocketAddr>().ok());
            gossip.announce_all(named.chain(saved.iter().copied()));
        }
        round += 1;
        tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    }
}

/// Grows with each start, so that this start's gossip identity wins over
/// the last one's.
fn generation() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(1, |d| d.as_nanos() as u64).max(1)
}

fn new_cluster_id() -> String {
    let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_nanos());
    format!("{:016x}{:08x}", nanos as u64, std::process::id())
}

/// The address book, loaded from the stable store and saved back on every
/// change (it is how a restarted node finds the others).
fn address_book(
    stable: Arc<dyn StableStore>,
    id: NodeId,
    raft_addr: &str,
) -> Result<AddressBook, raftkv_raft::storage::StorageError> {
    let book = AddressBook::new();
    if let Some(bytes) = stable.get(datadir::PEERS_KEY)? {
        let peers: BTreeMap<u64, String> = serde_json::from_slice(&bytes).unwrap_or_default();
        for (peer, address) in peers {
            book.insert(NodeId(peer), &address);
        }
    }
    book.insert(id, raft_addr);
    book.on_change(move |all| {
        let peers: BTreeMap<u64, &String> = all.iter().map(|(id, a)| (id.0, a)).collect();
        let encoded = serde_json::to_vec(&peers).unwrap_or_default();
        if let Err(error) = stable.set(datadir::PEERS_KEY, &encoded) {
            tracing::warn!(%error, "cannot persist the address book");
        }
    });
    Ok(book)
}

/// Refuses a data dir that belongs to another node: started with another
/// `--id`, a node would take over that node's votes and log. A data dir
/// without an owner yet (new, or from before owners were kept) is this
/// node's from now on.
fn check_owner(stable: &dyn StableStore, dir: &std::path::Path, id: NodeId) -> Result<(), AgentError> {
    let stored = stable.get(datadir::NODE_ID_KEY).map_err(storage_error(dir))?;
    match stored {
        Some(bytes) => {
            let owner = std::str::from_utf8(&bytes).ok().and_then(|text| text.parse::<u64>().ok());
            match owner {
                Some(owner) if owner == id.0 => Ok(()),
                Some(owner) => Err(AgentError::Config(format!(
                    "{} belongs to node {owner}, not to --id {id}: give each node its own data dir",
                    dir.display()
                ))),
                None => Err(AgentError::Config(format!(
                    "{}: the stored node id is unreadable ({} bytes)",
                    dir.display(),
                    bytes.len()
                ))),
            }
        }
        None => stable.set(datadir::NODE_ID_KEY, id.0.to_string().as_bytes()).map_err(storage_error(dir)),
    }
}
