//! Operating the cluster: members and membership changes, leadership
//! transfer (each run on the leader through `Agent::admin`), and this node's
//! statistics, reloadable settings and snapshots.

use std::collections::BTreeMap;
use std::sync::Arc;

use axum::extract::rejection::JsonRejection;
use axum::extract::State;
use axum::Json;
use bytes::Bytes;
use raftkv_raft::{LogIndex, NodeId, RaftError};
use serde::Deserialize;
use serde_json::{json, Value};

use crate::agent::{AdminDone, AdminOp, Agent, Failure, Kind, Member, Outcome};
use crate::api::error::ApiError;
use crate::api::params::body;

pub async fn members(State(agent): State<Arc<Agent>>) -> Result<Json<Value>, ApiError> {
    let status = agent.raft.status().await.map_err(|e| Failure::from(e).changed_nothing())?;
    let peers = agent.kv.read().peers.clone();
    let book = agent.book.all();
    // Replication and contact are known on the leader only (null elsewhere).
    let leads = status.leader == Some(agent.id);
    let describe = |id: &NodeId, suffrage: &str| {
        let peer = peers.get(&id.0);
        let progress = status.peers.iter().find(|p| p.id == *id);
        let (match_index, trailing, last_contact_ms) = match progress {
            Some(p) => (Some(p.match_index.0), Some(p.trailing), p.last_contact.map(|d| d.as_millis() as u64)),
            None if leads && *id == agent.id => (Some(status.last_log_index.0), Some(0), Some(0)),
            None => (None, None, None),
        };
        json!({
            "id": id.0,
            "suffrage": suffrage,
            "raft_addr": book.get(id).cloned().or_else(|| peer.map(|p| p.raft_addr.clone())),
            "http_addr": peer.map(|p| p.http_addr.clone()),
            "leader": status.leader == Some(*id),
            "match_index": match_index,
            "trailing": trailing,
            "last_contact_ms": last_contact_ms,
        })
    };
    let mut members: Vec<Value> = status.membership.voters.iter().map(|id| describe(id, "voter")).collect();
    members.extend(status.membership.learners.iter().map(|id| describe(id, "nonvoter")));
    Ok(Json(json!({"members": members, "leader": status.leader.map(|l| l.0), "term": status.term.0})))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JoinBody {
    id: u64,
    raft_addr: String,
    http_addr: Option<String>,
}

pub async fn join(
    State(agent): State<Arc<Agent>>,
    payload: Result<Json<JoinBody>, JsonRejection>,
) -> Result<Json<Value>, ApiError> {
    let JoinBody { id, raft_addr, http_addr } = body(payload)?;
    let member = Member { id: NodeId(id), raft_addr, http_addr: http_addr.unwrap_or_default() };
    let index = changed(agent.admin(AdminOp::Join(member)).await?)?;
    Ok(Json(json!({"index": index.0})))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RemoveBody {
    id: u64,
}

pub async fn remove(
    State(agent): State<Arc<Agent>>,
    payload: Result<Json<RemoveBody>, JsonRejection>,
) -> Result<Json<Value>, ApiError> {
    let RemoveBody { id } = body(payload)?;
    let index = changed(agent.admin(AdminOp::Remove(NodeId(id))).await?)?;
    Ok(Json(json!({"index": index.0})))
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct TransferBody {
    id: Option<u64>,
}

/// `POST /api/v1/transfer-leader`: answers once the target leads.
pub async fn transfer_leader(State(agent): State<Arc<Agent>>, raw_body: Bytes) -> Result<Json<Value>, ApiError> {
    let TransferBody { id } = if raw_body.is_empty() {
        TransferBody::default()
    } else {
        serde_json::from_slice(&raw_body).map_err(|e| ApiError::bad_request(format!("bad JSON body: {e}")))?
    };
    match agent.admin(AdminOp::Transfer(id.map(NodeId))).await? {
        AdminDone::Transferred(target) => Ok(Json(json!({"target": target.0}))),
        other => Err(unexpected(other)),
    }
}

/// The index of a membership change that committed.
fn changed(done: AdminDone) -> Result<LogIndex, ApiError> {
    match done {
        AdminDone::Changed(index) => Ok(index),
        other => Err(unexpected(other)),
    }
}

fn unexpected(done: AdminDone) -> ApiError {
    Failure::internal(Outcome::Done, format!("unexpected answer to an admin operation: {done:?}")).into()
}

/// Every field of hashicorp/raft's `Stats()`, values as strings.
pub async fn stats(State(agent): State<Arc<Agent>>) -> Result<Json<BTreeMap<&'static str, String>>, ApiError> {
    let book = agent.book.clone();
    let stats = agent.raft.statistics_with(|id| book.get(id)).await.map_err(|e| Failure::from(e).changed_nothing())?;
    Ok(Json(stats.to_map()))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReloadBody {
    trailing_logs: Option<u64>,
    snapshot_threshold: Option<u64>,
    snapshot_interval_ms: Option<u64>,
    snapshot_log_bytes: Option<u64>,
    heartbeat_interval_ms: Option<u64>,
    election_timeout_min_ms: Option<u64>,
    election_timeout_max_ms: Option<u64>,
    promotion_max_lag: Option<u64>,
    promotion_stable_ms: Option<u64>,
}

/// `POST /api/maintain/config`: changes this node's reloadable settings; the
/// answer holds the settings now in force. An invalid combination is a 400
/// and changes nothing.
pub async fn reload_config(
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
        promotion_max_lag: body.promotion_max_lag,
        promotion_stable: ms(body.promotion_stable_ms),
    };
    let config = agent.raft.reload_config(reload).await.map_err(|error| match error {
        RaftError::Config(reason) => ApiError::bad_request(format!("configuration refused: {reason}")),
        other => ApiError::from(Failure::from(other)),
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
        "promotion_max_lag": config.promotion_max_lag,
        "promotion_stable_ms": ms(config.promotion_stable),
    })))
}

/// `POST /api/maintain/snapshot`: this node takes a snapshot now and compacts
/// its log behind it (keeping `trailing_logs`).
pub async fn take_snapshot(State(agent): State<Arc<Agent>>) -> Result<Json<Value>, ApiError> {
    match agent.raft.snapshot().await {
        Ok(id) => Ok(Json(json!({"index": id.index.0, "term": id.term.0}))),
        Err(RaftError::NothingNewToSnapshot { index }) => {
            Err(Failure::not_done(Kind::NothingNew, format!("nothing applied since the snapshot at index {}", index.0))
                .into())
        }
        Err(error) => Err(Failure::from(error).into()),
    }
}
