//! Segment files: naming, the header block, and reading a segment's batches back.
//!
//! ```text
//! segment file <first_lsn:020>.wal, SEGMENT_BYTES long (preallocated, zero-filled)
//! +--------------------------+ 0
//! | header (52 bytes), zeros | one 4096-byte block
//! +--------------------------+ 4096
//! | batch, zero padding      | each batch starts on a block boundary
//! | batch, zero padding      |
//! | ...                      |
//! | zeros                    | preallocated space not yet written
//! +--------------------------+ SEGMENT_BYTES
//! ```

use crate::batch::{self, BatchCheck};
use crate::error::{invalid, WalError};
use crate::limits::{BLOCK_BYTES, SEGMENT_BYTES_MAX, SEGMENT_BYTES_MIN, SEGMENT_HEADER_BYTES};
use crate::record::{Entry, NameDictionary};

/// The first 8 bytes of every segment file.
pub const SEGMENT_MAGIC: [u8; 8] = *b"TALLYWAL";

/// The on-disk format version of segments, batches and records. A reader refuses other versions.
pub const FORMAT_VERSION: u32 = 1;

/// The bytes of one copy of the header.
pub const SEGMENT_HEADER_LEN: usize = 52;

/// Where the second copy of the header starts, in another 512-byte sector of the header block: a bit
/// flip in one copy leaves the other readable, so a damaged header never makes recovery take a
/// segment full of acknowledged batches for an empty one.
pub const SEGMENT_HEADER_COPY_AT: usize = 2048;

/// The name of the preallocated next segment. It becomes `<first_lsn:020>.wal` by a rename when its
/// first batch is written; recovery ignores (and the writer removes) a leftover one.
pub const PREALLOC_FILE_NAME: &str = "next.wal.pre";

/// The segment header, in the first block of each segment file.
///
/// ```text
/// offset size field
///  0     8    magic "TALLYWAL"
///  8     4    format version (1)
/// 12     2    shard id
/// 14     2    reserved, zero
/// 16     8    first_lsn: the lsn of the segment's first record (also its file name)
/// 24     8    salt: random per segment, seeds every batch crc of this segment
/// 32     8    time_ms of the segment's first batch
/// 40     8    segment_bytes: the file's preallocated size
/// 48     4    crc32c of bytes 0..48
/// ```
///
/// All integers little-endian. The same 52 bytes are repeated at offset 2048; the rest of the block
/// is zero. A reader uses the first copy whose checks pass.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SegmentHeader {
    pub shard: u16,
    pub first_lsn: u64,
    pub salt: u64,
    pub time_ms: u64,
    pub segment_bytes: u64,
}

impl SegmentHeader {
    /// Writes both copies of the header into `block` (a zeroed header block).
    pub fn encode(&self, block: &mut [u8]) {
        assert!(block.len() >= SEGMENT_HEADER_COPY_AT + SEGMENT_HEADER_LEN);
        self.encode_copy(&mut block[..SEGMENT_HEADER_LEN]);
        self.encode_copy(&mut block[SEGMENT_HEADER_COPY_AT..SEGMENT_HEADER_COPY_AT + SEGMENT_HEADER_LEN]);
    }

    fn encode_copy(&self, block: &mut [u8]) {
        block[0..8].copy_from_slice(&SEGMENT_MAGIC);
        block[8..12].copy_from_slice(&FORMAT_VERSION.to_le_bytes());
        block[12..14].copy_from_slice(&self.shard.to_le_bytes());
        block[14..16].copy_from_slice(&[0, 0]);
        block[16..24].copy_from_slice(&self.first_lsn.to_le_bytes());
        block[24..32].copy_from_slice(&self.salt.to_le_bytes());
        block[32..40].copy_from_slice(&self.time_ms.to_le_bytes());
        block[40..48].copy_from_slice(&self.segment_bytes.to_le_bytes());
        let crc = crc32c::crc32c(&block[0..48]);
        block[48..52].copy_from_slice(&crc.to_le_bytes());
    }

    /// Reads and checks the header from the front of a segment file: the first copy, or the second
    /// if the first is damaged.
    pub fn decode(bytes: &[u8]) -> Result<SegmentHeader, WalError> {
        let first = Self::decode_copy(bytes);
        if first.is_ok() {
            return first;
        }
        match bytes.get(SEGMENT_HEADER_COPY_AT..).map(Self::decode_copy) {
            Some(Ok(header)) => Ok(header),
            _ => first,
        }
    }

    fn decode_copy(bytes: &[u8]) -> Result<SegmentHeader, WalError> {
        const WHAT: &str = "segment header";
        let Some(h) = bytes.get(..SEGMENT_HEADER_LEN) else {
            return invalid(WHAT, "file shorter than a header");
        };
        if h[0..8] != SEGMENT_MAGIC {
            return invalid(WHAT, "bad magic");
        }
        if u32_at(h, 48) != crc32c::crc32c(&h[0..48]) {
            return invalid(WHAT, "bad crc");
        }
        if u32_at(h, 8) != FORMAT_VERSION {
            return invalid(WHAT, "unknown format version");
        }
        if h[14..16] != [0, 0] {
            return invalid(WHAT, "reserved bytes are not zero");
        }
        let header = SegmentHeader {
            shard: u16::from_le_bytes([h[12], h[13]]),
            first_lsn: u64_at(h, 16),
            salt: u64_at(h, 24),
            time_ms: u64_at(h, 32),
            segment_bytes: u64_at(h, 40),
        };
        if header.first_lsn == 0 {
            return invalid(WHAT, "first_lsn is 0");
        }
        if !(SEGMENT_BYTES_MIN..=SEGMENT_BYTES_MAX).contains(&header.segment_bytes)
            || !header.segment_bytes.is_multiple_of(BLOCK_BYTES)
        {
            return invalid(WHAT, "segment size out of range");
        }
        Ok(header)
    }

    /// The salt fields of both copies of a header whose checks failed (recovery uses them to look
    /// for batches behind a damaged header), whatever the rest says.
    pub(crate) fn salts_unchecked(bytes: &[u8]) -> Vec<u64> {
        [0, SEGMENT_HEADER_COPY_AT]
            .iter()
            .filter_map(|&at| bytes.get(at + 24..at + 32))
            .map(|b| u64_at(b, 0))
            .collect()
    }
}

pub(crate) fn u32_at(bytes: &[u8], at: usize) -> u32 {
    let mut b = [0u8; 4];
    b.copy_from_slice(&bytes[at..at + 4]);
    u32::from_le_bytes(b)
}

pub(crate) fn u64_at(bytes: &[u8], at: usize) -> u64 {
    let mut b = [0u8; 8];
    b.copy_from_slice(&bytes[at..at + 8]);
    u64::from_le_bytes(b)
}

/// `<first_lsn:020>.wal`: zero-padded so names sort in lsn order.
pub fn segment_file_name(first_lsn: u64) -> String {
    format!("{first_lsn:020}.wal")
}

/// The first lsn a segment file name stands for, or `None` if it is not a segment's name.
pub fn parse_segment_file_name(name: &str) -> Option<u64> {
    let digits = name.strip_suffix(".wal")?;
    if digits.len() != 20 || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    digits.parse().ok()
}

/// Where reading a segment stopped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SegmentEnd {
    /// An all-zero block where the next batch would start: preallocated space, never written.
    Zeros { offset: u64 },
    /// The file ends (no room for another batch header).
    EndOfFile { offset: u64 },
    /// Something that is neither zeros nor a valid batch: a torn write, or damage.
    Bad { offset: u64, detail: &'static str },
}

impl SegmentEnd {
    pub fn offset(&self) -> u64 {
        match *self {
            SegmentEnd::Zeros { offset } | SegmentEnd::EndOfFile { offset } | SegmentEnd::Bad { offset, .. } => offset,
        }
    }
}

/// Where a `SegmentReader` stands, kept to continue a scan later (`position_into`, `resume`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ReaderPosition {
    /// Offset of the next batch.
    pub offset: u64,
    /// The lsn the next record must have.
    pub lsn_next: u64,
    /// The dictionary's names by id, as (offset, length) in the segment's bytes.
    pub dict: Vec<(u64, u8)>,
}

/// One step of reading a segment.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Step {
    /// A valid batch was read and its records visited.
    Batch {
        offset: u64,
        first_lsn: u64,
        record_count: u32,
        time_ms: u64,
    },
    /// No further batch.
    End(SegmentEnd),
}

/// Reads a segment's batches in order, resolving dictionary ids to names. Records borrow from the
/// segment's bytes. Never panics, whatever the bytes.
#[derive(Debug)]
pub struct SegmentReader<'a> {
    bytes: &'a [u8],
    header: SegmentHeader,
    offset: u64,
    lsn_next: u64,
    dict: NameDictionary<'a>,
    done: Option<SegmentEnd>,
}

impl<'a> SegmentReader<'a> {
    /// Checks the header; the shard must match.
    pub fn new(bytes: &'a [u8], shard: u16) -> Result<SegmentReader<'a>, WalError> {
        let header = SegmentHeader::decode(bytes)?;
        if header.shard != shard {
            return invalid("segment header", "belongs to another shard");
        }
        Ok(SegmentReader {
            bytes,
            header,
            offset: SEGMENT_HEADER_BYTES,
            lsn_next: header.first_lsn,
            dict: NameDictionary::new(),
            done: None,
        })
    }

    pub fn header(&self) -> &SegmentHeader {
        &self.header
    }

    /// Where the next batch starts (after a failed `next_batch`: where the failed batch starts).
    pub fn offset(&self) -> u64 {
        self.offset
    }

    /// The lsn the next record must have.
    pub fn lsn_next(&self) -> u64 {
        self.lsn_next
    }

    /// How many names the segment's dictionary holds so far.
    pub fn dict_len(&self) -> u32 {
        self.dict.len()
    }

    /// The bytes the reader considers part of the segment: the file, capped at its header's size.
    fn segment(&self) -> &'a [u8] {
        let end = self.header.segment_bytes.min(self.bytes.len() as u64) as usize;
        &self.bytes[..end]
    }

    /// Reads the next batch and passes its records to `visit`. A batch whose checksum is valid but
    /// whose contents do not decode, or whose lsns do not follow on, is an error: checksums only fail
    /// to catch what was written that way, so this is a bug or deliberate damage, never a torn write.
    pub fn next_batch(&mut self, visit: &mut dyn FnMut(Entry<'a>)) -> Result<Step, WalError> {
        if let Some(end) = self.done {
            return Ok(Step::End(end));
        }
        let offset = self.offset;
        let segment = self.segment();
        let (header, body, len) = match batch::check(segment, offset, self.header.salt) {
            BatchCheck::Valid { header, body, len } => (header, body, len),
            BatchCheck::Zeros => return Ok(self.end(SegmentEnd::Zeros { offset })),
            BatchCheck::EndOfFile => return Ok(self.end(SegmentEnd::EndOfFile { offset })),
            BatchCheck::Bad(detail) => return Ok(self.end(SegmentEnd::Bad { offset, detail })),
        };
        if header.first_lsn != self.lsn_next {
            return invalid("batch", "lsn does not follow the previous batch");
        }
        batch::decode_body(body, &header, &mut self.dict, visit)?;
        self.lsn_next += u64::from(header.record_count);
        self.offset += len;
        Ok(Step::Batch {
            offset,
            first_lsn: header.first_lsn,
            record_count: header.record_count,
            time_ms: header.time_ms,
        })
    }

    /// Brings `position` up to where this reader stands: the next batch's offset and lsn, and the
    /// dictionary's names as (offset, length) in the segment's bytes (only names defined since
    /// `position` was last brought up to date are added). With `resume` a scan continues later
    /// over the same file (read again, or read further) without decoding it from the start.
    pub fn position_into(&self, position: &mut ReaderPosition) {
        position.offset = self.offset;
        position.lsn_next = self.lsn_next;
        let base = self.bytes.as_ptr() as usize;
        for name in &self.dict.names()[position.dict.len().min(self.dict.names().len())..] {
            // Every dictionary name is a slice of `bytes` (decode_entry takes it from a batch body).
            let at = (name.as_ptr() as usize).wrapping_sub(base) as u64;
            position.dict.push((at, name.len() as u8));
        }
    }

    /// A reader of `bytes` (the segment file from its start, as far as it was read) continuing at
    /// `position`. Fails if the header is not this shard's segment or a dictionary name lies
    /// outside `bytes`.
    pub fn resume(bytes: &'a [u8], shard: u16, position: &ReaderPosition) -> Result<SegmentReader<'a>, WalError> {
        let mut reader = SegmentReader::new(bytes, shard)?;
        if position.offset < SEGMENT_HEADER_BYTES {
            return invalid("reader position", "before the first batch");
        }
        let mut names = Vec::with_capacity(position.dict.len());
        for &(at, len) in &position.dict {
            let name = usize::try_from(at)
                .ok()
                .and_then(|at| bytes.get(at..at + len as usize))
                .ok_or(())
                .or_else(|_| invalid("reader position", "a dictionary name outside the segment"))?;
            names.push(name);
        }
        reader.offset = position.offset;
        reader.lsn_next = position.lsn_next;
        reader.dict = NameDictionary::from_names(names);
        Ok(reader)
    }

    fn end(&mut self, end: SegmentEnd) -> Step {
        self.done = Some(end);
        Step::End(end)
    }

    /// The offset of the first block at or after `from` that starts a valid batch (magic, length and
    /// checksum; contents are not decoded), if any.
    pub fn find_valid_batch(&self, from: u64) -> Option<u64> {
        find_valid_batch(self.segment(), from, self.header.salt)
    }
}

/// The offset of the first block at or after `from` (block-aligned) that starts a batch valid under
/// `salt`.
pub(crate) fn find_valid_batch(segment: &[u8], from: u64, salt: u64) -> Option<u64> {
    let mut offset = from.next_multiple_of(BLOCK_BYTES);
    while offset < segment.len() as u64 {
        if let BatchCheck::Valid { .. } = batch::check(segment, offset, salt) {
            return Some(offset);
        }
        offset += BLOCK_BYTES;
    }
    None
}

/// The end of the last block at or after `from` that is not all zeros (or `from` if all are zero):
/// how far a torn write may have left garbage.
pub(crate) fn nonzero_end(segment: &[u8], from: u64) -> u64 {
    let mut end = from;
    let mut offset = from;
    while offset < segment.len() as u64 {
        let block_end = (offset + BLOCK_BYTES).min(segment.len() as u64);
        if segment[offset as usize..block_end as usize].iter().any(|&b| b != 0) {
            end = block_end;
        }
        offset = block_end;
    }
    end
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn header() -> SegmentHeader {
        SegmentHeader {
            shard: 3,
            first_lsn: 42,
            salt: 0xdead_beef,
            time_ms: 1_700_000_000_000,
            segment_bytes: 1 << 20,
        }
    }

    #[test]
    fn names_sort_by_lsn_and_parse_back() {
        assert_eq!(segment_file_name(42), "00000000000000000042.wal");
        assert_eq!(parse_segment_file_name(&segment_file_name(u64::MAX)), Some(u64::MAX));
        assert_eq!(parse_segment_file_name("42.wal"), None);
        assert_eq!(parse_segment_file_name(PREALLOC_FILE_NAME), None);
        assert_eq!(parse_segment_file_name("0000000000000000004x.wal"), None);
        assert!(segment_file_name(9) < segment_file_name(10));
    }

    #[test]
    fn header_round_trips_and_every_bit_flip_is_caught_or_corrected_by_the_copy() {
        let mut block = vec![0u8; BLOCK_BYTES as usize];
        header().encode(&mut block);
        assert_eq!(SegmentHeader::decode(&block).unwrap(), header());
        for at in [0, SEGMENT_HEADER_COPY_AT] {
            for bit in 0..SEGMENT_HEADER_LEN * 8 {
                let mut flipped = block.clone();
                flipped[at + bit / 8] ^= 1 << (bit % 8);
                assert!(
                    SegmentHeader::decode_copy(&flipped[at..]).is_err(),
                    "flip of bit {bit} went unnoticed"
                );
                assert_eq!(
                    SegmentHeader::decode(&flipped).unwrap(),
                    header(),
                    "the other copy is used"
                );
                // Both copies damaged: refused.
                flipped[SEGMENT_HEADER_COPY_AT - at + bit / 8] ^= 1 << (bit % 8);
                assert!(SegmentHeader::decode(&flipped).is_err());
            }
        }
        assert!(SegmentHeader::decode(&block[..SEGMENT_HEADER_LEN - 1]).is_err());
    }

    #[test]
    fn reader_refuses_another_shards_segment() {
        let mut block = vec![0u8; BLOCK_BYTES as usize];
        header().encode(&mut block);
        assert!(SegmentReader::new(&block, 4).is_err());
        assert!(SegmentReader::new(&block, 3).is_ok());
    }

    proptest! {
        #[test]
        fn header_fields_round_trip(shard: u16, first_lsn in 1u64.., salt: u64, time_ms: u64, blocks in 17u64..=(1 << 18)) {
            let h = SegmentHeader { shard, first_lsn, salt, time_ms, segment_bytes: blocks * BLOCK_BYTES };
            let mut block = vec![0u8; BLOCK_BYTES as usize];
            h.encode(&mut block);
            prop_assert_eq!(SegmentHeader::decode(&block).unwrap(), h);
        }

        #[test]
        fn reading_garbage_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..20_000), shard: u16) {
            let _ = SegmentHeader::decode(&bytes);
            // Give the garbage a valid header so the batch decoder is reached too.
            let mut image = vec![0u8; BLOCK_BYTES as usize];
            SegmentHeader { shard, first_lsn: 1, salt: 7, time_ms: 0, segment_bytes: SEGMENT_BYTES_MIN }.encode(&mut image);
            image.extend_from_slice(&bytes);
            let mut reader = SegmentReader::new(&image, shard).unwrap();
            let mut steps = 0;
            while let Ok(Step::Batch { .. }) = reader.next_batch(&mut |_| {}) {
                steps += 1;
            }
            prop_assert!(steps <= bytes.len() / BLOCK_BYTES as usize + 1);
            let _ = reader.find_valid_batch(0);
            prop_assert!(nonzero_end(&image, SEGMENT_HEADER_BYTES) <= image.len() as u64);
        }
    }
}
