//! `WindowStore`: one shard's in-memory time buckets, bounded independently of the number of names.
//!
//! It holds only the last `FINE_MEMORY_SECS` seconds (more while the runtime has not confirmed them
//! durable, up to `WINDOW_UNDURABLE_SECS_MAX`): the open second (`OpenSlice`), closed seconds
//! waiting for a tick to compact them, and compact `Slice`s. A closed second is handed out once, as
//! a `SealedSlice`, for the runtime to write to disk (`take_sealed`); it leaves memory when it is
//! older than `FINE_MEMORY_SECS` and the runtime said it is durable (`set_durable`). Minutes, hours
//! and days are never built here: the runtime's compaction makes them on disk (`window::file`), off
//! the shard's thread.
//!
//! Time: a second is `now_ms / 1000`. The store's time never goes backwards: an increment stamped
//! before the open second counts in the open second (a clock step back shifts it forward, it is
//! never lost). Memory is complete (holds every increment the shard applied or replayed) for
//! seconds at or after `memory_from_ms`; older ones are on disk.
//!
//! Allocation: `record` allocates only when the open second holds more pairs than any second
//! before (buffers are reused); compacting a second allocates its slice; sealing allocates the
//! sealed value.

use std::collections::VecDeque;

use super::query::{DiskRange, Partial, Range};
use super::slice::{bucket_of, NameRef, OpenSlice, Pair, SealedSlice, Slice};
use crate::limits::{FINE_MEMORY_SECS, WINDOW_PENDING_SECONDS_MAX, WINDOW_UNDURABLE_SECS_MAX};

/// Figures for STATS.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct WindowStats {
    /// Bytes the store holds from the allocator.
    pub memory_bytes: u64,
    /// Closed seconds in memory, and the (name, sum) pairs they hold.
    pub slices: u64,
    pub slice_pairs: u64,
    /// Memory holds every increment from here on (ms since the epoch).
    pub memory_from_ms: u64,
    /// Every second before this has been handed out by `take_sealed`.
    pub sealed_through_ms: u64,
    /// Every second before this is durable on disk, as the runtime said.
    pub durable_through_ms: u64,
    /// Seconds dropped before the runtime confirmed them durable (`WINDOW_UNDURABLE_SECS_MAX`).
    pub lost_secs: u64,
    /// Per-second sums that left the i64 range (held as `BUCKET_OUT_OF_RANGE`).
    pub saturated: u64,
}

/// One shard's window buckets. See the module doc.
#[derive(Debug)]
pub struct WindowStore {
    enabled: bool,
    open: OpenSlice,
    /// Closed seconds not compacted yet, oldest first, all before `open.second`.
    pending: VecDeque<OpenSlice>,
    /// Compacted seconds with at least one pair, oldest first, all before `pending`'s.
    slices: VecDeque<Slice>,
    /// Emptied pair buffers, reused by the next open seconds.
    spare: Vec<Vec<Pair>>,
    memory_from_s: u64,
    durable_through_s: u64,
    sealed_through_s: u64,
    lost_secs: u64,
    saturated: u64,
}

impl WindowStore {
    pub fn new(enabled: bool) -> WindowStore {
        WindowStore {
            enabled,
            open: OpenSlice::new(0, Vec::new()),
            pending: VecDeque::new(),
            slices: VecDeque::new(),
            spare: Vec::new(),
            memory_from_s: 0,
            durable_through_s: 0,
            sealed_through_s: 0,
            lost_secs: 0,
            saturated: 0,
        }
    }

    pub fn enabled(&self) -> bool {
        self.enabled
    }

    /// Records an applied (or replayed) increment of `name` at `now_ms`. O(1); allocates only
    /// when a second holds more pairs than any second before.
    #[inline]
    pub fn record(&mut self, name: NameRef, delta: i64, now_ms: u64) {
        if !self.enabled || delta == 0 {
            return;
        }
        let second = now_ms / 1_000;
        if second > self.open.second {
            self.rotate(second);
        }
        self.open.add(name, delta);
    }

    /// Periodic work (from `Shard::tick`): closes the open second if `now_ms` is past it, compacts
    /// closed seconds, and drops old seconds that are durable. Costs a sort of each closed
    /// second's pairs (~1-2 ms per 50K pairs).
    pub fn tick(&mut self, now_ms: u64) {
        if !self.enabled {
            return;
        }
        let second = now_ms / 1_000;
        if second > self.open.second {
            self.rotate(second);
        }
        while !self.pending.is_empty() {
            self.compact_oldest();
        }
        self.retire();
    }

    /// Hands out every closed second not handed out before (after a `tick(now_ms)`), oldest first,
    /// with the names spelled out by `name_of`. Seconds without increments are not handed out, but
    /// `sealed_through_ms` moves past them: the runtime's files are complete up to there.
    pub fn take_sealed<'n>(&mut self, now_ms: u64, name_of: impl Fn(NameRef) -> &'n [u8]) -> Vec<SealedSlice> {
        if !self.enabled {
            return Vec::new();
        }
        self.tick(now_ms);
        let first = self
            .slices
            .partition_point(|slice| slice.second < self.sealed_through_s);
        let mut sealed = Vec::with_capacity(self.slices.len() - first);
        for slice in self.slices.range(first..) {
            let mut out = SealedSlice::new(slice.second * 1_000, slice.len());
            for (name, sum) in slice.iter() {
                out.push(name_of(name), sum);
            }
            sealed.push(out);
        }
        assert!(self.pending.is_empty(), "tick compacted every closed second");
        self.sealed_through_s = self.sealed_through_s.max(self.open.second);
        sealed
    }

    /// The runtime's word that every second before `through_ms` is durable in window files. Call
    /// it after each fsync of window files, and at recovery (before replay) with the end of the
    /// newest durable file, so that recovered seconds already on disk are not handed out again.
    pub fn set_durable(&mut self, through_ms: u64) {
        let through_s = through_ms / 1_000;
        self.durable_through_s = self.durable_through_s.max(through_s);
        self.sealed_through_s = self.sealed_through_s.max(self.durable_through_s);
        self.retire();
    }

    /// Adds what memory holds of `name` in `range` to `partial` and returns the part of the range
    /// memory does not cover (older than `memory_from_ms`), which is on disk. `name` is `None` for
    /// a name this shard never stored: nothing in memory.
    pub fn query(&self, name: Option<NameRef>, range: Range, partial: &mut Partial) -> Option<DiskRange> {
        assert_eq!(partial.range(), range);
        let memory_from_ms = self.memory_from_s * 1_000;
        if let Some(name) = name {
            let from_s = range.from_ms.max(memory_from_ms) / 1_000;
            let to_s = range.to_ms.div_ceil(1_000);
            let first = self.slices.partition_point(|slice| slice.second < from_s);
            for slice in self.slices.range(first..) {
                if slice.second >= to_s {
                    break;
                }
                partial.add(slice.second * 1_000, slice.get(name));
            }
            for open in self.pending.iter().chain(std::iter::once(&self.open)) {
                if (from_s..to_s).contains(&open.second) {
                    partial.add(open.second * 1_000, bucket_of(open.get(name)).0);
                }
            }
        }
        (range.from_ms < memory_from_ms && range.from_ms < range.to_ms).then(|| DiskRange {
            from_ms: range.from_ms,
            to_ms: range.to_ms.min(memory_from_ms),
        })
    }

    pub fn stats(&self) -> WindowStats {
        WindowStats {
            memory_bytes: self.memory_bytes(),
            slices: self.slices.len() as u64,
            slice_pairs: self.slices.iter().map(|s| s.len() as u64).sum(),
            memory_from_ms: self.memory_from_s * 1_000,
            sealed_through_ms: self.sealed_through_s * 1_000,
            durable_through_ms: self.durable_through_s * 1_000,
            lost_secs: self.lost_secs,
            saturated: self.saturated,
        }
    }

    /// Bytes held from the allocator (slices, open and pending pairs, spare buffers, queues).
    pub fn memory_bytes(&self) -> u64 {
        let pair = std::mem::size_of::<Pair>() as u64;
        self.open.memory_bytes()
            + self.pending.iter().map(OpenSlice::memory_bytes).sum::<u64>()
            + self.slices.iter().map(Slice::memory_bytes).sum::<u64>()
            + self.spare.iter().map(|v| v.capacity() as u64 * pair).sum::<u64>()
            + (self.pending.capacity() * std::mem::size_of::<OpenSlice>()) as u64
            + (self.slices.capacity() * std::mem::size_of::<Slice>()) as u64
            + (self.spare.capacity() * std::mem::size_of::<Vec<Pair>>()) as u64
    }

    fn rotate(&mut self, second: u64) {
        assert!(second > self.open.second, "the store's time only moves forward");
        let buffer = self.spare.pop().unwrap_or_default();
        let closed = std::mem::replace(&mut self.open, OpenSlice::new(second, buffer));
        if closed.pairs.is_empty() {
            self.spare_buffer(closed.pairs);
        } else {
            self.pending.push_back(closed);
        }
        if self.pending.len() > WINDOW_PENDING_SECONDS_MAX {
            // Ticks stopped (or replay, which has none): compact inline so memory stays bounded.
            self.compact_oldest();
        }
        self.retire();
    }

    fn compact_oldest(&mut self) {
        let mut oldest = self.pending.pop_front().expect("a pending second");
        if let Some(last) = self.slices.back() {
            assert!(last.second < oldest.second, "seconds compact in order");
        }
        let (slice, saturated) = Slice::close(&mut oldest);
        self.saturated += saturated;
        if slice.len() > 0 {
            self.slices.push_back(slice);
        }
        self.spare_buffer(oldest.pairs);
    }

    fn spare_buffer(&mut self, mut pairs: Vec<Pair>) {
        pairs.clear();
        if self.spare.len() <= WINDOW_PENDING_SECONDS_MAX {
            self.spare.push(pairs);
        }
    }

    /// Drops the oldest slices that are older than `FINE_MEMORY_SECS` and durable, or older than
    /// `WINDOW_UNDURABLE_SECS_MAX` (lost: counted).
    fn retire(&mut self) {
        let newest = self.open.second;
        while let Some(oldest) = self.slices.front() {
            let age = newest - oldest.second;
            let durable = oldest.second < self.durable_through_s;
            if age < FINE_MEMORY_SECS || (!durable && age <= WINDOW_UNDURABLE_SECS_MAX) {
                break;
            }
            let second = oldest.second;
            if !durable {
                self.lost_secs += 1;
            }
            self.slices.pop_front();
            self.memory_from_s = self.memory_from_s.max(second + 1);
            self.sealed_through_s = self.sealed_through_s.max(second + 1);
        }
    }
}

/// Snapshot section (inside the shard snapshot, see `shard/snapshot.rs`). Integers little-endian:
///
/// ```text
/// u64 memory_from_s | u64 durable_through_s | u64 sealed_through_s | u64 lost_secs | u64 saturated
/// u32 n, n × (u64 second, u32 count, u32 len, len bytes)         compact slices, oldest first
/// u32 n, n × (u64 second, u32 pairs, pairs × (u64 name, i64 delta))   pending seconds, then the
///                                                                  open one (n >= 1)
/// ```
impl WindowStore {
    pub(crate) fn encode(&self, out: &mut Vec<u8>) {
        for v in [
            self.memory_from_s,
            self.durable_through_s,
            self.sealed_through_s,
            self.lost_secs,
            self.saturated,
        ] {
            out.extend_from_slice(&v.to_le_bytes());
        }
        out.extend_from_slice(&(self.slices.len() as u32).to_le_bytes());
        for slice in &self.slices {
            let (count, bytes) = slice.encoded();
            out.extend_from_slice(&slice.second.to_le_bytes());
            out.extend_from_slice(&count.to_le_bytes());
            out.extend_from_slice(
                &u32::try_from(bytes.len())
                    .expect("a slice is below 4 GiB")
                    .to_le_bytes(),
            );
            out.extend_from_slice(bytes);
        }
        out.extend_from_slice(&(self.pending.len() as u32 + 1).to_le_bytes());
        for open in self.pending.iter().chain(std::iter::once(&self.open)) {
            out.extend_from_slice(&open.second.to_le_bytes());
            out.extend_from_slice(&u32::try_from(open.pairs.len()).expect("pairs fit a u32").to_le_bytes());
            for pair in &open.pairs {
                out.extend_from_slice(&pair.name.0.to_le_bytes());
                out.extend_from_slice(&pair.delta.to_le_bytes());
            }
        }
    }

    /// Restores a store from `bytes` (a section written by `encode`), advancing `*at` past it.
    /// `valid_name` says whether a name ref points at a stored name. `None` on anything
    /// malformed; never panics, and allocates no more than the input's size.
    pub(crate) fn decode(
        enabled: bool,
        bytes: &[u8],
        at: &mut usize,
        valid_name: impl Fn(NameRef) -> bool,
    ) -> Option<WindowStore> {
        let mut r = Cursor { bytes, at: *at };
        let mut store = WindowStore::new(enabled);
        store.memory_from_s = r.u64()?;
        store.durable_through_s = r.u64()?;
        store.sealed_through_s = r.u64()?;
        store.lost_secs = r.u64()?;
        store.saturated = r.u64()?;
        let slices = r.u32()? as usize;
        if slices > r.left() / 16 {
            return None;
        }
        let mut last = None;
        for _ in 0..slices {
            let (second, count, len) = (r.u64()?, r.u32()?, r.u32()? as usize);
            let body = r.take(len)?;
            if last.is_some_and(|last| second <= last) || second < store.memory_from_s || count == 0 {
                return None;
            }
            last = Some(second);
            store.slices.push_back(Slice::decode(second, count, body, &valid_name)?);
        }
        let opens = r.u32()? as usize;
        if opens == 0 || opens > WINDOW_PENDING_SECONDS_MAX + 1 {
            return None;
        }
        for i in 0..opens {
            let (second, pairs) = (r.u64()?, r.u32()? as usize);
            if pairs > r.left() / 16 || last.is_some_and(|last| second <= last) {
                return None;
            }
            last = Some(second);
            let mut open = OpenSlice::new(second, Vec::with_capacity(pairs));
            for _ in 0..pairs {
                let (name, delta) = (NameRef(r.u64()?), r.i64()?);
                // A pair may hold 0: increments of one name folded into it can cancel out.
                if name.name_len() == 0 || !valid_name(name) {
                    return None;
                }
                open.pairs.push(Pair { name, delta });
            }
            if i + 1 == opens {
                store.open = open;
            } else if open.pairs.is_empty() {
                return None;
            } else {
                store.pending.push_back(open);
            }
        }
        if store.sealed_through_s > store.open.second || store.memory_from_s > store.open.second {
            return None;
        }
        *at = r.at;
        Some(store)
    }
}

struct Cursor<'a> {
    bytes: &'a [u8],
    at: usize,
}

impl<'a> Cursor<'a> {
    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        let end = self.at.checked_add(n)?;
        let out = self.bytes.get(self.at..end)?;
        self.at = end;
        Some(out)
    }
    fn left(&self) -> usize {
        self.bytes.len() - self.at
    }
    fn u32(&mut self) -> Option<u32> {
        Some(u32::from_le_bytes(self.take(4)?.try_into().ok()?))
    }
    fn u64(&mut self) -> Option<u64> {
        Some(u64::from_le_bytes(self.take(8)?.try_into().ok()?))
    }
    fn i64(&mut self) -> Option<i64> {
        Some(i64::from_le_bytes(self.take(8)?.try_into().ok()?))
    }
}

/// Everything a store holds, independent of how far compaction got: (memory_from_s, seconds with
/// their sorted non-zero sums). Replay must reproduce it.
#[cfg(test)]
pub(crate) type CanonicalWindows = (u64, Vec<(u64, Vec<(NameRef, i64)>)>);

#[cfg(test)]
impl WindowStore {
    pub(crate) fn canonical(&self) -> CanonicalWindows {
        let mut seconds: Vec<(u64, Vec<(NameRef, i64)>)> =
            self.slices.iter().map(|s| (s.second, s.iter().collect())).collect();
        for open in self.pending.iter().chain(std::iter::once(&self.open)) {
            let mut copy = OpenSlice::new(open.second, Vec::new());
            for pair in &open.pairs {
                copy.add(pair.name, pair.delta);
            }
            let (slice, _) = Slice::close(&mut copy);
            if slice.len() > 0 {
                seconds.push((slice.second, slice.iter().collect()));
            }
        }
        (self.memory_from_s, seconds)
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use proptest::prelude::*;

    use super::*;
    use crate::window::query::{plan, Query, Step, Unit, WindowError};
    use crate::window::tier::Tiers;

    const A: NameRef = NameRef(0x0101);
    const B: NameRef = NameRef(0x0201);

    fn name_of(name: NameRef) -> &'static [u8] {
        match name {
            A => b"a",
            B => b"b",
            _ => b"other",
        }
    }

    fn series(store: &WindowStore, name: NameRef, from_ms: u64, to_ms: u64) -> (Vec<i64>, Option<DiskRange>) {
        let range = Range {
            from_ms,
            to_ms,
            step_ms: 1_000,
        };
        let mut partial = Partial::new(range);
        let disk = store.query(Some(name), range, &mut partial);
        (partial.finish().unwrap(), disk)
    }

    #[test]
    fn a_second_ends_at_999_ms() {
        let mut store = WindowStore::new(true);
        store.record(A, 1, 10_999);
        store.record(A, 10, 11_000);
        store.record(A, 100, 11_999);
        store.record(A, 1_000, 12_000);
        assert_eq!(series(&store, A, 10_000, 13_000).0, vec![1, 110, 1_000]);
        // The same after compaction.
        store.tick(13_000);
        assert_eq!(series(&store, A, 10_000, 13_000).0, vec![1, 110, 1_000]);
    }

    /// One second whose increments of a name sum beyond i64 (a RESET between two huge increments
    /// makes this possible) answers `Overflow`, open or compacted, never a clamped sum; the
    /// seconds around it still answer.
    #[test]
    fn a_second_summing_beyond_i64_answers_overflow() {
        let mut store = WindowStore::new(true);
        store.record(A, 7, 9_000);
        store.record(A, i64::MAX, 10_100);
        store.record(A, i64::MAX, 10_200);
        store.record(B, i64::MIN, 10_300);
        store.record(B, -1, 10_400);
        let query = |store: &WindowStore, name, from_ms, to_ms, step_ms| {
            let range = Range {
                from_ms,
                to_ms,
                step_ms,
            };
            let mut partial = Partial::new(range);
            store.query(Some(name), range, &mut partial);
            partial.finish()
        };
        for compacted in [false, true] {
            if compacted {
                store.tick(12_000);
                store.tick(13_000);
            }
            assert_eq!(
                query(&store, A, 10_000, 11_000, 1_000),
                Err(WindowError::Overflow),
                "{compacted}"
            );
            assert_eq!(
                query(&store, B, 10_000, 11_000, 1_000),
                Err(WindowError::Overflow),
                "{compacted}"
            );
            assert_eq!(
                query(&store, A, 0, 60_000, 60_000),
                Err(WindowError::Overflow),
                "{compacted}"
            );
            assert_eq!(query(&store, A, 9_000, 10_000, 1_000), Ok(vec![7]), "{compacted}");
        }
        assert_eq!(store.stats().saturated, 2);
    }

    #[test]
    fn time_never_goes_backwards() {
        let mut store = WindowStore::new(true);
        store.record(A, 1, 20_500);
        store.record(A, 2, 19_000);
        assert_eq!(series(&store, A, 19_000, 21_000).0, vec![0, 3]);
    }

    #[test]
    fn sealed_once_then_dropped_when_durable_and_old() {
        let mut store = WindowStore::new(true);
        store.record(A, 5, 1_000);
        store.record(B, 7, 1_000);
        store.record(A, 1, 2_000);
        let sealed = store.take_sealed(3_000, name_of);
        assert_eq!(sealed.len(), 2);
        assert_eq!(sealed[0].start_ms, 1_000);
        assert_eq!(
            sealed[0].iter().collect::<Vec<_>>(),
            vec![(&b"a"[..], 5), (&b"b"[..], 7)]
        );
        assert_eq!(sealed[1].iter().collect::<Vec<_>>(), vec![(&b"a"[..], 1)]);
        assert!(store.take_sealed(3_500, name_of).is_empty(), "handed out once");
        assert_eq!(store.stats().sealed_through_ms, 3_000);
        // Old but not durable: kept.
        let late = (FINE_MEMORY_SECS + 10) * 1_000;
        store.tick(late);
        assert_eq!(store.stats().slices, 2);
        assert_eq!(series(&store, A, 1_000, 3_000), (vec![5, 1], None));
        // Durable: dropped; the query now needs the disk for those seconds.
        store.set_durable(3_000);
        assert_eq!(store.stats().slices, 0);
        assert_eq!(store.stats().memory_from_ms, 3_000);
        assert_eq!(
            series(&store, A, 1_000, 5_000),
            (
                vec![0; 4],
                Some(DiskRange {
                    from_ms: 1_000,
                    to_ms: 3_000
                })
            )
        );
        assert_eq!(store.stats().lost_secs, 0);
    }

    #[test]
    fn undurable_seconds_are_dropped_past_the_cap_and_counted() {
        let mut store = WindowStore::new(true);
        store.record(A, 5, 1_000);
        store.tick((WINDOW_UNDURABLE_SECS_MAX + 1) * 1_000);
        assert_eq!(store.stats().slices, 1);
        store.tick((WINDOW_UNDURABLE_SECS_MAX + 2) * 1_000);
        assert_eq!(store.stats().slices, 0);
        assert_eq!(store.stats().lost_secs, 1);
    }

    #[test]
    fn pending_seconds_stay_bounded_without_ticks() {
        let mut store = WindowStore::new(true);
        for second in 0..100u64 {
            store.record(A, 1, second * 1_000);
        }
        assert!(store.pending.len() <= WINDOW_PENDING_SECONDS_MAX);
        assert_eq!(series(&store, A, 0, 100_000).0, vec![1; 100]);
    }

    #[test]
    fn a_disabled_store_records_nothing() {
        let mut store = WindowStore::new(false);
        store.record(A, 1, 1_000);
        store.tick(5_000);
        assert_eq!(series(&store, A, 0, 2_000).0, vec![0, 0]);
        assert!(store.take_sealed(9_000, name_of).is_empty());
    }

    #[test]
    fn snapshot_section_round_trips_and_garbage_is_refused() {
        let mut store = WindowStore::new(true);
        for i in 0..50u64 {
            store.record(NameRef(0x100 * (i % 7 + 1) + 1), i as i64 - 20, 1_000 + i * 300);
        }
        store.tick(8_000);
        store.record(A, 3, 9_100);
        store.record(B, 4, 10_100);
        store.record(B, -4, 10_200);
        let mut bytes = Vec::new();
        store.encode(&mut bytes);
        let mut at = 0;
        let back = WindowStore::decode(true, &bytes, &mut at, |_| true).expect("round trip");
        assert_eq!(at, bytes.len());
        assert_eq!(back.canonical(), store.canonical());
        for cut in 0..bytes.len() {
            assert!(WindowStore::decode(true, &bytes[..cut], &mut 0, |_| true).is_none());
        }
        assert!(WindowStore::decode(true, &bytes, &mut 0, |_| false).is_none());
    }

    /// The store against a model keyed by (name, second), through ticks, sealing and queries of
    /// every kind: every WINDOW and SERIES the tiers accept sums what the model says.
    #[derive(Debug, Clone)]
    enum Op {
        Incr {
            name: u8,
            delta: i64,
            advance_ms: u64,
        },
        Tick {
            advance_ms: u64,
        },
        Window {
            name: u8,
            last: u32,
            minutes: bool,
        },
        Series {
            name: u8,
            back_s: u64,
            len_s: u64,
            minutes: bool,
        },
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            6 => (0u8..4, -3i64..10, prop_oneof![Just(0u64), 0u64..400, 0u64..2_000]).prop_map(|(name, delta, advance_ms)| Op::Incr { name, delta, advance_ms }),
            1 => (0u64..3_000).prop_map(|advance_ms| Op::Tick { advance_ms }),
            1 => (0u8..4, 1u32..400, any::<bool>()).prop_map(|(name, last, minutes)| Op::Window { name, last, minutes }),
            1 => (0u8..4, 0u64..600, 0u64..600, any::<bool>()).prop_map(|(name, back_s, len_s, minutes)| Op::Series { name, back_s, len_s, minutes }),
        ]
    }

    proptest! {
        #[test]
        fn window_sums_match_a_model(ops in prop::collection::vec(op(), 1..200)) {
            let names = [NameRef(0x101), NameRef(0x201), NameRef(0x2001), NameRef(0xff_ffff_ff01)];
            let tiers = Tiers::default();
            let mut store = WindowStore::new(true);
            let mut model = BTreeMap::<(u8, u64), i64>::new();
            let mut now = 40 * 86_400_000u64;
            for op in ops {
                match op {
                    Op::Incr { name, delta, advance_ms } => {
                        now += advance_ms;
                        store.record(names[name as usize], delta, now);
                        *model.entry((name, now / 1_000)).or_default() += delta;
                    }
                    Op::Tick { advance_ms } => {
                        now += advance_ms;
                        store.tick(now);
                    }
                    Op::Window { name, last, minutes } => {
                        let unit = if minutes { Unit::Minute } else { Unit::Second };
                        let query = Query::Window { last, unit };
                        let range = plan(&query, &tiers, now).unwrap();
                        let mut partial = Partial::new(range);
                        let disk = store.query(Some(names[name as usize]), range, &mut partial);
                        prop_assert_eq!(disk, None, "nothing has left memory");
                        let expect: i64 = model
                            .range((name, range.from_ms / 1_000)..(name, range.to_ms / 1_000))
                            .map(|(_, v)| v)
                            .sum();
                        prop_assert_eq!(partial.finish().unwrap(), vec![expect]);
                    }
                    Op::Series { name, back_s, len_s, minutes } => {
                        let step = if minutes { Step::Minute } else { Step::Second };
                        let from_ms = now.saturating_sub(back_s * 1_000);
                        let query = Query::Series { from_ms, to_ms: from_ms + len_s * 1_000, step };
                        let range = plan(&query, &tiers, now).unwrap();
                        let mut partial = Partial::new(range);
                        store.query(Some(names[name as usize]), range, &mut partial);
                        let points = partial.finish().unwrap();
                        for (i, point) in points.iter().enumerate() {
                            let from = (range.from_ms + i as u64 * range.step_ms) / 1_000;
                            let to = from + range.step_ms / 1_000;
                            let expect: i64 = model.range((name, from)..(name, to)).map(|(_, v)| v).sum();
                            prop_assert_eq!(*point, expect);
                        }
                    }
                }
            }
        }
    }
}
