//! Log records: the engine's `LogRecord` and their byte encoding as entries.
//!
//! The record types are the engine's (`tally_engine::{Keyed, LogRecord, LogSink}`); this crate owns
//! only their bytes. The entry codec (`encode_define_name`, `encode_record`, `decode_entry`) is
//! public because replication ships records in the same layout (`tally_replicate::records`).
//!
//! Encoding of one entry (all integers little-endian or varints, see `varint`):
//!
//! ```text
//! tag u8          low 6 bits: entry type; bit 7: a 16-byte idempotency key follows (INCR, ADD_BOUNDED)
//! name_ref varint the name's id in the dictionary (not for DEFINE_NAME)
//! fields          per type, see `encode_record`
//! ```
//!
//! A DEFINE_NAME entry (`tag = 0x3f`, dictionary id varint, name length u8, name bytes) precedes the
//! first record of a name in the dictionary's scope; it is not a record and takes no lsn. The scope
//! is the caller's: the encoder side remembers which names it defined, the decoder side keeps a
//! `NameDictionary`. The WAL keeps one per segment (docs/wal.md, "Dictionary"); replication one per
//! Ship frame (docs/replication.md). Nothing else differs.

use crate::error::{invalid, WalError};
use crate::limits::{CLIENT_BYTES_MAX, NAME_BYTES_MAX, REASON_BYTES_MAX};
use crate::varint;
use tally_proto::CounterKind;

pub use tally_engine::{Keyed, LogRecord, LogSink};

/// A decoded record with its position in the log. Every record of a batch carries the batch's time
/// (when the batch was formed, in ms), not the time of its own op.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Entry<'a> {
    pub lsn: u64,
    pub time_ms: u64,
    pub record: LogRecord<'a>,
}

pub(crate) const TAG_INCR: u8 = 1;
pub(crate) const TAG_CREATE: u8 = 2;
pub(crate) const TAG_CAS: u8 = 3;
pub(crate) const TAG_ADD_BOUNDED: u8 = 4;
pub(crate) const TAG_RESET: u8 = 5;
pub(crate) const TAG_SLOT_INCR: u8 = 6;
pub(crate) const TAG_SPLIT: u8 = 7;
pub(crate) const TAG_MERGE: u8 = 8;
pub(crate) const TAG_DEFINE_NAME: u8 = 0x3f;
pub(crate) const TAG_TYPE_MASK: u8 = 0x3f;
pub(crate) const TAG_KEY: u8 = 0x80;

/// Appends a DEFINE_NAME entry giving `name` the id `dict_id`, which must be the number of names
/// defined before it in the same dictionary scope (the decoder refuses any other id).
#[inline]
pub fn encode_define_name(buf: &mut Vec<u8>, dict_id: u32, name: &[u8]) {
    assert!(!name.is_empty(), "a logged name is never empty");
    assert!(name.len() <= NAME_BYTES_MAX, "a logged name fits the wire limit");
    buf.push(TAG_DEFINE_NAME);
    varint::put_u64(buf, u64::from(dict_id));
    buf.push(name.len() as u8);
    buf.extend_from_slice(name);
}

/// Appends one record whose name has dictionary id `dict_id` (defined earlier in the same scope by
/// `encode_define_name`). The record's own `name_id` is not written.
///
/// Field encodings (after tag and name_ref): INCR `delta` zigzag varint, then when the tag has bit 7
/// the key (16 bytes LE) and the duplicate answer `value` (zigzag varint); ADD_BOUNDED `delta`, then
/// the key when the tag has bit 7; CREATE `kind u8, initial, min, max` zigzag varints; CAS
/// `new`; RESET `old, new` zigzag varints, `reason` and `client` each a varint length and bytes;
/// SLOT_INCR `epoch` varint, `delta`; SPLIT `epoch`; MERGE `epoch`, `amount`. An INCR of a small delta
/// to one of the first 128 names of a segment is three bytes.
#[inline]
pub fn encode_record(buf: &mut Vec<u8>, dict_id: u32, record: &LogRecord<'_>) {
    match *record {
        LogRecord::Incr { delta, key, .. } => {
            buf.push(if key.is_some() { TAG_INCR | TAG_KEY } else { TAG_INCR });
            varint::put_u64(buf, u64::from(dict_id));
            varint::put_i64(buf, delta);
            if let Some(Keyed { key, value }) = key {
                buf.extend_from_slice(&key.to_le_bytes());
                varint::put_i64(buf, value);
            }
        }
        LogRecord::AddBounded { delta, key, .. } => {
            buf.push(if key.is_some() {
                TAG_ADD_BOUNDED | TAG_KEY
            } else {
                TAG_ADD_BOUNDED
            });
            varint::put_u64(buf, u64::from(dict_id));
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
            buf.push(TAG_CREATE);
            varint::put_u64(buf, u64::from(dict_id));
            buf.push(kind as u8);
            varint::put_i64(buf, initial);
            varint::put_i64(buf, min);
            varint::put_i64(buf, max);
        }
        LogRecord::Cas { new, .. } => {
            buf.push(TAG_CAS);
            varint::put_u64(buf, u64::from(dict_id));
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
            assert!(client.len() <= CLIENT_BYTES_MAX, "a client name fits the wire limit");
            buf.push(TAG_RESET);
            varint::put_u64(buf, u64::from(dict_id));
            varint::put_i64(buf, old);
            varint::put_i64(buf, new);
            varint::put_u64(buf, reason.len() as u64);
            buf.extend_from_slice(reason);
            varint::put_u64(buf, client.len() as u64);
            buf.extend_from_slice(client);
        }
        LogRecord::SlotIncr { epoch, delta, .. } => {
            buf.push(TAG_SLOT_INCR);
            varint::put_u64(buf, u64::from(dict_id));
            varint::put_u64(buf, epoch);
            varint::put_i64(buf, delta);
        }
        LogRecord::Split { epoch, .. } => {
            buf.push(TAG_SPLIT);
            varint::put_u64(buf, u64::from(dict_id));
            varint::put_u64(buf, epoch);
        }
        LogRecord::Merge { epoch, amount, .. } => {
            buf.push(TAG_MERGE);
            varint::put_u64(buf, u64::from(dict_id));
            varint::put_u64(buf, epoch);
            varint::put_i64(buf, amount);
        }
    }
}

/// The names of one dictionary scope (a WAL segment, a Ship frame), by id, borrowed from the bytes
/// they were decoded from. `decode_entry` fills it; start a new one for each scope.
#[derive(Debug, Default, Clone)]
pub struct NameDictionary<'a> {
    names: Vec<&'a [u8]>,
}

impl<'a> NameDictionary<'a> {
    pub fn new() -> NameDictionary<'a> {
        NameDictionary { names: Vec::new() }
    }

    /// How many names are defined: the id the next DEFINE_NAME must carry.
    pub fn len(&self) -> u32 {
        self.names.len() as u32
    }

    pub fn is_empty(&self) -> bool {
        self.names.is_empty()
    }

    pub fn get(&self, id: u32) -> Option<&'a [u8]> {
        self.names.get(id as usize).copied()
    }

    /// The names by id (a reader resuming later keeps where they are, `SegmentReader::position`).
    pub fn names(&self) -> &[&'a [u8]] {
        &self.names
    }

    /// A dictionary holding `names` as ids 0, 1, ...: a scope picked up where a reader left it.
    pub fn from_names(names: Vec<&'a [u8]>) -> NameDictionary<'a> {
        NameDictionary { names }
    }
}

/// A cursor over a batch body. Every read checks bounds; nothing here can panic.
struct Cursor<'a> {
    bytes: &'a [u8],
    at: usize,
}

const WHAT: &str = "log record";

impl<'a> Cursor<'a> {
    fn u8(&mut self) -> Result<u8, WalError> {
        let Some(&byte) = self.bytes.get(self.at) else {
            return invalid(WHAT, "ends inside a record");
        };
        self.at += 1;
        Ok(byte)
    }

    fn take(&mut self, len: usize) -> Result<&'a [u8], WalError> {
        let Some(end) = self.at.checked_add(len) else {
            return invalid(WHAT, "length overflows");
        };
        let Some(bytes) = self.bytes.get(self.at..end) else {
            return invalid(WHAT, "ends inside a record");
        };
        self.at = end;
        Ok(bytes)
    }

    fn u64(&mut self) -> Result<u64, WalError> {
        let rest = self.bytes.get(self.at..).unwrap_or(&[]);
        let Some((value, used)) = varint::get_u64(rest) else {
            return invalid(WHAT, "bad varint");
        };
        self.at += used;
        Ok(value)
    }

    fn i64(&mut self) -> Result<i64, WalError> {
        Ok(varint::unzigzag(self.u64()?))
    }

    fn u32(&mut self) -> Result<u32, WalError> {
        u32::try_from(self.u64()?).or_else(|_| invalid(WHAT, "varint too large for a u32"))
    }

    fn key(&mut self, tag: u8) -> Result<Option<u128>, WalError> {
        if tag & TAG_KEY == 0 {
            return Ok(None);
        }
        let bytes = self.take(16)?;
        let mut key = [0u8; 16];
        key.copy_from_slice(bytes);
        Ok(Some(u128::from_le_bytes(key)))
    }

    fn text(&mut self, max: usize) -> Result<&'a [u8], WalError> {
        let len = self.u64()?;
        if len > max as u64 {
            return invalid(WHAT, "text longer than its limit");
        }
        self.take(len as usize)
    }
}

/// Decodes one entry from the front of `bytes`. A DEFINE_NAME entry extends `dict` and yields `None`;
/// a record yields itself with `name_id` = its dictionary id. Returns the bytes used (at least 1).
/// Fails only with `WalError::Invalid` (what = "log record"); never panics, whatever the bytes.
#[inline]
pub fn decode_entry<'a>(
    bytes: &'a [u8],
    dict: &mut NameDictionary<'a>,
) -> Result<(Option<LogRecord<'a>>, usize), WalError> {
    let mut c = Cursor { bytes, at: 0 };
    let tag = c.u8()?;
    let kind = tag & TAG_TYPE_MASK;
    if tag & !(TAG_TYPE_MASK | TAG_KEY) != 0 {
        return invalid(WHAT, "reserved tag bit set");
    }
    if tag & TAG_KEY != 0 && kind != TAG_INCR && kind != TAG_ADD_BOUNDED {
        return invalid(WHAT, "key flag on a record without a key");
    }
    if kind == TAG_DEFINE_NAME {
        let id = c.u32()?;
        if id != dict.len() {
            return invalid(WHAT, "dictionary ids are not consecutive");
        }
        let len = c.u8()?;
        if len == 0 {
            return invalid(WHAT, "empty name");
        }
        let name = c.take(usize::from(len))?;
        dict.names.push(name);
        return Ok((None, c.at));
    }
    let name_id = c.u32()?;
    let Some(name) = dict.get(name_id) else {
        return invalid(WHAT, "name id not in the dictionary");
    };
    let record = match kind {
        TAG_INCR => {
            let delta = c.i64()?;
            let key = match c.key(tag)? {
                Some(key) => Some(Keyed { key, value: c.i64()? }),
                None => None,
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
            delta: c.i64()?,
            key: c.key(tag)?,
        },
        TAG_CREATE => {
            let Some(kind) = CounterKind::from_u8(c.u8()?) else {
                return invalid(WHAT, "unknown counter kind");
            };
            LogRecord::Create {
                name,
                name_id,
                kind,
                initial: c.i64()?,
                min: c.i64()?,
                max: c.i64()?,
            }
        }
        TAG_CAS => LogRecord::Cas {
            name,
            name_id,
            new: c.i64()?,
        },
        TAG_RESET => LogRecord::Reset {
            name,
            name_id,
            old: c.i64()?,
            new: c.i64()?,
            reason: c.text(REASON_BYTES_MAX)?,
            client: c.text(CLIENT_BYTES_MAX)?,
        },
        TAG_SLOT_INCR => LogRecord::SlotIncr {
            name,
            name_id,
            epoch: c.u64()?,
            delta: c.i64()?,
        },
        TAG_SPLIT => LogRecord::Split {
            name,
            name_id,
            epoch: c.u64()?,
        },
        TAG_MERGE => LogRecord::Merge {
            name,
            name_id,
            epoch: c.u64()?,
            amount: c.i64()?,
        },
        _ => return invalid(WHAT, "unknown record type"),
    };
    Ok((Some(record), c.at))
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use proptest::prelude::*;

    /// The fields of any record the engine could log, except its name.
    #[derive(Debug, Clone)]
    pub(crate) struct Parts {
        which: u8,
        a: i64,
        b: i64,
        c: i64,
        key: Option<u128>,
        reason: Vec<u8>,
        client: Vec<u8>,
    }

    pub(crate) fn arb_parts() -> impl Strategy<Value = Parts> {
        (
            0u8..8,
            any::<i64>(),
            any::<i64>(),
            any::<i64>(),
            any::<Option<u128>>(),
            proptest::collection::vec(any::<u8>(), 0..=REASON_BYTES_MAX),
            proptest::collection::vec(any::<u8>(), 0..=CLIENT_BYTES_MAX),
        )
            .prop_map(|(which, a, b, c, key, reason, client)| Parts {
                which,
                a,
                b,
                c,
                key,
                reason,
                client,
            })
    }

    pub(crate) fn build<'a>(parts: &'a Parts, name: &'a [u8], name_id: u32) -> LogRecord<'a> {
        let Parts {
            which, a, b, c, key, ..
        } = *parts;
        let (reason, client) = (parts.reason.as_slice(), parts.client.as_slice());
        match which {
            0 => LogRecord::Incr {
                name,
                name_id,
                delta: a,
                key: key.map(|key| Keyed { key, value: b }),
            },
            1 => LogRecord::Create {
                name,
                name_id,
                kind: if a & 1 == 0 {
                    CounterKind::Analytic
                } else {
                    CounterKind::Strict
                },
                initial: a,
                min: b,
                max: c,
            },
            2 => LogRecord::Cas { name, name_id, new: a },
            3 => LogRecord::AddBounded {
                name,
                name_id,
                delta: a,
                key,
            },
            4 => LogRecord::Reset {
                name,
                name_id,
                old: a,
                new: b,
                reason,
                client,
            },
            5 => LogRecord::SlotIncr {
                name,
                name_id,
                epoch: a as u64,
                delta: b,
            },
            6 => LogRecord::Split {
                name,
                name_id,
                epoch: a as u64,
            },
            _ => LogRecord::Merge {
                name,
                name_id,
                epoch: a as u64,
                amount: b,
            },
        }
    }

    #[test]
    fn small_incr_is_three_bytes() {
        let mut buf = Vec::new();
        encode_record(
            &mut buf,
            5,
            &LogRecord::Incr {
                name: b"x",
                name_id: 99,
                delta: 1,
                key: None,
            },
        );
        assert_eq!(buf, [TAG_INCR, 5, 2]);
    }

    #[test]
    fn define_then_record_decodes_with_the_dictionary_id() {
        let mut buf = Vec::new();
        encode_define_name(&mut buf, 0, b"views");
        let record = LogRecord::Incr {
            name: b"views",
            name_id: 77,
            delta: -3,
            key: Some(Keyed { key: 9, value: -40 }),
        };
        encode_record(&mut buf, 0, &record);
        let mut dict = NameDictionary::new();
        let (none, used) = decode_entry(&buf, &mut dict).unwrap();
        assert_eq!(none, None);
        assert_eq!(dict.get(0), Some(&b"views"[..]));
        let (some, used2) = decode_entry(&buf[used..], &mut dict).unwrap();
        assert_eq!(used + used2, buf.len());
        assert_eq!(some, Some(record.with_name_id(0)));
    }

    #[test]
    fn unknown_name_and_skipped_ids_are_refused() {
        let mut buf = Vec::new();
        encode_record(
            &mut buf,
            3,
            &LogRecord::Cas {
                name: b"a",
                name_id: 1,
                new: 1,
            },
        );
        assert!(decode_entry(&buf, &mut NameDictionary::new()).is_err());
        buf.clear();
        encode_define_name(&mut buf, 1, b"a");
        assert!(decode_entry(&buf, &mut NameDictionary::new()).is_err());
    }

    proptest! {
        #[test]
        fn every_record_round_trips(
            parts in arb_parts(),
            names in proptest::collection::vec(proptest::collection::vec(any::<u8>(), 1..=NAME_BYTES_MAX), 1..4),
            pick: prop::sample::Index,
        ) {
            let mut buf = Vec::new();
            for (i, name) in names.iter().enumerate() {
                encode_define_name(&mut buf, i as u32, name);
            }
            let dict_id = pick.index(names.len()) as u32;
            let name = names[dict_id as usize].as_slice();
            encode_record(&mut buf, dict_id, &build(&parts, name, 1234));
            let mut dict = NameDictionary::new();
            let mut at = 0;
            let mut decoded = Vec::new();
            while at < buf.len() {
                let (entry, used) = decode_entry(&buf[at..], &mut dict).unwrap();
                at += used;
                decoded.extend(entry);
            }
            prop_assert_eq!(dict.len() as usize, names.len());
            prop_assert_eq!(decoded, vec![build(&parts, name, dict_id)]);
        }

        #[test]
        fn decoding_never_panics(bytes: Vec<u8>, defined in 0usize..4) {
            let mut dict = NameDictionary::new();
            for name in [b"a".as_slice(), b"bb", b"ccc"].into_iter().take(defined) {
                dict.names.push(name);
            }
            let mut at = 0;
            while at < bytes.len() {
                match decode_entry(&bytes[at..], &mut dict) {
                    Ok((_, used)) => {
                        prop_assert!(used >= 1);
                        at += used;
                    }
                    Err(_) => break,
                }
            }
            prop_assert!(at <= bytes.len());
        }
    }
}
