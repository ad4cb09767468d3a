//! Helpers for end-to-end tests: start a real `tallyd` on loopback with a fresh data directory,
//! wait for its `ready` line, talk raw protocol to it, and stop or kill it.
//!
//! Servers bind 127.0.0.1 port 0 (the kernel picks a free port) and report the port on their
//! ready line, or a port block from `ports` when peers must know the address in advance; every
//! wait here is bounded and fails the test rather than hanging.
//!
//! Replication tests add: `ports` (blocks of free consecutive ports), `proxy` (a fault-injecting
//! TCP proxy), `jepsen` (the counter-rule checker) and `cluster` (a primary and two replicas).

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use bytes::BytesMut;
use tally_proto::frame::decode_error_frame;
use tally_proto::limits::FRAME_HEADER_BYTES;
use tally_proto::{decode_reply_op, FrameBuilder, FrameHeader, FrameKind, ReplyOp, Request};

pub mod cluster;
pub mod jepsen;
pub mod ports;
pub mod proxy;

/// How often `wait_until` looks again: short against every wait it serves, long enough that a
/// poll costs nothing next to the tallyd processes on a shared machine.
const POLL_INTERVAL: Duration = Duration::from_millis(5);

/// Polls `condition` until it holds; panics naming `what` after `timeout`. Every wait in these
/// tests is one of these, never a bare sleep.
pub fn wait_until(what: &str, timeout: Duration, mut condition: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !condition() {
        assert!(
            Instant::now() < deadline,
            "timed out after {timeout:?} waiting for {what}"
        );
        std::thread::sleep(POLL_INTERVAL);
    }
}

/// `wait_until` for a value: polls `probe` until it returns `Some`.
pub fn wait_for<T>(what: &str, timeout: Duration, mut probe: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(value) = probe() {
            return value;
        }
        assert!(
            Instant::now() < deadline,
            "timed out after {timeout:?} waiting for {what}"
        );
        std::thread::sleep(POLL_INTERVAL);
    }
}

/// How long a server may take to print its ready line.
pub const START_TIMEOUT: Duration = Duration::from_secs(30);
/// How long a raw read waits before the test fails.
pub const READ_TIMEOUT: Duration = Duration::from_secs(10);

/// Path of the `tallyd` built by this cargo invocation (`target/<profile>/tallyd`).
pub fn tallyd_path() -> PathBuf {
    if let Ok(path) = std::env::var("TALLYD_BIN") {
        return PathBuf::from(path);
    }
    let exe = std::env::current_exe().expect("current_exe");
    let profile_dir = exe
        .parent()
        .and_then(|deps| deps.parent())
        .expect("target/<profile>/deps/<test>");
    let path = profile_dir.join("tallyd");
    assert!(
        path.exists(),
        "{} not found: run the tests with `cargo test --workspace` (which builds tallyd) or set TALLYD_BIN",
        path.display()
    );
    path
}

/// A running `tallyd` child process.
pub struct Server {
    child: Option<Child>,
    /// Set when the server made its own directory (`start`): removed when the server is dropped.
    owned_dir: Option<DataDir>,
    pub addr: String,
    pub shard_ports: Vec<u16>,
    pub data_dir: PathBuf,
    pub unix_socket: Option<PathBuf>,
}

static NEXT_DIR: AtomicU64 = AtomicU64::new(0);

/// A fresh, empty directory under the system temp dir, unique to this process and call.
pub fn fresh_dir(tag: &str) -> PathBuf {
    let n = NEXT_DIR.fetch_add(1, Ordering::Relaxed);
    let dir = std::env::temp_dir().join(format!("tally-e2e-{}-{tag}-{n}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("create temp dir");
    dir
}

impl Server {
    /// Starts `tallyd --listen 127.0.0.1:0 --data-dir <fresh> <extra...>` and waits until ready.
    pub fn start(extra: &[&str]) -> Server {
        let dir = DataDir::new("data");
        let mut server = Server::start_in(dir.0.clone(), extra);
        server.owned_dir = Some(dir);
        server
    }

    pub fn start_in(data_dir: PathBuf, extra: &[&str]) -> Server {
        Server::start_in_cwd(None, data_dir, extra)
    }

    /// `start_in`, run from `cwd` (so a relative `data_dir` is relative to it).
    pub fn start_in_cwd(cwd: Option<&std::path::Path>, data_dir: PathBuf, extra: &[&str]) -> Server {
        let mut command = Command::new(tallyd_path());
        if let Some(cwd) = cwd {
            command.current_dir(cwd);
        }
        // A free port unless the test chose one (to restart a node on the same address).
        if !extra.contains(&"--listen") {
            command.args(["--listen", "127.0.0.1:0"]);
        }
        command
            // Small segments: each shard preallocates two, and tests start many nodes.
            .args(["--log-level", "warn", "--segment-mib", "2", "--data-dir"])
            .arg(&data_dir)
            .args(extra)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit());
        let mut child = command.spawn().expect("spawn tallyd");
        let stdout = child.stdout.take().expect("piped stdout");
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            let mut lines = BufReader::new(stdout).lines();
            if let Some(Ok(line)) = lines.next() {
                let _ = tx.send(line);
            }
            // Keep draining so the child never blocks on a full pipe.
            for _ in lines {}
        });
        let line = match rx.recv_timeout(START_TIMEOUT) {
            Ok(line) => line,
            Err(_) => {
                let _ = child.kill();
                let status = child.wait().ok();
                panic!("tallyd did not print its ready line within {START_TIMEOUT:?} (exit: {status:?})");
            }
        };
        assert!(line.starts_with("tallyd ready "), "unexpected first line: {line}");
        let field = |key: &str| {
            line.split_whitespace()
                .find_map(|f| f.strip_prefix(key).map(str::to_string))
                .unwrap_or_else(|| panic!("ready line lacks {key}: {line}"))
        };
        let addr = field("listen=");
        let shard_ports = field("shard_ports=")
            .split(',')
            .map(|p| p.parse().expect("port"))
            .collect();
        let unix_socket = line
            .split_whitespace()
            .find_map(|f| f.strip_prefix("unix="))
            .map(PathBuf::from);
        Server {
            child: Some(child),
            owned_dir: None,
            addr,
            shard_ports,
            data_dir,
            unix_socket,
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("running").id()
    }

    /// Sends SIGTERM and waits (bounded) for a clean exit; returns the exit code.
    pub fn stop(mut self) -> Option<i32> {
        let mut child = self.child.take().expect("running");
        // SAFETY: kill(2) on our own child's pid.
        unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Some(status) = child.try_wait().expect("wait") {
                return status.code();
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                panic!("tallyd did not exit within 20 s of SIGTERM");
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// SIGKILL: no chance to flush anything.
    pub fn kill(mut self) {
        let mut child = self.child.take().expect("running");
        let _ = child.kill();
        let _ = child.wait();
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        // A server that was stopped or killed may be restarted on the same directory by the test
        // (`start_in`); directories are removed by `DataDir`'s drop, not here.
    }
}

/// A test's data directory, removed (with its preallocated segments) when dropped.
pub struct DataDir(pub PathBuf);

impl DataDir {
    pub fn new(tag: &str) -> DataDir {
        DataDir(fresh_dir(tag))
    }
}

impl Drop for DataDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A raw protocol connection for tests that must send exactly the bytes they choose.
pub struct RawConn {
    stream: TcpStream,
    next_id: u64,
}

/// What came back for one request frame.
#[derive(Debug)]
pub enum RawReply {
    Ops(Vec<ReplyOp>),
    Refused { code: u16, message: String },
}

impl RawConn {
    pub fn connect(addr: &str) -> RawConn {
        let stream = TcpStream::connect(addr).expect("connect");
        stream.set_read_timeout(Some(READ_TIMEOUT)).expect("timeout");
        stream.set_nodelay(true).expect("nodelay");
        RawConn { stream, next_id: 1 }
    }

    /// Builds a request frame of `ops` and returns its bytes and request id.
    pub fn frame(&mut self, ops: &[Request<'_>]) -> (BytesMut, u64) {
        let id = self.next_id;
        self.next_id += 1;
        let mut buf = BytesMut::new();
        let mut frame = FrameBuilder::begin(&mut buf, FrameKind::Request, id);
        for op in ops {
            op.encode(&mut buf);
            frame.op_added();
        }
        frame.finish(&mut buf);
        (buf, id)
    }

    pub fn send_bytes(&mut self, bytes: &[u8]) {
        self.stream.write_all(bytes).expect("write");
    }

    /// Like `connect`, but an error instead of a panic (the server may be down).
    pub fn try_connect(addr: &str) -> std::io::Result<RawConn> {
        let stream = TcpStream::connect(addr)?;
        stream.set_read_timeout(Some(READ_TIMEOUT))?;
        stream.set_nodelay(true)?;
        Ok(RawConn { stream, next_id: 1 })
    }

    /// Sends bytes; an error instead of a panic.
    pub fn try_send_bytes(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        self.stream.write_all(bytes)
    }

    /// Reads one reply frame; an error instead of a panic if the connection breaks.
    pub fn try_read_reply(&mut self) -> std::io::Result<(u64, RawReply)> {
        let mut header = [0u8; FRAME_HEADER_BYTES];
        self.stream.read_exact(&mut header)?;
        let parsed = FrameHeader::parse(&header).map_err(|e| std::io::Error::other(e.to_string()))?;
        let mut body = vec![0u8; parsed.body_len as usize];
        self.stream.read_exact(&mut body)?;
        Ok((parsed.request_id, decode_body(&parsed, &body)))
    }

    /// Sends one frame of `ops` and reads its reply.
    pub fn call(&mut self, ops: &[Request<'_>]) -> RawReply {
        let (bytes, id) = self.frame(ops);
        self.send_bytes(&bytes);
        let (reply_id, reply) = self.read_reply();
        assert_eq!(reply_id, id, "replies come back in request order");
        reply
    }

    /// Reads one reply frame: its request id and contents.
    pub fn read_reply(&mut self) -> (u64, RawReply) {
        self.try_read_reply().expect("read reply")
    }

    /// True once the server has closed this connection (read returns EOF).
    pub fn is_closed(&mut self) -> bool {
        let mut byte = [0u8; 1];
        matches!(self.stream.read(&mut byte), Ok(0))
    }
}

fn decode_body(header: &FrameHeader, body: &[u8]) -> RawReply {
    match header.frame_kind() {
        Some(FrameKind::Error) => {
            let (code, message) = decode_error_frame(body).expect("error frame");
            RawReply::Refused { code, message }
        }
        Some(FrameKind::Response) => {
            let mut ops = Vec::new();
            let mut at = 0;
            for _ in 0..header.op_count {
                let (op, used) = decode_reply_op(&body[at..]).expect("reply op");
                ops.push(op);
                at += used;
            }
            assert_eq!(at, body.len(), "reply frame has no trailing bytes");
            RawReply::Ops(ops)
        }
        other => panic!("unexpected frame kind {other:?}"),
    }
}
