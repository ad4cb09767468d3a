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
pub mod faults;
pub mod group;
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

/// How `Server::launch` starts a `tallyd`.
pub struct Launch<'a> {
    /// The working directory (a relative `data_dir` is relative to it); the test's when `None`.
    pub cwd: Option<&'a std::path::Path>,
    pub data_dir: PathBuf,
    /// More flags (`--listen` among them to choose the address; else a free port).
    pub extra: &'a [&'a str],
    /// `--log-level`.
    pub log_level: &'a str,
    /// Append the node's stderr (its log) to this file; the test's stderr when `None`.
    pub log: Option<&'a std::path::Path>,
}

impl Default for Launch<'_> {
    fn default() -> Self {
        Launch {
            cwd: None,
            data_dir: PathBuf::new(),
            extra: &[],
            log_level: "warn",
            log: None,
        }
    }
}

/// Lines of a node's log quoted when it fails to start.
pub const LOG_TAIL_LINES: usize = 40;

/// The last `lines` lines of the file at `path` (or why it cannot be read).
pub fn log_tail(path: &std::path::Path, lines: usize) -> String {
    match std::fs::read(path) {
        Ok(bytes) => {
            let text = String::from_utf8_lossy(&bytes);
            let all: Vec<&str> = text.lines().collect();
            all[all.len().saturating_sub(lines)..].join("\n")
        }
        Err(e) => format!("(cannot read {}: {e})", path.display()),
    }
}

/// Frames of each thread's backtrace that `thread_dump` shows: deep enough to reach tallyd's own
/// frames under glommio's reactor.
const THREAD_DUMP_FRAMES_MAX: u32 = 40;
/// How long `thread_dump` lets gdb work before giving up on it.
const THREAD_DUMP_TIMEOUT_SECS: u32 = 30;

/// What every thread of process `pid` is doing, for the message of a test that found the process
/// stuck: gdb's backtraces (`thread apply all bt`), and each thread's state and kernel stack from
/// /proc. A note instead of either when it cannot be had (no gdb, no permission).
pub fn thread_dump(pid: u32) -> String {
    let mut out = format!("threads of pid {pid}:\n");
    let task_dir = format!("/proc/{pid}/task");
    if let Ok(tasks) = std::fs::read_dir(&task_dir) {
        for task in tasks.flatten() {
            let path = task.path();
            let read = |name: &str| std::fs::read_to_string(path.join(name)).unwrap_or_default();
            let state = read("status")
                .lines()
                .find(|l| l.starts_with("State:"))
                .unwrap_or("State: ?")
                .to_string();
            out.push_str(&format!(
                "  tid {} {} {} wchan {}\n{}",
                task.file_name().to_string_lossy(),
                read("comm").trim(),
                state,
                read("wchan").trim(),
                read("stack")
                    .lines()
                    .map(|l| format!("      {l}\n"))
                    .collect::<String>()
            ));
        }
    }
    let gdb = Command::new("timeout")
        .arg(THREAD_DUMP_TIMEOUT_SECS.to_string())
        .args(["gdb", "-batch", "-p", &pid.to_string(), "-ex"])
        .arg(format!("thread apply all bt {THREAD_DUMP_FRAMES_MAX}"))
        .stdin(Stdio::null())
        .output();
    match gdb {
        Ok(output) => {
            let text = String::from_utf8_lossy(&output.stdout);
            let frames: Vec<&str> = text
                .lines()
                .filter(|l| l.starts_with('#') || l.starts_with("Thread "))
                .collect();
            out.push_str(&format!("gdb backtraces:\n{}\n", frames.join("\n")));
        }
        Err(e) => out.push_str(&format!("(no gdb backtraces: {e})\n")),
    }
    out
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
        Server::launch(&Launch {
            cwd,
            data_dir,
            extra,
            ..Launch::default()
        })
        .unwrap_or_else(|e| panic!("{e}"))
    }

    /// Starts a `tallyd` as `launch` says and waits until ready. An error (not a panic) when it
    /// exits or stays silent instead: the exit status and, with `launch.log`, the log's last lines.
    pub fn launch(launch: &Launch<'_>) -> Result<Server, String> {
        let mut command = Command::new(tallyd_path());
        if let Some(cwd) = launch.cwd {
            command.current_dir(cwd);
        }
        // A free port unless the test chose one (to restart a node on the same address).
        if !launch.extra.contains(&"--listen") {
            command.args(["--listen", "127.0.0.1:0"]);
        }
        let stderr = match launch.log {
            Some(path) => {
                let file = std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(path)
                    .map_err(|e| format!("open log {}: {e}", path.display()))?;
                Stdio::from(file)
            }
            None => Stdio::inherit(),
        };
        command
            // Small segments: each shard preallocates two, and tests start many nodes.
            .args(["--log-level", launch.log_level, "--segment-mib", "2", "--data-dir"])
            .arg(&launch.data_dir)
            .args(launch.extra)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(stderr);
        let mut child = command.spawn().map_err(|e| format!("spawn tallyd: {e}"))?;
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
        let log_tail = || match launch.log {
            Some(path) => format!("; the end of {}:\n{}", path.display(), log_tail(path, LOG_TAIL_LINES)),
            None => String::new(),
        };
        let line = match rx.recv_timeout(START_TIMEOUT) {
            Ok(line) => line,
            Err(_) => {
                // Still running: say what it is stuck on before ending it.
                let dump = match child.try_wait() {
                    Ok(None) => format!("\n{}", thread_dump(child.id())),
                    _ => String::new(),
                };
                let _ = child.kill();
                let status = child.wait().ok();
                return Err(format!(
                    "tallyd did not print its ready line within {START_TIMEOUT:?} (exit: {status:?}){}{dump}",
                    log_tail()
                ));
            }
        };
        if !line.starts_with("tallyd ready ") {
            let _ = child.kill();
            let _ = child.wait();
            return Err(format!("unexpected first line: {line}{}", log_tail()));
        }
        let field = |key: &str| {
            line.split_whitespace()
                .find_map(|f| f.strip_prefix(key).map(str::to_string))
                .ok_or_else(|| format!("ready line lacks {key}: {line}"))
        };
        let addr = field("listen=")?;
        let shard_ports = field("shard_ports=")?
            .split(',')
            .map(|p| p.parse().map_err(|e| format!("shard port {p:?}: {e}")))
            .collect::<Result<_, String>>()?;
        let unix_socket = line
            .split_whitespace()
            .find_map(|f| f.strip_prefix("unix="))
            .map(PathBuf::from);
        Ok(Server {
            child: Some(child),
            owned_dir: None,
            addr,
            shard_ports,
            data_dir: launch.data_dir.clone(),
            unix_socket,
        })
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("running").id()
    }

    /// SIGSTOP: the process stops running; its sockets stay open, so peers see silence.
    pub fn pause(&self) {
        // SAFETY: kill(2) on our own child's pid.
        let done = unsafe { libc::kill(self.pid() as i32, libc::SIGSTOP) };
        assert_eq!(done, 0, "SIGSTOP {}", self.pid());
    }

    /// SIGCONT: a paused process runs again.
    pub fn resume(&self) {
        // SAFETY: kill(2) on our own child's pid.
        let done = unsafe { libc::kill(self.pid() as i32, libc::SIGCONT) };
        assert_eq!(done, 0, "SIGCONT {}", self.pid());
    }

    /// The exit status if the process has exited on its own (without waiting).
    pub fn exit_status(&mut self) -> Option<std::process::ExitStatus> {
        self.child.as_mut().expect("running").try_wait().expect("wait")
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

#[cfg(test)]
mod tests {
    #[test]
    fn a_thread_dump_names_each_thread_of_a_live_process() {
        let mut child = std::process::Command::new("sleep")
            .arg("30")
            .spawn()
            .expect("spawn sleep");
        let dump = super::thread_dump(child.id());
        let _ = child.kill();
        let _ = child.wait();
        assert!(dump.contains(&format!("tid {}", child.id())), "{dump}");
        assert!(dump.contains("sleep"), "{dump}");
    }
}
