//! A bounds-checked little-endian reader over a byte slice. Every read either returns a value or
//! `DecodeError::Invalid` with `ErrorCode::BadFrame`: inside a length-delimited frame or op, running
//! out of bytes means the peer sent a malformed value, never that more bytes will come.

use crate::error::{DecodeError, ErrorCode};

pub(crate) struct Cursor<'a> {
    buf: &'a [u8],
    pos: usize,
    what: &'static str,
}

impl<'a> Cursor<'a> {
    pub(crate) fn new(buf: &'a [u8], what: &'static str) -> Cursor<'a> {
        Cursor { buf, pos: 0, what }
    }

    pub(crate) fn remaining(&self) -> usize {
        self.buf.len() - self.pos
    }

    pub(crate) fn bytes(&mut self, len: usize) -> Result<&'a [u8], DecodeError> {
        if self.remaining() < len {
            return Err(DecodeError::invalid(
                ErrorCode::BadFrame,
                format!(
                    "{} truncated: wanted {} bytes, {} left",
                    self.what,
                    len,
                    self.remaining()
                ),
            ));
        }
        let out = &self.buf[self.pos..self.pos + len];
        self.pos += len;
        Ok(out)
    }

    pub(crate) fn rest(&mut self) -> &'a [u8] {
        let out = &self.buf[self.pos..];
        self.pos = self.buf.len();
        out
    }

    pub(crate) fn u8(&mut self) -> Result<u8, DecodeError> {
        Ok(self.bytes(1)?[0])
    }

    pub(crate) fn u16(&mut self) -> Result<u16, DecodeError> {
        Ok(u16::from_le_bytes(self.bytes(2)?.try_into().expect("2 bytes")))
    }

    pub(crate) fn u32(&mut self) -> Result<u32, DecodeError> {
        Ok(u32::from_le_bytes(self.bytes(4)?.try_into().expect("4 bytes")))
    }

    pub(crate) fn u64(&mut self) -> Result<u64, DecodeError> {
        Ok(u64::from_le_bytes(self.bytes(8)?.try_into().expect("8 bytes")))
    }

    pub(crate) fn i64(&mut self) -> Result<i64, DecodeError> {
        Ok(i64::from_le_bytes(self.bytes(8)?.try_into().expect("8 bytes")))
    }

    pub(crate) fn u128(&mut self) -> Result<u128, DecodeError> {
        Ok(u128::from_le_bytes(self.bytes(16)?.try_into().expect("16 bytes")))
    }

    /// A string with a u8 length prefix.
    pub(crate) fn str8(&mut self) -> Result<&'a [u8], DecodeError> {
        let len = self.u8()? as usize;
        self.bytes(len)
    }

    /// A string with a u16 length prefix.
    pub(crate) fn str16(&mut self) -> Result<&'a [u8], DecodeError> {
        let len = self.u16()? as usize;
        self.bytes(len)
    }

    /// Fails if bytes are left over: every op payload must be consumed exactly.
    pub(crate) fn finish(&self) -> Result<(), DecodeError> {
        if self.remaining() != 0 {
            return Err(DecodeError::invalid(
                ErrorCode::BadFrame,
                format!("{} has {} trailing bytes", self.what, self.remaining()),
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bad_frame(result: Result<impl std::fmt::Debug, DecodeError>) -> String {
        match result {
            Err(DecodeError::Invalid {
                code: ErrorCode::BadFrame,
                message,
            }) => message,
            other => panic!("expected BadFrame, got {other:?}"),
        }
    }

    #[test]
    fn reads_little_endian_integers_in_order() {
        let mut buf = vec![0xab];
        buf.extend_from_slice(&0x1234u16.to_le_bytes());
        buf.extend_from_slice(&0x0102_0304_0506_0708u64.to_le_bytes());
        buf.extend_from_slice(&(-2i64).to_le_bytes());
        buf.extend_from_slice(&(u128::MAX - 1).to_le_bytes());
        let mut c = Cursor::new(&buf, "test");
        assert_eq!(c.u8().unwrap(), 0xab);
        assert_eq!(c.u16().unwrap(), 0x1234);
        assert_eq!(c.u64().unwrap(), 0x0102_0304_0506_0708);
        assert_eq!(c.i64().unwrap(), -2);
        assert_eq!(c.u128().unwrap(), u128::MAX - 1);
        assert_eq!(c.remaining(), 0);
        c.finish().unwrap();
    }

    #[test]
    fn running_out_is_bad_frame_and_consumes_nothing() {
        let buf = [1u8, 2, 3];
        let mut c = Cursor::new(&buf, "thing");
        let message = bad_frame(c.u64());
        assert_eq!(message, "thing truncated: wanted 8 bytes, 3 left");
        assert_eq!(c.remaining(), 3, "a failed read does not advance");
        assert_eq!(c.u16().unwrap(), 0x0201);
    }

    #[test]
    fn length_prefixed_strings() {
        let buf = [2u8, b'h', b'i', 3, 0, b'a', b'b', b'c', 9];
        let mut c = Cursor::new(&buf, "s");
        assert_eq!(c.str8().unwrap(), b"hi");
        assert_eq!(c.str16().unwrap(), b"abc");
        assert_eq!(bad_frame(c.finish()), "s has 1 trailing bytes");
        assert_eq!(c.rest(), &[9]);
        assert_eq!(c.remaining(), 0);
        // A length that points past the end is malformed, not incomplete.
        let mut c = Cursor::new(&[5, b'x'], "s");
        bad_frame(c.str8());
    }
}
