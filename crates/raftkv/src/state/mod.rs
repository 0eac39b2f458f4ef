//! The replicated state, the bottom layer: what a command is and how it is
//! encoded in the log (`command`), a value's bytes (`blob`), the key-value map and the state machine
//! that applies commands, snapshots and restores it (`machine`), and the one
//! binary format of snapshots and backups (`image`). Nothing here knows about
//! the network or the other nodes.

pub mod blob;
pub mod command;
pub mod image;
pub mod machine;

pub use blob::Blob;
pub use command::{Answer, Command, Limits, Peer};
pub use machine::{Kv, KvMachine, KvState, Value};
