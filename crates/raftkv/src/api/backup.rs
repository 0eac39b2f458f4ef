//! Backups over HTTP: `GET /api/v1/snapshot` streams a consistent image of the
//! state (see `state::image`); `POST /api/v1/snapshot` spools the upload into
//! the data dir and hands it to `Agent::restore`, which checks all of it
//! before it restores it into the live cluster through the log.

use std::io::Write;
use std::path::Path;
use std::sync::Arc;

use axum::body::Body;
use axum::extract::{Query, State};
use axum::http::header;
use axum::response::Response;
use axum::Json;
use bytes::Bytes;
use serde::Deserialize;
use serde_json::{json, Value};
use tokio::io::AsyncWriteExt;
use tokio::sync::mpsc;
use tokio_stream::StreamExt;

use crate::agent::datadir;
use crate::agent::node::MAX_BACKUP_DOWNLOADS;
use crate::agent::{Agent, Failure, Outcome};
use crate::api::error::ApiError;
use crate::api::params::consistency;
use crate::state::image::{ImageKind, Members};

#[derive(Deserialize, Default)]
pub struct BackupQuery {
    consistency: Option<String>,
}

/// `GET /api/v1/snapshot`: the state at a linearizable point (by default), as
/// an image with its exact size in `Content-Length`.
///
/// At most `MAX_BACKUP_DOWNLOADS` at a time per node (each holds a blocking thread
/// while its client reads, threads the raft runtime's snapshots need too);
/// beyond, 503 `too_many_backups`, not done.
pub async fn save(State(agent): State<Arc<Agent>>, Query(query): Query<BackupQuery>) -> Result<Response, ApiError> {
    let Ok(permit) = agent.downloads.clone().try_acquire_owned() else {
        return Err(ApiError {
            status: axum::http::StatusCode::SERVICE_UNAVAILABLE,
            code: "too_many_backups",
            message: format!(
                "{MAX_BACKUP_DOWNLOADS} backups are being downloaded from this node; retry when one is done"
            ),
            outcome: Outcome::NotDone,
        });
    };
    let mode = consistency(query.consistency.as_deref())?;
    agent.read_barrier(mode).await?;
    let status = agent.raft.status().await.map_err(|e| Failure::from(e).changed_nothing())?;
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
        let _permit = permit;
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
pub struct ChannelWriter {
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
    Failure::internal(Outcome::NotDone, message).into()
}

/// `POST /api/v1/snapshot`: replaces the cluster's keys with the backup's.
/// One restore at a time per node; once the upload is checked, the restore
/// runs to its commit (or abort) even if the client goes away.
///
/// The upload is bounded (`UploadLimits`): a declared or actual size over
/// the cap is 413, an upload not done within the timeout 408, and one that
/// would leave the data dir less free space than the reserve kept for the
/// log is 507; each removes what was spooled and changes nothing.
pub async fn restore(
    State(agent): State<Arc<Agent>>,
    headers: axum::http::HeaderMap,
    body: Body,
) -> Result<Json<Value>, ApiError> {
    let limits = agent.config.uploads;
    let declared =
        headers.get(header::CONTENT_LENGTH).and_then(|v| v.to_str().ok()).and_then(|v| v.parse::<u64>().ok());
    if let Some(size) = declared {
        if size > limits.max_bytes {
            return Err(too_large(limits.max_bytes));
        }
    }
    let dir = agent.config.data_dir.clone();
    check_headroom(&dir, declared.unwrap_or(0), limits.disk_reserve)?;
    let restore = agent.begin_restore()?;
    let received = tokio::time::timeout(limits.timeout, receive(body, &restore.upload, &dir, limits)).await;
    match received {
        Ok(result) => result?,
        Err(_) => {
            return Err(ApiError {
                status: axum::http::StatusCode::REQUEST_TIMEOUT,
                code: "upload_timeout",
                message: format!("the upload did not arrive within {:?}; nothing was restored", limits.timeout),
                outcome: Outcome::NotDone,
            })
        }
    }
    let restored = agent.restore(restore).await?;
    Ok(Json(json!({
        "index": restored.index,
        "keys": restored.keys,
        "backup_index": restored.backup_index,
        "backup_term": restored.backup_term,
    })))
}

fn too_large(max: u64) -> ApiError {
    ApiError {
        status: axum::http::StatusCode::PAYLOAD_TOO_LARGE,
        code: "too_large",
        message: format!("the upload exceeds the largest backup this node takes ({max} bytes, --max-upload-bytes)"),
        outcome: Outcome::NotDone,
    }
}

/// Refuses (507) if spooling `more` bytes into `dir` would leave less than
/// `reserve` free: the log needs the room more than an upload does.
fn check_headroom(dir: &Path, more: u64, reserve: u64) -> Result<(), ApiError> {
    datadir::check_headroom(dir, more, reserve, "taking").map_err(|failure| {
        ApiError::from(Failure { message: format!("{}; nothing was restored", failure.message), ..failure })
    })
}

/// How often (in bytes spooled) the free space is looked at again.
const HEADROOM_EVERY: u64 = 8 << 20;

/// Streams the request body into `path`, within `limits`.
async fn receive(body: Body, path: &Path, dir: &Path, limits: crate::agent::UploadLimits) -> Result<(), ApiError> {
    let mut file = tokio::fs::File::create(path)
        .await
        .map_err(|e| internal(format!("cannot spool the upload to {}: {e}", path.display())))?;
    let mut stream = body.into_data_stream();
    let (mut received, mut checked) = (0u64, 0u64);
    while let Some(piece) = stream.next().await {
        let piece = piece.map_err(|e| ApiError::bad_request(format!("reading the upload: {e}")))?;
        received += piece.len() as u64;
        if received > limits.max_bytes {
            return Err(too_large(limits.max_bytes));
        }
        if received - checked >= HEADROOM_EVERY {
            checked = received;
            check_headroom(dir, HEADROOM_EVERY, limits.disk_reserve)?;
        }
        file.write_all(&piece)
            .await
            .map_err(|e| internal(format!("cannot spool the upload to {}: {e}", path.display())))?;
    }
    file.flush().await.map_err(|e| internal(format!("cannot spool the upload to {}: {e}", path.display())))
}
