//! The runtime half of replication (the pure half is the `tally-replicate` crate, specified in
//! docs/replication.md): connections between nodes, the per-shard shipping state, applying a
//! primary's stream on a replica, promotion, and the role a node persists.
//!
//! Shape: everything is per shard, on the shard's own executor. Primary shard *s* opens one
//! connection per replica to that replica's shard *s* port (its listen port + 1 + *s*) and ships its
//! stream there; the replica's shard *s* appends the records to its own WAL with the same lsns and
//! replays them into its own engine shard. So a replica runs the primary's shard count (several
//! executors may share a core), and its shard *s* log is a normal WAL: a replica restarts, and a
//! promoted replica starts serving, through the ordinary recovery path.
//!
//! A connection between nodes starts with `PREAMBLE`; the main and shard ports tell it from a
//! client's frame by its first 8 bytes. After that both sides speak the replication frames.
//!
//! Role changes (a promotion finished, a primary stepped down) persist the new role in
//! `DATA_DIR/node` and restart the node in-process: executors stop, and the node starts again from
//! its data directory in the new role.

pub mod primary;
pub mod replica;
pub mod ship_log;
pub mod state;

use std::net::SocketAddr;
use std::time::Duration;

use futures_lite::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tally_replicate::limits::{FRAME_BODY_BYTES_MAX, FRAME_HEADER_BYTES};
use tally_replicate::{AckMode, DecodeError, Message};

/// The first bytes of a connection between nodes (a client's frame never starts with them).
pub const PREAMBLE: &[u8; 8] = b"TALLYREP";

/// How long connecting to a peer may take before the attempt counts as failed.
pub const CONNECT_TIMEOUT_MS: u64 = 1_000;
/// Reconnect backoff after a failed or lost connection: starts here, doubles, up to the max.
pub const RECONNECT_BACKOFF_MS: u64 = 100;
pub const RECONNECT_BACKOFF_MS_MAX: u64 = 1_000;
/// A sender with records in flight and no ack progress for this long resends from the last ack.
pub const RESEND_MS: u64 = 1_000;
/// How often a primary shard re-checks ack deadlines and resend timers (one timer per shard,
/// rather than one per waiting write: see `DurableWatch::wait_mode`). Bounds how late a write past
/// the replication wait is answered.
pub const REPL_TICK_MS: u64 = 50;
/// A replica with a gap and no progress for this long asks again (`Replica::need_timeout`).
pub const NEED_MS: u64 = 500;
/// How long a restarting primary's probe waits for its peers' answers before it tries again.
pub const CANDIDATE_PROBE_MS: u64 = 3_000;
/// The pause between two probes (or promotions) of a restarting primary that found no majority.
pub const CANDIDATE_RETRY_MS: u64 = 1_000;
/// The ship log's bound per shard: records a replica can catch up from without a snapshot.
pub const SHIP_LOG_BYTES_MAX: usize = 64 << 20;
/// Messages a peer connection may have queued for writing; beyond, the connection is dropped (the
/// peer resynchronises through Hello) rather than memory growing.
pub const OUTBOX_MESSAGES_MAX: usize = 4_096;
/// A peer connection's writer gathers queued messages into one write up to this many bytes.
pub const OUTBOX_WRITE_BYTES: usize = 1 << 20;
/// The largest snapshot a replica accepts in one transfer (it is held in memory until installed).
pub const SNAPSHOT_BYTES_MAX: u64 = 4 << 30;

/// The replication settings of a node, fixed for one run.
#[derive(Debug, Clone)]
pub struct ReplSettings {
    pub node_id: u128,
    /// This node's main address, as peers know it.
    pub addr: String,
    /// The other nodes of the set: replicas (on a primary) or fellow replicas (on a replica).
    pub peers: Vec<SocketAddr>,
    pub ack_mode: AckMode,
    /// Per-prefix floors on the ack mode, longest prefix first.
    pub ack_namespaces: Vec<(Vec<u8>, AckMode)>,
    pub wait: Duration,
    pub shards: u16,
    /// This run is a restarting primary re-establishing its epoch (it serves as a replica until
    /// then: `candidate_loop`).
    pub candidate: bool,
}

impl ReplSettings {
    /// The ack mode a write of `name` waits for: the node's, raised to its namespace's if stronger.
    pub fn ack_mode_for(&self, name: &[u8]) -> AckMode {
        let floor = self
            .ack_namespaces
            .iter()
            .find(|(prefix, _)| name.starts_with(prefix))
            .map(|(_, mode)| *mode);
        strongest(self.ack_mode, floor.unwrap_or(AckMode::Local))
    }

    /// Whether this node replicates at all.
    pub fn enabled(&self) -> bool {
        !self.peers.is_empty()
    }
}

/// The stronger of two ack modes (local < quorum < all).
pub fn strongest(a: AckMode, b: AckMode) -> AckMode {
    let rank = |m: AckMode| match m {
        AckMode::Local => 0,
        AckMode::Quorum => 1,
        AckMode::All => 2,
    };
    if rank(b) > rank(a) {
        b
    } else {
        a
    }
}

/// The address of shard `shard`'s port on a node whose main address is `node`.
pub fn shard_addr(node: SocketAddr, shard: u16) -> SocketAddr {
    SocketAddr::new(node.ip(), node.port().wrapping_add(1).wrapping_add(shard))
}

/// Reads replication frames from a stream, one at a time.
pub struct FrameReader<R> {
    reader: R,
    buf: Vec<u8>,
    start: usize,
    end: usize,
}

/// What `FrameReader::next` found.
pub enum Read {
    Message(Message),
    /// A frame failed its checksum and was skipped.
    Corrupt,
}

impl<R: AsyncRead + Unpin> FrameReader<R> {
    pub fn new(reader: R) -> FrameReader<R> {
        FrameReader {
            reader,
            buf: vec![0; 64 << 10],
            start: 0,
            end: 0,
        }
    }

    /// The next frame; `Err` when the stream ends or carries something that is not a frame.
    pub async fn next(&mut self) -> Result<Read, String> {
        loop {
            match Message::decode(&self.buf[self.start..self.end]) {
                Ok((message, used)) => {
                    self.start += used;
                    return Ok(Read::Message(message));
                }
                Err(DecodeError::Corrupt { frame_bytes }) => {
                    self.start += frame_bytes as usize;
                    return Ok(Read::Corrupt);
                }
                Err(DecodeError::Invalid { reason }) => return Err(format!("invalid frame: {reason}")),
                Err(DecodeError::Incomplete) => {}
            }
            if self.start > 0 {
                self.buf.copy_within(self.start..self.end, 0);
                self.end -= self.start;
                self.start = 0;
            }
            if self.end == self.buf.len() {
                let max = FRAME_HEADER_BYTES + FRAME_BODY_BYTES_MAX;
                if self.buf.len() >= max {
                    return Err("a frame larger than the protocol allows".into());
                }
                self.buf.resize((self.buf.len() * 2).min(max), 0);
            }
            let n = self
                .reader
                .read(&mut self.buf[self.end..])
                .await
                .map_err(|e| format!("read: {e}"))?;
            if n == 0 {
                return Err("connection closed".into());
            }
            self.end += n;
        }
    }
}

/// Writes one message.
pub async fn write_message<W: AsyncWrite + Unpin>(
    writer: &mut W,
    message: &Message,
    buf: &mut Vec<u8>,
) -> Result<usize, String> {
    buf.clear();
    message.encode(buf);
    writer.write_all(buf).await.map_err(|e| format!("write: {e}"))?;
    Ok(buf.len())
}

/// Connects to `addr` within `CONNECT_TIMEOUT_MS` and sends the preamble.
pub async fn connect_peer(addr: SocketAddr) -> Result<glommio::net::TcpStream, String> {
    let connect = async { glommio::net::TcpStream::connect(addr).await.map_err(|e| e.to_string()) };
    let timeout = async {
        glommio::timer::sleep(Duration::from_millis(CONNECT_TIMEOUT_MS)).await;
        Err("timed out".to_string())
    };
    let mut stream = futures_lite::future::or(connect, timeout)
        .await
        .map_err(|e| format!("connect {addr}: {e}"))?;
    let _ = stream.set_nodelay(true);
    stream
        .write_all(PREAMBLE)
        .await
        .map_err(|e| format!("connect {addr}: {e}"))?;
    Ok(stream)
}

/// A shard's replication state, whatever its role.
pub struct ShardRepl {
    pub settings: std::rc::Rc<ReplSettings>,
    /// The shard's directory (for the stream file).
    pub dir: std::path::PathBuf,
    pub stream: std::cell::RefCell<state::StreamState>,
    /// The newest records, to ship (primary) or to serve a promoter's fetch (replica).
    pub ship_log: std::cell::RefCell<ship_log::ShipLog>,
    /// Set on a primary with replicas.
    pub primary: Option<primary::PrimarySide>,
    /// Set on a replica.
    pub replica: Option<replica::ReplicaSide>,
    /// For restoring a received snapshot.
    pub splits: std::sync::Arc<tally_engine::SplitRegistry>,
    /// The primary's address as last known (for `not_primary` messages on a replica).
    pub primary_addr: String,
}

impl ShardRepl {
    /// Whether log records must also go to the ship log.
    pub fn tees(&self) -> bool {
        self.settings.enabled()
    }

    /// Why this shard refuses writes now, if it does: it is a replica, a primary that stepped
    /// down, or a primary no replica has confirmed yet.
    pub fn refuses_writes(&self) -> Option<String> {
        if self.replica.is_some() && self.settings.candidate {
            return Some(
                "this node restarted as primary and takes writes once a majority of its group accepts a new epoch from it (or it steps down for a newer primary); retry shortly"
                    .into(),
            );
        }
        if self.replica.is_some() {
            let primary = self
                .replica
                .as_ref()
                .and_then(|side| side.replica.borrow().primary().map(str::to_owned))
                .unwrap_or_else(|| self.primary_addr.clone());
            return Some(format!("this node is a replica; the primary is {primary}"));
        }
        if let Some(side) = &self.primary {
            if !side.confirmed.get() {
                return Some(
                    "this primary has not yet reached a replica that accepts its epoch; retry shortly (a replica may have been promoted)"
                        .into(),
                );
            }
        }
        None
    }
}
