//! One shard's runtime: its engine, its ends of the two cross-shard meshes, and the table of
//! requests it is waiting on other shards for. Lives on one executor; nothing here is shared
//! with another thread except through the meshes and `NodeShared`.

use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::rc::Rc;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use glommio::channels::channel_mesh::{Receivers, Senders};
use glommio::sync::Semaphore;
use tally_engine::{Applied, Ctx, Failure, Shard};
use tally_proto::{DecodeError, ErrorCode, RequestOps};

use crate::connection::{FrameState, Item};
use crate::mesh::{ShardFigures, ShardReply, ShardRequest};
use crate::node::NodeShared;

/// Ops of one frame bound for one other shard, in their wire encoding, with the frame slots
/// (`indices`) their outcomes fill.
pub struct ForwardBatch {
    pub shard: u16,
    pub indices: Vec<u16>,
    pub ops: Vec<u8>,
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
}

impl ShardRuntime {
    pub fn new(
        id: u16,
        node: Arc<NodeShared>,
        engine: Shard,
        requests: Senders<ShardRequest>,
        replies: Senders<ShardReply>,
        peer_of: Vec<usize>,
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
        }
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
        self.figures_with(&self.engine.borrow())
    }

    /// This shard's figures while the caller already holds the engine.
    pub fn figures_with(&self, engine: &Shard) -> ShardFigures {
        ShardFigures {
            shard: self.id,
            engine: engine.stats(),
            split_names: engine.split_names(),
            connections: self.counters.connections.get(),
            frames: self.counters.frames.get(),
            ops_forwarded_out: self.counters.ops_forwarded_out.get(),
            ops_forwarded_in: self.counters.ops_forwarded_in.get(),
        }
    }

    /// Applies ops another shard forwarded here. This shard owns their names (or holds a split
    /// slot), so the engine must never forward them again.
    fn apply_forwarded(&self, client: &[u8], now_ms: u64, count: u16, ops: &[u8]) -> Vec<tally_engine::Outcome> {
        self.counters
            .ops_forwarded_in
            .set(self.counters.ops_forwarded_in.get() + u64::from(count));
        let ctx = Ctx { now_ms, client };
        let mut engine = self.engine.borrow_mut();
        let mut iter = RequestOps::new(ops, count);
        let outcomes: Vec<_> = iter
            .by_ref()
            .map(|(_, op)| match op {
                Ok(op) => match engine.apply(&op, &ctx, &mut tally_engine::NullLog) {
                    Applied::Done(outcome) => outcome,
                    Applied::Forward(to) => Err(Failure::new(
                        ErrorCode::Internal,
                        format!("shard {} was sent an op it forwards to {to}", self.id),
                    )),
                },
                Err(error) => Err(failure_of(error)),
            })
            .collect();
        assert_eq!(iter.trailing_bytes(), 0, "forwarded ops are encoded by a shard");
        outcomes
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
                let reply = match request {
                    ShardRequest::Ops {
                        id,
                        client,
                        now_ms,
                        count,
                        ops,
                    } => ShardReply::Ops {
                        id,
                        outcomes: shard.apply_forwarded(&client, now_ms, count, &ops),
                    },
                    ShardRequest::Stats { id } => ShardReply::Stats {
                        id,
                        stats: Box::new(shard.figures()),
                    },
                };
                if shard.replies.send_to(peer, reply).await.is_err() {
                    break;
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
