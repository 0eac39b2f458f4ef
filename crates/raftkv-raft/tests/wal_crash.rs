//! Crash test of the write-ahead log with real processes: a child appends,
//! truncates and purges, telling the parent through a pipe what each operation
//! it finished (and starts) is; the parent SIGKILLs it at a random moment,
//! reopens the log and checks that every acknowledged entry is there, intact
//! and in order, and that the log is a clean prefix of what was written.
//!
//! `WAL_CRASH_KILLS` (default 200) sets the number of kills, `WAL_CRASH_SEED` the
//! first seed; a failure prints the seed that replays it.
//!
//! Runs without the libtest harness: the same binary is the child when
//! `WAL_CRASH_CHILD` is set.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Write};
use std::os::unix::process::ExitStatusExt;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use bytes::Bytes;
use raftkv_core::{Entry, EntryPayload, LogIndex, Term};
use raftkv_raft::storage::{LogStore, Wal, WalOptions};

const SEGMENT_BYTES: u64 = 32 << 10;

/// The core's seeded generator, with a "below n" helper.
struct Rng(raftkv_core::rng::Rng);

impl Rng {
    fn new(seed: u64) -> Rng {
        Rng(raftkv_core::rng::Rng::new(seed))
    }

    fn below(&mut self, n: u64) -> u64 {
        self.0.next_u64() % n.max(1)
    }
}

/// The payload of entry `index` in `term`: derived from both, of varying length,
/// so that any damage or mix-up shows.
fn payload(index: u64, term: u64) -> Bytes {
    let filler = (index.wrapping_mul(7) + term) % 300;
    let mut data = format!("{index}:{term}:").into_bytes();
    data.extend((0..filler).map(|i| (i as u8).wrapping_add(index as u8)));
    Bytes::from(data)
}

fn entry(index: u64, term: u64) -> Entry {
    Entry { term: Term(term), index: LogIndex(index), payload: EntryPayload::Command(payload(index, term)) }
}

fn options() -> WalOptions {
    WalOptions { segment_bytes: SEGMENT_BYTES, preallocate: true }
}

/// The child: random operations until killed. Lines: `a F L T` / `A F L T`
/// before / after appending F..=L in term T, `t F` / `T F` around a suffix
/// truncation from F, `p U` / `P U` around a purge up to U.
fn child(dir: &Path, seed: u64) -> Result<(), Box<dyn std::error::Error>> {
    let wal = Wal::open(dir, options())?;
    let mut rng = Rng::new(seed);
    let mut out = std::io::stdout().lock();
    let mut term = match wal.get(wal.last_index()?)? {
        Some(last) => last.term.0,
        None => 1,
    };
    loop {
        let first = wal.first_index()?.0;
        let last = wal.last_index()?.0;
        let roll = rng.below(100);
        if roll < 8 && last >= first {
            let from = last - rng.below((last - first).min(40) + 1);
            writeln!(out, "t {from}")?;
            out.flush()?;
            wal.truncate_suffix(LogIndex(from))?;
            writeln!(out, "T {from}")?;
            term += 1;
        } else if roll < 14 && last > first + 50 {
            let upto = first + rng.below(last - first - 50);
            writeln!(out, "p {upto}")?;
            out.flush()?;
            wal.purge_prefix(LogIndex(upto))?;
            writeln!(out, "P {upto}")?;
        } else if roll < 15 {
            // A snapshot newer than the whole log replaces it.
            let upto = last + 1 + rng.below(100);
            writeln!(out, "p {upto}")?;
            out.flush()?;
            wal.purge_prefix(LogIndex(upto))?;
            writeln!(out, "P {upto}")?;
            term += 1;
        } else {
            let from = wal.last_index()?.0 + 1;
            let to = from + rng.below(32);
            let batch: Vec<Entry> = (from..=to).map(|i| entry(i, term)).collect();
            writeln!(out, "a {from} {to} {term}")?;
            out.flush()?;
            wal.append(&batch)?;
            writeln!(out, "A {from} {to} {term}")?;
        }
        out.flush()?;
    }
}

/// What the parent knows: acknowledged entries (index -> term) and the purge point.
#[derive(Default)]
struct Model {
    entries: BTreeMap<u64, u64>,
    purged_upto: u64,
}

enum Pending {
    None,
    Append,
    Truncate(u64),
    Purge(u64),
}

fn apply_line(model: &mut Model, line: &str, pending: &mut Pending) -> Result<(), String> {
    let fields: Vec<&str> = line.split_whitespace().collect();
    let number = |i: usize| -> Result<u64, String> {
        fields.get(i).and_then(|f| f.parse().ok()).ok_or_else(|| format!("bad line from child: {line:?}"))
    };
    match fields.first().copied() {
        Some("a") => *pending = Pending::Append,
        Some("t") => *pending = Pending::Truncate(number(1)?),
        Some("p") => *pending = Pending::Purge(number(1)?),
        Some("A") => {
            let (from, to, term) = (number(1)?, number(2)?, number(3)?);
            for i in from..=to {
                model.entries.insert(i, term);
            }
            *pending = Pending::None;
        }
        Some("T") => {
            let from = number(1)?;
            model.entries.split_off(&from);
            *pending = Pending::None;
        }
        Some("P") => {
            let upto = number(1)?;
            model.entries = model.entries.split_off(&(upto + 1));
            model.purged_upto = model.purged_upto.max(upto);
            *pending = Pending::None;
        }
        _ => return Err(format!("bad line from child: {line:?}")),
    }
    Ok(())
}

/// Reopens the log after a kill and checks it against the model; then makes the
/// model what the disk holds, for the next round.
fn verify(dir: &Path, model: &mut Model, pending: &Pending) -> Result<usize, String> {
    let wal = Wal::open(dir, options()).map_err(|e| format!("reopen failed: {e}"))?;
    let first = wal.first_index().map_err(|e| e.to_string())?.0;
    let last = wal.last_index().map_err(|e| e.to_string())?.0;
    let entries = wal.get_range(LogIndex(first), LogIndex(last)).map_err(|e| format!("read failed: {e}"))?;
    if entries.len() as u64 != last + 1 - first {
        return Err(format!("log {first}..={last} returned {} entries", entries.len()));
    }
    // The first index is the acknowledged purge point, or a pending purge's.
    let purge_limit = match pending {
        Pending::Purge(upto) => *upto + 1,
        _ => model.purged_upto + 1,
    };
    if first < model.purged_upto + 1 || first > purge_limit {
        return Err(format!("first index {first}; acknowledged purge up to {}", model.purged_upto));
    }
    // A clean prefix: contiguous, terms never falling, every entry intact.
    let mut previous_term = 0;
    for (i, e) in entries.iter().enumerate() {
        let index = first + i as u64;
        if e.index.0 != index
            || e.term.0 < previous_term
            || e.payload != EntryPayload::Command(payload(index, e.term.0))
        {
            return Err(format!("entry at {index} is damaged or out of order: {e:?}"));
        }
        previous_term = e.term.0;
    }
    // Every acknowledged entry at or after the first index is there, unchanged,
    // except those a truncation in progress may already have removed.
    let may_vanish_from = match pending {
        Pending::Truncate(from) => *from,
        _ => u64::MAX,
    };
    for (&index, &term) in model.entries.range(first..) {
        match wal.get(LogIndex(index)).map_err(|e| e.to_string())? {
            Some(e) if e.term.0 == term => {}
            None if index >= may_vanish_from => {}
            found => return Err(format!("acknowledged entry {index} of term {term}: found {found:?}")),
        }
    }
    model.entries = entries.iter().map(|e| (e.index.0, e.term.0)).collect();
    model.purged_upto = first - 1;
    Ok(entries.len())
}

fn parent() -> Result<(), String> {
    let kills: u64 = std::env::var("WAL_CRASH_KILLS").ok().and_then(|v| v.parse().ok()).unwrap_or(200);
    let first_seed: u64 = std::env::var("WAL_CRASH_SEED").ok().and_then(|v| v.parse().ok()).unwrap_or(1);
    let exe = std::env::current_exe().map_err(|e| e.to_string())?;
    let dir = tempfile::TempDir::new().map_err(|e| e.to_string())?;
    let mut model = Model::default();
    let mut rng = Rng::new(first_seed);
    let mut acknowledged_ops = 0u64;
    let started = Instant::now();
    for round in 0..kills {
        let seed = first_seed.wrapping_mul(1_000_003).wrapping_add(round);
        let mut child = Command::new(&exe)
            .env("WAL_CRASH_CHILD", dir.path())
            .env("WAL_CRASH_CHILD_SEED", seed.to_string())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .map_err(|e| format!("spawn child: {e}"))?;
        let stdout = child.stdout.take().ok_or("child has no stdout")?;
        let reader =
            std::thread::spawn(move || BufReader::new(stdout).lines().map_while(Result::ok).collect::<Vec<String>>());
        std::thread::sleep(Duration::from_micros(2_000 + rng.below(30_000)));
        // SIGKILL: no destructor, no flush, no chance to tidy up.
        child.kill().map_err(|e| format!("kill child: {e}"))?;
        let status = child.wait().map_err(|e| e.to_string())?;
        let lines = reader.join().map_err(|_| "reader thread panicked")?;
        if status.signal() != Some(9) {
            return Err(format!("round {round} (seed {seed}): the child ended on its own ({status})"));
        }
        let mut pending = Pending::None;
        for line in &lines {
            if line.starts_with(['A', 'T', 'P']) {
                acknowledged_ops += 1;
            }
            apply_line(&mut model, line, &mut pending).map_err(|e| format!("round {round}: {e}"))?;
        }
        verify(dir.path(), &mut model, &pending).map_err(|e| {
            format!(
                "round {round}, child seed {seed} (replay: WAL_CRASH_SEED={first_seed} WAL_CRASH_KILLS={}): {e}",
                round + 1
            )
        })?;
    }
    println!(
        "wal crash test: {kills} kills, {acknowledged_ops} acknowledged operations checked, {} entries at the end, {:.1} s",
        model.entries.len(),
        started.elapsed().as_secs_f64()
    );
    Ok(())
}

fn main() {
    if let Ok(dir) = std::env::var("WAL_CRASH_CHILD") {
        let seed = std::env::var("WAL_CRASH_CHILD_SEED").ok().and_then(|s| s.parse().ok()).unwrap_or(0);
        if let Err(error) = child(Path::new(&dir), seed) {
            eprintln!("crash child failed: {error}");
            std::process::exit(2);
        }
        return;
    }
    match parent() {
        Ok(()) => println!("wal_crash: 1 passed, 0 failed"),
        Err(error) => {
            eprintln!("wal crash test failed: {error}");
            println!("wal_crash: 0 passed, 1 failed");
            std::process::exit(1);
        }
    }
}
