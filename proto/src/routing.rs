//! Which shard owns a name. Every client and server must compute the same answer, so this is part
//! of the protocol: `xxh3_64(name)` with seed 0, modulo the shard count from HELLO.

use xxhash_rust::xxh3::xxh3_64;

/// The 64-bit hash of a name that routing is based on.
#[inline]
pub fn name_hash(name: &[u8]) -> u64 {
    xxh3_64(name)
}

/// The owner shard of `name` among `shards` shards.
#[inline]
pub fn shard_of(name: &[u8], shards: u16) -> u16 {
    assert!(shards > 0);
    (name_hash(name) % u64::from(shards)) as u16
}

#[cfg(test)]
mod tests {
    use super::*;

    /// XXH3-64 reference values (seed 0). If the hash, its seed or the crate's implementation
    /// changes, every client in the field would route to the wrong shard: this must never fail.
    #[test]
    fn hash_is_pinned() {
        // The empty input's XXH3_64bits value from the xxHash reference implementation.
        assert_eq!(name_hash(b""), 0x2d06_8005_38d3_94c2);
        assert_eq!(name_hash(b"views:page:123456"), PINNED_VIEWS);
        assert_eq!(shard_of(b"views:page:123456", 7), (PINNED_VIEWS % 7) as u16);
        assert_eq!(shard_of(b"views:page:123456", 1), 0);
        // 10 bytes: the 9..=16-byte code path; docs/protocol.md uses this name in its example.
        assert_eq!(name_hash(b"views:home"), 0x2797_1afe_ca67_7ddf);
    }

    /// `xxh3_64(b"views:page:123456")`, computed once with xxhash-rust 0.8 (17 bytes: the
    /// 17..=128-byte code path; the empty input above covers the 0-byte path).
    const PINNED_VIEWS: u64 = 0xcb78_ffa0_1100_c440;

    #[test]
    fn names_spread_evenly_over_shards() {
        let shards = 7u16;
        let names = 100_000u32;
        let mut counts = vec![0u32; shards as usize];
        for i in 0..names {
            let name = format!("views:page:{i}");
            let shard = shard_of(name.as_bytes(), shards);
            assert!(shard < shards);
            counts[shard as usize] += 1;
        }
        let mean = f64::from(names) / f64::from(shards);
        for (shard, count) in counts.iter().enumerate() {
            let off = (f64::from(*count) - mean).abs() / mean;
            assert!(
                off <= 0.05,
                "shard {shard} has {count} names, {:.1}% off the mean",
                off * 100.0
            );
        }
    }

    #[test]
    fn shard_of_is_in_range_for_every_shard_count() {
        for shards in [1u16, 2, 3, 64, crate::limits::SHARDS_MAX, u16::MAX] {
            for name in [&b"a"[..], b"b", b"views:home", &[0xff; 255]] {
                assert!(shard_of(name, shards) < shards);
            }
        }
    }

    #[test]
    #[should_panic]
    fn zero_shards_is_a_bug() {
        shard_of(b"a", 0);
    }
}
