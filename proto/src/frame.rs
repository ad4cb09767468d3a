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
        // In u64: the fields are public, so `body_len` may be anything up to u32::MAX and the sum
        // must not wrap (a wrapped sum would let a 4 GiB frame through in release builds).
        let len = u64::from(self.body_len) + (FRAME_HEADER_BYTES as u64 - 4);
        if len > u64::from(FRAME_BYTES_MAX) {
            return HeaderCheck::Refuse {
                code: ErrorCode::FrameTooLarge,
                message: format!("frame of {len} bytes exceeds FRAME_BYTES_MAX {FRAME_BYTES_MAX}"),
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

#[cfg(test)]
mod tests {
    use super::*;

    fn header(len: u32, version: u8, kind: u8, op_count: u16, request_id: u64) -> Vec<u8> {
        let mut buf = Vec::new();
        buf.extend_from_slice(&len.to_le_bytes());
        buf.push(version);
        buf.push(kind);
        buf.extend_from_slice(&op_count.to_le_bytes());
        buf.extend_from_slice(&request_id.to_le_bytes());
        buf
    }

    fn request_header(body_len: u32, op_count: u16) -> FrameHeader {
        FrameHeader {
            body_len,
            version: PROTOCOL_VERSION,
            kind: FrameKind::Request as u8,
            op_count,
            request_id: 7,
        }
    }

    fn refused(check: HeaderCheck) -> ErrorCode {
        match check {
            HeaderCheck::Refuse { code, .. } => code,
            HeaderCheck::Serve => panic!("expected a refusal"),
        }
    }

    #[test]
    fn parse_reads_every_field() {
        let buf = header(12 + 5, 1, 1, 3, 0x0102_0304_0506_0708);
        let h = FrameHeader::parse(&buf).unwrap();
        assert_eq!(
            h,
            FrameHeader {
                body_len: 5,
                version: 1,
                kind: 1,
                op_count: 3,
                request_id: 0x0102_0304_0506_0708
            }
        );
        assert_eq!(h.frame_kind(), Some(FrameKind::Request));
    }

    #[test]
    fn parse_needs_sixteen_bytes_and_says_how_many_more() {
        let buf = header(12, 1, 1, 0, 0);
        for have in 0..FRAME_HEADER_BYTES {
            assert_eq!(
                FrameHeader::parse(&buf[..have]),
                Err(DecodeError::Incomplete {
                    needed: FRAME_HEADER_BYTES - have
                })
            );
        }
        // The header alone is enough: parse never asks for the body.
        assert_eq!(FrameHeader::parse(&buf).unwrap().body_len, 0);
    }

    #[test]
    fn length_prefix_below_twelve_is_invalid() {
        for len in 0..12 {
            match FrameHeader::parse(&header(len, 1, 1, 0, 0)) {
                Err(DecodeError::Invalid {
                    code: ErrorCode::BadFrame,
                    ..
                }) => {}
                other => panic!("length {len}: {other:?}"),
            }
        }
        assert!(FrameHeader::parse(&header(12, 1, 1, 0, 0)).is_ok());
        let max = FrameHeader::parse(&header(u32::MAX, 1, 1, 0, 0)).unwrap();
        assert_eq!(max.body_len, u32::MAX - 12);
    }

    #[test]
    fn check_request_serves_a_valid_request() {
        assert_eq!(request_header(0, 0).check_request(), HeaderCheck::Serve);
        let largest = FRAME_BYTES_MAX - 12;
        assert_eq!(
            request_header(largest, OPS_PER_FRAME_MAX).check_request(),
            HeaderCheck::Serve
        );
    }

    #[test]
    fn check_request_refusals() {
        let mut h = request_header(10, 1);
        h.version = 2;
        assert_eq!(refused(h.check_request()), ErrorCode::UnsupportedVersion);
        h.version = 0;
        assert_eq!(refused(h.check_request()), ErrorCode::UnsupportedVersion);

        assert_eq!(
            refused(request_header(FRAME_BYTES_MAX - 11, 1).check_request()),
            ErrorCode::FrameTooLarge
        );
        // The largest body a length prefix can declare must not wrap the size check.
        assert_eq!(
            refused(request_header(u32::MAX - 12, 1).check_request()),
            ErrorCode::FrameTooLarge
        );
        assert_eq!(
            refused(request_header(u32::MAX, 1).check_request()),
            ErrorCode::FrameTooLarge
        );

        for kind in [0u8, FrameKind::Response as u8, FrameKind::Error as u8, 4, 255] {
            let mut h = request_header(10, 1);
            h.kind = kind;
            assert_eq!(refused(h.check_request()), ErrorCode::BadFrame, "kind {kind}");
        }

        assert_eq!(
            refused(request_header(10, OPS_PER_FRAME_MAX + 1).check_request()),
            ErrorCode::TooManyOps
        );
        assert_eq!(
            refused(request_header(10, u16::MAX).check_request()),
            ErrorCode::TooManyOps
        );
    }

    #[test]
    fn check_request_order_is_version_size_kind_count() {
        let h = FrameHeader {
            body_len: FRAME_BYTES_MAX,
            version: 9,
            kind: 9,
            op_count: u16::MAX,
            request_id: 0,
        };
        assert_eq!(refused(h.check_request()), ErrorCode::UnsupportedVersion);
        let h = FrameHeader { version: 1, ..h };
        assert_eq!(refused(h.check_request()), ErrorCode::FrameTooLarge);
        let h = FrameHeader { body_len: 0, ..h };
        assert_eq!(refused(h.check_request()), ErrorCode::BadFrame);
        let h = FrameHeader { kind: 1, ..h };
        assert_eq!(refused(h.check_request()), ErrorCode::TooManyOps);
    }

    #[test]
    fn builder_patches_length_and_count_of_back_to_back_frames() {
        let mut buf = BytesMut::from(&b"xyz"[..]);
        let mut first = FrameBuilder::begin(&mut buf, FrameKind::Response, 11);
        buf.put_slice(&[1, 2, 3, 4]);
        first.op_added();
        first.op_added();
        assert_eq!(first.op_count(), 2);
        first.finish(&mut buf);
        let second = FrameBuilder::begin(&mut buf, FrameKind::Request, 12);
        second.finish(&mut buf);

        assert_eq!(&buf[..3], b"xyz", "bytes before the frame are untouched");
        let h1 = FrameHeader::parse(&buf[3..]).unwrap();
        assert_eq!(h1.body_len, 4);
        assert_eq!(h1.op_count, 2);
        assert_eq!(h1.request_id, 11);
        assert_eq!(h1.version, PROTOCOL_VERSION);
        assert_eq!(h1.frame_kind(), Some(FrameKind::Response));
        let h2 = FrameHeader::parse(&buf[3 + 16 + 4..]).unwrap();
        assert_eq!(h2.body_len, 0);
        assert_eq!(h2.op_count, 0);
        assert_eq!(h2.request_id, 12);
        assert_eq!(buf.len(), 3 + 16 + 4 + 16);
    }

    #[test]
    fn error_frame_layout() {
        let mut buf = BytesMut::new();
        encode_error_frame(&mut buf, 0xaabb, ErrorCode::TooManyOps, "hi");
        let mut expected = header(12 + 2 + 2 + 2, 1, 3, 0, 0xaabb);
        expected.extend_from_slice(&[3, 0, 2, 0, b'h', b'i']);
        assert_eq!(&buf[..], &expected[..]);
        assert_eq!(decode_error_frame(&buf[16..]).unwrap(), (3, "hi".to_string()));
    }

    #[test]
    fn error_frame_decoding_refuses_short_and_long_bodies() {
        for body in [&[][..], &[1], &[1, 0], &[1, 0, 1], &[1, 0, 2, 0, b'a']] {
            assert!(decode_error_frame(body).is_err(), "{body:?}");
        }
        assert!(decode_error_frame(&[1, 0, 0, 0, 0]).is_err(), "trailing byte");
        assert_eq!(decode_error_frame(&[1, 0, 0, 0]).unwrap(), (1, String::new()));
    }

    #[test]
    fn messages_are_cut_at_a_char_boundary() {
        let max = crate::limits::ERROR_MESSAGE_BYTES_MAX;
        assert_eq!(truncate_message("short"), b"short");
        let exact = "a".repeat(max);
        assert_eq!(truncate_message(&exact).len(), max);
        // 'é' is two bytes: with one ASCII byte in front, byte `max` falls inside a character.
        let message = format!("a{}", "é".repeat(max));
        let cut = truncate_message(&message);
        assert_eq!(cut.len(), max - 1);
        assert!(std::str::from_utf8(cut).is_ok());
        assert!(message.as_bytes().starts_with(cut));
    }
}
