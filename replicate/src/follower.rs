//! The replica's side of one mirror stream (one primary shard): which Ship frames to append, when to
//! ack, when to ask for a resend, and snapshot installation.
//!
//! A `Follower` never sees another stream and never decides epochs: the node-level `Replica` checks
//! every message's epoch first and passes the node's epoch in.

use crate::message::{Ack, Message, Need, Ship, SnapshotBegin, SnapshotChunk, SnapshotEnd, StreamPosition};
use crate::records::check_records;
use crate::replica::ReplicaCommand;

/// A snapshot being received.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Receiving {
    lsn: u64,
    epoch: u64,
    total_bytes: u64,
    offset: u64,
    crc: u32,
}

/// Replica-side state of one mirror stream.
///
/// Invariants: `lsn_durable ≤ lsn_appended`; `lsn_appended` grows by exactly the records appended (no
/// gap, no record twice), except that an installed snapshot replaces the stream; an Ack never names
/// an lsn the runtime has not reported synced.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Follower {
    shard: u16,
    epoch_last: u64,
    lsn_appended: u64,
    lsn_durable: u64,
    /// The `lsn_from` of a Need not yet answered by progress: no second Need for it until a timeout.
    need_sent: Option<u64>,
    receiving: Option<Receiving>,
}

impl Follower {
    /// A stream recovered up to `position` (after a restart, `lsn_durable == lsn_appended`).
    pub fn new(shard: u16, position: StreamPosition) -> Follower {
        assert!(position.lsn_durable <= position.lsn_appended);
        Follower {
            shard,
            epoch_last: position.epoch_last,
            lsn_appended: position.lsn_appended,
            lsn_durable: position.lsn_durable,
            need_sent: None,
            receiving: None,
        }
    }

    pub fn position(&self) -> StreamPosition {
        StreamPosition {
            epoch_last: self.epoch_last,
            lsn_durable: self.lsn_durable,
            lsn_appended: self.lsn_appended,
        }
    }

    /// The last epoch of this stream's log, as its history says (the node-level `Replica` keeps the
    /// history).
    pub(crate) fn set_epoch_last(&mut self, epoch_last: u64) {
        self.epoch_last = epoch_last;
    }

    /// The runtime's log holds only up to `lsn` (an append failed or was cut short after this
    /// follower counted it): continue from there and ask for the rest.
    pub(crate) fn rewind(&mut self, epoch: u64, lsn: u64) -> Vec<ReplicaCommand> {
        assert!(lsn <= self.lsn_appended);
        self.lsn_appended = lsn;
        self.lsn_durable = self.lsn_durable.min(lsn);
        self.need_sent = None;
        self.need(epoch)
    }

    /// Every appended record is fsynced.
    pub fn settled(&self) -> bool {
        self.lsn_durable == self.lsn_appended
    }

    /// A Ship whose epoch the node accepted (`ship.epoch ≥ epoch`, the node's epoch).
    pub(crate) fn ship(&mut self, epoch: u64, ship: Ship) -> Vec<ReplicaCommand> {
        assert!(ship.epoch >= epoch, "the replica checks epochs first");
        if self.receiving.is_some() {
            // The primary sends no records while it sends a snapshot: this one is stale.
            return Vec::new();
        }
        if ship.lsn_last <= self.lsn_appended {
            return vec![self.ack(epoch)];
        }
        if ship.lsn_first > self.lsn_appended + 1 {
            return self.need(epoch);
        }
        if check_records(&ship.records, ship.lsn_last - ship.lsn_first + 1).is_err() {
            // Checksummed but undecodable: a sender bug. Ask again once; never append it.
            return self.need(epoch);
        }
        let lsn_from = self.lsn_appended + 1;
        self.lsn_appended = ship.lsn_last;
        self.epoch_last = ship.epoch;
        self.need_sent = None;
        vec![ReplicaCommand::Append {
            shard: self.shard,
            epoch: ship.epoch,
            lsn_from,
            ship,
        }]
    }

    /// The runtime fsynced the mirror's WAL up to `lsn`.
    pub(crate) fn synced(&mut self, epoch: u64, lsn: u64) -> Vec<ReplicaCommand> {
        assert!(lsn <= self.lsn_appended, "only appended records are synced");
        if lsn <= self.lsn_durable {
            return Vec::new();
        }
        self.lsn_durable = lsn;
        vec![self.ack(epoch)]
    }

    /// A frame failed its checksum on this stream's connection: it may have been ours.
    pub(crate) fn frame_corrupt(&mut self, epoch: u64) -> Vec<ReplicaCommand> {
        if self.receiving.is_some() {
            return self.snapshot_abort(epoch);
        }
        self.need(epoch)
    }

    /// The runtime's Need interval passed: ask again if nothing arrived since.
    pub(crate) fn need_timeout(&mut self, epoch: u64) -> Vec<ReplicaCommand> {
        match self.need_sent.take() {
            Some(lsn_from) if lsn_from == self.lsn_appended + 1 => self.need(epoch),
            _ => Vec::new(),
        }
    }

    /// A new connection (or a new primary): forget the Need and any half-received snapshot.
    pub(crate) fn connection_reset(&mut self) -> Vec<ReplicaCommand> {
        self.need_sent = None;
        match self.receiving.take() {
            Some(_) => vec![ReplicaCommand::SnapshotAbort { shard: self.shard }],
            None => Vec::new(),
        }
    }

    pub(crate) fn snapshot_begin(&mut self, begin: SnapshotBegin) -> Vec<ReplicaCommand> {
        let mut commands = self.connection_reset();
        self.receiving = Some(Receiving {
            lsn: begin.lsn,
            epoch: begin.epoch,
            total_bytes: begin.total_bytes,
            offset: 0,
            crc: 0,
        });
        commands.push(ReplicaCommand::SnapshotBegin {
            shard: self.shard,
            lsn: begin.lsn,
            total_bytes: begin.total_bytes,
        });
        commands
    }

    pub(crate) fn snapshot_chunk(&mut self, epoch: u64, chunk: SnapshotChunk) -> Vec<ReplicaCommand> {
        let Some(receiving) = &mut self.receiving else {
            return Vec::new();
        };
        if chunk.lsn != receiving.lsn {
            return Vec::new();
        }
        let end = chunk.offset.checked_add(chunk.bytes.len() as u64);
        let fits = matches!(end, Some(end) if end <= receiving.total_bytes);
        if chunk.offset != receiving.offset || !fits {
            return self.snapshot_abort(epoch);
        }
        receiving.crc = crc32c::crc32c_append(receiving.crc, &chunk.bytes);
        receiving.offset += chunk.bytes.len() as u64;
        vec![ReplicaCommand::SnapshotWrite {
            shard: self.shard,
            offset: chunk.offset,
            bytes: chunk.bytes,
        }]
    }

    pub(crate) fn snapshot_end(&mut self, epoch: u64, end: SnapshotEnd) -> Vec<ReplicaCommand> {
        let Some(receiving) = &self.receiving else {
            return Vec::new();
        };
        if end.lsn != receiving.lsn {
            return Vec::new();
        }
        let whole = end.total_bytes == receiving.total_bytes && receiving.offset == receiving.total_bytes;
        if !whole || end.crc != receiving.crc {
            return self.snapshot_abort(epoch);
        }
        let receiving = self.receiving.take().expect("checked");
        // The stream is replaced: it holds exactly the snapshot's lsns, from the snapshot's epoch.
        self.lsn_appended = receiving.lsn;
        self.lsn_durable = self.lsn_durable.min(receiving.lsn);
        self.epoch_last = receiving.epoch;
        self.need_sent = None;
        vec![ReplicaCommand::SnapshotInstall {
            shard: self.shard,
            lsn: receiving.lsn,
        }]
    }

    /// The runtime installed the snapshot of `lsn` durably (mirror engine and WAL replaced).
    pub(crate) fn snapshot_installed(&mut self, epoch: u64, lsn: u64) -> Vec<ReplicaCommand> {
        assert_eq!(lsn, self.lsn_appended, "the installed snapshot is the stream's end");
        self.lsn_durable = lsn;
        vec![self.ack(epoch)]
    }

    fn snapshot_abort(&mut self, epoch: u64) -> Vec<ReplicaCommand> {
        self.receiving = None;
        let mut commands = vec![ReplicaCommand::SnapshotAbort { shard: self.shard }];
        commands.extend(self.need(epoch));
        commands
    }

    fn ack(&self, epoch: u64) -> ReplicaCommand {
        ReplicaCommand::ToPrimary(Message::Ack(Ack {
            shard: self.shard,
            epoch,
            lsn_durable: self.lsn_durable,
        }))
    }

    /// Asks for everything after `lsn_appended`, once.
    fn need(&mut self, epoch: u64) -> Vec<ReplicaCommand> {
        let lsn_from = self.lsn_appended + 1;
        if self.need_sent == Some(lsn_from) {
            return Vec::new();
        }
        self.need_sent = Some(lsn_from);
        vec![ReplicaCommand::ToPrimary(Message::Need(Need {
            shard: self.shard,
            epoch,
            lsn_from,
        }))]
    }
}
