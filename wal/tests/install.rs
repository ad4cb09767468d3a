//! `Wal::install_snapshot`: a replica's log replaced by a snapshot from its primary, including one
//! below its own end (a diverged suffix discarded), then continued and recovered.

mod common;

use common::*;
use futures_lite::future::block_on;
use tally_wal::{MemStorage, Room, Wal};

/// Appends the workload's records `from..=to` and commits them as one batch.
fn append_and_commit(wal: &Wal<MemStorage>, from: u64, to: u64, time_ms: u64) {
    for lsn in from..=to {
        assert_eq!(wal.room(), Room::Ready, "room for lsn {lsn}");
        wal.append(lsn, &record_for(lsn));
    }
    assert_eq!(block_on(wal.commit_batch(time_ms)).unwrap(), to);
}

#[test]
fn installed_snapshot_replaces_the_log_and_the_log_continues_after_it() {
    let storage = MemStorage::new();
    let (wal, _, last) = open(&storage).unwrap();
    assert_eq!(last, 0);
    // 40 records, then a snapshot at 30: the 10 records after it are the "diverged suffix".
    for step in 0..4 {
        append_and_commit(&wal, step * 10 + 1, step * 10 + 10, 1_000 + step);
        block_on(wal.maintain(1_000 + step)).unwrap();
    }
    assert_eq!(wal.lsn_durable(), 40);
    block_on(wal.install_snapshot(30, &snapshot_body(30))).unwrap();
    assert_eq!((wal.lsn_appended(), wal.lsn_durable()), (30, 30));
    block_on(wal.maintain(2_000)).unwrap();
    append_and_commit(&wal, 31, 35, 2_001);
    drop(wal);

    // Recovery sees exactly the snapshot and the records after it: none of the discarded 31..=40
    // (`recover_checked` checks every record against the workload, which logs the same record at
    // an lsn however often it is written, so it also checks that replay starts at 31).
    let (recovered, last) = recover_checked(&storage).unwrap();
    assert_eq!(recovered.snapshot.as_ref().map(|s| s.lsn), Some(30));
    assert_eq!(last, 35);
    assert_eq!(recovered.records_replayed, 5);
}

#[test]
fn installed_snapshot_above_the_log_end_recovers_at_its_lsn() {
    let storage = MemStorage::new();
    let (wal, _, _) = open(&storage).unwrap();
    append_and_commit(&wal, 1, 5, 1_000);
    block_on(wal.install_snapshot(500, &snapshot_body(500))).unwrap();
    assert_eq!(wal.room(), Room::DiskFull, "no segment until maintenance prepares one");
    assert!(!wal.is_disk_full());
    drop(wal);
    let (recovered, last) = recover_checked(&storage).unwrap();
    assert_eq!(recovered.snapshot.as_ref().map(|s| s.lsn), Some(500));
    assert_eq!(last, 500);
    let wal = block_on(Wal::open(storage.clone(), config(), &recovered)).unwrap();
    append_and_commit(&wal, 501, 502, 3_000);
}
