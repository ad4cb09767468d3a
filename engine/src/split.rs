//! Split (hot) counters: per-shard atomic slots shared by all shards of a node.
//!
//! When an analytic counter is hot, its owner creates a `SplitCell` with one slot per shard and
//! publishes it in the node's `SplitRegistry`. From then on every other shard applies unkeyed
//! increments of that counter into its own slot (a compare-exchange on a cache line only it
//! writes), so a hot counter is written by all cores without crossing them. The owner keeps its own
//! part in its table; the counter's value is the owner's part plus every slot.
//!
//! Merging: the owner swaps every slot to `SLOT_CLOSED` and adds what it swapped out to its own
//! part. A shard whose add finds its slot closed forwards the increment to the owner instead, so
//! each add lands exactly once: either its compare-exchange happened before the owner's swap (and
//! the swap collected it) or it failed and the increment went to the owner.
//!
//! Ranges: a slot holds at most ±`SPLIT_SLOT_ABS_MAX` (just under 2^54; an add past it is forwarded to the
//! owner) and the owner's part at most ±`SPLIT_VALUE_ABS_MAX` (2^62; past it the owner answers
//! `Overflow`), so the sum of all parts always fits an i64: split counters have a ±2^62 range.
//!
//! Staleness: a non-owner's reply to an increment is an estimate, the aggregate the owner published
//! at its last tick plus this slot's growth since; it misses the other shards' increments of at
//! most one tick (`HotConfig::tick_ms`). The owner's reads are exact.
//!
//! Shards find cells through a local `SplitCache` that they refresh from the registry only when the
//! registry's generation changed: one atomic load per forwarded increment, no lock on the hot path.
//!
//! Durability: every split has an epoch (the lsn of the owner's `Split` record) that slot increments
//! are logged with, and a closed cell remembers the lsn of the owner's `Merge` record. A non-owner
//! whose slot was closed owes nothing to its own log (the merge took its slot), but its snapshots
//! depend on that `Merge` being durable; the cache tracks that per owner (`SplitCache::owed`).

use std::collections::HashMap;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, RwLock};

use hashbrown::HashTable;

use crate::limits::{SPLIT_SLOT_ABS_MAX, SPLIT_VALUE_ABS_MAX};
use crate::table::table_hash;

/// A slot's value once its owner has closed it. Never a valid slot value: slots stay within
/// ±`SPLIT_SLOT_ABS_MAX`.
pub const SLOT_CLOSED: i64 = i64::MIN;

/// One shard's part of a split counter, alone on its cache line: only that shard writes `value`
/// and `ops` (the owner writes the line once per tick and once at merge).
#[repr(align(64))]
struct Slot {
    /// The amount added on this shard since the split, or `SLOT_CLOSED`.
    value: AtomicI64,
    /// Increments applied into this slot (single writer: the slot's shard).
    ops: AtomicU64,
    /// `value` as of the owner's last published aggregate.
    at_publish: AtomicI64,
}

/// The owner's last aggregate, on its own cache line (read by every shard, written once per tick).
#[repr(align(64))]
struct Published(AtomicI64);

/// One split counter's slots, one cache line per shard.
pub struct SplitCell {
    owner: u16,
    /// The lsn of the owner's `Split` record: slot increments are logged with it.
    epoch: u64,
    /// The lsn of the owner's `Merge` record once the cell is closed, 0 while open. Stored before the
    /// slots are swapped, so a shard that sees its slot closed sees it.
    merge_lsn: AtomicU64,
    published: Published,
    slots: Box<[Slot]>,
}

/// What happened to an add into a slot.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SlotAdd {
    /// Applied; the slot now holds `slot`.
    Added { slot: i64 },
    /// The owner merged the counter: send the increment to the owner.
    Closed,
    /// The slot would leave ±`SPLIT_SLOT_ABS_MAX`: send the increment to the owner.
    OutOfRange,
}

impl SplitCell {
    /// A cell for a counter of `owner` whose value is `value` at the split, logged at lsn `epoch`.
    pub fn new(owner: u16, shards: u16, value: i64, epoch: u64) -> SplitCell {
        assert!(owner < shards);
        assert!(value.unsigned_abs() <= SPLIT_VALUE_ABS_MAX as u64);
        assert!(epoch > 0, "an epoch is an lsn, and lsns start at 1");
        let slots = (0..shards)
            .map(|_| Slot {
                value: AtomicI64::new(0),
                ops: AtomicU64::new(0),
                at_publish: AtomicI64::new(0),
            })
            .collect();
        SplitCell {
            owner,
            epoch,
            merge_lsn: AtomicU64::new(0),
            published: Published(AtomicI64::new(value)),
            slots,
        }
    }

    pub fn owner(&self) -> u16 {
        self.owner
    }

    /// The lsn of the owner's `Split` record for this cell.
    pub fn epoch(&self) -> u64 {
        self.epoch
    }

    /// The lsn of the owner's `Merge` record, or 0 while the cell is open.
    pub fn merge_lsn(&self) -> u64 {
        self.merge_lsn.load(Ordering::Acquire)
    }

    /// What `shard`'s slot holds now, `None` once closed.
    pub fn slot_value(&self, shard: u16) -> Option<i64> {
        let value = self.slots[shard as usize].value.load(Ordering::Acquire);
        (value != SLOT_CLOSED).then_some(value)
    }

    pub fn shards(&self) -> u16 {
        self.slots.len() as u16
    }

    /// Adds `delta` into `shard`'s slot. Only `shard` itself calls this, never the owner.
    pub fn add(&self, shard: u16, delta: i64) -> SlotAdd {
        assert!(shard != self.owner, "the owner adds to its own table, not to a slot");
        let slot = &self.slots[shard as usize];
        let mut current = slot.value.load(Ordering::Acquire);
        loop {
            if current == SLOT_CLOSED {
                return SlotAdd::Closed;
            }
            let Some(next) = current.checked_add(delta) else {
                return SlotAdd::OutOfRange;
            };
            if next.unsigned_abs() > SPLIT_SLOT_ABS_MAX as u64 {
                return SlotAdd::OutOfRange;
            }
            match slot
                .value
                .compare_exchange_weak(current, next, Ordering::AcqRel, Ordering::Acquire)
            {
                Ok(_) => {
                    // Single writer: a load and a store instead of a locked read-modify-write.
                    slot.ops.store(slot.ops.load(Ordering::Relaxed) + 1, Ordering::Release);
                    return SlotAdd::Added { slot: next };
                }
                Err(actual) => current = actual,
            }
        }
    }

    /// The estimate a non-owner answers after adding into its slot: the owner's last aggregate plus
    /// this slot's growth since.
    pub fn estimate(&self, shard: u16, slot: i64) -> i64 {
        let published = self.published.0.load(Ordering::Acquire);
        let at_publish = self.slots[shard as usize].at_publish.load(Ordering::Acquire);
        published.saturating_add(slot.saturating_sub(at_publish))
    }

    /// The sum of all open slots (exact as of the loads; under `SHARDS_MAX * 2^54` in size).
    pub fn slots_sum(&self) -> i64 {
        self.slots
            .iter()
            .map(|slot| slot.value.load(Ordering::Acquire))
            .filter(|&value| value != SLOT_CLOSED)
            .sum()
    }

    /// Increments applied into all slots so far.
    pub fn slot_ops(&self) -> u64 {
        self.slots.iter().map(|slot| slot.ops.load(Ordering::Acquire)).sum()
    }

    /// Increments applied into `shard`'s slot so far.
    pub fn slot_ops_of(&self, shard: u16) -> u64 {
        self.slots[shard as usize].ops.load(Ordering::Acquire)
    }

    /// Owner, each tick: publishes `own + slots` for the non-owners' estimates and returns that
    /// total and the slots' op count.
    pub fn publish(&self, own: i64) -> (i64, u64) {
        assert!(own.unsigned_abs() <= SPLIT_VALUE_ABS_MAX as u64);
        let mut total = own;
        let mut ops = 0u64;
        for slot in self.slots.iter() {
            let value = slot.value.load(Ordering::Acquire);
            if value != SLOT_CLOSED {
                slot.at_publish.store(value, Ordering::Release);
                total = total
                    .checked_add(value)
                    .expect("own part and slots fit an i64 by the split ranges");
            }
            ops += slot.ops.load(Ordering::Acquire);
        }
        self.published.0.store(total, Ordering::Release);
        (total, ops)
    }

    /// Owner, at merge: closes every slot and returns the sum of what they held. After this no add
    /// lands in the cell. `merge_lsn` is the lsn the owner's `Merge` record takes.
    pub fn close(&self, merge_lsn: u64) -> i64 {
        assert!(merge_lsn > self.epoch, "a merge comes after its split");
        let previous = self.merge_lsn.swap(merge_lsn, Ordering::AcqRel);
        assert_eq!(previous, 0, "a cell is closed once");
        let mut sum = 0i64;
        for slot in self.slots.iter() {
            let value = slot.value.swap(SLOT_CLOSED, Ordering::AcqRel);
            if value != SLOT_CLOSED {
                assert!(value.unsigned_abs() <= SPLIT_SLOT_ABS_MAX as u64);
                sum += value;
            }
        }
        sum
    }

    /// True once the owner closed `shard`'s slot.
    pub fn is_closed(&self, shard: u16) -> bool {
        self.slots[shard as usize].value.load(Ordering::Acquire) == SLOT_CLOSED
    }

    /// Bytes of one cell with `shards` slots.
    pub fn memory_bytes(shards: u16) -> u64 {
        (std::mem::size_of::<SplitCell>() + usize::from(shards) * std::mem::size_of::<Slot>()) as u64
    }
}

/// Every split counter of the node, shared by all shards. Only a counter's owner inserts and removes
/// it; every change bumps `generation` (under the write lock), so a shard can tell in one atomic load
/// whether its `SplitCache` is current.
#[derive(Default)]
pub struct SplitRegistry {
    /// The node's shard count; 0 (from `Default`) accepts shards of any count.
    shards: u16,
    cells: RwLock<HashMap<Box<[u8]>, Arc<SplitCell>>>,
    generation: AtomicU64,
}

impl SplitRegistry {
    pub fn new(shards: u16) -> SplitRegistry {
        assert!(shards > 0);
        SplitRegistry {
            shards,
            cells: RwLock::new(HashMap::new()),
            generation: AtomicU64::new(0),
        }
    }

    /// The shard count given to `new`, or 0 for a default registry.
    pub fn shards(&self) -> u16 {
        self.shards
    }

    /// Bumped on every insert and remove.
    pub fn generation(&self) -> u64 {
        self.generation.load(Ordering::Acquire)
    }

    pub fn get(&self, name: &[u8]) -> Option<Arc<SplitCell>> {
        self.cells.read().expect("split registry lock").get(name).cloned()
    }

    pub fn len(&self) -> usize {
        self.cells.read().expect("split registry lock").len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub(crate) fn insert(&self, name: &[u8], cell: Arc<SplitCell>) {
        let mut cells = self.cells.write().expect("split registry lock");
        let previous = cells.insert(name.into(), cell);
        assert!(previous.is_none(), "a counter is split by its owner once at a time");
        self.generation.fetch_add(1, Ordering::AcqRel);
    }

    pub(crate) fn remove(&self, name: &[u8]) -> Option<Arc<SplitCell>> {
        let mut cells = self.cells.write().expect("split registry lock");
        let removed = cells.remove(name);
        self.generation.fetch_add(1, Ordering::AcqRel);
        removed
    }
}

pub(crate) struct CachedCell {
    pub hash: u64,
    pub name: Box<[u8]>,
    pub cell: Arc<SplitCell>,
    /// The name's id in this shard's arena once it has logged a slot increment of it.
    pub name_id: Option<u32>,
}

/// One shard's copy of the registry, refreshed when the registry's generation moves.
pub(crate) struct SplitCache {
    /// The shard this cache belongs to (whose slots it writes).
    shard: u16,
    generation: u64,
    cells: HashTable<CachedCell>,
    /// Per owner shard, the highest lsn of a `Merge` record that closed a slot this shard had
    /// written and that it dropped from the cache: this shard's snapshots omit those slots' amounts,
    /// so they are only a safe recovery base once the owner's log is durable up to there.
    owed: Vec<u64>,
}

impl SplitCache {
    pub fn new(shard: u16, shards: u16) -> SplitCache {
        assert!(shard < shards);
        // A registry starts empty at generation 0, which is exactly what this cache holds; a shard
        // created later sees a higher generation and copies the registry on first use.
        SplitCache {
            shard,
            generation: 0,
            cells: HashTable::new(),
            owed: vec![0; usize::from(shards)],
        }
    }

    /// The cached cell of `name` (table hash `hash`) if the counter is split.
    #[inline]
    pub fn lookup(&mut self, registry: &SplitRegistry, hash: u64, name: &[u8]) -> Option<&mut CachedCell> {
        if registry.generation() != self.generation {
            self.resync(registry);
        }
        if self.cells.is_empty() {
            return None;
        }
        self.cells.find_mut(hash, |c| c.hash == hash && &*c.name == name)
    }

    /// The cells as last copied (some may be closed since).
    pub fn iter(&self) -> impl Iterator<Item = &CachedCell> {
        self.cells.iter()
    }

    /// See the field: per owner shard, the `Merge` lsn this shard's snapshots depend on.
    pub fn owed(&self) -> &[u64] {
        &self.owed
    }

    /// Raises what this shard's snapshots depend on: `owner`'s log must be durable to `lsn`.
    pub fn owe(&mut self, owner: u16, lsn: u64) {
        let owed = &mut self.owed[owner as usize];
        *owed = (*owed).max(lsn);
    }

    fn resync(&mut self, registry: &SplitRegistry) {
        let cells = registry.cells.read().expect("split registry lock");
        // Read under the lock: writers bump it under the write lock, so it matches the map.
        self.generation = registry.generation.load(Ordering::Acquire);
        let shard = self.shard;
        for cached in self.cells.iter() {
            let cell = &cached.cell;
            if cell.is_closed(shard) && cell.slot_ops_of(shard) > 0 {
                let owed = &mut self.owed[cell.owner as usize];
                *owed = (*owed).max(cell.merge_lsn());
            }
        }
        self.cells.clear();
        for (name, cell) in cells.iter() {
            let hash = table_hash(tally_proto::name_hash(name));
            self.cells.insert_unique(
                hash,
                CachedCell {
                    hash,
                    name: name.clone(),
                    cell: cell.clone(),
                    name_id: None,
                },
                |c| c.hash,
            );
        }
    }

    pub fn memory_bytes(&self) -> u64 {
        let names: usize = self.cells.iter().map(|c| c.name.len()).sum();
        (self.cells.allocation_size() + names + self.owed.capacity() * 8) as u64
    }
}

/// The owner's bookkeeping for one of its split counters.
pub(crate) struct OwnedSplit {
    pub cell: Arc<SplitCell>,
    pub table_hash: u64,
    pub name_len: u8,
    /// Forced by config: never merged by rate.
    pub forced: bool,
    /// Increments the owner applied to its own part since the last tick.
    pub owner_incrs: u64,
    /// `cell.slot_ops()` at the last tick.
    pub slot_ops_seen: u64,
    /// Consecutive ticks below the merge rate.
    pub cool_ticks: u32,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn registry_and_cells_are_send_and_sync() {
        fn check<T: Send + Sync>() {}
        check::<SplitRegistry>();
        check::<SplitCell>();
        assert_eq!(std::mem::align_of::<Slot>(), 64);
    }

    #[test]
    fn slots_add_close_and_sum() {
        let cell = SplitCell::new(0, 3, 10, 1);
        assert_eq!(cell.add(1, 5), SlotAdd::Added { slot: 5 });
        assert_eq!(cell.add(2, -2), SlotAdd::Added { slot: -2 });
        assert_eq!(cell.add(1, 1), SlotAdd::Added { slot: 6 });
        assert_eq!(cell.slots_sum(), 4);
        assert_eq!(cell.slot_ops(), 3);
        assert_eq!(cell.slot_ops_of(1), 2);
        // Estimates: published 10 at the split, plus this slot's growth.
        assert_eq!(cell.estimate(1, 6), 16);
        assert_eq!(cell.publish(10), (14, 3));
        assert_eq!(cell.estimate(2, -2), 14);
        assert_eq!(cell.slot_value(1), Some(6));
        assert_eq!(cell.merge_lsn(), 0);
        assert_eq!(cell.close(5), 4);
        assert!(cell.is_closed(1));
        assert_eq!(cell.slot_value(1), None);
        assert_eq!((cell.epoch(), cell.merge_lsn()), (1, 5));
        assert_eq!(cell.add(1, 1), SlotAdd::Closed);
        assert_eq!(cell.slots_sum(), 0);
    }

    #[test]
    fn slots_refuse_to_leave_their_range() {
        let cell = SplitCell::new(1, 2, 0, 1);
        assert_eq!(
            cell.add(0, SPLIT_SLOT_ABS_MAX),
            SlotAdd::Added {
                slot: SPLIT_SLOT_ABS_MAX
            }
        );
        assert_eq!(cell.add(0, 1), SlotAdd::OutOfRange);
        assert_eq!(cell.add(0, i64::MIN), SlotAdd::OutOfRange);
        assert_eq!(
            cell.add(0, -2 * SPLIT_SLOT_ABS_MAX),
            SlotAdd::Added {
                slot: -SPLIT_SLOT_ABS_MAX
            }
        );
        assert_eq!(cell.add(0, i64::MAX), SlotAdd::OutOfRange);
    }

    #[test]
    fn cache_follows_the_registry_generation() {
        let registry = SplitRegistry::new(2);
        let mut cache = SplitCache::new(1, 2);
        let hash = table_hash(tally_proto::name_hash(b"hot"));
        assert!(cache.lookup(&registry, hash, b"hot").is_none());
        let cell = Arc::new(SplitCell::new(0, 2, 0, 1));
        registry.insert(b"hot", cell.clone());
        assert_eq!(registry.generation(), 1);
        assert!(Arc::ptr_eq(&cache.lookup(&registry, hash, b"hot").unwrap().cell, &cell));
        assert!(cache.lookup(&registry, hash, b"cold").is_none());
        assert_eq!(cell.add(1, 3), SlotAdd::Added { slot: 3 });
        assert_eq!(cell.close(9), 3);
        assert!(registry.remove(b"hot").is_some());
        assert_eq!(cache.owed(), &[0, 0], "the closed cell is still cached");
        assert!(cache.lookup(&registry, hash, b"hot").is_none());
        assert!(registry.is_empty());
        // Dropping a closed cell this shard wrote into records the owner's merge lsn.
        assert_eq!(cache.owed(), &[9, 0]);
        cache.owe(0, 4);
        assert_eq!(cache.owed(), &[9, 0]);
        cache.owe(0, 12);
        assert_eq!(cache.owed(), &[12, 0]);
    }

    #[test]
    fn concurrent_adds_and_a_close_lose_nothing() {
        let cell = Arc::new(SplitCell::new(0, 3, 0, 1));
        let adders: Vec<_> = (1..3u16)
            .map(|shard| {
                let cell = cell.clone();
                std::thread::spawn(move || {
                    let mut forwarded = 0i64;
                    for _ in 0..50_000 {
                        match cell.add(shard, 1) {
                            SlotAdd::Added { .. } => {}
                            SlotAdd::Closed | SlotAdd::OutOfRange => forwarded += 1,
                        }
                    }
                    forwarded
                })
            })
            .collect();
        let mut collected = None;
        while collected.is_none() && !adders.iter().all(|adder| adder.is_finished()) {
            std::thread::yield_now();
            if cell.slot_ops() > 1000 {
                collected = Some(cell.close(2));
            }
        }
        let forwarded: i64 = adders.into_iter().map(|adder| adder.join().unwrap()).sum();
        let collected = collected.unwrap_or_else(|| cell.close(2));
        assert_eq!(collected + forwarded, 100_000);
    }
}
