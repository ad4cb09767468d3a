//! `Shard`: one core's counters and the ops on them.
//!
//! `apply` routes first: an op on a name another shard owns returns `Applied::Forward(owner)`, except
//! an unkeyed INCR of a split counter, which lands in this shard's slot of the counter's
//! `SplitCell`. Ops on owned names are applied here, synchronously: each either succeeds and changes
//! state (taking the next lsn) or fails and changes nothing. `tick` runs the periodic work: dedup
//! expiry, publishing split aggregates, splitting hot counters and merging cooled ones.
//!
//! Every state change takes the next lsn and is handed to the caller's `LogSink` as a `LogRecord`
//! before the call returns; splits and merges included. Recovery (`replay.rs`) rebuilds a shard
//! from those records, and `snapshot.rs` writes and restores its whole state.

use std::sync::Arc;

use hashbrown::{HashMap, HashSet};
use tally_proto::limits::NAME_BYTES_MAX;
use tally_proto::reply::{REPLY_APPROX, REPLY_DUPLICATE, REPLY_EXISTS, REPLY_SPLIT, REPLY_STRICT};
use tally_proto::{name_hash, shard_of, CounterKind, ErrorCode, Reply, Request, Token};

pub use crate::audit::ResetRecord;
pub use replay::{reconcile, Reconciled};
pub use snapshot::{SnapshotDeps, SnapshotError, SNAPSHOT_VERSION};

mod replay;
mod snapshot;
mod windows;

use crate::audit::AuditRing;
use crate::config::ShardConfig;
use crate::dedup::{Dedup, DedupCheck};
use crate::hot::{rate_per_sec, sampled_rate_per_sec, HotSketch, Sampler, SketchItem};
use crate::limits::{
    ARENA_BYTES_MAX, AUDIT_RECORDS_MAX, DEDUP_ENTRIES_MAX, HOT_SKETCH_SLOTS, SPLIT_ELIGIBLE_ABS_MAX, SPLIT_OWNED_MAX,
    SPLIT_VALUE_ABS_MAX, TICK_FORCED_SPLITS_MAX, TICK_MERGES_MAX,
};
use crate::log::{Keyed, LogRecord, LogSink, LsnCheck};
use crate::split::{OwnedSplit, SlotAdd, SplitCache, SplitCell, SplitRegistry};
use crate::table::{table_hash, CounterId, Entry, Table, FLAG_BOUNDED, FLAG_FORCED, FLAG_SPLIT, FLAG_STRICT};
use crate::window::{NameRef, WindowStats, WindowStore};

/// What the op needs from its surroundings: the time and who sent it.
#[derive(Debug, Clone, Copy)]
pub struct Ctx<'a> {
    /// Milliseconds since the Unix epoch (server time at apply; used for audit records, dedup
    /// expiry and time windows). The node should never let it go backwards between ops and ticks:
    /// replay reproduces time windows exactly only then (`window` module doc).
    pub now_ms: u64,
    /// The client's self-chosen name from HELLO (may be empty).
    pub client: &'a [u8],
}

/// An op failure: the wire code, the counter's value where the code carries one, a message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Failure {
    pub code: ErrorCode,
    pub current: Option<i64>,
    pub message: String,
}

impl Failure {
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Failure {
        Failure {
            code,
            current: None,
            message: message.into(),
        }
    }

    /// A failure that carries the counter's value (CAS mismatch, bound violation).
    pub fn with_current(code: ErrorCode, current: i64, message: impl Into<String>) -> Failure {
        Failure {
            code,
            current: Some(current),
            message: message.into(),
        }
    }
}

pub type Outcome = Result<Reply, Failure>;

/// The result of `Shard::apply`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Applied {
    /// The op was applied (or refused) here.
    Done(Outcome),
    /// The op belongs to another shard: send it there. An owner never forwards an op on its own
    /// names, so an op forwarded once is always applied by the shard it reaches.
    Forward(u16),
}

/// Figures for STATS.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ShardStats {
    /// Counters this shard owns.
    pub counters: u64,
    pub strict_counters: u64,
    /// Split counters this shard owns.
    pub split_owned: u64,
    /// Ops that succeeded here (duplicates and split-slot increments included).
    pub ops_applied: u64,
    /// Ops refused here with an error.
    pub ops_failed: u64,
    pub lsn: u64,
    /// Bytes this shard holds from the allocator, by its own accounting (table, name arena, side
    /// maps, dedup set, audit ring, split cells it owns).
    pub memory_bytes: u64,
    /// Ops answered with `Applied::Forward`.
    pub ops_forwarded: u64,
    /// Keyed writes answered from the dedup set.
    pub ops_duplicate: u64,
    /// Increments of other shards' split counters applied into this shard's slots.
    pub split_slot_incrs: u64,
    /// Counters this shard split / merged since it started.
    pub splits: u64,
    pub merges: u64,
    /// Idempotency keys remembered now, and keys dropped before their window ended because the
    /// set was full (each one shrinks the effective window).
    pub dedup_entries: u64,
    pub dedup_evicted_early: u64,
    pub audit_records: u64,
    /// Bytes of counter names stored.
    pub name_bytes: u64,
    /// The time-window store (its bytes are included in `memory_bytes`).
    pub windows: WindowStats,
}

const BOUNDS_FULL: (i64, i64) = (i64::MIN, i64::MAX);

/// What CAS and bounded adds work on: the value, the declared bounds, and the counter (`None` for
/// an unknown name in a strict namespace, created when the op succeeds).
#[derive(Debug, Clone, Copy)]
struct StrictTarget {
    value: i64,
    bounds: (i64, i64),
    id: Option<CounterId>,
}

/// A name with both its hashes: routing (`name_hash`) and table (`hash`).
#[derive(Debug, Clone, Copy)]
struct Key<'a> {
    name: &'a [u8],
    name_hash: u64,
    hash: u64,
}

impl<'a> Key<'a> {
    fn new(name: &'a [u8]) -> Key<'a> {
        assert!(!name.is_empty(), "the node checks names before apply");
        assert!(name.len() <= NAME_BYTES_MAX, "the node checks names before apply");
        let name_hash = name_hash(name);
        Key {
            name,
            name_hash,
            hash: table_hash(name_hash),
        }
    }
}

/// A split epoch the owner recovered (from its log or a snapshot) and has not merged yet: the
/// counter's entry holds the owner's part, and the other shards' recovered slot parts of `epoch`
/// are folded in by `Shard::fold_recovered`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct RecoveredSplit {
    pub epoch: u64,
    pub table_hash: u64,
    pub name_len: u8,
}

/// The last merged split epoch of an owned counter (and its name's length, to name it in snapshots).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct MergedEpoch {
    pub epoch: u64,
    pub name_len: u8,
}

/// What a recovering non-owner holds of one split epoch of another shard's counter: the sum of its
/// logged slot increments (or its snapshot's slot amount plus the increments after it).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct RecoveredPart {
    pub name_len: u8,
    pub amount: i64,
}

/// Takes the next lsn and hands `record` to `log`. A free function so that a record can borrow a
/// name from the table while the shard's lsn changes.
#[inline]
fn commit(lsn: &mut u64, log: &mut dyn LogSink, record: &LogRecord<'_>) -> u64 {
    *lsn += 1;
    log.record(*lsn, record);
    *lsn
}

#[derive(Debug, Default)]
struct Counts {
    ops_applied: u64,
    ops_failed: u64,
    ops_forwarded: u64,
    ops_duplicate: u64,
    split_slot_incrs: u64,
    splits: u64,
    merges: u64,
}

pub struct Shard {
    config: ShardConfig,
    splits: Arc<SplitRegistry>,
    table: Table,
    /// Declared bounds of strict counters that have them (`FLAG_BOUNDED`), by arena offset.
    bounds: HashMap<u32, (i64, i64)>,
    /// Split counters this shard owns, by arena offset.
    owned_splits: HashMap<u32, OwnedSplit>,
    /// Other shards' split counters, as last copied from the registry.
    split_cache: SplitCache,
    dedup: Dedup,
    audit: AuditRing,
    sampler: Sampler,
    sketch: HotSketch,
    /// The forced-hot names this shard owns.
    forced_owned: HashSet<Vec<u8>>,
    tick_last_ms: Option<u64>,
    /// Reused by `tick` so that it does not allocate.
    merge_scratch: Vec<CounterId>,
    /// For every owned counter that was ever split, by arena offset: the epoch of its last merge.
    /// A new split's epoch (its lsn) must be above it, so epochs of one name only ever grow, even
    /// after recovery folded an epoch the owner's log had lost (see `fold_recovered`).
    merged_epochs: HashMap<u32, MergedEpoch>,
    /// Recovery only (empty while serving): split epochs replay or a snapshot left open, by offset.
    recovered_open: HashMap<u32, RecoveredSplit>,
    /// Recovery only (empty while serving): slot parts of other shards' split counters, by
    /// (foreign name id, epoch).
    recovered_parts: HashMap<(u32, u64), RecoveredPart>,
    /// Per-second buckets of recent increments (`window`).
    windows: WindowStore,
    lsn: u64,
    strict_counters: u64,
    counts: Counts,
}

impl Shard {
    /// A shard with an empty table. Panics if `config.check()` fails: the node validates the
    /// configuration before it builds shards.
    pub fn new(config: ShardConfig, splits: Arc<SplitRegistry>) -> Shard {
        Shard::with_limits(config, splits, ARENA_BYTES_MAX, DEDUP_ENTRIES_MAX)
    }

    /// `new` with smaller resource limits, so tests can reach them.
    pub(crate) fn with_limits(
        config: ShardConfig,
        splits: Arc<SplitRegistry>,
        arena_bytes_max: u64,
        dedup_entries_max: usize,
    ) -> Shard {
        if let Err(error) = config.check() {
            panic!("invalid shard configuration: {error}");
        }
        assert!(
            splits.shards() == 0 || splits.shards() == config.shards,
            "the split registry is sized for another shard count"
        );
        let forced_owned = config
            .hot
            .forced
            .iter()
            .filter(|name| shard_of(name, config.shards) == config.shard)
            .cloned()
            .collect();
        let split_cache = SplitCache::new(config.shard, config.shards);
        let windows = WindowStore::new(config.windows.enabled);
        Shard {
            sampler: Sampler::new(config.hot.sample_every, 0x9e37_79b9_7f4a_7c15 ^ u64::from(config.shard)),
            dedup: Dedup::new(config.dedup_window_ms, dedup_entries_max),
            config,
            splits,
            table: Table::with_arena_bytes_max(arena_bytes_max),
            bounds: HashMap::new(),
            owned_splits: HashMap::new(),
            split_cache,
            audit: AuditRing::new(AUDIT_RECORDS_MAX),
            sketch: HotSketch::new(),
            forced_owned,
            tick_last_ms: None,
            merge_scratch: Vec::new(),
            merged_epochs: HashMap::new(),
            recovered_open: HashMap::new(),
            recovered_parts: HashMap::new(),
            windows,
            lsn: 0,
            strict_counters: 0,
            counts: Counts::default(),
        }
    }

    pub fn id(&self) -> u16 {
        self.config.shard
    }

    pub fn config(&self) -> &ShardConfig {
        &self.config
    }

    /// Applies `op` if this shard owns its name (or it is an unkeyed increment of a split counter),
    /// otherwise says which shard owns it. Never blocks. Every lsn it assigns (at most three: the
    /// merge, the op and the re-split of a forced counter's RESET) is recorded in `log`, in order,
    /// before it returns; an op that fails or is forwarded records nothing.
    pub fn apply(&mut self, op: &Request<'_>, ctx: &Ctx<'_>, log: &mut dyn LogSink) -> Applied {
        self.assert_serving();
        let mut log = LsnCheck::new(log, self.lsn);
        let applied = self.apply_checked(op, ctx, &mut log);
        assert_eq!(log.lsn, self.lsn, "every lsn assigned is recorded");
        applied
    }

    fn apply_checked(&mut self, op: &Request<'_>, ctx: &Ctx<'_>, log: &mut dyn LogSink) -> Applied {
        if op.is_history() {
            // WINDOW, SERIES, AUDIT and EVENTS read windows, rings and logs through the node.
            self.counts.ops_failed += 1;
            return Applied::Done(Err(Failure::new(ErrorCode::Internal, "handled by the node")));
        }
        let Some(name) = op.name() else {
            self.counts.ops_failed += 1;
            return Applied::Done(Err(Failure::new(ErrorCode::Internal, "handled by the node")));
        };
        let key = Key::new(name);
        let owner = (key.name_hash % u64::from(self.config.shards)) as u16;
        if owner != self.config.shard {
            if let Request::Incr { delta, key: None, .. } = *op {
                if let Some(reply) = self.incr_into_slot(key, delta, ctx.now_ms, log) {
                    self.counts.ops_applied += 1;
                    self.counts.split_slot_incrs += 1;
                    return Applied::Done(Ok(reply));
                }
            }
            self.counts.ops_forwarded += 1;
            return Applied::Forward(owner);
        }
        let lsn_before = self.lsn;
        let outcome = match *op {
            Request::Incr { delta, key: idem, .. } => self.incr(key, delta, idem, ctx.now_ms, log),
            Request::Get { token, .. } => self.get(key, token),
            Request::Create {
                kind,
                initial,
                min,
                max,
                ..
            } => self.create(key, kind, initial, min, max, log),
            Request::Cas { expected, new, .. } => self.cas(key, expected, new, log),
            Request::AddBounded {
                delta,
                min,
                max,
                key: idem,
                ..
            } => self.add_bounded(key, delta, min, max, idem, ctx.now_ms, log),
            Request::Reset { value, reason, .. } => self.reset(key, value, reason, ctx, log),
            Request::Hello { .. } | Request::Stats | Request::Promote { .. } => {
                unreachable!("ops without a name were answered above")
            }
            Request::Window { .. } | Request::Series { .. } | Request::Audit { .. } | Request::Events { .. } => {
                unreachable!("history ops were answered above")
            }
        };
        match &outcome {
            Ok(_) => {
                self.counts.ops_applied += 1;
                assert!(self.lsn >= lsn_before);
            }
            Err(_) => {
                self.counts.ops_failed += 1;
                assert_eq!(self.lsn, lsn_before, "a failed op changes nothing");
            }
        }
        Applied::Done(outcome)
    }

    /// Periodic work, every `config.hot.tick_ms`: expires idempotency keys, publishes split
    /// aggregates, merges split counters that cooled down, splits counters that got hot, and splits
    /// forced names that became eligible. Allocates only when it splits. Each split and merge takes
    /// an lsn, recorded in `log` before it returns.
    pub fn tick(&mut self, now_ms: u64, log: &mut dyn LogSink) {
        self.assert_serving();
        let mut log = LsnCheck::new(log, self.lsn);
        self.tick_checked(now_ms, &mut log);
        assert_eq!(log.lsn, self.lsn, "every lsn assigned is recorded");
    }

    fn tick_checked(&mut self, now_ms: u64, log: &mut dyn LogSink) {
        self.dedup.expire(now_ms);
        self.windows.tick(now_ms);
        let elapsed_ms = match self.tick_last_ms {
            // No time has passed: keep measuring and decide over a longer span next time.
            Some(last) if now_ms <= last => return,
            Some(last) => Some(now_ms - last),
            None => None,
        };
        self.tick_last_ms = Some(now_ms);
        self.tick_split_counters(elapsed_ms, log);
        if let Some(elapsed_ms) = elapsed_ms {
            self.tick_hot_counters(elapsed_ms, log);
        }
        self.sketch.clear();
        self.tick_forced_counters(log);
    }

    /// A shard serves (applies ops, ticks) only once recovery has folded what it recovered.
    fn assert_serving(&self) {
        assert!(
            self.recovered_open.is_empty(),
            "recovered split epochs are still open: run the recovery reconcile before serving"
        );
        assert!(
            self.recovered_parts.is_empty(),
            "recovered slot parts are still held: run the recovery reconcile before serving"
        );
    }

    pub fn stats(&self) -> ShardStats {
        ShardStats {
            counters: self.table.len() as u64,
            strict_counters: self.strict_counters,
            split_owned: self.owned_splits.len() as u64,
            ops_applied: self.counts.ops_applied,
            ops_failed: self.counts.ops_failed,
            lsn: self.lsn,
            memory_bytes: self.memory_bytes(),
            ops_forwarded: self.counts.ops_forwarded,
            ops_duplicate: self.counts.ops_duplicate,
            split_slot_incrs: self.counts.split_slot_incrs,
            splits: self.counts.splits,
            merges: self.counts.merges,
            dedup_entries: self.dedup.len() as u64,
            dedup_evicted_early: self.dedup.evicted_early(),
            audit_records: self.audit.len() as u64,
            name_bytes: self.table.name_bytes(),
            windows: self.windows.stats(),
        }
    }

    /// Bytes this shard holds from the allocator, by its own accounting.
    pub fn memory_bytes(&self) -> u64 {
        let forced: usize = self.forced_owned.iter().map(|name| name.capacity()).sum();
        self.table.memory_bytes()
            + self.bounds.allocation_size() as u64
            + self.merged_epochs.allocation_size() as u64
            + self.recovered_open.allocation_size() as u64
            + self.recovered_parts.allocation_size() as u64
            + self.owned_splits.allocation_size() as u64
            + self.owned_splits.len() as u64 * SplitCell::memory_bytes(self.config.shards)
            + self.split_cache.memory_bytes()
            + self.dedup.memory_bytes()
            + self.audit.memory_bytes()
            + (self.forced_owned.allocation_size() + forced) as u64
            + (self.merge_scratch.capacity() * std::mem::size_of::<CounterId>()) as u64
            + self.windows.memory_bytes()
            + std::mem::size_of::<Shard>() as u64
    }

    /// Names of the split counters this shard owns.
    pub fn split_names(&self) -> Vec<Vec<u8>> {
        self.owned_splits
            .iter()
            .map(|(&name_at, owned)| {
                let id = CounterId {
                    hash: owned.table_hash,
                    name_at,
                    name_len: owned.name_len,
                };
                self.table.name_of(id).to_vec()
            })
            .collect()
    }

    /// The lsn of the last state change (0 before the first).
    pub fn lsn(&self) -> u64 {
        self.lsn
    }

    /// The most recent RESETs, oldest first (at most `AUDIT_RECORDS_MAX`).
    pub fn audit(&self) -> impl Iterator<Item = &ResetRecord> {
        self.audit.iter()
    }

    /// Splits `name` now if this shard owns it and it is eligible (an analytic counter within
    /// ±2^61, hot splitting enabled, fewer than `SPLIT_OWNED_MAX` split counters, and this lsn
    /// above the name's last merged epoch). For admin tools and tests; takes an lsn, recorded in
    /// `log`. Returns whether it split.
    pub fn split_now(&mut self, name: &[u8], log: &mut dyn LogSink) -> bool {
        self.assert_serving();
        let key = Key::new(name);
        let mut log = LsnCheck::new(log, self.lsn);
        let split = match self.owned_entry(key) {
            Some(entry) => self.split_counter(entry.id(key.hash), &mut log),
            None => false,
        };
        assert_eq!(log.lsn, self.lsn, "every lsn assigned is recorded");
        split
    }

    /// Merges `name` now if this shard owns it and it is split (forced names included; a forced
    /// name is split again at the next tick). Takes an lsn, recorded in `log`. Returns whether it
    /// merged.
    pub fn merge_now(&mut self, name: &[u8], log: &mut dyn LogSink) -> bool {
        self.assert_serving();
        let key = Key::new(name);
        let mut log = LsnCheck::new(log, self.lsn);
        let merged = match self.owned_entry(key) {
            Some(entry) => self.merge_counter(entry.id(key.hash), &mut log),
            None => false,
        };
        assert_eq!(log.lsn, self.lsn, "every lsn assigned is recorded");
        merged
    }

    /// The stable id (`name_id` in log records) this shard gives `name`, if it holds the name. A
    /// replica logs records it received with the ids its own shard gives their names (the ids in a
    /// received record belong to its sender).
    pub fn name_id(&self, name: &[u8]) -> Option<u32> {
        let key = Key::new(name);
        self.table.find(key.hash, key.name).map(|entry| entry.name_at)
    }

    fn owned_entry(&self, key: Key<'_>) -> Option<Entry> {
        if key.name_hash % u64::from(self.config.shards) != u64::from(self.config.shard) {
            return None;
        }
        self.table.find(key.hash, key.name).copied()
    }

    fn token(&self, lsn: u64) -> Token {
        Token {
            shard: self.config.shard,
            lsn,
        }
    }

    // ---- ops on names this shard owns ----

    fn incr(&mut self, key: Key<'_>, delta: i64, idem: Option<u128>, now_ms: u64, log: &mut dyn LogSink) -> Outcome {
        if let Some(idem) = idem {
            match self.dedup.check(idem, key.name_hash, delta, now_ms) {
                DedupCheck::Fresh => {}
                DedupCheck::Duplicate { value, lsn } => return Ok(self.incr_duplicate(key, value, lsn)),
                DedupCheck::Conflict => return Err(idempotency_conflict(idem)),
            }
        }
        let (id, value, flags, created) = match self.table.find_mut(key.hash, key.name) {
            // The common case: a plain analytic counter, one lookup and no side maps.
            Some(entry) if entry.flags == 0 => {
                let value = entry
                    .value
                    .checked_add(delta)
                    .ok_or_else(|| overflow(entry.value, delta))?;
                entry.value = value;
                if self.config.hot.enabled && self.sampler.hit() {
                    self.sketch.observe(entry.name_at, entry.name_len, key.hash);
                }
                (entry.id(key.hash), value, 0, false)
            }
            Some(entry) => {
                let entry = *entry;
                let (value, flags) = self.incr_declared(key, entry, delta)?;
                (entry.id(key.hash), value, flags, false)
            }
            None => {
                let id = self.incr_new(key, delta)?;
                (id, delta, 0, true)
            }
        };
        let record = LogRecord::Incr {
            name: key.name,
            name_id: id.name_at,
            delta,
            key: idem.map(|key| Keyed { key, value }),
        };
        let lsn = commit(&mut self.lsn, log, &record);
        self.windows
            .record(NameRef::new(id.name_at, id.name_len), delta, now_ms);
        if let Some(idem) = idem {
            self.dedup.record(idem, key.name_hash, delta, value, lsn, now_ms);
        }
        // A forced name splits right after the increment that created it.
        let split = created && self.split_if_forced(id, log);
        Ok(Reply::Incr {
            value,
            flags: if split { flags | REPLY_SPLIT } else { flags },
            token: self.token(lsn),
        })
    }

    fn incr_duplicate(&mut self, key: Key<'_>, value: i64, lsn: u64) -> Reply {
        self.counts.ops_duplicate += 1;
        let split = self
            .table
            .find(key.hash, key.name)
            .is_some_and(|entry| entry.is(FLAG_SPLIT));
        let flags = REPLY_DUPLICATE | if split { REPLY_SPLIT } else { 0 };
        Reply::Incr {
            value,
            flags,
            token: self.token(lsn),
        }
    }

    /// INCR of a strict, split or forced counter: returns the value to answer and the reply flags.
    fn incr_declared(&mut self, key: Key<'_>, entry: Entry, delta: i64) -> Result<(i64, u8), Failure> {
        let id = entry.id(key.hash);
        let next = entry
            .value
            .checked_add(delta)
            .ok_or_else(|| overflow(entry.value, delta))?;
        if entry.is(FLAG_STRICT) {
            let bounds = self.bounds_of(&entry);
            if !within(bounds, next) {
                return Err(bound_violation(entry.value, delta, bounds));
            }
            self.table.get_mut(id).value = next;
            return Ok((next, 0));
        }
        if entry.is(FLAG_SPLIT) {
            if next.unsigned_abs() > SPLIT_VALUE_ABS_MAX as u64 {
                return Err(Failure::new(
                    ErrorCode::Overflow,
                    format!(
                        "split counter part {} + {delta} leaves the split range of ±2^62",
                        entry.value
                    ),
                ));
            }
            self.table.get_mut(id).value = next;
            let owned = self
                .owned_splits
                .get_mut(&id.name_at)
                .expect("a split counter has its cell");
            owned.owner_incrs += 1;
            let total = next
                .checked_add(owned.cell.slots_sum())
                .expect("split ranges keep the sum within an i64");
            return Ok((total, REPLY_SPLIT));
        }
        self.table.get_mut(id).value = next;
        Ok((next, 0))
    }

    /// INCR of an unknown name: creates it (with its namespace's kind and bounds) holding `delta`.
    fn incr_new(&mut self, key: Key<'_>, delta: i64) -> Result<CounterId, Failure> {
        let (kind, bounds) = self.namespace_kind(key.name);
        if !within(bounds, delta) {
            return Err(bound_violation(0, delta, bounds));
        }
        let id = self.create_entry(key, delta, kind, bounds)?;
        let entry = *self.table.get(id);
        // The creating increment counts towards the rate like any other.
        if entry.flags == 0 && self.config.hot.enabled && self.sampler.hit() {
            self.sketch.observe(entry.name_at, entry.name_len, key.hash);
        }
        Ok(id)
    }

    fn get(&self, key: Key<'_>, token: Option<Token>) -> Outcome {
        if let Some(token) = token {
            if token.shard >= self.config.shards {
                return Err(Failure::new(
                    ErrorCode::InvalidArgument,
                    format!(
                        "token shard {} is not below the shard count {}",
                        token.shard, self.config.shards
                    ),
                ));
            }
        }
        // Every applied lsn is visible at once in memory, so a valid token needs no wait here.
        let Some(entry) = self.table.find(key.hash, key.name) else {
            return Ok(Reply::Get { value: 0, flags: 0 });
        };
        Ok(Reply::Get {
            value: self.value_of(entry),
            flags: REPLY_EXISTS | self.kind_flags(entry),
        })
    }

    fn create(
        &mut self,
        key: Key<'_>,
        kind: CounterKind,
        initial: i64,
        min: Option<i64>,
        max: Option<i64>,
        log: &mut dyn LogSink,
    ) -> Outcome {
        let bounds = match kind {
            CounterKind::Analytic => {
                if min.is_some() || max.is_some() {
                    return Err(Failure::new(
                        ErrorCode::InvalidArgument,
                        "analytic counters have no bounds",
                    ));
                }
                BOUNDS_FULL
            }
            CounterKind::Strict => {
                let bounds = (min.unwrap_or(i64::MIN), max.unwrap_or(i64::MAX));
                if bounds.0 > bounds.1 {
                    return Err(Failure::new(
                        ErrorCode::InvalidArgument,
                        format!("min {} is above max {}", bounds.0, bounds.1),
                    ));
                }
                if !within(bounds, initial) {
                    return Err(Failure::new(
                        ErrorCode::InvalidArgument,
                        format!("initial value {initial} is outside [{}, {}]", bounds.0, bounds.1),
                    ));
                }
                bounds
            }
        };
        if let Some(entry) = self.table.find(key.hash, key.name) {
            let existing_kind = if entry.is(FLAG_STRICT) {
                CounterKind::Strict
            } else {
                CounterKind::Analytic
            };
            if existing_kind != kind || self.bounds_of(entry) != bounds {
                return Err(Failure::new(
                    ErrorCode::AlreadyExists,
                    "the counter exists with another kind or other bounds",
                ));
            }
            return Ok(Reply::Create {
                created: false,
                value: self.value_of(entry),
                flags: self.kind_flags(entry),
            });
        }
        let id = self.create_entry(key, initial, kind, bounds)?;
        let record = LogRecord::Create {
            name: key.name,
            name_id: id.name_at,
            kind,
            initial,
            min: bounds.0,
            max: bounds.1,
        };
        commit(&mut self.lsn, log, &record);
        self.split_if_forced(id, log);
        Ok(Reply::Create {
            created: true,
            value: initial,
            flags: self.kind_flags(self.table.get(id)),
        })
    }

    fn cas(&mut self, key: Key<'_>, expected: i64, new: i64, log: &mut dyn LogSink) -> Outcome {
        let StrictTarget {
            value: current,
            bounds,
            id: existing,
        } = self.strict_target(key)?;
        if !within(bounds, new) {
            return Err(Failure::with_current(
                ErrorCode::BoundViolation,
                current,
                format!("{new} is outside the declared bounds [{}, {}]", bounds.0, bounds.1),
            ));
        }
        if current != expected {
            return Err(Failure::with_current(
                ErrorCode::CasMismatch,
                current,
                format!("expected {expected}, the value is {current}"),
            ));
        }
        let id = self.set_strict(existing, key, new, bounds)?;
        let record = LogRecord::Cas {
            name: key.name,
            name_id: id.name_at,
            new,
        };
        let lsn = commit(&mut self.lsn, log, &record);
        Ok(Reply::Cas {
            value: new,
            token: self.token(lsn),
        })
    }

    #[allow(clippy::too_many_arguments)]
    fn add_bounded(
        &mut self,
        key: Key<'_>,
        delta: i64,
        min: i64,
        max: i64,
        idem: Option<u128>,
        now_ms: u64,
        log: &mut dyn LogSink,
    ) -> Outcome {
        if min > max {
            return Err(Failure::new(
                ErrorCode::InvalidArgument,
                format!("min {min} is above max {max}"),
            ));
        }
        if let Some(idem) = idem {
            match self.dedup.check(idem, key.name_hash, delta, now_ms) {
                DedupCheck::Fresh => {}
                DedupCheck::Duplicate { value, lsn } => {
                    self.counts.ops_duplicate += 1;
                    // Only a strict counter ever took an ADD_BOUNDED, and kinds never change.
                    return Ok(Reply::AddBounded {
                        value,
                        flags: REPLY_DUPLICATE | REPLY_STRICT,
                        token: self.token(lsn),
                    });
                }
                DedupCheck::Conflict => return Err(idempotency_conflict(idem)),
            }
        }
        let StrictTarget {
            value: current,
            bounds: declared,
            id: existing,
        } = self.strict_target(key)?;
        let bounds = (min.max(declared.0), max.min(declared.1));
        let next = match current.checked_add(delta) {
            Some(next) if within(bounds, next) => next,
            _ => return Err(bound_violation(current, delta, bounds)),
        };
        let id = self.set_strict(existing, key, next, declared)?;
        let record = LogRecord::AddBounded {
            name: key.name,
            name_id: id.name_at,
            delta,
            key: idem,
        };
        let lsn = commit(&mut self.lsn, log, &record);
        self.windows
            .record(NameRef::new(id.name_at, id.name_len), delta, now_ms);
        if let Some(idem) = idem {
            self.dedup.record(idem, key.name_hash, delta, next, lsn, now_ms);
        }
        Ok(Reply::AddBounded {
            value: next,
            flags: REPLY_STRICT,
            token: self.token(lsn),
        })
    }

    fn reset(&mut self, key: Key<'_>, value: i64, reason: &[u8], ctx: &Ctx<'_>, log: &mut dyn LogSink) -> Outcome {
        let Some(entry) = self.table.find(key.hash, key.name).copied() else {
            return Err(Failure::new(ErrorCode::NotFound, "no such counter"));
        };
        if entry.is(FLAG_STRICT) {
            let bounds = self.bounds_of(&entry);
            if !within(bounds, value) {
                return Err(Failure::with_current(
                    ErrorCode::BoundViolation,
                    entry.value,
                    format!("{value} is outside the declared bounds [{}, {}]", bounds.0, bounds.1),
                ));
            }
        }
        let id = entry.id(key.hash);
        if entry.is(FLAG_SPLIT) {
            let merged = self.merge_counter(id, log);
            assert!(merged);
        }
        let entry = self.table.get_mut(id);
        let old = entry.value;
        entry.value = value;
        let record = LogRecord::Reset {
            name: key.name,
            name_id: id.name_at,
            old,
            new: value,
            reason,
            client: ctx.client,
        };
        let lsn = commit(&mut self.lsn, log, &record);
        self.audit.push(ResetRecord {
            time_ms: ctx.now_ms,
            name: key.name.to_vec(),
            old,
            new: value,
            reason: reason.to_vec(),
            client: ctx.client.to_vec(),
            lsn,
        });
        self.split_if_forced(id, log);
        Ok(Reply::Reset {
            old,
            new: value,
            token: self.token(lsn),
        })
    }

    // ---- split counters ----

    /// An unkeyed INCR of a name another shard owns: applied into this shard's slot if the counter
    /// is split and the slot is open and in range; `None` means forward it to the owner. The
    /// `SlotIncr` record is written only once the slot's compare-exchange succeeded, which is what
    /// makes recovery exactly-once (see `fold_recovered`).
    fn incr_into_slot(&mut self, key: Key<'_>, delta: i64, now_ms: u64, log: &mut dyn LogSink) -> Option<Reply> {
        if !self.config.hot.enabled {
            return None;
        }
        let shard = self.config.shard;
        let cached = self.split_cache.lookup(&self.splits, key.hash, key.name)?;
        // The record needs the name's id in this shard's arena; the first slot increment of a name
        // stores it there, so make sure it fits before the add (an add cannot be taken back).
        let name_id = cached.name_id.or_else(|| self.table.foreign_find(key.hash, key.name));
        if name_id.is_none() && self.table.next_name_at(key.name.len()).is_none() {
            return None;
        }
        match cached.cell.add(shard, delta) {
            SlotAdd::Added { slot } => {
                let name_id = match name_id {
                    Some(name_id) => name_id,
                    None => self
                        .table
                        .foreign_insert(key.hash, key.name)
                        .expect("the arena had room a moment ago"),
                };
                cached.name_id = Some(name_id);
                let record = LogRecord::SlotIncr {
                    name: key.name,
                    name_id,
                    epoch: cached.cell.epoch(),
                    delta,
                };
                let lsn = commit(&mut self.lsn, log, &record);
                let value = cached.cell.estimate(shard, slot);
                // Recorded here, under the name, so the counter's windows are the sum over shards.
                self.windows
                    .record(NameRef::new(name_id, key.name.len() as u8), delta, now_ms);
                Some(Reply::Incr {
                    value,
                    flags: REPLY_SPLIT | REPLY_APPROX,
                    token: Token { shard, lsn },
                })
            }
            SlotAdd::Closed | SlotAdd::OutOfRange => None,
        }
    }

    /// Splits a counter if it was created or reset as a forced name; returns whether it split.
    fn split_if_forced(&mut self, id: CounterId, log: &mut dyn LogSink) -> bool {
        self.table.get(id).is(FLAG_FORCED) && self.split_counter(id, log)
    }

    /// Splits an owned counter if it is eligible; returns whether it did. Takes an lsn: the split's
    /// epoch, recorded as `Split` before the cell is published, so every slot increment of the
    /// epoch is logged after it (on whichever shard).
    fn split_counter(&mut self, id: CounterId, log: &mut dyn LogSink) -> bool {
        if !self.config.hot.enabled || self.owned_splits.len() >= SPLIT_OWNED_MAX {
            return false;
        }
        let (shard, shards) = (self.config.shard, self.config.shards);
        let epoch = self.lsn + 1;
        if self.merged_epoch(id.name_at).is_some_and(|merged| epoch <= merged) {
            // Recovery folded an epoch above this lsn that the owner's log had lost: wait until the
            // lsns pass it, so that one name never has two splits of the same epoch.
            return false;
        }
        let entry = self.table.get_mut(id);
        if entry.is(FLAG_STRICT) || entry.is(FLAG_SPLIT) || entry.value.unsigned_abs() > SPLIT_ELIGIBLE_ABS_MAX {
            return false;
        }
        entry.flags |= FLAG_SPLIT;
        let forced = entry.is(FLAG_FORCED);
        let cell = Arc::new(SplitCell::new(shard, shards, entry.value, epoch));
        let record = LogRecord::Split {
            name: self.table.name_of(id),
            name_id: id.name_at,
            epoch,
        };
        let lsn = commit(&mut self.lsn, log, &record);
        assert_eq!(lsn, epoch);
        self.splits.insert(self.table.name_of(id), cell.clone());
        let owned = OwnedSplit {
            cell,
            table_hash: id.hash,
            name_len: id.name_len,
            forced,
            owner_incrs: 0,
            slot_ops_seen: 0,
            cool_ticks: 0,
        };
        let previous = self.owned_splits.insert(id.name_at, owned);
        assert!(previous.is_none());
        self.counts.splits += 1;
        true
    }

    /// Folds a split counter's slots back into the owner's part; returns whether it was split.
    /// Takes an lsn (the owner's part changes), recorded as `Merge` with what the slots held.
    fn merge_counter(&mut self, id: CounterId, log: &mut dyn LogSink) -> bool {
        let entry = self.table.get_mut(id);
        if !entry.is(FLAG_SPLIT) {
            return false;
        }
        let owned = self
            .owned_splits
            .remove(&id.name_at)
            .expect("a split counter has its cell");
        let epoch = owned.cell.epoch();
        let amount = owned.cell.close(self.lsn + 1);
        // The owner's part is within ±2^62 and each slot under ±2^54 (limits.rs): no overflow.
        entry.value = entry
            .value
            .checked_add(amount)
            .expect("split ranges keep the merged value within an i64");
        entry.flags &= !FLAG_SPLIT;
        let removed = self
            .splits
            .remove(self.table.name_of(id))
            .expect("the registry holds every split counter");
        assert!(Arc::ptr_eq(&removed, &owned.cell));
        self.set_merged_epoch(id, epoch);
        let record = LogRecord::Merge {
            name: self.table.name_of(id),
            name_id: id.name_at,
            epoch,
            amount,
        };
        let lsn = commit(&mut self.lsn, log, &record);
        assert_eq!(owned.cell.merge_lsn(), lsn);
        self.counts.merges += 1;
        true
    }

    /// Publishes every owned split counter's aggregate and, when `elapsed_ms` is known, measures
    /// its rate and merges the ones that stayed below the merge rate long enough.
    fn tick_split_counters(&mut self, elapsed_ms: Option<u64>, log: &mut dyn LogSink) {
        let merge_rate = self.config.hot.merge_rate_per_sec;
        let merge_after = self.config.hot.merge_after_ticks;
        self.merge_scratch.clear();
        for (&name_at, owned) in self.owned_splits.iter_mut() {
            let id = CounterId {
                hash: owned.table_hash,
                name_at,
                name_len: owned.name_len,
            };
            let (_, slot_ops) = owned.cell.publish(self.table.get(id).value);
            assert!(slot_ops >= owned.slot_ops_seen, "slot op counts only grow");
            let incrs = owned.owner_incrs + (slot_ops - owned.slot_ops_seen);
            owned.owner_incrs = 0;
            owned.slot_ops_seen = slot_ops;
            let Some(elapsed_ms) = elapsed_ms else { continue };
            if owned.forced {
                continue;
            }
            if rate_per_sec(incrs, elapsed_ms) < merge_rate {
                owned.cool_ticks += 1;
            } else {
                owned.cool_ticks = 0;
            }
            if owned.cool_ticks >= merge_after {
                self.merge_scratch.push(id);
            }
        }
        // Bounded per tick so that one tick's log records fit in one batch; the rest stay cool and
        // merge on the next ticks.
        let mut merges = std::mem::take(&mut self.merge_scratch);
        merges.truncate(TICK_MERGES_MAX);
        for &id in &merges {
            let merged = self.merge_counter(id, log);
            assert!(merged);
        }
        self.merge_scratch = merges;
    }

    /// Splits the counters the sketch measured at or above the split rate.
    fn tick_hot_counters(&mut self, elapsed_ms: u64, log: &mut dyn LogSink) {
        if !self.config.hot.enabled {
            return;
        }
        let mut items = [SketchItem::default(); HOT_SKETCH_SLOTS];
        let len = self.sketch.items().len();
        items[..len].copy_from_slice(self.sketch.items());
        for item in &items[..len] {
            if sampled_rate_per_sec(item, self.sampler.every(), elapsed_ms) >= self.config.hot.split_rate_per_sec {
                let id = CounterId {
                    hash: item.table_hash,
                    name_at: item.name_at,
                    name_len: item.name_len,
                };
                self.split_counter(id, log);
            }
        }
    }

    /// Splits forced names that exist, are not split and are eligible (e.g. after a RESET brought a
    /// large value back into the split range).
    fn tick_forced_counters(&mut self, log: &mut dyn LogSink) {
        if !self.config.hot.enabled || self.forced_owned.is_empty() {
            return;
        }
        let forced = std::mem::take(&mut self.forced_owned);
        let mut splits = 0;
        for name in &forced {
            if splits == TICK_FORCED_SPLITS_MAX {
                break;
            }
            let key = Key::new(name);
            if let Some(entry) = self.table.find(key.hash, key.name).copied() {
                if entry.is(FLAG_FORCED) && !entry.is(FLAG_SPLIT) {
                    splits += usize::from(self.split_counter(entry.id(key.hash), log));
                }
            }
        }
        self.forced_owned = forced;
    }

    // ---- helpers ----

    /// Sets a strict counter to `value`: the existing entry, or a new one (a strict namespace rule
    /// creates the counter on its first CAS or bounded add) with the declared `bounds`.
    fn set_strict(
        &mut self,
        existing: Option<CounterId>,
        key: Key<'_>,
        value: i64,
        bounds: (i64, i64),
    ) -> Result<CounterId, Failure> {
        match existing {
            Some(id) => {
                self.table.get_mut(id).value = value;
                Ok(id)
            }
            None => self.create_entry(key, value, CounterKind::Strict, bounds),
        }
    }

    /// Adds a counter (flagged forced if it is a forced name; the caller splits it after logging the
    /// op that created it).
    fn create_entry(
        &mut self,
        key: Key<'_>,
        value: i64,
        kind: CounterKind,
        bounds: (i64, i64),
    ) -> Result<CounterId, Failure> {
        assert!(within(bounds, value));
        let mut flags = 0;
        match kind {
            CounterKind::Strict => {
                flags |= FLAG_STRICT;
                if bounds != BOUNDS_FULL {
                    flags |= FLAG_BOUNDED;
                }
            }
            CounterKind::Analytic => {
                assert_eq!(bounds, BOUNDS_FULL);
                if !self.forced_owned.is_empty() && self.forced_owned.contains(key.name) {
                    flags |= FLAG_FORCED;
                }
            }
        }
        let entry = self.table.insert(key.hash, key.name, value, flags).map_err(|_| {
            Failure::new(
                ErrorCode::TableFull,
                "this shard's name arena is full (4 GiB of names); no new names fit",
            )
        })?;
        if entry.is(FLAG_BOUNDED) {
            self.bounds.insert(entry.name_at, bounds);
        }
        if entry.is(FLAG_STRICT) {
            self.strict_counters += 1;
        }
        Ok(entry.id(key.hash))
    }

    /// The epoch of the last merge of an owned counter that was ever split.
    fn merged_epoch(&self, name_at: u32) -> Option<u64> {
        self.merged_epochs.get(&name_at).map(|merged| merged.epoch)
    }

    /// Records `epoch` as `id`'s last merged epoch; epochs of one name only grow.
    fn set_merged_epoch(&mut self, id: CounterId, epoch: u64) {
        let merged = MergedEpoch {
            epoch,
            name_len: id.name_len,
        };
        if let Some(previous) = self.merged_epochs.insert(id.name_at, merged) {
            assert!(previous.epoch < epoch, "epochs of a name grow");
        }
    }

    /// The kind and bounds an auto-created counter gets from its namespace.
    fn namespace_kind(&self, name: &[u8]) -> (CounterKind, (i64, i64)) {
        match self.config.namespace_of(name) {
            Some(rule) if rule.kind == CounterKind::Strict => (
                CounterKind::Strict,
                (rule.min.unwrap_or(i64::MIN), rule.max.unwrap_or(i64::MAX)),
            ),
            _ => (CounterKind::Analytic, BOUNDS_FULL),
        }
    }

    /// The strict counter a CAS or bounded add works on, or a counter at 0 with its namespace's
    /// bounds (created on success) if the name is unknown and in a strict namespace.
    fn strict_target(&self, key: Key<'_>) -> Result<StrictTarget, Failure> {
        match self.table.find(key.hash, key.name) {
            Some(entry) if !entry.is(FLAG_STRICT) => Err(Failure::new(
                ErrorCode::WrongKind,
                "the counter is analytic; this op needs a strict counter",
            )),
            Some(entry) => Ok(StrictTarget {
                value: entry.value,
                bounds: self.bounds_of(entry),
                id: Some(entry.id(key.hash)),
            }),
            None => match self.namespace_kind(key.name) {
                (CounterKind::Strict, bounds) => Ok(StrictTarget {
                    value: 0,
                    bounds,
                    id: None,
                }),
                (CounterKind::Analytic, _) => Err(Failure::new(ErrorCode::NotFound, "no such counter")),
            },
        }
    }

    fn bounds_of(&self, entry: &Entry) -> (i64, i64) {
        if entry.is(FLAG_BOUNDED) {
            *self
                .bounds
                .get(&entry.name_at)
                .expect("a bounded counter has its bounds")
        } else {
            BOUNDS_FULL
        }
    }

    /// The counter's value: for a split counter, the owner's part plus every slot (exact).
    fn value_of(&self, entry: &Entry) -> i64 {
        if !entry.is(FLAG_SPLIT) {
            return entry.value;
        }
        let owned = self
            .owned_splits
            .get(&entry.name_at)
            .expect("a split counter has its cell");
        entry
            .value
            .checked_add(owned.cell.slots_sum())
            .expect("split ranges keep the sum within an i64")
    }

    fn kind_flags(&self, entry: &Entry) -> u8 {
        let mut flags = 0;
        if entry.is(FLAG_STRICT) {
            flags |= REPLY_STRICT;
        }
        if entry.is(FLAG_SPLIT) {
            flags |= REPLY_SPLIT;
        }
        flags
    }
}

/// Everything replay and snapshots must reproduce, in a form tests can compare: counters by arena
/// offset (flags without the live split bit), side maps sorted, the split epochs open (live or
/// recovered), the dedup set and the audit ring, the arena bytes and the lsn.
#[cfg(test)]
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Canonical {
    pub lsn: u64,
    pub counters: Vec<(u32, Vec<u8>, u8, i64)>,
    pub bounds: Vec<(u32, (i64, i64))>,
    pub foreign: Vec<(u32, Vec<u8>)>,
    pub merged: Vec<(u32, u64)>,
    pub open: Vec<(u32, u64)>,
    pub parts: Vec<((u32, u64), i64)>,
    pub dedup: Vec<crate::dedup::DedupEntry>,
    pub dedup_time_last_ms: u64,
    pub audit: Vec<ResetRecord>,
    pub arena: Vec<Vec<u8>>,
    pub strict_counters: u64,
    pub windows: crate::window::store::CanonicalWindows,
}

#[cfg(test)]
impl Shard {
    pub(crate) fn canonical(&self) -> Canonical {
        let mut counters: Vec<_> = self
            .table
            .iter()
            .map(|e| (e.name_at, self.table.name(e).to_vec(), e.flags & !FLAG_SPLIT, e.value))
            .collect();
        counters.sort();
        let mut bounds: Vec<_> = self.bounds.iter().map(|(&k, &v)| (k, v)).collect();
        bounds.sort();
        let mut foreign: Vec<_> = self
            .table
            .foreign_names()
            .map(|f| (f.name_at, self.table.name_at(f.name_at, f.name_len).to_vec()))
            .collect();
        foreign.sort();
        let mut merged: Vec<_> = self.merged_epochs.iter().map(|(&k, m)| (k, m.epoch)).collect();
        merged.sort();
        let mut open: Vec<_> = self
            .owned_splits
            .iter()
            .map(|(&k, o)| (k, o.cell.epoch()))
            .chain(self.recovered_open.iter().map(|(&k, r)| (k, r.epoch)))
            .collect();
        open.sort();
        let mut parts: Vec<_> = self.recovered_parts.iter().map(|(&k, p)| (k, p.amount)).collect();
        parts.sort();
        Canonical {
            lsn: self.lsn,
            counters,
            bounds,
            foreign,
            merged,
            open,
            parts,
            dedup: self.dedup.entries().collect(),
            dedup_time_last_ms: self.dedup.time_last_ms(),
            audit: self.audit.iter().cloned().collect(),
            arena: self.table.arena().chunks().map(<[u8]>::to_vec).collect(),
            strict_counters: self.strict_counters,
            windows: self.windows.canonical(),
        }
    }
}

fn within(bounds: (i64, i64), value: i64) -> bool {
    bounds.0 <= value && value <= bounds.1
}

fn overflow(value: i64, delta: i64) -> Failure {
    Failure::new(ErrorCode::Overflow, format!("{value} + {delta} does not fit an i64"))
}

fn bound_violation(value: i64, delta: i64, bounds: (i64, i64)) -> Failure {
    Failure::with_current(
        ErrorCode::BoundViolation,
        value,
        format!("{value} + {delta} leaves [{}, {}]", bounds.0, bounds.1),
    )
}

fn idempotency_conflict(key: u128) -> Failure {
    Failure::new(
        ErrorCode::IdempotencyConflict,
        format!("idempotency key {key:032x} was used for another name or delta"),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::NamespaceRule;
    use crate::limits::SPLIT_SLOT_ABS_MAX;
    use crate::log::NullLog;

    const CTX: Ctx<'static> = Ctx {
        now_ms: 1_000,
        client: b"test",
    };

    /// A name of the form `{prefix}{i}` that `shard` owns among `shards`.
    fn owned_name(prefix: &str, shard: u16, shards: u16) -> Vec<u8> {
        (0..)
            .map(|i| format!("{prefix}{i}").into_bytes())
            .find(|name| shard_of(name, shards) == shard)
            .expect("some name hashes to every shard")
    }

    fn single() -> Shard {
        let mut config = ShardConfig::new(0, 1);
        config.namespaces.push(NamespaceRule {
            prefix: b"inv:".to_vec(),
            kind: CounterKind::Strict,
            min: Some(0),
            max: Some(100),
        });
        Shard::new(config, Arc::new(SplitRegistry::new(1)))
    }

    fn pair(hot: impl Fn(&mut ShardConfig)) -> (Shard, Shard) {
        let registry = Arc::new(SplitRegistry::new(2));
        let shards: Vec<Shard> = (0..2)
            .map(|id| {
                let mut config = ShardConfig::new(id, 2);
                hot(&mut config);
                Shard::new(config, registry.clone())
            })
            .collect();
        let mut shards = shards.into_iter();
        (shards.next().unwrap(), shards.next().unwrap())
    }

    fn done(applied: Applied) -> Outcome {
        match applied {
            Applied::Done(outcome) => outcome,
            Applied::Forward(owner) => panic!("unexpected forward to {owner}"),
        }
    }

    fn incr(shard: &mut Shard, name: &[u8], delta: i64, key: Option<u128>, now_ms: u64) -> Outcome {
        let ctx = Ctx { now_ms, client: b"" };
        done(shard.apply(&Request::Incr { name, delta, key }, &ctx, &mut NullLog))
    }

    fn get(shard: &mut Shard, name: &[u8]) -> (i64, u8) {
        match done(shard.apply(
            &Request::Get {
                name,
                fresh: false,
                token: None,
            },
            &CTX,
            &mut NullLog,
        )) {
            Ok(Reply::Get { value, flags }) => (value, flags),
            other => panic!("{other:?}"),
        }
    }

    fn code(outcome: Outcome) -> (ErrorCode, Option<i64>) {
        let failure = outcome.expect_err("the op must fail");
        (failure.code, failure.current)
    }

    fn create(
        shard: &mut Shard,
        name: &[u8],
        kind: CounterKind,
        initial: i64,
        min: Option<i64>,
        max: Option<i64>,
    ) -> Outcome {
        done(shard.apply(
            &Request::Create {
                name,
                kind,
                initial,
                min,
                max,
            },
            &CTX,
            &mut NullLog,
        ))
    }

    #[test]
    fn incr_creates_adds_and_assigns_lsns() {
        let mut shard = single();
        assert_eq!(shard.lsn(), 0);
        assert_eq!(
            incr(&mut shard, b"a", 5, None, 0),
            Ok(Reply::Incr {
                value: 5,
                flags: 0,
                token: Token { shard: 0, lsn: 1 }
            })
        );
        assert_eq!(
            incr(&mut shard, b"a", -7, None, 0),
            Ok(Reply::Incr {
                value: -2,
                flags: 0,
                token: Token { shard: 0, lsn: 2 }
            })
        );
        assert_eq!(get(&mut shard, b"a"), (-2, REPLY_EXISTS));
        assert_eq!(get(&mut shard, b"nothing"), (0, 0));
        assert_eq!(shard.lsn(), 2);
        let stats = shard.stats();
        assert_eq!(
            (stats.counters, stats.ops_applied, stats.ops_failed, stats.lsn),
            (1, 4, 0, 2)
        );
    }

    #[test]
    fn overflow_changes_nothing() {
        let mut shard = single();
        incr(&mut shard, b"a", i64::MAX - 1, None, 0).unwrap();
        assert_eq!(code(incr(&mut shard, b"a", 2, None, 0)), (ErrorCode::Overflow, None));
        assert_eq!(get(&mut shard, b"a").0, i64::MAX - 1);
        assert_eq!(shard.lsn(), 1);
        incr(&mut shard, b"b", i64::MIN, None, 0).unwrap();
        assert_eq!(code(incr(&mut shard, b"b", -1, None, 0)), (ErrorCode::Overflow, None));
        assert_eq!(get(&mut shard, b"b").0, i64::MIN);
        assert_eq!(shard.stats().ops_failed, 2);
    }

    #[test]
    fn get_checks_the_token_shard() {
        let mut shard = single();
        let bad = Request::Get {
            name: b"a",
            fresh: true,
            token: Some(Token { shard: 1, lsn: 0 }),
        };
        assert_eq!(
            code(done(shard.apply(&bad, &CTX, &mut NullLog))).0,
            ErrorCode::InvalidArgument
        );
        let good = Request::Get {
            name: b"a",
            fresh: true,
            token: Some(Token { shard: 0, lsn: 0 }),
        };
        assert_eq!(
            done(shard.apply(&good, &CTX, &mut NullLog)),
            Ok(Reply::Get { value: 0, flags: 0 })
        );
    }

    #[test]
    fn create_rules() {
        let mut shard = single();
        let strict = CounterKind::Strict;
        let analytic = CounterKind::Analytic;
        assert_eq!(
            code(create(&mut shard, b"a", analytic, 0, Some(0), None)).0,
            ErrorCode::InvalidArgument
        );
        assert_eq!(
            code(create(&mut shard, b"s", strict, 0, Some(5), Some(1))).0,
            ErrorCode::InvalidArgument
        );
        assert_eq!(
            code(create(&mut shard, b"s", strict, 9, Some(0), Some(5))).0,
            ErrorCode::InvalidArgument
        );
        assert_eq!(shard.lsn(), 0);
        assert_eq!(
            create(&mut shard, b"s", strict, 3, Some(0), Some(5)),
            Ok(Reply::Create {
                created: true,
                value: 3,
                flags: REPLY_STRICT
            })
        );
        incr(&mut shard, b"s", 1, None, 0).unwrap();
        assert_eq!(
            create(&mut shard, b"s", strict, 0, Some(0), Some(5)),
            Ok(Reply::Create {
                created: false,
                value: 4,
                flags: REPLY_STRICT
            })
        );
        assert_eq!(
            code(create(&mut shard, b"s", strict, 0, Some(0), Some(6))).0,
            ErrorCode::AlreadyExists
        );
        assert_eq!(
            code(create(&mut shard, b"s", analytic, 0, None, None)).0,
            ErrorCode::AlreadyExists
        );
        // Unbounded strict: explicit full bounds and no bounds are the same declaration.
        create(&mut shard, b"u", strict, 0, None, None).unwrap();
        assert_eq!(
            create(&mut shard, b"u", strict, 0, Some(i64::MIN), Some(i64::MAX)),
            Ok(Reply::Create {
                created: false,
                value: 0,
                flags: REPLY_STRICT
            })
        );
        incr(&mut shard, b"a", 2, None, 0).unwrap();
        assert_eq!(
            create(&mut shard, b"a", analytic, 7, None, None),
            Ok(Reply::Create {
                created: false,
                value: 2,
                flags: 0
            })
        );
        assert_eq!(
            code(create(&mut shard, b"a", strict, 0, None, None)).0,
            ErrorCode::AlreadyExists
        );
        assert_eq!(shard.stats().strict_counters, 2);
    }

    #[test]
    fn strict_counters_enforce_bounds_on_incr() {
        let mut shard = single();
        create(&mut shard, b"s", CounterKind::Strict, 5, Some(0), Some(10)).unwrap();
        assert_eq!(
            code(incr(&mut shard, b"s", 6, None, 0)),
            (ErrorCode::BoundViolation, Some(5))
        );
        assert_eq!(
            code(incr(&mut shard, b"s", -6, None, 0)),
            (ErrorCode::BoundViolation, Some(5))
        );
        assert_eq!(
            incr(&mut shard, b"s", 5, None, 0).map(|r| matches!(r, Reply::Incr { value: 10, .. })),
            Ok(true)
        );
        create(&mut shard, b"t", CounterKind::Strict, i64::MAX, None, None).unwrap();
        assert_eq!(code(incr(&mut shard, b"t", 1, None, 0)), (ErrorCode::Overflow, None));
        // A strict namespace: INCR creates only on success, with the rule's bounds.
        assert_eq!(
            code(incr(&mut shard, b"inv:x", 101, None, 0)),
            (ErrorCode::BoundViolation, Some(0))
        );
        assert_eq!(get(&mut shard, b"inv:x"), (0, 0));
        incr(&mut shard, b"inv:x", 100, None, 0).unwrap();
        assert_eq!(get(&mut shard, b"inv:x"), (100, REPLY_EXISTS | REPLY_STRICT));
    }

    #[test]
    fn cas_rules() {
        let mut shard = single();
        let cas = |shard: &mut Shard, name: &[u8], expected, new| {
            done(shard.apply(&Request::Cas { name, expected, new }, &CTX, &mut NullLog))
        };
        assert_eq!(code(cas(&mut shard, b"s", 0, 1)).0, ErrorCode::NotFound);
        incr(&mut shard, b"a", 1, None, 0).unwrap();
        assert_eq!(code(cas(&mut shard, b"a", 1, 2)).0, ErrorCode::WrongKind);
        create(&mut shard, b"s", CounterKind::Strict, 3, Some(0), Some(10)).unwrap();
        assert_eq!(code(cas(&mut shard, b"s", 3, 11)), (ErrorCode::BoundViolation, Some(3)));
        assert_eq!(code(cas(&mut shard, b"s", 4, 5)), (ErrorCode::CasMismatch, Some(3)));
        let lsn = shard.lsn();
        assert_eq!(
            cas(&mut shard, b"s", 3, 5),
            Ok(Reply::Cas {
                value: 5,
                token: Token { shard: 0, lsn: lsn + 1 }
            })
        );
        // Strict namespace: behaves as a counter at 0, created on success only.
        assert_eq!(code(cas(&mut shard, b"inv:y", 1, 2)), (ErrorCode::CasMismatch, Some(0)));
        assert_eq!(
            code(cas(&mut shard, b"inv:y", 0, 200)),
            (ErrorCode::BoundViolation, Some(0))
        );
        assert_eq!(shard.stats().counters, 2);
        cas(&mut shard, b"inv:y", 0, 50).unwrap();
        assert_eq!(get(&mut shard, b"inv:y"), (50, REPLY_EXISTS | REPLY_STRICT));
    }

    #[test]
    fn bounded_add_rules() {
        let mut shard = single();
        let add = |shard: &mut Shard, name: &[u8], delta, min, max| {
            done(shard.apply(
                &Request::AddBounded {
                    name,
                    delta,
                    min,
                    max,
                    key: None,
                },
                &CTX,
                &mut NullLog,
            ))
        };
        assert_eq!(code(add(&mut shard, b"s", 1, 5, 4)).0, ErrorCode::InvalidArgument);
        assert_eq!(code(add(&mut shard, b"s", 1, 0, 4)).0, ErrorCode::NotFound);
        incr(&mut shard, b"a", 1, None, 0).unwrap();
        assert_eq!(code(add(&mut shard, b"a", 1, 0, 4)).0, ErrorCode::WrongKind);
        create(&mut shard, b"s", CounterKind::Strict, 5, Some(0), Some(10)).unwrap();
        // The op's bounds intersect the declared ones.
        assert_eq!(
            code(add(&mut shard, b"s", 6, i64::MIN, i64::MAX)),
            (ErrorCode::BoundViolation, Some(5))
        );
        assert_eq!(
            code(add(&mut shard, b"s", -1, 5, 100)),
            (ErrorCode::BoundViolation, Some(5))
        );
        assert!(matches!(
            add(&mut shard, b"s", -5, i64::MIN, i64::MAX),
            Ok(Reply::AddBounded {
                value: 0,
                flags: REPLY_STRICT,
                ..
            })
        ));
        // Disjoint bounds refuse everything.
        assert_eq!(
            code(add(&mut shard, b"s", 0, 20, 30)),
            (ErrorCode::BoundViolation, Some(0))
        );
        create(&mut shard, b"u", CounterKind::Strict, i64::MAX, None, None).unwrap();
        assert_eq!(
            code(add(&mut shard, b"u", 1, i64::MIN, i64::MAX)),
            (ErrorCode::BoundViolation, Some(i64::MAX))
        );
        assert!(matches!(
            add(&mut shard, b"inv:z", 7, 0, 10),
            Ok(Reply::AddBounded {
                value: 7,
                flags: REPLY_STRICT,
                ..
            })
        ));
    }

    #[test]
    fn reset_rules_and_audit() {
        let mut shard = single();
        let reset = |shard: &mut Shard, name: &[u8], value| {
            done(shard.apply(
                &Request::Reset {
                    name,
                    value,
                    reason: b"fix",
                },
                &Ctx {
                    now_ms: 77,
                    client: b"ops",
                },
                &mut NullLog,
            ))
        };
        assert_eq!(code(reset(&mut shard, b"a", 1)).0, ErrorCode::NotFound);
        assert_eq!(code(reset(&mut shard, b"inv:q", 1)).0, ErrorCode::NotFound);
        create(&mut shard, b"s", CounterKind::Strict, 5, Some(0), Some(10)).unwrap();
        assert_eq!(code(reset(&mut shard, b"s", 11)), (ErrorCode::BoundViolation, Some(5)));
        assert_eq!(
            reset(&mut shard, b"s", 2),
            Ok(Reply::Reset {
                old: 5,
                new: 2,
                token: Token { shard: 0, lsn: 2 }
            })
        );
        let records: Vec<&ResetRecord> = shard.audit().collect();
        assert_eq!(
            records,
            vec![&ResetRecord {
                time_ms: 77,
                name: b"s".to_vec(),
                old: 5,
                new: 2,
                reason: b"fix".to_vec(),
                client: b"ops".to_vec(),
                lsn: 2
            }]
        );
        for value in 0..AUDIT_RECORDS_MAX as i64 + 5 {
            reset(&mut shard, b"s", value % 10).unwrap();
        }
        assert_eq!(shard.audit().count(), AUDIT_RECORDS_MAX);
        assert_eq!(shard.audit().last().map(|r| r.lsn), Some(shard.lsn()));
        assert_eq!(
            shard.audit().next().map(|r| r.lsn),
            Some(shard.lsn() + 1 - AUDIT_RECORDS_MAX as u64)
        );
    }

    #[test]
    fn duplicates_return_the_first_outcome() {
        let mut shard = single();
        let first = incr(&mut shard, b"a", 5, Some(1), 1_000).unwrap();
        assert_eq!(
            first,
            Reply::Incr {
                value: 5,
                flags: 0,
                token: Token { shard: 0, lsn: 1 }
            }
        );
        incr(&mut shard, b"a", 10, None, 1_000).unwrap();
        assert_eq!(
            incr(&mut shard, b"a", 5, Some(1), 2_000),
            Ok(Reply::Incr {
                value: 5,
                flags: REPLY_DUPLICATE,
                token: Token { shard: 0, lsn: 1 }
            })
        );
        assert_eq!(get(&mut shard, b"a").0, 15);
        assert_eq!(shard.lsn(), 2);
        assert_eq!(
            code(incr(&mut shard, b"a", 6, Some(1), 2_000)).0,
            ErrorCode::IdempotencyConflict
        );
        assert_eq!(
            code(incr(&mut shard, b"b", 5, Some(1), 2_000)).0,
            ErrorCode::IdempotencyConflict
        );
        assert_eq!(shard.stats().ops_duplicate, 1);
        // A failed op does not record its key: the retry after fixing things is applied.
        incr(&mut shard, b"c", i64::MAX, None, 2_000).unwrap();
        assert_eq!(code(incr(&mut shard, b"c", 1, Some(2), 2_000)).0, ErrorCode::Overflow);
        reset_value(&mut shard, b"c", 0);
        assert!(matches!(
            incr(&mut shard, b"c", 1, Some(2), 2_000),
            Ok(Reply::Incr { value: 1, flags: 0, .. })
        ));
        // Bounded adds share the set.
        create(&mut shard, b"s", CounterKind::Strict, 0, Some(0), Some(10)).unwrap();
        let add = Request::AddBounded {
            name: b"s",
            delta: 3,
            min: 0,
            max: 10,
            key: Some(9),
        };
        let first = done(shard.apply(&add, &CTX, &mut NullLog)).unwrap();
        let Reply::AddBounded {
            value: 3,
            flags: REPLY_STRICT,
            token,
        } = first
        else {
            panic!("{first:?}")
        };
        assert_eq!(
            done(shard.apply(&add, &CTX, &mut NullLog)),
            Ok(Reply::AddBounded {
                value: 3,
                flags: REPLY_DUPLICATE | REPLY_STRICT,
                token
            })
        );
        assert_eq!(get(&mut shard, b"s").0, 3);
    }

    fn reset_value(shard: &mut Shard, name: &[u8], value: i64) {
        done(shard.apply(
            &Request::Reset {
                name,
                value,
                reason: b"",
            },
            &CTX,
            &mut NullLog,
        ))
        .unwrap();
    }

    #[test]
    fn keys_expire_after_the_window() {
        let mut config = ShardConfig::new(0, 1);
        config.dedup_window_ms = 1_000;
        let mut shard = Shard::new(config, Arc::new(SplitRegistry::new(1)));
        incr(&mut shard, b"a", 1, Some(5), 10_000).unwrap();
        assert!(matches!(
            incr(&mut shard, b"a", 1, Some(5), 10_999),
            Ok(Reply::Incr {
                value: 1,
                flags: REPLY_DUPLICATE,
                ..
            })
        ));
        assert!(matches!(
            incr(&mut shard, b"a", 1, Some(5), 11_000),
            Ok(Reply::Incr { value: 2, flags: 0, .. })
        ));
        // Expiry also runs from tick.
        assert_eq!(shard.stats().dedup_entries, 1);
        shard.tick(12_000, &mut NullLog);
        assert_eq!(shard.stats().dedup_entries, 0);
    }

    #[test]
    fn a_full_dedup_set_evicts_early_and_counts_it() {
        let config = ShardConfig::new(0, 1);
        let mut shard = Shard::with_limits(config, Arc::new(SplitRegistry::new(1)), ARENA_BYTES_MAX, 3);
        for key in 0..5 {
            incr(&mut shard, b"a", 1, Some(key), 0).unwrap();
        }
        let stats = shard.stats();
        assert_eq!((stats.dedup_entries, stats.dedup_evicted_early), (3, 2));
        // Key 0 was evicted early: its retry is applied again.
        assert!(matches!(
            incr(&mut shard, b"a", 1, Some(0), 0),
            Ok(Reply::Incr { value: 6, flags: 0, .. })
        ));
        assert!(matches!(
            incr(&mut shard, b"a", 1, Some(4), 0),
            Ok(Reply::Incr {
                value: 5,
                flags: REPLY_DUPLICATE,
                ..
            })
        ));
    }

    #[test]
    fn a_full_arena_answers_table_full() {
        let config = ShardConfig::new(0, 1);
        let mut shard = Shard::with_limits(config, Arc::new(SplitRegistry::new(1)), 1 << 20, 16);
        let mut created = 0u64;
        let failure = loop {
            let name = format!("{created:0>255}");
            match incr(&mut shard, name.as_bytes(), 1, None, 0) {
                Ok(_) => created += 1,
                Err(failure) => break failure,
            }
        };
        assert_eq!(failure.code, ErrorCode::TableFull);
        assert_eq!(shard.stats().counters, created);
        assert_eq!(shard.lsn(), created);
        // Existing names still work.
        assert!(incr(&mut shard, format!("{:0>255}", 0).as_bytes(), 1, None, 0).is_ok());
    }

    #[test]
    fn foreign_names_are_forwarded_and_node_ops_refused() {
        let (mut zero, mut one) = pair(|_| {});
        let name = owned_name("n", 1, 2);
        assert_eq!(
            zero.apply(
                &Request::Incr {
                    name: &name,
                    delta: 1,
                    key: None
                },
                &CTX,
                &mut NullLog
            ),
            Applied::Forward(1)
        );
        assert_eq!(
            zero.apply(
                &Request::Get {
                    name: &name,
                    fresh: false,
                    token: None
                },
                &CTX,
                &mut NullLog
            ),
            Applied::Forward(1)
        );
        assert!(done(one.apply(
            &Request::Incr {
                name: &name,
                delta: 1,
                key: None
            },
            &CTX,
            &mut NullLog
        ))
        .is_ok());
        assert_eq!(
            code(done(zero.apply(&Request::Stats, &CTX, &mut NullLog))).0,
            ErrorCode::Internal
        );
        assert_eq!(
            code(done(zero.apply(&Request::Hello { client: b"x" }, &CTX, &mut NullLog))).0,
            ErrorCode::Internal
        );
        assert_eq!(zero.stats().ops_forwarded, 2);
    }

    #[test]
    fn forced_names_split_on_first_touch_and_take_increments_everywhere() {
        let hot = owned_name("hot", 0, 2);
        let forced = hot.clone();
        let (mut zero, mut one) = pair(move |config| config.hot.forced = vec![forced.clone()]);
        let reply = incr(&mut zero, &hot, 10, None, 0).unwrap();
        assert!(matches!(
            reply,
            Reply::Incr {
                value: 10,
                flags: REPLY_SPLIT,
                ..
            }
        ));
        assert_eq!(zero.split_names(), vec![hot.clone()]);
        // The non-owner applies into its slot and answers an estimate.
        let reply = incr(&mut one, &hot, 5, None, 0).unwrap();
        assert_eq!(
            reply,
            Reply::Incr {
                value: 15,
                flags: REPLY_SPLIT | REPLY_APPROX,
                token: Token { shard: 1, lsn: 1 }
            }
        );
        assert_eq!(one.stats().split_slot_incrs, 1);
        // Keyed increments always go to the owner.
        assert_eq!(
            one.apply(
                &Request::Incr {
                    name: &hot,
                    delta: 1,
                    key: Some(3)
                },
                &CTX,
                &mut NullLog
            ),
            Applied::Forward(0)
        );
        assert_eq!(get(&mut zero, &hot), (15, REPLY_EXISTS | REPLY_SPLIT));
        assert!(matches!(
            incr(&mut zero, &hot, 1, Some(3), 0),
            Ok(Reply::Incr {
                value: 16,
                flags: REPLY_SPLIT,
                ..
            })
        ));
        // Forced names never merge by rate.
        for now in 1..50 {
            zero.tick(now * 100, &mut NullLog);
        }
        assert_eq!(zero.stats().merges, 0);
        assert_eq!(get(&mut zero, &hot).0, 16);
    }

    #[test]
    fn hot_counters_split_and_cool_ones_merge() {
        let (mut zero, mut one) = pair(|config| {
            config.hot.split_rate_per_sec = 100;
            config.hot.merge_rate_per_sec = 50;
            config.hot.merge_after_ticks = 2;
            config.hot.sample_every = 1;
        });
        let name = owned_name("c", 0, 2);
        zero.tick(0, &mut NullLog);
        for _ in 0..20 {
            incr(&mut zero, &name, 1, None, 0).unwrap();
        }
        // 20 increments in 100 ms is 200/s: split.
        zero.tick(100, &mut NullLog);
        assert_eq!(zero.split_names(), vec![name.clone()]);
        assert!(matches!(
            incr(&mut one, &name, 3, None, 0),
            Ok(Reply::Incr { value: 23, .. })
        ));
        assert_eq!(get(&mut zero, &name).0, 23);
        // Still hot from the other shard: no merge.
        for _ in 0..10 {
            incr(&mut one, &name, 1, None, 0).unwrap();
        }
        zero.tick(200, &mut NullLog);
        assert_eq!(zero.stats().split_owned, 1);
        let lsn = zero.lsn();
        zero.tick(300, &mut NullLog);
        zero.tick(400, &mut NullLog);
        assert_eq!(zero.stats().merges, 1);
        assert_eq!(zero.lsn(), lsn + 1);
        assert!(zero.split_names().is_empty());
        assert_eq!(get(&mut zero, &name), (33, REPLY_EXISTS));
        // The non-owner forwards again.
        assert_eq!(
            one.apply(
                &Request::Incr {
                    name: &name,
                    delta: 1,
                    key: None
                },
                &CTX,
                &mut NullLog
            ),
            Applied::Forward(0)
        );
    }

    #[test]
    fn rate_thresholds_are_at_or_above_to_split_and_strictly_below_to_merge() {
        let (mut zero, mut one) = pair(|config| {
            config.hot.split_rate_per_sec = 100;
            config.hot.merge_rate_per_sec = 50;
            config.hot.merge_after_ticks = 1;
            config.hot.sample_every = 1;
        });
        let (exact, short) = (owned_name("x", 0, 2), owned_name("y", 0, 2));
        zero.tick(0, &mut NullLog);
        for _ in 0..10 {
            incr(&mut zero, &exact, 1, None, 0).unwrap();
        }
        for _ in 0..9 {
            incr(&mut zero, &short, 1, None, 0).unwrap();
        }
        // 10 in 100 ms is exactly the split rate; 9 is below it.
        zero.tick(100, &mut NullLog);
        assert_eq!(zero.split_names(), vec![exact.clone()]);
        // 5 in 100 ms is exactly the merge rate: not cool.
        for _ in 0..5 {
            incr(&mut one, &exact, 1, None, 0).unwrap();
        }
        zero.tick(200, &mut NullLog);
        assert_eq!(zero.stats().merges, 0);
        for _ in 0..4 {
            incr(&mut one, &exact, 1, None, 0).unwrap();
        }
        zero.tick(300, &mut NullLog);
        assert_eq!(zero.stats().merges, 1);
        assert_eq!(get(&mut zero, &exact).0, 19);
    }

    #[test]
    fn disabled_hot_splitting_never_splits() {
        let hot = owned_name("hot", 0, 2);
        let forced = hot.clone();
        let (mut zero, _one) = pair(move |config| {
            config.hot.enabled = false;
            config.hot.forced = vec![forced.clone()];
            config.hot.split_rate_per_sec = 0;
            config.hot.merge_rate_per_sec = 0;
            config.hot.sample_every = 1;
        });
        incr(&mut zero, &hot, 1, None, 0).unwrap();
        zero.tick(0, &mut NullLog);
        incr(&mut zero, &hot, 1, None, 0).unwrap();
        zero.tick(100, &mut NullLog);
        assert!(zero.split_names().is_empty());
        assert!(!zero.split_now(&hot, &mut NullLog));
    }

    #[test]
    fn split_ranges() {
        let (mut zero, mut one) = pair(|_| {});
        let big = owned_name("big", 0, 2);
        incr(&mut zero, &big, (1 << 61) + 1, None, 0).unwrap();
        assert!(
            !zero.split_now(&big, &mut NullLog),
            "a counter beyond ±2^61 is never split"
        );
        let name = owned_name("r", 0, 2);
        incr(&mut zero, &name, 1 << 61, None, 0).unwrap();
        assert!(zero.split_now(&name, &mut NullLog));
        // The owner's part stays within ±2^62.
        assert_eq!(
            code(incr(&mut zero, &name, (1 << 61) + 1, None, 0)).0,
            ErrorCode::Overflow
        );
        assert!(incr(&mut zero, &name, 1 << 61, None, 0).is_ok());
        // A slot stays under 2^54: past it the increment goes to the owner.
        assert!(
            matches!(incr(&mut one, &name, -SPLIT_SLOT_ABS_MAX, None, 0), Ok(Reply::Incr { flags, .. }) if flags & REPLY_APPROX != 0)
        );
        assert_eq!(
            one.apply(
                &Request::Incr {
                    name: &name,
                    delta: -1,
                    key: None
                },
                &CTX,
                &mut NullLog
            ),
            Applied::Forward(0)
        );
        assert_eq!(get(&mut zero, &name).0, (1 << 62) - SPLIT_SLOT_ABS_MAX);
        // RESET merges first (one lsn) and then sets (another).
        let lsn = zero.lsn();
        let reply = done(zero.apply(
            &Request::Reset {
                name: &name,
                value: 7,
                reason: b"",
            },
            &CTX,
            &mut NullLog,
        ));
        assert_eq!(
            reply,
            Ok(Reply::Reset {
                old: (1 << 62) - SPLIT_SLOT_ABS_MAX,
                new: 7,
                token: Token { shard: 0, lsn: lsn + 2 }
            })
        );
        assert!(zero.split_names().is_empty());
        assert_eq!(get(&mut zero, &name), (7, REPLY_EXISTS));
    }

    #[test]
    fn strict_counters_never_split() {
        let (mut zero, _one) = pair(|_| {});
        let name = owned_name("s", 0, 2);
        create(&mut zero, &name, CounterKind::Strict, 0, None, None).unwrap();
        assert!(!zero.split_now(&name, &mut NullLog));
        let other = owned_name("a", 0, 2);
        incr(&mut zero, &other, 1, None, 0).unwrap();
        assert!(zero.split_now(&other, &mut NullLog));
        assert_eq!(
            code(create(&mut zero, &other, CounterKind::Strict, 0, None, None)).0,
            ErrorCode::AlreadyExists
        );
        assert_eq!(
            create(&mut zero, &other, CounterKind::Analytic, 0, None, None),
            Ok(Reply::Create {
                created: false,
                value: 1,
                flags: REPLY_SPLIT
            })
        );
    }

    #[test]
    fn memory_accounting_grows_with_counters() {
        let mut shard = single();
        let empty = shard.memory_bytes();
        for i in 0..10_000 {
            incr(&mut shard, format!("views:page:{i:010}").as_bytes(), 1, None, 0).unwrap();
        }
        let stats = shard.stats();
        assert_eq!(stats.name_bytes, 10_000 * 21);
        // The open second's 10 000 (name, delta) pairs are accounted for too, by the window store.
        assert!(stats.windows.memory_bytes >= 10_000 * 16);
        let table_bytes = stats.memory_bytes - stats.windows.memory_bytes;
        assert!(table_bytes > empty + 10_000 * (16 + 21));
        // One arena chunk plus a table of at most 16 384 buckets of 17 bytes (and small change).
        assert!(table_bytes < empty + (1 << 20) + 16_384 * 17 + 1024, "{table_bytes}");
    }
}
