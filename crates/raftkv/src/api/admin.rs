//! Operating the cluster: members and membership changes, leadership
//! transfer (each run on the leader through `Agent::admin`), and this node's
//! statistics, reloadable settings and snapshots.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::rejection::JsonRejection;
use axum::extract::State;
use axum::Json;
use bytes::Bytes;
use raftkv_raft::{LogIndex, NodeId, RaftError, Status};
use serde::Deserialize;
use serde_json::{json, Value};

use crate::agent::autopilot::AutopilotConfig;
use crate::agent::{AdminDone, AdminOp, Agent, Failure, Kind, Member, Outcome};
use crate::api::error::ApiError;
use crate::api::params::body;
use crate::state::Peer;

pub async fn members(State(agent): State<Arc<Agent>>) -> Result<Json<Value>, ApiError> {
    let status = agent.raft.status().await.map_err(|e| Failure::from(e).changed_nothing())?;
    if status.membership.voters.is_empty() && status.membership.learners.is_empty() {
        // Started, not a member yet (joining): an empty list would read as
        // a cluster with no members.
        let message = "this node knows no configuration yet (it is joining); ask another node or retry";
        return Err(Failure::not_done(Kind::NotReady, message).into());
    }
    let peers = agent.kv.read().peers.clone();
    // Replication, contact and health are known on the leader only (null
    // elsewhere).
    let leads = status.leader == Some(agent.id);
    let health = agent.autopilot_state().filter(|_| leads);
    let describe = |id: NodeId, suffrage: &str| {
        let progress = status.peers.iter().find(|p| p.id == id);
        let (match_index, trailing, last_contact_ms) = match progress {
            Some(p) => (Some(p.match_index.0), Some(p.trailing), p.last_contact.map(|d| d.as_millis() as u64)),
            None if leads && id == agent.id => (Some(status.last_log_index.0), Some(0), Some(0)),
            None => (None, None, None),
        };
        let server = health.as_ref().and_then(|h| h.servers.iter().find(|s| s.id == id.0));
        let gossip = agent.gossip.as_ref().and_then(|g| g.view().liveness(id.0));
        let (raft_addr, http_addr) = addresses(&agent, &peers, id);
        json!({
            "id": id.0,
            "suffrage": suffrage,
            "raft_addr": raft_addr,
            "http_addr": http_addr,
            "leader": status.leader == Some(id),
            "match_index": match_index,
            "trailing": trailing,
            "last_contact_ms": last_contact_ms,
            "healthy": server.map(|s| s.healthy),
            "stable": server.map(|s| s.stable),
            "gossip": gossip,
        })
    };
    let members: Vec<Value> = suffrages(&status).into_iter().map(|(id, suffrage)| describe(id, suffrage)).collect();
    // Ids removed from the cluster, whose traffic this node refuses.
    let removed: Vec<u64> = agent.book.removed().into_iter().map(|id| id.0).collect();
    Ok(Json(
        json!({"members": members, "leader": status.leader.map(|l| l.0), "term": status.term.0, "removed": removed}),
    ))
}

/// The members of `status`'s configuration, voters first, each with its
/// suffrage: `voter`, `staging` (a learner to be promoted once caught up) or
/// `nonvoter`.
pub(crate) fn suffrages(status: &Status) -> Vec<(NodeId, &'static str)> {
    let learners = status.membership.learners.iter().map(|id| {
        let suffrage = if status.membership.is_staging(*id) { "staging" } else { "nonvoter" };
        (*id, suffrage)
    });
    status.membership.voters.iter().map(|id| (*id, "voter")).chain(learners).collect()
}

/// Where member `id` listens: raft (the address book's, else its peer
/// record's) and HTTP (its peer record's), as far as known.
pub(crate) fn addresses(agent: &Agent, peers: &BTreeMap<u64, Peer>, id: NodeId) -> (Option<String>, Option<String>) {
    let peer = peers.get(&id.0);
    (agent.book.get(id).or_else(|| peer.map(|p| p.raft_addr.clone())), peer.map(|p| p.http_addr.clone()))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JoinBody {
    id: u64,
    raft_addr: String,
    http_addr: Option<String>,
    /// A member with this id at another address is removed first.
    #[serde(default)]
    replace: bool,
}

pub async fn join(
    State(agent): State<Arc<Agent>>,
    payload: Result<Json<JoinBody>, JsonRejection>,
) -> Result<Json<Value>, ApiError> {
    let JoinBody { id, raft_addr, http_addr, replace } = body(payload)?;
    let member = Member { id: NodeId(id), raft_addr, http_addr: http_addr.unwrap_or_default() };
    let index = changed(agent.admin(AdminOp::Join { member, replace }).await?)?;
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
    if let Some(reason) = agent.removed() {
        return Ok(Json(BTreeMap::from([("state", "Removed".to_string()), ("removed", reason)])));
    }
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
    last_contact_threshold_ms: Option<u64>,
    max_trailing_logs: Option<u64>,
    server_stabilization_ms: Option<u64>,
    cleanup_dead_servers: Option<bool>,
    min_quorum: Option<usize>,
}

/// `POST /api/maintain/config`: changes this node's reloadable settings (raft
/// and autopilot); the answer holds the settings now in force. An invalid
/// combination is a 400 and changes nothing.
pub async fn reload_config(
    State(agent): State<Arc<Agent>>,
    payload: Result<Json<ReloadBody>, JsonRejection>,
) -> Result<Json<Value>, ApiError> {
    let body = body(payload)?;
    let ms = |v: Option<u64>| v.map(Duration::from_millis);
    let raft = raftkv_raft::ReloadableConfig {
        trailing_logs: body.trailing_logs,
        snapshot_threshold: body.snapshot_threshold,
        snapshot_interval: ms(body.snapshot_interval_ms),
        snapshot_log_bytes: body.snapshot_log_bytes,
        heartbeat_interval: ms(body.heartbeat_interval_ms),
        election_timeout_min: ms(body.election_timeout_min_ms),
        election_timeout_max: ms(body.election_timeout_max_ms),
        ..Default::default()
    };
    let current = agent.autopilot_config();
    let autopilot = AutopilotConfig {
        last_contact_threshold: ms(body.last_contact_threshold_ms).unwrap_or(current.last_contact_threshold),
        max_trailing_logs: body.max_trailing_logs.unwrap_or(current.max_trailing_logs),
        server_stabilization_time: ms(body.server_stabilization_ms).unwrap_or(current.server_stabilization_time),
        cleanup_dead_servers: body.cleanup_dead_servers.unwrap_or(current.cleanup_dead_servers),
        min_quorum: body.min_quorum.unwrap_or(current.min_quorum),
    };
    let config = agent.reload(raft, autopilot).await?;
    let autopilot = agent.autopilot_config();
    let ms = |d: Duration| d.as_millis() as u64;
    Ok(Json(json!({
        "trailing_logs": config.trailing_logs,
        "snapshot_threshold": config.snapshot_threshold,
        "snapshot_interval_ms": ms(config.snapshot_interval),
        "snapshot_log_bytes": config.snapshot_log_bytes,
        "heartbeat_interval_ms": ms(config.heartbeat_interval),
        "election_timeout_min_ms": ms(config.election_timeout_min),
        "election_timeout_max_ms": ms(config.election_timeout_max),
        "last_contact_threshold_ms": ms(autopilot.last_contact_threshold),
        "max_trailing_logs": autopilot.max_trailing_logs,
        "server_stabilization_ms": ms(autopilot.server_stabilization_time),
        "cleanup_dead_servers": autopilot.cleanup_dead_servers,
        "min_quorum": autopilot.min_quorum,
    })))
}

/// `GET /api/v1/operator/autopilot/health`: the leader's view (asked of a
/// follower, it is fetched from the leader): every server's health and how
/// long it has held, the failure tolerance (Consul's `operator autopilot
/// state`).
pub async fn autopilot_health(State(agent): State<Arc<Agent>>) -> Result<Json<Value>, ApiError> {
    match agent.admin(AdminOp::AutopilotState).await.map_err(Failure::changed_nothing)? {
        AdminDone::Autopilot(state) => Ok(Json(json!(state))),
        other => Err(unexpected(other)),
    }
}

/// `GET /api/v1/gossip/members`: every node gossip knows, as this node
/// sees it (Consul's `members`), with its addresses and liveness.
pub async fn gossip_members(State(agent): State<Arc<Agent>>) -> Result<Json<Value>, ApiError> {
    let Some(gossip) = agent.gossip.as_ref() else {
        return Err(ApiError::from(Failure::not_done(Kind::Refused, "this node does not gossip (no --serf-addr)")));
    };
    let view = gossip.view();
    let members: Vec<Value> = view
        .members
        .iter()
        .map(|m| {
            json!({
                "id": m.id.node,
                "gossip_addr": m.id.gossip_addr.to_string(),
                "raft_addr": m.id.raft_addr,
                "http_addr": m.id.http_addr,
                "generation": m.id.generation,
                "liveness": m.liveness,
            })
        })
        .collect();
    Ok(Json(json!({"members": members})))
}

/// `POST /api/v1/leave`: this node leaves the cluster (leadership handed
/// over, removed from the configuration, gossip told) and its process ends
/// once the answer is out.
pub async fn leave(State(agent): State<Arc<Agent>>) -> Result<Json<Value>, ApiError> {
    // Apart from the request: a client that hangs up mid-way does not leave
    // the node removed from the cluster but still running.
    let leaving = agent.clone();
    match tokio::spawn(async move { leaving.leave().await }).await {
        Ok(left) => left?,
        Err(error) => return Err(Failure::internal(Outcome::Unknown, format!("leaving stopped: {error}")).into()),
    }
    Ok(Json(json!({"left": agent.id.0})))
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
