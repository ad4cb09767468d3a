//! What a successful op returns, with the reply flags decoded into named fields.

use tally_proto::reply::{REPLY_APPROX, REPLY_DUPLICATE, REPLY_EXISTS, REPLY_SPLIT, REPLY_STRICT};
use tally_proto::{AuditRecord, Event, Reply, StatsReply, Token};

use crate::error::Error;

/// The ack of a write (INCR, ADD_BOUNDED, CAS).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WriteAck {
    /// The value after the write (for a duplicate, the value the first send produced).
    pub value: i64,
    /// The shard and LSN of the write; pass it to `get_with` for read-your-writes.
    pub token: Token,
    /// The counter is hot and split across shards.
    pub split: bool,
    /// The write carried an idempotency key already applied: nothing was applied this time.
    pub duplicate: bool,
    /// `value` is an estimate: the write landed on a non-owner shard of a split counter.
    pub approx: bool,
}

/// The answer to a GET.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Reading {
    pub value: i64,
    /// False for a name never written or created (the value is then 0).
    pub exists: bool,
    pub split: bool,
    pub strict: bool,
    /// The value may lag the sub-counters of a split counter by the aggregation tick (ask with
    /// `fresh` for an exact sum).
    pub approx: bool,
}

/// The answer to a CREATE.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Created {
    /// False when an identical declaration already existed.
    pub created: bool,
    pub value: i64,
    pub strict: bool,
}

/// The answer to a RESET.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ResetAck {
    pub old: i64,
    pub new: i64,
    pub token: Token,
}

/// The answer to a WINDOW: the sum and the aligned range [from_ms, to_ms) it covers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WindowSum {
    pub value: i64,
    pub from_ms: u64,
    pub to_ms: u64,
}

/// The answer to a SERIES: `points[i]` is the sum over [from_ms + i × step_ms, + step_ms).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Series {
    pub from_ms: u64,
    pub step_ms: u64,
    pub points: Vec<i64>,
}

/// One page of AUDIT or EVENTS: the items, and the cursor that asks for the next page (empty
/// when there is none).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Page<T> {
    pub items: Vec<T>,
    pub cursor: Vec<u8>,
}

/// The result of one successful op, by op.
#[non_exhaustive]
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    Incr(WriteAck),
    Get(Reading),
    Create(Created),
    Cas(WriteAck),
    AddBounded(WriteAck),
    Reset(ResetAck),
    Stats(StatsReply),
    Window(WindowSum),
    Series(Series),
    Audit(Page<AuditRecord>),
    Events(Page<Event>),
    /// PROMOTE: the node is primary from this epoch on.
    Promote {
        epoch: u64,
    },
}

impl Outcome {
    /// The counter's value after the op (the new value for RESET); `None` for STATS.
    pub fn value(&self) -> Option<i64> {
        match self {
            Outcome::Incr(ack) | Outcome::Cas(ack) | Outcome::AddBounded(ack) => Some(ack.value),
            Outcome::Get(reading) => Some(reading.value),
            Outcome::Create(created) => Some(created.value),
            Outcome::Reset(reset) => Some(reset.new),
            Outcome::Window(sum) => Some(sum.value),
            Outcome::Stats(_)
            | Outcome::Series(_)
            | Outcome::Audit(_)
            | Outcome::Events(_)
            | Outcome::Promote { .. } => None,
        }
    }

    /// The write ack, for INCR, CAS and ADD_BOUNDED.
    pub fn write_ack(&self) -> Option<&WriteAck> {
        match self {
            Outcome::Incr(ack) | Outcome::Cas(ack) | Outcome::AddBounded(ack) => Some(ack),
            _ => None,
        }
    }

    /// Whether the reply said the counter is split, for the ops whose replies carry the flag.
    pub(crate) fn split_hint(&self) -> Option<bool> {
        match self {
            Outcome::Incr(ack) | Outcome::AddBounded(ack) => Some(ack.split),
            Outcome::Get(reading) => Some(reading.split),
            _ => None,
        }
    }

    // The typed calls below unwrap the outcome of the op they sent. The reply's opcode was
    // checked against the request's, and `from_reply` maps each opcode to one variant, so another
    // variant here is a bug in this crate.

    pub(crate) fn expect_write(self) -> WriteAck {
        match self {
            Outcome::Incr(ack) | Outcome::Cas(ack) | Outcome::AddBounded(ack) => ack,
            other => panic!("write op answered with {other:?}"),
        }
    }

    pub(crate) fn expect_reading(self) -> Reading {
        match self {
            Outcome::Get(reading) => reading,
            other => panic!("GET answered with {other:?}"),
        }
    }

    pub(crate) fn expect_created(self) -> Created {
        match self {
            Outcome::Create(created) => created,
            other => panic!("CREATE answered with {other:?}"),
        }
    }

    pub(crate) fn expect_reset(self) -> ResetAck {
        match self {
            Outcome::Reset(reset) => reset,
            other => panic!("RESET answered with {other:?}"),
        }
    }

    pub(crate) fn expect_stats(self) -> StatsReply {
        match self {
            Outcome::Stats(stats) => stats,
            other => panic!("STATS answered with {other:?}"),
        }
    }

    pub(crate) fn expect_window(self) -> WindowSum {
        match self {
            Outcome::Window(sum) => sum,
            other => panic!("WINDOW answered with {other:?}"),
        }
    }

    pub(crate) fn expect_series(self) -> Series {
        match self {
            Outcome::Series(series) => series,
            other => panic!("SERIES answered with {other:?}"),
        }
    }

    pub(crate) fn expect_audit(self) -> Page<AuditRecord> {
        match self {
            Outcome::Audit(page) => page,
            other => panic!("AUDIT answered with {other:?}"),
        }
    }

    pub(crate) fn expect_events(self) -> Page<Event> {
        match self {
            Outcome::Events(page) => page,
            other => panic!("EVENTS answered with {other:?}"),
        }
    }

    pub(crate) fn expect_promote(self) -> u64 {
        match self {
            Outcome::Promote { epoch } => epoch,
            other => panic!("PROMOTE answered with {other:?}"),
        }
    }

    pub(crate) fn from_reply(reply: Reply) -> Result<Outcome, Error> {
        let write_ack = |value, flags: u8, token| WriteAck {
            value,
            token,
            split: flags & REPLY_SPLIT != 0,
            duplicate: flags & REPLY_DUPLICATE != 0,
            approx: flags & REPLY_APPROX != 0,
        };
        Ok(match reply {
            Reply::Incr { value, flags, token } => Outcome::Incr(write_ack(value, flags, token)),
            Reply::AddBounded { value, flags, token } => Outcome::AddBounded(write_ack(value, flags, token)),
            Reply::Cas { value, token } => Outcome::Cas(write_ack(value, 0, token)),
            Reply::Get { value, flags } => Outcome::Get(Reading {
                value,
                exists: flags & REPLY_EXISTS != 0,
                split: flags & REPLY_SPLIT != 0,
                strict: flags & REPLY_STRICT != 0,
                approx: flags & REPLY_APPROX != 0,
            }),
            Reply::Create { created, value, flags } => Outcome::Create(Created {
                created,
                value,
                strict: flags & REPLY_STRICT != 0,
            }),
            Reply::Reset { old, new, token } => Outcome::Reset(ResetAck { old, new, token }),
            Reply::Stats(stats) => Outcome::Stats(stats),
            Reply::Promote { epoch } => Outcome::Promote { epoch },
            Reply::Window { value, from_ms, to_ms } => Outcome::Window(WindowSum { value, from_ms, to_ms }),
            Reply::Series {
                from_ms,
                step_ms,
                points,
            } => Outcome::Series(Series {
                from_ms,
                step_ms,
                points,
            }),
            Reply::Audit { records, cursor } => Outcome::Audit(Page { items: records, cursor }),
            Reply::Events { events, cursor } => Outcome::Events(Page { items: events, cursor }),
            Reply::Hello(_) => return Err(Error::Protocol("HELLO reply to a non-HELLO op".into())),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flags_decode_into_fields() {
        let token = Token { shard: 3, lsn: 9 };
        let outcome = Outcome::from_reply(Reply::Incr {
            value: 5,
            flags: REPLY_SPLIT | REPLY_DUPLICATE,
            token,
        })
        .unwrap();
        let ack = outcome.write_ack().unwrap();
        assert!(ack.split);
        assert!(ack.duplicate);
        assert!(!ack.approx);
        assert_eq!(ack.token, token);
        assert_eq!(outcome.split_hint(), Some(true));

        let reading = Outcome::from_reply(Reply::Get {
            value: 0,
            flags: REPLY_STRICT,
        })
        .unwrap();
        assert_eq!(
            reading,
            Outcome::Get(Reading {
                value: 0,
                exists: false,
                split: false,
                strict: true,
                approx: false
            })
        );
        assert_eq!(reading.value(), Some(0));
    }

    #[test]
    fn a_hello_reply_is_not_an_outcome() {
        let hello = tally_proto::HelloReply {
            version: 1,
            shard_count: 1,
            shard: 0,
            shard_ports: vec![1],
            server: String::new(),
        };
        assert!(matches!(
            Outcome::from_reply(Reply::Hello(hello)),
            Err(Error::Protocol(_))
        ));
    }
}
