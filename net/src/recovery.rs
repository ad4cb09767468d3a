//! Startup recovery of every shard, before any executor serves: each shard's newest valid snapshot,
//! then its log replayed into the engine, then the cross-shard reconcile that folds recovered
//! split-counter slots into their owners. Runs on the main thread with plain file reads; the
//! records reconcile produces are held until each shard's log is open and appended first.
//!
//! A bad record followed by valid ones (corruption) or a log that does not fit the state refuses to
//! start, naming the file and offset: a node never serves a wrong value.

use std::cell::RefCell;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use tally_engine::log::owned::{Owned, Recorder};
use tally_engine::log::LogSink;
use tally_engine::{reconcile, Shard, ShardConfig, SplitRegistry};
use tally_wal::{recover_from_snapshot, FsDir, Recovered};

use crate::log;
use crate::log::Level;
use crate::replication::ship_log::ShipLog;

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
    .map_err(|e| format!("recovering shard {shard} in {}: {e}", dir.display()))?;
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
        log!(
            Level::Warn,
            "shard {shard}: torn tail in {} at byte {} ({}): truncated; nothing after it was acknowledged",
            torn.file,
            torn.offset,
            torn.detail
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
