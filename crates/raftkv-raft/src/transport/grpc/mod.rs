//! The gRPC transport (tonic), and the wire pieces every node-to-node gRPC
//! service of a raftkv node shares.
//!
//! - `GrpcTransport` sends batches of messages over one long-lived `Raft.Stream`
//!   per peer; `RaftService` receives them for one node.
//! - [`Identity`], [`WireHeader`] and [`check`] (module `header`): who sends, to whom, in
//!   which cluster, speaking which [`PROTOCOL_VERSION`]. Every request is
//!   stamped with it in gRPC metadata and checked by the receiver before it
//!   touches the payload; a stream is checked once, when it opens. An
//!   application's own services beside the raft service stamp and check the
//!   same header (see the module doc of `header` for why metadata).
//! - [`Channels`] (module `channels`): one channel per peer address, shared by
//!   the transport and any client of the same peers.
//!
//! Addresses: membership names nodes by id. The `AddressBook` maps ids to raft
//! addresses; the application fills it (at join, from its own records), and
//! every accepted header with a sender address adds it, so a node learns the
//! addresses of the nodes that talk to it.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, RwLock};

use raftkv_core::{
    AppendEntries, AppendEntriesResponse, AppendResult, Configuration, Entry, EntryPayload, InstallSnapshot,
    InstallSnapshotResponse, LogId, LogIndex, Message, NodeId, RequestVote, RequestVoteResponse, RestoreStep,
    SnapshotMeta, Term,
};

use crate::locks::lock;

use super::listen::ConnInfo;
use super::{Inbox, SendFuture, Transport, TransportError};

mod channels;
mod header;

pub use channels::{caused_by, is_connect_error, CachedChannel, ChannelError, ChannelOptions, Channels};
pub use header::{
    check, check_metadata, CheckedHeader, Identity, Stamp, WireHeader, CLUSTER_ID_KEY, FROM_ADDR_KEY, FROM_KEY,
    PROTOCOL_KEY, PROTOCOL_VERSION, TO_KEY,
};

/// Generated protobuf and gRPC code.
#[allow(missing_docs)]
pub mod proto {
    tonic::include_proto!("raftkv.raft.v1");
}

use proto::raft_client::RaftClient;
use proto::raft_message::Kind;

/// Refused traffic is logged at most once per this period.
const REFUSAL_LOG_PERIOD: std::time::Duration = std::time::Duration::from_secs(10);

/// Largest raft message either way (a batch of appends, a snapshot chunk).
const MAX_MESSAGE: usize = 64 << 20;

type ChangeCallback = Box<dyn Fn(&BTreeMap<NodeId, String>) + Send + Sync>;

/// Node id -> raft address ("host:port"), and the ids removed from the
/// cluster, whose traffic `RaftService` refuses (etcd's removed members: a
/// removed node, or anyone holding its certificate, cannot disrupt or write
/// through raft). Clones share the book.
#[derive(Clone, Default)]
pub struct AddressBook {
    addresses: Arc<RwLock<BTreeMap<NodeId, String>>>,
    on_change: Arc<Mutex<Option<ChangeCallback>>>,
    removed: Arc<RwLock<std::collections::BTreeSet<NodeId>>>,
}

impl AddressBook {
    /// An empty book.
    pub fn new() -> AddressBook {
        AddressBook::default()
    }

    /// Marks `id` removed: its requests are refused from now on. Returns
    /// whether it was news.
    pub fn mark_removed(&self, id: NodeId) -> bool {
        self.removed.write().unwrap_or_else(|p| p.into_inner()).insert(id)
    }

    /// Takes `id` back (a configuration holds it again). Returns whether it was marked.
    pub fn readmit(&self, id: NodeId) -> bool {
        self.removed.write().unwrap_or_else(|p| p.into_inner()).remove(&id)
    }

    /// Whether `id` is marked removed.
    pub fn is_removed(&self, id: NodeId) -> bool {
        self.removed.read().unwrap_or_else(|p| p.into_inner()).contains(&id)
    }

    /// Every id marked removed.
    pub fn removed(&self) -> std::collections::BTreeSet<NodeId> {
        self.removed.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Calls `callback` with the whole book whenever an address is added or
    /// changes (to persist it, say).
    pub fn on_change(&self, callback: impl Fn(&BTreeMap<NodeId, String>) + Send + Sync + 'static) {
        *lock(&self.on_change) = Some(Box::new(callback));
    }

    /// The raft address of `id`, if known.
    pub fn get(&self, id: NodeId) -> Option<String> {
        self.addresses.read().unwrap_or_else(|p| p.into_inner()).get(&id).cloned()
    }

    /// Every known address, by node id.
    pub fn all(&self) -> BTreeMap<NodeId, String> {
        self.addresses.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Records `address` for a node the book does not know yet (what a
    /// sender says of itself): a header never re-points a known node, or one
    /// request could cut a voter off. Returns whether it was news. Addresses
    /// longer than `MAX_ADDRESS` are ignored.
    pub fn learn(&self, id: NodeId, address: &str) -> bool {
        const MAX_ADDRESS: usize = 256;
        address.len() <= MAX_ADDRESS && self.record(id, address, false)
    }

    /// Records `address` for `id` (from a trusted source: configuration, the
    /// replicated peer records); returns whether it was news.
    pub fn insert(&self, id: NodeId, address: &str) -> bool {
        self.record(id, address, true)
    }

    fn record(&self, id: NodeId, address: &str, replace: bool) -> bool {
        let snapshot = {
            let mut addresses = self.addresses.write().unwrap_or_else(|p| p.into_inner());
            match addresses.get(&id) {
                Some(known) if known == address || !replace => return false,
                _ => {}
            }
            addresses.insert(id, address.to_string());
            addresses.clone()
        };
        if let Some(callback) = lock(&self.on_change).as_ref() {
            callback(&snapshot);
        }
        true
    }
}

/// Batches queued for one peer's stream before new ones are dropped (Raft
/// resends what matters).
const STREAM_QUEUE: usize = 4096;

/// The gRPC `Transport`: one long-lived `Raft.Stream` per peer, opened on
/// the first send to it at the address the [`AddressBook`] gives, each
/// request stamped with this node's header.
pub struct GrpcTransport {
    identity: Identity,
    book: AddressBook,
    channels: Channels,
    /// The open stream to each peer: its address and the queue feeding it.
    streams: Mutex<BTreeMap<NodeId, (String, tokio::sync::mpsc::Sender<proto::Batch>)>>,
}

impl GrpcTransport {
    /// A transport for the node `identity` names, reaching peers at the
    /// addresses in `book`, over a channel cache of its own.
    pub fn new(identity: Identity, book: AddressBook) -> GrpcTransport {
        GrpcTransport::with_channels(identity, book, Channels::default())
    }

    /// A transport whose connections come from `channels` (shared with the
    /// application's own clients of the same peers, say).
    pub fn with_channels(identity: Identity, book: AddressBook, channels: Channels) -> GrpcTransport {
        GrpcTransport { identity, book, channels, streams: Mutex::new(BTreeMap::new()) }
    }

    /// Who this transport sends as.
    pub fn identity(&self) -> &Identity {
        &self.identity
    }

    /// The channel cache the transport connects through.
    pub fn channels(&self) -> &Channels {
        &self.channels
    }

    /// The queue of the stream to `to`, opening a stream if none is open (or the
    /// last one ended, or the peer's address changed).
    fn stream(&self, to: NodeId) -> Result<tokio::sync::mpsc::Sender<proto::Batch>, TransportError> {
        let address = self.book.get(to).ok_or(TransportError::UnknownPeer(to))?;
        let mut streams = lock(&self.streams);
        if let Some((known, queue)) = streams.get(&to) {
            if *known == address && !queue.is_closed() {
                return Ok(queue.clone());
            }
        }
        let channel = self.channels.get(&address).map_err(|e| TransportError::Unreachable(to, e.to_string()))?;
        let mut client = RaftClient::new(channel.channel())
            .max_decoding_message_size(MAX_MESSAGE)
            .max_encoding_message_size(MAX_MESSAGE);
        let (queue, batches) = tokio::sync::mpsc::channel(STREAM_QUEUE);
        let mut request = tonic::Request::new(tokio_stream::wrappers::ReceiverStream::new(batches));
        self.identity.header(Some(to)).stamp(&mut request);
        let channels = self.channels.clone();
        tokio::spawn(async move {
            if let Err(status) = client.stream(request).await {
                tracing::debug!(peer = %to, code = ?status.code(), message = status.message(), "raft stream ended");
                // The next stream starts from a fresh connection.
                channels.evict_on_connect_error(&channel, &status);
            }
        });
        streams.insert(to, (address, queue.clone()));
        Ok(queue)
    }
}

impl Transport for GrpcTransport {
    /// Queues the batch on the peer's stream and returns: sends are pipelined,
    /// in order, with no round trip per batch.
    fn send(&self, to: NodeId, messages: Vec<Message>) -> SendFuture<'_> {
        let batch = proto::Batch { messages: messages.iter().map(to_proto).collect() };
        let result = self.stream(to).and_then(|queue| match queue.try_send(batch) {
            Ok(()) => Ok(()),
            Err(tokio::sync::mpsc::error::TrySendError::Full(_)) => {
                Err(TransportError::Unreachable(to, "stream queue full; batch dropped".to_string()))
            }
            Err(tokio::sync::mpsc::error::TrySendError::Closed(batch)) => {
                // The stream ended (peer restarted, say): open a new one once.
                lock(&self.streams).remove(&to);
                self.stream(to)?.try_send(batch).map_err(|e| TransportError::Unreachable(to, e.to_string()))
            }
        });
        Box::pin(async move { result })
    }

    fn address_of(&self, id: NodeId) -> Option<String> {
        self.book.get(id)
    }

    /// `send` puts the batch on the peer's stream queue and returns.
    fn queues_without_waiting(&self) -> bool {
        true
    }

    fn protocol_version(&self) -> Option<u32> {
        Some(PROTOCOL_VERSION)
    }
}

/// The receiving side for one node: checks headers and hands messages to its inbox.
pub struct RaftService {
    identity: Identity,
    inbox: Inbox,
    book: AddressBook,
    refusals: Mutex<super::Ratelimited>,
}

/// Where a request came from: the listener's connection info
/// (`transport::listen`), or tonic's own.
pub fn remote<T>(request: &tonic::Request<T>) -> Option<std::net::SocketAddr> {
    request.extensions().get::<ConnInfo>().map(|info| info.remote).or_else(|| request.remote_addr())
}

impl RaftService {
    /// The service of the node `identity` names: accepted messages go to
    /// `inbox`; senders' addresses are learned into `book`, and ids marked
    /// removed there are refused.
    pub fn new(identity: Identity, inbox: Inbox, book: AddressBook) -> RaftService {
        RaftService { identity, inbox, book, refusals: Mutex::new(super::Ratelimited::new(REFUSAL_LOG_PERIOD)) }
    }

    /// The tonic service to add to a server.
    pub fn into_server(self) -> proto::raft_server::RaftServer<RaftService> {
        proto::raft_server::RaftServer::new(self).max_decoding_message_size(MAX_MESSAGE)
    }

    /// Checks a request's header (see [`check`]), which for raft messages must
    /// name this node as the receiver, and learns the sender's address.
    /// Returns the sender.
    fn admit<T>(&self, request: &tonic::Request<T>) -> Result<NodeId, tonic::Status> {
        let header = check(&self.identity, request)?;
        if self.book.is_removed(header.from) {
            return Err(tonic::Status::permission_denied(format!(
                "node {} was removed from this cluster; node {} refuses its traffic (add it again to take it back)",
                header.from, self.identity.id
            )));
        }
        if header.to.is_none() {
            return Err(tonic::Status::failed_precondition(format!(
                "raft messages from node {} name no receiver ({TO_KEY}); this is node {}",
                header.from, self.identity.id
            )));
        }
        if let Some(address) = &header.from_addr {
            self.book.learn(header.from, address);
        }
        Ok(header.from)
    }

    /// Logs refused traffic at warn, at most one line per 10 s (with how
    /// many were held back), naming the peer's address.
    fn refused(&self, remote: Option<std::net::SocketAddr>, status: &tonic::Status) {
        let mut limiter = lock(&self.refusals);
        if limiter.allow() {
            let suppressed = limiter.take_suppressed();
            let remote = remote.map_or_else(|| "unknown".to_string(), |a| a.to_string());
            tracing::warn!(node = %self.identity.id, %remote, code = ?status.code(), reason = status.message(), suppressed, "raft traffic refused");
        }
    }

    /// Hands a batch's messages to the node, all or none.
    fn receive(&self, from: NodeId, batch: proto::Batch) -> Result<(), tonic::Status> {
        let mut messages = Vec::with_capacity(batch.messages.len());
        for (i, message) in batch.messages.into_iter().enumerate() {
            let message = from_proto(message)
                .map_err(|reason| tonic::Status::invalid_argument(format!("message {i} from node {from}: {reason}")))?;
            messages.push(message);
        }
        for message in messages {
            self.inbox.deliver(from, message);
        }
        Ok(())
    }
}

#[tonic::async_trait]
impl proto::raft_server::Raft for RaftService {
    async fn stream(
        &self,
        request: tonic::Request<tonic::Streaming<proto::Batch>>,
    ) -> Result<tonic::Response<proto::Ack>, tonic::Status> {
        let remote = remote(&request);
        let from = self.admit(&request).inspect_err(|status| self.refused(remote, status))?;
        let mut batches = request.into_inner();
        while let Some(batch) = batches.message().await.inspect_err(|status| self.refused(remote, status))? {
            self.receive(from, batch).inspect_err(|status| self.refused(remote, status))?;
        }
        Ok(tonic::Response::new(proto::Ack {}))
    }

    async fn send(&self, request: tonic::Request<proto::Batch>) -> Result<tonic::Response<proto::Ack>, tonic::Status> {
        let remote = remote(&request);
        let from = self.admit(&request).inspect_err(|status| self.refused(remote, status))?;
        self.receive(from, request.into_inner()).inspect_err(|status| self.refused(remote, status))?;
        Ok(tonic::Response::new(proto::Ack {}))
    }
}

// ---- Conversions ----------------------------------------------------------------

fn log_id_to_proto(id: LogId) -> Option<proto::LogId> {
    Some(proto::LogId { term: id.term.0, index: id.index.0 })
}

fn log_id_from_proto(id: Option<proto::LogId>, field: &str) -> Result<LogId, String> {
    let id = id.ok_or_else(|| format!("missing {field}"))?;
    Ok(LogId::new(Term(id.term), LogIndex(id.index)))
}

fn config_to_proto(config: &Configuration) -> proto::Configuration {
    let ids = |set: &std::collections::BTreeSet<NodeId>| set.iter().map(|id| id.0).collect();
    proto::Configuration {
        voters: ids(&config.voters),
        voters_outgoing: ids(&config.voters_outgoing),
        learners: ids(&config.learners),
        staging: ids(&config.staging),
    }
}

fn config_from_proto(config: proto::Configuration) -> Configuration {
    let ids = |list: Vec<u64>| list.into_iter().map(NodeId).collect();
    Configuration {
        voters: ids(config.voters),
        voters_outgoing: ids(config.voters_outgoing),
        learners: ids(config.learners),
        staging: ids(config.staging),
    }
    .keep_staging_on_learners()
}

fn entry_to_proto(entry: &Entry) -> proto::Entry {
    use proto::entry::Payload;
    let payload = match &entry.payload {
        EntryPayload::Noop => Payload::Noop(true),
        EntryPayload::Command(data) => Payload::Command(data.clone()),
        EntryPayload::Config(config) => Payload::Config(config_to_proto(config)),
        EntryPayload::Restore(step) => Payload::Restore(restore_step_to_proto(step)),
    };
    proto::Entry { term: entry.term.0, index: entry.index.0, payload: Some(payload) }
}

fn entry_from_proto(entry: proto::Entry) -> Result<Entry, String> {
    use proto::entry::Payload;
    let payload = match entry.payload.ok_or_else(|| format!("entry {} without payload", entry.index))? {
        Payload::Noop(_) => EntryPayload::Noop,
        Payload::Command(data) => EntryPayload::Command(data),
        Payload::Config(config) => EntryPayload::Config(config_from_proto(config)),
        Payload::Restore(step) => EntryPayload::Restore(restore_step_from_proto(step, entry.index)?),
    };
    Ok(Entry { term: Term(entry.term), index: LogIndex(entry.index), payload })
}

fn restore_step_to_proto(step: &RestoreStep) -> proto::RestoreStep {
    use proto::restore_step::Step;
    let step = match step {
        RestoreStep::Begin { id, len, crc32c } => {
            Step::Begin(proto::RestoreBegin { id: *id, len: *len, crc32c: *crc32c })
        }
        RestoreStep::Chunk { id, seq, data } => {
            Step::Chunk(proto::RestoreChunk { id: *id, seq: *seq, data: data.clone() })
        }
        RestoreStep::Commit { id, chunks } => Step::Commit(proto::RestoreCommit { id: *id, chunks: *chunks }),
    };
    proto::RestoreStep { step: Some(step) }
}

fn restore_step_from_proto(step: proto::RestoreStep, index: u64) -> Result<RestoreStep, String> {
    use proto::restore_step::Step;
    Ok(match step.step.ok_or_else(|| format!("restore entry {index} without a step"))? {
        Step::Begin(b) => RestoreStep::Begin { id: b.id, len: b.len, crc32c: b.crc32c },
        Step::Chunk(c) => RestoreStep::Chunk { id: c.id, seq: c.seq, data: c.data },
        Step::Commit(c) => RestoreStep::Commit { id: c.id, chunks: c.chunks },
    })
}

fn meta_to_proto(meta: &SnapshotMeta) -> proto::SnapshotMeta {
    proto::SnapshotMeta { last_log_id: log_id_to_proto(meta.last_log_id), config: Some(config_to_proto(&meta.config)) }
}

/// Encodes a message for the wire (the inverse of [`from_proto`]).
pub fn to_proto(message: &Message) -> proto::RaftMessage {
    let kind = match message {
        Message::RequestVote(m) => Kind::RequestVote(proto::RequestVote {
            term: m.term.0,
            last_log_id: log_id_to_proto(m.last_log_id),
            pre_vote: m.pre_vote,
            leadership_transfer: m.leadership_transfer,
        }),
        Message::RequestVoteResponse(m) => Kind::RequestVoteResponse(proto::RequestVoteResponse {
            term: m.term.0,
            granted: m.granted,
            pre_vote: m.pre_vote,
        }),
        Message::AppendEntries(m) => Kind::AppendEntries(proto::AppendEntries {
            term: m.term.0,
            prev_log_id: log_id_to_proto(m.prev_log_id),
            entries: m.entries.iter().map(entry_to_proto).collect(),
            leader_commit: m.leader_commit.0,
            round: m.round,
        }),
        Message::AppendEntriesResponse(m) => {
            use proto::append_entries_response::Result as R;
            let result = match m.result {
                AppendResult::Success { match_index } => R::SuccessMatchIndex(match_index.0),
                AppendResult::Conflict { rejected, hint } => {
                    R::Conflict(proto::Conflict { rejected: rejected.0, hint: log_id_to_proto(hint) })
                }
                AppendResult::StaleTerm => R::StaleTerm(true),
            };
            Kind::AppendEntriesResponse(proto::AppendEntriesResponse {
                term: m.term.0,
                round: m.round,
                result: Some(result),
            })
        }
        Message::InstallSnapshot(m) => Kind::InstallSnapshot(proto::InstallSnapshot {
            term: m.term.0,
            meta: Some(meta_to_proto(&m.meta)),
            offset: m.offset,
            data: m.data.clone(),
            done: m.done,
        }),
        Message::InstallSnapshotResponse(m) => Kind::InstallSnapshotResponse(proto::InstallSnapshotResponse {
            term: m.term.0,
            snapshot: log_id_to_proto(m.snapshot),
            next_offset: m.next_offset,
            done: m.done,
        }),
        Message::TimeoutNow { term } => Kind::TimeoutNow(proto::TimeoutNow { term: term.0 }),
        Message::ReadIndexRequest { term, read_id } => {
            Kind::ReadIndexRequest(proto::ReadIndexRequest { term: term.0, read_id: *read_id })
        }
        Message::ReadIndexResponse { term, read_id, index } => Kind::ReadIndexResponse(proto::ReadIndexResponse {
            term: term.0,
            read_id: *read_id,
            index: index.map(|i| i.0),
        }),
    };
    proto::RaftMessage { kind: Some(kind) }
}

/// Decodes a message; every required field must be present. (The core then
/// checks the numbers themselves.)
pub fn from_proto(message: proto::RaftMessage) -> Result<Message, String> {
    let kind = message.kind.ok_or("message without a kind")?;
    Ok(match kind {
        Kind::RequestVote(m) => Message::RequestVote(RequestVote {
            term: Term(m.term),
            last_log_id: log_id_from_proto(m.last_log_id, "last_log_id")?,
            pre_vote: m.pre_vote,
            leadership_transfer: m.leadership_transfer,
        }),
        Kind::RequestVoteResponse(m) => Message::RequestVoteResponse(RequestVoteResponse {
            term: Term(m.term),
            granted: m.granted,
            pre_vote: m.pre_vote,
        }),
        Kind::AppendEntries(m) => Message::AppendEntries(AppendEntries {
            term: Term(m.term),
            prev_log_id: log_id_from_proto(m.prev_log_id, "prev_log_id")?,
            entries: m.entries.into_iter().map(entry_from_proto).collect::<Result<_, _>>()?,
            leader_commit: LogIndex(m.leader_commit),
            round: m.round,
        }),
        Kind::AppendEntriesResponse(m) => {
            use proto::append_entries_response::Result as R;
            let result = match m.result.ok_or("append response without a result")? {
                R::SuccessMatchIndex(index) => AppendResult::Success { match_index: LogIndex(index) },
                R::Conflict(c) => AppendResult::Conflict {
                    rejected: LogIndex(c.rejected),
                    hint: log_id_from_proto(c.hint, "conflict hint")?,
                },
                R::StaleTerm(_) => AppendResult::StaleTerm,
            };
            Message::AppendEntriesResponse(AppendEntriesResponse { term: Term(m.term), round: m.round, result })
        }
        Kind::InstallSnapshot(m) => {
            let meta = m.meta.ok_or("snapshot chunk without metadata")?;
            Message::InstallSnapshot(InstallSnapshot {
                term: Term(m.term),
                meta: SnapshotMeta {
                    last_log_id: log_id_from_proto(meta.last_log_id, "snapshot last_log_id")?,
                    config: config_from_proto(meta.config.ok_or("snapshot without configuration")?),
                },
                offset: m.offset,
                data: m.data,
                done: m.done,
            })
        }
        Kind::InstallSnapshotResponse(m) => Message::InstallSnapshotResponse(InstallSnapshotResponse {
            term: Term(m.term),
            snapshot: log_id_from_proto(m.snapshot, "snapshot id")?,
            next_offset: m.next_offset,
            done: m.done,
        }),
        Kind::TimeoutNow(m) => Message::TimeoutNow { term: Term(m.term) },
        Kind::ReadIndexRequest(m) => Message::ReadIndexRequest { term: Term(m.term), read_id: m.read_id },
        Kind::ReadIndexResponse(m) => {
            Message::ReadIndexResponse { term: Term(m.term), read_id: m.read_id, index: m.index.map(LogIndex) }
        }
    })
}

#[cfg(test)]
mod tests {
    use bytes::Bytes;

    use super::*;

    /// A staging mark on anything but a learner is dropped on receipt, so a
    /// peer cannot make a voter (or a stranger) "staging".
    #[test]
    fn staging_marks_arrive_only_on_learners() {
        let message = proto::Configuration {
            voters: vec![1, 2],
            voters_outgoing: vec![],
            learners: vec![5],
            staging: vec![1, 5, 7],
        };
        let config = config_from_proto(message);
        assert_eq!(config.staging.into_iter().collect::<Vec<_>>(), vec![NodeId(5)]);
    }

    /// What a sender says of itself only fills a gap: one forged header must
    /// not cut a known node off by re-pointing its address.
    #[test]
    fn headers_teach_unknown_addresses_and_never_re_point_known_ones() {
        let book = AddressBook::new();
        assert!(book.learn(NodeId(2), "10.0.0.2:7000"));
        assert!(!book.learn(NodeId(2), "10.9.9.9:1"));
        assert!(!book.learn(NodeId(3), &"x".repeat(300)));
        assert_eq!(book.get(NodeId(2)).as_deref(), Some("10.0.0.2:7000"));
        assert_eq!(book.get(NodeId(3)), None);
        // Trusted sources (the replicated peer records) still move it.
        assert!(book.insert(NodeId(2), "10.0.0.22:7000"));
        assert_eq!(book.get(NodeId(2)).as_deref(), Some("10.0.0.22:7000"));
    }

    #[test]
    fn every_message_kind_round_trips() {
        let mut config = Configuration::new([NodeId(1), NodeId(2)]);
        config.learners.insert(NodeId(5));
        config.staging.insert(NodeId(5));
        let entries = vec![
            Entry { term: Term(2), index: LogIndex(5), payload: EntryPayload::Noop },
            Entry { term: Term(2), index: LogIndex(6), payload: EntryPayload::Command(Bytes::from("x")) },
            Entry { term: Term(2), index: LogIndex(7), payload: EntryPayload::Config(config.clone()) },
            Entry {
                term: Term(2),
                index: LogIndex(8),
                payload: EntryPayload::Restore(RestoreStep::Begin { id: u64::MAX, len: 3, crc32c: 0xfeed_f00d }),
            },
            Entry {
                term: Term(2),
                index: LogIndex(9),
                payload: EntryPayload::Restore(RestoreStep::Chunk { id: 1, seq: 2, data: Bytes::from("abc") }),
            },
            Entry {
                term: Term(2),
                index: LogIndex(10),
                payload: EntryPayload::Restore(RestoreStep::Commit { id: 1, chunks: 3 }),
            },
        ];
        let id = LogId::new(Term(2), LogIndex(4));
        let messages = vec![
            Message::RequestVote(RequestVote {
                term: Term(3),
                last_log_id: id,
                pre_vote: true,
                leadership_transfer: true,
            }),
            Message::RequestVoteResponse(RequestVoteResponse { term: Term(3), granted: true, pre_vote: false }),
            Message::AppendEntries(AppendEntries {
                term: Term(2),
                prev_log_id: id,
                entries,
                leader_commit: LogIndex(3),
                round: 9,
            }),
            Message::AppendEntriesResponse(AppendEntriesResponse {
                term: Term(2),
                round: 9,
                result: AppendResult::Success { match_index: LogIndex(7) },
            }),
            Message::AppendEntriesResponse(AppendEntriesResponse {
                term: Term(2),
                round: 1,
                result: AppendResult::Conflict { rejected: LogIndex(4), hint: id },
            }),
            Message::AppendEntriesResponse(AppendEntriesResponse {
                term: Term(2),
                round: 0,
                result: AppendResult::StaleTerm,
            }),
            Message::InstallSnapshot(InstallSnapshot {
                term: Term(2),
                meta: SnapshotMeta { last_log_id: id, config },
                offset: 16,
                data: Bytes::from_static(b"chunk"),
                done: true,
            }),
            Message::InstallSnapshotResponse(InstallSnapshotResponse {
                term: Term(2),
                snapshot: id,
                next_offset: 21,
                done: true,
            }),
            Message::TimeoutNow { term: Term(2) },
            Message::ReadIndexRequest { term: Term(2), read_id: 77 },
            Message::ReadIndexResponse { term: Term(2), read_id: 77, index: Some(LogIndex(6)) },
            Message::ReadIndexResponse { term: Term(2), read_id: 78, index: None },
        ];
        for message in messages {
            assert_eq!(from_proto(to_proto(&message)).unwrap(), message);
        }
    }

    #[test]
    fn missing_fields_are_errors_not_defaults() {
        assert!(from_proto(proto::RaftMessage { kind: None }).is_err());
        let vote = proto::RequestVote { term: 1, last_log_id: None, pre_vote: false, leadership_transfer: false };
        assert!(from_proto(proto::RaftMessage { kind: Some(Kind::RequestVote(vote)) }).is_err());
        let append_of = |payload| {
            let entry = proto::Entry { term: 1, index: 1, payload };
            let append = proto::AppendEntries {
                term: 1,
                prev_log_id: Some(proto::LogId { term: 0, index: 0 }),
                entries: vec![entry],
                leader_commit: 0,
                round: 0,
            };
            from_proto(proto::RaftMessage { kind: Some(Kind::AppendEntries(append)) })
        };
        assert!(append_of(None).is_err());
        // A restore entry without its step is malformed too.
        let restore = proto::entry::Payload::Restore(proto::RestoreStep { step: None });
        let error = append_of(Some(restore)).unwrap_err();
        assert!(error.contains("without a step"), "{error}");
    }
}
