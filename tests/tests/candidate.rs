//! A primary that starts (on an empty directory, or again after a SIGKILL) re-establishes its epoch
//! before it takes writes: it probes its replicas and promotes itself with a majority
//! (docs/replication.md, issue 11). With both replicas up and reachable that must always finish,
//! on every shard, within seconds; a start that stays `not_primary` is a stuck promotion.
//!
//! `ROUNDS` fresh groups (every link through a proxy, `tally_tests::group`); in each, the primary
//! must take writes on both shards, then be SIGKILLed and restarted `RESTARTS` times, taking writes
//! again each time, and every acknowledged increment must be on all three nodes at the end.
//!
//! ```sh
//! cargo build -p tally-net && cargo test -p tally-tests --test candidate -- --nocapture
//! ```

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use tally_tests::cluster::{client, read_values, wait_writable_at, CATCH_UP_TIMEOUT};
use tally_tests::group::{Group, GroupOptions};
use tally_tests::jepsen::{check, Attempt, Outcome};

/// Fresh groups started.
const ROUNDS: usize = 4;
/// SIGKILL-and-restart cycles of the primary per group.
const RESTARTS: usize = 3;
/// A start with both replicas reachable takes writes within this (it takes about a second).
const WRITABLE_TIMEOUT: Duration = Duration::from_secs(20);
/// Keyed writes per cycle.
const WRITES: u64 = 20;
const REPLY_TIMEOUT: Duration = Duration::from_secs(10);

fn writable_or_fail(group: &Group, what: &str) -> Duration {
    let started = Instant::now();
    if let Err(e) = wait_writable_at(&group.addr(0), WRITABLE_TIMEOUT) {
        let stuck = group.log_lines_with(0, &["promot", "probing", "epoch", "restarting", "startup", "debug"]);
        panic!(
            "{what}: {e}\nnode 0's lines about its promotion:\n{}\n{}",
            stuck.join("\n"),
            group.log_tails()
        );
    }
    started.elapsed()
}

#[test]
fn a_starting_primary_takes_writes_every_time_its_replicas_are_up() {
    let names: Vec<String> = (0..4).map(|i| format!("cand:{i}")).collect();
    let mut slowest = Duration::ZERO;
    for round in 0..ROUNDS {
        // Debug: the node logs each startup stage, so a start that hangs says where.
        let mut group = Group::start(GroupOptions {
            log_level: "debug",
            ..GroupOptions::default()
        });
        slowest = slowest.max(writable_or_fail(
            &group,
            &format!("round {round}: a fresh group's primary"),
        ));
        let mut history: Vec<Attempt> = Vec::new();
        for cycle in 0..=RESTARTS {
            let mut c = client(&group.addr(0), REPLY_TIMEOUT).expect("connect to the primary");
            for n in 0..WRITES {
                let name = &names[n as usize % names.len()];
                let key = ((round as u128) << 96) | ((cycle as u128) << 64) | u128::from(n);
                let result = c.incr_detailed(name, 1, Some(key));
                let outcome = Outcome::of(&result, |ack| ack.duplicate);
                history.push(Attempt {
                    name: name.clone(),
                    key,
                    delta: 1,
                    outcome,
                });
                assert!(
                    outcome.is_acked(),
                    "round {round} cycle {cycle}: write {n} on a writable primary: {result:?}"
                );
            }
            if cycle < RESTARTS {
                group.kill(0);
                group
                    .start_node(0)
                    .unwrap_or_else(|e| panic!("restart of the primary: {e}"));
                let took = writable_or_fail(&group, &format!("round {round}: the primary after restart {cycle}"));
                slowest = slowest.max(took);
            }
        }
        // Every acknowledged increment on every node.
        for node in 0..3 {
            let deadline = Instant::now() + CATCH_UP_TIMEOUT;
            let expected: BTreeMap<String, i64> = read_values(&group.addr(0), &names).expect("read the primary");
            loop {
                let values = read_values(&group.addr(node), &names).expect("read a node");
                if values == expected {
                    let report = check(&history, &values);
                    assert!(report.is_valid(), "round {round}, node {node}: {report}");
                    break;
                }
                assert!(
                    Instant::now() < deadline,
                    "round {round}: node {node} reads {values:?}, the primary {expected:?}\n{}",
                    group.log_tails()
                );
                std::thread::sleep(Duration::from_millis(20));
            }
        }
    }
    println!(
        "candidate: {ROUNDS} fresh groups, {RESTARTS} primary restarts each: writable every time, the slowest after {slowest:?}"
    );
}
