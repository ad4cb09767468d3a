//! One request op as the SDK holds it before sending: an owned (or borrowed) mirror of
//! `tally_proto::Request` plus what the SDK needs to know about it: whether a retry is safe, how
//! large its reply can be, and the client-side limit checks.

use std::borrow::Cow;

use tally_proto::limits::{ERROR_MESSAGE_BYTES_MAX, OP_PAYLOAD_BYTES_MAX, REASON_BYTES_MAX, REPLY_OP_HEADER_BYTES};
use tally_proto::{check_name, ErrorCode, Opcode, Request, SeriesStep, Token, WindowUnit};

use crate::counter_spec::CounterSpec;
use crate::error::Error;
use crate::limits::ERROR_REPLY_FIXED_BYTES;

/// Bytes of a token on the wire: shard u16, lsn u64.
const TOKEN_BYTES: usize = 10;

/// A request op. Names are bytes on the wire; `&str` and `String` convert. `Op<'static>` owns its
/// bytes (what a `Pipeline` stores); single calls on a client borrow the caller's name.
#[non_exhaustive]
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Op<'a> {
    /// Add `delta`; `key` makes retries of this write count once.
    Incr {
        name: Cow<'a, [u8]>,
        delta: i64,
        key: Option<u128>,
    },
    /// Read the value; `fresh` sums a split counter's shards now, `token` waits for that write.
    Get {
        name: Cow<'a, [u8]>,
        fresh: bool,
        token: Option<Token>,
    },
    /// Declare the counter's kind and bounds.
    Create { name: Cow<'a, [u8]>, spec: CounterSpec },
    /// Strict counters: set to `new` if the value is `expected`.
    Cas {
        name: Cow<'a, [u8]>,
        expected: i64,
        new: i64,
    },
    /// Strict counters: add `delta` unless the result leaves `[min, max]`.
    AddBounded {
        name: Cow<'a, [u8]>,
        delta: i64,
        min: i64,
        max: i64,
        key: Option<u128>,
    },
    /// Admin: set the value, recording the old value and the reason.
    Reset {
        name: Cow<'a, [u8]>,
        value: i64,
        reason: Cow<'a, [u8]>,
    },
    /// Per-shard statistics.
    Stats,
    /// The sum of the increments over the last `last` units (the current one included).
    Window {
        name: Cow<'a, [u8]>,
        last: u32,
        unit: WindowUnit,
    },
    /// Sums per `step` from `from_ms` to `to_ms` (at most `SERIES_POINTS_MAX` points).
    Series {
        name: Cow<'a, [u8]>,
        from_ms: u64,
        to_ms: u64,
        step: SeriesStep,
    },
    /// One page of RESET records of `name` (empty: every counter).
    Audit {
        name: Cow<'a, [u8]>,
        from_ms: u64,
        to_ms: u64,
        limit: u16,
        cursor: Cow<'a, [u8]>,
    },
    /// One page of the logged increments of `name`.
    Events {
        name: Cow<'a, [u8]>,
        from_ms: u64,
        to_ms: u64,
        limit: u16,
        cursor: Cow<'a, [u8]>,
    },
    /// Admin: promote the node this is sent to (a replica) to primary.
    Promote { force: bool, wait_ms: u32 },
}

impl<'a> Op<'a> {
    pub fn opcode(&self) -> Opcode {
        match self {
            Op::Incr { .. } => Opcode::Incr,
            Op::Get { .. } => Opcode::Get,
            Op::Create { .. } => Opcode::Create,
            Op::Cas { .. } => Opcode::Cas,
            Op::AddBounded { .. } => Opcode::AddBounded,
            Op::Reset { .. } => Opcode::Reset,
            Op::Stats => Opcode::Stats,
            Op::Promote { .. } => Opcode::Promote,
            Op::Window { .. } => Opcode::Window,
            Op::Series { .. } => Opcode::Series,
            Op::Audit { .. } => Opcode::Audit,
            Op::Events { .. } => Opcode::Events,
        }
    }

    /// The counter this op addresses; `None` for STATS.
    pub fn name(&self) -> Option<&[u8]> {
        match self {
            Op::Incr { name, .. }
            | Op::Get { name, .. }
            | Op::Create { name, .. }
            | Op::Cas { name, .. }
            | Op::AddBounded { name, .. }
            | Op::Reset { name, .. }
            | Op::Window { name, .. }
            | Op::Series { name, .. }
            | Op::Events { name, .. } => Some(name),
            Op::Audit { name, .. } if !name.is_empty() => Some(name),
            Op::Stats | Op::Audit { .. } | Op::Promote { .. } => None,
        }
    }

    /// The idempotency key the caller gave, if any.
    pub fn key(&self) -> Option<u128> {
        match self {
            Op::Incr { key, .. } | Op::AddBounded { key, .. } => *key,
            _ => None,
        }
    }

    /// A copy that owns its bytes.
    pub fn into_owned(self) -> Op<'static> {
        let own = |bytes: Cow<'a, [u8]>| Cow::Owned(bytes.into_owned());
        match self {
            Op::Incr { name, delta, key } => Op::Incr {
                name: own(name),
                delta,
                key,
            },
            Op::Get { name, fresh, token } => Op::Get {
                name: own(name),
                fresh,
                token,
            },
            Op::Create { name, spec } => Op::Create { name: own(name), spec },
            Op::Cas { name, expected, new } => Op::Cas {
                name: own(name),
                expected,
                new,
            },
            Op::AddBounded {
                name,
                delta,
                min,
                max,
                key,
            } => Op::AddBounded {
                name: own(name),
                delta,
                min,
                max,
                key,
            },
            Op::Reset { name, value, reason } => Op::Reset {
                name: own(name),
                value,
                reason: own(reason),
            },
            Op::Stats => Op::Stats,
            Op::Promote { force, wait_ms } => Op::Promote { force, wait_ms },
            Op::Window { name, last, unit } => Op::Window {
                name: own(name),
                last,
                unit,
            },
            Op::Series {
                name,
                from_ms,
                to_ms,
                step,
            } => Op::Series {
                name: own(name),
                from_ms,
                to_ms,
                step,
            },
            Op::Audit {
                name,
                from_ms,
                to_ms,
                limit,
                cursor,
            } => Op::Audit {
                name: own(name),
                from_ms,
                to_ms,
                limit,
                cursor: own(cursor),
            },
            Op::Events {
                name,
                from_ms,
                to_ms,
                limit,
                cursor,
            } => Op::Events {
                name: own(name),
                from_ms,
                to_ms,
                limit,
                cursor: own(cursor),
            },
        }
    }

    /// True for the ops an idempotency key applies to.
    pub(crate) fn takes_key(&self) -> bool {
        matches!(self, Op::Incr { .. } | Op::AddBounded { .. })
    }

    /// True when sending the op twice has the effect of sending it once, given the key it will
    /// carry: reads, CREATE (an identical declaration is a no-op), and keyed writes (the server
    /// dedups by key). CAS and RESET are never idempotent: a retried CAS that succeeded the first
    /// time fails with a mismatch, and a retried RESET can undo writes made in between.
    pub(crate) fn is_idempotent(&self, key: Option<u128>) -> bool {
        match self {
            Op::Get { .. }
            | Op::Stats
            | Op::Create { .. }
            | Op::Window { .. }
            | Op::Series { .. }
            | Op::Audit { .. }
            | Op::Events { .. } => true,
            Op::Incr { .. } | Op::AddBounded { .. } => key.is_some(),
            // A promotion that succeeded answers a retry with "already primary".
            Op::Cas { .. } | Op::Reset { .. } | Op::Promote { .. } => false,
        }
    }

    /// The wire request, with `key` as the idempotency key of INCR and ADD_BOUNDED (the caller's key
    /// or one the SDK attached).
    pub(crate) fn request(&self, key: Option<u128>) -> Request<'_> {
        match self {
            Op::Incr { name, delta, .. } => Request::Incr {
                name,
                delta: *delta,
                key,
            },
            Op::Get { name, fresh, token } => Request::Get {
                name,
                fresh: *fresh,
                token: *token,
            },
            Op::Create { name, spec } => Request::Create {
                name,
                kind: spec.kind,
                initial: spec.initial,
                min: spec.min,
                max: spec.max,
            },
            Op::Cas { name, expected, new } => Request::Cas {
                name,
                expected: *expected,
                new: *new,
            },
            Op::AddBounded {
                name, delta, min, max, ..
            } => Request::AddBounded {
                name,
                delta: *delta,
                min: *min,
                max: *max,
                key,
            },
            Op::Reset { name, value, reason } => Request::Reset {
                name,
                value: *value,
                reason,
            },
            Op::Stats => Request::Stats,
            Op::Promote { force, wait_ms } => Request::Promote {
                force: *force,
                wait_ms: *wait_ms,
            },
            Op::Window { name, last, unit } => Request::Window {
                name,
                last: *last,
                unit: *unit,
            },
            Op::Series {
                name,
                from_ms,
                to_ms,
                step,
            } => Request::Series {
                name,
                from_ms: *from_ms,
                to_ms: *to_ms,
                step: *step,
            },
            Op::Audit {
                name,
                from_ms,
                to_ms,
                limit,
                cursor,
            } => Request::Audit {
                name,
                from_ms: *from_ms,
                to_ms: *to_ms,
                limit: *limit,
                cursor,
            },
            Op::Events {
                name,
                from_ms,
                to_ms,
                limit,
                cursor,
            } => Request::Events {
                name,
                from_ms: *from_ms,
                to_ms: *to_ms,
                limit: *limit,
                cursor,
            },
        }
    }

    /// The wire limits the server would enforce, checked before sending so that a bad op fails
    /// alone with the same code instead of costing a round trip.
    pub(crate) fn check(&self) -> Result<(), Error> {
        if let Some(name) = self.name() {
            check_name(name).map_err(Error::from_check)?;
        }
        if let Op::Reset { reason, .. } = self {
            if reason.len() > REASON_BYTES_MAX {
                return Err(Error::refused(
                    ErrorCode::ReasonTooLong,
                    format!(
                        "reason of {} bytes exceeds REASON_BYTES_MAX {REASON_BYTES_MAX}",
                        reason.len()
                    ),
                ));
            }
        }
        Ok(())
    }

    /// The most bytes this op's reply op can take: the larger of its success payload and an error
    /// reply with a maximal message, plus the reply op header. Used to bound the bytes the server
    /// may owe a connection and to reject oversized response frames.
    pub(crate) fn reply_bytes_max(&self) -> usize {
        reply_bytes_max(self.opcode())
    }
}

/// The most bytes a reply op to `opcode` can take, header included.
pub(crate) fn reply_bytes_max(opcode: Opcode) -> usize {
    let success = match opcode {
        Opcode::Incr | Opcode::AddBounded => 1 + 8 + TOKEN_BYTES,
        Opcode::Get => 1 + 8,
        Opcode::Create => 1 + 1 + 8,
        Opcode::Cas => 8 + TOKEN_BYTES,
        Opcode::Reset => 8 + 8 + TOKEN_BYTES,
        Opcode::Promote => 8,
        Opcode::Window => 8 + 8 + 8,
        Opcode::Hello | Opcode::Stats | Opcode::Series | Opcode::Audit | Opcode::Events => OP_PAYLOAD_BYTES_MAX,
    };
    REPLY_OP_HEADER_BYTES + success.max(ERROR_REPLY_FIXED_BYTES + ERROR_MESSAGE_BYTES_MAX)
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::BytesMut;
    use tally_proto::limits::NAME_BYTES_MAX;
    use tally_proto::{Reply, RequestOps};

    fn incr(name: &str, key: Option<u128>) -> Op<'_> {
        Op::Incr {
            name: Cow::Borrowed(name.as_bytes()),
            delta: 1,
            key,
        }
    }

    #[test]
    fn request_carries_the_effective_key() {
        let op = incr("a", None);
        let mut buf = BytesMut::new();
        op.request(Some(7)).encode(&mut buf);
        let (_, decoded) = RequestOps::new(&buf, 1).next().expect("one op");
        assert_eq!(
            decoded.expect("decodes"),
            Request::Incr {
                name: b"a",
                delta: 1,
                key: Some(7)
            }
        );
    }

    #[test]
    fn idempotency_follows_the_key_and_the_op() {
        assert!(!incr("a", None).is_idempotent(None));
        assert!(incr("a", None).is_idempotent(Some(1)));
        let cas = Op::Cas {
            name: Cow::Borrowed(b"a"),
            expected: 0,
            new: 1,
        };
        assert!(!cas.is_idempotent(Some(1)));
        assert!(Op::Stats.is_idempotent(None));
        assert!(!cas.takes_key());
        assert!(incr("a", None).takes_key());
    }

    #[test]
    fn check_refuses_what_the_server_would() {
        let long = "n".repeat(NAME_BYTES_MAX + 1);
        let error = incr(&long, None).check().unwrap_err();
        assert_eq!(error.error_code(), Some(ErrorCode::NameTooLong));
        assert_eq!(
            incr("", None).check().unwrap_err().error_code(),
            Some(ErrorCode::NameEmpty)
        );
        assert!(incr(&long[..NAME_BYTES_MAX], None).check().is_ok());
        let reset = Op::Reset {
            name: Cow::Borrowed(b"a"),
            value: 0,
            reason: Cow::Owned(vec![b'r'; REASON_BYTES_MAX + 1]),
        };
        assert_eq!(reset.check().unwrap_err().error_code(), Some(ErrorCode::ReasonTooLong));
    }

    #[test]
    fn reply_bytes_max_bounds_real_replies() {
        let token = Token {
            shard: u16::MAX,
            lsn: u64::MAX,
        };
        let replies = [
            Reply::Incr {
                value: i64::MIN,
                flags: 0xff,
                token,
            },
            Reply::Get { value: 1, flags: 0xff },
            Reply::Create {
                created: true,
                value: 1,
                flags: 0xff,
            },
            Reply::Cas { value: 1, token },
            Reply::AddBounded {
                value: 1,
                flags: 1,
                token,
            },
            Reply::Reset { old: 1, new: 2, token },
        ];
        for reply in replies {
            let mut buf = BytesMut::new();
            reply.encode(&mut buf);
            assert!(buf.len() <= reply_bytes_max(reply.opcode()), "{reply:?}");
        }
        let mut buf = BytesMut::new();
        let message = "m".repeat(ERROR_MESSAGE_BYTES_MAX * 2);
        tally_proto::encode_error_reply(&mut buf, Opcode::Get as u8, ErrorCode::Internal, Some(1), &message);
        assert!(buf.len() <= reply_bytes_max(Opcode::Get));
    }

    #[test]
    fn into_owned_keeps_every_field() {
        let name = String::from("page:1");
        let op = Op::AddBounded {
            name: Cow::Borrowed(name.as_bytes()),
            delta: -3,
            min: 0,
            max: 10,
            key: Some(5),
        };
        let owned: Op<'static> = op.into_owned();
        drop(name);
        assert_eq!(owned.name(), Some(&b"page:1"[..]));
        assert_eq!(owned.key(), Some(5));
        assert_eq!(owned.opcode(), Opcode::AddBounded);
    }
}
