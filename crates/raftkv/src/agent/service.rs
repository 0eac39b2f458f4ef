//! The serving side of the internal RPC: the leader runs what followers hand
//! it. Every decision is answered in the response body as a typed `Failure`
//! (see `wire`); a node that does not lead refuses, it never forwards again.

use std::sync::Arc;

use crate::agent::node::{Agent, Route};
use crate::agent::outcome::{Failure, Outcome};
use crate::agent::wire::{self, proto};
use crate::state::Command;

pub struct InternalService {
    agent: Arc<Agent>,
}

impl InternalService {
    pub fn new(agent: Arc<Agent>) -> InternalService {
        InternalService { agent }
    }

    /// The caller is one of ours and this node leads: the operation may run.
    fn admit<T>(&self, request: &tonic::Request<T>) -> Result<(), Failure> {
        self.agent.peers.sender.check(request)?;
        match self.agent.route() {
            Ok(Route::Here) => Ok(()),
            _ => Err(self.agent.not_leader()),
        }
    }

    async fn apply_batch(&self, commands: Vec<bytes::Bytes>) -> Vec<proto::ApplyResult> {
        use proto::apply_result::Result as Answer;
        // Undecodable commands are refused one by one; the rest go in together.
        let mut results: Vec<Option<Answer>> = Vec::with_capacity(commands.len());
        let mut valid = Vec::with_capacity(commands.len());
        for command in commands {
            match Command::decode(&command) {
                Ok(_) => {
                    results.push(None);
                    valid.push(command);
                }
                Err(reason) => {
                    results.push(Some(Answer::Failure(wire::failure_to_proto(Failure::bad_request(reason)))))
                }
            }
        }
        let mut applied = self.agent.raft.apply_each(valid, self.agent.config.request_timeout).await.into_iter();
        results
            .into_iter()
            .map(|result| {
                let result = result.unwrap_or_else(|| match applied.next() {
                    Some(Ok((index, response))) => Answer::Applied(proto::Applied { index: index.0, response }),
                    Some(Err(error)) => Answer::Failure(wire::failure_to_proto(Failure::from(error))),
                    None => Answer::Failure(wire::failure_to_proto(Failure::internal(
                        Outcome::Unknown,
                        "no result for a proposed command",
                    ))),
                });
                proto::ApplyResult { result: Some(result) }
            })
            .collect()
    }
}

#[tonic::async_trait]
impl proto::internal_server::Internal for InternalService {
    async fn apply_batch(
        &self,
        request: tonic::Request<proto::ApplyBatchRequest>,
    ) -> Result<tonic::Response<proto::ApplyBatchResponse>, tonic::Status> {
        let response = match self.admit(&request) {
            Err(refused) => {
                proto::ApplyBatchResponse { refused: Some(wire::failure_to_proto(refused)), results: Vec::new() }
            }
            Ok(()) => {
                let results = self.apply_batch(request.into_inner().commands).await;
                proto::ApplyBatchResponse { refused: None, results }
            }
        };
        Ok(tonic::Response::new(response))
    }

    async fn cluster_info(
        &self,
        _request: tonic::Request<proto::ClusterInfoRequest>,
    ) -> Result<tonic::Response<proto::ClusterInfoResponse>, tonic::Status> {
        let (leader_id, leader_raft_addr) = match self.agent.route() {
            Ok(Route::Here) => (self.agent.id.0, self.agent.config.raft_addr.to_string()),
            Ok(Route::Leader { id, address }) => (id.0, address),
            Err(_) => (0, String::new()),
        };
        Ok(tonic::Response::new(proto::ClusterInfoResponse {
            cluster_id: self.agent.cluster_id.clone(),
            leader_id,
            leader_raft_addr,
        }))
    }

    async fn admin(
        &self,
        request: tonic::Request<proto::AdminRequest>,
    ) -> Result<tonic::Response<proto::AdminResponse>, tonic::Status> {
        let answer = match self.admit(&request) {
            Err(refused) => Err(refused),
            Ok(()) => match wire::admin_from_proto(request.into_inner()) {
                Ok(op) => self.agent.admin_here(op).await,
                Err(failure) => Err(failure),
            },
        };
        Ok(tonic::Response::new(wire::admin_answer_to_proto(answer)))
    }
}
