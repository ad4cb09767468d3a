//! The history ops' vocabulary: WINDOW units, SERIES steps, AUDIT records and EVENTS events, with
//! their byte encodings (used by `request` and `reply`). docs/protocol.md, "History ops", is the
//! specification.

use bytes::{BufMut, BytesMut};

use crate::cursor::Cursor;
use crate::error::{DecodeError, ErrorCode};

/// The unit of a WINDOW: "the last N seconds" or "the last N minutes", the current (partial)
/// second or minute included.
#[repr(u8)]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum WindowUnit {
    Second = 0,
    Minute = 1,
}

impl WindowUnit {
    pub fn from_u8(unit: u8) -> Option<WindowUnit> {
        match unit {
            0 => Some(WindowUnit::Second),
            1 => Some(WindowUnit::Minute),
            _ => None,
        }
    }

    pub fn ms(self) -> u64 {
        match self {
            WindowUnit::Second => 1_000,
            WindowUnit::Minute => 60_000,
        }
    }
}

/// The step of a SERIES.
#[repr(u8)]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum SeriesStep {
    Second = 0,
    Minute = 1,
    Hour = 2,
    Day = 3,
}

impl SeriesStep {
    pub fn from_u8(step: u8) -> Option<SeriesStep> {
        match step {
            0 => Some(SeriesStep::Second),
            1 => Some(SeriesStep::Minute),
            2 => Some(SeriesStep::Hour),
            3 => Some(SeriesStep::Day),
            _ => None,
        }
    }

    pub fn ms(self) -> u64 {
        match self {
            SeriesStep::Second => 1_000,
            SeriesStep::Minute => 60_000,
            SeriesStep::Hour => 3_600_000,
            SeriesStep::Day => 86_400_000,
        }
    }

    /// The number of aligned points a SERIES from `from_ms` to `to_ms` asks for: `from_ms` is
    /// rounded down and `to_ms` up to the step. `from_ms <= to_ms`.
    pub fn points(self, from_ms: u64, to_ms: u64) -> u64 {
        let step = self.ms();
        to_ms.div_ceil(step) - from_ms / step
    }
}

/// One RESET as AUDIT reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuditRecord {
    /// Server time when the RESET was applied, ms since the Unix epoch.
    pub time_ms: u64,
    /// The shard whose log holds it, and its lsn there.
    pub shard: u16,
    pub lsn: u64,
    pub name: Vec<u8>,
    pub old: i64,
    pub new: i64,
    pub reason: Vec<u8>,
    /// Who: the client name the connection gave in HELLO (empty if none).
    pub client: Vec<u8>,
}

impl AuditRecord {
    pub(crate) fn encode(&self, buf: &mut BytesMut) {
        buf.put_u64_le(self.time_ms);
        buf.put_u16_le(self.shard);
        buf.put_u64_le(self.lsn);
        put_str8(buf, &self.name);
        buf.put_i64_le(self.old);
        buf.put_i64_le(self.new);
        let reason = &self.reason[..self.reason.len().min(crate::limits::REASON_BYTES_MAX)];
        buf.put_u16_le(reason.len() as u16);
        buf.put_slice(reason);
        put_str8(buf, &self.client);
    }

    pub(crate) fn decode(c: &mut Cursor<'_>) -> Result<AuditRecord, DecodeError> {
        Ok(AuditRecord {
            time_ms: c.u64()?,
            shard: c.u16()?,
            lsn: c.u64()?,
            name: c.str8()?.to_vec(),
            old: c.i64()?,
            new: c.i64()?,
            reason: c.str16()?.to_vec(),
            client: c.str8()?.to_vec(),
        })
    }
}

/// What kind of logged increment an event is.
#[repr(u8)]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum EventKind {
    /// An INCR applied by the counter's owner.
    Incr = 0,
    /// A bounded add of a strict counter.
    AddBounded = 1,
    /// An unkeyed INCR of a split counter, taken into a non-owner shard's part of it.
    SplitPart = 2,
}

impl EventKind {
    pub fn from_u8(kind: u8) -> Option<EventKind> {
        match kind {
            0 => Some(EventKind::Incr),
            1 => Some(EventKind::AddBounded),
            2 => Some(EventKind::SplitPart),
            _ => None,
        }
    }
}

/// One logged increment, as EVENTS reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Event {
    /// Server time at apply, ms since the Unix epoch (the time its log batch carries: every
    /// record of a batch was applied within the same second).
    pub time_ms: u64,
    pub shard: u16,
    pub lsn: u64,
    pub delta: i64,
    pub kind: EventKind,
    /// The idempotency key the client sent with it, if any.
    pub key: Option<u128>,
}

const EVENT_HAS_KEY: u8 = 1 << 7;

impl Event {
    pub(crate) fn encode(&self, buf: &mut BytesMut) {
        buf.put_u64_le(self.time_ms);
        buf.put_u16_le(self.shard);
        buf.put_u64_le(self.lsn);
        buf.put_i64_le(self.delta);
        let flag = if self.key.is_some() { EVENT_HAS_KEY } else { 0 };
        buf.put_u8(self.kind as u8 | flag);
        if let Some(key) = self.key {
            buf.put_u128_le(key);
        }
    }

    pub(crate) fn decode(c: &mut Cursor<'_>) -> Result<Event, DecodeError> {
        let time_ms = c.u64()?;
        let shard = c.u16()?;
        let lsn = c.u64()?;
        let delta = c.i64()?;
        let byte = c.u8()?;
        let kind = EventKind::from_u8(byte & !EVENT_HAS_KEY)
            .ok_or_else(|| DecodeError::invalid(ErrorCode::BadFrame, format!("unknown event kind {byte}")))?;
        let key = if byte & EVENT_HAS_KEY != 0 {
            Some(c.u128()?)
        } else {
            None
        };
        Ok(Event {
            time_ms,
            shard,
            lsn,
            delta,
            kind,
            key,
        })
    }
}

fn put_str8(buf: &mut BytesMut, s: &[u8]) {
    let s = &s[..s.len().min(u8::MAX as usize)];
    buf.put_u8(s.len() as u8);
    buf.put_slice(s);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::limits::{
        AUDIT_RECORDS_PER_REPLY_MAX, AUDIT_RECORD_BYTES_MAX, CURSOR_BYTES_MAX, EVENTS_PER_PAGE_MAX, EVENT_BYTES_MAX,
        NAME_BYTES_MAX, REASON_BYTES_MAX, SERIES_POINTS_MAX,
    };
    use crate::reply::{decode_reply_op, Reply};
    use crate::request::Request;

    fn encoded(request: &Request<'_>) -> Vec<u8> {
        let mut buf = BytesMut::new();
        request.encode(&mut buf);
        buf.to_vec()
    }

    fn le(parts: &[&[u8]]) -> Vec<u8> {
        parts.concat()
    }

    fn code_of(opcode: u8, payload: &[u8]) -> ErrorCode {
        match Request::decode(opcode, payload) {
            Err(DecodeError::Invalid { code, .. }) => code,
            other => panic!("expected an Invalid error, got {other:?}"),
        }
    }

    /// The byte layouts of the history requests, written out by hand; docs/protocol.md shows the same.
    #[test]
    fn request_layouts() {
        let cases: Vec<(Request<'_>, Vec<u8>)> = vec![
            (
                Request::Window {
                    name: b"ab",
                    last: 60,
                    unit: WindowUnit::Minute,
                },
                le(&[&[0x09, 9, 0, 1], &60u32.to_le_bytes(), &[2, 0], b"ab"]),
            ),
            (
                Request::Series {
                    name: b"ab",
                    from_ms: 5,
                    to_ms: 7,
                    step: SeriesStep::Hour,
                },
                le(&[
                    &[0x0A, 21, 0, 2],
                    &5u64.to_le_bytes(),
                    &7u64.to_le_bytes(),
                    &[2, 0],
                    b"ab",
                ]),
            ),
            (
                Request::Audit {
                    name: b"",
                    from_ms: 1,
                    to_ms: 2,
                    limit: 3,
                    cursor: b"",
                },
                le(&[
                    &[0x0B, 22, 0],
                    &1u64.to_le_bytes(),
                    &2u64.to_le_bytes(),
                    &[3, 0, 0, 0, 0, 0],
                ]),
            ),
            (
                Request::Events {
                    name: b"n",
                    from_ms: 1,
                    to_ms: 2,
                    limit: 3,
                    cursor: b"cc",
                },
                le(&[
                    &[0x0C, 25, 0],
                    &1u64.to_le_bytes(),
                    &2u64.to_le_bytes(),
                    &[3, 0, 1, 0],
                    b"n",
                    &[2, 0],
                    b"cc",
                ]),
            ),
        ];
        for (request, bytes) in cases {
            assert_eq!(encoded(&request), bytes, "{request:?}");
            assert_eq!(Request::decode(bytes[0], &bytes[3..]), Ok(request.clone()));
            assert!(request.is_history());
        }
    }

    #[test]
    fn bad_history_requests_get_their_codes() {
        let window = |unit: u8, last: u32| le(&[&[unit], &last.to_le_bytes(), &[1, 0], b"a"]);
        assert_eq!(code_of(0x09, &window(2, 5)), ErrorCode::InvalidArgument);
        assert_eq!(code_of(0x09, &window(0, 0)), ErrorCode::InvalidArgument);
        let series =
            |step: u8, from: u64, to: u64| le(&[&[step], &from.to_le_bytes(), &to.to_le_bytes(), &[1, 0], b"a"]);
        assert_eq!(code_of(0x0A, &series(4, 0, 1)), ErrorCode::InvalidArgument);
        assert_eq!(code_of(0x0A, &series(0, 2_000, 1_000)), ErrorCode::RangeReversed);
        let max = SERIES_POINTS_MAX * 1_000;
        assert!(Request::decode(0x0A, &series(0, 0, max)).is_ok());
        assert_eq!(code_of(0x0A, &series(0, 0, max + 1)), ErrorCode::TooManyPoints);
        let page = |from: u64, to: u64, limit: u16, name: &[u8], cursor: &[u8]| {
            let mut out = le(&[&from.to_le_bytes(), &to.to_le_bytes(), &limit.to_le_bytes()]);
            out.extend_from_slice(&(name.len() as u16).to_le_bytes());
            out.extend_from_slice(name);
            out.extend_from_slice(&(cursor.len() as u16).to_le_bytes());
            out.extend_from_slice(cursor);
            out
        };
        assert_eq!(code_of(0x0B, &page(3, 2, 1, b"", b"")), ErrorCode::RangeReversed);
        assert_eq!(code_of(0x0B, &page(0, 2, 0, b"", b"")), ErrorCode::InvalidArgument);
        assert_eq!(code_of(0x0C, &page(0, 2, 1, b"", b"")), ErrorCode::NameEmpty);
        let long = vec![b'c'; CURSOR_BYTES_MAX + 1];
        assert_eq!(code_of(0x0C, &page(0, 2, 1, b"a", &long)), ErrorCode::InvalidArgument);
        let name = vec![b'n'; NAME_BYTES_MAX + 1];
        assert_eq!(code_of(0x0B, &page(0, 2, 1, &name, b"")), ErrorCode::NameTooLong);
        assert!(Request::decode(0x0B, &page(0, 2, 1, b"", b"")).is_ok());
    }

    /// protocol.md §4: fields are checked in the order they are read and the first failing check
    /// wins, so a history op with several bad fields gets the code of the earliest one.
    #[test]
    fn history_checks_follow_field_order() {
        let series = |step: u8, from: u64, to: u64, name: &[u8]| {
            let mut out = le(&[&[step], &from.to_le_bytes(), &to.to_le_bytes()]);
            out.extend_from_slice(&(name.len() as u16).to_le_bytes());
            out.extend_from_slice(name);
            out
        };
        let long_name = vec![b'n'; NAME_BYTES_MAX + 1];
        // step, from_ms/to_ms, name.
        assert_eq!(code_of(0x0A, &series(9, 2, 1, b"")), ErrorCode::InvalidArgument);
        assert_eq!(code_of(0x0A, &series(0, 2, 1, b"")), ErrorCode::RangeReversed);
        assert_eq!(code_of(0x0A, &series(0, 2, 1, &long_name)), ErrorCode::RangeReversed);
        let max = SERIES_POINTS_MAX * 1_000;
        assert_eq!(code_of(0x0A, &series(0, 0, max + 1, b"")), ErrorCode::TooManyPoints);
        assert_eq!(code_of(0x0A, &series(0, 0, 1, b"")), ErrorCode::NameEmpty);
        // from_ms/to_ms, limit, name, cursor.
        let page = |from: u64, to: u64, limit: u16, name: &[u8], cursor: &[u8]| {
            let mut out = le(&[&from.to_le_bytes(), &to.to_le_bytes(), &limit.to_le_bytes()]);
            out.extend_from_slice(&(name.len() as u16).to_le_bytes());
            out.extend_from_slice(name);
            out.extend_from_slice(&(cursor.len() as u16).to_le_bytes());
            out.extend_from_slice(cursor);
            out
        };
        let long_cursor = vec![b'c'; CURSOR_BYTES_MAX + 1];
        for opcode in [0x0B, 0x0C] {
            let bad_name: &[u8] = if opcode == 0x0C { b"" } else { &long_name };
            let name_code = if opcode == 0x0C {
                ErrorCode::NameEmpty
            } else {
                ErrorCode::NameTooLong
            };
            assert_eq!(
                code_of(opcode, &page(3, 2, 0, bad_name, &long_cursor)),
                ErrorCode::RangeReversed
            );
            assert_eq!(
                code_of(opcode, &page(0, 2, 0, bad_name, &long_cursor)),
                ErrorCode::InvalidArgument
            );
            assert_eq!(code_of(opcode, &page(0, 2, 1, bad_name, &long_cursor)), name_code);
            assert_eq!(
                code_of(opcode, &page(0, 2, 1, b"a", &long_cursor)),
                ErrorCode::InvalidArgument
            );
        }
        // A check on an earlier field wins over a later field that runs past the payload.
        let mut cut = page(3, 2, 1, b"a", b"");
        cut.truncate(20);
        assert_eq!(code_of(0x0C, &cut), ErrorCode::RangeReversed);
    }

    fn round_trip(reply: Reply) -> usize {
        let mut buf = BytesMut::new();
        reply.encode(&mut buf);
        let (op, used) = decode_reply_op(&buf).expect("our replies decode");
        assert_eq!(used, buf.len());
        assert_eq!(op.result, Ok(reply));
        buf.len()
    }

    #[test]
    fn largest_history_replies_fit_and_round_trip() {
        round_trip(Reply::Window {
            value: -3,
            from_ms: 1_000,
            to_ms: 61_000,
        });
        round_trip(Reply::Series {
            from_ms: 0,
            step_ms: 1_000,
            points: (0..SERIES_POINTS_MAX as i64).map(|i| i - 7).collect(),
        });
        let record = AuditRecord {
            time_ms: 9,
            shard: 1,
            lsn: 4,
            name: vec![b'n'; NAME_BYTES_MAX],
            old: 5,
            new: -1,
            reason: vec![b'r'; REASON_BYTES_MAX],
            client: vec![b'c'; 255],
        };
        let mut one = BytesMut::new();
        record.encode(&mut one);
        assert_eq!(one.len(), AUDIT_RECORD_BYTES_MAX);
        round_trip(Reply::Audit {
            records: vec![record; AUDIT_RECORDS_PER_REPLY_MAX as usize],
            cursor: vec![7; CURSOR_BYTES_MAX],
        });
        let event = Event {
            time_ms: 1,
            shard: 2,
            lsn: 3,
            delta: -4,
            kind: EventKind::SplitPart,
            key: Some(u128::MAX - 1),
        };
        let mut one = BytesMut::new();
        event.encode(&mut one);
        assert_eq!(one.len(), EVENT_BYTES_MAX);
        let unkeyed = Event {
            key: None,
            kind: EventKind::AddBounded,
            ..event
        };
        let mut events = vec![event; EVENTS_PER_PAGE_MAX as usize - 1];
        events.push(unkeyed);
        round_trip(Reply::Events {
            events,
            cursor: vec![1; CURSOR_BYTES_MAX],
        });
    }

    use proptest::prelude::*;

    fn history_request() -> impl Strategy<Value = (u8, u8, u64, u64, u16, Vec<u8>, Vec<u8>)> {
        (
            0x09u8..=0x0C,
            0u8..4,
            any::<u64>(),
            any::<u64>(),
            1u16..,
            proptest::collection::vec(any::<u8>(), 1..=NAME_BYTES_MAX),
            proptest::collection::vec(any::<u8>(), 0..64),
        )
    }

    proptest! {
        /// Every valid history request decodes back to itself.
        #[test]
        fn history_requests_round_trip((opcode, small, a, b, limit, name, cursor) in history_request()) {
            let (from_ms, to_ms) = (a.min(b), a.max(b));
            let request = match opcode {
                0x09 => Request::Window { name: &name, last: (a as u32).max(1), unit: WindowUnit::from_u8(small % 2).unwrap() },
                0x0A => {
                    let step = SeriesStep::from_u8(small).unwrap();
                    let to_ms = from_ms.saturating_add((b % 1_000) * step.ms());
                    Request::Series { name: &name, from_ms, to_ms, step }
                }
                0x0B => Request::Audit { name: &name, from_ms, to_ms, limit, cursor: &cursor },
                _ => Request::Events { name: &name, from_ms, to_ms, limit, cursor: &cursor },
            };
            let bytes = encoded(&request);
            prop_assert_eq!(Request::decode(bytes[0], &bytes[3..]), Ok(request));
        }

        /// Any payload for a history opcode decodes or is refused, never panics.
        #[test]
        fn history_request_decoding_never_panics(opcode in 0x09u8..=0x0C, payload in proptest::collection::vec(any::<u8>(), 0..80)) {
            let _ = Request::decode(opcode, &payload);
        }

        /// Any payload for a history reply decodes or is refused, never panics.
        #[test]
        fn history_reply_payloads_never_panic(opcode in 0x09u8..=0x0C, payload in proptest::collection::vec(any::<u8>(), 0..200)) {
            let _ = Reply::decode(opcode, &payload);
        }
    }

    #[test]
    fn history_reply_decoding_never_panics() {
        let mut buf = BytesMut::new();
        Reply::Events {
            events: vec![Event {
                time_ms: 1,
                shard: 0,
                lsn: 1,
                delta: 1,
                kind: EventKind::Incr,
                key: Some(5),
            }],
            cursor: b"xy".to_vec(),
        }
        .encode(&mut buf);
        for cut in 0..buf.len() {
            let _ = decode_reply_op(&buf[..cut]);
            let mut flipped = buf.to_vec();
            flipped[cut] ^= 0xff;
            let _ = decode_reply_op(&flipped);
        }
    }

    #[test]
    fn numbers_are_stable() {
        assert_eq!(WindowUnit::Second as u8, 0);
        assert_eq!(WindowUnit::Minute as u8, 1);
        assert_eq!(WindowUnit::from_u8(2), None);
        for (step, n, ms) in [
            (SeriesStep::Second, 0, 1_000),
            (SeriesStep::Minute, 1, 60_000),
            (SeriesStep::Hour, 2, 3_600_000),
            (SeriesStep::Day, 3, 86_400_000),
        ] {
            assert_eq!(step as u8, n);
            assert_eq!(SeriesStep::from_u8(n), Some(step));
            assert_eq!(step.ms(), ms);
        }
        assert_eq!(SeriesStep::from_u8(4), None);
        assert_eq!(EventKind::from_u8(3), None);
    }

    #[test]
    fn points_round_outwards_to_the_step() {
        assert_eq!(SeriesStep::Minute.points(0, 0), 0);
        assert_eq!(SeriesStep::Minute.points(59_999, 60_001), 2);
        assert_eq!(SeriesStep::Second.points(1_000, 2_000), 1);
        assert_eq!(SeriesStep::Day.points(0, u64::MAX), u64::MAX.div_ceil(86_400_000));
    }
}
