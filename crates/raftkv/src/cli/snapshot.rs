//! `raftkv snapshot save | restore | inspect`: whole-state backups, as
//! clients of the HTTP API (with a progress bar on a terminal), and the check
//! of a backup file.

use std::path::{Path, PathBuf};

use indicatif::{ProgressBar, ProgressStyle};
use serde_json::{json, Value};
use tokio::io::AsyncWriteExt;

use crate::cli::args::{ClientArgs, Consistency, SnapshotCommand, WriteOut};
use crate::cli::client::{encode, show_duration, Client};
use crate::cli::globals::Globals;
use crate::state::image::{self, ImageHeader};

/// Save and restore talk to the first endpoint; `--timeout` bounds the whole
/// transfer (exit 4 if a restore's upload was cut: it may have been taken).
pub async fn run(command: SnapshotCommand, globals: &Globals) -> i32 {
    let timeout = globals.timeout();
    let within = |what: &'static str| {
        move |outcome: Result<Result<Value, String>, tokio::time::error::Elapsed>| {
            outcome.unwrap_or_else(|_| {
                Err(format!("{what} timed out after {} (--timeout)", show_duration(timeout.unwrap_or_default())))
            })
        }
    };
    let mut cut_off_exit = 1;
    let (result, json) = match command {
        SnapshotCommand::Save { file, consistency, client } => {
            let saved = match timeout {
                Some(t) => within("save")(tokio::time::timeout(t, save(globals, &client, consistency, &file)).await),
                None => save(globals, &client, consistency, &file).await,
            };
            let saved = saved.map(|mut value| {
                value["file"] = json!(file.display().to_string());
                value
            });
            (saved, globals.write_out(&client) == WriteOut::Json)
        }
        SnapshotCommand::Restore { file, client } => {
            let restored = match timeout {
                Some(t) => {
                    let outcome = tokio::time::timeout(t, restore(globals, &client, &file)).await;
                    if outcome.is_err() {
                        cut_off_exit = 4;
                    }
                    within("restore (it may or may not have been taken)")(outcome)
                }
                None => restore(globals, &client, &file).await,
            };
            (restored, globals.write_out(&client) == WriteOut::Json)
        }
        SnapshotCommand::Inspect { file, json } => {
            (inspect(&file).map(|(h, size)| describe(&h, size)), json || globals.args.write_out == WriteOut::Json)
        }
    };
    match result {
        Ok(value) if json => {
            println!("{value}");
            0
        }
        Ok(value) => {
            let map = value.as_object().cloned().unwrap_or_default();
            for (key, value) in map {
                println!("{key}: {}", value.as_str().map_or_else(|| value.to_string(), str::to_string));
            }
            0
        }
        Err(message) => {
            eprintln!("raftkv snapshot: {message}");
            cut_off_exit
        }
    }
}

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

/// What `inspect` prints about an image.
fn describe(header: &ImageHeader, size: u64) -> Value {
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
fn inspect(file: &Path) -> Result<(ImageHeader, u64), String> {
    let opened = std::fs::File::open(file).map_err(|e| format!("cannot open {}: {e}", file.display()))?;
    image::verify(opened).map_err(|e| format!("{}: {e}", file.display()))
}

/// Downloads a backup from the node at `addr` into `file` (written to
/// `FILE.partial`, checked, then renamed).
async fn save(globals: &Globals, client: &ClientArgs, consistency: Consistency, file: &Path) -> Result<Value, String> {
    let addr = &first_endpoint(globals, client)?;
    let path = format!("/api/v1/snapshot?consistency={}", encode(consistency.as_str()));
    let mut response = Client::new(addr, &client.security.security())?.download(&path).await?;
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
async fn restore(globals: &Globals, client: &ClientArgs, file: &Path) -> Result<Value, String> {
    let addr = &first_endpoint(globals, client)?;
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
    let answer = Client::new(addr, &client.security.security())?
        .upload("/api/v1/snapshot", reqwest::Body::wrap_stream(stream), size)
        .await;
    bar.finish_and_clear();
    answer
}

/// The endpoint a transfer talks to: the first one.
fn first_endpoint(globals: &Globals, client: &ClientArgs) -> Result<String, String> {
    globals.endpoints(client)?.into_iter().next().ok_or_else(|| "no endpoint given".to_string())
}
