//! What a shard tells its write-ahead log: one `LogRecord` per state change, handed to a `LogSink`
//! with the change's lsn, synchronously, before `apply` / `tick` returns.
//!
//! Invariants (asserted at the edges of every `Shard` method that changes state):
//! - every lsn a shard assigns is recorded exactly once, in lsn order, each one the previous + 1;
//! - nothing is recorded without an lsn;
//! - a record carries exactly what `Shard::replay` needs to reproduce the state the change left
//!   (including dedup entries and audit records), and nothing the replaying shard can recompute.
//!
//! Names in records borrow from the engine (its arena or the op being applied) for the duration of
//! the `record` call only; the sink copies what it keeps, so the engine allocates nothing to log.
//! `name_id` is the name's offset in the recording shard's name arena: stable for the shard's
//! lifetime, reproduced by replay and by `Shard::from_snapshot`, unique among the names the shard
//! has logged, so the WAL can use it as a dictionary key. Replay itself finds names by their bytes
//! and ignores `name_id`, so the WAL may hand records back with its own ids. A non-owner that logs a slot increment
//! of another shard's split counter stores that name once in its own arena to give it an id.
//!
//! DURABILITY-NOTES.md next to this crate explains the records, replay, split epochs and the
//! cross-shard reconcile, and why recovery counts every durable increment exactly once.

use tally_proto::CounterKind;

/// The idempotency key of a keyed INCR and the value a duplicate is answered with. The value is
/// logged because replay cannot always recompute it: at the owner of a split counter the answer
/// includes the other shards' slots at that moment.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Keyed {
    pub key: u128,
    pub value: i64,
}

/// One state change of one shard. Every variant names its counter by `name` and `name_id` (see the
/// module doc).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogRecord<'a> {
    /// An INCR applied at the owner, including one that created the counter (replay creates it
    /// with the kind and bounds of its namespace rule, as the original did).
    Incr {
        name: &'a [u8],
        name_id: u32,
        delta: i64,
        key: Option<Keyed>,
    },
    /// CREATE made a new counter (a CREATE of an existing counter changes nothing and logs nothing).
    /// Analytic counters have `min = i64::MIN`, `max = i64::MAX`.
    Create {
        name: &'a [u8],
        name_id: u32,
        kind: CounterKind,
        initial: i64,
        min: i64,
        max: i64,
    },
    /// A CAS set the value (creating the counter in a strict namespace if it was unknown).
    Cas { name: &'a [u8], name_id: u32, new: i64 },
    /// A bounded add (creating the counter in a strict namespace if it was unknown). The dedup value
    /// of a keyed one is the new value, which replay computes.
    AddBounded {
        name: &'a [u8],
        name_id: u32,
        delta: i64,
        key: Option<u128>,
    },
    /// An admin RESET. `old` is checked by replay; `reason` and `client` go to the audit ring.
    Reset {
        name: &'a [u8],
        name_id: u32,
        old: i64,
        new: i64,
        reason: &'a [u8],
        client: &'a [u8],
    },
    /// An unkeyed INCR of another shard's split counter, added into this shard's slot of split
    /// `epoch`. Logged only after the slot's compare-exchange succeeded.
    SlotIncr {
        name: &'a [u8],
        name_id: u32,
        epoch: u64,
        delta: i64,
    },
    /// The owner split the counter; `epoch` is this record's own lsn. The value does not change.
    Split { name: &'a [u8], name_id: u32, epoch: u64 },
    /// The owner closed every slot of split `epoch` and added `amount` (what the slots held) to its
    /// own part. Also written by recovery (`Shard::fold_recovered`) for a split whose merge was
    /// lost, with the recovered slot parts as `amount`; replay then creates the counter (analytic)
    /// if the owner's log lost its creation too.
    Merge {
        name: &'a [u8],
        name_id: u32,
        epoch: u64,
        amount: i64,
    },
}

impl<'a> LogRecord<'a> {
    pub fn name(&self) -> &'a [u8] {
        let mut record = *self;
        record.name_fields().0
    }

    pub fn name_id(&self) -> u32 {
        let mut record = *self;
        *record.name_fields().1
    }

    /// The same record with another `name_id` (decoding fills in the dictionary id; tests compare
    /// records across the two).
    pub fn with_name_id(mut self, id: u32) -> LogRecord<'a> {
        *self.name_fields().1 = id;
        self
    }

    /// The two fields every variant has.
    fn name_fields(&mut self) -> (&mut &'a [u8], &mut u32) {
        match self {
            LogRecord::Incr { name, name_id, .. }
            | LogRecord::Create { name, name_id, .. }
            | LogRecord::Cas { name, name_id, .. }
            | LogRecord::AddBounded { name, name_id, .. }
            | LogRecord::Reset { name, name_id, .. }
            | LogRecord::SlotIncr { name, name_id, .. }
            | LogRecord::Split { name, name_id, .. }
            | LogRecord::Merge { name, name_id, .. } => (name, name_id),
        }
    }
}

/// Where a shard sends its records: the WAL, or `NullLog`. Called synchronously on the shard's
/// thread; it must not call back into the shard. It returns nothing: a log that cannot accept a
/// record is fatal for the shard (the WAL poisons itself), not an op failure.
pub trait LogSink {
    fn record(&mut self, lsn: u64, record: &LogRecord<'_>);
}

/// A sink that drops every record: for a node without durability, tests and tools.
#[derive(Debug, Clone, Copy, Default)]
pub struct NullLog;

impl LogSink for NullLog {
    #[inline]
    fn record(&mut self, _lsn: u64, _record: &LogRecord<'_>) {}
}

/// Wraps the caller's sink for one call of a `Shard` method and asserts the lsn rules: each record's
/// lsn is the previous one + 1. The method asserts at its end that `lsn` reached its own lsn, so no
/// lsn goes unrecorded.
pub(crate) struct LsnCheck<'s> {
    inner: &'s mut dyn LogSink,
    pub lsn: u64,
}

impl<'s> LsnCheck<'s> {
    pub fn new(inner: &'s mut dyn LogSink, lsn: u64) -> LsnCheck<'s> {
        LsnCheck { inner, lsn }
    }
}

impl LogSink for LsnCheck<'_> {
    #[inline]
    fn record(&mut self, lsn: u64, record: &LogRecord<'_>) {
        assert_eq!(
            lsn,
            self.lsn + 1,
            "lsns are recorded in order, each one the previous + 1"
        );
        self.lsn = lsn;
        self.inner.record(lsn, record);
    }
}

/// Why a record (or a recovered slot part) cannot be applied: the log and the state diverged. Replay
/// changes nothing when it returns an error; recovery must stop (a corrupt or foreign log).
#[non_exhaustive]
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ReplayError {
    #[error("expected lsn {expected}, the log has {found}: a gap or a repeat")]
    LsnGap { expected: u64, found: u64 },
    #[error("lsn {lsn}: the record does not fit the shard's state: {reason}")]
    Inconsistent { lsn: u64, reason: &'static str },
    #[error("lsn {lsn}: the name arena is full")]
    TableFull { lsn: u64 },
}

/// Owned copies of records: tests keep whole logs with them, and the node holds the records that
/// recovery's reconcile produces until the shard's log is open to take them.
pub mod owned {
    use super::*;

    /// A record with owned bytes: the record's shape with empty slices, plus the bytes.
    #[derive(Debug, Clone, PartialEq, Eq)]
    pub struct Owned {
        shape: LogRecord<'static>,
        name: Vec<u8>,
        reason: Vec<u8>,
        client: Vec<u8>,
    }

    impl Owned {
        pub fn of(record: &LogRecord<'_>) -> Owned {
            let (reason, client) = match *record {
                LogRecord::Reset { reason, client, .. } => (reason.to_vec(), client.to_vec()),
                _ => (Vec::new(), Vec::new()),
            };
            Owned {
                shape: with_bytes(record, b"", b"", b""),
                name: record.name().to_vec(),
                reason,
                client,
            }
        }

        pub fn record(&self) -> LogRecord<'_> {
            with_bytes(&self.shape, &self.name, &self.reason, &self.client)
        }
    }

    fn with_bytes<'a>(record: &LogRecord<'_>, name: &'a [u8], reason: &'a [u8], client: &'a [u8]) -> LogRecord<'a> {
        match *record {
            LogRecord::Incr {
                name_id, delta, key, ..
            } => LogRecord::Incr {
                name,
                name_id,
                delta,
                key,
            },
            LogRecord::Create {
                name_id,
                kind,
                initial,
                min,
                max,
                ..
            } => LogRecord::Create {
                name,
                name_id,
                kind,
                initial,
                min,
                max,
            },
            LogRecord::Cas { name_id, new, .. } => LogRecord::Cas { name, name_id, new },
            LogRecord::AddBounded {
                name_id, delta, key, ..
            } => LogRecord::AddBounded {
                name,
                name_id,
                delta,
                key,
            },
            LogRecord::Reset { name_id, old, new, .. } => LogRecord::Reset {
                name,
                name_id,
                old,
                new,
                reason,
                client,
            },
            LogRecord::SlotIncr {
                name_id, epoch, delta, ..
            } => LogRecord::SlotIncr {
                name,
                name_id,
                epoch,
                delta,
            },
            LogRecord::Split { name_id, epoch, .. } => LogRecord::Split { name, name_id, epoch },
            LogRecord::Merge {
                name_id, epoch, amount, ..
            } => LogRecord::Merge {
                name,
                name_id,
                epoch,
                amount,
            },
        }
    }

    /// Keeps (lsn, time, record) for every record; `now_ms` is the time the test applies at.
    #[derive(Debug, Default)]
    pub struct Recorder {
        pub records: Vec<(u64, u64, Owned)>,
        pub now_ms: u64,
    }

    impl LogSink for Recorder {
        fn record(&mut self, lsn: u64, record: &LogRecord<'_>) {
            if let Some(&(last, _, _)) = self.records.last() {
                assert_eq!(lsn, last + 1);
            }
            self.records.push((lsn, self.now_ms, Owned::of(record)));
        }
    }

    #[test]
    fn owned_records_give_back_what_they_copied() {
        let record = LogRecord::Reset {
            name: b"n",
            name_id: 4,
            old: 1,
            new: 2,
            reason: b"why",
            client: b"who",
        };
        assert_eq!(Owned::of(&record).record(), record);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Count(u64);

    impl LogSink for Count {
        fn record(&mut self, _lsn: u64, _record: &LogRecord<'_>) {
            self.0 += 1;
        }
    }

    #[test]
    fn lsn_check_passes_records_in_order() {
        let mut count = Count(0);
        let mut check = LsnCheck::new(&mut count, 7);
        let record = LogRecord::Split {
            name: b"a",
            name_id: 3,
            epoch: 8,
        };
        check.record(8, &record);
        check.record(9, &record);
        assert_eq!(check.lsn, 9);
        assert_eq!(count.0, 2);
        assert_eq!(record.name(), b"a");
        assert_eq!(record.name_id(), 3);
    }

    #[test]
    #[should_panic(expected = "each one the previous + 1")]
    fn lsn_check_refuses_a_gap() {
        let mut sink = NullLog;
        let mut check = LsnCheck::new(&mut sink, 7);
        check.record(
            9,
            &LogRecord::Cas {
                name: b"a",
                name_id: 0,
                new: 1,
            },
        );
    }
}
