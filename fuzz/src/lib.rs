//! The harnesses behind the fuzz targets (`fuzz_targets/*.rs`, one line
//! each) and behind the `cargo test` fuzz tests of the workspace crates,
//! which include these files with `#[path]`: one function per decoder, so
//! that a fuzz target, a proptest case and a corpus replay run the same
//! checks. See docs/fuzzing.md.

pub mod kv;
pub mod raft;
pub mod support;
