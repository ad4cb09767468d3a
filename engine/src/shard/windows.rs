//! The shard's side of time windows (the `window` module): every increment a shard applies or
//! replays (INCR and bounded adds at the owner, slot increments of split counters on any shard) is
//! recorded in its `WindowStore` under the counter's name; these methods hand the closed seconds
//! out for disk, take the runtime's word that they are durable, and answer this shard's part of a
//! window query.

use super::{Key, Shard};
use crate::table::FLAG_SPLIT;
use crate::window::{plan, NameRef, Partial, Query, SealedSlice, WindowError, WindowPart};

impl Shard {
    /// Hands out every closed second of window buckets not handed out before, oldest first, for
    /// the runtime to write to window files (`window::encode_slices`). Closes the open second
    /// first if `now_ms` is past it. Call it about once a second; it allocates the returned values
    /// (names copied from the arena), nothing else. After a restart it hands out again only what
    /// the runtime had not confirmed durable (`windows_set_durable`).
    pub fn windows_take_sealed(&mut self, now_ms: u64) -> Vec<SealedSlice> {
        let table = &self.table;
        self.windows
            .take_sealed(now_ms, |name| table.name_at(name.name_at(), name.name_len()))
    }

    /// Tells the store that every second before `through_ms` is durable in this shard's window
    /// files (after the runtime's fsync of them). Memory then drops those seconds once they are
    /// older than `FINE_MEMORY_SECS`. At recovery call it before replay with the end of the
    /// newest durable window file, so seconds already on disk are not handed out twice.
    pub fn windows_set_durable(&mut self, through_ms: u64) {
        self.windows.set_durable(through_ms);
    }

    /// Whether `name`, owned by this shard, is or was split: other shards' logs and windows may
    /// then hold increments of it (EVENTS and window queries must ask them too). False for a name
    /// this shard does not own or does not know.
    pub fn ever_split(&self, name: &[u8]) -> bool {
        let key = Key::new(name);
        if !self.owns(key) {
            return false;
        }
        self.table.find(key.hash, key.name).is_some_and(|entry| {
            entry.is(FLAG_SPLIT)
                || self.merged_epochs.contains_key(&entry.name_at)
                || self.recovered_open.contains_key(&entry.name_at)
        })
    }

    /// This shard's part of a window query on `name`, at `now_ms` (the node's time for the whole
    /// query: pass the same value to every shard). Checks the query against the name's tiers
    /// (errors are the client's), adds what memory holds, and says which older range the runtime
    /// must read from this shard's window files (`WindowPart::disk`). At the owner, `fan_out`
    /// says the counter is or was split, so every other shard must be asked too and the parts
    /// merged (`Partial::merge`). Never blocks; allocates the partial (8 bytes per point).
    pub fn window_query(&self, name: &[u8], query: &Query, now_ms: u64) -> Result<WindowPart, WindowError> {
        if !self.windows.enabled() {
            return Err(WindowError::Disabled);
        }
        let range = plan(query, self.config.windows.tiers_of(name), now_ms)?;
        let key = Key::new(name);
        let (name_ref, fan_out) = if self.owns(key) {
            match self.table.find(key.hash, key.name) {
                Some(entry) => (Some(NameRef::new(entry.name_at, entry.name_len)), self.ever_split(name)),
                None => (None, false),
            }
        } else {
            let stored = self.table.foreign_find(key.hash, key.name);
            (stored.map(|at| NameRef::new(at, key.name.len() as u8)), false)
        };
        let mut partial = Partial::new(range);
        let disk = self.windows.query(name_ref, range, &mut partial);
        Ok(WindowPart { partial, disk, fan_out })
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;
    use std::sync::Arc;

    use proptest::prelude::*;
    use tally_proto::{shard_of, CounterKind, Request};

    use super::*;
    use crate::config::{NamespaceRule, ShardConfig};
    use crate::log::owned::Recorder;
    use crate::log::NullLog;
    use crate::shard::{Applied, Ctx};
    use crate::split::SplitRegistry;
    use crate::window::tier::{DAY_MS, MINUTE_MS};
    use crate::window::{encode_slices, keep_all, Step, Unit, WindowFile};

    /// 40 days after the epoch: every default tier boundary is in the past.
    const T0: u64 = 40 * DAY_MS;

    fn config(shard: u16, shards: u16) -> ShardConfig {
        let mut config = ShardConfig::new(shard, shards);
        config.namespaces.push(NamespaceRule {
            prefix: b"inv:".to_vec(),
            kind: CounterKind::Strict,
            min: Some(-1_000_000),
            max: Some(1_000_000),
        });
        config
    }

    fn node(shards: u16, forced: &[Vec<u8>]) -> Vec<Shard> {
        let registry = Arc::new(SplitRegistry::new(shards));
        (0..shards)
            .map(|id| {
                let mut config = config(id, shards);
                config.hot.forced = forced.to_vec();
                config.hot.split_rate_per_sec = u64::MAX;
                Shard::new(config, registry.clone())
            })
            .collect()
    }

    fn owned_name(prefix: &str, shard: u16, shards: u16) -> Vec<u8> {
        (0..)
            .map(|i| format!("{prefix}{i}").into_bytes())
            .find(|name| shard_of(name, shards) == shard)
            .expect("some name hashes to every shard")
    }

    /// Applies `op` where the node would: at `first` (a client's shard), forwarded to the owner.
    fn route(shards: &mut [Shard], logs: &mut [Recorder], first: usize, op: &Request<'_>, now_ms: u64) {
        let ctx = Ctx { now_ms, client: b"t" };
        logs[first].now_ms = now_ms;
        match shards[first].apply(op, &ctx, &mut logs[first]) {
            Applied::Done(outcome) => {
                outcome.expect("the op succeeds");
            }
            Applied::Forward(owner) => {
                let owner = owner as usize;
                logs[owner].now_ms = now_ms;
                match shards[owner].apply(op, &ctx, &mut logs[owner]) {
                    Applied::Done(outcome) => {
                        outcome.expect("the op succeeds");
                    }
                    Applied::Forward(_) => panic!("an owner never forwards"),
                }
            }
        }
    }

    /// A window query as the runtime runs it: the owner's part, every other shard's when it says
    /// so, each part's disk range read from that shard's files.
    fn ask(shards: &[Shard], files: &[Vec<Vec<u8>>], name: &[u8], query: &Query, now_ms: u64) -> Vec<i64> {
        let owner = shard_of(name, shards.len() as u16) as usize;
        let part = shards[owner].window_query(name, query, now_ms).expect("a valid query");
        let mut parts = vec![(owner, part.clone())];
        if part.fan_out {
            for (id, shard) in shards.iter().enumerate().filter(|&(id, _)| id != owner) {
                parts.push((id, shard.window_query(name, query, now_ms).expect("a valid query")));
            }
        }
        let mut total = Partial::new(part.partial.range());
        for (id, mut part) in parts {
            if let Some(disk) = part.disk {
                for bytes in &files[id] {
                    let file = WindowFile::open(bytes).expect("our files open");
                    let (from, to) = file.range_ms();
                    if from < disk.to_ms && disk.from_ms < to {
                        file.add_to(name, disk, &mut part.partial).expect("our files read");
                    }
                }
            }
            total.merge(&part.partial);
        }
        total.finish().expect("no overflow")
    }

    #[test]
    fn split_counters_sum_across_shards() {
        let hot = owned_name("hot", 0, 2);
        let mut shards = node(2, std::slice::from_ref(&hot));
        let mut logs = vec![Recorder::default(), Recorder::default()];
        let incr = Request::Incr {
            name: &hot,
            delta: 5,
            key: None,
        };
        route(&mut shards, &mut logs, 0, &incr, T0 + 100);
        // Shard 1 takes it into its slot (no forward) and records it under the name.
        route(&mut shards, &mut logs, 1, &incr, T0 + 1_100);
        route(&mut shards, &mut logs, 1, &incr, T0 + 1_200);
        assert_eq!(shards[1].stats().split_slot_incrs, 2);
        let query = Query::Series {
            from_ms: T0,
            to_ms: T0 + 2_000,
            step: Step::Second,
        };
        let owner = shards[0].window_query(&hot, &query, T0 + 1_500).unwrap();
        assert!(owner.fan_out, "the owner says the counter is split");
        assert!(shards[0].ever_split(&hot));
        assert!(!shards[1].ever_split(&hot), "only the owner knows");
        assert_eq!(owner.partial.finish().unwrap(), vec![5, 0]);
        let files = vec![Vec::new(), Vec::new()];
        assert_eq!(ask(&shards, &files, &hot, &query, T0 + 1_500), vec![5, 10]);
        // Merged back: still asks every shard (their history holds increments of it).
        assert!(shards[0].merge_now(&hot, &mut NullLog));
        assert!(shards[0].window_query(&hot, &query, T0 + 1_500).unwrap().fan_out);
        assert_eq!(ask(&shards, &files, &hot, &query, T0 + 1_500), vec![5, 10]);
        // A counter never split asks its owner only.
        let plain = owned_name("plain", 1, 2);
        route(
            &mut shards,
            &mut logs,
            0,
            &Request::Incr {
                name: &plain,
                delta: 1,
                key: None,
            },
            T0,
        );
        assert!(!shards[1].window_query(&plain, &query, T0).unwrap().fan_out);
    }

    #[test]
    fn only_increments_count() {
        let mut shards = node(1, &[]);
        let mut logs = vec![Recorder::default()];
        let ops = [
            Request::Incr {
                name: b"a",
                delta: 3,
                key: Some(9),
            },
            Request::Incr {
                name: b"a",
                delta: 3,
                key: Some(9),
            }, // a duplicate: not applied
            Request::Create {
                name: b"c",
                kind: CounterKind::Strict,
                initial: 50,
                min: None,
                max: None,
            },
            Request::AddBounded {
                name: b"c",
                delta: -7,
                min: 0,
                max: 100,
                key: None,
            },
            Request::Cas {
                name: b"c",
                expected: 43,
                new: 10,
            },
            Request::Reset {
                name: b"a",
                value: 100,
                reason: b"",
            },
        ];
        for op in &ops {
            route(&mut shards, &mut logs, 0, op, T0 + 10);
        }
        let last = Query::Window {
            last: 1,
            unit: Unit::Minute,
        };
        let sum = |name: &[u8]| {
            shards[0]
                .window_query(name, &last, T0 + 10)
                .unwrap()
                .partial
                .finish()
                .unwrap()
        };
        assert_eq!(sum(b"a"), vec![3]);
        assert_eq!(sum(b"c"), vec![-7]);
        assert_eq!(sum(b"never"), vec![0]);
    }

    #[test]
    fn bad_queries_are_refused_and_disabled_windows_say_so() {
        let shards = node(1, &[]);
        let reversed = Query::Series {
            from_ms: T0 + 5,
            to_ms: T0,
            step: Step::Second,
        };
        assert!(matches!(
            shards[0].window_query(b"a", &reversed, T0),
            Err(WindowError::Reversed { .. })
        ));
        let mut config = config(0, 1);
        config.windows.enabled = false;
        let off = Shard::new(config, Arc::new(SplitRegistry::new(1)));
        let last = Query::Window {
            last: 1,
            unit: Unit::Second,
        };
        assert_eq!(off.window_query(b"a", &last, T0), Err(WindowError::Disabled));
    }

    /// The whole path over 15 simulated minutes: increments in memory, sealed seconds written as
    /// one file per minute, durability confirmed, old seconds leaving memory, and queries answered
    /// from memory plus files equal to a model; then a restart from a snapshot keeps them equal and
    /// hands out only seconds that were not durable.
    #[test]
    fn memory_plus_files_answer_like_the_model_across_a_restart() {
        let mut shards = node(1, &[]);
        let mut logs = vec![Recorder::default()];
        let mut model = BTreeMap::<(u8, u64), i64>::new();
        let mut files: Vec<Vec<Vec<u8>>> = vec![Vec::new()];
        let mut minute_slices = Vec::new();
        let names: [&[u8]; 3] = [b"a", b"b", b"c"];
        let minutes = 15;
        let mut now = T0;
        let mut snapshot = None;
        while now < T0 + minutes * MINUTE_MS {
            let i = (now / 250) as usize;
            let name = i % 3;
            let delta = (i % 7) as i64 - 2;
            route(
                &mut shards,
                &mut logs,
                0,
                &Request::Incr {
                    name: names[name],
                    delta,
                    key: None,
                },
                now,
            );
            *model.entry((name as u8, now / 1_000)).or_default() += delta;
            now += 250 + (i as u64 % 3) * 100;
            shards[0].tick(now, &mut NullLog);
            if now % 1_000 < 350 {
                minute_slices.extend(shards[0].windows_take_sealed(now));
                let sealed_through = shards[0].stats().windows.sealed_through_ms;
                // One file per whole minute handed out; durable once "written".
                let minute_end = sealed_through - sealed_through % MINUTE_MS;
                if minute_end > T0 && files[0].len() < ((minute_end - T0) / MINUTE_MS) as usize {
                    let from = minute_end - MINUTE_MS;
                    let (this, later): (Vec<_>, Vec<_>) = minute_slices
                        .drain(..)
                        .partition(|s: &SealedSlice| s.start_ms < minute_end);
                    minute_slices = later;
                    files[0].push(encode_slices(&this, from, minute_end, &keep_all));
                    shards[0].windows_set_durable(minute_end);
                }
            }
            if snapshot.is_none() && now >= T0 + 11 * MINUTE_MS {
                let mut bytes = Vec::new();
                shards[0].snapshot(&mut bytes);
                snapshot = Some((bytes, shards[0].lsn()));
            }
        }
        assert!(
            shards[0].stats().windows.memory_from_ms > T0 + 5 * MINUTE_MS,
            "old seconds left memory"
        );
        let check = |shards: &[Shard], files: &[Vec<Vec<u8>>]| {
            for (n, name) in names.iter().enumerate() {
                for last in [1u32, 59, 61, 299, 301, 600] {
                    let query = Query::Window {
                        last,
                        unit: Unit::Second,
                    };
                    let range = plan(&query, &crate::window::Tiers::default(), now).unwrap();
                    let expect: i64 = model
                        .range((n as u8, range.from_ms / 1_000)..(n as u8, range.to_ms / 1_000))
                        .map(|(_, v)| v)
                        .sum();
                    assert_eq!(
                        ask(shards, files, name, &query, now),
                        vec![expect],
                        "{name:?} last {last} s"
                    );
                }
                let query = Query::Series {
                    from_ms: T0,
                    to_ms: now,
                    step: Step::Minute,
                };
                let points = ask(shards, files, name, &query, now);
                for (i, point) in points.iter().enumerate() {
                    let from = (T0 + i as u64 * MINUTE_MS) / 1_000;
                    let expect: i64 = model.range((n as u8, from)..(n as u8, from + 60)).map(|(_, v)| v).sum();
                    assert_eq!(*point, expect, "{name:?} minute {i}");
                }
            }
        };
        check(&shards, &files);

        // Restart: the snapshot (taken at minute 11) plus the records after it.
        let (bytes, base) = snapshot.unwrap();
        let mut restored = Shard::from_snapshot(config(0, 1), Arc::new(SplitRegistry::new(1)), &bytes).unwrap();
        let durable = (files[0].len() as u64) * MINUTE_MS + T0;
        restored.windows_set_durable(durable);
        for (lsn, time_ms, record) in logs[0].records.iter().filter(|(lsn, _, _)| *lsn > base) {
            restored.replay(*lsn, *time_ms, &record.record()).unwrap();
        }
        // Replay has no ticks: bring both to the same time, then memory must be the same.
        let mut live = shards.pop().unwrap();
        live.windows_set_durable(durable);
        live.tick(now, &mut NullLog);
        restored.tick(now, &mut NullLog);
        let (a, b) = (restored.windows.canonical(), live.windows.canonical());
        assert!(a == b, "replay rebuilds memory");
        assert!(a.0 * 1_000 > T0 + 5 * MINUTE_MS && !a.1.is_empty());
        let restored = vec![restored];
        check(&restored, &files);
        let mut restored = restored;
        // Only what was not durable is handed out again, and exactly what the live shard holds.
        let again = restored[0].windows_take_sealed(now);
        assert!(again.iter().all(|s| s.start_ms >= durable));
        let pending: Vec<_> = minute_slices
            .iter()
            .filter(|s| s.start_ms >= durable)
            .cloned()
            .collect();
        assert_eq!(again[..pending.len()], pending[..]);
    }

    #[derive(Debug, Clone)]
    enum Op {
        Incr { name: usize, shard: usize, delta: i64 },
        Bounded { delta: i64 },
        Tick,
        Advance { ms: u64 },
        Split,
        Merge,
        Snapshot,
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            8 => (0usize..4, 0usize..2, -5i64..20).prop_map(|(name, shard, delta)| Op::Incr { name, shard, delta }),
            1 => (-3i64..4).prop_map(|delta| Op::Bounded { delta }),
            2 => Just(Op::Tick),
            3 => prop_oneof![0u64..1_500, 0u64..20_000].prop_map(|ms| Op::Advance { ms }),
            1 => Just(Op::Split),
            1 => Just(Op::Merge),
            1 => Just(Op::Snapshot),
        ]
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]

        /// Replay equivalence: every shard rebuilt from its log (from the start, and from its last
        /// snapshot) holds exactly the windows the live shard built, split counters included.
        #[test]
        fn replay_rebuilds_windows_exactly(ops in prop::collection::vec(op(), 1..120)) {
            let names: Vec<Vec<u8>> = vec![owned_name("w", 0, 2), owned_name("w", 1, 2), b"inv:x".to_vec(), b"y".to_vec()];
            let mut shards = node(2, &[]);
            let mut logs = vec![Recorder::default(), Recorder::default()];
            let mut snapshots: Vec<Option<(Vec<u8>, u64)>> = vec![None, None];
            let mut now = T0;
            for op in ops {
                match op {
                    Op::Incr { name, shard, delta } => {
                        let name = &names[if name == 2 { 3 } else { name }];
                        route(&mut shards, &mut logs, shard, &Request::Incr { name, delta, key: None }, now);
                    }
                    Op::Bounded { delta } => {
                        let op = Request::AddBounded { name: b"inv:x", delta, min: -1_000, max: 1_000, key: None };
                        route(&mut shards, &mut logs, 0, &op, now);
                    }
                    Op::Tick => {
                        for (shard, log) in shards.iter_mut().zip(logs.iter_mut()) {
                            log.now_ms = now;
                            shard.tick(now, log);
                        }
                    }
                    Op::Advance { ms } => now += ms,
                    Op::Split => {
                        let owner = shard_of(&names[0], 2) as usize;
                        logs[owner].now_ms = now;
                        shards[owner].split_now(&names[0], &mut logs[owner]);
                    }
                    Op::Merge => {
                        let owner = shard_of(&names[0], 2) as usize;
                        logs[owner].now_ms = now;
                        shards[owner].merge_now(&names[0], &mut logs[owner]);
                    }
                    Op::Snapshot => {
                        for (shard, snapshot) in shards.iter().zip(snapshots.iter_mut()) {
                            let mut bytes = Vec::new();
                            shard.snapshot(&mut bytes);
                            *snapshot = Some((bytes, shard.lsn()));
                        }
                    }
                }
            }
            let registry = Arc::new(SplitRegistry::new(2));
            for (id, shard) in shards.iter().enumerate() {
                let mut from_start = Shard::new(config(id as u16, 2), registry.clone());
                for (lsn, time_ms, record) in &logs[id].records {
                    from_start.replay(*lsn, *time_ms, &record.record()).unwrap();
                }
                prop_assert_eq!(&from_start.windows.canonical(), &shard.windows.canonical());
                if let Some((bytes, base)) = &snapshots[id] {
                    let mut restored = Shard::from_snapshot(config(id as u16, 2), registry.clone(), bytes).unwrap();
                    for (lsn, time_ms, record) in logs[id].records.iter().filter(|(lsn, _, _)| lsn > base) {
                        restored.replay(*lsn, *time_ms, &record.record()).unwrap();
                    }
                    prop_assert_eq!(&restored.windows.canonical(), &shard.windows.canonical());
                }
            }
        }
    }
}
