//! Appending to a batch allocates nothing in steady state: a counting allocator watches the encoder
//! append, seal and recycle thousands of records once its buffers and dictionary are warm.

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::sync::atomic::{AtomicU64, Ordering};

use tally_wal::limits::SEGMENT_BYTES_DEFAULT;
use tally_wal::{BatchEncoder, LogRecord, LogSink};

struct Counting;

static ALLOCATIONS: AtomicU64 = AtomicU64::new(0);

thread_local! {
    /// Only the test's own thread is watched: the test harness allocates on its threads meanwhile.
    /// (A const-initialised thread-local without a destructor never allocates, so the allocator may
    /// read it.)
    static WATCHED: Cell<bool> = const { Cell::new(false) };
}

fn count() {
    if WATCHED.with(Cell::get) {
        ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
    }
}

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        count();
        // SAFETY: forwarded unchanged to the system allocator.
        unsafe { System.alloc(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: forwarded unchanged to the system allocator.
        unsafe { System.dealloc(ptr, layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        count();
        // SAFETY: forwarded unchanged to the system allocator.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

fn round(enc: &mut BatchEncoder, names: &[Vec<u8>], lsn: &mut u64, time_ms: u64) {
    for i in 0..2_000u64 {
        *lsn += 1;
        let which = (i * 7919 % names.len() as u64) as usize;
        let record = if i % 10 == 0 {
            LogRecord::AddBounded {
                name: &names[which],
                name_id: which as u32,
                delta: -1,
                key: Some(u128::from(i)),
            }
        } else {
            LogRecord::Incr {
                name: &names[which],
                name_id: which as u32,
                delta: 1,
                key: None,
            }
        };
        enc.record(*lsn, &record);
    }
    let sealed = enc.seal(time_ms).expect("records were appended");
    enc.recycle(sealed);
}

#[test]
fn steady_state_append_allocates_nothing() {
    let names: Vec<Vec<u8>> = (0..500).map(|i| format!("views:page:{i:010}").into_bytes()).collect();
    let mut enc = BatchEncoder::new(None, 0, 0, 0, SEGMENT_BYTES_DEFAULT);
    enc.grant_rotation(42);
    let mut lsn = 0;
    // Warm up: both buffers reach their size, every name enters the dictionary.
    for t in 0..3 {
        round(&mut enc, &names, &mut lsn, t);
    }
    WATCHED.with(|w| w.set(true));
    let before = ALLOCATIONS.load(Ordering::Relaxed);
    for t in 3..50 {
        round(&mut enc, &names, &mut lsn, t);
    }
    let after = ALLOCATIONS.load(Ordering::Relaxed);
    // The counter works: one allocation on this thread is seen.
    let probe = std::hint::black_box(vec![1u8; 16]);
    let seen = ALLOCATIONS.load(Ordering::Relaxed) - after;
    WATCHED.with(|w| w.set(false));
    drop(probe);
    assert_eq!(seen, 1);
    assert_eq!(after - before, 0, "appending {} records allocated", 47 * 2_000);
    assert_eq!(enc.lsn_last(), 50 * 2_000);
}
