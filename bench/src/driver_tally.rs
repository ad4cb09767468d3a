//! Tally over its own binary protocol (`tally_proto` frames on a `TcpStream`), for exact per-frame
//! send-to-reply latency and open-loop pacing, which the SDK's `Pipeline` (submit all, then wait)
//! cannot give. Setup (HELLO on the main port, declaring the strict counters) goes through the SDK.
//!
//! Shard-aware runs connect connection c to shard `c % shard_count`'s own port (as announced in
//! HELLO) and check that the port answers for that shard; the workload then draws only that shard's
//! names (see workload.rs). Otherwise every connection goes to the main port, where the kernel
//! spreads connections over shards and the server forwards ops to their owners.

use std::collections::VecDeque;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream, ToSocketAddrs};
use std::time::Duration;

use bytes::BytesMut;
use tally_proto::frame::decode_error_frame;
use tally_proto::limits::FRAME_HEADER_BYTES;
use tally_proto::reply::REPLY_DUPLICATE;
use tally_proto::{
    decode_reply_op, DecodeError, ErrorCode, FrameBuilder, FrameHeader, FrameKind, HelloReply, Reply, Request,
};
use tally_sdk::{Client, CounterSpec};

use crate::connection::Wire;
use crate::error::BenchError;
use crate::limits::CONNECT_TIMEOUT_MS;
use crate::recorder::{OpReply, Outcome};
use crate::workload::{OpKind, PlannedOp, Target};

/// The name tally-bench gives itself in HELLO (the server shows it in STATS).
const CLIENT_NAME: &[u8] = b"tally-bench";

/// Request id of the HELLO every connection opens with; frames count up from 1.
const HELLO_REQUEST_ID: u64 = 0;

/// What setup learned about the node.
#[derive(Debug, Clone)]
pub struct TallyInfo {
    /// The main address as resolved.
    pub addr: SocketAddr,
    pub hello: HelloReply,
}

/// Resolves the address, says HELLO through the SDK, and declares the strict counters
/// `bench:strict:0..strict_names` (strict, floor 0) and sets each to `strict_initial`, whatever a
/// previous run left in them.
pub fn setup(addr: &str, strict_names: u32, strict_initial: i64) -> Result<TallyInfo, BenchError> {
    let resolved = addr
        .to_socket_addrs()
        .map_err(|e| BenchError::io(format!("resolving {addr}"), e))?
        .next()
        .ok_or_else(|| BenchError::Args(format!("{addr} resolves to no address")))?;
    let mut client = Client::builder()
        .client_name("tally-bench setup")
        .shard_aware(false)
        .connect(&resolved.to_string())?;
    let hello = client.hello().clone();
    let mut name = Vec::new();
    for index in 0..strict_names {
        name.clear();
        Target::Strict(index).write_name(&mut name);
        let created = client.create(&name, CounterSpec::strict().min(0).initial(strict_initial))?;
        if !created.strict {
            return Err(BenchError::Setup(format!(
                "{} exists and is not strict",
                String::from_utf8_lossy(&name)
            )));
        }
        client.reset(
            &name,
            strict_initial,
            "tally-bench: strict counters start at --strict-initial",
        )?;
    }
    Ok(TallyInfo { addr: resolved, hello })
}

/// Opens one benchmark connection: to the main port, or to `shard`'s own port, and says HELLO.
pub fn connect(info: &TallyInfo, shard: Option<u16>) -> Result<TcpStream, BenchError> {
    let addr = match shard {
        None => info.addr,
        Some(shard) => SocketAddr::new(info.addr.ip(), info.hello.shard_ports[usize::from(shard)]),
    };
    let mut stream = TcpStream::connect_timeout(&addr, Duration::from_millis(CONNECT_TIMEOUT_MS))
        .map_err(|e| BenchError::io(format!("connecting to {addr}"), e))?;
    stream
        .set_nodelay(true)
        .map_err(|e| BenchError::io("setting TCP_NODELAY", e))?;
    stream
        .set_read_timeout(Some(Duration::from_millis(CONNECT_TIMEOUT_MS)))
        .map_err(|e| BenchError::io("setting the read timeout", e))?;
    let hello = hello(&mut stream)?;
    if let Some(shard) = shard {
        if hello.shard != shard || hello.shard_count != info.hello.shard_count {
            return Err(BenchError::Setup(format!(
                "port {} answered as shard {} of {}, expected shard {shard} of {}",
                addr.port(),
                hello.shard,
                hello.shard_count,
                info.hello.shard_count
            )));
        }
    }
    Ok(stream)
}

/// The HELLO exchange on a fresh connection.
fn hello(stream: &mut TcpStream) -> Result<HelloReply, BenchError> {
    let mut out = BytesMut::new();
    let mut frame = FrameBuilder::begin(&mut out, FrameKind::Request, HELLO_REQUEST_ID);
    Request::Hello { client: CLIENT_NAME }.encode(&mut out);
    frame.op_added();
    frame.finish(&mut out);
    stream.write_all(&out).map_err(|e| BenchError::io("sending HELLO", e))?;
    let mut header = [0u8; FRAME_HEADER_BYTES];
    stream
        .read_exact(&mut header)
        .map_err(|e| BenchError::io("reading the HELLO reply", e))?;
    let parsed = FrameHeader::parse(&header).map_err(|e| BenchError::Protocol(e.to_string()))?;
    let mut body = vec![0u8; parsed.body_len.min(64 * 1024) as usize];
    stream
        .read_exact(&mut body)
        .map_err(|e| BenchError::io("reading the HELLO reply", e))?;
    match (parsed.frame_kind(), decode_reply_op(&body)) {
        (Some(FrameKind::Response), Ok((op, _))) => match op.result {
            Ok(Reply::Hello(hello)) => Ok(hello),
            other => Err(BenchError::Setup(format!("HELLO answered with {other:?}"))),
        },
        (Some(FrameKind::Error), _) => {
            let (code, message) = decode_error_frame(&body).map_err(|e| BenchError::Protocol(e.to_string()))?;
            Err(BenchError::Setup(format!(
                "HELLO refused: {} {message}",
                code_name(code)
            )))
        }
        (kind, decoded) => Err(BenchError::Protocol(format!("HELLO reply {kind:?}: {decoded:?}"))),
    }
}

/// Tally's frames: `Request` ops out, `decode_reply_op` in.
#[derive(Debug, Default)]
pub struct TallyWire {
    request_id_next: u64,
    /// Request ids of the frames in flight, oldest first.
    in_flight: VecDeque<u64>,
    name: Vec<u8>,
}

impl TallyWire {
    pub fn new() -> TallyWire {
        TallyWire {
            request_id_next: HELLO_REQUEST_ID + 1,
            ..TallyWire::default()
        }
    }
}

impl Wire for TallyWire {
    fn encode_frame(&mut self, ops: &[PlannedOp], out: &mut BytesMut) {
        let request_id = self.request_id_next;
        self.request_id_next += 1;
        self.in_flight.push_back(request_id);
        let mut frame = FrameBuilder::begin(out, FrameKind::Request, request_id);
        for op in ops {
            self.name.clear();
            op.target.write_name(&mut self.name);
            let name = &self.name[..];
            let request = match op.kind {
                OpKind::Incr => Request::Incr {
                    name,
                    delta: 1,
                    key: op.key,
                },
                OpKind::Get => Request::Get {
                    name,
                    fresh: false,
                    token: None,
                },
                OpKind::Cas => Request::Cas {
                    name,
                    expected: op.expected,
                    new: op.expected.saturating_sub(1),
                },
                OpKind::Add => Request::AddBounded {
                    name,
                    delta: -1,
                    min: 0,
                    max: i64::MAX,
                    key: None,
                },
            };
            request.encode(out);
            frame.op_added();
        }
        frame.finish(out);
    }

    fn decode_frame(
        &mut self,
        input: &[u8],
        ops: usize,
        replies: &mut Vec<OpReply>,
    ) -> Result<Option<usize>, BenchError> {
        let header = match FrameHeader::parse(input) {
            Ok(header) => header,
            Err(DecodeError::Incomplete { .. }) => return Ok(None),
            Err(error) => return Err(BenchError::Protocol(error.to_string())),
        };
        let frame_bytes = FRAME_HEADER_BYTES + header.body_len as usize;
        if input.len() < frame_bytes {
            return Ok(None);
        }
        let expected_id = *self.in_flight.front().expect("a frame in flight");
        if header.request_id != expected_id {
            return Err(BenchError::Protocol(format!(
                "reply to request {} while {expected_id} is the oldest in flight",
                header.request_id
            )));
        }
        let body = &input[FRAME_HEADER_BYTES..frame_bytes];
        match header.frame_kind() {
            Some(FrameKind::Response) => {
                if usize::from(header.op_count) != ops {
                    return Err(BenchError::Protocol(format!(
                        "{} replies to a frame of {ops} ops",
                        header.op_count
                    )));
                }
                let mut pos = 0;
                for _ in 0..ops {
                    let (op, used) = decode_reply_op(&body[pos..]).map_err(|e| BenchError::Protocol(e.to_string()))?;
                    pos += used;
                    replies.push(op_reply(op.opcode, op.result)?);
                }
                if pos != body.len() {
                    return Err(BenchError::Protocol(format!(
                        "{} trailing bytes in a reply frame",
                        body.len() - pos
                    )));
                }
            }
            Some(FrameKind::Error) => {
                let (code, message) = decode_error_frame(body).map_err(|e| BenchError::Protocol(e.to_string()))?;
                for _ in 0..ops {
                    replies.push(OpReply {
                        echoed: None,
                        outcome: Outcome::Failed(code_name(code)),
                        value: None,
                        message: Some(message.clone()),
                    });
                }
            }
            _ => {
                return Err(BenchError::Protocol(format!(
                    "frame kind {} from the server",
                    header.kind
                )))
            }
        }
        self.in_flight.pop_front();
        Ok(Some(frame_bytes))
    }
}

/// One reply op as the recorder sees it.
fn op_reply(opcode: u8, result: Result<Reply, tally_proto::OpError>) -> Result<OpReply, BenchError> {
    let echoed = match tally_proto::Opcode::from_u8(opcode) {
        Some(tally_proto::Opcode::Incr) => OpKind::Incr,
        Some(tally_proto::Opcode::Get) => OpKind::Get,
        Some(tally_proto::Opcode::Cas) => OpKind::Cas,
        Some(tally_proto::Opcode::AddBounded) => OpKind::Add,
        _ => return Err(BenchError::Protocol(format!("reply opcode 0x{opcode:02x}"))),
    };
    Ok(match result {
        // A duplicate applied nothing: with keys unique per run it means a bug, so it is counted.
        Ok(Reply::Incr { value, flags, .. }) if flags & REPLY_DUPLICATE != 0 => OpReply {
            outcome: Outcome::Refused("duplicate"),
            ..OpReply::ok(Some(echoed), Some(value))
        },
        Ok(Reply::Incr { value, .. } | Reply::Get { value, .. } | Reply::Cas { value, .. }) => {
            OpReply::ok(Some(echoed), Some(value))
        }
        Ok(Reply::AddBounded { value, .. }) => OpReply::ok(Some(echoed), Some(value)),
        Ok(other) => return Err(BenchError::Protocol(format!("unexpected reply {other:?}"))),
        Err(error) => {
            let code = error.error_code();
            let outcome = match code {
                Some(ErrorCode::BoundViolation | ErrorCode::CasMismatch) => Outcome::Refused(code_name(error.code)),
                _ => Outcome::Failed(code_name(error.code)),
            };
            OpReply {
                echoed: Some(echoed),
                outcome,
                value: error.current,
                message: Some(error.message),
            }
        }
    })
}

/// The stable name of a wire error code; `unknown_code` for a code newer than this build.
fn code_name(code: u16) -> &'static str {
    ErrorCode::from_u16(code).map_or("unknown_code", ErrorCode::name)
}

#[cfg(test)]
mod tests {
    use super::*;
    use tally_proto::reply::encode_error_reply;
    use tally_proto::{RequestOps, Token};

    fn op(kind: OpKind, target: Target) -> PlannedOp {
        PlannedOp {
            kind,
            target,
            key: None,
            expected: 10,
        }
    }

    #[test]
    fn frames_carry_the_planned_ops() {
        let mut wire = TallyWire::new();
        let mut out = BytesMut::new();
        let ops = [
            PlannedOp {
                key: Some(99),
                ..op(OpKind::Incr, Target::Name(3))
            },
            op(OpKind::Get, Target::Name(4)),
            op(OpKind::Cas, Target::Strict(0)),
            op(OpKind::Add, Target::Strict(1)),
        ];
        wire.encode_frame(&ops, &mut out);
        let header = FrameHeader::parse(&out).unwrap();
        assert_eq!((header.request_id, header.op_count), (1, 4));
        assert_eq!(header.frame_kind(), Some(FrameKind::Request));
        let requests: Vec<_> = RequestOps::new(&out[FRAME_HEADER_BYTES..], 4)
            .map(|(_, r)| r.unwrap())
            .collect();
        assert_eq!(
            requests,
            [
                Request::Incr {
                    name: b"bench:3",
                    delta: 1,
                    key: Some(99)
                },
                Request::Get {
                    name: b"bench:4",
                    fresh: false,
                    token: None
                },
                Request::Cas {
                    name: b"bench:strict:0",
                    expected: 10,
                    new: 9
                },
                Request::AddBounded {
                    name: b"bench:strict:1",
                    delta: -1,
                    min: 0,
                    max: i64::MAX,
                    key: None
                },
            ]
        );
    }

    fn reply_frame(request_id: u64, build: impl FnOnce(&mut BytesMut) -> u16) -> BytesMut {
        let mut buf = BytesMut::new();
        let mut frame = FrameBuilder::begin(&mut buf, FrameKind::Response, request_id);
        for _ in 0..build(&mut buf) {
            frame.op_added();
        }
        frame.finish(&mut buf);
        buf
    }

    #[test]
    fn replies_decode_to_outcomes_and_values() {
        let mut wire = TallyWire::new();
        let mut out = BytesMut::new();
        wire.encode_frame(
            &[op(OpKind::Incr, Target::Name(1)), op(OpKind::Add, Target::Strict(0))],
            &mut out,
        );
        let token = Token { shard: 0, lsn: 5 };
        let frame = reply_frame(1, |buf| {
            Reply::Incr {
                value: 7,
                flags: 0,
                token,
            }
            .encode(buf);
            encode_error_reply(buf, 0x06, ErrorCode::BoundViolation, Some(0), "would cross 0");
            2
        });
        let mut replies = Vec::new();
        for cut in 0..frame.len() {
            assert_eq!(wire.decode_frame(&frame[..cut], 2, &mut replies).unwrap(), None);
        }
        assert_eq!(wire.decode_frame(&frame, 2, &mut replies).unwrap(), Some(frame.len()));
        assert_eq!(replies[0], OpReply::ok(Some(OpKind::Incr), Some(7)));
        assert_eq!(replies[1].outcome, Outcome::Refused("bound_violation"));
        assert_eq!(replies[1].value, Some(0));
        assert_eq!(replies[1].echoed, Some(OpKind::Add));
    }

    #[test]
    fn a_duplicate_ack_is_counted_as_not_applied() {
        let token = Token { shard: 1, lsn: 9 };
        let duplicate = Reply::Incr {
            value: 3,
            flags: REPLY_DUPLICATE,
            token,
        };
        let reply = op_reply(0x02, Ok(duplicate)).unwrap();
        assert_eq!((reply.outcome, reply.value), (Outcome::Refused("duplicate"), Some(3)));
        let fresh = Reply::Incr {
            value: 4,
            flags: 0,
            token,
        };
        assert_eq!(op_reply(0x02, Ok(fresh)).unwrap().outcome, Outcome::Ok);
        assert!(
            op_reply(0x01, Ok(Reply::Get { value: 0, flags: 0 })).is_err(),
            "HELLO is never sent mid-run"
        );
    }

    #[test]
    fn error_frames_fail_every_op_and_mismatched_ids_are_protocol_errors() {
        let mut wire = TallyWire::new();
        let mut out = BytesMut::new();
        wire.encode_frame(&[op(OpKind::Incr, Target::Name(1)); 3], &mut out);
        wire.encode_frame(&[op(OpKind::Incr, Target::Name(1))], &mut out);
        let mut error = BytesMut::new();
        tally_proto::frame::encode_error_frame(&mut error, 1, ErrorCode::Overloaded, "busy");
        let mut replies = Vec::new();
        assert_eq!(wire.decode_frame(&error, 3, &mut replies).unwrap(), Some(error.len()));
        assert_eq!(replies.len(), 3);
        assert!(replies.iter().all(|r| r.outcome == Outcome::Failed("overloaded")));
        assert_eq!(replies[0].message.as_deref(), Some("busy"));
        let wrong_id = reply_frame(7, |buf| {
            Reply::Get { value: 1, flags: 0 }.encode(buf);
            1
        });
        assert!(matches!(
            wire.decode_frame(&wrong_id, 1, &mut replies),
            Err(BenchError::Protocol(_))
        ));
    }
}
