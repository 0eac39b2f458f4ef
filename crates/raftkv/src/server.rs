//! One raftkv server: an agent and its HTTP API, started together.

use std::sync::Arc;

use tokio::net::TcpListener;

use crate::agent::{Agent, AgentConfig, AgentError};
use crate::api::auth::Tokens;
use crate::api::http::HttpOptions;

/// How the HTTP API is served and guarded.
#[derive(Clone, Debug, Default)]
pub struct ApiOptions {
    pub http: HttpOptions,
    /// Bearer tokens with roles; `None`: every request goes through.
    pub tokens: Option<Tokens>,
}

/// Starts a node: binds the HTTP address, starts the agent (raft and the
/// internal RPC), serves the API, then joins the cluster if the node is new.
/// Returns once it serves as a member.
pub async fn start(config: AgentConfig, api: ApiOptions) -> Result<Arc<Agent>, AgentError> {
    let http = config.http_addr;
    let listener = TcpListener::bind(http).await.map_err(|source| AgentError::Listen { addr: http, source })?;
    let agent = Agent::start(config).await?;
    let router = crate::api::router(agent.clone(), api.tokens.clone());
    agent.hold(crate::api::http::serve(router, listener, api.http));
    if let Some(tokens) = &api.tokens {
        agent.hold(tokens.watch(std::time::Duration::from_secs(2)));
    }
    if let Err(error) = agent.join_if_new().await {
        agent.shutdown().await;
        return Err(error);
    }
    tracing::info!(id = %agent.id, http = %http, raft = %agent.config.raft_addr, "agent serving");
    Ok(agent)
}
