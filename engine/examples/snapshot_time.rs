//! Recovery speed of one shard: creates N counters named like `views:page:0000000042` (21 bytes)
//! on a single-shard node, every 50th increment keyed (so the dedup set is in the snapshot too),
//! then times `snapshot`, `from_snapshot`, and the replay of a log of N more increments of existing
//! names on top of the restored shard (what recovery does with the WAL after the snapshot).
//!
//! Each phase prints wall time and this thread's on-CPU time (from /proc/thread-self/schedstat),
//! so a busy machine shows up as wall time above CPU time rather than as a wrong figure.
//!
//! `cargo run --release -p tally-engine --example snapshot_time -- 5000000`

use std::fmt::Write as _;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tally_engine::{Applied, Ctx, LogRecord, LogSink, NullLog, Shard, ShardConfig, SplitRegistry};
use tally_proto::{Reply, Request};

/// Keeps the replayable part of each INCR record: which name and the delta.
struct IncrLog {
    lsn_first: u64,
    incrs: Vec<(u32, i64)>,
}

impl LogSink for IncrLog {
    fn record(&mut self, lsn: u64, record: &LogRecord<'_>) {
        let LogRecord::Incr {
            name, delta, key: None, ..
        } = *record
        else {
            panic!("only unkeyed increments are logged here: {record:?}");
        };
        if self.incrs.is_empty() {
            self.lsn_first = lsn;
        }
        assert_eq!(lsn, self.lsn_first + self.incrs.len() as u64);
        // The names are `views:page:{i:010}`: the index is the last 10 digits.
        let index = std::str::from_utf8(&name[11..])
            .expect("ascii")
            .parse()
            .expect("a number");
        self.incrs.push((index, delta));
    }
}

/// This thread's time on a CPU so far.
fn cpu_time() -> Duration {
    let schedstat = std::fs::read_to_string("/proc/thread-self/schedstat").expect("schedstat is readable");
    let ns = schedstat
        .split_whitespace()
        .next()
        .and_then(|ns| ns.parse().ok())
        .expect("schedstat starts with ns on the CPU");
    Duration::from_nanos(ns)
}

/// Wall and CPU time of `f`.
fn timed<T>(f: impl FnOnce() -> T) -> (T, Duration, Duration) {
    let (wall, cpu) = (Instant::now(), cpu_time());
    let result = f();
    (result, wall.elapsed(), cpu_time() - cpu)
}

fn name_of(buf: &mut String, i: u64) -> &[u8] {
    buf.clear();
    write!(buf, "views:page:{i:010}").expect("writing to a String cannot fail");
    buf.as_bytes()
}

fn value(shard: &mut Shard, name: &[u8]) -> i64 {
    let op = Request::Get {
        name,
        fresh: false,
        token: None,
    };
    match shard.apply(&op, &Ctx { now_ms: 0, client: b"" }, &mut NullLog) {
        Applied::Done(Ok(Reply::Get { value, .. })) => value,
        other => panic!("{other:?}"),
    }
}

fn main() {
    let n: u64 = match std::env::args().nth(1) {
        Some(arg) => arg.parse().expect("usage: snapshot_time [COUNTERS]"),
        None => 5_000_000,
    };
    let config = ShardConfig::new(0, 1);
    let mut shard = Shard::new(config.clone(), Arc::new(SplitRegistry::new(1)));
    let ctx = Ctx {
        now_ms: 1_000,
        client: b"snapshot_time",
    };
    let mut name = String::with_capacity(32);
    let ((), create, create_cpu) = timed(|| {
        for i in 0..n {
            let key = (i % 50 == 0).then_some(u128::from(i) + 1);
            let op = Request::Incr {
                name: name_of(&mut name, i),
                delta: 1,
                key,
            };
            assert!(matches!(shard.apply(&op, &ctx, &mut NullLog), Applied::Done(Ok(_))));
        }
    });
    let stats = shard.stats();

    let mut bytes = Vec::new();
    let (deps, snapshot, snapshot_cpu) = timed(|| shard.snapshot(&mut bytes));
    assert_eq!(deps.lsn, n);

    // The log after the snapshot: one more increment of every name, in a scattered order.
    let mut log = IncrLog {
        lsn_first: 0,
        incrs: Vec::with_capacity(n as usize),
    };
    for j in 0..n {
        let i = (j * 2_654_435_761) % n;
        let op = Request::Incr {
            name: name_of(&mut name, i),
            delta: 2,
            key: None,
        };
        assert!(matches!(shard.apply(&op, &ctx, &mut log), Applied::Done(Ok(_))));
    }
    drop(shard);

    let (restored, restore, restore_cpu) =
        timed(|| Shard::from_snapshot(config, Arc::new(SplitRegistry::new(1)), &bytes));
    let mut restored = restored.expect("the snapshot restores");
    assert_eq!(restored.lsn(), n);
    assert_eq!(restored.stats().counters, n);
    assert_eq!(restored.stats().dedup_entries, stats.dedup_entries);

    let ((), replay, replay_cpu) = timed(|| {
        for (offset, &(index, delta)) in log.incrs.iter().enumerate() {
            let record = LogRecord::Incr {
                name: name_of(&mut name, u64::from(index)),
                name_id: 0,
                delta,
                key: None,
            };
            restored
                .replay(log.lsn_first + offset as u64, 2_000, &record)
                .expect("the log replays");
        }
    });
    for i in [0, n / 2, n - 1] {
        assert_eq!(value(&mut restored, name_of(&mut name, i)), 3);
    }

    let per = |d: Duration| d.as_nanos() as f64 / n as f64;
    let line = |what: &str, wall: Duration, cpu: Duration| {
        println!(
            "{what:<24} wall {:>7.3} s  cpu {:>7.3} s  ({:.0} ns per item of CPU)",
            wall.as_secs_f64(),
            cpu.as_secs_f64(),
            per(cpu)
        );
    };
    println!(
        "counters                 {n} on one shard ({} dedup keys)",
        stats.dedup_entries
    );
    line("create (INCR new names)", create, create_cpu);
    line("snapshot", snapshot, snapshot_cpu);
    println!(
        "snapshot size            {} bytes ({:.1} bytes/counter)",
        bytes.len(),
        bytes.len() as f64 / n as f64
    );
    line("restore (from_snapshot)", restore, restore_cpu);
    line("replay (INCR records)", replay, replay_cpu);
    println!(
        "replay rate              {:.2} M records/s of CPU",
        n as f64 / replay_cpu.as_secs_f64() / 1e6
    );
}
