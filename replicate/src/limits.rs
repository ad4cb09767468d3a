//! Every limit of replication, with the reason for its value.

use tally_proto::limits as wire;

/// Bytes of the replication frame header: body length (4), kind (1), crc32c (4).
pub const FRAME_HEADER_BYTES: usize = 9;

/// The largest Ship frame body's record bytes. 1 MiB is a few hundred thousand increments (3 to 6
/// bytes each), far more than one round trip needs on a 10 Gb/s link at 1 ms RTT, and small enough
/// that a replica's read buffer (one maximal frame) stays cheap per connection.
pub const SHIP_RECORD_BYTES_MAX: usize = 1 << 20;

/// The largest snapshot chunk. Same reasoning as `SHIP_RECORD_BYTES_MAX`; it also matches the WAL's
/// snapshot write chunk, so a chunk is one write on the replica.
pub const SNAPSHOT_CHUNK_BYTES_MAX: usize = 1 << 20;

/// The largest frame body of any kind: a maximal Ship or chunk plus its fixed fields, or a Hello with
/// a full epoch history (`EPOCH_HISTORY_MAX` × `SHARDS_MAX` × 8 = 64 KiB). A length prefix above this
/// is not a frame of ours: the connection is closed.
pub const FRAME_BODY_BYTES_MAX: usize = SHIP_RECORD_BYTES_MAX + (128 << 10);

/// Records in one Ship frame. A record is at least 3 bytes, so `SHIP_RECORD_BYTES_MAX` already bounds
/// them to ~350K; this lower cap bounds the work one frame makes a replica do before it can ack, and
/// the lsn span a decoder must accept (lsn_last - lsn_first + 1).
pub const SHIP_RECORDS_MAX: u64 = 1 << 16;

/// Records the shipper asks the runtime to send per `SendRange` command: one maximal frame's worth,
/// so the in-flight window's frame count is close to the number of frames on the wire.
pub const SEND_RECORDS_MAX: u64 = SHIP_RECORDS_MAX;

/// Sends (each ≤ `SEND_RECORDS_MAX` records) in flight to one replica for one shard before the
/// shipper waits for an ack. With group commit a replica acks once per fsync (~0.5 ms), and the
/// primary seals a batch about as often, so 64 covers tens of ms of stall on the replica's disk
/// before shipping pauses.
pub const IN_FLIGHT_SENDS_MAX: usize = 64;

/// Bytes in flight to one replica for one shard. 8 MiB is ~6 times the bandwidth-delay product of a
/// 10 Gb/s link at 1 ms RTT, so a healthy replica never throttles the primary; a stuck one costs the
/// primary at most this much buffered data per shard (the runtime reads records from memory or
/// segments, so this bounds socket buffers, not log retention).
pub const IN_FLIGHT_BYTES_MAX: u64 = 8 << 20;

/// Replicas per primary. The design is primary + two replicas (quorum = primary + one, so one node
/// may fail and one may lag). Fence and Hello replies carry one position per shard, so this also
/// bounds a promotion's peer count.
pub const REPLICAS_MAX: usize = 2;

/// Primary shards: the wire's shard limit (a u16 shard id, at most one shard per core).
pub const SHARDS_MAX: u16 = wire::SHARDS_MAX;

/// Bytes of a node address (`host:port`) in Hello, Fence and Fenced: a str8.
pub const ADDR_BYTES_MAX: usize = 255;

/// Epoch boundaries a node keeps and sends in Hello. Each promotion adds one; an older boundary only
/// matters to a node whose log stopped in that epoch, and such a node is resynchronised by snapshot
/// anyway. 32 promotions is far more than a cluster sees between two snapshots of a replica.
pub const EPOCH_HISTORY_MAX: usize = 32;

/// How long a promotion (or a restarting primary's probe) that already has its majority waits for
/// the remaining peer. A majority is all safety needs; the last peer may still hold unacknowledged
/// records worth keeping, and a second is a small price next to a failover.
pub const MAJORITY_GRACE_MS: u64 = 1_000;

/// How long a promotion's fetch may run past the promotion's deadline: the fetch only starts once
/// the peers answered, which may be right at the deadline.
pub const FETCH_EXTRA_MS_MAX: u64 = 10_000;

// The Hello history fits a frame body next to its other fields.
const _: () = assert!(EPOCH_HISTORY_MAX * (8 + 8 * SHARDS_MAX as usize) + 512 < FRAME_BODY_BYTES_MAX);
// A maximal Ship (fixed fields are < 64 bytes) and a maximal chunk fit a frame body.
const _: () = assert!(SHIP_RECORD_BYTES_MAX + 64 <= FRAME_BODY_BYTES_MAX);
const _: () = assert!(SNAPSHOT_CHUNK_BYTES_MAX + 64 <= FRAME_BODY_BYTES_MAX);
// The frame's length prefix is a u32.
const _: () = assert!(FRAME_BODY_BYTES_MAX <= u32::MAX as usize);
// A str8 holds an address.
const _: () = assert!(ADDR_BYTES_MAX <= u8::MAX as usize);
// A send is at most one frame's worth of records (bytes may split it into several frames).
const _: () = assert!(SEND_RECORDS_MAX <= SHIP_RECORDS_MAX);
