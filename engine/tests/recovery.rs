//! Recovery properties: 2-3 shards sharing one `SplitRegistry` run random ops (forced splits and
//! merges, ticks that split and merge by rate, keyed writes and their retries, CAS, bounded adds,
//! resets), and every shard's log is kept by a sink that copies each record.
//!
//! - Replay equivalence: shards rebuilt by replaying each full log (or a snapshot taken at a random
//!   point plus the records after it), then reconciled, hold every counter's value (the original's
//!   owner part plus its open slots), dedup every key the original dedups with the same answer,
//!   keep the same audit records, and reach the same lsns before reconcile.
//! - Crash prefixes: replaying only a prefix of each log (each shard its own durable point), then
//!   reconciling, gives each growing counter a value between the sum of the increments whose
//!   records are in the prefixes and the sum of every increment applied; and so does a second
//!   crash after the recovered node served more ops (the reconcile's own records may be lost in
//!   it). Snapshots are used as a recovery base only when their `durable_lsn_required` holds,
//!   which the lower bound checks.

use std::collections::BTreeMap;
use std::sync::Arc;

use proptest::prelude::*;
use tally_engine::{
    reconcile, Applied, Ctx, HotConfig, Keyed, LogRecord, LogSink, NamespaceRule, Shard, ShardConfig, SnapshotDeps,
    SplitRegistry,
};
use tally_proto::reply::{REPLY_APPROX, REPLY_DUPLICATE, REPLY_SPLIT};
use tally_proto::{shard_of, CounterKind, ErrorCode, Reply, Request};

const NAMES: [&str; 8] = ["a", "b", "c", "f", "g", "s:x", "s:y", "u:z"];
/// Analytic names that only ever get positive increments in the crash tests.
const GROWING: usize = 5;
const FORCED: &str = "f";
const DEDUP_WINDOW_MS: u64 = 500;

// ---- an owned copy of a record ----

#[derive(Debug, Clone, PartialEq, Eq)]
enum Rec {
    Incr(u32, i64, Option<Keyed>),
    Create(u32, CounterKind, i64, i64, i64),
    Cas(u32, i64),
    AddBounded(u32, i64, Option<u128>),
    Reset(u32, i64, i64, Vec<u8>, Vec<u8>),
    SlotIncr(u32, u64, i64),
    Split(u32, u64),
    Merge(u32, u64, i64),
}

#[derive(Debug, Clone)]
struct Entry {
    lsn: u64,
    time_ms: u64,
    name: Vec<u8>,
    rec: Rec,
}

impl Entry {
    fn of(lsn: u64, time_ms: u64, record: &LogRecord<'_>) -> Entry {
        let rec = match *record {
            LogRecord::Incr {
                name_id, delta, key, ..
            } => Rec::Incr(name_id, delta, key),
            LogRecord::Create {
                name_id,
                kind,
                initial,
                min,
                max,
                ..
            } => Rec::Create(name_id, kind, initial, min, max),
            LogRecord::Cas { name_id, new, .. } => Rec::Cas(name_id, new),
            LogRecord::AddBounded {
                name_id, delta, key, ..
            } => Rec::AddBounded(name_id, delta, key),
            LogRecord::Reset {
                name_id,
                old,
                new,
                reason,
                client,
                ..
            } => Rec::Reset(name_id, old, new, reason.to_vec(), client.to_vec()),
            LogRecord::SlotIncr {
                name_id, epoch, delta, ..
            } => Rec::SlotIncr(name_id, epoch, delta),
            LogRecord::Split { name_id, epoch, .. } => Rec::Split(name_id, epoch),
            LogRecord::Merge {
                name_id, epoch, amount, ..
            } => Rec::Merge(name_id, epoch, amount),
        };
        Entry {
            lsn,
            time_ms,
            name: record.name().to_vec(),
            rec,
        }
    }

    /// The record as the WAL hands it back: its `name_id` is the WAL's own dictionary id, not the
    /// engine's, so replay must not depend on it (0 here).
    fn record(&self) -> LogRecord<'_> {
        let name = &self.name[..];
        let mut rec = self.rec.clone();
        match &mut rec {
            Rec::Incr(id, ..)
            | Rec::Create(id, ..)
            | Rec::Cas(id, ..)
            | Rec::AddBounded(id, ..)
            | Rec::Reset(id, ..)
            | Rec::SlotIncr(id, ..)
            | Rec::Split(id, ..)
            | Rec::Merge(id, ..) => *id = 0,
        }
        match rec {
            Rec::Incr(name_id, delta, key) => LogRecord::Incr {
                name,
                name_id,
                delta,
                key,
            },
            Rec::Create(name_id, kind, initial, min, max) => LogRecord::Create {
                name,
                name_id,
                kind,
                initial,
                min,
                max,
            },
            Rec::Cas(name_id, new) => LogRecord::Cas { name, name_id, new },
            Rec::AddBounded(name_id, delta, key) => LogRecord::AddBounded {
                name,
                name_id,
                delta,
                key,
            },
            Rec::Reset(name_id, old, new, _, _) => {
                let Rec::Reset(.., ref reason, ref client) = self.rec else {
                    unreachable!("the same variant")
                };
                LogRecord::Reset {
                    name,
                    name_id,
                    old,
                    new,
                    reason,
                    client,
                }
            }
            Rec::SlotIncr(name_id, epoch, delta) => LogRecord::SlotIncr {
                name,
                name_id,
                epoch,
                delta,
            },
            Rec::Split(name_id, epoch) => LogRecord::Split { name, name_id, epoch },
            Rec::Merge(name_id, epoch, amount) => LogRecord::Merge {
                name,
                name_id,
                epoch,
                amount,
            },
        }
    }

    /// The increment this record durably carries for `name`: an INCR at the owner or a slot
    /// increment elsewhere.
    fn increment_of(&self, name: &[u8]) -> i64 {
        match self.rec {
            Rec::Incr(_, delta, _) | Rec::SlotIncr(_, _, delta) if self.name == name => delta,
            _ => 0,
        }
    }
}

/// One shard's log: every record, in lsn order.
#[derive(Debug, Clone, Default)]
struct Log {
    entries: Vec<Entry>,
    now_ms: u64,
}

impl LogSink for Log {
    fn record(&mut self, lsn: u64, record: &LogRecord<'_>) {
        if let Some(last) = self.entries.last() {
            assert_eq!(lsn, last.lsn + 1, "records arrive in lsn order without gaps");
        }
        self.entries.push(Entry::of(lsn, self.now_ms, record));
    }
}

// ---- the node ----

fn config(shard: u16, shards: u16) -> ShardConfig {
    let mut config = ShardConfig::new(shard, shards);
    config.hot = HotConfig {
        enabled: true,
        split_rate_per_sec: 1,
        merge_rate_per_sec: 1,
        tick_ms: 100,
        merge_after_ticks: 1,
        forced: vec![FORCED.as_bytes().to_vec()],
        sample_every: 1,
    };
    config.namespaces = vec![
        NamespaceRule {
            prefix: b"s:".to_vec(),
            kind: CounterKind::Strict,
            min: Some(-1000),
            max: Some(1000),
        },
        NamespaceRule {
            prefix: b"u:".to_vec(),
            kind: CounterKind::Strict,
            min: None,
            max: None,
        },
    ];
    config.dedup_window_ms = DEDUP_WINDOW_MS;
    config
}

struct Node {
    shards: Vec<Shard>,
    logs: Vec<Log>,
    now_ms: u64,
}

impl Node {
    fn new(shards: u16) -> Node {
        let registry = Arc::new(SplitRegistry::new(shards));
        Node {
            shards: (0..shards)
                .map(|id| Shard::new(config(id, shards), registry.clone()))
                .collect(),
            logs: vec![Log::default(); shards as usize],
            now_ms: 1_000_000,
        }
    }

    fn count(&self) -> u16 {
        self.shards.len() as u16
    }

    fn owner(&self, name: &[u8]) -> usize {
        shard_of(name, self.count()) as usize
    }

    /// Applies `op` at `entry`, following a forward to the owner.
    fn route(&mut self, op: &Request<'_>, entry: usize) -> Result<Reply, ErrorCode> {
        let ctx = Ctx {
            now_ms: self.now_ms,
            client: b"recovery",
        };
        for log in &mut self.logs {
            log.now_ms = self.now_ms;
        }
        let applied = match self.shards[entry].apply(op, &ctx, &mut self.logs[entry]) {
            Applied::Forward(owner) => {
                let owner = owner as usize;
                self.shards[owner].apply(op, &ctx, &mut self.logs[owner])
            }
            done => done,
        };
        match applied {
            Applied::Done(outcome) => outcome.map_err(|failure| failure.code),
            Applied::Forward(to) => panic!("an owner forwarded to {to}"),
        }
    }

    fn tick(&mut self, dt: u64) {
        self.now_ms += dt;
        for (shard, log) in self.shards.iter_mut().zip(&mut self.logs) {
            log.now_ms = self.now_ms;
            shard.tick(self.now_ms, log);
        }
    }

    fn value(&mut self, name: &[u8]) -> (i64, u8) {
        let op = Request::Get {
            name,
            fresh: true,
            token: None,
        };
        match self.route(&op, 0) {
            Ok(Reply::Get { value, flags }) => (value, flags & !REPLY_SPLIT),
            other => panic!("{other:?}"),
        }
    }
}

// ---- ops ----

#[derive(Debug, Clone)]
enum Op {
    Incr {
        name: usize,
        delta: i64,
        key: Option<u8>,
        entry: usize,
    },
    Create {
        name: usize,
        initial: i64,
    },
    Cas {
        name: usize,
        expected: i64,
        new: i64,
    },
    AddBounded {
        name: usize,
        delta: i64,
        key: Option<u8>,
    },
    Reset {
        name: usize,
        value: i64,
    },
    Tick {
        dt: u64,
    },
    Split {
        name: usize,
    },
    Merge {
        name: usize,
    },
    Retry {
        pick: usize,
        entry: usize,
    },
}

fn key_of(key: u8) -> u128 {
    u128::from(key) * 0x1_0000_0001
}

/// Random ops; `growing` keeps the first `GROWING` names analytic with positive increments only.
fn op(growing: bool) -> impl Strategy<Value = Op> {
    let any_name = 0..NAMES.len();
    let strict_name = GROWING..NAMES.len();
    let split_name = 0..GROWING;
    let delta = if growing {
        (1i64..=5).boxed()
    } else {
        (-5i64..=5).boxed()
    };
    let key = prop_oneof![3 => Just(None), 1 => (0u8..6).prop_map(Some)];
    let written = if growing { strict_name.clone() } else { any_name.clone() };
    prop_oneof![
        10 => (any_name, delta, key.clone(), 0usize..3).prop_map(|(name, delta, key, entry)| Op::Incr { name, delta, key, entry }),
        1 => (written.clone(), -3i64..=3).prop_map(|(name, initial)| Op::Create { name, initial }),
        2 => (strict_name.clone(), -3i64..=3, -3i64..=3).prop_map(|(name, expected, new)| Op::Cas { name, expected, new }),
        2 => (strict_name, -3i64..=3, key).prop_map(|(name, delta, key)| Op::AddBounded { name, delta, key }),
        1 => (written, -3i64..=3).prop_map(|(name, value)| Op::Reset { name, value }),
        3 => (1u64..=300).prop_map(|dt| Op::Tick { dt }),
        2 => split_name.clone().prop_map(|name| Op::Split { name }),
        1 => split_name.prop_map(|name| Op::Merge { name }),
        2 => (any::<usize>(), 0usize..3).prop_map(|(pick, entry)| Op::Retry { pick, entry }),
    ]
}

/// Everything a run applied: per name the sum of its applied increments (not duplicates), and the
/// keyed writes made, for retries.
#[derive(Debug, Default)]
struct Ledger {
    increments: BTreeMap<usize, i64>,
    keyed: Vec<(usize, i64, u8, bool)>,
}

/// Runs `ops`; takes shard i's snapshot before step `snapshot_at[i]` (`ops.len()`: at the end).
fn run(
    node: &mut Node,
    ops: &[Op],
    snapshot_at: &[usize],
    snapshots: &mut [Option<(Vec<u8>, SnapshotDeps)>],
) -> Ledger {
    let mut applied = Ledger::default();
    let shards = node.count() as usize;
    for (step, op) in ops.iter().enumerate() {
        for (shard, &at) in snapshot_at.iter().enumerate() {
            if at == step {
                let mut bytes = Vec::new();
                let deps = node.shards[shard].snapshot(&mut bytes);
                snapshots[shard] = Some((bytes, deps));
            }
        }
        apply_op(node, op, shards, &mut applied);
    }
    for (shard, &at) in snapshot_at.iter().enumerate() {
        if at >= ops.len() {
            let mut bytes = Vec::new();
            let deps = node.shards[shard].snapshot(&mut bytes);
            snapshots[shard] = Some((bytes, deps));
        }
    }
    applied
}

fn apply_op(node: &mut Node, op: &Op, shards: usize, applied: &mut Ledger) {
    match *op {
        Op::Incr {
            name,
            delta,
            key,
            entry,
        } => incr(node, applied, name, delta, key, entry % shards),
        Op::Retry { pick, entry } => {
            if !applied.keyed.is_empty() {
                let (name, delta, key, bounded) = applied.keyed[pick % applied.keyed.len()];
                if bounded {
                    add_bounded(node, applied, name, delta, key);
                } else {
                    incr(node, applied, name, delta, Some(key), entry % shards);
                }
            }
        }
        Op::Create { name, initial } => {
            let strict = name >= GROWING;
            let op = Request::Create {
                name: NAMES[name].as_bytes(),
                kind: if strict {
                    CounterKind::Strict
                } else {
                    CounterKind::Analytic
                },
                initial: if strict { initial } else { 0 },
                min: None,
                max: None,
            };
            let _ = node.route(&op, 0);
        }
        Op::Cas { name, expected, new } => {
            let op = Request::Cas {
                name: NAMES[name].as_bytes(),
                expected,
                new,
            };
            let _ = node.route(&op, 0);
        }
        Op::AddBounded { name, delta, key } => {
            if let Some(key) = key {
                applied.keyed.push((name, delta, key, true));
            }
            add_bounded(node, applied, name, delta, key.unwrap_or(u8::MAX));
        }
        Op::Reset { name, value } => {
            let op = Request::Reset {
                name: NAMES[name].as_bytes(),
                value,
                reason: b"because",
            };
            let _ = node.route(&op, 0);
        }
        Op::Tick { dt } => node.tick(dt),
        Op::Split { name } => {
            let owner = node.owner(NAMES[name].as_bytes());
            node.shards[owner].split_now(NAMES[name].as_bytes(), &mut node.logs[owner]);
        }
        Op::Merge { name } => {
            let owner = node.owner(NAMES[name].as_bytes());
            node.shards[owner].merge_now(NAMES[name].as_bytes(), &mut node.logs[owner]);
        }
    }
}

fn incr(node: &mut Node, applied: &mut Ledger, name: usize, delta: i64, key: Option<u8>, entry: usize) {
    let op = Request::Incr {
        name: NAMES[name].as_bytes(),
        delta,
        key: key.map(key_of),
    };
    if let Ok(Reply::Incr { flags, .. }) = node.route(&op, entry) {
        if flags & REPLY_DUPLICATE == 0 {
            *applied.increments.entry(name).or_insert(0) += delta;
        }
    }
    if let Some(key) = key {
        applied.keyed.push((name, delta, key, false));
    }
}

/// A bounded add; key `u8::MAX` means unkeyed.
fn add_bounded(node: &mut Node, _applied: &mut Ledger, name: usize, delta: i64, key: u8) {
    let op = Request::AddBounded {
        name: NAMES[name].as_bytes(),
        delta,
        min: -1000,
        max: 1000,
        key: (key != u8::MAX).then(|| key_of(key)),
    };
    let _ = node.route(&op, 0);
}

// ---- recovery ----

/// Rebuilds a node from each shard's snapshot (if any) and log entries, then reconciles it.
/// Returns the node and each shard's lsn before the reconcile.
fn recover(shards: u16, logs: &[&[Entry]], snapshots: &[Option<&[u8]>], now_ms: u64) -> (Node, Vec<u64>) {
    let registry = Arc::new(SplitRegistry::new(shards));
    let mut node = Node {
        shards: Vec::new(),
        logs: vec![Log::default(); shards as usize],
        now_ms,
    };
    for (id, (entries, snapshot)) in logs.iter().zip(snapshots).enumerate() {
        let mut shard = match snapshot {
            Some(bytes) => Shard::from_snapshot(config(id as u16, shards), registry.clone(), bytes).expect("restores"),
            None => Shard::new(config(id as u16, shards), registry.clone()),
        };
        let base = shard.lsn();
        for entry in entries.iter().filter(|entry| entry.lsn > base) {
            shard
                .replay(entry.lsn, entry.time_ms, &entry.record())
                .unwrap_or_else(|error| panic!("shard {id} replays {entry:?}: {error}"));
        }
        node.shards.push(shard);
    }
    let lsns: Vec<u64> = node.shards.iter().map(Shard::lsn).collect();
    let mut sinks: Vec<&mut dyn LogSink> = node.logs.iter_mut().map(|log| log as &mut dyn LogSink).collect();
    reconcile(&mut node.shards, &mut sinks).expect("reconcile");
    for shard in &node.shards {
        assert!(shard.recovered_slot_parts().is_empty());
        assert!(shard.split_names().is_empty(), "nothing is split after reconcile");
    }
    (node, lsns)
}

/// Asserts the recovered node is the original: values, audit, dedup answers.
fn assert_same(original: &mut Node, recovered: &mut Node, applied: &Ledger) {
    for name in NAMES {
        assert_eq!(
            recovered.value(name.as_bytes()),
            original.value(name.as_bytes()),
            "value of {name}"
        );
    }
    for (a, b) in original.shards.iter().zip(&recovered.shards) {
        let (a, b): (Vec<_>, Vec<_>) = (a.audit().cloned().collect(), b.audit().cloned().collect());
        assert_eq!(a, b, "audit records");
    }
    recovered.now_ms = original.now_ms;
    let mut keys: Vec<_> = applied.keyed.clone();
    keys.sort();
    keys.dedup();
    // A retry below may apply a key afresh (its first use expired); a later retry of that key is
    // then a duplicate of an lsn each node assigned itself, which may differ by the reconcile's.
    let mut applied_here = Vec::new();
    for (name, delta, key, bounded) in keys {
        let op = if bounded {
            Request::AddBounded {
                name: NAMES[name].as_bytes(),
                delta,
                min: -1000,
                max: 1000,
                key: Some(key_of(key)),
            }
        } else {
            Request::Incr {
                name: NAMES[name].as_bytes(),
                delta,
                key: Some(key_of(key)),
            }
        };
        let owner = original.owner(NAMES[name].as_bytes());
        let (a, b) = (original.route(&op, owner), recovered.route(&op, owner));
        match (a, b) {
            (Ok(a), Ok(b)) => {
                let (mut a, mut b) = (retry_view(&a), retry_view(&b));
                if a.2.is_none() {
                    applied_here.push(key);
                } else if applied_here.contains(&key) {
                    (a.2, b.2) = (None, None);
                }
                assert_eq!(a, b, "retry of key {key} on {}", NAMES[name]);
            }
            (a, b) => assert_eq!(a.err(), b.err(), "retry of key {key} on {}", NAMES[name]),
        }
    }
}

/// What must match between two answers to the same retry: value and duplicate flag always, the
/// token too for a duplicate (fresh writes get the recovered node's own lsns).
fn retry_view(reply: &Reply) -> (i64, u8, Option<u64>) {
    let mask = !(REPLY_SPLIT | REPLY_APPROX);
    match *reply {
        Reply::Incr { value, flags, token } | Reply::AddBounded { value, flags, token } => {
            let duplicate = flags & REPLY_DUPLICATE != 0;
            (value, flags & mask, duplicate.then_some(token.lsn))
        }
        ref other => panic!("{other:?}"),
    }
}

fn entries(node: &Node) -> Vec<&[Entry]> {
    node.logs.iter().map(|log| &log.entries[..]).collect()
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 128, ..ProptestConfig::default() })]

    #[test]
    fn replay_rebuilds_the_node(
        shards in 2u16..=3,
        ops in prop::collection::vec(op(false), 1..150),
        snapshot_at in prop::collection::vec(any::<prop::sample::Index>(), 3),
    ) {
        let mut original = Node::new(shards);
        let snapshot_at: Vec<usize> = snapshot_at[..shards as usize].iter().map(|at| at.index(ops.len() + 1)).collect();
        let mut snapshots = vec![None; shards as usize];
        let applied = run(&mut original, &ops, &snapshot_at, &mut snapshots);
        let lsns: Vec<u64> = original.shards.iter().map(Shard::lsn).collect();

        // From the full logs.
        let none = vec![None; shards as usize];
        let (mut recovered, replayed_lsns) = recover(shards, &entries(&original), &none, original.now_ms);
        prop_assert_eq!(&replayed_lsns, &lsns);
        // From a snapshot of each shard at its own random point plus the rest of its log. With
        // full logs every dependency of a snapshot holds.
        let bases: Vec<Option<&[u8]>> = snapshots.iter().map(|s| s.as_ref().map(|(bytes, _)| &bytes[..])).collect();
        let (mut from_snapshots, snapshot_lsns) = recover(shards, &entries(&original), &bases, original.now_ms);
        prop_assert_eq!(&snapshot_lsns, &lsns);

        // Retries change the nodes they run on, so the snapshot path is compared with a twin of
        // the original (runs are deterministic).
        let mut twin = Node::new(shards);
        run(&mut twin, &ops, &[], &mut []);
        assert_same(&mut twin, &mut from_snapshots, &applied);
        assert_same(&mut original, &mut recovered, &applied);
    }

    #[test]
    fn a_crash_keeps_every_durable_increment_and_invents_none(
        shards in 2u16..=3,
        ops in prop::collection::vec(op(true), 1..150),
        more in prop::collection::vec(op(true), 0..80),
        snapshot_at in prop::collection::vec(any::<prop::sample::Index>(), 3),
        cuts in prop::collection::vec(any::<prop::sample::Index>(), 9),
    ) {
        let mut original = Node::new(shards);
        let n = shards as usize;
        let snapshot_at: Vec<usize> = snapshot_at[..n].iter().map(|at| at.index(ops.len() + 1)).collect();
        let mut snapshots = vec![None; n];
        let applied = run(&mut original, &ops, &snapshot_at, &mut snapshots);

        // Crash 1: each shard's log is durable up to its own cut.
        let logs = entries(&original);
        let prefixes: Vec<&[Entry]> = logs.iter().zip(&cuts[..n]).map(|(log, cut)| &log[..cut.index(log.len() + 1)]).collect();
        let bases = usable_snapshots(&prefixes, &snapshots);
        let (mut node, _) = recover(shards, &prefixes, &bases, original.now_ms);
        check_bounds(&mut node, &prefixes, &applied.increments, &BTreeMap::new())?;

        // The recovered node serves more ops (taking snapshots again), then crashes again. Its logs
        // are the durable prefixes, the reconcile's records and the new records; the reconcile's
        // records need not be durable before serving, so the second cut may fall before them.
        let floor: Vec<usize> = prefixes.iter().map(|p| p.len()).collect();
        for (log, prefix) in node.logs.iter_mut().zip(&prefixes) {
            let mut all = prefix.to_vec();
            all.append(&mut log.entries);
            log.entries = all;
        }
        let snapshot_at: Vec<usize> = cuts[2 * n..3 * n].iter().map(|at| at.index(more.len() + 1)).collect();
        let mut snapshots = vec![None; n];
        let applied_more = run(&mut node, &more, &snapshot_at, &mut snapshots);
        let logs = entries(&node);
        let prefixes: Vec<&[Entry]> = logs
            .iter()
            .zip(&cuts[n..2 * n])
            .zip(&floor)
            .map(|((log, cut), &floor)| &log[..floor + cut.index(log.len() - floor + 1)])
            .collect();
        let bases = usable_snapshots(&prefixes, &snapshots);
        let (mut again, _) = recover(shards, &prefixes, &bases, node.now_ms);
        check_bounds(&mut again, &prefixes, &applied.increments, &applied_more.increments)?;
    }
}

/// The snapshots recovery may start from: a shard's snapshot if its lsn is within the shard's
/// durable prefix and every log it depends on is durable far enough.
fn usable_snapshots<'a>(
    prefixes: &[&[Entry]],
    snapshots: &'a [Option<(Vec<u8>, SnapshotDeps)>],
) -> Vec<Option<&'a [u8]>> {
    let durable: Vec<u64> = prefixes.iter().map(|p| p.last().map_or(0, |e| e.lsn)).collect();
    snapshots
        .iter()
        .enumerate()
        .map(|(id, snapshot)| {
            let (bytes, deps) = snapshot.as_ref()?;
            let usable = deps.lsn <= durable[id]
                && deps
                    .durable_lsn_required
                    .iter()
                    .all(|&(s, lsn)| durable[s as usize] >= lsn);
            usable.then_some(&bytes[..])
        })
        .collect()
}

/// For every growing name: durable increments <= recovered value <= applied increments.
fn check_bounds(
    node: &mut Node,
    prefixes: &[&[Entry]],
    applied: &BTreeMap<usize, i64>,
    applied_more: &BTreeMap<usize, i64>,
) -> Result<(), TestCaseError> {
    for (index, name) in NAMES.iter().enumerate().take(GROWING) {
        let durable: i64 = prefixes
            .iter()
            .flat_map(|p| p.iter())
            .map(|entry| entry.increment_of(name.as_bytes()))
            .sum();
        let attempted = applied.get(&index).copied().unwrap_or(0) + applied_more.get(&index).copied().unwrap_or(0);
        let (value, _) = node.value(name.as_bytes());
        prop_assert!(durable <= value, "{name}: recovered {value} < durable {durable}");
        prop_assert!(value <= attempted, "{name}: recovered {value} > attempted {attempted}");
    }
    Ok(())
}
