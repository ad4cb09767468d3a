//! The SDK and the `tally` CLI against a real node: shard-aware and forwarded paths agree, split
//! counters are spread and exact, keys dedup, the Unix socket serves the same counters.

use std::process::Command;
use std::sync::{Arc, Barrier};

use tally_sdk::{AsyncClient, Client, CounterSpec, ErrorCode, Pipeline};
use tally_tests::Server;

#[test]
fn shard_aware_and_forwarded_clients_sum_exactly() {
    const THREADS: usize = 6;
    const OPS: usize = 3000;
    let server = Server::start(&[]);
    let barrier = Arc::new(Barrier::new(THREADS));
    let threads: Vec<_> = (0..THREADS)
        .map(|t| {
            let (addr, barrier) = (server.addr.clone(), barrier.clone());
            std::thread::spawn(move || {
                let mut client = Client::builder().shard_aware(t % 2 == 0).connect(&addr).unwrap();
                assert_eq!(client.is_shard_aware(), t % 2 == 0);
                let mut pipeline = Pipeline::new().batch(64).unwrap().depth(8).unwrap();
                for i in 0..OPS {
                    pipeline.incr(format!("page:{}", i % 50), 1);
                }
                barrier.wait();
                for result in client.execute(&pipeline) {
                    result.unwrap();
                }
            })
        })
        .collect();
    for thread in threads {
        thread.join().unwrap();
    }
    let mut client = Client::connect(&server.addr).unwrap();
    let total: i64 = (0..50).map(|i| client.get(format!("page:{i}")).unwrap()).sum();
    assert_eq!(total, (THREADS * OPS) as i64);
    for i in 0..50 {
        assert_eq!(client.get(format!("page:{i}")).unwrap(), (THREADS * OPS / 50) as i64);
    }
}

#[test]
fn split_counters_are_spread_and_exact() {
    const THREADS: usize = 4;
    const OPS: usize = 5000;
    let server = Server::start(&["--shards", "2", "--split-force", "hot:page"]);
    let barrier = Arc::new(Barrier::new(THREADS));
    let threads: Vec<_> = (0..THREADS)
        .map(|_| {
            let (addr, barrier) = (server.addr.clone(), barrier.clone());
            std::thread::spawn(move || {
                let mut client = Client::connect(&addr).unwrap();
                let first = client.incr_detailed("hot:page", 1, None).unwrap();
                assert!(first.split, "a forced split counter is split from its first increment");
                let mut pipeline = Pipeline::new().batch(32).unwrap().depth(4).unwrap();
                for _ in 1..OPS {
                    pipeline.incr("hot:page", 1);
                }
                barrier.wait();
                for result in client.execute(&pipeline) {
                    result.unwrap();
                }
                assert!(client.is_split("hot:page"));
            })
        })
        .collect();
    for thread in threads {
        thread.join().unwrap();
    }
    let mut client = Client::connect(&server.addr).unwrap();
    let reading = client.get_with("hot:page", true, None).unwrap();
    assert_eq!(reading.value, (THREADS * OPS) as i64);
    assert!(reading.split);
    let stats = client.stats().unwrap();
    let slot_writes: i64 = stats
        .figures
        .iter()
        .filter(|(k, _)| k.ends_with(".ops_forwarded_in"))
        .map(|(_, v)| *v)
        .sum();
    // Spread unkeyed increments land on their shard's slot: at most the first increments of each
    // client (before it learnt of the split) and the reads are forwarded.
    assert!(
        slot_writes < (THREADS * OPS / 10) as i64,
        "forwarded {slot_writes} of {}",
        THREADS * OPS
    );
}

#[test]
fn idempotency_keys_dedup_and_conflict() {
    let server = Server::start(&[]);
    let mut client = Client::connect(&server.addr).unwrap();
    let key = 0x1234_5678_9abc_def0_u128;
    let first = client.incr_detailed("billing:acme", 5, Some(key)).unwrap();
    assert_eq!((first.value, first.duplicate), (5, false));
    let again = client.incr_detailed("billing:acme", 5, Some(key)).unwrap();
    assert_eq!((again.value, again.duplicate), (5, true));
    assert_eq!(client.get("billing:acme").unwrap(), 5);
    let conflict = client.incr_detailed("billing:acme", 6, Some(key)).unwrap_err();
    assert_eq!(conflict.error_code(), Some(ErrorCode::IdempotencyConflict));
    assert_eq!(client.get("billing:acme").unwrap(), 5);
}

/// protocol.md §14, "what is checked": dedup is per owner shard. A key reused with another name
/// of the same owner is a conflict; with a name of another shard it is applied as fresh.
#[test]
fn idempotency_conflicts_are_detected_per_owner_shard() {
    let server = Server::start(&["--shards", "2"]);
    let mut client = Client::connect(&server.addr).unwrap();
    let owned_by = |shard: u16, skip: &str| {
        (0..)
            .map(|i| format!("reuse:{i}"))
            .find(|name| name != skip && tally_proto::shard_of(name.as_bytes(), 2) == shard)
            .unwrap()
    };
    let first = owned_by(0, "");
    let same_shard = owned_by(0, &first);
    let other_shard = owned_by(1, "");
    let key = 0x5eed_0000_0000_0001_u128;
    assert!(!client.incr_detailed(&first, 1, Some(key)).unwrap().duplicate);
    let conflict = client.incr_detailed(&same_shard, 1, Some(key)).unwrap_err();
    assert_eq!(conflict.error_code(), Some(ErrorCode::IdempotencyConflict));
    assert_eq!(client.get(&same_shard).unwrap(), 0);
    let elsewhere = client.incr_detailed(&other_shard, 1, Some(key)).unwrap();
    assert_eq!(
        (elsewhere.value, elsewhere.duplicate),
        (1, false),
        "another shard never saw the key"
    );
    // Both shards now remember it: each answers its own first outcome.
    assert!(client.incr_detailed(&first, 1, Some(key)).unwrap().duplicate);
    assert!(client.incr_detailed(&other_shard, 1, Some(key)).unwrap().duplicate);
    assert_eq!((client.get(&first).unwrap(), client.get(&other_shard).unwrap()), (1, 1));
}

#[test]
fn the_unix_socket_serves_the_same_counters() {
    let dir = tally_tests::DataDir::new("unix");
    let socket = dir.0.join("tally.sock");
    let server = Server::start(&["--unix-socket", socket.to_str().unwrap()]);
    assert_eq!(server.unix_socket.as_deref(), Some(socket.as_path()));
    let mut tcp = Client::connect(&server.addr).unwrap();
    let mut unix = Client::connect_unix(&socket).unwrap();
    tcp.incr("side:car", 2).unwrap();
    assert_eq!(unix.incr("side:car", 3).unwrap(), 5);
    assert_eq!(tcp.get("side:car").unwrap(), 5);
}

#[test]
fn the_async_client_works_against_a_real_node() {
    let server = Server::start(&[]);
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let client = AsyncClient::connect(&server.addr).await.unwrap();
        let mut tasks = Vec::new();
        for _ in 0..8 {
            let client = client.clone();
            tasks.push(tokio::spawn(async move {
                for _ in 0..200 {
                    client.incr("async:x", 1).await.unwrap();
                }
            }));
        }
        for task in tasks {
            task.await.unwrap();
        }
        assert_eq!(client.get("async:x").await.unwrap(), 1600);
    });
}

#[test]
fn strict_counters_through_the_sdk() {
    let server = Server::start(&[]);
    let mut client = Client::connect(&server.addr).unwrap();
    client
        .create("inv:sku", CounterSpec::strict().min(0).initial(3))
        .unwrap();
    assert_eq!(client.add_bounded("inv:sku", -2, 0, i64::MAX).unwrap(), 1);
    let refused = client.add_bounded("inv:sku", -2, 0, i64::MAX).unwrap_err();
    assert!(refused.is_bound_violation());
    assert_eq!(refused.current(), Some(1));
    assert_eq!(client.cas("inv:sku", 1, 10).unwrap(), 10);
    assert!(client.cas("inv:sku", 1, 11).unwrap_err().is_cas_mismatch());
    let reset = client.reset("inv:sku", 4, "recount").unwrap();
    assert_eq!((reset.old, reset.new), (10, 4));
}

fn tally(server: &Server, args: &[&str]) -> (i32, String, String) {
    let path = tally_tests::tallyd_path().with_file_name("tally");
    assert!(
        path.exists(),
        "{} missing: run `cargo test --workspace`",
        path.display()
    );
    let output = Command::new(path)
        .arg("--addr")
        .arg(&server.addr)
        .args(args)
        .output()
        .unwrap();
    let text = |b: &[u8]| String::from_utf8_lossy(b).trim().to_string();
    (
        output.status.code().unwrap_or(-1),
        text(&output.stdout),
        text(&output.stderr),
    )
}

#[test]
fn the_cli_session_from_the_readme() {
    let server = Server::start(&[]);
    assert_eq!(tally(&server, &["incr", "views:home"]), (0, "1".into(), String::new()));
    assert_eq!(tally(&server, &["incr", "views:home", "41"]).1, "42");
    assert_eq!(tally(&server, &["incr", "views:home", "-2"]).1, "40");
    assert_eq!(tally(&server, &["get", "views:home"]).1, "40");
    assert_eq!(
        tally(
            &server,
            &["create", "inv:sku1", "--strict", "--min", "0", "--initial", "3"]
        )
        .0,
        0
    );
    let (code, stdout, stderr) = tally(&server, &["add", "inv:sku1", "-5", "--min", "0"]);
    assert_eq!(code, 1, "a server refusal exits 1");
    assert!(stdout.is_empty());
    assert!(
        stderr.starts_with("tally: bound_violation (10)") && stderr.contains('3'),
        "{stderr}"
    );
    assert_eq!(tally(&server, &["add", "inv:sku1", "-3", "--min", "0"]).1, "0");
    let (code, json, _) = tally(&server, &["--json", "get", "views:home"]);
    assert_eq!(code, 0);
    let parsed: serde_json::Value = serde_json::from_str(&json).unwrap();
    assert_eq!(parsed["value"], 40);
    let (code, out, _) = tally(&server, &["reset", "views:home", "0", "--reason", "test"]);
    assert_eq!((code, out.contains("40") && out.contains('0')), (0, true));
    assert_eq!(tally(&server, &["stats"]).0, 0);
    assert_eq!(
        tally(&server, &["cas", "views:home", "0", "1"]).0,
        1,
        "CAS on an analytic counter is refused"
    );
}

#[test]
fn the_cli_reports_an_unreachable_node() {
    let server = Server::start(&[]);
    let addr = server.addr.clone();
    assert_eq!(server.stop(), Some(0));
    let path = tally_tests::tallyd_path().with_file_name("tally");
    let output = Command::new(path).args(["--addr", &addr, "get", "x"]).output().unwrap();
    assert_eq!(output.status.code(), Some(3));
    assert!(String::from_utf8_lossy(&output.stderr).starts_with("tally: "));
}

/// The README's first command starts tallyd with its default, relative data dir `./tally-data`.
#[test]
fn a_relative_data_dir_works() {
    let cwd = tally_tests::DataDir::new("cwd");
    let server = Server::start_in_cwd(Some(&cwd.0), "tally-data".into(), &[]);
    let mut client = Client::connect(&server.addr).unwrap();
    assert_eq!(client.incr("rel:x", 2).unwrap(), 2);
    assert!(cwd.0.join("tally-data").join("shard-0").is_dir());
    assert_eq!(server.stop(), Some(0));
    let server = Server::start_in_cwd(Some(&cwd.0), "tally-data".into(), &[]);
    assert_eq!(
        Client::connect(&server.addr).unwrap().get("rel:x").unwrap(),
        2,
        "recovered from ./tally-data"
    );
}
