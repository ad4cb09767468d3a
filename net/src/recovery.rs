//! Startup recovery of every shard, before any executor serves: each shard's newest valid snapshot,
//! then its log replayed into the engine, then the cross-shard reconcile that folds recovered
//! split-counter slots into their owners. Runs on the main thread with plain file reads; the
//! records reconcile produces are held until each shard's log is open and appended first.
//!
//! A bad record followed by valid ones (corruption), a log that ends below its acknowledged mark
//! (acknowledged records lost to damage), or a log that does not fit the state refuses to start,
//! naming the file, the offset, the lsns known lost and what the operator can do: a node never
//! serves a wrong value, and never silently drops an acknowledged write.
//!
//! Also here: appending reconcile's records to the freshly opened log before any new write, which
//! on a full disk waits for space with writes held back (`append_pending`).

use std::cell::RefCell;
use std::path::{Path, PathBuf};
use std::rc::Rc;
use std::sync::Arc;
use std::time::Instant;

use tally_engine::log::owned::{Owned, Recorder};
use tally_engine::log::LogSink;
use tally_engine::{reconcile, Shard, ShardConfig, SplitRegistry};
use tally_wal::{recover_from_snapshot, DmaStorage, FsDir, Recovered, Room, Wal, WalError, ACK_MARK_FILE_NAME};

use crate::connection::now_ms;
use crate::log;
use crate::log::Level;
use crate::replication::ship_log::ShipLog;
use crate::shard::ShardRuntime;

/// One shard, recovered and ready to be moved onto its executor.
pub struct RecoveredShard {
    pub engine: Shard,
    pub recovered: Recovered,
    /// Records reconcile produced (lsn, record), to append to the log before serving.
    pub pending: Vec<(u64, Owned)>,
    pub dir: PathBuf,
    /// On a replicating node (`ship_log_bytes`): the records replayed (and reconcile's), newest
    /// within that bound, so replicas and promoters can be served right after a restart.
    pub ship_log: Option<ShipLog>,
    /// Set by the node after recovery (replication's per-shard state).
    pub stream: Option<crate::replication::state::StreamState>,
}

/// The directory of shard `shard`'s log and snapshots.
pub fn shard_dir(data_dir: &Path, shard: u16) -> PathBuf {
    data_dir.join(format!("shard-{shard}"))
}

/// Recovers every shard of a node. `configs[i]` is shard i's engine configuration.
/// `windows_durable_ms[i]`: shard i's window files are complete up to there (set in the engine
/// before its log is replayed, so those seconds are not handed out for disk again).
pub fn recover_node(
    data_dir: &Path,
    configs: Vec<ShardConfig>,
    splits: &Arc<SplitRegistry>,
    windows_durable_ms: &[u64],
    ship_log_bytes: Option<usize>,
) -> Result<Vec<RecoveredShard>, String> {
    let started = Instant::now();
    // Shards recover in parallel, one thread each: replay is CPU-bound and shards share nothing
    // until the reconcile below.
    type Result1 = Result<(Shard, Recovered, PathBuf, Option<ShipLog>), String>;
    let results: Vec<Result1> = std::thread::scope(|scope| {
        let handles: Vec<_> = configs
            .into_iter()
            .map(|config| {
                let splits = splits.clone();
                let durable = windows_durable_ms.get(config.shard as usize).copied().unwrap_or(0);
                scope.spawn(move || recover_shard(data_dir, config, &splits, durable, ship_log_bytes))
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().unwrap_or_else(|_| Err("a recovery thread panicked".into())))
            .collect()
    });
    let mut engines = Vec::with_capacity(results.len());
    let mut recovereds = Vec::with_capacity(results.len());
    let mut ship_logs = Vec::with_capacity(results.len());
    for result in results {
        let (engine, recovered, dir, ship_log) = result?;
        engines.push(engine);
        recovereds.push((recovered, dir));
        ship_logs.push(ship_log);
    }
    let mut recorders: Vec<Recorder> = (0..engines.len())
        .map(|_| Recorder {
            records: Vec::new(),
            now_ms: 0,
        })
        .collect();
    let mut sinks: Vec<&mut dyn LogSink> = recorders.iter_mut().map(|r| r as &mut dyn LogSink).collect();
    let reconciled = reconcile(&mut engines, &mut sinks).map_err(|e| format!("reconciling split counters: {e}"))?;
    if reconciled.folded + reconciled.ignored + reconciled.closed > 0 {
        log!(
            Level::Info,
            "reconcile: {} split parts folded into their owners, {} already merged, {} split epochs closed",
            reconciled.folded,
            reconciled.ignored,
            reconciled.closed
        );
    }
    log!(
        Level::Info,
        "recovered {} shards in {} ms",
        engines.len(),
        started.elapsed().as_millis()
    );
    let now_ms = crate::connection::now_ms();
    Ok(engines
        .into_iter()
        .zip(recovereds)
        .zip(recorders)
        .zip(ship_logs)
        .map(|(((engine, (recovered, dir)), recorder), mut ship_log)| {
            let pending: Vec<(u64, Owned)> = recorder
                .records
                .into_iter()
                .map(|(lsn, _, record)| (lsn, record))
                .collect();
            if let Some(ship_log) = &mut ship_log {
                for (lsn, record) in &pending {
                    ship_log.push(*lsn, &record.record());
                }
                ship_log.seal(now_ms);
            }
            RecoveredShard {
                engine,
                recovered,
                pending,
                dir,
                ship_log,
                stream: None,
            }
        })
        .collect())
}

/// The error that stops the node when a shard's log cannot be recovered: what was found, what is
/// known lost, and what the operator can do about it.
fn refusal(shard: u16, dir: &Path, error: &WalError) -> String {
    let dir = dir.display();
    match error {
        WalError::AckedLost {
            file,
            offset,
            detail,
            lsn_last,
            lsn_acked,
            segment_bytes_truncated_from,
        } => {
            let extend = segment_bytes_truncated_from.map_or(String::new(), |bytes| {
                format!(", extend the truncated segment back to its size (`truncate -s {bytes} {dir}/{file}`)")
            });
            format!(
                "shard {shard}: REFUSING TO START: acknowledged writes are lost. The log in {dir} ends at lsn {lsn_last} ({detail}: {file} at byte {offset}), but its acknowledged mark says every lsn up to {lsn_acked} was durable: lsns {}..={lsn_acked} of shard {shard} ({} records) may have been acknowledged and are gone. Nothing on disk was changed. \
                 What you can do: on a replica, move the shard aside (`mv {dir} {dir}.damaged && mkdir {dir}`) and restart: the primary resynchronises it with a snapshot. On a primary, promote a replica that holds these lsns and restart this node as its replica with the shard moved aside. To accept the loss and serve what is left instead: move the mark aside (`mv {dir}/{ACK_MARK_FILE_NAME} {dir}/{ACK_MARK_FILE_NAME}.damaged`){extend} and restart; the damaged tail is then cut and logged.",
                lsn_last + 1,
                lsn_acked - lsn_last,
            )
        }
        WalError::Corruption { .. } => format!(
            "shard {shard}: REFUSING TO START: {error} (in {dir}). Nothing on disk was changed. What you can do: restore the shard from a replica (on a replica, move it aside: `mv {dir} {dir}.damaged && mkdir {dir}`, and restart; the primary resynchronises it with a snapshot) or from a backup, or accept the loss by hand as docs/wal.md describes."
        ),
        other => format!("recovering shard {shard} in {dir}: {other}"),
    }
}

/// Appends the records recovery's reconcile produced (`RecoveredShard::pending`) to the freshly
/// opened log, before any new write, committing whenever the open batch fills. Returns how many
/// were appended: all of them, unless the disk is full (no room left in the last segment and none
/// for a next one). Then the log holds every new write back (`Wal::hold_writes`: they are refused
/// with disk_full, reads are served) and `append_pending_when_space` appends the rest once
/// maintenance finds space: a restart on a full disk serves reads instead of exiting or hanging.
pub async fn append_pending(
    shard: u16,
    dir: &Path,
    wal: &Wal<DmaStorage>,
    pending: &[(u64, Owned)],
) -> Result<usize, String> {
    for (appended, (lsn, record)) in pending.iter().enumerate() {
        loop {
            match wal.room_held() {
                Room::Ready => break,
                Room::DiskFull => {
                    wal.hold_writes(true);
                    log!(
                        Level::Error,
                        "shard {shard}: the disk is full: {} records of recovery's split-counter merges wait for log space in {}; reads are served, writes are refused with disk_full until space returns",
                        pending.len() - appended,
                        dir.display()
                    );
                    return Ok(appended);
                }
                _ => {
                    wal.commit_batch(now_ms())
                        .await
                        .map_err(|e| format!("shard {shard}: logging recovery's merges: {e}"))?;
                }
            }
        }
        wal.append(*lsn, &record.record());
    }
    Ok(pending.len())
}

/// The rest of `append_pending`: appends `pending[from..]` as soon as the log has room (woken by
/// every change of the durable watch, which maintenance notifies after each attempt to prepare a
/// segment), then lets writes in again.
pub async fn append_pending_when_space(runtime: Rc<ShardRuntime>, pending: Vec<(u64, Owned)>, from: usize) {
    let shard = runtime.id;
    assert!(
        runtime.wal.is_held(),
        "writes are held until recovery's records are logged"
    );
    let mut next = from;
    while next < pending.len() {
        if runtime.durable.fault().is_some() {
            return;
        }
        match runtime.wal.room_held() {
            Room::Ready => {
                let (lsn, record) = &pending[next];
                runtime.wal.append(*lsn, &record.record());
                next += 1;
                runtime.commit_wake.signal(1);
                continue;
            }
            // Maintenance tries again every WAL_MAINTAIN_MS and notifies the watch each time.
            Room::DiskFull => {}
            _ => runtime.commit_wake.signal(1),
        }
        runtime.durable.changed().await;
    }
    runtime.wal.hold_writes(false);
    runtime.durable.notify();
    log!(
        Level::Info,
        "shard {shard}: space returned: recovery's split-counter merges are logged; writes are accepted again"
    );
}

/// Recovers one shard: its snapshot, then its log replayed into the engine.
fn recover_shard(
    data_dir: &Path,
    config: ShardConfig,
    splits: &Arc<SplitRegistry>,
    windows_durable_ms: u64,
    ship_log_bytes: Option<usize>,
) -> Result<(Shard, Recovered, PathBuf, Option<ShipLog>), String> {
    let shard = config.shard;
    let dir = shard_dir(data_dir, shard);
    std::fs::create_dir_all(&dir).map_err(|e| format!("create {}: {e}", dir.display()))?;
    let shard_started = Instant::now();
    // Both callbacks fill the same state: the snapshot one first, then one call per record.
    let state: RefCell<(Option<Shard>, Option<String>)> = RefCell::new((None, None));
    // The replayed records, batch by batch (a batch is a run of one time), for the ship log.
    let ship_log: RefCell<Option<(ShipLog, u64)>> = RefCell::new(None);
    let recovered = recover_from_snapshot(
        &FsDir(dir.clone()),
        shard,
        |snapshot| {
            let mut state = state.borrow_mut();
            match snapshot {
                Some(snapshot) => match Shard::from_snapshot(config.clone(), splits.clone(), &snapshot.body) {
                    Ok(restored) => state.0 = Some(restored),
                    Err(e) => state.1 = Some(format!("snapshot {} of shard {shard}: {e}", snapshot.file)),
                },
                None => state.0 = Some(Shard::new(config.clone(), splits.clone())),
            }
            // Before replay: seconds already in window files are not handed out again.
            if let Some(engine) = state.0.as_mut() {
                engine.windows_set_durable(windows_durable_ms);
            }
            if let Some(bytes_max) = ship_log_bytes {
                let lsn_next = snapshot.map_or(0, |s| s.lsn) + 1;
                *ship_log.borrow_mut() = Some((ShipLog::new(lsn_next, bytes_max), 0));
            }
        },
        |entry| {
            let mut state = state.borrow_mut();
            let (engine, failure) = &mut *state;
            if failure.is_some() {
                return;
            }
            let Some(engine) = engine.as_mut() else { return };
            if let Err(e) = engine.replay(entry.lsn, entry.time_ms, &entry.record) {
                *failure = Some(format!("shard {shard}: replaying lsn {}: {e}", entry.lsn));
                return;
            }
            if let Some((log, time_ms)) = ship_log.borrow_mut().as_mut() {
                if *time_ms != entry.time_ms {
                    log.seal(*time_ms);
                    *time_ms = entry.time_ms;
                }
                log.push(entry.lsn, &entry.record);
            }
        },
    )
    .map_err(|e| refusal(shard, &dir, &e))?;
    let (engine, failure) = state.into_inner();
    if let Some(failure) = failure {
        return Err(failure);
    }
    let engine = engine.expect("recovery reports its snapshot before it returns");
    let ship_log = ship_log.into_inner().map(|(mut log, time_ms)| {
        log.seal(time_ms);
        log
    });
    if let Some(torn) = &recovered.torn_tail {
        let bound = if recovered.ack_mark.is_some() {
            format!(
                "at or above the acknowledged mark {}, so no write known to be acknowledged was lost",
                recovered.lsn_acked
            )
        } else {
            "and there is no acknowledged mark to check it against".to_string()
        };
        log!(
            Level::Warn,
            "shard {shard}: torn tail in {} at byte {} ({}): cut bytes {}..{}; the log ends at lsn {}, {bound}",
            torn.file,
            torn.offset,
            torn.detail,
            torn.offset,
            torn.damaged_to,
            recovered.lsn_last()
        );
    }
    if !recovered.ack_mark_damaged.is_empty() {
        let unknown = recovered.ack_mark.is_none();
        log!(
            if unknown { Level::Error } else { Level::Warn },
            "shard {shard}: {}/{ACK_MARK_FILE_NAME}: ignored {}{}",
            dir.display(),
            recovered.ack_mark_damaged.join("; "),
            if unknown {
                ": no valid copy, so this recovery could not check the log's end against what was acknowledged"
            } else {
                ""
            }
        );
    }
    for (file, why) in &recovered.bad_snapshots {
        log!(Level::Warn, "shard {shard}: ignored snapshot {file}: {why}");
    }
    log!(
        Level::Info,
        "shard {shard}: recovered lsn {} (snapshot {}, {} records replayed) in {} ms",
        engine.lsn(),
        recovered.snapshot.as_ref().map_or(0, |s| s.lsn),
        recovered.records_replayed,
        shard_started.elapsed().as_millis()
    );
    Ok((engine, recovered, dir, ship_log))
}
