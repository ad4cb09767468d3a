//! Every limit and default of tally-bench, each with the reason for its value.

use tally_proto::limits::{
    CONNECTION_BUFFER_BYTES_MAX, IN_FLIGHT_FRAMES_MAX, OPS_PER_FRAME_MAX, REPLY_OP_HEADER_BYTES,
};

/// Most connections. Each connection is an OS thread; far past a thousand threads the client's own
/// scheduling, not the server, is what a run would measure.
pub const CONNECTIONS_MAX: usize = 1024;

/// Most frames in flight per connection: beyond the server's `IN_FLIGHT_FRAMES_MAX` it stops reading
/// the socket, so a deeper window would only queue in kernel buffers.
pub const PIPELINE_MAX: usize = IN_FLIGHT_FRAMES_MAX;

/// Most ops per frame: the wire limit.
pub const BATCH_MAX: usize = OPS_PER_FRAME_MAX as usize;

/// Bytes of the reply op to a successful INCR or ADD_BOUNDED: op header, flags u8, value i64,
/// token (shard u16, lsn u64). The largest success reply of the ops tally-bench sends.
pub const REPLY_OP_BYTES_TYPICAL: usize = REPLY_OP_HEADER_BYTES + 1 + 8 + 10;

/// Most ops in flight per connection (`--pipeline` × `--batch`). The connection writes its whole
/// window before it reads, so the server must be able to hold the replies to all of it: at 24 bytes
/// per reply op, 131 072 ops owe 3 MiB, under the server's `CONNECTION_BUFFER_BYTES_MAX` (4 MiB),
/// beyond which it would stop reading a client that is blocked writing.
pub const IN_FLIGHT_OPS_MAX: usize = 128 * 1024;

/// Most names (`--names`). A shard-aware run keeps each name's index in its shard's partition
/// (4 bytes per name), so a billion names cost 4 GB of client memory.
pub const NAMES_MAX: u64 = 1_000_000_000;

/// Most strict counters (`--strict-names`): they are created one by one before the run starts.
pub const STRICT_NAMES_MAX: u32 = 4096;

/// Initial value of the strict counters unless `--strict-initial` says otherwise: 2^40 ≈ 1.1e12
/// lasts more than a day of decrements at ten million per second, so a run never hits the floor.
pub const STRICT_INITIAL_DEFAULT: i64 = 1 << 40;

/// Largest latency the histograms hold, in µs (one minute); anything slower is recorded as this.
pub const LATENCY_US_MAX: u64 = 60_000_000;

/// Significant digits of the latency histograms: 3 keeps the error under 0.1% at every magnitude
/// for a few hundred KiB per histogram.
pub const LATENCY_SIGNIFICANT_DIGITS: u8 = 3;

/// How long a connection waits for a reply before the run fails: a server that answers nothing for
/// ten seconds is down, and an honest benchmark stops rather than report the time it waited.
pub const REPLY_TIMEOUT_MS: u64 = 10_000;

/// How long connecting may take. Loopback connects take microseconds.
pub const CONNECT_TIMEOUT_MS: u64 = 5_000;

/// Initial read buffer per connection. 256 KiB holds the replies to a full window of 16 frames of
/// 512 INCRs, so a pipelined read usually takes one system call.
pub const READ_BUFFER_BYTES: usize = 256 * 1024;

/// How many draws a shard-aware connection makes from a skewed distribution before it accepts a
/// name another shard owns (and lets the server forward it). With S shards a draw is kept with
/// probability about 1/S, so 64 draws all miss with probability (1 - 1/S)^64: 5e-20 at two shards,
/// 2% at sixteen. The cap bounds the cost of a shard that owns none of the likely names.
pub const SHARD_DRAWS_MAX: u32 = 64;

/// Seed of the workload's random streams unless `--seed` says otherwise, so two runs with the same
/// flags send the same ops.
pub const SEED_DEFAULT: u64 = 0x7a11_7be7c4;

/// How often the progress bar is redrawn.
pub const PROGRESS_TICK_MS: u64 = 200;

const _: () = assert!(IN_FLIGHT_OPS_MAX * REPLY_OP_BYTES_TYPICAL + PIPELINE_MAX * 16 < CONNECTION_BUFFER_BYTES_MAX);
const _: () = assert!(IN_FLIGHT_OPS_MAX >= BATCH_MAX);
const _: () = assert!(NAMES_MAX <= u32::MAX as u64);
const _: () = assert!(STRICT_INITIAL_DEFAULT > 0);
