//! The serving side of the internal RPC: the leader runs what followers hand
//! it. Every decision is answered in the response body as a typed `Failure`
//! (see `wire`); a node that does not lead refuses, it never forwards again.

use std::collections::BTreeSet;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use raftkv_raft::transport::Ratelimited;
use raftkv_raft::NodeId;

use crate::agent::node::{Agent, Route};
use crate::agent::outcome::{Failure, Kind, Outcome};
use crate::agent::request::AdminOp;
use crate::agent::wire::{self, proto};
use crate::state::Command;

/// How long a member seen in the configuration is taken as one without
/// asking the raft node again (a forwarded batch would otherwise cost a round
/// trip to the raft loop); an id not seen is always looked up afresh.
const MEMBERS_FRESH: Duration = Duration::from_secs(1);

pub struct InternalService {
    agent: Arc<Agent>,
    /// The members as last looked up, and when.
    members: Mutex<(Instant, BTreeSet<NodeId>)>,
    /// Refused calls are logged at most once per period.
    refusals: Mutex<Ratelimited>,
}

impl InternalService {
    pub fn new(agent: Arc<Agent>) -> InternalService {
        InternalService {
            agent,
            members: Mutex::new((Instant::now(), BTreeSet::new())),
            refusals: Mutex::new(Ratelimited::new(Duration::from_secs(10))),
        }
    }

    /// The caller speaks for this cluster and this node leads: the
    /// operation may run. Returns the caller's id.
    fn admit<T>(&self, request: &tonic::Request<T>) -> Result<NodeId, Failure> {
        let from = self.agent.peers.sender.check(request).inspect_err(|failure| {
            let mut limiter = self.refusals.lock().unwrap_or_else(|p| p.into_inner());
            if limiter.allow() {
                let remote = raftkv_raft::transport::grpc::remote(request);
                tracing::warn!(
                    remote = ?remote,
                    reason = %failure.message,
                    suppressed = limiter.take_suppressed(),
                    "internal call refused"
                );
            }
        })?;
        if self.agent.book.is_removed(from) {
            return Err(Failure::not_done(
                Kind::Refused,
                format!(
                    "node {from} was removed from this cluster; it cannot take part or add itself back: an operator \
                     adds it again (raftkv join {from} ADDRESS, with an admin token)"
                ),
            ));
        }
        match self.agent.route() {
            Ok(Route::Here) => Ok(from),
            _ => Err(self.agent.not_leader()),
        }
    }

    /// Only members hand work to the leader (a node asking to join is the
    /// one caller that is not one yet).
    async fn member(&self, from: NodeId) -> Result<(), Failure> {
        {
            let (seen, members) = &*self.members.lock().unwrap_or_else(|p| p.into_inner());
            if members.contains(&from) && seen.elapsed() < MEMBERS_FRESH {
                return Ok(());
            }
        }
        let status = self.agent.raft.status().await.map_err(|e| Failure::from(e).changed_nothing())?;
        let membership = &status.membership;
        let members: BTreeSet<NodeId> = membership.voters.union(&membership.learners).copied().collect();
        let member = members.contains(&from);
        *self.members.lock().unwrap_or_else(|p| p.into_inner()) = (Instant::now(), members);
        if member {
            return Ok(());
        }
        Err(Failure::not_done(Kind::Refused, format!("node {from} is not a member of this cluster")))
    }

    async fn apply_batch(&self, commands: Vec<bytes::Bytes>) -> Vec<proto::ApplyResult> {
        use proto::apply_result::Result as Answer;
        // Undecodable commands are refused one by one; the rest go in together.
        let mut results: Vec<Option<Answer>> = Vec::with_capacity(commands.len());
        let mut valid = Vec::with_capacity(commands.len());
        let limits = self.agent.config.limits;
        for command in commands {
            match Command::decode(&command).and_then(|decoded| decoded.check_client(&limits)) {
                Ok(()) => {
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
        let admitted = match self.admit(&request) {
            Ok(from) => self.member(from).await,
            Err(refused) => Err(refused),
        };
        let response = match admitted {
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
        let status = self.agent.raft.status().await;
        let (members, membership_index, membership_committed) = match &status {
            Ok(status) => (
                status.membership.members().into_iter().map(|id| id.0).collect(),
                status.membership_index.0,
                status.membership_index <= status.commit_index,
            ),
            Err(_) => (Vec::new(), 0, false),
        };
        let activity = status.ok().map(|status| self.agent.activity_report(&status));
        Ok(tonic::Response::new(proto::ClusterInfoResponse {
            cluster_id: self.agent.cluster_id.clone(),
            leader_id,
            leader_raft_addr,
            node_id: self.agent.id.0,
            members,
            membership_index,
            membership_committed,
            removed: self.agent.removed().is_some(),
            activity,
        }))
    }

    async fn admin(
        &self,
        request: tonic::Request<proto::AdminRequest>,
    ) -> Result<tonic::Response<proto::AdminResponse>, tonic::Status> {
        let answer = match self.admit(&request) {
            Err(refused) => Err(refused),
            Ok(from) => match wire::admin_from_proto(request.into_inner()) {
                // A node asks to join for itself; members ask for anything else.
                // (Not `replace`: that removes another member.)
                Ok(AdminOp::Join { member, replace: false }) if member.id == from => {
                    self.agent.admin_here(AdminOp::Join { member, replace: false }).await
                }
                Ok(op) => match self.member(from).await {
                    Ok(()) => self.agent.admin_here(op).await,
                    Err(refused) => Err(refused),
                },
                Err(failure) => Err(failure),
            },
        };
        Ok(tonic::Response::new(wire::admin_answer_to_proto(answer)))
    }
}
