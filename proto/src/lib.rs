//! Tally's wire protocol, version 1: the frame header, request and reply ops, stable error codes,
//! the wire limits, and the name-to-shard hash every client and server must agree on.
//!
//! This crate owns the bytes and nothing else: no sockets, no glommio, no allocation on the decode
//! path for requests (ops borrow from the frame). Decoding never panics on any input: it returns
//! `DecodeError::Incomplete` when more bytes are needed and `DecodeError::Invalid` with the error
//! code the server answers with. The full specification is docs/protocol.md.

mod cursor;
pub mod error;
pub mod frame;
pub mod history;
pub mod limits;
pub mod reply;
pub mod request;
mod routing;
pub mod varint;

pub use error::{DecodeError, ErrorCode};
pub use frame::{FrameBuilder, FrameHeader, FrameKind, HeaderCheck, PROTOCOL_VERSION};
pub use history::{AuditRecord, Event, EventKind, SeriesStep, WindowUnit};
pub use reply::{decode_reply_op, encode_error_reply, HelloReply, OpError, Reply, ReplyOp, StatsReply};
pub use request::{check_name, CounterKind, Opcode, Request, RequestOps, Token};
pub use routing::{name_hash, shard_of};
