//! Gossip between real `raftkv agent` processes: five agents that know only
//! the first one's gossip address find each other and found a cluster with
//! `--bootstrap-expect 5`; a node killed with SIGKILL is seen suspect, then
//! down, and alive again once restarted; a node that leaves is removed from
//! the configuration and exits. Every wait is bounded; times are printed.

mod common;

use std::time::Instant;

use common::*;
use serde_json::Value;

fn serf_port() -> String {
    // UDP; a TCP port this process has not handed out is free for UDP too.
    format!("127.0.0.1:{}", free_port())
}

async fn get(node: &Node, path: &str) -> Option<Value> {
    let response = client().get(format!("http://{}{path}", node.http)).send().await.ok()?;
    response.status().is_success().then_some(())?;
    response.json().await.ok()
}

/// Node `id`'s liveness as `observer` knows it by gossip.
async fn liveness(observer: &Node, id: u64) -> Option<String> {
    let body = get(observer, "/api/v1/gossip/members").await?;
    let members = body["members"].as_array()?;
    let newest = members.iter().filter(|m| m["id"] == id).max_by_key(|m| m["generation"].as_u64())?;
    newest["liveness"].as_str().map(str::to_string)
}

async fn voters(node: &Node) -> Option<Vec<u64>> {
    let body = get(node, "/api/v1/members").await?;
    let members = body["members"].as_array()?;
    Some(members.iter().filter(|m| m["suffrage"] == "voter").filter_map(|m| m["id"].as_u64()).collect())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn five_agents_found_a_cluster_by_gossip_and_see_failures() {
    let root = tempfile::TempDir::new().unwrap();
    let mut nodes: Vec<Node> = (1..=5).map(|id| Node::new(id, root.path())).collect();
    let serf: Vec<String> = (0..5).map(|_| serf_port()).collect();
    let gossip_args = |i: usize| -> Vec<String> {
        let mut args: Vec<String> = ["--serf-addr", &serf[i], "--bootstrap-expect", "5"].map(String::from).to_vec();
        // Three seconds of suspicion: room to see it, however loaded the machine.
        args.extend(["--gossip-probe-ms", "200", "--gossip-suspect-ms", "3000"].map(String::from));
        // Keep the killed node a voter: this test is about gossip.
        args.extend(["--cleanup-dead-servers", "false"].map(String::from));
        if i > 0 {
            args.extend(["--join".to_string(), serf[0].clone()]);
        }
        args
    };
    let started = Instant::now();
    for (i, node) in nodes.iter_mut().enumerate() {
        let args = gossip_args(i);
        node.start(&args.iter().map(String::as_str).collect::<Vec<_>>());
    }
    let all = [1, 2, 3, 4, 5];
    for node in &nodes {
        eventually("five voters everywhere", async || (voters(node).await? == all).then_some(())).await;
    }
    println!("gossip: five agents found each other and a cluster of five voters in {:?}", started.elapsed());
    let leader = leader_of(&nodes.iter().collect::<Vec<_>>()).await;
    assert_eq!(set(&nodes[0], "k", "v").await.status(), 200);
    for id in all {
        assert_eq!(liveness(&nodes[1], id).await.as_deref(), Some("alive"), "node {id} as node 2 sees it");
    }

    // kill -9 a follower: suspect, then down.
    let victim = if leader == 5 { 4 } else { 5 };
    let obs = if leader == 1 { 1 } else { 0 };
    nodes[victim - 1].kill9();
    let killed = Instant::now();
    let suspect = eventually("the killed node suspect", async || {
        let seen = liveness(&nodes[obs], victim as u64).await?;
        assert_ne!(seen, "down", "declared down without being suspected first");
        (seen == "suspect").then(|| killed.elapsed())
    })
    .await;
    let down = eventually("the killed node down", async || {
        (liveness(&nodes[obs], victim as u64).await? == "down").then(|| killed.elapsed())
    })
    .await;
    println!("gossip: node {victim} suspect {suspect:?} and down {down:?} after kill -9 (probe 200 ms, suspicion 3 s)");
    // The leader's autopilot hears it from its own gossip view, a moment later.
    eventually("the autopilot sees gossip's verdict", async || {
        let health = get(&nodes[leader as usize - 1], "/api/v1/operator/autopilot/health").await?;
        let server = health["servers"].as_array()?.iter().find(|s| s["id"] == victim).cloned()?;
        (server["gossip"] == "down" && server["dead"] == true).then_some(())
    })
    .await;

    // Restarted from its data dir, it is alive again and serves.
    let args = gossip_args(victim - 1);
    nodes[victim - 1].start(&args.iter().map(String::as_str).collect::<Vec<_>>());
    eventually("the restarted node alive", async || {
        (liveness(&nodes[obs], victim as u64).await? == "alive").then_some(())
    })
    .await;
    eventually("the restarted node has the write", async || {
        let (status, value) = get_json(&nodes[victim - 1], "k", "stale").await;
        (status == 200 && value["value"] == "v").then_some(())
    })
    .await;

    // A node that leaves is removed from the configuration and exits 0.
    let leaver = if leader == 3 { 2 } else { 3 };
    let (status, body) = post(&nodes[leaver - 1], "/api/v1/leave", Value::Null).await;
    assert_eq!(status, 200, "{body}");
    let exit = exit_status(&mut nodes[leaver - 1], "the leaver's exit").await;
    assert!(exit.success(), "{exit:?}");
    let remaining: Vec<u64> = all.iter().copied().filter(|id| *id != leaver as u64).collect();
    eventually("four voters", async || (voters(&nodes[obs]).await? == remaining).then_some(())).await;
    eventually("the leaver down", async || (liveness(&nodes[obs], leaver as u64).await? == "down").then_some(())).await;
    assert_eq!(set(&nodes[obs], "after", "leave").await.status(), 200);
}
