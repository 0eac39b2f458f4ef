//! The HTTP API (axum, JSON), by concern: `kv` (keys), `admin` (members,
//! leadership, statistics, settings, snapshots), `backup` (whole-state
//! backups and restores). Every handler checks its input (`params`) before it
//! asks the agent for anything, and every failure is answered through one
//! mapping (`error`).

pub mod admin;
pub mod backup;
pub mod error;
pub mod kv;
pub mod params;

use std::sync::Arc;

use axum::extract::State;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;
use tokio::net::TcpListener;

use crate::agent::{Agent, Failure, Kind};
use crate::api::error::ApiError;

pub fn router(agent: Arc<Agent>) -> Router {
    Router::new()
        .route("/api/v1/set", post(kv::set))
        .route("/api/v1/get", get(kv::get_key))
        .route("/api/v1/delete", axum::routing::delete(kv::delete).post(kv::delete))
        .route("/api/v1/cas", post(kv::cas))
        .route("/api/v1/list", get(kv::list))
        .route("/api/v1/members", get(admin::members))
        .route("/api/v1/join", post(admin::join))
        .route("/api/v1/remove", post(admin::remove))
        .route("/api/v1/transfer-leader", post(admin::transfer_leader))
        .route("/api/v1/operator/autopilot/health", get(admin::autopilot_health))
        .route("/api/v1/gossip/members", get(admin::gossip_members))
        .route("/api/v1/leave", post(admin::leave))
        .route("/api/v1/snapshot", get(backup::save).post(backup::restore))
        .route("/api/maintain/stats", get(admin::stats))
        .route("/api/maintain/config", post(admin::reload_config))
        .route("/api/maintain/snapshot", post(admin::take_snapshot))
        .layer(axum::middleware::from_fn_with_state(agent.clone(), refuse_if_failed))
        .with_state(agent)
}

/// Serves the API on `listener` while the agent serves (it stops with it).
pub fn serve(agent: &Arc<Agent>, listener: TcpListener) {
    let router = router(agent.clone());
    agent.hold(tokio::spawn(async move {
        use axum::serve::ListenerExt;
        // Answers leave at once, not after a delayed ACK (Nagle).
        let listener = listener.tap_io(|tcp| {
            let _ = tcp.set_nodelay(true);
        });
        if let Err(error) = axum::serve(listener, router).await {
            tracing::error!(%error, "HTTP server stopped");
        }
    }));
}

/// A node whose raft node failed for good answers nothing but 503
/// `node_failed`: not even a stale read of a state that no longer advances.
async fn refuse_if_failed(
    State(agent): State<Arc<Agent>>,
    request: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    match agent.raft.failure() {
        Some(reason) => {
            let message = format!("this node failed and stopped ({reason}); ask another node");
            ApiError::from(Failure::not_done(Kind::NodeFailed, message)).into_response()
        }
        None => next.run(request).await,
    }
}
