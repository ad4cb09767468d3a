//! Crash-point tests: run a workload of appends, commits, rotations, snapshots and retention on
//! `MemStorage`, crash at every mutating storage operation in turn (every write, sync, directory
//! sync, create, rename and remove), recover, and check that the log is a prefix of what was
//! attempted that holds everything acknowledged. Then keep appending on the recovered log, and check
//! again.

mod common;

use common::*;
use futures_lite::future::block_on;
use tally_wal::{MemStorage, Wal};

const STEPS: u64 = 70;

/// Mutating storage operations of a complete run (opening the log included).
fn ops_of_complete_run() -> u64 {
    let storage = MemStorage::new();
    let (wal, _, _) = open(&storage).unwrap();
    let run = block_on(workload(&wal, STEPS, 1_000));
    assert!(!run.stopped_early);
    storage.ops()
}

/// Mutating storage operations of a complete run that writes the acknowledged mark.
fn ops_of_complete_marked_run() -> u64 {
    let storage = MemStorage::new();
    let (wal, _, _) = open(&storage).unwrap();
    let run = block_on(workload_marked(&wal, STEPS, 1_000));
    assert!(!run.stopped_early);
    assert_eq!(run.marked, run.acked);
    storage.ops()
}

/// Crashes at op `crash_at`, recovers, checks; then appends more and checks a clean restart.
/// Returns facts about the recovery for coverage assertions.
fn crash_and_check(crash_at: u64, torn_seed: Option<u64>) -> (bool, bool, u64) {
    crash_and_check_with(crash_at, torn_seed, false)
}

/// `crash_and_check`, with a workload that writes the acknowledged mark after every commit
/// (`marks`): then recovery must never refuse (the mark never runs ahead of the log), and its
/// bound is at least the last mark whose write returned.
fn crash_and_check_with(crash_at: u64, torn_seed: Option<u64>, marks: bool) -> (bool, bool, u64) {
    let context = format!("crash at op {crash_at}, torn seed {torn_seed:?}, marks {marks}");
    let storage = MemStorage::new();
    storage.crash_at(crash_at);
    let run = match open(&storage) {
        Ok((wal, _, _)) if marks => block_on(workload_marked(&wal, STEPS, 1_000)),
        Ok((wal, _, _)) => block_on(workload(&wal, STEPS, 1_000)),
        Err(_) => Run::default(),
    };
    assert!(storage.has_crashed(), "{context}: the crash point was reached");
    storage.crash(torn_seed);
    let (recovered, last) = recover_checked(&storage).unwrap_or_else(|e| panic!("{context}: recovery failed: {e}"));
    assert_prefix(&run, last, &recovered, &context);
    assert!(
        recovered.lsn_acked >= run.marked,
        "{context}: mark {} was written, recovery's bound is {}",
        run.marked,
        recovered.lsn_acked
    );
    assert!(
        recovered.lsn_acked <= run.acked,
        "{context}: the mark never passes the durable lsn"
    );
    let torn = recovered.torn_tail.is_some();

    // The recovered log takes new appends, and a clean restart finds all of them.
    let wal =
        block_on(Wal::open(storage.clone(), config(), &recovered)).unwrap_or_else(|e| panic!("{context}: open: {e}"));
    let more = block_on(workload(&wal, 12, 10_000_000));
    assert!(!more.stopped_early, "{context}: appending after recovery");
    assert_eq!(more.acked, more.attempted);
    assert!(more.acked > last);
    drop(wal);
    storage.crash(None);
    let (again, last_again) = recover_checked(&storage).unwrap_or_else(|e| panic!("{context}: second recovery: {e}"));
    assert_eq!(
        last_again, more.acked,
        "{context}: every record acked after recovery survives"
    );
    assert_eq!(again.torn_tail, None, "{context}: a clean restart finds no torn tail");
    (torn, recovered.snapshot.is_some(), last)
}

#[test]
fn the_workload_rotates_snapshots_and_deletes_old_segments() {
    let storage = MemStorage::new();
    let (wal, _, _) = open(&storage).unwrap();
    let run = block_on(workload(&wal, STEPS, 1_000));
    let counts = storage.op_counts();
    // Every rename but the snapshots' is a rotation.
    let snapshots = STEPS / 7;
    assert!(counts.renames >= snapshots + 5, "{counts:?}");
    assert!(
        counts.removes >= 5,
        "retention and snapshot pruning removed files: {counts:?}"
    );
    let names = storage.names();
    assert_eq!(names.iter().filter(|n| n.starts_with("snap-")).count(), 2);
    assert!(
        !names.contains(&tally_wal::segment::segment_file_name(1)),
        "the first segment was deleted"
    );
    assert_eq!(wal.lsn_durable(), run.acked);
    assert!(run.acked > 3000, "{run:?}");
}

#[test]
fn crash_at_every_storage_operation() {
    let ops = ops_of_complete_run();
    assert!(ops > 150, "the workload exercises many operations ({ops})");
    let mut with_snapshot = 0;
    let mut lasts = std::collections::BTreeSet::new();
    for crash_at in 1..=ops {
        let (torn, snap, last) = crash_and_check(crash_at, None);
        assert!(!torn, "without torn writes, nothing unsynced survives to look torn");
        with_snapshot += u64::from(snap);
        lasts.insert(last);
    }
    assert!(with_snapshot > ops / 2, "most crash points come after a snapshot");
    assert!(lasts.len() > 40, "crash points land all over the log");
    println!("crash points exercised: {ops}");
}

#[test]
fn crash_at_every_storage_operation_with_torn_writes() {
    let ops = ops_of_complete_run();
    let mut torn_tails = 0;
    let mut runs = 0;
    for crash_at in 1..=ops {
        for seed in 0..3 {
            let (torn, _, _) = crash_and_check(crash_at, Some(crash_at * 16 + seed));
            torn_tails += u64::from(torn);
            runs += 1;
        }
    }
    assert!(
        torn_tails > 20,
        "torn tails were produced and cut ({torn_tails} of {runs})"
    );
    println!("torn-mode crash runs: {runs}, torn tails cut: {torn_tails}");
}

#[test]
fn crash_at_every_storage_operation_with_the_acknowledged_mark() {
    let ops = ops_of_complete_marked_run();
    let mut bounded = 0;
    for crash_at in 1..=ops {
        for seed in [None, Some(crash_at * 8 + 1)] {
            let (_, _, last) = crash_and_check_with(crash_at, seed, true);
            bounded += u64::from(last > 0);
        }
    }
    assert!(bounded > ops, "most crash points recover a non-empty log ({bounded})");
    println!("marked crash runs: {}", 2 * ops);
}

#[test]
fn two_crashes_in_a_row() {
    // A crash while appending after a recovery from a crash.
    let ops = ops_of_complete_run();
    for crash_at in (7..ops).step_by(13) {
        let storage = MemStorage::new();
        storage.crash_at(crash_at);
        if let Ok((wal, _, _)) = open(&storage) {
            block_on(workload(&wal, STEPS, 1_000));
        }
        storage.crash(Some(crash_at));
        let (wal, recovered, _) = open(&storage).unwrap();
        let before = wal.lsn_durable();
        storage.crash_at(1 + crash_at % 40);
        let run = block_on(workload(&wal, 30, 5_000_000));
        let run = tally_run(run, before);
        drop(wal);
        storage.crash(Some(crash_at + 1));
        let (second, last) = recover_checked(&storage).unwrap_or_else(|e| panic!("second crash after {crash_at}: {e}"));
        assert_prefix(&run, last, &second, &format!("second crash after op {crash_at}"));
        assert!(last >= recovered.lsn_last());
    }
}

/// A run that started on a recovered log: everything up to `before` was acked already.
fn tally_run(run: Run, before: u64) -> Run {
    Run {
        acked: run.acked.max(before),
        ..run
    }
}
