//! tally-bench: the load generator that measures Tally, and Redis beside it, on the same machine
//! with the same workload.
//!
//! It owns: flag parsing and validation (`args`), the workload — op mix, name distributions
//! (uniform, zipf, one hot name), strict counters, idempotency keys (`workload`, `dist`, `zipf`) —
//! the protocol drivers (`driver_tally` on raw `tally_proto` frames, `driver_redis` on RESP2), the
//! closed and open loops (`closed_loop`, `open_loop`, `schedule`), HDR latency recording
//! (`recorder`), and the outputs (`report`, `plot`, `progress`, `machine`).
//!
//! Invariants: every connection has its own socket, workload and recorder, and is driven by one
//! thread (its own in the closed loop, one of `--threads` in the open loop) that shares nothing on
//! the hot path but a progress counter; runs are reproducible (fixed default seed, each
//! connection's stream derived from it); open-loop latency counts from the intended send time, never
//! the actual one, so a stalled server cannot hide behind the client's own waiting (no coordinated
//! omission); warm-up ops are never recorded.
//!
//! It must never: sleep in place of waiting for a reply, send anything to an address the user did
//! not give, or report a number without the configuration, machine and server that produced it.

pub mod args;
pub mod closed_loop;
pub mod connection;
pub mod dist;
pub mod driver_redis;
pub mod driver_tally;
pub mod error;
pub mod limits;
pub mod machine;
pub mod open_loop;
pub mod plot;
pub mod progress;
pub mod recorder;
pub mod report;
pub mod resp;
pub mod run;
pub mod schedule;
pub mod workload;
pub mod zipf;

pub use args::{Args, Config};
pub use error::BenchError;
