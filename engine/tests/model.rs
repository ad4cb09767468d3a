//! Model test: 2-4 shards sharing one `SplitRegistry`, driven by random op sequences through a
//! router (Forward -> apply at the owner), compared op by op with a reference model that keeps
//! every counter in a `BTreeMap` with its kind, bounds, exact value, split parts and the dedup set.
//!
//! The hot settings make splitting and merging happen all the time: every increment is sampled,
//! one increment between ticks is "hot" (split rate 1/s with ticks at most 400 ms apart), a tick
//! without increments is "cool" (merge rate 1/s), and one name is forced hot. With sampling at 1
//! and fewer names than sketch slots, the sketch counts exactly, so the model predicts every split
//! and merge; the test checks each reply (value, flags, token), each error code (and the value it
//! carries), each shard's lsn, the split set, and a GET of every name after every op.

use std::collections::BTreeMap;
use std::sync::Arc;

use proptest::prelude::*;
use tally_engine::limits::{SPLIT_ELIGIBLE_ABS_MAX, SPLIT_SLOT_ABS_MAX, SPLIT_VALUE_ABS_MAX};
use tally_engine::{Applied, Ctx, HotConfig, NamespaceRule, NullLog, Shard, ShardConfig, SplitRegistry};
use tally_proto::reply::{REPLY_APPROX, REPLY_DUPLICATE, REPLY_EXISTS, REPLY_SPLIT, REPLY_STRICT};
use tally_proto::{shard_of, CounterKind, ErrorCode, Reply, Request, Token};

const NAMES: [&str; 7] = ["a", "b", "c", "f", "s:x", "s:y", "u:z"];
const FORCED: &str = "f";
const STRICT_BOUNDS: (i64, i64) = (-1000, 1000);
const FULL: (i64, i64) = (i64::MIN, i64::MAX);
const DEDUP_WINDOW_MS: u64 = 500;
const SPLIT_RATE: u64 = 1;
const MERGE_RATE: u64 = 1;
const TICK_MS_MAX: u64 = 400;

/// A failure as the model sees it: the code and the value it carries.
type Refusal = (ErrorCode, Option<i64>);
type Expect = Result<Reply, Refusal>;

#[derive(Debug, Clone)]
enum Op {
    Incr {
        name: usize,
        delta: i64,
        key: Option<u8>,
        entry: u16,
    },
    Get {
        name: usize,
        fresh: bool,
        token_shard: Option<u16>,
        entry: u16,
    },
    Create {
        name: usize,
        strict: bool,
        initial: i64,
        min: Option<i64>,
        max: Option<i64>,
        entry: u16,
    },
    Cas {
        name: usize,
        expected: i64,
        new: i64,
        entry: u16,
    },
    AddBounded {
        name: usize,
        delta: i64,
        min: i64,
        max: i64,
        key: Option<u8>,
        entry: u16,
    },
    Reset {
        name: usize,
        value: i64,
        entry: u16,
    },
    Tick {
        dt: u64,
    },
    /// A client retry: the harness replays an earlier keyed op (picked by `pick`) from `entry`.
    Retry {
        pick: usize,
        entry: u16,
    },
}

fn edge() -> impl Strategy<Value = i64> {
    prop_oneof![
        Just(i64::MAX),
        Just(i64::MIN),
        Just(i64::MAX - 1),
        Just(i64::MIN + 1),
        Just(1i64 << 61),
        Just(-(1i64 << 61)),
        Just((1i64 << 61) + 1),
        Just(1i64 << 62),
        Just(-(1i64 << 62)),
        Just(SPLIT_SLOT_ABS_MAX),
        Just(-SPLIT_SLOT_ABS_MAX),
        Just(SPLIT_SLOT_ABS_MAX + 1),
        Just(1000i64),
        Just(-1001i64),
    ]
}

fn number() -> impl Strategy<Value = i64> {
    prop_oneof![8 => -6i64..=6, 2 => edge()]
}

fn bound() -> impl Strategy<Value = Option<i64>> {
    prop_oneof![2 => Just(None), 1 => (-10i64..=10).prop_map(Some), 1 => Just(Some(-1000)), 1 => Just(Some(1000))]
}

fn key() -> impl Strategy<Value = Option<u8>> {
    prop_oneof![2 => Just(None), 1 => (0u8..4).prop_map(Some)]
}

fn op() -> impl Strategy<Value = Op> {
    let name = 0..NAMES.len();
    let entry = 0u16..4;
    prop_oneof![
        8 => (name.clone(), number(), key(), entry.clone())
            .prop_map(|(name, delta, key, entry)| Op::Incr { name, delta, key, entry }),
        1 => (name.clone(), any::<bool>(), prop::option::of(0u16..5), entry.clone())
            .prop_map(|(name, fresh, token_shard, entry)| Op::Get { name, fresh, token_shard, entry }),
        2 => (name.clone(), any::<bool>(), number(), bound(), bound(), entry.clone()).prop_map(
            |(name, strict, initial, min, max, entry)| Op::Create { name, strict, initial, min, max, entry }
        ),
        2 => (name.clone(), number(), number(), entry.clone())
            .prop_map(|(name, expected, new, entry)| Op::Cas { name, expected, new, entry }),
        3 => (name.clone(), number(), -20i64..=20, -20i64..=20, key(), entry.clone()).prop_map(
            |(name, delta, min, span, key, entry)| {
                // Mostly valid ranges, sometimes min > max, sometimes unbounded.
                let (min, max) = match span {
                    -20..=-15 => (min, min - 1),
                    15..=20 => (i64::MIN, i64::MAX),
                    _ => (min.min(min + span), min.max(min + span)),
                };
                Op::AddBounded { name, delta, min, max, key, entry }
            }
        ),
        1 => (name, number(), entry).prop_map(|(name, value, entry)| Op::Reset { name, value, entry }),
        4 => (1u64..=TICK_MS_MAX).prop_map(|dt| Op::Tick { dt }),
        2 => (any::<usize>(), 0u16..4).prop_map(|(pick, entry)| Op::Retry { pick, entry }),
    ]
}

// ---- the reference model ----

#[derive(Debug, Clone)]
struct ModelSplit {
    own: i64,
    slots: Vec<i64>,
    published: i64,
    at_publish: Vec<i64>,
    incrs: u64,
    cool_ticks: u32,
}

#[derive(Debug, Clone)]
struct ModelCounter {
    strict: bool,
    bounds: (i64, i64),
    /// The exact value (for a split counter: own part plus slots).
    value: i64,
    forced: bool,
    split: Option<ModelSplit>,
    /// Owner increments of a plain analytic counter since the last tick (the sketch's count).
    samples: u64,
}

#[derive(Debug, Clone)]
struct ModelKey {
    name: usize,
    delta: i64,
    value: i64,
    lsn: u64,
    time_ms: u64,
}

struct Model {
    shards: u16,
    merge_after: u32,
    counters: BTreeMap<&'static str, ModelCounter>,
    /// One dedup set per shard, as the engine keeps them.
    dedup: Vec<BTreeMap<u128, ModelKey>>,
    lsn: Vec<u64>,
    now_ms: u64,
    tick_last_ms: Option<u64>,
}

fn within(bounds: (i64, i64), value: i64) -> bool {
    bounds.0 <= value && value <= bounds.1
}

fn namespace(name: &str) -> Option<(i64, i64)> {
    if name.starts_with("s:") {
        Some(STRICT_BOUNDS)
    } else if name.starts_with("u:") {
        Some(FULL)
    } else {
        None
    }
}

enum DedupSays {
    Fresh,
    Duplicate(i64, u64),
    Conflict,
}

impl Model {
    fn owner(&self, name: usize) -> u16 {
        shard_of(NAMES[name].as_bytes(), self.shards)
    }

    fn token(&self, shard: u16) -> Token {
        Token {
            shard,
            lsn: self.lsn[shard as usize],
        }
    }

    fn eligible(counter: &ModelCounter) -> bool {
        !counter.strict && counter.split.is_none() && counter.value.unsigned_abs() <= SPLIT_ELIGIBLE_ABS_MAX
    }

    fn split(shards: u16, counter: &mut ModelCounter) {
        assert!(Model::eligible(counter));
        counter.split = Some(ModelSplit {
            own: counter.value,
            slots: vec![0; shards as usize],
            published: counter.value,
            at_publish: vec![0; shards as usize],
            incrs: 0,
            cool_ticks: 0,
        });
    }

    fn flags(counter: &ModelCounter) -> u8 {
        let mut flags = 0;
        if counter.strict {
            flags |= REPLY_STRICT;
        }
        if counter.split.is_some() {
            flags |= REPLY_SPLIT;
        }
        flags
    }

    /// Creates a counter (a forced name is split by `split_if_forced` once the creating op took
    /// its lsn).
    fn create(&mut self, name: usize, strict: bool, bounds: (i64, i64), value: i64) {
        let counter = ModelCounter {
            strict,
            bounds,
            value,
            forced: !strict && NAMES[name] == FORCED,
            split: None,
            samples: 0,
        };
        self.counters.insert(NAMES[name], counter);
    }

    /// Splits a forced, eligible counter right after the op that created or reset it; the split
    /// takes the owner's next lsn. Returns whether it split.
    fn split_if_forced(&mut self, name: usize) -> bool {
        let owner = self.owner(name);
        let shards = self.shards;
        let counter = self.counters.get_mut(NAMES[name]).expect("the op just wrote it");
        if !(counter.forced && Model::eligible(counter)) {
            return false;
        }
        Model::split(shards, counter);
        self.lsn[owner as usize] += 1;
        true
    }

    fn dedup_check(&self, shard: u16, key: u8, name: usize, delta: i64) -> DedupSays {
        match self.dedup[shard as usize].get(&(u128::from(key) * 0x1_0000_0001)) {
            Some(record) if record.time_ms + DEDUP_WINDOW_MS > self.now_ms => {
                if record.name == name && record.delta == delta {
                    DedupSays::Duplicate(record.value, record.lsn)
                } else {
                    DedupSays::Conflict
                }
            }
            _ => DedupSays::Fresh,
        }
    }

    fn dedup_record(&mut self, shard: u16, key: u8, name: usize, delta: i64, value: i64) {
        let record = ModelKey {
            name,
            delta,
            value,
            lsn: self.lsn[shard as usize],
            time_ms: self.now_ms,
        };
        self.dedup[shard as usize].insert(u128::from(key) * 0x1_0000_0001, record);
    }

    /// Returns the shard expected to answer and its answer.
    fn apply(&mut self, op: &Op) -> (u16, Expect) {
        match *op {
            Op::Incr {
                name,
                delta,
                key,
                entry,
            } => self.incr(name, delta, key, entry % self.shards),
            Op::Get { name, token_shard, .. } => {
                let owner = self.owner(name);
                if token_shard.is_some_and(|shard| shard >= self.shards) {
                    return (owner, Err((ErrorCode::InvalidArgument, None)));
                }
                let reply = match self.counters.get(NAMES[name]) {
                    None => Reply::Get { value: 0, flags: 0 },
                    Some(c) => Reply::Get {
                        value: c.value,
                        flags: REPLY_EXISTS | Model::flags(c),
                    },
                };
                (owner, Ok(reply))
            }
            Op::Create {
                name,
                strict,
                initial,
                min,
                max,
                ..
            } => (self.owner(name), self.create_op(name, strict, initial, min, max)),
            Op::Cas {
                name, expected, new, ..
            } => (self.owner(name), self.cas(name, expected, new)),
            Op::AddBounded {
                name,
                delta,
                min,
                max,
                key,
                ..
            } => (self.owner(name), self.add_bounded(name, delta, min, max, key)),
            Op::Reset { name, value, .. } => (self.owner(name), self.reset(name, value)),
            Op::Tick { .. } | Op::Retry { .. } => unreachable!("the harness resolves ticks and retries"),
        }
    }

    fn incr(&mut self, name: usize, delta: i64, key: Option<u8>, entry: u16) -> (u16, Expect) {
        let owner = self.owner(name);
        if key.is_none() && entry != owner {
            if let Some(counter) = self.counters.get_mut(NAMES[name]) {
                if let Some(split) = counter.split.as_mut() {
                    let slot = split.slots[entry as usize].checked_add(delta);
                    if let Some(slot) = slot.filter(|slot| slot.unsigned_abs() <= SPLIT_SLOT_ABS_MAX as u64) {
                        split.slots[entry as usize] = slot;
                        split.incrs += 1;
                        counter.value = counter.value.checked_add(delta).expect("split ranges fit an i64");
                        let estimate = split
                            .published
                            .saturating_add(slot.saturating_sub(split.at_publish[entry as usize]));
                        self.lsn[entry as usize] += 1;
                        let reply = Reply::Incr {
                            value: estimate,
                            flags: REPLY_SPLIT | REPLY_APPROX,
                            token: self.token(entry),
                        };
                        return (entry, Ok(reply));
                    }
                }
            }
        }
        if let Some(key) = key {
            match self.dedup_check(owner, key, name, delta) {
                DedupSays::Fresh => {}
                DedupSays::Duplicate(value, lsn) => {
                    let split = self.counters.get(NAMES[name]).is_some_and(|c| c.split.is_some());
                    let flags = REPLY_DUPLICATE | if split { REPLY_SPLIT } else { 0 };
                    return (
                        owner,
                        Ok(Reply::Incr {
                            value,
                            flags,
                            token: Token { shard: owner, lsn },
                        }),
                    );
                }
                DedupSays::Conflict => return (owner, Err((ErrorCode::IdempotencyConflict, None))),
            }
        }
        let mut created = false;
        let result = match self.counters.get_mut(NAMES[name]) {
            None => {
                let (strict, bounds) = match namespace(NAMES[name]) {
                    Some(bounds) => (true, bounds),
                    None => (false, FULL),
                };
                if !within(bounds, delta) {
                    Err((ErrorCode::BoundViolation, Some(0)))
                } else {
                    self.create(name, strict, bounds, delta);
                    let counter = self.counters.get_mut(NAMES[name]).expect("just created");
                    if !counter.strict && !counter.forced {
                        counter.samples += 1;
                    }
                    created = true;
                    Ok((delta, 0))
                }
            }
            Some(c) if c.strict => match c.value.checked_add(delta) {
                None => Err((ErrorCode::Overflow, None)),
                Some(next) if !within(c.bounds, next) => Err((ErrorCode::BoundViolation, Some(c.value))),
                Some(next) => {
                    c.value = next;
                    Ok((next, 0))
                }
            },
            Some(c) if c.split.is_some() => {
                let split = c.split.as_mut().expect("checked");
                match split.own.checked_add(delta) {
                    Some(own) if own.unsigned_abs() <= SPLIT_VALUE_ABS_MAX as u64 => {
                        split.own = own;
                        split.incrs += 1;
                        c.value = c.value.checked_add(delta).expect("split ranges fit an i64");
                        Ok((c.value, REPLY_SPLIT))
                    }
                    _ => Err((ErrorCode::Overflow, None)),
                }
            }
            Some(c) => match c.value.checked_add(delta) {
                None => Err((ErrorCode::Overflow, None)),
                Some(next) => {
                    c.value = next;
                    if !c.forced {
                        c.samples += 1;
                    }
                    Ok((next, 0))
                }
            },
        };
        match result {
            Err(error) => (owner, Err(error)),
            Ok((value, flags)) => {
                self.lsn[owner as usize] += 1;
                if let Some(key) = key {
                    self.dedup_record(owner, key, name, delta, value);
                }
                let token = self.token(owner);
                let split = created && self.split_if_forced(name);
                (
                    owner,
                    Ok(Reply::Incr {
                        value,
                        flags: if split { flags | REPLY_SPLIT } else { flags },
                        token,
                    }),
                )
            }
        }
    }

    fn create_op(&mut self, name: usize, strict: bool, initial: i64, min: Option<i64>, max: Option<i64>) -> Expect {
        let bounds = if strict {
            let bounds = (min.unwrap_or(i64::MIN), max.unwrap_or(i64::MAX));
            if bounds.0 > bounds.1 || !within(bounds, initial) {
                return Err((ErrorCode::InvalidArgument, None));
            }
            bounds
        } else {
            if min.is_some() || max.is_some() {
                return Err((ErrorCode::InvalidArgument, None));
            }
            FULL
        };
        if let Some(c) = self.counters.get(NAMES[name]) {
            if c.strict != strict || c.bounds != bounds {
                return Err((ErrorCode::AlreadyExists, None));
            }
            return Ok(Reply::Create {
                created: false,
                value: c.value,
                flags: Model::flags(c),
            });
        }
        self.create(name, strict, bounds, initial);
        let owner = self.owner(name);
        self.lsn[owner as usize] += 1;
        self.split_if_forced(name);
        let flags = Model::flags(&self.counters[NAMES[name]]);
        Ok(Reply::Create {
            created: true,
            value: initial,
            flags,
        })
    }

    /// The strict counter a CAS or bounded add works on: (value, bounds, exists).
    fn strict_target(&self, name: usize) -> Result<(i64, (i64, i64), bool), Refusal> {
        match self.counters.get(NAMES[name]) {
            Some(c) if !c.strict => Err((ErrorCode::WrongKind, None)),
            Some(c) => Ok((c.value, c.bounds, true)),
            None => match namespace(NAMES[name]) {
                Some(bounds) => Ok((0, bounds, false)),
                None => Err((ErrorCode::NotFound, None)),
            },
        }
    }

    fn set_strict(&mut self, name: usize, value: i64, bounds: (i64, i64), exists: bool) {
        if exists {
            self.counters.get_mut(NAMES[name]).expect("exists").value = value;
        } else {
            self.create(name, true, bounds, value);
        }
        let owner = self.owner(name);
        self.lsn[owner as usize] += 1;
    }

    fn cas(&mut self, name: usize, expected: i64, new: i64) -> Expect {
        let (current, bounds, exists) = self.strict_target(name)?;
        if !within(bounds, new) {
            return Err((ErrorCode::BoundViolation, Some(current)));
        }
        if current != expected {
            return Err((ErrorCode::CasMismatch, Some(current)));
        }
        self.set_strict(name, new, bounds, exists);
        Ok(Reply::Cas {
            value: new,
            token: self.token(self.owner(name)),
        })
    }

    fn add_bounded(&mut self, name: usize, delta: i64, min: i64, max: i64, key: Option<u8>) -> Expect {
        if min > max {
            return Err((ErrorCode::InvalidArgument, None));
        }
        let owner = self.owner(name);
        if let Some(key) = key {
            match self.dedup_check(owner, key, name, delta) {
                DedupSays::Fresh => {}
                DedupSays::Duplicate(value, lsn) => {
                    return Ok(Reply::AddBounded {
                        value,
                        // Only strict counters take ADD_BOUNDED: every success says so.
                        flags: REPLY_DUPLICATE | REPLY_STRICT,
                        token: Token { shard: owner, lsn },
                    });
                }
                DedupSays::Conflict => return Err((ErrorCode::IdempotencyConflict, None)),
            }
        }
        let (current, declared, exists) = self.strict_target(name)?;
        let bounds = (min.max(declared.0), max.min(declared.1));
        let next = match current.checked_add(delta) {
            Some(next) if within(bounds, next) => next,
            _ => return Err((ErrorCode::BoundViolation, Some(current))),
        };
        self.set_strict(name, next, declared, exists);
        if let Some(key) = key {
            self.dedup_record(owner, key, name, delta, next);
        }
        Ok(Reply::AddBounded {
            value: next,
            flags: REPLY_STRICT,
            token: self.token(owner),
        })
    }

    fn reset(&mut self, name: usize, value: i64) -> Expect {
        let owner = self.owner(name);
        let Some(c) = self.counters.get_mut(NAMES[name]) else {
            return Err((ErrorCode::NotFound, None));
        };
        if c.strict && !within(c.bounds, value) {
            return Err((ErrorCode::BoundViolation, Some(c.value)));
        }
        if c.split.take().is_some() {
            // The merge takes its own lsn.
            self.lsn[owner as usize] += 1;
        }
        let old = c.value;
        c.value = value;
        self.lsn[owner as usize] += 1;
        let token = self.token(owner);
        self.split_if_forced(name);
        Ok(Reply::Reset { old, new: value, token })
    }

    fn tick(&mut self, dt: u64) {
        self.now_ms += dt;
        let elapsed_ms = self.tick_last_ms.map(|last| self.now_ms - last);
        self.tick_last_ms = Some(self.now_ms);
        let shards = self.shards;
        for (name, c) in self.counters.iter_mut() {
            let owner = shard_of(name.as_bytes(), shards) as usize;
            if let Some(split) = c.split.as_mut() {
                split.published = c.value;
                split.at_publish = split.slots.clone();
                let incrs = std::mem::take(&mut split.incrs);
                if let Some(elapsed_ms) = elapsed_ms {
                    if !c.forced {
                        if incrs * 1000 / elapsed_ms < MERGE_RATE {
                            split.cool_ticks += 1;
                        } else {
                            split.cool_ticks = 0;
                        }
                        if split.cool_ticks >= self.merge_after {
                            c.split = None;
                            self.lsn[owner] += 1;
                        }
                    }
                }
            }
        }
        // Every split takes its owner's next lsn.
        for (name, c) in self.counters.iter_mut() {
            let owner = shard_of(name.as_bytes(), shards) as usize;
            let samples = std::mem::take(&mut c.samples);
            if let Some(elapsed_ms) = elapsed_ms {
                if samples > 0 && samples * 1000 / elapsed_ms >= SPLIT_RATE && Model::eligible(c) {
                    Model::split(shards, c);
                    self.lsn[owner] += 1;
                }
            }
            if c.forced && Model::eligible(c) {
                Model::split(shards, c);
                self.lsn[owner] += 1;
            }
        }
    }

    fn split_names(&self) -> Vec<Vec<u8>> {
        self.counters
            .iter()
            .filter(|(_, c)| c.split.is_some())
            .map(|(name, _)| name.as_bytes().to_vec())
            .collect()
    }
}

// ---- the harness ----

struct Node {
    shards: Vec<Shard>,
}

impl Node {
    fn new(shards: u16, merge_after: u32) -> Node {
        let registry = Arc::new(SplitRegistry::new(shards));
        let shards = (0..shards)
            .map(|id| {
                let mut config = ShardConfig::new(id, shards);
                config.hot = HotConfig {
                    enabled: true,
                    split_rate_per_sec: SPLIT_RATE,
                    merge_rate_per_sec: MERGE_RATE,
                    tick_ms: 100,
                    merge_after_ticks: merge_after,
                    forced: vec![FORCED.as_bytes().to_vec()],
                    sample_every: 1,
                };
                config.namespaces = vec![
                    NamespaceRule {
                        prefix: b"s:".to_vec(),
                        kind: CounterKind::Strict,
                        min: Some(STRICT_BOUNDS.0),
                        max: Some(STRICT_BOUNDS.1),
                    },
                    NamespaceRule {
                        prefix: b"u:".to_vec(),
                        kind: CounterKind::Strict,
                        min: None,
                        max: None,
                    },
                ];
                config.dedup_window_ms = DEDUP_WINDOW_MS;
                Shard::new(config, registry.clone())
            })
            .collect();
        Node { shards }
    }

    /// Applies `request` at `entry`, following one forward; returns who answered and the answer.
    fn route(&mut self, request: &Request<'_>, entry: u16, now_ms: u64) -> (u16, Expect) {
        let ctx = Ctx {
            now_ms,
            client: b"model",
        };
        let owner = shard_of(request.name().expect("named op"), self.shards.len() as u16);
        let (shard, applied) = match self.shards[entry as usize].apply(request, &ctx, &mut NullLog) {
            Applied::Forward(to) => {
                assert_eq!(to, owner, "forwards go to the owner");
                assert_ne!(entry, owner, "an owner never forwards its own names");
                (to, self.shards[to as usize].apply(request, &ctx, &mut NullLog))
            }
            done => (entry, done),
        };
        match applied {
            Applied::Done(outcome) => (shard, outcome.map_err(|failure| (failure.code, failure.current))),
            Applied::Forward(to) => panic!("the owner {shard} forwarded to {to}"),
        }
    }

    fn split_names(&self) -> Vec<Vec<u8>> {
        let mut names: Vec<Vec<u8>> = self.shards.iter().flat_map(|shard| shard.split_names()).collect();
        names.sort();
        names
    }
}

fn request(op: &Op) -> (Request<'static>, u16) {
    let key = |key: Option<u8>| key.map(|key| u128::from(key) * 0x1_0000_0001);
    match *op {
        Op::Incr {
            name,
            delta,
            key: k,
            entry,
        } => (
            Request::Incr {
                name: NAMES[name].as_bytes(),
                delta,
                key: key(k),
            },
            entry,
        ),
        Op::Get {
            name,
            fresh,
            token_shard,
            entry,
        } => (
            Request::Get {
                name: NAMES[name].as_bytes(),
                fresh,
                token: token_shard.map(|shard| Token { shard, lsn: 0 }),
            },
            entry,
        ),
        Op::Create {
            name,
            strict,
            initial,
            min,
            max,
            entry,
        } => (
            Request::Create {
                name: NAMES[name].as_bytes(),
                kind: if strict {
                    CounterKind::Strict
                } else {
                    CounterKind::Analytic
                },
                initial,
                min,
                max,
            },
            entry,
        ),
        Op::Cas {
            name,
            expected,
            new,
            entry,
        } => (
            Request::Cas {
                name: NAMES[name].as_bytes(),
                expected,
                new,
            },
            entry,
        ),
        Op::AddBounded {
            name,
            delta,
            min,
            max,
            key: k,
            entry,
        } => (
            Request::AddBounded {
                name: NAMES[name].as_bytes(),
                delta,
                min,
                max,
                key: key(k),
            },
            entry,
        ),
        Op::Reset { name, value, entry } => (
            Request::Reset {
                name: NAMES[name].as_bytes(),
                value,
                reason: b"model",
            },
            entry,
        ),
        Op::Tick { .. } | Op::Retry { .. } => unreachable!("the harness resolves ticks and retries"),
    }
}

fn check_everything(node: &mut Node, model: &Model, step: usize) {
    let lsns: Vec<u64> = node.shards.iter().map(|shard| shard.lsn()).collect();
    assert_eq!(lsns, model.lsn, "lsns after step {step}");
    assert_eq!(
        node.split_names(),
        model.split_names(),
        "split counters after step {step}"
    );
    for (index, name) in NAMES.iter().enumerate() {
        let get = Request::Get {
            name: name.as_bytes(),
            fresh: index % 2 == 0,
            token: None,
        };
        let (_, actual) = node.route(&get, 0, model.now_ms);
        let expected = match model.counters.get(name) {
            None => Reply::Get { value: 0, flags: 0 },
            Some(c) => Reply::Get {
                value: c.value,
                flags: REPLY_EXISTS | Model::flags(c),
            },
        };
        assert_eq!(actual, Ok(expected), "GET {name} after step {step}");
    }
}

fn run(shards: u16, merge_after: u32, ops: &[Op]) -> Node {
    let mut node = Node::new(shards, merge_after);
    let mut model = Model {
        shards,
        merge_after,
        counters: BTreeMap::new(),
        dedup: vec![BTreeMap::new(); shards as usize],
        lsn: vec![0; shards as usize],
        now_ms: 1_000_000,
        tick_last_ms: None,
    };
    let mut keyed: Vec<Op> = Vec::new();
    for (step, op) in ops.iter().enumerate() {
        let retried;
        let op = match *op {
            Op::Retry { pick, entry } if !keyed.is_empty() => {
                retried = match keyed[pick % keyed.len()].clone() {
                    Op::Incr { name, delta, key, .. } => Op::Incr {
                        name,
                        delta,
                        key,
                        entry,
                    },
                    Op::AddBounded {
                        name,
                        delta,
                        min,
                        max,
                        key,
                        ..
                    } => Op::AddBounded {
                        name,
                        delta,
                        min,
                        max,
                        key,
                        entry,
                    },
                    other => unreachable!("only keyed writes are kept: {other:?}"),
                };
                &retried
            }
            Op::Retry { .. } => continue,
            Op::Incr { key: Some(_), .. } | Op::AddBounded { key: Some(_), .. } => {
                keyed.push(op.clone());
                op
            }
            _ => op,
        };
        if let Op::Tick { dt } = *op {
            model.tick(dt);
            for shard in &mut node.shards {
                shard.tick(model.now_ms, &mut NullLog);
            }
        } else {
            let (req, entry) = request(op);
            let (actual_shard, actual) = node.route(&req, entry % shards, model.now_ms);
            let (expected_shard, expected) = model.apply(op);
            assert_eq!(actual, expected, "step {step}: {op:?}");
            assert_eq!(
                actual_shard, expected_shard,
                "step {step}: {op:?} answered by another shard"
            );
        }
        check_everything(&mut node, &model, step);
    }
    node
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    #[test]
    fn shards_match_the_model(shards in 2u16..=4, merge_after in 1u32..=2, ops in prop::collection::vec(op(), 1..120)) {
        run(shards, merge_after, &ops);
    }
}

/// A fixed scenario that must exercise a split, slot increments, a merge and a re-split, so the
/// random test's coverage of those paths does not rest on luck alone.
#[test]
fn split_merge_scenario_matches_the_model() {
    let mut ops = vec![Op::Tick { dt: 100 }];
    for entry in 0..4 {
        ops.push(Op::Incr {
            name: 0,
            delta: 1,
            key: None,
            entry,
        });
    }
    ops.push(Op::Tick { dt: 100 });
    for entry in 0..4 {
        ops.push(Op::Incr {
            name: 0,
            delta: 2,
            key: None,
            entry,
        });
        ops.push(Op::Incr {
            name: 0,
            delta: 3,
            key: Some(1),
            entry,
        });
    }
    ops.push(Op::Incr {
        name: 3,
        delta: 5,
        key: None,
        entry: 1,
    });
    ops.push(Op::Incr {
        name: 3,
        delta: 5,
        key: None,
        entry: 0,
    });
    ops.extend([Op::Tick { dt: 100 }, Op::Tick { dt: 100 }, Op::Tick { dt: 100 }]);
    ops.push(Op::Reset {
        name: 3,
        value: 1 << 62,
        entry: 0,
    });
    ops.push(Op::Tick { dt: 100 });
    ops.push(Op::Reset {
        name: 3,
        value: 4,
        entry: 0,
    });
    let node = run(2, 2, &ops);
    let stats: Vec<_> = node.shards.iter().map(|shard| shard.stats()).collect();
    assert!(stats.iter().map(|s| s.splits).sum::<u64>() >= 3, "{stats:?}");
    assert!(stats.iter().map(|s| s.merges).sum::<u64>() >= 2, "{stats:?}");
    assert!(stats.iter().map(|s| s.split_slot_incrs).sum::<u64>() >= 2, "{stats:?}");
    assert!(stats.iter().map(|s| s.ops_duplicate).sum::<u64>() >= 3, "{stats:?}");
}
