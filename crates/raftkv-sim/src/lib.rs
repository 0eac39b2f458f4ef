//! A deterministic simulator for `raftkv-core`: seeded network, disks, clocks and
//! clients; Raft's safety properties checked after every step; liveness and
//! linearizability checked at the end of every run.

pub mod checker;
pub mod harness;
pub mod kv;
pub mod linearizability;
pub mod runner;
pub mod sim;

pub use sim::{run_seed, Faults, Outcome, SimConfig, Simulation};
