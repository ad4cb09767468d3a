//! Request ops: `opcode u8 | payload_len u16 | payload`. Each op carries its own length, so an op
//! the server cannot parse (unknown opcode, malformed payload) gets its own error reply and the
//! rest of the frame is still served.

use bytes::{BufMut, BytesMut};

use crate::cursor::Cursor;
use crate::error::{DecodeError, ErrorCode};
use crate::history::{SeriesStep, WindowUnit};
use crate::limits::{
    CURSOR_BYTES_MAX, NAME_BYTES_MAX, OP_PAYLOAD_BYTES_MAX, REASON_BYTES_MAX, REQUEST_OP_HEADER_BYTES,
    SERIES_POINTS_MAX,
};

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
    Window = 0x09,
    Series = 0x0A,
    Audit = 0x0B,
    Events = 0x0C,
    /// Admin: make this replica the primary (replication; docs/replication.md).
    Promote = 0x10,
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
            0x09 => Opcode::Window,
            0x0A => Opcode::Series,
            0x0B => Opcode::Audit,
            0x0C => Opcode::Events,
            0x10 => Opcode::Promote,
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
    /// The sum of `name`'s increments over the last `last` units, the current one included.
    Window {
        name: &'a [u8],
        last: u32,
        unit: WindowUnit,
    },
    /// `name`'s increments summed per `step` from `from_ms` (rounded down to the step) to `to_ms`
    /// (rounded up), ms since the Unix epoch.
    Series {
        name: &'a [u8],
        from_ms: u64,
        to_ms: u64,
        step: SeriesStep,
    },
    /// RESET records in [from_ms, to_ms) of `name`, or of every counter when `name` is empty; at
    /// most `limit` per reply, continued with the reply's `cursor` (empty for the first page).
    Audit {
        name: &'a [u8],
        from_ms: u64,
        to_ms: u64,
        limit: u16,
        cursor: &'a [u8],
    },
    /// The logged increments of `name` in [from_ms, to_ms), at most `limit` per page, continued
    /// with the reply's `cursor` (empty for the first page).
    Events {
        name: &'a [u8],
        from_ms: u64,
        to_ms: u64,
        limit: u16,
        cursor: &'a [u8],
    },
    /// Admin: promote this replica to primary under a higher epoch, after fencing its peers and
    /// collecting what they have that it lacks. `force`: go on without peers that do not answer
    /// within `wait_ms` (writes acknowledged only on them are lost).
    Promote { force: bool, wait_ms: u32 },
}

const FLAG_KEY: u8 = 1 << 0;
const FLAG_FRESH: u8 = 1 << 0;
const FLAG_TOKEN: u8 = 1 << 1;
const FLAG_MIN: u8 = 1 << 0;
const FLAG_MAX: u8 = 1 << 1;
const FLAG_FORCE: u8 = 1 << 0;

/// The encoder cuts names and reasons longer than this. Anything this long is far past
/// `NAME_BYTES_MAX` and `REASON_BYTES_MAX`, so the server still refuses it with `NameTooLong` or
/// `ReasonTooLong`; cutting keeps the largest op (RESET with both cut) inside the u16 payload
/// length, so `encode` never panics.
const ENCODE_STR_BYTES_MAX: usize = 16 << 10;

const _: () = assert!(ENCODE_STR_BYTES_MAX > NAME_BYTES_MAX);
const _: () = assert!(ENCODE_STR_BYTES_MAX > REASON_BYTES_MAX);
const _: () = assert!(8 + 2 + ENCODE_STR_BYTES_MAX + 2 + ENCODE_STR_BYTES_MAX <= OP_PAYLOAD_BYTES_MAX);

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
            Request::Window { .. } => Opcode::Window,
            Request::Series { .. } => Opcode::Series,
            Request::Audit { .. } => Opcode::Audit,
            Request::Events { .. } => Opcode::Events,
            Request::Promote { .. } => Opcode::Promote,
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
            | Request::Reset { name, .. }
            | Request::Window { name, .. }
            | Request::Series { name, .. }
            | Request::Events { name, .. } => Some(name),
            Request::Audit { name, .. } if !name.is_empty() => Some(name),
            Request::Hello { .. } | Request::Stats | Request::Audit { .. } | Request::Promote { .. } => None,
        }
    }

    /// Whether this is a history op (WINDOW, SERIES, AUDIT, EVENTS): answered by the node from
    /// the shards' time windows, audit rings and logs, never applied by an engine.
    pub fn is_history(&self) -> bool {
        matches!(
            self,
            Request::Window { .. } | Request::Series { .. } | Request::Audit { .. } | Request::Events { .. }
        )
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
                let reason = &reason[..reason.len().min(ENCODE_STR_BYTES_MAX)];
                buf.put_u16_le(reason.len() as u16);
                buf.put_slice(reason);
            }
            Request::Stats => {}
            Request::Promote { force, wait_ms } => {
                buf.put_u8(if force { FLAG_FORCE } else { 0 });
                buf.put_u32_le(wait_ms);
            }
            Request::Window { name, last, unit } => {
                buf.put_u8(unit as u8);
                buf.put_u32_le(last);
                put_name(buf, name);
            }
            Request::Series {
                name,
                from_ms,
                to_ms,
                step,
            } => {
                buf.put_u8(step as u8);
                buf.put_u64_le(from_ms);
                buf.put_u64_le(to_ms);
                put_name(buf, name);
            }
            Request::Audit {
                name,
                from_ms,
                to_ms,
                limit,
                cursor,
            }
            | Request::Events {
                name,
                from_ms,
                to_ms,
                limit,
                cursor,
            } => {
                buf.put_u64_le(from_ms);
                buf.put_u64_le(to_ms);
                buf.put_u16_le(limit);
                put_name(buf, name);
                put_name(buf, cursor);
            }
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
            Opcode::Promote => {
                let flags = c.u8()?;
                Request::Promote {
                    force: flags & FLAG_FORCE != 0,
                    wait_ms: c.u32()?,
                }
            }
            Opcode::Window => {
                let unit_byte = c.u8()?;
                let unit = WindowUnit::from_u8(unit_byte).ok_or_else(|| {
                    DecodeError::invalid(ErrorCode::InvalidArgument, format!("unknown window unit {unit_byte}"))
                })?;
                let last = c.u32()?;
                if last == 0 {
                    return Err(DecodeError::invalid(
                        ErrorCode::InvalidArgument,
                        "an empty window: `last` must be at least 1",
                    ));
                }
                Request::Window {
                    name: name(&mut c)?,
                    last,
                    unit,
                }
            }
            Opcode::Series => {
                let step_byte = c.u8()?;
                let step = SeriesStep::from_u8(step_byte).ok_or_else(|| {
                    DecodeError::invalid(ErrorCode::InvalidArgument, format!("unknown series step {step_byte}"))
                })?;
                let from_ms = c.u64()?;
                let to_ms = c.u64()?;
                // Each field is checked as soon as it is read: the range before the name.
                check_range(from_ms, to_ms)?;
                let points = step.points(from_ms, to_ms);
                if points > SERIES_POINTS_MAX {
                    return Err(DecodeError::invalid(
                        ErrorCode::TooManyPoints,
                        format!("{points} points; at most SERIES_POINTS_MAX {SERIES_POINTS_MAX} per SERIES"),
                    ));
                }
                let name = name(&mut c)?;
                Request::Series {
                    name,
                    from_ms,
                    to_ms,
                    step,
                }
            }
            Opcode::Audit | Opcode::Events => {
                // Each field is checked as soon as it is read: range, limit, name, cursor.
                let from_ms = c.u64()?;
                let to_ms = c.u64()?;
                check_range(from_ms, to_ms)?;
                let limit = c.u16()?;
                if limit == 0 {
                    return Err(DecodeError::invalid(
                        ErrorCode::InvalidArgument,
                        "limit must be at least 1",
                    ));
                }
                let name = c.str16()?;
                if op == Opcode::Events || !name.is_empty() {
                    check_name(name)?;
                }
                let cursor = c.str16()?;
                if cursor.len() > CURSOR_BYTES_MAX {
                    return Err(DecodeError::invalid(
                        ErrorCode::InvalidArgument,
                        format!(
                            "cursor of {} bytes exceeds CURSOR_BYTES_MAX {CURSOR_BYTES_MAX}",
                            cursor.len()
                        ),
                    ));
                }
                if op == Opcode::Audit {
                    Request::Audit {
                        name,
                        from_ms,
                        to_ms,
                        limit,
                        cursor,
                    }
                } else {
                    Request::Events {
                        name,
                        from_ms,
                        to_ms,
                        limit,
                        cursor,
                    }
                }
            }
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

fn check_range(from_ms: u64, to_ms: u64) -> Result<(), DecodeError> {
    if from_ms > to_ms {
        return Err(DecodeError::invalid(
            ErrorCode::RangeReversed,
            format!("from {from_ms} is after to {to_ms}"),
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
/// `NameTooLong`, instead of being unrepresentable. Beyond `ENCODE_STR_BYTES_MAX` the name is cut:
/// it is refused either way, and an uncut 64 KiB name would overflow the u16 payload length.
fn put_name(buf: &mut BytesMut, name: &[u8]) {
    let name = &name[..name.len().min(ENCODE_STR_BYTES_MAX)];
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

    /// Whether the op headers of a request frame body account for exactly `body`: `op_count` ops,
    /// none running past the end, no bytes after the last. Walks the 3-byte op headers only (no
    /// payload is decoded), so a server can refuse an inconsistent frame whole before applying any
    /// op in it.
    pub fn lengths_add_up(body: &[u8], op_count: u16) -> bool {
        let mut pos = 0usize;
        for _ in 0..op_count {
            if body.len() - pos < REQUEST_OP_HEADER_BYTES {
                return false;
            }
            let len = u16::from_le_bytes([body[pos + 1], body[pos + 2]]) as usize;
            pos += REQUEST_OP_HEADER_BYTES + len;
            if pos > body.len() {
                return false;
            }
        }
        pos == body.len()
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

#[cfg(test)]
mod tests {

    fn body_of(ops: &[Request<'_>]) -> BytesMut {
        let mut body = BytesMut::new();
        for op in ops {
            op.encode(&mut body);
        }
        body
    }

    #[test]
    fn op_lengths_must_add_up_to_the_body() {
        let body = body_of(&[
            Request::Incr {
                name: b"a",
                delta: 1,
                key: None,
            },
            Request::Stats,
        ]);
        assert!(RequestOps::lengths_add_up(&body, 2));
        assert!(!RequestOps::lengths_add_up(&body, 1), "trailing op");
        assert!(!RequestOps::lengths_add_up(&body, 3), "missing op");
        assert!(
            !RequestOps::lengths_add_up(&body[..body.len() - 1], 2),
            "truncated payload"
        );
        assert!(RequestOps::lengths_add_up(&[], 0));
    }

    use super::*;

    fn encoded(request: &Request<'_>) -> Vec<u8> {
        let mut buf = BytesMut::new();
        request.encode(&mut buf);
        buf.to_vec()
    }

    /// `opcode | len u16 | payload`, built by hand.
    fn op(opcode: u8, payload: &[u8]) -> Vec<u8> {
        let mut out = vec![opcode];
        out.extend_from_slice(&(payload.len() as u16).to_le_bytes());
        out.extend_from_slice(payload);
        out
    }

    fn le(parts: &[&[u8]]) -> Vec<u8> {
        parts.concat()
    }

    fn code_of(result: Result<Request<'_>, DecodeError>) -> ErrorCode {
        match result {
            Err(DecodeError::Invalid { code, .. }) => code,
            other => panic!("expected an Invalid error, got {other:?}"),
        }
    }

    fn incr(name: &[u8]) -> Request<'_> {
        Request::Incr {
            name,
            delta: 1,
            key: None,
        }
    }

    #[test]
    fn opcode_numbers_are_stable() {
        let expected = [
            (Opcode::Hello, 0x01),
            (Opcode::Incr, 0x02),
            (Opcode::Get, 0x03),
            (Opcode::Create, 0x04),
            (Opcode::Cas, 0x05),
            (Opcode::AddBounded, 0x06),
            (Opcode::Reset, 0x07),
            (Opcode::Stats, 0x08),
            (Opcode::Window, 0x09),
            (Opcode::Series, 0x0A),
            (Opcode::Audit, 0x0B),
            (Opcode::Events, 0x0C),
            (Opcode::Promote, 0x10),
        ];
        for (op, number) in expected {
            assert_eq!(op as u8, number, "{op:?}");
            assert_eq!(Opcode::from_u8(number), Some(op));
        }
        for number in (0u8..=255).filter(|n| !(1..=0x0C).contains(n) && *n != 0x10) {
            assert_eq!(Opcode::from_u8(number), None, "0x{number:02x} is unassigned");
        }
        assert_eq!(CounterKind::Analytic as u8, 0);
        assert_eq!(CounterKind::Strict as u8, 1);
        assert_eq!(CounterKind::from_u8(0), Some(CounterKind::Analytic));
        assert_eq!(CounterKind::from_u8(1), Some(CounterKind::Strict));
        assert_eq!(CounterKind::from_u8(2), None);
    }

    /// The byte layout of every request op, written out by hand; docs/protocol.md shows the same.
    #[test]
    fn request_layouts() {
        let key = 0x0f0e_0d0c_0b0a_0908_0706_0504_0302_0100u128;
        let cases: Vec<(Request<'_>, Vec<u8>)> = vec![
            (Request::Hello { client: b"cli" }, op(0x01, b"\x03cli")),
            (
                Request::Incr {
                    name: b"ab",
                    delta: -2,
                    key: None,
                },
                op(0x02, &le(&[&[0], &(-2i64).to_le_bytes(), &[2, 0], b"ab"])),
            ),
            (
                Request::Incr {
                    name: b"ab",
                    delta: 5,
                    key: Some(key),
                },
                op(
                    0x02,
                    &le(&[&[1], &5i64.to_le_bytes(), &[2, 0], b"ab", &key.to_le_bytes()]),
                ),
            ),
            (
                Request::Get {
                    name: b"n",
                    fresh: true,
                    token: Some(Token { shard: 3, lsn: 9 }),
                },
                op(0x03, &le(&[&[0b11], &[1, 0], b"n", &[3, 0], &9u64.to_le_bytes()])),
            ),
            (
                Request::Get {
                    name: b"n",
                    fresh: false,
                    token: None,
                },
                op(0x03, &le(&[&[0], &[1, 0], b"n"])),
            ),
            (
                Request::Create {
                    name: b"n",
                    kind: CounterKind::Strict,
                    initial: 4,
                    min: None,
                    max: Some(10),
                },
                op(
                    0x04,
                    &le(&[
                        &[1, 0b10],
                        &4i64.to_le_bytes(),
                        &0i64.to_le_bytes(),
                        &10i64.to_le_bytes(),
                        &[1, 0],
                        b"n",
                    ]),
                ),
            ),
            (
                Request::Cas {
                    name: b"n",
                    expected: 1,
                    new: 2,
                },
                op(0x05, &le(&[&1i64.to_le_bytes(), &2i64.to_le_bytes(), &[1, 0], b"n"])),
            ),
            (
                Request::AddBounded {
                    name: b"n",
                    delta: -1,
                    min: 0,
                    max: 100,
                    key: Some(key),
                },
                op(
                    0x06,
                    &le(&[
                        &[1],
                        &(-1i64).to_le_bytes(),
                        &0i64.to_le_bytes(),
                        &100i64.to_le_bytes(),
                        &[1, 0],
                        b"n",
                        &key.to_le_bytes(),
                    ]),
                ),
            ),
            (
                Request::Reset {
                    name: b"n",
                    value: 0,
                    reason: b"why",
                },
                op(0x07, &le(&[&0i64.to_le_bytes(), &[1, 0], b"n", &[3, 0], b"why"])),
            ),
            (Request::Stats, op(0x08, b"")),
            (
                Request::Promote {
                    force: true,
                    wait_ms: 5000,
                },
                op(0x10, &le(&[&[1], &5000u32.to_le_bytes()])),
            ),
        ];
        for (request, bytes) in cases {
            assert_eq!(encoded(&request), bytes, "{request:?}");
            assert_eq!(Request::decode(bytes[0], &bytes[3..]).unwrap(), request);
        }
    }

    #[test]
    fn name_length_limits() {
        assert_eq!(
            code_of(Request::decode(0x02, &encoded(&incr(b""))[3..])),
            ErrorCode::NameEmpty
        );
        let longest = [b'x'; NAME_BYTES_MAX];
        assert_eq!(
            Request::decode(0x02, &encoded(&incr(&longest))[3..]).unwrap(),
            incr(&longest)
        );
        let too_long = [b'x'; NAME_BYTES_MAX + 1];
        assert_eq!(
            code_of(Request::decode(0x02, &encoded(&incr(&too_long))[3..])),
            ErrorCode::NameTooLong
        );
        assert_eq!(check_name(b"a"), Ok(()));
        assert!(check_name(b"").is_err());
        assert!(check_name(&too_long).is_err());
    }

    #[test]
    fn every_named_op_checks_its_name() {
        let empty: [Request<'_>; 6] = [
            incr(b""),
            Request::Get {
                name: b"",
                fresh: false,
                token: None,
            },
            Request::Create {
                name: b"",
                kind: CounterKind::Analytic,
                initial: 0,
                min: None,
                max: None,
            },
            Request::Cas {
                name: b"",
                expected: 0,
                new: 0,
            },
            Request::AddBounded {
                name: b"",
                delta: 0,
                min: 0,
                max: 0,
                key: None,
            },
            Request::Reset {
                name: b"",
                value: 0,
                reason: b"",
            },
        ];
        for request in empty {
            let bytes = encoded(&request);
            assert_eq!(
                code_of(Request::decode(bytes[0], &bytes[3..])),
                ErrorCode::NameEmpty,
                "{request:?}"
            );
        }
    }

    #[test]
    fn reason_length_limit() {
        let reason = [b'r'; REASON_BYTES_MAX];
        let ok = Request::Reset {
            name: b"n",
            value: 1,
            reason: &reason,
        };
        assert_eq!(Request::decode(0x07, &encoded(&ok)[3..]).unwrap(), ok);
        let reason = [b'r'; REASON_BYTES_MAX + 1];
        let too_long = Request::Reset {
            name: b"n",
            value: 1,
            reason: &reason,
        };
        assert_eq!(
            code_of(Request::decode(0x07, &encoded(&too_long)[3..])),
            ErrorCode::ReasonTooLong
        );
    }

    #[test]
    fn encoding_huge_strings_never_panics_and_is_still_refused() {
        let huge = vec![b'x'; 70_000];
        let bytes = encoded(&incr(&huge));
        assert_eq!(bytes.len(), 3 + 1 + 8 + 2 + ENCODE_STR_BYTES_MAX);
        assert_eq!(code_of(Request::decode(bytes[0], &bytes[3..])), ErrorCode::NameTooLong);

        let reset = Request::Reset {
            name: b"n",
            value: 0,
            reason: &huge,
        };
        let bytes = encoded(&reset);
        assert_eq!(
            code_of(Request::decode(bytes[0], &bytes[3..])),
            ErrorCode::ReasonTooLong
        );
        let reset = Request::Reset {
            name: &huge,
            value: 0,
            reason: &huge,
        };
        let bytes = encoded(&reset);
        assert_eq!(code_of(Request::decode(bytes[0], &bytes[3..])), ErrorCode::NameTooLong);

        let hello = Request::Hello { client: &huge };
        let bytes = encoded(&hello);
        assert_eq!(
            Request::decode(bytes[0], &bytes[3..]).unwrap(),
            Request::Hello { client: &huge[..255] },
            "HELLO's client name is cut to 255 bytes"
        );
    }

    #[test]
    fn unknown_kind_is_invalid_argument() {
        let mut bytes = encoded(&Request::Create {
            name: b"n",
            kind: CounterKind::Analytic,
            initial: 0,
            min: None,
            max: None,
        });
        bytes[3] = 7;
        assert_eq!(
            code_of(Request::decode(bytes[0], &bytes[3..])),
            ErrorCode::InvalidArgument
        );
    }

    #[test]
    fn unknown_opcodes() {
        for opcode in [0x00, 0x0D, 0x7f, 0xff] {
            assert_eq!(code_of(Request::decode(opcode, b"")), ErrorCode::UnknownOp);
        }
    }

    #[test]
    fn payload_must_be_consumed_exactly() {
        let mut bytes = encoded(&incr(b"n"));
        bytes.push(0);
        assert_eq!(code_of(Request::decode(bytes[0], &bytes[3..])), ErrorCode::BadFrame);
        assert_eq!(
            code_of(Request::decode(0x08, &[0])),
            ErrorCode::BadFrame,
            "STATS has no payload"
        );
        // A key flag without the key is a truncated payload.
        let mut bytes = encoded(&incr(b"n"));
        bytes[3] = FLAG_KEY;
        assert_eq!(code_of(Request::decode(bytes[0], &bytes[3..])), ErrorCode::BadFrame);
        // Every strict prefix of a valid payload is malformed.
        let bytes = encoded(&Request::AddBounded {
            name: b"abc",
            delta: 1,
            min: 0,
            max: 9,
            key: Some(5),
        });
        for end in 3..bytes.len() {
            assert!(
                Request::decode(bytes[0], &bytes[3..end]).is_err(),
                "prefix of {end} bytes"
            );
        }
    }

    #[test]
    fn undefined_flag_bits_are_ignored() {
        let mut bytes = encoded(&incr(b"n"));
        bytes[3] = 0b1111_1110;
        assert_eq!(Request::decode(bytes[0], &bytes[3..]).unwrap(), incr(b"n"));
    }

    fn body(ops: &[Vec<u8>]) -> Vec<u8> {
        ops.concat()
    }

    #[test]
    fn unknown_op_does_not_stop_the_frame() {
        let body = body(&[encoded(&incr(b"a")), op(0x42, b"whatever"), encoded(&incr(b"b"))]);
        let mut ops = RequestOps::new(&body, 3);
        assert_eq!(ops.next().unwrap(), (0x02, Ok(incr(b"a"))));
        let (opcode, result) = ops.next().unwrap();
        assert_eq!(opcode, 0x42);
        assert_eq!(code_of(result), ErrorCode::UnknownOp);
        assert_eq!(ops.next().unwrap(), (0x02, Ok(incr(b"b"))));
        assert!(ops.next().is_none());
        assert_eq!(ops.trailing_bytes(), 0);
    }

    #[test]
    fn bad_payload_does_not_stop_the_frame() {
        let body = body(&[encoded(&incr(b"")), encoded(&incr(b"b"))]);
        let mut ops = RequestOps::new(&body, 2);
        assert_eq!(code_of(ops.next().unwrap().1), ErrorCode::NameEmpty);
        assert_eq!(ops.next().unwrap(), (0x02, Ok(incr(b"b"))));
    }

    #[test]
    fn truncated_op_breaks_the_rest_of_the_frame() {
        let first = encoded(&incr(b"a"));
        let second = encoded(&incr(b"b"));
        // Cut inside the second op's payload.
        let full = body(&[first.clone(), second.clone()]);
        let body = &full[..full.len() - 1];
        let items: Vec<_> = RequestOps::new(body, 4).collect();
        assert_eq!(items.len(), 4, "exactly op_count items");
        assert_eq!(items[0], (0x02, Ok(incr(b"a"))));
        assert_eq!(items[1].0, 0x02, "the opcode of a truncated payload is still echoed");
        for (i, (_, result)) in items.into_iter().enumerate().skip(1) {
            assert_eq!(code_of(result), ErrorCode::BadFrame, "op {i}");
        }
        // Cut inside the second op's header.
        let body = &full[..first.len() + 2];
        let mut ops = RequestOps::new(body, 3);
        assert!(ops.next().unwrap().1.is_ok());
        let (opcode, result) = ops.next().unwrap();
        assert_eq!(opcode, 0, "no opcode is echoed for a truncated header");
        assert_eq!(code_of(result), ErrorCode::BadFrame);
        assert_eq!(code_of(ops.next().unwrap().1), ErrorCode::BadFrame);
        assert!(ops.next().is_none());
        assert_eq!(ops.trailing_bytes(), 0);
    }

    #[test]
    fn trailing_bytes_are_reported() {
        let mut body = body(&[encoded(&incr(b"a")), encoded(&incr(b"b"))]);
        let mut ops = RequestOps::new(&body, 1);
        assert!(ops.next().unwrap().1.is_ok());
        assert!(ops.next().is_none());
        assert_eq!(ops.trailing_bytes(), encoded(&incr(b"b")).len());

        body.push(0xee);
        let mut ops = RequestOps::new(&body, 2);
        assert_eq!(ops.by_ref().count(), 2);
        assert_eq!(ops.trailing_bytes(), 1);

        let mut ops = RequestOps::new(b"\x01\x02", 0);
        assert!(ops.next().is_none());
        assert_eq!(ops.trailing_bytes(), 2);
    }
}
