//! The idempotency-key set of one shard: key -> (name hash, delta, first outcome, lsn, time).
//!
//! A keyed write (INCR or ADD_BOUNDED with a key) that succeeds is recorded here; a later write with
//! the same key inside the window is a duplicate (same name and delta: answer the first outcome,
//! apply nothing) or a conflict (another name or delta). Failed writes are never recorded, so a
//! retry of a failed write is applied normally.
//!
//! Layout: the records sit in a ring in time order (oldest first) and a `HashTable<u32>` indexes them
//! by key, holding each record's sequence number. Expiry pops from the front of the ring, so it
//! costs O(1) per record ever inserted and never scans. The set is bounded by `entries_max`: when
//! full, the oldest record is evicted before its window ends (counted in `evicted_early`), so under
//! a sustained keyed-write rate above `entries_max / window` the effective window shrinks to
//! `entries_max / rate`.
//!
//! Record times never go backwards: a record gets `max(now, newest record's time)`, which keeps the
//! ring sorted even if the clock steps back (such records just live a little longer).

use std::collections::VecDeque;

use hashbrown::HashTable;

use crate::table::table_hash;

/// One remembered key. 56 bytes: the key is stored as two u64 so the record needs no 16-byte
/// alignment.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct DedupRecord {
    key_lo: u64,
    key_hi: u64,
    name_hash: u64,
    delta: i64,
    value: i64,
    lsn: u64,
    time_ms: u64,
}

const _: () = assert!(std::mem::size_of::<DedupRecord>() == 56);

impl DedupRecord {
    fn key(&self) -> u128 {
        (u128::from(self.key_hi) << 64) | u128::from(self.key_lo)
    }
}

/// One remembered key, as snapshots carry it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DedupEntry {
    pub key: u128,
    pub name_hash: u64,
    pub delta: i64,
    pub value: i64,
    pub lsn: u64,
    pub time_ms: u64,
}

/// Why a snapshot's dedup entries cannot be restored.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DedupRestoreError {
    /// The key is already in the set.
    DuplicateKey,
    /// Entries must come oldest first, and not be newer than the set's newest time.
    TimeOrder,
    /// More entries than the set holds.
    Full,
}

/// What the set says about a keyed write.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DedupCheck {
    /// The key is not in the window: apply the write (and record it if it succeeds).
    Fresh,
    /// The same write was applied before: answer its outcome, apply nothing.
    Duplicate { value: i64, lsn: u64 },
    /// The key was used for another name or delta.
    Conflict,
}

pub struct Dedup {
    window_ms: u64,
    entries_max: usize,
    ring: VecDeque<DedupRecord>,
    /// Sequence number of `ring[0]`; `ring[i]` has `head_seq + i` (wrapping).
    head_seq: u32,
    index: HashTable<u32>,
    evicted_early: u64,
    time_last_ms: u64,
}

fn key_hash(key: u128) -> u64 {
    table_hash(key as u64 ^ table_hash((key >> 64) as u64))
}

impl Dedup {
    pub fn new(window_ms: u64, entries_max: usize) -> Dedup {
        assert!(window_ms > 0);
        assert!(entries_max > 0);
        assert!(
            entries_max <= (u32::MAX / 2) as usize,
            "sequence numbers must not wrap within the ring"
        );
        Dedup {
            window_ms,
            entries_max,
            ring: VecDeque::new(),
            head_seq: 0,
            index: HashTable::new(),
            evicted_early: 0,
            time_last_ms: 0,
        }
    }

    /// Checks a keyed write against the set, after dropping the records that left the window.
    pub fn check(&mut self, key: u128, name_hash: u64, delta: i64, now_ms: u64) -> DedupCheck {
        self.expire(now_ms);
        match self.find(key) {
            None => DedupCheck::Fresh,
            Some(record) if record.name_hash == name_hash && record.delta == delta => DedupCheck::Duplicate {
                value: record.value,
                lsn: record.lsn,
            },
            Some(_) => DedupCheck::Conflict,
        }
    }

    /// Remembers a successful keyed write. The key must not be in the set (the caller checked).
    pub fn record(&mut self, key: u128, name_hash: u64, delta: i64, value: i64, lsn: u64, now_ms: u64) {
        assert!(self.find(key).is_none(), "a key is recorded once per window");
        if self.ring.len() == self.entries_max {
            self.pop_front();
            self.evicted_early += 1;
        }
        self.time_last_ms = self.time_last_ms.max(now_ms);
        let record = DedupRecord {
            key_lo: key as u64,
            key_hi: (key >> 64) as u64,
            name_hash,
            delta,
            value,
            lsn,
            time_ms: self.time_last_ms,
        };
        let seq = self.head_seq.wrapping_add(self.ring.len() as u32);
        self.ring.push_back(record);
        let ring = &self.ring;
        let head = self.head_seq;
        self.index.insert_unique(key_hash(key), seq, |&s| {
            key_hash(ring[s.wrapping_sub(head) as usize].key())
        });
        assert_eq!(self.ring.len(), self.index.len());
        assert!(self.ring.len() <= self.entries_max);
    }

    /// Replay of a logged keyed write at `time_ms`: as `check` + `record`, except that the key may
    /// still be in the set when the log's time is a little behind the time the write was applied
    /// at. The original found the key expired, so it had expired every older record too: drop
    /// records up to and including the key's, which is the state the original recorded into.
    pub fn replay_record(&mut self, key: u128, name_hash: u64, delta: i64, value: i64, lsn: u64, time_ms: u64) {
        self.expire(time_ms);
        if self.find(key).is_some() {
            loop {
                let front = self.ring.front().expect("the key is in the ring").key();
                self.pop_front();
                if front == key {
                    break;
                }
            }
        }
        self.record(key, name_hash, delta, value, lsn, time_ms);
    }

    /// Every record, oldest first.
    pub fn entries(&self) -> impl Iterator<Item = DedupEntry> + '_ {
        self.ring.iter().map(|r| DedupEntry {
            key: r.key(),
            name_hash: r.name_hash,
            delta: r.delta,
            value: r.value,
            lsn: r.lsn,
            time_ms: r.time_ms,
        })
    }

    /// The newest time a record got (records never get an older one).
    pub fn time_last_ms(&self) -> u64 {
        self.time_last_ms
    }

    /// Snapshot restore: appends `entry` (entries come oldest first). Never panics on bad input.
    pub fn restore(&mut self, entry: DedupEntry) -> Result<(), DedupRestoreError> {
        if self.ring.len() == self.entries_max {
            return Err(DedupRestoreError::Full);
        }
        if entry.time_ms < self.time_last_ms {
            return Err(DedupRestoreError::TimeOrder);
        }
        if self.find(entry.key).is_some() {
            return Err(DedupRestoreError::DuplicateKey);
        }
        self.record(
            entry.key,
            entry.name_hash,
            entry.delta,
            entry.value,
            entry.lsn,
            entry.time_ms,
        );
        Ok(())
    }

    /// Snapshot restore: the set's newest time, at least the newest entry's.
    pub fn restore_time_last_ms(&mut self, time_last_ms: u64) -> Result<(), DedupRestoreError> {
        if time_last_ms < self.time_last_ms {
            return Err(DedupRestoreError::TimeOrder);
        }
        self.time_last_ms = time_last_ms;
        Ok(())
    }

    /// Drops every record whose window has ended at `now_ms`; returns how many.
    pub fn expire(&mut self, now_ms: u64) -> usize {
        let mut expired = 0;
        while let Some(front) = self.ring.front() {
            if front.time_ms.saturating_add(self.window_ms) > now_ms {
                break;
            }
            self.pop_front();
            expired += 1;
        }
        expired
    }

    pub fn len(&self) -> usize {
        self.ring.len()
    }

    pub fn is_empty(&self) -> bool {
        self.ring.is_empty()
    }

    /// Records dropped before their window ended because the set was full.
    pub fn evicted_early(&self) -> u64 {
        self.evicted_early
    }

    pub fn memory_bytes(&self) -> u64 {
        (self.ring.capacity() * std::mem::size_of::<DedupRecord>() + self.index.allocation_size()) as u64
    }

    fn find(&self, key: u128) -> Option<&DedupRecord> {
        let ring = &self.ring;
        let head = self.head_seq;
        let seq = self
            .index
            .find(key_hash(key), |&s| ring[s.wrapping_sub(head) as usize].key() == key)?;
        Some(&ring[seq.wrapping_sub(head) as usize])
    }

    fn pop_front(&mut self) {
        let front = self.ring.front().expect("pop_front on a non-empty ring");
        let head = self.head_seq;
        match self.index.find_entry(key_hash(front.key()), |&s| s == head) {
            Ok(entry) => {
                entry.remove();
            }
            Err(_) => panic!("every record in the ring is indexed"),
        }
        self.ring.pop_front();
        self.head_seq = self.head_seq.wrapping_add(1);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn duplicate_returns_the_first_outcome() {
        let mut dedup = Dedup::new(1000, 16);
        assert_eq!(dedup.check(7, 100, 5, 0), DedupCheck::Fresh);
        dedup.record(7, 100, 5, 42, 3, 0);
        assert_eq!(dedup.check(7, 100, 5, 10), DedupCheck::Duplicate { value: 42, lsn: 3 });
        assert_eq!(dedup.check(7, 100, 6, 10), DedupCheck::Conflict);
        assert_eq!(dedup.check(7, 101, 5, 10), DedupCheck::Conflict);
        assert_eq!(dedup.check(8, 100, 5, 10), DedupCheck::Fresh);
        assert_eq!(dedup.len(), 1);
    }

    #[test]
    fn keys_expire_after_the_window() {
        let mut dedup = Dedup::new(1000, 16);
        dedup.record(1, 1, 1, 1, 1, 100);
        dedup.record(2, 1, 1, 2, 2, 600);
        assert_eq!(dedup.check(1, 1, 1, 1099), DedupCheck::Duplicate { value: 1, lsn: 1 });
        assert_eq!(dedup.check(1, 1, 1, 1100), DedupCheck::Fresh);
        assert_eq!(dedup.len(), 1);
        assert_eq!(dedup.expire(1600), 1);
        assert!(dedup.is_empty());
        assert_eq!(dedup.evicted_early(), 0);
    }

    #[test]
    fn a_full_set_evicts_the_oldest_early() {
        let mut dedup = Dedup::new(1_000_000, 4);
        for key in 0..10u128 {
            dedup.record(key, 9, 1, key as i64, key as u64, key as u64);
        }
        assert_eq!(dedup.len(), 4);
        assert_eq!(dedup.evicted_early(), 6);
        for key in 0..6u128 {
            assert_eq!(dedup.check(key, 9, 1, 20), DedupCheck::Fresh);
        }
        for key in 6..10u128 {
            assert_eq!(
                dedup.check(key, 9, 1, 20),
                DedupCheck::Duplicate {
                    value: key as i64,
                    lsn: key as u64
                }
            );
        }
    }

    #[test]
    fn time_going_backwards_keeps_the_ring_sorted() {
        let mut dedup = Dedup::new(100, 16);
        dedup.record(1, 0, 0, 0, 0, 500);
        dedup.record(2, 0, 0, 0, 0, 400);
        // Record 2 got time 500, not 400: both expire together.
        assert_eq!(dedup.expire(599), 0);
        assert_eq!(dedup.expire(600), 2);
    }

    #[test]
    fn replay_drops_a_key_the_original_had_expired() {
        let mut dedup = Dedup::new(100, 16);
        dedup.record(1, 0, 1, 10, 1, 0);
        dedup.record(2, 0, 1, 20, 2, 10);
        dedup.record(3, 0, 1, 30, 3, 20);
        // The original applied key 2 again at time 110 (both 1 and 2 expired); the log says 105.
        dedup.replay_record(2, 0, 1, 40, 4, 105);
        assert_eq!(dedup.len(), 2);
        assert_eq!(dedup.check(1, 0, 1, 105), DedupCheck::Fresh);
        assert_eq!(dedup.check(2, 0, 1, 105), DedupCheck::Duplicate { value: 40, lsn: 4 });
        assert_eq!(dedup.check(3, 0, 1, 105), DedupCheck::Duplicate { value: 30, lsn: 3 });
    }

    #[test]
    fn restore_round_trips_and_refuses_bad_entries() {
        let mut dedup = Dedup::new(1000, 3);
        dedup.record(1, 5, 1, 10, 1, 50);
        dedup.record(2, 5, 2, 20, 2, 60);
        let mut restored = Dedup::new(1000, 3);
        for entry in dedup.entries() {
            restored.restore(entry).unwrap();
        }
        restored.restore_time_last_ms(dedup.time_last_ms()).unwrap();
        assert_eq!(
            restored.entries().collect::<Vec<_>>(),
            dedup.entries().collect::<Vec<_>>()
        );
        let entry = dedup.entries().next().unwrap();
        assert_eq!(restored.restore(entry), Err(DedupRestoreError::TimeOrder));
        let late = DedupEntry { time_ms: 70, ..entry };
        assert_eq!(restored.restore(late), Err(DedupRestoreError::DuplicateKey));
        restored.restore(DedupEntry { key: 3, ..late }).unwrap();
        assert_eq!(
            restored.restore(DedupEntry { key: 4, ..late }),
            Err(DedupRestoreError::Full)
        );
        assert_eq!(restored.restore_time_last_ms(69), Err(DedupRestoreError::TimeOrder));
    }

    #[test]
    fn many_keys_through_a_small_set() {
        // Sequence numbers keep pointing at the right records while the ring wraps many times.
        let mut dedup = Dedup::new(10, 64);
        for round in 0..1000u64 {
            let key = u128::from(round) << 64 | u128::from(round * 3);
            assert_eq!(dedup.check(key, round, 1, round), DedupCheck::Fresh);
            dedup.record(key, round, 1, round as i64, round, round);
            assert_eq!(
                dedup.check(key, round, 1, round),
                DedupCheck::Duplicate {
                    value: round as i64,
                    lsn: round
                }
            );
            assert!(dedup.len() <= 10);
        }
        assert_eq!(dedup.evicted_early(), 0);
    }
}
