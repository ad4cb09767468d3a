//! The shard's acknowledged-mark task: keeps `acked.mark` (tally_wal::ack_mark) at the log's
//! durable lsn, so that recovery can tell damage that took acknowledged writes from a torn,
//! unacknowledged tail (docs/wal.md).
//!
//! It runs beside the commit loop and never in front of an ack: a commit acks as soon as its own
//! fdatasync returns, and only then does this task write the mark (one block of another file, then
//! its fdatasync), at most one write in flight. Under load a mark write covers every commit that
//! finished while the previous one was in flight, so the mark trails the durable lsn by about one
//! mark write (one fdatasync).

use std::rc::Rc;

use crate::connection::now_ms;
use crate::durability::LogFault;
use crate::log;
use crate::log::Level;
use crate::shard::ShardRuntime;

/// Writes the mark whenever the durable lsn has moved past it, until the log fails. A failed mark
/// write poisons the shard's log like a failed commit (the same device failed an fdatasync).
pub async fn mark_loop(runtime: Rc<ShardRuntime>) {
    let shard = runtime.id;
    while runtime.durable.fault().is_none() {
        let lsn_durable = runtime.wal.lsn_durable();
        if lsn_durable > runtime.wal.lsn_marked() {
            match runtime.wal.write_ack_mark(now_ms()).await {
                // Commits that finished meanwhile get the next write at once.
                Ok(lsn) if lsn >= lsn_durable => continue,
                // No mark file yet (the disk was full when the log opened): maintenance creates
                // it once there is space; look again at the next change.
                Ok(_) => {}
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
        runtime.durable.changed().await;
    }
}
