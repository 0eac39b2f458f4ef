//! raftkv: a replicated key-value store on `raftkv-raft`. The layers, each
//! using only those below it:
//!
//! - `cli`: the command line (`raftkv ...`), over `server` and the API's
//!   HTTP client.
//! - `server`: one node started with its HTTP API.
//! - `api`: the HTTP API, by concern, with one error mapping.
//! - `agent`: one node in a cluster: start-up, the one "here or on the
//!   leader" decision, the write forwarder, the internal RPC, restores.
//! - `state`: the replicated state, its commands and its image format.
//!
//! `bench` is the load generator behind `raftkv bench`, a client of raftkv's
//! HTTP API or of etcd's gRPC one; `http_client` is what any client of the
//! API needs to be let in (TLS material, a token).

pub mod agent;
pub mod api;
pub mod bench;
pub mod cli;
pub mod http_client;
pub mod server;
pub mod state;
