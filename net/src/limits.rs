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

/// The longest the acknowledged mark waits behind the durable lsn while writes keep coming. A mark
/// write is one more fdatasync, and a disk flushes one at a time: written after every commit it
/// competed with the commits' own fdatasyncs (measured here: durable increments/s about halved,
/// and a one-at-a-time client's p50 rose from 280 to 360 us). So the mark is written at most
/// every this many ms while the log is busy: at most 20 extra fdatasyncs a second per shard, and
/// the records acknowledged in the last 50 ms of a load are the ones the mark may not cover yet
/// (docs/wal.md, "What the mark does not cover").
pub const ACK_MARK_INTERVAL_MS_MAX: u64 = 50;

/// When the log has been idle this long (nothing appended beyond the durable lsn), the mark is
/// written without waiting for `ACK_MARK_INTERVAL_MS_MAX`: a node whose writes stopped has them
/// all under the mark within this plus one fdatasync. Far above the gap between a one-at-a-time
/// client's writes (a few hundred us), so such a client's commits do not queue behind mark writes.
pub const ACK_MARK_IDLE_MS: u64 = 5;

/// How often a shard checks whether a snapshot is due.
pub const SNAPSHOT_POLL_MS: u64 = 250;

/// How long a snapshot waits for other shards' logs it depends on before it is skipped.
pub const SNAPSHOT_DEPS_WAIT_MS: u64 = 5_000;

/// How often a shard hands its closed window seconds to its window writer. The engine closes a
/// second at the tick after it ends; once a second keeps the writer's buffer to about a second
/// behind without waking the shard more often than the tick does.
pub const WINDOW_DRAIN_MS: u64 = 1_000;

/// Drains a shard may have queued for its window writer (one per `WINDOW_DRAIN_MS`). A writer that
/// falls this far behind (16 minutes) stops the drain: the closed seconds stay in the engine, whose
/// own cap (`WINDOW_UNDURABLE_SECS_MAX`) then bounds memory and counts what it drops.
pub const WINDOW_DRAINS_QUEUED_MAX: usize = 960;

/// How long a window writer waits for a drain before it looks at compaction anyway.
pub const WINDOW_WRITER_POLL_MS: u64 = 1_000;

/// Extra time, past the longest fine tier, before minute files of an hour are merged into an hour
/// file: by then every second in them has aged out of the fine tier, so the hour file holds minutes
/// only and seconds are never written to disk twice.
pub const WINDOW_COMPACT_SLACK_MS: u64 = 60_000;

/// EVENTS scans a shard keeps between pages for its connections. Each holds at most one log
/// segment per shard it reads (64 MiB by default, read in growing chunks, so usually far less);
/// the least recently used is dropped beyond this, and its next page rebuilds it from the cursor.
pub const EVENTS_SCANS_MAX: usize = 4;

/// How long an EVENTS scan is kept without a page asked for.
pub const EVENTS_SCAN_IDLE_MS: u64 = 60_000;

/// The first read of a log segment by an EVENTS scan; each further read doubles what was read.
pub const EVENTS_READ_CHUNK_BYTES: u64 = 1 << 20;
