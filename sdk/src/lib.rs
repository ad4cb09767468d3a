//! The Tally client SDK: a blocking `Client`, an async `AsyncClient` (cargo feature `tokio`), and
//! the `tally` command-line tool built on them. It depends on `tally-proto` for the wire format and
//! on nothing of the server.
//!
//! What it adds over raw frames:
//! - **Pipelining and batching** (`Pipeline`): many ops in frames of up to `batch` ops, up to
//!   `depth` frames in flight per connection, results in submission order, one `Result` per op.
//! - **Shard-aware routing** (blocking client, on by default over TCP): after HELLO the client
//!   opens one connection per shard (lazily) on the ports HELLO lists and sends each op straight to
//!   its owner, `shard_of(name, shard_count)`, so the server never forwards. Counters the server
//!   reports as split (hot) get their unkeyed increments spread over all shards. An unreachable
//!   shard port falls back to the main connection, which forwards.
//! - **Safe retries** (`ClientOptions::retry_writes`): every INCR and ADD_BOUNDED carries an
//!   idempotency key (random, 128 bits) chosen before the first send; after a connection error or
//!   timeout the client reconnects and resends the same key, so the write counts exactly once.
//!   CAS and RESET are never retried. See the `retry` module.
//! - **Client-side limits**: names, reasons, ops per frame and frame size are checked before
//!   sending and refused with the code the server would give (`Error::Refused`).
//!
//! The library never panics on anything the server sends: malformed or mismatched replies are
//! `Error::Protocol` and drop the connection. Errors are one `#[non_exhaustive]` enum, `Error`.
//!
//! ```no_run
//! use std::time::Duration;
//! use tally_sdk::{Client, CounterSpec, Pipeline, RetryPolicy};
//!
//! let mut client = Client::builder()
//!     .client_name("checkout")
//!     .retry_writes(RetryPolicy::new(3, Duration::from_millis(50)))
//!     .connect("127.0.0.1:7400")?;
//!
//! // Single ops.
//! client.incr("views:home", 1)?;
//! client.create("stock:sku-1", CounterSpec::strict().min(0).initial(10))?;
//! if let Err(e) = client.add_bounded("stock:sku-1", -20, 0, i64::MAX) {
//!     assert!(e.is_bound_violation());
//!     println!("only {:?} in stock", e.current());
//! }
//!
//! // A pipeline: 1000 increments in frames of 100 ops, 8 frames in flight per shard.
//! let mut pipeline = Pipeline::new().batch(100)?.depth(8)?;
//! for page in 0..1000 {
//!     pipeline.incr(format!("views:page:{page}"), 1);
//! }
//! for result in client.execute(&pipeline) {
//!     result?;
//! }
//! # Ok::<(), tally_sdk::Error>(())
//! ```

#[cfg(feature = "tokio")]
mod async_client;
mod client;
mod connection;
mod counter_spec;
mod endpoint;
mod error;
mod exchange;
pub mod key;
pub mod limits;
mod op;
mod options;
mod outcome;
mod pipeline;
mod response;
pub mod retry;
mod shard_router;
mod split_set;

#[cfg(feature = "tokio")]
pub use async_client::AsyncClient;
pub use client::Client;
pub use counter_spec::CounterSpec;
pub use error::Error;
pub use key::{key_from_str, random_key};
pub use op::Op;
pub use options::ClientOptions;
pub mod history;
pub use outcome::{Created, Outcome, Page, Reading, ResetAck, Series, WindowSum, WriteAck};
pub use pipeline::Pipeline;
pub use retry::RetryPolicy;
pub use tally_proto::{
    AuditRecord, CounterKind, ErrorCode, Event, EventKind, HelloReply, SeriesStep, StatsReply, Token, WindowUnit,
};

// A client moves to the thread (or task) that uses it, and the async client is shared between
// tasks.
const _: () = {
    const fn assert_send<T: Send>() {}
    const fn assert_send_sync<T: Send + Sync>() {}
    assert_send::<Client>();
    assert_send::<Pipeline>();
    assert_send_sync::<Error>();
    #[cfg(feature = "tokio")]
    assert_send_sync::<AsyncClient>();
};
