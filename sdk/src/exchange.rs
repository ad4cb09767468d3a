//! One run of ops over a blocking client's connections: routing each op to a lane (the main
//! connection or a shard's own connection), cutting lanes into frames, keeping up to `depth` frames
//! in flight per lane, matching replies, and retrying what a failed connection left unanswered.
//!
//! Invariants: every op ends with exactly one result; a lane with frames in flight has a
//! connection; replies are matched to the oldest frame in flight by request id; the reply bytes a
//! lane may owe stay under `REPLY_BYTES_IN_FLIGHT_MAX` (beyond one frame), so a blocked write never
//! waits on a server that waits for us to read; every round of the loop makes progress; an op is
//! written at most `RetryPolicy::attempts` times.

use std::collections::VecDeque;
use std::time::Instant;

use bytes::BytesMut;
use tally_proto::limits::{FRAME_BYTES_MAX, FRAME_HEADER_BYTES};
use tally_proto::{FrameBuilder, FrameKind};

use crate::client::{Client, LaneDown, MAIN_LANE};
use crate::error::Error;
use crate::key::random_key;
use crate::limits::{PIPELINE_BATCH_MAX, PIPELINE_DEPTH_MAX, REPLY_BYTES_IN_FLIGHT_MAX};
use crate::op::Op;
use crate::outcome::Outcome;
use crate::response::{decode_frame, expect};
use crate::retry::settle;

/// Sends `ops` over `client`'s connections and returns their results in submission order.
pub(crate) fn run(client: &mut Client, ops: &[Op<'_>], batch: usize, depth: usize) -> Vec<Result<Outcome, Error>> {
    assert!((1..=PIPELINE_BATCH_MAX).contains(&batch));
    assert!((1..=PIPELINE_DEPTH_MAX).contains(&depth));
    client.topology_refresh();
    let mut exchange = Exchange::new(ops, client.lane_count(), batch, depth);
    exchange.route_all(client);
    let mut refusal_rounds = 0;
    loop {
        while exchange.busy() {
            let events = exchange.events;
            for lane in 0..exchange.lanes.len() {
                exchange.fill(client, lane);
            }
            for lane in 0..exchange.lanes.len() {
                exchange.drain_one(client, lane);
            }
            assert!(exchange.events > events, "an exchange round made no progress");
        }
        if !exchange.requeue_transient_refusals(client) {
            break;
        }
        refusal_rounds += 1;
        let backoff = client.options.retry.backoff_for(refusal_rounds);
        if !backoff.is_zero() {
            // The server asked for time ("overloaded", "shutting down"): a real wait, not
            // synchronisation.
            std::thread::sleep(backoff);
        }
    }
    exchange.finish()
}

/// A frame sent and not yet answered.
struct FrameInFlight {
    request_id: u64,
    /// Indices of its ops, in frame order.
    ops: Vec<usize>,
    /// Upper bound of its reply frame.
    reply_bytes: usize,
}

/// The ops bound for one connection.
#[derive(Default)]
struct Lane {
    /// Ops not yet written, in submission order.
    pending: VecDeque<usize>,
    in_flight: VecDeque<FrameInFlight>,
    reply_bytes_in_flight: usize,
    /// Connection failures so far, for the retry backoff.
    failures: u32,
}

struct Exchange<'o, 'a> {
    ops: &'o [Op<'a>],
    /// The key each op is sent with: the caller's, one attached for retries, or none.
    keys: Vec<Option<u128>>,
    /// How many times each op has been written (or a connection for it attempted).
    tries: Vec<u32>,
    results: Vec<Option<Result<Outcome, Error>>>,
    /// Per write: the first error of a try whose outcome was unknown (`retry::settle`).
    unknown: Vec<Option<Error>>,
    lanes: Vec<Lane>,
    batch: usize,
    depth: usize,
    /// Frames encoded for the next write on a lane; reused across writes.
    out: BytesMut,
    /// Frames sent, frames received, failures and fallbacks so far: proof of progress.
    events: u64,
}

impl<'o, 'a> Exchange<'o, 'a> {
    fn new(ops: &'o [Op<'a>], lanes: usize, batch: usize, depth: usize) -> Exchange<'o, 'a> {
        assert!(lanes >= 1);
        Exchange {
            ops,
            keys: vec![None; ops.len()],
            tries: vec![0; ops.len()],
            results: (0..ops.len()).map(|_| None).collect(),
            unknown: vec![None; ops.len()],
            lanes: (0..lanes).map(|_| Lane::default()).collect(),
            batch,
            depth,
            out: BytesMut::new(),
            events: 0,
        }
    }

    /// Checks every op, fixes its key and queues it on its lane. Ops that fail a client-side
    /// check get their result now and are never sent.
    fn route_all(&mut self, client: &mut Client) {
        let now = Instant::now();
        for (index, op) in self.ops.iter().enumerate() {
            if let Err(error) = op.check() {
                self.results[index] = Some(Err(error));
                continue;
            }
            let key = op
                .key()
                .or_else(|| (client.options.attach_keys && op.takes_key()).then(random_key));
            self.keys[index] = key;
            let lane = client.route(op, key, now);
            self.lanes[lane].pending.push_back(index);
        }
    }

    /// Queues again the idempotent ops the server refused with a transient code, if the policy
    /// allows another try. Returns whether any were queued.
    fn requeue_transient_refusals(&mut self, client: &mut Client) -> bool {
        let policy = client.options.retry;
        let now = Instant::now();
        let mut queued = false;
        for (index, op) in self.ops.iter().enumerate() {
            let transient = matches!(&self.results[index], Some(Err(error)) if error.is_transient_refusal());
            if transient && policy.allows(self.tries[index]) && op.is_idempotent(self.keys[index]) {
                if let Some(Err(error)) = self.results[index].take() {
                    if op.takes_key() && error.is_outcome_unknown() {
                        self.unknown[index].get_or_insert(error);
                    }
                }
                let lane = client.route(op, self.keys[index], now);
                self.lanes[lane].pending.push_back(index);
                queued = true;
            }
        }
        queued
    }

    fn busy(&self) -> bool {
        self.lanes
            .iter()
            .any(|lane| !lane.pending.is_empty() || !lane.in_flight.is_empty())
    }

    /// Connects the lane if needed and writes as many frames as its window allows.
    fn fill(&mut self, client: &mut Client, lane_id: usize) {
        let lane = &self.lanes[lane_id];
        if lane.pending.is_empty() || lane.in_flight.len() >= self.depth {
            return;
        }
        match client.lane_connect(lane_id, Instant::now()) {
            Ok(()) => {}
            Err(LaneDown::Shard) => {
                self.fall_back_to_main(lane_id);
                return;
            }
            Err(LaneDown::Main(error)) => {
                self.fail_lane(client, lane_id, error, true);
                return;
            }
        }
        self.out.clear();
        self.encode_frames(client, lane_id);
        if self.out.is_empty() {
            return;
        }
        self.events += 1;
        let connection = client.lane_connection(lane_id).expect("connected above");
        if let Err(error) = connection.send(&self.out) {
            self.fail_lane(client, lane_id, error, false);
        }
    }

    /// Moves frames from the lane's pending ops into `out` while the window has room.
    fn encode_frames(&mut self, client: &mut Client, lane_id: usize) {
        let lane = &mut self.lanes[lane_id];
        while lane.in_flight.len() < self.depth && !lane.pending.is_empty() {
            let request_id = client.next_request_id();
            let frame_start = self.out.len();
            let mut frame = FrameBuilder::begin(&mut self.out, FrameKind::Request, request_id);
            let mut members = Vec::new();
            let mut reply_bytes = FRAME_HEADER_BYTES;
            while members.len() < self.batch {
                let Some(&index) = lane.pending.front() else {
                    break;
                };
                let op = &self.ops[index];
                let op_reply_bytes = op.reply_bytes_max();
                // An idle lane's frame is never cut by the budget: the server reads any whole
                // frame (its replies, at most `OPS_PER_FRAME_MAX` error replies, fit in its
                // buffer), and so a lane always makes progress.
                let idle = lane.in_flight.is_empty();
                if !idle && lane.reply_bytes_in_flight + reply_bytes + op_reply_bytes > REPLY_BYTES_IN_FLIGHT_MAX {
                    break;
                }
                let op_start = self.out.len();
                op.request(self.keys[index]).encode(&mut self.out);
                if self.out.len() - frame_start - 4 > FRAME_BYTES_MAX as usize {
                    assert!(!members.is_empty(), "a single checked op always fits in a frame");
                    self.out.truncate(op_start);
                    break;
                }
                frame.op_added();
                members.push(index);
                lane.pending.pop_front();
                reply_bytes += op_reply_bytes;
            }
            if members.is_empty() {
                self.out.truncate(frame_start);
                break;
            }
            assert!(members.len() <= self.batch);
            frame.finish(&mut self.out);
            for &index in &members {
                self.tries[index] += 1;
            }
            lane.reply_bytes_in_flight += reply_bytes;
            lane.in_flight.push_back(FrameInFlight {
                request_id,
                ops: members,
                reply_bytes,
            });
        }
    }

    /// Reads the reply to the lane's oldest frame in flight, if it has one.
    fn drain_one(&mut self, client: &mut Client, lane_id: usize) {
        let ops = self.ops;
        let Some(frame) = self.lanes[lane_id].in_flight.front() else {
            return;
        };
        let opcodes = || frame.ops.iter().map(|&index| ops[index].opcode());
        let expected = expect(frame.request_id, opcodes());
        let connection = client
            .lane_connection(lane_id)
            .expect("a lane with frames in flight is connected");
        let decoded = connection
            .recv(&expected)
            .and_then(|(header, body)| decode_frame(&header, body, opcodes()));
        self.events += 1;
        let replies = match decoded {
            Ok(replies) => replies,
            Err(error) => {
                self.fail_lane(client, lane_id, error, false);
                return;
            }
        };
        let lane = &mut self.lanes[lane_id];
        let frame = lane.in_flight.pop_front().expect("the frame just answered");
        lane.reply_bytes_in_flight -= frame.reply_bytes;
        assert_eq!(replies.len(), frame.ops.len());
        let now = Instant::now();
        for (index, reply) in frame.ops.into_iter().zip(replies) {
            let result = reply.and_then(Outcome::from_reply);
            if let (Ok(outcome), Some(name)) = (&result, ops[index].name()) {
                if let Some(split) = outcome.split_hint() {
                    client.observe_split(name, split, now);
                }
            }
            assert!(self.results[index].is_none(), "op {index} answered twice");
            self.results[index] = Some(result);
        }
    }

    /// A shard's own port is unreachable: its ops go through the main connection, whose shard
    /// forwards them.
    fn fall_back_to_main(&mut self, lane_id: usize) {
        assert_ne!(lane_id, MAIN_LANE);
        assert!(self.lanes[lane_id].in_flight.is_empty());
        let moved = std::mem::take(&mut self.lanes[lane_id].pending);
        self.lanes[MAIN_LANE].pending.extend(moved);
        self.events += 1;
    }

    /// The lane's connection failed (or could not be opened): drop it, give up on the ops that
    /// may not be retried, and keep the rest queued for a fresh connection.
    fn fail_lane(&mut self, client: &mut Client, lane_id: usize, error: Error, connecting: bool) {
        client.drop_lane_connection(lane_id);
        let policy = client.options.retry;
        let lane = &mut self.lanes[lane_id];
        let mut again = VecDeque::new();
        // Sent ops have unknown outcomes: only idempotent ones may go again, and only after a
        // connection failure (a protocol error means the server is not speaking our protocol).
        for frame in lane.in_flight.drain(..) {
            for index in frame.ops {
                let op = &self.ops[index];
                if error.is_connection() && policy.allows(self.tries[index]) && op.is_idempotent(self.keys[index]) {
                    if op.takes_key() {
                        self.unknown[index].get_or_insert_with(|| error.clone());
                    }
                    again.push_back(index);
                } else {
                    self.results[index] = Some(Err(error.clone()));
                }
            }
        }
        lane.reply_bytes_in_flight = 0;
        // Unsent ops are safe to send whatever they are; they count a try when the connection
        // for them could not be opened, so a dead server ends the exchange.
        for index in lane.pending.drain(..) {
            if connecting {
                self.tries[index] += 1;
            }
            if policy.enabled() && policy.allows(self.tries[index]) {
                again.push_back(index);
            } else {
                self.results[index] = Some(Err(error.clone()));
            }
        }
        lane.pending = again;
        lane.failures += 1;
        self.events += 1;
        if !lane.pending.is_empty() {
            let backoff = policy.backoff_for(lane.failures);
            if !backoff.is_zero() {
                // A real wait between retries, not synchronisation: the server needs time to
                // come back.
                std::thread::sleep(backoff);
            }
        }
    }

    fn finish(self) -> Vec<Result<Outcome, Error>> {
        assert!(!self.busy());
        self.results
            .into_iter()
            .zip(self.unknown)
            .enumerate()
            .map(|(index, (result, unknown))| {
                settle(
                    unknown,
                    result.unwrap_or_else(|| panic!("op {index} finished without a result")),
                )
            })
            .collect()
    }
}
