//! `Stats`: what a node reports to operators, typed. It serializes (serde) with
//! plain numbers for ids, terms and indexes, and renders as hashicorp/raft's
//! `Stats()` map of strings (`Stats::to_map`), field names and formats included.

use std::collections::BTreeMap;
use std::time::Duration;

use raftkv_core::{LogIndex, NodeId, Role, Term};
use serde::{Serialize, Serializer};

use crate::runtime::Status;

/// The snapshot format version this crate writes and reads (hashicorp's
/// `snapshot_version_min`/`_max`).
pub const SNAPSHOT_VERSION: u32 = 1;

/// hashicorp/raft's coarse state: pre-candidates count as candidates,
/// learners as followers.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub enum State {
    /// Leads its term.
    Leader,
    /// Campaigns for votes or pre-votes.
    Candidate,
    /// Follows a leader or waits for one (learners too).
    Follower,
}

impl State {
    /// The coarse state of `role`.
    pub fn of(role: Role) -> State {
        match role {
            Role::Leader => State::Leader,
            Role::Candidate | Role::PreCandidate => State::Candidate,
            Role::Follower | Role::Learner => State::Follower,
        }
    }

    /// The name hashicorp prints: `"Leader"`, `"Candidate"` or `"Follower"`.
    pub fn as_str(self) -> &'static str {
        match self {
            State::Leader => "Leader",
            State::Candidate => "Candidate",
            State::Follower => "Follower",
        }
    }
}

/// How a member takes part in the configuration (hashicorp's
/// `ServerSuffrage`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub enum Suffrage {
    /// Votes, and counts toward every quorum.
    Voter,
    /// A learner: receives the log, never votes nor counts.
    Nonvoter,
    /// A nonvoter the leader will promote once it has caught up (`Raft::add_voter`).
    Staging,
}

/// A member of the latest configuration.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Server {
    /// The member's id.
    pub id: NodeId,
    /// Whether it votes.
    pub suffrage: Suffrage,
    /// As the transport knows it.
    pub address: Option<String>,
}

/// A node's state for operators (`Raft::statistics`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Stats {
    /// This node's id.
    pub id: NodeId,
    /// The core's role, finer than `state`.
    pub role: Role,
    /// hashicorp's coarse state.
    pub state: State,
    /// The current term.
    pub term: Term,
    /// The leader of the current term, if known.
    pub leader: Option<NodeId>,
    /// Index of the last entry of the log (or of the newest snapshot, when
    /// the log holds nothing after it).
    pub last_log_index: LogIndex,
    /// Term of that entry.
    pub last_log_term: Term,
    /// The highest index known committed.
    pub commit_index: LogIndex,
    /// The highest index the state machine has applied.
    pub applied_index: LogIndex,
    /// Committed entries not applied yet.
    pub fsm_pending: u64,
    /// The newest snapshot's last entry (zero when there is none).
    pub last_snapshot_index: LogIndex,
    /// Its term (zero when there is none).
    pub last_snapshot_term: Term,
    /// Voters, then non-voters, each by id.
    pub latest_configuration: Vec<Server>,
    /// Index of the entry that carried it (or of the snapshot it came with).
    pub latest_configuration_index: LogIndex,
    /// Voters other than this node.
    pub num_peers: u64,
    /// Since the leader was last heard from (zero on the leader; `None` if
    /// never).
    pub last_contact: Option<Duration>,
    /// The transport's wire protocol (`Transport::protocol_version`); `None`
    /// for an in-process transport.
    pub protocol_version: Option<u32>,
    /// The snapshot format version this build writes ([`SNAPSHOT_VERSION`]).
    pub snapshot_version: u32,
}

impl Stats {
    /// Assembles the stats from the node's status, its applied index, what
    /// its transport speaks, and where each server is.
    pub(crate) fn new(
        status: &Status,
        applied: LogIndex,
        protocol_version: Option<u32>,
        address_of: impl Fn(NodeId) -> Option<String>,
    ) -> Stats {
        let server = |id: &NodeId, suffrage| Server { id: *id, suffrage, address: address_of(*id) };
        let mut servers: Vec<Server> = status.membership.voters.iter().map(|id| server(id, Suffrage::Voter)).collect();
        servers.extend(status.membership.learners.iter().map(|id| {
            server(id, if status.membership.is_staging(*id) { Suffrage::Staging } else { Suffrage::Nonvoter })
        }));
        Stats {
            id: status.id,
            role: status.role,
            state: State::of(status.role),
            term: status.term,
            leader: status.leader,
            last_log_index: status.last_log_index,
            last_log_term: status.last_log_term,
            commit_index: status.commit_index,
            applied_index: applied,
            fsm_pending: status.commit_index.0.saturating_sub(applied.0),
            last_snapshot_index: status.snapshot.map_or(LogIndex::ZERO, |s| s.index),
            last_snapshot_term: status.snapshot.map_or(Term(0), |s| s.term),
            latest_configuration: servers,
            latest_configuration_index: status.membership_index,
            num_peers: status.membership.voters.iter().filter(|id| **id != status.id).count() as u64,
            last_contact: status.last_contact,
            protocol_version,
            snapshot_version: SNAPSHOT_VERSION,
        }
    }

    /// hashicorp/raft's `Stats()`: the same field names, values as strings
    /// (`latest_configuration` as `[{Suffrage:Voter ID:1 Address:host:port} ...]`,
    /// `last_contact` as `0` on the leader, a duration, or `never`). The
    /// `protocol_version*` fields are left out when the transport has no wire
    /// protocol.
    pub fn to_map(&self) -> BTreeMap<&'static str, String> {
        let servers: Vec<String> = self
            .latest_configuration
            .iter()
            .map(|s| {
                let suffrage = match s.suffrage {
                    Suffrage::Voter => "Voter",
                    Suffrage::Nonvoter => "Nonvoter",
                    Suffrage::Staging => "Staging",
                };
                format!("{{Suffrage:{suffrage} ID:{} Address:{}}}", s.id.0, s.address.as_deref().unwrap_or_default())
            })
            .collect();
        let last_contact = match self.last_contact {
            Some(d) if d.is_zero() => "0".to_string(),
            Some(d) => format!("{d:?}"),
            None => "never".to_string(),
        };
        let mut map = BTreeMap::from([
            ("applied_index", self.applied_index.0.to_string()),
            ("commit_index", self.commit_index.0.to_string()),
            ("fsm_pending", self.fsm_pending.to_string()),
            ("last_contact", last_contact),
            ("last_log_index", self.last_log_index.0.to_string()),
            ("last_log_term", self.last_log_term.0.to_string()),
            ("last_snapshot_index", self.last_snapshot_index.0.to_string()),
            ("last_snapshot_term", self.last_snapshot_term.0.to_string()),
            ("latest_configuration", format!("[{}]", servers.join(" "))),
            ("latest_configuration_index", self.latest_configuration_index.0.to_string()),
            ("num_peers", self.num_peers.to_string()),
            ("snapshot_version_max", self.snapshot_version.to_string()),
            ("snapshot_version_min", self.snapshot_version.to_string()),
            ("state", self.state.as_str().to_string()),
            ("term", self.term.0.to_string()),
        ]);
        if let Some(version) = self.protocol_version {
            map.insert("protocol_version", version.to_string());
            map.insert("protocol_version_max", version.to_string());
            map.insert("protocol_version_min", version.to_string());
        }
        map
    }
}

/// The JSON form: numbers for ids, terms and indexes, `last_contact_ms` in
/// (fractional) milliseconds.
#[derive(Serialize)]
struct Wire<'a> {
    id: u64,
    role: &'static str,
    state: State,
    term: u64,
    leader: Option<u64>,
    last_log_index: u64,
    last_log_term: u64,
    commit_index: u64,
    applied_index: u64,
    fsm_pending: u64,
    last_snapshot_index: u64,
    last_snapshot_term: u64,
    latest_configuration: Vec<WireServer<'a>>,
    latest_configuration_index: u64,
    num_peers: u64,
    last_contact_ms: Option<f64>,
    protocol_version: Option<u32>,
    snapshot_version: u32,
}

#[derive(Serialize)]
struct WireServer<'a> {
    id: u64,
    suffrage: Suffrage,
    address: Option<&'a str>,
}

fn role_name(role: Role) -> &'static str {
    match role {
        Role::Follower => "Follower",
        Role::PreCandidate => "PreCandidate",
        Role::Candidate => "Candidate",
        Role::Leader => "Leader",
        Role::Learner => "Learner",
    }
}

impl Serialize for Stats {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        Wire {
            id: self.id.0,
            role: role_name(self.role),
            state: self.state,
            term: self.term.0,
            leader: self.leader.map(|l| l.0),
            last_log_index: self.last_log_index.0,
            last_log_term: self.last_log_term.0,
            commit_index: self.commit_index.0,
            applied_index: self.applied_index.0,
            fsm_pending: self.fsm_pending,
            last_snapshot_index: self.last_snapshot_index.0,
            last_snapshot_term: self.last_snapshot_term.0,
            latest_configuration: self
                .latest_configuration
                .iter()
                .map(|s| WireServer { id: s.id.0, suffrage: s.suffrage, address: s.address.as_deref() })
                .collect(),
            latest_configuration_index: self.latest_configuration_index.0,
            num_peers: self.num_peers,
            last_contact_ms: self.last_contact.map(|d| d.as_secs_f64() * 1000.0),
            protocol_version: self.protocol_version,
            snapshot_version: self.snapshot_version,
        }
        .serialize(serializer)
    }
}

#[cfg(test)]
mod tests {
    use raftkv_core::{Configuration, LogId};

    use super::*;

    fn status() -> Status {
        let mut membership = Configuration::new([NodeId(1), NodeId(2), NodeId(3)]);
        membership.learners.insert(NodeId(4));
        Status {
            id: NodeId(1),
            role: Role::PreCandidate,
            term: Term(7),
            leader: None,
            commit_index: LogIndex(40),
            last_log_index: LogIndex(42),
            last_log_term: Term(6),
            first_log_index: LogIndex(11),
            membership,
            membership_index: LogIndex(3),
            voted_for: None,
            last_contact: Some(Duration::from_millis(1500)),
            snapshot: Some(LogId::new(Term(5), LogIndex(10))),
            peers: Vec::new(),
        }
    }

    fn address(id: NodeId) -> Option<String> {
        (id != NodeId(3)).then(|| format!("10.0.0.{}:7000", id.0))
    }

    #[test]
    fn the_map_has_hashicorps_fields_and_formats() {
        let map = Stats::new(&status(), LogIndex(38), Some(2), address).to_map();
        let expected = [
            ("applied_index", "38"),
            ("commit_index", "40"),
            ("fsm_pending", "2"),
            ("last_contact", "1.5s"),
            ("last_log_index", "42"),
            ("last_log_term", "6"),
            ("last_snapshot_index", "10"),
            ("last_snapshot_term", "5"),
            (
                "latest_configuration",
                "[{Suffrage:Voter ID:1 Address:10.0.0.1:7000} {Suffrage:Voter ID:2 Address:10.0.0.2:7000} \
                 {Suffrage:Voter ID:3 Address:} {Suffrage:Nonvoter ID:4 Address:10.0.0.4:7000}]",
            ),
            ("latest_configuration_index", "3"),
            ("num_peers", "2"),
            ("protocol_version", "2"),
            ("protocol_version_max", "2"),
            ("protocol_version_min", "2"),
            ("snapshot_version_max", "1"),
            ("snapshot_version_min", "1"),
            ("state", "Candidate"),
            ("term", "7"),
        ];
        let expected: BTreeMap<&str, String> = expected.into_iter().map(|(k, v)| (k, v.to_string())).collect();
        assert_eq!(map, expected);
    }

    #[test]
    fn last_contact_and_protocol_edge_cases() {
        let mut status = status();
        status.last_contact = Some(Duration::ZERO);
        let map = Stats::new(&status, LogIndex(38), None, address).to_map();
        assert_eq!(map["last_contact"], "0");
        assert!(!map.contains_key("protocol_version"));
        status.last_contact = None;
        assert_eq!(Stats::new(&status, LogIndex(38), None, address).to_map()["last_contact"], "never");
    }

    #[test]
    fn the_json_form_has_plain_numbers() {
        let stats = Stats::new(&status(), LogIndex(38), Some(2), address);
        let json = serde_json::to_value(&stats).unwrap();
        assert_eq!(json["term"], 7);
        assert_eq!(json["state"], "Candidate");
        assert_eq!(json["role"], "PreCandidate");
        assert_eq!(json["last_contact_ms"], 1500.0);
        assert_eq!(json["latest_configuration"][3]["suffrage"], "Nonvoter");
        assert_eq!(json["latest_configuration"][2]["address"], serde_json::Value::Null);
        assert_eq!(json["leader"], serde_json::Value::Null);
        assert_eq!(json["protocol_version"], 2);
    }
}
