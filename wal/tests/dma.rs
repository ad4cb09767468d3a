//! The WAL on real files through glommio's direct I/O: write a log, recover it with plain reads, then
//! damage the segment files with std::fs (a torn tail, a flipped bit in the middle) and check that
//! recovery cuts the one and refuses the other.

mod common;

use std::io::{Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use common::*;
use glommio::{LocalExecutorBuilder, Placement};
use tally_wal::limits::BLOCK_BYTES;
use tally_wal::segment::parse_segment_file_name;
use tally_wal::{recover, DmaStorage, FsDir, SegmentReader, Step, Wal, WalError};

/// A fresh directory under the system temp dir, removed when dropped.
struct TempDir(PathBuf);

impl TempDir {
    fn new(name: &str) -> TempDir {
        let path = std::env::temp_dir().join(format!("tally-wal-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&path);
        std::fs::create_dir_all(&path).unwrap();
        TempDir(path)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Recovers `dir`, opens a WAL on it, runs the workload for `steps` (no snapshots if `snapshots` is
/// false) and returns what happened. Runs on its own glommio executor, with little locked memory.
fn write_log(dir: &Path, steps: u64, time_start_ms: u64, snapshots: bool) -> Run {
    let dir = dir.to_path_buf();
    LocalExecutorBuilder::new(Placement::Unbound)
        .io_memory(1 << 20)
        .spawn(move || async move {
            let recovered = recover(&FsDir(dir.clone()), SHARD, |_| {}).unwrap();
            let storage = DmaStorage::open(&dir).await.unwrap();
            let wal = Wal::open(storage, config(), &recovered).await.unwrap();
            let run = workload_with(&wal, steps, time_start_ms, snapshots).await;
            assert!(!run.stopped_early);
            run
        })
        .unwrap()
        .join()
        .unwrap()
}

fn segment_names(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .filter(|n| parse_segment_file_name(n).is_some())
        .collect();
    names.sort();
    names
}

/// (offset, last lsn) of every batch of a segment file.
fn batches(path: &Path) -> Vec<(u64, u64)> {
    let image = std::fs::read(path).unwrap();
    let mut reader = SegmentReader::new(&image, SHARD).unwrap();
    let mut out = Vec::new();
    while let Step::Batch {
        offset,
        first_lsn,
        record_count,
        ..
    } = reader.next_batch(&mut |_| {}).unwrap()
    {
        out.push((offset, first_lsn + u64::from(record_count) - 1));
    }
    out
}

fn write_bytes_at(path: &Path, offset: u64, bytes: &[u8]) {
    let mut file = std::fs::OpenOptions::new().write(true).open(path).unwrap();
    file.seek(SeekFrom::Start(offset)).unwrap();
    file.write_all(bytes).unwrap();
    file.sync_all().unwrap();
}

#[test]
fn a_log_written_with_direct_io_recovers_and_a_torn_tail_is_cut_and_overwritten() {
    let dir = TempDir::new("torn");
    let run = write_log(&dir.0, 40, 1_000, true);
    let names = segment_names(&dir.0);
    assert!(names.len() >= 2, "the log rotated: {names:?}");
    let (recovered, last) = recover_checked(&FsDir(dir.0.clone())).unwrap();
    assert_eq!(last, run.acked);
    assert_eq!(recovered.torn_tail, None);
    assert!(recovered.snapshot.is_some());
    let size = std::fs::metadata(dir.0.join(&names[0])).unwrap().len();
    assert_eq!(
        size,
        config().segment_bytes,
        "segments are preallocated to their full size"
    );

    // Tear the last batch: its second half never reached the disk.
    let last_segment = dir.0.join(names.last().unwrap());
    let all = batches(&last_segment);
    assert!(all.len() >= 2);
    let (offset, _) = *all.last().unwrap();
    let lsn_before = all[all.len() - 2].1;
    write_bytes_at(&last_segment, offset + 40, &[0u8; 24]);
    let (recovered, last) = recover_checked(&FsDir(dir.0.clone())).unwrap();
    assert_eq!(last, lsn_before);
    let torn = recovered.torn_tail.unwrap();
    assert_eq!(
        (torn.file.as_str(), torn.offset),
        (names.last().unwrap().as_str(), offset)
    );

    // Appending resumes at the cut (zeroing what was left of the torn batch) and a restart finds it all.
    let more = write_log(&dir.0, 5, 10_000_000, false);
    assert_eq!(more.acked, more.attempted);
    assert!(more.acked > lsn_before);
    let (again, last) = recover_checked(&FsDir(dir.0.clone())).unwrap();
    assert_eq!(last, more.acked);
    assert_eq!(again.torn_tail, None);
}

#[test]
fn a_flipped_bit_in_a_middle_batch_of_a_real_segment_is_corruption() {
    let dir = TempDir::new("flip");
    let run = write_log(&dir.0, 30, 1_000, false);
    assert!(run.acked > 0);
    let names = segment_names(&dir.0);
    let first = dir.0.join(&names[0]);
    let all = batches(&first);
    assert!(all.len() >= 3);
    let (offset, _) = all[1];
    let mut byte = [0u8; 1];
    {
        use std::io::Read;
        let mut f = std::fs::File::open(&first).unwrap();
        f.seek(SeekFrom::Start(offset + 50)).unwrap();
        f.read_exact(&mut byte).unwrap();
    }
    write_bytes_at(&first, offset + 50, &[byte[0] ^ 0x20]);
    match recover(&FsDir(dir.0.clone()), SHARD, |_| {}) {
        Err(WalError::Corruption {
            file,
            offset: at,
            detail,
        }) => {
            assert_eq!((file.as_str(), at), (names[0].as_str(), offset), "{detail}");
        }
        other => panic!("expected corruption, got {other:?}"),
    }
    assert_eq!(offset % BLOCK_BYTES, 0);
}

/// FIEMAP's flag for an extent that is allocated but never written (reads as zeros; the first write
/// into it is a metadata change).
const FIEMAP_EXTENT_UNWRITTEN: u32 = 0x800;
const FS_IOC_FIEMAP: libc::c_ulong = 0xC020_660B;
const FIEMAP_FLAG_SYNC: u32 = 1;

/// The extents of `path` as (length, flags), or None where the file system has no FIEMAP.
fn extents(path: &Path) -> Option<Vec<(u64, u32)>> {
    use std::os::fd::AsRawFd;
    const EXTENTS_MAX: usize = 64;
    // struct fiemap (32 bytes) followed by EXTENTS_MAX struct fiemap_extent (56 bytes each).
    let mut buf = vec![0u64; (32 + 56 * EXTENTS_MAX) / 8];
    let bytes = buf.as_mut_ptr() as *mut u8;
    // SAFETY: the buffer is large enough for the header and EXTENTS_MAX extents and 8-aligned.
    unsafe {
        let header = bytes as *mut u64;
        *header = 0; // fm_start
        *header.add(1) = u64::MAX; // fm_length
        let words = bytes.add(16) as *mut u32;
        *words = FIEMAP_FLAG_SYNC; // fm_flags
        *words.add(2) = EXTENTS_MAX as u32; // fm_extent_count
    }
    let file = std::fs::File::open(path).unwrap();
    // SAFETY: FS_IOC_FIEMAP reads and fills the buffer laid out above.
    let rc = unsafe { libc::ioctl(file.as_raw_fd(), FS_IOC_FIEMAP, bytes) };
    if rc != 0 {
        return None;
    }
    // SAFETY: the kernel filled fm_mapped_extents and that many extents.
    unsafe {
        let mapped = *(bytes.add(20) as *const u32) as usize;
        Some(
            (0..mapped.min(EXTENTS_MAX))
                .map(|i| {
                    let extent = bytes.add(32 + 56 * i);
                    (*(extent.add(16) as *const u64), *(extent.add(40) as *const u32))
                })
                .collect(),
        )
    }
}

#[test]
fn a_new_segment_file_is_written_with_zeros_so_commits_change_no_metadata() {
    use tally_wal::Storage;
    let dir = TempDir::new("zero-fill");
    let size = 2u64 << 20;
    let path = dir.0.clone();
    LocalExecutorBuilder::new(Placement::Unbound)
        .io_memory(1 << 20)
        .spawn(move || async move {
            let storage = DmaStorage::open(&path).await.unwrap();
            let file = storage.create("next.wal.pre", size).await.unwrap();
            storage.sync(&file).await.unwrap();
        })
        .unwrap()
        .join()
        .unwrap();
    let file = dir.0.join("next.wal.pre");
    let bytes = std::fs::read(&file).unwrap();
    assert_eq!(bytes.len() as u64, size);
    assert!(bytes.iter().all(|&b| b == 0));
    // Only where the file system reports extents (ext4, xfs here; not tmpfs).
    if let Some(extents) = extents(&file) {
        assert!(!extents.is_empty(), "a preallocated file has extents");
        assert_eq!(extents.iter().map(|e| e.0).sum::<u64>(), size);
        for (len, flags) in extents {
            assert_eq!(
                flags & FIEMAP_EXTENT_UNWRITTEN,
                0,
                "an unwritten extent of {len} bytes is left"
            );
        }
    }
}

/// Maintenance runs in its own task beside the commits in the node. With tiny segments every few
/// commits rotate, so a preparation of the next spare keeps overlapping a rotation that still holds
/// the spare's file name: neither may fail, and the log must recover whole.
#[test]
fn maintenance_beside_rotating_commits_on_real_files_loses_nothing() {
    use std::cell::Cell;
    use std::rc::Rc;
    use tally_wal::Room;
    let dir = TempDir::new("maintain-beside");
    let path = dir.0.clone();
    let (acked, rotations) = LocalExecutorBuilder::new(Placement::Unbound)
        .io_memory(1 << 20)
        .spawn(move || async move {
            let recovered = recover(&FsDir(path.clone()), SHARD, |_| {}).unwrap();
            let storage = DmaStorage::open(&path).await.unwrap();
            let wal = Rc::new(Wal::open(storage, config(), &recovered).await.unwrap());
            let done = Rc::new(Cell::new(false));
            let maintainer = {
                let (wal, done) = (wal.clone(), done.clone());
                glommio::spawn_local(async move {
                    let mut runs = 0u64;
                    while !done.get() {
                        match wal.maintain(0).await {
                            Ok(()) | Err(WalError::DiskFull) => runs += 1,
                            Err(e) => panic!("maintenance failed beside commits: {e}"),
                        }
                        // Pacing only: the test's outcome does not depend on the interleaving found.
                        glommio::timer::sleep(std::time::Duration::from_micros(200)).await;
                    }
                    runs
                })
            };
            let mut lsn = 0u64;
            let mut acked = 0;
            let mut segments_seen = 0usize;
            for step in 0..150u64 {
                for _ in 0..(1 + step % 50) {
                    match wal.room() {
                        Room::Ready => {}
                        // The spare is still being prepared (or the batch is full): commit and
                        // let maintenance run.
                        _ => {
                            wal.commit_batch(step).await.unwrap();
                            glommio::executor().yield_task_queue_now().await;
                            continue;
                        }
                    }
                    lsn += 1;
                    wal.append(lsn, &record_for(lsn));
                }
                acked = wal.commit_batch(step).await.unwrap();
                segments_seen = segments_seen.max(wal.segment_files().len());
            }
            done.set(true);
            assert!(maintainer.await > 0);
            assert_eq!(acked, lsn);
            (acked, segments_seen)
        })
        .unwrap()
        .join()
        .unwrap();
    assert!(rotations > 3, "the workload rotated only into {rotations} segments");
    let (recovered, last) = recover_checked(&FsDir(dir.0.clone())).unwrap();
    assert_eq!(last, acked, "every acked record recovers");
    assert!(recovered.snapshot.is_none());
}
