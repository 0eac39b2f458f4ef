//! The client commands (`put`, `get`, `members`, ...): one HTTP call each,
//! printed for people or (`--json`) as the server's JSON.

use std::time::Duration;

use serde_json::{json, Value};

use crate::cli::args::{AutopilotCommand, ClientArgs, Commands, GossipCommand, OperatorCommand};
use crate::cli::client::{encode, failed, Client, CALL_TIMEOUT};

pub async fn run(command: Commands) -> i32 {
    match client(command).await {
        Ok(()) => 0,
        Err(message) => {
            eprintln!("raftkv: {message}");
            1
        }
    }
}

/// One CLI request: method, target, path, JSON body, and how to print the answer.
struct Call {
    method: reqwest::Method,
    client: ClientArgs,
    path: String,
    body: Option<Value>,
    human: fn(&Value) -> String,
    timeout: Duration,
}

impl Call {
    fn new(
        method: reqwest::Method,
        client: ClientArgs,
        path: String,
        body: Option<Value>,
        human: fn(&Value) -> String,
    ) -> Call {
        Call { method, client, path, body, human, timeout: CALL_TIMEOUT }
    }

    /// A call the server may take long over (a join waits for the new
    /// server to catch up).
    fn patient(self, timeout: Duration) -> Call {
        Call { timeout, ..self }
    }
}

async fn client(command: Commands) -> Result<(), String> {
    use reqwest::Method;
    let request = match command {
        Commands::Agent(_)
        | Commands::Demo(_)
        | Commands::Bench(_)
        | Commands::Snapshot(_)
        | Commands::Tls(_)
        | Commands::Keygen
        | Commands::Recover { .. } => return Err("not a client command".to_string()),
        Commands::Put { key, value, client } => {
            Call::new(Method::POST, client, "/api/v1/set".into(), Some(json!({"key": key, "value": value})), |v| {
                format!("OK (index {})", v["index"])
            })
        }
        Commands::Get { key, consistency, client } => Call::new(
            Method::GET,
            client,
            format!("/api/v1/get?key={}&consistency={}", encode(&key), encode(&consistency)),
            None,
            |v| v["value"].as_str().unwrap_or_default().to_string(),
        ),
        Commands::Delete { key, client } => {
            Call::new(Method::DELETE, client, format!("/api/v1/delete?key={}", encode(&key)), None, |v| {
                if v["deleted"] == json!(true) {
                    "deleted".into()
                } else {
                    "no such key".into()
                }
            })
        }
        // `--absent` is the same request as no `--expected`: `expected: null`.
        Commands::Cas { key, value, expected, absent: _, client } => Call::new(
            Method::POST,
            client,
            "/api/v1/cas".into(),
            Some(json!({"key": key, "expected": expected, "value": value})),
            |v| format!("OK (index {})", v["index"]),
        ),
        Commands::List { prefix, limit, client } => Call::new(
            Method::GET,
            client,
            format!("/api/v1/list?prefix={}&limit={limit}", encode(&prefix)),
            None,
            |v| {
                let items = v["items"].as_array().cloned().unwrap_or_default();
                items
                    .iter()
                    .map(|i| {
                        format!(
                            "{}\t{}",
                            i["key"].as_str().unwrap_or_default(),
                            i["value"].as_str().unwrap_or_default()
                        )
                    })
                    .collect::<Vec<_>>()
                    .join("\n")
            },
        ),
        Commands::Members { client } => Call::new(Method::GET, client, "/api/v1/members".into(), None, |v| {
            let members = v["members"].as_array().cloned().unwrap_or_default();
            members
                .iter()
                .map(|m| {
                    let leader = if m["leader"] == json!(true) { " (leader)" } else { "" };
                    // Known when the node asked leads.
                    let lag = match (m["trailing"].as_u64(), m["last_contact_ms"].as_u64()) {
                        (Some(trailing), Some(ms)) => format!("\ttrailing {trailing}\tcontact {ms} ms ago"),
                        (Some(trailing), None) => format!("\ttrailing {trailing}\tno contact this term"),
                        _ => String::new(),
                    };
                    let health = match (m["healthy"].as_bool(), m["stable"].as_bool()) {
                        (Some(true), Some(true)) => "\thealthy, stable",
                        (Some(true), _) => "\thealthy",
                        (Some(false), _) => "\tUNHEALTHY",
                        _ => "",
                    };
                    format!(
                        "{}\t{}\traft {}\thttp {}{lag}{health}{leader}",
                        m["id"],
                        m["suffrage"].as_str().unwrap_or_default(),
                        m["raft_addr"].as_str().unwrap_or("?"),
                        m["http_addr"].as_str().unwrap_or("?")
                    )
                })
                .collect::<Vec<_>>()
                .join("\n")
        }),
        Commands::Stats { client } => Call::new(Method::GET, client, "/api/maintain/stats".into(), None, |v| {
            let map = v.as_object().cloned().unwrap_or_default();
            map.iter().map(|(k, v)| format!("{k}: {}", v.as_str().unwrap_or_default())).collect::<Vec<_>>().join("\n")
        }),
        Commands::Join { id, raft_addr, http_addr, replace, client } => Call::new(
            Method::POST,
            client,
            "/api/v1/join".into(),
            Some(json!({"id": id, "raft_addr": raft_addr, "http_addr": http_addr, "replace": replace})),
            |v| format!("joined: a voter since index {}", v["index"]),
        )
        .patient(Duration::from_secs(300)),
        Commands::Leave { client } => Call::new(Method::POST, client, "/api/v1/leave".into(), None, |v| {
            format!("node {} left the cluster", v["left"])
        })
        .patient(Duration::from_secs(120)),
        Commands::Gossip(GossipCommand::Members { client }) => {
            Call::new(Method::GET, client, "/api/v1/gossip/members".into(), None, |v| {
                let members = v["members"].as_array().cloned().unwrap_or_default();
                members
                    .iter()
                    .map(|m| {
                        format!(
                            "{}\t{}\tgossip {}\traft {}\thttp {}",
                            m["id"],
                            m["liveness"].as_str().unwrap_or_default(),
                            m["gossip_addr"].as_str().unwrap_or_default(),
                            m["raft_addr"].as_str().unwrap_or_default(),
                            m["http_addr"].as_str().unwrap_or_default()
                        )
                    })
                    .collect::<Vec<_>>()
                    .join("\n")
            })
        }
        Commands::Operator(OperatorCommand::Autopilot(AutopilotCommand::State { client })) => {
            Call::new(Method::GET, client, "/api/v1/operator/autopilot/health".into(), None, autopilot_table)
        }
        Commands::Remove { id, client } => {
            Call::new(Method::POST, client, "/api/v1/remove".into(), Some(json!({"id": id})), |v| {
                format!("removed (index {})", v["index"])
            })
        }
        Commands::TransferLeader { id, client } => {
            Call::new(Method::POST, client, "/api/v1/transfer-leader".into(), Some(json!({"id": id})), |v| {
                format!("node {} leads now", v["target"])
            })
        }
    };
    let client = Client::new(&request.client.addr, &request.client.security.security())?;
    let (status, text) = client.call(request.method, &request.path, request.body.as_ref(), request.timeout).await?;
    let (client, human) = (request.client, request.human);
    if client.json {
        println!("{text}");
        return if status.is_success() { Ok(()) } else { Err(format!("HTTP {status}")) };
    }
    if !status.is_success() {
        return Err(failed(status, &text));
    }
    let value: Value = serde_json::from_str(&text).unwrap_or(Value::String(text.clone()));
    println!("{}", human(&value));
    Ok(())
}

/// `operator autopilot state`, as Consul prints it: the cluster's health and
/// failure tolerance, then one line per server.
fn autopilot_table(v: &Value) -> String {
    let mut lines = vec![
        format!("Healthy: {}", v["healthy"]),
        format!("FailureTolerance: {}", v["failure_tolerance"]),
        format!("Leader: {}", v["leader"]),
        format!("Voters: {}", v["voters"]),
        "Servers:".to_string(),
    ];
    for server in v["servers"].as_array().into_iter().flatten() {
        let held = |key: &str| server[key].as_u64().map(|ms| format!("{:.1}s", ms as f64 / 1000.0));
        let since = match (held("healthy_for_ms"), held("unhealthy_for_ms")) {
            (Some(held), _) => format!("healthy for {held}"),
            (_, Some(held)) => format!("unhealthy for {held}"),
            _ => String::new(),
        };
        let contact = server["last_contact_ms"]
            .as_u64()
            .map_or("no contact this term".to_string(), |ms| format!("contact {ms} ms ago"));
        let marks = [("stable", "stable"), ("dead", "DEAD")]
            .iter()
            .filter(|(key, _)| server[*key] == json!(true))
            .map(|(_, mark)| *mark)
            .collect::<Vec<_>>()
            .join(", ");
        let gossip = server["gossip"].as_str().map_or(String::new(), |g| format!("\tgossip {g}"));
        lines.push(format!(
            "  {}\t{}\t{}{gossip}\t{since}\t{contact}\tindex {}\ttrailing {}\t{marks}",
            server["id"],
            server["status"].as_str().unwrap_or_default(),
            if server["healthy"] == json!(true) { "healthy" } else { "UNHEALTHY" },
            server["match_index"],
            server["trailing"],
        ));
    }
    lines.join("\n")
}
