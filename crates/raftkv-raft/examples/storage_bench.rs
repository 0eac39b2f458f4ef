//! Write-ahead log throughput against the disk's own fsync rate, measured in the
//! same run on the same file system:
//!
//! - `raw_fsync_ops_per_s`: a plain loop of 4 KiB write + fdatasync at the end of a file;
//! - `wal_batch1_ops_per_s`: one 4 KiB entry per `append`;
//! - `wal_batch64_entries_per_s`: 64 entries of 4 KiB per `append`;
//! - `wal_concurrent16_ops_per_s`: 16 threads appending single 4 KiB entries
//!   (group commit shares fsyncs between them);
//! - `ratio_batch1` = wal_batch1 / raw_fsync.
//!
//! Raw and WAL runs alternate (five rounds each, median reported) so that drift
//! in the disk's speed does not favour either.
//!
//! `cargo run --release -p raftkv-raft --example storage_bench -- [--json] [--seconds S] [--dir D]`

use std::fs::OpenOptions;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use raftkv_core::{Entry, EntryPayload, LogIndex, Term};
use raftkv_raft::storage::fault::FaultyFs;
use raftkv_raft::storage::{LogStore, Wal, WalOptions};

const ENTRY_BYTES: usize = 4096;
const ROUNDS: usize = 5;

struct Args {
    json: bool,
    seconds: f64,
    dir: Option<PathBuf>,
}

fn parse_args() -> Result<Args, String> {
    let mut args = Args { json: false, seconds: 1.0, dir: None };
    let mut it = std::env::args().skip(1);
    while let Some(arg) = it.next() {
        match arg.as_str() {
            "--json" => args.json = true,
            "--seconds" => {
                let value = it.next().ok_or("--seconds needs a value")?;
                args.seconds = value.parse().map_err(|_| format!("--seconds: not a number: {value}"))?;
            }
            "--dir" => args.dir = Some(PathBuf::from(it.next().ok_or("--dir needs a value")?)),
            other => return Err(format!("unknown argument {other}; expected --json, --seconds S, --dir D")),
        }
    }
    Ok(args)
}

fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(|a, b| a.total_cmp(b));
    values[values.len() / 2]
}

fn entry(index: u64, data: &Bytes) -> Entry {
    Entry { term: Term(1), index: LogIndex(index), payload: EntryPayload::Command(data.clone()) }
}

fn raw_fsync(dir: &Path, duration: Duration) -> std::io::Result<f64> {
    let path = dir.join("raw-fsync");
    let mut file = OpenOptions::new().create(true).write(true).truncate(true).open(&path)?;
    let block = vec![0xA5u8; ENTRY_BYTES];
    let start = Instant::now();
    let mut ops = 0u64;
    while start.elapsed() < duration {
        file.write_all(&block)?;
        file.sync_data()?;
        ops += 1;
    }
    let rate = ops as f64 / start.elapsed().as_secs_f64();
    drop(file);
    std::fs::remove_file(&path)?;
    Ok(rate)
}

fn wal_batches(dir: &Path, batch: usize, duration: Duration) -> Result<f64, Box<dyn std::error::Error>> {
    let wal_dir = tempfile::TempDir::new_in(dir)?;
    let wal = Wal::open(wal_dir.path(), WalOptions::default())?;
    let data = Bytes::from(vec![0x5Au8; ENTRY_BYTES]);
    let start = Instant::now();
    let mut next = 1u64;
    while start.elapsed() < duration {
        let entries: Vec<Entry> = (next..next + batch as u64).map(|i| entry(i, &data)).collect();
        wal.append(&entries)?;
        next += batch as u64;
    }
    Ok((next - 1) as f64 / start.elapsed().as_secs_f64())
}

/// Appends per second from `writers` threads, and appends per fsync.
fn wal_concurrent(dir: &Path, writers: usize, duration: Duration) -> Result<(f64, f64), Box<dyn std::error::Error>> {
    let wal_dir = tempfile::TempDir::new_in(dir)?;
    // FaultyFs with no fault armed: the real file system, with fsyncs counted.
    let fs = FaultyFs::default();
    let wal = Arc::new(Wal::open_with(Arc::new(fs.clone()), wal_dir.path(), WalOptions::default())?);
    let syncs_before = fs.syncs();
    let next = Arc::new(Mutex::new(1u64));
    let data = Bytes::from(vec![0x5Au8; ENTRY_BYTES]);
    let start = Instant::now();
    let threads: Vec<_> = (0..writers)
        .map(|_| {
            let (wal, next, data) = (wal.clone(), next.clone(), data.clone());
            std::thread::spawn(move || -> Result<u64, String> {
                let mut ops = 0;
                while start.elapsed() < duration {
                    // Indexes are handed out in the order writes land; the fsync is shared.
                    let ticket = {
                        let mut next = next.lock().map_err(|_| "index lock poisoned")?;
                        let ticket = wal.write(&[entry(*next, &data)]).map_err(|e| e.to_string())?;
                        *next += 1;
                        ticket
                    };
                    wal.sync_to(ticket).map_err(|e| e.to_string())?;
                    ops += 1;
                }
                Ok(ops)
            })
        })
        .collect();
    let mut ops = 0;
    for thread in threads {
        ops += thread.join().map_err(|_| "writer thread panicked")??;
    }
    let rate = ops as f64 / start.elapsed().as_secs_f64();
    let syncs = fs.syncs() - syncs_before;
    let last = wal.last_index()?;
    if last.0 != ops {
        return Err(format!("{ops} appends acknowledged but the log ends at {last}").into());
    }
    Ok((rate, ops as f64 / syncs.max(1) as f64))
}

fn run(args: &Args) -> Result<(), Box<dyn std::error::Error>> {
    let scratch = match &args.dir {
        Some(dir) => tempfile::TempDir::new_in(dir)?,
        None => tempfile::TempDir::new_in(std::env::current_dir()?)?,
    };
    let dir = scratch.path();
    let duration = Duration::from_secs_f64(args.seconds);
    let (mut raw, mut batch1, mut batch64, mut concurrent) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    let mut per_sync = Vec::new();
    for round in 1..=ROUNDS {
        raw.push(raw_fsync(dir, duration)?);
        batch1.push(wal_batches(dir, 1, duration)?);
        batch64.push(wal_batches(dir, 64, duration)?);
        let (rate, appends_per_sync) = wal_concurrent(dir, 16, duration)?;
        concurrent.push(rate);
        per_sync.push(appends_per_sync);
        if !args.json {
            println!(
                "round {round}: raw fsync {:.0}/s, wal batch 1 {:.0}/s, batch 64 {:.0} entries/s, 16 writers {:.0}/s ({:.1} per fsync)",
                raw[round - 1],
                batch1[round - 1],
                batch64[round - 1],
                concurrent[round - 1],
                per_sync[round - 1]
            );
        }
    }
    let (raw, batch1, batch64, concurrent) = (median(raw), median(batch1), median(batch64), median(concurrent));
    let summary = serde_json::json!({
        "entry_bytes": ENTRY_BYTES,
        "seconds_per_run": args.seconds,
        "rounds": ROUNDS,
        "raw_fsync_ops_per_s": raw.round(),
        "wal_batch1_ops_per_s": batch1.round(),
        "wal_batch64_entries_per_s": batch64.round(),
        "wal_concurrent16_ops_per_s": concurrent.round(),
        "ratio_batch1": (batch1 / raw * 1000.0).round() / 1000.0,
        "ratio_concurrent16": (concurrent / raw * 100.0).round() / 100.0,
        "wal_concurrent16_appends_per_fsync": (median(per_sync) * 10.0).round() / 10.0,
    });
    if !args.json {
        println!("medians of {ROUNDS} rounds of {} s each:", args.seconds);
    }
    println!("{summary}");
    Ok(())
}

fn main() {
    let result = parse_args().map_err(|e| e.into()).and_then(|args| run(&args));
    if let Err(error) = result {
        eprintln!("storage_bench: {error}");
        std::process::exit(1);
    }
}
