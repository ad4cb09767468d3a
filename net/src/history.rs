//! The history ops, answered by the node: WINDOW and SERIES (the shards' time windows, memory and
//! files), AUDIT (the shards' reset rings) and EVENTS (the shards' logs).
//!
//! A history op is answered by the shard whose connection received it, in a task of its own, so the
//! connection's other ops are not held up (the reply still leaves in request order). Parts another
//! shard must compute (its memory's part of a window, its audit ring, whether it owns a split
//! counter) are asked for over a pair of meshes of their own, built like the op meshes (`mesh`):
//! requests on one, replies on the other, and a reply receiver only fills in local state, so the
//! bounded queues cannot deadlock. Files, both window files and log segments, are read on the
//! executor's blocking thread (`spawn_blocking`), never on a shard's executor.
//!
//! Every shard of a query is asked with the same `now_ms`, the asking shard's clock.

use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::path::PathBuf;
use std::rc::Rc;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use glommio::channels::channel_mesh::{Full, MeshBuilder, Receivers, Senders};
use glommio::channels::local_channel::{self, LocalSender};
use tally_engine::limits::AUDIT_RECORDS_MAX;
use tally_engine::window::{Partial, Query, Step, Unit, WindowError, WindowPart};
use tally_engine::{Failure, Outcome, ResetRecord};
use tally_proto::limits::{AUDIT_RECORDS_PER_REPLY_MAX, EVENTS_PER_PAGE_MAX};
use tally_proto::{shard_of, AuditRecord, ErrorCode, Reply, Request, SeriesStep, WindowUnit};

use crate::events::{Cursor, Scan, ScanError, ShardScan, Start};
use crate::limits::{
    CROSS_SHARD_QUEUE_DEPTH, EVENTS_SCANS_MAX, EVENTS_SCAN_IDLE_MS, WINDOW_DRAINS_QUEUED_MAX, WINDOW_DRAIN_MS,
};
use crate::log;
use crate::log::Level;
use crate::shard::{shutdown_requested, ShardRuntime};
use crate::windows::{add_disk, Drain, FileSet, WriterLink};

/// A history op, owned (the frame buffer it was decoded from is reused).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HistoryOp {
    Window {
        name: Vec<u8>,
        last: u32,
        unit: WindowUnit,
    },
    Series {
        name: Vec<u8>,
        from_ms: u64,
        to_ms: u64,
        step: SeriesStep,
    },
    Audit {
        name: Vec<u8>,
        from_ms: u64,
        to_ms: u64,
        limit: u16,
        cursor: Vec<u8>,
    },
    Events {
        name: Vec<u8>,
        from_ms: u64,
        to_ms: u64,
        limit: u16,
        cursor: Vec<u8>,
    },
}

impl HistoryOp {
    /// The owned copy of a history request; `None` for any other op.
    pub fn of(op: &Request<'_>) -> Option<HistoryOp> {
        Some(match *op {
            Request::Window { name, last, unit } => HistoryOp::Window {
                name: name.to_vec(),
                last,
                unit,
            },
            Request::Series {
                name,
                from_ms,
                to_ms,
                step,
            } => HistoryOp::Series {
                name: name.to_vec(),
                from_ms,
                to_ms,
                step,
            },
            Request::Audit {
                name,
                from_ms,
                to_ms,
                limit,
                cursor,
            } => HistoryOp::Audit {
                name: name.to_vec(),
                from_ms,
                to_ms,
                limit,
                cursor: cursor.to_vec(),
            },
            Request::Events {
                name,
                from_ms,
                to_ms,
                limit,
                cursor,
            } => HistoryOp::Events {
                name: name.to_vec(),
                from_ms,
                to_ms,
                limit,
                cursor: cursor.to_vec(),
            },
            _ => return None,
        })
    }
}

/// What one shard asks another for.
pub enum Ask {
    /// Its part of a window query (`Shard::window_query`).
    Part { name: Vec<u8>, query: Query, now_ms: u64 },
    /// Its reset records in [from_ms, to_ms), of `name` or (empty) of every counter.
    Audit { name: Vec<u8>, from_ms: u64, to_ms: u64 },
    /// Whether it owns `name` and the counter is or was split.
    EverSplit { name: Vec<u8> },
}

pub enum Answer {
    Part(Result<WindowPart, WindowError>),
    /// The matching records, and the earliest time from which the ring holds every reset
    /// (`audit_held_from_ms`).
    Audit {
        records: Vec<AuditRecord>,
        held_from_ms: Option<u64>,
    },
    EverSplit(bool),
}

pub struct AskMessage {
    id: u64,
    ask: Ask,
}

pub struct AnswerMessage {
    id: u64,
    answer: Answer,
}

/// What a shard's executor needs to set up its history side; built on the main thread.
pub struct HistoryStart {
    pub asks: MeshBuilder<AskMessage, Full>,
    pub answers: MeshBuilder<AnswerMessage, Full>,
    /// Every shard's window files (queries read other shards' files for split counters).
    pub files: Arc<Vec<FileSet>>,
    /// Every shard's log directory.
    pub dirs: Arc<Vec<PathBuf>>,
    /// This shard's window writer.
    pub writer: Option<WriterLink>,
    /// The log's retention: EVENTS before now minus this are refused.
    pub retention_ms: u64,
}

/// A shard's history state, part of its `ShardRuntime`.
pub struct ShardHistory {
    asks: Senders<AskMessage>,
    answers: Senders<AnswerMessage>,
    /// Mesh peer index of each shard id.
    peer_of: Vec<usize>,
    waiting: RefCell<HashMap<u64, LocalSender<Answer>>>,
    next_id: Cell<u64>,
    files: Arc<Vec<FileSet>>,
    dirs: Arc<Vec<PathBuf>>,
    retention_ms: u64,
    /// EVENTS scans kept between pages, with when each was last used.
    scans: RefCell<Vec<(Instant, Scan)>>,
    next_scan: Cell<u64>,
}

/// The receiving ends of a shard's history meshes and its writer link, for `spawn_tasks`.
pub struct HistoryTasks {
    asks: Receivers<AskMessage>,
    answers: Receivers<AnswerMessage>,
    writer: Option<WriterLink>,
}

impl HistoryStart {
    /// Joins the history meshes. `peer_of` is filled from the op meshes, which order peers the same
    /// way (checked).
    pub async fn join(self, shard: u16, op_peer_id: usize) -> Result<(ShardHistory, HistoryTasks), String> {
        let (Ok((asks_tx, asks_rx)), Ok((answers_tx, answers_rx))) =
            (self.asks.join().await, self.answers.join().await)
        else {
            return Err(format!("shard {shard}: could not join the history mesh"));
        };
        assert_eq!(asks_tx.peer_id(), op_peer_id, "every mesh orders peers by executor id");
        assert_eq!(
            answers_tx.peer_id(),
            op_peer_id,
            "every mesh orders peers by executor id"
        );
        Ok((
            ShardHistory {
                asks: asks_tx,
                answers: answers_tx,
                peer_of: Vec::new(),
                waiting: RefCell::new(HashMap::new()),
                next_id: Cell::new(1),
                files: self.files,
                dirs: self.dirs,
                retention_ms: self.retention_ms,
                scans: RefCell::new(Vec::new()),
                next_scan: Cell::new(u64::from(shard) << 48),
            },
            HistoryTasks {
                asks: asks_rx,
                answers: answers_rx,
                writer: self.writer,
            },
        ))
    }

    /// The meshes for a node of `shards` shards.
    pub fn meshes(shards: u16) -> (MeshBuilder<AskMessage, Full>, MeshBuilder<AnswerMessage, Full>) {
        (
            MeshBuilder::full(shards as usize, CROSS_SHARD_QUEUE_DEPTH),
            MeshBuilder::full(shards as usize, CROSS_SHARD_QUEUE_DEPTH),
        )
    }
}

impl ShardHistory {
    /// Records the mesh peer of every shard, once all have joined (startup barrier passed).
    pub fn set_peers(&mut self, peer_of: Vec<usize>) {
        self.peer_of = peer_of;
    }
}

/// Spawns the shard's history tasks: the mesh receivers and the window drain.
pub fn spawn_tasks(runtime: &Rc<ShardRuntime>, tasks: HistoryTasks) {
    let HistoryTasks {
        mut asks,
        mut answers,
        writer,
    } = tasks;
    for (peer, receiver) in asks.streams() {
        let runtime = runtime.clone();
        glommio::spawn_local(async move {
            while let Some(AskMessage { id, ask }) = receiver.recv().await {
                let answer = answer_locally(&runtime, ask);
                let reply = AnswerMessage { id, answer };
                if runtime.history.answers.send_to(peer, reply).await.is_err() {
                    break;
                }
            }
        })
        .detach();
    }
    for (_, receiver) in answers.streams() {
        let runtime = runtime.clone();
        glommio::spawn_local(async move {
            while let Some(AnswerMessage { id, answer }) = receiver.recv().await {
                let waiting = runtime.history.waiting.borrow_mut().remove(&id);
                let Some(waiting) = waiting else {
                    panic!("shard {} got a history answer {id} it is not waiting for", runtime.id);
                };
                // The asker may have gone (its connection closed): nothing to do then.
                let _ = waiting.try_send(answer);
            }
        })
        .detach();
    }
    if let Some(writer) = writer {
        glommio::spawn_local(drain_loop(runtime.clone(), writer)).detach();
    }
}

/// About once a second: tells the engine what its writer made durable, and hands the writer the
/// seconds closed since (unless it is `WINDOW_DRAINS_QUEUED_MAX` drains behind: they then stay in
/// the engine, whose own cap bounds them).
async fn drain_loop(runtime: Rc<ShardRuntime>, writer: WriterLink) {
    let mut durable_told = 0;
    let mut sealed_sent = 0;
    loop {
        glommio::timer::sleep(Duration::from_millis(WINDOW_DRAIN_MS)).await;
        if shutdown_requested(&runtime.node) {
            return;
        }
        let durable = writer.durable_ms.load(Ordering::Acquire);
        if durable > durable_told {
            runtime.engine.borrow_mut().windows_set_durable(durable);
            durable_told = durable;
        }
        if writer.queued.load(Ordering::Acquire) >= WINDOW_DRAINS_QUEUED_MAX {
            continue;
        }
        let now = runtime.clock_ms();
        let (slices, sealed_through_ms) = {
            let mut engine = runtime.engine.borrow_mut();
            let slices = engine.windows_take_sealed(now);
            (slices, engine.stats().windows.sealed_through_ms)
        };
        if slices.is_empty() && sealed_through_ms == sealed_sent {
            continue;
        }
        sealed_sent = sealed_through_ms;
        writer.queued.fetch_add(1, Ordering::AcqRel);
        if writer
            .drains
            .try_send(Drain {
                slices,
                sealed_through_ms,
            })
            .is_err()
        {
            // The writer stopped (it only does when the node fails or stops).
            log!(Level::Error, "shard {}: the window writer is gone", runtime.id);
            return;
        }
    }
}

/// Answers another shard's ask from this shard's engine. Never waits.
fn answer_locally(runtime: &ShardRuntime, ask: Ask) -> Answer {
    let engine = runtime.engine.borrow();
    match ask {
        Ask::Part { name, query, now_ms } => Answer::Part(engine.window_query(&name, &query, now_ms)),
        Ask::Audit { name, from_ms, to_ms } => Answer::Audit {
            records: engine
                .audit()
                .filter(|r| (name.is_empty() || r.name == name) && from_ms <= r.time_ms && r.time_ms < to_ms)
                .map(|r| audit_record(runtime.id, r))
                .collect(),
            held_from_ms: audit_held_from_ms(engine.audit().map(|r| r.time_ms), AUDIT_RECORDS_MAX),
        },
        Ask::EverSplit { name } => Answer::EverSplit(engine.ever_split(&name)),
    }
}

/// The earliest `from_ms` from which a shard's audit ring (times oldest first, at most `kept_max`)
/// holds every reset, or `None` if it never dropped one. A full ring may have dropped older
/// resets (it keeps no count of them), and those are at most as recent as its oldest record,
/// possibly of that very millisecond: complete from the next one.
fn audit_held_from_ms(mut times: impl Iterator<Item = u64>, kept_max: usize) -> Option<u64> {
    let oldest = times.next()?;
    (1 + times.count() >= kept_max).then_some(oldest + 1)
}

fn audit_record(shard: u16, r: &ResetRecord) -> AuditRecord {
    AuditRecord {
        time_ms: r.time_ms,
        shard,
        lsn: r.lsn,
        name: r.name.clone(),
        old: r.old,
        new: r.new,
        reason: r.reason.clone(),
        client: r.client.clone(),
    }
}

/// Asks `shard` (this one or another) and waits for the answer.
async fn ask(runtime: &Rc<ShardRuntime>, shard: u16, ask: Ask) -> Result<Answer, Failure> {
    if shard == runtime.id {
        return Ok(answer_locally(runtime, ask));
    }
    let history = &runtime.history;
    let id = history.next_id.get();
    history.next_id.set(id + 1);
    let (sender, receiver) = local_channel::new_bounded(1);
    history.waiting.borrow_mut().insert(id, sender);
    let peer = history.peer_of[shard as usize];
    if history.asks.send_to(peer, AskMessage { id, ask }).await.is_err() {
        history.waiting.borrow_mut().remove(&id);
        return Err(Failure::new(ErrorCode::ShuttingDown, "a shard has stopped"));
    }
    receiver
        .recv()
        .await
        .ok_or_else(|| Failure::new(ErrorCode::ShuttingDown, "a shard has stopped"))
}

/// Answers one history op.
pub async fn answer(runtime: &Rc<ShardRuntime>, op: HistoryOp) -> Outcome {
    match op {
        HistoryOp::Window { name, last, unit } => {
            let unit = match unit {
                WindowUnit::Second => Unit::Second,
                WindowUnit::Minute => Unit::Minute,
            };
            let (from_ms, to_ms, points) = window_points(runtime, &name, Query::Window { last, unit }).await?;
            let value = points.first().copied().unwrap_or(0);
            Ok(Reply::Window { value, from_ms, to_ms })
        }
        HistoryOp::Series {
            name,
            from_ms,
            to_ms,
            step,
        } => {
            let step = match step {
                SeriesStep::Second => Step::Second,
                SeriesStep::Minute => Step::Minute,
                SeriesStep::Hour => Step::Hour,
                SeriesStep::Day => Step::Day,
            };
            let query = Query::Series { from_ms, to_ms, step };
            let (from_ms, _, points) = window_points(runtime, &name, query).await?;
            Ok(Reply::Series {
                from_ms,
                step_ms: step.ms(),
                points,
            })
        }
        HistoryOp::Audit {
            name,
            from_ms,
            to_ms,
            limit,
            cursor,
        } => audit(runtime, name, from_ms, to_ms, limit, &cursor).await,
        HistoryOp::Events {
            name,
            from_ms,
            to_ms,
            limit,
            cursor,
        } => events(runtime, name, from_ms, to_ms, limit, cursor).await,
    }
}

fn window_failure(error: WindowError) -> Failure {
    if let WindowError::BeyondRetention { kept_from_ms, .. } = error {
        // Like EVENTS': the earliest start that is answered, for a client to ask again from.
        return Failure::with_current(
            ErrorCode::BeyondRetention,
            ms_as_current(kept_from_ms),
            error.to_string(),
        );
    }
    let code = match error {
        WindowError::Disabled => ErrorCode::WindowsDisabled,
        WindowError::EmptyWindow => ErrorCode::InvalidArgument,
        WindowError::Reversed { .. } => ErrorCode::RangeReversed,
        WindowError::TooManyPoints { .. } => ErrorCode::TooManyPoints,
        WindowError::BeyondRetention { .. } => ErrorCode::BeyondRetention,
        WindowError::StepTooFine { .. } => ErrorCode::StepTooFine,
        WindowError::Overflow => ErrorCode::Overflow,
        _ => ErrorCode::Internal,
    };
    Failure::new(code, error.to_string())
}

/// A window query on every shard that holds increments of `name`, memory and files: the aligned
/// range and its points.
async fn window_points(runtime: &Rc<ShardRuntime>, name: &[u8], query: Query) -> Result<(u64, u64, Vec<i64>), Failure> {
    let now_ms = runtime.clock_ms();
    let owner = shard_of(name, runtime.node.shards);
    let part = |shard| {
        ask(
            runtime,
            shard,
            Ask::Part {
                name: name.to_vec(),
                query,
                now_ms,
            },
        )
    };
    let take = |answer: Answer| match answer {
        Answer::Part(part) => part.map_err(window_failure),
        _ => Err(Failure::new(ErrorCode::Internal, "a shard answered another question")),
    };
    let first = take(part(owner).await?)?;
    let range = first.partial.range();
    let mut parts = Vec::new();
    let fan_out = first.fan_out;
    parts.push((owner, first));
    if fan_out {
        for shard in (0..runtime.node.shards).filter(|&s| s != owner) {
            parts.push((shard, take(part(shard).await?)?));
        }
    }
    let mut total = Partial::new(range);
    let mut disk_jobs = Vec::new();
    for (shard, WindowPart { partial, disk, .. }) in parts {
        total.merge(&partial);
        if let Some(disk) = disk {
            let files = runtime.history.files[shard as usize]
                .read()
                .expect("no writer panics holding the lock")
                .clone();
            if !files.is_empty() {
                disk_jobs.push((files, disk));
            }
        }
    }
    if !disk_jobs.is_empty() {
        let name = name.to_vec();
        let read = glommio::executor()
            .spawn_blocking(move || {
                let mut partial = Partial::new(range);
                for (files, disk) in disk_jobs {
                    add_disk(&files, &name, disk, &mut partial)?;
                }
                Ok::<Partial, String>(partial)
            })
            .await;
        match read {
            Ok(partial) => total.merge(&partial),
            Err(e) => {
                log!(Level::Error, "shard {}: reading window files: {e}", runtime.id);
                return Err(Failure::new(ErrorCode::Internal, format!("reading window files: {e}")));
            }
        }
    }
    let points = total.finish().map_err(window_failure)?;
    Ok((range.from_ms, range.to_ms, points))
}

/// The AUDIT cursor: the (time, shard, lsn) of the last record returned.
fn audit_cursor(record: &AuditRecord) -> Vec<u8> {
    let mut out = Vec::with_capacity(18);
    out.extend_from_slice(&record.time_ms.to_le_bytes());
    out.extend_from_slice(&record.shard.to_le_bytes());
    out.extend_from_slice(&record.lsn.to_le_bytes());
    out
}

fn parse_audit_cursor(cursor: &[u8]) -> Result<Option<(u64, u16, u64)>, Failure> {
    if cursor.is_empty() {
        return Ok(None);
    }
    if cursor.len() != 18 {
        return Err(Failure::new(ErrorCode::InvalidArgument, "not an AUDIT cursor"));
    }
    Ok(Some((
        u64::from_le_bytes(cursor[0..8].try_into().expect("8 bytes")),
        u16::from_le_bytes([cursor[8], cursor[9]]),
        u64::from_le_bytes(cursor[10..18].try_into().expect("8 bytes")),
    )))
}

async fn audit(
    runtime: &Rc<ShardRuntime>,
    name: Vec<u8>,
    from_ms: u64,
    to_ms: u64,
    limit: u16,
    cursor: &[u8],
) -> Outcome {
    let after = parse_audit_cursor(cursor)?;
    // A counter's resets are all in its owner's ring; every counter's are in all rings.
    let shards: Vec<u16> = if name.is_empty() {
        (0..runtime.node.shards).collect()
    } else {
        vec![shard_of(&name, runtime.node.shards)]
    };
    let mut records = Vec::new();
    let mut held: Option<u64> = None;
    for shard in shards {
        let asked = Ask::Audit {
            name: name.clone(),
            from_ms,
            to_ms,
        };
        match ask(runtime, shard, asked).await? {
            Answer::Audit {
                records: part,
                held_from_ms,
            } => {
                records.extend(part);
                held = held.max(held_from_ms);
            }
            _ => return Err(Failure::new(ErrorCode::Internal, "a shard answered another question")),
        }
    }
    // What this page needs: resets from the range's start, or (later pages) after the cursor's.
    let needed_from_ms = after.map_or(from_ms, |(time_ms, _, _)| time_ms.max(from_ms));
    if let Some(held_from_ms) = held.filter(|&held| needed_from_ms < held) {
        return Err(Failure::with_current(
            ErrorCode::HistoryNotHeld,
            ms_as_current(held_from_ms),
            format!(
                "this node keeps the newest {AUDIT_RECORDS_MAX} resets per shard and has dropped older ones: a range from {held_from_ms} ms on is complete here; asked from {needed_from_ms}"
            ),
        ));
    }
    records.sort_by_key(|r| (r.time_ms, r.shard, r.lsn));
    if let Some(after) = after {
        records.retain(|r| (r.time_ms, r.shard, r.lsn) > after);
    }
    let limit = limit.min(AUDIT_RECORDS_PER_REPLY_MAX) as usize;
    let more = records.len() > limit;
    records.truncate(limit);
    let cursor = match records.last() {
        Some(last) if more => audit_cursor(last),
        _ => Vec::new(),
    };
    Ok(Reply::Audit { records, cursor })
}

fn scan_failure(error: ScanError) -> Failure {
    match error {
        ScanError::BadCursor(message) => Failure::new(ErrorCode::InvalidArgument, message),
        ScanError::Log(message) => Failure::new(ErrorCode::Internal, format!("reading the log: {message}")),
        ScanError::NotHeld { held_from_ms, why, .. } => {
            Failure::with_current(ErrorCode::HistoryNotHeld, ms_as_current(held_from_ms), why)
        }
    }
}

/// A time in ms as an error's `current` (times are far below i64::MAX ms).
fn ms_as_current(ms: u64) -> i64 {
    i64::try_from(ms).unwrap_or(i64::MAX)
}

async fn events(
    runtime: &Rc<ShardRuntime>,
    name: Vec<u8>,
    from_ms: u64,
    to_ms: u64,
    limit: u16,
    cursor: Vec<u8>,
) -> Outcome {
    let history = &runtime.history;
    let now_ms = runtime.clock_ms();
    let kept_from_ms = now_ms.saturating_sub(history.retention_ms);
    if from_ms < kept_from_ms {
        return Err(Failure::with_current(
            ErrorCode::BeyondRetention,
            ms_as_current(kept_from_ms),
            format!("the log keeps increments from {kept_from_ms} on; asked from {from_ms}"),
        ));
    }
    let shards = runtime.node.shards;
    let bounds: Vec<u64> = (0..shards)
        .map(|s| runtime.node.lsn_durable[s as usize].load(Ordering::Acquire))
        .collect();
    let dirs = history.dirs.clone();
    // A kept scan that stands where the cursor says, or the plan to build one.
    let mut kept = None;
    let plan: Vec<(u16, Start)> = if cursor.is_empty() {
        let owner = shard_of(&name, shards);
        let split = match ask(runtime, owner, Ask::EverSplit { name: name.clone() }).await? {
            Answer::EverSplit(split) => split,
            _ => return Err(Failure::new(ErrorCode::Internal, "a shard answered another question")),
        };
        let scanned: Vec<u16> = if split { (0..shards).collect() } else { vec![owner] };
        scanned.into_iter().map(|s| (s, Start::Time(from_ms))).collect()
    } else {
        let parsed = Cursor::parse(&cursor, shards).map_err(scan_failure)?;
        let mut scans = history.scans.borrow_mut();
        let idle = Duration::from_millis(EVENTS_SCAN_IDLE_MS);
        scans.retain(|(used, _)| used.elapsed() < idle);
        if let Some(at) = scans
            .iter()
            .position(|(_, scan)| scan.matches(&parsed, &name, from_ms, to_ms))
        {
            kept = Some(scans.swap_remove(at).1);
        }
        parsed
            .positions
            .iter()
            .map(|&(shard, lsn)| (shard, Start::Lsn(lsn)))
            .collect()
    };
    let id = match &kept {
        Some(scan) => scan.id,
        None => {
            let id = history.next_scan.get();
            history.next_scan.set(id + 1);
            id
        }
    };
    let limit = limit.min(EVENTS_PER_PAGE_MAX) as usize;
    let result = glommio::executor()
        .spawn_blocking(move || {
            let mut scan = match kept {
                Some(scan) => scan,
                None => {
                    let mut parts = Vec::with_capacity(plan.len());
                    for (shard, start) in plan {
                        let dir = dirs[shard as usize].clone();
                        parts.push(ShardScan::new(shard, dir, bounds[shard as usize], start, now_ms)?);
                    }
                    Scan {
                        id,
                        name,
                        from_ms,
                        to_ms,
                        shards: parts,
                    }
                }
            };
            let (events, over) = scan.page(limit)?;
            Ok::<_, ScanError>((scan, events, over))
        })
        .await;
    let (scan, events, over) = result.map_err(scan_failure)?;
    if over {
        return Ok(Reply::Events {
            events,
            cursor: Vec::new(),
        });
    }
    let cursor = scan.cursor();
    let mut scans = history.scans.borrow_mut();
    if scans.len() >= EVENTS_SCANS_MAX {
        let oldest = scans
            .iter()
            .enumerate()
            .min_by_key(|(_, (used, _))| *used)
            .map(|(i, _)| i)
            .expect("not empty");
        scans.swap_remove(oldest);
    }
    scans.push((Instant::now(), scan));
    Ok(Reply::Events { events, cursor })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A ring that is not full dropped nothing; a full one may have dropped resets as recent as
    /// its oldest record, so it is complete only after that record's millisecond.
    #[test]
    fn a_full_audit_ring_holds_resets_only_after_its_oldest() {
        assert_eq!(audit_held_from_ms(std::iter::empty(), 3), None);
        assert_eq!(audit_held_from_ms([10, 20].into_iter(), 3), None);
        assert_eq!(audit_held_from_ms([10, 20, 30].into_iter(), 3), Some(11));
    }
}
