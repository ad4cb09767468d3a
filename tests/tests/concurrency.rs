//! Many clients at once: sums are exact, CAS races have exactly one winner, bounded decrements
//! never cross their floor, and a split counter sums exactly across shards.

use std::sync::{Arc, Barrier};

use tally_proto::reply::REPLY_SPLIT;
use tally_proto::{CounterKind, ErrorCode, Reply, ReplyOp, Request};
use tally_tests::{RawConn, RawReply, Server};

fn ops(reply: RawReply) -> Vec<ReplyOp> {
    match reply {
        RawReply::Ops(ops) => ops,
        RawReply::Refused { code, message } => panic!("frame refused: {code} {message}"),
    }
}

fn get_value(conn: &mut RawConn, name: &[u8]) -> i64 {
    match ops(conn.call(&[Request::Get {
        name,
        fresh: true,
        token: None,
    }]))
    .remove(0)
    .result
    {
        Ok(Reply::Get { value, .. }) => value,
        other => panic!("GET failed: {other:?}"),
    }
}

/// Addresses a client may use: the shared main port and every shard's direct port, so that some
/// ops arrive at their owner and others are forwarded.
fn addresses(server: &Server) -> Vec<String> {
    let mut all = vec![server.addr.clone()];
    all.extend(server.shard_ports.iter().map(|p| format!("127.0.0.1:{p}")));
    all
}

#[test]
fn concurrent_increments_sum_exactly() {
    const THREADS: usize = 8;
    const FRAMES: usize = 150;
    const OPS_PER_FRAME: usize = 16;
    const DEPTH: usize = 8;
    let server = Server::start(&[]);
    let addresses = addresses(&server);
    let shared: Vec<Vec<u8>> = (0..4).map(|i| format!("shared:{i}").into_bytes()).collect();
    let barrier = Arc::new(Barrier::new(THREADS));
    let threads: Vec<_> = (0..THREADS)
        .map(|t| {
            let addr = addresses[t % addresses.len()].clone();
            let shared = shared.clone();
            let barrier = barrier.clone();
            std::thread::spawn(move || {
                let mut conn = RawConn::connect(&addr);
                let own: Vec<Vec<u8>> = (0..8).map(|i| format!("own:{t}:{i}").into_bytes()).collect();
                barrier.wait();
                let mut in_flight = std::collections::VecDeque::new();
                for f in 0..FRAMES {
                    let names: Vec<&[u8]> = (0..OPS_PER_FRAME)
                        .map(|k| {
                            if k % 2 == 0 {
                                &shared[(f + k) % 4][..]
                            } else {
                                &own[(f + k) % 8][..]
                            }
                        })
                        .collect();
                    let frame: Vec<Request> = names
                        .iter()
                        .map(|name| Request::Incr {
                            name,
                            delta: 1,
                            key: None,
                        })
                        .collect();
                    let (bytes, id) = conn.frame(&frame);
                    conn.send_bytes(&bytes);
                    in_flight.push_back(id);
                    if in_flight.len() == DEPTH || f == FRAMES - 1 {
                        while let Some(want) = in_flight.pop_front() {
                            let (id, reply) = conn.read_reply();
                            assert_eq!(id, want);
                            assert!(ops(reply).iter().all(|op| op.result.is_ok()));
                        }
                    }
                }
            })
        })
        .collect();
    for thread in threads {
        thread.join().unwrap();
    }
    let mut conn = RawConn::connect(&server.addr);
    let shared_total: i64 = shared.iter().map(|name| get_value(&mut conn, name)).sum();
    assert_eq!(shared_total, (THREADS * FRAMES * OPS_PER_FRAME / 2) as i64);
    for t in 0..THREADS {
        let own_total: i64 = (0..8)
            .map(|i| get_value(&mut conn, format!("own:{t}:{i}").as_bytes()))
            .sum();
        assert_eq!(own_total, (FRAMES * OPS_PER_FRAME / 2) as i64, "thread {t}");
    }
}

#[test]
fn cas_race_has_exactly_one_winner() {
    const THREADS: usize = 8;
    let server = Server::start(&[]);
    let addresses = addresses(&server);
    for round in 0..5 {
        let name = format!("slot:{round}");
        let mut setup = RawConn::connect(&server.addr);
        let created = ops(setup.call(&[Request::Create {
            name: name.as_bytes(),
            kind: CounterKind::Strict,
            initial: 0,
            min: None,
            max: None,
        }]));
        assert!(created[0].result.is_ok());
        let barrier = Arc::new(Barrier::new(THREADS));
        let threads: Vec<_> = (0..THREADS)
            .map(|t| {
                let (addr, name, barrier) = (addresses[t % addresses.len()].clone(), name.clone(), barrier.clone());
                std::thread::spawn(move || {
                    let mut conn = RawConn::connect(&addr);
                    barrier.wait();
                    let new = t as i64 + 1;
                    ops(conn.call(&[Request::Cas {
                        name: name.as_bytes(),
                        expected: 0,
                        new,
                    }]))
                    .remove(0)
                })
            })
            .collect();
        let results: Vec<ReplyOp> = threads.into_iter().map(|t| t.join().unwrap()).collect();
        let winners: Vec<i64> = results
            .iter()
            .filter_map(|r| match &r.result {
                Ok(Reply::Cas { value, .. }) => Some(*value),
                _ => None,
            })
            .collect();
        assert_eq!(winners.len(), 1, "round {round}: {results:?}");
        for loser in results.iter().filter(|r| r.result.is_err()) {
            let error = loser.result.as_ref().unwrap_err();
            assert_eq!(error.code, ErrorCode::CasMismatch as u16);
            assert_eq!(error.current, Some(winners[0]), "a loser sees the winner's value");
        }
        assert_eq!(get_value(&mut setup, name.as_bytes()), winners[0]);
    }
}

#[test]
fn bounded_decrements_never_cross_the_floor() {
    const THREADS: usize = 8;
    const TRIES: usize = 40;
    const STOCK: i64 = 100;
    let server = Server::start(&[]);
    let addresses = addresses(&server);
    let mut setup = RawConn::connect(&server.addr);
    let create = Request::Create {
        name: b"inv:sku",
        kind: CounterKind::Strict,
        initial: STOCK,
        min: Some(0),
        max: None,
    };
    assert!(ops(setup.call(&[create]))[0].result.is_ok());
    let barrier = Arc::new(Barrier::new(THREADS));
    let threads: Vec<_> = (0..THREADS)
        .map(|t| {
            let (addr, barrier) = (addresses[t % addresses.len()].clone(), barrier.clone());
            std::thread::spawn(move || {
                let mut conn = RawConn::connect(&addr);
                barrier.wait();
                let (mut taken, mut refused) = (0i64, 0i64);
                for _ in 0..TRIES {
                    let op = Request::AddBounded {
                        name: b"inv:sku",
                        delta: -1,
                        min: 0,
                        max: i64::MAX,
                        key: None,
                    };
                    match ops(conn.call(&[op])).remove(0).result {
                        Ok(Reply::AddBounded { value, .. }) => {
                            assert!(value >= 0);
                            taken += 1;
                        }
                        Err(error) => {
                            assert_eq!(error.code, ErrorCode::BoundViolation as u16);
                            assert_eq!(error.current, Some(0), "only an empty stock refuses a -1");
                            refused += 1;
                        }
                        Ok(other) => panic!("unexpected {other:?}"),
                    }
                }
                (taken, refused)
            })
        })
        .collect();
    let (taken, refused) = threads
        .into_iter()
        .map(|t| t.join().unwrap())
        .fold((0, 0), |a, b| (a.0 + b.0, a.1 + b.1));
    assert_eq!(taken, STOCK);
    assert_eq!(refused, (THREADS * TRIES) as i64 - STOCK);
    assert_eq!(get_value(&mut setup, b"inv:sku"), 0);
}

#[test]
fn a_split_counter_sums_exactly_across_shards() {
    const THREADS: usize = 6;
    const FRAMES: usize = 200;
    const OPS_PER_FRAME: usize = 32;
    let server = Server::start(&["--shards", "2", "--split-force", "hot:x"]);
    let addresses = addresses(&server);
    let barrier = Arc::new(Barrier::new(THREADS));
    let threads: Vec<_> = (0..THREADS)
        .map(|t| {
            let (addr, barrier) = (addresses[t % addresses.len()].clone(), barrier.clone());
            std::thread::spawn(move || {
                let mut conn = RawConn::connect(&addr);
                barrier.wait();
                let mut split_seen = false;
                for _ in 0..FRAMES {
                    let frame: Vec<Request> = (0..OPS_PER_FRAME)
                        .map(|_| Request::Incr {
                            name: b"hot:x",
                            delta: 1,
                            key: None,
                        })
                        .collect();
                    for op in ops(conn.call(&frame)) {
                        match op.result {
                            Ok(Reply::Incr { flags, .. }) => split_seen |= flags & REPLY_SPLIT != 0,
                            other => panic!("INCR failed: {other:?}"),
                        }
                    }
                }
                split_seen
            })
        })
        .collect();
    let split_seen = threads.into_iter().all(|t| t.join().unwrap());
    assert!(split_seen, "every client was told the counter is split");
    let mut conn = RawConn::connect(&server.addr);
    assert_eq!(
        get_value(&mut conn, b"hot:x"),
        (THREADS * FRAMES * OPS_PER_FRAME) as i64
    );
    let stats = ops(conn.call(&[Request::Stats])).remove(0);
    match stats.result {
        Ok(Reply::Stats(stats)) => {
            assert!(
                stats.split.iter().any(|name| name == b"hot:x"),
                "STATS lists the split counter"
            );
            let answered = stats
                .figures
                .iter()
                .find(|(k, _)| k == "node.shards_answered")
                .map(|(_, v)| *v);
            assert_eq!(answered, Some(2));
        }
        other => panic!("STATS failed: {other:?}"),
    }
}
