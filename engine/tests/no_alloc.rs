//! Proves the engine's steady-state promise with a counting allocator: once names exist (and a
//! split counter's cell is cached), INCR (plain, split at the owner, into a slot), keyed INCR
//! duplicates, GET, CAS and bounded adds on them allocate nothing.

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::sync::Arc;

use tally_engine::{Applied, Ctx, Shard, ShardConfig, SplitRegistry};
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

    // Warm up: create the names, split one, let the other shard cache its cell, use a key once.
    ok(owner.apply(
        &Request::Incr {
            name: &plain,
            delta: 1,
            key: None,
        },
        &ctx,
    ));
    ok(owner.apply(
        &Request::Incr {
            name: &hot,
            delta: 1,
            key: None,
        },
        &ctx,
    ));
    assert!(owner.split_now(&hot));
    ok(other.apply(
        &Request::Incr {
            name: &hot,
            delta: 1,
            key: None,
        },
        &ctx,
    ));
    let create = Request::Create {
        name: &strict,
        kind: CounterKind::Strict,
        initial: 0,
        min: Some(0),
        max: None,
    };
    ok(owner.apply(&create, &ctx));
    ok(owner.apply(
        &Request::Incr {
            name: &plain,
            delta: 1,
            key: Some(42),
        },
        &ctx,
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
        ));
        ok(owner.apply(
            &Request::Incr {
                name: &plain,
                delta: 1,
                key: Some(42),
            },
            &ctx,
        ));
        ok(owner.apply(
            &Request::Incr {
                name: &hot,
                delta: 1,
                key: None,
            },
            &ctx,
        ));
        ok(other.apply(
            &Request::Incr {
                name: &hot,
                delta: 1,
                key: None,
            },
            &ctx,
        ));
        ok(owner.apply(
            &Request::Get {
                name: &hot,
                fresh: true,
                token: None,
            },
            &ctx,
        ));
        ok(owner.apply(
            &Request::Cas {
                name: &strict,
                expected: i,
                new: i + 1,
            },
            &ctx,
        ));
        let add = Request::AddBounded {
            name: &strict,
            delta: 1,
            min: 0,
            max: i64::MAX,
            key: None,
        };
        ok(owner.apply(&add, &ctx));
        let add_back = Request::AddBounded {
            name: &strict,
            delta: -1,
            min: 0,
            max: i64::MAX,
            key: None,
        };
        ok(owner.apply(&add_back, &ctx));
    }
    assert_eq!(allocations() - before, 0, "steady-state ops allocated");
    assert_eq!(other.stats().split_slot_incrs, 10_001);
}
