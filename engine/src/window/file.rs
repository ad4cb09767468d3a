//! The window file: one shard's buckets for a time range, as a sorted run of
//! (name, [(bucket time, value)…]), compact on disk and readable one name at a time.
//!
//! Format, version 1. Fixed-width integers are little-endian; `varint` is LEB128, `zigzag` the
//! signed varint (see `varint.rs`):
//!
//! ```text
//! header   "TLYW" | u32 version = 1 | u64 from_ms | u64 to_ms     the file holds every bucket of
//!                                                                 its shard in [from_ms, to_ms)
//! block*   entry+ | u32 crc32c of the block's entries
//!   entry  varint shared | varint suffix_len | suffix bytes       name = previous name's first
//!                                                                 `shared` bytes + suffix (shared
//!                                                                 is 0 for a block's first entry)
//!          varint n (>= 1) | n × (varint dt_s, zigzag value)      first dt from from_ms, then from
//!                                                                 the previous bucket (>= 1);
//!                                                                 values are never 0
//! index    u32 blocks | blocks × (u64 offset, u32 len, u8 name_len, first name)
//!          | u32 crc32c of the index before it
//! footer   u64 index_offset | u32 index_len | "TLYW"
//! ```
//!
//! Names are sorted bytewise and appear once per file; bucket times are seconds (any resolution
//! that is a whole number of seconds fits, so one file may hold a fine namespace next to a coarse
//! one). Blocks are about `WINDOW_FILE_BLOCK_BYTES`; one name's buckets are found with a binary
//! search of the index and one block read. A reader never panics on any bytes: lengths, varints,
//! times and orders are checked, and each block and the index carry a crc.
//!
//! An async runtime reads a file in three steps without this module doing I/O: the footer (last
//! `FOOTER_BYTES`) gives the index's place (`Footer::parse`), the index and header give a
//! `FileIndex`, whose `block_for(name)` says which bytes to read next, and `FileIndex::add_block`
//! adds the name's buckets from those bytes. `WindowFile` does all three over bytes in memory.

use super::query::{DiskRange, Partial};
use super::tier::aligned;
use super::varint;
use crate::limits::WINDOW_FILE_BLOCK_BYTES;

pub const FILE_MAGIC: [u8; 4] = *b"TLYW";
pub const FILE_VERSION: u32 = 1;
pub const HEADER_BYTES: usize = 24;
pub const FOOTER_BYTES: usize = 16;
const CRC_BYTES: usize = 4;

/// Why bytes are not a window file (or not this part of one).
#[non_exhaustive]
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FileError {
    #[error("the window file ends early")]
    Truncated,
    #[error("not a window file (bad magic)")]
    Magic,
    #[error("window file version {0}; this build reads version {FILE_VERSION}")]
    Version(u32),
    #[error("checksum mismatch in the window file at offset {offset}")]
    Checksum { offset: u64 },
    #[error("invalid window file: {0}")]
    Invalid(&'static str),
}

fn invalid(reason: &'static str) -> FileError {
    FileError::Invalid(reason)
}

/// Writes a window file. Names must come in strictly increasing byte order, each with its
/// buckets in strictly increasing time inside [from_ms, to_ms).
pub struct FileWriter {
    out: Vec<u8>,
    from_s: u64,
    to_s: u64,
    block_start: usize,
    /// (offset, len, first name) of each closed block.
    index: Vec<(u64, u32, Vec<u8>)>,
    block_first: Option<Vec<u8>>,
    last_name: Vec<u8>,
    entries: u64,
    buckets: u64,
}

impl FileWriter {
    pub fn new(from_ms: u64, to_ms: u64) -> FileWriter {
        assert!(aligned(from_ms, 1_000), "files cover whole seconds");
        assert!(aligned(to_ms, 1_000), "files cover whole seconds");
        assert!(from_ms <= to_ms);
        let mut out = Vec::with_capacity(64 << 10);
        out.extend_from_slice(&FILE_MAGIC);
        out.extend_from_slice(&FILE_VERSION.to_le_bytes());
        out.extend_from_slice(&from_ms.to_le_bytes());
        out.extend_from_slice(&to_ms.to_le_bytes());
        FileWriter {
            block_start: out.len(),
            out,
            from_s: from_ms / 1_000,
            to_s: to_ms / 1_000,
            index: Vec::new(),
            block_first: None,
            last_name: Vec::new(),
            entries: 0,
            buckets: 0,
        }
    }

    /// Adds `name`'s buckets ((start ms, value), zero values skipped). A name whose buckets are
    /// all zero is not written.
    pub fn push(&mut self, name: &[u8], buckets: &[(u64, i64)]) {
        assert!(!name.is_empty() && name.len() <= u8::MAX as usize);
        assert!(
            self.entries == 0 || name > &self.last_name[..],
            "names in increasing order"
        );
        let n = buckets.iter().filter(|&&(_, v)| v != 0).count();
        if n == 0 {
            return;
        }
        let shared = match &self.block_first {
            None => {
                self.block_first = Some(name.to_vec());
                0
            }
            Some(_) => name.iter().zip(&self.last_name).take_while(|(a, b)| a == b).count(),
        };
        varint::put(&mut self.out, shared as u64);
        varint::put(&mut self.out, (name.len() - shared) as u64);
        self.out.extend_from_slice(&name[shared..]);
        varint::put(&mut self.out, n as u64);
        let mut previous = None;
        for &(t_ms, value) in buckets.iter().filter(|&&(_, v)| v != 0) {
            assert!(aligned(t_ms, 1_000), "buckets start on whole seconds");
            let t_s = t_ms / 1_000;
            assert!(
                (self.from_s..self.to_s).contains(&t_s),
                "buckets inside the file's range"
            );
            let dt = match previous {
                None => t_s - self.from_s,
                Some(previous) => {
                    assert!(t_s > previous, "buckets in increasing time");
                    t_s - previous
                }
            };
            previous = Some(t_s);
            varint::put(&mut self.out, dt);
            varint::put_i64(&mut self.out, value);
        }
        self.last_name.clear();
        self.last_name.extend_from_slice(name);
        self.entries += 1;
        self.buckets += n as u64;
        if self.out.len() - self.block_start >= WINDOW_FILE_BLOCK_BYTES {
            self.close_block();
        }
    }

    fn close_block(&mut self) {
        let Some(first) = self.block_first.take() else { return };
        let crc = crc32c::crc32c(&self.out[self.block_start..]);
        self.out.extend_from_slice(&crc.to_le_bytes());
        let len = u32::try_from(self.out.len() - self.block_start).expect("a block is far below 4 GiB");
        self.index.push((self.block_start as u64, len, first));
        self.block_start = self.out.len();
    }

    /// (names, buckets) written so far.
    pub fn counts(&self) -> (u64, u64) {
        (self.entries, self.buckets)
    }

    pub fn finish(mut self) -> Vec<u8> {
        self.close_block();
        let index_offset = self.out.len() as u64;
        self.out.extend_from_slice(&(self.index.len() as u32).to_le_bytes());
        for (offset, len, first) in &self.index {
            self.out.extend_from_slice(&offset.to_le_bytes());
            self.out.extend_from_slice(&len.to_le_bytes());
            self.out.push(first.len() as u8);
            self.out.extend_from_slice(first);
        }
        let crc = crc32c::crc32c(&self.out[index_offset as usize..]);
        self.out.extend_from_slice(&crc.to_le_bytes());
        let index_len = u32::try_from(self.out.len() as u64 - index_offset).expect("an index is below 4 GiB");
        self.out.extend_from_slice(&index_offset.to_le_bytes());
        self.out.extend_from_slice(&index_len.to_le_bytes());
        self.out.extend_from_slice(&FILE_MAGIC);
        self.out
    }
}

/// The last `FOOTER_BYTES` of a file: where its index is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Footer {
    pub index_offset: u64,
    pub index_len: u32,
}

impl Footer {
    pub fn parse(footer: &[u8]) -> Result<Footer, FileError> {
        let footer: &[u8; FOOTER_BYTES] = footer.try_into().map_err(|_| FileError::Truncated)?;
        if footer[12..16] != FILE_MAGIC {
            return Err(FileError::Magic);
        }
        Ok(Footer {
            index_offset: u64::from_le_bytes(footer[0..8].try_into().expect("8 bytes")),
            index_len: u32::from_le_bytes(footer[8..12].try_into().expect("4 bytes")),
        })
    }
}

/// A parsed header and index: enough to find any name's block. The runtime may cache these per
/// open file (~0.5% of the file's size).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileIndex {
    pub from_ms: u64,
    pub to_ms: u64,
    /// (offset, len, first name's start in `names`, its length)
    blocks: Vec<(u64, u32, u32, u8)>,
    names: Vec<u8>,
}

impl FileIndex {
    /// Parses the header (the file's first `HEADER_BYTES`) and the index bytes the footer
    /// points at.
    pub fn parse(header: &[u8], footer: Footer, index: &[u8]) -> Result<FileIndex, FileError> {
        if header.len() < HEADER_BYTES {
            return Err(FileError::Truncated);
        }
        if header[0..4] != FILE_MAGIC {
            return Err(FileError::Magic);
        }
        let version = u32::from_le_bytes(header[4..8].try_into().expect("4 bytes"));
        if version != FILE_VERSION {
            return Err(FileError::Version(version));
        }
        let from_ms = u64::from_le_bytes(header[8..16].try_into().expect("8 bytes"));
        let to_ms = u64::from_le_bytes(header[16..24].try_into().expect("8 bytes"));
        if !aligned(from_ms, 1_000) || !aligned(to_ms, 1_000) || from_ms > to_ms {
            return Err(invalid("the time range is not whole seconds or is reversed"));
        }
        if index.len() != footer.index_len as usize {
            return Err(FileError::Truncated);
        }
        let Some(body_len) = index.len().checked_sub(CRC_BYTES) else {
            return Err(FileError::Truncated);
        };
        let (body, crc) = index.split_at(body_len);
        if crc32c::crc32c(body) != u32::from_le_bytes(crc.try_into().expect("4 bytes")) {
            return Err(FileError::Checksum {
                offset: footer.index_offset,
            });
        }
        let count = u32::from_le_bytes(body.get(0..4).ok_or(FileError::Truncated)?.try_into().expect("4")) as usize;
        if count > body.len() / 14 {
            return Err(FileError::Truncated);
        }
        let mut blocks = Vec::with_capacity(count);
        let mut names = Vec::new();
        let (mut at, mut next_offset) = (4usize, HEADER_BYTES as u64);
        let mut previous: Option<(u32, u8)> = None;
        for _ in 0..count {
            let fixed = body.get(at..at + 13).ok_or(FileError::Truncated)?;
            let offset = u64::from_le_bytes(fixed[0..8].try_into().expect("8"));
            let len = u32::from_le_bytes(fixed[8..12].try_into().expect("4"));
            let name_len = fixed[12];
            at += 13;
            let name = body.get(at..at + name_len as usize).ok_or(FileError::Truncated)?;
            at += name_len as usize;
            // Blocks are back to back from the header to the index.
            if offset != next_offset || (len as usize) <= CRC_BYTES || name.is_empty() {
                return Err(invalid("blocks are not back to back, or a block or name is empty"));
            }
            next_offset = offset + u64::from(len);
            if let Some((start, len)) = previous {
                if name <= &names[start as usize..start as usize + len as usize] {
                    return Err(invalid("block first names out of order"));
                }
            }
            let start = names.len() as u32;
            names.extend_from_slice(name);
            previous = Some((start, name_len));
            blocks.push((offset, len, start, name_len));
        }
        if at != body.len() || next_offset != footer.index_offset {
            return Err(invalid("the index does not end where the blocks do"));
        }
        Ok(FileIndex {
            from_ms,
            to_ms,
            blocks,
            names,
        })
    }

    pub fn blocks(&self) -> usize {
        self.blocks.len()
    }

    fn first_name(&self, block: usize) -> &[u8] {
        let (_, _, start, len) = self.blocks[block];
        &self.names[start as usize..start as usize + len as usize]
    }

    /// The (offset, len) of the only block that may hold `name`.
    pub fn block_for(&self, name: &[u8]) -> Option<(u64, u32)> {
        let block = partition_point(self.blocks.len(), |i| self.first_name(i) <= name).checked_sub(1)?;
        let (offset, len, _, _) = self.blocks[block];
        Some((offset, len))
    }

    /// Adds `name`'s buckets inside `only` from `block` (the bytes `block_for(name)` pointed at,
    /// read at `offset`) to `partial`. `only` is the query part's `disk` range: buckets outside it
    /// are memory's (or another file's) to count. Returns whether the name was there.
    pub fn add_block(
        &self,
        offset: u64,
        block: &[u8],
        name: &[u8],
        only: DiskRange,
        partial: &mut Partial,
    ) -> Result<bool, FileError> {
        let mut reader = BlockReader::new(offset, block, self.from_ms / 1_000, self.to_ms / 1_000)?;
        while let Some(entry) = reader.next_entry()? {
            if entry.name() > name {
                break;
            }
            if entry.name() == name {
                for bucket in entry.buckets() {
                    let (t_s, value) = bucket?;
                    let t_ms = t_s * 1_000;
                    if only.from_ms <= t_ms && t_ms < only.to_ms {
                        partial.add(t_ms, value);
                    }
                }
                return Ok(true);
            }
            entry.skip()?;
        }
        Ok(false)
    }
}

fn partition_point(len: usize, pred: impl Fn(usize) -> bool) -> usize {
    let (mut lo, mut hi) = (0, len);
    while lo < hi {
        let mid = lo + (hi - lo) / 2;
        if pred(mid) {
            lo = mid + 1;
        } else {
            hi = mid;
        }
    }
    lo
}

/// Decodes one block's entries in order (after checking its crc).
struct BlockReader<'a> {
    bytes: &'a [u8],
    at: usize,
    from_s: u64,
    to_s: u64,
    name: [u8; 255],
    name_len: usize,
    /// Whether the current entry's buckets were read (the next entry starts after them).
    pending: Option<u64>,
}

impl<'a> BlockReader<'a> {
    fn new(offset: u64, block: &'a [u8], from_s: u64, to_s: u64) -> Result<BlockReader<'a>, FileError> {
        let body_len = block.len().checked_sub(CRC_BYTES).ok_or(FileError::Truncated)?;
        let (body, crc) = block.split_at(body_len);
        if body.is_empty() || crc32c::crc32c(body) != u32::from_le_bytes(crc.try_into().expect("4 bytes")) {
            return Err(FileError::Checksum { offset });
        }
        Ok(BlockReader {
            bytes: body,
            at: 0,
            from_s,
            to_s,
            name: [0; 255],
            name_len: 0,
            pending: None,
        })
    }

    /// The next entry's name; its buckets are read through the returned handle (or skipped).
    fn next_entry(&mut self) -> Result<Option<EntryReader<'_, 'a>>, FileError> {
        if let Some(n) = self.pending.take() {
            // The previous entry's buckets were not consumed: skip them.
            let mut skip = BucketIter {
                reader: self,
                left: n,
                previous: None,
            };
            for bucket in &mut skip {
                bucket?;
            }
        }
        if self.at == self.bytes.len() {
            return Ok(None);
        }
        let first = self.at == 0;
        let shared = self.varint()? as usize;
        let suffix_len = self.varint()? as usize;
        if (first && shared != 0) || shared > self.name_len || shared + suffix_len > 255 || shared + suffix_len == 0 {
            return Err(invalid("a name's prefix or length is out of range"));
        }
        let suffix = self.take(suffix_len)?;
        let mut name = [0u8; 255];
        name[..shared].copy_from_slice(&self.name[..shared]);
        name[shared..shared + suffix_len].copy_from_slice(suffix);
        let len = shared + suffix_len;
        if !first && name[..len] <= self.name[..self.name_len] {
            return Err(invalid("names out of order"));
        }
        self.name = name;
        self.name_len = len;
        let n = self.varint()?;
        if n == 0 || n > (self.bytes.len() - self.at) as u64 / 2 {
            return Err(invalid("a bucket count of 0 or beyond the block"));
        }
        self.pending = Some(n);
        Ok(Some(EntryReader { reader: self }))
    }

    fn varint(&mut self) -> Result<u64, FileError> {
        varint::get(self.bytes, &mut self.at).ok_or(FileError::Truncated)
    }

    fn take(&mut self, n: usize) -> Result<&'a [u8], FileError> {
        let out = self.bytes.get(self.at..self.at + n).ok_or(FileError::Truncated)?;
        self.at += n;
        Ok(out)
    }
}

struct EntryReader<'r, 'a> {
    reader: &'r mut BlockReader<'a>,
}

impl<'r, 'a> EntryReader<'r, 'a> {
    fn name(&self) -> &[u8] {
        &self.reader.name[..self.reader.name_len]
    }

    fn buckets(self) -> BucketIter<'r, 'a> {
        let left = self.reader.pending.take().expect("an entry's buckets are read once");
        BucketIter {
            reader: self.reader,
            left,
            previous: None,
        }
    }

    fn skip(self) -> Result<(), FileError> {
        for bucket in self.buckets() {
            bucket?;
        }
        Ok(())
    }
}

/// An entry's buckets as (second, value).
struct BucketIter<'r, 'a> {
    reader: &'r mut BlockReader<'a>,
    left: u64,
    previous: Option<u64>,
}

impl Iterator for BucketIter<'_, '_> {
    type Item = Result<(u64, i64), FileError>;

    fn next(&mut self) -> Option<Result<(u64, i64), FileError>> {
        if self.left == 0 {
            return None;
        }
        self.left -= 1;
        let result = self.bucket();
        match result {
            Ok((t_s, _)) => self.previous = Some(t_s),
            Err(_) => self.left = 0,
        }
        Some(result)
    }
}

impl BucketIter<'_, '_> {
    fn bucket(&mut self) -> Result<(u64, i64), FileError> {
        let dt = self.reader.varint()?;
        let value = varint::unzigzag(self.reader.varint()?);
        let t_s = match self.previous {
            None => self.reader.from_s.checked_add(dt),
            Some(_) if dt == 0 => None,
            Some(previous) => previous.checked_add(dt),
        }
        .filter(|&t| t < self.reader.to_s)
        .ok_or(invalid("a bucket out of order or outside the file's range"))?;
        if value == 0 {
            return Err(invalid("a zero bucket"));
        }
        Ok((t_s, value))
    }
}

/// A window file in memory: header, index and blocks checked lazily (the index at open, each
/// block when read).
#[derive(Debug, Clone)]
pub struct WindowFile<'a> {
    bytes: &'a [u8],
    index: FileIndex,
}

impl<'a> WindowFile<'a> {
    pub fn open(bytes: &'a [u8]) -> Result<WindowFile<'a>, FileError> {
        if bytes.len() < HEADER_BYTES + FOOTER_BYTES + CRC_BYTES + 4 {
            return Err(FileError::Truncated);
        }
        let footer = Footer::parse(&bytes[bytes.len() - FOOTER_BYTES..])?;
        let index_end = (footer.index_offset)
            .checked_add(u64::from(footer.index_len))
            .filter(|&end| end == (bytes.len() - FOOTER_BYTES) as u64)
            .ok_or(invalid("the footer does not point at the index"))?;
        let index = &bytes[footer.index_offset as usize..index_end as usize];
        let index = FileIndex::parse(&bytes[..HEADER_BYTES], footer, index)?;
        Ok(WindowFile { bytes, index })
    }

    pub fn index(&self) -> &FileIndex {
        &self.index
    }

    /// The time range the file is complete for.
    pub fn range_ms(&self) -> (u64, u64) {
        (self.index.from_ms, self.index.to_ms)
    }

    /// Adds `name`'s buckets inside `only` (a query part's `disk` range) to `partial`.
    pub fn add_to(&self, name: &[u8], only: DiskRange, partial: &mut Partial) -> Result<bool, FileError> {
        let Some((offset, len)) = self.index.block_for(name) else {
            return Ok(false);
        };
        let block = &self.bytes[offset as usize..offset as usize + len as usize];
        self.index.add_block(offset, block, name, only, partial)
    }

    /// A cursor over every entry in name order (merges, tools).
    pub fn cursor(&self) -> FileCursor<'_, 'a> {
        FileCursor {
            file: self,
            block: 0,
            reader: None,
            name: Vec::with_capacity(255),
            buckets: Vec::new(),
        }
    }

    /// Calls `each(name, buckets)` for every entry in name order, buckets as (start ms, value).
    pub fn for_each(&self, mut each: impl FnMut(&[u8], &[(u64, i64)])) -> Result<(), FileError> {
        let mut cursor = self.cursor();
        while cursor.advance()? {
            each(&cursor.name, &cursor.buckets);
        }
        Ok(())
    }
}

/// Reads a file's entries in order; after `advance()` returns true, `name` and `buckets` (start
/// ms, value) hold the current entry. Checks every block's crc and that names strictly increase
/// across the whole file.
pub struct FileCursor<'f, 'a> {
    file: &'f WindowFile<'a>,
    block: usize,
    reader: Option<BlockReader<'a>>,
    pub name: Vec<u8>,
    pub buckets: Vec<(u64, i64)>,
}

impl FileCursor<'_, '_> {
    /// Moves to the next entry; false at the end of the file.
    pub fn advance(&mut self) -> Result<bool, FileError> {
        let index = &self.file.index;
        loop {
            if self.reader.is_none() {
                if self.block == index.blocks.len() {
                    return Ok(false);
                }
                let (offset, len, _, _) = index.blocks[self.block];
                let bytes = &self.file.bytes[offset as usize..offset as usize + len as usize];
                self.reader = Some(BlockReader::new(
                    offset,
                    bytes,
                    index.from_ms / 1_000,
                    index.to_ms / 1_000,
                )?);
                self.block += 1;
                let reader = self.reader.as_mut().expect("just set");
                let Some(entry) = reader.next_entry()? else {
                    return Err(invalid("an empty block"));
                };
                if entry.name() != index.first_name(self.block - 1) {
                    return Err(invalid("a block's first name differs from the index"));
                }
                if !self.name.is_empty() && entry.name() <= &self.name[..] {
                    return Err(invalid("names out of order across blocks"));
                }
                self.name.clear();
                self.name.extend_from_slice(entry.name());
                self.buckets.clear();
                for bucket in entry.buckets() {
                    let (t_s, value) = bucket?;
                    self.buckets.push((t_s * 1_000, value));
                }
                return Ok(true);
            }
            let reader = self.reader.as_mut().expect("checked above");
            match reader.next_entry()? {
                None => self.reader = None,
                Some(entry) => {
                    self.name.clear();
                    self.name.extend_from_slice(entry.name());
                    self.buckets.clear();
                    for bucket in entry.buckets() {
                        let (t_s, value) = bucket?;
                        self.buckets.push((t_s * 1_000, value));
                    }
                    return Ok(true);
                }
            }
        }
    }
}
