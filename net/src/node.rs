//! Starting and stopping a node: one glommio executor per shard, pinned to the CPUs this process
//! may use, each with its listeners, mesh endpoints and engine.
//!
//! Startup: the main thread checks the address, sizes locked memory and spawns the executors.
//! Each executor binds its direct port, joins both meshes, publishes its mesh peer id, waits for
//! all shards (a startup barrier), then binds the shared main port (SO_REUSEPORT, so the kernel
//! spreads connections over shards) and reports ready.
//!
//! Shutdown: `NodeShared::shutdown` is set (by a signal in tallyd, by `Node::stop` in-process).
//! Each shard stops accepting, lets its connections answer what they have read, then waits until
//! every shard has drained before its executor exits, so forwarded requests always find their
//! owner still running.

use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr, TcpListener as StdTcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::rc::Rc;
use std::sync::atomic::{AtomicBool, AtomicU16, AtomicU64, AtomicUsize, Ordering};
use std::sync::{mpsc, Arc, Mutex};
use std::time::{Duration, Instant};

use glommio::channels::channel_mesh::MeshBuilder;
use glommio::net::{TcpListener, UnixListener};
use glommio::sync::{Gate, Semaphore};
use glommio::{ExecutorJoinHandle, LocalExecutorBuilder, Placement};
use tally_engine::{HotConfig, NamespaceRule, ShardConfig, SplitRegistry};
use tally_proto::limits::{CONNECTIONS_MAX, SHARDS_MAX};
use tally_proto::ErrorCode;
use tally_wal::{DmaStorage, Recovered, Room, Wal, WalConfig, WalError};

use tally_engine::{Failure, Outcome};
use tally_replicate::{Replica, StreamPosition};

use crate::config::Config;
use crate::connection::{self, now_ms};
use crate::durability::LogFault;
use crate::history::HistoryStart;
use crate::limits::{
    CROSS_SHARD_QUEUE_DEPTH, SHUTDOWN_DRAIN_MS_MAX, SHUTDOWN_POLL_MS, SNAPSHOT_DEPS_WAIT_MS, SNAPSHOT_POLL_MS,
    WAL_MAINTAIN_MS,
};
use crate::log;
use crate::log::Level;
use crate::mesh::{ShardReply, ShardRequest};
use crate::recovery::{recover_node, RecoveredShard};
use crate::replication::primary::{spawn_links, PrimarySide};
use crate::replication::replica::{need_loop, ReplicaSide};
use crate::replication::ship_log::ShipLog;
use crate::replication::state::{NodeState, PersistedRole, StreamState};
use crate::replication::{ReplSettings, ShardRepl};
use crate::shard::{shutdown_requested, spawn_reply_receivers, spawn_request_receivers, ShardRuntime};
use crate::system::{lock_data_dir, plan_memlock, usable_cpus, DataDirLock};

/// How long startup waits for every shard to reach the barrier before giving up.
const STARTUP_BARRIER_MS_MAX: u64 = 30_000;

/// Log bytes one engine tick may produce: `TICK_RECORDS_MAX` records of at most ~40 bytes, each
/// possibly preceded by a dictionary entry of at most 262 bytes (a 255-byte name): under 30 KB.
const TICK_LOG_BYTES_MAX: u64 = (tally_engine::limits::TICK_RECORDS_MAX as u64) * (40 + 262);

/// How long the startup check for a live listener on our ports waits for a connection. Loopback
/// and local addresses answer (accept or refuse) in microseconds.
const LISTENER_CHECK_MS: u64 = 500;

/// How long a listener found on our port may take to disappear (a crashed node's sockets outlive
/// it briefly) before startup fails with "address in use".
const LISTENER_GONE_MS_MAX: u64 = 3_000;

/// State every shard of a node reads; written only at startup and shutdown.
pub struct NodeShared {
    pub shards: u16,
    /// `--max-connections`, at most `CONNECTIONS_MAX`.
    pub connections_max: usize,
    pub shard_ports: Vec<AtomicU16>,
    pub connections: AtomicUsize,
    pub shutdown: AtomicBool,
    pub started: Instant,
    /// Each shard's durable LSN, for snapshots that depend on another shard's log.
    pub lsn_durable: Vec<AtomicU64>,
    peer_of: Vec<AtomicUsize>,
    joined: AtomicUsize,
    drained: AtomicUsize,
    failed: AtomicBool,
    /// The data directory (absolute), for the node file.
    pub data_dir: PathBuf,
    /// Whether this run serves as a replica.
    pub is_replica: bool,
    /// The node's persisted id and role (when replicating).
    pub node_state: Option<NodeState>,
    /// A role change that ends this run: the node stops and starts again in this role.
    role_change: Mutex<Option<PersistedRole>>,
    /// A promotion in progress: bumped generation, options and each shard's result.
    promote_generation: AtomicU64,
    promote: Mutex<PromoteJob>,
}

/// The node-wide state of a PROMOTE: every shard promotes its own stream.
#[derive(Default)]
struct PromoteJob {
    force: bool,
    wait: Duration,
    /// An epoch a peer knows, which the new one must exceed (a restarting primary's probe).
    epoch_seen: u64,
    results: Vec<Option<Result<u64, String>>>,
}

/// Ends this run of the node so that it starts again in `role` (persisted first).
///
/// Every shard may ask (each learns of a newer epoch on its own stream): the first request wins and
/// is the only one that writes the node file.
pub fn request_role_change(node: &NodeShared, role: PersistedRole) {
    let mut change = node.role_change.lock().unwrap_or_else(|e| e.into_inner());
    if change.is_none() {
        if let Some(state) = &node.node_state {
            let state = NodeState {
                role: Some(role.clone()),
                ..state.clone()
            };
            if let Err(e) = state.store(&node.data_dir) {
                log!(Level::Error, "persisting the role change: {e}");
            }
        }
        log!(Level::Info, "role change: restarting as {role:?}");
        *change = Some(role);
    }
    drop(change);
    node.shutdown.store(true, Ordering::Release);
}

/// Runs a PROMOTE on every shard and waits for them all. The caller restarts the node as primary
/// once the reply is queued.
pub async fn promote_node(runtime: &Rc<ShardRuntime>, force: bool, wait: Duration) -> Outcome {
    promote_node_above(runtime, force, wait, 0).await
}

/// `promote_node` to an epoch above `epoch_seen` as well.
async fn promote_node_above(runtime: &Rc<ShardRuntime>, force: bool, wait: Duration, epoch_seen: u64) -> Outcome {
    let node = &runtime.node;
    if !node.is_replica {
        return Err(Failure::new(
            ErrorCode::InvalidArgument,
            "this node is already primary (or does not replicate)",
        ));
    }
    {
        let mut job = node.promote.lock().unwrap_or_else(|e| e.into_inner());
        if job.results.iter().any(Option::is_none) && !job.results.is_empty() {
            return Err(Failure::new(
                ErrorCode::InvalidArgument,
                "a promotion is already running",
            ));
        }
        *job = PromoteJob {
            force,
            wait,
            epoch_seen,
            results: vec![None; node.shards as usize],
        };
    }
    node.promote_generation.fetch_add(1, Ordering::AcqRel);
    let deadline = Instant::now() + wait + Duration::from_secs(40);
    loop {
        glommio::timer::sleep(Duration::from_millis(10)).await;
        let job = node.promote.lock().unwrap_or_else(|e| e.into_inner());
        if job.results.iter().all(Option::is_some) {
            let mut epoch = 0;
            let mut errors = Vec::new();
            for result in job.results.iter().flatten() {
                match result {
                    Ok(e) => epoch = epoch.max(*e),
                    Err(e) => errors.push(e.clone()),
                }
            }
            if errors.is_empty() {
                return Ok(tally_proto::Reply::Promote { epoch });
            }
            return Err(Failure::new(
                ErrorCode::ReplicasUnavailable,
                format!("promotion failed (this node stays a replica): {}", errors.join("; ")),
            ));
        }
        if Instant::now() > deadline {
            return Err(Failure::new(
                ErrorCode::Internal,
                "promotion did not finish on every shard",
            ));
        }
    }
}

/// Starts this shard's part of a PROMOTE if one was requested since `seen`.
fn poll_promotion(runtime: &Rc<ShardRuntime>, seen: &mut u64) {
    let generation = runtime.node.promote_generation.load(Ordering::Acquire);
    if generation == *seen {
        return;
    }
    *seen = generation;
    let (force, wait, epoch_seen) = {
        let job = runtime.node.promote.lock().unwrap_or_else(|e| e.into_inner());
        (job.force, job.wait, job.epoch_seen)
    };
    let runtime = runtime.clone();
    glommio::spawn_local(async move {
        let result = crate::replication::replica::promote(runtime.clone(), force, wait, epoch_seen).await;
        if let Err(e) = &result {
            log!(Level::Warn, "{e}");
        }
        let mut job = runtime.node.promote.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(slot) = job.results.get_mut(runtime.id as usize) {
            *slot = Some(result);
        }
    })
    .detach();
}

/// A node that restarts as primary first re-establishes itself (docs/replication.md, "Restarts"):
/// a restart never creates an epoch, and the node may have been replaced while it was down. Run on
/// shard 0 while the node is a candidate: probe the peers; step down if one names another primary
/// of an epoch at or above ours; otherwise, with a majority, promote this node (every shard) to a
/// new epoch and restart as primary. Without a majority, take no writes and try again.
pub async fn candidate_loop(runtime: Rc<ShardRuntime>) {
    use crate::replication::replica::{probe, step_down};
    use tally_replicate::ProbeOutcome;
    let mut unreachable_logged = false;
    while !shutdown_requested(&runtime.node) {
        if let Some((epoch, primary)) = followed_primary(&runtime) {
            log!(
                Level::Info,
                "restarting primary: {primary} leads epoch {epoch} (it greeted or fenced this node)"
            );
            step_down(&runtime, epoch, &primary);
            return;
        }
        let wait = Duration::from_millis(crate::replication::CANDIDATE_PROBE_MS);
        match probe(&runtime, wait).await {
            ProbeOutcome::StepDown { epoch, primary } => {
                log!(
                    Level::Info,
                    "restarting primary: a peer says {primary} leads epoch {epoch}"
                );
                step_down(&runtime, epoch, &primary);
                return;
            }
            ProbeOutcome::Promote { epoch_seen } => {
                let wait = runtime
                    .repl
                    .settings
                    .wait
                    .max(Duration::from_millis(crate::replication::CANDIDATE_PROBE_MS));
                match promote_node_above(&runtime, false, wait, epoch_seen).await {
                    Ok(_) => {
                        request_role_change(&runtime.node, PersistedRole::Primary);
                        return;
                    }
                    Err(e) => log!(Level::Warn, "restarting primary: {}", e.message),
                }
            }
            ProbeOutcome::Unreachable { peers } => {
                if !unreachable_logged {
                    let addrs: Vec<String> = peers
                        .iter()
                        .filter_map(|&p| runtime.repl.settings.peers.get(p))
                        .map(ToString::to_string)
                        .collect();
                    log!(
                        Level::Warn,
                        "restarting primary: no majority of the group answers (silent: {}): this node takes no writes until one does",
                        addrs.join(", ")
                    );
                    unreachable_logged = true;
                }
            }
            ProbeOutcome::Pending => {}
        }
        let shutdown = runtime.shutdown.clone();
        futures_lite::future::or(
            glommio::timer::sleep(Duration::from_millis(crate::replication::CANDIDATE_RETRY_MS)),
            async move {
                let _ = shutdown.acquire(1).await;
            },
        )
        .await;
    }
}

/// The epoch and primary a candidate's shard 0 follows, if another node greeted or fenced it.
fn followed_primary(runtime: &ShardRuntime) -> Option<(u64, String)> {
    let side = runtime.repl.replica.as_ref()?;
    if side.promoting() {
        return None;
    }
    let replica = side.replica.borrow();
    let primary = replica.primary()?;
    (primary != runtime.repl.settings.addr).then(|| (replica.epoch(), primary.to_owned()))
}

/// What an engine of this node is configured with.
#[derive(Clone)]
struct EngineSettings {
    hot: HotConfig,
    namespaces: Vec<NamespaceRule>,
    dedup_window_ms: u64,
    segment_bytes: u64,
    retention_ms: u64,
    snapshot_records: u64,
    snapshot_interval_ms: u64,
}

impl EngineSettings {
    fn shard_config(&self, shard: u16, shards: u16) -> ShardConfig {
        let mut config = ShardConfig::new(shard, shards);
        config.hot = self.hot.clone();
        config.namespaces = self.namespaces.clone();
        config.dedup_window_ms = self.dedup_window_ms;
        // Time windows are on with the engine's default tiers; `history` drains them to disk.
        config
    }
}

/// A running node. Dropping it without `stop` leaves the executors running until the process exits.
pub struct Node {
    shared: Arc<NodeShared>,
    handles: Vec<ExecutorJoinHandle<()>>,
    /// Each shard's window writer thread; ends once its shard has stopped.
    window_writers: Vec<crate::windows::Writer>,
    pub listen: SocketAddr,
    pub unix_socket: Option<PathBuf>,
    pub shard_ports: Vec<u16>,
    pub cpus: Vec<usize>,
    pub io_memory_bytes: usize,
    _lock: DataDirLock,
}

impl Node {
    /// Starts a node and returns once every shard serves.
    pub fn start(config: &Config) -> Result<Node, String> {
        Node::start_after(config, None)
    }

    /// `start`, again in the same process after a role change to `role_changed` (a promotion
    /// finished, or this node stepped down). The role was just persisted by this process, so the
    /// node file is not checked against the flags, and after a promotion the node serves as primary
    /// at once (any other start of a primary re-establishes its epoch first: `candidate_loop`).
    pub fn start_after(config: &Config, role_changed: Option<&PersistedRole>) -> Result<Node, String> {
        let promoted = role_changed == Some(&PersistedRole::Primary);
        log::set_level(config.log_level);
        let cpus = usable_cpus().map_err(|e| format!("sched_getaffinity: {e}"))?;
        let shards = config.shards.unwrap_or(cpus.len().min(SHARDS_MAX as usize) as u16);
        if shards == 0 || shards > SHARDS_MAX {
            return Err(format!("--shards must be 1..={SHARDS_MAX}, got {shards}"));
        }
        let replicating = !config.replicas.is_empty() || config.replica_of.is_some();
        if config.replicas.len() > tally_replicate::limits::REPLICAS_MAX {
            return Err(format!(
                "at most {} --replica addresses, got {}",
                tally_replicate::limits::REPLICAS_MAX,
                config.replicas.len()
            ));
        }
        let ack_mode = config.ack_mode()?;
        let mut hot = config.hot();
        if replicating && hot.enabled {
            // A replica replays a primary's split-counter slots only through the cross-shard
            // reconcile of a restart; this version does not replicate split counters.
            log!(
                Level::Info,
                "replication: hot-counter splitting is off on replicated nodes"
            );
            hot.enabled = false;
        }
        let settings = EngineSettings {
            hot,
            namespaces: config.namespaces()?,
            dedup_window_ms: config.dedup_window_secs.saturating_mul(1000),
            segment_bytes: config.segment_mib.saturating_mul(1 << 20),
            retention_ms: config.retention_hours.saturating_mul(3_600_000),
            snapshot_records: config.snapshot_records,
            snapshot_interval_ms: config.snapshot_interval_secs.saturating_mul(1000),
        };
        let lock = lock_data_dir(&config.data_dir)?;
        // Absolute from here on: glommio's directory open (io_uring openat) refuses relative paths.
        let data_dir = std::fs::canonicalize(&config.data_dir)
            .map_err(|e| format!("data dir {}: {e}", config.data_dir.display()))?;
        let node_state = if replicating {
            let mut state = NodeState::load_or_create(&data_dir)?;
            if role_changed.is_none() {
                reconcile_role(&mut state, config, &data_dir)?;
            }
            Some(state)
        } else {
            None
        };
        let role = node_state
            .as_ref()
            .and_then(|s| s.role.clone())
            .unwrap_or(PersistedRole::Primary);
        // A primary that did not just promote itself in this process re-establishes its epoch
        // first, serving as a replica meanwhile.
        let candidate = replicating && role == PersistedRole::Primary && !promoted;
        let is_replica = matches!(role, PersistedRole::Replica { .. }) || candidate;
        let shards = match (&role, config.shards) {
            (PersistedRole::Replica { primary }, None) => replica_shard_count(&data_dir, primary)?,
            _ => shards,
        };
        if shards == 0 || shards > SHARDS_MAX {
            return Err(format!("--shards must be 1..={SHARDS_MAX}, got {shards}"));
        }
        let memlock = plan_memlock(shards)?;
        if memlock.io_memory_bytes < crate::limits::IO_MEMORY_BYTES_DEFAULT {
            log!(
                Level::Warn,
                "locked-memory limit {} KiB: io_memory shrunk to {} KiB per shard (raise `ulimit -l` for the default)",
                memlock.limit_bytes / 1024,
                memlock.io_memory_bytes / 1024
            );
        }
        let listen = resolve_listen(config.listen)?;
        let direct_ports = direct_ports(config, listen, shards)?;
        if config.max_connections == 0 || config.max_connections > CONNECTIONS_MAX {
            return Err(format!(
                "--max-connections must be 1..={CONNECTIONS_MAX}, got {}",
                config.max_connections
            ));
        }
        let shared = Arc::new(NodeShared {
            shards,
            connections_max: config.max_connections,
            shard_ports: (0..shards).map(|_| AtomicU16::new(0)).collect(),
            connections: AtomicUsize::new(0),
            shutdown: AtomicBool::new(false),
            started: Instant::now(),
            peer_of: (0..shards).map(|_| AtomicUsize::new(usize::MAX)).collect(),
            joined: AtomicUsize::new(0),
            drained: AtomicUsize::new(0),
            failed: AtomicBool::new(false),
            lsn_durable: (0..shards).map(|_| AtomicU64::new(0)).collect(),
            data_dir: data_dir.clone(),
            is_replica,
            node_state: node_state.clone(),
            role_change: Mutex::new(None),
            promote_generation: AtomicU64::new(0),
            promote: Mutex::new(PromoteJob::default()),
        });
        let splits = Arc::new(SplitRegistry::new(shards));
        let configs: Vec<ShardConfig> = (0..shards).map(|shard| settings.shard_config(shard, shards)).collect();
        let windows = crate::windows::recover_node(&data_dir, &configs, &shared)?;
        let ship_log_bytes = usize::try_from(config.ship_log_kib.saturating_mul(1024)).unwrap_or(usize::MAX);
        let mut recovered = recover_node(
            &data_dir,
            configs,
            &splits,
            &windows.durable_ms,
            replicating.then_some(ship_log_bytes),
        )?;
        let (asks_mesh, answers_mesh) = HistoryStart::meshes(shards);
        let mut window_links = windows.links.into_iter();
        let repl_settings = ReplSettings {
            node_id: node_state.as_ref().map_or(0, |s| s.node_id),
            addr: listen.to_string(),
            peers: group_peers(config),
            candidate,
            ack_mode,
            ack_namespaces: config.ack_namespaces()?,
            wait: Duration::from_millis(config.replication_wait_ms),
            shards,
        };
        let mut streams = Vec::with_capacity(shards as usize);
        for r in &recovered {
            streams.push(StreamState::load(&r.dir)?);
        }
        if candidate {
            log!(
                Level::Info,
                "restarting as primary (epoch {}): probing {:?} before taking writes",
                streams.first().map_or(0, |s| s.epoch),
                repl_settings.peers
            );
        } else if !is_replica && repl_settings.enabled() {
            log!(
                Level::Info,
                "primary at epoch {} (promoted), replicas {:?}",
                streams.first().map_or(0, |s| s.epoch),
                repl_settings.peers
            );
        }
        for (r, stream) in recovered.iter_mut().zip(streams) {
            r.stream = Some(stream);
        }
        let primary_addr = match &role {
            PersistedRole::Replica { primary } => primary.clone(),
            PersistedRole::Primary if candidate => {
                "unknown yet (this node is re-establishing itself as primary)".into()
            }
            PersistedRole::Primary => listen.to_string(),
        };
        let request_mesh = MeshBuilder::<ShardRequest, _>::full(shards as usize, CROSS_SHARD_QUEUE_DEPTH);
        let reply_mesh = MeshBuilder::<ShardReply, _>::full(shards as usize, CROSS_SHARD_QUEUE_DEPTH);
        let (ready_tx, ready_rx) = mpsc::channel::<Result<u16, String>>();
        let mut handles = Vec::new();
        for (shard, recovered) in (0..shards).zip(recovered) {
            let cpu = cpus[shard as usize % cpus.len()];
            let start = ShardStart {
                shard,
                recovered,
                listen,
                direct_port: direct_ports[shard as usize],
                unix_socket: if shard == 0 { config.unix_socket.clone() } else { None },
                shared: shared.clone(),
                settings: settings.clone(),
                request_mesh: request_mesh.clone(),
                reply_mesh: reply_mesh.clone(),
                history: HistoryStart {
                    asks: asks_mesh.clone(),
                    answers: answers_mesh.clone(),
                    files: windows.files.clone(),
                    dirs: windows.dirs.clone(),
                    writer: window_links.next(),
                    retention_ms: settings.retention_ms,
                },
                ready: ready_tx.clone(),
                repl: repl_settings.clone(),
                splits: splits.clone(),
                primary_addr: primary_addr.clone(),
            };
            let handle = LocalExecutorBuilder::new(Placement::Fixed(cpu))
                .name(&format!("tally-shard-{shard}"))
                .io_memory(memlock.io_memory_bytes)
                .spawn(move || run_shard(start))
                .map_err(|e| format!("start executor for shard {shard} on cpu {cpu}: {e}"))?;
            handles.push(handle);
        }
        drop(ready_tx);
        let mut errors = Vec::new();
        for _ in 0..shards {
            match ready_rx.recv() {
                Ok(Ok(_)) => {}
                Ok(Err(error)) => errors.push(error),
                Err(_) => {
                    errors.push("a shard exited during startup".to_string());
                    break;
                }
            }
        }
        let node = Node {
            shard_ports: shared.shard_ports.iter().map(|p| p.load(Ordering::Acquire)).collect(),
            shared,
            handles,
            window_writers: windows.writers,
            listen,
            unix_socket: config.unix_socket.clone(),
            cpus,
            io_memory_bytes: memlock.io_memory_bytes,
            _lock: lock,
        };
        if !errors.is_empty() {
            node.shared.failed.store(true, Ordering::Release);
            node.stop();
            return Err(errors.join("; "));
        }
        Ok(node)
    }

    pub fn shards(&self) -> u16 {
        self.shared.shards
    }

    /// Asks every shard to stop and waits for the executors to exit. Returns the role change that
    /// ended this run, if one did (the caller starts the node again).
    pub fn stop(self) -> Option<PersistedRole> {
        self.shared.shutdown.store(true, Ordering::Release);
        for handle in self.handles {
            if let Err(error) = handle.join() {
                log!(Level::Error, "shard executor failed: {error}");
            }
        }
        for writer in self.window_writers {
            writer.stop();
        }
        if let Some(path) = &self.unix_socket {
            let _ = std::fs::remove_file(path);
        }
        let change = self.shared.role_change.lock().unwrap_or_else(|e| e.into_inner()).take();
        change
    }

    /// Whether something asked this run to end (a signal, `request_stop`, or a role change).
    pub fn stop_requested(&self) -> bool {
        self.shared.shutdown.load(Ordering::Acquire)
    }

    /// Requests shutdown without waiting (e.g. from a signal thread).
    pub fn request_stop(&self) {
        self.shared.shutdown.store(true, Ordering::Release);
    }
}

/// How long a replica's first start waits for its primary to say how many shards it has.
const PRIMARY_HELLO_WAIT_MS: u64 = 15_000;

/// A replica runs its primary's shard count: the shard directories it already has, or on its first
/// start what the primary says in HELLO.
/// Every other member of this node's replica group: its `--replica` addresses and, on a replica,
/// the `--replica-of` one. A promotion fences them all and a primary ships to them all, so an old
/// primary that stepped down is fed by its successor.
fn group_peers(config: &Config) -> Vec<SocketAddr> {
    let mut peers = config.replicas.clone();
    if let Some(primary) = config.replica_of {
        if !peers.contains(&primary) {
            peers.push(primary);
        }
    }
    peers
}

/// Checks the role the flags give against the one DATA_DIR/node holds (the node's own record of
/// promotions and step-downs) and refuses to start when they disagree on primary against replica,
/// saying which and what resolves it. `--reset-role` makes the flags win. A replica of a different
/// primary address than the file's is fine (a replica follows whichever primary of the newest
/// epoch greets it): the file takes the flag's address.
fn reconcile_role(state: &mut NodeState, config: &Config, data_dir: &Path) -> Result<(), String> {
    let wanted = match config.replica_of {
        Some(primary) => PersistedRole::Replica {
            primary: primary.to_string(),
        },
        None => PersistedRole::Primary,
    };
    let file = NodeState::path(data_dir);
    let conflict = match (&state.role, &wanted) {
        (Some(PersistedRole::Primary), PersistedRole::Replica { primary }) => Some(format!(
            "{} says this node is a primary, but --replica-of {primary} says replica. If another node was promoted while this one was down, start it as a primary again (no --replica-of): it finds the newer primary and steps down by itself, giving up only records that primary lacks. To make it a replica of {primary} now, add --reset-role.",
            file.display()
        )),
        (Some(PersistedRole::Replica { primary }), PersistedRole::Primary) => Some(format!(
            "{} says this node is a replica of {primary} (it was started as one, or stepped down after another node was promoted), but no --replica-of was given. Start it with --replica-of {primary} (or its current primary); to make it primary, promote it with `tally --addr {} admin promote` once it runs, or add --reset-role (it then promotes itself with a majority of its group before taking writes).",
            file.display(),
            config.listen
        )),
        _ => None,
    };
    if let Some(conflict) = conflict {
        if !config.reset_role {
            return Err(conflict);
        }
        log!(Level::Warn, "--reset-role: the flags win over {}", file.display());
    }
    if state.role.as_ref() != Some(&wanted) {
        state.role = Some(wanted);
        state.store(data_dir)?;
    }
    Ok(())
}

fn replica_shard_count(data_dir: &Path, primary: &str) -> Result<u16, String> {
    let existing = (0..SHARDS_MAX)
        .take_while(|s| crate::recovery::shard_dir(data_dir, *s).is_dir())
        .count() as u16;
    if existing > 0 {
        return Ok(existing);
    }
    let addr: SocketAddr = primary
        .parse()
        .map_err(|e| format!("primary address {primary:?}: {e}"))?;
    let deadline = Instant::now() + Duration::from_millis(PRIMARY_HELLO_WAIT_MS);
    loop {
        match ask_shard_count(addr) {
            Ok(count) => return Ok(count),
            Err(e) if Instant::now() > deadline => {
                return Err(format!(
                    "a replica's first start needs its primary {addr} to learn the shard count ({e}); start the primary first or pass --shards with the primary's count"
                ))
            }
            Err(_) => std::thread::sleep(Duration::from_millis(100)),
        }
    }
}

/// One blocking HELLO to a node: its shard count.
fn ask_shard_count(addr: SocketAddr) -> Result<u16, String> {
    use std::io::{Read, Write};
    use tally_proto::limits::FRAME_HEADER_BYTES;
    use tally_proto::{decode_reply_op, FrameBuilder, FrameHeader, FrameKind, Reply, Request};
    let timeout = Duration::from_millis(LISTENER_CHECK_MS);
    let mut stream = TcpStream::connect_timeout(&addr, timeout).map_err(|e| e.to_string())?;
    stream.set_read_timeout(Some(timeout * 4)).map_err(|e| e.to_string())?;
    let mut out = bytes::BytesMut::new();
    let mut frame = FrameBuilder::begin(&mut out, FrameKind::Request, 1);
    Request::Hello {
        client: b"tallyd-replica",
    }
    .encode(&mut out);
    frame.op_added();
    frame.finish(&mut out);
    stream.write_all(&out).map_err(|e| e.to_string())?;
    let mut head = [0u8; FRAME_HEADER_BYTES];
    stream.read_exact(&mut head).map_err(|e| e.to_string())?;
    let header = FrameHeader::parse(&head).map_err(|e| format!("{e:?}"))?;
    let mut body = vec![0u8; header.body_len as usize];
    stream.read_exact(&mut body).map_err(|e| e.to_string())?;
    match decode_reply_op(&body).map_err(|e| format!("{e:?}"))?.0.result {
        Ok(Reply::Hello(hello)) => Ok(hello.shard_count),
        other => Err(format!("unexpected HELLO reply {other:?}")),
    }
}

/// Port 0 is resolved here so that every shard binds the same port. A non-zero port is checked
/// for a live listener before the shards bind it with SO_REUSEPORT: otherwise a tallyd already
/// running there would silently share its connections with this one. The check connects rather
/// than binds: after a crash the dead node's accepted sockets linger (FIN_WAIT) on the port for up
/// to a minute, which makes a plain bind fail although nobody listens; they do not accept.
fn resolve_listen(listen: SocketAddr) -> Result<SocketAddr, String> {
    if listen.port() == 0 {
        let probe = StdTcpListener::bind(listen).map_err(|e| format!("listen address {listen}: {e}"))?;
        return probe.local_addr().map_err(|e| format!("listen address {listen}: {e}"));
    }
    check_no_listener(listen).map_err(|e| format!("listen address {e}"))?;
    Ok(listen)
}

/// Fails if something accepts connections at `addr` (an unspecified address is checked on loopback).
fn check_no_listener(addr: SocketAddr) -> Result<(), String> {
    let mut target = addr;
    if target.ip().is_unspecified() {
        target.set_ip(if addr.is_ipv4() {
            Ipv4Addr::LOCALHOST.into()
        } else {
            Ipv6Addr::LOCALHOST.into()
        });
    }
    // A node killed a moment ago can still hold its listening socket: io_uring tears a dead
    // process's rings down asynchronously, and until then the kernel completes handshakes on it.
    // So a listener must persist for LISTENER_GONE_MS_MAX before we call the port taken.
    let deadline = Instant::now() + Duration::from_millis(LISTENER_GONE_MS_MAX);
    loop {
        if TcpStream::connect_timeout(&target, Duration::from_millis(LISTENER_CHECK_MS)).is_err() {
            return Ok(());
        }
        if Instant::now() > deadline {
            return Err(format!(
                "{addr}: another process is listening there (is a tallyd already running?)"
            ));
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn direct_ports(config: &Config, listen: SocketAddr, shards: u16) -> Result<Vec<u16>, String> {
    let base = match config.shard_port_base {
        Some(base) => Some(base),
        None if config.listen.port() == 0 => None,
        None => Some(
            listen
                .port()
                .checked_add(1)
                .ok_or("listen port 65535 leaves no room for shard ports")?,
        ),
    };
    let Some(base) = base else {
        return Ok(vec![0; shards as usize]);
    };
    let mut ports = Vec::new();
    for shard in 0..shards {
        let port = base
            .checked_add(shard)
            .ok_or_else(|| format!("shard port base {base} + {shard} exceeds 65535"))?;
        let addr = SocketAddr::new(listen.ip(), port);
        check_no_listener(addr).map_err(|e| format!("shard {shard} port {e}"))?;
        ports.push(port);
    }
    Ok(ports)
}

struct ShardStart {
    shard: u16,
    recovered: RecoveredShard,
    listen: SocketAddr,
    direct_port: u16,
    unix_socket: Option<PathBuf>,
    shared: Arc<NodeShared>,
    settings: EngineSettings,
    request_mesh: MeshBuilder<ShardRequest, glommio::channels::channel_mesh::Full>,
    reply_mesh: MeshBuilder<ShardReply, glommio::channels::channel_mesh::Full>,
    history: HistoryStart,
    ready: mpsc::Sender<Result<u16, String>>,
    repl: ReplSettings,
    splits: Arc<SplitRegistry>,
    primary_addr: String,
}

async fn run_shard(start: ShardStart) {
    let ShardStart {
        shard,
        recovered,
        listen,
        direct_port,
        unix_socket,
        shared,
        settings,
        request_mesh,
        reply_mesh,
        history,
        ready,
        repl,
        splits,
        primary_addr,
    } = start;
    let fail = |message: String| {
        shared.failed.store(true, Ordering::Release);
        let _ = ready.send(Err(message));
    };
    log!(Level::Debug, "shard {shard}: startup: binding its direct port");
    let direct = match TcpListener::bind(SocketAddr::new(listen.ip(), direct_port)) {
        Ok(listener) => listener,
        Err(e) => return fail(format!("shard {shard}: bind direct port {direct_port}: {e}")),
    };
    let port = direct.local_addr().map(|a| a.port()).unwrap_or(0);
    shared.shard_ports[shard as usize].store(port, Ordering::Release);
    log!(Level::Debug, "shard {shard}: startup: joining the cross-shard meshes");
    let (Ok((request_tx, request_rx)), Ok((reply_tx, reply_rx))) = (request_mesh.join().await, reply_mesh.join().await)
    else {
        return fail(format!("shard {shard}: could not join the cross-shard mesh"));
    };
    log!(Level::Debug, "shard {shard}: startup: joining the history meshes");
    let (mut history, history_tasks) = match history.join(shard, request_tx.peer_id()).await {
        Ok(joined) => joined,
        Err(e) => return fail(e),
    };
    shared.peer_of[shard as usize].store(request_tx.peer_id(), Ordering::Release);
    assert_eq!(
        request_tx.peer_id(),
        reply_tx.peer_id(),
        "both meshes order peers by executor id"
    );
    shared.joined.fetch_add(1, Ordering::AcqRel);
    log!(Level::Debug, "shard {shard}: startup: waiting for every shard to join");
    if !barrier(&shared, &shared.joined).await {
        return fail(format!("shard {shard}: another shard failed to start"));
    }
    let peer_of: Vec<usize> = shared.peer_of.iter().map(|p| p.load(Ordering::Acquire)).collect();
    history.set_peers(peer_of.clone());

    let RecoveredShard {
        engine,
        recovered,
        pending,
        dir,
        ship_log,
        stream,
    } = recovered;
    log!(Level::Debug, "shard {shard}: startup: opening its log");
    let wal = match open_wal(shard, &dir, &settings, &recovered).await {
        Ok(wal) => wal,
        Err(e) => return fail(e),
    };
    // Records recovery's reconcile produced go first; commits make them durable.
    for (lsn, record) in &pending {
        loop {
            match wal.room() {
                Room::Ready => break,
                Room::DiskFull => {
                    return fail(format!("shard {shard}: the disk is full: cannot log recovery's merges"))
                }
                _ => {
                    if let Err(e) = wal.commit_batch(now_ms()).await {
                        return fail(format!("shard {shard}: logging recovery's merges: {e}"));
                    }
                }
            }
        }
        wal.append(*lsn, &record.record());
    }
    let stream = stream.unwrap_or_default();
    let lsn = engine.lsn();
    let ship_log = ship_log.unwrap_or_else(|| ShipLog::new(lsn + 1, crate::replication::SHIP_LOG_BYTES_MAX));
    let primary = (!shared.is_replica && repl.enabled()).then(|| {
        // Replica acks count from the last lsn this epoch inherited (its history entry's start - 1).
        let lsn_floor = stream
            .history
            .entries()
            .last()
            .and_then(|e| e.lsn_first.get(shard as usize))
            .map_or(0, |first| first - 1);
        PrimarySide::new(
            shard,
            stream.epoch,
            &repl.peers,
            ship_log.lsn_sealed(),
            ship_log.retained_first(),
            wal.lsn_durable(),
            lsn_floor,
        )
    });
    let replica = shared.is_replica.then(|| {
        let mut positions = vec![StreamPosition::default(); shared.shards as usize];
        positions[shard as usize] = StreamPosition {
            epoch_last: stream.history.epoch_last(),
            lsn_durable: lsn,
            lsn_appended: lsn,
        };
        ReplicaSide::new(Replica::new(
            repl.node_id,
            stream.epoch,
            stream.history.clone(),
            positions,
        ))
    });
    let repl = ShardRepl {
        settings: Rc::new(repl),
        dir: dir.clone(),
        stream: std::cell::RefCell::new(stream),
        ship_log: std::cell::RefCell::new(ship_log),
        primary,
        replica,
        splits,
        primary_addr,
    };
    let runtime = Rc::new(ShardRuntime::new(
        shard,
        shared.clone(),
        engine,
        request_tx,
        reply_tx,
        peer_of,
        wal,
        history,
        repl,
    ));
    if runtime.repl.primary.is_some() {
        runtime.durable.set_replicated();
    }
    // The log's durable LSN, not the engine's: reconcile's records are appended but not durable.
    shared.lsn_durable[shard as usize].store(runtime.durable.lsn_durable(), Ordering::Release);
    let commit_task = glommio::spawn_local(commit_loop(runtime.clone()));
    let maintain_task = glommio::spawn_local(maintain_loop(runtime.clone()));
    if !pending.is_empty() {
        runtime.commit_wake.signal(1);
    }
    let snapshot_task = glommio::spawn_local(snapshot_loop(runtime.clone(), settings.clone()));
    spawn_request_receivers(&runtime, request_rx);
    spawn_reply_receivers(&runtime, reply_rx);
    crate::history::spawn_tasks(&runtime, history_tasks);
    spawn_links(&runtime);
    glommio::spawn_local(crate::replication::primary::ticker(runtime.clone())).detach();
    if runtime.repl.replica.is_some() {
        glommio::spawn_local(need_loop(runtime.clone())).detach();
    }
    if runtime.repl.settings.candidate && shard == 0 {
        glommio::spawn_local(candidate_loop(runtime.clone())).detach();
    }

    log!(Level::Debug, "shard {shard}: startup: binding the main port");
    let main = match TcpListener::bind(listen) {
        Ok(listener) => listener,
        Err(e) => return fail(format!("shard {shard}: bind {listen}: {e}")),
    };
    let unix = match &unix_socket {
        Some(path) => {
            let _ = std::fs::remove_file(path);
            match UnixListener::bind(path) {
                Ok(listener) => Some(listener),
                Err(e) => return fail(format!("bind unix socket {}: {e}", path.display())),
            }
        }
        None => None,
    };
    let connections = Rc::new(Gate::new());
    let accepts = Rc::new(Gate::new());
    spawn_tcp_accept(&runtime, &accepts, &connections, main);
    spawn_tcp_accept(&runtime, &accepts, &connections, direct);
    if let Some(unix) = unix {
        spawn_unix_accept(&runtime, &accepts, &connections, unix);
    }
    let _ = ready.send(Ok(shard));
    drop(ready);

    tick_until_shutdown(&runtime, &settings.hot).await;

    // Stop accepting, let connections answer what they read, then wait for the other shards.
    runtime.shutdown.close();
    let _ = accepts.close().await;
    let _ = connections.close().await;
    // This shard's connections are answered, but other shards may still forward writes here
    // until theirs are: keep the commit loop running until every shard has drained, then let it
    // write what is left and stop.
    shared.drained.fetch_add(1, Ordering::AcqRel);
    let deadline = Instant::now() + Duration::from_millis(SHUTDOWN_DRAIN_MS_MAX);
    while shared.drained.load(Ordering::Acquire) < shared.shards as usize && Instant::now() < deadline {
        glommio::timer::sleep(Duration::from_millis(1)).await;
    }
    runtime.connections_drained.set(true);
    runtime.commit_wake.signal(1);
    commit_task.await;
    maintain_task.cancel().await;
    snapshot_task.cancel().await;
    log!(Level::Debug, "shard {shard} stopped");
}

/// Waits until `counter` reaches the shard count or a shard fails. Startup only.
async fn barrier(shared: &NodeShared, counter: &AtomicUsize) -> bool {
    let deadline = Instant::now() + Duration::from_millis(STARTUP_BARRIER_MS_MAX);
    while counter.load(Ordering::Acquire) < shared.shards as usize {
        if shared.failed.load(Ordering::Acquire) || Instant::now() > deadline {
            return false;
        }
        glommio::timer::sleep(Duration::from_millis(1)).await;
    }
    true
}

/// Runs the engine's periodic work until shutdown is requested.
async fn tick_until_shutdown(runtime: &Rc<ShardRuntime>, hot: &HotConfig) {
    let mut next_tick = Instant::now() + Duration::from_millis(hot.tick_ms);
    // From 0, not the current generation: a promotion requested before this shard got here (a
    // restarting primary's candidate loop on shard 0 may ask within ms of starting) is still its.
    let mut promotions_seen = 0;
    let mut commit_poked = Instant::now();
    loop {
        glommio::timer::sleep(Duration::from_millis(SHUTDOWN_POLL_MS)).await;
        if shutdown_requested(&runtime.node) || runtime.node.failed.load(Ordering::Acquire) {
            return;
        }
        if commit_poked.elapsed() >= Duration::from_millis(WAL_MAINTAIN_MS) {
            // The commit loop's periodic look (poison, a spare used up) without a timer of its own.
            runtime.commit_wake.signal(1);
            commit_poked = Instant::now();
        }
        if runtime.repl.replica.is_some() {
            // A replica's state changes only through its primary's stream: its ticks (time
            // windows, dedup expiry) must log nothing. They cannot, with splitting off on
            // replicated nodes; a tick that did would break the stream, so it is checked.
            poll_promotion(runtime, &mut promotions_seen);
            if Instant::now() >= next_tick {
                let lsn_before = runtime.engine.borrow().lsn();
                runtime
                    .engine
                    .borrow_mut()
                    .tick(runtime.clock_ms(), &mut tally_engine::log::NullLog);
                assert_eq!(
                    runtime.engine.borrow().lsn(),
                    lsn_before,
                    "a replica's tick logged a record"
                );
                next_tick += Duration::from_millis(hot.tick_ms);
            }
            continue;
        }
        if Instant::now() >= next_tick {
            // Splits and merges are logged; skip a tick while the open batch is full or the log failed.
            let now = runtime.clock_ms();
            if runtime.wal.room_for(TICK_LOG_BYTES_MAX) == Room::Ready
                && runtime.durable.fault().is_none()
                && !runtime.wal.is_poisoned()
                && !runtime.batch_second_changed(now)
            {
                let lsn_before = runtime.engine.borrow().lsn();
                runtime.with_sink(|sink| runtime.engine.borrow_mut().tick(now, sink));
                if runtime.engine.borrow().lsn() != lsn_before {
                    if runtime.batch_time_ms.get().is_none() {
                        runtime.batch_time_ms.set(Some(now));
                    }
                    runtime.commit_wake.signal(1);
                }
            } else {
                // Seal the open batch so that the next tick finds room (or a batch of this second).
                runtime.commit_wake.signal(1);
            }
            next_tick += Duration::from_millis(hot.tick_ms);
        }
    }
}

/// Counts a connection for its life; refuses it beyond `CONNECTIONS_MAX`.
struct ConnectionSlot {
    runtime: Rc<ShardRuntime>,
}

impl ConnectionSlot {
    fn take(runtime: &Rc<ShardRuntime>) -> Option<ConnectionSlot> {
        let before = runtime.node.connections.fetch_add(1, Ordering::AcqRel);
        if before >= runtime.node.connections_max {
            runtime.node.connections.fetch_sub(1, Ordering::AcqRel);
            return None;
        }
        runtime.counters.connections.set(runtime.counters.connections.get() + 1);
        Some(ConnectionSlot {
            runtime: runtime.clone(),
        })
    }
}

impl Drop for ConnectionSlot {
    fn drop(&mut self) {
        self.runtime.node.connections.fetch_sub(1, Ordering::AcqRel);
        let counters = &self.runtime.counters;
        counters.connections.set(counters.connections.get() - 1);
    }
}

macro_rules! accept_loop {
    ($runtime:expr, $accepts:expr, $connections:expr, $listener:expr, $setup:expr) => {{
        let runtime = $runtime.clone();
        let connections = $connections.clone();
        let listener = $listener;
        // A dropped glommio Task is cancelled: detach, the gate tracks it.
        let accept_task = $accepts.spawn(async move {
            loop {
                let shutdown = runtime.shutdown.clone();
                let accepted = futures_lite::future::or(async { Some(listener.accept().await) }, async move {
                    let _ = shutdown.acquire(1).await;
                    None
                })
                .await;
                let stream = match accepted {
                    None => break,
                    Some(Ok(stream)) => stream,
                    Some(Err(e)) => {
                        // Out of descriptors or a reset during accept: back off briefly, keep serving.
                        log!(Level::Warn, "shard {}: accept: {e}", runtime.id);
                        glommio::timer::sleep(Duration::from_millis(10)).await;
                        continue;
                    }
                };
                #[allow(clippy::redundant_closure_call)]
                ($setup)(&stream);
                let Some(slot) = ConnectionSlot::take(&runtime) else {
                    let limit = runtime.node.connections_max;
                    glommio::spawn_local(async move {
                        let message = format!("node is at its connection limit ({limit})");
                        connection::refuse(stream, ErrorCode::TooManyConnections, &message).await;
                    })
                    .detach();
                    continue;
                };
                let runtime = runtime.clone();
                match connections.spawn(async move {
                    connection::serve(runtime, stream).await;
                    drop(slot);
                }) {
                    Ok(task) => task.detach(),
                    Err(_) => break, // The gate is closed: shutting down.
                };
            }
        });
        if let Ok(task) = accept_task {
            task.detach();
        }
    }};
}

fn spawn_tcp_accept(runtime: &Rc<ShardRuntime>, accepts: &Rc<Gate>, connections: &Rc<Gate>, listener: TcpListener) {
    accept_loop!(
        runtime,
        accepts,
        connections,
        listener,
        |stream: &glommio::net::TcpStream| {
            let _ = stream.set_nodelay(true);
        }
    );
}

fn spawn_unix_accept(runtime: &Rc<ShardRuntime>, accepts: &Rc<Gate>, connections: &Rc<Gate>, listener: UnixListener) {
    accept_loop!(
        runtime,
        accepts,
        connections,
        listener,
        |_: &glommio::net::UnixStream| {}
    );
}

async fn open_wal(
    shard: u16,
    dir: &Path,
    settings: &EngineSettings,
    recovered: &Recovered,
) -> Result<Wal<DmaStorage>, String> {
    let storage = DmaStorage::open(dir)
        .await
        .map_err(|e| format!("shard {shard}: open {}: {e}", dir.display()))?;
    let config = WalConfig {
        segment_bytes: settings.segment_bytes,
        retention_ms: settings.retention_ms,
        ..WalConfig::new(shard)
    };
    Wal::open(storage, config, recovered)
        .await
        .map_err(|e| format!("shard {shard}: open the log in {}: {e}", dir.display()))
}

/// Group commit: while records are appended and not durable, write and fdatasync them as one
/// batch; everything appended meanwhile forms the next. At most one commit is in flight. A failed
/// write or sync poisons the log for good (never retried: a retried fsync can report success for
/// data the kernel already dropped).
async fn commit_loop(runtime: Rc<ShardRuntime>) {
    let shard = runtime.id;
    loop {
        if runtime.wal.is_poisoned() && runtime.durable.fault().is_none() {
            log!(
                Level::Error,
                "SHARD {shard} LOG POISONED: a log write or sync failed. This shard acks no more writes; restart tallyd to recover from disk."
            );
            runtime.durable.poison(LogFault::Poisoned);
        }
        // A rotation used the spare segment up: have the next one prepared now, not at the next
        // maintenance tick, or the end of the current segment would look like a full disk.
        if runtime.wal.room() == Room::DiskFull && !runtime.wal.is_disk_full() {
            runtime.maintain_wake.signal(1);
        }
        let pending = runtime.wal.lsn_appended() > runtime.durable.lsn_durable();
        if pending && runtime.durable.fault().is_none() {
            let records = runtime.wal.lsn_appended() - runtime.durable.lsn_durable();
            let started = Instant::now();
            // The batch carries its first record's apply time (on a replica, its primary's time).
            // Taking it and sealing happen in one step (commit_batch seals before its first
            // await), and ops waiting for the seal (`apply_logged`) run only once this task
            // awaits the write. A primary ships what it seals now, before its own fsync (the
            // replicas' fsyncs run beside it).
            let batch_time_ms = runtime.batch_time_ms.take().unwrap_or_else(|| runtime.clock_ms());
            if runtime.repl.tees() {
                let sealed = runtime.repl.ship_log.borrow_mut().seal(batch_time_ms);
                if let (Some(lsn), Some(primary)) = (sealed, &runtime.repl.primary) {
                    primary.sealed(lsn, runtime.repl.ship_log.borrow().retained_first());
                }
            }
            runtime.durable.notify();
            match runtime.wal.commit_batch(batch_time_ms).await {
                // Maintenance failed while this commit was in flight: the shard acks nothing more.
                Ok(_) if runtime.durable.fault().is_some() => {}
                Ok(lsn) => {
                    runtime.durable.advance(lsn);
                    crate::replication::primary::local_durable(&runtime, lsn);
                    runtime.node.lsn_durable[shard as usize].store(lsn, Ordering::Release);
                    let counters = &runtime.counters;
                    counters.wal_commits.set(counters.wal_commits.get() + 1);
                    let us = started.elapsed().as_micros() as u64;
                    counters.wal_commit_us.set(counters.wal_commit_us.get() + us);
                    counters.wal_records.set(counters.wal_records.get() + records);
                }
                Err(e) => {
                    log!(
                        Level::Error,
                        "SHARD {shard} LOG POISONED: {e}. This shard acks no more writes; restart tallyd to recover from disk."
                    );
                    runtime.durable.poison(LogFault::Poisoned);
                }
            }
            continue;
        }
        if runtime.connections_drained.get() {
            return;
        }
        // Woken by appends, and every WAL_MAINTAIN_MS by the shard's tick loop (a timer per wait
        // here would cost an io_uring timeout and its cancellation per commit).
        if runtime.commit_wake.acquire(1).await.is_err() {
            return;
        }
        crate::durability::take_wakeups(&runtime.commit_wake);
    }
}

/// Keeps the next segment preallocated and applies retention: every `WAL_MAINTAIN_MS`, and at
/// once when the commit loop finds the spare used up. Runs beside the commit loop (preallocation
/// writes a whole segment, tens of ms that acks must not wait for). Stops when the log fails.
async fn maintain_loop(runtime: Rc<ShardRuntime>) {
    let shard = runtime.id;
    let mut disk_full_logged = false;
    while runtime.durable.fault().is_none() {
        let result = runtime.wal.maintain(now_ms()).await;
        // Writes waiting for the next segment look again: it is ready, or the disk is full.
        runtime.durable.notify();
        match result {
            Ok(()) => disk_full_logged = false,
            Err(WalError::DiskFull) => {
                if !disk_full_logged {
                    log!(
                        Level::Error,
                        "shard {shard}: the disk is full: writes are refused with disk_full until space returns"
                    );
                    disk_full_logged = true;
                }
            }
            Err(e) => {
                log!(Level::Error, "SHARD {shard} LOG POISONED during maintenance: {e}. This shard acks no more writes; restart tallyd.");
                runtime.durable.poison(LogFault::Poisoned);
                return;
            }
        }
        wait_signal_or(&runtime.maintain_wake, Duration::from_millis(WAL_MAINTAIN_MS)).await;
    }
}

/// Waits for a signal on `wake` or for `timeout`, then takes every permit signalled meanwhile
/// (signals are wake-ups, not counts).
async fn wait_signal_or(wake: &Semaphore, timeout: Duration) {
    let _ = futures_lite::future::or(
        async {
            let _ = wake.acquire(1).await;
        },
        glommio::timer::sleep(timeout),
    )
    .await;
    crate::durability::take_wakeups(wake);
}

/// Writes a snapshot every `snapshot_records` records or `snapshot_interval_ms`, whichever comes
/// first (if anything changed), so restart replays a bounded log. Serialising blocks this core
/// for about 40 ns per counter; writing the file does not.
async fn snapshot_loop(runtime: Rc<ShardRuntime>, settings: EngineSettings) {
    let shard = runtime.id;
    let mut last_lsn = runtime.engine.borrow().lsn();
    let mut last_time = Instant::now();
    let mut body = Vec::new();
    loop {
        glommio::timer::sleep(Duration::from_millis(SNAPSHOT_POLL_MS)).await;
        let lsn = runtime.engine.borrow().lsn();
        let due = lsn >= last_lsn + settings.snapshot_records
            || (lsn > last_lsn && last_time.elapsed() >= Duration::from_millis(settings.snapshot_interval_ms));
        if !due || runtime.durable.fault().is_some() {
            continue;
        }
        body.clear();
        let deps = runtime.engine.borrow().snapshot(&mut body);
        // The snapshot may replace older state only once what it relies on is durable: its own
        // LSN here, and other shards' merges it already folded out of its slots.
        if runtime.durable.wait(deps.lsn).await.is_err() {
            continue;
        }
        let deadline = Instant::now() + Duration::from_millis(SNAPSHOT_DEPS_WAIT_MS);
        let mut ready = true;
        for (other, needed) in &deps.durable_lsn_required {
            while runtime.node.lsn_durable[*other as usize].load(Ordering::Acquire) < *needed {
                if Instant::now() > deadline {
                    ready = false;
                    break;
                }
                glommio::timer::sleep(Duration::from_millis(1)).await;
            }
        }
        if !ready {
            log!(
                Level::Warn,
                "shard {shard}: snapshot at lsn {} skipped: another shard's log lags",
                deps.lsn
            );
            continue;
        }
        match runtime.wal.write_snapshot(deps.lsn, &body).await {
            Ok(()) => {
                last_lsn = deps.lsn;
                last_time = Instant::now();
                // Do not keep a buffer the size of the shard between snapshots (minutes apart).
                body = Vec::new();
                runtime.counters.snapshots.set(runtime.counters.snapshots.get() + 1);
                log!(
                    Level::Debug,
                    "shard {shard}: snapshot at lsn {} ({} bytes)",
                    deps.lsn,
                    body.len()
                );
            }
            Err(e) => log!(Level::Warn, "shard {shard}: snapshot at lsn {} failed: {e}", deps.lsn),
        }
    }
}
