//! One second of increments, in its three forms:
//! - `OpenSlice`: the (name, delta) pairs of the second being applied, appended in apply order
//!   (a small direct-mapped cache folds repeats of one name, so a hot counter adds one pair, not
//!   one per increment). Appending allocates nothing once the buffer has grown to a second's load.
//! - `Slice`: a closed second, sorted by name and summed per name, in a compact encoding (varint
//!   gaps between name refs, zigzag varint sums, a sparse index every `WINDOW_SLICE_INDEX_EVERY`
//!   pairs). This is what memory holds for `FINE_MEMORY_SECS`.
//! - `SealedSlice`: a closed second handed to the runtime for disk, a pure value with the names
//!   spelled out (`Shard::windows_take_sealed`).
//!
//! Names are `NameRef`s: the name's arena offset and length, the shard's stable id for it (replay
//! and snapshots reproduce offsets), so memory holds 8 bytes per pair before encoding, not a name.

use super::tier::aligned;
use super::varint;
use super::BUCKET_OUT_OF_RANGE;
use crate::limits::{WINDOW_RECENT_SLOTS, WINDOW_SLICE_INDEX_EVERY};

/// A name of this shard's arena (a counter it owns, or another shard's split counter it logged
/// slot increments of): `name_at << 8 | name_len`. Ordering by `NameRef` is arena order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct NameRef(pub u64);

impl NameRef {
    pub fn new(name_at: u32, name_len: u8) -> NameRef {
        assert!(name_len > 0);
        NameRef((u64::from(name_at) << 8) | u64::from(name_len))
    }

    pub fn name_at(self) -> u32 {
        (self.0 >> 8) as u32
    }

    pub fn name_len(self) -> u8 {
        self.0 as u8
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Pair {
    pub name: NameRef,
    pub delta: i64,
}

/// The increments of one second as they are applied.
#[derive(Debug)]
pub(crate) struct OpenSlice {
    pub second: u64,
    pub pairs: Vec<Pair>,
    /// Index into `pairs` of the last pair of a name hashing to each slot (may be stale: checked).
    recent: [u32; WINDOW_RECENT_SLOTS],
}

impl OpenSlice {
    pub fn new(second: u64, pairs: Vec<Pair>) -> OpenSlice {
        assert!(pairs.is_empty());
        OpenSlice {
            second,
            pairs,
            recent: [u32::MAX; WINDOW_RECENT_SLOTS],
        }
    }

    /// Adds `delta` for `name`: folded into the name's pair if the cache remembers it, else
    /// appended. No allocation once `pairs` has the capacity of a busy second.
    #[inline]
    pub fn add(&mut self, name: NameRef, delta: i64) {
        let slot = (name.0.wrapping_mul(0x9e37_79b9_7f4a_7c15) >> 58) as usize % WINDOW_RECENT_SLOTS;
        let at = self.recent[slot] as usize;
        if let Some(pair) = self.pairs.get_mut(at) {
            if pair.name == name {
                if let Some(sum) = pair.delta.checked_add(delta) {
                    pair.delta = sum;
                    return;
                }
            }
        }
        // At most u32::MAX pairs per second: far beyond any op rate.
        self.recent[slot] = u32::try_from(self.pairs.len()).unwrap_or(u32::MAX);
        self.pairs.push(Pair { name, delta });
    }

    /// The sum of `name`'s pairs (a linear scan: an open second is small and scanned by queries
    /// only).
    pub fn get(&self, name: NameRef) -> i128 {
        self.pairs
            .iter()
            .filter(|pair| pair.name == name)
            .map(|pair| i128::from(pair.delta))
            .sum()
    }

    pub fn memory_bytes(&self) -> u64 {
        (self.pairs.capacity() * std::mem::size_of::<Pair>()) as u64
    }
}

/// A closed second: per-name sums, sorted by name, compactly encoded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Slice {
    pub second: u64,
    count: u32,
    /// Per pair: varint gap from the previous pair's name (the first from 0), zigzag varint sum
    /// (never 0).
    bytes: Vec<u8>,
    /// Every `WINDOW_SLICE_INDEX_EVERY`-th pair: its name and byte offset.
    index: Vec<(NameRef, u32)>,
}

/// One name's increments of one second, as a bucket: the sum, or `BUCKET_OUT_OF_RANGE` (and
/// `true`) when it left the i64 range (only a counter swinging by more than 2^63 within a second
/// can do this).
pub(crate) fn bucket_of(sum: i128) -> (i64, bool) {
    match i64::try_from(sum) {
        Ok(sum) => (sum, false),
        Err(_) => (BUCKET_OUT_OF_RANGE, true),
    }
}

impl Slice {
    /// Sorts and sums an open second's pairs (leaving `open.pairs` empty, capacity kept) into a
    /// compact slice. Names whose sum is 0 are left out. Returns the slice and how many sums left
    /// the i64 range (held as `BUCKET_OUT_OF_RANGE`).
    pub fn close(open: &mut OpenSlice) -> (Slice, u64) {
        open.pairs.sort_unstable_by_key(|pair| pair.name);
        let mut builder = SliceBuilder::new(open.second, open.pairs.len());
        let mut saturated = 0;
        let mut pairs = open.pairs.iter().peekable();
        while let Some(first) = pairs.next() {
            let mut sum = i128::from(first.delta);
            while let Some(next) = pairs.next_if(|next| next.name == first.name) {
                sum += i128::from(next.delta);
            }
            let (sum, clipped) = bucket_of(sum);
            saturated += u64::from(clipped);
            builder.push(first.name, sum);
        }
        open.pairs.clear();
        open.recent = [u32::MAX; WINDOW_RECENT_SLOTS];
        (builder.finish(), saturated)
    }

    pub fn len(&self) -> usize {
        self.count as usize
    }

    /// `name`'s sum in this second (0 if absent): a binary search of the sparse index, then at
    /// most `WINDOW_SLICE_INDEX_EVERY` pairs decoded.
    pub fn get(&self, name: NameRef) -> i64 {
        let group = self.index.partition_point(|&(first, _)| first <= name);
        let Some(&(first, at)) = group.checked_sub(1).and_then(|g| self.index.get(g)) else {
            return 0;
        };
        let mut at = at as usize;
        let end = self.index.get(group).map_or(self.bytes.len(), |&(_, end)| end as usize);
        let mut current = None;
        while at < end {
            let gap = varint::get(&self.bytes, &mut at).expect("a slice decodes: it was encoded here");
            let sum = varint::get_i64(&self.bytes, &mut at).expect("a slice decodes: it was encoded here");
            // A group's first gap is from the previous group's last name: the index has the name.
            let here = current.map_or(first, |c: NameRef| NameRef(c.0 + gap));
            current = Some(here);
            if here >= name {
                return if here == name { sum } else { 0 };
            }
        }
        0
    }

    /// Every (name, sum), in name order.
    pub fn iter(&self) -> SliceIter<'_> {
        SliceIter {
            slice: self,
            at: 0,
            done: 0,
            current: NameRef(0),
        }
    }

    pub fn memory_bytes(&self) -> u64 {
        (std::mem::size_of::<Slice>()
            + self.bytes.capacity()
            + self.index.capacity() * std::mem::size_of::<(NameRef, u32)>()) as u64
    }

    /// The encoded pairs, for snapshots (`decode` takes them back).
    pub fn encoded(&self) -> (u32, &[u8]) {
        (self.count, &self.bytes)
    }

    /// A slice from snapshot bytes: `count` pairs, names strictly increasing and accepted by
    /// `valid_name`, sums non-zero, nothing left over. `None` otherwise; never panics.
    pub fn decode(second: u64, count: u32, bytes: &[u8], valid_name: impl Fn(NameRef) -> bool) -> Option<Slice> {
        let mut builder = SliceBuilder::new(second, count as usize);
        let (mut at, mut current, mut last) = (0usize, 0u64, None);
        for _ in 0..count {
            let gap = varint::get(bytes, &mut at)?;
            let sum = varint::get_i64(bytes, &mut at)?;
            current = current.checked_add(gap)?;
            let name = NameRef(current);
            if last.is_some_and(|last| name <= last) || sum == 0 || name.name_len() == 0 || !valid_name(name) {
                return None;
            }
            last = Some(name);
            builder.push(name, sum);
        }
        (at == bytes.len()).then(|| builder.finish())
    }
}

/// Encodes sorted (name, sum) pairs.
struct SliceBuilder {
    slice: Slice,
    last: NameRef,
}

impl SliceBuilder {
    fn new(second: u64, pairs_hint: usize) -> SliceBuilder {
        SliceBuilder {
            slice: Slice {
                second,
                count: 0,
                bytes: Vec::with_capacity(pairs_hint * 4),
                index: Vec::with_capacity(pairs_hint / WINDOW_SLICE_INDEX_EVERY + 1),
            },
            last: NameRef(0),
        }
    }

    fn push(&mut self, name: NameRef, sum: i64) {
        if sum == 0 {
            return;
        }
        let slice = &mut self.slice;
        assert!(
            slice.count == 0 || name > self.last,
            "pairs arrive sorted, each name once"
        );
        if aligned(u64::from(slice.count), WINDOW_SLICE_INDEX_EVERY as u64) {
            let at = u32::try_from(slice.bytes.len()).expect("a second's slice is far below 4 GiB");
            slice.index.push((name, at));
        }
        // Gaps are from the previous pair (the first from 0), so the bytes decode on their own.
        varint::put(&mut slice.bytes, name.0 - self.last.0);
        varint::put_i64(&mut slice.bytes, sum);
        slice.count += 1;
        self.last = name;
    }

    fn finish(mut self) -> Slice {
        self.slice.bytes.shrink_to_fit();
        self.slice.index.shrink_to_fit();
        self.slice
    }
}

pub(crate) struct SliceIter<'a> {
    slice: &'a Slice,
    at: usize,
    done: usize,
    current: NameRef,
}

impl Iterator for SliceIter<'_> {
    type Item = (NameRef, i64);

    fn next(&mut self) -> Option<(NameRef, i64)> {
        if self.done == self.slice.len() {
            return None;
        }
        let bytes = &self.slice.bytes;
        let gap = varint::get(bytes, &mut self.at).expect("a slice decodes");
        let sum = varint::get_i64(bytes, &mut self.at).expect("a slice decodes");
        self.current = NameRef(self.current.0 + gap);
        self.done += 1;
        Some((self.current, sum))
    }
}

/// A closed second handed to the runtime to be written to disk: a pure value. Entries are in
/// the shard's arena order, each name once, sums non-zero; the file writer sorts them by name
/// (off the shard's thread: sorting names is the expensive part of sealing).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SealedSlice {
    /// Start of the second (ms since the Unix epoch, a multiple of 1000).
    pub start_ms: u64,
    /// Always 1000 in this version: memory keeps seconds; coarser tiers are made on disk.
    pub resolution_ms: u64,
    names: Vec<u8>,
    /// (offset of the name in `names`, its length, the sum).
    entries: Vec<(u32, u8, i64)>,
}

impl SealedSlice {
    pub(crate) fn new(start_ms: u64, pairs: usize) -> SealedSlice {
        SealedSlice {
            start_ms,
            resolution_ms: 1_000,
            names: Vec::with_capacity(pairs * 16),
            entries: Vec::with_capacity(pairs),
        }
    }

    /// Adds a (name, sum); used by the store while sealing and by tests and tools.
    pub fn push(&mut self, name: &[u8], sum: i64) {
        assert!(!name.is_empty() && name.len() <= u8::MAX as usize);
        let at = u32::try_from(self.names.len()).expect("a sealed slice's names stay below 4 GiB");
        self.names.extend_from_slice(name);
        self.entries.push((at, name.len() as u8, sum));
    }

    /// A slice for `start_ms` with the given entries (tests and tools).
    pub fn from_entries<'a>(start_ms: u64, entries: impl IntoIterator<Item = (&'a [u8], i64)>) -> SealedSlice {
        let mut slice = SealedSlice::new(start_ms, 0);
        for (name, sum) in entries {
            slice.push(name, sum);
        }
        slice
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// The i-th (name, sum).
    pub fn entry(&self, i: usize) -> (&[u8], i64) {
        let (at, len, sum) = self.entries[i];
        (&self.names[at as usize..at as usize + len as usize], sum)
    }

    pub fn iter(&self) -> impl Iterator<Item = (&[u8], i64)> {
        (0..self.len()).map(|i| self.entry(i))
    }

    /// Bytes of names plus 16 per entry: what the value holds from the allocator.
    pub fn memory_bytes(&self) -> u64 {
        (self.names.capacity() + self.entries.capacity() * 16) as u64
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    fn open_with(pairs: &[(u64, i64)]) -> OpenSlice {
        let mut open = OpenSlice::new(7, Vec::new());
        for &(name, delta) in pairs {
            open.add(NameRef(name), delta);
        }
        open
    }

    #[test]
    fn repeats_fold_into_one_pair() {
        let open = open_with(&[(0x101, 1), (0x101, 2), (0x201, 5), (0x101, 3)]);
        assert_eq!(open.pairs.len(), 2);
        assert_eq!(open.get(NameRef(0x101)), 6);
        // A fold that would overflow appends instead.
        let open = open_with(&[(0x101, i64::MAX), (0x101, 1)]);
        assert_eq!(open.pairs.len(), 2);
        assert_eq!(open.get(NameRef(0x101)), i128::from(i64::MAX) + 1);
    }

    #[test]
    fn closing_marks_sums_out_of_range_and_drops_zero_sums() {
        let mut open = open_with(&[
            (0x101, i64::MAX),
            (0x101, 1),
            (0x201, 4),
            (0x201, -4),
            (0x301, -2),
            (0x401, i64::MIN),
            (0x401, -1),
        ]);
        let (slice, saturated) = Slice::close(&mut open);
        assert_eq!(saturated, 2);
        assert!(open.pairs.is_empty());
        assert_eq!(
            slice.iter().collect::<Vec<_>>(),
            vec![
                (NameRef(0x101), BUCKET_OUT_OF_RANGE),
                (NameRef(0x301), -2),
                (NameRef(0x401), BUCKET_OUT_OF_RANGE)
            ]
        );
        assert_eq!(slice.get(NameRef(0x201)), 0);
    }

    proptest! {
        #[test]
        fn a_closed_slice_sums_like_a_map(pairs in prop::collection::vec((1u64..400, -5i64..6).prop_map(|(n, d)| (n << 8 | 1, d)), 0..300)) {
            let mut model = std::collections::BTreeMap::<u64, i64>::new();
            for &(name, delta) in &pairs {
                *model.entry(name).or_default() += delta;
            }
            model.retain(|_, sum| *sum != 0);
            let mut open = open_with(&pairs);
            let (slice, _) = Slice::close(&mut open);
            let listed: Vec<(u64, i64)> = slice.iter().map(|(n, s)| (n.0, s)).collect();
            prop_assert_eq!(&listed, &model.iter().map(|(&n, &s)| (n, s)).collect::<Vec<_>>());
            for name in (0..401u64).map(|n| n << 8 | 1) {
                prop_assert_eq!(slice.get(NameRef(name)), model.get(&name).copied().unwrap_or(0));
            }
            let (count, bytes) = slice.encoded();
            let decoded = Slice::decode(7, count, bytes, |_| true);
            prop_assert_eq!(decoded.as_ref(), Some(&slice));
        }

        #[test]
        fn decoding_garbage_never_panics(count in 0u32..100, bytes in prop::collection::vec(any::<u8>(), 0..300)) {
            if let Some(slice) = Slice::decode(1, count, &bytes, |_| true) {
                let _ = slice.iter().count();
                let _ = slice.get(NameRef(5));
            }
        }
    }
}
