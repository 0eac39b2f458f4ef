//! The library's write path without HTTP: three `Raft` nodes in one process
//! over the in-memory transport, with memory stores or the durable ones (WAL,
//! stable file, snapshot dir in a temporary directory), and N concurrent
//! proposers on the leader, each proposing 16-byte commands back to back.
//! Prints entries committed and applied per second and the latency of one
//! `apply` (HDR histogram), one JSON line per setting.
//!
//! `cargo run --release -p raftkv-raft --example raft_bench -- [--stores mem|durable|both] [--seconds S] [--proposers 1,64,256]`

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use hdrhistogram::Histogram;
use raftkv_raft::storage::{
    FileSnapshotStore, FileStableStore, LogStore, MemLogStore, MemSnapshotStore, MemStableStore, SnapshotStore,
    StableStore, Wal, WalOptions,
};
use raftkv_raft::transport::MemNetwork;
use raftkv_raft::{Config, Entry, NodeId, Raft, SnapshotSource, StateMachine};

/// Counts applied entries; snapshots hold the count.
struct Counter(u64);

struct Count(u64);

impl SnapshotSource for Count {
    fn write_to(self: Box<Self>, out: &mut dyn std::io::Write) -> std::io::Result<()> {
        out.write_all(&self.0.to_le_bytes())
    }
}

impl StateMachine for Counter {
    fn apply(&mut self, entries: &[Entry]) -> Vec<Bytes> {
        self.0 += entries.len() as u64;
        vec![Bytes::new(); entries.len()]
    }

    fn snapshot(&mut self) -> Box<dyn SnapshotSource> {
        Box::new(Count(self.0))
    }

    fn restore(&mut self, snapshot: &mut dyn std::io::Read) -> std::io::Result<()> {
        let mut bytes = [0; 8];
        snapshot.read_exact(&mut bytes)?;
        self.0 = u64::from_le_bytes(bytes);
        Ok(())
    }
}

/// Microseconds up to a minute at 1% precision: small enough (a few KiB)
/// that 256 proposers' histograms stay in cache, which a full-range one at
/// 0.1% does not, and the bench measures raft rather than its own misses.
fn latency_histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 60_000_000, 2).expect("1 <= 60,000,000 at 2 significant digits are valid bounds")
}

type Stores = (Arc<dyn LogStore>, Arc<dyn StableStore>, Arc<dyn SnapshotStore>);

fn stores(durable: Option<&std::path::Path>) -> Result<Stores, String> {
    let Some(dir) = durable else {
        return Ok((Arc::new(MemLogStore::new()), Arc::new(MemStableStore::new()), Arc::new(MemSnapshotStore::new(2))));
    };
    let fail = |e: raftkv_raft::storage::StorageError| e.to_string();
    Ok((
        Arc::new(Wal::open(dir.join("log"), WalOptions::default()).map_err(fail)?),
        Arc::new(FileStableStore::open(dir.join("stable")).map_err(fail)?),
        Arc::new(FileSnapshotStore::open(dir.join("snapshots"), 2).map_err(fail)?),
    ))
}

async fn run(durable: bool, proposers: usize, seconds: u64) -> Result<serde_json::Value, String> {
    let network = MemNetwork::new();
    let dir = tempfile::TempDir::new().map_err(|e| e.to_string())?;
    let mut nodes = Vec::new();
    for id in 1..=3u64 {
        let path = dir.path().join(id.to_string());
        let (log, stable, snapshots) = stores(durable.then_some(path.as_path()))?;
        Raft::bootstrap_cluster(log.as_ref(), stable.as_ref(), (1..=3).map(NodeId)).map_err(|e| e.to_string())?;
        let transport = Arc::new(network.transport(NodeId(id)));
        let raft = Raft::new(Config::fast(NodeId(id)), Counter(0), log, stable, snapshots, transport)
            .map_err(|e| e.to_string())?;
        network.register(NodeId(id), raft.inbox());
        nodes.push(raft);
    }
    let mut leader = None;
    for _ in 0..500 {
        leader = nodes.iter().find(|n| n.leader().leader == Some(n.id())).cloned();
        if leader.is_some() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let leader = leader.ok_or("no leader within 5 s")?;
    let stop = Arc::new(AtomicBool::new(false));
    let mut tasks = Vec::new();
    for p in 0..proposers {
        let (leader, stop) = (leader.clone(), stop.clone());
        tasks.push(tokio::spawn(async move {
            let mut latency = latency_histogram();
            let (mut ok, mut failed) = (0u64, 0u64);
            let command = Bytes::from(format!("proposer-{p:07}"));
            while !stop.load(Ordering::Relaxed) {
                let started = Instant::now();
                match leader.apply(command.clone(), Duration::from_secs(10)).await {
                    Ok(_) => {
                        ok += 1;
                        latency.saturating_record(started.elapsed().as_micros() as u64);
                    }
                    Err(_) => failed += 1,
                }
            }
            (ok, failed, latency)
        }));
    }
    let started = Instant::now();
    tokio::time::sleep(Duration::from_secs(seconds)).await;
    stop.store(true, Ordering::Relaxed);
    let mut latency = latency_histogram();
    let (mut ok, mut failed) = (0, 0);
    for task in tasks {
        let (o, f, h) = task.await.map_err(|e| e.to_string())?;
        ok += o;
        failed += f;
        latency.add(h).map_err(|e| e.to_string())?;
    }
    let elapsed = started.elapsed().as_secs_f64();
    for node in &nodes {
        node.shutdown().await;
    }
    let ms = |q: f64| latency.value_at_quantile(q) as f64 / 1000.0;
    Ok(serde_json::json!({
        "stores": if durable { "durable" } else { "memory" },
        "proposers": proposers,
        "seconds": (elapsed * 100.0).round() / 100.0,
        "entries_per_s": (ok as f64 / elapsed).round(),
        "failed": failed,
        "p50_ms": ms(0.5),
        "p99_ms": ms(0.99),
        "p999_ms": ms(0.999),
        "max_ms": latency.max() as f64 / 1000.0,
    }))
}

#[tokio::main]
async fn main() {
    let args: Vec<String> = std::env::args().collect();
    let value = |flag: &str| args.iter().position(|a| a == flag).and_then(|i| args.get(i + 1)).cloned();
    let seconds = value("--seconds").and_then(|s| s.parse().ok()).unwrap_or(5);
    let proposers: Vec<usize> = value("--proposers")
        .unwrap_or_else(|| "1,64,256".into())
        .split(',')
        .filter_map(|p| p.trim().parse().ok())
        .collect();
    let kinds = match value("--stores").as_deref() {
        Some("mem") => vec![false],
        Some("durable") => vec![true],
        _ => vec![false, true],
    };
    for durable in kinds {
        for &n in &proposers {
            match run(durable, n, seconds).await {
                Ok(line) => println!("{line}"),
                Err(error) => {
                    eprintln!("raft_bench: {error}");
                    std::process::exit(1);
                }
            }
        }
    }
}
