//! The live dashboard: `GET /ui` serves a page (HTML, script, style and the
//! vendored uPlot charting library, all embedded in the binary: nothing is
//! fetched from elsewhere), and the page polls `GET /api/v1/dashboard` once
//! a second. That route answers with every member as it reports itself
//! over the internal `ClusterInfo` RPC (role, term, commit and applied
//! index, and the reads and writes its API answered, cumulative, with a
//! latency histogram), asked of all members at once within `ASK_WITHIN`,
//! and the leadership changes this node saw. The page takes rates and
//! latency percentiles from the difference between two answers.
//!
//! The page is open like the probes (it holds no data); the data route
//! takes the read role, and with tokens on the page asks for one.

use std::sync::Arc;
use std::time::Duration;

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use raftkv_raft::NodeId;
use serde_json::{json, Value};

use crate::agent::activity::{Op, BUCKETS, BUCKET_BOUNDS_US};
use crate::agent::wire::{self, proto};
use crate::agent::{Agent, Failure};
use crate::api::admin::{addresses, suffrages};
use crate::api::error::ApiError;
use crate::state::machine::unix_ms;

/// How long the dashboard waits for each member's report.
const ASK_WITHIN: Duration = Duration::from_millis(800);

const INDEX_HTML: &str = include_str!("../../assets/ui/index.html");
const DASHBOARD_JS: &str = include_str!("../../assets/ui/dashboard.js");
const DASHBOARD_CSS: &str = include_str!("../../assets/ui/dashboard.css");
const UPLOT_JS: &str = include_str!("../../assets/ui/vendor/uPlot-1.6.32/uPlot.iife.min.js");
const UPLOT_CSS: &str = include_str!("../../assets/ui/vendor/uPlot-1.6.32/uPlot.min.css");

/// Only this origin's scripts and styles (uPlot sizes its elements through
/// the style attribute), no framing.
const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self' 'unsafe-inline'; \
                   connect-src 'self'; img-src 'self' data:; frame-ancestors 'none'";

fn asset(content_type: &'static str, body: &'static str) -> Response {
    let headers = [
        (header::CONTENT_TYPE, content_type),
        (header::CACHE_CONTROL, "no-cache"),
        (header::CONTENT_SECURITY_POLICY, CSP),
        (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
    ];
    (headers, body).into_response()
}

/// `GET /ui`.
pub async fn page() -> Response {
    asset("text/html; charset=utf-8", INDEX_HTML)
}

/// `GET /ui/dashboard.js`.
pub async fn script() -> Response {
    asset("text/javascript; charset=utf-8", DASHBOARD_JS)
}

/// `GET /ui/dashboard.css`.
pub async fn style() -> Response {
    asset("text/css; charset=utf-8", DASHBOARD_CSS)
}

/// `GET /ui/uPlot.iife.min.js`.
pub async fn uplot_script() -> Response {
    asset("text/javascript; charset=utf-8", UPLOT_JS)
}

/// `GET /ui/uPlot.min.css`.
pub async fn uplot_style() -> Response {
    asset("text/css; charset=utf-8", UPLOT_CSS)
}

/// Counts an answer of a key route as a read or a write in the agent's
/// `activity` (the dashboard's rates and latencies). A key found absent
/// (404) and a compare-and-swap that did not swap (409, a committed entry)
/// were served; a method the route does not take (405) ran nothing and is
/// not counted.
pub fn count(agent: &Agent, op: Op, status: StatusCode, elapsed: Duration) {
    if status != StatusCode::METHOD_NOT_ALLOWED {
        let served = status.is_success() || status == StatusCode::NOT_FOUND || status == StatusCode::CONFLICT;
        agent.activity.record(op, served, elapsed);
    }
}

/// `GET /api/v1/dashboard`.
pub async fn data(State(agent): State<Arc<Agent>>) -> Result<Json<Value>, ApiError> {
    let status = agent.raft.status().await.map_err(|e| Failure::from(e).changed_nothing())?;
    let peers = agent.kv.read().peers.clone();
    let mut asked = tokio::task::JoinSet::new();
    for id in status.membership.members() {
        if id == agent.id {
            continue;
        }
        let (Some(address), _) = addresses(&agent, &peers, id) else {
            continue;
        };
        let agent = agent.clone();
        asked.spawn(async move {
            let answer = tokio::time::timeout(ASK_WITHIN, wire::cluster_info(&agent.peers.channels, &address)).await;
            let report = match answer {
                Ok(Ok(info)) if info.node_id == id.0 => match info.activity {
                    None => Err("reports no activity (an older version?)".to_string()),
                    Some(report) if !well_formed(&report) => {
                        Err("reports request counts in another form (another version?)".to_string())
                    }
                    Some(report) => Ok(report),
                },
                Ok(Ok(info)) => Err(format!("{address} answers as node {}", info.node_id)),
                Ok(Err(error)) => Err(error),
                Err(_) => Err(format!("no answer within {ASK_WITHIN:?}")),
            };
            (id, report)
        });
    }
    let mut reports: Vec<(NodeId, Result<proto::NodeActivity, String>)> =
        vec![(agent.id, Ok(agent.activity_report(&status)))];
    while let Some(joined) = asked.join_next().await {
        if let Ok(report) = joined {
            reports.push(report);
        }
    }
    let newest_commit = reports.iter().filter_map(|(_, r)| r.as_ref().ok()).map(|r| r.commit_index).max().unwrap_or(0);

    let leads = status.leader == Some(agent.id);
    let describe = |id: NodeId, suffrage: &str| {
        let progress = status.peers.iter().find(|p| p.id == id);
        let (raft_addr, http_addr) = addresses(&agent, &peers, id);
        let mut member = json!({
            "id": id.0,
            "suffrage": suffrage,
            "raft_addr": raft_addr,
            "http_addr": http_addr,
            "leader": status.leader == Some(id),
            // Known on the leader only.
            "match_index": progress.map(|p| p.match_index.0),
            "last_contact_ms": progress.and_then(|p| p.last_contact).map(|d| d.as_millis() as u64),
        });
        match reports.iter().find(|(reported, _)| *reported == id).map(|(_, r)| r) {
            Some(Ok(report)) => {
                member["reachable"] = json!(true);
                member["role"] = json!(report.role);
                member["serving"] = json!(report.serving);
                member["term"] = json!(report.term);
                member["commit_index"] = json!(report.commit_index);
                member["applied_index"] = json!(report.applied_index);
                member["last_log_index"] = json!(report.last_log_index);
                member["lag"] = json!(newest_commit.saturating_sub(report.applied_index));
                member["reads"] = counts(report.reads.as_ref());
                member["writes"] = counts(report.writes.as_ref());
            }
            Some(Err(error)) => {
                member["reachable"] = json!(false);
                member["error"] = json!(error);
            }
            None => member["reachable"] = json!(false),
        }
        member
    };
    let members: Vec<Value> = suffrages(&status).into_iter().map(|(id, suffrage)| describe(id, suffrage)).collect();
    let leadership: Vec<Value> = agent
        .activity
        .leader_events()
        .iter()
        .map(|e| json!({"unix_ms": e.unix_ms, "term": e.term, "leader": e.leader}))
        .collect();
    Ok(Json(json!({
        "node": agent.id.0,
        "leader": status.leader.map(|l| l.0),
        "term": status.term.0,
        "leads": leads,
        "unix_ms": unix_ms(),
        "bucket_bounds_us": BUCKET_BOUNDS_US,
        "members": members,
        "leadership": leadership,
    })))
}

/// Whether a member's report counts in this node's latency buckets (their
/// counts add up with this node's only then).
fn well_formed(report: &proto::NodeActivity) -> bool {
    [&report.reads, &report.writes].iter().all(|c| c.as_ref().is_some_and(|c| c.buckets.len() == BUCKETS))
}

fn counts(counts: Option<&proto::RequestCounts>) -> Value {
    match counts {
        Some(c) => json!({"done": c.done, "failed": c.failed, "micros": c.micros, "buckets": c.buckets}),
        None => Value::Null,
    }
}
