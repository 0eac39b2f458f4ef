//! Restoring a backup into the live cluster, through the log (see
//! `state::machine` for the commands' meaning): begin, the chunks in order,
//! commit. The API spools the upload into the file a `Restore` names; the
//! whole file is checked before anything is proposed, so a damaged backup
//! leaves the cluster's data as it was.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::mpsc;

use crate::agent::datadir;
use crate::agent::node::Agent;
use crate::agent::outcome::{Failure, Kind, Outcome};
use crate::state::image::{self, ImageHeader, ImageReader};
use crate::state::{Answer, Blob, Command, Limits};

/// Payload bytes of key/value pairs per `RestoreChunk` entry.
const CHUNK_BYTES: usize = 256 << 10;
/// Tries per restore entry whose outcome was not known (they are idempotent).
const ATTEMPTS: usize = 5;

/// The one restore this node coordinates: its id and its upload file, which
/// is removed however the restore ends.
pub struct Restore {
    _running: tokio::sync::OwnedMutexGuard<()>,
    pub id: String,
    pub upload: PathBuf,
}

impl Drop for Restore {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.upload);
    }
}

/// What a restore that committed did.
#[derive(Clone, Copy, Debug)]
pub struct Restored {
    /// Index of the commit entry.
    pub index: u64,
    pub keys: u64,
    /// Where the backup was taken: its index and term.
    pub backup_index: u64,
    pub backup_term: u64,
}

impl Agent {
    /// Reserves this node's restore slot (one at a time) and names the file
    /// the upload goes to.
    pub fn begin_restore(&self) -> Result<Restore, Failure> {
        let Ok(running) = self.restoring.clone().try_lock_owned() else {
            return Err(Failure::not_done(Kind::RestoreRunning, "a restore is already running on this node"));
        };
        let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_nanos());
        let id = format!("{}-{nanos:x}", self.id);
        let upload = datadir::upload_file(&self.config.data_dir, &id);
        Ok(Restore { _running: running, id, upload })
    }

    /// Checks the uploaded backup, then replaces the cluster's keys with its
    /// own. Once checked, the restore runs to its commit (or abort) even if
    /// the caller goes away.
    pub async fn restore(self: &Arc<Agent>, restore: Restore) -> Result<Restored, Failure> {
        let path = restore.upload.clone();
        let limits = self.config.limits;
        let checked = tokio::task::spawn_blocking(move || check_backup(&path, limits))
            .await
            .map_err(|e| Failure::internal(Outcome::NotDone, format!("checking the backup: {e}")))?;
        let (header, size, logged) = checked.map_err(|e| Failure::bad_request(format!("backup refused: {e}")))?;
        // The whole restore's log must fit before anything is staged (each
        // chunk is checked again as it goes: the disk is shared).
        let reserve = self.config.uploads.disk_reserve;
        datadir::check_headroom(&self.config.data_dir, logged, reserve, "logging the restore's").map_err(|f| {
            Failure { message: format!("restore {} refused before it began: {}", restore.id, f.message), ..f }
        })?;
        tracing::info!(id = %restore.id, index = header.index, keys = header.keys, bytes = size, logged, "restoring a backup");
        let agent = self.clone();
        let task = tokio::spawn(async move {
            let result = propose(&agent, &restore.id, &restore.upload, header.keys).await;
            if result.is_err() {
                // Best effort: free the staging map on every node.
                let _ = agent.write(Command::RestoreAbort { id: restore.id.clone() }).await;
            }
            drop(restore);
            result
        });
        let (index, keys) =
            task.await.map_err(|e| Failure::internal(Outcome::Unknown, format!("the restore task failed: {e}")))??;
        Ok(Restored { index, keys, backup_index: header.index, backup_term: header.term })
    }
}

/// Reads the whole backup: format, counts and checksum, and every key and value
/// within this server's limits (the same as for writes). Returns its header,
/// its size, and about how many bytes its chunks take in the log (as JSON).
fn check_backup(path: &Path, limits: Limits) -> Result<(ImageHeader, u64, u64), String> {
    let file = std::fs::File::open(path).map_err(|e| format!("reopening the upload: {e}"))?;
    let mut logged = 0u64;
    let within_limits = |n: u64, record: &image::Record| {
        limits.check_key(&record.key).map_err(|e| format!("record {n}: {e}"))?;
        limits.check_value(&record.value.0).map_err(|e| format!("record {n} ({:?}): {e}", record.key))?;
        // `["key","value"],` as the chunk's JSON holds it.
        logged += json_len(&record.key) + json_len(&record.value) + 4;
        Ok(())
    };
    let (header, size) = image::verify_each(file, within_limits).map_err(|e| e.to_string())?;
    Ok((header, size, logged))
}

/// The length of `value` in JSON, escapes and quotes included.
fn json_len(value: &impl serde::Serialize) -> u64 {
    struct Count(u64);
    impl std::io::Write for Count {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0 += buf.len() as u64;
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
    let mut count = Count(0);
    // Writing to a counter does not fail, and strings and blobs always serialize.
    let _ = serde_json::to_writer(&mut count, value);
    count.0
}

/// Begin, chunks, commit; returns the commit's index and the keys restored.
/// Until the commit is proposed the cluster's keys are untouched, so a
/// failure before it is not done, whatever the step's own outcome; the
/// commit's failure keeps its outcome.
async fn propose(agent: &Agent, id: &str, path: &Path, keys: u64) -> Result<(u64, u64), Failure> {
    let staged = stage(agent, id, path, keys).await.map_err(Failure::changed_nothing)?;
    let commit = Command::RestoreCommit { id: id.to_string(), chunks: staged, keys };
    match write_idempotent(agent, commit).await? {
        (index, Answer::Restored { keys }) => Ok((index, keys)),
        (_, other) => Err(Failure::internal(Outcome::NotDone, format!("restore {id} did not commit: {other:?}"))),
    }
}

/// Begin and the chunks; returns how many chunks were staged.
async fn stage(agent: &Agent, id: &str, path: &Path, keys: u64) -> Result<u64, Failure> {
    write_idempotent(agent, Command::RestoreBegin { id: id.to_string() }).await?;
    // Each chunk with the bytes it takes in the log (`json_len`, as
    // `check_backup` weighed the whole restore).
    let (tx, mut rx) = mpsc::channel::<Result<(Vec<(String, Blob)>, u64), String>>(2);
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
        let (mut pairs, mut bytes, mut logged) = (Vec::new(), 0, 0);
        for _ in 0..keys {
            match reader.next_record() {
                Ok(Some(record)) => {
                    bytes += record.key.len() + record.value.len() + 16;
                    logged += json_len(&record.key) + json_len(&record.value) + 4;
                    pairs.push((record.key, record.value));
                    if bytes >= CHUNK_BYTES {
                        if !send(Ok((std::mem::take(&mut pairs), logged))) {
                            return false;
                        }
                        (bytes, logged) = (0, 0);
                    }
                }
                Ok(None) => return send(Err("the backup ended early".into())),
                Err(e) => return send(Err(e.to_string())),
            }
        }
        pairs.is_empty() || send(Ok((pairs, logged)))
    });
    let mut seq = 0;
    while let Some(chunk) = rx.recv().await {
        let (pairs, logged) =
            chunk.map_err(|e| Failure::internal(Outcome::NotDone, format!("reading the checked backup: {e}")))?;
        if agent.is_stopping() {
            // Before the drain ends: the abort that follows frees the
            // staging on every node, instead of leaving it until the next
            // restore.
            let message = format!("restore {id} stopped at chunk {seq}: this node is stopping");
            return Err(Failure::not_done(Kind::ShuttingDown, message));
        }
        let command = Command::RestoreChunk { id: id.to_string(), seq, pairs };
        // The log takes the chunk as encoded (escaped JSON, a few times the
        // image's bytes for binary-looking values); stop before it eats into
        // the room kept for the log. Every node logs the same entries, and
        // nodes of one cluster are alike; a follower that does run out
        // fail-stops, which loses nothing. (The pairs as counted, and the
        // command's own fields.)
        let logged = logged + 128 + id.len() as u64;
        let reserve = agent.config.uploads.disk_reserve;
        datadir::check_headroom(&agent.config.data_dir, logged, reserve, "logging a restore chunk of").map_err(
            |failure| Failure {
                message: format!("restore {id} stopped at chunk {seq}: {}", failure.message),
                ..failure
            },
        )?;
        write_idempotent(agent, command).await?;
        seq += 1;
    }
    Ok(seq)
}

/// Proposes a restore entry, again if it was not done or its outcome is not
/// known (each is idempotent); a refusal by the state machine ends the
/// restore. Once any try's outcome was unknown, so is the step's, whatever
/// the later tries answered: the first may still have committed.
async fn write_idempotent(agent: &Agent, command: Command) -> Result<(u64, Answer), Failure> {
    let mut attempt = 0;
    let mut unknown = false;
    loop {
        attempt += 1;
        match agent.write(command.clone()).await {
            Ok((index, Answer::RestoreFailed { reason })) => {
                let message = format!("restore stopped at index {}: {reason}", index.0);
                return Err(Failure::not_done(Kind::RestoreFailed, message));
            }
            Ok((index, answer)) => return Ok((index.0, answer)),
            Err(failure) if attempt < ATTEMPTS && retryable(&failure) => {
                unknown |= failure.outcome != Outcome::NotDone;
                tracing::warn!(%attempt, %failure, "restore step failed, trying again");
                tokio::time::sleep(Duration::from_millis(200 * attempt as u64)).await;
            }
            Err(failure) if unknown && failure.outcome == Outcome::NotDone => {
                let message = format!("{} (an earlier try's outcome is unknown)", failure.message);
                return Err(Failure::unknown(failure.kind, message));
            }
            Err(failure) => return Err(failure),
        }
    }
}

/// A step worth another try: leadership or the connection to the leader
/// moved under it. Others (bad input, a failed node) will fail again.
fn retryable(failure: &Failure) -> bool {
    matches!(
        failure.kind,
        Kind::OutcomeUnknown
            | Kind::Timeout
            | Kind::NotSent
            | Kind::NoLeader
            | Kind::LeadershipTransfer
            | Kind::NotReady
    )
}

#[cfg(test)]
mod tests {
    use super::json_len;
    use crate::state::{Blob, Command};

    /// The per-chunk count of the log's bytes is never below the encoding's.
    #[test]
    fn a_chunks_logged_bytes_are_counted_at_least_in_full() {
        let id = "3-17a9c0ffee".to_string();
        for pairs in [
            vec![],
            vec![("k".to_string(), Blob::from("v"))],
            (0..100).map(|i| (format!("key\"{i}"), Blob::from("\u{1}\n\\ value é".repeat(i)))).collect(),
            (0..100).map(|i| (format!("k{i}"), Blob::from(vec![0xff; i]))).collect(),
        ] {
            let counted: u64 =
                pairs.iter().map(|(k, v)| json_len(k) + json_len(v) + 4).sum::<u64>() + 128 + id.len() as u64;
            let command = Command::RestoreChunk { id: id.clone(), seq: u64::MAX, pairs };
            assert!(counted >= command.encode().len() as u64, "{counted} < {}", command.encode().len());
        }
    }
}
