//! Recovery: from a shard directory's files to the newest valid snapshot, the records after it, and
//! the point where appending continues. docs/wal.md argues case by case why this is correct.
//!
//! Recovery reads whole files with plain (blocking) reads: it runs before the executors start. It
//! holds one segment in memory at a time.

use std::collections::BTreeMap;
use std::io::{self, Read};
use std::path::PathBuf;

use crate::ack_mark::{read_ack_mark, AckMark, ACK_MARK_FILE_NAME};
use crate::error::WalError;
use crate::limits::{BLOCK_BYTES, SEGMENT_HEADER_BYTES};
use crate::record::Entry;
use crate::segment::{
    self, parse_segment_file_name, SegmentEnd, SegmentHeader, SegmentReader, Step, PREALLOC_FILE_NAME,
};
use crate::snapshot::{decode_snapshot, is_snapshot_tmp_file_name, parse_snapshot_file_name};

/// The files of one shard directory, as recovery reads them.
pub trait RecoverySource {
    fn list(&self) -> io::Result<Vec<String>>;
    fn read(&self, name: &str) -> io::Result<Vec<u8>>;
    /// Up to `len` bytes from the start of the file.
    fn read_head(&self, name: &str, len: usize) -> io::Result<Vec<u8>> {
        let mut bytes = self.read(name)?;
        bytes.truncate(len);
        Ok(bytes)
    }
}

/// A shard directory on the real file system.
#[derive(Debug, Clone)]
pub struct FsDir(pub PathBuf);

impl RecoverySource for FsDir {
    fn list(&self) -> io::Result<Vec<String>> {
        let mut names = Vec::new();
        for entry in std::fs::read_dir(&self.0)? {
            if let Ok(name) = entry?.file_name().into_string() {
                names.push(name);
            }
        }
        Ok(names)
    }

    fn read(&self, name: &str) -> io::Result<Vec<u8>> {
        std::fs::read(self.0.join(name))
    }

    fn read_head(&self, name: &str, len: usize) -> io::Result<Vec<u8>> {
        let mut bytes = Vec::with_capacity(len);
        std::fs::File::open(self.0.join(name))?
            .take(len as u64)
            .read_to_end(&mut bytes)?;
        Ok(bytes)
    }
}

/// Named byte images (tests and tools).
impl RecoverySource for BTreeMap<String, Vec<u8>> {
    fn list(&self) -> io::Result<Vec<String>> {
        Ok(self.keys().cloned().collect())
    }

    fn read(&self, name: &str) -> io::Result<Vec<u8>> {
        self.get(name)
            .cloned()
            .ok_or_else(|| io::Error::new(io::ErrorKind::NotFound, name.to_string()))
    }
}

/// The snapshot recovery starts from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RecoveredSnapshot {
    pub file: String,
    pub lsn: u64,
    pub body: Vec<u8>,
}

/// A torn tail that recovery cut off: the batch at `offset` of `file` was being written when the
/// process or machine stopped, and nothing valid follows it. Blocks `offset..damaged_to` hold its
/// remains and are zeroed before appending continues there. The log ends at `Recovered::lsn_last`,
/// at or above the acknowledged mark (`Recovered::lsn_acked`; below it recovery refuses instead).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TornTail {
    pub file: String,
    pub offset: u64,
    pub damaged_to: u64,
    pub detail: &'static str,
}

/// The segment appending continues in.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OpenSegment {
    pub file: String,
    pub first_lsn: u64,
    pub salt: u64,
    pub segment_bytes: u64,
    /// Where the next batch goes.
    pub offset: u64,
    /// Names the segment's dictionary holds (new names continue from this id).
    pub dict_len: u32,
    /// The time of its newest batch.
    pub time_last_ms: u64,
    /// Bytes `offset..zero_to` hold the remains of a torn write; zero them before appending.
    pub zero_to: u64,
}

/// Where appending continues.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AppendPoint {
    /// The lsn of the next record.
    pub lsn_next: u64,
    /// `None`: the next batch starts a new segment.
    pub segment: Option<OpenSegment>,
}

/// One segment that stays, for retention.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SegmentSummary {
    pub file: String,
    pub first_lsn: u64,
    /// The time of the segment's first batch (from its header).
    pub time_first_ms: u64,
    /// The time of its newest batch, if recovery read the segment (segments wholly covered by the
    /// snapshot are not read: the next segment's `time_first_ms` bounds theirs).
    pub time_last_ms: Option<u64>,
}

/// What recovery found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Recovered {
    pub snapshot: Option<RecoveredSnapshot>,
    /// The lsns of the snapshot files at or below the chosen one, oldest first (the older ones were
    /// not read), for snapshot retention.
    pub snapshot_lsns: Vec<u64>,
    /// Snapshots newer than the one used, that were ignored (file, why).
    pub bad_snapshots: Vec<(String, String)>,
    pub torn_tail: Option<TornTail>,
    pub append: AppendPoint,
    /// Records passed to the visitor (those after the snapshot).
    pub records_replayed: u64,
    /// The segments that stay, oldest first.
    pub segments: Vec<SegmentSummary>,
    /// Files to remove before appending: temporary snapshots, the preallocated next segment, and
    /// segments after a torn tail (which hold no valid batch).
    pub stale_files: Vec<String>,
    /// The acknowledged mark's lsn (0 without a valid mark): every lsn up to it was durable before
    /// the crash, so the recovered log reaches at least this far (recovery refuses otherwise).
    pub lsn_acked: u64,
    /// The newest valid copy of the mark, which the writer continues from.
    pub ack_mark: Option<AckMark>,
    /// Whether the mark file exists (the writer opens it, or creates it if not).
    pub ack_mark_exists: bool,
    /// Damaged copies of the mark that were ignored (why). One is the trace of a torn mark write;
    /// with both damaged the bound is unknown (`lsn_acked` 0), which the node reports.
    pub ack_mark_damaged: Vec<String>,
}

impl Recovered {
    /// The lsn of the last record (or of the snapshot, when the log ends there).
    pub fn lsn_last(&self) -> u64 {
        self.append.lsn_next - 1
    }
}

fn read(src: &impl RecoverySource, name: &str) -> Result<Vec<u8>, WalError> {
    src.read(name).map_err(|e| WalError::io("read", name, e))
}

/// The first valid batch in any of `names` (their headers may be damaged: the salt is taken from
/// either copy of the header, whatever their checksums say).
fn find_valid_batch_in(src: &impl RecoverySource, names: &[String]) -> Result<Option<(String, u64)>, WalError> {
    for name in names {
        let bytes = read(src, name)?;
        if let Some(offset) = find_valid_batch_anyhow(&bytes) {
            return Ok(Some((name.clone(), offset)));
        }
    }
    Ok(None)
}

fn find_valid_batch_anyhow(bytes: &[u8]) -> Option<u64> {
    SegmentHeader::salts_unchecked(bytes)
        .into_iter()
        .find_map(|salt| segment::find_valid_batch(bytes, SEGMENT_HEADER_BYTES, salt))
}

/// Recovers one shard directory. Records after the chosen snapshot go to `visit` in lsn order.
///
/// On `Err` the directory must not be served, and whatever `visit` was given must be thrown away:
/// corruption found late in the log is only known after earlier records were visited.
pub fn recover(src: &impl RecoverySource, shard: u16, visit: impl FnMut(&Entry<'_>)) -> Result<Recovered, WalError> {
    recover_from_snapshot(src, shard, |_| {}, visit)
}

/// `recover`, calling `on_snapshot` with the chosen snapshot (or `None`) once, before the first
/// record is visited, so a caller can build its state from the snapshot and replay the records
/// into it as they come, without holding them.
///
/// Fails with `AckedLost` when the log ends below the acknowledged mark: damage (a truncated or
/// deleted segment, a zeroed or flipped block at the end) took records that were durable.
pub fn recover_from_snapshot(
    src: &impl RecoverySource,
    shard: u16,
    on_snapshot: impl FnOnce(Option<&RecoveredSnapshot>),
    visit: impl FnMut(&Entry<'_>),
) -> Result<Recovered, WalError> {
    let mut names = src.list().map_err(|e| WalError::io("list", "shard directory", e))?;
    names.sort();
    let ack_mark_exists = names.iter().any(|n| n == ACK_MARK_FILE_NAME);
    let ack = if ack_mark_exists {
        read_ack_mark(&read(src, ACK_MARK_FILE_NAME)?, shard)
    } else {
        Default::default()
    };
    let lsn_acked = ack.mark.map_or(0, |m| m.lsn_acked);
    let mut recovered = scan(src, shard, names, lsn_acked, on_snapshot, visit)?;
    recovered.lsn_acked = lsn_acked;
    recovered.ack_mark = ack.mark;
    recovered.ack_mark_exists = ack_mark_exists;
    recovered.ack_mark_damaged = ack.damaged;
    let lsn_last = recovered.lsn_last();
    if lsn_last < lsn_acked {
        let (file, offset, detail) = match (&recovered.torn_tail, &recovered.append.segment) {
            (Some(torn), _) => (torn.file.clone(), torn.offset, torn.detail.to_string()),
            (None, Some(open)) => (
                open.file.clone(),
                open.offset,
                "the newest segment ends in zeros there (a zeroed block, or a later segment file is missing)"
                    .to_string(),
            ),
            (None, None) => (
                "shard directory".to_string(),
                0,
                "no segment holds them (segment files are missing)".to_string(),
            ),
        };
        return Err(WalError::AckedLost {
            file,
            offset,
            detail,
            lsn_last,
            lsn_acked,
            segment_bytes_truncated_from: None,
        });
    }
    Ok(recovered)
}

/// The log's files in order, from the snapshot to the end of the log. `lsn_acked` only words the
/// error for a truncated segment; the caller compares the result with it.
fn scan(
    src: &impl RecoverySource,
    shard: u16,
    names: Vec<String>,
    lsn_acked: u64,
    on_snapshot: impl FnOnce(Option<&RecoveredSnapshot>),
    mut visit: impl FnMut(&Entry<'_>),
) -> Result<Recovered, WalError> {
    let mut segments: Vec<(u64, String)> = Vec::new();
    let mut snapshots: Vec<(u64, String)> = Vec::new();
    let mut stale_files = Vec::new();
    for name in names {
        if let Some(lsn) = parse_segment_file_name(&name) {
            segments.push((lsn, name));
        } else if let Some(lsn) = parse_snapshot_file_name(&name) {
            snapshots.push((lsn, name));
        } else if is_snapshot_tmp_file_name(&name) || name == PREALLOC_FILE_NAME {
            stale_files.push(name);
        }
    }

    // The newest snapshot whose checksums hold.
    let mut snapshot = None;
    let mut bad_snapshots = Vec::new();
    for (lsn, name) in snapshots.iter().rev() {
        let bytes = read(src, name)?;
        match decode_snapshot(&bytes, shard) {
            Ok((header, body)) if header.lsn == *lsn => {
                snapshot = Some(RecoveredSnapshot {
                    file: name.clone(),
                    lsn: *lsn,
                    body: body.to_vec(),
                });
                break;
            }
            Ok(_) => bad_snapshots.push((name.clone(), "lsn in the header differs from the file name".to_string())),
            Err(e) => bad_snapshots.push((name.clone(), e.to_string())),
        }
    }
    let lsn_snapshot = snapshot.as_ref().map_or(0, |s| s.lsn);
    let replay_from = lsn_snapshot + 1;
    on_snapshot(snapshot.as_ref());

    let snapshot_lsns = match &snapshot {
        Some(chosen) => snapshots
            .iter()
            .map(|(lsn, _)| *lsn)
            .filter(|lsn| *lsn <= chosen.lsn)
            .collect(),
        None => Vec::new(),
    };
    let mut recovered = Recovered {
        snapshot,
        snapshot_lsns,
        bad_snapshots,
        torn_tail: None,
        append: AppendPoint {
            lsn_next: replay_from,
            segment: None,
        },
        records_replayed: 0,
        segments: Vec::new(),
        stale_files,
        lsn_acked: 0,
        ack_mark: None,
        ack_mark_exists: false,
        ack_mark_damaged: Vec::new(),
    };
    if segments.is_empty() {
        return Ok(recovered);
    }

    // Replay starts in the newest segment that begins at or before replay_from.
    let Some(start) = segments.iter().rposition(|(first, _)| *first <= replay_from) else {
        let (first, name) = &segments[0];
        return Err(WalError::corruption(
            name,
            0,
            format!("the log starts at lsn {first} but no valid snapshot covers the lsns before it (newest valid snapshot: {lsn_snapshot})"),
        ));
    };
    // Segments wholly covered by the snapshot are not read, only their headers (for retention).
    for (first, name) in &segments[..start] {
        let head = src
            .read_head(name, SEGMENT_HEADER_BYTES as usize)
            .map_err(|e| WalError::io("read", name, e))?;
        let header = SegmentHeader::decode(&head).map_err(|e| WalError::corruption(name, 0, e.to_string()))?;
        if header.shard != shard || header.first_lsn != *first {
            return Err(WalError::corruption(
                name,
                0,
                "segment header does not match its file name or shard",
            ));
        }
        recovered.segments.push(SegmentSummary {
            file: name.clone(),
            first_lsn: *first,
            time_first_ms: header.time_ms,
            time_last_ms: None,
        });
    }

    let mut lsn_next = segments[start].0;
    for k in start..segments.len() {
        let (first, name) = &segments[k];
        let later: Vec<String> = segments[k + 1..].iter().map(|(_, n)| n.clone()).collect();
        if *first != lsn_next {
            return Err(WalError::corruption(
                name,
                0,
                format!(
                    "lsn gap: the previous segment ends at lsn {}, this one starts at {first}",
                    lsn_next - 1
                ),
            ));
        }
        let bytes = read(src, name)?;
        if let Ok(header) = SegmentHeader::decode(&bytes) {
            if header.shard != shard || header.first_lsn != *first {
                return Err(WalError::corruption(
                    name,
                    0,
                    "segment header does not match its file name or shard",
                ));
            }
        }
        let mut reader = match SegmentReader::new(&bytes, shard) {
            Ok(reader) => reader,
            Err(e) => {
                // A damaged header: a torn rotation if no valid batch is in this segment or after it.
                if let Some(offset) = find_valid_batch_anyhow(&bytes) {
                    return Err(WalError::corruption(
                        name,
                        0,
                        format!("{e}, but a valid batch follows at byte {offset}"),
                    ));
                }
                if let Some((file, offset)) = find_valid_batch_in(src, &later)? {
                    return Err(WalError::corruption(
                        name,
                        0,
                        format!("{e}, but {file} holds a valid batch at byte {offset}"),
                    ));
                }
                recovered.torn_tail = Some(TornTail {
                    file: name.clone(),
                    offset: 0,
                    damaged_to: bytes.len() as u64,
                    detail: "bad segment header",
                });
                recovered.stale_files.push(name.clone());
                recovered.stale_files.extend(later);
                recovered.append = AppendPoint {
                    lsn_next,
                    segment: None,
                };
                break;
            }
        };
        if reader.header().first_lsn != *first {
            return Err(WalError::corruption(
                name,
                0,
                "segment header's first_lsn differs from the file name",
            ));
        }
        let mut time_last_ms = reader.header().time_ms;
        let mut replayed = 0u64;
        let end = loop {
            let step = reader.next_batch(&mut |entry: Entry<'_>| {
                if entry.lsn >= replay_from {
                    visit(&entry);
                    replayed += 1;
                }
            });
            match step {
                Ok(Step::Batch { time_ms, .. }) => time_last_ms = time_ms,
                Ok(Step::End(end)) => break end,
                Err(e) => {
                    return Err(WalError::corruption(name, reader.offset(), e.to_string()));
                }
            }
        };
        recovered.records_replayed += replayed;
        lsn_next = reader.lsn_next();
        let header = *reader.header();
        // A segment gets its name only after it was preallocated and synced (docs/wal.md, W4), so
        // a crash never leaves one shorter than its header says: this is damage, whatever lies
        // behind the cut, and the bytes that would tell what was lost are gone.
        if (bytes.len() as u64) < header.segment_bytes {
            let lsn_last = lsn_next - 1;
            let detail = format!(
                "the segment is {} bytes, shorter than the {} it was preallocated with: the file was truncated (damage, never a torn write)",
                bytes.len(),
                header.segment_bytes
            );
            if lsn_last < lsn_acked {
                return Err(WalError::AckedLost {
                    file: name.clone(),
                    offset: end.offset(),
                    detail,
                    lsn_last,
                    lsn_acked,
                    segment_bytes_truncated_from: Some(header.segment_bytes),
                });
            }
            return Err(WalError::corruption(
                name,
                end.offset(),
                format!(
                    "{detail}; its records end at lsn {lsn_last}, at or above the acknowledged mark {lsn_acked}, but records after it may have been acknowledged since the mark was written (to accept that loss, extend the file back to {} bytes with zeros: truncate -s {} FILE)",
                    header.segment_bytes,
                    header.segment_bytes
                ),
            ));
        }
        // Whatever ended the segment, nothing valid may follow in it.
        let after = end.offset() + BLOCK_BYTES;
        if let Some(valid) = reader.find_valid_batch(after) {
            let what = match end {
                SegmentEnd::Bad { detail, .. } => detail,
                SegmentEnd::Zeros { .. } => "a zero block",
                SegmentEnd::EndOfFile { .. } => "the end of the file",
            };
            return Err(WalError::corruption(
                name,
                end.offset(),
                format!("{what}, but a valid batch follows at byte {valid}"),
            ));
        }
        recovered.segments.push(SegmentSummary {
            file: name.clone(),
            first_lsn: *first,
            time_first_ms: header.time_ms,
            time_last_ms: Some(time_last_ms),
        });
        let mut open = OpenSegment {
            file: name.clone(),
            first_lsn: *first,
            salt: header.salt,
            segment_bytes: header.segment_bytes,
            offset: end.offset(),
            dict_len: reader.dict_len(),
            time_last_ms,
            zero_to: end.offset(),
        };
        // Zero whatever a torn write left behind the end, so the segment reads as batches then zeros.
        open.zero_to = segment::nonzero_end(&bytes[..bytes.len().min(header.segment_bytes as usize)], end.offset());
        if let SegmentEnd::Bad { offset, detail } = end {
            if let Some((file, valid)) = find_valid_batch_in(src, &later)? {
                return Err(WalError::corruption(
                    name,
                    offset,
                    format!("{detail}, but {file} holds a valid batch at byte {valid}"),
                ));
            }
            recovered.torn_tail = Some(TornTail {
                file: name.clone(),
                offset,
                damaged_to: open.zero_to,
                detail,
            });
            recovered.stale_files.extend(later);
            recovered.append = AppendPoint {
                lsn_next,
                segment: Some(open),
            };
            break;
        }
        // A zero block where the next batch would start, but non-zero blocks behind it: the
        // first block of a multi-block batch never reached the disk (or was zeroed). Cut, and say so.
        if open.zero_to > open.offset && k + 1 == segments.len() {
            recovered.torn_tail = Some(TornTail {
                file: name.clone(),
                offset: open.offset,
                damaged_to: open.zero_to,
                detail: "a zero block with non-zero blocks behind it",
            });
        }
        recovered.append = AppendPoint {
            lsn_next,
            segment: Some(open),
        };
    }
    if recovered.append.lsn_next < replay_from {
        let file = recovered
            .segments
            .last()
            .map_or_else(|| segments[start].1.clone(), |s| s.file.clone());
        return Err(WalError::corruption(
            &file,
            recovered.append.segment.as_ref().map_or(0, |s| s.offset),
            format!(
                "the log ends at lsn {}, before the snapshot's lsn {lsn_snapshot}",
                recovered.append.lsn_next - 1
            ),
        ));
    }
    Ok(recovered)
}
