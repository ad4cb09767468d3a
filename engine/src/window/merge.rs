//! Building window files: from the sealed seconds the shard hands out (`encode_slices`) and from
//! other window files (`merge_files`: compaction of many per-minute files into one per-hour or
//! per-day file). Both apply a rollup to every bucket on the way: the tier rules coarsen buckets
//! that aged out of the fine tier and drop buckets past retention (`tier_rollup`), so a merge
//! is also the rollover to coarser tiers.
//!
//! These are pure functions meant for the runtime's compaction thread, not a shard's: sorting a
//! minute of names (~750K per shard at the 10M-names load) takes a few hundred ms.

use std::cmp::Reverse;
use std::collections::BinaryHeap;

use super::file::{FileError, FileWriter, WindowFile};
use super::slice::{bucket_of, SealedSlice};
use super::BUCKET_OUT_OF_RANGE;
use crate::config::WindowConfig;

/// Where a bucket of `name` starting at `t_ms` goes: the start of the bucket it rolls into
/// (`<= t_ms`, aligned to the output's resolution), or `None` to drop it.
pub type Rollup<'r> = &'r dyn Fn(&[u8], u64) -> Option<u64>;

/// Keeps every bucket as it is.
pub fn keep_all(_name: &[u8], t_ms: u64) -> Option<u64> {
    Some(t_ms)
}

/// The tier rules of `config` at `now_ms`: each name's namespace decides its resolution by age
/// and its retention (`Tiers::rollup`).
pub fn tier_rollup(config: &WindowConfig, now_ms: u64) -> impl Fn(&[u8], u64) -> Option<u64> + '_ {
    move |name, t_ms| config.tiers_of(name).rollup(t_ms, now_ms)
}

/// Sums (t, value) pairs with equal t after sorting. A sum beyond i64 (buckets of one name swinging
/// by more than 2^63 within one output bucket), or one that meets a bucket already out of range,
/// is `BUCKET_OUT_OF_RANGE`.
fn fold(acc: &mut Vec<(u64, i128)>, out: &mut Vec<(u64, i64)>) {
    acc.sort_unstable_by_key(|&(t, _)| t);
    out.clear();
    let mut i = 0;
    while i < acc.len() {
        let t = acc[i].0;
        let mut sum = 0i128;
        let mut out_of_range = false;
        while i < acc.len() && acc[i].0 == t {
            out_of_range |= acc[i].1 == i128::from(BUCKET_OUT_OF_RANGE);
            sum += acc[i].1;
            i += 1;
        }
        let (sum, _) = bucket_of(sum);
        let sum = if out_of_range { BUCKET_OUT_OF_RANGE } else { sum };
        if sum != 0 {
            out.push((t, sum));
        }
    }
    acc.clear();
}

/// A file covering [from_ms, to_ms) from sealed seconds (each must lie inside it). `from_ms`
/// must be aligned to every resolution `rollup` produces.
pub fn encode_slices(slices: &[SealedSlice], from_ms: u64, to_ms: u64, rollup: Rollup<'_>) -> Vec<u8> {
    let mut entries: Vec<(&[u8], u64, i64)> = Vec::with_capacity(slices.iter().map(SealedSlice::len).sum());
    for slice in slices {
        assert!(
            from_ms <= slice.start_ms && slice.start_ms < to_ms,
            "a slice inside the file's range"
        );
        for (name, sum) in slice.iter() {
            if let Some(t_ms) = rollup(name, slice.start_ms) {
                entries.push((name, t_ms, sum));
            }
        }
    }
    entries.sort_unstable_by(|a, b| a.0.cmp(b.0).then(a.1.cmp(&b.1)));
    let mut writer = FileWriter::new(from_ms, to_ms);
    let (mut acc, mut out) = (Vec::new(), Vec::new());
    let mut i = 0;
    while i < entries.len() {
        let name = entries[i].0;
        while i < entries.len() && entries[i].0 == name {
            acc.push((entries[i].1, i128::from(entries[i].2)));
            i += 1;
        }
        fold(&mut acc, &mut out);
        writer.push(name, &out);
    }
    writer.finish()
}

/// One file covering [from_ms, to_ms) with every bucket of `files` (which should lie inside
/// it), rolled up by `rollup`: the compaction of many files into one. Equal names are merged
/// and equal bucket times summed. Fails on the first corrupt input block.
pub fn merge_files(
    files: &[WindowFile<'_>],
    from_ms: u64,
    to_ms: u64,
    rollup: Rollup<'_>,
) -> Result<Vec<u8>, FileError> {
    let mut cursors: Vec<_> = files.iter().map(WindowFile::cursor).collect();
    let mut heap = BinaryHeap::with_capacity(cursors.len());
    for (i, cursor) in cursors.iter_mut().enumerate() {
        if cursor.advance()? {
            heap.push(Reverse((cursor.name.clone(), i)));
        }
    }
    let mut writer = FileWriter::new(from_ms, to_ms);
    let (mut acc, mut out) = (Vec::new(), Vec::new());
    while let Some(Reverse((name, first))) = heap.pop() {
        let mut same = vec![first];
        while heap.peek().is_some_and(|Reverse((next, _))| *next == name) {
            let Reverse((_, i)) = heap.pop().expect("peeked");
            same.push(i);
        }
        for &i in &same {
            for &(t_ms, value) in &cursors[i].buckets {
                if let Some(t_out) = rollup(&name, t_ms) {
                    assert!(t_out <= t_ms, "a rollup never moves a bucket later");
                    acc.push((t_out, i128::from(value)));
                }
            }
            if cursors[i].advance()? {
                heap.push(Reverse((cursors[i].name.clone(), i)));
            }
        }
        fold(&mut acc, &mut out);
        writer.push(&name, &out);
    }
    Ok(writer.finish())
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use proptest::prelude::*;

    use super::*;
    use crate::window::query::{DiskRange, Partial, Range};
    use crate::window::tier::{Tiers, HOUR_MS, MINUTE_MS};

    type Model = BTreeMap<(Vec<u8>, u64), i64>;

    fn read_all(bytes: &[u8]) -> Model {
        let file = WindowFile::open(bytes).expect("a file we wrote opens");
        let mut model = Model::new();
        file.for_each(|name, buckets| {
            for &(t, v) in buckets {
                model.insert((name.to_vec(), t), v);
            }
        })
        .expect("a file we wrote reads");
        model
    }

    fn names() -> impl Strategy<Value = Vec<u8>> {
        prop_oneof![
            prop::collection::vec(b'a'..b'e', 1..6),
            (0u32..500).prop_map(|i| format!("views:page:{i:010}").into_bytes()),
        ]
    }

    fn slices() -> impl Strategy<Value = Vec<SealedSlice>> {
        prop::collection::vec(
            (0u64..180, prop::collection::btree_map(names(), -1000i64..1000, 0..60)),
            0..12,
        )
        .prop_map(|seconds| {
            seconds
                .into_iter()
                .map(|(second, entries)| {
                    SealedSlice::from_entries(
                        HOUR_MS + second * 1_000,
                        entries.iter().filter(|(_, &v)| v != 0).map(|(n, &v)| (&n[..], v)),
                    )
                })
                .collect()
        })
    }

    fn model_of(slices: &[SealedSlice], rollup: Rollup<'_>) -> Model {
        let mut model = Model::new();
        for slice in slices {
            for (name, sum) in slice.iter() {
                if let Some(t) = rollup(name, slice.start_ms) {
                    *model.entry((name.to_vec(), t)).or_default() += sum;
                }
            }
        }
        model.retain(|_, v| *v != 0);
        model
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(128))]

        #[test]
        fn slices_round_trip_through_a_file(slices in slices()) {
            let bytes = encode_slices(&slices, HOUR_MS, HOUR_MS + 3 * MINUTE_MS, &keep_all);
            prop_assert_eq!(read_all(&bytes), model_of(&slices, &keep_all));
            // One name at a time, through the index.
            let file = WindowFile::open(&bytes).unwrap();
            let model = model_of(&slices, &keep_all);
            let range = Range { from_ms: HOUR_MS, to_ms: HOUR_MS + 3 * MINUTE_MS, step_ms: 1_000 };
            let all = DiskRange { from_ms: range.from_ms, to_ms: range.to_ms };
            for (name, _) in model.keys() {
                let mut partial = Partial::new(range);
                prop_assert!(file.add_to(name, all, &mut partial).unwrap());
                let points = partial.finish().unwrap();
                for (i, &p) in points.iter().enumerate() {
                    let t = range.from_ms + i as u64 * 1_000;
                    prop_assert_eq!(p, model.get(&(name.clone(), t)).copied().unwrap_or(0));
                }
            }
            let mut partial = Partial::new(range);
            prop_assert!(!file.add_to(b"zz-absent", all, &mut partial).unwrap());
            // Only the disk part of a query is added.
            if let Some(((name, t), &v)) = model.iter().next() {
                let only = DiskRange { from_ms: *t, to_ms: *t + 1_000 };
                let mut partial = Partial::new(range);
                file.add_to(name, only, &mut partial).unwrap();
                let points = partial.finish().unwrap();
                prop_assert_eq!(points.iter().sum::<i64>(), v);
            }
        }

        #[test]
        fn a_merge_equals_the_union_rolled_up(groups in prop::collection::vec(slices(), 1..5)) {
            let files: Vec<Vec<u8>> = groups
                .iter()
                .map(|slices| encode_slices(slices, HOUR_MS, HOUR_MS + 3 * MINUTE_MS, &keep_all))
                .collect();
            let opened: Vec<WindowFile<'_>> = files.iter().map(|f| WindowFile::open(f).unwrap()).collect();
            let to_minutes = |_: &[u8], t: u64| Some(t - t % MINUTE_MS);
            let merged = merge_files(&opened, HOUR_MS, 2 * HOUR_MS, &to_minutes).unwrap();
            let all: Vec<SealedSlice> = groups.concat();
            prop_assert_eq!(read_all(&merged), model_of(&all, &to_minutes));
            // Dropping by retention: only buckets from the second minute on survive.
            let keep_late = |_: &[u8], t: u64| (t >= HOUR_MS + MINUTE_MS).then_some(t);
            let merged = merge_files(&opened, HOUR_MS, 2 * HOUR_MS, &keep_late).unwrap();
            prop_assert_eq!(read_all(&merged), model_of(&all, &keep_late));
        }

        #[test]
        fn corrupt_files_never_panic(slices in slices(), flips in prop::collection::vec((any::<prop::sample::Index>(), 1u8..=255), 1..6), cut in any::<prop::sample::Index>()) {
            let bytes = encode_slices(&slices, HOUR_MS, HOUR_MS + 3 * MINUTE_MS, &keep_all);
            let mut bad = bytes.clone();
            for (at, x) in flips {
                let i = at.index(bad.len());
                bad[i] ^= x;
            }
            exercise(&bad);
            exercise(&bytes[..cut.index(bytes.len())]);
        }

        #[test]
        fn garbage_never_panics(bytes in prop::collection::vec(any::<u8>(), 0..512)) {
            exercise(&bytes);
        }
    }

    /// Everything a reader does with a file, ignoring errors: it must not panic.
    fn exercise(bytes: &[u8]) {
        if let Ok(file) = WindowFile::open(bytes) {
            let _ = file.for_each(|_, _| {});
            let (from, to) = file.range_ms();
            if to > from && (to - from) / 1_000 <= 1 << 16 {
                let range = Range {
                    from_ms: from,
                    to_ms: to,
                    step_ms: 1_000,
                };
                let mut partial = Partial::new(range);
                let all = DiskRange {
                    from_ms: from,
                    to_ms: to,
                };
                let _ = file.add_to(b"views:page:0000000007", all, &mut partial);
                let _ = file.add_to(b"c", all, &mut partial);
            }
            let _ = merge_files(&[file], 0, u64::MAX / 1_000 * 1_000, &keep_all);
        }
    }

    /// Rolling seconds up into minutes keeps a bucket out of range out of range (it never becomes
    /// a plausible number by meeting other buckets), and turns a minute whose seconds sum beyond
    /// i64 into one.
    #[test]
    fn rollups_keep_buckets_out_of_range() {
        let to_minute = |_: &[u8], t: u64| Some(t - t % MINUTE_MS);
        let slices = vec![
            SealedSlice::from_entries(HOUR_MS, [(&b"a"[..], BUCKET_OUT_OF_RANGE), (&b"b"[..], i64::MAX)]),
            SealedSlice::from_entries(HOUR_MS + 1_000, [(&b"a"[..], 5), (&b"b"[..], i64::MAX)]),
            SealedSlice::from_entries(HOUR_MS + 2_000, [(&b"c"[..], 9)]),
        ];
        let bytes = encode_slices(&slices, HOUR_MS, 2 * HOUR_MS, &to_minute);
        let expect: Model = [
            ((b"a".to_vec(), HOUR_MS), BUCKET_OUT_OF_RANGE),
            ((b"b".to_vec(), HOUR_MS), BUCKET_OUT_OF_RANGE),
            ((b"c".to_vec(), HOUR_MS), 9),
        ]
        .into_iter()
        .collect();
        assert_eq!(read_all(&bytes), expect);
        let file = WindowFile::open(&bytes).unwrap();
        let merged = merge_files(&[file], HOUR_MS, 2 * HOUR_MS, &|_, _| Some(HOUR_MS)).unwrap();
        assert_eq!(read_all(&merged), expect);
        let range = Range {
            from_ms: HOUR_MS,
            to_ms: HOUR_MS + MINUTE_MS,
            step_ms: MINUTE_MS,
        };
        let disk = DiskRange {
            from_ms: HOUR_MS,
            to_ms: HOUR_MS + MINUTE_MS,
        };
        for (name, expect) in [
            (&b"a"[..], Err(crate::window::WindowError::Overflow)),
            (b"c", Ok(vec![9])),
        ] {
            let mut partial = Partial::new(range);
            WindowFile::open(&merged)
                .unwrap()
                .add_to(name, disk, &mut partial)
                .unwrap();
            assert_eq!(partial.finish(), expect);
        }
    }

    #[test]
    fn tier_rollup_coarsens_old_buckets_and_drops_expired_ones() {
        let config = WindowConfig::default();
        let now = 40 * 24 * HOUR_MS;
        let rollup = tier_rollup(&config, now);
        let tiers = Tiers::default();
        let fine_from = tiers.fine_from_ms(now);
        let slices = vec![
            SealedSlice::from_entries(fine_from + 5_000, [(&b"a"[..], 1)]),
            SealedSlice::from_entries(fine_from - 5_000, [(&b"a"[..], 2)]),
            SealedSlice::from_entries(fine_from - 65_000, [(&b"a"[..], 4)]),
            SealedSlice::from_entries(fine_from - 59_000, [(&b"a"[..], 8)]),
            SealedSlice::from_entries(tiers.kept_from_ms(now) - 1_000, [(&b"a"[..], 16)]),
        ];
        let from = tiers.kept_from_ms(now) - HOUR_MS;
        let bytes = encode_slices(&slices, from, now, &rollup);
        let model = read_all(&bytes);
        let expect: Model = [
            ((b"a".to_vec(), fine_from - 2 * MINUTE_MS), 4),
            ((b"a".to_vec(), fine_from - MINUTE_MS), 10),
            ((b"a".to_vec(), fine_from + 5_000), 1),
        ]
        .into_iter()
        .collect();
        assert_eq!(model, expect);
    }
}
