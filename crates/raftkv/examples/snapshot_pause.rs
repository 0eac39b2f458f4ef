//! How long applies pause while the key-value state is captured for a snapshot,
//! and how long writing the capture out takes (off the apply path), for a state
//! of N keys.
//!
//! `cargo run --release -p raftkv --example snapshot_pause -- [KEYS]` (default 1,000,000)

use std::time::Instant;

use raftkv::state::{Command, Kv};
use raftkv_raft::{Entry, EntryPayload, LogIndex, StateMachine, Term};

fn main() {
    let keys: u64 = std::env::args().nth(1).and_then(|a| a.parse().ok()).unwrap_or(1_000_000);
    let kv = Kv::default();
    let mut machine = kv.state_machine(|_, _| {});
    let value = "v".repeat(100);
    let started = Instant::now();
    for batch in 0..keys.div_ceil(10_000) {
        let entries: Vec<Entry> = (batch * 10_000..((batch + 1) * 10_000).min(keys))
            .map(|i| Entry {
                term: Term(1),
                index: LogIndex(i + 1),
                payload: EntryPayload::Command(
                    Command::Set { key: format!("key-{i:09}"), value: value.as_str().into() }.encode(),
                ),
            })
            .collect();
        machine.apply(&entries);
    }
    let load = started.elapsed();
    // The first capture pays for cold code pages (about a millisecond, whatever
    // the size of the state); later ones show the steady cost.
    let capture_started = Instant::now();
    let mut capture = machine.snapshot();
    let first_pause = capture_started.elapsed();
    let mut pause = std::time::Duration::ZERO;
    for _ in 0..5 {
        let capture_started = Instant::now();
        capture = machine.snapshot();
        pause = pause.max(capture_started.elapsed());
    }
    // Applies go on while the capture is written out.
    let more = Entry {
        term: Term(1),
        index: LogIndex(keys + 1),
        payload: EntryPayload::Command(Command::Set { key: "after".into(), value: "x".into() }.encode()),
    };
    machine.apply(&[more]);
    let write_started = Instant::now();
    let mut out = Vec::new();
    if let Err(error) = capture.write_to(&mut out) {
        eprintln!("snapshot_pause: writing the capture failed: {error}");
        std::process::exit(1);
    }
    let write = write_started.elapsed();
    let summary = serde_json::json!({
        "keys": keys,
        "load_s": load.as_secs_f64(),
        "first_capture_pause_us": first_pause.as_micros() as u64,
        "capture_pause_us": pause.as_micros() as u64,
        "write_s": write.as_secs_f64(),
        "snapshot_bytes": out.len(),
    });
    println!("{summary}");
}
