//! The async client (cargo feature `tokio`): the blocking client's API as `async fn`s on `&self`,
//! so one `AsyncClient` (cheap to clone) serves many tasks at once over one connection.
//!
//! A connection is a reader task, a writer task and a table of waiters keyed by request id: a
//! request registers its waiter, hands its frame to the writer (which coalesces frames into few
//! writes), and awaits the reader, which matches each reply frame to its waiter by request id and
//! checks it against what the request can produce. Concurrent requests are therefore pipelined on
//! one connection; `IN_FLIGHT_FRAMES_MAX` frames at most are outstanding. Any error, a timeout
//! included, closes the connection and fails every request waiting on it; the next call opens a
//! new one. Retries follow the same rules as the blocking client (see the `retry` module).
//!
//! Unlike the blocking client, the async client does not route by shard: everything goes over the
//! main connection and the server forwards. Dropping a request's future is safe at any point: a
//! frame is either handed to the writer whole or not at all, and a reply nobody waits for any more
//! is read and discarded.

use std::borrow::Cow;
use std::collections::{HashMap, VecDeque};
#[cfg(unix)]
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use tally_proto::limits::{FRAME_BYTES_MAX, FRAME_HEADER_BYTES, IN_FLIGHT_FRAMES_MAX};
use tally_proto::{FrameBuilder, FrameHeader, FrameKind, HelloReply, Opcode, StatsReply, Token};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, BufReader};
use tokio::sync::{mpsc, oneshot, OwnedSemaphorePermit, Semaphore};
use tokio::task::JoinHandle;

use crate::counter_spec::CounterSpec;
use crate::endpoint::Endpoint;
use crate::error::Error;
use crate::key::random_key;
use crate::limits::{PIPELINE_BATCH_MAX, PIPELINE_DEPTH_MAX, READ_BUFFER_BYTES, WRITE_COALESCE_BYTES_MAX};
use crate::op::Op;
use crate::options::ClientOptions;
use crate::outcome::{Created, Outcome, Reading, ResetAck, WriteAck};
use crate::pipeline::Pipeline;
use crate::response::{check_header, decode_frame, encode_hello, expect, hello_from_reply, Expected, HELLO_REQUEST_ID};
use crate::retry::settle;

type ReadHalf = Box<dyn AsyncRead + Send + Unpin>;
type WriteHalf = Box<dyn AsyncWrite + Send + Unpin>;

/// An async Tally client. Clones share one connection.
///
/// ```no_run
/// # async fn demo() -> Result<(), tally_sdk::Error> {
/// let client = tally_sdk::AsyncClient::connect("127.0.0.1:7400").await?;
/// let tasks: Vec<_> = (0..10)
///     .map(|_| {
///         let client = client.clone();
///         tokio::spawn(async move { client.incr("views:home", 1).await })
///     })
///     .collect();
/// for task in tasks {
///     task.await.expect("task")?;
/// }
/// # Ok(())
/// # }
/// ```
#[derive(Clone)]
pub struct AsyncClient {
    inner: Arc<Inner>,
}

struct Inner {
    options: ClientOptions,
    endpoint: Endpoint,
    hello: Mutex<HelloReply>,
    /// The current connection; replaced by the first call that finds it closed.
    connection: tokio::sync::Mutex<Option<Arc<AsyncConnection>>>,
    request_id_next: AtomicU64,
}

impl AsyncClient {
    /// Connects to a server's main TCP port (`host:port`) with default options and performs HELLO.
    pub async fn connect(addr: &str) -> Result<AsyncClient, Error> {
        ClientOptions::new().connect_async(addr).await
    }

    /// Connects to a server's Unix socket with default options and performs HELLO.
    #[cfg(unix)]
    pub async fn connect_unix(path: impl AsRef<Path>) -> Result<AsyncClient, Error> {
        ClientOptions::new().connect_unix_async(path).await
    }

    pub(crate) async fn open(options: ClientOptions, endpoint: Endpoint) -> Result<AsyncClient, Error> {
        let (connection, hello) = AsyncConnection::open(&endpoint, &options).await?;
        Ok(AsyncClient {
            inner: Arc::new(Inner {
                options,
                endpoint,
                hello: Mutex::new(hello),
                connection: tokio::sync::Mutex::new(Some(connection)),
                request_id_next: AtomicU64::new(HELLO_REQUEST_ID + 1),
            }),
        })
    }

    /// The server's answer to the latest connection's HELLO.
    pub fn hello(&self) -> HelloReply {
        lock(&self.inner.hello).clone()
    }

    /// Adds `delta` and returns the new value. The counter is created (analytic) if unknown.
    pub async fn incr(&self, name: impl AsRef<[u8]>, delta: i64) -> Result<i64, Error> {
        Ok(self.incr_detailed(name, delta, None).await?.value)
    }

    /// Adds `delta` under an idempotency key: the same key, name and delta count once.
    pub async fn incr_with_key(&self, name: impl AsRef<[u8]>, delta: i64, key: u128) -> Result<i64, Error> {
        Ok(self.incr_detailed(name, delta, Some(key)).await?.value)
    }

    /// Adds `delta` and returns the whole ack.
    pub async fn incr_detailed(
        &self,
        name: impl AsRef<[u8]>,
        delta: i64,
        key: Option<u128>,
    ) -> Result<WriteAck, Error> {
        let op = Op::Incr {
            name: Cow::Borrowed(name.as_ref()),
            delta,
            key,
        };
        Ok(self.call(op).await?.expect_write())
    }

    /// The value; 0 for a name never written.
    pub async fn get(&self, name: impl AsRef<[u8]>) -> Result<i64, Error> {
        Ok(self.get_with(name, false, None).await?.value)
    }

    /// A read with options, as `Client::get_with`.
    pub async fn get_with(&self, name: impl AsRef<[u8]>, fresh: bool, token: Option<Token>) -> Result<Reading, Error> {
        let op = Op::Get {
            name: Cow::Borrowed(name.as_ref()),
            fresh,
            token,
        };
        Ok(self.call(op).await?.expect_reading())
    }

    /// Declares a counter, as `Client::create`.
    pub async fn create(&self, name: impl AsRef<[u8]>, spec: CounterSpec) -> Result<Created, Error> {
        let op = Op::Create {
            name: Cow::Borrowed(name.as_ref()),
            spec,
        };
        Ok(self.call(op).await?.expect_created())
    }

    /// Strict counters: compare-and-set, as `Client::cas`. Never retried.
    pub async fn cas(&self, name: impl AsRef<[u8]>, expected: i64, new: i64) -> Result<i64, Error> {
        let op = Op::Cas {
            name: Cow::Borrowed(name.as_ref()),
            expected,
            new,
        };
        Ok(self.call(op).await?.expect_write().value)
    }

    /// Strict counters: bounded add, as `Client::add_bounded`.
    pub async fn add_bounded(&self, name: impl AsRef<[u8]>, delta: i64, min: i64, max: i64) -> Result<i64, Error> {
        Ok(self.add_bounded_detailed(name, delta, min, max, None).await?.value)
    }

    /// `add_bounded` with an optional idempotency key, returning the whole ack.
    pub async fn add_bounded_detailed(
        &self,
        name: impl AsRef<[u8]>,
        delta: i64,
        min: i64,
        max: i64,
        key: Option<u128>,
    ) -> Result<WriteAck, Error> {
        let op = Op::AddBounded {
            name: Cow::Borrowed(name.as_ref()),
            delta,
            min,
            max,
            key,
        };
        Ok(self.call(op).await?.expect_write())
    }

    /// Admin: sets the value with an audit reason, as `Client::reset`. Never retried.
    pub async fn reset(&self, name: impl AsRef<[u8]>, value: i64, reason: impl AsRef<[u8]>) -> Result<ResetAck, Error> {
        let op = Op::Reset {
            name: Cow::Borrowed(name.as_ref()),
            value,
            reason: Cow::Borrowed(reason.as_ref()),
        };
        Ok(self.call(op).await?.expect_reset())
    }

    /// Server statistics.
    pub async fn stats(&self) -> Result<StatsReply, Error> {
        Ok(self.call(Op::Stats).await?.expect_stats())
    }

    /// The sum of `name`'s increments over the last `last` seconds or minutes (see `Client::window`).
    pub async fn window(
        &self,
        name: impl AsRef<[u8]>,
        last: u32,
        unit: tally_proto::WindowUnit,
    ) -> Result<crate::WindowSum, Error> {
        let op = Op::Window {
            name: std::borrow::Cow::Borrowed(name.as_ref()),
            last,
            unit,
        };
        Ok(self.call(op).await?.expect_window())
    }

    /// `name`'s increments per `step` from `from_ms` to `to_ms` (see `Client::series`).
    pub async fn series(
        &self,
        name: impl AsRef<[u8]>,
        from_ms: u64,
        to_ms: u64,
        step: tally_proto::SeriesStep,
    ) -> Result<crate::Series, Error> {
        let name = name.as_ref();
        let mut parts = Vec::new();
        for (from, to) in crate::history::series_chunks(from_ms, to_ms, step) {
            let op = crate::history::series_op(name, from, to, step);
            parts.push(self.call(op).await?.expect_series());
        }
        crate::history::join_series(parts)
    }

    /// One page of RESET records (see `Client::audit_page`).
    pub async fn audit_page(
        &self,
        name: impl AsRef<[u8]>,
        from_ms: u64,
        to_ms: u64,
        cursor: &[u8],
    ) -> Result<crate::Page<tally_proto::AuditRecord>, Error> {
        let op = crate::history::audit_op(name.as_ref(), from_ms, to_ms, cursor);
        Ok(self.call(op).await?.expect_audit())
    }

    /// Every RESET record in [from_ms, to_ms) of `name` (empty: every counter), oldest first.
    pub async fn audit(
        &self,
        name: impl AsRef<[u8]>,
        from_ms: u64,
        to_ms: u64,
    ) -> Result<Vec<tally_proto::AuditRecord>, Error> {
        let name = name.as_ref();
        let (mut records, mut cursor) = (Vec::new(), Vec::new());
        loop {
            let page = self.audit_page(name, from_ms, to_ms, &cursor).await?;
            records.extend(page.items);
            if page.cursor.is_empty() {
                return Ok(records);
            }
            cursor = page.cursor;
        }
    }

    /// One page of `name`'s logged increments (see `Client::events_page`).
    pub async fn events_page(
        &self,
        name: impl AsRef<[u8]>,
        from_ms: u64,
        to_ms: u64,
        limit: u16,
        cursor: &[u8],
    ) -> Result<crate::Page<tally_proto::Event>, Error> {
        let op = crate::history::events_op(name.as_ref(), from_ms, to_ms, limit, cursor);
        Ok(self.call(op).await?.expect_events())
    }

    /// Admin: promotes the connected replica to primary (see `Client::promote`). Returns the epoch.
    pub async fn promote(&self, force: bool, wait_ms: u32) -> Result<u64, Error> {
        Ok(self.call(Op::Promote { force, wait_ms }).await?.expect_promote())
    }

    /// Sends one op of any kind.
    pub async fn call(&self, op: Op<'_>) -> Result<Outcome, Error> {
        let mut results = self.run(std::slice::from_ref(&op), 1, 1).await;
        assert_eq!(results.len(), 1);
        results.pop().expect("one result")
    }

    /// Sends a pipeline's ops (frames of `batch` ops, `depth` frames in flight) and returns one
    /// result per op in submission order.
    pub async fn execute(&self, pipeline: &Pipeline) -> Vec<Result<Outcome, Error>> {
        self.run(pipeline.ops(), pipeline.batch_ops(), pipeline.depth_frames())
            .await
    }

    async fn run(&self, ops: &[Op<'_>], batch: usize, depth: usize) -> Vec<Result<Outcome, Error>> {
        assert!((1..=PIPELINE_BATCH_MAX).contains(&batch));
        assert!((1..=PIPELINE_DEPTH_MAX).contains(&depth));
        let mut exchange = AsyncExchange {
            ops,
            keys: vec![None; ops.len()],
            tries: vec![0; ops.len()],
            results: (0..ops.len()).map(|_| None).collect(),
            unknown: vec![None; ops.len()],
            batch,
            depth,
        };
        let mut todo = Vec::with_capacity(ops.len());
        for (index, op) in ops.iter().enumerate() {
            if let Err(error) = op.check() {
                exchange.results[index] = Some(Err(error));
                continue;
            }
            exchange.keys[index] = op
                .key()
                .or_else(|| (self.inner.options.attach_keys && op.takes_key()).then(random_key));
            todo.push(index);
        }
        let mut failures = 0;
        while !todo.is_empty() {
            let before = todo.len();
            todo = exchange.round(self, &todo).await;
            assert!(todo.len() <= before);
            if !todo.is_empty() {
                failures += 1;
                let backoff = self.inner.options.retry.backoff_for(failures);
                if !backoff.is_zero() {
                    // A real wait between retries, not synchronisation.
                    tokio::time::sleep(backoff).await;
                }
            }
        }
        exchange
            .results
            .into_iter()
            .zip(exchange.unknown)
            .enumerate()
            .map(|(index, (result, unknown))| {
                settle(
                    unknown,
                    result.unwrap_or_else(|| panic!("op {index} finished without a result")),
                )
            })
            .collect()
    }

    /// The open connection, or a new one if the last one closed.
    async fn connection(&self) -> Result<Arc<AsyncConnection>, Error> {
        let mut slot = self.inner.connection.lock().await;
        if let Some(connection) = slot.as_ref() {
            if !connection.is_closed() {
                return Ok(connection.clone());
            }
        }
        *slot = None;
        let (connection, hello) = AsyncConnection::open(&self.inner.endpoint, &self.inner.options).await?;
        *lock(&self.inner.hello) = hello;
        *slot = Some(connection.clone());
        Ok(connection)
    }

    fn next_request_id(&self) -> u64 {
        loop {
            let id = self.inner.request_id_next.fetch_add(1, Ordering::Relaxed);
            if id != HELLO_REQUEST_ID {
                return id;
            }
        }
    }
}

impl std::fmt::Debug for AsyncClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AsyncClient")
            .field("endpoint", &self.inner.endpoint.to_string())
            .field("hello", &self.hello())
            .finish()
    }
}

/// One run of ops: their keys, tries and results, sent in rounds; each round is one connection's
/// worth of sending, and returns the ops to send again on the next.
struct AsyncExchange<'o, 'a> {
    ops: &'o [Op<'a>],
    keys: Vec<Option<u128>>,
    tries: Vec<u32>,
    results: Vec<Option<Result<Outcome, Error>>>,
    /// Per write: the first error of a try whose outcome was unknown (`retry::settle`).
    unknown: Vec<Option<Error>>,
    batch: usize,
    depth: usize,
}

impl AsyncExchange<'_, '_> {
    async fn round(&mut self, client: &AsyncClient, todo: &[usize]) -> Vec<usize> {
        let options = &client.inner.options;
        let mut again = Vec::new();
        let connection = match client.connection().await {
            Ok(connection) => connection,
            Err(error) => {
                self.fail_unsent(todo, &error, true, options, &mut again);
                return again;
            }
        };
        let mut waiting: VecDeque<(PendingReply, Vec<usize>)> = VecDeque::new();
        let mut next = 0;
        let mut failure: Option<Error> = None;
        loop {
            while failure.is_none() && waiting.len() < self.depth && next < todo.len() {
                let (frame, members, expected) = self.encode_frame(client.next_request_id(), &todo[next..]);
                match connection.send(expected, frame).await {
                    Ok(pending) => {
                        next += members.len();
                        for &index in &members {
                            self.tries[index] += 1;
                        }
                        waiting.push_back((pending, members));
                    }
                    // The frame never reached the writer: its ops stay unsent.
                    Err(error) => failure = Some(error),
                }
            }
            let Some((pending, members)) = waiting.pop_front() else {
                break;
            };
            let ops = self.ops;
            let decoded = pending.wait(options.read_timeout).await.and_then(|frame| {
                decode_frame(
                    &frame.header,
                    &frame.body,
                    members.iter().map(|&index| ops[index].opcode()),
                )
            });
            match decoded {
                Ok(replies) => {
                    assert_eq!(replies.len(), members.len());
                    for (index, reply) in members.into_iter().zip(replies) {
                        let result = reply.and_then(Outcome::from_reply);
                        let transient = matches!(&result, Err(error) if error.is_transient_refusal());
                        if transient
                            && options.retry.allows(self.tries[index])
                            && ops[index].is_idempotent(self.keys[index])
                        {
                            if let Err(error) = result {
                                if ops[index].takes_key() && error.is_outcome_unknown() {
                                    self.unknown[index].get_or_insert(error);
                                }
                            }
                            again.push(index);
                        } else {
                            self.results[index] = Some(result);
                        }
                    }
                }
                Err(error) => {
                    // Closing is idempotent: after a transport error it is already closed, after a
                    // protocol error nothing later on the stream can be trusted.
                    connection.close(error.clone());
                    self.fail_sent(&members, &error, options, &mut again);
                    failure.get_or_insert(error);
                }
            }
        }
        if let Some(error) = failure {
            self.fail_unsent(&todo[next..], &error, false, options, &mut again);
        } else {
            assert_eq!(next, todo.len());
        }
        again.sort_unstable();
        again
    }

    /// Encodes one frame from the front of `candidates`: up to `batch` ops, cut before
    /// `FRAME_BYTES_MAX`.
    fn encode_frame(&self, request_id: u64, candidates: &[usize]) -> (Bytes, Vec<usize>, Expected) {
        assert!(!candidates.is_empty());
        let mut out = BytesMut::new();
        let mut frame = FrameBuilder::begin(&mut out, FrameKind::Request, request_id);
        let mut members = Vec::new();
        for &index in candidates.iter().take(self.batch) {
            let op_start = out.len();
            self.ops[index].request(self.keys[index]).encode(&mut out);
            if out.len() - 4 > FRAME_BYTES_MAX as usize {
                assert!(!members.is_empty(), "a single checked op always fits in a frame");
                out.truncate(op_start);
                break;
            }
            frame.op_added();
            members.push(index);
        }
        frame.finish(&mut out);
        let expected = expect(request_id, members.iter().map(|&index| self.ops[index].opcode()));
        (out.freeze(), members, expected)
    }

    /// Sent ops whose connection failed: outcome unknown, so only idempotent ones go again.
    fn fail_sent(&mut self, members: &[usize], error: &Error, options: &ClientOptions, again: &mut Vec<usize>) {
        for &index in members {
            let op = &self.ops[index];
            if error.is_connection() && options.retry.allows(self.tries[index]) && op.is_idempotent(self.keys[index]) {
                if op.takes_key() {
                    self.unknown[index].get_or_insert_with(|| error.clone());
                }
                again.push(index);
            } else {
                self.results[index] = Some(Err(error.clone()));
            }
        }
    }

    /// Unsent ops are safe to send again whatever they are, if the policy retries at all.
    fn fail_unsent(
        &mut self,
        indices: &[usize],
        error: &Error,
        connecting: bool,
        options: &ClientOptions,
        again: &mut Vec<usize>,
    ) {
        for &index in indices {
            if connecting {
                self.tries[index] += 1;
            }
            if options.retry.enabled() && options.retry.allows(self.tries[index]) {
                again.push(index);
            } else {
                self.results[index] = Some(Err(error.clone()));
            }
        }
    }
}

/// A reply frame as the reader task received it.
struct ReceivedFrame {
    header: FrameHeader,
    body: Vec<u8>,
}

type ReplySender = oneshot::Sender<Result<ReceivedFrame, Error>>;

struct Waiter {
    expected: Expected,
    /// `None` once the request stopped waiting: its reply is read and discarded.
    reply: Option<ReplySender>,
}

#[derive(Default)]
struct Waiters {
    by_request_id: HashMap<u64, Waiter>,
    /// Set once, by the first error; every later request fails with it.
    closed: Option<Error>,
}

/// What the connection's tasks and its requests share.
struct Shared {
    waiters: Mutex<Waiters>,
    in_flight: Arc<Semaphore>,
}

impl Shared {
    /// Fails every waiting request with `error` and refuses new ones.
    fn close(&self, error: Error) {
        let waiting = {
            let mut waiters = lock(&self.waiters);
            waiters.closed.get_or_insert(error.clone());
            std::mem::take(&mut waiters.by_request_id)
        };
        for (_, waiter) in waiting {
            if let Some(reply) = waiter.reply {
                let _ = reply.send(Err(error.clone()));
            }
        }
        self.in_flight.close();
    }
}

struct AsyncConnection {
    shared: Arc<Shared>,
    frames: mpsc::Sender<Bytes>,
    reader: JoinHandle<()>,
    writer: JoinHandle<()>,
}

impl Drop for AsyncConnection {
    fn drop(&mut self) {
        self.reader.abort();
        self.writer.abort();
    }
}

impl AsyncConnection {
    /// Connects to `endpoint`, starts the connection's tasks and performs HELLO.
    async fn open(endpoint: &Endpoint, options: &ClientOptions) -> Result<(Arc<AsyncConnection>, HelloReply), Error> {
        let timeout = options.connect_timeout;
        let (read, write): (ReadHalf, WriteHalf) = match endpoint {
            Endpoint::Tcp(addr) => {
                let stream = tokio::time::timeout(timeout, tokio::net::TcpStream::connect(addr.as_str()))
                    .await
                    .map_err(|_| Error::Timeout)?
                    .map_err(Error::from_io)?;
                stream.set_nodelay(true).map_err(Error::from_io)?;
                let (read, write) = stream.into_split();
                (Box::new(read), Box::new(write))
            }
            #[cfg(unix)]
            Endpoint::Unix(path) => {
                let stream = tokio::time::timeout(timeout, tokio::net::UnixStream::connect(path))
                    .await
                    .map_err(|_| Error::Timeout)?
                    .map_err(Error::from_io)?;
                let (read, write) = stream.into_split();
                (Box::new(read), Box::new(write))
            }
        };
        let connection = AsyncConnection::start(read, write);
        let mut buf = BytesMut::new();
        let expected = encode_hello(&mut buf, options.client_name.as_bytes());
        let pending = connection.send(expected, buf.freeze()).await?;
        let frame = pending.wait(options.read_timeout).await?;
        let mut replies = decode_frame(&frame.header, &frame.body, [Opcode::Hello].into_iter())?;
        assert_eq!(replies.len(), 1);
        let hello = hello_from_reply(replies.pop().expect("one reply"))?;
        Ok((connection, hello))
    }

    fn start(read: ReadHalf, write: WriteHalf) -> Arc<AsyncConnection> {
        let shared = Arc::new(Shared {
            waiters: Mutex::new(Waiters::default()),
            in_flight: Arc::new(Semaphore::new(IN_FLIGHT_FRAMES_MAX)),
        });
        // The semaphore bounds frames in flight, so the channel never holds more than that.
        let (frames, frames_rx) = mpsc::channel(IN_FLIGHT_FRAMES_MAX);
        let reader = tokio::spawn(read_frames(read, shared.clone()));
        let writer = tokio::spawn(write_frames(write, frames_rx, shared.clone()));
        Arc::new(AsyncConnection {
            shared,
            frames,
            reader,
            writer,
        })
    }

    fn is_closed(&self) -> bool {
        lock(&self.shared.waiters).closed.is_some()
    }

    fn closed_error(&self) -> Error {
        lock(&self.shared.waiters).closed.clone().unwrap_or(Error::Closed)
    }

    fn close(&self, error: Error) {
        self.shared.close(error);
    }

    /// Registers a waiter for `expected.request_id` and hands `frame` to the writer.
    async fn send(self: &Arc<Self>, expected: Expected, frame: Bytes) -> Result<PendingReply, Error> {
        let permit = self
            .shared
            .in_flight
            .clone()
            .acquire_owned()
            .await
            .map_err(|_| self.closed_error())?;
        let (reply, receiver) = oneshot::channel();
        {
            let mut waiters = lock(&self.shared.waiters);
            if let Some(error) = &waiters.closed {
                return Err(error.clone());
            }
            let waiter = Waiter {
                expected,
                reply: Some(reply),
            };
            let previous = waiters.by_request_id.insert(expected.request_id, waiter);
            assert!(previous.is_none(), "request ids are unique per connection");
        }
        let mut pending = PendingReply {
            connection: self.clone(),
            request_id: expected.request_id,
            receiver,
            sent: false,
            done: false,
            _permit: permit,
        };
        if self.frames.send(frame).await.is_err() {
            return Err(self.closed_error());
        }
        pending.sent = true;
        Ok(pending)
    }
}

/// A request whose frame is with the writer; `wait` for its reply. Dropped early, it unregisters
/// (if its frame was never handed over) or leaves its reply to be discarded.
struct PendingReply {
    connection: Arc<AsyncConnection>,
    request_id: u64,
    receiver: oneshot::Receiver<Result<ReceivedFrame, Error>>,
    sent: bool,
    done: bool,
    _permit: OwnedSemaphorePermit,
}

impl PendingReply {
    async fn wait(mut self, timeout: Option<Duration>) -> Result<ReceivedFrame, Error> {
        let received = match timeout {
            Some(timeout) => match tokio::time::timeout(timeout, &mut self.receiver).await {
                Ok(received) => received,
                Err(_) => {
                    // A late reply would answer nobody; the stream is given up.
                    self.done = true;
                    self.connection.close(Error::Timeout);
                    return Err(Error::Timeout);
                }
            },
            None => (&mut self.receiver).await,
        };
        self.done = true;
        match received {
            Ok(result) => result,
            Err(_) => Err(self.connection.closed_error()),
        }
    }
}

impl Drop for PendingReply {
    fn drop(&mut self) {
        if self.done {
            return;
        }
        let mut waiters = lock(&self.connection.shared.waiters);
        if self.sent {
            if let Some(waiter) = waiters.by_request_id.get_mut(&self.request_id) {
                waiter.reply = None;
            }
        } else {
            waiters.by_request_id.remove(&self.request_id);
        }
    }
}

/// The reader task: matches reply frames to waiters until the stream fails, then closes the
/// connection with that failure.
async fn read_frames(read: ReadHalf, shared: Arc<Shared>) {
    let error = read_frames_until_error(read, &shared).await;
    shared.close(error);
}

async fn read_frames_until_error(read: ReadHalf, shared: &Shared) -> Error {
    let mut reader = BufReader::with_capacity(READ_BUFFER_BYTES, read);
    let mut head = [0u8; FRAME_HEADER_BYTES];
    loop {
        if let Err(error) = reader.read_exact(&mut head).await {
            return Error::from_io(error);
        }
        let header = match FrameHeader::parse(&head) {
            Ok(header) => header,
            Err(error) => return Error::from_decode(error),
        };
        let expected = lock(&shared.waiters)
            .by_request_id
            .get(&header.request_id)
            .map(|waiter| waiter.expected);
        let Some(expected) = expected else {
            return Error::Protocol(format!(
                "reply for request {}, which is not in flight",
                header.request_id
            ));
        };
        if let Err(error) = check_header(&header, &expected) {
            return error;
        }
        // The header check bounds the body by what the request can produce.
        let mut body = vec![0u8; header.body_len as usize];
        if let Err(error) = reader.read_exact(&mut body).await {
            return Error::from_io(error);
        }
        let waiter = lock(&shared.waiters).by_request_id.remove(&header.request_id);
        if let Some(Waiter { reply: Some(reply), .. }) = waiter {
            let _ = reply.send(Ok(ReceivedFrame { header, body }));
        }
    }
}

/// The writer task: writes frames in arrival order, coalescing those already queued into one
/// write of at most `WRITE_COALESCE_BYTES_MAX` (beyond one frame).
async fn write_frames(mut write: WriteHalf, mut frames: mpsc::Receiver<Bytes>, shared: Arc<Shared>) {
    let mut batch = Vec::new();
    while let Some(frame) = frames.recv().await {
        batch.clear();
        batch.extend_from_slice(&frame);
        while batch.len() < WRITE_COALESCE_BYTES_MAX {
            match frames.try_recv() {
                Ok(frame) => batch.extend_from_slice(&frame),
                Err(_) => break,
            }
        }
        if let Err(error) = write.write_all(&batch).await {
            shared.close(Error::from_io(error));
            return;
        }
    }
}

/// Locks a std mutex; a panic while holding one of these is a bug in this module, and the data
/// (waiters, the HELLO reply) stays consistent at every unlock point, so poisoning is ignored.
fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}
