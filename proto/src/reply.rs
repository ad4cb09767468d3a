//! Reply ops: `opcode u8 | status u16 | payload_len u16 | payload`. Status 0 is success and the
//! payload is the op's result; any other status is an `ErrorCode` and the payload is
//! `flags u8 | current i64 | message (rest)`, where flag bit 0 says `current` is meaningful
//! (CAS mismatch and bound violations carry the counter's value).

use bytes::{BufMut, BytesMut};

use crate::cursor::Cursor;
use crate::error::{DecodeError, ErrorCode};
use crate::frame::truncate_message;
use crate::history::{AuditRecord, Event};
use crate::limits::{AUDIT_RECORDS_PER_REPLY_MAX, CURSOR_BYTES_MAX, EVENTS_PER_PAGE_MAX, SERIES_POINTS_MAX};
use crate::request::{Opcode, Token};

/// Reply flag: the counter is split across shards (hot). Shard-aware clients may spread unkeyed
/// increments of it over all shards.
pub const REPLY_SPLIT: u8 = 1 << 0;
/// Reply flag: this INCR was a duplicate of an earlier one with the same idempotency key; the value
/// is the first outcome and nothing was applied.
pub const REPLY_DUPLICATE: u8 = 1 << 1;
/// Reply flag: the value is an estimate (an increment of a split counter applied on a non-owner
/// shard reports the last aggregate it saw plus its own part).
pub const REPLY_APPROX: u8 = 1 << 2;
/// Reply flag (GET): the counter exists. A GET of an unknown name returns 0 without this flag.
pub const REPLY_EXISTS: u8 = 1 << 3;
/// Reply flag (GET, CREATE): the counter is strict.
pub const REPLY_STRICT: u8 = 1 << 4;

const ERROR_HAS_CURRENT: u8 = 1 << 0;

/// HELLO's answer: everything a shard-aware client needs to route.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HelloReply {
    pub version: u8,
    /// Shard count; `shard_of(name, shard_count)` is a name's owner.
    pub shard_count: u16,
    /// The shard that serves this connection.
    pub shard: u16,
    /// Port of each shard's direct listener, on the same host as this connection. A connection to
    /// shard i's port is served by shard i's core.
    pub shard_ports: Vec<u16>,
    /// Server software version string.
    pub server: String,
}

/// A per-op failure as the client sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OpError {
    /// The raw status; `ErrorCode::from_u16` maps it (unknown codes from newer servers stay usable).
    pub code: u16,
    /// The counter's value for CAS mismatches and bound violations.
    pub current: Option<i64>,
    pub message: String,
}

impl OpError {
    pub fn error_code(&self) -> Option<ErrorCode> {
        ErrorCode::from_u16(self.code)
    }
}

/// A successful reply body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reply {
    Hello(HelloReply),
    /// The value after the increment, flags, and the write's token.
    Incr {
        value: i64,
        flags: u8,
        token: Token,
    },
    /// The value; flags say whether it exists, is split or strict.
    Get {
        value: i64,
        flags: u8,
    },
    /// `created` is false when an identical declaration already existed.
    Create {
        created: bool,
        value: i64,
        flags: u8,
    },
    Cas {
        value: i64,
        token: Token,
    },
    AddBounded {
        value: i64,
        flags: u8,
        token: Token,
    },
    Reset {
        old: i64,
        new: i64,
        token: Token,
    },
    Stats(StatsReply),
    /// The window's sum and the aligned range it covers, [from_ms, to_ms).
    Window {
        value: i64,
        from_ms: u64,
        to_ms: u64,
    },
    /// One sum per step from `from_ms` (aligned to the step).
    Series {
        from_ms: u64,
        step_ms: u64,
        points: Vec<i64>,
    },
    /// RESET records, oldest first; `cursor` asks for the rest (empty: there is no more).
    Audit {
        records: Vec<AuditRecord>,
        cursor: Vec<u8>,
    },
    /// Logged increments in time order; `cursor` asks for the next page (empty: the range is done).
    Events {
        events: Vec<Event>,
        cursor: Vec<u8>,
    },
    /// This node is primary from `epoch` on.
    Promote {
        epoch: u64,
    },
}

/// STATS: named figures (`shard.0.counters`, `node.connections`, ...) and the split counters.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct StatsReply {
    pub figures: Vec<(String, i64)>,
    pub split: Vec<Vec<u8>>,
}

impl Reply {
    pub fn opcode(&self) -> Opcode {
        match self {
            Reply::Hello(_) => Opcode::Hello,
            Reply::Incr { .. } => Opcode::Incr,
            Reply::Get { .. } => Opcode::Get,
            Reply::Create { .. } => Opcode::Create,
            Reply::Cas { .. } => Opcode::Cas,
            Reply::AddBounded { .. } => Opcode::AddBounded,
            Reply::Reset { .. } => Opcode::Reset,
            Reply::Stats(_) => Opcode::Stats,
            Reply::Window { .. } => Opcode::Window,
            Reply::Series { .. } => Opcode::Series,
            Reply::Audit { .. } => Opcode::Audit,
            Reply::Events { .. } => Opcode::Events,
            Reply::Promote { .. } => Opcode::Promote,
        }
    }

    /// Appends `opcode | 0 | len | payload`.
    pub fn encode(&self, buf: &mut BytesMut) {
        buf.put_u8(self.opcode() as u8);
        buf.put_u16_le(0);
        let len_at = buf.len();
        buf.put_u16_le(0);
        let start = buf.len();
        match self {
            Reply::Hello(hello) => {
                buf.put_u8(hello.version);
                buf.put_u16_le(hello.shard_count);
                buf.put_u16_le(hello.shard);
                assert_eq!(hello.shard_ports.len(), hello.shard_count as usize);
                for port in &hello.shard_ports {
                    buf.put_u16_le(*port);
                }
                put_str8(buf, hello.server.as_bytes());
            }
            Reply::Incr { value, flags, token } => {
                buf.put_u8(*flags);
                buf.put_i64_le(*value);
                put_token(buf, token);
            }
            Reply::Get { value, flags } => {
                buf.put_u8(*flags);
                buf.put_i64_le(*value);
            }
            Reply::Create { created, value, flags } => {
                buf.put_u8(*created as u8);
                buf.put_u8(*flags);
                buf.put_i64_le(*value);
            }
            Reply::Cas { value, token } => {
                buf.put_i64_le(*value);
                put_token(buf, token);
            }
            Reply::AddBounded { value, flags, token } => {
                buf.put_u8(*flags);
                buf.put_i64_le(*value);
                put_token(buf, token);
            }
            Reply::Reset { old, new, token } => {
                buf.put_i64_le(*old);
                buf.put_i64_le(*new);
                put_token(buf, token);
            }
            Reply::Stats(stats) => {
                // The payload length is a u16: list as many figures, then as many split names, as
                // fit, always keeping room for the split count that follows the figures.
                let fits = |buf: &BytesMut, more: usize| buf.len() - start + more <= u16::MAX as usize;
                let figures_count_at = buf.len();
                buf.put_u16_le(0);
                let mut figures = 0u16;
                for (key, value) in &stats.figures {
                    let key_len = key.len().min(u8::MAX as usize);
                    if figures == u16::MAX || !fits(buf, 1 + key_len + 8 + 2) {
                        break;
                    }
                    put_str8(buf, key.as_bytes());
                    buf.put_i64_le(*value);
                    figures += 1;
                }
                buf[figures_count_at..figures_count_at + 2].copy_from_slice(&figures.to_le_bytes());
                let split_count_at = buf.len();
                buf.put_u16_le(0);
                let mut split = 0u16;
                for name in &stats.split {
                    let name_len = name.len().min(u8::MAX as usize);
                    if split == u16::MAX || !fits(buf, 1 + name_len) {
                        break;
                    }
                    put_str8(buf, name);
                    split += 1;
                }
                buf[split_count_at..split_count_at + 2].copy_from_slice(&split.to_le_bytes());
            }
            Reply::Window { value, from_ms, to_ms } => {
                buf.put_i64_le(*value);
                buf.put_u64_le(*from_ms);
                buf.put_u64_le(*to_ms);
            }
            Reply::Series {
                from_ms,
                step_ms,
                points,
            } => {
                assert!(
                    points.len() as u64 <= SERIES_POINTS_MAX,
                    "the server never builds a longer series"
                );
                buf.put_u64_le(*from_ms);
                buf.put_u64_le(*step_ms);
                buf.put_u16_le(points.len() as u16);
                for point in points {
                    buf.put_i64_le(*point);
                }
            }
            Reply::Audit { records, cursor } => {
                assert!(records.len() <= AUDIT_RECORDS_PER_REPLY_MAX as usize);
                assert!(cursor.len() <= CURSOR_BYTES_MAX);
                buf.put_u16_le(records.len() as u16);
                for record in records {
                    record.encode(buf);
                }
                buf.put_u16_le(cursor.len() as u16);
                buf.put_slice(cursor);
            }
            Reply::Events { events, cursor } => {
                assert!(events.len() <= EVENTS_PER_PAGE_MAX as usize);
                assert!(cursor.len() <= CURSOR_BYTES_MAX);
                buf.put_u16_le(events.len() as u16);
                for event in events {
                    event.encode(buf);
                }
                buf.put_u16_le(cursor.len() as u16);
                buf.put_slice(cursor);
            }
            Reply::Promote { epoch } => buf.put_u64_le(*epoch),
        }
        patch_len(buf, len_at, start);
    }

    /// Decodes a success payload for `opcode`.
    pub fn decode(opcode: u8, payload: &[u8]) -> Result<Reply, DecodeError> {
        let Some(op) = Opcode::from_u8(opcode) else {
            return Err(DecodeError::invalid(
                ErrorCode::UnknownOp,
                format!("reply for unknown opcode 0x{opcode:02x}"),
            ));
        };
        let mut c = Cursor::new(payload, "reply payload");
        let reply = match op {
            Opcode::Hello => {
                let version = c.u8()?;
                let shard_count = c.u16()?;
                let shard = c.u16()?;
                let mut shard_ports = Vec::with_capacity(shard_count.min(crate::limits::SHARDS_MAX) as usize);
                for _ in 0..shard_count {
                    shard_ports.push(c.u16()?);
                }
                let server = String::from_utf8_lossy(c.str8()?).into_owned();
                Reply::Hello(HelloReply {
                    version,
                    shard_count,
                    shard,
                    shard_ports,
                    server,
                })
            }
            Opcode::Incr => {
                let flags = c.u8()?;
                let value = c.i64()?;
                Reply::Incr {
                    value,
                    flags,
                    token: token(&mut c)?,
                }
            }
            Opcode::Get => {
                let flags = c.u8()?;
                Reply::Get { value: c.i64()?, flags }
            }
            Opcode::Create => {
                let created = c.u8()? != 0;
                let flags = c.u8()?;
                Reply::Create {
                    created,
                    value: c.i64()?,
                    flags,
                }
            }
            Opcode::Cas => {
                let value = c.i64()?;
                Reply::Cas {
                    value,
                    token: token(&mut c)?,
                }
            }
            Opcode::AddBounded => {
                let flags = c.u8()?;
                let value = c.i64()?;
                Reply::AddBounded {
                    value,
                    flags,
                    token: token(&mut c)?,
                }
            }
            Opcode::Reset => {
                let old = c.i64()?;
                let new = c.i64()?;
                Reply::Reset {
                    old,
                    new,
                    token: token(&mut c)?,
                }
            }
            Opcode::Stats => {
                let figures_len = c.u16()?;
                let mut figures = Vec::new();
                for _ in 0..figures_len {
                    let key = String::from_utf8_lossy(c.str8()?).into_owned();
                    figures.push((key, c.i64()?));
                }
                let split_len = c.u16()?;
                let mut split = Vec::new();
                for _ in 0..split_len {
                    split.push(c.str8()?.to_vec());
                }
                Reply::Stats(StatsReply { figures, split })
            }
            Opcode::Window => Reply::Window {
                value: c.i64()?,
                from_ms: c.u64()?,
                to_ms: c.u64()?,
            },
            Opcode::Series => {
                let from_ms = c.u64()?;
                let step_ms = c.u64()?;
                let count = c.u16()?;
                let mut points = Vec::with_capacity(count.min(SERIES_POINTS_MAX as u16) as usize);
                for _ in 0..count {
                    points.push(c.i64()?);
                }
                Reply::Series {
                    from_ms,
                    step_ms,
                    points,
                }
            }
            Opcode::Audit => {
                let count = c.u16()?;
                let mut records = Vec::with_capacity(count.min(AUDIT_RECORDS_PER_REPLY_MAX) as usize);
                for _ in 0..count {
                    records.push(AuditRecord::decode(&mut c)?);
                }
                Reply::Audit {
                    records,
                    cursor: c.str16()?.to_vec(),
                }
            }
            Opcode::Events => {
                let count = c.u16()?;
                let mut events = Vec::with_capacity(count.min(EVENTS_PER_PAGE_MAX) as usize);
                for _ in 0..count {
                    events.push(Event::decode(&mut c)?);
                }
                Reply::Events {
                    events,
                    cursor: c.str16()?.to_vec(),
                }
            }
            Opcode::Promote => Reply::Promote { epoch: c.u64()? },
        };
        c.finish()?;
        Ok(reply)
    }
}

/// Appends an error reply op.
pub fn encode_error_reply(buf: &mut BytesMut, opcode: u8, code: ErrorCode, current: Option<i64>, message: &str) {
    buf.put_u8(opcode);
    buf.put_u16_le(code as u16);
    let len_at = buf.len();
    buf.put_u16_le(0);
    let start = buf.len();
    buf.put_u8(if current.is_some() { ERROR_HAS_CURRENT } else { 0 });
    buf.put_i64_le(current.unwrap_or(0));
    buf.put_slice(truncate_message(message));
    patch_len(buf, len_at, start);
}

/// One decoded reply op: the echoed opcode and the result.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReplyOp {
    pub opcode: u8,
    pub result: Result<Reply, OpError>,
}

/// Decodes one reply op from the front of `buf`, returning it and the bytes consumed.
pub fn decode_reply_op(buf: &[u8]) -> Result<(ReplyOp, usize), DecodeError> {
    let mut c = Cursor::new(buf, "reply op");
    let opcode = c.u8()?;
    let status = c.u16()?;
    let payload = c.str16()?;
    let consumed = buf.len() - c.remaining();
    if status == 0 {
        return Ok((
            ReplyOp {
                opcode,
                result: Ok(Reply::decode(opcode, payload)?),
            },
            consumed,
        ));
    }
    let mut p = Cursor::new(payload, "error payload");
    let flags = p.u8()?;
    let current = p.i64()?;
    let message = String::from_utf8_lossy(p.rest()).into_owned();
    let error = OpError {
        code: status,
        current: (flags & ERROR_HAS_CURRENT != 0).then_some(current),
        message,
    };
    Ok((
        ReplyOp {
            opcode,
            result: Err(error),
        },
        consumed,
    ))
}

fn patch_len(buf: &mut BytesMut, len_at: usize, start: usize) {
    let len = buf.len() - start;
    assert!(
        len <= u16::MAX as usize,
        "reply payload {len} exceeds the u16 length field"
    );
    buf[len_at..len_at + 2].copy_from_slice(&(len as u16).to_le_bytes());
}

fn put_str8(buf: &mut BytesMut, s: &[u8]) {
    let s = &s[..s.len().min(u8::MAX as usize)];
    buf.put_u8(s.len() as u8);
    buf.put_slice(s);
}

fn put_token(buf: &mut BytesMut, token: &Token) {
    buf.put_u16_le(token.shard);
    buf.put_u64_le(token.lsn);
}

fn token(c: &mut Cursor<'_>) -> Result<Token, DecodeError> {
    Ok(Token {
        shard: c.u16()?,
        lsn: c.u64()?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn encoded(reply: &Reply) -> Vec<u8> {
        let mut buf = BytesMut::new();
        reply.encode(&mut buf);
        buf.to_vec()
    }

    /// `opcode | status u16 | len u16 | payload`, built by hand.
    fn op(opcode: u8, status: u16, payload: &[u8]) -> Vec<u8> {
        let mut out = vec![opcode];
        out.extend_from_slice(&status.to_le_bytes());
        out.extend_from_slice(&(payload.len() as u16).to_le_bytes());
        out.extend_from_slice(payload);
        out
    }

    fn token_bytes(shard: u16, lsn: u64) -> Vec<u8> {
        [&shard.to_le_bytes()[..], &lsn.to_le_bytes()].concat()
    }

    #[test]
    fn reply_flag_bits_are_stable() {
        assert_eq!(REPLY_SPLIT, 0x01);
        assert_eq!(REPLY_DUPLICATE, 0x02);
        assert_eq!(REPLY_APPROX, 0x04);
        assert_eq!(REPLY_EXISTS, 0x08);
        assert_eq!(REPLY_STRICT, 0x10);
    }

    /// The byte layout of every reply op, written out by hand; docs/protocol.md shows the same.
    #[test]
    fn reply_layouts() {
        let t = Token { shard: 2, lsn: 77 };
        let cases: Vec<(Reply, Vec<u8>)> = vec![
            (
                Reply::Hello(HelloReply {
                    version: 1,
                    shard_count: 2,
                    shard: 1,
                    shard_ports: vec![7001, 7002],
                    server: "t".into(),
                }),
                op(
                    0x01,
                    0,
                    &[
                        &[1u8, 2, 0, 1, 0][..],
                        &7001u16.to_le_bytes(),
                        &7002u16.to_le_bytes(),
                        b"\x01t",
                    ]
                    .concat(),
                ),
            ),
            (
                Reply::Incr {
                    value: -5,
                    flags: REPLY_SPLIT,
                    token: t,
                },
                op(
                    0x02,
                    0,
                    &[&[1u8][..], &(-5i64).to_le_bytes(), &token_bytes(2, 77)].concat(),
                ),
            ),
            (
                Reply::Get {
                    value: 9,
                    flags: REPLY_EXISTS,
                },
                op(0x03, 0, &[&[8u8][..], &9i64.to_le_bytes()].concat()),
            ),
            (
                Reply::Create {
                    created: true,
                    value: 3,
                    flags: REPLY_STRICT,
                },
                op(0x04, 0, &[&[1u8, 0x10][..], &3i64.to_le_bytes()].concat()),
            ),
            (
                Reply::Cas { value: 4, token: t },
                op(0x05, 0, &[&4i64.to_le_bytes()[..], &token_bytes(2, 77)].concat()),
            ),
            (
                Reply::AddBounded {
                    value: 6,
                    flags: REPLY_DUPLICATE,
                    token: t,
                },
                op(
                    0x06,
                    0,
                    &[&[2u8][..], &6i64.to_le_bytes(), &token_bytes(2, 77)].concat(),
                ),
            ),
            (
                Reply::Reset {
                    old: 8,
                    new: 0,
                    token: t,
                },
                op(
                    0x07,
                    0,
                    &[&8i64.to_le_bytes()[..], &0i64.to_le_bytes(), &token_bytes(2, 77)].concat(),
                ),
            ),
            (
                Reply::Stats(StatsReply {
                    figures: vec![("a".into(), 1)],
                    split: vec![b"hot".to_vec()],
                }),
                op(
                    0x08,
                    0,
                    &[&[1u8, 0, 1, b'a'][..], &1i64.to_le_bytes(), &[1, 0, 3], b"hot"].concat(),
                ),
            ),
        ];
        for (reply, bytes) in cases {
            assert_eq!(encoded(&reply), bytes, "{reply:?}");
            let (decoded, consumed) = decode_reply_op(&bytes).unwrap();
            assert_eq!(consumed, bytes.len());
            assert_eq!(decoded.opcode, reply.opcode() as u8);
            assert_eq!(decoded.result, Ok(reply));
        }
    }

    #[test]
    fn error_reply_layout() {
        let mut buf = BytesMut::new();
        encode_error_reply(&mut buf, 0x05, ErrorCode::CasMismatch, Some(-3), "no");
        let expected = op(0x05, 11, &[&[1u8][..], &(-3i64).to_le_bytes(), b"no"].concat());
        assert_eq!(&buf[..], &expected[..]);
        let (decoded, consumed) = decode_reply_op(&buf).unwrap();
        assert_eq!(consumed, buf.len());
        let error = decoded.result.unwrap_err();
        assert_eq!(error.error_code(), Some(ErrorCode::CasMismatch));
        assert_eq!(error.current, Some(-3));
        assert_eq!(error.message, "no");

        // Without a current value the field is zero and flag bit 0 is clear.
        let mut buf = BytesMut::new();
        encode_error_reply(&mut buf, 0x42, ErrorCode::UnknownOp, None, "");
        assert_eq!(&buf[..], &op(0x42, 4, &[0u8; 9])[..]);
        let error = decode_reply_op(&buf).unwrap().0.result.unwrap_err();
        assert_eq!(error.current, None);
    }

    #[test]
    fn error_codes_from_newer_servers_stay_usable() {
        let bytes = op(0x02, 999, &[&[0u8][..], &0i64.to_le_bytes(), b"new"].concat());
        let error = decode_reply_op(&bytes).unwrap().0.result.unwrap_err();
        assert_eq!(error.code, 999);
        assert_eq!(error.error_code(), None);
        assert_eq!(error.message, "new");
    }

    #[test]
    fn error_payload_shorter_than_nine_bytes_is_bad_frame() {
        for len in 0..9 {
            let bytes = op(0x02, 1, &vec![0u8; len]);
            assert!(decode_reply_op(&bytes).is_err(), "{len}-byte error payload");
        }
    }

    #[test]
    fn decode_reply_op_reads_only_its_own_op() {
        let mut buf = BytesMut::new();
        Reply::Get { value: 1, flags: 0 }.encode(&mut buf);
        let first = buf.len();
        encode_error_reply(&mut buf, 0x03, ErrorCode::NotFound, None, "x");
        let (_, consumed) = decode_reply_op(&buf).unwrap();
        assert_eq!(consumed, first);
        let (second, consumed2) = decode_reply_op(&buf[consumed..]).unwrap();
        assert_eq!(consumed + consumed2, buf.len());
        assert_eq!(second.result.unwrap_err().error_code(), Some(ErrorCode::NotFound));
    }

    #[test]
    fn stats_never_overflow_the_payload_length() {
        // 256 shards with a dozen long figures each is ~100 KiB of figures: more than a u16 payload.
        let figures: Vec<(String, i64)> = (0..256 * 12)
            .map(|i| (format!("shard.{}.some_long_figure_name_{}", i / 12, i % 12), i))
            .collect();
        let split: Vec<Vec<u8>> = (0..1000).map(|i| vec![b'a' + (i % 26) as u8; 200]).collect();
        let stats = Reply::Stats(StatsReply {
            figures: figures.clone(),
            split,
        });
        let bytes = encoded(&stats);
        assert!(bytes.len() <= 5 + u16::MAX as usize);
        let Reply::Stats(decoded) = decode_reply_op(&bytes).unwrap().0.result.unwrap() else {
            panic!("not a STATS reply");
        };
        assert!(!decoded.figures.is_empty());
        assert!(decoded.figures.len() < figures.len(), "the figures were cut to fit");
        assert_eq!(
            decoded.figures[..],
            figures[..decoded.figures.len()],
            "a prefix, in order"
        );
        assert!(decoded.split.is_empty(), "no room was left for split names");

        // Split names fill what the figures leave.
        let stats = Reply::Stats(StatsReply {
            figures: vec![("x".into(), 1)],
            split: (0..1000).map(|_| vec![b's'; 255]).collect(),
        });
        let bytes = encoded(&stats);
        assert!(bytes.len() <= 5 + u16::MAX as usize);
        let Reply::Stats(decoded) = decode_reply_op(&bytes).unwrap().0.result.unwrap() else {
            panic!("not a STATS reply");
        };
        assert_eq!(decoded.figures.len(), 1);
        assert_eq!(decoded.split.len(), (u16::MAX as usize - 2 - 10 - 2) / 256);
    }

    #[test]
    fn unknown_reply_opcode_is_refused() {
        let bytes = op(0x30, 0, b"");
        match decode_reply_op(&bytes) {
            Err(DecodeError::Invalid {
                code: ErrorCode::UnknownOp,
                ..
            }) => {}
            other => panic!("{other:?}"),
        }
    }
}
