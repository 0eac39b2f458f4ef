//! `raftkv recover`: offline surgery on a stopped node's data dir after a
//! loss of quorum (hashicorp's peers.json recovery).

use std::collections::BTreeMap;
use std::path::Path;

use raftkv_raft::storage::{FileSnapshotStore, FileStableStore, StableStore, Wal, WalOptions};
use raftkv_raft::{Configuration, NodeId, Raft};
use serde::Deserialize;

use crate::agent::datadir;
use crate::state::Kv;

/// One server of a peers file (hashicorp's peers.json, with numeric ids).
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PeerEntry {
    id: u64,
    address: String,
    #[serde(default)]
    non_voter: bool,
}

/// `raftkv recover`: rewrites the configuration of the stopped node in
/// `data_dir` to the servers in `peers_file`. Returns what it changed.
pub fn recover(data_dir: &Path, peers_file: &Path) -> Result<String, String> {
    let text = std::fs::read_to_string(peers_file).map_err(|e| format!("cannot read {}: {e}", peers_file.display()))?;
    let peers: Vec<PeerEntry> = serde_json::from_str(&text).map_err(|e| {
        format!(
            "{}: {e} (expected [{{\"id\": 1, \"address\": \"127.0.0.1:9001\", \"non_voter\": false}}, ...])",
            peers_file.display()
        )
    })?;
    let mut configuration = Configuration::default();
    let mut addresses = BTreeMap::new();
    for peer in &peers {
        if peer.id == 0 {
            return Err(format!("{}: id 0 is not a valid node id", peers_file.display()));
        }
        if peer.address.parse::<std::net::SocketAddr>().is_err() {
            return Err(format!(
                "{}: node {} has address {:?}, not HOST:PORT",
                peers_file.display(),
                peer.id,
                peer.address
            ));
        }
        if addresses.insert(peer.id, peer.address.clone()).is_some() {
            return Err(format!("{}: node {} is listed twice", peers_file.display(), peer.id));
        }
        let set = if peer.non_voter { &mut configuration.learners } else { &mut configuration.voters };
        set.insert(NodeId(peer.id));
    }
    if !datadir::log_dir(data_dir).is_dir() {
        return Err(format!("{} holds no raftkv data (no log directory)", data_dir.display()));
    }
    let _lock = datadir::lock(data_dir).map_err(|e| format!("refusing to recover: {e}"))?;
    let fail = |e: &dyn std::fmt::Display| format!("{}: {e}", data_dir.display());
    let log = Wal::open(datadir::log_dir(data_dir), WalOptions::default()).map_err(|e| fail(&e))?;
    let stable = FileStableStore::open(datadir::stable_file(data_dir)).map_err(|e| fail(&e))?;
    let snapshots = FileSnapshotStore::open(datadir::snapshot_dir(data_dir), 2).map_err(|e| fail(&e))?;
    let mut machine = Kv::default().state_machine(|_, _| {});
    let recovery =
        Raft::recover_cluster(&log, &stable, &snapshots, &mut machine, configuration).map_err(|e| fail(&e))?;

    // The address book is how the node finds the others after a restart.
    let mut book: BTreeMap<u64, String> = match stable.get(datadir::PEERS_KEY).map_err(|e| fail(&e))? {
        Some(bytes) => serde_json::from_slice(&bytes).unwrap_or_default(),
        None => BTreeMap::new(),
    };
    book.extend(addresses.clone());
    let encoded = serde_json::to_vec(&book).map_err(|e| fail(&e))?;
    stable.set(datadir::PEERS_KEY, &encoded).map_err(|e| fail(&e))?;

    Ok(format!(
        "{dir}: configuration {old} (written at index {old_index}) replaced by {new}: the state up to index \
         {index}, term {term} is now a snapshot with the new configuration and the log after it is empty; \
         addresses recorded: {addresses:?}. Start the node(s) of the new configuration; do not restart \
         removed servers with their old data.",
        dir = data_dir.display(),
        old = recovery.previous,
        old_index = recovery.previous_index,
        new = recovery.configuration,
        index = recovery.snapshot.index,
        term = recovery.snapshot.term,
    ))
}
