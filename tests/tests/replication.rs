//! Replication end to end: three real `tallyd` processes on loopback (a primary P and replicas R1,
//! R2, two shards each), see `tally_tests::cluster` for the flags they get.
//!
//! - basics: quorum writes on P read the same on R1 and R2; replicas refuse writes with
//!   `not_primary` naming P; STATS roles, epochs and per-replica figures; the CLI's promote and stats.
//! - failover (the Jepsen counter rule): client threads send keyed increments to P, P is SIGKILLed
//!   at a random moment, R1 is promoted, every unacknowledged key is retried on R1 until acked, and
//!   every key must then count exactly once; R2 follows R1.
//! - a replica SIGKILLed and restarted on its directory catches up; a replica wiped catches up from
//!   nothing; both end with P's values.
//! - a fault-injecting proxy in front of each replica: cutting both makes quorum writes fail with
//!   `replicas_unavailable` within the replication wait (reads go on), healing makes them succeed;
//!   with a delay they succeed, slower; dropping bytes fails them like a cut until healed.
//!
//! The failover test runs `TALLY_FAILOVER_ITERATIONS` times (2 by default, for CI), each on a fresh
//! set of nodes, and prints each iteration's figures. A long run:
//!
//! ```sh
//! TALLY_FAILOVER_ITERATIONS=20 cargo test -p tally-tests --release --test replication -- --nocapture failover
//! ```
//!
//! (`cargo build -p tally-net -p tally-sdk --release` first, or `cargo test --workspace`, so that
//! `tallyd` and `tally` exist beside the test binary; `TALLYD_BIN` points elsewhere.)
//!
//! Tests run one at a time (each takes the `SERIAL` lock): every one starts three nodes, and the
//! timing bounds below assume they do not compete with another set for the CPUs.

use std::collections::BTreeMap;
use std::process::Command;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use tally_sdk::{Client, Error, ErrorCode, WriteAck};
use tally_tests::cluster::{
    client, figure, read_values, repl_figures, stats, Cluster, Options, CATCH_UP_TIMEOUT, PRIMARY, ROLE_PRIMARY,
    ROLE_REPLICA, SHARDS,
};
use tally_tests::jepsen::{check, Attempt, Outcome};
use tally_tests::{tallyd_path, wait_for, wait_until};

const R1: usize = 1;
const R2: usize = 2;
/// A client's reply timeout: above every replication wait used here, so a write that cannot be
/// replicated is answered `replicas_unavailable`, not timed out.
const REPLY_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a promotion may wait for its fellow replica.
const PROMOTE_WAIT_MS: u32 = 5_000;
/// A write refused for want of replicas must be answered within this, whatever the wait.
const REFUSAL_BOUND: Duration = Duration::from_secs(10);

static SERIAL: Mutex<()> = Mutex::new(());

/// One test at a time (a failed test poisons the lock; the next still runs).
fn serial() -> MutexGuard<'static, ()> {
    SERIAL.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// A small xorshift generator: the tests' randomness, seeded from the clock and printed, so a
/// failing run can be repeated with `TALLY_REPLICATION_SEED`.
struct Rng(u64);

impl Rng {
    fn from_env() -> Rng {
        let seed = std::env::var("TALLY_REPLICATION_SEED")
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| {
                std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .unwrap()
                    .as_nanos() as u64
            });
        println!("replication tests: TALLY_REPLICATION_SEED={seed}");
        Rng(seed | 1)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0 % n
    }
}

/// Sends one keyed increment, records the attempt, and returns the result and how long it took.
fn send(
    client: &mut Client,
    history: &mut Vec<Attempt>,
    name: &str,
    key: u128,
    delta: i64,
) -> (Result<WriteAck, Error>, Duration) {
    let started = Instant::now();
    let result = client.incr_detailed(name, delta, Some(key));
    let took = started.elapsed();
    history.push(Attempt {
        name: name.to_string(),
        key,
        delta,
        outcome: Outcome::of(&result, |ack| ack.duplicate),
    });
    (result, took)
}

/// Sends `count` keyed increments (keys `first_key..`) over `names`, every one of which must be
/// acknowledged.
fn write_all_acked(client: &mut Client, history: &mut Vec<Attempt>, names: &[String], first_key: u128, count: u64) {
    for n in 0..count {
        let name = &names[n as usize % names.len()];
        let (result, _) = send(client, history, name, first_key + u128::from(n), 1);
        if let Err(e) = result {
            panic!("write {n} to {name} failed: {e}");
        }
    }
}

/// Resends the key (same name and delta) until it is acknowledged, reconnecting as needed.
fn send_until_acked(addr: &str, history: &mut Vec<Attempt>, name: &str, key: u128, delta: i64, timeout: Duration) {
    let mut connection: Option<Client> = None;
    wait_for(
        &format!("key {key:#x} on {name} to be acked by {addr}"),
        timeout,
        || {
            if connection.is_none() {
                connection = client(addr, REPLY_TIMEOUT).ok();
            }
            let c = connection.as_mut()?;
            match send(c, history, name, key, delta).0 {
                Ok(_) => Some(()),
                Err(e) => {
                    if e.is_connection() {
                        connection = None;
                    }
                    None
                }
            }
        },
    );
}

fn names(prefix: &str, count: usize) -> Vec<String> {
    (0..count).map(|i| format!("{prefix}:{i}")).collect()
}

/// The counter rule over `history` with `names` read on `addr`; panics with the report if broken.
fn check_rule(addr: &str, history: &[Attempt], names: &[String]) -> tally_tests::jepsen::Report {
    let finals = read_values(addr, names).unwrap_or_else(|e| panic!("reading the counters on {addr}: {e}"));
    let report = check(history, &finals);
    report.assert_valid();
    report
}

/// Waits until `replica` has `primary`'s lsns and then checks it reads `expected`.
fn assert_replica_matches(cluster: &Cluster, primary: usize, replica: usize, expected: &BTreeMap<String, i64>) {
    let lsns = cluster.wait_caught_up(primary, replica);
    let names: Vec<String> = expected.keys().cloned().collect();
    let values = read_values(&cluster.addr(replica), &names).expect("read the replica");
    assert_eq!(
        &values, expected,
        "replica {replica} at lsns {lsns:?} reads other values than the primary"
    );
}

fn role_and_epoch(addr: &str) -> (i64, i64) {
    let s = stats(addr).unwrap_or_else(|e| panic!("STATS on {addr}: {e}"));
    (figure(&s, "node.role", addr), figure(&s, "node.epoch", addr))
}

/// The `tally` CLI built beside `tallyd`.
fn tally_cli() -> Command {
    let path = tallyd_path().with_file_name("tally");
    assert!(
        path.exists(),
        "{} not found: build it with `cargo build -p tally-sdk` (or run `cargo test --workspace`)",
        path.display()
    );
    Command::new(path)
}

#[test]
fn quorum_writes_read_the_same_on_both_replicas_and_replicas_refuse_writes() {
    let _serial = serial();
    let cluster = Cluster::start(Options::default());
    cluster.wait_ready(PRIMARY);
    let p = cluster.addr(PRIMARY);
    let mut primary = client(&p, REPLY_TIMEOUT).unwrap();
    let names = names("basic", 16);
    let mut expected = BTreeMap::new();
    for (i, name) in names.iter().enumerate() {
        let mut value = 0;
        for delta in 1..=i as i64 + 1 {
            value = primary
                .incr(name, delta)
                .unwrap_or_else(|e| panic!("quorum write to {name}: {e}"));
        }
        expected.insert(name.clone(), value);
    }

    let (role, epoch) = role_and_epoch(&p);
    assert_eq!(role, ROLE_PRIMARY, "P's node.role");
    for r in [R1, R2] {
        let (role, replica_epoch) = role_and_epoch(&cluster.addr(r));
        assert_eq!(role, ROLE_REPLICA, "R{r}'s node.role");
        assert_eq!(replica_epoch, epoch, "R{r} follows P's epoch");
        assert_replica_matches(&cluster, PRIMARY, r, &expected);
    }

    // Once the replicas have everything, P's per-stream figures say so.
    let streams = usize::from(SHARDS) * 2;
    wait_until("P to report no replica lag", CATCH_UP_TIMEOUT, || {
        let s = stats(&p).unwrap();
        let lag = repl_figures(&s, "lag_lsns");
        let acked = repl_figures(&s, "lsn_acked");
        lag.len() == streams && lag.iter().all(|(_, v)| *v == 0) && acked.len() == streams
    });
    let s = stats(&p).unwrap();
    for (name, lsn_acked) in repl_figures(&s, "lsn_acked") {
        let shard = name.split('.').nth(1).unwrap();
        let durable = figure(&s, &format!("shard.{shard}.lsn_durable"), &p);
        assert_eq!(lsn_acked, durable, "{name} after catch-up");
    }
    for suffix in ["lag_ms", "connected"] {
        assert_eq!(
            repl_figures(&s, suffix).len(),
            streams,
            "P publishes shard.N.repl.R.{suffix}"
        );
    }

    // A replica refuses writes, names the primary, and applies nothing.
    for r in [R1, R2] {
        let mut replica = client(&cluster.addr(r), REPLY_TIMEOUT).unwrap();
        for key in [None, Some(0xfeed_u128 + r as u128)] {
            let error = replica.incr_detailed(&names[3], 100, key).unwrap_err();
            assert_eq!(error.error_code(), Some(ErrorCode::NotPrimary), "R{r}: {error}");
            assert!(
                error.message().contains(&p),
                "R{r}'s not_primary names {p}: {:?}",
                error.message()
            );
        }
        assert_eq!(replica.get(&names[3]).unwrap(), expected[&names[3]]);
    }
    assert_eq!(primary.get(&names[3]).unwrap(), expected[&names[3]]);

    // The CLI: promoting the primary is refused; stats show the role.
    let output = tally_cli()
        .args(["--json", "--addr", &p, "admin", "promote", "--wait-ms", "500"])
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(1), "promote of a primary: {output:?}");
    let reply: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    assert_eq!(reply["error"], "invalid_argument", "{reply}");
    let output = tally_cli()
        .args(["--json", "--addr", &cluster.addr(R2), "stats"])
        .output()
        .unwrap();
    assert!(output.status.success(), "{output:?}");
    let reply: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    assert_eq!(reply["figures"]["node.role"], ROLE_REPLICA);
}

/// What one failover iteration measured.
struct FailoverFigures {
    acked_before_kill: u64,
    unknown_at_kill: u64,
    retried_keys: u64,
    duplicate_acks: u64,
    final_sum: i64,
    promote_ms: u128,
    serving_ms: u128,
    epoch: u64,
}

const FAILOVER_THREADS: usize = 4;
const FAILOVER_NAMES: usize = 8;
/// Acknowledged writes before the kill may land: the workload has surely started.
const FAILOVER_ACKED_MIN: u64 = 50;
/// The kill lands up to this long after that.
const FAILOVER_KILL_SPREAD_MS: u64 = 400;

/// Keyed increments until `stop` or until the primary is gone; the thread's attempts.
fn failover_client(
    addr: String,
    thread: usize,
    iteration: u64,
    stop: Arc<AtomicBool>,
    acked: Arc<AtomicU64>,
) -> Vec<Attempt> {
    let mut history = Vec::new();
    let Ok(mut client) = client(&addr, REPLY_TIMEOUT) else {
        return history;
    };
    let names = names("failover", FAILOVER_NAMES);
    let mut seq = 0u64;
    while !stop.load(Ordering::Acquire) {
        let key = (u128::from(iteration) << 96) | ((thread as u128) << 64) | u128::from(seq);
        let name = &names[(seq as usize + thread) % FAILOVER_NAMES];
        seq += 1;
        match send(&mut client, &mut history, name, key, 1).0 {
            Ok(_) => {
                acked.fetch_add(1, Ordering::AcqRel);
            }
            // The primary is gone: every later send would fail the same way.
            Err(e) if e.is_connection() => break,
            Err(_) => {}
        }
    }
    history
}

fn failover_iteration(iteration: u64, rng: &mut Rng) -> FailoverFigures {
    let mut cluster = Cluster::start(Options::default());
    cluster.wait_ready(PRIMARY);
    let (_, epoch_before) = role_and_epoch(&cluster.addr(PRIMARY));

    let stop = Arc::new(AtomicBool::new(false));
    let acked = Arc::new(AtomicU64::new(0));
    let threads: Vec<_> = (0..FAILOVER_THREADS)
        .map(|t| {
            let (addr, stop, acked) = (cluster.addr(PRIMARY), stop.clone(), acked.clone());
            std::thread::spawn(move || failover_client(addr, t, iteration, stop, acked))
        })
        .collect();
    wait_until("the workload to get acks", CATCH_UP_TIMEOUT, || {
        acked.load(Ordering::Acquire) >= FAILOVER_ACKED_MIN
    });
    // The fault's timing, not a wait for anything: the workload runs meanwhile.
    std::thread::sleep(Duration::from_millis(rng.below(FAILOVER_KILL_SPREAD_MS)));
    cluster.kill(PRIMARY);
    stop.store(true, Ordering::Release);
    let mut history: Vec<Attempt> = threads.into_iter().flat_map(|t| t.join().unwrap()).collect();
    let acked_before_kill = history.iter().filter(|a| a.outcome.is_acked()).count() as u64;
    let unknown_at_kill = history.len() as u64 - acked_before_kill;

    let r1 = cluster.addr(R1);
    let started = Instant::now();
    let epoch = client(&r1, REPLY_TIMEOUT + Duration::from_millis(u64::from(PROMOTE_WAIT_MS)))
        .and_then(|mut c| c.promote(false, PROMOTE_WAIT_MS))
        .unwrap_or_else(|e| panic!("promote R1 with R2 up: {e}"));
    let promote_ms = started.elapsed().as_millis();
    assert!(
        epoch as i64 > epoch_before,
        "the new epoch {epoch} is above {epoch_before}"
    );
    // The reply comes once the promotion succeeded; the node then restarts as primary.
    let serving_epoch = cluster.wait_role(R1, ROLE_PRIMARY);
    let serving_ms = started.elapsed().as_millis();
    assert_eq!(
        serving_epoch, epoch as i64,
        "R1 serves under the epoch PROMOTE returned"
    );

    // Every key without an ack is sent again, same name and delta, until R1 acks it.
    let mut unacked: Vec<(String, u128)> = Vec::new();
    let acked_keys: std::collections::HashSet<u128> =
        history.iter().filter(|a| a.outcome.is_acked()).map(|a| a.key).collect();
    for attempt in &history {
        if !acked_keys.contains(&attempt.key) && !unacked.iter().any(|(_, k)| *k == attempt.key) {
            unacked.push((attempt.name.clone(), attempt.key));
        }
    }
    for (name, key) in &unacked {
        send_until_acked(&r1, &mut history, name, *key, 1, CATCH_UP_TIMEOUT);
    }

    let names = names("failover", FAILOVER_NAMES);
    let report = check_rule(&r1, &history, &names);
    assert_eq!(report.unknown_keys(), 0, "every key was retried until acked");
    let finals = read_values(&r1, &names).unwrap();
    let final_sum: i64 = finals.values().sum();
    assert_eq!(
        final_sum,
        report.acked_keys() as i64,
        "each distinct key counts exactly once (delta 1 each)"
    );
    // R2 now follows R1.
    assert_replica_matches(&cluster, R1, R2, &finals);
    assert_eq!(role_and_epoch(&cluster.addr(R2)), (ROLE_REPLICA, epoch as i64));
    FailoverFigures {
        acked_before_kill,
        unknown_at_kill,
        retried_keys: unacked.len() as u64,
        duplicate_acks: report.duplicate_acks,
        final_sum,
        promote_ms,
        serving_ms,
        epoch,
    }
}

#[test]
fn failover_keeps_every_acked_increment_exactly_once() {
    let _serial = serial();
    let iterations: u64 = std::env::var("TALLY_FAILOVER_ITERATIONS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(2);
    let mut rng = Rng::from_env();
    let mut promote_ms_max = 0;
    for iteration in 0..iterations {
        let f = failover_iteration(iteration, &mut rng);
        println!(
            "failover {iteration}: acked before kill {}, unacked at kill {}, retried keys {} \
             (already applied {}), final value {}, promote reply {} ms, serving as primary {} ms (epoch {})",
            f.acked_before_kill,
            f.unknown_at_kill,
            f.retried_keys,
            f.duplicate_acks,
            f.final_sum,
            f.promote_ms,
            f.serving_ms,
            f.epoch
        );
        assert!(f.acked_before_kill >= FAILOVER_ACKED_MIN);
        promote_ms_max = promote_ms_max.max(f.serving_ms);
    }
    println!(
        "failover: {iterations} iterations, every acked increment counted once, serving as primary at most {promote_ms_max} ms after PROMOTE"
    );
}

#[test]
fn a_replica_killed_and_restarted_catches_up() {
    let _serial = serial();
    let mut cluster = Cluster::start(Options::default());
    cluster.wait_ready(PRIMARY);
    let p = cluster.addr(PRIMARY);
    let mut primary = client(&p, REPLY_TIMEOUT).unwrap();
    let names = names("restart", 8);
    let mut history = Vec::new();
    write_all_acked(&mut primary, &mut history, &names, 1 << 64, 200);
    cluster.kill(R1);
    // Quorum is still met through R2.
    write_all_acked(&mut primary, &mut history, &names, 2 << 64, 300);
    cluster.start_node(R1);
    let report = check_rule(&p, &history, &names);
    let expected = read_values(&p, &names).unwrap();
    assert_replica_matches(&cluster, PRIMARY, R1, &expected);
    assert_replica_matches(&cluster, PRIMARY, R2, &expected);
    assert_eq!(role_and_epoch(&cluster.addr(R1)).0, ROLE_REPLICA);
    // And it keeps following: new writes reach it too.
    write_all_acked(&mut primary, &mut history, &names, 3 << 64, 50);
    let expected = read_values(&p, &names).unwrap();
    assert_replica_matches(&cluster, PRIMARY, R1, &expected);
    println!("restart: {report}");
}

#[test]
fn a_wiped_replica_catches_up_from_nothing() {
    let _serial = serial();
    let mut cluster = Cluster::start(Options::default());
    cluster.wait_ready(PRIMARY);
    let p = cluster.addr(PRIMARY);
    let mut primary = client(&p, REPLY_TIMEOUT).unwrap();
    let names = names("wiped", 8);
    let mut history = Vec::new();
    write_all_acked(&mut primary, &mut history, &names, 1 << 64, 300);
    cluster.wait_caught_up(PRIMARY, R2);
    cluster.stop(R2);
    cluster.wipe(R2);
    write_all_acked(&mut primary, &mut history, &names, 2 << 64, 100);
    cluster.start_node(R2);
    check_rule(&p, &history, &names);
    let expected = read_values(&p, &names).unwrap();
    assert_replica_matches(&cluster, PRIMARY, R2, &expected);
    let s = stats(&cluster.addr(R2)).unwrap();
    let snapshots: Vec<i64> = (0..SHARDS)
        .map(|shard| s.get(&format!("shard.{shard}.snapshots")).copied().unwrap_or(-1))
        .collect();
    println!("wiped replica caught up: values {expected:?}, its shard.N.snapshots {snapshots:?}");
}

/// A replica further behind than the primary's ship log (here 1 KiB per shard) gets a snapshot
/// of the primary's shard, then the stream.
#[test]
fn a_replica_behind_the_ship_log_catches_up_by_snapshot() {
    let _serial = serial();
    let mut cluster = Cluster::start(Options {
        extra: vec!["--ship-log-kib".into(), "1".into()],
        ..Options::default()
    });
    cluster.wait_ready(PRIMARY);
    let p = cluster.addr(PRIMARY);
    let mut primary = client(&p, REPLY_TIMEOUT).unwrap();
    let names = names("snap", 8);
    let mut history = Vec::new();
    write_all_acked(&mut primary, &mut history, &names, 1 << 64, 100);
    cluster.wait_caught_up(PRIMARY, R2);
    cluster.stop(R2);
    cluster.wipe(R2);
    // Far more than 1 KiB of records per shard while R2 is away.
    write_all_acked(&mut primary, &mut history, &names, 2 << 64, 400);
    cluster.start_node(R2);
    check_rule(&p, &history, &names);
    let expected = read_values(&p, &names).unwrap();
    assert_replica_matches(&cluster, PRIMARY, R2, &expected);
    let s = stats(&p).unwrap();
    let sent: i64 = (0..SHARDS)
        .map(|shard| {
            s.get(&format!("shard.{shard}.repl.1.snapshots_sent"))
                .copied()
                .unwrap_or(0)
        })
        .sum();
    assert!(sent >= 1, "the primary sent R2 no snapshot: {s:?}");
    println!("replica behind the ship log: caught up by {sent} snapshot(s), values {expected:?}");
}

/// A namespace's ack mode is a floor: with one replica cut, quorum writes go on while writes to
/// the `bill:` namespace (`--ack-namespace bill:=all`) fail with `replicas_unavailable`.
#[test]
fn a_namespace_ack_mode_all_needs_every_replica() {
    let _serial = serial();
    let cluster = Cluster::start(Options {
        replication_wait_ms: 1_000,
        proxied: true,
        extra: vec!["--ack-namespace".into(), "bill:=all".into()],
        ..Options::default()
    });
    cluster.wait_ready(PRIMARY);
    let p = cluster.addr(PRIMARY);
    let mut primary = client(&p, REPLY_TIMEOUT).unwrap();
    let plain = names("plain", 2);
    let bill = names("bill:", 2);
    let mut history = Vec::new();
    write_all_acked(&mut primary, &mut history, &plain, 1 << 64, 10);
    write_all_acked(&mut primary, &mut history, &bill, 2 << 64, 10);
    cluster.proxy(R1).cut();
    write_all_acked(&mut primary, &mut history, &plain, 3 << 64, 10);
    assert_refused_for_replicas(
        &mut primary,
        &mut history,
        &bill[0],
        4 << 64,
        "bill: needs both replicas",
    );
    cluster.proxy(R1).heal();
    send_until_acked(&p, &mut history, &bill[1], 5 << 64, 1, CATCH_UP_TIMEOUT);
    let mut all = plain.clone();
    all.extend(bill.iter().cloned());
    let report = check_rule(&p, &history, &all);
    println!("namespace ack mode: {report}");
}

/// History is replicated: a replica answers WINDOW, EVENTS and AUDIT for what it applied exactly as
/// the primary does (it replays the primary's records with their times).
#[test]
fn a_replica_answers_history_like_its_primary() {
    let _serial = serial();
    let cluster = Cluster::start(Options::default());
    cluster.wait_ready(PRIMARY);
    let p = cluster.addr(PRIMARY);
    let mut primary = client(&p, REPLY_TIMEOUT).unwrap();
    let names = names("hist", 3);
    let mut history = Vec::new();
    write_all_acked(&mut primary, &mut history, &names, 1 << 64, 30);
    primary.reset(&names[0], 7, "replicated audit").unwrap();
    cluster.wait_caught_up(PRIMARY, R1);
    let mut replica = client(&cluster.addr(R1), REPLY_TIMEOUT).unwrap();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64;
    let (from, to) = (now - 600_000, now + 60_000);
    let mut windowed = 0;
    for name in &names {
        let on_p = primary.window(name, 10, tally_sdk::WindowUnit::Minute).unwrap().value;
        let on_r = replica.window(name, 10, tally_sdk::WindowUnit::Minute).unwrap().value;
        assert_eq!(on_p, on_r, "WINDOW of {name} on the replica");
        windowed += on_p;
        let events = |c: &mut Client| {
            let mut all = Vec::new();
            c.events_each(name, from, to, |page| {
                all.extend(page.iter().map(|e| (e.time_ms, e.delta, e.key)));
                true
            })
            .unwrap();
            all
        };
        let on_p = events(&mut primary);
        assert_eq!(
            on_p.len() as i64,
            primary.window(name, 10, tally_sdk::WindowUnit::Minute).unwrap().value
        );
        assert_eq!(on_p, events(&mut replica), "EVENTS of {name} on the replica");
    }
    assert_eq!(windowed, 30, "30 increments of 1 in the last 10 minutes");
    let audit = |c: &mut Client| -> Vec<(i64, i64, Vec<u8>)> {
        c.audit(&names[0], from, to)
            .unwrap()
            .into_iter()
            .map(|r| (r.old, r.new, r.reason))
            .collect()
    };
    let on_p = audit(&mut primary);
    assert_eq!(on_p.len(), 1);
    assert_eq!(on_p, audit(&mut replica), "AUDIT on the replica");
}

/// One keyed write that must be refused with `replicas_unavailable` within `REFUSAL_BOUND`.
fn assert_refused_for_replicas(client: &mut Client, history: &mut Vec<Attempt>, name: &str, key: u128, why: &str) {
    let (result, took) = send(client, history, name, key, 1);
    let error = result.expect_err(why);
    assert_eq!(
        error.error_code(),
        Some(ErrorCode::ReplicasUnavailable),
        "{why}: {error}"
    );
    assert!(took < REFUSAL_BOUND, "{why}: refused after {took:?}");
}

#[test]
fn proxy_faults_fail_quorum_writes_cleanly_and_healing_resumes_them() {
    let _serial = serial();
    let wait_ms = 1_000;
    let cluster = Cluster::start(Options {
        replication_wait_ms: wait_ms,
        proxied: true,
        ..Options::default()
    });
    cluster.wait_ready(PRIMARY);
    let p = cluster.addr(PRIMARY);
    let mut primary = client(&p, REPLY_TIMEOUT).unwrap();
    let names = names("proxy", 4);
    let mut history = Vec::new();
    write_all_acked(&mut primary, &mut history, &names, 1 << 64, 20);
    assert!(
        cluster.proxy(R1).bytes_forwarded() > 0,
        "P reaches R1 through its proxy"
    );
    assert!(
        cluster.proxy(R2).bytes_forwarded() > 0,
        "P reaches R2 through its proxy"
    );

    // One replica cut: the other still makes a quorum.
    cluster.proxy(R1).cut();
    write_all_acked(&mut primary, &mut history, &names, 2 << 64, 20);

    // Both cut: refused within the wait, reads go on.
    cluster.proxy(R2).cut();
    assert_refused_for_replicas(&mut primary, &mut history, &names[0], 3 << 64, "both replicas cut");
    let started = Instant::now();
    primary.get(&names[0]).expect("reads on P while its replicas are cut");
    assert!(
        started.elapsed() < Duration::from_secs(1),
        "a read does not wait for replicas"
    );

    // Healed: writes are acknowledged again (after the replicas reconnect).
    cluster.proxy(R1).heal();
    cluster.proxy(R2).heal();
    send_until_acked(&p, &mut history, &names[1], 4 << 64, 1, CATCH_UP_TIMEOUT);
    cluster.wait_ready(PRIMARY);
    write_all_acked(&mut primary, &mut history, &names, 5 << 64, 20);

    // Delayed: still acknowledged, each after at least one round trip through the proxy.
    let delay = Duration::from_millis(50);
    cluster.proxy(R1).delay(delay);
    cluster.proxy(R2).delay(delay);
    for n in 0..5u64 {
        let (result, took) = send(&mut primary, &mut history, &names[2], (6 << 64) + u128::from(n), 1);
        result.expect("a write with delayed replicas");
        assert!(took >= 2 * delay, "a quorum ack waited for a replica: took {took:?}");
    }

    // Dropped: a silent network fails writes like a cut; healing resumes them.
    cluster.proxy(R1).drop_bytes();
    cluster.proxy(R2).drop_bytes();
    assert_refused_for_replicas(&mut primary, &mut history, &names[3], 7 << 64, "both replicas silent");
    cluster.proxy(R1).heal();
    cluster.proxy(R2).heal();
    send_until_acked(&p, &mut history, &names[3], 8 << 64, 1, CATCH_UP_TIMEOUT);

    let report = check_rule(&p, &history, &names);
    let expected = read_values(&p, &names).unwrap();
    for r in [R1, R2] {
        assert_replica_matches(&cluster, PRIMARY, r, &expected);
    }
    println!("proxy faults: {report}");
}
