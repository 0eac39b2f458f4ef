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
pub async fn save(State(agent): State<Arc<Agent>>, Query(query): Query<BackupQuery>) -> Result<Response, ApiError> {
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
pub async fn restore(State(agent): State<Arc<Agent>>, body: Body) -> Result<Json<Value>, ApiError> {
    let restore = agent.begin_restore()?;
    receive(body, &restore.upload).await?;
    let restored = agent.restore(restore).await?;
    Ok(Json(json!({
        "index": restored.index,
        "keys": restored.keys,
        "backup_index": restored.backup_index,
        "backup_term": restored.backup_term,
    })))
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
