//! Quorum arithmetic for simple and joint configurations.
//!
//! Pure functions over a configuration and a per-voter value; no protocol state.
//! A joint configuration needs a majority of each half (thesis §4.3); an empty half
//! (the outgoing half of a simple configuration) agrees with everything.

use std::collections::BTreeSet;

use crate::types::{Configuration, NodeId};

/// Outcome of counting votes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum VoteResult {
    /// A majority (of each half, in a joint configuration) granted.
    Won,
    /// Enough refused that no majority can grant any more.
    Lost,
    /// Neither yet: some answers are still missing.
    Pending,
}

/// The largest value that a majority of `voters` have reached (`u64::MAX` for an
/// empty set). `value_of` returns each voter's value; unknown voters count as 0.
pub fn majority_value(voters: &BTreeSet<NodeId>, value_of: impl Fn(NodeId) -> u64) -> u64 {
    if voters.is_empty() {
        return u64::MAX;
    }
    let mut values: Vec<u64> = voters.iter().map(|id| value_of(*id)).collect();
    // Sort descending: the value at position n/2 is held by at least n/2 + 1 voters.
    values.sort_unstable_by(|a, b| b.cmp(a));
    values[voters.len() / 2]
}

/// The largest value that both halves of `config` agree on by majority.
#[cfg(not(feature = "bug-injection"))]
pub fn joint_majority_value(config: &Configuration, value_of: impl Fn(NodeId) -> u64) -> u64 {
    majority_value(&config.voters, &value_of).min(majority_value(&config.voters_outgoing, &value_of))
}

/// Bug-injection build: may count learners as voters when the bug is enabled.
#[cfg(feature = "bug-injection")]
pub fn joint_majority_value(config: &Configuration, value_of: impl Fn(NodeId) -> u64) -> u64 {
    if crate::bugs::enabled(crate::bugs::InjectedBug::CountLearnerInQuorum) {
        let mut voters = config.voters.clone();
        voters.extend(config.learners.iter().copied());
        return majority_value(&voters, &value_of).min(majority_value(&config.voters_outgoing, &value_of));
    }
    majority_value(&config.voters, &value_of).min(majority_value(&config.voters_outgoing, &value_of))
}

fn vote_result_of(voters: &BTreeSet<NodeId>, vote_of: &impl Fn(NodeId) -> Option<bool>) -> VoteResult {
    if voters.is_empty() {
        return VoteResult::Won;
    }
    let (mut yes, mut missing) = (0, 0);
    for id in voters {
        match vote_of(*id) {
            Some(true) => yes += 1,
            Some(false) => {}
            None => missing += 1,
        }
    }
    let needed = voters.len() / 2 + 1;
    if yes >= needed {
        VoteResult::Won
    } else if yes + missing >= needed {
        VoteResult::Pending
    } else {
        VoteResult::Lost
    }
}

/// Result of an election in `config`, given each voter's answer (`None` = not yet).
pub fn vote_result(config: &Configuration, vote_of: impl Fn(NodeId) -> Option<bool>) -> VoteResult {
    match (vote_result_of(&config.voters, &vote_of), vote_result_of(&config.voters_outgoing, &vote_of)) {
        (VoteResult::Won, VoteResult::Won) => VoteResult::Won,
        (VoteResult::Lost, _) | (_, VoteResult::Lost) => VoteResult::Lost,
        _ => VoteResult::Pending,
    }
}

/// Whether the nodes for which `active` holds form a quorum of `config`.
pub fn has_quorum(config: &Configuration, active: impl Fn(NodeId) -> bool) -> bool {
    vote_result(config, |id| Some(active(id))) == VoteResult::Won
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ids(list: &[u64]) -> BTreeSet<NodeId> {
        list.iter().map(|i| NodeId(*i)).collect()
    }

    /// A naive reference: the largest candidate value that a majority has reached.
    fn naive_majority(voters: &BTreeSet<NodeId>, value_of: &dyn Fn(NodeId) -> u64) -> u64 {
        if voters.is_empty() {
            return u64::MAX;
        }
        let mut best = 0;
        for candidate in voters.iter().map(|id| value_of(*id)) {
            let holders = voters.iter().filter(|id| value_of(**id) >= candidate).count();
            if holders > voters.len() / 2 {
                best = best.max(candidate);
            }
        }
        best
    }

    #[test]
    fn majority_matches_naive_reference_on_many_inputs() {
        let mut state = 0x9E37_79B9_7F4A_7C15u64;
        for _ in 0..5_000 {
            state = crate::rng::splitmix64(state);
            let n = (state % 7) as usize + 1;
            let voters: BTreeSet<NodeId> = (1..=n as u64).map(NodeId).collect();
            let values: Vec<u64> = (0..=n).map(|i| crate::rng::splitmix64(state ^ i as u64) % 10).collect();
            let value_of = |id: NodeId| values[id.0 as usize];
            assert_eq!(majority_value(&voters, value_of), naive_majority(&voters, &value_of));
        }
    }

    #[test]
    fn joint_commit_needs_both_majorities() {
        let config = Configuration {
            voters: ids(&[1, 2, 3]),
            voters_outgoing: ids(&[3, 4, 5]),
            learners: BTreeSet::new(),
            staging: BTreeSet::new(),
        };
        let matched = |id: NodeId| match id.0 {
            1 | 2 => 10,
            3 => 5,
            _ => 1,
        };
        // New half agrees on 10, old half only on 1.
        assert_eq!(joint_majority_value(&config, matched), 1);
    }

    #[test]
    fn learners_never_count() {
        let config = Configuration {
            voters: ids(&[1, 2, 3]),
            voters_outgoing: BTreeSet::new(),
            learners: ids(&[4, 5]),
            staging: BTreeSet::new(),
        };
        let matched = |id: NodeId| if id.0 >= 3 { 9 } else { 1 };
        assert_eq!(joint_majority_value(&config, matched), 1);
        let votes = |id: NodeId| Some(id.0 >= 3);
        assert_eq!(vote_result(&config, votes), VoteResult::Lost);
    }

    #[test]
    fn joint_election_needs_both_halves() {
        let config = Configuration {
            voters: ids(&[1, 2, 3]),
            voters_outgoing: ids(&[1, 4, 5]),
            learners: BTreeSet::new(),
            staging: BTreeSet::new(),
        };
        assert_eq!(vote_result(&config, |id| Some(id.0 <= 3)), VoteResult::Lost);
        assert_eq!(vote_result(&config, |id| if id.0 <= 4 { Some(true) } else { None }), VoteResult::Won);
        assert_eq!(vote_result(&config, |id| if id.0 <= 3 { Some(true) } else { None }), VoteResult::Pending);
    }
}
