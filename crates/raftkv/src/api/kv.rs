//! Reading and writing keys. Writes go through `Agent::write` (run on the
//! leader); linearizable and lease reads wait for `Agent::read_barrier`, then
//! read this node's state; stale reads read it at once.

use std::sync::Arc;

use axum::extract::rejection::JsonRejection;
use axum::extract::{Query, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use bytes::Bytes;
use serde::Deserialize;
use serde_json::{json, Value};

use crate::agent::{Agent, Failure, Outcome};
use crate::api::error::ApiError;
use crate::api::params::{body, check_key, check_value, consistency};
use crate::state::{Answer, Command};

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SetBody {
    key: String,
    value: String,
}

pub async fn set(
    State(agent): State<Arc<Agent>>,
    payload: Result<Json<SetBody>, JsonRejection>,
) -> Result<Json<Value>, ApiError> {
    let SetBody { key, value } = body(payload)?;
    check_key(&agent.config.limits, &key)?;
    check_value(&agent.config.limits, &value)?;
    let (index, _) = agent.write(Command::Set { key, value }).await?;
    Ok(Json(json!({"index": index.0})))
}

#[derive(Deserialize, Default)]
pub struct KeyQuery {
    key: Option<String>,
    consistency: Option<String>,
}

#[derive(Deserialize)]
pub struct KeyBody {
    key: String,
}

pub async fn get_key(
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
    check_key(&agent.config.limits, &key)?;
    let mode = consistency(query.consistency.as_deref())?;
    agent.read_barrier(mode).await?;
    let found = agent.kv.read().data.get(&key).cloned();
    let Some(found) = found else {
        return Err(ApiError::not_found(format!("no key {key:?}")));
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

pub async fn delete(State(agent): State<Arc<Agent>>, Query(query): Query<KeyQuery>) -> Result<Json<Value>, ApiError> {
    let key = query.key.ok_or_else(|| ApiError::bad_request("missing ?key="))?;
    check_key(&agent.config.limits, &key)?;
    let (index, outcome) = agent.write(Command::Delete { key }).await?;
    let existed = matches!(outcome, Answer::Deleted { existed: true });
    Ok(Json(json!({"index": index.0, "deleted": existed})))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CasBody {
    key: String,
    expected: Option<String>,
    value: String,
}

pub async fn cas(
    State(agent): State<Arc<Agent>>,
    payload: Result<Json<CasBody>, JsonRejection>,
) -> Result<Response, ApiError> {
    let CasBody { key, expected, value } = body(payload)?;
    check_key(&agent.config.limits, &key)?;
    check_value(&agent.config.limits, &value)?;
    let (index, outcome) = agent.write(Command::Cas { key, expected, value }).await?;
    match outcome {
        Answer::Done => Ok(Json(json!({"index": index.0, "succeeded": true})).into_response()),
        Answer::CasFailed { current } => {
            let body = json!({
                "error": {"code": "cas_mismatch", "message": "the current value differs from the expected one"},
                "current": current,
                "index": index.0,
            });
            Ok((StatusCode::CONFLICT, Json(body)).into_response())
        }
        other => Err(Failure::internal(
            Outcome::Done,
            format!("compare-and-swap at index {}: unexpected answer {other:?}", index.0),
        )
        .into()),
    }
}

#[derive(Deserialize)]
pub struct ListQuery {
    prefix: Option<String>,
    limit: Option<usize>,
    /// Only keys after this one (the last key of the previous page).
    start_after: Option<String>,
    consistency: Option<String>,
}

/// Keys and values one list answer holds at most, in bytes (beyond, the
/// answer says `more`): a request must not make the node build a response
/// of the whole state in memory.
const MAX_LIST_BYTES: usize = 16 << 20;

pub async fn list(State(agent): State<Arc<Agent>>, Query(query): Query<ListQuery>) -> Result<Json<Value>, ApiError> {
    let prefix = query.prefix.unwrap_or_default();
    let limit = query.limit.unwrap_or(1000).min(100_000);
    let mode = consistency(query.consistency.as_deref())?;
    agent.read_barrier(mode).await?;
    let state = agent.kv.read();
    let start = match query.start_after {
        Some(after) if after >= prefix => std::ops::Bound::Excluded(after),
        _ => std::ops::Bound::Included(prefix.clone()),
    };
    let (mut items, mut bytes, mut more) = (Vec::new(), 0usize, false);
    for (key, value) in state.data.range((start, std::ops::Bound::Unbounded)) {
        if !key.starts_with(&prefix) {
            break;
        }
        if items.len() >= limit || (bytes >= MAX_LIST_BYTES && !items.is_empty()) {
            more = true;
            break;
        }
        bytes += key.len() + value.value.len();
        items.push(json!({"key": key, "value": value.value, "index": value.index.0}));
    }
    Ok(Json(json!({"items": items, "more": more})))
}
