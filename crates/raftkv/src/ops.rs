//! Operator commands of the CLI that move whole states around:
//! `raftkv snapshot save | restore | inspect` (clients of the HTTP API, with a
//! progress bar on a terminal) and `raftkv recover` (offline, on a stopped
//! node's data dir).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use indicatif::{ProgressBar, ProgressStyle};
use raftkv_raft::storage::{FileSnapshotStore, FileStableStore, StableStore, Wal, WalOptions};
use raftkv_raft::{Configuration, NodeId, Raft};
use serde::Deserialize;
use serde_json::{json, Value};
use tokio::io::AsyncWriteExt;

use crate::agent::{lock_data_dir, PEERS_KEY};
use crate::image::{self, ImageHeader};

fn progress(total: Option<u64>, what: &str) -> ProgressBar {
    let bar = match total {
        Some(total) => ProgressBar::new(total),
        None => ProgressBar::new_spinner(),
    };
    let template = "{msg} [{bar:40}] {bytes}/{total_bytes} ({bytes_per_sec}, {eta})";
    if let Ok(style) = ProgressStyle::with_template(template) {
        bar.set_style(style.progress_chars("=> "));
    }
    bar.set_message(what.to_string());
    bar
}

/// The `message` of an API error body, or the text as it is.
pub fn error_message(text: &str) -> String {
    serde_json::from_str::<Value>(text)
        .ok()
        .and_then(|v| v["error"]["message"].as_str().map(str::to_string))
        .unwrap_or_else(|| text.to_string())
}

fn http_client() -> Result<reqwest::Client, String> {
    reqwest::Client::builder().connect_timeout(Duration::from_secs(5)).build().map_err(|e| format!("HTTP client: {e}"))
}

/// What `inspect` prints about an image.
pub fn describe(header: &ImageHeader, size: u64) -> Value {
    json!({
        "kind": header.kind,
        "format": header.format,
        "index": header.index,
        "term": header.term,
        "voters": header.members.as_ref().map(|m| m.voters.clone()),
        "nonvoters": header.members.as_ref().map(|m| m.learners.clone()),
        "keys": header.keys,
        "size_bytes": size,
        "created_unix_ms": header.created_unix_ms,
        "checksum": "ok",
    })
}

/// Reads and checks a whole backup file.
pub fn inspect(file: &Path) -> Result<(ImageHeader, u64), String> {
    let opened = std::fs::File::open(file).map_err(|e| format!("cannot open {}: {e}", file.display()))?;
    image::verify(opened).map_err(|e| format!("{}: {e}", file.display()))
}

/// Downloads a backup from the node at `addr` into `file` (written to
/// `FILE.partial`, checked, then renamed).
pub async fn save(addr: &str, consistency: &str, file: &Path) -> Result<Value, String> {
    let url = format!("http://{addr}/api/v1/snapshot?consistency={consistency}");
    let client = http_client()?;
    let mut response = client.get(url).send().await.map_err(|e| format!("cannot reach {addr}: {e}"))?;
    let status = response.status();
    if !status.is_success() {
        let text = response.text().await.unwrap_or_default();
        return Err(format!("{} (HTTP {})", error_message(&text), status.as_u16()));
    }
    let partial = PathBuf::from(format!("{}.partial", file.display()));
    let mut out =
        tokio::fs::File::create(&partial).await.map_err(|e| format!("cannot create {}: {e}", partial.display()))?;
    let bar = progress(response.content_length(), "downloading");
    let written = async {
        while let Some(piece) = response.chunk().await.map_err(|e| format!("download from {addr} broke off: {e}"))? {
            out.write_all(&piece).await.map_err(|e| format!("writing {}: {e}", partial.display()))?;
            bar.inc(piece.len() as u64);
        }
        out.sync_all().await.map_err(|e| format!("writing {}: {e}", partial.display()))
    }
    .await;
    bar.finish_and_clear();
    let checked = written.and_then(|()| inspect(&partial).map_err(|e| format!("the download is damaged: {e}")));
    let (header, size) = match checked {
        Ok(checked) => checked,
        Err(error) => {
            let _ = std::fs::remove_file(&partial);
            return Err(error);
        }
    };
    std::fs::rename(&partial, file)
        .map_err(|e| format!("cannot rename {} to {}: {e}", partial.display(), file.display()))?;
    Ok(describe(&header, size))
}

/// Checks `file`, then uploads it to the node at `addr`, which restores it
/// into the cluster through the log.
pub async fn restore(addr: &str, file: &Path) -> Result<Value, String> {
    let (_, size) = inspect(file).map_err(|e| format!("{e}; nothing was sent"))?;
    let opened = tokio::fs::File::open(file).await.map_err(|e| format!("cannot open {}: {e}", file.display()))?;
    let bar = progress(Some(size), "uploading");
    let counter = bar.clone();
    let stream = tokio_util::io::ReaderStream::with_capacity(opened, 1 << 16);
    let stream = tokio_stream::StreamExt::map(stream, move |piece| {
        if let Ok(piece) = &piece {
            counter.inc(piece.len() as u64);
            if counter.position() >= size {
                counter.set_message("applying through raft");
            }
        }
        piece
    });
    let client = http_client()?;
    let response = client
        .post(format!("http://{addr}/api/v1/snapshot"))
        .header(reqwest::header::CONTENT_TYPE, "application/octet-stream")
        .header(reqwest::header::CONTENT_LENGTH, size)
        .body(reqwest::Body::wrap_stream(stream))
        .send()
        .await;
    bar.finish_and_clear();
    let response = response.map_err(|e| format!("cannot reach {addr}: {e}"))?;
    let status = response.status();
    let text = response.text().await.map_err(|e| format!("bad response from {addr}: {e}"))?;
    if !status.is_success() {
        return Err(format!("{} (HTTP {})", error_message(&text), status.as_u16()));
    }
    serde_json::from_str(&text).map_err(|e| format!("bad response from {addr}: {e}"))
}

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
    if !data_dir.join("log").is_dir() {
        return Err(format!("{} holds no raftkv data (no log directory)", data_dir.display()));
    }
    let _lock = lock_data_dir(data_dir).map_err(|e| format!("refusing to recover: {e}"))?;
    let fail = |e: &dyn std::fmt::Display| format!("{}: {e}", data_dir.display());
    let log = Wal::open(data_dir.join("log"), WalOptions::default()).map_err(|e| fail(&e))?;
    let stable = FileStableStore::open(data_dir.join("stable")).map_err(|e| fail(&e))?;
    let snapshots = FileSnapshotStore::open(data_dir.join("snapshots"), 2).map_err(|e| fail(&e))?;
    let mut machine = crate::store::Kv::default().state_machine(|_, _| {});
    let recovery =
        Raft::recover_cluster(&log, &stable, &snapshots, &mut machine, configuration).map_err(|e| fail(&e))?;

    // The address book is how the node finds the others after a restart.
    let mut book: BTreeMap<u64, String> = match stable.get(PEERS_KEY).map_err(|e| fail(&e))? {
        Some(bytes) => serde_json::from_slice(&bytes).unwrap_or_default(),
        None => BTreeMap::new(),
    };
    book.extend(addresses.clone());
    let encoded = serde_json::to_vec(&book).map_err(|e| fail(&e))?;
    stable.set(PEERS_KEY, &encoded).map_err(|e| fail(&e))?;

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
