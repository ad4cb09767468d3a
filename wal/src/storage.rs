//! The file operations the WAL needs, behind a trait, and an in-memory double for crash tests.
//!
//! A `Storage` is one shard's directory. The writer only ever writes whole 4096-byte blocks at
//! block-aligned offsets (direct I/O needs it, and it is what makes torn writes containable).

use std::cell::RefCell;
use std::collections::{BTreeMap, HashMap};
use std::io;
use std::rc::Rc;

use crate::limits::BLOCK_BYTES;
use crate::recovery::RecoverySource;

/// One shard directory's files. Futures need not be `Send`: a shard's log lives on one glommio
/// executor thread.
#[allow(async_fn_in_trait)]
pub trait Storage {
    /// An open file.
    type File: Clone;

    /// Creates `name` (replacing any file of that name) `size_bytes` long, allocated on disk and
    /// reading as zeros. Fails with ENOSPC when the space is not there. The new directory entry is
    /// durable after `sync_dir`. Real storage writes the zeros too (see `DmaStorage::create`), so
    /// that later writes into the file change no metadata and their fdatasync has no journal to
    /// commit.
    async fn create(&self, name: &str, size_bytes: u64) -> io::Result<Self::File>;
    /// Opens an existing file for writing.
    async fn open(&self, name: &str) -> io::Result<Self::File>;
    /// Writes `bytes` at `offset`; both multiples of `BLOCK_BYTES`. Durable after `sync`.
    async fn write_at(&self, file: &Self::File, offset: u64, bytes: &[u8]) -> io::Result<()>;
    /// fdatasync: every write to `file` so far is durable when this returns Ok.
    async fn sync(&self, file: &Self::File) -> io::Result<()>;
    /// fsync of the directory: every create, rename and remove so far is durable when this returns Ok.
    async fn sync_dir(&self) -> io::Result<()>;
    async fn rename(&self, from: &str, to: &str) -> io::Result<()>;
    async fn remove(&self, name: &str) -> io::Result<()>;
    async fn list(&self) -> io::Result<Vec<String>>;
    async fn read_all(&self, name: &str) -> io::Result<Vec<u8>>;
}

/// An in-memory `Storage` that models what survives a crash, after redb's test double.
///
/// Every file has a WRITTEN image (what the process sees) and a DURABLE image (what a crash keeps):
/// a write changes WRITTEN, `sync` copies the file's unsynced writes to DURABLE. The directory has a
/// WRITTEN and a DURABLE view too: create, rename and remove change WRITTEN, `sync_dir` makes them
/// durable. `crash` throws away everything that was not durable.
///
/// Faults: the Nth write or sync from now fails with EIO (`fail_write`, `fail_sync`); `set_capacity`
/// makes `create` fail with ENOSPC beyond a total size; `crash_at(n)` makes the n-th mutating
/// operation from now the moment of the crash (it fails, and so does everything after it) — the
/// crash-point tests step n through every write and sync of a workload. With a seed, `crash` also
/// keeps a random subset of the 4096-byte blocks of unsynced writes and a random prefix of unsynced
/// directory operations, modelling torn writes and a file system that persists metadata early.
///
/// Cloning gives another handle to the same files.
#[derive(Debug, Clone, Default)]
pub struct MemStorage {
    inner: Rc<RefCell<MemInner>>,
}

#[derive(Debug, Default)]
struct MemInode {
    written: Vec<u8>,
    durable: Vec<u8>,
    /// (offset, len) of writes since the last sync.
    unsynced: Vec<(u64, u64)>,
}

#[derive(Debug, Clone)]
enum DirOp {
    Link(String, u64),
    Unlink(String),
    Rename(String, String),
}

/// How many operations of each kind a `MemStorage` has done (including failed ones).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct OpCounts {
    pub creates: u64,
    pub writes: u64,
    pub syncs: u64,
    pub sync_dirs: u64,
    pub renames: u64,
    pub removes: u64,
}

#[derive(Debug, Default)]
struct MemInner {
    counts: OpCounts,
    inodes: HashMap<u64, MemInode>,
    inode_next: u64,
    dir: BTreeMap<String, u64>,
    dir_durable: BTreeMap<String, u64>,
    dir_unsynced: Vec<DirOp>,
    capacity_bytes: Option<u64>,
    ops: u64,
    crash_at_op: Option<u64>,
    crashed: bool,
    writes: u64,
    syncs: u64,
    fail_write_at: Option<u64>,
    fail_sync_at: Option<u64>,
}

/// An injected I/O error, as the kernel reports a failed write or fsync.
fn eio() -> io::Error {
    io::Error::from_raw_os_error(libc::EIO)
}

fn crashed() -> io::Error {
    io::Error::new(io::ErrorKind::BrokenPipe, "the machine crashed (MemStorage::crash_at)")
}

fn not_found(name: &str) -> io::Error {
    io::Error::new(io::ErrorKind::NotFound, format!("{name}: no such file"))
}

impl MemInner {
    /// Counts a mutating op; `Err` if the machine is down. `Ok(true)` if this op is the crash point
    /// (it takes effect in the WRITTEN state, then the machine goes down).
    fn begin(&mut self) -> io::Result<bool> {
        if self.crashed {
            return Err(crashed());
        }
        self.ops += 1;
        if self.crash_at_op == Some(self.ops) {
            self.crashed = true;
            return Ok(true);
        }
        Ok(false)
    }

    fn used_bytes(&self) -> u64 {
        self.dir.values().map(|id| self.inodes[id].written.len() as u64).sum()
    }

    fn inode(&mut self, id: u64) -> io::Result<&mut MemInode> {
        self.inodes.get_mut(&id).ok_or_else(|| not_found("inode"))
    }
}

/// A small deterministic generator for torn-write choices (splitmix64).
struct SplitMix(u64);

impl SplitMix {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
}

impl MemStorage {
    pub fn new() -> MemStorage {
        MemStorage::default()
    }

    /// The `n`-th write from now (1-based) fails with EIO and changes nothing.
    pub fn fail_write(&self, n: u64) {
        let mut inner = self.inner.borrow_mut();
        inner.fail_write_at = Some(inner.writes + n);
    }

    /// The `n`-th sync or directory sync from now (1-based) fails with EIO and makes nothing durable.
    pub fn fail_sync(&self, n: u64) {
        let mut inner = self.inner.borrow_mut();
        inner.fail_sync_at = Some(inner.syncs + n);
    }

    /// Cancels pending `fail_write` / `fail_sync` faults.
    pub fn clear_faults(&self) {
        let mut inner = self.inner.borrow_mut();
        inner.fail_write_at = None;
        inner.fail_sync_at = None;
    }

    /// Total bytes the files may take; `create` beyond it fails with ENOSPC. `None`: unlimited.
    pub fn set_capacity(&self, capacity_bytes: Option<u64>) {
        self.inner.borrow_mut().capacity_bytes = capacity_bytes;
    }

    /// Bytes the files take now.
    pub fn used_bytes(&self) -> u64 {
        self.inner.borrow().used_bytes()
    }

    /// The `n`-th mutating operation from now (1-based) is the moment of the crash: it fails, as does
    /// everything after it, until `crash` is called.
    pub fn crash_at(&self, n: u64) {
        let mut inner = self.inner.borrow_mut();
        inner.crash_at_op = Some(inner.ops + n);
    }

    /// Mutating operations (create, write, sync, sync_dir, rename, remove) so far.
    pub fn ops(&self) -> u64 {
        self.inner.borrow().ops
    }

    /// Operations so far, by kind.
    pub fn op_counts(&self) -> OpCounts {
        self.inner.borrow().counts
    }

    /// Whether the crash point set by `crash_at` has been reached.
    pub fn has_crashed(&self) -> bool {
        self.inner.borrow().crashed
    }

    /// Power loss: keeps only what was durable (with `torn_seed`, also a random subset of unsynced
    /// blocks and a random prefix of unsynced directory operations), then "reboots": every image is
    /// what the disk holds, faults are cleared, and the storage works again.
    pub fn crash(&self, torn_seed: Option<u64>) {
        let mut inner = self.inner.borrow_mut();
        let mut rng = torn_seed.map(SplitMix);
        let mut dir = inner.dir_durable.clone();
        if let Some(rng) = rng.as_mut() {
            let ops = std::mem::take(&mut inner.dir_unsynced);
            let keep = if ops.is_empty() {
                0
            } else {
                (rng.next() % (ops.len() as u64 + 1)) as usize
            };
            for op in &ops[..keep] {
                apply_dir_op(&mut dir, op);
            }
        }
        let MemInner { inodes, .. } = &mut *inner;
        for (id, inode) in inodes.iter_mut() {
            if let Some(rng) = rng.as_mut() {
                if dir.values().any(|v| v == id) {
                    for &(offset, len) in &inode.unsynced {
                        let mut block = offset;
                        while block < offset + len {
                            if rng.next() & 1 == 1 {
                                let end = (block + BLOCK_BYTES).min(offset + len) as usize;
                                if inode.durable.len() < end {
                                    inode.durable.resize(end, 0);
                                }
                                let (b, e) = (block as usize, end);
                                if inode.written.len() >= e {
                                    inode.durable[b..e].copy_from_slice(&inode.written[b..e]);
                                }
                            }
                            block += BLOCK_BYTES;
                        }
                    }
                }
            }
            inode.written = inode.durable.clone();
            inode.unsynced.clear();
        }
        let live: Vec<u64> = dir.values().copied().collect();
        inodes.retain(|id, _| live.contains(id));
        inner.dir = dir.clone();
        inner.dir_durable = dir;
        inner.dir_unsynced.clear();
        inner.crash_at_op = None;
        inner.crashed = false;
        inner.fail_write_at = None;
        inner.fail_sync_at = None;
    }

    /// The names in the (written) directory.
    pub fn names(&self) -> Vec<String> {
        self.inner.borrow().dir.keys().cloned().collect()
    }

    /// The written image of a file.
    pub fn image(&self, name: &str) -> Option<Vec<u8>> {
        let inner = self.inner.borrow();
        inner.dir.get(name).map(|id| inner.inodes[id].written.clone())
    }

    /// A storage holding these files, durably (tests load damaged images with it).
    pub fn from_images(files: &BTreeMap<String, Vec<u8>>) -> MemStorage {
        let storage = MemStorage::new();
        {
            let mut inner = storage.inner.borrow_mut();
            for (name, bytes) in files {
                inner.inode_next += 1;
                let id = inner.inode_next;
                inner.inodes.insert(
                    id,
                    MemInode {
                        written: bytes.clone(),
                        durable: bytes.clone(),
                        unsynced: Vec::new(),
                    },
                );
                inner.dir.insert(name.clone(), id);
            }
            inner.dir_durable = inner.dir.clone();
        }
        storage
    }

    fn check_block_aligned(offset: u64, len: usize) -> io::Result<()> {
        if !offset.is_multiple_of(BLOCK_BYTES) || !(len as u64).is_multiple_of(BLOCK_BYTES) {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "unaligned write (direct I/O needs 4096-byte blocks)",
            ));
        }
        Ok(())
    }
}

fn apply_dir_op(dir: &mut BTreeMap<String, u64>, op: &DirOp) {
    match op {
        DirOp::Link(name, id) => {
            dir.insert(name.clone(), *id);
        }
        DirOp::Unlink(name) => {
            dir.remove(name);
        }
        DirOp::Rename(from, to) => {
            if let Some(id) = dir.remove(from) {
                dir.insert(to.clone(), id);
            }
        }
    }
}

impl Storage for MemStorage {
    type File = u64;

    async fn create(&self, name: &str, size_bytes: u64) -> io::Result<u64> {
        let mut inner = self.inner.borrow_mut();
        let crash = inner.begin()?;
        inner.counts.creates += 1;
        let replaced = inner
            .dir
            .get(name)
            .map(|id| inner.inodes[id].written.len() as u64)
            .unwrap_or(0);
        if let Some(capacity) = inner.capacity_bytes {
            if inner.used_bytes() - replaced + size_bytes > capacity {
                return Err(io::Error::from_raw_os_error(libc::ENOSPC));
            }
        }
        inner.inode_next += 1;
        let id = inner.inode_next;
        inner.inodes.insert(
            id,
            MemInode {
                written: vec![0; size_bytes as usize],
                durable: Vec::new(),
                unsynced: Vec::new(),
            },
        );
        inner
            .inodes
            .get_mut(&id)
            .expect("just inserted")
            .unsynced
            .push((0, size_bytes));
        inner.dir.insert(name.to_string(), id);
        inner.dir_unsynced.push(DirOp::Link(name.to_string(), id));
        if crash {
            return Err(crashed());
        }
        Ok(id)
    }

    async fn open(&self, name: &str) -> io::Result<u64> {
        let inner = self.inner.borrow();
        if inner.crashed {
            return Err(crashed());
        }
        inner.dir.get(name).copied().ok_or_else(|| not_found(name))
    }

    async fn write_at(&self, file: &u64, offset: u64, bytes: &[u8]) -> io::Result<()> {
        Self::check_block_aligned(offset, bytes.len())?;
        let mut inner = self.inner.borrow_mut();
        let crash = inner.begin()?;
        inner.counts.writes += 1;
        inner.writes += 1;
        if inner.fail_write_at == Some(inner.writes) {
            return Err(eio());
        }
        let inode = inner.inode(*file)?;
        let end = offset as usize + bytes.len();
        if inode.written.len() < end {
            inode.written.resize(end, 0);
        }
        inode.written[offset as usize..end].copy_from_slice(bytes);
        inode.unsynced.push((offset, bytes.len() as u64));
        if crash {
            return Err(crashed());
        }
        Ok(())
    }

    async fn sync(&self, file: &u64) -> io::Result<()> {
        let mut inner = self.inner.borrow_mut();
        if inner.begin()? {
            return Err(crashed());
        }
        inner.counts.syncs += 1;
        inner.syncs += 1;
        if inner.fail_sync_at == Some(inner.syncs) {
            return Err(eio());
        }
        let inode = inner.inode(*file)?;
        inode.durable.resize(inode.written.len(), 0);
        for (offset, len) in std::mem::take(&mut inode.unsynced) {
            let (b, e) = (offset as usize, (offset + len) as usize);
            inode.durable[b..e].copy_from_slice(&inode.written[b..e]);
        }
        Ok(())
    }

    async fn sync_dir(&self) -> io::Result<()> {
        let mut inner = self.inner.borrow_mut();
        if inner.begin()? {
            return Err(crashed());
        }
        inner.counts.sync_dirs += 1;
        inner.syncs += 1;
        if inner.fail_sync_at == Some(inner.syncs) {
            return Err(eio());
        }
        inner.dir_durable = inner.dir.clone();
        inner.dir_unsynced.clear();
        Ok(())
    }

    async fn rename(&self, from: &str, to: &str) -> io::Result<()> {
        let mut inner = self.inner.borrow_mut();
        let crash = inner.begin()?;
        inner.counts.renames += 1;
        let id = inner.dir.remove(from).ok_or_else(|| not_found(from))?;
        inner.dir.insert(to.to_string(), id);
        inner.dir_unsynced.push(DirOp::Rename(from.to_string(), to.to_string()));
        if crash {
            return Err(crashed());
        }
        Ok(())
    }

    async fn remove(&self, name: &str) -> io::Result<()> {
        let mut inner = self.inner.borrow_mut();
        let crash = inner.begin()?;
        inner.counts.removes += 1;
        inner.dir.remove(name).ok_or_else(|| not_found(name))?;
        inner.dir_unsynced.push(DirOp::Unlink(name.to_string()));
        if crash {
            return Err(crashed());
        }
        Ok(())
    }

    async fn list(&self) -> io::Result<Vec<String>> {
        if self.inner.borrow().crashed {
            return Err(crashed());
        }
        Ok(self.names())
    }

    async fn read_all(&self, name: &str) -> io::Result<Vec<u8>> {
        if self.inner.borrow().crashed {
            return Err(crashed());
        }
        self.image(name).ok_or_else(|| not_found(name))
    }
}

impl RecoverySource for MemStorage {
    fn list(&self) -> io::Result<Vec<String>> {
        Ok(self.names())
    }

    fn read(&self, name: &str) -> io::Result<Vec<u8>> {
        self.image(name).ok_or_else(|| not_found(name))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures_lite::future::block_on;

    fn block(byte: u8) -> Vec<u8> {
        vec![byte; BLOCK_BYTES as usize]
    }

    #[test]
    fn unsynced_writes_and_unsynced_names_are_lost_in_a_crash() {
        let s = MemStorage::new();
        block_on(async {
            let f = s.create("a", 2 * BLOCK_BYTES).await.unwrap();
            s.sync(&f).await.unwrap();
            s.sync_dir().await.unwrap();
            s.write_at(&f, 0, &block(1)).await.unwrap();
            s.sync(&f).await.unwrap();
            s.write_at(&f, BLOCK_BYTES, &block(2)).await.unwrap();
            s.create("b", BLOCK_BYTES).await.unwrap();
            s.rename("a", "c").await.unwrap();
        });
        s.crash(None);
        assert_eq!(s.names(), ["a"]);
        let image = s.image("a").unwrap();
        assert_eq!(&image[..BLOCK_BYTES as usize], block(1).as_slice());
        assert!(
            image[BLOCK_BYTES as usize..].iter().all(|&b| b == 0),
            "the unsynced block is lost"
        );
    }

    #[test]
    fn injected_faults_fire_once_at_the_chosen_call() {
        let s = MemStorage::new();
        block_on(async {
            let f = s.create("a", BLOCK_BYTES).await.unwrap();
            s.fail_write(2);
            s.fail_sync(1);
            assert!(s.write_at(&f, 0, &block(1)).await.is_ok());
            assert_eq!(
                s.write_at(&f, 0, &block(2)).await.unwrap_err().raw_os_error(),
                Some(libc::EIO)
            );
            assert_eq!(s.sync(&f).await.unwrap_err().raw_os_error(), Some(libc::EIO));
            assert!(s.sync(&f).await.is_ok());
            s.set_capacity(Some(2 * BLOCK_BYTES));
            assert!(s.create("b", BLOCK_BYTES).await.is_ok());
            assert_eq!(
                s.create("c", BLOCK_BYTES).await.unwrap_err().raw_os_error(),
                Some(libc::ENOSPC)
            );
            assert!(
                s.write_at(&f, 1, &block(1)).await.is_err(),
                "unaligned writes are refused"
            );
        });
    }

    #[test]
    fn crash_point_fails_everything_after_it_and_torn_mode_keeps_some_blocks() {
        let mut kept = [false; 2];
        for seed in 0..32 {
            let s = MemStorage::new();
            block_on(async {
                let f = s.create("a", 8 * BLOCK_BYTES).await.unwrap();
                s.sync(&f).await.unwrap();
                s.sync_dir().await.unwrap();
                s.crash_at(1);
                let mut data = block(7);
                data.extend(block(8));
                assert!(s.write_at(&f, 0, &data).await.is_err());
                assert!(s.sync(&f).await.is_err());
                assert!(s.has_crashed());
            });
            s.crash(Some(seed));
            let image = s.image("a").unwrap();
            for (i, byte) in [7u8, 8].into_iter().enumerate() {
                let b = &image[i * BLOCK_BYTES as usize..(i + 1) * BLOCK_BYTES as usize];
                assert!(b.iter().all(|&x| x == byte) || b.iter().all(|&x| x == 0));
                kept[i] |= b[0] == byte;
            }
        }
        assert_eq!(kept, [true, true], "some seeds keep each block of the torn write");
    }
}
