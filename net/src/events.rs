//! EVENTS: the logged increments of one counter between two times, read from the shards' WAL
//! segments with plain file reads on a blocking thread (never on a shard's executor), page by page.
//!
//! A scan reads the owner's log, and every other shard's too when the counter is or was split (its
//! slot increments are in their logs). Each shard's log is read in lsn order; a page merges the
//! shards' next events by (time, shard, lsn). What a scan has decoded stays with it between pages
//! (`Scan`, kept by the connection's shard for `EVENTS_SCAN_IDLE_MS`), so a page costs only the
//! records it reads. The wire cursor names, per shard, the lsn below which everything was returned
//! or does not match: a page asked for with a cursor whose scan is gone (evicted, another shard,
//! a restart) rebuilds the scan from those lsns, so no event is lost or repeated either way.
//!
//! Records carry their batch's time, which is the apply time of the batch's records to the second
//! (the node seals a batch when the apply second changes). A scan returns records durable when it
//! started; batch times never decrease within a shard's log, so a batch at or after `to_ms` ends
//! that shard's part.
//!
//! What a log holds (`held_from`): every record from its first segment's first lsn `F` on. Records
//! below `F` left it in one of two ways. Retention removed them, and then all of them were older
//! than the retention horizon when removed, so no range EVENTS accepts (none starts before the
//! horizon, `beyond_retention`) misses them. Or a snapshot install replaced the log (a replica
//! resynchronised by its primary, `record_install_floor`), and then they may be recent: a range
//! that starts at or before the time of the first batch held may miss some, and is refused with
//! `history_not_held` naming the first time from which the answer is complete, never answered
//! with a silently shorter list.

use std::collections::VecDeque;
use std::fs::File;
use std::io::Read;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use tally_proto::{Event, EventKind};
use tally_wal::segment::SegmentEnd;
use tally_wal::{parse_segment_file_name, LogRecord, ReaderPosition, SegmentHeader, SegmentReader, Step};

use crate::limits::EVENTS_READ_CHUNK_BYTES;

/// Why a page could not be produced.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ScanError {
    /// The cursor does not parse or does not fit this query.
    BadCursor(String),
    /// A log file could not be read or does not decode (removed by retention meanwhile, damaged).
    Log(String),
    /// The range needs records this shard's log no longer holds (see the module doc): a range
    /// starting at `held_from_ms` or later is answered completely.
    NotHeld { shard: u16, held_from_ms: u64, why: String },
}

/// The file in a shard's directory that records the newest snapshot install: the lsn of the
/// installed snapshot, below which the log was discarded rather than aged out by retention.
pub const INSTALL_FLOOR_FILE_NAME: &str = "install-floor";

/// Records durably, in shard directory `shard_dir`, that the shard's log is being replaced by a
/// snapshot at `lsn` (everything up to `lsn` leaves the log). Called *before* the install removes
/// anything, so a crash in between leaves the record and at worst a refusal too many, never a
/// silently shorter history. Written to a temporary file, fsynced, renamed, directory fsynced.
pub fn record_install_floor(shard_dir: &Path, lsn: u64) -> std::io::Result<()> {
    use std::io::Write;
    let path = shard_dir.join(INSTALL_FLOOR_FILE_NAME);
    let tmp = shard_dir.join(format!("{INSTALL_FLOOR_FILE_NAME}.tmp"));
    let mut file = File::create(&tmp)?;
    file.write_all(format!("tally install floor v1\nlsn {lsn}\n").as_bytes())?;
    file.sync_all()?;
    drop(file);
    std::fs::rename(&tmp, &path)?;
    File::open(shard_dir)?.sync_all()
}

/// The lsn of the newest snapshot install recorded in `shard_dir`, if any.
pub fn read_install_floor(shard_dir: &Path) -> Result<Option<u64>, ScanError> {
    let path = shard_dir.join(INSTALL_FLOOR_FILE_NAME);
    let text = match std::fs::read_to_string(&path) {
        Ok(text) => text,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(ScanError::Log(format!("{}: {e}", path.display()))),
    };
    let lsn = text
        .strip_prefix("tally install floor v1\nlsn ")
        .and_then(|rest| rest.strip_suffix('\n'))
        .and_then(|lsn| lsn.parse().ok());
    match lsn {
        Some(lsn) => Ok(Some(lsn)),
        None => Err(ScanError::Log(format!(
            "{}: not an install floor record",
            path.display()
        ))),
    }
}

/// Where a shard's log stops holding complete history: the earliest `from_ms` it answers
/// completely and the first lsn it holds, or `None` when nothing but retention removed records
/// (see the module doc). `segments` are the log's segment files, `lsn_durable` its durable end.
fn held_from(
    shard: u16,
    install_floor: Option<u64>,
    segments: &[(u64, PathBuf)],
    lsn_durable: u64,
    now_ms: u64,
) -> Result<Option<Held>, ScanError> {
    let Some(floor) = install_floor else {
        return Ok(None);
    };
    match segments.first() {
        // Installed and nothing logged since: every record up to `lsn_durable` is elsewhere.
        None if lsn_durable > 0 => Ok(Some(Held {
            from_ms: now_ms,
            first_lsn: lsn_durable.saturating_add(1),
        })),
        None => Ok(None),
        // Retention has since removed the first segment after the install, and with it every
        // record the install discarded (older still): retention's horizon covers them.
        Some(&(first_lsn, _)) if first_lsn > floor + 1 => Ok(None),
        Some((first_lsn, path)) => {
            // Discarded records are at most as recent as the first batch held (batch times never
            // decrease), possibly of that very millisecond: complete from the next one.
            let header = read_header(path, shard).map_err(ScanError::Log)?;
            Ok(Some(Held {
                from_ms: header.time_ms + 1,
                first_lsn: *first_lsn,
            }))
        }
    }
}

/// See `held_from`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Held {
    from_ms: u64,
    first_lsn: u64,
}

impl Held {
    fn refuse(self, shard: u16) -> ScanError {
        ScanError::NotHeld {
            shard,
            held_from_ms: self.from_ms,
            why: format!(
                "shard {shard}'s log on this node holds its history only from lsn {} on (the records before were replaced by a snapshot from the primary, or aged out): a range from {} ms on is complete here; ask from then, or ask the primary",
                self.first_lsn, self.from_ms
            ),
        }
    }
}

/// One shard's log, as far as a scan has read it.
pub struct ShardScan {
    pub shard: u16,
    dir: PathBuf,
    /// Records above this lsn are not returned (the shard's durable lsn when the scan started).
    lsn_bound: u64,
    /// Everything below this lsn was returned or does not match (the lsn of the first event in
    /// `ahead`, or where reading continues when `ahead` is empty).
    next_lsn: u64,
    segment: Option<OpenSegment>,
    ahead: VecDeque<Event>,
    done: bool,
}

/// The segment a shard scan reads: its bytes as far as read, and where decoding stands.
struct OpenSegment {
    first_lsn: u64,
    file: File,
    file_len: u64,
    bytes: Vec<u8>,
    position: Option<ReaderPosition>,
    /// The last read stopped inside a batch: read further before decoding on.
    needs_more: bool,
    /// Every batch of the segment was read.
    finished: bool,
}

/// A scan of one query, kept between pages.
pub struct Scan {
    pub id: u64,
    pub name: Vec<u8>,
    pub from_ms: u64,
    pub to_ms: u64,
    pub shards: Vec<ShardScan>,
}

/// Where a new shard scan starts.
pub enum Start {
    /// The first record at or after this time.
    Time(u64),
    /// The record with this lsn (from a cursor).
    Lsn(u64),
}

impl ShardScan {
    /// A scan of shard `shard`'s log in `dir` up to `lsn_bound`, from `start`. `NotHeld` when the
    /// log does not hold everything `start` needs (see the module doc); `now_ms` is the node's
    /// time, for a log that holds no record at all.
    pub fn new(shard: u16, dir: PathBuf, lsn_bound: u64, start: Start, now_ms: u64) -> Result<ShardScan, ScanError> {
        let mut scan = ShardScan {
            shard,
            dir,
            lsn_bound,
            next_lsn: 0,
            segment: None,
            ahead: VecDeque::new(),
            done: false,
        };
        let segments = scan.segments()?;
        if let Some(held) = held_from(shard, read_install_floor(&scan.dir)?, &segments, lsn_bound, now_ms)? {
            let missing = match start {
                Start::Time(time_ms) => time_ms < held.from_ms,
                Start::Lsn(lsn) => lsn < held.first_lsn,
            };
            if missing {
                return Err(held.refuse(shard));
            }
        }
        // A cursor past records that left the log since its page (retention, mid-stream).
        if let (Start::Lsn(lsn), Some((first_lsn, path))) = (&start, segments.first()) {
            if lsn < first_lsn && *lsn <= lsn_bound {
                let header = read_header(path, shard).map_err(ScanError::Log)?;
                let held = Held {
                    from_ms: header.time_ms + 1,
                    first_lsn: *first_lsn,
                };
                return Err(held.refuse(shard));
            }
        }
        let first = match start {
            Start::Lsn(lsn) => {
                scan.next_lsn = lsn;
                segments
                    .iter()
                    .rev()
                    .find(|(first, _)| *first <= lsn)
                    .or(segments.first())
            }
            Start::Time(time_ms) => {
                // Batch times never decrease: the segment holding `time_ms` is the last one whose
                // first batch is not later.
                let mut chosen = segments.first();
                for segment in &segments {
                    match read_header(&segment.1, shard) {
                        Ok(header) if header.time_ms <= time_ms => chosen = Some(segment),
                        Ok(_) => break,
                        Err(e) => return Err(ScanError::Log(e)),
                    }
                }
                chosen
            }
        };
        match first {
            Some((first_lsn, path)) => scan.open(*first_lsn, path)?,
            None => scan.done = true,
        }
        Ok(scan)
    }

    pub fn next_lsn(&self) -> u64 {
        self.ahead.front().map_or(self.next_lsn, |event| event.lsn)
    }

    fn segments(&self) -> Result<Vec<(u64, PathBuf)>, ScanError> {
        let entries =
            std::fs::read_dir(&self.dir).map_err(|e| ScanError::Log(format!("{}: {e}", self.dir.display())))?;
        let mut segments: Vec<(u64, PathBuf)> = entries
            .filter_map(|entry| entry.ok())
            .filter_map(|entry| {
                let name = entry.file_name().into_string().ok()?;
                Some((parse_segment_file_name(&name)?, entry.path()))
            })
            .collect();
        segments.sort();
        Ok(segments)
    }

    fn open(&mut self, first_lsn: u64, path: &Path) -> Result<(), ScanError> {
        let file = File::open(path).map_err(|e| ScanError::Log(format!("{}: {e}", path.display())))?;
        let file_len = file
            .metadata()
            .map_err(|e| ScanError::Log(format!("{}: {e}", path.display())))?
            .len();
        self.segment = Some(OpenSegment {
            first_lsn,
            file,
            file_len,
            bytes: Vec::new(),
            position: None,
            needs_more: false,
            finished: false,
        });
        Ok(())
    }

    /// Decodes batches until at least one event is ahead or this shard's part is done.
    fn fill(&mut self, name: &[u8], from_ms: u64, to_ms: u64) -> Result<(), ScanError> {
        while self.ahead.is_empty() && !self.done {
            let Some(segment) = self.segment.as_mut() else {
                self.done = true;
                break;
            };
            if segment.bytes.is_empty() || segment.needs_more {
                segment.read_more()?;
            }
            let mut reader = match &segment.position {
                None => SegmentReader::new(&segment.bytes, self.shard),
                Some(position) => SegmentReader::resume(&segment.bytes, self.shard, position),
            }
            .map_err(|e| ScanError::Log(format!("segment {} of shard {}: {e}", segment.first_lsn, self.shard)))?;
            let (shard, lsn_bound, start_lsn) = (self.shard, self.lsn_bound, self.next_lsn);
            let ahead = &mut self.ahead;
            let mut past_end = false;
            let mut read_lsn_next = reader.lsn_next();
            // A few batches per pass: enough to amortise the resume, few enough to stop soon
            // after the page is full.
            for _ in 0..64 {
                let step = reader
                    .next_batch(&mut |entry| {
                        if entry.lsn < start_lsn || entry.lsn > lsn_bound {
                            return;
                        }
                        if entry.time_ms >= to_ms {
                            past_end = true;
                            return;
                        }
                        if entry.time_ms < from_ms {
                            return;
                        }
                        let (record_name, delta, kind, key) = match entry.record {
                            LogRecord::Incr { name, delta, key, .. } => {
                                (name, delta, EventKind::Incr, key.map(|k| k.key))
                            }
                            LogRecord::AddBounded { name, delta, key, .. } => (name, delta, EventKind::AddBounded, key),
                            LogRecord::SlotIncr { name, delta, .. } => (name, delta, EventKind::SplitPart, None),
                            _ => return,
                        };
                        if record_name == name {
                            ahead.push_back(Event {
                                time_ms: entry.time_ms,
                                shard,
                                lsn: entry.lsn,
                                delta,
                                kind,
                                key,
                            });
                        }
                    })
                    .map_err(|e| ScanError::Log(format!("segment {} of shard {shard}: {e}", segment.first_lsn)))?;
                read_lsn_next = reader.lsn_next();
                match step {
                    Step::Batch { .. } if past_end || read_lsn_next > lsn_bound => {
                        past_end = true;
                        break;
                    }
                    Step::Batch { .. } => {
                        if !ahead.is_empty() {
                            break;
                        }
                    }
                    Step::End(end) => {
                        let zeros = matches!(end, SegmentEnd::Zeros { .. });
                        if !zeros && (segment.bytes.len() as u64) < segment.file_len {
                            // The read stopped inside a batch: read further and go on from it.
                            segment.needs_more = true;
                        } else {
                            segment.finished = true;
                        }
                        break;
                    }
                }
            }
            let mut position = segment.position.take().unwrap_or_default();
            reader.position_into(&mut position);
            segment.position = Some(position);
            self.next_lsn = self.next_lsn.max(read_lsn_next);
            if past_end || read_lsn_next > lsn_bound {
                self.done = true;
            } else if segment.finished {
                let next = read_lsn_next;
                self.segment = None;
                let segments = self.segments()?;
                match segments.iter().find(|(first, _)| *first == next) {
                    Some((first, path)) => self.open(*first, path)?,
                    None => self.done = true,
                }
            }
        }
        Ok(())
    }
}

impl OpenSegment {
    fn read_more(&mut self) -> Result<(), ScanError> {
        let have = self.bytes.len() as u64;
        let want = (have.max(EVENTS_READ_CHUNK_BYTES) * 2).min(self.file_len) - have;
        let mut chunk = vec![0u8; want as usize];
        self.file
            .read_exact_at(&mut chunk, have)
            .map_err(|e| ScanError::Log(format!("segment {}: read: {e}", self.first_lsn)))?;
        self.bytes.extend_from_slice(&chunk);
        self.needs_more = false;
        Ok(())
    }
}

fn read_header(path: &Path, shard: u16) -> Result<SegmentHeader, String> {
    let mut head = Vec::with_capacity(tally_wal::limits::SEGMENT_HEADER_BYTES as usize);
    File::open(path)
        .and_then(|file| {
            file.take(tally_wal::limits::SEGMENT_HEADER_BYTES)
                .read_to_end(&mut head)
        })
        .map_err(|e| format!("{}: {e}", path.display()))?;
    let header = SegmentHeader::decode(&head).map_err(|e| format!("{}: {e}", path.display()))?;
    if header.shard != shard {
        return Err(format!("{}: belongs to shard {}", path.display(), header.shard));
    }
    Ok(header)
}

impl Scan {
    /// Up to `limit` events in (time, shard, lsn) order, and whether the scan is over.
    pub fn page(&mut self, limit: usize) -> Result<(Vec<Event>, bool), ScanError> {
        let mut out = Vec::with_capacity(limit.min(1024));
        while out.len() < limit {
            let mut best: Option<usize> = None;
            for i in 0..self.shards.len() {
                self.shards[i].fill(&self.name, self.from_ms, self.to_ms)?;
                if let Some(head) = self.shards[i].ahead.front() {
                    let key = (head.time_ms, head.shard, head.lsn);
                    let better = match best {
                        None => true,
                        Some(b) => {
                            let other = self.shards[b].ahead.front().expect("best has an event");
                            key < (other.time_ms, other.shard, other.lsn)
                        }
                    };
                    if better {
                        best = Some(i);
                    }
                }
            }
            let Some(best) = best else {
                return Ok((out, true));
            };
            let shard = &mut self.shards[best];
            let event = shard.ahead.pop_front().expect("chosen for its event");
            shard.next_lsn = shard.next_lsn.max(event.lsn + 1);
            out.push(event);
        }
        let over = self.shards.iter().all(|s| s.done && s.ahead.is_empty());
        Ok((out, over))
    }

    /// The wire cursor for the page after this one.
    pub fn cursor(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(11 + 10 * self.shards.len());
        out.push(CURSOR_VERSION);
        out.extend_from_slice(&self.id.to_le_bytes());
        out.extend_from_slice(&(self.shards.len() as u16).to_le_bytes());
        for shard in &self.shards {
            out.extend_from_slice(&shard.shard.to_le_bytes());
            out.extend_from_slice(&shard.next_lsn().to_le_bytes());
        }
        out
    }

    /// Whether this scan stands exactly where `cursor` says.
    pub fn matches(&self, cursor: &Cursor, name: &[u8], from_ms: u64, to_ms: u64) -> bool {
        self.id == cursor.scan_id
            && self.name == name
            && self.from_ms == from_ms
            && self.to_ms == to_ms
            && self.shards.len() == cursor.positions.len()
            && self
                .shards
                .iter()
                .zip(&cursor.positions)
                .all(|(s, &(shard, lsn))| s.shard == shard && s.next_lsn() == lsn)
    }
}

const CURSOR_VERSION: u8 = 1;

/// A decoded EVENTS cursor: the scan it continues and each shard's next lsn.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cursor {
    pub scan_id: u64,
    pub positions: Vec<(u16, u64)>,
}

impl Cursor {
    pub fn parse(bytes: &[u8], shards: u16) -> Result<Cursor, ScanError> {
        let bad = |why: &str| ScanError::BadCursor(format!("not an EVENTS cursor of this node: {why}"));
        if bytes.len() < 11 || bytes[0] != CURSOR_VERSION {
            return Err(bad("unknown version or truncated"));
        }
        let scan_id = u64::from_le_bytes(bytes[1..9].try_into().expect("8 bytes"));
        let count = u16::from_le_bytes([bytes[9], bytes[10]]) as usize;
        let rest = &bytes[11..];
        if rest.len() != count * 10 || count == 0 || count > shards as usize {
            return Err(bad("wrong length"));
        }
        let mut positions = Vec::with_capacity(count);
        for chunk in rest.chunks_exact(10) {
            let shard = u16::from_le_bytes([chunk[0], chunk[1]]);
            let lsn = u64::from_le_bytes(chunk[2..10].try_into().expect("8 bytes"));
            if shard >= shards || positions.iter().any(|&(s, _)| s == shard) {
                return Err(bad("a shard out of range or repeated"));
            }
            positions.push((shard, lsn));
        }
        Ok(Cursor { scan_id, positions })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tally_engine::Keyed;
    use tally_wal::segment::segment_file_name;
    use tally_wal::BatchEncoder;

    /// A segment being built: its first lsn and bytes.
    type Image = Option<(u64, Vec<u8>)>;

    /// Writes shard `shard`'s log into `dir`: `seconds` batches (one per second from `t0`) of
    /// `per_batch` records each, in segments small enough that the log spans several. Records
    /// alternate over names "a", "b" and split parts of "a"; every fourth INCR is keyed. Returns
    /// the events of "a" in lsn order.
    fn write_log(dir: &Path, shard: u16, t0: u64, seconds: u64, per_batch: u64) -> Vec<Event> {
        std::fs::create_dir_all(dir).unwrap();
        let segment_bytes = tally_wal::limits::SEGMENT_BYTES_MIN;
        let mut encoder = BatchEncoder::new(None, 0, 0, 0, segment_bytes);
        let mut salt = 1;
        encoder.grant_rotation(salt);
        let mut image: Image = None;
        let flush = |image: &mut Image| {
            if let Some((first, bytes)) = image.take() {
                std::fs::write(dir.join(segment_file_name(first)), bytes).unwrap();
            }
        };
        let (mut lsn, mut expected) = (0u64, Vec::new());
        for second in 0..seconds {
            let time_ms = t0 + second * 1_000;
            for i in 0..per_batch {
                lsn += 1;
                let delta = (lsn % 9) as i64 - 4;
                let (record, event) = match i % 3 {
                    0 => {
                        let key = (lsn % 4 == 0).then_some(Keyed {
                            key: u128::from(lsn) * 7,
                            value: 0,
                        });
                        let record = LogRecord::Incr {
                            name: b"a",
                            name_id: 1,
                            delta,
                            key,
                        };
                        (record, Some((EventKind::Incr, key.map(|k| k.key))))
                    }
                    1 => {
                        let record = LogRecord::Incr {
                            name: b"b",
                            name_id: 2,
                            delta,
                            key: None,
                        };
                        (record, None)
                    }
                    _ => {
                        let record = LogRecord::SlotIncr {
                            name: b"a",
                            name_id: 1,
                            epoch: 1,
                            delta,
                        };
                        (record, Some((EventKind::SplitPart, None)))
                    }
                };
                if encoder.room() != tally_wal::Room::Ready {
                    // Full: seal what is buffered (same second) and go on in the next batch.
                    let sealed = encoder.seal(time_ms).unwrap();
                    place(&mut image, &sealed, shard, &flush);
                    encoder.recycle(sealed);
                    if !encoder.rotation_granted() {
                        salt += 1;
                        encoder.grant_rotation(salt);
                    }
                }
                encoder.append(lsn, &record);
                if let Some((kind, key)) = event {
                    expected.push(Event {
                        time_ms,
                        shard,
                        lsn,
                        delta,
                        kind,
                        key,
                    });
                }
            }
            let sealed = encoder.seal(time_ms).unwrap();
            place(&mut image, &sealed, shard, &flush);
            encoder.recycle(sealed);
            if !encoder.rotation_granted() {
                salt += 1;
                encoder.grant_rotation(salt);
            }
        }
        flush(&mut image);
        expected
    }

    fn place(image: &mut Image, sealed: &tally_wal::SealedBatch, shard: u16, flush: &dyn Fn(&mut Image)) {
        if sealed.starts_segment {
            flush(image);
            let mut bytes = vec![0u8; sealed.segment_bytes as usize];
            SegmentHeader {
                shard,
                first_lsn: sealed.segment_first_lsn,
                salt: sealed.segment_salt,
                time_ms: sealed.time_ms,
                segment_bytes: sealed.segment_bytes,
            }
            .encode(&mut bytes);
            *image = Some((sealed.segment_first_lsn, bytes));
        }
        let (_, bytes) = image.as_mut().expect("a segment is open");
        let at = sealed.offset as usize;
        bytes[at..at + sealed.bytes().len()].copy_from_slice(sealed.bytes());
    }

    fn temp_dir(tag: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("tally-events-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        dir
    }

    /// Pages of a kept scan, and pages each rebuilt from the previous page's cursor (the scan was
    /// evicted), return exactly the logged events of the name in the range, merged across shards
    /// by (time, shard, lsn), over several segments; nothing above the durable bound.
    #[test]
    fn pages_kept_or_rebuilt_from_cursors_return_exactly_the_logged_events() {
        let root = temp_dir("pages");
        let t0 = 1_700_000_000_000;
        let dirs = [root.join("shard-0"), root.join("shard-1")];
        let mut expected = write_log(&dirs[0], 0, t0, 40, 700);
        expected.extend(write_log(&dirs[1], 1, t0 + 500, 40, 300));
        let segments = std::fs::read_dir(&dirs[0]).unwrap().count();
        assert!(segments >= 3, "the log spans several segments ({segments})");
        let (from_ms, to_ms) = (t0 + 5_000, t0 + 33_000);
        // Shard 1's durable bound cuts its log short.
        let bound_1 = 9_000;
        expected.retain(|e| from_ms <= e.time_ms && e.time_ms < to_ms && (e.shard == 0 || e.lsn <= bound_1));
        expected.sort_by_key(|e| (e.time_ms, e.shard, e.lsn));
        let bounds = [u64::MAX, bound_1];
        let new_scan = |starts: Vec<(u16, Start)>| Scan {
            id: 1,
            name: b"a".to_vec(),
            from_ms,
            to_ms,
            shards: starts
                .into_iter()
                .map(|(shard, start)| {
                    ShardScan::new(shard, dirs[shard as usize].clone(), bounds[shard as usize], start, 0).unwrap()
                })
                .collect(),
        };
        let fresh = || new_scan(vec![(0, Start::Time(from_ms)), (1, Start::Time(from_ms))]);
        // Kept between pages.
        let mut scan = fresh();
        let mut kept = Vec::new();
        loop {
            let (page, over) = scan.page(97).unwrap();
            assert!(page.len() <= 97);
            kept.extend(page);
            if over {
                break;
            }
        }
        assert_eq!(kept.len(), expected.len());
        assert!(kept == expected, "a kept scan returns exactly the logged events");
        // Rebuilt from the cursor after every page.
        let mut scan = fresh();
        let mut rebuilt = Vec::new();
        loop {
            let (page, over) = scan.page(61).unwrap();
            rebuilt.extend(page);
            if over {
                break;
            }
            let cursor = Cursor::parse(&scan.cursor(), 2).unwrap();
            assert!(scan.matches(&cursor, b"a", from_ms, to_ms));
            assert!(!scan.matches(&cursor, b"b", from_ms, to_ms));
            scan = new_scan(cursor.positions.iter().map(|&(s, lsn)| (s, Start::Lsn(lsn))).collect());
        }
        assert!(
            rebuilt == expected,
            "scans rebuilt from cursors lose and repeat nothing"
        );
        std::fs::remove_dir_all(&root).unwrap();
    }

    /// A log that begins after a snapshot install refuses a range it cannot answer completely,
    /// naming the first time it can (after the first batch held), and answers that range exactly;
    /// a log that only lost records to retention answers as before; a cursor past removed records
    /// is refused either way.
    #[test]
    fn a_log_that_begins_after_an_install_says_what_it_does_not_hold() {
        let root = temp_dir("floor");
        let dir = root.join("shard-0");
        let t0 = 1_700_000_000_000;
        let all = write_log(&dir, 0, t0, 30, 700);
        let mut segments: Vec<(u64, PathBuf)> = std::fs::read_dir(&dir)
            .unwrap()
            .filter_map(|e| {
                let e = e.unwrap();
                Some((parse_segment_file_name(e.file_name().to_str()?)?, e.path()))
            })
            .collect();
        segments.sort();
        assert!(segments.len() >= 3, "the log spans several segments");
        // The first two segments leave the log: as if a snapshot at `floor` replaced them.
        let first_held = segments[2].0;
        let floor = first_held - 1;
        for (_, path) in &segments[..2] {
            std::fs::remove_file(path).unwrap();
        }
        let t_first = read_header(&segments[2].1, 0).unwrap().time_ms;
        assert!(
            t_first > t0,
            "records before the floor are as recent as seconds before it"
        );
        let scan_from = |start: Start| ShardScan::new(0, dir.clone(), u64::MAX, start, t0 + 99_000);
        let drain = |mut scan: Scan| {
            let mut out = Vec::new();
            loop {
                let (page, over) = scan.page(500).unwrap();
                out.extend(page);
                if over {
                    return out;
                }
            }
        };
        let scan_of = |shard: ShardScan, from_ms| Scan {
            id: 1,
            name: b"a".to_vec(),
            from_ms,
            to_ms: u64::MAX,
            shards: vec![shard],
        };
        // Retention alone: no refusal (what it removed is older than any range EVENTS accepts).
        assert!(scan_from(Start::Time(t0)).is_ok());
        record_install_floor(&dir, floor).unwrap();
        assert_eq!(read_install_floor(&dir).unwrap(), Some(floor));
        for from_ms in [t0, t_first - 1, t_first] {
            match scan_from(Start::Time(from_ms)) {
                Err(ScanError::NotHeld {
                    shard,
                    held_from_ms,
                    why,
                }) => {
                    assert_eq!((shard, held_from_ms), (0, t_first + 1));
                    assert!(why.contains(&format!("lsn {first_held}")), "{why}");
                }
                Err(e) => panic!("from {from_ms}: {e:?}"),
                Ok(_) => panic!("from {from_ms}: answered although records before lsn {first_held} are gone"),
            }
        }
        let held = drain(scan_of(scan_from(Start::Time(t_first + 1)).unwrap(), t_first + 1));
        let expected: Vec<Event> = all.iter().filter(|e| e.time_ms > t_first).cloned().collect();
        assert!(!expected.is_empty());
        assert!(held == expected, "the range it accepts is answered exactly");
        // A cursor standing before the first lsn held, with or without the install record.
        assert!(matches!(scan_from(Start::Lsn(floor)), Err(ScanError::NotHeld { .. })));
        assert!(scan_from(Start::Lsn(first_held)).is_ok());
        // Retention later removed the first segment after the install: its horizon covers both.
        std::fs::remove_file(&segments[2].1).unwrap();
        assert!(scan_from(Start::Time(t0)).is_ok());
        assert!(matches!(
            scan_from(Start::Lsn(first_held)),
            Err(ScanError::NotHeld { .. })
        ));
        // Installed and nothing logged since: nothing before now is held.
        for (_, path) in &segments[3..] {
            std::fs::remove_file(path).unwrap();
        }
        record_install_floor(&dir, 9_000).unwrap();
        match scan_from(Start::Time(t0 + 50_000)) {
            Err(ScanError::NotHeld { held_from_ms, .. }) => assert_eq!(held_from_ms, t0 + 99_000),
            other => panic!("{:?}", other.err()),
        }
        assert!(
            ShardScan::new(0, dir.clone(), 0, Start::Time(t0), t0).is_ok(),
            "an empty log lacks nothing"
        );
        std::fs::remove_dir_all(&root).unwrap();
    }

    #[test]
    fn cursors_round_trip_and_bad_ones_are_refused() {
        let scan = Scan {
            id: 77,
            name: b"n".to_vec(),
            from_ms: 1,
            to_ms: 2,
            shards: Vec::new(),
        };
        let mut bytes = scan.cursor();
        // A scan with no shards is never made; append one position by hand.
        bytes[9] = 1;
        bytes.extend_from_slice(&1u16.to_le_bytes());
        bytes.extend_from_slice(&9u64.to_le_bytes());
        let cursor = Cursor::parse(&bytes, 2).unwrap();
        assert_eq!(
            cursor,
            Cursor {
                scan_id: 77,
                positions: vec![(1, 9)]
            }
        );
        assert!(Cursor::parse(&bytes, 1).is_err(), "shard 1 of a 1-shard node");
        assert!(Cursor::parse(&bytes[..bytes.len() - 1], 2).is_err());
        assert!(Cursor::parse(b"", 2).is_err());
        let mut other = bytes.clone();
        other[0] = 9;
        assert!(Cursor::parse(&other, 2).is_err());
        for cut in 0..bytes.len() {
            let _ = Cursor::parse(&bytes[..cut], 4);
        }
    }
}
