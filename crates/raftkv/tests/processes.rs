//! Real `raftkv agent` processes on loopback: the operator's walkthrough (bootstrap,
//! join, stats, writes through a follower, kill -9 of the leader, restart),
//! bad input on every endpoint, and no stale linearizable read from a paused
//! old leader. Every wait is bounded; nothing asserts on timing.

mod common;

use std::process::Command;

use common::*;
use serde_json::{json, Value};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn walkthrough_on_real_processes() {
    let root = tempfile::TempDir::new().unwrap();
    let mut nodes = three_node_cluster(root.path()).await;
    let stats1 = stats(&nodes[0]).await.unwrap();
    assert_eq!(stats1["state"], "Leader");
    let configuration = stats1["latest_configuration"].as_str().unwrap();
    assert_eq!(configuration.matches("Suffrage:Voter").count(), 3, "{configuration}");
    for field in ["applied_index", "commit_index", "fsm_pending", "last_contact", "last_log_index", "last_log_term"] {
        assert!(stats1[field].is_string(), "stats field {field} missing or not a string: {stats1}");
    }

    // A write through a follower is forwarded to the leader.
    let response = set(&nodes[1], "testKey", "testValue").await;
    assert_eq!(response.status(), 200);
    let index = response.json::<Value>().await.unwrap()["index"].as_u64().unwrap();
    assert!(index > 0);
    // Every node answers, with the key in a JSON body as hashicorp-style clients send it.
    for node in &nodes {
        let body = client()
            .get(format!("http://{}/api/v1/get", node.http))
            .header("content-type", "application/json")
            .body(r#"{"key": "testKey"}"#)
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        assert_eq!(body, "testValue", "node {}", node.id);
    }

    // kill -9 the leader: another is elected, the value survives, writes go on.
    nodes[0].kill9();
    let new_leader = leader_of(&[&nodes[1], &nodes[2]]).await;
    assert_ne!(new_leader, 1);
    let (status, value) = get_json(&nodes[2], "testKey", "linearizable").await;
    assert_eq!((status, value["value"].clone()), (200, json!("testValue")));
    eventually("a write after failover", async || {
        (set(&nodes[1], "after", "failover").await.status() == 200).then_some(())
    })
    .await;

    // The old leader restarts from its data dir alone and catches up.
    nodes[0].start(&[]);
    eventually("the old leader catching up", async || {
        let (status, value) = get_json(&nodes[0], "after", "stale").await;
        (status == 200 && value["value"] == "failover").then_some(())
    })
    .await;
    let stats1 = stats(&nodes[0]).await.unwrap();
    assert_eq!(stats1["state"], "Follower");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_gets_the_documented_error_and_the_node_stays_healthy() {
    let root = tempfile::TempDir::new().unwrap();
    let mut node = Node::new(1, root.path());
    node.start(&["--bootstrap"]);
    leader_of(&[&node]).await;
    let base = format!("http://{}", node.http);
    let http = client();
    let cases: Vec<(reqwest::RequestBuilder, u16, &str)> = vec![
        (
            http.post(format!("{base}/api/v1/set")).header("content-type", "application/json").body("{not json"),
            400,
            "malformed JSON",
        ),
        (http.post(format!("{base}/api/v1/set")).json(&json!({"key": 1, "value": "x"})), 400, "wrong type"),
        (http.post(format!("{base}/api/v1/set")).json(&json!({"key": "k"})), 400, "missing value"),
        (http.post(format!("{base}/api/v1/set")).json(&json!({"key": "", "value": "x"})), 400, "empty key"),
        (
            http.post(format!("{base}/api/v1/set")).json(&json!({"key": "k".repeat(5000), "value": "x"})),
            413,
            "huge key",
        ),
        (
            http.post(format!("{base}/api/v1/set")).json(&json!({"key": "k", "value": "v".repeat(3 << 19)})),
            413,
            "a value over the limit in a body within it",
        ),
        (
            http.post(format!("{base}/api/v1/set")).json(&json!({"key": "k", "value": "v".repeat(2 << 20)})),
            413,
            "a body over the limit",
        ),
        (
            http.post(format!("{base}/api/v1/set")).json(&json!({"key": "k", "value": "v", "extra": 1})),
            400,
            "unknown field",
        ),
        (http.get(format!("{base}/api/v1/get?key=missing")), 404, "unknown key"),
        (http.get(format!("{base}/api/v1/get")), 400, "no key"),
        (http.get(format!("{base}/api/v1/get?key=k&consistency=sometimes")), 400, "bad consistency"),
        (http.delete(format!("{base}/api/v1/delete")), 400, "delete without key"),
        (http.post(format!("{base}/api/v1/cas")).json(&json!({"key": "k", "value": 3})), 400, "cas wrong type"),
        (http.post(format!("{base}/api/v1/join")).json(&json!({"id": "x"})), 400, "join wrong type"),
        (
            http.post(format!("{base}/api/v1/join")).json(&json!({"id": 0, "raft_addr": ""})),
            400,
            "join without address",
        ),
        (http.post(format!("{base}/api/v1/remove")).body("[]"), 400, "remove without JSON"),
        (http.post(format!("{base}/api/v1/transfer-leader")).body("{"), 400, "transfer bad JSON"),
        (http.delete(format!("{base}/api/v1/delete?key=%FF")), 400, "a key that is not UTF-8"),
        (http.get(format!("{base}/api/v1/get?key=%C3")), 400, "a truncated UTF-8 key"),
        (http.get(format!("{base}/api/v1/nothing-here")), 404, "no such route"),
        (http.get(format!("{base}/api/v1/set")), 405, "a method the route does not take"),
        (
            http.post(format!("{base}/api/maintain/config")).json(&json!({"trailing_logs": u64::MAX})),
            400,
            "compaction put off for good",
        ),
        (
            http.post(format!("{base}/api/maintain/config")).json(&json!({"snapshot_log_bytes": u64::MAX})),
            400,
            "snapshot bytes without bound",
        ),
    ];
    for (request, expected, what) in cases {
        let response = request.send().await.unwrap();
        let status = response.status().as_u16();
        let body: Value = response.json().await.unwrap_or(Value::Null);
        assert_eq!(status, expected, "{what}: {body}");
        assert!(body["error"]["code"].is_string() && body["error"]["message"].is_string(), "{what}: {body}");
    }
    // Compare-and-swap mismatch: 409 with the current value.
    assert_eq!(set(&node, "k", "v1").await.status(), 200);
    let response = http
        .post(format!("{base}/api/v1/cas"))
        .json(&json!({"key": "k", "expected": "other", "value": "v2"}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 409);
    assert_eq!(response.json::<Value>().await.unwrap()["current"], "v1");

    // A raft peer from another cluster is refused with a clear error.
    use raftkv_raft::transport::grpc::{proto, Identity};
    let mut peer = proto::raft_client::RaftClient::connect(format!("http://{}", node.raft)).await.unwrap();
    let stranger = Identity::new("some-other-cluster", raftkv_raft::NodeId(7), "127.0.0.1:1");
    let mut batch = tonic::Request::new(proto::Batch { messages: vec![] });
    stranger.header(Some(raftkv_raft::NodeId(1))).stamp(&mut batch);
    let status = peer.send(batch).await.unwrap_err();
    assert_eq!(status.code(), tonic::Code::FailedPrecondition);
    assert!(status.message().contains("cluster id mismatch"), "{}", status.message());

    // Still healthy.
    assert_eq!(set(&node, "k", "v3").await.status(), 200);
    assert_eq!(get_json(&node, "k", "linearizable").await.1["value"], "v3");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refuses_an_unadvertisable_raft_address_and_an_empty_data_dir_without_bootstrap_or_join() {
    let root = tempfile::TempDir::new().unwrap();
    let output = Command::new(BIN)
        .args(["agent", "--id", "1", "--http-addr", "127.0.0.1:0", "--raft-addr", "0.0.0.0:7000"])
        .arg("--data-dir")
        .arg(root.path().join("a"))
        .output()
        .unwrap();
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("local bind address is not advertisable"), "{stderr}");
    let output = Command::new(BIN)
        .args(["agent", "--id", "1", "--http-addr", "127.0.0.1:0", "--raft-addr", "127.0.0.1:0"])
        .arg("--data-dir")
        .arg(root.path().join("b"))
        .output()
        .unwrap();
    assert!(!output.status.success());
    assert!(
        String::from_utf8_lossy(&output.stderr).contains("--bootstrap"),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_paused_old_leader_never_serves_a_stale_linearizable_read() {
    let root = tempfile::TempDir::new().unwrap();
    let nodes = three_node_cluster(root.path()).await;
    let refs: Vec<&Node> = nodes.iter().collect();
    let old = leader_of(&refs).await;
    let old_node = nodes.iter().find(|n| n.id == old).unwrap();
    assert_eq!(set(old_node, "x", "old").await.status(), 200);
    old_node.signal("-STOP");
    let others: Vec<&Node> = nodes.iter().filter(|n| n.id != old).collect();
    let new = leader_of(&others).await;
    let new_node = nodes.iter().find(|n| n.id == new).unwrap();
    eventually("a write on the new leader", async || (set(new_node, "x", "new").await.status() == 200).then_some(()))
        .await;
    old_node.signal("-CONT");
    // Right after it resumes, the old leader still believes it leads. Whatever it
    // answers must not be the overwritten value.
    for consistency in ["linearizable", "lease", "linearizable", "lease"] {
        let (status, value) = get_json(old_node, "x", consistency).await;
        if status == 200 {
            assert_eq!(value["value"], "new", "stale {consistency} read from the old leader: {value}");
        }
    }
}
