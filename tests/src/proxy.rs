//! A fault-injecting TCP proxy for end-to-end tests, on loopback, with std threads.
//!
//! `Proxy` listens on one port and forwards each connection it accepts to one target. Its mode can
//! be switched while connections are open:
//!
//! - `Pass`: bytes flow both ways as they arrive.
//! - `Delay(d)`: each chunk read is forwarded `d` after it was read (a delay line: latency `d`
//!   each way, throughput unchanged).
//! - `Drop`: bytes read in either direction are discarded; connections stay open, so the peers see
//!   a silent network rather than a broken one.
//! - `Cut`: every open connection is closed at once, and new connections are accepted and closed
//!   at once, until the mode changes (`heal` sets `Pass`).
//!
//! A `ProxySet` fronts a whole node: its main port and each shard port, on a block of consecutive
//! ports laid out like a node's default (`B` → main, `B + 1 + i` → shard *i*), all switched by the
//! same control. A replica started on `--listen 127.0.0.1:M` (shards on `M + 1 + i`) is reached
//! through the set at `B` exactly as it would be directly at `M`.
//!
//! Resources are bounded: at most `CONNECTIONS_MAX` connections per proxy (more are closed on
//! accept), four threads each (a reader and a writer per direction) plus one acceptor, and at most
//! `CHUNKS_QUEUED_MAX` chunks of `CHUNK_BYTES_MAX` queued per direction. Dropping a proxy closes
//! its listener and every connection and joins every thread. The only sleep is the injected delay.

use std::collections::HashMap;
use std::io::{ErrorKind, Read, Write};
use std::net::{Ipv4Addr, Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::{sync_channel, Receiver, SyncSender};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// Most connections one proxy forwards at once. Tests open a handful per node (a primary opens one
/// per replica and shard, clients a few more); the cap keeps a runaway reconnect loop bounded.
pub const CONNECTIONS_MAX: usize = 64;
/// Bytes read per chunk.
const CHUNK_BYTES_MAX: usize = 64 * 1024;
/// Chunks in flight per direction (the delay line's length): 4 MiB per direction at most.
const CHUNKS_QUEUED_MAX: usize = 64;
/// How long connecting to the target may take before the client's connection is closed.
const TARGET_CONNECT_TIMEOUT: Duration = Duration::from_secs(2);

/// What the proxy does to the bytes it forwards.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    Pass,
    Delay(Duration),
    Drop,
    Cut,
}

/// The state shared by a proxy's threads, or by every proxy of a `ProxySet`.
struct Control {
    mode: Mutex<Mode>,
    /// Open connections: both sockets of each, so that `Cut` and drop can close them.
    connections: Mutex<HashMap<u64, (TcpStream, TcpStream)>>,
    connection_next: AtomicU64,
    bytes_forwarded: AtomicU64,
    bytes_dropped: AtomicU64,
    connections_accepted: AtomicU64,
}

impl Control {
    fn new() -> Arc<Control> {
        Arc::new(Control {
            mode: Mutex::new(Mode::Pass),
            connections: Mutex::new(HashMap::new()),
            connection_next: AtomicU64::new(0),
            bytes_forwarded: AtomicU64::new(0),
            bytes_dropped: AtomicU64::new(0),
            connections_accepted: AtomicU64::new(0),
        })
    }

    fn mode(&self) -> Mode {
        *self.mode.lock().unwrap()
    }

    fn set_mode(&self, mode: Mode) {
        // Set the mode first: a connection accepted after this sees it, so none slips through a
        // cut.
        *self.mode.lock().unwrap() = mode;
        if mode == Mode::Cut {
            self.close_all();
        }
    }

    fn close_all(&self) {
        for (client, target) in self.connections.lock().unwrap().values() {
            let _ = client.shutdown(Shutdown::Both);
            let _ = target.shutdown(Shutdown::Both);
        }
    }
}

/// A forwarding TCP listener with a switchable fault mode. See the module documentation.
pub struct Proxy {
    addr: SocketAddr,
    target: SocketAddr,
    control: Arc<Control>,
    stopping: Arc<AtomicBool>,
    acceptor: Option<JoinHandle<()>>,
}

impl Proxy {
    /// Listens on a free loopback port and forwards to `target`, in mode `Pass`.
    pub fn start(target: SocketAddr) -> Proxy {
        Proxy::start_with((Ipv4Addr::LOCALHOST, 0).into(), target, Control::new())
    }

    /// Listens on `listen` (port 0 picks one) and forwards to `target`.
    pub fn start_on(listen: SocketAddr, target: SocketAddr) -> Proxy {
        Proxy::start_with(listen, target, Control::new())
    }

    fn start_with(listen: SocketAddr, target: SocketAddr, control: Arc<Control>) -> Proxy {
        let listener = TcpListener::bind(listen).unwrap_or_else(|e| panic!("proxy: bind {listen}: {e}"));
        let addr = listener.local_addr().expect("local_addr");
        let stopping = Arc::new(AtomicBool::new(false));
        let acceptor = {
            let (control, stopping) = (control.clone(), stopping.clone());
            std::thread::Builder::new()
                .name(format!("proxy-{}", addr.port()))
                .spawn(move || accept_loop(listener, target, control, stopping))
                .expect("spawn proxy acceptor")
        };
        Proxy {
            addr,
            target,
            control,
            stopping,
            acceptor: Some(acceptor),
        }
    }

    /// Where clients connect.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    pub fn target(&self) -> SocketAddr {
        self.target
    }

    pub fn mode(&self) -> Mode {
        self.control.mode()
    }

    pub fn set_mode(&self, mode: Mode) {
        self.control.set_mode(mode);
    }

    pub fn pass(&self) {
        self.set_mode(Mode::Pass);
    }

    pub fn delay(&self, delay: Duration) {
        self.set_mode(Mode::Delay(delay));
    }

    pub fn drop_bytes(&self) {
        self.set_mode(Mode::Drop);
    }

    pub fn cut(&self) {
        self.set_mode(Mode::Cut);
    }

    /// Back to `Pass`. Connections closed by a cut stay closed; new ones work.
    pub fn heal(&self) {
        self.set_mode(Mode::Pass);
    }

    /// Bytes written on to either side so far.
    pub fn bytes_forwarded(&self) -> u64 {
        self.control.bytes_forwarded.load(Ordering::Acquire)
    }

    /// Bytes read and discarded in `Drop` mode so far.
    pub fn bytes_dropped(&self) -> u64 {
        self.control.bytes_dropped.load(Ordering::Acquire)
    }

    /// Connections accepted so far (including those closed at once by a cut).
    pub fn connections_accepted(&self) -> u64 {
        self.control.connections_accepted.load(Ordering::Acquire)
    }

    /// Connections open right now.
    pub fn connections_open(&self) -> usize {
        self.control.connections.lock().unwrap().len()
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.stopping.store(true, Ordering::Release);
        // Wake the acceptor's blocking accept; it sees `stopping` and returns.
        let _ = TcpStream::connect(self.addr);
        if let Some(acceptor) = self.acceptor.take() {
            let _ = acceptor.join();
        }
    }
}

fn accept_loop(listener: TcpListener, target: SocketAddr, control: Arc<Control>, stopping: Arc<AtomicBool>) {
    let mut workers: Vec<(u64, [JoinHandle<()>; 4])> = Vec::new();
    for client in listener.incoming() {
        if stopping.load(Ordering::Acquire) {
            break;
        }
        let Ok(client) = client else { continue };
        control.connections_accepted.fetch_add(1, Ordering::AcqRel);
        // Reap finished connections, so the cap counts open ones only.
        workers.retain(|(_, threads)| !threads.iter().all(JoinHandle::is_finished));
        if control.mode() == Mode::Cut || workers.len() >= CONNECTIONS_MAX {
            let _ = client.shutdown(Shutdown::Both);
            continue;
        }
        let Ok(upstream) = TcpStream::connect_timeout(&target, TARGET_CONNECT_TIMEOUT) else {
            let _ = client.shutdown(Shutdown::Both);
            continue;
        };
        let _ = client.set_nodelay(true);
        let _ = upstream.set_nodelay(true);
        let id = control.connection_next.fetch_add(1, Ordering::AcqRel);
        match forward(id, client, upstream, &control) {
            Some(threads) => workers.push((id, threads)),
            None => continue,
        }
        // A cut that raced with this accept (set after the check above, before registration) has
        // not seen this connection: close it now.
        if control.mode() == Mode::Cut {
            control.close_all();
        }
    }
    // Stopping: close every connection so every thread returns, then join them.
    control.close_all();
    for (_, threads) in workers {
        for thread in threads {
            let _ = thread.join();
        }
    }
}

/// Registers the connection and starts its four threads; `None` if a socket could not be cloned.
fn forward(id: u64, client: TcpStream, upstream: TcpStream, control: &Arc<Control>) -> Option<[JoinHandle<()>; 4]> {
    let clones = (
        client.try_clone().ok()?,
        upstream.try_clone().ok()?,
        client.try_clone().ok()?,
        upstream.try_clone().ok()?,
    );
    control
        .connections
        .lock()
        .unwrap()
        .insert(id, (client.try_clone().ok()?, upstream.try_clone().ok()?));
    let (client_read, upstream_read, client_write, upstream_write) = clones;
    let (to_upstream_tx, to_upstream_rx) = sync_channel(CHUNKS_QUEUED_MAX);
    let (to_client_tx, to_client_rx) = sync_channel(CHUNKS_QUEUED_MAX);
    let spawn = |name: &str, body: Box<dyn FnOnce() + Send>| {
        std::thread::Builder::new()
            .name(format!("proxy-{id}-{name}"))
            .spawn(body)
            .expect("spawn proxy thread")
    };
    let threads = [
        spawn("read-client", {
            let control = control.clone();
            Box::new(move || read_side(id, client_read, to_upstream_tx, &control))
        }),
        spawn("write-upstream", {
            let control = control.clone();
            Box::new(move || write_side(id, upstream_write, to_upstream_rx, &control))
        }),
        spawn("read-upstream", {
            let control = control.clone();
            Box::new(move || read_side(id, upstream_read, to_client_tx, &control))
        }),
        spawn("write-client", {
            let control = control.clone();
            Box::new(move || write_side(id, client_write, to_client_rx, &control))
        }),
    ];
    Some(threads)
}

/// A chunk and the moment it may be written on.
type Chunk = (Instant, Vec<u8>);

/// Reads one direction and queues what the mode lets through. Returns when the socket closes.
fn read_side(id: u64, mut from: TcpStream, queue: SyncSender<Chunk>, control: &Control) {
    let mut buf = vec![0u8; CHUNK_BYTES_MAX];
    loop {
        let n = match from.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == ErrorKind::Interrupted => continue,
            Err(_) => break,
        };
        let due = match control.mode() {
            Mode::Pass => Instant::now(),
            Mode::Delay(delay) => Instant::now() + delay,
            Mode::Drop => {
                control.bytes_dropped.fetch_add(n as u64, Ordering::AcqRel);
                continue;
            }
            // The cut closes this socket; bytes read in the meantime go nowhere.
            Mode::Cut => break,
        };
        // Blocks while the writer is `CHUNKS_QUEUED_MAX` chunks behind: back-pressure.
        if queue.send((due, buf[..n].to_vec())).is_err() {
            break;
        }
    }
    close(id, control);
}

/// Writes one direction's queued chunks, each no earlier than its due time.
fn write_side(id: u64, mut to: TcpStream, queue: Receiver<Chunk>, control: &Control) {
    while let Ok((due, bytes)) = queue.recv() {
        let now = Instant::now();
        if due > now {
            // The injected delay itself.
            std::thread::sleep(due - now);
        }
        if to.write_all(&bytes).is_err() {
            break;
        }
        control.bytes_forwarded.fetch_add(bytes.len() as u64, Ordering::AcqRel);
    }
    close(id, control);
}

/// Closes both sockets of a connection (the first side to finish ends the whole connection, so
/// the other three threads return too) and forgets it.
fn close(id: u64, control: &Control) {
    if let Some((client, upstream)) = control.connections.lock().unwrap().remove(&id) {
        let _ = client.shutdown(Shutdown::Both);
        let _ = upstream.shutdown(Shutdown::Both);
    }
}

/// Proxies in front of a whole node (main port and every shard port) on consecutive ports, with
/// one mode for all of them.
pub struct ProxySet {
    base: u16,
    control: Arc<Control>,
    proxies: Vec<Proxy>,
}

impl ProxySet {
    /// Fronts the node whose main port is `main_port` and whose shard *i* listens on
    /// `shard_ports[i]` (all on 127.0.0.1). Listens on `B ..= B + shards` for a free block `B`:
    /// `B` forwards to the main port, `B + 1 + i` to shard *i*'s port.
    pub fn start(main_port: u16, shard_ports: &[u16]) -> ProxySet {
        let count = u16::try_from(shard_ports.len() + 1).expect("shard count fits u16");
        let base = crate::ports::free_block(count);
        ProxySet::start_at(base, main_port, shard_ports)
    }

    /// `start` on a block the caller chose (`base ..= base + shards` must be free).
    pub fn start_at(base: u16, main_port: u16, shard_ports: &[u16]) -> ProxySet {
        let control = Control::new();
        let targets = std::iter::once(main_port).chain(shard_ports.iter().copied());
        let proxies = targets
            .enumerate()
            .map(|(i, target)| {
                let listen = SocketAddr::from((Ipv4Addr::LOCALHOST, base + i as u16));
                let target = SocketAddr::from((Ipv4Addr::LOCALHOST, target));
                Proxy::start_with(listen, target, control.clone())
            })
            .collect();
        ProxySet { base, control, proxies }
    }

    /// The main port's proxy address: what the node's peers are told to connect to.
    pub fn addr(&self) -> SocketAddr {
        SocketAddr::from((Ipv4Addr::LOCALHOST, self.base))
    }

    /// The first port of the block (the main port's proxy).
    pub fn base_port(&self) -> u16 {
        self.base
    }

    pub fn proxies(&self) -> &[Proxy] {
        &self.proxies
    }

    pub fn mode(&self) -> Mode {
        self.control.mode()
    }

    pub fn set_mode(&self, mode: Mode) {
        self.control.set_mode(mode);
    }

    pub fn delay(&self, delay: Duration) {
        self.set_mode(Mode::Delay(delay));
    }

    pub fn drop_bytes(&self) {
        self.set_mode(Mode::Drop);
    }

    pub fn cut(&self) {
        self.set_mode(Mode::Cut);
    }

    pub fn heal(&self) {
        self.set_mode(Mode::Pass);
    }

    /// Bytes forwarded by every proxy of the set.
    pub fn bytes_forwarded(&self) -> u64 {
        self.control.bytes_forwarded.load(Ordering::Acquire)
    }

    pub fn bytes_dropped(&self) -> u64 {
        self.control.bytes_dropped.load(Ordering::Acquire)
    }

    pub fn connections_accepted(&self) -> u64 {
        self.control.connections_accepted.load(Ordering::Acquire)
    }

    pub fn connections_open(&self) -> usize {
        self.control.connections.lock().unwrap().len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wait_until;

    /// An echo server on a free port: every byte read is written back. Bounded: serves the
    /// connections a test opens, each on its own thread, until the test process ends.
    fn echo_server() -> SocketAddr {
        let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).unwrap();
        let addr = listener.local_addr().unwrap();
        std::thread::spawn(move || {
            for stream in listener.incoming().take(32) {
                let Ok(mut stream) = stream else { continue };
                std::thread::spawn(move || {
                    let mut buf = [0u8; 4096];
                    while let Ok(n) = stream.read(&mut buf) {
                        if n == 0 || stream.write_all(&buf[..n]).is_err() {
                            break;
                        }
                    }
                });
            }
        });
        addr
    }

    fn connect(addr: SocketAddr) -> TcpStream {
        let stream = TcpStream::connect(addr).unwrap();
        stream.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        stream
    }

    fn echo(stream: &mut TcpStream, bytes: &[u8]) -> Vec<u8> {
        stream.write_all(bytes).unwrap();
        let mut back = vec![0u8; bytes.len()];
        stream.read_exact(&mut back).unwrap();
        back
    }

    /// True once the peer has closed the connection (EOF or reset); false if bytes arrive.
    fn closed(stream: &mut TcpStream) -> bool {
        let mut byte = [0u8; 1];
        match stream.read(&mut byte) {
            Ok(0) => true,
            Ok(_) => false,
            Err(e) => matches!(e.kind(), ErrorKind::ConnectionReset | ErrorKind::ConnectionAborted),
        }
    }

    const PROXY_WAIT: Duration = Duration::from_secs(10);

    #[test]
    fn bytes_pass_both_ways() {
        let proxy = Proxy::start(echo_server());
        let mut stream = connect(proxy.addr());
        assert_eq!(echo(&mut stream, b"hello"), b"hello");
        let big: Vec<u8> = (0..300_000u32).map(|i| i as u8).collect();
        let writer = {
            let mut stream = stream.try_clone().unwrap();
            let big = big.clone();
            std::thread::spawn(move || stream.write_all(&big).unwrap())
        };
        let mut back = vec![0u8; big.len()];
        stream.read_exact(&mut back).unwrap();
        writer.join().unwrap();
        assert!(back == big, "300 kB came back intact");
        let both_ways = 2 * (5 + big.len() as u64);
        wait_until("the byte count", PROXY_WAIT, || proxy.bytes_forwarded() == both_ways);
        assert_eq!(proxy.connections_accepted(), 1);
    }

    #[test]
    fn cut_closes_open_and_new_connections_until_healed() {
        let proxy = Proxy::start(echo_server());
        let mut open = connect(proxy.addr());
        assert_eq!(echo(&mut open, b"a"), b"a");
        proxy.cut();
        assert!(closed(&mut open), "an open connection is closed by the cut");
        let mut during = connect(proxy.addr());
        let _ = during.write_all(b"b");
        assert!(closed(&mut during), "a connection opened during the cut is closed");
        wait_until("every connection closed", PROXY_WAIT, || proxy.connections_open() == 0);
        proxy.heal();
        let mut after = connect(proxy.addr());
        assert_eq!(echo(&mut after, b"c"), b"c");
    }

    #[test]
    fn drop_discards_bytes_and_keeps_connections_open() {
        let proxy = Proxy::start(echo_server());
        let mut stream = connect(proxy.addr());
        assert_eq!(echo(&mut stream, b"before"), b"before");
        proxy.drop_bytes();
        stream.write_all(b"lost").unwrap();
        wait_until("the proxy to discard 4 bytes", PROXY_WAIT, || {
            proxy.bytes_dropped() == 4
        });
        proxy.heal();
        // Same connection: the first bytes to come back are the ones sent after the heal, so the
        // dropped ones went nowhere (not even delayed).
        assert_eq!(echo(&mut stream, b"after"), b"after");
        assert_eq!(proxy.connections_open(), 1);
    }

    #[test]
    fn drop_discards_the_reply_direction_too() {
        // The target is a socket this test holds, so it can write while requests stay put.
        let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).unwrap();
        let proxy = Proxy::start(listener.local_addr().unwrap());
        let mut client = connect(proxy.addr());
        let (mut server, _) = listener.accept().unwrap();
        server.write_all(b"hi").unwrap();
        let mut got = [0u8; 2];
        client.read_exact(&mut got).unwrap();
        assert_eq!(&got, b"hi");
        proxy.drop_bytes();
        server.write_all(b"lost").unwrap();
        wait_until("the reply to be discarded", PROXY_WAIT, || proxy.bytes_dropped() == 4);
        proxy.heal();
        server.write_all(b"kept").unwrap();
        let mut got = [0u8; 4];
        client.read_exact(&mut got).unwrap();
        assert_eq!(&got, b"kept");
    }

    #[test]
    fn delay_holds_each_chunk() {
        let proxy = Proxy::start(echo_server());
        let mut stream = connect(proxy.addr());
        assert_eq!(echo(&mut stream, b"warm"), b"warm");
        let delay = Duration::from_millis(100);
        proxy.delay(delay);
        let started = Instant::now();
        assert_eq!(echo(&mut stream, b"slow"), b"slow");
        let took = started.elapsed();
        // Held once each way.
        assert!(
            took >= 2 * delay,
            "a round trip took {took:?}, under twice the {delay:?} delay"
        );
        assert_eq!(proxy.mode(), Mode::Delay(delay));
    }

    #[test]
    fn a_dead_target_closes_the_client() {
        let dead = {
            let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).unwrap();
            listener.local_addr().unwrap()
        };
        let proxy = Proxy::start(dead);
        let mut stream = connect(proxy.addr());
        assert!(closed(&mut stream));
    }

    #[test]
    fn a_set_maps_a_node_layout_and_switches_together() {
        let (main, shard0, shard1) = (echo_server(), echo_server(), echo_server());
        let set = ProxySet::start(main.port(), &[shard0.port(), shard1.port()]);
        assert_eq!(set.proxies().len(), 3);
        for (i, target) in [main, shard0, shard1].into_iter().enumerate() {
            let proxy = &set.proxies()[i];
            assert_eq!(proxy.addr().port(), set.base_port() + i as u16);
            assert_eq!(proxy.target(), target);
            let mut stream = connect(proxy.addr());
            assert_eq!(echo(&mut stream, &[i as u8]), [i as u8]);
        }
        let mut streams: Vec<TcpStream> = set.proxies().iter().map(|p| connect(p.addr())).collect();
        for stream in &mut streams {
            assert_eq!(echo(stream, b"up"), b"up");
        }
        set.cut();
        for stream in &mut streams {
            assert!(closed(stream), "the cut closes every proxy's connections");
        }
        set.heal();
        let mut stream = connect(set.addr());
        assert_eq!(echo(&mut stream, b"healed"), b"healed");
    }

    #[test]
    fn dropping_the_proxy_closes_its_connections() {
        let proxy = Proxy::start(echo_server());
        let addr = proxy.addr();
        let mut stream = connect(addr);
        assert_eq!(echo(&mut stream, b"q"), b"q");
        drop(proxy);
        assert!(closed(&mut stream));
        assert!(TcpStream::connect(addr).is_err(), "the listener is gone");
    }
}
