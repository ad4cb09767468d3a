//! Recovery classification on byte images of logs the writer produced: a clean end, torn tails at
//! every byte of the last batch, corruption in the middle, damaged headers, lsn gaps, snapshots.

mod common;

use std::collections::BTreeMap;

use common::*;
use futures_lite::future::block_on;
use tally_wal::limits::{BATCH_HEADER_BYTES, BLOCK_BYTES, SEGMENT_HEADER_BYTES};
use tally_wal::segment::{parse_segment_file_name, SEGMENT_HEADER_COPY_AT};
use tally_wal::snapshot::snapshot_file_name;
use tally_wal::{MemStorage, SegmentReader, Step, WalError};

type Files = BTreeMap<String, Vec<u8>>;

/// A log without snapshots over several segments.
fn log_without_snapshots(steps: u64) -> (Files, Run) {
    let storage = MemStorage::new();
    let (wal, _, _) = open(&storage).unwrap();
    let run = block_on(workload_with(&wal, steps, 1_000, false));
    assert!(!run.stopped_early);
    (files(&storage), run)
}

fn segments(files: &Files) -> Vec<String> {
    files
        .keys()
        .filter(|n| parse_segment_file_name(n).is_some())
        .cloned()
        .collect()
}

/// (offset, used bytes, last lsn) of every batch of a segment image.
fn batches(image: &[u8]) -> Vec<(u64, u64, u64)> {
    let mut reader = SegmentReader::new(image, SHARD).unwrap();
    let mut out = Vec::new();
    while let Step::Batch {
        offset,
        first_lsn,
        record_count,
        ..
    } = reader.next_batch(&mut |_| {}).unwrap()
    {
        let body_len = u32::from_le_bytes(image[offset as usize + 4..offset as usize + 8].try_into().unwrap());
        out.push((
            offset,
            BATCH_HEADER_BYTES + u64::from(body_len),
            first_lsn + u64::from(record_count) - 1,
        ));
    }
    out
}

fn corruption_at(result: Result<impl std::fmt::Debug, WalError>) -> (String, u64) {
    match result {
        Err(WalError::Corruption { file, offset, .. }) => (file, offset),
        other => panic!("expected corruption, got {other:?}"),
    }
}

#[test]
fn a_clean_log_recovers_every_record() {
    let (files, run) = log_without_snapshots(40);
    assert!(segments(&files).len() >= 3, "the log spans several segments");
    let (recovered, last) = recover_checked(&files).unwrap();
    assert_eq!(last, run.acked);
    assert_eq!(recovered.torn_tail, None);
    assert_eq!(recovered.records_replayed, run.acked);
    // At most the preallocated next segment is left over, and goes.
    assert!(
        recovered.stale_files.iter().all(|f| f == "next.wal.pre"),
        "{:?}",
        recovered.stale_files
    );
    let open = recovered.append.segment.unwrap();
    assert_eq!(open.file, *segments(&files).last().unwrap());
    assert_eq!(open.zero_to, open.offset);
}

#[test]
fn a_torn_last_batch_is_cut_at_every_byte_whether_truncated_or_flipped() {
    let (files, _) = log_without_snapshots(40);
    let last_segment = segments(&files).last().unwrap().clone();
    let image = &files[&last_segment];
    let all = batches(image);
    assert!(all.len() >= 2);
    let (offset, used, _) = *all.last().unwrap();
    let lsn_before = all[all.len() - 2].2;
    assert!(used > BLOCK_BYTES, "the last batch spans blocks ({used} bytes)");
    let mut cases = 0;
    let mut damaged = files.clone();
    let original = files[&last_segment].clone();
    for byte in offset..offset + used {
        for what in ["truncated", "flipped"] {
            let image = damaged.get_mut(&last_segment).unwrap();
            image.copy_from_slice(&original);
            if what == "truncated" {
                // A torn write that stopped at `byte`: the rest of the batch never reached the disk.
                image[byte as usize..(offset + used) as usize].fill(0);
            } else {
                image[byte as usize] ^= 1 << (byte % 8);
            }
            let (recovered, last) =
                recover_checked(&damaged).unwrap_or_else(|e| panic!("{what} at byte {byte}: recovery failed: {e}"));
            assert_eq!(last, lsn_before, "{what} at byte {byte}: every earlier batch is kept");
            let append = recovered.append.segment.as_ref().unwrap();
            assert_eq!((append.file.as_str(), append.offset), (last_segment.as_str(), offset));
            match &recovered.torn_tail {
                Some(torn) => {
                    assert_eq!((torn.file.as_str(), torn.offset), (last_segment.as_str(), offset));
                    assert!(torn.damaged_to > offset);
                }
                None => assert!(
                    what == "truncated" && byte == offset,
                    "{what} at byte {byte} went unnoticed"
                ),
            }
            cases += 1;
        }
    }
    assert!(cases > 2 * BLOCK_BYTES as usize);
}

#[test]
fn appending_after_a_torn_tail_zeroes_its_remains() {
    let (files, _) = log_without_snapshots(40);
    let last_segment = segments(&files).last().unwrap().clone();
    let (offset, used, _) = *batches(&files[&last_segment]).last().unwrap();
    // Keep only the second block of the last batch: the header block never made it.
    let mut damaged = files.clone();
    let image = damaged.get_mut(&last_segment).unwrap();
    image[offset as usize..(offset + BLOCK_BYTES) as usize].fill(0);
    image[offset as usize + 100] = 1;
    assert!(used > BLOCK_BYTES);
    let storage = MemStorage::from_images(&damaged);
    let (wal, recovered, last) = open(&storage).unwrap();
    let torn = recovered.torn_tail.clone().unwrap();
    assert_eq!(torn.damaged_to, (offset + used).next_multiple_of(BLOCK_BYTES));
    let zeroed = storage.image(&last_segment).unwrap();
    assert!(zeroed[offset as usize..torn.damaged_to as usize]
        .iter()
        .all(|&b| b == 0));
    // One small batch, then a clean restart: no torn tail left behind it.
    wal.append(last + 1, &record_for(last + 1));
    assert_eq!(block_on(wal.commit_batch(99_000_000)).unwrap(), last + 1);
    drop(wal);
    storage.crash(None);
    let (again, last_again) = recover_checked(&storage).unwrap();
    assert_eq!(last_again, last + 1);
    assert_eq!(again.torn_tail, None);
}

#[test]
fn a_flip_in_any_earlier_batch_is_corruption_naming_file_and_offset() {
    let (files, _) = log_without_snapshots(40);
    let names = segments(&files);
    let mut checked = 0;
    for (i, name) in names.iter().enumerate() {
        let all = batches(&files[name]);
        let is_last_segment = i + 1 == names.len();
        for (j, &(offset, used, _)) in all.iter().enumerate() {
            if is_last_segment && j + 1 == all.len() {
                continue; // the last batch of the log: a torn tail, tested above
            }
            for byte in [offset, offset + 9, offset + used / 2, offset + used - 1] {
                let mut damaged = files.clone();
                damaged.get_mut(name).unwrap()[byte as usize] ^= 0x04;
                let (file, at) = corruption_at(recover_checked(&damaged));
                assert_eq!(
                    (file.as_str(), at),
                    (name.as_str(), offset),
                    "flip at byte {byte} of {name}"
                );
                checked += 1;
            }
        }
    }
    assert!(checked > 40);
}

#[test]
fn a_zeroed_block_in_the_middle_is_corruption_not_a_clean_end() {
    let (files, _) = log_without_snapshots(40);
    let last_segment = segments(&files).last().unwrap().clone();
    let all = batches(&files[&last_segment]);
    let (offset, _, _) = all[0];
    let mut damaged = files.clone();
    damaged.get_mut(&last_segment).unwrap()[offset as usize..(offset + BLOCK_BYTES) as usize].fill(0);
    assert_eq!(corruption_at(recover_checked(&damaged)), (last_segment, offset));
}

#[test]
fn segment_headers_survive_one_flip_and_a_damaged_header_with_batches_behind_it_is_corruption() {
    let (files, run) = log_without_snapshots(40);
    let names = segments(&files);
    for name in [&names[0], &names[names.len() / 2], names.last().unwrap()] {
        // Not the salt (bytes 24..32): with both copies of the salt damaged, the batches behind the
        // header cannot be recognised (docs/wal.md lists this residual risk).
        for byte in [0usize, 9, 17, 35, 44, 51] {
            // One copy damaged: the other is used, nothing is lost.
            let mut one = files.clone();
            one.get_mut(name).unwrap()[byte] ^= 0x80;
            let (_, last) = recover_checked(&one).unwrap();
            assert_eq!(last, run.acked);
            // Both copies damaged: the batches behind it are still found, so this is corruption.
            let mut both = one.clone();
            both.get_mut(name).unwrap()[SEGMENT_HEADER_COPY_AT + byte] ^= 0x80;
            assert_eq!(
                corruption_at(recover_checked(&both)),
                (name.clone(), 0),
                "header of {name} byte {byte}"
            );
        }
    }
}

#[test]
fn a_newest_segment_with_a_torn_header_and_no_batches_is_a_torn_tail() {
    let (mut files, run) = log_without_snapshots(40);
    let names = segments(&files);
    let last = names.last().unwrap();
    // A rotation torn mid-write: only part of the header block and nothing of the batch reached disk.
    let first = parse_segment_file_name(last).unwrap();
    let mut torn = files[last].clone();
    torn[SEGMENT_HEADER_BYTES as usize..].fill(0);
    torn[SEGMENT_HEADER_COPY_AT..SEGMENT_HEADER_BYTES as usize].fill(0);
    torn[20] ^= 1;
    let name = tally_wal::segment::segment_file_name(run.acked + 1);
    files.insert(name.clone(), torn);
    let (recovered, lsn_last) = recover_checked(&files).unwrap();
    assert_eq!(lsn_last, run.acked);
    assert!(first <= run.acked);
    let tail = recovered.torn_tail.unwrap();
    assert_eq!((tail.file.as_str(), tail.offset), (name.as_str(), 0));
    assert!(recovered.stale_files.contains(&name));
    assert_eq!(recovered.append.segment, None, "appending starts a new segment");
    assert_eq!(recovered.append.lsn_next, run.acked + 1);
}

#[test]
fn a_missing_segment_is_an_lsn_gap() {
    let (files, _) = log_without_snapshots(40);
    let names = segments(&files);
    assert!(names.len() >= 3);
    let mut damaged = files.clone();
    damaged.remove(&names[1]);
    assert_eq!(corruption_at(recover_checked(&damaged)), (names[2].clone(), 0));
    // Without the first segment and without a snapshot, the start of the log is missing.
    let mut headless = files.clone();
    headless.remove(&names[0]);
    assert_eq!(corruption_at(recover_checked(&headless)).0, names[1]);
}

#[test]
fn the_newest_valid_snapshot_is_used_and_a_damaged_one_falls_back() {
    let (storage, run) = written_log(45);
    let files = files(&storage);
    let snaps: Vec<&String> = files.keys().filter(|n| n.starts_with("snap-")).collect();
    assert_eq!(snaps.len(), 2, "two snapshots are kept: {snaps:?}");
    let (recovered, last) = recover_checked(&files).unwrap();
    assert_eq!(last, run.acked);
    let newest = recovered.snapshot.clone().unwrap();
    assert_eq!(newest.lsn, run.snapshot_acked.unwrap());
    assert!(recovered.records_replayed < last, "replay starts after the snapshot");
    // Retention deleted the segments both snapshots cover: the log no longer starts at lsn 1.
    let first = parse_segment_file_name(&segments(&files)[0]).unwrap();
    assert!(first > 1, "old segments were deleted");

    let mut damaged = files.clone();
    damaged.get_mut(&newest.file).unwrap()[BLOCK_BYTES as usize + newest.body.len() / 2] ^= 1;
    let (fallback, last_fallback) = recover_checked(&damaged).unwrap();
    assert_eq!(
        last_fallback, run.acked,
        "the older snapshot plus a longer replay reach the same end"
    );
    let older = fallback.snapshot.unwrap();
    assert!(older.lsn < newest.lsn);
    assert_eq!(fallback.bad_snapshots.len(), 1);
    assert_eq!(fallback.bad_snapshots[0].0, newest.file);
    assert!(fallback.records_replayed > recovered.records_replayed);

    // With both damaged, the log alone does not reach back to lsn 1: refuse.
    let older_file = snapshot_file_name(older.lsn);
    damaged.get_mut(&older_file).unwrap()[5] ^= 1;
    let err = recover_checked(&damaged).unwrap_err();
    assert!(matches!(err, WalError::Corruption { .. }), "{err}");
}

#[test]
fn a_log_that_ends_before_its_snapshot_is_refused() {
    let (storage, run) = written_log(45);
    let mut files = files(&storage);
    let snap = run.snapshot_acked.unwrap();
    // A snapshot claiming more than the log holds (it was written ahead of the log's durability).
    files.insert(
        snapshot_file_name(run.acked + 10),
        tally_wal::snapshot::encode_snapshot(SHARD, run.acked + 10, b"x"),
    );
    let err = recover_checked(&files).unwrap_err();
    assert!(matches!(err, WalError::Corruption { .. }), "{err}");
    assert!(snap <= run.acked);
}

#[test]
fn another_shards_files_are_refused() {
    let (files, _) = log_without_snapshots(10);
    let err = tally_wal::recover(&files, SHARD + 1, |_| {}).unwrap_err();
    assert!(matches!(err, WalError::Corruption { offset: 0, .. }), "{err}");
}

#[test]
fn reopening_continues_the_log_into_new_segments() {
    let (files, run) = log_without_snapshots(40);
    let storage = MemStorage::from_images(&files);
    let (wal, _, last) = open(&storage).unwrap();
    assert_eq!(last, run.acked);
    let more = block_on(workload_with(&wal, 30, 50_000_000, false));
    assert!(!more.stopped_early);
    assert!(wal.segment_files().len() > segments(&files).len());
    drop(wal);
    storage.crash(None);
    let (_, last_again) = recover_checked(&storage).unwrap();
    assert_eq!(last_again, more.acked);
}

mod damage {
    use super::*;
    use proptest::prelude::*;

    #[derive(Debug, Clone)]
    enum Damage {
        Flip { file: usize, at: usize, bit: u8 },
        Zero { file: usize, at: usize, len: usize },
        Truncate { file: usize, at: usize },
        Remove { file: usize },
    }

    fn arb_damage() -> impl Strategy<Value = Damage> {
        prop_oneof![
            4 => (any::<usize>(), any::<usize>(), 0u8..8).prop_map(|(file, at, bit)| Damage::Flip { file, at, bit }),
            2 => (any::<usize>(), any::<usize>(), 1usize..9000).prop_map(|(file, at, len)| Damage::Zero { file, at, len }),
            1 => (any::<usize>(), any::<usize>()).prop_map(|(file, at)| Damage::Truncate { file, at }),
            1 => any::<usize>().prop_map(|file| Damage::Remove { file }),
        ]
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 200, ..ProptestConfig::default() })]

        /// Whatever the damage, recovery never panics, and when it succeeds what it returns is a
        /// prefix of the log that was written: damage is cut off or refused, never served.
        #[test]
        fn recovery_of_a_damaged_log_never_panics_and_never_invents(damages in proptest::collection::vec(arb_damage(), 1..4)) {
            let (storage, run) = written_log(30);
            let mut files = files(&storage);
            for damage in &damages {
                let names: Vec<String> = files.keys().cloned().collect();
                let pick = |i: usize| names[i % names.len()].clone();
                match *damage {
                    Damage::Flip { file, at, bit } => {
                        let image = files.get_mut(&pick(file)).unwrap();
                        if !image.is_empty() {
                            let at = at % image.len();
                            image[at] ^= 1 << bit;
                        }
                    }
                    Damage::Zero { file, at, len } => {
                        let image = files.get_mut(&pick(file)).unwrap();
                        if !image.is_empty() {
                            let at = at % image.len();
                            let end = (at + len).min(image.len());
                            image[at..end].fill(0);
                        }
                    }
                    Damage::Truncate { file, at } => {
                        let image = files.get_mut(&pick(file)).unwrap();
                        let at = at % (image.len() + 1);
                        image.truncate(at);
                    }
                    Damage::Remove { file } => {
                        files.remove(&pick(file));
                    }
                }
            }
            // recover_checked asserts every record and snapshot body against what was written.
            if let Ok((_, last)) = recover_checked(&files) {
                prop_assert!(last <= run.acked);
            }
        }
    }
}
