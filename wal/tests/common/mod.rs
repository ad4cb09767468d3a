//! A deterministic workload for the WAL tests: the record of every lsn is a function of the lsn, so a
//! recovered log can be checked against "what was attempted" without keeping a copy.

#![allow(dead_code)]

use futures_lite::future::block_on;
use tally_proto::CounterKind;
use tally_wal::limits::{BATCH_ROOM_MIN, SEGMENT_BYTES_MIN};
use tally_wal::{
    recover, Entry, Keyed, LogRecord, MemStorage, Recovered, RecoverySource, Room, Storage, Wal, WalConfig, WalError,
};

pub const SHARD: u16 = 1;

const NAMES: [&[u8]; 12] = [
    b"views:home",
    b"views:about",
    b"likes:post:1",
    b"likes:post:2",
    b"stock:widget",
    b"stock:gadget",
    b"hot:counter",
    b"a",
    b"b",
    b"quota:user:42",
    b"quota:user:43",
    b"x:y:z",
];

/// Long RESET reasons make some batches span several blocks, so torn writes can cut through them.
static REASON: [u8; 1000] = [b'r'; 1000];

/// The record the workload logs at `lsn`.
pub fn record_for(lsn: u64) -> LogRecord<'static> {
    let which = (lsn.wrapping_mul(0x9e37_79b9) >> 7) as usize % NAMES.len();
    let name = NAMES[which];
    let name_id = which as u32 * 16 + 3;
    let v = lsn as i64;
    match lsn % 11 {
        0 => LogRecord::Create {
            name,
            name_id,
            kind: CounterKind::Strict,
            initial: v,
            min: -v,
            max: i64::MAX,
        },
        1 => LogRecord::Cas {
            name,
            name_id,
            new: v * 7,
        },
        2 => LogRecord::AddBounded {
            name,
            name_id,
            delta: -v,
            key: Some(u128::from(lsn) << 64 | 5),
        },
        3 | 9 => LogRecord::Reset {
            name,
            name_id,
            old: v,
            new: 0,
            reason: &REASON[..(lsn * 37 % 1000) as usize],
            client: b"ops-cli",
        },
        4 => LogRecord::SlotIncr {
            name,
            name_id,
            epoch: lsn / 100,
            delta: 3,
        },
        5 => LogRecord::Split {
            name,
            name_id,
            epoch: lsn / 100,
        },
        6 => LogRecord::Merge {
            name,
            name_id,
            epoch: lsn / 100,
            amount: v - 1000,
        },
        7 => LogRecord::Incr {
            name,
            name_id,
            delta: -1,
            key: Some(Keyed {
                key: u128::from(lsn),
                value: -v,
            }),
        },
        _ => LogRecord::Incr {
            name,
            name_id,
            delta: 1 + (lsn % 5) as i64,
            key: None,
        },
    }
}

/// The snapshot body the workload writes at `lsn`.
pub fn snapshot_body(lsn: u64) -> Vec<u8> {
    let mut body = format!("state of shard {SHARD} at lsn {lsn}:").into_bytes();
    body.extend((0..(lsn % 5000)).map(|i| (i * 31 + lsn) as u8));
    body
}

/// Small segments (33 blocks) so the workload rotates often: a batch starts a new segment once less
/// than `BATCH_ROOM_MIN` (16 blocks) is left.
pub fn config() -> WalConfig {
    WalConfig {
        shard: SHARD,
        segment_bytes: SEGMENT_BYTES_MIN + BATCH_ROOM_MIN,
        retention_ms: 5_000,
        salt_seed: Some(7),
    }
}

/// What a workload run did before it stopped.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Run {
    /// The last lsn appended.
    pub attempted: u64,
    /// The last lsn a commit returned as durable.
    pub acked: u64,
    /// The newest snapshot whose write returned Ok.
    pub snapshot_acked: Option<u64>,
    /// The lsn of the newest acknowledged mark whose write returned Ok (marked workloads).
    pub marked: u64,
    /// How the run ended: None if it ran to completion.
    pub stopped_early: bool,
}

/// Appends, commits, snapshots and runs upkeep for `steps` rounds, stopping at the first error.
/// Batches vary from 1 to 60 records so some fill many blocks and segments rotate often.
pub async fn workload<S: Storage>(wal: &Wal<S>, steps: u64, time_start_ms: u64) -> Run {
    workload_with(wal, steps, time_start_ms, true).await
}

/// `workload`, with or without snapshots.
pub async fn workload_with<S: Storage>(wal: &Wal<S>, steps: u64, time_start_ms: u64, snapshots: bool) -> Run {
    workload_opts(wal, steps, time_start_ms, snapshots, false).await
}

/// `workload`, writing the acknowledged mark after every commit (as the node's mark task does,
/// here in turn with the commits rather than beside them).
pub async fn workload_marked<S: Storage>(wal: &Wal<S>, steps: u64, time_start_ms: u64) -> Run {
    workload_opts(wal, steps, time_start_ms, true, true).await
}

async fn workload_opts<S: Storage>(wal: &Wal<S>, steps: u64, time_start_ms: u64, snapshots: bool, marks: bool) -> Run {
    let mut run = Run {
        attempted: wal.lsn_appended(),
        acked: wal.lsn_durable(),
        marked: wal.lsn_marked(),
        ..Run::default()
    };
    let mut time_ms = time_start_ms;
    for step in 0..steps {
        let count = 1 + (step * 37 + run.attempted) % 90;
        for _ in 0..count {
            match wal.room() {
                Room::Ready => {}
                Room::SealFirst => match wal.commit_batch(time_ms).await {
                    Ok(lsn) => run.acked = lsn,
                    Err(_) => {
                        return Run {
                            stopped_early: true,
                            ..run
                        }
                    }
                },
                Room::DiskFull => break,
            }
            let lsn = run.attempted + 1;
            wal.append(lsn, &record_for(lsn));
            run.attempted = lsn;
        }
        match wal.commit_batch(time_ms).await {
            Ok(lsn) => run.acked = lsn,
            Err(_) => {
                return Run {
                    stopped_early: true,
                    ..run
                }
            }
        }
        if marks {
            match wal.write_ack_mark(time_ms).await {
                Ok(lsn) => run.marked = lsn,
                Err(_) => {
                    return Run {
                        stopped_early: true,
                        ..run
                    }
                }
            }
        }
        if snapshots && step % 7 == 6 {
            match wal.write_snapshot(run.acked, &snapshot_body(run.acked)).await {
                Ok(()) => run.snapshot_acked = Some(run.acked),
                Err(_) => {
                    return Run {
                        stopped_early: true,
                        ..run
                    }
                }
            }
        }
        if step % 3 == 2 {
            match wal.maintain(time_ms).await {
                Ok(()) | Err(WalError::DiskFull) => {}
                Err(_) => {
                    return Run {
                        stopped_early: true,
                        ..run
                    }
                }
            }
        }
        time_ms += 1_000;
    }
    run
}

/// Recovers `src` and checks the log against the workload: the snapshot (if any) is the workload's
/// body at its lsn, and the records after it are exactly `record_for(snap+1..=L)`. Returns the
/// recovery and L.
pub fn recover_checked(src: &impl RecoverySource) -> Result<(Recovered, u64), WalError> {
    let mut next = None;
    let mut mismatch = None;
    let recovered = recover(src, SHARD, |entry: &Entry<'_>| {
        let expect = next.unwrap_or(entry.lsn);
        if entry.lsn != expect {
            mismatch.get_or_insert(format!("lsn {} where {expect} was expected", entry.lsn));
        }
        if entry.record.with_name_id(0) != record_for(entry.lsn).with_name_id(0) {
            mismatch.get_or_insert(format!("record {} differs: {:?}", entry.lsn, entry.record));
        }
        next = Some(entry.lsn + 1);
    })?;
    assert_eq!(mismatch, None);
    let snap = recovered.snapshot.as_ref().map_or(0, |s| s.lsn);
    if let Some(s) = &recovered.snapshot {
        assert_eq!(s.body, snapshot_body(s.lsn), "snapshot body at {}", s.lsn);
    }
    if let Some(first) = next.map(|n| n - recovered.records_replayed) {
        assert_eq!(first, snap + 1, "replay starts right after the snapshot");
    }
    let last = recovered.lsn_last();
    assert_eq!(recovered.records_replayed, last - snap);
    Ok((recovered, last))
}

/// Checks the crash property: what recovery holds is a prefix of what was attempted that includes
/// everything acknowledged.
pub fn assert_prefix(run: &Run, last: u64, recovered: &Recovered, context: &str) {
    assert!(
        last >= run.acked,
        "{context}: acked lsn {} lost, log ends at {last}",
        run.acked
    );
    assert!(
        last <= run.attempted,
        "{context}: log ends at {last}, beyond the attempted {}",
        run.attempted
    );
    if let Some(acked) = run.snapshot_acked {
        let snap = recovered.snapshot.as_ref().map(|s| s.lsn);
        assert!(
            snap >= Some(acked),
            "{context}: snapshot {acked} was acked, recovery used {snap:?}"
        );
    }
}

/// Opens a WAL on `storage` after recovering it.
pub fn open(storage: &MemStorage) -> Result<(Wal<MemStorage>, Recovered, u64), WalError> {
    let (recovered, last) = recover_checked(storage)?;
    let wal = block_on(Wal::open(storage.clone(), config(), &recovered))?;
    Ok((wal, recovered, last))
}

/// The image of every file in the storage, after a crash.
pub fn files(storage: &MemStorage) -> std::collections::BTreeMap<String, Vec<u8>> {
    storage
        .names()
        .into_iter()
        .map(|n| (n.clone(), storage.image(&n).unwrap()))
        .collect()
}

/// A storage holding a log written by the workload (no crash), closed cleanly.
pub fn written_log(steps: u64) -> (MemStorage, Run) {
    let storage = MemStorage::new();
    let (wal, _, _) = open(&storage).unwrap();
    let run = block_on(workload(&wal, steps, 1_000));
    assert!(!run.stopped_early);
    (storage, run)
}
