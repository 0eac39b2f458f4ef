//! `GET /metrics`, in Prometheus' text format, and the HTTP API's own
//! measurements. Events (log appends, fsyncs, commits, elections,
//! snapshots, HTTP requests) go through the `metrics` facade into the
//! process's Prometheus recorder (`install`); the node's state (term, role,
//! indexes, each peer's progress on the leader, the autopilot's health) is
//! read when scraped, so it costs nothing between scrapes and never shows
//! a peer that is gone. The families are listed in docs/metrics.md.
//!
//! With `--no-metrics` no recorder is installed: the facade's calls do
//! nothing, and `/metrics` answers 404.

use std::fmt::Write as _;
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use axum::extract::{MatchedPath, State};
use axum::http::header;
use axum::response::{IntoResponse, Response};
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};

use crate::agent::Agent;
use crate::api::error::ApiError;

/// HTTP requests answered, by method, route and status.
pub const HTTP_REQUESTS: &str = "raftkv_http_requests_total";
/// From a request's arrival to its answer, by method and route.
pub const HTTP_SECONDS: &str = "raftkv_http_request_duration_seconds";

static RECORDER: OnceLock<PrometheusHandle> = OnceLock::new();

/// Histogram buckets, in seconds: 50 µs to 10 s.
const BUCKETS: &[f64] =
    &[0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0];

/// Installs the process's Prometheus recorder (once; later calls do
/// nothing) and its upkeep task, which folds samples into the histograms
/// every 5 s. Needs a tokio runtime.
pub fn install() -> Result<(), String> {
    if RECORDER.get().is_some() {
        return Ok(());
    }
    let recorder =
        PrometheusBuilder::new().set_buckets(BUCKETS).map_err(|e| format!("metrics buckets: {e}"))?.build_recorder();
    let handle = recorder.handle();
    metrics::set_global_recorder(recorder).map_err(|e| format!("installing the metrics recorder: {e}"))?;
    raftkv_raft::metrics::describe();
    metrics::describe_counter!(HTTP_REQUESTS, "HTTP requests answered, by method, route and status.");
    metrics::describe_histogram!(HTTP_SECONDS, metrics::Unit::Seconds, "HTTP requests, arrival to answer.");
    let upkeep = handle.clone();
    tokio::spawn(async move {
        let mut every = tokio::time::interval(Duration::from_secs(5));
        loop {
            every.tick().await;
            upkeep.run_upkeep();
        }
    });
    let _ = RECORDER.set(handle);
    Ok(())
}

/// Counts and times every request of the routes it wraps (`route_layer`,
/// so that the route is known: a label per route, never per path). The
/// API's own routes do this in their guard (`api::Guard`).
pub async fn track(
    route: Option<MatchedPath>,
    request: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    let started = Instant::now();
    let tracked = Tracked::start(route.as_ref(), request.method());
    let response = next.run(request).await;
    if let Some(tracked) = tracked {
        tracked.answered(response.status(), started.elapsed());
    }
    response
}

/// One request being counted and timed (its labels); `None` from `start`
/// while metrics are off.
pub struct Tracked {
    method: String,
    route: String,
}

impl Tracked {
    pub fn start(route: Option<&MatchedPath>, method: &axum::http::Method) -> Option<Tracked> {
        RECORDER.get()?;
        Some(Tracked {
            method: method.as_str().to_string(),
            route: route.map_or_else(|| "other".to_string(), |r| r.as_str().to_string()),
        })
    }

    /// `elapsed`: since the request began.
    pub fn answered(self, status: axum::http::StatusCode, elapsed: Duration) {
        let Tracked { method, route } = self;
        let status = status.as_u16().to_string();
        metrics::histogram!(HTTP_SECONDS, "method" => method.clone(), "route" => route.clone()).record(elapsed);
        metrics::counter!(HTTP_REQUESTS, "method" => method, "route" => route, "status" => status).increment(1);
    }
}

/// `GET /metrics`.
pub async fn scrape(State(agent): State<Arc<Agent>>) -> Result<Response, ApiError> {
    let Some(handle) = RECORDER.get() else {
        return Err(ApiError::not_found("metrics are off on this node (--no-metrics)"));
    };
    let mut text = handle.render();
    render_state(&agent, &mut text).await;
    Ok(([(header::CONTENT_TYPE, "text/plain; version=0.0.4; charset=utf-8")], text).into_response())
}

/// The node's state as gauges, read now.
async fn render_state(agent: &Agent, out: &mut String) {
    let mut gauge = |name: &str, help: &str, samples: &[(String, f64)]| {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} gauge");
        for (labels, value) in samples {
            let _ = writeln!(out, "{name}{labels} {value}");
        }
    };
    let one = |value: f64| vec![(String::new(), value)];
    gauge("raftkv_node_info", "This node's id (label).", &[(format!("{{id=\"{}\"}}", agent.id), 1.0)]);
    gauge(
        "raftkv_node_failed",
        "1 if the raft node failed for good.",
        &one(f64::from(u8::from(agent.raft.failure().is_some()))),
    );
    let Ok(status) = agent.raft.status().await else { return };
    let applied = agent.raft.applied_index();
    let role = format!("{:?}", status.role).to_lowercase();
    gauge("raftkv_raft_term", "The current term.", &one(status.term.0 as f64));
    let roles = ["follower", "precandidate", "candidate", "leader", "learner"];
    let samples: Vec<(String, f64)> =
        roles.iter().map(|r| (format!("{{role=\"{r}\"}}"), f64::from(u8::from(*r == role)))).collect();
    gauge("raftkv_raft_role", "1 for this node's role.", &samples);
    gauge("raftkv_raft_has_leader", "1 if a leader is known.", &one(f64::from(u8::from(status.leader.is_some()))));
    gauge("raftkv_raft_commit_index", "The highest entry known committed.", &one(status.commit_index.0 as f64));
    gauge("raftkv_raft_applied_index", "The highest entry applied.", &one(applied.0 as f64));
    gauge("raftkv_raft_last_log_index", "The last entry in the log.", &one(status.last_log_index.0 as f64));
    gauge("raftkv_raft_first_log_index", "The first entry in the log.", &one(status.first_log_index.0 as f64));
    let snapshot = status.snapshot.map_or(0, |s| s.index.0);
    gauge("raftkv_raft_snapshot_index", "The last entry the newest snapshot covers.", &one(snapshot as f64));
    gauge("raftkv_raft_voters", "Voters in the configuration.", &one(status.membership.voters.len() as f64));
    gauge("raftkv_raft_learners", "Non-voters in the configuration.", &one(status.membership.learners.len() as f64));
    let peer = |id: raftkv_raft::NodeId| format!("{{peer=\"{id}\"}}");
    let matched: Vec<_> = status.peers.iter().map(|p| (peer(p.id), p.match_index.0 as f64)).collect();
    gauge("raftkv_raft_peer_match_index", "Leader: the highest entry each peer is known to hold.", &matched);
    let lag: Vec<_> = status.peers.iter().map(|p| (peer(p.id), p.trailing as f64)).collect();
    gauge("raftkv_raft_peer_lag_entries", "Leader: entries each peer is behind.", &lag);
    let contact: Vec<_> =
        status.peers.iter().filter_map(|p| Some((peer(p.id), p.last_contact?.as_secs_f64()))).collect();
    gauge("raftkv_raft_peer_last_contact_seconds", "Leader: since each peer last answered.", &contact);
    if let Some(state) = agent.autopilot_state().filter(|_| status.leader == Some(agent.id)) {
        gauge(
            "raftkv_autopilot_healthy",
            "Leader: 1 if every server is healthy.",
            &one(f64::from(u8::from(state.healthy))),
        );
        gauge(
            "raftkv_autopilot_failure_tolerance",
            "Leader: healthy voters beyond a quorum.",
            &one(state.failure_tolerance as f64),
        );
        let servers: Vec<_> = state
            .servers
            .iter()
            .map(|s| (format!("{{server=\"{}\"}}", s.id), f64::from(u8::from(s.healthy))))
            .collect();
        gauge("raftkv_autopilot_server_healthy", "Leader: 1 for each healthy server.", &servers);
    }
}
