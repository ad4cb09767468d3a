//! LEB128 varints and zigzag, the integer encodings of WAL log records, replication frames and window files.
//!
//! An unsigned varint stores 7 bits per byte, least significant group first, with the high bit set on
//! every byte but the last: 0..=127 take one byte, a u32 at most 5, a u64 at most 10. Signed values
//! are zigzag-mapped first (0, -1, 1, -2, ... → 0, 1, 2, 3, ...) so small deltas of either sign take
//! one byte.

/// The longest encoding of a u64.
pub const VARINT_BYTES_MAX: usize = 10;

/// Appends `value` as an unsigned LEB128 varint.
#[inline]
pub fn put_u64(buf: &mut Vec<u8>, mut value: u64) {
    while value >= 0x80 {
        buf.push((value as u8) | 0x80);
        value >>= 7;
    }
    buf.push(value as u8);
}

/// Appends `value` zigzag-mapped as a varint.
#[inline]
pub fn put_i64(buf: &mut Vec<u8>, value: i64) {
    put_u64(buf, zigzag(value));
}

/// Maps a signed value to an unsigned one with small magnitudes first.
#[inline]
pub fn zigzag(value: i64) -> u64 {
    ((value << 1) ^ (value >> 63)) as u64
}

/// The inverse of `zigzag`.
#[inline]
pub fn unzigzag(value: u64) -> i64 {
    ((value >> 1) as i64) ^ -((value & 1) as i64)
}

/// Reads a varint from the front of `bytes`; returns it and the bytes it took. `None` when the input
/// ends inside the varint or the value does not fit a u64 (an 11th byte, or high bits in the 10th).
#[inline]
pub fn get_u64(bytes: &[u8]) -> Option<(u64, usize)> {
    let mut value = 0u64;
    for (i, &byte) in bytes.iter().enumerate().take(VARINT_BYTES_MAX) {
        let low = u64::from(byte & 0x7f);
        if i == VARINT_BYTES_MAX - 1 && byte > 1 {
            return None;
        }
        value |= low << (7 * i);
        if byte & 0x80 == 0 {
            return Some((value, i + 1));
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn small_values_take_one_byte() {
        let mut buf = Vec::new();
        put_u64(&mut buf, 127);
        assert_eq!(buf, [127]);
        buf.clear();
        put_i64(&mut buf, -64);
        assert_eq!(buf.len(), 1);
        buf.clear();
        put_u64(&mut buf, u64::MAX);
        assert_eq!(buf.len(), VARINT_BYTES_MAX);
        assert_eq!(get_u64(&buf), Some((u64::MAX, VARINT_BYTES_MAX)));
    }

    #[test]
    fn overlong_and_truncated_are_refused() {
        assert_eq!(get_u64(&[0x80]), None);
        assert_eq!(get_u64(&[]), None);
        assert_eq!(get_u64(&[0xff; 10]), None);
        let mut eleven = vec![0x80; 10];
        eleven.push(0);
        assert_eq!(get_u64(&eleven), None);
    }

    proptest! {
        #[test]
        fn round_trip(value: u64, signed: i64) {
            let mut buf = Vec::new();
            put_u64(&mut buf, value);
            prop_assert_eq!(get_u64(&buf), Some((value, buf.len())));
            buf.clear();
            put_i64(&mut buf, signed);
            let (raw, used) = get_u64(&buf).unwrap();
            prop_assert_eq!(used, buf.len());
            prop_assert_eq!(unzigzag(raw), signed);
        }

        #[test]
        fn never_panics(bytes: Vec<u8>) {
            if let Some((_, used)) = get_u64(&bytes) {
                prop_assert!(used >= 1 && used <= bytes.len());
            }
        }
    }
}
