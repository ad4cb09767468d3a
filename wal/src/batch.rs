//! Batches: the unit of one write+fdatasync, and the encoder that builds them.
//!
//! ```text
//! offset size field                  (at a 4096-byte boundary of the segment)
//!  0     4    magic "TBAT" (0x54414254 LE)
//!  4     4    body_len: bytes of records after the header
//!  8     4    crc32c(salt u64 LE ‖ bytes 12..32 ‖ body), salt from the segment header
//! 12     8    first_lsn: the lsn of the first record; the others follow one by one
//! 20     4    record_count (≥ 1)
//! 24     8    time_ms: when the batch was formed; every record in it carries this time
//! 32     body_len bytes of entries (records and dictionary definitions, see `record`)
//!        zeros up to the next 4096-byte boundary
//! ```

use crate::error::{invalid, WalError};
use crate::limits::{
    BATCH_BYTES_MAX, BATCH_HEADER_BYTES, BATCH_ROOM_MIN, BLOCK_BYTES, OP_BYTES_MAX, SEGMENT_HEADER_BYTES,
};
use crate::record::{decode_entry, encode_define_name, encode_record, Entry, LogRecord, LogSink, NameDictionary};
use crate::segment::{u32_at, u64_at};

/// The first 4 bytes of every batch.
pub const BATCH_MAGIC: u32 = u32::from_le_bytes(*b"TBAT");

/// A batch header, as read back.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BatchHeader {
    pub body_len: u32,
    pub crc: u32,
    pub first_lsn: u64,
    pub record_count: u32,
    pub time_ms: u64,
}

/// The checksum of a batch: crc32c over the segment's salt, the header fields after the crc, and the
/// body. Seeding with the salt makes a batch valid only in the segment it was written for, so stale
/// bytes (and names crafted to look like a batch) never pass as a batch of this segment.
pub(crate) fn batch_crc(salt: u64, header_tail: &[u8], body: &[u8]) -> u32 {
    let crc = crc32c::crc32c(&salt.to_le_bytes());
    let crc = crc32c::crc32c_append(crc, header_tail);
    crc32c::crc32c_append(crc, body)
}

/// What lies at a block boundary of a segment.
#[derive(Debug)]
pub(crate) enum BatchCheck<'a> {
    Valid {
        header: BatchHeader,
        body: &'a [u8],
        len: u64,
    },
    /// The block is all zeros.
    Zeros,
    /// Less than one block is left.
    EndOfFile,
    Bad(&'static str),
}

/// Checks the batch at `offset` (block-aligned) of `segment`: magic, length, checksum. Does not decode
/// the body.
pub(crate) fn check(segment: &[u8], offset: u64, salt: u64) -> BatchCheck<'_> {
    debug_assert!(offset.is_multiple_of(BLOCK_BYTES));
    let len = segment.len() as u64;
    if offset >= len || len - offset < BLOCK_BYTES {
        return BatchCheck::EndOfFile;
    }
    let at = offset as usize;
    let rest = &segment[at..];
    if rest[..BLOCK_BYTES as usize].iter().all(|&b| b == 0) {
        return BatchCheck::Zeros;
    }
    if u32_at(rest, 0) != BATCH_MAGIC {
        return BatchCheck::Bad("bad batch magic");
    }
    let body_len = u64::from(u32_at(rest, 4));
    let total = (BATCH_HEADER_BYTES + body_len).next_multiple_of(BLOCK_BYTES);
    if total > BATCH_BYTES_MAX || total > rest.len() as u64 {
        return BatchCheck::Bad("batch length out of range");
    }
    let header = BatchHeader {
        body_len: body_len as u32,
        crc: u32_at(rest, 8),
        first_lsn: u64_at(rest, 12),
        record_count: u32_at(rest, 20),
        time_ms: u64_at(rest, 24),
    };
    let body = &rest[BATCH_HEADER_BYTES as usize..(BATCH_HEADER_BYTES + body_len) as usize];
    if batch_crc(salt, &rest[12..BATCH_HEADER_BYTES as usize], body) != header.crc {
        return BatchCheck::Bad("bad batch crc");
    }
    BatchCheck::Valid {
        header,
        body,
        len: total,
    }
}

/// Decodes a checked batch's body: exactly `record_count` records with consecutive lsns, dictionary
/// entries in between, nothing left over.
pub(crate) fn decode_body<'a>(
    body: &'a [u8],
    header: &BatchHeader,
    dict: &mut NameDictionary<'a>,
    visit: &mut dyn FnMut(Entry<'a>),
) -> Result<(), WalError> {
    const WHAT: &str = "batch";
    if header.record_count == 0 {
        return invalid(WHAT, "no records");
    }
    if header.first_lsn == 0 || header.first_lsn.checked_add(u64::from(header.record_count)).is_none() {
        return invalid(WHAT, "lsn out of range");
    }
    let mut at = 0;
    let mut lsn = header.first_lsn;
    let end = header.first_lsn + u64::from(header.record_count);
    while at < body.len() {
        let (record, used) = decode_entry(&body[at..], dict)?;
        at += used;
        if let Some(record) = record {
            if lsn == end {
                return invalid(WHAT, "more records than record_count");
            }
            visit(Entry {
                lsn,
                time_ms: header.time_ms,
                record,
            });
            lsn += 1;
        }
    }
    if lsn != end {
        return invalid(WHAT, "fewer records than record_count");
    }
    Ok(())
}

/// Whether the node may apply another op now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Room {
    /// One more op's records (up to `OP_BYTES_MAX`) fit in the open batch.
    Ready,
    /// The open batch is full: commit it before applying more.
    SealFirst,
    /// No segment has room for another op and no next segment is ready: refuse writes until
    /// `Wal::maintain` manages to preallocate one. Buffered records still fit and can be committed.
    DiskFull,
}

/// The segment a batch is written to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SegmentSlot {
    pub first_lsn: u64,
    pub salt: u64,
    pub segment_bytes: u64,
    /// Where the open batch will be written.
    pub offset: u64,
    /// The open batch is the segment's first: committing it creates the segment.
    pub fresh: bool,
}

/// A sealed batch: block-padded bytes ready to write at `offset` of the segment `segment_first_lsn`.
#[derive(Debug)]
pub struct SealedBatch {
    bytes: Vec<u8>,
    pub segment_first_lsn: u64,
    pub segment_salt: u64,
    pub segment_bytes: u64,
    pub offset: u64,
    /// The batch is the first of its segment, which must be created (header block, rename) first.
    pub starts_segment: bool,
    pub first_lsn: u64,
    pub last_lsn: u64,
    pub time_ms: u64,
}

impl SealedBatch {
    /// The bytes to write: a multiple of `BLOCK_BYTES`.
    pub fn bytes(&self) -> &[u8] {
        &self.bytes
    }
}

/// Builds batches from the engine's records, tracking where each batch goes (segment and offset) and
/// each segment's name dictionary.
///
/// Appending never allocates in steady state: the open batch and the sealed batch are two buffers that
/// trade places (`seal` hands one out, `recycle` gives it back), and the dictionary map only grows
/// when a name is first used in a segment (it is cleared, keeping its capacity, on a new segment).
///
/// The segment of a batch is chosen when its first record arrives: if less than `BATCH_ROOM_MIN` is
/// left and a next segment has been granted (`grant_rotation`), the batch starts the next segment and
/// the dictionary restarts. So a batch never spans segments and its dictionary ids always refer to its
/// own segment.
#[derive(Debug)]
pub struct BatchEncoder {
    /// The segment of the open batch (or of the next batch, when none is open); `None` before the
    /// first segment exists.
    slot: Option<SegmentSlot>,
    segment_bytes_new: u64,
    /// name_id → dictionary id in the current segment.
    dict: hashbrown::HashMap<u32, u32>,
    dict_len: u32,
    open: Vec<u8>,
    open_count: u32,
    open_first_lsn: u64,
    lsn_last: u64,
    time_last_ms: u64,
    spare: Vec<u8>,
    /// The salt of a next segment that is ready (preallocated) and not yet claimed by a batch.
    rotation: Option<u64>,
}

impl BatchEncoder {
    /// An encoder continuing after `lsn_last`, appending to `slot` (whose dictionary already holds
    /// `dict_len` names), or starting a new segment if `slot` is `None`. New segments are
    /// `segment_bytes_new` long.
    pub fn new(
        slot: Option<SegmentSlot>,
        dict_len: u32,
        lsn_last: u64,
        time_last_ms: u64,
        segment_bytes_new: u64,
    ) -> Self {
        if let Some(slot) = &slot {
            assert!(slot.offset % BLOCK_BYTES == 0);
            assert!(slot.offset >= SEGMENT_HEADER_BYTES);
            assert!(slot.offset <= slot.segment_bytes);
            assert!(slot.first_lsn <= lsn_last + 1);
        }
        assert!(segment_bytes_new.is_multiple_of(BLOCK_BYTES));
        assert!(segment_bytes_new >= SEGMENT_HEADER_BYTES + BATCH_ROOM_MIN);
        BatchEncoder {
            slot,
            segment_bytes_new,
            dict: hashbrown::HashMap::new(),
            dict_len,
            open: Vec::new(),
            open_count: 0,
            open_first_lsn: 0,
            lsn_last,
            time_last_ms,
            spare: Vec::new(),
            rotation: None,
        }
    }

    /// A next segment (with this salt) is ready: the next batch may start it.
    pub fn grant_rotation(&mut self, salt: u64) {
        assert!(self.rotation.is_none(), "one next segment at a time");
        self.rotation = Some(salt);
    }

    /// Whether a next segment is ready and not yet claimed.
    pub fn rotation_granted(&self) -> bool {
        self.rotation.is_some()
    }

    /// The lsn of the last record appended.
    pub fn lsn_last(&self) -> u64 {
        self.lsn_last
    }

    /// Records in the open batch.
    pub fn buffered_records(&self) -> u32 {
        self.open_count
    }

    /// Bytes in the open batch (header included, padding not).
    pub fn buffered_bytes(&self) -> u64 {
        if self.open_count == 0 {
            0
        } else {
            self.open.len() as u64
        }
    }

    /// Where the open (or next) batch goes.
    pub fn slot(&self) -> Option<SegmentSlot> {
        self.slot
    }

    fn would_rotate(&self) -> bool {
        self.rotation.is_some()
            && match &self.slot {
                None => true,
                Some(slot) => slot.segment_bytes - slot.offset < BATCH_ROOM_MIN,
            }
    }

    /// The largest batch (header included) that fits at the slot.
    fn capacity(slot: &SegmentSlot) -> u64 {
        BATCH_BYTES_MAX.min(slot.segment_bytes - slot.offset)
    }

    /// Whether one more op may be applied; see `Room`.
    pub fn room(&self) -> Room {
        self.room_for(OP_BYTES_MAX)
    }

    /// Whether records of up to `op` bytes in all (dictionary entries included) may be appended
    /// now; `op` must not exceed what a fresh batch always holds (`BATCH_ROOM_MIN` less the header).
    pub fn room_for(&self, op: u64) -> Room {
        assert!(
            op + BATCH_HEADER_BYTES <= BATCH_ROOM_MIN,
            "{op} bytes may not fit even a fresh batch"
        );
        if self.open_count == 0 {
            if self.would_rotate() {
                return Room::Ready;
            }
            return match &self.slot {
                Some(slot) if Self::capacity(slot) >= BATCH_HEADER_BYTES + op => Room::Ready,
                _ => Room::DiskFull,
            };
        }
        let slot = self.slot.as_ref().expect("an open batch has a segment");
        if Self::capacity(slot) - self.open.len() as u64 >= op {
            return Room::Ready;
        }
        let after = slot.offset + (self.open.len() as u64).next_multiple_of(BLOCK_BYTES);
        if self.rotation.is_some() || slot.segment_bytes - after >= BATCH_HEADER_BYTES + op {
            Room::SealFirst
        } else {
            Room::DiskFull
        }
    }

    fn start_batch(&mut self, lsn: u64) {
        if self.would_rotate() {
            let salt = self.rotation.take().expect("would_rotate checked the grant");
            self.slot = Some(SegmentSlot {
                first_lsn: lsn,
                salt,
                segment_bytes: self.segment_bytes_new,
                offset: SEGMENT_HEADER_BYTES,
                fresh: true,
            });
            self.dict.clear();
            self.dict_len = 0;
        }
        assert!(
            self.slot.is_some(),
            "no segment to append to: the caller must check room() first"
        );
        self.open.clear();
        self.open.resize(BATCH_HEADER_BYTES as usize, 0);
        self.open_first_lsn = lsn;
    }

    /// Appends one record. `lsn` must be the previous one plus one.
    pub fn append(&mut self, lsn: u64, record: &LogRecord<'_>) {
        assert_eq!(lsn, self.lsn_last + 1, "lsns increase by one");
        if self.open_count == 0 {
            self.start_batch(lsn);
        }
        let name_id = record.name_id();
        let dict_id = match self.dict.get(&name_id) {
            Some(&id) => id,
            None => {
                let id = self.dict_len;
                encode_define_name(&mut self.open, id, record.name());
                self.dict.insert(name_id, id);
                self.dict_len += 1;
                id
            }
        };
        encode_record(&mut self.open, dict_id, record);
        self.open_count += 1;
        self.lsn_last = lsn;
        let slot = self.slot.as_ref().expect("start_batch set the slot");
        assert!(
            self.open.len() as u64 <= Self::capacity(slot),
            "batch overflows its segment or BATCH_BYTES_MAX: the caller must check room() before each op"
        );
    }

    /// Closes the open batch: fills its header (`time_ms`, raised to the previous batch's time if
    /// the clock went back, so log times never decrease) and pads it. `None` if nothing is buffered.
    pub fn seal(&mut self, time_ms: u64) -> Option<SealedBatch> {
        if self.open_count == 0 {
            return None;
        }
        let time_ms = time_ms.max(self.time_last_ms);
        self.time_last_ms = time_ms;
        let slot = self.slot.as_mut().expect("an open batch has a segment");
        let body_len = self.open.len() as u64 - BATCH_HEADER_BYTES;
        let header = &mut self.open[..BATCH_HEADER_BYTES as usize];
        header[0..4].copy_from_slice(&BATCH_MAGIC.to_le_bytes());
        header[4..8].copy_from_slice(&(body_len as u32).to_le_bytes());
        header[12..20].copy_from_slice(&self.open_first_lsn.to_le_bytes());
        header[20..24].copy_from_slice(&self.open_count.to_le_bytes());
        header[24..32].copy_from_slice(&time_ms.to_le_bytes());
        let (head, body) = self.open.split_at(BATCH_HEADER_BYTES as usize);
        let crc = batch_crc(slot.salt, &head[12..], body);
        self.open[8..12].copy_from_slice(&crc.to_le_bytes());
        let padded = (self.open.len() as u64).next_multiple_of(BLOCK_BYTES);
        self.open.resize(padded as usize, 0);
        let sealed = SealedBatch {
            bytes: std::mem::replace(&mut self.open, std::mem::take(&mut self.spare)),
            segment_first_lsn: slot.first_lsn,
            segment_salt: slot.salt,
            segment_bytes: slot.segment_bytes,
            offset: slot.offset,
            starts_segment: slot.fresh,
            first_lsn: self.open_first_lsn,
            last_lsn: self.lsn_last,
            time_ms,
        };
        slot.offset += padded;
        slot.fresh = false;
        assert!(slot.offset <= slot.segment_bytes);
        self.open_count = 0;
        Some(sealed)
    }

    /// Gives a written batch's buffer back for reuse.
    pub fn recycle(&mut self, sealed: SealedBatch) {
        let mut bytes = sealed.bytes;
        if bytes.capacity() > self.spare.capacity() {
            bytes.clear();
            self.spare = bytes;
        }
    }
}

impl LogSink for BatchEncoder {
    fn record(&mut self, lsn: u64, record: &LogRecord<'_>) {
        self.append(lsn, record);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::record::tests::{arb_parts, build};
    use crate::segment::{ReaderPosition as ReaderPositionForTest, SegmentHeader, SegmentReader, Step};
    use proptest::prelude::*;

    const SALT: u64 = 0x5a17;

    fn fresh_encoder(segment_bytes: u64) -> BatchEncoder {
        let mut enc = BatchEncoder::new(None, 0, 0, 0, segment_bytes);
        enc.grant_rotation(SALT);
        enc
    }

    /// A segment image holding the given sealed batches.
    fn image(batches: &[SealedBatch], shard: u16) -> Vec<u8> {
        let first = &batches[0];
        let mut bytes = vec![0u8; first.segment_bytes as usize];
        SegmentHeader {
            shard,
            first_lsn: first.segment_first_lsn,
            salt: first.segment_salt,
            time_ms: first.time_ms,
            segment_bytes: first.segment_bytes,
        }
        .encode(&mut bytes);
        for b in batches {
            assert_eq!(b.segment_first_lsn, first.segment_first_lsn);
            bytes[b.offset as usize..b.offset as usize + b.bytes().len()].copy_from_slice(b.bytes());
        }
        bytes
    }

    /// Every record of a segment image as (lsn, time, record with name_id 0), and where reading stopped.
    fn read_all(image: &[u8], shard: u16) -> (Vec<(u64, u64, LogRecord<'_>)>, Step) {
        let mut reader = SegmentReader::new(image, shard).unwrap();
        let mut out = Vec::new();
        loop {
            let step = reader
                .next_batch(&mut |e: Entry<'_>| out.push((e.lsn, e.time_ms, e.record.with_name_id(0))))
                .unwrap();
            if let Step::End(_) = step {
                return (out, step);
            }
        }
    }

    #[test]
    fn batches_are_block_padded_and_decode_in_order() {
        let mut enc = fresh_encoder(1 << 20);
        let a = LogRecord::Incr {
            name: b"a",
            name_id: 10,
            delta: 1,
            key: None,
        };
        let b = LogRecord::Incr {
            name: b"b",
            name_id: 20,
            delta: -1,
            key: Some(crate::record::Keyed { key: 5, value: 6 }),
        };
        enc.append(1, &a);
        enc.append(2, &b);
        enc.append(3, &a);
        let first = enc.seal(1000).unwrap();
        assert_eq!(first.bytes().len() as u64, BLOCK_BYTES);
        assert_eq!(
            (first.first_lsn, first.last_lsn, first.offset),
            (1, 3, SEGMENT_HEADER_BYTES)
        );
        assert!(first.starts_segment);
        enc.append(4, &b);
        // The clock went back: the batch keeps the previous time.
        let second = enc.seal(999).unwrap();
        assert_eq!(second.time_ms, 1000);
        assert!(!second.starts_segment);
        assert_eq!(second.offset, SEGMENT_HEADER_BYTES + BLOCK_BYTES);
        let img = image(&[first, second], 0);
        let (records, end) = read_all(&img, 0);
        assert_eq!(records.iter().map(|r| r.0).collect::<Vec<_>>(), [1, 2, 3, 4]);
        assert_eq!(
            records.iter().map(|r| r.2.name()).collect::<Vec<_>>(),
            [b"a", b"b", b"a", b"b"]
        );
        assert!(records.iter().all(|r| r.1 == 1000));
        assert_eq!(
            end,
            Step::End(crate::segment::SegmentEnd::Zeros {
                offset: SEGMENT_HEADER_BYTES + 2 * BLOCK_BYTES
            })
        );
    }

    #[test]
    fn dictionary_spans_batches_and_restarts_with_each_segment() {
        let segment_bytes = SEGMENT_HEADER_BYTES + BATCH_ROOM_MIN;
        let mut enc = fresh_encoder(segment_bytes);
        let rec = LogRecord::Incr {
            name: b"views:home",
            name_id: 7,
            delta: 1,
            key: None,
        };
        enc.append(1, &rec);
        let first = enc.seal(1).unwrap();
        enc.append(2, &rec);
        let second = enc.seal(2).unwrap();
        // The second batch refers to the name by id only.
        let body_len = |b: &SealedBatch| u32_at(b.bytes(), 4);
        assert_eq!(body_len(&first), 1 + 1 + 1 + 10 + 3);
        assert_eq!(body_len(&second), 3);
        // Less than BATCH_ROOM_MIN is left now; with a grant, the next batch starts a new segment.
        enc.grant_rotation(SALT + 1);
        enc.append(3, &rec);
        let third = enc.seal(3).unwrap();
        assert!(third.starts_segment);
        assert_eq!(
            (third.segment_first_lsn, third.segment_salt, third.offset),
            (3, SALT + 1, SEGMENT_HEADER_BYTES)
        );
        assert_eq!(
            body_len(&third),
            body_len(&first),
            "the name is defined again in the new segment"
        );
        let old = image(&[first, second], 0);
        let (records, _) = read_all(&old, 0);
        assert_eq!(records.len(), 2);
        let new = image(&[third], 0);
        let (records, _) = read_all(&new, 0);
        assert_eq!((records[0].0, records[0].2.name()), (3, &b"views:home"[..]));
    }

    /// A reader resumed from a kept position reads on exactly as one that never stopped: names
    /// defined before the stop resolve, and a resume over a longer read of the file sees the
    /// batches written since.
    #[test]
    fn a_resumed_reader_continues_where_it_stopped() {
        let mut enc = fresh_encoder(1 << 20);
        let names: [&[u8]; 3] = [b"a", b"bb", b"ccc"];
        let mut sealed = Vec::new();
        for lsn in 1..=9u64 {
            let id = (lsn % 3) as u32;
            let name = names[id as usize];
            enc.append(
                lsn,
                &LogRecord::Incr {
                    name,
                    name_id: id,
                    delta: lsn as i64,
                    key: None,
                },
            );
            if lsn % 2 == 0 || lsn == 9 {
                sealed.push(enc.seal(lsn * 10).unwrap());
            }
        }
        let full = image(&sealed, 0);
        let (expected, _) = read_all(&full, 0);
        // The file as read while only the first two batches were written.
        let written = sealed[2].offset as usize;
        let mut partial = full.clone();
        partial[written..].fill(0);
        let mut reader = SegmentReader::new(&partial, 0).unwrap();
        let mut got = Vec::new();
        while let Step::Batch { .. } = reader
            .next_batch(&mut |e: Entry<'_>| got.push((e.lsn, e.time_ms, e.record.with_name_id(0))))
            .unwrap()
        {}
        let mut position = ReaderPositionForTest::default();
        reader.position_into(&mut position);
        assert_eq!(position.offset, written as u64);
        assert_eq!(position.dict.len(), 3);
        // Later: the whole file, resumed.
        let mut reader = SegmentReader::resume(&full, 0, &position).unwrap();
        while let Step::Batch { .. } = reader
            .next_batch(&mut |e: Entry<'_>| got.push((e.lsn, e.time_ms, e.record.with_name_id(0))))
            .unwrap()
        {}
        assert_eq!(got, expected);
        // A position naming bytes outside the file is refused, not a panic.
        position.dict.push((full.len() as u64, 200));
        assert!(SegmentReader::resume(&full, 0, &position).is_err());
    }

    #[test]
    fn room_reports_seal_first_then_disk_full_without_a_next_segment() {
        // Room for two maximal batches: the first fills up (SealFirst), the second fills the segment.
        let segment_bytes = SEGMENT_HEADER_BYTES + 2 * BATCH_BYTES_MAX;
        let mut enc = fresh_encoder(segment_bytes);
        let mut lsn = 0;
        let mut seen = Vec::new();
        let name = [b'x'; 200];
        loop {
            let room = enc.room();
            if seen.last() != Some(&room) {
                seen.push(room);
            }
            match room {
                Room::Ready => {
                    lsn += 1;
                    let reason = [b'r'; 1000];
                    enc.append(
                        lsn,
                        &LogRecord::Reset {
                            name: &name,
                            name_id: lsn as u32,
                            old: 0,
                            new: 0,
                            reason: &reason,
                            client: b"c",
                        },
                    );
                }
                Room::SealFirst => {
                    let sealed = enc.seal(0).unwrap();
                    enc.recycle(sealed);
                }
                Room::DiskFull => break,
            }
        }
        assert_eq!(seen, [Room::Ready, Room::SealFirst, Room::Ready, Room::DiskFull]);
        // The buffered records still fit: sealing them lands inside the segment.
        let last = enc.seal(0).unwrap();
        assert!(last.offset + last.bytes().len() as u64 <= segment_bytes);
        enc.grant_rotation(9);
        assert_eq!(enc.room(), Room::Ready);
    }

    #[test]
    fn steady_state_append_reuses_both_buffers() {
        let mut enc = fresh_encoder(1 << 20);
        let rec = LogRecord::Incr {
            name: b"n",
            name_id: 1,
            delta: 1,
            key: None,
        };
        let mut lsn = 0;
        let mut capacities = Vec::new();
        for round in 0..4 {
            for _ in 0..100 {
                lsn += 1;
                enc.append(lsn, &rec);
            }
            let sealed = enc.seal(round).unwrap();
            capacities.push((sealed.bytes.as_ptr() as usize, sealed.bytes.capacity()));
            enc.recycle(sealed);
        }
        // Two buffers alternate.
        assert_eq!(capacities[0].0, capacities[2].0);
        assert_eq!(capacities[1].0, capacities[3].0);
    }

    proptest! {
        #[test]
        fn any_records_round_trip_through_batches(
            batches in proptest::collection::vec(proptest::collection::vec((arb_parts(), 0u32..6), 1..20), 1..6),
        ) {
            let names: Vec<Vec<u8>> = (0..6).map(|i| format!("counter:{i}").into_bytes()).collect();
            let mut enc = fresh_encoder(16 << 20);
            let mut lsn = 0;
            let mut expected = Vec::new();
            let mut sealed = Vec::new();
            for (t, batch) in batches.iter().enumerate() {
                for (parts, which) in batch {
                    lsn += 1;
                    let record = build(parts, &names[*which as usize], *which);
                    enc.append(lsn, &record);
                    expected.push((lsn, t as u64, record.with_name_id(0)));
                }
                sealed.push(enc.seal(t as u64).unwrap());
            }
            let img = image(&sealed, 1);
            let (records, end) = read_all(&img, 1);
            prop_assert_eq!(records, expected);
            let clean = matches!(end, Step::End(crate::segment::SegmentEnd::Zeros { .. }));
            prop_assert!(clean);
        }

        #[test]
        fn checking_garbage_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..9000), offset in 0u64..3) {
            let _ = check(&bytes, offset * BLOCK_BYTES, SALT);
        }

        #[test]
        fn any_single_bit_flip_in_a_batch_is_caught(bit in 0usize..(BLOCK_BYTES as usize * 8)) {
            let mut enc = fresh_encoder(1 << 20);
            for lsn in 1..=50 {
                enc.append(lsn, &LogRecord::Incr { name: b"abc", name_id: lsn as u32 % 3, delta: lsn as i64, key: None });
            }
            let sealed = enc.seal(5).unwrap();
            let mut bytes = sealed.bytes().to_vec();
            let used = BATCH_HEADER_BYTES as usize + u32_at(&bytes, 4) as usize;
            bytes[bit / 8] ^= 1 << (bit % 8);
            let caught = !matches!(check(&bytes, 0, SALT), BatchCheck::Valid { .. });
            // A flip in the zero padding after the body changes nothing the batch says.
            prop_assert_eq!(caught, bit / 8 < used);
        }
    }
}
