//! A primary shard's side: one `Link` per replica (a connection to that replica's shard port and
//! the `Shipper` deciding what goes on it) and the shard's `Quorum`, which turns replica acks into
//! what the replicated ack modes may acknowledge (`DurableWatch::replicated_to`).
//!
//! Records are shipped when the commit loop seals a batch, before the local fsync (so the
//! replica's fsync runs beside ours), from the shard's `ShipLog`; a replica behind the ship log's
//! window gets a snapshot of the shard made on the spot.

use std::cell::{Cell, RefCell};
use std::collections::VecDeque;
use std::net::SocketAddr;
use std::rc::Rc;
use std::time::{Duration, Instant};

use glommio::sync::Semaphore;
use tally_replicate::limits::SNAPSHOT_CHUNK_BYTES_MAX;
use tally_replicate::{
    AckMode, Hello, Message, Quorum, Role, Ship, Shipper, ShipperCommand, ShipperState, SnapshotBegin, SnapshotChunk,
    SnapshotEnd, PROTOCOL_VERSION,
};

use super::{
    connect_peer, shard_addr, write_message, FrameReader, Read, RECONNECT_BACKOFF_MS, RECONNECT_BACKOFF_MS_MAX,
    RESEND_MS,
};
use crate::log;
use crate::log::Level;
use crate::shard::{shutdown_requested, ShardRuntime};

/// One replica of one primary shard.
pub struct Link {
    pub index: usize,
    /// The replica's main address.
    pub addr: SocketAddr,
    pub shipper: RefCell<Shipper>,
    commands: RefCell<VecDeque<ShipperCommand>>,
    wake: Semaphore,
    pub connected: Cell<bool>,
    /// When `lsn_acked` last moved (for the lag in seconds).
    acked_at: Cell<Instant>,
    /// Snapshots sent to this replica since the node started.
    pub snapshots_sent: Cell<u64>,
}

impl Link {
    fn push(&self, commands: Vec<ShipperCommand>) {
        if !commands.is_empty() {
            self.commands.borrow_mut().extend(commands);
            self.wake.signal(1);
        }
    }

    /// How far this replica is behind `lsn_sealed`: lsns, and ms since its ack last moved (0 when
    /// caught up).
    pub fn lag(&self, lsn_sealed: u64) -> (u64, u64) {
        let acked = self.shipper.borrow().lsn_acked();
        let lsns = lsn_sealed.saturating_sub(acked);
        let ms = if lsns == 0 {
            0
        } else {
            self.acked_at.get().elapsed().as_millis() as u64
        };
        (lsns, ms)
    }
}

/// The replication state of a primary shard.
pub struct PrimarySide {
    pub links: Vec<Rc<Link>>,
    pub quorum: RefCell<Quorum>,
    /// A replica accepted this node's epoch on this shard since the node started. Until then the
    /// shard refuses writes: a primary that restarts after a replica was promoted must not accept
    /// one under its old role.
    pub confirmed: Cell<bool>,
    /// The ship log's first lsn as last told to the shippers.
    retained_first: Cell<u64>,
}

impl PrimarySide {
    pub fn new(
        shard: u16,
        epoch: u64,
        peers: &[SocketAddr],
        lsn_sealed: u64,
        retained_first: u64,
        lsn_durable: u64,
        lsn_floor: u64,
    ) -> PrimarySide {
        let links = peers
            .iter()
            .enumerate()
            .map(|(index, addr)| {
                Rc::new(Link {
                    index,
                    addr: *addr,
                    shipper: RefCell::new(Shipper::new(shard, epoch, lsn_sealed, retained_first)),
                    commands: RefCell::new(VecDeque::new()),
                    wake: Semaphore::new(0),
                    connected: Cell::new(false),
                    acked_at: Cell::new(Instant::now()),
                    snapshots_sent: Cell::new(0),
                })
            })
            .collect();
        PrimarySide {
            links,
            quorum: RefCell::new(Quorum::new(peers.len(), lsn_durable).with_floor(lsn_floor)),
            confirmed: Cell::new(false),
            retained_first: Cell::new(retained_first),
        }
    }

    /// The commit loop sealed everything up to `lsn`: ship it. The ship log now holds lsns from
    /// `retained_first` on: a replica that needs older ones gets a snapshot.
    pub fn sealed(&self, lsn: u64, retained_first: u64) {
        for link in &self.links {
            let mut shipper = link.shipper.borrow_mut();
            let mut commands = shipper.sealed(lsn);
            if retained_first > self.retained_first.get() {
                commands.extend(shipper.retained_from(retained_first));
            }
            drop(shipper);
            link.push(commands);
        }
        self.retained_first.set(self.retained_first.get().max(retained_first));
    }
}

/// Feeds the quorum's view to the shard's ack watch.
fn publish(runtime: &ShardRuntime, side: &PrimarySide) {
    let quorum = side.quorum.borrow();
    runtime
        .durable
        .replicated_to(quorum.lsn_ackable(AckMode::Quorum), quorum.lsn_ackable(AckMode::All));
}

/// The local fsync reached `lsn`.
pub fn local_durable(runtime: &ShardRuntime, lsn: u64) {
    if let Some(side) = &runtime.repl.primary {
        side.quorum.borrow_mut().local_durable(lsn);
        publish(runtime, side);
    }
}

/// Every `REPL_TICK_MS` while the node runs: wakes ack waiters (their replication-wait deadlines
/// are checked on wake-ups) and each link's writer (its resend check).
pub async fn ticker(runtime: Rc<ShardRuntime>) {
    let Some(side) = &runtime.repl.primary else { return };
    while !shutdown_requested(&runtime.node) {
        glommio::timer::sleep(Duration::from_millis(super::REPL_TICK_MS)).await;
        runtime.durable.notify();
        for link in &side.links {
            link.wake.signal(1);
        }
    }
}

/// Starts one task per replica link; they end when the node shuts down or steps down.
pub fn spawn_links(runtime: &Rc<ShardRuntime>) -> Vec<glommio::task::JoinHandle<()>> {
    let Some(side) = &runtime.repl.primary else {
        return Vec::new();
    };
    side.links
        .iter()
        .map(|link| {
            let (runtime, link) = (runtime.clone(), link.clone());
            glommio::spawn_local(async move { run_link(runtime, link).await }).detach()
        })
        .collect()
}

fn done(runtime: &ShardRuntime, link: &Link) -> bool {
    shutdown_requested(&runtime.node) || link.shipper.borrow().state() == ShipperState::SteppedDown
}

async fn run_link(runtime: Rc<ShardRuntime>, link: Rc<Link>) {
    let shard = runtime.id;
    let mut backoff = RECONNECT_BACKOFF_MS;
    let mut logged_down = false;
    while !done(&runtime, &link) {
        let target = shard_addr(link.addr, shard);
        match connect_peer(target).await {
            Ok(stream) => {
                backoff = RECONNECT_BACKOFF_MS;
                logged_down = false;
                link.connected.set(true);
                let outcome = converse(&runtime, &link, stream).await;
                link.connected.set(false);
                link.shipper.borrow_mut().disconnected();
                link.commands.borrow_mut().clear();
                if let Err(e) = outcome {
                    log!(Level::Warn, "shard {shard}: replica {}: {e}", link.addr);
                }
            }
            Err(e) => {
                if !logged_down {
                    log!(Level::Warn, "shard {shard}: replica {} unreachable: {e}", link.addr);
                    logged_down = true;
                }
            }
        }
        if done(&runtime, &link) {
            break;
        }
        let shutdown = runtime.shutdown.clone();
        futures_lite::future::or(glommio::timer::sleep(Duration::from_millis(backoff)), async move {
            let _ = shutdown.acquire(1).await;
        })
        .await;
        backoff = (backoff * 2).min(RECONNECT_BACKOFF_MS_MAX);
    }
}

/// One connection's life: Hello, then shipping and reading acks until either side fails.
async fn converse(runtime: &Rc<ShardRuntime>, link: &Rc<Link>, stream: glommio::net::TcpStream) -> Result<(), String> {
    let (reader, mut writer) = futures_lite::io::split(stream);
    let mut buf = Vec::new();
    let repl = &runtime.repl;
    let hello = Message::Hello(Hello {
        version: PROTOCOL_VERSION,
        node_id: repl.settings.node_id,
        epoch: repl.stream.borrow().epoch,
        role: Role::Primary,
        shards: repl.settings.shards,
        addr: repl.settings.addr.clone(),
        history: repl.stream.borrow().history.clone(),
    });
    link.shipper.borrow_mut().connected();
    write_message(&mut writer, &hello, &mut buf).await?;
    let reading = read_replies(runtime, link, reader);
    let writing = write_commands(runtime, link, &mut writer, &mut buf);
    let shutdown = runtime.shutdown.clone();
    let stopped = async move {
        let _ = shutdown.acquire(1).await;
        Ok(())
    };
    futures_lite::future::or(futures_lite::future::or(reading, writing), stopped).await
}

async fn read_replies<R: futures_lite::AsyncRead + Unpin>(
    runtime: &Rc<ShardRuntime>,
    link: &Rc<Link>,
    reader: R,
) -> Result<(), String> {
    let shard = runtime.id;
    let side = runtime.repl.primary.as_ref().expect("links exist on a primary");
    let mut frames = FrameReader::new(reader);
    loop {
        let message = match frames.next().await? {
            Read::Message(message) => message,
            // A lost ack is covered by the resend timer.
            Read::Corrupt => continue,
        };
        let commands = match message {
            Message::HelloReply(reply) => {
                let position = *reply
                    .streams
                    .get(usize::from(shard))
                    .ok_or("HelloReply without this shard's position")?;
                let history = runtime.repl.stream.borrow().history.clone();
                let commands = link
                    .shipper
                    .borrow_mut()
                    .hello_reply(reply.epoch, position, &reply.history, &history)
                    .map_err(|e| e.to_string())?;
                log!(
                    Level::Debug,
                    "shard {shard}: replica {} at epoch {} holds lsn {} (history {:?}): {:?}",
                    link.addr,
                    reply.epoch,
                    position.lsn_appended,
                    reply
                        .history
                        .entries()
                        .iter()
                        .map(|e| (e.epoch, e.lsn_first.get(usize::from(shard)).copied()))
                        .collect::<Vec<_>>(),
                    commands
                );
                if matches!(
                    link.shipper.borrow().state(),
                    ShipperState::Streaming | ShipperState::Snapshotting
                ) && !side.confirmed.get()
                {
                    side.confirmed.set(true);
                    log!(
                        Level::Info,
                        "shard {shard}: replica {} follows epoch {}: writes accepted",
                        link.addr,
                        runtime.repl.stream.borrow().epoch
                    );
                    runtime.durable.notify();
                }
                commands
            }
            Message::Ack(ack) => {
                if ack.shard != shard {
                    return Err(format!("ack for shard {} on shard {shard}'s connection", ack.shard));
                }
                let before = link.shipper.borrow().lsn_acked();
                let commands = link.shipper.borrow_mut().ack(&ack).map_err(|e| e.to_string())?;
                let acked = link.shipper.borrow().lsn_acked();
                if acked != before {
                    link.acked_at.set(Instant::now());
                    side.quorum.borrow_mut().replica_acked(link.index, acked);
                    publish(runtime, side);
                }
                commands
            }
            Message::Need(need) => {
                if need.shard != shard {
                    return Err(format!("need for shard {} on shard {shard}'s connection", need.shard));
                }
                link.shipper.borrow_mut().need(&need).map_err(|e| e.to_string())?
            }
            Message::Fenced(fenced) => {
                // A node at our epoch or above that follows someone else: we are not primary. (The
                // pure shipper steps down only for a strictly higher epoch; two nodes can end up
                // claiming the same one, e.g. a restarted primary and a promoted replica.)
                let epoch = runtime.repl.stream.borrow().epoch;
                if fenced.epoch >= epoch && fenced.primary != runtime.repl.settings.addr {
                    vec![ShipperCommand::StepDown {
                        epoch: fenced.epoch,
                        primary: fenced.primary,
                    }]
                } else {
                    link.shipper.borrow_mut().fenced(&fenced)
                }
            }
            other => return Err(format!("unexpected {:?} from a replica", other.kind())),
        };
        link.push(commands);
    }
}

async fn write_commands<W: futures_lite::AsyncWrite + Unpin>(
    runtime: &Rc<ShardRuntime>,
    link: &Rc<Link>,
    writer: &mut W,
    buf: &mut Vec<u8>,
) -> Result<(), String> {
    use futures_lite::AsyncWriteExt;
    let shard = runtime.id;
    let mut acked_seen = link.shipper.borrow().lsn_acked();
    let mut progress_at = Instant::now();
    // Frames of the commands executed so far, written in one go when the queue runs dry.
    let mut out: Vec<u8> = Vec::new();
    loop {
        let command = link.commands.borrow_mut().pop_front();
        let Some(command) = command else {
            if !out.is_empty() {
                writer.write_all(&out).await.map_err(|e| format!("write: {e}"))?;
                out.clear();
                continue;
            }
            // Woken by new commands, or by the shard's replication ticker (`ticker`) for the
            // resend check: no timer per wait.
            if link.wake.acquire(1).await.is_err() {
                return Ok(());
            }
            crate::durability::take_wakeups(&link.wake);
            let acked = link.shipper.borrow().lsn_acked();
            if acked != acked_seen {
                acked_seen = acked;
                progress_at = Instant::now();
            } else if progress_at.elapsed() >= Duration::from_millis(RESEND_MS) {
                progress_at = Instant::now();
                let commands = link.shipper.borrow_mut().resend_timeout();
                link.push(commands);
            }
            continue;
        };
        match command {
            ShipperCommand::SendRange {
                lsn_first, lsn_last, ..
            } => {
                let chunks = runtime.repl.ship_log.borrow().range(lsn_first, lsn_last);
                let Some(chunks) = chunks else {
                    return Err(format!(
                        "lsns {lsn_first}..={lsn_last} left the ship log; resynchronising"
                    ));
                };
                let epoch = runtime.repl.stream.borrow().epoch;
                let before = out.len();
                for chunk in chunks {
                    let ship = Message::Ship(Ship {
                        shard,
                        epoch,
                        lsn_first: chunk.lsn_first,
                        lsn_last: chunk.lsn_last,
                        time_ms: chunk.time_ms,
                        records: chunk.records.to_vec(),
                    });
                    ship.encode(&mut out);
                }
                let bytes = (out.len() - before) as u64;
                let commands = link.shipper.borrow_mut().sent(lsn_last, bytes);
                link.push(commands);
                if out.len() >= super::OUTBOX_WRITE_BYTES {
                    writer.write_all(&out).await.map_err(|e| format!("write: {e}"))?;
                    out.clear();
                }
            }
            ShipperCommand::SendSnapshot { .. } => {
                if !out.is_empty() {
                    writer.write_all(&out).await.map_err(|e| format!("write: {e}"))?;
                    out.clear();
                }
                let (lsn, bytes) = send_snapshot(runtime, writer, buf).await?;
                link.snapshots_sent.set(link.snapshots_sent.get() + 1);
                log!(
                    Level::Info,
                    "shard {shard}: sent replica {} a snapshot at lsn {lsn} ({bytes} bytes)",
                    link.addr
                );
                let commands = link.shipper.borrow_mut().snapshot_sent(lsn, bytes);
                link.push(commands);
            }
            ShipperCommand::Lagging { lsn_acked, .. } => {
                log!(
                    Level::Warn,
                    "shard {shard}: replica {} is behind this node's ship log (acked lsn {lsn_acked}): it gets a snapshot",
                    link.addr
                );
            }
            ShipperCommand::StepDown { epoch, primary } => {
                crate::replication::replica::step_down(runtime, epoch, &primary);
                return Ok(());
            }
        }
    }
}

/// Serialises the shard now and streams it; returns its lsn and the bytes sent.
async fn send_snapshot<W: futures_lite::AsyncWrite + Unpin>(
    runtime: &Rc<ShardRuntime>,
    writer: &mut W,
    buf: &mut Vec<u8>,
) -> Result<(u64, u64), String> {
    let shard = runtime.id;
    let mut body = Vec::new();
    let deps = runtime.engine.borrow().snapshot(&mut body);
    // Shipped only once sealed and durable here: the shipper requires the snapshot's lsn to have
    // been sealed, and a replica must never hold state the primary could lose.
    runtime.commit_wake.signal(1);
    runtime
        .durable
        .wait(deps.lsn)
        .await
        .map_err(|fault| format!("the log failed before the snapshot was durable: {fault:?}"))?;
    let epoch = runtime.repl.stream.borrow().epoch;
    let total_bytes = body.len() as u64;
    let mut sent = 0u64;
    let begin = Message::SnapshotBegin(SnapshotBegin {
        shard,
        epoch,
        lsn: deps.lsn,
        total_bytes,
    });
    sent += write_message(writer, &begin, buf).await? as u64;
    for (i, piece) in body.chunks(SNAPSHOT_CHUNK_BYTES_MAX).enumerate() {
        let chunk = Message::SnapshotChunk(SnapshotChunk {
            shard,
            epoch,
            lsn: deps.lsn,
            offset: (i * SNAPSHOT_CHUNK_BYTES_MAX) as u64,
            bytes: piece.to_vec(),
        });
        sent += write_message(writer, &chunk, buf).await? as u64;
    }
    let end = Message::SnapshotEnd(SnapshotEnd {
        shard,
        epoch,
        lsn: deps.lsn,
        total_bytes,
        crc: crc32c::crc32c(&body),
    });
    sent += write_message(writer, &end, buf).await? as u64;
    Ok((deps.lsn, sent))
}
