//! Raft nodes talking gRPC over loopback, each with its own server: replication
//! and failover, and refusal of peers from another cluster.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use raftkv_raft::storage::{MemLogStore, MemSnapshotStore, MemStableStore};
use raftkv_raft::transport::grpc::{proto, AddressBook, GrpcTransport, Identity, RaftService, PROTOCOL_VERSION};
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
        let identity = Identity { cluster_id: cluster_id.to_string(), id, advertise_addr: addresses[i].clone() };
        let (log, stable) = (Arc::new(MemLogStore::new()), Arc::new(MemStableStore::new()));
        Raft::bootstrap_cluster(log.as_ref(), stable.as_ref(), (1..=size).map(NodeId)).unwrap();
        let transport = Arc::new(GrpcTransport::new(identity.clone(), book.clone()));
        let recorder = Recorder::default();
        let snapshots = Arc::new(MemSnapshotStore::new(2));
        let raft = Raft::new(Config::fast(id), recorder.clone(), log, stable, snapshots, transport).unwrap();
        let service = RaftService::new(identity, raft.inbox(), book).into_server();
        let server = tokio::spawn(async move {
            tonic::transport::Server::builder()
                .add_service(service)
                .serve_with_incoming(TcpListenerStream::new(listener))
                .await
                .unwrap();
        });
        nodes.push(Node { raft, recorder, server });
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_peer_from_another_cluster_is_refused_with_a_clear_error() {
    let (nodes, addresses) = start_cluster(1, "cluster-a").await;
    let mut client = proto::raft_client::RaftClient::connect(format!("http://{}", addresses[0])).await.unwrap();
    let batch = |cluster: &str, version: u32| proto::Batch {
        header: Some(proto::Header {
            protocol_version: version,
            cluster_id: cluster.to_string(),
            from: 9,
            to: 1,
            from_addr: "127.0.0.1:1".to_string(),
        }),
        messages: vec![],
    };
    let status = client.send(batch("cluster-b", PROTOCOL_VERSION)).await.unwrap_err();
    assert_eq!(status.code(), tonic::Code::FailedPrecondition);
    assert!(status.message().contains("cluster id mismatch"), "{}", status.message());
    assert!(status.message().contains("cluster-b") && status.message().contains("cluster-a"), "{}", status.message());
    let status = client.send(batch("cluster-a", PROTOCOL_VERSION + 1)).await.unwrap_err();
    assert!(status.message().contains("protocol version mismatch"), "{}", status.message());
    let status = client.send(proto::Batch { header: None, messages: vec![] }).await.unwrap_err();
    assert_eq!(status.code(), tonic::Code::FailedPrecondition);
    // A malformed message is refused; the node stays healthy.
    let mut bad = batch("cluster-a", PROTOCOL_VERSION);
    bad.messages.push(proto::RaftMessage { kind: None });
    assert_eq!(client.send(bad).await.unwrap_err().code(), tonic::Code::InvalidArgument);
    agreed_leader(&[&nodes[0]]).await;
    nodes[0].raft.apply(Bytes::from("still fine"), TIMEOUT).await.unwrap();
    // The stats name the transport's protocol and the servers' addresses.
    let stats = nodes[0].raft.statistics().await.unwrap();
    assert_eq!(stats.protocol_version, Some(PROTOCOL_VERSION));
    assert_eq!(stats.latest_configuration[0].address.as_deref(), Some(addresses[0].as_str()));
    let map = nodes[0].raft.stats(|_| None).await.unwrap();
    assert_eq!(map["protocol_version"], PROTOCOL_VERSION.to_string());
    assert_eq!(map["state"], "Leader");
    nodes[0].raft.shutdown().await;
}
