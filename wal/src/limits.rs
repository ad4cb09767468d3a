//! Every limit of the WAL, with the reason for its value.

use tally_proto::limits as wire;

/// The unit of every write and of the on-disk layout. Direct I/O needs writes aligned to the device's
/// logical block (512 or 4096 bytes); 4096 covers both. Every batch starts on a block boundary and is
/// padded to the next one, so a write never rewrites a block that holds acknowledged data.
pub const BLOCK_BYTES: u64 = 4096;

/// The segment header occupies the whole first block, so the first batch starts block-aligned.
pub const SEGMENT_HEADER_BYTES: u64 = BLOCK_BYTES;

/// Default segment size. 64 MiB is about a second of the log at 10M increments/s (about 6 bytes each
/// in large batches), small enough that preallocating the next one is quick and that retention frees
/// space in fine steps, large enough that rotation (one rename and directory fsync) is rare.
pub const SEGMENT_BYTES_DEFAULT: u64 = 64 << 20;

/// The smallest segment: the header block plus room for one maximal batch at the end of the segment,
/// so a batch the encoder starts in a fresh segment always fits. Tests use segments this small to
/// rotate often.
pub const SEGMENT_BYTES_MIN: u64 = SEGMENT_HEADER_BYTES + BATCH_ROOM_MIN;

/// The largest segment: offsets inside a segment are checked as u64 but a whole segment is read into
/// memory at recovery, so keep it far below what a shard can afford to hold at once.
pub const SEGMENT_BYTES_MAX: u64 = 1 << 30;

/// The largest batch, header and padding included. Bounds the write buffer (two per shard, double
/// buffered) and the latency of one write+fdatasync: 4 MiB at ~2 GB/s is ~2 ms, several fsyncs' worth,
/// so larger batches would not raise throughput, only tail latency.
pub const BATCH_BYTES_MAX: u64 = 4 << 20;

/// Bytes of the batch header (magic, body_len, crc, first_lsn, record_count, time_ms).
pub const BATCH_HEADER_BYTES: u64 = 32;

/// The most bytes one engine op can append to a batch: a RESET of a split counter writes a MERGE and a
/// RESET, each possibly preceded by a dictionary entry. A RESET is at most tag (1) + name ref (5) +
/// two values (10 + 10) + reason (3 + 1024) + client (2 + 255) bytes; a dictionary entry at most
/// 1 + 5 + 1 + 255. Rounded up to one block, with room to spare for one more record type.
pub const OP_BYTES_MAX: u64 = 4096;

/// When a batch would start with less than this left in its segment, and a next segment is ready,
/// the encoder starts the batch in the next segment instead. At most this much of a segment is
/// wasted (0.1% of a 64 MiB segment), and every batch has room for many ops.
pub const BATCH_ROOM_MIN: u64 = 64 << 10;

/// A counter name, as on the wire (the dictionary entry stores its length in one byte).
pub const NAME_BYTES_MAX: usize = wire::NAME_BYTES_MAX;

/// A RESET's reason, as on the wire.
pub const REASON_BYTES_MAX: usize = wire::REASON_BYTES_MAX;

/// A RESET's client name: HELLO's client name is a str8.
pub const CLIENT_BYTES_MAX: usize = 255;

/// Snapshot bodies are written in chunks of this size, so the DMA buffer stays small however large
/// the snapshot (10M counters are a few hundred MB).
pub const SNAPSHOT_CHUNK_BYTES: u64 = 1 << 20;

/// Bytes of zeros per write when a new segment is filled (`DmaStorage::create`): 1 MiB writes
/// reach this disk's sequential bandwidth (64 MiB in about 70 ms), and one buffer of this size is
/// all the direct-I/O memory the fill takes.
pub const ZERO_FILL_CHUNK_BYTES: u64 = 1 << 20;

/// Snapshots kept on disk: the newest and the one before it, so a snapshot damaged on disk falls back
/// to the previous one, whose log tail retention therefore keeps.
pub const SNAPSHOTS_KEPT: usize = 2;

/// Audit retention: segments are kept this long after their newest record even when a snapshot
/// covers them (7 days, the brief's default).
pub const RETENTION_MS_DEFAULT: u64 = 7 * 24 * 3600 * 1000;

/// A snapshot body larger than this is refused at recovery as implausible (and so is its file):
/// 16 GiB is far above 10M counters (~500 MB) and stops a damaged length field from asking for an
/// absurd allocation.
pub const SNAPSHOT_BODY_BYTES_MAX: u64 = 16 << 30;

const _: () = assert!(BLOCK_BYTES.is_power_of_two());
const _: () = assert!(BATCH_BYTES_MAX.is_multiple_of(BLOCK_BYTES));
const _: () = assert!(BATCH_ROOM_MIN.is_multiple_of(BLOCK_BYTES));
const _: () = assert!(SEGMENT_BYTES_DEFAULT.is_multiple_of(BLOCK_BYTES));
const _: () = assert!(SEGMENT_BYTES_DEFAULT >= SEGMENT_BYTES_MIN);
const _: () = assert!(SEGMENT_BYTES_MAX >= SEGMENT_BYTES_DEFAULT);
// A batch's body_len is a u32.
const _: () = assert!(BATCH_BYTES_MAX <= u32::MAX as u64);
// A fresh batch always has room for one op, however full its segment (rotation needs BATCH_ROOM_MIN).
const _: () = assert!(BATCH_ROOM_MIN >= BATCH_HEADER_BYTES + OP_BYTES_MAX);
const _: () = assert!(BATCH_BYTES_MAX >= BATCH_HEADER_BYTES + OP_BYTES_MAX);
// The dictionary entry stores a name's length in one byte.
const _: () = assert!(NAME_BYTES_MAX <= u8::MAX as usize);
// Two records of one op (MERGE + RESET), each with a dictionary entry, fit in OP_BYTES_MAX.
const _: () = assert!(
    2 * (1 + 5 + 1 + NAME_BYTES_MAX) + (1 + 5 + 10 + 10) + (1 + 5 + 20 + 3 + REASON_BYTES_MAX + 2 + CLIENT_BYTES_MAX)
        <= OP_BYTES_MAX as usize
);
