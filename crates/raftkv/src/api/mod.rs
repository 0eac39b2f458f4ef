//! The HTTP API (axum, JSON), by concern: `kv` (keys), `admin` (members,
//! leadership, statistics, settings, snapshots), `backup` (whole-state
//! backups and restores), `health` and `metrics` (probes and Prometheus),
//! `dashboard` (the live page at `/ui` and its data). Every handler checks its input (`params`) before it
//! asks the agent for anything, and every failure is answered through one
//! mapping (`error`).

pub mod admin;
pub mod auth;
pub mod backup;
pub mod dashboard;
pub mod error;
pub mod health;
pub mod http;
pub mod kv;
pub mod metrics;
pub mod params;

use std::sync::Arc;

use axum::extract::State;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;

use crate::agent::activity::Op;
use crate::agent::{Agent, Failure, Kind};
use crate::api::auth::{Role, Tokens};
use crate::api::error::ApiError;

/// The largest body a write route reads.
const WRITE_BODY_LIMIT: usize = 8 << 20;

/// The API, each route under the role it needs (`auth`); `tokens: None`
/// lets every request through.
pub fn router(agent: Arc<Agent>, tokens: Option<Tokens>) -> Router {
    let guard = |role: Role, op: Option<Op>| {
        let guard = Guard { agent: agent.clone(), require: auth::Require { tokens: tokens.clone(), role }, op };
        axum::middleware::from_fn_with_state(guard, guarded)
    };
    // The dashboard's rates count the key routes' answers.
    let kv_reads = Router::new()
        .route("/api/v1/get", get(kv::get_key))
        .route("/api/v1/list", get(kv::list))
        .route("/api/v1/kv/{*key}", get(kv::get_raw))
        .route_layer(guard(Role::Read, Some(Op::Read)));
    let read = Router::new()
        .route("/api/v1/dashboard", get(dashboard::data))
        .route("/api/v1/members", get(admin::members))
        .route("/api/v1/operator/autopilot/health", get(admin::autopilot_health))
        .route("/api/v1/gossip/members", get(admin::gossip_members))
        .route("/api/maintain/stats", get(admin::stats))
        .route_layer(guard(Role::Read, None));
    let write = Router::new()
        .route("/api/v1/set", post(kv::set))
        .route("/api/v1/delete", axum::routing::delete(kv::delete).post(kv::delete))
        .route("/api/v1/cas", post(kv::cas))
        .route("/api/v1/kv/{*key}", axum::routing::put(kv::put_raw).delete(kv::delete_raw))
        // A value of the largest size as a JSON string with every byte
        // escaped (six times) fits; the value limit is checked after.
        .layer(axum::extract::DefaultBodyLimit::max(WRITE_BODY_LIMIT))
        .route_layer(guard(Role::Write, Some(Op::Write)));
    let admin = Router::new()
        .route("/api/v1/join", post(admin::join))
        .route("/api/v1/remove", post(admin::remove))
        .route("/api/v1/transfer-leader", post(admin::transfer_leader))
        .route("/api/v1/leave", post(admin::leave))
        .route("/api/v1/snapshot", get(backup::save).post(backup::restore))
        .route("/api/maintain/config", post(admin::reload_config))
        .route("/api/maintain/snapshot", post(admin::take_snapshot))
        .route_layer(guard(Role::Admin, None));
    // Probes and scrapers carry no token (like etcd's /health and
    // /metrics), and these answer for a failed node themselves.
    let open = Router::new()
        .route("/v1/health", get(health::health))
        .route("/v1/ready", get(health::ready))
        .route("/metrics", get(metrics::scrape))
        .route_layer(axum::middleware::from_fn(metrics::track))
        // The dashboard's page and assets (its data is a read route).
        .route("/ui", get(dashboard::page))
        .route("/ui/", get(dashboard::page))
        .route("/ui/dashboard.js", get(dashboard::script))
        .route("/ui/dashboard.css", get(dashboard::style))
        .route("/ui/uPlot.iife.min.js", get(dashboard::uplot_script))
        .route("/ui/uPlot.min.css", get(dashboard::uplot_style));
    Router::new()
        .merge(open)
        .merge(kv_reads)
        .merge(read)
        .merge(write)
        .merge(admin)
        .layer(axum::middleware::from_fn(envelope))
        .with_state(agent)
}

/// Every answer speaks one language: a query that is not UTF-8 once
/// percent-decoded is refused (it would otherwise name another key, with
/// U+FFFD in place of the bytes), and an error axum makes by itself (no
/// such route, a method the route does not take, a query or body its
/// extractors refuse, a body over the limit) gets the JSON error envelope
/// like the handlers' own errors. None of those ran anything: not done.
async fn envelope(request: axum::extract::Request, next: axum::middleware::Next) -> Response {
    if let Some(query) = request.uri().query() {
        if !query_is_utf8(query) {
            return ApiError::bad_request("the query string is not UTF-8 once percent-decoded").into_response();
        }
    }
    let response = next.run(request).await;
    let status = response.status();
    let json = response
        .headers()
        .get(axum::http::header::CONTENT_TYPE)
        .is_some_and(|v| v.as_bytes().starts_with(b"application/json"));
    if !(status.is_client_error() || status.is_server_error()) || json {
        return response;
    }
    let code = match status.as_u16() {
        400 => "bad_request",
        404 => "not_found",
        405 => "method_not_allowed",
        413 => "too_large",
        415 => "unsupported_media_type",
        422 => "bad_request",
        _ => "http_error",
    };
    let bytes = axum::body::to_bytes(response.into_body(), 4096).await.unwrap_or_default();
    let mut message = String::from_utf8_lossy(&bytes).trim().to_string();
    if message.is_empty() {
        message = status.canonical_reason().unwrap_or("error").to_string();
    }
    ApiError { status, code, message, outcome: crate::agent::Outcome::NotDone }.into_response()
}

/// Whether `query`, with `+` as space and `%XX` decoded, is UTF-8 (a `%`
/// not followed by two hex digits stands for itself, as browsers send it).
fn query_is_utf8(query: &str) -> bool {
    query.split(['&', '=']).all(|part| {
        let bytes = part.as_bytes();
        let mut decoded = Vec::with_capacity(bytes.len());
        let mut i = 0;
        while i < bytes.len() {
            let hex = |b: u8| (b as char).to_digit(16);
            match (bytes[i], bytes.get(i + 1).copied().and_then(hex), bytes.get(i + 2).copied().and_then(hex)) {
                (b'%', Some(high), Some(low)) => {
                    decoded.push((high * 16 + low) as u8);
                    i += 3;
                }
                (b'+', _, _) => {
                    decoded.push(b' ');
                    i += 1;
                }
                (byte, _, _) => {
                    decoded.push(byte);
                    i += 1;
                }
            }
        }
        std::str::from_utf8(&decoded).is_ok()
    })
}

/// What the routes of one role check and record around each request, in
/// one middleware rather than a layer each (four `from_fn` layers cost the
/// leader more CPU per write than the raft work did): the request is
/// counted and timed (`metrics`), authorized (`auth`, first: a failed
/// node's reason is for clients let in), refused while the node has failed
/// (503 `node_failed`: not even a stale read of a state that no longer
/// advances), and once answered counted for the dashboard (`op`) and audited (admin
/// routes).
#[derive(Clone)]
struct Guard {
    agent: Arc<Agent>,
    require: auth::Require,
    /// The key routes' answers are the dashboard's reads and writes.
    op: Option<Op>,
}

async fn guarded(
    State(guard): State<Guard>,
    route: Option<axum::extract::MatchedPath>,
    request: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    let started = std::time::Instant::now();
    let tracked = metrics::Tracked::start(route.as_ref(), request.method());
    let (response, served) = guard.run(request, next).await;
    let elapsed = started.elapsed();
    if let (Some(op), true) = (guard.op, served) {
        dashboard::count(&guard.agent, op, response.status(), elapsed);
    }
    if let Some(tracked) = tracked {
        tracked.answered(response.status(), elapsed);
    }
    response
}

impl Guard {
    /// The answer, and whether the handler gave it (not a refusal here).
    async fn run(&self, request: axum::extract::Request, next: axum::middleware::Next) -> (Response, bool) {
        let audit = match auth::admit(&self.require, &request) {
            Ok(audit) => audit,
            Err(refused) => return (*refused, false),
        };
        let (response, served) = match self.agent.raft.failure() {
            Some(reason) => {
                let message = format!("this node failed and stopped ({reason}); ask another node");
                (ApiError::from(Failure::not_done(Kind::NodeFailed, message)).into_response(), false)
            }
            None => (next.run(request).await, true),
        };
        if let Some(audit) = audit {
            audit.answered(response.status());
        }
        (response, served)
    }
}

#[cfg(test)]
mod tests {
    use super::query_is_utf8;

    #[test]
    fn queries_are_utf8_once_decoded_or_refused() {
        assert!(query_is_utf8("key=a%20b&consistency=stale"));
        assert!(query_is_utf8("key=%C3%A9t%C3%A9+x"));
        assert!(query_is_utf8("key=100%"));
        assert!(!query_is_utf8("key=%FF"));
        assert!(!query_is_utf8("key=%C3"));
        assert!(!query_is_utf8("%FF=x"));
    }
}
