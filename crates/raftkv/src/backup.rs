//! Backups over HTTP: `GET /api/v1/snapshot` streams a consistent image of the
//! state (see `image.rs`), `POST /api/v1/snapshot` restores one into the live
//! cluster through the log (see `store.rs`).
//!
//! A restore first spools the upload to a file in the data dir and checks all
//! of it (format, counts, checksum): a damaged backup is refused with a 400
//! before anything is proposed, and the cluster's data stays as it was.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::extract::{Query, State};
use axum::http::{header, StatusCode};
use axum::response::Response;
use axum::Json;
use bytes::Bytes;
use serde::Deserialize;
use serde_json::{json, Value};
use tokio::io::AsyncWriteExt;
use tokio::sync::mpsc;
use tokio_stream::StreamExt;

use crate::agent::{Agent, Limits, WriteError};
use crate::http::{consistency, raft_error, read_barrier, write_error, ApiError};
use crate::image::{self, ImageKind, ImageReader, Members};
use crate::store::{Command, Outcome};

/// Payload bytes of key/value pairs per `RestoreChunk` entry.
const CHUNK_BYTES: usize = 256 << 10;
/// Tries per restore entry whose outcome was unknown (they are idempotent).
const ATTEMPTS: usize = 5;

#[derive(Deserialize, Default)]
pub struct BackupQuery {
    consistency: Option<String>,
}

/// `GET /api/v1/snapshot`: the state at a linearizable point (by default), as
/// an image with its exact size in `Content-Length`.
pub async fn save(State(agent): State<Arc<Agent>>, Query(query): Query<BackupQuery>) -> Result<Response, ApiError> {
    let mode = consistency(query.consistency.as_deref())?;
    read_barrier(&agent, mode).await?;
    let status = agent.raft.status().await.map_err(raft_error)?;
    let members = Members {
        voters: status.membership.voters.iter().map(|id| id.0).collect(),
        learners: status.membership.learners.iter().map(|id| id.0).collect(),
    };
    let captured = agent.kv.read().capture(ImageKind::Backup, Some(members));
    let (index, term) = (captured.header().index, captured.header().term);
    let captured = Arc::new(captured);
    let size = {
        let captured = captured.clone();
        tokio::task::spawn_blocking(move || captured.size()).await.map_err(|e| internal(e.to_string()))?
    };
    let (tx, rx) = mpsc::channel::<std::io::Result<Bytes>>(4);
    tokio::task::spawn_blocking(move || {
        let mut out = ChannelWriter { tx, buf: Vec::with_capacity(1 << 16) };
        let result = captured.write_image(&mut out).and_then(|()| out.flush());
        if let Err(error) = result {
            tracing::warn!(%error, "backup stream ended early");
            let _ = out.tx.blocking_send(Err(error));
        }
    });
    let disposition = format!("attachment; filename=\"raftkv-{index}.backup\"");
    let response = Response::builder()
        .header(header::CONTENT_TYPE, "application/octet-stream")
        .header(header::CONTENT_LENGTH, size)
        .header(header::CONTENT_DISPOSITION, disposition)
        .header("x-raftkv-index", index)
        .header("x-raftkv-term", term)
        .body(Body::from_stream(tokio_stream::wrappers::ReceiverStream::new(rx)))
        .map_err(|e| internal(e.to_string()))?;
    Ok(response)
}

/// Sends what is written in pieces of 64 KiB to the response body.
struct ChannelWriter {
    tx: mpsc::Sender<std::io::Result<Bytes>>,
    buf: Vec<u8>,
}

impl Write for ChannelWriter {
    fn write(&mut self, data: &[u8]) -> std::io::Result<usize> {
        self.buf.extend_from_slice(data);
        if self.buf.len() >= 1 << 16 {
            self.flush()?;
        }
        Ok(data.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        if self.buf.is_empty() {
            return Ok(());
        }
        let piece = Bytes::from(std::mem::replace(&mut self.buf, Vec::with_capacity(1 << 16)));
        self.tx
            .blocking_send(Ok(piece))
            .map_err(|_| std::io::Error::new(std::io::ErrorKind::BrokenPipe, "the client went away"))
    }
}

fn internal(message: String) -> ApiError {
    ApiError { status: StatusCode::INTERNAL_SERVER_ERROR, code: "internal", message }
}

/// Names of spooled uploads in the data dir: `restore-<id>.upload`.
const SPOOL_PREFIX: &str = "restore-";
const SPOOL_SUFFIX: &str = ".upload";

/// Removes uploads a crash left behind in the data dir.
pub(crate) fn remove_stale_uploads(dir: &Path) {
    let Ok(entries) = std::fs::read_dir(dir) else { return };
    for entry in entries.flatten() {
        let name = entry.file_name();
        let name = name.to_string_lossy();
        if name.starts_with(SPOOL_PREFIX) && name.ends_with(SPOOL_SUFFIX) {
            if let Err(error) = std::fs::remove_file(entry.path()) {
                tracing::warn!(%error, file = %name, "cannot remove a stale restore upload");
            }
        }
    }
}

/// Removes the spooled upload however the restore ends.
struct Spool(PathBuf);

impl Drop for Spool {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

/// `POST /api/v1/snapshot`: replaces the cluster's keys with the backup's.
/// One restore at a time per node; once the upload is checked, the restore
/// runs to its commit (or abort) even if the client goes away.
pub async fn restore(State(agent): State<Arc<Agent>>, body: Body) -> Result<Json<Value>, ApiError> {
    let Ok(running) = agent.restoring.clone().try_lock_owned() else {
        return Err(ApiError {
            status: StatusCode::CONFLICT,
            code: "restore_running",
            message: "a restore is already running on this node".into(),
        });
    };
    let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_nanos());
    let id = format!("{}-{nanos:x}", agent.id);
    let spool = Spool(agent.config.data_dir.join(format!("{SPOOL_PREFIX}{id}{SPOOL_SUFFIX}")));
    receive(body, &spool.0).await?;

    let path = spool.0.clone();
    let limits = agent.config.limits;
    let checked =
        tokio::task::spawn_blocking(move || check_backup(&path, limits)).await.map_err(|e| internal(e.to_string()))?;
    let (header, size) = checked.map_err(|e| ApiError::bad_request(format!("backup refused: {e}")))?;
    tracing::info!(%id, index = header.index, keys = header.keys, bytes = size, "restoring a backup");

    let task = tokio::spawn(async move {
        let _running = running;
        let result = propose_restore(&agent, &id, &spool.0, header.keys).await;
        if result.is_err() {
            // Best effort: free the staging map on every node.
            let _ = agent.write(Command::RestoreAbort { id: id.clone() }).await;
        }
        drop(spool);
        result
    });
    let (index, keys) = task.await.map_err(|e| internal(format!("the restore task failed: {e}")))??;
    Ok(Json(json!({
        "index": index,
        "keys": keys,
        "backup_index": header.index,
        "backup_term": header.term,
    })))
}

/// Reads the whole backup: format, counts and checksum, and every key and value
/// within this server's limits (the same as for writes).
fn check_backup(path: &Path, limits: Limits) -> Result<(image::ImageHeader, u64), String> {
    let file = std::fs::File::open(path).map_err(|e| format!("reopening the upload: {e}"))?;
    let within_limits = |n: u64, record: &image::Record| {
        if record.key.is_empty() || record.key.len() > limits.max_key_bytes {
            return Err(format!("record {n}: key of {} bytes (limit {})", record.key.len(), limits.max_key_bytes));
        }
        if record.value.len() > limits.max_value_bytes {
            return Err(format!(
                "record {n} ({:?}): value of {} bytes (limit {})",
                record.key,
                record.value.len(),
                limits.max_value_bytes
            ));
        }
        Ok(())
    };
    image::verify_each(file, within_limits).map_err(|e| e.to_string())
}

/// Streams the request body into `path`.
async fn receive(body: Body, path: &Path) -> Result<(), ApiError> {
    let mut file = tokio::fs::File::create(path)
        .await
        .map_err(|e| internal(format!("cannot spool the upload to {}: {e}", path.display())))?;
    let mut stream = body.into_data_stream();
    while let Some(piece) = stream.next().await {
        let piece = piece.map_err(|e| ApiError::bad_request(format!("reading the upload: {e}")))?;
        file.write_all(&piece)
            .await
            .map_err(|e| internal(format!("cannot spool the upload to {}: {e}", path.display())))?;
    }
    file.flush().await.map_err(|e| internal(format!("cannot spool the upload to {}: {e}", path.display())))
}

/// Begin, chunks, commit; returns the commit's index and the keys restored.
async fn propose_restore(agent: &Agent, id: &str, path: &Path, keys: u64) -> Result<(u64, u64), ApiError> {
    write_idempotent(agent, Command::RestoreBegin { id: id.to_string() }).await?;
    let (tx, mut rx) = mpsc::channel::<Result<Vec<(String, String)>, String>>(2);
    let path = path.to_path_buf();
    tokio::task::spawn_blocking(move || {
        let send = |chunk| tx.blocking_send(chunk).is_ok();
        let file = match std::fs::File::open(&path) {
            Ok(file) => file,
            Err(e) => return send(Err(format!("reopening the upload: {e}"))),
        };
        let mut reader = match ImageReader::open(std::io::BufReader::with_capacity(1 << 16, file)) {
            Ok(reader) => reader,
            Err(e) => return send(Err(e.to_string())),
        };
        let (mut pairs, mut bytes) = (Vec::new(), 0);
        for _ in 0..keys {
            match reader.next_record() {
                Ok(Some(record)) => {
                    bytes += record.key.len() + record.value.len() + 16;
                    pairs.push((record.key, record.value));
                    if bytes >= CHUNK_BYTES {
                        if !send(Ok(std::mem::take(&mut pairs))) {
                            return false;
                        }
                        bytes = 0;
                    }
                }
                Ok(None) => return send(Err("the backup ended early".into())),
                Err(e) => return send(Err(e.to_string())),
            }
        }
        pairs.is_empty() || send(Ok(pairs))
    });
    let mut seq = 0;
    while let Some(chunk) = rx.recv().await {
        let pairs = chunk.map_err(|e| internal(format!("reading the checked backup: {e}")))?;
        let command = Command::RestoreChunk { id: id.to_string(), seq, pairs };
        write_idempotent(agent, command).await?;
        seq += 1;
    }
    let commit = Command::RestoreCommit { id: id.to_string(), chunks: seq, keys };
    let (index, outcome) = write_idempotent(agent, commit).await?;
    match outcome {
        Outcome::Restored { keys } => Ok((index, keys)),
        other => Err(internal(format!("restore {id} did not commit: {other:?}"))),
    }
}

/// Proposes a restore entry, again if its outcome was unknown (each is
/// idempotent); a refusal by the state machine ends the restore.
async fn write_idempotent(agent: &Agent, command: Command) -> Result<(u64, Outcome), ApiError> {
    let mut attempt = 0;
    loop {
        attempt += 1;
        match agent.write(command.clone()).await {
            Ok((index, Outcome::RestoreFailed { reason })) => {
                return Err(ApiError {
                    status: StatusCode::CONFLICT,
                    code: "restore_failed",
                    message: format!("restore stopped at index {}: {reason}", index.0),
                })
            }
            Ok((index, outcome)) => return Ok((index.0, outcome)),
            Err(error) if attempt < ATTEMPTS && retryable(&error) => {
                tracing::warn!(%attempt, "restore step failed, trying again: {error:?}");
                tokio::time::sleep(Duration::from_millis(200 * attempt as u64)).await;
            }
            Err(error) => return Err(write_error(error)),
        }
    }
}

fn retryable(error: &WriteError) -> bool {
    matches!(
        error,
        WriteError::Unknown(_)
            | WriteError::NotSent(_)
            | WriteError::NoLeader
            | WriteError::Raft(raftkv_raft::RaftError::LeadershipLost | raftkv_raft::RaftError::Timeout(_))
            | WriteError::Raft(raftkv_raft::RaftError::NotLeader { .. })
    )
}
