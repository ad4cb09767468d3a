//! Snapshots: the whole state of one shard at its lsn, as bytes (`Shard::snapshot`), and back
//! (`Shard::from_snapshot`). Recovery is a snapshot plus the replay of the log records after its
//! lsn, then the node's reconcile (`replay.rs`).
//!
//! Format, version 2 (version 1 had no windows section). Every integer is fixed-width little-endian; `name` is a name's place in the
//! arena as `name_at u32, name_len u8` (the arena section holds the bytes):
//!
//! ```text
//! header      u32 version (= 2; 1 is read too) | u16 shard | u16 shards | u64 lsn
//!             u16 n, n × (u16 shard, u64 lsn)         durable_lsn_required (see SnapshotDeps)
//! arena       u32 chunks, chunks × (u32 len, len bytes)   names back to back, each chunk ≤ 1 MiB
//! counters    u64 n, n × (name, u8 kind, i64 value)       kind 0 analytic, 1 strict; a split
//!                                                         counter's value is the owner's part
//! bounds      u32 n, n × (name, i64 min, i64 max)         strict counters with declared bounds
//! foreign     u32 n, n × name                             other shards' names this shard logged
//! merged      u32 n, n × (name, u64 epoch)                last merged split epoch per counter
//! open        u32 n, n × (name, u64 epoch)                split epochs open at the snapshot
//! parts       u32 n, n × (name, u64 epoch, i64 amount)    this shard's slot amounts of other
//!                                                         shards' open split epochs (foreign names)
//! dedup       u64 time_last_ms, u32 n, n × (u64 key_lo, u64 key_hi, u64 name_hash, i64 delta,
//!                                           i64 value, u64 lsn, u64 time_ms)   oldest first
//! audit       u32 n, n × (u64 time_ms, u64 lsn, i64 old, i64 new, u8 name_len, name bytes,
//!                         u32 reason_len, reason bytes, u32 client_len, client bytes)  oldest first
//! windows     the window store's seconds in memory (`window::store`, "Snapshot section")
//! trailer     u64 xxh3-64 of every byte before it
//! ```
//!
//! The arena is stored as it is, so every name keeps its offset: log records name counters by that
//! offset (`LogRecord::name_id`), and restoring is a copy of the arena plus one table insert per
//! counter into a table sized up front. Split counters are stored as the owner's own part plus the
//! open epoch; other shards' slots are not folded in: each shard's own snapshot carries its open
//! slots' amounts as parts of that epoch, and reconcile folds them. A slot the owner has already
//! closed is not in its shard's snapshot (its amount is in the owner's `Merge`), which is why a
//! snapshot depends on other shards' logs being durable (`SnapshotDeps`).
//!
//! Restoring never panics on bad bytes: truncation, a bad checksum, a bad version and any value
//! that breaks an invariant the engine relies on are errors.

use std::collections::BTreeMap;
use std::sync::Arc;

use tally_proto::{name_hash, shard_of};

use super::{within, MergedEpoch, RecoveredPart, RecoveredSplit, Shard, BOUNDS_FULL};
use crate::audit::ResetRecord;
use crate::config::ShardConfig;
use crate::dedup::DedupEntry;
use crate::limits::{ARENA_BYTES_MAX, ARENA_CHUNK_BYTES, AUDIT_RECORDS_MAX, SPLIT_SLOT_ABS_MAX, SPLIT_VALUE_ABS_MAX};
use crate::split::SplitRegistry;
use crate::table::{table_hash, Entry, ForeignName, NameArena, Table, FLAG_BOUNDED, FLAG_FORCED, FLAG_STRICT};

/// The snapshot format this build writes and reads.
pub const SNAPSHOT_VERSION: u32 = 2;

/// The format before the windows section; still read (its windows start empty), never written.
pub const SNAPSHOT_VERSION_NO_WINDOWS: u32 = 1;

const KIND_ANALYTIC: u8 = 0;
const KIND_STRICT: u8 = 1;
/// Bytes of one counter record: name_at, name_len, kind, value.
const COUNTER_BYTES: usize = 4 + 1 + 1 + 8;
const TRAILER_BYTES: usize = 8;

/// What a snapshot depends on to be a safe recovery base.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SnapshotDeps {
    /// The shard's lsn at the snapshot: recovery replays the records after it.
    pub lsn: u64,
    /// (shard, lsn) pairs: the snapshot leaves out slot amounts that those shards' `Merge` records
    /// at or below lsn account for. Until each of those logs is durable to its lsn, recovery must
    /// keep using the previous snapshot and this shard's older records.
    pub durable_lsn_required: Vec<(u16, u64)>,
}

/// Why bytes are not a snapshot this shard can restore.
#[non_exhaustive]
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SnapshotError {
    #[error("the snapshot ends early")]
    Truncated,
    #[error("the snapshot's checksum does not match its bytes")]
    Checksum,
    #[error("snapshot format version {0}; this build reads versions 1 and {SNAPSHOT_VERSION}")]
    Version(u32),
    #[error("the snapshot is of shard {shard} of {shards}, not of this shard")]
    WrongShard { shard: u16, shards: u16 },
    #[error("invalid snapshot: {0}")]
    Invalid(&'static str),
}

fn checksum(bytes: &[u8]) -> u64 {
    // The routing hash is xxh3-64: fast (tens of GB/s) and a good error detector.
    name_hash(bytes)
}

struct Writer<'a> {
    out: &'a mut Vec<u8>,
}

impl Writer<'_> {
    fn u8(&mut self, v: u8) {
        self.out.push(v);
    }
    fn u16(&mut self, v: u16) {
        self.out.extend_from_slice(&v.to_le_bytes());
    }
    fn u32(&mut self, v: u32) {
        self.out.extend_from_slice(&v.to_le_bytes());
    }
    fn u64(&mut self, v: u64) {
        self.out.extend_from_slice(&v.to_le_bytes());
    }
    fn i64(&mut self, v: i64) {
        self.out.extend_from_slice(&v.to_le_bytes());
    }
    fn name(&mut self, name_at: u32, name_len: u8) {
        self.u32(name_at);
        self.u8(name_len);
    }
    fn count(&mut self, n: usize) {
        self.u32(u32::try_from(n).expect("section counts fit a u32 by the engine's limits"));
    }
    fn bytes32(&mut self, bytes: &[u8]) {
        self.count(bytes.len());
        self.out.extend_from_slice(bytes);
    }
}

struct Reader<'a> {
    bytes: &'a [u8],
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], SnapshotError> {
        if self.bytes.len() < n {
            return Err(SnapshotError::Truncated);
        }
        let (head, rest) = self.bytes.split_at(n);
        self.bytes = rest;
        Ok(head)
    }
    fn array<const N: usize>(&mut self) -> Result<[u8; N], SnapshotError> {
        Ok(self.take(N)?.try_into().expect("take returned N bytes"))
    }
    fn u8(&mut self) -> Result<u8, SnapshotError> {
        Ok(self.array::<1>()?[0])
    }
    fn u16(&mut self) -> Result<u16, SnapshotError> {
        Ok(u16::from_le_bytes(self.array()?))
    }
    fn u32(&mut self) -> Result<u32, SnapshotError> {
        Ok(u32::from_le_bytes(self.array()?))
    }
    fn u64(&mut self) -> Result<u64, SnapshotError> {
        Ok(u64::from_le_bytes(self.array()?))
    }
    fn i64(&mut self) -> Result<i64, SnapshotError> {
        Ok(i64::from_le_bytes(self.array()?))
    }
    /// A section's count, refused if its items (at least `item_bytes` each) cannot all be there:
    /// so garbage never makes restore allocate more than the input's size.
    fn count(&mut self, item_bytes: usize) -> Result<usize, SnapshotError> {
        let n = self.u32()? as usize;
        self.check_count(n, item_bytes)
    }
    fn check_count(&self, n: usize, item_bytes: usize) -> Result<usize, SnapshotError> {
        match n.checked_mul(item_bytes) {
            Some(total) if total <= self.bytes.len() => Ok(n),
            _ => Err(SnapshotError::Truncated),
        }
    }
    fn bytes32(&mut self) -> Result<&'a [u8], SnapshotError> {
        let n = self.u32()? as usize;
        self.take(n)
    }
}

fn invalid(reason: &'static str) -> SnapshotError {
    SnapshotError::Invalid(reason)
}

/// One bit per arena byte: which offsets start a name already restored, so that two names never
/// share an id.
struct NameStarts {
    /// The global bit index of each chunk's first byte.
    chunk_bits_at: Vec<usize>,
    bits: Vec<u64>,
}

impl NameStarts {
    fn new(arena: &NameArena) -> NameStarts {
        let mut chunk_bits_at = Vec::with_capacity(arena.chunk_count());
        let mut total = 0usize;
        for chunk in arena.chunks() {
            chunk_bits_at.push(total);
            total += chunk.len();
        }
        NameStarts {
            chunk_bits_at,
            bits: vec![0; total.div_ceil(64)],
        }
    }

    /// Marks `name_at` (a valid name position); false if it was marked before.
    fn mark(&mut self, name_at: u32) -> bool {
        let at = name_at as usize;
        let bit = self.chunk_bits_at[at / ARENA_CHUNK_BYTES] + at % ARENA_CHUNK_BYTES;
        let (word, mask) = (bit / 64, 1u64 << (bit % 64));
        let fresh = self.bits[word] & mask == 0;
        self.bits[word] |= mask;
        fresh
    }
}

impl Shard {
    /// Appends the shard's whole state at `self.lsn()` to `out` (format in the module doc) and
    /// returns what the snapshot depends on before it may replace the log as recovery base.
    /// Allocates only `out`'s growth and a few small lists.
    pub fn snapshot(&self, out: &mut Vec<u8>) -> SnapshotDeps {
        let start = out.len();
        let shard = self.config.shard;
        // Slot amounts of other shards' split counters: live open slots this shard wrote, plus
        // parts recovered and not reconciled yet. Closed slots are left out: their amount is in the
        // owner's `Merge`, whose lsn the snapshot then depends on.
        let mut owed: Vec<u64> = self.split_cache.owed().to_vec();
        let mut parts: BTreeMap<(u32, u64), RecoveredPart> =
            self.recovered_parts.iter().map(|(&k, &p)| (k, p)).collect();
        for cached in self.split_cache.iter() {
            let cell = &cached.cell;
            if cell.slot_ops_of(shard) == 0 {
                continue;
            }
            match cell.slot_value(shard) {
                Some(amount) => {
                    let name_id = cached
                        .name_id
                        .or_else(|| self.table.foreign_find(cached.hash, &cached.name))
                        .expect("a slot this shard wrote has its name stored");
                    let part = parts.entry((name_id, cell.epoch())).or_insert(RecoveredPart {
                        name_len: cached.name.len() as u8,
                        amount: 0,
                    });
                    part.amount += amount;
                }
                None => {
                    let owed = &mut owed[cell.owner() as usize];
                    *owed = (*owed).max(cell.merge_lsn());
                }
            }
        }
        let durable_lsn_required: Vec<(u16, u64)> = owed
            .iter()
            .enumerate()
            .filter(|&(_, &lsn)| lsn > 0)
            .map(|(owner, &lsn)| (owner as u16, lsn))
            .collect();

        let arena = self.table.arena();
        out.reserve(64 + arena.name_bytes() as usize + self.table.len() * COUNTER_BYTES + self.dedup.len() * 56);
        let mut w = Writer { out };
        w.u32(SNAPSHOT_VERSION);
        w.u16(shard);
        w.u16(self.config.shards);
        w.u64(self.lsn);
        w.u16(durable_lsn_required.len() as u16);
        for &(owner, lsn) in &durable_lsn_required {
            w.u16(owner);
            w.u64(lsn);
        }

        w.count(arena.chunk_count());
        for chunk in arena.chunks() {
            w.bytes32(chunk);
        }

        // Side maps are keyed by offset only; the name's length is in the entry, so bounds are
        // gathered in the same pass.
        let mut bounded: Vec<(u32, u8, (i64, i64))> = Vec::with_capacity(self.bounds.len());
        w.u64(self.table.len() as u64);
        for entry in self.table.iter() {
            w.name(entry.name_at, entry.name_len);
            w.u8(if entry.is(FLAG_STRICT) {
                KIND_STRICT
            } else {
                KIND_ANALYTIC
            });
            w.i64(entry.value);
            if entry.is(FLAG_BOUNDED) {
                bounded.push((entry.name_at, entry.name_len, self.bounds_of(entry)));
            }
        }
        assert_eq!(bounded.len(), self.bounds.len());
        w.count(bounded.len());
        for &(name_at, name_len, (min, max)) in &bounded {
            w.name(name_at, name_len);
            w.i64(min);
            w.i64(max);
        }

        w.count(self.table.foreign_len());
        for foreign in self.table.foreign_names() {
            w.name(foreign.name_at, foreign.name_len);
        }

        w.count(self.merged_epochs.len());
        for (&name_at, merged) in &self.merged_epochs {
            w.name(name_at, merged.name_len);
            w.u64(merged.epoch);
        }

        let mut open: Vec<(u32, u8, u64)> = Vec::with_capacity(self.owned_splits.len() + self.recovered_open.len());
        for (&name_at, owned) in &self.owned_splits {
            open.push((name_at, owned.name_len, owned.cell.epoch()));
        }
        for (&name_at, split) in &self.recovered_open {
            open.push((name_at, split.name_len, split.epoch));
        }
        w.count(open.len());
        for &(name_at, name_len, epoch) in &open {
            w.name(name_at, name_len);
            w.u64(epoch);
        }

        w.count(parts.len());
        for (&(name_id, epoch), part) in &parts {
            w.name(name_id, part.name_len);
            w.u64(epoch);
            w.i64(part.amount);
        }

        w.u64(self.dedup.time_last_ms());
        w.count(self.dedup.len());
        for entry in self.dedup.entries() {
            w.u64(entry.key as u64);
            w.u64((entry.key >> 64) as u64);
            w.u64(entry.name_hash);
            w.i64(entry.delta);
            w.i64(entry.value);
            w.u64(entry.lsn);
            w.u64(entry.time_ms);
        }

        w.count(self.audit.len());
        for record in self.audit.iter() {
            w.u64(record.time_ms);
            w.u64(record.lsn);
            w.i64(record.old);
            w.i64(record.new);
            w.u8(u8::try_from(record.name.len()).expect("names fit a u8 length"));
            w.out.extend_from_slice(&record.name);
            w.bytes32(&record.reason);
            w.bytes32(&record.client);
        }

        // Every second memory holds, so a restart keeps the last FINE_MEMORY_SECS without
        // replaying records older than the snapshot, and seconds the runtime had not made
        // durable yet are handed out again.
        self.windows.encode(w.out);

        let sum = checksum(&out[start..]);
        out.extend_from_slice(&sum.to_le_bytes());
        SnapshotDeps {
            lsn: self.lsn,
            durable_lsn_required,
        }
    }

    /// A shard restored from `bytes` (a `snapshot` of the shard `config` describes), at the
    /// snapshot's lsn, ready to replay the records after it. Never panics on bad bytes. Panics,
    /// like `new`, if `config.check()` fails.
    pub fn from_snapshot(
        config: ShardConfig,
        splits: Arc<SplitRegistry>,
        bytes: &[u8],
    ) -> Result<Shard, SnapshotError> {
        let Some(body_len) = bytes.len().checked_sub(TRAILER_BYTES) else {
            return Err(SnapshotError::Truncated);
        };
        let (body, trailer) = bytes.split_at(body_len);
        let sum = u64::from_le_bytes(trailer.try_into().expect("8 bytes"));
        if checksum(body) != sum {
            // A short read looks like a checksum mismatch; say which when the header tells.
            return Err(SnapshotError::Checksum);
        }
        Shard::restore(config, splits, body)
    }

    /// `from_snapshot` without the trailer and checksum: the parser, which garbage tests drive.
    pub(crate) fn restore(
        config: ShardConfig,
        splits: Arc<SplitRegistry>,
        body: &[u8],
    ) -> Result<Shard, SnapshotError> {
        let mut shard = Shard::new(config, splits);
        let mut r = Reader { bytes: body };
        let version = r.u32()?;
        if version != SNAPSHOT_VERSION && version != SNAPSHOT_VERSION_NO_WINDOWS {
            return Err(SnapshotError::Version(version));
        }
        let (id, shards) = (r.u16()?, r.u16()?);
        if id != shard.config.shard || shards != shard.config.shards {
            return Err(SnapshotError::WrongShard { shard: id, shards });
        }
        let lsn = r.u64()?;
        let deps = r.u16()? as usize;
        r.check_count(deps, 10)?;
        for _ in 0..deps {
            let (owner, _) = (r.u16()?, r.u64()?);
            if owner >= shards || owner == id {
                return Err(invalid("a dependency on an unknown shard"));
            }
        }

        let chunks_max = (ARENA_BYTES_MAX / ARENA_CHUNK_BYTES as u64) as usize;
        let chunk_count = r.count(5)?;
        if chunk_count > chunks_max {
            return Err(invalid("more arena chunks than an arena holds"));
        }
        let mut chunks = Vec::with_capacity(chunk_count);
        for _ in 0..chunk_count {
            let chunk = r.bytes32()?;
            if chunk.is_empty() || chunk.len() > ARENA_CHUNK_BYTES {
                return Err(invalid("an arena chunk is empty or too long"));
            }
            chunks.push(chunk.to_vec());
        }
        let arena = NameArena::from_chunks(chunks, ARENA_BYTES_MAX);
        let mut starts = NameStarts::new(&arena);

        let counters = r.u64()?;
        let counters = r.check_count(usize::try_from(counters).unwrap_or(usize::MAX), COUNTER_BYTES)?;
        shard.table = Table::restored(arena, counters);
        for _ in 0..counters {
            let (name_at, name_len, kind, value) = (r.u32()?, r.u8()?, r.u8()?, r.i64()?);
            let (name, hash) = shard.restored_name(name_at, name_len, &mut starts)?;
            if shard_of(name, shards) != id {
                return Err(invalid("a counter of another shard"));
            }
            let flags = match kind {
                KIND_ANALYTIC if !shard.forced_owned.is_empty() && shard.forced_owned.contains(name) => FLAG_FORCED,
                KIND_ANALYTIC => 0,
                KIND_STRICT => FLAG_STRICT,
                _ => return Err(invalid("an unknown counter kind")),
            };
            shard
                .table
                .insert_restored(hash, name_at, name_len, value, flags)
                .map_err(|_| invalid("a counter name appears twice"))?;
            if flags & FLAG_STRICT != 0 {
                shard.strict_counters += 1;
            }
        }

        for _ in 0..r.count(21)? {
            let (name_at, name_len, min, max) = (r.u32()?, r.u8()?, r.i64()?, r.i64()?);
            let (entry, hash) = shard.restored_counter(name_at, name_len)?;
            let bounds = (min, max);
            if !entry.is(FLAG_STRICT) || entry.is(FLAG_BOUNDED) {
                return Err(invalid("bounds of an analytic counter, or bounds twice"));
            }
            if bounds == BOUNDS_FULL || min > max || !within(bounds, entry.value) {
                return Err(invalid("bounds that are full, empty or exclude the value"));
            }
            shard.table.get_mut(entry.id(hash)).flags |= FLAG_BOUNDED;
            shard.bounds.insert(name_at, bounds);
        }

        for _ in 0..r.count(5)? {
            let (name_at, name_len) = (r.u32()?, r.u8()?);
            let (name, hash) = shard.restored_name(name_at, name_len, &mut starts)?;
            if shard_of(name, shards) == id {
                return Err(invalid("a foreign name this shard owns"));
            }
            let foreign = ForeignName { name_at, name_len };
            shard
                .table
                .foreign_insert_restored(hash, foreign)
                .map_err(|_| invalid("a foreign name appears twice"))?;
        }

        for _ in 0..r.count(13)? {
            let (name_at, name_len, epoch) = (r.u32()?, r.u8()?, r.u64()?);
            let (entry, _) = shard.restored_counter(name_at, name_len)?;
            if entry.is(FLAG_STRICT) || epoch == 0 {
                return Err(invalid("a merged epoch of a strict counter, or epoch 0"));
            }
            if shard
                .merged_epochs
                .insert(name_at, MergedEpoch { epoch, name_len })
                .is_some()
            {
                return Err(invalid("a merged epoch appears twice"));
            }
        }

        for _ in 0..r.count(13)? {
            let (name_at, name_len, epoch) = (r.u32()?, r.u8()?, r.u64()?);
            let (entry, hash) = shard.restored_counter(name_at, name_len)?;
            if entry.is(FLAG_STRICT) || entry.value.unsigned_abs() > SPLIT_VALUE_ABS_MAX as u64 {
                return Err(invalid("an open split of a strict counter or beyond the split range"));
            }
            if epoch == 0 || epoch > lsn || shard.merged_epoch(name_at).is_some_and(|merged| epoch <= merged) {
                return Err(invalid(
                    "an open split epoch that is 0, above the lsn or already merged",
                ));
            }
            let split = RecoveredSplit {
                epoch,
                table_hash: hash,
                name_len,
            };
            if shard.recovered_open.insert(name_at, split).is_some() {
                return Err(invalid("an open split appears twice"));
            }
        }

        for _ in 0..r.count(21)? {
            let (name_at, name_len, epoch, amount) = (r.u32()?, r.u8()?, r.u64()?, r.i64()?);
            let name = shard
                .table
                .arena()
                .try_get(name_at, name_len)
                .filter(|name| !name.is_empty())
                .ok_or(invalid("a slot part's name is outside the arena"))?;
            let hash = table_hash(name_hash(name));
            if shard.table.foreign_find(hash, name) != Some(name_at) {
                return Err(invalid("a slot part of a name that is not a foreign name"));
            }
            if epoch == 0 || amount.unsigned_abs() > SPLIT_SLOT_ABS_MAX as u64 {
                return Err(invalid("a slot part of epoch 0 or beyond the slot range"));
            }
            let part = RecoveredPart { name_len, amount };
            if shard.recovered_parts.insert((name_at, epoch), part).is_some() {
                return Err(invalid("a slot part appears twice"));
            }
        }

        let time_last_ms = r.u64()?;
        for _ in 0..r.count(56)? {
            let (key_lo, key_hi) = (r.u64()?, r.u64()?);
            let entry = DedupEntry {
                key: (u128::from(key_hi) << 64) | u128::from(key_lo),
                name_hash: r.u64()?,
                delta: r.i64()?,
                value: r.i64()?,
                lsn: r.u64()?,
                time_ms: r.u64()?,
            };
            if entry.lsn == 0 || entry.lsn > lsn {
                return Err(invalid("a dedup entry's lsn is 0 or above the snapshot's"));
            }
            shard
                .dedup
                .restore(entry)
                .map_err(|_| invalid("dedup entries out of time order, repeated, or too many"))?;
        }
        shard
            .dedup
            .restore_time_last_ms(time_last_ms)
            .map_err(|_| invalid("the dedup time is before its newest entry"))?;

        let audits = r.count(41)?;
        if audits > AUDIT_RECORDS_MAX {
            return Err(invalid("more audit records than the ring holds"));
        }
        let mut audit_lsn = 0;
        for _ in 0..audits {
            let (time_ms, record_lsn, old, new) = (r.u64()?, r.u64()?, r.i64()?, r.i64()?);
            let name_len = r.u8()? as usize;
            let name = r.take(name_len)?.to_vec();
            let reason = r.bytes32()?.to_vec();
            let client = r.bytes32()?.to_vec();
            if name.is_empty() || record_lsn <= audit_lsn || record_lsn > lsn {
                return Err(invalid(
                    "an audit record with no name, out of lsn order or above the lsn",
                ));
            }
            audit_lsn = record_lsn;
            shard.audit.push(ResetRecord {
                time_ms,
                name,
                old,
                new,
                reason,
                client,
                lsn: record_lsn,
            });
        }

        // Version 1 (written before windows existed) ends here: its shard starts with empty windows.
        if version == SNAPSHOT_VERSION {
            let mut at = 0;
            let arena = shard.table.arena();
            let valid_name = |name: crate::window::NameRef| arena.try_get(name.name_at(), name.name_len()).is_some();
            let windows =
                crate::window::WindowStore::decode(shard.config.windows.enabled, r.bytes, &mut at, valid_name)
                    .ok_or(invalid("a malformed windows section"))?;
            shard.windows = windows;
            r.bytes = &r.bytes[at..];
        }
        if !r.bytes.is_empty() {
            return Err(invalid("bytes after the last section"));
        }
        shard.lsn = lsn;
        Ok(shard)
    }

    /// A name position from a snapshot: checked to be inside the arena and not used before.
    fn restored_name(
        &self,
        name_at: u32,
        name_len: u8,
        starts: &mut NameStarts,
    ) -> Result<(&[u8], u64), SnapshotError> {
        let name = self
            .table
            .arena()
            .try_get(name_at, name_len)
            .filter(|name| !name.is_empty())
            .ok_or(invalid("a name outside the arena"))?;
        if !starts.mark(name_at) {
            return Err(invalid("two names at one arena position"));
        }
        Ok((name, table_hash(name_hash(name))))
    }

    /// The counter a side section names by position, and its table hash.
    fn restored_counter(&self, name_at: u32, name_len: u8) -> Result<(Entry, u64), SnapshotError> {
        let name = self
            .table
            .arena()
            .try_get(name_at, name_len)
            .filter(|name| !name.is_empty())
            .ok_or(invalid("a name outside the arena"))?;
        let hash = table_hash(name_hash(name));
        match self.table.find(hash, name) {
            Some(entry) if entry.name_at == name_at => Ok((*entry, hash)),
            _ => Err(invalid("a side entry of no counter")),
        }
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;
    use tally_proto::{Reply, Request};

    use super::*;
    use crate::config::NamespaceRule;
    use crate::log::owned::Recorder;
    use crate::log::NullLog;
    use crate::shard::{Applied, Canonical, Ctx};

    fn config(shard: u16, shards: u16) -> ShardConfig {
        let mut config = ShardConfig::new(shard, shards);
        config.namespaces.push(NamespaceRule {
            prefix: b"inv:".to_vec(),
            kind: CounterKind::Strict,
            min: Some(-50),
            max: Some(100),
        });
        config.hot.forced = vec![owned_name("forced", 0, shards)];
        config
    }

    use tally_proto::CounterKind;

    fn owned_name(prefix: &str, shard: u16, shards: u16) -> Vec<u8> {
        (0..)
            .map(|i| format!("{prefix}{i}").into_bytes())
            .find(|name| shard_of(name, shards) == shard)
            .expect("some name hashes to every shard")
    }

    fn apply(shard: &mut Shard, op: &Request<'_>, now_ms: u64) -> Reply {
        let ctx = Ctx {
            now_ms,
            client: b"snap",
        };
        match shard.apply(op, &ctx, &mut NullLog) {
            Applied::Done(Ok(reply)) => reply,
            other => panic!("{op:?}: {other:?}"),
        }
    }

    fn incr<'a>(name: &'a [u8], delta: i64, key: Option<u128>) -> Request<'a> {
        Request::Incr { name, delta, key }
    }

    /// Two shards with every kind of state: plain, strict (bounded and not), forced and split
    /// counters, keys, resets, a merged split, an open split with slot amounts on shard 1.
    fn busy_node() -> (Vec<Shard>, Vec<u8>) {
        let registry = Arc::new(SplitRegistry::new(2));
        let mut shards: Vec<Shard> = (0..2).map(|id| Shard::new(config(id, 2), registry.clone())).collect();
        for i in 0..300 {
            let name = format!("views:{i}");
            let owner = shard_of(name.as_bytes(), 2) as usize;
            apply(
                &mut shards[owner],
                &incr(name.as_bytes(), i, Some(i as u128 * 3)),
                1_000 + i as u64,
            );
        }
        let hot = owned_name("hot", 0, 2);
        let (s, inv) = (owned_name("s", 0, 2), owned_name("inv:a", 0, 2));
        let strict = |name: &'static [u8], min, max| Request::Create {
            name,
            kind: CounterKind::Strict,
            initial: 1,
            min,
            max,
        };
        apply(
            &mut shards[0],
            &strict(owned_name("unbounded", 0, 2).leak(), None, None),
            2_000,
        );
        let s: &'static [u8] = s.leak();
        apply(&mut shards[0], &strict(s, Some(0), Some(9)), 2_000);
        apply(&mut shards[0], &incr(&inv, 7, None), 2_000);
        apply(
            &mut shards[0],
            &Request::Reset {
                name: s,
                value: 4,
                reason: b"r",
            },
            2_100,
        );
        apply(&mut shards[0], &incr(&hot, 10, None), 2_200);
        // One merged split, then an open one with amounts in shard 1's slot.
        assert!(shards[0].split_now(&hot, &mut NullLog));
        apply(&mut shards[1], &incr(&hot, 5, None), 2_300);
        assert!(shards[0].merge_now(&hot, &mut NullLog));
        assert!(shards[0].split_now(&hot, &mut NullLog));
        apply(&mut shards[1], &incr(&hot, 6, None), 2_400);
        apply(&mut shards[0], &incr(&hot, 1, Some(77)), 2_400);
        let forced = owned_name("forced", 0, 2);
        apply(&mut shards[0], &incr(&forced, 2, None), 2_500);
        apply(&mut shards[1], &incr(&forced, 3, None), 2_500);
        (shards, hot)
    }

    fn round_trip(shard: &Shard) -> (Shard, Vec<u8>) {
        let mut bytes = Vec::new();
        let deps = shard.snapshot(&mut bytes);
        assert_eq!(deps.lsn, shard.lsn());
        let registry = Arc::new(SplitRegistry::new(shard.config.shards));
        let restored = Shard::from_snapshot(shard.config.clone(), registry, &bytes).expect("a snapshot restores");
        (restored, bytes)
    }

    #[test]
    fn snapshots_restore_every_part_of_the_state() {
        let (shards, hot) = busy_node();
        let (owner, _) = round_trip(&shards[0]);
        let expected = shards[0].canonical();
        assert_eq!(owner.canonical(), expected);
        assert!(
            expected.open.len() == 2,
            "hot and forced are split: {:?}",
            expected.open
        );
        assert!(!expected.merged.is_empty() && !expected.bounds.is_empty() && !expected.audit.is_empty());
        assert!(expected.dedup.len() > 100);
        // The non-owner's open slots become recovered parts of their epochs.
        let (other, _) = round_trip(&shards[1]);
        let mut expected = shards[1].canonical();
        assert_eq!(expected.foreign.len(), 2, "hot and forced were written into slots");
        let hot_id = expected
            .foreign
            .iter()
            .find(|(_, name)| *name == hot)
            .map(|(id, _)| *id)
            .unwrap();
        let owner_state = shards[0].canonical();
        let hot_at = owner_state.counters.iter().find(|c| c.1 == hot).map(|c| c.0).unwrap();
        let hot_epoch = owner_state
            .open
            .iter()
            .find(|&&(at, _)| at == hot_at)
            .map(|&(_, e)| e)
            .unwrap();
        let parts = other.canonical().parts;
        assert!(parts.contains(&((hot_id, hot_epoch), 6)), "{parts:?}");
        assert_eq!(parts.len(), 2);
        expected.parts = parts;
        assert_eq!(other.canonical(), expected);
        // A restored shard stores its next name where the original would.
        assert_eq!(owner.table.next_name_at(9), shards[0].table.next_name_at(9));
    }

    #[test]
    fn snapshots_restore_a_recovering_shard() {
        let (shards, _) = busy_node();
        let (restored, _) = round_trip(&shards[1]);
        let (again, _) = round_trip(&restored);
        assert_eq!(again.canonical(), restored.canonical());
        assert!(!again.canonical().parts.is_empty());
    }

    #[test]
    fn a_snapshot_depends_on_merges_of_slots_it_leaves_out() {
        let registry = Arc::new(SplitRegistry::new(2));
        let mut shards: Vec<Shard> = (0..2).map(|id| Shard::new(config(id, 2), registry.clone())).collect();
        let hot = owned_name("hot", 0, 2);
        apply(&mut shards[0], &incr(&hot, 1, None), 0);
        assert!(shards[0].split_now(&hot, &mut NullLog));
        apply(&mut shards[1], &incr(&hot, 2, None), 0);
        let mut bytes = Vec::new();
        assert!(shards[1].snapshot(&mut bytes).durable_lsn_required.is_empty());
        let open = Shard::from_snapshot(config(1, 2), Arc::new(SplitRegistry::new(2)), &bytes).unwrap();
        assert_eq!(open.canonical().parts, vec![((0, 2), 2)]);
        let merge_lsn = shards[0].lsn() + 1;
        assert!(shards[0].merge_now(&hot, &mut NullLog));
        // Closed but still cached, and after the cache drops it: the same dependency.
        let deps = shards[1].snapshot(&mut Vec::new());
        assert_eq!(deps.durable_lsn_required, vec![(0, merge_lsn)]);
        let ctx = Ctx { now_ms: 0, client: b"" };
        assert_eq!(
            shards[1].apply(&incr(&hot, 1, None), &ctx, &mut NullLog),
            Applied::Forward(0)
        );
        let mut bytes = Vec::new();
        let deps = shards[1].snapshot(&mut bytes);
        assert_eq!(deps.durable_lsn_required, vec![(0, merge_lsn)]);
        let restored = Shard::from_snapshot(config(1, 2), Arc::new(SplitRegistry::new(2)), &bytes).unwrap();
        assert!(restored
            .canonical()
            .parts
            .iter()
            .all(|((id, _), _)| restored.table.name_at(*id, hot.len() as u8) != hot));
    }

    #[test]
    fn bad_snapshots_are_errors() {
        let (shards, _) = busy_node();
        let mut bytes = Vec::new();
        shards[0].snapshot(&mut bytes);
        let restore = |bytes: &[u8]| Shard::from_snapshot(config(0, 2), Arc::new(SplitRegistry::new(2)), bytes);
        assert!(restore(&bytes).is_ok());
        for len in (0..bytes.len()).step_by(97) {
            assert!(restore(&bytes[..len]).is_err(), "a {len}-byte prefix restored");
        }
        let mut flipped = bytes.clone();
        flipped[100] ^= 1;
        assert_eq!(restore(&flipped).err(), Some(SnapshotError::Checksum));
        let wrong = Shard::from_snapshot(config(1, 2), Arc::new(SplitRegistry::new(2)), &bytes);
        assert_eq!(wrong.err(), Some(SnapshotError::WrongShard { shard: 0, shards: 2 }));
        let body = &bytes[..bytes.len() - TRAILER_BYTES];
        let mut versioned = body.to_vec();
        versioned[0] = 3;
        assert_eq!(
            Shard::restore(config(0, 2), Arc::new(SplitRegistry::new(2)), &versioned).err(),
            Some(SnapshotError::Version(3))
        );
        for len in 0..body.len() {
            let restored = Shard::restore(config(0, 2), Arc::new(SplitRegistry::new(2)), &body[..len]);
            assert!(restored.is_err(), "a {len}-byte body restored");
        }
    }

    #[test]
    fn a_version_1_body_without_windows_still_restores() {
        let mut shard = Shard::new(config(0, 1), Arc::new(SplitRegistry::new(1)));
        let incr = Request::Incr {
            name: b"a",
            delta: 5,
            key: None,
        };
        let mut log = Recorder::default();
        let _ = shard.apply(
            &incr,
            &Ctx {
                now_ms: 1_000,
                client: b"",
            },
            &mut log,
        );
        let mut bytes = Vec::new();
        shard.snapshot(&mut bytes);
        let body = &bytes[..bytes.len() - TRAILER_BYTES];
        // Cut this shard's windows section: encode it alone to learn its length.
        let mut section = Vec::new();
        shard.windows.encode(&mut section);
        let mut v1 = body[..body.len() - section.len()].to_vec();
        v1[..4].copy_from_slice(&SNAPSHOT_VERSION_NO_WINDOWS.to_le_bytes());
        let restored = Shard::restore(config(0, 1), Arc::new(SplitRegistry::new(1)), &v1).unwrap();
        let empty_windows = Shard::new(config(0, 1), Arc::new(SplitRegistry::new(1)))
            .canonical()
            .windows;
        let expected = Canonical {
            windows: empty_windows,
            ..shard.canonical()
        };
        assert_eq!(restored.canonical(), expected);
        assert_ne!(
            shard.canonical().windows,
            expected.windows,
            "the increment was in the windows"
        );
        // The same cut body under version 2 is malformed: the windows section is missing.
        let mut cut = v1.clone();
        cut[..4].copy_from_slice(&SNAPSHOT_VERSION.to_le_bytes());
        assert!(Shard::restore(config(0, 1), Arc::new(SplitRegistry::new(1)), &cut).is_err());
    }

    #[test]
    fn an_empty_shard_round_trips() {
        let shard = Shard::new(config(0, 1), Arc::new(SplitRegistry::new(1)));
        let (restored, bytes) = round_trip(&shard);
        assert_eq!(restored.canonical(), shard.canonical());
        // version, ids, lsn, 9 empty counts, dedup time, windows (5 u64, no slices, an empty
        // open second), checksum.
        let windows = 5 * 8 + 4 + 4 + 8 + 4;
        assert_eq!(bytes.len(), 4 + 4 + 8 + 2 + 4 + 8 + 4 * 5 + 8 + 4 + 4 + windows + 8);
    }

    /// Restores mutated bytes without the checksum (so the parser, not the checksum, meets them)
    /// and, if they are accepted, uses the shard: nothing may panic.
    fn restore_and_use(body: &[u8]) {
        let Ok(shard) = Shard::restore(config(0, 2), Arc::new(SplitRegistry::new(2)), body) else {
            return;
        };
        shard.snapshot(&mut Vec::new());
        let registry = Arc::new(SplitRegistry::new(2));
        let mut shards = vec![shard, Shard::new(config(1, 2), registry)];
        let mut log = Recorder::default();
        if crate::shard::reconcile(&mut shards, &mut [&mut log, &mut NullLog]).is_err() {
            return;
        }
        let shard = &mut shards[0];
        let names: Vec<Vec<u8>> = shard.table.iter().map(|e| shard.table.name(e).to_vec()).collect();
        for name in &names {
            let _ = shard.apply(&incr(name, 1, None), &Ctx { now_ms: 0, client: b"" }, &mut log);
            let _ = shard.apply(
                &Request::Reset {
                    name,
                    value: 0,
                    reason: b"",
                },
                &Ctx { now_ms: 0, client: b"" },
                &mut log,
            );
            shard.split_now(name, &mut log);
        }
        shard.tick(10_000_000, &mut log);
        shard.snapshot(&mut Vec::new());
    }

    fn small_snapshot() -> Vec<u8> {
        let registry = Arc::new(SplitRegistry::new(2));
        let mut zero = Shard::new(config(0, 2), registry.clone());
        let mut one = Shard::new(config(1, 2), registry);
        let hot = owned_name("h", 0, 2);
        let s: &'static [u8] = owned_name("s", 0, 2).leak();
        apply(&mut zero, &incr(&hot, 1, Some(1)), 5);
        apply(
            &mut zero,
            &Request::Create {
                name: s,
                kind: CounterKind::Strict,
                initial: 1,
                min: Some(0),
                max: Some(3),
            },
            6,
        );
        apply(
            &mut zero,
            &Request::Reset {
                name: s,
                value: 2,
                reason: b"x",
            },
            7,
        );
        assert!(zero.split_now(&hot, &mut NullLog));
        apply(&mut one, &incr(&hot, 1, None), 8);
        assert!(zero.merge_now(&hot, &mut NullLog));
        assert!(zero.split_now(&hot, &mut NullLog));
        let mut bytes = Vec::new();
        zero.snapshot(&mut bytes);
        bytes.truncate(bytes.len() - TRAILER_BYTES);
        bytes
    }

    proptest! {
        #[test]
        fn garbage_never_panics(bytes in prop::collection::vec(any::<u8>(), 0..2048)) {
            let restored = Shard::from_snapshot(config(0, 2), Arc::new(SplitRegistry::new(2)), &bytes);
            prop_assert!(restored.is_err());
            restore_and_use(&bytes);
        }

        #[test]
        fn mutated_snapshots_never_panic(
            flips in prop::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..6),
            cut in any::<prop::sample::Index>(),
            truncate in any::<bool>(),
        ) {
            let mut body = small_snapshot();
            for (at, byte) in flips {
                let at = at.index(body.len());
                body[at] = byte;
            }
            if truncate {
                body.truncate(cut.index(body.len()));
            }
            restore_and_use(&body);
            // The unmutated body always restores, so the mutations are what the parser met.
            prop_assert!(Shard::restore(config(0, 2), Arc::new(SplitRegistry::new(2)), &small_snapshot()).is_ok());
        }
    }

    #[test]
    fn canonical_state_covers_split_epochs() {
        // Guards the test helper: a live split shows as an open epoch like a recovered one.
        let (shards, _) = busy_node();
        let canonical: Canonical = shards[0].canonical();
        assert_eq!(canonical.open.len(), shards[0].split_names().len());
    }
}
