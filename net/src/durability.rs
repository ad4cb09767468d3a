//! The node side of durability: the durable-LSN watch that acks wait on, and the group-commit
//! loop that turns appended log records into fsynced batches.
//!
//! Group commit: each shard has at most one write+fdatasync in flight. Records appended while it
//! runs form the next batch, so batches grow with load: one fsync acks everything that arrived
//! during the previous one. An op's reply is held until the durable LSN reaches the LSN of its
//! change (`FrameState::lsn_needed`); a failed write or sync poisons the shard's log for good.

use std::cell::{Cell, RefCell};
use std::rc::Rc;

use glommio::sync::Semaphore;
use tally_replicate::AckMode;

/// Takes every permit signalled on `wake`: a semaphore used as a wake-up flag, where several
/// signals before the waiter runs mean one wake-up, not several.
pub fn take_wakeups(wake: &Semaphore) {
    let extra = wake.available();
    if extra > 0 {
        let _ = wake.try_acquire(extra);
    }
}

/// Why a shard's log takes no more writes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFault {
    /// A write or fdatasync failed. Nothing after `lsn_durable` is durable, and nothing will be
    /// until the node restarts and recovers from disk.
    Poisoned,
    /// This node learnt of a higher epoch: it is no longer primary and acks nothing more. Writes
    /// not yet acknowledged have an unknown outcome.
    SteppedDown,
}

impl LogFault {
    /// The error code and message a new write gets while the log has this fault. It is refused
    /// before the engine sees it, so it is not applied: a stepped-down node answers `not_primary`
    /// (which means exactly that, protocol.md §7), a poisoned log `log_poisoned`.
    pub fn refusal(self) -> (tally_proto::ErrorCode, &'static str) {
        match self {
            LogFault::Poisoned => (
                tally_proto::ErrorCode::LogPoisoned,
                "this shard's log failed; it acks no writes until the node restarts",
            ),
            LogFault::SteppedDown => (
                tally_proto::ErrorCode::NotPrimary,
                "this node stopped being primary (it learnt of a newer epoch): the write was not applied; send it to the new primary",
            ),
        }
    }

    /// The error code and message a write waiting for its ack gets: it is in the log, so its
    /// outcome is unknown.
    pub fn failure(self) -> (tally_proto::ErrorCode, &'static str) {
        match self {
            LogFault::Poisoned => (
                tally_proto::ErrorCode::LogPoisoned,
                "the shard's log failed before this write was durable: its outcome is unknown",
            ),
            LogFault::SteppedDown => (
                tally_proto::ErrorCode::OutcomeUnknown,
                "this node stopped being primary before the write was acknowledged: its outcome is unknown",
            ),
        }
    }
}

/// The highest LSN known durable, and a way to wait for it to pass a given LSN. Waking is a
/// broadcast: every advance closes the current semaphore (waking all its waiters) and installs a
/// fresh one, so one fsync wakes every ack that waited on it at the cost of one close.
pub struct DurableWatch {
    lsn_durable: Cell<u64>,
    /// The highest lsn acknowledgeable in the replicated modes (`Quorum::lsn_ackable`); equal to
    /// `lsn_durable` on a node without replicas.
    lsn_quorum: Cell<u64>,
    lsn_all: Cell<u64>,
    replicated: Cell<bool>,
    fault: Cell<Option<LogFault>>,
    advanced: RefCell<Rc<Semaphore>>,
}

impl DurableWatch {
    pub fn new(lsn_durable: u64) -> DurableWatch {
        DurableWatch {
            lsn_durable: Cell::new(lsn_durable),
            lsn_quorum: Cell::new(lsn_durable),
            lsn_all: Cell::new(lsn_durable),
            replicated: Cell::new(false),
            fault: Cell::new(None),
            advanced: RefCell::new(Rc::new(Semaphore::new(0))),
        }
    }

    pub fn lsn_durable(&self) -> u64 {
        self.lsn_durable.get()
    }

    pub fn fault(&self) -> Option<LogFault> {
        self.fault.get()
    }

    /// Whether a change at `lsn` may be acked now: `Some(Ok)` yes, `Some(Err)` never, `None` not yet.
    pub fn check(&self, lsn: u64) -> Option<Result<(), LogFault>> {
        self.check_mode(lsn, AckMode::Local)
    }

    /// Records that everything up to `lsn` is durable and wakes every waiter.
    pub fn advance(&self, lsn: u64) {
        assert!(lsn >= self.lsn_durable.get(), "the durable LSN only increases");
        assert!(self.fault.get().is_none(), "a poisoned log never becomes durable again");
        self.lsn_durable.set(lsn);
        if !self.replicated.get() {
            self.lsn_quorum.set(lsn);
            self.lsn_all.set(lsn);
        }
        self.wake_all();
    }

    /// From now on the replicated modes follow `replicated_to`, not the local fsync alone.
    pub fn set_replicated(&self) {
        self.replicated.set(true);
    }

    /// Records what the replicated modes may acknowledge (each only increases) and wakes waiters.
    pub fn replicated_to(&self, lsn_quorum: u64, lsn_all: u64) {
        let (quorum, all) = (self.lsn_quorum.get().max(lsn_quorum), self.lsn_all.get().max(lsn_all));
        if (quorum, all) != (self.lsn_quorum.get(), self.lsn_all.get()) {
            self.lsn_quorum.set(quorum);
            self.lsn_all.set(all);
            self.wake_all();
        }
    }

    /// Forgets the log's end: a replica whose log was replaced by a snapshot at `lsn`.
    pub fn reset(&self, lsn: u64) {
        self.lsn_durable.set(lsn);
        self.lsn_quorum.set(lsn);
        self.lsn_all.set(lsn);
        self.wake_all();
    }

    /// The highest lsn a write acknowledged in `mode` may have.
    pub fn lsn_ackable(&self, mode: AckMode) -> u64 {
        match mode {
            AckMode::Local => self.lsn_durable.get(),
            AckMode::Quorum => self.lsn_quorum.get().min(self.lsn_durable.get()),
            AckMode::All => self.lsn_all.get().min(self.lsn_durable.get()),
        }
    }

    /// `check` for an ack in `mode`.
    pub fn check_mode(&self, lsn: u64, mode: AckMode) -> Option<Result<(), LogFault>> {
        if lsn <= self.lsn_ackable(mode) {
            return Some(Ok(()));
        }
        self.fault.get().map(Err)
    }

    /// Waits until `lsn` is acknowledgeable in `mode`, the log fails, or `deadline` passes
    /// (`Ok(false)`). The deadline is checked whenever the watch changes; a replicating shard's
    /// ticker (`notify` every `REPL_TICK_MS`) bounds how late that can be, so a wait costs no
    /// timer of its own (an io_uring timeout and its cancellation per wait, measured as a large
    /// share of a replicating node's CPU).
    pub async fn wait_mode(&self, lsn: u64, mode: AckMode, deadline: std::time::Instant) -> Result<bool, LogFault> {
        loop {
            if let Some(result) = self.check_mode(lsn, mode) {
                return result.map(|()| true);
            }
            if std::time::Instant::now() >= deadline {
                return Ok(false);
            }
            self.changed().await;
        }
    }

    /// Poisons the log: waiters beyond the durable LSN get the fault.
    pub fn poison(&self, fault: LogFault) {
        self.fault.set(Some(fault));
        self.wake_all();
    }

    /// Wakes `changed` waiters without an advance: something else they wait on changed (the next
    /// log segment became ready, or the disk was found full).
    pub fn notify(&self) {
        self.wake_all();
    }

    fn wake_all(&self) {
        let old = std::mem::replace(&mut *self.advanced.borrow_mut(), Rc::new(Semaphore::new(0)));
        old.close();
    }

    /// Waits until `lsn` is durable or the log is poisoned.
    pub async fn wait(&self, lsn: u64) -> Result<(), LogFault> {
        loop {
            if let Some(result) = self.check(lsn) {
                return result;
            }
            let advanced = self.advanced.borrow().clone();
            // Closed (an error) is the wake-up; no permit is ever signalled.
            let _ = advanced.acquire(1).await;
        }
    }

    /// Waits for the next advance or fault, whatever the LSN.
    pub async fn changed(&self) {
        let advanced = self.advanced.borrow().clone();
        let _ = advanced.acquire(1).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use glommio::{LocalExecutorBuilder, Placement};

    #[test]
    fn waiters_wake_on_advance_and_on_poison() {
        let (early, late, durable_before) = LocalExecutorBuilder::new(Placement::Unbound)
            .io_memory(256 << 10)
            .spawn(|| async {
                let watch = Rc::new(DurableWatch::new(0));
                let early = glommio::spawn_local({
                    let watch = watch.clone();
                    async move { watch.wait(5).await }
                });
                let late = glommio::spawn_local({
                    let watch = watch.clone();
                    async move { watch.wait(9).await }
                });
                glommio::executor().yield_now().await;
                watch.advance(6);
                let early = early.await;
                let pending = watch.check(9);
                watch.poison(LogFault::Poisoned);
                (early, late.await, pending)
            })
            .unwrap()
            .join()
            .unwrap();
        assert_eq!(early, Ok(()));
        assert_eq!(durable_before, None, "9 was not durable before the poison");
        assert_eq!(late, Err(LogFault::Poisoned));
    }

    /// protocol.md §7, "what an error means for a write": a write refused before it was applied
    /// gets a code meaning "not applied" (a stepped-down node: `not_primary`), one that waited
    /// for its ack a code meaning "outcome unknown" (`outcome_unknown`, `log_poisoned`).
    #[test]
    fn refused_and_waiting_writes_get_codes_that_mean_what_happened() {
        use tally_proto::ErrorCode;
        assert_eq!(LogFault::SteppedDown.refusal().0, ErrorCode::NotPrimary);
        assert_eq!(LogFault::SteppedDown.failure().0, ErrorCode::OutcomeUnknown);
        assert_eq!(LogFault::Poisoned.refusal().0, ErrorCode::LogPoisoned);
        assert_eq!(LogFault::Poisoned.failure().0, ErrorCode::LogPoisoned);
    }

    #[test]
    fn check_orders_durable_pending_and_poisoned() {
        let watch = DurableWatch::new(10);
        assert_eq!(watch.check(10), Some(Ok(())));
        assert_eq!(watch.check(11), None);
        watch.poison(LogFault::Poisoned);
        assert_eq!(watch.check(11), Some(Err(LogFault::Poisoned)));
        assert_eq!(watch.check(2), Some(Ok(())));
    }
}
