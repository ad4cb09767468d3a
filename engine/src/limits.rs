//! The engine's limits. Each one bounds a resource of one shard or a value range, and says why it
//! has the value it has. Wire limits (name length, shard count) live in `tally_proto::limits`.

use tally_proto::limits::{NAME_BYTES_MAX, SHARDS_MAX};

/// Bytes per chunk of the name arena. Names never span chunks, so at most `NAME_BYTES_MAX - 1`
/// bytes per chunk are wasted (0.02% of 1 MiB); 1 MiB chunks are large enough that the chunk list
/// stays tiny (4096 entries for a full arena) and small enough that a shard with a handful of names
/// does not pin much memory.
pub const ARENA_CHUNK_BYTES: usize = 1 << 20;

/// Most name bytes one shard may store. Table entries address names with a u32 offset, so 4 GiB
/// is the ceiling; at ~20-byte names that is ~200M names per shard, far past the 10M-names-per-node
/// target. Past it, creating a name fails with `ErrorCode::TableFull`.
pub const ARENA_BYTES_MAX: u64 = 1 << 32;

/// Most RESET records one shard keeps in memory for `Shard::audit`. Resets are rare admin actions;
/// 1024 records of at most ~1.3 KiB each bound the ring at ~1.3 MiB per shard. The durable audit
/// trail is the log, not this ring.
pub const AUDIT_RECORDS_MAX: usize = 1024;

/// Default idempotency window: a retry within 5 minutes of the first attempt is recognised. Client
/// retries with backoff finish within seconds; 5 minutes also covers a client that reconnects after
/// a node restart.
pub const DEDUP_WINDOW_MS: u64 = 5 * 60 * 1000;

/// Most idempotency keys one shard remembers. Each costs ~56 bytes in the time-ordered ring plus
/// ~9 bytes of index, so a full set is ~70 MiB per shard. At more than
/// `DEDUP_ENTRIES_MAX / DEDUP_WINDOW_MS` keyed writes per millisecond (~3.5K/s per shard) the
/// oldest keys are evicted early: the effective window shrinks to `DEDUP_ENTRIES_MAX / rate`
/// (1 s at 1M keyed writes/s per shard), and `ShardStats::dedup_evicted_early` counts it.
pub const DEDUP_ENTRIES_MAX: usize = 1 << 20;

/// Largest absolute amount one shard's slot of a split counter may hold. The owner's exact sum adds
/// up to `SHARDS_MAX` slots to its own part, so `SHARDS_MAX * SPLIT_SLOT_ABS_MAX +
/// SPLIT_VALUE_ABS_MAX` must fit an i64: just under 2^54 per slot. A slot increment that would
/// cross it is forwarded to the owner instead, so it only costs a cross-shard hop, never an error.
pub const SPLIT_SLOT_ABS_MAX: i64 = (1 << 62) / SHARDS_MAX as i64 - 1;

/// Largest absolute value of the owner's own part of a split counter. An increment at the owner
/// that would cross it fails with `Overflow`: split counters have a range of about ±2^62 instead of
/// the full i64 range, the price of never overflowing when the slots are folded back.
pub const SPLIT_VALUE_ABS_MAX: i64 = 1 << 62;

/// A counter whose absolute value is above this is never split, so a freshly split counter has at
/// least 2^61 of headroom before the owner's part reaches `SPLIT_VALUE_ABS_MAX`.
pub const SPLIT_ELIGIBLE_ABS_MAX: u64 = 1 << 61;

/// Most split counters one shard owns at once. A split cell costs one 64-byte line per shard
/// (16 KiB at `SHARDS_MAX` shards) and every owner read of it sums all slots; hot counters are few
/// by nature (a workload's top handful), so 256 is generous and bounds the cells at 4 MiB per shard.
pub const SPLIT_OWNED_MAX: usize = 256;

/// Entries of the heavy-hitters sketch (space-saving) that finds hot counters. Any counter with more
/// than 1/32 of a shard's sampled increments in a tick is guaranteed to be tracked; a counter hot
/// enough to need splitting is a large share of its shard's load, so 32 is plenty, and the sketch
/// is a 1 KiB array scanned linearly on each sample.
pub const HOT_SKETCH_SLOTS: usize = 32;

/// Default sampling period of the hot sketch: one increment in 16 (on average) updates it, so the
/// per-increment cost is a counter decrement. At the default 50K/s split rate and 100 ms ticks a
/// hot counter yields ~312 samples per tick, a relative error of ~6%.
pub const HOT_SAMPLE_EVERY_DEFAULT: u32 = 16;

const _: () = assert!(ARENA_CHUNK_BYTES >= NAME_BYTES_MAX);
const _: () = assert!(ARENA_BYTES_MAX / ARENA_CHUNK_BYTES as u64 * ARENA_CHUNK_BYTES as u64 == ARENA_BYTES_MAX);
const _: () = assert!(ARENA_BYTES_MAX <= u32::MAX as u64 + 1);
const _: () = assert!(DEDUP_ENTRIES_MAX <= (u32::MAX / 2) as usize);
const _: () =
    assert!((SHARDS_MAX as i128) * (SPLIT_SLOT_ABS_MAX as i128) + (SPLIT_VALUE_ABS_MAX as i128) <= i64::MAX as i128);
const _: () = assert!(SPLIT_ELIGIBLE_ABS_MAX < SPLIT_VALUE_ABS_MAX as u64);
const _: () = assert!(HOT_SKETCH_SLOTS > 0);

/// Most split counters one `tick` merges. With at most `HOT_SKETCH_SLOTS` hot splits and
/// `TICK_FORCED_SPLITS_MAX` forced ones, one tick logs at most `TICK_RECORDS_MAX` records, so the
/// node can check the log has room for a tick before running it. Merges beyond this wait a tick.
pub const TICK_MERGES_MAX: usize = 32;

/// Most forced splits one `tick` makes (the rest follow on later ticks).
pub const TICK_FORCED_SPLITS_MAX: usize = 32;

/// Most log records one `tick` produces.
pub const TICK_RECORDS_MAX: usize = TICK_MERGES_MAX + HOT_SKETCH_SLOTS + TICK_FORCED_SPLITS_MAX;

/// Seconds of per-second window buckets a shard keeps in memory (`window::WindowStore`), so
/// WINDOW queries up to 5 minutes (the common dashboard spans) never touch disk. Sized by memory:
/// at the 10M-names zipf load (100K increments/s, ~50K names touched per second) a second costs
/// ~25K (name, sum) pairs per shard at ~4 bytes each in the compact slice encoding, so 300 s is
/// ~30 MB per shard (`examples/windows_footprint.rs` measures it). Older seconds are on disk.
pub const FINE_MEMORY_SECS: u64 = 300;

/// Seconds a window slice may stay in memory while the runtime has not confirmed it durable on
/// disk (`Shard::windows_set_durable`). Past it the oldest slices are dropped (counted in
/// `ShardStats::windows_lost_secs`): memory stays bounded when the window writer stalls, at the
/// price of a hole in the history. 15 minutes is three times the memory span: room for a slow
/// disk, not for a writer that stopped.
pub const WINDOW_UNDURABLE_SECS_MAX: u64 = 3 * FINE_MEMORY_SECS;

/// Closed seconds whose increments wait, unsorted, for a tick to compact them. Compacting a
/// second sorts its increments (~1-2 ms for 50K), which `tick` does off the op path; if ticks stop,
/// the op that would exceed this compacts the oldest inline, so memory stays bounded.
pub const WINDOW_PENDING_SECONDS_MAX: usize = 4;

/// A compact slice keeps a sparse index entry every this many (name, sum) pairs: a lookup is a
/// binary search plus at most this many varint decodes (~100 ns), and the index costs 0.5 byte
/// per pair.
pub const WINDOW_SLICE_INDEX_EVERY: usize = 32;

/// Slots of the direct-mapped cache that folds repeated increments of one name within a second
/// into one pair: a hot counter at millions of increments per second then costs one pair per
/// second, not one per increment. 64 slots × 4 bytes stay in L1.
pub const WINDOW_RECENT_SLOTS: usize = 64;

/// Target bytes of one block of a window file. One name's buckets are found by a binary search of
/// the block index plus one block read and decode; 4 KiB is one disk page and keeps the index at
/// ~0.5% of the file (one entry of ~35 bytes per block).
pub const WINDOW_FILE_BLOCK_BYTES: usize = 4096;

/// Most points one SERIES answers: 30 days of minutes is 43 200, so 2^16 leaves room for a
/// 45-day minute series while bounding a reply (and the `Partial` buffer) at 1 MiB.
pub const WINDOW_SERIES_POINTS_MAX: u64 = 1 << 16;

/// Longest retention a namespace may configure: 400 days covers "same day last year" dashboards.
pub const WINDOW_RETENTION_MS_MAX: u64 = 400 * 86_400_000;

/// Coarsest resolution a namespace may configure (a day, the coarsest query step).
pub const WINDOW_RESOLUTION_MS_MAX: u64 = 86_400_000;

const _: () = assert!(
    FINE_MEMORY_SECS >= 120,
    "the open minute and the one before fit in memory"
);
const _: () = assert!(WINDOW_UNDURABLE_SECS_MAX >= FINE_MEMORY_SECS);
const _: () = assert!(WINDOW_PENDING_SECONDS_MAX >= 1);
const _: () = assert!(WINDOW_SLICE_INDEX_EVERY >= 1);
const _: () = assert!(WINDOW_RECENT_SLOTS.is_power_of_two());
