//! Checking and decoding what the server sends back, shared by the blocking and the async client.
//!
//! A reply frame must answer the request the client expects next on that connection (same
//! request id), carry exactly one reply op per request op with the same opcodes in order, and stay
//! within the size the request can produce. Anything else is a protocol error and the connection
//! is dropped: after one unexpected byte nothing later on the stream can be trusted.

use bytes::BytesMut;
use tally_proto::frame::decode_error_frame;
use tally_proto::limits::{FRAME_HEADER_BYTES, SHARDS_MAX};
use tally_proto::{
    decode_reply_op, FrameBuilder, FrameHeader, FrameKind, HelloReply, Opcode, Reply, Request, PROTOCOL_VERSION,
};

use crate::error::Error;
use crate::limits::ERROR_FRAME_BODY_BYTES_MAX;
use crate::op::reply_bytes_max;

/// Request id of the HELLO that opens every connection. Ids only need to be unique among the
/// frames in flight on one connection, and nothing else is in flight during the handshake.
pub(crate) const HELLO_REQUEST_ID: u64 = 0;

/// What the client expects of the next frame on a connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Expected {
    pub(crate) request_id: u64,
    pub(crate) ops: usize,
    /// Upper bound of the whole response frame, header included.
    pub(crate) frame_bytes_max: usize,
}

/// Checks a reply frame header against the request it must answer, before its body is read.
pub(crate) fn check_header(header: &FrameHeader, expected: &Expected) -> Result<(), Error> {
    if header.version != PROTOCOL_VERSION {
        return Err(Error::Protocol(format!(
            "reply frame has protocol version {} (this client speaks {PROTOCOL_VERSION})",
            header.version
        )));
    }
    if header.request_id != expected.request_id {
        return Err(Error::Protocol(format!(
            "reply for request {} while request {} is the oldest in flight",
            header.request_id, expected.request_id
        )));
    }
    match header.frame_kind() {
        Some(FrameKind::Response) => {
            if usize::from(header.op_count) != expected.ops {
                return Err(Error::Protocol(format!(
                    "reply carries {} ops for a request of {}",
                    header.op_count, expected.ops
                )));
            }
            if header.body_len as usize + FRAME_HEADER_BYTES > expected.frame_bytes_max {
                return Err(Error::Protocol(format!(
                    "reply body of {} bytes exceeds the {} its request can produce",
                    header.body_len, expected.frame_bytes_max
                )));
            }
        }
        Some(FrameKind::Error) => {
            if header.op_count != 0 {
                return Err(Error::Protocol(format!("error frame with {} ops", header.op_count)));
            }
            if header.body_len as usize > ERROR_FRAME_BODY_BYTES_MAX {
                return Err(Error::Protocol(format!(
                    "error frame body of {} bytes",
                    header.body_len
                )));
            }
        }
        Some(FrameKind::Request) | None => {
            return Err(Error::Protocol(format!("frame kind {} from the server", header.kind)));
        }
    }
    Ok(())
}

/// Decodes a checked reply frame's body into one result per request op. An error frame refuses
/// the whole request, so every op gets the same server error.
pub(crate) fn decode_frame(
    header: &FrameHeader,
    body: &[u8],
    opcodes: impl ExactSizeIterator<Item = Opcode>,
) -> Result<Vec<Result<Reply, Error>>, Error> {
    if header.frame_kind() == Some(FrameKind::Error) {
        let (code, message) = decode_error_frame(body).map_err(Error::from_decode)?;
        return Ok(opcodes
            .map(|_| {
                Err(Error::Server {
                    code,
                    current: None,
                    message: message.clone(),
                })
            })
            .collect());
    }
    let mut replies = Vec::with_capacity(opcodes.len());
    let mut pos = 0;
    for opcode in opcodes {
        let (reply, consumed) = decode_reply_op(&body[pos..]).map_err(Error::from_decode)?;
        pos += consumed;
        if reply.opcode != opcode as u8 {
            return Err(Error::Protocol(format!(
                "reply opcode 0x{:02x} for a request op 0x{:02x}",
                reply.opcode, opcode as u8
            )));
        }
        replies.push(reply.result.map_err(Error::from_op_error));
    }
    if pos != body.len() {
        return Err(Error::Protocol(format!(
            "reply frame has {} trailing bytes",
            body.len() - pos
        )));
    }
    Ok(replies)
}

/// The expectation for a frame of ops with these opcodes.
pub(crate) fn expect(request_id: u64, opcodes: impl Iterator<Item = Opcode>) -> Expected {
    let mut expected = Expected {
        request_id,
        ops: 0,
        frame_bytes_max: FRAME_HEADER_BYTES,
    };
    for opcode in opcodes {
        expected.ops += 1;
        expected.frame_bytes_max += reply_bytes_max(opcode);
    }
    expected
}

/// Appends the HELLO frame that opens a connection.
pub(crate) fn encode_hello(buf: &mut BytesMut, client: &[u8]) -> Expected {
    let mut frame = FrameBuilder::begin(buf, FrameKind::Request, HELLO_REQUEST_ID);
    Request::Hello { client }.encode(buf);
    frame.op_added();
    frame.finish(buf);
    expect(HELLO_REQUEST_ID, [Opcode::Hello].into_iter())
}

/// Turns the HELLO reply into a validated `HelloReply`: a shard count the client can route with,
/// one port per shard, and the server's shard among them.
pub(crate) fn hello_from_reply(reply: Result<Reply, Error>) -> Result<HelloReply, Error> {
    let hello = match reply? {
        Reply::Hello(hello) => hello,
        other => return Err(Error::Protocol(format!("{:?} reply to HELLO", other.opcode()))),
    };
    if hello.version != PROTOCOL_VERSION {
        return Err(Error::Protocol(format!("server speaks protocol {}", hello.version)));
    }
    if hello.shard_count == 0 || hello.shard_count > SHARDS_MAX {
        return Err(Error::Protocol(format!("server reports {} shards", hello.shard_count)));
    }
    if hello.shard >= hello.shard_count {
        return Err(Error::Protocol(format!(
            "server reports shard {} of {}",
            hello.shard, hello.shard_count
        )));
    }
    assert_eq!(
        hello.shard_ports.len(),
        usize::from(hello.shard_count),
        "the decoder reads one port per shard"
    );
    Ok(hello)
}

#[cfg(test)]
mod tests {
    use super::*;
    use tally_proto::frame::encode_error_frame;
    use tally_proto::{ErrorCode, Token};

    fn response(request_id: u64, replies: &[Reply]) -> BytesMut {
        let mut buf = BytesMut::new();
        let mut frame = FrameBuilder::begin(&mut buf, FrameKind::Response, request_id);
        for reply in replies {
            reply.encode(&mut buf);
            frame.op_added();
        }
        frame.finish(&mut buf);
        buf
    }

    fn token() -> Token {
        Token { shard: 0, lsn: 1 }
    }

    #[test]
    fn a_matching_response_decodes_in_order() {
        let replies = [
            Reply::Incr {
                value: 1,
                flags: 0,
                token: token(),
            },
            Reply::Get { value: 2, flags: 0 },
        ];
        let buf = response(9, &replies);
        let header = FrameHeader::parse(&buf).unwrap();
        let expected = expect(9, [Opcode::Incr, Opcode::Get].into_iter());
        check_header(&header, &expected).unwrap();
        let decoded = decode_frame(&header, &buf[16..], [Opcode::Incr, Opcode::Get].into_iter()).unwrap();
        assert_eq!(decoded.len(), 2);
        assert_eq!(decoded[1].as_ref().unwrap(), &replies[1]);
    }

    #[test]
    fn a_mismatched_request_id_is_a_protocol_error() {
        let buf = response(10, &[Reply::Get { value: 2, flags: 0 }]);
        let header = FrameHeader::parse(&buf).unwrap();
        let error = check_header(&header, &expect(9, [Opcode::Get].into_iter())).unwrap_err();
        assert!(
            matches!(error, Error::Protocol(ref m) if m.contains("request 10")),
            "{error}"
        );
    }

    #[test]
    fn a_wrong_op_count_or_opcode_is_a_protocol_error() {
        let buf = response(1, &[Reply::Get { value: 2, flags: 0 }]);
        let header = FrameHeader::parse(&buf).unwrap();
        assert!(check_header(&header, &expect(1, [Opcode::Get, Opcode::Get].into_iter())).is_err());
        let error = decode_frame(&header, &buf[16..], [Opcode::Incr].into_iter()).unwrap_err();
        assert!(matches!(error, Error::Protocol(_)));
    }

    #[test]
    fn an_oversized_response_is_refused_before_its_body_is_read() {
        let mut buf = response(1, &[Reply::Get { value: 2, flags: 0 }]);
        // Claim a body far larger than one GET reply can be.
        buf[0..4].copy_from_slice(&(1_000_000u32).to_le_bytes());
        let header = FrameHeader::parse(&buf).unwrap();
        assert!(check_header(&header, &expect(1, [Opcode::Get].into_iter())).is_err());
    }

    #[test]
    fn an_error_frame_fails_every_op_of_the_request() {
        let mut buf = BytesMut::new();
        encode_error_frame(&mut buf, 4, ErrorCode::Overloaded, "queue full");
        let header = FrameHeader::parse(&buf).unwrap();
        check_header(&header, &expect(4, [Opcode::Incr, Opcode::Incr].into_iter())).unwrap();
        let decoded = decode_frame(&header, &buf[16..], [Opcode::Incr, Opcode::Incr].into_iter()).unwrap();
        assert_eq!(decoded.len(), 2);
        for result in decoded {
            let error = result.unwrap_err();
            assert_eq!(error.error_code(), Some(ErrorCode::Overloaded));
            assert_eq!(error.message(), "queue full");
        }
    }

    #[test]
    fn hello_replies_are_validated() {
        let hello = HelloReply {
            version: PROTOCOL_VERSION,
            shard_count: 2,
            shard: 2,
            shard_ports: vec![1, 2],
            server: "x".into(),
        };
        assert!(hello_from_reply(Ok(Reply::Hello(hello.clone()))).is_err());
        let good = HelloReply { shard: 1, ..hello };
        assert_eq!(hello_from_reply(Ok(Reply::Hello(good.clone()))).unwrap(), good);
        assert!(hello_from_reply(Ok(Reply::Get { value: 0, flags: 0 })).is_err());
    }

    #[test]
    fn the_hello_frame_decodes_as_a_request() {
        let mut buf = BytesMut::new();
        let expected = encode_hello(&mut buf, b"billing");
        assert_eq!(expected.ops, 1);
        let header = FrameHeader::parse(&buf).unwrap();
        assert_eq!(header.check_request(), tally_proto::HeaderCheck::Serve);
        let mut ops = tally_proto::RequestOps::new(&buf[16..], header.op_count);
        let (_, op) = ops.next().unwrap();
        assert_eq!(op.unwrap(), Request::Hello { client: b"billing" });
    }
}
