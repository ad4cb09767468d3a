//! Round-trip properties: every request and reply op, error replies, error frames and mixed batches
//! survive encode -> frame -> decode unchanged.

mod support;

use bytes::{BufMut, BytesMut};
use proptest::collection::vec;
use proptest::prelude::*;
use support::*;
use tally_proto::frame::{decode_error_frame, encode_error_frame};
use tally_proto::limits::{ERROR_MESSAGE_BYTES_MAX, FRAME_HEADER_BYTES, OPS_PER_FRAME_MAX};
use tally_proto::{
    decode_reply_op, DecodeError, ErrorCode, FrameBuilder, FrameHeader, FrameKind, HeaderCheck, Reply, RequestOps,
};

/// Encodes `requests` as one request frame.
fn request_frame(request_id: u64, requests: &[OwnedRequest]) -> BytesMut {
    let mut buf = BytesMut::new();
    let mut frame = FrameBuilder::begin(&mut buf, FrameKind::Request, request_id);
    for request in requests {
        request.as_request().encode(&mut buf);
        frame.op_added();
    }
    frame.finish(&mut buf);
    buf
}

/// Parses `buf` as one complete request frame the way a server does and checks every op.
fn assert_request_frame(buf: &[u8], request_id: u64, requests: &[OwnedRequest]) {
    let header = FrameHeader::parse(buf).unwrap();
    assert_eq!(header.request_id, request_id);
    assert_eq!(header.op_count as usize, requests.len());
    assert_eq!(header.body_len as usize, buf.len() - FRAME_HEADER_BYTES);
    assert_eq!(header.check_request(), HeaderCheck::Serve);
    let mut ops = RequestOps::new(&buf[FRAME_HEADER_BYTES..], header.op_count);
    for expected in requests {
        let (opcode, decoded) = ops.next().expect("one item per op");
        let expected = expected.as_request();
        assert_eq!(opcode, expected.opcode() as u8);
        assert_eq!(decoded, Ok(expected));
    }
    assert!(ops.next().is_none());
    assert_eq!(ops.trailing_bytes(), 0);
}

fn assert_request_round_trip(request: OwnedRequest, request_id: u64) {
    let buf = request_frame(request_id, std::slice::from_ref(&request));
    assert_request_frame(&buf, request_id, &[request]);
}

/// Encodes replies as one response frame.
fn response_frame(request_id: u64, items: &[ReplyItem]) -> BytesMut {
    let mut buf = BytesMut::new();
    let mut frame = FrameBuilder::begin(&mut buf, FrameKind::Response, request_id);
    for item in items {
        match item {
            ReplyItem::Ok(reply) => reply.encode(&mut buf),
            ReplyItem::Err(error) => error.encode(&mut buf),
        }
        frame.op_added();
    }
    frame.finish(&mut buf);
    buf
}

/// Decodes a response frame the way a client does and checks every reply op.
fn assert_response_frame(buf: &[u8], request_id: u64, items: &[ReplyItem]) {
    let header = FrameHeader::parse(buf).unwrap();
    assert_eq!(header.frame_kind(), Some(FrameKind::Response));
    assert_eq!(header.request_id, request_id);
    assert_eq!(header.op_count as usize, items.len());
    let body = &buf[FRAME_HEADER_BYTES..];
    assert_eq!(header.body_len as usize, body.len());
    let mut pos = 0;
    for item in items {
        let (op, consumed) = decode_reply_op(&body[pos..]).unwrap();
        pos += consumed;
        match item {
            ReplyItem::Ok(reply) => {
                assert_eq!(op.opcode, reply.opcode() as u8);
                assert_eq!(op.result.as_ref(), Ok(reply));
            }
            ReplyItem::Err(error) => {
                assert_eq!(op.opcode, error.opcode);
                let got = op.result.unwrap_err();
                assert_eq!(got.code, error.code as u16);
                assert_eq!(got.error_code(), Some(error.code));
                assert_eq!(got.current, error.current);
                assert_eq!(got.message, error.message);
            }
        }
    }
    assert_eq!(pos, body.len(), "the replies fill the body exactly");
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn hello_round_trips(request in hello(), id in any::<u64>()) {
        assert_request_round_trip(request, id);
    }

    #[test]
    fn incr_round_trips(request in incr(), id in any::<u64>()) {
        assert_request_round_trip(request, id);
    }

    #[test]
    fn get_round_trips(request in get(), id in any::<u64>()) {
        assert_request_round_trip(request, id);
    }

    #[test]
    fn create_round_trips(request in create(), id in any::<u64>()) {
        assert_request_round_trip(request, id);
    }

    #[test]
    fn cas_round_trips(request in cas(), id in any::<u64>()) {
        assert_request_round_trip(request, id);
    }

    #[test]
    fn add_bounded_round_trips(request in add_bounded(), id in any::<u64>()) {
        assert_request_round_trip(request, id);
    }

    #[test]
    fn reset_round_trips(request in reset(), id in any::<u64>()) {
        assert_request_round_trip(request, id);
    }

    #[test]
    fn stats_round_trips(id in any::<u64>()) {
        assert_request_round_trip(OwnedRequest::Stats, id);
    }

    #[test]
    fn mixed_request_batches_round_trip(requests in vec(request(), 0..64), id in any::<u64>()) {
        let buf = request_frame(id, &requests);
        assert_request_frame(&buf, id, &requests);
    }

    /// Several frames back to back in one buffer (pipelining) are read one after another, and a
    /// partial read is `Incomplete` only while the header itself is short.
    #[test]
    fn pipelined_frames_parse_in_order(batches in vec(vec(request(), 0..8), 1..6)) {
        let mut buf = BytesMut::new();
        for (id, requests) in batches.iter().enumerate() {
            buf.extend_from_slice(&request_frame(id as u64, requests));
        }
        let mut rest = &buf[..];
        for (id, requests) in batches.iter().enumerate() {
            let header = FrameHeader::parse(rest).unwrap();
            let end = FRAME_HEADER_BYTES + header.body_len as usize;
            assert_request_frame(&rest[..end], id as u64, requests);
            rest = &rest[end..];
        }
        prop_assert!(rest.is_empty());
        prop_assert_eq!(FrameHeader::parse(rest), Err(DecodeError::Incomplete { needed: FRAME_HEADER_BYTES }));
    }

    #[test]
    fn hello_reply_round_trips(reply in hello_reply(), id in any::<u64>()) {
        let items = [ReplyItem::Ok(reply)];
        assert_response_frame(&response_frame(id, &items), id, &items);
    }

    #[test]
    fn incr_reply_round_trips(reply in incr_reply(), id in any::<u64>()) {
        let items = [ReplyItem::Ok(reply)];
        assert_response_frame(&response_frame(id, &items), id, &items);
    }

    #[test]
    fn get_reply_round_trips(reply in get_reply(), id in any::<u64>()) {
        let items = [ReplyItem::Ok(reply)];
        assert_response_frame(&response_frame(id, &items), id, &items);
    }

    #[test]
    fn create_reply_round_trips(reply in create_reply(), id in any::<u64>()) {
        let items = [ReplyItem::Ok(reply)];
        assert_response_frame(&response_frame(id, &items), id, &items);
    }

    #[test]
    fn cas_reply_round_trips(reply in cas_reply(), id in any::<u64>()) {
        let items = [ReplyItem::Ok(reply)];
        assert_response_frame(&response_frame(id, &items), id, &items);
    }

    #[test]
    fn add_bounded_reply_round_trips(reply in add_bounded_reply(), id in any::<u64>()) {
        let items = [ReplyItem::Ok(reply)];
        assert_response_frame(&response_frame(id, &items), id, &items);
    }

    #[test]
    fn reset_reply_round_trips(reply in reset_reply(), id in any::<u64>()) {
        let items = [ReplyItem::Ok(reply)];
        assert_response_frame(&response_frame(id, &items), id, &items);
    }

    #[test]
    fn stats_reply_round_trips(reply in stats_reply(), id in any::<u64>()) {
        let items = [ReplyItem::Ok(reply)];
        assert_response_frame(&response_frame(id, &items), id, &items);
    }

    #[test]
    fn error_replies_round_trip(error in error_reply(), id in any::<u64>()) {
        let items = [ReplyItem::Err(error)];
        assert_response_frame(&response_frame(id, &items), id, &items);
    }

    #[test]
    fn mixed_response_batches_round_trip(items in vec(reply_item(), 0..64), id in any::<u64>()) {
        assert_response_frame(&response_frame(id, &items), id, &items);
    }

    /// Long messages are cut to `ERROR_MESSAGE_BYTES_MAX` at a character boundary; short ones are
    /// kept whole.
    #[test]
    fn error_reply_messages_are_cut_not_changed(message in "\\PC{0,400}", code in error_code()) {
        let mut buf = BytesMut::new();
        tally_proto::encode_error_reply(&mut buf, 2, code, None, &message);
        let (op, consumed) = decode_reply_op(&buf).unwrap();
        prop_assert_eq!(consumed, buf.len());
        let got = op.result.unwrap_err().message;
        prop_assert!(got.len() <= ERROR_MESSAGE_BYTES_MAX);
        prop_assert!(message.starts_with(&got));
        if message.len() <= ERROR_MESSAGE_BYTES_MAX {
            prop_assert_eq!(&got, &message);
        } else {
            prop_assert!(got.len() > ERROR_MESSAGE_BYTES_MAX - 4, "cut at most one character short");
        }
    }

    #[test]
    fn error_frames_round_trip(id in any::<u64>(), code in error_code(), message in "\\PC{0,400}") {
        let mut buf = BytesMut::new();
        encode_error_frame(&mut buf, id, code, &message);
        let header = FrameHeader::parse(&buf).unwrap();
        prop_assert_eq!(header.frame_kind(), Some(FrameKind::Error));
        prop_assert_eq!(header.version, 1);
        prop_assert_eq!(header.op_count, 0);
        prop_assert_eq!(header.request_id, id);
        prop_assert_eq!(header.body_len as usize, buf.len() - FRAME_HEADER_BYTES);
        // An error frame is never served as a request.
        let refused = matches!(header.check_request(), HeaderCheck::Refuse { code: ErrorCode::BadFrame, .. });
        prop_assert!(refused);
        let (got_code, got_message) = decode_error_frame(&buf[FRAME_HEADER_BYTES..]).unwrap();
        prop_assert_eq!(got_code, code as u16);
        prop_assert!(got_message.len() <= ERROR_MESSAGE_BYTES_MAX);
        prop_assert!(message.starts_with(&got_message));
        if message.len() <= ERROR_MESSAGE_BYTES_MAX {
            prop_assert_eq!(got_message, message);
        }
    }
}

/// One op of a batch that the test breaks on purpose, and the code the server must answer it with.
#[derive(Debug, Clone)]
enum BatchOp {
    Valid(OwnedRequest),
    UnknownOpcode(u8, Vec<u8>),
    EmptyName,
    NameTooLong,
    TrailingByte(OwnedRequest),
    UnknownKind(u8),
}

fn batch_op() -> impl Strategy<Value = BatchOp> {
    prop_oneof![
        6 => request().prop_map(BatchOp::Valid),
        1 => (0x0Du8..=255, vec(any::<u8>(), 0..32))
            .prop_filter("assigned opcode", |(op, _)| *op != 0x10)
            .prop_map(|(op, payload)| BatchOp::UnknownOpcode(op, payload)),
        1 => Just(BatchOp::EmptyName),
        1 => Just(BatchOp::NameTooLong),
        1 => request().prop_map(BatchOp::TrailingByte),
        1 => (2u8..=255).prop_map(BatchOp::UnknownKind),
    ]
}

impl BatchOp {
    fn encode(&self, buf: &mut BytesMut) {
        match self {
            BatchOp::Valid(request) => request.as_request().encode(buf),
            BatchOp::UnknownOpcode(opcode, payload) => {
                buf.put_u8(*opcode);
                buf.put_u16_le(payload.len() as u16);
                buf.put_slice(payload);
            }
            BatchOp::EmptyName => incr_named(b"").as_request().encode(buf),
            BatchOp::NameTooLong => incr_named(&[b'n'; 256]).as_request().encode(buf),
            BatchOp::TrailingByte(request) => {
                let start = buf.len();
                request.as_request().encode(buf);
                buf.put_u8(0);
                let len = u16::from_le_bytes([buf[start + 1], buf[start + 2]]) + 1;
                buf[start + 1..start + 3].copy_from_slice(&len.to_le_bytes());
            }
            BatchOp::UnknownKind(kind) => {
                let start = buf.len();
                OwnedRequest::Create {
                    name: b"c".to_vec(),
                    kind: tally_proto::CounterKind::Strict,
                    initial: 0,
                    min: None,
                    max: None,
                }
                .as_request()
                .encode(buf);
                buf[start + 3] = *kind;
            }
        }
    }

    fn expected_code(&self) -> Option<ErrorCode> {
        match self {
            BatchOp::Valid(_) => None,
            BatchOp::UnknownOpcode(..) => Some(ErrorCode::UnknownOp),
            BatchOp::EmptyName => Some(ErrorCode::NameEmpty),
            BatchOp::NameTooLong => Some(ErrorCode::NameTooLong),
            BatchOp::TrailingByte(_) => Some(ErrorCode::BadFrame),
            BatchOp::UnknownKind(_) => Some(ErrorCode::InvalidArgument),
        }
    }
}

fn incr_named(name: &[u8]) -> OwnedRequest {
    OwnedRequest::Incr {
        name: name.to_vec(),
        delta: 1,
        key: None,
    }
}

proptest! {
    /// Ops in a frame are independent: a broken op gets its own error and every other op still
    /// decodes exactly as sent.
    #[test]
    fn broken_ops_do_not_affect_their_neighbours(ops in vec(batch_op(), 1..48)) {
        let mut buf = BytesMut::new();
        let mut frame = FrameBuilder::begin(&mut buf, FrameKind::Request, 5);
        for op in &ops {
            op.encode(&mut buf);
            frame.op_added();
        }
        frame.finish(&mut buf);
        let header = FrameHeader::parse(&buf).unwrap();
        prop_assert_eq!(header.check_request(), HeaderCheck::Serve);
        let mut items = RequestOps::new(&buf[FRAME_HEADER_BYTES..], header.op_count);
        for (i, op) in ops.iter().enumerate() {
            let (_, result) = items.next().unwrap();
            match (op, op.expected_code(), result) {
                (BatchOp::Valid(request), None, Ok(got)) => prop_assert_eq!(got, request.as_request()),
                (_, Some(code), Err(DecodeError::Invalid { code: got, .. })) => prop_assert_eq!(got, code, "op {}", i),
                (op, _, result) => prop_assert!(false, "op {}: {:?} gave {:?}", i, op, result),
            }
        }
        prop_assert!(items.next().is_none());
        prop_assert_eq!(items.trailing_bytes(), 0);
    }
}

/// The op count and byte limits bind at different op sizes: a frame of `OPS_PER_FRAME_MAX` keyed
/// increments fits `FRAME_BYTES_MAX` with names up to 225 bytes, not with 226. Clients split
/// batches on both limits (docs/protocol.md, "Limits").
#[test]
fn a_full_frame_of_keyed_increments_fits_up_to_225_byte_names() {
    let full_frame = |name_len: usize| {
        let request = OwnedRequest::Incr {
            name: vec![b'x'; name_len],
            delta: i64::MIN,
            key: Some(u128::MAX),
        };
        let requests = vec![request; OPS_PER_FRAME_MAX as usize];
        (request_frame(1, &requests), requests)
    };
    let (buf, requests) = full_frame(225);
    assert!(buf.len() - 4 <= tally_proto::limits::FRAME_BYTES_MAX as usize);
    assert_request_frame(&buf, 1, &requests);
    let (buf, _) = full_frame(226);
    let header = FrameHeader::parse(&buf).unwrap();
    assert!(matches!(
        header.check_request(),
        HeaderCheck::Refuse {
            code: ErrorCode::FrameTooLarge,
            ..
        }
    ));
}

#[test]
fn replies_are_ordered_like_their_requests() {
    // A response frame's nth reply op answers the request frame's nth op; the opcode echo lets a
    // client check the pairing.
    let requests = [incr_named(b"a"), OwnedRequest::Stats, incr_named(b"")];
    let buf = request_frame(3, &requests);
    let header = FrameHeader::parse(&buf).unwrap();
    let mut out = BytesMut::new();
    let mut frame = FrameBuilder::begin(&mut out, FrameKind::Response, header.request_id);
    for (opcode, result) in RequestOps::new(&buf[FRAME_HEADER_BYTES..], header.op_count) {
        match result {
            Ok(tally_proto::Request::Stats) => Reply::Stats(Default::default()).encode(&mut out),
            Ok(request) => {
                assert_eq!(request.opcode(), tally_proto::Opcode::Incr);
                let token = tally_proto::Token { shard: 0, lsn: 1 };
                Reply::Incr {
                    value: 1,
                    flags: 0,
                    token,
                }
                .encode(&mut out)
            }
            Err(DecodeError::Invalid { code, message }) => {
                tally_proto::encode_error_reply(&mut out, opcode, code, None, &message)
            }
            Err(other) => panic!("{other:?}"),
        }
        frame.op_added();
    }
    frame.finish(&mut out);
    let reply_header = FrameHeader::parse(&out).unwrap();
    assert_eq!(reply_header.request_id, 3);
    assert_eq!(reply_header.op_count, 3);
    let mut pos = FRAME_HEADER_BYTES;
    let mut opcodes = Vec::new();
    for _ in 0..3 {
        let (op, consumed) = decode_reply_op(&out[pos..]).unwrap();
        opcodes.push((op.opcode, op.result.err().map(|e| e.code)));
        pos += consumed;
    }
    assert_eq!(
        opcodes,
        vec![(2, None), (8, None), (2, Some(ErrorCode::NameEmpty as u16))]
    );
}
