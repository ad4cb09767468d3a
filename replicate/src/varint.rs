//! LEB128 varints and zigzag, as in the WAL's record entries (docs/wal.md): 7 bits per byte, low
//! group first, high bit = more; at most 10 bytes, the 10th at most 1. Signed values are zigzag-mapped
//! first so small magnitudes of either sign take one byte.

const VARINT_BYTES_MAX: usize = 10;

pub(crate) fn put_u64(buf: &mut Vec<u8>, mut value: u64) {
    while value >= 0x80 {
        buf.push((value as u8) | 0x80);
        value >>= 7;
    }
    buf.push(value as u8);
}

pub(crate) fn put_i64(buf: &mut Vec<u8>, value: i64) {
    put_u64(buf, ((value << 1) ^ (value >> 63)) as u64);
}

pub(crate) fn unzigzag(value: u64) -> i64 {
    ((value >> 1) as i64) ^ -((value & 1) as i64)
}

/// The value and the bytes it took; `None` if the input ends inside it or it overflows a u64.
pub(crate) fn get_u64(bytes: &[u8]) -> Option<(u64, usize)> {
    let mut value = 0u64;
    for (i, &byte) in bytes.iter().enumerate().take(VARINT_BYTES_MAX) {
        if i == VARINT_BYTES_MAX - 1 && byte > 1 {
            return None;
        }
        value |= u64::from(byte & 0x7f) << (7 * i);
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
    fn limits_of_the_encoding() {
        let mut buf = Vec::new();
        put_u64(&mut buf, u64::MAX);
        assert_eq!(buf.len(), VARINT_BYTES_MAX);
        assert_eq!(get_u64(&buf), Some((u64::MAX, VARINT_BYTES_MAX)));
        assert_eq!(get_u64(&[0x80]), None);
        assert_eq!(get_u64(&[0xff; 10]), None);
    }

    proptest! {
        #[test]
        fn round_trip(value: u64, signed: i64) {
            let mut buf = Vec::new();
            put_u64(&mut buf, value);
            prop_assert_eq!(get_u64(&buf), Some((value, buf.len())));
            buf.clear();
            put_i64(&mut buf, signed);
            let (raw, _) = get_u64(&buf).unwrap();
            prop_assert_eq!(unzigzag(raw), signed);
        }
    }
}
