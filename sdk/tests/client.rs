//! Single-op calls of the blocking client against the fake server: the handshake, every op, error
//! mapping (codes, current values, error frames), client-side limits and connection failures.

mod common;

use std::time::Duration;

use common::{FakeConfig, FakeServer, Listener};
use tally_proto::limits::NAME_BYTES_MAX;
use tally_proto::Opcode;
use tally_sdk::{Client, ClientOptions, CounterSpec, Error, ErrorCode, Pipeline};

fn options() -> ClientOptions {
    ClientOptions::new().read_timeout(Some(Duration::from_secs(5)))
}

#[test]
fn connect_performs_hello_with_the_client_name() {
    let server = FakeServer::start(FakeConfig {
        shards: 3,
        main_shard: 2,
        ..FakeConfig::default()
    });
    let client = options().client_name("billing").connect(&server.addr()).unwrap();
    let hello = client.hello();
    assert_eq!(hello.shard_count, 3);
    assert_eq!(hello.shard, 2);
    assert_eq!(hello.server, "fake/0");
    assert_eq!(hello.shard_ports.len(), 3);
    assert_eq!(server.client_names(), vec!["billing".to_string()]);
    assert!(client.is_shard_aware());
}

#[test]
fn incr_and_get_round_trip() {
    let server = FakeServer::start(FakeConfig::default());
    let mut client = options().connect(&server.addr()).unwrap();
    assert_eq!(client.incr("views", 5).unwrap(), 5);
    assert_eq!(client.incr("views", -7).unwrap(), -2);
    assert_eq!(client.get("views").unwrap(), -2);
    let unknown = client.get_with("nobody", false, None).unwrap();
    assert_eq!(unknown.value, 0);
    assert!(!unknown.exists);
    let known = client.get_with("views", true, None).unwrap();
    assert!(known.exists);
    assert!(!known.strict);
    assert_eq!(server.value("views"), Some(-2));
}

#[test]
fn detailed_acks_expose_tokens_and_duplicates() {
    let server = FakeServer::start(FakeConfig::default());
    let mut client = options().connect(&server.addr()).unwrap();
    let first = client.incr_detailed("a", 1, None).unwrap();
    let second = client.incr_detailed("a", 1, None).unwrap();
    assert!(second.token.lsn > first.token.lsn);
    assert!(!second.duplicate);
    let keyed = client.incr_detailed("a", 10, Some(77)).unwrap();
    let again = client.incr_detailed("a", 10, Some(77)).unwrap();
    assert!(!keyed.duplicate);
    assert!(again.duplicate);
    assert_eq!(again.value, keyed.value);
    assert_eq!(client.incr_with_key("a", 10, 77).unwrap(), 12);
    assert_eq!(client.get("a").unwrap(), 12, "the key counted once");
    let reading = client.get_with("a", false, Some(keyed.token)).unwrap();
    assert_eq!(reading.value, 12);
    let served = server.served_op(Opcode::Get);
    assert_eq!(served.last().unwrap().opcode, Opcode::Get);
}

#[test]
fn strict_counters_map_errors_with_current_values() {
    let server = FakeServer::start(FakeConfig::default());
    let mut client = options().connect(&server.addr()).unwrap();
    let spec = CounterSpec::strict().min(0).initial(5);
    let created = client.create("stock", spec).unwrap();
    assert!(created.created);
    assert!(created.strict);
    assert_eq!(created.value, 5);
    assert!(
        !client.create("stock", spec).unwrap().created,
        "an identical CREATE is a no-op"
    );
    let conflict = client.create("stock", CounterSpec::analytic()).unwrap_err();
    assert_eq!(conflict.error_code(), Some(ErrorCode::AlreadyExists));

    assert_eq!(client.add_bounded("stock", -3, 0, i64::MAX).unwrap(), 2);
    let crossing = client.add_bounded("stock", -3, 0, i64::MAX).unwrap_err();
    assert!(crossing.is_bound_violation());
    assert_eq!(crossing.current(), Some(2));
    assert_eq!(crossing.code(), Some(10));
    let text = crossing.to_string();
    assert!(text.starts_with("bound_violation (10): "), "{text}");
    assert!(text.ends_with("(current 2)"), "{text}");

    assert_eq!(client.cas("stock", 2, 10).unwrap(), 10);
    let mismatch = client.cas("stock", 2, 11).unwrap_err();
    assert!(mismatch.is_cas_mismatch());
    assert_eq!(mismatch.current(), Some(10));

    let reset = client.reset("stock", 0, "inventory count").unwrap();
    assert_eq!((reset.old, reset.new), (10, 0));
    assert!(client.get_with("stock", false, None).unwrap().strict);

    let missing = client.cas("ghost", 0, 1).unwrap_err();
    assert!(missing.is_not_found());
    assert!(matches!(missing, Error::Server { .. }));
    client.incr("plain", 1).unwrap();
    let wrong = client.add_bounded("plain", 1, 0, 10).unwrap_err();
    assert_eq!(wrong.error_code(), Some(ErrorCode::WrongKind));
    assert_eq!(wrong.current(), None);
}

#[test]
fn stats_returns_figures() {
    let server = FakeServer::start(FakeConfig {
        split: vec!["hot"],
        ..FakeConfig::default()
    });
    let mut client = options().connect(&server.addr()).unwrap();
    client.incr("a", 1).unwrap();
    let stats = client.stats().unwrap();
    assert!(stats.figures.contains(&("fake.counters".to_string(), 1)));
    assert_eq!(stats.split, vec![b"hot".to_vec()]);
}

#[test]
fn history_calls_join_long_series_and_follow_cursors() {
    let server = FakeServer::start(FakeConfig::default());
    let mut client = options().connect(&server.addr()).unwrap();
    client.incr("h", 7).unwrap();
    assert_eq!(client.window("h", 5, tally_sdk::WindowUnit::Second).unwrap().value, 7);
    // 30 days of minutes is 43 200 points: six requests, joined in order.
    let day = 86_400_000;
    let series = client.series("h", 0, 30 * day, tally_sdk::SeriesStep::Minute).unwrap();
    assert_eq!(series.points.len(), 43_200);
    assert!(series.points.iter().enumerate().all(|(i, p)| *p == i as i64));
    let mut pages = Vec::new();
    client
        .events_each("h", 0, 10, |events| {
            pages.push(events.to_vec());
            true
        })
        .unwrap();
    assert_eq!(pages.len(), 3, "followed the cursor until it came back empty");
    assert_eq!(pages[2][0].time_ms, 2);
    assert!(client.audit("", 0, 10).unwrap().is_empty());
}

#[test]
fn client_side_limits_refuse_without_sending() {
    let server = FakeServer::start(FakeConfig::default());
    let mut client = options().connect(&server.addr()).unwrap();
    let long = "n".repeat(NAME_BYTES_MAX + 1);
    let error = client.incr(&long, 1).unwrap_err();
    assert_eq!(error.error_code(), Some(ErrorCode::NameTooLong));
    assert!(matches!(error, Error::Refused { .. }));
    assert!(error.to_string().starts_with("name_too_long (6): "), "{error}");
    assert_eq!(client.get("").unwrap_err().error_code(), Some(ErrorCode::NameEmpty));
    let reason = "r".repeat(2000);
    let error = client.reset("a", 0, &reason).unwrap_err();
    assert_eq!(error.error_code(), Some(ErrorCode::ReasonTooLong));
    assert!(server.served().is_empty(), "nothing was sent: {:?}", server.served());
    // The longest legal name goes through.
    assert_eq!(client.incr(&long[..NAME_BYTES_MAX], 1).unwrap(), 1);
}

#[test]
fn error_frames_fail_every_op_of_the_frame() {
    let server = FakeServer::start(FakeConfig {
        refuse_frames: Some(ErrorCode::Overloaded),
        ..FakeConfig::default()
    });
    let mut client = options().connect(&server.addr()).unwrap();
    let error = client.incr("a", 1).unwrap_err();
    assert_eq!(error.error_code(), Some(ErrorCode::Overloaded));
    assert_eq!(error.message(), "refused by the fake");
    let mut pipeline = Pipeline::new().batch(3).unwrap();
    for _ in 0..3 {
        pipeline.incr("a", 1);
    }
    let results = client.execute(&pipeline);
    assert_eq!(results.len(), 3);
    for result in results {
        assert_eq!(result.unwrap_err().error_code(), Some(ErrorCode::Overloaded));
    }
    // The connection survives an error frame.
    assert_eq!(server.connections(), 1);
}

#[test]
fn a_reply_to_the_wrong_request_is_a_protocol_error_and_drops_the_connection() {
    let server = FakeServer::start(FakeConfig {
        wrong_request_id: true,
        ..FakeConfig::default()
    });
    let mut client = options().connect(&server.addr()).unwrap();
    let error = client.incr("a", 1).unwrap_err();
    assert!(
        matches!(error, Error::Protocol(ref m) if m.contains("oldest in flight")),
        "{error}"
    );
    assert!(!error.is_connection());
    assert_eq!(server.connections(), 1);
    assert!(client.get("a").is_err());
    assert_eq!(server.connections(), 2, "the next call opened a fresh connection");
}

#[test]
fn a_silent_server_times_out() {
    let server = FakeServer::start(FakeConfig {
        stall: true,
        ..FakeConfig::default()
    });
    let mut client = options()
        .read_timeout(Some(Duration::from_millis(200)))
        .connect(&server.addr())
        .unwrap();
    let error = client.incr("a", 1).unwrap_err();
    assert!(matches!(error, Error::Timeout), "{error}");
    assert!(error.is_connection());
}

#[test]
fn a_closed_connection_is_reported_and_the_next_call_reconnects() {
    let server = FakeServer::start(FakeConfig {
        drop_once_after: Some(Opcode::Incr),
        ..FakeConfig::default()
    });
    let mut client = options().connect(&server.addr()).unwrap();
    let error = client.incr("a", 1).unwrap_err();
    assert!(matches!(error, Error::Closed), "{error}");
    assert_eq!(server.value("a"), Some(1), "the write was applied, its ack lost");
    assert_eq!(client.incr("a", 1).unwrap(), 2);
    assert_eq!(server.connections(), 2);
}

#[test]
fn connecting_to_nothing_is_an_io_error() {
    let error = options().connect("127.0.0.1:1").unwrap_err();
    assert!(matches!(error, Error::Io(_)), "{error}");
    assert!(error.is_connection());
}

#[test]
fn unix_sockets_work_and_do_not_route_by_shard() {
    let server = FakeServer::start(FakeConfig {
        unix: true,
        shards: 4,
        ..FakeConfig::default()
    });
    let path = server.unix_path.clone().unwrap();
    let mut client = Client::connect_unix(&path).unwrap();
    assert!(!client.is_shard_aware());
    for i in 0..20 {
        client.incr(format!("n{i}"), 1).unwrap();
    }
    assert!(server.served().iter().all(|s| s.listener == Listener::Unix));
}
