//! Tally's replication logic, pure: shipping each primary shard's log to its replicas, the replica's
//! mirror streams, the ack quorum, epochs and promotion. docs/replication.md is the specification.
//!
//! Owns: the replication messages and their frame codec (`message`), the self-contained record
//! encoding inside a Ship frame (`records`: the WAL's entry codec, `tally_wal::record`, with a
//! frame-local dictionary), the primary's per-(shard, replica) `Shipper`, the per-shard `Quorum`, the
//! replica's `Replica` with one `Follower` per mirror stream, the `EpochHistory` that tells a prefix
//! log from a diverged one, and the `Promotion` coordinator.
//! Every state machine takes events (messages, "synced", "sent", time passed in as numbers) and
//! returns commands for a runtime to execute, in order (openraft's style).
//!
//! Invariants:
//! - a replica acks an lsn only after the runtime reported it fsynced; it appends every lsn exactly
//!   once and in order (duplicates are re-acked, gaps are asked for once, never skipped);
//! - `Quorum` reports an lsn ackable in a replicated mode only when the primary and the required
//!   replicas have fsynced it, and its answers only increase;
//! - epochs only increase, are persisted before anything is done under them, and a message of an
//!   older epoch changes nothing but earns a `Fenced` reply; a primary that sees a higher epoch
//!   steps down;
//! - a promotion becomes primary only with every record every peer that answered had, after
//!   fencing them.
//!
//! It must never: do I/O, read a clock, spawn, or block (no sockets, files, glommio: it depends on
//! `tally-wal` for the record codec only); panic on any bytes from the network; send more than the
//! named in-flight limits to one replica.

pub mod error;
pub mod follower;
pub mod history;
pub mod limits;
pub mod message;
pub mod promotion;
pub mod quorum;
pub mod records;
pub mod replica;
pub mod shipper;

pub use error::{DecodeError, ReplicateError};
pub use follower::Follower;
pub use history::{EpochHistory, EpochStart};
pub use message::{
    Ack, Fence, FenceReply, Fenced, Fetch, Hello, HelloReply, Kind, Message, Need, Role, Ship, SnapshotBegin,
    SnapshotChunk, SnapshotEnd, StreamPosition, PROTOCOL_VERSION,
};
pub use promotion::{peers_for_majority, Probe, ProbeOutcome, Promotion, PromotionCommand, PromotionState};
pub use quorum::{AckMode, Quorum, Wait};
pub use records::{check_records, decode_records, RecordsEncoder};
pub use replica::{Replica, ReplicaCommand};
pub use shipper::{Shipper, ShipperCommand, ShipperState};
