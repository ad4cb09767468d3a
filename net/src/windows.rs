//! Time windows on disk: each shard's closed seconds written as window files by a writer thread of
//! its own (never the shard's executor), compacted from minute files into hour and day files, and
//! read for the part of a WINDOW or SERIES older than the shard's memory.
//!
//! Files live in `shard-N/windows/`, one per time range and level: `m-<from>-<to>.tlw` (a minute of
//! 1-second buckets, written about a second after the minute closes), `h-…` (an hour, merged from
//! its minute files once all its seconds have aged out of the longest fine tier, so it holds
//! minutes) and `d-…` (a day, merged from its hour files). Every file is written under a `.tmp`
//! name, fsynced, renamed and the directory fsynced; only then does the shard hear that its seconds
//! up to the file's end are durable (`Shard::windows_set_durable`), and only then are a merge's
//! inputs deleted. The ranges of the files in the set never overlap, so a query adds every file
//! overlapping its disk range without counting anything twice.
//!
//! Recovery (`recover_dir`) deletes `.tmp` files (never renamed: incomplete), sets aside files that
//! do not open as window files, deletes files whose range lies inside another file's (the inputs
//! of a merge whose output was already durable), and reports the end of the newest file: the shard
//! is told its seconds are durable up to there before its log is replayed.

use std::collections::BTreeMap;
use std::fs::{self, File};
use std::io::Write;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::mpsc::{Receiver, RecvTimeoutError, SyncSender};
use std::sync::{Arc, RwLock};
use std::thread::JoinHandle;
use std::time::Duration;

use tally_engine::window::file::{FOOTER_BYTES, HEADER_BYTES};
use tally_engine::window::{
    encode_slices, merge_files, tier_rollup, DiskRange, FileIndex, Footer, Partial, SealedSlice, WindowFile,
};
use tally_engine::{ShardConfig, WindowConfig};

use crate::connection::now_ms;
use crate::limits::{WINDOW_COMPACT_SLACK_MS, WINDOW_DRAINS_QUEUED_MAX, WINDOW_WRITER_POLL_MS};
use crate::log;
use crate::log::Level as LogLevel;
use crate::node::NodeShared;
use crate::recovery::shard_dir;

const MINUTE_MS: u64 = 60_000;
const HOUR_MS: u64 = 60 * MINUTE_MS;
const DAY_MS: u64 = 24 * HOUR_MS;

/// Minutes of sealed seconds a writer buffers while it cannot write them (disk errors). Beyond
/// this the oldest buffered minute is dropped, loudly; the shard still holds it in memory until its
/// own cap, so a query keeps seeing it for that long.
const PENDING_MINUTES_MAX: usize = 20;

/// How coarse a file is: the span one file covers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Level {
    Minute,
    Hour,
    Day,
}

impl Level {
    fn prefix(self) -> &'static str {
        match self {
            Level::Minute => "m",
            Level::Hour => "h",
            Level::Day => "d",
        }
    }

    fn parse(prefix: &str) -> Option<Level> {
        match prefix {
            "m" => Some(Level::Minute),
            "h" => Some(Level::Hour),
            "d" => Some(Level::Day),
            _ => None,
        }
    }
}

/// One durable window file: its range, an open handle (reads keep working while compaction
/// deletes it) and its parsed index (cached: finding a name's block needs no read).
#[derive(Debug)]
pub struct DiskFile {
    pub path: PathBuf,
    pub level: Level,
    pub from_ms: u64,
    pub to_ms: u64,
    pub bytes: u64,
    file: File,
    index: FileIndex,
}

/// A shard's durable window files. The writer replaces entries; queries clone the list.
pub type FileSet = Arc<RwLock<Vec<Arc<DiskFile>>>>;

/// The window directory of a shard directory.
pub fn windows_dir(shard_dir: &Path) -> PathBuf {
    shard_dir.join("windows")
}

fn file_name(level: Level, from_ms: u64, to_ms: u64) -> String {
    format!("{}-{from_ms:020}-{to_ms:020}.tlw", level.prefix())
}

fn parse_file_name(name: &str) -> Option<(Level, u64, u64)> {
    let stem = name.strip_suffix(".tlw")?;
    let mut parts = stem.split('-');
    let level = Level::parse(parts.next()?)?;
    let from_ms = parts.next()?.parse().ok()?;
    let to_ms = parts.next()?.parse().ok()?;
    if parts.next().is_some() || from_ms >= to_ms {
        return None;
    }
    Some((level, from_ms, to_ms))
}

impl DiskFile {
    /// Opens a window file and reads its header, footer and index.
    pub fn open(path: &Path, level: Level) -> Result<DiskFile, String> {
        let what = |e: &dyn std::fmt::Display| format!("{}: {e}", path.display());
        let file = File::open(path).map_err(|e| what(&e))?;
        let bytes = file.metadata().map_err(|e| what(&e))?.len();
        if bytes < (HEADER_BYTES + FOOTER_BYTES) as u64 {
            return Err(what(&"shorter than a header and a footer"));
        }
        let mut header = [0u8; HEADER_BYTES];
        file.read_exact_at(&mut header, 0).map_err(|e| what(&e))?;
        let mut footer = [0u8; FOOTER_BYTES];
        file.read_exact_at(&mut footer, bytes - FOOTER_BYTES as u64)
            .map_err(|e| what(&e))?;
        let footer = Footer::parse(&footer).map_err(|e| what(&e))?;
        if footer.index_offset.checked_add(u64::from(footer.index_len)) != Some(bytes - FOOTER_BYTES as u64) {
            return Err(what(&"the footer does not point at the index"));
        }
        let mut index = vec![0u8; footer.index_len as usize];
        file.read_exact_at(&mut index, footer.index_offset)
            .map_err(|e| what(&e))?;
        let index = FileIndex::parse(&header, footer, &index).map_err(|e| what(&e))?;
        Ok(DiskFile {
            path: path.to_path_buf(),
            level,
            from_ms: index.from_ms,
            to_ms: index.to_ms,
            bytes,
            file,
            index,
        })
    }

    /// Adds `name`'s buckets inside `disk` to `partial`: one block read.
    pub fn add_to(&self, name: &[u8], disk: DiskRange, partial: &mut Partial) -> Result<(), String> {
        let Some((offset, len)) = self.index.block_for(name) else {
            return Ok(());
        };
        let mut block = vec![0u8; len as usize];
        self.file
            .read_exact_at(&mut block, offset)
            .map_err(|e| format!("{}: {e}", self.path.display()))?;
        self.index
            .add_block(offset, &block, name, disk, partial)
            .map_err(|e| format!("{}: {e}", self.path.display()))?;
        Ok(())
    }
}

/// Adds what `files` hold of `name` inside `disk` to `partial`.
pub fn add_disk(files: &[Arc<DiskFile>], name: &[u8], disk: DiskRange, partial: &mut Partial) -> Result<(), String> {
    for file in files {
        if file.from_ms < disk.to_ms && disk.from_ms < file.to_ms {
            file.add_to(name, disk, partial)?;
        }
    }
    Ok(())
}

/// Startup: cleans a shard's window directory (see the module doc) and returns its files, oldest
/// first, and the end of the newest (0 if there is none): the shard's seconds before it are durable.
pub fn recover_dir(dir: &Path) -> Result<(Vec<Arc<DiskFile>>, u64), String> {
    fs::create_dir_all(dir).map_err(|e| format!("create {}: {e}", dir.display()))?;
    let mut files = Vec::new();
    let entries = fs::read_dir(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    for entry in entries {
        let entry = entry.map_err(|e| format!("{}: {e}", dir.display()))?;
        let Ok(name) = entry.file_name().into_string() else {
            continue;
        };
        let path = entry.path();
        if name.ends_with(".tmp") {
            fs::remove_file(&path).map_err(|e| format!("remove {}: {e}", path.display()))?;
            continue;
        }
        let Some((level, from_ms, to_ms)) = parse_file_name(&name) else {
            continue;
        };
        match DiskFile::open(&path, level) {
            Ok(file) if file.from_ms == from_ms && file.to_ms == to_ms => files.push(file),
            Ok(_) | Err(_) => {
                // Renamed only after its fsync, so this is damage, not a crash: keep it for a
                // look, out of the way. Its seconds are missing from history.
                let aside = path.with_extension("corrupt");
                log!(
                    LogLevel::Error,
                    "window file {} is damaged: moved to {}; its buckets are lost",
                    path.display(),
                    aside.display()
                );
                fs::rename(&path, &aside).map_err(|e| format!("rename {}: {e}", path.display()))?;
            }
        }
    }
    files.sort_by_key(|f| (f.from_ms, std::cmp::Reverse(f.to_ms)));
    let mut kept: Vec<DiskFile> = Vec::with_capacity(files.len());
    for file in files {
        // Sorted by start, longest first: a file inside the last kept one is a merge's input.
        if kept.last().is_some_and(|last| file.to_ms <= last.to_ms) {
            fs::remove_file(&file.path).map_err(|e| format!("remove {}: {e}", file.path.display()))?;
            continue;
        }
        if let Some(last) = kept.last() {
            if file.from_ms < last.to_ms {
                return Err(format!(
                    "window files {} and {} overlap without one containing the other",
                    last.path.display(),
                    file.path.display()
                ));
            }
        }
        kept.push(file);
    }
    let durable = kept.last().map_or(0, |f| f.to_ms);
    Ok((kept.into_iter().map(Arc::new).collect(), durable))
}

/// What a shard hands its writer at each drain.
pub struct Drain {
    pub slices: Vec<SealedSlice>,
    /// Every second before this has been handed out (`WindowStats::sealed_through_ms`).
    pub sealed_through_ms: u64,
}

/// The shard's side of its writer: where to send drains and where durability comes back.
pub struct WriterLink {
    pub drains: SyncSender<Drain>,
    /// Drains sent and not yet taken by the writer.
    pub queued: Arc<AtomicUsize>,
    /// Every second before this is in a durable file.
    pub durable_ms: Arc<AtomicU64>,
}

/// A running writer thread.
pub struct Writer {
    thread: JoinHandle<()>,
    stop: Arc<AtomicBool>,
}

impl Writer {
    /// Stops the writer (within `WINDOW_WRITER_POLL_MS`) and waits for it. Call once its shard has
    /// stopped: what it has not written is still in the shard's snapshot and log.
    pub fn stop(self) {
        self.stop.store(true, Ordering::Release);
        if self.thread.join().is_err() {
            log!(LogLevel::Error, "a window writer panicked");
        }
    }
}

/// Starts shard `shard`'s writer over `dir` and its recovered `files`.
pub fn start_writer(
    shard: u16,
    dir: PathBuf,
    config: WindowConfig,
    files: FileSet,
    durable_ms: u64,
) -> Result<(Writer, WriterLink), String> {
    let (drains, receiver) = std::sync::mpsc::sync_channel(WINDOW_DRAINS_QUEUED_MAX + 1);
    let queued = Arc::new(AtomicUsize::new(0));
    let durable = Arc::new(AtomicU64::new(durable_ms));
    let stop = Arc::new(AtomicBool::new(false));
    let mut state = WriterState {
        stop: stop.clone(),
        shard,
        dir,
        config,
        files,
        pending: BTreeMap::new(),
        sealed_through_ms: durable_ms,
        durable: durable.clone(),
        queued: queued.clone(),
    };
    let thread = std::thread::Builder::new()
        .name(format!("tally-windows-{shard}"))
        .spawn(move || state.run(receiver))
        .map_err(|e| format!("start the window writer of shard {shard}: {e}"))?;
    Ok((
        Writer { thread, stop },
        WriterLink {
            drains,
            queued,
            durable_ms: durable,
        },
    ))
}

struct WriterState {
    shard: u16,
    dir: PathBuf,
    config: WindowConfig,
    files: FileSet,
    /// Sealed seconds by minute start, until their minute file is durable.
    pending: BTreeMap<u64, Vec<SealedSlice>>,
    sealed_through_ms: u64,
    durable: Arc<AtomicU64>,
    queued: Arc<AtomicUsize>,
    stop: Arc<AtomicBool>,
}

impl WriterState {
    fn run(&mut self, drains: Receiver<Drain>) {
        loop {
            match drains.recv_timeout(Duration::from_millis(WINDOW_WRITER_POLL_MS)) {
                Ok(drain) => {
                    self.queued.fetch_sub(1, Ordering::AcqRel);
                    for slice in drain.slices {
                        let minute = slice.start_ms - slice.start_ms % MINUTE_MS;
                        self.pending.entry(minute).or_default().push(slice);
                    }
                    self.sealed_through_ms = self.sealed_through_ms.max(drain.sealed_through_ms);
                }
                Err(RecvTimeoutError::Timeout) => {}
                // The shard stopped. What was not written is still in its snapshot and log.
                Err(RecvTimeoutError::Disconnected) => return,
            }
            if self.stop.load(Ordering::Acquire) {
                return;
            }
            self.write_minutes();
            if let Err(e) = self.compact(now_ms()) {
                log!(LogLevel::Error, "shard {}: window compaction: {e}", self.shard);
            }
        }
    }

    /// Writes every complete minute buffered, oldest first, and moves the durable mark.
    fn write_minutes(&mut self) {
        let complete_ms = self.sealed_through_ms - self.sealed_through_ms % MINUTE_MS;
        while let Some((&minute, _)) = self.pending.first_key_value() {
            if minute + MINUTE_MS > complete_ms {
                break;
            }
            let slices = self.pending.remove(&minute).expect("just looked");
            let bytes = encode_slices(
                &slices,
                minute,
                minute + MINUTE_MS,
                &tier_rollup(&self.config, now_ms()),
            );
            if let Err(e) = self.install(Level::Minute, minute, minute + MINUTE_MS, &bytes, &[]) {
                log!(
                    LogLevel::Error,
                    "shard {}: writing the window file of minute {minute}: {e}; retrying",
                    self.shard
                );
                self.pending.insert(minute, slices);
                if self.pending.len() > PENDING_MINUTES_MAX {
                    let (dropped, _) = self.pending.pop_first().expect("not empty");
                    log!(
                        LogLevel::Error,
                        "shard {}: dropped the window seconds of minute {dropped}: the writer cannot write",
                        self.shard
                    );
                }
                return;
            }
        }
        // Every minute before `complete_ms` is on disk (or had no increments).
        let durable = match self.pending.first_key_value() {
            Some((&minute, _)) => minute.min(complete_ms),
            None => complete_ms,
        };
        self.durable.fetch_max(durable, Ordering::AcqRel);
    }

    /// Writes `bytes` as the file for [from_ms, to_ms) durably, then replaces `inputs` with it in the
    /// set and deletes them.
    fn install(
        &self,
        level: Level,
        from_ms: u64,
        to_ms: u64,
        bytes: &[u8],
        inputs: &[Arc<DiskFile>],
    ) -> Result<(), String> {
        let name = file_name(level, from_ms, to_ms);
        let path = self.dir.join(&name);
        let tmp = self.dir.join(format!("{name}.tmp"));
        let io = |what: &str, e: std::io::Error| format!("{what} {}: {e}", tmp.display());
        let mut file = File::create(&tmp).map_err(|e| io("create", e))?;
        file.write_all(bytes).map_err(|e| io("write", e))?;
        file.sync_all().map_err(|e| io("fsync", e))?;
        drop(file);
        fs::rename(&tmp, &path).map_err(|e| io("rename", e))?;
        File::open(&self.dir)
            .and_then(|dir| dir.sync_all())
            .map_err(|e| format!("fsync {}: {e}", self.dir.display()))?;
        let installed = Arc::new(DiskFile::open(&path, level)?);
        {
            let mut files = self.files.write().expect("no writer panics holding the lock");
            files.retain(|f| !inputs.iter().any(|i| Arc::ptr_eq(f, i)));
            files.push(installed);
            files.sort_by_key(|f| f.from_ms);
        }
        for input in inputs {
            fs::remove_file(&input.path).map_err(|e| format!("remove {}: {e}", input.path.display()))?;
        }
        Ok(())
    }

    /// Merges minute files into hour files and hour files into day files once their seconds have
    /// all left the longest fine tier, and deletes files past the longest retention.
    fn compact(&self, now_ms: u64) -> Result<(), String> {
        let all_tiers = std::iter::once(&self.config.tiers).chain(self.config.namespaces.iter().map(|r| &r.tiers));
        let (mut fine_ms, mut kept_ms) = (0, 0);
        for tiers in all_tiers {
            fine_ms = fine_ms.max(tiers.fine.retention_ms + tiers.coarse.resolution_ms);
            kept_ms = kept_ms.max(tiers.coarse.retention_ms + tiers.coarse.resolution_ms);
        }
        let durable = self.durable.load(Ordering::Acquire);
        for (level, span, into) in [(Level::Minute, HOUR_MS, Level::Hour), (Level::Hour, DAY_MS, Level::Day)] {
            loop {
                let files = self.files.read().expect("no writer panics holding the lock").clone();
                let Some(first) = files.iter().find(|f| f.level == level) else {
                    break;
                };
                let from = first.from_ms - first.from_ms % span;
                let to = from + span;
                if to + fine_ms + WINDOW_COMPACT_SLACK_MS > now_ms || to > durable {
                    break;
                }
                let inputs: Vec<Arc<DiskFile>> = files
                    .iter()
                    .filter(|f| f.from_ms >= from && f.to_ms <= to)
                    .cloned()
                    .collect();
                let mut images = Vec::with_capacity(inputs.len());
                for input in &inputs {
                    images.push(fs::read(&input.path).map_err(|e| format!("{}: {e}", input.path.display()))?);
                }
                let opened = images
                    .iter()
                    .zip(&inputs)
                    .map(|(bytes, input)| WindowFile::open(bytes).map_err(|e| format!("{}: {e}", input.path.display())))
                    .collect::<Result<Vec<_>, String>>()?;
                let merged = merge_files(&opened, from, to, &tier_rollup(&self.config, now_ms))
                    .map_err(|e| format!("merging into {}: {e}", file_name(into, from, to)))?;
                self.install(into, from, to, &merged, &inputs)?;
            }
        }
        // Retention: a file whose every bucket is older than the longest retention.
        let expired: Vec<Arc<DiskFile>> = self
            .files
            .read()
            .expect("no writer panics holding the lock")
            .iter()
            .filter(|f| f.to_ms + kept_ms <= now_ms)
            .cloned()
            .collect();
        if !expired.is_empty() {
            self.files
                .write()
                .expect("no writer panics holding the lock")
                .retain(|f| !expired.iter().any(|e| Arc::ptr_eq(f, e)));
            for file in expired {
                fs::remove_file(&file.path).map_err(|e| format!("remove {}: {e}", file.path.display()))?;
            }
        }
        Ok(())
    }
}

/// Every shard's recovered window files and running writer.
pub struct NodeWindows {
    pub files: Arc<Vec<FileSet>>,
    /// Every shard's directory (its log, for EVENTS).
    pub dirs: Arc<Vec<PathBuf>>,
    /// Per shard: its seconds before this are durable in its files.
    pub durable_ms: Vec<u64>,
    pub links: Vec<WriterLink>,
    pub writers: Vec<Writer>,
}

/// Startup, before the shards' logs are replayed: recovers every shard's window directory and
/// starts its writer.
pub fn recover_node(data_dir: &Path, configs: &[ShardConfig], shared: &NodeShared) -> Result<NodeWindows, String> {
    let mut node = NodeWindows {
        files: Arc::new(Vec::new()),
        dirs: Arc::new(Vec::new()),
        durable_ms: Vec::new(),
        links: Vec::new(),
        writers: Vec::new(),
    };
    let (mut files, mut dirs) = (Vec::new(), Vec::new());
    for config in configs {
        assert_eq!(config.shard as usize, files.len(), "configs in shard order");
        let shard_dir = shard_dir(data_dir, config.shard);
        let dir = windows_dir(&shard_dir);
        let (recovered, durable) = recover_dir(&dir)?;
        let set: FileSet = Arc::new(RwLock::new(recovered));
        let (writer, link) = start_writer(config.shard, dir, config.windows.clone(), set.clone(), durable)?;
        files.push(set);
        dirs.push(shard_dir);
        node.durable_ms.push(durable);
        node.links.push(link);
        node.writers.push(writer);
    }
    assert_eq!(files.len(), shared.shards as usize);
    node.files = Arc::new(files);
    node.dirs = Arc::new(dirs);
    Ok(node)
}

/// Files of a set, counted for STATS: (files, bytes).
pub fn footprint(files: &FileSet) -> (u64, u64) {
    let files = files.read().expect("no writer panics holding the lock");
    (files.len() as u64, files.iter().map(|f| f.bytes).sum())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn temp_dir(tag: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("tally-windows-{tag}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).unwrap();
        dir
    }

    fn slice(start_ms: u64, name: &[u8], sum: i64) -> SealedSlice {
        SealedSlice::from_entries(start_ms, [(name, sum)])
    }

    #[test]
    fn file_names_round_trip_and_strangers_are_ignored() {
        assert_eq!(
            parse_file_name(&file_name(Level::Hour, 5, 9)),
            Some((Level::Hour, 5, 9))
        );
        assert_eq!(parse_file_name("h-9-5.tlw"), None);
        assert_eq!(parse_file_name("x-1-2.tlw"), None);
        assert_eq!(parse_file_name("m-1-2.tlw.tmp"), None);
    }

    /// Recovery keeps complete files, removes temporaries and a merge's leftover inputs, sets
    /// damaged files aside, and reports the newest end; reads add exactly the disk range.
    #[test]
    fn recovery_cleans_up_and_reads_add_the_disk_range() {
        let dir = temp_dir("recover");
        let write = |level, from, to, slices: &[SealedSlice]| {
            fs::write(
                dir.join(file_name(level, from, to)),
                encode_slices(slices, from, to, &|_, t| Some(t)),
            )
            .unwrap();
        };
        let h = 40 * DAY_MS;
        write(Level::Minute, h, h + MINUTE_MS, &[slice(h, b"a", 2)]);
        write(
            Level::Minute,
            h + MINUTE_MS,
            h + 2 * MINUTE_MS,
            &[slice(h + MINUTE_MS, b"a", 3)],
        );
        // A merge of those two that became durable before its inputs were deleted.
        write(
            Level::Hour,
            h,
            h + HOUR_MS,
            &[slice(h, b"a", 2), slice(h + MINUTE_MS, b"a", 3)],
        );
        write(
            Level::Minute,
            h + HOUR_MS,
            h + HOUR_MS + MINUTE_MS,
            &[slice(h + HOUR_MS + 5_000, b"a", 7)],
        );
        fs::write(dir.join("m-1-2.tlw.tmp"), b"half").unwrap();
        fs::write(dir.join(file_name(Level::Minute, 0, MINUTE_MS)), b"garbage").unwrap();
        let (files, durable) = recover_dir(&dir).unwrap();
        assert_eq!(durable, h + HOUR_MS + MINUTE_MS);
        let levels: Vec<Level> = files.iter().map(|f| f.level).collect();
        assert_eq!(levels, vec![Level::Hour, Level::Minute]);
        let left: Vec<String> = fs::read_dir(&dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        assert_eq!(left.len(), 3, "two files and the damaged one set aside: {left:?}");
        assert!(left.iter().any(|n| n.ends_with(".corrupt")));
        let range = tally_engine::window::Range {
            from_ms: h,
            to_ms: h + 2 * HOUR_MS,
            step_ms: HOUR_MS,
        };
        let mut partial = Partial::new(range);
        let disk = DiskRange {
            from_ms: h + MINUTE_MS,
            to_ms: h + 2 * HOUR_MS,
        };
        add_disk(&files, b"a", disk, &mut partial).unwrap();
        assert_eq!(partial.finish().unwrap(), vec![3, 7], "only the disk range is added");
        fs::remove_dir_all(&dir).unwrap();
    }

    /// The writer turns drains into minute files, says they are durable, and compacts old minutes
    /// into an hour file that answers the same.
    #[test]
    fn writer_writes_minutes_and_compacts_old_hours() {
        let dir = temp_dir("writer");
        let files: FileSet = Arc::new(RwLock::new(Vec::new()));
        let (_writer, link) = start_writer(0, dir.clone(), WindowConfig::default(), files.clone(), 0).unwrap();
        // Three days ago, far past every fine tier: its hour compacts at once.
        let t = (now_ms() - 3 * DAY_MS) / HOUR_MS * HOUR_MS;
        let slices = vec![
            slice(t, b"x", 1),
            slice(t + 1_000, b"x", 2),
            slice(t + MINUTE_MS, b"x", 4),
        ];
        link.queued.fetch_add(1, Ordering::AcqRel);
        link.drains
            .send(Drain {
                slices,
                sealed_through_ms: t + 2 * HOUR_MS,
            })
            .unwrap();
        let deadline = std::time::Instant::now() + Duration::from_secs(20);
        while footprint(&files).0 != 1 || files.read().unwrap()[0].level != Level::Hour {
            assert!(std::time::Instant::now() < deadline, "the writer compacted within 20 s");
            std::thread::sleep(Duration::from_millis(10));
        }
        assert_eq!(link.durable_ms.load(Ordering::Acquire), t + 2 * HOUR_MS);
        let range = tally_engine::window::Range {
            from_ms: t,
            to_ms: t + 2 * MINUTE_MS,
            step_ms: MINUTE_MS,
        };
        let mut partial = Partial::new(range);
        let disk = DiskRange {
            from_ms: t,
            to_ms: t + HOUR_MS,
        };
        add_disk(&files.read().unwrap(), b"x", disk, &mut partial).unwrap();
        assert_eq!(partial.finish().unwrap(), vec![3, 4], "seconds rolled into minutes");
        drop(link);
        _writer.stop();
        fs::remove_dir_all(&dir).unwrap();
    }
}
