//! Time windows: per-name sums of increments by time, for WINDOW ("the last W seconds or
//! minutes") and SERIES ("from T1 to T2 per step") queries. Pure like the rest of the engine:
//! time comes in as `now_ms` (the op's `Ctx::now_ms`, a record's `time_ms` in replay, the tick's
//! time), and files are bytes the runtime reads and writes.
//!
//! What lives where (docs/ARCHITECTURE.md, "Time windows", says why):
//! - memory (`store::WindowStore`, one per shard): the per-second buckets of the last
//!   `FINE_MEMORY_SECS` seconds, as one compact slice per second (`slice`), whatever the number
//!   of names;
//! - disk (`file`, `merge`): every closed second is handed out once as a `SealedSlice`; the runtime
//!   writes them as window files and compacts those into coarser, longer files, applying each
//!   namespace's tiers (`tier`) on the way;
//! - queries (`query`): checked against the name's tiers, answered from memory, and from files for
//!   the part older than memory; split counters sum the parts of every shard.
//!
//! Invariants: memory holds every increment applied or replayed by its shard from
//! `memory_from_ms` on; a second is handed out at most once (and again after a restart only if the
//! runtime had not confirmed it durable); the store's time never goes backwards.

/// The value a bucket holds when its sum left the i64 range: one name's increments within one
/// bucket swinging by more than 2^63 (a RESET between two huge increments can do it). A bucket
/// cannot hold the true sum, so it holds this marker, which every later step keeps: a fold of
/// buckets into a coarser one that meets it gives it again (`merge`), and a query point that adds
/// it answers `WindowError::Overflow` (`Partial`) instead of a wrong number. i64::MIN because a
/// genuine bucket of exactly i64::MIN is the one true sum it hides (then the query says
/// `Overflow` although the sum fits): the rarest value a bucket can take, and a refusal, never a
/// wrong answer.
pub const BUCKET_OUT_OF_RANGE: i64 = i64::MIN;

pub mod file;
pub mod merge;
pub mod query;
pub mod slice;
pub mod store;
pub mod tier;
mod varint;

pub use file::{FileError, FileIndex, FileWriter, Footer, WindowFile};
pub use merge::{encode_slices, keep_all, merge_files, tier_rollup, Rollup};
pub use query::{plan, DiskRange, Partial, Query, Range, Step, Unit, WindowError, WindowPart};
pub use slice::{NameRef, SealedSlice};
pub use store::{WindowStats, WindowStore};
pub use tier::{Tier, Tiers};
