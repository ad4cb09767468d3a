//! Snapshot files: the engine's state as of an lsn, as opaque bytes.
//!
//! ```text
//! snap-<lsn:020>.snap            (written as snap-<lsn:020>.snap.tmp, fsynced, renamed, dir fsynced)
//! offset size field
//!  0     8    magic "TALLYSNP"
//!  8     4    format version (1)
//! 12     2    shard id
//! 14     2    reserved, zero
//! 16     8    lsn: the state includes every record up to and including this lsn
//! 24     8    body_len
//! 32     4    crc32c of the body
//! 36     4    crc32c of bytes 0..36
//! 40..4096    zeros
//! 4096   body_len bytes of body, then zeros to a 4096-byte boundary
//! ```

use crate::error::{invalid, WalError};
use crate::limits::{BLOCK_BYTES, SNAPSHOT_BODY_BYTES_MAX};
use crate::segment::{u32_at, u64_at, FORMAT_VERSION};

pub const SNAPSHOT_MAGIC: [u8; 8] = *b"TALLYSNP";

/// The meaningful bytes of the header block.
pub const SNAPSHOT_HEADER_LEN: usize = 40;

/// The body starts at the second block, so every write of a snapshot is block-aligned.
pub const SNAPSHOT_BODY_OFFSET: u64 = BLOCK_BYTES;

/// A snapshot's header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SnapshotHeader {
    pub shard: u16,
    pub lsn: u64,
    pub body_len: u64,
    pub body_crc: u32,
}

impl SnapshotHeader {
    pub fn for_body(shard: u16, lsn: u64, body: &[u8]) -> SnapshotHeader {
        SnapshotHeader {
            shard,
            lsn,
            body_len: body.len() as u64,
            body_crc: crc32c::crc32c(body),
        }
    }

    /// Writes the header into the front of `block` (zeroed by the caller).
    pub fn encode(&self, block: &mut [u8]) {
        assert!(block.len() >= SNAPSHOT_HEADER_LEN);
        block[0..8].copy_from_slice(&SNAPSHOT_MAGIC);
        block[8..12].copy_from_slice(&FORMAT_VERSION.to_le_bytes());
        block[12..14].copy_from_slice(&self.shard.to_le_bytes());
        block[14..16].copy_from_slice(&[0, 0]);
        block[16..24].copy_from_slice(&self.lsn.to_le_bytes());
        block[24..32].copy_from_slice(&self.body_len.to_le_bytes());
        block[32..36].copy_from_slice(&self.body_crc.to_le_bytes());
        let crc = crc32c::crc32c(&block[0..36]);
        block[36..40].copy_from_slice(&crc.to_le_bytes());
    }

    /// Reads and checks a header (not the body).
    pub fn decode(bytes: &[u8]) -> Result<SnapshotHeader, WalError> {
        const WHAT: &str = "snapshot header";
        let Some(h) = bytes.get(..SNAPSHOT_HEADER_LEN) else {
            return invalid(WHAT, "file shorter than a header");
        };
        if h[0..8] != SNAPSHOT_MAGIC {
            return invalid(WHAT, "bad magic");
        }
        if u32_at(h, 36) != crc32c::crc32c(&h[0..36]) {
            return invalid(WHAT, "bad crc");
        }
        if u32_at(h, 8) != FORMAT_VERSION {
            return invalid(WHAT, "unknown format version");
        }
        if h[14..16] != [0, 0] {
            return invalid(WHAT, "reserved bytes are not zero");
        }
        let header = SnapshotHeader {
            shard: u16::from_le_bytes([h[12], h[13]]),
            lsn: u64_at(h, 16),
            body_len: u64_at(h, 24),
            body_crc: u32_at(h, 32),
        };
        if header.body_len > SNAPSHOT_BODY_BYTES_MAX {
            return invalid(WHAT, "body length out of range");
        }
        Ok(header)
    }

    /// The size of the whole file: header block plus the body padded to a block.
    pub fn file_bytes(&self) -> u64 {
        SNAPSHOT_BODY_OFFSET + self.body_len.next_multiple_of(BLOCK_BYTES)
    }
}

/// Checks a whole snapshot file of `shard`; returns its header and body.
pub fn decode_snapshot(bytes: &[u8], shard: u16) -> Result<(SnapshotHeader, &[u8]), WalError> {
    let header = SnapshotHeader::decode(bytes)?;
    if header.shard != shard {
        return invalid("snapshot", "belongs to another shard");
    }
    let start = SNAPSHOT_BODY_OFFSET as usize;
    let Some(body) = bytes.get(start..).and_then(|rest| rest.get(..header.body_len as usize)) else {
        return invalid("snapshot", "file shorter than its body");
    };
    if crc32c::crc32c(body) != header.body_crc {
        return invalid("snapshot", "bad body crc");
    }
    Ok((header, body))
}

/// `snap-<lsn:020>.snap`.
pub fn snapshot_file_name(lsn: u64) -> String {
    format!("snap-{lsn:020}.snap")
}

/// The temporary name a snapshot is written under before its rename.
pub fn snapshot_tmp_file_name(lsn: u64) -> String {
    format!("snap-{lsn:020}.snap.tmp")
}

/// The lsn a snapshot file name stands for, or `None` if it is not a snapshot's name.
pub fn parse_snapshot_file_name(name: &str) -> Option<u64> {
    let digits = name.strip_prefix("snap-")?.strip_suffix(".snap")?;
    if digits.len() != 20 || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    digits.parse().ok()
}

/// Whether a file name is a snapshot being written (left over by a crash).
pub fn is_snapshot_tmp_file_name(name: &str) -> bool {
    name.strip_suffix(".tmp").and_then(parse_snapshot_file_name).is_some()
}

/// A whole snapshot file image (tests and tools; the writer streams the body instead).
pub fn encode_snapshot(shard: u16, lsn: u64, body: &[u8]) -> Vec<u8> {
    let header = SnapshotHeader::for_body(shard, lsn, body);
    let mut bytes = vec![0u8; header.file_bytes() as usize];
    header.encode(&mut bytes);
    bytes[SNAPSHOT_BODY_OFFSET as usize..][..body.len()].copy_from_slice(body);
    bytes
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn names_parse_back() {
        assert_eq!(parse_snapshot_file_name(&snapshot_file_name(77)), Some(77));
        assert!(is_snapshot_tmp_file_name(&snapshot_tmp_file_name(77)));
        assert!(!is_snapshot_tmp_file_name(&snapshot_file_name(77)));
        assert_eq!(parse_snapshot_file_name(&snapshot_tmp_file_name(77)), None);
        assert_eq!(parse_snapshot_file_name("snap-1.snap"), None);
    }

    #[test]
    fn any_flip_in_header_or_body_is_caught() {
        let bytes = encode_snapshot(2, 99, b"state of the shard");
        assert_eq!(bytes.len() as u64 % BLOCK_BYTES, 0);
        let (header, body) = decode_snapshot(&bytes, 2).unwrap();
        assert_eq!((header.lsn, body), (99, &b"state of the shard"[..]));
        assert!(decode_snapshot(&bytes, 3).is_err());
        let body_end = SNAPSHOT_BODY_OFFSET as usize + body.len();
        for byte in (0..SNAPSHOT_HEADER_LEN).chain(SNAPSHOT_BODY_OFFSET as usize..body_end) {
            let mut flipped = bytes.clone();
            flipped[byte] ^= 0x10;
            assert!(
                decode_snapshot(&flipped, 2).is_err(),
                "flip at byte {byte} went unnoticed"
            );
        }
        assert!(decode_snapshot(&bytes[..body_end - 1], 2).is_err());
    }

    proptest! {
        #[test]
        fn round_trips(shard: u16, lsn: u64, body in proptest::collection::vec(any::<u8>(), 0..10_000)) {
            let bytes = encode_snapshot(shard, lsn, &body);
            let (header, got) = decode_snapshot(&bytes, shard).unwrap();
            prop_assert_eq!(header.lsn, lsn);
            prop_assert_eq!(got, body.as_slice());
        }

        #[test]
        fn decoding_garbage_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..6000), shard: u16) {
            // Any garbage behind a valid-looking header too.
            let mut framed = encode_snapshot(shard, 1, &[]);
            framed.truncate(SNAPSHOT_BODY_OFFSET as usize);
            framed.extend_from_slice(&bytes);
            let _ = decode_snapshot(&bytes, shard);
            let ok = decode_snapshot(&framed, shard).is_ok();
            prop_assert!(ok, "an empty body decodes whatever follows it");
        }
    }
}
