//! A replica that is paused while its primary keeps shipping, whose link is cut and healed while
//! it is still paused, must catch up once it runs again.
//!
//! While the replica is SIGSTOPped its kernel keeps accepting bytes: Ship frames of the old
//! connection fill its socket buffer, the cut ends that connection (its buffered bytes, then a
//! close, are still delivered), and the primary's reconnection (Hello and new Ships) waits in the
//! listen backlog. On SIGCONT the replica reads both connections at once. Found by the partition
//! test (`TALLY_PARTITION_SEED=20261203`, iteration 2). One group under a keyed load on the
//! primary; `ROUNDS` rounds of pause, `CUTS` cut-and-heal cycles of the primary → replica link,
//! resume, each with longer holds than the last; after each, the replica must reach the primary's
//! lsns and values within `CATCH_UP_TIMEOUT`, and the counter rule must hold.
//!
//! ```sh
//! cargo build -p tally-net && cargo test -p tally-tests --test paused_replica -- --nocapture
//! ```

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tally_tests::cluster::{client, lsns_durable, read_values, stats, wait_writable_at, CATCH_UP_TIMEOUT};
use tally_tests::group::{Group, GroupOptions};
use tally_tests::jepsen::{check, Attempt, Outcome};

const ROUNDS: usize = 8;
const PRIMARY: usize = 0;
const PAUSED: usize = 2;
const NAMES: usize = 8;
/// Cut-and-heal cycles while the replica is paused: each heal lets the primary open another
/// connection that waits in the paused replica's backlog.
const CUTS: usize = 2;
/// Client threads of the load.
const THREADS: usize = 4;

/// Keyed increments on the primary until `stop`; every attempt.
fn load(addr: String, round: usize, thread: usize, stop: Arc<AtomicBool>) -> Vec<Attempt> {
    let mut history = Vec::new();
    let mut c = client(&addr, Duration::from_secs(10)).expect("connect to the primary");
    let mut seq = 0u64;
    while !stop.load(Ordering::Acquire) {
        seq += 1;
        let key = ((round as u128) << 96) | ((thread as u128) << 64) | u128::from(seq);
        let name = format!("paused:{}", (seq as usize + thread) % NAMES);
        let result = c.incr_detailed(&name, 1, Some(key));
        history.push(Attempt {
            name,
            key,
            delta: 1,
            outcome: Outcome::of(&result, |ack| ack.duplicate),
        });
    }
    history
}

/// Waits until the paused replica has the primary's lsns and values, then checks the rule.
fn caught_up(group: &Group, names: &[String], history: &[Attempt], round: usize) {
    let deadline = Instant::now() + CATCH_UP_TIMEOUT;
    loop {
        let primary = (
            stats(&group.addr(PRIMARY)).map(|s| lsns_durable(&s)).ok(),
            read_values(&group.addr(PRIMARY), names).ok(),
        );
        let replica = (
            stats(&group.addr(PAUSED)).map(|s| lsns_durable(&s)).ok(),
            read_values(&group.addr(PAUSED), names).ok(),
        );
        if primary.0.is_some() && primary == replica {
            let report = check(history, primary.1.as_ref().expect("values"));
            assert!(report.is_valid(), "round {round}: {report}");
            println!(
                "round {round}: the paused replica caught up at lsns {:?}; {report}",
                primary.0
            );
            return;
        }
        if Instant::now() >= deadline {
            let errors = group.log_lines_with(PAUSED, &["error", "gap", "snapshot", "epoch"]);
            let from = errors.len().saturating_sub(20);
            panic!(
                "round {round}: the replica did not catch up within {CATCH_UP_TIMEOUT:?} of running again: \
                 primary lsns and values {primary:?}, replica {replica:?}\nthe replica's log (last 20 of \
                 {} lines about errors, gaps, snapshots, epochs):\n{}\nfull logs in {}",
                errors.len(),
                errors[from..].join("\n"),
                group.log_dir().display()
            );
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn a_replica_paused_across_a_cut_and_a_reconnect_catches_up() {
    let names: Vec<String> = (0..NAMES).map(|i| format!("paused:{i}")).collect();
    let mut group = Group::start(GroupOptions::default());
    wait_writable_at(&group.addr(PRIMARY), CATCH_UP_TIMEOUT).unwrap_or_else(|e| panic!("{e}"));
    let mut history: Vec<Attempt> = Vec::new();
    for round in 0..ROUNDS {
        let stop = Arc::new(AtomicBool::new(false));
        let writers: Vec<_> = (0..THREADS)
            .map(|t| {
                let (addr, stop) = (group.addr(PRIMARY), stop.clone());
                std::thread::spawn(move || load(addr, round, t, stop))
            })
            .collect();
        // The faults' timing, different each round; the load runs throughout.
        let step = |ms: u64| std::thread::sleep(Duration::from_millis(ms + 150 * round as u64));
        step(200);
        group.pause(PAUSED);
        step(300);
        for _ in 0..CUTS {
            group.cut(PRIMARY, PAUSED);
            step(400);
            group.heal(PRIMARY, PAUSED);
            step(600);
        }
        group.resume(PAUSED);
        step(300);
        stop.store(true, Ordering::Release);
        history.extend(writers.into_iter().flat_map(|w| w.join().expect("load thread")));
        caught_up(&group, &names, &history, round);
    }
}
