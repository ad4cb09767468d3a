//! Messages between shards.
//!
//! Two meshes connect every pair of shards, each a bounded glommio channel per (source,
//! destination): `ShardRequest`s travel on the request mesh and `ShardReply`s on the reply mesh.
//! The split is what makes bounded queues deadlock-free: a shard's reply receiver only fills in
//! local state and never sends, so the reply mesh always drains; a request receiver only ever
//! waits on the reply mesh. With one mesh, two shards whose queues to each other were full could
//! each wait forever to send the reply the other needs to make room.

use std::sync::Arc;

use bytes::Bytes;

use tally_engine::{Outcome, ShardStats};

/// Work for another shard. Ops travel in their wire encoding (`opcode | len | payload`), decoded
/// again by the receiver: cheaper than an owned copy of every field and never out of step with
/// the protocol.
pub enum ShardRequest {
    Ops {
        id: u64,
        client: Arc<[u8]>,
        now_ms: u64,
        count: u16,
        ops: Bytes,
    },
    Stats {
        id: u64,
    },
}

/// The answer to a `ShardRequest`, sent back to the shard that asked.
pub enum ShardReply {
    /// One outcome per op, in order.
    Ops {
        id: u64,
        outcomes: Vec<Outcome>,
    },
    Stats {
        id: u64,
        stats: Box<ShardFigures>,
    },
}

/// One replica link's figures (STATS `shard.N.repl.R.*`).
#[derive(Debug, Clone, Default)]
pub struct LinkFigures {
    pub lsn_acked: u64,
    /// Sealed lsns the replica has not acked.
    pub lag_lsns: u64,
    /// Milliseconds since its ack last moved, while it lags (0 when caught up).
    pub lag_ms: u64,
    pub connected: bool,
    pub snapshots_sent: u64,
}

/// Everything one shard reports for STATS.
#[derive(Debug, Clone, Default)]
pub struct ShardFigures {
    pub shard: u16,
    pub engine: ShardStats,
    pub split_names: Vec<Vec<u8>>,
    pub connections: u64,
    pub frames: u64,
    pub ops_forwarded_out: u64,
    pub ops_forwarded_in: u64,
    pub wal_commits: u64,
    /// Microseconds spent in commits (write + fdatasync, as this shard saw them), summed.
    pub wal_commit_us: u64,
    pub wal_records: u64,
    pub lsn_durable: u64,
    /// The last lsn in the log's buffers (durable or not); above `lsn_durable` while a commit is due.
    pub lsn_appended: u64,
    pub log_poisoned: bool,
    pub disk_full: bool,
    pub snapshots: u64,
    /// Replication: 1 on a replica, 0 on a primary.
    pub replica: bool,
    pub epoch: u64,
    /// Per replica link (on a primary).
    pub links: Vec<LinkFigures>,
}

impl ShardFigures {
    /// Appends this shard's named figures (`shard.N.key`).
    pub fn push_figures(&self, out: &mut Vec<(String, i64)>) {
        let s = self.shard;
        let e = &self.engine;
        let figures: [(&str, u64); 19] = [
            ("counters", e.counters),
            ("strict_counters", e.strict_counters),
            ("split_owned", e.split_owned),
            ("ops_applied", e.ops_applied),
            ("ops_failed", e.ops_failed),
            ("lsn", e.lsn),
            ("memory_bytes", e.memory_bytes),
            ("connections", self.connections),
            ("frames", self.frames),
            ("ops_forwarded_out", self.ops_forwarded_out),
            ("ops_forwarded_in", self.ops_forwarded_in),
            ("wal_commits", self.wal_commits),
            ("wal_commit_us", self.wal_commit_us),
            ("wal_records", self.wal_records),
            ("lsn_durable", self.lsn_durable),
            ("lsn_appended", self.lsn_appended),
            ("log_poisoned", u64::from(self.log_poisoned)),
            ("disk_full", u64::from(self.disk_full)),
            ("snapshots", self.snapshots),
        ];
        for (key, value) in figures {
            out.push((format!("shard.{s}.{key}"), i64::try_from(value).unwrap_or(i64::MAX)));
        }
        out.push((
            format!("shard.{s}.epoch"),
            i64::try_from(self.epoch).unwrap_or(i64::MAX),
        ));
        for (r, link) in self.links.iter().enumerate() {
            let clamp = |v: u64| i64::try_from(v).unwrap_or(i64::MAX);
            out.push((format!("shard.{s}.repl.{r}.lsn_acked"), clamp(link.lsn_acked)));
            out.push((format!("shard.{s}.repl.{r}.lag_lsns"), clamp(link.lag_lsns)));
            out.push((format!("shard.{s}.repl.{r}.lag_ms"), clamp(link.lag_ms)));
            out.push((format!("shard.{s}.repl.{r}.connected"), i64::from(link.connected)));
            out.push((format!("shard.{s}.repl.{r}.snapshots_sent"), clamp(link.snapshots_sent)));
        }
    }
}
