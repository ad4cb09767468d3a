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
