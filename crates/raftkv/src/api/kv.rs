//! Reading and writing keys. Writes go through `Agent::write` (run on the
//! leader); linearizable and lease reads wait for `Agent::read_barrier`, then
//! read this node's state; stale reads read it at once.
//!
//! Values are bytes. The JSON routes carry a value as `value` when it is
//! UTF-8 text and as `value_base64` otherwise (requests may use either);
//! `/api/v1/kv/{key}` takes and returns the raw bytes.

use std::sync::Arc;

use axum::extract::rejection::JsonRejection;
use axum::extract::{Path, Query, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use bytes::Bytes;
use serde::Deserialize;
use serde_json::{json, Value};

use crate::agent::{Agent, Failure, Outcome};
use crate::api::error::ApiError;
use crate::api::params::{body, check_key, check_value, consistency};
use crate::state::{Answer, Blob, Command};

/// The header a raw value's answer carries the index of its last write in.
const INDEX_HEADER: &str = "x-raftkv-index";

/// A value given as text (`value`) or as base64 (`value_base64`), at most
/// one of them; `name` is the text field's name.
fn given(text: Option<String>, base64: Option<String>, name: &str) -> Result<Option<Blob>, ApiError> {
    match (text, base64) {
        (Some(_), Some(_)) => Err(ApiError::bad_request(format!("give {name} or {name}_base64, not both"))),
        (Some(text), None) => Ok(Some(Blob::from(text))),
        (None, Some(encoded)) => {
            Blob::from_base64(&encoded).map(Some).map_err(|e| ApiError::bad_request(format!("{name}_base64: {e}")))
        }
        (None, None) => Ok(None),
    }
}

/// `{"key": K, "value": V, "index": I}`, with `value_base64` for a value
/// that is not UTF-8 text.
fn item(key: &str, value: &crate::state::Value) -> Value {
    let (field, encoded) = value.value.json_field();
    json!({"key": key, field: encoded, "index": value.index.0})
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SetBody {
    key: String,
    value: Option<String>,
    value_base64: Option<String>,
}

pub async fn set(
    State(agent): State<Arc<Agent>>,
    payload: Result<Json<SetBody>, JsonRejection>,
) -> Result<Json<Value>, ApiError> {
    let SetBody { key, value, value_base64 } = body(payload)?;
    let value = given(value, value_base64, "value")?
        .ok_or_else(|| ApiError::bad_request("missing value (\"value\": text or \"value_base64\": bytes)"))?;
    put(&agent, key, value).await
}

/// `PUT /api/v1/kv/{key}`: the body is the value, as it is.
pub async fn put_raw(
    State(agent): State<Arc<Agent>>,
    Path(key): Path<String>,
    value: Bytes,
) -> Result<Json<Value>, ApiError> {
    put(&agent, key, Blob(value)).await
}

async fn put(agent: &Agent, key: String, value: Blob) -> Result<Json<Value>, ApiError> {
    check_key(&agent.config.limits, &key)?;
    check_value(&agent.config.limits, &value.0)?;
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
    let found = read(&agent, &key, query.consistency.as_deref()).await?;
    let wants_json = headers
        .get(header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|accept| accept.contains("application/json"));
    if wants_json {
        return Ok(Json(item(&key, &found)).into_response());
    }
    // Text as it always was; other bytes as they are.
    let content_type = match found.value.as_text() {
        Some(_) => "text/plain; charset=utf-8",
        None => "application/octet-stream",
    };
    Ok(([(header::CONTENT_TYPE, content_type)], found.value.0).into_response())
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct RawQuery {
    consistency: Option<String>,
}

/// `GET /api/v1/kv/{key}`: the value's bytes as they are, the index of its
/// last write in `x-raftkv-index`.
pub async fn get_raw(
    State(agent): State<Arc<Agent>>,
    Path(key): Path<String>,
    Query(query): Query<RawQuery>,
) -> Result<Response, ApiError> {
    let found = read(&agent, &key, query.consistency.as_deref()).await?;
    let headers = [
        (header::CONTENT_TYPE, "application/octet-stream".to_string()),
        (header::HeaderName::from_static(INDEX_HEADER), found.index.0.to_string()),
    ];
    Ok((headers, found.value.0).into_response())
}

/// `key`'s value and its index, read as `consistency` asks.
async fn read(agent: &Agent, key: &str, consistency_asked: Option<&str>) -> Result<crate::state::Value, ApiError> {
    check_key(&agent.config.limits, key)?;
    let mode = consistency(consistency_asked)?;
    agent.read_barrier(mode).await?;
    let found = agent.kv.read().data.get(key).cloned();
    found.ok_or_else(|| ApiError::not_found(format!("no key {key:?}")))
}

pub async fn delete(State(agent): State<Arc<Agent>>, Query(query): Query<KeyQuery>) -> Result<Json<Value>, ApiError> {
    let key = query.key.ok_or_else(|| ApiError::bad_request("missing ?key="))?;
    remove(&agent, key).await
}

/// `DELETE /api/v1/kv/{key}`.
pub async fn delete_raw(State(agent): State<Arc<Agent>>, Path(key): Path<String>) -> Result<Json<Value>, ApiError> {
    remove(&agent, key).await
}

async fn remove(agent: &Agent, key: String) -> Result<Json<Value>, ApiError> {
    check_key(&agent.config.limits, &key)?;
    let (index, outcome) = agent.write(Command::Delete { key }).await?;
    let existed = matches!(outcome, Answer::Deleted { existed: true });
    Ok(Json(json!({"index": index.0, "deleted": existed})))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CasBody {
    key: String,
    /// Absent (or null) in both forms: the key must be absent.
    expected: Option<String>,
    expected_base64: Option<String>,
    value: Option<String>,
    value_base64: Option<String>,
}

pub async fn cas(
    State(agent): State<Arc<Agent>>,
    payload: Result<Json<CasBody>, JsonRejection>,
) -> Result<Response, ApiError> {
    let CasBody { key, expected, expected_base64, value, value_base64 } = body(payload)?;
    let expected = given(expected, expected_base64, "expected")?;
    let value = given(value, value_base64, "value")?
        .ok_or_else(|| ApiError::bad_request("missing value (\"value\": text or \"value_base64\": bytes)"))?;
    check_key(&agent.config.limits, &key)?;
    check_value(&agent.config.limits, &value.0)?;
    let (index, outcome) = agent.write(Command::Cas { key, expected, value }).await?;
    match outcome {
        Answer::Done => Ok(Json(json!({"index": index.0, "succeeded": true})).into_response()),
        Answer::CasFailed { current } => {
            let (field, current) = match current {
                Some(current) => match current.json_field() {
                    ("value", text) => ("current", text),
                    (_, encoded) => ("current_base64", encoded),
                },
                None => ("current", Value::Null),
            };
            let body = json!({
                "error": {
                    "code": "cas_mismatch",
                    "message": "the current value differs from the expected one",
                    // The comparison itself committed; nothing was swapped.
                    "outcome": "done",
                },
                field: current,
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
        // As the answer's JSON holds it (text may grow six times in escapes).
        bytes += key.len() + value.value.json_field_len();
        items.push(item(key, value));
    }
    Ok(Json(json!({"items": items, "more": more})))
}
