//! The client commands (`put`, `get`, `members`, ...): one HTTP call each,
//! printed for people or (`--json`) as the server's JSON.

use serde_json::{json, Value};

use crate::cli::args::{ClientArgs, Commands};
use crate::cli::client::{encode, failed, Client};

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
}

impl Call {
    fn new(
        method: reqwest::Method,
        client: ClientArgs,
        path: String,
        body: Option<Value>,
        human: fn(&Value) -> String,
    ) -> Call {
        Call { method, client, path, body, human }
    }
}

async fn client(command: Commands) -> Result<(), String> {
    use reqwest::Method;
    let request = match command {
        Commands::Agent(_)
        | Commands::Demo(_)
        | Commands::Bench(_)
        | Commands::Snapshot(_)
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
                    format!(
                        "{}\t{}\traft {}\thttp {}{lag}{leader}",
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
        Commands::Join { id, raft_addr, http_addr, client } => Call::new(
            Method::POST,
            client,
            "/api/v1/join".into(),
            Some(json!({"id": id, "raft_addr": raft_addr, "http_addr": http_addr})),
            |v| format!("joined (index {})", v["index"]),
        ),
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
    let client = Client::new(&request.client.addr)?;
    let (status, text) = client.call(request.method, &request.path, request.body.as_ref()).await?;
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
