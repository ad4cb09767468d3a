//! One benchmark connection: a socket, the frames in flight on it, and the bookkeeping both loops
//! share (planning and encoding a frame, reading and matching replies, recording latencies). The
//! protocol is behind `Wire`, so Tally and Redis run through the same loops; the loops themselves
//! are in closed_loop.rs and open_loop.rs.
//!
//! Invariants: frames are answered in the order they were sent (both protocols promise it), so the
//! oldest frame in flight is the one the next reply answers; every op planned is either answered
//! and recorded (if measured) or the run fails; the window never exceeds `depth` frames.

use std::collections::VecDeque;
use std::io::{self, Read, Write};
use std::net::TcpStream;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::BytesMut;

use crate::error::BenchError;
use crate::limits::{READ_BUFFER_BYTES, REPLY_TIMEOUT_MS};
use crate::recorder::{OpReply, Recorder};
use crate::schedule::{latency_us, Budget};
use crate::workload::{OpKind, PlannedOp, Workload};

/// A protocol as the loops see it: frames of ops out, one reply per op back, in order.
pub trait Wire {
    /// Appends one request frame carrying `ops` to `out`.
    fn encode_frame(&mut self, ops: &[PlannedOp], out: &mut BytesMut);

    /// Decodes the reply to the oldest frame in flight (of `ops` ops) from the front of `input`,
    /// pushing one reply per op onto `replies`. `Ok(None)` when `input` does not yet hold all of it;
    /// otherwise the bytes it took.
    fn decode_frame(
        &mut self,
        input: &[u8],
        ops: usize,
        replies: &mut Vec<OpReply>,
    ) -> Result<Option<usize>, BenchError>;
}

/// A counter on its own cache line, so connection threads counting their ops do not slow each
/// other down.
#[repr(align(64))]
#[derive(Debug, Default)]
pub struct PaddedCounter(pub AtomicU64);

/// What a connection thread shares with the run: the epoch all times count from, the abort flag,
/// and its own progress counter.
#[derive(Debug, Clone)]
pub struct RunContext {
    pub epoch: Instant,
    /// Set when any connection fails: the others stop sending and return.
    pub abort: Arc<AtomicBool>,
    /// Ops this connection has had answered, for the progress bar.
    pub progress: Arc<PaddedCounter>,
}

impl RunContext {
    pub fn now_ns(&self) -> u64 {
        self.epoch.elapsed().as_nanos() as u64
    }
}

/// A frame written and not yet answered.
#[derive(Debug, Clone, Copy)]
struct FrameInFlight {
    /// Latency counts from here: the intended send time (open loop) or the write (closed loop).
    from_ns: u64,
    ops: usize,
    measured: bool,
}

/// An op written and not yet answered.
#[derive(Debug, Clone, Copy)]
struct OpInFlight {
    kind: OpKind,
    strict: Option<u32>,
}

/// One connection's state.
pub struct Conn<W: Wire> {
    wire: W,
    pub(crate) stream: TcpStream,
    workload: Workload,
    pub recorder: Recorder,
    budget: Budget,
    pub(crate) depth: usize,
    pub(crate) clock: RunContext,
    read_buf: Vec<u8>,
    read_start: usize,
    read_end: usize,
    out: BytesMut,
    frames: VecDeque<FrameInFlight>,
    ops: VecDeque<OpInFlight>,
    planned: Vec<PlannedOp>,
    replies: Vec<OpReply>,
    /// When the last measured frame was answered.
    pub last_measured_done_ns: Option<u64>,
    /// When the last reply of any kind arrived (or the loop started), for the reply timeout.
    pub(crate) last_reply_ns: u64,
}

impl<W: Wire> Conn<W> {
    pub fn new(
        wire: W,
        stream: TcpStream,
        workload: Workload,
        recorder: Recorder,
        budget: Budget,
        depth: usize,
        clock: RunContext,
    ) -> Conn<W> {
        assert!(depth >= 1);
        Conn {
            wire,
            stream,
            workload,
            recorder,
            budget,
            depth,
            clock,
            read_buf: vec![0; READ_BUFFER_BYTES],
            read_start: 0,
            read_end: 0,
            out: BytesMut::with_capacity(64 * 1024),
            frames: VecDeque::with_capacity(depth),
            ops: VecDeque::new(),
            planned: Vec::new(),
            replies: Vec::new(),
            last_measured_done_ns: None,
            last_reply_ns: 0,
        }
    }

    /// Frames written and not yet answered.
    pub(crate) fn in_flight(&self) -> usize {
        self.frames.len()
    }

    pub(crate) fn aborted(&self) -> bool {
        self.clock.abort.load(Ordering::Relaxed)
    }

    /// Plans one frame whose latency counts from `from_ns` and appends it to the output buffer.
    /// False, and nothing planned, once the budget is spent.
    pub(crate) fn push_frame(&mut self, from_ns: u64) -> bool {
        assert!(self.frames.len() < self.depth, "the window is full");
        let ops = self.budget.frame_ops(from_ns);
        if ops == 0 {
            return false;
        }
        self.planned.clear();
        for _ in 0..ops {
            let op = self.workload.next_op();
            self.ops.push_back(OpInFlight {
                kind: op.kind,
                strict: op.target.strict_index(),
            });
            self.planned.push(op);
        }
        self.wire.encode_frame(&self.planned, &mut self.out);
        self.frames.push_back(FrameInFlight {
            from_ns,
            ops,
            measured: self.budget.is_measured(from_ns),
        });
        true
    }

    /// Writes everything planned so far.
    pub(crate) fn flush(&mut self) -> Result<(), BenchError> {
        if self.out.is_empty() {
            return Ok(());
        }
        self.stream
            .write_all(&self.out)
            .map_err(|e| BenchError::io("writing requests", e))?;
        self.out.clear();
        Ok(())
    }

    /// Reads what the socket has (blocking until something arrives) and handles every complete
    /// reply frame. Returns the frames answered.
    pub(crate) fn read_replies(&mut self) -> Result<usize, BenchError> {
        if self.read_start == self.read_end {
            self.read_start = 0;
            self.read_end = 0;
        } else if self.read_end == self.read_buf.len() {
            if self.read_start > 0 {
                self.read_buf.copy_within(self.read_start..self.read_end, 0);
                self.read_end -= self.read_start;
                self.read_start = 0;
            } else {
                // One reply frame larger than the buffer: replies are bounded (at most
                // `OPS_PER_FRAME_MAX` error replies of bounded size), so this grows a few times.
                let len = self.read_buf.len() * 2;
                self.read_buf.resize(len, 0);
            }
        }
        let read = loop {
            match self.stream.read(&mut self.read_buf[self.read_end..]) {
                Ok(0) => {
                    return Err(BenchError::io(
                        "reading replies",
                        io::Error::new(io::ErrorKind::UnexpectedEof, "the server closed the connection"),
                    ))
                }
                Ok(read) => break read,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) if matches!(e.kind(), io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut) => {
                    return Err(BenchError::Timeout(REPLY_TIMEOUT_MS))
                }
                Err(e) => return Err(BenchError::io("reading replies", e)),
            }
        };
        self.read_end += read;
        let now_ns = self.clock.now_ns();
        self.last_reply_ns = now_ns;
        self.handle_replies(now_ns)
    }

    /// Matches every complete reply frame in the buffer to the oldest frame in flight.
    fn handle_replies(&mut self, done_ns: u64) -> Result<usize, BenchError> {
        let mut answered = 0;
        while let Some(frame) = self.frames.front().copied() {
            self.replies.clear();
            let input = &self.read_buf[self.read_start..self.read_end];
            let Some(consumed) = self.wire.decode_frame(input, frame.ops, &mut self.replies)? else {
                break;
            };
            assert!(consumed <= input.len());
            if self.replies.len() != frame.ops {
                return Err(BenchError::Protocol(format!(
                    "{} replies to a frame of {} ops",
                    self.replies.len(),
                    frame.ops
                )));
            }
            self.read_start += consumed;
            self.frames.pop_front();
            let latency = latency_us(frame.from_ns, done_ns);
            for reply in &self.replies {
                let op = self.ops.pop_front().expect("an op in flight for every reply");
                if reply.echoed.is_some_and(|echoed| echoed != op.kind) {
                    return Err(BenchError::Protocol(format!(
                        "a {:?} reply to a {} op",
                        reply.echoed,
                        op.kind.name()
                    )));
                }
                if let (Some(index), Some(value)) = (op.strict, reply.value) {
                    self.workload.observe_strict(index, value);
                }
                if frame.measured {
                    self.recorder.record(op.kind, reply, latency);
                }
            }
            if frame.measured {
                self.last_measured_done_ns = Some(done_ns);
            }
            self.clock.progress.0.fetch_add(frame.ops as u64, Ordering::Relaxed);
            answered += 1;
        }
        Ok(answered)
    }

    /// Sets how long a blocking read may wait.
    pub(crate) fn set_read_timeout(&self, timeout: Duration) -> Result<(), BenchError> {
        self.stream
            .set_read_timeout(Some(timeout))
            .map_err(|e| BenchError::io("setting the read timeout", e))
    }
}
