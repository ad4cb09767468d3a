//! The Tally node: one glommio executor per core, each owning the counters whose names hash to it
//! (`tally_proto::shard_of`), serving the binary protocol on a shared main port and on its own
//! direct port, and forwarding ops for other shards over bounded cross-shard channels.
//!
//! Invariants: a request that reaches the shard owning its name never crosses cores; every queue
//! between shards and every per-connection buffer is bounded; replies on a connection leave in
//! request order. glommio and sockets live here and nowhere below: the engine is pure.
//!
//! Used as the `tallyd` binary, or in-process through `Node::start` (sidecar-as-a-library).

pub mod ack_mark;
pub mod config;
pub mod connection;
pub mod durability;
pub mod events;
pub mod history;
pub mod limits;
pub mod log;
pub mod mesh;
pub mod node;
pub mod recovery;
pub mod replication;
pub mod shard;
pub mod system;
pub mod windows;

pub use config::Config;
pub use node::Node;
