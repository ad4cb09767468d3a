//! The replica node's side: one `Follower` per primary shard (mirror stream), the node's epoch, the
//! primary it follows, and the node-level messages (Hello, Fence, Fetch).
//!
//! Every message from a peer goes through `Replica::on_message`, which checks its epoch before any
//! stream sees it: older → `Fenced`, newer → adopt (`PersistEpoch` first), equal → proceed.

use crate::error::ReplicateError;
use crate::follower::Follower;
use crate::history::EpochHistory;
use crate::message::{FenceReply, Fenced, Hello, HelloReply, Message, Role, Ship, StreamPosition, PROTOCOL_VERSION};

/// What the runtime must do for the replica node. Commands are executed in order; a `PersistEpoch`
/// or `PersistHistory` must be durable before any later command takes effect (in particular before
/// any later message leaves the node).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ReplicaCommand {
    /// Persist the node's epoch (write + fsync).
    PersistEpoch { epoch: u64 },
    /// Persist the history of this node's own log (it changes when the log reaches an epoch's start
    /// or is replaced by a snapshot). Emitted only once the records it describes are durable.
    PersistHistory { history: EpochHistory },
    /// Send on the connection the event came from.
    Reply(Message),
    /// Send to the node this replica follows (`Replica::primary`, the last Hello or Fence sender);
    /// drop it if that connection is down (the next Hello resynchronises).
    ToPrimary(Message),
    /// Append records `lsn_from..=ship.lsn_last` of `ship` (skip the first `lsn_from -
    /// ship.lsn_first`) to mirror stream `shard`'s WAL with the same lsns and `ship.time_ms`, and
    /// replay them into the mirror engine shard. Remember `epoch` as the stream's last epoch, durably
    /// no later than these records. Call `Replica::synced(shard, lsn)` after the fsync.
    Append {
        shard: u16,
        epoch: u64,
        lsn_from: u64,
        ship: Ship,
    },
    /// Start receiving a snapshot of `shard` at `lsn` (e.g. open a temporary file).
    SnapshotBegin { shard: u16, lsn: u64, total_bytes: u64 },
    /// Write snapshot bytes at `offset`.
    SnapshotWrite { shard: u16, offset: u64, bytes: Vec<u8> },
    /// Discard the snapshot being received.
    SnapshotAbort { shard: u16 },
    /// The snapshot is complete and checked: replace mirror stream `shard` (engine shard and WAL; the
    /// log continues at `lsn + 1`), fsync, then call `Replica::snapshot_installed(shard, lsn)`.
    /// Report `synced` for earlier appends before executing this.
    SnapshotInstall { shard: u16, lsn: u64 },
    /// Send mirror stream `shard`'s records `lsn_from..=lsn_to` as Ship frames of `epoch` on the
    /// connection the Fetch came from (a promoter collecting what it lacks).
    ServeFetch {
        shard: u16,
        epoch: u64,
        lsn_from: u64,
        lsn_to: u64,
    },
}

/// Replica-side state of a node.
///
/// Invariants: the epoch only increases and is persisted before anything is done under it; a
/// message of an older epoch changes nothing; a FenceReply is sent only when every stream is settled
/// (everything appended under the old primary is fsynced), so the promoter sees final positions.
#[derive(Debug, Clone)]
pub struct Replica {
    node_id: u128,
    epoch: u64,
    /// The node followed in `epoch` (id and address), once known.
    primary: Option<(u128, String)>,
    /// The history of this node's own log, as far as it is appended (`EpochHistory::prefix` of
    /// the histories of the logs it copied). Positions report its last epoch as `epoch_last`.
    history: EpochHistory,
    /// The part of `history` that covers durable records: what is persisted.
    history_durable: EpochHistory,
    /// The history of the log records come from: the primary's (from its Hello), or, while
    /// promoting, the peer fetched from. Records are appended only when it is known.
    source_history: Option<EpochHistory>,
    followers: Vec<Follower>,
    fence_reply_pending: bool,
}

impl Replica {
    /// A replica node recovered at `epoch` with one position per primary shard.
    pub fn new(node_id: u128, epoch: u64, history: EpochHistory, streams: Vec<StreamPosition>) -> Replica {
        assert!(!streams.is_empty());
        let followers = streams
            .into_iter()
            .enumerate()
            .map(|(shard, position)| Follower::new(shard as u16, position))
            .collect();
        let mut replica = Replica {
            node_id,
            epoch,
            primary: None,
            history_durable: history.clone(),
            history,
            source_history: None,
            followers,
            fence_reply_pending: false,
        };
        replica.refresh_epochs_last();
        replica
    }

    pub fn epoch(&self) -> u64 {
        self.epoch
    }

    /// The address of the node followed in the current epoch, if known.
    pub fn primary(&self) -> Option<&str> {
        self.primary.as_ref().map(|(_, addr)| addr.as_str())
    }

    /// The history of this node's own log (appended records).
    pub fn history(&self) -> &EpochHistory {
        &self.history
    }

    /// Records to append come from a log described by `history` from now on (a promotion fetching
    /// from a peer: the peer's own history, from its FenceReply).
    pub fn fetch_from(&mut self, history: EpochHistory) {
        self.source_history = Some(history);
    }

    pub fn positions(&self) -> Vec<StreamPosition> {
        self.followers.iter().map(Follower::position).collect()
    }

    pub fn node_id(&self) -> u128 {
        self.node_id
    }

    /// A message from a peer. An error means: close that connection.
    pub fn on_message(&mut self, message: Message) -> Result<Vec<ReplicaCommand>, ReplicateError> {
        match message {
            Message::Hello(hello) => self.hello(hello),
            Message::Fence(fence) => Ok(self.fence(fence.epoch_new, fence.node_id, fence.primary_new)),
            Message::Fetch(fetch) => {
                let follower = self.follower(fetch.shard)?;
                let lsn_durable = follower.position().lsn_durable;
                if fetch.epoch < self.epoch {
                    return Ok(vec![self.fenced_reply()]);
                }
                if fetch.epoch > self.epoch {
                    return Err(ReplicateError::Protocol {
                        reason: "fetch from a promoter that did not fence this node",
                    });
                }
                let lsn_to = fetch.lsn_to.min(lsn_durable);
                if fetch.lsn_from > lsn_to {
                    return Ok(Vec::new());
                }
                Ok(vec![ReplicaCommand::ServeFetch {
                    shard: fetch.shard,
                    epoch: fetch.epoch,
                    lsn_from: fetch.lsn_from,
                    lsn_to,
                }])
            }
            Message::Ship(ship) => self.ship(ship),
            Message::SnapshotBegin(begin) => {
                self.stream_message(begin.shard, begin.epoch, |f, _| f.snapshot_begin(begin))
            }
            Message::SnapshotChunk(chunk) => {
                self.stream_message(chunk.shard, chunk.epoch, |f, epoch| f.snapshot_chunk(epoch, chunk))
            }
            Message::SnapshotEnd(end) => {
                let (shard, lsn) = (end.shard, end.lsn);
                self.follower(shard)?;
                if end.epoch != self.epoch {
                    return self.stream_message(shard, end.epoch, |_, _| Vec::new());
                }
                let Some(source) = self.source_history.clone() else {
                    return Ok(Vec::new());
                };
                let commands = self.stream_message(shard, end.epoch, |f, epoch| f.snapshot_end(epoch, end))?;
                if commands
                    .iter()
                    .any(|c| matches!(c, ReplicaCommand::SnapshotInstall { .. }))
                {
                    // The log is replaced by the source's first `lsn` records.
                    self.history = source.prefix(shard, lsn);
                    self.history_durable = EpochHistory::new();
                    let epoch_last = self.history.epoch_last();
                    self.followers[usize::from(shard)].set_epoch_last(epoch_last);
                }
                Ok(commands)
            }
            Message::HelloReply(_)
            | Message::Fenced(_)
            | Message::Ack(_)
            | Message::Need(_)
            | Message::FenceReply(_) => Err(ReplicateError::Protocol {
                reason: "a primary's message sent to a replica",
            }),
        }
    }

    /// The runtime fsynced mirror stream `shard` up to `lsn`.
    pub fn synced(&mut self, shard: u16, lsn: u64) -> Vec<ReplicaCommand> {
        let epoch = self.epoch;
        // The history's entries for records now durable are persisted before the ack leaves.
        let mut commands = self.persist_history_to(shard, lsn);
        commands.extend(self.followers[usize::from(shard)].synced(epoch, lsn));
        commands.extend(self.fence_reply_if_settled());
        commands
    }

    /// The runtime installed the snapshot of `lsn` on mirror stream `shard`.
    pub fn snapshot_installed(&mut self, shard: u16, lsn: u64) -> Vec<ReplicaCommand> {
        let epoch = self.epoch;
        let mut commands = self.persist_history_to(shard, lsn);
        commands.extend(self.followers[usize::from(shard)].snapshot_installed(epoch, lsn));
        commands
    }

    /// `PersistHistory` of the part of `history` covering records up to `lsn`, if it changed.
    fn persist_history_to(&mut self, shard: u16, lsn: u64) -> Vec<ReplicaCommand> {
        let durable = self.history.prefix(shard, lsn);
        if durable == self.history_durable {
            return Vec::new();
        }
        self.history_durable = durable.clone();
        vec![ReplicaCommand::PersistHistory { history: durable }]
    }

    /// Every follower's `epoch_last` is its log's last epoch (in the runtime one stream moves per
    /// `Replica`; the others stay empty).
    fn refresh_epochs_last(&mut self) {
        let epoch_last = self.history.epoch_last();
        for follower in &mut self.followers {
            if follower.position().lsn_appended > 0 {
                follower.set_epoch_last(epoch_last);
            }
        }
    }

    /// The runtime's log of mirror stream `shard` holds only up to `lsn`, less than the stream
    /// counted appended: the stream continues from there (`Need`).
    pub fn rewind(&mut self, shard: u16, lsn: u64) -> Vec<ReplicaCommand> {
        let epoch = self.epoch;
        self.followers[usize::from(shard)].rewind(epoch, lsn)
    }

    /// A frame from the primary failed its checksum (`DecodeError::Corrupt`): every stream asks for
    /// what it may have missed, once.
    pub fn frame_corrupt(&mut self) -> Vec<ReplicaCommand> {
        let epoch = self.epoch;
        self.followers.iter_mut().flat_map(|f| f.frame_corrupt(epoch)).collect()
    }

    /// The runtime's Need interval passed for `shard` without progress.
    pub fn need_timeout(&mut self, shard: u16) -> Vec<ReplicaCommand> {
        let epoch = self.epoch;
        self.followers[usize::from(shard)].need_timeout(epoch)
    }

    /// This node starts promoting itself to `epoch` (called by `Promotion::start`, which emits the
    /// `PersistEpoch`): from now on it follows itself, and records fetched from peers arrive as Ship
    /// frames of `epoch`.
    pub(crate) fn promote_begin(&mut self, epoch: u64, addr: &str) -> Vec<ReplicaCommand> {
        assert!(epoch > self.epoch, "a promotion raises the epoch");
        self.epoch = epoch;
        self.primary = Some((self.node_id, addr.to_owned()));
        self.source_history = None;
        self.fence_reply_pending = false;
        self.followers.iter_mut().flat_map(Follower::connection_reset).collect()
    }

    /// A promotion that no peer accepted failed: the node is back at `epoch`, the last one it
    /// accepted (the promotion's epoch does not exist), following nobody until a primary's Hello.
    pub fn promote_abort(&mut self, epoch: u64) {
        assert!(epoch <= self.epoch);
        self.epoch = epoch;
        self.primary = None;
        self.source_history = None;
    }

    fn follower(&self, shard: u16) -> Result<&Follower, ReplicateError> {
        self.followers.get(usize::from(shard)).ok_or(ReplicateError::Protocol {
            reason: "shard beyond the primary's shard count",
        })
    }

    fn fenced_reply(&self) -> ReplicaCommand {
        ReplicaCommand::Reply(Message::Fenced(Fenced {
            epoch: self.epoch,
            primary: self.primary().unwrap_or_default().to_owned(),
        }))
    }

    /// The epoch rule for a stream's message, then the stream's own handling.
    fn stream_message(
        &mut self,
        shard: u16,
        epoch: u64,
        handle: impl FnOnce(&mut Follower, u64) -> Vec<ReplicaCommand>,
    ) -> Result<Vec<ReplicaCommand>, ReplicateError> {
        self.follower(shard)?;
        if epoch < self.epoch {
            return Ok(vec![self.fenced_reply()]);
        }
        if epoch > self.epoch {
            // Every connection starts with a Hello, which adopts its epoch: stream messages of a
            // newer one arrive on a connection whose Hello this node refused, or never got.
            return Err(ReplicateError::Protocol {
                reason: "a stream message of a newer epoch without its Hello",
            });
        }
        Ok(handle(&mut self.followers[usize::from(shard)], self.epoch))
    }

    fn ship(&mut self, ship: Ship) -> Result<Vec<ReplicaCommand>, ReplicateError> {
        let shard = ship.shard;
        self.follower(shard)?;
        if ship.epoch != self.epoch {
            return self.stream_message(shard, ship.epoch, |_, _| Vec::new());
        }
        let Some(source) = &self.source_history else {
            // A primary's Hello (or a promotion's plan) says which log records come from; without
            // it nothing is appended (the next Hello resynchronises).
            return Ok(Vec::new());
        };
        let lsn_last = ship.lsn_last;
        let source = source.clone();
        let mut commands = self.stream_message(shard, ship.epoch, |f, epoch| f.ship(epoch, ship))?;
        if commands.iter().any(|c| matches!(c, ReplicaCommand::Append { .. })) {
            self.history = source.prefix(shard, lsn_last);
            let epoch_last = self.history.epoch_last();
            self.followers[usize::from(shard)].set_epoch_last(epoch_last);
            for command in &mut commands {
                if let ReplicaCommand::Append { epoch, .. } = command {
                    *epoch = epoch_last;
                }
            }
        }
        Ok(commands)
    }

    fn hello(&mut self, hello: Hello) -> Result<Vec<ReplicaCommand>, ReplicateError> {
        if hello.version != PROTOCOL_VERSION {
            return Err(ReplicateError::Protocol {
                reason: "unknown replication protocol version",
            });
        }
        if usize::from(hello.shards) != self.followers.len() {
            return Err(ReplicateError::Protocol {
                reason: "the primary's shard count differs from this replica's mirror count",
            });
        }
        let reply = |replica: &Replica| {
            ReplicaCommand::Reply(Message::HelloReply(HelloReply {
                node_id: replica.node_id,
                epoch: replica.epoch,
                streams: replica.positions(),
                history: replica.history.clone(),
            }))
        };
        if hello.role == Role::Promoter {
            // A promoter's probe: positions only; its Fence does the rest.
            return Ok(vec![reply(self)]);
        }
        let other_primary = self.primary.as_ref().is_some_and(|(id, _)| *id != hello.node_id);
        if hello.epoch < self.epoch || (hello.epoch == self.epoch && other_primary) {
            return Ok(vec![self.fenced_reply()]);
        }
        let mut commands = Vec::new();
        if hello.epoch > self.epoch {
            self.epoch = hello.epoch;
            commands.push(ReplicaCommand::PersistEpoch { epoch: hello.epoch });
        }
        // The primary's history describes the log its records come from; this node's own history
        // changes only as it appends them (or installs the primary's snapshot).
        self.source_history = Some(hello.history);
        self.primary = Some((hello.node_id, hello.addr));
        self.fence_reply_pending = false;
        for follower in &mut self.followers {
            commands.extend(follower.connection_reset());
        }
        commands.push(reply(self));
        Ok(commands)
    }

    fn fence(&mut self, epoch_new: u64, node_id: u128, primary_new: String) -> Vec<ReplicaCommand> {
        if epoch_new <= self.epoch {
            return vec![self.fenced_reply()];
        }
        self.epoch = epoch_new;
        self.primary = Some((node_id, primary_new));
        // Nothing more is appended until the new primary's Hello says what its log is.
        self.source_history = None;
        let mut commands = vec![ReplicaCommand::PersistEpoch { epoch: epoch_new }];
        for follower in &mut self.followers {
            commands.extend(follower.connection_reset());
        }
        self.fence_reply_pending = true;
        commands.extend(self.fence_reply_if_settled());
        commands
    }

    fn fence_reply_if_settled(&mut self) -> Vec<ReplicaCommand> {
        if !self.fence_reply_pending || !self.followers.iter().all(Follower::settled) {
            return Vec::new();
        }
        self.fence_reply_pending = false;
        vec![ReplicaCommand::ToPrimary(Message::FenceReply(FenceReply {
            node_id: self.node_id,
            epoch: self.epoch,
            streams: self.positions(),
            history: self.history.clone(),
        }))]
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::message::{Ack, Fence, Fetch, Need, SnapshotChunk, SnapshotEnd};
    use crate::records::RecordsEncoder;
    use tally_engine::LogRecord;
    use ReplicaCommand::*;

    const PRIMARY: u128 = 1;

    fn ship(epoch: u64, lsn_first: u64, lsn_last: u64) -> Ship {
        let mut enc = RecordsEncoder::new();
        for lsn in lsn_first..=lsn_last {
            enc.push(&LogRecord::Incr {
                name: b"views",
                name_id: 0,
                delta: lsn as i64,
                key: None,
            });
        }
        Ship {
            shard: 0,
            epoch,
            lsn_first,
            lsn_last,
            time_ms: 1000,
            records: enc.take(),
        }
    }

    fn hello(epoch: u64) -> Message {
        Message::Hello(Hello {
            version: PROTOCOL_VERSION,
            node_id: PRIMARY,
            epoch,
            role: Role::Primary,
            shards: 1,
            addr: "p:7000".into(),
            history: written_by(epoch),
        })
    }

    /// The history of a one-stream log written from lsn 1 by `epoch`'s primary.
    fn written_by(epoch: u64) -> EpochHistory {
        let mut h = EpochHistory::new();
        h.push(epoch, vec![1]);
        h
    }

    fn ack(epoch: u64, lsn: u64) -> ReplicaCommand {
        ToPrimary(Message::Ack(Ack {
            shard: 0,
            epoch,
            lsn_durable: lsn,
        }))
    }

    fn need(epoch: u64, lsn_from: u64) -> ReplicaCommand {
        ToPrimary(Message::Need(Need {
            shard: 0,
            epoch,
            lsn_from,
        }))
    }

    fn append(epoch: u64, lsn_from: u64, ship: Ship) -> ReplicaCommand {
        Append {
            shard: 0,
            epoch,
            lsn_from,
            ship,
        }
    }

    fn pos(epoch_last: u64, lsn_durable: u64, lsn_appended: u64) -> StreamPosition {
        StreamPosition {
            epoch_last,
            lsn_durable,
            lsn_appended,
        }
    }

    /// A one-stream replica at epoch 1 that has greeted the primary.
    fn following() -> Replica {
        let mut r = Replica::new(9, 1, EpochHistory::new(), vec![StreamPosition::default()]);
        r.on_message(hello(1)).unwrap();
        r
    }

    #[test]
    fn hello_adopts_a_higher_epoch_durably_before_replying() {
        let mut r = Replica::new(9, 1, EpochHistory::new(), vec![pos(1, 4, 4)]);
        assert_eq!(
            r.on_message(hello(2)),
            Ok(vec![
                PersistEpoch { epoch: 2 },
                Reply(Message::HelloReply(HelloReply {
                    node_id: 9,
                    epoch: 2,
                    streams: vec![pos(0, 4, 4)],
                    history: EpochHistory::new(),
                }))
            ])
        );
        assert_eq!(r.primary(), Some("p:7000"));
    }

    #[test]
    fn hello_from_an_older_epoch_or_a_second_primary_is_fenced() {
        let mut r = following();
        r.on_message(hello(3)).unwrap();
        let fenced = Ok(vec![Reply(Message::Fenced(Fenced {
            epoch: 3,
            primary: "p:7000".into(),
        }))]);
        assert_eq!(r.on_message(hello(2)), fenced);
        let Message::Hello(mut other) = hello(3) else {
            unreachable!()
        };
        other.node_id = 77;
        assert_eq!(r.on_message(Message::Hello(other)), fenced);
    }

    #[test]
    fn a_hello_with_another_shard_count_is_refused() {
        let mut r = following();
        let Message::Hello(mut h) = hello(1) else {
            unreachable!()
        };
        h.shards = 2;
        assert!(matches!(
            r.on_message(Message::Hello(h)),
            Err(ReplicateError::Protocol { .. })
        ));
    }

    #[test]
    fn records_are_appended_in_order_and_acked_only_after_sync() {
        let mut r = following();
        let s = ship(1, 1, 3);
        assert_eq!(r.on_message(Message::Ship(s.clone())), Ok(vec![append(1, 1, s)]));
        assert_eq!(r.positions(), vec![pos(1, 0, 3)]);
        assert_eq!(
            r.synced(0, 3),
            vec![PersistHistory { history: written_by(1) }, ack(1, 3)],
            "the log's history is durable before the first ack of its records"
        );
        assert_eq!(r.synced(0, 3), vec![], "a repeated sync acks nothing new");
    }

    #[test]
    fn a_duplicate_is_re_acked_and_an_overlap_appends_only_its_suffix() {
        let mut r = following();
        r.on_message(Message::Ship(ship(1, 1, 3))).unwrap();
        r.synced(0, 2);
        assert_eq!(r.on_message(Message::Ship(ship(1, 2, 3))), Ok(vec![ack(1, 2)]));
        let s = ship(1, 2, 5);
        assert_eq!(r.on_message(Message::Ship(s.clone())), Ok(vec![append(1, 4, s)]));
    }

    #[test]
    fn a_gap_asks_once_until_progress_or_timeout() {
        let mut r = following();
        assert_eq!(r.on_message(Message::Ship(ship(1, 3, 4))), Ok(vec![need(1, 1)]));
        assert_eq!(r.on_message(Message::Ship(ship(1, 5, 6))), Ok(vec![]), "no Need storm");
        assert_eq!(r.need_timeout(0), vec![need(1, 1)]);
        let s = ship(1, 1, 2);
        assert_eq!(r.on_message(Message::Ship(s.clone())), Ok(vec![append(1, 1, s)]));
        assert_eq!(r.need_timeout(0), vec![], "progress answered the Need");
        assert_eq!(r.on_message(Message::Ship(ship(1, 5, 6))), Ok(vec![need(1, 3)]));
    }

    #[test]
    fn a_corrupt_frame_asks_every_stream_once() {
        let mut r = Replica::new(9, 1, EpochHistory::new(), vec![pos(1, 2, 2), pos(1, 0, 0)]);
        let expected = vec![
            need(1, 3),
            ToPrimary(Message::Need(Need {
                shard: 1,
                epoch: 1,
                lsn_from: 1,
            })),
        ];
        assert_eq!(r.frame_corrupt(), expected);
        assert_eq!(r.frame_corrupt(), vec![]);
    }

    #[test]
    fn a_checksummed_but_undecodable_ship_is_never_appended() {
        let mut r = following();
        let mut s = ship(1, 1, 2);
        s.lsn_last = 3;
        assert_eq!(r.on_message(Message::Ship(s)), Ok(vec![need(1, 1)]));
        assert_eq!(r.positions(), vec![pos(0, 0, 0)]);
    }

    #[test]
    fn ships_of_an_older_epoch_are_fenced_and_of_a_newer_one_refused() {
        let mut r = following();
        r.on_message(hello(2)).unwrap();
        assert_eq!(
            r.on_message(Message::Ship(ship(1, 1, 1))),
            Ok(vec![Reply(Message::Fenced(Fenced {
                epoch: 2,
                primary: "p:7000".into()
            }))])
        );
        assert_eq!(
            r.on_message(Message::Ship(ship(3, 1, 1))),
            Err(ReplicateError::Protocol {
                reason: "a stream message of a newer epoch without its Hello"
            }),
            "a newer epoch is adopted only through its primary's Hello (with its history)"
        );
        assert_eq!(r.epoch(), 2);
        assert_eq!(r.positions(), vec![pos(0, 0, 0)], "nothing appended");
    }

    fn begin(lsn: u64, total: u64) -> Message {
        Message::SnapshotBegin(crate::message::SnapshotBegin {
            shard: 0,
            epoch: 1,
            lsn,
            total_bytes: total,
        })
    }

    fn chunk(lsn: u64, offset: u64, bytes: &[u8]) -> Message {
        Message::SnapshotChunk(SnapshotChunk {
            shard: 0,
            epoch: 1,
            lsn,
            offset,
            bytes: bytes.to_vec(),
        })
    }

    fn end(lsn: u64, total: u64, body: &[u8]) -> Message {
        Message::SnapshotEnd(SnapshotEnd {
            shard: 0,
            epoch: 1,
            lsn,
            total_bytes: total,
            crc: crc32c::crc32c(body),
        })
    }

    #[test]
    fn a_snapshot_is_installed_after_its_offsets_and_crc_check() {
        let mut r = following();
        r.on_message(Message::Ship(ship(1, 1, 3))).unwrap();
        r.synced(0, 3);
        assert_eq!(
            r.on_message(begin(50, 6)),
            Ok(vec![SnapshotBegin {
                shard: 0,
                lsn: 50,
                total_bytes: 6
            }])
        );
        assert_eq!(
            r.on_message(chunk(50, 0, b"abc")),
            Ok(vec![SnapshotWrite {
                shard: 0,
                offset: 0,
                bytes: b"abc".to_vec()
            }])
        );
        r.on_message(chunk(50, 3, b"def")).unwrap();
        assert_eq!(
            r.on_message(end(50, 6, b"abcdef")),
            Ok(vec![SnapshotInstall { shard: 0, lsn: 50 }])
        );
        assert_eq!(
            r.snapshot_installed(0, 50),
            vec![PersistHistory { history: written_by(1) }, ack(1, 50)],
            "the log is the primary's first 50 records: its history is persisted once installed"
        );
        let s = ship(1, 51, 51);
        assert_eq!(r.on_message(Message::Ship(s.clone())), Ok(vec![append(1, 51, s)]));
    }

    #[test]
    fn a_snapshot_with_a_wrong_offset_or_crc_is_dropped_and_asked_again() {
        let mut r = following();
        r.on_message(begin(50, 6)).unwrap();
        assert_eq!(
            r.on_message(chunk(50, 3, b"def")),
            Ok(vec![SnapshotAbort { shard: 0 }, need(1, 1)])
        );
        r.on_message(begin(50, 3)).unwrap();
        r.on_message(chunk(50, 0, b"abc")).unwrap();
        assert_eq!(
            r.on_message(end(50, 3, b"abX")),
            Ok(vec![SnapshotAbort { shard: 0 }, need(1, 1)])
        );
        assert_eq!(r.positions(), vec![pos(0, 0, 0)]);
    }

    fn fence(epoch_new: u64) -> Message {
        Message::Fence(Fence {
            epoch_new,
            node_id: 5,
            primary_new: "b:7000".into(),
        })
    }

    #[test]
    fn a_fence_reply_waits_for_the_old_primarys_appends_to_be_durable() {
        let mut r = following();
        r.on_message(Message::Ship(ship(1, 1, 4))).unwrap();
        r.synced(0, 2);
        assert_eq!(r.on_message(fence(2)), Ok(vec![PersistEpoch { epoch: 2 }]));
        assert_eq!(
            r.on_message(Message::Ship(ship(1, 5, 5))),
            Ok(vec![Reply(Message::Fenced(Fenced {
                epoch: 2,
                primary: "b:7000".into()
            }))]),
            "the old primary is refused from now on"
        );
        assert_eq!(
            r.synced(0, 4),
            vec![
                ack(2, 4),
                ToPrimary(Message::FenceReply(FenceReply {
                    node_id: 9,
                    epoch: 2,
                    streams: vec![pos(1, 4, 4)],
                    history: written_by(1),
                }))
            ]
        );
        assert_eq!(
            r.on_message(fence(2)),
            Ok(vec![Reply(Message::Fenced(Fenced {
                epoch: 2,
                primary: "b:7000".into()
            }))]),
            "a second promoter at the same epoch loses"
        );
    }

    #[test]
    fn a_fetch_is_served_up_to_the_durable_lsn_of_the_fencing_epoch() {
        let mut r = following();
        r.on_message(Message::Ship(ship(1, 1, 4))).unwrap();
        r.synced(0, 4);
        r.on_message(fence(2)).unwrap();
        let fetch = |epoch, lsn_to| {
            Message::Fetch(Fetch {
                shard: 0,
                epoch,
                lsn_from: 2,
                lsn_to,
            })
        };
        assert_eq!(
            r.on_message(fetch(2, 9)),
            Ok(vec![ServeFetch {
                shard: 0,
                epoch: 2,
                lsn_from: 2,
                lsn_to: 4
            }])
        );
        assert!(matches!(
            r.on_message(fetch(3, 4)),
            Err(ReplicateError::Protocol { .. })
        ));
        assert!(matches!(
            r.on_message(Message::Ack(Ack {
                shard: 0,
                epoch: 2,
                lsn_durable: 1
            })),
            Err(ReplicateError::Protocol { .. })
        ));
    }
}
