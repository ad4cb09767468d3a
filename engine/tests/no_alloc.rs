//! Proves the engine's steady-state promise with a counting allocator: once names exist (and a
//! split counter's cell is cached), INCR (plain, split at the owner, into a slot), keyed INCR
//! duplicates, GET, CAS and bounded adds on them allocate nothing, log records included: the sink
//! here keeps no copies, so every allocation counted would be the engine's.

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::sync::Arc;

use tally_engine::{Applied, Ctx, LogRecord, LogSink, Shard, ShardConfig, SplitRegistry};
use tally_proto::{shard_of, CounterKind, Request};

struct Counting;

thread_local! {
    static ALLOCATIONS: Cell<u64> = const { Cell::new(0) };
}

// SAFETY: every call is forwarded unchanged to the system allocator; the thread-local counter is a
// const-initialised `Cell` without a destructor, so touching it never allocates or re-enters.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        ALLOCATIONS.with(|count| count.set(count.get() + 1));
        // SAFETY: the caller upholds `GlobalAlloc::alloc`'s contract, which we pass on.
        unsafe { System.alloc(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: `ptr` came from `System.alloc` above with this layout.
        unsafe { System.dealloc(ptr, layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        ALLOCATIONS.with(|count| count.set(count.get() + 1));
        // SAFETY: as for `dealloc`, and `new_size` is passed on unchanged.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

fn allocations() -> u64 {
    ALLOCATIONS.with(Cell::get)
}

fn owned_name(prefix: &str, shard: u16) -> Vec<u8> {
    (0..)
        .map(|i| format!("{prefix}{i}").into_bytes())
        .find(|name| shard_of(name, 2) == shard)
        .expect("a name")
}

/// Checks what it is given without allocating: lsns in order, and the bytes a WAL would copy.
#[derive(Default)]
struct Tally {
    lsn_last: Vec<u64>,
    records: u64,
    name_bytes: u64,
}

impl Tally {
    fn new(shards: usize) -> Tally {
        Tally {
            lsn_last: vec![0; shards],
            ..Tally::default()
        }
    }

    fn sink(&mut self, shard: usize) -> ShardSink<'_> {
        ShardSink { tally: self, shard }
    }
}

struct ShardSink<'a> {
    tally: &'a mut Tally,
    shard: usize,
}

impl LogSink for ShardSink<'_> {
    fn record(&mut self, lsn: u64, record: &LogRecord<'_>) {
        assert_eq!(lsn, self.tally.lsn_last[self.shard] + 1);
        self.tally.lsn_last[self.shard] = lsn;
        self.tally.records += 1;
        self.tally.name_bytes += record.name().len() as u64;
    }
}

fn ok(applied: Applied) {
    assert!(matches!(applied, Applied::Done(Ok(_))), "{applied:?}");
}

#[test]
fn steady_state_ops_do_not_allocate() {
    let registry = Arc::new(SplitRegistry::new(2));
    let mut owner = Shard::new(ShardConfig::new(0, 2), registry.clone());
    let mut other = Shard::new(ShardConfig::new(1, 2), registry);
    let ctx = Ctx {
        now_ms: 1_000,
        client: b"",
    };
    let (plain, hot, strict) = (owned_name("p", 0), owned_name("h", 0), owned_name("s", 0));
    let mut tally = Tally::new(2);

    // Warm up: create the names, split one, let the other shard cache its cell, use a key once.
    ok(owner.apply(
        &Request::Incr {
            name: &plain,
            delta: 1,
            key: None,
        },
        &ctx,
        &mut tally.sink(0),
    ));
    ok(owner.apply(
        &Request::Incr {
            name: &hot,
            delta: 1,
            key: None,
        },
        &ctx,
        &mut tally.sink(0),
    ));
    assert!(owner.split_now(&hot, &mut tally.sink(0)));
    ok(other.apply(
        &Request::Incr {
            name: &hot,
            delta: 1,
            key: None,
        },
        &ctx,
        &mut tally.sink(1),
    ));
    let create = Request::Create {
        name: &strict,
        kind: CounterKind::Strict,
        initial: 0,
        min: Some(0),
        max: None,
    };
    ok(owner.apply(&create, &ctx, &mut tally.sink(0)));
    ok(owner.apply(
        &Request::Incr {
            name: &plain,
            delta: 1,
            key: Some(42),
        },
        &ctx,
        &mut tally.sink(0),
    ));

    let before = allocations();
    for i in 0..10_000i64 {
        ok(owner.apply(
            &Request::Incr {
                name: &plain,
                delta: 1,
                key: None,
            },
            &ctx,
            &mut tally.sink(0),
        ));
        ok(owner.apply(
            &Request::Incr {
                name: &plain,
                delta: 1,
                key: Some(42),
            },
            &ctx,
            &mut tally.sink(0),
        ));
        ok(owner.apply(
            &Request::Incr {
                name: &hot,
                delta: 1,
                key: None,
            },
            &ctx,
            &mut tally.sink(0),
        ));
        ok(other.apply(
            &Request::Incr {
                name: &hot,
                delta: 1,
                key: None,
            },
            &ctx,
            &mut tally.sink(1),
        ));
        ok(owner.apply(
            &Request::Get {
                name: &hot,
                fresh: true,
                token: None,
            },
            &ctx,
            &mut tally.sink(0),
        ));
        ok(owner.apply(
            &Request::Cas {
                name: &strict,
                expected: i,
                new: i + 1,
            },
            &ctx,
            &mut tally.sink(0),
        ));
        let add = Request::AddBounded {
            name: &strict,
            delta: 1,
            min: 0,
            max: i64::MAX,
            key: None,
        };
        ok(owner.apply(&add, &ctx, &mut tally.sink(0)));
        let add_back = Request::AddBounded {
            name: &strict,
            delta: -1,
            min: 0,
            max: i64::MAX,
            key: None,
        };
        ok(owner.apply(&add_back, &ctx, &mut tally.sink(0)));
    }
    assert_eq!(allocations() - before, 0, "steady-state ops allocated");
    assert_eq!(other.stats().split_slot_incrs, 10_001);
    // Every state change was logged: 5 in the warm-up and 5 per round on the owner (the duplicate
    // and the GET change nothing), 1 slot increment per round on the other shard.
    assert_eq!(tally.lsn_last, vec![owner.lsn(), other.lsn()]);
    assert_eq!(tally.records, owner.lsn() + other.lsn());
    assert_eq!(owner.lsn(), 5 + 5 * 10_000);
    assert_eq!(other.lsn(), 10_001);
    assert!(tally.name_bytes > 0);
}
