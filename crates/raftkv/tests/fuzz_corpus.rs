//! Replays the corpora of the cargo-fuzz targets over raftkv's decoders
//! (`fuzz/corpus/<target>/`, every file) and their built-in seeds through
//! the same harness functions the targets call (`fuzz/src/kv.rs`): an
//! input that once found a bug, or that a fuzzer kept for its coverage,
//! keeps being checked by `cargo test`, without a nightly toolchain.
//!
//! `RAFTKV_FUZZ_WRITE_SEEDS=1` also writes the seeds into the corpus
//! directories (as `seed-NN`), to start a corpus afresh (docs/fuzzing.md).

#[path = "../../../fuzz/src/kv.rs"]
mod harness;
#[path = "../../../fuzz/src/support.rs"]
mod support;

use std::path::{Path, PathBuf};

#[global_allocator]
static ALLOC: support::Tracking = support::Tracking;

fn corpus(target: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fuzz/corpus").join(target)
}

/// Runs `check` on the seeds of `target` and every file of its corpus,
/// naming the file that fails.
fn replay(target: &str, check: fn(&[u8])) {
    let seeds = harness::seeds().into_iter().find(|(name, _)| *name == target).map(|(_, seeds)| seeds);
    let seeds = seeds.unwrap_or_else(|| panic!("no seeds for {target}"));
    assert!(!seeds.is_empty());
    let dir = corpus(target);
    for (i, seed) in seeds.iter().enumerate() {
        check(seed);
        if std::env::var_os("RAFTKV_FUZZ_WRITE_SEEDS").is_some() {
            std::fs::create_dir_all(&dir).unwrap();
            std::fs::write(dir.join(format!("seed-{i:02}")), seed).unwrap();
        }
    }
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("the corpus of {target} at {}: {e}", dir.display()))
        .map(|entry| entry.unwrap().path())
        .collect();
    files.sort();
    assert!(!files.is_empty(), "the corpus of {target} at {} is empty", dir.display());
    for file in files {
        let data = std::fs::read(&file).unwrap();
        if std::panic::catch_unwind(|| check(&data)).is_err() {
            panic!("{} fails the {target} harness", file.display());
        }
    }
}

#[test]
fn image() {
    replay("image", harness::image);
}

#[test]
fn command_json() {
    replay("command_json", harness::command_json);
}

#[test]
fn internal_rpc() {
    replay("internal_rpc", harness::internal_rpc);
}

#[test]
fn gossip() {
    replay("gossip", harness::gossip);
}
