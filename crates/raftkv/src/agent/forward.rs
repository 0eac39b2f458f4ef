//! The write forwarder: a follower hands its clients' writes to the leader
//! in `ApplyBatch` calls, one forwarder (a task and its queue) per leader
//! address, so that a follower under load sends one call per batch, not one
//! per write.
//!
//! Outcomes: a write that was never sent (it cannot fit a message, waited a
//! whole timeout for a slot, or no connection could be opened) is not done;
//! the leader's answers carry their own outcome; once a request has left, any
//! failure of the call (a broken connection, a reply that cannot be read, a
//! timeout) leaves its outcome unknown.

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use raftkv_raft::transport::grpc::{CachedChannel, Channels};
use raftkv_raft::{LogIndex, NodeId};
use tokio::sync::{mpsc, oneshot};

use crate::agent::outcome::{Failure, Kind, Outcome};
use crate::agent::wire::{self, proto, Sender};

/// Most forwarded batches in flight to one leader; while they are, new writes
/// gather into the next batch.
const IN_FLIGHT: usize = 4;
const BATCH: usize = 1024;
/// Command bytes per forwarded batch (one write larger than this goes alone).
const BATCH_BYTES: usize = 4 << 20;
/// Bytes an `ApplyBatchRequest` spends besides the commands (the metadata,
/// and per command a field tag and a length), counted generously.
const HEADER_BYTES: usize = 1024;
const COMMAND_OVERHEAD: usize = 16;

/// What a forwarded write answers: its index and the state machine's answer.
pub type Forwarded = Result<(LogIndex, Bytes), Failure>;

/// A write on its way to the leader, and where its answer goes.
pub struct Forward {
    pub command: Bytes,
    pub queued: Instant,
    pub reply: oneshot::Sender<Forwarded>,
}

/// The leader a forwarder sends to, and the limits of its calls.
pub struct Target {
    pub address: String,
    pub leader: NodeId,
    /// Where connections come from. A write is sent only over a connection
    /// known to be up (`Channels::connect`), and a connection is evicted
    /// after any failure of a call on it, so that the next batch connects
    /// explicitly again instead of letting the channel reconnect behind it.
    pub channels: Channels,
    /// Largest message either way (the request we encode, the reply we decode).
    pub max_message: usize,
    pub sender: Sender,
    pub timeout: Duration,
}

/// Starts a forwarder to `target`; writes sent to the returned queue are
/// answered, each exactly once.
pub fn start(target: Target) -> mpsc::UnboundedSender<Forward> {
    let (tx, rx) = mpsc::unbounded_channel();
    tokio::spawn(forward_batches(target, rx));
    tx
}

async fn forward_batches(target: Target, mut queue: mpsc::UnboundedReceiver<Forward>) {
    let Target { address, leader, channels, max_message, sender, timeout } = target;
    let slots = Arc::new(tokio::sync::Semaphore::new(IN_FLIGHT));
    let budget = BATCH_BYTES.min(max_message.saturating_sub(HEADER_BYTES));
    // A write that did not fit the last batch opens the next.
    let mut carried: Option<Forward> = None;
    loop {
        let Ok(slot) = slots.clone().acquire_owned().await else { return };
        let first = match carried.take() {
            Some(first) => first,
            None => match queue.recv().await {
                Some(first) => first,
                None => return,
            },
        };
        // One write too large for any message is refused unsent; one larger
        // than a batch's budget goes alone.
        if first.command.len() + COMMAND_OVERHEAD > max_message.saturating_sub(HEADER_BYTES).max(1) {
            let message = format!(
                "a command of {} bytes cannot fit an internal message (at most {max_message} bytes); it was not sent",
                first.command.len()
            );
            let _ = first.reply.send(Err(Failure::not_done(Kind::TooLarge, message)));
            continue;
        }
        let mut bytes = first.command.len() + COMMAND_OVERHEAD;
        let mut batch = vec![first];
        while batch.len() < BATCH {
            match queue.try_recv() {
                Ok(next) if bytes + next.command.len() + COMMAND_OVERHEAD > budget => {
                    carried = Some(next);
                    break;
                }
                Ok(next) => {
                    bytes += next.command.len() + COMMAND_OVERHEAD;
                    batch.push(next);
                }
                Err(_) => break,
            }
        }
        // Writes that waited a whole timeout for a slot (the leader is slow or
        // gone) are refused unsent: a definite failure the client may retry.
        let (stale, fresh): (Vec<Forward>, Vec<Forward>) =
            batch.into_iter().partition(|forward| forward.queued.elapsed() >= timeout);
        for forward in stale {
            let message = format!("the leader at {address} took no write for {timeout:?}; it was not sent");
            let _ = forward.reply.send(Err(Failure::not_done(Kind::NotSent, message)));
        }
        if fresh.is_empty() {
            continue;
        }
        let batch = fresh;
        let channel = match channels.connect(&address).await {
            Ok(channel) => channel,
            Err(error) => {
                tracing::debug!(leader = %address, %error, "cannot connect to the leader");
                let message = format!("{error}; the write was not sent to the leader");
                for forward in batch {
                    let _ = forward.reply.send(Err(Failure::not_done(Kind::NotSent, message.clone())));
                }
                continue;
            }
        };
        let call = Call { leader, sender: sender.clone(), timeout, max_message, channels: channels.clone(), channel };
        tokio::spawn(async move {
            let _slot = slot;
            call.send(batch).await;
        });
    }
}

/// One `ApplyBatch` call on a connection known to be up.
struct Call {
    leader: NodeId,
    sender: Sender,
    timeout: Duration,
    max_message: usize,
    channels: Channels,
    channel: CachedChannel,
}

impl Call {
    async fn send(self, batch: Vec<Forward>) {
        let address = self.channel.address().to_string();
        let mut client = wire::client(self.channel.channel(), self.max_message);
        let commands = batch.iter().map(|f| f.command.clone()).collect();
        let request = self.sender.request(proto::ApplyBatchRequest { commands }, Some(self.leader), self.timeout);
        // The server enforces the deadline; this bounds a dead connection too.
        let sent = tokio::time::timeout(self.timeout + Duration::from_secs(1), client.apply_batch(request)).await;
        let response = match sent {
            Ok(Ok(response)) => response.into_inner(),
            Ok(Err(status)) => {
                self.channels.evict(&self.channel);
                return answer_all(batch, &wire::call_failure(&address, &status));
            }
            Err(_) => {
                self.channels.evict(&self.channel);
                let message = format!("the leader at {address} did not answer within {:?}", self.timeout);
                return answer_all(batch, &Failure::unknown(Kind::Timeout, message));
            }
        };
        if let Some(refused) = response.refused {
            return answer_all(batch, &wire::failure_from_proto(refused));
        }
        let mut results = response.results.into_iter();
        for forward in batch {
            use proto::apply_result::Result as Answer;
            let answer = match results.next().and_then(|r| r.result) {
                Some(Answer::Applied(applied)) => Ok((LogIndex(applied.index), applied.response)),
                Some(Answer::Failure(failure)) => Err(wire::failure_from_proto(failure)),
                None => Err(Failure::internal(Outcome::Unknown, "the leader sent no result for a write")),
            };
            let _ = forward.reply.send(answer);
        }
    }
}

fn answer_all(batch: Vec<Forward>, failure: &Failure) {
    for forward in batch {
        let _ = forward.reply.send(Err(failure.clone()));
    }
}

#[cfg(test)]
mod tests {
    //! The forwarder against a stand-in leader on loopback: which failures
    //! are definite (not sent, refused) and which leave the outcome unknown.

    use std::sync::atomic::{AtomicUsize, Ordering};

    use tokio::net::TcpListener;
    use tokio_stream::wrappers::TcpListenerStream;

    use super::*;

    /// How the stand-in leader answers `ApplyBatch`.
    #[derive(Clone, Copy)]
    enum Answer {
        /// Applies each command; the response is `reply_bytes` long.
        Apply { reply_bytes: usize },
        /// Refuses the batch as a follower does (in the body, typed).
        NotLeader,
        /// A gRPC error that reads like a refusal (as a transport error can):
        /// nothing says the request was not carried out.
        Status,
    }

    struct StandIn {
        answer: Answer,
        calls: Arc<AtomicUsize>,
    }

    #[tonic::async_trait]
    impl proto::internal_server::Internal for StandIn {
        async fn apply_batch(
            &self,
            request: tonic::Request<proto::ApplyBatchRequest>,
        ) -> Result<tonic::Response<proto::ApplyBatchResponse>, tonic::Status> {
            self.calls.fetch_add(1, Ordering::SeqCst);
            let response = match self.answer {
                Answer::Apply { reply_bytes } => {
                    let results = (1..=request.into_inner().commands.len() as u64)
                        .map(|index| proto::ApplyResult {
                            result: Some(proto::apply_result::Result::Applied(proto::Applied {
                                index,
                                response: vec![7u8; reply_bytes].into(),
                            })),
                        })
                        .collect();
                    proto::ApplyBatchResponse { refused: None, results }
                }
                Answer::NotLeader => proto::ApplyBatchResponse {
                    refused: Some(wire::failure_to_proto(Failure::no_leader("node 2 at x leads"))),
                    results: Vec::new(),
                },
                Answer::Status => return Err(tonic::Status::unavailable("not the leader; node 2 at x leads")),
            };
            Ok(tonic::Response::new(response))
        }

        async fn cluster_info(
            &self,
            _: tonic::Request<proto::ClusterInfoRequest>,
        ) -> Result<tonic::Response<proto::ClusterInfoResponse>, tonic::Status> {
            Err(tonic::Status::unimplemented("stand-in"))
        }

        async fn admin(
            &self,
            _: tonic::Request<proto::AdminRequest>,
        ) -> Result<tonic::Response<proto::AdminResponse>, tonic::Status> {
            Err(tonic::Status::unimplemented("stand-in"))
        }
    }

    /// Serves a stand-in leader; returns its address, its call counter and its task.
    async fn stand_in(answer: Answer) -> (String, Arc<AtomicUsize>, tokio::task::JoinHandle<()>) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap().to_string();
        let calls = Arc::new(AtomicUsize::new(0));
        let service = proto::internal_server::InternalServer::new(StandIn { answer, calls: calls.clone() });
        let task = tokio::spawn(async move {
            let _ = tonic::transport::Server::builder()
                .add_service(service)
                .serve_with_incoming(TcpListenerStream::new(listener))
                .await;
        });
        (address, calls, task)
    }

    /// A forwarder to `address` whose messages hold at most `max_message` bytes.
    fn forwarder(address: &str, max_message: usize) -> mpsc::UnboundedSender<Forward> {
        let identity = raftkv_raft::transport::grpc::Identity::new("test", NodeId(1), "127.0.0.1:1");
        start(Target {
            address: address.to_string(),
            leader: NodeId(2),
            channels: wire::channels(None),
            max_message,
            sender: Sender { identity },
            timeout: Duration::from_secs(5),
        })
    }

    async fn forward(forwarder: &mpsc::UnboundedSender<Forward>, command: &[u8]) -> Forwarded {
        let (reply, answer) = oneshot::channel();
        let command = Bytes::copy_from_slice(command);
        forwarder.send(Forward { command, queued: Instant::now(), reply }).unwrap();
        answer.await.unwrap()
    }

    /// A port nothing listens on.
    async fn closed_address() -> String {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        listener.local_addr().unwrap().to_string()
    }

    fn outcome(forwarded: Forwarded) -> (Kind, Outcome) {
        let failure = forwarded.expect_err("the write must fail");
        (failure.kind, failure.outcome)
    }

    #[tokio::test]
    async fn a_write_that_found_no_connection_was_not_sent() {
        let forwarder = forwarder(&closed_address().await, wire::MAX_MESSAGE);
        assert_eq!(outcome(forward(&forwarder, b"w").await), (Kind::NotSent, Outcome::NotDone));
    }

    #[tokio::test]
    async fn a_reply_too_large_to_read_leaves_the_outcome_unknown() {
        let (address, calls, _server) = stand_in(Answer::Apply { reply_bytes: 4096 }).await;
        let forwarder = forwarder(&address, 2048);
        assert_eq!(outcome(forward(&forwarder, b"w").await), (Kind::OutcomeUnknown, Outcome::Unknown));
        assert_eq!(calls.load(Ordering::SeqCst), 1);
    }

    #[tokio::test]
    async fn a_command_too_large_for_any_message_is_refused_unsent() {
        let (address, calls, _server) = stand_in(Answer::Apply { reply_bytes: 1 }).await;
        let forwarder = forwarder(&address, 2048);
        assert_eq!(outcome(forward(&forwarder, &[1u8; 4096]).await), (Kind::TooLarge, Outcome::NotDone));
        // Small writes still go, and only they reached the leader.
        assert!(forward(&forwarder, b"w").await.is_ok());
        assert_eq!(calls.load(Ordering::SeqCst), 1);
    }

    #[tokio::test]
    async fn only_the_leaders_own_refusals_are_definite() {
        let (address, _, _server) = stand_in(Answer::NotLeader).await;
        let refused = forwarder(&address, wire::MAX_MESSAGE);
        assert_eq!(outcome(forward(&refused, b"w").await), (Kind::NoLeader, Outcome::NotDone));
        let (address, _, _server) = stand_in(Answer::Status).await;
        let status = forwarder(&address, wire::MAX_MESSAGE);
        assert_eq!(outcome(forward(&status, b"w").await), (Kind::OutcomeUnknown, Outcome::Unknown));
    }

    #[tokio::test]
    async fn after_a_failed_call_the_next_batch_connects_again_and_is_not_sent_if_it_cannot() {
        let (address, calls, server) = stand_in(Answer::Apply { reply_bytes: 4096 }).await;
        let forwarder = forwarder(&address, 2048);
        assert_eq!(outcome(forward(&forwarder, b"w").await).1, Outcome::Unknown);
        // The leader goes away; the forwarder must not send over a channel
        // that reconnects behind the request.
        server.abort();
        let _ = server.await;
        assert_eq!(outcome(forward(&forwarder, b"w").await), (Kind::NotSent, Outcome::NotDone));
        assert_eq!(calls.load(Ordering::SeqCst), 1);
    }
}
