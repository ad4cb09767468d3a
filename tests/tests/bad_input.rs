//! Every bad-input case gets its stable error code, and the connection (or, when the stream
//! cannot be trusted, every other connection) carries on.

use bytes::{BufMut, BytesMut};
use tally_proto::limits::{FRAME_BYTES_MAX, NAME_BYTES_MAX, OPS_PER_FRAME_MAX, REASON_BYTES_MAX};
use tally_proto::{CounterKind, ErrorCode, FrameBuilder, FrameKind, Reply, ReplyOp, Request};
use tally_tests::{RawConn, RawReply, Server};

fn ops(reply: RawReply) -> Vec<ReplyOp> {
    match reply {
        RawReply::Ops(ops) => ops,
        RawReply::Refused { code, message } => panic!("frame refused: {code} {message}"),
    }
}

fn error_code(op: &ReplyOp) -> ErrorCode {
    let error = op.result.as_ref().expect_err("expected an error reply");
    ErrorCode::from_u16(error.code).expect("known code")
}

fn value_of(op: &ReplyOp) -> i64 {
    match op.result.as_ref().expect("expected success") {
        Reply::Incr { value, .. } | Reply::Get { value, .. } => *value,
        other => panic!("unexpected reply {other:?}"),
    }
}

fn incr<'a>(name: &'a [u8], delta: i64) -> Request<'a> {
    Request::Incr { name, delta, key: None }
}

fn get(name: &[u8]) -> Request<'_> {
    Request::Get {
        name,
        fresh: false,
        token: None,
    }
}

#[test]
fn op_level_errors_have_codes_and_the_connection_carries_on() {
    let server = Server::start(&[]);
    let mut conn = RawConn::connect(&server.addr);
    let long = vec![b'n'; NAME_BYTES_MAX + 1];
    let max = vec![b'm'; NAME_BYTES_MAX];
    let reason = vec![b'r'; REASON_BYTES_MAX + 1];
    let replies = ops(conn.call(&[
        incr(b"", 1),
        incr(&long, 1),
        incr(&max, 1),
        Request::Reset {
            name: b"x",
            value: 0,
            reason: &reason,
        },
        incr(b"big", i64::MAX),
        incr(b"big", 1),
        get(b"big"),
        Request::Cas {
            name: b"big",
            expected: 0,
            new: 1,
        },
        Request::Cas {
            name: b"nobody",
            expected: 0,
            new: 1,
        },
        Request::Create {
            name: b"inv",
            kind: CounterKind::Strict,
            initial: 0,
            min: Some(0),
            max: None,
        },
        Request::AddBounded {
            name: b"inv",
            delta: -1,
            min: i64::MIN,
            max: i64::MAX,
            key: None,
        },
        Request::Create {
            name: b"bad-bounds",
            kind: CounterKind::Strict,
            initial: 0,
            min: Some(5),
            max: Some(1),
        },
        Request::Create {
            name: b"inv",
            kind: CounterKind::Analytic,
            initial: 0,
            min: None,
            max: None,
        },
    ]));
    assert_eq!(replies.len(), 13);
    assert_eq!(error_code(&replies[0]), ErrorCode::NameEmpty);
    assert_eq!(error_code(&replies[1]), ErrorCode::NameTooLong);
    assert_eq!(value_of(&replies[2]), 1, "a 255-byte name is fine");
    assert_eq!(error_code(&replies[3]), ErrorCode::ReasonTooLong);
    assert_eq!(value_of(&replies[4]), i64::MAX);
    assert_eq!(error_code(&replies[5]), ErrorCode::Overflow);
    assert_eq!(value_of(&replies[6]), i64::MAX, "an overflowing add changes nothing");
    assert_eq!(error_code(&replies[7]), ErrorCode::WrongKind);
    assert_eq!(error_code(&replies[8]), ErrorCode::NotFound);
    assert!(replies[9].result.is_ok());
    assert_eq!(error_code(&replies[10]), ErrorCode::BoundViolation);
    assert_eq!(replies[10].result.as_ref().unwrap_err().current, Some(0));
    assert_eq!(error_code(&replies[11]), ErrorCode::InvalidArgument);
    assert_eq!(error_code(&replies[12]), ErrorCode::AlreadyExists);

    // Same connection, still serving.
    let after = ops(conn.call(&[incr(b"after", 2), get(b"after")]));
    assert_eq!(value_of(&after[1]), 2);
}

#[test]
fn unknown_and_malformed_ops_fail_alone() {
    let server = Server::start(&[]);
    let mut conn = RawConn::connect(&server.addr);
    let mut buf = BytesMut::new();
    let mut frame = FrameBuilder::begin(&mut buf, FrameKind::Request, 42);
    // An opcode nobody knows, with a 3-byte payload.
    buf.put_u8(0x7f);
    buf.put_u16_le(3);
    buf.put_slice(b"abc");
    frame.op_added();
    // An INCR whose payload is too short to hold its fields.
    buf.put_u8(0x02);
    buf.put_u16_le(2);
    buf.put_slice(b"zz");
    frame.op_added();
    incr(b"fine", 5).encode(&mut buf);
    frame.op_added();
    frame.finish(&mut buf);
    conn.send_bytes(&buf);
    let (id, reply) = conn.read_reply();
    assert_eq!(id, 42);
    let replies = ops(reply);
    assert_eq!(replies[0].opcode, 0x7f, "the reply echoes the unknown opcode");
    assert_eq!(error_code(&replies[0]), ErrorCode::UnknownOp);
    assert_eq!(error_code(&replies[1]), ErrorCode::BadFrame);
    assert_eq!(value_of(&replies[2]), 5);
}

fn raw_header(buf: &mut BytesMut, len: u32, version: u8, kind: u8, op_count: u16, id: u64) {
    buf.put_u32_le(len);
    buf.put_u8(version);
    buf.put_u8(kind);
    buf.put_u16_le(op_count);
    buf.put_u64_le(id);
}

#[test]
fn refused_frames_are_skipped_and_the_connection_carries_on() {
    let server = Server::start(&[]);
    let mut conn = RawConn::connect(&server.addr);
    let mut buf = BytesMut::new();
    // Too large: the body is sent and must be skipped unread.
    let body = FRAME_BYTES_MAX as usize + 1;
    raw_header(&mut buf, (body + 12) as u32, 1, 1, 1, 1);
    buf.put_bytes(0xAB, body);
    // A version this node does not speak.
    raw_header(&mut buf, 12 + 4, 9, 1, 1, 2);
    buf.put_bytes(0, 4);
    // More ops than allowed.
    raw_header(&mut buf, 12, 1, 1, OPS_PER_FRAME_MAX + 1, 3);
    // A response frame sent to the server.
    raw_header(&mut buf, 12, 1, 2, 0, 4);
    // Op lengths that do not add up to the body: refused whole, nothing applied.
    let mut bad = BytesMut::new();
    incr(b"never", 1).encode(&mut bad);
    raw_header(&mut buf, 12 + bad.len() as u32, 1, 1, 2, 5);
    buf.put_slice(&bad);
    conn.send_bytes(&buf);
    let expected = [
        (1, ErrorCode::FrameTooLarge),
        (2, ErrorCode::UnsupportedVersion),
        (3, ErrorCode::TooManyOps),
        (4, ErrorCode::BadFrame),
        (5, ErrorCode::BadFrame),
    ];
    for (want_id, want_code) in expected {
        let (id, reply) = conn.read_reply();
        assert_eq!(id, want_id);
        match reply {
            RawReply::Refused { code, .. } => assert_eq!(code, want_code as u16, "frame {id}"),
            RawReply::Ops(ops) => panic!("frame {id} was served: {ops:?}"),
        }
    }
    let replies = ops(conn.call(&[get(b"never"), incr(b"later", 1)]));
    assert_eq!(value_of(&replies[0]), 0, "the refused frame applied nothing");
    assert_eq!(value_of(&replies[1]), 1);
}

#[test]
fn an_untrustworthy_length_closes_only_that_connection() {
    let server = Server::start(&[]);
    let mut healthy = RawConn::connect(&server.addr);
    assert_eq!(value_of(&ops(healthy.call(&[incr(b"shared", 1)]))[0]), 1);

    // protocol.md §3, check 1: a valid frame before the bad prefix is answered; the prefix gets
    // one error frame `bad_frame` with request id 0; then the connection closes and nothing after
    // the prefix is read (the increment sent behind it is not applied).
    let mut broken = RawConn::connect(&server.addr);
    let mut buf = BytesMut::new();
    let mut before = BytesMut::new();
    let mut frame = FrameBuilder::begin(&mut before, FrameKind::Request, 5);
    incr(b"shared", 10).encode(&mut before);
    frame.op_added();
    frame.finish(&mut before);
    buf.extend_from_slice(&before);
    raw_header(&mut buf, 3, 1, 1, 0, 77);
    buf.extend_from_slice(&before);
    broken.send_bytes(&buf);
    let (id, reply) = broken.read_reply();
    assert_eq!(id, 5);
    assert_eq!(value_of(&ops(reply)[0]), 11);
    let (id, reply) = broken.read_reply();
    assert_eq!(id, 0, "the untrustworthy header's own request id is not echoed");
    match reply {
        RawReply::Refused { code, message } => {
            assert_eq!(code, ErrorCode::BadFrame as u16);
            assert!(message.contains('3'), "the message gives the length: {message}");
        }
        RawReply::Ops(ops) => panic!("served: {ops:?}"),
    }
    assert!(broken.is_closed(), "the server closes a stream it cannot resynchronise");

    assert_eq!(value_of(&ops(healthy.call(&[incr(b"shared", 1)]))[0]), 12);
    let mut fresh = RawConn::connect(&server.addr);
    assert_eq!(value_of(&ops(fresh.call(&[get(b"shared")]))[0]), 12);
}

#[test]
fn pipelined_frames_are_answered_in_order() {
    let server = Server::start(&[]);
    let mut conn = RawConn::connect(&server.addr);
    let names: Vec<Vec<u8>> = (0..64).map(|i| format!("pipe:{i}").into_bytes()).collect();
    let mut ids = Vec::new();
    let mut buf = BytesMut::new();
    for round in 0..4 {
        for name in &names {
            let (bytes, id) = conn.frame(&[incr(name, round + 1)]);
            buf.extend_from_slice(&bytes);
            ids.push(id);
        }
    }
    conn.send_bytes(&buf);
    for want in ids {
        let (id, reply) = conn.read_reply();
        assert_eq!(id, want);
        assert!(ops(reply)[0].result.is_ok());
    }
    for name in &names {
        assert_eq!(value_of(&ops(conn.call(&[get(name)]))[0]), 1 + 2 + 3 + 4);
    }
}

#[test]
fn sigterm_exits_cleanly() {
    let server = Server::start(&[]);
    let mut conn = RawConn::connect(&server.addr);
    assert_eq!(value_of(&ops(conn.call(&[incr(b"x", 1)]))[0]), 1);
    assert_eq!(server.stop(), Some(0));
}

#[test]
fn connections_beyond_the_limit_are_refused_and_the_rest_carry_on() {
    let server = Server::start(&["--max-connections", "2"]);
    let mut first = RawConn::connect(&server.addr);
    let mut second = RawConn::connect(&server.addr);
    // Both are served (and so counted) before the third arrives.
    assert_eq!(value_of(&ops(first.call(&[incr(b"c", 1)]))[0]), 1);
    assert_eq!(value_of(&ops(second.call(&[incr(b"c", 1)]))[0]), 2);
    let mut third = RawConn::connect(&server.addr);
    let (id, reply) = third.read_reply();
    assert_eq!(id, 0, "the refusal answers no request");
    match reply {
        RawReply::Refused { code, .. } => assert_eq!(code, ErrorCode::TooManyConnections as u16),
        RawReply::Ops(ops) => panic!("served beyond the limit: {ops:?}"),
    }
    assert!(third.is_closed());
    assert_eq!(
        value_of(&ops(first.call(&[incr(b"c", 1)]))[0]),
        3,
        "the others carry on"
    );
    drop(second);
    // The freed slot is taken by the next connection (the close is noticed asynchronously).
    let served = (0..200).any(|_| {
        let mut next = RawConn::connect(&server.addr);
        let (bytes, _) = next.frame(&[get(b"c")]);
        next.send_bytes(&bytes);
        matches!(next.read_reply().1, RawReply::Ops(_))
    });
    assert!(served, "a connection slot was freed when a client left");
}
