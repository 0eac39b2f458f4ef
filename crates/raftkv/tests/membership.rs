//! Membership changes between real `raftkv agent` processes: a join under
//! write load (staged, promoted once caught up), a joining node that cannot
//! catch up, made-up joins, and the autopilot's view of a dead voter and its
//! replacement. Every wait is bounded; times are printed, never asserted.

mod common;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::*;
use serde_json::{json, Value};

async fn get(node: &Node, path: &str) -> Option<Value> {
    let response = client().get(format!("http://{}{path}", node.http)).send().await.ok()?;
    response.status().is_success().then_some(())?;
    response.json().await.ok()
}

/// The members as `node` lists them, by id: (suffrage, trailing).
async fn members(node: &Node) -> Option<Vec<(u64, String, Option<u64>)>> {
    let body = get(node, "/api/v1/members").await?;
    let list = body["members"].as_array()?;
    Some(
        list.iter()
            .map(|m| {
                (
                    m["id"].as_u64().unwrap_or(0),
                    m["suffrage"].as_str().unwrap_or("").to_string(),
                    m["trailing"].as_u64(),
                )
            })
            .collect(),
    )
}

fn suffrage_of(members: &[(u64, String, Option<u64>)], id: u64) -> Option<&str> {
    members.iter().find(|m| m.0 == id).map(|m| m.1.as_str())
}

/// A new node joins while a client writes through another node: it is a
/// staging learner first and a voter only once caught up, every
/// acknowledged write reaches it, and the longest pause between two
/// acknowledged writes during the join is printed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_joining_under_write_load_is_promoted_once_caught_up() {
    let root = tempfile::TempDir::new().unwrap();
    let mut nodes = three_node_cluster(root.path()).await;
    let leader = leader_of(&[&nodes[0], &nodes[1], &nodes[2]]).await;

    let stop = Arc::new(AtomicBool::new(false));
    let acked: Arc<Mutex<Vec<(Instant, u64)>>> = Arc::default();
    let writer = {
        let (stop, acked, target) = (stop.clone(), acked.clone(), nodes[1].http.clone());
        tokio::spawn(async move {
            let http = client();
            let mut i = 0u64;
            while !stop.load(Ordering::Relaxed) {
                let body = json!({"key": format!("k{}", i % 500), "value": format!("v{i}")});
                let sent = http.post(format!("http://{target}/api/v1/set")).json(&body).send().await;
                if sent.is_ok_and(|r| r.status() == 200) {
                    acked.lock().unwrap().push((Instant::now(), i));
                }
                i += 1;
            }
        })
    };
    tokio::time::sleep(Duration::from_millis(500)).await;

    let mut node4 = Node::new(4, root.path());
    let join_started = Instant::now();
    node4.start(&["--join", &nodes[0].raft]);
    let leader_node = &nodes[(leader - 1) as usize];
    let mut seen_staging = None;
    let promoted_with = eventually("node 4 promoted", async || {
        let list = members(leader_node).await?;
        match suffrage_of(&list, 4) {
            Some("staging") => {
                seen_staging = Some(list.iter().find(|m| m.0 == 4).and_then(|m| m.2));
                None
            }
            Some("voter") => Some(list),
            _ => None,
        }
    })
    .await;
    let joined_in = join_started.elapsed();
    assert!(seen_staging.is_some(), "node 4 was never seen staging: {promoted_with:?}");
    tokio::time::sleep(Duration::from_millis(500)).await;
    stop.store(true, Ordering::Relaxed);
    writer.await.unwrap();

    let acked = acked.lock().unwrap().clone();
    let during: Vec<Instant> = acked.iter().map(|(at, _)| *at).filter(|at| *at >= join_started).collect();
    let longest_gap = during.windows(2).map(|w| w[1] - w[0]).max().unwrap_or_default();
    println!(
        "join under load: {} writes acknowledged, node 4 a voter after {joined_in:?}, longest write gap during the \
         join {longest_gap:?} (trailing when last seen staging: {seen_staging:?})",
        acked.len()
    );
    assert!(!during.is_empty(), "no write was acknowledged during the join");

    // Every acknowledged write reached the new voter.
    let (_, last) = *acked.last().unwrap();
    let key = format!("k{}", last % 500);
    eventually("node 4 has the last acknowledged write", async || {
        let (status, value) = get_json(&node4, &key, "stale").await;
        (status == 200 && value["value"] == json!(format!("v{last}"))).then_some(())
    })
    .await;
    nodes.push(node4);
}

/// A node that stops answering while it is staging is never promoted: at
/// the join timeout the leader removes it, and a join waiting for it is told
/// so (409 `not_caught_up`, not done).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_joining_node_that_never_catches_up_is_never_promoted_and_the_join_fails_clearly() {
    let root = tempfile::TempDir::new().unwrap();
    let mut nodes: Vec<Node> = (1..=3).map(|id| Node::new(id, root.path())).collect();
    // Three seconds of stability before a promotion: room to see node 4
    // staging and pause it, however loaded the machine.
    let timing = ["--server-stabilization-ms", "3000", "--join-timeout-ms", "6000"];
    nodes[0].start(&[&["--bootstrap"][..], &timing[..]].concat());
    assert_eq!(leader_of(&[&nodes[0]]).await, 1);
    let first = nodes[0].raft.clone();
    for node in &mut nodes[1..] {
        node.start(&[&["--join", first.as_str()][..], &timing[..]].concat());
    }
    eventually("three voters", async || {
        let list = members(&nodes[0]).await?;
        (list.iter().filter(|m| m.1 == "voter").count() == 3).then_some(())
    })
    .await;

    let mut node4 = Node::new(4, root.path());
    node4.start(&["--join", &first]);
    eventually("node 4 staging", async || {
        (suffrage_of(&members(&nodes[0]).await?, 4) == Some("staging")).then_some(())
    })
    .await;
    node4.signal("-STOP");
    let (raft4, paused_at) = (node4.raft.clone(), Instant::now());
    let join = tokio::spawn({
        let leader = nodes[0].http.clone();
        async move {
            let body = json!({"id": 4, "raft_addr": raft4});
            let http = common::http_client(Duration::from_secs(30));
            let response = http.post(format!("http://{leader}/api/v1/join")).json(&body).send().await.unwrap();
            (response.status().as_u16(), response.json::<Value>().await.unwrap_or(Value::Null))
        }
    });
    // Never a voter while paused; gone once the join timeout has passed.
    let removed = eventually("node 4 removed", async || {
        let list = members(&nodes[0]).await?;
        assert_ne!(suffrage_of(&list, 4), Some("voter"), "a paused node was promoted: {list:?}");
        suffrage_of(&list, 4).is_none().then_some(paused_at.elapsed())
    })
    .await;
    let (status, body) = join.await.unwrap();
    println!("paused joiner removed {removed:?} after it stopped answering; the waiting join answered {status} {body}");
    assert_eq!(status, 409, "{body}");
    assert_eq!(body["error"]["code"], "not_caught_up", "{body}");
    assert_eq!(body["error"]["outcome"], "not_done", "{body}");
    // The cluster goes on with its three voters.
    assert_eq!(set(&nodes[1], "after", "removal").await.status(), 200);
    let list = members(&nodes[0]).await.unwrap();
    assert_eq!(list.iter().filter(|m| m.1 == "voter").count(), 3, "{list:?}");
    node4.signal("-CONT");
}

/// Ten joins of servers that do not exist are refused before anything
/// changes: the cluster keeps its leader, term and voters, and a real join
/// afterwards succeeds.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn made_up_joins_change_nothing_and_a_real_join_still_succeeds() {
    let root = tempfile::TempDir::new().unwrap();
    let nodes = three_node_cluster(root.path()).await;
    let before = stats(&nodes[0]).await.unwrap();
    for id in 100..110u64 {
        let address = format!("127.0.0.1:{}", free_port());
        let (status, body) = post(&nodes[1], "/api/v1/join", json!({"id": id, "raft_addr": address})).await;
        assert_eq!(status, 409, "made-up join {id}: {body}");
        assert_eq!(body["error"]["outcome"], "not_done", "{body}");
    }
    // An existing id at another address is refused too.
    let (status, body) = post(&nodes[0], "/api/v1/join", json!({"id": 2, "raft_addr": "127.0.0.1:1"})).await;
    assert_eq!(status, 409, "{body}");
    let after = stats(&nodes[0]).await.unwrap();
    for field in ["state", "term", "num_peers", "latest_configuration"] {
        assert_eq!(before[field], after[field], "{field} changed");
    }

    let mut node4 = Node::new(4, root.path());
    node4.start(&["--join", &nodes[2].raft]);
    eventually("node 4 a voter", async || (suffrage_of(&members(&nodes[0]).await?, 4) == Some("voter")).then_some(()))
        .await;
}

/// The autopilot on the leader: a killed voter is reported unhealthy and the
/// failure tolerance drops; it is dead but kept while removing it would
/// leave fewer than `--min-quorum` (3) voters; once a replacement has
/// joined, the dead one is removed. Writes succeed throughout.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn autopilot_reports_a_dead_voter_and_removes_it_once_replaced() {
    let root = tempfile::TempDir::new().unwrap();
    let mut nodes = three_node_cluster(root.path()).await;
    let leader = leader_of(&[&nodes[0], &nodes[1], &nodes[2]]).await;
    let victim = if leader == 3 { 2 } else { 3 };
    let health = async |nodes: &[Node]| get(&nodes[(leader - 1) as usize], "/api/v1/operator/autopilot/health").await;
    // The autopilot's view is at most one round (100 ms) old.
    let healthy = async |nodes: &[Node]| {
        health(nodes).await.filter(|s| s["healthy"] == true && s["voters"].as_array().is_some_and(|v| v.len() == 3))
    };
    let state = eventually("a healthy cluster of three voters", async || healthy(&nodes).await).await;
    assert_eq!(state["failure_tolerance"], 1, "{state}");
    // A follower answers with the leader's view.
    let other = (1..=3).find(|id| *id != leader && *id != victim).unwrap();
    let from_follower = get(&nodes[(other - 1) as usize], "/api/v1/operator/autopilot/health").await.unwrap();
    assert_eq!(from_follower["leader"], leader, "{from_follower}");

    nodes[(victim - 1) as usize].kill9();
    let killed = Instant::now();
    let server = |state: &Value, id: u64| state["servers"].as_array().unwrap().iter().find(|s| s["id"] == id).cloned();
    let unhealthy = eventually("the dead voter unhealthy", async || {
        let state = health(&nodes).await?;
        (server(&state, victim)?["healthy"] == false).then_some(state)
    })
    .await;
    let detected = killed.elapsed();
    assert_eq!(unhealthy["failure_tolerance"], 0, "{unhealthy}");
    let dead = eventually("the voter dead", async || {
        let state = health(&nodes).await?;
        (server(&state, victim)?["dead"] == true).then_some(state)
    })
    .await;
    println!("autopilot: voter {victim} unhealthy {detected:?} after kill -9, dead after {:?}", killed.elapsed());
    assert!(dead["voters"].as_array().unwrap().contains(&json!(victim)), "removed below min_quorum: {dead}");
    assert_eq!(set(&nodes[0], "during", "outage").await.status(), 200);

    let mut node4 = Node::new(4, root.path());
    node4.start(&["--join", &nodes[(leader - 1) as usize].raft]);
    let replaced = eventually("the dead voter replaced", async || {
        let list = members(&nodes[(leader - 1) as usize]).await?;
        let voters: Vec<u64> = list.iter().filter(|m| m.1 == "voter").map(|m| m.0).collect();
        (voters.contains(&4) && !list.iter().any(|m| m.0 == victim)).then_some(voters)
    })
    .await;
    assert_eq!(replaced.len(), 3, "{replaced:?}");
    assert_eq!(leader_of(&[&nodes[0], &nodes[1], &nodes[2]]).await, leader, "the leader changed");
    assert_eq!(set(&nodes[0], "after", "replacement").await.status(), 200);
    let state = eventually("healthy again", async || healthy(&nodes).await).await;
    assert_eq!(state["failure_tolerance"], 1, "{state}");
    nodes.push(node4);
}

/// A node removed while it was paused never hears of its removal from the
/// leader; it asks, learns it, says so, stops taking part (no campaigns, no
/// forwarded writes) and reports `Removed` in its stats.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_removed_while_cut_off_learns_it_and_stops_taking_part() {
    let root = tempfile::TempDir::new().unwrap();
    let nodes = three_node_cluster(root.path()).await;
    let leader = leader_of(&[&nodes[0], &nodes[1], &nodes[2]]).await;
    let victim = if leader == 3 { 2 } else { 3 };
    let term = stats(&nodes[leader as usize - 1]).await.unwrap()["term"].clone();
    nodes[victim - 1].signal("-STOP");
    let (status, body) = post(&nodes[leader as usize - 1], "/api/v1/remove", json!({"id": victim})).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(set(&nodes[leader as usize - 1], "after", "removal").await.status(), 200);
    nodes[victim - 1].signal("-CONT");

    let removed = eventually("the removed node to know", async || {
        let stats = stats(&nodes[victim - 1]).await?;
        (stats["state"] == "Removed").then_some(stats)
    })
    .await;
    assert!(removed["removed"].as_str().unwrap().contains("without node"), "{removed}");
    let (status, body) = post(&nodes[victim - 1], "/api/v1/set", json!({"key": "k", "value": "v"})).await;
    assert_eq!(status, 503, "{body}");
    assert_eq!(body["error"]["outcome"], "not_done", "{body}");
    assert!(body["error"]["message"].as_str().unwrap().contains("removed"), "{body}");
    assert!(log_of(&nodes[victim - 1]).contains("removed from the cluster"));
    // Joining it again as it is would only stage a node that takes no part.
    let again = json!({"id": victim, "raft_addr": nodes[victim - 1].raft});
    let (status, body) = post(&nodes[leader as usize - 1], "/api/v1/join", again).await;
    assert_eq!(status, 409, "{body}");
    assert!(body["error"]["message"].as_str().unwrap().contains("was removed"), "{body}");
    // It never disturbed the others.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let after = stats(&nodes[leader as usize - 1]).await.unwrap();
    assert_eq!((after["state"].clone(), after["term"].clone()), (json!("Leader"), term));
}
