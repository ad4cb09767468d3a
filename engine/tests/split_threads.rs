//! A split counter written from two real threads, each owning one `Shard` of a 2-shard node: the
//! non-owner adds into its slot (forwarding to the owner over a channel when its slot is closed or
//! out of range) while the owner adds to its own part and keeps merging and re-splitting the
//! counter. The final value must be the exact sum of every add: none lost, none doubled.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{self, TryRecvError};
use std::sync::{Arc, Barrier};
use std::thread;

use tally_engine::{Applied, Ctx, NullLog, Shard, ShardConfig, SplitRegistry};
use tally_proto::{shard_of, Reply, Request};

const NON_OWNER_ADDS: u64 = 1_000_000;
/// The owner toggles split/merge once per this many loop rounds.
const TOGGLE_EVERY: u64 = 16;

fn owned_name(shard: u16) -> Vec<u8> {
    (0..)
        .map(|i| format!("hot:{i}").into_bytes())
        .find(|name| shard_of(name, 2) == shard)
        .expect("some name hashes to every shard")
}

fn incr<'a>(name: &'a [u8], delta: i64) -> Request<'a> {
    Request::Incr { name, delta, key: None }
}

#[test]
fn split_counter_stays_exact_across_threads_and_merges() {
    let registry = Arc::new(SplitRegistry::new(2));
    let name = owned_name(0);
    let ctx = Ctx { now_ms: 0, client: b"" };
    let (forward_tx, forward_rx) = mpsc::channel::<i64>();
    let barrier = Arc::new(Barrier::new(2));
    // How many of the non-owner's adds went into its slot; the owner waits for the first one so a
    // merge is sure to close a slot that has been written.
    let slot_adds = Arc::new(AtomicU64::new(0));

    let non_owner = {
        let (registry, name, barrier, slot_adds) = (registry.clone(), name.clone(), barrier.clone(), slot_adds.clone());
        thread::spawn(move || {
            let mut shard = Shard::new(ShardConfig::new(1, 2), registry);
            barrier.wait();
            let mut sum = 0i64;
            for i in 0..NON_OWNER_ADDS {
                let delta = 1 + (i % 3) as i64;
                sum += delta;
                match shard.apply(&incr(&name, delta), &ctx, &mut NullLog) {
                    Applied::Done(Ok(Reply::Incr { .. })) => {
                        slot_adds.fetch_add(1, Ordering::Release);
                    }
                    Applied::Forward(0) => forward_tx.send(delta).expect("the owner outlives the sender"),
                    other => panic!("unexpected {other:?}"),
                }
            }
            (sum, shard.stats())
        })
    };

    let owner = {
        let (name, slot_adds) = (name.clone(), slot_adds.clone());
        thread::spawn(move || {
            let mut shard = Shard::new(ShardConfig::new(0, 2), registry);
            // The owner's own adds; forwarded ones are counted by the thread that sent them.
            let mut sum = 0i64;
            let apply = |shard: &mut Shard, delta: i64| match shard.apply(&incr(&name, delta), &ctx, &mut NullLog) {
                Applied::Done(Ok(_)) => {}
                other => panic!("the owner must apply its own names: {other:?}"),
            };
            apply(&mut shard, 1);
            sum += 1;
            assert!(shard.split_now(&name, &mut NullLog));
            barrier.wait();
            while slot_adds.load(Ordering::Acquire) == 0 {
                thread::yield_now();
            }
            let mut merges_while_adding = 0u64;
            let mut round = 0u64;
            loop {
                match forward_rx.try_recv() {
                    Ok(delta) => apply(&mut shard, delta),
                    Err(TryRecvError::Empty) => {}
                    Err(TryRecvError::Disconnected) => break,
                }
                apply(&mut shard, 2);
                sum += 2;
                round += 1;
                if round == TOGGLE_EVERY {
                    round = 0;
                    if shard.merge_now(&name, &mut NullLog) {
                        merges_while_adding += 1;
                    } else {
                        assert!(shard.split_now(&name, &mut NullLog));
                    }
                }
            }
            let value = match shard.apply(
                &Request::Get {
                    name: &name,
                    fresh: true,
                    token: None,
                },
                &ctx,
                &mut NullLog,
            ) {
                Applied::Done(Ok(Reply::Get { value, .. })) => value,
                other => panic!("{other:?}"),
            };
            (sum, value, merges_while_adding, shard.stats())
        })
    };

    let (non_owner_sum, non_owner_stats) = non_owner.join().expect("non-owner thread");
    let (owner_sum, value, merges, owner_stats) = owner.join().expect("owner thread");
    assert_eq!(value, owner_sum + non_owner_sum, "every add counted exactly once");
    assert!(merges >= 1, "the owner merged while the other thread was adding");
    assert!(non_owner_stats.split_slot_incrs >= 1);
    assert_eq!(non_owner_stats.split_slot_incrs, slot_adds.load(Ordering::Acquire));
    assert_eq!(owner_stats.merges, merges);
    // Every non-owner add either landed in its slot or was forwarded and applied by the owner.
    assert_eq!(
        non_owner_stats.split_slot_incrs + non_owner_stats.ops_forwarded,
        NON_OWNER_ADDS
    );
}
