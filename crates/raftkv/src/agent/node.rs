//! `Agent`: one running node and the operations the API asks of it.
//!
//! `route` is the one place that decides whether an operation runs here or
//! on the leader. Writes and admin operations (join, remove, transfer) ask
//! it; restores are writes. Reads never move: every node confirms its read
//! index with the leader (ReadIndex, thesis §6.4) and serves from its own
//! state.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use raftkv_raft::transport::grpc::AddressBook;
use raftkv_raft::{LogIndex, NodeId, Raft, ReadMode};
use tokio::sync::{mpsc, oneshot, watch};

use crate::agent::activity::{Activity, LeaderEvent, Reading};
use crate::agent::autopilot::{AutopilotConfig, AutopilotState, Tracker};
use crate::agent::config::AgentConfig;
use crate::agent::forward::{self, Forward};
use crate::agent::gossip::Gossip;
use crate::agent::outcome::{Failure, Kind, Outcome};
use crate::agent::request::{AdminDone, AdminOp, Member};
use crate::agent::wire::{self, proto, Peers};
use crate::state::machine::unix_ms;
use crate::state::{Answer, Command, Kv};

/// Backup downloads one node serves at once: each holds a blocking thread
/// while its client reads, and the raft runtime's snapshots need those threads.
pub const MAX_BACKUP_DOWNLOADS: usize = 4;

/// A running agent.
pub struct Agent {
    pub id: NodeId,
    pub config: AgentConfig,
    pub cluster_id: String,
    pub raft: Raft,
    pub kv: Kv,
    pub book: AddressBook,
    pub(crate) peers: Peers,
    /// One batching forwarder per leader (id and address: a node that takes
    /// over a removed node's address is another leader).
    forwarders: Mutex<BTreeMap<(NodeId, String), mpsc::UnboundedSender<Forward>>>,
    /// What serves this node (RPC, HTTP, background work), stopped together.
    tasks: Mutex<Vec<tokio::task::JoinHandle<()>>>,
    /// Held while the agent runs, so that offline tools refuse the data dir.
    _lock: std::fs::File,
    /// Held by the restore this node coordinates (one at a time).
    pub(crate) restoring: Arc<tokio::sync::Mutex<()>>,
    /// Backup downloads running (`MAX_BACKUP_DOWNLOADS` at most).
    pub downloads: Arc<tokio::sync::Semaphore>,
    /// Started without state and without `--bootstrap`: not a member yet.
    pub(crate) needs_join: bool,
    /// Raft addresses to join through (found at start-up).
    pub(crate) join_via: Vec<String>,
    /// Gossip, with `--serf-addr`.
    pub gossip: Option<Gossip>,
    /// Set once this node has left the cluster (`leave`): the process ends.
    left: watch::Sender<bool>,
    /// Set once `leave` had this node removed, before it tells gossip and
    /// sets `left`.
    leaving: std::sync::atomic::AtomicBool,
    /// Set when a planned stop begins: the node is no longer ready.
    stopping: std::sync::atomic::AtomicBool,
    /// Why this node no longer takes part, once it learnt that it was removed
    /// from the configuration (`removal`).
    pub(crate) removed: std::sync::RwLock<Option<String>>,
    /// The autopilot's settings in force (reloadable) and its last round
    /// (`None` unless this node leads).
    autopilot: std::sync::RwLock<AutopilotConfig>,
    autopilot_state: Mutex<Option<AutopilotState>>,
    /// What this node served and saw, for the dashboard.
    pub activity: Activity,
}

/// Where an operation that must run on the leader runs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Route {
    Here,
    Leader { id: NodeId, address: String },
}

impl Agent {
    pub(crate) fn new(
        config: AgentConfig,
        cluster_id: String,
        raft: Raft,
        kv: Kv,
        book: AddressBook,
        peers: Peers,
        lock: std::fs::File,
    ) -> Agent {
        Agent {
            id: NodeId(config.id),
            autopilot: std::sync::RwLock::new(config.autopilot.clone()),
            autopilot_state: Mutex::new(None),
            config,
            cluster_id,
            raft,
            kv,
            book,
            peers,
            forwarders: Mutex::new(BTreeMap::new()),
            tasks: Mutex::new(Vec::new()),
            _lock: lock,
            restoring: Arc::new(tokio::sync::Mutex::new(())),
            downloads: Arc::new(tokio::sync::Semaphore::new(MAX_BACKUP_DOWNLOADS)),
            needs_join: false,
            join_via: Vec::new(),
            gossip: None,
            left: watch::channel(false).0,
            leaving: std::sync::atomic::AtomicBool::new(false),
            stopping: std::sync::atomic::AtomicBool::new(false),
            removed: std::sync::RwLock::new(None),
            activity: Activity::default(),
        }
    }

    /// Keeps `task` running while the agent serves; `shutdown` and a fatal
    /// failure of the raft node stop it.
    pub fn hold(&self, task: tokio::task::JoinHandle<()>) {
        if self.raft.failure().is_some() {
            task.abort();
            return;
        }
        self.tasks.lock().unwrap_or_else(|p| p.into_inner()).push(task);
    }

    /// Stops everything this agent holds (not the raft node).
    pub(crate) fn stop_serving(&self) {
        for task in self.tasks.lock().unwrap_or_else(|p| p.into_inner()).drain(..) {
            task.abort();
        }
    }

    /// Resolves with the reason once the raft node stopped for good because it
    /// cannot go on (a storage failure, say); by then this node no longer
    /// serves. Never resolves while it runs or after a clean shutdown.
    pub async fn failed(&self) -> String {
        self.raft.failed().await
    }

    /// Stops serving and shuts the raft node down.
    pub async fn shutdown(&self) {
        self.stop_serving();
        self.raft.shutdown().await;
    }

    /// Why this node no longer takes part, if it was removed.
    pub fn removed(&self) -> Option<String> {
        self.removed.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// The one decision "serve here or forward to the leader".
    pub fn route(&self) -> Result<Route, Failure> {
        if let Some(reason) = self.removed() {
            return Err(Failure::not_done(Kind::NodeFailed, reason));
        }
        match self.raft.leader().leader {
            Some(leader) if leader == self.id => Ok(Route::Here),
            Some(leader) => match self.book.get(leader) {
                Some(address) => Ok(Route::Leader { id: leader, address }),
                None => {
                    Err(Failure::no_leader(format!("node {leader} leads, but node {} has no address for it", self.id)))
                }
            },
            None => Err(Failure::no_leader("no leader is known")),
        }
    }

    /// What a node that was asked to run an operation as leader answers when
    /// it does not lead (it never forwards again: one hop at most).
    pub fn not_leader(&self) -> Failure {
        match self.route() {
            Ok(Route::Leader { id, address }) => {
                Failure::no_leader(format!("node {} does not lead; node {id} at {address} does", self.id))
            }
            Ok(Route::Here) => Failure::internal(Outcome::NotDone, "asked to forward while leading"),
            Err(failure) => failure,
        }
    }

    /// Runs a write: here if this node leads, else on the leader.
    pub async fn write(&self, command: Command) -> Result<(LogIndex, Answer), Failure> {
        let timeout = self.config.request_timeout;
        let (index, response) = match self.route()? {
            Route::Here => self.raft.apply(command.encode(), timeout).await?,
            Route::Leader { id, address } => self.forward(id, &address, command).await?,
        };
        let answer = Answer::decode(&response)
            .map_err(|e| Failure::internal(Outcome::Done, format!("the write applied at index {}: {e}", index.0)))?;
        Ok((index, answer))
    }

    async fn forward(&self, leader: NodeId, address: &str, command: Command) -> forward::Forwarded {
        let forwarder = self.forwarder(leader, address);
        let (reply, answer) = oneshot::channel();
        let queued = Forward { command: command.encode(), queued: Instant::now(), reply };
        if forwarder.send(queued).is_err() {
            return Err(Failure::not_done(Kind::NotSent, "the write forwarder stopped; the write was not sent"));
        }
        // The forwarder answers within about two timeouts (queued, then sent);
        // this bound only guards against a forwarder that never does.
        let bound = 2 * self.config.request_timeout + Duration::from_secs(2);
        match tokio::time::timeout(bound, answer).await {
            Ok(Ok(forwarded)) => forwarded,
            Ok(Err(_)) => Err(Failure::unknown(Kind::OutcomeUnknown, "the forwarder dropped the write in flight")),
            Err(_) => Err(Failure::unknown(Kind::Timeout, "no answer from the write forwarder")),
        }
    }

    /// The forwarder to the leader at `address`, started on first use.
    fn forwarder(&self, leader: NodeId, address: &str) -> mpsc::UnboundedSender<Forward> {
        let mut forwarders = self.forwarders.lock().unwrap_or_else(|p| p.into_inner());
        let key = (leader, address.to_string());
        if let Some(forwarder) = forwarders.get(&key).filter(|f| !f.is_closed()) {
            return forwarder.clone();
        }
        let target = forward::Target {
            address: address.to_string(),
            leader,
            channels: self.peers.channels.clone(),
            max_message: wire::MAX_MESSAGE,
            sender: self.peers.sender.clone(),
            timeout: self.config.request_timeout,
        };
        let forwarder = forward::start(target);
        forwarders.insert(key, forwarder.clone());
        forwarder
    }

    /// Waits until a read may be served here at `mode` (`None`: a stale read,
    /// at once). A read changes nothing, so its failures are all not done.
    pub async fn read_barrier(&self, mode: Option<ReadMode>) -> Result<(), Failure> {
        if let Some(mode) = mode {
            self.raft
                .read_index(mode, self.config.request_timeout)
                .await
                .map_err(|e| Failure::from(e).changed_nothing())?;
        }
        Ok(())
    }

    /// Runs a membership or leadership operation: here if this node leads,
    /// else on the leader.
    pub async fn admin(&self, op: AdminOp) -> Result<AdminDone, Failure> {
        check(&op)?;
        match self.route()? {
            Route::Here => self.admin_here(op).await,
            Route::Leader { id, address } => {
                let timeout = self.admin_timeout(&op);
                self.peers.admin(&address, Some(id), op, timeout).await
            }
        }
    }

    /// How long the leader may take over `op`: a join waits for the new
    /// server to catch up and stay caught up (`join_timeout`), and for the
    /// removal that follows if it does not.
    pub(crate) fn admin_timeout(&self, op: &AdminOp) -> Duration {
        match op {
            AdminOp::Join { .. } => self.config.join_timeout + 2 * self.config.request_timeout,
            _ => self.config.request_timeout,
        }
    }

    /// Runs an admin operation on this node, which must lead.
    pub(crate) async fn admin_here(&self, op: AdminOp) -> Result<AdminDone, Failure> {
        check(&op)?;
        let timeout = self.config.request_timeout;
        match op {
            AdminOp::Join { member, replace } => self.add_voter(member, replace).await.map(AdminDone::Changed),
            AdminOp::AutopilotState => match (self.autopilot_state(), self.route()) {
                (Some(state), _) => Ok(AdminDone::Autopilot(Box::new(state))),
                // Just elected: the first round (within 100 ms) has not run.
                (None, Ok(Route::Here)) => Err(Failure::not_done(
                    Kind::NotReady,
                    "the autopilot has not finished its first round on this new leader; retry",
                )),
                (None, _) => Err(self.not_leader()),
            },
            AdminOp::Remove(id) => {
                let index = self.raft.remove_server(id, None, timeout).await?;
                self.refuse_removed(id);
                Ok(AdminDone::Changed(index))
            }
            AdminOp::Transfer(target) => {
                let target = match target {
                    Some(target) => target,
                    None => self.first_other_voter().await?,
                };
                self.raft.leadership_transfer(target).await?;
                Ok(AdminDone::Transferred(target))
            }
        }
    }

    /// Adds `member` as a voter: once it answers at its address as a node of
    /// this cluster, its addresses go into the replicated peers, then it is
    /// staged: a learner that the raft library promotes once it has caught
    /// up and stayed so for the stabilization time, or removes again after
    /// `join_timeout` (`not_caught_up`). A voter already at the same address
    /// is done at once and a staging one is waited for (a retried join). A
    /// member at another address is refused, not re-pointed (that would hand
    /// its place to whatever listens there), unless `replace`: it is then
    /// removed first.
    async fn add_voter(&self, member: Member, replace: bool) -> Result<LogIndex, Failure> {
        let timeout = self.config.request_timeout;
        let status = self.raft.status().await?;
        let mut guard = None;
        if status.membership.is_member(member.id) {
            let known = self.kv.read().peers.get(&member.id.0).map(|p| p.raft_addr.clone());
            let known = known.or_else(|| self.book.get(member.id));
            let moved = known.as_deref() != Some(member.raft_addr.as_str());
            if moved && !replace {
                return Err(Failure::not_done(
                    Kind::Refused,
                    format!(
                        "node {} is already a member at {}; remove it first, or join with replace to have it \
                         removed, before adding a node with its id at {}",
                        member.id,
                        known.as_deref().unwrap_or("an unknown address"),
                        member.raft_addr
                    ),
                ));
            }
            if moved && member.id == self.id {
                return Err(Failure::not_done(
                    Kind::Refused,
                    "the leader cannot replace itself; transfer leadership first",
                ));
            }
            if moved {
                guard = Some(status.membership_index);
            } else if status.membership.is_voter(member.id) {
                return Ok(status.membership_index);
            } else if status.membership.is_staging(member.id) {
                // Probed and registered when it was staged: wait for its fate.
                return Ok(self.raft.add_voter(member.id, None, self.config.join_timeout).await?);
            }
        }
        self.probe(&member).await?;
        let mut replaced = None;
        if let Some(read) = guard {
            // Only the member this call saw: a change made meanwhile wins.
            let removed = self.raft.remove_server(member.id, Some(read), timeout).await?;
            tracing::warn!(node = %member.id, %removed, new_address = %member.raft_addr, "replaced a member");
            replaced = Some(removed);
        }
        let id = member.id;
        let register = Command::RegisterPeer { id: id.0, raft_addr: member.raft_addr, http_addr: member.http_addr };
        let added = async {
            self.raft.apply(register.encode(), timeout).await?;
            Ok::<_, Failure>(self.raft.add_voter(id, None, self.config.join_timeout).await?)
        };
        added.await.map_err(|failure| match replaced {
            // The removal is done whatever became of the add: say so.
            Some(removed) => Failure {
                message: format!(
                    "the member {id} it replaces was removed (index {removed}); then: {}",
                    failure.message
                ),
                ..failure
            },
            None => failure,
        })
    }

    /// Whether the member itself answers at its address, as a node of this
    /// cluster: a voter that cannot be reached would only shrink the
    /// cluster's margin (with two voters, one unreachable one stops it), and
    /// a second id for a node already in the cluster would give it two votes.
    async fn probe(&self, member: &Member) -> Result<(), Failure> {
        let refuse = |why: String| {
            Failure::not_done(
                Kind::Refused,
                format!("node {} at {} cannot be added: {why}", member.id, member.raft_addr),
            )
        };
        let info = wire::cluster_info(&self.peers.channels, &member.raft_addr)
            .await
            .map_err(|e| refuse(format!("it does not answer ({e})")))?;
        if info.cluster_id != self.cluster_id {
            return Err(refuse(format!("it belongs to cluster {:?}, not {:?}", info.cluster_id, self.cluster_id)));
        }
        if info.node_id != member.id.0 {
            return Err(refuse(format!("node {} answers there", info.node_id)));
        }
        if info.removed {
            return Err(refuse(
                "it was removed from this cluster and stopped; wipe its data dir and start it again".into(),
            ));
        }
        Ok(())
    }

    async fn first_other_voter(&self) -> Result<NodeId, Failure> {
        let status = self.raft.status().await?;
        let other = voters_by_progress(&status, self.config.raft.election_timeout_min)
            .first()
            .copied()
            .or_else(|| status.membership.voters.iter().copied().find(|v| *v != self.id));
        other.ok_or_else(|| Failure::not_done(Kind::Refused, "no other voter to hand leadership to"))
    }

    /// Whether a planned stop has begun (`hand_off_leadership`).
    pub fn is_stopping(&self) -> bool {
        self.stopping.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Whether this node is ready to serve: it is not stopping, a leader
    /// is known, and it has applied everything the cluster had committed
    /// when asked: a read index from the leader (one heartbeat round, as a
    /// linearizable read takes; on a follower the leader is asked), so a
    /// node that restarted far behind is not ready until it caught up.
    /// `not_ready` says which is missing.
    pub async fn readiness(&self) -> Result<Readiness, Failure> {
        if self.is_stopping() {
            return Err(Failure::not_done(Kind::NotReady, "this node is stopping"));
        }
        let status = self.raft.status().await.map_err(|e| Failure::from(e).changed_nothing())?;
        let Some(leader) = status.leader else {
            return Err(Failure::not_done(Kind::NotReady, "no leader is known yet"));
        };
        let committed = self
            .raft
            .read_index(ReadMode::Linearizable, READY_WITHIN)
            .await
            .map_err(|e| Failure::not_done(Kind::NotReady, format!("no read index from leader {leader}: {e}")))?;
        let applied_index = self.raft.applied_index();
        if applied_index < committed {
            let message = format!("applied up to entry {applied_index}; the cluster has committed {committed}");
            return Err(Failure::not_done(Kind::NotReady, message));
        }
        Ok(Readiness { leader, term: status.term, commit_index: committed, applied_index })
    }

    /// What this node reports of itself to the dashboard (`ClusterInfo`).
    pub fn activity_report(&self, status: &raftkv_raft::Status) -> proto::NodeActivity {
        let counts = |reading: Reading| proto::RequestCounts {
            done: reading.done,
            failed: reading.failed,
            micros: reading.micros,
            buckets: reading.buckets,
        };
        proto::NodeActivity {
            // As `/metrics` names roles.
            role: format!("{:?}", status.role).to_lowercase(),
            term: status.term.0,
            commit_index: status.commit_index.0,
            applied_index: self.raft.applied_index().0,
            last_log_index: status.last_log_index.0,
            reads: Some(counts(self.activity.reads())),
            writes: Some(counts(self.activity.writes())),
            serving: status.leader.is_some()
                && !self.is_stopping()
                && self.raft.failure().is_none()
                && self.removed().is_none(),
        }
    }

    /// Keeps the leadership changes this node sees in `activity`.
    pub(crate) async fn record_leadership(self: Arc<Agent>) {
        use raftkv_raft::Observation;
        let mut observer = self.raft.observe(|o| matches!(o, Observation::LeaderChanged { .. }), 64);
        while let Some(observation) = observer.recv().await {
            if let Observation::LeaderChanged { leader, term } = observation {
                let event = LeaderEvent { unix_ms: unix_ms(), term: term.0, leader: leader.map(|l| l.0) };
                self.activity.leader_changed(event);
            }
        }
    }

    /// Logs one line once this node is ready (`readiness`).
    pub(crate) async fn log_when_ready(self: Arc<Agent>) {
        loop {
            if let Ok(ready) = self.readiness().await {
                tracing::info!(
                    leader = %ready.leader,
                    term = %ready.term,
                    applied = %ready.applied_index,
                    "ready: a leader is known and every entry known committed is applied"
                );
                return;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Before a planned stop: the node says it is not ready any more, and
    /// if it leads, hands leadership to the most caught-up voter in contact
    /// (thesis §3.10), or to the next if that one does not take over, so
    /// that the cluster does not wait out an election timeout. Best effort:
    /// the outcome is logged, and the stop goes on either way.
    pub async fn hand_off_leadership(&self) {
        self.stopping.store(true, std::sync::atomic::Ordering::Relaxed);
        let Ok(Ok(status)) = tokio::time::timeout(READY_WITHIN, self.raft.status()).await else { return };
        if status.leader != Some(self.id) {
            return;
        }
        let contact = self.config.raft.heartbeat_interval * 3;
        let targets = voters_by_progress(&status, contact);
        if targets.is_empty() && status.membership.voters.len() > 1 {
            tracing::warn!("no other voter in contact to hand leadership to; stopping as leader");
        }
        for target in targets.into_iter().take(2) {
            let started = std::time::Instant::now();
            match self.raft.leadership_transfer(target).await {
                Ok(()) => {
                    let elapsed_ms = started.elapsed().as_millis() as u64;
                    tracing::info!(%target, elapsed_ms, "handed leadership over before stopping");
                    return;
                }
                Err(error) => tracing::warn!(%target, %error, "could not hand leadership over"),
            }
            if self.raft.leader().leader != Some(self.id) {
                return;
            }
        }
    }

    /// Asks the cluster to add this node as a voter: any of `targets` says
    /// which node leads, and the leader adds it.
    pub(crate) async fn join(&self, targets: &[String]) -> Result<(), String> {
        let member = Member {
            id: self.id,
            raft_addr: self.config.raft_addr.to_string(),
            http_addr: self.config.http_addr.to_string(),
        };
        let mut last_error = String::from("no --join address given");
        let attempts = if self.config.retry_join.is_empty() { 30 } else { u64::MAX };
        for attempt in 0..attempts {
            if let Some(ended) = self.join_ended().await {
                return ended;
            }
            for target in targets {
                let joined = match wire::cluster_info(&self.peers.channels, target).await {
                    Ok(info) if info.leader_raft_addr.is_empty() => Err(format!("{target}: no leader is known")),
                    Ok(info) => {
                        // It may have left while this attempt looked for the leader.
                        if let Some(ended) = self.join_ended().await {
                            return ended;
                        }
                        let (leader, to) = (info.leader_raft_addr, Some(NodeId(info.leader_id)));
                        let op = AdminOp::Join { member: member.clone(), replace: false };
                        let timeout = self.admin_timeout(&op);
                        let done = self.peers.admin(&leader, to, op, timeout).await;
                        done.map(|done| tracing::info!(via = %target, %leader, ?done, "joined the cluster"))
                            .map_err(|failure| format!("leader {leader}: {failure}"))
                    }
                    Err(error) => Err(format!("{target}: {error}")),
                };
                match joined {
                    Ok(()) => return Ok(()),
                    Err(error) => {
                        tracing::warn!(attempt, %error, "join attempt failed");
                        last_error = error;
                    }
                }
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
        Err(last_error)
    }

    /// Whether a join still retrying must end instead of asking again. Asked
    /// to leave (`leave`) meanwhile: done once it has left, and the process
    /// ends as a leaver's does. Removed otherwise (staged, not caught up in
    /// time): it failed.
    async fn join_ended(&self) -> Option<Result<(), String>> {
        if self.has_left() {
            return Some(Ok(()));
        }
        let reason = self.removed()?;
        if self.leaving.load(std::sync::atomic::Ordering::SeqCst) {
            self.left().await;
            return Some(Ok(()));
        }
        Some(Err(reason))
    }

    /// While this node leads, records in the replicated peer list the
    /// addresses of members it lacks: its own (a bootstrapped node has no one
    /// to register it) and, with gossip, those gossip knows (founders of a
    /// cluster bootstrapped by `--bootstrap-expect` joined no one).
    pub(crate) async fn register_members(self: Arc<Agent>) {
        let mut leader = self.raft.leader_watch();
        loop {
            if leader.borrow().leader == Some(self.id) {
                if let Ok(status) = self.raft.status().await {
                    for id in status.membership.members() {
                        let Some(command) = self.registration(id) else { continue };
                        if let Err(error) = self.raft.apply(command.encode(), self.config.request_timeout).await {
                            tracing::debug!(node = %id, %error, "cannot register a member's addresses yet");
                        }
                    }
                }
            }
            if tokio::time::timeout(Duration::from_secs(1), leader.changed()).await.is_ok_and(|r| r.is_err()) {
                return;
            }
        }
    }

    /// The registration member `id` lacks, if its addresses are known here.
    fn registration(&self, id: NodeId) -> Option<Command> {
        if self.kv.read().peers.contains_key(&id.0) {
            return None;
        }
        let (raft_addr, http_addr) = if id == self.id {
            (self.config.raft_addr.to_string(), self.config.http_addr.to_string())
        } else {
            let view = self.gossip.as_ref()?.view();
            let known = view.alive().filter(|m| m.node == id.0).max_by_key(|m| m.generation)?;
            (known.raft_addr.clone(), known.http_addr.clone())
        };
        Some(Command::RegisterPeer { id: id.0, raft_addr, http_addr })
    }
}

/// Refuses an admin operation that can never succeed, before it goes anywhere.
fn check(op: &AdminOp) -> Result<(), Failure> {
    match op {
        AdminOp::Join { member, .. } if member.id.0 == 0 || member.raft_addr.is_empty() => {
            Err(Failure::bad_request("join needs a positive id and a raft address"))
        }
        AdminOp::Remove(NodeId(0)) | AdminOp::Transfer(Some(NodeId(0))) => {
            Err(Failure::bad_request("node ids are positive integers"))
        }
        _ => Ok(()),
    }
}

impl Agent {
    /// The autopilot's settings in force.
    pub fn autopilot_config(&self) -> AutopilotConfig {
        self.autopilot.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Replaces the autopilot's settings and the raft library's reloadable
    /// ones at once; the library's promotion rule takes the autopilot's lag
    /// and period. Nothing changes if either refuses; answers the raft
    /// settings now in force.
    pub async fn reload(
        &self,
        raft: raftkv_raft::ReloadableConfig,
        autopilot: AutopilotConfig,
    ) -> Result<raftkv_raft::Config, Failure> {
        autopilot.validate().map_err(|e| Failure::bad_request(format!("configuration refused: autopilot: {e}")))?;
        if autopilot.server_stabilization_time >= self.config.join_timeout {
            return Err(Failure::bad_request(format!(
                "configuration refused: the server stabilization time must stay below the join timeout ({:?})",
                self.config.join_timeout
            )));
        }
        let reload = raftkv_raft::ReloadableConfig {
            promotion_max_lag: Some(autopilot.max_trailing_logs),
            promotion_stable: Some(autopilot.server_stabilization_time),
            ..raft
        };
        let config = self.raft.reload_config(reload).await.map_err(|error| match error {
            raftkv_raft::RaftError::Config(reason) => Failure::bad_request(format!("configuration refused: {reason}")),
            other => Failure::from(other),
        })?;
        *self.autopilot.write().unwrap_or_else(|p| p.into_inner()) = autopilot;
        Ok(config)
    }

    /// The autopilot's last round on this node; `None` unless it leads.
    pub fn autopilot_state(&self) -> Option<AutopilotState> {
        self.autopilot_state.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// The autopilot's rounds, on every node, acting only while it leads:
    /// judge each server's health, and remove one dead server when the
    /// settings allow it (guarded by the configuration the round read, so
    /// a change made meanwhile wins).
    pub(crate) async fn run_autopilot(self: Arc<Agent>) {
        const ROUND: Duration = Duration::from_millis(100);
        let mut tracker = Tracker::default();
        let mut interval = tokio::time::interval(ROUND);
        interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            interval.tick().await;
            if self.raft.leader().leader != Some(self.id) {
                // Only a leader judges: a follower asks the raft loop nothing.
                tracker = Tracker::default();
                *self.autopilot_state.lock().unwrap_or_else(|p| p.into_inner()) = None;
                continue;
            }
            let Ok(status) = self.raft.status().await else { continue };
            let config = self.autopilot_config();
            let view = self.gossip.as_ref().map(Gossip::view);
            let join_timeout = self.config.join_timeout;
            let state = tracker.observe(&status, &config, join_timeout, view.as_ref(), Instant::now());
            let remove = state.as_ref().and_then(|s| s.remove);
            *self.autopilot_state.lock().unwrap_or_else(|p| p.into_inner()) = state;
            let Some(dead) = remove else { continue };
            let at = Some(status.membership_index);
            match self.raft.remove_server(dead, at, self.config.request_timeout).await {
                Ok(index) => {
                    self.refuse_removed(dead);
                    tracing::warn!(node = %dead, %index, "autopilot removed a dead server");
                }
                Err(error) => tracing::info!(node = %dead, %error, "autopilot could not remove a dead server yet"),
            }
        }
    }

    /// Leaves the cluster for good (Consul's `leave`): hands leadership to
    /// another voter if this node leads, has the leader remove it from the
    /// configuration, tells gossip it leaves, then marks it left (`left()`
    /// resolves: the process ends). A node that cannot be removed (the last
    /// voter) is refused and stays.
    pub async fn leave(&self) -> Result<(), Failure> {
        // Removed already (a retried leave whose first answer was lost, say):
        // what is left is telling gossip and stopping.
        let status = match self.removed() {
            Some(_) => None,
            None => Some(self.raft.status().await.map_err(|e| Failure::from(e).changed_nothing())?),
        };
        if let Some(status) = status.filter(|s| s.membership.is_member(self.id)) {
            if status.leader == Some(self.id) {
                let target = self.first_other_voter().await?;
                self.raft.leadership_transfer(target).await?;
                tracing::info!(%target, "handed leadership over before leaving");
            }
            match self.admin(AdminOp::Remove(self.id)).await? {
                AdminDone::Changed(index) => {
                    tracing::warn!(%index, "removed from the cluster's configuration");
                    // From here on this node takes no part: a join still
                    // retrying since its start ends instead of adding it back.
                    let reason = format!("node {} left the cluster (configuration index {index})", self.id);
                    self.leaving.store(true, std::sync::atomic::Ordering::SeqCst);
                    *self.removed.write().unwrap_or_else(|p| p.into_inner()) = Some(reason);
                }
                other => return Err(Failure::internal(Outcome::Unknown, format!("unexpected answer: {other:?}"))),
            }
        }
        if let Some(gossip) = &self.gossip {
            gossip.leave().await;
        }
        tracing::warn!(id = %self.id, "left the cluster; stopping");
        self.left.send_replace(true);
        Ok(())
    }

    /// Whether this node has left the cluster (`leave`).
    pub fn has_left(&self) -> bool {
        *self.left.borrow()
    }

    /// Resolves once this node has left the cluster (`leave`).
    pub async fn left(&self) {
        let mut left = self.left.subscribe();
        let _ = left.wait_for(|left| *left).await;
    }
}

/// On the leader: the voters (not this node) that answered within
/// `contact`, the highest match index first, the freshest contact breaking
/// ties.
fn voters_by_progress(status: &raftkv_raft::Status, contact: Duration) -> Vec<NodeId> {
    let mut peers: Vec<_> = status
        .peers
        .iter()
        .filter(|p| p.voter && p.id != status.id && p.last_contact.is_some_and(|c| c < contact))
        .collect();
    peers.sort_by_key(|p| (std::cmp::Reverse(p.match_index), p.last_contact));
    peers.into_iter().map(|p| p.id).collect()
}

/// How long readiness waits for the leader's read index, and a stop for
/// the node's status.
const READY_WITHIN: Duration = Duration::from_secs(1);

/// A node ready to serve (`Agent::readiness`).
#[derive(Clone, Copy, Debug)]
pub struct Readiness {
    pub leader: NodeId,
    pub term: raftkv_raft::Term,
    pub commit_index: LogIndex,
    pub applied_index: LogIndex,
}
