//! The Jepsen counter rule under SIGKILL: a real node takes concurrent keyed increments and is
//! killed at random moments, then restarted on the same data directory. After each restart every
//! counter's value lies between the sum of acknowledged and the sum of attempted increments, and
//! retrying every unacknowledged key (same key, same delta) makes the value exactly the sum of all
//! attempts: nothing acked is lost and no retry counts twice.
//!
//! `TALLY_KILL_ITERATIONS` sets the number of kills (3 by default, for CI; run 100 for a long run:
//! `TALLY_KILL_ITERATIONS=100 cargo test -p tally-tests --test kill -- --nocapture`).

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tally_proto::{ErrorCode, Reply, Request};
use tally_tests::{DataDir, RawConn, RawReply, Server};

const NAMES: usize = 8;
const THREADS: usize = 4;
const OPS_PER_FRAME: usize = 16;
const DEPTH: usize = 4;

/// What one client thread sent: every (name index, key) attempted and whether it was acked.
#[derive(Default)]
struct Ledger {
    attempted: Vec<(usize, u128)>,
    acked: Vec<(usize, u128)>,
}

fn name(i: usize) -> Vec<u8> {
    format!("kill:{i}").into_bytes()
}

/// Sends keyed INCR(+1) frames until the connection breaks or `stop` is set.
fn client(addr: String, thread: usize, first_key: u128, stop: Arc<AtomicBool>) -> Ledger {
    let mut ledger = Ledger::default();
    let Ok(mut conn) = RawConn::try_connect(&addr) else {
        return ledger;
    };
    let mut key = first_key;
    let mut in_flight: std::collections::VecDeque<(u64, Vec<(usize, u128)>)> = Default::default();
    let mut frame_no = 0usize;
    loop {
        while in_flight.len() < DEPTH && !stop.load(Ordering::Relaxed) {
            let ops: Vec<(usize, u128)> = (0..OPS_PER_FRAME)
                .map(|k| {
                    key += 1;
                    ((thread + frame_no + k) % NAMES, key)
                })
                .collect();
            frame_no += 1;
            let names: Vec<Vec<u8>> = ops.iter().map(|(n, _)| name(*n)).collect();
            let requests: Vec<Request> = ops
                .iter()
                .zip(&names)
                .map(|((_, key), name)| Request::Incr {
                    name,
                    delta: 1,
                    key: Some(*key),
                })
                .collect();
            let (bytes, id) = conn.frame(&requests);
            ledger.attempted.extend(ops.iter().copied());
            if conn.try_send_bytes(&bytes).is_err() {
                return ledger;
            }
            in_flight.push_back((id, ops));
        }
        let Some((want, ops)) = in_flight.pop_front() else {
            return ledger;
        };
        match conn.try_read_reply() {
            Ok((id, RawReply::Ops(replies))) => {
                assert_eq!(id, want);
                for (op, reply) in ops.into_iter().zip(replies) {
                    match reply.result {
                        Ok(Reply::Incr { .. }) => ledger.acked.push(op),
                        Err(e) if e.code == ErrorCode::ShuttingDown as u16 => {}
                        other => panic!("unexpected reply {other:?}"),
                    }
                }
            }
            Ok((_, RawReply::Refused { code, message })) => panic!("frame refused: {code} {message}"),
            Err(_) => return ledger,
        }
    }
}

fn read_all(addr: &str) -> Vec<i64> {
    let mut conn = RawConn::connect(addr);
    let names: Vec<Vec<u8>> = (0..NAMES).map(name).collect();
    let gets: Vec<Request> = names
        .iter()
        .map(|n| Request::Get {
            name: n,
            fresh: true,
            token: None,
        })
        .collect();
    match conn.call(&gets) {
        RawReply::Ops(ops) => ops
            .into_iter()
            .map(|op| match op.result {
                Ok(Reply::Get { value, .. }) => value,
                other => panic!("GET failed: {other:?}"),
            })
            .collect(),
        RawReply::Refused { code, message } => panic!("refused {code} {message}"),
    }
}

/// Resends every unacked key until each is acked (the node dedups the ones it already applied).
fn retry_unacked(addr: &str, unacked: &[(usize, u128)]) -> (usize, usize) {
    let mut conn = RawConn::connect(addr);
    let (mut applied, mut duplicates) = (0, 0);
    for chunk in unacked.chunks(OPS_PER_FRAME) {
        let names: Vec<Vec<u8>> = chunk.iter().map(|(n, _)| name(*n)).collect();
        let requests: Vec<Request> = chunk
            .iter()
            .zip(&names)
            .map(|((_, key), name)| Request::Incr {
                name,
                delta: 1,
                key: Some(*key),
            })
            .collect();
        match conn.call(&requests) {
            RawReply::Ops(ops) => {
                for op in ops {
                    match op.result {
                        Ok(Reply::Incr { flags, .. }) if flags & tally_proto::reply::REPLY_DUPLICATE != 0 => {
                            duplicates += 1
                        }
                        Ok(Reply::Incr { .. }) => applied += 1,
                        other => panic!("retry failed: {other:?}"),
                    }
                }
            }
            RawReply::Refused { code, message } => panic!("refused {code} {message}"),
        }
    }
    (applied, duplicates)
}

#[test]
fn acked_increments_survive_sigkill_and_retries_count_once() {
    let iterations: usize = std::env::var("TALLY_KILL_ITERATIONS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(3);
    let dir = DataDir::new("kill");
    let data_dir = dir.0.clone();
    let mut server = Server::start_in(data_dir.clone(), &["--shards", "2"]);
    // Everything every thread ever attempted, and every key acked at least once (by a first send
    // or a retry).
    let mut attempted_total = [0i64; NAMES];
    let mut acked_total = [0i64; NAMES];
    let (mut kills, mut acked_ops, mut retried, mut duplicates, mut violations) = (0, 0, 0, 0, 0);
    let mut seed = 0x9e37_79b9_7f4a_7c15_u64;
    let mut next_key = 1u128 << 64;
    for iteration in 0..iterations {
        let stop = Arc::new(AtomicBool::new(false));
        let threads: Vec<_> = (0..THREADS)
            .map(|t| {
                let (addr, stop) = (server.addr.clone(), stop.clone());
                let first_key = next_key + ((t as u128) << 40);
                std::thread::spawn(move || client(addr, t, first_key, stop))
            })
            .collect();
        next_key += 1 << 48;
        // A random moment to kill: the workload runs meanwhile (this is the fault's timing, not
        // a wait for any condition).
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        std::thread::sleep(Duration::from_millis(30 + seed % 200));
        server.kill();
        kills += 1;
        stop.store(true, Ordering::Relaxed);
        let ledgers: Vec<Ledger> = threads.into_iter().map(|t| t.join().unwrap()).collect();
        server = Server::start_in(data_dir.clone(), &["--shards", "2"]);

        let acked: Mutex<HashMap<u128, usize>> = Mutex::new(HashMap::new());
        let mut unacked = Vec::new();
        for ledger in &ledgers {
            for &(n, key) in &ledger.acked {
                acked.lock().unwrap().insert(key, n);
                acked_total[n] += 1;
                acked_ops += 1;
            }
        }
        for ledger in &ledgers {
            for &(n, key) in &ledger.attempted {
                attempted_total[n] += 1;
                if !acked.lock().unwrap().contains_key(&key) {
                    unacked.push((n, key));
                }
            }
        }
        let values = read_all(&server.addr);
        for n in 0..NAMES {
            if values[n] < acked_total[n] || values[n] > attempted_total[n] {
                violations += 1;
                eprintln!(
                    "iteration {iteration}: kill:{n} = {} outside [acked {}, attempted {}]",
                    values[n], acked_total[n], attempted_total[n]
                );
            }
        }
        let (applied, dups) = retry_unacked(&server.addr, &unacked);
        retried += applied + dups;
        duplicates += dups;
        for &(n, _) in &unacked {
            acked_total[n] += 1;
        }
        let values = read_all(&server.addr);
        for n in 0..NAMES {
            if values[n] != attempted_total[n] {
                violations += 1;
                eprintln!(
                    "iteration {iteration}: after retries kill:{n} = {} but {} distinct keys were sent",
                    values[n], attempted_total[n]
                );
            }
        }
    }
    println!(
        "kill test: kills {kills}, ops acked {acked_ops}, unacked keys retried {retried} \
         (of which already applied {duplicates}), violations {violations}"
    );
    assert!(acked_ops > 0, "the workload acked nothing: the test tested nothing");
    assert_eq!(violations, 0);
    assert_eq!(server.stop(), Some(0));
}

/// Unkeyed increments of a split counter land in every shard's slot and are logged by that shard;
/// after SIGKILL and restart (recovery folds the slots into the owner) the value still lies between
/// the acked and the attempted sums.
#[test]
fn a_split_counter_survives_sigkill() {
    const ITERATIONS: usize = 3;
    let dir = DataDir::new("kill-split");
    let args = ["--shards", "2", "--split-force", "hot:k"];
    let mut server = Server::start_in(dir.0.clone(), &args);
    let (mut acked, mut attempted) = (0i64, 0i64);
    let mut seed = 0x2545_f491_4f6c_dd1d_u64;
    for iteration in 0..ITERATIONS {
        let stop = Arc::new(AtomicBool::new(false));
        let ports = server.shard_ports.clone();
        let threads: Vec<_> = (0..THREADS)
            .map(|t| {
                let addr = format!("127.0.0.1:{}", ports[t % ports.len()]);
                let stop = stop.clone();
                std::thread::spawn(move || {
                    let (mut acked, mut attempted) = (0i64, 0i64);
                    let Ok(mut conn) = RawConn::try_connect(&addr) else {
                        return (0, 0);
                    };
                    let frame: Vec<Request> = (0..OPS_PER_FRAME)
                        .map(|_| Request::Incr {
                            name: b"hot:k",
                            delta: 1,
                            key: None,
                        })
                        .collect();
                    while !stop.load(Ordering::Relaxed) {
                        let (bytes, _) = conn.frame(&frame);
                        attempted += OPS_PER_FRAME as i64;
                        if conn.try_send_bytes(&bytes).is_err() {
                            break;
                        }
                        match conn.try_read_reply() {
                            Ok((_, RawReply::Ops(ops))) => {
                                acked += ops.iter().filter(|op| op.result.is_ok()).count() as i64;
                            }
                            _ => break,
                        }
                    }
                    (acked, attempted)
                })
            })
            .collect();
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        std::thread::sleep(Duration::from_millis(50 + seed % 150));
        server.kill();
        stop.store(true, Ordering::Relaxed);
        for thread in threads {
            let (a, t) = thread.join().unwrap();
            acked += a;
            attempted += t;
        }
        server = Server::start_in(dir.0.clone(), &args);
        let mut conn = RawConn::connect(&server.addr);
        let value = match conn.call(&[Request::Get {
            name: b"hot:k",
            fresh: true,
            token: None,
        }]) {
            RawReply::Ops(mut ops) => match ops.remove(0).result {
                Ok(Reply::Get { value, .. }) => value,
                other => panic!("GET failed: {other:?}"),
            },
            RawReply::Refused { code, message } => panic!("refused {code} {message}"),
        };
        println!("split kill {iteration}: value {value}, acked {acked}, attempted {attempted}");
        assert!(acked > 0, "nothing was acked: the test tested nothing");
        assert!(
            value >= acked && value <= attempted,
            "hot:k = {value} outside [{acked}, {attempted}]"
        );
        // Later iterations count from here: what recovery kept is the new baseline.
        acked = value;
        attempted = value;
    }
    assert_eq!(server.stop(), Some(0));
}

/// The SDK's safe-retry option across a crash: a client with `retry_writes` keeps incrementing
/// while the node is SIGKILLed and restarted on the same ports; every `incr` that returned Ok
/// counts exactly once (a resend of an increment the node had already made durable is answered as
/// a duplicate), so the final value equals the number of successful calls.
#[test]
fn sdk_retries_are_exactly_once_across_a_restart() {
    use tally_sdk::{Client, RetryPolicy};
    const CALLS: usize = 2000;
    let free_port = || {
        std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port()
    };
    let (main, base) = (free_port(), free_port());
    let dir = DataDir::new("kill-sdk");
    let (listen, base) = (format!("127.0.0.1:{main}"), base.to_string());
    let args = ["--shards", "2", "--listen", &listen, "--shard-port-base", &base];
    let server = Server::start_in(dir.0.clone(), &args);
    let addr = server.addr.clone();
    let worker = std::thread::spawn(move || {
        let mut client = Client::builder()
            .retry_writes(RetryPolicy::new(200, Duration::from_millis(20)))
            .connect(&addr)
            .unwrap();
        let mut ok = 0i64;
        for i in 0..CALLS {
            client.incr(format!("retry:{}", i % 4), 1).unwrap();
            ok += 1;
        }
        ok
    });
    std::thread::sleep(Duration::from_millis(150));
    assert!(
        !worker.is_finished(),
        "the kill must land while the client is still incrementing"
    );
    server.kill();
    let server = Server::start_in(dir.0.clone(), &args);
    let ok = worker.join().unwrap();
    assert_eq!(ok, CALLS as i64);
    let mut client = Client::connect(&server.addr).unwrap();
    let total: i64 = (0..4).map(|n| client.get(format!("retry:{n}")).unwrap()).sum();
    assert_eq!(total, ok, "every successful call counted exactly once");
    assert_eq!(server.stop(), Some(0));
}
