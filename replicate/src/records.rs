//! The records inside a Ship frame: the engine's `LogRecord`s, encoded with a frame-local name
//! dictionary so every frame is self-contained.
//!
//! The entries are the WAL's, written and read by its codec (`tally_wal::record`, docs/wal.md,
//! "Entries"): a tag byte (low 6 bits the type, bit 7 "a key follows"), then LEB128 varints and
//! zigzag varints. The one difference is the dictionary's scope: the WAL's lives for a segment, this
//! one for one frame. A replica can therefore decode any frame alone — after a gap, a reconnect, a
//! corrupt frame, or a Fetch from a peer — and nothing on the wire depends on the primary's segment
//! boundaries. The cost is one DEFINE_NAME per distinct name per frame (name length + 3 bytes), small
//! next to a frame of many records.
//!
//! This file owns only that scope (the encoder's name → id map, the decoder's `NameDictionary` per
//! frame) and the frame's rule that it holds exactly its lsn range's records.

use crate::error::{invalid, DecodeError};
use tally_engine::LogRecord;
use tally_wal::record::{decode_entry, encode_define_name, encode_record, NameDictionary};
use tally_wal::WalError;

/// Builds the record bytes of one Ship frame. Reused across frames: `take` hands out the bytes and
/// starts a new frame (and a new dictionary), keeping the table's and the name arena's capacity.
///
/// The dictionary stores names in one arena and indexes them by hash, so pushing a record of a
/// name new to the frame allocates nothing once the buffers have grown (with many distinct names,
/// most records are of a new name: an allocation per name was a visible share of shipping).
#[derive(Default)]
pub struct RecordsEncoder {
    bytes: Vec<u8>,
    /// The frame's distinct names, back to back.
    names: Vec<u8>,
    /// (hash, offset in `names`, length, frame-local id) per distinct name.
    index: hashbrown::HashTable<(u64, u32, u32, u32)>,
    hasher: hashbrown::DefaultHashBuilder,
    count: u64,
}

impl std::fmt::Debug for RecordsEncoder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RecordsEncoder")
            .field("bytes", &self.bytes.len())
            .field("names", &self.index.len())
            .field("count", &self.count)
            .finish()
    }
}

impl RecordsEncoder {
    pub fn new() -> RecordsEncoder {
        RecordsEncoder::default()
    }

    /// Appends one record (the next lsn of the frame). The record's own `name_id` is ignored: ids are
    /// this frame's.
    pub fn push(&mut self, record: &LogRecord<'_>) {
        use std::hash::BuildHasher;
        let name = record.name();
        let hash = self.hasher.hash_one(name);
        let names = &self.names;
        let found = self
            .index
            .find(hash, |&(h, at, len, _)| {
                h == hash && &names[at as usize..(at + len) as usize] == name
            })
            .map(|&(_, _, _, id)| id);
        let id = match found {
            Some(id) => id,
            None => {
                let id = self.index.len() as u32;
                encode_define_name(&mut self.bytes, id, name);
                let at = self.names.len() as u32;
                self.names.extend_from_slice(name);
                self.index
                    .insert_unique(hash, (hash, at, name.len() as u32, id), |&(h, ..)| h);
                id
            }
        };
        encode_record(&mut self.bytes, id, record);
        self.count += 1;
    }

    /// Records pushed since the last `take`.
    pub fn count(&self) -> u64 {
        self.count
    }

    /// Bytes pushed since the last `take`: the runtime starts a new frame before this passes
    /// `SHIP_RECORD_BYTES_MAX` (one record is at most `tally_wal::limits::OP_BYTES_MAX`).
    pub fn len_bytes(&self) -> usize {
        self.bytes.len()
    }

    /// The frame's record bytes; the encoder starts over with an empty dictionary.
    pub fn take(&mut self) -> Vec<u8> {
        self.names.clear();
        self.index.clear();
        self.count = 0;
        std::mem::take(&mut self.bytes)
    }
}

/// Decodes the record bytes of a frame that must hold exactly `count` records, calling `visit` with
/// each record's index (0-based; its lsn is the frame's `lsn_first` + index) and the record, whose
/// `name_id` is its frame-local dictionary id. Validates everything before the first `visit`, so a
/// bad frame visits nothing. Never panics.
pub fn decode_records<'a>(
    bytes: &'a [u8],
    count: u64,
    visit: &mut dyn FnMut(u64, LogRecord<'a>),
) -> Result<(), DecodeError> {
    walk(bytes, count, &mut |_, _| {})?;
    walk(bytes, count, visit)
}

/// Checks that `bytes` hold exactly `count` valid records.
pub fn check_records(bytes: &[u8], count: u64) -> Result<(), DecodeError> {
    walk(bytes, count, &mut |_, _| {})
}

fn walk<'a>(bytes: &'a [u8], count: u64, visit: &mut dyn FnMut(u64, LogRecord<'a>)) -> Result<(), DecodeError> {
    let mut names = NameDictionary::new();
    let mut at = 0;
    let mut index = 0u64;
    while at < bytes.len() {
        let (record, used) = decode_entry(&bytes[at..], &mut names).map_err(walk_invalid)?;
        at += used;
        if let Some(record) = record {
            if index == count {
                return invalid("more records than the frame's lsn range");
            }
            visit(index, record);
            index += 1;
        }
    }
    if index != count {
        return invalid("fewer records than the frame's lsn range");
    }
    Ok(())
}

/// The WAL's reason a record entry does not decode, as this crate's error: the frame is `Invalid`.
fn walk_invalid(error: WalError) -> DecodeError {
    match error {
        WalError::Invalid { detail, .. } => DecodeError::Invalid { reason: detail },
        // `decode_entry` fails only with `Invalid`; should that change, the frame is still refused.
        _ => DecodeError::Invalid {
            reason: "record entry does not decode",
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use tally_engine::Keyed;
    use tally_proto::CounterKind;

    fn arb_record(names: &'static [&'static [u8]]) -> impl Strategy<Value = LogRecord<'static>> {
        (
            0u8..8,
            0..names.len(),
            any::<i64>(),
            any::<i64>(),
            any::<i64>(),
            any::<Option<u128>>(),
        )
            .prop_map(move |(which, n, a, b, c, key)| {
                let name = names[n];
                match which {
                    0 => LogRecord::Incr {
                        name,
                        name_id: 0,
                        delta: a,
                        key: key.map(|key| Keyed { key, value: b }),
                    },
                    1 => LogRecord::Create {
                        name,
                        name_id: 0,
                        kind: if a & 1 == 0 {
                            CounterKind::Analytic
                        } else {
                            CounterKind::Strict
                        },
                        initial: a,
                        min: b,
                        max: c,
                    },
                    2 => LogRecord::Cas {
                        name,
                        name_id: 0,
                        new: a,
                    },
                    3 => LogRecord::AddBounded {
                        name,
                        name_id: 0,
                        delta: a,
                        key,
                    },
                    4 => LogRecord::Reset {
                        name,
                        name_id: 0,
                        old: a,
                        new: b,
                        reason: b"because",
                        client: b"ops",
                    },
                    5 => LogRecord::SlotIncr {
                        name,
                        name_id: 0,
                        epoch: a as u64,
                        delta: b,
                    },
                    6 => LogRecord::Split {
                        name,
                        name_id: 0,
                        epoch: a as u64,
                    },
                    _ => LogRecord::Merge {
                        name,
                        name_id: 0,
                        epoch: a as u64,
                        amount: b,
                    },
                }
            })
    }

    const NAMES: &[&[u8]] = &[b"views", b"likes:a", b"x"];

    fn decoded(bytes: &[u8], count: u64) -> Vec<(u64, Vec<u8>, LogRecord<'static>)> {
        let mut out = Vec::new();
        decode_records(bytes, count, &mut |i, record| {
            // Compare records by content with a fixed name_id, keeping the name bytes beside.
            let name = record.name().to_vec();
            let shape = strip(record);
            out.push((i, name, shape));
        })
        .unwrap();
        out
    }

    /// The record with a static placeholder name, so tests can compare owned values.
    fn strip(record: LogRecord<'_>) -> LogRecord<'static> {
        let name: &'static [u8] = NAMES
            .iter()
            .copied()
            .find(|n| *n == record.name())
            .expect("a test name");
        match record {
            LogRecord::Incr { delta, key, .. } => LogRecord::Incr {
                name,
                name_id: 0,
                delta,
                key,
            },
            LogRecord::Create {
                kind,
                initial,
                min,
                max,
                ..
            } => LogRecord::Create {
                name,
                name_id: 0,
                kind,
                initial,
                min,
                max,
            },
            LogRecord::Cas { new, .. } => LogRecord::Cas { name, name_id: 0, new },
            LogRecord::AddBounded { delta, key, .. } => LogRecord::AddBounded {
                name,
                name_id: 0,
                delta,
                key,
            },
            LogRecord::Reset { old, new, .. } => LogRecord::Reset {
                name,
                name_id: 0,
                old,
                new,
                reason: b"because",
                client: b"ops",
            },
            LogRecord::SlotIncr { epoch, delta, .. } => LogRecord::SlotIncr {
                name,
                name_id: 0,
                epoch,
                delta,
            },
            LogRecord::Split { epoch, .. } => LogRecord::Split {
                name,
                name_id: 0,
                epoch,
            },
            LogRecord::Merge { epoch, amount, .. } => LogRecord::Merge {
                name,
                name_id: 0,
                epoch,
                amount,
            },
        }
    }

    #[test]
    fn a_name_is_defined_once_per_frame_and_again_in_the_next() {
        let mut enc = RecordsEncoder::new();
        let incr = LogRecord::Incr {
            name: b"views",
            name_id: 99,
            delta: 1,
            key: None,
        };
        enc.push(&incr);
        enc.push(&incr);
        // DEFINE_NAME (1 + 1 + 1 + 5) then two 3-byte INCRs.
        assert_eq!(enc.len_bytes(), 8 + 3 + 3);
        assert_eq!(enc.count(), 2);
        let first = enc.take();
        enc.push(&incr);
        let second = enc.take();
        assert_eq!(second.len(), 8 + 3, "a new frame defines its names again");
        assert_eq!(decoded(&first, 2).len(), 2);
        assert_eq!(decoded(&second, 1)[0].2, strip(incr));
    }

    #[test]
    fn the_count_must_match_exactly() {
        let mut enc = RecordsEncoder::new();
        enc.push(&LogRecord::Cas {
            name: b"x",
            name_id: 0,
            new: 5,
        });
        let bytes = enc.take();
        assert!(check_records(&bytes, 1).is_ok());
        assert!(matches!(check_records(&bytes, 2), Err(DecodeError::Invalid { .. })));
        assert!(matches!(check_records(&bytes, 0), Err(DecodeError::Invalid { .. })));
        assert!(matches!(check_records(&[], 1), Err(DecodeError::Invalid { .. })));
        assert!(check_records(&[], 0).is_ok());
    }

    #[test]
    fn a_bad_frame_visits_nothing() {
        let mut enc = RecordsEncoder::new();
        enc.push(&LogRecord::Cas {
            name: b"x",
            name_id: 0,
            new: 5,
        });
        let mut bytes = enc.take();
        bytes.push(0xff);
        let mut visited = 0;
        assert!(decode_records(&bytes, 1, &mut |_, _| visited += 1).is_err());
        assert_eq!(visited, 0);
    }

    proptest! {
        #[test]
        fn records_round_trip(records in proptest::collection::vec(arb_record(NAMES), 0..40)) {
            let mut enc = RecordsEncoder::new();
            for record in &records {
                enc.push(record);
            }
            let count = enc.count();
            let bytes = enc.take();
            let back: Vec<_> = decoded(&bytes, count).into_iter().map(|(_, _, r)| r).collect();
            prop_assert_eq!(back, records);
        }

        #[test]
        fn decoding_never_panics(bytes: Vec<u8>, count in 0u64..50) {
            let _ = decode_records(&bytes, count, &mut |_, _| {});
        }

        #[test]
        fn damaged_records_are_refused_or_decode(records in proptest::collection::vec(arb_record(NAMES), 1..10), cut: prop::sample::Index, flip: prop::sample::Index, bit in 0u8..8) {
            let mut enc = RecordsEncoder::new();
            for record in &records {
                enc.push(record);
            }
            let count = enc.count();
            let bytes = enc.take();
            let _ = check_records(&bytes[..cut.index(bytes.len())], count);
            let mut flipped = bytes.clone();
            let at = flip.index(flipped.len());
            flipped[at] ^= 1 << bit;
            let _ = decode_records(&flipped, count, &mut |_, _| {});
        }
    }
}
