//! `GET /v1/health` and `GET /v1/ready`, for supervisors and load balancers
//! (Kubernetes' liveness and readiness probes, Consul's checks). Both are
//! open to every caller, like etcd's `/health`: they tell no more than
//! whether the node can serve, and a probe carries no token.
//!
//! - health: the process runs and its raft node has not failed or been
//!   removed (200), else 503 `node_failed`: restart it, or look at it;
//! - ready: healthy, a leader is known, and this node has applied every
//!   entry it knows to be committed (200), else 503 `not_ready`: send it
//!   no traffic yet.

use std::sync::Arc;

use axum::extract::State;
use axum::Json;
use serde_json::{json, Value};

use crate::agent::{Agent, Failure, Kind};
use crate::api::error::ApiError;

/// `GET /v1/health`.
pub async fn health(State(agent): State<Arc<Agent>>) -> Result<Json<Value>, ApiError> {
    alive(&agent)?;
    Ok(Json(json!({"health": true, "id": agent.id.0})))
}

/// `GET /v1/ready`.
pub async fn ready(State(agent): State<Arc<Agent>>) -> Result<Json<Value>, ApiError> {
    alive(&agent)?;
    let ready = agent.readiness().await?;
    Ok(Json(json!({
        "ready": true,
        "id": agent.id.0,
        "leader": ready.leader.0,
        "term": ready.term.0,
        "commit_index": ready.commit_index.0,
        "applied_index": ready.applied_index.0,
    })))
}

fn alive(agent: &Agent) -> Result<(), Failure> {
    if let Some(reason) = agent.raft.failure() {
        return Err(Failure::not_done(Kind::NodeFailed, format!("this node failed and stopped: {reason}")));
    }
    if let Some(reason) = agent.removed() {
        return Err(Failure::not_done(Kind::NodeFailed, reason));
    }
    Ok(())
}
