//! Node-side limits that are not part of the wire protocol (those live in `tally_proto::limits`).

/// Messages queued per (source shard, destination shard) pair in each cross-shard mesh. A full
/// queue makes the sending connection wait, which stops it reading its socket: backpressure
/// reaches the client instead of memory growing. 1024 batches of up to 4096 ops is far more than
/// one core can apply in the time another core takes to notice.
pub const CROSS_SHARD_QUEUE_DEPTH: usize = 1024;

/// Initial read buffer per connection. Grows up to one maximal frame for a client that sends one.
pub const READ_BUFFER_BYTES: usize = 64 << 10;

/// Replies are written once this many bytes are buffered, even if more are ready, so one socket
/// write stays bounded.
pub const WRITE_FLUSH_BYTES: usize = 256 << 10;

/// How often a shard looks for a shutdown request. Bounds how long SIGTERM takes to be noticed.
pub const SHUTDOWN_POLL_MS: u64 = 10;

/// The longest a graceful shutdown waits for in-flight requests before the process exits anyway.
pub const SHUTDOWN_DRAIN_MS_MAX: u64 = 10_000;

/// Locked memory an executor needs besides its io_memory pool (rings and bookkeeping).
pub const EXECUTOR_LOCKED_BYTES: u64 = 512 << 10;

/// The smallest io_memory pool we run with; glommio rounds anything smaller up to 64 KiB.
pub const IO_MEMORY_BYTES_MIN: usize = 64 << 10;

/// glommio's default io_memory pool; used when the memlock limit allows.
pub const IO_MEMORY_BYTES_DEFAULT: usize = 10 << 20;

/// How often the maintenance task preallocates the next segment and applies retention.
/// Preallocating ahead is what turns a full disk into `disk_full` refusals instead of a failed
/// write of acknowledged-to-be data.
pub const WAL_MAINTAIN_MS: u64 = 100;

/// How often a shard checks whether a snapshot is due.
pub const SNAPSHOT_POLL_MS: u64 = 250;

/// How long a snapshot waits for other shards' logs it depends on before it is skipped.
pub const SNAPSHOT_DEPS_WAIT_MS: u64 = 5_000;
