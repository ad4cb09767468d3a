//! The acknowledged mark: a small file recording an lsn that was durable in the log, and so may
//! have been acknowledged, when the mark was written. Recovery uses it as a lower bound of what
//! was acknowledged: a log that ends below it lost acknowledged records, which a torn write never
//! does (docs/wal.md, "Why recovery is correct").
//!
//! ```text
//! acked.mark: ACK_MARK_BYTES (two blocks), preallocated and zero-filled like a segment
//! +--------------------------+ 0
//! | copy A (44 bytes), zeros | block 0
//! +--------------------------+ 4096
//! | copy B (44 bytes), zeros | block 1
//! +--------------------------+ 8192
//!
//! offset size field (of one copy)
//!  0     8    magic "TALLYACK"
//!  8     4    format version (1)
//! 12     2    shard id
//! 14     2    reserved, zero
//! 16     8    lsn_acked: every record up to this lsn was durable in the log when this was written
//! 24     8    sequence: the number of this write (1, 2, ...); copy A holds odd ones, B even ones
//! 32     8    time_ms when it was written (Unix ms; informational)
//! 40     4    crc32c of bytes 0..40
//! ```
//!
//! The writer alternates between the blocks and fdatasyncs after each write, with at most one
//! write in flight, so a torn write damages only the copy being written and the other still holds
//! the previous mark. A reader takes the valid copy with the highest sequence.

use crate::error::{invalid, WalError};
use crate::limits::BLOCK_BYTES;
use crate::segment::{u32_at, u64_at, FORMAT_VERSION};

/// The mark's file name in the shard directory.
pub const ACK_MARK_FILE_NAME: &str = "acked.mark";

/// The first 8 bytes of each copy.
pub const ACK_MARK_MAGIC: [u8; 8] = *b"TALLYACK";

/// The meaningful bytes of one copy.
pub const ACK_MARK_LEN: usize = 44;

/// The file: one block per copy, so each write is one aligned block that touches only its copy.
pub const ACK_MARK_BYTES: u64 = 2 * BLOCK_BYTES;

/// One copy of the mark.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AckMark {
    pub shard: u16,
    pub lsn_acked: u64,
    pub sequence: u64,
    pub time_ms: u64,
}

impl AckMark {
    /// The block a write of this mark goes to (0 or 1): odd sequences to the first, even to the
    /// second, so consecutive writes alternate.
    pub fn block(&self) -> u64 {
        assert!(self.sequence >= 1, "sequences start at 1");
        (self.sequence + 1) % 2
    }

    /// Writes the copy into the front of `block` (a zeroed block).
    pub fn encode(&self, block: &mut [u8]) {
        assert!(block.len() >= ACK_MARK_LEN);
        block[0..8].copy_from_slice(&ACK_MARK_MAGIC);
        block[8..12].copy_from_slice(&FORMAT_VERSION.to_le_bytes());
        block[12..14].copy_from_slice(&self.shard.to_le_bytes());
        block[14..16].copy_from_slice(&[0, 0]);
        block[16..24].copy_from_slice(&self.lsn_acked.to_le_bytes());
        block[24..32].copy_from_slice(&self.sequence.to_le_bytes());
        block[32..40].copy_from_slice(&self.time_ms.to_le_bytes());
        let crc = crc32c::crc32c(&block[0..40]);
        block[40..44].copy_from_slice(&crc.to_le_bytes());
    }

    /// Reads one copy. An all-zero copy (never written) is `Ok(None)`.
    pub fn decode(bytes: &[u8], shard: u16) -> Result<Option<AckMark>, WalError> {
        const WHAT: &str = "acknowledged mark";
        let Some(m) = bytes.get(..ACK_MARK_LEN) else {
            return invalid(WHAT, "shorter than a mark");
        };
        if m.iter().all(|&b| b == 0) {
            return Ok(None);
        }
        if m[0..8] != ACK_MARK_MAGIC {
            return invalid(WHAT, "bad magic");
        }
        if u32_at(m, 40) != crc32c::crc32c(&m[0..40]) {
            return invalid(WHAT, "bad crc");
        }
        if u32_at(m, 8) != FORMAT_VERSION {
            return invalid(WHAT, "unknown format version");
        }
        if m[14..16] != [0, 0] {
            return invalid(WHAT, "reserved bytes are not zero");
        }
        let mark = AckMark {
            shard: u16::from_le_bytes([m[12], m[13]]),
            lsn_acked: u64_at(m, 16),
            sequence: u64_at(m, 24),
            time_ms: u64_at(m, 32),
        };
        if mark.shard != shard {
            return invalid(WHAT, "belongs to another shard");
        }
        if mark.sequence == 0 {
            return invalid(WHAT, "sequence 0");
        }
        Ok(Some(mark))
    }
}

/// What recovery read from the mark file.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AckMarkRead {
    /// The newest valid copy, if any.
    pub mark: Option<AckMark>,
    /// Why each damaged copy was ignored (a torn write of the newest copy leaves one of these; both
    /// damaged means the bound is unknown, which recovery reports).
    pub damaged: Vec<String>,
}

/// Reads both copies of a mark file's image and keeps the newest valid one.
pub fn read_ack_mark(bytes: &[u8], shard: u16) -> AckMarkRead {
    let mut read = AckMarkRead::default();
    for block in 0..2u64 {
        let at = (block * BLOCK_BYTES) as usize;
        match AckMark::decode(bytes.get(at..).unwrap_or(&[]), shard) {
            Ok(Some(mark)) if mark.block() == block => {
                if read.mark.is_none_or(|newest| mark.sequence > newest.sequence) {
                    read.mark = Some(mark);
                }
            }
            Ok(Some(_)) => read.damaged.push(format!("copy {block}: a sequence of the other copy")),
            Ok(None) => {}
            Err(e) => read.damaged.push(format!("copy {block}: {e}")),
        }
    }
    read
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn image(marks: &[AckMark]) -> Vec<u8> {
        let mut bytes = vec![0u8; ACK_MARK_BYTES as usize];
        for mark in marks {
            let at = (mark.block() * BLOCK_BYTES) as usize;
            bytes[at..at + BLOCK_BYTES as usize].fill(0);
            mark.encode(&mut bytes[at..]);
        }
        bytes
    }

    fn mark(sequence: u64, lsn_acked: u64) -> AckMark {
        AckMark {
            shard: 2,
            lsn_acked,
            sequence,
            time_ms: 1_700_000_000_000,
        }
    }

    #[test]
    fn the_newest_copy_wins_and_a_torn_newest_copy_falls_back_to_the_other() {
        let bytes = image(&[mark(1, 10), mark(2, 25), mark(3, 40)]);
        assert_eq!(read_ack_mark(&bytes, 2).mark, Some(mark(3, 40)));
        // The write of sequence 3 (block 0) was torn: block 1 still holds sequence 2.
        let mut torn = bytes.clone();
        torn[20] ^= 0x10;
        let read = read_ack_mark(&torn, 2);
        assert_eq!(read.mark, Some(mark(2, 25)));
        assert_eq!(read.damaged.len(), 1, "{:?}", read.damaged);
        // Both damaged: no bound.
        torn[BLOCK_BYTES as usize + 3] ^= 1;
        let read = read_ack_mark(&torn, 2);
        assert_eq!(read.mark, None);
        assert_eq!(read.damaged.len(), 2);
    }

    #[test]
    fn an_empty_or_foreign_file_gives_no_mark() {
        let zeros = vec![0u8; ACK_MARK_BYTES as usize];
        assert_eq!(read_ack_mark(&zeros, 2), AckMarkRead::default());
        // A file cut short (a mark file whose creation a crash interrupted) has no mark either.
        assert_eq!(read_ack_mark(&[], 2).mark, None);
        let other = image(&[mark(1, 10)]);
        let read = read_ack_mark(&other, 3);
        assert_eq!(read.mark, None);
        assert_eq!(read.damaged.len(), 1);
        // A copy in the wrong block (not written by this writer) is not trusted.
        let mut swapped = vec![0u8; ACK_MARK_BYTES as usize];
        mark(2, 10).encode(&mut swapped[..]);
        assert_eq!(read_ack_mark(&swapped, 2).mark, None);
    }

    #[test]
    fn every_bit_flip_of_a_copy_is_caught() {
        let bytes = image(&[mark(1, 77)]);
        for bit in 0..ACK_MARK_LEN * 8 {
            let mut flipped = bytes.clone();
            flipped[bit / 8] ^= 1 << (bit % 8);
            assert_eq!(
                read_ack_mark(&flipped, 2).mark,
                None,
                "flip of bit {bit} went unnoticed"
            );
        }
    }

    proptest! {
        #[test]
        fn marks_round_trip(shard: u16, lsn_acked: u64, sequence in 1u64.., time_ms: u64) {
            let m = AckMark { shard, lsn_acked, sequence, time_ms };
            let mut block = vec![0u8; BLOCK_BYTES as usize];
            m.encode(&mut block);
            prop_assert_eq!(AckMark::decode(&block, shard).unwrap(), Some(m));
        }

        #[test]
        fn reading_garbage_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..9000), shard: u16) {
            let _ = read_ack_mark(&bytes, shard);
        }
    }
}
