//! The per-shard log writer: segments, group commit, rotation, snapshots, retention, poisoning.
//!
//! One `Wal` per shard, on that shard's executor. Its methods take `&self` so the shard can append
//! (synchronously, in memory) while a commit's write+fdatasync is in flight: every borrow of the
//! inner state ends before an `.await`.

use std::cell::{Cell, RefCell};
use std::hash::{BuildHasher, Hasher};
use std::io;

use crate::ack_mark::{AckMark, ACK_MARK_BYTES, ACK_MARK_FILE_NAME};
use crate::batch::{BatchEncoder, Room, SealedBatch, SegmentSlot};
use crate::error::WalError;
use crate::group_commit::GroupCommit;
use crate::limits::{
    BLOCK_BYTES, RETENTION_MS_DEFAULT, SEGMENT_BYTES_DEFAULT, SEGMENT_BYTES_MAX, SEGMENT_BYTES_MIN,
    SEGMENT_HEADER_BYTES, SNAPSHOTS_KEPT, SNAPSHOT_CHUNK_BYTES,
};
use crate::record::{LogRecord, LogSink};
use crate::recovery::Recovered;
use crate::segment::{segment_file_name, SegmentHeader, PREALLOC_FILE_NAME};
use crate::snapshot::{snapshot_file_name, snapshot_tmp_file_name, SnapshotHeader, SNAPSHOT_BODY_OFFSET};
use crate::storage::Storage;

/// How a shard's log is set up.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WalConfig {
    pub shard: u16,
    /// Size of new segments (a multiple of 4096, at least `SEGMENT_BYTES_MIN`).
    pub segment_bytes: u64,
    /// How long segments are kept after their newest record, even when a snapshot covers them.
    pub retention_ms: u64,
    /// Seed for segment salts; `None` draws one from the OS. Tests fix it for reproducible files.
    pub salt_seed: Option<u64>,
}

impl WalConfig {
    pub fn new(shard: u16) -> WalConfig {
        WalConfig {
            shard,
            segment_bytes: SEGMENT_BYTES_DEFAULT,
            retention_ms: RETENTION_MS_DEFAULT,
            salt_seed: None,
        }
    }

    pub fn check(&self) -> Result<(), WalError> {
        if !self.segment_bytes.is_multiple_of(BLOCK_BYTES)
            || !(SEGMENT_BYTES_MIN..=SEGMENT_BYTES_MAX).contains(&self.segment_bytes)
        {
            return Err(WalError::Config(format!(
                "segment_bytes {} must be a multiple of {BLOCK_BYTES} in {SEGMENT_BYTES_MIN}..={SEGMENT_BYTES_MAX}",
                self.segment_bytes
            )));
        }
        Ok(())
    }
}

#[derive(Debug, Clone)]
struct SegmentMeta {
    file: String,
    first_lsn: u64,
    time_first_ms: u64,
    time_last_ms: Option<u64>,
}

#[derive(Debug)]
struct State<F> {
    /// The segment committed batches go to (`None` before the first).
    current: Option<(F, String)>,
    /// The preallocated next segment, named `PREALLOC_FILE_NAME`; its salt was granted to the encoder.
    spare: Option<F>,
    /// Segments on disk, oldest first; the last is `current`.
    segments: Vec<SegmentMeta>,
    /// Lsns of the snapshots on disk, oldest first.
    snapshots: Vec<u64>,
    disk_full: bool,
    salt_state: u64,
    /// The acknowledged mark's file (`None` until it could be created, and after an install).
    mark: Option<F>,
    /// The sequence of the last mark written (the next write is one more) and its lsn.
    mark_sequence: u64,
    lsn_marked: u64,
    /// The block a mark write is encoded in, kept between writes.
    mark_block: Vec<u8>,
}

/// Resets a flag when a call ends, however it ends.
struct Busy<'a>(&'a Cell<bool>);

impl<'a> Busy<'a> {
    fn enter(flag: &'a Cell<bool>, what: &str) -> Busy<'a> {
        assert!(!flag.get(), "{what}: another call of this kind is in flight");
        flag.set(true);
        Busy(flag)
    }
}

impl Drop for Busy<'_> {
    fn drop(&mut self) {
        self.0.set(false);
    }
}

/// One shard's write-ahead log.
///
/// Use: `append` (or the `LogSink` impl on `&Wal`) for each record as the engine applies ops;
/// `commit_batch` from the group-commit loop, one at a time, acking the ops up to the lsn it returns;
/// `maintain` from a task of its own (preallocates the next segment, applies retention; it may run
/// while a commit is in flight, so a slow preallocation never holds acks back); `write_ack_mark` from
/// a task of its own after commits (it records the durable lsn for recovery to check against, off
/// the ack path); `write_snapshot` with the engine's state as of a durable lsn. Before applying an
/// op, check `room()`.
#[derive(Debug)]
pub struct Wal<S: Storage> {
    storage: S,
    config: WalConfig,
    encoder: RefCell<BatchEncoder>,
    commit: RefCell<GroupCommit>,
    state: RefCell<State<S::File>>,
    poisoned: Cell<bool>,
    committing: Cell<bool>,
    maintaining: Cell<bool>,
    /// A commit is turning the spare into the next segment (from taking it to the rename): the
    /// spare's file name is in use, so maintenance must not create a new spare meanwhile.
    rotating: Cell<bool>,
    snapshotting: Cell<bool>,
    marking: Cell<bool>,
    /// Writes are held back (see `hold_writes`).
    held: Cell<bool>,
}

fn is_enospc(e: &io::Error) -> bool {
    e.raw_os_error() == Some(libc::ENOSPC) || e.kind() == io::ErrorKind::StorageFull
}

impl<S: Storage> Wal<S> {
    /// Opens the log where recovery left it: removes stale files, zeroes a torn tail, and
    /// preallocates the next segment (if that fails for lack of space, the log opens in the disk-full
    /// state; see `room`).
    pub async fn open(storage: S, config: WalConfig, recovered: &Recovered) -> Result<Wal<S>, WalError> {
        config.check()?;
        let mut dir_changed = false;
        for name in recovered
            .stale_files
            .iter()
            .map(String::as_str)
            .chain([PREALLOC_FILE_NAME])
        {
            match storage.remove(name).await {
                Ok(()) => dir_changed = true,
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => return Err(WalError::io("remove", name, e)),
            }
        }
        if dir_changed {
            storage
                .sync_dir()
                .await
                .map_err(|e| WalError::io("sync_dir", "shard directory", e))?;
        }
        let append = &recovered.append;
        let mut current = None;
        let mut slot = None;
        let (mut dict_len, mut time_last_ms) = (0, 0);
        if let Some(seg) = &append.segment {
            let file = storage
                .open(&seg.file)
                .await
                .map_err(|e| WalError::io("open", &seg.file, e))?;
            if seg.zero_to > seg.offset {
                zero_range(&storage, &file, &seg.file, seg.offset, seg.zero_to).await?;
            }
            slot = Some(SegmentSlot {
                first_lsn: seg.first_lsn,
                salt: seg.salt,
                segment_bytes: seg.segment_bytes,
                offset: seg.offset,
                fresh: false,
            });
            dict_len = seg.dict_len;
            time_last_ms = seg.time_last_ms;
            current = Some((file, seg.file.clone()));
        }
        let lsn_last = append.lsn_next - 1;
        let segments = recovered
            .segments
            .iter()
            .map(|s| SegmentMeta {
                file: s.file.clone(),
                first_lsn: s.first_lsn,
                time_first_ms: s.time_first_ms,
                time_last_ms: s.time_last_ms,
            })
            .collect();
        let salt_state = match config.salt_seed {
            Some(seed) => seed ^ lsn_last.wrapping_mul(0x2545_f491_4f6c_dd1d),
            None => {
                let mut h = std::collections::hash_map::RandomState::new().build_hasher();
                h.write_u64(lsn_last);
                h.finish()
            }
        };
        let wal = Wal {
            encoder: RefCell::new(BatchEncoder::new(
                slot,
                dict_len,
                lsn_last,
                time_last_ms,
                config.segment_bytes,
            )),
            commit: RefCell::new(GroupCommit::new(lsn_last)),
            state: RefCell::new(State {
                current,
                spare: None,
                segments,
                snapshots: recovered.snapshot_lsns.clone(),
                disk_full: false,
                salt_state,
                mark: None,
                mark_sequence: recovered.ack_mark.map_or(0, |m| m.sequence),
                lsn_marked: recovered.lsn_acked,
                mark_block: vec![0u8; BLOCK_BYTES as usize],
            }),
            storage,
            config,
            poisoned: Cell::new(false),
            committing: Cell::new(false),
            maintaining: Cell::new(false),
            rotating: Cell::new(false),
            snapshotting: Cell::new(false),
            marking: Cell::new(false),
            held: Cell::new(false),
        };
        assert!(
            recovered.lsn_acked <= lsn_last,
            "recovery refuses a log that ends below its mark"
        );
        // Continue a readable mark; replace one that has no valid copy (its sequence restarts).
        if recovered.ack_mark_exists && recovered.ack_mark.is_some() {
            let file = wal
                .storage
                .open(ACK_MARK_FILE_NAME)
                .await
                .map_err(|e| WalError::io("open", ACK_MARK_FILE_NAME, e))?;
            wal.state.borrow_mut().mark = Some(file);
        }
        match wal.prepare_ack_mark().await {
            Ok(()) | Err(WalError::DiskFull) => {}
            Err(e) => return Err(e),
        }
        match wal.prepare_next_segment().await {
            Ok(()) | Err(WalError::DiskFull) => Ok(wal),
            Err(e) => Err(e),
        }
    }

    pub fn config(&self) -> &WalConfig {
        &self.config
    }

    /// Whether an op may be applied now (see `Room`). The node checks this before applying each op.
    /// `DiskFull` while writes are held (`hold_writes`).
    pub fn room(&self) -> Room {
        if self.held.get() {
            return Room::DiskFull;
        }
        self.encoder.borrow().room()
    }

    /// `room` for records of up to `bytes` in all, e.g. everything one engine tick may log.
    pub fn room_for(&self, bytes: u64) -> Room {
        if self.held.get() {
            return Room::DiskFull;
        }
        self.encoder.borrow().room_for(bytes)
    }

    /// Holds every new write back (`room` says `DiskFull` and `is_disk_full` is true) while records
    /// that must be logged first wait for space: recovery's split-counter merges, on a restart
    /// with a full disk. Their writer asks `room_held` and appends them, then releases the hold.
    pub fn hold_writes(&self, held: bool) {
        self.held.set(held);
    }

    /// Whether writes are held back (`hold_writes`).
    pub fn is_held(&self) -> bool {
        self.held.get()
    }

    /// What `room` would say without the hold: for the records the hold waits for.
    pub fn room_held(&self) -> Room {
        self.encoder.borrow().room()
    }

    /// True when a write or sync failed: nothing more is written or acknowledged; restart to recover.
    pub fn is_poisoned(&self) -> bool {
        self.poisoned.get()
    }

    /// True when the last attempt to preallocate the next segment ran out of space, or while
    /// writes are held for lack of space (`hold_writes`).
    pub fn is_disk_full(&self) -> bool {
        self.held.get() || self.state.borrow().disk_full
    }

    /// Bytes in the open batch; the caller commits before `room()` says `SealFirst`.
    pub fn buffered_bytes(&self) -> u64 {
        self.encoder.borrow().buffered_bytes()
    }

    /// The last lsn appended.
    pub fn lsn_appended(&self) -> u64 {
        self.commit.borrow().lsn_appended()
    }

    /// The last lsn on disk: every op up to it may be acknowledged.
    pub fn lsn_durable(&self) -> u64 {
        self.commit.borrow().lsn_durable()
    }

    /// Whether a commit, maintenance or snapshot is running (see `install_snapshot`).
    pub fn is_busy(&self) -> bool {
        self.committing.get()
            || self.maintaining.get()
            || self.snapshotting.get()
            || self.rotating.get()
            || self.marking.get()
    }

    /// The lsn the acknowledged mark on disk holds (0 without one).
    pub fn lsn_marked(&self) -> u64 {
        self.state.borrow().lsn_marked
    }

    /// The segment files on disk, oldest first.
    pub fn segment_files(&self) -> Vec<String> {
        self.state.borrow().segments.iter().map(|s| s.file.clone()).collect()
    }

    /// Buffers one record (the engine's `LogSink` calls this). `lsn` is the previous one plus one.
    /// Dropped when poisoned: it could never be made durable.
    pub fn append(&self, lsn: u64, record: &LogRecord<'_>) {
        if self.poisoned.get() {
            return;
        }
        self.encoder.borrow_mut().append(lsn, record);
        self.commit.borrow_mut().appended(lsn);
    }

    fn poison(&self, e: WalError) -> WalError {
        self.poisoned.set(true);
        e
    }

    /// Writes everything appended so far as one batch and fdatasyncs it. Returns the lsn now durable
    /// (unchanged if nothing was buffered). At most one commit at a time. After a failure the log is
    /// poisoned: this and every later call returns an error, and no fsync is retried.
    pub async fn commit_batch(&self, time_ms: u64) -> Result<u64, WalError> {
        if self.poisoned.get() {
            return Err(WalError::Poisoned);
        }
        let _busy = Busy::enter(&self.committing, "commit_batch");
        let Some(sealed) = self.encoder.borrow_mut().seal(time_ms) else {
            return Ok(self.lsn_durable());
        };
        let range = self
            .commit
            .borrow_mut()
            .start()
            .expect("a sealed batch means records to commit");
        assert_eq!(*range.start(), sealed.first_lsn);
        assert_eq!(*range.end(), sealed.last_lsn);
        let result = self.write_batch(&sealed).await;
        // Maintenance runs beside commits; if it poisoned the log meanwhile, ack nothing more, even
        // this batch whose own sync succeeded (not acking a durable record is always safe).
        let result = match result {
            Ok(()) if self.poisoned.get() => Err(WalError::Poisoned),
            other => other,
        };
        let synced = result.is_ok();
        let lsn_durable = self.commit.borrow_mut().done(synced);
        match result {
            Ok(()) => {
                assert_eq!(lsn_durable, sealed.last_lsn);
                let mut state = self.state.borrow_mut();
                if let Some(last) = state.segments.last_mut() {
                    last.time_last_ms = Some(sealed.time_ms);
                }
                drop(state);
                self.encoder.borrow_mut().recycle(sealed);
                Ok(lsn_durable)
            }
            Err(e) => Err(self.poison(e)),
        }
    }

    /// Writes and syncs one sealed batch; creates its segment first if it starts one. Returns only
    /// after the fdatasync (and, for a new segment, the rename and directory fsync) succeeded.
    async fn write_batch(&self, sealed: &SealedBatch) -> Result<(), WalError> {
        let s = &self.storage;
        if sealed.starts_segment {
            let _rotating = Busy::enter(&self.rotating, "rotation");
            let file = self
                .state
                .borrow_mut()
                .spare
                .take()
                .expect("a granted rotation has a preallocated segment");
            let name = segment_file_name(sealed.segment_first_lsn);
            let mut header = vec![0u8; SEGMENT_HEADER_BYTES as usize];
            SegmentHeader {
                shard: self.config.shard,
                first_lsn: sealed.segment_first_lsn,
                salt: sealed.segment_salt,
                time_ms: sealed.time_ms,
                segment_bytes: sealed.segment_bytes,
            }
            .encode(&mut header);
            assert_eq!(sealed.offset, SEGMENT_HEADER_BYTES);
            s.write_at(&file, 0, &header)
                .await
                .map_err(|e| WalError::io("write", PREALLOC_FILE_NAME, e))?;
            s.write_at(&file, sealed.offset, sealed.bytes())
                .await
                .map_err(|e| WalError::io("write", PREALLOC_FILE_NAME, e))?;
            s.sync(&file)
                .await
                .map_err(|e| WalError::io("fdatasync", PREALLOC_FILE_NAME, e))?;
            s.rename(PREALLOC_FILE_NAME, &name)
                .await
                .map_err(|e| WalError::io("rename", &name, e))?;
            s.sync_dir().await.map_err(|e| WalError::io("sync_dir", &name, e))?;
            let mut state = self.state.borrow_mut();
            state.segments.push(SegmentMeta {
                file: name.clone(),
                first_lsn: sealed.segment_first_lsn,
                time_first_ms: sealed.time_ms,
                time_last_ms: None,
            });
            state.current = Some((file, name));
            return Ok(());
        }
        let (file, name) = self
            .state
            .borrow()
            .current
            .clone()
            .expect("a batch that starts no segment has one");
        assert_eq!(
            self.state.borrow().segments.last().map(|s| s.first_lsn),
            Some(sealed.segment_first_lsn),
            "the batch goes to the current segment"
        );
        s.write_at(&file, sealed.offset, sealed.bytes())
            .await
            .map_err(|e| WalError::io("write", &name, e))?;
        s.sync(&file).await.map_err(|e| WalError::io("fdatasync", &name, e))?;
        Ok(())
    }

    /// Background upkeep: preallocates the next segment if there is none (returns `DiskFull` when
    /// the space is not there; not fatal, try again later), then deletes segments past retention.
    ///
    /// May run while `commit_batch` is in flight: it works only on the spare file (which no commit
    /// touches until it is granted, at the very end) and on segments older than the current one.
    /// Preallocation writes the whole segment (see `Storage::create`), which takes tens of ms for
    /// 64 MiB; commits carry on meanwhile.
    pub async fn maintain(&self, now_ms: u64) -> Result<(), WalError> {
        if self.poisoned.get() {
            return Err(WalError::Poisoned);
        }
        let _busy = Busy::enter(&self.maintaining, "maintain");
        let prepared = self.prepare_next_segment().await;
        // Without space for the mark's two blocks the log runs unmarked (recovery's bound stays
        // where it was) until a later call finds the space.
        match self.prepare_ack_mark().await {
            Ok(()) | Err(WalError::DiskFull) => {}
            Err(e) => return Err(e),
        }
        self.apply_retention(now_ms).await?;
        prepared
    }

    /// Creates the acknowledged mark's file if there is none: preallocated and zero-filled like a
    /// segment (so a mark write changes no metadata), synced, and its name made durable.
    async fn prepare_ack_mark(&self) -> Result<(), WalError> {
        // An install in flight (`rotating`) replaces the log: a mark created now could be written
        // with the lsn of the log being replaced.
        if self.state.borrow().mark.is_some() || self.marking.get() || self.rotating.get() {
            return Ok(());
        }
        let s = &self.storage;
        let file = match s.create(ACK_MARK_FILE_NAME, ACK_MARK_BYTES).await {
            Ok(file) => file,
            Err(e) => {
                let _ = s.remove(ACK_MARK_FILE_NAME).await;
                return Err(if is_enospc(&e) {
                    WalError::DiskFull
                } else {
                    WalError::io("create", ACK_MARK_FILE_NAME, e)
                });
            }
        };
        let synced = match s.sync(&file).await {
            Ok(()) => s.sync_dir().await,
            Err(e) => Err(e),
        };
        if let Err(e) = synced {
            return Err(self.poison(WalError::io("fdatasync", ACK_MARK_FILE_NAME, e)));
        }
        let mut state = self.state.borrow_mut();
        state.mark = Some(file);
        state.mark_sequence = 0;
        Ok(())
    }

    /// Records the durable lsn in the acknowledged mark: writes the next copy (alternating between
    /// the file's two blocks) and fdatasyncs it. Returns the lsn the mark now holds. Does nothing
    /// when the mark already holds the durable lsn or there is no mark file yet.
    ///
    /// It writes another file than the commits, so it runs beside them and never delays an ack;
    /// one at a time (a torn write then damages only the copy being written). The mark only ever
    /// names an lsn that was durable before it was written, so recovery may treat a log that ends
    /// below it as damage. A failed write or sync poisons the log, like a failed commit.
    pub async fn write_ack_mark(&self, time_ms: u64) -> Result<u64, WalError> {
        if self.poisoned.get() {
            return Err(WalError::Poisoned);
        }
        let lsn = self.lsn_durable();
        let (file, mark, mut block) = {
            let mut state = self.state.borrow_mut();
            let Some(file) = state.mark.clone() else {
                return Ok(state.lsn_marked);
            };
            if lsn <= state.lsn_marked {
                return Ok(state.lsn_marked);
            }
            let mark = AckMark {
                shard: self.config.shard,
                lsn_acked: lsn,
                sequence: state.mark_sequence + 1,
                time_ms,
            };
            (file, mark, std::mem::take(&mut state.mark_block))
        };
        let _busy = Busy::enter(&self.marking, "write_ack_mark");
        block.resize(BLOCK_BYTES as usize, 0);
        block.fill(0);
        mark.encode(&mut block);
        let s = &self.storage;
        let written = match s.write_at(&file, mark.block() * BLOCK_BYTES, &block).await {
            Ok(()) => s.sync(&file).await,
            Err(e) => Err(e),
        };
        let mut state = self.state.borrow_mut();
        state.mark_block = block;
        if let Err(e) = written {
            drop(state);
            return Err(self.poison(WalError::io("write", ACK_MARK_FILE_NAME, e)));
        }
        assert!(lsn > state.lsn_marked, "the mark only moves forward");
        state.mark_sequence = mark.sequence;
        state.lsn_marked = lsn;
        Ok(lsn)
    }

    fn salt_next(&self) -> u64 {
        let mut state = self.state.borrow_mut();
        state.salt_state = state.salt_state.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = state.salt_state;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// Creates the next segment ahead of time, so that running out of space shows up while the
    /// current segment still has room for what is buffered.
    async fn prepare_next_segment(&self) -> Result<(), WalError> {
        // A rotation in flight still uses the spare's name until its rename: the next call prepares.
        if self.state.borrow().spare.is_some() || self.rotating.get() {
            return Ok(());
        }
        let s = &self.storage;
        let file = match s.create(PREALLOC_FILE_NAME, self.config.segment_bytes).await {
            Ok(file) => file,
            Err(e) => {
                // Leave no half-allocated file behind; this may fail too, harmlessly.
                let _ = s.remove(PREALLOC_FILE_NAME).await;
                let enospc = is_enospc(&e);
                self.state.borrow_mut().disk_full = enospc;
                return Err(if enospc {
                    WalError::DiskFull
                } else {
                    WalError::io("create", PREALLOC_FILE_NAME, e)
                });
            }
        };
        let synced = match s.sync(&file).await {
            Ok(()) => s.sync_dir().await,
            Err(e) => Err(e),
        };
        if let Err(e) = synced {
            return Err(self.poison(WalError::io("fdatasync", PREALLOC_FILE_NAME, e)));
        }
        let salt = self.salt_next();
        let mut state = self.state.borrow_mut();
        state.spare = Some(file);
        state.disk_full = false;
        drop(state);
        self.encoder.borrow_mut().grant_rotation(salt);
        Ok(())
    }

    /// Deletes the oldest segments whose records are all covered by the oldest snapshot kept (so a
    /// fallback to it can still replay) and whose newest record is older than the retention. The
    /// current segment is never deleted, and only a prefix of the log, so it stays contiguous.
    async fn apply_retention(&self, now_ms: u64) -> Result<(), WalError> {
        let doomed: Vec<String> = {
            let state = self.state.borrow();
            let Some(&covered) = state.snapshots.first() else {
                return Ok(());
            };
            let mut doomed = Vec::new();
            for pair in state.segments.windows(2) {
                let (seg, next) = (&pair[0], &pair[1]);
                let lsn_last = next.first_lsn - 1;
                let time_newest = seg.time_last_ms.unwrap_or(next.time_first_ms);
                if lsn_last > covered || time_newest.saturating_add(self.config.retention_ms) > now_ms {
                    break;
                }
                doomed.push(seg.file.clone());
            }
            doomed
        };
        if doomed.is_empty() {
            return Ok(());
        }
        for name in &doomed {
            self.storage
                .remove(name)
                .await
                .map_err(|e| WalError::io("remove", name, e))?;
            let mut state = self.state.borrow_mut();
            assert_eq!(state.segments[0].file, *name);
            state.segments.remove(0);
        }
        self.storage
            .sync_dir()
            .await
            .map_err(|e| self.poison(WalError::io("sync_dir", "shard directory", e)))
    }

    /// Writes a snapshot: the engine's state (opaque bytes) as of `lsn`, which must be durable
    /// already (a snapshot ahead of the log would clash with the lsns of records lost in a crash).
    /// Written to a temporary file, fdatasynced, renamed, and the directory fsynced; then snapshots
    /// beyond the newest `SNAPSHOTS_KEPT` are removed. May run while commits do; one at a time.
    pub async fn write_snapshot(&self, lsn: u64, body: &[u8]) -> Result<(), WalError> {
        if self.poisoned.get() {
            return Err(WalError::Poisoned);
        }
        assert!(lsn <= self.lsn_durable(), "a snapshot covers only durable records");
        let newest = self.state.borrow().snapshots.last().copied();
        if newest == Some(lsn) {
            return Ok(()); // this state is on disk already
        }
        assert!(newest.is_none_or(|newest| lsn > newest), "snapshots move forward");
        let _busy = Busy::enter(&self.snapshotting, "write_snapshot");
        let s = &self.storage;
        let header = SnapshotHeader::for_body(self.config.shard, lsn, body);
        let tmp = snapshot_tmp_file_name(lsn);
        let name = snapshot_file_name(lsn);
        let file = match s.create(&tmp, header.file_bytes()).await {
            Ok(file) => file,
            Err(e) => {
                let _ = s.remove(&tmp).await;
                return Err(if is_enospc(&e) {
                    WalError::DiskFull
                } else {
                    WalError::io("create", &tmp, e)
                });
            }
        };
        let mut chunk = vec![0u8; SNAPSHOT_BODY_OFFSET as usize];
        header.encode(&mut chunk);
        let written = async {
            s.write_at(&file, 0, &chunk).await?;
            let mut offset = 0u64;
            while offset < body.len() as u64 {
                let end = (offset + SNAPSHOT_CHUNK_BYTES).min(body.len() as u64);
                let part = &body[offset as usize..end as usize];
                chunk.clear();
                chunk.extend_from_slice(part);
                chunk.resize((part.len() as u64).next_multiple_of(BLOCK_BYTES) as usize, 0);
                s.write_at(&file, SNAPSHOT_BODY_OFFSET + offset, &chunk).await?;
                offset = end;
            }
            s.sync(&file).await
        }
        .await;
        written.map_err(|e| self.poison(WalError::io("write", &tmp, e)))?;
        s.rename(&tmp, &name)
            .await
            .map_err(|e| WalError::io("rename", &name, e))?;
        s.sync_dir()
            .await
            .map_err(|e| self.poison(WalError::io("sync_dir", &name, e)))?;
        let old: Vec<u64> = {
            let mut state = self.state.borrow_mut();
            state.snapshots.push(lsn);
            let excess = state.snapshots.len().saturating_sub(SNAPSHOTS_KEPT);
            state.snapshots.drain(..excess).collect()
        };
        if !old.is_empty() {
            for lsn in old {
                let old_name = snapshot_file_name(lsn);
                match s.remove(&old_name).await {
                    Ok(()) => {}
                    Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                    Err(e) => return Err(WalError::io("remove", &old_name, e)),
                }
            }
            s.sync_dir()
                .await
                .map_err(|e| self.poison(WalError::io("sync_dir", "shard directory", e)))?;
        }
        Ok(())
    }
    /// Replaces the whole log with a snapshot received from elsewhere (a replica resynchronised by
    /// its primary): every segment and snapshot file is removed, the snapshot of `lsn` is written,
    /// and the log continues at `lsn + 1`, which may be below the lsn it had (a diverged suffix is
    /// discarded this way). Nothing may be buffered or committing: the caller stops appending first.
    ///
    /// Until the next `maintain`, the log has no segment to write to (`room` says `DiskFull` while
    /// `is_disk_full` is false).
    ///
    /// Crash safety: files are removed before the new snapshot is written, so a crash in between
    /// leaves an empty log (the replica reports position 0 and is resynchronised again), never old
    /// records replayed after the new snapshot.
    pub async fn install_snapshot(&self, lsn: u64, body: &[u8]) -> Result<(), WalError> {
        if self.poisoned.get() {
            return Err(WalError::Poisoned);
        }
        assert!(!self.committing.get(), "install_snapshot during a commit");
        assert_eq!(
            self.lsn_appended(),
            self.lsn_durable(),
            "install_snapshot with records not yet committed"
        );
        assert!(!self.marking.get(), "install_snapshot during a mark write");
        let _busy = Busy::enter(&self.snapshotting, "install_snapshot");
        let _rotating = Busy::enter(&self.rotating, "install_snapshot");
        let s = &self.storage;
        // The mark goes first, durably: the new log may end below it, and a crash must never leave
        // the old mark beside the new log (recovery would refuse it as acknowledged loss). The
        // next `maintain` creates a fresh one.
        {
            let mut state = self.state.borrow_mut();
            state.mark = None;
            state.mark_sequence = 0;
            state.lsn_marked = 0;
        }
        match s.remove(ACK_MARK_FILE_NAME).await {
            Ok(()) => s
                .sync_dir()
                .await
                .map_err(|e| self.poison(WalError::io("sync_dir", "shard directory", e)))?,
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(self.poison(WalError::io("remove", ACK_MARK_FILE_NAME, e))),
        }
        let names = s.list().await.map_err(|e| WalError::io("list", "shard directory", e))?;
        let doomed: Vec<String> = names
            .into_iter()
            .filter(|name| {
                name == PREALLOC_FILE_NAME
                    || crate::segment::parse_segment_file_name(name).is_some()
                    || crate::snapshot::parse_snapshot_file_name(name).is_some()
                    || crate::snapshot::is_snapshot_tmp_file_name(name)
            })
            .collect();
        {
            let mut state = self.state.borrow_mut();
            state.current = None;
            state.spare = None;
            state.segments.clear();
            state.snapshots.clear();
        }
        for name in &doomed {
            match s.remove(name).await {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => return Err(self.poison(WalError::io("remove", name, e))),
            }
        }
        s.sync_dir()
            .await
            .map_err(|e| self.poison(WalError::io("sync_dir", "shard directory", e)))?;
        let segment_bytes = self.config.segment_bytes;
        *self.encoder.borrow_mut() = BatchEncoder::new(None, 0, lsn, 0, segment_bytes);
        *self.commit.borrow_mut() = GroupCommit::new(lsn);
        drop(_busy);
        self.write_snapshot(lsn, body).await?;
        // The next segment is prepared by the next `maintain` (the caller wakes it): preparing
        // here could run beside a maintenance call that prepares too.
        Ok(())
    }
}

/// Zeroes `from..to` of a segment (the remains of a torn write) and syncs it, so the segment again
/// reads as valid batches followed by zeros.
async fn zero_range<S: Storage>(storage: &S, file: &S::File, name: &str, from: u64, to: u64) -> Result<(), WalError> {
    assert!(from.is_multiple_of(BLOCK_BYTES));
    let to = to.next_multiple_of(BLOCK_BYTES);
    let zeros = vec![0u8; SNAPSHOT_CHUNK_BYTES.min(to - from) as usize];
    let mut offset = from;
    while offset < to {
        let len = (to - offset).min(zeros.len() as u64) as usize;
        storage
            .write_at(file, offset, &zeros[..len])
            .await
            .map_err(|e| WalError::io("write", name, e))?;
        offset += len as u64;
    }
    storage.sync(file).await.map_err(|e| WalError::io("fdatasync", name, e))
}

impl<S: Storage> LogSink for &Wal<S> {
    fn record(&mut self, lsn: u64, record: &LogRecord<'_>) {
        self.append(lsn, record);
    }
}
