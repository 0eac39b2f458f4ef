//! raftkv: a replicated key-value store on the `raftkv-raft` crate. `agent` runs a
//! server node, `http` is its API, `store` the replicated state.

pub mod agent;
pub mod backup;
pub mod bench;
pub mod http;
pub mod image;
pub mod ops;
pub mod store;
