//! Shared test support: owned mirrors of the borrowed request type, proptest strategies for every
//! request and reply, and the decoder harness the fuzz target also runs.

// Each test binary uses a different part of this module.
#![allow(dead_code)]

pub mod frame_decode;

use bytes::BytesMut;
use proptest::collection::vec;
use proptest::prelude::*;
use tally_proto::limits::{NAME_BYTES_MAX, REASON_BYTES_MAX, SHARDS_MAX};
use tally_proto::{
    encode_error_reply, CounterKind, ErrorCode, FrameBuilder, FrameKind, HelloReply, Reply, Request, StatsReply, Token,
};

/// A request that owns its bytes, so a strategy can produce it; `as_request` borrows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OwnedRequest {
    Hello {
        client: Vec<u8>,
    },
    Incr {
        name: Vec<u8>,
        delta: i64,
        key: Option<u128>,
    },
    Get {
        name: Vec<u8>,
        fresh: bool,
        token: Option<Token>,
    },
    Create {
        name: Vec<u8>,
        kind: CounterKind,
        initial: i64,
        min: Option<i64>,
        max: Option<i64>,
    },
    Cas {
        name: Vec<u8>,
        expected: i64,
        new: i64,
    },
    AddBounded {
        name: Vec<u8>,
        delta: i64,
        min: i64,
        max: i64,
        key: Option<u128>,
    },
    Reset {
        name: Vec<u8>,
        value: i64,
        reason: Vec<u8>,
    },
    Stats,
}

impl OwnedRequest {
    pub fn as_request(&self) -> Request<'_> {
        match self {
            OwnedRequest::Hello { client } => Request::Hello { client },
            OwnedRequest::Incr { name, delta, key } => Request::Incr {
                name,
                delta: *delta,
                key: *key,
            },
            OwnedRequest::Get { name, fresh, token } => Request::Get {
                name,
                fresh: *fresh,
                token: *token,
            },
            OwnedRequest::Create {
                name,
                kind,
                initial,
                min,
                max,
            } => Request::Create {
                name,
                kind: *kind,
                initial: *initial,
                min: *min,
                max: *max,
            },
            OwnedRequest::Cas { name, expected, new } => Request::Cas {
                name,
                expected: *expected,
                new: *new,
            },
            OwnedRequest::AddBounded {
                name,
                delta,
                min,
                max,
                key,
            } => Request::AddBounded {
                name,
                delta: *delta,
                min: *min,
                max: *max,
                key: *key,
            },
            OwnedRequest::Reset { name, value, reason } => Request::Reset {
                name,
                value: *value,
                reason,
            },
            OwnedRequest::Stats => Request::Stats,
        }
    }
}

/// Valid names: 1..=255 arbitrary bytes, with short printable names and the two extreme lengths
/// weighted up.
pub fn name() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        4 => "[a-z0-9:._-]{1,40}".prop_map(String::into_bytes),
        4 => vec(any::<u8>(), 1..=NAME_BYTES_MAX),
        1 => vec(any::<u8>(), 1..=1),
        1 => vec(any::<u8>(), NAME_BYTES_MAX..=NAME_BYTES_MAX),
    ]
}

/// i64 values with the edges weighted up: overflow bugs live there.
pub fn value() -> impl Strategy<Value = i64> {
    prop_oneof![
        4 => any::<i64>(),
        2 => -1000i64..1000,
        1 => Just(i64::MIN),
        1 => Just(i64::MAX),
        1 => Just(0i64),
    ]
}

pub fn token() -> impl Strategy<Value = Token> {
    (any::<u16>(), any::<u64>()).prop_map(|(shard, lsn)| Token { shard, lsn })
}

pub fn kind() -> impl Strategy<Value = CounterKind> {
    prop_oneof![Just(CounterKind::Analytic), Just(CounterKind::Strict)]
}

pub fn hello() -> impl Strategy<Value = OwnedRequest> {
    vec(any::<u8>(), 0..=255).prop_map(|client| OwnedRequest::Hello { client })
}

pub fn incr() -> impl Strategy<Value = OwnedRequest> {
    (name(), value(), any::<Option<u128>>()).prop_map(|(name, delta, key)| OwnedRequest::Incr { name, delta, key })
}

pub fn get() -> impl Strategy<Value = OwnedRequest> {
    (name(), any::<bool>(), proptest::option::of(token())).prop_map(|(name, fresh, token)| OwnedRequest::Get {
        name,
        fresh,
        token,
    })
}

pub fn create() -> impl Strategy<Value = OwnedRequest> {
    (
        name(),
        kind(),
        value(),
        proptest::option::of(value()),
        proptest::option::of(value()),
    )
        .prop_map(|(name, kind, initial, min, max)| OwnedRequest::Create {
            name,
            kind,
            initial,
            min,
            max,
        })
}

pub fn cas() -> impl Strategy<Value = OwnedRequest> {
    (name(), value(), value()).prop_map(|(name, expected, new)| OwnedRequest::Cas { name, expected, new })
}

pub fn add_bounded() -> impl Strategy<Value = OwnedRequest> {
    (name(), value(), value(), value(), any::<Option<u128>>()).prop_map(|(name, delta, min, max, key)| {
        OwnedRequest::AddBounded {
            name,
            delta,
            min,
            max,
            key,
        }
    })
}

pub fn reset() -> impl Strategy<Value = OwnedRequest> {
    (name(), value(), vec(any::<u8>(), 0..=REASON_BYTES_MAX)).prop_map(|(name, value, reason)| OwnedRequest::Reset {
        name,
        value,
        reason,
    })
}

/// Any valid request op.
pub fn request() -> impl Strategy<Value = OwnedRequest> {
    prop_oneof![
        1 => hello(),
        4 => incr(),
        2 => get(),
        1 => create(),
        1 => cas(),
        1 => add_bounded(),
        1 => reset(),
        1 => Just(OwnedRequest::Stats),
    ]
}

/// Server strings: valid UTF-8 of at most 255 bytes (63 chars of up to 4 bytes).
pub fn short_string() -> impl Strategy<Value = String> {
    prop_oneof!["[a-z0-9._ -]{0,63}", "\\PC{0,63}"]
}

pub fn hello_reply() -> impl Strategy<Value = Reply> {
    (any::<u8>(), 0..=SHARDS_MAX, any::<u16>(), short_string()).prop_flat_map(
        |(version, shard_count, shard, server)| {
            vec(any::<u16>(), shard_count as usize).prop_map(move |shard_ports| {
                Reply::Hello(HelloReply {
                    version,
                    shard_count,
                    shard,
                    shard_ports,
                    server: server.clone(),
                })
            })
        },
    )
}

pub fn incr_reply() -> impl Strategy<Value = Reply> {
    (value(), any::<u8>(), token()).prop_map(|(value, flags, token)| Reply::Incr { value, flags, token })
}

pub fn get_reply() -> impl Strategy<Value = Reply> {
    (value(), any::<u8>()).prop_map(|(value, flags)| Reply::Get { value, flags })
}

pub fn create_reply() -> impl Strategy<Value = Reply> {
    (any::<bool>(), value(), any::<u8>()).prop_map(|(created, value, flags)| Reply::Create { created, value, flags })
}

pub fn cas_reply() -> impl Strategy<Value = Reply> {
    (value(), token()).prop_map(|(value, token)| Reply::Cas { value, token })
}

pub fn add_bounded_reply() -> impl Strategy<Value = Reply> {
    (value(), any::<u8>(), token()).prop_map(|(value, flags, token)| Reply::AddBounded { value, flags, token })
}

pub fn reset_reply() -> impl Strategy<Value = Reply> {
    (value(), value(), token()).prop_map(|(old, new, token)| Reply::Reset { old, new, token })
}

pub fn stats_reply() -> impl Strategy<Value = Reply> {
    (vec((short_string(), value()), 0..40), vec(name(), 0..20))
        .prop_map(|(figures, split)| Reply::Stats(StatsReply { figures, split }))
}

/// Any successful reply.
pub fn reply() -> impl Strategy<Value = Reply> {
    prop_oneof![
        1 => hello_reply(),
        4 => incr_reply(),
        2 => get_reply(),
        1 => create_reply(),
        1 => cas_reply(),
        1 => add_bounded_reply(),
        1 => reset_reply(),
        1 => stats_reply(),
    ]
}

pub fn error_code() -> impl Strategy<Value = ErrorCode> {
    proptest::sample::select(ErrorCode::ALL.to_vec())
}

/// An error reply: the echoed opcode, the code, the optional current value and a message that fits
/// `ERROR_MESSAGE_BYTES_MAX` (so it comes back unchanged).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ErrorReply {
    pub opcode: u8,
    pub code: ErrorCode,
    pub current: Option<i64>,
    pub message: String,
}

impl ErrorReply {
    pub fn encode(&self, buf: &mut BytesMut) {
        encode_error_reply(buf, self.opcode, self.code, self.current, &self.message);
    }
}

pub fn error_reply() -> impl Strategy<Value = ErrorReply> {
    (
        any::<u8>(),
        error_code(),
        proptest::option::of(value()),
        prop_oneof!["[ -~]{0,100}", "\\PC{0,128}"],
    )
        .prop_map(|(opcode, code, current, message)| ErrorReply {
            opcode,
            code,
            current,
            message,
        })
}

/// One reply op of a response frame: a success or an error.
#[derive(Debug, Clone)]
pub enum ReplyItem {
    Ok(Reply),
    Err(ErrorReply),
}

pub fn reply_item() -> impl Strategy<Value = ReplyItem> {
    prop_oneof![3 => reply().prop_map(ReplyItem::Ok), 1 => error_reply().prop_map(ReplyItem::Err)]
}

/// Bytes with the values the decoders branch on weighted up: small lengths, valid opcodes and
/// versions, and the extremes.
pub fn interesting_bytes(max_len: usize) -> impl Strategy<Value = Vec<u8>> {
    vec(
        prop_oneof![
            4 => any::<u8>(),
            2 => 0u8..=16,
            1 => Just(0xffu8),
        ],
        0..max_len,
    )
}

/// A valid request, response or error frame with random damage: bytes overwritten, the end cut off,
/// or garbage appended.
pub fn damaged_frame() -> impl Strategy<Value = Vec<u8>> {
    let frame = prop_oneof![
        vec(request(), 0..8).prop_map(|requests| {
            let mut buf = BytesMut::new();
            let mut frame = FrameBuilder::begin(&mut buf, FrameKind::Request, 1);
            for request in &requests {
                request.as_request().encode(&mut buf);
                frame.op_added();
            }
            frame.finish(&mut buf);
            buf.to_vec()
        }),
        vec(reply_item(), 0..8).prop_map(|items| {
            let mut buf = BytesMut::new();
            let mut frame = FrameBuilder::begin(&mut buf, FrameKind::Response, 2);
            for item in &items {
                match item {
                    ReplyItem::Ok(reply) => reply.encode(&mut buf),
                    ReplyItem::Err(error) => error.encode(&mut buf),
                }
                frame.op_added();
            }
            frame.finish(&mut buf);
            buf.to_vec()
        }),
        (any::<u64>(), error_code(), "\\PC{0,40}").prop_map(|(id, code, message)| {
            let mut buf = BytesMut::new();
            tally_proto::frame::encode_error_frame(&mut buf, id, code, &message);
            buf.to_vec()
        }),
    ];
    let edits = vec((any::<prop::sample::Index>(), any::<u8>()), 0..4);
    let cut = proptest::option::weighted(0.3, any::<prop::sample::Index>());
    let tail = proptest::option::weighted(0.3, interesting_bytes(8));
    (frame, edits, cut, tail).prop_map(|(mut bytes, edits, cut, tail)| {
        for (at, byte) in edits {
            let i = at.index(bytes.len());
            bytes[i] = byte;
        }
        if let Some(cut) = cut {
            bytes.truncate(cut.index(bytes.len() + 1));
        }
        bytes.extend_from_slice(&tail.unwrap_or_default());
        bytes
    })
}
