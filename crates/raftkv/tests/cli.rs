//! The client CLI as a user runs it (the real `raftkv` binary against real
//! nodes): failover over `--endpoints`, `--timeout` against a paused node,
//! values from stdin and files, `--prefix` reads and deletes, `list` over
//! many pages, `-w json|table`, `endpoint health|status`, and `bench` with
//! no server. Every wait is bounded; nothing asserts on timing.

mod common;

use std::io::Write;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use common::*;
use serde_json::Value;

/// Runs `raftkv ARGS` to the end (without RAFTKV_* from the environment).
fn raftkv(args: &[&str]) -> Output {
    raftkv_with_stdin(args, None)
}

fn raftkv_with_stdin(args: &[&str], stdin: Option<&[u8]>) -> Output {
    let mut child = command(args).stdin(if stdin.is_some() { Stdio::piped() } else { Stdio::null() }).spawn().unwrap();
    if let Some(bytes) = stdin {
        let mut pipe = child.stdin.take().unwrap();
        pipe.write_all(bytes).unwrap();
    }
    child.wait_with_output().unwrap()
}

fn command(args: &[&str]) -> Command {
    let mut command = Command::new(BIN);
    command.args(args).stdout(Stdio::piped()).stderr(Stdio::piped());
    for var in ["RAFTKV_ENDPOINTS", "RAFTKV_TIMEOUT", "RAFTKV_TOKEN", "RAFTKV_CACERT"] {
        command.env_remove(var);
    }
    command
}

/// Runs `raftkv ARGS`, killed (and the test failed) if it has not ended
/// within `bound`: for commands that must end by their `--timeout`, well
/// before the 30 s a call waited without one.
fn raftkv_bounded(args: &[&str], bound: Duration) -> Output {
    let mut child = command(args).stdin(Stdio::null()).spawn().unwrap();
    let start = Instant::now();
    while child.try_wait().unwrap().is_none() {
        if start.elapsed() > bound {
            child.kill().unwrap();
            let output = child.wait_with_output().unwrap();
            panic!("raftkv {args:?} still ran after {bound:?}: {}", String::from_utf8_lossy(&output.stderr));
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    child.wait_with_output().unwrap()
}

fn stdout(output: &Output) -> String {
    String::from_utf8(output.stdout.clone()).unwrap()
}

fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).to_string()
}

/// Asserts `raftkv ARGS` succeeded; its stdout.
fn ok(args: &[&str]) -> String {
    let output = raftkv(args);
    assert!(output.status.success(), "raftkv {args:?}: {:?} {}", output.status, stderr(&output));
    stdout(&output)
}

fn json_of(args: &[&str]) -> Value {
    let out = ok(args);
    serde_json::from_str(&out).unwrap_or_else(|e| panic!("raftkv {args:?} printed no JSON document ({e}): {out}"))
}

/// An address nobody listens on.
fn dead_addr() -> String {
    format!("127.0.0.1:{}", free_port())
}

async fn one_node(root: &std::path::Path) -> Node {
    let mut node = Node::new(1, root);
    node.start(&["--bootstrap"]);
    leader_of(&[&node]).await;
    node
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn endpoints_fail_over_past_dead_nodes_and_endpoint_health_says_which() {
    let root = tempfile::TempDir::new().unwrap();
    let mut nodes = three_node_cluster(root.path()).await;
    let all = format!("{},{},{}", nodes[0].http, nodes[1].http, nodes[2].http);

    let healthy = raftkv(&["endpoint", "health", "--endpoints", &all]);
    assert!(healthy.status.success(), "{}{}", stdout(&healthy), stderr(&healthy));
    assert_eq!(stdout(&healthy).matches("is healthy and ready").count(), 3, "{}", stdout(&healthy));

    // A follower dies; the first endpoints are dead, the last alive (a URL).
    nodes[2].kill9();
    let endpoints = format!("{},{},http://{}", dead_addr(), nodes[2].http, nodes[1].http);
    assert_eq!(ok(&["put", "greeting", "hello", "--endpoints", &endpoints]).trim_start().get(..2), Some("OK"));
    assert_eq!(ok(&["get", "greeting", "--endpoints", &endpoints]), "hello\n");
    // Global options go before the command too; --addr is one endpoint.
    assert_eq!(ok(&["--endpoints", &endpoints, "get", "greeting"]), "hello\n");
    assert_eq!(ok(&["get", "greeting", "--addr", &nodes[1].http]), "hello\n");
    // RAFTKV_ENDPOINTS, and --addr over it.
    let from_env = command(&["get", "greeting"]).env("RAFTKV_ENDPOINTS", &endpoints).output().unwrap();
    assert_eq!(stdout(&from_env), "hello\n", "{}", stderr(&from_env));
    let addr_wins =
        command(&["get", "greeting", "--addr", &nodes[0].http]).env("RAFTKV_ENDPOINTS", dead_addr()).output().unwrap();
    assert_eq!(stdout(&addr_wins), "hello\n", "{}", stderr(&addr_wins));

    // Only dead endpoints: not done (1), each named.
    let (dead1, dead2) = (dead_addr(), nodes[2].http.clone());
    let failed = raftkv(&["put", "k", "v", "--endpoints", &format!("{dead1},{dead2}")]);
    assert_eq!(failed.status.code(), Some(1), "{}", stderr(&failed));
    for name in [&dead1, &dead2] {
        assert!(stderr(&failed).contains(name.as_str()), "{}", stderr(&failed));
    }
    assert!(stderr(&failed).contains("nothing was done"), "{}", stderr(&failed));

    // endpoint health: exit 1, and the dead node is the unhealthy one.
    let health = raftkv(&["endpoint", "health", "--endpoints", &all, "-w", "json"]);
    assert_eq!(health.status.code(), Some(1), "{}", stderr(&health));
    let report: Value = serde_json::from_str(&stdout(&health)).unwrap();
    let healthy: Vec<bool> = report.as_array().unwrap().iter().map(|e| e["healthy"].as_bool().unwrap()).collect();
    assert_eq!(healthy, [true, true, false], "{report}");
    assert_eq!(report[0]["health"]["id"], 1);
    assert_eq!(report[2]["endpoint"], nodes[2].http.as_str());
    let health = raftkv(&["endpoint", "health", "--endpoints", &all]);
    assert_eq!(health.status.code(), Some(1));
    assert!(stdout(&health).contains(&format!("{} is unhealthy", nodes[2].http)), "{}", stdout(&health));

    // endpoint status: one row per endpoint, the leader marked; exit 1 for the dead one.
    let status = raftkv(&["endpoint", "status", "--endpoints", &all, "-w", "table"]);
    assert_eq!(status.status.code(), Some(1), "{}", stderr(&status));
    let table = stdout(&status);
    let lines: Vec<&str> = table.lines().collect();
    assert!(lines[0].starts_with("ENDPOINT") && lines[0].contains("COMMIT INDEX"), "{table}");
    assert!(lines[1].contains(&nodes[0].http) && lines[1].contains("Leader"), "{table}");
    assert!(lines[2].contains("Follower"), "{table}");
    let live = format!("{},{}", nodes[0].http, nodes[1].http);
    let status = json_of(&["endpoint", "status", "--endpoints", &live, "-w", "json"]);
    assert_eq!(status[0]["stats"]["state"], "Leader", "{status}");
    assert_eq!(status[1]["ready"]["leader"], 1, "{status}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn timeout_bounds_commands_against_a_paused_node_and_writes_are_not_resent() {
    let root = tempfile::TempDir::new().unwrap();
    let nodes = three_node_cluster(root.path()).await;
    assert_eq!(set(&nodes[0], "k", "v1").await.status(), 200);
    // Node 3 (a follower) stops: its kernel still accepts connections.
    nodes[2].signal("-STOP");
    let paused = nodes[2].http.as_str();

    // Alone, it makes the command fail by the deadline (30 s without one).
    let read = raftkv_bounded(&["get", "k", "--addr", paused, "--timeout", "2s"], Duration::from_secs(20));
    assert_eq!(read.status.code(), Some(1), "{}", stderr(&read));
    assert!(stderr(&read).contains("timed out") && stderr(&read).contains(paused), "{}", stderr(&read));
    let health = raftkv_bounded(&["endpoint", "health", "--addr", paused, "--timeout", "1s"], Duration::from_secs(20));
    assert_eq!(health.status.code(), Some(1), "{}", stdout(&health));

    // A read goes on to the next endpoint when the paused one does not answer.
    let endpoints = format!("{paused},{}", nodes[1].http);
    let read = raftkv_bounded(&["get", "k", "--endpoints", &endpoints, "--timeout", "10s"], Duration::from_secs(25));
    assert!(read.status.success(), "{}", stderr(&read));
    assert_eq!(stdout(&read), "v1\n");

    // A write sent to the paused node may take effect when it wakes: it is
    // reported as unknown (exit 4), not sent to the next endpoint.
    let write =
        raftkv_bounded(&["put", "k2", "v2", "--endpoints", &endpoints, "--timeout", "2s"], Duration::from_secs(20));
    assert_eq!(write.status.code(), Some(4), "{}", stderr(&write));
    assert!(stderr(&write).contains("may or may not have taken effect"), "{}", stderr(&write));
    let (status, _) = get_json(&nodes[0], "k2", "linearizable").await;
    assert_eq!(status, 404, "the write went to another endpoint too");

    // A bad duration is a usage error.
    // The largest value, text that escapes six times in JSON, through a
    // follower (forwarded to the leader): taken, and read back whole.
    let leader = leader_of(&[&nodes[0], &nodes[1]]).await;
    let follower = nodes.iter().find(|n| n.id != leader && n.id != 3).unwrap();
    let controls = "\u{1}".repeat(1 << 20);
    let url = format!("http://{}/api/v1/kv/controls", follower.http);
    let put = client().put(&url).body(controls.clone()).send().await.unwrap();
    assert_eq!(put.status(), 200, "{}", put.text().await.unwrap());
    let got = client().get(&url).send().await.unwrap();
    assert!(got.bytes().await.unwrap() == controls.as_bytes(), "the value read back differs");

    let bad = raftkv(&["get", "k", "--timeout", "5"]);
    assert_eq!(bad.status.code(), Some(2));
    assert!(stderr(&bad).contains("needs a unit"), "{}", stderr(&bad));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn values_from_stdin_and_files_round_trip() {
    let root = tempfile::TempDir::new().unwrap();
    let node = one_node(root.path()).await;
    let addr = node.http.as_str();

    // 1 MiB (the server's limit), with newlines, tabs, quotes and backslashes.
    let piece = "line \"quoted\"\t\\ tab\n";
    let big: String = piece.repeat((1 << 20) / piece.len() + 1)[..1 << 20].to_string();
    let put = raftkv_with_stdin(&["put", "big", "-", "--addr", addr], Some(big.as_bytes()));
    assert!(put.status.success(), "{}", stderr(&put));
    let got = json_of(&["get", "big", "--addr", addr, "-w", "json"]);
    assert_eq!(got["value"].as_str().map(str::len), Some(big.len()));
    assert!(got["value"] == big.as_str(), "the value read back differs");
    assert_eq!(ok(&["get", "big", "--addr", addr]), format!("{big}\n"));

    let file = root.path().join("value.txt");
    let other = big.replace("tab", "TAB");
    std::fs::write(&file, &other).unwrap();
    let path = file.to_str().unwrap();
    ok(&["put", "fromfile", "--file", path, "--addr", addr]);
    assert!(json_of(&["get", "fromfile", "--addr", addr, "-w", "json"])["value"] == other.as_str());
    ok(&["put", "swapped", "old", "--addr", addr]);
    ok(&["cas", "swapped", "--file", path, "--expected", "old", "--addr", addr]);
    assert!(json_of(&["get", "swapped", "--addr", addr, "-w", "json"])["value"] == other.as_str());

    // A VALUE and --file together, or neither: a usage error.
    let both = raftkv(&["put", "k", "v", "--file", path, "--addr", addr]);
    assert_eq!(both.status.code(), Some(2));
    assert!(stderr(&both).contains("cannot be used with"), "{}", stderr(&both));
    assert_eq!(raftkv(&["put", "k", "--addr", addr]).status.code(), Some(2));
    // Any bytes: a binary value goes in and comes back exactly, as the raw
    // bytes on stdout and as base64 in JSON; keys with `/ ?#%+` and spaces
    // name themselves.
    let bytes: Vec<u8> = (0..=255u8).chain([0xff, 0xfe, 0, b'\n']).collect();
    let binary = root.path().join("binary");
    std::fs::write(&binary, &bytes).unwrap();
    let key = "bin/a key?#%+é";
    ok(&["put", key, "--file", binary.to_str().unwrap(), "--addr", addr]);
    let got = raftkv(&["get", key, "--addr", addr]);
    assert!(got.status.success(), "{}", stderr(&got));
    assert_eq!(got.stdout, bytes, "the binary value read back differs");
    let got = json_of(&["get", key, "--addr", addr, "-w", "json"]);
    assert_eq!(got["key"], key);
    assert!(got["value"].is_null(), "{got}");
    assert_eq!(got["value_base64"].as_str().map(|b| b.len()), Some(bytes.len().div_ceil(3) * 4), "{got}");
    // Dot segments are keys too.
    for key in [".", ".."] {
        ok(&["put", key, &format!("dots {key}"), "--addr", addr]);
        assert_eq!(ok(&["get", key, "--addr", addr]), format!("dots {key}\n"));
    }
    let piped = raftkv_with_stdin(&["put", "bin2", "-", "--addr", addr], Some(&bytes[250..]));
    assert!(piped.status.success(), "{}", stderr(&piped));
    assert_eq!(raftkv(&["get", "bin2", "--addr", addr]).stdout, &bytes[250..]);
    ok(&["put", "swapped", "text", "--addr", addr]);
    ok(&["cas", "swapped", "--file", binary.to_str().unwrap(), "--expected", "text", "--addr", addr]);
    assert_eq!(raftkv(&["get", "swapped", "--addr", addr]).stdout, bytes);
    // A failed swap tells the binary value it found, in base64.
    let conflict = raftkv(&["cas", "swapped", "new", "--expected", "text", "--addr", addr, "-w", "json"]);
    assert_eq!(conflict.status.code(), Some(1), "{}", stderr(&conflict));
    assert!(stderr(&conflict).contains("409"), "{}", stderr(&conflict));

    // The raw route as any HTTP client uses it: the bytes, the index in a
    // header; a delete; the JSON routes take base64 too.
    let http = client();
    let url = format!("http://{addr}/api/v1/kv/bin%2Fa%20key%3F%23%25%2B%C3%A9");
    let raw = http.get(&url).send().await.unwrap();
    assert_eq!(raw.status(), 200);
    assert_eq!(raw.headers()["content-type"], "application/octet-stream");
    assert!(raw.headers()["x-raftkv-index"].to_str().unwrap().parse::<u64>().unwrap() > 0);
    assert_eq!(raw.bytes().await.unwrap(), bytes);
    let stale = http.get(format!("{url}?consistency=stale")).send().await.unwrap();
    assert_eq!(stale.bytes().await.unwrap(), bytes);
    let set = http
        .post(format!("http://{addr}/api/v1/set"))
        .json(&serde_json::json!({"key": "b64", "value_base64": "/wA="}))
        .send()
        .await
        .unwrap();
    assert_eq!(set.status(), 200);
    assert_eq!(
        http.get(format!("http://{addr}/api/v1/kv/b64")).send().await.unwrap().bytes().await.unwrap()[..],
        [0xff, 0]
    );
    for bad in [
        serde_json::json!({"key": "b64", "value_base64": "not base64!"}),
        serde_json::json!({"key": "b64", "value": "x", "value_base64": "AA=="}),
        serde_json::json!({"key": "b64"}),
    ] {
        let refused = http.post(format!("http://{addr}/api/v1/set")).json(&bad).send().await.unwrap();
        assert_eq!(refused.status(), 400, "{bad}");
    }
    let deleted = http.delete(&url).send().await.unwrap().json::<Value>().await.unwrap();
    assert_eq!(deleted["deleted"], true, "{deleted}");
    assert_eq!(http.get(&url).send().await.unwrap().status(), 404);
    let listed = ok(&["list", "bin", "--addr", addr]);
    assert!(listed.contains("bin2\tbase64:+vv8/f7///4ACg=="), "{listed}");
    // A missing file, over the limit: clear errors, nothing written.
    let missing = raftkv(&["put", "nothing", "--file", "/nonexistent/value", "--addr", addr]);
    assert!(stderr(&missing).contains("/nonexistent/value"), "{}", stderr(&missing));
    let too_big = raftkv_with_stdin(&["put", "huge", "-", "--addr", addr], Some(format!("{big}x").as_bytes()));
    assert_eq!(too_big.status.code(), Some(1), "{}", stderr(&too_big));
    assert!(stderr(&too_big).contains("413"), "{}", stderr(&too_big));
    assert_eq!(get_json(&node, "nothing", "linearizable").await.0, 404);
    assert_eq!(get_json(&node, "huge", "linearizable").await.0, 404);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prefixes_and_list_page_through_everything() {
    let root = tempfile::TempDir::new().unwrap();
    let node = one_node(root.path()).await;
    let addr = node.http.as_str();
    // 25 keys under a/, and keys around it that must not be touched.
    for i in 0..25 {
        assert_eq!(set(&node, &format!("a/{i:02}"), &format!("v{i}")).await.status(), 200);
    }
    for key in ["a", "a.", "b/1", "`"] {
        assert_eq!(set(&node, key, "other").await.status(), 200);
    }

    // list follows `more` over pages of 4; --limit stops early.
    let listed = ok(&["list", "a/", "--page-size", "4", "--addr", addr]);
    let lines: Vec<&str> = listed.lines().collect();
    assert_eq!(lines.len(), 25, "{listed}");
    assert_eq!((lines[0], lines[24]), ("a/00\tv0", "a/24\tv24"));
    assert_eq!(ok(&["list", "--page-size", "3", "--addr", addr]).lines().count(), 29);
    let limited = json_of(&["list", "a/", "--page-size", "4", "--limit", "10", "--addr", addr, "-w", "json"]);
    assert_eq!(limited["items"].as_array().unwrap().len(), 10);
    assert_eq!((limited["items"][9]["key"].as_str(), limited["more"].as_bool()), (Some("a/09"), Some(true)));
    let whole = json_of(&["list", "a/", "--page-size", "7", "--addr", addr, "-w", "json"]);
    assert_eq!((whole["items"].as_array().unwrap().len(), whole["more"].as_bool()), (25, Some(false)));

    // get --prefix: key and value on alternate lines, as etcdctl prints them.
    let got = ok(&["get", "--prefix", "a/", "--page-size", "4", "--addr", addr]);
    let lines: Vec<&str> = got.lines().collect();
    assert_eq!(lines.len(), 50, "{got}");
    assert_eq!(&lines[..4], ["a/00", "v0", "a/01", "v1"]);
    let table = ok(&["get", "--prefix", "a/", "--limit", "2", "--addr", addr, "-w", "table"]);
    let rows: Vec<Vec<&str>> = table.lines().map(|line| line.split_whitespace().collect()).collect();
    assert_eq!((rows.len(), &rows[0][..], &rows[1][..2]), (3, &["KEY", "VALUE", "INDEX"][..], &["a/00", "v0"][..]));

    // delete --prefix deletes all 25 over pages, and nothing else.
    let deleted = ok(&["delete", "--prefix", "a/", "--page-size", "4", "--addr", addr]);
    assert_eq!(deleted.trim(), "deleted 25 keys");
    assert_eq!(ok(&["list", "--addr", addr]), "`\tother\na\tother\na.\tother\nb/1\tother\n");
    assert_eq!(ok(&["delete", "--prefix", "a/", "--addr", addr, "-w", "json"]).trim(), r#"{"deleted":0}"#);
    // One key, or a prefix: not both, not neither.
    assert_eq!(raftkv(&["delete", "a", "--prefix", "a", "--addr", addr]).status.code(), Some(2));
    assert_eq!(raftkv(&["get", "--addr", addr]).status.code(), Some(2));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn write_out_json_is_one_document_and_table_has_a_header() {
    let root = tempfile::TempDir::new().unwrap();
    let node = one_node(root.path()).await;
    let addr = node.http.as_str();
    ok(&["put", "k", "v", "--addr", addr]);

    assert_eq!(json_of(&["put", "k2", "v", "--addr", addr, "-w", "json"])["index"].as_u64().map(|i| i > 0), Some(true));
    let got = json_of(&["get", "k", "--addr", addr, "-w", "json"]);
    assert_eq!((got["key"].as_str(), got["value"].as_str()), (Some("k"), Some("v")));
    // --json is -w json.
    assert_eq!(json_of(&["get", "k", "--addr", addr, "--json"])["value"], "v");
    assert_eq!(json_of(&["list", "--addr", addr, "-w", "json"])["items"].as_array().map(Vec::len), Some(2));
    let members = json_of(&["members", "--addr", addr, "-w", "json"]);
    assert_eq!(members["members"][0]["id"], 1, "{members}");
    let stats = json_of(&["-w", "json", "stats", "--addr", addr]);
    assert_eq!(stats["state"], "Leader", "{stats}");
    let health = json_of(&["endpoint", "health", "--addr", addr, "-w", "json"]);
    assert_eq!((health[0]["healthy"].as_bool(), health[0]["ready"]["ready"].as_bool()), (Some(true), Some(true)));
    let status = json_of(&["endpoint", "status", "--addr", addr, "-w", "json"]);
    assert_eq!(status[0]["stats"]["state"], "Leader", "{status}");

    for (args, header) in [
        (&["members"][..], "ID  SUFFRAGE  LEADER"),
        (&["stats"][..], "FIELD"),
        (&["get", "k"][..], "KEY  VALUE  INDEX"),
        (&["endpoint", "health"][..], "ENDPOINT"),
    ] {
        let mut args = args.to_vec();
        args.extend(["--addr", addr, "-w", "table"]);
        let out = ok(&args);
        assert!(out.starts_with(header), "raftkv {args:?}:\n{out}");
    }
    let bad = raftkv(&["get", "k", "--addr", addr, "-w", "yaml"]);
    assert_eq!(bad.status.code(), Some(2));
    assert!(stderr(&bad).contains("simple") && stderr(&bad).contains("table"), "{}", stderr(&bad));
}

#[test]
fn bench_without_a_server_fails_with_the_reason() {
    let target = dead_addr();
    let output =
        raftkv_bounded(&["bench", "--target", &target, "--duration", "1", "--clients", "2"], Duration::from_secs(30));
    assert_eq!(output.status.code(), Some(1), "{}", stderr(&output));
    assert!(stderr(&output).contains(&target) && stderr(&output).contains("nothing was run"), "{}", stderr(&output));
}

#[test]
fn endpoints_are_checked() {
    for (endpoints, complaint) in
        [("ftp://127.0.0.1:1", "http or https"), ("127.0.0.1", "host:port"), (",", "names no endpoint")]
    {
        let output = raftkv(&["get", "k", "--endpoints", endpoints]);
        assert_eq!(output.status.code(), Some(1), "{endpoints}: {}", stderr(&output));
        assert!(stderr(&output).contains(complaint), "{endpoints}: {}", stderr(&output));
    }
    let both = raftkv(&["get", "k", "--endpoints", "127.0.0.1:1", "--addr", "127.0.0.1:2"]);
    assert!(stderr(&both).contains("not both"), "{}", stderr(&both));
    let leave = raftkv(&["leave", "--endpoints", "127.0.0.1:1,127.0.0.1:2"]);
    assert!(stderr(&leave).contains("exactly one endpoint"), "{}", stderr(&leave));
}
