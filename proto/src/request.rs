//! Request ops: `opcode u8 | payload_len u16 | payload`. Each op carries its own length, so an op
//! the server cannot parse (unknown opcode, malformed payload) gets its own error reply and the
//! rest of the frame is still served.

use bytes::{BufMut, BytesMut};

use crate::cursor::Cursor;
use crate::error::{DecodeError, ErrorCode};
use crate::limits::{NAME_BYTES_MAX, OP_PAYLOAD_BYTES_MAX, REASON_BYTES_MAX, REQUEST_OP_HEADER_BYTES};

/// Opcodes. Numbers never change; a new op gets a new number.
#[repr(u8)]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Opcode {
    Hello = 0x01,
    Incr = 0x02,
    Get = 0x03,
    Create = 0x04,
    Cas = 0x05,
    AddBounded = 0x06,
    Reset = 0x07,
    Stats = 0x08,
}

impl Opcode {
    pub fn from_u8(op: u8) -> Option<Opcode> {
        Some(match op {
            0x01 => Opcode::Hello,
            0x02 => Opcode::Incr,
            0x03 => Opcode::Get,
            0x04 => Opcode::Create,
            0x05 => Opcode::Cas,
            0x06 => Opcode::AddBounded,
            0x07 => Opcode::Reset,
            0x08 => Opcode::Stats,
            _ => return None,
        })
    }
}

/// Counter kinds, fixed at creation.
#[repr(u8)]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum CounterKind {
    /// Any delta, may be split across shards when hot. The default for undeclared names.
    Analytic = 0,
    /// Single owner, never split; CAS and bounded adds change it atomically; declared bounds are
    /// enforced on every change.
    Strict = 1,
}

impl CounterKind {
    pub fn from_u8(kind: u8) -> Option<CounterKind> {
        match kind {
            0 => Some(CounterKind::Analytic),
            1 => Some(CounterKind::Strict),
            _ => None,
        }
    }
}

/// A read-your-writes token: the shard that acked a write and the LSN it gave it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Token {
    pub shard: u16,
    pub lsn: u64,
}

/// One decoded request op. Names and strings borrow from the frame buffer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Request<'a> {
    /// Handshake: the client's self-chosen name (for STATS and audit records, may be empty).
    Hello { client: &'a [u8] },
    /// Add `delta` to `name`, creating it as analytic if unknown. With a key, a retry inside the
    /// dedup window returns the first outcome.
    Incr {
        name: &'a [u8],
        delta: i64,
        key: Option<u128>,
    },
    /// Read `name`. `fresh` sums a split counter's shards now; a token waits until that write is
    /// visible.
    Get {
        name: &'a [u8],
        fresh: bool,
        token: Option<Token>,
    },
    /// Declare `name` with a kind and, for strict counters, optional bounds.
    Create {
        name: &'a [u8],
        kind: CounterKind,
        initial: i64,
        min: Option<i64>,
        max: Option<i64>,
    },
    /// Strict counters: set to `new` if the value is `expected`.
    Cas { name: &'a [u8], expected: i64, new: i64 },
    /// Strict counters: add `delta` unless the result leaves `[min, max]`.
    AddBounded {
        name: &'a [u8],
        delta: i64,
        min: i64,
        max: i64,
        key: Option<u128>,
    },
    /// Admin: set `name` to `value`, recording the old value and the reason.
    Reset {
        name: &'a [u8],
        value: i64,
        reason: &'a [u8],
    },
    /// Per-shard statistics.
    Stats,
}

const FLAG_KEY: u8 = 1 << 0;
const FLAG_FRESH: u8 = 1 << 0;
const FLAG_TOKEN: u8 = 1 << 1;
const FLAG_MIN: u8 = 1 << 0;
const FLAG_MAX: u8 = 1 << 1;

impl<'a> Request<'a> {
    pub fn opcode(&self) -> Opcode {
        match self {
            Request::Hello { .. } => Opcode::Hello,
            Request::Incr { .. } => Opcode::Incr,
            Request::Get { .. } => Opcode::Get,
            Request::Create { .. } => Opcode::Create,
            Request::Cas { .. } => Opcode::Cas,
            Request::AddBounded { .. } => Opcode::AddBounded,
            Request::Reset { .. } => Opcode::Reset,
            Request::Stats => Opcode::Stats,
        }
    }

    /// The counter this op addresses, if any.
    pub fn name(&self) -> Option<&'a [u8]> {
        match *self {
            Request::Incr { name, .. }
            | Request::Get { name, .. }
            | Request::Create { name, .. }
            | Request::Cas { name, .. }
            | Request::AddBounded { name, .. }
            | Request::Reset { name, .. } => Some(name),
            Request::Hello { .. } | Request::Stats => None,
        }
    }

    /// Appends `opcode | len | payload` to `buf`.
    pub fn encode(&self, buf: &mut BytesMut) {
        buf.put_u8(self.opcode() as u8);
        let len_at = buf.len();
        buf.put_u16_le(0);
        let start = buf.len();
        match *self {
            Request::Hello { client } => put_str8_truncated(buf, client),
            Request::Incr { name, delta, key } => {
                buf.put_u8(if key.is_some() { FLAG_KEY } else { 0 });
                buf.put_i64_le(delta);
                put_name(buf, name);
                if let Some(key) = key {
                    buf.put_u128_le(key);
                }
            }
            Request::Get { name, fresh, token } => {
                let mut flags = 0;
                if fresh {
                    flags |= FLAG_FRESH;
                }
                if token.is_some() {
                    flags |= FLAG_TOKEN;
                }
                buf.put_u8(flags);
                put_name(buf, name);
                if let Some(token) = token {
                    buf.put_u16_le(token.shard);
                    buf.put_u64_le(token.lsn);
                }
            }
            Request::Create {
                name,
                kind,
                initial,
                min,
                max,
            } => {
                buf.put_u8(kind as u8);
                let mut flags = 0;
                if min.is_some() {
                    flags |= FLAG_MIN;
                }
                if max.is_some() {
                    flags |= FLAG_MAX;
                }
                buf.put_u8(flags);
                buf.put_i64_le(initial);
                buf.put_i64_le(min.unwrap_or(0));
                buf.put_i64_le(max.unwrap_or(0));
                put_name(buf, name);
            }
            Request::Cas { name, expected, new } => {
                buf.put_i64_le(expected);
                buf.put_i64_le(new);
                put_name(buf, name);
            }
            Request::AddBounded {
                name,
                delta,
                min,
                max,
                key,
            } => {
                buf.put_u8(if key.is_some() { FLAG_KEY } else { 0 });
                buf.put_i64_le(delta);
                buf.put_i64_le(min);
                buf.put_i64_le(max);
                put_name(buf, name);
                if let Some(key) = key {
                    buf.put_u128_le(key);
                }
            }
            Request::Reset { name, value, reason } => {
                buf.put_i64_le(value);
                put_name(buf, name);
                let reason = &reason[..reason.len().min(u16::MAX as usize)];
                buf.put_u16_le(reason.len() as u16);
                buf.put_slice(reason);
            }
            Request::Stats => {}
        }
        let len = buf.len() - start;
        assert!(
            len <= OP_PAYLOAD_BYTES_MAX,
            "op payload {len} exceeds the u16 length field"
        );
        buf[len_at..len_at + 2].copy_from_slice(&(len as u16).to_le_bytes());
    }

    /// Decodes one op's payload. Names are length-checked here so every server path sees only
    /// names within `NAME_BYTES_MAX`.
    pub fn decode(opcode: u8, payload: &'a [u8]) -> Result<Request<'a>, DecodeError> {
        let Some(op) = Opcode::from_u8(opcode) else {
            return Err(DecodeError::invalid(
                ErrorCode::UnknownOp,
                format!("unknown opcode 0x{opcode:02x}"),
            ));
        };
        let mut c = Cursor::new(payload, "op payload");
        let request = match op {
            Opcode::Hello => Request::Hello { client: c.str8()? },
            Opcode::Incr => {
                let flags = c.u8()?;
                let delta = c.i64()?;
                let name = name(&mut c)?;
                let key = if flags & FLAG_KEY != 0 { Some(c.u128()?) } else { None };
                Request::Incr { name, delta, key }
            }
            Opcode::Get => {
                let flags = c.u8()?;
                let name = name(&mut c)?;
                let token = if flags & FLAG_TOKEN != 0 {
                    Some(Token {
                        shard: c.u16()?,
                        lsn: c.u64()?,
                    })
                } else {
                    None
                };
                Request::Get {
                    name,
                    fresh: flags & FLAG_FRESH != 0,
                    token,
                }
            }
            Opcode::Create => {
                let kind_byte = c.u8()?;
                let kind = CounterKind::from_u8(kind_byte).ok_or_else(|| {
                    DecodeError::invalid(ErrorCode::InvalidArgument, format!("unknown counter kind {kind_byte}"))
                })?;
                let flags = c.u8()?;
                let initial = c.i64()?;
                let min = c.i64()?;
                let max = c.i64()?;
                let name = name(&mut c)?;
                Request::Create {
                    name,
                    kind,
                    initial,
                    min: (flags & FLAG_MIN != 0).then_some(min),
                    max: (flags & FLAG_MAX != 0).then_some(max),
                }
            }
            Opcode::Cas => {
                let expected = c.i64()?;
                let new = c.i64()?;
                Request::Cas {
                    name: name(&mut c)?,
                    expected,
                    new,
                }
            }
            Opcode::AddBounded => {
                let flags = c.u8()?;
                let delta = c.i64()?;
                let min = c.i64()?;
                let max = c.i64()?;
                let name = name(&mut c)?;
                let key = if flags & FLAG_KEY != 0 { Some(c.u128()?) } else { None };
                Request::AddBounded {
                    name,
                    delta,
                    min,
                    max,
                    key,
                }
            }
            Opcode::Reset => {
                let value = c.i64()?;
                let name = name(&mut c)?;
                let reason = c.str16()?;
                if reason.len() > REASON_BYTES_MAX {
                    return Err(DecodeError::invalid(
                        ErrorCode::ReasonTooLong,
                        format!(
                            "reason of {} bytes exceeds REASON_BYTES_MAX {REASON_BYTES_MAX}",
                            reason.len()
                        ),
                    ));
                }
                Request::Reset { name, value, reason }
            }
            Opcode::Stats => Request::Stats,
        };
        c.finish()?;
        Ok(request)
    }
}

/// Checks a name against the wire rules: non-empty, at most `NAME_BYTES_MAX` bytes.
pub fn check_name(name: &[u8]) -> Result<(), DecodeError> {
    if name.is_empty() {
        return Err(DecodeError::invalid(ErrorCode::NameEmpty, "name is empty"));
    }
    if name.len() > NAME_BYTES_MAX {
        return Err(DecodeError::invalid(
            ErrorCode::NameTooLong,
            format!("name of {} bytes exceeds NAME_BYTES_MAX {NAME_BYTES_MAX}", name.len()),
        ));
    }
    Ok(())
}

fn name<'a>(c: &mut Cursor<'a>) -> Result<&'a [u8], DecodeError> {
    let name = c.str16()?;
    check_name(name)?;
    Ok(name)
}

/// Names travel with a u16 length so that a too-long name reaches the server and gets
/// `NameTooLong`, instead of being unrepresentable.
fn put_name(buf: &mut BytesMut, name: &[u8]) {
    let name = &name[..name.len().min(u16::MAX as usize)];
    buf.put_u16_le(name.len() as u16);
    buf.put_slice(name);
}

fn put_str8_truncated(buf: &mut BytesMut, s: &[u8]) {
    let s = &s[..s.len().min(u8::MAX as usize)];
    buf.put_u8(s.len() as u8);
    buf.put_slice(s);
}

/// Iterates over the ops of a request frame body. Yields exactly `op_count` items: an op whose
/// header or payload is broken yields its error; once the op headers themselves run past the body,
/// every remaining op yields `BadFrame` (the server still answers each one).
pub struct RequestOps<'a> {
    body: &'a [u8],
    pos: usize,
    left: u16,
    broken: bool,
}

/// One item of `RequestOps`: the raw opcode (echoed in the reply) and the decoded op or its error.
pub type RequestItem<'a> = (u8, Result<Request<'a>, DecodeError>);

impl<'a> RequestOps<'a> {
    pub fn new(body: &'a [u8], op_count: u16) -> RequestOps<'a> {
        RequestOps {
            body,
            pos: 0,
            left: op_count,
            broken: false,
        }
    }

    /// Bytes of the body not consumed by the ops. Non-zero after iteration means trailing garbage.
    pub fn trailing_bytes(&self) -> usize {
        if self.broken {
            0
        } else {
            self.body.len() - self.pos
        }
    }
}

impl<'a> Iterator for RequestOps<'a> {
    type Item = RequestItem<'a>;

    fn next(&mut self) -> Option<RequestItem<'a>> {
        if self.left == 0 {
            return None;
        }
        self.left -= 1;
        if self.broken {
            return Some((
                0,
                Err(DecodeError::invalid(
                    ErrorCode::BadFrame,
                    "op lies past the end of the frame",
                )),
            ));
        }
        let rest = &self.body[self.pos..];
        if rest.len() < REQUEST_OP_HEADER_BYTES {
            self.broken = true;
            return Some((0, Err(DecodeError::invalid(ErrorCode::BadFrame, "op header truncated"))));
        }
        let opcode = rest[0];
        let len = u16::from_le_bytes([rest[1], rest[2]]) as usize;
        if rest.len() < REQUEST_OP_HEADER_BYTES + len {
            self.broken = true;
            return Some((
                opcode,
                Err(DecodeError::invalid(
                    ErrorCode::BadFrame,
                    "op payload runs past the end of the frame",
                )),
            ));
        }
        let payload = &rest[REQUEST_OP_HEADER_BYTES..REQUEST_OP_HEADER_BYTES + len];
        self.pos += REQUEST_OP_HEADER_BYTES + len;
        Some((opcode, Request::decode(opcode, payload)))
    }
}
