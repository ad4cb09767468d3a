//! The replication messages and their frame codec. docs/replication.md has the byte diagrams.
//!
//! ```text
//! offset size field
//!  0     4    body_len u32 LE (≤ FRAME_BODY_BYTES_MAX)
//!  4     1    kind u8 (numbers never change; see `Kind`)
//!  5     4    crc32c(bytes 0..5 ‖ body) u32 LE
//!  9          body: body_len bytes, fixed-width LE integers, str8 = u8 length + UTF-8 bytes
//! ```
//!
//! Decoding never panics. It returns `Incomplete` while the buffer is shorter than the frame,
//! `Corrupt` when the frame is whole but its checksum fails (skippable: the length was sane), and
//! `Invalid` for everything else that is not a well-formed message (close the connection).

use crate::error::{invalid, DecodeError};
use crate::history::{EpochHistory, EpochStart};
use crate::limits::{
    ADDR_BYTES_MAX, EPOCH_HISTORY_MAX, FRAME_BODY_BYTES_MAX, FRAME_HEADER_BYTES, SHARDS_MAX, SHIP_RECORDS_MAX,
    SHIP_RECORD_BYTES_MAX, SNAPSHOT_CHUNK_BYTES_MAX,
};

/// The replication protocol version, sent in Hello. A replica refuses another.
pub const PROTOCOL_VERSION: u16 = 2;

/// Frame kinds. The numbers are part of the wire format and never change.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum Kind {
    Hello = 1,
    HelloReply = 2,
    Fenced = 3,
    Ship = 4,
    Ack = 5,
    Need = 6,
    SnapshotBegin = 7,
    SnapshotChunk = 8,
    SnapshotEnd = 9,
    Fence = 10,
    FenceReply = 11,
    Fetch = 12,
}

impl Kind {
    fn from_u8(kind: u8) -> Option<Kind> {
        use Kind::*;
        Some(match kind {
            1 => Hello,
            2 => HelloReply,
            3 => Fenced,
            4 => Ship,
            5 => Ack,
            6 => Need,
            7 => SnapshotBegin,
            8 => SnapshotChunk,
            9 => SnapshotEnd,
            10 => Fence,
            11 => FenceReply,
            12 => Fetch,
            _ => return None,
        })
    }
}

/// Why a node opened a replication connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum Role {
    /// The primary, about to ship its shards' logs.
    Primary = 1,
    /// A promoting node, about to Fence and Fetch.
    Promoter = 2,
}

/// Where one mirror stream stands on a replica.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct StreamPosition {
    /// The epoch under which its last record was appended (0 for an empty stream).
    pub epoch_last: u64,
    /// Everything up to here is fsynced: the primary may count it as acknowledged.
    pub lsn_durable: u64,
    /// Everything up to here is appended (≥ `lsn_durable`): the primary resumes after it, and judges
    /// with it whether the replica's log is a prefix of its own.
    pub lsn_appended: u64,
}

/// Primary (or promoter) → replica, first on every connection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Hello {
    pub version: u16,
    pub node_id: u128,
    pub epoch: u64,
    pub role: Role,
    pub shards: u16,
    /// The sender's replication address, which a fenced replica names to others.
    pub addr: String,
    pub history: EpochHistory,
}

/// Replica → primary: its epoch and, per primary shard, where its mirror stream stands.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HelloReply {
    pub node_id: u128,
    pub epoch: u64,
    pub streams: Vec<StreamPosition>,
    /// The history of the replica's own log (`EpochHistory::prefix` of the primaries it followed),
    /// from which the primary tells a prefix of its log from a diverged one.
    pub history: EpochHistory,
}

/// Any node → a sender whose epoch is older than the one the node knows.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Fenced {
    pub epoch: u64,
    /// The primary of that epoch, as far as the node knows (empty if unknown).
    pub primary: String,
}

/// A run of one shard's records, `lsn_first..=lsn_last`, all from one primary batch (`time_ms`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ship {
    pub shard: u16,
    pub epoch: u64,
    pub lsn_first: u64,
    pub lsn_last: u64,
    pub time_ms: u64,
    /// `lsn_last - lsn_first + 1` records, encoded by `RecordsEncoder` (self-contained).
    pub records: Vec<u8>,
}

/// Replica → primary: the mirror of `shard` is fsynced up to `lsn_durable`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ack {
    pub shard: u16,
    pub epoch: u64,
    pub lsn_durable: u64,
}

/// Replica → primary: send `shard` from `lsn_from` on (a gap, or a corrupt frame).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Need {
    pub shard: u16,
    pub epoch: u64,
    pub lsn_from: u64,
}

/// Primary → replica: a snapshot of `shard` covering every lsn up to `lsn` follows, `total_bytes` long.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SnapshotBegin {
    pub shard: u16,
    pub epoch: u64,
    pub lsn: u64,
    pub total_bytes: u64,
}

/// Bytes `offset..offset + bytes.len()` of the snapshot body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SnapshotChunk {
    pub shard: u16,
    pub epoch: u64,
    pub lsn: u64,
    pub offset: u64,
    pub bytes: Vec<u8>,
}

/// The snapshot is complete: `total_bytes` bytes whose crc32c is `crc`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SnapshotEnd {
    pub shard: u16,
    pub epoch: u64,
    pub lsn: u64,
    pub total_bytes: u64,
    pub crc: u32,
}

/// Promoter → peer: adopt `epoch_new`, stop accepting the old primary, report your positions.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Fence {
    pub epoch_new: u64,
    pub node_id: u128,
    pub primary_new: String,
}

/// Peer → promoter, once every record it had appended is fsynced.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FenceReply {
    pub node_id: u128,
    pub epoch: u64,
    pub streams: Vec<StreamPosition>,
    /// The history of the peer's own log: the promoter adopts it with the peer's records when this
    /// peer's log is the most advanced.
    pub history: EpochHistory,
}

/// Promoter → peer: send `shard`'s records `lsn_from..=lsn_to` as Ship frames of `epoch`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Fetch {
    pub shard: u16,
    pub epoch: u64,
    pub lsn_from: u64,
    pub lsn_to: u64,
}

/// Every replication message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Message {
    Hello(Hello),
    HelloReply(HelloReply),
    Fenced(Fenced),
    Ship(Ship),
    Ack(Ack),
    Need(Need),
    SnapshotBegin(SnapshotBegin),
    SnapshotChunk(SnapshotChunk),
    SnapshotEnd(SnapshotEnd),
    Fence(Fence),
    FenceReply(FenceReply),
    Fetch(Fetch),
}

impl Message {
    pub fn kind(&self) -> Kind {
        match self {
            Message::Hello(_) => Kind::Hello,
            Message::HelloReply(_) => Kind::HelloReply,
            Message::Fenced(_) => Kind::Fenced,
            Message::Ship(_) => Kind::Ship,
            Message::Ack(_) => Kind::Ack,
            Message::Need(_) => Kind::Need,
            Message::SnapshotBegin(_) => Kind::SnapshotBegin,
            Message::SnapshotChunk(_) => Kind::SnapshotChunk,
            Message::SnapshotEnd(_) => Kind::SnapshotEnd,
            Message::Fence(_) => Kind::Fence,
            Message::FenceReply(_) => Kind::FenceReply,
            Message::Fetch(_) => Kind::Fetch,
        }
    }

    /// Appends this message as one frame. Panics if the message breaks a limit (a bug of the sender:
    /// e.g. a Ship with more record bytes than `SHIP_RECORD_BYTES_MAX`).
    pub fn encode(&self, out: &mut Vec<u8>) {
        let start = out.len();
        out.extend_from_slice(&[0; FRAME_HEADER_BYTES]);
        let mut w = Writer(out);
        match self {
            Message::Hello(m) => {
                assert_eq!(
                    m.history
                        .entries()
                        .first()
                        .map_or(m.shards as usize, |e| e.lsn_first.len()),
                    m.shards as usize
                );
                w.u16(m.version);
                w.u128(m.node_id);
                w.u64(m.epoch);
                w.u8(m.role as u8);
                w.u16(m.shards);
                w.str8(&m.addr);
                w.history(&m.history, m.shards);
            }
            Message::HelloReply(m) => {
                w.u128(m.node_id);
                w.u64(m.epoch);
                w.positions(&m.streams);
                w.history(&m.history, m.streams.len() as u16);
            }
            Message::Fenced(m) => {
                w.u64(m.epoch);
                w.str8(&m.primary);
            }
            Message::Ship(m) => {
                assert!(m.lsn_first >= 1 && m.lsn_last >= m.lsn_first);
                assert!(m.lsn_last - m.lsn_first < SHIP_RECORDS_MAX);
                assert!(m.records.len() <= SHIP_RECORD_BYTES_MAX);
                w.u16(m.shard);
                w.u64(m.epoch);
                w.u64(m.lsn_first);
                w.u64(m.lsn_last);
                w.u64(m.time_ms);
                w.0.extend_from_slice(&m.records);
            }
            Message::Ack(m) => {
                w.u16(m.shard);
                w.u64(m.epoch);
                w.u64(m.lsn_durable);
            }
            Message::Need(m) => {
                w.u16(m.shard);
                w.u64(m.epoch);
                w.u64(m.lsn_from);
            }
            Message::SnapshotBegin(m) => {
                w.u16(m.shard);
                w.u64(m.epoch);
                w.u64(m.lsn);
                w.u64(m.total_bytes);
            }
            Message::SnapshotChunk(m) => {
                assert!(m.bytes.len() <= SNAPSHOT_CHUNK_BYTES_MAX);
                w.u16(m.shard);
                w.u64(m.epoch);
                w.u64(m.lsn);
                w.u64(m.offset);
                w.0.extend_from_slice(&m.bytes);
            }
            Message::SnapshotEnd(m) => {
                w.u16(m.shard);
                w.u64(m.epoch);
                w.u64(m.lsn);
                w.u64(m.total_bytes);
                w.u32(m.crc);
            }
            Message::Fence(m) => {
                w.u64(m.epoch_new);
                w.u128(m.node_id);
                w.str8(&m.primary_new);
            }
            Message::FenceReply(m) => {
                w.u128(m.node_id);
                w.u64(m.epoch);
                w.positions(&m.streams);
                w.history(&m.history, m.streams.len() as u16);
            }
            Message::Fetch(m) => {
                w.u16(m.shard);
                w.u64(m.epoch);
                w.u64(m.lsn_from);
                w.u64(m.lsn_to);
            }
        }
        let body_len = out.len() - start - FRAME_HEADER_BYTES;
        assert!(body_len <= FRAME_BODY_BYTES_MAX, "a message fits a frame");
        out[start..start + 4].copy_from_slice(&(body_len as u32).to_le_bytes());
        out[start + 4] = self.kind() as u8;
        let crc = frame_crc(&out[start..start + 5], &out[start + FRAME_HEADER_BYTES..]);
        out[start + 5..start + 9].copy_from_slice(&crc.to_le_bytes());
    }

    /// The message at the front of `bytes` and the bytes its frame took.
    pub fn decode(bytes: &[u8]) -> Result<(Message, usize), DecodeError> {
        let Some(header) = bytes.get(..FRAME_HEADER_BYTES) else {
            return Err(DecodeError::Incomplete);
        };
        let body_len = u32::from_le_bytes([header[0], header[1], header[2], header[3]]) as usize;
        if body_len > FRAME_BODY_BYTES_MAX {
            return invalid("frame longer than FRAME_BODY_BYTES_MAX");
        }
        let frame_len = FRAME_HEADER_BYTES + body_len;
        let Some(body) = bytes.get(FRAME_HEADER_BYTES..frame_len) else {
            return Err(DecodeError::Incomplete);
        };
        let crc = u32::from_le_bytes([header[5], header[6], header[7], header[8]]);
        if frame_crc(&header[..5], body) != crc {
            return Err(DecodeError::Corrupt {
                frame_bytes: frame_len as u32,
            });
        }
        let Some(kind) = Kind::from_u8(header[4]) else {
            return invalid("unknown frame kind");
        };
        let mut r = Reader { bytes: body, at: 0 };
        let message = decode_body(kind, &mut r)?;
        if r.at != body.len() {
            return invalid("bytes left after the message");
        }
        Ok((message, frame_len))
    }
}

fn frame_crc(header_head: &[u8], body: &[u8]) -> u32 {
    crc32c::crc32c_append(crc32c::crc32c(header_head), body)
}

fn decode_body(kind: Kind, r: &mut Reader<'_>) -> Result<Message, DecodeError> {
    Ok(match kind {
        Kind::Hello => {
            let version = r.u16()?;
            let node_id = r.u128()?;
            let epoch = r.u64()?;
            let role = match r.u8()? {
                1 => Role::Primary,
                2 => Role::Promoter,
                _ => return invalid("unknown role"),
            };
            let shards = r.u16()?;
            if shards == 0 || shards > SHARDS_MAX {
                return invalid("shard count out of range");
            }
            let addr = r.str8()?;
            let history = r.history(shards)?;
            Message::Hello(Hello {
                version,
                node_id,
                epoch,
                role,
                shards,
                addr,
                history,
            })
        }
        Kind::HelloReply => {
            let (node_id, epoch, streams) = (r.u128()?, r.u64()?, r.positions()?);
            let history = r.history(streams.len() as u16)?;
            Message::HelloReply(HelloReply {
                node_id,
                epoch,
                streams,
                history,
            })
        }
        Kind::Fenced => Message::Fenced(Fenced {
            epoch: r.u64()?,
            primary: r.str8()?,
        }),
        Kind::Ship => {
            let shard = r.shard()?;
            let epoch = r.u64()?;
            let lsn_first = r.u64()?;
            let lsn_last = r.u64()?;
            let time_ms = r.u64()?;
            if lsn_first == 0 || lsn_last < lsn_first {
                return invalid("ship lsn range empty or from 0");
            }
            if lsn_last - lsn_first >= SHIP_RECORDS_MAX {
                return invalid("ship with more than SHIP_RECORDS_MAX records");
            }
            let records = r.rest();
            if records.len() > SHIP_RECORD_BYTES_MAX {
                return invalid("ship records longer than SHIP_RECORD_BYTES_MAX");
            }
            Message::Ship(Ship {
                shard,
                epoch,
                lsn_first,
                lsn_last,
                time_ms,
                records: records.to_vec(),
            })
        }
        Kind::Ack => Message::Ack(Ack {
            shard: r.shard()?,
            epoch: r.u64()?,
            lsn_durable: r.u64()?,
        }),
        Kind::Need => {
            let (shard, epoch, lsn_from) = (r.shard()?, r.u64()?, r.u64()?);
            if lsn_from == 0 {
                return invalid("need from lsn 0");
            }
            Message::Need(Need { shard, epoch, lsn_from })
        }
        Kind::SnapshotBegin => Message::SnapshotBegin(SnapshotBegin {
            shard: r.shard()?,
            epoch: r.u64()?,
            lsn: r.u64()?,
            total_bytes: r.u64()?,
        }),
        Kind::SnapshotChunk => {
            let (shard, epoch, lsn, offset) = (r.shard()?, r.u64()?, r.u64()?, r.u64()?);
            let bytes = r.rest();
            if bytes.len() > SNAPSHOT_CHUNK_BYTES_MAX {
                return invalid("snapshot chunk longer than SNAPSHOT_CHUNK_BYTES_MAX");
            }
            Message::SnapshotChunk(SnapshotChunk {
                shard,
                epoch,
                lsn,
                offset,
                bytes: bytes.to_vec(),
            })
        }
        Kind::SnapshotEnd => Message::SnapshotEnd(SnapshotEnd {
            shard: r.shard()?,
            epoch: r.u64()?,
            lsn: r.u64()?,
            total_bytes: r.u64()?,
            crc: r.u32()?,
        }),
        Kind::Fence => Message::Fence(Fence {
            epoch_new: r.u64()?,
            node_id: r.u128()?,
            primary_new: r.str8()?,
        }),
        Kind::FenceReply => {
            let (node_id, epoch, streams) = (r.u128()?, r.u64()?, r.positions()?);
            let history = r.history(streams.len() as u16)?;
            Message::FenceReply(FenceReply {
                node_id,
                epoch,
                streams,
                history,
            })
        }
        Kind::Fetch => {
            let (shard, epoch, lsn_from, lsn_to) = (r.shard()?, r.u64()?, r.u64()?, r.u64()?);
            if lsn_from == 0 || lsn_to < lsn_from {
                return invalid("fetch lsn range empty or from 0");
            }
            Message::Fetch(Fetch {
                shard,
                epoch,
                lsn_from,
                lsn_to,
            })
        }
    })
}

struct Writer<'a>(&'a mut Vec<u8>);

impl Writer<'_> {
    fn u8(&mut self, v: u8) {
        self.0.push(v);
    }
    fn u16(&mut self, v: u16) {
        self.0.extend_from_slice(&v.to_le_bytes());
    }
    fn u32(&mut self, v: u32) {
        self.0.extend_from_slice(&v.to_le_bytes());
    }
    fn u64(&mut self, v: u64) {
        self.0.extend_from_slice(&v.to_le_bytes());
    }
    fn u128(&mut self, v: u128) {
        self.0.extend_from_slice(&v.to_le_bytes());
    }
    fn str8(&mut self, s: &str) {
        assert!(s.len() <= ADDR_BYTES_MAX, "an address is a str8");
        self.u8(s.len() as u8);
        self.0.extend_from_slice(s.as_bytes());
    }
    fn positions(&mut self, streams: &[StreamPosition]) {
        assert!(streams.len() <= usize::from(SHARDS_MAX));
        self.u16(streams.len() as u16);
        for p in streams {
            assert!(p.lsn_durable <= p.lsn_appended);
            self.u64(p.epoch_last);
            self.u64(p.lsn_durable);
            self.u64(p.lsn_appended);
        }
    }

    /// `history_len u16`, then per entry `epoch u64` and `shards × lsn_first u64`.
    fn history(&mut self, history: &EpochHistory, shards: u16) {
        assert!(history
            .entries()
            .iter()
            .all(|e| e.lsn_first.len() == usize::from(shards)));
        self.u16(history.entries().len() as u16);
        for entry in history.entries() {
            self.u64(entry.epoch);
            for &lsn in &entry.lsn_first {
                self.u64(lsn);
            }
        }
    }
}

/// Reads a checksummed body; every read checks bounds.
struct Reader<'a> {
    bytes: &'a [u8],
    at: usize,
}

impl<'a> Reader<'a> {
    fn take<const N: usize>(&mut self) -> Result<[u8; N], DecodeError> {
        let Some(bytes) = self.bytes.get(self.at..self.at + N) else {
            return invalid("message ends early");
        };
        self.at += N;
        let mut out = [0u8; N];
        out.copy_from_slice(bytes);
        Ok(out)
    }
    fn u8(&mut self) -> Result<u8, DecodeError> {
        Ok(self.take::<1>()?[0])
    }
    fn u16(&mut self) -> Result<u16, DecodeError> {
        Ok(u16::from_le_bytes(self.take()?))
    }
    fn u32(&mut self) -> Result<u32, DecodeError> {
        Ok(u32::from_le_bytes(self.take()?))
    }
    fn u64(&mut self) -> Result<u64, DecodeError> {
        Ok(u64::from_le_bytes(self.take()?))
    }
    fn u128(&mut self) -> Result<u128, DecodeError> {
        Ok(u128::from_le_bytes(self.take()?))
    }
    fn shard(&mut self) -> Result<u16, DecodeError> {
        let shard = self.u16()?;
        if shard >= SHARDS_MAX {
            return invalid("shard id out of range");
        }
        Ok(shard)
    }
    fn str8(&mut self) -> Result<String, DecodeError> {
        let len = usize::from(self.u8()?);
        let Some(bytes) = self.bytes.get(self.at..self.at + len) else {
            return invalid("message ends early");
        };
        self.at += len;
        match std::str::from_utf8(bytes) {
            Ok(s) => Ok(s.to_owned()),
            Err(_) => invalid("address is not UTF-8"),
        }
    }
    fn positions(&mut self) -> Result<Vec<StreamPosition>, DecodeError> {
        let count = self.u16()?;
        if count > SHARDS_MAX {
            return invalid("more stream positions than SHARDS_MAX");
        }
        let mut streams = Vec::with_capacity(usize::from(count));
        for _ in 0..count {
            let p = StreamPosition {
                epoch_last: self.u64()?,
                lsn_durable: self.u64()?,
                lsn_appended: self.u64()?,
            };
            if p.lsn_durable > p.lsn_appended {
                return invalid("durable lsn beyond appended lsn");
            }
            streams.push(p);
        }
        Ok(streams)
    }

    fn history(&mut self, shards: u16) -> Result<EpochHistory, DecodeError> {
        let count = usize::from(self.u16()?);
        if count > EPOCH_HISTORY_MAX {
            return invalid("epoch history longer than EPOCH_HISTORY_MAX");
        }
        if count > 0 && shards == 0 {
            return invalid("epoch history entries without shards");
        }
        let mut entries = Vec::with_capacity(count);
        for _ in 0..count {
            let epoch = self.u64()?;
            let mut lsn_first = Vec::with_capacity(usize::from(shards));
            for _ in 0..shards {
                lsn_first.push(self.u64()?);
            }
            entries.push(EpochStart { epoch, lsn_first });
        }
        EpochHistory::from_entries(entries).map_or_else(|| invalid("epoch history out of order or with lsn 0"), Ok)
    }

    fn rest(&mut self) -> &'a [u8] {
        let rest = &self.bytes[self.at..];
        self.at = self.bytes.len();
        rest
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn samples() -> Vec<Message> {
        let mut history = EpochHistory::new();
        history.push(1, vec![1, 1]);
        history.push(3, vec![40, 7]);
        let pos = StreamPosition {
            epoch_last: 3,
            lsn_durable: 9,
            lsn_appended: 12,
        };
        vec![
            Message::Hello(Hello {
                version: PROTOCOL_VERSION,
                node_id: u128::MAX - 5,
                epoch: 3,
                role: Role::Primary,
                shards: 2,
                addr: "10.0.0.1:7001".into(),
                history: history.clone(),
            }),
            Message::HelloReply(HelloReply {
                node_id: 7,
                epoch: 3,
                streams: vec![pos, StreamPosition::default()],
                history: history.clone(),
            }),
            Message::Fenced(Fenced {
                epoch: 4,
                primary: "b:1".into(),
            }),
            Message::Ship(Ship {
                shard: 1,
                epoch: 3,
                lsn_first: 10,
                lsn_last: 12,
                time_ms: 1_700_000_000_000,
                records: vec![1, 2, 3],
            }),
            Message::Ack(Ack {
                shard: 0,
                epoch: 3,
                lsn_durable: 12,
            }),
            Message::Need(Need {
                shard: 0,
                epoch: 3,
                lsn_from: 13,
            }),
            Message::SnapshotBegin(SnapshotBegin {
                shard: 0,
                epoch: 3,
                lsn: 100,
                total_bytes: 5,
            }),
            Message::SnapshotChunk(SnapshotChunk {
                shard: 0,
                epoch: 3,
                lsn: 100,
                offset: 0,
                bytes: vec![9; 5],
            }),
            Message::SnapshotEnd(SnapshotEnd {
                shard: 0,
                epoch: 3,
                lsn: 100,
                total_bytes: 5,
                crc: 0xdead_beef,
            }),
            Message::Fence(Fence {
                epoch_new: 5,
                node_id: 2,
                primary_new: "c:1".into(),
            }),
            Message::FenceReply(FenceReply {
                node_id: 3,
                epoch: 5,
                streams: vec![pos],
                history: EpochHistory::from_entries(vec![EpochStart {
                    epoch: 3,
                    lsn_first: vec![10],
                }])
                .expect("ordered"),
            }),
            Message::Fetch(Fetch {
                shard: 1,
                epoch: 5,
                lsn_from: 3,
                lsn_to: 9,
            }),
        ]
    }

    #[test]
    fn every_message_round_trips_alone_and_in_a_stream() {
        let mut stream = Vec::new();
        for message in samples() {
            let mut buf = Vec::new();
            message.encode(&mut buf);
            assert_eq!(Message::decode(&buf), Ok((message.clone(), buf.len())));
            stream.extend_from_slice(&buf);
        }
        let mut at = 0;
        for message in samples() {
            let (decoded, used) = Message::decode(&stream[at..]).unwrap();
            assert_eq!(decoded, message);
            at += used;
        }
        assert_eq!(at, stream.len());
    }

    #[test]
    fn the_header_layout_is_fixed() {
        let mut buf = Vec::new();
        Message::Ack(Ack {
            shard: 2,
            epoch: 1,
            lsn_durable: 0x0102,
        })
        .encode(&mut buf);
        assert_eq!(buf.len(), FRAME_HEADER_BYTES + 18);
        assert_eq!(&buf[..5], &[18, 0, 0, 0, Kind::Ack as u8]);
        assert_eq!(&buf[9..11], &[2, 0]);
        assert_eq!(&buf[19..21], &[0x02, 0x01]);
    }

    #[test]
    fn a_flipped_kind_fails_the_checksum() {
        let mut buf = Vec::new();
        Message::Ack(Ack {
            shard: 0,
            epoch: 1,
            lsn_durable: 5,
        })
        .encode(&mut buf);
        buf[4] = Kind::Need as u8;
        assert_eq!(
            Message::decode(&buf),
            Err(DecodeError::Corrupt {
                frame_bytes: buf.len() as u32
            })
        );
    }

    #[test]
    fn an_oversized_length_is_invalid_before_the_body_arrives() {
        let mut buf = ((FRAME_BODY_BYTES_MAX + 1) as u32).to_le_bytes().to_vec();
        buf.extend_from_slice(&[4, 0, 0, 0, 0]);
        assert!(matches!(Message::decode(&buf), Err(DecodeError::Invalid { .. })));
    }

    proptest! {
        #[test]
        fn every_truncation_is_incomplete(pick: prop::sample::Index, cut: prop::sample::Index) {
            let all = samples();
            let message = &all[pick.index(all.len())];
            let mut buf = Vec::new();
            message.encode(&mut buf);
            let cut = cut.index(buf.len());
            prop_assert_eq!(Message::decode(&buf[..cut]), Err(DecodeError::Incomplete));
        }

        #[test]
        fn every_bit_flip_is_caught(pick: prop::sample::Index, at: prop::sample::Index, bit in 0u8..8) {
            let all = samples();
            let message = &all[pick.index(all.len())];
            let mut buf = Vec::new();
            message.encode(&mut buf);
            let at = at.index(buf.len());
            buf[at] ^= 1 << bit;
            match Message::decode(&buf) {
                Ok((decoded, _)) => prop_assert!(false, "a flipped frame decoded as {:?}", decoded),
                Err(DecodeError::Incomplete | DecodeError::Corrupt { .. } | DecodeError::Invalid { .. }) => {}
            }
        }

        #[test]
        fn random_bytes_never_panic(bytes: Vec<u8>) {
            match Message::decode(&bytes) {
                Ok((_, used)) => prop_assert!(used <= bytes.len()),
                Err(DecodeError::Corrupt { frame_bytes }) => prop_assert!(frame_bytes as usize <= bytes.len()),
                Err(_) => {}
            }
        }

        #[test]
        fn checksummed_garbage_never_panics(kind in 0u8..16, body in proptest::collection::vec(any::<u8>(), 0..200)) {
            // Valid checksums over random bodies reach the body decoder.
            let mut buf = (body.len() as u32).to_le_bytes().to_vec();
            buf.push(kind);
            let crc = frame_crc(&buf, &body);
            buf.extend_from_slice(&crc.to_le_bytes());
            buf.extend_from_slice(&body);
            match Message::decode(&buf) {
                Ok((message, used)) => {
                    prop_assert_eq!(used, buf.len());
                    let mut again = Vec::new();
                    message.encode(&mut again);
                    prop_assert_eq!(again, buf);
                }
                Err(e) => prop_assert!(matches!(e, DecodeError::Invalid { .. }), "{:?}", e),
            }
        }
    }
}
