//! The per-shard counter state machine.
//!
//! A `Shard` owns the counters whose names hash to it (`tally_proto::shard_of`) and applies ops to
//! them: `apply(op, ctx) -> Applied`. It is pure: no sockets, no files, no glommio, no clocks (time
//! comes in `Ctx::now_ms`), and it never blocks. The one thing shards share is the
//! `SplitRegistry`: a hot analytic counter gets a `SplitCell` of per-shard atomic slots that every
//! shard adds its increments into, so a hot counter is written by all cores without crossing them.
//!
//! Invariants:
//! - an op either changes state and succeeds, or fails and changes nothing;
//! - a counter's value never wraps (i64, checked);
//! - strict counters are never split, and their declared bounds always hold;
//! - `lsn` increases by one for every state change and never otherwise.
//!
//! Durability: every state change is handed, with its lsn, to the caller's `LogSink` as a
//! `LogRecord` before `apply`/`tick` returns; `Shard::replay` rebuilds a shard from those records,
//! `Shard::snapshot`/`from_snapshot` save and restore a whole shard, and `reconcile` settles split
//! counters across the recovered shards of a node (DURABILITY-NOTES.md).
//!
//! In steady state `apply` allocates nothing for successful ops on existing names (failures carry a
//! formatted message). Memory is bounded: names live in a chunked arena (4 GiB per shard), the
//! idempotency set holds at most `DEDUP_ENTRIES_MAX` keys, the audit ring `AUDIT_RECORDS_MAX`
//! records, a shard owns at most `SPLIT_OWNED_MAX` split counters, and the time-window store holds
//! `FINE_MEMORY_SECS` seconds of buckets whatever the number of names (see `limits`, `window`).
//! DESIGN-NOTES.md next to this crate explains the layout and the numbers.

mod audit;
pub mod config;
pub mod dedup;
pub mod hot;
pub mod limits;
pub mod log;
pub mod shard;
pub mod split;
pub mod table;
pub mod window;

pub use config::{ConfigError, HotConfig, NamespaceRule, ShardConfig, WindowConfig, WindowRule};
pub use log::{Keyed, LogRecord, LogSink, NullLog, ReplayError};
pub use shard::{
    reconcile, Applied, Ctx, Failure, Outcome, Reconciled, ResetRecord, Shard, ShardStats, SnapshotDeps, SnapshotError,
    SNAPSHOT_VERSION,
};
pub use split::{SplitCell, SplitRegistry};
