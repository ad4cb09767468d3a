//! Wire limits. Every value here is enforced by the decoder or the server and documented in
//! docs/protocol.md; changing one is a protocol change.

/// Largest request frame (bytes after the 4-byte length prefix: the 12 remaining header bytes and
/// the body). 1 MiB holds a full batch of `OPS_PER_FRAME_MAX` keyed increments on names of up to
/// 225 bytes (real names are ~20), while a hostile length prefix can make a connection buffer at
/// most this much. A batch of longer names must be split on bytes as well as on op count.
pub const FRAME_BYTES_MAX: u32 = 1 << 20;

/// Most ops in one frame. Large enough that batching amortises the per-frame cost to nothing
/// (a 4096-op frame of 20-byte names is ~150 KiB), small enough that one frame's replies fit in
/// one socket write of bounded size.
pub const OPS_PER_FRAME_MAX: u16 = 4096;

/// Longest counter name in bytes. Names are stored inline in the shard's name arena with a one-byte
/// length, so 255 is the natural ceiling; real names (`views:page:123456`) are ~20 bytes.
pub const NAME_BYTES_MAX: usize = 255;

/// Longest RESET reason in bytes. Audit reasons are a sentence, not a document.
pub const REASON_BYTES_MAX: usize = 1024;

/// Longest op payload: a u16 length on the wire. The largest real op (RESET with a maximal name and
/// reason) is ~1.3 KiB, so this is never the binding limit.
pub const OP_PAYLOAD_BYTES_MAX: usize = u16::MAX as usize;

/// Longest error message the server sends. Messages are one line for a human; the code is what
/// programs branch on.
pub const ERROR_MESSAGE_BYTES_MAX: usize = 512;

/// Most frames a connection may have in flight (sent, not yet answered). Beyond this the server
/// stops reading the socket until replies drain, so a pipelining client costs at most
/// `IN_FLIGHT_FRAMES_MAX` pending replies of memory. 1024 frames of depth is far past the point
/// where deeper pipelines stop adding throughput.
pub const IN_FLIGHT_FRAMES_MAX: usize = 1024;

/// Most client connections per node. Each costs two small buffers and a task; 10 000 keeps the
/// worst case well under 1 GiB even with full buffers at `CONNECTION_BUFFER_BYTES_MAX`.
pub const CONNECTIONS_MAX: usize = 10_000;

/// Most bytes of unsent replies a connection may hold before the server stops reading from it.
pub const CONNECTION_BUFFER_BYTES_MAX: usize = 4 << 20;

/// Most shards a node may run. Shard ids travel as u16; 256 is more cores than any target machine.
pub const SHARDS_MAX: u16 = 256;

/// Frame header: length u32, version u8, kind u8, op count u16, request id u64.
pub const FRAME_HEADER_BYTES: usize = 16;

/// Request op header: opcode u8, payload length u16.
pub const REQUEST_OP_HEADER_BYTES: usize = 3;

/// Reply op header: opcode u8, status u16, payload length u16.
pub const REPLY_OP_HEADER_BYTES: usize = 5;

const _: () = assert!(FRAME_BYTES_MAX as usize >= OPS_PER_FRAME_MAX as usize * 64);
const _: () = assert!(NAME_BYTES_MAX <= u8::MAX as usize);
const _: () = assert!(REASON_BYTES_MAX + NAME_BYTES_MAX + 64 <= OP_PAYLOAD_BYTES_MAX);

/// Most points in one SERIES reply. Points are i64s in a reply payload of at most
/// `OP_PAYLOAD_BYTES_MAX` bytes; 7 200 (57.6 KB) is a round span at every step (2 hours of
/// seconds, 5 days of minutes, 300 days of hours), and a longer series is asked for in several
/// requests (the SDK does this for its callers).
pub const SERIES_POINTS_MAX: u64 = 7_200;

/// Most reset records in one AUDIT reply. A record with a maximal name, reason and client name is
/// 1 572 bytes, so 38 of them and the largest cursor fill a reply payload; the reply's cursor asks
/// for the rest.
pub const AUDIT_RECORDS_PER_REPLY_MAX: u16 = 38;

/// Most increments in one EVENTS page. An event is at most 43 bytes (time, shard, lsn, delta,
/// kind, key): 1 024 of them (44 KB) plus the largest cursor fit a reply payload, and a page is
/// large enough that the round trip per page costs little next to scanning the log.
pub const EVENTS_PER_PAGE_MAX: u16 = 1_024;

/// Most history ops (WINDOW, SERIES, AUDIT, EVENTS) the server answers in one frame; the ones
/// beyond get `TooManyOps`. Their replies can be 64 KiB each, so this bounds one response frame's
/// history part at 1 MiB, as `FRAME_BYTES_MAX` bounds a request.
pub const HISTORY_OPS_PER_FRAME_MAX: usize = 16;

/// Longest continuation cursor of AUDIT and EVENTS, in bytes. An EVENTS cursor holds a scan id
/// and (shard, next lsn) per shard: 9 + 10 × `SHARDS_MAX` = 2 569 bytes at most.
pub const CURSOR_BYTES_MAX: usize = 4_096;

/// Largest encoded AUDIT record (see `AUDIT_RECORDS_PER_REPLY_MAX`).
pub const AUDIT_RECORD_BYTES_MAX: usize = 8 + 2 + 8 + 1 + NAME_BYTES_MAX + 8 + 8 + 2 + REASON_BYTES_MAX + 1 + 255;

/// Largest encoded EVENTS event: time u64, shard u16, lsn u64, delta i64, kind u8, key u128.
pub const EVENT_BYTES_MAX: usize = 8 + 2 + 8 + 8 + 1 + 16;

const _: () = assert!(8 + 8 + 2 + 8 * SERIES_POINTS_MAX as usize <= OP_PAYLOAD_BYTES_MAX);
const _: () = assert!(
    2 + AUDIT_RECORD_BYTES_MAX * AUDIT_RECORDS_PER_REPLY_MAX as usize + 2 + CURSOR_BYTES_MAX <= OP_PAYLOAD_BYTES_MAX
);
const _: () =
    assert!(2 + EVENT_BYTES_MAX * EVENTS_PER_PAGE_MAX as usize + 2 + CURSOR_BYTES_MAX <= OP_PAYLOAD_BYTES_MAX);
const _: () = assert!(9 + 10 * SHARDS_MAX as usize <= CURSOR_BYTES_MAX);
