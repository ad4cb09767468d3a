//! The decoder harness shared by the cargo-fuzz target (`fuzz/fuzz_targets/frame_decode.rs`) and
//! the deterministic tests in `proto/tests/never_panic.rs` and `proto/tests/fuzz_smoke.rs`.
//!
//! `frame_decode` treats any byte string the way a server and a client would: as a stream of
//! frames (header, `check_request`, every request op, the body read as reply ops and as an error
//! frame), and as a single request op and a single reply op. It must never panic. The asserts are
//! the properties: exactly `op_count` items per frame, each item equal to what an independent walk
//! of the op headers predicts, every decoded value re-encodes to bytes that decode to the same
//! value, and every error is `Invalid` (never `Incomplete`) with a code the decoder may produce.

use bytes::BytesMut;
use tally_proto::frame::{decode_error_frame, encode_error_frame};
use tally_proto::limits::{
    FRAME_HEADER_BYTES, OPS_PER_FRAME_MAX, REPLY_OP_HEADER_BYTES, REQUEST_OP_HEADER_BYTES, SHARDS_MAX,
};
use tally_proto::{
    decode_reply_op, encode_error_reply, DecodeError, ErrorCode, FrameBuilder, FrameHeader, FrameKind, HeaderCheck,
    Opcode, Reply, ReplyOp, Request, RequestOps,
};

/// Which paths one input reached. The smoke test sums these to prove its corpus exercises the
/// decoders beyond their first length check.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Reached {
    pub headers: usize,
    pub frames_served: usize,
    pub frames_refused: usize,
    pub ops_ok: usize,
    pub ops_failed: usize,
    pub replies_ok: usize,
    pub reply_errors_ok: usize,
    pub error_frames_ok: usize,
}

impl Reached {
    pub fn add(&mut self, other: Reached) {
        self.headers += other.headers;
        self.frames_served += other.frames_served;
        self.frames_refused += other.frames_refused;
        self.ops_ok += other.ops_ok;
        self.ops_failed += other.ops_failed;
        self.replies_ok += other.replies_ok;
        self.reply_errors_ok += other.reply_errors_ok;
        self.error_frames_ok += other.error_frames_ok;
    }
}

/// Runs every decoder over `data`. Panics only if a property is broken.
pub fn frame_decode(data: &[u8]) -> Reached {
    let mut reached = Reached::default();
    let mut rest = data;
    while let Some(header) = check_header(rest) {
        reached.headers += 1;
        let body_end = FRAME_HEADER_BYTES.saturating_add(header.body_len as usize);
        let body = &rest[FRAME_HEADER_BYTES..body_end.min(rest.len())];
        match header.check_request() {
            HeaderCheck::Serve => {
                reached.frames_served += 1;
                check_served_header(&header);
            }
            HeaderCheck::Refuse { code, message } => {
                reached.frames_refused += 1;
                check_refusal(&header, code, &message);
            }
        }
        // Every body goes through every decoder: the request walk does not depend on the header
        // checks having passed, and a client reads the same bytes as replies or an error frame.
        // The op count is capped at what a server serves. A fuzz input of a few KiB holds at most
        // ~1 400 ops, so past them every item is the same BadFrame, and 65 535 of those per input
        // would slow the fuzzer a hundredfold (never_panic.rs covers the whole u16 range).
        check_request_ops(body, header.op_count.min(OPS_PER_FRAME_MAX), &mut reached);
        check_reply_ops(body, &mut reached);
        if check_error_frame(body) {
            reached.error_frames_ok += 1;
        }
        if body_end > rest.len() {
            break;
        }
        rest = &rest[body_end..];
    }
    if let Some((&opcode, payload)) = data.split_first() {
        if check_request_decode(opcode, payload).is_ok() {
            reached.ops_ok += 1;
        }
        check_reply_decode(opcode, payload);
    }
    check_reply_ops(data, &mut reached);
    check_error_frame(data);
    reached
}

/// `FrameHeader::parse`: `Some` for a header, `None` when the stream ends or cannot go on.
pub fn check_header(buf: &[u8]) -> Option<FrameHeader> {
    match FrameHeader::parse(buf) {
        Ok(header) => {
            assert!(buf.len() >= FRAME_HEADER_BYTES);
            let len = u32::from_le_bytes(buf[..4].try_into().unwrap());
            assert_eq!(header.body_len, len - 12);
            assert_eq!(header.version, buf[4]);
            assert_eq!(header.kind, buf[5]);
            assert_eq!(header.op_count, u16::from_le_bytes([buf[6], buf[7]]));
            assert_eq!(header.request_id, u64::from_le_bytes(buf[8..16].try_into().unwrap()));
            Some(header)
        }
        Err(DecodeError::Incomplete { needed }) => {
            assert!(buf.len() < FRAME_HEADER_BYTES);
            assert_eq!(needed, FRAME_HEADER_BYTES - buf.len());
            None
        }
        Err(DecodeError::Invalid { code, .. }) => {
            assert_eq!(code, ErrorCode::BadFrame);
            assert!(buf.len() >= FRAME_HEADER_BYTES);
            assert!(u32::from_le_bytes(buf[..4].try_into().unwrap()) < 12);
            None
        }
        Err(other) => panic!("unexpected header error {other:?}"),
    }
}

/// `check_request` serves only a v1 request within the frame and op limits.
fn check_served_header(header: &FrameHeader) {
    assert_eq!(header.version, 1);
    assert_eq!(header.kind, FrameKind::Request as u8);
    assert!(header.op_count <= OPS_PER_FRAME_MAX);
    assert!(u64::from(header.body_len) + 12 <= u64::from(tally_proto::limits::FRAME_BYTES_MAX));
}

/// A refusal has a header-level code, and the error frame carrying it round-trips.
fn check_refusal(header: &FrameHeader, code: ErrorCode, message: &str) {
    assert!(
        matches!(
            code,
            ErrorCode::UnsupportedVersion | ErrorCode::FrameTooLarge | ErrorCode::BadFrame | ErrorCode::TooManyOps
        ),
        "{code:?} is not a header refusal"
    );
    let mut buf = BytesMut::new();
    encode_error_frame(&mut buf, header.request_id, code, message);
    let frame = FrameHeader::parse(&buf).unwrap();
    assert_eq!(frame.frame_kind(), Some(FrameKind::Error));
    assert_eq!(frame.request_id, header.request_id);
    assert_eq!(frame.op_count, 0);
    assert_eq!(frame.body_len as usize, buf.len() - FRAME_HEADER_BYTES);
    let (decoded_code, decoded_message) = decode_error_frame(&buf[FRAME_HEADER_BYTES..]).unwrap();
    assert_eq!(decoded_code, code as u16);
    assert_eq!(decoded_message, message);
}

/// `RequestOps` over any body and op count, checked against an independent walk of the op headers.
pub fn check_request_ops(body: &[u8], op_count: u16, reached: &mut Reached) {
    let mut ops = RequestOps::new(body, op_count);
    let mut pos = 0usize;
    let mut broken = false;
    let mut items = 0usize;
    let mut decoded = Vec::new();
    for (opcode, result) in ops.by_ref() {
        items += 1;
        let rest = &body[pos..];
        // Whether the item is about framing (the op runs past the body) rather than a decode of a
        // complete op's payload.
        let framing = broken || rest.len() < REQUEST_OP_HEADER_BYTES || {
            let len = u16::from_le_bytes([rest[1], rest[2]]) as usize;
            rest.len() < REQUEST_OP_HEADER_BYTES + len
        };
        if broken {
            // Once an op ran past the end, every later op is BadFrame with no opcode.
            assert_eq!(opcode, 0);
            assert_bad_frame(&result);
        } else if rest.len() < REQUEST_OP_HEADER_BYTES {
            assert_eq!(opcode, 0, "a truncated op header echoes no opcode");
            assert_bad_frame(&result);
            broken = true;
        } else {
            let len = u16::from_le_bytes([rest[1], rest[2]]) as usize;
            assert_eq!(opcode, rest[0]);
            if rest.len() >= REQUEST_OP_HEADER_BYTES + len {
                let payload = &rest[REQUEST_OP_HEADER_BYTES..REQUEST_OP_HEADER_BYTES + len];
                assert_eq!(
                    result,
                    Request::decode(rest[0], payload),
                    "op {items} differs from a decode of its bytes"
                );
                pos += REQUEST_OP_HEADER_BYTES + len;
            } else {
                assert_bad_frame(&result);
                broken = true;
            }
        }
        match result {
            Ok(request) => {
                assert_eq!(opcode, request.opcode() as u8);
                check_request_round_trip(&request);
                reached.ops_ok += 1;
                decoded.push(request);
            }
            Err(error) => {
                if !framing {
                    check_request_error(opcode, &error);
                }
                reached.ops_failed += 1;
            }
        }
    }
    assert_eq!(items, op_count as usize, "RequestOps yields exactly op_count items");
    assert!(ops.next().is_none(), "and nothing after");
    let trailing = if broken { 0 } else { body.len() - pos };
    assert_eq!(ops.trailing_bytes(), trailing);
    // A frame whose ops all decoded is rebuilt byte for byte by the encoders.
    if !broken && trailing == 0 && decoded.len() == items {
        let mut buf = BytesMut::new();
        let mut frame = FrameBuilder::begin(&mut buf, FrameKind::Request, 1);
        for request in &decoded {
            request.encode(&mut buf);
            frame.op_added();
        }
        frame.finish(&mut buf);
        let header = FrameHeader::parse(&buf).unwrap();
        assert_eq!(header.op_count, op_count);
        let again: Vec<_> = RequestOps::new(&buf[FRAME_HEADER_BYTES..], header.op_count)
            .map(|(_, r)| r.unwrap())
            .collect();
        assert_eq!(again, decoded);
    }
}

fn assert_bad_frame<T: std::fmt::Debug>(result: &Result<T, DecodeError>) {
    match result {
        Err(DecodeError::Invalid {
            code: ErrorCode::BadFrame,
            ..
        }) => {}
        other => panic!("expected BadFrame, got {other:?}"),
    }
}

/// `Request::decode` on any opcode and payload.
pub fn check_request_decode(opcode: u8, payload: &[u8]) -> Result<(), ()> {
    match Request::decode(opcode, payload) {
        Ok(request) => {
            assert_eq!(request.opcode() as u8, opcode);
            check_request_round_trip(&request);
            Ok(())
        }
        Err(error) => {
            check_request_error(opcode, &error);
            Err(())
        }
    }
}

fn check_request_error(opcode: u8, error: &DecodeError) {
    let DecodeError::Invalid { code, .. } = error else {
        panic!("an op inside a frame is never Incomplete: {error:?}");
    };
    if Opcode::from_u8(opcode).is_none() {
        assert_eq!(*code, ErrorCode::UnknownOp);
        return;
    }
    assert!(
        matches!(
            code,
            ErrorCode::BadFrame
                | ErrorCode::NameEmpty
                | ErrorCode::NameTooLong
                | ErrorCode::ReasonTooLong
                | ErrorCode::InvalidArgument
                | ErrorCode::RangeReversed
                | ErrorCode::TooManyPoints
        ),
        "{code:?} from the request decoder"
    );
}

/// A decoded request re-encodes to an op that decodes to the same request.
pub fn check_request_round_trip(request: &Request<'_>) {
    if let Some(name) = request.name() {
        tally_proto::check_name(name).expect("decoded names are within the limits");
    }
    let mut buf = BytesMut::new();
    request.encode(&mut buf);
    assert_eq!(buf[0], request.opcode() as u8);
    let len = u16::from_le_bytes([buf[1], buf[2]]) as usize;
    assert_eq!(len, buf.len() - REQUEST_OP_HEADER_BYTES);
    let again = Request::decode(buf[0], &buf[REQUEST_OP_HEADER_BYTES..]).expect("re-encoded op decodes");
    assert_eq!(&again, request);
}

/// Reads `buf` as a sequence of reply ops until it ends or one fails.
pub fn check_reply_ops(buf: &[u8], reached: &mut Reached) {
    let mut pos = 0;
    while pos < buf.len() {
        match decode_reply_op(&buf[pos..]) {
            Ok((op, consumed)) => {
                let rest = &buf[pos..];
                assert!(consumed >= REPLY_OP_HEADER_BYTES);
                assert!(consumed <= rest.len());
                assert_eq!(
                    consumed,
                    REPLY_OP_HEADER_BYTES + u16::from_le_bytes([rest[3], rest[4]]) as usize
                );
                assert_eq!(op.opcode, rest[0]);
                let status = u16::from_le_bytes([rest[1], rest[2]]);
                assert_eq!(op.result.is_ok(), status == 0);
                if op.result.is_ok() {
                    reached.replies_ok += 1;
                } else {
                    reached.reply_errors_ok += 1;
                }
                check_reply_round_trip(&op);
                pos += consumed;
            }
            Err(DecodeError::Invalid { code, .. }) => {
                assert!(matches!(code, ErrorCode::BadFrame | ErrorCode::UnknownOp), "{code:?}");
                break;
            }
            Err(other) => panic!("a reply op inside a frame is never Incomplete: {other:?}"),
        }
    }
}

/// `Reply::decode` on any opcode and payload.
pub fn check_reply_decode(opcode: u8, payload: &[u8]) {
    match Reply::decode(opcode, payload) {
        Ok(reply) => check_reply_round_trip(&ReplyOp {
            opcode,
            result: Ok(reply),
        }),
        Err(DecodeError::Invalid { code, .. }) => {
            if Opcode::from_u8(opcode).is_none() {
                assert_eq!(code, ErrorCode::UnknownOp);
            } else {
                assert_eq!(code, ErrorCode::BadFrame);
            }
        }
        Err(other) => panic!("a reply payload is never Incomplete: {other:?}"),
    }
}

/// A decoded reply re-encodes to bytes that decode again. Replies without strings come back equal;
/// HELLO and STATS carry strings decoded lossily (and cut to 255 bytes when re-encoded), so only
/// their shape is compared.
pub fn check_reply_round_trip(op: &ReplyOp) {
    let mut buf = BytesMut::new();
    match &op.result {
        Ok(reply) => {
            assert_eq!(reply.opcode() as u8, op.opcode);
            if let Reply::Hello(hello) = reply {
                assert_eq!(hello.shard_ports.len(), hello.shard_count as usize);
                if hello.shard_count > SHARDS_MAX {
                    // `Reply::encode` asserts a HELLO fits its u16 payload; a real node never has
                    // more than SHARDS_MAX shards, so such a reply is only re-encoded up to that.
                    return;
                }
            }
            reply.encode(&mut buf);
            let (again, consumed) = decode_reply_op(&buf).expect("re-encoded reply decodes");
            assert_eq!(consumed, buf.len());
            assert_eq!(again.opcode, op.opcode);
            let again = again.result.expect("a success stays a success");
            match (reply, &again) {
                (Reply::Hello(a), Reply::Hello(b)) => {
                    assert_eq!((a.version, a.shard_count, a.shard), (b.version, b.shard_count, b.shard));
                    assert_eq!(a.shard_ports, b.shard_ports);
                }
                (Reply::Stats(a), Reply::Stats(b)) => {
                    assert!(b.figures.len() <= a.figures.len());
                    for ((_, x), (_, y)) in a.figures.iter().zip(&b.figures) {
                        assert_eq!(x, y);
                    }
                    assert!(b.split.len() <= a.split.len());
                }
                _ => assert_eq!(reply, &again),
            }
        }
        Err(error) => {
            assert_ne!(error.code, 0);
            let Some(code) = error.error_code() else {
                return;
            };
            encode_error_reply(&mut buf, op.opcode, code, error.current, &error.message);
            let (again, consumed) = decode_reply_op(&buf).expect("re-encoded error decodes");
            assert_eq!(consumed, buf.len());
            assert_eq!(again.opcode, op.opcode);
            let again = again.result.expect_err("an error stays an error");
            assert_eq!(again.code, error.code);
            assert_eq!(again.current, error.current);
            assert!(
                error.message.starts_with(&again.message),
                "the message is kept or cut, never changed"
            );
        }
    }
}

/// `decode_error_frame` on any body. Returns whether it decoded.
pub fn check_error_frame(body: &[u8]) -> bool {
    match decode_error_frame(body) {
        Ok((code, message)) => {
            assert_eq!(u16::from_le_bytes([body[0], body[1]]), code);
            assert_eq!(body.len(), 4 + u16::from_le_bytes([body[2], body[3]]) as usize);
            if let Some(code) = ErrorCode::from_u16(code) {
                let mut buf = BytesMut::new();
                encode_error_frame(&mut buf, 9, code, &message);
                let (again_code, again_message) = decode_error_frame(&buf[FRAME_HEADER_BYTES..]).unwrap();
                assert_eq!(again_code, code as u16);
                assert!(message.starts_with(&again_message));
            }
            true
        }
        Err(DecodeError::Invalid { code, .. }) => {
            assert_eq!(code, ErrorCode::BadFrame);
            false
        }
        Err(other) => panic!("an error frame body is never Incomplete: {other:?}"),
    }
}
