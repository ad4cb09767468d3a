//! The shard's acknowledged-mark task: keeps `acked.mark` (tally_wal::ack_mark) at the log's
//! durable lsn, so that recovery can tell damage that took acknowledged writes from a torn,
//! unacknowledged tail (docs/wal.md).
//!
//! It runs beside the commit loop and never in front of an ack: a commit acks as soon as its own
//! fdatasync returns, and only then may this task write the mark (one block of another file, then
//! its fdatasync), at most one write in flight. Because a disk flushes one fdatasync at a time, a
//! mark write after every commit would slow the commits down; so while writes keep coming it
//! writes at most every `ACK_MARK_INTERVAL_MS_MAX`, and once the log has been idle for
//! `ACK_MARK_IDLE_MS` it writes at once (a node whose writes stopped has them all under the mark).

use std::rc::Rc;
use std::time::{Duration, Instant};

use crate::connection::now_ms;
use crate::durability::LogFault;
use crate::limits::{ACK_MARK_IDLE_MS, ACK_MARK_INTERVAL_MS_MAX};
use crate::log;
use crate::log::Level;
use crate::shard::ShardRuntime;

/// Writes the mark whenever the durable lsn has moved past it and either the last write is
/// `ACK_MARK_INTERVAL_MS_MAX` old or the log has been idle (nothing appended beyond the durable
/// lsn) for `ACK_MARK_IDLE_MS`; until the log fails. Woken by every change of the durable watch
/// (each commit advances it); a timer is armed only while the log is idle with the mark behind. A
/// failed mark write poisons the shard's log like a failed commit (the same device failed an
/// fdatasync).
pub async fn mark_loop(runtime: Rc<ShardRuntime>) {
    let shard = runtime.id;
    let interval = Duration::from_millis(ACK_MARK_INTERVAL_MS_MAX);
    let quiet = Duration::from_millis(ACK_MARK_IDLE_MS);
    let mut written_at = Instant::now();
    while runtime.durable.fault().is_none() {
        let wal = &runtime.wal;
        let lsn_durable = wal.lsn_durable();
        let behind = lsn_durable > wal.lsn_marked();
        let idle = wal.lsn_appended() == lsn_durable;
        let due = behind && written_at.elapsed() >= interval;
        if behind && idle && !due {
            // Wait for the log to stay quiet, unless it changes first.
            let quieted = futures_lite::future::or(
                async {
                    runtime.durable.changed().await;
                    false
                },
                async {
                    glommio::timer::sleep(quiet).await;
                    true
                },
            )
            .await;
            if !(quieted && wal.lsn_appended() == wal.lsn_durable()) {
                continue;
            }
        } else if !due {
            runtime.durable.changed().await;
            continue;
        }
        match wal.write_ack_mark(now_ms()).await {
            Ok(lsn) if lsn >= lsn_durable => written_at = Instant::now(),
            // No mark file yet (the disk was full when the log opened): maintenance creates it
            // once there is space; look again at the next change.
            Ok(_) => runtime.durable.changed().await,
            Err(e) => {
                log!(
                    Level::Error,
                    "SHARD {shard} LOG POISONED: writing the acknowledged mark: {e}. This shard acks no more writes; restart tallyd to recover from disk."
                );
                runtime.durable.poison(LogFault::Poisoned);
                return;
            }
        }
    }
}
