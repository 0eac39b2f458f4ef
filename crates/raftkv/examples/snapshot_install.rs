//! Measures log compaction and InstallSnapshot with real agent processes:
//!
//! 1. one node is loaded with N keys (100-byte values) by individual writes,
//!    with automatic snapshots held back;
//! 2. the data dir is measured, a snapshot is taken (`POST
//!    /api/maintain/snapshot`, default `trailing_logs`), and measured again;
//! 3. a new node joins: it is behind the leader's first log index, so it gets
//!    the snapshot in chunks. The time until it applied the leader's index and
//!    both processes' resident memory (sampled every 10 ms) are reported, with
//!    the apply pause of each capture from the leader's log.
//!
//! `cargo build --release -p raftkv && cargo run --release -p raftkv --example snapshot_install -- [KEYS]`
//! (default 1,000,000; the agent binary is looked for next to the example's directory).

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::{json, Value};

struct Agent {
    child: Child,
    http: String,
    log: PathBuf,
}

impl Drop for Agent {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).map(|a| a.port()).unwrap_or(0)
}

fn start(bin: &Path, id: u64, root: &Path, extra: &[&str]) -> Result<(Agent, String), String> {
    let (http, raft) = (format!("127.0.0.1:{}", port()), format!("127.0.0.1:{}", port()));
    let log = root.join(format!("node{id}.log"));
    let stderr = std::fs::File::create(&log).map_err(|e| e.to_string())?;
    let child = Command::new(bin)
        .args(["agent", "--id", &id.to_string(), "--http-addr", &http, "--raft-addr", &raft, "--data-dir"])
        .arg(root.join(format!("node{id}")))
        .args(extra)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(stderr)
        .spawn()
        .map_err(|e| format!("cannot start {}: {e}", bin.display()))?;
    Ok((Agent { child, http, log }, raft))
}

fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}

fn dir_bytes(path: &Path) -> u64 {
    let Ok(entries) = std::fs::read_dir(path) else { return 0 };
    entries
        .flatten()
        .map(|e| match e.metadata() {
            Ok(m) if m.is_dir() => dir_bytes(&e.path()),
            // Allocated blocks, as `du` counts them (preallocated WAL space included).
            Ok(m) => std::os::unix::fs::MetadataExt::blocks(&m) * 512,
            Err(_) => 0,
        })
        .sum()
}

async fn stats(http: &reqwest::Client, addr: &str) -> Option<Value> {
    http.get(format!("http://{addr}/api/maintain/stats")).send().await.ok()?.json().await.ok()
}

fn field(stats: &Value, name: &str) -> u64 {
    stats[name].as_str().and_then(|s| s.parse().ok()).unwrap_or(0)
}

async fn wait_for(what: &str, seconds: u64, mut check: impl AsyncFnMut() -> bool) -> Result<(), String> {
    let deadline = Instant::now() + Duration::from_secs(seconds);
    while Instant::now() < deadline {
        if check().await {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    Err(format!("timed out waiting for {what}"))
}

/// Samples the peak resident memory of `pids` until `stop`.
fn sample_peaks(pids: Vec<u32>, stop: Arc<AtomicBool>) -> std::thread::JoinHandle<Vec<u64>> {
    std::thread::spawn(move || {
        let mut peaks = vec![0; pids.len()];
        while !stop.load(Ordering::SeqCst) {
            for (peak, pid) in peaks.iter_mut().zip(&pids) {
                *peak = (*peak).max(rss_kib(*pid));
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        peaks
    })
}

async fn run(keys: u64) -> Result<Value, String> {
    let bin = std::env::current_exe()
        .map_err(|e| e.to_string())?
        .parent()
        .and_then(|examples| examples.parent())
        .map(|release| release.join("raftkv"))
        .ok_or("cannot locate target/release")?;
    if !bin.exists() {
        return Err(format!("{} is missing: run `cargo build --release -p raftkv` first", bin.display()));
    }
    let root = tempfile::TempDir::new().map_err(|e| e.to_string())?;
    let builder = reqwest::Client::builder().timeout(Duration::from_secs(600));
    let http = raftkv::http_client::ClientSecurity::default().apply(builder)?.build().map_err(|e| e.to_string())?;

    let (leader, leader_raft) = start(&bin, 1, root.path(), &["--bootstrap"])?;
    wait_for("a leader", 30, async || stats(&http, &leader.http).await.is_some_and(|s| s["state"] == "Leader")).await?;
    let hold = json!({"snapshot_threshold": 1u64 << 40, "snapshot_log_bytes": 1u64 << 40});
    http.post(format!("http://{}/api/maintain/config", leader.http))
        .json(&hold)
        .send()
        .await
        .map_err(|e| e.to_string())?;

    // 1. Load.
    let started = Instant::now();
    let next = Arc::new(AtomicU64::new(0));
    let value = "v".repeat(100);
    let mut writers = Vec::new();
    for _ in 0..64 {
        let (http, next, value, addr) = (http.clone(), next.clone(), value.clone(), leader.http.clone());
        writers.push(tokio::spawn(async move {
            loop {
                let i = next.fetch_add(1, Ordering::SeqCst);
                if i >= keys {
                    return Ok::<(), String>(());
                }
                let body = json!({"key": format!("key-{i:09}"), "value": value});
                let response = http.post(format!("http://{addr}/api/v1/set")).json(&body).send().await;
                match response {
                    Ok(r) if r.status().is_success() => {}
                    Ok(r) => return Err(format!("write {i}: HTTP {}", r.status())),
                    Err(e) => return Err(format!("write {i}: {e}")),
                }
            }
        }));
    }
    for writer in writers {
        writer.await.map_err(|e| e.to_string())??;
    }
    let load_s = started.elapsed().as_secs_f64();
    let data_dir = root.path().join("node1");
    let before = dir_bytes(&data_dir);
    let log_before = dir_bytes(&data_dir.join("log"));

    // 2. Compact with the default trailing_logs.
    let restore = json!({"snapshot_threshold": 8192, "trailing_logs": 10240, "snapshot_log_bytes": 64u64 << 20});
    http.post(format!("http://{}/api/maintain/config", leader.http))
        .json(&restore)
        .send()
        .await
        .map_err(|e| e.to_string())?;
    let snapshot_started = Instant::now();
    let taken: Value = http
        .post(format!("http://{}/api/maintain/snapshot", leader.http))
        .send()
        .await
        .map_err(|e| e.to_string())?
        .json()
        .await
        .map_err(|e| e.to_string())?;
    let snapshot_s = snapshot_started.elapsed().as_secs_f64();
    // The purge runs on the log writer after the answer.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let after = dir_bytes(&data_dir);
    let log_after = dir_bytes(&data_dir.join("log"));
    let snapshots_after = dir_bytes(&data_dir.join("snapshots"));
    let leader_stats = stats(&http, &leader.http).await.ok_or("leader stats")?;
    let target = field(&leader_stats, "commit_index");

    // 3. A new node joins and installs the snapshot.
    let leader_rss_before = rss_kib(leader.child.id());
    let install_started = Instant::now();
    let (follower, _) = start(&bin, 2, root.path(), &["--join", &leader_raft])?;
    let stop = Arc::new(AtomicBool::new(false));
    let sampler = sample_peaks(vec![leader.child.id(), follower.child.id()], stop.clone());
    let caught_up = wait_for("the new node to catch up", 600, async || {
        stats(&http, &follower.http).await.is_some_and(|s| field(&s, "applied_index") >= target)
    })
    .await;
    let install_s = install_started.elapsed().as_secs_f64();
    stop.store(true, Ordering::SeqCst);
    let peaks = sampler.join().map_err(|_| "sampler panicked")?;
    caught_up?;
    let follower_rss_after = rss_kib(follower.child.id());

    let leader_log = std::fs::read_to_string(&leader.log).unwrap_or_default();
    let pauses: Vec<&str> = leader_log
        .lines()
        .filter(|l| l.contains("captured for a snapshot"))
        .filter_map(|l| l.split("pause=").nth(1))
        .collect();
    let mb = |b: u64| (b as f64 / 1e6 * 10.0).round() / 10.0;
    Ok(json!({
        "keys": keys,
        "load_s": (load_s * 10.0).round() / 10.0,
        "data_dir_mb_before_compaction": mb(before),
        "log_mb_before_compaction": mb(log_before),
        "snapshot_s": (snapshot_s * 100.0).round() / 100.0,
        "snapshot": taken,
        "data_dir_mb_after_compaction": mb(after),
        "log_mb_after_compaction": mb(log_after),
        "snapshots_mb_after_compaction": mb(snapshots_after),
        "capture_pauses": pauses,
        "install_s": (install_s * 100.0).round() / 100.0,
        "leader_rss_mb_before_install": mb(leader_rss_before * 1024),
        "leader_rss_mb_peak_during_install": mb(peaks[0] * 1024),
        "follower_rss_mb_peak_during_install": mb(peaks[1] * 1024),
        "follower_rss_mb_after_install": mb(follower_rss_after * 1024),
    }))
}

#[tokio::main]
async fn main() {
    let keys: u64 = std::env::args().nth(1).and_then(|a| a.parse().ok()).unwrap_or(1_000_000);
    match run(keys).await {
        Ok(summary) => println!("{summary}"),
        Err(error) => {
            eprintln!("snapshot_install: {error}");
            std::process::exit(1);
        }
    }
}
