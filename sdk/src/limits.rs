//! Client-side limits and defaults. The wire limits themselves live in `tally_proto::limits`; the
//! values here size the SDK's own buffers, windows and timers, and each says why it has that value.

use tally_proto::limits::{
    CONNECTION_BUFFER_BYTES_MAX, ERROR_MESSAGE_BYTES_MAX, IN_FLIGHT_FRAMES_MAX, OPS_PER_FRAME_MAX,
    REPLY_OP_HEADER_BYTES,
};

/// Frames a pipeline keeps in flight per connection unless told otherwise. 32 frames hide a
/// loopback round trip plus a group commit several times over; deeper pipelines add latency, not
/// throughput.
pub const PIPELINE_DEPTH_DEFAULT: usize = 32;

/// Most frames a pipeline may keep in flight per connection: the server stops reading a connection
/// beyond `IN_FLIGHT_FRAMES_MAX`, so a deeper window would only queue in socket buffers.
pub const PIPELINE_DEPTH_MAX: usize = IN_FLIGHT_FRAMES_MAX;

/// Ops per frame unless told otherwise: one frame per op, the shape every server path handles.
pub const PIPELINE_BATCH_DEFAULT: usize = 1;

/// Most ops per frame, the wire limit.
pub const PIPELINE_BATCH_MAX: usize = OPS_PER_FRAME_MAX as usize;

/// Most reply bytes the blocking client lets the server owe it on one connection before it stops
/// writing and reads. The server stops reading a connection that owes `CONNECTION_BUFFER_BYTES_MAX`
/// of replies; if the client were blocked writing at that moment, neither side would move. The
/// estimate per op is an upper bound (an error reply with a maximal message, ~0.5 KiB), so half of
/// the server's cap can never reach it. A lane with nothing in flight always sends one whole frame,
/// which `FRAME_REPLY_BYTES_MAX` shows the server can always take.
pub const REPLY_BYTES_IN_FLIGHT_MAX: usize = CONNECTION_BUFFER_BYTES_MAX / 2;

/// Upper bound of the replies to one full frame of non-STATS ops: `OPS_PER_FRAME_MAX` error replies
/// with maximal messages.
pub const FRAME_REPLY_BYTES_MAX: usize =
    OPS_PER_FRAME_MAX as usize * (REPLY_OP_HEADER_BYTES + ERROR_REPLY_FIXED_BYTES + ERROR_MESSAGE_BYTES_MAX);

/// Bytes of an error reply payload besides the message: flags u8, current i64.
pub const ERROR_REPLY_FIXED_BYTES: usize = 9;

/// Largest error frame body: code u16, message length u16, message.
pub const ERROR_FRAME_BODY_BYTES_MAX: usize = 4 + ERROR_MESSAGE_BYTES_MAX;

/// How long a counter stays in the split set after the last ack that carried `REPLY_SPLIT`. The
/// server re-evaluates hot counters every few milliseconds; a second without a SPLIT flag means
/// the counter has most likely folded back, and sending its increments to the owner is always
/// correct anyway.
pub const SPLIT_FORGET_AFTER_MS: u64 = 1_000;

/// Most names the split set tracks. Hot counters are few by definition (a handful per node); the
/// cap keeps a misbehaving server from growing client memory without bound.
pub const SPLIT_NAMES_MAX: usize = 4_096;

/// How long the blocking client sends a shard's ops through the main connection after the shard's
/// own port refused a connection. Short enough that a restarted shard is used again quickly, long
/// enough that a dead port costs one failed connect per second, not one per op.
pub const SHARD_DOWN_MS: u64 = 1_000;

/// Connect timeout unless told otherwise. Loopback and LAN connects take microseconds; five
/// seconds only ever fires for a host that is down.
pub const CONNECT_TIMEOUT_DEFAULT_MS: u64 = 5_000;

/// Read (and write) timeout unless told otherwise. A durable ack takes about one fsync (well under
/// a millisecond here); five seconds means the server or the network is in trouble.
pub const READ_TIMEOUT_DEFAULT_MS: u64 = 5_000;

/// Longest wait between two retries: the backoff doubles per failure up to this.
pub const RETRY_BACKOFF_MAX_MS: u64 = 1_000;

/// Initial size of a connection's read buffer. 64 KiB holds the replies to several full frames of
/// increments, so a pipelined read usually takes one system call.
pub const READ_BUFFER_BYTES: usize = 64 * 1024;

/// Most bytes the async client's writer task gathers into one write: enough to carry many small
/// frames per system call, small enough not to delay the first of them.
pub const WRITE_COALESCE_BYTES_MAX: usize = 256 * 1024;

/// Longest client name sent in HELLO: the wire field has a u8 length.
pub const CLIENT_NAME_BYTES_MAX: usize = u8::MAX as usize;

const _: () = assert!(PIPELINE_DEPTH_DEFAULT <= PIPELINE_DEPTH_MAX);
const _: () = assert!(PIPELINE_BATCH_DEFAULT <= PIPELINE_BATCH_MAX);
const _: () = assert!(REPLY_BYTES_IN_FLIGHT_MAX < CONNECTION_BUFFER_BYTES_MAX);
const _: () = assert!(FRAME_REPLY_BYTES_MAX < CONNECTION_BUFFER_BYTES_MAX);
