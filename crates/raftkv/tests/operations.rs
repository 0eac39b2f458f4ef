//! Operating real `raftkv` processes: health and readiness probes, and
//! planned stops (SIGTERM, SIGINT) that hand leadership over and drain
//! requests, so that a rolling restart under load loses no acknowledged
//! write.

mod common;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::*;
use serde_json::{json, Value};

async fn probe(node: &Node, path: &str) -> (u16, Value) {
    match client().get(format!("http://{}{path}", node.http)).send().await {
        Ok(response) => (response.status().as_u16(), response.json().await.unwrap_or(Value::Null)),
        Err(_) => (0, Value::Null),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_and_readiness_say_whether_a_node_can_serve() {
    let root = tempfile::TempDir::new().unwrap();
    let mut nodes = three_node_cluster(root.path()).await;
    for node in &nodes {
        let (status, body) = probe(node, "/v1/health").await;
        assert_eq!((status, &body["health"]), (200, &json!(true)), "node {}: {body}", node.id);
        let body = eventually("every node ready", async || {
            let (status, body) = probe(node, "/v1/ready").await;
            (status == 200).then_some(body)
        })
        .await;
        assert_eq!(body["ready"], true, "{body}");
        assert!(body["applied_index"].as_u64() >= body["commit_index"].as_u64(), "{body}");
        assert!(body["leader"].as_u64().is_some(), "{body}");
    }
    assert!(log_of(&nodes[2]).contains("ready: a leader is known"), "{}", tail(&log_of(&nodes[2]), 20));

    // Alone, a node is alive but not ready: it knows no leader.
    let survivor = nodes.pop().unwrap();
    for node in &mut nodes {
        node.kill9();
    }
    let (status, body) = eventually("the survivor to lose its leader", async || {
        let (status, body) = probe(&survivor, "/v1/ready").await;
        (status == 503).then_some((status, body))
    })
    .await;
    assert_eq!(status, 503);
    assert_eq!(body["error"]["code"], "not_ready", "{body}");
    assert_eq!(body["error"]["outcome"], "not_done", "{body}");
    assert_eq!(probe(&survivor, "/v1/health").await.0, 200);
}

/// Writes unique keys through any of `endpoints`, moving to the next one
/// when a node does not answer or says the write was not done; records
/// what was acknowledged and the longest time between acknowledgements.
struct Writers {
    acknowledged: Arc<Mutex<Vec<(String, String)>>>,
    longest_gap: Arc<Mutex<Duration>>,
    stop: Arc<AtomicBool>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Writers {
    fn start(endpoints: Vec<String>, clients: usize) -> Writers {
        let acknowledged = Arc::new(Mutex::new(Vec::new()));
        let last = Arc::new(Mutex::new(Instant::now()));
        let longest_gap = Arc::new(Mutex::new(Duration::ZERO));
        let stop = Arc::new(AtomicBool::new(false));
        let tasks = (0..clients)
            .map(|c| {
                let (endpoints, acknowledged, last, longest_gap, stop) =
                    (endpoints.clone(), acknowledged.clone(), last.clone(), longest_gap.clone(), stop.clone());
                tokio::spawn(async move {
                    let http = http_client(Duration::from_secs(2));
                    let mut at = c % endpoints.len();
                    let mut n = 0u64;
                    while !stop.load(Ordering::Relaxed) {
                        n += 1;
                        let (key, value) = (format!("w{c}-{n}"), n.to_string());
                        let sent = http
                            .post(format!("http://{}/api/v1/set", endpoints[at]))
                            .json(&json!({"key": key, "value": value}))
                            .send()
                            .await;
                        match sent {
                            Ok(response) if response.status().is_success() => {
                                let now = Instant::now();
                                let mut last = last.lock().unwrap();
                                let gap = now - *last;
                                *last = now;
                                let mut longest = longest_gap.lock().unwrap();
                                *longest = (*longest).max(gap);
                                acknowledged.lock().unwrap().push((key, value));
                            }
                            // Refused, unknown or unanswered: try the next node.
                            _ => at = (at + 1) % endpoints.len(),
                        }
                    }
                })
            })
            .collect();
        Writers { acknowledged, longest_gap, stop, tasks }
    }

    /// The longest gap so far, and starts a new measure.
    fn take_gap(&self) -> Duration {
        std::mem::take(&mut *self.longest_gap.lock().unwrap())
    }

    async fn finish(self) -> Vec<(String, String)> {
        self.stop.store(true, Ordering::Relaxed);
        for task in self.tasks {
            task.await.unwrap();
        }
        std::mem::take(&mut *self.acknowledged.lock().unwrap())
    }
}

async fn ready(node: &Node) {
    eventually("the node to be ready", async || (probe(node, "/v1/ready").await.0 == 200).then_some(())).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rolling_restart_with_sigterm_under_writes_loses_nothing_acknowledged() {
    let root = tempfile::TempDir::new().unwrap();
    let mut nodes = three_node_cluster(root.path()).await;
    for node in &nodes {
        ready(node).await;
    }
    let endpoints: Vec<String> = nodes.iter().map(|n| n.http.clone()).collect();
    let writers = Writers::start(endpoints, 4);
    tokio::time::sleep(Duration::from_millis(500)).await;
    let mut gaps = Vec::new();
    // Each node in turn, the leader last (it is the interesting one).
    let leader = leader_of(&nodes.iter().collect::<Vec<_>>()).await;
    let mut order: Vec<usize> = (0..3).filter(|&i| nodes[i].id != leader).collect();
    order.push(nodes.iter().position(|n| n.id == leader).unwrap());
    for i in order {
        let led = stats(&nodes[i]).await.is_some_and(|s| s["state"] == "Leader");
        writers.take_gap();
        nodes[i].signal(if i % 2 == 0 { "-TERM" } else { "-INT" });
        let status = exit_status(&mut nodes[i], "the node to stop").await;
        assert!(status.success(), "node {} exited with {status}: {}", nodes[i].id, tail(&log_of(&nodes[i]), 20));
        let log = log_of(&nodes[i]);
        if led {
            assert!(log.contains("handed leadership over before stopping"), "{}", tail(&log, 20));
        }
        assert!(log.contains("stopped"), "{}", tail(&log, 20));
        nodes[i].start(&[]);
        ready(&nodes[i]).await;
        tokio::time::sleep(Duration::from_millis(300)).await;
        gaps.push((nodes[i].id, led, writers.take_gap()));
    }
    let acknowledged = writers.finish().await;
    println!(
        "rolling restart: {} writes acknowledged; longest gap per restart (node, led, gap): {gaps:?}",
        acknowledged.len()
    );
    assert!(acknowledged.len() > 100, "{} writes acknowledged", acknowledged.len());

    // Every acknowledged write is there, on every node.
    for node in &nodes {
        ready(node).await;
        for (key, value) in &acknowledged {
            let (status, body) = get_json(node, key, "linearizable").await;
            assert_eq!((status, &body["value"]), (200, &json!(value)), "node {}, key {key}: {body}", node.id);
        }
    }
}

/// The value of the sample `series` (name and labels, as printed) in a
/// Prometheus text exposition.
fn sample(text: &str, series: &str) -> Option<f64> {
    text.lines().find_map(|line| line.strip_prefix(series)?.strip_prefix(' ')?.trim().parse().ok())
}

async fn scrape(node: &Node) -> (u16, String) {
    let response = client().get(format!("http://{}/metrics", node.http)).send().await.unwrap();
    (response.status().as_u16(), response.text().await.unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_show_the_nodes_state_and_what_it_did() {
    let root = tempfile::TempDir::new().unwrap();
    let nodes = three_node_cluster(root.path()).await;
    let leader = leader_of(&nodes.iter().collect::<Vec<_>>()).await;
    let (leader, follower) = {
        let at = nodes.iter().position(|n| n.id == leader).unwrap();
        (&nodes[at], &nodes[(at + 1) % 3])
    };
    for i in 0..50 {
        assert_eq!(set(leader, &format!("m{i}"), "v").await.status(), 200);
    }
    let (status, text) = scrape(leader).await;
    assert_eq!(status, 200, "{text}");
    let value = |series: &str| sample(&text, series).unwrap_or_else(|| panic!("no {series} in:\n{text}"));
    assert_eq!(value("raftkv_raft_role{role=\"leader\"}"), 1.0);
    assert_eq!(value("raftkv_raft_role{role=\"follower\"}"), 0.0);
    assert!(value("raftkv_raft_commit_index") >= 50.0);
    assert!(value("raftkv_raft_applied_index") >= 50.0);
    assert!(value("raftkv_raft_term") >= 1.0);
    assert!(value("raftkv_raft_entries_appended_total") >= 50.0);
    assert!(value("raftkv_raft_commit_duration_seconds_count") >= 1.0);
    assert!(value("raftkv_raft_append_duration_seconds_count") >= 1.0);
    assert!(value("raftkv_storage_fsync_duration_seconds_count") >= 1.0);
    assert!(value("raftkv_storage_wal_bytes_written_total") > 0.0);
    assert!(value("raftkv_storage_wal_segments") >= 1.0);
    assert!(value("raftkv_raft_leader_changes_total") >= 1.0);
    let sets = "raftkv_http_requests_total{method=\"POST\",route=\"/api/v1/set\",status=\"200\"}";
    assert!(value(sets) >= 50.0, "{sets}");
    assert!(value("raftkv_http_request_duration_seconds_count{method=\"POST\",route=\"/api/v1/set\"}") >= 50.0);
    for peer in nodes.iter().filter(|n| n.id != leader.id) {
        assert!(value(&format!("raftkv_raft_peer_match_index{{peer=\"{}\"}}", peer.id)) >= 50.0);
        assert!(sample(&text, &format!("raftkv_raft_peer_lag_entries{{peer=\"{}\"}}", peer.id)).is_some());
    }
    // Health depends on timing (a follower that missed the last-contact
    // threshold under load is unhealthy for a while): present and in range.
    let tolerance = value("raftkv_autopilot_failure_tolerance");
    assert!((0.0..=1.0).contains(&tolerance), "{tolerance}");
    assert!(sample(&text, "raftkv_autopilot_healthy").is_some(), "{text}");

    // A follower shows its own role and no peers.
    let (_, text) = scrape(follower).await;
    assert_eq!(sample(&text, "raftkv_raft_role{role=\"follower\"}"), Some(1.0), "{text}");
    assert!(!text.contains("raftkv_raft_peer_match_index{"), "{text}");
    assert!(sample(&text, "raftkv_raft_entries_appended_total").is_some_and(|n| n >= 50.0), "{text}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_metrics_the_route_says_so() {
    let root = tempfile::TempDir::new().unwrap();
    let mut node = Node::new(1, root.path());
    node.start(&["--bootstrap", "--no-metrics"]);
    leader_of(&[&node]).await;
    let response = client().get(format!("http://{}/metrics", node.http)).send().await.unwrap();
    assert_eq!(response.status().as_u16(), 404);
    let body: Value = response.json().await.unwrap();
    assert!(body["error"]["message"].as_str().unwrap().contains("--no-metrics"), "{body}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_signal_stops_at_once_without_waiting_for_the_drain() {
    let root = tempfile::TempDir::new().unwrap();
    let mut node = Node::new(1, root.path());
    node.start(&["--bootstrap"]);
    leader_of(&[&node]).await;
    // An upload that never finishes holds a request open through the drain.
    let mut upload = tokio::net::TcpStream::connect(&node.http).await.unwrap();
    let head = "POST /api/v1/snapshot HTTP/1.1\r\nhost: x\r\ncontent-length: 1000000\r\n\r\nsome bytes";
    tokio::io::AsyncWriteExt::write_all(&mut upload, head.as_bytes()).await.unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    node.signal("-TERM");
    eventually("the stop to begin draining", async || log_of(&node).contains("draining requests").then_some(())).await;
    node.signal("-TERM");
    let status = exit_status(&mut node, "the node to exit").await;
    assert_eq!(status.code(), Some(143), "{}", tail(&log_of(&node), 20));
    assert!(log_of(&node).contains("asked again"), "{}", tail(&log_of(&node), 20));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_data_dir_of_another_node_is_refused_and_a_node_that_cannot_listen_writes_nothing() {
    let root = tempfile::TempDir::new().unwrap();
    let mut node = Node::new(1, root.path());
    node.start(&["--bootstrap"]);
    leader_of(&[&node]).await;
    node.signal("-TERM");
    assert!(exit_status(&mut node, "node 1 to stop").await.success());

    // The same data dir under another id.
    let mut other = Node::new(2, root.path());
    other.dir = node.dir.clone();
    other.start(&[]);
    let status = exit_status(&mut other, "node 2 to refuse the data dir").await;
    assert_eq!(status.code(), Some(2));
    let log = std::fs::read_to_string(other.dir.with_extension("log")).unwrap();
    assert!(log.contains("belongs to node 1, not to --id 2"), "{log}");

    // A raft address in use: the node exits before creating its data dir.
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let mut blocked = Node::new(3, root.path());
    blocked.raft = taken.local_addr().unwrap().to_string();
    blocked.start(&["--bootstrap"]);
    let status = exit_status(&mut blocked, "node 3 to fail to listen").await;
    assert_eq!(status.code(), Some(2));
    assert!(!blocked.dir.exists(), "a node that could not listen created {}", blocked.dir.display());
}

#[test]
fn settings_come_from_flags_then_environment_then_the_config_file() {
    let dir = tempfile::TempDir::new().unwrap();
    let file = dir.path().join("raftkv.toml");
    std::fs::write(
        &file,
        "id = 7\nhttp_addr = \"127.0.0.1:8007\"\nraft-addr = \"127.0.0.1:9007\"\ndata_dir = \"data/7\"\n\
         join = [\"127.0.0.1:9001\", \"127.0.0.1:9002\"]\nheartbeat_ms = 50\nelection_timeout_ms = 500\n\
         max_trailing_logs = 99\n",
    )
    .unwrap();
    let out = std::process::Command::new(BIN)
        .args(["agent", "--config"])
        .arg(&file)
        .args(["--heartbeat-ms", "60", "--encrypt", "c2VjcmV0", "--print-config"])
        .env("RAFTKV_ELECTION_TIMEOUT_MS", "800")
        .env("RAFTKV_HEARTBEAT_MS", "70")
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let printed: toml::Table = String::from_utf8(out.stdout).unwrap().parse().unwrap();
    assert_eq!(printed["id"].as_integer(), Some(7), "from the file");
    assert_eq!(printed["max_trailing_logs"].as_integer(), Some(99), "from the file");
    assert_eq!(printed["join"].as_array().map(Vec::len), Some(2), "from the file");
    assert_eq!(printed["election_timeout_ms"].as_integer(), Some(800), "the environment over the file");
    assert_eq!(printed["heartbeat_ms"].as_integer(), Some(60), "the flag over both");
    assert_eq!(printed["encrypt"].as_str(), Some("<hidden>"), "secrets are not printed");
    assert_eq!(printed["request_timeout_ms"].as_integer(), Some(10_000), "the default");

    // Contradictions and unknown settings are refused, with the reason.
    let out = std::process::Command::new(BIN)
        .args(["agent", "--config"])
        .arg(&file)
        .args(["--bootstrap", "--print-config"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("cannot be used with"), "{out:?}");
    std::fs::write(&file, "id = 7\nheartbeat = 50\n").unwrap();
    let out = std::process::Command::new(BIN).args(["agent", "--config"]).arg(&file).output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("`heartbeat` is not a setting"), "{out:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_reloads_the_config_files_reloadable_settings_below_the_flags() {
    let root = tempfile::TempDir::new().unwrap();
    let file = root.path().join("raftkv.toml");
    std::fs::write(&file, "max_trailing_logs = 77\nmin_quorum = 2\n").unwrap();
    let mut node = Node::new(1, root.path());
    node.start(&["--bootstrap", "--config", file.to_str().unwrap()]);
    leader_of(&[&node]).await;
    let (status, settings) = post(&node, "/api/maintain/config", json!({})).await;
    assert_eq!(status, 200, "{settings}");
    assert_eq!((settings["max_trailing_logs"].as_u64(), settings["min_quorum"].as_u64()), (Some(77), Some(2)));

    // The stabilization time is a flag of this node (see `Node::start`): the
    // file's value for it is not taken, on reload either.
    std::fs::write(&file, "max_trailing_logs = 55\nmin_quorum = 2\nserver_stabilization_ms = 3000\n").unwrap();
    node.signal("-HUP");
    let settings = eventually("the reload", async || {
        let (_, settings) = post(&node, "/api/maintain/config", json!({})).await;
        (settings["max_trailing_logs"] == 55).then_some(settings)
    })
    .await;
    assert_eq!(settings["server_stabilization_ms"], 1000, "{settings}");
    // The line is logged after the settings apply: a reader can see them first.
    eventually("the reload's log line", async || log_of(&node).contains("SIGHUP: settings reloaded").then_some(()))
        .await;

    // A file that no longer parses changes nothing.
    std::fs::write(&file, "max_trailing_logs = [\n").unwrap();
    node.signal("-HUP");
    eventually("the refusal", async || log_of(&node).contains("the settings do not load").then_some(())).await;
    let (_, settings) = post(&node, "/api/maintain/config", json!({})).await;
    assert_eq!(settings["max_trailing_logs"], 55, "{settings}");
}
