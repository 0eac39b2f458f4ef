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

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::time::Duration;

use raftkv_raft::{LogIndex, NodeId};
use tonic::transport::{Channel, Endpoint};

use crate::agent::outcome::{Failure, Kind, Outcome};
use crate::agent::request::{AdminDone, AdminOp, Member};

pub mod proto {
    tonic::include_proto!("raftkv.internal.v1");
}

use proto::internal_client::InternalClient;

/// Largest internal message: a forwarded batch of large writes.
pub const MAX_MESSAGE: usize = 64 << 20;
/// How long a caller tries to open a connection to another node.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(1);

/// Version of the internal protocol; a node refuses calls of another.
pub const PROTOCOL_VERSION: u32 = 2;
const VERSION_KEY: &str = "raftkv-internal-version";
const CLUSTER_KEY: &str = "raftkv-cluster-id";
const FROM_KEY: &str = "raftkv-from";

/// Who sends internal calls: stamped on every request, checked on receipt.
#[derive(Clone, Debug)]
pub struct Sender {
    pub cluster_id: String,
    pub id: NodeId,
}

impl Sender {
    pub fn request<T>(&self, message: T, timeout: Duration) -> tonic::Request<T> {
        let mut request = tonic::Request::new(message);
        request.set_timeout(timeout);
        let metadata = request.metadata_mut();
        metadata.insert(VERSION_KEY, PROTOCOL_VERSION.into());
        metadata.insert(FROM_KEY, self.id.0.into());
        // A cluster id is ASCII hex (see `datadir`); one that is not cannot be
        // stamped, and the receiver then refuses the call as from no cluster.
        if let Ok(value) = self.cluster_id.parse() {
            metadata.insert(CLUSTER_KEY, value);
        }
        request
    }

    /// Whether `request` comes from a node of this node's cluster speaking
    /// this protocol; a refusal says who is who.
    pub fn check<T>(&self, request: &tonic::Request<T>) -> Result<NodeId, Failure> {
        let metadata = request.metadata();
        let text = |key: &str| metadata.get(key).and_then(|v| v.to_str().ok()).unwrap_or_default();
        let refuse = |message: String| Err(Failure::not_done(Kind::Refused, message));
        let version = text(VERSION_KEY);
        if version != PROTOCOL_VERSION.to_string() {
            return refuse(format!(
                "internal protocol version mismatch: the caller speaks {version:?}, node {} speaks {PROTOCOL_VERSION}",
                self.id
            ));
        }
        let Ok(from) = text(FROM_KEY).parse::<u64>() else {
            return refuse(format!("internal call to node {} without a valid sender id", self.id));
        };
        let cluster = text(CLUSTER_KEY);
        if cluster.is_empty() || cluster != self.cluster_id {
            return refuse(format!(
                "cluster id mismatch: node {from} belongs to cluster {cluster:?}, node {} to cluster {:?}",
                self.id, self.cluster_id
            ));
        }
        Ok(NodeId(from))
    }
}

/// The endpoint of a node's internal service (and raft transport).
pub fn endpoint(address: &str) -> Result<Endpoint, Failure> {
    Ok(Endpoint::from_shared(format!("http://{address}"))
        .map_err(|e| Failure::not_done(Kind::NotSent, format!("bad node address {address:?}: {e}")))?
        .connect_timeout(CONNECT_TIMEOUT)
        .tcp_nodelay(true))
}

/// What a failed call's gRPC status says of its outcome (see the module doc).
pub fn call_failure(address: &str, status: &tonic::Status) -> Failure {
    let mut source = std::error::Error::source(status);
    while let Some(error) = source {
        if error.downcast_ref::<tonic::ConnectError>().is_some() {
            return Failure::not_done(
                Kind::NotSent,
                format!("cannot reach node {address} ({}); the request was not sent", status.message()),
            );
        }
        source = error.source();
    }
    let kind = if status.code() == tonic::Code::DeadlineExceeded { Kind::Timeout } else { Kind::OutcomeUnknown };
    Failure::unknown(kind, format!("the call to {address} failed after it was sent: {}", status.message()))
}

/// Clients of other nodes' internal service, one per address.
pub struct Peers {
    pub sender: Sender,
    clients: Mutex<BTreeMap<String, InternalClient<Channel>>>,
}

impl Peers {
    pub fn new(sender: Sender) -> Peers {
        Peers { sender, clients: Mutex::new(BTreeMap::new()) }
    }

    fn client(&self, address: &str) -> Result<InternalClient<Channel>, Failure> {
        let mut clients = self.clients.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(client) = clients.get(address) {
            return Ok(client.clone());
        }
        let client = InternalClient::new(endpoint(address)?.connect_lazy())
            .max_decoding_message_size(MAX_MESSAGE)
            .max_encoding_message_size(MAX_MESSAGE);
        clients.insert(address.to_string(), client.clone());
        Ok(client)
    }

    /// Runs an admin operation on the node at `address` (the leader).
    pub async fn admin(&self, address: &str, op: AdminOp, timeout: Duration) -> Result<AdminDone, Failure> {
        let mut client = self.client(address)?;
        let request = self.sender.request(admin_to_proto(op), timeout);
        let response = client.admin(request).await.map_err(|status| call_failure(address, &status))?;
        admin_answer_from_proto(response.into_inner())
    }
}

/// Asks any member at `address` which cluster it belongs to (before joining:
/// the caller has no cluster id yet, so this call carries none).
pub async fn cluster_info(address: &str) -> Result<proto::ClusterInfoResponse, String> {
    let mut client = InternalClient::connect(format!("http://{address}")).await.map_err(|e| e.to_string())?;
    let answer = client.cluster_info(proto::ClusterInfoRequest {}).await.map_err(|s| s.message().to_string())?;
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
            Kind::ShuttingDown => proto::Kind::ShuttingDown,
            Kind::NodeFailed => proto::Kind::NodeFailed,
            Kind::Timeout => proto::Kind::Timeout,
            Kind::OutcomeUnknown => proto::Kind::OutcomeUnknown,
            Kind::NothingNew => proto::Kind::NothingNew,
            Kind::RestoreRunning => proto::Kind::RestoreRunning,
            Kind::RestoreFailed => proto::Kind::RestoreFailed,
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
        AdminOp::Join(member) => {
            Op::Join(proto::Join { id: member.id.0, raft_addr: member.raft_addr, http_addr: member.http_addr })
        }
        AdminOp::Remove(id) => Op::Remove(id.0),
        AdminOp::Transfer(target) => Op::Transfer(proto::Transfer { target: target.map_or(0, |t| t.0) }),
    };
    proto::AdminRequest { op: Some(op) }
}

pub fn admin_from_proto(request: proto::AdminRequest) -> Result<AdminOp, Failure> {
    use proto::admin_request::Op;
    match request.op {
        Some(Op::Join(join)) => {
            Ok(AdminOp::Join(Member { id: NodeId(join.id), raft_addr: join.raft_addr, http_addr: join.http_addr }))
        }
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
        Ok(AdminDone::Changed(index)) => Answer::Done(proto::AdminDone { index: index.0, leader: 0 }),
        Ok(AdminDone::Transferred(leader)) => Answer::Done(proto::AdminDone { index: 0, leader: leader.0 }),
        Err(failure) => Answer::Failure(failure_to_proto(failure)),
    };
    proto::AdminResponse { result: Some(result) }
}

fn admin_answer_from_proto(response: proto::AdminResponse) -> Result<AdminDone, Failure> {
    use proto::admin_response::Result as Answer;
    match response.result {
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
            AdminOp::Join(member),
            AdminOp::Remove(NodeId(2)),
            AdminOp::Transfer(None),
            AdminOp::Transfer(Some(NodeId(3))),
        ] {
            assert_eq!(admin_from_proto(admin_to_proto(op.clone())), Ok(op));
        }
        for done in [AdminDone::Changed(LogIndex(7)), AdminDone::Transferred(NodeId(2))] {
            assert_eq!(admin_answer_from_proto(admin_answer_to_proto(Ok(done))), Ok(done));
        }
    }

    #[test]
    fn the_header_check_refuses_strangers() {
        let ours = Sender { cluster_id: "abc".into(), id: NodeId(1) };
        let request = |sender: &Sender| sender.request((), Duration::from_secs(1));
        assert_eq!(ours.check(&request(&Sender { cluster_id: "abc".into(), id: NodeId(2) })), Ok(NodeId(2)));
        for stranger in
            [Sender { cluster_id: "xyz".into(), id: NodeId(2) }, Sender { cluster_id: String::new(), id: NodeId(2) }]
        {
            let refused = ours.check(&request(&stranger)).unwrap_err();
            assert_eq!((refused.kind, refused.outcome), (Kind::Refused, Outcome::NotDone), "{refused}");
        }
        let unstamped = tonic::Request::new(());
        assert!(ours.check(&unstamped).is_err());
    }
}
