//! One client connection: a reader task that decodes frames, applies local ops and forwards the
//! rest, and a writer task that answers frames strictly in request order.
//!
//! Each request frame becomes a `FrameState` in the connection's queue. Ops owned by this shard are
//! answered at once; ops owned by another shard are sent there and their slots are filled when the
//! reply comes back. The writer only ever writes the frames at the head of the queue that are
//! complete, so replies leave in request order however the shards interleave. The queue is bounded
//! by `IN_FLIGHT_FRAMES_MAX`: a client that pipelines deeper stops being read until replies drain.

use std::cell::{Cell, RefCell};
use std::collections::VecDeque;
use std::rc::Rc;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use bytes::BytesMut;
use futures_lite::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use glommio::sync::Semaphore;
use tally_engine::{Applied, Ctx, Failure, Outcome};
use tally_proto::frame::encode_error_frame;
use tally_proto::limits::{FRAME_BYTES_MAX, FRAME_HEADER_BYTES, HISTORY_OPS_PER_FRAME_MAX, IN_FLIGHT_FRAMES_MAX};
use tally_proto::{
    encode_error_reply, DecodeError, ErrorCode, FrameBuilder, FrameHeader, FrameKind, HeaderCheck, HelloReply, Reply,
    Request, RequestOps, StatsReply, PROTOCOL_VERSION,
};

use crate::history::HistoryOp;
use crate::limits::{READ_BUFFER_BYTES, WRITE_FLUSH_BYTES};
use crate::mesh::ShardFigures;
use crate::shard::{fail_unacked_writes, failure_of, is_write, ForwardBatch, ShardRuntime};

/// One slot of a frame's reply.
pub enum Item {
    /// Answered. `local`: by this shard (its log must be durable for it); otherwise by the owner
    /// shard, which waited for its own log before replying.
    Done {
        opcode: u8,
        outcome: Outcome,
        local: bool,
    },
    Hello(HelloReply),
    /// Sent to another shard; filled by its reply.
    Remote {
        opcode: u8,
    },
    /// STATS: one entry per shard that has answered (`None` for a shard that could not).
    Stats {
        shards: Vec<Option<ShardFigures>>,
        awaiting: u16,
    },
}

/// A request frame on its way to becoming a reply.
pub struct FrameState {
    request_id: u64,
    /// The whole frame was refused with this error (answered with an error frame).
    refused: Option<(ErrorCode, String)>,
    items: Vec<Item>,
    /// Slots still waiting for another shard.
    pending: u32,
    /// The LSN this shard's log must have made durable before the frame is answered.
    lsn_needed: u64,
    /// When the frame was read: its writes wait for replica acks at most the replication wait from
    /// here.
    since: std::time::Instant,
    /// The ack mode the frame's local writes wait for (the strongest among them).
    mode: tally_replicate::AckMode,
}

impl FrameState {
    fn refused(request_id: u64, code: ErrorCode, message: String) -> FrameState {
        FrameState {
            request_id,
            refused: Some((code, message)),
            items: Vec::new(),
            pending: 0,
            lsn_needed: 0,
            since: std::time::Instant::now(),
            mode: tally_replicate::AckMode::Local,
        }
    }

    pub fn fill_remote(&mut self, indices: &[u16], outcomes: Vec<Outcome>) {
        assert_eq!(indices.len(), outcomes.len());
        for (&index, outcome) in indices.iter().zip(outcomes) {
            let slot = &mut self.items[index as usize];
            let Item::Remote { opcode } = *slot else {
                panic!("slot {index} is not waiting for a remote reply")
            };
            *slot = Item::Done {
                opcode,
                outcome,
                local: false,
            };
            assert!(self.pending > 0);
            self.pending -= 1;
        }
    }

    pub fn fill_stats(&mut self, index: u16, figures: Option<ShardFigures>) {
        let Item::Stats { shards, awaiting } = &mut self.items[index as usize] else {
            panic!("slot {index} is not a STATS slot");
        };
        assert!(*awaiting > 0);
        shards.push(figures);
        *awaiting -= 1;
        if *awaiting == 0 {
            assert!(self.pending > 0);
            self.pending -= 1;
        }
    }

    /// The ack this frame waited for will not come: its writes beyond `lsn_ackable` get `code`
    /// (their outcomes are unknown).
    fn fail_unacked_writes(&mut self, lsn_ackable: u64, code: ErrorCode, message: &str) {
        let outcomes = self.items.iter_mut().filter_map(|item| match item {
            Item::Done {
                outcome, local: true, ..
            } => Some(outcome),
            _ => None,
        });
        fail_unacked_writes(outcomes, lsn_ackable, code, message);
    }

    fn is_complete(&self) -> bool {
        self.pending == 0
    }

    fn encode(&self, shard: &ShardRuntime, out: &mut BytesMut) {
        assert!(self.is_complete());
        if let Some((code, message)) = &self.refused {
            encode_error_frame(out, self.request_id, *code, message);
            return;
        }
        let mut frame = FrameBuilder::begin(out, FrameKind::Response, self.request_id);
        for item in &self.items {
            match item {
                Item::Done {
                    opcode,
                    outcome: Ok(reply),
                    ..
                } => {
                    assert_eq!(*opcode, reply.opcode() as u8);
                    reply.encode(out);
                }
                Item::Done {
                    opcode,
                    outcome: Err(failure),
                    ..
                } => {
                    encode_error_reply(out, *opcode, failure.code, failure.current, &failure.message);
                }
                Item::Hello(hello) => Reply::Hello(hello.clone()).encode(out),
                Item::Stats { shards, .. } => stats_reply(shard, shards).encode(out),
                Item::Remote { .. } => unreachable!("a complete frame has no remote slot"),
            }
            frame.op_added();
        }
        assert_eq!(frame.op_count() as usize, self.items.len());
        frame.finish(out);
    }
}

fn stats_reply(shard: &ShardRuntime, shards: &[Option<ShardFigures>]) -> Reply {
    let node = &shard.node;
    let mut stats = StatsReply::default();
    stats.figures.push(("node.shards".into(), i64::from(node.shards)));
    stats.figures.push((
        "node.connections".into(),
        node.connections.load(Ordering::Relaxed) as i64,
    ));
    stats
        .figures
        .push(("node.uptime_ms".into(), node.started.elapsed().as_millis() as i64));
    stats
        .figures
        .push(("node.shards_answered".into(), shards.iter().flatten().count() as i64));
    let mut answered: Vec<&ShardFigures> = shards.iter().flatten().collect();
    stats.figures.push(("node.role".into(), node_role(shard)));
    let epoch = answered.iter().map(|f| f.epoch).max().unwrap_or(0);
    stats
        .figures
        .push(("node.epoch".into(), i64::try_from(epoch).unwrap_or(i64::MAX)));
    answered.sort_by_key(|f| f.shard);
    for figures in answered {
        figures.push_figures(&mut stats.figures);
        stats.split.extend(figures.split_names.iter().cloned());
    }
    Reply::Stats(stats)
}

/// State shared by a connection's reader and writer.
struct Conn {
    shard: Rc<ShardRuntime>,
    /// The client's name from HELLO, passed to the engine for audit records.
    client: RefCell<Arc<[u8]>>,
    queue: RefCell<VecDeque<Rc<RefCell<FrameState>>>>,
    /// Signalled whenever the writer may have something to do.
    wake: Rc<Semaphore>,
    /// One permit per frame the connection may have in flight.
    in_flight: Semaphore,
    reader_done: Cell<bool>,
}

/// Serves one connection until the peer closes it, an unrecoverable frame arrives, or the node
/// shuts down (in-flight frames are answered first).
pub async fn serve<S>(shard: Rc<ShardRuntime>, stream: S)
where
    S: AsyncRead + AsyncWrite + Unpin + 'static,
{
    let mut stream = stream;
    // A node's replication connection starts with the preamble; a client's frame cannot.
    let Some(first) = sniff(&shard, &mut stream).await else {
        return;
    };
    if first == crate::replication::PREAMBLE {
        crate::replication::replica::serve_peer(shard, stream).await;
        return;
    }
    let (reader, writer) = futures_lite::io::split(stream);
    let conn = Rc::new(Conn {
        shard,
        client: RefCell::new(Arc::from(&b""[..])),
        queue: RefCell::new(VecDeque::new()),
        wake: Rc::new(Semaphore::new(0)),
        in_flight: Semaphore::new(IN_FLIGHT_FRAMES_MAX as u64),
        reader_done: Cell::new(false),
    });
    let writer_task = glommio::spawn_local(write_loop(conn.clone(), writer));
    read_loop(&conn, reader, &first).await;
    conn.reader_done.set(true);
    conn.wake.signal(1);
    writer_task.await;
}

/// Reads the connection's first bytes: up to the preamble's length, fewer if they stop matching it
/// or the peer closes. `None` if the peer closed before sending anything or shutdown came first.
async fn sniff<S: AsyncRead + Unpin>(shard: &ShardRuntime, stream: &mut S) -> Option<Vec<u8>> {
    let preamble = crate::replication::PREAMBLE;
    let mut first = Vec::with_capacity(preamble.len());
    let mut byte = [0u8; 8];
    while first.len() < preamble.len() && preamble.starts_with(&first) {
        let want = preamble.len() - first.len();
        let shutdown = shard.shutdown.clone();
        let read = futures_lite::future::or(
            async { stream.read(&mut byte[..want]).await.map_or(Read::Stop, Read::Bytes) },
            async move {
                let _ = shutdown.acquire(1).await;
                Read::Stop
            },
        )
        .await;
        match read {
            Read::Bytes(0) | Read::Stop => return (!first.is_empty()).then_some(first),
            Read::Bytes(n) => first.extend_from_slice(&byte[..n]),
        }
    }
    Some(first)
}

/// Refuses a connection over `CONNECTIONS_MAX`: one error frame, then close.
pub async fn refuse<S>(mut stream: S, code: ErrorCode, message: &str)
where
    S: AsyncWrite + Unpin,
{
    let mut out = BytesMut::new();
    encode_error_frame(&mut out, 0, code, message);
    let _ = stream.write_all(&out).await;
    let _ = stream.close().await;
}

enum Read {
    Bytes(usize),
    Stop,
}

async fn read_loop<R: AsyncRead + Unpin>(conn: &Rc<Conn>, mut reader: R, first: &[u8]) {
    let mut buf = vec![0u8; READ_BUFFER_BYTES];
    buf[..first.len()].copy_from_slice(first);
    let (mut start, mut end) = (0usize, first.len());
    // Body bytes of a refused frame still to be discarded.
    let mut skip: usize = 0;
    loop {
        // Serve every complete frame in the buffer.
        loop {
            if skip > 0 {
                let n = skip.min(end - start);
                start += n;
                skip -= n;
                if skip > 0 {
                    break;
                }
            }
            let header = match FrameHeader::parse(&buf[start..end]) {
                Ok(header) => header,
                Err(DecodeError::Incomplete { .. }) => break,
                Err(error) => {
                    // The length prefix cannot be trusted: answer and close this connection only.
                    let failure = failure_of(error);
                    push_ready(conn, FrameState::refused(0, failure.code, failure.message)).await;
                    return;
                }
            };
            if let HeaderCheck::Refuse { code, message } = header.check_request() {
                push_ready(conn, FrameState::refused(header.request_id, code, message)).await;
                start += FRAME_HEADER_BYTES;
                skip = header.body_len as usize;
                continue;
            }
            let total = FRAME_HEADER_BYTES + header.body_len as usize;
            if end - start < total {
                if buf.len() < total {
                    assert!(total <= FRAME_BYTES_MAX as usize + 4);
                    buf.resize(total, 0);
                }
                break;
            }
            if conn.in_flight.acquire(1).await.is_err() {
                return; // The writer is gone: the peer stopped reading.
            }
            serve_frame(conn, &header, &buf[start + FRAME_HEADER_BYTES..start + total]).await;
            start += total;
        }
        // Make room at the end of the buffer.
        if start == end {
            (start, end) = (0, 0);
        } else if start > 0 && (end == buf.len() || start >= buf.len() / 2) {
            buf.copy_within(start..end, 0);
            end -= start;
            start = 0;
        }
        if end == buf.len() {
            let grown = (buf.len() * 2).min(FRAME_BYTES_MAX as usize + 4);
            assert!(
                grown > buf.len(),
                "a buffer of a full frame is never full before the frame is served"
            );
            buf.resize(grown, 0);
        }
        let shutdown = conn.shard.shutdown.clone();
        let read = futures_lite::future::or(
            async { reader.read(&mut buf[end..]).await.map_or(Read::Stop, Read::Bytes) },
            async move {
                let _ = shutdown.acquire(1).await;
                Read::Stop
            },
        )
        .await;
        match read {
            Read::Bytes(0) | Read::Stop => return,
            Read::Bytes(n) => end += n,
        }
    }
}

async fn push_ready(conn: &Conn, frame: FrameState) {
    if conn.in_flight.acquire(1).await.is_err() {
        return;
    }
    conn.queue.borrow_mut().push_back(Rc::new(RefCell::new(frame)));
    conn.wake.signal(1);
}

/// One batch of ops for another shard.
struct Outgoing {
    shard: u16,
    indices: Vec<u16>,
    ops: BytesMut,
}

async fn serve_frame(conn: &Rc<Conn>, header: &FrameHeader, body: &[u8]) {
    let shard = &conn.shard;
    shard.counters.frames.set(shard.counters.frames.get() + 1);
    if !RequestOps::lengths_add_up(body, header.op_count) {
        let message = "op lengths do not add up to the frame body".to_string();
        let frame = FrameState::refused(header.request_id, ErrorCode::BadFrame, message);
        conn.queue.borrow_mut().push_back(Rc::new(RefCell::new(frame)));
        conn.wake.signal(1);
        return;
    }
    let now_ms = now_ms();
    let mut items = Vec::with_capacity(header.op_count as usize);
    let mut outgoing: Vec<Outgoing> = Vec::new();
    let mut stats_at = None;
    let mut promote_at = None;
    let mut history_ops = Vec::new();
    let mut wrote = false;
    let mut mode = shard.repl.settings.ack_mode;
    let mut client = conn.client.borrow().clone();
    for (index, (opcode, op)) in RequestOps::new(body, header.op_count).enumerate() {
        let item = match op {
            Err(error) => Item::Done {
                opcode,
                outcome: Err(failure_of(error)),
                local: true,
            },
            Ok(Request::Hello { client: name }) => {
                client = Arc::from(name);
                *conn.client.borrow_mut() = client.clone();
                Item::Hello(hello_reply(shard))
            }
            Ok(Request::Stats) => {
                stats_at = Some(index as u16);
                let awaiting = shard.node.shards - 1;
                Item::Stats {
                    shards: vec![Some(shard.figures())],
                    awaiting,
                }
            }
            Ok(Request::Promote { force, wait_ms }) => {
                promote_at = Some((index as u16, force, wait_ms));
                Item::Remote { opcode }
            }
            Ok(op) if op.is_history() && history_ops.len() >= HISTORY_OPS_PER_FRAME_MAX => Item::Done {
                opcode,
                outcome: Err(Failure::new(
                    ErrorCode::TooManyOps,
                    format!("at most HISTORY_OPS_PER_FRAME_MAX {HISTORY_OPS_PER_FRAME_MAX} history ops per frame"),
                )),
                local: true,
            },
            Ok(op) if op.is_history() => {
                // Answered by a task of its own (`history`); the slot is filled when it is done.
                history_ops.push((index as u16, HistoryOp::of(&op).expect("a history op")));
                Item::Remote { opcode }
            }
            Ok(op) => match shard
                .apply_logged(
                    &op,
                    &Ctx {
                        now_ms,
                        client: &client,
                    },
                )
                .await
            {
                Applied::Done(outcome) => {
                    // Only writes this shard applied wait for this shard's log.
                    if is_write(&op) {
                        wrote = true;
                        let name = op.name().expect("writes name a counter");
                        mode = crate::replication::strongest(mode, shard.repl.settings.ack_mode_for(name));
                    }
                    Item::Done {
                        opcode,
                        outcome,
                        local: true,
                    }
                }
                Applied::Forward(to) => {
                    assert_ne!(to, shard.id, "the engine forwarded an op to its own shard");
                    let batch = match outgoing.iter_mut().position(|o| o.shard == to) {
                        Some(at) => &mut outgoing[at],
                        None => {
                            outgoing.push(Outgoing {
                                shard: to,
                                indices: Vec::new(),
                                ops: BytesMut::new(),
                            });
                            outgoing.last_mut().expect("just pushed")
                        }
                    };
                    batch.indices.push(index as u16);
                    op.encode(&mut batch.ops);
                    Item::Remote { opcode }
                }
            },
        };
        items.push(item);
    }
    // The frame's local writes are acked once the log is durable up to the engine's LSN now
    // (an upper bound of every LSN they took, duplicates' original LSNs included).
    let lsn_needed = if wrote { shard.engine.borrow().lsn() } else { 0 };
    let pending = outgoing.iter().map(|o| o.indices.len() as u32).sum::<u32>()
        + u32::from(stats_at.is_some() && shard.node.shards > 1)
        + u32::from(promote_at.is_some())
        + history_ops.len() as u32;
    let frame = Rc::new(RefCell::new(FrameState {
        request_id: header.request_id,
        refused: None,
        items,
        pending,
        lsn_needed,
        since: std::time::Instant::now(),
        mode,
    }));
    conn.queue.borrow_mut().push_back(frame.clone());
    if pending == 0 {
        conn.wake.signal(1);
        return;
    }
    for (index, op) in history_ops {
        let (shard, frame, wake) = (shard.clone(), frame.clone(), conn.wake.clone());
        glommio::spawn_local(async move {
            let outcome = crate::history::answer(&shard, op).await;
            frame.borrow_mut().fill_remote(&[index], vec![outcome]);
            wake.signal(1);
        })
        .detach();
    }
    let client = conn.client.borrow().clone();
    for batch in outgoing {
        let batch = ForwardBatch {
            shard: batch.shard,
            indices: batch.indices,
            ops: batch.ops.freeze(),
            client: client.clone(),
            now_ms,
        };
        shard.forward_ops(batch, &frame, &conn.wake).await;
    }
    if let Some(index) = stats_at {
        if shard.node.shards > 1 {
            shard.gather_stats(&frame, index, &conn.wake).await;
        }
    }
    if let Some((index, force, wait_ms)) = promote_at {
        let (shard, frame, wake) = (shard.clone(), frame.clone(), conn.wake.clone());
        glommio::spawn_local(async move {
            let wait = std::time::Duration::from_millis(u64::from(wait_ms));
            let outcome = crate::node::promote_node(&shard, force, wait).await;
            let promoted = outcome.is_ok();
            frame.borrow_mut().fill_remote(&[index], vec![outcome]);
            wake.signal(1);
            if promoted {
                // The reply is queued; the graceful restart answers it before connections close.
                crate::node::request_role_change(&shard.node, crate::replication::state::PersistedRole::Primary);
            }
        })
        .detach();
    }
}

/// STATS `node.role`: 0 primary, 1 replica, 2 a restarting primary re-establishing its epoch
/// (it serves as a replica meanwhile and takes no writes).
fn node_role(shard: &ShardRuntime) -> i64 {
    match (&shard.repl.replica, shard.repl.settings.candidate) {
        (None, _) => 0,
        (Some(_), false) => 1,
        (Some(_), true) => 2,
    }
}

fn hello_reply(shard: &ShardRuntime) -> HelloReply {
    let node = &shard.node;
    HelloReply {
        version: PROTOCOL_VERSION,
        shard_count: node.shards,
        shard: shard.id,
        shard_ports: node.shard_ports.iter().map(|p| p.load(Ordering::Acquire)).collect(),
        server: concat!("tallyd ", env!("CARGO_PKG_VERSION")).to_string(),
    }
}

async fn write_loop<W: AsyncWrite + Unpin>(conn: Rc<Conn>, mut writer: W) {
    let mut out = BytesMut::with_capacity(WRITE_FLUSH_BYTES);
    loop {
        let mut frames = 0u64;
        let mut durable_wait = None;
        loop {
            let head = conn.queue.borrow().front().cloned();
            let Some(head) = head else { break };
            if !head.borrow().is_complete() {
                break;
            }
            let (lsn_needed, since, mode) = {
                let head = head.borrow();
                (head.lsn_needed, head.since, head.mode)
            };
            let shard = &conn.shard;
            match shard.durable.check_mode(lsn_needed, mode) {
                Some(Ok(())) => {}
                Some(Err(fault)) => {
                    let (code, message) = fault.failure();
                    head.borrow_mut()
                        .fail_unacked_writes(shard.durable.lsn_ackable(mode), code, message);
                }
                None if mode != tally_replicate::AckMode::Local && since.elapsed() >= shard.repl.settings.wait => {
                    if let Err((code, message)) = shard.wait_ackable(lsn_needed, mode, since).await {
                        head.borrow_mut()
                            .fail_unacked_writes(shard.durable.lsn_ackable(mode), code, message);
                    }
                }
                None => {
                    durable_wait = Some((lsn_needed, mode, since));
                    break;
                }
            }
            conn.queue.borrow_mut().pop_front();
            head.borrow().encode(&conn.shard, &mut out);
            frames += 1;
            if out.len() >= WRITE_FLUSH_BYTES {
                break;
            }
        }
        if !out.is_empty() {
            if writer.write_all(&out).await.is_err() {
                break;
            }
            out.clear();
            conn.in_flight.signal(frames);
            continue;
        }
        if let Some((lsn, mode, since)) = durable_wait {
            // The head is answered, but not acknowledgeable yet: the next fsync or replica ack (or
            // the poison, or the replication wait running out) wakes us.
            let _ = conn.shard.wait_ackable(lsn, mode, since).await;
            continue;
        }
        if conn.reader_done.get() && conn.queue.borrow().is_empty() {
            break;
        }
        if conn.wake.acquire(1).await.is_err() {
            break;
        }
        crate::durability::take_wakeups(&conn.wake);
    }
    // Wake a reader waiting for in-flight room: there will be none.
    conn.in_flight.close();
    let _ = writer.flush().await;
    let _ = writer.close().await;
}

/// Milliseconds since the Unix epoch, the engine's notion of time.
pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refused_frames_encode_as_error_frames() {
        let frame = FrameState::refused(7, ErrorCode::FrameTooLarge, "too big".into());
        let mut out = BytesMut::new();
        // Encoding a refused frame needs no shard state.
        if let Some((code, message)) = &frame.refused {
            encode_error_frame(&mut out, frame.request_id, *code, message);
        }
        let header = FrameHeader::parse(&out).unwrap();
        assert_eq!(header.request_id, 7);
        assert_eq!(header.frame_kind(), Some(FrameKind::Error));
        let (code, message) = tally_proto::frame::decode_error_frame(&out[FRAME_HEADER_BYTES..]).unwrap();
        assert_eq!(code, ErrorCode::FrameTooLarge as u16);
        assert_eq!(message, "too big");
    }

    #[test]
    fn remote_and_stats_slots_complete_the_frame() {
        let mut frame = FrameState {
            request_id: 1,
            refused: None,
            items: vec![
                Item::Remote { opcode: 2 },
                Item::Stats {
                    shards: vec![None],
                    awaiting: 1,
                },
                Item::Done {
                    opcode: 3,
                    outcome: Err(Failure::new(ErrorCode::NotFound, "x")),
                    local: true,
                },
            ],
            pending: 2,
            lsn_needed: 0,
            since: std::time::Instant::now(),
            mode: tally_replicate::AckMode::Local,
        };
        assert!(!frame.is_complete());
        frame.fill_remote(&[0], vec![Err(Failure::new(ErrorCode::Overflow, "o"))]);
        assert!(!frame.is_complete());
        frame.fill_stats(1, None);
        assert!(frame.is_complete());
        assert!(!frame.items.iter().any(Item::is_pending));
    }
}
