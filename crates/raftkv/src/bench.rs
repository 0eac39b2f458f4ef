//! `raftkv bench`: a closed-loop load generator. Each client sends one request,
//! waits for the answer, sends the next; latencies go into an HDR histogram.
//! It drives raftkv over keep-alive HTTP or etcd over its v3 gRPC API with the
//! same workload (keys, value size, write:read:cas mix, consistency), so both
//! systems meet the same load generator.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use serde_json::json;

/// etcd's v3 KV API (the slice in `proto/etcd_kv.proto`).
pub mod etcd {
    tonic::include_proto!("etcdserverpb");
}

use etcd::kv_client::KvClient;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum System {
    Raftkv,
    Etcd,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Stop {
    After(Duration),
    Requests(u64),
}

/// Relative weights of writes, reads and compare-and-swaps.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Mix {
    pub write: u64,
    pub read: u64,
    pub cas: u64,
}

impl std::str::FromStr for Mix {
    type Err = String;

    /// `write:read:cas` weights, e.g. `100:0:0` or `10:90:0`.
    fn from_str(text: &str) -> Result<Mix, String> {
        let parts: Vec<u64> = text
            .split(':')
            .map(|p| p.trim().parse::<u64>().map_err(|_| format!("--mix {text:?}: weights must be integers")))
            .collect::<Result<_, _>>()?;
        let [write, read, cas] = parts[..] else {
            return Err(format!("--mix {text:?}: expected write:read:cas, e.g. 90:10:0"));
        };
        if write + read + cas == 0 {
            return Err(format!("--mix {text:?}: at least one weight must be positive"));
        }
        Ok(Mix { write, read, cas })
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Op {
    Write,
    Read,
    Cas,
}

impl Mix {
    fn pick(&self, roll: u64) -> Op {
        let roll = roll % (self.write + self.read + self.cas);
        if roll < self.write {
            Op::Write
        } else if roll < self.write + self.read {
            Op::Read
        } else {
            Op::Cas
        }
    }
}

#[derive(Clone, Debug)]
pub struct BenchConfig {
    pub system: System,
    /// raftkv: HTTP addresses; etcd: client URLs or host:port.
    pub targets: Vec<String>,
    pub clients: usize,
    pub stop: Stop,
    pub keys: u64,
    pub value_size: usize,
    pub mix: Mix,
    /// `linearizable`, `lease` (raftkv only) or `stale` (etcd: serializable).
    pub consistency: String,
    /// Draw a progress bar (on a terminal).
    pub progress: bool,
    /// raftkv: TLS material and token.
    pub security: crate::http_client::ClientSecurity,
}

#[derive(Debug)]
pub struct BenchResult {
    pub ops: u64,
    pub errors: u64,
    /// Errors by HTTP status (raftkv; 0: no answer at all), e.g. 503 (not
    /// done, retry) against 504 (outcome unknown) around a failover.
    pub error_statuses: BTreeMap<u16, u64>,
    pub elapsed: Duration,
    pub latency_us: Histogram<u64>,
}

impl BenchResult {
    pub fn to_json(&self, config: &BenchConfig) -> serde_json::Value {
        let q = |quantile: f64| self.latency_us.value_at_quantile(quantile) as f64 / 1000.0;
        json!({
            "system": match config.system { System::Raftkv => "raftkv", System::Etcd => "etcd" },
            "clients": config.clients,
            "duration_s": (self.elapsed.as_secs_f64() * 1000.0).round() / 1000.0,
            "mix": format!("{}:{}:{}", config.mix.write, config.mix.read, config.mix.cas),
            "consistency": config.consistency,
            "ops": self.ops,
            "errors": self.errors,
            "error_statuses": self.error_statuses.iter().map(|(s, n)| (s.to_string(), json!(n))).collect::<serde_json::Map<_, _>>(),
            "ops_per_s": (self.ops as f64 / self.elapsed.as_secs_f64()).round(),
            "p50_ms": q(0.5),
            "p90_ms": q(0.9),
            "p99_ms": q(0.99),
            "p999_ms": q(0.999),
            "max_ms": self.latency_us.max() as f64 / 1000.0,
        })
    }
}

/// One client's connection to the system under test.
enum Conn {
    Http { http: reqwest::Client, base: String, value: String, consistency: String },
    Etcd { client: KvClient<tonic::transport::Channel>, value: bytes::Bytes, serializable: bool },
}

impl Conn {
    async fn open(config: &BenchConfig, target: &str, http: &reqwest::Client) -> Result<Conn, String> {
        let value = "v".repeat(config.value_size);
        match config.system {
            System::Raftkv => Ok(Conn::Http {
                http: http.clone(),
                base: config.security.base_url(target),
                value,
                consistency: config.consistency.clone(),
            }),
            System::Etcd => {
                let endpoint = if target.contains("://") { target.to_string() } else { format!("http://{target}") };
                let channel = tonic::transport::Endpoint::from_shared(endpoint)
                    .map_err(|e| format!("bad etcd address {target}: {e}"))?
                    .tcp_nodelay(true)
                    .connect()
                    .await
                    .map_err(|e| format!("cannot connect to etcd at {target}: {e}"))?;
                let serializable = match config.consistency.as_str() {
                    "linearizable" => false,
                    "stale" => true,
                    other => return Err(format!("etcd has no {other:?} reads (use linearizable or stale)")),
                };
                Ok(Conn::Etcd { client: KvClient::new(channel), value: bytes::Bytes::from(value), serializable })
            }
        }
    }

    /// Runs one operation; `Ok(())` when the system answered as it should
    /// (a missing key or a failed compare is an answer, not an error), else
    /// the HTTP status of the error (0: no answer; always 0 for etcd).
    async fn run(&mut self, op: Op, key: &str) -> Result<(), u16> {
        match self {
            Conn::Http { http, base, value, consistency } => {
                let sent = match op {
                    Op::Write => {
                        http.post(format!("{base}/api/v1/set")).json(&json!({"key": key, "value": value})).send()
                    }
                    Op::Read => http.get(format!("{base}/api/v1/get?key={key}&consistency={consistency}")).send(),
                    Op::Cas => http
                        .post(format!("{base}/api/v1/cas"))
                        .json(&json!({"key": key, "expected": value, "value": value}))
                        .send(),
                };
                match sent.await {
                    Ok(response) => {
                        let status = response.status().as_u16();
                        // Drain the body so the connection is reused.
                        let _ = response.bytes().await;
                        let answered =
                            (200..300).contains(&status) || status == 404 || (op == Op::Cas && status == 409);
                        if answered {
                            Ok(())
                        } else {
                            Err(status)
                        }
                    }
                    Err(_) => Err(0),
                }
            }
            Conn::Etcd { client, value, serializable } => {
                let key = bytes::Bytes::copy_from_slice(key.as_bytes());
                let put = || etcd::PutRequest { key: key.clone(), value: value.clone() };
                let ok = match op {
                    Op::Write => client.put(put()).await.is_ok(),
                    Op::Read => {
                        let range =
                            etcd::RangeRequest { key: key.clone(), serializable: *serializable, ..Default::default() };
                        client.range(range).await.is_ok()
                    }
                    Op::Cas => {
                        let compare = etcd::Compare {
                            result: etcd::compare::CompareResult::Equal as i32,
                            target: etcd::compare::CompareTarget::Value as i32,
                            key: key.clone(),
                            target_union: Some(etcd::compare::TargetUnion::Value(value.clone())),
                        };
                        let success = etcd::RequestOp { request: Some(etcd::request_op::Request::RequestPut(put())) };
                        let txn = etcd::TxnRequest { compare: vec![compare], success: vec![success], failure: vec![] };
                        client.txn(txn).await.is_ok()
                    }
                };
                if ok {
                    Ok(())
                } else {
                    Err(0)
                }
            }
        }
    }
}

pub async fn run(config: &BenchConfig) -> Result<BenchResult, String> {
    if config.targets.is_empty() || config.clients == 0 {
        return Err("bench needs at least one --target and one client".to_string());
    }
    let http = config
        .security
        .apply(
            reqwest::Client::builder()
                .pool_max_idle_per_host(config.clients)
                .timeout(Duration::from_secs(30))
                .tcp_nodelay(true),
        )?
        .build()
        .map_err(|e| format!("cannot build the HTTP client: {e}"))?;
    let mut conns = Vec::with_capacity(config.clients);
    for client in 0..config.clients {
        conns.push(Conn::open(config, &config.targets[client % config.targets.len()], &http).await?);
    }

    let done = Arc::new(AtomicU64::new(0));
    let issued = Arc::new(AtomicU64::new(0));
    let start = Instant::now();
    let deadline = match config.stop {
        Stop::After(duration) => Some(start + duration),
        Stop::Requests(_) => None,
    };
    let limit = match config.stop {
        Stop::Requests(n) => n,
        Stop::After(_) => u64::MAX,
    };
    let bar = config.progress.then(|| progress_bar(config.stop));
    let ticker = bar.clone().map(|bar| {
        let (done, stop) = (done.clone(), config.stop);
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(Duration::from_millis(200)).await;
                let count = done.load(Ordering::Relaxed);
                // A timed run counts seconds; a counted one, requests.
                bar.set_position(match stop {
                    Stop::After(_) => start.elapsed().as_secs(),
                    Stop::Requests(_) => count,
                });
                bar.set_message(format!("{count} ops"));
            }
        })
    });

    let mut tasks = Vec::new();
    for (client, mut conn) in conns.into_iter().enumerate() {
        let (config, done, issued) = (config.clone(), done.clone(), issued.clone());
        tasks.push(tokio::spawn(async move {
            let mut histogram = Histogram::<u64>::new(3).map_err(|e| e.to_string())?;
            let (mut ops, mut errors) = (0u64, BTreeMap::<u16, u64>::new());
            // Per-client choices, reproducible from the client number.
            let mut rng = fastrand::Rng::with_seed(client as u64 + 1);
            loop {
                if deadline.is_some_and(|d| Instant::now() >= d) || issued.fetch_add(1, Ordering::Relaxed) >= limit {
                    break;
                }
                let key = format!("key-{}", rng.u64(..config.keys.max(1)));
                let op = config.mix.pick(rng.u64(..));
                let sent = Instant::now();
                match conn.run(op, &key).await {
                    Ok(()) => {
                        ops += 1;
                        done.fetch_add(1, Ordering::Relaxed);
                        histogram.record((sent.elapsed().as_micros() as u64).max(1)).map_err(|e| e.to_string())?;
                    }
                    Err(status) => *errors.entry(status).or_default() += 1,
                }
            }
            Ok::<_, String>((ops, errors, histogram))
        }));
    }
    let mut result = BenchResult {
        ops: 0,
        errors: 0,
        error_statuses: BTreeMap::new(),
        elapsed: Duration::ZERO,
        latency_us: Histogram::new(3).map_err(|e| e.to_string())?,
    };
    for task in tasks {
        let (ops, errors, histogram) = task.await.map_err(|e| format!("client task failed: {e}"))??;
        result.ops += ops;
        for (status, count) in errors {
            result.errors += count;
            *result.error_statuses.entry(status).or_default() += count;
        }
        result.latency_us.add(histogram).map_err(|e| e.to_string())?;
    }
    result.elapsed = start.elapsed();
    if let Some(ticker) = ticker {
        ticker.abort();
    }
    if let Some(bar) = bar {
        bar.finish_and_clear();
    }
    Ok(result)
}

fn progress_bar(stop: Stop) -> indicatif::ProgressBar {
    let (length, template) = match stop {
        Stop::After(duration) => (duration.as_secs().max(1), "{bar:40} {pos}/{len} s  {msg}"),
        Stop::Requests(n) => (n, "{bar:40} {pos}/{len} requests  {msg}"),
    };
    let bar = indicatif::ProgressBar::new(length);
    if let Ok(style) = indicatif::ProgressStyle::with_template(template) {
        bar.set_style(style);
    }
    bar
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_mix_parses_and_picks_in_proportion() {
        let mix: Mix = "90:10:0".parse().unwrap();
        let writes = (0..1000).filter(|roll| mix.pick(*roll) == Op::Write).count();
        assert_eq!(writes, 900);
        assert!((0..1000).all(|roll| mix.pick(roll) != Op::Cas));
        assert!("1:2".parse::<Mix>().is_err());
        assert!("0:0:0".parse::<Mix>().is_err());
        assert!("a:1:1".parse::<Mix>().is_err());
    }
}
