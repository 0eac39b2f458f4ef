//! Real `raftkv agent` processes meeting failures: a node whose storage fails
//! exits (non-zero, for a supervisor to restart it) while the others serve on;
//! a leadership transfer to an unreachable voter is answered as not done; the
//! leader can remove itself; SIGTERM, as a supervisor sends it, stops a node
//! cleanly. Every wait is bounded; nothing asserts on timing.

mod common;

use common::*;
use serde_json::json;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_whose_storage_fails_exits_non_zero_and_the_others_serve_on() {
    let root = tempfile::TempDir::new().unwrap();
    let mut nodes = three_node_cluster(root.path()).await;
    let refs: Vec<&Node> = nodes.iter().collect();
    let leader = leader_of(&refs).await;
    assert_eq!(set(&nodes[0], "before", "failure").await.status(), 200);
    let victim = nodes.iter().position(|n| n.id != leader).unwrap();
    let victim_id = nodes[victim].id;
    // Its data dir vanishes under it; the next hard-state write (a new term:
    // leadership is handed to it) cannot be stored.
    std::fs::remove_dir_all(&nodes[victim].dir).unwrap();
    let leader_node = nodes.iter().find(|n| n.id == leader).unwrap();
    let (status, answer) = post(leader_node, "/api/v1/transfer-leader", json!({"id": victim_id})).await;
    assert_ne!(status, 200, "leadership cannot move to a node that cannot store its term: {answer}");

    let exited = exit_status(&mut nodes[victim], "the failed node to exit").await;
    assert_eq!(exited.code(), Some(3), "a failed node exits with status 3: {exited}");
    let log = log_of(&nodes[victim]);
    assert!(log.contains("storage failed"), "the log says why it stopped:\n{log}");
    assert!(log.contains("exiting so that it can be restarted"), "{log}");

    // The two others still form a majority and serve reads and writes.
    let survivors: Vec<&Node> = nodes.iter().filter(|n| n.id != victim_id).collect();
    let leader = leader_of(&survivors).await;
    let leader_node = survivors.iter().find(|n| n.id == leader).unwrap();
    let follower = survivors.iter().find(|n| n.id != leader).unwrap();
    eventually("a write after the failure", async || {
        (set(follower, "after", "failure").await.status() == 200).then_some(())
    })
    .await;
    for (node, key, value) in [(leader_node, "after", "failure"), (follower, "before", "failure")] {
        let (status, body) = get_json(node, key, "linearizable").await;
        assert_eq!((status, body["value"].clone()), (200, json!(value)), "node {}", node.id);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_transfer_to_an_unreachable_voter_says_leadership_did_not_move() {
    let root = tempfile::TempDir::new().unwrap();
    let nodes = three_node_cluster(root.path()).await;
    let refs: Vec<&Node> = nodes.iter().collect();
    let leader = leader_of(&refs).await;
    let leader_node = nodes.iter().find(|n| n.id == leader).unwrap();
    let target = nodes.iter().find(|n| n.id != leader).unwrap();
    let other = nodes.iter().find(|n| n.id != leader && n.id != target.id).unwrap();

    target.signal("-STOP");
    // Asked of the leader, and of a follower (forwarded to the leader).
    for asked in [leader_node, other] {
        let (status, body) = post(asked, "/api/v1/transfer-leader", json!({"id": target.id})).await;
        assert_eq!(status, 409, "asked node {}: {body}", asked.id);
        assert_eq!(body["error"]["code"], "transfer_failed", "asked node {}: {body}", asked.id);
        let message = body["error"]["message"].as_str().unwrap_or_default();
        assert!(message.contains(&format!("transfer to node {}", target.id)), "{message}");
    }
    target.signal("-CONT");

    // Once it is back, a transfer answers 200 only when the target leads. The
    // stopped node may still act on the TimeoutNow it slept through and take
    // over: a transfer then answers 409 (another node took over) or 503 (an
    // election is under way), truthfully, so the leader is looked up again.
    let mut answers = Vec::new();
    let (target, body) = loop {
        assert!(answers.len() < 200, "no transfer to a reachable voter succeeded: {answers:#?}");
        let leader = leader_of(&refs).await;
        let leader_node = nodes.iter().find(|n| n.id == leader).unwrap();
        let target = nodes.iter().find(|n| n.id != leader).unwrap();
        let (status, body) = post(leader_node, "/api/v1/transfer-leader", json!({"id": target.id})).await;
        match status {
            200 => break (target, body),
            409 if body["error"]["code"] == "transfer_failed" => {}
            503 => {}
            _ => panic!("a transfer to a reachable voter answered {status}: {body}"),
        }
        answers.push((leader, target.id, status, body));
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    };
    assert_eq!(body["target"], json!(target.id));
    let stats = stats(target).await.unwrap();
    assert_eq!(stats["state"], "Leader", "the target leads once the transfer is answered: {stats}");

    // Asking for the leader that already leads is done at once, wherever asked:
    // a caller that lost the first answer and retries is told the truth.
    for asked in &nodes {
        let (status, body) = post(asked, "/api/v1/transfer-leader", json!({"id": target.id})).await;
        assert_eq!((status, body["target"].clone()), (200, json!(target.id)), "asked node {}: {body}", asked.id);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn removing_the_leader_through_the_api_answers_success() {
    let root = tempfile::TempDir::new().unwrap();
    let nodes = three_node_cluster(root.path()).await;
    let refs: Vec<&Node> = nodes.iter().collect();
    let leader = leader_of(&refs).await;
    let leader_node = nodes.iter().find(|n| n.id == leader).unwrap();
    let (status, body) = post(leader_node, "/api/v1/remove", json!({"id": leader})).await;
    assert_eq!(status, 200, "removing the leader committed: {body}");
    assert!(body["index"].as_u64().is_some_and(|i| i > 0), "{body}");

    let survivors: Vec<&Node> = nodes.iter().filter(|n| n.id != leader).collect();
    let new_leader = leader_of(&survivors).await;
    let new_leader_node = survivors.iter().find(|n| n.id == new_leader).unwrap();
    let members = client()
        .get(format!("http://{}/api/v1/members", new_leader_node.http))
        .send()
        .await
        .unwrap()
        .json::<serde_json::Value>()
        .await
        .unwrap();
    let ids: Vec<u64> = members["members"].as_array().unwrap().iter().map(|m| m["id"].as_u64().unwrap()).collect();
    assert!(!ids.contains(&leader), "{members}");
    eventually("a write after the removal", async || {
        (set(new_leader_node, "after", "removal").await.status() == 200).then_some(())
    })
    .await;
}

/// A supervisor stops a service with SIGTERM: the agent shuts down cleanly
/// (status 0, its log says so) and restarts from its data with what it had.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_stops_a_node_cleanly_and_it_restarts_with_its_data() {
    let root = tempfile::TempDir::new().unwrap();
    let mut nodes = three_node_cluster(root.path()).await;
    assert_eq!(set(&nodes[0], "kept", "across a restart").await.status(), 200);
    nodes[2].signal("-TERM");
    let exited = exit_status(&mut nodes[2], "the node to stop on SIGTERM").await;
    assert_eq!(exited.code(), Some(0), "SIGTERM is a clean stop: {exited}");
    let log = log_of(&nodes[2]);
    assert!(log.contains("shutting down") && log.contains("terminate"), "{log}");
    nodes[2].start(&[]);
    let (status, body) = eventually("the restarted node to serve a linearizable read", async || {
        let (status, body) = get_json(&nodes[2], "kept", "linearizable").await;
        (status == 200).then_some((status, body))
    })
    .await;
    assert_eq!((status, body["value"].clone()), (200, json!("across a restart")));
}

/// Joins that would hurt the cluster are refused before anything changes: an
/// existing member's id at another address (it would hand that voter's place
/// to whatever listens there) and an address where no node of this cluster
/// answers (an unreachable voter shrinks the margin, or stops a small
/// cluster). A retried join of a member as it is answers at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn joins_that_would_hurt_the_cluster_are_refused() {
    let root = tempfile::TempDir::new().unwrap();
    let nodes = three_node_cluster(root.path()).await;
    let refs: Vec<&Node> = nodes.iter().collect();
    let leader = leader_of(&refs).await;
    let follower = nodes.iter().find(|n| n.id != leader).unwrap();
    let silent = format!("127.0.0.1:{}", free_port());
    for (asked, body) in [
        (follower, json!({"id": 3, "raft_addr": silent})),
        (follower, json!({"id": 8, "raft_addr": silent})),
        (&nodes[0], json!({"id": 9, "raft_addr": nodes[1].raft})),
    ] {
        let (status, answer) = post(asked, "/api/v1/join", body.clone()).await;
        assert_eq!(status, 409, "{body}: {answer}");
        assert_eq!(
            (answer["error"]["code"].clone(), answer["error"]["outcome"].clone()),
            (json!("refused"), json!("not_done"))
        );
    }
    let members = client().get(format!("http://{}/api/v1/members", nodes[0].http)).send().await.unwrap();
    let members = members.json::<serde_json::Value>().await.unwrap();
    let listed: Vec<(u64, String)> = members["members"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| (m["id"].as_u64().unwrap(), m["raft_addr"].as_str().unwrap().to_string()))
        .collect();
    let expected: Vec<(u64, String)> = nodes.iter().map(|n| (n.id, n.raft.clone())).collect();
    assert_eq!(listed, expected, "{members}");
    let (status, answer) = post(follower, "/api/v1/join", json!({"id": 3, "raft_addr": nodes[2].raft})).await;
    assert_eq!(status, 200, "{answer}");
    assert_eq!(set(follower, "after", "joins").await.status(), 200);
}

/// The internal service takes work only from members, only client commands,
/// within the same limits as the HTTP API; a refusal is typed and not done.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_internal_service_refuses_strangers_and_commands_clients_may_not_send() {
    use raftkv::agent::wire::proto::{self, internal_client::InternalClient};
    use raftkv_raft::transport::grpc::Identity;
    use raftkv_raft::NodeId;

    let root = tempfile::TempDir::new().unwrap();
    let nodes = three_node_cluster(root.path()).await;
    let refs: Vec<&Node> = nodes.iter().collect();
    let leader = nodes.iter().find(|n| n.id == 1).unwrap();
    assert_eq!(leader_of(&refs).await, 1);
    let mut internal = InternalClient::connect(format!("http://{}", leader.raft)).await.unwrap();
    let cluster_id = internal.cluster_info(proto::ClusterInfoRequest {}).await.unwrap().into_inner().cluster_id;
    let batch = |from: u64, commands: Vec<&str>| {
        let mut request = tonic::Request::new(proto::ApplyBatchRequest {
            commands: commands.into_iter().map(|c| bytes::Bytes::from(c.to_string())).collect(),
        });
        Identity::new(cluster_id.clone(), NodeId(from), "127.0.0.1:1").header(Some(NodeId(1))).stamp(&mut request);
        request
    };
    let set = r#"{"op":"set","key":"forged","value":"x"}"#;
    for from in [99, 0] {
        let answer = internal.apply_batch(batch(from, vec![set])).await.unwrap().into_inner();
        let refused = answer.refused.clone().unwrap_or_else(|| panic!("node {from} is no member: {answer:?}"));
        assert_eq!(refused.outcome, proto::Outcome::NotDone as i32, "{refused:?}");
    }
    let register = r#"{"op":"register_peer","id":7,"raft_addr":"127.0.0.1:1","http_addr":""}"#;
    let empty_key = r#"{"op":"set","key":"","value":"x"}"#;
    let answer = internal.apply_batch(batch(2, vec![register, empty_key, set])).await.unwrap().into_inner();
    assert!(answer.refused.is_none(), "{answer:?}");
    let kinds: Vec<Option<i32>> = answer
        .results
        .iter()
        .map(|r| match &r.result {
            Some(proto::apply_result::Result::Failure(failure)) => Some(failure.kind),
            _ => None,
        })
        .collect();
    let bad = Some(proto::Kind::BadRequest as i32);
    assert_eq!(kinds, vec![bad, bad, None], "{answer:?}");
    let (status, body) = get_json(leader, "forged", "linearizable").await;
    assert_eq!((status, body["value"].clone()), (200, json!("x")), "a member's valid write goes through");
    let members = client().get(format!("http://{}/api/v1/members", leader.http)).send().await.unwrap();
    let members = members.json::<serde_json::Value>().await.unwrap();
    assert_eq!(members["members"].as_array().unwrap().len(), 3, "{members}");
}
