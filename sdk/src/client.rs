//! The blocking client: typed single-op calls, pipelines, shard-aware routing over one connection
//! per shard, and retries with idempotency keys.
//!
//! The client owns its connections and is used from one thread at a time (`&mut self`); run one
//! client per thread for parallelism. A connection that fails is dropped and reopened lazily by the
//! next call, so a client survives server restarts.

use std::borrow::Cow;
use std::net::SocketAddr;
#[cfg(unix)]
use std::path::Path;
use std::time::{Duration, Instant};

use tally_proto::{shard_of, AuditRecord, Event, HelloReply, SeriesStep, StatsReply, Token, WindowUnit};

use crate::connection::Connection;
use crate::counter_spec::CounterSpec;
use crate::endpoint::Endpoint;
use crate::error::Error;
use crate::exchange;
use crate::history::{audit_op, events_op, join_series, series_chunks, series_op};
use crate::limits::SHARD_DOWN_MS;
use crate::op::Op;
use crate::options::ClientOptions;
use crate::outcome::{Created, Outcome, Page, Reading, ResetAck, Series, WindowSum, WriteAck};
use crate::pipeline::Pipeline;
use crate::response::HELLO_REQUEST_ID;
use crate::shard_router::ShardRouter;

/// Lane 0 is the main connection; lane `s + 1` is shard `s`'s own connection.
pub(crate) const MAIN_LANE: usize = 0;

/// Why a lane has no connection.
pub(crate) enum LaneDown {
    /// The main connection could not be opened.
    Main(Error),
    /// A shard's own port is unreachable for now; its ops go through the main connection.
    Shard,
}

#[derive(Default)]
pub(crate) struct ShardSlot {
    connection: Option<Connection>,
    /// The shard's port refused a connection; try again after this.
    down_until: Option<Instant>,
}

/// A blocking Tally client.
///
/// ```no_run
/// use tally_sdk::{Client, CounterSpec};
/// let mut client = Client::connect("127.0.0.1:7400")?;
/// let views = client.incr("views:home", 1)?;
/// client.create("stock:sku-1", CounterSpec::strict().min(0).initial(10))?;
/// match client.add_bounded("stock:sku-1", -3, 0, i64::MAX) {
///     Ok(left) => println!("{views} views, {left} left"),
///     Err(e) if e.is_bound_violation() => println!("only {:?} left", e.current()),
///     Err(e) => return Err(e),
/// }
/// # Ok::<(), tally_sdk::Error>(())
/// ```
pub struct Client {
    pub(crate) options: ClientOptions,
    endpoint: Endpoint,
    /// The main connection's latest HELLO reply.
    hello: HelloReply,
    main: Option<Connection>,
    /// The address the main connection last reached; shard connections go to its host.
    main_peer: Option<SocketAddr>,
    /// Present when routing by shard.
    router: Option<ShardRouter>,
    shards: Vec<ShardSlot>,
    request_id_next: u64,
}

impl Client {
    /// Connects to a server's main TCP port (`host:port`) with default options and performs HELLO.
    pub fn connect(addr: &str) -> Result<Client, Error> {
        ClientOptions::new().connect(addr)
    }

    /// Connects to a server's Unix socket with default options and performs HELLO.
    #[cfg(unix)]
    pub fn connect_unix(path: impl AsRef<Path>) -> Result<Client, Error> {
        ClientOptions::new().connect_unix(path)
    }

    /// Options for a client that needs more than the defaults.
    pub fn builder() -> ClientOptions {
        ClientOptions::new()
    }

    pub(crate) fn open(options: ClientOptions, endpoint: Endpoint) -> Result<Client, Error> {
        let (connection, hello) = Connection::open(&endpoint, &options)?;
        let mut client = Client {
            options,
            endpoint,
            hello,
            main_peer: connection.peer(),
            main: Some(connection),
            router: None,
            shards: Vec::new(),
            request_id_next: HELLO_REQUEST_ID + 1,
        };
        client.topology_refresh();
        Ok(client)
    }

    /// The server's answer to the main connection's HELLO: shard count, shard ports, version.
    pub fn hello(&self) -> &HelloReply {
        &self.hello
    }

    /// True when ops go straight to their owner shard's port.
    pub fn is_shard_aware(&self) -> bool {
        self.router.is_some()
    }

    /// True while recent replies say `name` is split (hot), so its unkeyed increments are being
    /// spread over all shards. Always false without shard-aware routing.
    pub fn is_split(&mut self, name: impl AsRef<[u8]>) -> bool {
        let now = Instant::now();
        self.router
            .as_mut()
            .is_some_and(|router| router.is_split(name.as_ref(), now))
    }

    /// The shard that owns `name`.
    pub fn owner_of(&self, name: impl AsRef<[u8]>) -> u16 {
        shard_of(name.as_ref(), self.hello.shard_count)
    }

    /// Adds `delta` and returns the new value. The counter is created (analytic) if unknown.
    pub fn incr(&mut self, name: impl AsRef<[u8]>, delta: i64) -> Result<i64, Error> {
        Ok(self.incr_detailed(name, delta, None)?.value)
    }

    /// Adds `delta` under an idempotency key: sending the same key, name and delta again (from
    /// this or any client) counts once. Returns the value.
    pub fn incr_with_key(&mut self, name: impl AsRef<[u8]>, delta: i64, key: u128) -> Result<i64, Error> {
        Ok(self.incr_detailed(name, delta, Some(key))?.value)
    }

    /// Adds `delta` and returns the whole ack: token (for read-your-writes), split and duplicate
    /// flags.
    pub fn incr_detailed(&mut self, name: impl AsRef<[u8]>, delta: i64, key: Option<u128>) -> Result<WriteAck, Error> {
        let op = Op::Incr {
            name: Cow::Borrowed(name.as_ref()),
            delta,
            key,
        };
        Ok(self.call(op)?.expect_write())
    }

    /// The value; 0 for a name never written.
    pub fn get(&mut self, name: impl AsRef<[u8]>) -> Result<i64, Error> {
        Ok(self.get_with(name, false, None)?.value)
    }

    /// A read with options: `fresh` sums a split counter's shards now instead of returning the
    /// owner's aggregate; `token` (from a write ack) waits until that write is visible.
    pub fn get_with(&mut self, name: impl AsRef<[u8]>, fresh: bool, token: Option<Token>) -> Result<Reading, Error> {
        let op = Op::Get {
            name: Cow::Borrowed(name.as_ref()),
            fresh,
            token,
        };
        Ok(self.call(op)?.expect_reading())
    }

    /// Declares a counter. Idempotent: an identical declaration returns `created: false`; a
    /// different one fails with `already_exists`.
    pub fn create(&mut self, name: impl AsRef<[u8]>, spec: CounterSpec) -> Result<Created, Error> {
        let op = Op::Create {
            name: Cow::Borrowed(name.as_ref()),
            spec,
        };
        Ok(self.call(op)?.expect_created())
    }

    /// Strict counters: sets the value to `new` if it is `expected`, returning `new`. A mismatch
    /// fails with `is_cas_mismatch()` and the current value in `current()`. Never retried.
    pub fn cas(&mut self, name: impl AsRef<[u8]>, expected: i64, new: i64) -> Result<i64, Error> {
        Ok(self.cas_detailed(name, expected, new)?.value)
    }

    /// `cas` returning the whole ack.
    pub fn cas_detailed(&mut self, name: impl AsRef<[u8]>, expected: i64, new: i64) -> Result<WriteAck, Error> {
        let op = Op::Cas {
            name: Cow::Borrowed(name.as_ref()),
            expected,
            new,
        };
        Ok(self.call(op)?.expect_write())
    }

    /// Strict counters: adds `delta` unless the result leaves `[min, max]`, returning the new
    /// value. Crossing fails with `is_bound_violation()` and the current value in `current()`.
    pub fn add_bounded(&mut self, name: impl AsRef<[u8]>, delta: i64, min: i64, max: i64) -> Result<i64, Error> {
        Ok(self.add_bounded_detailed(name, delta, min, max, None)?.value)
    }

    /// `add_bounded` with an optional idempotency key, returning the whole ack.
    pub fn add_bounded_detailed(
        &mut self,
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
        Ok(self.call(op)?.expect_write())
    }

    /// Admin: sets the value, recording the old value and `reason` in the audit log. Never retried.
    pub fn reset(&mut self, name: impl AsRef<[u8]>, value: i64, reason: impl AsRef<[u8]>) -> Result<ResetAck, Error> {
        let op = Op::Reset {
            name: Cow::Borrowed(name.as_ref()),
            value,
            reason: Cow::Borrowed(reason.as_ref()),
        };
        Ok(self.call(op)?.expect_reset())
    }

    /// Server statistics, as served by the main connection's shard.
    pub fn stats(&mut self) -> Result<StatsReply, Error> {
        Ok(self.call(Op::Stats)?.expect_stats())
    }

    /// The sum of `name`'s increments over the last `last` seconds or minutes (the current one
    /// included), by server time at apply.
    pub fn window(&mut self, name: impl AsRef<[u8]>, last: u32, unit: WindowUnit) -> Result<WindowSum, Error> {
        let op = Op::Window {
            name: Cow::Borrowed(name.as_ref()),
            last,
            unit,
        };
        Ok(self.call(op)?.expect_window())
    }

    /// `name`'s increments summed per `step` from `from_ms` to `to_ms` (ms since the Unix epoch,
    /// rounded outwards to the step). Longer than `SERIES_POINTS_MAX` points, it is asked for in
    /// several requests.
    pub fn series(
        &mut self,
        name: impl AsRef<[u8]>,
        from_ms: u64,
        to_ms: u64,
        step: SeriesStep,
    ) -> Result<Series, Error> {
        let name = name.as_ref();
        let mut parts = Vec::new();
        for (from, to) in series_chunks(from_ms, to_ms, step) {
            parts.push(self.call(series_op(name, from, to, step))?.expect_series());
        }
        join_series(parts)
    }

    /// One page of RESET records in [from_ms, to_ms) of `name` (empty: every counter); pass the
    /// returned cursor to get the next (empty cursor: start, or no more).
    pub fn audit_page(
        &mut self,
        name: impl AsRef<[u8]>,
        from_ms: u64,
        to_ms: u64,
        cursor: &[u8],
    ) -> Result<Page<AuditRecord>, Error> {
        Ok(self
            .call(audit_op(name.as_ref(), from_ms, to_ms, cursor))?
            .expect_audit())
    }

    /// Every RESET record in [from_ms, to_ms) of `name` (empty: every counter), oldest first.
    pub fn audit(&mut self, name: impl AsRef<[u8]>, from_ms: u64, to_ms: u64) -> Result<Vec<AuditRecord>, Error> {
        let name = name.as_ref();
        let mut records = Vec::new();
        let mut cursor = Vec::new();
        loop {
            let page = self.audit_page(name, from_ms, to_ms, &cursor)?;
            records.extend(page.items);
            if page.cursor.is_empty() {
                return Ok(records);
            }
            cursor = page.cursor;
        }
    }

    /// One page (at most `limit`, capped at `EVENTS_PER_PAGE_MAX`) of `name`'s logged increments
    /// in [from_ms, to_ms), in time order; pass the returned cursor to get the next page.
    pub fn events_page(
        &mut self,
        name: impl AsRef<[u8]>,
        from_ms: u64,
        to_ms: u64,
        limit: u16,
        cursor: &[u8],
    ) -> Result<Page<Event>, Error> {
        Ok(self
            .call(events_op(name.as_ref(), from_ms, to_ms, limit, cursor))?
            .expect_events())
    }

    /// Every logged increment of `name` in [from_ms, to_ms), page by page, to `each`; stops early
    /// when `each` returns false.
    pub fn events_each(
        &mut self,
        name: impl AsRef<[u8]>,
        from_ms: u64,
        to_ms: u64,
        mut each: impl FnMut(&[Event]) -> bool,
    ) -> Result<(), Error> {
        let name = name.as_ref();
        let mut cursor = Vec::new();
        loop {
            let page = self.events_page(name, from_ms, to_ms, u16::MAX, &cursor)?;
            if !each(&page.items) || page.cursor.is_empty() {
                return Ok(());
            }
            cursor = page.cursor;
        }
    }

    /// Admin: promotes the node this client is connected to (a replica) to primary. It fences its
    /// peers and collects what they have first; `force` goes on without peers silent for `wait_ms`
    /// (losing writes acknowledged only on them). Returns the new epoch. Never retried; the
    /// client's request timeout must exceed `wait_ms`.
    pub fn promote(&mut self, force: bool, wait_ms: u32) -> Result<u64, Error> {
        Ok(self.call(Op::Promote { force, wait_ms })?.expect_promote())
    }

    /// Sends one op of any kind.
    pub fn call(&mut self, op: Op<'_>) -> Result<Outcome, Error> {
        let mut results = exchange::run(self, std::slice::from_ref(&op), 1, 1);
        assert_eq!(results.len(), 1);
        results.pop().expect("one result")
    }

    /// Sends a pipeline's ops and returns one result per op, in submission order.
    pub fn execute(&mut self, pipeline: &Pipeline) -> Vec<Result<Outcome, Error>> {
        exchange::run(self, pipeline.ops(), pipeline.batch_ops(), pipeline.depth_frames())
    }

    pub(crate) fn lane_count(&self) -> usize {
        1 + self.shards.len()
    }

    pub(crate) fn next_request_id(&mut self) -> u64 {
        let id = self.request_id_next;
        self.request_id_next = self.request_id_next.wrapping_add(1);
        if self.request_id_next == HELLO_REQUEST_ID {
            self.request_id_next += 1;
        }
        id
    }

    /// Rebuilds the router when the main connection's latest HELLO shows another topology (the
    /// server restarted with other shards or ports). Called between exchanges only, so lanes never
    /// change under one.
    pub(crate) fn topology_refresh(&mut self) {
        if !self.options.routes_by_shard(&self.endpoint) {
            return;
        }
        if self.router.as_ref().is_some_and(|router| router.matches(&self.hello)) {
            return;
        }
        self.router = Some(ShardRouter::new(&self.hello));
        self.shards = (0..self.hello.shard_count).map(|_| ShardSlot::default()).collect();
    }

    /// The lane `op` goes to.
    pub(crate) fn route(&mut self, op: &Op<'_>, key: Option<u128>, now: Instant) -> usize {
        let Some(router) = self.router.as_mut() else {
            return MAIN_LANE;
        };
        let Some(shard) = router.shard_for(op, key, now) else {
            return MAIN_LANE;
        };
        if shard == router.main_shard() {
            return MAIN_LANE;
        }
        let slot = &self.shards[usize::from(shard)];
        if slot.connection.is_none() && slot.down_until.is_some_and(|until| now < until) {
            return MAIN_LANE;
        }
        usize::from(shard) + 1
    }

    pub(crate) fn observe_split(&mut self, name: &[u8], split: bool, now: Instant) {
        if let Some(router) = self.router.as_mut() {
            router.observe(name, split, now);
        }
    }

    /// Opens the lane's connection if it has none.
    pub(crate) fn lane_connect(&mut self, lane: usize, now: Instant) -> Result<(), LaneDown> {
        if lane == MAIN_LANE {
            if self.main.is_none() {
                let (connection, hello) = Connection::open(&self.endpoint, &self.options).map_err(LaneDown::Main)?;
                self.main_peer = connection.peer().or(self.main_peer);
                self.hello = hello;
                self.main = Some(connection);
            }
            return Ok(());
        }
        let shard = u16::try_from(lane - 1).expect("shard lanes are numbered by u16 shard ids");
        let router = self.router.as_ref().expect("shard lanes exist only with a router");
        let slot = &mut self.shards[lane - 1];
        if slot.connection.is_some() {
            return Ok(());
        }
        if slot.down_until.is_some_and(|until| now < until) {
            return Err(LaneDown::Shard);
        }
        let Some(peer) = self.main_peer else {
            return Err(LaneDown::Shard);
        };
        let addr = SocketAddr::new(peer.ip(), router.port(shard));
        match Connection::open_tcp(addr, &self.options) {
            // A port that answers for another shard (or another topology) is as good as down:
            // the main connection forwards correctly.
            Ok((connection, hello)) if hello.shard == shard && hello.shard_count == router.shard_count() => {
                slot.connection = Some(connection);
                slot.down_until = None;
                Ok(())
            }
            Ok(_) | Err(_) => {
                slot.down_until = Some(now + Duration::from_millis(SHARD_DOWN_MS));
                Err(LaneDown::Shard)
            }
        }
    }

    pub(crate) fn lane_connection(&mut self, lane: usize) -> Option<&mut Connection> {
        if lane == MAIN_LANE {
            self.main.as_mut()
        } else {
            self.shards[lane - 1].connection.as_mut()
        }
    }

    pub(crate) fn drop_lane_connection(&mut self, lane: usize) {
        if lane == MAIN_LANE {
            self.main = None;
        } else {
            self.shards[lane - 1].connection = None;
        }
    }
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Client")
            .field("endpoint", &self.endpoint.to_string())
            .field("hello", &self.hello)
            .field("connected", &self.main.is_some())
            .field("shard_aware", &self.router.is_some())
            .finish()
    }
}
