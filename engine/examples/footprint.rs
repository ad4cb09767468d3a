//! Memory per counter: creates N names like `views:page:0000000042` (21 bytes) on a 2-shard node
//! (each INCR applied at its owner, as the network layer does) and prints the engine's own
//! accounting and the process RSS growth per counter.
//!
//! `cargo run --release -p tally-engine --example footprint -- 10000000`

use std::fmt::Write as _;
use std::sync::Arc;
use std::time::Instant;

use tally_engine::{Applied, Ctx, NullLog, Shard, ShardConfig, SplitRegistry};
use tally_proto::{shard_of, Request};

const SHARDS: u16 = 2;

/// VmRSS of this process in bytes, from /proc/self/status.
fn rss_bytes() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").expect("/proc/self/status is readable");
    let line = status
        .lines()
        .find(|line| line.starts_with("VmRSS:"))
        .expect("VmRSS is reported");
    let kib: u64 = line
        .split_whitespace()
        .nth(1)
        .and_then(|kib| kib.parse().ok())
        .expect("VmRSS is a number of kB");
    kib * 1024
}

fn main() {
    let n: u64 = match std::env::args().nth(1) {
        Some(arg) => arg.parse().expect("usage: footprint [COUNTERS]"),
        None => 1_000_000,
    };
    let registry = Arc::new(SplitRegistry::new(SHARDS));
    let mut shards: Vec<Shard> = (0..SHARDS)
        .map(|id| Shard::new(ShardConfig::new(id, SHARDS), registry.clone()))
        .collect();
    let ctx = Ctx {
        now_ms: 0,
        client: b"footprint",
    };
    let rss_before = rss_bytes();
    let engine_before: u64 = shards.iter().map(|shard| shard.memory_bytes()).sum();

    let started = Instant::now();
    let mut name = String::with_capacity(32);
    for i in 0..n {
        name.clear();
        write!(name, "views:page:{i:010}").expect("writing to a String cannot fail");
        let owner = shard_of(name.as_bytes(), SHARDS);
        let request = Request::Incr {
            name: name.as_bytes(),
            delta: 1,
            key: None,
        };
        match shards[owner as usize].apply(&request, &ctx, &mut NullLog) {
            Applied::Done(Ok(_)) => {}
            other => panic!("INCR {name} at its owner: {other:?}"),
        }
    }
    let elapsed = started.elapsed();

    let rss_after = rss_bytes();

    // Steady state: increment every existing name once more (no allocation, one lookup each).
    let started = Instant::now();
    for i in 0..n {
        name.clear();
        write!(name, "views:page:{i:010}").expect("writing to a String cannot fail");
        let owner = shard_of(name.as_bytes(), SHARDS);
        let request = Request::Incr {
            name: name.as_bytes(),
            delta: 1,
            key: None,
        };
        match shards[owner as usize].apply(&request, &ctx, &mut NullLog) {
            Applied::Done(Ok(_)) => {}
            other => panic!("INCR {name} at its owner: {other:?}"),
        }
    }
    let elapsed_existing = started.elapsed();
    let stats: Vec<_> = shards.iter().map(|shard| shard.stats()).collect();
    let counters: u64 = stats.iter().map(|s| s.counters).sum();
    let engine_bytes: u64 = stats.iter().map(|s| s.memory_bytes).sum::<u64>() - engine_before;
    let name_bytes: u64 = stats.iter().map(|s| s.name_bytes).sum();
    assert_eq!(counters, n);
    let per = |bytes: u64| bytes as f64 / counters.max(1) as f64;

    println!("shards                    {SHARDS}");
    println!("counters                  {counters}");
    for (id, s) in stats.iter().enumerate() {
        println!("  shard {id}: {} counters, {} bytes", s.counters, s.memory_bytes);
    }
    println!("name bytes/counter        {:.1}", per(name_bytes));
    println!(
        "engine bytes/counter      {:.1}  ({engine_bytes} bytes by the engine's accounting)",
        per(engine_bytes)
    );
    println!(
        "RSS bytes/counter         {:.1}  (VmRSS {rss_after} - {rss_before} before inserting)",
        per(rss_after.saturating_sub(rss_before))
    );
    println!(
        "create time               {:.2} s ({:.0} ns/counter, INCR of a new name incl. table growth)",
        elapsed.as_secs_f64(),
        elapsed.as_nanos() as f64 / counters.max(1) as f64
    );
    println!(
        "incr time                 {:.2} s ({:.0} ns/op, INCR of an existing name, random order in a cold table)",
        elapsed_existing.as_secs_f64(),
        elapsed_existing.as_nanos() as f64 / counters.max(1) as f64
    );
}
