//! The primary's side of one (shard, replica) pair: what to send next, what the replica has acked,
//! and when it needs a snapshot instead of records.
//!
//! Events in (`sealed`, `connected`, `hello_reply`, `sent`, `ack`, `need`, …), `ShipperCommand`s out.
//! The runtime executes commands in order and feeds `lsn_acked()` to the shard's `Quorum` after every
//! event.

use std::collections::VecDeque;

use crate::error::ReplicateError;
use crate::history::EpochHistory;
use crate::limits::{IN_FLIGHT_BYTES_MAX, IN_FLIGHT_SENDS_MAX, SEND_RECORDS_MAX};
use crate::message::{Ack, Fenced, Need, StreamPosition};

/// What the runtime must do for one (shard, replica).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ShipperCommand {
    /// Send records `lsn_first..=lsn_last` of `shard` as Ship frames of the primary's epoch, reading
    /// them from memory or the WAL's segments: one frame per piece of a primary batch (a frame has
    /// one `time_ms`), each within `SHIP_RECORDS_MAX` records and `SHIP_RECORD_BYTES_MAX` bytes. Then
    /// call `sent(lsn_last, bytes)` with the bytes written.
    SendRange { shard: u16, lsn_first: u64, lsn_last: u64 },
    /// Send `shard`'s newest snapshot (SnapshotBegin, SnapshotChunks, SnapshotEnd), then call
    /// `snapshot_sent(lsn, bytes)`. Records after it follow from the log.
    SendSnapshot { shard: u16 },
    /// The replica cannot be served from the log (it is behind retention, or its log has a suffix the
    /// primary's does not): it will not ack new lsns until its snapshot is installed. For operators.
    Lagging { shard: u16, lsn_acked: u64 },
    /// A node knows a higher epoch: this node is no longer primary. Stop acknowledging writes (answer
    /// waiting ones with an error), stop shipping, and rejoin as a replica of `primary` (empty if
    /// unknown) after persisting `epoch`.
    StepDown { epoch: u64, primary: String },
}

/// Where the conversation with the replica stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ShipperState {
    /// No connection. Waiting for `connected`.
    Disconnected,
    /// Hello sent, waiting for the replica's position (`hello_reply`).
    Handshaking,
    /// Shipping records.
    Streaming,
    /// A snapshot is being sent; records resume after `snapshot_sent`.
    Snapshotting,
    /// A higher epoch was seen. Final.
    SteppedDown,
}

/// One send in flight: its last lsn and its bytes (0 until `sent` reports them).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct InFlight {
    lsn_last: u64,
    bytes: u64,
}

/// Primary-side shipping state for one shard to one replica.
///
/// Invariants: `lsn_acked ≤ lsn_sent ≤ lsn_sent_max ≤ lsn_available` while connected; `lsn_acked`
/// only increases within a connection; at most `IN_FLIGHT_SENDS_MAX` sends and about
/// `IN_FLIGHT_BYTES_MAX` bytes (plus one send) are unacknowledged.
#[derive(Debug, Clone)]
pub struct Shipper {
    shard: u16,
    epoch: u64,
    state: ShipperState,
    /// Records up to here are sealed on the primary and may be read for sending.
    lsn_available: u64,
    /// The oldest lsn the primary can still read from its log (retention deletes older segments).
    lsn_retained_first: u64,
    lsn_acked: u64,
    /// The next send starts after this.
    lsn_sent: u64,
    /// The highest lsn sent on this connection (a rewind lowers `lsn_sent`, not this): acks up to
    /// here are legitimate.
    lsn_sent_max: u64,
    in_flight: VecDeque<InFlight>,
    in_flight_bytes: u64,
}

impl Shipper {
    /// A shipper for `shard` of a primary at `epoch` whose log holds `lsn_retained_first..=lsn_available`.
    pub fn new(shard: u16, epoch: u64, lsn_available: u64, lsn_retained_first: u64) -> Shipper {
        assert!(lsn_retained_first >= 1);
        assert!(lsn_retained_first <= lsn_available + 1);
        Shipper {
            shard,
            epoch,
            state: ShipperState::Disconnected,
            lsn_available,
            lsn_retained_first,
            lsn_acked: 0,
            lsn_sent: 0,
            lsn_sent_max: 0,
            in_flight: VecDeque::new(),
            in_flight_bytes: 0,
        }
    }

    pub fn state(&self) -> ShipperState {
        self.state
    }

    /// What the replica has fsynced, as far as this primary knows. Feed it to `Quorum::replica_acked`.
    pub fn lsn_acked(&self) -> u64 {
        self.lsn_acked
    }

    pub fn lsn_sent(&self) -> u64 {
        self.lsn_sent
    }

    /// Records up to `lsn` are sealed (in a batch, readable). Shipping does not wait for the primary's
    /// own fsync: see docs/replication.md ("Why ship before the primary's fsync").
    pub fn sealed(&mut self, lsn: u64) -> Vec<ShipperCommand> {
        assert!(lsn >= self.lsn_available, "sealed lsns only increase");
        self.lsn_available = lsn;
        self.pump()
    }

    /// Retention deleted the log before `lsn_first`.
    pub fn retained_from(&mut self, lsn_first: u64) -> Vec<ShipperCommand> {
        assert!(lsn_first >= self.lsn_retained_first, "retention only moves forward");
        assert!(lsn_first <= self.lsn_available + 1);
        self.lsn_retained_first = lsn_first;
        self.pump()
    }

    /// A connection is up and the runtime has sent Hello.
    pub fn connected(&mut self) {
        if self.state == ShipperState::SteppedDown {
            return;
        }
        self.reset();
        self.state = ShipperState::Handshaking;
    }

    /// The connection is gone. Whatever was in flight is forgotten; `hello_reply` on the next
    /// connection says where to resume.
    pub fn disconnected(&mut self) {
        if self.state == ShipperState::SteppedDown {
            return;
        }
        self.reset();
        self.state = ShipperState::Disconnected;
    }

    fn reset(&mut self) {
        self.in_flight.clear();
        self.in_flight_bytes = 0;
        self.lsn_sent = self.lsn_acked;
        self.lsn_sent_max = self.lsn_acked;
    }

    /// The replica's HelloReply: its epoch, its position for this shard and its log's history
    /// (`replica_history`). `history` is the primary's own. Resumes after the replica's appended lsn
    /// when its log is a prefix of ours (`EpochHistory::lsn_common`) and still reachable from our
    /// retained log; otherwise sends a snapshot.
    pub fn hello_reply(
        &mut self,
        epoch: u64,
        position: StreamPosition,
        replica_history: &EpochHistory,
        history: &EpochHistory,
    ) -> Result<Vec<ShipperCommand>, ReplicateError> {
        if let Some(step_down) = self.higher_epoch(epoch, String::new()) {
            return Ok(step_down);
        }
        if self.state != ShipperState::Handshaking {
            return Err(self.protocol("HelloReply outside the handshake"));
        }
        if epoch < self.epoch {
            return Err(self.protocol("HelloReply with an older epoch than the Hello"));
        }
        let StreamPosition {
            lsn_durable,
            lsn_appended,
            ..
        } = position;
        let shared = history.lsn_common(self.shard, self.lsn_available, replica_history, lsn_appended);
        let is_prefix = shared == lsn_appended && lsn_appended <= self.lsn_available;
        if is_prefix && lsn_appended + 1 >= self.lsn_retained_first {
            self.lsn_acked = lsn_durable;
            self.lsn_sent = lsn_appended;
            self.lsn_sent_max = lsn_appended;
            self.state = ShipperState::Streaming;
            return Ok(self.pump());
        }
        // Only the shared prefix of what it has fsynced counts until the snapshot is in.
        self.lsn_acked = lsn_durable.min(shared).min(self.lsn_available);
        self.lsn_sent = self.lsn_acked;
        self.lsn_sent_max = self.lsn_acked;
        Ok(self.start_snapshot())
    }

    /// The runtime wrote the frames of the `SendRange` ending at `lsn_last`: `bytes` in all.
    pub fn sent(&mut self, lsn_last: u64, bytes: u64) -> Vec<ShipperCommand> {
        if let Some(send) = self
            .in_flight
            .iter_mut()
            .find(|s| s.lsn_last == lsn_last && s.bytes == 0)
        {
            send.bytes = bytes;
            self.in_flight_bytes += bytes;
        }
        self.pump()
    }

    /// The runtime finished sending the snapshot of `lsn`, `bytes` long.
    pub fn snapshot_sent(&mut self, lsn: u64, bytes: u64) -> Vec<ShipperCommand> {
        if self.state != ShipperState::Snapshotting {
            return Vec::new();
        }
        assert!(lsn <= self.lsn_available, "a snapshot covers only sealed records");
        // The replica's log is replaced by the snapshot: it holds exactly up to `lsn` once installed.
        self.lsn_acked = self.lsn_acked.min(lsn);
        self.lsn_sent = lsn;
        self.lsn_sent_max = lsn;
        self.in_flight.clear();
        self.in_flight.push_back(InFlight { lsn_last: lsn, bytes });
        self.in_flight_bytes = bytes;
        self.state = ShipperState::Streaming;
        self.pump()
    }

    /// An Ack from the replica. Old and duplicate acks are ignored; an ack of something never sent on
    /// this connection is a protocol error (close the connection); a higher epoch steps down.
    pub fn ack(&mut self, ack: &Ack) -> Result<Vec<ShipperCommand>, ReplicateError> {
        assert_eq!(ack.shard, self.shard);
        if let Some(step_down) = self.higher_epoch(ack.epoch, String::new()) {
            return Ok(step_down);
        }
        if ack.epoch < self.epoch || !self.connected_now() || ack.lsn_durable <= self.lsn_acked {
            return Ok(Vec::new());
        }
        if ack.lsn_durable > self.lsn_sent_max {
            return Err(self.protocol("ack beyond what was sent"));
        }
        self.lsn_acked = ack.lsn_durable;
        self.lsn_sent = self.lsn_sent.max(ack.lsn_durable);
        while self.in_flight.front().is_some_and(|s| s.lsn_last <= ack.lsn_durable) {
            let done = self.in_flight.pop_front().expect("checked");
            self.in_flight_bytes -= done.bytes;
        }
        Ok(self.pump())
    }

    /// A Need from the replica: resend from `lsn_from` (it found a gap or a corrupt frame). Needs for
    /// what is already acked, or for what was not sent yet, are stale and ignored.
    pub fn need(&mut self, need: &Need) -> Result<Vec<ShipperCommand>, ReplicateError> {
        assert_eq!(need.shard, self.shard);
        if let Some(step_down) = self.higher_epoch(need.epoch, String::new()) {
            return Ok(step_down);
        }
        let stale = need.lsn_from <= self.lsn_acked || need.lsn_from > self.lsn_sent + 1;
        if need.epoch < self.epoch || self.state != ShipperState::Streaming || stale {
            return Ok(Vec::new());
        }
        self.rewind(need.lsn_from - 1);
        Ok(self.pump())
    }

    /// No ack progress for the runtime's resend interval while sends are in flight (a frame was lost
    /// without the connection breaking, or the replica missed the end of a burst): resend from
    /// `lsn_acked + 1`.
    pub fn resend_timeout(&mut self) -> Vec<ShipperCommand> {
        if self.state != ShipperState::Streaming || self.in_flight.is_empty() {
            return Vec::new();
        }
        self.rewind(self.lsn_acked);
        self.pump()
    }

    /// A Fenced message from the replica.
    pub fn fenced(&mut self, fenced: &Fenced) -> Vec<ShipperCommand> {
        self.higher_epoch(fenced.epoch, fenced.primary.clone())
            .unwrap_or_default()
    }

    fn rewind(&mut self, lsn: u64) {
        assert!(lsn >= self.lsn_acked);
        self.lsn_sent = lsn;
        while self.in_flight.back().is_some_and(|s| s.lsn_last > lsn) {
            let dropped = self.in_flight.pop_back().expect("checked");
            self.in_flight_bytes -= dropped.bytes;
        }
    }

    fn connected_now(&self) -> bool {
        matches!(self.state, ShipperState::Streaming | ShipperState::Snapshotting)
    }

    fn higher_epoch(&mut self, epoch: u64, primary: String) -> Option<Vec<ShipperCommand>> {
        if epoch <= self.epoch || self.state == ShipperState::SteppedDown {
            return None;
        }
        self.state = ShipperState::SteppedDown;
        self.in_flight.clear();
        self.in_flight_bytes = 0;
        Some(vec![ShipperCommand::StepDown { epoch, primary }])
    }

    fn protocol(&mut self, reason: &'static str) -> ReplicateError {
        self.disconnected();
        ReplicateError::Protocol { reason }
    }

    fn start_snapshot(&mut self) -> Vec<ShipperCommand> {
        self.state = ShipperState::Snapshotting;
        self.in_flight.clear();
        self.in_flight_bytes = 0;
        vec![
            ShipperCommand::Lagging {
                shard: self.shard,
                lsn_acked: self.lsn_acked,
            },
            ShipperCommand::SendSnapshot { shard: self.shard },
        ]
    }

    /// Sends what the window allows.
    fn pump(&mut self) -> Vec<ShipperCommand> {
        let mut commands = Vec::new();
        if self.state != ShipperState::Streaming {
            return commands;
        }
        while self.lsn_sent < self.lsn_available
            && self.in_flight.len() < IN_FLIGHT_SENDS_MAX
            && self.in_flight_bytes < IN_FLIGHT_BYTES_MAX
        {
            if self.lsn_sent + 1 < self.lsn_retained_first {
                commands.extend(self.start_snapshot());
                return commands;
            }
            let lsn_first = self.lsn_sent + 1;
            let lsn_last = self.lsn_available.min(self.lsn_sent + SEND_RECORDS_MAX);
            commands.push(ShipperCommand::SendRange {
                shard: self.shard,
                lsn_first,
                lsn_last,
            });
            self.in_flight.push_back(InFlight { lsn_last, bytes: 0 });
            self.lsn_sent = lsn_last;
            self.lsn_sent_max = self.lsn_sent_max.max(lsn_last);
        }
        assert!(self.lsn_acked <= self.lsn_sent);
        assert!(self.lsn_sent <= self.lsn_available);
        commands
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ShipperCommand::*;

    fn history() -> EpochHistory {
        let mut h = EpochHistory::new();
        h.push(1, vec![1]);
        h
    }

    fn at(epoch_last: u64, lsn_durable: u64, lsn_appended: u64) -> StreamPosition {
        StreamPosition {
            epoch_last,
            lsn_durable,
            lsn_appended,
        }
    }

    fn ack(lsn: u64) -> Ack {
        Ack {
            shard: 0,
            epoch: 1,
            lsn_durable: lsn,
        }
    }

    /// A shipper streaming to a replica that has everything up to `lsn`.
    fn streaming(lsn: u64) -> Shipper {
        let mut s = Shipper::new(0, 1, lsn, 1);
        s.connected();
        assert_eq!(s.hello_reply(1, at(1, lsn, lsn), &history(), &history()), Ok(vec![]));
        s
    }

    #[test]
    fn resumes_after_the_replicas_appended_lsn_and_counts_only_its_durable_one() {
        let mut s = Shipper::new(0, 1, 20, 1);
        assert_eq!(s.sealed(25), vec![], "nothing is sent before the handshake");
        s.connected();
        assert_eq!(
            s.hello_reply(1, at(1, 8, 10), &history(), &history()),
            Ok(vec![SendRange {
                shard: 0,
                lsn_first: 11,
                lsn_last: 25
            }])
        );
        assert_eq!(s.lsn_acked(), 8);
    }

    #[test]
    fn sealed_records_are_sent_and_acks_release_the_window() {
        let mut s = streaming(0);
        assert_eq!(
            s.sealed(3),
            vec![SendRange {
                shard: 0,
                lsn_first: 1,
                lsn_last: 3
            }]
        );
        assert_eq!(s.sent(3, 100), vec![]);
        assert_eq!(
            s.sealed(5),
            vec![SendRange {
                shard: 0,
                lsn_first: 4,
                lsn_last: 5
            }]
        );
        assert_eq!(s.ack(&ack(3)), Ok(vec![]));
        assert_eq!(s.lsn_acked(), 3);
        assert_eq!(s.ack(&ack(2)), Ok(vec![]), "an old ack is ignored");
        assert_eq!(s.ack(&ack(3)), Ok(vec![]), "a duplicate ack is ignored");
        assert_eq!(s.lsn_acked(), 3);
    }

    #[test]
    fn an_ack_beyond_what_was_sent_is_a_protocol_error() {
        let mut s = streaming(0);
        s.sealed(3);
        assert!(matches!(s.ack(&ack(4)), Err(ReplicateError::Protocol { .. })));
        assert_eq!(s.state(), ShipperState::Disconnected);
    }

    #[test]
    fn the_window_stops_at_its_byte_limit() {
        let mut s = streaming(0);
        s.sealed(1);
        assert_eq!(s.sent(1, IN_FLIGHT_BYTES_MAX), vec![]);
        assert_eq!(s.sealed(2), vec![], "the window is full");
        assert_eq!(
            s.ack(&ack(1)),
            Ok(vec![SendRange {
                shard: 0,
                lsn_first: 2,
                lsn_last: 2
            }])
        );
    }

    #[test]
    fn the_window_stops_at_its_send_limit() {
        let mut s = streaming(0);
        for lsn in 1..=IN_FLIGHT_SENDS_MAX as u64 {
            assert_eq!(s.sealed(lsn).len(), 1);
        }
        assert_eq!(s.sealed(1000), vec![]);
        assert_eq!(
            s.ack(&ack(2)),
            Ok(vec![SendRange {
                shard: 0,
                lsn_first: 65,
                lsn_last: 1000
            }]),
            "room again: everything sealed goes in one send"
        );
    }

    #[test]
    fn a_need_rewinds_and_stale_needs_are_ignored() {
        let mut s = streaming(0);
        s.sealed(10);
        s.ack(&ack(4)).unwrap();
        let need = |lsn_from| Need {
            shard: 0,
            epoch: 1,
            lsn_from,
        };
        assert_eq!(s.need(&need(3)), Ok(vec![]), "already acked");
        assert_eq!(s.need(&need(12)), Ok(vec![]), "never sent");
        assert_eq!(
            s.need(&need(5)),
            Ok(vec![SendRange {
                shard: 0,
                lsn_first: 5,
                lsn_last: 10
            }])
        );
    }

    #[test]
    fn a_lost_tail_is_resent_on_timeout() {
        let mut s = streaming(0);
        s.sealed(4);
        s.ack(&ack(2)).unwrap();
        assert_eq!(
            s.resend_timeout(),
            vec![SendRange {
                shard: 0,
                lsn_first: 3,
                lsn_last: 4
            }]
        );
        s.ack(&ack(4)).unwrap();
        assert_eq!(s.resend_timeout(), vec![], "nothing in flight");
    }

    #[test]
    fn a_replica_behind_retention_gets_a_snapshot_then_the_log() {
        let mut s = Shipper::new(0, 1, 100, 50);
        s.connected();
        assert_eq!(
            s.hello_reply(1, at(1, 10, 10), &history(), &history()),
            Ok(vec![
                Lagging {
                    shard: 0,
                    lsn_acked: 10
                },
                SendSnapshot { shard: 0 }
            ])
        );
        assert_eq!(s.state(), ShipperState::Snapshotting);
        assert_eq!(
            s.snapshot_sent(80, 4096),
            vec![SendRange {
                shard: 0,
                lsn_first: 81,
                lsn_last: 100
            }]
        );
        assert_eq!(s.ack(&ack(80)), Ok(vec![]));
        assert_eq!(s.lsn_acked(), 80);
    }

    #[test]
    fn retention_passing_the_send_point_switches_to_a_snapshot() {
        let mut s = Shipper::new(0, 1, 10, 1);
        s.connected();
        s.hello_reply(1, at(1, 10, 10), &history(), &history()).unwrap();
        assert_eq!(s.retained_from(5), vec![], "the replica needs nothing before 11");
        s.disconnected();
        s.connected();
        s.hello_reply(1, at(1, 3, 3), &history(), &history()).unwrap();
        assert_eq!(s.state(), ShipperState::Snapshotting);
    }

    #[test]
    fn a_demoted_primarys_foreign_suffix_is_replaced_by_snapshot() {
        // This primary is epoch 2, which started writing at lsn 101; the replica was epoch 1's
        // primary and wrote 101..=105 that nobody else has.
        let mut h = history();
        h.push(2, vec![101]);
        let mut s = Shipper::new(0, 2, 120, 1);
        s.connected();
        assert_eq!(
            s.hello_reply(2, at(1, 105, 105), &history(), &h),
            Ok(vec![
                Lagging {
                    shard: 0,
                    lsn_acked: 100
                },
                SendSnapshot { shard: 0 }
            ])
        );
        // The same position from a replica of epoch 2 is a plain prefix.
        s.disconnected();
        s.connected();
        assert_eq!(
            s.hello_reply(2, at(2, 105, 105), &h.prefix(0, 105), &h),
            Ok(vec![SendRange {
                shard: 0,
                lsn_first: 106,
                lsn_last: 120
            }])
        );
    }

    #[test]
    fn a_higher_epoch_anywhere_steps_down_for_good() {
        let mut s = streaming(0);
        s.sealed(3);
        assert_eq!(
            s.ack(&Ack {
                shard: 0,
                epoch: 2,
                lsn_durable: 1
            }),
            Ok(vec![StepDown {
                epoch: 2,
                primary: String::new()
            }])
        );
        assert_eq!(s.state(), ShipperState::SteppedDown);
        assert_eq!(s.sealed(4), vec![]);
        s.connected();
        assert_eq!(s.state(), ShipperState::SteppedDown);
        let mut t = streaming(0);
        assert_eq!(
            t.fenced(&Fenced {
                epoch: 3,
                primary: "b:7000".into()
            }),
            vec![StepDown {
                epoch: 3,
                primary: "b:7000".into()
            }]
        );
    }
}
