//! LEB128 varints (7 bits per byte, low bits first, high bit = more) and zigzag for signed values:
//! the integer encoding of the window slices in memory and of the window files on disk. A u64
//! takes at most 10 bytes; small gaps and small sums (the common case) take one.

pub use tally_proto::varint::{put_i64, unzigzag};

/// Appends `v` (the workspace's one varint encoder, `tally_proto::varint`).
#[inline]
pub fn put(out: &mut Vec<u8>, v: u64) {
    tally_proto::varint::put_u64(out, v);
}

/// Reads a varint at `*at`, moving `*at` past it. `None` if the bytes end inside it or it does not
/// fit a u64 (more than 10 bytes, or a 10th byte above 1): never panics.
#[inline]
pub fn get(bytes: &[u8], at: &mut usize) -> Option<u64> {
    let (v, len) = tally_proto::varint::get_u64(bytes.get(*at..)?)?;
    *at += len;
    Some(v)
}

#[inline]
pub fn get_i64(bytes: &[u8], at: &mut usize) -> Option<i64> {
    get(bytes, at).map(unzigzag)
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;
    use tally_proto::varint::{zigzag, VARINT_BYTES_MAX};

    #[test]
    fn edges_round_trip() {
        for v in [0, 1, 127, 128, 16_383, 16_384, u64::MAX - 1, u64::MAX] {
            let mut out = Vec::new();
            put(&mut out, v);
            let mut at = 0;
            assert_eq!(get(&out, &mut at), Some(v));
            assert_eq!(at, out.len());
        }
        let mut out = Vec::new();
        put(&mut out, u64::MAX);
        assert_eq!(out.len(), VARINT_BYTES_MAX);
        for v in [0, 1, -1, i64::MAX, i64::MIN] {
            assert_eq!(unzigzag(zigzag(v)), v);
        }
        assert_eq!(zigzag(-1), 1);
        assert_eq!(zigzag(1), 2);
    }

    #[test]
    fn bad_varints_are_none() {
        assert_eq!(get(&[0x80], &mut 0), None);
        assert_eq!(get(&[0xff; 11], &mut 0), None);
        // A 10th byte above 1 would overflow a u64.
        let mut over = vec![0xff; 9];
        over.push(0x02);
        assert_eq!(get(&over, &mut 0), None);
    }

    proptest! {
        #[test]
        fn signed_round_trip(v in any::<i64>(), w in any::<u64>()) {
            let mut out = Vec::new();
            put_i64(&mut out, v);
            put(&mut out, w);
            let mut at = 0;
            prop_assert_eq!(get_i64(&out, &mut at), Some(v));
            prop_assert_eq!(get(&out, &mut at), Some(w));
            prop_assert_eq!(at, out.len());
        }
    }
}
