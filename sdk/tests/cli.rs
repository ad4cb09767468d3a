//! The `tally` binary against the fake server: output formats, negative numbers, idempotency
//! keys, and exit codes (0 success, 1 server refusal, 2 usage, 3 connection).

mod common;

use std::process::{Command, Output};

use common::{FakeConfig, FakeServer};
use tally_proto::Opcode;

fn tally(server: &FakeServer, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_tally"))
        .arg("--addr")
        .arg(server.addr())
        .args(args)
        .env_remove("TALLY_ADDR")
        .output()
        .expect("run tally")
}

fn stdout(output: &Output) -> String {
    String::from_utf8(output.stdout.clone()).unwrap()
}

fn stderr(output: &Output) -> String {
    String::from_utf8(output.stderr.clone()).unwrap()
}

#[test]
fn incr_get_and_negative_deltas() {
    let server = FakeServer::start(FakeConfig::default());
    let output = tally(&server, &["incr", "x"]);
    assert_eq!(output.status.code(), Some(0), "{}", stderr(&output));
    assert_eq!(stdout(&output), "1\n");
    assert_eq!(stdout(&tally(&server, &["incr", "x", "-5"])), "-4\n");
    assert_eq!(stdout(&tally(&server, &["get", "x"])), "-4\n");
    let json: serde_json::Value = serde_json::from_str(&stdout(&tally(&server, &["get", "x", "--json"]))).unwrap();
    assert_eq!(json["value"], -4);
    assert_eq!(json["exists"], true);
    assert_eq!(server.client_names()[0], "tally-cli");
}

#[test]
fn strict_counters_and_refusals() {
    let server = FakeServer::start(FakeConfig::default());
    let created = tally(&server, &["create", "inv", "--strict", "--min", "0", "--initial", "5"]);
    assert_eq!(created.status.code(), Some(0), "{}", stderr(&created));
    assert_eq!(stdout(&created), "created strict counter inv = 5\n");
    assert_eq!(stdout(&tally(&server, &["add", "inv", "-3", "--min", "0"])), "2\n");

    let refused = tally(&server, &["add", "inv", "-3", "--min", "0"]);
    assert_eq!(refused.status.code(), Some(1));
    assert_eq!(stdout(&refused), "");
    let line = stderr(&refused);
    assert!(line.starts_with("tally: bound_violation (10): "), "{line}");
    assert!(line.ends_with("(current 2)\n"), "{line}");

    let refused = tally(&server, &["--json", "add", "inv", "-3", "--min", "0"]);
    assert_eq!(refused.status.code(), Some(1));
    let json: serde_json::Value = serde_json::from_str(&stdout(&refused)).unwrap();
    assert_eq!(json["error"], "bound_violation");
    assert_eq!(json["code"], 10);
    assert_eq!(json["current"], 2);

    assert_eq!(stdout(&tally(&server, &["cas", "inv", "2", "-1"])), "-1\n");
    let reset = tally(&server, &["reset", "inv", "7", "--reason", "recount"]);
    assert_eq!(stdout(&reset), "-1 -> 7\n");
    assert_eq!(server.value("inv"), Some(7));
}

#[test]
fn a_repeated_key_counts_once() {
    let server = FakeServer::start(FakeConfig::default());
    let first = tally(&server, &["--json", "incr", "orders", "3", "--key", "order-42"]);
    let second = tally(&server, &["--json", "incr", "orders", "3", "--key", "order-42"]);
    let first: serde_json::Value = serde_json::from_str(&stdout(&first)).unwrap();
    let second: serde_json::Value = serde_json::from_str(&stdout(&second)).unwrap();
    assert_eq!(first["duplicate"], false);
    assert_eq!(second["duplicate"], true);
    assert_eq!(server.value("orders"), Some(3));
    let keys: Vec<_> = server.served_op(Opcode::Incr).iter().map(|s| s.key).collect();
    assert_eq!(keys, vec![Some(tally_sdk::key_from_str("order-42")); 2]);
}

#[test]
fn stats_prints_a_table() {
    let server = FakeServer::start(FakeConfig {
        split: vec!["hot"],
        ..FakeConfig::default()
    });
    let output = tally(&server, &["stats"]);
    assert_eq!(output.status.code(), Some(0));
    let text = stdout(&output);
    assert!(text.starts_with("figure"), "{text}");
    assert!(text.contains("fake.counters"), "{text}");
    assert!(text.ends_with("split counters: hot\n"), "{text}");
}

#[test]
fn exit_codes_for_usage_and_connection_errors() {
    let server = FakeServer::start(FakeConfig::default());
    let usage = tally(&server, &["reset", "x", "1"]);
    assert_eq!(usage.status.code(), Some(2));
    assert!(server.served().is_empty());

    let nothing = Command::new(env!("CARGO_BIN_EXE_tally"))
        .args(["--addr", "127.0.0.1:1", "--json", "get", "x"])
        .output()
        .unwrap();
    assert_eq!(nothing.status.code(), Some(3));
    let json: serde_json::Value = serde_json::from_str(&stdout(&nothing)).unwrap();
    assert_eq!(json["error"], "io");
    assert!(stderr(&nothing).starts_with("tally: "));
}

#[test]
fn the_address_comes_from_tally_addr() {
    let server = FakeServer::start(FakeConfig::default());
    let output = Command::new(env!("CARGO_BIN_EXE_tally"))
        .args(["incr", "from-env", "4"])
        .env("TALLY_ADDR", server.addr())
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(0), "{}", stderr(&output));
    assert_eq!(server.value("from-env"), Some(4));
}

#[test]
fn unix_sockets() {
    let server = FakeServer::start(FakeConfig {
        unix: true,
        ..FakeConfig::default()
    });
    let path = server.unix_path.clone().unwrap();
    let output = Command::new(env!("CARGO_BIN_EXE_tally"))
        .arg("--unix")
        .arg(&path)
        .args(["incr", "u", "9"])
        .output()
        .unwrap();
    assert_eq!(stdout(&output), "9\n", "{}", stderr(&output));
}
