//! Shard-aware routing against a fake server with several shard ports: ops reach their owner
//! directly, pipelines are split per shard and reassembled in order, split counters spread, and
//! unreachable shard ports fall back to the main connection.

mod common;

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use common::{FakeConfig, FakeServer, Listener};
use tally_proto::{shard_of, Opcode};
use tally_sdk::{ClientOptions, Pipeline};

const SHARDS: u16 = 4;
const MAIN_SHARD: u16 = 1;

fn options() -> ClientOptions {
    ClientOptions::new().read_timeout(Some(Duration::from_secs(5)))
}

fn sharded(config: FakeConfig) -> FakeServer {
    FakeServer::start(FakeConfig {
        shards: SHARDS,
        main_shard: MAIN_SHARD,
        ..config
    })
}

/// The shard that served an op: the listener's shard, or the main port's shard.
fn serving_shard(listener: Listener) -> u16 {
    match listener {
        Listener::Shard(shard) => shard,
        Listener::Main | Listener::Unix => MAIN_SHARD,
    }
}

#[test]
fn every_op_reaches_its_owner_directly() {
    let server = sharded(FakeConfig::default());
    let mut client = options().connect(&server.addr()).unwrap();
    for i in 0..40 {
        client.incr(format!("page:{i}"), 1).unwrap();
        client.get(format!("page:{i}")).unwrap();
    }
    let served = server.served();
    assert_eq!(served.len(), 80);
    for op in &served {
        assert_eq!(serving_shard(op.listener), shard_of(&op.name, SHARDS), "{op:?}");
    }
    let listeners: HashSet<Listener> = served.iter().map(|s| s.listener).collect();
    assert_eq!(listeners.len(), usize::from(SHARDS), "all shards used: {listeners:?}");
    assert!(
        listeners.contains(&Listener::Main),
        "the main connection serves its own shard"
    );
    assert!(!listeners.contains(&Listener::Shard(MAIN_SHARD)));
    // One main connection plus one per other shard, opened once.
    assert_eq!(server.connections(), u64::from(SHARDS));
}

#[test]
fn a_pipeline_is_split_per_shard_and_reassembled_in_order() {
    let server = sharded(FakeConfig::default());
    let mut client = options().connect(&server.addr()).unwrap();
    let mut pipeline = Pipeline::new().batch(3).unwrap().depth(2).unwrap();
    let mut model: HashMap<String, i64> = HashMap::new();
    let mut expected = Vec::new();
    for i in 0..200i64 {
        let name = format!("k{}", i % 17);
        let value = model.entry(name.clone()).or_default();
        *value += i;
        expected.push(*value);
        pipeline.incr(name, i);
    }
    let values: Vec<i64> = client
        .execute(&pipeline)
        .into_iter()
        .map(|r| r.unwrap().value().unwrap())
        .collect();
    assert_eq!(values, expected);
    for op in server.served() {
        assert_eq!(serving_shard(op.listener), shard_of(&op.name, SHARDS));
    }
}

#[test]
fn without_shard_awareness_everything_goes_to_the_main_port() {
    let server = sharded(FakeConfig::default());
    let mut client = options().shard_aware(false).connect(&server.addr()).unwrap();
    assert!(!client.is_shard_aware());
    for i in 0..20 {
        client.incr(format!("page:{i}"), 1).unwrap();
    }
    assert!(server.served().iter().all(|s| s.listener == Listener::Main));
    assert_eq!(server.connections(), 1);
}

#[test]
fn unreachable_shard_ports_fall_back_to_the_main_connection() {
    let server = sharded(FakeConfig {
        dead_shard_ports: true,
        ..FakeConfig::default()
    });
    let mut client = options().connect(&server.addr()).unwrap();
    assert!(client.is_shard_aware());
    let mut pipeline = Pipeline::new().batch(2).unwrap();
    for i in 0..40 {
        pipeline.incr(format!("page:{i}"), i);
    }
    let results = client.execute(&pipeline);
    for (i, result) in results.into_iter().enumerate() {
        assert_eq!(result.unwrap().value(), Some(i as i64));
    }
    // Single calls after the failure skip the dead ports without trying them again.
    for i in 0..10 {
        assert_eq!(client.get(format!("page:{i}")).unwrap(), i);
    }
    assert!(server.served().iter().all(|s| s.listener == Listener::Main));
    assert_eq!(server.connections(), 1);
}

#[test]
fn unkeyed_increments_of_split_counters_spread_over_all_shards() {
    let server = sharded(FakeConfig {
        split: vec!["hot"],
        ..FakeConfig::default()
    });
    let mut client = options().connect(&server.addr()).unwrap();
    let owner = shard_of(b"hot", SHARDS);
    // The first increment goes to the owner and learns that the counter is split.
    assert!(client.incr_detailed("hot", 1, None).unwrap().split);
    assert!(client.is_split("hot"));
    for _ in 0..8 {
        client.incr("hot", 1).unwrap();
    }
    // Keyed increments and reads still go to the owner.
    for key in 0..4u128 {
        client.incr_with_key("hot", 1, key).unwrap();
    }
    assert_eq!(client.get("hot").unwrap(), 13);
    let incrs = server.served_op(Opcode::Incr);
    assert_eq!(serving_shard(incrs[0].listener), owner);
    let mut spread: HashMap<u16, usize> = HashMap::new();
    for op in &incrs[1..9] {
        *spread.entry(serving_shard(op.listener)).or_default() += 1;
    }
    assert_eq!(spread.len(), usize::from(SHARDS), "{spread:?}");
    assert!(spread.values().all(|&n| n == 2), "round-robin: {spread:?}");
    assert!(incrs[9..].iter().all(|op| serving_shard(op.listener) == owner));
    let get = server.served_op(Opcode::Get);
    assert_eq!(serving_shard(get[0].listener), owner);
}

#[test]
fn a_plain_ack_takes_a_counter_out_of_the_split_set() {
    let server = sharded(FakeConfig::default());
    let mut client = options().connect(&server.addr()).unwrap();
    client.incr("cold", 1).unwrap();
    assert!(!client.is_split("cold"));
    for _ in 0..4 {
        client.incr("cold", 1).unwrap();
    }
    let owner = shard_of(b"cold", SHARDS);
    assert!(server
        .served_op(Opcode::Incr)
        .iter()
        .all(|op| serving_shard(op.listener) == owner));
}
