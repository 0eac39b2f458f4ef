//! How Raft messages move between nodes. `Transport` sends; incoming messages
//! are handed to the receiving node's `Inbox`. `MemNetwork` is the in-process
//! implementation used by tests and single-process clusters; it can cut links
//! to simulate partitions.

use std::collections::{BTreeMap, BTreeSet};
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};

use raftkv_core::{Message, NodeId};
use tokio::sync::mpsc;

pub mod grpc;
pub mod listen;
pub mod tls;

/// Bound on messages queued for a node's raft loop; beyond it messages are
/// dropped, which Raft tolerates (they are retried or superseded).
pub const INBOX_CAPACITY: usize = 1 << 16;

/// What [`Transport::send`] returns: resolves once the messages are handed
/// over (or queued), with an error for logging only.
pub type SendFuture<'a> = Pin<Box<dyn Future<Output = Result<(), TransportError>> + Send + 'a>>;

/// Sends messages to other nodes. Delivery is best effort: Raft retries what
/// matters, so a failed send is reported for logging only.
pub trait Transport: Send + Sync + 'static {
    /// Sends `messages` to `to`, in order.
    fn send(&self, to: NodeId, messages: Vec<Message>) -> SendFuture<'_>;

    /// The address this transport reaches `id` at, if it has one.
    fn address_of(&self, _id: NodeId) -> Option<String> {
        None
    }

    /// True if `send` only queues the messages, so that its future is ready
    /// when first polled. The runtime then sends from the raft task itself,
    /// saving a task hand-off per batch on the write path; otherwise it sends
    /// from a task per peer. A transport that says so and then returns a
    /// pending future loses that batch (Raft resends what matters).
    fn queues_without_waiting(&self) -> bool {
        false
    }

    /// The wire protocol version this transport speaks, if it has a wire
    /// format (`Raft::statistics` reports it). The default, `None`, suits
    /// in-process transports; the gRPC transport says
    /// `grpc::PROTOCOL_VERSION`.
    fn protocol_version(&self) -> Option<u32> {
        None
    }
}

/// Why a send failed. Raft resends what matters: callers log it and go on.
#[derive(Debug, thiserror::Error)]
pub enum TransportError {
    /// The transport has no address (or inbox) for the node.
    #[error("node {0} is unknown to the transport")]
    UnknownPeer(NodeId),
    /// The node could not be reached: the node, and why.
    #[error("node {0} is unreachable: {1}")]
    Unreachable(NodeId, String),
}

/// Where a node's transport delivers the messages it receives.
#[derive(Clone, Debug)]
pub struct Inbox {
    sender: mpsc::Sender<(NodeId, Message)>,
}

impl Inbox {
    pub(crate) fn channel() -> (Inbox, mpsc::Receiver<(NodeId, Message)>) {
        let (sender, receiver) = mpsc::channel(INBOX_CAPACITY);
        (Inbox { sender }, receiver)
    }

    /// Hands a message from `from` to the node. Returns false if the node is
    /// shut down or overloaded (the message is dropped).
    pub fn deliver(&self, from: NodeId, message: Message) -> bool {
        self.sender.try_send((from, message)).is_ok()
    }
}

#[derive(Default)]
struct Network {
    inboxes: BTreeMap<NodeId, Inbox>,
    /// Directed links that drop everything.
    cut: BTreeSet<(NodeId, NodeId)>,
    filter: Option<MessageFilter>,
}

/// Decides whether a message from the first node to the second is delivered.
pub type MessageFilter = Arc<dyn Fn(NodeId, NodeId, &Message) -> bool + Send + Sync>;

/// An in-process network of nodes. Clones share the same network.
#[derive(Clone, Default)]
pub struct MemNetwork {
    network: Arc<Mutex<Network>>,
}

impl MemNetwork {
    /// A network with no node and every link up.
    pub fn new() -> MemNetwork {
        MemNetwork::default()
    }

    fn network(&self) -> std::sync::MutexGuard<'_, Network> {
        crate::locks::lock(&self.network)
    }

    /// Connects (or reconnects, after a restart) node `id`'s inbox.
    pub fn register(&self, id: NodeId, inbox: Inbox) {
        self.network().inboxes.insert(id, inbox);
    }

    /// The transport node `from` sends with.
    pub fn transport(&self, from: NodeId) -> MemTransport {
        MemTransport { from, network: self.clone() }
    }

    /// Cuts every link to and from `id`.
    pub fn isolate(&self, id: NodeId) {
        let mut network = self.network();
        let others: Vec<NodeId> = network.inboxes.keys().copied().filter(|o| *o != id).collect();
        for other in others {
            network.cut.insert((id, other));
            network.cut.insert((other, id));
        }
    }

    /// Restores every link.
    pub fn heal(&self) {
        self.network().cut.clear();
    }

    /// Delivers only the messages `filter` accepts (tests use it to drop a
    /// connection at a chosen moment); `None` delivers everything again.
    pub fn set_filter(&self, filter: Option<MessageFilter>) {
        self.network().filter = filter;
    }
}

/// One node's sending side of a [`MemNetwork`]: delivers straight into the
/// receiver's inbox, and drops messages on cut links or refused by the filter.
pub struct MemTransport {
    from: NodeId,
    network: MemNetwork,
}

impl Transport for MemTransport {
    fn queues_without_waiting(&self) -> bool {
        true
    }

    fn send(&self, to: NodeId, messages: Vec<Message>) -> SendFuture<'_> {
        let result = {
            let network = self.network.network();
            match network.inboxes.get(&to) {
                None => Err(TransportError::UnknownPeer(to)),
                Some(_) if network.cut.contains(&(self.from, to)) => Ok(()),
                Some(inbox) => {
                    for message in messages {
                        if network.filter.as_ref().is_none_or(|accept| accept(self.from, to, &message)) {
                            inbox.deliver(self.from, message);
                        }
                    }
                    Ok(())
                }
            }
        };
        Box::pin(async move { result })
    }
}

/// At most one log line per period for a recurring event (refused traffic,
/// say), counting the ones it held back, so that a flood cannot flood the
/// log too.
#[derive(Debug)]
pub struct Ratelimited {
    period: std::time::Duration,
    last: Option<std::time::Instant>,
    suppressed: u64,
}

impl Ratelimited {
    /// Allows one log line per `period`.
    pub fn new(period: std::time::Duration) -> Ratelimited {
        Ratelimited { period, last: None, suppressed: 0 }
    }

    /// Whether to log this occurrence; if not, it is counted.
    pub fn allow(&mut self) -> bool {
        let now = std::time::Instant::now();
        if self.last.is_some_and(|last| now.duration_since(last) < self.period) {
            self.suppressed += 1;
            return false;
        }
        self.last = Some(now);
        true
    }

    /// How many occurrences were held back since the last logged one.
    pub fn take_suppressed(&mut self) -> u64 {
        std::mem::take(&mut self.suppressed)
    }
}
