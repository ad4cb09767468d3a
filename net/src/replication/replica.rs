//! A replica shard's side: the `Replica` state machine of its stream, the connections peers open to
//! it (its primary's, or a promoter's), applying shipped records (WAL append with the primary's
//! lsns, then `Shard::replay`), installing snapshots, serving a promoter's fetches, promoting itself,
//! and stepping down.

use std::cell::{Cell, RefCell};
use std::collections::VecDeque;
use std::rc::Rc;
use std::time::{Duration, Instant};

use futures_lite::{AsyncRead, AsyncWrite, AsyncWriteExt};
use glommio::sync::Semaphore;
use tally_engine::Shard;
use tally_replicate::{
    decode_records, Fenced, Hello, Message, Probe, ProbeOutcome, Promotion, PromotionCommand, Replica, ReplicaCommand,
    Role, Ship, PROTOCOL_VERSION,
};
use tally_wal::Room;

use super::state::PersistedRole;
use super::{
    connect_peer, shard_addr, FrameReader, Read, NEED_MS, OUTBOX_MESSAGES_MAX, OUTBOX_WRITE_BYTES, SNAPSHOT_BYTES_MAX,
};
use crate::connection::now_ms;
use crate::log;
use crate::log::Level;
use crate::shard::{shutdown_requested, ShardRuntime};

/// Messages waiting to be written on one peer connection.
pub struct Outbox {
    queue: RefCell<VecDeque<Message>>,
    wake: Semaphore,
    closed: Cell<bool>,
}

impl Outbox {
    fn new() -> Rc<Outbox> {
        Rc::new(Outbox {
            queue: RefCell::new(VecDeque::new()),
            wake: Semaphore::new(0),
            closed: Cell::new(false),
        })
    }

    /// Queues `message`; a peer that does not read (queue full) loses its connection.
    pub fn send(&self, message: Message) {
        if self.closed.get() {
            return;
        }
        if self.queue.borrow().len() >= OUTBOX_MESSAGES_MAX {
            self.close();
            return;
        }
        self.queue.borrow_mut().push_back(message);
        self.wake.signal(1);
    }

    fn close(&self) {
        self.closed.set(true);
        self.wake.close();
    }
}

async fn drain_outbox<W: AsyncWrite + Unpin>(outbox: Rc<Outbox>, mut writer: W) {
    let mut buf = Vec::new();
    loop {
        // Everything queued goes out in one write: acks of one fsync, a fetch's Ship frames.
        buf.clear();
        while let Some(message) = outbox.queue.borrow_mut().pop_front() {
            message.encode(&mut buf);
            if buf.len() >= OUTBOX_WRITE_BYTES {
                break;
            }
        }
        if !buf.is_empty() {
            if writer.write_all(&buf).await.is_err() {
                break;
            }
            continue;
        }
        if outbox.closed.get() || outbox.wake.acquire(1).await.is_err() {
            break;
        }
        crate::durability::take_wakeups(&outbox.wake);
    }
    outbox.close();
}

/// The replication state of a replica shard.
pub struct ReplicaSide {
    pub replica: RefCell<Replica>,
    /// Where `ToPrimary` messages go: the connection of the last accepted Hello or Fence.
    primary_out: RefCell<Option<Rc<Outbox>>>,
    /// A snapshot being received: its lsn and the bytes so far.
    snapshot: RefCell<Option<(u64, Vec<u8>)>>,
    /// Set while a promotion of this shard runs: peers' replies go to it.
    promoting: Cell<bool>,
    /// One `append` at a time: the Follower counts a Ship appended when it emits `Append`, and an
    /// append awaits between records (sealing a batch, waiting for room), so a second connection's
    /// Ship (the old one's buffered frames after a pause, and the new one's) must wait its turn.
    appending: Rc<Semaphore>,
}

impl ReplicaSide {
    /// Whether a promotion of this shard is running.
    pub fn promoting(&self) -> bool {
        self.promoting.get()
    }

    pub fn new(replica: Replica) -> ReplicaSide {
        ReplicaSide {
            replica: RefCell::new(replica),
            primary_out: RefCell::new(None),
            snapshot: RefCell::new(None),
            promoting: Cell::new(false),
            appending: Rc::new(Semaphore::new(1)),
        }
    }
}

/// Serves a connection another node opened to this shard (after its preamble).
pub async fn serve_peer<S>(runtime: Rc<ShardRuntime>, stream: S)
where
    S: AsyncRead + AsyncWrite + Unpin + 'static,
{
    let (reader, writer) = futures_lite::io::split(stream);
    let outbox = Outbox::new();
    let writer_task = glommio::spawn_local(drain_outbox(outbox.clone(), writer));
    let mut frames = FrameReader::new(reader);
    let shard = runtime.id;
    loop {
        let shutdown = runtime.shutdown.clone();
        let next = futures_lite::future::or(async { Some(frames.next().await) }, async move {
            let _ = shutdown.acquire(1).await;
            None
        })
        .await;
        let message = match next {
            None | Some(Err(_)) => break,
            Some(Ok(Read::Corrupt)) => match &runtime.repl.replica {
                Some(side) => {
                    let commands = side.replica.borrow_mut().frame_corrupt();
                    if let Err(e) = execute(&runtime, Some(&outbox), commands).await {
                        log!(Level::Warn, "shard {shard}: replication: {e}");
                        break;
                    }
                    continue;
                }
                None => continue,
            },
            Some(Ok(Read::Message(message))) => message,
        };
        let Some(side) = &runtime.repl.replica else {
            // This node is primary: whoever talks to it as a replica would is told so, and a
            // newer epoch makes it step down.
            if !answer_as_primary(&runtime, &outbox, message) {
                break;
            }
            continue;
        };
        log!(Level::Debug, "shard {shard}: peer message {:?}", message.kind());
        let follows = matches!(
            &message,
            Message::Hello(hello) if hello.role == tally_replicate::Role::Primary
        ) || matches!(&message, Message::Fence(_));
        let epoch_before = side.replica.borrow().epoch();
        let result = side.replica.borrow_mut().on_message(message);
        let commands = match result {
            Ok(commands) => commands,
            Err(e) => {
                log!(Level::Warn, "shard {shard}: replication peer closed: {e}");
                break;
            }
        };
        let fenced = commands.len() == 1 && matches!(&commands[0], ReplicaCommand::Reply(Message::Fenced(_)));
        if follows && !fenced {
            *side.primary_out.borrow_mut() = Some(outbox.clone());
            let epoch = side.replica.borrow().epoch();
            if epoch != epoch_before {
                log!(Level::Info, "shard {shard}: following epoch {epoch}");
            }
        }
        if let Err(e) = execute(&runtime, Some(&outbox), commands).await {
            log!(Level::Warn, "shard {shard}: replication: {e}");
            break;
        }
    }
    outbox.close();
    writer_task.await;
}

/// A message from a node that takes this primary for a replica. Returns false to close.
fn answer_as_primary(runtime: &Rc<ShardRuntime>, outbox: &Outbox, message: Message) -> bool {
    let repl = &runtime.repl;
    let epoch = repl.stream.borrow().epoch;
    let newer = match &message {
        Message::Hello(hello) if hello.role == tally_replicate::Role::Primary && hello.epoch > epoch => {
            Some((hello.epoch, hello.addr.clone()))
        }
        Message::Fence(fence) if fence.epoch_new > epoch => Some((fence.epoch_new, fence.primary_new.clone())),
        _ => None,
    };
    if let Some((epoch, primary)) = newer {
        step_down(runtime, epoch, &primary);
        return false;
    }
    outbox.send(Message::Fenced(Fenced {
        epoch,
        primary: repl.settings.addr.clone(),
    }));
    true
}

/// Executes replica commands in order (docs/replication.md, "Replica"). `reply_to`: the
/// connection the event came from.
pub async fn execute(
    runtime: &Rc<ShardRuntime>,
    reply_to: Option<&Rc<Outbox>>,
    commands: Vec<ReplicaCommand>,
) -> Result<(), String> {
    let side = runtime.repl.replica.as_ref().expect("replica commands on a replica");
    let mut queue: VecDeque<ReplicaCommand> = commands.into();
    while let Some(command) = queue.pop_front() {
        match command {
            ReplicaCommand::PersistEpoch { epoch } => {
                let mut stream = runtime.repl.stream.borrow_mut();
                stream.epoch = stream.epoch.max(epoch);
                stream.store(&runtime.repl.dir)?;
            }
            ReplicaCommand::PersistHistory { history } => {
                let mut stream = runtime.repl.stream.borrow_mut();
                stream.history = history;
                stream.store(&runtime.repl.dir)?;
            }
            ReplicaCommand::Reply(message) => {
                if let Some(outbox) = reply_to {
                    outbox.send(message);
                }
            }
            ReplicaCommand::ToPrimary(message) => {
                if let Some(outbox) = side.primary_out.borrow().as_ref() {
                    outbox.send(message);
                }
            }
            ReplicaCommand::Append { lsn_from, ship, .. } => {
                let lsn_last = ship.lsn_last;
                let have = runtime.engine.borrow().lsn();
                if lsn_from > have + 1 {
                    // The stream counted records the log does not hold (an earlier append was cut
                    // short): continue from what is really there.
                    log!(
                        Level::Warn,
                        "shard {}: shipped lsns from {lsn_from}, but the log holds up to {have}: asking again from {}",
                        runtime.id,
                        have + 1
                    );
                    queue.extend(side.replica.borrow_mut().rewind(runtime.id, have));
                    continue;
                }
                let lsn_from = lsn_from.max(have + 1);
                if lsn_from > lsn_last {
                    continue;
                }
                let appending = side.appending.clone();
                let _turn = appending
                    .acquire_permit(1)
                    .await
                    .map_err(|_| "the append lock closed".to_string())?;
                append(runtime, lsn_from, &ship).await?;
                drop(_turn);
                let runtime = runtime.clone();
                glommio::spawn_local(async move {
                    if runtime.durable.wait(lsn_last).await.is_ok() {
                        let Some(side) = &runtime.repl.replica else { return };
                        let commands = side.replica.borrow_mut().synced(runtime.id, lsn_last);
                        let _ = execute(&runtime, None, commands).await;
                    }
                })
                .detach();
            }
            ReplicaCommand::SnapshotBegin { lsn, total_bytes, .. } => {
                if total_bytes > SNAPSHOT_BYTES_MAX {
                    return Err(format!("a snapshot of {total_bytes} bytes exceeds SNAPSHOT_BYTES_MAX"));
                }
                // Grown as chunks arrive, not reserved from the sender's claim.
                *side.snapshot.borrow_mut() = Some((lsn, Vec::new()));
            }
            ReplicaCommand::SnapshotWrite { offset, bytes, .. } => {
                let mut snapshot = side.snapshot.borrow_mut();
                let Some((_, body)) = snapshot.as_mut() else {
                    return Err("snapshot bytes without a snapshot".into());
                };
                if offset != body.len() as u64 {
                    return Err("snapshot bytes out of order".into());
                }
                body.extend_from_slice(&bytes);
            }
            ReplicaCommand::SnapshotAbort { .. } => *side.snapshot.borrow_mut() = None,
            ReplicaCommand::SnapshotInstall { shard, lsn } => {
                let body = match side.snapshot.borrow_mut().take() {
                    Some((at, body)) if at == lsn => body,
                    _ => return Err("snapshot install without its bytes".into()),
                };
                install(runtime, lsn, &body).await?;
                queue.extend(side.replica.borrow_mut().snapshot_installed(shard, lsn));
            }
            ReplicaCommand::ServeFetch {
                shard,
                epoch,
                lsn_from,
                lsn_to,
            } => {
                let chunks = runtime.repl.ship_log.borrow().range(lsn_from, lsn_to);
                match (chunks, reply_to) {
                    (Some(chunks), Some(outbox)) => {
                        for chunk in chunks {
                            outbox.send(Message::Ship(Ship {
                                shard,
                                epoch,
                                lsn_first: chunk.lsn_first,
                                lsn_last: chunk.lsn_last,
                                time_ms: chunk.time_ms,
                                records: chunk.records.to_vec(),
                            }));
                        }
                    }
                    _ => log!(
                        Level::Warn,
                        "shard {shard}: a promoter fetched lsns {lsn_from}..={lsn_to}, no longer in this node's ship log"
                    ),
                }
            }
        }
    }
    Ok(())
}

/// Appends `ship`'s records from `lsn_from` to the WAL (same lsns) and replays them into the engine.
/// (The log's history is persisted by `PersistHistory` once these records are durable: a history
/// ahead of the durable log would claim an epoch the log does not hold.)
async fn append(runtime: &Rc<ShardRuntime>, lsn_from: u64, ship: &Ship) -> Result<(), String> {
    let shard = runtime.id;
    let repl = &runtime.repl;
    let count = ship.lsn_last - ship.lsn_first + 1;
    let mut next = lsn_from;
    while next <= ship.lsn_last {
        if runtime.durable.fault().is_some() || runtime.wal.is_poisoned() {
            // Checked before any wait below: a failed log's commit loop makes no progress.
            return Err("this shard's log failed: it applies nothing more".into());
        }
        // A batch holds records of one second and carries the primary's time of its first, as on
        // the primary: have a batch of an earlier second sealed first.
        if runtime
            .batch_time_ms
            .get()
            .is_some_and(|t| t / 1000 != ship.time_ms / 1000)
        {
            runtime.commit_wake.signal(1);
            runtime.durable.changed().await;
            continue;
        }
        if runtime.durable.fault().is_some() || runtime.wal.is_poisoned() {
            return Err("this shard's log failed: it applies nothing more".into());
        }
        match runtime.wal.room() {
            Room::Ready => {}
            Room::DiskFull if runtime.wal.is_disk_full() => return Err("the disk is full".into()),
            Room::DiskFull => {
                runtime.maintain_wake.signal(1);
                runtime.durable.changed().await;
                continue;
            }
            Room::SealFirst => {
                runtime.commit_wake.signal(1);
                runtime.durable.changed().await;
                continue;
            }
        }
        let mut failure = None;
        let mut engine = runtime.engine.borrow_mut();
        let mut ship_log = repl.ship_log.borrow_mut();
        decode_records(&ship.records, count, &mut |index, record| {
            let lsn = ship.lsn_first + index;
            if lsn < next || failure.is_some() || runtime.wal.room() != Room::Ready {
                return;
            }
            if let Err(e) = engine.replay(lsn, ship.time_ms, &record) {
                failure = Some(format!("shard {shard}: replaying shipped lsn {lsn}: {e}"));
                return;
            }
            // The WAL's segment dictionary is keyed by name id: use this shard's id for the name,
            // not the frame-local one the record arrived with (ids of different frames collide).
            let Some(name_id) = engine.name_id(record.name()) else {
                failure = Some(format!(
                    "shard {shard}: shipped lsn {lsn} names a counter replay did not create"
                ));
                return;
            };
            let record = record.with_name_id(name_id);
            runtime.wal.append(lsn, &record);
            ship_log.push(lsn, &record);
            if runtime.batch_time_ms.get().is_none() {
                runtime.batch_time_ms.set(Some(ship.time_ms));
            }
            next = lsn + 1;
        })
        .map_err(|e| format!("shipped records: {e}"))?;
        if let Some(failure) = failure {
            log!(Level::Error, "{failure}");
            return Err(failure);
        }
    }
    runtime.commit_wake.signal(1);
    Ok(())
}

/// Replaces this shard's engine and log with a snapshot at `lsn`.
async fn install(runtime: &Rc<ShardRuntime>, lsn: u64, body: &[u8]) -> Result<(), String> {
    let shard = runtime.id;
    let repl = &runtime.repl;
    let config = runtime.engine.borrow().config().clone();
    let engine = Shard::from_snapshot(config, repl.splits.clone(), body)
        .map_err(|e| format!("shard {shard}: the primary's snapshot at lsn {lsn} does not restore: {e}"))?;
    // Nothing may be in flight in the log while it is replaced.
    let deadline = Instant::now() + Duration::from_secs(30);
    while runtime.wal.lsn_appended() != runtime.durable.lsn_durable() || runtime.wal.is_busy() {
        if Instant::now() > deadline || runtime.durable.fault().is_some() {
            return Err(format!(
                "shard {shard}: the log did not settle for the snapshot install"
            ));
        }
        runtime.commit_wake.signal(1);
        glommio::timer::sleep(Duration::from_millis(1)).await;
    }
    runtime
        .wal
        .install_snapshot(lsn, body)
        .await
        .map_err(|e| format!("shard {shard}: installing the snapshot at lsn {lsn}: {e}"))?;
    *runtime.engine.borrow_mut() = engine;
    // The log has no segment until maintenance prepares the next one.
    runtime.maintain_wake.signal(1);
    runtime.durable.reset(lsn);
    runtime.node.lsn_durable[shard as usize].store(lsn, std::sync::atomic::Ordering::Release);
    repl.ship_log.borrow_mut().reset(lsn + 1);
    // The log's history (the primary's, up to `lsn`) is persisted next, by `snapshot_installed`.
    log!(
        Level::Info,
        "shard {shard}: installed the primary's snapshot at lsn {lsn}"
    );
    Ok(())
}

/// Asks for missed records now and then (`Replica::need_timeout`), until shutdown.
pub async fn need_loop(runtime: Rc<ShardRuntime>) {
    while !shutdown_requested(&runtime.node) {
        glommio::timer::sleep(Duration::from_millis(NEED_MS)).await;
        let Some(side) = &runtime.repl.replica else { return };
        if side.promoting.get() {
            continue;
        }
        let commands = side.replica.borrow_mut().need_timeout(runtime.id);
        if execute(&runtime, None, commands).await.is_err() {
            return;
        }
    }
}

/// This node saw a higher epoch: it acks nothing more, persists the epoch, and restarts as a
/// replica of `primary` (if known).
pub fn step_down(runtime: &Rc<ShardRuntime>, epoch: u64, primary: &str) {
    let shard = runtime.id;
    {
        let mut stream = runtime.repl.stream.borrow_mut();
        if epoch > stream.epoch {
            stream.epoch = epoch;
            if let Err(e) = stream.store(&runtime.repl.dir) {
                log!(Level::Error, "shard {shard}: persisting epoch {epoch}: {e}");
            }
        }
    }
    // A primary acks nothing more: its waiting writes get `outcome_unknown`. A candidate (serving
    // as a replica) acked nothing and keeps applying what the new primary ships until it restarts.
    if runtime.repl.primary.is_some() && runtime.durable.fault().is_none() {
        runtime.durable.poison(crate::durability::LogFault::SteppedDown);
    }
    log!(
        Level::Warn,
        "shard {shard}: epoch {epoch} has primary {primary:?}: this node is no longer primary; restarting as its replica"
    );
    let role = PersistedRole::Replica {
        primary: primary.to_owned(),
    };
    crate::node::request_role_change(&runtime.node, role);
}

/// Promotes this shard's stream (see `Promotion`): fences the peers, fetches what they have that
/// this shard lacks, and persists the new epoch and history. Returns the epoch. `epoch_seen`: an
/// epoch some peer knows (a restarting primary's probe), which the new one must exceed.
pub async fn promote(runtime: Rc<ShardRuntime>, force: bool, wait: Duration, epoch_seen: u64) -> Result<u64, String> {
    let shard = runtime.id;
    let repl = &runtime.repl;
    let side = repl.replica.as_ref().ok_or("this node is already primary")?;
    side.promoting.set(true);
    let peers = repl.settings.peers.clone();
    let deadline_ms = now_ms() + wait.as_millis() as u64;
    let epoch_floor = repl.stream.borrow().epoch_proposed.max(epoch_seen);
    let (mut promotion, commands, replica_commands) = {
        let mut replica = side.replica.borrow_mut();
        Promotion::start(
            &mut replica,
            &repl.settings.addr,
            epoch_floor,
            peers.len(),
            force,
            deadline_ms,
        )
    };
    *side.primary_out.borrow_mut() = None;
    execute(&runtime, None, replica_commands).await?;
    // Messages from peers, by peer index; `None` marks a lost connection.
    let inbox: Inbox = Rc::new(RefCell::new(VecDeque::new()));
    let arrived = Rc::new(Semaphore::new(0));
    let mut outboxes: Vec<Option<Rc<Outbox>>> = vec![None; peers.len()];
    let mut pending: VecDeque<PromotionCommand> = commands.into();
    let hard_deadline = Instant::now() + wait + Duration::from_secs(30);
    loop {
        while let Some(command) = pending.pop_front() {
            log!(Level::Debug, "shard {shard}: promotion: {command:?}");
            match command {
                PromotionCommand::PersistProposal { epoch } => {
                    let mut stream = repl.stream.borrow_mut();
                    stream.epoch_proposed = stream.epoch_proposed.max(epoch);
                    stream.store(&repl.dir)?;
                }
                PromotionCommand::PersistEpoch { epoch } => {
                    // A peer accepted it durably: the epoch exists.
                    let mut stream = repl.stream.borrow_mut();
                    stream.epoch = stream.epoch.max(epoch);
                    stream.store(&repl.dir)?;
                }
                PromotionCommand::FetchFrom { history } => side.replica.borrow_mut().fetch_from(history),
                PromotionCommand::Send { peer, message } => {
                    if outboxes[peer].as_ref().is_none_or(|o| o.closed.get()) {
                        outboxes[peer] = open_peer(&runtime, peer, peers[peer], &inbox, &arrived).await;
                    }
                    match &outboxes[peer] {
                        Some(outbox) => outbox.send(message),
                        None => pending.extend(promotion.peer_lost(peer)),
                    }
                }
                PromotionCommand::BecomePrimary { epoch, history, .. } => {
                    let mut stream = repl.stream.borrow_mut();
                    stream.epoch = stream.epoch.max(epoch);
                    stream.history = history;
                    stream.store(&repl.dir)?;
                    for outbox in outboxes.iter().flatten() {
                        outbox.close();
                    }
                    log!(Level::Info, "shard {shard}: promoted to primary at epoch {epoch}");
                    return Ok(epoch);
                }
                PromotionCommand::Failed(e) => {
                    abort_promotion(side, &promotion);
                    for outbox in outboxes.iter().flatten() {
                        outbox.close();
                    }
                    return Err(format!("shard {shard}: {e}"));
                }
            }
        }
        if Instant::now() > hard_deadline || shutdown_requested(&runtime.node) {
            abort_promotion(side, &promotion);
            for outbox in outboxes.iter().flatten() {
                outbox.close();
            }
            return Err(format!("shard {shard}: promotion did not finish"));
        }
        peer_messages_or_tick(&arrived).await;
        pending.extend(promotion.tick(now_ms()));
        let events: Vec<_> = inbox.borrow_mut().drain(..).collect();
        for (peer, message) in events {
            match message {
                None => pending.extend(promotion.peer_lost(peer)),
                Some(Message::FenceReply(reply)) => pending.extend(promotion.fence_reply(peer, &reply)),
                Some(Message::Fenced(fenced)) => pending.extend(promotion.fenced(peer, &fenced)),
                Some(Message::Ship(ship)) => {
                    let result = side.replica.borrow_mut().on_message(Message::Ship(ship));
                    let commands = result.map_err(|e| format!("shard {shard}: fetched records: {e}"))?;
                    let appended: Vec<u64> = commands
                        .iter()
                        .filter_map(|c| match c {
                            ReplicaCommand::Append { ship, .. } => Some(ship.lsn_last),
                            _ => None,
                        })
                        .collect();
                    let only_local = commands
                        .into_iter()
                        .filter(|c| !matches!(c, ReplicaCommand::ToPrimary(_) | ReplicaCommand::Reply(_)))
                        .collect();
                    execute(&runtime, None, only_local).await?;
                    for lsn in appended {
                        runtime.commit_wake.signal(1);
                        runtime
                            .durable
                            .wait(lsn)
                            .await
                            .map_err(|f| format!("shard {shard}: the log failed during promotion: {f:?}"))?;
                        let _ = side.replica.borrow_mut().synced(shard, lsn);
                        pending.extend(promotion.local_synced(shard, lsn));
                    }
                }
                Some(_) => {}
            }
        }
    }
}

/// A restarting primary's probe (`Probe`, docs/replication.md "Restarts"): a Hello of this node's
/// epoch to each peer's port for this shard, answered with `HelloReply` (the peer follows this
/// epoch) or `Fenced` (it knows a newer one, and maybe its primary). Returns once the probe decided
/// or `wait` passed.
pub async fn probe(runtime: &Rc<ShardRuntime>, wait: Duration) -> ProbeOutcome {
    let repl = &runtime.repl;
    let peers = repl.settings.peers.clone();
    let (epoch, history) = {
        let stream = repl.stream.borrow();
        (stream.epoch, stream.history.clone())
    };
    let mut probe = Probe::new(
        epoch,
        &repl.settings.addr,
        peers.len(),
        now_ms() + wait.as_millis() as u64,
    );
    let inbox: Inbox = Rc::new(RefCell::new(VecDeque::new()));
    let arrived = Rc::new(Semaphore::new(0));
    let mut outboxes = Vec::new();
    for (peer, addr) in peers.iter().enumerate() {
        let Some(outbox) = open_peer(runtime, peer, *addr, &inbox, &arrived).await else {
            continue;
        };
        outbox.send(Message::Hello(Hello {
            version: PROTOCOL_VERSION,
            node_id: repl.settings.node_id,
            epoch,
            role: Role::Primary,
            shards: repl.settings.shards,
            addr: repl.settings.addr.clone(),
            history: history.clone(),
        }));
        outboxes.push(outbox);
    }
    while *probe.outcome() == ProbeOutcome::Pending && !shutdown_requested(&runtime.node) {
        peer_messages_or_tick(&arrived).await;
        let events: Vec<_> = inbox.borrow_mut().drain(..).collect();
        for (peer, message) in events {
            match message {
                Some(Message::HelloReply(reply)) => {
                    probe.hello_reply(peer, &reply);
                }
                Some(Message::Fenced(fenced)) => {
                    probe.fenced(peer, &fenced);
                }
                _ => {}
            }
        }
        probe.tick(now_ms());
    }
    for outbox in &outboxes {
        outbox.close();
    }
    probe.outcome().clone()
}

/// Waits until a peer's message arrived or `PEER_TICK_MS` passed (a probe's or promotion's
/// deadline checks run on those ticks).
async fn peer_messages_or_tick(arrived: &Semaphore) {
    futures_lite::future::or(
        async {
            let _ = arrived.acquire(1).await;
        },
        glommio::timer::sleep(Duration::from_millis(PEER_TICK_MS)),
    )
    .await;
    crate::durability::take_wakeups(arrived);
}

/// How often a probe or a promotion looks at its deadlines while no peer message arrives.
const PEER_TICK_MS: u64 = 50;

/// A promotion ended without becoming primary. If no peer accepted its epoch, that epoch does not
/// exist: the node returns to the one it had (only the proposal stays persisted).
fn abort_promotion(side: &ReplicaSide, promotion: &Promotion) {
    side.promoting.set(false);
    if !promotion.accepted() {
        side.replica.borrow_mut().promote_abort(promotion.epoch_before());
    }
}

/// Messages from a promoter's peers, by peer index; `None` marks a lost connection.
type Inbox = Rc<RefCell<VecDeque<(usize, Option<Message>)>>>;

/// Opens a connection to `peer`'s shard port whose incoming messages land in `inbox`.
async fn open_peer(
    runtime: &Rc<ShardRuntime>,
    peer: usize,
    addr: std::net::SocketAddr,
    inbox: &Inbox,
    arrived: &Rc<Semaphore>,
) -> Option<Rc<Outbox>> {
    let stream = match connect_peer(shard_addr(addr, runtime.id)).await {
        Ok(stream) => stream,
        Err(e) => {
            log!(Level::Warn, "shard {}: promotion: peer {addr}: {e}", runtime.id);
            return None;
        }
    };
    let (reader, writer) = futures_lite::io::split(stream);
    let outbox = Outbox::new();
    glommio::spawn_local(drain_outbox(outbox.clone(), writer)).detach();
    let (inbox, arrived, closer) = (inbox.clone(), arrived.clone(), outbox.clone());
    glommio::spawn_local(async move {
        let mut frames = FrameReader::new(reader);
        loop {
            let next = futures_lite::future::or(async { Some(frames.next().await) }, async {
                while !closer.closed.get() {
                    glommio::timer::sleep(Duration::from_millis(20)).await;
                }
                None
            })
            .await;
            match next {
                Some(Ok(Read::Message(message))) => inbox.borrow_mut().push_back((peer, Some(message))),
                Some(Ok(Read::Corrupt)) => continue,
                _ => {
                    inbox.borrow_mut().push_back((peer, None));
                    arrived.signal(1);
                    break;
                }
            }
            arrived.signal(1);
        }
    })
    .detach();
    Some(outbox)
}
