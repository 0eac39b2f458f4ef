//! Observers (hashicorp/raft's `RegisterObserver`): a subscription to what
//! happens on one node, delivered without ever holding up the raft loop.
//!
//! `Raft::observe` registers an [`Observer`]: a bounded queue of
//! [`Observation`]s and a filter. The raft loop hands each observation to
//! every observer whose filter takes it with `try_send`; when an observer's
//! queue is full the observation is dropped for that observer and its
//! [`Observer::dropped`] counter grows (hashicorp's non-blocking observers).
//! Dropping the `Observer` deregisters it; once none is left the driver stops
//! recording what observations are made of.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use raftkv_core::{Configuration, LogIndex, NodeId, Term};
use raftkv_driver::{LeaderInfo, Observed};
use tokio::sync::mpsc;

/// Something that happened on the node, for observers.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Observation {
    /// The leader as this node knows it changed (`None`: no leader known in
    /// `term`); the same news as `Raft::leader_watch`, in order with the rest.
    /// A stopping node reports `None` last.
    LeaderChanged {
        /// The leader of `term`, if known; this node itself when it leads.
        leader: Option<NodeId>,
        /// This node's current term.
        term: Term,
    },
    /// This node answered a vote request (or a pre-vote request, thesis
    /// §9.6) from candidate `from` for `term` (for a pre-vote, the term the
    /// candidate would campaign in), reported as the answer left: a vote
    /// given is durable by then. A request ignored without an answer (this
    /// node heard a leader recently, thesis §4.2.3) is not reported.
    /// hashicorp's `RequestVoteObservation`, with the answer.
    RequestVote {
        /// The candidate.
        from: NodeId,
        /// The term asked in.
        term: Term,
        /// Whether it was a pre-vote.
        pre_vote: bool,
        /// Whether this node granted it.
        granted: bool,
    },
    /// On the leader only: `peer` has not answered for an election timeout
    /// (`Config::election_timeout_min`). `last_contact` is when it last
    /// answered this leader; `None` if it never did in this term.
    /// hashicorp's `FailedHeartbeatObservation`.
    PeerUnreachable {
        /// The silent member.
        peer: NodeId,
        /// When it last answered this leader, if it did in this term.
        last_contact: Option<Instant>,
    },
    /// On the leader only: `peer`, reported unreachable, answered again.
    /// hashicorp's `ResumedHeartbeatObservation`.
    PeerReachable {
        /// The member heard from again.
        peer: NodeId,
    },
    /// The configuration in force on this node changed: the one carried by
    /// the entry at `index` (a configuration takes effect when appended,
    /// thesis §4.1). Each is reported when it takes effect, `committed`
    /// saying whether it had committed by then, and once more with
    /// `committed: true` when it commits, if it had not. A configuration
    /// replaced within the same batch of inputs is not reported on its own
    /// (a follower that receives both halves of a joint change at once sees
    /// only the second).
    MembershipChanged {
        /// The configuration now in force.
        configuration: Configuration,
        /// Index of the entry that carried it (or of the snapshot it came with).
        index: LogIndex,
        /// Whether it had committed when reported.
        committed: bool,
    },
}

impl Observation {
    /// The driver's report, with its times on the node's clock (`start`).
    pub(crate) fn from_driver(observed: Observed, start: Instant) -> Observation {
        match observed {
            Observed::RequestVote { from, term, pre_vote, granted } => {
                Observation::RequestVote { from, term, pre_vote, granted }
            }
            Observed::PeerUnreachable { peer, last_contact_at } => Observation::PeerUnreachable {
                peer,
                last_contact: last_contact_at.map(|at| start + Duration::from_millis(at)),
            },
            Observed::PeerReachable { peer } => Observation::PeerReachable { peer },
            Observed::MembershipChanged { configuration, index, committed } => {
                Observation::MembershipChanged { configuration, index, committed }
            }
        }
    }

    pub(crate) fn leader_changed(info: LeaderInfo) -> Observation {
        Observation::LeaderChanged { leader: info.leader, term: info.term }
    }
}

/// Which observations an observer wants; runs on the raft loop, so it must
/// be quick and must not block.
pub(crate) type ObservationFilter = Box<dyn Fn(&Observation) -> bool + Send>;

/// A registered subscription to a node's observations (`Raft::observe`).
/// Dropping it deregisters it.
pub struct Observer {
    id: u64,
    receiver: mpsc::Receiver<Observation>,
    dropped: Arc<AtomicU64>,
    changes: mpsc::UnboundedSender<ObserverChange>,
}

impl Observer {
    /// The next observation, in the order the node made them; `None` once
    /// the node stopped and everything queued was read.
    pub async fn recv(&mut self) -> Option<Observation> {
        self.receiver.recv().await
    }

    /// The next observation if one is queued.
    pub fn try_recv(&mut self) -> Option<Observation> {
        self.receiver.try_recv().ok()
    }

    /// How many observations this observer's filter took that were dropped
    /// because its queue was full.
    pub fn dropped(&self) -> u64 {
        self.dropped.load(Ordering::Relaxed)
    }
}

impl Drop for Observer {
    fn drop(&mut self) {
        // A stopped loop has nothing to forget.
        let _ = self.changes.send(ObserverChange::Deregister(self.id));
    }
}

impl std::fmt::Debug for Observer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Observer").field("id", &self.id).field("dropped", &self.dropped()).finish()
    }
}

/// What the handle tells the raft loop about observers.
pub(crate) enum ObserverChange {
    Register(Registration),
    Deregister(u64),
}

/// The raft loop's side of one observer.
pub(crate) struct Registration {
    id: u64,
    sender: mpsc::Sender<Observation>,
    filter: ObservationFilter,
    dropped: Arc<AtomicU64>,
}

/// Makes an observer and its registration, which the raft loop must be
/// given (through `changes`) before it delivers anything to it.
pub(crate) fn register(
    id: u64,
    filter: ObservationFilter,
    capacity: usize,
    changes: mpsc::UnboundedSender<ObserverChange>,
) -> Observer {
    // tokio's bounded channel needs room for at least one.
    let (sender, receiver) = mpsc::channel(capacity.max(1));
    let dropped = Arc::new(AtomicU64::new(0));
    let registration = Registration { id, sender, filter, dropped: dropped.clone() };
    // A loop that stopped drops the registration, which closes the queue:
    // the observer's `recv` answers `None`.
    let _ = changes.send(ObserverChange::Register(registration));
    Observer { id, receiver, dropped, changes }
}

/// The observers the raft loop delivers to.
#[derive(Default)]
pub(crate) struct Observers {
    registered: Vec<Registration>,
}

impl Observers {
    pub(crate) fn change(&mut self, change: ObserverChange) {
        match change {
            ObserverChange::Register(registration) => self.registered.push(registration),
            ObserverChange::Deregister(id) => self.registered.retain(|r| r.id != id),
        }
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.registered.is_empty()
    }

    /// Offers `observation` to every observer whose filter takes it, never
    /// waiting: a full queue drops it for that observer (and counts it), a
    /// closed one (its observer gone) is forgotten, and so is an observer
    /// whose filter panicked.
    pub(crate) fn deliver(&mut self, observation: &Observation) {
        self.registered.retain(|registration| {
            let wanted = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| (registration.filter)(observation)));
            match wanted {
                Ok(false) => true,
                Ok(true) => match registration.sender.try_send(observation.clone()) {
                    Ok(()) => true,
                    Err(mpsc::error::TrySendError::Full(_)) => {
                        registration.dropped.fetch_add(1, Ordering::Relaxed);
                        true
                    }
                    Err(mpsc::error::TrySendError::Closed(_)) => false,
                },
                Err(_) => {
                    tracing::warn!(observer = registration.id, "an observer's filter panicked; it is deregistered");
                    false
                }
            }
        });
    }
}
