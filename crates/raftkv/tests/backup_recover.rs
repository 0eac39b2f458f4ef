//! Disaster recovery with real processes and the real CLI: backups from a
//! leader and a follower restored into a fresh cluster, a restore into a live
//! cluster under writes, damaged backup files refused with the data untouched,
//! and `raftkv recover` after a loss of quorum. Every wait is bounded; nothing
//! asserts on timing.

mod common;

use std::path::Path;
use std::process::{Command, Output};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;

use common::*;
use serde_json::{json, Value};

fn cli(args: &[&str]) -> Output {
    Command::new(BIN).args(args).output().unwrap()
}

fn path(p: &Path) -> &str {
    p.to_str().unwrap()
}

/// Every key and value a node holds, read after a linearizable barrier (a
/// value that is not text as `base64:` and its base64).
async fn all_keys(node: &Node) -> Vec<(String, String)> {
    let response = client()
        .get(format!("http://{}/api/v1/list?limit=100000&consistency=linearizable", node.http))
        .send()
        .await
        .unwrap();
    assert!(response.status().is_success(), "list on node {}: {}", node.id, response.status());
    let body: Value = response.json().await.unwrap();
    body["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|item| {
            let value = match item["value_base64"].as_str() {
                Some(encoded) => format!("base64:{encoded}"),
                None => item["value"].as_str().unwrap().to_string(),
            };
            (item["key"].as_str().unwrap().to_string(), value)
        })
        .collect()
}

async fn write_keys(node: &Node, prefix: &str, count: usize) {
    for i in 0..count {
        let response = set(node, &format!("{prefix}{i:04}"), &format!("value {i} of {prefix}")).await;
        assert!(response.status().is_success(), "write {i}: {}", response.status());
    }
}

fn follower_of(nodes: &[Node], leader: u64) -> &Node {
    nodes.iter().find(|n| n.id != leader).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backups_from_leader_and_follower_restore_into_a_fresh_cluster() {
    let root = tempfile::TempDir::new().unwrap();
    std::fs::create_dir_all(root.path().join("a")).unwrap();
    let source = three_node_cluster(&root.path().join("a")).await;
    let leader = leader_of(&source.iter().collect::<Vec<_>>()).await;
    write_keys(&source[0], "key", 299).await;
    // A value that is not text travels in the image's bytes and, restored,
    // in the log's chunks as base64.
    let binary = client()
        .put(format!("http://{}/api/v1/kv/key-binary", source[1].http))
        .body(vec![0xff, 0, 0xfe, b'"', b'\\'])
        .send()
        .await
        .unwrap();
    assert_eq!(binary.status(), 200);
    let expected = all_keys(&source[0]).await;
    assert_eq!(expected.len(), 300);
    assert!(expected.contains(&("key-binary".to_string(), "base64:/wD+Ilw=".to_string())), "{expected:?}");

    let from_leader = root.path().join("leader.backup");
    let from_follower = root.path().join("follower.backup");
    let leader_node = source.iter().find(|n| n.id == leader).unwrap();
    for (node, file) in [(leader_node, &from_leader), (follower_of(&source, leader), &from_follower)] {
        let saved = cli(&["snapshot", "save", path(file), "--addr", &node.http, "--json"]);
        assert!(saved.status.success(), "save from node {}: {}", node.id, String::from_utf8_lossy(&saved.stderr));
        let inspected = cli(&["snapshot", "inspect", path(file), "--json"]);
        assert!(inspected.status.success(), "{}", String::from_utf8_lossy(&inspected.stderr));
        let described: Value = serde_json::from_slice(&inspected.stdout).unwrap();
        assert_eq!(described["keys"], 300);
        assert_eq!(described["checksum"], "ok");
        assert_eq!(described["voters"], json!([1, 2, 3]));
        assert_eq!(described["size_bytes"], std::fs::metadata(file).unwrap().len());
    }

    for (name, file) in [("from-leader", &from_leader), ("from-follower", &from_follower)] {
        std::fs::create_dir_all(root.path().join(name)).unwrap();
        let target = three_node_cluster(&root.path().join(name)).await;
        let restored = cli(&["snapshot", "restore", path(file), "--addr", &target[2].http, "--json"]);
        assert!(restored.status.success(), "restore {name}: {}", String::from_utf8_lossy(&restored.stderr));
        let answer: Value = serde_json::from_slice(&restored.stdout).unwrap();
        assert_eq!(answer["keys"], 300, "{answer}");
        for node in &target {
            assert_eq!(all_keys(node).await, expected, "node {} after restoring {name}", node.id);
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restore_into_a_live_cluster_under_writes_leaves_every_node_in_agreement() {
    let root = tempfile::TempDir::new().unwrap();
    let nodes = Arc::new(three_node_cluster(root.path()).await);
    write_keys(&nodes[0], "backup", 200).await;
    let file = root.path().join("state.backup");
    let saved = cli(&["snapshot", "save", path(&file), "--addr", &nodes[1].http]);
    assert!(saved.status.success(), "{}", String::from_utf8_lossy(&saved.stderr));
    // Overwrite part of the backed-up state; the restore brings it back.
    write_keys(&nodes[0], "backup", 50).await;
    for i in 0..50 {
        assert!(set(&nodes[0], &format!("backup{i:04}"), "overwritten").await.status().is_success());
    }

    let stop = Arc::new(AtomicBool::new(false));
    let written = Arc::new(AtomicU64::new(0));
    let writer = {
        let (nodes, stop, written) = (nodes.clone(), stop.clone(), written.clone());
        tokio::spawn(async move {
            let mut i = 0;
            while !stop.load(Ordering::SeqCst) {
                let node = &nodes[i % 3];
                if set(node, &format!("live{i:06}"), "x").await.status().is_success() {
                    written.fetch_add(1, Ordering::SeqCst);
                }
                i += 1;
            }
        })
    };
    let restored = cli(&["snapshot", "restore", path(&file), "--addr", &nodes[2].http]);
    assert!(restored.status.success(), "{}", String::from_utf8_lossy(&restored.stderr));
    stop.store(true, Ordering::SeqCst);
    writer.await.unwrap();
    assert!(written.load(Ordering::SeqCst) > 0, "no write ran during the restore");

    let first = all_keys(&nodes[0]).await;
    for node in &nodes[1..] {
        assert_eq!(all_keys(node).await, first, "node {} disagrees with node 1", node.id);
    }
    let backed_up: Vec<_> = first.iter().filter(|(k, _)| k.starts_with("backup")).cloned().collect();
    let expected: Vec<_> = (0..200).map(|i| (format!("backup{i:04}"), format!("value {i} of backup"))).collect();
    assert_eq!(backed_up, expected, "the backup's keys hold the backup's values");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn damaged_backups_are_refused_and_the_data_is_untouched() {
    let root = tempfile::TempDir::new().unwrap();
    let nodes = three_node_cluster(root.path()).await;
    write_keys(&nodes[0], "key", 100).await;
    let good = root.path().join("good.backup");
    assert!(cli(&["snapshot", "save", path(&good), "--addr", &nodes[0].http]).status.success());
    write_keys(&nodes[0], "after", 10).await;
    let before = all_keys(&nodes[0]).await;

    let bytes = std::fs::read(&good).unwrap();
    let truncated = root.path().join("truncated.backup");
    std::fs::write(&truncated, &bytes[..bytes.len() * 2 / 3]).unwrap();
    let flipped = root.path().join("flipped.backup");
    let mut damaged = bytes.clone();
    let middle = damaged.len() / 2;
    damaged[middle] ^= 0x10;
    std::fs::write(&flipped, &damaged).unwrap();
    let garbage = root.path().join("garbage.backup");
    std::fs::write(&garbage, b"{\"not\": \"a backup\"}").unwrap();

    for (file, says) in [(&truncated, "truncated"), (&flipped, "checksum mismatch"), (&garbage, "not a raftkv")] {
        let inspected = cli(&["snapshot", "inspect", path(file)]);
        let stderr = String::from_utf8_lossy(&inspected.stderr);
        assert!(!inspected.status.success() && stderr.contains(says), "inspect {}: {stderr}", file.display());
        let restored = cli(&["snapshot", "restore", path(file), "--addr", &nodes[1].http]);
        let stderr = String::from_utf8_lossy(&restored.stderr);
        assert!(!restored.status.success() && stderr.contains(says), "restore {}: {stderr}", file.display());
        // Sent anyway, past the CLI's check: the server refuses it too.
        let response = client()
            .post(format!("http://{}/api/v1/snapshot", nodes[2].http))
            .body(std::fs::read(file).unwrap())
            .send()
            .await
            .unwrap();
        assert_eq!(response.status().as_u16(), 400, "{}", file.display());
        let body: Value = response.json().await.unwrap();
        assert!(body["error"]["message"].as_str().unwrap().contains(says), "{body}");
    }
    // Well-formed, but with a key over the server's limit (4 KiB): refused too.
    let header = raftkv::state::image::ImageHeader::generated_backup(1);
    let mut writer = raftkv::state::image::ImageWriter::new(Vec::new(), &header).unwrap();
    writer.record(&"k".repeat(5000), b"v", 1).unwrap();
    let oversized = writer.finish().unwrap();
    let response =
        client().post(format!("http://{}/api/v1/snapshot", nodes[0].http)).body(oversized).send().await.unwrap();
    assert_eq!(response.status().as_u16(), 400);
    let body: Value = response.json().await.unwrap();
    assert!(body["error"]["message"].as_str().unwrap().contains("key of 5000 bytes"), "{body}");

    for node in &nodes {
        assert_eq!(all_keys(node).await, before, "node {}", node.id);
    }
    let leftovers: Vec<_> = nodes
        .iter()
        .flat_map(|n| std::fs::read_dir(&n.dir).unwrap())
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|name| name.starts_with("restore-"))
        .collect();
    assert!(leftovers.is_empty(), "spooled uploads left behind: {leftovers:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_quorum_loss_recover_makes_the_survivor_a_one_node_cluster() {
    let root = tempfile::TempDir::new().unwrap();
    let mut nodes = three_node_cluster(root.path()).await;
    write_keys(&nodes[0], "key", 100).await;
    let expected = all_keys(&nodes[0]).await;
    let peers = root.path().join("peers.json");
    let survivor = 2;
    std::fs::write(&peers, json!([{"id": nodes[survivor].id, "address": nodes[survivor].raft}]).to_string()).unwrap();

    // Two of three die for good: no quorum, no leader, no writes.
    nodes[0].kill9();
    nodes[1].kill9();
    let dir = nodes[survivor].dir.clone();
    let refused = cli(&["recover", "--data-dir", path(&dir), "--peers", path(&peers)]);
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(!refused.status.success() && stderr.contains("in use"), "recover on a running node: {stderr}");

    nodes[survivor].kill9();
    let recovered = cli(&["recover", "--data-dir", path(&dir), "--peers", path(&peers)]);
    let stdout = String::from_utf8_lossy(&recovered.stdout);
    assert!(recovered.status.success(), "{}", String::from_utf8_lossy(&recovered.stderr));
    assert!(stdout.contains("voters=[1,2,3]") && stdout.contains("voters=[3]"), "report: {stdout}");

    nodes[survivor].start(&[]);
    assert_eq!(leader_of(&[&nodes[survivor]]).await, nodes[survivor].id);
    assert_eq!(all_keys(&nodes[survivor]).await, expected);
    assert!(set(&nodes[survivor], "after-recovery", "yes").await.status().is_success());
    let members: Value = client()
        .get(format!("http://{}/api/v1/members", nodes[survivor].http))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(members["members"].as_array().unwrap().len(), 1, "{members}");
}
