//! Raft nodes talking gRPC over loopback, each with its own server: replication
//! and failover; the wire header checked on real calls (other clusters,
//! versions, receivers, malformed metadata), the sender's address learned;
//! the channel cache.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use raftkv_raft::storage::{MemLogStore, MemSnapshotStore, MemStableStore};
use raftkv_raft::transport::grpc::{
    proto, AddressBook, ChannelError, ChannelOptions, Channels, GrpcTransport, Identity, RaftService, WireHeader,
    FROM_KEY, PROTOCOL_VERSION,
};
use raftkv_raft::{Config, Entry, EntryPayload, NodeId, Raft, StateMachine};
use tokio::net::TcpListener;
use tokio_stream::wrappers::TcpListenerStream;

const TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Clone, Default)]
struct Recorder(Arc<Mutex<Vec<Bytes>>>);

impl StateMachine for Recorder {
    fn apply(&mut self, entries: &[Entry]) -> Vec<Bytes> {
        let mut applied = self.0.lock().unwrap();
        for entry in entries {
            if let EntryPayload::Command(command) = &entry.payload {
                applied.push(command.clone());
            }
        }
        vec![Bytes::new(); entries.len()]
    }

    fn snapshot(&mut self) -> Box<dyn raftkv_raft::SnapshotSource> {
        Box::new(Captured(self.0.lock().unwrap().iter().map(|c| c.to_vec()).collect()))
    }

    fn restore(&mut self, snapshot: &mut dyn std::io::Read) -> std::io::Result<()> {
        let commands: Vec<Vec<u8>> = serde_json::from_reader(snapshot).map_err(std::io::Error::other)?;
        *self.0.lock().unwrap() = commands.into_iter().map(Bytes::from).collect();
        Ok(())
    }
}

struct Captured(Vec<Vec<u8>>);

impl raftkv_raft::SnapshotSource for Captured {
    fn write_to(self: Box<Self>, out: &mut dyn std::io::Write) -> std::io::Result<()> {
        serde_json::to_writer(out, &self.0).map_err(std::io::Error::other)
    }
}

struct Node {
    raft: Raft,
    recorder: Recorder,
    book: AddressBook,
    server: tokio::task::JoinHandle<()>,
}

async fn start_cluster(size: u64, cluster_id: &str) -> (Vec<Node>, Vec<String>) {
    let mut listeners = Vec::new();
    for _ in 0..size {
        listeners.push(TcpListener::bind("127.0.0.1:0").await.unwrap());
    }
    let addresses: Vec<String> = listeners.iter().map(|l| l.local_addr().unwrap().to_string()).collect();
    let mut nodes = Vec::new();
    for (i, listener) in listeners.into_iter().enumerate() {
        let id = NodeId(i as u64 + 1);
        let book = AddressBook::new();
        for (j, address) in addresses.iter().enumerate() {
            book.insert(NodeId(j as u64 + 1), address);
        }
        let identity = Identity::new(cluster_id, id, addresses[i].clone());
        let (log, stable) = (Arc::new(MemLogStore::new()), Arc::new(MemStableStore::new()));
        Raft::bootstrap_cluster(log.as_ref(), stable.as_ref(), (1..=size).map(NodeId)).unwrap();
        let transport = Arc::new(GrpcTransport::new(identity.clone(), book.clone()));
        let recorder = Recorder::default();
        let snapshots = Arc::new(MemSnapshotStore::new(2));
        let raft = Raft::new(Config::fast(id), recorder.clone(), log, stable, snapshots, transport).unwrap();
        let service = RaftService::new(identity, raft.inbox(), book.clone()).into_server();
        let server = tokio::spawn(async move {
            tonic::transport::Server::builder()
                .add_service(service)
                .serve_with_incoming(TcpListenerStream::new(listener))
                .await
                .unwrap();
        });
        nodes.push(Node { raft, recorder, book, server });
    }
    (nodes, addresses)
}

async fn agreed_leader(nodes: &[&Node]) -> NodeId {
    agreed_leader_other_than(nodes, None).await
}

async fn agreed_leader_other_than(nodes: &[&Node], old: Option<NodeId>) -> NodeId {
    for _ in 0..1000 {
        let views: Vec<_> = nodes.iter().map(|n| n.raft.leader().leader).collect();
        if let Some(Some(leader)) = views.first() {
            if views.iter().all(|v| *v == Some(*leader)) && Some(*leader) != old {
                return *leader;
            }
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("no agreed leader");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_nodes_over_grpc_replicate_and_fail_over() {
    let (nodes, addresses) = start_cluster(3, "test-cluster").await;
    let all: Vec<&Node> = nodes.iter().collect();
    let leader = agreed_leader(&all).await;
    for node in &nodes {
        let expected = Some((leader, Some(addresses[(leader.0 - 1) as usize].clone())));
        assert_eq!(node.raft.leader_with_address(), expected);
    }
    let leader_node = &nodes[(leader.0 - 1) as usize];
    for i in 0..20 {
        leader_node.raft.apply(Bytes::from(format!("c{i}")), TIMEOUT).await.unwrap();
    }
    for node in &nodes {
        for _ in 0..500 {
            if node.recorder.0.lock().unwrap().len() >= 20 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert_eq!(node.recorder.0.lock().unwrap().len(), 20);
    }
    // Stop the leader: its server and its node.
    leader_node.server.abort();
    leader_node.raft.shutdown().await;
    let rest: Vec<&Node> = nodes.iter().filter(|n| n.raft.id() != leader).collect();
    let new_leader = agreed_leader_other_than(&rest, Some(leader)).await;
    assert_ne!(new_leader, leader);
    let new_node = rest.iter().find(|n| n.raft.id() == new_leader).unwrap();
    new_node.raft.apply(Bytes::from("after failover"), TIMEOUT).await.unwrap();
    for node in rest {
        node.raft.shutdown().await;
    }
}

/// A batch stamped with `header` (none if `None`), to node 1 of cluster-a.
fn batch(header: Option<&WireHeader>, messages: Vec<proto::RaftMessage>) -> tonic::Request<proto::Batch> {
    let mut request = tonic::Request::new(proto::Batch { messages });
    if let Some(header) = header {
        header.stamp(&mut request);
    }
    request
}

/// The header node `from` of `cluster` sends to node `to`.
fn header(cluster: &str, from: u64, to: u64) -> WireHeader {
    WireHeader::new(&Identity::new(cluster, NodeId(from), format!("127.0.0.1:{}", 9000 + from)), Some(NodeId(to)))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn headers_are_checked_on_real_calls_and_refusals_say_why() {
    let (nodes, addresses) = start_cluster(1, "cluster-a").await;
    let mut client = proto::raft_client::RaftClient::connect(format!("http://{}", addresses[0])).await.unwrap();
    let refused = |status: tonic::Status, code: tonic::Code, words: &[&str]| {
        assert_eq!(status.code(), code, "{}", status.message());
        for word in words {
            assert!(status.message().contains(word), "{:?} lacks {word:?}", status.message());
        }
    };
    let status = client.send(batch(Some(&header("cluster-b", 9, 1)), vec![])).await.unwrap_err();
    refused(
        status,
        tonic::Code::FailedPrecondition,
        &["cluster id mismatch", "cluster-b", "cluster-a", "node 9", "node 1"],
    );
    let status = client.send(batch(Some(&header("", 9, 1)), vec![])).await.unwrap_err();
    refused(status, tonic::Code::FailedPrecondition, &["node 9 sent no cluster id", "cluster-a"]);
    let mut newer = header("cluster-a", 9, 1);
    newer.protocol_version = PROTOCOL_VERSION + 1;
    let status = client.send(batch(Some(&newer), vec![])).await.unwrap_err();
    refused(status, tonic::Code::FailedPrecondition, &["protocol version mismatch"]);
    let status = client.send(batch(Some(&header("cluster-a", 9, 2)), vec![])).await.unwrap_err();
    refused(status, tonic::Code::FailedPrecondition, &["node 9 addressed node 2, but this is node 1"]);
    let status = client.send(batch(Some(&header("cluster-a", 1, 1)), vec![])).await.unwrap_err();
    refused(status, tonic::Code::FailedPrecondition, &["from node 1"]);
    // Raft messages must name their receiver.
    let mut unaddressed = header("cluster-a", 9, 1);
    unaddressed.to = None;
    let status = client.send(batch(Some(&unaddressed), vec![])).await.unwrap_err();
    refused(status, tonic::Code::FailedPrecondition, &["name no receiver"]);
    // No header at all: what a peer of protocol 1 sends.
    let status = client.send(batch(None, vec![])).await.unwrap_err();
    refused(status, tonic::Code::FailedPrecondition, &["raftkv-protocol"]);
    // Malformed metadata.
    let mut malformed = batch(Some(&header("cluster-a", 9, 1)), vec![]);
    malformed.metadata_mut().insert(FROM_KEY, tonic::metadata::MetadataValue::from_static("nine"));
    let status = client.send(malformed).await.unwrap_err();
    refused(status, tonic::Code::InvalidArgument, &[FROM_KEY, "not a number"]);
    // A stream whose header is refused ends before any batch is read.
    let mut stream = tonic::Request::new(tokio_stream::iter(vec![proto::Batch { messages: vec![] }]));
    header("cluster-b", 9, 1).stamp(&mut stream);
    let status = client.stream(stream).await.unwrap_err();
    refused(status, tonic::Code::FailedPrecondition, &["cluster id mismatch"]);
    // None of the refused calls taught the node an address.
    assert_eq!(nodes[0].book.get(NodeId(9)), None);

    // A malformed message is refused; the node stays healthy.
    let bad = batch(Some(&header("cluster-a", 9, 1)), vec![proto::RaftMessage { kind: None }]);
    refused(client.send(bad).await.unwrap_err(), tonic::Code::InvalidArgument, &["message 0 from node 9"]);
    // An accepted header teaches the node the sender's address.
    client.send(batch(Some(&header("cluster-a", 9, 1)), vec![])).await.unwrap();
    assert_eq!(nodes[0].book.get(NodeId(9)).as_deref(), Some("127.0.0.1:9009"));
    agreed_leader(&[&nodes[0]]).await;
    nodes[0].raft.apply(Bytes::from("still fine"), TIMEOUT).await.unwrap();
    // The stats name the transport's protocol.
    let stats = nodes[0].raft.statistics().await.unwrap();
    assert_eq!(stats.protocol_version, Some(PROTOCOL_VERSION));
    assert_eq!(stats.latest_configuration[0].address.as_deref(), Some(addresses[0].as_str()));
    let map = nodes[0].raft.statistics_with(|id| nodes[0].book.get(id)).await.unwrap().to_map();
    assert_eq!(map["protocol_version"], PROTOCOL_VERSION.to_string());
    assert_eq!(map["state"], "Leader");
    nodes[0].raft.shutdown().await;
}

/// A port nothing listens on.
async fn closed_address() -> String {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    listener.local_addr().unwrap().to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_channel_cache_connects_shares_and_evicts() {
    let (nodes, addresses) = start_cluster(1, "cluster-a").await;
    let channels = Channels::new(ChannelOptions { connect_timeout: Duration::from_millis(500), ..Default::default() });
    // Lazily connected channels are shared until evicted.
    let first = channels.get(&addresses[0]).unwrap();
    let again = channels.get(&addresses[0]).unwrap();
    assert_eq!(channels.len(), 1);
    let mut client = proto::raft_client::RaftClient::new(again.channel());
    client.send(batch(Some(&header("cluster-a", 9, 1)), vec![])).await.unwrap();
    assert!(channels.evict(&first), "the cached channel is evicted by any handle to it");
    assert!(!channels.evict(&again), "an evicted channel is evicted once");
    let newer = channels.get(&addresses[0]).unwrap();
    assert!(!channels.evict(&first), "an old handle never evicts a newer channel");
    assert!(channels.evict(&newer));
    assert!(channels.is_empty());

    // An explicit connection is cached as connected and reused as such.
    let connected = channels.connect(&addresses[0]).await.unwrap();
    let reused = channels.connect(&addresses[0]).await.unwrap();
    assert!(channels.evict(&connected) && !channels.evict(&reused), "both name the same cached channel");

    // Nothing listens: an explicit connect fails within the timeout, uncached.
    let closed = closed_address().await;
    match channels.connect(&closed).await {
        Err(ChannelError::Connect { address, .. } | ChannelError::Timeout { address, .. }) => {
            assert_eq!(address, closed)
        }
        other => panic!("expected a connection failure, got {other:?}"),
    }
    assert!(channels.is_empty());
    // A lazy channel fails its call with a connect error, which evicts it.
    let lazy = channels.get(&closed).unwrap();
    let status = proto::raft_client::RaftClient::new(lazy.channel())
        .send(batch(Some(&header("cluster-a", 9, 1)), vec![]))
        .await
        .unwrap_err();
    assert!(raftkv_raft::transport::grpc::is_connect_error(&status), "{status:?}");
    assert!(channels.evict_on_connect_error(&lazy, &status));
    assert!(channels.is_empty());
    // A refusal by a live peer is no connection error and evicts nothing.
    let live = channels.get(&addresses[0]).unwrap();
    let status = proto::raft_client::RaftClient::new(live.channel())
        .send(batch(Some(&header("cluster-b", 9, 1)), vec![]))
        .await
        .unwrap_err();
    assert!(!channels.evict_on_connect_error(&live, &status));
    assert_eq!(channels.len(), 1);
    // A bad address is refused, not a panic.
    assert!(matches!(channels.get("not an address"), Err(ChannelError::BadAddress { .. })));
    let status: tonic::Status = channels.get("not an address").unwrap_err().into();
    assert_eq!(status.code(), tonic::Code::InvalidArgument);
    nodes[0].raft.shutdown().await;
}

/// Clients of an application's own service stamp with the interceptor; the
/// transport's shared channel cache serves them too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_interceptor_stamps_every_call_of_a_client() {
    let (nodes, addresses) = start_cluster(1, "cluster-a").await;
    let channels = Channels::default();
    let transport =
        GrpcTransport::with_channels(Identity::new("cluster-a", NodeId(9), ""), AddressBook::new(), channels.clone());
    assert_eq!(transport.channels().len(), 0);
    let channel = channels.get(&addresses[0]).unwrap().channel();
    let mut client = proto::raft_client::RaftClient::with_interceptor(channel, header("cluster-a", 9, 1).interceptor());
    for _ in 0..3 {
        client.send(proto::Batch { messages: vec![] }).await.unwrap();
    }
    let mut wrong = proto::raft_client::RaftClient::with_interceptor(
        channels.get(&addresses[0]).unwrap().channel(),
        header("cluster-b", 9, 1).interceptor(),
    );
    assert_eq!(
        wrong.send(proto::Batch { messages: vec![] }).await.unwrap_err().code(),
        tonic::Code::FailedPrecondition
    );
    nodes[0].raft.shutdown().await;
}
