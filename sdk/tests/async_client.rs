//! The async client against the fake server: concurrent requests pipelined on one connection,
//! pipelines, error mapping, retries with the same key, timeouts and Unix sockets.

#![cfg(feature = "tokio")]

mod common;

use std::time::Duration;

use common::{FakeConfig, FakeServer, Listener};
use tally_proto::Opcode;
use tally_sdk::{AsyncClient, ClientOptions, CounterSpec, Error, ErrorCode, Pipeline, RetryPolicy};

fn options() -> ClientOptions {
    ClientOptions::new().read_timeout(Some(Duration::from_secs(5)))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_requests_are_pipelined_on_one_connection() {
    // The fake answers only once it holds 4 frames: the 4 calls complete only if they are in
    // flight together on the one connection.
    let server = FakeServer::start(FakeConfig {
        hold_frames: 4,
        ..FakeConfig::default()
    });
    let client = options().connect_async(&server.addr()).await.unwrap();
    let tasks: Vec<_> = (0..4)
        .map(|i| {
            let client = client.clone();
            tokio::spawn(async move { client.incr(format!("c{i}"), i + 1).await })
        })
        .collect();
    for (i, task) in tasks.into_iter().enumerate() {
        assert_eq!(task.await.unwrap().unwrap(), i as i64 + 1);
    }
    assert_eq!(server.connections(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_tasks_count_exactly() {
    let server = FakeServer::start(FakeConfig::default());
    let client = AsyncClient::connect(&server.addr()).await.unwrap();
    let tasks: Vec<_> = (0..20)
        .map(|_| {
            let client = client.clone();
            tokio::spawn(async move {
                for _ in 0..50 {
                    client.incr("shared", 1).await.unwrap();
                }
            })
        })
        .collect();
    for task in tasks {
        task.await.unwrap();
    }
    assert_eq!(client.get("shared").await.unwrap(), 1000);
    assert_eq!(server.connections(), 1);
}

#[tokio::test]
async fn pipelines_return_results_in_submission_order() {
    let server = FakeServer::start(FakeConfig {
        hold_frames: 3,
        ..FakeConfig::default()
    });
    let client = options().connect_async(&server.addr()).await.unwrap();
    let mut pipeline = Pipeline::new().batch(5).unwrap().depth(3).unwrap();
    let mut expected = Vec::new();
    let mut total = 0;
    for i in 0..45i64 {
        total += i;
        expected.push(total);
        pipeline.incr("sum", i);
    }
    let values: Vec<i64> = client
        .execute(&pipeline)
        .await
        .into_iter()
        .map(|r| r.unwrap().value().unwrap())
        .collect();
    assert_eq!(values, expected);
    assert!(server.served().iter().all(|s| s.frame_ops == 5));
}

#[tokio::test]
async fn errors_carry_codes_and_current_values() {
    let server = FakeServer::start(FakeConfig::default());
    let client = options().connect_async(&server.addr()).await.unwrap();
    assert!(
        client
            .create("stock", CounterSpec::strict().min(0).initial(2))
            .await
            .unwrap()
            .created
    );
    let error = client.add_bounded("stock", -3, 0, 100).await.unwrap_err();
    assert!(error.is_bound_violation());
    assert_eq!(error.current(), Some(2));
    let error = client.cas("stock", 5, 6).await.unwrap_err();
    assert!(error.is_cas_mismatch());
    assert_eq!(error.current(), Some(2));
    assert_eq!(client.cas("stock", 2, 6).await.unwrap(), 6);
    let reset = client.reset("stock", 1, "recount").await.unwrap();
    assert_eq!((reset.old, reset.new), (6, 1));
    let refused = client.incr("", 1).await.unwrap_err();
    assert_eq!(refused.error_code(), Some(ErrorCode::NameEmpty));
    assert!(!client.get_with("nobody", false, None).await.unwrap().exists);
    assert_eq!(client.stats().await.unwrap().figures[0].0, "fake.counters");
}

#[tokio::test]
async fn a_retried_write_counts_once() {
    let server = FakeServer::start(FakeConfig {
        drop_once_after: Some(Opcode::Incr),
        ..FakeConfig::default()
    });
    let client = options()
        .retry_writes(RetryPolicy::new(3, Duration::ZERO))
        .connect_async(&server.addr())
        .await
        .unwrap();
    let ack = client.incr_detailed("x", 7, None).await.unwrap();
    assert_eq!(ack.value, 7);
    assert!(ack.duplicate);
    assert_eq!(server.value("x"), Some(7));
    let sends = server.served_op(Opcode::Incr);
    assert_eq!(sends.len(), 2);
    assert!(sends[0].key.is_some());
    assert_eq!(sends[0].key, sends[1].key);
}

#[tokio::test]
async fn without_retries_a_dropped_connection_is_reported_and_replaced() {
    let server = FakeServer::start(FakeConfig {
        drop_once_after: Some(Opcode::Incr),
        ..FakeConfig::default()
    });
    let client = options().connect_async(&server.addr()).await.unwrap();
    let error = client.incr("x", 1).await.unwrap_err();
    assert!(matches!(error, Error::Closed), "{error}");
    assert_eq!(client.incr("x", 1).await.unwrap(), 2);
    assert_eq!(server.connections(), 2);
}

#[tokio::test]
async fn a_silent_server_times_out() {
    let server = FakeServer::start(FakeConfig {
        stall: true,
        ..FakeConfig::default()
    });
    let client = options()
        .read_timeout(Some(Duration::from_millis(200)))
        .connect_async(&server.addr())
        .await
        .unwrap();
    assert!(matches!(client.get("x").await, Err(Error::Timeout)));
}

#[tokio::test]
async fn a_reply_to_an_unknown_request_is_a_protocol_error() {
    let server = FakeServer::start(FakeConfig {
        wrong_request_id: true,
        ..FakeConfig::default()
    });
    let client = options().connect_async(&server.addr()).await.unwrap();
    let error = client.get("x").await.unwrap_err();
    assert!(
        matches!(error, Error::Protocol(ref m) if m.contains("not in flight")),
        "{error}"
    );
}

#[tokio::test]
async fn unix_sockets() {
    let server = FakeServer::start(FakeConfig {
        unix: true,
        ..FakeConfig::default()
    });
    let client = AsyncClient::connect_unix(server.unix_path.clone().unwrap())
        .await
        .unwrap();
    assert_eq!(client.incr("u", 3).await.unwrap(), 3);
    assert_eq!(client.hello().server, "fake/0");
    assert!(server.served().iter().all(|s| s.listener == Listener::Unix));
}

#[tokio::test]
async fn connecting_to_nothing_fails() {
    let error = AsyncClient::connect("127.0.0.1:1").await.unwrap_err();
    assert!(error.is_connection(), "{error}");
}

#[tokio::test]
async fn keyed_writes_refused_as_overloaded_are_sent_again() {
    let server = FakeServer::start(FakeConfig {
        refuse_frames: Some(ErrorCode::Overloaded),
        refuse_first: 1,
        ..FakeConfig::default()
    });
    let client = options()
        .retry_writes(RetryPolicy::new(2, Duration::ZERO))
        .connect_async(&server.addr())
        .await
        .unwrap();
    assert_eq!(client.incr("x", 4).await.unwrap(), 4);
    assert_eq!(server.served_op(Opcode::Incr).len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn history_calls_join_series_and_follow_cursors() {
    let server = FakeServer::start(FakeConfig::default());
    let client = options().connect_async(&server.addr()).await.unwrap();
    client.incr("h", 9).await.unwrap();
    assert_eq!(
        client
            .window("h", 1, tally_sdk::WindowUnit::Minute)
            .await
            .unwrap()
            .value,
        9
    );
    let day = 86_400_000;
    let series = client
        .series("h", 0, 30 * day, tally_sdk::SeriesStep::Minute)
        .await
        .unwrap();
    assert_eq!(series.points.len(), 43_200);
    assert!(series.points.iter().enumerate().all(|(i, p)| *p == i as i64));
    let mut cursor = Vec::new();
    let mut pages = 0;
    loop {
        let page = client.events_page("h", 0, 10, 100, &cursor).await.unwrap();
        pages += 1;
        if page.cursor.is_empty() {
            break;
        }
        cursor = page.cursor;
    }
    assert_eq!(pages, 3);
    assert!(client.audit("", 0, 10).await.unwrap().is_empty());
}
