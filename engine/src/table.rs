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

    /// Bytes of names stored (without the unused tails of chunks).
    pub fn name_bytes(&self) -> u64 {
        self.name_bytes
    }

    /// Bytes the arena holds from the allocator.
    pub fn memory_bytes(&self) -> u64 {
        (self.chunks.len() * ARENA_CHUNK_BYTES + self.chunks.capacity() * std::mem::size_of::<Vec<u8>>()) as u64
    }
}

/// The arena is full: no new names fit in this shard.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TableFull;

/// Counters by name.
pub struct Table {
    entries: HashTable<Entry>,
    arena: NameArena,
}

impl Table {
    pub fn new() -> Table {
        Table::with_arena_bytes_max(ARENA_BYTES_MAX)
    }

    pub fn with_arena_bytes_max(bytes_max: u64) -> Table {
        Table {
            entries: HashTable::new(),
            arena: NameArena::new(bytes_max),
        }
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
        self.entries.allocation_size() as u64 + self.arena.memory_bytes()
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
