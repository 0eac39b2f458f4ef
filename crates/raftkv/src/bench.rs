//! `raftkv bench`: a closed-loop load generator over keep-alive HTTP. Each
//! client sends one request, waits for the answer, sends the next; latencies go
//! into an HDR histogram. A fuller tool (progress bar, etcd as a target) is
//! planned; this one already gives throughput and latency percentiles.

use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use serde_json::json;

#[derive(Clone, Debug)]
pub struct BenchConfig {
    pub targets: Vec<String>,
    pub clients: usize,
    pub duration: Duration,
    pub keys: u64,
    pub value_size: usize,
    /// Percent of operations that are writes; the rest are reads.
    pub write_percent: u64,
    pub consistency: String,
}

#[derive(Debug)]
pub struct BenchResult {
    pub ops: u64,
    pub errors: u64,
    pub elapsed: Duration,
    pub latency_us: Histogram<u64>,
}

impl BenchResult {
    pub fn to_json(&self, config: &BenchConfig) -> serde_json::Value {
        let q = |quantile: f64| self.latency_us.value_at_quantile(quantile) as f64 / 1000.0;
        json!({
            "clients": config.clients,
            "duration_s": self.elapsed.as_secs_f64(),
            "write_percent": config.write_percent,
            "consistency": config.consistency,
            "ops": self.ops,
            "errors": self.errors,
            "ops_per_s": (self.ops as f64 / self.elapsed.as_secs_f64()).round(),
            "p50_ms": q(0.5),
            "p90_ms": q(0.9),
            "p99_ms": q(0.99),
            "p999_ms": q(0.999),
            "max_ms": self.latency_us.max() as f64 / 1000.0,
        })
    }
}

pub async fn run(config: &BenchConfig) -> Result<BenchResult, String> {
    if config.targets.is_empty() || config.clients == 0 {
        return Err("bench needs at least one --target and one client".to_string());
    }
    let http = reqwest::Client::builder()
        .pool_max_idle_per_host(config.clients)
        .timeout(Duration::from_secs(30))
        .build()
        .map_err(|e| format!("cannot build the HTTP client: {e}"))?;
    let value = "v".repeat(config.value_size);
    let start = Instant::now();
    let deadline = start + config.duration;
    let mut tasks = Vec::new();
    for client in 0..config.clients {
        let http = http.clone();
        let target = config.targets[client % config.targets.len()].clone();
        let config = config.clone();
        let value = value.clone();
        tasks.push(tokio::spawn(async move {
            let mut histogram = Histogram::<u64>::new(3).map_err(|e| e.to_string())?;
            let (mut ops, mut errors) = (0u64, 0u64);
            // Per-client choices, reproducible from the client number.
            let mut rng = raft_core::rng::Rng::new(client as u64 + 1);
            while Instant::now() < deadline {
                let key = format!("key-{}", rng.next_u64() % config.keys.max(1));
                let write = rng.next_u64() % 100 < config.write_percent;
                let sent = Instant::now();
                let result = if write {
                    http.post(format!("http://{target}/api/v1/set"))
                        .json(&json!({"key": key, "value": value}))
                        .send()
                        .await
                } else {
                    http.get(format!("http://{target}/api/v1/get?key={key}&consistency={}", config.consistency))
                        .send()
                        .await
                };
                let ok = match result {
                    // A missing key is a successful read.
                    Ok(response) => response.status().is_success() || response.status().as_u16() == 404,
                    Err(_) => false,
                };
                let micros = sent.elapsed().as_micros() as u64;
                if ok {
                    ops += 1;
                    histogram.record(micros.max(1)).map_err(|e| e.to_string())?;
                } else {
                    errors += 1;
                }
            }
            Ok::<_, String>((ops, errors, histogram))
        }));
    }
    let mut result = BenchResult {
        ops: 0,
        errors: 0,
        elapsed: Duration::ZERO,
        latency_us: Histogram::new(3).map_err(|e| e.to_string())?,
    };
    for task in tasks {
        let (ops, errors, histogram) = task.await.map_err(|e| format!("client task failed: {e}"))??;
        result.ops += ops;
        result.errors += errors;
        result.latency_us.add(histogram).map_err(|e| e.to_string())?;
    }
    result.elapsed = start.elapsed();
    Ok(result)
}
