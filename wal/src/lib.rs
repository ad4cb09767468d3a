//! Tally's write-ahead log: one log per shard, in its own directory.
//!
//! Owns: the byte format of log records (`record`), batches (`batch`), segment files (`segment`) and
//! snapshot files (`snapshot`); the writer that appends, group-commits, rotates, snapshots and
//! deletes old segments (`wal`, `group_commit`); the acknowledged mark, a lower bound of what was
//! acknowledged that recovery checks the log against (`ack_mark`); recovery of a shard directory
//! (`recovery`); and the
//! storage it runs on (`storage`: a trait, an in-memory crash-test double, and `dma_storage` on
//! glommio's direct I/O). docs/wal.md is the format specification and the argument for recovery.
//!
//! Invariants:
//! - lsns only increase, by one per record, across batches and segments;
//! - a batch is acknowledged (its lsn returned as durable) only after its fdatasync returned Ok;
//! - a write never touches a block holding acknowledged data (batches start on a 4096-byte boundary
//!   and are padded to the next), so a torn write can damage only the batch being written;
//! - after the first failed write or sync the log is poisoned: nothing more is written or acked;
//! - recovery either yields a prefix of the log holding every acknowledged record, or refuses;
//! - the acknowledged mark never names an lsn that was not durable in the log when it was written,
//!   and writing it never delays an acknowledgement.
//!
//! It must never: retry an fsync; acknowledge a record whose batch is not synced; truncate the log
//! before a valid batch (that is corruption, reported with file and offset); delete a segment that
//! replay from the oldest kept snapshot needs; allocate per appended record in steady state; panic on
//! any bytes it reads back.

pub mod ack_mark;
pub mod batch;
pub mod dma_storage;
pub mod error;
pub mod group_commit;
pub mod limits;
pub mod record;
pub mod recovery;
pub mod segment;
pub mod snapshot;
pub mod storage;
pub mod varint;
mod wal;

pub use ack_mark::{AckMark, ACK_MARK_FILE_NAME};
pub use batch::{BatchEncoder, Room, SealedBatch, SegmentSlot};
pub use dma_storage::DmaStorage;
pub use error::WalError;
pub use group_commit::GroupCommit;
pub use record::{Entry, Keyed, LogRecord, LogSink};
pub use recovery::{
    recover, recover_from_snapshot, AppendPoint, FsDir, OpenSegment, Recovered, RecoveredSnapshot, RecoverySource,
    TornTail,
};
pub use segment::{parse_segment_file_name, ReaderPosition, SegmentHeader, SegmentReader, Step};
pub use snapshot::decode_snapshot;
pub use storage::{MemStorage, OpCounts, Storage};
pub use wal::{Wal, WalConfig};
