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
