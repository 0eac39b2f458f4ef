//! Helpers shared by the tests that run real `raftkv` processes.
#![allow(dead_code)]

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use serde_json::{json, Value};

pub const BIN: &str = env!("CARGO_BIN_EXE_raftkv");

/// A port no node of this test process has used, below the kernel's
/// ephemeral range (32768 and up by default): a port the kernel picked for
/// us (bind to port 0) could be handed to an outgoing connection between our
/// choice and the node's bind, and the node would fail to start.
pub fn free_port() -> u16 {
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let offset = (std::process::id() % 60) * 200;
    loop {
        let port = u16::try_from(20_000 + (offset + NEXT.fetch_add(1, Ordering::Relaxed)) % 12_000).unwrap();
        if TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
}

pub struct Node {
    pub id: u64,
    pub http: String,
    pub raft: String,
    pub dir: PathBuf,
    pub child: Option<Child>,
}

impl Node {
    pub fn new(id: u64, root: &Path) -> Node {
        Node {
            id,
            http: format!("127.0.0.1:{}", free_port()),
            raft: format!("127.0.0.1:{}", free_port()),
            dir: root.join(format!("node{id}")),
            child: None,
        }
    }

    pub fn start(&mut self, extra: &[&str]) {
        let log = std::fs::File::create(self.dir.with_extension("log")).unwrap();
        let child = Command::new(BIN)
            .args(["agent", "--id", &self.id.to_string(), "--http-addr", &self.http, "--raft-addr", &self.raft])
            .arg("--data-dir")
            .arg(&self.dir)
            .args(["--heartbeat-ms", "50", "--election-timeout-ms", "400", "--request-timeout-ms", "3000"])
            // A joining node becomes a voter after a second of staying caught up.
            .args(["--server-stabilization-ms", "1000", "--join-timeout-ms", "15000"])
            .args(extra)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap();
        self.child = Some(child);
    }

    pub fn kill9(&mut self) {
        if let Some(mut child) = self.child.take() {
            child.kill().unwrap();
            child.wait().unwrap();
        }
    }

    pub fn signal(&self, signal: &str) {
        let pid = self.child.as_ref().unwrap().id().to_string();
        assert!(Command::new("kill").args([signal, &pid]).status().unwrap().success());
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        if let Some(child) = self.child.as_mut() {
            let _ = Command::new("kill").args(["-CONT", &child.id().to_string()]).status();
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

pub fn client() -> reqwest::Client {
    http_client(Duration::from_secs(10))
}

pub async fn stats(node: &Node) -> Option<Value> {
    let response = client().get(format!("http://{}/api/maintain/stats", node.http)).send().await.ok()?;
    response.json().await.ok()
}

/// Polls `check` every 50 ms for up to 20 s.
pub async fn eventually<T>(what: &str, mut check: impl AsyncFnMut() -> Option<T>) -> T {
    for _ in 0..400 {
        if let Some(value) = check().await {
            return value;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("timed out waiting for {what}");
}

pub async fn leader_of(nodes: &[&Node]) -> u64 {
    eventually("a leader", async || {
        for node in nodes {
            let stats = stats(node).await?;
            if stats["state"] == "Leader" {
                return Some(node.id);
            }
        }
        None
    })
    .await
}

pub async fn set(node: &Node, key: &str, value: &str) -> reqwest::Response {
    client()
        .post(format!("http://{}/api/v1/set", node.http))
        .json(&json!({"key": key, "value": value}))
        .send()
        .await
        .unwrap()
}

/// The status and JSON of a read; status 0 if the node did not answer at all.
pub async fn get_json(node: &Node, key: &str, consistency: &str) -> (u16, Value) {
    let sent = client()
        .get(format!("http://{}/api/v1/get?key={key}&consistency={consistency}", node.http))
        .header("accept", "application/json")
        .send()
        .await;
    match sent {
        Ok(response) => (response.status().as_u16(), response.json().await.unwrap_or(Value::Null)),
        Err(_) => (0, Value::Null),
    }
}

pub async fn three_node_cluster(root: &Path) -> Vec<Node> {
    let mut nodes: Vec<Node> = (1..=3).map(|id| Node::new(id, root)).collect();
    nodes[0].start(&["--bootstrap"]);
    assert_eq!(leader_of(&[&nodes[0]]).await, 1);
    let join = nodes[0].raft.clone();
    for node in &mut nodes[1..] {
        node.start(&["--join", &join]);
    }
    // Three voters in a configuration that committed (one appended but not
    // committed yet would refuse the next membership change).
    for _ in 0..400 {
        if let Some(stats) = stats(&nodes[0]).await {
            let number = |field: &str| stats[field].as_str().and_then(|v| v.parse::<u64>().ok());
            let committed = number("commit_index") >= number("latest_configuration_index");
            if stats["num_peers"] == "2" && committed {
                return nodes;
            }
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let logs: Vec<String> = nodes.iter().map(|n| format!("--- node {} ---\n{}", n.id, tail(&log_of(n), 60))).collect();
    panic!("timed out waiting for three voters; node 1: {:?}\n{}", stats(&nodes[0]).await, logs.join("\n"));
}

/// The last `lines` lines of `text`.
pub fn tail(text: &str, lines: usize) -> String {
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

/// POSTs `body` as JSON; the status and the JSON answer (status 0: no answer).
pub async fn post(node: &Node, path: &str, body: Value) -> (u16, Value) {
    match client().post(format!("http://{}{path}", node.http)).json(&body).send().await {
        Ok(response) => (response.status().as_u16(), response.json().await.unwrap_or(Value::Null)),
        Err(_) => (0, Value::Null),
    }
}

/// Waits (bounded) for the node's process to exit on its own; its status.
pub async fn exit_status(node: &mut Node, what: &str) -> std::process::ExitStatus {
    let status = eventually(what, async || node.child.as_mut()?.try_wait().unwrap()).await;
    node.child = None;
    status
}

/// The node's log so far (stderr of its process).
pub fn log_of(node: &Node) -> String {
    std::fs::read_to_string(node.dir.with_extension("log")).unwrap_or_default()
}

/// A plain HTTP client (reqwest is built without a TLS provider of its own:
/// `ClientSecurity` gives it rustls with ring).
pub fn http_client(timeout: Duration) -> reqwest::Client {
    let builder = reqwest::Client::builder().timeout(timeout);
    raftkv::http_client::ClientSecurity::default().apply(builder).unwrap().build().unwrap()
}
