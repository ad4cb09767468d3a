//! Injected I/O errors: a failed write or fsync poisons the log for good (no retry, no more acks) and
//! a restart recovers every acknowledged record; running out of space for the next segment shows up
//! as DiskFull while what is buffered still fits, and clears when space returns.

mod common;

use common::*;
use futures_lite::future::block_on;
use tally_wal::{MemStorage, Room, WalError};

fn append_some(wal: &tally_wal::Wal<MemStorage>, count: u64) -> u64 {
    let mut lsn = wal.lsn_appended();
    for _ in 0..count {
        assert_eq!(wal.room(), Room::Ready);
        lsn += 1;
        wal.append(lsn, &record_for(lsn));
    }
    lsn
}

/// Everything after the first failure is refused, and touches no storage.
fn assert_poisoned_for_good(storage: &MemStorage, wal: &tally_wal::Wal<MemStorage>) {
    assert!(wal.is_poisoned());
    let ops = storage.ops();
    append_some_unchecked(wal);
    assert!(matches!(block_on(wal.commit_batch(1)), Err(WalError::Poisoned)));
    assert!(matches!(block_on(wal.maintain(1)), Err(WalError::Poisoned)));
    assert!(matches!(block_on(wal.write_snapshot(0, b"")), Err(WalError::Poisoned)));
    assert_eq!(storage.ops(), ops, "a poisoned log never retries a write or an fsync");
}

fn append_some_unchecked(wal: &tally_wal::Wal<MemStorage>) {
    let lsn = wal.lsn_appended() + 1;
    wal.append(lsn, &record_for(lsn));
    assert_eq!(wal.lsn_appended(), lsn - 1, "appends to a poisoned log are dropped");
}

#[test]
fn a_failed_write_poisons_and_recovery_keeps_every_acked_record() {
    for nth in 1..=3 {
        let storage = MemStorage::new();
        let (wal, _, _) = open(&storage).unwrap();
        let run = block_on(workload(&wal, 20, 1_000));
        storage.fail_write(nth);
        let mut acked = run.acked;
        let mut failed = None;
        for step in 0..5 {
            append_some(&wal, 10);
            match block_on(wal.commit_batch(100_000 + step)) {
                Ok(lsn) => acked = lsn,
                Err(e) => {
                    failed = Some(e);
                    break;
                }
            }
        }
        assert!(matches!(failed, Some(WalError::Io { op: "write", .. })), "{failed:?}");
        assert_eq!(wal.lsn_durable(), acked, "the failed batch is not acked");
        assert_poisoned_for_good(&storage, &wal);
        drop(wal);
        storage.crash(None);
        let (_, last) = recover_checked(&storage).unwrap();
        assert_eq!(last, acked);
    }
}

#[test]
fn a_failed_fsync_poisons_and_the_unsynced_batch_is_never_acked() {
    for seed in [None, Some(1), Some(2), Some(3)] {
        let storage = MemStorage::new();
        let (wal, _, _) = open(&storage).unwrap();
        let run = block_on(workload(&wal, 20, 1_000));
        let attempted = append_some(&wal, 30);
        storage.fail_sync(1);
        let err = block_on(wal.commit_batch(200_000)).unwrap_err();
        assert!(matches!(err, WalError::Io { op: "fdatasync", .. }), "{err}");
        assert_eq!(wal.lsn_durable(), run.acked);
        assert_poisoned_for_good(&storage, &wal);
        drop(wal);
        // The written batch may or may not have reached the disk; either way the log is a prefix.
        storage.crash(seed);
        let (recovered, last) = recover_checked(&storage).unwrap();
        assert_prefix(&Run { attempted, ..run }, last, &recovered, &format!("seed {seed:?}"));
    }
}

#[test]
fn a_failed_directory_fsync_at_rotation_poisons() {
    let storage = MemStorage::new();
    let (wal, _, _) = open(&storage).unwrap();
    let mut acked = 0;
    for step in 0..200u64 {
        append_some(&wal, 60);
        let segments = wal.segment_files().len();
        // The batch's fdatasync is the first sync of a commit; only a rotating commit has a second
        // (the directory fsync after the rename).
        storage.fail_sync(2);
        match block_on(wal.commit_batch(step)) {
            Ok(lsn) => {
                acked = lsn;
                assert_eq!(wal.segment_files().len(), segments, "this commit did not rotate");
                storage.clear_faults();
                block_on(wal.maintain(step)).unwrap();
            }
            Err(e) => {
                assert!(matches!(e, WalError::Io { op: "sync_dir", .. }), "{e}");
                break;
            }
        }
    }
    assert!(wal.is_poisoned(), "a rotation happened and its directory fsync failed");
    assert_eq!(wal.lsn_durable(), acked);
    assert_poisoned_for_good(&storage, &wal);
    drop(wal);
    storage.crash(Some(5));
    let (_, last) = recover_checked(&storage).unwrap();
    assert!(last >= acked);
}

#[test]
fn no_space_for_the_next_segment_is_reported_before_the_current_one_runs_out() {
    let storage = MemStorage::new();
    let (wal, _, _) = open(&storage).unwrap();
    // Space for what exists now (the first spare) plus one more segment: after the first rotation
    // consumes the spare, preallocating the next one fails.
    let segment = config().segment_bytes;
    storage.set_capacity(Some(storage.used_bytes() + segment + segment / 2));
    let mut lsn_acked = 0;
    let mut time = 0;
    let mut saw_disk_full_with_room = false;
    let mut refused = false;
    for _ in 0..400 {
        time += 10;
        match wal.room() {
            Room::Ready => {
                let lsn = wal.lsn_appended() + 1;
                wal.append(lsn, &record_for(lsn));
                if wal.is_disk_full() {
                    saw_disk_full_with_room = true;
                }
            }
            Room::SealFirst => {}
            Room::DiskFull => {
                refused = true;
                break;
            }
        }
        lsn_acked = block_on(wal.commit_batch(time)).unwrap();
        match block_on(wal.maintain(time)) {
            Ok(()) => {}
            Err(WalError::DiskFull) => assert!(wal.is_disk_full()),
            Err(e) => panic!("{e}"),
        }
    }
    assert!(refused, "the log fills up");
    assert!(
        saw_disk_full_with_room,
        "DiskFull showed while ops could still be applied"
    );
    assert!(!wal.is_poisoned(), "running out of space is not an I/O failure");
    // What was buffered when DiskFull was reported still commits.
    assert_eq!(block_on(wal.commit_batch(time + 1)).unwrap(), wal.lsn_appended());
    assert_eq!(wal.room(), Room::DiskFull);
    // Space returns: the next segment is preallocated and appends continue.
    storage.set_capacity(None);
    block_on(wal.maintain(time + 2)).unwrap();
    assert!(!wal.is_disk_full());
    assert_eq!(wal.room(), Room::Ready);
    let last = append_some(&wal, 50);
    assert_eq!(block_on(wal.commit_batch(time + 3)).unwrap(), last);
    assert!(last > lsn_acked);
    drop(wal);
    storage.crash(None);
    let (_, recovered_last) = recover_checked(&storage).unwrap();
    assert_eq!(recovered_last, last);
}

#[test]
fn a_log_opened_without_space_refuses_writes_until_space_returns() {
    let storage = MemStorage::new();
    storage.set_capacity(Some(0));
    let (wal, _, _) = open(&storage).unwrap();
    assert!(wal.is_disk_full());
    assert_eq!(wal.room(), Room::DiskFull, "no segment exists and none can be made");
    assert!(matches!(block_on(wal.maintain(1)), Err(WalError::DiskFull)));
    assert_eq!(block_on(wal.commit_batch(1)).unwrap(), 0, "nothing to commit");
    storage.set_capacity(None);
    block_on(wal.maintain(2)).unwrap();
    assert_eq!(wal.room(), Room::Ready);
    let last = append_some(&wal, 5);
    assert_eq!(block_on(wal.commit_batch(3)).unwrap(), last);
}

#[test]
fn a_snapshot_without_space_fails_without_poisoning() {
    let storage = MemStorage::new();
    let (wal, _, _) = open(&storage).unwrap();
    let run = block_on(workload_with(&wal, 10, 1_000, false));
    storage.set_capacity(Some(storage.used_bytes()));
    assert!(matches!(
        block_on(wal.write_snapshot(run.acked, &snapshot_body(run.acked))),
        Err(WalError::DiskFull)
    ));
    assert!(!wal.is_poisoned());
    assert!(
        !storage.names().iter().any(|n| n.contains("snap")),
        "no temporary file is left"
    );
    storage.set_capacity(None);
    block_on(wal.write_snapshot(run.acked, &snapshot_body(run.acked))).unwrap();
    let (recovered, _) = recover_checked(&storage).unwrap();
    assert_eq!(recovered.snapshot.unwrap().lsn, run.acked);
}

#[test]
fn a_restart_on_a_full_disk_holds_writes_back_until_the_records_that_go_first_are_logged() {
    // Fill the log until no segment has room and none can be preallocated, then crash.
    let storage = MemStorage::new();
    let (wal, _, _) = open(&storage).unwrap();
    storage.set_capacity(Some(storage.used_bytes()));
    let run = block_on(workload_with(&wal, 400, 1_000, false));
    assert!(!run.stopped_early);
    assert_eq!(wal.room(), Room::DiskFull);
    assert!(wal.is_disk_full());
    drop(wal);
    storage.crash(None);

    // The restart opens on the full disk: reads can be served, every write is refused.
    let (wal, _, last) = open(&storage).unwrap();
    assert_eq!(last, run.acked);
    assert_eq!((wal.room(), wal.is_disk_full()), (Room::DiskFull, true));
    // Records that must precede every new write (the node's reconcile merges) wait for space:
    // the hold keeps writes refused even once a segment is ready, until they are appended.
    wal.hold_writes(true);
    storage.set_capacity(None);
    block_on(wal.maintain(2_000_000)).unwrap();
    assert_eq!(wal.room_held(), Room::Ready, "space returned");
    assert_eq!(wal.room(), Room::DiskFull, "but writes are still held");
    assert!(wal.is_disk_full());
    wal.append(last + 1, &record_for(last + 1));
    wal.hold_writes(false);
    assert_eq!(wal.room(), Room::Ready);
    let next = append_some(&wal, 3);
    assert_eq!(block_on(wal.commit_batch(2_000_001)).unwrap(), next);
    drop(wal);
    storage.crash(None);
    let (_, again) = recover_checked(&storage).unwrap();
    assert_eq!(again, next, "the held record went first, the writes after it");
}
