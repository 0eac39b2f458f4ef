//! The dashboard in a real browser: Debian's chromium, headless, driven
//! through the DevTools protocol (a small client over a WebSocket). Three
//! `raftkv` processes serve; the page must show the three members and the
//! leader the cluster agrees on, and its charts must take new samples, with
//! writes counted, while a load runs. The test saves a screenshot
//! (`target/tmp/dashboard.png`) and prints its path.
//!
//! Chromium is found at `RAFTKV_CHROMIUM` or `/usr/bin/chromium` (CI
//! installs Debian's `chromium`); without it the test fails and says so.

mod common;

use std::io::{BufRead, BufReader};
use std::net::TcpStream;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use base64::Engine;
use common::*;
use serde_json::{json, Value};

/// Every wait in this test ends by this bound (then the test fails).
const BOUND: Duration = Duration::from_secs(90);

/// A headless chromium this test started; killed when dropped.
struct Browser {
    child: Child,
    /// host:port of its DevTools endpoint.
    devtools: String,
    _profile: tempfile::TempDir,
}

impl Browser {
    fn start() -> Browser {
        let binary = std::env::var("RAFTKV_CHROMIUM").unwrap_or_else(|_| "/usr/bin/chromium".to_string());
        assert!(
            std::path::Path::new(&binary).exists(),
            "no chromium at {binary}: install Debian's chromium (apt-get install chromium) or set RAFTKV_CHROMIUM"
        );
        let profile = tempfile::TempDir::new().unwrap();
        let mut child = Command::new(&binary)
            .args([
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--disable-quic",
                "--no-first-run",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
                "--disable-extensions",
                "--window-size=1400,1000",
                "--remote-debugging-address=127.0.0.1",
                "--remote-debugging-port=0",
                &format!("--user-data-dir={}", profile.path().display()),
                "about:blank",
            ])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("starting {binary}: {e}"));
        // "DevTools listening on ws://127.0.0.1:PORT/devtools/browser/ID"
        let stderr = child.stderr.take().unwrap();
        let (found, listening) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let mut sent = false;
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if let Some(url) = line.split("DevTools listening on ws://").nth(1) {
                    if !sent {
                        let _ = found.send(url.split('/').next().unwrap_or_default().to_string());
                        sent = true;
                    }
                }
            }
        });
        let devtools = listening.recv_timeout(BOUND).expect("chromium never said where DevTools listens");
        Browser { child, devtools, _profile: profile }
    }

    /// The WebSocket address of the browser's first page.
    fn page_socket(&self) -> String {
        let deadline = Instant::now() + BOUND;
        loop {
            if let Some(body) = http_get(&self.devtools, "/json/list") {
                if let Ok(Value::Array(targets)) = serde_json::from_str::<Value>(&body) {
                    let page = targets.iter().find(|t| t["type"] == "page");
                    if let Some(url) = page.and_then(|p| p["webSocketDebuggerUrl"].as_str()) {
                        return url.to_string();
                    }
                }
            }
            assert!(Instant::now() < deadline, "chromium lists no page at {}", self.devtools);
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

/// The body of a plain HTTP GET, if it answered (DevTools' server keeps
/// the connection open: the body is as long as its Content-Length).
fn http_get(address: &str, path: &str) -> Option<String> {
    use std::io::{Read, Write};
    let mut stream = TcpStream::connect(address).ok()?;
    stream.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    write!(stream, "GET {path} HTTP/1.1\r\nHost: {address}\r\n\r\n").ok()?;
    let mut answer = Vec::new();
    let mut buffer = [0u8; 4096];
    loop {
        let text = String::from_utf8_lossy(&answer).to_string();
        if let Some((head, body)) = text.split_once("\r\n\r\n") {
            let length = head.lines().find_map(|line| {
                let (name, value) = line.split_once(':')?;
                name.eq_ignore_ascii_case("content-length").then(|| value.trim().parse::<usize>().ok())?
            })?;
            if body.len() >= length {
                return Some(body[..length].to_string());
            }
        }
        let read = stream.read(&mut buffer).ok()?;
        if read == 0 {
            return None;
        }
        answer.extend_from_slice(&buffer[..read]);
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A DevTools protocol session with one page: commands and their results.
struct Page {
    socket: tungstenite::WebSocket<TcpStream>,
    next_id: u64,
}

impl Page {
    fn connect(url: &str) -> Page {
        let address = url.trim_start_matches("ws://").split('/').next().unwrap().to_string();
        let stream = TcpStream::connect(&address).unwrap();
        stream.set_read_timeout(Some(BOUND)).unwrap();
        let (socket, _) = tungstenite::client(url, stream).expect("the DevTools WebSocket handshake");
        Page { socket, next_id: 1 }
    }

    /// Sends `method` and waits for its result (events in between are skipped).
    fn call(&mut self, method: &str, params: Value) -> Value {
        let id = self.next_id;
        self.next_id += 1;
        let message = json!({"id": id, "method": method, "params": params}).to_string();
        self.socket.send(tungstenite::Message::text(message)).unwrap();
        loop {
            let message = self.socket.read().unwrap_or_else(|e| panic!("{method}: {e}"));
            let tungstenite::Message::Text(text) = message else { continue };
            let answer: Value = serde_json::from_str(text.as_str()).unwrap();
            if answer["id"] == id {
                assert!(answer["error"].is_null(), "{method}: {answer}");
                return answer["result"].clone();
            }
        }
    }

    /// The value of a JavaScript expression in the page.
    fn evaluate(&mut self, expression: &str) -> Value {
        let result = self.call("Runtime.evaluate", json!({"expression": expression, "returnByValue": true}));
        assert!(result["exceptionDetails"].is_null(), "{expression}: {result}");
        result["result"]["value"].clone()
    }
}

/// What the page shows, read from its DOM and its chart data.
const READ_PAGE: &str = r##"(() => {
  if (!document.getElementById("samples")) return { samples: null, loading: document.URL };
  const d = window.raftkvDashboard;
  return {
    samples: d ? d.samples : null,
    shown: Number(document.getElementById("samples").textContent),
    points: d ? d.data[1].length : null,
    writes: d && d.last ? d.last.writes : null,
    summary: document.getElementById("summary").textContent,
    rows: [...document.querySelectorAll("#members tbody tr")].map(row => ({
      leader: row.classList.contains("leader"),
      cells: [...row.cells].map(c => c.textContent),
    })),
    charts: document.querySelectorAll(".uplot canvas").length,
    problem: document.getElementById("problem").hidden ? null : document.getElementById("problem").textContent,
  };
})()"##;

#[test]
fn the_dashboard_shows_the_members_and_the_leader_and_its_charts_move_under_load() {
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let root = tempfile::TempDir::new().unwrap();
    let nodes = Arc::new(runtime.block_on(three_node_cluster(root.path())));
    let leader = runtime.block_on(leader_of(&nodes.iter().collect::<Vec<_>>()));

    let browser = Browser::start();
    let mut page = Page::connect(&browser.page_socket());
    page.call("Page.enable", json!({}));
    // Viewed from a follower: the page shows the whole cluster from any node.
    let viewed = nodes.iter().find(|n| n.id != leader).unwrap();
    page.call("Page.navigate", json!({"url": format!("http://{}/ui", viewed.http)}));

    // A load on every node: writes, and reads.
    let stop = Arc::new(AtomicBool::new(false));
    let written = Arc::new(AtomicU64::new(0));
    let load = {
        let (nodes, stop, written) = (nodes.clone(), stop.clone(), written.clone());
        runtime.spawn(async move {
            let mut i = 0usize;
            while !stop.load(Ordering::SeqCst) {
                let node = &nodes[i % 3];
                if set(node, &format!("k{}", i % 500), &format!("v{i}")).await.status().is_success() {
                    written.fetch_add(1, Ordering::SeqCst);
                }
                let _ = get_json(node, &format!("k{}", i % 500), "linearizable").await;
                i += 1;
            }
        })
    };

    // Wait (bounded) until the page has drawn several samples with writes
    // in them; remember a reading along the way to see the count grow.
    let deadline = Instant::now() + BOUND;
    let mut first: Option<Value> = None;
    let mut busiest = 0.0f64;
    let shown = loop {
        let shown = page.evaluate(READ_PAGE);
        if let Some(writes) = shown["writes"].as_f64() {
            busiest = busiest.max(writes);
        }
        let samples = shown["samples"].as_u64().unwrap_or(0);
        if first.is_none() && samples >= 1 {
            first = Some(shown.clone());
        }
        if samples >= 6 && busiest > 0.0 {
            break shown;
        }
        assert!(Instant::now() < deadline, "the page took no samples with writes in time: {shown}");
        std::thread::sleep(Duration::from_millis(250));
    };

    // A screenshot of the page under load, for people.
    let shot = page.call("Page.captureScreenshot", json!({"format": "png"}));
    let png = base64::engine::general_purpose::STANDARD.decode(shot["data"].as_str().unwrap()).unwrap();
    let path = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("dashboard.png");
    std::fs::write(&path, &png).unwrap();
    println!("dashboard screenshot: {} ({} bytes); the page showed {shown}", path.display(), png.len());

    stop.store(true, Ordering::SeqCst);
    runtime.block_on(load).unwrap();
    assert!(written.load(Ordering::SeqCst) > 0, "the load wrote nothing");

    // The charts moved: samples grew, each drawn, the count shown.
    let first = first.unwrap();
    assert!(shown["samples"].as_u64() > first["samples"].as_u64(), "{first} then {shown}");
    assert_eq!(shown["points"], shown["samples"], "every sample is a point of the charts");
    assert_eq!(shown["shown"], shown["samples"], "the page shows its sample count");
    assert!(shown["charts"].as_u64() >= Some(2), "two charts drawn: {shown}");
    assert!(shown["problem"].is_null(), "{shown}");

    // The three members, one of them the leader the cluster agrees on.
    let rows = shown["rows"].as_array().unwrap();
    let ids: Vec<&str> = rows.iter().map(|r| r["cells"][0].as_str().unwrap()).collect();
    assert_eq!(ids, ["1", "2", "3"], "{shown}");
    let leaders: Vec<&str> =
        rows.iter().filter(|r| r["leader"] == true).map(|r| r["cells"][0].as_str().unwrap()).collect();
    assert_eq!(leaders, [leader.to_string().as_str()], "{shown}");
    for row in rows {
        let role = row["cells"][1].as_str().unwrap();
        let expected = if row["leader"] == true { "leader" } else { "follower" };
        assert_eq!(role, expected, "{row}");
        assert_eq!(row["cells"][3], "serving", "{row}");
    }
    let summary = shown["summary"].as_str().unwrap();
    assert!(summary.contains(&format!("leader: node {leader}")), "{summary}");
    assert!(summary.contains(&format!("viewed from node {}", viewed.id)), "{summary}");
    drop(browser);
}
