//! The trust boundary, against real processes: tokens and roles on every
//! route, a cluster over mutual TLS (forged raft traffic, strangers,
//! a leader kill, certificates rotated under writes), and the bounds that
//! keep a node serving under connection floods, slow clients, oversized or
//! slow uploads and a low open-file limit.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use common::*;
use raftkv::http_client::ClientSecurity;
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

fn tool(args: &[&str], dir: &Path) {
    let output = Command::new(BIN).args(args).current_dir(dir).output().unwrap();
    assert!(output.status.success(), "raftkv {args:?}: {}", String::from_utf8_lossy(&output.stderr));
}

/// A CA in `dir` with certificates for nodes 1..=nodes and a client.
fn make_pki(dir: &Path, nodes: u64) {
    std::fs::create_dir_all(dir).unwrap();
    tool(&["tls", "ca", "create"], dir);
    for id in 1..=nodes {
        tool(&["tls", "cert", "create", "--node", &id.to_string()], dir);
    }
    tool(&["tls", "cert", "create", "--client"], dir);
}

fn https(cacert: &Path) -> reqwest::Client {
    let security = ClientSecurity { cacert: Some(cacert.to_path_buf()), ..ClientSecurity::default() };
    security.apply(reqwest::Client::builder().timeout(Duration::from_secs(5))).unwrap().build().unwrap()
}

// ---- Tokens -------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_role_can_do_exactly_its_operations_on_every_route() {
    let root = tempfile::TempDir::new().unwrap();
    let tokens = root.path().join("tokens.json");
    std::fs::write(
        &tokens,
        json!({"tokens": [
            {"name": "reader", "role": "read", "secret": "read-secret-0123456789"},
            {"name": "writer", "role": "write", "secret": "write-secret-0123456789"},
            {"name": "operator", "role": "admin", "secret": "admin-secret-0123456789"},
        ]})
        .to_string(),
    )
    .unwrap();
    let mut node = Node::new(1, root.path());
    node.start(&["--bootstrap", "--tokens", tokens.to_str().unwrap()]);
    let base = format!("http://{}", node.http);
    let http = client();
    let admin = "admin-secret-0123456789";
    eventually("the node to lead", async || {
        let response = http.get(format!("{base}/api/maintain/stats")).bearer_auth(admin).send().await.ok()?;
        let stats: Value = response.json().await.ok()?;
        (stats["state"] == "Leader").then_some(())
    })
    .await;

    // Every route, with a request its handler refuses or does harmlessly
    // (what it answers after authorization is not the point here).
    let routes: Vec<(&str, &str, Option<Value>, &str)> = vec![
        // Probes carry no token.
        ("GET", "/v1/health", None, "open"),
        ("GET", "/v1/ready", None, "open"),
        ("GET", "/ui", None, "open"),
        ("GET", "/ui/dashboard.js", None, "open"),
        ("GET", "/api/v1/dashboard", None, "read"),
        ("GET", "/api/v1/get?key=k", None, "read"),
        ("GET", "/api/v1/list", None, "read"),
        ("GET", "/api/v1/kv/k", None, "read"),
        ("GET", "/api/v1/members", None, "read"),
        ("GET", "/api/v1/operator/autopilot/health", None, "read"),
        ("GET", "/api/v1/gossip/members", None, "read"),
        ("GET", "/api/maintain/stats", None, "read"),
        ("POST", "/api/v1/set", Some(json!({"key": "k", "value": "v"})), "write"),
        ("DELETE", "/api/v1/delete?key=k", None, "write"),
        ("POST", "/api/v1/delete?key=k", None, "write"),
        ("POST", "/api/v1/cas", Some(json!({"key": "k", "expected": "x", "value": "y"})), "write"),
        ("PUT", "/api/v1/kv/k", Some(json!("v")), "write"),
        ("DELETE", "/api/v1/kv/k", None, "write"),
        ("POST", "/api/v1/join", Some(json!({"id": "x"})), "admin"),
        ("POST", "/api/v1/remove", Some(json!({"id": "x"})), "admin"),
        ("POST", "/api/v1/transfer-leader", Some(json!({"id": "x"})), "admin"),
        ("GET", "/api/v1/snapshot", None, "admin"),
        ("POST", "/api/v1/snapshot", Some(json!("not a backup")), "admin"),
        ("POST", "/api/maintain/config", Some(json!({"trailing_logs": "x"})), "admin"),
        ("POST", "/api/maintain/snapshot", None, "admin"),
        // Last: with the admin token, the node leaves (and exits).
        ("POST", "/api/v1/leave", None, "admin"),
    ];
    let credentials: [(&str, Option<&str>, u8); 5] = [
        ("no token", None, 0),
        ("an unknown token", Some("not-a-known-secret-000"), 0),
        ("read", Some("read-secret-0123456789"), 1),
        ("write", Some("write-secret-0123456789"), 2),
        ("admin", Some(admin), 3),
    ];
    let rank = |role: &str| match role {
        "open" => 0,
        "read" => 1,
        "write" => 2,
        _ => 3,
    };
    for (method, path, body, role) in &routes {
        for (who, secret, level) in &credentials {
            let mut request = http.request(method.parse().unwrap(), format!("{base}{path}"));
            if let Some(body) = body {
                request = request.json(body);
            }
            if let Some(secret) = secret {
                request = request.bearer_auth(secret);
            }
            let response = request.send().await.unwrap();
            let status = response.status().as_u16();
            let challenge = response.headers().get("www-authenticate").cloned();
            let text = response.text().await.unwrap_or_default();
            let what = format!("{method} {path} with {who}: {status} {text}");
            if rank(role) == 0 {
                assert_eq!(status, 200, "{what}");
            } else if *level == 0 {
                assert_eq!(status, 401, "{what}");
                assert_eq!(challenge.as_ref().map(|v| v.to_str().unwrap()), Some("Bearer"), "{what}");
                let error: Value = serde_json::from_str(&text).unwrap();
                assert_eq!(error["error"]["code"], "unauthenticated", "{what}");
                assert_eq!(error["error"]["outcome"], "not_done", "{what}");
            } else if *level < rank(role) {
                assert_eq!(status, 403, "{what}");
                let error: Value = serde_json::from_str(&text).unwrap();
                assert_eq!(error["error"]["code"], "forbidden", "{what}");
                assert!(error["error"]["message"].as_str().unwrap().contains(role), "{what}");
            } else {
                assert!(status != 401 && status != 403, "{what}");
            }
        }
    }
    // The secrets never reach the log; the admin requests are audited by name.
    let log = log_of(&node);
    for (_, secret, _) in &credentials {
        if let Some(secret) = secret {
            assert!(!log.contains(secret), "a secret in the log");
        }
    }
    assert!(log.contains("admin request") && log.contains("operator"), "{}", tail(&log, 20));
    assert!(log.contains("request refused"), "refusals are logged: {}", tail(&log, 20));
}

// ---- Mutual TLS -----------------------------------------------------------------

/// Where a TLS node keeps its material: files the test replaces to rotate.
fn tls_args(dir: &Path) -> Vec<String> {
    let path = |name: &str| dir.join(name).to_str().unwrap().to_string();
    vec!["--tls-ca".into(), path("ca.pem"), "--tls-cert".into(), path("cert.pem"), "--tls-key".into(), path("key.pem")]
}

/// Puts node `id`'s material from `pki` into `dir` (the CA file may hold several CAs).
fn install(dir: &Path, pki: &Path, id: u64, cas: &[&Path]) {
    std::fs::create_dir_all(dir).unwrap();
    let ca: String = cas.iter().map(|p| std::fs::read_to_string(p.join("raftkv-ca.pem")).unwrap()).collect();
    // Written beside and renamed, as an operator's tooling would.
    let put = |name: &str, text: &str| {
        let tmp = dir.join(format!("{name}.tmp"));
        std::fs::write(&tmp, text).unwrap();
        std::fs::rename(&tmp, dir.join(name)).unwrap();
    };
    put("ca.pem", &ca);
    put("cert.pem", &std::fs::read_to_string(pki.join(format!("node-{id}.pem"))).unwrap());
    put("key.pem", &std::fs::read_to_string(pki.join(format!("node-{id}-key.pem"))).unwrap());
}

async fn stats_over(http: &reqwest::Client, node: &Node) -> Option<Value> {
    http.get(format!("https://{}/api/maintain/stats", node.http)).send().await.ok()?.json().await.ok()
}

async fn tls_leader(http: &reqwest::Client, nodes: &[&Node]) -> u64 {
    eventually("a leader over TLS", async || {
        for node in nodes {
            if stats_over(http, node).await?["state"] == "Leader" {
                return Some(node.id);
            }
        }
        None
    })
    .await
}

async fn put_over(http: &reqwest::Client, node: &Node, key: &str, value: &str) -> u16 {
    let sent = http.post(format!("https://{}/api/v1/set", node.http)).json(&json!({"key": key, "value": value}));
    sent.send().await.map_or(0, |r| r.status().as_u16())
}

async fn get_over(http: &reqwest::Client, node: &Node, key: &str) -> Option<String> {
    let url = format!("https://{}/api/v1/get?key={key}", node.http);
    let value: Value = http.get(url).header("accept", "application/json").send().await.ok()?.json().await.ok()?;
    value["value"].as_str().map(str::to_string)
}

/// Sends a forged `AppendEntries` (a higher term, one command) to `raft_addr`
/// claiming to come from `from`, over `channels`; the answer.
async fn forge_append(
    channels: &raftkv_raft::transport::grpc::Channels,
    raft_addr: &str,
    cluster_id: &str,
    from: u64,
    to: u64,
) -> Result<(), tonic::Status> {
    use raftkv_raft::transport::grpc::{proto, to_proto, Identity};
    let channel = channels.connect(raft_addr).await.map_err(tonic::Status::from)?;
    let mut client = proto::raft_client::RaftClient::new(channel.channel());
    let command = raftkv::state::Command::Set { key: "forged".into(), value: "yes".into() };
    let entry = raftkv_raft::Entry {
        term: raftkv_raft::Term(1000),
        index: raftkv_raft::LogIndex(1),
        payload: raftkv_raft::EntryPayload::Command(command.encode()),
    };
    let append = raftkv_raft::Message::AppendEntries(raftkv_raft::AppendEntries {
        term: raftkv_raft::Term(1000),
        prev_log_id: raftkv_raft::LogId::new(raftkv_raft::Term(0), raftkv_raft::LogIndex(0)),
        entries: vec![entry],
        leader_commit: raftkv_raft::LogIndex(1),
        round: 1,
    });
    let mut request = tonic::Request::new(proto::Batch { messages: vec![to_proto(&append)] });
    let forger = Identity::new(cluster_id, raftkv_raft::NodeId(from), "127.0.0.1:1");
    forger.header(Some(raftkv_raft::NodeId(to))).stamp(&mut request);
    client.send(request).await.map(|_| ())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tls_cluster_refuses_strangers_and_forgers_survives_a_leader_kill_and_rotates_certificates() {
    let root = tempfile::TempDir::new().unwrap();
    let (old_pki, new_pki, other_pki) =
        (root.path().join("pki-old"), root.path().join("pki-new"), root.path().join("pki-other"));
    make_pki(&old_pki, 4);
    make_pki(&new_pki, 3);
    make_pki(&other_pki, 4);
    let material = |id: u64| root.path().join(format!("tls{id}"));
    let mut nodes: Vec<Node> = (1..=3).map(|id| Node::new(id, root.path())).collect();
    let args = |id: u64, extra: &[&str]| -> Vec<String> {
        let mut args = tls_args(&material(id));
        args.extend(extra.iter().map(|s| s.to_string()));
        args
    };
    for id in 1..=3 {
        install(&material(id), &old_pki, id, &[&old_pki]);
    }
    let start = |node: &mut Node, args: Vec<String>| {
        let refs: Vec<&str> = args.iter().map(String::as_str).collect();
        node.start(&refs);
    };
    start(&mut nodes[0], args(1, &["--bootstrap"]));
    let old_client = https(&old_pki.join("raftkv-ca.pem"));
    assert_eq!(tls_leader(&old_client, &[&nodes[0]]).await, 1);
    let join = nodes[0].raft.clone();
    for node in &mut nodes[1..] {
        let id = node.id;
        start(node, args(id, &["--join", &join]));
    }
    eventually("three voters over TLS", async || {
        let stats = stats_over(&old_client, &nodes[0]).await?;
        let number = |field: &str| stats[field].as_str().and_then(|v| v.parse::<u64>().ok());
        (stats["num_peers"] == "2" && number("commit_index") >= number("latest_configuration_index")).then_some(())
    })
    .await;
    assert_eq!(put_over(&old_client, &nodes[1], "a", "1").await, 200);
    assert_eq!(get_over(&old_client, &nodes[2], "a").await.as_deref(), Some("1"));
    let term_before = stats_over(&old_client, &nodes[0]).await.unwrap()["term"].clone();

    // Plain HTTP and plain gRPC find no one to talk to.
    assert!(client()
        .get(format!("http://{}/api/maintain/stats", nodes[0].http))
        .send()
        .await
        .map_or(true, |r| !r.status().is_success()));
    let plain = raftkv_raft::transport::grpc::Channels::default();
    let refused = forge_append(&plain, &nodes[0].raft, "any", 99, 1).await.unwrap_err();
    assert_ne!(refused.code(), tonic::Code::Ok);
    // A certificate of another CA: the handshake fails.
    let with = |pki: &Path, cert: &str| {
        let files = raftkv_raft::transport::tls::TlsFiles {
            ca: pki.join("raftkv-ca.pem"),
            cert: pki.join(format!("{cert}.pem")),
            key: pki.join(format!("{cert}-key.pem")),
        };
        let tls = raftkv_raft::transport::tls::Tls::load(files).unwrap();
        let options = raftkv_raft::transport::grpc::ChannelOptions { tls: Some(tls), ..Default::default() };
        raftkv_raft::transport::grpc::Channels::new(options)
    };
    let stranger = forge_append(&with(&other_pki, "node-4"), &nodes[0].raft, "any", 4, 1).await.unwrap_err();
    assert_eq!(stranger.code(), tonic::Code::Unavailable, "{stranger:?}");
    // Nor does it reach the internal service, or any other on the port.
    let info = raftkv::agent::wire::cluster_info(&with(&other_pki, "node-4"), &nodes[0].raft).await;
    assert!(info.is_err(), "a stranger learnt {info:?}");
    let info = raftkv::agent::wire::cluster_info(&plain, &nodes[0].raft).await;
    assert!(info.is_err(), "a plain client learnt {info:?}");
    // A client certificate of this CA is refused at the handshake; a node
    // certificate that names another node than the header claims, after it.
    // (The cluster id is learnt as an attacker would, from ClusterInfo,
    // which a holder of a node certificate may call.)
    let client_cert = forge_append(&with(&old_pki, "client"), &nodes[0].raft, "any", 2, 1).await.unwrap_err();
    // (TLS 1.3: the client may finish first, then find the connection closed
    // or the alert on its first read.)
    let code = client_cert.code();
    let transport = [tonic::Code::Unavailable, tonic::Code::Cancelled, tonic::Code::Unknown];
    assert!(transport.contains(&code), "refused by a service, not at the handshake: {client_cert:?}");
    let cluster_id = {
        let channels = with(&old_pki, "node-4");
        let channel = channels.connect(&nodes[0].raft).await.unwrap();
        let mut internal = raftkv::agent::wire::proto::internal_client::InternalClient::new(channel.channel());
        let info = internal.cluster_info(raftkv::agent::wire::proto::ClusterInfoRequest {}).await.unwrap();
        info.into_inner().cluster_id
    };
    for (cert, claims) in [("node-4", 2), ("node-4", 99), ("node-3", 2)] {
        let status = forge_append(&with(&old_pki, cert), &nodes[0].raft, &cluster_id, claims, 1).await.unwrap_err();
        assert_eq!(status.code(), tonic::Code::PermissionDenied, "{cert} claiming node {claims}: {status:?}");
    }
    assert_eq!(stats_over(&old_client, &nodes[0]).await.unwrap()["term"], term_before, "a forged term got through");
    assert_eq!(get_over(&old_client, &nodes[0], "forged").await, None);
    // A node whose certificate is of another CA cannot join.
    let mut stranger_node = Node::new(4, root.path());
    install(&material(4), &other_pki, 4, &[&other_pki]);
    start(&mut stranger_node, args(4, &["--join", &join]));
    tokio::time::sleep(Duration::from_secs(3)).await;
    let members: Value =
        old_client.get(format!("https://{}/api/v1/members", nodes[0].http)).send().await.unwrap().json().await.unwrap();
    assert_eq!(members["members"].as_array().unwrap().len(), 3, "{members}");
    drop(stranger_node);

    // Rotation to a new CA under writes: trust both, roll the certificates,
    // trust only the new one. Every node reloads on SIGHUP.
    let both = root.path().join("both.pem");
    std::fs::write(
        &both,
        std::fs::read_to_string(old_pki.join("raftkv-ca.pem")).unwrap()
            + &std::fs::read_to_string(new_pki.join("raftkv-ca.pem")).unwrap(),
    )
    .unwrap();
    let writer_client = https(&both);
    let (stop, errors, written) =
        (Arc::new(AtomicBool::new(false)), Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
    let leader = tls_leader(&old_client, &nodes.iter().collect::<Vec<_>>()).await;
    let leader_http = nodes[leader as usize - 1].http.clone();
    let writer = {
        let (stop, errors, written, http) = (stop.clone(), errors.clone(), written.clone(), writer_client.clone());
        tokio::spawn(async move {
            let mut i = 0u64;
            while !stop.load(Ordering::Relaxed) {
                let sent = http
                    .post(format!("https://{leader_http}/api/v1/set"))
                    .json(&json!({"key": format!("w{}", i % 50), "value": i.to_string()}))
                    .send()
                    .await;
                match sent {
                    Ok(response) if response.status().is_success() => written.fetch_add(1, Ordering::Relaxed),
                    _ => errors.fetch_add(1, Ordering::Relaxed),
                };
                i += 1;
            }
        })
    };
    let hup_all = |nodes: &[Node]| {
        for node in nodes {
            node.signal("-HUP");
        }
    };
    for id in 1..=3 {
        install(&material(id), &old_pki, id, &[&old_pki, &new_pki]);
    }
    hup_all(&nodes);
    tokio::time::sleep(Duration::from_millis(500)).await;
    for id in 1..=3 {
        install(&material(id), &new_pki, id, &[&old_pki, &new_pki]);
    }
    hup_all(&nodes);
    tokio::time::sleep(Duration::from_millis(500)).await;
    for id in 1..=3 {
        install(&material(id), &new_pki, id, &[&new_pki]);
    }
    hup_all(&nodes);
    tokio::time::sleep(Duration::from_millis(500)).await;
    stop.store(true, Ordering::Relaxed);
    writer.await.unwrap();
    let (written, errors) = (written.load(Ordering::Relaxed), errors.load(Ordering::Relaxed));
    println!("rotation under writes: {written} writes, {errors} errors");
    assert!(written > 0);
    assert_eq!(errors, 0, "writes failed during the rotation");
    // New connections see the new certificates only.
    let new_client = https(&new_pki.join("raftkv-ca.pem"));
    for node in &nodes {
        assert!(stats_over(&new_client, node).await.is_some(), "node {} does not present the new certificate", node.id);
        assert!(
            stats_over(&https(&old_pki.join("raftkv-ca.pem")), node).await.is_none(),
            "node {} still presents the old one",
            node.id
        );
    }

    // The leader is killed; the others elect one; it restarts and catches up
    // over connections opened with the new certificates.
    let leader = tls_leader(&new_client, &nodes.iter().collect::<Vec<_>>()).await;
    let index = leader as usize - 1;
    nodes[index].kill9();
    let rest: Vec<&Node> = nodes.iter().filter(|n| n.id != leader).collect();
    let next = tls_leader(&new_client, &rest).await;
    assert_ne!(next, leader);
    assert_eq!(put_over(&new_client, &nodes[next as usize - 1], "after", "kill").await, 200);
    start(&mut nodes[index], args(leader, &[]));
    let restarted = &nodes[index];
    eventually("the restarted node to catch up", async || {
        let value = get_over(&new_client, restarted, "after").await;
        (value.as_deref() == Some("kill")).then_some(())
    })
    .await;
}

// ---- Bounded resources ------------------------------------------------------------

/// Opens a TCP connection to `addr` from the local address `from`.
async fn connect_from(from: &str, addr: &str) -> std::io::Result<tokio::net::TcpStream> {
    let socket = tokio::net::TcpSocket::new_v4()?;
    socket.bind(format!("{from}:0").parse().unwrap())?;
    socket.connect(addr.parse().unwrap()).await
}

/// Reads until the peer closes or `limit` passes; what was read and whether it closed.
async fn read_until_closed(stream: &mut tokio::net::TcpStream, limit: Duration) -> (String, bool) {
    let mut seen = Vec::new();
    let mut buffer = [0u8; 4096];
    let deadline = tokio::time::Instant::now() + limit;
    loop {
        match tokio::time::timeout_at(deadline, stream.read(&mut buffer)).await {
            Ok(Ok(0)) | Ok(Err(_)) => return (String::from_utf8_lossy(&seen).into_owned(), true),
            Ok(Ok(n)) => seen.extend_from_slice(&buffer[..n]),
            Err(_) => return (String::from_utf8_lossy(&seen).into_owned(), false),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn floods_slow_clients_and_bad_uploads_are_refused_and_the_node_keeps_serving() {
    let root = tempfile::TempDir::new().unwrap();
    let mut node = Node::new(1, root.path());
    node.start(&[
        "--bootstrap",
        "--max-connections-per-ip",
        "20",
        "--http-header-timeout-ms",
        "2000",
        "--http-idle-timeout-ms",
        "2000",
        "--max-upload-bytes",
        "1000000",
        "--upload-timeout-ms",
        "1500",
    ]);
    leader_of(&[&node]).await;
    assert_eq!(set(&node, "k", "v").await.status(), 200);

    // 20 idle connections from 127.0.0.1 fill its share; the 21st is told so
    // and closed, while another address is served.
    let mut idle = Vec::new();
    for _ in 0..20 {
        idle.push(connect_from("127.0.0.1", &node.http).await.unwrap());
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    let mut over = connect_from("127.0.0.1", &node.http).await.unwrap();
    let (answer, closed) = read_until_closed(&mut over, Duration::from_secs(5)).await;
    assert!(closed && answer.starts_with("HTTP/1.1 503"), "{answer:?}");
    assert!(answer.contains("too_many_connections"), "{answer}");
    let mut other = connect_from("127.0.0.2", &node.http).await.unwrap();
    other.write_all(b"GET /api/v1/get?key=k HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n").await.unwrap();
    let (answer, _) = read_until_closed(&mut other, Duration::from_secs(5)).await;
    assert!(answer.starts_with("HTTP/1.1 200"), "another address must be served: {answer:?}");
    // Idle connections that never send a request are closed after the header timeout.
    for stream in &mut idle {
        let (_, closed) = read_until_closed(stream, Duration::from_secs(10)).await;
        assert!(closed, "an idle connection was kept");
    }
    drop(idle);
    // A slowloris client (a header byte every 300 ms) is cut off too.
    let mut slow = connect_from("127.0.0.1", &node.http).await.unwrap();
    let started = std::time::Instant::now();
    let mut cut = false;
    for byte in b"GET /api/v1/get?key=k HTTP/1.1\r\nx-slow: aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa"
        .iter()
        .cycle()
        .take(100)
    {
        if slow.write_all(&[*byte]).await.is_err() {
            cut = true;
            break;
        }
        let (_, closed) = read_until_closed(&mut slow, Duration::from_millis(300)).await;
        if closed {
            cut = true;
            break;
        }
    }
    assert!(cut, "a slowloris client was kept for {:?}", started.elapsed());
    println!("slowloris cut off after {:?}", started.elapsed());

    // An upload declared over the cap: 413 before its body is read.
    let mut declared = connect_from("127.0.0.1", &node.http).await.unwrap();
    let head = b"POST /api/v1/snapshot HTTP/1.1\r\nhost: x\r\ncontent-length: 2000000\r\n\r\n";
    declared.write_all(head).await.unwrap();
    let (answer, _) = read_until_closed(&mut declared, Duration::from_secs(10)).await;
    assert!(answer.starts_with("HTTP/1.1 413"), "{answer:?}");
    let body: Value = serde_json::from_str(answer.split("\r\n\r\n").nth(1).unwrap_or_default()).unwrap();
    assert_eq!(
        (body["error"]["code"].as_str(), body["error"]["outcome"].as_str()),
        (Some("too_large"), Some("not_done"))
    );
    // One that streams past the cap without declaring its size: 413 as well.
    let mut streamed = connect_from("127.0.0.1", &node.http).await.unwrap();
    let head = b"POST /api/v1/snapshot HTTP/1.1\r\nhost: x\r\ntransfer-encoding: chunked\r\n\r\n";
    streamed.write_all(head).await.unwrap();
    let chunk = [format!("{:x}\r\n", 100_000).into_bytes(), vec![0u8; 100_000], b"\r\n".to_vec()].concat();
    for _ in 0..15 {
        // The node may answer and stop reading before the last chunk.
        if streamed.write_all(&chunk).await.is_err() {
            break;
        }
    }
    let (answer, _) = read_until_closed(&mut streamed, Duration::from_secs(10)).await;
    assert!(answer.starts_with("HTTP/1.1 413"), "{answer:?}");
    // A slow upload: 408 once the upload timeout passes, and the spool is gone.
    let mut stalled = connect_from("127.0.0.1", &node.http).await.unwrap();
    stalled.write_all(b"POST /api/v1/snapshot HTTP/1.1\r\nhost: x\r\ncontent-length: 500000\r\n\r\n").await.unwrap();
    stalled.write_all(&[0u8; 1000]).await.unwrap();
    let (answer, _) = read_until_closed(&mut stalled, Duration::from_secs(10)).await;
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer:?}");
    assert!(answer.contains("upload_timeout"), "{answer}");
    let spooled: Vec<PathBuf> = std::fs::read_dir(&node.dir)
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.file_name().unwrap().to_string_lossy().contains("upload"))
        .collect();
    assert!(spooled.is_empty(), "uploads left behind: {spooled:?}");

    // Clients that ask for a large answer and do not read it are cut off
    // (one idle period for the request, one more for the answer).
    // 27 MB: more than loopback's socket buffers hold.
    let value = "v".repeat(900_000);
    for i in 0..30 {
        let response = client()
            .post(format!("http://{}/api/v1/set", node.http))
            .json(&json!({"key": format!("big{i}"), "value": value}))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status().as_u16(), 200);
    }
    // A list answer is bounded in bytes and says there is more; the next
    // page starts after its last key.
    let url = format!("http://{}/api/v1/list?prefix=big", node.http);
    let page: Value = client().get(&url).send().await.unwrap().json().await.unwrap();
    let items = page["items"].as_array().unwrap();
    assert!(
        page["more"] == true && items.len() < 30 && !items.is_empty(),
        "{} items, more {}",
        items.len(),
        page["more"]
    );
    let last = items.last().unwrap()["key"].as_str().unwrap().to_string();
    let rest: Value = client().get(format!("{url}&start_after={last}")).send().await.unwrap().json().await.unwrap();
    assert_eq!(items.len() + rest["items"].as_array().unwrap().len(), 30);
    assert_eq!(rest["more"], false);

    // At most four backups download at once; a fifth is told to retry.
    let mut readers = Vec::new();
    for _ in 0..4 {
        let mut reader = connect_from("127.0.0.1", &node.http).await.unwrap();
        reader.write_all(b"GET /api/v1/snapshot HTTP/1.1\r\nhost: x\r\n\r\n").await.unwrap();
        // The answer has begun (and holds its slot) once its first bytes come.
        let mut first = [0u8; 12];
        reader.read_exact(&mut first).await.unwrap();
        assert_eq!(&first, b"HTTP/1.1 200");
        readers.push(reader);
    }
    let fifth = client().get(format!("http://{}/api/v1/snapshot", node.http)).send().await.unwrap();
    assert_eq!(fifth.status().as_u16(), 503);
    let error: Value = fifth.json().await.unwrap();
    assert_eq!(
        (error["error"]["code"].as_str(), error["error"]["outcome"].as_str()),
        (Some("too_many_backups"), Some("not_done"))
    );
    tokio::time::sleep(Duration::from_secs(8)).await;
    for reader in &mut readers {
        let (answer, closed) = read_until_closed(reader, Duration::from_secs(10)).await;
        assert!(closed && answer.len() < 27_000_000, "a slow reader held its connection: {} bytes read", answer.len());
    }
    // Their slots are free again.
    let response = client().get(format!("http://{}/api/v1/snapshot", node.http)).send().await.unwrap();
    assert_eq!(response.status().as_u16(), 200);
    assert!(response.bytes().await.unwrap().len() > 27_000_000);

    // Through all of it the node served and its log never failed.
    assert_eq!(set(&node, "k", "after").await.status(), 200);
    assert_eq!(stats(&node).await.unwrap()["state"], "Leader");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upload_that_would_eat_the_log_reserve_is_refused() {
    let root = tempfile::TempDir::new().unwrap();
    let mut node = Node::new(1, root.path());
    // A reserve larger than any disk: every upload would eat into it.
    node.start(&["--bootstrap", "--disk-reserve-bytes", "1000000000000000000"]);
    leader_of(&[&node]).await;
    let response =
        client().post(format!("http://{}/api/v1/snapshot", node.http)).body(vec![0u8; 1000]).send().await.unwrap();
    assert_eq!(response.status().as_u16(), 507);
    let error: Value = response.json().await.unwrap();
    assert_eq!(error["error"]["code"], "insufficient_storage");
    assert_eq!(error["error"]["outcome"], "not_done");
    assert_eq!(set(&node, "k", "v").await.status(), 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn under_a_low_open_file_limit_a_connection_flood_leaves_descriptors_for_the_log() {
    let root = tempfile::TempDir::new().unwrap();
    let mut node = Node::new(1, root.path());
    let log = std::fs::File::create(node.dir.with_extension("log")).unwrap();
    // 400 descriptors in all: the node keeps 256 back and caps each listener at 72.
    let child = Command::new("sh")
        .args(["-c", "ulimit -n 400 && exec \"$0\" \"$@\""])
        .arg(BIN)
        .args(["agent", "--id", "1", "--http-addr", &node.http, "--raft-addr", &node.raft, "--bootstrap"])
        .arg("--data-dir")
        .arg(&node.dir)
        .args(["--heartbeat-ms", "50", "--election-timeout-ms", "400"])
        .stderr(log)
        .spawn()
        .unwrap();
    // Killed when the node is dropped, however the test ends.
    node.child = Some(child);
    leader_of(&[&node]).await;
    let mut flood = Vec::new();
    // More connections than the node has descriptors.
    for _ in 0..450 {
        match connect_from("127.0.0.1", &node.http).await {
            Ok(stream) => flood.push(stream),
            Err(_) => break,
        }
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    // Writes that roll WAL segments and a snapshot need descriptors: they get them.
    // From another client address than the flood's.
    let builder =
        reqwest::Client::builder().timeout(Duration::from_secs(10)).local_address(Some([127, 0, 0, 2].into()));
    let http = ClientSecurity::default().apply(builder).unwrap().build().unwrap();
    let base = format!("http://{}", node.http);
    let value = "v".repeat(100_000);
    for i in 0..200 {
        let response =
            http.post(format!("{base}/api/v1/set")).json(&json!({"key": format!("k{i}"), "value": value})).send().await;
        let status = response.map(|r| r.status().as_u16()).unwrap_or(0);
        assert_eq!(status, 200, "write {i} under the flood; log: {}", tail(&log_of(&node), 20));
    }
    let snapshot = http.post(format!("{base}/api/maintain/snapshot")).send().await.unwrap();
    assert_eq!(snapshot.status().as_u16(), 200);
    let running = node.child.as_mut().unwrap().try_wait().unwrap().is_none();
    assert!(running, "the node exited: {}", tail(&log_of(&node), 20));
    assert!(log_of(&node).contains("capping it"), "{}", tail(&log_of(&node), 20));
    drop(flood);
}

// ---- Removed members ----------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_removed_node_is_refused_until_an_operator_adds_it_again() {
    let root = tempfile::TempDir::new().unwrap();
    let mut nodes = three_node_cluster(root.path()).await;
    let refs: Vec<&Node> = nodes.iter().collect();
    let leader = leader_of(&refs).await;
    let victim = nodes.iter().position(|n| n.id != leader).unwrap();
    let mut victim_node = nodes.remove(victim);
    let victim_id = victim_node.id;
    let leader_node = nodes.iter().find(|n| n.id == leader).unwrap();
    let (status, answer) = post(leader_node, "/api/v1/remove", json!({"id": victim_id})).await;
    assert_eq!(status, 200, "{answer}");
    victim_node.kill9();

    // Anyone speaking as the removed node (its certificate, without TLS its
    // id) is refused by every member, however high its term.
    let plain = raftkv_raft::transport::grpc::Channels::default();
    let cluster_id = raftkv::agent::wire::cluster_info(&plain, &leader_node.raft).await.unwrap().cluster_id;
    eventually("the removal to be tracked", async || {
        let url = format!("http://{}/api/v1/members", leader_node.http);
        let members: Value = client().get(url).send().await.ok()?.json().await.ok()?;
        members["removed"].as_array()?.contains(&json!(victim_id)).then_some(())
    })
    .await;
    let refusal = forge_append(&plain, &leader_node.raft, &cluster_id, victim_id, leader).await.unwrap_err();
    assert_eq!(refusal.code(), tonic::Code::PermissionDenied, "{refusal:?}");
    assert!(refusal.message().contains("was removed"), "{refusal:?}");
    assert_eq!(get_json(leader_node, "forged", "linearizable").await.0, 404);

    // Wiped and started again, it cannot add itself back.
    std::fs::remove_dir_all(&victim_node.dir).unwrap();
    let join = leader_node.raft.clone();
    victim_node.start(&["--join", &join]);
    let victim_node = &victim_node;
    eventually("the self-join to be refused", async || {
        log_of(victim_node).contains("was removed from this cluster").then_some(())
    })
    .await;
    // An operator adds it again; it becomes a voter and serves.
    assert_eq!(set(leader_node, "back", "again").await.status(), 200);
    let member = json!({"id": victim_id, "raft_addr": victim_node.raft, "http_addr": victim_node.http});
    let (status, answer) = post(leader_node, "/api/v1/join", member).await;
    assert_eq!(status, 200, "{answer}");
    eventually("the re-added node to serve", async || {
        let (status, body) = get_json(victim_node, "back", "linearizable").await;
        (status == 200 && body["value"] == "again").then_some(())
    })
    .await;
}

/// Bytes free in the file system holding `dir`, as `df` sees them.
fn free_bytes(dir: &Path) -> u64 {
    let out = Command::new("df").args(["-B1", "--output=avail"]).arg(dir).output().unwrap();
    String::from_utf8(out.stdout).unwrap().lines().nth(1).unwrap().trim().parse().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restore_stops_before_its_log_eats_the_reserve() {
    let root = tempfile::TempDir::new().unwrap();
    let mut node = Node::new(1, root.path());
    // 32 MiB of values that JSON escapes six-fold: the upload fits with
    // 32 MiB to spare, the log it would write (~190 MiB) does not.
    let value = "\u{1}".repeat(64 << 10);
    let keys = 512u64;
    let header = raftkv::state::image::ImageHeader::generated_backup(keys);
    let mut writer = raftkv::state::image::ImageWriter::new(Vec::new(), &header).unwrap();
    for k in 0..keys {
        writer.record(&format!("key{k:04}"), value.as_bytes(), 1).unwrap();
    }
    let image = writer.finish().unwrap();
    let reserve = free_bytes(root.path()) - image.len() as u64 - (32 << 20);
    node.start(&["--bootstrap", "--disk-reserve-bytes", &reserve.to_string()]);
    leader_of(&[&node]).await;
    assert_eq!(set(&node, "k", "before").await.status(), 200);

    let response = client().post(format!("http://{}/api/v1/snapshot", node.http)).body(image).send().await.unwrap();
    assert_eq!(response.status().as_u16(), 507);
    let error: Value = response.json().await.unwrap();
    assert_eq!(error["error"]["code"], "insufficient_storage", "{error}");
    assert_eq!(error["error"]["outcome"], "not_done", "{error}");
    // Refused before anything was staged: the whole restore's log is
    // weighed first.
    assert!(error["error"]["message"].as_str().unwrap().contains("refused before it began"), "{error}");

    // Nothing was restored, the upload is gone, and the node still writes.
    let (status, answer) = get_json(&node, "k", "linearizable").await;
    assert_eq!((status, &answer["value"]), (200, &json!("before")), "{answer}");
    assert_eq!(get_json(&node, "key0000", "linearizable").await.0, 404);
    let leftovers = std::fs::read_dir(&node.dir)
        .unwrap()
        .filter(|e| e.as_ref().unwrap().file_name().to_string_lossy().starts_with("restore-"))
        .count();
    assert_eq!(leftovers, 0, "the spooled upload was left behind");
    assert_eq!(set(&node, "k", "after").await.status(), 200);
}
