//! One raftkv server: an agent and its HTTP API, started together.

use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;

use crate::agent::{Agent, AgentConfig, AgentError};
use crate::api::auth::Tokens;
use crate::api::http::{Drain, HttpOptions};

/// How the HTTP API is served and guarded.
#[derive(Clone, Debug, Default)]
pub struct ApiOptions {
    pub http: HttpOptions,
    /// Bearer tokens with roles; `None`: every request goes through.
    pub tokens: Option<Tokens>,
}

/// A running node: its agent, and the HTTP API's drain.
pub struct Server {
    pub agent: Arc<Agent>,
    drain: Drain,
}

impl Server {
    /// A planned stop (SIGTERM, SIGINT): a leader first hands leadership
    /// to the most caught-up voter, then the API stops taking connections
    /// and lets the requests in flight finish (within `drain`), then the
    /// raft node stops, its log flushed.
    pub async fn stop(&self, drain: Duration) {
        self.agent.hand_off_leadership().await;
        let started = std::time::Instant::now();
        if self.drain.drain(drain).await {
            tracing::info!(elapsed_ms = started.elapsed().as_millis() as u64, "HTTP requests drained");
        } else {
            tracing::warn!(?drain, "HTTP requests still running after the drain period; cutting them off");
        }
        self.agent.shutdown().await;
    }
}

impl std::ops::Deref for Server {
    type Target = Arc<Agent>;

    fn deref(&self) -> &Arc<Agent> {
        &self.agent
    }
}

/// Starts a node: binds the HTTP address, starts the agent (raft and the
/// internal RPC), serves the API, then joins the cluster if the node is new.
/// Returns once it serves as a member.
pub async fn start(config: AgentConfig, api: ApiOptions) -> Result<Server, AgentError> {
    let http = config.http_addr;
    let listener = TcpListener::bind(http).await.map_err(|source| AgentError::Listen { addr: http, source })?;
    let agent = Agent::start(config).await?;
    let router = crate::api::router(agent.clone(), api.tokens.clone());
    let drain = Drain::new();
    agent.hold(crate::api::http::serve(router, listener, api.http, drain.clone()));
    if let Some(tokens) = &api.tokens {
        agent.hold(tokens.watch(std::time::Duration::from_secs(2)));
    }
    if let Err(error) = agent.join_if_new().await {
        agent.shutdown().await;
        return Err(error);
    }
    // A node asked to leave while it still joined has left: it stops at once.
    if !agent.has_left() {
        tracing::info!(id = %agent.id, http = %http, raft = %agent.config.raft_addr, "agent serving");
        agent.hold(tokio::spawn(agent.clone().log_when_ready()));
    }
    Ok(Server { agent, drain })
}
