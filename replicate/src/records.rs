//! The records inside a Ship frame: the engine's `LogRecord`s, encoded with a frame-local name
//! dictionary so every frame is self-contained.
//!
//! The entry layout is the WAL's (docs/wal.md, "Entries"): a tag byte (low 6 bits the type, bit 7 "a
//! key follows"), then LEB128 varints and zigzag varints. The one difference is the dictionary's
//! scope: the WAL's lives for a segment, this one for one frame. A replica can therefore decode any
//! frame alone — after a gap, a reconnect, a corrupt frame, or a Fetch from a peer — and nothing on
//! the wire depends on the primary's segment boundaries. The cost is one DEFINE_NAME per distinct
//! name per frame (name length + 3 bytes), small next to a frame of many records.
//!
//! This codec would be the WAL's own if `tally_wal::record` exposed its entry encoder and decoder;
//! they are crate-private today, so the layout is implemented here again, from the spec. Making
//! them public and deleting this file's encoding half is a follow-up (see docs/replication.md).

use crate::error::{invalid, DecodeError};
use crate::varint;
use tally_engine::{Keyed, LogRecord};
use tally_proto::limits::{NAME_BYTES_MAX, REASON_BYTES_MAX};
use tally_proto::CounterKind;

const TAG_INCR: u8 = 1;
const TAG_CREATE: u8 = 2;
const TAG_CAS: u8 = 3;
const TAG_ADD_BOUNDED: u8 = 4;
const TAG_RESET: u8 = 5;
const TAG_SLOT_INCR: u8 = 6;
const TAG_SPLIT: u8 = 7;
const TAG_MERGE: u8 = 8;
const TAG_DEFINE_NAME: u8 = 0x3f;
const TAG_TYPE_MASK: u8 = 0x3f;
const TAG_KEY: u8 = 0x80;

/// A RESET's client name (HELLO's client name is a str8), as in the WAL.
const CLIENT_BYTES_MAX: usize = 255;

/// Builds the record bytes of one Ship frame. Reused across frames: `take` hands out the bytes and
/// starts a new frame (and a new dictionary), keeping the map's capacity.
#[derive(Debug, Default)]
pub struct RecordsEncoder {
    bytes: Vec<u8>,
    /// Name bytes → frame-local dictionary id.
    names: hashbrown::HashMap<Vec<u8>, u32>,
    count: u64,
}

impl RecordsEncoder {
    pub fn new() -> RecordsEncoder {
        RecordsEncoder::default()
    }

    /// Appends one record (the next lsn of the frame). The record's own `name_id` is ignored: ids are
    /// this frame's.
    pub fn push(&mut self, record: &LogRecord<'_>) {
        let name = record.name();
        assert!(!name.is_empty(), "a logged name is never empty");
        assert!(name.len() <= NAME_BYTES_MAX, "a logged name fits the wire limit");
        let id = match self.names.get(name) {
            Some(&id) => id,
            None => {
                let id = self.names.len() as u32;
                self.bytes.push(TAG_DEFINE_NAME);
                varint::put_u64(&mut self.bytes, u64::from(id));
                self.bytes.push(name.len() as u8);
                self.bytes.extend_from_slice(name);
                self.names.insert(name.to_vec(), id);
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
        self.count = 0;
        std::mem::take(&mut self.bytes)
    }
}

fn encode_record(buf: &mut Vec<u8>, id: u32, record: &LogRecord<'_>) {
    let tag = |buf: &mut Vec<u8>, tag: u8| {
        buf.push(tag);
        varint::put_u64(buf, u64::from(id));
    };
    match *record {
        LogRecord::Incr { delta, key, .. } => {
            tag(buf, if key.is_some() { TAG_INCR | TAG_KEY } else { TAG_INCR });
            varint::put_i64(buf, delta);
            if let Some(Keyed { key, value }) = key {
                buf.extend_from_slice(&key.to_le_bytes());
                varint::put_i64(buf, value);
            }
        }
        LogRecord::AddBounded { delta, key, .. } => {
            let t = if key.is_some() {
                TAG_ADD_BOUNDED | TAG_KEY
            } else {
                TAG_ADD_BOUNDED
            };
            tag(buf, t);
            varint::put_i64(buf, delta);
            if let Some(key) = key {
                buf.extend_from_slice(&key.to_le_bytes());
            }
        }
        LogRecord::Create {
            kind,
            initial,
            min,
            max,
            ..
        } => {
            tag(buf, TAG_CREATE);
            buf.push(kind as u8);
            varint::put_i64(buf, initial);
            varint::put_i64(buf, min);
            varint::put_i64(buf, max);
        }
        LogRecord::Cas { new, .. } => {
            tag(buf, TAG_CAS);
            varint::put_i64(buf, new);
        }
        LogRecord::Reset {
            old,
            new,
            reason,
            client,
            ..
        } => {
            assert!(reason.len() <= REASON_BYTES_MAX, "a RESET reason fits the wire limit");
            assert!(client.len() <= CLIENT_BYTES_MAX, "a client name is a str8");
            tag(buf, TAG_RESET);
            varint::put_i64(buf, old);
            varint::put_i64(buf, new);
            varint::put_u64(buf, reason.len() as u64);
            buf.extend_from_slice(reason);
            varint::put_u64(buf, client.len() as u64);
            buf.extend_from_slice(client);
        }
        LogRecord::SlotIncr { epoch, delta, .. } => {
            tag(buf, TAG_SLOT_INCR);
            varint::put_u64(buf, epoch);
            varint::put_i64(buf, delta);
        }
        LogRecord::Split { epoch, .. } => {
            tag(buf, TAG_SPLIT);
            varint::put_u64(buf, epoch);
        }
        LogRecord::Merge { epoch, amount, .. } => {
            tag(buf, TAG_MERGE);
            varint::put_u64(buf, epoch);
            varint::put_i64(buf, amount);
        }
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
    let mut cursor = Cursor { bytes, at: 0 };
    let mut names: Vec<&'a [u8]> = Vec::new();
    let mut index = 0u64;
    while cursor.at < bytes.len() {
        if let Some(record) = cursor.entry(&mut names)? {
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

/// Reads entries; every read checks bounds.
struct Cursor<'a> {
    bytes: &'a [u8],
    at: usize,
}

impl<'a> Cursor<'a> {
    fn u8(&mut self) -> Result<u8, DecodeError> {
        let Some(&byte) = self.bytes.get(self.at) else {
            return invalid("record bytes end inside a record");
        };
        self.at += 1;
        Ok(byte)
    }

    fn take(&mut self, len: usize) -> Result<&'a [u8], DecodeError> {
        let Some(bytes) = self.at.checked_add(len).and_then(|end| self.bytes.get(self.at..end)) else {
            return invalid("record bytes end inside a record");
        };
        self.at += len;
        Ok(bytes)
    }

    fn u64(&mut self) -> Result<u64, DecodeError> {
        let Some((value, used)) = varint::get_u64(&self.bytes[self.at..]) else {
            return invalid("bad varint in a record");
        };
        self.at += used;
        Ok(value)
    }

    fn i64(&mut self) -> Result<i64, DecodeError> {
        Ok(varint::unzigzag(self.u64()?))
    }

    fn u32(&mut self) -> Result<u32, DecodeError> {
        u32::try_from(self.u64()?).or_else(|_| invalid("dictionary id above u32"))
    }

    fn u128(&mut self) -> Result<u128, DecodeError> {
        let mut key = [0u8; 16];
        key.copy_from_slice(self.take(16)?);
        Ok(u128::from_le_bytes(key))
    }

    fn text(&mut self, max: usize) -> Result<&'a [u8], DecodeError> {
        let len = self.u64()?;
        if len > max as u64 {
            return invalid("record text longer than its limit");
        }
        self.take(len as usize)
    }

    /// One entry: a DEFINE_NAME extends `names` and yields `None`.
    fn entry(&mut self, names: &mut Vec<&'a [u8]>) -> Result<Option<LogRecord<'a>>, DecodeError> {
        let tag = self.u8()?;
        let kind = tag & TAG_TYPE_MASK;
        if tag & !(TAG_TYPE_MASK | TAG_KEY) != 0 {
            return invalid("reserved tag bit set");
        }
        let keyed = tag & TAG_KEY != 0;
        if keyed && kind != TAG_INCR && kind != TAG_ADD_BOUNDED {
            return invalid("key flag on a record without a key");
        }
        if kind == TAG_DEFINE_NAME {
            if self.u32()? as usize != names.len() {
                return invalid("dictionary ids are not consecutive");
            }
            let len = self.u8()?;
            if len == 0 {
                return invalid("empty name");
            }
            names.push(self.take(usize::from(len))?);
            return Ok(None);
        }
        let name_id = self.u32()?;
        let Some(&name) = names.get(name_id as usize) else {
            return invalid("name id not in the frame's dictionary");
        };
        let record = match kind {
            TAG_INCR => {
                let delta = self.i64()?;
                let key = if keyed {
                    Some(Keyed {
                        key: self.u128()?,
                        value: self.i64()?,
                    })
                } else {
                    None
                };
                LogRecord::Incr {
                    name,
                    name_id,
                    delta,
                    key,
                }
            }
            TAG_ADD_BOUNDED => LogRecord::AddBounded {
                name,
                name_id,
                delta: self.i64()?,
                key: if keyed { Some(self.u128()?) } else { None },
            },
            TAG_CREATE => {
                let Some(kind) = CounterKind::from_u8(self.u8()?) else {
                    return invalid("unknown counter kind");
                };
                LogRecord::Create {
                    name,
                    name_id,
                    kind,
                    initial: self.i64()?,
                    min: self.i64()?,
                    max: self.i64()?,
                }
            }
            TAG_CAS => LogRecord::Cas {
                name,
                name_id,
                new: self.i64()?,
            },
            TAG_RESET => LogRecord::Reset {
                name,
                name_id,
                old: self.i64()?,
                new: self.i64()?,
                reason: self.text(REASON_BYTES_MAX)?,
                client: self.text(CLIENT_BYTES_MAX)?,
            },
            TAG_SLOT_INCR => LogRecord::SlotIncr {
                name,
                name_id,
                epoch: self.u64()?,
                delta: self.i64()?,
            },
            TAG_SPLIT => LogRecord::Split {
                name,
                name_id,
                epoch: self.u64()?,
            },
            TAG_MERGE => LogRecord::Merge {
                name,
                name_id,
                epoch: self.u64()?,
                amount: self.i64()?,
            },
            _ => return invalid("unknown record type"),
        };
        Ok(Some(record))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

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
