//! The counter table: a `hashbrown::HashTable` of 16-byte entries plus a chunked arena holding the
//! names. This is where the memory per counter goes, so it is kept compact:
//! - an `Entry` is 16 bytes (value, arena offset, name length, flags, a 16-bit hash tag); the rare
//!   extras (strict bounds, split cells) live in side maps of the shard keyed by the arena offset;
//! - names are stored once, back to back, in 1 MiB chunks that are never reallocated or moved, so
//!   an arena offset names a counter for the shard's lifetime;
//! - the table hash is a splitmix64 mix of the routing hash: within a shard every name has the same
//!   `name_hash % shards`, so the raw routing hash would cluster buckets.
//!
//! Entries are never removed: a counter, once created, exists until the shard goes away.
//!
//! The arena also holds "foreign" names: other shards' split counters that this shard logged a slot
//! increment of. They have no entry (this shard does not own them); storing them gives them an
//! arena offset, which is what log records use as a name's id (`LogRecord::name_id`).

use hashbrown::HashTable;

use crate::limits::{ARENA_BYTES_MAX, ARENA_CHUNK_BYTES};

/// The counter is strict.
pub const FLAG_STRICT: u8 = 1 << 0;
/// The counter is split; the shard's split map holds its cell.
pub const FLAG_SPLIT: u8 = 1 << 1;
/// The counter has declared bounds other than the full i64 range; the shard's bounds map holds them.
pub const FLAG_BOUNDED: u8 = 1 << 2;
/// The counter is forced hot by config: split whenever eligible, never merged by rate.
pub const FLAG_FORCED: u8 = 1 << 3;

/// One counter. Its name is `arena[name_at..name_at + name_len]`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(C)]
pub struct Entry {
    /// The value. For a split counter this is only the owner's own part; the slots hold the rest.
    pub value: i64,
    /// The name's offset in the arena; also the counter's stable id within the shard.
    pub name_at: u32,
    pub name_len: u8,
    /// `FLAG_*` bits.
    pub flags: u8,
    /// 16 bits of the table hash, compared before the name so a probe rarely touches the arena.
    tag: u16,
}

const _: () = assert!(std::mem::size_of::<Entry>() == 16);

impl Entry {
    pub fn is(&self, flag: u8) -> bool {
        self.flags & flag != 0
    }

    /// The handle of this entry, whose table hash is `hash`.
    pub fn id(&self, hash: u64) -> CounterId {
        CounterId {
            hash,
            name_at: self.name_at,
            name_len: self.name_len,
        }
    }
}

/// A handle on an existing counter that does not borrow its name: the table hash and the arena
/// position. Side maps and the hot sketch hold these.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CounterId {
    pub hash: u64,
    pub name_at: u32,
    pub name_len: u8,
}

/// The table hash of a name, from its routing hash (`tally_proto::name_hash`): the splitmix64
/// finalizer, a bijection that spreads every input bit over all output bits.
#[inline]
pub fn table_hash(name_hash: u64) -> u64 {
    let mut z = name_hash.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

#[inline]
fn tag_of(hash: u64) -> u16 {
    (hash >> 32) as u16
}

/// Names back to back in fixed-size chunks. A name never spans two chunks; a chunk's buffer is
/// allocated once with its full capacity and never grows, so stored names never move.
pub struct NameArena {
    chunks: Vec<Vec<u8>>,
    bytes_max: u64,
    name_bytes: u64,
}

impl NameArena {
    /// An arena that may hold at most `bytes_max` bytes (a multiple of the chunk size, at most
    /// `ARENA_BYTES_MAX`). Tests use small limits to reach `TableFull` quickly.
    pub fn new(bytes_max: u64) -> NameArena {
        assert!(bytes_max > 0);
        assert!(bytes_max <= ARENA_BYTES_MAX);
        assert!(
            bytes_max / ARENA_CHUNK_BYTES as u64 * ARENA_CHUNK_BYTES as u64 == bytes_max,
            "whole chunks"
        );
        NameArena {
            chunks: Vec::new(),
            bytes_max,
            name_bytes: 0,
        }
    }

    /// An arena holding `chunks` as restored from a snapshot. Every chunk is non-empty and at most
    /// `ARENA_CHUNK_BYTES` long (the caller checked); the last one gets its full capacity back, so
    /// pushes continue exactly where the snapshotted arena would have put them.
    pub fn from_chunks(mut chunks: Vec<Vec<u8>>, bytes_max: u64) -> NameArena {
        assert!((chunks.len() * ARENA_CHUNK_BYTES) as u64 <= bytes_max);
        let mut name_bytes = 0u64;
        for chunk in &chunks {
            assert!(!chunk.is_empty());
            assert!(chunk.len() <= ARENA_CHUNK_BYTES);
            name_bytes += chunk.len() as u64;
        }
        if let Some(last) = chunks.last_mut() {
            last.reserve_exact(ARENA_CHUNK_BYTES - last.len());
        }
        let mut arena = NameArena::new(bytes_max);
        arena.chunks = chunks;
        arena.name_bytes = name_bytes;
        arena
    }

    /// The offset `push` would give a name of `len` bytes, or `None` if it would not fit.
    pub fn next_offset(&self, len: usize) -> Option<u32> {
        assert!(len > 0);
        assert!(len <= ARENA_CHUNK_BYTES);
        match self.chunks.last() {
            Some(chunk) if chunk.len() + len <= ARENA_CHUNK_BYTES => {
                Some(((self.chunks.len() - 1) * ARENA_CHUNK_BYTES + chunk.len()) as u32)
            }
            _ => {
                let chunks_max = (self.bytes_max / ARENA_CHUNK_BYTES as u64) as usize;
                (self.chunks.len() < chunks_max).then(|| (self.chunks.len() * ARENA_CHUNK_BYTES) as u32)
            }
        }
    }

    /// Stores `name` and returns its offset, or `None` when the arena is full.
    pub fn push(&mut self, name: &[u8]) -> Option<u32> {
        assert!(!name.is_empty());
        assert!(name.len() <= u8::MAX as usize);
        let fits = self
            .chunks
            .last()
            .is_some_and(|chunk| chunk.len() + name.len() <= ARENA_CHUNK_BYTES);
        if !fits {
            let chunks_max = (self.bytes_max / ARENA_CHUNK_BYTES as u64) as usize;
            if self.chunks.len() == chunks_max {
                return None;
            }
            self.chunks.push(Vec::with_capacity(ARENA_CHUNK_BYTES));
        }
        let index = self.chunks.len() - 1;
        let chunk = &mut self.chunks[index];
        let offset = index * ARENA_CHUNK_BYTES + chunk.len();
        chunk.extend_from_slice(name);
        assert!(
            chunk.len() <= ARENA_CHUNK_BYTES,
            "a chunk never grows past its capacity"
        );
        self.name_bytes += name.len() as u64;
        Some(u32::try_from(offset).expect("arena offsets fit a u32 by ARENA_BYTES_MAX"))
    }

    #[inline]
    pub fn get(&self, at: u32, len: u8) -> &[u8] {
        let at = at as usize;
        let chunk = &self.chunks[at / ARENA_CHUNK_BYTES];
        let start = at % ARENA_CHUNK_BYTES;
        &chunk[start..start + len as usize]
    }

    /// `get` for untrusted positions (a snapshot's): `None` unless the bytes are stored names.
    pub fn try_get(&self, at: u32, len: u8) -> Option<&[u8]> {
        let at = at as usize;
        let chunk = self.chunks.get(at / ARENA_CHUNK_BYTES)?;
        let start = at % ARENA_CHUNK_BYTES;
        chunk.get(start..start + len as usize)
    }

    /// The used part of every chunk, in offset order.
    pub fn chunks(&self) -> impl Iterator<Item = &[u8]> {
        self.chunks.iter().map(|chunk| chunk.as_slice())
    }

    pub fn chunk_count(&self) -> usize {
        self.chunks.len()
    }

    /// Bytes of names stored (without the unused tails of chunks).
    pub fn name_bytes(&self) -> u64 {
        self.name_bytes
    }

    /// Bytes the arena holds from the allocator.
    pub fn memory_bytes(&self) -> u64 {
        // Chunks are allocated at full capacity, except the ones restored from a snapshot, which
        // keep their exact length unless they are the last.
        let chunks: usize = self.chunks.iter().map(|chunk| chunk.capacity()).sum();
        (chunks + self.chunks.capacity() * std::mem::size_of::<Vec<u8>>()) as u64
    }
}

/// The arena is full: no new names fit in this shard.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TableFull;

/// A restored entry or foreign name clashes with one already restored (the same name twice).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Duplicate;

/// A name this shard stores but does not own: see the module doc.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ForeignName {
    pub name_at: u32,
    pub name_len: u8,
}

/// Counters by name.
pub struct Table {
    entries: HashTable<Entry>,
    arena: NameArena,
    foreign: HashTable<ForeignName>,
}

impl Table {
    pub fn new() -> Table {
        Table::with_arena_bytes_max(ARENA_BYTES_MAX)
    }

    pub fn with_arena_bytes_max(bytes_max: u64) -> Table {
        Table {
            entries: HashTable::new(),
            arena: NameArena::new(bytes_max),
            foreign: HashTable::new(),
        }
    }

    /// An empty table over a restored arena, with room for `entries` counters without growing.
    pub fn restored(arena: NameArena, entries: usize) -> Table {
        Table {
            entries: HashTable::with_capacity(entries),
            arena,
            foreign: HashTable::new(),
        }
    }

    pub fn arena(&self) -> &NameArena {
        &self.arena
    }

    /// Adds a restored counter whose name is already in the arena at `name_at`. `hash` is the
    /// table hash of that name. Fails if a counter of that name exists.
    pub fn insert_restored(
        &mut self,
        hash: u64,
        name_at: u32,
        name_len: u8,
        value: i64,
        flags: u8,
    ) -> Result<Entry, Duplicate> {
        let arena = &self.arena;
        let name = arena.get(name_at, name_len);
        let tag = tag_of(hash);
        let slot = self.entries.entry(
            hash,
            |e| e.tag == tag && arena.get(e.name_at, e.name_len) == name,
            |e| table_hash(tally_proto::name_hash(arena.get(e.name_at, e.name_len))),
        );
        let hashbrown::hash_table::Entry::Vacant(slot) = slot else {
            return Err(Duplicate);
        };
        let entry = Entry {
            value,
            name_at,
            name_len,
            flags,
            tag,
        };
        slot.insert(entry);
        Ok(entry)
    }

    /// The offset a new name of `len` bytes would get, or `None` if the arena is full.
    pub fn next_name_at(&self, len: usize) -> Option<u32> {
        self.arena.next_offset(len)
    }

    /// The id of a foreign name stored before.
    #[inline]
    pub fn foreign_find(&self, hash: u64, name: &[u8]) -> Option<u32> {
        let arena = &self.arena;
        self.foreign
            .find(hash, |f| arena.get(f.name_at, f.name_len) == name)
            .map(|f| f.name_at)
    }

    /// Stores a foreign name that is not stored yet and returns its id.
    pub fn foreign_insert(&mut self, hash: u64, name: &[u8]) -> Result<u32, TableFull> {
        assert!(self.foreign_find(hash, name).is_none(), "a foreign name is stored once");
        let name_at = self.arena.push(name).ok_or(TableFull)?;
        let foreign = ForeignName {
            name_at,
            name_len: name.len() as u8,
        };
        let arena = &self.arena;
        self.foreign.insert_unique(hash, foreign, |f| {
            table_hash(tally_proto::name_hash(arena.get(f.name_at, f.name_len)))
        });
        Ok(name_at)
    }

    /// Adds a restored foreign name already in the arena.
    pub fn foreign_insert_restored(&mut self, hash: u64, foreign: ForeignName) -> Result<(), Duplicate> {
        let name = self.arena.get(foreign.name_at, foreign.name_len);
        if self.foreign_find(hash, name).is_some() {
            return Err(Duplicate);
        }
        let arena = &self.arena;
        self.foreign.insert_unique(hash, foreign, |f| {
            table_hash(tally_proto::name_hash(arena.get(f.name_at, f.name_len)))
        });
        Ok(())
    }

    pub fn foreign_names(&self) -> impl Iterator<Item = &ForeignName> {
        self.foreign.iter()
    }

    pub fn foreign_len(&self) -> usize {
        self.foreign.len()
    }

    /// The name stored at `name_at` (a counter's or a foreign one).
    pub fn name_at(&self, name_at: u32, name_len: u8) -> &[u8] {
        self.arena.get(name_at, name_len)
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// `hash` is `table_hash(name_hash(name))`.
    #[inline]
    pub fn find(&self, hash: u64, name: &[u8]) -> Option<&Entry> {
        let arena = &self.arena;
        let tag = tag_of(hash);
        self.entries
            .find(hash, |e| e.tag == tag && arena.get(e.name_at, e.name_len) == name)
    }

    #[inline]
    pub fn find_mut(&mut self, hash: u64, name: &[u8]) -> Option<&mut Entry> {
        let arena = &self.arena;
        let tag = tag_of(hash);
        self.entries
            .find_mut(hash, |e| e.tag == tag && arena.get(e.name_at, e.name_len) == name)
    }

    /// Adds a counter that must not exist yet.
    pub fn insert(&mut self, hash: u64, name: &[u8], value: i64, flags: u8) -> Result<Entry, TableFull> {
        let tag = tag_of(hash);
        let arena = &self.arena;
        // One probe both checks that the name is new and finds its bucket (growing the table first
        // if needed, which rehashes every name from the arena).
        let slot = self.entries.entry(
            hash,
            |e| e.tag == tag && arena.get(e.name_at, e.name_len) == name,
            |e| table_hash(tally_proto::name_hash(arena.get(e.name_at, e.name_len))),
        );
        let hashbrown::hash_table::Entry::Vacant(slot) = slot else {
            panic!("a name is inserted once");
        };
        let name_at = self.arena.push(name).ok_or(TableFull)?;
        let entry = Entry {
            value,
            name_at,
            name_len: name.len() as u8,
            flags,
            tag,
        };
        slot.insert(entry);
        Ok(entry)
    }

    /// The counter behind `id`, which must exist.
    pub fn get(&self, id: CounterId) -> &Entry {
        self.entries
            .find(id.hash, |e| e.name_at == id.name_at)
            .expect("a counter id names an existing counter")
    }

    pub fn get_mut(&mut self, id: CounterId) -> &mut Entry {
        self.entries
            .find_mut(id.hash, |e| e.name_at == id.name_at)
            .expect("a counter id names an existing counter")
    }

    pub fn name_of(&self, id: CounterId) -> &[u8] {
        self.arena.get(id.name_at, id.name_len)
    }

    pub fn name(&self, entry: &Entry) -> &[u8] {
        self.arena.get(entry.name_at, entry.name_len)
    }

    pub fn iter(&self) -> impl Iterator<Item = &Entry> {
        self.entries.iter()
    }

    pub fn name_bytes(&self) -> u64 {
        self.arena.name_bytes()
    }

    /// Bytes held from the allocator by the table and the arena.
    pub fn memory_bytes(&self) -> u64 {
        (self.entries.allocation_size() + self.foreign.allocation_size()) as u64 + self.arena.memory_bytes()
    }
}

impl Default for Table {
    fn default() -> Table {
        Table::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tally_proto::name_hash;

    fn hash(name: &[u8]) -> u64 {
        table_hash(name_hash(name))
    }

    #[test]
    fn insert_then_find_many() {
        let mut table = Table::new();
        for i in 0..10_000i64 {
            let name = format!("views:page:{i:010}");
            table.insert(hash(name.as_bytes()), name.as_bytes(), i, 0).unwrap();
        }
        assert_eq!(table.len(), 10_000);
        for i in 0..10_000i64 {
            let name = format!("views:page:{i:010}");
            let entry = table.find(hash(name.as_bytes()), name.as_bytes()).unwrap();
            assert_eq!(entry.value, i);
            assert_eq!(table.name(entry), name.as_bytes());
        }
        assert!(table.find(hash(b"views:page:x"), b"views:page:x").is_none());
        let entry = table
            .find_mut(hash(b"views:page:0000000007"), b"views:page:0000000007")
            .unwrap();
        entry.value += 100;
        assert_eq!(
            table
                .find(hash(b"views:page:0000000007"), b"views:page:0000000007")
                .unwrap()
                .value,
            107
        );
    }

    #[test]
    fn equal_hashes_are_told_apart_by_name() {
        let mut table = Table::new();
        // Two names forced onto the same hash (and tag) must still be distinct entries.
        table.insert(42, b"a", 1, 0).unwrap();
        table.insert(42, b"b", 2, 0).unwrap();
        assert_eq!(table.find(42, b"a").unwrap().value, 1);
        assert_eq!(table.find(42, b"b").unwrap().value, 2);
        assert!(table.find(42, b"c").is_none());
    }

    #[test]
    fn names_never_span_chunks_and_the_arena_fills_up() {
        let mut arena = NameArena::new(2 * ARENA_CHUNK_BYTES as u64);
        let name = [7u8; 255];
        let per_chunk = ARENA_CHUNK_BYTES / 255;
        let mut offsets = Vec::new();
        while let Some(at) = arena.push(&name) {
            offsets.push(at);
        }
        assert_eq!(offsets.len(), 2 * per_chunk);
        for &at in &offsets {
            let start = at as usize % ARENA_CHUNK_BYTES;
            assert!(start + 255 <= ARENA_CHUNK_BYTES);
            assert_eq!(arena.get(at, 255), &name[..]);
        }
        assert_eq!(offsets[per_chunk] as usize, ARENA_CHUNK_BYTES);
        assert!(arena.memory_bytes() as usize >= 2 * ARENA_CHUNK_BYTES);
    }

    #[test]
    fn full_arena_refuses_new_names_and_keeps_old_ones() {
        let mut table = Table::with_arena_bytes_max(ARENA_CHUNK_BYTES as u64);
        let mut created = 0;
        let result = loop {
            let name = format!("{created:0>255}");
            match table.insert(hash(name.as_bytes()), name.as_bytes(), created, 0) {
                Ok(_) => created += 1,
                Err(full) => break full,
            }
        };
        assert_eq!(result, TableFull);
        assert_eq!(table.len() as i64, created);
        let name = format!("{:0>255}", created - 1);
        assert_eq!(
            table.find(hash(name.as_bytes()), name.as_bytes()).unwrap().value,
            created - 1
        );
    }

    #[test]
    fn next_offset_predicts_push() {
        let mut arena = NameArena::new(2 * ARENA_CHUNK_BYTES as u64);
        let name = [1u8; 200];
        loop {
            let predicted = arena.next_offset(name.len());
            assert_eq!(arena.push(&name), predicted);
            if predicted.is_none() {
                break;
            }
        }
        assert_eq!(arena.chunk_count(), 2);
        assert!(arena.try_get(0, 200).is_some());
        assert!(arena.try_get(ARENA_CHUNK_BYTES as u32 * 2, 1).is_none());
        assert!(arena.try_get(ARENA_CHUNK_BYTES as u32 - 10, 200).is_none());
    }

    #[test]
    fn restored_arena_continues_where_it_stopped() {
        let mut arena = NameArena::new(ARENA_BYTES_MAX);
        for i in 0..100_000u32 {
            arena.push(format!("n{i:08}").as_bytes()).unwrap();
        }
        let chunks: Vec<Vec<u8>> = arena.chunks().map(<[u8]>::to_vec).collect();
        let mut restored = NameArena::from_chunks(chunks, ARENA_BYTES_MAX);
        assert_eq!(restored.name_bytes(), arena.name_bytes());
        assert_eq!(restored.push(b"next"), arena.push(b"next"));
        assert_eq!(restored.get(0, 9), b"n00000000");
    }

    #[test]
    fn foreign_names_get_arena_ids_and_no_entry() {
        let mut table = Table::new();
        table.insert(hash(b"mine"), b"mine", 1, 0).unwrap();
        assert_eq!(table.foreign_find(hash(b"theirs"), b"theirs"), None);
        let id = table.foreign_insert(hash(b"theirs"), b"theirs").unwrap();
        assert_eq!(id, 4);
        assert_eq!(table.foreign_find(hash(b"theirs"), b"theirs"), Some(4));
        assert_eq!(table.name_at(id, 6), b"theirs");
        assert!(table.find(hash(b"theirs"), b"theirs").is_none());
        assert_eq!((table.len(), table.foreign_len()), (1, 1));
        assert_eq!(table.next_name_at(3), Some(10));
    }

    #[test]
    fn table_hash_spreads_names_of_one_shard() {
        // Names of shard 0 of 4 share the low two bits of the routing hash; the table hash must not.
        let mut low_bits = [0usize; 4];
        let mut seen = 0;
        for i in 0..4000 {
            let name = format!("n{i}");
            let routing = name_hash(name.as_bytes());
            if tally_proto::shard_of(name.as_bytes(), 4) == 0 {
                low_bits[(table_hash(routing) % 4) as usize] += 1;
                seen += 1;
            }
        }
        for count in low_bits {
            assert!(count > seen / 8, "{low_bits:?}");
        }
    }
}
