//! Retries against a fake server that applies a write and then drops the connection without
//! acking it: keyed writes are resent with the same key and count once; unkeyed writes, CAS and
//! RESET are not retried; a dead server ends the call after the configured attempts.

mod common;

use std::time::Duration;

use common::{FakeConfig, FakeServer};
use tally_proto::Opcode;
use tally_sdk::{ClientOptions, CounterSpec, Error, ErrorCode, Pipeline, RetryPolicy};

fn policy() -> RetryPolicy {
    RetryPolicy::new(3, Duration::ZERO)
}

fn options() -> ClientOptions {
    ClientOptions::new().read_timeout(Some(Duration::from_secs(5)))
}

fn dropping(opcode: Opcode) -> FakeServer {
    FakeServer::start(FakeConfig {
        drop_once_after: Some(opcode),
        ..FakeConfig::default()
    })
}

#[test]
fn a_retried_write_is_resent_with_the_same_key_and_counts_once() {
    let server = dropping(Opcode::Incr);
    let mut client = options().retry_writes(policy()).connect(&server.addr()).unwrap();
    let ack = client.incr_detailed("x", 5, None).unwrap();
    assert_eq!(ack.value, 5);
    assert!(ack.duplicate, "the retry met the first send's outcome");
    assert_eq!(server.value("x"), Some(5), "counted once");
    let sends = server.served_op(Opcode::Incr);
    assert_eq!(sends.len(), 2);
    assert!(sends[0].key.is_some());
    assert_eq!(sends[0].key, sends[1].key);
    assert_ne!(sends[0].connection, sends[1].connection, "resent on a new connection");
    // Later writes get fresh keys.
    client.incr("x", 1).unwrap();
    let third = server.served_op(Opcode::Incr).pop().unwrap();
    assert_ne!(third.key, sends[0].key);
}

#[test]
fn a_callers_key_is_kept_across_retries() {
    let server = dropping(Opcode::AddBounded);
    let mut client = options().retry(policy()).connect(&server.addr()).unwrap();
    client
        .create("stock", CounterSpec::strict().min(0).initial(10))
        .unwrap();
    let ack = client.add_bounded_detailed("stock", -4, 0, 100, Some(99)).unwrap();
    assert_eq!(ack.value, 6);
    assert_eq!(server.value("stock"), Some(6));
    let sends = server.served_op(Opcode::AddBounded);
    assert_eq!(sends.len(), 2);
    assert!(sends.iter().all(|s| s.key == Some(99)));
}

#[test]
fn unkeyed_writes_are_not_retried() {
    let server = dropping(Opcode::Incr);
    // `retry` retries only what is idempotent as it stands; an unkeyed INCR is not.
    let mut client = options().retry(policy()).connect(&server.addr()).unwrap();
    let error = client.incr("x", 5).unwrap_err();
    assert!(matches!(error, Error::Closed), "{error}");
    assert_eq!(server.served_op(Opcode::Incr).len(), 1);
    assert_eq!(server.value("x"), Some(5), "applied once; the caller cannot know");
    assert!(server.served_op(Opcode::Incr)[0].key.is_none());
}

#[test]
fn cas_and_reset_are_never_retried() {
    let server = dropping(Opcode::Cas);
    let mut client = options().retry_writes(policy()).connect(&server.addr()).unwrap();
    client.create("s", CounterSpec::strict()).unwrap();
    let error = client.cas("s", 0, 1).unwrap_err();
    assert!(error.is_connection());
    assert_eq!(server.served_op(Opcode::Cas).len(), 1);
    assert_eq!(server.value("s"), Some(1));

    let server = dropping(Opcode::Reset);
    let mut client = options().retry_writes(policy()).connect(&server.addr()).unwrap();
    client.incr("r", 3).unwrap();
    assert!(client.reset("r", 0, "audit").unwrap_err().is_connection());
    assert_eq!(server.served_op(Opcode::Reset).len(), 1);
}

#[test]
fn reads_are_retried() {
    let server = dropping(Opcode::Get);
    let mut client = options().retry(policy()).connect(&server.addr()).unwrap();
    client.incr("x", 2).unwrap();
    assert_eq!(client.get("x").unwrap(), 2);
    assert_eq!(server.served_op(Opcode::Get).len(), 2);
}

#[test]
fn a_pipeline_retries_everything_a_dropped_connection_left_unanswered() {
    let server = dropping(Opcode::Incr);
    let mut client = options().retry_writes(policy()).connect(&server.addr()).unwrap();
    let mut pipeline = Pipeline::new().batch(2).unwrap().depth(4).unwrap();
    for i in 1..=30i64 {
        pipeline.incr(format!("n{i}"), i);
    }
    let results = client.execute(&pipeline);
    for (i, result) in results.into_iter().enumerate() {
        assert_eq!(result.unwrap().value(), Some(i as i64 + 1));
    }
    for i in 1..=30i64 {
        assert_eq!(server.value(&format!("n{i}")), Some(i), "n{i} counted once");
    }
}

#[test]
fn a_dead_server_ends_the_call_after_the_configured_attempts() {
    let server = FakeServer::start(FakeConfig::default());
    let mut client = options().retry_writes(policy()).connect(&server.addr()).unwrap();
    client.incr("x", 1).unwrap();
    drop(server);
    let error = client.incr("x", 1).unwrap_err();
    assert!(error.is_connection(), "{error}");
    // The client is still usable and reports the same once more.
    assert!(client.get("x").unwrap_err().is_connection());
}

fn overloaded_once() -> FakeServer {
    FakeServer::start(FakeConfig {
        refuse_frames: Some(ErrorCode::Overloaded),
        refuse_first: 1,
        ..FakeConfig::default()
    })
}

#[test]
fn keyed_writes_refused_as_overloaded_are_sent_again() {
    let server = overloaded_once();
    let mut client = options().retry_writes(policy()).connect(&server.addr()).unwrap();
    let ack = client.incr_detailed("x", 4, None).unwrap();
    assert_eq!(ack.value, 4);
    assert!(!ack.duplicate, "the refused frame applied nothing");
    assert_eq!(server.served_op(Opcode::Incr).len(), 1);
    assert_eq!(server.connections(), 1, "a refusal keeps the connection");
}

#[test]
fn unkeyed_writes_refused_as_overloaded_are_returned() {
    let server = overloaded_once();
    let mut client = options().retry(policy()).connect(&server.addr()).unwrap();
    let error = client.incr("x", 4).unwrap_err();
    assert_eq!(error.error_code(), Some(ErrorCode::Overloaded));
    assert!(error.is_transient_refusal());
    assert_eq!(client.incr("x", 4).unwrap(), 4, "the refusal was for that frame only");
}

/// docs/protocol.md §7: `outcome_unknown` and `replicas_unavailable` leave a write's outcome
/// unknown, so a keyed write is sent again with the same key (applied once: a duplicate if the
/// first copy counted); an unkeyed one cannot be, and the error is returned.
#[test]
fn keyed_writes_of_unknown_outcome_are_sent_again_with_the_same_key() {
    for code in [
        ErrorCode::OutcomeUnknown,
        ErrorCode::ReplicasUnavailable,
        ErrorCode::LogPoisoned,
    ] {
        let refusing_once = || {
            FakeServer::start(FakeConfig {
                refuse_frames: Some(code),
                refuse_first: 1,
                ..FakeConfig::default()
            })
        };
        let server = refusing_once();
        let mut client = options().retry_writes(policy()).connect(&server.addr()).unwrap();
        let ack = client.incr_detailed("x", 4, None).unwrap();
        assert_eq!(ack.value, 4, "{code:?}");
        let keys: Vec<Option<u128>> = server.served_op(Opcode::Incr).iter().map(|op| op.key).collect();
        assert_eq!(keys.len(), 1, "{code:?}: the refused frame is not served");
        assert!(keys[0].is_some(), "{code:?}: sent with the key the SDK attached");

        let server = refusing_once();
        let mut client = options().retry(policy()).connect(&server.addr()).unwrap();
        let error = client.incr("x", 4).unwrap_err();
        assert_eq!(error.error_code(), Some(code), "an unkeyed write is not sent again");
        assert!(error.is_outcome_unknown());
    }
}
