//! History ops against a real node: WINDOW, SERIES, AUDIT and EVENTS agree with what the test
//! sent and with each other, survive kill -9 and restart unchanged, window files are written once
//! a minute closes and are used after a restart, and bad requests get their documented codes.
//!
//! Times are the server's at apply. The test knows each increment's time to within its own call
//! (the server runs on this machine's clock), and checks the exact seconds against the log: every
//! second's window sum must equal the sum of that second's logged increments.

use std::collections::BTreeMap;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bytes::{BufMut, BytesMut};
use tally_proto::{ErrorCode, Event, EventKind, FrameBuilder, FrameKind, Reply, Request, SeriesStep, WindowUnit};
use tally_sdk::{Client, ErrorCode as SdkCode};
use tally_tests::{DataDir, RawConn, RawReply, Server};

fn now_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_millis() as u64
}

/// What one increment the test sent: its delta, key, and the client's clock around the call.
struct Sent {
    name: &'static str,
    delta: i64,
    key: Option<u128>,
    before_ms: u64,
    after_ms: u64,
}

/// Increments spread over about 2.5 seconds (so several seconds have buckets): a plain counter
/// with keys on every third, and a split counter (forced) whose increments land on every shard.
fn send_increments(client: &mut Client) -> Vec<Sent> {
    let started = Instant::now();
    let mut sent = Vec::new();
    let mut i = 0i64;
    while started.elapsed() < Duration::from_millis(2_500) {
        for name in ["w:plain", "w:hot"] {
            let delta = i % 7 - 2;
            let key = (name == "w:plain" && i % 3 == 0).then(|| 0xfeed_0000 + i as u128);
            let before_ms = now_ms();
            client.incr_detailed(name, delta, key).unwrap();
            sent.push(Sent {
                name,
                delta,
                key,
                before_ms,
                after_ms: now_ms(),
            });
        }
        i += 1;
        // Pacing, not synchronisation: about 40 increments per name per second.
        std::thread::sleep(Duration::from_millis(25));
    }
    sent
}

fn events_of(client: &mut Client, name: &str, from_ms: u64, to_ms: u64) -> Vec<Event> {
    let mut events = Vec::new();
    // Small pages, so paging and cursors are exercised.
    let mut cursor = Vec::new();
    loop {
        let page = client.events_page(name, from_ms, to_ms, 7, &cursor).unwrap();
        assert!(page.items.len() <= 7);
        events.extend(page.items);
        if page.cursor.is_empty() {
            return events;
        }
        cursor = page.cursor;
    }
}

/// Everything the history ops say about the test's counters, for comparing before and after a
/// restart.
#[derive(Debug, PartialEq)]
struct Answers {
    series: Vec<Vec<i64>>,
    minutes: Vec<Vec<i64>>,
    events: Vec<Vec<Event>>,
    audit: Vec<tally_proto::AuditRecord>,
}

fn answers(client: &mut Client, from_ms: u64, to_ms: u64) -> Answers {
    let names = ["w:plain", "w:hot"];
    Answers {
        series: names
            .iter()
            .map(|n| client.series(n, from_ms, to_ms, SeriesStep::Second).unwrap().points)
            .collect(),
        minutes: names
            .iter()
            .map(|n| client.series(n, from_ms, to_ms, SeriesStep::Minute).unwrap().points)
            .collect(),
        events: names.iter().map(|n| events_of(client, n, from_ms, to_ms)).collect(),
        audit: client.audit("", 0, to_ms + 60_000).unwrap(),
    }
}

#[test]
fn history_matches_what_was_sent_and_survives_kill_and_restart() {
    let dir = DataDir::new("windows");
    let args = ["--shards", "2", "--split-force", "w:hot"];
    let server = Server::start_in(dir.0.clone(), &args);
    let mut client = Client::builder()
        .client_name("auditor-7")
        .connect(&server.addr)
        .unwrap();
    let from_ms = now_ms() - 1_000;
    let sent = send_increments(&mut client);
    client.incr("acct", 40).unwrap();
    let reset = client.reset("acct", 0, "month end").unwrap();
    assert_eq!((reset.old, reset.new), (40, 0));
    let to_ms = now_ms() + 1_000;

    for name in ["w:plain", "w:hot"] {
        let mine: Vec<&Sent> = sent.iter().filter(|s| s.name == name).collect();
        // EVENTS returns exactly the logged increments: same deltas and keys in the same order
        // for the plain counter, the same multiset for the split one (its parts are merged by time).
        let events = events_of(&mut client, name, from_ms, to_ms);
        assert_eq!(events.len(), mine.len(), "{name}: one event per increment");
        if name == "w:plain" {
            for (event, sent) in events.iter().zip(&mine) {
                assert_eq!((event.delta, event.key), (sent.delta, sent.key));
                assert_eq!(event.kind, EventKind::Incr);
                // The event's time is its batch's: at or before the apply, in the same second.
                assert!(event.time_ms <= sent.after_ms, "{event:?} after the call returned");
                assert!(event.time_ms + 1_000 > sent.before_ms, "{event:?} long before the call");
            }
        } else {
            let mut got: Vec<i64> = events.iter().map(|e| e.delta).collect();
            let mut want: Vec<i64> = mine.iter().map(|s| s.delta).collect();
            got.sort_unstable();
            want.sort_unstable();
            assert_eq!(got, want);
            assert!(
                events.iter().any(|e| e.kind == EventKind::SplitPart),
                "some landed on a non-owner"
            );
            assert!(events
                .windows(2)
                .all(|p| (p[0].time_ms, p[0].shard, p[0].lsn) < (p[1].time_ms, p[1].shard, p[1].lsn)));
        }
        // Windows agree with the log to the second.
        let mut by_second = BTreeMap::<u64, i64>::new();
        for event in &events {
            *by_second.entry(event.time_ms / 1_000).or_default() += event.delta;
        }
        let series = client.series(name, from_ms, to_ms, SeriesStep::Second).unwrap();
        assert_eq!(series.from_ms, from_ms / 1_000 * 1_000);
        for (i, point) in series.points.iter().enumerate() {
            let second = series.from_ms / 1_000 + i as u64;
            assert_eq!(
                *point,
                by_second.get(&second).copied().unwrap_or(0),
                "{name} second {second}"
            );
        }
        let total: i64 = mine.iter().map(|s| s.delta).sum();
        assert_eq!(client.window(name, 5, WindowUnit::Minute).unwrap().value, total);
        assert_eq!(series.points.iter().sum::<i64>(), total);
    }

    // AUDIT: the reset with who and why, for the name and among all.
    let records = client.audit("acct", 0, to_ms).unwrap();
    assert_eq!(records.len(), 1);
    let record = &records[0];
    assert_eq!((record.old, record.new), (40, 0));
    assert_eq!(record.client, b"auditor-7");
    assert_eq!(record.reason, b"month end");
    assert!(record.time_ms >= from_ms && record.time_ms < to_ms);
    assert_eq!(client.audit("", 0, to_ms).unwrap(), records);
    assert!(client.audit("w:plain", 0, to_ms).unwrap().is_empty());

    let before = answers(&mut client, from_ms, to_ms);
    drop(client);
    server.kill();
    let server = Server::start_in(dir.0.clone(), &args);
    let mut client = Client::connect(&server.addr).unwrap();
    assert_eq!(
        answers(&mut client, from_ms, to_ms),
        before,
        "the same answers after kill -9"
    );
}

/// A minute file appears once the minute has closed (about a second after; the test waits for it
/// with a deadline), and after a restart the node answers from it and from replay alike.
#[test]
fn window_files_are_written_and_read_after_a_restart() {
    let dir = DataDir::new("windows-files");
    let server = Server::start_in(dir.0.clone(), &["--shards", "1"]);
    let mut client = Client::connect(&server.addr).unwrap();
    let from_ms = now_ms();
    client.incr("f:x", 3).unwrap();
    client.incr("f:x", 4).unwrap();
    let windows = dir.0.join("shard-0").join("windows");
    // Bounded wait for the minute to close and its file to be written (at most ~62 s by design).
    let deadline = Instant::now() + Duration::from_secs(90);
    while !std::fs::read_dir(&windows)
        .unwrap()
        .any(|e| e.unwrap().file_name().to_string_lossy().starts_with("m-"))
    {
        assert!(Instant::now() < deadline, "no minute file within 90 s");
        std::thread::sleep(Duration::from_millis(200));
    }
    let to_ms = now_ms() + 1_000;
    let series = client.series("f:x", from_ms, to_ms, SeriesStep::Second).unwrap();
    assert_eq!(series.points.iter().sum::<i64>(), 7);
    let minutes = client.series("f:x", from_ms, to_ms, SeriesStep::Minute).unwrap();
    drop(client);
    server.kill();
    let server = Server::start_in(dir.0.clone(), &["--shards", "1"]);
    let mut client = Client::connect(&server.addr).unwrap();
    assert_eq!(
        client.series("f:x", from_ms, to_ms, SeriesStep::Second).unwrap(),
        series
    );
    assert_eq!(
        client.series("f:x", from_ms, to_ms, SeriesStep::Minute).unwrap(),
        minutes
    );
    assert_eq!(client.window("f:x", 10, WindowUnit::Minute).unwrap().value, 7);
}

fn code_of(reply: RawReply) -> u16 {
    match reply {
        RawReply::Ops(mut ops) => match ops.remove(0).result {
            Err(e) => e.code,
            Ok(reply) => panic!("expected an error, got {reply:?}"),
        },
        RawReply::Refused { code, .. } => panic!("frame refused with {code}"),
    }
}

/// protocol.md §13: a WINDOW or SERIES sum that leaves i64 is `Overflow`, never a clamped number.
/// One frame (one second, most likely) takes a counter up by i64::MAX twice with a RESET between,
/// another down by i64::MIN twice: their increments in that second sum beyond i64.
#[test]
fn window_and_series_sums_beyond_i64_answer_overflow() {
    let server = Server::start(&["--shards", "2"]);
    let mut conn = RawConn::connect(&server.addr);
    let incr = |name, delta| Request::Incr { name, delta, key: None };
    let reset = |name| Request::Reset {
        name,
        value: 0,
        reason: b"make room",
    };
    let writes = [
        incr(b"o:up", i64::MAX),
        reset(b"o:up"),
        incr(b"o:up", i64::MAX),
        incr(b"o:down", i64::MIN),
        reset(b"o:down"),
        incr(b"o:down", i64::MIN),
        incr(b"o:fine", 5),
    ];
    let started_ms = now_ms();
    match conn.call(&writes) {
        RawReply::Ops(ops) => {
            for op in ops {
                assert!(op.result.is_ok(), "{op:?}");
            }
        }
        RawReply::Refused { code, message } => panic!("refused {code}: {message}"),
    }
    for name in [&b"o:up"[..], b"o:down"] {
        let window = Request::Window {
            name,
            last: 60,
            unit: WindowUnit::Second,
        };
        assert_eq!(code_of(conn.call(&[window])), ErrorCode::Overflow as u16);
        let series = Request::Series {
            name,
            from_ms: started_ms - 2_000,
            to_ms: now_ms() + 1_000,
            step: SeriesStep::Second,
        };
        assert_eq!(code_of(conn.call(&[series])), ErrorCode::Overflow as u16);
    }
    let window = Request::Window {
        name: b"o:fine",
        last: 60,
        unit: WindowUnit::Second,
    };
    match conn.call(&[window]) {
        RawReply::Ops(ops) => assert!(matches!(ops[0].result, Ok(Reply::Window { value: 5, .. })), "{ops:?}"),
        RawReply::Refused { code, message } => panic!("refused {code}: {message}"),
    }
}

#[test]
fn bad_history_requests_get_their_documented_codes() {
    let server = Server::start(&["--shards", "2"]);
    let mut conn = RawConn::connect(&server.addr);
    let now = now_ms();
    let hour = 3_600_000;
    let cases: Vec<(Request<'_>, ErrorCode)> = vec![
        (
            Request::Series {
                name: b"x",
                from_ms: now,
                to_ms: now - 1,
                step: SeriesStep::Second,
            },
            ErrorCode::RangeReversed,
        ),
        (
            Request::Series {
                name: b"x",
                from_ms: now - 90 * 60_000,
                to_ms: now,
                step: SeriesStep::Second,
            },
            ErrorCode::StepTooFine,
        ),
        (
            Request::Series {
                name: b"x",
                from_ms: now - 40 * 24 * hour,
                to_ms: now - 39 * 24 * hour,
                step: SeriesStep::Minute,
            },
            ErrorCode::BeyondRetention,
        ),
        (
            Request::Series {
                name: b"x",
                from_ms: now - 29 * 24 * hour,
                to_ms: now,
                step: SeriesStep::Minute,
            },
            ErrorCode::TooManyPoints,
        ),
        (
            Request::Window {
                name: b"x",
                last: 31 * 24 * 60,
                unit: WindowUnit::Minute,
            },
            ErrorCode::BeyondRetention,
        ),
        (
            Request::Window {
                name: b"x",
                last: 7_200,
                unit: WindowUnit::Second,
            },
            ErrorCode::StepTooFine,
        ),
        (
            Request::Events {
                name: b"x",
                from_ms: now - 30 * 24 * hour,
                to_ms: now,
                limit: 10,
                cursor: b"",
            },
            ErrorCode::BeyondRetention,
        ),
        (
            Request::Events {
                name: b"x",
                from_ms: now - hour,
                to_ms: now,
                limit: 10,
                cursor: b"not a cursor",
            },
            ErrorCode::InvalidArgument,
        ),
        (
            Request::Audit {
                name: b"",
                from_ms: 0,
                to_ms: now,
                limit: 0,
                cursor: b"",
            },
            ErrorCode::InvalidArgument,
        ),
        (
            Request::Audit {
                name: b"",
                from_ms: 0,
                to_ms: now,
                limit: 5,
                cursor: b"short",
            },
            ErrorCode::InvalidArgument,
        ),
    ];
    for (request, code) in &cases {
        assert_eq!(
            code_of(conn.call(std::slice::from_ref(request))),
            *code as u16,
            "{request:?}"
        );
    }
    // An empty window and an unknown step are refused by the decoder (the client SDK cannot
    // send them), with the rest of the frame still served.
    let mut window = vec![0u8];
    window.extend_from_slice(&0u32.to_le_bytes());
    window.extend_from_slice(&[1, 0, b'x']);
    let mut step = vec![9u8];
    step.extend_from_slice(&0u64.to_le_bytes());
    step.extend_from_slice(&1u64.to_le_bytes());
    step.extend_from_slice(&[1, 0, b'x']);
    for (opcode, payload) in [(0x09u8, window), (0x0A, step)] {
        let mut buf = BytesMut::new();
        let mut frame = FrameBuilder::begin(&mut buf, FrameKind::Request, 77);
        buf.put_u8(opcode);
        buf.put_u16_le(payload.len() as u16);
        buf.put_slice(&payload);
        frame.op_added();
        frame.finish(&mut buf);
        conn.send_bytes(&buf);
        let (id, reply) = conn.read_reply();
        assert_eq!(id, 77);
        assert_eq!(code_of(reply), ErrorCode::InvalidArgument as u16);
    }
    // A frame gets at most HISTORY_OPS_PER_FRAME_MAX history ops answered; the rest are refused
    // alone, and other ops in the frame are served.
    let window = Request::Window {
        name: b"x",
        last: 1,
        unit: WindowUnit::Second,
    };
    let mut ops = vec![window.clone(); tally_proto::limits::HISTORY_OPS_PER_FRAME_MAX + 1];
    ops.push(Request::Get {
        name: b"x",
        fresh: false,
        token: None,
    });
    match conn.call(&ops) {
        RawReply::Ops(replies) => {
            let limit = tally_proto::limits::HISTORY_OPS_PER_FRAME_MAX;
            assert!(replies[..limit]
                .iter()
                .all(|r| matches!(r.result, Ok(Reply::Window { .. }))));
            assert_eq!(
                replies[limit].result.as_ref().unwrap_err().code,
                ErrorCode::TooManyOps as u16
            );
            assert!(matches!(replies[limit + 1].result, Ok(Reply::Get { .. })));
        }
        other => panic!("{other:?}"),
    }
    // The SDK sees the same codes.
    let mut client = Client::connect(&server.addr).unwrap();
    let error = client.series("x", now, now - 1, SeriesStep::Hour).unwrap_err();
    assert_eq!(error.error_code(), Some(SdkCode::RangeReversed));
    match conn.call(&[Request::Window {
        name: b"x",
        last: 1,
        unit: WindowUnit::Second,
    }]) {
        RawReply::Ops(ops) => assert!(matches!(ops[0].result, Ok(Reply::Window { value: 0, .. }))),
        other => panic!("{other:?}"),
    }
}

fn tally(server: &Server, args: &[&str]) -> (i32, String) {
    let path = tally_tests::tallyd_path().with_file_name("tally");
    assert!(
        path.exists(),
        "{} missing: run `cargo test --workspace`",
        path.display()
    );
    let output = std::process::Command::new(path)
        .arg("--addr")
        .arg(&server.addr)
        .args(args)
        .output()
        .unwrap();
    (
        output.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&output.stdout).trim().to_string(),
    )
}

#[test]
fn the_cli_prints_history_plain_and_json() {
    let server = Server::start(&["--shards", "2"]);
    assert_eq!(
        tally(&server, &["incr", "c:x", "5", "--key", "order-1"]),
        (0, "5".into())
    );
    assert_eq!(tally(&server, &["window", "c:x", "60s"]), (0, "5".into()));
    let (code, out) = tally(&server, &["--json", "window", "c:x", "5m"]);
    assert_eq!(code, 0);
    let json: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(json["value"], 5);
    assert_eq!(
        json["to_ms"].as_u64().unwrap() - json["from_ms"].as_u64().unwrap(),
        300_000
    );
    let (code, out) = tally(&server, &["--json", "series", "c:x", "--from", "-1m", "--step", "1s"]);
    assert_eq!(code, 0);
    let json: serde_json::Value = serde_json::from_str(&out).unwrap();
    let points: Vec<i64> = json["points"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p.as_i64().unwrap())
        .collect();
    assert_eq!(points.iter().sum::<i64>(), 5);
    assert!(points.len() >= 60);
    let (code, out) = tally(&server, &["series", "c:x", "--from", "-1m", "--step", "1s"]);
    assert_eq!(code, 0);
    assert_eq!(out.lines().count(), points.len(), "one line per step");
    assert_eq!(
        tally(&server, &["reset", "c:x", "0", "--reason", "cli test"]),
        (0, "5 -> 0".into())
    );
    let (code, out) = tally(&server, &["audit", "c:x"]);
    assert_eq!(code, 0);
    assert!(out.contains("c:x 5 -> 0 by \"tally-cli\": cli test"), "{out}");
    let (code, out) = tally(&server, &["events", "c:x", "--from", "-1m"]);
    assert_eq!(code, 0);
    assert_eq!(out.lines().count(), 1, "{out}");
    let key = out.split_whitespace().nth(2).unwrap();
    assert!(out.contains(" +5 ") && key.len() == 32, "{out}");
    let (code, out) = tally(&server, &["--json", "events", "c:x", "--from", "-1m"]);
    assert_eq!(code, 0);
    let json: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(json["events"][0]["delta"], 5);
    assert_eq!(json["events"][0]["key"], key);
    let (code, out) = tally(&server, &["--json", "series", "c:x", "--from", "now", "--to", "-1h"]);
    assert_eq!(code, 1);
    let json: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(json["error"], "range_reversed");
    assert_eq!(json["code"], 26);
}

/// protocol.md §13 (AUDIT): a shard's ring keeps the newest `AUDIT_RECORDS_MAX` resets. Once it
/// has dropped older ones, an AUDIT from before the oldest kept one is refused with
/// `history_not_held` carrying the first time held (never a silently shorter list), asking from
/// that time lists every reset kept, and `tally audit` lists those with a warning and exit code 4.
#[test]
fn audit_beyond_what_the_ring_holds_says_so() {
    const KEPT: usize = 1024; // AUDIT_RECORDS_MAX, engine/src/limits.rs
    let server = Server::start(&["--shards", "1"]);
    let mut conn = RawConn::connect(&server.addr);
    let started_ms = now_ms();
    let reset = Request::Reset {
        name: b"ring:x",
        value: 0,
        reason: b"fill the ring",
    };
    let incr = Request::Incr {
        name: b"ring:x",
        delta: 1,
        key: None,
    };
    // 20 resets, then (a few ms later, so in a later millisecond) as many as the ring keeps less
    // 10: the ring drops the first 10, and keeps 10 of the first frame's.
    let first: Vec<Request<'_>> = std::iter::once(incr)
        .chain(std::iter::repeat_n(reset.clone(), 20))
        .collect();
    let second: Vec<Request<'_>> = std::iter::repeat_n(reset, KEPT - 10).collect();
    for (i, ops) in [first, second].iter().enumerate() {
        if i == 1 {
            // Pacing, not synchronisation: the second frame's resets get later times.
            std::thread::sleep(Duration::from_millis(5));
        }
        match conn.call(ops) {
            RawReply::Ops(replies) => assert!(replies.iter().all(|op| op.result.is_ok())),
            RawReply::Refused { code, message } => panic!("refused {code}: {message}"),
        }
    }
    let audit = |from_ms: u64| Request::Audit {
        name: b"",
        from_ms,
        to_ms: u64::MAX,
        limit: 38,
        cursor: b"",
    };
    let held_from_ms = match conn.call(&[audit(started_ms - 1_000)]) {
        RawReply::Ops(mut replies) => match replies.remove(0).result {
            Err(error) => {
                assert_eq!(error.code, ErrorCode::HistoryNotHeld as u16, "{}", error.message);
                error.current.expect("history_not_held carries the first time held") as u64
            }
            Ok(reply) => panic!("a shorter list without a word: {reply:?}"),
        },
        RawReply::Refused { code, message } => panic!("refused {code}: {message}"),
    };
    assert!(
        held_from_ms > started_ms - 1_000 && held_from_ms <= now_ms() + 1,
        "{held_from_ms}"
    );
    let mut client = Client::connect(&server.addr).unwrap();
    let records = client.audit("", held_from_ms, u64::MAX).unwrap();
    // Every reset of the second frame, and those of the first after the oldest kept's millisecond.
    assert!(
        (KEPT - 10..KEPT).contains(&records.len()),
        "from the first time held: {} of the {KEPT} kept",
        records.len()
    );
    assert!(records.iter().all(|r| r.time_ms >= held_from_ms));
    let error = client.audit("", 0, u64::MAX).unwrap_err();
    assert_eq!(error.history_held_from_ms(), Some(held_from_ms));

    let path = tally_tests::tallyd_path().with_file_name("tally");
    let output = std::process::Command::new(path)
        .args(["--addr", &server.addr, "--json", "audit", "--from", "0"])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(4), "stderr: {stderr}");
    assert!(stderr.contains("not held on this node"), "{stderr}");
    let json: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    assert_eq!(json["complete_from_ms"], held_from_ms);
    assert_eq!(json["records"].as_array().unwrap().len(), records.len());
}
