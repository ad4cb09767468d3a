//! Damage at the end of the log against the acknowledged mark: a truncated last segment, a zeroed
//! last used block, a flipped byte in the last batch, a missing newest segment, each with the mark
//! below the damage (a torn, unacknowledged tail: cut and reported) and at or above it (records
//! known durable are gone: refused, naming the lost lsns). Then the mark's own crash safety: torn
//! mark writes, reopening, a snapshot install that moves the log back, and a full disk.

mod common;

use std::collections::BTreeMap;

use common::*;
use futures_lite::future::block_on;
use tally_wal::limits::{BATCH_HEADER_BYTES, BLOCK_BYTES};
use tally_wal::segment::parse_segment_file_name;
use tally_wal::{MemStorage, Room, SegmentReader, Step, Wal, WalError, ACK_MARK_FILE_NAME};

type Files = BTreeMap<String, Vec<u8>>;

/// A log whose last batch is the only one its test damages.
struct Log {
    files: Files,
    /// The segment holding the last batch, and where that batch lies.
    last_segment: String,
    offset: u64,
    used: u64,
    /// The log's end before the last batch, and after it.
    lsn_before: u64,
    lsn_last: u64,
}

/// The workload's log, then a mark at its end, then one last batch of `last_records` records; the
/// mark is written once more after the last batch when `mark_covers_last` (the mark then holds
/// `lsn_last`, else `lsn_before`).
fn marked_log(last_records: u64, mark_covers_last: bool) -> Log {
    let storage = MemStorage::new();
    let (wal, _, _) = open(&storage).unwrap();
    let run = block_on(workload_with(&wal, 40, 1_000, false));
    assert!(!run.stopped_early);
    assert_eq!(block_on(wal.write_ack_mark(50_000)).unwrap(), run.acked);
    for lsn in run.acked + 1..=run.acked + last_records {
        assert_eq!(wal.room(), Room::Ready);
        wal.append(lsn, &record_for(lsn));
    }
    let lsn_last = block_on(wal.commit_batch(60_000)).unwrap();
    assert_eq!(lsn_last, run.acked + last_records);
    if mark_covers_last {
        assert_eq!(block_on(wal.write_ack_mark(60_001)).unwrap(), lsn_last);
    }
    drop(wal);
    let files = files(&storage);
    let last_segment = files
        .keys()
        .filter(|n| parse_segment_file_name(n).is_some())
        .max()
        .unwrap()
        .clone();
    let (offset, used) = last_batch(&files[&last_segment]);
    Log {
        files,
        last_segment,
        offset,
        used,
        lsn_before: run.acked,
        lsn_last,
    }
}

/// (offset, bytes) of the last batch of a segment image.
fn last_batch(image: &[u8]) -> (u64, u64) {
    let mut reader = SegmentReader::new(image, SHARD).unwrap();
    let mut last = None;
    while let Step::Batch { offset, .. } = reader.next_batch(&mut |_| {}).unwrap() {
        let body_len = u32::from_le_bytes(image[offset as usize + 4..offset as usize + 8].try_into().unwrap());
        last = Some((offset, BATCH_HEADER_BYTES + u64::from(body_len)));
    }
    last.unwrap()
}

impl Log {
    fn damaged(&self, damage: impl FnOnce(&mut Vec<u8>)) -> Files {
        let mut files = self.files.clone();
        damage(files.get_mut(&self.last_segment).unwrap());
        files
    }

    /// The last block the last batch uses.
    fn last_used_block(&self) -> u64 {
        (self.offset + self.used).next_multiple_of(BLOCK_BYTES) - BLOCK_BYTES
    }
}

/// Recovery refused because acknowledged records are gone: (file, lsn_last, lsn_acked).
fn acked_lost(result: Result<impl std::fmt::Debug, WalError>) -> (String, u64, u64, String) {
    match result {
        Err(e @ WalError::AckedLost { .. }) => {
            let message = e.to_string();
            let WalError::AckedLost {
                file,
                lsn_last,
                lsn_acked,
                ..
            } = e
            else {
                unreachable!()
            };
            (file, lsn_last, lsn_acked, message)
        }
        other => panic!("expected acknowledged loss, got {other:?}"),
    }
}

fn zero(image: &mut [u8], from: u64, to: u64) {
    image[from as usize..to as usize].fill(0);
}

// --- a truncated last segment -------------------------------------------------------------------

#[test]
fn a_truncated_last_segment_below_the_mark_is_refused_naming_the_lost_lsns() {
    let log = marked_log(80, true);
    assert!(log.used > BLOCK_BYTES, "the last batch spans blocks");
    for cut in [log.offset, log.offset + BLOCK_BYTES, log.offset + log.used - 1] {
        let damaged = log.damaged(|image| image.truncate(cut as usize));
        let (file, lsn_last, lsn_acked, message) = acked_lost(recover_checked(&damaged));
        assert_eq!(file, log.last_segment, "cut at {cut}");
        assert_eq!((lsn_last, lsn_acked), (log.lsn_before, log.lsn_last), "cut at {cut}");
        let lost = format!("lsns {}..={} were durable", log.lsn_before + 1, log.lsn_last);
        assert!(message.contains(&lost), "{message}");
        assert!(message.contains("truncated"), "{message}");
    }
}

#[test]
fn a_truncated_last_segment_above_the_mark_is_still_damage_not_a_torn_tail() {
    let log = marked_log(80, false);
    // Through the last batch, and behind every batch (where only zeros were): a crash never
    // shortens a segment, so both are refused, with the records it holds named.
    for cut in [
        log.offset + BLOCK_BYTES,
        log.offset + log.used.next_multiple_of(BLOCK_BYTES),
    ] {
        let damaged = log.damaged(|image| image.truncate(cut as usize));
        match recover_checked(&damaged) {
            Err(WalError::Corruption { file, detail, .. }) => {
                assert_eq!(file, log.last_segment);
                assert!(detail.contains("truncated"), "{detail}");
                assert!(detail.contains("acknowledged mark"), "{detail}");
            }
            other => panic!("cut at {cut}: expected corruption, got {other:?}"),
        }
    }
}

// --- a zeroed last used block -------------------------------------------------------------------

#[test]
fn a_zeroed_last_used_block_below_the_mark_is_refused() {
    let log = marked_log(80, true);
    let last = log.last_used_block();
    assert!(last > log.offset, "the last batch spans blocks");
    for (from, what) in [(last, "its last block"), (log.offset, "its first block")] {
        let damaged = log.damaged(|image| zero(image, from, from + BLOCK_BYTES));
        let (file, lsn_last, lsn_acked, _) = acked_lost(recover_checked(&damaged));
        assert_eq!(
            (file.as_str(), lsn_last, lsn_acked),
            (log.last_segment.as_str(), log.lsn_before, log.lsn_last),
            "{what}"
        );
    }
    // A batch of one block, zeroed whole, looks exactly like the end of the log: only the mark
    // tells that it was there.
    let small = marked_log(1, true);
    assert_eq!(small.used.next_multiple_of(BLOCK_BYTES), BLOCK_BYTES);
    let damaged = small.damaged(|image| zero(image, small.offset, small.offset + BLOCK_BYTES));
    let (_, lsn_last, lsn_acked, message) = acked_lost(recover_checked(&damaged));
    assert_eq!((lsn_last, lsn_acked), (small.lsn_before, small.lsn_last));
    assert!(message.contains("ends in zeros"), "{message}");
}

#[test]
fn a_zeroed_last_used_block_above_the_mark_is_cut_and_reported() {
    let log = marked_log(80, false);
    for from in [log.last_used_block(), log.offset] {
        let damaged = log.damaged(|image| zero(image, from, from + BLOCK_BYTES));
        let (recovered, last) = recover_checked(&damaged).unwrap();
        assert_eq!(last, log.lsn_before, "zeroed block at {from}");
        assert_eq!(recovered.lsn_acked, log.lsn_before);
        let torn = recovered
            .torn_tail
            .unwrap_or_else(|| panic!("zeroed block at {from}: the cut is reported"));
        assert_eq!(
            (torn.file.as_str(), torn.offset),
            (log.last_segment.as_str(), log.offset)
        );
        assert!(torn.damaged_to > log.offset);
    }
}

// --- a flipped byte in the last batch -----------------------------------------------------------

#[test]
fn a_flipped_byte_in_the_last_batch_below_the_mark_is_refused() {
    let log = marked_log(80, true);
    for at in [
        log.offset,
        log.offset + 9,
        log.offset + log.used / 2,
        log.offset + log.used - 1,
    ] {
        let damaged = log.damaged(|image| image[at as usize] ^= 0x20);
        let (file, lsn_last, lsn_acked, message) = acked_lost(recover_checked(&damaged));
        assert_eq!(
            (file.as_str(), lsn_last, lsn_acked),
            (log.last_segment.as_str(), log.lsn_before, log.lsn_last),
            "flip at {at}"
        );
        assert!(message.contains(&format!("at byte {}", log.offset)), "{message}");
    }
}

#[test]
fn a_flipped_byte_in_the_last_batch_above_the_mark_is_a_torn_tail_within_the_bound() {
    let log = marked_log(80, false);
    for at in [
        log.offset,
        log.offset + 9,
        log.offset + log.used / 2,
        log.offset + log.used - 1,
    ] {
        let damaged = log.damaged(|image| image[at as usize] ^= 0x20);
        let (recovered, last) = recover_checked(&damaged).unwrap();
        assert_eq!(last, log.lsn_before, "flip at {at}");
        assert_eq!(recovered.lsn_acked, log.lsn_before, "the bound is reported");
        let torn = recovered.torn_tail.unwrap();
        assert_eq!(
            (torn.file.as_str(), torn.offset),
            (log.last_segment.as_str(), log.offset)
        );
    }
}

// --- a missing newest segment -------------------------------------------------------------------

#[test]
fn a_missing_newest_segment_below_the_mark_is_refused() {
    let log = marked_log(80, true);
    let segments: Vec<&String> = log
        .files
        .keys()
        .filter(|n| parse_segment_file_name(n).is_some())
        .collect();
    assert!(segments.len() >= 3);
    let mut damaged = log.files.clone();
    damaged.remove(&log.last_segment);
    let first_lost = parse_segment_file_name(&log.last_segment).unwrap();
    let (_, lsn_last, lsn_acked, _) = acked_lost(recover_checked(&damaged));
    assert_eq!((lsn_last, lsn_acked), (first_lost - 1, log.lsn_last));
}

#[test]
fn a_log_without_any_segment_below_the_mark_is_refused() {
    let log = marked_log(1, true);
    let damaged: Files = log
        .files
        .iter()
        .filter(|(n, _)| parse_segment_file_name(n).is_none())
        .map(|(n, b)| (n.clone(), b.clone()))
        .collect();
    let (_, lsn_last, lsn_acked, _) = acked_lost(recover_checked(&damaged));
    assert_eq!((lsn_last, lsn_acked), (0, log.lsn_last));
}

// --- the mark itself ----------------------------------------------------------------------------

#[test]
fn a_damaged_mark_falls_back_to_its_other_copy_or_to_no_bound() {
    let log = marked_log(80, true);
    // The mark was written twice (sequence 1 in block 0, then 2 in block 1). A torn write of the
    // newest copy leaves the older one, which bounds the log at lsn_before.
    let mut files = log.files.clone();
    files.get_mut(ACK_MARK_FILE_NAME).unwrap()[BLOCK_BYTES as usize + 20] ^= 1;
    let (recovered, last) = recover_checked(&files).unwrap();
    assert_eq!((last, recovered.lsn_acked), (log.lsn_last, log.lsn_before));
    assert_eq!(recovered.ack_mark_damaged.len(), 1);
    // Both copies damaged: no bound, reported; damage at the end is then taken for a torn tail
    // (docs/wal.md lists this residual risk).
    files.get_mut(ACK_MARK_FILE_NAME).unwrap()[20] ^= 1;
    files.get_mut(&log.last_segment).unwrap()[log.offset as usize + 9] ^= 1;
    let (recovered, last) = recover_checked(&files).unwrap();
    assert_eq!((last, recovered.lsn_acked), (log.lsn_before, 0));
    assert_eq!(recovered.ack_mark_damaged.len(), 2);
}

#[test]
fn the_mark_continues_across_restarts_and_survives_a_torn_write_of_its_next_copy() {
    let storage = MemStorage::new();
    let (wal, _, _) = open(&storage).unwrap();
    let first = block_on(workload_marked(&wal, 10, 1_000));
    assert_eq!(first.marked, first.acked);
    drop(wal);
    storage.crash(None);
    for round in 0..3u64 {
        let (wal, recovered, last) = open(&storage).unwrap();
        assert_eq!(recovered.lsn_acked, last, "round {round}: the mark holds the log's end");
        assert!(recovered.ack_mark_damaged.is_empty());
        let run = block_on(workload_marked(&wal, 5, 100_000 * (round + 1)));
        assert!(!run.stopped_early);
        assert!(run.marked > last);
        // A crash in the middle of the next mark write: it tears, the copy before it holds.
        let lsn = run.acked + 1;
        wal.append(lsn, &record_for(lsn));
        block_on(wal.commit_batch(200_000 * (round + 1))).unwrap();
        storage.crash_at(1);
        assert!(block_on(wal.write_ack_mark(1)).is_err());
        drop(wal);
        storage.crash(Some(round));
        let (again, last_again) = recover_checked(&storage).unwrap();
        assert_eq!(last_again, lsn);
        assert!(
            again.lsn_acked == run.marked || again.lsn_acked == lsn,
            "round {round}: bound {} is the older copy {} or the torn one made it ({lsn})",
            again.lsn_acked,
            run.marked
        );
    }
}

#[test]
fn installing_a_snapshot_below_the_mark_never_leaves_the_old_mark_behind() {
    // A replica resynchronised to an lsn below its own end: at every crash point of the install,
    // recovery either finds the old log or the new one, never the old mark over the new log.
    let build = || {
        let storage = MemStorage::new();
        let (wal, _, _) = open(&storage).unwrap();
        let run = block_on(workload_marked(&wal, 20, 1_000));
        assert_eq!(run.marked, run.acked);
        (storage, wal, run)
    };
    let (storage, wal, run) = build();
    let ops_before = storage.ops();
    let target = run.acked / 2;
    block_on(wal.install_snapshot(target, &snapshot_body(target))).unwrap();
    let install_ops = storage.ops() - ops_before;
    drop(wal);
    let (recovered, last) = recover_checked(&storage).unwrap();
    assert_eq!((last, recovered.lsn_acked), (target, 0));
    for crash_at in 1..=install_ops + 1 {
        for seed in [None, Some(crash_at)] {
            let (storage, wal, run) = build();
            storage.crash_at(crash_at);
            let _ = block_on(wal.install_snapshot(target, &snapshot_body(target)));
            drop(wal);
            storage.crash(seed);
            let (recovered, last) = recover_checked(&storage)
                .unwrap_or_else(|e| panic!("crash at op {crash_at} of the install, seed {seed:?}: {e}"));
            // The old log, a prefix of it (its removal was cut short), or the new one.
            assert!(last <= run.acked, "log ends at {last}");
            assert!(recovered.lsn_acked <= last);
        }
    }
}

#[test]
fn without_space_for_the_mark_the_log_runs_unmarked_until_space_returns() {
    let storage = MemStorage::new();
    storage.set_capacity(Some(0));
    let recovered = tally_wal::recover(&storage, SHARD, |_| {}).unwrap();
    let wal = block_on(Wal::open(storage.clone(), config(), &recovered)).unwrap();
    assert!(!storage.names().contains(&ACK_MARK_FILE_NAME.to_string()));
    assert_eq!(block_on(wal.write_ack_mark(1)).unwrap(), 0, "no file, nothing written");
    assert!(!wal.is_poisoned());
    storage.set_capacity(None);
    block_on(wal.maintain(2)).unwrap();
    let run = block_on(workload_marked(&wal, 5, 1_000));
    assert_eq!(run.marked, run.acked);
    drop(wal);
    let (recovered, last) = recover_checked(&storage).unwrap();
    assert_eq!(recovered.lsn_acked, last);
}

#[test]
fn a_failed_mark_write_poisons_the_log() {
    let storage = MemStorage::new();
    let (wal, _, _) = open(&storage).unwrap();
    let run = block_on(workload_marked(&wal, 5, 1_000));
    let lsn = run.acked + 1;
    wal.append(lsn, &record_for(lsn));
    block_on(wal.commit_batch(9_000)).unwrap();
    storage.fail_sync(1);
    let err = block_on(wal.write_ack_mark(9_001)).unwrap_err();
    assert!(matches!(err, WalError::Io { .. }), "{err}");
    assert!(wal.is_poisoned());
    assert_eq!(wal.lsn_marked(), run.marked, "a failed mark write moves nothing");
}
