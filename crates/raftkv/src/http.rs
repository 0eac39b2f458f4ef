//! The HTTP API (axum, JSON). Writes go through `Agent::write` (forwarded to the
//! leader when this node follows); linearizable and lease reads confirm an
//! index with the leader (ReadIndex, from any node) and read the local state
//! once it is applied; stale reads read the local state at once.
//!
//! Errors are `{"error": {"code", "message"}}`: 400 bad input, 404 no such
//! key, 409 compare-and-swap mismatch or a leadership transfer that did not
//! move leadership (`transfer_failed`), 413 a write too large to forward, 503
//! no leader, `not_sent` (the follower could not reach the leader) or
//! `node_failed` (with `Retry-After`; the request was not carried out), 504
//! timeout or `outcome_unknown` (a write that may or may not have been applied).

use std::collections::BTreeMap;
use std::sync::Arc;

use axum::extract::rejection::JsonRejection;
use axum::extract::{Query, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use bytes::Bytes;
use raftkv_raft::{NodeId, ProposeError, RaftError, ReadMode};
use serde::Deserialize;
use serde_json::{json, Value};

use crate::agent::{self, Agent, WriteError};
use crate::store::{Command, Outcome};

pub fn router(agent: Arc<Agent>) -> Router {
    Router::new()
        .route("/api/v1/set", post(set))
        .route("/api/v1/get", get(get_key))
        .route("/api/v1/delete", axum::routing::delete(delete).post(delete))
        .route("/api/v1/cas", post(cas))
        .route("/api/v1/list", get(list))
        .route("/api/v1/members", get(members))
        .route("/api/v1/join", post(join))
        .route("/api/v1/remove", post(remove))
        .route("/api/v1/transfer-leader", post(transfer_leader))
        .route("/api/v1/snapshot", get(crate::backup::save).post(crate::backup::restore))
        .route("/api/maintain/stats", get(stats))
        .route("/api/maintain/config", post(reload_config))
        .route("/api/maintain/snapshot", post(take_snapshot))
        .layer(axum::middleware::from_fn_with_state(agent.clone(), refuse_if_failed))
        .with_state(agent)
}

/// A node whose raft node failed for good answers nothing but 503
/// `node_failed`: not even a stale read of a state that no longer advances.
async fn refuse_if_failed(
    State(agent): State<Arc<Agent>>,
    request: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    match agent.raft.failure() {
        Some(reason) => ApiError {
            status: StatusCode::SERVICE_UNAVAILABLE,
            code: "node_failed",
            message: format!("this node failed and stopped ({reason}); ask another node"),
        }
        .into_response(),
        None => next.run(request).await,
    }
}

/// An API error: status, machine-readable code, human message.
pub struct ApiError {
    pub(crate) status: StatusCode,
    pub(crate) code: &'static str,
    pub(crate) message: String,
}

impl ApiError {
    pub(crate) fn bad_request(message: impl Into<String>) -> ApiError {
        ApiError { status: StatusCode::BAD_REQUEST, code: "bad_request", message: message.into() }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = Json(json!({"error": {"code": self.code, "message": self.message}}));
        let mut response = (self.status, body).into_response();
        if self.status == StatusCode::SERVICE_UNAVAILABLE {
            response.headers_mut().insert(header::RETRY_AFTER, header::HeaderValue::from_static("1"));
        }
        response
    }
}

pub(crate) fn raft_error(error: RaftError) -> ApiError {
    let message = error.to_string();
    let (status, code) = match error {
        RaftError::NotLeader { .. } => (StatusCode::SERVICE_UNAVAILABLE, "no_leader"),
        // Proposed, then leadership moved or time ran out: the write may still
        // commit, so this is not a failure a client may count on.
        RaftError::LeadershipLost => (StatusCode::GATEWAY_TIMEOUT, "outcome_unknown"),
        RaftError::Timeout(_) => (StatusCode::GATEWAY_TIMEOUT, "timeout"),
        // Not running: nothing was done.
        RaftError::Shutdown => (StatusCode::SERVICE_UNAVAILABLE, "shutting_down"),
        RaftError::Failed { .. } => (StatusCode::SERVICE_UNAVAILABLE, "node_failed"),
        // Stopped with the write in flight: it may be on followers already.
        RaftError::Stopped { .. } => (StatusCode::GATEWAY_TIMEOUT, "outcome_unknown"),
        RaftError::TransferFailed { .. } => (StatusCode::CONFLICT, "transfer_failed"),
        // A read that could not be confirmed changed nothing: retry.
        RaftError::Read(_) => (StatusCode::SERVICE_UNAVAILABLE, "no_leader"),
        RaftError::Refused(ProposeError::TransferInProgress { .. }) => {
            (StatusCode::SERVICE_UNAVAILABLE, "leadership_transfer")
        }
        RaftError::Refused(_) => (StatusCode::CONFLICT, "refused"),
        _ => (StatusCode::INTERNAL_SERVER_ERROR, "internal"),
    };
    ApiError { status, code, message }
}

fn status_error(status: tonic::Status) -> ApiError {
    let message = status.message().to_string();
    let (status, code) = match status.code() {
        tonic::Code::Unavailable => (StatusCode::SERVICE_UNAVAILABLE, "no_leader"),
        tonic::Code::Unknown => (StatusCode::GATEWAY_TIMEOUT, "outcome_unknown"),
        tonic::Code::DeadlineExceeded => (StatusCode::GATEWAY_TIMEOUT, "timeout"),
        tonic::Code::InvalidArgument => (StatusCode::BAD_REQUEST, "bad_request"),
        tonic::Code::FailedPrecondition => (StatusCode::CONFLICT, "refused"),
        // `status_of(TransferFailed)`: leadership did not move.
        tonic::Code::Aborted => (StatusCode::CONFLICT, "transfer_failed"),
        _ => (StatusCode::SERVICE_UNAVAILABLE, "forward_failed"),
    };
    ApiError { status, code, message }
}

pub(crate) fn write_error(error: WriteError) -> ApiError {
    match error {
        WriteError::Raft(error) => raft_error(error),
        WriteError::NoLeader => ApiError {
            status: StatusCode::SERVICE_UNAVAILABLE,
            code: "no_leader",
            message: "no leader is known".into(),
        },
        WriteError::Refused(status) => status_error(status),
        // Never reached the leader: not carried out, retry.
        WriteError::NotSent(message) => ApiError { status: StatusCode::SERVICE_UNAVAILABLE, code: "not_sent", message },
        WriteError::TooLarge(message) => ApiError { status: StatusCode::PAYLOAD_TOO_LARGE, code: "too_large", message },
        WriteError::Unknown(status) => ApiError {
            status: StatusCode::GATEWAY_TIMEOUT,
            code: "outcome_unknown",
            message: format!("the write may or may not have been applied: {}", status.message()),
        },
        WriteError::Internal(message) => {
            ApiError { status: StatusCode::INTERNAL_SERVER_ERROR, code: "internal", message }
        }
    }
}

/// The JSON body, or a 400 that says what is wrong with it.
fn body<T>(payload: Result<Json<T>, JsonRejection>) -> Result<T, ApiError> {
    payload.map(|Json(value)| value).map_err(|rejection| ApiError::bad_request(rejection.body_text()))
}

fn check_key(agent: &Agent, key: &str) -> Result<(), ApiError> {
    if key.is_empty() {
        return Err(ApiError::bad_request("key must not be empty"));
    }
    let limit = agent.config.limits.max_key_bytes;
    if key.len() > limit {
        return Err(ApiError::bad_request(format!("key of {} bytes exceeds the limit of {limit}", key.len())));
    }
    Ok(())
}

fn check_value(agent: &Agent, value: &str) -> Result<(), ApiError> {
    let limit = agent.config.limits.max_value_bytes;
    if value.len() > limit {
        return Err(ApiError::bad_request(format!("value of {} bytes exceeds the limit of {limit}", value.len())));
    }
    Ok(())
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct SetBody {
    key: String,
    value: String,
}

async fn set(
    State(agent): State<Arc<Agent>>,
    payload: Result<Json<SetBody>, JsonRejection>,
) -> Result<Json<Value>, ApiError> {
    let SetBody { key, value } = body(payload)?;
    check_key(&agent, &key)?;
    check_value(&agent, &value)?;
    let (index, _) = agent.write(Command::Set { key, value }).await.map_err(write_error)?;
    Ok(Json(json!({"index": index.0})))
}

#[derive(Deserialize, Default)]
struct KeyQuery {
    key: Option<String>,
    consistency: Option<String>,
}

#[derive(Deserialize)]
struct KeyBody {
    key: String,
}

pub(crate) fn consistency(raw: Option<&str>) -> Result<Option<ReadMode>, ApiError> {
    match raw.unwrap_or("linearizable") {
        "linearizable" => Ok(Some(ReadMode::Linearizable)),
        "lease" => Ok(Some(ReadMode::Lease)),
        "stale" => Ok(None),
        other => Err(ApiError::bad_request(format!("consistency must be linearizable, lease or stale, not {other:?}"))),
    }
}

/// Waits until a read may be served here at the chosen consistency.
pub(crate) async fn read_barrier(agent: &Agent, mode: Option<ReadMode>) -> Result<(), ApiError> {
    if let Some(mode) = mode {
        agent.raft.read_index(mode, agent.config.request_timeout).await.map_err(raft_error)?;
    }
    Ok(())
}

async fn get_key(
    State(agent): State<Arc<Agent>>,
    Query(query): Query<KeyQuery>,
    headers: HeaderMap,
    raw_body: Bytes,
) -> Result<Response, ApiError> {
    // The key comes in the query, or in a JSON body as hashicorp-style clients send it.
    let key = match query.key {
        Some(key) => key,
        None if !raw_body.is_empty() => {
            let parsed: KeyBody = serde_json::from_slice(&raw_body)
                .map_err(|e| ApiError::bad_request(format!("body must be {{\"key\": ...}}: {e}")))?;
            parsed.key
        }
        None => return Err(ApiError::bad_request("missing key (?key=K or a JSON body {\"key\": K})")),
    };
    check_key(&agent, &key)?;
    let mode = consistency(query.consistency.as_deref())?;
    read_barrier(&agent, mode).await?;
    let found = agent.kv.read().data.get(&key).cloned();
    let Some(found) = found else {
        return Err(ApiError { status: StatusCode::NOT_FOUND, code: "not_found", message: format!("no key {key:?}") });
    };
    let wants_json = headers
        .get(header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|accept| accept.contains("application/json"));
    if wants_json {
        Ok(Json(json!({"key": key, "value": found.value, "index": found.index.0})).into_response())
    } else {
        Ok(found.value.into_response())
    }
}

async fn delete(State(agent): State<Arc<Agent>>, Query(query): Query<KeyQuery>) -> Result<Json<Value>, ApiError> {
    let key = query.key.ok_or_else(|| ApiError::bad_request("missing ?key="))?;
    check_key(&agent, &key)?;
    let (index, outcome) = agent.write(Command::Delete { key }).await.map_err(write_error)?;
    let existed = matches!(outcome, Outcome::Deleted { existed: true });
    Ok(Json(json!({"index": index.0, "deleted": existed})))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CasBody {
    key: String,
    expected: Option<String>,
    value: String,
}

async fn cas(
    State(agent): State<Arc<Agent>>,
    payload: Result<Json<CasBody>, JsonRejection>,
) -> Result<Response, ApiError> {
    let CasBody { key, expected, value } = body(payload)?;
    check_key(&agent, &key)?;
    check_value(&agent, &value)?;
    let (index, outcome) = agent.write(Command::Cas { key, expected, value }).await.map_err(write_error)?;
    match outcome {
        Outcome::Done => Ok(Json(json!({"index": index.0, "succeeded": true})).into_response()),
        Outcome::CasFailed { current } => {
            let body = json!({
                "error": {"code": "cas_mismatch", "message": "the current value differs from the expected one"},
                "current": current,
                "index": index.0,
            });
            Ok((StatusCode::CONFLICT, Json(body)).into_response())
        }
        other => Err(ApiError {
            status: StatusCode::INTERNAL_SERVER_ERROR,
            code: "internal",
            message: format!("unexpected outcome {other:?}"),
        }),
    }
}

#[derive(Deserialize)]
struct ListQuery {
    prefix: Option<String>,
    limit: Option<usize>,
    consistency: Option<String>,
}

async fn list(State(agent): State<Arc<Agent>>, Query(query): Query<ListQuery>) -> Result<Json<Value>, ApiError> {
    let prefix = query.prefix.unwrap_or_default();
    let limit = query.limit.unwrap_or(1000).min(100_000);
    let mode = consistency(query.consistency.as_deref())?;
    read_barrier(&agent, mode).await?;
    let state = agent.kv.read();
    let items: Vec<Value> = state
        .data
        .range(prefix.clone()..)
        .take_while(|(key, _)| key.starts_with(&prefix))
        .take(limit)
        .map(|(key, value)| json!({"key": key, "value": value.value, "index": value.index.0}))
        .collect();
    Ok(Json(json!({"items": items})))
}

async fn members(State(agent): State<Arc<Agent>>) -> Result<Json<Value>, ApiError> {
    let status = agent.raft.status().await.map_err(raft_error)?;
    let peers = agent.kv.read().peers.clone();
    let book = agent.book.all();
    let describe = |id: &NodeId, suffrage: &str| {
        let peer = peers.get(&id.0);
        json!({
            "id": id.0,
            "suffrage": suffrage,
            "raft_addr": book.get(id).cloned().or_else(|| peer.map(|p| p.raft_addr.clone())),
            "http_addr": peer.map(|p| p.http_addr.clone()),
            "leader": status.leader == Some(*id),
        })
    };
    let mut members: Vec<Value> = status.membership.voters.iter().map(|id| describe(id, "voter")).collect();
    members.extend(status.membership.learners.iter().map(|id| describe(id, "nonvoter")));
    Ok(Json(json!({"members": members, "leader": status.leader.map(|l| l.0), "term": status.term.0})))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct JoinBody {
    id: u64,
    raft_addr: String,
    http_addr: Option<String>,
}

async fn join(
    State(agent): State<Arc<Agent>>,
    payload: Result<Json<JoinBody>, JsonRejection>,
) -> Result<Json<Value>, ApiError> {
    let JoinBody { id, raft_addr, http_addr } = body(payload)?;
    let request = agent::proto::JoinRequest { header: None, id, raft_addr, http_addr: http_addr.unwrap_or_default() };
    let index = agent::add_member(&agent, request).await.map_err(status_error)?;
    Ok(Json(json!({"index": index.0})))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RemoveBody {
    id: u64,
}

async fn remove(
    State(agent): State<Arc<Agent>>,
    payload: Result<Json<RemoveBody>, JsonRejection>,
) -> Result<Json<Value>, ApiError> {
    let RemoveBody { id } = body(payload)?;
    let index = if agent.raft.leader().leader == Some(agent.id) {
        agent.raft.remove_server(NodeId(id), agent.config.request_timeout).await.map_err(raft_error)?.0
    } else {
        agent::forward_admin(&agent, agent::proto::admin_request::Op::Remove(id)).await.map_err(status_error)?
    };
    Ok(Json(json!({"index": index})))
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct TransferBody {
    id: Option<u64>,
}

async fn transfer_leader(State(agent): State<Arc<Agent>>, raw_body: Bytes) -> Result<Json<Value>, ApiError> {
    let TransferBody { id } = if raw_body.is_empty() {
        TransferBody::default()
    } else {
        serde_json::from_slice(&raw_body).map_err(|e| ApiError::bad_request(format!("bad JSON body: {e}")))?
    };
    if agent.raft.leader().leader == Some(agent.id) {
        let target = agent::transfer(&agent, id.map(NodeId)).await.map_err(status_error)?;
        Ok(Json(json!({"target": target.0})))
    } else {
        let op = agent::proto::admin_request::Op::TransferTo(id.unwrap_or(0));
        agent::forward_admin(&agent, op).await.map_err(status_error)?;
        Ok(Json(json!({"target": id})))
    }
}

/// Every field of hashicorp/raft's `Stats()`, values as strings.
async fn stats(State(agent): State<Arc<Agent>>) -> Result<Json<BTreeMap<&'static str, String>>, ApiError> {
    let book = agent.book.clone();
    agent.raft.stats(|id| book.get(id)).await.map(Json).map_err(raft_error)
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ReloadBody {
    trailing_logs: Option<u64>,
    snapshot_threshold: Option<u64>,
    snapshot_interval_ms: Option<u64>,
    snapshot_log_bytes: Option<u64>,
    heartbeat_interval_ms: Option<u64>,
    election_timeout_min_ms: Option<u64>,
    election_timeout_max_ms: Option<u64>,
}

/// `POST /api/maintain/config`: changes this node's reloadable settings; the
/// answer holds the settings now in force. An invalid combination is a 400
/// and changes nothing.
async fn reload_config(
    State(agent): State<Arc<Agent>>,
    payload: Result<Json<ReloadBody>, JsonRejection>,
) -> Result<Json<Value>, ApiError> {
    let body = body(payload)?;
    let ms = |v: Option<u64>| v.map(std::time::Duration::from_millis);
    let reload = raftkv_raft::ReloadableConfig {
        trailing_logs: body.trailing_logs,
        snapshot_threshold: body.snapshot_threshold,
        snapshot_interval: ms(body.snapshot_interval_ms),
        snapshot_log_bytes: body.snapshot_log_bytes,
        heartbeat_interval: ms(body.heartbeat_interval_ms),
        election_timeout_min: ms(body.election_timeout_min_ms),
        election_timeout_max: ms(body.election_timeout_max_ms),
    };
    let config = agent.raft.reload_config(reload).await.map_err(|error| match error {
        RaftError::Config(reason) => ApiError::bad_request(format!("configuration refused: {reason}")),
        other => raft_error(other),
    })?;
    let ms = |d: std::time::Duration| d.as_millis() as u64;
    Ok(Json(json!({
        "trailing_logs": config.trailing_logs,
        "snapshot_threshold": config.snapshot_threshold,
        "snapshot_interval_ms": ms(config.snapshot_interval),
        "snapshot_log_bytes": config.snapshot_log_bytes,
        "heartbeat_interval_ms": ms(config.heartbeat_interval),
        "election_timeout_min_ms": ms(config.election_timeout_min),
        "election_timeout_max_ms": ms(config.election_timeout_max),
    })))
}

/// `POST /api/maintain/snapshot`: this node takes a snapshot now and compacts
/// its log behind it (keeping `trailing_logs`).
async fn take_snapshot(State(agent): State<Arc<Agent>>) -> Result<Json<Value>, ApiError> {
    match agent.raft.snapshot().await {
        Ok(id) => Ok(Json(json!({"index": id.index.0, "term": id.term.0}))),
        Err(RaftError::NothingNewToSnapshot { index }) => Err(ApiError {
            status: StatusCode::CONFLICT,
            code: "nothing_new",
            message: format!("nothing applied since the snapshot at index {}", index.0),
        }),
        Err(error) => Err(raft_error(error)),
    }
}
