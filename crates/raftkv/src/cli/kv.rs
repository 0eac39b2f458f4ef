//! The client commands (`put`, `get`, `list`, `members`, `endpoint`, ...):
//! calls through the one `Cluster` (failover over `--endpoints` within
//! `--timeout`), printed as `-w simple` (lines for people), `json` (the
//! server's JSON, one document) or `table`.

use std::time::Duration;

use serde_json::{json, Value};

use crate::cli::args::{
    AutopilotCommand, ClientArgs, Commands, EndpointCommand, GossipCommand, OperatorCommand, PagingArgs, ValueArgs,
    WriteOut,
};
use crate::cli::client::{encode, encode_segment, Answer, CallError, Cluster, Deadline, Effect, Payload, CALL_TIMEOUT};
use crate::cli::globals::Globals;
use crate::state::Blob;

pub async fn run(command: Commands, globals: &Globals) -> i32 {
    match client(command, globals).await {
        Ok(()) => 0,
        Err(error) => {
            eprintln!("raftkv: {}", error.message());
            error.exit_status()
        }
    }
}

/// What a command shows: its JSON document, its plain lines, and (for the
/// commands that have one) its table.
struct Shown {
    json: Value,
    simple: String,
    table: Option<Table>,
}

impl Shown {
    fn plain(json: Value, simple: String) -> Shown {
        Shown { json, simple, table: None }
    }

    fn print(&self, write_out: WriteOut) {
        let text = match (write_out, &self.table) {
            (WriteOut::Json, _) => self.json.to_string(),
            (WriteOut::Table, Some(table)) => table.render(),
            _ => self.simple.clone(),
        };
        // A reader that went away (`| head`) is no failure.
        if !text.is_empty() {
            use std::io::Write;
            let _ = writeln!(std::io::stdout().lock(), "{text}");
        }
    }
}

/// Aligned columns under a header.
struct Table {
    header: Vec<&'static str>,
    rows: Vec<Vec<String>>,
}

impl Table {
    fn render(&self) -> String {
        let header: Vec<String> = self.header.iter().map(|h| h.to_string()).collect();
        let rows: Vec<Vec<String>> =
            std::iter::once(header).chain(self.rows.iter().map(|row| row.iter().map(|c| cell(c)).collect())).collect();
        let mut widths = vec![0; self.header.len()];
        for row in &rows {
            for (width, cell) in widths.iter_mut().zip(row) {
                *width = (*width).max(cell.chars().count());
            }
        }
        rows.iter()
            .map(|row| {
                let cells: Vec<String> = row
                    .iter()
                    .zip(&widths)
                    .map(|(cell, width)| format!("{cell}{}", " ".repeat(width - cell.chars().count())))
                    .collect();
                cells.join("  ").trim_end().to_string()
            })
            .collect::<Vec<_>>()
            .join("\n")
    }
}

/// A table cell on one line: control characters escaped.
fn cell(text: &str) -> String {
    if text.chars().any(char::is_control) {
        text.escape_debug().to_string()
    } else {
        text.to_string()
    }
}

/// A JSON field as a cell: strings bare, null empty.
fn field(value: &Value) -> String {
    match value {
        Value::Null => String::new(),
        Value::String(text) => text.clone(),
        other => other.to_string(),
    }
}

fn cluster(globals: &Globals, client: &ClientArgs, per_call: Duration) -> Result<Cluster, CallError> {
    let endpoints = globals.endpoints(client)?;
    Ok(Cluster::new(&endpoints, &client.security.security(), Deadline::new(globals.timeout(), per_call))?)
}

/// One call whose successful answer is JSON.
async fn call(
    cluster: &Cluster,
    effect: Effect,
    method: reqwest::Method,
    path: &str,
    body: Option<Value>,
) -> Result<Value, CallError> {
    cluster.call(effect, method, path, body.as_ref()).await?.json()
}

/// An item's value as one line shows it: the text, or `base64:` and the
/// bytes in base64 when they are not UTF-8 text.
fn value_field(item: &Value) -> String {
    match item["value_base64"].as_str() {
        Some(encoded) => format!("base64:{encoded}"),
        None => field(&item["value"]),
    }
}

/// Sets `key` to `value`: the raw body to `/api/v1/kv/{key}`, or for the
/// keys `.` and `..`, which a URL cannot carry as a path segment (they are
/// dot segments, encoded or not), JSON to `/api/v1/set`.
async fn put(cluster: &Cluster, key: &str, value: &Blob) -> Result<Value, CallError> {
    use reqwest::Method;
    if key.is_empty() {
        return Err(CallError::NotDone("the key must not be empty; nothing was sent".to_string()));
    }
    if key == "." || key == ".." {
        let (field, encoded) = value.json_field();
        let mut body = json!({"key": key});
        body[field] = encoded;
        return call(cluster, Effect::Write, Method::POST, "/api/v1/set", Some(body)).await;
    }
    let path = format!("/api/v1/kv/{}", encode_segment(key));
    cluster.call(Effect::Write, Method::PUT, &path, Payload::Raw(&value.0)).await?.json()
}

async fn client(command: Commands, globals: &Globals) -> Result<(), CallError> {
    use reqwest::Method;
    let (shown, write_out) = match command {
        Commands::Agent(_)
        | Commands::Demo(_)
        | Commands::Bench(_)
        | Commands::Snapshot(_)
        | Commands::Tls(_)
        | Commands::Keygen
        | Commands::Recover { .. } => return Err(CallError::NotDone("not a client command".to_string())),
        Commands::Put { key, value, client } => {
            let cluster = cluster(globals, &client, CALL_TIMEOUT)?;
            let value = read_value(value, &cluster.deadline).await?;
            let v = put(&cluster, &key, &value).await?;
            (Shown::plain(v.clone(), format!("OK (index {})", v["index"])), globals.write_out(&client))
        }
        Commands::Get { key: Some(key), prefix: _, limit: _, paging, client } => {
            let cluster = cluster(globals, &client, CALL_TIMEOUT)?;
            let path = format!("/api/v1/get?key={}&consistency={}", encode(&key), paging.consistency.as_str());
            let v = call(&cluster, Effect::Read, Method::GET, &path, None).await?;
            let write_out = globals.write_out(&client);
            if let (Some(encoded), WriteOut::Simple) = (v["value_base64"].as_str(), write_out) {
                // Bytes that are not text go out as they are, with nothing added.
                let value = Blob::from_base64(encoded)
                    .map_err(|e| CallError::NotDone(format!("the server's value_base64 is not base64: {e}")))?;
                use std::io::Write;
                let mut stdout = std::io::stdout().lock();
                let _ = stdout.write_all(&value.0).and_then(|()| stdout.flush());
                return Ok(());
            }
            let table = Table {
                header: vec!["KEY", "VALUE", "INDEX"],
                rows: vec![vec![field(&v["key"]), value_field(&v), field(&v["index"])]],
            };
            (Shown { json: v.clone(), simple: field(&v["value"]), table: Some(table) }, write_out)
        }
        Commands::Get { key: None, prefix, limit, paging, client } => {
            let cluster = cluster(globals, &client, CALL_TIMEOUT)?;
            let prefix = prefix.unwrap_or_default();
            let (items, more) = list_all(&cluster, &prefix, limit, &paging).await?;
            // As etcdctl prints `get --prefix`: the key on one line, its value on the next.
            let simple = items.iter().flat_map(|i| [field(&i["key"]), value_field(i)]).collect::<Vec<_>>();
            (items_shown(items, more, simple.join("\n")), globals.write_out(&client))
        }
        Commands::List { prefix, limit, paging, client } => {
            let cluster = cluster(globals, &client, CALL_TIMEOUT)?;
            let (items, more) = list_all(&cluster, &prefix, limit, &paging).await?;
            let simple = items.iter().map(|i| format!("{}\t{}", field(&i["key"]), value_field(i)));
            let simple = simple.collect::<Vec<_>>().join("\n");
            (items_shown(items, more, simple), globals.write_out(&client))
        }
        Commands::Delete { key: Some(key), prefix: _, paging: _, client } => {
            let cluster = cluster(globals, &client, CALL_TIMEOUT)?;
            let path = format!("/api/v1/delete?key={}", encode(&key));
            let v = call(&cluster, Effect::Write, Method::DELETE, &path, None).await?;
            let simple = if v["deleted"] == json!(true) { "deleted" } else { "no such key" };
            (Shown::plain(v, simple.to_string()), globals.write_out(&client))
        }
        Commands::Delete { key: None, prefix, paging, client } => {
            let cluster = cluster(globals, &client, CALL_TIMEOUT)?;
            let deleted = delete_prefix(&cluster, &prefix.unwrap_or_default(), &paging).await?;
            let simple = format!("deleted {deleted} key{}", if deleted == 1 { "" } else { "s" });
            (Shown::plain(json!({"deleted": deleted}), simple), globals.write_out(&client))
        }
        // `--absent` is the same request as no `--expected`: `expected: null`.
        Commands::Cas { key, value, expected, absent: _, client } => {
            let cluster = cluster(globals, &client, CALL_TIMEOUT)?;
            let value = read_value(value, &cluster.deadline).await?;
            let (field, value) = value.json_field();
            let mut body = json!({"key": key, "expected": expected});
            body[field] = value;
            let v = call(&cluster, Effect::Write, Method::POST, "/api/v1/cas", Some(body)).await?;
            (Shown::plain(v.clone(), format!("OK (index {})", v["index"])), globals.write_out(&client))
        }
        Commands::Members { client } => {
            let cluster = cluster(globals, &client, CALL_TIMEOUT)?;
            let v = call(&cluster, Effect::Read, Method::GET, "/api/v1/members", None).await?;
            (members(v), globals.write_out(&client))
        }
        Commands::Stats { client } => {
            let cluster = cluster(globals, &client, CALL_TIMEOUT)?;
            let v = call(&cluster, Effect::Read, Method::GET, "/api/maintain/stats", None).await?;
            let map = v.as_object().cloned().unwrap_or_default();
            let simple = map.iter().map(|(k, v)| format!("{k}: {}", field(v))).collect::<Vec<_>>().join("\n");
            let rows = map.iter().map(|(k, v)| vec![k.clone(), field(v)]).collect();
            let table = Table { header: vec!["FIELD", "VALUE"], rows };
            (Shown { json: v, simple, table: Some(table) }, globals.write_out(&client))
        }
        Commands::Join { id, raft_addr, http_addr, replace, client } => {
            // The server waits for the new server to catch up.
            let cluster = cluster(globals, &client, Duration::from_secs(300))?;
            let body = json!({"id": id, "raft_addr": raft_addr, "http_addr": http_addr, "replace": replace});
            let v = call(&cluster, Effect::Write, Method::POST, "/api/v1/join", Some(body)).await?;
            (Shown::plain(v.clone(), format!("joined: a voter since index {}", v["index"])), globals.write_out(&client))
        }
        Commands::Leave { client } => {
            let cluster = cluster(globals, &client, Duration::from_secs(120))?;
            if cluster.endpoints().len() != 1 {
                return Err(CallError::NotDone(
                    "leave makes the node asked leave: name exactly one endpoint (--addr)".to_string(),
                ));
            }
            let v = call(&cluster, Effect::Write, Method::POST, "/api/v1/leave", None).await?;
            (Shown::plain(v.clone(), format!("node {} left the cluster", v["left"])), globals.write_out(&client))
        }
        Commands::Gossip(GossipCommand::Members { client }) => {
            let cluster = cluster(globals, &client, CALL_TIMEOUT)?;
            let v = call(&cluster, Effect::Read, Method::GET, "/api/v1/gossip/members", None).await?;
            let members = v["members"].as_array().cloned().unwrap_or_default();
            let simple = members.iter().map(|m| {
                format!(
                    "{}\t{}\tgossip {}\traft {}\thttp {}",
                    m["id"],
                    field(&m["liveness"]),
                    field(&m["gossip_addr"]),
                    field(&m["raft_addr"]),
                    field(&m["http_addr"])
                )
            });
            (Shown::plain(v.clone(), simple.collect::<Vec<_>>().join("\n")), globals.write_out(&client))
        }
        Commands::Operator(OperatorCommand::Autopilot(AutopilotCommand::State { client })) => {
            let cluster = cluster(globals, &client, CALL_TIMEOUT)?;
            let v = call(&cluster, Effect::Read, Method::GET, "/api/v1/operator/autopilot/health", None).await?;
            (Shown::plain(v.clone(), autopilot_table(&v)), globals.write_out(&client))
        }
        Commands::Remove { id, client } => {
            let cluster = cluster(globals, &client, CALL_TIMEOUT)?;
            let v = call(&cluster, Effect::Write, Method::POST, "/api/v1/remove", Some(json!({"id": id}))).await?;
            (Shown::plain(v.clone(), format!("removed (index {})", v["index"])), globals.write_out(&client))
        }
        Commands::TransferLeader { id, client } => {
            let cluster = cluster(globals, &client, CALL_TIMEOUT)?;
            let body = Some(json!({"id": id}));
            let v = call(&cluster, Effect::Write, Method::POST, "/api/v1/transfer-leader", body).await?;
            (Shown::plain(v.clone(), format!("node {} leads now", v["target"])), globals.write_out(&client))
        }
        Commands::Endpoint(EndpointCommand::Health { client }) => {
            let cluster = cluster(globals, &client, Duration::from_secs(5))?;
            let (shown, all_healthy) = endpoint_health(&cluster).await;
            shown.print(globals.write_out(&client));
            return if all_healthy {
                Ok(())
            } else {
                Err(CallError::NotDone("not every endpoint is healthy and ready".to_string()))
            };
        }
        Commands::Endpoint(EndpointCommand::Status { client }) => {
            let cluster = cluster(globals, &client, Duration::from_secs(5))?;
            let (shown, all_answered) = endpoint_status(&cluster).await;
            shown.print(globals.write_out(&client));
            return if all_answered {
                Ok(())
            } else {
                Err(CallError::NotDone("not every endpoint answered".to_string()))
            };
        }
    };
    shown.print(write_out);
    Ok(())
}

/// The value of `put` or `cas`: the argument, stdin (`-`) or a file; read
/// within the command's deadline.
async fn read_value(args: ValueArgs, deadline: &Deadline) -> Result<Blob, CallError> {
    use tokio::io::AsyncReadExt;
    let bytes = match (args.value, args.file) {
        (_, Some(file)) => {
            let read = tokio::fs::read(&file).await;
            read.map_err(|e| format!("cannot read the value from {}: {e}", file.display()))?
        }
        (Some(value), None) if value == "-" => {
            if std::io::IsTerminal::is_terminal(&std::io::stdin()) {
                eprintln!("raftkv: reading the value from stdin (end it with Ctrl-D)");
            }
            let (mut bytes, mut stdin) = (Vec::new(), tokio::io::stdin());
            let read = stdin.read_to_end(&mut bytes);
            let read = match deadline.budget() {
                Some(budget) if deadline.end().is_some() => tokio::time::timeout(budget, read)
                    .await
                    .map_err(|_| "timed out reading the value from stdin (--timeout); nothing was sent".to_string())?,
                _ => read.await,
            };
            read.map_err(|e| format!("cannot read the value from stdin: {e}"))?;
            bytes
        }
        (Some(value), None) => return Ok(Blob::from(value)),
        (None, None) => return Err(CallError::NotDone("give a VALUE, - (stdin) or --file FILE".to_string())),
    };
    Ok(Blob::from(bytes))
}

/// One page of `GET /api/v1/list`: its items and whether there are more.
async fn list_page(
    cluster: &Cluster,
    prefix: &str,
    after: Option<&str>,
    limit: usize,
    paging: &PagingArgs,
) -> Result<(Vec<Value>, bool), CallError> {
    let mut path =
        format!("/api/v1/list?prefix={}&limit={limit}&consistency={}", encode(prefix), paging.consistency.as_str());
    if let Some(after) = after {
        path.push_str(&format!("&start_after={}", encode(after)));
    }
    let answer: Answer = cluster.call(Effect::Read, reqwest::Method::GET, &path, None).await?;
    let v = answer.json()?;
    let items = v["items"].as_array().cloned().ok_or_else(|| {
        CallError::NotDone(format!("{}: the list answer has no items: {}", answer.endpoint, answer.text))
    })?;
    Ok((items, v["more"] == json!(true)))
}

/// Every key under `prefix` (at most `limit`), page by page; and whether
/// there are more.
async fn list_all(
    cluster: &Cluster,
    prefix: &str,
    limit: Option<usize>,
    paging: &PagingArgs,
) -> Result<(Vec<Value>, bool), CallError> {
    let mut items: Vec<Value> = Vec::new();
    loop {
        let want = match limit {
            Some(limit) => paging.page_size.min(limit - items.len()),
            None => paging.page_size,
        };
        let after = items.last().and_then(|i| i["key"].as_str()).map(str::to_string);
        let (page, more) = list_page(cluster, prefix, after.as_deref(), want, paging).await?;
        let empty = page.is_empty();
        items.extend(page);
        if !more || empty || limit.is_some_and(|limit| items.len() >= limit) {
            return Ok((items, more));
        }
    }
}

/// `delete --prefix`: each page's keys deleted one by one; how many existed.
async fn delete_prefix(cluster: &Cluster, prefix: &str, paging: &PagingArgs) -> Result<u64, CallError> {
    let (mut deleted, mut after) = (0u64, None::<String>);
    loop {
        let (page, more) = list_page(cluster, prefix, after.as_deref(), paging.page_size, paging).await?;
        for item in &page {
            let Some(key) = item["key"].as_str() else { continue };
            let path = format!("/api/v1/delete?key={}", encode(key));
            let answer = call(cluster, Effect::Write, reqwest::Method::DELETE, &path, None).await;
            match answer {
                Ok(v) => deleted += u64::from(v["deleted"] == json!(true)),
                Err(error) => {
                    let message = format!(
                        "deleting {key:?}: {}; {deleted} key{} under {prefix:?} deleted before it, the rest not tried",
                        error.message(),
                        if deleted == 1 { " was" } else { "s were" }
                    );
                    return Err(match error {
                        CallError::NotDone(_) => CallError::NotDone(message),
                        CallError::Unknown(_) => CallError::Unknown(message),
                    });
                }
            }
            after = Some(key.to_string());
        }
        if !more || page.is_empty() {
            return Ok(deleted);
        }
    }
}

/// What `get --prefix` and `list` show: the server's list answer (all pages
/// in one), the plain lines, a table.
fn items_shown(items: Vec<Value>, more: bool, simple: String) -> Shown {
    let rows = items.iter().map(|i| vec![field(&i["key"]), value_field(i), field(&i["index"])]).collect();
    let table = Table { header: vec!["KEY", "VALUE", "INDEX"], rows };
    Shown { json: json!({"items": items, "more": more}), simple, table: Some(table) }
}

/// `members`: one line (or row) per member.
fn members(v: Value) -> Shown {
    let members = v["members"].as_array().cloned().unwrap_or_default();
    let simple = members
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
                field(&m["suffrage"]),
                m["raft_addr"].as_str().unwrap_or("?"),
                m["http_addr"].as_str().unwrap_or("?")
            )
        })
        .collect::<Vec<_>>()
        .join("\n");
    let rows = members
        .iter()
        .map(|m| {
            let health = match m["healthy"].as_bool() {
                Some(true) => "healthy",
                Some(false) => "UNHEALTHY",
                None => "",
            };
            vec![
                field(&m["id"]),
                field(&m["suffrage"]),
                if m["leader"] == json!(true) { "true".into() } else { "false".into() },
                field(&m["raft_addr"]),
                field(&m["http_addr"]),
                field(&m["match_index"]),
                field(&m["trailing"]),
                m["last_contact_ms"].as_u64().map(|ms| format!("{ms} ms ago")).unwrap_or_default(),
                health.to_string(),
            ]
        })
        .collect();
    let header =
        vec!["ID", "SUFFRAGE", "LEADER", "RAFT ADDR", "HTTP ADDR", "MATCH INDEX", "TRAILING", "CONTACT", "HEALTH"];
    Shown { json: v, simple, table: Some(Table { header, rows }) }
}

/// A probe's answer: its JSON if 200, else the reason.
fn probe(answer: &Result<Answer, String>) -> Result<Value, String> {
    match answer {
        Ok(answer) => answer.json().map_err(|e| e.message().to_string()),
        Err(reason) => Err(reason.clone()),
    }
}

/// `endpoint health`: /v1/health and /v1/ready of every endpoint; whether
/// all are both.
async fn endpoint_health(cluster: &Cluster) -> (Shown, bool) {
    let (health, ready) = tokio::join!(cluster.each("/v1/health"), cluster.each("/v1/ready"));
    let (mut documents, mut lines, mut rows, mut all) = (Vec::new(), Vec::new(), Vec::new(), true);
    for ((endpoint, health), (_, ready)) in health.iter().zip(&ready) {
        let (health, ready) = (probe(health), probe(ready));
        let ok = health.is_ok() && ready.is_ok();
        all &= ok;
        let error = match (&health, &ready) {
            (Err(e), _) => format!("unhealthy: {e}"),
            (Ok(_), Err(e)) => format!("not ready: {e}"),
            _ => String::new(),
        };
        lines.push(match &ready {
            Ok(r) => format!("{endpoint} is healthy and ready: node {}, leader {}", r["id"], r["leader"]),
            Err(_) => format!("{endpoint} is {error}"),
        });
        let id = health.as_ref().map(|h| field(&h["id"])).unwrap_or_default();
        rows.push(vec![endpoint.clone(), id, health.is_ok().to_string(), ready.is_ok().to_string(), error.clone()]);
        documents.push(json!({
            "endpoint": endpoint,
            "healthy": ok,
            "health": health.as_ref().ok(),
            "ready": ready.as_ref().ok(),
            "error": (!ok).then_some(error),
        }));
    }
    let table = Table { header: vec!["ENDPOINT", "ID", "HEALTH", "READY", "ERROR"], rows };
    (Shown { json: Value::Array(documents), simple: lines.join("\n"), table: Some(table) }, all)
}

/// `endpoint status`: every endpoint's id, state, leader, term and indexes;
/// whether all answered.
async fn endpoint_status(cluster: &Cluster) -> (Shown, bool) {
    let (health, ready, stats) =
        tokio::join!(cluster.each("/v1/health"), cluster.each("/v1/ready"), cluster.each("/api/maintain/stats"));
    let (mut documents, mut lines, mut rows, mut all) = (Vec::new(), Vec::new(), Vec::new(), true);
    for (((endpoint, health), (_, ready)), (_, stats)) in health.iter().zip(&ready).zip(&stats) {
        let (health, ready, stats) = (probe(health), probe(ready), probe(stats));
        let stat = |name: &str| stats.as_ref().map(|s| field(&s[name])).unwrap_or_default();
        let id = health.as_ref().map(|h| field(&h["id"])).unwrap_or_default();
        let leader = ready.as_ref().map(|r| field(&r["leader"])).unwrap_or_default();
        let error = match (&stats, &health) {
            (Err(e), _) => Some(e.clone()),
            (Ok(_), Err(e)) => Some(format!("unhealthy: {e}")),
            _ => None,
        };
        all &= stats.is_ok();
        let row = vec![
            endpoint.clone(),
            id,
            stat("state"),
            if stat("state") == "Leader" { "true".into() } else { "false".into() },
            leader,
            stat("term"),
            stat("commit_index"),
            stat("applied_index"),
            stat("last_log_index"),
            error.clone().unwrap_or_default(),
        ];
        lines.push(match &error {
            Some(e) if stats.is_err() => format!("{endpoint}, failed: {e}"),
            _ => {
                let cells: Vec<&String> = row[..row.len() - 1].iter().collect();
                let mut line = cells.iter().map(|c| c.as_str()).collect::<Vec<_>>().join(", ");
                if let Some(e) = &error {
                    line.push_str(&format!(", {e}"));
                }
                line
            }
        });
        rows.push(row);
        documents.push(json!({
            "endpoint": endpoint,
            "health": health.as_ref().ok(),
            "ready": ready.as_ref().ok(),
            "stats": stats.as_ref().ok(),
            "error": error,
        }));
    }
    let header = vec![
        "ENDPOINT",
        "ID",
        "STATE",
        "IS LEADER",
        "LEADER",
        "TERM",
        "COMMIT INDEX",
        "APPLIED INDEX",
        "LAST LOG INDEX",
        "ERROR",
    ];
    (Shown { json: Value::Array(documents), simple: lines.join("\n"), table: Some(Table { header, rows }) }, all)
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tables_align_columns_and_escape_control_characters() {
        let table = Table {
            header: vec!["KEY", "VALUE"],
            rows: vec![vec!["a".into(), "one\ntwo".into()], vec!["longer".into(), "x".into()]],
        };
        assert_eq!(table.render(), "KEY     VALUE\na       one\\ntwo\nlonger  x");
    }
}
