//! The records a primary shard can still ship without reading its segments: a bounded window of
//! its newest log records, already encoded as Ship frame bodies (`RecordsEncoder`, one frame-local
//! dictionary per chunk).
//!
//! Every record the shard logs is also pushed here (a tee of the WAL's sink), and `seal` is called
//! with the batch time whenever the WAL seals a batch, so chunks carry the same times as the WAL's
//! batches. A chunk is closed at seal, or earlier when it reaches a Ship frame's limits. Beyond
//! `bytes_max` the oldest chunks are dropped: a replica that needs them gets a snapshot.
//!
//! Pure: no I/O, no clock. `Send`, so recovery (on plain threads) can fill it from the replayed log.

use std::collections::VecDeque;

use bytes::Bytes;
use tally_engine::LogRecord;
use tally_replicate::limits::{SHIP_RECORDS_MAX, SHIP_RECORD_BYTES_MAX};
use tally_replicate::{decode_records, RecordsEncoder};
use tally_wal::limits::OP_BYTES_MAX;

/// A run of consecutive records with one batch time, encoded as a Ship frame's record bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Chunk {
    pub lsn_first: u64,
    pub lsn_last: u64,
    pub time_ms: u64,
    pub records: Bytes,
}

/// A bounded window of the newest records, by lsn.
pub struct ShipLog {
    open: RecordsEncoder,
    /// The lsn of the first record in `open` (meaningful when it holds any).
    open_first: u64,
    /// Chunks closed early (full), waiting for their batch's seal time.
    unsealed: Vec<(u64, u64, Bytes)>,
    chunks: VecDeque<Chunk>,
    bytes: usize,
    bytes_max: usize,
    lsn_next: u64,
    lsn_sealed: u64,
    retained_first: u64,
}

impl ShipLog {
    /// An empty window whose next record is `lsn_next`.
    pub fn new(lsn_next: u64, bytes_max: usize) -> ShipLog {
        assert!(lsn_next >= 1);
        ShipLog {
            open: RecordsEncoder::new(),
            open_first: lsn_next,
            unsealed: Vec::new(),
            chunks: VecDeque::new(),
            bytes: 0,
            bytes_max,
            lsn_next,
            lsn_sealed: lsn_next - 1,
            retained_first: lsn_next,
        }
    }

    /// The last lsn sealed (shippable).
    pub fn lsn_sealed(&self) -> u64 {
        self.lsn_sealed
    }

    /// The oldest lsn still held (`lsn_sealed + 1` when empty).
    pub fn retained_first(&self) -> u64 {
        self.retained_first
    }

    pub fn bytes(&self) -> usize {
        self.bytes
    }

    /// Adds the next record. Records must come in lsn order without gaps.
    pub fn push(&mut self, lsn: u64, record: &LogRecord<'_>) {
        assert_eq!(lsn, self.lsn_next, "ship log records come in lsn order");
        if self.open.count() == 0 {
            self.open_first = lsn;
        }
        self.open.push(record);
        self.lsn_next = lsn + 1;
        if self.open.count() >= SHIP_RECORDS_MAX
            || self.open.len_bytes() + OP_BYTES_MAX as usize > SHIP_RECORD_BYTES_MAX
        {
            self.close_open();
        }
    }

    fn close_open(&mut self) {
        if self.open.count() == 0 {
            return;
        }
        let last = self.open_first + self.open.count() - 1;
        let bytes = Bytes::from(self.open.take());
        self.unsealed.push((self.open_first, last, bytes));
    }

    /// The WAL sealed everything pushed so far as a batch of `time_ms`. Returns the new sealed lsn
    /// if it moved.
    pub fn seal(&mut self, time_ms: u64) -> Option<u64> {
        self.close_open();
        if self.unsealed.is_empty() {
            return None;
        }
        for (lsn_first, lsn_last, records) in self.unsealed.drain(..) {
            self.bytes += records.len();
            self.chunks.push_back(Chunk {
                lsn_first,
                lsn_last,
                time_ms,
                records,
            });
        }
        self.lsn_sealed = self.lsn_next - 1;
        while self.bytes > self.bytes_max && self.chunks.len() > 1 {
            let dropped = self.chunks.pop_front().expect("more than one chunk");
            self.bytes -= dropped.records.len();
            self.retained_first = dropped.lsn_last + 1;
        }
        Some(self.lsn_sealed)
    }

    /// Forgets everything and continues at `lsn_next` (a replica that installed a snapshot).
    pub fn reset(&mut self, lsn_next: u64) {
        *self = ShipLog::new(lsn_next, self.bytes_max);
    }

    /// The sealed records `lsn_first..=lsn_last` as Ship frame bodies, in order: whole chunks are
    /// shared, a chunk cut by the range is re-encoded. `None` if any of them is no longer held.
    pub fn range(&self, lsn_first: u64, lsn_last: u64) -> Option<Vec<Chunk>> {
        if lsn_first < self.retained_first || lsn_last > self.lsn_sealed || lsn_first > lsn_last {
            return None;
        }
        let start = self.chunks.partition_point(|c| c.lsn_last < lsn_first);
        let mut out = Vec::new();
        for chunk in self.chunks.iter().skip(start) {
            if chunk.lsn_first > lsn_last {
                break;
            }
            if chunk.lsn_first >= lsn_first && chunk.lsn_last <= lsn_last {
                out.push(chunk.clone());
                continue;
            }
            let from = chunk.lsn_first.max(lsn_first);
            let to = chunk.lsn_last.min(lsn_last);
            let mut encoder = RecordsEncoder::new();
            let count = chunk.lsn_last - chunk.lsn_first + 1;
            decode_records(&chunk.records, count, &mut |index, record| {
                let lsn = chunk.lsn_first + index;
                if (from..=to).contains(&lsn) {
                    encoder.push(&record);
                }
            })
            .expect("chunks are encoded by this log");
            out.push(Chunk {
                lsn_first: from,
                lsn_last: to,
                time_ms: chunk.time_ms,
                records: Bytes::from(encoder.take()),
            });
        }
        Some(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn incr(lsn: u64) -> LogRecord<'static> {
        const NAMES: [&[u8]; 3] = [b"a", b"bb", b"ccc"];
        LogRecord::Incr {
            name: NAMES[(lsn % 3) as usize],
            name_id: 0,
            delta: lsn as i64,
            key: None,
        }
    }

    fn decoded(chunks: &[Chunk]) -> Vec<(u64, u64, i64)> {
        let mut out = Vec::new();
        for c in chunks {
            decode_records(&c.records, c.lsn_last - c.lsn_first + 1, &mut |i, record| {
                let LogRecord::Incr { delta, .. } = record else {
                    panic!("{record:?}")
                };
                out.push((c.lsn_first + i, c.time_ms, delta));
            })
            .unwrap();
        }
        out
    }

    #[test]
    fn sealed_batches_become_chunks_with_their_time_and_ranges_cut_them() {
        let mut log = ShipLog::new(1, 1 << 20);
        for lsn in 1..=5 {
            log.push(lsn, &incr(lsn));
        }
        assert_eq!(log.range(1, 1), None, "nothing sealed yet");
        assert_eq!(log.seal(100), Some(5));
        for lsn in 6..=9 {
            log.push(lsn, &incr(lsn));
        }
        assert_eq!(log.seal(200), Some(9));
        assert_eq!(log.seal(300), None, "an empty seal changes nothing");
        let whole = log.range(1, 9).unwrap();
        assert_eq!(whole.len(), 2);
        let expect: Vec<_> = (1..=9)
            .map(|lsn| (lsn, if lsn <= 5 { 100 } else { 200 }, lsn as i64))
            .collect();
        assert_eq!(decoded(&whole), expect);
        // A range that cuts both chunks re-encodes the cut parts with their own dictionaries.
        let cut = log.range(3, 7).unwrap();
        assert_eq!(decoded(&cut), expect[2..7].to_vec());
        assert_eq!(log.range(3, 10), None, "beyond the sealed end");
    }

    #[test]
    fn old_chunks_are_dropped_beyond_the_byte_bound() {
        let mut log = ShipLog::new(10, 64);
        for lsn in 10..40 {
            log.push(lsn, &incr(lsn));
            log.seal(lsn * 10);
        }
        assert!(log.bytes() <= 64 + 16, "{} bytes held", log.bytes());
        let first = log.retained_first();
        assert!(first > 10 && first <= 39);
        assert_eq!(log.range(first - 1, 39), None);
        let held = log.range(first, 39).unwrap();
        assert_eq!(decoded(&held).len() as u64, 40 - first);
    }

    #[test]
    fn a_full_chunk_closes_early_and_takes_the_seal_time() {
        let mut log = ShipLog::new(1, usize::MAX);
        let long = [b'n'; 200];
        let count = (SHIP_RECORD_BYTES_MAX / 200) as u64 + 10;
        for lsn in 1..=count {
            let name = [&long[..], &lsn.to_le_bytes()].concat();
            let record = LogRecord::Incr {
                name: &name,
                name_id: 0,
                delta: 1,
                key: None,
            };
            log.push(lsn, &record);
        }
        log.seal(7);
        let chunks = log.range(1, count).unwrap();
        assert!(chunks.len() >= 2, "a frame's byte limit splits the batch");
        assert!(chunks
            .iter()
            .all(|c| c.time_ms == 7 && c.records.len() <= SHIP_RECORD_BYTES_MAX));
        assert_eq!(chunks.last().unwrap().lsn_last, count);
    }
}
