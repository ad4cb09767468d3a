//! One shard's runtime: its engine, its ends of the two cross-shard meshes, and the table of
//! requests it is waiting on other shards for. Lives on one executor; nothing here is shared
//! with another thread except through the meshes and `NodeShared`.

use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::rc::Rc;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use bytes::Bytes;
use glommio::channels::channel_mesh::{Receivers, Senders};
use glommio::sync::Semaphore;
use tally_engine::{Applied, Ctx, Failure, Outcome, Shard};
use tally_proto::{shard_of, DecodeError, ErrorCode, Reply, Request, RequestOps};
use tally_wal::{DmaStorage, Room, Wal};

use crate::connection::now_ms;
use crate::durability::{DurableWatch, LogFault};
use crate::history::ShardHistory;
use crate::replication::ShardRepl;

use crate::connection::{FrameState, Item};
use crate::mesh::{ShardFigures, ShardReply, ShardRequest};
use crate::node::NodeShared;

/// Ops of one frame bound for one other shard, in their wire encoding, with the frame slots
/// (`indices`) their outcomes fill.
pub struct ForwardBatch {
    pub shard: u16,
    pub indices: Vec<u16>,
    pub ops: Bytes,
    pub client: Arc<[u8]>,
    pub now_ms: u64,
}

/// A request this shard sent to another and the frame slots its reply fills.
enum Waiting {
    Ops {
        frame: Rc<RefCell<FrameState>>,
        indices: Vec<u16>,
        wake: Rc<Semaphore>,
    },
    Stats {
        frame: Rc<RefCell<FrameState>>,
        index: u16,
        wake: Rc<Semaphore>,
    },
}

#[derive(Default)]
pub struct ShardCounters {
    pub connections: Cell<u64>,
    pub frames: Cell<u64>,
    pub ops_forwarded_out: Cell<u64>,
    pub ops_forwarded_in: Cell<u64>,
    pub wal_commits: Cell<u64>,
    pub wal_commit_us: Cell<u64>,
    pub wal_records: Cell<u64>,
    pub snapshots: Cell<u64>,
}

pub struct ShardRuntime {
    pub id: u16,
    pub node: Arc<NodeShared>,
    pub engine: RefCell<Shard>,
    pub counters: ShardCounters,
    /// Closed when the node shuts down; every accept loop and idle reader waits on it.
    pub shutdown: Rc<Semaphore>,
    requests: Senders<ShardRequest>,
    replies: Senders<ShardReply>,
    /// Mesh peer index of each shard id (glommio orders peers by executor id, not by shard).
    peer_of: Vec<usize>,
    waiting: RefCell<HashMap<u64, Waiting>>,
    next_id: Cell<u64>,
    /// This shard's write-ahead log: every state change the engine makes is appended here.
    pub wal: Wal<DmaStorage>,
    /// The durable LSN acks wait for.
    pub durable: DurableWatch,
    /// Signalled when records were appended: the commit loop wakes to write them.
    pub commit_wake: Semaphore,
    /// Signalled when the next segment is needed now: the maintenance task wakes to prepare it.
    pub maintain_wake: Semaphore,
    /// Set once every connection of this shard has been answered during shutdown.
    pub connections_drained: Cell<bool>,
    /// The shard's clock (ms since the Unix epoch): the wall clock, never going backwards. Every
    /// op, tick and query of this shard is timed by it.
    clock: Cell<u64>,
    /// The apply time of the first record in the log's open batch, `None` while it is empty. A
    /// batch holds records of one apply second only, and carries this time (`commit_loop`), so
    /// replay puts every increment in the second it was applied in.
    pub batch_time_ms: Cell<Option<u64>>,
    /// WINDOW, SERIES, AUDIT and EVENTS (`history`).
    pub history: ShardHistory,
    /// Replication: role, ship log, links to replicas or the stream from the primary.
    pub repl: ShardRepl,
}

/// The engine's log sink on a replicating node: every record goes to the WAL and to the ship log.
pub struct Tee<'a> {
    pub wal: &'a Wal<DmaStorage>,
    pub ship_log: &'a RefCell<crate::replication::ship_log::ShipLog>,
}

impl tally_engine::log::LogSink for Tee<'_> {
    fn record(&mut self, lsn: u64, record: &tally_engine::LogRecord<'_>) {
        self.wal.append(lsn, record);
        self.ship_log.borrow_mut().push(lsn, record);
    }
}

impl ShardRuntime {
    // Each argument is a distinct part the executor built; a builder would only rename them.
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        id: u16,
        node: Arc<NodeShared>,
        engine: Shard,
        requests: Senders<ShardRequest>,
        replies: Senders<ShardReply>,
        peer_of: Vec<usize>,
        wal: Wal<DmaStorage>,
        history: ShardHistory,
        repl: ShardRepl,
    ) -> ShardRuntime {
        assert_eq!(peer_of.len(), node.shards as usize);
        assert_eq!(peer_of[id as usize], requests.peer_id());
        ShardRuntime {
            id,
            node,
            engine: RefCell::new(engine),
            counters: ShardCounters::default(),
            shutdown: Rc::new(Semaphore::new(0)),
            requests,
            replies,
            peer_of,
            waiting: RefCell::new(HashMap::new()),
            next_id: Cell::new(1),
            durable: DurableWatch::new(wal.lsn_durable()),
            wal,
            commit_wake: Semaphore::new(0),
            maintain_wake: Semaphore::new(0),
            connections_drained: Cell::new(false),
            clock: Cell::new(0),
            batch_time_ms: Cell::new(None),
            history,
            repl,
        }
    }

    /// Runs `f` with the sink the engine logs to: the WAL, teed into the ship log when replicating.
    pub fn with_sink<T>(&self, f: impl FnOnce(&mut dyn tally_engine::log::LogSink) -> T) -> T {
        if self.repl.tees() {
            let mut tee = Tee {
                wal: &self.wal,
                ship_log: &self.repl.ship_log,
            };
            f(&mut tee)
        } else {
            let mut sink = &self.wal;
            f(&mut sink)
        }
    }

    /// Waits until a change at `lsn` may be acknowledged in the node's ack mode, up to the
    /// replication wait counted from `since`. `Err` with the failure the waiting writes get.
    pub async fn wait_ackable(
        &self,
        lsn: u64,
        mode: tally_replicate::AckMode,
        since: std::time::Instant,
    ) -> Result<(), (ErrorCode, &'static str)> {
        if mode == tally_replicate::AckMode::Local {
            // Only the local fsync: no replica to wait for, so no deadline.
            return self.durable.wait(lsn).await.map_err(|fault| fault.failure());
        }
        match self.durable.wait_mode(lsn, mode, since + self.repl.settings.wait).await {
            Ok(true) => Ok(()),
            Ok(false) => Err((
                ErrorCode::ReplicasUnavailable,
                "not enough replicas acknowledged this write within the replication wait: its outcome is unknown (it is durable on the primary and may still replicate); retry with the same idempotency key",
            )),
            Err(fault) => Err(fault.failure()),
        }
    }

    /// The shard's clock now (see `clock`).
    pub fn clock_ms(&self) -> u64 {
        self.clock_at(now_ms())
    }

    /// `time_ms` (an op's time, perhaps another shard's), raised to the shard's clock, which
    /// moves up to it: time never goes backwards on a shard.
    pub fn clock_at(&self, time_ms: u64) -> u64 {
        let now = time_ms.max(self.clock.get());
        self.clock.set(now);
        now
    }

    /// Whether records applied at `now_ms` must wait for the open batch to be sealed first: it
    /// holds records of another second.
    pub fn batch_second_changed(&self, now_ms: u64) -> bool {
        self.batch_time_ms.get().is_some_and(|t| t / 1_000 != now_ms / 1_000)
    }

    fn take_id(&self) -> u64 {
        let id = self.next_id.get();
        self.next_id.set(id + 1);
        id
    }

    /// Sends a batch of encoded ops to `shard`; the reply fills `indices` of `frame` and wakes the
    /// connection's writer. Waits (and so stops the calling connection's reader) while the
    /// destination's queue is full.
    pub async fn forward_ops(&self, batch: ForwardBatch, frame: &Rc<RefCell<FrameState>>, wake: &Rc<Semaphore>) {
        let ForwardBatch {
            shard,
            indices,
            ops,
            client,
            now_ms,
        } = batch;
        assert_ne!(shard, self.id);
        let id = self.take_id();
        let count = u16::try_from(indices.len()).expect("a frame has at most OPS_PER_FRAME_MAX ops");
        self.counters
            .ops_forwarded_out
            .set(self.counters.ops_forwarded_out.get() + u64::from(count));
        self.waiting.borrow_mut().insert(
            id,
            Waiting::Ops {
                frame: frame.clone(),
                indices,
                wake: wake.clone(),
            },
        );
        let message = ShardRequest::Ops {
            id,
            client,
            now_ms,
            count,
            ops,
        };
        if self
            .requests
            .send_to(self.peer_of[shard as usize], message)
            .await
            .is_err()
        {
            // The destination is gone: only during shutdown. Answer the ops here.
            self.fail_waiting(id, ErrorCode::ShuttingDown, "the owning shard has stopped");
        }
    }

    /// Asks every other shard for its figures; each reply is merged into the STATS item at `index`.
    pub async fn gather_stats(&self, frame: &Rc<RefCell<FrameState>>, index: u16, wake: &Rc<Semaphore>) {
        for shard in 0..self.node.shards {
            if shard == self.id {
                continue;
            }
            let id = self.take_id();
            self.waiting.borrow_mut().insert(
                id,
                Waiting::Stats {
                    frame: frame.clone(),
                    index,
                    wake: wake.clone(),
                },
            );
            if self
                .requests
                .send_to(self.peer_of[shard as usize], ShardRequest::Stats { id })
                .await
                .is_err()
            {
                self.fail_waiting(id, ErrorCode::ShuttingDown, "a shard has stopped");
            }
        }
    }

    fn fail_waiting(&self, id: u64, code: ErrorCode, message: &str) {
        let Some(waiting) = self.waiting.borrow_mut().remove(&id) else {
            return;
        };
        match waiting {
            Waiting::Ops { frame, indices, wake } => {
                let outcomes = indices.iter().map(|_| Err(Failure::new(code, message))).collect();
                frame.borrow_mut().fill_remote(&indices, outcomes);
                wake.signal(1);
            }
            Waiting::Stats { frame, index, wake } => {
                frame.borrow_mut().fill_stats(index, None);
                wake.signal(1);
            }
        }
    }

    /// This shard's own figures.
    pub fn figures(&self) -> ShardFigures {
        let engine = self.engine.borrow();
        ShardFigures {
            shard: self.id,
            engine: engine.stats(),
            split_names: engine.split_names(),
            connections: self.counters.connections.get(),
            frames: self.counters.frames.get(),
            ops_forwarded_out: self.counters.ops_forwarded_out.get(),
            ops_forwarded_in: self.counters.ops_forwarded_in.get(),
            wal_commits: self.counters.wal_commits.get(),
            wal_commit_us: self.counters.wal_commit_us.get(),
            wal_records: self.counters.wal_records.get(),
            lsn_durable: self.durable.lsn_durable(),
            lsn_appended: self.wal.lsn_appended(),
            log_poisoned: self.durable.fault().is_some(),
            disk_full: self.wal.is_disk_full(),
            snapshots: self.counters.snapshots.get(),
            replica: self.repl.replica.is_some(),
            epoch: self.repl.stream.borrow().epoch,
            links: self.repl.primary.as_ref().map_or_else(Vec::new, |side| {
                let sealed = self.repl.ship_log.borrow().lsn_sealed();
                side.links
                    .iter()
                    .map(|link| {
                        let (lag_lsns, lag_ms) = link.lag(sealed);
                        crate::mesh::LinkFigures {
                            lsn_acked: link.shipper.borrow().lsn_acked(),
                            lag_lsns,
                            lag_ms,
                            connected: link.connected.get(),
                            snapshots_sent: link.snapshots_sent.get(),
                        }
                    })
                    .collect()
            }),
        }
    }

    /// Applies one op through the engine and the log. A write the log cannot take (poisoned, disk
    /// full) is refused before the engine sees it, so nothing unlogged is ever applied; a write for
    /// another shard's name goes there instead, whose log may be fine. While the open batch is
    /// full, waits for the commit loop to write it.
    pub async fn apply_logged(&self, op: &Request<'_>, ctx: &Ctx<'_>) -> Applied {
        let mut now_ms = self.clock_at(ctx.now_ms);
        if is_write(op) {
            if let Some(why) = self.repl.refuses_writes() {
                return self.refuse_write(op, ErrorCode::NotPrimary, &why);
            }
            loop {
                // Refused before the engine sees it: not applied, whatever the fault.
                let fault = self
                    .durable
                    .fault()
                    .or(self.wal.is_poisoned().then_some(LogFault::Poisoned));
                if let Some(fault) = fault {
                    let (code, message) = fault.refusal();
                    return self.refuse_write(op, code, message);
                }
                match self.wal.room() {
                    Room::Ready => {}
                    // The next segment is not ready yet but the disk was not found full: it is
                    // being prepared (a few ms); wait for it rather than refuse.
                    Room::DiskFull if !self.wal.is_disk_full() => {
                        self.maintain_wake.signal(1);
                        self.durable.changed().await;
                        continue;
                    }
                    Room::DiskFull => {
                        return self.refuse_write(
                            op,
                            ErrorCode::DiskFull,
                            "the disk is full: the write was not applied",
                        )
                    }
                    _ => {
                        self.commit_wake.signal(1);
                        self.durable.changed().await;
                        continue;
                    }
                }
                // The open batch is of an earlier second: have it sealed (the commit loop wakes
                // waiters once it has), then apply in a batch of this second.
                if self.batch_second_changed(now_ms) {
                    self.commit_wake.signal(1);
                    self.durable.changed().await;
                    now_ms = self.clock_at(now_ms);
                    continue;
                }
                break;
            }
        }
        let ctx = Ctx {
            now_ms,
            client: ctx.client,
        };
        let mut engine = self.engine.borrow_mut();
        let lsn_before = engine.lsn();
        let applied = self.with_sink(|sink| engine.apply(op, &ctx, sink));
        if engine.lsn() != lsn_before {
            if self.batch_time_ms.get().is_none() {
                self.batch_time_ms.set(Some(now_ms));
            }
            self.commit_wake.signal(1);
        }
        applied
    }

    fn refuse_write(&self, op: &Request<'_>, code: ErrorCode, message: &str) -> Applied {
        let name = op.name().expect("writes name a counter");
        let owner = shard_of(name, self.node.shards);
        if owner != self.id {
            return Applied::Forward(owner);
        }
        Applied::Done(Err(Failure::new(code, message)))
    }

    /// Applies ops another shard forwarded here. This shard owns their names, so the engine must
    /// never forward them again. Returns the outcomes, the LSN that must be acknowledgeable before
    /// they are sent back (0 when nothing was written) and the ack mode it must be in.
    async fn apply_forwarded(
        &self,
        client: &[u8],
        now_ms: u64,
        count: u16,
        ops: &[u8],
    ) -> (Vec<Outcome>, u64, tally_replicate::AckMode) {
        let mut mode = self.repl.settings.ack_mode;
        self.counters
            .ops_forwarded_in
            .set(self.counters.ops_forwarded_in.get() + u64::from(count));
        let ctx = Ctx { now_ms, client };
        let mut outcomes = Vec::with_capacity(count as usize);
        let mut wrote = false;
        let mut iter = RequestOps::new(ops, count);
        for (_, op) in iter.by_ref() {
            let outcome = match op {
                Ok(op) => {
                    if is_write(&op) {
                        wrote = true;
                        let name = op.name().expect("writes name a counter");
                        mode = crate::replication::strongest(mode, self.repl.settings.ack_mode_for(name));
                    }
                    match self.apply_logged(&op, &ctx).await {
                        Applied::Done(outcome) => outcome,
                        Applied::Forward(to) => Err(Failure::new(
                            ErrorCode::Internal,
                            format!("shard {} was sent an op it forwards to {to}", self.id),
                        )),
                    }
                }
                Err(error) => Err(failure_of(error)),
            };
            outcomes.push(outcome);
        }
        assert_eq!(iter.trailing_bytes(), 0, "forwarded ops are encoded by a shard");
        let lsn_needed = if wrote { self.engine.borrow().lsn() } else { 0 };
        (outcomes, lsn_needed, mode)
    }
}

/// Whether an op changes state (and so is logged, and acked only once durable).
pub fn is_write(op: &Request<'_>) -> bool {
    matches!(
        op,
        Request::Incr { .. }
            | Request::Create { .. }
            | Request::Cas { .. }
            | Request::AddBounded { .. }
            | Request::Reset { .. }
    )
}

/// Turns the writes among `outcomes` beyond `lsn_ackable` into `code`: the ack they waited for did
/// not come (the log failed, the node stepped down, or replicas did not answer in time), so their
/// outcome is unknown.
pub fn fail_unacked_writes<'a>(
    outcomes: impl Iterator<Item = &'a mut Outcome>,
    lsn_ackable: u64,
    code: ErrorCode,
    message: &str,
) {
    let lsn_durable = lsn_ackable;
    for outcome in outcomes {
        let durable = match outcome {
            Ok(Reply::Incr { token, .. })
            | Ok(Reply::Cas { token, .. })
            | Ok(Reply::AddBounded { token, .. })
            | Ok(Reply::Reset { token, .. }) => token.lsn <= lsn_durable,
            Ok(Reply::Create { created, .. }) => !*created,
            _ => true,
        };
        if !durable {
            *outcome = Err(Failure::new(code, message));
        }
    }
}

/// A decode error as an op failure.
pub fn failure_of(error: DecodeError) -> Failure {
    match error {
        DecodeError::Invalid { code, message } => Failure::new(code, message),
        DecodeError::Incomplete { .. } => Failure::new(ErrorCode::BadFrame, "op truncated"),
        _ => Failure::new(ErrorCode::BadFrame, "op malformed"),
    }
}

/// Serves requests from every other shard, one task per source so that a slow source delays only
/// itself. Each task waits only on the reply mesh, which always drains.
pub fn spawn_request_receivers(shard: &Rc<ShardRuntime>, mut receivers: Receivers<ShardRequest>) {
    for (peer, receiver) in receivers.streams() {
        let shard = shard.clone();
        glommio::spawn_local(async move {
            while let Some(request) = receiver.recv().await {
                match request {
                    ShardRequest::Ops {
                        id,
                        client,
                        now_ms,
                        count,
                        ops,
                    } => {
                        let since = std::time::Instant::now();
                        let (outcomes, lsn_needed, mode) = shard.apply_forwarded(&client, now_ms, count, &ops).await;
                        if shard.durable.check_mode(lsn_needed, mode) == Some(Ok(())) {
                            if shard
                                .replies
                                .send_to(peer, ShardReply::Ops { id, outcomes })
                                .await
                                .is_err()
                            {
                                break;
                            }
                        } else {
                            // Wait for the fsync without holding up the next request from this peer.
                            let shard = shard.clone();
                            glommio::spawn_local(async move {
                                let mut outcomes = outcomes;
                                if let Err((code, message)) = shard.wait_ackable(lsn_needed, mode, since).await {
                                    let ackable = shard.durable.lsn_ackable(mode);
                                    fail_unacked_writes(outcomes.iter_mut(), ackable, code, message);
                                }
                                let _ = shard.replies.send_to(peer, ShardReply::Ops { id, outcomes }).await;
                            })
                            .detach();
                        }
                    }
                    ShardRequest::Stats { id } => {
                        let reply = ShardReply::Stats {
                            id,
                            stats: Box::new(shard.figures()),
                        };
                        if shard.replies.send_to(peer, reply).await.is_err() {
                            break;
                        }
                    }
                }
                glommio::yield_if_needed().await;
            }
        })
        .detach();
    }
}

/// Fills frames with replies from other shards. Never sends anything cross-shard (see `mesh`).
pub fn spawn_reply_receivers(shard: &Rc<ShardRuntime>, mut receivers: Receivers<ShardReply>) {
    for (_, receiver) in receivers.streams() {
        let shard = shard.clone();
        glommio::spawn_local(async move {
            while let Some(reply) = receiver.recv().await {
                let id = match &reply {
                    ShardReply::Ops { id, .. } | ShardReply::Stats { id, .. } => *id,
                };
                let waiting = shard.waiting.borrow_mut().remove(&id);
                let Some(waiting) = waiting else {
                    panic!("shard {} got a reply to request {id} it is not waiting for", shard.id);
                };
                match (waiting, reply) {
                    (Waiting::Ops { frame, indices, wake }, ShardReply::Ops { outcomes, .. }) => {
                        assert_eq!(indices.len(), outcomes.len());
                        frame.borrow_mut().fill_remote(&indices, outcomes);
                        wake.signal(1);
                    }
                    (Waiting::Stats { frame, index, wake }, ShardReply::Stats { stats, .. }) => {
                        frame.borrow_mut().fill_stats(index, Some(*stats));
                        wake.signal(1);
                    }
                    _ => panic!("shard {} got a reply of the wrong kind for request {id}", shard.id),
                }
            }
        })
        .detach();
    }
}

/// Whether the node has been asked to stop.
pub fn shutdown_requested(node: &NodeShared) -> bool {
    node.shutdown.load(Ordering::Acquire)
}

impl Item {
    /// Whether this slot still waits for another shard.
    pub fn is_pending(&self) -> bool {
        matches!(self, Item::Remote { .. }) || matches!(self, Item::Stats { awaiting, .. } if *awaiting > 0)
    }
}
