//! An in-process fake Tally server for the SDK's tests: std listeners on 127.0.0.1:0 (a main port,
//! one port per shard, optionally a Unix socket), one thread per connection, frames decoded with
//! `tally_proto` and answered from one in-memory map shared by every shard. It logs which listener
//! served each op, and can be told to misbehave (drop a connection once, hold replies, refuse or
//! stall frames, answer with the wrong request id) so tests can check the client's reactions.
//!
//! Linux-only, like the server it stands in for. Every loop is bounded: accept loops end when the server is dropped, connection loops end at
//! end-of-stream, and dropping the server shuts down every connection it accepted.

#![allow(dead_code)]

use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

use bytes::BytesMut;
use tally_proto::frame::encode_error_frame;
use tally_proto::limits::{FRAME_BYTES_MAX, FRAME_HEADER_BYTES};
use tally_proto::reply::{REPLY_DUPLICATE, REPLY_EXISTS, REPLY_SPLIT, REPLY_STRICT};
use tally_proto::{
    encode_error_reply, CounterKind, DecodeError, ErrorCode, FrameBuilder, FrameHeader, FrameKind, HeaderCheck,
    HelloReply, Opcode, Reply, Request, RequestOps, StatsReply, Token,
};

/// A port nothing listens on (privileged, never bound in the test environment): connecting to it
/// is refused at once.
pub const DEAD_PORT: u16 = 1;

#[derive(Debug, Clone)]
pub struct FakeConfig {
    pub shards: u16,
    /// The shard the main port's HELLO reports.
    pub main_shard: u16,
    /// Report `DEAD_PORT` for every shard instead of the real shard listeners.
    pub dead_shard_ports: bool,
    /// Names whose replies carry `REPLY_SPLIT`.
    pub split: Vec<&'static str>,
    /// Answer request frames in groups of this many (HELLO is always answered at once). A client
    /// with fewer frames in flight waits until its read timeout.
    pub hold_frames: usize,
    /// After applying the first op with this opcode, close the connection without replying (once
    /// per server).
    pub drop_once_after: Option<Opcode>,
    /// Refuse request frames but HELLO with an error frame of this code...
    pub refuse_frames: Option<ErrorCode>,
    /// ...only the first this many of them (0: every one).
    pub refuse_first: usize,
    /// Never answer request frames but HELLO.
    pub stall: bool,
    /// Answer request frames but HELLO with a request id off by 1000.
    pub wrong_request_id: bool,
    /// Also listen on a Unix socket.
    pub unix: bool,
}

impl Default for FakeConfig {
    fn default() -> FakeConfig {
        FakeConfig {
            shards: 1,
            main_shard: 0,
            dead_shard_ports: false,
            split: Vec::new(),
            hold_frames: 1,
            drop_once_after: None,
            refuse_frames: None,
            refuse_first: 0,
            stall: false,
            wrong_request_id: false,
            unix: false,
        }
    }
}

/// Which socket a connection came in on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Listener {
    Main,
    Shard(u16),
    Unix,
}

/// One op the fake served.
#[derive(Debug, Clone)]
pub struct Served {
    pub listener: Listener,
    /// The shard this connection's HELLO reported.
    pub shard: u16,
    pub connection: u64,
    pub request_id: u64,
    pub frame_ops: u16,
    pub opcode: Opcode,
    pub name: Vec<u8>,
    pub key: Option<u128>,
}

#[derive(Debug, Clone, Copy)]
struct Counter {
    value: i64,
    strict: bool,
    min: Option<i64>,
    max: Option<i64>,
}

struct KeyOutcome {
    name: Vec<u8>,
    delta: i64,
    value: i64,
}

#[derive(Default)]
struct State {
    counters: HashMap<Vec<u8>, Counter>,
    keys: HashMap<u128, KeyOutcome>,
    lsn: u64,
    served: Vec<Served>,
    client_names: Vec<String>,
}

struct Shared {
    config: FakeConfig,
    state: Mutex<State>,
    shard_ports: Vec<u16>,
    drop_armed: AtomicBool,
    refused_frames: AtomicUsize,
    stop: AtomicBool,
    connections: AtomicU64,
    /// Clones of every accepted TCP stream, shut down when the server is dropped.
    streams: Mutex<Vec<TcpStream>>,
    unix_streams: Mutex<Vec<UnixStream>>,
}

pub struct FakeServer {
    pub addr: SocketAddr,
    pub shard_addrs: Vec<SocketAddr>,
    pub unix_path: Option<PathBuf>,
    shared: Arc<Shared>,
    accept_threads: Vec<JoinHandle<()>>,
}

static UNIX_PATH_NEXT: AtomicU64 = AtomicU64::new(0);

impl FakeServer {
    pub fn start(config: FakeConfig) -> FakeServer {
        assert!(config.shards >= 1);
        assert!(config.main_shard < config.shards);
        assert!(config.hold_frames >= 1);
        let bind = || TcpListener::bind("127.0.0.1:0").expect("bind a loopback port");
        let main = bind();
        let shard_listeners: Vec<TcpListener> = (0..config.shards).map(|_| bind()).collect();
        let shard_addrs: Vec<SocketAddr> = shard_listeners.iter().map(|l| l.local_addr().unwrap()).collect();
        let shard_ports = if config.dead_shard_ports {
            vec![DEAD_PORT; usize::from(config.shards)]
        } else {
            shard_addrs.iter().map(SocketAddr::port).collect()
        };
        let shared = Arc::new(Shared {
            drop_armed: AtomicBool::new(config.drop_once_after.is_some()),
            refused_frames: AtomicUsize::new(0),
            config: config.clone(),
            state: Mutex::new(State::default()),
            shard_ports,
            stop: AtomicBool::new(false),
            connections: AtomicU64::new(0),
            streams: Mutex::new(Vec::new()),
            unix_streams: Mutex::new(Vec::new()),
        });
        let addr = main.local_addr().unwrap();
        let mut accept_threads = vec![spawn_tcp_accept(main, Listener::Main, shared.clone())];
        for (shard, listener) in shard_listeners.into_iter().enumerate() {
            let shard = u16::try_from(shard).unwrap();
            accept_threads.push(spawn_tcp_accept(listener, Listener::Shard(shard), shared.clone()));
        }
        let mut unix_path = None;
        if config.unix {
            let path = std::env::temp_dir().join(format!(
                "tally-sdk-test-{}-{}.sock",
                std::process::id(),
                UNIX_PATH_NEXT.fetch_add(1, Ordering::Relaxed)
            ));
            let _ = std::fs::remove_file(&path);
            let listener = UnixListener::bind(&path).expect("bind a unix socket");
            let shared = shared.clone();
            accept_threads.push(std::thread::spawn(move || {
                for stream in listener.incoming() {
                    if shared.stop.load(Ordering::SeqCst) {
                        return;
                    }
                    let Ok(stream) = stream else { return };
                    shared.unix_streams.lock().unwrap().push(stream.try_clone().unwrap());
                    let shared = shared.clone();
                    std::thread::spawn(move || serve(stream, Listener::Unix, shared));
                }
            }));
            unix_path = Some(path);
        }
        FakeServer {
            addr,
            shard_addrs,
            unix_path,
            shared,
            accept_threads,
        }
    }

    /// The main port as `host:port`.
    pub fn addr(&self) -> String {
        self.addr.to_string()
    }

    pub fn value(&self, name: &str) -> Option<i64> {
        self.state().counters.get(name.as_bytes()).map(|c| c.value)
    }

    /// Every op served so far except the HELLOs that open connections.
    pub fn served(&self) -> Vec<Served> {
        self.state()
            .served
            .iter()
            .filter(|s| s.opcode != Opcode::Hello)
            .cloned()
            .collect()
    }

    pub fn served_op(&self, opcode: Opcode) -> Vec<Served> {
        self.served().into_iter().filter(|s| s.opcode == opcode).collect()
    }

    pub fn client_names(&self) -> Vec<String> {
        self.state().client_names.clone()
    }

    /// Connections accepted so far, on every listener.
    pub fn connections(&self) -> u64 {
        self.shared.connections.load(Ordering::SeqCst)
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.shared.state.lock().unwrap()
    }
}

impl Drop for FakeServer {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::SeqCst);
        // Wake every accept loop with a connection it will see the stop flag on.
        let _ = TcpStream::connect(self.addr);
        for addr in &self.shard_addrs {
            let _ = TcpStream::connect(addr);
        }
        if let Some(path) = &self.unix_path {
            let _ = UnixStream::connect(path);
        }
        for thread in self.accept_threads.drain(..) {
            thread.join().expect("accept loop");
        }
        for stream in self.shared.streams.lock().unwrap().drain(..) {
            let _ = stream.shutdown(Shutdown::Both);
        }
        for stream in self.shared.unix_streams.lock().unwrap().drain(..) {
            let _ = stream.shutdown(Shutdown::Both);
        }
        if let Some(path) = &self.unix_path {
            let _ = std::fs::remove_file(path);
        }
    }
}

fn spawn_tcp_accept(listener: TcpListener, kind: Listener, shared: Arc<Shared>) -> JoinHandle<()> {
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            if shared.stop.load(Ordering::SeqCst) {
                return;
            }
            let Ok(stream) = stream else { return };
            stream.set_nodelay(true).unwrap();
            shared.streams.lock().unwrap().push(stream.try_clone().unwrap());
            let shared = shared.clone();
            std::thread::spawn(move || serve(stream, kind, shared));
        }
    })
}

/// Serves one connection until end-of-stream (or a configured drop).
fn serve<S: Stream>(mut stream: S, listener: Listener, shared: Arc<Shared>) {
    let connection = shared.connections.fetch_add(1, Ordering::SeqCst);
    let config = &shared.config;
    let shard = match listener {
        Listener::Shard(shard) => shard,
        Listener::Main | Listener::Unix => config.main_shard,
    };
    let mut out = BytesMut::new();
    let mut held = 0;
    loop {
        let mut head = [0u8; FRAME_HEADER_BYTES];
        if stream.read_exact(&mut head).is_err() {
            return;
        }
        let Ok(header) = FrameHeader::parse(&head) else { return };
        if header.body_len > FRAME_BYTES_MAX {
            return;
        }
        let mut body = vec![0u8; header.body_len as usize];
        if stream.read_exact(&mut body).is_err() {
            return;
        }
        let is_hello = body.first() == Some(&(Opcode::Hello as u8));
        if config.stall && !is_hello {
            continue;
        }
        let reply_id = if config.wrong_request_id && !is_hello {
            header.request_id + 1000
        } else {
            header.request_id
        };
        match header.check_request() {
            HeaderCheck::Refuse { code, message } => encode_error_frame(&mut out, reply_id, code, &message),
            HeaderCheck::Serve => match config.refuse_frames {
                Some(code) if !is_hello && refuse_this_frame(&shared) => {
                    encode_error_frame(&mut out, reply_id, code, "refused by the fake")
                }
                _ => {
                    let mut frame = FrameBuilder::begin(&mut out, FrameKind::Response, reply_id);
                    for (opcode, request) in RequestOps::new(&body, header.op_count) {
                        match request {
                            Ok(request) => {
                                let result = {
                                    let mut state = shared.state.lock().unwrap();
                                    state.served.push(Served {
                                        listener,
                                        shard,
                                        connection,
                                        request_id: header.request_id,
                                        frame_ops: header.op_count,
                                        opcode: request.opcode(),
                                        name: request.name().unwrap_or_default().to_vec(),
                                        key: request_key(&request),
                                    });
                                    apply(&mut state, &shared, shard, &request)
                                };
                                match result {
                                    Ok(reply) => reply.encode(&mut out),
                                    Err((code, current, message)) => {
                                        encode_error_reply(&mut out, opcode, code, current, &message)
                                    }
                                }
                                if Some(request.opcode()) == config.drop_once_after
                                    && shared.drop_armed.swap(false, Ordering::SeqCst)
                                {
                                    // Applied, never acked: the client cannot tell whether it
                                    // counted. The accept loop keeps a clone of the stream, so
                                    // shut the socket down rather than only dropping this handle.
                                    stream.shut();
                                    return;
                                }
                            }
                            Err(DecodeError::Invalid { code, message }) => {
                                encode_error_reply(&mut out, opcode, code, None, &message)
                            }
                            Err(other) => panic!("RequestOps yields only Invalid errors, got {other:?}"),
                        }
                        frame.op_added();
                    }
                    frame.finish(&mut out);
                }
            },
        }
        if !is_hello {
            held += 1;
        }
        if is_hello || held >= config.hold_frames {
            if stream.write_all(&out).is_err() {
                return;
            }
            out.clear();
            held = 0;
        }
    }
}

fn refuse_this_frame(shared: &Shared) -> bool {
    let refused = shared.refused_frames.fetch_add(1, Ordering::SeqCst);
    shared.config.refuse_first == 0 || refused < shared.config.refuse_first
}

/// A socket the fake serves: readable, writable, and closable from any handle.
trait Stream: Read + Write {
    fn shut(&self);
}

impl Stream for TcpStream {
    fn shut(&self) {
        let _ = self.shutdown(Shutdown::Both);
    }
}

impl Stream for UnixStream {
    fn shut(&self) {
        let _ = self.shutdown(Shutdown::Both);
    }
}

fn request_key(request: &Request<'_>) -> Option<u128> {
    match request {
        Request::Incr { key, .. } | Request::AddBounded { key, .. } => *key,
        _ => None,
    }
}

type Refusal = (ErrorCode, Option<i64>, String);

fn refuse(code: ErrorCode, current: Option<i64>, message: &str) -> Refusal {
    (code, current, message.to_owned())
}

fn apply(state: &mut State, shared: &Shared, shard: u16, request: &Request<'_>) -> Result<Reply, Refusal> {
    let config = &shared.config;
    let split = |name: &[u8]| config.split.iter().any(|s| s.as_bytes() == name);
    match *request {
        Request::Hello { client } => {
            state.client_names.push(String::from_utf8_lossy(client).into_owned());
            Ok(Reply::Hello(HelloReply {
                version: 1,
                shard_count: config.shards,
                shard,
                shard_ports: shared.shard_ports.clone(),
                server: "fake/0".into(),
            }))
        }
        Request::Incr { name, delta, key } => {
            if let Some(key) = key {
                if let Some(seen) = state.keys.get(&key) {
                    if seen.name != name || seen.delta != delta {
                        return Err(refuse(ErrorCode::IdempotencyConflict, None, "key reused"));
                    }
                    let flags = REPLY_DUPLICATE | if split(name) { REPLY_SPLIT } else { 0 };
                    let value = seen.value;
                    return Ok(Reply::Incr {
                        value,
                        flags,
                        token: Token { shard, lsn: state.lsn },
                    });
                }
            }
            let counter = state.counters.entry(name.to_vec()).or_insert(Counter {
                value: 0,
                strict: false,
                min: None,
                max: None,
            });
            let Some(value) = counter.value.checked_add(delta) else {
                return Err(refuse(ErrorCode::Overflow, None, "i64 overflow"));
            };
            if counter.min.is_some_and(|min| value < min) || counter.max.is_some_and(|max| value > max) {
                return Err(refuse(ErrorCode::BoundViolation, Some(counter.value), "declared bound"));
            }
            counter.value = value;
            state.lsn += 1;
            if let Some(key) = key {
                state.keys.insert(
                    key,
                    KeyOutcome {
                        name: name.to_vec(),
                        delta,
                        value,
                    },
                );
            }
            Ok(Reply::Incr {
                value,
                flags: if split(name) { REPLY_SPLIT } else { 0 },
                token: Token { shard, lsn: state.lsn },
            })
        }
        Request::Get { name, .. } => {
            let counter = state.counters.get(name).copied();
            let mut flags = if split(name) { REPLY_SPLIT } else { 0 };
            if let Some(counter) = counter {
                flags |= REPLY_EXISTS;
                if counter.strict {
                    flags |= REPLY_STRICT;
                }
            }
            Ok(Reply::Get {
                value: counter.map_or(0, |c| c.value),
                flags,
            })
        }
        Request::Create {
            name,
            kind,
            initial,
            min,
            max,
        } => {
            let strict = kind == CounterKind::Strict;
            if !strict && (min.is_some() || max.is_some()) {
                return Err(refuse(ErrorCode::InvalidArgument, None, "bounds need a strict counter"));
            }
            if min.is_some_and(|min| initial < min) || max.is_some_and(|max| initial > max) {
                return Err(refuse(ErrorCode::InvalidArgument, None, "initial value outside bounds"));
            }
            let wanted = Counter {
                value: initial,
                strict,
                min,
                max,
            };
            let flags = if strict { REPLY_STRICT } else { 0 };
            if let Some(existing) = state.counters.get(name) {
                if existing.strict != strict || existing.min != min || existing.max != max {
                    return Err(refuse(ErrorCode::AlreadyExists, None, "declared differently"));
                }
                return Ok(Reply::Create {
                    created: false,
                    value: existing.value,
                    flags,
                });
            }
            state.counters.insert(name.to_vec(), wanted);
            Ok(Reply::Create {
                created: true,
                value: initial,
                flags,
            })
        }
        Request::Cas { name, expected, new } => {
            let counter = strict_counter(state, name)?;
            if counter.value != expected {
                return Err(refuse(
                    ErrorCode::CasMismatch,
                    Some(counter.value),
                    "expected another value",
                ));
            }
            counter.value = new;
            state.lsn += 1;
            Ok(Reply::Cas {
                value: new,
                token: Token { shard, lsn: state.lsn },
            })
        }
        Request::AddBounded {
            name,
            delta,
            min,
            max,
            key,
        } => {
            if let Some(seen) = key.and_then(|key| state.keys.get(&key)) {
                return Ok(Reply::AddBounded {
                    value: seen.value,
                    flags: REPLY_DUPLICATE | REPLY_STRICT,
                    token: Token { shard, lsn: state.lsn },
                });
            }
            let counter = strict_counter(state, name)?;
            let current = counter.value;
            let Some(value) = current.checked_add(delta) else {
                return Err(refuse(ErrorCode::Overflow, None, "i64 overflow"));
            };
            let below = value < min || counter.min.is_some_and(|m| value < m);
            let above = value > max || counter.max.is_some_and(|m| value > m);
            if below || above {
                return Err(refuse(ErrorCode::BoundViolation, Some(current), "would cross a bound"));
            }
            counter.value = value;
            state.lsn += 1;
            if let Some(key) = key {
                state.keys.insert(
                    key,
                    KeyOutcome {
                        name: name.to_vec(),
                        delta,
                        value,
                    },
                );
            }
            Ok(Reply::AddBounded {
                value,
                flags: REPLY_STRICT,
                token: Token { shard, lsn: state.lsn },
            })
        }
        Request::Reset { name, value, .. } => {
            let Some(counter) = state.counters.get_mut(name) else {
                return Err(refuse(ErrorCode::NotFound, None, "no such counter"));
            };
            let old = counter.value;
            counter.value = value;
            state.lsn += 1;
            Ok(Reply::Reset {
                old,
                new: value,
                token: Token { shard, lsn: state.lsn },
            })
        }
        Request::Promote { .. } => Err(refuse(ErrorCode::InvalidArgument, None, "the fake is no replica")),
        Request::Stats => Ok(Reply::Stats(StatsReply {
            figures: vec![
                ("fake.counters".into(), state.counters.len() as i64),
                ("fake.shard".into(), i64::from(shard)),
            ],
            split: config.split.iter().map(|s| s.as_bytes().to_vec()).collect(),
        })),
        // History ops, answered from the counter values so the SDK's joining and paging can be
        // checked: a window is the value, a series point is its step number, and EVENTS gives
        // three pages of one event each, numbered by the cursor.
        Request::Window { name, .. } => Ok(Reply::Window {
            value: state.counters.get(name).map_or(0, |c| c.value),
            from_ms: 0,
            to_ms: 1_000,
        }),
        Request::Series {
            from_ms, to_ms, step, ..
        } => {
            let step_ms = step.ms();
            let from = from_ms - from_ms % step_ms;
            let points = (from / step_ms..to_ms.div_ceil(step_ms)).map(|i| i as i64).collect();
            Ok(Reply::Series {
                from_ms: from,
                step_ms,
                points,
            })
        }
        Request::Audit { .. } => Ok(Reply::Audit {
            records: Vec::new(),
            cursor: Vec::new(),
        }),
        Request::Events { cursor, .. } => {
            let page = cursor.first().copied().unwrap_or(0);
            Ok(Reply::Events {
                events: vec![tally_proto::Event {
                    time_ms: u64::from(page),
                    shard,
                    lsn: u64::from(page) + 1,
                    delta: 1,
                    kind: tally_proto::EventKind::Incr,
                    key: None,
                }],
                cursor: if page < 2 { vec![page + 1] } else { Vec::new() },
            })
        }
    }
}

fn strict_counter<'s>(state: &'s mut State, name: &[u8]) -> Result<&'s mut Counter, Refusal> {
    let Some(counter) = state.counters.get_mut(name) else {
        return Err(refuse(ErrorCode::NotFound, None, "no such counter"));
    };
    if !counter.strict {
        return Err(refuse(ErrorCode::WrongKind, None, "not a strict counter"));
    }
    Ok(counter)
}
