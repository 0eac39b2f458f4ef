//! Autopilot (Consul's rules), run on the leader: which servers are healthy
//! and since when, the cluster's failure tolerance, and the removal of dead
//! servers when the operator allows it.
//!
//! A server is *healthy* when it answered this leader within
//! `last_contact_threshold` (an answer in this term also says it follows
//! this leader's term) and trails by at most `max_trailing_logs` entries; it
//! is *stable* once healthy without a break for `server_stabilization_time`.
//! Promotion is not decided here: `Raft::add_voter` stages a joining server
//! and the raft library promotes it once caught up, by its own rule, with
//! `max_trailing_logs` and `server_stabilization_time` as that rule's lag and
//! period. A server is *dead* once unhealthy without a break for
//! `server_stabilization_time` and silent for as long (one that answers but
//! trails, catching up, is not dead; a staging one only after the join
//! timeout, by which the join that staged it has removed it if its caller
//! still waits: the autopilot cleans up after joins whose leader changed); with `cleanup_dead_servers` the leader
//! removes one dead server at a time, never its own, and a voter only while
//! the voters left are at least `min_quorum` and a quorum of them is
//! healthy. Everything here is pure: `Tracker::observe` takes the leader's
//! status and a clock reading.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use raftkv_raft::{NodeId, Status, Term};

use crate::agent::gossip::{GossipView, Liveness};
use serde::{Deserialize, Serialize};

/// The autopilot's settings (Consul's names); all reloadable.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AutopilotConfig {
    /// A server that has not answered the leader for longer is unhealthy.
    pub last_contact_threshold: Duration,
    /// A server trailing the leader by more entries is unhealthy (and a
    /// staging server is not caught up).
    pub max_trailing_logs: u64,
    /// How long a server must stay healthy to count as stable (and a staging
    /// one caught up before its promotion), or unhealthy to count as dead.
    pub server_stabilization_time: Duration,
    /// Remove dead servers (see the module doc for when).
    pub cleanup_dead_servers: bool,
    /// Never remove a dead voter if fewer voters than this would remain.
    /// Consul's default is 0; ours is 3, so that a cluster of three or more
    /// shrinks only as replacements join, never because one server was cut
    /// off for a while.
    pub min_quorum: usize,
}

impl Default for AutopilotConfig {
    /// Consul's defaults, except the contact threshold: Consul's 200 ms is two
    /// heartbeats at our 100 ms, and one scheduling stall of a loaded 2-core
    /// machine misses two; 500 ms (five heartbeats) does not flap there and
    /// still reports a dead server within a second.
    fn default() -> AutopilotConfig {
        AutopilotConfig {
            last_contact_threshold: Duration::from_millis(500),
            max_trailing_logs: 250,
            server_stabilization_time: Duration::from_secs(10),
            cleanup_dead_servers: true,
            min_quorum: 3,
        }
    }
}

impl AutopilotConfig {
    pub fn validate(&self) -> Result<(), String> {
        if self.last_contact_threshold.is_zero() {
            return Err("last_contact_threshold must be positive".into());
        }
        if self.max_trailing_logs == 0 {
            return Err("max_trailing_logs must be positive".into());
        }
        if self.server_stabilization_time.is_zero() {
            return Err("server_stabilization_time must be positive".into());
        }
        if self.min_quorum > 64 {
            return Err("min_quorum must be at most 64".into());
        }
        Ok(())
    }
}

/// A server's place in the configuration.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ServerStatus {
    Leader,
    Voter,
    /// A learner to be promoted once caught up.
    Staging,
    Nonvoter,
}

/// One server as the autopilot sees it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServerHealth {
    pub id: u64,
    pub status: ServerStatus,
    pub healthy: bool,
    /// How long it has been healthy (stable once this reaches the
    /// stabilization time), or unhealthy; null before the first observation.
    pub healthy_for_ms: Option<u64>,
    pub unhealthy_for_ms: Option<u64>,
    pub stable: bool,
    pub dead: bool,
    /// What gossip says of it, when this node gossips.
    pub gossip: Option<Liveness>,
    /// Time since it last answered this leader; null: not in this term.
    pub last_contact_ms: Option<u64>,
    pub match_index: u64,
    pub trailing: u64,
}

/// The cluster as the autopilot sees it (`operator autopilot state`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct AutopilotState {
    /// Every server healthy.
    pub healthy: bool,
    /// Healthy voters beyond a quorum: how many more may fail now.
    pub failure_tolerance: usize,
    pub leader: u64,
    pub term: u64,
    pub voters: Vec<u64>,
    pub servers: Vec<ServerHealth>,
    /// The removal the autopilot decided on in this round, if any.
    #[serde(skip)]
    pub remove: Option<NodeId>,
}

/// What the autopilot remembers between rounds: since when each server has
/// been healthy or unhealthy, as this leader saw it. Starts over with each
/// term this node leads.
#[derive(Debug, Default)]
pub struct Tracker {
    term: Option<Term>,
    since: BTreeMap<NodeId, (bool, Instant)>,
}

impl Tracker {
    /// One round on the leader's `status` at `now`; `None` when this node
    /// does not lead. A staging server counts as dead only once silent for
    /// `join_timeout` too. With `gossip`, a server unhealthy for as long that
    /// gossip declared down is dead even if it still answers now and then
    /// (as Consul's autopilot reaps servers serf marks failed); a verdict of
    /// gossip alone never is: a removal is final for the node, and one
    /// stall must not cost it its place.
    pub fn observe(
        &mut self,
        status: &Status,
        config: &AutopilotConfig,
        join_timeout: Duration,
        gossip: Option<&GossipView>,
        now: Instant,
    ) -> Option<AutopilotState> {
        if status.leader != Some(status.id) {
            self.term = None;
            self.since.clear();
            return None;
        }
        if self.term != Some(status.term) {
            self.term = Some(status.term);
            self.since.clear();
        }
        let membership = &status.membership;
        let members = membership.members();
        self.since.retain(|id, _| members.contains(id));
        let mut servers = Vec::new();
        for id in members.iter().copied() {
            let role = if id == status.id {
                ServerStatus::Leader
            } else if membership.is_voter(id) {
                ServerStatus::Voter
            } else if membership.is_staging(id) {
                ServerStatus::Staging
            } else {
                ServerStatus::Nonvoter
            };
            let peer = status.peers.iter().find(|p| p.id == id);
            let (healthy, last_contact, match_index, trailing) = match peer {
                _ if id == status.id => (true, Some(Duration::ZERO), status.last_log_index.0, 0),
                Some(peer) => {
                    let heard = peer.last_contact.is_some_and(|d| d <= config.last_contact_threshold);
                    (
                        heard && peer.trailing <= config.max_trailing_logs,
                        peer.last_contact,
                        peer.match_index.0,
                        peer.trailing,
                    )
                }
                None => (false, None, 0, status.last_log_index.0),
            };
            let entry = self.since.entry(id).or_insert((healthy, now));
            if entry.0 != healthy {
                *entry = (healthy, now);
            }
            let held = now.saturating_duration_since(entry.1);
            let dead_after = match role {
                ServerStatus::Staging => config.server_stabilization_time.max(join_timeout),
                _ => config.server_stabilization_time,
            };
            let ms = |d: Duration| d.as_millis().min(u64::MAX as u128) as u64;
            let liveness = gossip.and_then(|view| view.liveness(id.0));
            let silent = last_contact.is_none_or(|d| d >= dead_after);
            servers.push(ServerHealth {
                id: id.0,
                status: role,
                healthy,
                healthy_for_ms: healthy.then(|| ms(held)),
                unhealthy_for_ms: (!healthy).then(|| ms(held)),
                stable: healthy && held >= config.server_stabilization_time,
                dead: !healthy
                    && role != ServerStatus::Leader
                    && held >= dead_after
                    && (silent || liveness == Some(Liveness::Down)),
                gossip: liveness,
                last_contact_ms: last_contact.map(ms),
                match_index,
                trailing,
            });
        }
        let voters: Vec<u64> = membership.voters.iter().map(|v| v.0).collect();
        let healthy_voters = servers.iter().filter(|s| s.healthy && voters.contains(&s.id)).count();
        let quorum = voters.len() / 2 + 1;
        let remove =
            if config.cleanup_dead_servers { dead_to_remove(&servers, &voters, healthy_voters, config) } else { None };
        Some(AutopilotState {
            healthy: servers.iter().all(|s| s.healthy),
            failure_tolerance: healthy_voters.saturating_sub(quorum),
            leader: status.id.0,
            term: status.term.0,
            voters,
            servers,
            remove,
        })
    }
}

/// The dead server to remove now, if any: nonvoters first (they never count),
/// then a voter, only if the voters left number at least `min_quorum` and a
/// quorum of them is healthy (the dead one was not, so the healthy count
/// stays). Lowest id first; one per round.
fn dead_to_remove(
    servers: &[ServerHealth],
    voters: &[u64],
    healthy_voters: usize,
    config: &AutopilotConfig,
) -> Option<NodeId> {
    let dead = |voter: bool| servers.iter().filter(move |s| s.dead && voters.contains(&s.id) == voter);
    if let Some(server) = dead(false).next() {
        return Some(NodeId(server.id));
    }
    let left = voters.len().checked_sub(1)?;
    if left == 0 || left < config.min_quorum || healthy_voters < left / 2 + 1 {
        return None;
    }
    dead(true).next().map(|s| NodeId(s.id))
}

#[cfg(test)]
mod tests {
    use raftkv_raft::{Configuration, LogIndex, PeerStatus, Role};

    use super::*;

    const JOIN: Duration = Duration::from_secs(60);

    fn status(voters: &[u64], learners: &[u64], staging: &[u64], peers: &[(u64, Option<u64>, u64)]) -> Status {
        let mut membership = Configuration::new(voters.iter().map(|v| NodeId(*v)));
        membership.learners = learners.iter().chain(staging).map(|l| NodeId(*l)).collect();
        membership.staging = staging.iter().map(|l| NodeId(*l)).collect();
        Status {
            id: NodeId(1),
            role: Role::Leader,
            term: Term(3),
            leader: Some(NodeId(1)),
            commit_index: LogIndex(1000),
            last_log_index: LogIndex(1000),
            last_log_term: Term(3),
            first_log_index: LogIndex(1),
            membership,
            membership_index: LogIndex(5),
            voted_for: Some(NodeId(1)),
            last_contact: Some(Duration::ZERO),
            snapshot: None,
            peers: peers
                .iter()
                .map(|(id, contact_ms, trailing)| PeerStatus {
                    id: NodeId(*id),
                    voter: voters.contains(id),
                    match_index: LogIndex(1000 - trailing),
                    trailing: *trailing,
                    last_contact: contact_ms.map(Duration::from_millis),
                    staging: staging.contains(id),
                    caught_up_for: None,
                })
                .collect(),
        }
    }

    fn server(state: &AutopilotState, id: u64) -> &ServerHealth {
        state.servers.iter().find(|s| s.id == id).unwrap()
    }

    /// Healthy needs a recent answer and a short lag; stable and dead need
    /// the state held for the stabilization time; the failure tolerance
    /// counts healthy voters beyond a quorum.
    #[test]
    fn health_stability_and_failure_tolerance() {
        let config = AutopilotConfig::default();
        let mut tracker = Tracker::default();
        let t0 = Instant::now();
        let round = status(
            &[1, 2, 3, 4, 5],
            &[],
            &[],
            &[(2, Some(50), 0), (3, None, 0), (4, Some(50), 251), (5, Some(900), 0)],
        );
        let state = tracker.observe(&round, &config, JOIN, None, t0).unwrap();
        assert!(server(&state, 1).healthy && server(&state, 2).healthy);
        assert!(!server(&state, 3).healthy && !server(&state, 4).healthy && !server(&state, 5).healthy);
        assert_eq!(state.failure_tolerance, 0, "2 healthy of 5 voters: below a quorum");
        assert!(!state.healthy && state.servers.iter().all(|s| !s.stable && !s.dead));

        let later = t0 + config.server_stabilization_time;
        let state = tracker.observe(&round, &config, JOIN, None, later).unwrap();
        assert!(server(&state, 2).stable && server(&state, 3).dead);
        assert!(!server(&state, 4).dead, "it answers: catching up, not dead");
        assert_eq!(state.remove, None, "removing a voter would leave 2 healthy of 4");

        let better =
            status(&[1, 2, 3, 4, 5], &[], &[], &[(2, Some(50), 0), (3, None, 0), (4, Some(50), 0), (5, Some(50), 0)]);
        let state = tracker.observe(&better, &config, JOIN, None, later).unwrap();
        assert_eq!(state.failure_tolerance, 1);
        assert!(!server(&state, 4).stable, "healthy again only now");
        assert_eq!(state.remove, Some(NodeId(3)), "4 voters left, 4 healthy");
    }

    /// `min_quorum` keeps a dead voter until a replacement makes the count;
    /// a dead nonvoter goes first; nothing is removed with cleanup off or by
    /// a node that does not lead.
    #[test]
    fn dead_servers_are_removed_only_as_the_operator_allows() {
        let config = AutopilotConfig { min_quorum: 3, ..AutopilotConfig::default() };
        let t0 = Instant::now();
        let later = t0 + config.server_stabilization_time;
        let three = status(&[1, 2, 3], &[], &[], &[(2, Some(10), 0), (3, None, 0)]);
        let mut tracker = Tracker::default();
        tracker.observe(&three, &config, JOIN, None, t0);
        assert_eq!(
            tracker.observe(&three, &config, JOIN, None, later).unwrap().remove,
            None,
            "only 2 voters would remain"
        );

        let replaced =
            status(&[1, 2, 3, 4], &[6], &[], &[(2, Some(10), 0), (3, None, 0), (4, Some(10), 0), (6, None, 0)]);
        let mut tracker = Tracker::default();
        tracker.observe(&replaced, &config, JOIN, None, t0);
        assert_eq!(
            tracker.observe(&replaced, &config, JOIN, None, later).unwrap().remove,
            Some(NodeId(6)),
            "the nonvoter first"
        );
        let replaced = status(&[1, 2, 3, 4], &[], &[], &[(2, Some(10), 0), (3, None, 0), (4, Some(10), 0)]);
        assert_eq!(tracker.observe(&replaced, &config, JOIN, None, later).unwrap().remove, Some(NodeId(3)));

        let off = AutopilotConfig { cleanup_dead_servers: false, ..config.clone() };
        assert_eq!(tracker.observe(&replaced, &off, JOIN, None, later).unwrap().remove, None);
        let mut follower = replaced.clone();
        follower.leader = Some(NodeId(2));
        assert!(tracker.observe(&follower, &config, JOIN, None, later).is_none());
    }

    /// A silent staging server is left to the join that staged it (whose
    /// deadline removes it) until the join timeout; after that, it is an
    /// orphan of a join whose leader changed, and the autopilot removes it.
    #[test]
    fn a_silent_staging_server_is_dead_only_after_the_join_timeout() {
        let config = AutopilotConfig::default();
        let t0 = Instant::now();
        let staged = status(&[1, 2, 3], &[], &[7], &[(2, Some(10), 0), (3, Some(10), 0), (7, None, 0)]);
        let mut tracker = Tracker::default();
        tracker.observe(&staged, &config, JOIN, None, t0);
        let state = tracker.observe(&staged, &config, JOIN, None, t0 + config.server_stabilization_time).unwrap();
        assert!(!server(&state, 7).dead && state.remove.is_none(), "{state:?}");
        let state = tracker.observe(&staged, &config, JOIN, None, t0 + JOIN).unwrap();
        assert!(server(&state, 7).dead);
        assert_eq!(state.remove, Some(NodeId(7)));
    }

    /// Gossip's verdict counts once the server has been unhealthy for the
    /// stabilization time (a stall does not cost a node its place); a
    /// healthy one is never dead, whatever gossip says.
    #[test]
    fn a_server_gossip_declared_down_is_dead_once_unhealthy_for_the_stabilization_time() {
        use crate::agent::gossip::{GossipId, GossipMember};
        let member = |node: u64, liveness| GossipMember {
            id: GossipId {
                node,
                gossip_addr: std::net::SocketAddr::from(([127, 0, 0, 1], 7000 + node as u16)),
                raft_addr: String::new(),
                http_addr: String::new(),
                generation: 1,
            },
            liveness,
        };
        let view = GossipView {
            members: vec![member(2, Liveness::Down), member(3, Liveness::Down), member(4, Liveness::Alive)],
            clusters: Default::default(),
        };
        let config = AutopilotConfig::default();
        let round = status(&[1, 2, 3, 4], &[], &[], &[(2, Some(10), 0), (3, Some(900), 0), (4, Some(10), 0)]);
        let (t0, mut tracker) = (Instant::now(), Tracker::default());
        let state = tracker.observe(&round, &config, JOIN, Some(&view), t0).unwrap();
        assert!(!server(&state, 3).dead && state.remove.is_none(), "unhealthy only now");
        let later = t0 + config.server_stabilization_time;
        let state = tracker.observe(&round, &config, JOIN, Some(&view), later).unwrap();
        assert!(!server(&state, 2).dead, "it answers the leader");
        assert!(server(&state, 3).dead && server(&state, 3).gossip == Some(Liveness::Down));
        assert_eq!(state.remove, Some(NodeId(3)));
    }
}
