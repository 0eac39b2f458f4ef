//! The internal RPC on the wire: the generated service, the conversions of
//! failures and admin operations to and from their messages, the sender's
//! identity in the request metadata, and the calling side (`Peers`: one
//! client per node address).
//!
//! How a caller reads a failed call: a `Failure` in the response is the
//! serving node's own verdict, outcome included. A gRPC error never is (the
//! service answers every decision in the body), so it is read from what the
//! transport knows: a call that could not connect was not sent (not done);
//! anything after the request left may have been carried out (unknown).

use std::time::Duration;

use raftkv_raft::transport::grpc::{caused_by, is_connect_error, ChannelOptions, Channels, Identity};
use raftkv_raft::transport::tls::Tls;
use raftkv_raft::{LogIndex, NodeId};

use crate::agent::outcome::{Failure, Kind, Outcome};
use crate::agent::request::{AdminDone, AdminOp, Member};

pub mod proto {
    tonic::include_proto!("raftkv.internal.v1");
}

use proto::internal_client::InternalClient;

/// Largest internal message: a forwarded batch of large writes.
pub const MAX_MESSAGE: usize = 64 << 20;

/// Who sends internal calls: this node's identity, stamped on every request
/// by the transport's one wire edge and checked on receipt by the same.
#[derive(Clone, Debug)]
pub struct Sender {
    pub identity: Identity,
}

impl Sender {
    /// A request to node `to` (when known), with a deadline.
    pub fn request<T>(&self, message: T, to: Option<NodeId>, timeout: Duration) -> tonic::Request<T> {
        let mut request = tonic::Request::new(message);
        request.set_timeout(timeout);
        self.identity.header(to).stamp(&mut request);
        request
    }

    /// Whether `request` comes from another node of this cluster speaking
    /// this protocol; a refusal says who is who.
    pub fn check<T>(&self, request: &tonic::Request<T>) -> Result<NodeId, Failure> {
        match self.identity.check(request) {
            Ok(header) => Ok(header.from),
            Err(status) => Err(Failure::not_done(Kind::Refused, status.message())),
        }
    }
}

/// The channels internal calls use, apart from raft's (a forwarded batch of
/// megabytes must not queue a heartbeat behind it on one connection), over
/// mutual TLS when the node has it.
pub fn channels(tls: Option<Tls>) -> Channels {
    Channels::new(ChannelOptions { tls, ..ChannelOptions::default() })
}

/// What a failed call's gRPC status says of its outcome (see the module doc).
pub fn call_failure(address: &str, status: &tonic::Status) -> Failure {
    if is_connect_error(status) {
        return Failure::not_done(
            Kind::NotSent,
            format!("cannot reach node {address} ({}); the request was not sent", status.message()),
        );
    }
    let kind = if timed_out(status) { Kind::Timeout } else { Kind::OutcomeUnknown };
    Failure::unknown(kind, format!("the call to {address} failed after it was sent: {}", status.message()))
}

/// Whether the call ran out of time: the server's deadline, or the client's
/// own (which tonic reports as a cancelled call caused by `TimeoutExpired`).
fn timed_out(status: &tonic::Status) -> bool {
    status.code() == tonic::Code::DeadlineExceeded || caused_by::<tonic::TimeoutExpired>(status)
}

/// A client of the internal service on `channel`, whose messages either way
/// hold at most `max_message` bytes.
pub fn client(channel: tonic::transport::Channel, max_message: usize) -> InternalClient<tonic::transport::Channel> {
    InternalClient::new(channel).max_decoding_message_size(max_message).max_encoding_message_size(max_message)
}

/// The calling side of admin operations.
pub struct Peers {
    pub sender: Sender,
    pub channels: Channels,
}

impl Peers {
    /// Runs an admin operation on the node at `address` (the leader, `to`).
    pub async fn admin(
        &self,
        address: &str,
        to: Option<NodeId>,
        op: AdminOp,
        timeout: Duration,
    ) -> Result<AdminDone, Failure> {
        let cached = self
            .channels
            .get(address)
            .map_err(|e| Failure::not_done(Kind::NotSent, format!("{e}; the request was not sent")))?;
        let request = self.sender.request(admin_to_proto(op), to, timeout);
        match client(cached.channel(), MAX_MESSAGE).admin(request).await {
            Ok(response) => admin_answer_from_proto(response.into_inner()),
            Err(status) => {
                self.channels.evict_on_connect_error(&cached, &status);
                Err(call_failure(address, &status))
            }
        }
    }
}

/// Asks any member at `address` which cluster it belongs to and who leads
/// (before joining: the caller has no cluster id yet, so this call carries
/// none and is the one call served without a check).
/// Bounded: a member that accepts connections but never answers is given up
/// on, so that the caller tries the next.
pub async fn cluster_info(channels: &Channels, address: &str) -> Result<proto::ClusterInfoResponse, String> {
    const TIMEOUT: Duration = Duration::from_secs(3);
    let channel = channels.connect(address).await.map_err(|e| e.to_string())?;
    let mut request = tonic::Request::new(proto::ClusterInfoRequest {});
    request.set_timeout(TIMEOUT);
    let answer = tokio::time::timeout(
        TIMEOUT + Duration::from_secs(1),
        client(channel.channel(), MAX_MESSAGE).cluster_info(request),
    )
    .await
    .map_err(|_| format!("no answer within {TIMEOUT:?}"))?
    .map_err(|s| s.message().to_string())?;
    Ok(answer.into_inner())
}

impl From<Outcome> for proto::Outcome {
    fn from(outcome: Outcome) -> proto::Outcome {
        match outcome {
            Outcome::NotDone => proto::Outcome::NotDone,
            Outcome::Done => proto::Outcome::Done,
            Outcome::Unknown => proto::Outcome::Unknown,
        }
    }
}

impl From<Kind> for proto::Kind {
    fn from(kind: Kind) -> proto::Kind {
        match kind {
            Kind::BadRequest => proto::Kind::BadRequest,
            Kind::TooLarge => proto::Kind::TooLarge,
            Kind::NoLeader => proto::Kind::NoLeader,
            Kind::NotSent => proto::Kind::NotSent,
            Kind::LeadershipTransfer => proto::Kind::LeadershipTransfer,
            Kind::Refused => proto::Kind::Refused,
            Kind::TransferFailed => proto::Kind::TransferFailed,
            Kind::NotReady => proto::Kind::NotReady,
            Kind::ShuttingDown => proto::Kind::ShuttingDown,
            Kind::NodeFailed => proto::Kind::NodeFailed,
            Kind::Timeout => proto::Kind::Timeout,
            Kind::OutcomeUnknown => proto::Kind::OutcomeUnknown,
            Kind::NothingNew => proto::Kind::NothingNew,
            Kind::RestoreRunning => proto::Kind::RestoreRunning,
            Kind::RestoreFailed => proto::Kind::RestoreFailed,
            Kind::NotCaughtUp => proto::Kind::NotCaughtUp,
            Kind::InsufficientStorage => proto::Kind::InsufficientStorage,
            Kind::Internal => proto::Kind::Internal,
        }
    }
}

pub fn failure_to_proto(failure: Failure) -> proto::Failure {
    proto::Failure {
        kind: proto::Kind::from(failure.kind).into(),
        outcome: proto::Outcome::from(failure.outcome).into(),
        message: failure.message,
    }
}

/// A failure as another node sent it. Values this node does not know read
/// as the least it may assume: an internal error whose outcome is unknown.
pub fn failure_from_proto(failure: proto::Failure) -> Failure {
    let outcome = match proto::Outcome::try_from(failure.outcome) {
        Ok(proto::Outcome::NotDone) => Outcome::NotDone,
        Ok(proto::Outcome::Done) => Outcome::Done,
        Ok(proto::Outcome::Unknown | proto::Outcome::Unspecified) | Err(_) => Outcome::Unknown,
    };
    let kind = proto::Kind::try_from(failure.kind)
        .ok()
        .and_then(|kind| Kind::ALL.into_iter().find(|k| proto::Kind::from(*k) == kind))
        .unwrap_or(Kind::Internal);
    Failure { kind, outcome, message: failure.message }
}

pub fn admin_to_proto(op: AdminOp) -> proto::AdminRequest {
    use proto::admin_request::Op;
    let op = match op {
        AdminOp::Join { member, replace } => {
            Op::Join(proto::Join { id: member.id.0, raft_addr: member.raft_addr, http_addr: member.http_addr, replace })
        }
        AdminOp::Remove(id) => Op::Remove(id.0),
        AdminOp::Transfer(target) => Op::Transfer(proto::Transfer { target: target.map_or(0, |t| t.0) }),
        AdminOp::AutopilotState => Op::Autopilot(proto::AutopilotQuery {}),
    };
    proto::AdminRequest { op: Some(op) }
}

pub fn admin_from_proto(request: proto::AdminRequest) -> Result<AdminOp, Failure> {
    use proto::admin_request::Op;
    match request.op {
        Some(Op::Join(join)) => Ok(AdminOp::Join {
            member: Member { id: NodeId(join.id), raft_addr: join.raft_addr, http_addr: join.http_addr },
            replace: join.replace,
        }),
        Some(Op::Autopilot(_)) => Ok(AdminOp::AutopilotState),
        Some(Op::Remove(id)) => Ok(AdminOp::Remove(NodeId(id))),
        Some(Op::Transfer(transfer)) => {
            Ok(AdminOp::Transfer((transfer.target != 0).then_some(NodeId(transfer.target))))
        }
        None => Err(Failure::bad_request("admin request without an operation")),
    }
}

pub fn admin_answer_to_proto(answer: Result<AdminDone, Failure>) -> proto::AdminResponse {
    use proto::admin_response::Result as Answer;
    let result = match answer {
        Ok(AdminDone::Changed(index)) => Answer::Done(proto::AdminDone { index: index.0, ..Default::default() }),
        Ok(AdminDone::Transferred(leader)) => Answer::Done(proto::AdminDone { leader: leader.0, ..Default::default() }),
        Ok(AdminDone::Autopilot(state)) => match serde_json::to_vec(&state) {
            Ok(json) => Answer::Done(proto::AdminDone { autopilot_json: json.into(), ..Default::default() }),
            Err(error) => Answer::Failure(failure_to_proto(Failure::internal(
                Outcome::NotDone,
                format!("cannot encode the autopilot state: {error}"),
            ))),
        },
        Err(failure) => Answer::Failure(failure_to_proto(failure)),
    };
    proto::AdminResponse { result: Some(result) }
}

fn admin_answer_from_proto(response: proto::AdminResponse) -> Result<AdminDone, Failure> {
    use proto::admin_response::Result as Answer;
    match response.result {
        Some(Answer::Done(done)) if !done.autopilot_json.is_empty() => {
            serde_json::from_slice(&done.autopilot_json).map(|state| AdminDone::Autopilot(Box::new(state))).map_err(
                |e| Failure::internal(Outcome::NotDone, format!("the leader's autopilot state does not decode: {e}")),
            )
        }
        Some(Answer::Done(done)) if done.leader != 0 => Ok(AdminDone::Transferred(NodeId(done.leader))),
        Some(Answer::Done(done)) => Ok(AdminDone::Changed(LogIndex(done.index))),
        Some(Answer::Failure(failure)) => Err(failure_from_proto(failure)),
        None => Err(Failure::internal(Outcome::Unknown, "the leader answered an admin call with nothing")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn failures_cross_the_wire_unchanged() {
        for kind in Kind::ALL {
            for outcome in [Outcome::NotDone, Outcome::Done, Outcome::Unknown] {
                let failure = Failure { kind, outcome, message: format!("{kind:?}") };
                assert_eq!(failure_from_proto(failure_to_proto(failure.clone())), failure);
            }
        }
    }

    #[test]
    fn a_failure_that_says_nothing_promises_nothing() {
        let silent = proto::Failure { kind: 99, outcome: 0, message: "?".into() };
        let failure = failure_from_proto(silent);
        assert_eq!((failure.kind, failure.outcome), (Kind::Internal, Outcome::Unknown));
    }

    #[test]
    fn admin_operations_cross_the_wire_unchanged() {
        let member = Member { id: NodeId(4), raft_addr: "127.0.0.1:9004".into(), http_addr: "h".into() };
        for op in [
            AdminOp::Join { member: member.clone(), replace: false },
            AdminOp::Join { member, replace: true },
            AdminOp::AutopilotState,
            AdminOp::Remove(NodeId(2)),
            AdminOp::Transfer(None),
            AdminOp::Transfer(Some(NodeId(3))),
        ] {
            assert_eq!(admin_from_proto(admin_to_proto(op.clone())), Ok(op));
        }
        let state = crate::agent::autopilot::AutopilotState {
            healthy: true,
            failure_tolerance: 1,
            leader: 1,
            term: 2,
            voters: vec![1, 2, 3],
            servers: Vec::new(),
            remove: None,
        };
        let answers =
            [AdminDone::Changed(LogIndex(7)), AdminDone::Transferred(NodeId(2)), AdminDone::Autopilot(Box::new(state))];
        for done in answers {
            assert_eq!(admin_answer_from_proto(admin_answer_to_proto(Ok(done.clone()))), Ok(done));
        }
    }

    #[test]
    fn the_header_check_refuses_strangers() {
        let sender = |cluster: &str, id: u64| Sender { identity: Identity::new(cluster, NodeId(id), "127.0.0.1:1") };
        let ours = sender("abc", 1);
        let request = |from: &Sender| from.request((), Some(NodeId(1)), Duration::from_secs(1));
        assert_eq!(ours.check(&request(&sender("abc", 2))), Ok(NodeId(2)));
        for stranger in [sender("xyz", 2), sender("", 2)] {
            let refused = ours.check(&request(&stranger)).unwrap_err();
            assert_eq!((refused.kind, refused.outcome), (Kind::Refused, Outcome::NotDone), "{refused}");
        }
        assert!(ours.check(&tonic::Request::new(())).is_err());
    }
}
