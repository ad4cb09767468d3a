//! The frame header and the frame builder.
//!
//! ```text
//! 0      4        5      6          8              16
//! | len  | version| kind | op_count | request_id   | body ...
//!   u32     u8      u8      u16        u64
//! ```
//! `len` counts the bytes after itself (12 header bytes + body). All integers little-endian.

use bytes::{BufMut, BytesMut};

use crate::error::{DecodeError, ErrorCode};
use crate::limits::{FRAME_BYTES_MAX, FRAME_HEADER_BYTES, OPS_PER_FRAME_MAX};

/// The only protocol version this crate speaks.
pub const PROTOCOL_VERSION: u8 = 1;

/// What a frame carries.
#[repr(u8)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FrameKind {
    /// Client to server: `op_count` request ops.
    Request = 1,
    /// Server to client: exactly one reply op per request op, in request order.
    Response = 2,
    /// Server to client: the whole request frame was refused. Body: code u16, message str16.
    /// `op_count` is 0.
    Error = 3,
}

impl FrameKind {
    fn from_u8(kind: u8) -> Option<FrameKind> {
        match kind {
            1 => Some(FrameKind::Request),
            2 => Some(FrameKind::Response),
            3 => Some(FrameKind::Error),
            _ => None,
        }
    }
}

/// A decoded frame header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FrameHeader {
    /// Bytes of body after the 16-byte header.
    pub body_len: u32,
    pub version: u8,
    pub kind: u8,
    pub op_count: u16,
    pub request_id: u64,
}

/// What to do with a frame whose header was read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HeaderCheck {
    /// Serve it: read `body_len` bytes and decode the ops.
    Serve,
    /// Refuse the frame with this error but keep the connection: skip `body_len` body bytes.
    Refuse { code: ErrorCode, message: String },
}

impl FrameHeader {
    /// Parses a header from the front of `buf`. `Incomplete` if fewer than 16 bytes are present.
    /// `Invalid` only if the length prefix is smaller than the header itself, in which case the
    /// stream cannot be resynchronised and the connection must be closed.
    pub fn parse(buf: &[u8]) -> Result<FrameHeader, DecodeError> {
        if buf.len() < FRAME_HEADER_BYTES {
            return Err(DecodeError::Incomplete {
                needed: FRAME_HEADER_BYTES - buf.len(),
            });
        }
        let len = u32::from_le_bytes(buf[0..4].try_into().expect("4 bytes"));
        if (len as usize) < FRAME_HEADER_BYTES - 4 {
            return Err(DecodeError::invalid(
                ErrorCode::BadFrame,
                format!("frame length {len} is shorter than the 12-byte header"),
            ));
        }
        Ok(FrameHeader {
            body_len: len - (FRAME_HEADER_BYTES as u32 - 4),
            version: buf[4],
            kind: buf[5],
            op_count: u16::from_le_bytes(buf[6..8].try_into().expect("2 bytes")),
            request_id: u64::from_le_bytes(buf[8..16].try_into().expect("8 bytes")),
        })
    }

    /// The frame kind, if the byte is a known one.
    pub fn frame_kind(&self) -> Option<FrameKind> {
        FrameKind::from_u8(self.kind)
    }

    /// The checks a server makes before reading a request body. Each refusal is answered with an
    /// error frame and the body is skipped, so the connection carries on.
    pub fn check_request(&self) -> HeaderCheck {
        if self.version != PROTOCOL_VERSION {
            return HeaderCheck::Refuse {
                code: ErrorCode::UnsupportedVersion,
                message: format!(
                    "protocol version {} (this node speaks {PROTOCOL_VERSION})",
                    self.version
                ),
            };
        }
        if self.body_len + (FRAME_HEADER_BYTES as u32 - 4) > FRAME_BYTES_MAX {
            return HeaderCheck::Refuse {
                code: ErrorCode::FrameTooLarge,
                message: format!(
                    "frame of {} bytes exceeds FRAME_BYTES_MAX {FRAME_BYTES_MAX}",
                    self.body_len
                ),
            };
        }
        if self.frame_kind() != Some(FrameKind::Request) {
            return HeaderCheck::Refuse {
                code: ErrorCode::BadFrame,
                message: format!("frame kind {} is not a request", self.kind),
            };
        }
        if self.op_count > OPS_PER_FRAME_MAX {
            return HeaderCheck::Refuse {
                code: ErrorCode::TooManyOps,
                message: format!("{} ops exceed OPS_PER_FRAME_MAX {OPS_PER_FRAME_MAX}", self.op_count),
            };
        }
        HeaderCheck::Serve
    }
}

/// Appends one frame to a buffer: `begin` writes a header with placeholders, callers append ops,
/// `finish` patches the length and op count. Several frames may be built back to back in one
/// buffer, which is how the server coalesces replies into one socket write.
#[derive(Debug)]
pub struct FrameBuilder {
    start: usize,
    op_count: u16,
}

impl FrameBuilder {
    pub fn begin(buf: &mut BytesMut, kind: FrameKind, request_id: u64) -> FrameBuilder {
        let start = buf.len();
        buf.put_u32_le(0);
        buf.put_u8(PROTOCOL_VERSION);
        buf.put_u8(kind as u8);
        buf.put_u16_le(0);
        buf.put_u64_le(request_id);
        FrameBuilder { start, op_count: 0 }
    }

    /// Counts one op appended by the caller.
    pub fn op_added(&mut self) {
        self.op_count = self.op_count.checked_add(1).expect("op count fits in u16");
    }

    pub fn op_count(&self) -> u16 {
        self.op_count
    }

    pub fn finish(self, buf: &mut BytesMut) {
        let len = buf.len() - self.start - 4;
        assert!(len >= FRAME_HEADER_BYTES - 4);
        let len = u32::try_from(len).expect("frame length fits in u32");
        buf[self.start..self.start + 4].copy_from_slice(&len.to_le_bytes());
        buf[self.start + 6..self.start + 8].copy_from_slice(&self.op_count.to_le_bytes());
    }
}

/// Appends a whole error frame refusing request `request_id`.
pub fn encode_error_frame(buf: &mut BytesMut, request_id: u64, code: ErrorCode, message: &str) {
    let frame = FrameBuilder::begin(buf, FrameKind::Error, request_id);
    buf.put_u16_le(code as u16);
    let message = truncate_message(message);
    buf.put_u16_le(message.len() as u16);
    buf.put_slice(message);
    frame.finish(buf);
}

/// Decodes the body of an error frame.
pub fn decode_error_frame(body: &[u8]) -> Result<(u16, String), DecodeError> {
    let mut cursor = crate::cursor::Cursor::new(body, "error frame");
    let code = cursor.u16()?;
    let message = String::from_utf8_lossy(cursor.str16()?).into_owned();
    cursor.finish()?;
    Ok((code, message))
}

pub(crate) fn truncate_message(message: &str) -> &[u8] {
    let max = crate::limits::ERROR_MESSAGE_BYTES_MAX;
    if message.len() <= max {
        return message.as_bytes();
    }
    let mut end = max;
    while !message.is_char_boundary(end) {
        end -= 1;
    }
    &message.as_bytes()[..end]
}
